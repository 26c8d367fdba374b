/* fill.h - what an origin's answer does to the cache: fills (Vary markers), hit-for-miss markers,
 * and the invalidations of a write. */
#ifndef SLUICE_FILL_H
#define SLUICE_FILL_H

#include <stdint.h>

#include "req.h"

/*
 * Stores an origin's answer e (a reference is taken) under the request's key
 * for ttl_ms (with the endpoint's stale window), under a secondary key and a
 * marker naming the fields under the primary one when `vary` (or NULL) names
 * request fields, and answers with it once the store has acknowledged the fill.
 */
void gw_store_and_reply(struct gw_req *rq, struct store_entry *e, uint64_t ttl_ms,
                        const char *vary);

/*
 * Remembers briefly that the request's key is not cacheable (hit-for-miss),
 * then answers with e (a reference is taken; X-Cache: MISS) once the store
 * has the marker: the caller's next request, on any instance, then finds it,
 * and the marker can never land after a good answer that request fills.
 */
void gw_remember_uncacheable(struct gw_req *rq, struct store_entry *e);

/*
 * After a successful write: bumps the tags gw_plan_invalidations() names for
 * it (an upstream's answer has fields f[0..n)), and answers with e (a reference is taken)
 * only once the store has acknowledged, so that the caller's next read, on
 * any instance, sees the write.
 */
void gw_invalidate_then_reply(struct gw_req *rq, struct store_entry *e, const struct http_header *f,
                              size_t n);

#endif
