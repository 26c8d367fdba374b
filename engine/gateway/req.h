/* req.h - the request path's request and worker objects, replies, and the coalescing of fills. */
#ifndef SLUICE_REQ_H
#define SLUICE_REQ_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/queue.h>

#include "access.h"
#include "hmap.h"
#include "httpcache.h"
#include "log.h"
#include "policy.h"
#include "query.h"
#include "router.h"
#include "server.h"
#include "stats.h"
#include "store.h"
#include "template.h"
#include "tenant.h"
#include "tenant_hooks.h"
#include "upstream_parse.h"

struct cred_cache;
struct db_pool;
struct gateway;
struct tier_cache;
struct upstream_pool;
struct upstream_call;
struct template;

#define GW_MAX_TAGS (POLICY_MAX_TAGS + 1) /* an entry's tags: the policy's, and its URL's */
#define GW_MAX_INVALIDATE                                                                          \
    (POLICY_MAX_TAGS + 3) /* a write's: the policy's, its target URL,                              \
                             Location and Content-Location */
#define MAX_USER_LEN 256
#define KEYS_BYTES 4096
#define VALS_BYTES 4096
#define HDRS_BYTES 1536
#define FILL_WAIT_MS 1000     /* a request waits this long at most for another's fill */
#define GW_REQUEST_ID_MAX 128 /* a client's X-Request-Id longer than this is replaced */

/* A fill in progress in this worker: requests missing the same key wait on it. */
struct inflight {
    struct hmap_node node; /* in its worker's inflight, by key */
    struct gw_req *filler;
    struct gw_req *waiters; /* linked through next_waiter */
    char key[];
};

/* Warming of one generation's warm callers (warm.c), in the background at a bounded rate. */
struct warm_item {
    const struct policy_endpoint *ep;
    char *user, *tenant;
};
struct warm_state {
    struct policy *policy; /* the generation being warmed (a reference), or NULL */
    struct warm_item *items;
    size_t nitems, next;
    size_t queries_pending; /* warm queries (sql) not answered yet */
    unsigned inflight;      /* warming requests not freed yet (counted down by gw_req_free) */
    uint64_t filled, hits, failed;
    struct event *timer;
};

/* What identified a request's caller. */
enum gw_id_source {
    GW_ID_ANONYMOUS = 0, /* nothing: limited by address */
    GW_ID_HEADER,        /* trusted identity headers */
    GW_ID_JWT,           /* a verified bearer token */
    GW_ID_API_KEY,       /* an API key looked up */
};
extern const char *const gw_id_source_names[]; /* "anonymous", "header", "jwt", "api_key" */

/* Sends a request on to its endpoint's origin (the source's dispatch, set by the layer above). */
typedef void gw_origin_fn(struct gw_req *rq);

/*
 * The streamed side of a request (relay.c, above this file), reached from
 * here through these. reply takes the answer gw_reply_entry() built (resp's
 * body unused): the head of a streamed answer, or the end of one whose copy
 * the store now holds; it returns true when it took the answer (and ends the
 * request in its time), false to let it go as usual. free is called by
 * gw_req_free().
 */
struct gw_relay;
struct gw_relay_ops {
    bool (*reply)(struct gw_req *rq, const struct server_response *resp);
    void (*free)(struct gw_req *rq);
};

