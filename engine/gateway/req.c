/* req.c - the request path's request object: its arenas, template values, replies, rate-limit
 * fields, and the coalescing of fills in a worker. */
#define _GNU_SOURCE
#include "req.h"

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "coding.h"
#include "httpcache.h"
#include "log.h"
#include "template.h"
#include "upstream.h"
#include "util.h"

#define QUOTA_TYPE "https://iana.org/assignments/http-problem-types#quota-exceeded"

/* ---- the request object -------------------------------------------------------------------- */

enum gw_cache_kind
gw_cache_kind_of(const char *xcache)
{
    if (!xcache)
        return GW_CACHE_NONE;
    switch (xcache[0]) {
    case 'H':
        return GW_CACHE_HIT;
    case 'M':
        return GW_CACHE_MISS;
    case 'S':
        return GW_CACHE_STALE;
    case 'R':
        return GW_CACHE_REVALIDATED;
    case 'B':
        return GW_CACHE_BYPASS;
    default:
        return GW_CACHE_NONE;
    }
}

/* Counts an answered request of `route` in wk's stats: its method (OTHER for one no route
 * names), caller tier (or NULL), status, X-Cache, and its time in the gateway. It reads
 * nothing of the request's head: counted as the answer leaves or later, all the same. */
static void
count_answer(struct gw_worker *wk, enum http_method method, const char *route, const char *tier,
             int status, enum gw_cache_kind cache, uint64_t duration_us)
{
    /* A method no route names is any token the client likes: one label for all of them. */
    const char *m = http_method_name(method);
    gw_stats_request(&wk->stats, route, tier, m, status, cache, duration_us, store_now_ms());
}

struct gw_req *
gw_req_new(struct gw_worker *wk, struct server_request *sr, struct policy *p,
           const struct router_match *m)
{
    struct gw_req *rq = xmalloc(sizeof(*rq));
    memset(rq, 0, offsetof(struct gw_req, dec)); /* the rest is written before it is read */
    rq->vary_names[0] = '\0';
    rq->request_id[0] = '\0';
    rq->vkey[0] = '\0';
    rq->hdrs = rq->hdrs_inline;
    rq->hdrs_cap = sizeof(rq->hdrs_inline);
    rq->hdrs[0] = '\0';
    rq->hdrs_len = rq->keys_used = rq->vals_used = 0;
    rq->wk = wk;
    rq->start_us = util_mono_us();
    rq->sr = sr;
    rq->method = sr ? sr->http.method : HTTP_OTHER; /* a detached request sets its own */
    policy_ref(p);
    rq->policy = p;
    rq->ep = m->data;
    rq->m = *m;
    return rq;
}

const char *const gw_id_source_names[] = {"anonymous", "header", "jwt", "api_key"};

/* Counts how the answered request's caller was identified, or why its credential was refused. */
static void
count_identity(struct gw_req *rq)
{
    static const char *const results[][2] = {
        [GW_ID_ANONYMOUS] = {"none", "none"},
        [GW_ID_HEADER] = {"trusted", "trusted"},
        [GW_ID_JWT] = {"verified", "cached"},
        [GW_ID_API_KEY] = {"looked_up", "cached"},
    };
    const char *source = gw_id_source_names[rq->id_source];
    if (rq->id_refusal)
        gw_stats_id_refusal(&rq->wk->stats,
                            strcmp(rq->id_refusal, "missing") == 0 ? "none" : source,
                            rq->id_refusal);
    else
        gw_stats_identity(&rq->wk->stats, source, results[rq->id_source][rq->id_cached]);
}

void
gw_req_free(struct gw_req *rq)
{
    struct gw_worker *wk = rq->wk;
    if (rq->detached)
        LIST_REMOVE(rq, bg_link);
    if (rq->warm) {
        wk->warm.inflight--;
        if (rq->policy == wk->warm.policy) { /* not a request of an older generation's warming */
            if (rq->warm_outcome == WARM_FILLED)
                wk->warm.filled++;
            else if (rq->warm_outcome == WARM_CACHED)
                wk->warm.hits++;
            else
                wk->warm.failed++;
        }
    }
    if (rq->inflight)
        gw_inflight_finish(rq);
    if (rq->admit.lease_taken && !rq->filled && !wk->closing)
        /* It took its key's fill lease and filled nothing (the origin failed, the answer was
         * not stored): the next caller need not wait for the lease to run out. */
        store_release_lease(wk->store, rq->admit.cache_key, rq->admit.cache_keylen);
    if (rq->freed)
        *rq->freed = true; /* the pool's callback gives the call up itself */
    else if (rq->call)
        upstream_cancel(rq->call);
    if (rq->fill_timer)
        event_free(rq->fill_timer);
    store_entry_release(rq->entry);
    store_entry_release(rq->stale);
    store_entry_release(rq->answer);
    if (rq->body)
        json_decref(rq->body);
    json_decref(rq->claims);
    free(rq->own_raw);
    if (rq->hdrs != rq->hdrs_inline)
        free(rq->hdrs);
    if (rq->relay_ops)
        rq->relay_ops->free(rq);
    policy_release(rq->policy);
    free(rq);
}

uint64_t
gw_origin_done(struct gw_req *rq)
{
    rq->origin_time_us = util_mono_us() - rq->origin_us;
    rq->origin_timed = true;
    return rq->origin_time_us;
}

/* ---- the error log and the access log ------------------------------------------------------ */

