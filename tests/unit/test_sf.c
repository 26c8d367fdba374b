/* test_sf.c - unit tests of the Structured Field Dictionary parser (RFC 8941). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sf.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------------------------ */

/* Each member as one line "key type value params", type one of i d s t b ? (. */
static void
describe(const struct sf_member *m, void *ctx)
{
    static const char types[] = "idstb?(";
    struct sbuf *out = ctx;
    sbuf_add(out, m->key, m->key_len);
    sbuf_printf(out, " %c ", types[m->type]);
    if (m->type == SF_INTEGER || m->type == SF_DECIMAL || m->type == SF_BOOLEAN)
        sbuf_printf(out, "%lld=", (long long)m->num);
    sbuf_add(out, m->text, m->text_len);
    sbuf_adds(out, " [");
    if (m->params_len)
        sbuf_add(out, m->params, m->params_len);
    sbuf_adds(out, "]\n");
}

/* Parses s (a heap copy of its exact length, for ASan) and returns the description. */
static long
parse(const char *s, struct sbuf *out)
{
    size_t n = strlen(s);
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    out->len = 0;
    sbuf_adds(out, "");
    long r = sf_parse_dictionary(copy, n, describe, out);
    /* Without a callback the answer is the same. */
    assert_int_equal(sf_parse_dictionary(copy, n, NULL, NULL), r);
    free(copy);
    return r;
}

static void
assert_dict(const char *s, long members, const char *want)
{
    struct sbuf out = {0};
    long r = parse(s, &out);
    if (r != members || strcmp(out.p, want) != 0)
        fail_msg("[%s]: %ld members, got:\n%s\nwant %ld:\n%s", s, r, out.p, members, want);
    sbuf_free(&out);
}

static void
assert_invalid(const char *s)
{
    struct sbuf out = {0};
    long r = parse(s, &out);
    if (r != -1 || out.len != 0)
        fail_msg("[%s]: %ld, want invalid; called with:\n%s", s, r, out.p);
    sbuf_free(&out);
}

/* ---- dictionaries (RFC 8941 section 3.2, 4.2.2) ------------------------------------------- */

/* RFC 8941 section 3.2: members, in order, with a Boolean true where no value is given. */
static void
test_rfc8941_3_2_members(void **state)
{
    (void)state;
    assert_dict("max-age=60", 1, "max-age i 60=60 []\n");
    assert_dict("no-store", 1, "no-store ? 1=?1 []\n");
    assert_dict("a=1, b, c=?0", 3, "a i 1=1 []\nb ? 1=?1 []\nc ? 0=?0 []\n");
    assert_dict("*a=x,b.c_d-e*9=\"s\"", 2, "*a t x []\nb.c_d-e*9 s s []\n");
    /* Empty: no member, valid (RFC 9213 then ignores the field). */
    assert_dict("", 0, "");
    assert_dict("   ", 0, "");
}

/* RFC 8941 section 4.2.2: a key given twice is reported twice, in order (the last wins). */
static void
test_rfc8941_4_2_2_duplicate_keys(void **state)
{
    (void)state;
    assert_dict("a=1, b=2, a=3", 3, "a i 1=1 []\nb i 2=2 []\na i 3=3 []\n");
}

/* RFC 8941 section 4.2 and 4.2.2: SP around the value, OWS around the commas only. */
static void
test_rfc8941_4_2_whitespace(void **state)
{
    (void)state;
    assert_dict("  a=1", 1, "a i 1=1 []\n");
    assert_dict("a=1  ", 1, "a i 1=1 []\n");
    assert_dict("a=1 ,\t b=2", 2, "a i 1=1 []\nb i 2=2 []\n");
    assert_dict("a=1,b=2", 2, "a i 1=1 []\nb i 2=2 []\n");
    assert_dict("a=1\t", 1, "a i 1=1 []\n");
    assert_invalid("\ta=1");
    assert_invalid("a =1");
    assert_invalid("a= 1");
    assert_invalid("a=1 b=2");
    assert_invalid("a=1;");
    assert_invalid("a=1 ;b");
}

