/* topk.c - the heaviest keys of a stream in fixed memory (space-saving), mergeable. */
#include "topk.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void
topk_init(struct topk *t, size_t cap)
{
    memset(t, 0, sizeof(*t));
    t->cap = cap ? cap : 1;
}

/* Room for one more item (t->n < t->cap): the arrays double, and the index and the heap,
 * which point into items, are pointed at its new place. */
static void
grow(struct topk *t)
{
    if (t->n < t->allocated)
        return;
    size_t want = t->allocated ? 2 * t->allocated : 4;
    if (want > t->cap)
        want = t->cap;
    t->items = xrealloc(t->items, want * sizeof(*t->items));
    t->heap = xrealloc(t->heap, want * sizeof(*t->heap));
    t->allocated = want;
    hmap_clear(&t->index);
    for (size_t i = 0; i < t->n; i++) { /* each item knows its place in the heap */
        t->heap[t->items[i].heap] = &t->items[i];
        hmap_insert(&t->index, &t->items[i].node, t->items[i].key, t->items[i].keylen);
    }
}

void
topk_free(struct topk *t)
{
    hmap_free(&t->index);
    free(t->items);
    free(t->heap);
    memset(t, 0, sizeof(*t));
}

void
topk_clear(struct topk *t)
{
    hmap_clear(&t->index);
    t->n = 0;
    t->total = 0;
}

static void
heap_set(struct topk *t, size_t i, struct topk_item *it)
{
    t->heap[i] = it;
    it->heap = i;
}

static void
sift_down(struct topk *t, size_t i)
{
    struct topk_item *it = t->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t mc = it->count;
        if (l < t->n && t->heap[l]->count < mc) {
            m = l;
            mc = t->heap[l]->count;
        }
        if (r < t->n && t->heap[r]->count < mc)
            m = r;
        if (m == i)
            break;
        heap_set(t, i, t->heap[m]);
        i = m;
    }
    heap_set(t, i, it);
}

static void
sift_up(struct topk *t, size_t i)
{
    struct topk_item *it = t->heap[i];
    while (i > 0 && t->heap[(i - 1) / 2]->count > it->count) {
        heap_set(t, i, t->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(t, i, it);
}

/* Makes note (NULL: none) item's note, cut to fit; writes only when it differs. */
static void
set_note(struct topk_item *it, const char *note)
{
    size_t n = note ? strnlen(note, sizeof(it->note) - 1) : 0;
    if (strncmp(it->note, note ? note : "", sizeof(it->note)) == 0)
        return;
    if (n)
        memcpy(it->note, note, n);
    it->note[n] = '\0';
}

/* Counts weight (and extra) for key, which may already have an over-estimate `error`. */
static void
add(struct topk *t, const char *key, size_t len, uint64_t weight, uint64_t extra, uint64_t error,
    uint64_t last, const char *note, bool merging)
{
    if (len > TOPK_KEY_MAX)
        len = TOPK_KEY_MAX;
    t->total += weight;
    struct topk_item *it = HMAP_ENTRY(hmap_find(&t->index, key, len), struct topk_item, node);
    if (it) {
        it->count += weight;
        it->extra += extra;
        it->error += error;
        it->last = merging && it->last < last ? it->last : last;
        if (note && note[0])
            set_note(it, note);
        sift_down(t, it->heap); /* counts only grow: it can only move away from the root */
        return;
    }
    if (t->n < t->cap) {
        grow(t);
        it = &t->items[t->n];
        heap_set(t, t->n, it);
        t->n++;
        it->count = it->error = it->extra = 0;
    } else {
        /* Full: the lightest key makes room, and its count becomes the newcomer's error. */
        it = t->heap[0];
        hmap_remove(&t->index, &it->node);
        it->error = it->count;
        it->extra = 0;
    }
    memcpy(it->key, key, len);
    it->keylen = len;
    hmap_insert(&t->index, &it->node, it->key, len);
    it->count += weight;
    it->error += error;
    it->extra += extra;
    it->last = last;
    set_note(it, note);
    if (it->heap == 0 && t->n == t->cap)
        sift_down(t, 0);
    else
        sift_up(t, it->heap);
}

void
topk_add(struct topk *t, const char *key, size_t len, uint64_t weight, uint64_t extra,
         uint64_t last, const char *note)
{
    add(t, key, len, weight, extra, 0, last, note, false);
}

void
topk_merge(struct topk *dst, const struct topk *src)
{
    uint64_t other_total = src->total;
    for (size_t i = 0; i < src->n; i++) {
        const struct topk_item *it = &src->items[i];
        add(dst, it->key, it->keylen, it->count, it->extra, it->error, it->last, it->note, true);
        other_total -= it->count < other_total ? it->count : other_total;
    }
    dst->total += other_total; /* what src counted but no longer names */
}

static int
by_count_desc(const void *a, const void *b)
{
    const struct topk_item *x = *(const struct topk_item *const *)a;
    const struct topk_item *y = *(const struct topk_item *const *)b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    if (x->keylen != y->keylen)
        return x->keylen < y->keylen ? -1 : 1;
    return memcmp(x->key, y->key, x->keylen);
}

size_t
topk_top(const struct topk *t, const struct topk_item **out, size_t n)
{
    const struct topk_item **all = xcalloc(t->n ? t->n : 1, sizeof(*all));
    for (size_t i = 0; i < t->n; i++)
        all[i] = &t->items[i];
    qsort(all, t->n, sizeof(*all), by_count_desc);
    if (n > t->n)
        n = t->n;
    memcpy(out, all, n * sizeof(*out));
    free(all);
    return n;
}
