/* store_failover.c - a shared store with an in-process fallback and a circuit breaker. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "log.h"
#include "store_failover.h"
#include "util.h"

/*
 * While the primary (Redis) answers, every operation goes to it. When an
 * operation fails (no answer within its deadline, connection down, an error
 * reply), the request is answered without it:
 *
 *   - the cache is bypassed: no lookup, and a->bypassed tells the gateway
 *     not to fill (X-Cache: BYPASS);
 *   - the limits are checked by the fallback, the in-process memory store,
 *     so each instance counts alone (fail open);
 *   - a request with a fail-closed limit is refused (a->refused_closed; 503);
 *     one the fallback has no room to count is refused too (a->refused_full).
 *
 * Shadow counts. Every request the primary admits is counted by the
 * fallback too, and refused should the fallback's own count refuse it. So
 * the fallback never starts from zero: an instance that used 60 of a
 * 100/h limit before Redis went away admits 40 more while it is away, and
 * the same after a Redis that restarted empty. Bound: each instance admits
 * at most the limit per window by its own count, so N instances at most
 * N x limit in all, whatever Redis does; while Redis answers, the limit
 * (one count for everyone).
 *
 * Shadow-mode limits (store_limit.shadow, unrelated to the shadow counts)
 * go through both paths as their enforced twins would, refusing nothing:
 * the fallback checks and charges them like any other; the shadow count of
 * an admitted request charges those Redis admitted and leaves out those
 * Redis would have refused (an enforced limit that refused would have kept
 * the whole request from being counted). A shadow limit is never fail-closed.
 *
 * Breaker. After `failures` consecutive failures it opens: the primary is
 * not called for cooldown_ms, so requests do not wait for a dead server's
 * deadline, or until the primary says it moved (store_moves(): a new master
 * named by the sentinels or by a cluster's slot map). Then the next request
 * probes it (the others keep falling back meanwhile); a success closes the breaker, a failure opens
 * it again. A success of any operation resets the count. Opening logs "degraded", closing
 * "recovered", one line each.
 *
 * Fills are dropped while the breaker is not closed. Invalidations that do
 * not reach the primary are kept (at most MAX_REPLAY tags; beyond that the
 * oldest are dropped, and counted) and sent again when it answers: bumping
 * a generation twice is harmless, unlike counting a request twice.
 *
 * Removal by key or pattern (the admin API) goes to the primary while the
 * breaker is closed; a failure there counts like any other. While it is not
 * closed, the removal is applied to the fallback (which holds no entries
 * while a primary is configured, but stays consistent should it ever hold
 * some) and reported failed (-1): the shared cache was not touched, and
 * nothing is kept to be sent again, unlike tags (a pattern run replayed
 * later could remove entries filled since; the caller retries instead).
 *
 * A listing goes to the primary while the breaker is closed; when it is not,
 * or when the primary does not answer (which counts as a failure), the
 * fallback lists its own entries, and the listing says which store answered.
 */

#define MAX_REPLAY 4096

enum breaker { BR_CLOSED, BR_OPEN, BR_PROBING };

struct failover {
    struct store base;
    struct store *primary, *fallback;
    unsigned threshold;
    uint64_t cooldown_ms;
    char *name;
    enum breaker state;
    unsigned fails; /* consecutive */
    uint64_t open_until;
    uint64_t open_moves; /* store_moves() of the primary when the breaker opened */
    bool closing;
    struct store_health h;
    /* invalidations to send again: a ring of owned strings */
    char **replay;
    size_t *replay_len;
    size_t replay_head, replay_n;
    uint64_t replay_dropped;
    bool replaying;
};

static const char *
state_name(enum breaker b)
{
    return b == BR_CLOSED ? "ok" : b == BR_OPEN ? "degraded" : "probing";
}

static void replay_flush(struct failover *f);

static void
on_success(struct failover *f)
{
    f->fails = 0;
    if (f->state != BR_CLOSED) {
        f->state = BR_CLOSED;
        log_info("%s: redis store recovered: cache and shared limits in use again", f->name);
    }
    if (f->replay_n && !f->replaying && !f->closing)
        replay_flush(f);
}