/* RFC 8941 section 4.2.2: no empty member, no trailing comma. */
static void
test_rfc8941_4_2_2_commas(void **state)
{
    (void)state;
    assert_invalid(",");
    assert_invalid("a=1,");
    assert_invalid("a=1, ");
    assert_invalid("a=1,,b=2");
    assert_invalid(", a=1");
    assert_invalid("a=1, , b=2");
}

/* RFC 8941 section 4.2.3.3: keys start with lcalpha or "*", then lcalpha DIGIT _ - . *. */
static void
test_rfc8941_4_2_3_3_keys(void **state)
{
    (void)state;
    assert_dict("a0_-.*", 1, "a0_-.* ? 1=?1 []\n");
    assert_invalid("Max-Age=1");
    assert_invalid("max-Age=1");
    assert_invalid("1a=1");
    assert_invalid("_a=1");
    assert_invalid("-a=1");
    assert_invalid("a/b=1");
    assert_invalid("=1");
    assert_invalid("a+b");
    assert_invalid("\"a\"=1");
}

/* RFC 8941 section 4.2.3.2: parameters after a member, SP allowed only after ";". */
static void
test_rfc8941_4_2_3_2_parameters(void **state)
{
    (void)state;
    assert_dict("a=1;x;y=?0;z=\"s\", b;q=9", 2, "a i 1=1 [;x;y=?0;z=\"s\"]\nb ? 1=?1 [;q=9]\n");
    assert_dict("a=1; x=2", 1, "a i 1=1 [; x=2]\n");
    assert_invalid("a=1;X=2");
    assert_invalid("a=1;x=(1)");
    assert_invalid("a=1;x=");
    assert_invalid("a=1;x =2");
    assert_invalid("a=1;;x");
}

/* ---- items (RFC 8941 section 3.3, 4.2.4 - 4.2.8) ------------------------------------------ */

/* RFC 8941 section 4.2.4: Integers of 15 digits at most, Decimals of 12.3. */
static void
test_rfc8941_4_2_4_numbers(void **state)
{
    (void)state;
    assert_dict("a=0", 1, "a i 0=0 []\n");
    assert_dict("a=-0", 1, "a i 0=-0 []\n");
    assert_dict("a=-42", 1, "a i -42=-42 []\n");
    assert_dict("a=007", 1, "a i 7=007 []\n");
    assert_dict("a=999999999999999", 1, "a i 999999999999999=999999999999999 []\n");
    assert_dict("a=-999999999999999", 1, "a i -999999999999999=-999999999999999 []\n");
    assert_invalid("a=1000000000000000");
    assert_dict("a=1.5", 1, "a d 1500=1.5 []\n");
    assert_dict("a=-0.125", 1, "a d -125=-0.125 []\n");
    assert_dict("a=123456789012.123", 1, "a d 123456789012123=123456789012.123 []\n");
    assert_invalid("a=1234567890123.1");
    assert_invalid("a=1.1234");
    assert_invalid("a=1.");
    assert_invalid("a=.5");
    assert_invalid("a=-");
    assert_invalid("a=-a");
    assert_invalid("a=+1");
    assert_invalid("a=1.2.3");
    assert_invalid("a=1e3");
    assert_invalid("a=0x10");
}

/* RFC 8941 section 4.2.5: printable ASCII between quotes; \" and \\ the only escapes. */
static void
test_rfc8941_4_2_5_strings(void **state)
{
    (void)state;
    assert_dict("a=\"\"", 1, "a s  []\n");
    assert_dict("a=\"x, y=1; z\"", 1, "a s x, y=1; z []\n");
    assert_dict("a=\"q\\\"b\\\\\"", 1, "a s q\\\"b\\\\ []\n");
    assert_invalid("a=\"x");
    assert_invalid("a=\"x\\\"");
    assert_invalid("a=\"\\n\"");
    assert_invalid("a=\"tab\there\"");
    assert_invalid("a=\"caf\xc3\xa9\"");
    assert_invalid("a=\"\x7f\"");
    assert_invalid("a=\"x\"y");
}

/* RFC 8941 section 4.2.6: Tokens start with ALPHA or "*", then tchar, ":" or "/". */
static void
test_rfc8941_4_2_6_tokens(void **state)
{
    (void)state;
    assert_dict("a=foo", 1, "a t foo []\n");
    assert_dict("a=Foo/Bar:baz!#$%&'*+-.^_`|~9", 1, "a t Foo/Bar:baz!#$%&'*+-.^_`|~9 []\n");
    assert_dict("a=*", 1, "a t * []\n");
    assert_invalid("a=foo bar");
    assert_invalid("a=foo\"");
    assert_invalid("a=fo(o");
    assert_invalid("a=_x");
}