void
gw_log(struct gw_req *rq, enum log_level lv, int status, const char *fmt, ...)
{
    rq->logged = true;
    if (!log_enabled(lv))
        return;
    char msg[1024], flat[2048], st[16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* What an origin said may quote the request's own bytes: one line whatever it holds. */
    size_t n = 0;
    for (const char *p = msg; *p && n + 2 < sizeof(flat); p++) {
        if (*p == '\n' || *p == '\r') {
            flat[n++] = '\\';
            flat[n++] = *p == '\n' ? 'n' : 'r';
        } else {
            flat[n++] = *p;
        }
    }
    flat[n] = '\0';
    const char *id = gw_request_id(rq);
    struct log_field f[3] = {{"request_id", id}, {"route", rq->ep->name}, {"status", st}};
    snprintf(st, sizeof(st), "%d", status);
    log_fields(lv, f, status ? 3 : 2, "request %s: %s: %s", id, rq->ep->name, flat);
}

/* The access log's record of request rq, answered rq->status with body_len bytes of body. */
static void
access_record(const struct gw_req *rq, uint64_t body_len, uint64_t now_us,
              struct gw_access_record *r)
{
    *r = (struct gw_access_record){
        .now_us = now_us,
        .duration_us = now_us - rq->start_us,
        .request_id = rq->request_id,
        .http = &rq->sr->http,
        .route = rq->ep->name,
        .status = rq->status,
        .cache = rq->cache_kind,
        .user = rq->user,
        .user_len = rq->user_len,
        .tenant = rq->tenant,
        .tenant_len = rq->tenant_len,
        .tier = rq->tier ? rq->tier->name : NULL,
        .limit = rq->deciding_limit,
        .limit_remaining = rq->deciding_remaining,
        .limit_shadow = rq->deciding_shadow,
        .shadow_denied = rq->shadow_denied,
        .nshadow_denied = rq->nshadow_denied,
        .origin = rq->origin_timed,
        .origin_us = rq->origin_time_us,
        .client = rq->sr->ip,
        .identity = gw_id_source_names[rq->id_source],
        .identity_refused = rq->id_refusal,
        .bytes = rq->sr->http.method == HTTP_HEAD ? 0 : body_len,
    };
}

/* The client is answered rq->status with body_len bytes of body, and the server is about to
 * have the answer (after which the request's strings are gone): counts it in the worker's
 * stats and puts its line in the worker's access log. */
static void
answered(struct gw_req *rq, uint64_t body_len)
{
    struct gw_worker *wk = rq->wk;
    if (!wk)
        return;
    uint64_t now_us = util_mono_us();
    count_answer(wk, rq->method, rq->ep->name, rq->tier ? rq->tier->name : NULL, rq->status,
                 rq->cache_kind, now_us - rq->start_us);
    count_identity(rq);
    if (!gw_access_on(&wk->access))
        return;
    gw_request_id(rq);
    struct gw_access_record r;
    access_record(rq, body_len, now_us, &r);
    gw_access_log(&wk->access, &r);
}

void
gw_answered(struct gw_req *rq, uint64_t body_len)
{
    if (!rq->detached)
        answered(rq, body_len);
}

/* Sends a response to the request's client; a detached request has none. */
static void
respond(struct gw_req *rq, const struct server_response *resp)
{
    rq->status = resp->status;
    if (rq->detached) {
        if (resp->status >= 400 && rq->warm && !rq->logged)
            gw_log(rq, LOGL_WARN, resp->status, "warming failed: the origin answered %d",
                   resp->status);
        if (resp->release)
            resp->release(resp->body, resp->body_len, resp->body_arg);
        return;
    }
    if (resp->status >= 500 && !rq->logged)
        /* Not the gateway's failure: an origin's own answer, passed on or from the cache. */
        gw_log(rq, LOGL_WARN, resp->status, "%d: %s", resp->status,
               rq->cache_kind == GW_CACHE_HIT ? "the cached answer of the origin"
                                              : "the origin's own answer");
    answered(rq, resp->body_len);
    server_respond(rq->sr, resp);
}

/* Appends to the response's extra headers, kept NUL-terminated. They start in the request's
 * own buffer and move to the heap when a field (an upstream's long ETag) needs more: a head
 * is never cut short. */
static void
hdr_add(struct gw_req *rq, const char *s, size_t len)
{
    if (len >= rq->hdrs_cap - rq->hdrs_len) {
        size_t cap = 2 * (rq->hdrs_len + len + 1);
        char *p = xmalloc(cap);
        memcpy(p, rq->hdrs, rq->hdrs_len);
        if (rq->hdrs != rq->hdrs_inline)
            free(rq->hdrs);
        rq->hdrs = p;
        rq->hdrs_cap = cap;
    }
    memcpy(rq->hdrs + rq->hdrs_len, s, len);
    rq->hdrs_len += len;
    rq->hdrs[rq->hdrs_len] = '\0';
}

static void
hdr_str(struct gw_req *rq, const char *s)
{
    hdr_add(rq, s, strlen(s));
}

static void
hdr_u64(struct gw_req *rq, uint64_t v)
{
    char buf[20];
    hdr_add(rq, buf, util_u64(buf, v));
}

/* ---- request ids ---------------------------------------------------------------------------- */

static pthread_once_t id_once = PTHREAD_ONCE_INIT;
static uint64_t id_base;   /* random, drawn once per process */
static uint64_t id_blocks; /* atomic: the first count of the next thread's block */
#define ID_BLOCK (1ull << 32)
static __thread uint64_t id_next, id_end; /* this thread's block: no counter shared per id */

static void
id_init(void)
{
    if (getrandom(&id_base, sizeof(id_base), GRND_NONBLOCK) != sizeof(id_base))
        id_base = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
}

/* splitmix64's finalizer: a bijection of 64-bit numbers, so distinct counts give distinct ids
 * that do not show how many requests came between two of them. */
static uint64_t
id_mix(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* A count no other call of the process has had: each thread counts through a block of its
 * own, taken from the shared counter once per 2^32 ids. */
static uint64_t
id_count(void)
{
    if (id_next == id_end) {
        id_next = __atomic_fetch_add(&id_blocks, ID_BLOCK, __ATOMIC_RELAXED);
        id_end = id_next + ID_BLOCK;
    }
    return id_next++;
}

/* A client's X-Request-Id is taken only as a token that is safe in a log line, a header and
 * a JSON string: 1 to GW_REQUEST_ID_MAX letters, digits and "-_.:+/=". */
static bool
safe_request_id(const char *s, size_t len)
{
    if (len == 0 || len > GW_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              strchr("-_.:+/=", c)))
            return false;
    }
    return true;
}

const char *
gw_request_id_for(const struct http_request *h, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const struct http_str *given = NULL;
    size_t n = 0;
    for (size_t i = 0; i < h->nheaders; i++)
        if (h->headers[i].name.len == 12 &&
            strncasecmp(h->headers[i].name.p, "x-request-id", 12) == 0 && n++ == 0)
            given = &h->headers[i].value;
    if (n == 1 && safe_request_id(given->p, given->len)) {
        memcpy(out, given->p, given->len);
        out[given->len] = '\0';
        return out;
    }
    pthread_once(&id_once, id_init);
    uint64_t id = id_mix(id_base + id_count());
    for (int i = 15; i >= 0; i--, id >>= 4)
        out[i] = hex[id & 15];
    out[16] = '\0';
    return out;
}

