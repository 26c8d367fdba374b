/* store_memory_list.h - the memory store's listing of cache entries; for store/ only. */
#ifndef SLUICE_STORE_MEMORY_LIST_H
#define SLUICE_STORE_MEMORY_LIST_H

#include <stddef.h>

#include "store.h"
#include "store_memory_table.h"

#define MT_LIST_BUDGET 200000 /* records one listing walks, by default (store_memory_table.h) */

/*
 * Lists into l (empty; its `store` is set by the caller) the cache entries
 * of m whose keys match glob[0..globlen), as store_list() says: at most
 * `limit` primaries. Walks the shards one at a time, each under its lock
 * for the whole of its walk, and stops after the shard where the limit was
 * reached, or before a shard once m->list_budget records (0:
 * MT_LIST_BUDGET) were walked: so at most the budget and one shard. A glob
 * without wildcards walks the one shard its key lives in. Returns 0, or -1
 * for a glob holding a NUL (l untouched).
 */
int mt_list(struct store_memory *m, const char *glob, size_t globlen, size_t limit,
            struct store_listing *l);

#endif
