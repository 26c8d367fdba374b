/* store.h - the store contract: rate limits, cache entries and tag generations. */
#ifndef SLUICE_STORE_H
#define SLUICE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "hist.h"

#include "limiter.h"

/* One limit to check for a request. */
struct store_limit {
    const struct limiter_rule *rule; /* borrowed */
    const char *key;                 /* borrowed, keylen bytes */
    size_t keylen;
    uint32_t cost;
    bool fail_closed; /* when the store is unavailable: refuse the request instead of
                         checking this limit in-process (store_failover); not for a shadow one */
    bool shadow;      /* shadow mode: checked and counted exactly as an enforced limit (same
                         counter, same math), but its refusal does not refuse the request:
                         store_admit.allowed ignores it. Charged only when the request is
                         admitted and it admits too; its result is reported as any other's */
};

/* Kinds of entry (store_entry.flags). */
#define STORE_ENTRY_PASS                                                                           \
    0x01u /* hit-for-miss: the origin's answer was not cacheable; a                                \
             lookup finding this goes to the origin without a lease */
#define STORE_ENTRY_VARY                                                                           \
    0x02u /* the answer varies: body holds the lowercased header names                             \
             of the origin's Vary, comma-separated; the response itself                            \
             is under a secondary key built from their values */
#define STORE_ENTRY_VALIDATE                                                                       \
    0x04u /* every use is validated with the origin first (a response no-cache): a lookup          \
             reports it as usual, the gateway treats a hit as stale */
#define STORE_ENTRY_MUST_REVALIDATE                                                                \
    0x10u /* once stale it is never served without validation (must-revalidate and its             \
             kin, RFC 9111 section 5.2.2.2): not even to a request's max-stale */
#define STORE_ENTRY_AUTHORIZED                                                                     \
    0x20u /* the answer said public, must-revalidate or s-maxage: it may serve a request with      \
             Authorization under a key that does not name the caller (RFC 9111 section 3.5) */
#define STORE_ENTRY_ORIGIN_ETAG                                                                    \
    0x08u /* etag is the origin's own (not a hash of the body), so it may be sent upstream in      \
             If-None-Match to revalidate */

/* Which owned fields of an entry live in its own block (store_entry.packed). */
#define STORE_PACKED_CONTENT_TYPE 0x01u
#define STORE_PACKED_HEADERS 0x02u
#define STORE_PACKED_ETAG 0x04u
#define STORE_PACKED_BODY 0x08u
#define STORE_PACKED_ROOM_TAKEN 0x10u /* a store keeps its record in the entry's room */

/*
 * The coded forms of an entry's body (Content-Encoding; RFC 9110 section 8.4), made once when
 * the entry is filled: one block, its bodies following it (gateway) or pointing into the block
 * of the entry's body (the Redis codec). A coding with len 0 is not held (not offered for that
 * entry, or its form was no smaller than the body).
 */
struct store_coded {
    const char *body[CODEC_N]; /* borrowed from the block or the entry's body's block */
    uint32_t len[CODEC_N];
};

/*
 * A cached response. Immutable once filled; shared by reference count. Its
 * content type, header lines, ETag and body are each either a separate
 * allocation it owns (store_entry_new(), or assigned later) or bytes of its
 * own block (store_entry_make(): one allocation for all, and room for a
 * store's record of it).
 */
struct store_entry {
    uint32_t refs;       /* atomic; use store_entry_ref/release */
    uint16_t status;     /* HTTP status to replay */
    uint8_t flags;       /* STORE_ENTRY_* */
    uint8_t packed;      /* STORE_PACKED_*: the fields in the entry's block; the room's use */
    uint64_t stored_ms;  /* store clock at fill, for Age; set by store_fill() */
    uint64_t expires_ms; /* store clock at which it stops being fresh; set by store_fill() */
    uint64_t stale_ms;   /* kept this long past expires_ms to be served stale or revalidated
                            (set by the filler before store_fill(); 0: dropped when it expires) */
    uint64_t age_ms;     /* the answer's age when it was stored (RFC 9111 section 4.2.3's
                            corrected initial age): its Age is age_ms + now - stored_ms */
    uint64_t swr_ms;     /* served stale this long past expires_ms while one refresh runs */
    uint64_t sie_ms;     /* served stale this long past expires_ms when the origin fails */
    char *content_type;  /* owned, NUL-terminated, or NULL */
    char *headers;       /* owned: stored response header lines "Name: value\r\n", or NULL */
    uint32_t headers_len;
    uint32_t room; /* bytes right after the entry a store may keep its record in (see
                      store_entry_make(), store_record_room()); 0 for store_entry_new() */
    char *etag;    /* owned: the entity tag with its quotes ("\"x\"" or W/"x"), or NULL */
    char *body;    /* owned */
    size_t body_len;
    struct store_coded *coded; /* owned, its own block; NULL: served as it is to everyone. When
                                  set, the answer varies on Accept-Encoding (even for a client
                                  given the identity body) */
};

