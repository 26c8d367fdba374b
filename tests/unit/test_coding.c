/* test_coding.c - unit tests of Accept-Encoding negotiation (RFC 9110 section 12.5.3) and of the
 * gzip, br and zstd coders. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"
#include "coding.h"
#include "util.h"

#define BR CODEC_BR
#define ZSTD CODEC_ZSTD
#define GZIP CODEC_GZIP
#define IDENTITY (-1)

/* The coding chosen for one Accept-Encoding field value s among `offered`. */
static int
pick(const char *s, unsigned offered)
{
    struct http_str v = {s, strlen(s)};
    return coding_negotiate(&v, 1, offered);
}

static void
assert_pick(const char *s, unsigned offered, int want)
{
    int got = pick(s, offered);
    if (got != want)
        fail_msg("Accept-Encoding: %s -> %s, want %s", s, codec_name((enum codec)got),
                 codec_name((enum codec)want));
}

/* No field: the identity body (the brief's rule: only a client that asks gets a coding). An
 * empty field accepts identity alone (section 12.5.3). */
static void
test_no_field_or_empty_gets_identity(void **state)
{
    (void)state;
    assert_int_equal(coding_negotiate(NULL, 0, CODEC_ALL), IDENTITY);
    assert_pick("", CODEC_ALL, IDENTITY);
    assert_pick(" , ,", CODEC_ALL, IDENTITY);
    assert_pick("compress, deflate", CODEC_ALL, IDENTITY); /* none of ours */
}

/* Among equal q values the server's preference: br, then zstd, then gzip; whatever the order
 * the client lists them in. */
static void
test_ties_go_br_zstd_gzip(void **state)
{
    (void)state;
    assert_pick("gzip, zstd, br", CODEC_ALL, BR);
    assert_pick("gzip, zstd", CODEC_ALL, ZSTD);
    assert_pick("gzip;q=0.8, br;q=0.8", CODEC_ALL, BR);
    assert_pick("gzip, deflate, br", CODEC_BIT(GZIP) | CODEC_BIT(ZSTD), GZIP); /* br not held */
    assert_pick("br", CODEC_BIT(GZIP), IDENTITY);
}

/* q values (section 12.4.2): the highest wins; q=0 refuses; bad weights are ignored members. */
static void
test_q_values(void **state)
{
    (void)state;
    assert_pick("br;q=0.5, gzip", CODEC_ALL, GZIP);
    assert_pick("br;q=0.5, gzip;q=0.9, zstd;q=0.7", CODEC_ALL, GZIP);
    assert_pick("gzip;q=0.001, zstd;q=0.002", CODEC_ALL, ZSTD);
    assert_pick("gzip;q=0", CODEC_ALL, IDENTITY);
    assert_pick("br;q=0, gzip", CODEC_ALL, GZIP);
    assert_pick("GZIP;Q=1.000", CODEC_ALL, GZIP);
    assert_pick("gzip ; q=0.8 , br ; q=0.9", CODEC_ALL, BR);
    assert_pick("gzip;level=1;q=0.3", CODEC_ALL, GZIP); /* other parameters are ignored */
    assert_pick("x-gzip", CODEC_ALL, GZIP);             /* section 8.4.1.3 */
    /* Not weights: q above 1, four decimals, a sign, nothing: the member is ignored. */
    assert_pick("gzip;q=1.5", CODEC_ALL, IDENTITY);
    assert_pick("gzip;q=0.0001", CODEC_ALL, IDENTITY);
    assert_pick("gzip;q=-1", CODEC_ALL, IDENTITY);
    assert_pick("gzip;q=", CODEC_ALL, IDENTITY);
    assert_pick("br;q=2, gzip;q=0.1", CODEC_ALL, GZIP);
}

/* "*" stands for every coding not listed; a listed one keeps its own weight. */
static void
test_star(void **state)
{
    (void)state;
    assert_pick("*", CODEC_ALL, BR);
    assert_pick("*", CODEC_BIT(GZIP), GZIP);
    assert_pick("br;q=0, *", CODEC_ALL, ZSTD);
    assert_pick("*;q=0.5, gzip", CODEC_ALL, GZIP);
    assert_pick("*;q=0", CODEC_ALL, IDENTITY);
    assert_pick("gzip;q=0, *;q=0", CODEC_ALL, IDENTITY);
}

/* identity: refused with q=0 it still is the answer when no coding is acceptable (the server
 * does not answer 415); a coding is chosen only at or above identity's listed weight. */