const char *
gw_request_id(struct gw_req *rq)
{
    if (!rq->request_id[0])
        gw_request_id_for(&rq->sr->http, rq->request_id);
    return rq->request_id;
}

/* Adds X-Request-Id to the answer's fields, once. */
static void
hdr_request_id(struct gw_req *rq)
{
    if (rq->id_sent)
        return;
    rq->id_sent = true;
    hdr_str(rq, "X-Request-Id: ");
    hdr_str(rq, gw_request_id(rq));
    hdr_str(rq, "\r\n");
}

/*
 * The CORS fields of an answer (Fetch standard, CORS protocol, "HTTP responses"): Vary: Origin
 * when the answer depends on the Origin, and for an allowed origin Access-Control-Allow-Origin
 * and the endpoint's fixed lines. Added as the answer is written: a cached entry holds none.
 */
static void
cors_fields(struct gw_req *rq)
{
    const struct policy_cors *c = rq->ep->fields.cors;
    if (!c || rq->detached)
        return;
    if (c->vary_origin)
        hdr_str(rq, "Vary: Origin\r\n");
    const struct http_str *o = http_header_get(&rq->sr->http, "origin");
    if (!o || !policy_cors_allows(c, o->p, o->len))
        return;
    if (c->any_origin) {
        hdr_str(rq, "Access-Control-Allow-Origin: *\r\n");
    } else {
        hdr_str(rq, "Access-Control-Allow-Origin: ");
        hdr_add(rq, o->p, o->len);
        hdr_str(rq, "\r\n");
    }
    hdr_add(rq, c->actual, c->actual_len);
}

/* Whether the answer's own field line is left out: a response rule names it, or it is an
 * upstream's Access-Control-* field on an endpoint whose cors sluice answers. */
static bool
replaced(const struct policy_endpoint *ep, const char *line, size_t len)
{
    return policy_rules_name(ep->fields.response, line, len) ||
           (ep->fields.cors && policy_line_is_cors(line, len));
}

/*
 * The fields of an answer beside sluice's own: the answer's own lines (*lines, *len: a cached
 * or upstream answer's, or none) without those the endpoint replaces (then copied into the
 * request's header lines and *lines set to NULL; left by reference when none is), the values
 * of its response_headers expanded for this request, then the CORS fields.
 */
static void
answer_fields(struct gw_req *rq, const char **lines, size_t *len)
{
    const struct policy_endpoint *ep = rq->ep;
    if (rq->detached)
        return;
    if (*lines && *len && (ep->fields.response || ep->fields.cors)) {
        bool any = false;
        for (size_t i = 0; i < *len && !any;) {
            const char *nl = memchr(*lines + i, '\n', *len - i);
            size_t n = nl ? (size_t)(nl - (*lines + i)) + 1 : *len - i;
            any = replaced(ep, *lines + i, n);
            i += n;
        }
        if (any) {
            for (size_t i = 0; i < *len;) {
                const char *nl = memchr(*lines + i, '\n', *len - i);
                size_t n = nl ? (size_t)(nl - (*lines + i)) + 1 : *len - i;
                if (!replaced(ep, *lines + i, n))
                    hdr_add(rq, *lines + i, n);
                i += n;
            }
            *lines = NULL;
            *len = 0;
        }
    }
    const struct policy_header_rules *r = ep->fields.response;
    for (size_t i = 0; r && i < r->n; i++) {
        size_t vlen;
        const char *v = r->rules[i].value ? gw_expand(rq, r->rules[i].value, &vlen) : NULL;
        if (!v)
            continue;
        hdr_add(rq, r->rules[i].name, r->rules[i].name_len);
        hdr_str(rq, ": ");
        hdr_add(rq, v, vlen);
        hdr_str(rq, "\r\n");
    }
    cors_fields(rq);
}

void
gw_fail(struct gw_req *rq, int status, const char *detail)
{
    const char *id = gw_request_id(rq);
    rq->status = status;
    if (rq->detached) {
        if (!rq->logged)
            gw_log(rq, LOGL_WARN, status, "%s: %d %s", rq->warm ? "warming" : "refreshing", status,
                   detail);
    } else {
        if (status >= 500 && !rq->logged)
            /* A server that is shutting down fails what is left by design. */
            gw_log(rq, rq->wk && rq->wk->closing ? LOGL_WARN : LOGL_ERROR, status, "%d %s", status,
                   detail);
        hdr_request_id(rq);
        cors_fields(rq);
        json_t *ext = json_pack("{s:s}", "request_id", id);
        size_t len;
        char *body = server_problem_body(status, NULL, NULL, detail, ext, &len);
        json_decref(ext);
        answered(rq, len);
        server_respond_problem_body(rq->sr, status, body, len, rq->hdrs);
        free(body);
    }
    gw_req_free(rq);
}

void
gw_fail_internal(struct gw_req *rq, int status, const char *detail, const char *internal)
{
    /* A 4xx here is the request's fault, told to the client in general words: a warning. */
    gw_log(rq, status >= 500 ? LOGL_ERROR : LOGL_WARN, status, "%d %s: %s", status, detail,
           internal);
    gw_fail(rq, status, detail);
}

void
gw_fail_auth(struct gw_req *rq, int status, const char *challenge, const char *detail)
{
    hdr_str(rq, "WWW-Authenticate: ");
    hdr_str(rq, challenge);
    hdr_str(rq, "\r\n");
    gw_fail(rq, status, detail);
}

/* Counts an answer given before a request object exists (route: the endpoint's name, or
 * GW_ROUTE_UNMATCHED) and puts it in the access log. */
static void
record_early(struct gw_worker *wk, struct server_request *sr, const char *route, int status,
             const char *id, size_t bytes, uint64_t start_us)
{
    const struct http_request *h = &sr->http;
    uint64_t now_us = util_mono_us(), duration_us = now_us - start_us;
    count_answer(wk, h->method, route, NULL, status, GW_CACHE_NONE, duration_us);
    if (gw_access_on(&wk->access)) {
        struct gw_access_record r = {
            .now_us = now_us,
            .duration_us = duration_us,
            .request_id = id,
            .http = h,
            .route = route,
            .status = status,
            .cache = GW_CACHE_NONE,
            .client = sr->ip,
            .bytes = h->method == HTTP_HEAD ? 0 : bytes,
        };
        gw_access_log(&wk->access, &r);
    }
}

