/* store_memory.h - the embedded store: one sharded in-process table of limits, entries and tags. */
#ifndef SLUICE_STORE_MEMORY_H
#define SLUICE_STORE_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/*
 * The embedded store: one shared table for the whole process, safe across
 * threads. `max_bytes` bounds body_len + headers_len + key length summed over the cached
 * entries (least recently used go first; 0 caches nothing). Expired limits,
 * entries and tags are dropped as the table is used. store_memory_new()
 * creates the shared table; each worker gets a handle from
 * store_memory_handle(), used by one thread at a time. Handles are freed
 * with ops->destroy, the table with store_memory_free() after every handle.
 */
struct store_memory;
struct store_memory *store_memory_new(size_t max_bytes);
void store_memory_free(struct store_memory *m);
struct store *store_memory_handle(struct store_memory *m);

/*
 * For tests: the table's clock becomes now(ctx), in ms, instead of
 * store_now_ms(). Set it before any handle is used; it is called with
 * shard locks held, from any thread.
 */
void store_memory_set_clock(struct store_memory *m, uint64_t (*now)(void *ctx), void *ctx);

/* For tests and metrics: counts of live cache entries, limit states, tags, and cached bytes. */
void store_memory_stats(struct store_memory *m, size_t *entries, size_t *limits, size_t *tags,
                        size_t *bytes);

#endif
