/* gateway.c - the request path: route, identify, limit + lookup, origin, fill, invalidate. */
#define _GNU_SOURCE
#include "gateway.h"

#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "identity.h"
#include "policy.h"
#include "router.h"
#include "store.h"
#include "template.h"
#include "tenant.h"
#include "util.h"

#define MAX_LIMITS 8
#define MAX_TAGS 16
#define MAX_ARGS 32
#define MAX_USER_LEN 256
#define KEYS_BYTES 4096
#define VALS_BYTES 4096
#define HDRS_BYTES 1536
#define GATEWAY_MAX_WORKERS 256
#define HEALTH_PUBLISH_MS 500
#define FILL_LEASE_MS 500   /* a miss holds its key's fill lease this long at most */
#define FILL_WAIT_MS 1000   /* a request waits this long at most for another's fill */
#define FILL_POLL_MS 10     /* its first look again; then doubling up to */
#define FILL_POLL_MAX_MS 50 /* this */

#define QUOTA_TYPE "https://iana.org/assignments/http-problem-types#quota-exceeded"

struct gateway {
    struct gateway_config cfg;
    pthread_mutex_t lock; /* guards policy */
    struct policy *policy;
    uint64_t generation; /* atomic: policy->generation, read without the lock */
    struct store_memory *mem;
    /* The store's health as each worker last published it (guarded by lock). */
    struct store_health health[GATEWAY_MAX_WORKERS];
    const char *store_name[GATEWAY_MAX_WORKERS];
    unsigned nhealth;
};

struct gw_worker {
    struct gateway *g;
    struct worker *w;
    struct policy *policy; /* this worker's reference to the current snapshot */
    uint64_t generation;
    struct store *store;
    struct db_pool *db;
    struct tier_cache *tiers;
    struct tenant_runtime *tenants; /* Lua states of tenant hooks, for this worker's generation */
    struct event *health_timer;     /* publishes the store's health for status output */
};

struct gw_req {
    struct gw_worker *wk;
    struct server_request *sr;
    struct policy *policy; /* reference held for the request's life */
    const struct policy_endpoint *ep;
    struct router_match m;
    const char *user, *tenant;
    size_t user_len, tenant_len;
    const struct policy_tier *tier;
    const struct tenant *tn; /* the caller's tenant file, or NULL */
    int hooked;              /* dec holds what the tenant's hooks decided */
    struct tenant_decision dec;
    struct limiter_rule hook_rules[TENANT_MAX_LIMITS]; /* limits a hook changed */
    char hook_fields[TENANT_MAX_LIMITS][96];           /* and their RateLimit-Policy items */
    json_t *body;
    int value_overflow; /* a decoded value did not fit: the request is refused */

    struct store_limit limits[MAX_LIMITS];
    struct limiter_result results[MAX_LIMITS];
    const char *tags[MAX_TAGS];
    size_t taglens[MAX_TAGS];
    uint64_t tag_gens[MAX_TAGS];
    struct store_admit admit;
    struct store_entry *entry; /* the fill in progress */
    struct event *fill_timer;  /* waiting for another caller's fill: the next look */
    uint64_t fill_waited_ms;   /* how long it has waited for that fill */
    char *write_body;          /* a write's answer, held until its invalidation lands */
    const char *inv_tags[MAX_TAGS];
    size_t inv_lens[MAX_TAGS];
    size_t write_len;
    int write_status;

    char hdrs[HDRS_BYTES];
    size_t hdrs_len;
    size_t keys_used, vals_used;
    char keys[KEYS_BYTES]; /* expanded limit keys, cache key, tags */
    char vals[VALS_BYTES]; /* decoded path/query values, rendered body fields */
};

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
    }
    return wk->policy;
}

/* ---- per-request helpers ------------------------------------------------------------------ */

