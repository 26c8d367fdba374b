/* router.c - compiled route table: method + path pattern + pinned query -> endpoint. */
#include "router.h"
#include "http_parse.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * A path is a list of segments: the pieces between '/' after the leading one.
 * "/" is [""], "/api/crm" is ["api", "crm"] and "/api/crm/" is
 * ["api", "crm", ""]: a trailing slash is one more, empty, segment, so
 * "/api/crm" and "/api/crm/" are different paths and a route names the one it
 * means. Segments are split on raw '/' before any decoding, so "a%2Fb" is one
 * segment (decoded "a/b").
 *
 * A pattern segment is a literal (compared with the request segment after
 * percent-decoding; '+' stays '+'), "{name}" (any non-empty segment, captured
 * raw) or a final "*" (the rest of the path after the previous '/', possibly
 * empty, captured raw under the name "*"). Empty segments are allowed in a
 * pattern only as a trailing slash, so a request with "//" inside its path
 * matches no literal or {param} route there, only a wildcard that covers it.
 *
 * Pinned query parameters compare the decoded value ('+' is a space) of the
 * first occurrence of the parameter in the request's query.
 *
 * Matching is a linear scan over the routes (there are tens); it allocates
 * nothing and decodes a segment only while comparing it with a literal.
 */

enum seg_kind { SEG_LITERAL = 0, SEG_PARAM = 1, SEG_WILDCARD = 2 }; /* in specificity order */

struct rseg {
    enum seg_kind kind;
    char *text; /* owned: decoded literal, or parameter name; NUL-terminated */
    size_t len;
};

struct pin {
    char *name, *value; /* owned, decoded, NUL-terminated */
    size_t nlen, vlen;
};

struct route {
    int method;    /* index into router_methods */
    char *pattern; /* owned copy of "METHOD pattern", for messages */
    struct rseg *segs;
    size_t nsegs;
    struct pin *pins; /* sorted by name */
    size_t npins;
    size_t nparams;
    int wildcard; /* last segment is "*" */
    void *data;
};

struct router {
    struct route *routes;
    size_t n, cap;
};

enum { M_ANY = -2, M_GET = 0, M_HEAD = 1 }; /* M_ANY: a "*" route, every method */

const char *const router_methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
const size_t router_nmethods = sizeof(router_methods) / sizeof(router_methods[0]);

/*
 * Returns 1 when raw[0..rawlen), percent-decoded ('+' as space when
 * plus_as_space), equals lit[0..litlen); 0 otherwise, including on a bad
 * escape. Decodes on the fly, into nothing.
 */
static int
pct_equal(const char *raw, size_t rawlen, const char *lit, size_t litlen, int plus_as_space)
{
    size_t i = 0, j = 0;

    if (litlen > rawlen)
        return 0; /* decoding never lengthens */
    while (i < rawlen) {
        unsigned char c = (unsigned char)raw[i];
        if (c == '%') {
            int hi, lo;
            if (rawlen - i < 3 || (hi = http_hex_digit((unsigned char)raw[i + 1])) < 0 ||
                (lo = http_hex_digit((unsigned char)raw[i + 2])) < 0)
                return 0;
            c = (unsigned char)(hi << 4 | lo);
            i += 3;
        } else {
            if (c == '+' && plus_as_space)
                c = ' ';
            i++;
        }
        if (j == litlen || (unsigned char)lit[j] != c)
            return 0;
        j++;
    }
    return j == litlen;
}

/*
 * Percent-decodes in[0..len) into a new string, '+' as space when
 * plus_as_space. Returns it (owned by the caller), or NULL on a bad escape or
 * a decoded NUL.
 */
static char *
pct_decode_dup(const char *in, size_t len, int plus_as_space, size_t *outlen)
{
    char *out = xmalloc(len + 1);
    if (http_pct_decode(in, len, out, outlen, plus_as_space) != 0) {
        free(out);
        return NULL;
    }
    out[*outlen] = '\0';
    return out;
}

static int
is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* Returns 1 for bytes a pattern may not carry outside their special roles. */
static int
bad_pattern_char(unsigned char c)
{
    return c <= 0x20 || c >= 0x7f || c == '#';
}

