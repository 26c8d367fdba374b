/* test_store_memory.c - the store conformance suite on the memory store, plus its own tests. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>

#include "store.h"
#include "store_memory.h"
#include "store_conformance.h"

#define T0 1700000000000ull /* test clock start, ms */

struct mem_ctx {
    struct store_memory *m;
    uint64_t now; /* atomic: the table's clock */
    size_t max_bytes;
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

    mc->m = store_memory_new(mc->max_bytes);
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
fixture_new(size_t max_bytes)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->mc.max_bytes = max_bytes;
    f->h = memory_harness;
    f->h.ctx = &f->mc;
    f->c.h = &f->h;
    f->c.s = mem_open(&f->mc);
    return f;
}

static void
fixture_free(struct fixture *f)
{
    mem_close(&f->mc, f->c.s);
    free(f);
}

struct stats {
    size_t entries, limits, tags, bytes;
};

static struct stats
stats(struct fixture *f)
{
    struct stats s;

    store_memory_stats(f->mc.m, &s.entries, &s.limits, &s.tags, &s.bytes);
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
        struct stats s = stats(f);
        assert_true(s.bytes <= 64 * 1024);
        assert_int_equal(s.bytes, s.entries * (8 + 999));
        assert_true(conf_hit(&f->c, key, NULL, body)); /* the newest stays */
    }
    struct stats s = stats(f);
    assert_true(s.entries >= 60 && s.entries <= 64 * 1024 / 1007);
    fixture_free(f);
}

static void
test_budget_lru(void **state)
{
    struct fixture *f = fixture_new(1 << 20);
    char key[32], body[101];
    int touched = 0, untouched = 0, fresh = 0;

    memset(body, 'y', sizeof(body) - 1);
    body[100] = '\0';
    /* 9000 entries of 109 bytes fit in 1 MiB; 4000 more push about 3400 out. */
    for (int i = 0; i < 13000; i++) {
        if (i == 9000)
            for (int j = 0; j < 1000; j++) {
                snprintf(key, sizeof(key), "key:%05d", j);
                assert_true(conf_hit(&f->c, key, NULL, body));
            }
        snprintf(key, sizeof(key), "key:%05d", i);
        assert_int_equal(conf_put(&f->c, key, NULL, body, 600000), 0);
    }
    for (int i = 0; i < 13000; i++) {
        snprintf(key, sizeof(key), "key:%05d", i);
        bool hit = conf_hit(&f->c, key, NULL, NULL);
        if (i < 1000)
            touched += hit;
        else if (i < 9000)
            untouched += hit;
        else
            fresh += hit;
    }
    print_message("lru: %d/1000 recently used, %d/8000 old, %d/4000 new kept\n", touched, untouched,
                  fresh);
    assert_true(stats(f).bytes <= 1 << 20);
    assert_true(touched >= 990);
    assert_true(fresh >= 3900);
    assert_true(untouched <= 5000);
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
    assert_int_equal(stats(f).bytes, 0);
    assert_int_equal(conf_put(&f->c, "k", NULL, "small", 60000), 0);
    assert_int_equal(conf_put(&f->c, "k", NULL, "again", 0), 0);
    assert_false(conf_hit(&f->c, "k", NULL, NULL));
    fixture_free(f);

    f = fixture_new(0); /* caches nothing */
    assert_int_equal(conf_put(&f->c, "k", NULL, "", 60000), 0);
    assert_false(conf_hit(&f->c, "k", NULL, NULL));
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
        struct stats s = stats(f);
        if ((entries == ANY || s.entries == entries) && (limits == ANY || s.limits == limits) &&
            (tags == ANY || s.tags == tags))
            return n;
        for (int i = 0; i < 1000; i++)
            conf_limit(&f->c, r, "busy", 1);
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
    struct stats s = stats(f);
    assert_int_equal(s.entries, 5000);
    assert_int_equal(s.tags, 5001);
    assert_true(s.bytes > 0);
    mem_advance(&f->mc, 50);
    assert_true(churn_until(f, 0, ANY, 0) >= 0);
    assert_int_equal(stats(f).bytes, 0);
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
        limits[i] = (struct store_limit){&rule, lkeys[i], strlen(lkeys[i]), 1, false};
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
        struct store_limit limits[2] = {{&hm->rule, "hot", 3, 1, false},
                                        {&own, okey, strlen(okey), 1, false}};
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
            size_t bytes;
            store_memory_stats(hm->f->mc.m, NULL, NULL, NULL, &bytes);
            if (bytes > hm->f->mc.max_bytes)
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
    assert_true(stats(f).bytes <= 8 * 1024);
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
    struct stats s = stats(f);
    assert_int_equal(s.entries, 0);
    assert_int_equal(s.bytes, 0);
    fixture_free(f);
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
    };
    int failed = store_conformance_run(&memory_harness);

    failed += cmocka_run_group_tests_name("store_memory", tests, NULL, NULL);
    return failed;
}
