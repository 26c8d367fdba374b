/* proxy.c - the upstream source: a request forwarded to an app, its answer cached by HTTP rules. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy.h"

#include "fill.h"
#include "http_parse.h"
#include "httpcache.h"
#include "upstream.h"
#include "util.h"

/* ---- the upstream source ------------------------------------------------------------------ */

/* An upstream's answer as an entry: status, Content-Type, the replayed fields, ETag, body. */
static struct store_entry *
upstream_entry(const struct upstream_response *res, const struct http_header *f, size_t n)
{
    const char *ct = upstream_response_field(res, "content-type");
    const char *etag = upstream_response_field(res, "etag");
    struct store_entry *e = store_entry_new((uint16_t)res->status, ct ? xstrdup(ct) : NULL,
                                            xstrndup(res->body, res->body_len), res->body_len);
    struct sbuf h = {0};
    httpcache_replay_fields(f, n, &h);
    e->headers = h.p;
    e->headers_len = h.len;
    if (etag && etag[0])
        e->etag = xstrdup(etag);
    return e;
}

static void
on_upstream(void *arg, const struct upstream_response *res)
{
    struct gw_req *rq = arg;
    const struct policy_endpoint *ep = rq->ep;
    rq->call = NULL;
    if (res->error != UPSTREAM_OK) {
        char detail[256];
        snprintf(detail, sizeof(detail), "upstream \"%s\": %s", ep->up->name, res->detail);
        gw_origin_failed(rq,
                         res->error == UPSTREAM_TIMEOUT    ? 504
                         : res->error == UPSTREAM_SHUTDOWN ? 503
                                                           : 502,
                         detail);
        return;
    }
    if (res->status >= 500 && gw_stale_serves(rq)) {
        char detail[96];
        snprintf(detail, sizeof(detail), "upstream \"%s\" answered %d", ep->up->name, res->status);
        gw_origin_failed(rq, res->status, detail);
        return;
    }
    /* Every field is judged and replayed (the parser refuses more than it can hold). */
    struct http_header fields[UPSTREAM_MAX_FIELDS];
    size_t n = res->nfields;
    for (size_t i = 0; i < n; i++) {
        fields[i].name = (struct http_str){res->fields[i].name, res->fields[i].name_len};
        fields[i].value = (struct http_str){res->fields[i].value, res->fields[i].value_len};
    }
    struct store_entry *e = upstream_entry(res, fields, n);
    if (ep->is_write) {
        if (res->status >= 200 && res->status < 300)
            gw_invalidate_then_reply(rq, e);
        else
            gw_reply_entry(rq, e, NULL, 0);
    } else if (rq->admit.cache_key && !rq->bypass) {
        struct httpcache_answer ans = {.status = res->status,
                                       .f = fields,
                                       .n = n,
                                       .body_len = res->body_len,
                                       .request_ms = store_now_ms()};
        ans.response_ms = ans.request_ms;
        struct httpcache_policy pol = {.ttl_ms = ep->ttl_ms};
        struct httpcache_verdict v;
        httpcache_judge(&ans, &pol, &v);
        /* Fresh for 0 ms, or to be validated on every use: not stored, as before. */
        uint64_t ttl = v.lifetime_ms > v.initial_age_ms ? v.lifetime_ms - v.initial_age_ms : 0;
        if (v.storable && ttl > 0 && !v.no_cache) {
            gw_store_and_reply(rq, e, ttl, v.vary ? v.vary_names : NULL);
        } else {
            if (res->status < 500)
                gw_remember_uncacheable(rq, e);
            else
                gw_reply_entry(rq, e, "MISS", store_now_ms());
        }
    } else {
        gw_reply_entry(rq, e, rq->bypass ? "BYPASS" : ep->cached ? "MISS" : NULL, store_now_ms());
    }
    store_entry_release(e);
}

static bool
query_name_in(const struct policy_endpoint *ep, const char *name, size_t len)
{
    for (size_t i = 0; i < ep->ncache_query; i++)
        if (strlen(ep->cache_query[i]) == len && memcmp(ep->cache_query[i], name, len) == 0)
            return true;
    return false;
}

