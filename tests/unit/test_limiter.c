/* test_limiter.c - cmocka tests of the rate-limit math in engine/limiter.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "limiter.h"

static struct limiter_rule
rule(enum limiter_algo algo, uint64_t limit, uint64_t window_ms, uint64_t burst)
{
    return (struct limiter_rule){
        .algo = algo, .limit = limit, .window_ms = window_ms, .burst = burst};
}

/* Checks and, when admitted, commits: one request as the store would run it. */
static struct limiter_result
hit(const struct limiter_rule *r, struct limiter_state *st, uint64_t now, uint32_t cost)
{
    struct limiter_result res;

    limiter_check(r, st, now, cost, &res);
    if (res.allowed)
        limiter_commit(r, st, now, cost);
    return res;
}

static struct limiter_result
peek(const struct limiter_rule *r, struct limiter_state *st, uint64_t now, uint32_t cost)
{
    struct limiter_result res;

    limiter_check(r, st, now, cost, &res);
    return res;
}

#define EXPECT(res, allowed_, remaining_, reset_, retry_)                                          \
    do {                                                                                           \
        struct limiter_result r_ = (res);                                                          \
        assert_int_equal(r_.allowed, (allowed_));                                                  \
        assert_int_equal(r_.remaining, (remaining_));                                              \
        assert_int_equal(r_.reset_ms, (reset_));                                                   \
        assert_int_equal(r_.retry_after_ms, (retry_));                                             \
    } while (0)

/* ---- names -------------------------------------------------------------- */

static void
test_algo_names(void **state)
{
    static const struct {
        const char *name;
        enum limiter_algo algo;
    } names[] = {
        {"sliding_window", LIMITER_SLIDING_WINDOW},
        {"sliding_log", LIMITER_SLIDING_LOG},
        {"token_bucket", LIMITER_TOKEN_BUCKET},
        {"fixed_window", LIMITER_FIXED_WINDOW},
    };
    enum limiter_algo a;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        assert_int_equal(limiter_algo_parse(names[i].name, &a), 0);
        assert_int_equal(a, names[i].algo);
        assert_string_equal(limiter_algo_name(names[i].algo), names[i].name);
    }
    a = LIMITER_FIXED_WINDOW;
    assert_int_equal(limiter_algo_parse("sliding", &a), -1);
    assert_int_equal(limiter_algo_parse("", &a), -1);
    assert_int_equal(limiter_algo_parse("Sliding_Window", &a), -1);
    assert_int_equal(limiter_algo_parse("sliding_window ", &a), -1);
    assert_int_equal(a, LIMITER_FIXED_WINDOW); /* untouched on failure */
    assert_string_equal(limiter_algo_name((enum limiter_algo)42), "unknown");
}

/* ---- sliding window ----------------------------------------------------- */

static void
test_sw_up_to_limit(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_WINDOW, 10, 1000, 0);
    struct limiter_state st = {0};
    struct limiter_result res;

    for (uint64_t i = 0; i < 10; i++) {
        res = hit(&r, &st, 10000, 1);
        assert_int_equal(res.limit, 10);
        EXPECT(res, true, 9 - i, 1000, 0);
    }
    /* Denied: this window's 10 decay through the next one; prev=10 weighs
     * floor(10 * (1000 - e) / 1000), which is 9 from e = 1 on. */
    EXPECT(hit(&r, &st, 10000, 1), false, 0, 1000, 1001);
    EXPECT(hit(&r, &st, 10400, 1), false, 0, 600, 601);
    EXPECT(hit(&r, &st, 10999, 1), false, 0, 1, 2);
    EXPECT(hit(&r, &st, 11000, 1), false, 0, 1000, 1); /* estimate 10 + 0 */
    EXPECT(hit(&r, &st, 11001, 1), true, 0, 999, 0);   /* estimate 9 + 0 */
    EXPECT(hit(&r, &st, 11001, 1), false, 0, 999, 100);
}

