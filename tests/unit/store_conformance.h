/* store_conformance.h - the store.h contract as a cmocka suite, run against any struct store. */
#ifndef SLUICE_STORE_CONFORMANCE_H
#define SLUICE_STORE_CONFORMANCE_H

/*
 * Include once, after <cmocka.h>, in a test program that supplies a
 * harness and calls store_conformance_run(). Every test gets a fresh,
 * empty store from the harness and goes through `struct store *` only, so
 * the suite runs unchanged against the memory store (synchronous, test
 * clock) and the Redis store (asynchronous, real clock).
 */

#include <fnmatch.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

struct store_harness {
    const char *name; /* the cmocka group name */
    /* Returns a new, empty store. */
    struct store *(*open)(void *ctx);
    /* Frees a store from open(). */
    void (*close)(void *ctx, struct store *s);
    /* Runs the event loop until *done is true; a synchronous store's harness does nothing. */
    void (*run_until_done)(void *ctx, const bool *done);
    /* Lets `ms` pass on the store's clock: a test clock moves, a real store sleeps. */
    void (*advance)(void *ctx, uint64_t ms);
    /* Returns another handle on the store open() returned last (as another worker's). */
    struct store *(*another)(void *ctx);
    void *ctx;
};

struct conf {
    const struct store_harness *h;
    struct store *s;
};

/* One store operation in flight: `done` must run exactly once. */
struct conf_op {
    bool done;
    int calls;
    int status;
};

static void
conf_done(void *arg, int status)
{
    struct conf_op *op = arg;

    op->calls++;
    op->done = true;
    op->status = status;
}

static int
conf_wait(struct conf *c, struct conf_op *op)
{
    c->h->run_until_done(c->h->ctx, &op->done);
    assert_true(op->done);
    assert_int_equal(op->calls, 1);
    return op->status;
}

static int
conf_setup(void **state)
{
    const struct store_harness *h = *state;
    struct conf *c = calloc(1, sizeof(*c));

    if (!c)
        return -1;
    c->h = h;
    c->s = h->open(h->ctx);
    *state = c;
    return c->s ? 0 : -1;
}

static int
conf_teardown(void **state)
{
    struct conf *c = *state;

    if (c->s)
        c->h->close(c->h->ctx, c->s);
    free(c);
    return 0;
}

/* ---- requests ----------------------------------------------------------- */

#define CONF_MAX 4

/* One admit_and_lookup: limits, an optional cache key, tags (strings or explicit lengths). */
struct conf_req {
    struct store_limit limits[CONF_MAX];
    struct limiter_rule rules[CONF_MAX];
    size_t nlimits;
    const char *key;
    size_t keylen;
    const char *tags[CONF_MAX];
    size_t taglens[CONF_MAX];
    size_t ntags;
    uint64_t lease_ms; /* ask for the fill lease */
    struct limiter_result results[CONF_MAX];
    uint64_t gens[CONF_MAX];
    struct store_admit a;
};

static struct limiter_rule
conf_rule(enum limiter_algo algo, uint64_t limit, uint64_t window_ms)
{
    return (struct limiter_rule){.algo = algo, .limit = limit, .window_ms = window_ms};
}

static void
conf_add_limit(struct conf_req *r, struct limiter_rule rule, const char *key, size_t keylen,
               uint32_t cost)
{
    assert_true(r->nlimits < CONF_MAX);
    r->rules[r->nlimits] = rule;
    r->limits[r->nlimits] = (struct store_limit){.key = key, .keylen = keylen, .cost = cost};
    r->nlimits++;
}

/* As conf_add_limit(), a shadow-mode limit. */
static void
conf_add_shadow(struct conf_req *r, struct limiter_rule rule, const char *key, uint32_t cost)
{
    conf_add_limit(r, rule, key, strlen(key), cost);
    r->limits[r->nlimits - 1].shadow = true;
}

static void
conf_add_tag(struct conf_req *r, const char *tag, size_t len)
{
    assert_true(r->ntags < CONF_MAX);
    r->tags[r->ntags] = tag;
    r->taglens[r->ntags] = len;
    r->ntags++;
}

/* Runs the request (a peek when peek); the caller releases r->a.entry. */
static void
conf_admit_mode(struct conf *c, struct conf_req *r, bool peek)
{
    struct conf_op op = {0};

    for (size_t i = 0; i < r->nlimits; i++)
        r->limits[i].rule = &r->rules[i];
    memset(r->results, 0xa5, sizeof(r->results));
    memset(&r->a, 0, sizeof(r->a));
    r->a.limits = r->limits;
    r->a.nlimits = r->nlimits;
    r->a.cache_key = r->key;
    r->a.cache_keylen = r->keylen;
    r->a.tags = r->tags;
    r->a.taglens = r->taglens;
    r->a.ntags = r->ntags;
    r->a.lease_ms = r->lease_ms;
    r->a.results = r->results;
    r->a.tag_gens = r->gens;
    r->a.peek = peek;
    r->a.entry = (struct store_entry *)(uintptr_t)1; /* must be overwritten */
    store_admit_and_lookup(c->s, &r->a, conf_done, &op);
    assert_int_equal(conf_wait(c, &op), 0);
    assert_true(r->a.now_ms > 0);
    if (r->a.state == STORE_HIT || r->a.state == STORE_STALE)
        assert_non_null(r->a.entry);
    else
        assert_null(r->a.entry);
    if (r->a.state == STORE_FILLING)
        assert_true(r->lease_ms > 0 && r->key);
    if (!r->a.allowed) {
        assert_int_equal(r->a.state, STORE_MISS);
    }
    if (r->a.refused_full) /* no room for the limits' state: refused, whatever they said */
        assert_false(r->a.allowed);
    /* The lease is taken only when asked, never on a hit or while another holds it; a miss
     * that asked for it got it. */
    if (!r->lease_ms || !r->key || !r->a.allowed || r->a.state == STORE_HIT ||
        r->a.state == STORE_FILLING)
        assert_false(r->a.lease_taken);
    else if (r->a.state == STORE_MISS)
        assert_true(r->a.lease_taken);
}

static void
conf_admit(struct conf *c, struct conf_req *r)
{
    conf_admit_mode(c, r, false);
}

/* Checks r's limits without counting them (no cache key). */
static void
conf_admit_peek(struct conf *c, struct conf_req *r)
{
    conf_admit_mode(c, r, true);
}

/* One limit, no cache: the result. */
static struct limiter_result
conf_limit(struct conf *c, struct limiter_rule rule, const char *key, uint32_t cost)
{
    struct conf_req r = {0};

    conf_add_limit(&r, rule, key, strlen(key), cost);
    conf_admit(c, &r);
    assert_int_equal(r.a.allowed, r.results[0].allowed);
    return r.results[0];
}

/* A lookup of `key` naming up to CONF_MAX NUL-terminated tags (NULL-terminated list). */
static void
conf_lookup(struct conf *c, struct conf_req *r, const char *key, const char *const *tags)
{
    memset(r, 0, sizeof(*r));
    r->key = key;
    r->keylen = strlen(key);
    for (; tags && *tags; tags++)
        conf_add_tag(r, *tags, strlen(*tags));
    conf_admit(c, r);
    assert_true(r->a.allowed);
}

static struct store_entry *
conf_entry(uint16_t status, const char *ctype, const void *body, size_t len)
{
    char *b = malloc(len ? len : 1);
    char *ct = ctype ? strdup(ctype) : NULL;

    assert_non_null(b);
    assert_true(ct || !ctype);
    memcpy(b, body, len);
    return store_entry_new(status, ct, b, len);
}

/* An entry as the gateway makes one for the key r looked up: one block with room for the
 * store's record of it (store_entry_make(), store_record_room()). */
static struct store_entry *
conf_entry_for(struct conf *c, const struct conf_req *r, uint16_t status, const char *ctype,
               const void *body, size_t len)
{
    return store_entry_make(status, ctype, NULL, 0, NULL, body, len,
                            store_record_room(c->s, r->keylen, r->ntags));
}

/* Fills the key the request looked up, with its tags and the generations it read. */
static int
conf_fill_req(struct conf *c, const struct conf_req *r, struct store_entry *e, uint64_t ttl_ms)
{
    struct conf_op op = {0};

    store_fill(c->s, r->key, r->keylen, e, ttl_ms, r->tags, r->taglens, r->gens, r->ntags,
               conf_done, &op);
    return conf_wait(c, &op);
}

/* Looks `key` up under `tags` and fills a text body there; returns the fill status. */
static int
conf_put(struct conf *c, const char *key, const char *const *tags, const char *body,
         uint64_t ttl_ms)
{
    struct conf_req r;

    conf_lookup(c, &r, key, tags);
    store_entry_release(r.a.entry);
    struct store_entry *e = conf_entry_for(c, &r, 200, "text/plain", body, strlen(body));
    int status = conf_fill_req(c, &r, e, ttl_ms);
    store_entry_release(e);
    return status;
}

/* Looks `key` up under `tags`: the body on a hit (compared to `want`), or a miss. */
static bool
conf_hit(struct conf *c, const char *key, const char *const *tags, const char *want)
{
    struct conf_req r;

    conf_lookup(c, &r, key, tags);
    if (r.a.state != STORE_HIT)
        return false;
    if (want) {
        assert_int_equal(r.a.entry->body_len, strlen(want));
        assert_memory_equal(r.a.entry->body, want, strlen(want));
    }
    store_entry_release(r.a.entry);
    return true;
}

static void
conf_invalidate(struct conf *c, const char *const *tags, const size_t *lens, size_t n)
{
    struct conf_op op = {0};

    store_invalidate(c->s, tags, lens, n, conf_done, &op);
    assert_int_equal(conf_wait(c, &op), 0);
}

static void
conf_invalidate1(struct conf *c, const char *tag)
{
    size_t len = strlen(tag);

    conf_invalidate(c, &tag, &len, 1);
}

#define HOUR 3600000

/* ---- limits ------------------------------------------------------------- */

static void
conf_limit_counts(void **state)
{
    struct conf *c = *state;
    struct limiter_rule rule = conf_rule(LIMITER_SLIDING_WINDOW, 3, HOUR);
    struct limiter_result res;

    for (uint64_t i = 0; i < 3; i++) {
        res = conf_limit(c, rule, "u:1", 1);
        assert_true(res.allowed);
        assert_int_equal(res.limit, 3);
        assert_int_equal(res.remaining, 2 - i);
        assert_int_equal(res.retry_after_ms, 0);
        assert_true(res.reset_ms > 0 && res.reset_ms <= HOUR);
    }
    for (int i = 0; i < 3; i++) {
        res = conf_limit(c, rule, "u:1", 1);
        assert_false(res.allowed);
        assert_int_equal(res.remaining, 0);
        assert_true(res.retry_after_ms > 0 && res.retry_after_ms <= 2 * HOUR);
    }
}

