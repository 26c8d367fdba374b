/* test_realip.c - unit tests of the client address behind trusted proxies
 * (engine/http/realip.c): X-Forwarded-For and RFC 7239 Forwarded walked from the right. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "realip.h"

static char buf[4096];
static struct http_request h;

/* The client of a request with header lines `fields` ("Name: value\r\n"...) from peer, trusting
 * `trusted`; *src gets where it came from. Returns the address's text (static). */
static const char *
client(const char *trusted, const char *peer, const char *fields, enum realip_source *src)
{
    static char t[NETADDR_TEXT_MAX];
    struct cidr_list l = {0};
    char err[256];
    assert_int_equal(cidr_list_parse(trusted, &l, err, sizeof(err)), 0);
    int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n%s\r\n", fields);
    assert_true(http_parse_request(buf, (size_t)n, &h) > 0);
    struct netaddr p, out;
    assert_int_equal(netaddr_parse(peer, strlen(peer), &p), 0);
    enum realip_source s = realip_walk(&h, &l, &p, &out);
    if (src)
        *src = s;
    netaddr_text(&out, t, sizeof(t));
    cidr_list_free(&l);
    return t;
}

#define LB "127.0.0.1/32,10.0.0.0/8"

static void
test_xff_rightmost_untrusted_wins_over_spoofed_left_entries(void **state)
{
    enum realip_source s;
    (void)state;
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: 203.0.113.5\r\n", &s),
                        "203.0.113.5");
    assert_int_equal(s, REALIP_XFF);
    /* The caller wrote 1.1.1.1 itself; the proxy appended what it saw. */
    assert_string_equal(
        client(LB, "127.0.0.1", "X-Forwarded-For: 1.1.1.1, 203.0.113.5, 10.0.0.3\r\n", NULL),
        "203.0.113.5");
    /* Several lines are one list, in order. */
    assert_string_equal(client(LB, "127.0.0.1",
                               "X-Forwarded-For: 1.1.1.1\r\n"
                               "X-Forwarded-For: 198.51.100.2, 10.0.0.9\r\n",
                               NULL),
                        "198.51.100.2");
    assert_string_equal(client(LB, "127.0.0.1",
                               "X-Forwarded-For: 198.51.100.2\r\n"
                               "x-forwarded-for: 10.0.0.9,10.0.0.8\r\n",
                               NULL),
                        "198.51.100.2");
}

static void
test_xff_all_trusted_chain_gives_leftmost(void **state)
{
    (void)state;
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: 10.1.1.1, 10.2.2.2\r\n", NULL),
                        "10.1.1.1");
}

static void
test_xff_first_untrusted_hop_is_the_client(void **state)
{
    /* 10.0.0.3 is not in this list: it is the client, whatever stands left of it. */
    (void)state;
    assert_string_equal(
        client("192.0.2.0/24", "127.0.0.1", "X-Forwarded-For: 1.1.1.1, 10.0.0.3\r\n", NULL),
        "10.0.0.3");
}

static void
test_xff_ipv6_and_ports(void **state)
{
    (void)state;
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: 2001:db8::1\r\n", NULL),
                        "2001:db8::1");
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: [2001:db8::2]:4711\r\n", NULL),
                        "2001:db8::2");
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: 203.0.113.5:8080\r\n", NULL),
                        "203.0.113.5");
    assert_string_equal(client(LB ","
                                  "fd00::/8",
                               "::1", "X-Forwarded-For: 2001:db8::3, fd00::1\r\n", NULL),
                        "2001:db8::3");
}

static void
test_xff_garbage_stops_at_the_last_good_address(void **state)
{
    enum realip_source s;
    (void)state;
    /* Garbage right behind the peer: the peer stays the client. */
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: 1.1.1.1, bogus\r\n", &s),
                        "127.0.0.1");
    assert_int_equal(s, REALIP_PEER);
    /* Garbage behind a trusted hop: that hop is the last good address. */
    assert_string_equal(
        client(LB, "127.0.0.1", "X-Forwarded-For: 1.1.1.1, unknown, 10.0.0.7\r\n", NULL),
        "10.0.0.7");
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: 1.2.3.4:99999\r\n", NULL),
                        "127.0.0.1");
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: [1.2.3.4]\r\n", NULL),
                        "127.0.0.1");
    /* Empty elements are no entries (RFC 9110 section 5.6.1). */
    assert_string_equal(client(LB, "127.0.0.1", "X-Forwarded-For: , 203.0.113.5 ,,\r\n", NULL),
                        "203.0.113.5");
}