static void
on_failure(struct failover *f)
{
    f->h.failures++;
    f->fails++;
    if (f->state == BR_PROBING || (f->state == BR_CLOSED && f->fails >= f->threshold)) {
        if (f->state == BR_CLOSED) {
            f->h.transitions++;
            log_warn("%s: redis store degraded after %u failures: cache bypassed, limits "
                     "checked in-process (fail open), fail-closed limits refused; retrying in "
                     "%llu ms",
                     f->name, f->fails, (unsigned long long)f->cooldown_ms);
        }
        f->state = BR_OPEN;
        f->open_until = store_now_ms() + f->cooldown_ms;
        f->open_moves = store_moves(f->primary);
    }
}

/* Whether this operation may use the primary; a request that may becomes the probe. */
static bool
use_primary(struct failover *f, bool may_probe)
{
    if (f->closing)
        return false;
    if (f->state == BR_CLOSED)
        return true;
    /* A store that moved (a new master) is tried at once, not after the cooldown. */
    if (f->state == BR_OPEN && may_probe &&
        (store_now_ms() >= f->open_until || store_moves(f->primary) != f->open_moves)) {
        f->state = BR_PROBING;
        return true;
    }
    return false;
}

/* ---- admit_and_lookup --------------------------------------------------------------------- */

struct admit_op {
    struct failover *f;
    struct store_admit *a;
    struct store_admit local;        /* the fallback's view: limits only */
    struct limiter_result *shadowed; /* the fallback's results of a request Redis admitted ... */
    struct store_limit *counted;     /* ... for these of its limits (one allocation with it) */
    size_t *counted_at;              /* ... the index of each in a->limits */
    store_done_fn *done;
    void *arg;
};

static void
admit_op_done(struct admit_op *op, int status)
{
    store_done_fn *done = op->done;
    void *darg = op->arg;
    free(op->shadowed);
    free(op);
    done(darg, status);
}

static void
on_fallback(void *arg, int status)
{
    struct admit_op *op = arg;
    struct store_admit *a = op->a;

    a->allowed = op->local.allowed;
    a->refused_full = op->local.refused_full;
    a->now_ms = op->local.now_ms;
    a->state = STORE_MISS;
    a->entry = NULL;
    a->bypassed = true;
    admit_op_done(op, status);
}

static void
fallback(struct admit_op *op)
{
    struct failover *f = op->f;
    struct store_admit *a = op->a;

    f->h.fallbacks++;
    a->entry = NULL;
    a->state = STORE_MISS;
    for (size_t i = 0; i < a->ntags; i++)
        a->tag_gens[i] = 0;
    for (size_t i = 0; i < a->nlimits; i++) {
        if (a->limits[i].fail_closed && !a->limits[i].shadow) {
            for (size_t j = 0; j < a->nlimits; j++)
                a->results[j] = (struct limiter_result){.limit = a->limits[j].rule->limit};
            a->allowed = false;
            a->refused_closed = true;
            a->bypassed = true;
            a->now_ms = store_now_ms();
            admit_op_done(op, 0);
            return;
        }
    }
    op->local = (struct store_admit){
        .limits = a->limits,
        .nlimits = a->nlimits,
        .results = a->results,
        .peek = a->peek,
    };
    store_admit_and_lookup(f->fallback, &op->local, on_fallback, op);
}

/*
 * The fallback's count of a request the primary admitted. Should the local
 * count refuse it (this instance alone already used the whole limit: the
 * primary lost its counts, a restarted Redis starts empty), the request is
 * refused after all; the primary counted it, which errs on the safe side.
 */
static void
on_shadowed(void *arg, int status)
{
    struct admit_op *op = arg;
    struct store_admit *a = op->a;

    /* No room in the fallback to count it is not a reason to refuse what Redis admitted. */
    if (status == 0 && !op->local.allowed && !op->local.refused_full) {
        for (size_t j = 0; j < op->local.nlimits; j++)
            a->results[op->counted_at[j]] = op->shadowed[j];
        a->allowed = false;
        store_entry_release(a->entry);
        a->entry = NULL;
        a->state = STORE_MISS;
        if (a->lease_taken)
            store_release_lease(op->f->primary, a->cache_key, a->cache_keylen);
        a->lease_taken = false;
    }
    admit_op_done(op, 0);
}

