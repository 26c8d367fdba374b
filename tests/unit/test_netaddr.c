/* test_netaddr.c - unit tests of addresses, their keys and CIDR lists (engine/common/netaddr.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "netaddr.h"

static struct netaddr
addr(const char *s)
{
    struct netaddr a;
    assert_int_equal(netaddr_parse(s, strlen(s), &a), 0);
    return a;
}

static bool
in(const char *list, const char *a)
{
    struct cidr_list l = {0};
    char err[256];
    assert_int_equal(cidr_list_parse(list, &l, err, sizeof(err)), 0);
    struct netaddr x = addr(a);
    bool r = cidr_list_match(&l, &x);
    cidr_list_free(&l);
    return r;
}

static const char *
parse_error(const char *list)
{
    static char err[256];
    struct cidr_list l = {0};
    err[0] = '\0';
    assert_int_equal(cidr_list_parse(list, &l, err, sizeof(err)), -1);
    assert_null(l.v);
    return err;
}

static void
test_parse_is_strict_and_maps_ipv4_in_ipv6(void **state)
{
    struct netaddr a;
    char t[NETADDR_TEXT_MAX];
    (void)state;
    assert_int_equal(netaddr_parse("192.0.2.1", 9, &a), 0);
    assert_int_equal(a.v6, 0);
    assert_int_equal(netaddr_parse("192.0.2.1 ", 10, &a), -1);
    assert_int_equal(netaddr_parse("192.0.2", 7, &a), -1);
    assert_int_equal(netaddr_parse("", 0, &a), -1);
    assert_int_equal(netaddr_parse("1.2.3.4:80", 10, &a), -1);
    assert_int_equal(netaddr_parse("[::1]", 5, &a), -1);
    assert_int_equal(netaddr_parse("unknown", 7, &a), -1);
    a = addr("::ffff:10.1.2.3");
    assert_int_equal(a.v6, 0);
    netaddr_text(&a, t, sizeof(t));
    assert_string_equal(t, "10.1.2.3");
    /* IPv4 text is formatted by hand: every digit count round-trips. */
    const char *v4[] = {"0.9.10.255", "100.99.1.0", "255.255.255.255", "0.0.0.0", "10.200.30.4"};
    for (size_t i = 0; i < sizeof(v4) / sizeof(v4[0]); i++) {
        a = addr(v4[i]);
        assert_int_equal(netaddr_text(&a, t, sizeof(t)), strlen(v4[i]));
        assert_string_equal(t, v4[i]);
    }
    a = addr("2001:DB8:0:0::1");
    netaddr_text(&a, t, sizeof(t));
    assert_string_equal(t, "2001:db8::1");
}

static void
test_key_cuts_ipv6_to_its_prefix(void **state)
{
    char k[NETADDR_KEY_MAX];
    (void)state;
    struct netaddr a = addr("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
    netaddr_key(&a, 64, k, sizeof(k));
    assert_string_equal(k, "2001:db8:1:2::/64");
    struct netaddr b = addr("2001:db8:1:2::9");
    char k2[NETADDR_KEY_MAX];
    netaddr_key(&b, 64, k2, sizeof(k2));
    assert_string_equal(k, k2); /* one /64, one key */
    netaddr_key(&a, 48, k, sizeof(k));
    assert_string_equal(k, "2001:db8:1::/48");
    netaddr_key(&a, 128, k, sizeof(k));
    assert_string_equal(k, "2001:db8:1:2:aaaa:bbbb:cccc:dddd");
    a = addr("203.0.113.77");
    netaddr_key(&a, 64, k, sizeof(k));
    assert_string_equal(k, "203.0.113.77");
}

static void
test_cidr_match_ipv4_ipv6_and_hosts(void **state)
{
    (void)state;
    assert_true(in("10.0.0.0/8", "10.255.1.2"));
    assert_false(in("10.0.0.0/8", "11.0.0.1"));
    assert_true(in("192.168.4.0/22", "192.168.7.255"));
    assert_false(in("192.168.4.0/22", "192.168.8.0"));
    assert_true(in("127.0.0.1", "127.0.0.1"));
    assert_false(in("127.0.0.1", "127.0.0.2"));
    assert_true(in("0.0.0.0/0", "8.8.8.8"));
    assert_false(in("0.0.0.0/0", "::1")); /* families do not mix */
    assert_true(in("2001:db8::/32", "2001:db8:ffff::1"));
    assert_false(in("2001:db8::/32", "2001:db9::1"));
    assert_true(in("fc00::/7", "fdff::1"));
    assert_true(in(" 10.0.0.0/8 , ::1 ", "::1"));
    assert_true(in("::ffff:10.0.0.0/104", "10.9.9.9")); /* an IPv4-mapped range is IPv4 */
    assert_true(in("10.0.0.0/8", "::ffff:10.0.0.1"));   /* a mapped peer matches the IPv4 range */
}

static void
test_cidr_list_errors_name_the_item(void **state)
{
    (void)state;
    assert_non_null(strstr(parse_error("10.0.0.0/8,bogus"), "'bogus'"));
    assert_non_null(strstr(parse_error("10.0.0.0/33"), "'10.0.0.0/33'"));
    assert_non_null(strstr(parse_error("::/129"), "'::/129'"));
    assert_non_null(strstr(parse_error("10.0.0.1/8"), "10.0.0.0/8"));
    assert_non_null(strstr(parse_error("fd00::/7"), "fc00::/7"));
    assert_non_null(strstr(parse_error("10.0.0.0/"), "'10.0.0.0/'"));
    assert_non_null(strstr(parse_error("10.0.0.0/8x"), "'10.0.0.0/8x'"));
    assert_non_null(strstr(parse_error("10.0.0.0/8,,::1"), "item 2 is empty"));
    assert_non_null(strstr(parse_error(""), "item 1 is empty"));
    assert_non_null(strstr(parse_error("300.1.1.1"), "'300.1.1.1'"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_is_strict_and_maps_ipv4_in_ipv6),
        cmocka_unit_test(test_key_cuts_ipv6_to_its_prefix),
        cmocka_unit_test(test_cidr_match_ipv4_ipv6_and_hosts),
        cmocka_unit_test(test_cidr_list_errors_name_the_item),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
