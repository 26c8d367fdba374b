/* stats.h - what each worker counts of the requests it serves (requests, latencies, limit
 * decisions, origins, callers), read by the control plane without a lock on the request path. */
#ifndef SLUICE_STATS_H
#define SLUICE_STATS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "hmap.h"
#include "topk.h"

/* What X-Cache said of an answer; NONE when the endpoint is not cached or the request is not
 * a read. */
enum gw_cache_kind {
    GW_CACHE_NONE = 0,
    GW_CACHE_HIT,
    GW_CACHE_MISS,
    GW_CACHE_STALE,
    GW_CACHE_REVALIDATED,
    GW_CACHE_BYPASS,
    GW_CACHE_KINDS
};
extern const char *const gw_cache_kind_names[GW_CACHE_KINDS]; /* "none", "hit", ... */

enum gw_origin_kind { GW_ORIGIN_SQL = 0, GW_ORIGIN_UPSTREAM, GW_ORIGINS };
extern const char *const gw_origin_names[GW_ORIGINS]; /* "sql", "upstream" */

enum gw_decision { GW_ALLOWED = 0, GW_DENIED, GW_SHADOW_DENIED, GW_DECISIONS };
extern const char *const gw_decision_names[GW_DECISIONS];

#define GW_STATS_MINUTES 60     /* the last hour, a slot a minute */
#define GW_STATS_CALLERS 64     /* callers kept per limit policy, per worker */
#define GW_STATS_KEY_SEP '\x1f' /* joins label values in a counter's key */
#define GW_STATS_MEMO 16        /* remembered lookups per table (a power of two) */

/* A counter under a key of label values joined by GW_STATS_KEY_SEP. */
struct gw_counter {
    struct hmap_node node;
    uint64_t n; /* relaxed atomic */
    size_t keylen;
    char key[];
};

/* One minute of traffic. */
struct gw_minute {
    uint64_t minute; /* minutes since the epoch this slot holds; 0: never used */
    uint64_t requests, hits, misses, denied, errors;
    struct hist duration, origin;
};

/* One route: its latencies since start, and its last hour a minute at a time. */
struct gw_route_stat {
    struct hmap_node node;
    struct hist duration;
    uint64_t requests, hits, denied; /* since start */
    struct {
        uint64_t minute;
        uint32_t requests, hits, denied;
    } minutes[GW_STATS_MINUTES];
    size_t keylen;
    char key[]; /* the route text */
};

/* The callers of one limit policy: counted live by the worker, a copy published for readers
 * every HEALTH_PUBLISH_MS. */
struct gw_callers {
    struct hmap_node node;
    struct topk live;
    struct topk_item *published; /* copies of live's items when last published (their hmap
                                    nodes unused) */
    size_t npublished;
    uint64_t window; /* the hour (since the epoch) both count */
    size_t keylen;
    char key[]; /* the policy name */
};

/*
 * A remembered lookup of a table: the texts (a, b) and number c the caller passed, and what
 * they found. Label texts are static or a policy's strings, which keep their text at their
 * address while no policy is freed: a slot is used only when policy_frees() says what it said
 * when the slot was filled, so a text freed and another made at the same address is never
 * counted under the old one.
 */
struct gw_stats_memo {
    const void *a, *b;
    uint32_t c;
    uint64_t frees; /* policy_frees() when it was filled */
    void *found;    /* NULL: an empty slot */
};

/*
 * One worker's counts. The worker writes them: counters with relaxed atomic
 * adds and no lock; a new key, a new minute slot or the publication of its
 * callers takes `lock`, which readers take to walk the tables. Readers see
 * every counter whole.
 */
struct gw_stats {
    bool off; /* count nothing: every gw_stats_* call returns at once */
    pthread_mutex_t lock;
    struct hmap requests;      /* route, method, status, cache -> gw_counter */
    struct hmap decisions;     /* limit policy, tier, decision -> gw_counter */
    struct hmap origin_errors; /* source, reason -> gw_counter */
    struct hmap refused_tiers; /* tier -> gw_counter: answers 429 by the caller's tier */
    struct hmap identity;      /* source, result -> gw_counter: how callers were identified */
    struct hmap id_refusals;   /* source, reason -> gw_counter: credentials refused */
    struct hmap routes;        /* route -> gw_route_stat */
    struct hmap callers;       /* limit policy -> gw_callers */
    struct hist origin[GW_ORIGINS];
    uint64_t invalidations_write;
    struct gw_minute minutes[GW_STATS_MINUTES];
    /* the worker's own, unlocked: what its last lookups of each table found */
    struct gw_stats_memo memo_requests[GW_STATS_MEMO], memo_routes[GW_STATS_MEMO],
        memo_decisions[GW_STATS_MEMO], memo_pairs[GW_STATS_MEMO], memo_callers[GW_STATS_MEMO];
};