static void
on_primary_admit(void *arg, int status)
{
    struct admit_op *op = arg;
    struct store_admit *a = op->a;

    if (status == 0) {
        on_success(op->f);
        if (!a->allowed || a->nlimits == 0 || a->peek) {
            admit_op_done(op, 0);
            return;
        }
        /* Admitted by the shared count: counted in-process too, so that the fallback starts
         * from what this instance used when Redis goes away (or comes back empty); all but
         * the shadow-mode limits Redis would have refused, which it did not charge. */
        size_t n = a->nlimits, nc = 0;
        op->shadowed = xcalloc(n, sizeof(*op->shadowed) + sizeof(*op->counted) + sizeof(size_t));
        op->counted = (struct store_limit *)(op->shadowed + n);
        op->counted_at = (size_t *)(op->counted + n);
        for (size_t i = 0; i < n; i++) {
            if (a->limits[i].shadow && !a->results[i].allowed)
                continue;
            op->counted[nc] = a->limits[i];
            op->counted_at[nc++] = i;
        }
        if (nc == 0) {
            admit_op_done(op, 0);
            return;
        }
        op->local = (struct store_admit){
            .limits = op->counted,
            .nlimits = nc,
            .results = op->shadowed,
        };
        store_admit_and_lookup(op->f->fallback, &op->local, on_shadowed, op);
        return;
    }
    on_failure(op->f);
    fallback(op);
}

static void
fo_admit_and_lookup(struct store *s, struct store_admit *a, store_done_fn *done, void *arg)
{
    struct failover *f = (struct failover *)s;
    struct admit_op *op = xmalloc(sizeof(*op));

    *op = (struct admit_op){.f = f, .a = a, .done = done, .arg = arg};
    a->bypassed = a->refused_closed = a->refused_full = false;
    if (use_primary(f, true))
        store_admit_and_lookup(f->primary, a, on_primary_admit, op);
    else
        fallback(op);
}

/* ---- fill and invalidate ------------------------------------------------------------------ */

struct pass_op {
    struct failover *f;
    store_done_fn *done;
    void *arg;
    const char *const *tags; /* invalidate: kept for a replay on failure (borrowed until done) */
    const size_t *taglens;
    size_t ntags;
};

static void
on_primary_fill(void *arg, int status)
{
    struct pass_op *op = arg;

    /* -1 is a refusal (a tag moved) or an error reply: the store answered. */
    if (status == STORE_UNAVAILABLE)
        on_failure(op->f);
    else
        on_success(op->f);
    store_done_fn *done = op->done;
    void *darg = op->arg;
    free(op);
    done(darg, status);
}

static void
fo_fill(struct store *s, const char *key, size_t keylen, struct store_entry *entry, uint64_t ttl_ms,
        const char *const *tags, const size_t *taglens, const uint64_t *tag_gens, size_t ntags,
        store_done_fn *done, void *arg)
{
    struct failover *f = (struct failover *)s;

    if (!use_primary(f, false)) {
        done(arg, STORE_UNAVAILABLE);
        return;
    }
    struct pass_op *op = xmalloc(sizeof(*op));
    *op = (struct pass_op){.f = f, .done = done, .arg = arg};
    store_fill(f->primary, key, keylen, entry, ttl_ms, tags, taglens, tag_gens, ntags,
               on_primary_fill, op);
}

static void
replay_add(struct failover *f, const char *tag, size_t len)
{
    if (f->replay_n == MAX_REPLAY) {
        size_t i = f->replay_head;
        free(f->replay[i]);
        f->replay[i] = NULL;
        f->replay_head = (i + 1) % MAX_REPLAY;
        f->replay_n--;
        f->replay_dropped++;
        if (f->replay_dropped == 1)
            log_warn("%s: more than %d invalidations wait for the redis store; the "
                     "oldest are dropped",
                     f->name, MAX_REPLAY);
    }
    size_t i = (f->replay_head + f->replay_n) % MAX_REPLAY;
    f->replay[i] = xmalloc(len ? len : 1);
    memcpy(f->replay[i], tag, len);
    f->replay_len[i] = len;
    f->replay_n++;
}

static void
on_primary_invalidate(void *arg, int status)
{
    struct pass_op *op = arg;
    struct failover *f = op->f;

    if (status == 0) {
        on_success(f);
    } else {
        on_failure(f);
        for (size_t i = 0; i < op->ntags; i++)
            replay_add(f, op->tags[i], op->taglens[i]);
    }
    store_done_fn *done = op->done;
    void *darg = op->arg;
    free(op);
    done(darg, status);
}

