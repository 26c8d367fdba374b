/* fill.h - what an origin's answer does to the cache: fills (Vary markers), hit-for-miss markers,
 * and the invalidations of a write. */
#ifndef SLUICE_FILL_H
#define SLUICE_FILL_H

#include <stdint.h>

#include "req.h"

/*
 * Returns a new entry (refs 1) of an answer the request may fill: copies of
 * the content type, header lines, ETag and body (each may be NULL; nothing
 * taken) in one allocation with room for the store's record of it under the
 * request's cache key (store_entry_make(), store_record_room()), so that
 * what the cache keeps of it is one block.
 */
struct store_entry *gw_entry_new(const struct gw_req *rq, uint16_t status, const char *content_type,
                                 const char *headers, size_t headers_len, const char *etag,
                                 const void *body, size_t body_len);

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
