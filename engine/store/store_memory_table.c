/* store_memory_table.c - the memory store's table: records in shards, two byte budgets, sweeps. */
#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "store.h"
#include "log.h"
#include "store_memory_table.h"
#include "util.h"

/*
 * Layout. The table is split into NSHARDS shards, each behind its own
 * mutex and holding two chained hash tables: `cache` (entries and tags) and
 * `lim` (limits and leases), one for each byte budget. A record is one of
 * four kinds:
 *
 *   limit  key + rule identity (algorithm, limit, window, burst) -> limiter state.
 *          Two rules naming the same key string are two records.
 *   entry  cache key -> a store_entry reference, and the tag records it was
 *          filled under with the generation each had at the lookup. The
 *          record lives until the entry's expires_ms + stale_ms; past
 *          expires_ms a lookup reports it STALE. A secondary entry (its key
 *          holds STORE_KEY_SEP) lives in its primary's shard: its hash takes
 *          the shard bits of the primary's, so removing a primary walks that
 *          one shard for its secondaries (only when the shard holds any).
 *          The record lives in the entry's own block when the filler made it
 *          with room for one (store_entry_make(), store_record_room(): the
 *          gateway's answers), so that an entry is one allocation: the
 *          store_entry, this record (its header, LRU links, tag references
 *          and key), then content type, ETag, header lines and body. The
 *          store keeps the filler's entry rather than a copy of it: a copy
 *          would cost a memcpy of the body per fill, and the filler's
 *          short-lived original, freed among long-lived copies, leaves holes
 *          in the heap. An entry without room (or whose room another record
 *          took, or too small for the key, as a Vary answer's secondary key
 *          can be) gets a record block of its own holding a reference.
 *   tag    tag -> generation, and an expiry: the latest expiry of any entry
 *          filled under it. `refs` counts the entries that hold it: a tag
 *          record is never dropped while one does, so an entry keeps a
 *          pointer to it instead of a copy of its name.
 *   lease  cache key -> nothing but an expiry: a caller is filling the key
 *          (fill lease). It lives in the entry's shard, under the entry's hash.
 *
 * Every record has an expiry. Expired records are dropped when a lookup
 * walks past them, and by an incremental sweep: every insert pays for
 * sweeping a couple of buckets of its table (so under churn of many keys a
 * table is swept once for every half-table of inserts, and dead records
 * stay a bounded fraction of it), and each handle, every ROTATE_EVERY
 * operations (store_memory.c), sweeps a batch of the next shard in turn
 * (mt_sweep_shard()), so shards that see no inserts are cleaned too. Hits
 * insert nothing and so sweep little. A table shrinks when it is mostly
 * empty.
 *
 * Tag generation floors. A tag with no record has the generation of the
 * `floor` of its slot (a few bits of its hash) in its shard, and dropping a
 * tag record raises its slot's floor to the record's generation: so a tag's
 * generation never goes back when its record goes (what the operations make
 * of that: store_memory.c).
 *
 * Tag references. `refs` only grows with the tag's shard locked (a fill
 * holds it); it drops (an atomic decrement) wherever an entry is freed, whose
 * shard may be another. So under its shard's lock a record seen with refs 0
 * stays unreferenced and may be freed. Such idle records are counted per
 * shard (`idle_tags`, a hint) so that eviction finds them.
 *
 * Byte budgets. Every record is charged what the allocator holds for it
 * (a block of n bytes costs its usable size plus one word of header, as
 * glibc's chunks do; malloc_usable_size() where the block exists): the
 * record with its key, and for an entry every block it holds (the entry's
 * one block, or the record's, the store_entry's and each field allocated
 * apart); a limit's sliding log; the bucket arrays of the hash tables
 * beyond their minimum size (an entry's slot in them). Two counters, reserved with compare-and-swap
 * so that neither total ever passes its maximum:
 *
 *   cache  entries (markers included) and tags. To make room a fill first
 *          drops tag records no entry holds, then evicts least recently used
 *          entries: of its own shard first (each shard keeps an LRU list),
 *          then of the other shards it holds, then of the others, trying
 *          their locks without waiting. An entry that still does not fit is
 *          not stored.
 *   lim    limit states and fill leases. A limit state is never evicted while
 *          it still counts something: forgetting it would hand its caller a
 *          fresh budget. A state expires when it is empty again. To make
 *          room, the expired states and leases of the shards held are
 *          dropped; if that is not enough, the locks are let go, every shard
 *          that may hold an expired one (each keeps a lower bound of its
 *          expiries, `lim_least`) is swept, and the request is decided once
 *          more. When it still does not fit it is refused (refused_full) and
 *          counts nothing. A lease with no room, after the shards held were
 *          swept, is handed out unrecorded: the caller fills, and others do
 *          not wait for it.
 *
 * A hash table grows only when its budget has room for the larger array;
 * otherwise its chains get longer.
 */