/* An early answer as problem+json: detail for the client, extra_headers borrowed (or NULL). */
static void
reply_early_problem(struct gw_worker *wk, struct server_request *sr, const char *route, int status,
                    const char *detail, const char *extra_headers, uint64_t start_us)
{
    char id[GW_REQUEST_ID_MAX + 1];
    struct sbuf hdrs = {0};
    gw_request_id_for(&sr->http, id);
    if (extra_headers)
        sbuf_adds(&hdrs, extra_headers);
    sbuf_printf(&hdrs, "X-Request-Id: %s\r\n", id);
    json_t *ext = json_pack("{s:s}", "request_id", id);
    size_t len;
    char *body = server_problem_body(status, NULL, NULL, detail, ext, &len);
    json_decref(ext);
    record_early(wk, sr, route, status, id, len, start_us);
    server_respond_problem_body(sr, status, body, len, hdrs.p);
    free(body);
    sbuf_free(&hdrs);
}

void
gw_reply_unrouted(struct gw_worker *wk, struct server_request *sr, int status, const char *detail,
                  const char *extra_headers, uint64_t start_us)
{
    reply_early_problem(wk, sr, GW_ROUTE_UNMATCHED, status, detail, extra_headers, start_us);
}

/* A preflight's answer depends on these (Fetch standard, CORS protocol and HTTP caches). */
#define PREFLIGHT_VARY                                                                             \
    "Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n"

void
gw_reply_preflight(struct gw_worker *wk, struct server_request *sr,
                   const struct policy_endpoint *ep, uint64_t start_us)
{
    const struct http_request *h = &sr->http;
    const struct policy_cors *c = ep->fields.cors;
    const struct http_str *origin = http_header_get(h, "origin");
    const struct http_str *method = http_header_get(h, "access-control-request-method");
    assert(c && origin && method);
    if (!policy_cors_allows(c, origin->p, origin->len)) {
        reply_early_problem(wk, sr, ep->name, 403, "this origin may not call this endpoint (cors)",
                            PREFLIGHT_VARY, start_us);
        return;
    }
    if (!policy_cors_method(c, method->p, method->len)) {
        reply_early_problem(wk, sr, ep->name, 403,
                            "this method may not be called from a browser (cors.methods)",
                            PREFLIGHT_VARY, start_us);
        return;
    }
    char id[GW_REQUEST_ID_MAX + 1];
    gw_request_id_for(h, id);
    struct sbuf hdrs = {0};
    if (c->any_origin) {
        sbuf_adds(&hdrs, "Access-Control-Allow-Origin: *\r\n");
    } else {
        sbuf_adds(&hdrs, "Access-Control-Allow-Origin: ");
        sbuf_add(&hdrs, origin->p, origin->len);
        sbuf_adds(&hdrs, "\r\n");
    }
    if (!c->methods) {
        sbuf_adds(&hdrs, "Access-Control-Allow-Methods: ");
        sbuf_add(&hdrs, method->p, method->len);
        sbuf_adds(&hdrs, "\r\n");
    }
    const struct http_str *asked =
        c->headers_any ? http_header_get(h, "access-control-request-headers") : NULL;
    if (asked && asked->len) {
        sbuf_adds(&hdrs, "Access-Control-Allow-Headers: ");
        sbuf_add(&hdrs, asked->p, asked->len);
        sbuf_adds(&hdrs, "\r\n");
    }
    sbuf_add(&hdrs, c->preflight, c->preflight_len);
    sbuf_printf(&hdrs, "X-Request-Id: %s\r\n", id);
    record_early(wk, sr, ep->name, 204, id, 0, start_us);
    struct server_response resp = {.status = 204, .headers = hdrs.p, .headers_len = hdrs.len};
    server_respond(sr, &resp);
    sbuf_free(&hdrs);
}

void
gw_fail_retry(struct gw_req *rq, int status, uint64_t retry_s, const char *detail)
{
    hdr_str(rq, "Retry-After: ");
    hdr_u64(rq, retry_s);
    hdr_str(rq, "\r\n");
    gw_fail(rq, status, detail);
}

const char *
gw_vals_put(struct gw_req *rq, const char *s, size_t len)
{
    if (rq->vals_used + len + 1 > sizeof(rq->vals)) {
        rq->value_overflow = 1;
        return NULL;
    }
    char *p = rq->vals + rq->vals_used;
    memcpy(p, s, len);
    p[len] = '\0';
    rq->vals_used += len + 1;
    return p;
}

/* Decodes a percent-encoded value into the scratch. Returns 1, or 0 when it cannot. */
static int
decoded_value(struct gw_req *rq, const char *raw, size_t rawlen, int plus, const char **val,
              size_t *len)
{
    if (rq->vals_used + rawlen + 1 > sizeof(rq->vals)) {
        rq->value_overflow = 1;
        return 0;
    }
    char *out = rq->vals + rq->vals_used;
    size_t outlen;
    if (http_pct_decode(raw, rawlen, out, &outlen, plus) != 0)
        return 0;
    out[outlen] = '\0';
    rq->vals_used += outlen + 1;
    *val = out;
    *len = outlen;
    return 1;
}

/* Renders a JSON body field as text: strings as they are, other scalars in JSON form. */
static int
body_value(struct gw_req *rq, const char *name, size_t namelen, const char **val, size_t *len)
{
    if (!rq->body || !json_is_object(rq->body))
        return 0;
    char key[TEMPLATE_MAX_NAME + 1];
    assert(namelen < sizeof(key)); /* template names are at most TEMPLATE_MAX_NAME */
    memcpy(key, name, namelen);
    key[namelen] = '\0';
    json_t *v = json_object_get(rq->body, key);
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        *val = json_string_value(v);
        *len = json_string_length(v);
        return 1;
    }
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        return 0;
    const char *p = gw_vals_put(rq, text, strlen(text));
    free(text);
    if (!p)
        return 0;
    *val = p;
    *len = strlen(p);
    return 1;
}

