/* test_store_memory.c - the store conformance suite on the memory store, plus its own tests. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>

#include "store.h"
#include "store_memory.h"
#include "store_memory_table.h" /* an entry's record, to weigh what it holds */
#include "store_conformance.h"

#define T0 1700000000000ull /* test clock start, ms */

struct mem_ctx {
    struct store_memory *m;
    uint64_t now; /* atomic: the table's clock */
    size_t max_bytes;
    size_t limit_bytes; /* 0: 64 MiB */
};

static uint64_t
clock_read(void *ctx)
{
    return __atomic_load_n(&((struct mem_ctx *)ctx)->now, __ATOMIC_RELAXED);
}

static struct store *
mem_open(void *ctx)
{
    struct mem_ctx *mc = ctx;

    mc->m = store_memory_new(mc->max_bytes, mc->limit_bytes ? mc->limit_bytes : 64u << 20);
    mc->now = T0;
    store_memory_set_clock(mc->m, clock_read, mc);
    return store_memory_handle(mc->m);
}

static void
mem_close(void *ctx, struct store *s)
{
    struct mem_ctx *mc = ctx;

    s->ops->destroy(s);
    store_memory_free(mc->m);
    mc->m = NULL;
}

static void
mem_run_until_done(void *ctx, const bool *done)
{
    /* Every operation completes before it returns. */
}

static void
mem_advance(void *ctx, uint64_t ms)
{
    __atomic_add_fetch(&((struct mem_ctx *)ctx)->now, ms, __ATOMIC_RELAXED);
}

static struct store *
mem_another(void *ctx)
{
    return store_memory_handle(((struct mem_ctx *)ctx)->m);
}

static struct mem_ctx conf_ctx = {.max_bytes = 64u << 20};

static const struct store_harness memory_harness = {
    .name = "store_memory_conformance",
    .open = mem_open,
    .close = mem_close,
    .run_until_done = mem_run_until_done,
    .advance = mem_advance,
    .another = mem_another,
    .ctx = &conf_ctx,
};

/* ---- memory-store tests ------------------------------------------------- */

/* A fresh table with the given budget, its test clock, and one handle as a conformance fixture. */
struct fixture {
    struct mem_ctx mc;
    struct store_harness h;
    struct conf c;
};

static struct fixture *
fixture_new2(size_t max_bytes, size_t limit_bytes)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->mc.max_bytes = max_bytes;
    f->mc.limit_bytes = limit_bytes;
    f->h = memory_harness;
    f->h.ctx = &f->mc;
    f->c.h = &f->h;
    f->c.s = mem_open(&f->mc);
    return f;
}

static struct fixture *
fixture_new(size_t max_bytes)
{
    return fixture_new2(max_bytes, 0);
}

static void
fixture_free(struct fixture *f)
{
    mem_close(&f->mc, f->c.s);
    free(f);
}

static struct store_memory_stats
stats(struct fixture *f)
{
    struct store_memory_stats s;

    store_memory_stats(f->mc.m, &s);
    return s;
}

static void
test_budget_eviction(void **state)
{
    struct fixture *f = fixture_new(64 * 1024);
    char key[32], body[1000];

    memset(body, 'x', sizeof(body));
    body[sizeof(body) - 1] = '\0';
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "page:%03d", i); /* 8 bytes + 999 */
        assert_int_equal(conf_put(&f->c, key, NULL, body, 60000), 0);
        struct store_memory_stats s = stats(f);
        assert_true(s.cache_bytes <= 64 * 1024);
        /* An entry costs its body, key and structure, not body and key alone: one block of
         * its store_entry (104 bytes), record (48), key, content type and body. */
        assert_true(s.cache_bytes >= s.entries * (8 + 999 + 150));
        assert_true(s.cache_bytes <= s.entries * (8 + 999 + 250));
        assert_true(conf_hit(&f->c, key, NULL, body)); /* the newest stays */
    }
    struct store_memory_stats s = stats(f);
    print_message("an entry of 1007 bytes of body and key is charged %zu\n",
                  s.cache_bytes / s.entries);
    assert_true(s.entries >= 40 && s.entries <= 64 * 1024 / 1157);
    assert_int_equal(s.evicted_entries, 200 - s.entries);
    fixture_free(f);
}

static void
test_budget_lru(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    char key[32], body[151];
    int touched = 0, untouched = 0, fresh = 0;

    memset(body, 'y', sizeof(body) - 1);
    body[150] = '\0';
    /* About 3100 entries of 159 bytes (and their structure) fit in 1 MiB: 2500, then 1500
     * more push about 900 out. */
    for (int i = 0; i < 4000; i++) {
        if (i == 2500) {
            assert_int_equal(stats(f).evicted_entries, 0);
            for (int j = 0; j < 500; j++) {
                snprintf(key, sizeof(key), "key:%05d", j);
                assert_true(conf_hit(&f->c, key, NULL, body));
            }
        }
        snprintf(key, sizeof(key), "key:%05d", i);
        assert_int_equal(conf_put(&f->c, key, NULL, body, 600000), 0);
    }
    for (int i = 0; i < 4000; i++) {
        snprintf(key, sizeof(key), "key:%05d", i);
        bool hit = conf_hit(&f->c, key, NULL, NULL);
        if (i < 500)
            touched += hit;
        else if (i < 2500)
            untouched += hit;
        else
            fresh += hit;
    }
    print_message("lru: %d/500 recently used, %d/2000 old, %d/1500 new kept\n", touched, untouched,
                  fresh);
    assert_true(stats(f).cache_bytes <= 1 << 20);
    /* The LRU is per shard and a shard evicts its own first: a recently used entry in a shard
     * that takes more than its share of the new ones can go (the table's hash is seeded per
     * process; over 1,300 runs 479-500 were kept, against about 46% of the old ones). */
    assert_true(touched >= 460);
    assert_true(fresh >= 1450);
    assert_true(untouched <= 1200);
    fixture_free(f);
}

static void
test_too_big_or_no_ttl(void **state)
{
    struct fixture *f = fixture_new(1000);
    char big[1200];

    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(conf_put(&f->c, "k", NULL, "small", 60000), 0);
    assert_true(conf_hit(&f->c, "k", NULL, "small"));
    assert_int_equal(conf_put(&f->c, "k", NULL, big, 60000), 0);
    assert_false(conf_hit(&f->c, "k", NULL, NULL)); /* replaced by nothing */
    assert_int_equal(stats(f).cache_bytes, 0);
    assert_int_equal(stats(f).not_stored, 1);
    assert_int_equal(conf_put(&f->c, "k", NULL, "small", 60000), 0);
    assert_int_equal(conf_put(&f->c, "k", NULL, "again", 0), 0);
    assert_false(conf_hit(&f->c, "k", NULL, NULL));
    fixture_free(f);

    f = fixture_new(0); /* caches nothing */
    assert_int_equal(conf_put(&f->c, "k", NULL, "", 60000), 0);
    assert_false(conf_hit(&f->c, "k", NULL, NULL));
    assert_int_equal(stats(f).tags, 0);
    fixture_free(f);
}

#define ANY SIZE_MAX

/*
 * Runs limit checks on one key (operations that insert nothing, so only the
 * handles' rotating sweep cleans) until the counts are as given (ANY: any),
 * for at most a million operations. Returns the operations it took, or -1.
 */