static void
test_sw_weighting(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_WINDOW, 10, 1000, 0);
    struct limiter_state st = {0};

    /* 8 in [10000, 11000), then 250 ms into the next window prev weighs
     * floor(8 * 750 / 1000) = 6. */
    assert_true(hit(&r, &st, 10500, 8).allowed);
    EXPECT(peek(&r, &st, 11250, 1), true, 3, 750, 0);
    EXPECT(peek(&r, &st, 11250, 4), true, 0, 750, 0);
    /* cost 5 fits once floor(8 * r / 1000) <= 5, r being the ms left in the window: r <= 749 */
    EXPECT(peek(&r, &st, 11250, 5), false, 4, 750, 1);
    for (int i = 0; i < 4; i++)
        assert_true(hit(&r, &st, 11250, 1).allowed);
    /* estimate 6 + 4 = 10. One more fits when floor(8 * r / 1000) <= 5 again. */
    EXPECT(peek(&r, &st, 11250, 1), false, 0, 750, 1);
    EXPECT(peek(&r, &st, 11251, 1), true, 0, 749, 0);
    /* Two more fit when floor(8r/1000) <= 4: r <= 624. */
    EXPECT(peek(&r, &st, 11251, 2), false, 1, 749, 125);
    EXPECT(peek(&r, &st, 11375, 2), false, 1, 625, 1);
    EXPECT(peek(&r, &st, 11376, 2), true, 0, 624, 0);
    /* Weight at the very start of a window is the whole previous count. */
    EXPECT(peek(&r, &st, 12000, 1), true, 5, 1000, 0); /* prev = 4 */
    /* Two windows later nothing is left. */
    EXPECT(peek(&r, &st, 13000, 1), true, 9, 1000, 0);
}

static void
test_sw_exact_estimates(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_WINDOW, 100, 60000, 0);
    struct limiter_state st = {0};

    /* 60 in the window [0, 60000), 7 in [60000, 120000). */
    assert_true(hit(&r, &st, 59999, 60).allowed);
    assert_true(hit(&r, &st, 60000, 7).allowed);
    /* at 60000 + 15000: floor(60 * 45000 / 60000) = 45, + 7 = 52 */
    EXPECT(peek(&r, &st, 75000, 1), true, 47, 45000, 0);
    /* at 60000 + 59999: floor(60 * 1 / 60000) = 0, + 7 */
    EXPECT(peek(&r, &st, 119999, 1), true, 92, 1, 0);
    /* at 60000 + 20001: floor(60 * 39999 / 60000) = 39 (39.999), + 7 = 46 */
    EXPECT(peek(&r, &st, 80001, 1), true, 53, 39999, 0);
    /* cost 48 needs floor(60r/60000) <= 45: r < 46000, so 14001 ms in */
    EXPECT(peek(&r, &st, 60000, 48), false, 33, 60000, 14001);
    EXPECT(peek(&r, &st, 74000, 48), false, 47, 46000, 1); /* 46 + 7 */
    EXPECT(peek(&r, &st, 74001, 48), true, 0, 45999, 0);
}

static void
test_sw_cost(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_WINDOW, 5, 1000, 0);
    struct limiter_state st = {0};

    EXPECT(hit(&r, &st, 0, 3), true, 2, 1000, 0);
    /* Fits in the next window once floor(3 * r / 1000) <= 2: r <= 999, 1 ms into it. */
    EXPECT(hit(&r, &st, 100, 3), false, 2, 900, 901);
    EXPECT(hit(&r, &st, 100, 2), true, 0, 900, 0);
    EXPECT(hit(&r, &st, 100, 0), true, 0, 900, 0);     /* cost 0 is a peek that always fits */
    EXPECT(hit(&r, &st, 100, 6), false, 0, 900, 1000); /* more than the limit */
    EXPECT(hit(&r, &st, 100, UINT32_MAX), false, 0, 900, 1000);
    EXPECT(peek(&r, &st, 5000, 6), false, 5, 1000, 1000); /* never fits, even when empty */
    EXPECT(peek(&r, &st, 5000, 5), true, 0, 1000, 0);
}

