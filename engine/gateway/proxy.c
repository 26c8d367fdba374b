/* proxy.c - the upstream source: a request forwarded to an app, its answer cached by HTTP rules. */
#define _GNU_SOURCE
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy.h"

#include "fill.h"
#include "query.h"
#include "relay.h"
#include "http_parse.h"
#include "httpcache.h"
#include "upstream.h"
#include "util.h"

/* ---- the upstream source ------------------------------------------------------------------ */

/*
 * An upstream's answer as an entry: status, Content-Type, the replayed fields, ETag, body; the
 * answer's transfer codings, when its body is still in them, as a Transfer-Encoding field.
 */
static struct store_entry *
upstream_entry(const struct gw_req *rq, const struct upstream_response *res,
               const struct http_header *f, size_t n)
{
    const char *ct = upstream_response_field(res, "content-type");
    const char *etag = upstream_response_field(res, "etag");
    struct sbuf h = {0};
    httpcache_replay_fields(f, n, &h);
    if (res->transfer_encoding)
        sbuf_printf(&h, "Transfer-Encoding: %s\r\n", res->transfer_encoding);
    if (etag && !etag[0])
        etag = NULL;
    struct store_entry *e = gw_entry_new(rq, (uint16_t)res->status, ct, h.p, h.len, etag,
                                         res->body ? res->body : "", res->body_len);
    sbuf_free(&h);
    e->stored_ms = store_now_ms(); /* a fresh answer: Age 0 also when it is not stored */
    if (etag)
        e->flags |= STORE_ENTRY_ORIGIN_ETAG;
    return e;
}

/*
 * An interim answer of the upstream goes on to the client at once (RFC 9110 15.2: the proxy
 * never asks for one, it sends no Expect); its hop-by-hop fields are already gone.
 */
static void
on_interim(void *arg, const struct upstream_response *res)
{
    struct gw_req *rq = arg;
    struct sbuf h = {0};
    if (rq->detached)
        return;
    for (size_t i = 0; i < res->nfields; i++) {
        sbuf_add(&h, res->fields[i].name, res->fields[i].name_len);
        sbuf_add(&h, ": ", 2);
        sbuf_add(&h, res->fields[i].value, res->fields[i].value_len);
        sbuf_add(&h, "\r\n", 2);
    }
    server_respond_interim(rq->sr, res->status, h.p, h.len);
    sbuf_free(&h);
}

/* The size past which an answer of rq's endpoint is not stored: its cache.max_size, else the
 * server's --cache-max-size. */
static size_t
max_size(const struct gw_req *rq)
{
    return rq->ep->cache_max_size ? rq->ep->cache_max_size : rq->wk->cache_max_size;
}

/* Whether the answer is a stream of server-sent events (text/event-stream): never stored, every
 * piece passed on as it comes. */
static bool
event_stream(const struct upstream_response *res)
{
    const char *ct = upstream_response_field(res, "content-type");
    return ct && strncasecmp(ct, "text/event-stream", 17) == 0 &&
           (ct[17] == '\0' || ct[17] == ';' || ct[17] == ' ' || ct[17] == '\t');
}

/*
 * What HTTP caching (RFC 9111 section 3, 4.2; RFC 5861; RFC 9213) says of an
 * upstream's answer (status, fields f[0..n), a body of body_len bytes,
 * received at response_ms) to rq, into *v.
 */
static void
judge(struct gw_req *rq, int status, const struct http_header *f, size_t n, size_t body_len,
      uint64_t response_ms, struct httpcache_verdict *v)
{
    const struct policy_endpoint *ep = rq->ep;
    struct httpcache_answer ans = {.status = status,
                                   .f = f,
                                   .n = n,
                                   .body_len = body_len,
                                   .request_ms = rq->sent_ms,
                                   .response_ms = response_ms};
    struct httpcache_policy pol = {.ttl_ms = ep->ttl_ms,
                                   .ttl_origin = ep->ttl_origin,
                                   .override = ep->override,
                                   .targeted = (const char *const *)ep->targeted,
                                   .ntargeted = ep->ntargeted,
                                   .max_body = max_size(rq)};
    httpcache_judge(&ans, &pol, v);
}

