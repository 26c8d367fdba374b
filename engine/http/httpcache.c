/* httpcache.c - HTTP caching rules (RFC 9111) for answers of upstream apps. */
#define _GNU_SOURCE
#include "httpcache.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "util.h"

static bool
name_is_n(const struct http_str *name, const char *s, size_t n)
{
    return name->len == n && strncasecmp(name->p, s, n) == 0;
}

static bool
name_is(const struct http_str *name, const char *s)
{
    return name_is_n(name, s, strlen(s));
}

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Trims optional whitespace around p[0..*len). */
static const char *
trim(const char *p, size_t *len)
{
    while (*len && is_ows(*p)) {
        p++;
        (*len)--;
    }
    while (*len && is_ows(p[*len - 1]))
        (*len)--;
    return p;
}

/*
 * Calls fn for each element of a comma-separated list (empty ones skipped),
 * honouring quoted strings so that a comma inside quotes does not split.
 * With escapes, a backslash inside quotes escapes the next byte (a
 * quoted-string); without, it is an ordinary byte (an entity tag).
 */
static void
each_element(const char *v, size_t len, bool escapes,
             void (*fn)(const char *el, size_t ellen, void *ctx), void *ctx)
{
    size_t start = 0;
    bool quoted = false;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && v[i] == '"')
            quoted = !quoted;
        else if (escapes && i < len && v[i] == '\\' && quoted && i + 1 < len)
            i++;
        if (i == len || (v[i] == ',' && !quoted)) {
            size_t el = i - start;
            const char *p = trim(v + start, &el);
            if (el)
                fn(p, el, ctx);
            start = i + 1;
        }
    }
}

struct cc {
    bool no_store, no_cache, private_, zero;
    int64_t s_maxage, max_age; /* seconds, -1 absent */
};

/* Delta-seconds too large to represent count as this (RFC 9111 section 1.2.2). */
#define DELTA_SECONDS_MAX 2147483648LL

/* A delta-seconds value, or -1 when it is not one (then the directive is ignored). */
static int64_t
delta_seconds(const char *p, size_t len)
{
    if (len >= 2 && p[0] == '"' && p[len - 1] == '"') {
        p++;
        len -= 2;
    }
    if (len == 0)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        if (v < DELTA_SECONDS_MAX)
            v = v * 10 + (p[i] - '0');
    }
    return v < DELTA_SECONDS_MAX ? v : DELTA_SECONDS_MAX;
}

/* Keeps the smallest valid value of a directive given more than once; ignores malformed ones. */
static void
keep_smallest(int64_t *dst, int64_t v)
{
    if (v >= 0 && (*dst < 0 || v < *dst))
        *dst = v;
}

static void
cc_directive(const char *el, size_t len, void *ctx)
{
    struct cc *cc = ctx;
    const char *eq = memchr(el, '=', len);
    size_t nlen = eq ? (size_t)(eq - el) : len;
    const char *val = eq ? eq + 1 : NULL;
    size_t vlen = eq ? len - nlen - 1 : 0;
    struct http_str name = {el, nlen};
    name.p = trim(name.p, &name.len);
    if (val)
        val = trim(val, &vlen);
    if (name_is(&name, "no-store"))
        cc->no_store = true;
    else if (name_is(&name, "no-cache"))
        cc->no_cache = true; /* with or without field names: revalidation is not done here */
    else if (name_is(&name, "private"))
        cc->private_ = true;
    else if (name_is(&name, "s-maxage") && val)
        keep_smallest(&cc->s_maxage, delta_seconds(val, vlen));
    else if (name_is(&name, "max-age") && val)
        keep_smallest(&cc->max_age, delta_seconds(val, vlen));
}

struct vary {
    char *out;
    size_t cap, len;
    bool star, overflow;
};