const struct http_query *
gw_query(struct gw_req *rq)
{
    if (rq->query_state)
        return rq->query_state > 0 ? &rq->query : NULL;
    const struct http_str *q = &rq->sr->http.query;
    enum http_query_status st = http_query_parse(q->p, q->len, rq->vals + rq->vals_used,
                                                 sizeof(rq->vals) - rq->vals_used, &rq->query);
    if (st != HTTP_QUERY_OK) {
        rq->query_state = -1;
        rq->refusal = st == HTTP_QUERY_MALFORMED  ? "malformed query string"
                      : st == HTTP_QUERY_TOO_MANY ? "too many query parameters"
                                                  : "query string too long";
        return NULL;
    }
    rq->vals_used += rq->query.used;
    rq->query_state = 1;
    const struct policy_api_key *k = rq->policy->identity.api_key;
    if (k && k->query) {
        /* The API key's parameter is the caller's secret: kept aside for credential.c, and
         * out of {query}, {query.NAME} and the query a cacheable request forwards. */
        size_t o = 0, klen = strlen(k->query);
        for (size_t i = 0; i < rq->query.n; i++) {
            const struct http_query_param *qp = &rq->query.params[i];
            if (qp->nlen == klen && memcmp(qp->name, k->query, klen) == 0) {
                if (rq->api_key_params++ == 0) {
                    rq->api_key_param = qp->value;
                    rq->api_key_param_len = qp->vlen;
                }
                continue;
            }
            rq->query.params[o++] = *qp;
        }
        rq->query.n = o;
    }
    return &rq->query;
}

/* {query} (name NULL: the whole query, canonical) or {query.NAME} (its one value). */
static int
query_value(struct gw_req *rq, const char *name, size_t namelen, const char **val, size_t *len)
{
    const struct http_query *qr = gw_query(rq);
    if (!qr)
        return 0;
    if (!name) {
        long n = http_query_encode(qr, NULL, 0, rq->vals + rq->vals_used,
                                   sizeof(rq->vals) - rq->vals_used);
        if (n < 0) {
            rq->value_overflow = 1;
            return 0;
        }
        *val = rq->vals + rq->vals_used;
        *len = (size_t)n;
        rq->vals_used += (size_t)n + 1;
        return 1;
    }
    const struct http_query_param *p;
    size_t count = http_query_count(qr, name, namelen, &p);
    if (count > 1) {
        /* One key, several values: which one would the upstream read? Refused. */
        rq->refusal = "a query parameter the key depends on is given more than once";
        return 0;
    }
    if (count == 0)
        return 0;
    *val = p->value;
    *len = p->vlen;
    return 1;
}

int
gw_claim_value(struct gw_req *rq, const char *name, size_t namelen, const char **val, size_t *len)
{
    if (!rq->claims)
        return 0;
    json_t *c = json_object_getn(rq->claims, name, namelen);
    char buf[64];
    int n;
    switch (json_typeof(c)) {
    case JSON_STRING:
        *val = json_string_value(c);
        *len = json_string_length(c);
        return 1;
    case JSON_INTEGER:
        n = snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(c));
        break;
    case JSON_REAL:
        n = snprintf(buf, sizeof(buf), "%.17g", json_real_value(c));
        break;
    case JSON_TRUE:
        n = snprintf(buf, sizeof(buf), "true");
        break;
    case JSON_FALSE:
        n = snprintf(buf, sizeof(buf), "false");
        break;
    default:
        return 0;
    }
    *val = gw_vals_put(rq, buf, (size_t)n);
    if (!*val) {
        rq->value_overflow = 1;
        return 0;
    }
    *len = (size_t)n;
    return 1;
}

int
gw_lookup(struct gw_req *rq, enum template_var var, const char *name, size_t namelen,
          const char **val, size_t *len)
{
    const struct http_request *h = &rq->sr->http;
    switch (var) {
    case TV_USER:
        *val = rq->user;
        *len = rq->user_len;
        return rq->user != NULL;
    case TV_TENANT:
        *val = rq->tenant;
        *len = rq->tenant_len;
        return rq->tenant != NULL;
    case TV_TIER:
        if (!rq->tier)
            return 0;
        *val = rq->tier->name;
        *len = strlen(rq->tier->name);
        return 1;
    case TV_IP:
        *val = gw_ip_key(rq->sr);
        *len = strlen(*val);
        return 1;
    case TV_METHOD:
        if (h->method == HTTP_HEAD) { /* HEAD is answered from GET's entries */
            *val = "GET";
            *len = 3;
            return 1;
        }
        *val = h->method_str.p;
        *len = h->method_str.len;
        return 1;
    case TV_ROUTE:
        *val = rq->ep->name;
        *len = strlen(rq->ep->name);
        return 1;
    case TV_PATH:
        if (!name) { /* the whole path, as it is forwarded */
            *val = h->path.p;
            *len = h->path.len;
            return 1;
        }
        for (size_t i = 0; i < rq->m.nparams; i++) {
            const struct router_param *pp = &rq->m.params[i];
            if (strlen(pp->name) == namelen && memcmp(pp->name, name, namelen) == 0)
                return decoded_value(rq, pp->value, pp->len, 0, val, len);
        }
        return 0;
    case TV_QUERY:
        return query_value(rq, name, namelen, val, len);
    case TV_HEADER: {
        char hn[TEMPLATE_MAX_NAME + 1];
        assert(namelen < sizeof(hn)); /* template names are at most TEMPLATE_MAX_NAME */
        memcpy(hn, name, namelen);
        hn[namelen] = '\0';
        /* An identity header reads as the caller's value: its canonical form. */
        const struct policy_identity *id = &rq->policy->identity;
        if (id->user_header && strcasecmp(hn, id->user_header) == 0)
            return gw_lookup(rq, TV_USER, NULL, 0, val, len);
        if (id->tenant_header && strcasecmp(hn, id->tenant_header) == 0)
            return gw_lookup(rq, TV_TENANT, NULL, 0, val, len);
        const struct http_str *v = http_header_get(h, hn);
        if (!v)
            return 0;
        *val = v->p;
        *len = v->len;
        return 1;
    }
    case TV_BODY:
        return body_value(rq, name, namelen, val, len);
    case TV_CLAIM:
        return gw_claim_value(rq, name, namelen, val, len);
    default:
        return 0;
    }
}

static int
expand_lookup(void *ctx, enum template_var var, const char *name, size_t namelen, const char **val,
              size_t *len)
{
    return gw_lookup(ctx, var, name, namelen, val, len);
}

/* Expands t with `lookup` into rq's key arena: the text (NUL-terminated, its length in *len),
 * or NULL when it does not fit or a value is refused. */
static const char *
expand_into_keys(struct gw_req *rq, const struct template *t, template_lookup_fn lookup, void *ctx,
                 size_t *len)
{
    long n =
        template_expand(t, lookup, ctx, rq->keys + rq->keys_used, sizeof(rq->keys) - rq->keys_used);
    if (n < 0 || rq->value_overflow || rq->refusal)
        return NULL;
    const char *k = rq->keys + rq->keys_used;
    rq->keys_used += (size_t)n + 1;
    *len = (size_t)n;
    return k;
}