/*
 * Stores the storable answer e as verdict v says, and answers with it (X-Cache: xcache) once
 * the store has it.
 */
static void
store_judged(struct gw_req *rq, struct store_entry *e, const struct httpcache_verdict *vv,
             const char *xcache)
{
    const struct policy_endpoint *ep = rq->ep;
    const struct httpcache_verdict v = *vv;
    if (v.authorized)
        e->flags |= STORE_ENTRY_AUTHORIZED;
    /* Fresh for what is left of its lifetime past the age it arrived with; stale on arrival
     * (0) it is stored only to be revalidated. Its stale windows are the answer's own, else
     * the policy's, and none when it must be revalidated (section 5.2.2.2). */
    uint64_t ttl = v.lifetime_ms > v.initial_age_ms ? v.lifetime_ms - v.initial_age_ms : 0;
    uint64_t swr = v.must_revalidate ? 0 : v.swr_ms >= 0 ? (uint64_t)v.swr_ms : ep->swr_ms;
    uint64_t sie = v.must_revalidate ? 0 : v.sie_ms >= 0 ? (uint64_t)v.sie_ms : ep->sie_ms;
    e->age_ms = v.initial_age_ms;
    if (v.no_cache)
        e->flags |= STORE_ENTRY_VALIDATE;
    if (v.must_revalidate)
        e->flags |= STORE_ENTRY_MUST_REVALIDATE;
    gw_entry_windows(e, swr, sie, v.has_validator ? ep->keep_ms : 0);
    gw_store_and_reply(rq, e, ttl, v.vary ? vv->vary_names : NULL, xcache);
}

/*
 * Stores an upstream's answer e (its fields f[0..n), status `status`, received
 * at response_ms) as HTTP caching allows and answers with it (X-Cache:
 * xcache); what may not be stored is answered and remembered for a while
 * (hit-for-miss).
 */
static void
store_answer(struct gw_req *rq, struct store_entry *e, int status, const struct http_header *f,
             size_t n, uint64_t response_ms, const char *xcache)
{
    struct httpcache_verdict v;
    judge(rq, status, f, n, e->body_len, response_ms, &v);
    if (rq->authorized_only && !v.authorized) {
        /* The answer to a request with Authorization, under a key not naming the caller, that
         * does not allow a shared cache to reuse it: answered only, and leaves no marker for the
         * others (RFC 9111 section 3.5); this worker's waiters on the key ask the origin. */
        rq->uncacheable = true;
        gw_reply_entry(rq, e, "BYPASS", store_now_ms());
        return;
    }
    if (!v.storable || rq->no_store) {
        if (status < 500 && !rq->no_store)
            gw_remember_uncacheable(rq, e, xcache);
        else
            gw_reply_entry(rq, e, xcache, store_now_ms());
        return;
    }
    store_judged(rq, e, &v, xcache);
}

/* Reads "Name: value\r\n" lines into fields (at most cap); returns how many. */
static size_t
fields_of_lines(const char *p, size_t len, struct http_header *f, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n < cap;) {
        const char *nl = memchr(p + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - p) : len;
        const char *colon = memchr(p + i, ':', end - i);
        if (colon) {
            size_t vs = (size_t)(colon - p) + 1;
            while (vs < end && (p[vs] == ' ' || p[vs] == '\t'))
                vs++;
            size_t ve = end;
            while (ve > vs && (p[ve - 1] == '\r' || p[ve - 1] == ' ' || p[ve - 1] == '\t'))
                ve--;
            f[n].name = (struct http_str){p + i, (size_t)(colon - (p + i))};
            f[n].value = (struct http_str){p + vs, ve - vs};
            n++;
        }
        i = end + 1;
    }
    return n;
}

/*
 * A 304 to the revalidation of the stale entry rq->stale: the stored answer,
 * its fields updated by the 304's (RFC 9111 section 3.2, 4.3.4), is stored
 * again and answered (X-Cache: REVALIDATED), its freshness judged anew from
 * the updated fields.
 */
