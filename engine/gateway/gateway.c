/* gateway.c - the request path: route, identify, limit + lookup, origin, fill, invalidate. */
#define _GNU_SOURCE
#include "gateway_internal.h"

#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "db.h"
#include "httpcache.h"
#include "tier_cache.h"
#include "policy.h"
#include "router.h"
#include "store.h"
#include "template.h"
#include "tenant.h"
#include "tenant_hooks.h"
#include "upstream.h"
#include "util.h"

/* ---- policy snapshots --------------------------------------------------------------------- */

struct gateway *
gateway_new(const struct gateway_config *cfg, struct policy *policy)
{
    struct gateway *g = xcalloc(1, sizeof(*g));
    g->cfg = *cfg;
    pthread_mutex_init(&g->lock, NULL);
    policy_ref(policy);
    g->policy = policy;
    g->generation = policy->generation;
    g->mem = store_memory_new(cfg->cache_bytes);
    return g;
}

void
gateway_free(struct gateway *g)
{
    if (!g)
        return;
    policy_release(g->policy);
    store_memory_free(g->mem);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

void
gateway_set_policy(struct gateway *g, struct policy *policy)
{
    policy_ref(policy);
    pthread_mutex_lock(&g->lock);
    struct policy *old = g->policy;
    g->policy = policy;
    __atomic_store_n(&g->generation, policy->generation, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g->lock);
    policy_release(old);
}

struct policy *
gateway_policy(struct gateway *g)
{
    pthread_mutex_lock(&g->lock);
    struct policy *p = g->policy;
    policy_ref(p);
    pthread_mutex_unlock(&g->lock);
    return p;
}

/* The worker's current snapshot, refreshed when a new generation was published. */
static struct policy *
worker_policy(struct gw_worker *wk)
{
    struct gateway *g = wk->g;
    if (__atomic_load_n(&g->generation, __ATOMIC_ACQUIRE) != wk->generation) {
        pthread_mutex_lock(&g->lock);
        struct policy *p = g->policy;
        policy_ref(p);
        pthread_mutex_unlock(&g->lock);
        policy_release(wk->policy);
        wk->policy = p;
        wk->generation = p->generation;
        tenant_runtime_reset(wk->tenants, p->generation);
        if (wk->warm.timer)
            gw_warm_start(wk, p);
    }
    return wk->policy;
}

/* ---- per-request helpers ------------------------------------------------------------------ */

void
gw_req_free(struct gw_req *rq)
{
    struct gw_worker *wk = rq->wk;
    if (rq->detached) {
        if (rq->bg_prev)
            rq->bg_prev->bg_next = rq->bg_next;
        else if (wk->background == rq)
            wk->background = rq->bg_next;
        if (rq->bg_next)
            rq->bg_next->bg_prev = rq->bg_prev;
    }
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
    if (rq->call)
        upstream_cancel(rq->call);
    if (rq->fill_timer)
        event_free(rq->fill_timer);
    store_entry_release(rq->entry);
    store_entry_release(rq->stale);
    store_entry_release(rq->answer);
    if (rq->body)
        json_decref(rq->body);
    free(rq->own_raw);
    policy_release(rq->policy);
    free(rq);
}

/* Sends a response to the request's client; a detached request has none. */
static void
respond(struct gw_req *rq, const struct server_response *resp)
{
    if (rq->detached) {
        if (resp->status >= 400 && rq->warm)
            fprintf(stderr, "sluice: warming %s failed: %d\n", rq->ep->name, resp->status);
        if (resp->release)
            resp->release(resp->body, resp->body_len, resp->body_arg);
        return;
    }
    server_respond(rq->sr, resp);
}

/* Appends to the response's extra headers, kept NUL-terminated (truncated at HDRS_BYTES, which
 * the limits on names and counts keep out of reach). */
static void
hdr_add(struct gw_req *rq, const char *s, size_t len)
{
    size_t room = sizeof(rq->hdrs) - 1 - rq->hdrs_len;
    if (len > room)
        len = room;
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

void
gw_fail(struct gw_req *rq, int status, const char *detail)
{
    if (rq->detached) {
        fprintf(stderr, "sluice: %s %s: %d %s\n", rq->warm ? "warming" : "refreshing", rq->ep->name,
                status, detail);
    } else {
        server_respond_problem(rq->sr, status, NULL, NULL, detail, rq->hdrs_len ? rq->hdrs : NULL);
    }
    gw_req_free(rq);
}

/* Copies len bytes into the request's value scratch; NULL (and refusal) when full. */
static char *
vals_put(struct gw_req *rq, const char *s, size_t len)
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
    char key[128];
    if (namelen >= sizeof(key))
        return 0;
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
    const char *p = vals_put(rq, text, strlen(text));
    free(text);
    if (!p)
        return 0;
    *val = p;
    *len = strlen(p);
    return 1;
}

static int
lookup(void *ctx, enum template_var var, const char *name, size_t namelen, const char **val,
       size_t *len)
{
    struct gw_req *rq = ctx;
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
        *val = rq->sr->ip;
        *len = strlen(rq->sr->ip);
        return 1;
    case TV_METHOD:
        *val = h->method_str.p;
        *len = h->method_str.len;
        return 1;
    case TV_ROUTE:
        *val = rq->ep->name;
        *len = strlen(rq->ep->name);
        return 1;
    case TV_PATH:
        for (size_t i = 0; i < rq->m.nparams; i++) {
            const struct router_param *pp = &rq->m.params[i];
            if (strlen(pp->name) == namelen && memcmp(pp->name, name, namelen) == 0)
                return decoded_value(rq, pp->value, pp->len, 0, val, len);
        }
        return 0;
    case TV_QUERY: {
        struct http_str raw;
        if (!http_query_find(h->query.p, h->query.len, name, namelen, &raw))
            return 0;
        return decoded_value(rq, raw.p, raw.len, 1, val, len);
    }
    case TV_HEADER: {
        char hn[128];
        if (namelen >= sizeof(hn))
            return 0;
        memcpy(hn, name, namelen);
        hn[namelen] = '\0';
        const struct http_str *v = http_header_get(h, hn);
        if (!v)
            return 0;
        *val = v->p;
        *len = v->len;
        return 1;
    }
    case TV_BODY:
        return body_value(rq, name, namelen, val, len);
    default:
        return 0;
    }
}