static long
churn_until(struct fixture *f, size_t entries, size_t limits, size_t tags)
{
    struct limiter_rule r = conf_rule(LIMITER_FIXED_WINDOW, 1000000000, HOUR);

    for (long n = 0; n <= 1000000; n += 1000) {
        struct store_memory_stats s = stats(f);
        if ((entries == ANY || s.entries == entries) && (limits == ANY || s.limits == limits) &&
            (tags == ANY || s.tags == tags))
            return n;
        for (int i = 0; i < 1000; i++)
            conf_limit(&f->c, r, "busy", 1);
    }
    return -1;
}

/*
 * Runs lookups that insert nothing (so only the handles' rotating sweep
 * cleans) until nothing is charged to either budget, for at most a million
 * operations. Returns the operations it took, or -1.
 */
static long
settle(struct fixture *f)
{
    for (long n = 0; n <= 1000000; n += 1000) {
        struct store_memory_stats s = stats(f);
        if (s.cache_bytes == 0 && s.limit_bytes == 0)
            return n;
        for (int i = 0; i < 1000; i++) {
            struct conf_req r;
            conf_lookup(&f->c, &r, "absent", NULL);
        }
    }
    return -1;
}

static void
test_sweep_limits(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    static const enum limiter_algo algos[] = {LIMITER_SLIDING_WINDOW, LIMITER_SLIDING_LOG,
                                              LIMITER_TOKEN_BUCKET, LIMITER_FIXED_WINDOW};
    char key[32];

    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "ip:%d", i);
        assert_true(conf_limit(&f->c, conf_rule(algos[i % 4], 5, 50), key, 1).allowed);
    }
    assert_int_equal(stats(f).limits, 20000);
    mem_advance(&f->mc, 1000);
    long ops = churn_until(f, ANY, 1, ANY);
    print_message("20000 expired limits swept in %ld operations\n", ops);
    assert_true(ops >= 0);
    fixture_free(f);
}

static void
test_churn_stays_bounded(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    struct limiter_rule r = conf_rule(LIMITER_SLIDING_WINDOW, 5, 10);
    size_t most = 0;
    char key[32];

    /* A stream of new callers, 100 per ms, each live for at most 20 ms: about
     * 2000 live states at any time. The table must not keep the dead ones. */
    for (int i = 0; i < 300000; i++) {
        snprintf(key, sizeof(key), "ip:%d", i);
        assert_true(conf_limit(&f->c, r, key, 1).allowed);
        if (i % 100 == 99)
            mem_advance(&f->mc, 1);
        if (i % 1000 == 999 && stats(f).limits > most)
            most = stats(f).limits;
    }
    print_message("churn: at most %zu limit states held for ~2000 live\n", most);
    assert_true(most <= 8000);
    fixture_free(f);
}

static void
test_sweep_entries_and_tags(void **state)
{
    struct fixture *f = fixture_new(16 << 20);
    char key[32], tag[32];

    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "e:%d", i);
        snprintf(tag, sizeof(tag), "t:%d", i);
        assert_int_equal(conf_put(&f->c, key, (const char *[]){tag, "common", NULL}, key, 50), 0);
    }
    struct store_memory_stats s = stats(f);
    assert_int_equal(s.entries, 5000);
    assert_int_equal(s.tags, 5001);
    assert_true(s.cache_bytes > 0);
    mem_advance(&f->mc, 50);
    assert_true(churn_until(f, 0, ANY, 0) >= 0);
    mem_advance(&f->mc, 2 * HOUR); /* and the churn's own limit state */
    assert_true(settle(f) >= 0);   /* the bucket arrays shrank back too */
    fixture_free(f);
}

static void
test_tag_outlives_its_entries(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    const char *tags[] = {"T", NULL};

    assert_int_equal(conf_put(&f->c, "short", tags, "s", 100), 0);
    assert_int_equal(conf_put(&f->c, "long", tags, "l", 1000), 0);
    mem_advance(&f->mc, 500);
    assert_true(churn_until(f, 1, ANY, ANY) >= 0); /* the short one is gone */
    for (int i = 0; i < 20000; i++)                /* many sweeps of every shard later */
        conf_limit(&f->c, conf_rule(LIMITER_FIXED_WINDOW, 1000000, HOUR), "busy", 1);
    assert_int_equal(stats(f).tags, 1); /* the tag stays for the other */
    assert_true(conf_hit(&f->c, "long", tags, "l"));
    conf_invalidate1(&f->c, "T");
    assert_false(conf_hit(&f->c, "long", tags, NULL));
    assert_int_equal(stats(f).entries, 0); /* dropped when found stale */
    mem_advance(&f->mc, 500);
    assert_true(churn_until(f, ANY, ANY, 0) >= 0);
    fixture_free(f);
}

static void
test_dropped_tag_still_refuses(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    const char *tags[] = {"T", NULL};
    struct conf_req r;

    /* The lookup reads T from its record; T is invalidated, then expires
     * and is swept away. The late fill must still be refused. */
    assert_int_equal(conf_put(&f->c, "a", tags, "a", 100), 0);
    conf_lookup(&f->c, &r, "b", tags);
    conf_invalidate1(&f->c, "T");
    mem_advance(&f->mc, 200);
    assert_true(churn_until(f, 0, ANY, 0) >= 0);
    struct store_entry *e = conf_entry(200, "text/plain", "late", 4);
    assert_int_equal(conf_fill_req(&f->c, &r, e, 60000), -1);
    /* Without a record, a fresh lookup's generations still fill. */
    conf_lookup(&f->c, &r, "b", tags);
    assert_int_equal(conf_fill_req(&f->c, &r, e, 60000), 0);
    store_entry_release(e);
    assert_true(conf_hit(&f->c, "b", tags, "late"));
    fixture_free(f);
}

static void
test_handles_share_table(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    struct conf other = {.h = &f->h, .s = store_memory_handle(f->mc.m)};
    struct limiter_rule two = conf_rule(LIMITER_SLIDING_WINDOW, 2, HOUR);

    assert_int_equal(conf_put(&f->c, "k", NULL, "v", 60000), 0);
    assert_true(conf_hit(&other, "k", NULL, "v"));
    assert_true(conf_limit(&f->c, two, "u", 1).allowed);
    assert_true(conf_limit(&other, two, "u", 1).allowed);
    assert_false(conf_limit(&f->c, two, "u", 1).allowed);
    other.s->ops->destroy(other.s);
    fixture_free(f);
}

static void
test_same_limit_twice(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    struct limiter_rule three = conf_rule(LIMITER_FIXED_WINDOW, 3, HOUR);

    for (int round = 0; round < 2; round++) {
        struct conf_req r = {0};
        conf_add_limit(&r, three, "u", 1, 1);
        conf_add_limit(&r, three, "u", 1, 1);
        conf_admit(&f->c, &r);
        assert_int_equal(r.a.allowed, round == 0);
        assert_int_equal(r.results[0].remaining, 1);
        assert_int_equal(r.results[1].remaining, 1);
    }
    assert_int_equal(stats(f).limits, 1);
    fixture_free(f);
}

