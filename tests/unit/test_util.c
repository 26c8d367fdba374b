/* test_util.c - unit tests of the small helpers of engine/common/util.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

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

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash64_sees_every_byte_and_length),
        cmocka_unit_test(test_hash64_avalanche),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
