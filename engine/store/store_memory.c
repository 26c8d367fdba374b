/* store_memory.c - the embedded store: one sharded in-process table of limits, entries and tags. */
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
 * Layout. The table is split into NSHARDS shards, each a chained hash table
 * behind its own mutex. A record is one of four kinds:
 *
 *   limit  key + rule identity (algorithm, limit, window, burst) -> limiter state.
 *          Two rules naming the same key string are two records.
 *   entry  cache key -> a store_entry reference, its expiry, and the tags it
 *          was filled under with the generation each had at the lookup. The
 *          record lives until the entry's expires_ms + stale_ms; past
 *          expires_ms a lookup reports it STALE. A secondary entry (its key
 *          holds STORE_KEY_SEP) lives in its primary's shard: its hash takes
 *          the shard bits of the primary's, so removing a primary walks that
 *          one shard for its secondaries (only when the shard holds any).
 *   tag    tag -> generation, and an expiry: the latest expiry of any entry
 *          filled under it, so a tag outlives every entry that depends on it.
 *   lease  cache key -> nothing but an expiry: a caller is filling the key
 *          (fill lease). It lives in the entry's shard, under the entry's hash.
 *
 * Every record has an expiry. Expired records are dropped when a lookup
 * walks past them, and by an incremental sweep: every insert pays for
 * sweeping a couple of buckets of its shard (so under churn of many keys a
 * shard is swept once for every half-table of inserts, and dead records
 * stay a bounded fraction of the table), and each handle, every
 * ROTATE_EVERY operations, sweeps a batch of the next shard in turn, so
 * shards that see no inserts are cleaned too. Hits insert nothing and so
 * sweep little. A shard shrinks when it is mostly empty.
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
 *   - An entry is a hit only while every one of its tags has a record whose
 *     generation equals the stored one. Once a tag moved on it never comes
 *     back to the stored value, so an invalidated entry stays dead; and a
 *     tag record cannot vanish while an entry needs it, since it expires no
 *     earlier than the entry (if it did vanish, the entry would miss).
 *
 * Removal by key or pattern. delete_keys locks one key's shard at a time;
 * invalidate_pattern walks the shards one after the other, each whole under
 * its lock (a bounded slice: a 64th of the table), dropping every entry whose
 * key matches.
 *
 * Byte budget. Entries are charged body_len + headers_len + key length against one global
 * counter reserved with compare-and-swap, so the total never passes
 * max_bytes. To make room, a fill evicts least recently used entries of its
 * own shard first (each shard keeps an LRU list), then of the other shards
 * it holds, then tries the others without waiting for their locks.
 */

#define SHARD_BITS 6
#define NSHARDS (1u << SHARD_BITS)
#define NFLOORS 64         /* generation floor slots per shard */
#define MIN_BUCKETS 16     /* per shard; a power of two */
#define SWEEP_PER_INSERT 2 /* buckets of a shard swept for each record inserted there */
#define ROTATE_EVERY 64    /* operations of a handle between sweeps of the next shard */
#define ROTATE_BUCKETS 32  /* buckets swept then */
#define STACK_LIMITS 8     /* limits of a request handled without allocating */
#define STACK_TAGS 16      /* tags likewise */

enum rec_kind { REC_LIMIT = 1, REC_ENTRY, REC_TAG, REC_LEASE };

struct rec {
    struct rec *next; /* bucket chain */
    uint64_t hash;
    uint64_t expires_ms; /* dropped at or after this time */
    const char *key;     /* keylen bytes, in the same allocation */
    size_t keylen;
    enum rec_kind kind;
};

struct limit_rec {
    struct rec r;
    struct limiter_rule rule; /* identity, normalised by rule_identity() */
    struct limiter_state st;
};

struct tag_ref {
    uint64_t hash;
    uint64_t gen; /* at the lookup that led to the fill */
    const char *key;
    size_t len;
};

struct entry_rec {
    struct rec r;
    TAILQ_ENTRY(entry_rec) lru; /* in its shard's lru */
    struct store_entry *entry;  /* one reference */
    size_t charge;              /* bytes counted against the budget */
    bool secondary;             /* its key holds STORE_KEY_SEP */
    size_t ntags;
    struct tag_ref tags[];
};

