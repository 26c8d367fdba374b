/* test_identity.c - unit tests of identity value types: every spelling of one value has one
 * canonical form, and values of another type are refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "identity.h"

static void
canon(const struct identity_check *c, const char *in, const char *want)
{
    char out[128];
    size_t len = 0;
    if (identity_canonical(c, in, strlen(in), out, sizeof(out), &len) != 0)
        fail_msg("\"%s\" was refused, expected \"%s\"", in, want);
    assert_string_equal(out, want);
    assert_int_equal(len, strlen(want));
}

static void
refused(const struct identity_check *c, const char *in, size_t len)
{
    char out[128];
    size_t outlen = 0;
    if (identity_canonical(c, in, len, out, sizeof(out), &outlen) == 0)
        fail_msg("\"%.*s\" was taken as \"%s\"", (int)len, in, out);
}

#define REFUSED(c, s) refused((c), (s), strlen(s))

static void
test_integer_spellings_of_one_number_are_one_value(void **state)
{
    struct identity_check c;
    char err[128];
    (void)state;
    assert_int_equal(identity_check_init(&c, IDENTITY_INTEGER, NULL, err, sizeof(err)), 0);
    canon(&c, "1", "1");
    canon(&c, "01", "1");
    canon(&c, "001", "1");
    canon(&c, "+1", "1");
    canon(&c, "+001", "1");
    canon(&c, "0", "0");
    canon(&c, "000", "0");
    canon(&c, "-0", "0");
    canon(&c, "+0", "0");
    canon(&c, "-007", "-7");
    canon(&c, "9223372036854775807", "9223372036854775807");
    canon(&c, "0009223372036854775807", "9223372036854775807");
    canon(&c, "-9223372036854775808", "-9223372036854775808");
    identity_check_fini(&c);
}

static void
test_integer_refuses_what_is_not_one_bigint(void **state)
{
    struct identity_check c;
    char err[128];
    (void)state;
    assert_int_equal(identity_check_init(&c, IDENTITY_INTEGER, NULL, err, sizeof(err)), 0);
    REFUSED(&c, "");
    REFUSED(&c, "+");
    REFUSED(&c, "-");
    REFUSED(&c, "1.0");
    REFUSED(&c, "1e3");
    REFUSED(&c, "0x10");
    REFUSED(&c, " 1");
    REFUSED(&c, "1 ");
    REFUSED(&c, "1,2");
    REFUSED(&c, "++1");
    REFUSED(&c, "1_000");
    REFUSED(&c, "abc");
    REFUSED(&c, "9223372036854775808");
    REFUSED(&c, "-9223372036854775809");
    REFUSED(&c, "99999999999999999999");
    refused(&c, "1\0002", 3);
    identity_check_fini(&c);
}

static void
test_uuid_spellings_are_one_value_in_lower_case(void **state)
{
    struct identity_check c;
    char err[128];
    (void)state;
    assert_int_equal(identity_check_init(&c, IDENTITY_UUID, NULL, err, sizeof(err)), 0);
    const char *want = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    canon(&c, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", want);
    canon(&c, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", want);
    canon(&c, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", want);
    canon(&c, "a0eebc999c0b4ef8bb6d6bb9bd380a11", want);
    canon(&c, "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}", want);
    REFUSED(&c, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1");
    REFUSED(&c, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111");
    REFUSED(&c, "a0eebc999-c0b-4ef8-bb6d-6bb9bd380a11");
    REFUSED(&c, "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11");
    REFUSED(&c, "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    REFUSED(&c, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    REFUSED(&c, "(a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11)");
    REFUSED(&c, "");
    identity_check_fini(&c);
}

static void
test_pattern_must_match_the_whole_value(void **state)
{
    struct identity_check c;
    char err[128];
    (void)state;
    assert_int_equal(identity_check_init(&c, IDENTITY_PATTERN, "[a-z0-9-]{1,8}", err, sizeof(err)),
                     0);
    canon(&c, "acme", "acme");
    canon(&c, "a-1", "a-1");
    canon(&c, "abcdefgh", "abcdefgh");
    REFUSED(&c, "abcdefghi"); /* longer than the bound: a prefix matching is not enough */
    REFUSED(&c, "Acme");      /* no case folding */
    REFUSED(&c, "acme!");
    REFUSED(&c, "x acme");
    REFUSED(&c, "");
    identity_check_fini(&c);

    /* Each alternative must match the whole value, not just its start or its end. */
    assert_int_equal(identity_check_init(&c, IDENTITY_PATTERN, "acme|admin", err, sizeof(err)), 0);
    canon(&c, "acme", "acme");
    canon(&c, "admin", "admin");
    REFUSED(&c, "acmex");
    REFUSED(&c, "xadmin");
    identity_check_fini(&c);

    /* Anchors written in the pattern are harmless. */
    assert_int_equal(identity_check_init(&c, IDENTITY_PATTERN, "^[0-9]+$", err, sizeof(err)), 0);
    canon(&c, "42", "42");
    REFUSED(&c, "4a2");
    identity_check_fini(&c);
}

static void
test_pattern_that_does_not_compile_is_an_error(void **state)
{
    struct identity_check c;
    char err[256] = "";
    (void)state;
    assert_int_equal(identity_check_init(&c, IDENTITY_PATTERN, "[a-z", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "pattern \"[a-z\" is not a POSIX extended regular expression"));
    identity_check_fini(&c);
    assert_int_equal(identity_check_init(&c, IDENTITY_PATTERN, "", err, sizeof(err)), -1);
    assert_string_equal(err, "the pattern is empty");
    identity_check_fini(&c);
}

static void
test_text_is_taken_as_it_came(void **state)
{
    struct identity_check c;
    char err[128];
    (void)state;
    assert_int_equal(identity_check_init(&c, IDENTITY_TEXT, NULL, err, sizeof(err)), 0);
    canon(&c, "01", "01");
    canon(&c, "Some User", "Some User");
    /* Too little room is a refusal, never a cut value. */
    char out[4];
    size_t len;
    assert_int_equal(identity_canonical(&c, "abc", 3, out, sizeof(out), &len), -1);
    identity_check_fini(&c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integer_spellings_of_one_number_are_one_value),
        cmocka_unit_test(test_integer_refuses_what_is_not_one_bigint),
        cmocka_unit_test(test_uuid_spellings_are_one_value_in_lower_case),
        cmocka_unit_test(test_pattern_must_match_the_whole_value),
        cmocka_unit_test(test_pattern_that_does_not_compile_is_an_error),
        cmocka_unit_test(test_text_is_taken_as_it_came),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
