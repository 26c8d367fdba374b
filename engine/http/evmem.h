/* evmem.h - libevent's allocations: its buffer blocks recycled per thread. */
#ifndef SLUICE_EVMEM_H
#define SLUICE_EVMEM_H

#include <stddef.h>

/*
 * libevent allocates a buffer chain of 1 KiB or more (a power of two) for
 * almost every answer and frees it once the answer is written. Bursts of
 * them (pipelined answers, many connections at once) overflow the
 * allocator's per-thread cache, and glibc then carves the cache's
 * long-lived entries out of the freed chains, leaving holes no later
 * allocation fits (with 200-byte answers, RSS stood 1.2 x the cache
 * budget). evmem_install() routes libevent's allocations through
 * evmem_malloc() and evmem_free(): a freed block of a power-of-two size from
 * 1 to 64 KiB is kept for its thread's next request of that size, up to
 * EVMEM_CLASS_BLOCKS blocks of a size and EVMEM_THREAD_BYTES in all per
 * thread; anything else goes to the allocator. A thread's blocks are freed
 * when it exits.
 */
#define EVMEM_CLASS_BLOCKS 64
#define EVMEM_THREAD_BYTES ((size_t)1 << 20)

/* Makes libevent allocate through evmem_malloc/realloc/free; call once, before threads start. */
void evmem_install(void);

/* Returns a block of n bytes (a kept one of n's size when n is a power of two from 1 to
 * 64 KiB); owned by the caller, given back with evmem_free(). Aborts when out of memory. */
void *evmem_malloc(size_t n);

/* realloc(3) for libevent (a block from evmem_malloc() is the allocator's). */
void *evmem_realloc(void *p, size_t n);

/* Gives a block back: kept for this thread while it has room for it, else freed. NULL is
 * allowed. */
void evmem_free(void *p);

/* Blocks this thread keeps now, and their bytes (for tests). */
size_t evmem_kept(size_t *bytes);

#endif