static void
test_many_limits_and_tags(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    enum { NL = 12, NT = 24 };
    struct store_limit limits[NL];
    struct limiter_rule rule = conf_rule(LIMITER_SLIDING_WINDOW, 1, HOUR);
    struct limiter_result results[NL];
    char lkeys[NL][16], tkeys[NT][16];
    const char *tags[NT];
    size_t taglens[NT];
    uint64_t gens[NT];

    for (int i = 0; i < NL; i++) {
        snprintf(lkeys[i], sizeof(lkeys[i]), "l%d", i);
        limits[i] = (struct store_limit){&rule, lkeys[i], strlen(lkeys[i]), 1, false, false};
    }
    for (int i = 0; i < NT; i++) {
        snprintf(tkeys[i], sizeof(tkeys[i]), "t%d", i);
        tags[i] = tkeys[i];
        taglens[i] = strlen(tkeys[i]);
    }
    for (int round = 0; round < 3; round++) {
        struct store_admit a = {.limits = limits,
                                .nlimits = NL - (size_t)round,
                                .cache_key = "k",
                                .cache_keylen = 1,
                                .tags = tags,
                                .taglens = taglens,
                                .ntags = NT,
                                .results = results,
                                .tag_gens = gens};
        struct conf_op op = {0};
        store_admit_and_lookup(f->c.s, &a, conf_done, &op);
        assert_int_equal(conf_wait(&f->c, &op), 0);
        assert_int_equal(a.allowed, round == 0);
        if (round == 0) {
            assert_int_equal(a.state, STORE_MISS);
            struct store_entry *e = conf_entry(200, "text/plain", "many", 4);
            op = (struct conf_op){0};
            store_fill(f->c.s, "k", 1, e, 60000, tags, taglens, gens, NT, conf_done, &op);
            assert_int_equal(conf_wait(&f->c, &op), 0);
            store_entry_release(e);
        }
    }
    assert_true(conf_hit(&f->c, "k", NULL, "many"));
    struct conf_op op = {0};
    store_invalidate(f->c.s, tags + NT - 1, taglens + NT - 1, 1, conf_done, &op);
    assert_int_equal(conf_wait(&f->c, &op), 0);
    assert_false(conf_hit(&f->c, "k", NULL, NULL));
    op = (struct conf_op){0};
    store_invalidate(f->c.s, tags, taglens, NT, conf_done, &op);
    assert_int_equal(conf_wait(&f->c, &op), 0);
    assert_int_equal(stats(f).limits, NL);
    fixture_free(f);
}

static void
test_clock_backwards(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    struct limiter_rule one = conf_rule(LIMITER_FIXED_WINDOW, 1, 1000);

    assert_true(conf_limit(&f->c, one, "u", 1).allowed);
    assert_int_equal(conf_put(&f->c, "k", NULL, "v", 1000), 0);
    f->mc.now -= 5000;
    assert_false(conf_limit(&f->c, one, "u", 1).allowed); /* no time passed */
    assert_true(conf_hit(&f->c, "k", NULL, "v"));
    f->mc.now += 5000 + 1000;
    assert_true(conf_limit(&f->c, one, "u", 1).allowed);
    assert_false(conf_hit(&f->c, "k", NULL, NULL));
    fixture_free(f);
}

/* ---- budgets: what is charged ------------------------------------------ */

/* Fills `n` entries of a 100-byte body, each under two tags of its own and one shared. */
static void
fill_tagged(struct fixture *f, int from, int n, const char *prefix)
{
    char key[64], t1[64], t2[64], body[101];

    memset(body, 'b', 100);
    body[100] = '\0';
    for (int i = from; i < from + n; i++) {
        snprintf(key, sizeof(key), "%s:entry:%d", prefix, i);
        snprintf(t1, sizeof(t1), "%s:tag-one-of-some-length:%d", prefix, i);
        snprintf(t2, sizeof(t2), "%s:tag-two-of-some-length:%d", prefix, i);
        assert_int_equal(conf_put(&f->c, key, (const char *[]){t1, t2, "shared", NULL}, body, HOUR),
                         0);
    }
}

/* Makes `n` limit states (sliding logs of `per` requests each when per > 1) and n leases. */
static void
fill_limits(struct fixture *f, int n, int per)
{
    char key[64], page[64];

    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "caller-of-some-length:%d", i);
        snprintf(page, sizeof(page), "page-of-some-length:%d:%d", per, i);
        for (int j = 0; j < per; j++) {
            struct limiter_rule r =
                conf_rule(per > 1 ? LIMITER_SLIDING_LOG : LIMITER_SLIDING_WINDOW, 1000, HOUR);
            assert_true(conf_limit(&f->c, r, key, 1).allowed);
            if (per > 1)
                mem_advance(&f->mc, 1); /* one log entry per request */
        }
        struct conf_req q = {.key = page, .keylen = strlen(page), .lease_ms = HOUR};
        conf_admit(&f->c, &q);
        assert_true(q.a.lease_taken);
    }
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define OWN_ALLOCATOR 1 /* a sanitizer's allocator, which keeps its own books */
#endif

#ifndef OWN_ALLOCATOR
/* Heap bytes in use, as the allocator counts them (its chunks, headers included). */
static size_t
heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();

    return mi.uordblks + mi.hblkhd;
}
#endif

/* Each budget is charged what the allocator holds for what it keeps: the heap grows by it. */
static void
test_charges_are_the_heap(void **state)
{
#ifdef OWN_ALLOCATOR
    skip();
#else
    struct fixture *f = fixture_new(256u << 20);
    struct store_memory_stats s0 = stats(f), s1, s2;
    size_t h0 = heap_in_use(), h1, h2;

    fill_tagged(f, 0, 20000, "x");
    h1 = heap_in_use();
    s1 = stats(f);
    fill_limits(f, 5000, 1);
    fill_limits(f, 5000, 20); /* the same callers again: their sliding logs */
    h2 = heap_in_use();
    s2 = stats(f);
    assert_int_equal(s1.entries, 20000);
    assert_int_equal(s1.tags, 40001);
    assert_int_equal(s2.limits, 10000);
    assert_int_equal(s2.leases, 10000);
    double cache = (double)(s1.cache_bytes - s0.cache_bytes) / (double)(h1 - h0);
    double lim = (double)(s2.limit_bytes - s1.limit_bytes) / (double)(h2 - h1);
    print_message("charged / heap: cache %.3f (%zu bytes), limits %.3f (%zu bytes)\n", cache,
                  s1.cache_bytes, lim, s2.limit_bytes);
    assert_true(cache > 0.97 && cache < 1.03);
    assert_true(lim > 0.97 && lim < 1.03);
    fixture_free(f);
#endif
}

/* Whatever way a record goes (replaced, deleted, invalidated, evicted, expired), its charge
 * goes with it: once everything is gone nothing is left charged. */
static void
test_charges_given_back(void **state)
{
    struct fixture *f = fixture_new2(512 * 1024, 256 * 1024);
    const char *keys[] = {"x:entry:1", "x:entry:2"};
    size_t lens[] = {9, 9};

    fill_tagged(f, 0, 3000, "x"); /* evicts, and drops idle tags */
    fill_tagged(f, 0, 100, "x");  /* replaces */
    assert_true(stats(f).evicted_entries > 0);
    assert_int_equal(conf_delete(&f->c, keys, lens, 2), 2);
    assert_int_equal(conf_put(&f->c, "v", NULL, "x", HOUR), 0);
    assert_int_equal(conf_put(&f->c, "w", (const char *[]){"shared", NULL}, "x", HOUR), 0);
    conf_invalidate1(&f->c, "shared"); /* every x:entry and w are dead, found or not */
    assert_false(conf_hit(&f->c, "w", NULL, NULL));
    size_t live = stats(f).entries;
    assert_int_equal(conf_pattern(&f->c, "x:*") + conf_pattern(&f->c, "v"), live);
    fill_limits(f, 300, 1);
    fill_limits(f, 300, 10);
    struct store_memory_stats s = stats(f);
    assert_true(s.cache_bytes > 0 && s.limit_bytes > 0);
    assert_true(s.cache_bytes <= s.cache_max && s.limit_bytes <= s.limit_max);
    mem_advance(&f->mc, 3 * HOUR);
    long ops = settle(f);
    print_message("everything gone, nothing charged after %ld operations\n", ops);
    assert_true(ops >= 0);
    s = stats(f);
    assert_int_equal(s.entries + s.tags + s.limits + s.leases, 0);
    fixture_free(f);
}