static void
test_forwarded_rfc7239_s4_quoted_ipv6_ports(void **state)
{
    enum realip_source s;
    (void)state;
    assert_string_equal(client(LB, "127.0.0.1", "Forwarded: for=192.0.2.60;proto=http\r\n", &s),
                        "192.0.2.60");
    assert_int_equal(s, REALIP_FORWARDED);
    assert_string_equal(
        client(LB, "127.0.0.1", "Forwarded: For=\"[2001:db8:cafe::17]:4711\"\r\n", NULL),
        "2001:db8:cafe::17");
    assert_string_equal(client(LB, "127.0.0.1", "Forwarded: for=\"192.0.2.43:47011\"\r\n", NULL),
                        "192.0.2.43");
    /* A list: spoofed left, proxies right (RFC 7239 section 7.4's example chain). */
    assert_string_equal(client(LB, "127.0.0.1",
                               "Forwarded: for=6.6.6.6, for=192.0.2.43;by=10.0.0.1, "
                               "for=10.0.0.2;proto=https\r\n",
                               NULL),
                        "192.0.2.43");
    /* Quoted strings may hold the separators. */
    assert_string_equal(
        client(LB, "127.0.0.1", "Forwarded: for=192.0.2.1;host=\"a,b;c\", for=10.0.0.2\r\n", NULL),
        "192.0.2.1");
}

static void
test_forwarded_unknown_and_obfuscated_end_the_walk(void **state)
{
    (void)state;
    assert_string_equal(client(LB, "127.0.0.1", "Forwarded: for=1.1.1.1, for=unknown\r\n", NULL),
                        "127.0.0.1");
    assert_string_equal(
        client(LB, "127.0.0.1", "Forwarded: for=1.1.1.1, for=_hidden, for=10.0.0.5\r\n", NULL),
        "10.0.0.5");
    /* An element without for= is no address either. */
    assert_string_equal(client(LB, "127.0.0.1", "Forwarded: for=1.1.1.1, by=10.0.0.1\r\n", NULL),
                        "127.0.0.1");
}

static void
test_forwarded_malformed_stops_at_the_last_good_address(void **state)
{
    (void)state;
    assert_string_equal(client(LB, "127.0.0.1", "Forwarded: for=\"1.1.1.1\r\n", NULL), "127.0.0.1");
    assert_string_equal(client(LB, "127.0.0.1", "Forwarded: for\r\n", NULL), "127.0.0.1");
    assert_string_equal(client(LB, "127.0.0.1", "Forwarded: for=1.1.1.1;for=2.2.2.2\r\n", NULL),
                        "127.0.0.1");
    /* A bad line right of good ones stops there; a later good line is still walked first. */
    assert_string_equal(client(LB, "127.0.0.1",
                               "Forwarded: for=1.1.1.1\r\n"
                               "Forwarded: for=10.0.0.4 x\r\n",
                               NULL),
                        "127.0.0.1");
    assert_string_equal(client(LB, "127.0.0.1",
                               "Forwarded: for=1.1.1.1 x\r\n"
                               "Forwarded: for=10.0.0.4\r\n",
                               NULL),
                        "10.0.0.4");
}

static void
test_xff_wins_over_forwarded(void **state)
{
    (void)state;
    assert_string_equal(client(LB, "127.0.0.1",
                               "Forwarded: for=192.0.2.9\r\n"
                               "X-Forwarded-For: 198.51.100.1\r\n",
                               NULL),
                        "198.51.100.1");
    /* Without either, the peer. */
    enum realip_source s;
    assert_string_equal(client(LB, "10.0.0.1", "Accept: */*\r\n", &s), "10.0.0.1");
    assert_int_equal(s, REALIP_PEER);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xff_rightmost_untrusted_wins_over_spoofed_left_entries),
        cmocka_unit_test(test_xff_all_trusted_chain_gives_leftmost),
        cmocka_unit_test(test_xff_first_untrusted_hop_is_the_client),
        cmocka_unit_test(test_xff_ipv6_and_ports),
        cmocka_unit_test(test_xff_garbage_stops_at_the_last_good_address),
        cmocka_unit_test(test_forwarded_rfc7239_s4_quoted_ipv6_ports),
        cmocka_unit_test(test_forwarded_unknown_and_obfuscated_end_the_walk),
        cmocka_unit_test(test_forwarded_malformed_stops_at_the_last_good_address),
        cmocka_unit_test(test_xff_wins_over_forwarded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
