/* test_jsonstr.c - unit tests of the JSON string escaper (engine/common/jsonstr.c): controls,
 * quotes, valid and invalid UTF-8 one case at a time, then random hostile bytes that jansson
 * must read back. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "jsonstr.h"

/* The escaped form of s[0..n), as a NUL-terminated string (static). */
static const char *
esc(const char *s, size_t n)
{
    static char out[4096];
    struct sbuf b = {0};
    jsonstr_add(&b, s, n);
    assert_true(b.len < sizeof(out));
    memcpy(out, b.p, b.len);
    out[b.len] = '\0';
    sbuf_free(&b);
    return out;
}

#define ESC(lit) esc(lit, sizeof(lit) - 1)

static void
test_plain_ascii_quotes_and_backslashes(void **state)
{
    (void)state;
    assert_string_equal(ESC(""), "\"\"");
    assert_string_equal(ESC("GET /a?b=c"), "\"GET /a?b=c\"");
    assert_string_equal(ESC("a\"b\\c/d"), "\"a\\\"b\\\\c/d\"");
}

static void
test_every_control_character_is_escaped(void **state)
{
    (void)state;
    assert_string_equal(ESC("\n\r\t\b\f"), "\"\\n\\r\\t\\b\\f\"");
    assert_string_equal(ESC("a\0b"), "\"a\\u0000b\"");
    assert_string_equal(ESC("\x01\x1b[31m\x1f\x7f"), "\"\\u0001\\u001b[31m\\u001f\\u007f\"");
    for (int c = 0; c < 0x20; c++) {
        char in = (char)c;
        const char *out = esc(&in, 1);
        for (const char *p = out; *p; p++)
            assert_true((unsigned char)*p >= 0x20);
    }
}

static void
test_valid_utf8_is_kept_and_line_separators_escaped(void **state)
{
    (void)state;
    assert_string_equal(ESC("caf\xc3\xa9 \xe4\xbd\xa0 \xf0\x9f\x98\x80"),
                        "\"caf\xc3\xa9 \xe4\xbd\xa0 \xf0\x9f\x98\x80\"");
    /* The edges of each range. */
    assert_string_equal(
        ESC("\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"),
        "\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"");
    assert_string_equal(ESC("a\xe2\x80\xa8z\xe2\x80\xa9"), "\"a\\u2028z\\u2029\"");
}

static void
test_invalid_utf8_becomes_one_replacement_per_maximal_subpart(void **state)
{
    (void)state;
    assert_string_equal(ESC("\x80"), "\"\\ufffd\"");                       /* stray continuation */
    assert_string_equal(ESC("\xff\xfe"), "\"\\ufffd\\ufffd\"");            /* never in UTF-8 */
    assert_string_equal(ESC("\xc0\xaf"), "\"\\ufffd\\ufffd\"");            /* overlong '/' */
    assert_string_equal(ESC("\xe0\x80\xaf"), "\"\\ufffd\\ufffd\\ufffd\""); /* overlong, 3 bytes */
    assert_string_equal(ESC("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\""); /* a surrogate */
    assert_string_equal(ESC("\xf4\x90\x80\x80"), "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* > 10FFFF */
    assert_string_equal(ESC("\xe2\x82"), "\"\\ufffd\""); /* truncated at the end */
    assert_string_equal(ESC("\xe2\x82"
                            "A"),
                        "\"\\ufffdA\""); /* cut short by ASCII */
    assert_string_equal(ESC("\xf0\x9f\x98"
                            "\""),
                        "\"\\ufffd\\\"\""); /* cut short by a quote, which stays escaped */
    assert_string_equal(ESC("\xc3"
                            "\n"),
                        "\"\\ufffd\\n\"");
}

static void
test_null_and_nul_terminated_forms(void **state)
{
    (void)state;
    struct sbuf b = {0};
    jsonstr_adds(&b, NULL);
    sbuf_add(&b, ",", 1);
    jsonstr_adds(&b, "x\ty");
    sbuf_add(&b, "", 1);
    assert_string_equal(b.p, "null,\"x\\ty\"");
    sbuf_free(&b);
    struct sbuf e = {0};
    jsonstr_add(&e, NULL, 0);
    assert_int_equal(e.len, 2);
    sbuf_free(&e);
}

/* Whether s[0..n) is well-formed UTF-8 (a second, plain reading of RFC 3629's grammar). */
static int
valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k;
        if (s[i] < 0x80) {
            i++;
            continue;
        } else if ((s[i] & 0xe0) == 0xc0) {
            cp = s[i] & 0x1f, k = 2;
        } else if ((s[i] & 0xf0) == 0xe0) {
            cp = s[i] & 0x0f, k = 3;
        } else if ((s[i] & 0xf8) == 0xf0) {
            cp = s[i] & 0x07, k = 4;
        } else {
            return 0;
        }
        if (i + k > n)
            return 0;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k;
    }
    return 1;
}

/* Every byte value at every place of a plain run of every length from 1 to 24 is escaped as it
 * is alone: the paths that take a whole plain string (in words of eight, the last one
 * overlapping, or two overlapping halves of a short one) and eight plain bytes at a time let
 * no byte past them, and leave every string and word they cannot take whole to the
 * byte-at-a-time one. */
static void
test_each_byte_in_each_place_of_a_plain_run(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 256; c++) {
        char one = (char)c;
        char alone[16];
        const char *e = esc(&one, 1);
        size_t elen = strlen(e) - 2; /* its escaped form, without the quotes */
        assert_true(elen < sizeof(alone));
        memcpy(alone, e + 1, elen);
        for (size_t n = 1; n <= 24; n++) {
            for (size_t at = 0; at < n; at++) {
                char in[24], want[64];
                memset(in, 'a', sizeof(in));
                in[at] = one;
                size_t w = 0;
                want[w++] = '"';
                memset(want + w, 'a', at);
                w += at;
                memcpy(want + w, alone, elen);
                w += elen;
                memset(want + w, 'a', n - 1 - at);
                w += n - 1 - at;
                want[w++] = '"';
                want[w] = '\0';
                assert_string_equal(esc(in, n), want);
            }
        }
    }
}

