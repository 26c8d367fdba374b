/* gateway.h - the gateway: serving policy snapshots on the server's workers, their stores, explain.
 */
#ifndef SLUICE_GATEWAY_H
#define SLUICE_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "hist.h"
#include "logwriter.h"
#include "server.h"
#include "store_memory.h"

struct policy;
struct gateway;

struct gateway_config {
    const char *database_url;     /* libpq conninfo; NULL or "": from the PG* environment */
    unsigned db_pool_size;        /* connections per worker */
    uint64_t db_deadline_ms;      /* per statement */
    size_t cache_bytes;           /* memory store budget: entries, markers, tags */
    size_t limit_bytes;           /* memory store budget: limit states, fill leases */
    const char *redis_url;        /* NULL or "": the memory store; else each worker uses Redis,
                                     falling back to the memory store while it is unavailable */
    const char *redis_limits_url; /* NULL or "": limits in redis_url's Redis; else their own */
    uint64_t redis_deadline_ms;   /* per Redis command; 0: 50 */
    bool no_stats;                /* the workers count nothing of what they serve (stats.h) */
    size_t cache_max_size;        /* an upstream's answer larger is streamed and not stored,
                                     unless its endpoint says (cache.max_size); 0: 1 MiB */
    uint64_t ws_idle_ms;          /* a WebSocket tunnel with nothing moving this long closes;
                                     0: never */
    uint64_t ws_max_ms;           /* a WebSocket tunnel closes after this long; 0: never */
    struct logwriter *access_log; /* borrowed, one producer per worker; NULL: no access log */
    double access_sample;         /* 2xx/3xx access log lines kept (0 < x <= 1); 0: all */
    uint64_t fleet_ttl_ms;        /* an instance of the fleet not heard of this long is gone;
                                     0: 60 s (fleet.h) */
};

#define GATEWAY_CACHE_MAX_SIZE ((size_t)1 << 20) /* --cache-max-size's default */

/* Returns a new gateway serving `policy` (a reference is taken). */
struct gateway *gateway_new(const struct gateway_config *cfg, struct policy *policy);
void gateway_free(struct gateway *g);

/* Publishes a new policy snapshot (a reference is taken); requests in flight keep theirs. */
void gateway_set_policy(struct gateway *g, struct policy *policy);

/* The snapshot serving now (a new reference). */
struct policy *gateway_policy(struct gateway *g);

/*
 * Describes as JSON (a new string) what `policy` does with a request given as
 * a request line ("GET /api/crm?type=contacts"), header lines ("Name: value"),
 * an optional body and the caller's address: the endpoint (file and line),
 * the caller, each limit with its expanded key, the cache key and tags, the
 * invalidations, the generation. Runs no SQL: a tier that would be looked up
 * is `tier` when given, else the default. Returns NULL with a message in err.
 */
char *gateway_explain_request(struct policy *policy, const char *line, const char *const *headers,
                              size_t nheaders, const char *body, const char *ip, const char *tier,
                              char *err, size_t errlen);

/* Completion of gateway_explain_request_now(): json (new, the callee frees it), or NULL and err
 * (borrowed for the call). */
typedef void gateway_explain_fn(void *arg, char *json, const char *err);

/*
 * As gateway_explain_request(), with the counts of store s (NULL: none, as
 * gateway_explain_request()): each limit also says what it would decide for
 * the request now ("decision": "admit", "refuse", or for a shadow limit
 * "shadow: would refuse", and its "remaining"), checked without counting
 * (store_admit.peek), and "verdict" says what the request would get
 * ("admitted", "refused (429)"; a shadow limit never refuses). Calls done
 * exactly once, before returning or later from s's event loop.
 */
struct store;
void gateway_explain_request_now(struct policy *policy, struct store *s, const char *line,
                                 const char *const *headers, size_t nheaders, const char *body,
                                 const char *ip, const char *tier, gateway_explain_fn *done,
                                 void *arg);