#define SWEEP_PER_INSERT 2 /* buckets of a table swept for each record inserted there */
#define ROTATE_BUCKETS 32  /* buckets of each table swept by mt_sweep_shard() */
#define IDLE_WALK 16       /* tag records looked at to find an idle one */

/* ---- hashing: a wyhash-style 64-bit hash, seeded per table -------------- */

uint64_t
mt_hash_bytes(const void *key, size_t len, uint64_t seed)
{
    const uint8_t *p = key;
    uint64_t a, b;

    seed ^= mum(seed ^ P0, P1);
    if (len <= 16) {
        if (len >= 4) {
            size_t d = (len >> 3) << 2;
            a = rd32(p) << 32 | rd32(p + d);
            b = rd32(p + len - 4) << 32 | rd32(p + len - 4 - d);
        } else if (len > 0) {
            a = (uint64_t)p[0] << 16 | (uint64_t)p[len >> 1] << 8 | p[len - 1];
            b = 0;
        } else {
            a = b = 0;
        }
    } else {
        size_t i = len;
        if (i > 48) {
            uint64_t s1 = seed, s2 = seed;
            do {
                seed = mum(rd64(p) ^ P1, rd64(p + 8) ^ seed);
                s1 = mum(rd64(p + 16) ^ P2, rd64(p + 24) ^ s1);
                s2 = mum(rd64(p + 32) ^ P3, rd64(p + 40) ^ s2);
                p += 48;
                i -= 48;
            } while (i > 48);
            seed ^= s1 ^ s2;
        }
        while (i > 16) {
            seed = mum(rd64(p) ^ P1, rd64(p + 8) ^ seed);
            p += 16;
            i -= 16;
        }
        a = rd64(p + i - 16); /* the last 16 bytes, overlapping what came before */
        b = rd64(p + i - 8);
    }
    unsigned __int128 r = (unsigned __int128)(a ^ P1) * (b ^ seed);
    return mum((uint64_t)r ^ P0 ^ len, (uint64_t)(r >> 64) ^ P1);
}

#define SHARD_HASH_MASK (~0ull << (64 - SHARD_BITS))

uint64_t
mt_entry_hash(const struct store_memory *m, const char *key, size_t len)
{
    uint64_t h = mt_hash_bytes(key, len, m->seed ^ P2);
    size_t plen = store_key_primary_len(key, len);

    if (plen < len)
        h = (mt_hash_bytes(key, plen, m->seed ^ P2) & SHARD_HASH_MASK) | (h & ~SHARD_HASH_MASK);
    return h;
}

/* ---- charges and budgets ------------------------------------------------ */

static size_t
limit_charge(const struct limit_rec *l)
{
    return chunk(limit_size(l->r.keylen)) + log_charge(&l->st);
}

/* The charge of a bucket array of n buckets beyond the minimum one every table has. */
static size_t
buckets_charge(size_t n)
{
    return n <= MIN_BUCKETS
               ? 0
               : chunk(n * sizeof(struct rec *)) - chunk(MIN_BUCKETS * sizeof(struct rec *));
}