static int
method_index(const char *method, size_t mlen)
{
    for (size_t i = 0; i < router_nmethods; i++)
        if (strlen(router_methods[i]) == mlen && memcmp(router_methods[i], method, mlen) == 0)
            return (int)i;
    return -1;
}

static void
route_clear(struct route *rt)
{
    for (size_t i = 0; i < rt->nsegs; i++)
        free(rt->segs[i].text);
    for (size_t i = 0; i < rt->npins; i++) {
        free(rt->pins[i].name);
        free(rt->pins[i].value);
    }
    free(rt->segs);
    free(rt->pins);
    free(rt->pattern);
    memset(rt, 0, sizeof(*rt));
}

struct router *
router_new(void)
{
    struct router *r = xrealloc(NULL, sizeof(*r));
    memset(r, 0, sizeof(*r));
    return r;
}

void
router_free(struct router *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        route_clear(&r->routes[i]);
    free(r->routes);
    free(r);
}

/* Parses the path part pattern[0..len) into rt->segs. Returns 0, or -1 with err set. */
static int
parse_path(struct route *rt, const char *path, size_t len, char *err, size_t errlen)
{
    size_t cap = 0;
    const char *p = path + 1, *end = path + len;

    for (;;) {
        const char *q = memchr(p, '/', (size_t)(end - p));
        int last = q == NULL;
        size_t slen;
        struct rseg seg = {SEG_LITERAL, NULL, 0};

        if (last)
            q = end;
        slen = (size_t)(q - p);
        for (size_t i = 0; i < slen; i++) {
            if (bad_pattern_char((unsigned char)p[i])) {
                util_seterr(err, errlen, "bad character 0x%02x in segment \"%.*s\"",
                            (unsigned char)p[i], (int)slen, p);
                return -1;
            }
        }

        if (slen == 0 && !last) {
            util_seterr(err, errlen, "empty segment (\"//\"): only a trailing '/' may be empty");
            return -1;
        } else if (slen == 1 && p[0] == '*') {
            if (!last) {
                util_seterr(err, errlen, "'*' must be the last segment");
                return -1;
            }
            seg.kind = SEG_WILDCARD;
            seg.text = xstrndup("*", 1);
            seg.len = 1;
            rt->wildcard = 1;
        } else if (slen > 0 && p[0] == '{') {
            if (p[slen - 1] != '}') {
                util_seterr(err, errlen, "parameter \"%.*s\" must be a whole segment \"{name}\"",
                            (int)slen, p);
                return -1;
            }
            if (slen == 2) {
                util_seterr(err, errlen, "empty parameter name \"{}\"");
                return -1;
            }
            for (size_t i = 1; i + 1 < slen; i++) {
                if (!is_name_char((unsigned char)p[i])) {
                    util_seterr(
                        err, errlen,
                        "bad parameter name \"%.*s\": names use letters, digits, '_' and '-'",
                        (int)slen, p);
                    return -1;
                }
            }
            for (size_t s = 0; s < rt->nsegs; s++) {
                if (rt->segs[s].kind == SEG_PARAM && rt->segs[s].len == slen - 2 &&
                    memcmp(rt->segs[s].text, p + 1, slen - 2) == 0) {
                    util_seterr(err, errlen, "duplicate parameter \"%.*s\"", (int)slen, p);
                    return -1;
                }
            }
            seg.kind = SEG_PARAM;
            seg.text = xstrndup(p + 1, slen - 2);
            seg.len = slen - 2;
        } else {
            for (size_t i = 0; i < slen; i++) {
                if (p[i] == '{' || p[i] == '}' || p[i] == '*') {
                    util_seterr(
                        err, errlen,
                        "'%c' in segment \"%.*s\": parameters are whole segments \"{name}\", "
                        "'*' a whole last segment (write %%7B, %%7D, %%2A for the bytes)",
                        p[i], (int)slen, p);
                    return -1;
                }
            }
            seg.text = pct_decode_dup(p, slen, 0, &seg.len);
            if (seg.text == NULL) {
                util_seterr(err, errlen, "bad percent-encoding in segment \"%.*s\"", (int)slen, p);
                return -1;
            }
        }

        if (seg.kind != SEG_LITERAL && ++rt->nparams > ROUTER_MAX_PARAMS) {
            free(seg.text);
            util_seterr(err, errlen, "too many parameters (at most %d)", ROUTER_MAX_PARAMS);
            return -1;
        }
        if (rt->nsegs == cap) {
            cap = cap ? cap * 2 : 4;
            rt->segs = xrealloc(rt->segs, cap * sizeof(*rt->segs));
        }
        rt->segs[rt->nsegs++] = seg;
        if (last)
            return 0;
        p = q + 1;
    }
}