/* jsonstr_plain() says yes exactly for the bytes that go out as they are. */
static void
test_plain_is_exactly_the_bytes_kept_as_they_are(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 256; c++) {
        char one = (char)c;
        const char *e = esc(&one, 1);
        bool same = strlen(e) == 3 && e[1] == one;
        assert_int_equal(jsonstr_plain(&one, 1), same);
    }
    assert_true(jsonstr_plain("GET /a-b_c.d:e", 14));
    assert_true(jsonstr_plain("", 0));
}

/* Random bytes, biased towards the troublesome ones, read back by jansson: the output is
 * always one valid JSON string of printable ASCII and UTF-8; when the input was valid UTF-8
 * it reads back as the same bytes; when not, only replacement characters were added. */
static void
test_random_hostile_bytes_read_back_as_json(void **state)
{
    (void)state;
    static const unsigned char hostile[] = {0x00, 0x0a, 0x0d, 0x1b, 0x22, 0x5c, 0x7f, 0x80,
                                            0xbf, 0xc0, 0xc2, 0xe0, 0xe2, 0xed, 0xef, 0xf0,
                                            0xf4, 0xf5, 0xff, 0xa8, 0x9f, 0x90, 0x8f, 'a'};
    srand(12345);
    unsigned valid_seen = 0;
    for (int round = 0; round < 50000; round++) {
        unsigned char in[24];
        size_t n = (size_t)(rand() % (int)sizeof(in));
        for (size_t i = 0; i < n; i++)
            in[i] = rand() % 3 ? hostile[rand() % (int)sizeof(hostile)] : (unsigned char)rand();
        struct sbuf b = {0};
        jsonstr_add(&b, (const char *)in, n);
        for (size_t i = 0; i < b.len; i++)
            assert_true((unsigned char)b.p[i] >= 0x20 && b.p[i] != 0x7f);
        assert_true(valid_utf8((const unsigned char *)b.p, b.len));
        json_error_t err;
        json_t *v = json_loadb(b.p, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        if (!v)
            fail_msg("jansson refused %.*s: %s", (int)b.len, b.p, err.text);
        assert_true(json_is_string(v));
        const char *out = json_string_value(v);
        size_t outlen = json_string_length(v);
        if (valid_utf8(in, n)) {
            valid_seen++;
            assert_int_equal(outlen, n);
            assert_memory_equal(out, in, n);
        } else {
            assert_non_null(memmem(out, outlen, "\xef\xbf\xbd", 3));
        }
        json_decref(v);
        sbuf_free(&b);
    }
    assert_true(valid_seen > 1000);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_ascii_quotes_and_backslashes),
        cmocka_unit_test(test_every_control_character_is_escaped),
        cmocka_unit_test(test_valid_utf8_is_kept_and_line_separators_escaped),
        cmocka_unit_test(test_invalid_utf8_becomes_one_replacement_per_maximal_subpart),
        cmocka_unit_test(test_null_and_nul_terminated_forms),
        cmocka_unit_test(test_each_byte_in_each_place_of_a_plain_run),
        cmocka_unit_test(test_plain_is_exactly_the_bytes_kept_as_they_are),
        cmocka_unit_test(test_random_hostile_bytes_read_back_as_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
