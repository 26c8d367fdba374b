/* store_redis_near.c - the Redis store's local copies of responses, by cache key and fill token. */
#include "store_redis_near.h"

#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "store_redis_codec.h"
#include "util.h"

#define NEAR_MIN_BUCKETS 64

/*
 * Each handle keeps copies of the responses it read or stored lately, under
 * their cache key with the fill token they were stored with, within a byte
 * budget (least recently used go first). A lookup that finds a copy names
 * no GET: when the script reports the entry fresh with the copy's token, the
 * copy is that very response (a token is drawn at random for every fill).
 * Any other token costs a GET after the script (a second round trip), a miss
 * drops the copy. Every hit is still decided in Redis, with the limits.
 */

static struct near_entry **
near_slot(struct near *n, uint64_t hash, const char *key, size_t keylen)
{
    struct near_entry **pp = &n->buckets[hash & n->mask];

    while (*pp && !((*pp)->hash == hash && (*pp)->keylen == keylen &&
                    memcmp((*pp)->key, key, keylen) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

/* Unlinks the copy at *pp and frees it. */
static void
near_remove(struct near *n, struct near_entry **pp)
{
    struct near_entry *e = *pp;

    *pp = e->hnext;
    TAILQ_REMOVE(&n->lru, e, lru);
    n->bytes -= e->charge;
    n->count--;
    n->nsecondary -= store_key_primary_len(e->key, e->keylen) < e->keylen;
    store_entry_release(e->entry);
    free(e);
}

void
near_init(struct near *n, size_t max_bytes)
{
    *n = (struct near){.max_bytes = max_bytes};
    TAILQ_INIT(&n->lru);
}

struct near_entry *
near_find(struct near *n, const char *key, size_t keylen)
{
    if (!n->buckets)
        return NULL;
    struct near_entry *e = *near_slot(n, util_fnv1a(key, keylen), key, keylen);
    if (e && TAILQ_FIRST(&n->lru) != e) {
        TAILQ_REMOVE(&n->lru, e, lru);
        TAILQ_INSERT_HEAD(&n->lru, e, lru);
    }
    return e;
}

void
near_drop(struct near *n, const char *key, size_t keylen)
{
    if (!n->buckets)
        return;
    struct near_entry **pp = near_slot(n, util_fnv1a(key, keylen), key, keylen);
    if (*pp)
        near_remove(n, pp);
}

void
near_put(struct near *n, const char *key, size_t keylen, const unsigned char *token,
         struct store_entry *entry)
{
    size_t charge = sizeof(struct near_entry) + keylen + entry->body_len + entry->headers_len + 64;
    uint64_t hash = util_fnv1a(key, keylen);

    if (charge > n->max_bytes / 4) {
        near_drop(n, key, keylen);
        return;
    }
    if (!n->buckets) {
        n->buckets = xcalloc(NEAR_MIN_BUCKETS, sizeof(*n->buckets));
        n->mask = NEAR_MIN_BUCKETS - 1;
    }
    struct near_entry **pp = near_slot(n, hash, key, keylen);
    if (*pp)
        near_remove(n, pp);
    struct near_entry *old;
    while (n->bytes + charge > n->max_bytes && (old = TAILQ_LAST(&n->lru, near_lru)))
        near_remove(n, near_slot(n, old->hash, old->key, old->keylen));
    if (n->count >= n->mask + 1) {
        size_t nb = (n->mask + 1) * 2;
        struct near_entry **b = xcalloc(nb, sizeof(*b));
        for (size_t i = 0; i <= n->mask; i++) {
            for (struct near_entry *e = n->buckets[i], *next; e; e = next) {
                next = e->hnext;
                e->hnext = b[e->hash & (nb - 1)];
                b[e->hash & (nb - 1)] = e;
            }
        }
        free(n->buckets);
        n->buckets = b;
        n->mask = nb - 1;
    }
    struct near_entry *e = xmalloc(sizeof(*e) + keylen);
    e->hash = hash;
    memcpy(e->token, token, TOKEN_LEN);
    store_entry_ref(entry);
    e->entry = entry;
    e->charge = charge;
    e->keylen = keylen;
    memcpy(e->key, key, keylen);
    e->hnext = n->buckets[hash & n->mask];
    n->buckets[hash & n->mask] = e;
    TAILQ_INSERT_HEAD(&n->lru, e, lru);
    n->bytes += charge;
    n->count++;
    n->nsecondary += store_key_primary_len(key, keylen) < keylen;
}

/* Drops the copies of the secondaries of the primary key p (plen bytes): a walk of them all. */
static void
near_drop_secondaries(struct near *n, const char *p, size_t plen)
{
    for (size_t b = 0; n->nsecondary && n->buckets && b <= n->mask; b++) {
        struct near_entry **pp = &n->buckets[b];
        while (*pp) {
            struct near_entry *e = *pp;
            if (e->keylen > plen && e->key[plen] == STORE_KEY_SEP && memcmp(e->key, p, plen) == 0)
                near_remove(n, pp);
            else
                pp = &e->hnext;
        }
    }
}

void
near_free(struct near *n)
{
    struct near_entry *e;
    while ((e = TAILQ_LAST(&n->lru, near_lru)))
        near_remove(n, near_slot(n, e->hash, e->key, e->keylen));
    free(n->buckets);
    n->buckets = NULL;
}

void
near_drop_entry(struct near *n, const char *key, size_t keylen)
{
    near_drop(n, key, keylen);
    if (store_key_primary_len(key, keylen) == keylen)
        near_drop_secondaries(n, key, keylen);
}