/* RFC 8941 section 4.2.7: base64 between colons. */
static void
test_rfc8941_4_2_7_byte_sequences(void **state)
{
    (void)state;
    assert_dict("a=:aGVsbG8=:", 1, "a b aGVsbG8= []\n");
    assert_dict("a=::", 1, "a b  []\n");
    assert_dict("a=:a+/=:;p", 1, "a b a+/= [;p]\n");
    assert_invalid("a=:aGVs bG8=:");
    assert_invalid("a=:aGVsbG8=");
    assert_invalid("a=:a-b:");
}

/* RFC 8941 section 4.2.8: ?0 and ?1. */
static void
test_rfc8941_4_2_8_booleans(void **state)
{
    (void)state;
    assert_dict("a=?1, b=?0", 2, "a ? 1=?1 []\nb ? 0=?0 []\n");
    assert_invalid("a=?");
    assert_invalid("a=?2");
    assert_invalid("a=?10");
    assert_invalid("a=?true");
}

/* RFC 8941 section 4.2.1.2: Inner Lists, items separated by SP, parameters on both. */
static void
test_rfc8941_4_2_1_2_inner_lists(void **state)
{
    (void)state;
    assert_dict("a=()", 1, "a ( () []\n");
    assert_dict("a=( 1  \"x\";p=1 tok )", 1, "a ( ( 1  \"x\";p=1 tok ) []\n");
    assert_dict("a=(1 2);q, b=3", 2, "a ( (1 2) [;q]\nb i 3=3 []\n");
    assert_invalid("a=(1 2");
    assert_invalid("a=(1,2)");
    assert_invalid("a=(1 (2))");
    assert_invalid("a=(1\t2)");
    assert_invalid("a=(1)(2)");
    assert_invalid("a=(");
}

/* RFC 9651 (Structured Fields, 2024) adds Dates and Display Strings; RFC 8941 does not. */
static void
test_rfc8941_no_rfc9651_types(void **state)
{
    (void)state;
    assert_invalid("a=@1659578233");
    assert_invalid("a=%\"x\"");
}

/* RFC 8941 section 4.2: "parsers MUST fail" on anything else, and call nothing then. */
static void
test_rfc8941_4_2_invalid_calls_nothing(void **state)
{
    (void)state;
    assert_invalid("a=1, b=2, C=3");
    assert_invalid("a=1, b=2 junk");
    assert_invalid("a=1\x80");
    assert_invalid("a=1\r\n");
    /* A NUL inside is a byte like any other: not in the grammar. */
    struct sbuf out = {0};
    assert_int_equal(sf_parse_dictionary("a=1\0b", 5, describe, &out), -1);
    assert_int_equal(out.len, 0);
    /* Only the first len bytes are looked at. */
    assert_int_equal(sf_parse_dictionary("a=1, Bad", 3, describe, &out), 1);
    assert_string_equal(out.p, "a i 1=1 []\n");
    sbuf_free(&out);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc8941_3_2_members),
        cmocka_unit_test(test_rfc8941_4_2_2_duplicate_keys),
        cmocka_unit_test(test_rfc8941_4_2_whitespace),
        cmocka_unit_test(test_rfc8941_4_2_2_commas),
        cmocka_unit_test(test_rfc8941_4_2_3_3_keys),
        cmocka_unit_test(test_rfc8941_4_2_3_2_parameters),
        cmocka_unit_test(test_rfc8941_4_2_4_numbers),
        cmocka_unit_test(test_rfc8941_4_2_5_strings),
        cmocka_unit_test(test_rfc8941_4_2_6_tokens),
        cmocka_unit_test(test_rfc8941_4_2_7_byte_sequences),
        cmocka_unit_test(test_rfc8941_4_2_8_booleans),
        cmocka_unit_test(test_rfc8941_4_2_1_2_inner_lists),
        cmocka_unit_test(test_rfc8941_no_rfc9651_types),
        cmocka_unit_test(test_rfc8941_4_2_invalid_calls_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