static void
freshen(struct gw_req *rq, const struct upstream_response *res, const struct http_header *f,
        size_t n, uint64_t response_ms)
{
    const struct store_entry *old = rq->stale;
    struct sbuf h = {0};
    httpcache_update_fields(old->headers ? old->headers : "", old->headers_len, f, n, &h);
    const char *etag = upstream_response_field(res, "etag");
    uint8_t origin_etag = STORE_ENTRY_ORIGIN_ETAG;
    if (!etag || !etag[0]) {
        etag = old->etag;
        origin_etag = old->flags & STORE_ENTRY_ORIGIN_ETAG;
    }
    struct store_entry *e = gw_entry_new(rq, old->status, old->content_type, h.p, h.len, etag,
                                         old->body ? old->body : "", old->body_len);
    sbuf_free(&h);
    if (etag)
        e->flags |= origin_etag;
    /* The answer as it now stands: its stored fields (with the 304's), its ETag. */
    struct http_header mf[UPSTREAM_MAX_FIELDS + 2];
    size_t mn =
        e->headers_len ? fields_of_lines(e->headers, e->headers_len, mf, UPSTREAM_MAX_FIELDS) : 0;
    if (e->etag && (e->flags & STORE_ENTRY_ORIGIN_ETAG))
        mf[mn++] = (struct http_header){{"ETag", 4}, {e->etag, strlen(e->etag)}};
    store_answer(rq, e, e->status, mf, mn, response_ms, "REVALIDATED");
    store_entry_release(e);
}

/* An answer's fields as the cache reads them (the parser refuses more than it can hold). */
static size_t
fields_of(const struct upstream_response *res, struct http_header *fields)
{
    for (size_t i = 0; i < res->nfields; i++) {
        fields[i].name = (struct http_str){res->fields[i].name, res->fields[i].name_len};
        fields[i].value = (struct http_str){res->fields[i].value, res->fields[i].value_len};
    }
    return res->nfields;
}

/*
 * Whether the answer whose head is res is read whole before it is answered,
 * the way every answer was: no body (HEAD, 204, 304), a small one (a known
 * length within GW_RELAY_SMALL: the whole path of stored answers, validators
 * and conditionals), a server error a stale entry may replace, and the
 * answers of detached requests (no client to stream to). Everything else is
 * streamed as it arrives.
 */
static bool
read_whole(struct gw_req *rq, const struct upstream_response *res)
{
    if (rq->upgrade)
        return res->status != 101 && res->content_length >= 0 &&
               res->content_length <= GW_RELAY_SMALL;
    if (event_stream(res))
        return false;
    return rq->detached || rq->sr->http.method == HTTP_HEAD || res->status == 204 ||
           res->status == 304 || (res->status >= 500 && gw_stale_serves(rq)) ||
           (res->content_length >= 0 && res->content_length <= GW_RELAY_SMALL &&
            !res->transfer_encoding);
}

/*
 * The head of an answer that is streamed: where it goes, as for a whole one
 * (on_upstream), but its body follows as it arrives. A write's
 * invalidations and a hit-for-miss marker are acknowledged before the head
 * goes out (the upstream waits meanwhile); a storable answer goes out at once
 * with a copy kept for the store, which ends the stream once it has it.
 */
static void
stream_answer(struct gw_req *rq, const struct upstream_response *res, uint64_t response_ms)
{
    struct http_header fields[UPSTREAM_MAX_FIELDS];
    size_t n = fields_of(res, fields);
    struct store_entry *e = upstream_entry(rq, res, fields, n);
    struct gw_relay *r = gw_relay_new(rq, e, res->content_length);
    bool sse = event_stream(res);
    if (res->transfer_encoding) {
        rq->coded = true; /* passed on undecoded, delimited by the close, never stored */
        rq->uncacheable = true;
    }
    if (gw_writes(rq)) {
        if (res->status >= 200 && res->status < 400) {
            r->store_pending = true;
            gw_invalidate_then_reply(rq, e, fields, n);
        } else {
            gw_reply_entry(rq, e, NULL, 0);
        }
    } else if (rq->admit.cache_key && !rq->bypass && !rq->coded) {
        struct httpcache_verdict v;
        judge(rq, res->status, fields, n, res->content_length > 0 ? (size_t)res->content_length : 0,
              response_ms, &v);
        if (rq->authorized_only && !v.authorized) {
            /* As store_answer(): answered only, no marker (RFC 9111 section 3.5). */
            rq->uncacheable = true;
            gw_reply_entry(rq, e, "BYPASS", store_now_ms());
        } else if (!v.storable || rq->no_store || sse) {
            if (res->status < 500 && !rq->no_store) {
                r->store_pending = true;
                gw_remember_uncacheable(rq, e, "MISS");
            } else {
                gw_reply_entry(rq, e, "MISS", store_now_ms());
            }
        } else {
            gw_relay_keep(rq, max_size(rq), &v);
            gw_reply_entry(rq, e, "MISS", store_now_ms());
        }
    } else {
        gw_reply_entry(rq, e,
                       rq->bypass            ? "BYPASS"
                       : rq->admit.cache_key ? "MISS"
                                             : NULL,
                       store_now_ms());
    }
    store_entry_release(e);
}

