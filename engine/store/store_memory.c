/* store_memory.c - the embedded store: one sharded in-process table of limits, entries and tags. */
#define _GNU_SOURCE /* malloc_usable_size */
#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>

#include "store.h"
#include "log.h"
#include "store_memory.h"
#include "store_memory_list.h"
#include "store_memory_table.h"
#include "util.h"

/*
 * The store's operations on the table of store_memory_table.c, which says
 * how the table is laid out, swept, and charged to its two byte budgets.
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
 * Removal by key or pattern. delete_keys locks one key's shard at a time;
 * invalidate_pattern walks the shards one after the other, each whole under
 * its lock (a bounded slice: a 64th of the table), dropping every entry whose
 * key matches.
 */

#define ROTATE_EVERY 64 /* operations of a handle between sweeps of the next shard */
#define STACK_LIMITS 8  /* limits of a request handled without allocating */
#define STACK_TAGS 16   /* tags likewise */

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

/* Every ROTATE_EVERY operations, sweeps a batch of the next shard if it is free. */
static void
rotate_sweep(struct handle *h, uint64_t now)
{
    if (++h->ops % ROTATE_EVERY != 0)
        return;
    mt_sweep_shard(h->m, h->rotate++ % NSHARDS, now);
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
        (struct entry_rec *)mt_find(m, sh, hash, REC_ENTRY, key, keylen, NULL, now);
    uint64_t need = 0;

    if (!e)
        return LOOKUP_MISS;
    for (uint32_t i = 0; i < e->r.ntags; i++) /* a held record stays, its hash never changes */
        need |= shard_bit(e->tags[i].tag->r.hash);
    if (need & ~locked) {
        *wider = need;
        return LOOKUP_WIDER;
    }
    for (uint32_t i = 0; i < e->r.ntags; i++) {
        if (e->tags[i].tag->gen != e->tags[i].gen) {
            mt_remove(m, sh, &e->r);
            return LOOKUP_MISS;
        }
    }
    if (TAILQ_NEXT(e, lru)) { /* not the most recently used yet */
        TAILQ_REMOVE(&sh->lru, e, lru);
        TAILQ_INSERT_TAIL(&sh->lru, e, lru);
    }
    struct store_entry *se = rec_entry(e);
    store_entry_ref(se);
    *out = se;
    return now < se->expires_ms ? LOOKUP_HIT : LOOKUP_STALE;
}

struct limit_slot {
    struct limiter_rule id;
    uint64_t hash;
    uint64_t cost;         /* summed over limits naming the same record */
    size_t first;          /* the first limit naming the same record */
    struct limit_rec *rec; /* NULL until created at commit */
    size_t log_after;      /* the log's charge once committed */
    bool shadow;           /* every limit naming the record is a shadow limit */
    bool charge;           /* committed when the request is admitted */
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

    if (mt_find(m, sh, eh, REC_LEASE, key, keylen, NULL, now))
        return false;
    if (keylen > UINT32_MAX || !mt_reserve_limit(m, locked, chunk(lease_size(keylen)), now)) {
        tally(&m->leases_unrecorded);
        return true;
    }
    struct rec *r = xmalloc(lease_size(keylen));
    memcpy(r + 1, key, keylen);
    *r = (struct rec){.hash = eh,
                      .expires_ms = sat_add(now, lease_ms),
                      .keylen = (uint32_t)keylen,
                      .kind = REC_LEASE};
    mt_insert(m, sh, r);
    lim_expires(sh, r->expires_ms);
    sh->nleases++;
    return true;
}

/* Releases key's fill lease, if any (its shard locked). */
static void
lease_release(struct store_memory *m, uint64_t eh, const char *key, size_t keylen, uint64_t now)
{
    struct shard *sh = shard_at(m, eh);
    struct rec *r = mt_find(m, sh, eh, REC_LEASE, key, keylen, NULL, now);

    if (r) {
        mt_remove(m, sh, r);
    }
}

/*
 * Checks every limit of a (its shards locked) into a->results and
 * a->allowed; when all the enforced ones admit, records them and the shadow
 * limits that admit too, creating the records they lack once the limit
 * budget has room for those and for the logs' growth. Returns false, having
 * recorded nothing (a->allowed true), when it has no room for them; on the
 * `last` try, a request the budget has room for without its shadow limits
 * is recorded without them (a shadow limit never refuses). One limit naming
 * the same record as an earlier one adds to its cost; that record is a
 * shadow one only when every limit naming it is.
 */
static bool
check_and_commit(struct store_memory *m, uint64_t locked, struct store_admit *a,
                 struct limit_slot *ls, uint64_t now, bool last)
{
    size_t need = 0, need_shadow = 0;

