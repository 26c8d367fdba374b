/* test_util.c - unit tests of the small helpers of engine/common/util.c: util_hash64() and
 * util_u64() (against snprintf() at every digit count's edges and over random values). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* util_hash64: every length and every byte position changes the hash; the same bytes at
 * another address hash the same (words are read unaligned, little-endian). */
static void
test_hash64_sees_every_byte_and_length(void **state)
{
    (void)state;
    unsigned char buf[80], copy[81];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)(i * 37 + 11);
    uint64_t seen[81];
    for (size_t n = 0; n <= sizeof(buf); n++) {
        seen[n] = util_hash64(buf, n);
        for (size_t m = 0; m < n; m++)
            assert_true(seen[m] != seen[n]); /* a prefix never hashes like the whole */
        memcpy(copy + 1, buf, n);
        assert_true(util_hash64(copy + 1, n) == seen[n]);
    }
    for (size_t i = 0; i < sizeof(buf); i++) {
        for (int bit = 0; bit < 8; bit++) {
            buf[i] ^= (unsigned char)(1u << bit);
            assert_true(util_hash64(buf, sizeof(buf)) != seen[sizeof(buf)]);
            buf[i] ^= (unsigned char)(1u << bit);
        }
    }
    /* The empty input and a zero tail are not the same as nothing: the length is mixed in. */
    unsigned char zeros[16] = {0};
    assert_true(util_hash64(zeros, 0) != util_hash64(zeros, 1));
    assert_true(util_hash64(zeros, 8) != util_hash64(zeros, 16));
}

/* One avalanche check: flipping one input bit flips about half of the output bits. */
static void
test_hash64_avalanche(void **state)
{
    (void)state;
    unsigned char buf[32] = "entity tags of bodies, sixty4b!";
    uint64_t base = util_hash64(buf, sizeof(buf));
    unsigned total = 0, flips = 0;
    for (size_t i = 0; i < sizeof(buf); i++) {
        for (int bit = 0; bit < 8; bit++) {
            buf[i] ^= (unsigned char)(1u << bit);
            total += (unsigned)__builtin_popcountll(base ^ util_hash64(buf, sizeof(buf)));
            flips++;
            buf[i] ^= (unsigned char)(1u << bit);
        }
    }
    double mean = (double)total / flips;
    assert_true(mean > 28.0 && mean < 36.0);
}

static void
same_as_printf(uint64_t v)
{
    char got[32], want[32];
    size_t n = util_u64(got, v);
    got[n] = '\0';
    snprintf(want, sizeof(want), "%" PRIu64, v);
    assert_string_equal(got, want);
}

static void
test_u64_at_every_power_of_ten(void **state)
{
    (void)state;
    same_as_printf(0);
    same_as_printf(UINT64_MAX);
    uint64_t p = 1;
    for (int i = 0; i < 20; i++) {
        same_as_printf(p - 1);
        same_as_printf(p);
        same_as_printf(p + 1);
        same_as_printf(p * 5);
        if (p > UINT64_MAX / 10)
            break;
        p *= 10;
    }
    for (int k = 1; k < 64; k++) { /* the digit count is estimated from the bit count */
        same_as_printf((1ull << k) - 1);
        same_as_printf(1ull << k);
    }
}

static void
test_u64_random_values(void **state)
{
    (void)state;
    srand(7);
    for (int i = 0; i < 100000; i++) {
        uint64_t v = ((uint64_t)rand() << 42) ^ ((uint64_t)rand() << 21) ^ (uint64_t)rand();
        same_as_printf(v >> (rand() % 64));
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash64_sees_every_byte_and_length),
        cmocka_unit_test(test_hash64_avalanche),
        cmocka_unit_test(test_u64_at_every_power_of_ten),
        cmocka_unit_test(test_u64_random_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