const char *
gw_expand(struct gw_req *rq, const struct template *t, size_t *len)
{
    return expand_into_keys(rq, t, expand_lookup, rq, len);
}

/* What an expansion saw of the variables naming the caller. */
struct caller_probe {
    struct gw_req *rq;
    bool user_seen, user_absent, other_absent;
};

static int
probe_lookup(void *ctx, enum template_var var, const char *name, size_t namelen, const char **val,
             size_t *len)
{
    struct caller_probe *p = ctx;
    int found = gw_lookup(p->rq, var, name, namelen, val, len);
    if (var == TV_USER) {
        p->user_seen = true;
        p->user_absent = !found;
    } else if ((var == TV_TENANT || var == TV_CLAIM) && !found) {
        p->other_absent = true;
    }
    return found;
}

const char *
gw_expand_caller(struct gw_req *rq, const struct template *t, size_t *len, bool *lacks)
{
    struct caller_probe p = {.rq = rq};
    const char *k = expand_into_keys(rq, t, probe_lookup, &p, len);
    /* {user} names one caller whatever else the key holds; without it, every caller variable
     * of the key must be the caller's. */
    *lacks = k && (p.user_seen ? p.user_absent : p.other_absent);
    return k;
}

const char *
gw_caller_key(struct gw_req *rq, size_t *len)
{
    return gw_expand(rq, rq->user ? rq->policy->tier_key_user : rq->policy->tier_key_ip, len);
}

/* ---- rate-limit headers ------------------------------------------------------------------- */

const char *
gw_limit_name(const struct gw_req *rq, size_t i)
{
    const struct policy_limit *l = &rq->ep->limits[i];
    return l->is_tier ? rq->tier->name : l->name;
}

enum gw_decision
gw_limit_decision(const struct gw_req *rq, size_t i)
{
    if (rq->results[i].allowed)
        return GW_ALLOWED;
    return rq->limits[i].shadow ? GW_SHADOW_DENIED : GW_DENIED;
}

static uint64_t
ceil_sec(uint64_t ms)
{
    return (ms + 999) / 1000;
}

/* Limit i's item of RateLimit-Policy: the policy's text, or for a limit a tenant hook changed
 * for this request, its rule as the hook left it. */
static void
hdr_limit_field(struct gw_req *rq, size_t i)
{
    const struct policy_limit *l = &rq->ep->limits[i];
    if (!(rq->hooked && rq->dec.limit[i])) {
        hdr_str(rq, l->is_tier ? rq->tier->policy_field : l->policy_field);
        return;
    }
    hdr_str(rq, "\"");
    hdr_str(rq, gw_limit_name(rq, i));
    hdr_str(rq, "\";q=");
    hdr_u64(rq, rq->limits[i].rule->limit);
    hdr_str(rq, ";w=");
    hdr_u64(rq, ceil_sec(rq->limits[i].rule->window_ms));
}

/*
 * X-RateLimit-* describe the enforced limit closest to refusing (the refusing
 * one with the longest wait when denied); RateLimit-Policy and RateLimit (IETF
 * draft-11) list every enforced limit of the request. Shadow limits are never
 * shown: the caller sees what it would see without them.
 */
void
gw_add_limit_headers(struct gw_req *rq)
{
    size_t n = rq->admit.nlimits; /* the limits counted: none for warming */
    if (!rq->admit.allowed) {
        /* Refused: no limit counted this request, not even those that would have admitted it,
         * whose results tell what was left after it. */
        for (size_t i = 0; i < n; i++) {
            struct limiter_result *r = &rq->results[i];
            if (r->allowed)
                r->remaining = r->remaining + rq->limits[i].cost < r->limit
                                   ? r->remaining + rq->limits[i].cost
                                   : r->limit;
        }
    }
    size_t pick = n, least_shadow = n;
    rq->nshadow_denied = 0;
    for (size_t i = 0; i < n; i++) {
        const struct limiter_result *b = &rq->results[i];
        if (rq->limits[i].shadow) {
            if (!b->allowed)
                rq->shadow_denied[rq->nshadow_denied++] = gw_limit_name(rq, i);
            if (least_shadow == n || b->remaining < rq->results[least_shadow].remaining)
                least_shadow = i;
            continue;
        }
        if (pick == n) {
            pick = i;
            continue;
        }
        const struct limiter_result *a = &rq->results[pick];
        if (!rq->admit.allowed) {
            if (!b->allowed && (a->allowed || b->retry_after_ms > a->retry_after_ms))
                pick = i;
        } else if (b->remaining < a->remaining) {
            pick = i;
        }
    }
    /* The access log names the limit the fields describe; with only shadow limits, the one
     * closest to refusing. */
    size_t decider = pick < n ? pick : least_shadow;
    if (decider < n) {
        rq->deciding_limit = gw_limit_name(rq, decider);
        rq->deciding_remaining = rq->results[decider].remaining;
        rq->deciding_shadow = rq->limits[decider].shadow;
    }
    if (pick == n)
        return; /* no limit, or only shadow ones */
    const struct limiter_result *r = &rq->results[pick];
    hdr_str(rq, "X-RateLimit-Limit: ");
    hdr_u64(rq, r->limit);
    hdr_str(rq, "\r\nX-RateLimit-Remaining: ");
    hdr_u64(rq, r->remaining);
    hdr_str(rq, "\r\nX-RateLimit-Reset: ");
    hdr_u64(rq, ceil_sec(r->reset_ms));
    hdr_str(rq, "\r\nRateLimit-Policy: ");
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (rq->limits[i].shadow)
            continue;
        if (!first)
            hdr_str(rq, ", ");
        first = false;
        hdr_limit_field(rq, i);
    }
    hdr_str(rq, "\r\nRateLimit: ");
    first = true;
    for (size_t i = 0; i < n; i++) {
        if (rq->limits[i].shadow)
            continue;
        hdr_str(rq, first ? "\"" : ", \"");
        first = false;
        hdr_str(rq, gw_limit_name(rq, i));
        hdr_str(rq, "\";r=");
        hdr_u64(rq, rq->results[i].remaining);
        hdr_str(rq, ";t=");
        hdr_u64(rq, ceil_sec(rq->results[i].reset_ms));
    }
    hdr_str(rq, "\r\n");
}

