/* hmap.h - a small intrusive hash table: chained buckets, power-of-two sizes, keyed by bytes. */
#ifndef SLUICE_HMAP_H
#define SLUICE_HMAP_H

#include <stddef.h>
#include <stdint.h>

/*
 * The node lives in the caller's struct, as a TAILQ_ENTRY does, and points
 * at the key, which the caller keeps (usually in the same allocation):
 * inserting allocates nothing but, now and then, a larger bucket array.
 * HMAP_ENTRY gets the caller's struct back from a node. Keys are hashed with
 * util_fnv1a. A zeroed struct hmap is empty; the buckets are allocated on
 * the first insert (16) and double when the table holds as many nodes as
 * buckets. One thread at a time.
 */
struct hmap_node {
    struct hmap_node *next; /* bucket chain */
    uint64_t hash;
    const void *key; /* borrowed: keylen bytes, unchanged while the node is in a table */
    size_t keylen;
};

struct hmap {
    struct hmap_node **buckets; /* NULL until the first insert */
    size_t mask;                /* bucket count - 1 */
    size_t count;               /* nodes in the table */
};

/* The struct of `type` holding node (evaluated once) as `member`, or NULL. */
#define HMAP_ENTRY(node, type, member) ((type *)hmap_entry_((node), offsetof(type, member)))

/* HMAP_ENTRY's work, in a function so that node, often a lookup, is evaluated once. */
static inline void *
hmap_entry_(const struct hmap_node *node, size_t offset)
{
    return node ? (void *)((char *)(uintptr_t)node - offset) : NULL;
}

/* Returns the node of key (keylen bytes), borrowed from m, or NULL. */
struct hmap_node *hmap_find(const struct hmap *m, const void *key, size_t keylen);

/*
 * Puts node n under key, which must not be in m already. n and the key
 * (borrowed, keylen bytes) are the caller's and must stay until n is
 * removed. Aborts when out of memory.
 */
void hmap_insert(struct hmap *m, struct hmap_node *n, const void *key, size_t keylen);

/* Takes node n (in m) out of m; the caller still owns it. */
void hmap_remove(struct hmap *m, struct hmap_node *n);

/*
 * Iteration in no particular order: hmap_first() returns a node of m or
 * NULL when empty, hmap_next() the node after n or NULL. The node returned
 * may be removed before asking for its next, when its next was read first:
 *
 *   for (struct hmap_node *n = hmap_first(m), *next; n; n = next) {
 *       next = hmap_next(m, n);
 *       ...
 *   }
 *
 * Inserting during an iteration may miss or repeat nodes.
 */
struct hmap_node *hmap_first(const struct hmap *m);
struct hmap_node *hmap_next(const struct hmap *m, const struct hmap_node *n);

/* Empties m at once, keeping its buckets; the nodes (the caller's) are not touched. */
void hmap_clear(struct hmap *m);

/* Frees the bucket array (not the nodes, which are the caller's); m is empty after. */
void hmap_free(struct hmap *m);

#endif