/* Client-chosen tags cannot grow the table past its budget: tag records no entry holds go
 * first, and what an entry holds is charged with it. */
static void
test_tag_flood_stays_in_budget(void **state)
{
    struct fixture *f = fixture_new(256 * 1024);
    char key[32], tags[4][240];
    const char *tv[5] = {tags[0], tags[1], tags[2], tags[3], NULL};

    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "k:%d", i);
        for (int t = 0; t < 4; t++) {
            memset(tags[t], 'a' + t, 200);
            snprintf(tags[t] + 200, 40, ":%d", i);
        }
        assert_int_equal(conf_put(&f->c, key, tv, "x", HOUR), 0);
        if (i % 500 == 0)
            assert_true(stats(f).cache_bytes <= 256 * 1024);
    }
    struct store_memory_stats s = stats(f);
    print_message("after 80000 distinct tags: %zu entries, %zu tags, %zu bytes, %" PRIu64
                  " tags evicted\n",
                  s.entries, s.tags, s.cache_bytes, s.evicted_tags);
    assert_true(s.cache_bytes <= 256 * 1024);
    assert_true(s.entries > 100);
    assert_true(s.tags <= 4 * s.entries + 64);                    /* hardly any idle tag is left */
    assert_true(s.cache_bytes >= s.tags * 200 + s.entries * 100); /* the tags are charged */
    assert_true(s.evicted_tags > 70000);
    assert_true(conf_hit(&f->c, "k:19999", tv, "x"));
    fixture_free(f);
}

/* At the limit budget a caller with no state is refused rather than admitted with a fresh
 * budget, and callers with a state keep being counted; expired states make room again. */
static void
test_limit_budget_refuses_not_forgets(void **state)
{
    struct fixture *f = fixture_new2(1 << 20, 16 * 1024);
    struct limiter_rule three = conf_rule(LIMITER_FIXED_WINDOW, 3, HOUR);
    char key[32];
    int n;

    for (int i = 0; i < 3; i++)
        assert_true(conf_limit(&f->c, three, "spent", 1).allowed);
    assert_true(conf_limit(&f->c, three, "some", 1).allowed);
    for (n = 0; n < 100000; n++) {
        struct conf_req r = {0};
        snprintf(key, sizeof(key), "new:%d", n);
        conf_add_limit(&r, three, key, strlen(key), 1);
        conf_admit(&f->c, &r);
        if (r.a.refused_full) {
            assert_false(r.a.allowed);
            break;
        }
        assert_true(r.a.allowed);
    }
    struct store_memory_stats s = stats(f);
    print_message("%d states fit in 16 KiB\n", n);
    assert_true(n > 20 && n < 100000);
    assert_int_equal(s.limit_refused, 1);
    assert_true(s.limit_bytes <= 16 * 1024);
    /* Still full: a new caller is refused, and nothing was counted for it. */
    struct conf_req r = {0};
    conf_add_limit(&r, three, "newer", 5, 1);
    conf_add_limit(&r, three, "some", 4, 1);
    conf_admit(&f->c, &r);
    assert_true(r.a.refused_full);
    assert_false(r.a.allowed);
    /* The spent caller is not forgotten (refused by its limit, not by the budget)... */
    r = (struct conf_req){0};
    conf_add_limit(&r, three, "spent", 5, 1);
    conf_admit(&f->c, &r);
    assert_false(r.a.allowed);
    assert_false(r.a.refused_full);
    /* ...and the other keeps its count: two more, not three (its refused request counted
     * nothing). */
    assert_true(conf_limit(&f->c, three, "some", 1).allowed);
    assert_true(conf_limit(&f->c, three, "some", 1).allowed);
    assert_false(conf_limit(&f->c, three, "some", 1).allowed);
    assert_int_equal(stats(f).limit_refused, 2);
    /* The window ends: the states are empty, and make room for new callers. */
    mem_advance(&f->mc, HOUR);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "nxt:%d", i); /* as long as "new:%d": as large */
        assert_true(conf_limit(&f->c, three, key, 1).allowed);
    }
    assert_true(stats(f).limit_reclaimed > 0);
    assert_int_equal(stats(f).limit_refused, 2);
    fixture_free(f);
}

/* With the limit budget full, a shadow limit that needs a new state is left uncounted: the
 * request is admitted and counted by its enforced limit, never refused for the shadow one. */
static void
test_limit_budget_full_skips_shadow(void **state)
{
    struct fixture *f = fixture_new2(1 << 20, 16 * 1024);
    struct limiter_rule three = conf_rule(LIMITER_FIXED_WINDOW, 3, HOUR);
    char key[32];

    assert_true(conf_limit(&f->c, three, "some", 1).allowed);
    struct conf_req r = {0};
    for (int n = 0; n < 100000 && !r.a.refused_full; n++) {
        r = (struct conf_req){0};
        snprintf(key, sizeof(key), "new:%d", n);
        conf_add_limit(&r, three, key, strlen(key), 1);
        conf_admit(&f->c, &r);
    }
    /* Full: an enforced limit needing a new state refuses, as ever. */
    r = (struct conf_req){0};
    conf_add_limit(&r, three, "newer", 5, 1);
    conf_admit(&f->c, &r);
    assert_true(r.a.refused_full);
    /* A shadow one beside an enforced one with a state does not. */
    r = (struct conf_req){0};
    conf_add_shadow(&r, three, "shadow:new", 1);
    conf_add_limit(&r, three, "some", 4, 1);
    conf_admit(&f->c, &r);
    assert_true(r.a.allowed);
    assert_false(r.a.refused_full);
    assert_true(r.results[0].allowed);
    /* The enforced one counted it (1 + 1 of 3), the shadow one could not: it still sees a
     * fresh budget, and alone is admitted and left uncounted again. */
    assert_int_equal(conf_limit(&f->c, three, "some", 1).remaining, 0);
    r = (struct conf_req){0};
    conf_add_shadow(&r, three, "shadow:new", 1);
    conf_admit(&f->c, &r);
    assert_true(r.a.allowed);
    assert_false(r.a.refused_full);
    assert_int_equal(r.results[0].remaining, 2);
    fixture_free(f);
}

/* A sliding log that would outgrow the budget refuses the request and keeps what it holds. */
static void
test_sliding_log_growth_refused(void **state)
{
    struct fixture *f = fixture_new2(1 << 20, 4096);
    struct limiter_rule many = conf_rule(LIMITER_SLIDING_LOG, 1000000, HOUR);
    int admitted = 0;

    for (int i = 0; i < 10000; i++) {
        struct conf_req r = {0};
        conf_add_limit(&r, many, "log", 3, 1);
        conf_admit(&f->c, &r);
        if (r.a.refused_full)
            break;
        assert_true(r.a.allowed);
        admitted++;
        mem_advance(&f->mc, 1); /* a log entry per request */
    }
    print_message("%d log entries fit in 4 KiB\n", admitted);
    assert_true(admitted > 64 && admitted < 10000);
    assert_true(stats(f).limit_bytes <= 4096);
    /* Nothing was lost: the log still counts every admitted request. */
    struct limiter_result res =
        conf_limit(&f->c, conf_rule(LIMITER_SLIDING_LOG, 1000000, HOUR), "log", 0);
    assert_int_equal(res.remaining, 1000000 - admitted);
    fixture_free(f);
}

