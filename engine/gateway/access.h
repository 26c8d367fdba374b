/* access.h - the access log: one JSON line per answered client request, formatted by the worker
 * that answered it into its own ring of the log writer (common/logwriter.h). */
#ifndef SLUICE_ACCESS_H
#define SLUICE_ACCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http_parse.h"
#include "stats.h"
#include "util.h"

struct logwriter;

/* The JSON of a line's policy names, from `,"route":` to its deciding limit's `"remaining":`
 * (or its `"limit":null`), remembered by the names' addresses while policy_frees() says what
 * it said when it was written (policy/policy.h). */
#define GW_ACCESS_NAMES 64
#define GW_ACCESS_NAMES_JSON 230
struct gw_access_names {
    const char *route, *tier, *limit;
    uint64_t frees;
    uint16_t len; /* 0: an empty slot */
    char json[GW_ACCESS_NAMES_JSON];
};

/* One worker's access log: its ring, the sampling, its line buffer, its remembered names. */
struct gw_access {
    struct logwriter *lw; /* borrowed; NULL: the access log is off */
    unsigned ring;        /* this worker's ring (its index) */
    uint64_t keep_below;  /* 2xx/3xx lines kept: the sample rate as a bound of the id hash */
    bool keep_all;        /* rate 1: no hash */
    uint64_t sampled_out; /* 2xx/3xx lines not kept (relaxed atomic: status output reads it) */
    struct sbuf line;     /* reused for every line */
    struct gw_access_names names[GW_ACCESS_NAMES]; /* the names of its last lines */
};

/* What one line says of an answered request; strings borrowed, NULL written as null. */
struct gw_access_record {
    uint64_t now_us;      /* util_mono_us() as it was answered */
    uint64_t duration_us; /* time in the gateway: ts is the time now less this */
    const char *request_id;
    const struct http_request *http; /* method, path and query */
    const char *route;               /* the endpoint's route text, or GW_ROUTE_UNMATCHED */
    int status;
    enum gw_cache_kind cache;
    const char *user, *tenant; /* user_len and tenant_len bytes */
    size_t user_len, tenant_len;
    const char *tier;
    const char *identity; /* what identified the caller: "anonymous", "header", "jwt", "api_key"
                             (static; NULL: not known, e.g. an unmatched path) */
    const char *identity_refused; /* why its credential was refused (static), or NULL */
    const char *limit;            /* the deciding limit's policy name, NULL when none */
    uint64_t limit_remaining;
    bool limit_shadow;                /* that limit is in shadow mode */
    const char *const *shadow_denied; /* the shadow limits that would have refused */
    size_t nshadow_denied;
    bool origin;        /* an origin was called and answered or failed: origin_us is its time */
    uint64_t origin_us; /* from sending to its answer (or failure) */
    const char *client; /* the peer's address */
    uint64_t bytes;     /* body bytes sent */
};

/*
 * Sets a up for worker `ring` of lw (borrowed; NULL: off) with `sample`, the
 * fraction (0 < sample <= 1) of 2xx and 3xx lines kept.
 */
void gw_access_init(struct gw_access *a, struct logwriter *lw, unsigned ring, double sample);

/* Frees what a holds (not the writer). */
void gw_access_free(struct gw_access *a);

/* Whether the access log is on. */
static inline bool
gw_access_on(const struct gw_access *a)
{
    return a->lw != NULL;
}

/*
 * Whether a 2xx or 3xx line of request id[0..len) is kept at the sample rate
 * `sample`: the same answer for the same id, every time and in every process
 * (a 64-bit hash of the id below sample x 2^64), so a sample is reproducible.
 */
bool gw_access_sampled(const char *id, size_t len, double sample);

/*
 * Puts r's line in the worker's ring when it is kept: a line of any status
 * but 2xx and 3xx always, a 2xx or 3xx line as the sample says (one not kept
 * is counted in sampled_out). Called on the worker's thread before the answer
 * goes to the server, which may free what r points into. Never blocks: a line
 * that finds its ring full is dropped and counted by the writer. The time of
 * day comes from r->now_us and the thread's offset to the wall clock, read
 * again once a second.
 */
void gw_access_log(struct gw_access *a, const struct gw_access_record *r);

/*
 * Appends r's JSON object and a newline to b: ts (RFC 3339, UTC, milliseconds,
 * when the request arrived: now_ms less its duration), request_id, method,
 * path (the raw target's path), query (raw, without "?"; left out when the
 * target has none), route, tier, limit ({policy, remaining, mode} or null),
 * status, cache, user, tenant, shadow_denied (left out when empty), identity,
 * identity_refused (left out when none), duration_ms, origin_ms (or null),
 * bytes, client. Every string of the request's bytes goes through jsonstr.
 */
void gw_access_format(struct sbuf *b, const struct gw_access_record *r, uint64_t now_ms);

#endif