static int
pin_cmp(const void *a, const void *b)
{
    const struct pin *x = a, *y = b;
    size_t n = x->nlen < y->nlen ? x->nlen : y->nlen;
    int c = memcmp(x->name, y->name, n);
    if (c != 0)
        return c;
    return (x->nlen > y->nlen) - (x->nlen < y->nlen);
}

/* Parses the pinned query q[0..len) ("k=v&k2=v2") into rt->pins. Returns 0, or -1 with err set. */
static int
parse_pins(struct route *rt, const char *q, size_t len, char *err, size_t errlen)
{
    const char *p = q, *end = q + len;

    if (len == 0) {
        util_seterr(err, errlen, "empty query after '?'");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (bad_pattern_char((unsigned char)q[i])) {
            util_seterr(err, errlen, "bad character 0x%02x in pinned query \"%.*s\"",
                        (unsigned char)q[i], (int)len, q);
            return -1;
        }
    }
    for (;;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        struct pin pin;

        if (e == p) {
            util_seterr(err, errlen, "empty parameter in pinned query \"%.*s\"", (int)len, q);
            return -1;
        }
        if (eq == NULL) {
            util_seterr(err, errlen, "pinned query parameter \"%.*s\" needs a value (name=value)",
                        (int)(e - p), p);
            return -1;
        }
        if (eq == p) {
            util_seterr(err, errlen, "pinned query parameter \"%.*s\" has no name", (int)(e - p),
                        p);
            return -1;
        }
        pin.name = pct_decode_dup(p, (size_t)(eq - p), 1, &pin.nlen);
        pin.value = pct_decode_dup(eq + 1, (size_t)(e - eq - 1), 1, &pin.vlen);
        if (pin.name == NULL || pin.value == NULL) {
            free(pin.name);
            free(pin.value);
            util_seterr(err, errlen, "bad percent-encoding in pinned query parameter \"%.*s\"",
                        (int)(e - p), p);
            return -1;
        }
        for (size_t i = 0; i < rt->npins; i++) {
            if (rt->pins[i].nlen == pin.nlen && memcmp(rt->pins[i].name, pin.name, pin.nlen) == 0) {
                util_seterr(err, errlen, "pinned query parameter \"%s\" given twice", pin.name);
                free(pin.name);
                free(pin.value);
                return -1;
            }
        }
        rt->pins = xrealloc(rt->pins, (rt->npins + 1) * sizeof(*rt->pins));
        rt->pins[rt->npins++] = pin;
        if (amp == NULL)
            break;
        p = amp + 1;
    }
    qsort(rt->pins, rt->npins, sizeof(*rt->pins), pin_cmp);
    return 0;
}

/* Returns 1 when a and b match exactly the same paths (parameter names aside). */
static int
same_shape(const struct route *a, const struct route *b)
{
    if (a->nsegs != b->nsegs)
        return 0;
    for (size_t i = 0; i < a->nsegs; i++) {
        const struct rseg *x = &a->segs[i], *y = &b->segs[i];
        if (x->kind != y->kind)
            return 0;
        if (x->kind == SEG_LITERAL && (x->len != y->len || memcmp(x->text, y->text, x->len) != 0))
            return 0;
    }
    return 1;
}

/* Returns 1 when the pin sets are equal; both are sorted by name. */
static int
same_pins(const struct route *a, const struct route *b)
{
    if (a->npins != b->npins)
        return 0;
    for (size_t i = 0; i < a->npins; i++) {
        const struct pin *x = &a->pins[i], *y = &b->pins[i];
        if (x->nlen != y->nlen || memcmp(x->name, y->name, x->nlen) != 0 || x->vlen != y->vlen ||
            memcmp(x->value, y->value, x->vlen) != 0)
            return 0;
    }
    return 1;
}

