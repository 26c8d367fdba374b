/* fill.h - what an origin's answer does to the cache: fills (Vary markers), hit-for-miss markers,
 * and the invalidations of a write. */
#ifndef SLUICE_FILL_H
#define SLUICE_FILL_H

#include <stdint.h>

#include "req.h"

/*
 * Sets an entry's stale windows before its fill: served stale for swr_ms past
 * its freshness while one refresh runs, for sie_ms when the origin fails, and
 * kept at least keep_ms past it (to be revalidated).
 */
void gw_entry_windows(struct store_entry *e, uint64_t swr_ms, uint64_t sie_ms, uint64_t keep_ms);

/*
 * Stores an origin's answer e (a reference is taken; its windows and age set)
 * under the request's key, fresh for ttl_ms more (0: stored already stale, to
 * be revalidated), under a secondary key and a marker naming the fields under
 * the primary one when `vary` (or NULL) names request fields, and answers
 * with it (X-Cache: xcache, a static string) once the store has acknowledged
 * the fill.
 */
void gw_store_and_reply(struct gw_req *rq, struct store_entry *e, uint64_t ttl_ms, const char *vary,
                        const char *xcache);

/*
 * Remembers briefly that the request's key is not cacheable (hit-for-miss),
 * then answers with e (a reference is taken; X-Cache: xcache) once the store
 * has the marker: the caller's next request, on any instance, then finds it,
 * and the marker can never land after a good answer that request fills.
 */
void gw_remember_uncacheable(struct gw_req *rq, struct store_entry *e, const char *xcache);

/*
 * After a successful write: bumps the tags gw_plan_invalidations() names for
 * it (an upstream's answer has fields f[0..n)), and answers with e (a reference is taken)
 * only once the store has acknowledged, so that the caller's next read, on
 * any instance, sees the write.
 */
void gw_invalidate_then_reply(struct gw_req *rq, struct store_entry *e, const struct http_header *f,
                              size_t n);

#endif