static void
req_free(struct gw_req *rq)
{
    if (rq->entry)
        store_entry_release(rq->entry);
    if (rq->body)
        json_decref(rq->body);
    free(rq->write_body);
    policy_release(rq->policy);
    free(rq);
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

static void
fail(struct gw_req *rq, int status, const char *detail)
{
    server_respond_problem(rq->sr, status, NULL, NULL, detail, rq->hdrs_len ? rq->hdrs : NULL);
    req_free(rq);
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
static const char *
expand(struct gw_req *rq, const struct template *t, size_t *len)
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
static const char *
caller_key(struct gw_req *rq, size_t *len)
{
    return expand(rq, rq->user ? rq->policy->tier_key_user : rq->policy->tier_key_ip, len);
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
    if (rq->hooked && i < TENANT_MAX_LIMITS && rq->dec.limit[i])
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
    size_t n = rq->ep->nlimits;
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
    for (size_t i = 0; i < rq->ep->nlimits; i++) {
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
    server_respond(rq->sr, &resp);
    free(body);
    req_free(rq);
}

/* ---- replies from the cache and the origin ------------------------------------------------ */

static void
release_entry(const void *body, size_t len, void *arg)
{
    store_entry_release(arg);
}

/* Replies with a cached or just-filled entry; the reply holds its own reference. */
static void
reply_entry(struct gw_req *rq, struct store_entry *e, const char *xcache, uint64_t now_ms)
{
    uint64_t age = now_ms > e->stored_ms ? (now_ms - e->stored_ms) / 1000 : 0;
    hdr_str(rq, "X-Cache: ");
    hdr_str(rq, xcache);
    hdr_str(rq, "\r\nAge: ");
    hdr_u64(rq, age);
    hdr_str(rq, "\r\n");
    store_entry_ref(e);
    struct server_response resp = {
        .status = e->status,
        .content_type = e->content_type,
        .headers = rq->hdrs,
        .headers_len = rq->hdrs_len,
        .body = e->body,
        .body_len = e->body_len,
        .release = release_entry,
        .body_arg = e,
    };
    server_respond(rq->sr, &resp);
    req_free(rq);
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
    server_respond(rq->sr, &resp);
    req_free(rq);
}

static void
fill_done(void *arg, int status)
{
    (void)arg;
    (void)status; /* refused fills are expected after a concurrent invalidation */
}

/* A fresh origin answer for a cached endpoint: store it, then reply. */
static void
fill_and_reply(struct gw_req *rq, int status, char *body, size_t len)
{
    const struct policy_endpoint *ep = rq->ep;
    struct store_entry *e = store_entry_new((uint16_t)status, xstrdup(ep->content_type), body, len);
    uint64_t now = store_now_ms();
    e->stored_ms = now;
    e->expires_ms = now + ep->ttl_ms;
    if (rq->admit.bypassed) {
        /* The shared store is unavailable: the cache was not consulted and is not filled. */
        reply_entry(rq, e, "BYPASS", now);
        store_entry_release(e);
        return;
    }
    store_fill(rq->wk->store, rq->admit.cache_key, rq->admit.cache_keylen, e, ep->ttl_ms, rq->tags,
               rq->taglens, rq->tag_gens, rq->admit.ntags, fill_done, NULL);
    reply_entry(rq, e, "MISS", now);
    store_entry_release(e);
}

/* The invalidation of a write landed (or failed): now the write is answered. */
static void
on_invalidated(void *arg, int status)
{
    struct gw_req *rq = arg;
    if (status != 0)
        fprintf(stderr, "sluice: invalidation after %s failed; entries may stay until their TTL\n",
                rq->ep->name);
    char *body = rq->write_body;
    rq->write_body = NULL;
    reply_body(rq, rq->write_status, body, rq->write_len);
    free(body);
}

/*
 * After a successful write: bumps the generations of the endpoint's
 * invalidate tags, and answers (body is taken) only once the store has
 * acknowledged, so that the caller's next read, on any instance, sees the
 * write.
 */
static void
invalidate_then_reply(struct gw_req *rq, int status, char *body, size_t len)
{
    const struct policy_endpoint *ep = rq->ep;
    const char **tags = rq->inv_tags; /* the store may hold them until it is done */
    size_t *lens = rq->inv_lens;
    size_t n = 0;
    for (size_t i = 0; i < ep->ninvalidate && n < MAX_TAGS; i++) {
        tags[n] = expand(rq, ep->invalidate[i], &lens[n]);
        if (!tags[n]) {
            free(body);
            fail(rq, 500, "an invalidation key was too long");
            return;
        }
        n++;
    }
    if (n == 0) {
        reply_body(rq, status, body, len);
        free(body);
        return;
    }
    rq->write_body = body;
    rq->write_len = len;
    rq->write_status = status;
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
        fail(rq, sqlstate_status(res->sqlstate), detail);
        return;
    case DB_ERROR:
        snprintf(detail, sizeof(detail), "the database failed the statement: %s", res->detail);
        fail(rq, 502, detail);
        return;
    case DB_UNAVAILABLE:
    default:
        snprintf(detail, sizeof(detail), "the database is unavailable: %s", res->detail);
        fail(rq, 503, detail);
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
        fail(rq, 404, "no such record");
        return;
    } else {
        body = xstrdup("[]");
        len = 2;
    }

    if (ep->is_write) {
        invalidate_then_reply(rq, ep->method == HTTP_POST ? 201 : 200, body, len);
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
                fail(rq, 400, detail);
                return;
            }
            if (lookup(rq, var, name, name ? strlen(name) : 0, &val, &len))
                params[i] = (val >= rq->vals && val < rq->vals + sizeof(rq->vals))
                                ? val
                                : vals_put(rq, val, len);
            else
                params[i] = NULL;
        } else {
            params[i] = expand(rq, ep->args[i], &len);
        }
        if (rq->value_overflow) {
            fail(rq, 400, "request values too long");
            return;
        }
    }
    if (!rq->wk->db) {
        fail(rq, 503, "no database is configured");
        return;
    }
    if (db_query(rq->wk->db, ep->sql, (int)n, params, on_db, rq) != 0)
        fail(rq, 503, "the database pool is shutting down");
}