void
gw_reply_denied(struct gw_req *rq)
{
    uint64_t retry = 0;
    json_t *violated = json_array();
    for (size_t i = 0; i < rq->admit.nlimits; i++) {
        if (rq->results[i].allowed || rq->limits[i].shadow)
            continue;
        json_array_append_new(violated, json_string(gw_limit_name(rq, i)));
        if (rq->results[i].retry_after_ms > retry)
            retry = rq->results[i].retry_after_ms;
    }
    const char *id = gw_request_id(rq);
    hdr_str(rq, "Retry-After: ");
    hdr_u64(rq, ceil_sec(retry) ? ceil_sec(retry) : 1);
    hdr_str(rq, "\r\n");
    hdr_request_id(rq);
    cors_fields(rq);
    json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:o, s:s}", "type", QUOTA_TYPE, "title",
                          "Request cannot be satisfied as assigned quota has been exceeded",
                          "status", 429, "detail", "rate limit exceeded; retry later",
                          "violated-policies", violated, "request_id", id);
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    struct server_response resp = {
        .status = 429,
        .content_type = "application/problem+json",
        .headers = rq->hdrs,
        .headers_len = rq->hdrs_len,
        .body = body,
        .body_len = strlen(body),
    };
    respond(rq, &resp);
    free(body);
    gw_req_free(rq);
}

void
gw_apply_decision(struct gw_req *rq, size_t nl)
{
    for (size_t i = 0; i < nl; i++) {
        struct store_limit *sl = &rq->limits[i];
        if (rq->dec.limit[i]) {
            rq->hook_rules[i] = *sl->rule;
            rq->hook_rules[i].limit = rq->dec.limit[i];
            sl->rule = &rq->hook_rules[i];
        }
        if (rq->dec.cost)
            sl->cost = rq->dec.cost;
    }
}

/* ---- replies from the cache and the origin ------------------------------------------------ */

static void
release_entry(const void *body, size_t len, void *arg)
{
    store_entry_release(arg);
}

/* Whether the conditionals of a GET or HEAD (If-None-Match, else If-Modified-Since) hold
 * for the entry: the answer is then 304 (RFC 9110 section 13.2.2). */
static bool
not_modified(const struct gw_req *rq, const struct store_entry *e, const char *etag)
{
    const struct http_request *h = &rq->sr->http;
    if (e->status != 200 || (h->method != HTTP_GET && h->method != HTTP_HEAD))
        return false;
    char lm[64];
    bool has_lm = e->headers && httpcache_field_in_lines(e->headers, e->headers_len,
                                                         "last-modified", lm, sizeof(lm)) > 0;
    return httpcache_not_modified(h, etag, has_lm ? lm : NULL);
}

/*
 * The entity tag of the entry's form in coding cd (RFC 9110 section 8.8.3: each coded
 * representation has its own): the coding's name before the closing quote, "abc" becoming
 * "abc-gzip" and W/"abc" W/"abc-gzip". Written into buf (cap bytes) when it fits, else into a
 * new block *owned; NULL when the entry has none.
 */
static const char *
coded_etag(const char *etag, int cd, char *buf, size_t cap, char **owned)
{
    size_t len = etag ? strlen(etag) : 0;
    if (cd < 0 || len < 2 || etag[len - 1] != '"')
        return etag;
    const char *name = codec_name((enum codec)cd);
    size_t need = len + 1 + strlen(name) + 1;
    char *out = need <= cap ? buf : (*owned = xmalloc(need));
    snprintf(out, need, "%.*s-%s\"", (int)(len - 1), etag, name);
    return out;
}

void
gw_reply_entry(struct gw_req *rq, struct store_entry *e, const char *xcache, uint64_t now_ms)
{
    if (rq->coded && !rq->detached && rq->sr->http.minor_version == 0) {
        /* RFC 9112 6.1: no Transfer-Encoding to an HTTP/1.0 client, and the body is coded. */
        gw_fail(rq, 502,
                "the upstream's answer is in a transfer coding an HTTP/1.0 client "
                "cannot receive");
        return;
    }
    if (rq->warm && xcache && strcmp(xcache, "HIT") == 0)
        rq->warm_outcome = WARM_CACHED;
    rq->cache_kind = gw_cache_kind_of(xcache);
    if (xcache) {
        /* current_age (RFC 9111 section 4.2.3): its age when stored, plus its time here. */
        uint64_t age = (e->age_ms + (now_ms > e->stored_ms ? now_ms - e->stored_ms : 0)) / 1000;
        hdr_str(rq, "X-Cache: ");
        hdr_str(rq, xcache);
        hdr_str(rq, "\r\nAge: ");
        hdr_u64(rq, age);
        hdr_str(rq, "\r\n");
    }
    if (!rq->detached)
        hdr_request_id(rq);
    /* An entry with coded forms answers in the coding the client prefers (none for a relayed
     * answer, whose identity body is streamed), and says that the answer varies. */
    int cd = -1;
    char etag_buf[128], *etag_owned = NULL;
    if (e->coded && !rq->relay) {
        cd = coding_for_request(&rq->sr->http, store_entry_codings(e));
        hdr_str(rq, "Vary: Accept-Encoding\r\n");
        if (cd >= 0) {
            hdr_str(rq, "Content-Encoding: ");
            hdr_str(rq, codec_name((enum codec)cd));
            hdr_str(rq, "\r\n");
        }
    }
    const char *etag = coded_etag(e->etag, cd, etag_buf, sizeof(etag_buf), &etag_owned);
    if (etag) {
        hdr_str(rq, "ETag: ");
        hdr_str(rq, etag);
        hdr_str(rq, "\r\n");
    }
    const char *own = e->headers;
    size_t own_len = e->headers_len;
    answer_fields(rq, &own, &own_len);
    struct server_response resp = {
        .status = e->status,
        .content_type = e->content_type,
        .headers = rq->hdrs,
        .headers_len = rq->hdrs_len,
        .headers2 = own,
        .headers2_len = own_len,
        .close_delimited = rq->coded,
    };
    /* A streamed answer: its head goes out now, its body as it comes (conditionals are not
     * judged on it); or it ends, its copy stored. */
    if (rq->relay_ops && rq->relay_ops->reply(rq, &resp)) {
        free(etag_owned);
        return;
    }
    if (!rq->detached && not_modified(rq, e, etag)) {
        resp.status = 304;
        resp.content_type = NULL;
    } else {
        store_entry_ref(e);
        resp.body = cd >= 0 ? e->coded->body[cd] : e->body;
        resp.body_len = cd >= 0 ? e->coded->len[cd] : e->body_len;
        resp.release = release_entry;
        resp.body_arg = e;
        resp.close_delimited = rq->coded;
    }
    free(etag_owned);
    respond(rq, &resp);
    gw_req_free(rq);
}