static void
fo_invalidate(struct store *s, const char *const *tags, const size_t *taglens, size_t ntags,
              store_done_fn *done, void *arg)
{
    struct failover *f = (struct failover *)s;

    if (ntags == 0) {
        done(arg, 0);
        return;
    }
    if (!use_primary(f, false)) {
        for (size_t i = 0; i < ntags; i++)
            replay_add(f, tags[i], taglens[i]);
        done(arg, STORE_UNAVAILABLE);
        return;
    }
    struct pass_op *op = xmalloc(sizeof(*op));
    *op = (struct pass_op){
        .f = f, .done = done, .arg = arg, .tags = tags, .taglens = taglens, .ntags = ntags};
    store_invalidate(f->primary, tags, taglens, ntags, on_primary_invalidate, op);
}

/* ---- delete_keys and invalidate_pattern --------------------------------------------------- */

struct count_op {
    struct failover *f;
    store_count_fn *done;
    void *arg;
};

static void
on_primary_count(void *arg, int status, uint64_t count)
{
    struct count_op *op = arg;

    /* -1 is an error reply: the store answered. */
    if (status == STORE_UNAVAILABLE)
        on_failure(op->f);
    else
        on_success(op->f);
    store_count_fn *done = op->done;
    void *darg = op->arg;
    free(op);
    done(darg, status, count);
}

static void
on_fallback_count(void *arg, int status, uint64_t count)
{
}

static void
fo_delete_keys(struct store *s, const char *const *keys, const size_t *lens, size_t n,
               store_count_fn *done, void *arg)
{
    struct failover *f = (struct failover *)s;

    if (!use_primary(f, false)) {
        store_delete_keys(f->fallback, keys, lens, n, on_fallback_count, NULL);
        done(arg, -1, 0);
        return;
    }
    struct count_op *op = xmalloc(sizeof(*op));
    *op = (struct count_op){.f = f, .done = done, .arg = arg};
    store_delete_keys(f->primary, keys, lens, n, on_primary_count, op);
}

static void
fo_invalidate_pattern(struct store *s, const char *glob, size_t globlen, store_count_fn *done,
                      void *arg)
{
    struct failover *f = (struct failover *)s;

    if (!use_primary(f, false)) {
        store_invalidate_pattern(f->fallback, glob, globlen, on_fallback_count, NULL);
        done(arg, -1, 0);
        return;
    }
    struct count_op *op = xmalloc(sizeof(*op));
    *op = (struct count_op){.f = f, .done = done, .arg = arg};
    store_invalidate_pattern(f->primary, glob, globlen, on_primary_count, op);
}

/* ---- list ---------------------------------------------------------------------------------- */

struct list_op {
    struct failover *f;
    store_list_fn *done;
    void *arg;
    size_t limit;
    size_t globlen;
    char glob[];
};

static void
on_primary_list(void *arg, int status, const struct store_listing *l)
{
    struct list_op *op = arg;
    struct failover *f = op->f;

    if (status == STORE_UNAVAILABLE) {
        on_failure(f);
        store_list(f->fallback, op->glob, op->globlen, op->limit, op->done, op->arg);
    } else {
        on_success(f); /* -1 is an error reply: the store answered */
        op->done(op->arg, status, l);
    }
    free(op);
}

static void
fo_list(struct store *s, const char *glob, size_t globlen, size_t limit, store_list_fn *done,
        void *arg)
{
    struct failover *f = (struct failover *)s;

    if (!use_primary(f, false)) {
        store_list(f->fallback, glob, globlen, limit, done, arg);
        return;
    }
    struct list_op *op = xmalloc(sizeof(*op) + globlen);
    *op = (struct list_op){.f = f, .done = done, .arg = arg, .limit = limit, .globlen = globlen};
    memcpy(op->glob, glob, globlen);
    store_list(f->primary, glob, globlen, limit, on_primary_list, op);
}

/* ---- fleet --------------------------------------------------------------------------------- */

struct fleet_op {
    struct failover *f;
    store_fleet_fn *done;
    void *arg;
    uint64_t ttl_ms;
    struct store_fleet_member me;
};

static void
on_primary_fleet(void *arg, int status, const struct store_fleet_member *m, size_t n)
{
    struct fleet_op *op = arg;
    struct failover *f = op->f;

    if (status == STORE_UNAVAILABLE) {
        on_failure(f);
        store_fleet(f->fallback, &op->me, op->ttl_ms, op->done, op->arg);
    } else {
        on_success(f);
        op->done(op->arg, status, m, n);
    }
    free(op);
}