static void
to_origin(struct gw_req *rq)
{
    const struct policy_endpoint *ep = rq->ep;
    switch (ep->source) {
    case SOURCE_SQL:
        run_sql(rq);
        return;
    case SOURCE_STATIC:
        if (ep->is_write) {
            invalidate_then_reply(rq, ep->static_status, xstrndup(ep->static_body, ep->static_len),
                                  ep->static_len);
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
        fail(rq, 501, "upstream endpoints are not served yet");
        return;
    }
}

static void on_looked_up(void *arg, int status);

static void
on_fill_timer(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *rq = arg;
    rq->admit.nlimits = 0; /* a lookup only: the request's limits were counted once */
    store_admit_and_lookup(rq->wk->store, &rq->admit, on_looked_up, rq);
}

/*
 * Serves an admitted request from its lookup: a hit from the cache, a miss from the origin.
 * While another caller holds the key's fill lease (STORE_FILLING), the request looks again
 * after FILL_POLL_MS, then at doubling intervals, for FILL_WAIT_MS at most: the fill that
 * lands is a hit; a miss (the lease was released or ran out, and this request took it) or
 * the end of the wait goes to the origin.
 */
static void
on_looked_up(void *arg, int status)
{
    struct gw_req *rq = arg;
    if (status == 0 && rq->admit.state == STORE_FILLING && rq->fill_waited_ms < FILL_WAIT_MS) {
        if (!rq->fill_timer)
            rq->fill_timer = evtimer_new(worker_base(rq->wk->w), on_fill_timer, rq);
        uint64_t ms = rq->fill_waited_ms ? rq->fill_waited_ms : FILL_POLL_MS;
        if (ms > FILL_POLL_MAX_MS)
            ms = FILL_POLL_MAX_MS;
        struct timeval tv = {0, (suseconds_t)(ms * 1000)};
        if (rq->fill_timer && evtimer_add(rq->fill_timer, &tv) == 0) {
            rq->fill_waited_ms += ms;
            return;
        }
    }
    if (rq->fill_timer) {
        event_free(rq->fill_timer);
        rq->fill_timer = NULL;
    }
    if (status == 0 && rq->admit.state == STORE_HIT && rq->admit.entry) {
        struct store_entry *e = rq->admit.entry;
        rq->admit.entry = NULL;
        rq->entry = e; /* released with the request */
        reply_entry(rq, e, "HIT", rq->admit.now_ms);
        return;
    }
    if (rq->admit.entry) {
        store_entry_release(rq->admit.entry);
        rq->admit.entry = NULL;
    }
    to_origin(rq);
}

static void
on_admitted(void *arg, int status)
{
    struct gw_req *rq = arg;
    if (status != 0) {
        fail(rq, 503, "the store is unavailable");
        return;
    }
    if (rq->admit.refused_closed) {
        fail(rq, 503,
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
        fail(rq, rq->dec.deny_status, rq->dec.deny_message);
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
        if (i < TENANT_MAX_LIMITS && rq->dec.limit[i]) {
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
            sl->key = caller_key(rq, &sl->keylen);
        } else {
            sl->rule = &l->rule;
            sl->key = expand(rq, l->key, &sl->keylen);
        }
        sl->fail_closed = l->fail_closed;
        if (!sl->key) {
            fail(rq, 400, "request values too long for a limit key");
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
    if (ep->cached && (rq->sr->http.method == HTTP_GET || rq->sr->http.method == HTTP_HEAD)) {
        a->cache_key = expand(rq, ep->cache_key, &a->cache_keylen);
        if (!a->cache_key) {
            fail(rq, 400, "request values too long for a cache key");
            return;
        }
        size_t nt = 0;
        for (size_t i = 0; i < ep->ntags && nt < MAX_TAGS; i++) {
            rq->tags[nt] = expand(rq, ep->tags[i], &rq->taglens[nt]);
            if (!rq->tags[nt]) {
                fail(rq, 400, "request values too long for a cache tag");
                return;
            }
            nt++;
        }
        a->ntags = nt;
        a->lease_ms = FILL_LEASE_MS;
    }
    store_admit_and_lookup(rq->wk->store, a, on_admitted, rq);
}

static void
set_tier(struct gw_req *rq, const char *name, size_t len)
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
        set_tier(rq, t, tl);
    } else {
        /* The lookup failed: serve under the default tier, and do not remember it. */
        fprintf(stderr, "sluice: tier lookup failed: %s\n", res->detail);
        set_tier(rq, NULL, 0);
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
        set_tier(rq, NULL, 0);
        admit(rq);
        return;
    }
    if (id->tier_header) {
        const struct http_str *v = http_header_get(&rq->sr->http, id->tier_header);
        set_tier(rq, v ? v->p : NULL, v ? v->len : 0);
        admit(rq);
        return;
    }
    if (!id->tier_sql) {
        set_tier(rq, NULL, 0);
        admit(rq);
        return;
    }
    const char *t;
    size_t tl;
    if (tier_cache_get(rq->wk->tiers, rq->user, rq->user_len, store_now_ms(), &t, &tl)) {
        set_tier(rq, t, tl);
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
        set_tier(rq, NULL, 0);
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
static int
identity_header(struct gw_req *rq, const char *name, const char **val, size_t *len)
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

    struct gw_req *rq = xmalloc(sizeof(*rq));
    rq->wk = wk;
    rq->sr = sr;
    policy_ref(p);
    rq->policy = p;
    rq->ep = m.data;
    rq->m = m;
    rq->tier = NULL;
    rq->tn = NULL;
    rq->hooked = 0;
    rq->body = NULL;
    rq->entry = NULL;
    rq->write_body = NULL;
    rq->value_overflow = 0;
    rq->hdrs_len = rq->keys_used = rq->vals_used = 0;
    memset(&rq->admit, 0, sizeof(rq->admit));

    if (identity_header(rq, p->identity.user_header, &rq->user, &rq->user_len) != 0 ||
        identity_header(rq, p->identity.tenant_header, &rq->tenant, &rq->tenant_len) != 0) {
        fail(rq, 400, "identity header too long");
        return;
    }
    if (sr->body_len > 0 && uses_body(rq->ep)) {
        json_error_t jerr;
        rq->body = json_loadb(sr->body, sr->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!rq->body) {
            char detail[300];
            snprintf(detail, sizeof(detail), "malformed JSON body: %s (line %d, column %d)",
                     jerr.text, jerr.line, jerr.column);
            fail(rq, 400, detail);
            return;
        }
        if (!json_is_object(rq->body)) {
            fail(rq, 400, "the JSON body must be an object");
            return;
        }
    } else if (uses_body(rq->ep)) {
        fail(rq, 400, "this endpoint needs a JSON object body");
        return;
    }
    identify_tier(rq);
}

/* ---- workers ------------------------------------------------------------------------------ */

/* Copies this worker's store health where status output can read it. */
static void
publish_health(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *wk = arg;
    struct gateway *g = wk->g;
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
    if (wk->health_timer)
        event_free(wk->health_timer);
    if (wk->db)
        db_pool_free(wk->db);
    tier_cache_free(wk->tiers);
    tenant_runtime_free(wk->tenants);
    wk->store->ops->destroy(wk->store);
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

/* ---- explain ------------------------------------------------------------------------------ */

static json_t *
expanded_list(struct gw_req *rq, struct template *const *t, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *k = expand(rq, t[i], &len);
        json_array_append_new(a, k ? json_stringn(k, len) : json_string("(too long)"));
    }
    return a;
}

static json_t *
limit_json(struct gw_req *rq, const struct policy_limit *l)
{
    const struct limiter_rule *rule = l->is_tier ? &rq->tier->rule : &l->rule;
    size_t len;
    const char *key = l->is_tier ? caller_key(rq, &len) : expand(rq, l->key, &len);
    json_t *o =
        json_pack("{s:s, s:s, s:I, s:f, s:I, s:s}", "name", l->is_tier ? rq->tier->name : l->name,
                  "algorithm", limiter_algo_name(rule->algo), "limit", (json_int_t)rule->limit,
                  "window_seconds", (double)rule->window_ms / 1000.0, "cost", (json_int_t)l->cost,
                  "fail", l->fail_closed ? "closed" : "open");
    json_object_set_new(o, "key", key ? json_stringn(key, len) : json_string("(too long)"));
    if (rule->algo == LIMITER_TOKEN_BUCKET)
        json_object_set_new(o, "burst",
                            json_integer((json_int_t)(rule->burst ? rule->burst : rule->limit)));
    if (l->is_tier)
        json_object_set_new(o, "from", json_string("tier"));
    return o;
}

static const char *const source_names[] = {"sql", "upstream", "static"};

static char *
explain(struct policy *p, struct server_request *sr, const char *tier, char *err, size_t errlen)
{
    const struct http_request *h = &sr->http;
    struct router_match m;
    enum router_result r = router_match(p->router, h->method_str.p, h->method_str.len, h->path.p,
                                        h->path.len, h->query.p, h->query.len, &m);
    char *line = xasprintf("%.*s %.*s", (int)h->method_str.len, h->method_str.p, (int)h->target.len,
                           h->target.p);
    json_t *o = json_pack("{s:I, s:s}", "generation", (json_int_t)p->generation, "request", line);
    free(line);
    if (r != ROUTER_FOUND) {
        json_object_set_new(o, "status", json_integer(r == ROUTER_NOT_FOUND ? 404 : 405));
        json_object_set_new(o, "endpoint", json_null());
        char *s = json_dumps(o, JSON_INDENT(2));
        json_decref(o);
        return s;
    }
    struct gw_req *rq = xcalloc(1, sizeof(*rq));
    rq->sr = sr;
    policy_ref(p);
    rq->policy = p;
    rq->ep = m.data;
    rq->m = m;
    const struct policy_endpoint *ep = rq->ep;
    const struct policy_identity *id = &p->identity;
    char *out = NULL;
    const struct policy_tier *main_tier = NULL;
    if (identity_header(rq, id->user_header, &rq->user, &rq->user_len) != 0 ||
        identity_header(rq, id->tenant_header, &rq->tenant, &rq->tenant_len) != 0) {
        snprintf(err, errlen, "identity header too long");
        goto done;
    }
    if (sr->body_len > 0) {
        json_error_t jerr;
        rq->body = json_loadb(sr->body, sr->body_len, 0, &jerr);
    }
    /* The caller's tenant file, as the request path applies it. */
    rq->tn = tenant_find(p, rq->tenant, rq->tenant_len);
    if (rq->tn)
        rq->ep = tenant_endpoint(rq->tn, rq->ep);
    ep = rq->ep;

    /* The tier: from the header, as given, or the default (explain runs no SQL). */
    const char *tier_from;
    if (id->tier_header && rq->user) {
        const struct http_str *v = http_header_get(h, id->tier_header);
        set_tier(rq, v ? v->p : NULL, v ? v->len : 0);
        tier_from = "header";
    } else if (tier && rq->user) {
        set_tier(rq, tier, strlen(tier));
        tier_from = "given";
    } else {
        set_tier(rq, NULL, 0);
        tier_from = !rq->user      ? "default (anonymous caller)"
                    : id->tier_sql ? "default (explain does not run the SQL lookup)"
                                   : "default";
    }

    /* A tenant's tier override carries its main tier's name. */
    main_tier = rq->tier ? policy_tier_find(p, rq->tier->name, strlen(rq->tier->name)) : NULL;
    json_t *caller = json_object();
    json_object_set_new(caller, "user",
                        rq->user ? json_stringn(rq->user, rq->user_len) : json_null());
    json_object_set_new(caller, "tenant",
                        rq->tenant ? json_stringn(rq->tenant, rq->tenant_len) : json_null());
    json_object_set_new(caller, "ip", json_string(sr->ip));
    json_object_set_new(caller, "tier", rq->tier ? json_string(rq->tier->name) : json_null());
    json_object_set_new(caller, "tier_from", json_string(tier_from));
    json_object_set_new(o, "caller", caller);

    if (rq->tn) {
        const struct tenant *tn = rq->tn;
        json_t *hooks = json_array();
        for (size_t i = 0; i < tn->nhooks; i++)
            json_array_append_new(hooks, json_string(tn->hooks[i].name));
        json_t *t = json_pack("{s:s, s:s, s:b, s:b, s:b, s:o, s:s}", "name", tn->name, "file",
                              tn->file, "last_good_version", tn->last_good, "tier_override",
                              rq->tier && rq->tier != main_tier, "endpoint_override",
                              ep != (const struct policy_endpoint *)m.data, "hooks", hooks, "note",
                              "hooks are not run by explain");
        json_object_set_new(o, "tenant", t);
    } else {
        json_object_set_new(o, "tenant", json_null());
    }

    json_t *e = json_pack("{s:s, s:s, s:i, s:s}", "name", ep->name, "file", ep->file, "line",
                          ep->line, "source", source_names[ep->source]);
    if (ep->source == SOURCE_SQL)
        json_object_set_new(e, "sql", json_string(ep->sql));
    json_object_set_new(o, "endpoint", e);

    json_t *limits = json_array();
    for (size_t i = 0; i < ep->nlimits; i++) {
        if (ep->limits[i].is_tier && !rq->tier)
            continue;
        json_array_append_new(limits, limit_json(rq, &ep->limits[i]));
    }
    json_object_set_new(o, "limits", limits);

    if (ep->cached) {
        size_t len;
        const char *key = expand(rq, ep->cache_key, &len);
        json_t *c = json_pack("{s:f, s:b}", "ttl_seconds", (double)ep->ttl_ms / 1000.0, "shared",
                              ep->shared);
        json_object_set_new(c, "key", key ? json_stringn(key, len) : json_string("(too long)"));
        json_object_set_new(c, "tags", expanded_list(rq, ep->tags, ep->ntags));
        json_object_set_new(o, "cache", c);
    } else {
        json_object_set_new(o, "cache", json_null());
    }
    json_object_set_new(o, "invalidate", expanded_list(rq, ep->invalidate, ep->ninvalidate));
    out = json_dumps(o, JSON_INDENT(2));
done:
    json_decref(o);
    if (rq->body)
        json_decref(rq->body);
    policy_release(rq->policy);
    free(rq);
    return out;
}

char *
gateway_explain_request(struct policy *p, const char *line, const char *const *headers,
                        size_t nheaders, const char *body, const char *ip, const char *tier,
                        char *err, size_t errlen)
{
    struct sbuf raw = {0};
    const char *sp = strchr(line, ' ');
    if (!sp || sp == line || sp[1] != '/') {
        snprintf(err, errlen, "expected a request like 'GET /path?query', got '%s'", line);
        return NULL;
    }
    sbuf_printf(&raw, "%.*s %s HTTP/1.1\r\nHost: explain\r\n", (int)(sp - line), line, sp + 1);
    for (size_t i = 0; i < nheaders; i++)
        sbuf_printf(&raw, "%s\r\n", headers[i]);
    size_t blen = body ? strlen(body) : 0;
    if (blen)
        sbuf_printf(&raw, "Content-Length: %zu\r\n", blen);
    sbuf_adds(&raw, "\r\n");
    size_t head_len = raw.len;
    if (blen)
        sbuf_add(&raw, body, blen);
    struct server_request sr;
    memset(&sr, 0, sizeof(sr));
    int r = http_parse_request(raw.p, raw.len, &sr.http);
    char *out = NULL;
    if (r <= 0) {
        snprintf(err, errlen, "the request line or a header is malformed");
    } else {
        sr.body = blen ? raw.p + head_len : NULL;
        sr.body_len = blen;
        sr.ip = ip;
        out = explain(p, &sr, tier, err, errlen);
    }
    sbuf_free(&raw);
    return out;
}