static void
conf_limit_algorithms(void **state)
{
    struct conf *c = *state;
    static const enum limiter_algo algos[] = {LIMITER_SLIDING_WINDOW, LIMITER_SLIDING_LOG,
                                              LIMITER_TOKEN_BUCKET, LIMITER_FIXED_WINDOW};

    for (size_t i = 0; i < 4; i++) {
        struct limiter_rule rule = conf_rule(algos[i], 2, HOUR);
        char key[32];
        snprintf(key, sizeof(key), "algo:%zu", i);
        assert_int_equal(conf_limit(c, rule, key, 1).remaining, 1);
        assert_int_equal(conf_limit(c, rule, key, 1).remaining, 0);
        struct limiter_result res = conf_limit(c, rule, key, 1);
        assert_false(res.allowed);
        assert_true(res.retry_after_ms > 0);
    }
    /* A token bucket's burst is its capacity. */
    struct limiter_rule tb = conf_rule(LIMITER_TOKEN_BUCKET, 2, HOUR);
    tb.burst = 4;
    for (int i = 0; i < 4; i++)
        assert_true(conf_limit(c, tb, "burst", 1).allowed);
    assert_false(conf_limit(c, tb, "burst", 1).allowed);
}

static void
conf_limit_cost(void **state)
{
    struct conf *c = *state;
    struct limiter_rule rule = conf_rule(LIMITER_FIXED_WINDOW, 5, HOUR);
    struct limiter_result res;

    res = conf_limit(c, rule, "cost", 3);
    assert_true(res.allowed);
    assert_int_equal(res.remaining, 2);
    res = conf_limit(c, rule, "cost", 3);
    assert_false(res.allowed);
    assert_int_equal(res.remaining, 2);
    res = conf_limit(c, rule, "cost", 2);
    assert_true(res.allowed);
    assert_int_equal(res.remaining, 0);
}

static void
conf_limit_cost_over_limit(void **state)
{
    struct conf *c = *state;
    struct limiter_rule rule = conf_rule(LIMITER_SLIDING_WINDOW, 5, HOUR);
    struct limiter_result res;

    res = conf_limit(c, rule, "big", 6);
    assert_false(res.allowed);
    assert_int_equal(res.retry_after_ms, HOUR);
    res = conf_limit(c, rule, "big", 5); /* the denial counted nothing */
    assert_true(res.allowed);
    assert_int_equal(res.remaining, 0);
}

static void
conf_limit_all_or_nothing(void **state)
{
    struct conf *c = *state;
    struct limiter_rule wide = conf_rule(LIMITER_SLIDING_WINDOW, 5, HOUR);
    struct limiter_rule narrow = conf_rule(LIMITER_SLIDING_LOG, 1, HOUR);

    for (int order = 0; order < 2; order++) {
        const char *wk = order ? "wide:b" : "wide:a", *nk = order ? "narrow:b" : "narrow:a";
        size_t wi = order ? 1 : 0, ni = order ? 0 : 1;
        for (int round = 0; round < 3; round++) {
            struct conf_req r = {0};
            if (order) {
                conf_add_limit(&r, narrow, nk, strlen(nk), 1);
                conf_add_limit(&r, wide, wk, strlen(wk), 1);
            } else {
                conf_add_limit(&r, wide, wk, strlen(wk), 1);
                conf_add_limit(&r, narrow, nk, strlen(nk), 1);
            }
            conf_admit(c, &r);
            assert_int_equal(r.a.allowed, round == 0);
            assert_true(r.results[wi].allowed);
            assert_int_equal(r.results[wi].remaining, round == 0 ? 4 : 3);
            assert_int_equal(r.results[ni].allowed, round == 0);
            assert_int_equal(r.results[ni].remaining, 0);
        }
        /* The wide limit moved once, not three times. */
        struct limiter_result res = conf_limit(c, wide, wk, 1);
        assert_true(res.allowed);
        assert_int_equal(res.remaining, 3);
    }
}

static void
conf_limit_keys_isolated(void **state)
{
    struct conf *c = *state;
    struct limiter_rule one = conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR);

    assert_true(conf_limit(c, one, "u:1", 1).allowed);
    assert_false(conf_limit(c, one, "u:1", 1).allowed);
    assert_true(conf_limit(c, one, "u:2", 1).allowed);
    assert_true(conf_limit(c, one, "u:10", 1).allowed);
    assert_true(conf_limit(c, one, "u:", 1).allowed);
    assert_true(conf_limit(c, one, "", 1).allowed);
    assert_false(conf_limit(c, one, "", 1).allowed);
    /* The same key under other rules is another counter. */
    assert_true(conf_limit(c, conf_rule(LIMITER_SLIDING_WINDOW, 1, HOUR), "u:1", 1).allowed);
    assert_true(conf_limit(c, conf_rule(LIMITER_FIXED_WINDOW, 2, HOUR), "u:1", 1).allowed);
    assert_true(conf_limit(c, conf_rule(LIMITER_FIXED_WINDOW, 1, 2 * HOUR), "u:1", 1).allowed);
    assert_false(conf_limit(c, one, "u:1", 1).allowed);
}

/*
 * A store with room refuses no caller for want of it: thousands of callers,
 * and a long sliding log, are each counted (refused_full is for a store whose
 * limit budget is full of live states).
 */
static void
conf_limit_room_for_many(void **state)
{
    struct conf *c = *state;
    struct limiter_rule log = conf_rule(LIMITER_SLIDING_LOG, 100000, HOUR);
    char key[32];

    for (int i = 0; i < 3000; i++) {
        struct conf_req r = {0};
        snprintf(key, sizeof(key), "caller:%d", i);
        conf_add_limit(&r, conf_rule(LIMITER_SLIDING_WINDOW, 5, HOUR), key, strlen(key), 1);
        conf_admit(c, &r);
        assert_true(r.a.allowed);
        assert_false(r.a.refused_full);
    }
    for (int i = 0; i < 300; i++) {
        struct limiter_result res = conf_limit(c, log, "long-log", 1);
        assert_true(res.allowed);
        assert_int_equal(res.remaining, 100000 - 1 - i);
        c->h->advance(c->h->ctx, 1);
    }
}

static void
conf_limit_window_passes(void **state)
{
    struct conf *c = *state;
    struct limiter_rule rule = conf_rule(LIMITER_FIXED_WINDOW, 1, 200);
    struct limiter_result res;

    assert_true(conf_limit(c, rule, "short", 1).allowed);
    res = conf_limit(c, rule, "short", 1);
    assert_false(res.allowed);
    assert_true(res.retry_after_ms > 0 && res.retry_after_ms <= 200);
    c->h->advance(c->h->ctx, 450);
    assert_true(conf_limit(c, rule, "short", 1).allowed);
}

/* ---- shadow-mode limits ------------------------------------------------- */

/*
 * A shadow limit at its limit reports the refusal but does not refuse the request; an enforced
 * limit beside it still refuses, and then the shadow limit is not charged either.
 */
static void
conf_shadow_never_refuses(void **state)
{
    struct conf *c = *state;
    struct limiter_rule two = conf_rule(LIMITER_SLIDING_WINDOW, 2, HOUR);
    struct limiter_rule four = conf_rule(LIMITER_SLIDING_WINDOW, 4, HOUR);

    for (int i = 0; i < 6; i++) {
        struct conf_req r = {0};
        conf_add_shadow(&r, two, "sh", 1);
        conf_add_limit(&r, four, "en", 2, 1);
        conf_admit(c, &r);
        assert_int_equal(r.a.allowed, i < 4);          /* the enforced limit decides */
        assert_int_equal(r.results[0].allowed, i < 2); /* the shadow one says what it would do */
        assert_int_equal(r.results[0].remaining, i < 2 ? 1 - i : 0);
        assert_int_equal(r.results[0].limit, 2);
        if (i >= 2)
            assert_true(r.results[0].retry_after_ms > 0);
        assert_int_equal(r.results[1].allowed, i < 4);
    }
    /* Alone, a shadow limit far past its limit still admits. */
    for (int i = 0; i < 3; i++) {
        struct conf_req r = {0};
        conf_add_shadow(&r, two, "sh", 1);
        conf_admit(c, &r);
        assert_true(r.a.allowed);
        assert_false(r.results[0].allowed);
    }
}

/*
 * A shadow limit is the same counter as its enforced twin (same key and rule): what it
 * admitted is charged, what it would have refused is not, in every algorithm. Cost 2 of 3:
 * the first is charged, the second would refuse (4 > 3) and is not charged, so the enforced
 * twin still has exactly 1 left.
 */
static void
conf_shadow_charged_only_when_admitting(void **state)
{
    struct conf *c = *state;
    static const enum limiter_algo algos[] = {LIMITER_SLIDING_WINDOW, LIMITER_SLIDING_LOG,
                                              LIMITER_TOKEN_BUCKET, LIMITER_FIXED_WINDOW};

    for (size_t i = 0; i < 4; i++) {
        struct limiter_rule rule = conf_rule(algos[i], 3, HOUR);
        char key[32];
        snprintf(key, sizeof(key), "twin:%zu", i);
        struct conf_req r = {0};
        conf_add_shadow(&r, rule, key, 2);
        conf_admit(c, &r);
        assert_true(r.a.allowed);
        assert_true(r.results[0].allowed);
        assert_int_equal(r.results[0].remaining, 1);
        memset(&r, 0, sizeof(r));
        conf_add_shadow(&r, rule, key, 2);
        conf_admit(c, &r);
        assert_true(r.a.allowed);
        assert_false(r.results[0].allowed);
        struct limiter_result res = conf_limit(c, rule, key, 1); /* enforced from here on */
        assert_true(res.allowed);
        assert_int_equal(res.remaining, 0);
        assert_false(conf_limit(c, rule, key, 1).allowed);
    }
}

/* A request an enforced limit refuses is charged to none of its limits, shadow ones included. */
static void
conf_shadow_not_charged_when_refused(void **state)
{
    struct conf *c = *state;
    struct limiter_rule one = conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR);
    struct limiter_rule five = conf_rule(LIMITER_FIXED_WINDOW, 5, HOUR);

    for (int i = 0; i < 3; i++) {
        struct conf_req r = {0};
        conf_add_limit(&r, one, "strict", 6, 1);
        conf_add_shadow(&r, five, "trial", 1);
        conf_admit(c, &r);
        assert_int_equal(r.a.allowed, i == 0);
        assert_true(r.results[1].allowed);
    }
    assert_int_equal(conf_limit(c, five, "trial", 1).remaining, 3); /* 1 counted, then this */
}

/* One counter named by an enforced and a shadow limit of a request is enforced. */
static void
conf_shadow_shared_with_enforced(void **state)
{
    struct conf *c = *state;
    struct limiter_rule one = conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR);
    struct conf_req r = {0};

    conf_add_limit(&r, one, "both", 4, 1);
    conf_add_shadow(&r, one, "both", 1);
    conf_admit(c, &r);
    assert_false(r.a.allowed); /* 1 + 1 > 1 */
    assert_true(conf_limit(c, one, "both", 1).allowed);
}

/* A peek says what a request would get and counts nothing, shadow limits included. */
static void
conf_limit_peek_counts_nothing(void **state)
{
    struct conf *c = *state;
    struct limiter_rule two = conf_rule(LIMITER_SLIDING_LOG, 2, HOUR);

    for (int round = 0; round < 4; round++) {
        struct conf_req r = {0};
        conf_add_limit(&r, two, "peek", 4, 1);
        conf_add_shadow(&r, two, "peek:sh", 1);
        conf_admit_peek(c, &r);
        assert_int_equal(r.a.allowed, round < 2);
        assert_int_equal(r.results[0].remaining, round < 2 ? 1 - round : 0);
        assert_int_equal(r.results[1].allowed, round < 2);
        if (round < 2) { /* then counted once, by a request that is not a peek */
            assert_true(conf_limit(c, two, "peek", 1).allowed);
            memset(&r, 0, sizeof(r));
            conf_add_shadow(&r, two, "peek:sh", 1);
            conf_admit(c, &r);
            assert_true(r.a.allowed);
        }
    }
}

