/* gateway.c - the gateway as the server's application: the serving snapshot, the store of each
 * worker and its health, worker set-up, routing each request onto the path. */
#define _GNU_SOURCE
#include "gateway.h"

#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "fleet.h"
#include "log.h"
#include "path.h"
#include "plan.h"
#include "policy.h"
#include "req.h"
#include "router.h"
#include "source.h"
#include "store.h"
#include "store_redis.h"
#include "store_memory.h"
#include "store_failover.h"
#include "tenant.h"
#include "tenant_hooks.h"
#include "cred_cache.h"
#include "credential.h"
#include "tier_cache.h"
#include "upstream.h"
#include "util.h"
#include "warm.h"

#define GATEWAY_MAX_WORKERS 256
#define HEALTH_PUBLISH_MS 500 /* each worker publishes its store's health this often */

struct gateway {
    struct gateway_config cfg;
    pthread_mutex_t lock; /* guards policy and the health table */
    struct policy *policy;
    uint64_t generation; /* atomic: policy->generation, read without the lock */
    struct store_memory *mem;
    /* The store's health as each worker last published it. */
    struct store_health health[GATEWAY_MAX_WORKERS];
    const char *store_name[GATEWAY_MAX_WORKERS];
    struct db_health db[GATEWAY_MAX_WORKERS]; /* each worker's database pool */
    unsigned nhealth;
    struct gw_worker *workers[GATEWAY_MAX_WORKERS]; /* their stats are read under lock */
    uint64_t forget_epoch; /* atomic: bumped when the API keys the workers remember go stale */
    struct gw_fleet fleet; /* the instances sharing the store */
};

/* ---- policy snapshots --------------------------------------------------------------------- */

void
gateway_forget_api_keys(struct gateway *g)
{
    __atomic_add_fetch(&g->forget_epoch, 1, __ATOMIC_RELEASE);
}

struct gateway *
gateway_new(const struct gateway_config *cfg, struct policy *policy)
{
    struct gateway *g = xcalloc(1, sizeof(*g));
    g->cfg = *cfg;
    pthread_mutex_init(&g->lock, NULL);
    policy_ref(policy);
    g->policy = policy;
    g->generation = policy->generation;
    g->mem = store_memory_new(cfg->cache_bytes, cfg->limit_bytes);
    gw_fleet_init(&g->fleet, cfg->fleet_ttl_ms);
    return g;
}

void
gateway_free(struct gateway *g)
{
    if (!g)
        return;
    policy_release(g->policy);
    store_memory_free(g->mem);
    gw_fleet_free(&g->fleet);
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
        struct policy *p = gateway_policy(g);
        policy_release(wk->policy);
        wk->policy = p;
        wk->generation = p->generation;
        tenant_runtime_reset(wk->tenants, p->generation);
        if (wk->warm.timer)
            gw_warm_start(wk, p);
    }
    return wk->policy;
}

/*
 * A CORS preflight (Fetch standard, CORS protocol: OPTIONS with Origin and
 * Access-Control-Request-Method) for a route whose endpoint for the requested method has cors
 * is answered here, before any identity, limit or origin: returns true when it was. Any other
 * OPTIONS request is routed as it is.
 */
static bool
preflight(struct gw_worker *wk, struct server_request *sr, struct policy *p, uint64_t start_us)
{
    const struct http_request *h = &sr->http;
    const struct http_str *method = http_header_get(h, "access-control-request-method");
    if (!method || !method->len || !http_header_get(h, "origin"))
        return false;
    struct router_match m;
    if (router_match(p->router, method->p, method->len, h->path.p, h->path.len, h->query.p,
                     h->query.len, &m) != ROUTER_FOUND)
        return false;
    const struct policy_endpoint *ep = m.data;
    if (!ep->fields.cors)
        return false;
    gw_reply_preflight(wk, sr, ep, start_us);
    return true;
}

static void
handle(struct server_request *sr, void *state)
{
    struct gw_worker *wk = state;
    uint64_t start_us = util_mono_us();
    struct policy *p = worker_policy(wk);
    const struct http_request *h = &sr->http;

    struct router_match m;
    if (h->method == HTTP_OPTIONS && preflight(wk, sr, p, start_us))
        return;
    enum router_result r = router_match(p->router, h->method_str.p, h->method_str.len, h->path.p,
                                        h->path.len, h->query.p, h->query.len, &m);
    if (r == ROUTER_NOT_FOUND) {
        gw_reply_unrouted(wk, sr, 404, "no endpoint matches this path", NULL, start_us);
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
        gw_reply_unrouted(wk, sr, 405, "this endpoint does not take this method", allow, start_us);
        return;
    }
    gw_req_begin(gw_req_new(wk, sr, p, &m));
}