struct gw_worker {
    struct gateway *g;
    struct worker *w;
    struct policy *policy; /* this worker's reference to the current snapshot */
    uint64_t generation;
    struct store *store;
    struct db_pool *db;
    struct tier_cache *tiers;
    struct cred_cache *creds;       /* verified tokens and looked-up API keys */
    const uint64_t *forget_epoch;   /* the gateway's count of notified API key changes (atomic) */
    uint64_t forgot_epoch;          /* ... when this worker last forgot its API keys */
    struct tenant_runtime *tenants; /* Lua states of tenant hooks, for this worker's generation */
    struct event *health_timer;     /* publishes the store's health for status output */
    struct event *fleet_timer;      /* worker 0: publishes this instance to the fleet */
    struct upstream_pool *up;       /* keep-alive connections to upstream apps */
    gw_origin_fn *to_origin;        /* a waiter whose fill failed goes on to the origin here */
    struct hmap inflight;           /* fills in progress (struct inflight), by key */
    struct warm_state warm;         /* worker 0 only */
    LIST_HEAD(, gw_req) background; /* detached requests (refreshes, warming) in progress */
    bool closing;                   /* worker_fini has begun: no request goes on to an origin */
    struct gw_stats stats;          /* what it served: metrics, the status page, /callers */
    size_t cache_max_size;          /* an answer larger is not stored (cache.max_size's default) */
    uint64_t ws_idle_ms, ws_max_ms; /* a WebSocket tunnel's idle and total time (0: none) */
    struct gw_access access;        /* its ring of the access log (off: no writer) */
};

struct gw_req {
    /* Zeroed by gw_req_new(), up to `dec`. */
    struct gw_worker *wk;
    struct server_request *sr;
    struct policy *policy; /* reference held for the request's life */
    const struct policy_endpoint *ep;
    struct router_match m;
    const char *user, *tenant;
    size_t user_len, tenant_len;
    enum gw_id_source id_source; /* what identified the caller (credential.h) */
    json_t *claims;              /* the verified credential's claims (a reference), or NULL */
    bool id_cached;              /* the credential was remembered: no signature was verified */
    const struct jwk *id_key;    /* the key that verified the token (not when remembered) */
    double id_exp;               /* the verified token's exp */
    const char *id_refusal;      /* why the credential was refused (a metrics word), or NULL */
    const char *challenge;       /* WWW-Authenticate of the 401 (or 400) refusing it, or NULL */
    bool api_key_pending;        /* an API key to look up (api_key_digest) before identifying */
    const char *api_key_param;   /* the API key's query parameter (first value), set by gw_query */
    size_t api_key_param_len, api_key_params;
    const struct policy_tier *tier;
    const struct tenant *tn; /* the caller's tenant file, or NULL */
    int hooked;              /* dec holds what the tenant's hooks decided */
    json_t *body;
    int value_overflow;  /* a decoded value did not fit: the request is refused */
    const char *refusal; /* why a value cannot be used (static text), e.g. a keyed query
                            parameter given twice: the request is refused with 400 */
    int query_state;     /* 0: query not parsed yet, 1: parsed into `query` */
    struct store_admit admit;
    struct store_entry *entry; /* the fill in progress */
    struct event *fill_timer;  /* waiting for another caller's fill: the next look */
    uint64_t fill_waited_ms;   /* how long it has waited for that fill */
    bool detached;             /* no client: a background refresh or a warming request */
    bool warm;                 /* warming: no limit is counted */
    bool refresh;              /* a background refresh: the lease is held, the lookup is done */
    bool bypass;               /* the cache is not used for this request (X-Cache: BYPASS) */
    bool bypass_anonymous;     /* ... because the caller lacks what the cache key names */
    bool authorized_only;      /* a request with Authorization under a key not naming the caller:
                                  only entries STORE_ENTRY_AUTHORIZED serve it, its answer is stored
                                  only when authorized, and it waits on no other's fill */
    uint8_t by_ip;             /* limit i is counted by address: the caller lacks what its key
                                  names (bit i) */
    bool uncacheable;          /* the origin's answer may not be stored (hit-for-miss) */
    bool coded;                /* the origin's answer is in a transfer coding passed on undecoded
                                  (its Transfer-Encoding line in the entry's fields): replied
                                  delimited by closing the connection, never to HTTP/1.0 */
    enum { WARM_FAILED = 0, WARM_FILLED, WARM_CACHED } warm_outcome;
    LIST_ENTRY(gw_req) bg_link; /* in wk->background while detached */
    char *own_raw;              /* a detached request's own bytes, parsed in own_sr */
    struct store_entry *stale;  /* an expired entry kept for stale_if_error */
    struct store_entry *answer; /* the origin's answer, held until a write's invalidation lands
                                   or shared with the requests waiting on this fill */
    struct upstream_call *call;
    struct inflight *inflight;     /* the fill this request leads in its worker */
    struct gw_req *next_waiter;    /* in another request's inflight */
    uint64_t wait_start_ms;        /* when it began waiting on another's fill */
    const char *fill_xcache;       /* what X-Cache says of the answer this request fills */
    uint64_t start_us;             /* when it began (monotonic), for its duration */
    enum http_method method;       /* its method, kept for the stats: rq->sr is gone once a
                                      request whose client left is answered */
    int status;                    /* the status it was answered with (0: not yet) */
    enum gw_cache_kind cache_kind; /* what X-Cache said of it */
    uint64_t sent_ms;              /* when it was sent upstream (request_time, RFC 9111 4.2.3) */
    uint64_t origin_us;            /* when it was sent to its origin (monotonic), for its time */
    bool validating;               /* the upstream was asked conditionally for rq->stale's answer */
    bool filled;                   /* it filled its key (which gives the fill lease back) */
    bool no_store;                 /* the request says no-store: its answer is not stored */
    bool has_directives;           /* `directives` holds the request's Cache-Control */
    bool id_sent;                  /* X-Request-Id is in the answer's fields */
    bool logged;                   /* the error log has a line of its failure */
    bool origin_timed;             /* origin_time_us is its origin's time (gw_origin_done) */
    uint64_t origin_time_us;       /* from sending to its origin to the answer or failure */
    const char *deciding_limit;    /* the limit the access log names (gw_add_limit_headers) */
    uint64_t deciding_remaining;   /* what that limit had left */
    bool deciding_shadow;          /* that limit is in shadow mode */
    size_t nshadow_denied;         /* shadow limits that would have refused, in shadow_denied */
    const char *primary_key;       /* when the entry varies: the primary key (cache_key is then */
    size_t primary_len;            /* the secondary one, in vkey) */
    size_t ninv;                   /* invalidate tags expanded into inv_tags */
    bool upgrade;                  /* a WebSocket upgrade (RFC 6455 4.1) to an upstream */
    struct gw_relay *relay;        /* its answer streamed, its body pushed (relay.c), or NULL */
    const struct gw_relay_ops *relay_ops;
    bool *freed; /* while the upstream pool runs a callback of the request: set to true when it is
                    freed (the call is then not cancelled: the callback gives it up) */

