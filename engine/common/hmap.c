/* hmap.c - a small intrusive hash table: chained buckets, power-of-two sizes, keyed by bytes. */
#include "hmap.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define HMAP_MIN_BUCKETS 16

struct hmap_node *
hmap_find(const struct hmap *m, const void *key, size_t keylen)
{
    if (!m->count)
        return NULL;
    uint64_t hash = util_hash64(key, keylen);
    for (struct hmap_node *n = m->buckets[hash & m->mask]; n; n = n->next)
        if (n->hash == hash && n->keylen == keylen && memcmp(n->key, key, keylen) == 0)
            return n;
    return NULL;
}

static void
resize(struct hmap *m, size_t nbuckets)
{
    struct hmap_node **b = xcalloc(nbuckets, sizeof(*b));

    for (size_t i = 0; m->buckets && i <= m->mask; i++) {
        for (struct hmap_node *n = m->buckets[i], *next; n; n = next) {
            next = n->next;
            n->next = b[n->hash & (nbuckets - 1)];
            b[n->hash & (nbuckets - 1)] = n;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->mask = nbuckets - 1;
}

void
hmap_insert(struct hmap *m, struct hmap_node *n, const void *key, size_t keylen)
{
    if (!m->buckets)
        resize(m, HMAP_MIN_BUCKETS);
    else if (m->count > m->mask)
        resize(m, (m->mask + 1) * 2);
    n->hash = util_hash64(key, keylen);
    n->key = key;
    n->keylen = keylen;
    struct hmap_node **b = &m->buckets[n->hash & m->mask];
    n->next = *b;
    *b = n;
    m->count++;
}

void
hmap_remove(struct hmap *m, struct hmap_node *n)
{
    struct hmap_node **pp = &m->buckets[n->hash & m->mask];

    while (*pp != n) {
        assert(*pp); /* n is in m */
        pp = &(*pp)->next;
    }
    *pp = n->next;
    n->next = NULL;
    m->count--;
}

/* The first node of the buckets from i on, or NULL. */
static struct hmap_node *
from_bucket(const struct hmap *m, size_t i)
{
    for (; m->count && i <= m->mask; i++)
        if (m->buckets[i])
            return m->buckets[i];
    return NULL;
}

struct hmap_node *
hmap_first(const struct hmap *m)
{
    return from_bucket(m, 0);
}

struct hmap_node *
hmap_next(const struct hmap *m, const struct hmap_node *n)
{
    return n->next ? n->next : from_bucket(m, (n->hash & m->mask) + 1);
}

void
hmap_clear(struct hmap *m)
{
    if (m->count)
        memset(m->buckets, 0, (m->mask + 1) * sizeof(*m->buckets));
    m->count = 0;
}

void
hmap_free(struct hmap *m)
{
    free(m->buckets);
    *m = (struct hmap){0};
}
