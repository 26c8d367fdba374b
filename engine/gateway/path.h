/* path.h - the steps of the request path: identity and tier, tenant hooks, limits and lookup,
 * waiting for another's fill, serving stale entries and refreshing them, detached requests. */
#ifndef SLUICE_PATH_H
#define SLUICE_PATH_H

#include "req.h"

struct sbuf;

/*
 * Runs a routed request (taken) through the path: identity and body, tier,
 * tenant hooks, limits and lookup, then the cache or the origin. Every
 * branch ends in one reply and frees the request.
 */
void gw_req_begin(struct gw_req *rq);

/*
 * A request without a client (a refresh, a warming request) from raw
 * HTTP/1.1 bytes in raw (taken: head_len bytes of head, then the body), on
 * snapshot p (a reference is taken), from client address ip with its key ip_key (both
 * copied; the request has no peer but its client). Returns it routed and listed in
 * wk->background, or NULL when it does not parse or route.
 */
struct gw_req *gw_detached_new(struct gw_worker *wk, struct policy *p, struct sbuf *raw,
                               size_t head_len, const char *ip, const char *ip_key);

#endif
