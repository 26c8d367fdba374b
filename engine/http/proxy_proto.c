/* proxy_proto.c - the PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2):
 * a parser without I/O, fed the first bytes of a connection. */
#include "proxy_proto.h"

#include <string.h>

static const uint8_t v2sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                  0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Reads a decimal port ending at a space or the end: 0, or -1. No leading zero but "0". */
static int
v1_port(const char *s, size_t len, uint16_t *out)
{
    if (len == 0 || len > 5 || (len > 1 && s[0] == '0'))
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* Section 2.1: "PROXY" SP proto SP src SP dst SP sport SP dport CRLF; line[0..len) ends in CRLF. */
static int
v1_parse(const char *line, size_t len, struct proxy_proto *out)
{
    const char *p = line + 6, *end = line + len - 2; /* past "PROXY ", before CRLF */
    memset(out, 0, sizeof(*out));
    out->version = 1;
    if ((size_t)(end - p) >= 7 && memcmp(p, "UNKNOWN", 7) == 0 && (end - p == 7 || p[7] == ' '))
        return 0; /* the rest of the line is ignored (section 2.1) */
    int v6;
    if ((size_t)(end - p) >= 5 && memcmp(p, "TCP4 ", 5) == 0)
        v6 = 0;
    else if ((size_t)(end - p) >= 5 && memcmp(p, "TCP6 ", 5) == 0)
        v6 = 1;
    else
        return -1;
    p += 5;
    const char *f[4];
    size_t flen[4];
    for (int i = 0; i < 4; i++) {
        const char *sp = i < 3 ? memchr(p, ' ', (size_t)(end - p)) : end;
        if (!sp)
            return -1;
        f[i] = p;
        flen[i] = (size_t)(sp - p);
        p = sp + (i < 3);
    }
    struct netaddr src, dst;
    uint16_t dport;
    /* The family's own spelling: no IPv4-mapped IPv6 for TCP4, no dotted quad for TCP6. */
    if (netaddr_parse(f[0], flen[0], &src) != 0 || netaddr_parse(f[1], flen[1], &dst) != 0 ||
        (memchr(f[0], ':', flen[0]) != NULL) != v6 || (memchr(f[1], ':', flen[1]) != NULL) != v6 ||
        v1_port(f[2], flen[2], &out->src_port) != 0 || v1_port(f[3], flen[3], &dport) != 0)
        return -1;
    out->has_addr = 1;
    out->src = src;
    return 0;
}

static int
v2_parse(const uint8_t *b, size_t total, struct proxy_proto *out)
{
    memset(out, 0, sizeof(*out));
    out->version = 2;
    size_t alen = total - 16;
    uint8_t cmd = b[12] & 0x0f, fam = b[13];
    if (cmd == 0x0) /* LOCAL: the proxy's own connection (a health check); the block is skipped */
        return 0;
    switch (fam) {
    case 0x00: /* UNSPEC */
    case 0x31: /* UNIX stream */
        return 0;
    case 0x11: /* TCP over IPv4: src, dst, sport, dport */
        if (alen < 12)
            return -1;
        out->src.v6 = 0;
        memcpy(out->src.a, b + 16, 4);
        out->src_port = (uint16_t)(b[24] << 8 | b[25]);
        break;
    case 0x21: { /* TCP over IPv6 */
        if (alen < 36)
            return -1;
        char text[NETADDR_TEXT_MAX];
        struct netaddr a = {.v6 = 1};
        memcpy(a.a, b + 16, 16);
        /* through the text, so an IPv4-mapped address becomes the IPv4 one */
        netaddr_text(&a, text, sizeof(text));
        if (netaddr_parse(text, strlen(text), &out->src) != 0)
            return -1;
        out->src_port = (uint16_t)(b[48] << 8 | b[49]);
        break;
    }
    default:
        return -1;
    }
    out->has_addr = 1;
    return 0;
}

int
proxy_proto_parse(const void *buf, size_t len, struct proxy_proto *out)
{
    const uint8_t *b = buf;
    if (len == 0)
        return 0;
    if (b[0] == 'P') {
        static const char sig[] = "PROXY ";
        size_t n = len < 6 ? len : 6;
        if (memcmp(b, sig, n) != 0)
            return -1;
        /* The CR is at most at index 105, so the line with its CRLF is 107 bytes at most. */
        size_t scan = len < PROXY_PROTO_V1_MAX - 1 ? len : PROXY_PROTO_V1_MAX - 1;
        for (size_t i = 6; i < scan; i++) {
            if (b[i] == '\r') {
                if (i + 1 == len)
                    return 0;
                if (b[i + 1] != '\n')
                    return -1;
                if (v1_parse((const char *)b, i + 2, out) != 0)
                    return -1;
                return (int)(i + 2);
            }
            if (b[i] < 0x20 || b[i] > 0x7e)
                return -1;
        }
        return len >= PROXY_PROTO_V1_MAX - 1 ? -1 : 0;
    }
    size_t n = len < sizeof(v2sig) ? len : sizeof(v2sig);
    if (memcmp(b, v2sig, n) != 0)
        return -1;
    if (len < 13)
        return 0;
    if ((b[12] & 0xf0) != 0x20 || (b[12] & 0x0f) > 1)
        return -1;
    if (len < 16)
        return 0;
    size_t total = 16 + ((size_t)b[14] << 8 | b[15]);
    if (total > PROXY_PROTO_V2_MAX)
        return -1;
    if (len < total)
        return 0;
    if (v2_parse(b, total, out) != 0)
        return -1;
    return (int)total;
}
