/* store_redis_near.c - the Redis store's local copies of responses, by cache key and fill token. */
#include "store_redis_near.h"

#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "store_redis_codec.h"
#include "util.h"

/*
 * Each handle keeps copies of the responses it read or stored lately, under
 * their cache key with the fill token they were stored with, within a byte
 * budget (least recently used go first). A lookup that finds a copy names
 * no GET: when the script reports the entry fresh with the copy's token, the
 * copy is that very response (a token is drawn at random for every fill).
 * Any other token costs a GET after the script (a second round trip), a miss
 * drops the copy. Every hit is still decided in Redis, with the limits.
 */

static struct near_entry *
near_lookup(struct near *n, const char *key, size_t keylen)
{
    struct hmap_node *hn = hmap_find(&n->map, key, keylen);
    return HMAP_ENTRY(hn, struct near_entry, node);
}

/* Unlinks the copy e and frees it. */
static void
near_remove(struct near *n, struct near_entry *e)
{
    hmap_remove(&n->map, &e->node);
    TAILQ_REMOVE(&n->lru, e, lru);
    n->bytes -= e->charge;
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
    struct near_entry *e = near_lookup(n, key, keylen);
    if (e && TAILQ_NEXT(e, lru)) { /* not the most recently used yet */
        TAILQ_REMOVE(&n->lru, e, lru);
        TAILQ_INSERT_TAIL(&n->lru, e, lru);
    }
    return e;
}

void
near_drop(struct near *n, const char *key, size_t keylen)
{
    struct near_entry *e = near_lookup(n, key, keylen);
    if (e)
        near_remove(n, e);
}

void
near_put(struct near *n, const char *key, size_t keylen, const unsigned char *token,
         struct store_entry *entry)
{
    size_t charge = sizeof(struct near_entry) + keylen + entry->body_len + entry->headers_len + 64;

    for (int c = 0; entry->coded && c < CODEC_N; c++)
        charge += entry->coded->len[c];

    near_drop(n, key, keylen);
    if (charge > n->max_bytes / 4)
        return;
    struct near_entry *old;
    while (n->bytes + charge > n->max_bytes && (old = TAILQ_FIRST(&n->lru)))
        near_remove(n, old);
    struct near_entry *e = xmalloc(sizeof(*e) + keylen);
    memcpy(e->token, token, TOKEN_LEN);
    store_entry_ref(entry);
    e->entry = entry;
    e->charge = charge;
    e->keylen = keylen;
    memcpy(e->key, key, keylen);
    hmap_insert(&n->map, &e->node, e->key, keylen);
    TAILQ_INSERT_TAIL(&n->lru, e, lru);
    n->bytes += charge;
    n->nsecondary += store_key_primary_len(key, keylen) < keylen;
}

/* Drops the copies of the secondaries of the primary key p (plen bytes): a walk of them all. */
static void
near_drop_secondaries(struct near *n, const char *p, size_t plen)
{
    if (!n->nsecondary)
        return;
    for (struct hmap_node *hn = hmap_first(&n->map), *next; hn && n->nsecondary; hn = next) {
        next = hmap_next(&n->map, hn);
        struct near_entry *e = HMAP_ENTRY(hn, struct near_entry, node);
        if (e->keylen > plen && e->key[plen] == STORE_KEY_SEP && memcmp(e->key, p, plen) == 0)
            near_remove(n, e);
    }
}

void
near_free(struct near *n)
{
    struct near_entry *e;
    while ((e = TAILQ_FIRST(&n->lru)))
        near_remove(n, e);
    hmap_free(&n->map);
}

void
near_drop_entry(struct near *n, const char *key, size_t keylen)
{
    near_drop(n, key, keylen);
    if (store_key_primary_len(key, keylen) == keylen)
        near_drop_secondaries(n, key, keylen);
}