/*
 * The target sent upstream: the upstream's prefix and the request's path and
 * query; a cacheable request forwards only the query parameters its key
 * depends on (pinned or named), so that what the key leaves out cannot change
 * a stored answer.
 */
static void
upstream_target_text(struct gw_req *rq, struct sbuf *out)
{
    const struct http_request *h = &rq->sr->http;
    sbuf_adds(out, rq->ep->up->prefix);
    sbuf_add(out, h->path.p, h->path.len);
    if (!rq->admit.cache_key || rq->bypass) {
        if (h->query.len) {
            sbuf_add(out, "?", 1);
            sbuf_add(out, h->query.p, h->query.len);
        }
        return;
    }
    const char *q = h->query.p, *end = q + h->query.len;
    bool first = true;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(stop - q));
        size_t nlen = (size_t)((eq ? eq : stop) - q);
        char name[128];
        size_t dlen;
        if (nlen < sizeof(name) && http_pct_decode(q, nlen, name, &dlen, 1) == 0 &&
            query_name_in(rq->ep, name, dlen)) {
            sbuf_add(out, first ? "?" : "&", 1);
            sbuf_add(out, q, (size_t)(stop - q));
            first = false;
        }
        q = stop + 1;
    }
}

/* Request fields never forwarded: on a fill, conditionals and ranges (the cache needs the
 * whole answer) and method overrides (a GET must stay a GET); always, the fields that
 * override the host or URL in some apps. */
static const char *const fill_dropped[] = {
    "if-none-match:",          "if-modified-since:", "if-match:",
    "if-unmodified-since:",    "if-range:",          "range:",
    "x-http-method-override:", "x-http-method:",     "x-method-override:"};
static const char *const always_dropped[] = {
    "proxy-connection:",   "x-host:",           "x-original-url:",    "x-rewrite-url:",
    "x-forwarded-server:", "x-forwarded-port:", "x-forwarded-prefix:"};

static bool
line_starts(const char *line, size_t len, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        if (len >= nl && strncasecmp(line, names[i], nl) == 0)
            return true;
    }
    return false;
}

/* Drops from the "Name: value\r\n" lines of b those the request must not forward. */
static void
drop_fields(struct sbuf *b, bool filling)
{
    size_t o = 0;
    for (size_t i = 0; i < b->len;) {
        const char *nl = memchr(b->p + i, '\n', b->len - i);
        size_t len = nl ? (size_t)(nl - (b->p + i)) + 1 : b->len - i;
        bool drop = line_starts(b->p + i, len, always_dropped,
                                sizeof(always_dropped) / sizeof(always_dropped[0])) ||
                    (filling && line_starts(b->p + i, len, fill_dropped,
                                            sizeof(fill_dropped) / sizeof(fill_dropped[0])));
        if (!drop) {
            memmove(b->p + o, b->p + i, len);
            o += len;
        }
        i += len;
    }
    b->len = o;
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
    upstream_target_text(rq, &target);
    upstream_forward_headers(h, rq->sr->ip, &headers);
    drop_fields(&headers, filling);
    bool safe = h->method == HTTP_GET || h->method == HTTP_HEAD;
    /* A fill always asks for the whole answer; a GET or HEAD forwards no body. */
    const char *method = filling ? "GET" : h->method_str.p;
    size_t method_len = filling ? 3 : h->method_str.len;
    struct upstream_request req = {
        .method = method,
        .method_len = method_len,
        .target = target.p,
        .target_len = target.len,
        .headers = headers.p,
        .headers_len = headers.len,
        .body = safe ? NULL : rq->sr->body,
        .body_len = safe ? 0 : rq->sr->body_len,
    };
    struct upstream_target t = {
        .host = ep->up->host,
        .port = ep->up->port,
        .host_header = ep->up->host_header,
        .connect_timeout_ms = ep->up->connect_timeout_ms,
        .timeout_ms = ep->up->timeout_ms,
    };
    rq->call = upstream_send(rq->wk->up, &t, &req, on_upstream, rq);
    sbuf_free(&target);
    sbuf_free(&headers);
    if (!rq->call)
        gw_fail(rq, 502, "the request cannot be forwarded to the upstream");
}