    /* Not zeroed: each is written before it is read. */
    unsigned char api_key_digest[32]; /* SHA-256 of the API key, when api_key_pending */
    char api_key_hex[65];             /* ... in hex: the lookup's $1 */
    struct tenant_decision dec;       /* read only when hooked */
    struct limiter_rule hook_rules[POLICY_MAX_LIMITS]; /* limits a hook changed */
    /* Limit i of the request (i < admit.nlimits), once the store answered: its policy name is
     * gw_limit_name(rq, i), its mode limits[i].shadow (true: it refused nothing, whatever
     * results[i] says), its decision results[i].allowed and .remaining. */
    struct store_limit limits[POLICY_MAX_LIMITS];
    struct limiter_result results[POLICY_MAX_LIMITS];
    const char *tags[GW_MAX_TAGS]; /* admit.ntags of them */
    size_t taglens[GW_MAX_TAGS];
    uint64_t tag_gens[GW_MAX_TAGS];
    const char *shadow_denied[POLICY_MAX_LIMITS]; /* their names: nshadow_denied of them */
    const char *inv_tags[GW_MAX_INVALIDATE];      /* ninv of them */
    size_t inv_lens[GW_MAX_INVALIDATE];
    struct http_query query; /* the canonical parse of the query, once query_state is 1 */
    struct httpcache_request directives; /* read when has_directives */
    struct server_request own_sr;        /* a detached request's parsed form (sr points here) */
    char own_ip[NETADDR_TEXT_MAX];
    char own_ip_key[NETADDR_KEY_MAX];
    char request_id[GW_REQUEST_ID_MAX + 1]; /* "" until gw_request_id() */
    char vary_names[256];                   /* the answer varied on these fields ("" when not) */
    char vkey[1024];                        /* the secondary key ("" when none) */
    char *hdrs; /* the response's extra header lines: hdrs_inline, or the heap when longer */
    size_t hdrs_len, hdrs_cap;
    char hdrs_inline[HDRS_BYTES];
    size_t keys_used, vals_used;
    char keys[KEYS_BYTES]; /* expanded limit keys, cache key, tags */
    char vals[VALS_BYTES]; /* decoded path/query values, rendered body fields */
};

