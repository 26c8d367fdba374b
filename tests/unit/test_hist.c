/* test_hist.c - unit tests of the fixed-bucket histograms (engine/common/hist.c): bucket edges,
 * merging the histograms of several workers, quantile estimates. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "hist.h"

static void
test_bucket_edges(void **state)
{
    (void)state;
    struct hist h;
    memset(&h, 0, sizeof(h));
    hist_add(&h, 0);
    hist_add(&h, 100); /* on the bound: its own bucket */
    hist_add(&h, 101); /* just above: the next one */
    hist_add(&h, 2500000);
    hist_add(&h, 2500001); /* past the last bound: +Inf */
    assert_int_equal(h.counts[0], 2);
    assert_int_equal(h.counts[1], 1);
    assert_int_equal(h.counts[HIST_BUCKETS - 1], 1);
    assert_int_equal(h.counts[HIST_BUCKETS], 1);
    assert_int_equal(h.sum_us, 0 + 100 + 101 + 2500000 + 2500001);
    assert_int_equal(hist_count(&h), 5);
}

static void
test_merge_adds_every_bucket(void **state)
{
    (void)state;
    struct hist w[2], all;
    memset(w, 0, sizeof(w));
    memset(&all, 0, sizeof(all));
    for (int i = 0; i < 10; i++)
        hist_add(&w[0], 300);
    for (int i = 0; i < 5; i++)
        hist_add(&w[1], 7000);
    hist_merge(&all, &w[0]);
    hist_merge(&all, &w[1]);
    assert_int_equal(hist_count(&all), 15);
    assert_int_equal(all.sum_us, 10 * 300 + 5 * 7000);
    assert_int_equal(all.counts[2], 10); /* (250, 500] */
    assert_int_equal(all.counts[6], 5);  /* (5000, 10000] */
}

static void
test_quantiles(void **state)
{
    (void)state;
    struct hist h;
    memset(&h, 0, sizeof(h));
    assert_int_equal(hist_quantile(&h, 0.5), 0);
    for (int i = 0; i < 90; i++)
        hist_add(&h, 400); /* (250, 500] */
    for (int i = 0; i < 10; i++)
        hist_add(&h, 40000); /* (25000, 50000] */
    uint64_t p50 = hist_quantile(&h, 0.5), p99 = hist_quantile(&h, 0.99);
    assert_true(p50 > 250 && p50 <= 500);
    assert_true(p99 > 25000 && p99 <= 50000);
    assert_true(hist_quantile(&h, 1.0) <= 50000);
    struct hist slow;
    memset(&slow, 0, sizeof(slow));
    hist_add(&slow, 9000000);
    assert_int_equal(hist_quantile(&slow, 0.5), 2500000); /* +Inf: its lower bound */
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_edges),
        cmocka_unit_test(test_merge_adds_every_bucket),
        cmocka_unit_test(test_quantiles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