static void
test_identity(void **state)
{
    (void)state;
    assert_pick("identity;q=0", CODEC_ALL, IDENTITY);
    assert_pick("gzip, identity;q=0", CODEC_ALL, GZIP);
    assert_pick("identity", CODEC_ALL, IDENTITY);
    assert_pick("gzip;q=0.5, identity", CODEC_ALL, IDENTITY);
    assert_pick("gzip, identity", CODEC_ALL, GZIP);
    assert_pick("gzip;q=0.5", CODEC_ALL, GZIP); /* identity not listed: not compared */
}

/* Several Accept-Encoding field lines are one list (RFC 9110 section 5.3). */
static void
test_field_lines_combine(void **state)
{
    (void)state;
    struct http_str v[2] = {{"gzip;q=0.5", 10}, {"zstd", 4}};
    assert_int_equal(coding_negotiate(v, 2, CODEC_ALL), ZSTD);
    struct http_request h = {.nheaders = 3};
    h.headers[0] = (struct http_header){{"Host", 4}, {"x", 1}};
    h.headers[1] = (struct http_header){{"accept-encoding", 15}, {"gzip;q=0.5", 10}};
    h.headers[2] = (struct http_header){{"Accept-Encoding", 15}, {"br", 2}};
    assert_int_equal(coding_for_request(&h, CODEC_ALL), BR);
    h.nheaders = 1;
    assert_int_equal(coding_for_request(&h, CODEC_ALL), IDENTITY);
}

/* A JSON-like body of n bytes: compressible. */
static char *
json_body(size_t n)
{
    struct sbuf b = {0};
    for (int i = 0; b.len < n; i++)
        sbuf_printf(&b, "{\"id\":%d,\"name\":\"contact %d\",\"company\":\"Acme\"},", i, i % 17);
    b.p[n - 1] = '\0';
    return b.p;
}

/* Each coder's form decodes (with the same library) to the body it was made from, is smaller,
 * and is counted once. */
static void
test_each_codec_round_trips(void **state)
{
    (void)state;
    size_t n = 64 * 1024;
    char *body = json_body(n);
    for (int c = 0; c < CODEC_N; c++) {
        uint64_t before = codec_count((enum codec)c);
        size_t clen = 0, dlen = 0;
        char *coded = codec_encode((enum codec)c, body, n, &clen);
        assert_non_null(coded);
        assert_true(clen > 0 && clen < n / 4);
        assert_int_equal(codec_count((enum codec)c), before + 1);
        char *back = codec_decode((enum codec)c, coded, clen, n, &dlen);
        assert_non_null(back);
        assert_int_equal(dlen, n);
        assert_memory_equal(back, body, n);
        free(back);
        /* Past the caller's bound, or cut short, or flipped: refused. */
        assert_null(codec_decode((enum codec)c, coded, clen, n - 1, &dlen));
        assert_null(codec_decode((enum codec)c, coded, clen / 2, n, &dlen));
        free(coded);
    }
    free(body);
}

/* A form no smaller than its body is not kept (nor counted): random bytes do not shrink. */
static void
test_incompressible_body_gets_no_form(void **state)
{
    (void)state;
    unsigned char body[2048];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof(body); i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        body[i] = (unsigned char)x;
    }
    for (int c = 0; c < CODEC_N; c++) {
        uint64_t before = codec_count((enum codec)c);
        size_t clen = 0;
        assert_null(codec_encode((enum codec)c, body, sizeof(body), &clen));
        assert_int_equal(codec_count((enum codec)c), before);
    }
}

/* Names as Content-Encoding says them, and back. */
static void
test_names(void **state)
{
    (void)state;
    assert_string_equal(codec_name(CODEC_BR), "br");
    assert_string_equal(codec_name(CODEC_ZSTD), "zstd");
    assert_string_equal(codec_name(CODEC_GZIP), "gzip");
    assert_int_equal(codec_from_name("Gzip", 4), CODEC_GZIP);
    assert_int_equal(codec_from_name("deflate", 7), -1);
    assert_int_equal(codec_from_name("zst", 3), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_field_or_empty_gets_identity),
        cmocka_unit_test(test_ties_go_br_zstd_gzip),
        cmocka_unit_test(test_q_values),
        cmocka_unit_test(test_star),
        cmocka_unit_test(test_identity),
        cmocka_unit_test(test_field_lines_combine),
        cmocka_unit_test(test_each_codec_round_trips),
        cmocka_unit_test(test_incompressible_body_gets_no_form),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