/* ---- cache -------------------------------------------------------------- */

static void
conf_cache_miss_fill_hit(void **state)
{
    struct conf *c = *state;
    static const char body[] = "{\"id\":1}\0tail\xff";
    struct conf_req r;

    conf_lookup(c, &r, "crm:contacts:42", (const char *[]){"crm:42", NULL});
    assert_int_equal(r.a.state, STORE_MISS);
    struct store_entry *e = conf_entry(203, "application/json", body, sizeof(body) - 1);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), 0);
    assert_true(e->expires_ms - e->stored_ms == 60000);
    store_entry_release(e);

    conf_lookup(c, &r, "crm:contacts:42", (const char *[]){"crm:42", NULL});
    assert_int_equal(r.a.state, STORE_HIT);
    struct store_entry *got = r.a.entry;
    assert_int_equal(got->status, 203);
    assert_string_equal(got->content_type, "application/json");
    assert_int_equal(got->body_len, sizeof(body) - 1);
    assert_memory_equal(got->body, body, sizeof(body) - 1);
    assert_true(got->stored_ms <= r.a.now_ms);
    assert_true(got->expires_ms > r.a.now_ms);
    store_entry_release(got);
}

static void
conf_cache_large_body(void **state)
{
    struct conf *c = *state;
    size_t len = 256 * 1024;
    char *body = malloc(len);
    struct conf_req r;

    assert_non_null(body);
    for (size_t i = 0; i < len; i++)
        body[i] = (char)(i * 7 + (i >> 8));
    conf_lookup(c, &r, "big", NULL);
    struct store_entry *e = conf_entry(200, "application/octet-stream", body, len);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), 0);
    store_entry_release(e);
    conf_lookup(c, &r, "big", NULL);
    assert_int_equal(r.a.state, STORE_HIT);
    assert_int_equal(r.a.entry->body_len, len);
    assert_memory_equal(r.a.entry->body, body, len);
    store_entry_release(r.a.entry);
    free(body);
}

static void
conf_cache_no_key(void **state)
{
    struct conf *c = *state;
    struct conf_req r = {0};

    assert_int_equal(conf_put(c, "k", NULL, "v", 60000), 0);
    conf_add_limit(&r, conf_rule(LIMITER_FIXED_WINDOW, 2, HOUR), "nokey", 5, 1);
    conf_admit(c, &r);
    assert_true(r.a.allowed);
    assert_int_equal(r.a.state, STORE_MISS);
    assert_int_equal(r.results[0].remaining, 1);
}

static void
conf_cache_denied_skips_lookup(void **state)
{
    struct conf *c = *state;
    struct limiter_rule one = conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR);

    assert_int_equal(conf_put(c, "page", NULL, "cached", 60000), 0);
    for (int i = 0; i < 2; i++) {
        struct conf_req r = {0};
        conf_add_limit(&r, one, "caller", 6, 1);
        r.key = "page";
        r.keylen = 4;
        conf_admit(c, &r);
        assert_int_equal(r.a.allowed, i == 0);
        assert_int_equal(r.a.state, i == 0 ? STORE_HIT : STORE_MISS);
        store_entry_release(r.a.entry);
    }
}

static void
conf_cache_replace(void **state)
{
    struct conf *c = *state;

    assert_int_equal(conf_put(c, "k", NULL, "one", 60000), 0);
    assert_true(conf_hit(c, "k", NULL, "one"));
    assert_int_equal(conf_put(c, "k", NULL, "two", 60000), 0);
    assert_true(conf_hit(c, "k", NULL, "two"));
}

static void
conf_cache_ttl(void **state)
{
    struct conf *c = *state;

    assert_int_equal(conf_put(c, "short", NULL, "s", 300), 0);
    assert_int_equal(conf_put(c, "long", NULL, "l", 60000), 0);
    assert_true(conf_hit(c, "short", NULL, "s"));
    c->h->advance(c->h->ctx, 100);
    assert_true(conf_hit(c, "short", NULL, "s"));
    c->h->advance(c->h->ctx, 400);
    assert_false(conf_hit(c, "short", NULL, NULL));
    assert_true(conf_hit(c, "long", NULL, "l"));
}

static void
conf_cache_keys_isolated(void **state)
{
    struct conf *c = *state;
    struct conf_req r;

    assert_int_equal(conf_put(c, "k1", NULL, "a", 60000), 0);
    assert_false(conf_hit(c, "k2", NULL, NULL));
    assert_false(conf_hit(c, "k", NULL, NULL));
    assert_false(conf_hit(c, "k10", NULL, NULL));
    assert_false(conf_hit(c, "K1", NULL, NULL));
    assert_int_equal(conf_put(c, "k2", NULL, "b", 60000), 0);
    assert_true(conf_hit(c, "k1", NULL, "a"));
    assert_true(conf_hit(c, "k2", NULL, "b"));
    /* "k1" followed by a NUL byte is another key. */
    memset(&r, 0, sizeof(r));
    r.key = "k1\0";
    r.keylen = 3;
    conf_admit(c, &r);
    assert_int_equal(r.a.state, STORE_MISS);
    /* The empty key is a key. */
    assert_false(conf_hit(c, "", NULL, NULL));
    assert_int_equal(conf_put(c, "", NULL, "empty", 60000), 0);
    assert_true(conf_hit(c, "", NULL, "empty"));
}

static void
conf_cache_odd_bytes(void **state)
{
    struct conf *c = *state;
    static const char key[] = "sl:{u\0\xff}:*?[a]\r\n \"%\\x00";
    static const char tag[] = "t\0{x}\n*";
    static const char lkey[] = "lim\0\xfe{}*";
    struct conf_req r = {0};

    conf_add_limit(&r, conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR), lkey, sizeof(lkey) - 1, 1);
    r.key = key;
    r.keylen = sizeof(key) - 1;
    conf_add_tag(&r, tag, sizeof(tag) - 1);
    conf_admit(c, &r);
    assert_true(r.a.allowed);
    assert_int_equal(r.a.state, STORE_MISS);
    struct store_entry *e = conf_entry(200, "text/plain", "odd", 3);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), 0);
    store_entry_release(e);

    /* The bytes up to the NUL are another limit key. */
    assert_true(conf_limit(c, conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR), "lim", 1).allowed);

    struct conf_req q = {0};
    q.key = key;
    q.keylen = sizeof(key) - 1;
    conf_add_tag(&q, tag, sizeof(tag) - 1);
    conf_admit(c, &q);
    assert_int_equal(q.a.state, STORE_HIT);
    assert_memory_equal(q.a.entry->body, "odd", 3);
    store_entry_release(q.a.entry);

    struct conf_req l = {0};
    conf_add_limit(&l, conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR), lkey, sizeof(lkey) - 1, 1);
    conf_admit(c, &l);
    assert_false(l.a.allowed);

    /* A key cut at its NUL does not find the entry; the tag cut at its NUL is another tag. */
    assert_false(conf_hit(c, "sl:{u", NULL, NULL));
    conf_invalidate1(c, "t");
    conf_admit(c, &q);
    assert_int_equal(q.a.state, STORE_HIT);
    store_entry_release(q.a.entry);
    const char *tags[] = {tag};
    size_t lens[] = {sizeof(tag) - 1};
    conf_invalidate(c, tags, lens, 1);
    conf_admit(c, &q);
    assert_int_equal(q.a.state, STORE_MISS);
}

/* ---- tags --------------------------------------------------------------- */

static void
conf_tags_invalidate(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"crm:42", NULL};
    struct conf_req r;

    assert_int_equal(conf_put(c, "crm:contacts:42", tags, "v1", 60000), 0);
    assert_true(conf_hit(c, "crm:contacts:42", tags, "v1"));
    conf_invalidate1(c, "crm:42");
    assert_false(conf_hit(c, "crm:contacts:42", tags, NULL));
    assert_false(conf_hit(c, "crm:contacts:42", tags, NULL));
    /* A new lookup's generations fill again. */
    assert_int_equal(conf_put(c, "crm:contacts:42", tags, "v2", 60000), 0);
    assert_true(conf_hit(c, "crm:contacts:42", tags, "v2"));
    /* Invalidating twice in a row, and a tag nobody used, are fine. */
    conf_invalidate1(c, "crm:42");
    conf_invalidate1(c, "crm:42");
    conf_invalidate1(c, "never:used");
    assert_false(conf_hit(c, "crm:contacts:42", tags, NULL));
    conf_lookup(c, &r, "crm:contacts:42", tags);
    assert_int_equal(r.a.state, STORE_MISS);
}

static void
conf_tags_generations(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"a", "b", NULL};
    struct conf_req r1, r2;

    conf_lookup(c, &r1, "k", tags);
    conf_lookup(c, &r2, "k", tags);
    assert_memory_equal(r1.gens, r2.gens, 2 * sizeof(uint64_t));
    conf_invalidate1(c, "b");
    conf_lookup(c, &r2, "k", tags);
    assert_true(r1.gens[0] == r2.gens[0]);
    assert_true(r1.gens[1] != r2.gens[1]);
    /* Made-up generations do not fill. */
    r2.gens[0] ^= 0x5a5a;
    struct store_entry *e = conf_entry(200, "text/plain", "x", 1);
    assert_int_equal(conf_fill_req(c, &r2, e, 60000), -1);
    store_entry_release(e);
    assert_false(conf_hit(c, "k", tags, NULL));
}

static void
conf_tags_set_after_invalidate(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"crm:7", NULL};
    struct conf_req r;

    /* The tag exists: an entry was filled under it before. */
    assert_int_equal(conf_put(c, "crm:list:7", tags, "old", 60000), 0);
    conf_lookup(c, &r, "crm:contacts:7", tags);
    assert_int_equal(r.a.state, STORE_MISS);
    conf_invalidate1(c, "crm:7"); /* a write lands while the origin answers */
    struct store_entry *e = conf_entry(200, "text/plain", "stale", 5);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), -1);
    store_entry_release(e);
    assert_false(conf_hit(c, "crm:contacts:7", tags, NULL));
    assert_false(conf_hit(c, "crm:list:7", tags, NULL));

    /* The tag was never seen before the lookup. */
    const char *fresh[] = {"dash:9", NULL};
    conf_lookup(c, &r, "dash:9", fresh);
    conf_invalidate1(c, "dash:9");
    e = conf_entry(200, "text/plain", "stale", 5);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), -1);
    store_entry_release(e);
    assert_false(conf_hit(c, "dash:9", fresh, NULL));

    /* An invalidation before the lookup does not refuse the fill. */
    assert_int_equal(conf_put(c, "dash:9", fresh, "fresh", 60000), 0);
    assert_true(conf_hit(c, "dash:9", fresh, "fresh"));
}