/* Expands a template into the key arena. Returns the key, or NULL when it does not fit. */
const char *
gw_expand(struct gw_req *rq, const struct template *t, size_t *len)
{
    long n =
        template_expand(t, lookup, rq, rq->keys + rq->keys_used, sizeof(rq->keys) - rq->keys_used);
    if (n < 0 || rq->value_overflow)
        return NULL;
    const char *k = rq->keys + rq->keys_used;
    rq->keys_used += (size_t)n + 1;
    *len = (size_t)n;
    return k;
}

/* The tier counter of the caller: one per user, or per address for anonymous callers. */
const char *
gw_caller_key(struct gw_req *rq, size_t *len)
{
    return gw_expand(rq, rq->user ? rq->policy->tier_key_user : rq->policy->tier_key_ip, len);
}

/* ---- rate-limit headers ------------------------------------------------------------------- */

static const char *
limit_name(const struct gw_req *rq, size_t i)
{
    const struct policy_limit *l = &rq->ep->limits[i];
    return l->is_tier ? rq->tier->name : l->name;
}

static const char *
limit_field(const struct gw_req *rq, size_t i)
{
    const struct policy_limit *l = &rq->ep->limits[i];
    if (rq->hooked && i < POLICY_MAX_LIMITS && rq->dec.limit[i])
        return rq->hook_fields[i]; /* a tenant hook changed this limit for this request */
    return l->is_tier ? rq->tier->policy_field : l->policy_field;
}

static uint64_t
ceil_sec(uint64_t ms)
{
    return (ms + 999) / 1000;
}

/*
 * X-RateLimit-* describe the limit closest to refusing (the refusing one with
 * the longest wait when denied); RateLimit-Policy and RateLimit (IETF draft-11)
 * list every limit of the request.
 */
static void
add_limit_headers(struct gw_req *rq)
{
    size_t n = rq->admit.nlimits; /* the limits counted: none for warming */
    if (n == 0)
        return;
    size_t pick = 0;
    for (size_t i = 1; i < n; i++) {
        const struct limiter_result *a = &rq->results[pick], *b = &rq->results[i];
        if (!rq->admit.allowed) {
            if (!b->allowed && (a->allowed || b->retry_after_ms > a->retry_after_ms))
                pick = i;
        } else if (b->remaining < a->remaining) {
            pick = i;
        }
    }
    const struct limiter_result *r = &rq->results[pick];
    hdr_str(rq, "X-RateLimit-Limit: ");
    hdr_u64(rq, r->limit);
    hdr_str(rq, "\r\nX-RateLimit-Remaining: ");
    hdr_u64(rq, r->remaining);
    hdr_str(rq, "\r\nX-RateLimit-Reset: ");
    hdr_u64(rq, ceil_sec(r->reset_ms));
    hdr_str(rq, "\r\nRateLimit-Policy: ");
    for (size_t i = 0; i < n; i++) {
        if (i)
            hdr_str(rq, ", ");
        hdr_str(rq, limit_field(rq, i));
    }
    hdr_str(rq, "\r\nRateLimit: ");
    for (size_t i = 0; i < n; i++) {
        hdr_str(rq, i ? ", \"" : "\"");
        hdr_str(rq, limit_name(rq, i));
        hdr_str(rq, "\";r=");
        hdr_u64(rq, rq->results[i].remaining);
        hdr_str(rq, ";t=");
        hdr_u64(rq, ceil_sec(rq->results[i].reset_ms));
    }
    hdr_str(rq, "\r\n");
}

