/* test_redis_sentinel.c - redis+sentinel:// URLs: the forms REDIS_URL accepts and those it refuses.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "redis_sentinel.h"
#include "store_redis.h"

static void
test_several_sentinels_name_and_db(void **state)
{
    struct redis_sentinel_url u;
    char err[256] = "";

    assert_int_equal(redis_sentinel_parse_url(
                         "redis+sentinel://10.0.0.1:26380,sentinel-b:5000,[::1]:26381/mymaster/3",
                         &u, err, sizeof(err)),
                     0);
    assert_int_equal(u.n, 3);
    assert_string_equal(u.sentinels[0].host, "10.0.0.1");
    assert_int_equal(u.sentinels[0].port, 26380);
    assert_string_equal(u.sentinels[1].host, "sentinel-b");
    assert_int_equal(u.sentinels[1].port, 5000);
    assert_string_equal(u.sentinels[2].host, "::1");
    assert_int_equal(u.sentinels[2].port, 26381);
    assert_string_equal(u.master_name, "mymaster");
    assert_int_equal(u.master.db, 3);
    assert_false(u.master.has_password);
    assert_string_equal(u.master.host, ""); /* the sentinels say where it is */
}

static void
test_port_defaults_to_sentinels_26379(void **state)
{
    struct redis_sentinel_url u;
    char err[256] = "";

    assert_int_equal(
        redis_sentinel_parse_url("redis+sentinel://a,[fe80::1],b:1/m", &u, err, sizeof(err)), 0);
    assert_int_equal(u.n, 3);
    assert_int_equal(u.sentinels[0].port, 26379);
    assert_string_equal(u.sentinels[1].host, "fe80::1");
    assert_int_equal(u.sentinels[1].port, 26379);
    assert_int_equal(u.sentinels[2].port, 1);
    assert_int_equal(u.master.db, 0);
}

static void
test_password_and_user_apply_to_the_master(void **state)
{
    struct redis_sentinel_url u;
    char err[256] = "";

    assert_int_equal(
        redis_sentinel_parse_url("redis+sentinel://s%40cret@h1:1,h2:2/main", &u, err, sizeof(err)),
        0);
    assert_true(u.master.has_password);
    assert_false(u.master.has_user);
    assert_string_equal(u.master.password, "s@cret");
    assert_int_equal(u.n, 2);
    assert_string_equal(u.sentinels[0].host, "h1");

    assert_int_equal(
        redis_sentinel_parse_url("redis+sentinel://app:pw@h1/main/2", &u, err, sizeof(err)), 0);
    assert_true(u.master.has_user);
    assert_string_equal(u.master.user, "app");
    assert_string_equal(u.master.password, "pw");
    assert_int_equal(u.master.db, 2);
}

static void
test_refused_forms(void **state)
{
    static const char *bad[] = {
        "redis://h:1/0",               /* not a sentinel URL */
        "redis+sentinel://h:1",        /* no master name */
        "redis+sentinel://h:1/",       /* empty master name */
        "redis+sentinel:///m",         /* no sentinel */
        "redis+sentinel://h:1,/m",     /* an empty address */
        "redis+sentinel://,h:1/m",     /* an empty address */
        "redis+sentinel://h:99999/m",  /* bad port */
        "redis+sentinel://h:1/m/x",    /* the db is not a number */
        "redis+sentinel://h:1/m/1/2",  /* more path */
        "redis+sentinel://h:1/m?x=1",  /* a query */
        "redis+sentinel://p%zz@h:1/m", /* bad percent-encoding */
        "redis+sentinel://h:1,[::1/m", /* an unclosed IPv6 address */
        "redis+sentinel://h:1:2/m",    /* text after the port */
    };
    struct redis_sentinel_url u;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        if (redis_sentinel_parse_url(bad[i], &u, err, sizeof(err)) != -1)
            fail_msg("accepted %s", bad[i]);
        assert_true(err[0] != '\0');
    }
}

static void
test_more_than_sixteen_sentinels_refused(void **state)
{
    char url[512] = "redis+sentinel://";
    struct redis_sentinel_url u;
    char err[256];

    for (int i = 0; i < REDIS_SENTINEL_MAX + 1; i++)
        snprintf(url + strlen(url), sizeof(url) - strlen(url), "%sh%d:1", i ? "," : "", i);
    strcat(url, "/m");
    assert_int_equal(redis_sentinel_parse_url(url, &u, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "more than"));
}

/* REDIS_URL is checked at start with store_redis_check_url(): both schemes pass. */
static void
test_store_accepts_both_schemes(void **state)
{
    char err[256];

    assert_int_equal(store_redis_check_url("redis+sentinel://127.0.0.1:1/m", err, sizeof(err)), 0);
    assert_int_equal(store_redis_check_url("redis://127.0.0.1:1/0", err, sizeof(err)), 0);
    assert_int_equal(store_redis_check_url("redis+sentinel://127.0.0.1:1", err, sizeof(err)), -1);
    assert_true(redis_sentinel_is_url("redis+sentinel://x/m"));
    assert_false(redis_sentinel_is_url("redis://x"));
    assert_false(redis_sentinel_is_url(NULL));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_several_sentinels_name_and_db),
        cmocka_unit_test(test_port_defaults_to_sentinels_26379),
        cmocka_unit_test(test_password_and_user_apply_to_the_master),
        cmocka_unit_test(test_refused_forms),
        cmocka_unit_test(test_more_than_sixteen_sentinels_refused),
        cmocka_unit_test(test_store_accepts_both_schemes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