static void
conf_tags_several_entries(void **state)
{
    struct conf *c = *state;
    const char *ta[] = {"A", NULL}, *tab[] = {"A", "B", NULL}, *tb[] = {"B", NULL};

    assert_int_equal(conf_put(c, "e1", ta, "1", 60000), 0);
    assert_int_equal(conf_put(c, "e2", tab, "2", 60000), 0);
    assert_int_equal(conf_put(c, "e3", tb, "3", 60000), 0);
    assert_int_equal(conf_put(c, "e4", NULL, "4", 60000), 0);
    assert_true(conf_hit(c, "e1", ta, "1"));
    assert_true(conf_hit(c, "e2", tab, "2"));

    conf_invalidate1(c, "A");
    assert_false(conf_hit(c, "e1", ta, NULL));
    assert_false(conf_hit(c, "e2", tab, NULL));
    assert_true(conf_hit(c, "e3", tb, "3"));
    assert_true(conf_hit(c, "e4", NULL, "4"));

    conf_invalidate1(c, "B");
    assert_false(conf_hit(c, "e3", tb, NULL));
    assert_true(conf_hit(c, "e4", NULL, "4"));

    /* Several tags in one call. */
    assert_int_equal(conf_put(c, "e1", ta, "1", 60000), 0);
    assert_int_equal(conf_put(c, "e3", tb, "3", 60000), 0);
    const char *both[] = {"B", "A"};
    size_t lens[] = {1, 1};
    conf_invalidate(c, both, lens, 2);
    assert_false(conf_hit(c, "e1", ta, NULL));
    assert_false(conf_hit(c, "e3", tb, NULL));
}

static void
conf_tags_unrelated(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"crm:1", NULL};
    struct conf_req r;

    assert_int_equal(conf_put(c, "crm:a:1", tags, "a", 60000), 0);
    conf_lookup(c, &r, "crm:b:1", tags);
    conf_invalidate1(c, "crm:2");
    conf_invalidate1(c, "crm:1:x");
    conf_invalidate1(c, "crm:");
    assert_true(conf_hit(c, "crm:a:1", tags, "a"));
    struct store_entry *e = conf_entry(200, "text/plain", "b", 1);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), 0);
    store_entry_release(e);
    assert_true(conf_hit(c, "crm:b:1", tags, "b"));
}

static void
conf_tags_entry_carries_other_tags(void **state)
{
    struct conf *c = *state;
    const char *fill_tags[] = {"x:1", "x:2", "x:3", NULL};
    const char *look_tags[] = {"y", NULL};

    /* The entry's own tags decide, whatever tags a later lookup names. */
    assert_int_equal(conf_put(c, "shared", fill_tags, "v", 60000), 0);
    assert_true(conf_hit(c, "shared", look_tags, "v"));
    assert_true(conf_hit(c, "shared", NULL, "v"));
    conf_invalidate1(c, "x:3");
    assert_false(conf_hit(c, "shared", look_tags, NULL));
}

/* ---- fill lease ---------------------------------------------------------- */

#define CONF_LEASE 60000

/* A lookup of key under tags (NULL-terminated) asking for the fill lease; returns its state. */
static enum store_cache_state
conf_lease_lookup(struct conf *c, struct conf_req *r, const char *key, const char *const *tags,
                  uint64_t lease_ms)
{
    memset(r, 0, sizeof(*r));
    r->key = key;
    r->keylen = strlen(key);
    for (; tags && *tags; tags++)
        conf_add_tag(r, *tags, strlen(*tags));
    r->lease_ms = lease_ms;
    conf_admit(c, r);
    assert_true(r->a.allowed);
    return r->a.state;
}

static void
conf_lease_single_filler(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"crm:5", NULL};
    struct conf_req first, other;

    assert_int_equal(conf_lease_lookup(c, &first, "lease:k", tags, CONF_LEASE), STORE_MISS);
    for (int i = 0; i < 3; i++)
        assert_int_equal(conf_lease_lookup(c, &other, "lease:k", tags, CONF_LEASE), STORE_FILLING);
    /* A lookup that does not ask for the lease is a plain miss; another key is free. */
    conf_lookup(c, &other, "lease:k", tags);
    assert_int_equal(other.a.state, STORE_MISS);
    assert_int_equal(conf_lease_lookup(c, &other, "lease:k2", tags, CONF_LEASE), STORE_MISS);
    /* The fill lands: a hit for everyone. */
    struct store_entry *e = conf_entry(200, "text/plain", "filled", 6);
    assert_int_equal(conf_fill_req(c, &first, e, 60000), 0);
    store_entry_release(e);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(conf_lease_lookup(c, &other, "lease:k", tags, CONF_LEASE), STORE_HIT);
        assert_memory_equal(other.a.entry->body, "filled", 6);
        store_entry_release(other.a.entry);
    }
    /* After an invalidation the next miss takes the lease again. */
    conf_invalidate1(c, "crm:5");
    assert_int_equal(conf_lease_lookup(c, &first, "lease:k", tags, CONF_LEASE), STORE_MISS);
    assert_int_equal(conf_lease_lookup(c, &other, "lease:k", tags, CONF_LEASE), STORE_FILLING);
}

static void
conf_lease_released_by_any_fill(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"crm:6", NULL};
    struct conf_req r, w;

    /* A fill refused (the tag moved) releases the lease too. */
    assert_int_equal(conf_lease_lookup(c, &r, "lease:r", tags, CONF_LEASE), STORE_MISS);
    conf_invalidate1(c, "crm:6");
    struct store_entry *e = conf_entry(200, "text/plain", "stale", 5);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), -1);
    store_entry_release(e);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:r", tags, CONF_LEASE), STORE_MISS);
    assert_int_equal(conf_lease_lookup(c, &w, "lease:r", tags, CONF_LEASE), STORE_FILLING);
    /* So does a fill with no TTL, which stores nothing. */
    e = conf_entry(200, "text/plain", "none", 4);
    assert_int_equal(conf_fill_req(c, &r, e, 0), 0);
    store_entry_release(e);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:r", tags, CONF_LEASE), STORE_MISS);
    /* A fill by a caller that waited instead is taken as well, and ends the lease. */
    e = conf_entry(200, "text/plain", "other", 5);
    assert_int_equal(conf_fill_req(c, &w, e, 60000), 0);
    store_entry_release(e);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:r", tags, CONF_LEASE), STORE_HIT);
    assert_memory_equal(r.a.entry->body, "other", 5);
    store_entry_release(r.a.entry);
}

static void
conf_lease_expires(void **state)
{
    struct conf *c = *state;
    struct conf_req r;

    assert_int_equal(conf_lease_lookup(c, &r, "lease:x", NULL, 200), STORE_MISS);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:x", NULL, 200), STORE_FILLING);
    c->h->advance(c->h->ctx, 450);
    /* The filler did not fill in time: the next miss takes the lease over. */
    assert_int_equal(conf_lease_lookup(c, &r, "lease:x", NULL, 200), STORE_MISS);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:x", NULL, 200), STORE_FILLING);
}

static void
conf_lease_lookup_only_counts_nothing(void **state)
{
    struct conf *c = *state;
    struct limiter_rule one = conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR);
    struct conf_req filler = {0}, waiter = {0}, poll;

    conf_add_limit(&filler, one, "caller:1", 8, 1);
    filler.key = "lease:l";
    filler.keylen = 7;
    filler.lease_ms = CONF_LEASE;
    conf_admit(c, &filler);
    assert_true(filler.a.allowed);
    assert_int_equal(filler.a.state, STORE_MISS);
    conf_add_limit(&waiter, one, "caller:2", 8, 1);
    waiter.key = "lease:l";
    waiter.keylen = 7;
    waiter.lease_ms = CONF_LEASE;
    conf_admit(c, &waiter);
    assert_true(waiter.a.allowed);
    assert_int_equal(waiter.a.state, STORE_FILLING);
    /* The waiter looks again, with no limits, as often as it likes. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(conf_lease_lookup(c, &poll, "lease:l", NULL, CONF_LEASE), STORE_FILLING);
    struct store_entry *e = conf_entry(200, "text/plain", "done", 4);
    assert_int_equal(conf_fill_req(c, &filler, e, 60000), 0);
    store_entry_release(e);
    assert_int_equal(conf_lease_lookup(c, &poll, "lease:l", NULL, CONF_LEASE), STORE_HIT);
    store_entry_release(poll.a.entry);
    /* Each caller was counted once. */
    assert_false(conf_limit(c, one, "caller:1", 1).allowed);
    assert_false(conf_limit(c, one, "caller:2", 1).allowed);
}

static void
conf_lease_not_taken_when_denied(void **state)
{
    struct conf *c = *state;
    struct limiter_rule one = conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR);
    struct conf_req r = {0};

    assert_true(conf_limit(c, one, "spent", 1).allowed);
    conf_add_limit(&r, one, "spent", 5, 1);
    r.key = "lease:d";
    r.keylen = 7;
    r.lease_ms = CONF_LEASE;
    conf_admit(c, &r);
    assert_false(r.a.allowed);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:d", NULL, CONF_LEASE), STORE_MISS);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:d", NULL, CONF_LEASE), STORE_FILLING);
}

/* ---- entry fields and stale keep ------------------------------------------------ */

/* Looks key up (no tags) and fills e there for ttl_ms; returns the fill status. */
static int
conf_put_entry(struct conf *c, const char *key, size_t keylen, struct store_entry *e,
               uint64_t ttl_ms)
{
    struct conf_req r = {0};

    r.key = key;
    r.keylen = keylen;
    conf_admit(c, &r);
    store_entry_release(r.a.entry);
    return conf_fill_req(c, &r, e, ttl_ms);
}

/* Looks key up (no tags): its state, and the entry (a new reference) in *out when it has one. */
static enum store_cache_state
conf_get(struct conf *c, const char *key, size_t keylen, struct store_entry **out)
{
    struct conf_req r = {0};

    r.key = key;
    r.keylen = keylen;
    conf_admit(c, &r);
    if (out)
        *out = r.a.entry;
    else
        store_entry_release(r.a.entry);
    return r.a.state;
}