enum store_cache_state {
    STORE_MISS = 0,
    STORE_HIT,
    STORE_STALE,   /* expired but within its stale_ms: entry is set (tag-invalidated entries
                      are never stale: they are gone) */
    STORE_FILLING, /* another caller holds the fill lease */
};

/* Input and output of store_admit_and_lookup(). The caller owns every array. */
struct store_admit {
    /* in */
    const struct store_limit *limits;
    size_t nlimits;
    const char *cache_key; /* NULL: no cache lookup */
    size_t cache_keylen;
    const char *const *tags; /* tags the entry would carry; their generations are the lease */
    const size_t *taglens;
    size_t ntags;
    uint64_t lease_ms; /* 0, or on a miss take the fill lease of cache_key for this long:
                          a miss then means "you fill", and while the lease is held other
                          lookups asking for it get STORE_FILLING; store_fill() releases it */
    bool peek;         /* check the limits only: results and allowed say what the request
                          would get, and nothing is counted (no cache_key, no tags) */

    /* out */
    struct limiter_result *results; /* nlimits slots, filled (shadow limits' too) */
    bool allowed; /* every enforced limit admitted; only then did counters move: those of the
                     enforced limits and of the shadow limits that admitted */
    enum store_cache_state state; /* only looked up when allowed; FILLING only with lease_ms */
    struct store_entry *entry;    /* new reference on HIT/STALE, else NULL */
    uint64_t *tag_gens;           /* ntags slots: generations seen, passed back to fill */
    uint64_t now_ms;              /* the store's clock at the decision */
    bool lease_taken;    /* with lease_ms, on MISS or STALE: this lookup took the fill lease (the
                            caller is expected to fill); false when another caller holds it */
    bool bypassed;       /* the shared store was unavailable: limits were checked in-process,
                            the cache was not consulted, and the answer must not be filled */
    bool refused_closed; /* the shared store was unavailable and a fail-closed limit could
                            not be checked: the request must fail (503); allowed is false */
    bool refused_full;   /* the limits admitted the request but the store has no room for
                            their state (the memory store's limit budget is full of live
                            states): the request must fail (503), as forgetting a state would
                            give its caller a fresh budget; allowed is false, nothing counted */
};

/*
 * Completion: status 0, or -1 when the store failed or refused (then only
 * `arg` is meaningful), or STORE_UNAVAILABLE when the store did not answer
 * (deadline passed, connection lost): the outcome of the operation is
 * unknown, and it is never sent again.
 */
typedef void store_done_fn(void *arg, int status);
#define STORE_UNAVAILABLE (-2)
/* Completion of an operation that also counts what it removed (valid when status is 0). */
typedef void store_count_fn(void *arg, int status, uint64_t count);

/* A store's state for status output. */
struct store_health {
    bool degraded;        /* the shared store is not being used: answers come without it */
    const char *state;    /* "ok", "degraded", "probing" (static string) */
    uint64_t failures;    /* operations of the shared store that failed, since start */
    uint64_t fallbacks;   /* requests answered by the in-process fallback, since start */
    uint64_t transitions; /* times the store became degraded, since start */
    struct hist latency;  /* round trips of the shared store's commands, since start (empty for
                             the memory store) */
};

/* ---- listing cache entries (the admin API) ------------------------------------------------ */

#define STORE_LIST_VARIANTS 64 /* variants of one primary listed at most (all are counted) */

