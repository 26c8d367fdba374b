/* store_memory_list.c - the memory store's listing of cache entries, one shard at a time. */
#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "store.h"
#include "store_memory_list.h"
#include "store_memory_table.h"
#include "util.h"

/*
 * A listing walks the cache table of each shard in turn, holding that
 * shard's lock for its walk alone (a 64th of the table), as
 * invalidate_pattern does. A secondary entry lives in its primary's shard,
 * so by the end of a shard's walk every listed primary of it has all its
 * variants, whatever order the records came in: a matching secondary met
 * before its primary lists the primary then (looked up without touching the
 * table), and the primary met later is known by key.
 *
 * What is listed is what a lookup could find: live records (not past their
 * stale keep) whose tags still hold the generations recorded. A tag record
 * may live in another shard, which is not locked: its generation is read
 * atomically (invalidations write it so), and the record itself stays
 * while an entry of the locked shard holds it.
 */

/* A primary listed, found again by key. */
struct listed {
    struct hmap_node node;
    size_t index; /* in the listing */
};

struct walk {
    struct store_memory *m;
    const char *glob; /* NUL-terminated */
    size_t limit;
    struct store_listing *l;
    struct hmap seen;     /* the primaries listed, keyed by their key in the listing */
    struct listed *nodes; /* limit of them */
    bool more;            /* a primary matched past the limit */
};

/* Whether every tag of e still has the generation e recorded (e's shard locked). */
static bool
tags_current(const struct entry_rec *e)
{
    for (uint32_t i = 0; i < e->r.ntags; i++)
        if (__atomic_load_n(&e->tags[i].tag->gen, __ATOMIC_RELAXED) != e->tags[i].gen)
            return false;
    return true;
}

/* The live, current entry record of key in the (locked) shard, or NULL; changes nothing. */
static const struct entry_rec *
peek(struct store_memory *m, struct shard *sh, const char *key, size_t keylen, uint64_t now)
{
    uint64_t hash = mt_entry_hash(m, key, keylen);
    const struct rec *r = sh->cache.buckets[hash & sh->cache.mask];

    for (; r; r = r->next) {
        if (r->hash == hash && r->kind == REC_ENTRY && r->keylen == keylen &&
            memcmp(rec_key(r), key, keylen) == 0) {
            const struct entry_rec *e = (const struct entry_rec *)r;
            return !rec_dead(r, now) && tags_current(e) ? e : NULL;
        }
    }
    return NULL;
}

/* Fills the fields of li from the record e (its shard locked). */
static void
describe(struct store_list_entry *li, const struct entry_rec *e, uint64_t now)
{
    const struct store_entry *se = rec_entry(e);

    li->status = se->status;
    li->flags = se->flags;
    store_list_set_times(li, se->stored_ms, se->expires_ms, se->age_ms, se->swr_ms, se->sie_ms,
                         now);
    li->bytes = se->body_len + se->headers_len + (se->content_type ? strlen(se->content_type) : 0) +
                (se->etag ? strlen(se->etag) : 0);
    for (uint32_t i = 0; i < e->r.ntags; i++) {
        const struct tag_rec *t = e->tags[i].tag;
        store_list_add_tag(li, rec_key(&t->r), t->r.keylen);
    }
    if (se->flags & STORE_ENTRY_VARY)
        li->vary = xstrndup(se->body, se->body_len);
}

/* The listed primary of key[0..plen): found, or listed now from its record; NULL when it has
 * none or the limit is reached. */
static struct store_list_entry *
primary_of(struct walk *w, struct shard *sh, const struct entry_rec *e, const char *key,
           size_t plen, uint64_t now)
{
    struct hmap_node *n = hmap_find(&w->seen, key, plen);

    if (n)
        return &w->l->entries[HMAP_ENTRY(n, struct listed, node)->index];
    const struct entry_rec *p = e->r.keylen == plen ? e : peek(w->m, sh, key, plen, now);
    if (!p)
        return NULL; /* a variant whose primary is gone: no lookup reaches it */
    if (w->l->n == w->limit) {
        w->more = true;
        return NULL;
    }
    struct listed *ld = &w->nodes[w->l->n];
    struct store_list_entry *li = store_listing_add(w->l, key, plen);
    ld->index = w->l->n - 1;
    describe(li, p, now);
    hmap_insert(&w->seen, &ld->node, li->key, plen);
    return li;
}

/* Walks the (locked) shard; returns the records it looked at. */
static uint64_t
walk_shard(struct walk *w, struct shard *sh, uint64_t now)
{
    const struct table *t = &sh->cache;
    uint64_t looked = 0;

    for (size_t b = 0; b <= t->mask; b++) {
        for (const struct rec *r = t->buckets[b]; r; r = r->next) {
            looked++;
            if (r->kind != REC_ENTRY || rec_dead(r, now))
                continue;
            const struct entry_rec *e = (const struct entry_rec *)r;
            const char *key = rec_key(r);
            if (!store_key_matches(w->glob, key, r->keylen) || !tags_current(e))
                continue;
            size_t plen = store_key_primary_len(key, r->keylen);
            struct store_list_entry *p = primary_of(w, sh, e, key, plen, now);
            if (!p || plen == r->keylen)
                continue;
            struct store_list_entry *v = store_list_add_variant(p, key, r->keylen);
            if (v)
                describe(v, e, now);
        }
    }
    return looked;
}

int
mt_list(struct store_memory *m, const char *glob, size_t globlen, size_t limit,
        struct store_listing *l)
{
    size_t budget = m->list_budget ? m->list_budget : MT_LIST_BUDGET, litlen;
    unsigned first = 0, last = NSHARDS - 1;
    char *g;

    assert(limit > 0);
    if (memchr(glob, '\0', globlen))
        return -1;
    g = xmalloc(globlen + 1);
    if (store_glob_literal(glob, globlen, g, &litlen)) {
        /* One key (and its variants): the one shard it lives in. */
        first = last = shard_index(mt_entry_hash(m, g, litlen));
    }
    memcpy(g, glob, globlen);
    g[globlen] = '\0';

    struct walk w = {.m = m, .glob = g, .limit = limit, .l = l};
    w.nodes = xcalloc(limit, sizeof(*w.nodes));
    l->now_ms = clock_now(m);
    for (unsigned i = first; i <= last; i++) {
        if (l->scanned >= budget || l->n == limit || w.more) {
            l->truncated = true;
            break;
        }
        struct shard *sh = &m->shards[i];
        pthread_mutex_lock(&sh->lock);
        uint64_t now = clock_now(m);
        l->scanned += walk_shard(&w, sh, now);
        pthread_mutex_unlock(&sh->lock);
    }
    l->truncated = l->truncated || w.more;
    hmap_free(&w.seen);
    free(w.nodes);
    free(g);
    return 0;
}
