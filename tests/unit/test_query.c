/* test_query.c - unit tests of the canonical query parse (engine/http/query.c): one reading of
 * names and values, one order, one encoding, for the cache key and the forwarded query alike. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "query.h"

static char buf[8192];

static struct http_query *
parse(const char *q, enum http_query_status want)
{
    static struct http_query qr;
    assert_int_equal(http_query_parse(q, strlen(q), buf, sizeof(buf), &qr), want);
    return &qr;
}

/* The canonical text of q, in one of two buffers used in turn (so two calls can be compared). */
static const char *
canon(const char *q)
{
    static char out[2][4096];
    static int turn;
    char *o = out[turn ^= 1];
    struct http_query *qr = parse(q, HTTP_QUERY_OK);
    assert_true(http_query_encode(qr, NULL, 0, o, sizeof(out[0])) >= 0);
    return o;
}

static void
test_sorted_by_name_repeats_in_order(void **state)
{
    assert_string_equal(canon("b=2&a=1&b=1&c"), "a=1&b=2&b=1&c");
    assert_string_equal(canon("a=1&b=2"), canon("b=2&a=1"));
    assert_string_equal(canon(""), "");
    assert_string_equal(canon("&&a=1&&"), "a=1");
}

/* A name or value spelled two ways is one parameter: the poisoning shape of ?%71=x&q=y. */
static void
test_spellings_meet(void **state)
{
    assert_string_equal(canon("%71=ATTACKER&q=shoes"), "q=ATTACKER&q=shoes");
    assert_string_equal(canon("q=a+b"), canon("q=a%20b"));
    assert_string_equal(canon("q=%41%7e"), "q=A~");
    assert_string_equal(canon("q=%2b"), "q=%2B"); /* a literal plus is not a space */
    assert_string_not_equal(canon("q=%2B"), canon("q=+"));
    assert_string_equal(canon("q=a%3Db%26c"), "q=a%3Db%26c"); /* '=' and '&' stay escaped */
    assert_string_equal(canon("q=%c3%a9"), "q=%C3%A9");
    assert_string_equal(canon("p=/a?b:c@d"), "p=/a?b:c@d");
}

static void
test_bare_name_and_empty_value_differ(void **state)
{
    assert_string_equal(canon("a"), "a");
    assert_string_equal(canon("a="), "a=");
    struct http_query *qr = parse("a=&b", HTTP_QUERY_OK);
    assert_true(qr->params[0].has_value);
    assert_false(qr->params[1].has_value);
}

static void
test_malformed_and_limits(void **state)
{
    parse("q=%zz", HTTP_QUERY_MALFORMED);
    parse("q=%4", HTTP_QUERY_MALFORMED);
    parse("q=%00", HTTP_QUERY_MALFORMED);
    parse("%=1", HTTP_QUERY_MALFORMED);
    char many[1024] = "";
    for (int i = 0; i <= HTTP_QUERY_MAX_PARAMS; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%sp%d=1", i ? "&" : "", i);
    parse(many, HTTP_QUERY_TOO_MANY);
    many[strlen(many) - 6] = '\0'; /* one parameter fewer */
    struct http_query qr;
    assert_int_equal(http_query_parse(many, strlen(many), buf, 8, &qr), HTTP_QUERY_TOO_LONG);
}

static void
test_count_and_filter(void **state)
{
    struct http_query *qr = parse("q=shoes&size=9&q=boots&x=1", HTTP_QUERY_OK);
    const struct http_query_param *p;
    assert_int_equal(http_query_count(qr, "q", 1, &p), 2);
    assert_string_equal(p->value, "shoes");
    assert_int_equal(http_query_count(qr, "size", 4, &p), 1);
    assert_int_equal(http_query_count(qr, "nope", 4, &p), 0);
    assert_null(p);
    const char *names[] = {"size", "x"};
    char out[64];
    assert_int_equal(http_query_encode(qr, names, 2, out, sizeof(out)), 10);
    assert_string_equal(out, "size=9&x=1");
    assert_int_equal(http_query_encode(qr, names, 0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(http_query_encode(qr, NULL, 0, out, 8), -1); /* does not fit */
}

/* Encoding then parsing again gives the same parameters: the text an upstream receives means
 * what the key holds. */
static void
test_encoding_round_trips(void **state)
{
    srand(7);
    for (int round = 0; round < 2000; round++) {
        char raw[128];
        size_t n = (size_t)(rand() % 40);
        static const char alphabet[] = "ab=&+%%20%41%2B%3D%26 ~-./?:@;#\x01\xc3\xa9";
        for (size_t i = 0; i < n; i++)
            raw[i] = alphabet[rand() % (int)(sizeof(alphabet) - 1)];
        raw[n] = '\0';
        struct http_query a, b;
        static char b1[1024], b2[1024], e1[2048], e2[2048];
        if (http_query_parse(raw, n, b1, sizeof(b1), &a) != HTTP_QUERY_OK)
            continue;
        long l1 = http_query_encode(&a, NULL, 0, e1, sizeof(e1));
        assert_true(l1 >= 0);
        assert_int_equal(http_query_parse(e1, (size_t)l1, b2, sizeof(b2), &b), HTTP_QUERY_OK);
        assert_int_equal(a.n, b.n);
        for (size_t i = 0; i < a.n; i++) {
            assert_int_equal(a.params[i].nlen, b.params[i].nlen);
            assert_memory_equal(a.params[i].name, b.params[i].name, a.params[i].nlen);
            assert_int_equal(a.params[i].vlen, b.params[i].vlen);
            assert_memory_equal(a.params[i].value, b.params[i].value, a.params[i].vlen);
            assert_int_equal(a.params[i].has_value, b.params[i].has_value);
        }
        long l2 = http_query_encode(&b, NULL, 0, e2, sizeof(e2));
        assert_int_equal(l1, l2);
        assert_string_equal(e1, e2);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sorted_by_name_repeats_in_order),
        cmocka_unit_test(test_spellings_meet),
        cmocka_unit_test(test_bare_name_and_empty_value_differ),
        cmocka_unit_test(test_malformed_and_limits),
        cmocka_unit_test(test_count_and_filter),
        cmocka_unit_test(test_encoding_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