static void
test_sw_boundaries(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_WINDOW, 1, 1000, 0);
    struct limiter_state st = {0};

    /* Last ms of a window, then the first ms of the next: the previous count
     * has full weight at e = 0, and floor(1 * 999 / 1000) = 0 at e = 1. */
    EXPECT(hit(&r, &st, 1999, 1), true, 0, 1, 0);
    EXPECT(hit(&r, &st, 2000, 1), false, 0, 1000, 1);
    EXPECT(hit(&r, &st, 2001, 1), true, 0, 999, 0);
    EXPECT(hit(&r, &st, 2999, 1), false, 0, 1, 2);
    EXPECT(hit(&r, &st, 3000, 1), false, 0, 1000, 1);
    EXPECT(hit(&r, &st, 3001, 1), true, 0, 999, 0);
    /* A window with nothing in it, then an empty previous one. */
    EXPECT(hit(&r, &st, 5000, 1), true, 0, 1000, 0);
}

static void
test_sw_rollover_and_expiry(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_WINDOW, 4, 1000, 0);
    struct limiter_state st = {0};

    assert_true(hit(&r, &st, 7300, 4).allowed);
    assert_int_equal(limiter_expiry(&r, &st), 9000);
    EXPECT(peek(&r, &st, 8000, 1), false, 0, 1000, 1); /* prev 4 at full weight */
    EXPECT(peek(&r, &st, 8500, 1), true, 1, 500, 0);   /* floor(4 * 500 / 1000) = 2 */
    assert_true(hit(&r, &st, 8500, 2).allowed);        /* 2 + 2 = 4 */
    assert_int_equal(limiter_expiry(&r, &st), 10000);
    EXPECT(peek(&r, &st, 9000, 1), true, 1, 1000, 0);  /* prev 2 at full weight */
    EXPECT(peek(&r, &st, 9000, 3), false, 2, 1000, 1); /* needs floor(2 * r / 1000) <= 1 */
    EXPECT(peek(&r, &st, 10000, 4), true, 0, 1000, 0);
}

static void
test_sw_clock_backwards(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_WINDOW, 2, 1000, 0);
    struct limiter_state st = {0};

    assert_true(hit(&r, &st, 5500, 1).allowed);
    /* Earlier times act as 5500: no time passed, nothing reset. */
    EXPECT(peek(&r, &st, 3000, 1), true, 0, 500, 0);
    EXPECT(peek(&r, &st, 0, 2), false, 1, 500, 501);
    assert_true(hit(&r, &st, 4000, 1).allowed);
    EXPECT(peek(&r, &st, 4000, 1), false, 0, 500, 501);
    assert_int_equal(st.a, 5500);
    EXPECT(peek(&r, &st, 6501, 1), true, 1, 499, 0); /* floor(2 * 499 / 1000) = 0 */
}

/* ---- fixed window ------------------------------------------------------- */

static void
test_fw_basic(void **state)
{
    struct limiter_rule r = rule(LIMITER_FIXED_WINDOW, 3, 1000, 0);
    struct limiter_state st = {0};

    EXPECT(hit(&r, &st, 5500, 1), true, 2, 500, 0);
    EXPECT(hit(&r, &st, 5600, 1), true, 1, 400, 0);
    EXPECT(hit(&r, &st, 5700, 1), true, 0, 300, 0);
    EXPECT(hit(&r, &st, 5700, 1), false, 0, 300, 300);
    assert_int_equal(limiter_expiry(&r, &st), 6000);
    EXPECT(hit(&r, &st, 5999, 1), false, 0, 1, 1);
    EXPECT(hit(&r, &st, 6000, 1), true, 2, 1000, 0);
    EXPECT(hit(&r, &st, 6000, 3), false, 2, 1000, 1000);
    EXPECT(hit(&r, &st, 6000, 2), true, 0, 1000, 0);
    EXPECT(hit(&r, &st, 6000, 4), false, 0, 1000, 1000); /* over the limit: a whole window */
    EXPECT(hit(&r, &st, 9000, 4), false, 3, 1000, 1000);
    EXPECT(hit(&r, &st, 9000, 3), true, 0, 1000, 0);
}

static void
test_fw_clock_backwards(void **state)
{
    struct limiter_rule r = rule(LIMITER_FIXED_WINDOW, 1, 1000, 0);
    struct limiter_state st = {0};

    assert_true(hit(&r, &st, 5999, 1).allowed);
    /* 4500 is another window, but a step back means no time passed. */
    EXPECT(peek(&r, &st, 4500, 1), false, 0, 1, 1);
    assert_false(hit(&r, &st, 4500, 1).allowed);
    EXPECT(peek(&r, &st, 6000, 1), true, 0, 1000, 0);
}