static char *
conf_bytes(const void *p, size_t len)
{
    char *s = malloc(len + 1);

    assert_non_null(s);
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

/* The optional fields of two entries are the same: NULL as NULL, and the same bytes. */
static void
conf_same_fields(const struct store_entry *got, const struct store_entry *want)
{
    assert_int_equal(got->status, want->status);
    assert_int_equal(got->flags, want->flags);
    assert_int_equal(got->stale_ms, want->stale_ms);
    assert_int_equal(got->age_ms, want->age_ms);
    assert_int_equal(got->swr_ms, want->swr_ms);
    assert_int_equal(got->sie_ms, want->sie_ms);
    assert_int_equal(got->body_len, want->body_len);
    assert_memory_equal(got->body, want->body, want->body_len);
    if (want->content_type)
        assert_string_equal(got->content_type, want->content_type);
    else
        assert_null(got->content_type);
    if (want->etag)
        assert_string_equal(got->etag, want->etag);
    else
        assert_null(got->etag);
    if (want->headers) {
        assert_non_null(got->headers);
        assert_int_equal(got->headers_len, want->headers_len);
        assert_memory_equal(got->headers, want->headers, want->headers_len);
    } else {
        assert_null(got->headers);
        assert_int_equal(got->headers_len, 0);
    }
}

static void
conf_entry_fields_round_trip(void **state)
{
    struct conf *c = *state;
    static const char hdrs[] = "Cache-Control: max-age=60\r\nVary: Accept-Encoding\r\n"
                               "X-Odd: a\0b\xff\r\n";
    struct store_entry *e[4], *got;

    /* Everything set. */
    e[0] = conf_entry(299, "application/json; charset=utf-8", "{\"a\":1}", 7);
    e[0]->flags = STORE_ENTRY_PASS;
    e[0]->stale_ms = 30000;
    e[0]->headers = conf_bytes(hdrs, sizeof(hdrs) - 1);
    e[0]->headers_len = sizeof(hdrs) - 1;
    e[0]->etag = strdup("W/\"v-1\"");
    e[0]->age_ms = 50000; /* the answer arrived 50 s old */
    e[0]->swr_ms = 30000;
    e[0]->sie_ms = 7 * 24 * HOUR;
    /* Nothing optional: no content type, headers or ETag; a Vary entry. */
    e[1] = conf_entry(200, NULL, "accept-encoding,accept-language", 31);
    e[1]->flags = STORE_ENTRY_VARY;
    /* Empty strings are not NULL. */
    e[2] = conf_entry(204, "", "", 0);
    e[2]->headers = conf_bytes("", 0);
    e[2]->etag = strdup("\"\"");
    /* Both flags, a long stale keep. */
    e[3] = conf_entry(404, "text/plain", "gone", 4);
    e[3]->flags =
        STORE_ENTRY_PASS | STORE_ENTRY_VARY | STORE_ENTRY_VALIDATE | STORE_ENTRY_ORIGIN_ETAG;
    e[3]->stale_ms = 7 * 24 * HOUR;
    /* Read through another handle (which has no copy of its own of what this one filled),
     * then again (when it may have one). */
    struct conf c2 = {.h = c->h, .s = c->h->another(c->h->ctx)};
    assert_non_null(c2.s);
    for (int i = 0; i < 4; i++) {
        char key[16];
        snprintf(key, sizeof(key), "fields:%d", i);
        assert_int_equal(conf_put_entry(c, key, strlen(key), e[i], 60000), 0);
        for (int round = 0; round < 2; round++) {
            assert_int_equal(conf_get(&c2, key, strlen(key), &got), STORE_HIT);
            conf_same_fields(got, e[i]);
            assert_true(got->expires_ms - got->stored_ms == 60000);
            store_entry_release(got);
        }
        store_entry_release(e[i]);
    }
    c2.s->ops->destroy(c2.s);
}

/* An entry's coded forms (compress) come back from the store with the entry, each coding's
 * bytes as they went in, one not held as not held; an entry without them has none. */
static void
conf_entry_coded_forms_round_trip(void **state)
{
    struct conf *c = *state;
    static const char br[] = "br-form\0x", gz[] = "\x1f\x8bgzip-form";
    struct store_entry *e = conf_entry(200, "application/json", "{\"identity\":true}", 17), *got;
    struct store_coded *coded = calloc(1, sizeof(*coded));

    assert_non_null(coded);
    coded->body[CODEC_BR] = br;
    coded->len[CODEC_BR] = sizeof(br) - 1;
    coded->body[CODEC_GZIP] = gz;
    coded->len[CODEC_GZIP] = sizeof(gz) - 1;
    e->coded = coded;
    e->etag = strdup("\"abc\"");
    struct conf c2 = {.h = c->h, .s = c->h->another(c->h->ctx)};
    assert_non_null(c2.s);
    assert_int_equal(conf_put_entry(c, "coded:1", 7, e, 60000), 0);
    for (int round = 0; round < 2; round++) {
        assert_int_equal(conf_get(&c2, "coded:1", 7, &got), STORE_HIT);
        conf_same_fields(got, e);
        assert_int_equal(store_entry_codings(got), CODEC_BIT(CODEC_BR) | CODEC_BIT(CODEC_GZIP));
        assert_int_equal(got->coded->len[CODEC_BR], sizeof(br) - 1);
        assert_memory_equal(got->coded->body[CODEC_BR], br, sizeof(br) - 1);
        assert_int_equal(got->coded->len[CODEC_GZIP], sizeof(gz) - 1);
        assert_memory_equal(got->coded->body[CODEC_GZIP], gz, sizeof(gz) - 1);
        assert_int_equal(got->coded->len[CODEC_ZSTD], 0);
        store_entry_release(got);
    }
    store_entry_release(e);
    assert_int_equal(conf_put(c, "coded:2", NULL, "plain", 60000), 0);
    assert_int_equal(conf_get(&c2, "coded:2", 7, &got), STORE_HIT);
    assert_null(got->coded);
    assert_int_equal(store_entry_codings(got), 0);
    store_entry_release(got);
    c2.s->ops->destroy(c2.s);
}

static void
conf_stale_window(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"st:1", NULL};
    struct store_entry *e = conf_entry(200, "text/plain", "old", 3), *got;
    struct conf_req r;

    e->stale_ms = 600;
    conf_lookup(c, &r, "stale:k", tags);
    assert_int_equal(conf_fill_req(c, &r, e, 300), 0);
    store_entry_release(e);
    assert_true(conf_hit(c, "stale:k", tags, "old"));
    c->h->advance(c->h->ctx, 450);
    /* Expired, kept: stale, with the entry, its times telling so. */
    conf_lookup(c, &r, "stale:k", tags);
    assert_int_equal(r.a.state, STORE_STALE);
    got = r.a.entry;
    assert_memory_equal(got->body, "old", 3);
    assert_int_equal(got->stale_ms, 600);
    assert_true(got->expires_ms <= r.a.now_ms);
    assert_true(got->expires_ms + got->stale_ms > r.a.now_ms);
    store_entry_release(got);
    /* An entry without stale_ms next to it is gone. */
    assert_int_equal(conf_put(c, "stale:none", NULL, "n", 300), 0);
    c->h->advance(c->h->ctx, 450);
    assert_int_equal(conf_get(c, "stale:none", 10, NULL), STORE_MISS);
    /* Past its stale_ms it is gone too. */
    c->h->advance(c->h->ctx, 300);
    assert_int_equal(conf_get(c, "stale:k", 7, NULL), STORE_MISS);
    /* A fill replaces a stale entry: a hit again. */
    e = conf_entry(200, "text/plain", "new", 3);
    e->stale_ms = 600;
    conf_lookup(c, &r, "stale:k", tags);
    assert_int_equal(conf_fill_req(c, &r, e, 300), 0);
    store_entry_release(e);
    c->h->advance(c->h->ctx, 450);
    assert_int_equal(conf_get(c, "stale:k", 7, NULL), STORE_STALE);
    e = conf_entry(200, "text/plain", "newer", 5);
    conf_lookup(c, &r, "stale:k", tags);
    assert_int_equal(r.a.state, STORE_STALE);
    store_entry_release(r.a.entry);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), 0);
    store_entry_release(e);
    assert_true(conf_hit(c, "stale:k", tags, "newer"));
}

/* A filler whose origin failed gives the lease back: the next lookup takes it at once, and a
 * stale entry the lease was taken on stays. */
static void
conf_lease_released_without_fill(void **state)
{
    struct conf *c = *state;
    struct conf_req r;

    assert_int_equal(conf_lease_lookup(c, &r, "lease:g", NULL, CONF_LEASE), STORE_MISS);
    assert_true(r.a.lease_taken);
    store_release_lease(c->s, "lease:g", 7);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:g", NULL, CONF_LEASE), STORE_MISS);
    assert_true(r.a.lease_taken);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:g", NULL, CONF_LEASE), STORE_FILLING);
    /* Releasing a lease nobody holds does nothing. */
    store_release_lease(c->s, "lease:none", 10);

    struct store_entry *e = conf_entry(200, "text/plain", "kept", 4);
    e->stale_ms = 60000;
    assert_int_equal(conf_put_entry(c, "lease:s", 7, e, 100), 0);
    store_entry_release(e);
    c->h->advance(c->h->ctx, 200);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:s", NULL, CONF_LEASE), STORE_STALE);
    assert_true(r.a.lease_taken);
    store_entry_release(r.a.entry);
    store_release_lease(c->s, "lease:s", 7);
    assert_int_equal(conf_lease_lookup(c, &r, "lease:s", NULL, CONF_LEASE), STORE_STALE);
    assert_true(r.a.lease_taken);
    assert_memory_equal(r.a.entry->body, "kept", 4);
    store_entry_release(r.a.entry);
}

/* ttl 0 with a stale keep: stored already expired, found STALE at once (an answer that must be
 * revalidated before any use); ttl 0 without one is not kept. */
static void
conf_stored_stale(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"ss:1", NULL};
    struct store_entry *e = conf_entry(200, "text/plain", "validate me", 11), *got;
    struct conf_req r;

    e->stale_ms = 5000;
    conf_lookup(c, &r, "ss:k", tags);
    assert_int_equal(conf_fill_req(c, &r, e, 0), 0);
    store_entry_release(e);
    conf_lookup(c, &r, "ss:k", tags);
    assert_int_equal(r.a.state, STORE_STALE);
    got = r.a.entry;
    assert_non_null(got);
    assert_memory_equal(got->body, "validate me", 11);
    assert_true(got->expires_ms <= r.a.now_ms);
    store_entry_release(got);
    c->h->advance(c->h->ctx, 5100);
    assert_int_equal(conf_get(c, "ss:k", 4, NULL), STORE_MISS);

    e = conf_entry(200, "text/plain", "gone", 4);
    assert_int_equal(conf_put_entry(c, "ss:none", 7, e, 0), 0);
    store_entry_release(e);
    assert_int_equal(conf_get(c, "ss:none", 7, NULL), STORE_MISS);
}

static void
conf_stale_invalidated_is_miss(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"si:1", NULL};
    struct store_entry *e;
    struct conf_req r;

    /* Invalidated while fresh: a miss, never stale, however long its stale_ms. */
    e = conf_entry(200, "text/plain", "v1", 2);
    e->stale_ms = HOUR;
    conf_lookup(c, &r, "si:k", tags);
    assert_int_equal(conf_fill_req(c, &r, e, 60000), 0);
    store_entry_release(e);
    assert_true(conf_hit(c, "si:k", tags, "v1"));
    conf_invalidate1(c, "si:1");
    conf_lookup(c, &r, "si:k", tags);
    assert_int_equal(r.a.state, STORE_MISS);
    /* Invalidated while stale: a miss as well. */
    e = conf_entry(200, "text/plain", "v2", 2);
    e->stale_ms = HOUR;
    assert_int_equal(conf_fill_req(c, &r, e, 300), 0);
    store_entry_release(e);
    c->h->advance(c->h->ctx, 450);
    conf_lookup(c, &r, "si:k", tags);
    assert_int_equal(r.a.state, STORE_STALE);
    store_entry_release(r.a.entry);
    conf_invalidate1(c, "si:1");
    conf_lookup(c, &r, "si:k", tags);
    assert_int_equal(r.a.state, STORE_MISS);
    /* With a lease asked, too: the miss takes it. */
    assert_int_equal(conf_lease_lookup(c, &r, "si:k", tags, CONF_LEASE), STORE_MISS);
    assert_true(r.a.lease_taken);
}

