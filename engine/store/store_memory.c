/* store_memory.c - the embedded store: one sharded in-process table of limits, entries and tags. */
#define _GNU_SOURCE /* malloc_usable_size */
#include <assert.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>

#include "store.h"
#include "store_memory.h"
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
 * operations, sweeps a batch of the next shard in turn, so shards that see
 * no inserts are cleaned too. Hits insert nothing and so sweep little. A
 * table shrinks when it is mostly empty.
 *
 * An operation hashes its keys first, then locks every shard they fall in,
 * in ascending order (a 64-bit mask, so duplicates fold), does its work,
 * sweeps and unlocks. Only inserts allocate.
 *
 * Tag generations. `gen_counter` is process-wide and only grows; an
 * invalidation takes its next value, which is larger than any generation
 * handed out before. A tag's current generation is its record's, or, when
 * it has no record, the `floor` of its slot (a few bits of its hash) in its
 * shard. Dropping a tag record raises its slot's floor to the record's
 * generation, and invalidating a tag that has no record sets the floor to
 * the new value. Hence a tag's current generation never decreases, and any
 * invalidation strictly increases it. So:
 *
 *   - A fill is refused unless every tag's generation still equals the one
 *     read at the lookup: any invalidation in between changed it, even when
 *     the tag record did not exist at the lookup, or vanished and came back,
 *     and even when several tags share a floor slot (a stranger's
 *     invalidation there can cause a spurious refusal, never an acceptance).
 *   - An entry is a hit only while every one of its tags' records has the
 *     generation it stored. Once a tag moved on it never comes back to the
 *     stored value, so an invalidated entry stays dead; and the records an
 *     entry holds stay while it does.
 *
 * Tag references. `refs` only grows with the tag's shard locked (a fill
 * holds it); it drops (an atomic decrement) wherever an entry is freed, whose
 * shard may be another. So under its shard's lock a record seen with refs 0
 * stays unreferenced and may be freed. Such idle records are counted per
 * shard (`idle_tags`, a hint) so that eviction finds them.
 *
 * Removal by key or pattern. delete_keys locks one key's shard at a time;
 * invalidate_pattern walks the shards one after the other, each whole under
 * its lock (a bounded slice: a 64th of the table), dropping every entry whose
 * key matches.
 *
 * Byte budgets. Every record is charged what the allocator holds for it
 * (a block of n bytes costs its usable size plus one word of header, as
 * glibc's chunks do): the record with its key, and for an entry the
 * store_entry with its body, content type, header lines and ETag; a limit's
 * sliding log; the bucket arrays of the hash tables beyond their minimum
 * size. Two counters, reserved with compare-and-swap so that neither total
 * ever passes its maximum:
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

#define SHARD_BITS 6
#define NSHARDS (1u << SHARD_BITS)
#define NFLOORS 64         /* generation floor slots per shard */
#define MIN_BUCKETS 16     /* per table; a power of two */
#define SWEEP_PER_INSERT 2 /* buckets of a table swept for each record inserted there */
#define ROTATE_EVERY 64    /* operations of a handle between sweeps of the next shard */
#define ROTATE_BUCKETS 32  /* buckets of each table swept then */
#define IDLE_WALK 16       /* tag records looked at to find an idle one */
#define STACK_LIMITS 8     /* limits of a request handled without allocating */
#define STACK_TAGS 16      /* tags likewise */

enum rec_kind { REC_LIMIT = 1, REC_ENTRY, REC_TAG, REC_LEASE };

#define REC_SECONDARY 0x01u /* an entry whose key holds STORE_KEY_SEP */

/* A record's header; its key follows the record of its kind (rec_key()). */
struct rec {
    struct rec *next; /* bucket chain */
    uint64_t hash;
    uint64_t expires_ms; /* dropped at or after this time (a tag: once no entry holds it) */
    uint32_t keylen;
    uint8_t kind;
    uint8_t flags;
};

struct limit_rec {
    struct rec r;
    struct limiter_rule rule; /* identity, normalised by rule_identity() */
    struct limiter_state st;
};

struct tag_rec {
    struct rec r;
    TAILQ_ENTRY(tag_rec) lru; /* in its shard's tags, least recently used first */
    uint64_t gen;
    uint32_t refs; /* atomic: entries holding it */
};

struct tag_ref {
    struct tag_rec *tag; /* held: refs counts this */
    uint64_t gen;        /* at the lookup that led to the fill */
};

struct entry_rec {
    struct rec r;
    TAILQ_ENTRY(entry_rec) lru; /* in its shard's lru */
    struct store_entry *entry;  /* one reference */
    size_t charge;              /* bytes counted against the cache budget */
    uint32_t ntags;
    struct tag_ref tags[]; /* then the key */
};

struct table {
    struct rec **buckets;
    size_t mask; /* bucket count - 1 */
    size_t count;
    size_t sweep_pos;
    size_t sweep_due; /* buckets to sweep before unlocking */
};

struct shard {
    pthread_mutex_t lock;
    struct table cache; /* entries and tags */
    struct table lim;   /* limits and leases */
    size_t nentries, nlimits, ntags, nleases;
    size_t nsecondary;           /* secondary entries among nentries */
    TAILQ_HEAD(, entry_rec) lru; /* entries, least recently used first */
    TAILQ_HEAD(, tag_rec) tags;  /* tag records, least recently used first */
    long idle_tags;              /* atomic: tag records no entry holds (a hint) */
    uint64_t lim_least;          /* atomic: no record of `lim` expires before this */
    uint64_t floors[NFLOORS];
} __attribute__((aligned(64)));

struct budget {
    size_t max;
    size_t used; /* atomic */
};

struct store_memory {
    struct shard shards[NSHARDS];
    struct budget cache, lim;
    unsigned evict_next; /* atomic: where eviction starts among unlocked shards */
    /* atomic counters, since the table was made */
    uint64_t evicted_entries, evicted_tags, not_stored;
    uint64_t limit_reclaimed, limit_refused, leases_unrecorded;
    uint64_t seed;
    uint64_t (*now)(void *ctx);
    void *now_ctx;
};

struct handle {
    struct store base;
    struct store_memory *m;
    unsigned ops;
    unsigned rotate;
};

static uint64_t gen_counter; /* atomic */

static uint64_t
sat_add(uint64_t a, uint64_t b)
{
    return a + b < a ? UINT64_MAX : a + b;
}

static void
tally(uint64_t *counter)
{
    __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

/* ---- hashing: a wyhash-style 64-bit hash, seeded per table -------------- */

#define P0 0xa0761d6478bd642full
#define P1 0xe7037ed1a0b428dbull
#define P2 0x8ebc6af09c88c6e3ull
#define P3 0x589965cc75374cc3ull

static inline uint64_t
mum(uint64_t a, uint64_t b)
{
    unsigned __int128 r = (unsigned __int128)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t
rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t
rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t
hash_bytes(const void *key, size_t len, uint64_t seed)
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

/* Algorithm, limit, window and burst as they decide behaviour: what makes two limits the same. */
static struct limiter_rule
rule_identity(const struct limiter_rule *r)
{
    struct limiter_rule id = {.algo = r->algo, .limit = r->limit, .window_ms = r->window_ms};

    if (r->algo == LIMITER_TOKEN_BUCKET)
        id.burst = r->burst ? r->burst : r->limit;
    return id;
}

static bool
rule_eq(const struct limiter_rule *a, const struct limiter_rule *b)
{
    return a->algo == b->algo && a->limit == b->limit && a->window_ms == b->window_ms &&
           a->burst == b->burst;
}

static uint64_t
limit_hash(const struct store_memory *m, const struct limiter_rule *id, const char *key, size_t len)
{
    uint64_t s = m->seed ^ mum((uint64_t)id->algo ^ P2, id->limit ^ P3) ^
                 mum(id->window_ms ^ P0, id->burst ^ P1);
    return hash_bytes(key, len, s);
}

#define SHARD_HASH_MASK (~0ull << (64 - SHARD_BITS))

/* A secondary entry's hash carries its primary's shard bits: both live in one shard. */
static uint64_t
entry_hash(const struct store_memory *m, const char *key, size_t len)
{
    uint64_t h = hash_bytes(key, len, m->seed ^ P2);
    size_t plen = store_key_primary_len(key, len);

    if (plen < len)
        h = (hash_bytes(key, plen, m->seed ^ P2) & SHARD_HASH_MASK) | (h & ~SHARD_HASH_MASK);
    return h;
}

static uint64_t
tag_hash(const struct store_memory *m, const char *key, size_t len)
{
    return hash_bytes(key, len, m->seed ^ P3);
}

static unsigned
shard_index(uint64_t hash)
{
    return (unsigned)(hash >> (64 - SHARD_BITS));
}

static uint64_t
shard_bit(uint64_t hash)
{
    return 1ull << shard_index(hash);
}

static struct shard *
shard_at(struct store_memory *m, uint64_t hash)
{
    return &m->shards[shard_index(hash)];
}

static uint64_t *
floor_of(struct shard *sh, uint64_t hash)
{
    return &sh->floors[(hash >> 32) & (NFLOORS - 1)];
}

/* ---- charges and budgets ------------------------------------------------ */

/* What the allocator holds for a block of n bytes: n and a word, in 16-byte units, at least 32. */
static size_t
chunk(size_t n)
{
    size_t c = (n + sizeof(size_t) + 15) & ~(size_t)15;

    return c < 32 ? 32 : c;
}

/* What the allocator holds for the block p (NULL: nothing). */
static size_t
held(const void *p)
{
    return p ? malloc_usable_size((void *)p) + sizeof(size_t) : 0;
}

static size_t
limit_size(size_t keylen)
{
    return sizeof(struct limit_rec) + keylen;
}

static size_t
log_charge(const struct limiter_state *st)
{
    size_t n = limiter_state_bytes(st);

    return n ? chunk(n) : 0;
}

static size_t
limit_charge(const struct limit_rec *l)
{
    return chunk(limit_size(l->r.keylen)) + log_charge(&l->st);
}

static size_t
tag_size(size_t keylen)
{
    return sizeof(struct tag_rec) + keylen;
}

static size_t
lease_size(size_t keylen)
{
    return sizeof(struct rec) + keylen;
}

static size_t
entry_size(size_t ntags, size_t keylen)
{
    return sizeof(struct entry_rec) + ntags * sizeof(struct tag_ref) + keylen;
}

/* The record of an entry, and the store_entry with everything it owns. */
static size_t
entry_charge(const struct store_entry *e, size_t ntags, size_t keylen)
{
    return chunk(entry_size(ntags, keylen)) + held(e) + held(e->body) + held(e->content_type) +
           held(e->headers) + held(e->etag);
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

static void
budget_give(struct budget *b, size_t n)
{
    size_t was = __atomic_fetch_sub(&b->used, n, __ATOMIC_RELAXED);

    assert(was >= n);
    (void)was;
}

/* ---- records ------------------------------------------------------------ */

static const char *
rec_key(const struct rec *r)
{
    switch (r->kind) {
    case REC_LIMIT:
        return (const char *)((const struct limit_rec *)r + 1);
    case REC_ENTRY: {
        const struct entry_rec *e = (const struct entry_rec *)r;
        return (const char *)&e->tags[e->ntags];
    }
    case REC_TAG:
        return (const char *)((const struct tag_rec *)r + 1);
    default:
        return (const char *)(r + 1);
    }
}

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

/* Whether the record may be dropped at now: expired, and for a tag, held by no entry. */
static bool
rec_dead(const struct rec *r, uint64_t now)
{
    if (now < r->expires_ms)
        return false;
    return r->kind != REC_TAG ||
           __atomic_load_n(&((const struct tag_rec *)r)->refs, __ATOMIC_ACQUIRE) == 0;
}

/* Drops one entry's hold on tag t, from any thread; t may be freed by its shard right after. */
static void
tag_unhold(struct store_memory *m, struct tag_rec *t)
{
    struct shard *tsh = shard_at(m, t->r.hash); /* read before: t may go once refs is 0 */

    if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        __atomic_add_fetch(&tsh->idle_tags, 1, __ATOMIC_RELAXED);
}

/* One more entry holds tag t (its shard locked); it becomes the most recently used. */
static void
tag_hold(struct shard *tsh, struct tag_rec *t)
{
    if (__atomic_fetch_add(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        __atomic_sub_fetch(&tsh->idle_tags, 1, __ATOMIC_RELAXED);
    TAILQ_REMOVE(&tsh->tags, t, lru);
    TAILQ_INSERT_TAIL(&tsh->tags, t, lru);
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
        for (uint32_t i = 0; i < e->ntags; i++)
            tag_unhold(m, e->tags[i].tag);
        store_entry_release(e->entry);
        budget_give(&m->cache, e->charge);
        sh->nentries--;
        if (r->flags & REC_SECONDARY)
            sh->nsecondary--;
        break;
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

static void
shard_insert(struct store_memory *m, struct shard *sh, struct rec *r)
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

/*
 * Returns the live record of this kind and key (and rule, for limits), or
 * NULL. Dead records met on the way are dropped; a record returned is not
 * dead at `now`, so later calls with the same `now` keep it.
 */
static struct rec *
shard_find(struct store_memory *m, struct shard *sh, uint64_t hash, enum rec_kind kind,
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

static void
lock_shards(struct store_memory *m, uint64_t mask)
{
    for (; mask; mask &= mask - 1)
        pthread_mutex_lock(&m->shards[__builtin_ctzll(mask)].lock);
}

/* Sweeps what inserts made due in the locked shards, then unlocks them. */
static void
unlock_shards(struct store_memory *m, uint64_t mask, uint64_t now)
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

/* Every ROTATE_EVERY operations, sweeps a batch of the next shard if it is free. */
static void
rotate_sweep(struct handle *h, uint64_t now)
{
    if (++h->ops % ROTATE_EVERY != 0)
        return;
    struct shard *sh = &h->m->shards[h->rotate++ % NSHARDS];
    if (pthread_mutex_trylock(&sh->lock) != 0)
        return;
    table_sweep(h->m, sh, &sh->cache, ROTATE_BUCKETS, now);
    table_sweep(h->m, sh, &sh->lim, ROTATE_BUCKETS, now);
    pthread_mutex_unlock(&sh->lock);
}

static uint64_t
clock_now(const struct store_memory *m)
{
    return m->now ? m->now(m->now_ctx) : store_now_ms();
}

/* The tag's current generation; *out is its record, or NULL when it has none. Shard locked. */
static uint64_t
tag_gen(struct store_memory *m, uint64_t hash, const char *key, size_t len, uint64_t now,
        struct tag_rec **out)
{
    struct shard *sh = shard_at(m, hash);
    struct tag_rec *t = (struct tag_rec *)shard_find(m, sh, hash, REC_TAG, key, len, NULL, now);

    if (out)
        *out = t;
    return t ? t->gen : *floor_of(sh, hash);
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

/* Charges n bytes to the cache budget, evicting to make room; false if it can't. */
static bool
reserve_cache(struct store_memory *m, uint64_t locked, unsigned own, size_t n)
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

/* A record of the (locked) shard's limit table now expires at `expires`. */
static void
lim_expires(struct shard *sh, uint64_t expires)
{
    if (expires < sh->lim_least)
        __atomic_store_n(&sh->lim_least, expires, __ATOMIC_RELAXED);
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

/*
 * Charges n bytes to the limit budget. When it is full, first drops the
 * expired limit states and leases of the locked shards; false if that made
 * no room (the caller may then reclaim_all() with no lock held).
 */
static bool
reserve_limit(struct store_memory *m, uint64_t locked, size_t n, uint64_t now)
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

/*
 * With no shard locked: drops the expired limit states and leases of every
 * shard that may hold one (its lim_least passed). Returns whether it freed any.
 */
static bool
reclaim_all(struct store_memory *m, uint64_t now)
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

/* ---- operations --------------------------------------------------------- */

enum lookup { LOOKUP_MISS, LOOKUP_HIT, LOOKUP_STALE, LOOKUP_WIDER };

/*
 * Looks the entry up with the shards in `locked` held. LOOKUP_WIDER with
 * *wider set when some of its tags live in shards not held: the caller
 * retries holding those too. An entry whose tags moved is dropped; one past
 * its expires_ms (kept for its stale_ms) is LOOKUP_STALE.
 */
static enum lookup
entry_lookup(struct store_memory *m, uint64_t locked, uint64_t hash, const char *key, size_t keylen,
             uint64_t now, uint64_t *wider, struct store_entry **out)
{
    struct shard *sh = shard_at(m, hash);
    struct entry_rec *e =
        (struct entry_rec *)shard_find(m, sh, hash, REC_ENTRY, key, keylen, NULL, now);
    uint64_t need = 0;

    if (!e)
        return LOOKUP_MISS;
    for (uint32_t i = 0; i < e->ntags; i++) /* a held record stays, its hash never changes */
        need |= shard_bit(e->tags[i].tag->r.hash);
    if (need & ~locked) {
        *wider = need;
        return LOOKUP_WIDER;
    }
    for (uint32_t i = 0; i < e->ntags; i++) {
        if (e->tags[i].tag->gen != e->tags[i].gen) {
            rec_unlink(sh, &e->r);
            rec_free(m, sh, &e->r);
            return LOOKUP_MISS;
        }
    }
    if (TAILQ_NEXT(e, lru)) { /* not the most recently used yet */
        TAILQ_REMOVE(&sh->lru, e, lru);
        TAILQ_INSERT_TAIL(&sh->lru, e, lru);
    }
    store_entry_ref(e->entry);
    *out = e->entry;
    return now < e->entry->expires_ms ? LOOKUP_HIT : LOOKUP_STALE;
}

struct limit_slot {
    struct limiter_rule id;
    uint64_t hash;
    uint64_t cost;         /* summed over limits naming the same record */
    size_t first;          /* the first limit naming the same record */
    struct limit_rec *rec; /* NULL until created at commit */
    size_t log_after;      /* the log's charge once committed */
};

static bool
same_limit(const struct limit_slot *a, const struct store_limit *la, const struct limit_slot *b,
           const struct store_limit *lb)
{
    return a->hash == b->hash && la->keylen == lb->keylen && rule_eq(&a->id, &b->id) &&
           memcmp(la->key, lb->key, la->keylen) == 0;
}

static struct limit_rec *
limit_rec_new(const struct limit_slot *ls, const char *key, size_t keylen)
{
    struct limit_rec *l = xmalloc(limit_size(keylen));

    memcpy(l + 1, key, keylen);
    *l = (struct limit_rec){
        .r = {.hash = ls->hash, .keylen = (uint32_t)keylen, .kind = REC_LIMIT},
        .rule = ls->id,
    };
    return l;
}

/*
 * After a miss or a stale find of key (hash eh, its shard among the locked ones): takes the
 * fill lease for lease_ms and returns true, or returns false when another caller holds it.
 * With no room in the limit budget for its record the lease is taken unrecorded.
 */
static bool
lease_take(struct store_memory *m, uint64_t locked, uint64_t eh, const char *key, size_t keylen,
           uint64_t now, uint64_t lease_ms)
{
    struct shard *sh = shard_at(m, eh);

    if (shard_find(m, sh, eh, REC_LEASE, key, keylen, NULL, now))
        return false;
    if (keylen > UINT32_MAX || !reserve_limit(m, locked, chunk(lease_size(keylen)), now)) {
        tally(&m->leases_unrecorded);
        return true;
    }
    struct rec *r = xmalloc(lease_size(keylen));
    memcpy(r + 1, key, keylen);
    *r = (struct rec){.hash = eh,
                      .expires_ms = sat_add(now, lease_ms),
                      .keylen = (uint32_t)keylen,
                      .kind = REC_LEASE};
    shard_insert(m, sh, r);
    lim_expires(sh, r->expires_ms);
    sh->nleases++;
    return true;
}

/* Releases key's fill lease, if any (its shard locked). */
static void
lease_release(struct store_memory *m, uint64_t eh, const char *key, size_t keylen, uint64_t now)
{
    struct shard *sh = shard_at(m, eh);
    struct rec *r = shard_find(m, sh, eh, REC_LEASE, key, keylen, NULL, now);

    if (r) {
        rec_unlink(sh, r);
        rec_free(m, sh, r);
    }
}

/*
 * Checks every limit of a (its shards locked) into a->results and
 * a->allowed; when all admit, records them, creating the records they lack
 * once the limit budget has room for those and for the logs' growth.
 * Returns false, having recorded nothing (a->allowed true), when it has no
 * room. One limit naming the same record as an earlier one adds to its cost.
 */
static bool
check_and_commit(struct store_memory *m, uint64_t locked, struct store_admit *a,
                 struct limit_slot *ls, uint64_t now)
{
    size_t need = 0;

    a->allowed = true;
    for (size_t i = 0; i < a->nlimits; i++) {
        const struct store_limit *l = &a->limits[i];
        ls[i].first = i;
        ls[i].cost = l->cost;
        ls[i].rec = NULL;
        for (size_t j = 0; j < i; j++) {
            if (ls[j].first == j && same_limit(&ls[j], &a->limits[j], &ls[i], l)) {
                ls[i].first = j;
                ls[j].cost += l->cost;
                break;
            }
        }
        if (ls[i].first == i)
            ls[i].rec =
                (struct limit_rec *)shard_find(m, shard_at(m, ls[i].hash), ls[i].hash, REC_LIMIT,
                                               l->key, l->keylen, &ls[i].id, now);
    }
    for (size_t i = 0; i < a->nlimits; i++) {
        if (ls[i].first != i)
            continue;
        struct limiter_state empty = {0};
        struct limiter_state *st = ls[i].rec ? &ls[i].rec->st : &empty;
        size_t was = log_charge(st);
        if (ls[i].cost > UINT32_MAX)
            ls[i].cost = UINT32_MAX;
        limiter_check(&ls[i].id, st, now, (uint32_t)ls[i].cost, &a->results[i]);
        if (log_charge(st) < was) /* the check dropped what left the window */
            budget_give(&m->lim, was - log_charge(st));
        a->allowed = a->allowed && a->results[i].allowed;
    }
    for (size_t i = 0; i < a->nlimits; i++)
        if (ls[i].first != i)
            a->results[i] = a->results[ls[i].first];
    if (!a->allowed)
        return true;

    for (size_t i = 0; i < a->nlimits; i++) {
        if (ls[i].first != i)
            continue;
        struct limiter_state empty = {0};
        struct limiter_state *st = ls[i].rec ? &ls[i].rec->st : &empty;
        size_t n = limiter_commit_bytes(&ls[i].id, st, now, (uint32_t)ls[i].cost);
        ls[i].log_after = n ? chunk(n) : 0;
        if (ls[i].log_after > log_charge(st))
            need += ls[i].log_after - log_charge(st);
        if (!ls[i].rec) {
            if (a->limits[i].keylen > UINT32_MAX)
                return false;
            need += chunk(limit_size(a->limits[i].keylen));
        }
    }
    if (!reserve_limit(m, locked, need, now))
        return false;
    for (size_t i = 0; i < a->nlimits; i++) {
        if (ls[i].first != i)
            continue;
        struct limit_rec *r = ls[i].rec;
        struct shard *sh = shard_at(m, ls[i].hash);
        if (!r) {
            r = limit_rec_new(&ls[i], a->limits[i].key, a->limits[i].keylen);
            shard_insert(m, sh, &r->r);
            sh->nlimits++;
        }
        size_t was = log_charge(&r->st);
        limiter_commit(&r->rule, &r->st, now, (uint32_t)ls[i].cost);
        assert(log_charge(&r->st) == ls[i].log_after);
        if (was > ls[i].log_after)
            budget_give(&m->lim, was - ls[i].log_after);
        r->r.expires_ms = limiter_expiry(&r->rule, &r->st);
        lim_expires(sh, r->r.expires_ms);
    }
    return true;
}

static void
mem_admit_and_lookup(struct store *s, struct store_admit *a, store_done_fn *done, void *arg)
{
    struct handle *h = (struct handle *)s;
    struct store_memory *m = h->m;
    struct limit_slot slots_buf[STACK_LIMITS];
    uint64_t th_buf[STACK_TAGS];
    struct limit_slot *ls =
        a->nlimits <= STACK_LIMITS ? slots_buf : xmalloc(a->nlimits * sizeof(*ls));
    uint64_t *th = a->ntags <= STACK_TAGS ? th_buf : xmalloc(a->ntags * sizeof(*th));
    uint64_t mask = 0, eh = 0, wider = 0, now;
    enum lookup found = LOOKUP_MISS;
    bool leased = false;

    for (size_t i = 0; i < a->nlimits; i++) {
        const struct store_limit *l = &a->limits[i];
        ls[i].id = rule_identity(l->rule);
        ls[i].hash = limit_hash(m, &ls[i].id, l->key, l->keylen);
        mask |= shard_bit(ls[i].hash);
    }
    if (a->cache_key) {
        eh = entry_hash(m, a->cache_key, a->cache_keylen);
        mask |= shard_bit(eh);
    }
    for (size_t i = 0; i < a->ntags; i++) {
        th[i] = tag_hash(m, a->tags[i], a->taglens[i]);
        mask |= shard_bit(th[i]);
    }

    lock_shards(m, mask);
    now = clock_now(m);
    a->refused_full = false;
    a->entry = NULL;
    a->lease_taken = false;
    if (!check_and_commit(m, mask, a, ls, now)) {
        /* No room: drop what expired in every shard, then try once more. */
        unlock_shards(m, mask, now);
        bool freed = reclaim_all(m, now);
        lock_shards(m, mask);
        now = clock_now(m);
        if (!freed || !check_and_commit(m, mask, a, ls, now)) {
            a->allowed = false;
            a->refused_full = true;
            tally(&m->limit_refused);
        }
    }
    a->now_ms = now;
    if (a->allowed) {
        for (size_t i = 0; i < a->ntags; i++)
            a->tag_gens[i] = tag_gen(m, th[i], a->tags[i], a->taglens[i], now, NULL);
        if (a->cache_key)
            found =
                entry_lookup(m, mask, eh, a->cache_key, a->cache_keylen, now, &wider, &a->entry);
        if ((found == LOOKUP_MISS || found == LOOKUP_STALE) && a->cache_key && a->lease_ms)
            leased = lease_take(m, mask, eh, a->cache_key, a->cache_keylen, now, a->lease_ms);
    } else {
        for (size_t i = 0; i < a->ntags; i++)
            a->tag_gens[i] = 0;
    }
    unlock_shards(m, mask, now);

    if (found == LOOKUP_WIDER) {
        /* The entry carries tags this request does not name: look again holding their shards. */
        uint64_t mask2 = shard_bit(eh) | wider;
        for (size_t i = 0; i < a->ntags; i++)
            mask2 |= shard_bit(th[i]);
        lock_shards(m, mask2);
        for (size_t i = 0; i < a->ntags; i++)
            a->tag_gens[i] = tag_gen(m, th[i], a->tags[i], a->taglens[i], now, NULL);
        found = entry_lookup(m, mask2, eh, a->cache_key, a->cache_keylen, now, &wider, &a->entry);
        if ((found == LOOKUP_MISS || found == LOOKUP_STALE) && a->lease_ms)
            leased = lease_take(m, mask2, eh, a->cache_key, a->cache_keylen, now, a->lease_ms);
        unlock_shards(m, mask2, now);
    }
    a->lease_taken = leased;
    if (found == LOOKUP_HIT)
        a->state = STORE_HIT;
    else if (found == LOOKUP_STALE)
        a->state = STORE_STALE;
    else
        a->state =
            a->cache_key && a->lease_ms && a->allowed && !leased ? STORE_FILLING : STORE_MISS;

    if (ls != slots_buf)
        free(ls);
    if (th != th_buf)
        free(th);
    rotate_sweep(h, now);
    done(arg, 0);
}

static struct entry_rec *
entry_rec_new(uint64_t hash, const char *key, size_t keylen, struct tag_rec *const *tags,
              const uint64_t *gens, size_t ntags)
{
    struct entry_rec *e = xmalloc(entry_size(ntags, keylen));

    memset(e, 0, sizeof(*e));
    e->r = (struct rec){.hash = hash, .keylen = (uint32_t)keylen, .kind = REC_ENTRY};
    e->ntags = (uint32_t)ntags;
    for (size_t i = 0; i < ntags; i++)
        e->tags[i] = (struct tag_ref){.tag = tags[i], .gen = gens[i]};
    memcpy(&e->tags[ntags], key, keylen);
    if (store_key_primary_len(key, keylen) < keylen)
        e->r.flags |= REC_SECONDARY;
    return e;
}

/*
 * Holds the record of each tag for an entry about to be stored, creating
 * those that have none with the generation in gens; each created record is
 * charged to the cache budget, and expires at once unless the caller extends
 * it (it does once the entry is stored). Fills tr[] and returns how many tags
 * it held: ntags, or fewer when it found no room (*moved false) or a tag's
 * generation is no longer the one in gens (*moved true: making room can drop
 * an idle record, which may raise its slot's floor).
 */
static size_t
hold_tags(struct store_memory *m, uint64_t locked, unsigned own, const char *const *tags,
          const size_t *taglens, const uint64_t *th, const uint64_t *gens, size_t ntags,
          uint64_t now, struct tag_rec **tr, bool *moved)
{
    *moved = false;
    for (size_t i = 0; i < ntags; i++) {
        struct shard *tsh = shard_at(m, th[i]);
        struct tag_rec *t;
        if (tag_gen(m, th[i], tags[i], taglens[i], now, &t) != gens[i]) {
            *moved = true;
            return i;
        }
        if (t) {
            tag_hold(tsh, t);
        } else {
            if (taglens[i] > UINT32_MAX ||
                !reserve_cache(m, locked, own, chunk(tag_size(taglens[i]))))
                return i;
            if (tag_gen(m, th[i], tags[i], taglens[i], now, NULL) != gens[i]) {
                budget_give(&m->cache, chunk(tag_size(taglens[i])));
                *moved = true;
                return i;
            }
            t = xmalloc(tag_size(taglens[i]));
            memcpy(t + 1, tags[i], taglens[i]);
            *t = (struct tag_rec){
                .r = {.hash = th[i], .keylen = (uint32_t)taglens[i], .kind = REC_TAG},
                .gen = gens[i],
                .refs = 1,
            };
            shard_insert(m, tsh, &t->r);
            TAILQ_INSERT_TAIL(&tsh->tags, t, lru);
            tsh->ntags++;
        }
        tr[i] = t;
    }
    return ntags;
}

static void
mem_fill(struct store *s, const char *key, size_t keylen, struct store_entry *entry,
         uint64_t ttl_ms, const char *const *tags, const size_t *taglens, const uint64_t *tag_gens,
         size_t ntags, store_done_fn *done, void *arg)
{
    struct handle *h = (struct handle *)s;
    struct store_memory *m = h->m;
    uint64_t th_buf[STACK_TAGS];
    struct tag_rec *tr_buf[STACK_TAGS];
    uint64_t *th = ntags <= STACK_TAGS ? th_buf : xmalloc(ntags * sizeof(*th));
    struct tag_rec **tr = ntags <= STACK_TAGS ? tr_buf : xmalloc(ntags * sizeof(*tr));
    uint64_t eh = entry_hash(m, key, keylen), mask = shard_bit(eh), now;
    unsigned own = shard_index(eh);
    struct shard *sh = shard_at(m, eh);
    size_t charge = entry_charge(entry, ntags, keylen), held_tags;
    uint64_t expires, keep;
    struct entry_rec *e;
    struct rec *old;
    bool moved;
    int status = 0;

    for (size_t i = 0; i < ntags; i++) {
        th[i] = tag_hash(m, tags[i], taglens[i]);
        mask |= shard_bit(th[i]);
    }
    lock_shards(m, mask);
    now = clock_now(m);
    lease_release(m, eh, key, keylen, now);

    for (size_t i = 0; i < ntags; i++) {
        if (tag_gen(m, th[i], tags[i], taglens[i], now, NULL) != tag_gens[i]) {
            status = -1; /* invalidated since the lookup */
            goto out;
        }
    }
    /* The new response supersedes the old one, stored or not. */
    old = shard_find(m, sh, eh, REC_ENTRY, key, keylen, NULL, now);
    if (old) {
        rec_unlink(sh, old);
        rec_free(m, sh, old);
    }
    if (ttl_ms == 0 && entry->stale_ms == 0)
        goto out;
    if (keylen > UINT32_MAX || ntags > UINT32_MAX || charge > m->cache.max) {
        tally(&m->not_stored);
        goto out;
    }
    expires = sat_add(now, ttl_ms);
    keep = sat_add(expires, entry->stale_ms);

    held_tags = hold_tags(m, mask, own, tags, taglens, th, tag_gens, ntags, now, tr, &moved);
    if (held_tags < ntags || !reserve_cache(m, mask, own, charge)) {
        /* Let go of the tags; those made for this entry are dead then, and dropped. */
        for (size_t i = 0; i < held_tags; i++)
            tag_unhold(m, tr[i]);
        for (size_t i = 0; i < held_tags; i++)
            tag_gen(m, th[i], tags[i], taglens[i], now, NULL);
        if (moved)
            status = -1;
        else
            tally(&m->not_stored);
        goto out;
    }
    for (size_t i = 0; i < ntags; i++)
        if (tr[i]->r.expires_ms < keep)
            tr[i]->r.expires_ms = keep; /* a tag outlives the entries that hold it */
    e = entry_rec_new(eh, key, keylen, tr, tag_gens, ntags);
    entry->stored_ms = now;
    entry->expires_ms = expires;
    store_entry_ref(entry);
    e->entry = entry;
    e->charge = charge;
    e->r.expires_ms = keep;
    shard_insert(m, sh, &e->r);
    TAILQ_INSERT_TAIL(&sh->lru, e, lru);
    sh->nentries++;
    sh->nsecondary += (e->r.flags & REC_SECONDARY) != 0;
out:
    unlock_shards(m, mask, now);
    if (th != th_buf)
        free(th);
    if (tr != tr_buf)
        free(tr);
    rotate_sweep(h, now);
    done(arg, status);
}

static void
mem_invalidate(struct store *s, const char *const *tags, const size_t *taglens, size_t ntags,
               store_done_fn *done, void *arg)
{
    struct handle *h = (struct handle *)s;
    struct store_memory *m = h->m;
    uint64_t th_buf[STACK_TAGS];
    uint64_t *th = ntags <= STACK_TAGS ? th_buf : xmalloc(ntags * sizeof(*th));
    uint64_t mask = 0, now = 0;

    for (size_t i = 0; i < ntags; i++) {
        th[i] = tag_hash(m, tags[i], taglens[i]);
        mask |= shard_bit(th[i]);
    }
    if (ntags > 0) {
        lock_shards(m, mask);
        now = clock_now(m);
        uint64_t gen = __atomic_add_fetch(&gen_counter, 1, __ATOMIC_SEQ_CST);
        for (size_t i = 0; i < ntags; i++) {
            struct tag_rec *t;
            tag_gen(m, th[i], tags[i], taglens[i], now, &t);
            if (t)
                t->gen = gen;
            else
                *floor_of(shard_at(m, th[i]), th[i]) = gen;
        }
        unlock_shards(m, mask, now);
        rotate_sweep(h, now);
    }
    if (th != th_buf)
        free(th);
    done(arg, 0);
}

/* Drops every live entry of the (locked) shard for which pred(ctx, key, keylen) holds, and the
 * dead records of its cache table; returns how many entries. */
static uint64_t
shard_remove_if(struct store_memory *m, struct shard *sh, uint64_t now,
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

struct prefix {
    const char *key;
    size_t len;
};

/* Whether key is a secondary of the primary p: p's key, STORE_KEY_SEP, anything. */
static bool
is_secondary_of(const void *ctx, const char *key, size_t keylen)
{
    const struct prefix *p = ctx;

    return keylen > p->len && key[p->len] == STORE_KEY_SEP && memcmp(key, p->key, p->len) == 0;
}

/* Removes key's entry and, for a primary, its secondaries. Returns how many. */
static uint64_t
delete_one(struct store_memory *m, const char *key, size_t keylen)
{
    uint64_t eh = entry_hash(m, key, keylen), n = 0;
    struct shard *sh = shard_at(m, eh);

    pthread_mutex_lock(&sh->lock);
    uint64_t now = clock_now(m);
    struct rec *r = shard_find(m, sh, eh, REC_ENTRY, key, keylen, NULL, now);
    if (r) {
        rec_unlink(sh, r);
        rec_free(m, sh, r);
        n++;
    }
    if (sh->nsecondary && store_key_primary_len(key, keylen) == keylen) {
        struct prefix p = {key, keylen};
        n += shard_remove_if(m, sh, now, is_secondary_of, &p);
    }
    pthread_mutex_unlock(&sh->lock);
    return n;
}

static void
mem_delete_keys(struct store *s, const char *const *keys, const size_t *lens, size_t n,
                store_count_fn *done, void *arg)
{
    struct handle *h = (struct handle *)s;
    uint64_t count = 0;

    for (size_t i = 0; i < n; i++)
        count += delete_one(h->m, keys[i], lens[i]);
    done(arg, 0, count);
}

static bool
glob_matches(const void *ctx, const char *key, size_t keylen)
{
    return store_key_matches(ctx, key, keylen);
}

static void
mem_invalidate_pattern(struct store *s, const char *glob, size_t globlen, store_count_fn *done,
                       void *arg)
{
    struct handle *h = (struct handle *)s;
    struct store_memory *m = h->m;
    char *g = xmalloc(globlen + 1);
    size_t litlen;
    uint64_t count = 0;

    if (memchr(glob, '\0', globlen)) {
        free(g);
        done(arg, -1, 0);
        return;
    }
    if (store_glob_literal(glob, globlen, g, &litlen)) {
        count = delete_one(m, g, litlen);
    } else {
        memcpy(g, glob, globlen);
        g[globlen] = '\0';
        for (unsigned i = 0; i < NSHARDS; i++) {
            struct shard *sh = &m->shards[i];
            pthread_mutex_lock(&sh->lock);
            count += shard_remove_if(m, sh, clock_now(m), glob_matches, g);
            pthread_mutex_unlock(&sh->lock);
        }
    }
    free(g);
    done(arg, 0, count);
}

static void
mem_destroy(struct store *s)
{
    free(s);
}

static void
mem_release_lease(struct store *s, const char *key, size_t keylen)
{
    struct store_memory *m = ((struct handle *)s)->m;
    uint64_t eh = entry_hash(m, key, keylen);

    lock_shards(m, shard_bit(eh));
    uint64_t now = clock_now(m);
    lease_release(m, eh, key, keylen, now);
    unlock_shards(m, shard_bit(eh), now);
}

static const struct store_ops memory_ops = {
    .name = "memory",
    .admit_and_lookup = mem_admit_and_lookup,
    .fill = mem_fill,
    .invalidate = mem_invalidate,
    .destroy = mem_destroy,
    .delete_keys = mem_delete_keys,
    .invalidate_pattern = mem_invalidate_pattern,
    .release_lease = mem_release_lease,
};

/* ---- the table ---------------------------------------------------------- */

static void
table_init(struct table *t)
{
    t->buckets = calloc(MIN_BUCKETS, sizeof(*t->buckets));
    if (!t->buckets) {
        fprintf(stderr, "sluice: out of memory (memory store)\n");
        abort();
    }
    t->mask = MIN_BUCKETS - 1;
}

struct store_memory *
store_memory_new(size_t cache_bytes, size_t limit_bytes)
{
    struct store_memory *m = aligned_alloc(64, sizeof(*m));

    if (!m) {
        fprintf(stderr, "sluice: out of memory (memory store)\n");
        abort();
    }
    memset(m, 0, sizeof(*m));
    m->cache.max = cache_bytes;
    m->lim.max = limit_bytes;
    if (getrandom(&m->seed, sizeof(m->seed), GRND_NONBLOCK) != sizeof(m->seed))
        m->seed = store_now_ms() ^ (uint64_t)(uintptr_t)m;
    for (unsigned i = 0; i < NSHARDS; i++) {
        struct shard *sh = &m->shards[i];
        pthread_mutex_init(&sh->lock, NULL);
        TAILQ_INIT(&sh->lru);
        TAILQ_INIT(&sh->tags);
        table_init(&sh->cache);
        table_init(&sh->lim);
        sh->lim_least = UINT64_MAX;
    }
    return m;
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
store_memory_free(struct store_memory *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < NSHARDS; i++) /* entries first: they hold tags */
        table_clear(m, &m->shards[i], &m->shards[i].cache, REC_ENTRY);
    for (unsigned i = 0; i < NSHARDS; i++) {
        struct shard *sh = &m->shards[i];
        table_clear(m, sh, &sh->cache, 0);
        table_clear(m, sh, &sh->lim, 0);
        free(sh->cache.buckets);
        free(sh->lim.buckets);
        pthread_mutex_destroy(&sh->lock);
    }
    free(m);
}

struct store *
store_memory_handle(struct store_memory *m)
{
    struct handle *h = xmalloc(sizeof(*h));

    *h = (struct handle){.base = {.ops = &memory_ops}, .m = m};
    return &h->base;
}

void
store_memory_set_clock(struct store_memory *m, uint64_t (*now)(void *ctx), void *ctx)
{
    m->now = now;
    m->now_ctx = ctx;
}

void
store_memory_stats(struct store_memory *m, struct store_memory_stats *out)
{
    *out = (struct store_memory_stats){
        .cache_max = m->cache.max,
        .limit_max = m->lim.max,
    };
    for (unsigned i = 0; i < NSHARDS; i++) {
        struct shard *sh = &m->shards[i];
        pthread_mutex_lock(&sh->lock);
        out->entries += sh->nentries;
        out->limits += sh->nlimits;
        out->tags += sh->ntags;
        out->leases += sh->nleases;
        pthread_mutex_unlock(&sh->lock);
    }
    /* the budgets' own counters: per-shard sums taken one by one could pass them */
    out->cache_bytes = __atomic_load_n(&m->cache.used, __ATOMIC_RELAXED);
    out->limit_bytes = __atomic_load_n(&m->lim.used, __ATOMIC_RELAXED);
    out->evicted_entries = __atomic_load_n(&m->evicted_entries, __ATOMIC_RELAXED);
    out->evicted_tags = __atomic_load_n(&m->evicted_tags, __ATOMIC_RELAXED);
    out->not_stored = __atomic_load_n(&m->not_stored, __ATOMIC_RELAXED);
    out->limit_reclaimed = __atomic_load_n(&m->limit_reclaimed, __ATOMIC_RELAXED);
    out->limit_refused = __atomic_load_n(&m->limit_refused, __ATOMIC_RELAXED);
    out->leases_unrecorded = __atomic_load_n(&m->leases_unrecorded, __ATOMIC_RELAXED);
}