/* ---- sliding log -------------------------------------------------------- */

static void
test_sl_basic(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_LOG, 3, 1000, 0);
    struct limiter_state st = {0};

    EXPECT(hit(&r, &st, 100, 1), true, 2, 1000, 0);
    EXPECT(hit(&r, &st, 400, 1), true, 1, 1000, 0);
    EXPECT(hit(&r, &st, 700, 1), true, 0, 1000, 0);
    /* Denied until the entry at 100 leaves at 1100; full again at 1700. */
    EXPECT(hit(&r, &st, 900, 1), false, 0, 800, 200);
    EXPECT(hit(&r, &st, 1099, 1), false, 0, 601, 1);
    assert_int_equal(limiter_expiry(&r, &st), 1700);
    EXPECT(hit(&r, &st, 1100, 1), true, 0, 1000, 0);
    EXPECT(peek(&r, &st, 1100, 2), false, 0, 1000, 600); /* the entries at 400 and 700 */
    EXPECT(peek(&r, &st, 1400, 2), false, 1, 700, 300);
    EXPECT(peek(&r, &st, 1700, 2), true, 0, 1000, 0);
    EXPECT(peek(&r, &st, 2100, 0), true, 3, 0, 0); /* empty: fully restored already */
    limiter_state_clear(&st);
}

static void
test_sl_exact(void **state)
{
    struct limiter_rule sl = rule(LIMITER_SLIDING_LOG, 10, 1000, 0);
    struct limiter_rule sw = rule(LIMITER_SLIDING_WINDOW, 10, 1000, 0);
    struct limiter_state a = {0}, b = {0};

    /* 10 at the last ms of a window: 500 ms later the log still holds all
     * ten, where the weighted estimate has let half of them go. */
    assert_true(hit(&sl, &a, 999, 10).allowed);
    assert_true(hit(&sw, &b, 999, 10).allowed);
    EXPECT(peek(&sl, &a, 1500, 1), false, 0, 499, 499);
    assert_true(peek(&sw, &b, 1500, 1).allowed);
    EXPECT(peek(&sl, &a, 1998, 1), false, 0, 1, 1);
    EXPECT(peek(&sl, &a, 1999, 10), true, 0, 1000, 0);
    limiter_state_clear(&a);
    limiter_state_clear(&b);
}

static void
test_sl_cost_entries(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_LOG, 5, 1000, 0);
    struct limiter_state st = {0};

    EXPECT(hit(&r, &st, 0, 2), true, 3, 1000, 0); /* one entry of 2 */
    EXPECT(hit(&r, &st, 10, 1), true, 2, 1000, 0);
    EXPECT(hit(&r, &st, 10, 1), true, 1, 1000, 0); /* same ms: merged */
    assert_int_equal(st.a, 4);
    /* cost 3 needs 2 to leave: the entry at 0 frees exactly 2 */
    EXPECT(hit(&r, &st, 20, 3), false, 1, 990, 980);
    /* cost 4 needs 3: the entry at 0 and then the one at 10 */
    EXPECT(hit(&r, &st, 20, 4), false, 1, 990, 990);
    EXPECT(hit(&r, &st, 20, 6), false, 1, 990, 1000); /* over the limit */
    EXPECT(hit(&r, &st, 1000, 3), true, 0, 1000, 0);  /* entry at 0 left */
    assert_int_equal(st.a, 5);
    EXPECT(hit(&r, &st, 1010, 1), true, 1, 1000, 0); /* the entry at 10 (2) left */
    limiter_state_clear(&st);
    assert_null(st.log);
}

