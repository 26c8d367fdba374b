/* store_memory.h - the embedded store: one sharded in-process table of limits, entries and tags. */
#ifndef SLUICE_STORE_MEMORY_H
#define SLUICE_STORE_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/*
 * The embedded store: one shared table for the process, safe across
 * threads. Everything it keeps is charged, as the allocator holds it, to one
 * of two byte budgets that the totals never pass:
 *
 *   cache_bytes  cache entries (the record, key, store_entry, body, content
 *                type, header lines, ETag: one block for an entry made with
 *                room for its record, store_record_room()), Vary and
 *                hit-for-miss markers, tag records, and the cache's hash
 *                buckets. When full, tag records
 *                no entry holds are dropped, then the least recently used
 *                entries; an entry that still does not fit is not stored
 *                (0 caches nothing).
 *   limit_bytes  limit states (sliding logs included), fill leases, and their
 *                hash buckets. When full, expired (empty) states and leases
 *                are dropped; a live state is never dropped, so a request
 *                needing a new state, or a larger sliding log, that still
 *                does not fit is refused (store_admit.refused_full), and a
 *                lease that does not fit is handed out unrecorded (the caller
 *                fills; nobody waits for it).
 *
 * Expired limits, entries and tags are dropped as the table is used.
 * store_memory_new() creates the shared table; each worker gets a handle
 * from store_memory_handle(), used by one thread at a time. Handles are
 * freed with ops->destroy, the table with store_memory_free() after every
 * handle.
 */
struct store_memory;
/* Returns a new, empty table with these budgets (bytes). */
struct store_memory *store_memory_new(size_t cache_bytes, size_t limit_bytes);
/* Frees the table and everything in it (NULL: nothing). */
void store_memory_free(struct store_memory *m);
/* Returns a new handle on the table (freed with ops->destroy). */
struct store *store_memory_handle(struct store_memory *m);

/*
 * For tests: the table's clock becomes now(ctx), in ms, instead of
 * store_now_ms(). Set it before any handle is used; it is called with
 * shard locks held, from any thread.
 */
void store_memory_set_clock(struct store_memory *m, uint64_t (*now)(void *ctx), void *ctx);

/*
 * For tests: a store_list() call walks at most `records` records of the
 * table (and the rest of the shard it is in) instead of 200,000 (0: that
 * default). Set it before any handle is used.
 */
void store_memory_set_list_budget(struct store_memory *m, size_t records);

/* What the table holds, and what its budgets did since it was made. */
struct store_memory_stats {
    size_t entries;                /* live cache entries, markers included */
    size_t tags;                   /* tag records */
    size_t limits;                 /* limit states */
    size_t leases;                 /* fill leases */
    size_t cache_bytes, cache_max; /* charged to the cache budget, and its size */
    size_t limit_bytes, limit_max; /* charged to the limit budget, and its size */
    uint64_t evicted_entries;      /* entries evicted to make room */
    uint64_t evicted_tags;         /* tag records no entry held, dropped to make room */
    uint64_t not_stored;           /* fills not stored for want of room */
    uint64_t limit_reclaimed;      /* expired limit states and leases dropped to make room */
    uint64_t limit_refused;        /* requests refused: their limit states had no room */
    uint64_t leases_unrecorded;    /* fill leases handed out without a record for want of room */
};

/* Fills *out (for tests, metrics and status output). */
void store_memory_stats(struct store_memory *m, struct store_memory_stats *out);

#endif