/*
 * The store's state for status output, as the workers last published it
 * (every 500 ms): {"kind", "state": "ok"|"degraded", "workers": [...]}, and the
 * memory store's budgets and counts as they are now ("memory": {...}). New reference.
 */
json_t *gateway_store_status(struct gateway *g);

/*
 * The database pools of every worker as JSON: {"state": "connected"|"idle"|"unreachable",
 * "pool_size", "connections", "pending", "last_error": null | {"time", "error"}}. New reference.
 */
json_t *gateway_db_status(struct gateway *g);

/* The health of the stores and database pools, as the workers last published it. */
struct gateway_health {
    const char *store_kind;           /* "redis" or "memory" */
    unsigned workers;                 /* workers that published */
    unsigned store_degraded;          /* workers answering without the shared store */
    uint64_t store_failures;          /* shared store operations that failed */
    uint64_t store_fallbacks;         /* requests answered by the fallback */
    uint64_t store_transitions;       /* times a worker's store became degraded */
    struct hist store_latency;        /* the shared store's round trips */
    unsigned db_size;                 /* connection slots of every pool */
    unsigned db_connections;          /* established */
    unsigned db_pending;              /* statements waiting or running */
    uint64_t db_pipelined;            /* statements sent behind another on a busy connection */
    unsigned db_unreachable;          /* pools whose every slot is backing off after failures */
    char db_last_error[256];          /* the latest failed connect or lost connection */
    uint64_t db_last_error_ms;        /* when (ms since the epoch); 0: never */
    struct store_memory_stats memory; /* the memory store now */
};
void gateway_health(struct gateway *g, struct gateway_health *out);

/* Records the address the server listens on (copied), which the fleet shows. Thread-safe. */
void gateway_set_listen(struct gateway *g, const char *listen);

/*
 * The instances sharing the store, as worker 0 last read them from it
 * (fleet.h): {"instances": [...], "same_policies", "ttl_ms", "updated",
 * "shared"}. With the memory store, or while the shared one is down, this
 * instance alone. New reference.
 */
json_t *gateway_fleet_status(struct gateway *g);

/* Makes every worker forget the API keys it looked up (a change of their table was notified):
 * each does before its next API key lookup. Thread-safe. */
void gateway_forget_api_keys(struct gateway *g);

/*
 * A new handle on the gateway's store for a thread running `base` (borrowed):
 * the Redis store with the memory store as its fallback when Redis is
 * configured, else a handle on the shared memory store. `name` labels log
 * lines. Used by one thread only; freed with ops->destroy.
 */
struct event_base;
struct store;
struct store *gateway_store_new(struct gateway *g, struct event_base *base, const char *name);

/*
 * What every worker counted (requests, latencies, limit decisions, origins,
 * callers: stats.h), merged into *v (freed with gw_stats_view_free()), with
 * at most callers_per_policy callers per limit policy, heaviest first.
 */
struct gw_stats_view;
void gateway_stats(struct gateway *g, struct gw_stats_view *v, size_t callers_per_policy);

/* The access log as status output sees it. */
struct gateway_access_stats {
    bool on;                  /* false: no access log (the rest is zero) */
    const char *path;         /* its file, or "-" (borrowed from the writer) */
    double sample;            /* the fraction of 2xx/3xx lines kept */
    struct logwriter_stats w; /* lines put, dropped, bytes written, reopens, write errors */
    uint64_t sampled_out;     /* 2xx/3xx lines the sampling left out */
};

/* Fills *out from the writer and every worker's sampling count. */
void gateway_access_stats(struct gateway *g, struct gateway_access_stats *out);

/*
 * The access log as JSON for /status: null when it is off, else {"path",
 * "sample", "lines", "dropped", "sampled_out", "bytes", "reopens",
 * "write_errors"}. New reference.
 */
json_t *gateway_access_status(struct gateway *g);

/* The server_app that runs the gateway on each worker. */
struct server_app gateway_app(struct gateway *g);

#endif