/* lease_taken across two handles of one store: MISS, FILLING, STALE. */
static void
conf_lease_taken(void **state)
{
    struct conf *c = *state;
    struct conf c2 = {.h = c->h, .s = c->h->another(c->h->ctx)};
    struct conf_req a, b;
    struct store_entry *e;

    assert_non_null(c2.s);
    assert_int_equal(conf_lease_lookup(c, &a, "lt:k", NULL, CONF_LEASE), STORE_MISS);
    assert_true(a.a.lease_taken);
    assert_int_equal(conf_lease_lookup(&c2, &b, "lt:k", NULL, CONF_LEASE), STORE_FILLING);
    assert_false(b.a.lease_taken);
    e = conf_entry(200, "text/plain", "first", 5);
    e->stale_ms = 60000;
    assert_int_equal(conf_fill_req(c, &a, e, 300), 0);
    store_entry_release(e);
    assert_int_equal(conf_lease_lookup(&c2, &b, "lt:k", NULL, CONF_LEASE), STORE_HIT);
    assert_false(b.a.lease_taken);
    store_entry_release(b.a.entry);
    c->h->advance(c->h->ctx, 450);
    /* Stale: the first to ask takes the lease, the other is told it did not; both get it. */
    assert_int_equal(conf_lease_lookup(&c2, &b, "lt:k", NULL, CONF_LEASE), STORE_STALE);
    assert_true(b.a.lease_taken);
    assert_memory_equal(b.a.entry->body, "first", 5);
    store_entry_release(b.a.entry);
    assert_int_equal(conf_lease_lookup(c, &a, "lt:k", NULL, CONF_LEASE), STORE_STALE);
    assert_false(a.a.lease_taken);
    assert_memory_equal(a.a.entry->body, "first", 5);
    store_entry_release(a.a.entry);
    assert_int_equal(conf_get(c, "lt:k", 4, NULL), STORE_STALE);
    /* The refresh releases the lease: a hit for both. */
    e = conf_entry(200, "text/plain", "second", 6);
    assert_int_equal(conf_fill_req(&c2, &b, e, 60000), 0);
    store_entry_release(e);
    assert_int_equal(conf_lease_lookup(c, &a, "lt:k", NULL, CONF_LEASE), STORE_HIT);
    assert_memory_equal(a.a.entry->body, "second", 6);
    store_entry_release(a.a.entry);
    /* A stale entry whose refresh never came: the lease expires, the next one takes it. */
    e = conf_entry(200, "text/plain", "third", 5);
    e->stale_ms = 60000;
    assert_int_equal(conf_fill_req(c, &a, e, 200), 0);
    store_entry_release(e);
    c->h->advance(c->h->ctx, 300);
    assert_int_equal(conf_lease_lookup(c, &a, "lt:k", NULL, 200), STORE_STALE);
    assert_true(a.a.lease_taken);
    store_entry_release(a.a.entry);
    assert_int_equal(conf_lease_lookup(&c2, &b, "lt:k", NULL, 200), STORE_STALE);
    assert_false(b.a.lease_taken);
    store_entry_release(b.a.entry);
    c->h->advance(c->h->ctx, 400);
    assert_int_equal(conf_lease_lookup(&c2, &b, "lt:k", NULL, 200), STORE_STALE);
    assert_true(b.a.lease_taken);
    store_entry_release(b.a.entry);
    c2.s->ops->destroy(c2.s);
}

/* ---- removal by key and by pattern ----------------------------------------------- */

struct conf_count_op {
    bool done;
    int calls;
    int status;
    uint64_t count;
};

static void
conf_count_done(void *arg, int status, uint64_t count)
{
    struct conf_count_op *op = arg;

    op->calls++;
    op->done = true;
    op->status = status;
    op->count = count;
}

static uint64_t
conf_delete(struct conf *c, const char *const *keys, const size_t *lens, size_t n)
{
    struct conf_count_op op = {0};

    store_delete_keys(c->s, keys, lens, n, conf_count_done, &op);
    c->h->run_until_done(c->h->ctx, &op.done);
    assert_true(op.done);
    assert_int_equal(op.calls, 1);
    assert_int_equal(op.status, 0);
    return op.count;
}

static uint64_t
conf_pattern(struct conf *c, const char *glob)
{
    struct conf_count_op op = {0};

    store_invalidate_pattern(c->s, glob, strlen(glob), conf_count_done, &op);
    c->h->run_until_done(c->h->ctx, &op.done);
    assert_true(op.done);
    assert_int_equal(op.calls, 1);
    assert_int_equal(op.status, 0);
    return op.count;
}

static bool
conf_has(struct conf *c, const char *key)
{
    return conf_get(c, key, strlen(key), NULL) == STORE_HIT;
}

static void
conf_delete_keys(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"dk:1", NULL};

    assert_int_equal(conf_put(c, "dk:a", tags, "a", 60000), 0);
    assert_int_equal(conf_put(c, "dk:b", tags, "b", 60000), 0);
    assert_int_equal(conf_put(c, "dk:c", NULL, "c", 60000), 0);
    const char *keys[] = {"dk:a", "dk:c", "dk:nope", "dk:a", "dk"};
    size_t lens[] = {4, 4, 7, 4, 2};
    assert_int_equal(conf_delete(c, keys, lens, 5), 2);
    assert_false(conf_has(c, "dk:a"));
    assert_false(conf_has(c, "dk:c"));
    assert_true(conf_hit(c, "dk:b", tags, "b"));
    assert_int_equal(conf_delete(c, keys, lens, 0), 0);
    assert_int_equal(conf_delete(c, keys, lens, 2), 0);
    /* A key that was deleted fills again. */
    assert_int_equal(conf_put(c, "dk:a", tags, "a2", 60000), 0);
    assert_true(conf_hit(c, "dk:a", tags, "a2"));
    /* An entry kept stale counts; one past its stale_ms does not. */
    struct store_entry *e = conf_entry(200, "text/plain", "s", 1);
    e->stale_ms = 500;
    assert_int_equal(conf_put_entry(c, "dk:s", 4, e, 200), 0);
    assert_int_equal(conf_put_entry(c, "dk:t", 4, e, 200), 0);
    store_entry_release(e);
    c->h->advance(c->h->ctx, 350);
    const char *st[] = {"dk:s"};
    size_t stl[] = {4};
    assert_int_equal(conf_delete(c, st, stl, 1), 1);
    assert_int_equal(conf_get(c, "dk:s", 4, NULL), STORE_MISS);
    c->h->advance(c->h->ctx, 600);
    st[0] = "dk:t";
    assert_int_equal(conf_delete(c, st, stl, 1), 0);
    /* Odd bytes, and the empty key. */
    static const char odd[] = "dk:\0{x}*\xff";
    assert_int_equal(conf_put(c, "", NULL, "empty", 60000), 0);
    e = conf_entry(200, "text/plain", "odd", 3);
    assert_int_equal(conf_put_entry(c, odd, sizeof(odd) - 1, e, 60000), 0);
    store_entry_release(e);
    const char *ok[] = {odd, "dk:", ""};
    size_t okl[] = {sizeof(odd) - 1, 3, 0};
    assert_int_equal(conf_delete(c, ok, okl, 3), 2);
    assert_int_equal(conf_get(c, odd, sizeof(odd) - 1, NULL), STORE_MISS);
    assert_int_equal(conf_get(c, "", 0, NULL), STORE_MISS);
}

#define CONF_SEP "\x1f"

/* Flags round trip; a primary's secondaries go with it, by key or by pattern. */
static void
conf_vary_secondaries(void **state)
{
    struct conf *c = *state;
    static const char *const keys[] = {
        "vary:page:1",  "vary:page:1" CONF_SEP "gzip",  "vary:page:1" CONF_SEP "br",
        "vary:page:10", "vary:page:10" CONF_SEP "gzip", "vary:page:1x",
    };
    struct store_entry *e, *got;

    e = conf_entry(200, NULL, "accept-encoding", 15);
    e->flags = STORE_ENTRY_VARY;
    assert_int_equal(conf_put_entry(c, keys[0], strlen(keys[0]), e, 60000), 0);
    store_entry_release(e);
    for (size_t i = 1; i < 6; i++)
        assert_int_equal(conf_put(c, keys[i], NULL, keys[i], 60000), 0);
    assert_int_equal(conf_get(c, keys[0], strlen(keys[0]), &got), STORE_HIT);
    assert_int_equal(got->flags, STORE_ENTRY_VARY);
    assert_null(got->content_type);
    store_entry_release(got);
    for (size_t i = 1; i < 6; i++)
        assert_true(conf_hit(c, keys[i], NULL, keys[i]));

    /* By key: the primary and its two secondaries; not "vary:page:10" nor its own. */
    size_t len = strlen(keys[0]);
    assert_int_equal(conf_delete(c, keys, &len, 1), 3);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(conf_has(c, keys[i]), i >= 3);
    /* The primary filled again does not bring its old secondaries back. */
    assert_int_equal(conf_put(c, keys[0], NULL, "again", 60000), 0);
    assert_false(conf_has(c, keys[1]));
    assert_false(conf_has(c, keys[2]));
    /* A secondary by key: itself only. */
    assert_int_equal(conf_put(c, keys[1], NULL, "g", 60000), 0);
    len = strlen(keys[1]);
    assert_int_equal(conf_delete(c, &keys[1], &len, 1), 1);
    assert_true(conf_has(c, keys[0]));

    /* By pattern: a primary that matches takes its secondaries along. */
    assert_int_equal(conf_pattern(c, "vary:page:1?"), 3); /* 10, 10+gzip, 1x */
    assert_true(conf_has(c, keys[0]));
    for (size_t i = 3; i < 6; i++)
        assert_false(conf_has(c, keys[i]));
    /* A pattern over the whole key text takes a secondary alone. */
    assert_int_equal(conf_put(c, keys[1], NULL, "g", 60000), 0);
    assert_int_equal(conf_put(c, keys[2], NULL, "b", 60000), 0);
    assert_int_equal(conf_pattern(c, "*" CONF_SEP "gzip"), 1);
    assert_false(conf_has(c, keys[1]));
    assert_true(conf_has(c, keys[2]));
    assert_true(conf_has(c, keys[0]));
    /* A literal pattern is the key: the primary and its secondary. */
    assert_int_equal(conf_pattern(c, "vary:page:1"), 2);
    assert_false(conf_has(c, keys[0]));
    assert_false(conf_has(c, keys[2]));
}

/* Fills every key (text bodies: the key itself), runs glob, and checks that exactly the keys
 * fnmatch matches (or whose primary part it matches) are gone, and the count. */
static void
conf_pattern_check(struct conf *c, const char *const *keys, size_t n, bool *gone, const char *glob)
{
    uint64_t want = 0;

    for (size_t i = 0; i < n; i++) {
        if (gone[i])
            continue;
        const char *sep = strchr(keys[i], CONF_SEP[0]);
        char *primary = conf_bytes(keys[i], sep ? (size_t)(sep - keys[i]) : strlen(keys[i]));
        if (fnmatch(glob, keys[i], 0) == 0 || fnmatch(glob, primary, 0) == 0) {
            gone[i] = true;
            want++;
        }
        free(primary);
    }
    uint64_t got = conf_pattern(c, glob);
    if (got != want)
        fail_msg("pattern \"%s\": %llu removed, %llu match", glob, (unsigned long long)got,
                 (unsigned long long)want);
}

