/* store_memory_table.h - the memory store's table and its two byte budgets; for store/ only. */
#ifndef SLUICE_STORE_MEMORY_TABLE_H
#define SLUICE_STORE_MEMORY_TABLE_H

#include <assert.h>
#include <malloc.h> /* malloc_usable_size */
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/queue.h>

#include "limiter.h"
#include "store.h"

/*
 * What store_memory.c (the store operations) and store_memory_table.c (the
 * table: records, hashing, charges and budgets, eviction, sweeping) share.
 * How the table is laid out, swept and charged is told at the top of
 * store_memory_table.c; what the operations guarantee with it, at the top of
 * store_memory.c. The operations call the table, never the other way.
 *
 * Locking: "(locked)" below means the caller holds the lock of the shard
 * named (or, for a hash, of the shard it falls in).
 */

#define SHARD_BITS 6
#define NSHARDS (1u << SHARD_BITS)
#define NFLOORS 64     /* generation floor slots per shard */
#define MIN_BUCKETS 16 /* per table; a power of two */

enum rec_kind { REC_LIMIT = 1, REC_ENTRY, REC_TAG, REC_LEASE };

#define REC_SECONDARY 0x01u /* an entry whose key holds STORE_KEY_SEP */
#define REC_IN_ENTRY 0x02u  /* an entry's record in its store_entry's room (below) */

/* A record's header; its key follows the record of its kind (rec_key()). */
struct rec {
    struct rec *next; /* bucket chain */
    uint64_t hash;
    uint64_t expires_ms; /* dropped at or after this time (a tag: once no entry holds it) */
    uint32_t keylen;
    uint8_t kind;
    uint8_t flags;
    uint16_t ntags; /* an entry's tag references; 0 for the other kinds */
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

/*
 * An entry's record, in one of two places (store_memory_table.c tells why):
 *
 *   in the entry (REC_IN_ENTRY)  the room of a store_entry_make() entry:
 *                                [store_entry][entry_rec][tag_ref...][key]...[fields][body],
 *                                one allocation. The record holds one reference on the
 *                                entry; the block goes with the last one (a lookup's may
 *                                outlive the record, whose bytes are then unused).
 *   held                         a block of its own, [entry_held][entry_rec][tag_ref...][key],
 *                                holding a reference on the entry (one without room enough).
 */
struct entry_rec {
    struct rec r;
    TAILQ_ENTRY(entry_rec) lru; /* in its shard's lru */
    struct tag_ref tags[];      /* r.ntags of them, then the key */
};

/* What precedes the record of a held entry in its block. */
struct entry_held {
    size_t charge;             /* bytes counted against the cache budget */
    struct store_entry *entry; /* one reference */
};

_Static_assert(sizeof(struct store_entry) % _Alignof(struct entry_rec) == 0,
               "a record in an entry's room follows its store_entry without padding");
_Static_assert(sizeof(struct entry_held) % _Alignof(struct entry_rec) == 0,
               "a held entry's record follows its entry_held without padding");

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
    size_t list_budget; /* records one listing walks at most (0: store_memory_list.h's default) */
};

