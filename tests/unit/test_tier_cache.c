/* test_tier_cache.c - unit tests of the per-worker tier cache (engine/gateway/tier_cache.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "tier_cache.h"

/* The tier cached for user at now_ms, or NULL. */
static const char *
get(struct tier_cache *tc, const char *user, uint64_t now_ms)
{
    const char *tier = NULL;
    size_t len = 0;
    if (!tier_cache_get(tc, user, strlen(user), now_ms, &tier, &len))
        return NULL;
    assert_int_equal(strlen(tier), len);
    return tier;
}

static void
put(struct tier_cache *tc, const char *user, const char *tier, uint64_t expires_ms)
{
    tier_cache_put(tc, user, strlen(user), tier, strlen(tier), expires_ms);
}

static void
test_get_put_expire(void **state)
{
    struct tier_cache *tc = tier_cache_new(10);

    assert_null(get(tc, "alice", 0));
    put(tc, "alice", "gold", 100);
    put(tc, "bob", "", 100); /* no tier: the default */
    assert_string_equal(get(tc, "alice", 99), "gold");
    assert_string_equal(get(tc, "bob", 99), "");
    assert_null(get(tc, "alic", 0));
    assert_null(get(tc, "alice2", 0));
    assert_null(get(tc, "alice", 100)); /* expired */
    put(tc, "alice", "silver", 200);    /* replaced */
    assert_string_equal(get(tc, "alice", 150), "silver");
    /* Users are bytes: a NUL inside is part of the name. */
    tier_cache_put(tc, "c\0d", 3, "x", 1, 100);
    assert_null(get(tc, "c", 0));
    const char *t;
    size_t n;
    assert_int_equal(tier_cache_get(tc, "c\0d", 3, 0, &t, &n), 1);
    assert_string_equal(t, "x");
    tier_cache_free(tc);
}

/* A tier name too long for any policy is not cached (an older entry stays). */
static void
test_long_tier(void **state)
{
    struct tier_cache *tc = tier_cache_new(10);
    char tier[64];

    memset(tier, 't', sizeof(tier) - 1);
    tier[sizeof(tier) - 1] = '\0';
    put(tc, "alice", tier, 100);
    assert_null(get(tc, "alice", 0));
    put(tc, "alice", "gold", 100);
    put(tc, "alice", tier, 100);
    assert_string_equal(get(tc, "alice", 0), "gold");
    tier[31] = '\0'; /* 31 bytes fit */
    put(tc, "alice", tier, 100);
    assert_string_equal(get(tc, "alice", 0), tier);
    tier_cache_free(tc);
}

/* Full: a new user empties the cache first; updating a cached user does not. */
static void
test_full_starts_over(void **state)
{
    struct tier_cache *tc = tier_cache_new(100);
    char user[32];

    for (int i = 0; i < 100; i++) {
        snprintf(user, sizeof(user), "user%d", i);
        put(tc, user, "gold", 1000);
    }
    for (int i = 0; i < 100; i++) {
        snprintf(user, sizeof(user), "user%d", i);
        assert_string_equal(get(tc, user, 0), "gold");
        put(tc, user, "silver", 1000);
    }
    assert_string_equal(get(tc, "user0", 0), "silver");
    put(tc, "newcomer", "bronze", 1000);
    assert_string_equal(get(tc, "newcomer", 0), "bronze");
    for (int i = 0; i < 100; i++) {
        snprintf(user, sizeof(user), "user%d", i);
        assert_null(get(tc, user, 0));
    }
    tier_cache_free(tc);
    tier_cache_free(NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_put_expire),
        cmocka_unit_test(test_long_tier),
        cmocka_unit_test(test_full_starts_over),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