/* The shared store's fleet; while it is unavailable, the fallback's (this process alone). */
static void
fo_fleet(struct store *s, const struct store_fleet_member *me, uint64_t ttl_ms,
         store_fleet_fn *done, void *arg)
{
    struct failover *f = (struct failover *)s;

    if (!use_primary(f, false)) {
        store_fleet(f->fallback, me, ttl_ms, done, arg);
        return;
    }
    struct fleet_op *op = xmalloc(sizeof(*op));
    *op = (struct fleet_op){.f = f, .done = done, .arg = arg, .ttl_ms = ttl_ms, .me = *me};
    store_fleet(f->primary, me, ttl_ms, on_primary_fleet, op);
}

/* A batch of kept invalidations in flight; its strings are owned here. */
struct replay_op {
    struct failover *f;
    char **tags;
    size_t *lens;
    size_t n;
};

static void
on_replay(void *arg, int status)
{
    struct replay_op *op = arg;
    struct failover *f = op->f;

    f->replaying = false;
    if (status != 0 && !f->closing) {
        for (size_t i = 0; i < op->n; i++)
            replay_add(f, op->tags[i], op->lens[i]);
        on_failure(f);
    }
    for (size_t i = 0; i < op->n; i++)
        free(op->tags[i]);
    free(op->tags);
    free(op->lens);
    free(op);
    if (status == 0 && !f->closing)
        on_success(f);
}

static void
replay_flush(struct failover *f)
{
    struct replay_op *op = xmalloc(sizeof(*op));
    size_t n = f->replay_n;

    op->f = f;
    op->n = n;
    op->tags = xmalloc(n * sizeof(*op->tags));
    op->lens = xmalloc(n * sizeof(*op->lens));
    for (size_t i = 0; i < n; i++) {
        size_t j = (f->replay_head + i) % MAX_REPLAY;
        op->tags[i] = f->replay[j];
        op->lens[i] = f->replay_len[j];
        f->replay[j] = NULL;
    }
    f->replay_head = 0;
    f->replay_n = 0;
    f->replaying = true;
    store_invalidate(f->primary, (const char *const *)op->tags, op->lens, n, on_replay, op);
}

/* ---- the store ---------------------------------------------------------------------------- */

static void
fo_destroy(struct store *s)
{
    struct failover *f = (struct failover *)s;

    f->closing = true;
    f->primary->ops->destroy(f->primary); /* completes what is pending, here */
    f->fallback->ops->destroy(f->fallback);
    for (size_t i = 0; i < f->replay_n; i++)
        free(f->replay[(f->replay_head + i) % MAX_REPLAY]);
    free(f->replay);
    free(f->replay_len);
    free(f->name);
    free(f);
}

static void
fo_health(struct store *s, struct store_health *h)
{
    struct failover *f = (struct failover *)s;

    struct store_health primary;
    store_health(f->primary, &primary);
    *h = f->h;
    h->latency = primary.latency;
    /* A primary with no connection (none made yet, or no master known) is degraded before any
     * request has failed on it. */
    h->degraded = f->state != BR_CLOSED || primary.degraded;
    h->state = f->state == BR_CLOSED && primary.degraded ? "degraded" : state_name(f->state);
}

static void
fo_release_lease(struct store *s, const char *key, size_t keylen)
{
    struct failover *f = (struct failover *)s;

    if (use_primary(f, false))
        store_release_lease(f->primary, key, keylen);
}

static const struct store_ops failover_ops = {
    .name = "failover",
    .admit_and_lookup = fo_admit_and_lookup,
    .fill = fo_fill,
    .invalidate = fo_invalidate,
    .destroy = fo_destroy,
    .health = fo_health,
    .delete_keys = fo_delete_keys,
    .invalidate_pattern = fo_invalidate_pattern,
    .release_lease = fo_release_lease,
    .list = fo_list,
    .fleet = fo_fleet,
};

struct store *
store_failover_new(struct store *primary, struct store *fallback,
                   const struct store_failover_config *cfg)
{
    struct failover *f = xcalloc(1, sizeof(*f));

    f->base.ops = &failover_ops;
    f->primary = primary;
    f->fallback = fallback;
    f->threshold = cfg && cfg->failures ? cfg->failures : 3;
    f->cooldown_ms = cfg && cfg->cooldown_ms ? cfg->cooldown_ms : 1000;
    f->name = xstrdup(cfg && cfg->name ? cfg->name : "store");
    f->replay = xcalloc(MAX_REPLAY, sizeof(*f->replay));
    f->replay_len = xcalloc(MAX_REPLAY, sizeof(*f->replay_len));
    return &f->base;
}
