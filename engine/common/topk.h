/* topk.h - the heaviest keys of a stream in fixed memory (space-saving), mergeable. */
#ifndef SLUICE_TOPK_H
#define SLUICE_TOPK_H

#include <stddef.h>
#include <stdint.h>

#include "hmap.h"

#define TOPK_KEY_MAX                                                                               \
    96 /* bytes of a key kept; longer keys are cut (and counted as the cut key)                    \
        */

#define TOPK_NOTE_MAX 32

/*
 * One counted key. `count` over-estimates the key's true count by at most
 * `error` (the count of the key it replaced); `extra` counts a second event
 * of the same key (e.g. its refusals), under the same rule.
 */
struct topk_item {
    struct hmap_node node;
    char key[TOPK_KEY_MAX];
    size_t keylen;
    uint64_t count, error, extra;
    uint64_t last; /* a value the key carries along (e.g. a remaining count): the last one added;
                      merged, the smallest */
    char note[TOPK_NOTE_MAX]; /* a short text the key carries (e.g. its tier): the last one
                                 given, NUL-terminated, cut to fit */
    size_t heap;              /* its place in the min-heap by count */
};

/*
 * A space-saving summary of at most `cap` keys (Metwally et al.): every key
 * whose true count is above total/cap is in it, with an over-estimate of at
 * most total/cap. One writer; not thread-safe.
 */
struct topk {
    struct hmap index;
    struct topk_item *items;
    struct topk_item **heap; /* min-heap by count */
    size_t n, cap;
    size_t allocated; /* items allocated: grows with n up to cap */
    uint64_t total;
};

/* Sets t up for at most cap keys (cap >= 1). Its memory grows with the keys it holds, up to
 * cap of them, and no further. */
void topk_init(struct topk *t, size_t cap);

/* Frees what t holds (t itself is the caller's). */
void topk_free(struct topk *t);

/* Forgets every key (a new window), keeping the memory. */
void topk_clear(struct topk *t);

/* Counts `weight` events of key, and `extra` of its second kind; `last` is its value now and
 * `note` (NULL: none) its text now. */
void topk_add(struct topk *t, const char *key, size_t len, uint64_t weight, uint64_t extra,
              uint64_t last, const char *note);

/*
 * Adds every key of src into dst (dst's cap bounds the result; the error
 * bounds add up, as the space-saving merge allows).
 */
void topk_merge(struct topk *dst, const struct topk *src);

/*
 * The n heaviest keys by count (n <= t->n), heaviest first, into out
 * (pointers borrowed from t until its next change). Returns how many.
 */
size_t topk_top(const struct topk *t, const struct topk_item **out, size_t n);

#endif