/*
 * Whether the request writes: an endpoint declared with a writing method, or
 * through a "*" route a method that is not safe (RFC 9110 section 9.2.1:
 * all but GET, HEAD, OPTIONS and TRACE; unknown methods write).
 */
static inline bool
gw_writes(const struct gw_req *rq)
{
    if (!rq->ep->any_method)
        return rq->ep->is_write;
    const struct http_request *h = &rq->sr->http;
    return h->method != HTTP_GET && h->method != HTTP_HEAD && h->method != HTTP_OPTIONS &&
           !(h->method_str.len == 5 && memcmp(h->method_str.p, "TRACE", 5) == 0);
}

/* The value of {ip} for request sr: its client's key (borrowed), or its address as given when
 * it has none (an explained request). */
static inline const char *
gw_ip_key(const struct server_request *sr)
{
    return sr->ip_key ? sr->ip_key : sr->ip;
}

/* ---- the request object -------------------------------------------------------------------- */

/*
 * A new request of worker wk (NULL for one that only explains) for the
 * request sr (borrowed; NULL for a detached request, which sets its own) on
 * snapshot p (a reference is taken), routed to the endpoint of m. Freed with
 * gw_req_free().
 */
struct gw_req *gw_req_new(struct gw_worker *wk, struct server_request *sr, struct policy *p,
                          const struct router_match *m);

/* What X-Cache text ("HIT", "MISS", ...; NULL: none) counts as. */
enum gw_cache_kind gw_cache_kind_of(const char *xcache);

/* The route text a request no endpoint takes is counted and logged under. */
#define GW_ROUTE_UNMATCHED "(unmatched)"

/* Frees a request: answers the requests waiting on its fill and drops its references. (What it
 * was answered was counted and logged as the answer left: see the replies below.) */
void gw_req_free(struct gw_req *rq);

/*
 * The origin rq was sent to at rq->origin_us answered or failed now: notes
 * its time for the access log. Returns that time in microseconds.
 */
uint64_t gw_origin_done(struct gw_req *rq);

/* Expands t into the request's key arena. Returns the text (borrowed), or NULL when full. */
const char *gw_expand(struct gw_req *rq, const struct template *t, size_t *len);

/*
 * Expands t like gw_expand() and says in *lacks whether the request's caller
 * lacks what the key names: the user when t holds {user}, else any of its
 * {tenant} and {claim.NAME}. Such a key is never used for that caller as it
 * expands (the callers who lack the same values would share it).
 */
const char *gw_expand_caller(struct gw_req *rq, const struct template *t, size_t *len, bool *lacks);

/* The caller's tier counter key (per user, or per address), expanded like gw_expand(). */
const char *gw_caller_key(struct gw_req *rq, size_t *len);

/*
 * The value of template variable var (name: its NAME part) for the request:
 * 1 with *val (borrowed, valid for the request's life) and *len, 0 when absent.
 */
int gw_lookup(struct gw_req *rq, enum template_var var, const char *name, size_t namelen,
              const char **val, size_t *len);

