/* test_cred_cache.c - unit tests of the per-worker cache of verified credentials: found by the
 * SHA-256 of the credential until it expires, only in its policy generation, bounded in
 * entries and bytes with the least recently used out first. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "cred_cache.h"

static void
digest_of(const char *s, unsigned char d[CRED_DIGEST_LEN])
{
    cred_digest(s, strlen(s), d);
}

/* FIPS 180-2 appendix B.1: SHA-256("abc"). */
static void
test_digest_is_sha256(void **state)
{
    (void)state;
    static const unsigned char want[] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                         0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                         0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                         0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    unsigned char d[CRED_DIGEST_LEN];
    digest_of("abc", d);
    assert_memory_equal(d, want, sizeof(want));
}

static void
test_found_until_it_expires_and_in_its_generation_only(void **state)
{
    (void)state;
    struct cred_cache *cc = cred_cache_new(10, 1 << 20);
    unsigned char d[CRED_DIGEST_LEN];
    digest_of("token-a", d);
    json_t *claims = json_pack("{s:s}", "sub", "a");
    json_t *got = NULL;
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d, CRED_DIGEST_LEN, 1, 1000, &got), 0);
    cred_cache_put(cc, CRED_JWT, d, CRED_DIGEST_LEN, 1, claims, 2000, 7);
    json_decref(claims); /* the cache holds its own reference */
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d, CRED_DIGEST_LEN, 1, 1999, &got), 1);
    assert_string_equal(json_string_value(json_object_get(got, "sub")), "a");
    /* Another kind with the same digest is another credential. */
    assert_int_equal(cred_cache_get(cc, CRED_API_KEY, d, CRED_DIGEST_LEN, 1, 1999, &got), 0);
    /* Another generation (keys may have rotated): not found, and dropped. */
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d, CRED_DIGEST_LEN, 2, 1999, &got), 0);
    assert_int_equal(cred_cache_count(cc), 0);
    cred_cache_put(cc, CRED_JWT, d, CRED_DIGEST_LEN, 2, NULL, 2000, 7); /* a negative entry */
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d, CRED_DIGEST_LEN, 2, 1500, &got), 1);
    assert_null(got);
    /* At its expiry it is gone. */
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d, CRED_DIGEST_LEN, 2, 2000, &got), 0);
    cred_cache_free(cc);
}

static void
test_bounded_least_recently_used_out_first(void **state)
{
    (void)state;
    struct cred_cache *cc = cred_cache_new(3, 1 << 20);
    unsigned char d[5][CRED_DIGEST_LEN];
    char name[16];
    json_t *got;
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        digest_of(name, d[i]);
    }
    for (int i = 0; i < 3; i++)
        cred_cache_put(cc, CRED_JWT, d[i], CRED_DIGEST_LEN, 1, NULL, 9999, 0);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d[0], CRED_DIGEST_LEN, 1, 1, &got),
                     1); /* t0 used: t1 oldest */
    cred_cache_put(cc, CRED_JWT, d[3], CRED_DIGEST_LEN, 1, NULL, 9999, 0);
    assert_int_equal(cred_cache_count(cc), 3);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d[1], CRED_DIGEST_LEN, 1, 1, &got), 0);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d[0], CRED_DIGEST_LEN, 1, 1, &got), 1);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d[2], CRED_DIGEST_LEN, 1, 1, &got), 1);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d[3], CRED_DIGEST_LEN, 1, 1, &got), 1);
    cred_cache_free(cc);
    /* Bytes: each entry charged 10,000 bytes beside itself, in a budget of 25,000 + room for
     * the entries: two fit. */
    cc = cred_cache_new(100, 25000 + 2 * 200);
    for (int i = 0; i < 5; i++)
        cred_cache_put(cc, CRED_JWT, d[i], CRED_DIGEST_LEN, 1, NULL, 9999, 10000);
    assert_true(cred_cache_count(cc) <= 2);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d[4], CRED_DIGEST_LEN, 1, 1, &got), 1);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, d[0], CRED_DIGEST_LEN, 1, 1, &got), 0);
    cred_cache_free(cc);
}

static void
test_clear_drops_one_kind(void **state)
{
    (void)state;
    struct cred_cache *cc = cred_cache_new(10, 1 << 20);
    unsigned char a[CRED_DIGEST_LEN], b[CRED_DIGEST_LEN];
    json_t *got;
    digest_of("a", a);
    digest_of("b", b);
    cred_cache_put(cc, CRED_JWT, a, CRED_DIGEST_LEN, 1, NULL, 9999, 0);
    cred_cache_put(cc, CRED_API_KEY, b, CRED_DIGEST_LEN, 1, NULL, 9999, 0);
    cred_cache_clear(cc, CRED_API_KEY);
    assert_int_equal(cred_cache_get(cc, CRED_API_KEY, b, CRED_DIGEST_LEN, 1, 1, &got), 0);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, a, CRED_DIGEST_LEN, 1, 1, &got), 1);
    cred_cache_free(cc);
}

/* A token is kept under its whole text: two long tokens that differ in one byte (here the
 * last of 1,200) are two entries, and the same text given again finds its own. */
static void
test_a_token_is_found_by_its_whole_text_only(void **state)
{
    (void)state;
    struct cred_cache *cc = cred_cache_new(10, 1 << 20);
    char t1[1200], t2[1200];
    memset(t1, 'x', sizeof(t1));
    memcpy(t2, t1, sizeof(t2));
    t2[sizeof(t2) - 1] = 'y';
    json_t *c1 = json_pack("{s:s}", "sub", "one"), *got = NULL;
    cred_cache_put(cc, CRED_JWT, t1, sizeof(t1), 1, c1, 9999, 0);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, t2, sizeof(t2), 1, 1, &got), 0);
    assert_int_equal(cred_cache_get(cc, CRED_JWT, t1, sizeof(t1) - 1, 1, 1, &got), 0);
    assert_int_equal(cred_cache_get(cc, CRED_API_KEY, t1, sizeof(t1), 1, 1, &got), 0);
    char again[1200];
    memcpy(again, t1, sizeof(again));
    assert_int_equal(cred_cache_get(cc, CRED_JWT, again, sizeof(again), 1, 1, &got), 1);
    assert_ptr_equal(got, c1);
    json_decref(c1);
    cred_cache_free(cc);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_digest_is_sha256),
        cmocka_unit_test(test_found_until_it_expires_and_in_its_generation_only),
        cmocka_unit_test(test_bounded_least_recently_used_out_first),
        cmocka_unit_test(test_clear_drops_one_kind),
        cmocka_unit_test(test_a_token_is_found_by_its_whole_text_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