static void
vary_name(const char *el, size_t len, void *ctx)
{
    struct vary *v = ctx;
    if (len == 1 && el[0] == '*') {
        v->star = true;
        return;
    }
    /* Skip a name already listed (case-insensitively). */
    for (size_t i = 0; i < v->len;) {
        size_t j = i;
        while (j < v->len && v->out[j] != ',')
            j++;
        if (j - i == len && strncasecmp(v->out + i, el, len) == 0)
            return;
        i = j + 1;
    }
    if (v->len + len + 2 > v->cap) {
        v->overflow = true;
        return;
    }
    if (v->len)
        v->out[v->len++] = ',';
    for (size_t i = 0; i < len; i++) {
        char c = el[i];
        v->out[v->len++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    v->out[v->len] = '\0';
}

static const int storable_status[] = {200, 203, 204, 300, 301, 308};

void
httpcache_judge(int status, const struct http_header *f, size_t n, uint64_t policy_ttl_ms,
                size_t body_len, struct httpcache_verdict *v)
{
    memset(v, 0, sizeof(*v));
    bool ok_status = false;
    for (size_t i = 0; i < sizeof(storable_status) / sizeof(storable_status[0]); i++)
        ok_status |= status == storable_status[i];
    if (!ok_status) {
        v->why = "status";
        return;
    }
    if (body_len > HTTPCACHE_MAX_BODY) {
        v->why = "body too large";
        return;
    }
    struct cc cc = {.s_maxage = -1, .max_age = -1};
    struct vary vy = {.out = v->vary_names, .cap = sizeof(v->vary_names)};
    for (size_t i = 0; i < n; i++) {
        if (name_is(&f[i].name, "set-cookie")) {
            v->why = "set-cookie";
            return;
        }
        if (name_is(&f[i].name, "cache-control"))
            each_element(f[i].value.p, f[i].value.len, true, cc_directive, &cc);
        else if (name_is(&f[i].name, "vary"))
            each_element(f[i].value.p, f[i].value.len, true, vary_name, &vy);
    }
    if (cc.no_store || cc.no_cache || cc.private_) {
        v->why = cc.no_store ? "no-store" : cc.private_ ? "private" : "no-cache";
        return;
    }
    if (vy.star || vy.overflow) {
        v->why = "vary";
        return;
    }
    int64_t age = cc.s_maxage >= 0 ? cc.s_maxage : cc.max_age;
    uint64_t ttl = policy_ttl_ms;
    if (age >= 0 && (uint64_t)age * 1000 < ttl)
        ttl = (uint64_t)age * 1000;
    if (ttl == 0) {
        v->why = "max-age=0";
        return;
    }
    v->storable = true;
    v->ttl_ms = ttl;
    v->vary = vy.len > 0;
}

bool
httpcache_has_credentials(const struct http_request *h)
{
    return http_header_get(h, "authorization") != NULL || http_header_get(h, "cookie") != NULL;
}

/* The opaque part of an entity tag: without W/ and with its quotes. */
static const char *
etag_opaque(const char *p, size_t *len)
{
    if (*len >= 2 && p[0] == 'W' && p[1] == '/') {
        p += 2;
        *len -= 2;
    }
    return p;
}

struct inm {
    const char *etag;
    size_t etag_len;
    bool match;
};

static void
inm_element(const char *el, size_t len, void *ctx)
{
    struct inm *m = ctx;
    if (len == 1 && el[0] == '*') {
        m->match = true;
        return;
    }
    el = etag_opaque(el, &len);
    if (len == m->etag_len && memcmp(el, m->etag, len) == 0)
        m->match = true;
}

bool
httpcache_etag_matches(const char *inm, size_t len, const char *etag)
{
    if (!etag)
        return false;
    struct inm m = {.etag_len = strlen(etag)};
    m.etag = etag_opaque(etag, &m.etag_len);
    each_element(inm, len, false, inm_element, &m);
    return m.match;
}

void
httpcache_etag_of(const char *body, size_t len, char out[19])
{
    uint64_t h = util_fnv1a(body, len);
    snprintf(out, 19, "\"%016llx\"", (unsigned long long)h);
}

/* Appends an escaped value; returns the new length or -1 when full. */
static long
put_escaped(char *out, size_t cap, size_t o, const char *v, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        bool esc = c < 0x21 || c > 0x7e || c == '%' || c == ':' || c == '{' || c == '}';
        if (o + (esc ? 3 : 1) >= cap)
            return -1;
        if (esc) {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    return (long)o;
}

long
httpcache_vary_key(const char *primary, size_t plen, const char *names,
                   const struct http_request *h, char *out, size_t cap)
{
    if (plen + 2 > cap)
        return -1;
    memcpy(out, primary, plen);
    size_t o = plen;
    out[o++] = '\x1f';
    const char *p = names;
    bool first = true;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t nlen = comma ? (size_t)(comma - p) : strlen(p);
        if (!first) {
            if (o + 2 > cap)
                return -1;
            out[o++] = ':';
        }
        first = false;
        /* Every line of the field, combined as the origin sees them (RFC 9110 section 5.3). */
        bool found = false;
        for (size_t i = 0; i < h->nheaders; i++) {
            if (!name_is_n(&h->headers[i].name, p, nlen))
                continue;
            long r = found ? put_escaped(out, cap, o, ", ", 2) : (long)o;
            if (r >= 0)
                r = put_escaped(out, cap, (size_t)r, h->headers[i].value.p,
                                h->headers[i].value.len);
            if (r < 0)
                return -1;
            o = (size_t)r;
            found = true;
        }
        if (!found) {
            if (o + 3 > cap)
                return -1;
            out[o++] = '%';
            out[o++] = '-';
        }
        p += nlen + (comma ? 1 : 0);
    }
    out[o] = '\0';
    return (long)o;
}

static const char *const not_replayed[] = {
    "content-type",
    "content-length",
    "date",
    "age",
    "etag",
    "x-cache",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-connection",
};

void
httpcache_replay_fields(const struct http_header *f, size_t n, struct sbuf *out)
{
    for (size_t i = 0; i < n; i++) {
        bool skip = false;
        for (size_t j = 0; j < sizeof(not_replayed) / sizeof(not_replayed[0]) && !skip; j++)
            skip = name_is(&f[i].name, not_replayed[j]);
        if (skip)
            continue;
        sbuf_add(out, f[i].name.p, f[i].name.len);
        sbuf_add(out, ": ", 2);
        sbuf_add(out, f[i].value.p, f[i].value.len);
        sbuf_add(out, "\r\n", 2);
    }
}
