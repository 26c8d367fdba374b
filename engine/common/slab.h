/* slab.h - fixed-size cells in mappings of their own, unmapped once empty. */
#ifndef SLUICE_SLAB_H
#define SLUICE_SLAB_H

#include <stddef.h>
#include <sys/queue.h>

/*
 * For many objects of one size that come and go in bursts (connections):
 * cells are carved from anonymous mappings of `per_slab` cells, not from the
 * malloc heap, so the memory of a burst goes back to the system when its
 * objects are freed, whatever long-lived allocations the heap holds between
 * them. A slab whose cells are all free is unmapped, but for one kept for
 * reuse. One thread at a time.
 */
struct slab;

struct slab_pool {
    size_t cell_bytes;      /* a cell with its header */
    size_t slab_bytes;      /* a mapping */
    unsigned per_slab;      /* cells in a slab */
    LIST_HEAD(, slab) open; /* slabs with a free cell */
    unsigned nempty;        /* slabs with no cell in use (0 or 1) */
    size_t nslabs;          /* slabs mapped */
};

/* Sets p up for cells of `bytes` bytes, `per_slab` (>= 1) to a mapping; maps nothing yet. */
void slab_pool_init(struct slab_pool *p, size_t bytes, unsigned per_slab);

/* Returns a new zeroed cell of p's size, aligned to 16 bytes, owned by the caller until
 * slab_free(); aborts when out of memory. */
void *slab_alloc(struct slab_pool *p);

/* Gives back a cell from slab_alloc(p); an empty slab is unmapped unless it is the only one
 * kept. NULL is allowed. */
void slab_free(struct slab_pool *p, void *cell);

/* Unmaps every slab of p. Every cell must have been given back before. */
void slab_pool_destroy(struct slab_pool *p);

#endif