/*
 * The claim `name` (namelen bytes) of the caller's credential as text: a
 * string as is, a number or a boolean as JSON writes it (in rq's value
 * arena). Returns 1 with *val (valid for the request's life) and *len, 0 when
 * the caller has no such claim (or it is null, an object or an array).
 */
int gw_claim_value(struct gw_req *rq, const char *name, size_t namelen, const char **val,
                   size_t *len);

/*
 * The request's query parsed once, canonically (http/query.h), with its text
 * in the value arena. Returns it (borrowed), or NULL with rq->refusal set
 * when it is malformed, has too many parameters or does not fit.
 */
const struct http_query *gw_query(struct gw_req *rq);

/* Copies len bytes into the request's value arena. Returns the copy, or NULL when full. */
const char *gw_vals_put(struct gw_req *rq, const char *s, size_t len);

/*
 * The request's id, for the log and the client: the client's X-Request-Id
 * when it sent exactly one that is a safe token (1 to GW_REQUEST_ID_MAX
 * letters, digits and "-_.:+/="), else a new one (16 hex digits, unique in
 * the process, not telling how many came before). Returns it (borrowed,
 * valid for the request's life); the same one on every call.
 */
const char *gw_request_id(struct gw_req *rq);

/*
 * gw_request_id()'s choice for the request h, written to out
 * (GW_REQUEST_ID_MAX + 1 bytes) with a NUL; returns out. For answers given
 * before a request object exists (no route matched).
 */
const char *gw_request_id_for(const struct http_request *h, char *out);

/*
 * Writes a line about rq to the error log at lv: "request ID: ROUTE: MSG"
 * (printf-formatted, newlines shown as \n so that it stays one line; in JSON
 * with request_id, route and, unless 0, status as fields). Marks the request
 * logged: no reply logs it again.
 */
