/* plan.h - what a request touches: its caller, body, limit keys, cache key, tags and
 * invalidations, computed by one set of functions for the request path and for explain. */
#ifndef SLUICE_PLAN_H
#define SLUICE_PLAN_H

#include <stddef.h>

#include "req.h"

/*
 * Reads the caller's credential (a bearer token, verified: credential.h) and
 * identity into rq->user and rq->tenant (from its claims, or from identity
 * headers: borrowed from the request, or the canonical form of a typed value
 * in its value arena) and, when the endpoint's templates use it, the JSON
 * body (an object, no duplicate keys). An identity header (user, tenant,
 * tier) given twice or holding a comma, and a value not of its declared
 * type, are refused. Returns 0, or the HTTP status the request is refused
 * with and a message in detail (a refused credential: 401 with
 * rq->challenge set).
 */
int gw_read_request(struct gw_req *rq, char *detail, size_t detail_len);

/* Whether the endpoint's templates read the request's JSON body ({body.NAME}). */
bool gw_reads_body(const struct policy_endpoint *ep);

/* Where the caller's tier came from. */
enum gw_tier_from {
    GW_TIER_ANONYMOUS, /* no user: the default tier, limited by address */
    GW_TIER_UNUSED,    /* no limit of the endpoint names the tier: the default */
    GW_TIER_HEADER,    /* the identity's tier header */
    GW_TIER_CLAIM,     /* a claim of the caller's verified credential */
    GW_TIER_NO_LOOKUP, /* the identity has no tier lookup: the default */
    GW_TIER_SQL,       /* a lookup by SQL is needed: the tier is not set yet */
};

/*
 * Applies the caller's tenant file (its view of the endpoint) and sets the
 * tier where no lookup is needed. Returns where the tier comes from; with
 * GW_TIER_SQL the caller looks it up and calls gw_set_tier().
 */
enum gw_tier_from gw_identify(struct gw_req *rq);

/* Sets the request's tier from a name (the default tier when unknown), with tenant overrides. */
void gw_set_tier(struct gw_req *rq, const char *name, size_t len);

/*
 * With the caller known (and the tenant hooks' decision in rq->dec when
 * rq->hooked): the limits to count with their keys, whether the cache is
 * bypassed because credentials would reach a key that does not hold the
 * caller, and the cache key and tags, all into rq->admit. Returns 0, or the
 * HTTP status the request is refused with and a message in detail.
 */
int gw_plan(struct gw_req *rq, char *detail, size_t detail_len);

/*
 * What a successful write makes stale, into rq->inv_tags and rq->ninv: the
 * endpoint's invalidate list when it declares one (the policy says exactly
 * what a write changes); else, for a write to an upstream whose non-error
 * answer has fields f[0..n) (NULL, 0: none yet), the tags of the stored
 * answers of its target URL and of the URLs its Location and Content-Location
 * name on this origin (a path, or an absolute URL with the request's Host),
 * as RFC 9111 section 4.4 asks. Returns 0, or -1 when a tag does not fit the
 * key arena (rq->refusal set when a query is malformed).
 */
int gw_plan_invalidations(struct gw_req *rq, const struct http_header *f, size_t n);

#endif