static void
test_sl_many_entries(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_LOG, 1000, 10000, 0);
    struct limiter_state st = {0};

    /* One request per 10 ms fills the log with 1000 entries; the ring
     * grows and, once they leave, shrinks and is freed. */
    for (uint64_t t = 0; t < 10000; t += 10)
        assert_true(hit(&r, &st, t, 1).allowed);
    EXPECT(peek(&r, &st, 9999, 1), false, 0, 9991, 1);
    for (uint64_t t = 10000; t < 15000; t += 10)
        EXPECT(hit(&r, &st, t, 1), true, 0, 10000, 0);
    EXPECT(peek(&r, &st, 24989, 1), true, 998, 10000, 0); /* only 14990 is left */
    EXPECT(peek(&r, &st, 25000, 0), true, 1000, 0, 0);
    assert_null(st.log);
    assert_int_equal(st.a, 0);
    limiter_state_clear(&st);
}

static void
test_sl_clock_backwards(void **state)
{
    struct limiter_rule r = rule(LIMITER_SLIDING_LOG, 2, 1000, 0);
    struct limiter_state st = {0};

    assert_true(hit(&r, &st, 5000, 1).allowed);
    EXPECT(peek(&r, &st, 4000, 1), true, 0, 1000, 0);
    assert_true(hit(&r, &st, 4000, 1).allowed); /* recorded at 5000 */
    EXPECT(peek(&r, &st, 3000, 1), false, 0, 1000, 1000);
    EXPECT(peek(&r, &st, 5999, 1), false, 0, 1, 1);
    EXPECT(peek(&r, &st, 6000, 2), true, 0, 1000, 0);
    limiter_state_clear(&st);
}

/* ---- token bucket ------------------------------------------------------- */

static void
test_tb_hourly_exact(void **state)
{
    /* 100/h: one request every 36 s, exactly. */
    struct limiter_rule r = rule(LIMITER_TOKEN_BUCKET, 100, 3600000, 0);
    struct limiter_state st = {0};
    uint64_t t0 = 1700000000000ull;

    for (uint64_t i = 0; i < 100; i++)
        EXPECT(hit(&r, &st, t0, 1), true, 99 - i, (i + 1) * 36000, 0);
    EXPECT(hit(&r, &st, t0, 1), false, 0, 3600000, 36000);
    EXPECT(hit(&r, &st, t0 + 35999, 1), false, 0, 3600000 - 35999, 1);
    EXPECT(hit(&r, &st, t0 + 36000, 1), true, 0, 3600000, 0);
    EXPECT(hit(&r, &st, t0 + 36000, 1), false, 0, 3600000, 36000);
    assert_int_equal(limiter_expiry(&r, &st), t0 + 36000 + 3600000);
    /* After a quiet hour the bucket is full again. */
    EXPECT(peek(&r, &st, t0 + 36000 + 3600000, 1), true, 99, 36000, 0);
}

static void
test_tb_burst_and_refill(void **state)
{
    /* 10/s (one per 100 ms) with room for 5 at once. */
    struct limiter_rule r = rule(LIMITER_TOKEN_BUCKET, 10, 1000, 5);
    struct limiter_state st = {0};

    for (uint64_t i = 0; i < 5; i++)
        EXPECT(hit(&r, &st, 1000, 1), true, 4 - i, (i + 1) * 100, 0);
    EXPECT(hit(&r, &st, 1000, 1), false, 0, 500, 100);
    /* 250 ms later: 2.5 intervals refilled, so 2 fit and the third in 50 ms. */
    EXPECT(hit(&r, &st, 1250, 1), true, 1, 350, 0);
    EXPECT(hit(&r, &st, 1250, 1), true, 0, 450, 0);
    EXPECT(hit(&r, &st, 1250, 1), false, 0, 450, 50);
    EXPECT(hit(&r, &st, 1250, 2), false, 0, 450, 150);
    EXPECT(hit(&r, &st, 1250, 6), false, 0, 450, 1000); /* more than the burst */
    EXPECT(hit(&r, &st, 1300, 1), true, 0, 500, 0);
    assert_int_equal(limiter_expiry(&r, &st), 1800);
    EXPECT(peek(&r, &st, 1800, 5), true, 0, 500, 0);
    EXPECT(peek(&r, &st, 1800, 0), true, 5, 0, 0);
    /* The rate is limit/window whatever the burst: 10 more over the next second. */
    int admitted = 0;
    for (uint64_t t = 1800; t < 2800; t++)
        while (hit(&r, &st, t, 1).allowed)
            admitted++;
    assert_int_equal(admitted, 5 + 10 - 1); /* the last refill lands at 2800 */
}