/* One cache entry as store_list() reports it; times are the store's clock at now_ms. */
struct store_list_entry {
    char *key; /* owned by the listing: keylen bytes and a NUL */
    size_t keylen;
    uint16_t status;
    uint8_t flags;           /* STORE_ENTRY_* */
    uint64_t age_ms;         /* current age: its age_ms + now - stored_ms (Age, in ms) */
    uint64_t ttl_ms;         /* fresh this much longer (0: stale) */
    uint64_t swr_ms, sie_ms; /* its stale windows (0: none) */
    uint64_t swr_left_ms,
        sie_left_ms; /* until each window ends: expires + window - now (0: over) */
    uint64_t bytes;  /* body, content type, header lines and ETag */
    char **tags;     /* owned: ntags tags, each taglens[i] bytes and a NUL */
    size_t *taglens;
    size_t ntags;
    char *vary; /* owned: a Vary marker's field names (its body) and a NUL, or NULL */
    /* a primary's variants (secondary entries, see STORE_KEY_SEP) that the glob matches */
    struct store_list_entry *variants; /* owned: the first nvariants found */
    size_t nvariants;                  /* at most STORE_LIST_VARIANTS */
    size_t variant_count;              /* every one found */
    bool variants_partial;             /* not every variant was looked at (Redis reads at most
                                          STORE_LIST_VARIANTS): variant_count is a lower bound */
};

/* What store_list() found. Owned by the store until the completion returns. */
struct store_listing {
    const char *store;                /* the store that answered: "memory" or "redis" (static) */
    struct store_list_entry *entries; /* n primaries, in the store's order */
    size_t n;
    bool truncated;   /* the walk stopped before the end (the limit reached, or the store's
                         bound on the work of one call): more entries may match */
    uint64_t scanned; /* what the walk looked at: the memory store's records, Redis's keys that
                         SCAN returned */
    uint64_t now_ms;  /* the store's clock (Redis: 0 when it read no entry) */
};

/* Completion of store_list(): status 0 with the listing (borrowed), else -1 or STORE_UNAVAILABLE
 * with NULL. */
typedef void store_list_fn(void *arg, int status, const struct store_listing *l);

/* ---- the fleet: the instances sharing a store --------------------------------------------- */

/* Wall clock (CLOCK_REALTIME) in ms since the epoch. */
uint64_t store_now_ms(void);

/* One instance as store_fleet() records and reports it. */
struct store_fleet_member {
    char id[128];         /* hostname:pid */
    char listen[128];     /* its listening address ("127.0.0.1:8080"), or "" */
    char policy_hash[17]; /* the hash of the policy set it serves (policy_hash()) */
    uint64_t generation;  /* its policy generation */
    uint64_t started_ms;  /* when it started (ms since the epoch) */
    uint64_t seen_ms;     /* out: the store's clock when it last published */
    bool store_up;        /* its shared store answers */
    bool db_up;           /* its database answers */
};

/* Completion of store_fleet(): status 0 with the n members seen (borrowed for the call; `me`
 * among them), else -1 or STORE_UNAVAILABLE with none. */
typedef void store_fleet_fn(void *arg, int status, const struct store_fleet_member *m, size_t n);

struct store;

struct store_ops {
    const char *name;
    void (*admit_and_lookup)(struct store *s, struct store_admit *a, store_done_fn *done,
                             void *arg);
    void (*fill)(struct store *s, const char *key, size_t keylen, struct store_entry *entry,
                 uint64_t ttl_ms, const char *const *tags, const size_t *taglens,
                 const uint64_t *tag_gens, size_t ntags, store_done_fn *done, void *arg);
    void (*invalidate)(struct store *s, const char *const *tags, const size_t *taglens,
                       size_t ntags, store_done_fn *done, void *arg);
    void (*destroy)(struct store *s);
    void (*health)(struct store *s, struct store_health *h); /* NULL: always "ok" */
    void (*delete_keys)(struct store *s, const char *const *keys, const size_t *lens, size_t n,
                        store_count_fn *done, void *arg);
    void (*invalidate_pattern)(struct store *s, const char *glob, size_t globlen,
                               store_count_fn *done, void *arg);
    void (*release_lease)(struct store *s, const char *key, size_t keylen);
    void (*list)(struct store *s, const char *glob, size_t globlen, size_t limit,
                 store_list_fn *done, void *arg);
    size_t (*record_room)(struct store *s, size_t keylen, size_t ntags); /* NULL: 0 */
    void (*fleet)(struct store *s, const struct store_fleet_member *me, uint64_t ttl_ms,
                  store_fleet_fn *done, void *arg);
    uint64_t (*moves)(struct store *s); /* NULL: the store never moves */
};