void gw_log(struct gw_req *rq, enum log_level lv, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Counts rq, answered rq->status with body_len bytes of body, as the replies
 * below do (stats, access log), for an answer that leaves another way: a
 * streamed one (relay.c), just before the server has its end.
 */
void gw_answered(struct gw_req *rq, uint64_t body_len);

/* ---- replies: each answers the request and frees it ---------------------------------------- */

/*
 * Each reply to a client, just before the server has it, counts the answer in
 * the worker's stats and puts its line in the worker's access log (not for a
 * detached request, which has no client). Every 5xx answer leaves one line in
 * the error log with the request id, the route and its cause: from
 * gw_fail_internal() or gw_origin_failed() with what failed, else from the
 * reply itself.
 */

/*
 * Answers a request no endpoint takes (status 404 or 405, `detail` for the
 * client, extra_headers such as Allow: borrowed, NULL: none) as problem+json
 * with its request id, counted in wk's stats under GW_ROUTE_UNMATCHED and
 * put in wk's access log; start_us is when it arrived (util_mono_us()).
 */
void gw_reply_unrouted(struct gw_worker *wk, struct server_request *sr, int status,
                       const char *detail, const char *extra_headers, uint64_t start_us);

/*
 * Answers a CORS preflight (an OPTIONS with Origin and Access-Control-Request-Method; Fetch
 * standard, CORS protocol, "CORS-preflight request") for endpoint ep, whose cors is set and
 * which takes the requested method: 204 with the Access-Control-Allow-* fields when ep's cors
 * allows the origin and the method, else 403 problem+json without them; both with Vary on the
 * three request fields. Counted under ep's name and put in wk's access log, never against a
 * limit; nothing is forwarded. start_us is when the request arrived.
 */
void gw_reply_preflight(struct gw_worker *wk, struct server_request *sr,
                        const struct policy_endpoint *ep, uint64_t start_us);

/*
 * Answers a problem+json error with `detail`, the request id as its
 * extension member request_id and as X-Request-Id (a detached request logs
 * it). detail is for the client: it says what was wrong with the request,
 * never how the gateway or an origin failed inside (gw_fail_internal).
 */
void gw_fail(struct gw_req *rq, int status, const char *detail);
/* As gw_fail(), the answer saying WWW-Authenticate: challenge (RFC 9110 section 11.6.1). */
void gw_fail_auth(struct gw_req *rq, int status, const char *challenge, const char *detail);
/* As gw_fail(), the answer saying Retry-After: retry_s. */
void gw_fail_retry(struct gw_req *rq, int status, uint64_t retry_s, const char *detail);

/*
 * Answers as gw_fail with the generic `detail`, after logging `internal`
 * (what failed: a database's error text, an upstream's address) with the
 * request id, which the client gets to quote.
 */
void gw_fail_internal(struct gw_req *rq, int status, const char *detail, const char *internal);

/*
 * Answers with entry e (the reply takes its own reference): X-Cache (unless
 * NULL) with Age, the ETag, the stored fields; 304 when If-None-Match matches.
 */
void gw_reply_entry(struct gw_req *rq, struct store_entry *e, const char *xcache, uint64_t now_ms);

/* Answers status with body (borrowed) in the endpoint's content type. */
void gw_reply_body(struct gw_req *rq, int status, const char *body, size_t len);

/* Answers 429 with Retry-After and the quota-exceeded problem naming the refusing limits. */
void gw_reply_denied(struct gw_req *rq);

/*
 * Adds the rate-limit fields of the limits the store counted to the reply's
 * headers, and notes for the access log the deciding limit (the enforced one
 * the fields describe; with only shadow limits, the one with least left) and
 * the shadow limits that would have refused. Called once, when the store has
 * counted the request.
 */
void gw_add_limit_headers(struct gw_req *rq);

/* The name limit i of the request goes by in RateLimit fields: its own, or the tier's. */
const char *gw_limit_name(const struct gw_req *rq, size_t i);

/* What limit i of an answered request decided, for the stats: GW_SHADOW_DENIED for a shadow
 * limit that would have refused (it refused nothing). */
enum gw_decision gw_limit_decision(const struct gw_req *rq, size_t i);

/* Applies the tenant hooks' cost and limit changes (rq->dec) to the request's nl limits. */
void gw_apply_decision(struct gw_req *rq, size_t nl);

/* Whether the request holds a stale entry its endpoint's stale_if_error still covers. */
bool gw_stale_serves(const struct gw_req *rq);

/*
 * The origin failed: answers the stale entry within stale_if_error, else the
 * error as gw_fail_internal (detail for the client, internal to the log).
 */
void gw_origin_failed(struct gw_req *rq, int status, const char *detail, const char *internal);

/*
 * The upstream failed (error, detail: what failed, for the log): counted,
 * then answered as gw_origin_failed() with the status the error calls for
 * (504 a deadline, 503 shutting down, else 502) and a generic detail.
 */
void gw_upstream_failed(struct gw_req *rq, enum upstream_error error, const char *detail);

/* ---- fills in progress: one per key per worker ---------------------------------------------- */

/* Makes rq the leader of its cache key's fill in its worker, unless another request is. */
void gw_inflight_lead(struct gw_req *rq);

/* Whether a fill of rq's key is in progress in its worker. */
bool gw_inflight_busy(struct gw_req *rq);

/* Puts rq on the waiters of its key's fill in its worker. Returns false when there is none. */
bool gw_inflight_wait(struct gw_req *rq);

/*
 * The leader rq is done (called by gw_req_free): its waiters get its stored
 * answer (only those sending the same fields when it varies), go on to the
 * origin (an answer that may not be stored), or, when the leader failed,
 * the first takes the fill over through wk->to_origin and the others wait
 * on it while their wait lasts.
 */
void gw_inflight_finish(struct gw_req *rq);

/* The secondary key of rq for an answer varying on `names`, into rq->vkey; -1 if too long. */
long gw_vary_key(struct gw_req *rq, const char *names);

#endif
