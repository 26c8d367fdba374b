/* realip.c - the client address of a request that came through trusted proxies: the
 * X-Forwarded-For or Forwarded entries walked from the right past trusted addresses. */
#include "realip.h"

#include <string.h>
#include <strings.h>

/* The most elements of one Forwarded line that are walked; a longer line ends the walk. */
#define FWD_MAX 64

/* Whether s[0..len) is a port: 1 to 5 digits, at most 65535. */
static int
is_port(const char *s, size_t len)
{
    unsigned v = 0;
    if (len < 1 || len > 5)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    return v <= 65535;
}

int
realip_node(const char *s, size_t len, struct netaddr *out)
{
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close)
            return -1;
        size_t alen = (size_t)(close - s) - 1;
        size_t rest = len - (size_t)(close - s) - 1;
        if (rest > 0 && (close[1] != ':' || !is_port(close + 2, rest - 1)))
            return -1;
        struct netaddr a;
        if (netaddr_parse(s + 1, alen, &a) != 0 || memchr(s + 1, ':', alen) == NULL)
            return -1;
        *out = a;
        return 0;
    }
    if (netaddr_parse(s, len, out) == 0)
        return 0;
    /* "a.b.c.d:port": one colon, digits after it. */
    const char *colon = memchr(s, ':', len);
    if (!colon || memchr(colon + 1, ':', len - (size_t)(colon - s) - 1))
        return -1;
    if (!is_port(colon + 1, len - (size_t)(colon - s) - 1))
        return -1;
    struct netaddr a;
    if (netaddr_parse(s, (size_t)(colon - s), &a) != 0 || a.v6)
        return -1;
    *out = a;
    return 0;
}

static int
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* One step of the walk. Returns 1 to go on left, 0 when the walk has ended. */
static int
step(const struct cidr_list *trusted, const struct netaddr *a, struct netaddr *out)
{
    *out = *a;
    return cidr_list_match(trusted, a);
}

static int
name_is(const struct http_header *f, const char *name, size_t n)
{
    return f->name.len == n && strncasecmp(f->name.p, name, n) == 0;
}

/* Walks the X-Forwarded-For entries. Returns 1 when every entry was trusted (or none seen). */
static int
walk_xff(const struct http_request *h, const struct cidr_list *trusted, struct netaddr *out)
{
    for (size_t i = h->nheaders; i-- > 0;) {
        const struct http_header *f = &h->headers[i];
        if (!name_is(f, "x-forwarded-for", 15))
            continue;
        const char *v = f->value.p, *e = v + f->value.len;
        while (e > v) {
            const char *b = e;
            while (b > v && b[-1] != ',')
                b--;
            const char *next = b > v ? b - 1 : v; /* the comma, or the start */
            const char *x = b, *y = e;
            while (x < y && is_ows(*x))
                x++;
            while (y > x && is_ows(y[-1]))
                y--;
            e = next;
            if (x == y)
                continue; /* an empty element */
            struct netaddr a;
            if (realip_node(x, (size_t)(y - x), &a) != 0 || !step(trusted, &a, out))
                return 0;
        }
    }
    return 1;
}

/* One for= node of a Forwarded element, or its absence. */
struct fwd_node {
    int ok; /* 1: an address in a; 0: no usable node (absent, unknown, obfuscated, bad) */
    struct netaddr a;
};

/*
 * Reads a Forwarded value (token or quoted-string) at *pp (before end) into buf (cap bytes,
 * unescaped). Returns its length, or -1 when malformed or too long.
 */
static long
fwd_value(const char **pp, const char *end, char *buf, size_t cap)
{
    const char *p = *pp;
    size_t n = 0;
    if (p < end && *p == '"') {
        p++;
        for (;;) {
            if (p == end)
                return -1;
            char c = *p++;
            if (c == '"')
                break;
            if (c == '\\') {
                if (p == end)
                    return -1;
                c = *p++;
            }
            if (n == cap)
                return -1;
            buf[n++] = c;
        }
    } else {
        while (p < end && *p != ';' && *p != ',' && !is_ows(*p) && *p != '"') {
            if (n == cap)
                return -1;
            buf[n++] = *p++;
        }
        if (n == 0)
            return -1;
    }
    *pp = p;
    return (long)n;
}

/*
 * Parses one Forwarded line into nodes[] (one per element, in order). Returns how many; an
 * element that cannot be read, and everything after it, becomes one node that is not ok.
 */
static size_t
fwd_parse(const char *p, const char *end, struct fwd_node *nodes, size_t cap)
{
    size_t n = 0;
    while (p < end && n < cap) {
        struct fwd_node nd = {0};
        int seen_for = 0, bad = 0, any = 0;
        /* pairs until ',' or the end */
        for (;;) {
            while (p < end && is_ows(*p))
                p++;
            if (p == end || *p == ',')
                break;
            if (*p == ';') {
                p++;
                continue;
            }
            const char *name = p;
            while (p < end && *p != '=' && *p != ';' && *p != ',' && !is_ows(*p) && *p != '"')
                p++;
            size_t nlen = (size_t)(p - name);
            if (nlen == 0 || p == end || *p != '=') {
                bad = 1;
                break;
            }
            p++;
            char val[128];
            long vlen = fwd_value(&p, end, val, sizeof(val));
            if (vlen < 0) {
                bad = 1;
                break;
            }
            any = 1;
            if (nlen == 3 && strncasecmp(name, "for", 3) == 0) {
                if (seen_for) { /* twice in one element */
                    bad = 1;
                    break;
                }
                seen_for = 1;
                nd.ok = realip_node(val, (size_t)vlen, &nd.a) == 0;
            }
            while (p < end && is_ows(*p))
                p++;
            if (p < end && *p != ';' && *p != ',') {
                bad = 1;
                break;
            }
        }
        if (bad) {
            nodes[n++] = (struct fwd_node){0};
            return n;
        }
        if (any)
            nodes[n++] = nd;
        if (p < end && *p == ',')
            p++;
    }
    if (p < end) /* more elements than are walked */
        nodes[n ? n - 1 : n++] = (struct fwd_node){0};
    return n;
}

/* Walks the Forwarded for= nodes. */
static void
walk_forwarded(const struct http_request *h, const struct cidr_list *trusted, struct netaddr *out)
{
    struct fwd_node nodes[FWD_MAX];
    for (size_t i = h->nheaders; i-- > 0;) {
        const struct http_header *f = &h->headers[i];
        if (!name_is(f, "forwarded", 9))
            continue;
        size_t n = fwd_parse(f->value.p, f->value.p + f->value.len, nodes, FWD_MAX);
        while (n-- > 0)
            if (!nodes[n].ok || !step(trusted, &nodes[n].a, out))
                return;
    }
}

enum realip_source
realip_walk(const struct http_request *h, const struct cidr_list *trusted,
            const struct netaddr *peer, struct netaddr *out)
{
    int xff = 0, fwd = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        xff |= name_is(&h->headers[i], "x-forwarded-for", 15);
        fwd |= name_is(&h->headers[i], "forwarded", 9);
    }
    *out = *peer;
    if (xff) {
        walk_xff(h, trusted, out);
        return memcmp(out, peer, sizeof(*out)) ? REALIP_XFF : REALIP_PEER;
    }
    if (fwd) {
        walk_forwarded(h, trusted, out);
        return memcmp(out, peer, sizeof(*out)) ? REALIP_FORWARDED : REALIP_PEER;
    }
    return REALIP_PEER;
}