static void
conf_pattern_many(void **state)
{
    struct conf *c = *state;
    static const char *const kinds[] = {"alpha", "beta", "gamma", "delta", "st*r"};
    enum { NK = 5, NU = 1000, N = NK * NU };
    static const char *const globs[] = {
        "k:st\\*r:1*", "k:?eta:*5",      "k:[a-c]*:2??",      "k:delta:*",
        "*7",          "k:gamma:[!0-4]", "k:[ab]lpha:3[0-9]", "nothing:*",
    };
    char **keys = calloc(N, sizeof(*keys));
    bool *gone = calloc(N, sizeof(*gone));

    assert_non_null(keys);
    assert_non_null(gone);
    for (size_t i = 0; i < N; i++) {
        char k[32];
        snprintf(k, sizeof(k), "k:%s:%zu", kinds[i % NK], i / NK);
        keys[i] = strdup(k);
        assert_int_equal(conf_put(c, k, NULL, "v", 60000), 0);
    }
    for (size_t g = 0; g < sizeof(globs) / sizeof(globs[0]); g++)
        conf_pattern_check(c, (const char *const *)keys, N, gone, globs[g]);
    size_t left = 0;
    for (size_t i = 0; i < N; i++) {
        if (conf_has(c, keys[i]) == gone[i])
            fail_msg("%s: %s", keys[i], gone[i] ? "still there" : "removed");
        left += !gone[i];
    }
    assert_true(left > 1000 && left < N - 1000);
    assert_int_equal(conf_pattern(c, "*"), left);
    for (size_t i = 0; i < N; i += 97)
        assert_false(conf_has(c, keys[i]));
    for (size_t i = 0; i < N; i++)
        free(keys[i]);
    free(keys);
    free(gone);
}

/* Globs at the edges of fnmatch's syntax remove what fnmatch matches, no more, no less. */
static void
conf_pattern_syntax(void **state)
{
    struct conf *c = *state;
    static const char *const keys[] = {
        "o:a]b", "o:a-b", "o:[x]", "o:a\\b", "o:a*b", "o:a?b",      "o:5",    "o:x",
        "o:-",   "o:^",   "o:!",   "o:{u}",  "o:a:b", "o:\xc3\xa9", "o:\x7f", "o:",
        "o:ab",  "o:]",   "o:[",   "o:a[",   "o:b",   "o:z",        "o:Z",    "o:a" CONF_SEP "x",
        "p:a",   "o:a",   "o::",   "o:*",    "o:\\",  "o:%2A",
    };
    static const char *const globs[] = {
        "o:[]a]*",      "o:[!a-c]",       "o:[a-]*",   "o:[[:digit:]]", "o:\\[*",  "o:a\\\\b",
        "o:*\\**",      "o:[^x]",         "o:[z-a]",   "o:[a\\-z]",     "o:\xc3?", "o:a[",
        "o:{u}",        "o:a\\",          "o:[a-c-e]", "o:[[]",         "o:[",     "o:*:*",
        "o:?",          "o:[A-Z]",        "o:a",       "o:[\\a-c]",     "o:%2?",   "o:[[:al",
        "o:[[:alpha:]", "o:[[:alpha:]]*", "*",
    };
    enum { N = sizeof(keys) / sizeof(keys[0]) };

    for (size_t g = 0; g < sizeof(globs) / sizeof(globs[0]); g++) {
        bool gone[N] = {0};
        for (size_t i = 0; i < N; i++)
            assert_int_equal(conf_put(c, keys[i], NULL, "v", 60000), 0);
        conf_pattern_check(c, keys, N, gone, globs[g]);
        for (size_t i = 0; i < N; i++)
            if (conf_has(c, keys[i]) == gone[i])
                fail_msg("pattern \"%s\", key \"%s\": %s", globs[g], keys[i],
                         gone[i] ? "still there" : "removed");
    }
    /* A glob holding a NUL byte is refused. */
    assert_int_equal(conf_put(c, "o:a", NULL, "v", 60000), 0);
    struct conf_count_op op = {0};
    store_invalidate_pattern(c->s, "o:\0*", 4, conf_count_done, &op);
    c->h->run_until_done(c->h->ctx, &op.done);
    assert_int_equal(op.calls, 1);
    assert_int_equal(op.status, -1);
    assert_true(conf_has(c, "o:a"));
}

/* ---- listing entries ------------------------------------------------------------ */

/* A copy of a listing, the test's own, with the completion's status. */
struct conf_list_op {
    bool done;
    int calls;
    int status;
    struct store_listing got;
};

static void
conf_list_copy_entry(struct store_list_entry *to, const struct store_list_entry *from)
{
    char *key = to->key;

    *to = *from;
    to->key = key;
    to->tags = NULL;
    to->taglens = NULL;
    to->ntags = 0;
    to->variants = NULL;
    to->nvariants = 0;
    to->variant_count = 0;
    to->vary = from->vary ? strdup(from->vary) : NULL;
    for (size_t i = 0; i < from->ntags; i++)
        store_list_add_tag(to, from->tags[i], from->taglens[i]);
    for (size_t i = 0; i < from->nvariants; i++) {
        const struct store_list_entry *v = &from->variants[i];
        conf_list_copy_entry(store_list_add_variant(to, v->key, v->keylen), v);
    }
    to->variant_count = from->variant_count;
}

static void
conf_list_done(void *arg, int status, const struct store_listing *l)
{
    struct conf_list_op *op = arg;

    op->calls++;
    op->done = true;
    op->status = status;
    if (status != 0) {
        assert_null(l);
        return;
    }
    assert_non_null(l);
    assert_non_null(l->store);
    op->got.store = l->store;
    op->got.truncated = l->truncated;
    op->got.scanned = l->scanned;
    op->got.now_ms = l->now_ms;
    for (size_t i = 0; i < l->n; i++)
        conf_list_copy_entry(store_listing_add(&op->got, l->entries[i].key, l->entries[i].keylen),
                             &l->entries[i]);
}

static int
conf_entry_key_cmp(const void *a, const void *b)
{
    const struct store_list_entry *x = a, *y = b;
    size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
    int c = memcmp(x->key, y->key, n);

    return c ? c : (x->keylen > y->keylen) - (x->keylen < y->keylen);
}

/* Lists glob (up to limit) into *out, entries and their variants sorted by key; returns the
 * status. Free with store_listing_free(). */
static int
conf_list_n(struct conf *c, const char *glob, size_t globlen, size_t limit,
            struct store_listing *out)
{
    struct conf_list_op op = {0};

    store_list(c->s, glob, globlen, limit, conf_list_done, &op);
    c->h->run_until_done(c->h->ctx, &op.done);
    assert_true(op.done);
    assert_int_equal(op.calls, 1);
    if (op.got.n > 1)
        qsort(op.got.entries, op.got.n, sizeof(*op.got.entries), conf_entry_key_cmp);
    for (size_t i = 0; i < op.got.n; i++)
        if (op.got.entries[i].nvariants > 1)
            qsort(op.got.entries[i].variants, op.got.entries[i].nvariants,
                  sizeof(*op.got.entries[i].variants), conf_entry_key_cmp);
    *out = op.got;
    return op.status;
}

static int
conf_list(struct conf *c, const char *glob, size_t limit, struct store_listing *out)
{
    return conf_list_n(c, glob, strlen(glob), limit, out);
}

/* Whether ms is within [lo, lo + slack]: a store on a real clock takes time of its own. */
#define CONF_SLACK_MS 400
static void
conf_near(uint64_t ms, uint64_t lo)
{
    if (ms < lo || ms > lo + CONF_SLACK_MS)
        fail_msg("%llu ms, want %llu (+%d)", (unsigned long long)ms, (unsigned long long)lo,
                 CONF_SLACK_MS);
}

/* A glob picks the keys; each entry comes with its status, size, tags, age and times left. */
static void
conf_list_fields(void **state)
{
    struct conf *c = *state;
    static const char hdrs[] = "X-A: 1\r\nX-B: 22\r\n";
    const char *tags[] = {"ls:tag:1", "url:/ls/a", NULL};
    struct store_listing l;
    struct conf_req r;

    struct store_entry *e = conf_entry(203, "text/plain", "hello", 5);
    e->headers = conf_bytes(hdrs, sizeof(hdrs) - 1);
    e->headers_len = sizeof(hdrs) - 1;
    e->etag = strdup("\"e1\"");
    e->age_ms = 5000;
    e->swr_ms = 20000;
    e->sie_ms = 60000;
    e->stale_ms = 60000;
    conf_lookup(c, &r, "ls:a:1", tags);
    assert_int_equal(conf_fill_req(c, &r, e, 30000), 0);
    store_entry_release(e);
    assert_int_equal(conf_put(c, "ls:a:2", NULL, "x", 10000), 0);
    assert_int_equal(conf_put(c, "ls:b:1", NULL, "y", 10000), 0);
    assert_int_equal(conf_put(c, "ls:a", NULL, "z", 10000), 0);
    c->h->advance(c->h->ctx, 1200);

    assert_int_equal(conf_list(c, "ls:a:*", 100, &l), 0);
    assert_int_equal(l.n, 2);
    assert_false(l.truncated);
    assert_true(l.scanned >= 2);
    const struct store_list_entry *a = &l.entries[0], *b = &l.entries[1];
    assert_string_equal(a->key, "ls:a:1");
    assert_int_equal(a->keylen, 6);
    assert_int_equal(a->status, 203);
    assert_int_equal(a->flags, 0);
    assert_int_equal(a->bytes, 5 + strlen("text/plain") + sizeof(hdrs) - 1 + 4);
    conf_near(a->age_ms, 5000 + 1200);
    conf_near(a->ttl_ms, 30000 - 1200 - CONF_SLACK_MS);
    assert_true(a->ttl_ms <= 30000 - 1200);
    assert_int_equal(a->swr_ms, 20000);
    assert_int_equal(a->sie_ms, 60000);
    assert_int_equal(a->swr_left_ms, a->ttl_ms + 20000);
    assert_int_equal(a->sie_left_ms, a->ttl_ms + 60000);
    assert_int_equal(a->ntags, 2);
    char *t0 = conf_bytes(a->tags[0], a->taglens[0]), *t1 = conf_bytes(a->tags[1], a->taglens[1]);
    assert_true((strcmp(t0, tags[0]) == 0 && strcmp(t1, tags[1]) == 0) ||
                (strcmp(t0, tags[1]) == 0 && strcmp(t1, tags[0]) == 0));
    free(t0);
    free(t1);
    assert_null(a->vary);
    assert_int_equal(a->nvariants, 0);
    assert_int_equal(a->variant_count, 0);
    assert_string_equal(b->key, "ls:a:2");
    assert_int_equal(b->status, 200);
    assert_int_equal(b->bytes, 1 + strlen("text/plain"));
    conf_near(b->age_ms, 1200);
    assert_int_equal(b->ntags, 0);
    assert_int_equal(b->swr_ms + b->sie_ms + b->swr_left_ms + b->sie_left_ms, 0);
    store_listing_free(&l);

    /* Later: older, less time left. */
    c->h->advance(c->h->ctx, 1000);
    assert_int_equal(conf_list(c, "ls:a:1", 100, &l), 0);
    assert_int_equal(l.n, 1);
    conf_near(l.entries[0].age_ms, 5000 + 2200);
    assert_true(l.entries[0].ttl_ms <= 30000 - 2200);
    store_listing_free(&l);

    /* Every key; a glob matching nothing; a glob holding a NUL is refused. */
    assert_int_equal(conf_list(c, "ls:*", 100, &l), 0);
    assert_int_equal(l.n, 4);
    store_listing_free(&l);
    assert_int_equal(conf_list(c, "nothing:*", 100, &l), 0);
    assert_int_equal(l.n, 0);
    assert_false(l.truncated);
    store_listing_free(&l);
    assert_int_equal(conf_list_n(c, "ls:\0*", 5, 100, &l), -1);
    assert_int_equal(l.n, 0);
}