/* Returns 1 when one query could satisfy both pin sets: no name pinned to two values. */
static int
pins_compatible(const struct route *a, const struct route *b)
{
    for (size_t i = 0; i < a->npins; i++) {
        for (size_t j = 0; j < b->npins; j++) {
            const struct pin *x = &a->pins[i], *y = &b->pins[j];
            if (x->nlen == y->nlen && memcmp(x->name, y->name, x->nlen) == 0 &&
                (x->vlen != y->vlen || memcmp(x->value, y->value, x->vlen) != 0))
                return 0;
        }
    }
    return 1;
}

int
router_add(struct router *r, const char *method, const char *pattern, void *data, char *err,
           size_t errlen)
{
    struct route rt;
    const char *qmark;
    size_t plen = strlen(pattern);

    memset(&rt, 0, sizeof(rt));
    rt.method = strcmp(method, "*") == 0 ? M_ANY : method_index(method, strlen(method));
    if (rt.method == -1) {
        util_seterr(err, errlen,
                    "unknown method \"%s\" (use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS "
                    "or *)",
                    method);
        return -1;
    }
    if (pattern[0] != '/') {
        util_seterr(err, errlen, "pattern \"%s\" must start with '/'", pattern);
        return -1;
    }
    qmark = strchr(pattern, '?');
    if (parse_path(&rt, pattern, qmark ? (size_t)(qmark - pattern) : plen, err, errlen) < 0)
        goto fail;
    if (qmark != NULL &&
        parse_pins(&rt, qmark + 1, plen - (size_t)(qmark - pattern) - 1, err, errlen) < 0)
        goto fail;

    for (size_t i = 0; i < r->n; i++) {
        const struct route *o = &r->routes[i];
        if (o->method != rt.method || !same_shape(o, &rt))
            continue;
        if (same_pins(o, &rt)) {
            util_seterr(err, errlen, "duplicate route \"%s %s\": same as \"%s\"", method, pattern,
                        o->pattern);
            goto fail;
        }
        if (o->npins == rt.npins && pins_compatible(o, &rt)) {
            util_seterr(err, errlen,
                        "route \"%s %s\" is ambiguous with \"%s\": one request can match both; "
                        "pin the same parameters on both",
                        method, pattern, o->pattern);
            goto fail;
        }
    }

    rt.pattern = xrealloc(NULL, strlen(method) + plen + 2);
    sprintf(rt.pattern, "%s %s", method, pattern);
    rt.data = data;
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 8;
        r->routes = xrealloc(r->routes, r->cap * sizeof(*r->routes));
    }
    r->routes[r->n++] = rt;
    return 0;

fail:
    route_clear(&rt);
    return -1;
}

/*
 * Finds the segment of path[0..plen) that starts at *pos; sets *slen and moves
 * *pos past the '/' that ends it (to plen + 1 after the last segment).
 */
static const char *
next_segment(const char *path, size_t plen, size_t *pos, size_t *slen)
{
    const char *seg = path + *pos;
    const char *q = memchr(seg, '/', plen - *pos);
    *slen = q ? (size_t)(q - seg) : plen - *pos;
    *pos += *slen + 1;
    return seg;
}

/* Returns 1 when the route's segments match path[0..plen) (which starts with '/'). */
static int
path_matches(const struct route *rt, const char *path, size_t plen)
{
    size_t pos = 1, slen;

    for (size_t i = 0; i < rt->nsegs; i++) {
        const struct rseg *seg = &rt->segs[i];
        if (seg->kind == SEG_WILDCARD)
            return pos <= plen;
        if (pos > plen)
            return 0; /* the path ran out of segments */
        const char *s = next_segment(path, plen, &pos, &slen);
        if (seg->kind == SEG_PARAM) {
            if (slen == 0)
                return 0;
        } else if (!pct_equal(s, slen, seg->text, seg->len, 0)) {
            return 0;
        }
    }
    return pos > plen; /* every segment of the path was used */
}