/* A worker's handle on a store. */
struct store {
    const struct store_ops *ops;
};

/*
 * Checks every limit, and only if all the enforced ones admit, records them
 * and the shadow limits that admitted (a shadow limit that would refuse is
 * not charged, as no limit is when the request is refused); then, when a
 * cache key is given, looks the entry up and reads the tags' generations.
 * A record named by an enforced and a shadow limit of one request is
 * enforced. A store short of room for a shadow limit's state counts the
 * request without it rather than refuse it (refused_full).
 * A limit is one counter per (key, algorithm, limit, window, burst): two
 * rules that share a key string count separately; the same one named twice
 * in a request counts both costs. An entry is a HIT while it is unexpired
 * and every tag it was filled under still has the generation it had then.
 * With nlimits 0 it is a lookup only, which counts nothing.
 *
 * Fill lease (single flight): with lease_ms, a miss takes the key's lease
 * when nobody holds it (MISS: the caller is expected to fill) and reports
 * STORE_FILLING when another caller holds it, across every handle of the
 * store (threads, or instances sharing Redis). The lease ends at the next
 * store_fill() of the key, stored or refused, or after lease_ms. It is a
 * hint: a fill is accepted whoever holds the lease.
 *
 * `done` may be called before this returns (memory store) or later from the
 * event loop (Redis store), exactly once; `a` and its arrays must stay
 * valid until then.
 *
 * Stale entries: an entry filled with stale_ms is kept that long past its
 * expiry; a lookup then reports STORE_STALE with the entry (never for an
 * entry whose tags were invalidated: that one is a MISS). With lease_ms, a
 * STALE lookup also tries the key's lease: lease_taken says whether it got it
 * (then it is expected to refresh), and STALE is reported either way (the
 * caller decides whether a stale answer serves). A MISS with lease_ms sets
 * lease_taken true; STORE_FILLING means false. (One exception: the Redis
 * store reports a MISS without the lease when the entry it found vanished
 * before its response was read; the caller then fills without the lease.)
 */
static inline void
store_admit_and_lookup(struct store *s, struct store_admit *a, store_done_fn *done, void *arg)
{
    s->ops->admit_and_lookup(s, a, done, arg);
}

/*
 * Stores `entry` (a new reference is taken; the caller keeps its own) under
 * key for ttl_ms with these tags, replacing what was there, releases the
 * key's fill lease, and stamps its
 * stored_ms and expires_ms from the store's clock (so fill an entry once,
 * before sharing it). tag_gens are the ones admit_and_lookup() returned for
 * the same tags. Status -1 (refused, nothing stored) when any tag's
 * generation is no longer the one in tag_gens: an invalidation happened
 * after the lookup, so the entry may already be stale. Status 0 also when
 * the entry was not kept: ttl_ms 0 with no stale_ms, or larger than the
 * whole byte budget (the old entry under key is dropped then). ttl_ms 0
 * with a stale_ms stores the entry already expired: lookups find it STALE
 * for stale_ms (an answer that must be revalidated before any use).
 */
static inline void
store_fill(struct store *s, const char *key, size_t keylen, struct store_entry *entry,
           uint64_t ttl_ms, const char *const *tags, const size_t *taglens,
           const uint64_t *tag_gens, size_t ntags, store_done_fn *done, void *arg)
{
    s->ops->fill(s, key, keylen, entry, ttl_ms, tags, taglens, tag_gens, ntags, done, arg);
}

/*
 * Gives back key's fill lease, taken by a lookup with lease_ms, without
 * filling: a filler whose origin failed lets the next caller try at once
 * instead of after the lease's time. Best effort, with no completion: when
 * the store cannot be reached the lease runs out by itself.
 */
static inline void
store_release_lease(struct store *s, const char *key, size_t keylen)
{
    s->ops->release_lease(s, key, keylen);
}

/*
 * The room (bytes) a fill under a key of keylen bytes with ntags tags can
 * use in an entry made by store_entry_make(): a store that keeps a record of
 * its entries in process (the memory store) puts it there, so that the
 * record, key, fields and body are one allocation; with less room it
 * allocates the record apart. 0 for a store that keeps none.
 */
