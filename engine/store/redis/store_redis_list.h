/* store_redis_list.h - the Redis store's listing of cache entries; for store/redis/ only. */
#ifndef SLUICE_STORE_REDIS_LIST_H
#define SLUICE_STORE_REDIS_LIST_H

#include <stddef.h>
#include <stdint.h>

#include "redis_conn.h"
#include "store.h"

#define REDIS_LIST_ROUNDS 1000 /* SCAN rounds of one listing, by default */

/*
 * store_list() on the connection c (the handle's own, borrowed: it must
 * outlive the listing, as its closing completes it): SCAN MATCH over the
 * entries' keys, at most `rounds` rounds (0: REDIS_LIST_ROUNDS), and for
 * each primary that matched, list.lua reads its entry, the trailer of its
 * response and its variants (never a body). *failed (borrowed likewise) is
 * counted up when the listing fails.
 */
void redis_list(struct redis_conn *c, unsigned rounds, uint64_t *failed, const char *glob,
                size_t globlen, size_t limit, store_list_fn *done, void *arg);

#endif