/*
 * Whether the body of a request (its head complete) is left to the proxy to
 * push upstream as it arrives: a method with a body to an upstream endpoint
 * whose templates do not read it. Everything else is read whole first.
 */
static int
stream_body(const struct server_request *sr, void *state)
{
    struct gw_worker *wk = state;
    const struct http_request *h = &sr->http;
    if (h->method == HTTP_GET || h->method == HTTP_HEAD)
        return 0;
    struct policy *p = worker_policy(wk);
    struct router_match m;
    if (router_match(p->router, h->method_str.p, h->method_str.len, h->path.p, h->path.len,
                     h->query.p, h->query.len, &m) != ROUTER_FOUND)
        return 0;
    const struct policy_endpoint *ep = m.data;
    return ep->source == SOURCE_UPSTREAM && !gw_reads_body(ep);
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
    unsigned i = server_worker_index(wk->w);
    if (i >= GATEWAY_MAX_WORKERS)
        return;
    struct store_health h;
    store_health(wk->store, &h);
    struct db_health db = {0};
    if (wk->db)
        db_pool_health(wk->db, &db);
    gw_stats_publish(&wk->stats);
    pthread_mutex_lock(&g->lock);
    g->health[i] = h;
    g->db[i] = db;
    g->store_name[i] = wk->store->ops->name;
    if (i + 1 > g->nhealth)
        g->nhealth = i + 1;
    pthread_mutex_unlock(&g->lock);
}

/* Worker 0's timer: this instance, as the fleet sees it, through the worker's store. */
static void
publish_fleet(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *wk = arg;
    struct policy *p = worker_policy(wk);
    char hash[17];
    struct store_health h;
    struct db_health d = {0};

    policy_hash(p, hash);
    store_health(wk->store, &h);
    if (wk->db)
        db_pool_health(wk->db, &d);
    gw_fleet_publish(&wk->g->fleet, wk->store, hash, p->generation, !h.degraded,
                     wk->db && !(d.size && d.backing_off == d.size));
}

void
gateway_set_listen(struct gateway *g, const char *listen)
{
    gw_fleet_set_listen(&g->fleet, listen);
}

json_t *
gateway_fleet_status(struct gateway *g)
{
    return gw_fleet_json(&g->fleet);
}

void
gateway_health(struct gateway *g, struct gateway_health *out)
{
    memset(out, 0, sizeof(*out));
    out->store_kind = g->cfg.redis_url && g->cfg.redis_url[0] ? "redis" : "memory";
    pthread_mutex_lock(&g->lock);
    for (unsigned i = 0; i < g->nhealth; i++) {
        if (!g->store_name[i])
            continue;
        const struct store_health *h = &g->health[i];
        const struct db_health *d = &g->db[i];
        out->workers++;
        out->store_degraded += h->degraded;
        out->store_failures += h->failures;
        out->store_fallbacks += h->fallbacks;
        out->store_transitions += h->transitions;
        hist_merge(&out->store_latency, &h->latency);
        out->db_size += d->size;
        out->db_connections += d->connections;
        out->db_pending += d->pending;
        out->db_pipelined += d->pipelined;
        if (d->size && d->backing_off == d->size)
            out->db_unreachable++;
        if (d->last_error_ms > out->db_last_error_ms) {
            out->db_last_error_ms = d->last_error_ms;
            memcpy(out->db_last_error, d->last_error, sizeof(out->db_last_error));
        }
    }
    pthread_mutex_unlock(&g->lock);
    store_memory_stats(g->mem, &out->memory);
}

/* The memory store's budgets, what it holds and what its bounds did, as JSON (new). */
static json_t *
memory_status(const struct store_memory_stats *st)
{
    const struct {
        const char *name;
        uint64_t value;
    } fields[] = {
        {"cache_bytes", st->cache_bytes},
        {"cache_max", st->cache_max},
        {"limit_bytes", st->limit_bytes},
        {"limit_max", st->limit_max},
        {"entries", st->entries},
        {"tags", st->tags},
        {"limits", st->limits},
        {"leases", st->leases},
        {"evicted_entries", st->evicted_entries},
        {"evicted_tags", st->evicted_tags},
        {"not_stored", st->not_stored},
        {"limit_reclaimed", st->limit_reclaimed},
        {"limit_refused", st->limit_refused},
        {"leases_unrecorded", st->leases_unrecorded},
    };
    json_t *o = json_object();
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        json_object_set_new(o, fields[i].name, json_integer((json_int_t)fields[i].value));
    return o;
}