/* With the limit budget full of live states, a fill lease is handed out unrecorded. */
static void
test_lease_unrecorded_when_full(void **state)
{
    struct fixture *f = fixture_new2(1 << 20, 4096);
    struct limiter_rule r = conf_rule(LIMITER_FIXED_WINDOW, 10, HOUR);
    char key[32];

    bool full = false;

    for (int i = 0; i < 10000 && !full; i++) {
        snprintf(key, sizeof(key), "caller:%d", i);
        struct conf_req q = {0};
        conf_add_limit(&q, r, key, strlen(key), 1);
        conf_admit(&f->c, &q);
        full = q.a.refused_full;
    }
    assert_true(full);
    for (int i = 0; i < 2; i++) {
        struct conf_req q = {.key = "page", .keylen = 4, .lease_ms = 1000};
        conf_admit(&f->c, &q);
        assert_int_equal(q.a.state, STORE_MISS);
        assert_true(q.a.lease_taken); /* the second as well: nobody waits on an unrecorded one */
    }
    struct store_memory_stats s = stats(f);
    assert_int_equal(s.leases, 0);
    assert_int_equal(s.leases_unrecorded, 2);
    fixture_free(f);
}

/* ---- threads ------------------------------------------------------------ */

struct hammer {
    struct fixture *f;
    struct limiter_rule rule;
    int tries;
    int id;
    int admitted; /* out */
    bool over_budget;
    bool corrupt;
};

static void
hammer_done(void *arg, int status)
{
    *(int *)arg = status + 1;
}

static void *
hammer_limit(void *arg)
{
    struct hammer *hm = arg;
    struct store *s = store_memory_handle(hm->f->mc.m);
    struct limiter_rule own = conf_rule(LIMITER_SLIDING_WINDOW, 1000000, HOUR);
    char okey[16];

    snprintf(okey, sizeof(okey), "thread:%d", hm->id);
    for (int i = 0; i < hm->tries; i++) {
        struct store_limit limits[2] = {{&hm->rule, "hot", 3, 1, false, false},
                                        {&own, okey, strlen(okey), 1, false, false}};
        struct limiter_result res[2];
        struct store_admit a = {.limits = limits, .nlimits = 2, .results = res};
        int done = 0;
        store_admit_and_lookup(s, &a, hammer_done, &done);
        if (done == 1 && a.allowed)
            hm->admitted++;
    }
    s->ops->destroy(s);
    return NULL;
}

