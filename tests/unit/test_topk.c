/* test_topk.c - unit tests of the space-saving summary (engine/common/topk.c): exact when the keys
 * fit, the heavy keys found with bounded over-estimates when they do not, and the merge of the
 * summaries of several workers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "topk.h"

static void
add_str(struct topk *t, const char *k, uint64_t w, uint64_t extra)
{
    topk_add(t, k, strlen(k), w, extra, w, NULL);
}

static void
test_exact_when_the_keys_fit(void **state)
{
    (void)state;
    struct topk t;
    topk_init(&t, 8);
    add_str(&t, "alice", 5, 1);
    add_str(&t, "bob", 2, 0);
    add_str(&t, "alice", 3, 2);
    add_str(&t, "carol", 7, 7);
    const struct topk_item *top[8];
    assert_int_equal(topk_top(&t, top, 8), 3);
    assert_memory_equal(top[0]->key, "alice", 5);
    assert_int_equal(top[0]->count, 8);
    assert_int_equal(top[0]->extra, 3);
    assert_int_equal(top[0]->error, 0);
    assert_memory_equal(top[1]->key, "carol", 5);
    assert_int_equal(top[2]->count, 2);
    assert_int_equal(t.total, 17);
    assert_int_equal(topk_top(&t, top, 1), 1);
    topk_clear(&t);
    assert_int_equal(topk_top(&t, top, 8), 0);
    add_str(&t, "dave", 1, 0);
    assert_int_equal(topk_top(&t, top, 8), 1);
    topk_free(&t);
}

/* A skewed stream over 5,000 keys into 32 slots: the truly heavy keys are all found, each
 * count within [true, true + error] and error <= total / cap. */
static void
test_heavy_keys_found_with_bounded_error(void **state)
{
    (void)state;
    enum { KEYS = 5000, CAP = 32 };
    static uint64_t truth[KEYS];
    memset(truth, 0, sizeof(truth));
    struct topk t;
    topk_init(&t, CAP);
    srand(3);
    uint64_t total = 0;
    for (int i = 0; i < 200000; i++) {
        int k = rand() % 10 < 6 ? rand() % 5 : rand() % KEYS; /* 60% on keys 0..4 */
        char key[16];
        int n = snprintf(key, sizeof(key), "u%d", k);
        topk_add(&t, key, (size_t)n, 1, 0, 0, NULL);
        truth[k]++;
        total++;
    }
    assert_int_equal(t.total, total);
    const struct topk_item *top[CAP];
    size_t n = topk_top(&t, top, CAP);
    assert_int_equal(n, CAP);
    for (int k = 0; k < 5; k++) { /* the five heavy keys come first */
        char key[16];
        int len = snprintf(key, sizeof(key), "u%d", k);
        int found = 0;
        for (size_t i = 0; i < 5; i++)
            found |= top[i]->keylen == (size_t)len && memcmp(top[i]->key, key, (size_t)len) == 0;
        assert_true(found);
    }
    for (size_t i = 0; i < n; i++) {
        char num[16];
        snprintf(num, sizeof(num), "%.*s", (int)top[i]->keylen - 1, top[i]->key + 1);
        int k = atoi(num);
        assert_true(top[i]->count >= truth[k]);
        assert_true(top[i]->count - top[i]->error <= truth[k]);
        assert_true(top[i]->error <= total / CAP);
        if (i)
            assert_true(top[i - 1]->count >= top[i]->count);
    }
    topk_free(&t);
}

/* Each worker summarises its own traffic; merged, the global heaviest key is first. */
static void
test_merge_of_workers(void **state)
{
    (void)state;
    struct topk w[3], all;
    for (int i = 0; i < 3; i++)
        topk_init(&w[i], 4);
    /* "x" is second on every worker but first in all; each worker has its own local leader. */
    for (int i = 0; i < 3; i++) {
        char lead[8];
        snprintf(lead, sizeof(lead), "lead%d", i);
        add_str(&w[i], lead, 100, 10);
        add_str(&w[i], "x", 60, 6);
        for (int j = 0; j < 20; j++) {
            char noise[16];
            snprintf(noise, sizeof(noise), "n%d-%d", i, j);
            add_str(&w[i], noise, 1, 0);
        }
    }
    topk_init(&all, 8);
    for (int i = 0; i < 3; i++)
        topk_merge(&all, &w[i]);
    const struct topk_item *top[8];
    assert_true(topk_top(&all, top, 8) >= 4);
    assert_memory_equal(top[0]->key, "x", 1);
    assert_int_equal(top[0]->keylen, 1);
    assert_int_equal(top[0]->count - top[0]->error, 180); /* its true count at least */
    assert_int_equal(top[0]->extra, 18);
    assert_int_equal(top[0]->last, 60); /* each worker's last value was 60: the smallest */
    assert_int_equal(all.total, 3 * (100 + 60 + 20));
    for (int i = 0; i < 3; i++)
        topk_free(&w[i]);
    topk_free(&all);
}

/* Keys longer than TOPK_KEY_MAX are cut, and counted as the cut key. */
static void
test_long_keys_are_cut(void **state)
{
    (void)state;
    char a[200], b[200];
    memset(a, 'k', sizeof(a));
    memcpy(b, a, sizeof(b));
    b[199] = 'z'; /* differs past the kept part */
    struct topk t;
    topk_init(&t, 4);
    topk_add(&t, a, sizeof(a), 1, 0, 0, NULL);
    topk_add(&t, b, sizeof(b), 1, 0, 0, NULL);
    const struct topk_item *top[4];
    assert_int_equal(topk_top(&t, top, 4), 1);
    assert_int_equal(top[0]->keylen, TOPK_KEY_MAX);
    assert_int_equal(top[0]->count, 2);
    topk_free(&t);
}

/* A key carries the last note it was given (its tier as the caller's plan changes): a note
 * longer, shorter or other than the one it has replaces it; none leaves it; a long one is cut
 * to what a note holds, and one that differs only past that is the same. */
static void
test_a_key_carries_its_last_note(void **state)
{
    (void)state;
    struct topk t;
    topk_init(&t, 4);
    static const struct {
        const char *given, *kept;
    } steps[] = {
        {"free", "free"},
        {"pro", "pro"},
        {"professional", "professional"},
        {"pro", "pro"},
        {NULL, "pro"},
        {"", "pro"},
        {"prO", "prO"},
        {"enterprise-with-a-name-longer-than-a-note-holds", "enterprise-with-a-name-longer-t"},
        {"enterprise-with-a-name-longer-than-a-note-holds", "enterprise-with-a-name-longer-t"},
        {"enterprise-with-a-name-longer-tHAN", "enterprise-with-a-name-longer-t"},
        {"enterprise", "enterprise"},
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        topk_add(&t, "u", 1, 1, 0, 0, steps[i].given);
        assert_int_equal(t.n, 1);
        assert_string_equal(t.items[0].note, steps[i].kept);
    }
    topk_add(&t, "v", 1, 1, 0, 0, NULL); /* a new key without one has none */
    assert_int_equal(t.n, 2);
    assert_string_equal(t.items[1].note, "");
    topk_free(&t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_when_the_keys_fit),
        cmocka_unit_test(test_heavy_keys_found_with_bounded_error),
        cmocka_unit_test(test_merge_of_workers),
        cmocka_unit_test(test_long_keys_are_cut),
        cmocka_unit_test(test_a_key_carries_its_last_note),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