static void
test_tb_burst_one_and_odd_rate(void **state)
{
    /* 3/s: 333.33 ms apart; time is scaled so nothing is lost to rounding. */
    struct limiter_rule r = rule(LIMITER_TOKEN_BUCKET, 3, 1000, 1);
    struct limiter_state st = {0};

    EXPECT(hit(&r, &st, 0, 1), true, 0, 334, 0);
    EXPECT(hit(&r, &st, 0, 1), false, 0, 334, 334);
    EXPECT(hit(&r, &st, 333, 1), false, 0, 1, 1);
    EXPECT(hit(&r, &st, 334, 1), true, 0, 334, 0); /* TAT 667.33 */
    assert_int_equal(limiter_expiry(&r, &st), 668);
    EXPECT(hit(&r, &st, 667, 1), false, 0, 1, 1);
    assert_true(hit(&r, &st, 668, 1).allowed);
    /* A client asking every ms, bucket of 3: by time t it has had exactly
     * 3 + floor(3 t / 1000), without drift from 1000/3 not being an integer. */
    struct limiter_rule r2 = rule(LIMITER_TOKEN_BUCKET, 3, 1000, 3);
    struct limiter_state st2 = {0};
    uint64_t admitted = 0;
    for (uint64_t t = 0; t <= 200000; t++) {
        while (hit(&r2, &st2, t, 1).allowed)
            admitted++;
        assert_int_equal(admitted, 3 + 3 * t / 1000);
    }
}

static void
test_tb_clock_backwards(void **state)
{
    struct limiter_rule r = rule(LIMITER_TOKEN_BUCKET, 1, 1000, 0);
    struct limiter_state st = {0};

    assert_true(hit(&r, &st, 10000, 1).allowed);
    EXPECT(peek(&r, &st, 10500, 1), false, 0, 500, 500);
    /* A step back is no time passing: 1000 ms to wait, not 2000. */
    EXPECT(peek(&r, &st, 9000, 1), false, 0, 1000, 1000);
    assert_false(hit(&r, &st, 9000, 1).allowed);
    EXPECT(peek(&r, &st, 11000, 1), true, 0, 1000, 0);
}

/* ---- all algorithms ----------------------------------------------------- */

static const enum limiter_algo all_algos[] = {LIMITER_SLIDING_WINDOW, LIMITER_SLIDING_LOG,
                                              LIMITER_TOKEN_BUCKET, LIMITER_FIXED_WINDOW};

static void
test_all_up_to_limit(void **state)
{
    for (size_t i = 0; i < 4; i++) {
        struct limiter_rule r = rule(all_algos[i], 7, 60000, 0);
        struct limiter_state st = {0};
        for (uint64_t n = 0; n < 7; n++) {
            struct limiter_result res = hit(&r, &st, 120000, 1);
            assert_true(res.allowed);
            assert_int_equal(res.remaining, 6 - n);
            assert_int_equal(res.retry_after_ms, 0);
        }
        struct limiter_result res = hit(&r, &st, 120000, 1);
        assert_false(res.allowed);
        assert_int_equal(res.remaining, 0);
        assert_true(res.retry_after_ms > 0);
        res = hit(&r, &st, 120000, 8);
        assert_false(res.allowed);
        assert_int_equal(res.retry_after_ms, 60000);
        /* Empty again at its expiry. */
        uint64_t exp = limiter_expiry(&r, &st);
        assert_true(exp > 120000);
        res = peek(&r, &st, exp, 7);
        assert_true(res.allowed);
        limiter_state_clear(&st);
        assert_null(st.log);
        assert_int_equal(st.a + st.b + st.c, 0);
    }
}

static void
test_all_zero_state_expiry(void **state)
{
    /* A zeroed state has nothing to keep. */
    for (size_t i = 0; i < 4; i++) {
        struct limiter_rule r = rule(all_algos[i], 7, 1000, 0);
        struct limiter_state st = {0};
        assert_true(limiter_expiry(&r, &st) <= 2000);
    }
}