static inline size_t
store_record_room(struct store *s, size_t keylen, size_t ntags)
{
    return s->ops->record_room ? s->ops->record_room(s, keylen, ntags) : 0;
}

/*
 * Publishes `me` (copied) as one instance of the fleet for ttl_ms, and
 * reports every instance that published within the last ttl_ms (`me`
 * included; older ones are forgotten), with the store's clock in seen_ms.
 * The memory store is one process's: it reports `me` alone. Redis keeps
 * the fleet in one hash (`sl:{fleet}`) that expires ttl_ms after the last
 * publication. `done` is called once, now or from the event loop.
 */
static inline void
store_fleet(struct store *s, const struct store_fleet_member *me, uint64_t ttl_ms,
            store_fleet_fn *done, void *arg)
{
    if (!s->ops->fleet) { /* a store of its own: the caller alone */
        struct store_fleet_member m = *me;
        m.seen_ms = store_now_ms();
        done(arg, 0, &m, 1);
        return;
    }
    s->ops->fleet(s, me, ttl_ms, done, arg);
}

/* How many times the store's commands have been sent somewhere new (a master the sentinels
 * named, a cluster's slots with other owners); only its changes mean anything. */
static inline uint64_t
store_moves(struct store *s)
{
    return s->ops->moves ? s->ops->moves(s) : 0;
}

/* Bumps each tag's generation: every entry filled under an older one is gone. */
static inline void
store_invalidate(struct store *s, const char *const *tags, const size_t *taglens, size_t ntags,
                 store_done_fn *done, void *arg)
{
    s->ops->invalidate(s, tags, taglens, ntags, done, arg);
}

/*
 * Secondary entries. A cache key holding the byte STORE_KEY_SEP (0x1f) is a
 * secondary entry of the primary whose key is the text before its first
 * STORE_KEY_SEP: the gateway keeps the variants of a STORE_ENTRY_VARY answer
 * under primary + "\x1f" + escaped header values. To the lookup and the fill
 * a secondary is an ordinary entry; removing a primary, by key or by pattern,
 * removes its secondaries too (no secondary can be reached again through a
 * primary filled later).
 */
#define STORE_KEY_SEP '\x1f'

/*
 * Removes the cache entries under these keys, each with its secondary
 * entries when the key is a primary (see STORE_KEY_SEP). A key with no entry
 * is not an error. count: entries removed, secondaries included. Like
 * store_invalidate() it does not refuse fills that looked up before it: a
 * fill already on its way can store the key again (tags are the barrier).
 */
static inline void
store_delete_keys(struct store *s, const char *const *keys, const size_t *lens, size_t n,
                  store_count_fn *done, void *arg)
{
    s->ops->delete_keys(s, keys, lens, n, done, arg);
}

/*
 * Removes every cache entry whose key matches `glob` (fnmatch(3) without
 * flags: '*', '?', '[...]', '\\' escapes; matched against the cache key as the
 * policy expanded it, e.g. "crm:*"), and the secondaries of every primary
 * that matches (store_key_matches()). A key holding a NUL byte never matches;
 * a glob holding one is refused (-1). A glob without wildcards removes that
 * one key as store_delete_keys() does. For the admin API: the memory store
 * walks its shards one at a time under their locks; on Redis it runs as
 * SCAN + UNLINK in batches, never one long command, and fails as a whole
 * (once) if any of them fails, some entries possibly removed. Entries filled
 * while it runs may stay. count: entries removed, secondaries included.
 */
static inline void
store_invalidate_pattern(struct store *s, const char *glob, size_t globlen, store_count_fn *done,
                         void *arg)
{
    s->ops->invalidate_pattern(s, glob, globlen, done, arg);
}

/*
 * Lists the cache entries whose keys match `glob` as store_invalidate_pattern()
 * means it (store_key_matches(); a glob holding a NUL is refused, -1): each
 * primary key once, with its fields, and its variants that match (all of
 * them when the primary does). Expired entries (past their stale keep) and
 * entries whose tags were invalidated are not listed. The walk stops once
 * `limit` primaries are listed (1 or more), and each store bounds the work
 * of one call even when few keys match (the memory store: records walked,
 * one shard at a time under its lock; Redis: SCAN rounds, on the handle's
 * own connection, each entry's metadata read without its body); either
 * way the listing says truncated. For the admin API: `done` is called
 * once, now (memory) or from the event loop (Redis).
 */
