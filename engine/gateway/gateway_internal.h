/* gateway_internal.h - the gateway's request, worker and shared steps, for the files of the
 * request path (gateway.c, proxy.c, warm.c, explain.c); not an interface for the rest. */
#ifndef SLUICE_GATEWAY_INTERNAL_H
#define SLUICE_GATEWAY_INTERNAL_H

#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "gateway.h"
#include "policy.h"
#include "router.h"
#include "server.h"
#include "store.h"
#include "tenant.h"
#include "tenant_hooks.h"

struct db_pool;
struct tier_cache;
struct upstream_pool;
struct upstream_call;
struct sbuf;
struct template;

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
#define HIT_FOR_MISS_MS                                                                            \
    30000                    /* an uncacheable answer sends its key's requests straight to         \
                                the origin this long (at most the endpoint's TTL) */
#define INFLIGHT_BUCKETS 256 /* fills in progress per worker, by key */
#define WARM_TICK_MS 50      /* warming: a batch every tick */
#define WARM_PER_TICK 10     /* of at most this many requests (200 per second) */
#define WARM_MAX_INFLIGHT 32 /* with at most this many in flight */

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

/* A fill in progress in this worker: requests missing the same key wait on it. */
struct inflight {
    struct inflight *next;
    struct gw_req *filler;
    struct gw_req *waiters; /* linked through next_waiter */
    size_t keylen;
    char key[];
};

/* Warming of one generation's warm callers, in the background at a bounded rate. */
struct warm_item {
    const struct policy_endpoint *ep;
    char *user, *tenant;
};
struct warm_state {
    struct policy *policy; /* the generation being warmed (a reference), or NULL */
    struct warm_item *items;
    size_t nitems, next;
    size_t queries_pending; /* warm queries (sql) not answered yet */
    unsigned inflight;
    uint64_t filled, hits, failed;
    struct event *timer;
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
    struct upstream_pool *up;       /* keep-alive connections to upstream apps */
    struct inflight *inflight[INFLIGHT_BUCKETS];
    struct warm_state warm;    /* worker 0 only */
    struct gw_req *background; /* detached requests (refreshes, warming) in progress */
    bool closing;              /* worker_fini has begun: no request goes on to an origin */
};

struct gw_req {
    /* Zeroed by req_new(), up to `dec`. */
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
    json_t *body;
    int value_overflow; /* a decoded value did not fit: the request is refused */
    struct store_admit admit;
    struct store_entry *entry; /* the fill in progress */
    struct event *fill_timer;  /* waiting for another caller's fill: the next look */
    uint64_t fill_waited_ms;   /* how long it has waited for that fill */
    bool detached;             /* no client: a background refresh or a warming request */
    bool warm;                 /* warming: no limit is counted */
    bool refresh;              /* a background refresh: the lease is held, the lookup is done */
    bool bypass;               /* the cache is not used for this request (X-Cache: BYPASS) */
    bool uncacheable;          /* the origin's answer may not be stored (hit-for-miss) */
    enum { WARM_FAILED = 0, WARM_FILLED, WARM_CACHED } warm_outcome;
    struct gw_req *bg_prev, *bg_next; /* in wk->background while detached */
    char *own_raw;                    /* a detached request's own bytes, parsed in own_sr */
    struct store_entry *stale;        /* an expired entry kept for stale_if_error */
    struct store_entry *answer; /* the origin's answer, held until a write's invalidation lands
                                   or shared with the requests waiting on this fill */
    struct upstream_call *call;
    struct inflight *inflight;  /* the fill this request leads in its worker */
    struct gw_req *next_waiter; /* in another request's inflight */
    uint64_t wait_start_ms;     /* when it began waiting on another's fill */
    const char *primary_key;    /* when the entry varies: the primary key (cache_key is then */
    size_t primary_len;         /* the secondary one, in vkey) */

    /* Not zeroed: each is written before it is read. */
    struct tenant_decision dec;                        /* read only when hooked */
    struct limiter_rule hook_rules[POLICY_MAX_LIMITS]; /* limits a hook changed */
    char hook_fields[POLICY_MAX_LIMITS][96];           /* and their RateLimit-Policy items */
    struct store_limit limits[MAX_LIMITS];             /* admit.nlimits of them */
    struct limiter_result results[MAX_LIMITS];
    const char *tags[MAX_TAGS]; /* admit.ntags of them */
    size_t taglens[MAX_TAGS];
    uint64_t tag_gens[MAX_TAGS];
    const char *inv_tags[MAX_TAGS];
    size_t inv_lens[MAX_TAGS];
    struct server_request own_sr; /* a detached request's parsed form (sr points here) */
    char own_ip[48];
    char vary_names[256]; /* the answer varied on these fields ("" when not) */
    char vkey[1024];      /* the secondary key ("" when none) */
    char hdrs[HDRS_BYTES];
    size_t hdrs_len;
    size_t keys_used, vals_used;
    char keys[KEYS_BYTES]; /* expanded limit keys, cache key, tags */
    char vals[VALS_BYTES]; /* decoded path/query values, rendered body fields */
};