/* A latency histogram as {"count", "p50_ms", "p99_ms"} (new). */
static json_t *
latency_json(const struct hist *h)
{
    return json_pack("{s:I, s:f, s:f}", "count", (json_int_t)hist_count(h), "p50_ms",
                     (double)hist_quantile(h, 0.5) / 1000.0, "p99_ms",
                     (double)hist_quantile(h, 0.99) / 1000.0);
}

json_t *
gateway_store_status(struct gateway *g)
{
    struct gateway_health gh;
    gateway_health(g, &gh);
    json_t *workers = json_array();
    pthread_mutex_lock(&g->lock);
    for (unsigned i = 0; i < g->nhealth; i++) {
        const struct store_health *h = &g->health[i];
        if (!g->store_name[i])
            continue;
        json_t *w = json_pack("{s:i, s:s, s:s, s:I, s:I, s:I}", "worker", (int)i, "store",
                              g->store_name[i], "state", h->state ? h->state : "ok", "failures",
                              (json_int_t)h->failures, "fallbacks", (json_int_t)h->fallbacks,
                              "degraded_times", (json_int_t)h->transitions);
        if (hist_count(&h->latency))
            json_object_set_new(w, "latency", latency_json(&h->latency));
        json_array_append_new(workers, w);
    }
    pthread_mutex_unlock(&g->lock);
    json_t *o = json_pack("{s:s, s:s, s:o, s:o}", "kind", gh.store_kind, "state",
                          gh.store_degraded ? "degraded" : "ok", "workers", workers, "memory",
                          memory_status(&gh.memory));
    if (strcmp(gh.store_kind, "redis") == 0)
        json_object_set_new(o, "latency", latency_json(&gh.store_latency));
    return o;
}