/* Adds one to an atomic counter of the table. */
static inline void
tally(uint64_t *counter)
{
    __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

/* The table's clock, in ms. */
static inline uint64_t
clock_now(const struct store_memory *m)
{
    return m->now ? m->now(m->now_ctx) : store_now_ms();
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

/* The hash of len bytes at key under seed. */
uint64_t mt_hash_bytes(const void *key, size_t len, uint64_t seed);

/* Algorithm, limit, window and burst as they decide behaviour: what makes two limits the same. */
static inline struct limiter_rule
rule_identity(const struct limiter_rule *r)
{
    struct limiter_rule id = {.algo = r->algo, .limit = r->limit, .window_ms = r->window_ms};

    if (r->algo == LIMITER_TOKEN_BUCKET)
        id.burst = r->burst ? r->burst : r->limit;
    return id;
}

static inline bool
rule_eq(const struct limiter_rule *a, const struct limiter_rule *b)
{
    return a->algo == b->algo && a->limit == b->limit && a->window_ms == b->window_ms &&
           a->burst == b->burst;
}

/* The hash of a limit record: its key and its rule's identity id. */
static inline uint64_t
limit_hash(const struct store_memory *m, const struct limiter_rule *id, const char *key, size_t len)
{
    uint64_t s = m->seed ^ mum((uint64_t)id->algo ^ P2, id->limit ^ P3) ^
                 mum(id->window_ms ^ P0, id->burst ^ P1);
    return mt_hash_bytes(key, len, s);
}

/*
 * The hash of an entry record (and of its key's lease record). A secondary
 * entry's hash carries its primary's shard bits: both live in one shard.
 */
uint64_t mt_entry_hash(const struct store_memory *m, const char *key, size_t len);

/* The hash of a tag record. */
static inline uint64_t
tag_hash(const struct store_memory *m, const char *key, size_t len)
{
    return mt_hash_bytes(key, len, m->seed ^ P3);
}

static inline unsigned
shard_index(uint64_t hash)
{
    return (unsigned)(hash >> (64 - SHARD_BITS));
}

static inline uint64_t
shard_bit(uint64_t hash)
{
    return 1ull << shard_index(hash);
}

static inline struct shard *
shard_at(struct store_memory *m, uint64_t hash)
{
    return &m->shards[shard_index(hash)];
}

/* The generation floor of the tags of this hash that have no record (see store_memory.c). */
static inline uint64_t *
floor_of(struct shard *sh, uint64_t hash)
{
    return &sh->floors[(hash >> 32) & (NFLOORS - 1)];
}

/* ---- charges and budgets ------------------------------------------------ */

/* What the allocator holds for a block of n bytes: n and a word, in 16-byte units, at least 32. */
static inline size_t
chunk(size_t n)
{
    size_t c = (n + sizeof(size_t) + 15) & ~(size_t)15;

    return c < 32 ? 32 : c;
}

/* The sizes of the records of each kind (before chunk()), with a key of keylen bytes. */
static inline size_t
limit_size(size_t keylen)
{
    return sizeof(struct limit_rec) + keylen;
}

static inline size_t
tag_size(size_t keylen)
{
    return sizeof(struct tag_rec) + keylen;
}

static inline size_t
lease_size(size_t keylen)
{
    return sizeof(struct rec) + keylen;
}

/* An entry's record with its tag references and key (without what precedes it in its block). */
static inline size_t
entry_size(size_t ntags, size_t keylen)
{
    return sizeof(struct entry_rec) + ntags * sizeof(struct tag_ref) + keylen;
}

/* The charge of a limit state's sliding log (0: it has none). */
static inline size_t
log_charge(const struct limiter_state *st)
{
    size_t n = limiter_state_bytes(st);

    return n ? chunk(n) : 0;
}

/* What the allocator holds for the block p (NULL: nothing). */
static inline size_t
held(const void *p)
{
    return p ? malloc_usable_size((void *)p) + sizeof(size_t) : 0;
}

/* The response of an entry record (borrowed: the record holds one reference). */
static inline struct store_entry *
rec_entry(const struct entry_rec *e)
{
    if (e->r.flags & REC_IN_ENTRY)
        return (struct store_entry *)e - 1;
    return ((const struct entry_held *)e - 1)->entry;
}

/* What the allocator holds for the store_entry e and every block it owns. */
static inline size_t
store_entry_held(const struct store_entry *e)
{
    uint8_t in =
        __atomic_load_n(&e->packed, __ATOMIC_RELAXED); /* a filler may set the room's bit */

    return held(e) + (in & STORE_PACKED_CONTENT_TYPE ? 0 : held(e->content_type)) +
           (in & STORE_PACKED_HEADERS ? 0 : held(e->headers)) +
           (in & STORE_PACKED_ETAG ? 0 : held(e->etag)) +
           (in & STORE_PACKED_BODY ? 0 : held(e->body)) + held(e->coded);
}

/*
 * The charge of an entry record: what the allocator holds for the entry
 * and every block it owns, and for a held entry the record's own block, as
 * reckoned when it was made. (An entry is immutable once filled, so the
 * first is the same whenever it is reckoned.)
 */
static inline size_t
entry_rec_charge(const struct entry_rec *e)
{
    if (e->r.flags & REC_IN_ENTRY)
        return store_entry_held(rec_entry(e));
    return ((const struct entry_held *)e - 1)->charge;
}

/* Gives back n bytes charged to the budget. */
static inline void
budget_give(struct budget *b, size_t n)
{
    size_t was = __atomic_fetch_sub(&b->used, n, __ATOMIC_RELAXED);

    assert(was >= n);
    (void)was;
}

/* ---- records ------------------------------------------------------------ */

static inline const char *
rec_key(const struct rec *r)
{
    switch (r->kind) {
    case REC_LIMIT:
        return (const char *)((const struct limit_rec *)r + 1);
    case REC_ENTRY: {
        const struct entry_rec *e = (const struct entry_rec *)r;
        return (const char *)&e->tags[e->r.ntags];
    }
    case REC_TAG:
        return (const char *)((const struct tag_rec *)r + 1);
    default:
        return (const char *)(r + 1);
    }
}

/* Whether the record may be dropped at now: expired, and for a tag, held by no entry. */
static inline bool
rec_dead(const struct rec *r, uint64_t now)
{
    if (now < r->expires_ms)
        return false;
    return r->kind != REC_TAG ||
           __atomic_load_n(&((const struct tag_rec *)r)->refs, __ATOMIC_ACQUIRE) == 0;
}

/* Drops one entry's hold on tag t, from any thread; t may be freed by its shard right after. */
static inline void
tag_unhold(struct store_memory *m, struct tag_rec *t)
{
    struct shard *tsh = shard_at(m, t->r.hash); /* read before: t may go once refs is 0 */

    if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        __atomic_add_fetch(&tsh->idle_tags, 1, __ATOMIC_RELAXED);
}

/* One more entry holds tag t (its shard locked); it becomes the most recently used. */
static inline void
tag_hold(struct shard *tsh, struct tag_rec *t)
{
    if (__atomic_fetch_add(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        __atomic_sub_fetch(&tsh->idle_tags, 1, __ATOMIC_RELAXED);
    TAILQ_REMOVE(&tsh->tags, t, lru);
    TAILQ_INSERT_TAIL(&tsh->tags, t, lru);
}

/*
 * Links the new record r (hash, key and kind set; not yet counted by its
 * kind's counter, which the caller keeps) into its table of the (locked)
 * shard sh, growing the table when its budget has room. Its charge is the
 * caller's to have taken.
 */
void mt_insert(struct store_memory *m, struct shard *sh, struct rec *r);

/*
 * Returns the live record of this kind and key (and rule identity id, for
 * limits; NULL otherwise) in the (locked) shard sh, or NULL. Dead records met
 * on the way are dropped; a record returned is not dead at `now`, so later
 * calls with the same `now` keep it.
 */
struct rec *mt_find(struct store_memory *m, struct shard *sh, uint64_t hash, enum rec_kind kind,
                    const char *key, size_t keylen, const struct limiter_rule *id, uint64_t now);

/*
 * Returns a new entry record for the response `entry` under key (hash, the
 * key copied, r.ntags set; tag references, expiry and links for the caller
 * to set), with no lock held: in the entry's room when it has room enough
 * and no record there yet, else in a block of its own. Takes a reference on
 * entry. *charge is what it will cost the cache budget. Freed with
 * mt_entry_free() until it is inserted.
 */
struct entry_rec *mt_entry_new(struct store_entry *entry, uint64_t hash, const char *key,
                               size_t keylen, size_t ntags, size_t *charge);

/*
 * Frees an entry record and drops its reference on the entry: one never
 * inserted (its room, if it was in one, free again), or one unlinked.
 */
void mt_entry_free(struct entry_rec *e, bool inserted);

/*
 * Unlinks record r from its table of the (locked) shard sh and frees it with
 * what it owns (an entry's reference and tag holds), giving back its charge.
 */
void mt_remove(struct store_memory *m, struct shard *sh, struct rec *r);

/*
 * Drops every live entry of the (locked) shard for which pred(ctx, key,
 * keylen) holds, and the dead records of its cache table; returns how many
 * entries.
 */
uint64_t mt_remove_if(struct store_memory *m, struct shard *sh, uint64_t now,
                      bool (*pred)(const void *ctx, const char *key, size_t keylen),
                      const void *ctx);

/* The tag's current generation; *out is its record, or NULL when it has none. Shard locked. */
static inline uint64_t
tag_gen(struct store_memory *m, uint64_t hash, const char *key, size_t len, uint64_t now,
        struct tag_rec **out)
{
    struct shard *sh = shard_at(m, hash);
    struct tag_rec *t = (struct tag_rec *)mt_find(m, sh, hash, REC_TAG, key, len, NULL, now);

    if (out)
        *out = t;
    return t ? t->gen : *floor_of(sh, hash);
}

/* ---- locking and sweeping ----------------------------------------------- */

/* Locks the shards of mask (a bit per shard), in ascending order. */
static inline void
lock_shards(struct store_memory *m, uint64_t mask)
{
    for (; mask; mask &= mask - 1)
        pthread_mutex_lock(&m->shards[__builtin_ctzll(mask)].lock);
}

/* Sweeps what inserts made due in the locked shards of mask, then unlocks them. */
void mt_unlock_shards(struct store_memory *m, uint64_t mask, uint64_t now);

/* Sweeps a batch of buckets of both tables of shard i, if its lock is free. */
void mt_sweep_shard(struct store_memory *m, unsigned i, uint64_t now);

/* ---- the cache budget --------------------------------------------------- */

/*
 * Charges n bytes to the cache budget, evicting to make room: idle tag
 * records, then least recently used entries; of the (locked) shard `own`
 * first, then of the other locked shards, then of the others whose lock is
 * free. False, having charged nothing, if it can't.
 */
bool mt_reserve_cache(struct store_memory *m, uint64_t locked, unsigned own, size_t n);

/* ---- the limit budget --------------------------------------------------- */

/* A record of the (locked) shard's limit table now expires at `expires`. */
static inline void
lim_expires(struct shard *sh, uint64_t expires)
{
    if (expires < sh->lim_least)
        __atomic_store_n(&sh->lim_least, expires, __ATOMIC_RELAXED);
}

/*
 * Charges n bytes to the limit budget. When it is full, first drops the
 * expired limit states and leases of the locked shards; false if that made
 * no room (the caller may then mt_reclaim_all() with no lock held).
 */
bool mt_reserve_limit(struct store_memory *m, uint64_t locked, size_t n, uint64_t now);

/*
 * With no shard locked: drops the expired limit states and leases of every
 * shard that may hold one. Returns whether it freed any.
 */
bool mt_reclaim_all(struct store_memory *m, uint64_t now);

/* ---- shards ------------------------------------------------------------- */

/* Sets up an empty shard (aborts when out of memory). */
void mt_shard_init(struct shard *sh);

/* Frees every record of kind `only` (0: every kind) of the shard. */
void mt_shard_clear(struct store_memory *m, struct shard *sh, int only);

/* Frees what an empty shard holds (its buckets, its lock). */
void mt_shard_fini(struct shard *sh);

#endif