static void
reply_denied(struct gw_req *rq)
{
    uint64_t retry = 0;
    json_t *violated = json_array();
    for (size_t i = 0; i < rq->admit.nlimits; i++) {
        if (rq->results[i].allowed)
            continue;
        json_array_append_new(violated, json_string(limit_name(rq, i)));
        if (rq->results[i].retry_after_ms > retry)
            retry = rq->results[i].retry_after_ms;
    }
    hdr_str(rq, "Retry-After: ");
    hdr_u64(rq, ceil_sec(retry) ? ceil_sec(retry) : 1);
    hdr_str(rq, "\r\n");
    json_t *o =
        json_pack("{s:s, s:s, s:i, s:s, s:o}", "type", QUOTA_TYPE, "title",
                  "Request cannot be satisfied as assigned quota has been exceeded", "status", 429,
                  "detail", "rate limit exceeded; retry later", "violated-policies", violated);
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

/* ---- replies from the cache and the origin ------------------------------------------------ */

static void
release_entry(const void *body, size_t len, void *arg)
{
    store_entry_release(arg);
}

/* Whether the request's If-None-Match matches the entry: the answer is then 304. */
static bool
not_modified(const struct gw_req *rq, const struct store_entry *e)
{
    if (!e->etag || e->status != 200)
        return false;
    const struct http_str *inm = http_header_get(&rq->sr->http, "if-none-match");
    return inm && httpcache_etag_matches(inm->p, inm->len, e->etag);
}

/*
 * Replies with a cached, just-filled or just-fetched entry (the reply holds
 * its own reference): X-Cache (unless NULL) and Age, the entity tag, the
 * stored fields; 304 without a body when If-None-Match matches.
 */
void
gw_reply_entry(struct gw_req *rq, struct store_entry *e, const char *xcache, uint64_t now_ms)
{
    if (rq->warm && xcache && strcmp(xcache, "HIT") == 0)
        rq->warm_outcome = WARM_CACHED;
    if (xcache) {
        uint64_t age = now_ms > e->stored_ms ? (now_ms - e->stored_ms) / 1000 : 0;
        hdr_str(rq, "X-Cache: ");
        hdr_str(rq, xcache);
        hdr_str(rq, "\r\nAge: ");
        hdr_u64(rq, age);
        hdr_str(rq, "\r\n");
    }
    if (e->etag) {
        hdr_str(rq, "ETag: ");
        hdr_str(rq, e->etag);
        hdr_str(rq, "\r\n");
    }
    struct server_response resp = {
        .status = e->status,
        .content_type = e->content_type,
        .headers = rq->hdrs,
        .headers_len = rq->hdrs_len,
        .headers2 = e->headers,
        .headers2_len = e->headers_len,
    };
    if (!rq->detached && not_modified(rq, e)) {
        resp.status = 304;
        resp.content_type = NULL;
    } else {
        store_entry_ref(e);
        resp.body = e->body;
        resp.body_len = e->body_len;
        resp.release = release_entry;
        resp.body_arg = e;
    }
    respond(rq, &resp);
    gw_req_free(rq);
}

static void
reply_body(struct gw_req *rq, int status, const char *body, size_t len)
{
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

/* An answer of the SQL or static source as an entry (body taken). */
static struct store_entry *
origin_entry(struct gw_req *rq, int status, char *body, size_t len)
{
    return store_entry_new((uint16_t)status, xstrdup(rq->ep->content_type), body, len);
}

/* A fresh origin answer for a cached endpoint: store it, then reply (body taken). */
static void
fill_and_reply(struct gw_req *rq, int status, char *body, size_t len)
{
    struct store_entry *e = origin_entry(rq, status, body, len);
    gw_store_and_reply(rq, e, rq->ep->ttl_ms, NULL);
    store_entry_release(e);
}

/*
 * The origin failed: the stale entry when the endpoint's stale_if_error
 * window still covers it, else the error.
 */
bool
gw_stale_serves(const struct gw_req *rq)
{
    return rq->stale && store_now_ms() <= rq->stale->expires_ms + rq->ep->sie_ms;
}

void
gw_origin_failed(struct gw_req *rq, int status, const char *detail)
{
    struct store_entry *e = rq->stale;
    if (gw_stale_serves(rq)) {
        fprintf(stderr, "sluice: %s: serving a stale answer: %s\n", rq->ep->name, detail);
        gw_reply_entry(rq, e, "STALE", store_now_ms());
        return;
    }
    gw_fail(rq, status, detail);
}

/* The invalidation of a write landed (or failed): now the write is answered. */
static void
on_invalidated(void *arg, int status)
{
    struct gw_req *rq = arg;
    if (status != 0)
        fprintf(stderr, "sluice: invalidation after %s failed; entries may stay until their TTL\n",
                rq->ep->name);
    gw_reply_entry(rq, rq->answer, NULL, 0);
}

/*
 * After a successful write: bumps the generations of the endpoint's
 * invalidate tags, and answers with e (a reference is taken) only once the
 * store has acknowledged, so that the caller's next read, on any instance,
 * sees the write.
 */
void
gw_invalidate_then_reply(struct gw_req *rq, struct store_entry *e)
{
    const struct policy_endpoint *ep = rq->ep;
    const char **tags = rq->inv_tags; /* the store may hold them until it is done */
    size_t *lens = rq->inv_lens;
    size_t n = 0;
    store_entry_ref(e);
    rq->answer = e;
    for (size_t i = 0; i < ep->ninvalidate && n < MAX_TAGS; i++) {
        tags[n] = gw_expand(rq, ep->invalidate[i], &lens[n]);
        if (!tags[n]) {
            gw_fail(rq, 500, "an invalidation key was too long");
            return;
        }
        n++;
    }
    if (n == 0) {
        gw_reply_entry(rq, e, NULL, 0);
        return;
    }
    store_invalidate(rq->wk->store, tags, lens, n, on_invalidated, rq);
}

static int
sqlstate_status(const char *sqlstate)
{
    return sqlstate && strncmp(sqlstate, "23", 2) == 0 ? 409 : 400;
}

static void
on_db(void *arg, const struct db_result *res)
{
    struct gw_req *rq = arg;
    const struct policy_endpoint *ep = rq->ep;
    char detail[256];
    switch (res->status) {
    case DB_OK:
        break;
    case DB_CLIENT_ERROR:
        snprintf(detail, sizeof(detail), "the database refused the input: %s", res->detail);
        gw_fail(rq, sqlstate_status(res->sqlstate), detail);
        return;
    case DB_ERROR:
        snprintf(detail, sizeof(detail), "the database failed the statement: %s", res->detail);
        gw_origin_failed(rq, 502, detail);
        return;
    case DB_UNAVAILABLE:
    default:
        snprintf(detail, sizeof(detail), "the database is unavailable: %s", res->detail);
        gw_origin_failed(rq, 503, detail);
        return;
    }

    char *body;
    size_t len;
    if (!ep->returns_rows) {
        body = xasprintf("{\"affected\":%ld}", res->affected < 0 ? 0 : res->affected);
        len = strlen(body);
    } else if (res->value) {
        body = xstrndup(res->value, res->value_len);
        len = res->value_len;
    } else if (ep->one) {
        gw_fail(rq, 404, "no such record");
        return;
    } else {
        body = xstrdup("[]");
        len = 2;
    }

    if (ep->is_write) {
        struct store_entry *e = origin_entry(rq, ep->method == HTTP_POST ? 201 : 200, body, len);
        gw_invalidate_then_reply(rq, e);
        store_entry_release(e);
        return;
    }
    if (ep->cached && rq->admit.cache_key) {
        fill_and_reply(rq, 200, body, len);
        return;
    }
    reply_body(rq, 200, body, len);
    free(body);
}

/* Builds the statement's parameters and sends it. */
static void
run_sql(struct gw_req *rq)
{
    const struct policy_endpoint *ep = rq->ep;
    const char *params[MAX_ARGS];
    size_t n = ep->nargs < MAX_ARGS ? ep->nargs : MAX_ARGS;
    for (size_t i = 0; i < n; i++) {
        enum template_var var;
        const char *name;
        const char *val;
        size_t len;
        if (template_single_var(ep->args[i], &var, &name)) {
            /* A lone variable is passed as it is: no escaping, absent is NULL. */
            if (var == TV_BODY && (!rq->body || !json_object_get(rq->body, name))) {
                char detail[192];
                snprintf(detail, sizeof(detail), "missing field '%s' in the JSON body", name);
                gw_fail(rq, 400, detail);
                return;
            }
            if (lookup(rq, var, name, name ? strlen(name) : 0, &val, &len))
                params[i] = (val >= rq->vals && val < rq->vals + sizeof(rq->vals))
                                ? val
                                : vals_put(rq, val, len);
            else
                params[i] = NULL;
        } else {
            params[i] = gw_expand(rq, ep->args[i], &len);
        }
        if (rq->value_overflow) {
            gw_fail(rq, 400, "request values too long");
            return;
        }
    }
    if (!rq->wk->db) {
        gw_fail(rq, 503, "no database is configured");
        return;
    }
    if (db_query(rq->wk->db, ep->sql, (int)n, params, on_db, rq) != 0)
        gw_fail(rq, 503, "the database pool is shutting down");
}

void
gw_to_origin(struct gw_req *rq)
{
    if (rq->wk->closing) {
        gw_fail(rq, 503, "the server is shutting down");
        return;
    }
    const struct policy_endpoint *ep = rq->ep;
    switch (ep->source) {
    case SOURCE_SQL:
        run_sql(rq);
        return;
    case SOURCE_STATIC:
        if (ep->is_write) {
            struct store_entry *e = origin_entry(
                rq, ep->static_status, xstrndup(ep->static_body, ep->static_len), ep->static_len);
            gw_invalidate_then_reply(rq, e);
            store_entry_release(e);
            return;
        }
        if (ep->cached && rq->admit.cache_key) {
            fill_and_reply(rq, ep->static_status, xstrndup(ep->static_body, ep->static_len),
                           ep->static_len);
            return;
        }
        reply_body(rq, ep->static_status, ep->static_body, ep->static_len);
        return;
    case SOURCE_UPSTREAM:
    default:
        gw_proxy_run(rq);
        return;
    }
}

static void on_looked_up(void *arg, int status);

static void
on_fill_timer(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *rq = arg;
    if (rq->wk->closing) {
        gw_fail(rq, 503, "the server is shutting down");
        return;
    }
    rq->admit.nlimits = 0; /* a lookup only: the request's limits were counted once */
    store_admit_and_lookup(rq->wk->store, &rq->admit, on_looked_up, rq);
}

/*
 * Waits for a fill another request leads: on this worker's (answered when it
 * lands), else by looking again after FILL_POLL_MS, then at doubling
 * intervals, for FILL_WAIT_MS at most. Returns false when the wait is over:
 * the caller goes to the origin.
 */
static bool
wait_for_fill(struct gw_req *rq)
{
    if (rq->wk->closing)
        return false;
    if (gw_inflight_wait(rq))
        return true;
    if (rq->fill_waited_ms >= FILL_WAIT_MS)
        return false;
    if (!rq->fill_timer)
        rq->fill_timer = evtimer_new(worker_base(rq->wk->w), on_fill_timer, rq);
    uint64_t ms = rq->fill_waited_ms ? rq->fill_waited_ms : FILL_POLL_MS;
    if (ms > FILL_POLL_MAX_MS)
        ms = FILL_POLL_MAX_MS;
    struct timeval tv = {0, (suseconds_t)(ms * 1000)};
    if (!rq->fill_timer || evtimer_add(rq->fill_timer, &tv) != 0)
        return false;
    rq->fill_waited_ms += ms;
    return true;
}

static void start_refresh(struct gw_req *rq);

/*
 * Serves an admitted request from its lookup: a hit from the cache, a miss
 * from the origin (leading the fill of its key in this worker), a stale entry
 * while one refresh runs (stale_while_revalidate) or kept in case the origin
 * fails (stale_if_error). A marker of a varying answer leads to a second
 * lookup under the secondary key; a hit-for-miss marker straight to the
 * origin. While another request fills the key, the request waits for that
 * fill (wait_for_fill).
 */
static void
on_looked_up(void *arg, int status)
{
    struct gw_req *rq = arg;
    struct store_admit *a = &rq->admit;
    const struct policy_endpoint *ep = rq->ep;
    struct store_entry *e = a->entry;
    a->entry = NULL;
    if (status != 0) {
        store_entry_release(e);
        gw_to_origin(rq);
        return;
    }
    if (e && (e->flags & STORE_ENTRY_VARY) && !rq->primary_key) {
        snprintf(rq->vary_names, sizeof(rq->vary_names), "%.*s", (int)e->body_len, e->body);
        store_entry_release(e);
        rq->primary_key = a->cache_key;
        rq->primary_len = a->cache_keylen;
        long n = gw_vary_key(rq, rq->vary_names);
        if (n < 0) {
            rq->bypass = true;
            gw_to_origin(rq);
            return;
        }
        a->cache_key = rq->vkey;
        a->cache_keylen = (size_t)n;
        a->nlimits = 0;
        store_admit_and_lookup(rq->wk->store, a, on_looked_up, rq);
        return;
    }
    if (e && (e->flags & STORE_ENTRY_PASS)) {
        store_entry_release(e);
        gw_to_origin(rq); /* hit-for-miss: nothing to wait for */
        return;
    }
    if (a->state == STORE_HIT && e) {
        rq->entry = e; /* released with the request */
        gw_reply_entry(rq, e, "HIT", a->now_ms);
        return;
    }
    if (a->state == STORE_STALE && e) {
        if (a->now_ms <= e->expires_ms + ep->swr_ms) {
            if (a->lease_taken)
                start_refresh(rq);
            rq->entry = e;
            gw_reply_entry(rq, e, "STALE", a->now_ms);
            return;
        }
        store_entry_release(rq->stale);
        rq->stale = e; /* served if the origin fails */
        if (!a->lease_taken && wait_for_fill(rq))
            return;
    } else {
        store_entry_release(e); /* no entry comes with the other states */
        if (a->state == STORE_FILLING ? wait_for_fill(rq) : gw_inflight_wait(rq))
            return;
    }
    if (rq->fill_timer) {
        event_free(rq->fill_timer);
        rq->fill_timer = NULL;
    }
    gw_inflight_lead(rq);
    gw_to_origin(rq);
}

static void
on_admitted(void *arg, int status)
{
    struct gw_req *rq = arg;
    if (status != 0) {
        gw_fail(rq, 503, "the store is unavailable");
        return;
    }
    if (rq->admit.refused_closed) {
        gw_fail(rq, 503,
                "the rate-limit store is unavailable and a limit of this endpoint fails closed");
        return;
    }
    add_limit_headers(rq);
    if (!rq->admit.allowed) {
        reply_denied(rq);
        return;
    }
    rq->fill_timer = NULL;
    rq->fill_waited_ms = 0;
    if (!rq->admit.cache_key) {
        gw_to_origin(rq);
        return;
    }
    on_looked_up(rq, 0);
}

/* ---- identity, limits and the lookup ------------------------------------------------------ */

/* Runs the hooks of the caller's tenant. Returns 0, or -1 when a hook denied (answered). */
static int
run_tenant_hooks(struct gw_req *rq)
{
    struct tenant_call call = {
        .http = &rq->sr->http,
        .user = rq->user,
        .user_len = rq->user_len,
        .tenant = rq->tenant,
        .tenant_len = rq->tenant_len,
        .ip = rq->sr->ip,
        .ep = rq->ep,
        .tier = rq->tier,
    };
    tenant_hooks_run(rq->wk->tenants, rq->policy, rq->tn, &call, &rq->dec);
    rq->hooked = 1;
    if (rq->dec.deny_status) {
        gw_fail(rq, rq->dec.deny_status, rq->dec.deny_message);
        return -1;
    }
    return 0;
}

/* Applies the hooks' cost and limit changes to the nl limits of the request. */
static void
apply_decision(struct gw_req *rq, size_t nl)
{
    for (size_t i = 0; i < nl; i++) {
        struct store_limit *sl = &rq->limits[i];
        if (i < POLICY_MAX_LIMITS && rq->dec.limit[i]) {
            rq->hook_rules[i] = *sl->rule;
            rq->hook_rules[i].limit = rq->dec.limit[i];
            sl->rule = &rq->hook_rules[i];
            snprintf(rq->hook_fields[i], sizeof(rq->hook_fields[i]), "\"%s\";q=%llu;w=%llu",
                     limit_name(rq, i), (unsigned long long)rq->dec.limit[i],
                     (unsigned long long)ceil_sec(sl->rule->window_ms));
        }
        if (rq->dec.cost)
            sl->cost = rq->dec.cost;
    }
}

/* With the caller known: expand the limit keys, cache key and tags, then ask the store. */
static void
admit(struct gw_req *rq)
{
    if (rq->tn && rq->tn->nhooks && run_tenant_hooks(rq) != 0)
        return;
    const struct policy_endpoint *ep = rq->ep;
    struct store_admit *a = &rq->admit;
    size_t nl = 0;
    for (size_t i = 0; i < ep->nlimits && nl < MAX_LIMITS; i++) {
        const struct policy_limit *l = &ep->limits[i];
        struct store_limit *sl = &rq->limits[nl];
        if (l->is_tier) {
            sl->rule = &rq->tier->rule;
            sl->key = gw_caller_key(rq, &sl->keylen);
        } else {
            sl->rule = &l->rule;
            sl->key = gw_expand(rq, l->key, &sl->keylen);
        }
        sl->fail_closed = l->fail_closed;
        if (!sl->key) {
            gw_fail(rq, 400, "request values too long for a limit key");
            return;
        }
        sl->cost = l->cost;
        nl++;
    }
    if (rq->hooked)
        apply_decision(rq, nl);
    a->limits = rq->limits;
    a->nlimits = nl;
    a->results = rq->results;
    a->tags = rq->tags;
    a->taglens = rq->taglens;
    a->tag_gens = rq->tag_gens;
    if (rq->warm)
        a->nlimits = 0; /* warming counts against nobody's limits */
    if (ep->cached && !rq->bypass && ep->source == SOURCE_UPSTREAM &&
        httpcache_has_credentials(&rq->sr->http)) {
        /* Credentials may shape the answer: cached only under a key holding the caller. */
        unsigned uses = template_uses(ep->cache_key);
        bool keyed =
            ((uses & TV_BIT(TV_USER)) && rq->user) || ((uses & TV_BIT(TV_TENANT)) && rq->tenant);
        rq->bypass = !keyed;
    }
    if (ep->cached && !rq->bypass &&
        (rq->sr->http.method == HTTP_GET || rq->sr->http.method == HTTP_HEAD)) {
        a->cache_key = gw_expand(rq, ep->cache_key, &a->cache_keylen);
        if (!a->cache_key) {
            gw_fail(rq, 400, "request values too long for a cache key");
            return;
        }
        size_t nt = 0;
        for (size_t i = 0; i < ep->ntags && nt < MAX_TAGS; i++) {
            rq->tags[nt] = gw_expand(rq, ep->tags[i], &rq->taglens[nt]);
            if (!rq->tags[nt]) {
                gw_fail(rq, 400, "request values too long for a cache tag");
                return;
            }
            nt++;
        }
        a->ntags = nt;
        a->lease_ms = FILL_LEASE_MS;
    }
    if (rq->refresh) {
        /* The refresh of a stale entry: its lease is held, its tag generations known. */
        if (!a->cache_key) {
            gw_req_free(rq);
            return;
        }
        if (rq->primary_len) {
            /* The entry varies: the secondary key came with the request. */
            rq->primary_key = a->cache_key;
            rq->primary_len = a->cache_keylen;
            a->cache_key = rq->vkey;
            a->cache_keylen = strlen(rq->vkey);
        }
        a->allowed = true;
        gw_inflight_lead(rq);
        gw_to_origin(rq);
        return;
    }
    store_admit_and_lookup(rq->wk->store, a, on_admitted, rq);
}

void
gw_set_tier(struct gw_req *rq, const char *name, size_t len)
{
    const struct policy *p = rq->policy;
    rq->tier = len ? policy_tier_find(p, name, len) : NULL;
    if (!rq->tier && p->identity.default_tier >= 0)
        rq->tier = &p->tiers[p->identity.default_tier];
    if (rq->tn)
        rq->tier = tenant_tier(rq->tn, p, rq->tier);
}

static void
on_tier(void *arg, const struct db_result *res)
{
    struct gw_req *rq = arg;
    const struct policy_identity *id = &rq->policy->identity;
    if (res->status == DB_OK) {
        const char *t = res->value ? res->value : "";
        size_t tl = res->value ? res->value_len : 0;
        tier_cache_put(rq->wk->tiers, rq->user, rq->user_len, t, tl,
                       store_now_ms() + id->tier_ttl_ms);
        gw_set_tier(rq, t, tl);
    } else {
        /* The lookup failed: serve under the default tier, and do not remember it. */
        fprintf(stderr, "sluice: tier lookup failed: %s\n", res->detail);
        gw_set_tier(rq, NULL, 0);
    }
    admit(rq);
}

static int
needs_tier(const struct policy_endpoint *ep)
{
    for (size_t i = 0; i < ep->nlimits; i++)
        if (ep->limits[i].is_tier)
            return 1;
    return 0;
}

/* Finds the caller's tier: header, cache, or an asynchronous SQL lookup. */
static void
identify_tier(struct gw_req *rq)
{
    /* A caller whose tenant has a tenant file gets the tenant's view of the endpoint. */
    rq->tn = tenant_find(rq->policy, rq->tenant, rq->tenant_len);
    if (rq->tn)
        rq->ep = tenant_endpoint(rq->tn, rq->ep);
    const struct policy_identity *id = &rq->policy->identity;
    if (!rq->user || !needs_tier(rq->ep)) {
        gw_set_tier(rq, NULL, 0);
        admit(rq);
        return;
    }
    if (id->tier_header) {
        const struct http_str *v = http_header_get(&rq->sr->http, id->tier_header);
        gw_set_tier(rq, v ? v->p : NULL, v ? v->len : 0);
        admit(rq);
        return;
    }
    if (!id->tier_sql) {
        gw_set_tier(rq, NULL, 0);
        admit(rq);
        return;
    }
    const char *t;
    size_t tl;
    if (tier_cache_get(rq->wk->tiers, rq->user, rq->user_len, store_now_ms(), &t, &tl)) {
        gw_set_tier(rq, t, tl);
        admit(rq);
        return;
    }
    const char *params[MAX_ARGS];
    size_t n = id->ntier_args < MAX_ARGS ? id->ntier_args : MAX_ARGS;
    for (size_t i = 0; i < n; i++) {
        enum template_var var;
        const char *name, *val;
        size_t len;
        if (template_single_var(id->tier_args[i], &var, &name) &&
            lookup(rq, var, name, name ? strlen(name) : 0, &val, &len))
            params[i] = vals_put(rq, val, len);
        else
            params[i] = NULL;
    }
    if (!rq->wk->db || db_query(rq->wk->db, id->tier_sql, (int)n, params, on_tier, rq) != 0) {
        gw_set_tier(rq, NULL, 0);
        admit(rq);
    }
}

static int
uses_body(const struct policy_endpoint *ep)
{
    for (size_t i = 0; i < ep->nargs; i++)
        if (template_uses(ep->args[i]) & TV_BIT(TV_BODY))
            return 1;
    for (size_t i = 0; i < ep->ninvalidate; i++)
        if (template_uses(ep->invalidate[i]) & TV_BIT(TV_BODY))
            return 1;
    return 0;
}

/* Reads a trusted identity header; -1 when it is unusable. */
int
gw_identity_header(struct gw_req *rq, const char *name, const char **val, size_t *len)
{
    *val = NULL;
    *len = 0;
    if (!name)
        return 0;
    const struct http_str *v = http_header_get(&rq->sr->http, name);
    if (!v || v->len == 0)
        return 0;
    if (v->len > MAX_USER_LEN)
        return -1;
    *val = v->p;
    *len = v->len;
    return 0;
}

/* A new request on snapshot p (a reference is taken) for the endpoint m matched. */
static struct gw_req *
req_new(struct gw_worker *wk, struct server_request *sr, struct policy *p,
        const struct router_match *m)
{
    struct gw_req *rq = xmalloc(sizeof(*rq));
    memset(rq, 0, offsetof(struct gw_req, dec)); /* the rest is written before it is read */
    rq->vary_names[0] = '\0';
    rq->vkey[0] = '\0';
    rq->hdrs[0] = '\0';
    rq->hdrs_len = rq->keys_used = rq->vals_used = 0;
    rq->wk = wk;
    rq->sr = sr;
    policy_ref(p);
    rq->policy = p;
    rq->ep = m->data;
    rq->m = *m;
    return rq;
}

/* Reads the caller's identity and body, then goes on to the tier, limits and lookup. */
void
gw_req_begin(struct gw_req *rq)
{
    struct server_request *sr = rq->sr;
    const struct policy *p = rq->policy;
    if (gw_identity_header(rq, p->identity.user_header, &rq->user, &rq->user_len) != 0 ||
        gw_identity_header(rq, p->identity.tenant_header, &rq->tenant, &rq->tenant_len) != 0) {
        gw_fail(rq, 400, "identity header too long");
        return;
    }
    if (sr->body_len > 0 && uses_body(rq->ep)) {
        json_error_t jerr;
        rq->body = json_loadb(sr->body, sr->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!rq->body) {
            char detail[300];
            snprintf(detail, sizeof(detail), "malformed JSON body: %s (line %d, column %d)",
                     jerr.text, jerr.line, jerr.column);
            gw_fail(rq, 400, detail);
            return;
        }
        if (!json_is_object(rq->body)) {
            gw_fail(rq, 400, "the JSON body must be an object");
            return;
        }
    } else if (uses_body(rq->ep)) {
        gw_fail(rq, 400, "this endpoint needs a JSON object body");
        return;
    }
    identify_tier(rq);
}

static void
handle(struct server_request *sr, void *state)
{
    struct gw_worker *wk = state;
    struct policy *p = worker_policy(wk);
    const struct http_request *h = &sr->http;

    struct router_match m;
    enum router_result r = router_match(p->router, h->method_str.p, h->method_str.len, h->path.p,
                                        h->path.len, h->query.p, h->query.len, &m);
    if (r == ROUTER_NOT_FOUND) {
        server_respond_problem(sr, 404, NULL, NULL, "no endpoint matches this path", NULL);
        return;
    }
    if (r == ROUTER_METHOD_NOT_ALLOWED) {
        char allow[160] = "Allow: ";
        size_t len = strlen(allow);
        int first = 1;
        for (size_t i = 0; i < router_nmethods; i++) {
            if (!(m.allow & (1u << i)))
                continue;
            len += (size_t)snprintf(allow + len, sizeof(allow) - len, "%s%s", first ? "" : ", ",
                                    router_methods[i]);
            first = 0;
        }
        snprintf(allow + len, sizeof(allow) - len, "\r\n");
        server_respond_problem(sr, 405, NULL, NULL, "this endpoint does not take this method",
                               allow);
        return;
    }
    gw_req_begin(req_new(wk, sr, p, &m));
}

/*
 * A request without a client (a refresh, a warming request) from the raw
 * HTTP/1.1 bytes in raw (taken; head_len bytes of head, then the body), on
 * snapshot p. Returns it routed, or NULL when it does not parse or route.
 */
struct gw_req *
gw_detached_new(struct gw_worker *wk, struct policy *p, struct sbuf *raw, size_t head_len,
                const char *ip)
{
    struct server_request sr;
    memset(&sr, 0, sizeof(sr));
    struct router_match m;
    if (http_parse_request(raw->p, raw->len, &sr.http) <= 0 ||
        router_match(p->router, sr.http.method_str.p, sr.http.method_str.len, sr.http.path.p,
                     sr.http.path.len, sr.http.query.p, sr.http.query.len, &m) != ROUTER_FOUND) {
        sbuf_free(raw);
        return NULL;
    }
    struct gw_req *rq = req_new(wk, NULL, p, &m);
    rq->own_raw = raw->p; /* the parsed strings point into it */
    rq->own_sr = sr;
    rq->own_sr.body = raw->len > head_len ? raw->p + head_len : NULL;
    rq->own_sr.body_len = raw->len - head_len;
    snprintf(rq->own_ip, sizeof(rq->own_ip), "%s", ip);
    rq->own_sr.ip = rq->own_ip;
    rq->own_sr.worker = wk->w;
    rq->sr = &rq->own_sr;
    rq->detached = true;
    rq->bg_next = wk->background;
    if (wk->background)
        wk->background->bg_prev = rq;
    wk->background = rq;
    *raw = (struct sbuf){0};
    return rq;
}

/*
 * Stale-while-revalidate: the request was answered from a stale entry and
 * took the key's lease; a copy of it, without a client, fetches the fresh
 * answer and fills it.
 */
static void
start_refresh(struct gw_req *rq)
{
    const struct http_request *h = &rq->sr->http;
    struct sbuf raw = {0};
    sbuf_printf(&raw, "%.*s %.*s HTTP/1.1\r\n", (int)h->method_str.len, h->method_str.p,
                (int)h->target.len, h->target.p);
    if (!h->host.p)
        sbuf_adds(&raw, "Host: sluice\r\n"); /* an HTTP/1.0 request may have none */
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        if ((f->name.len == 14 && strncasecmp(f->name.p, "content-length", 14) == 0) ||
            (f->name.len == 17 && strncasecmp(f->name.p, "transfer-encoding", 17) == 0))
            continue;
        sbuf_printf(&raw, "%.*s: %.*s\r\n", (int)f->name.len, f->name.p, (int)f->value.len,
                    f->value.p);
    }
    sbuf_adds(&raw, "\r\n");
    size_t head_len = raw.len;
    struct gw_req *c = gw_detached_new(rq->wk, rq->policy, &raw, head_len, rq->sr->ip);
    if (!c)
        return; /* the lease runs out by itself */
    c->refresh = true;
    memcpy(c->tag_gens, rq->tag_gens, sizeof(c->tag_gens));
    if (rq->primary_key) {
        snprintf(c->vkey, sizeof(c->vkey), "%.*s", (int)rq->admit.cache_keylen,
                 rq->admit.cache_key);
        c->primary_len = 1; /* the entry varies: admit() takes the secondary key from vkey */
    }
    gw_req_begin(c);
}

/* ---- workers ------------------------------------------------------------------------------ */

/* Copies this worker's store health where status output can read it. */
static void
publish_health(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *wk = arg;
    struct gateway *g = wk->g;
    if (wk->warm.timer)
        worker_policy(wk); /* a new generation is warmed without waiting for a request */
    unsigned i = worker_index(wk->w);
    if (i >= GATEWAY_MAX_WORKERS)
        return;
    struct store_health h;
    store_health(wk->store, &h);
    pthread_mutex_lock(&g->lock);
    g->health[i] = h;
    g->store_name[i] = wk->store->ops->name;
    if (i + 1 > g->nhealth)
        g->nhealth = i + 1;
    pthread_mutex_unlock(&g->lock);
}

json_t *
gateway_store_status(struct gateway *g)
{
    json_t *workers = json_array();
    unsigned degraded = 0;
    pthread_mutex_lock(&g->lock);
    for (unsigned i = 0; i < g->nhealth; i++) {
        const struct store_health *h = &g->health[i];
        if (!g->store_name[i])
            continue;
        degraded += h->degraded;
        json_array_append_new(
            workers, json_pack("{s:i, s:s, s:s, s:I, s:I, s:I}", "worker", (int)i, "store",
                               g->store_name[i], "state", h->state ? h->state : "ok", "failures",
                               (json_int_t)h->failures, "fallbacks", (json_int_t)h->fallbacks,
                               "degraded_times", (json_int_t)h->transitions));
    }
    pthread_mutex_unlock(&g->lock);
    const char *kind = g->cfg.redis_url && g->cfg.redis_url[0] ? "redis" : "memory";
    return json_pack("{s:s, s:s, s:o}", "kind", kind, "state", degraded ? "degraded" : "ok",
                     "workers", workers);
}

struct store *
gateway_store_new(struct gateway *g, struct event_base *base, const char *name)
{
    if (g->cfg.redis_url && g->cfg.redis_url[0]) {
        /* Redis, with the shared memory store as the fallback while it is unavailable. */
        char err[256];
        struct store_redis_config rc = {.url = g->cfg.redis_url,
                                        .limits_url = g->cfg.redis_limits_url,
                                        .deadline_ms = g->cfg.redis_deadline_ms};
        struct store *r = store_redis_new(base, &rc, err, sizeof(err));
        if (r) {
            struct store_failover_config fc = {.name = name};
            return store_failover_new(r, store_memory_handle(g->mem), &fc);
        }
        fprintf(stderr, "sluice: %s: redis: %s; using the memory store\n", name, err);
    }
    return store_memory_handle(g->mem);
}

static void *
worker_init(struct worker *w, void *ctx)
{
    struct gateway *g = ctx;
    struct gw_worker *wk = xcalloc(1, sizeof(*wk));
    wk->g = g;
    wk->w = w;
    char err[256];
    char name[32];
    snprintf(name, sizeof(name), "worker %u", worker_index(w));
    wk->store = gateway_store_new(g, worker_base(w), name);
    wk->tiers = tier_cache_new(100000);
    wk->tenants = tenant_runtime_new();
    wk->db = db_pool_new(worker_base(w), g->cfg.database_url ? g->cfg.database_url : "",
                         g->cfg.db_pool_size, g->cfg.db_deadline_ms, 1024, err, sizeof(err));
    if (!wk->db)
        fprintf(stderr, "sluice: worker %u: database: %s\n", worker_index(w), err);
    wk->up = upstream_pool_new(worker_base(w), NULL);
    if (worker_index(w) == 0) /* one worker warms: the cache is shared */
        gw_warm_init(wk);
    worker_policy(wk);
    wk->health_timer = event_new(worker_base(w), -1, EV_PERSIST, publish_health, wk);
    struct timeval tv = {0, HEALTH_PUBLISH_MS * 1000};
    event_add(wk->health_timer, &tv);
    publish_health(-1, 0, wk);
    return wk;
}

static void
worker_fini(void *state)
{
    struct gw_worker *wk = state;
    if (!wk)
        return;
    /* Clients are gone; background requests may still be in flight. From here on none goes to
     * an origin: each pool and the store answer what they hold, and whoever waits fails. */
    wk->closing = true;
    if (wk->health_timer)
        event_free(wk->health_timer);
    gw_warm_free(wk);
    upstream_pool_free(wk->up);
    if (wk->db)
        db_pool_free(wk->db);
    wk->store->ops->destroy(wk->store);
    while (wk->background) /* what is left waits on a timer for another's fill */
        gw_fail(wk->background, 503, "the server is shutting down");
    tier_cache_free(wk->tiers);
    tenant_runtime_free(wk->tenants);
    policy_release(wk->policy);
    free(wk);
}

struct server_app
gateway_app(struct gateway *g)
{
    struct server_app app = {
        .worker_init = worker_init,
        .worker_fini = worker_fini,
        .handle = handle,
        .ctx = g,
    };
    return app;
}