json_t *
gateway_db_status(struct gateway *g)
{
    struct gateway_health gh;
    gateway_health(g, &gh);
    const char *state = gh.db_unreachable       ? "unreachable"
                        : gh.db_connections > 0 ? "connected"
                                                : "idle";
    json_t *o = json_pack("{s:s, s:I, s:I, s:I}", "state", state, "pool_size",
                          (json_int_t)gh.db_size, "connections", (json_int_t)gh.db_connections,
                          "pending", (json_int_t)gh.db_pending);
    json_t *last = json_null();
    if (gh.db_last_error_ms)
        last = json_pack("{s:o, s:s}", "time", gw_time_json(gh.db_last_error_ms), "error",
                         gh.db_last_error);
    json_object_set_new(o, "last_error", last);
    return o;
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
        log_warn("%s: redis: %s; using the memory store", name, err);
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
    gw_stats_init(&wk->stats);
    wk->stats.off = g->cfg.no_stats;
    unsigned idx = server_worker_index(w);
    gw_access_init(&wk->access, g->cfg.access_log, idx,
                   g->cfg.access_sample > 0 ? g->cfg.access_sample : 1.0);
    /* Registered once set up: status output reads its counts from here on. */
    if (idx < GATEWAY_MAX_WORKERS) {
        pthread_mutex_lock(&g->lock);
        g->workers[idx] = wk;
        pthread_mutex_unlock(&g->lock);
    }
    LIST_INIT(&wk->background);
    char err[256];
    char name[32];
    snprintf(name, sizeof(name), "worker %u", server_worker_index(w));
    wk->store = gateway_store_new(g, server_worker_base(w), name);
    wk->tiers = tier_cache_new(100000);
    wk->creds = cred_cache_new(GW_CRED_CACHE_ENTRIES, GW_CRED_CACHE_BYTES);
    wk->forget_epoch = &g->forget_epoch;
    wk->tenants = tenant_runtime_new();
    wk->db = db_pool_new(server_worker_base(w), g->cfg.database_url ? g->cfg.database_url : "",
                         g->cfg.db_pool_size, g->cfg.db_deadline_ms, 1024, err, sizeof(err));
    if (!wk->db)
        log_error("worker %u: database: %s", server_worker_index(w), err);
    wk->up = upstream_pool_new(server_worker_base(w), NULL);
    wk->cache_max_size = g->cfg.cache_max_size ? g->cfg.cache_max_size : GATEWAY_CACHE_MAX_SIZE;
    wk->ws_idle_ms = g->cfg.ws_idle_ms;
    wk->ws_max_ms = g->cfg.ws_max_ms;
    wk->to_origin = gw_to_origin;
    if (server_worker_index(w) == 0) /* one worker warms: the cache is shared */
        gw_warm_init(wk);
    worker_policy(wk);
    wk->health_timer = event_new(server_worker_base(w), -1, EV_PERSIST, publish_health, wk);
    struct timeval tv = {0, HEALTH_PUBLISH_MS * 1000};
    event_add(wk->health_timer, &tv);
    publish_health(-1, 0, wk);
    if (idx == 0) { /* one worker speaks for the instance */
        wk->fleet_timer = event_new(server_worker_base(w), -1, EV_PERSIST, publish_fleet, wk);
        struct timeval ftv = util_ms_to_tv(g->fleet.every_ms);
        event_add(wk->fleet_timer, &ftv);
        publish_fleet(-1, 0, wk);
    }
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
    if (wk->fleet_timer)
        event_free(wk->fleet_timer);
    gw_warm_free(wk);
    upstream_pool_free(wk->up);
    if (wk->db)
        db_pool_free(wk->db);
    wk->store->ops->destroy(wk->store);
    while (!LIST_EMPTY(&wk->background)) /* what is left waits on a timer for another's fill */
        gw_fail(LIST_FIRST(&wk->background), 503, "the server is shutting down");
    hmap_free(&wk->inflight); /* every fill has ended */
    tier_cache_free(wk->tiers);
    cred_cache_free(wk->creds);
    tenant_runtime_free(wk->tenants);
    policy_release(wk->policy);
    struct gateway *g = wk->g;
    unsigned idx = server_worker_index(wk->w);
    if (idx < GATEWAY_MAX_WORKERS) {
        pthread_mutex_lock(&g->lock);
        g->workers[idx] = NULL;
        pthread_mutex_unlock(&g->lock);
    }
    gw_stats_free(&wk->stats);
    gw_access_free(&wk->access);
    free(wk);
}

void
gateway_stats(struct gateway *g, struct gw_stats_view *v, size_t callers_per_policy)
{
    gw_stats_view_init(v, store_now_ms(), callers_per_policy);
    pthread_mutex_lock(&g->lock);
    for (unsigned i = 0; i < GATEWAY_MAX_WORKERS; i++)
        if (g->workers[i])
            gw_stats_merge(v, &g->workers[i]->stats);
    pthread_mutex_unlock(&g->lock);
    gw_stats_view_finish(v);
}

void
gateway_access_stats(struct gateway *g, struct gateway_access_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!g->cfg.access_log)
        return;
    out->on = true;
    out->path = logwriter_path(g->cfg.access_log);
    out->sample = g->cfg.access_sample > 0 ? g->cfg.access_sample : 1.0;
    logwriter_stats(g->cfg.access_log, &out->w);
    pthread_mutex_lock(&g->lock);
    for (unsigned i = 0; i < GATEWAY_MAX_WORKERS; i++)
        if (g->workers[i])
            out->sampled_out +=
                __atomic_load_n(&g->workers[i]->access.sampled_out, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&g->lock);
}

json_t *
gateway_access_status(struct gateway *g)
{
    struct gateway_access_stats a;
    gateway_access_stats(g, &a);
    if (!a.on)
        return json_null();
    return json_pack("{s:s, s:f, s:I, s:I, s:I, s:I, s:I, s:I}", "path", a.path, "sample", a.sample,
                     "lines", (json_int_t)a.w.lines, "dropped", (json_int_t)a.w.dropped,
                     "sampled_out", (json_int_t)a.sampled_out, "bytes", (json_int_t)a.w.bytes,
                     "reopens", (json_int_t)a.w.reopens, "write_errors",
                     (json_int_t)a.w.write_errors);
}

struct server_app
gateway_app(struct gateway *g)
{
    struct server_app app = {
        .worker_init = worker_init,
        .worker_fini = worker_fini,
        .handle = handle,
        .stream_body = stream_body,
        .ctx = g,
    };
    return app;
}
