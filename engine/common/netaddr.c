/* netaddr.c - IP addresses as bytes, their text and key forms, and lists of CIDR ranges. */
#include "netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "util.h"

static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static void
set_v6(struct netaddr *out, const uint8_t *b)
{
    memset(out, 0, sizeof(*out));
    if (memcmp(b, v4mapped, sizeof(v4mapped)) == 0) {
        memcpy(out->a, b + 12, 4);
        return;
    }
    out->v6 = 1;
    memcpy(out->a, b, 16);
}

int
netaddr_parse(const char *s, size_t len, struct netaddr *out)
{
    char buf[NETADDR_TEXT_MAX];
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    uint8_t b[16];
    if (memchr(buf, ':', len) == NULL) {
        if (inet_pton(AF_INET, buf, b) != 1)
            return -1;
        memset(out, 0, sizeof(*out));
        memcpy(out->a, b, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, buf, b) != 1)
        return -1;
    set_v6(out, b);
    return 0;
}

int
netaddr_from_sockaddr(const struct sockaddr *sa, struct netaddr *out)
{
    if (sa->sa_family == AF_INET) {
        memset(out, 0, sizeof(*out));
        memcpy(out->a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        set_v6(out, (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr);
        return 0;
    }
    return -1;
}

size_t
netaddr_text(const struct netaddr *a, char *out, size_t cap)
{
    if (!a->v6 && cap >= 16) { /* by hand: glibc's inet_ntop formats IPv4 with sprintf */
        char *o = out;
        for (int i = 0; i < 4; i++) {
            unsigned b = a->a[i];
            if (b >= 100)
                *o++ = (char)('0' + b / 100);
            if (b >= 10)
                *o++ = (char)('0' + b / 10 % 10);
            *o++ = (char)('0' + b % 10);
            *o++ = i < 3 ? '.' : '\0';
        }
        return (size_t)(o - out - 1);
    }
    if (!inet_ntop(a->v6 ? AF_INET6 : AF_INET, a->a, out, (socklen_t)cap)) {
        if (cap)
            out[0] = '\0';
        return 0;
    }
    return strlen(out);
}

/* a with every bit past the first `bits` cleared. */
static struct netaddr
masked(const struct netaddr *a, unsigned bits)
{
    struct netaddr m = *a;
    unsigned width = a->v6 ? 128 : 32;
    for (unsigned i = bits; i < width; i++)
        m.a[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
    return m;
}

size_t
netaddr_key(const struct netaddr *a, unsigned v6_prefix, char *out, size_t cap)
{
    if (!a->v6 || v6_prefix >= 128 || v6_prefix == 0)
        return netaddr_text(a, out, cap);
    struct netaddr m = masked(a, v6_prefix);
    size_t n = netaddr_text(&m, out, cap);
    int k = snprintf(out + n, cap - n, "/%u", v6_prefix);
    return k > 0 && (size_t)k < cap - n ? n + (size_t)k : n;
}

/* Parses one item of a CIDR list, s[0..len) trimmed. Returns 0, or -1 with a message. */
static int
parse_cidr(const char *s, size_t len, struct cidr *out, char *err, size_t errlen)
{
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    if (netaddr_parse(s, alen, &out->net) != 0) {
        snprintf(err, errlen, "'%.*s' is not an IPv4 or IPv6 address with an optional /N", (int)len,
                 s);
        return -1;
    }
    /* An IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 one. */
    int mapped = !out->net.v6 && memchr(s, ':', alen) != NULL;
    unsigned width = out->net.v6 ? 128 : 32;
    unsigned bits = width;
    if (slash) {
        const char *p = slash + 1, *end = s + len;
        unsigned v = 0;
        if (p == end || end - p > 3) {
            snprintf(err, errlen, "'%.*s': the prefix length is not a number", (int)len, s);
            return -1;
        }
        for (; p < end; p++) {
            if (*p < '0' || *p > '9') {
                snprintf(err, errlen, "'%.*s': the prefix length is not a number", (int)len, s);
                return -1;
            }
            v = v * 10 + (unsigned)(*p - '0');
        }
        if (mapped) {
            if (v < 96 || v > 128) {
                snprintf(err, errlen, "'%.*s': an IPv4-mapped range needs a prefix of 96 to 128",
                         (int)len, s);
                return -1;
            }
            v -= 96;
        }
        if (v > width) {
            snprintf(err, errlen, "'%.*s': the prefix is longer than the address's %u bits",
                     (int)len, s, width);
            return -1;
        }
        bits = v;
    }
    struct netaddr m = masked(&out->net, bits);
    if (memcmp(&m, &out->net, sizeof(m)) != 0) {
        char t[NETADDR_TEXT_MAX];
        netaddr_text(&m, t, sizeof(t));
        snprintf(err, errlen, "'%.*s' has bits set past its /%u (the range is %s/%u)", (int)len, s,
                 bits, t, bits);
        return -1;
    }
    out->bits = bits;
    return 0;
}

int
cidr_list_parse(const char *s, struct cidr_list *list, char *err, size_t errlen)
{
    struct cidr_list l = {0};
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *b = p, *e = end;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (b == e) {
            snprintf(err, errlen, "item %zu is empty (expected CIDR[,CIDR...])", l.n + 1);
            goto fail;
        }
        struct cidr c;
        if (parse_cidr(b, (size_t)(e - b), &c, err, errlen) != 0)
            goto fail;
        l.v = xrealloc(l.v, (l.n + 1) * sizeof(*l.v));
        l.v[l.n++] = c;
        if (!comma)
            break;
        p = comma + 1;
    }
    *list = l;
    return 0;
fail:
    free(l.v);
    return -1;
}

bool
cidr_list_match(const struct cidr_list *list, const struct netaddr *a)
{
    for (size_t i = 0; i < list->n; i++) {
        const struct cidr *c = &list->v[i];
        if (c->net.v6 != a->v6)
            continue;
        unsigned full = c->bits / 8, rest = c->bits % 8;
        if (memcmp(c->net.a, a->a, full) != 0)
            continue;
        if (rest) {
            uint8_t mask = (uint8_t)(0xffu << (8 - rest));
            if ((c->net.a[full] ^ a->a[full]) & mask)
                continue;
        }
        return true;
    }
    return false;
}

void
cidr_list_free(struct cidr_list *list)
{
    free(list->v);
    list->v = NULL;
    list->n = 0;
}