void
gw_reply_body(struct gw_req *rq, int status, const char *body, size_t len)
{
    if (!rq->detached)
        hdr_request_id(rq);
    const char *none = NULL;
    size_t none_len = 0;
    answer_fields(rq, &none, &none_len);
    struct server_response resp = {
        .status = status,
        .content_type = rq->ep->content_type,
        .headers = rq->hdrs,
        .headers_len = rq->hdrs_len,
        .body = body,
        .body_len = len,
    };
    respond(rq, &resp);
    gw_req_free(rq);
}

bool
gw_stale_serves(const struct gw_req *rq)
{
    return rq->stale && store_now_ms() < rq->stale->expires_ms + rq->stale->sie_ms;
}

void
gw_origin_failed(struct gw_req *rq, int status, const char *detail, const char *internal)
{
    struct store_entry *e = rq->stale;
    if (gw_stale_serves(rq)) {
        gw_log(rq, LOGL_WARN, status, "serving a stale answer instead of %d %s: %s", status, detail,
               internal);
        gw_reply_entry(rq, e, "STALE", store_now_ms());
        return;
    }
    gw_fail_internal(rq, status, detail, internal);
}

void
gw_upstream_failed(struct gw_req *rq, enum upstream_error error, const char *detail)
{
    const struct policy_endpoint *ep = rq->ep;
    char internal[320];
    gw_stats_origin_error(&rq->wk->stats, GW_ORIGIN_UPSTREAM, upstream_error_word(error));
    /* The upstream's name and address, and why it failed, are for the log. */
    snprintf(internal, sizeof(internal), "upstream \"%s\" (%s:%d): %s", ep->up->name, ep->up->host,
             ep->up->port, detail);
    switch (error) {
    case UPSTREAM_TIMEOUT:
        gw_origin_failed(rq, 504, "the upstream did not answer in time", internal);
        return;
    case UPSTREAM_SHUTDOWN:
        gw_origin_failed(rq, 503, "the server is shutting down", internal);
        return;
    case UPSTREAM_PROTOCOL:
    case UPSTREAM_TOO_LARGE:
        gw_origin_failed(rq, 502, "the upstream's answer could not be used", internal);
        return;
    case UPSTREAM_CONNECT:
    default:
        gw_origin_failed(rq, 502, "the upstream is unavailable", internal);
        return;
    }
}

/* ---- fills in progress: local coalescing ------------------------------------------------- */

static struct inflight *
inflight_find(struct gw_worker *wk, const char *key, size_t len)
{
    struct hmap_node *n = hmap_find(&wk->inflight, key, len);
    return HMAP_ENTRY(n, struct inflight, node);
}

void
gw_inflight_lead(struct gw_req *rq)
{
    const char *key = rq->admit.cache_key;
    size_t len = rq->admit.cache_keylen;
    if (!key || rq->inflight || inflight_find(rq->wk, key, len))
        return;
    struct inflight *f = xmalloc(sizeof(*f) + len);
    memcpy(f->key, key, len);
    f->filler = rq;
    f->waiters = NULL;
    hmap_insert(&rq->wk->inflight, &f->node, f->key, len);
    rq->inflight = f;
}

bool
gw_inflight_busy(struct gw_req *rq)
{
    return inflight_find(rq->wk, rq->admit.cache_key, rq->admit.cache_keylen) != NULL;
}

bool
gw_inflight_wait(struct gw_req *rq)
{
    struct inflight *f = inflight_find(rq->wk, rq->admit.cache_key, rq->admit.cache_keylen);
    if (!f || f->filler == rq || rq->authorized_only)
        return false; /* an authorized request takes no answer another's fill lands unchecked */
    if (!rq->wait_start_ms)
        rq->wait_start_ms = store_now_ms();
    rq->next_waiter = f->waiters;
    f->waiters = rq;
    return true;
}

void
gw_inflight_finish(struct gw_req *rq)
{
    struct inflight *f = rq->inflight;
    rq->inflight = NULL;
    hmap_remove(&rq->wk->inflight, &f->node);
    struct gw_req *w = f->waiters;
    free(f);
    struct store_entry *e = rq->answer;
    if (!e && !rq->uncacheable && w && !rq->wk->closing) {
        struct gw_req *heir = w;
        w = w->next_waiter;
        heir->next_waiter = NULL;
        if (rq->admit.lease_taken && !rq->filled) {
            /* The fill lease goes with the fill: the heir gives it back if it fails too. */
            heir->admit.lease_taken = true;
            rq->admit.lease_taken = false;
        }
        gw_inflight_lead(heir);
        rq->wk->to_origin(heir); /* the others wait on it below, while their wait lasts */
    }
    uint64_t now = store_now_ms();
    while (w) {
        struct gw_req *next = w->next_waiter;
        w->next_waiter = NULL;
        if (!e && !rq->uncacheable && !rq->wk->closing && w->wait_start_ms + FILL_WAIT_MS > now) {
            /* The fill failed and this one may wait longer: it waits on the heir's fill. */
            if (gw_inflight_wait(w)) {
                w = next;
                continue;
            }
        }
        bool share = e != NULL;
        if (share && rq->vary_names[0] && !rq->primary_key) {
            /* The answer varies: shared only with a waiter sending the same fields. */
            long n = gw_vary_key(w, rq->vary_names);
            share = n >= 0 && (size_t)n == strlen(rq->vkey) &&
                    memcmp(w->vkey, rq->vkey, (size_t)n) == 0;
        }
        if (share)
            gw_reply_entry(w, e, rq->admit.bypassed ? "BYPASS" : "HIT", e->stored_ms);
        else
            rq->wk->to_origin(w);
        w = next;
    }
}

long
gw_vary_key(struct gw_req *rq, const char *names)
{
    const char *primary = rq->primary_key ? rq->primary_key : rq->admit.cache_key;
    size_t plen = rq->primary_key ? rq->primary_len : rq->admit.cache_keylen;
    return httpcache_vary_key(primary, plen, names, &rq->sr->http, rq->vkey, sizeof(rq->vkey));
}
