/* test_proxy_proto.c - unit tests of the PROXY protocol parser (engine/http/proxy_proto.c),
 * against HAProxy's proxy-protocol.txt. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "proxy_proto.h"

static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static int
parse_str(const char *s, struct proxy_proto *pp)
{
    return proxy_proto_parse(s, strlen(s), pp);
}

static const char *
src_text(const struct proxy_proto *pp)
{
    static char t[NETADDR_TEXT_MAX];
    netaddr_text(&pp->src, t, sizeof(t));
    return t;
}

/* A v2 header into b: ver_cmd, fam, then the address block (alen bytes) and tlv bytes of TLVs. */
static size_t
v2(uint8_t *b, uint8_t ver_cmd, uint8_t fam, const uint8_t *addr, size_t alen, size_t tlv)
{
    memcpy(b, sig, 12);
    b[12] = ver_cmd;
    b[13] = fam;
    size_t len = alen + tlv;
    b[14] = (uint8_t)(len >> 8);
    b[15] = (uint8_t)len;
    if (alen)
        memcpy(b + 16, addr, alen);
    memset(b + 16 + alen, 0xAB, tlv);
    return 16 + len;
}

static void
test_v1_s2_1_tcp4_tcp6_unknown(void **state)
{
    struct proxy_proto pp;
    (void)state;
    const char *l = "PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
    assert_int_equal(parse_str(l, &pp), 41);
    assert_int_equal(pp.version, 1);
    assert_int_equal(pp.has_addr, 1);
    assert_string_equal(src_text(&pp), "192.0.2.7");
    assert_int_equal(pp.src_port, 56324);
    assert_int_equal(parse_str("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n", &pp), 36);
    assert_string_equal(src_text(&pp), "2001:db8::1");
    assert_int_equal(parse_str("PROXY UNKNOWN\r\n", &pp), 15);
    assert_int_equal(pp.has_addr, 0);
    assert_int_equal(parse_str("PROXY UNKNOWN ffff::1 ::1 1 2\r\n", &pp), 31);
    assert_int_equal(pp.has_addr, 0);
}

static void
test_v1_s2_1_malformed(void **state)
{
    struct proxy_proto pp;
    (void)state;
    assert_int_equal(parse_str("PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\n", &pp), -1);
    assert_int_equal(parse_str("PROXY TCP4 192.0.2.7  10.0.0.1 56324 443\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY TCP6 192.0.2.7 10.0.0.1 1 2\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY TCP4 192.0.2.7 10.0.0.1 01 2\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY TCP4 192.0.2.7 10.0.0.1 1 2 3\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY TCP4 bogus 10.0.0.1 1 2\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXY \x01\r\n", &pp), -1);
}

static void
test_v1_s2_1_truncated_and_oversized(void **state)
{
    struct proxy_proto pp;
    char line[256];
    (void)state;
    const char *full = "PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n";
    for (size_t n = 1; n < strlen(full); n++)
        assert_int_equal(proxy_proto_parse(full, n, &pp), 0); /* every prefix waits */
    /* 107 bytes is the most a line may take: one longer never ends. */
    memset(line, 0, sizeof(line));
    strcpy(line, "PROXY UNKNOWN ");
    memset(line + 14, 'x', 91);
    memcpy(line + 105, "\r\n", 2);
    assert_int_equal(proxy_proto_parse(line, 107, &pp), 107);
    memset(line + 14, 'x', 92);
    memcpy(line + 106, "\r\n", 2);
    assert_int_equal(proxy_proto_parse(line, 106, &pp), -1);
    assert_int_equal(proxy_proto_parse(line, 108, &pp), -1);
    memset(line + 14, 'x', 200);
    assert_int_equal(proxy_proto_parse(line, 105, &pp), 0);
    assert_int_equal(proxy_proto_parse(line, 200, &pp), -1);
}

static void
test_wrong_signature_closes(void **state)
{
    struct proxy_proto pp;
    uint8_t b[32];
    (void)state;
    assert_int_equal(parse_str("GET / HTTP/1.1\r\n", &pp), -1);
    assert_int_equal(parse_str("PROXZ", &pp), -1);
    assert_int_equal(parse_str("proxy TCP4 1.1.1.1 1.1.1.1 1 1\r\n", &pp), -1);
    memcpy(b, sig, 12);
    b[7] = 'q';
    assert_int_equal(proxy_proto_parse(b, 12, &pp), -1);
    assert_int_equal(proxy_proto_parse(b, 7, &pp), 0); /* a prefix of the signature waits */
    assert_int_equal(proxy_proto_parse("\r\n\r\n", 4, &pp), 0);
    assert_int_equal(proxy_proto_parse("\r\n\r\r", 4, &pp), -1);
}