    a->allowed = true;
    for (size_t i = 0; i < a->nlimits; i++) {
        const struct store_limit *l = &a->limits[i];
        ls[i].first = i;
        ls[i].cost = l->cost;
        ls[i].rec = NULL;
        ls[i].shadow = l->shadow;
        for (size_t j = 0; j < i; j++) {
            if (ls[j].first == j && same_limit(&ls[j], &a->limits[j], &ls[i], l)) {
                ls[i].first = j;
                ls[j].cost += l->cost;
                ls[j].shadow = ls[j].shadow && l->shadow;
                break;
            }
        }
        if (ls[i].first == i)
            ls[i].rec = (struct limit_rec *)mt_find(m, shard_at(m, ls[i].hash), ls[i].hash,
                                                    REC_LIMIT, l->key, l->keylen, &ls[i].id, now);
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
        /* A shadow limit that would refuse is not charged, as an enforced refusal is not. */
        ls[i].charge = a->results[i].allowed;
        if (!ls[i].shadow)
            a->allowed = a->allowed && a->results[i].allowed;
    }
    for (size_t i = 0; i < a->nlimits; i++)
        if (ls[i].first != i)
            a->results[i] = a->results[ls[i].first];
    if (!a->allowed || a->peek)
        return true;

    for (size_t i = 0; i < a->nlimits; i++) {
        if (ls[i].first != i || !ls[i].charge)
            continue;
        struct limiter_state empty = {0};
        struct limiter_state *st = ls[i].rec ? &ls[i].rec->st : &empty;
        size_t n = limiter_commit_bytes(&ls[i].id, st, now, (uint32_t)ls[i].cost);
        size_t *to = ls[i].shadow ? &need_shadow : &need;
        ls[i].log_after = n ? chunk(n) : 0;
        if (ls[i].log_after > log_charge(st))
            *to += ls[i].log_after - log_charge(st);
        if (!ls[i].rec) {
            if (a->limits[i].keylen > UINT32_MAX) {
                if (ls[i].shadow) {
                    ls[i].charge = false;
                    continue;
                }
                return false;
            }
            *to += chunk(limit_size(a->limits[i].keylen));
        }
    }
    if (!mt_reserve_limit(m, locked, need + need_shadow, now)) {
        if (!last || need_shadow == 0 || !mt_reserve_limit(m, locked, need, now))
            return false;
        for (size_t i = 0; i < a->nlimits; i++)
            if (ls[i].shadow)
                ls[i].charge = false;
    }
    for (size_t i = 0; i < a->nlimits; i++) {
        if (ls[i].first != i || !ls[i].charge)
            continue;
        struct limit_rec *r = ls[i].rec;
        struct shard *sh = shard_at(m, ls[i].hash);
        if (!r) {
            r = limit_rec_new(&ls[i], a->limits[i].key, a->limits[i].keylen);
            mt_insert(m, sh, &r->r);
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
        eh = mt_entry_hash(m, a->cache_key, a->cache_keylen);
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
    if (!check_and_commit(m, mask, a, ls, now, false)) {
        /* No room: drop what expired in every shard, then try once more (the last try may
         * leave shadow limits uncounted). */
        mt_unlock_shards(m, mask, now);
        mt_reclaim_all(m, now);
        lock_shards(m, mask);
        now = clock_now(m);
        if (!check_and_commit(m, mask, a, ls, now, true)) {
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
    mt_unlock_shards(m, mask, now);

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
        mt_unlock_shards(m, mask2, now);
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
                !mt_reserve_cache(m, locked, own, chunk(tag_size(taglens[i]))))
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
            mt_insert(m, tsh, &t->r);
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
    uint64_t eh = mt_entry_hash(m, key, keylen), mask = shard_bit(eh), now;
    unsigned own = shard_index(eh);
    struct shard *sh = shard_at(m, eh);
    bool kept = ttl_ms > 0 || entry->stale_ms > 0;
    size_t charge = 0, held_tags;
    struct entry_rec *e = NULL;
    uint64_t expires, keep;
    struct rec *old;
    bool moved;
    int status = 0;

    for (size_t i = 0; i < ntags; i++) {
        th[i] = tag_hash(m, tags[i], taglens[i]);
        mask |= shard_bit(th[i]);
    }
    /* The record is made before any lock is taken (in the entry's room when it has one). */
    if (kept && keylen <= UINT32_MAX && ntags <= UINT16_MAX)
        e = mt_entry_new(entry, eh, key, keylen, ntags, &charge);
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
    old = mt_find(m, sh, eh, REC_ENTRY, key, keylen, NULL, now);
    if (old) {
        mt_remove(m, sh, old);
    }
    if (!kept)
        goto out;
    if (!e || charge > m->cache.max) {
        tally(&m->not_stored);
        goto out;
    }
    expires = sat_add(now, ttl_ms);
    keep = sat_add(expires, entry->stale_ms);

    held_tags = hold_tags(m, mask, own, tags, taglens, th, tag_gens, ntags, now, tr, &moved);
    if (held_tags < ntags || !mt_reserve_cache(m, mask, own, charge)) {
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
    for (size_t i = 0; i < ntags; i++) {
        if (tr[i]->r.expires_ms < keep)
            tr[i]->r.expires_ms = keep; /* a tag outlives the entries that hold it */
        e->tags[i] = (struct tag_ref){.tag = tr[i], .gen = tag_gens[i]};
    }
    entry->stored_ms = now;
    entry->expires_ms = expires;
    e->r.expires_ms = keep;
    mt_insert(m, sh, &e->r);
    TAILQ_INSERT_TAIL(&sh->lru, e, lru);
    sh->nentries++;
    sh->nsecondary += (e->r.flags & REC_SECONDARY) != 0;
    e = NULL; /* the table's */
out:
    mt_unlock_shards(m, mask, now);
    if (e)
        mt_entry_free(e, false);
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
            if (t) /* atomic: a listing reads it holding only the entry's shard */
                __atomic_store_n(&t->gen, gen, __ATOMIC_RELAXED);
            else
                *floor_of(shard_at(m, th[i]), th[i]) = gen;
        }
        mt_unlock_shards(m, mask, now);
        rotate_sweep(h, now);
    }
    if (th != th_buf)
        free(th);
    done(arg, 0);
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
    uint64_t eh = mt_entry_hash(m, key, keylen), n = 0;
    struct shard *sh = shard_at(m, eh);

    pthread_mutex_lock(&sh->lock);
    uint64_t now = clock_now(m);
    struct rec *r = mt_find(m, sh, eh, REC_ENTRY, key, keylen, NULL, now);
    if (r) {
        mt_remove(m, sh, r);
        n++;
    }
    if (sh->nsecondary && store_key_primary_len(key, keylen) == keylen) {
        struct prefix p = {key, keylen};
        n += mt_remove_if(m, sh, now, is_secondary_of, &p);
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
            count += mt_remove_if(m, sh, clock_now(m), glob_matches, g);
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
    uint64_t eh = mt_entry_hash(m, key, keylen);

    lock_shards(m, shard_bit(eh));
    uint64_t now = clock_now(m);
    lease_release(m, eh, key, keylen, now);
    mt_unlock_shards(m, shard_bit(eh), now);
}

static void
mem_list(struct store *s, const char *glob, size_t globlen, size_t limit, store_list_fn *done,
         void *arg)
{
    struct store_listing l = {.store = "memory"};
    int status = mt_list(((struct handle *)s)->m, glob, globlen, limit, &l);

    done(arg, status, status == 0 ? &l : NULL);
    store_listing_free(&l);
}

/* One process's store: the fleet it sees is the caller alone. */
static void
mem_fleet(struct store *s, const struct store_fleet_member *me, uint64_t ttl_ms,
          store_fleet_fn *done, void *arg)
{
    struct store_fleet_member m = *me;

    m.seen_ms = store_now_ms();
    done(arg, 0, &m, 1);
}

static size_t
mem_record_room(struct store *s, size_t keylen, size_t ntags)
{
    return keylen <= UINT32_MAX && ntags <= UINT16_MAX ? entry_size(ntags, keylen) : 0;
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
    .list = mem_list,
    .record_room = mem_record_room,
    .fleet = mem_fleet,
};

/* ---- the store: its table, handles and stats ---------------------------- */

struct store_memory *
store_memory_new(size_t cache_bytes, size_t limit_bytes)
{
    struct store_memory *m = aligned_alloc(64, sizeof(*m));

    if (!m) {
        log_abort("out of memory (memory store)");
    }
    memset(m, 0, sizeof(*m));
    m->cache.max = cache_bytes;
    m->lim.max = limit_bytes;
    if (getrandom(&m->seed, sizeof(m->seed), GRND_NONBLOCK) != sizeof(m->seed))
        m->seed = store_now_ms() ^ (uint64_t)(uintptr_t)m;
    for (unsigned i = 0; i < NSHARDS; i++)
        mt_shard_init(&m->shards[i]);
    return m;
}

void
store_memory_free(struct store_memory *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < NSHARDS; i++) /* entries first: they hold tags */
        mt_shard_clear(m, &m->shards[i], REC_ENTRY);
    for (unsigned i = 0; i < NSHARDS; i++) {
        mt_shard_clear(m, &m->shards[i], 0);
        mt_shard_fini(&m->shards[i]);
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
store_memory_set_list_budget(struct store_memory *m, size_t records)
{
    m->list_budget = records;
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
