/* store_redis_list.h - the Redis store's listing of cache entries; for store/redis/ only. */
#ifndef SLUICE_STORE_REDIS_LIST_H
#define SLUICE_STORE_REDIS_LIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redis_conn.h"
#include "store.h"

#define REDIS_LIST_ROUNDS 1000 /* SCAN rounds of one listing, by default */

/*
 * store_list() on the connections conns[0..nconns) (the handle's own,
 * borrowed: they must outlive the listing, as their closing completes it;
 * the array is copied): SCAN MATCH over the entries' keys on each in turn,
 * at most `rounds` rounds in all (0: REDIS_LIST_ROUNDS), and for each
 * primary that matched, list.lua on the connection that found it reads its
 * entry, the trailer of its response and its variants (never a body): one
 * primary per call when `cluster` (a cluster's masters), else a few. A glob
 * without wildcards is read on conns[0] alone. *failed (borrowed likewise) is
 * counted up when the listing fails.
 */
void redis_list(struct redis_conn *const *conns, size_t nconns, bool cluster, unsigned rounds,
                uint64_t *failed, const char *glob, size_t globlen, size_t limit,
                store_list_fn *done, void *arg);

#endif