static void
test_v2_s2_2_inet_inet6_and_tlvs_skipped(void **state)
{
    struct proxy_proto pp;
    uint8_t b[PROXY_PROTO_V2_MAX + 64];
    (void)state;
    const uint8_t a4[12] = {192, 0, 2, 9, 10, 0, 0, 1, 0x1F, 0x90, 0x01, 0xBB};
    size_t n = v2(b, 0x21, 0x11, a4, sizeof(a4), 0);
    memcpy(b + n, "GET", 3);
    assert_int_equal(proxy_proto_parse(b, n + 3, &pp), (int)n);
    assert_int_equal(pp.version, 2);
    assert_int_equal(pp.has_addr, 1);
    assert_string_equal(src_text(&pp), "192.0.2.9");
    assert_int_equal(pp.src_port, 8080);
    uint8_t a6[36] = {0x20, 0x01, 0x0d, 0xb8, [15] = 0x05, [31] = 1, [32] = 0x12, [33] = 0x34};
    n = v2(b, 0x21, 0x21, a6, sizeof(a6), 40); /* TLVs after the addresses */
    assert_int_equal(proxy_proto_parse(b, n, &pp), (int)n);
    assert_string_equal(src_text(&pp), "2001:db8::5");
    assert_int_equal(pp.src_port, 0x1234);
    /* An IPv4-mapped IPv6 source is the IPv4 address. */
    uint8_t m6[36] = {[10] = 0xff, [11] = 0xff, [12] = 198, [13] = 51, [14] = 100, [15] = 4};
    n = v2(b, 0x21, 0x21, m6, sizeof(m6), 0);
    assert_int_equal(proxy_proto_parse(b, n, &pp), (int)n);
    assert_string_equal(src_text(&pp), "198.51.100.4");
}

static void
test_v2_s2_2_local_and_unspec_keep_the_peer(void **state)
{
    struct proxy_proto pp;
    uint8_t b[128];
    const uint8_t a4[12] = {192, 0, 2, 9, 10, 0, 0, 1, 0, 1, 0, 2};
    (void)state;
    size_t n = v2(b, 0x20, 0x11, a4, sizeof(a4), 0); /* LOCAL: addresses ignored */
    assert_int_equal(proxy_proto_parse(b, n, &pp), (int)n);
    assert_int_equal(pp.has_addr, 0);
    n = v2(b, 0x20, 0x00, NULL, 0, 0);
    assert_int_equal(proxy_proto_parse(b, n, &pp), 16);
    assert_int_equal(pp.has_addr, 0);
    n = v2(b, 0x21, 0x00, NULL, 0, 0); /* PROXY, AF_UNSPEC */
    assert_int_equal(proxy_proto_parse(b, n, &pp), 16);
    assert_int_equal(pp.has_addr, 0);
}

static void
test_v2_s2_2_malformed_truncated_oversized(void **state)
{
    struct proxy_proto pp;
    static uint8_t b[PROXY_PROTO_V2_MAX + 64];
    const uint8_t a4[12] = {192, 0, 2, 9, 10, 0, 0, 1, 0, 1, 0, 2};
    (void)state;
    size_t n = v2(b, 0x21, 0x11, a4, sizeof(a4), 0);
    for (size_t k = 1; k < n; k++)
        assert_int_equal(proxy_proto_parse(b, k, &pp), 0); /* truncated: waits */
    b[12] = 0x11;                                          /* version 1 in binary */
    assert_int_equal(proxy_proto_parse(b, n, &pp), -1);
    b[12] = 0x22; /* command 2 */
    assert_int_equal(proxy_proto_parse(b, n, &pp), -1);
    n = v2(b, 0x21, 0x11, a4, 8, 0); /* an IPv4 block shorter than 12 bytes */
    assert_int_equal(proxy_proto_parse(b, n, &pp), -1);
    n = v2(b, 0x21, 0x21, a4, 12, 0); /* an IPv6 family with an IPv4-sized block */
    assert_int_equal(proxy_proto_parse(b, n, &pp), -1);
    n = v2(b, 0x21, 0x12, a4, 12, 0); /* UDP */
    assert_int_equal(proxy_proto_parse(b, n, &pp), -1);
    n = v2(b, 0x21, 0x41, a4, 12, 0); /* no such family */
    assert_int_equal(proxy_proto_parse(b, n, &pp), -1);
    /* At most PROXY_PROTO_V2_MAX bytes; the length alone decides, before the bytes come. */
    n = v2(b, 0x21, 0x11, a4, 12, PROXY_PROTO_V2_MAX - 16 - 12);
    assert_int_equal(proxy_proto_parse(b, n, &pp), (int)n);
    n = v2(b, 0x21, 0x11, a4, 12, PROXY_PROTO_V2_MAX - 16 - 12 + 1);
    assert_int_equal(proxy_proto_parse(b, 16, &pp), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_s2_1_tcp4_tcp6_unknown),
        cmocka_unit_test(test_v1_s2_1_malformed),
        cmocka_unit_test(test_v1_s2_1_truncated_and_oversized),
        cmocka_unit_test(test_wrong_signature_closes),
        cmocka_unit_test(test_v2_s2_2_inet_inet6_and_tlvs_skipped),
        cmocka_unit_test(test_v2_s2_2_local_and_unspec_keep_the_peer),
        cmocka_unit_test(test_v2_s2_2_malformed_truncated_oversized),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