/* The final head of the upstream's answer: read whole, streamed, or a tunnel opened. */
static enum upstream_action
on_head(void *arg, const struct upstream_response *res)
{
    struct gw_req *rq = arg;
    uint64_t response_ms = store_now_ms();
    if (read_whole(rq, res))
        return UPSTREAM_BUFFER; /* on_upstream() has it */
    gw_stats_origin(&rq->wk->stats, GW_ORIGIN_UPSTREAM, util_mono_us() - rq->origin_us,
                    response_ms);
    bool freed = false;
    rq->freed = &freed;
    if (rq->upgrade && res->status == 101) {
        enum upstream_action a = gw_relay_tunnel(rq, res);
        if (!freed)
            rq->freed = NULL;
        return freed ? UPSTREAM_ABANDON : a;
    }
    stream_answer(rq, res, response_ms);
    if (freed)
        return UPSTREAM_ABANDON; /* answered otherwise (an error) */
    rq->freed = NULL;
    /* The head is out, or it waits for the store: the upstream waits with it. */
    return rq->relay->started ? UPSTREAM_GO : UPSTREAM_PAUSE;
}

static enum upstream_action
on_body(void *arg, const char *data, size_t len)
{
    struct gw_req *rq = arg;
    bool freed = false;
    rq->freed = &freed;
    enum upstream_action a = gw_relay_body(rq, data, len);
    if (freed)
        return UPSTREAM_ABANDON;
    rq->freed = NULL;
    return a;
}

/* The upstream's answer is complete (or failed): a whole one judged, stored and answered; a
 * streamed one ended, its copy stored first. */
static void
on_upstream(void *arg, const struct upstream_response *res)
{
    struct gw_req *rq = arg;
    const struct policy_endpoint *ep = rq->ep;
    uint64_t response_ms = store_now_ms();
    rq->call = NULL;
    gw_origin_done(rq);
    char internal[320];
    struct gw_stats *st = &rq->wk->stats;
    if (rq->relay && rq->relay->head) {
        snprintf(internal, sizeof(internal), "upstream \"%s\" (%s:%d): %s", ep->up->name,
                 ep->up->host, ep->up->port, res->detail);
        struct store_entry *e = gw_relay_done(rq, res->error, internal);
        if (e) {
            store_judged(rq, e, &rq->relay->verdict, "MISS");
            store_entry_release(e);
        }
        return;
    }
    if (rq->relay && rq->relay->tunnel) {
        (void)gw_relay_done(rq, res->error, res->detail);
        return;
    }
    if (res->error != UPSTREAM_OK) {
        if (res->error == UPSTREAM_TIMEOUT && rq->relay && rq->relay->pumping &&
            !rq->relay->pump_paused) {
            /* The upstream waited for the rest of the body, which the client did not send. */
            gw_fail(rq, 408, "the request body was not received in time");
            return;
        }
        gw_upstream_failed(rq, res->error, res->detail);
        return;
    }
    gw_stats_origin(st, GW_ORIGIN_UPSTREAM, rq->origin_time_us, response_ms);
    if (res->status >= 500 && gw_stale_serves(rq)) {
        snprintf(internal, sizeof(internal), "upstream \"%s\" answered %d", ep->up->name,
                 res->status);
        gw_origin_failed(rq, res->status, "the upstream failed", internal);
        return;
    }
    struct http_header fields[UPSTREAM_MAX_FIELDS];
    size_t n = fields_of(res, fields);
    if (res->status == 304 && rq->validating) {
        freshen(rq, res, fields, n, response_ms);
        return;
    }
    struct store_entry *e = upstream_entry(rq, res, fields, n);
    if (res->transfer_encoding) {
        /* A coding sluice does not decode: passed on as received, never stored (and no
         * hit-for-miss marker); this worker's waiters on the key go to the origin themselves. */
        rq->coded = true;
        rq->uncacheable = true;
    }
    if (gw_writes(rq)) {
        /* A non-error answer to a write makes stored answers stale (RFC 9111 section 4.4). */
        if (res->status >= 200 && res->status < 400)
            gw_invalidate_then_reply(rq, e, fields, n);
        else
            gw_reply_entry(rq, e, NULL, 0);
    } else if (rq->admit.cache_key && !rq->bypass && !rq->coded) {
        store_answer(rq, e, res->status, fields, n, response_ms, "MISS");
    } else {
        gw_reply_entry(rq, e,
                       rq->bypass            ? "BYPASS"
                       : rq->admit.cache_key ? "MISS"
                                             : NULL,
                       store_now_ms());
    }
    store_entry_release(e);
}