/* The walk stops at the limit, and says so. */
static void
conf_list_limit(void **state)
{
    struct conf *c = *state;
    struct store_listing l;

    for (int i = 0; i < 30; i++) {
        char k[16];
        snprintf(k, sizeof(k), "lim:%02d", i);
        assert_int_equal(conf_put(c, k, NULL, "v", 60000), 0);
    }
    assert_int_equal(conf_put(c, "other:1", NULL, "v", 60000), 0);
    assert_int_equal(conf_list(c, "lim:*", 7, &l), 0);
    assert_int_equal(l.n, 7);
    assert_true(l.truncated);
    for (size_t i = 0; i < l.n; i++)
        assert_memory_equal(l.entries[i].key, "lim:", 4);
    store_listing_free(&l);
    assert_int_equal(conf_list(c, "lim:*", 30, &l), 0);
    assert_int_equal(l.n, 30);
    store_listing_free(&l);
    assert_int_equal(conf_list(c, "lim:*", 1000, &l), 0);
    assert_int_equal(l.n, 30);
    assert_false(l.truncated);
    for (size_t i = 0; i < l.n; i++) {
        char k[32];
        snprintf(k, sizeof(k), "lim:%02zu", i);
        assert_string_equal(l.entries[i].key, k);
    }
    store_listing_free(&l);
    /* A literal glob is one key. */
    assert_int_equal(conf_list(c, "lim:07", 1, &l), 0);
    assert_int_equal(l.n, 1);
    assert_false(l.truncated);
    assert_string_equal(l.entries[0].key, "lim:07");
    store_listing_free(&l);
}

/* A primary comes once, with its variants counted and listed; a glob over a variant's whole
 * key lists that variant under its primary. */
static void
conf_list_variants(void **state)
{
    struct conf *c = *state;
    static const char *const keys[] = {
        "lv:page:1",  "lv:page:1" CONF_SEP "gzip",  "lv:page:1" CONF_SEP "br",
        "lv:page:10", "lv:page:10" CONF_SEP "gzip", "lv:page:1" CONF_SEP "zstd",
    };
    struct store_listing l;
    struct store_entry *e;

    e = conf_entry(200, NULL, "accept-encoding", 15);
    e->flags = STORE_ENTRY_VARY;
    assert_int_equal(conf_put_entry(c, keys[0], strlen(keys[0]), e, 60000), 0);
    store_entry_release(e);
    for (size_t i = 1; i < 6; i++)
        assert_int_equal(conf_put(c, keys[i], NULL, keys[i], i == 5 ? 300 : 60000), 0);

    assert_int_equal(conf_list(c, "lv:page:1", 100, &l), 0);
    assert_int_equal(l.n, 1);
    const struct store_list_entry *p = &l.entries[0];
    assert_string_equal(p->key, "lv:page:1");
    assert_int_equal(p->flags, STORE_ENTRY_VARY);
    assert_string_equal(p->vary, "accept-encoding");
    assert_int_equal(p->variant_count, 3);
    assert_int_equal(p->nvariants, 3);
    assert_false(p->variants_partial);
    assert_string_equal(p->variants[0].key, keys[2]); /* br, gzip, zstd */
    assert_string_equal(p->variants[1].key, keys[1]);
    assert_string_equal(p->variants[2].key, keys[5]);
    assert_int_equal(p->variants[1].bytes, strlen(keys[1]) + strlen("text/plain"));
    assert_int_equal(p->variants[1].status, 200);
    assert_true(p->variants[1].ttl_ms > 50000);
    assert_true(p->variants[2].ttl_ms <= 300);
    store_listing_free(&l);

    /* An expired variant is not listed. */
    c->h->advance(c->h->ctx, 500);
    assert_int_equal(conf_list(c, "lv:page:1*", 100, &l), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.entries[0].key, "lv:page:1");
    assert_int_equal(l.entries[0].variant_count, 2);
    assert_string_equal(l.entries[1].key, "lv:page:10");
    assert_int_equal(l.entries[1].variant_count, 1);
    assert_int_equal(l.entries[1].flags, 0);
    store_listing_free(&l);

    /* A glob over the variants' keys: each primary with the variants it matches. */
    assert_int_equal(conf_list(c, "*" CONF_SEP "gzip", 100, &l), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.entries[0].key, "lv:page:1");
    assert_int_equal(l.entries[0].variant_count, 1);
    assert_string_equal(l.entries[0].variants[0].key, keys[1]);
    assert_string_equal(l.entries[1].key, "lv:page:10");
    assert_int_equal(l.entries[1].variant_count, 1);
    store_listing_free(&l);

    /* The limit counts primaries, not variants. */
    assert_int_equal(conf_list(c, "lv:*", 1, &l), 0);
    assert_int_equal(l.n, 1);
    assert_true(l.truncated);
    assert_int_equal(l.entries[0].variant_count,
                     strcmp(l.entries[0].key, "lv:page:1") == 0 ? 2 : 1);
    store_listing_free(&l);
}

/* A primary with more variants than are listed: STORE_LIST_VARIANTS of them, and a count of
 * all (a lower bound, said so, where the store reads no more than it lists). */
static void
conf_list_many_variants(void **state)
{
    struct conf *c = *state;
    struct store_listing l;
    struct store_entry *e;
    enum { N = STORE_LIST_VARIANTS + 6 };

    e = conf_entry(200, NULL, "accept", 6);
    e->flags = STORE_ENTRY_VARY;
    assert_int_equal(conf_put_entry(c, "mv:1", 4, e, 60000), 0);
    store_entry_release(e);
    for (int i = 0; i < N; i++) {
        char k[32];
        snprintf(k, sizeof(k), "mv:1" CONF_SEP "v%d", i);
        assert_int_equal(conf_put(c, k, NULL, "x", 60000), 0);
    }
    assert_int_equal(conf_list(c, "mv:*", 10, &l), 0);
    assert_int_equal(l.n, 1);
    const struct store_list_entry *p = &l.entries[0];
    assert_int_equal(p->nvariants, STORE_LIST_VARIANTS);
    if (p->variants_partial)
        assert_int_equal(p->variant_count, STORE_LIST_VARIANTS);
    else
        assert_int_equal(p->variant_count, N);
    for (size_t i = 0; i < p->nvariants; i++)
        assert_memory_equal(p->variants[i].key, "mv:1" CONF_SEP "v", 6);
    store_listing_free(&l);
}

/* What a lookup cannot find is not listed: expired entries, invalidated ones. Entries kept
 * stale are, with no time to live left. */
static void
conf_list_only_live(void **state)
{
    struct conf *c = *state;
    const char *tags[] = {"lo:t", NULL};
    struct store_listing l;
    struct store_entry *e;

    assert_int_equal(conf_put(c, "lo:short", NULL, "s", 300), 0);
    assert_int_equal(conf_put(c, "lo:tagged", tags, "t", 60000), 0);
    assert_int_equal(conf_put(c, "lo:long", NULL, "l", 60000), 0);
    e = conf_entry(200, "text/plain", "k", 1);
    e->stale_ms = 5000;
    e->swr_ms = 2000;
    assert_int_equal(conf_put_entry(c, "lo:kept", 7, e, 300), 0);
    store_entry_release(e);
    assert_int_equal(conf_list(c, "lo:*", 100, &l), 0);
    assert_int_equal(l.n, 4);
    store_listing_free(&l);

    c->h->advance(c->h->ctx, 600);
    conf_invalidate1(c, "lo:t");
    assert_int_equal(conf_list(c, "lo:*", 100, &l), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.entries[0].key, "lo:kept");
    assert_int_equal(l.entries[0].ttl_ms, 0);
    assert_true(l.entries[0].swr_left_ms > 0 && l.entries[0].swr_left_ms <= 2000 - 300);
    assert_string_equal(l.entries[1].key, "lo:long");
    store_listing_free(&l);
}

/* Runs the listing tests against the harness's stores; returns the number of failures. */
static inline int
store_conformance_list_run(const struct store_harness *h)
{
    void *hs = (void *)h;
#define CONF_TEST(f) cmocka_unit_test_prestate_setup_teardown(f, conf_setup, conf_teardown, hs)
    const struct CMUnitTest tests[] = {
        CONF_TEST(conf_list_fields),    CONF_TEST(conf_list_limit),
        CONF_TEST(conf_list_variants),  CONF_TEST(conf_list_many_variants),
        CONF_TEST(conf_list_only_live),
    };
#undef CONF_TEST
    char name[128];
    snprintf(name, sizeof(name), "%s_list", h->name);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}

/* ---- the suite ---------------------------------------------------------- */

/* Runs every conformance test against the harness's stores; returns the number of failures. */
static int
store_conformance_run(const struct store_harness *h)
{
    void *hs = (void *)h;
#define CONF_TEST(f) cmocka_unit_test_prestate_setup_teardown(f, conf_setup, conf_teardown, hs)
    const struct CMUnitTest tests[] = {
        CONF_TEST(conf_limit_counts),
        CONF_TEST(conf_limit_algorithms),
        CONF_TEST(conf_limit_cost),
        CONF_TEST(conf_limit_cost_over_limit),
        CONF_TEST(conf_limit_all_or_nothing),
        CONF_TEST(conf_limit_keys_isolated),
        CONF_TEST(conf_limit_window_passes),
        CONF_TEST(conf_limit_room_for_many),
        CONF_TEST(conf_shadow_never_refuses),
        CONF_TEST(conf_shadow_charged_only_when_admitting),
        CONF_TEST(conf_shadow_not_charged_when_refused),
        CONF_TEST(conf_shadow_shared_with_enforced),
        CONF_TEST(conf_limit_peek_counts_nothing),
        CONF_TEST(conf_cache_miss_fill_hit),
        CONF_TEST(conf_cache_large_body),
        CONF_TEST(conf_cache_no_key),
        CONF_TEST(conf_cache_denied_skips_lookup),
        CONF_TEST(conf_cache_replace),
        CONF_TEST(conf_cache_ttl),
        CONF_TEST(conf_cache_keys_isolated),
        CONF_TEST(conf_cache_odd_bytes),
        CONF_TEST(conf_tags_invalidate),
        CONF_TEST(conf_tags_generations),
        CONF_TEST(conf_tags_set_after_invalidate),
        CONF_TEST(conf_tags_several_entries),
        CONF_TEST(conf_tags_unrelated),
        CONF_TEST(conf_tags_entry_carries_other_tags),
        CONF_TEST(conf_lease_single_filler),
        CONF_TEST(conf_lease_released_by_any_fill),
        CONF_TEST(conf_lease_expires),
        CONF_TEST(conf_lease_released_without_fill),
        CONF_TEST(conf_lease_lookup_only_counts_nothing),
        CONF_TEST(conf_lease_not_taken_when_denied),
        CONF_TEST(conf_entry_fields_round_trip),
        CONF_TEST(conf_entry_coded_forms_round_trip),
        CONF_TEST(conf_stale_window),
        CONF_TEST(conf_stored_stale),
        CONF_TEST(conf_stale_invalidated_is_miss),
        CONF_TEST(conf_lease_taken),
        CONF_TEST(conf_delete_keys),
        CONF_TEST(conf_vary_secondaries),
        CONF_TEST(conf_pattern_many),
        CONF_TEST(conf_pattern_syntax),
    };
#undef CONF_TEST
    return cmocka_run_group_tests_name(h->name, tests, NULL, NULL);
}

#endif