static inline void
store_list(struct store *s, const char *glob, size_t globlen, size_t limit, store_list_fn *done,
           void *arg)
{
    s->ops->list(s, glob, globlen, limit, done, arg);
}

/* For the stores: appends a primary to l with its key copied; returns it (zeroed otherwise),
 * valid until the next append. */
struct store_list_entry *store_listing_add(struct store_listing *l, const char *key, size_t keylen);

/* For the stores: counts a variant of p and, while fewer than STORE_LIST_VARIANTS are listed,
 * appends it with its key copied and returns it (zeroed otherwise); NULL when not listed. */
struct store_list_entry *store_list_add_variant(struct store_list_entry *p, const char *key,
                                                size_t keylen);

/* For the stores: appends a copy of a tag to e's tags. */
void store_list_add_tag(struct store_list_entry *e, const char *tag, size_t len);

/* For the stores: e's times at now from an entry's stamps (store_entry's fields of those names). */
void store_list_set_times(struct store_list_entry *e, uint64_t stored_ms, uint64_t expires_ms,
                          uint64_t age_ms, uint64_t swr_ms, uint64_t sie_ms, uint64_t now);

/* For the stores: frees what e holds (not e itself: an item of an array) and zeroes it. */
void store_list_entry_free(struct store_list_entry *e);

/* For the stores: frees what l holds (not l itself) and empties it. */
void store_listing_free(struct store_listing *l);

/* Fills *h with the store's health; a store without a health report is "ok". */
static inline void
store_health(struct store *s, struct store_health *h)
{
    *h = (struct store_health){.state = "ok"};
    if (s->ops->health)
        s->ops->health(s, h);
}

/* For the stores: the length of key's primary part (up to its first STORE_KEY_SEP). */
size_t store_key_primary_len(const char *key, size_t keylen);

/*
 * For the stores: whether key matches the NUL-terminated glob as
 * store_invalidate_pattern() means it: fnmatch(glob, key) or, for a
 * secondary, fnmatch(glob, its primary part). A key holding a NUL never matches.
 */
bool store_key_matches(const char *glob, const char *key, size_t keylen);

/*
 * For the stores: when glob (globlen bytes) has no unescaped '*', '?' or '[' (and
 * no trailing '\\'), writes the one text it matches to out (globlen bytes are
 * enough), its length to *outlen, and returns true.
 */
bool store_glob_literal(const char *glob, size_t globlen, char *out, size_t *outlen);

/* Returns a new entry with refs 1 taking ownership of body and content_type (malloc'd);
 * flags, stale_ms, headers and etag start empty and may be set (malloc'd) before the fill. */
struct store_entry *store_entry_new(uint16_t status, char *content_type, char *body,
                                    size_t body_len);
/*
 * Returns a new entry with refs 1 in one allocation: the entry, `room` bytes
 * for a store's record (store_record_room(); they start aligned for any
 * record, and are not rounded up: an entry's size follows its key's length
 * byte by byte, so that entries of nearly equal sizes fit each other's
 * blocks once freed), then copies of
 * the content type (NUL-terminated), header lines (headers_len bytes), ETag
 * (NUL-terminated) and body (body_len bytes), each followed by a NUL; a NULL
 * argument leaves its field NULL. Nothing is taken: the caller keeps what it
 * passed. Times, flags and windows start at 0 and may be set before the
 * fill, as may an absent ETag (malloc'd, then freed on its own); a field
 * given here is never replaced. Aborts when memory is exhausted.
 */
struct store_entry *store_entry_make(uint16_t status, const char *content_type, const char *headers,
                                     size_t headers_len, const char *etag, const void *body,
                                     size_t body_len, size_t room);
/* Takes one more reference; thread-safe. */
void store_entry_ref(struct store_entry *e);
/* Drops one reference; the last frees the entry and what it owns (its fields, its block).
 * NULL is a no-op. */
void store_entry_release(struct store_entry *e);

/* The codings whose forms the entry holds (a set of CODEC_BIT()s); 0 when e->coded is NULL. */
unsigned store_entry_codings(const struct store_entry *e);

#endif
