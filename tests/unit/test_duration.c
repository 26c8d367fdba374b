/* test_duration.c - unit tests of duration_parse: every accepted form and every error. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "duration.h"

static uint64_t
ok(const char *s)
{
    uint64_t ms = 12345;
    char err[128] = "";
    int rc = duration_parse(s, &ms, err, sizeof(err));
    if (rc != 0)
        fail_msg("duration_parse(\"%s\") failed: %s", s, err);
    assert_string_equal(err, "");
    return ms;
}

static void
bad(const char *s, const char *want)
{
    uint64_t ms = 12345;
    char err[256] = "";
    assert_int_equal(duration_parse(s, &ms, err, sizeof(err)), -1);
    assert_string_equal(err, want);
    assert_int_equal(ms, 12345); /* untouched on error */
}

static void
test_units(void **state)
{
    (void)state;
    assert_int_equal(ok("250ms"), 250);
    assert_int_equal(ok("30s"), 30000);
    assert_int_equal(ok("5m"), 300000);
    assert_int_equal(ok("1h"), 3600000);
    assert_int_equal(ok("1d"), 86400000);
    assert_int_equal(ok("7d"), 604800000);
    assert_int_equal(ok("90m"), 5400000);
    assert_int_equal(ok("1ms"), 1);
}

static void
test_plain_seconds(void **state)
{
    (void)state;
    assert_int_equal(ok("30"), 30000);
    assert_int_equal(ok("1"), 1000);
    assert_int_equal(ok("3600"), 3600000);
    assert_int_equal(ok("007"), 7000);
}

static void
test_zero(void **state)
{
    (void)state;
    assert_int_equal(ok("0"), 0);
    assert_int_equal(ok("0s"), 0);
    assert_int_equal(ok("0ms"), 0);
    assert_int_equal(ok("0d"), 0);
}

static void
test_limits(void **state)
{
    (void)state;
    assert_true(ok("18446744073709551615ms") == UINT64_MAX);
    assert_true(ok("18446744073709551s") == UINT64_C(18446744073709551000));
    assert_true(ok("213503982334d") == UINT64_C(213503982334) * 86400000);
    assert_true(ok("5124095576030h") == UINT64_C(5124095576030) * 3600000);
    assert_true(ok("307445734561825m") == UINT64_C(307445734561825) * 60000);
    bad("18446744073709551616ms", "bad duration \"18446744073709551616ms\": too large");
    bad("99999999999999999999999", "bad duration \"99999999999999999999999\": too large");
    bad("18446744073709552s", "bad duration \"18446744073709552s\": too large");
    bad("213503982335d", "bad duration \"213503982335d\": too large");
    bad("5124095576031h", "bad duration \"5124095576031h\": too large");
    bad("307445734561826m", "bad duration \"307445734561826m\": too large");
}

static void
test_errors(void **state)
{
    (void)state;
    bad("", "empty duration");
    bad(NULL, "empty duration");
    bad("-5s", "bad duration \"-5s\": negative");
    bad("-0", "bad duration \"-0\": negative");
    bad("+5s", "bad duration \"+5s\": expected a number, as in \"30s\" or \"5m\"");
    bad("s", "bad duration \"s\": expected a number, as in \"30s\" or \"5m\"");
    bad(" 5s", "bad duration \" 5s\": expected a number, as in \"30s\" or \"5m\"");
    bad("1.5h", "bad duration \"1.5h\": decimals are not allowed; use a smaller unit "
                "(\"90m\", not \"1.5h\")");
    bad("0.5", "bad duration \"0.5\": decimals are not allowed; use a smaller unit "
               "(\"90m\", not \"1.5h\")");
    bad("1,5h", "bad duration \"1,5h\": decimals are not allowed; use a smaller unit "
                "(\"90m\", not \"1.5h\")");
    bad("5 m", "bad duration \"5 m\": no space between number and unit");
    bad("5mm", "bad duration \"5mm\": unknown unit \"mm\" (use ms, s, m, h or d)");
    bad("5M", "bad duration \"5M\": unknown unit \"M\" (use ms, s, m, h or d)");
    bad("5w", "bad duration \"5w\": unknown unit \"w\" (use ms, s, m, h or d)");
    bad("5sec", "bad duration \"5sec\": unknown unit \"sec\" (use ms, s, m, h or d)");
    bad("5s ", "bad duration \"5s \": unknown unit \"s \" (use ms, s, m, h or d)");
    bad("5h30m", "bad duration \"5h30m\": unknown unit \"h30m\" (use ms, s, m, h or d)");
    bad("0x10", "bad duration \"0x10\": unknown unit \"x10\" (use ms, s, m, h or d)");
}

static void
test_err_buffer(void **state)
{
    uint64_t ms = 0;
    char err[8];
    (void)state;
    /* A short buffer truncates the message; no buffer at all is fine too. */
    assert_int_equal(duration_parse("5mm", &ms, err, sizeof(err)), -1);
    assert_string_equal(err, "bad dur");
    assert_int_equal(duration_parse("5mm", &ms, NULL, 0), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_units),  cmocka_unit_test(test_plain_seconds),
        cmocka_unit_test(test_zero),   cmocka_unit_test(test_limits),
        cmocka_unit_test(test_errors), cmocka_unit_test(test_err_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