static uint64_t
xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/*
 * Random traffic against every algorithm, checking at each denial that
 * retry_after_ms is the smallest wait that admits the same cost, that
 * `remaining` is exactly how many cost-1 requests still fit, and that
 * reset_ms is where the quota is full (buckets, logs) or the window ends.
 */
static void
test_all_properties(void **state)
{
    static const uint64_t limits[] = {1, 3, 10, 97};
    static const uint64_t windows[] = {1, 7, 1000, 3600};
    uint64_t seed = 0x9e3779b97f4a7c15ull;

    for (size_t ai = 0; ai < 4; ai++) {
        for (size_t li = 0; li < 4; li++) {
            for (size_t wi = 0; wi < 4; wi++) {
                uint64_t limit = limits[li], w = windows[wi];
                uint64_t burst = all_algos[ai] == LIMITER_TOKEN_BUCKET && li == 2 ? 4 : 0;
                uint64_t cap = burst ? burst : limit;
                struct limiter_rule r = rule(all_algos[ai], limit, w, burst);
                struct limiter_state st = {0};
                uint64_t t = 1000000 + xorshift(&seed) % 5000;

                for (int step = 0; step < 3000; step++) {
                    uint32_t cost = 1 + (uint32_t)(xorshift(&seed) % (cap + 1));
                    struct limiter_result res;
                    limiter_check(&r, &st, t, cost, &res);
                    if (res.allowed) {
                        assert_int_equal(res.retry_after_ms, 0);
                        limiter_commit(&r, &st, t, cost);
                        uint64_t rem = res.remaining;
                        if (rem > 0)
                            assert_true(peek(&r, &st, t, (uint32_t)rem).allowed);
                        assert_false(peek(&r, &st, t, (uint32_t)rem + 1).allowed);
                    } else {
                        uint64_t ra = res.retry_after_ms;
                        assert_true(ra > 0);
                        if (cost > cap) {
                            assert_int_equal(ra, w);
                        } else {
                            assert_true(ra <= 2 * w);
                            assert_false(peek(&r, &st, t + ra - 1, cost).allowed);
                            assert_true(peek(&r, &st, t + ra, cost).allowed);
                            t += ra;
                        }
                    }
                    /* reset_ms */
                    limiter_check(&r, &st, t, 0, &res);
                    if (all_algos[ai] == LIMITER_TOKEN_BUCKET ||
                        (all_algos[ai] == LIMITER_SLIDING_LOG && xorshift(&seed) % 16 == 0)) {
                        if (res.reset_ms > 0)
                            assert_true(peek(&r, &st, t + res.reset_ms - 1, 0).remaining < cap);
                        assert_int_equal(peek(&r, &st, t + res.reset_ms, 0).remaining, cap);
                        /* A sliding log's check drops what left the window by then:
                         * carry on from there rather than from an earlier time. */
                        if (all_algos[ai] == LIMITER_SLIDING_LOG)
                            t += res.reset_ms;
                    } else if (all_algos[ai] != LIMITER_SLIDING_LOG) {
                        assert_true(res.reset_ms >= 1 && res.reset_ms <= w);
                        assert_int_equal((t + res.reset_ms) % w, 0);
                    }
                    /* expiry: empty from then on */
                    uint64_t exp = limiter_expiry(&r, &st);
                    if (xorshift(&seed) % 64 == 0 && exp > t) {
                        t = exp;
                        assert_int_equal(peek(&r, &st, t, 0).remaining, cap);
                    }
                    t += xorshift(&seed) % (w / 2 + 2);
                }
                limiter_state_clear(&st);
            }
        }
    }
}