/* Sets st up (empty). */
void gw_stats_init(struct gw_stats *st);

/* Frees what st holds. */
void gw_stats_free(struct gw_stats *st);

/* One answered request of `route` from a caller of `tier` (NULL: none) with `method` (its
 * name as http_method_name() gives it): its status, X-Cache, time in the gateway. Every text
 * given to these functions as a label is static or a policy's (see struct gw_stats_memo). */
void gw_stats_request(struct gw_stats *st, const char *route, const char *tier, const char *method,
                      int status, enum gw_cache_kind cache, uint64_t duration_us, uint64_t now_ms);

/* n invalidations (tags or keys) planned by a write. */
void gw_stats_invalidations(struct gw_stats *st, size_t n);

/* One decision of limit `policy` for a caller of `tier` (or NULL). */
void gw_stats_decision(struct gw_stats *st, const char *policy, const char *tier,
                       enum gw_decision d);

/* One call to an origin that answered after duration_us, or failed (reason: a short word). */
void gw_stats_origin(struct gw_stats *st, enum gw_origin_kind o, uint64_t duration_us,
                     uint64_t now_ms);
void gw_stats_origin_error(struct gw_stats *st, enum gw_origin_kind o, const char *reason);

/* One request whose caller was identified by `source` ("jwt", "api_key", "header",
 * "anonymous") with `result` ("verified", "cached", "looked_up", "trusted", "none"). */
void gw_stats_identity(struct gw_stats *st, const char *source, const char *result);

/* One request refused (401, 400, 503) because of its credential: its source and the reason
 * ("expired", "signature", "unknown_key", "missing", ...). */
void gw_stats_id_refusal(struct gw_stats *st, const char *source, const char *reason);

/* One request of the caller `caller` (len bytes: its limit key) of `tier` (or NULL) under
 * limit `policy`; denied or not, and what the limit has left for it. */
void gw_stats_caller(struct gw_stats *st, const char *policy, const char *tier, const char *caller,
                     size_t len, bool denied, uint64_t remaining, uint64_t now_ms);

/* Publishes the callers counted so far for readers (the worker calls it every second). */
void gw_stats_publish(struct gw_stats *st);

/* ---- reading: the counts of every worker, merged ------------------------------------------- */

/* A merged counter: a key of label values and its count. */
struct gw_stat_item {
    char *key; /* owned, keylen bytes, label values joined by GW_STATS_KEY_SEP */
    size_t keylen;
    uint64_t n;
};

struct gw_stat_route {
    char *route; /* owned */
    struct hist duration;
    uint64_t requests, hits, denied;
    uint64_t minute_requests[GW_STATS_MINUTES], minute_hits[GW_STATS_MINUTES],
        minute_denied[GW_STATS_MINUTES]; /* oldest first, ending with the current minute */
};

struct gw_stat_caller {
    char *policy, *caller;    /* owned */
    char tier[TOPK_NOTE_MAX]; /* the caller's tier when last seen; "" when none */
    uint64_t requests, denied, error, remaining;
};

/* Every worker's counts added up; built by gw_stats_merge(), freed by gw_stats_view_free(). */
struct gw_stats_view {
    uint64_t now_minute;
    struct gw_stat_item *requests, *decisions, *origin_errors, *refused_tiers, *identity,
        *id_refusals;
    size_t nrequests, ndecisions, norigin_errors, nrefused_tiers, nidentity, nid_refusals;
    struct gw_stat_route *routes;
    size_t nroutes;
    struct gw_stat_caller *callers; /* per policy, heaviest first */
    size_t ncallers;
    struct hist origin[GW_ORIGINS];
    uint64_t invalidations_write;
    struct gw_minute minutes[GW_STATS_MINUTES]; /* oldest first, ending with the current one */
    size_t callers_max;                         /* callers kept per policy (0: none gathered) */
    struct hmap route_at; /* while merging: route -> its place in routes (internal) */
};

/* Starts an empty view for the minute now_ms falls in, that keeps at most callers_per_policy
 * callers of each limit policy (0: gathers none). */
void gw_stats_view_init(struct gw_stats_view *v, uint64_t now_ms, size_t callers_per_policy);

/* Adds worker st's counts into v (under st's lock). */
void gw_stats_merge(struct gw_stats_view *v, struct gw_stats *st);

/* Orders what gw_stats_merge() gathered: items by key, routes by name, callers by policy
 * then requests (heaviest first, at most callers_per_policy each). */
void gw_stats_view_finish(struct gw_stats_view *v);

void gw_stats_view_free(struct gw_stats_view *v);

#endif