/* Charges n bytes if the total stays within the maximum; false if it would not. */
static bool
budget_take(struct budget *b, size_t n)
{
    size_t cur = __atomic_load_n(&b->used, __ATOMIC_RELAXED);

    if (n > b->max)
        return false;
    for (;;) {
        if (cur > b->max - n)
            return false;
        if (__atomic_compare_exchange_n(&b->used, &cur, cur + n, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return true;
    }
}

/* ---- records ------------------------------------------------------------ */

static struct table *
table_of(struct shard *sh, enum rec_kind kind)
{
    return kind == REC_ENTRY || kind == REC_TAG ? &sh->cache : &sh->lim;
}

static struct budget *
budget_of(struct store_memory *m, struct shard *sh, const struct table *t)
{
    return t == &sh->cache ? &m->cache : &m->lim;
}

/* Frees a record already unlinked from its bucket, and what it owns, giving back its charge. */
static void
rec_free(struct store_memory *m, struct shard *sh, struct rec *r)
{
    switch (r->kind) {
    case REC_LIMIT: {
        struct limit_rec *l = (struct limit_rec *)r;
        budget_give(&m->lim, limit_charge(l));
        limiter_state_clear(&l->st);
        sh->nlimits--;
        break;
    }
    case REC_ENTRY: {
        struct entry_rec *e = (struct entry_rec *)r;
        TAILQ_REMOVE(&sh->lru, e, lru);
        for (uint32_t i = 0; i < r->ntags; i++)
            tag_unhold(m, e->tags[i].tag);
        budget_give(&m->cache, entry_rec_charge(e));
        sh->nentries--;
        if (r->flags & REC_SECONDARY)
            sh->nsecondary--;
        sh->cache.count--;
        mt_entry_free(e, true); /* the entry's block stays while lookups hold it */
        return;
    }
    case REC_TAG: {
        struct tag_rec *t = (struct tag_rec *)r;
        uint64_t *fl = floor_of(sh, r->hash);
        assert(__atomic_load_n(&t->refs, __ATOMIC_RELAXED) == 0);
        if (*fl < t->gen)
            *fl = t->gen;
        TAILQ_REMOVE(&sh->tags, t, lru);
        __atomic_sub_fetch(&sh->idle_tags, 1, __ATOMIC_RELAXED);
        budget_give(&m->cache, chunk(tag_size(r->keylen)));
        sh->ntags--;
        break;
    }
    case REC_LEASE:
        budget_give(&m->lim, chunk(lease_size(r->keylen)));
        sh->nleases--;
        break;
    }
    table_of(sh, r->kind)->count--;
    free(r);
}

static void
rec_unlink(struct shard *sh, struct rec *r)
{
    struct table *t = table_of(sh, r->kind);
    struct rec **pp = &t->buckets[r->hash & t->mask];

    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
}

/* Whether a record already lives in the entry's room (read without writing: the entry may be
 * another record's, read by other threads). */
static bool
room_taken(const struct store_entry *e)
{
    return __atomic_load_n(&e->packed, __ATOMIC_ACQUIRE) & STORE_PACKED_ROOM_TAKEN;
}

struct entry_rec *
mt_entry_new(struct store_entry *entry, uint64_t hash, const char *key, size_t keylen, size_t ntags,
             size_t *charge)
{
    size_t need = entry_size(ntags, keylen);
    struct entry_rec *e;
    uint8_t flags = 0;

    assert(keylen <= UINT32_MAX && ntags <= UINT16_MAX);
    store_entry_ref(entry);
    if (entry->room >= need && !room_taken(entry) &&
        !(__atomic_fetch_or(&entry->packed, STORE_PACKED_ROOM_TAKEN, __ATOMIC_ACQ_REL) &
          STORE_PACKED_ROOM_TAKEN)) {
        e = (struct entry_rec *)(entry + 1);
        flags = REC_IN_ENTRY;
        *charge = store_entry_held(entry);
    } else {
        struct entry_held *h = xmalloc(sizeof(*h) + need);
        h->entry = entry;
        h->charge = held(h) + store_entry_held(entry);
        *charge = h->charge;
        e = (struct entry_rec *)(h + 1);
    }
    if (store_key_primary_len(key, keylen) < keylen)
        flags |= REC_SECONDARY;
    *e = (struct entry_rec){
        .r = {.hash = hash,
              .keylen = (uint32_t)keylen,
              .kind = REC_ENTRY,
              .flags = flags,
              .ntags = (uint16_t)ntags},
    };
    if (keylen)
        memcpy(&e->tags[ntags], key, keylen);
    return e;
}

void
mt_entry_free(struct entry_rec *e, bool inserted)
{
    struct store_entry *entry = rec_entry(e);

    if (e->r.flags & REC_IN_ENTRY) {
        /* A room that held a record stays taken: a later fill of the entry makes its own. */
        if (!inserted)
            __atomic_fetch_and(&entry->packed, (uint8_t)~STORE_PACKED_ROOM_TAKEN, __ATOMIC_ACQ_REL);
    } else {
        free((struct entry_held *)e - 1);
    }
    store_entry_release(entry);
}

void
mt_remove(struct store_memory *m, struct shard *sh, struct rec *r)
{
    rec_unlink(sh, r);
    rec_free(m, sh, r);
}

/* Gives the table nbuckets buckets, if its budget has room for a larger array. */
static void
table_resize(struct store_memory *m, struct shard *sh, struct table *t, size_t nbuckets)
{
    struct budget *b = budget_of(m, sh, t);
    size_t was = buckets_charge(t->mask + 1), will = buckets_charge(nbuckets);

    if (will > was && !budget_take(b, will - was))
        return; /* longer chains, still correct */
    struct rec **nb = calloc(nbuckets, sizeof(*nb));
    if (!nb) {
        if (will > was)
            budget_give(b, will - was);
        return;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        struct rec *r = t->buckets[i], *next;
        for (; r; r = next) {
            next = r->next;
            r->next = nb[r->hash & (nbuckets - 1)];
            nb[r->hash & (nbuckets - 1)] = r;
        }
    }
    free(t->buckets);
    t->buckets = nb;
    t->mask = nbuckets - 1;
    if (will < was)
        budget_give(b, was - will);
}

void
mt_insert(struct store_memory *m, struct shard *sh, struct rec *r)
{
    struct table *t = table_of(sh, r->kind);

    if (t->count >= t->mask + 1)
        table_resize(m, sh, t, (t->mask + 1) * 2);
    struct rec **b = &t->buckets[r->hash & t->mask];
    r->next = *b;
    *b = r;
    t->count++;
    t->sweep_due += SWEEP_PER_INSERT;
}

struct rec *
mt_find(struct store_memory *m, struct shard *sh, uint64_t hash, enum rec_kind kind,
        const char *key, size_t keylen, const struct limiter_rule *id, uint64_t now)
{
    struct table *t = table_of(sh, kind);
    struct rec **pp = &t->buckets[hash & t->mask];

    while (*pp) {
        struct rec *r = *pp;
        if (rec_dead(r, now)) {
            *pp = r->next;
            rec_free(m, sh, r);
            continue;
        }
        if (r->hash == hash && r->kind == kind && r->keylen == keylen &&
            memcmp(rec_key(r), key, keylen) == 0 &&
            (kind != REC_LIMIT || rule_eq(&((struct limit_rec *)r)->rule, id)))
            return r;
        pp = &r->next;
    }
    return NULL;
}

uint64_t
mt_remove_if(struct store_memory *m, struct shard *sh, uint64_t now,
             bool (*pred)(const void *ctx, const char *key, size_t keylen), const void *ctx)
{
    struct table *t = &sh->cache;
    uint64_t n = 0;

    for (size_t b = 0; b <= t->mask; b++) {
        struct rec **pp = &t->buckets[b];
        while (*pp) {
            struct rec *r = *pp;
            bool dead = rec_dead(r, now);
            if (dead || (r->kind == REC_ENTRY && pred(ctx, rec_key(r), r->keylen))) {
                *pp = r->next;
                n += !dead;
                rec_free(m, sh, r);
            } else {
                pp = &r->next;
            }
        }
    }
    return n;
}

/* Shrinks a mostly empty table of the (locked) shard to a quarter to a half full. */
static void
table_shrink(struct store_memory *m, struct shard *sh, struct table *t)
{
    size_t n = t->mask + 1;

    if (n <= MIN_BUCKETS || t->count * 4 >= n)
        return;
    while (n > MIN_BUCKETS && t->count * 4 < n)
        n /= 2;
    table_resize(m, sh, t, n);
}

/* Sweeps nbuckets buckets of one table of the (locked) shard. Returns how many records it freed. */
static size_t
table_sweep(struct store_memory *m, struct shard *sh, struct table *t, size_t nbuckets,
            uint64_t now)
{
    size_t freed = 0;

    for (size_t n = 0; n < nbuckets && n <= t->mask; n++) {
        struct rec **pp = &t->buckets[t->sweep_pos++ & t->mask];
        while (*pp) {
            struct rec *r = *pp;
            if (rec_dead(r, now)) {
                *pp = r->next;
                rec_free(m, sh, r);
                freed++;
            } else {
                pp = &r->next;
            }
        }
    }
    table_shrink(m, sh, t);
    return freed;
}

/* ---- locking and sweeping ----------------------------------------------- */

void
mt_unlock_shards(struct store_memory *m, uint64_t mask, uint64_t now)
{
    for (; mask; mask &= mask - 1) {
        struct shard *sh = &m->shards[__builtin_ctzll(mask)];
        struct table *ts[2] = {&sh->cache, &sh->lim};
        for (int i = 0; i < 2; i++) {
            if (ts[i]->sweep_due) {
                table_sweep(m, sh, ts[i], ts[i]->sweep_due, now);
                ts[i]->sweep_due = 0;
            }
        }
        pthread_mutex_unlock(&sh->lock);
    }
}

void
mt_sweep_shard(struct store_memory *m, unsigned i, uint64_t now)
{
    struct shard *sh = &m->shards[i];

    if (pthread_mutex_trylock(&sh->lock) != 0)
        return;
    table_sweep(m, sh, &sh->cache, ROTATE_BUCKETS, now);
    table_sweep(m, sh, &sh->lim, ROTATE_BUCKETS, now);
    pthread_mutex_unlock(&sh->lock);
}

/* ---- the cache budget --------------------------------------------------- */

/* Frees a tag record of the (locked) shard that no entry holds; false if it finds none soon. */
static bool
evict_idle_tag(struct store_memory *m, struct shard *sh)
{
    struct tag_rec *t;

    if (__atomic_load_n(&sh->idle_tags, __ATOMIC_RELAXED) <= 0)
        return false;
    for (int n = 0; n < IDLE_WALK && (t = TAILQ_FIRST(&sh->tags)); n++) {
        if (__atomic_load_n(&t->refs, __ATOMIC_ACQUIRE) == 0) {
            rec_unlink(sh, &t->r);
            rec_free(m, sh, &t->r);
            tally(&m->evicted_tags);
            return true;
        }
        TAILQ_REMOVE(&sh->tags, t, lru); /* held: look at it again later */
        TAILQ_INSERT_TAIL(&sh->tags, t, lru);
    }
    return false;
}

/* Evicts the least recently used entry of the (locked) shard; false if it has none. */
static bool
evict_lru(struct store_memory *m, struct shard *sh)
{
    struct entry_rec *e = TAILQ_FIRST(&sh->lru);

    if (!e)
        return false;
    rec_unlink(sh, &e->r);
    rec_free(m, sh, &e->r);
    tally(&m->evicted_entries);
    return true;
}

/*
 * Frees one thing charged to the cache budget: an idle tag record, else the
 * least recently used entry; of the shard `own` first, then of the others
 * held, then of the others whose lock is free. False when none was found.
 */
static bool
evict_one(struct store_memory *m, uint64_t locked, unsigned own)
{
    for (int pass = 0; pass < 2; pass++) {
        bool (*evict)(struct store_memory *, struct shard *) = pass ? evict_lru : evict_idle_tag;
        if (evict(m, &m->shards[own]))
            return true;
        for (uint64_t b = locked & ~(1ull << own); b; b &= b - 1)
            if (evict(m, &m->shards[__builtin_ctzll(b)]))
                return true;
        unsigned start = __atomic_fetch_add(&m->evict_next, 1, __ATOMIC_RELAXED);
        for (unsigned k = 0; k < NSHARDS; k++) {
            unsigned i = (start + k) % NSHARDS;
            struct shard *sh = &m->shards[i];
            if (locked & (1ull << i))
                continue;
            if (!pass && __atomic_load_n(&sh->idle_tags, __ATOMIC_RELAXED) <= 0)
                continue;
            if (pthread_mutex_trylock(&sh->lock) != 0)
                continue;
            bool ok = evict(m, sh);
            pthread_mutex_unlock(&sh->lock);
            if (ok)
                return true;
        }
    }
    return false;
}

bool
mt_reserve_cache(struct store_memory *m, uint64_t locked, unsigned own, size_t n)
{
    if (n > m->cache.max)
        return false;
    while (!budget_take(&m->cache, n))
        if (!evict_one(m, locked, own))
            return false;
    return true;
}

/* ---- the limit budget --------------------------------------------------- */

/* A lower bound of the expiries in the shard's limit table (read without its lock: a hint). */
static uint64_t
lim_least(const struct shard *sh)
{
    return __atomic_load_n(&sh->lim_least, __ATOMIC_RELAXED);
}

/*
 * Drops every expired limit state and lease of the (locked) shard, and sets
 * lim_least to the earliest expiry left. Returns how many records it freed.
 */
static size_t
lim_reclaim(struct store_memory *m, struct shard *sh, uint64_t now)
{
    struct table *t = &sh->lim;
    uint64_t least = UINT64_MAX;
    size_t freed = 0;

    for (size_t b = 0; b <= t->mask; b++) {
        struct rec **pp = &t->buckets[b];
        while (*pp) {
            struct rec *r = *pp;
            if (rec_dead(r, now)) {
                *pp = r->next;
                rec_free(m, sh, r);
                freed++;
            } else {
                if (r->expires_ms < least)
                    least = r->expires_ms;
                pp = &r->next;
            }
        }
    }
    __atomic_store_n(&sh->lim_least, least, __ATOMIC_RELAXED);
    table_shrink(m, sh, t);
    __atomic_add_fetch(&m->limit_reclaimed, freed, __ATOMIC_RELAXED);
    return freed;
}

bool
mt_reserve_limit(struct store_memory *m, uint64_t locked, size_t n, uint64_t now)
{
    if (n == 0 || budget_take(&m->lim, n))
        return true;
    for (uint64_t b = locked; b; b &= b - 1) {
        struct shard *sh = &m->shards[__builtin_ctzll(b)];
        if (lim_least(sh) <= now && lim_reclaim(m, sh, now) > 0 && budget_take(&m->lim, n))
            return true;
    }
    return false;
}

bool
mt_reclaim_all(struct store_memory *m, uint64_t now)
{
    size_t freed = 0;

    for (unsigned i = 0; i < NSHARDS; i++) {
        struct shard *sh = &m->shards[i];
        if (lim_least(sh) > now)
            continue;
        pthread_mutex_lock(&sh->lock);
        freed += lim_reclaim(m, sh, now);
        pthread_mutex_unlock(&sh->lock);
    }
    return freed > 0;
}

/* ---- shards ------------------------------------------------------------- */

static void
table_init(struct table *t)
{
    t->buckets = calloc(MIN_BUCKETS, sizeof(*t->buckets));
    if (!t->buckets) {
        log_abort("out of memory (memory store)");
    }
    t->mask = MIN_BUCKETS - 1;
}

void
mt_shard_init(struct shard *sh)
{
    pthread_mutex_init(&sh->lock, NULL);
    TAILQ_INIT(&sh->lru);
    TAILQ_INIT(&sh->tags);
    table_init(&sh->cache);
    table_init(&sh->lim);
    sh->lim_least = UINT64_MAX;
}

/* Frees every record of the table of kind `only` (0: every kind) of the shard. */
static void
table_clear(struct store_memory *m, struct shard *sh, struct table *t, int only)
{
    for (size_t b = 0; b <= t->mask; b++) {
        struct rec **pp = &t->buckets[b];
        while (*pp) {
            struct rec *r = *pp;
            if (only && r->kind != only) {
                pp = &r->next;
                continue;
            }
            *pp = r->next;
            rec_free(m, sh, r);
        }
    }
}

void
mt_shard_clear(struct store_memory *m, struct shard *sh, int only)
{
    table_clear(m, sh, &sh->cache, only);
    table_clear(m, sh, &sh->lim, only);
}

void
mt_shard_fini(struct shard *sh)
{
    free(sh->cache.buckets);
    free(sh->lim.buckets);
    pthread_mutex_destroy(&sh->lock);
}