/*
 * The target sent upstream: the upstream's prefix and the request's path and
 * query. A cacheable request forwards its query as the key saw it: the
 * canonical encoding (http/query.h) of every parameter when the key holds
 * {query}, else of those its key and route depend on (pinned or named); what
 * the key leaves out is not sent, so it cannot change a stored answer, and a
 * parameter the key depends on given twice is refused. Returns 0, or -1 with
 * rq->refusal set.
 */
static int
upstream_target_text(struct gw_req *rq, struct sbuf *out)
{
    const struct http_request *h = &rq->sr->http;
    const struct policy_endpoint *ep = rq->ep;
    sbuf_adds(out, ep->up->prefix);
    sbuf_add(out, h->path.p, h->path.len);
    if (!rq->admit.cache_key || rq->bypass) {
        if (h->query.len) {
            sbuf_add(out, "?", 1);
            sbuf_add(out, h->query.p, h->query.len);
        }
        return 0;
    }
    const struct http_query *qr = gw_query(rq);
    if (!qr)
        return -1;
    const char *const *names = ep->cache_query_all ? NULL : (const char *const *)ep->cache_query;
    for (size_t i = 0; names && i < ep->ncache_query; i++) {
        const struct http_query_param *first;
        if (http_query_count(qr, names[i], strlen(names[i]), &first) > 1) {
            rq->refusal = "a query parameter the key depends on is given more than once";
            return -1;
        }
    }
    size_t cap = 3 * h->query.len + 2; /* each decoded byte encodes to 3 at most */
    char *q = xmalloc(cap);
    long n = http_query_encode(qr, names, ep->cache_query_all ? 0 : ep->ncache_query, q, cap);
    assert(n >= 0);
    if (n > 0) {
        sbuf_add(out, "?", 1);
        sbuf_add(out, q, (size_t)n);
    }
    free(q);
    return 0;
}

/* Request fields a fill never forwards: conditionals and ranges (the cache needs the whole
 * answer) and method overrides (a GET must stay a GET). The fields no request forwards are
 * upstream_forward_headers()'s. */
static const char *const fill_dropped[] = {
    "if-none-match", "if-modified-since",      "if-match",      "if-unmodified-since", "if-range",
    "range",         "x-http-method-override", "x-http-method", "x-method-override"};

/* Whether the "Name: value" line at line[0..len) is the field `name` (ignoring case). */
static bool
line_is(const char *line, size_t len, const char *name)
{
    size_t nl = name ? strlen(name) : 0;
    return nl && len > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0;
}

static bool
line_in(const char *line, size_t len, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (line_is(line, len, names[i]))
            return true;
    return false;
}

/* The fields that describe a forwarded body: they go with it, listed or not. */
static const char *const body_fields[] = {"content-type", "content-encoding"};

/* The trace context goes on listed or not; upstream_forward_headers() kept it only when it is
 * well formed. */
static const char *const trace_fields[] = {"traceparent", "tracestate"};