static void
test_threads_limit_exact(void **state)
{
    static const enum limiter_algo algos[] = {LIMITER_SLIDING_WINDOW, LIMITER_SLIDING_LOG,
                                              LIMITER_TOKEN_BUCKET, LIMITER_FIXED_WINDOW};

    for (size_t ai = 0; ai < 4; ai++) {
        struct fixture *f = fixture_new(1 << 20);
        struct hammer hm[4];
        pthread_t t[4];
        int total = 0, active = 0;

        for (int i = 0; i < 4; i++) {
            hm[i] = (struct hammer){
                .f = f, .rule = conf_rule(algos[ai], 1000, HOUR), .tries = 600, .id = i};
            assert_int_equal(pthread_create(&t[i], NULL, hammer_limit, &hm[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(t[i], NULL);
            total += hm[i].admitted;
            active += hm[i].admitted > 0;
        }
        assert_int_equal(total, 1000);
        /* "hot", and the own key of every thread that got in (a denied request records nothing) */
        assert_int_equal(stats(f).limits, 1 + (size_t)active);
        fixture_free(f);
    }
}

#define NKEYS 64
#define NTAGS 16

static uint64_t
xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void *
hammer_mixed(void *arg)
{
    struct hammer *hm = arg;
    struct store *s = store_memory_handle(hm->f->mc.m);
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(hm->id + 1);
    char key[16], tag[2][16], body[512];

    memset(body, 'b', sizeof(body));
    for (int i = 0; i < hm->tries; i++) {
        uint64_t r = xorshift(&seed);
        int k = (int)(r % NKEYS);
        snprintf(key, sizeof(key), "key:%d", k);
        snprintf(tag[0], sizeof(tag[0]), "tag:%d", k % NTAGS);
        snprintf(tag[1], sizeof(tag[1]), "tag:%d", (k / NTAGS + 3) % NTAGS);
        const char *tags[2] = {tag[0], tag[1]};
        size_t lens[2] = {strlen(tag[0]), strlen(tag[1])};
        int done = 0;

        if ((r >> 8) % 8 == 0) {
            store_invalidate(s, tags + (r >> 16) % 2, lens + (r >> 16) % 2, 1, hammer_done, &done);
            continue;
        }
        if ((r >> 8) % 64 == 1)
            mem_advance(&hm->f->mc, 1);
        uint64_t gens[2];
        struct store_admit a = {.cache_key = key,
                                .cache_keylen = strlen(key),
                                .tags = tags,
                                .taglens = lens,
                                .ntags = (r >> 20) % 4 == 0 ? 0 : 2,
                                .tag_gens = gens};
        store_admit_and_lookup(s, &a, hammer_done, &done);
        if (a.state == STORE_HIT) {
            if (a.entry->body_len < 64 || a.entry->body[0] != 'b')
                hm->corrupt = true;
            store_entry_release(a.entry);
            continue;
        }
        if (a.ntags == 0)
            continue;
        size_t len = 64 + (r >> 24) % (sizeof(body) - 64);
        char *b = malloc(len);
        memcpy(b, body, len);
        struct store_entry *e = store_entry_new(200, strdup("text/plain"), b, len);
        store_fill(s, key, strlen(key), e, 1 + (r >> 40) % 50, tags, lens, gens, 2, hammer_done,
                   &done);
        store_entry_release(e);
        if (i % 256 == 0) {
            struct store_memory_stats st;
            store_memory_stats(hm->f->mc.m, &st);
            if (st.cache_bytes > hm->f->mc.max_bytes)
                hm->over_budget = true;
        }
    }
    s->ops->destroy(s);
    return NULL;
}

static void
test_threads_mixed(void **state)
{
    struct fixture *f = fixture_new(8 * 1024);
    struct hammer hm[4];
    pthread_t t[4];

    for (int i = 0; i < 4; i++) {
        hm[i] = (struct hammer){.f = f, .tries = 40000, .id = i};
        assert_int_equal(pthread_create(&t[i], NULL, hammer_mixed, &hm[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_false(hm[i].over_budget);
        assert_false(hm[i].corrupt);
    }
    assert_true(stats(f).cache_bytes <= 8 * 1024);
    /* Invalidate every tag: nothing may hit afterwards. */
    for (int i = 0; i < NTAGS; i++) {
        char tag[16];
        snprintf(tag, sizeof(tag), "tag:%d", i);
        conf_invalidate1(&f->c, tag);
    }
    for (int k = 0; k < NKEYS; k++) {
        char key[16];
        snprintf(key, sizeof(key), "key:%d", k);
        assert_false(conf_hit(&f->c, key, NULL, NULL));
    }
    struct store_memory_stats s = stats(f);
    assert_int_equal(s.entries, 0);
    /* The tags outlive their entries a little; then nothing is left charged. */
    mem_advance(&f->mc, 1000);
    assert_true(settle(f) >= 0);
    fixture_free(f);
}

static void *
hammer_new_callers(void *arg)
{
    struct hammer *hm = arg;
    struct store *s = store_memory_handle(hm->f->mc.m);
    char key[32];

    for (int i = 0; i < hm->tries; i++) {
        snprintf(key, sizeof(key), "t%d:caller:%d", hm->id, i);
        struct store_limit l = {&hm->rule, key, strlen(key), 1, false, false};
        struct limiter_result res;
        struct store_admit a = {.limits = &l, .nlimits = 1, .results = &res};
        int done = 0;
        store_admit_and_lookup(s, &a, hammer_done, &done);
        if (a.allowed)
            hm->admitted++;
        else if (!a.refused_full)
            hm->corrupt = true; /* a new caller is refused only for want of room */
        if (i % 64 == 0) {
            struct store_memory_stats st;
            store_memory_stats(hm->f->mc.m, &st);
            if (st.limit_bytes > st.limit_max)
                hm->over_budget = true;
        }
    }
    s->ops->destroy(s);
    return NULL;
}

/* Threads making new callers at once never pass the limit budget; every caller admitted has
 * its state, every other one was refused for want of room. */
static void
test_threads_limit_budget(void **state)
{
    struct fixture *f = fixture_new2(1 << 20, 64 * 1024);
    struct hammer hm[4];
    pthread_t t[4];
    int admitted = 0;

    for (int i = 0; i < 4; i++) {
        hm[i] = (struct hammer){
            .f = f, .rule = conf_rule(LIMITER_SLIDING_WINDOW, 3, HOUR), .tries = 5000, .id = i};
        assert_int_equal(pthread_create(&t[i], NULL, hammer_new_callers, &hm[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_false(hm[i].over_budget);
        assert_false(hm[i].corrupt);
        admitted += hm[i].admitted;
    }
    struct store_memory_stats s = stats(f);
    print_message("%d of 20000 new callers admitted in 64 KiB\n", admitted);
    assert_true(admitted > 100);
    assert_int_equal(s.limits, (size_t)admitted);
    assert_int_equal(s.limit_refused, 20000 - (uint64_t)admitted);
    assert_true(s.limit_bytes <= 64 * 1024);
    fixture_free(f);
}

/* One listing walks at most its budget of records (and the rest of the shard it is in), and
 * says it stopped; without a budget it walks the whole table. */
static void
test_list_work_bound(void **state)
{
    struct fixture *f = fixture_new(64u << 20);
    struct store_listing l;
    enum { N = 6400, BUDGET = 500 };

    store_memory_set_list_budget(f->mc.m, BUDGET);
    for (int i = 0; i < N; i++) {
        char key[32];
        snprintf(key, sizeof(key), "wb:%d", i);
        assert_int_equal(conf_put(&f->c, key, NULL, "v", 60000), 0);
    }
    /* Few keys match: the budget ends the walk, not the limit. A shard holds about N / 64. */
    assert_int_equal(conf_list(&f->c, "none:*", 1000, &l), 0);
    print_message("budget %d: %llu records walked\n", BUDGET, (unsigned long long)l.scanned);
    assert_int_equal(l.n, 0);
    assert_true(l.truncated);
    assert_true(l.scanned >= BUDGET && l.scanned < BUDGET + 3 * N / 64);
    store_listing_free(&l);
    /* Every key matches: it lists what it walked. */
    assert_int_equal(conf_list(&f->c, "wb:*", 1000, &l), 0);
    assert_true(l.truncated);
    assert_true(l.n >= BUDGET && l.n < BUDGET + 3 * N / 64);
    store_listing_free(&l);
    /* The default budget walks all of it. */
    store_memory_set_list_budget(f->mc.m, 0);
    assert_int_equal(conf_list(&f->c, "none:*", 1000, &l), 0);
    assert_false(l.truncated);
    assert_true(l.scanned >= N);
    store_listing_free(&l);
    fixture_free(f);
}

/* Listings while other threads fill, evict and invalidate: every entry listed is whole. */
static void *
hammer_then_say(void *arg)
{
    struct hammer *hm = arg;

    hammer_mixed(hm);
    __atomic_store_n(&hm->admitted, 1, __ATOMIC_RELEASE); /* finished */
    return NULL;
}

static void
check_listed(const struct store_listing *l)
{
    for (size_t i = 0; i < l->n; i++) {
        const struct store_list_entry *e = &l->entries[i];
        assert_memory_equal(e->key, "key:", 4);
        assert_true(e->bytes >= 64 + strlen("text/plain"));
        assert_int_equal(e->ntags, 2);
        assert_memory_equal(e->tags[0], "tag:", 4);
        assert_memory_equal(e->tags[1], "tag:", 4);
    }
}

static void
test_threads_list(void **state)
{
    struct fixture *f = fixture_new(8 * 1024);
    struct hammer hm[2];
    pthread_t t[2];
    size_t listed = 0, rounds = 0;
    struct store_listing l;

    for (int i = 0; i < 2; i++) {
        hm[i] = (struct hammer){.f = f, .tries = 100000, .id = i};
        assert_int_equal(pthread_create(&t[i], NULL, hammer_then_say, &hm[i]), 0);
    }
    while (!__atomic_load_n(&hm[0].admitted, __ATOMIC_ACQUIRE) ||
           !__atomic_load_n(&hm[1].admitted, __ATOMIC_ACQUIRE)) {
        assert_int_equal(conf_list(&f->c, "key:*", 1000, &l), 0);
        check_listed(&l);
        listed += l.n;
        rounds++;
        store_listing_free(&l);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        assert_false(hm[i].corrupt);
    }
    print_message("%zu entries listed in %zu listings while filling\n", listed, rounds);
    assert_true(rounds > 10);
    /* Once still, it lists what is there. */
    assert_int_equal(conf_list(&f->c, "key:*", 1000, &l), 0);
    check_listed(&l);
    assert_true(l.n > 0 && l.n <= stats(f).entries);
    store_listing_free(&l);
    fixture_free(f);
}

/* ---- what an entry holds, and what it is charged ------------------------------------------ */

/* The record of key in the table, or NULL (one thread: its shard is let go before it is read). */
static struct entry_rec *
record_of(struct fixture *f, const char *key)
{
    struct store_memory *m = f->mc.m;
    size_t len = strlen(key);
    uint64_t h = mt_entry_hash(m, key, len);
    struct shard *sh = shard_at(m, h);

    pthread_mutex_lock(&sh->lock);
    struct rec *r = mt_find(m, sh, h, REC_ENTRY, key, len, NULL, clock_now(m));
    pthread_mutex_unlock(&sh->lock);
    return (struct entry_rec *)r;
}

/* Every block an entry record holds, each once: the record's own when it has one, the entry's,
 * each field allocated apart from it, and the tag records it was the first to hold (made by
 * its fill: `new_tags`). Returns how many; sets *usable to the sum of malloc_usable_size(). */
static size_t
record_blocks(const struct entry_rec *e, bool new_tags, size_t *usable)
{
    const struct store_entry *se = rec_entry(e);
    const void *b[8 + 16];
    size_t n = 0;

    if (!(e->r.flags & REC_IN_ENTRY))
        b[n++] = (const struct entry_held *)e - 1;
    b[n++] = se;
    if (se->content_type && !(se->packed & STORE_PACKED_CONTENT_TYPE))
        b[n++] = se->content_type;
    if (se->headers && !(se->packed & STORE_PACKED_HEADERS))
        b[n++] = se->headers;
    if (se->etag && !(se->packed & STORE_PACKED_ETAG))
        b[n++] = se->etag;
    if (se->body && !(se->packed & STORE_PACKED_BODY))
        b[n++] = se->body;
    for (uint32_t i = 0; new_tags && i < e->r.ntags && i < 16; i++)
        b[n++] = e->tags[i].tag;
    *usable = 0;
    for (size_t i = 0; i < n; i++)
        *usable += malloc_usable_size((void *)b[i]);
    return n;
}

/* Whether p[0..n) lies in the block that starts at `block`. */
static bool
within(const void *block, const void *p, size_t n)
{
    const char *b = block, *q = p;

    return q >= b && q + n <= b + malloc_usable_size((void *)block);
}

/*
 * Fills e under key (with tags) into a fresh table and checks that the cache budget was charged
 * what the entry holds: every block it owns (its record, the entry, fields and body, the tag
 * records its fill made) at the allocator's usable size plus the allocator's header word, with
 * at most 15 bytes more per block (a tag record is charged by glibc's rounding, which another
 * allocator may round less). The record's LRU links and tag references are in its block; its
 * bucket slot is charged with the bucket array, which does not grow for one entry. Returns how
 * many blocks; *rec is the record.
 */
static size_t
check_charge(const char *key, const char *const *tags, struct store_entry *e, const char *shape)
{
    struct fixture *f = fixture_new(64u << 20);
    struct conf_req r;
    size_t before = stats(f).cache_bytes, usable, n;

    conf_lookup(&f->c, &r, key, tags);
    if (!e)
        e = conf_entry_for(&f->c, &r, 200, "application/json", "{\"ok\":true}", 11);
    assert_int_equal(conf_fill_req(&f->c, &r, e, HOUR), 0);
    size_t charged = stats(f).cache_bytes - before;
    struct entry_rec *rec = record_of(f, key);
    assert_non_null(rec);
    assert_ptr_equal(rec_entry(rec), e);
    n = record_blocks(rec, true, &usable);
    print_message("%-34s %zu block(s), %zu usable bytes, charged %zu\n", shape, n, usable, charged);
    assert_true(charged >= usable + n * sizeof(size_t));
    assert_true(charged <= usable + n * (sizeof(size_t) + 15));
    store_entry_release(e);
    fixture_free(f);
    return n;
}

/* An entry is charged what it holds (the brief's bound: at least the usable sizes of its
 * blocks), and an answer made as the gateway makes it is one block: entry, record, tag
 * references, key, content type, ETag, header lines and body. */
static void
test_entry_charge_is_what_it_holds(void **state)
{
    static const char hdrs[] = "Cache-Control: max-age=60\r\nLast-Modified: x\r\n";
    const char *tags[] = {"crm:42", "crm:list", "user:7", NULL};
    char body[2048];
    struct fixture *f = fixture_new(1 << 20); /* for its store's record room */
    const char *key = "crm:contacts:42";
    size_t room0 = store_record_room(f->c.s, strlen(key), 0);
    size_t room3 = store_record_room(f->c.s, strlen(key), 3);

    memset(body, 'b', sizeof(body));
    assert_true(room0 >= strlen(key) + sizeof(struct entry_rec));
    assert_int_equal(room3 - room0, 3 * sizeof(struct tag_ref));
    /* 200 bytes, as an SQL or static answer: one block. */
    assert_int_equal(check_charge(key, NULL,
                                  store_entry_make(200, "application/json", NULL, 0,
                                                   "\"2de95de1f966a89b\"", body, 200, room0),
                                  "200 B answer, gateway-made"),
                     1);
    /* 2 KiB with stored fields and three tags: one block for the entry, one per new tag. */
    assert_int_equal(check_charge(key, tags,
                                  store_entry_make(200, "text/html", hdrs, sizeof(hdrs) - 1,
                                                   "W/\"v1\"", body, sizeof(body), room3),
                                  "2 KiB answer, fields, 3 new tags"),
                     1 + 3);
    /* An ETag set after it was made (an answer without one) is a block of its own. */
    struct store_entry *late = store_entry_make(200, "text/plain", NULL, 0, NULL, body, 10, room0);
    late->etag = strdup("\"late\"");
    assert_int_equal(check_charge(key, NULL, late, "ETag set later"), 2);
    /* Room for a shorter key than it is filled under (a Vary answer's secondary key): the
     * record is a block of its own. */
    assert_int_equal(check_charge(key, NULL,
                                  store_entry_make(200, NULL, NULL, 0, NULL, body, 200,
                                                   store_record_room(f->c.s, 3, 0)),
                                  "room too small"),
                     2);
    /* No room at all, every field apart (store_entry_new, as the Redis codec makes them). */
    struct store_entry *apart = store_entry_new(200, strdup("text/plain"), strdup("xyz"), 3);
    apart->headers = strdup(hdrs);
    apart->headers_len = sizeof(hdrs) - 1;
    apart->etag = strdup("\"e\"");
    assert_int_equal(check_charge(key, NULL, apart, "no room, fields apart"), 6);
    fixture_free(f);
}

/* An entry made with room for its record holds, in its one block, the record, its key and its
 * fields: what a lookup returns is that entry, and its pieces lie inside it. */
static void
test_entry_is_one_block(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    const char *tags[] = {"a", "b", NULL};
    struct conf_req r;
    char body[200];

    memset(body, 'z', sizeof(body));
    conf_lookup(&f->c, &r, "page:1", tags);
    struct store_entry *e = store_entry_make(200, "application/json", "X-A: 1\r\n", 8, "\"t\"",
                                             body, sizeof(body), store_record_room(f->c.s, 6, 2));
    assert_int_equal(conf_fill_req(&f->c, &r, e, HOUR), 0);
    struct entry_rec *rec = record_of(f, "page:1");
    assert_non_null(rec);
    assert_true(rec->r.flags & REC_IN_ENTRY);
    assert_true(within(e, rec, entry_size(2, 6)));
    assert_true(within(e, rec_key(&rec->r), 6));
    assert_memory_equal(rec_key(&rec->r), "page:1", 6);
    assert_true(within(e, e->content_type, strlen(e->content_type) + 1));
    assert_true(within(e, e->headers, e->headers_len + 1));
    assert_true(within(e, e->etag, strlen(e->etag) + 1));
    assert_true(within(e, e->body, e->body_len + 1));
    assert_int_equal(rec->r.ntags, 2);
    assert_int_equal(entry_rec_charge(rec), malloc_usable_size(e) + sizeof(size_t));
    store_entry_release(e);
    conf_lookup(&f->c, &r, "page:1", tags);
    assert_int_equal(r.a.state, STORE_HIT);
    assert_ptr_equal(r.a.entry, e); /* the stored entry is the filler's, not a copy */
    assert_memory_equal(r.a.entry->body, body, sizeof(body));
    store_entry_release(r.a.entry);
    fixture_free(f);
}

/* An entry's room holds one record: the same entry filled under a second key gets a record
 * of its own, each key hits, and removing one leaves the other whole. */
static void
test_entry_room_holds_one_record(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    struct conf_req r1, r2;

    conf_lookup(&f->c, &r1, "one", NULL);
    conf_lookup(&f->c, &r2, "two", NULL);
    struct store_entry *e = conf_entry_for(&f->c, &r1, 200, "text/plain", "shared", 6);
    assert_int_equal(conf_fill_req(&f->c, &r1, e, HOUR), 0);
    assert_int_equal(conf_fill_req(&f->c, &r2, e, HOUR), 0);
    store_entry_release(e);
    assert_true(record_of(f, "one")->r.flags & REC_IN_ENTRY);
    assert_false(record_of(f, "two")->r.flags & REC_IN_ENTRY);
    assert_true(conf_hit(&f->c, "one", NULL, "shared"));
    assert_true(conf_hit(&f->c, "two", NULL, "shared"));
    const char *k[] = {"one"};
    size_t kl[] = {3};
    assert_int_equal(conf_delete(&f->c, k, kl, 1), 1);
    assert_true(conf_hit(&f->c, "two", NULL, "shared"));
    k[0] = "two";
    assert_int_equal(conf_delete(&f->c, k, kl, 1), 1);
    assert_int_equal(stats(f).cache_bytes, 0);
    fixture_free(f);
}

/* A fill that is refused (a tag moved since the lookup) leaves the entry's room free: the
 * next fill of the same entry keeps its record there. */
static void
test_refused_fill_frees_room(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    const char *tags[] = {"t", NULL};
    struct conf_req r;

    conf_lookup(&f->c, &r, "k", tags);
    struct store_entry *e = conf_entry_for(&f->c, &r, 200, "text/plain", "v", 1);
    conf_invalidate1(&f->c, "t");
    assert_int_equal(conf_fill_req(&f->c, &r, e, HOUR), -1);
    assert_false(e->packed & STORE_PACKED_ROOM_TAKEN);
    assert_int_equal(stats(f).entries, 0);
    conf_lookup(&f->c, &r, "k", tags);
    assert_int_equal(conf_fill_req(&f->c, &r, e, HOUR), 0);
    assert_true(e->packed & STORE_PACKED_ROOM_TAKEN);
    assert_true(record_of(f, "k")->r.flags & REC_IN_ENTRY);
    store_entry_release(e);
    assert_true(conf_hit(&f->c, "k", tags, "v"));
    fixture_free(f);
}

/* A lookup's reference keeps the whole block, the entry's bytes with it, after the record is
 * gone (deleted, evicted, the table freed); its charge went with the record. */
static void
test_entry_outlives_its_record(void **state)
{
    struct fixture *f = fixture_new(64 * 1024);
    char body[1000], key[32];
    struct conf_req r;

    memset(body, 'q', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    assert_int_equal(conf_put(&f->c, "held", NULL, body, HOUR), 0);
    conf_lookup(&f->c, &r, "held", NULL);
    assert_int_equal(r.a.state, STORE_HIT);
    struct store_entry *got = r.a.entry;
    /* Evicts it: eviction takes the least recently used record of the shard being filled,
     * so it goes once enough new keys have landed in its shard (a few hundred at most). */
    for (int i = 0; i < 20000 && record_of(f, "held"); i++) {
        snprintf(key, sizeof(key), "push:%d", i);
        assert_int_equal(conf_put(&f->c, key, NULL, body, HOUR), 0);
    }
    assert_null(record_of(f, "held"));
    assert_true(stats(f).cache_bytes <= 64 * 1024);
    fixture_free(f);
    assert_int_equal(got->body_len, sizeof(body) - 1);
    assert_memory_equal(got->body, body, sizeof(body) - 1);
    assert_string_equal(got->content_type, "text/plain");
    store_entry_release(got);
}

#ifndef OWN_ALLOCATOR
/* n gateway-made answers of `size` bytes under keys like "shape:123456": what the heap grew
 * by, against what the cache budget was charged. */
static void
heap_per_answer(size_t size, int n)
{
    struct fixture *f = fixture_new(1u << 30);
    char *body = malloc(size), key[32];
    size_t h0 = heap_in_use(), c0 = stats(f).cache_bytes;

    assert_non_null(body);
    memset(body, 'h', size);
    for (int i = 0; i < n; i++) {
        struct conf_req r;
        snprintf(key, sizeof(key), "shape:%06d", i);
        conf_lookup(&f->c, &r, key, NULL);
        struct store_entry *e = conf_entry_for(&f->c, &r, 200, "application/json", body, size);
        assert_int_equal(conf_fill_req(&f->c, &r, e, HOUR), 0);
        store_entry_release(e);
    }
    size_t heap = heap_in_use() - h0, charged = stats(f).cache_bytes - c0;
    double ratio = (double)charged / (double)heap;
    print_message("%5zu-byte answers: heap %zu B/entry, charged %zu B/entry (%.3f)\n", size,
                  heap / (size_t)n, charged / (size_t)n, ratio);
    assert_true(ratio > 0.99 && ratio < 1.01);
    free(body);
    fixture_free(f);
}
#endif

/* For answers of 200 bytes and 2 KiB made as the gateway makes them, the budget is charged
 * what the heap grows by (records, entries, buckets), within 1%. */
static void
test_answer_charges_are_the_heap(void **state)
{
#ifdef OWN_ALLOCATOR
    skip();
#else
    heap_per_answer(200, 50000);
    heap_per_answer(2048, 20000);
#endif
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_eviction),
        cmocka_unit_test(test_budget_lru),
        cmocka_unit_test(test_too_big_or_no_ttl),
        cmocka_unit_test(test_sweep_limits),
        cmocka_unit_test(test_churn_stays_bounded),
        cmocka_unit_test(test_sweep_entries_and_tags),
        cmocka_unit_test(test_tag_outlives_its_entries),
        cmocka_unit_test(test_dropped_tag_still_refuses),
        cmocka_unit_test(test_handles_share_table),
        cmocka_unit_test(test_same_limit_twice),
        cmocka_unit_test(test_many_limits_and_tags),
        cmocka_unit_test(test_clock_backwards),
        cmocka_unit_test(test_threads_limit_exact),
        cmocka_unit_test(test_threads_mixed),
        cmocka_unit_test(test_threads_limit_budget),
        cmocka_unit_test(test_charges_are_the_heap),
        cmocka_unit_test(test_charges_given_back),
        cmocka_unit_test(test_tag_flood_stays_in_budget),
        cmocka_unit_test(test_limit_budget_refuses_not_forgets),
        cmocka_unit_test(test_limit_budget_full_skips_shadow),
        cmocka_unit_test(test_sliding_log_growth_refused),
        cmocka_unit_test(test_lease_unrecorded_when_full),
        cmocka_unit_test(test_list_work_bound),
        cmocka_unit_test(test_threads_list),
        cmocka_unit_test(test_entry_charge_is_what_it_holds),
        cmocka_unit_test(test_entry_is_one_block),
        cmocka_unit_test(test_entry_room_holds_one_record),
        cmocka_unit_test(test_refused_fill_frees_room),
        cmocka_unit_test(test_entry_outlives_its_record),
        cmocka_unit_test(test_answer_charges_are_the_heap),
    };
    int failed = store_conformance_run(&memory_harness);

    failed += store_conformance_list_run(&memory_harness);

    failed += cmocka_run_group_tests_name("store_memory", tests, NULL, NULL);
    return failed;
}