/* Returns 1 when every pin of the route holds in the raw query q[0..qlen). */
static int
pins_match(const struct route *rt, const char *q, size_t qlen)
{
    for (size_t i = 0; i < rt->npins; i++) {
        const struct pin *pin = &rt->pins[i];
        size_t pos = 0;
        int found = 0;

        while (pos < qlen) {
            const char *p = q + pos;
            const char *amp = memchr(p, '&', qlen - pos);
            size_t len = amp ? (size_t)(amp - p) : qlen - pos;
            const char *eq = memchr(p, '=', len);
            size_t nlen = eq ? (size_t)(eq - p) : len;
            if (pct_equal(p, nlen, pin->name, pin->nlen, 1)) {
                size_t vlen = eq ? len - nlen - 1 : 0;
                if (!pct_equal(p + len - vlen, vlen, pin->value, pin->vlen, 1))
                    return 0;
                found = 1;
                break;
            }
            pos += len + 1;
        }
        if (!found)
            return 0;
    }
    return 1;
}

/* How closely a route's method fits a request's (method index mi): its own method, a GET
 * route for HEAD, a "*" route. */
static int
method_fit(const struct route *rt, int mi)
{
    return rt->method == M_ANY ? 0 : rt->method == mi ? 2 : 1;
}

/* Whether the route takes a request with method index mi (-1: a method outside the list). */
static int
method_takes(const struct route *rt, int mi)
{
    return rt->method == M_ANY ||
           (mi >= 0 && (rt->method == mi || (mi == M_HEAD && rt->method == M_GET)));
}

/* Returns 1 when route a beats route b for a request with method index mi. */
static int
more_specific(const struct route *a, const struct route *b, int mi)
{
    size_t n = a->nsegs < b->nsegs ? a->nsegs : b->nsegs;

    for (size_t i = 0; i < n; i++)
        if (a->segs[i].kind != b->segs[i].kind)
            return a->segs[i].kind < b->segs[i].kind;
    if (a->nsegs != b->nsegs)
        return a->nsegs > b->nsegs;
    if (a->npins != b->npins)
        return a->npins > b->npins;
    return method_fit(a, mi) > method_fit(b, mi); /* own method, then GET for HEAD, then * */
}

static void
capture(const struct route *rt, const char *path, size_t plen, struct router_match *m)
{
    size_t pos = 1, slen;

    m->nparams = 0;
    for (size_t i = 0; i < rt->nsegs; i++) {
        const struct rseg *seg = &rt->segs[i];
        struct router_param *prm = &m->params[m->nparams];
        if (seg->kind == SEG_WILDCARD) {
            prm->name = seg->text;
            prm->value = path + pos;
            prm->len = plen - pos;
            m->nparams++;
            return;
        }
        const char *s = next_segment(path, plen, &pos, &slen);
        if (seg->kind == SEG_PARAM) {
            prm->name = seg->text;
            prm->value = s;
            prm->len = slen;
            m->nparams++;
        }
    }
}

enum router_result
router_match(const struct router *r, const char *method, size_t mlen, const char *path, size_t plen,
             const char *query, size_t qlen, struct router_match *m)
{
    const struct route *best = NULL;
    int mi = method_index(method, mlen);
    size_t nsegs = 1;

    m->data = NULL;
    m->nparams = 0;
    m->allow = 0;
    if (plen == 0 || path[0] != '/')
        return ROUTER_NOT_FOUND;
    for (size_t i = 1; i < plen; i++)
        nsegs += path[i] == '/';

    for (size_t i = 0; i < r->n; i++) {
        const struct route *rt = &r->routes[i];
        if (rt->wildcard ? nsegs < rt->nsegs : nsegs != rt->nsegs)
            continue;
        if (!path_matches(rt, path, plen) || !pins_match(rt, query, qlen))
            continue;
        if (rt->method == M_ANY)
            m->allow |= (1u << router_nmethods) - 1;
        else
            m->allow |= 1u << rt->method;
        if (rt->method == M_GET)
            m->allow |= 1u << M_HEAD;
        if (!method_takes(rt, mi))
            continue;
        if (best == NULL || more_specific(rt, best, mi))
            best = rt;
    }
    if (best != NULL) {
        m->data = best->data;
        capture(best, path, plen, m);
        return ROUTER_FOUND;
    }
    return m->allow ? ROUTER_METHOD_NOT_ALLOWED : ROUTER_NOT_FOUND;
}