static void
test_large_values(void **state)
{
    /* Counts and windows whose products pass 2^64. */
    struct limiter_rule sw = rule(LIMITER_SLIDING_WINDOW, 4000000000ull, 86400000ull * 365, 0);
    struct limiter_rule tb = rule(LIMITER_TOKEN_BUCKET, 4000000000ull, 86400000ull * 365, 0);
    struct limiter_state a = {0}, b = {0};
    uint64_t t = 1700000000000ull; /* in the window [53 w, 54 w) */
    uint32_t cost = UINT32_MAX / 4 * 3;

    EXPECT(hit(&sw, &a, t, cost), true, 778774531, 1702944000000ull - t, 0);
    /* Half way through the next window: floor(3221225469 / 2) */
    EXPECT(peek(&sw, &a, 1718712000000ull, 1), true, 2389387265ull, 15768000000ull, 0);

    EXPECT(hit(&tb, &b, t, cost), true, 778774531, 25396141598ull, 0);
    EXPECT(hit(&tb, &b, t, cost), false, 778774531, 25396141598ull, 19256283196ull);
    assert_true(peek(&tb, &b, t + 19256283196ull, cost).allowed);
    assert_false(peek(&tb, &b, t + 19256283195ull, cost).allowed);
}

/*
 * limiter_commit_bytes() foretells what a commit leaves the state owning: on random traffic of
 * sliding logs (growing, shrinking, emptied, the clock stepping back) and of the other
 * algorithms (which own nothing).
 */
static void
test_commit_bytes_foretold(void **state)
{
    uint64_t seed = 0x2545f4914f6cdd1dull;

    for (int algo = 0; algo < 4; algo++) {
        struct limiter_rule r = rule((enum limiter_algo)algo, 300, 1000, 0);
        struct limiter_state st = {0};
        uint64_t now = 1000000, grew = 0, shrank = 0;
        size_t most = 0;

        for (int i = 0; i < 200000; i++) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            /* bursts at one instant, steps of a few ms, now and then a pause that empties
             * most of the window or all of it, or a step back */
            unsigned k = seed % 1000;
            if (k < 600)
                now += seed >> 32 & 3;
            else if (k < 994)
                now += seed >> 32 & 31;
            else if (k < 997)
                now += 900 + (seed >> 32 & 63);
            else if (k < 998)
                now += 1500;
            else
                now -= 50;
            uint32_t cost = (uint32_t)(seed >> 40) % 4;
            struct limiter_result res;
            size_t before = limiter_state_bytes(&st);
            limiter_check(&r, &st, now, cost, &res);
            shrank += limiter_state_bytes(&st) < before;
            if (!res.allowed)
                continue;
            size_t want = limiter_commit_bytes(&r, &st, now, cost);
            size_t was = limiter_state_bytes(&st);
            limiter_commit(&r, &st, now, cost);
            assert_int_equal(limiter_state_bytes(&st), want);
            grew += want > was;
            if (want > most)
                most = want;
        }
        if (algo == LIMITER_SLIDING_LOG) {
            assert_true(grew > 10 && shrank > 10); /* the ring did grow and shrink */
            assert_true(most >= 64 * 16);
        } else {
            assert_int_equal(most, 0);
        }
        limiter_state_clear(&st);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_algo_names),
        cmocka_unit_test(test_sw_up_to_limit),
        cmocka_unit_test(test_sw_weighting),
        cmocka_unit_test(test_sw_exact_estimates),
        cmocka_unit_test(test_sw_cost),
        cmocka_unit_test(test_sw_boundaries),
        cmocka_unit_test(test_sw_rollover_and_expiry),
        cmocka_unit_test(test_sw_clock_backwards),
        cmocka_unit_test(test_fw_basic),
        cmocka_unit_test(test_fw_clock_backwards),
        cmocka_unit_test(test_sl_basic),
        cmocka_unit_test(test_sl_exact),
        cmocka_unit_test(test_sl_cost_entries),
        cmocka_unit_test(test_sl_many_entries),
        cmocka_unit_test(test_sl_clock_backwards),
        cmocka_unit_test(test_tb_hourly_exact),
        cmocka_unit_test(test_tb_burst_and_refill),
        cmocka_unit_test(test_tb_burst_one_and_odd_rate),
        cmocka_unit_test(test_tb_clock_backwards),
        cmocka_unit_test(test_all_up_to_limit),
        cmocka_unit_test(test_all_zero_state_expiry),
        cmocka_unit_test(test_all_properties),
        cmocka_unit_test(test_large_values),
        cmocka_unit_test(test_commit_bytes_foretold),
    };
    return cmocka_run_group_tests_name("limiter", tests, NULL, NULL);
}
