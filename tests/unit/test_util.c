/* test_util.c - unit tests of common/util.c's number formatting: util_u64() against
 * snprintf() at every digit count's edges and over random values. */
#define _GNU_SOURCE
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
        cmocka_unit_test(test_u64_at_every_power_of_ten),
        cmocka_unit_test(test_u64_random_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