/* Whether the upstream's forward_headers, when it has them, let field `name` through. */
static bool
listed(const struct policy_upstream *up, const char *name)
{
    if (!up->forward_listed)
        return true;
    for (size_t i = 0; i < up->nforward_headers; i++)
        if (strcasecmp(up->forward_headers[i], name) == 0)
            return true;
    return false;
}

/* Whether the line at line[0..len) is one of the upstream's forward_headers (or it has none). */
static bool
line_listed(const struct policy_upstream *up, const char *line, size_t len)
{
    return !up->forward_listed ||
           line_in(line, len, (const char *const *)up->forward_headers, up->nforward_headers);
}

/*
 * Drops from the client's "Name: value\r\n" lines in b those the request must not forward:
 * on a fill, conditionals, ranges and method overrides; the fields the upstream's
 * forward_headers leave out (but Content-Type and Content-Encoding with a body, and the trace
 * context); and the identity headers and X-Request-Id, which gw_proxy_run() writes again.
 */
static void
drop_fields(struct gw_req *rq, struct sbuf *b, bool filling, bool with_body)
{
    const struct policy_identity *id = &rq->policy->identity;
    const struct policy_upstream *up = rq->ep->up;
    size_t o = 0;
    for (size_t i = 0; i < b->len;) {
        const char *nl = memchr(b->p + i, '\n', b->len - i);
        size_t len = nl ? (size_t)(nl - (b->p + i)) + 1 : b->len - i;
        const char *line = b->p + i;
        bool drop =
            (filling &&
             line_in(line, len, fill_dropped, sizeof(fill_dropped) / sizeof(fill_dropped[0]))) ||
            line_is(line, len, id->user_header) || line_is(line, len, id->tenant_header) ||
            line_is(line, len, "x-request-id") ||
            (!line_listed(up, line, len) &&
             !(with_body &&
               line_in(line, len, body_fields, sizeof(body_fields) / sizeof(body_fields[0]))) &&
             !line_in(line, len, trace_fields, sizeof(trace_fields) / sizeof(trace_fields[0])));
        if (!drop) {
            memmove(b->p + o, line, len);
            o += len;
        }
        i += len;
    }
    b->len = o;
}

/*
 * The caller's identity as the upstream receives it: each identity header once, with the value
 * the keys and limits used (the canonical form of a typed value), or not at all when absent or
 * left out of the upstream's forward_headers.
 */
static void
add_identity(const struct gw_req *rq, struct sbuf *b)
{
    const struct policy_identity *id = &rq->policy->identity;
    if (rq->user && id->user_header && listed(rq->ep->up, id->user_header))
        sbuf_printf(b, "%s: %.*s\r\n", id->user_header, (int)rq->user_len, rq->user);
    if (rq->tenant && id->tenant_header && listed(rq->ep->up, id->tenant_header))
        sbuf_printf(b, "%s: %.*s\r\n", id->tenant_header, (int)rq->tenant_len, rq->tenant);
}

/*
 * The endpoint's request_headers (its upstream's, then its own): the fields they name dropped
 * from what goes on, the values they set added, expanded for this request (a value that does
 * not expand is left out).
 */
static void
request_rules(struct gw_req *rq, struct sbuf *b)
{
    const struct policy_header_rules *r = rq->ep->fields.request;
    if (!r)
        return;
    size_t o = 0;
    for (size_t i = 0; i < b->len;) {
        const char *nl = memchr(b->p + i, '\n', b->len - i);
        size_t len = nl ? (size_t)(nl - (b->p + i)) + 1 : b->len - i;
        if (!policy_rules_name(r, b->p + i, len)) {
            memmove(b->p + o, b->p + i, len);
            o += len;
        }
        i += len;
    }
    b->len = o;
    for (size_t i = 0; i < r->n; i++) {
        size_t vlen;
        const char *v = r->rules[i].value ? gw_expand(rq, r->rules[i].value, &vlen) : NULL;
        if (v)
            sbuf_printf(b, "%s: %.*s\r\n", r->rules[i].name, (int)vlen, v);
    }
}