/* ---- shared steps of the request path (gateway.c) ---- */

/* Frees a request: answers the requests waiting on its fill, drops its references. */
void gw_req_free(struct gw_req *rq);

/* Answers a problem+json error (a detached request logs it) and frees the request. */
void gw_fail(struct gw_req *rq, int status, const char *detail);

/*
 * Answers with entry e (the reply takes its own reference) and frees the
 * request: X-Cache (unless NULL) with Age, the ETag, the stored fields; 304
 * when If-None-Match matches.
 */
void gw_reply_entry(struct gw_req *rq, struct store_entry *e, const char *xcache, uint64_t now_ms);

/*
 * Stores an origin's answer e (a reference is taken) under the request's key
 * for ttl_ms, under a secondary key when `vary` names request fields, and
 * answers with it once the store has acknowledged the fill.
 */
void gw_store_and_reply(struct gw_req *rq, struct store_entry *e, uint64_t ttl_ms,
                        const char *vary);

/*
 * Remembers briefly that the request's key is not cacheable (hit-for-miss),
 * then answers with e (a reference is taken; X-Cache: MISS) and frees the request.
 */
void gw_remember_uncacheable(struct gw_req *rq, struct store_entry *e);

/* Whether the request holds a stale entry its endpoint's stale_if_error still covers. */
bool gw_stale_serves(const struct gw_req *rq);

/* The origin failed: answers the stale entry within stale_if_error, else the error. */
void gw_origin_failed(struct gw_req *rq, int status, const char *detail);

/* Bumps the endpoint's invalidate tags, then answers with e (a reference is taken). */
void gw_invalidate_then_reply(struct gw_req *rq, struct store_entry *e);

/* Expands t into the request's key arena. Returns the text (borrowed), or NULL when full. */
const char *gw_expand(struct gw_req *rq, const struct template *t, size_t *len);

/* The caller's tier counter key (per user, or per address), expanded like gw_expand(). */
const char *gw_caller_key(struct gw_req *rq, size_t *len);

/* Reads a trusted identity header into *val (borrowed); -1 when it is too long. */
int gw_identity_header(struct gw_req *rq, const char *name, const char **val, size_t *len);

/* Sets the request's tier from a name (the default tier when unknown), with tenant overrides. */
void gw_set_tier(struct gw_req *rq, const char *name, size_t len);

/* Reads identity and body, then goes on to the tier, limits, lookup and origin. */
void gw_req_begin(struct gw_req *rq);

/*
 * A request without a client (a refresh, a warming request) from raw
 * HTTP/1.1 bytes in raw (taken: head_len bytes of head, then the body), on
 * snapshot p (a reference is taken). Returns it routed, or NULL when it does
 * not parse or route.
 */
struct gw_req *gw_detached_new(struct gw_worker *wk, struct policy *p, struct sbuf *raw,
                               size_t head_len, const char *ip);

/* Sends the request to its endpoint's origin (SQL, upstream or fixed answer). */
void gw_to_origin(struct gw_req *rq);

/* ---- filling the cache (fill.c) ---- */

/* Makes rq the leader of its cache key's fill in its worker, unless another request is. */
void gw_inflight_lead(struct gw_req *rq);
/* Puts rq on the waiters of its key's fill in its worker. Returns false when there is none. */
bool gw_inflight_wait(struct gw_req *rq);
/* The leader rq is done: its waiters get its stored answer, take the fill over or go on. */
void gw_inflight_finish(struct gw_req *rq);
/* The secondary key of rq for an answer varying on `names`, into rq->vkey; -1 if too long. */
long gw_vary_key(struct gw_req *rq, const char *names);

/* ---- the upstream source (proxy.c) ---- */

/* Sends the request to its endpoint's upstream; the answer is stored and/or replied. */
void gw_proxy_run(struct gw_req *rq);

/* ---- warming (warm.c) ---- */

/* Makes wk the warming worker (its timer); then gw_warm_start() warms each new generation. */
void gw_warm_init(struct gw_worker *wk);
/* Starts warming generation p's warm callers in the background (drops an unfinished one). */
void gw_warm_start(struct gw_worker *wk, struct policy *p);
/* Stops warming and frees its state (requests in flight finish on their own). */
void gw_warm_free(struct gw_worker *wk);

#endif
