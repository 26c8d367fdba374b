/* slab.c - fixed-size cells in mappings of their own, unmapped once empty. */
#include "slab.h"

#include "log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Free cells are poisoned under AddressSanitizer, which does not see inside our mappings: a
 * use of a freed connection is still reported. */
#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ASAN 1
#endif
#endif
#ifdef SLAB_ASAN
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#endif

#define CELL_HEAD 16 /* before each cell: its slab (keeps the cell 16-byte aligned) */

struct slab {
    LIST_ENTRY(slab) link; /* in the pool's open slabs while it has a free cell */
    unsigned nfree;
    void *free; /* the first free cell's head; each holds the next one's address */
};

static size_t
round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

static size_t
slab_head(void)
{
    return round_up(sizeof(struct slab), 64);
}

void
slab_pool_init(struct slab_pool *p, size_t bytes, unsigned per_slab)
{
    memset(p, 0, sizeof(*p));
    p->cell_bytes = round_up(CELL_HEAD + bytes, 16);
    p->per_slab = per_slab ? per_slab : 1;
    p->slab_bytes =
        round_up(slab_head() + p->per_slab * p->cell_bytes, (size_t)sysconf(_SC_PAGESIZE));
    LIST_INIT(&p->open);
}

static struct slab *
slab_map(struct slab_pool *p)
{
    char *m = mmap(NULL, p->slab_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        log_abort("out of memory (slab of %zu bytes)", p->slab_bytes);
    }
    struct slab *sl = (struct slab *)m;
    sl->nfree = p->per_slab;
    sl->free = NULL;
    for (unsigned i = p->per_slab; i-- > 0;) {
        char *head = m + slab_head() + i * p->cell_bytes;
        *(void **)head = sl->free;
        sl->free = head;
        ASAN_POISON_MEMORY_REGION(head + CELL_HEAD, p->cell_bytes - CELL_HEAD);
    }
    LIST_INSERT_HEAD(&p->open, sl, link);
    p->nslabs++;
    p->nempty++;
    return sl;
}

void *
slab_alloc(struct slab_pool *p)
{
    struct slab *sl = LIST_FIRST(&p->open);
    if (!sl)
        sl = slab_map(p);
    if (sl->nfree == p->per_slab)
        p->nempty--;
    char *head = sl->free;
    sl->free = *(void **)head;
    if (--sl->nfree == 0)
        LIST_REMOVE(sl, link);
    ASAN_UNPOISON_MEMORY_REGION(head + CELL_HEAD, p->cell_bytes - CELL_HEAD);
    memset(head, 0, p->cell_bytes);
    *(struct slab **)head = sl;
    return head + CELL_HEAD;
}

void
slab_free(struct slab_pool *p, void *cell)
{
    if (!cell)
        return;
    char *head = (char *)cell - CELL_HEAD;
    struct slab *sl = *(struct slab **)head;
    ASAN_POISON_MEMORY_REGION(cell, p->cell_bytes - CELL_HEAD);
    if (sl->nfree == 0)
        LIST_INSERT_HEAD(&p->open, sl, link);
    *(void **)head = sl->free;
    sl->free = head;
    if (++sl->nfree < p->per_slab)
        return;
    if (p->nempty == 0) {
        p->nempty++; /* kept: the next burst starts without a system call */
        return;
    }
    LIST_REMOVE(sl, link);
    p->nslabs--;
    ASAN_UNPOISON_MEMORY_REGION(sl, p->slab_bytes); /* the range may be mapped again */
    munmap(sl, p->slab_bytes);
}

void
slab_pool_destroy(struct slab_pool *p)
{
    /* With every cell freed, every slab is open (a full one would be on no list). */
    while (!LIST_EMPTY(&p->open)) {
        struct slab *sl = LIST_FIRST(&p->open);
        LIST_REMOVE(sl, link);
        p->nslabs--;
        ASAN_UNPOISON_MEMORY_REGION(sl, p->slab_bytes);
        munmap(sl, p->slab_bytes);
    }
    p->nempty = 0;
}