/*
 * A fill of a key whose stale entry has validators asks the upstream for it
 * conditionally (RFC 9111 section 4.3.1): the origin's own ETag in
 * If-None-Match, its Last-Modified in If-Modified-Since; a 304 then freshens
 * the entry instead of fetching it again.
 */
static void
add_validators(struct gw_req *rq, struct sbuf *headers)
{
    const struct store_entry *e = rq->stale;
    if (!e)
        return;
    if ((e->flags & STORE_ENTRY_ORIGIN_ETAG) && e->etag) {
        sbuf_printf(headers, "If-None-Match: %s\r\n", e->etag);
        rq->validating = true;
    }
    char lm[64];
    if (e->headers &&
        httpcache_field_in_lines(e->headers, e->headers_len, "last-modified", lm, sizeof(lm)) > 0) {
        sbuf_printf(headers, "If-Modified-Since: %s\r\n", lm);
        rq->validating = true;
    }
}

void
gw_proxy_run(struct gw_req *rq)
{
    const struct policy_endpoint *ep = rq->ep;
    const struct http_request *h = &rq->sr->http;
    if (!ep->up) {
        gw_fail(rq, 502, "the endpoint's upstream is not declared");
        return;
    }
    bool filling = rq->admit.cache_key && !rq->bypass;
    struct sbuf target = {0}, headers = {0};
    if (upstream_target_text(rq, &target) != 0) {
        sbuf_free(&target);
        gw_fail(rq, 400, rq->refusal);
        return;
    }
    bool safe = h->method == HTTP_GET || h->method == HTTP_HEAD;
    upstream_forward_headers(h, &headers);
    drop_fields(rq, &headers, filling, !safe);
    add_identity(rq, &headers);
    request_rules(rq, &headers);
    /* The id the log and an error answer would quote: the client's (a safe token), or ours. */
    sbuf_printf(&headers, "X-Request-Id: %s\r\n", gw_request_id(rq));
    if (filling)
        add_validators(rq, &headers);
    upstream_proxy_fields(h, rq->sr->ip, rq->sr->peer, rq->sr->peer_trusted, &headers);
    if (rq->upgrade) {
        /* RFC 6455 4.1: the handshake's own hop-by-hop fields, the only ones passed on. */
        sbuf_adds(&headers, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
    }
    /* A fill always asks for the whole answer; a GET or HEAD forwards no body. A body the
     * server left unread is pushed as it arrives (relay.c). */
    const char *method = filling ? "GET" : h->method_str.p;
    size_t method_len = filling ? 3 : h->method_str.len;
    bool pushed = !safe && rq->sr->body_streamed;
    struct upstream_request req = {
        .method = method,
        .method_len = method_len,
        .target = target.p,
        .target_len = target.len,
        .headers = headers.p,
        .headers_len = headers.len,
        .body = safe || pushed ? NULL : rq->sr->body,
        .body_len = safe     ? 0
                    : pushed ? (h->chunked ? 0 : (size_t)h->content_length)
                             : rq->sr->body_len,
        .interim = on_interim,
        .head = on_head,
        .on_body = on_body,
        .max_body = max_size(rq) > GW_RELAY_SMALL ? max_size(rq) : GW_RELAY_SMALL,
        .body_stream = pushed || rq->upgrade,
        .body_chunked = pushed && h->chunked,
        .drain = gw_relay_drain,
        .upgrade = rq->upgrade,
    };
    struct upstream_target t = {
        .host = ep->up->host,
        .port = ep->up->port,
        .host_header = ep->up->host_header,
        .connect_timeout_ms = ep->connect_timeout_ms,
        .timeout_ms = ep->timeout_ms,
        .tls = ep->up->ssl_ctx,
        .tls_generation = rq->policy->generation,
    };
    rq->sent_ms = store_now_ms(); /* request_time (RFC 9111 section 4.2.3) */
    rq->origin_us = util_mono_us();
    rq->call = upstream_send(rq->wk->up, &t, &req, on_upstream, rq);
    sbuf_free(&target);
    sbuf_free(&headers);
    if (!rq->call) {
        gw_fail_internal(rq, 502, "the upstream is unavailable",
                         "upstream_send refused the request");
        return;
    }
    if (pushed)
        gw_relay_pump(rq);
}