struct tag_rec {
    struct rec r;
    uint64_t gen;
};

struct shard {
    pthread_mutex_t lock;
    struct rec **buckets;
    size_t mask; /* bucket count - 1 */
    size_t count;
    size_t sweep_pos;
    size_t sweep_due; /* buckets to sweep before unlocking */
    size_t nentries, nlimits, ntags;
    size_t nsecondary;           /* secondary entries among nentries */
    TAILQ_HEAD(, entry_rec) lru; /* entries, least recently used first */
    uint64_t floors[NFLOORS];
} __attribute__((aligned(64)));

struct store_memory {
    struct shard shards[NSHARDS];
    size_t max_bytes;
    size_t bytes;        /* atomic: charged bytes of every shard */
    unsigned evict_next; /* atomic: where eviction starts among unlocked shards */
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

/* ---- records ------------------------------------------------------------ */

/* Frees a record already unlinked from its bucket, and what it owns. */
static void
rec_free(struct store_memory *m, struct shard *sh, struct rec *r)
{
    switch (r->kind) {
    case REC_LIMIT: {
        struct limit_rec *l = (struct limit_rec *)r;
        limiter_state_clear(&l->st);
        sh->nlimits--;
        break;
    }
    case REC_ENTRY: {
        struct entry_rec *e = (struct entry_rec *)r;
        TAILQ_REMOVE(&sh->lru, e, lru);
        store_entry_release(e->entry);
        __atomic_sub_fetch(&m->bytes, e->charge, __ATOMIC_RELAXED);
        sh->nentries--;
        if (e->secondary)
            sh->nsecondary--;
        break;
    }
    case REC_TAG: {
        struct tag_rec *t = (struct tag_rec *)r;
        uint64_t *fl = floor_of(sh, r->hash);
        if (*fl < t->gen)
            *fl = t->gen;
        sh->ntags--;
        break;
    }
    case REC_LEASE:
        break;
    }
    sh->count--;
    free(r);
}

static void
rec_unlink(struct shard *sh, struct rec *r)
{
    struct rec **pp = &sh->buckets[r->hash & sh->mask];

    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
}

static void
shard_resize(struct shard *sh, size_t nbuckets)
{
    struct rec **nb = calloc(nbuckets, sizeof(*nb));

    if (!nb)
        return; /* longer chains, still correct */
    for (size_t i = 0; i <= sh->mask; i++) {
        struct rec *r = sh->buckets[i], *next;
        for (; r; r = next) {
            next = r->next;
            r->next = nb[r->hash & (nbuckets - 1)];
            nb[r->hash & (nbuckets - 1)] = r;
        }
    }
    free(sh->buckets);
    sh->buckets = nb;
    sh->mask = nbuckets - 1;
}

static void
shard_insert(struct shard *sh, struct rec *r)
{
    if (sh->count >= sh->mask + 1)
        shard_resize(sh, (sh->mask + 1) * 2);
    struct rec **b = &sh->buckets[r->hash & sh->mask];
    r->next = *b;
    *b = r;
    sh->count++;
    sh->sweep_due += SWEEP_PER_INSERT;
}

/*
 * Returns the live record of this kind and key (and rule, for limits), or
 * NULL. Expired records met on the way are dropped; a record returned is
 * not expired at `now`, so later calls with the same `now` keep it.
 */
static struct rec *
shard_find(struct store_memory *m, struct shard *sh, uint64_t hash, enum rec_kind kind,
           const char *key, size_t keylen, const struct limiter_rule *id, uint64_t now)
{
    struct rec **pp = &sh->buckets[hash & sh->mask];

    while (*pp) {
        struct rec *r = *pp;
        if (now >= r->expires_ms) {
            *pp = r->next;
            rec_free(m, sh, r);
            continue;
        }
        if (r->hash == hash && r->kind == kind && r->keylen == keylen &&
            memcmp(r->key, key, keylen) == 0 &&
            (kind != REC_LIMIT || rule_eq(&((struct limit_rec *)r)->rule, id)))
            return r;
        pp = &r->next;
    }
    return NULL;
}

static void
shard_sweep(struct store_memory *m, struct shard *sh, size_t nbuckets, uint64_t now)
{
    for (size_t n = 0; n < nbuckets && n <= sh->mask; n++) {
        struct rec **pp = &sh->buckets[sh->sweep_pos++ & sh->mask];
        while (*pp) {
            struct rec *r = *pp;
            if (now >= r->expires_ms) {
                *pp = r->next;
                rec_free(m, sh, r);
            } else {
                pp = &r->next;
            }
        }
    }
    if (sh->mask + 1 > MIN_BUCKETS && sh->count * 8 < sh->mask + 1)
        shard_resize(sh, (sh->mask + 1) / 2);
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
        if (sh->sweep_due) {
            shard_sweep(m, sh, sh->sweep_due, now);
            sh->sweep_due = 0;
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
    shard_sweep(h->m, sh, ROTATE_BUCKETS, now);
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

/* ---- byte budget -------------------------------------------------------- */

static bool
evict_lru(struct store_memory *m, struct shard *sh)
{
    struct entry_rec *e = TAILQ_FIRST(&sh->lru);

    if (!e)
        return false;
    rec_unlink(sh, &e->r);
    rec_free(m, sh, &e->r);
    return true;
}

static bool
evict_one(struct store_memory *m, uint64_t locked, unsigned own)
{
    if (evict_lru(m, &m->shards[own]))
        return true;
    for (uint64_t b = locked & ~(1ull << own); b; b &= b - 1)
        if (evict_lru(m, &m->shards[__builtin_ctzll(b)]))
            return true;
    unsigned start = __atomic_fetch_add(&m->evict_next, 1, __ATOMIC_RELAXED);
    for (unsigned k = 0; k < NSHARDS; k++) {
        unsigned i = (start + k) % NSHARDS;
        if (locked & (1ull << i))
            continue;
        struct shard *sh = &m->shards[i];
        if (pthread_mutex_trylock(&sh->lock) != 0)
            continue;
        bool ok = evict_lru(m, sh);
        pthread_mutex_unlock(&sh->lock);
        if (ok)
            return true;
    }
    return false;
}

/* Charges `charge` bytes (<= max_bytes) to the budget, evicting to make room; false if it can't. */
static bool
reserve(struct store_memory *m, uint64_t locked, unsigned own, size_t charge)
{
    size_t cur = __atomic_load_n(&m->bytes, __ATOMIC_RELAXED);

    for (;;) {
        if (cur <= m->max_bytes - charge) {
            if (__atomic_compare_exchange_n(&m->bytes, &cur, cur + charge, true, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED))
                return true;
            continue;
        }
        if (!evict_one(m, locked, own))
            return false;
        cur = __atomic_load_n(&m->bytes, __ATOMIC_RELAXED);
    }
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
    for (size_t i = 0; i < e->ntags; i++)
        need |= shard_bit(e->tags[i].hash);
    if (need & ~locked) {
        *wider = need;
        return LOOKUP_WIDER;
    }
    for (size_t i = 0; i < e->ntags; i++) {
        struct tag_ref *t = &e->tags[i];
        struct tag_rec *tr;
        tag_gen(m, t->hash, t->key, t->len, now, &tr);
        if (!tr || tr->gen != t->gen) {
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
    struct limit_rec *l = xmalloc(sizeof(*l) + keylen);
    char *k = (char *)(l + 1);

    memcpy(k, key, keylen);
    *l = (struct limit_rec){
        .r = {.hash = ls->hash, .key = k, .keylen = keylen, .kind = REC_LIMIT},
        .rule = ls->id,
    };
    return l;
}

/*
 * After a miss or a stale find of key (hash eh, its shard locked): takes the fill lease for
 * lease_ms and returns true, or returns false when another caller holds it.
 */
static bool
lease_take(struct store_memory *m, uint64_t eh, const char *key, size_t keylen, uint64_t now,
           uint64_t lease_ms)
{
    struct shard *sh = shard_at(m, eh);

    if (shard_find(m, sh, eh, REC_LEASE, key, keylen, NULL, now))
        return false;
    struct rec *r = xmalloc(sizeof(*r) + keylen);
    char *k = (char *)(r + 1);
    memcpy(k, key, keylen);
    *r = (struct rec){.hash = eh,
                      .expires_ms = sat_add(now, lease_ms),
                      .key = k,
                      .keylen = keylen,
                      .kind = REC_LEASE};
    shard_insert(sh, r);
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
    a->now_ms = now;
    a->allowed = true;
    a->entry = NULL;
    a->lease_taken = false;

    /* Check every limit; one naming the same record as an earlier one adds to its cost. */
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
        if (ls[i].cost > UINT32_MAX)
            ls[i].cost = UINT32_MAX;
        limiter_check(&ls[i].id, ls[i].rec ? &ls[i].rec->st : &empty, now, (uint32_t)ls[i].cost,
                      &a->results[i]);
        a->allowed = a->allowed && a->results[i].allowed;
    }
    for (size_t i = 0; i < a->nlimits; i++)
        if (ls[i].first != i)
            a->results[i] = a->results[ls[i].first];

    if (a->allowed) {
        for (size_t i = 0; i < a->nlimits; i++) {
            if (ls[i].first != i)
                continue;
            struct limit_rec *r = ls[i].rec;
            if (!r) {
                r = limit_rec_new(&ls[i], a->limits[i].key, a->limits[i].keylen);
                shard_insert(shard_at(m, ls[i].hash), &r->r);
                shard_at(m, ls[i].hash)->nlimits++;
            }
            limiter_commit(&r->rule, &r->st, now, (uint32_t)ls[i].cost);
            r->r.expires_ms = limiter_expiry(&r->rule, &r->st);
        }
        for (size_t i = 0; i < a->ntags; i++)
            a->tag_gens[i] = tag_gen(m, th[i], a->tags[i], a->taglens[i], now, NULL);
        if (a->cache_key)
            found =
                entry_lookup(m, mask, eh, a->cache_key, a->cache_keylen, now, &wider, &a->entry);
        if ((found == LOOKUP_MISS || found == LOOKUP_STALE) && a->cache_key && a->lease_ms)
            leased = lease_take(m, eh, a->cache_key, a->cache_keylen, now, a->lease_ms);
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
            leased = lease_take(m, eh, a->cache_key, a->cache_keylen, now, a->lease_ms);
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
entry_rec_new(uint64_t hash, const char *key, size_t keylen, const char *const *tags,
              const size_t *taglens, const uint64_t *th, const uint64_t *gens, size_t ntags)
{
    size_t size = sizeof(struct entry_rec) + ntags * sizeof(struct tag_ref) + keylen;

    for (size_t i = 0; i < ntags; i++)
        size += taglens[i];
    struct entry_rec *e = xmalloc(size);
    char *p = (char *)&e->tags[ntags];

    memset(e, 0, sizeof(*e));
    memcpy(p, key, keylen);
    e->r = (struct rec){.hash = hash, .key = p, .keylen = keylen, .kind = REC_ENTRY};
    p += keylen;
    e->ntags = ntags;
    for (size_t i = 0; i < ntags; i++) {
        memcpy(p, tags[i], taglens[i]);
        e->tags[i] = (struct tag_ref){.hash = th[i], .gen = gens[i], .key = p, .len = taglens[i]};
        p += taglens[i];
    }
    return e;
}

static void
mem_fill(struct store *s, const char *key, size_t keylen, struct store_entry *entry,
         uint64_t ttl_ms, const char *const *tags, const size_t *taglens, const uint64_t *tag_gens,
         size_t ntags, store_done_fn *done, void *arg)
{
    struct handle *h = (struct handle *)s;
    struct store_memory *m = h->m;
    uint64_t th_buf[STACK_TAGS];
    uint64_t *th = ntags <= STACK_TAGS ? th_buf : xmalloc(ntags * sizeof(*th));
    uint64_t eh = entry_hash(m, key, keylen), mask = shard_bit(eh), now;
    struct shard *sh = shard_at(m, eh);
    size_t charge = entry->body_len + entry->headers_len + keylen;
    uint64_t expires, keep;
    struct entry_rec *e;
    struct rec *old;
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
    if ((ttl_ms == 0 && entry->stale_ms == 0) || charge > m->max_bytes)
        goto out;
    expires = sat_add(now, ttl_ms);
    keep = sat_add(expires, entry->stale_ms);

    for (size_t i = 0; i < ntags; i++) {
        struct tag_rec *t;
        tag_gen(m, th[i], tags[i], taglens[i], now, &t);
        if (!t) {
            struct shard *tsh = shard_at(m, th[i]);
            t = xmalloc(sizeof(*t) + taglens[i]);
            char *k = (char *)(t + 1);
            memcpy(k, tags[i], taglens[i]);
            *t = (struct tag_rec){
                .r = {.hash = th[i], .key = k, .keylen = taglens[i], .kind = REC_TAG},
                .gen = tag_gens[i], /* the slot's floor, as checked above */
            };
            shard_insert(tsh, &t->r);
            tsh->ntags++;
        }
        if (t->r.expires_ms < keep)
            t->r.expires_ms = keep;
    }

    e = entry_rec_new(eh, key, keylen, tags, taglens, th, tag_gens, ntags);
    if (!reserve(m, mask, shard_index(eh), charge)) {
        free(e);
        goto out;
    }
    entry->stored_ms = now;
    entry->expires_ms = expires;
    store_entry_ref(entry);
    e->entry = entry;
    e->charge = charge;
    e->r.expires_ms = keep;
    e->secondary = store_key_primary_len(key, keylen) < keylen;
    shard_insert(sh, &e->r);
    TAILQ_INSERT_TAIL(&sh->lru, e, lru);
    sh->nentries++;
    sh->nsecondary += e->secondary;
out:
    unlock_shards(m, mask, now);
    if (th != th_buf)
        free(th);
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

/* Drops every live entry of the (locked) shard for which pred(ctx, key, keylen) holds; returns
 * how many. */
static uint64_t
shard_remove_if(struct store_memory *m, struct shard *sh, uint64_t now,
                bool (*pred)(const void *ctx, const char *key, size_t keylen), const void *ctx)
{
    uint64_t n = 0;

    for (size_t b = 0; b <= sh->mask; b++) {
        struct rec **pp = &sh->buckets[b];
        while (*pp) {
            struct rec *r = *pp;
            bool expired = now >= r->expires_ms;
            if (expired || (r->kind == REC_ENTRY && pred(ctx, r->key, r->keylen))) {
                *pp = r->next;
                n += !expired;
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

struct store_memory *
store_memory_new(size_t max_bytes)
{
    struct store_memory *m = aligned_alloc(64, sizeof(*m));

    if (!m) {
        fprintf(stderr, "sluice: out of memory (memory store)\n");
        abort();
    }
    memset(m, 0, sizeof(*m));
    m->max_bytes = max_bytes;
    if (getrandom(&m->seed, sizeof(m->seed), GRND_NONBLOCK) != sizeof(m->seed))
        m->seed = store_now_ms() ^ (uint64_t)(uintptr_t)m;
    for (unsigned i = 0; i < NSHARDS; i++) {
        struct shard *sh = &m->shards[i];
        pthread_mutex_init(&sh->lock, NULL);
        TAILQ_INIT(&sh->lru);
        sh->buckets = calloc(MIN_BUCKETS, sizeof(*sh->buckets));
        if (!sh->buckets) {
            fprintf(stderr, "sluice: out of memory (memory store)\n");
            abort();
        }
        sh->mask = MIN_BUCKETS - 1;
    }
    return m;
}

void
store_memory_free(struct store_memory *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < NSHARDS; i++) {
        struct shard *sh = &m->shards[i];
        for (size_t b = 0; b <= sh->mask; b++) {
            struct rec *r = sh->buckets[b], *next;
            for (; r; r = next) {
                next = r->next;
                rec_free(m, sh, r);
            }
        }
        free(sh->buckets);
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
store_memory_stats(struct store_memory *m, size_t *entries, size_t *limits, size_t *tags,
                   size_t *bytes)
{
    size_t e = 0, l = 0, t = 0;

    for (unsigned i = 0; i < NSHARDS; i++) {
        struct shard *sh = &m->shards[i];
        pthread_mutex_lock(&sh->lock);
        e += sh->nentries;
        l += sh->nlimits;
        t += sh->ntags;
        pthread_mutex_unlock(&sh->lock);
    }
    if (entries)
        *entries = e;
    if (limits)
        *limits = l;
    if (tags)
        *tags = t;
    if (bytes) /* the budget's own counter: per-shard sums taken one by one could pass it */
        *bytes = __atomic_load_n(&m->bytes, __ATOMIC_RELAXED);
}
