/* router.c - compiled route table: method + path pattern + pinned query -> endpoint. */
#include "router.h"
#include "http_parse.h"
#include "util.h"

#include <assert.h>
#include <stdint.h>
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
 * The routes form a trie over path segments, grown by each router_add (a
 * policy generation adds its routes once; the router is only read after).
 * A node is a path prefix; it has literal children (in one hash table of the
 * router keyed by parent node and decoded text), at most one {param} child
 * (parameter names aside: "/u/{id}" and "/u/{uid}" share it), and two leaves:
 * the routes whose path ends at the node and those whose next, last segment is
 * "*". A leaf holds pin sets (its routes that pin the same names, none for
 * most), each a hash table of variants (the routes that pin the same values:
 * one per method, in slots, with the methods they allow as a bitmask).
 *
 * Matching walks the trie depth first, literal child before {param} child
 * before "*" leaf, which visits the leaves that match the path in the order
 * of specificity (literal before {param} before *, segment by segment from the
 * left). The first leaf with a route for the request's method holds the
 * answer (in it: most pins, then the method's own route, GET for HEAD, "*");
 * the walk goes on only to collect the methods of every other matching leaf
 * for `allow`. The walk keeps no stack: a node knows its parent, and the
 * position of its segment in the path is found again going up.
 *
 * The walk is bounded by the trie, not by the path: each node is entered at
 * most once per match (it is entered only from its parent, which tries each of
 * its children once), and only when the segments leading to it match the
 * path; a path with more segments than the deepest route is not walked past
 * that depth. So a match costs, per node whose prefix matches, one hash
 * lookup of the decoded segment (or none, for a node without literal
 * children), and per matching leaf, one hash of the pinned values per pin set
 * there: for a table whose routes do not nest many {param} alternatives under
 * one another, a few nodes per segment, whatever the number of routes. The
 * worst case is the nodes of the routes whose every literal could be a
 * {param} of another route's, which is still at most the size of the trie.
 * Matching allocates nothing and decodes a segment only to hash it and to
 * compare it with a literal whose hash is the same.
 *
 * router_add finds a duplicate or ambiguous route in the leaf the new route
 * goes to: in its pin set by a lookup of its values, and in the other pin sets
 * with as many pins by a scan of their variants (pin sets of one leaf are few:
 * the distinct sets of names pinned on one path).
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
    int method;    /* index into router_methods, or M_ANY */
    char *pattern; /* owned copy of "METHOD pattern", for messages */
    struct rseg *segs;
    size_t nsegs;
    struct pin *pins; /* sorted by name */
    size_t npins;
    size_t nparams;
    void *data;
};

/* Index 0 of each array of the router is no entry: a child, leaf, route or variant of 0 is
 * none. Node 0 is the root, which is nobody's child. */
#define NONE 0u

struct rnode {
    uint32_t parent;
    uint32_t param;     /* the child of a {param} segment */
    uint32_t leaf;      /* the routes whose path ends here */
    uint32_t wild;      /* the routes whose next, last, segment is "*" */
    uint32_t nlit;      /* literal children (in router.edges) */
    enum seg_kind kind; /* of the segment from the parent: SEG_LITERAL or SEG_PARAM */
    const char *text;   /* a literal node's decoded text, borrowed from the route that made it */
    size_t len;
};

struct leaf {
    uint32_t *pinsets;
    size_t n, cap;
};

/* The routes of a leaf that pin the same names (or none). */
struct pinset {
    uint32_t route; /* its first route: the names, sorted, are its pins' names */
    uint32_t *vars; /* every variant, in the order they were made */
    size_t nvars, cap;
};

enum { NMETHODS = 7, SLOT_ANY = NMETHODS, NSLOTS = NMETHODS + 1 };

/* The routes of a pin set that pin the same values: one per method at most. */
struct variant {
    uint32_t pinset;
    uint32_t first;        /* a route of the variant, to compare values with */
    uint32_t slot[NSLOTS]; /* the route of each method index, of "*" at SLOT_ANY */
    unsigned allow;        /* the methods of its routes, as in router_match.allow */
};

/* Open addressing from 64-bit hashes to indices (0: an empty slot); whoever looks up checks
 * the key of each entry whose hash is the one sought. At most half full. */
struct oslot {
    uint64_t hash;
    uint32_t val;
};

struct otab {
    struct oslot *slots;
    size_t mask, n;
};

struct router {
    struct route *routes;
    struct rnode *nodes;
    struct leaf *leaves;
    struct pinset *pinsets;
    struct variant *vars;
    size_t nroutes, nnodes, nleaves, npinsets, nvars; /* each counts its entry 0 */
    size_t caproutes, capnodes, capleaves, cappinsets, capvars;
    struct otab edges;  /* literal children: (parent, decoded text) -> node */
    struct otab values; /* variants: (pin set, decoded values) -> variant */
};

enum { M_ANY = -2, M_GET = 0, M_HEAD = 1 }; /* M_ANY: a "*" route, every method */

const char *const router_methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
const size_t router_nmethods = sizeof(router_methods) / sizeof(router_methods[0]);
_Static_assert(sizeof(router_methods) / sizeof(router_methods[0]) == NMETHODS, "a slot per method");

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

/* ---- hashing ------------------------------------------------------------------------------ */

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t
mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* FNV-1a of text[0..len). */
static uint64_t
text_hash(const char *text, size_t len)
{
    uint64_t h = FNV_OFFSET;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)text[i]) * FNV_PRIME;
    return h;
}

/*
 * FNV-1a of raw[0..rawlen) percent-decoded ('+' as space when plus_as_space), the same as
 * text_hash of the decoded bytes, into *h. Returns 0, or -1 on a bad escape (such a segment
 * or value equals no decoded text: see pct_equal).
 */
static int
decoded_hash(const char *raw, size_t rawlen, int plus_as_space, uint64_t *h)
{
    uint64_t x = FNV_OFFSET;
    size_t i = 0;

    while (i < rawlen) {
        unsigned char c = (unsigned char)raw[i];
        if (c == '%') {
            int hi, lo;
            if (rawlen - i < 3 || (hi = http_hex_digit((unsigned char)raw[i + 1])) < 0 ||
                (lo = http_hex_digit((unsigned char)raw[i + 2])) < 0)
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 3;
        } else {
            if (c == '+' && plus_as_space)
                c = ' ';
            i++;
        }
        x = (x ^ c) * FNV_PRIME;
    }
    *h = x;
    return 0;
}

/* The key of a literal child of node `parent` whose text hashes to th. */
static uint64_t
edge_hash(uint32_t parent, uint64_t th)
{
    return mix64(th + (uint64_t)parent * 0x9e3779b97f4a7c15ull);
}

/* Folds the hash of one more pinned value into h; values_end gives the key of the variant. */
static uint64_t
values_step(uint64_t h, uint64_t vh)
{
    return mix64(h ^ vh);
}

static uint64_t
values_end(uint64_t h, uint32_t pinset)
{
    return mix64(h + (uint64_t)pinset * 0x9e3779b97f4a7c15ull);
}

/* ---- the tables --------------------------------------------------------------------------- */

static void
otab_init(struct otab *t)
{
    t->mask = 15;
    t->n = 0;
    t->slots = xcalloc(t->mask + 1, sizeof(*t->slots));
}

static void
otab_put(struct otab *t, uint64_t hash, uint32_t val)
{
    assert(val != NONE);
    if ((t->n + 1) * 2 > t->mask + 1) {
        size_t cap = (t->mask + 1) * 2;
        struct oslot *old = t->slots;
        size_t oldcap = t->mask + 1;
        t->slots = xcalloc(cap, sizeof(*t->slots));
        t->mask = cap - 1;
        for (size_t i = 0; i < oldcap; i++) {
            if (old[i].val == NONE)
                continue;
            size_t j = old[i].hash & t->mask;
            while (t->slots[j].val != NONE)
                j = (j + 1) & t->mask;
            t->slots[j] = old[i];
        }
        free(old);
    }
    size_t j = hash & t->mask;
    while (t->slots[j].val != NONE)
        j = (j + 1) & t->mask;
    t->slots[j].hash = hash;
    t->slots[j].val = val;
    t->n++;
}

/* Makes room in the array `arr` (n used of cap) for one more element. */
#define GROW(arr, n, cap)                                                                          \
    do {                                                                                           \
        if ((n) == (cap)) {                                                                        \
            (cap) = (cap) ? (cap)*2 : 8;                                                           \
            (arr) = xrealloc((arr), (cap) * sizeof(*(arr)));                                       \
        }                                                                                          \
    } while (0)

/* ---- building ----------------------------------------------------------------------------- */

/* The literal child of node n whose decoded text is text[0..len), or NONE. */
static uint32_t
literal_child(const struct router *r, uint32_t n, const char *text, size_t len)
{
    uint64_t h = edge_hash(n, text_hash(text, len));
    for (size_t j = h & r->edges.mask; r->edges.slots[j].val != NONE; j = (j + 1) & r->edges.mask) {
        const struct rnode *c = &r->nodes[r->edges.slots[j].val];
        if (r->edges.slots[j].hash == h && c->parent == n && c->len == len &&
            memcmp(c->text, text, len) == 0)
            return r->edges.slots[j].val;
    }
    return NONE;
}

/* A new child of node n for segment s (a literal or a {param}); returns its index. */
static uint32_t
new_child(struct router *r, uint32_t n, const struct rseg *s)
{
    uint32_t c = (uint32_t)r->nnodes;
    GROW(r->nodes, r->nnodes, r->capnodes);
    r->nnodes++;
    memset(&r->nodes[c], 0, sizeof(r->nodes[c]));
    r->nodes[c].parent = n;
    r->nodes[c].kind = s->kind;
    if (s->kind == SEG_PARAM) {
        r->nodes[n].param = c;
    } else {
        r->nodes[c].text = s->text;
        r->nodes[c].len = s->len;
        r->nodes[n].nlit++;
        otab_put(&r->edges, edge_hash(n, text_hash(s->text, s->len)), c);
    }
    return c;
}

static uint32_t
new_leaf(struct router *r)
{
    uint32_t l = (uint32_t)r->nleaves;
    GROW(r->leaves, r->nleaves, r->capleaves);
    r->nleaves++;
    memset(&r->leaves[l], 0, sizeof(r->leaves[l]));
    return l;
}

/*
 * The leaf of the route's path shape: the routes with the same segments, parameter names
 * aside. With create, makes the nodes and the leaf that are missing (their literal texts
 * borrowed from rt); without, returns NONE when the trie has no such leaf.
 */
static uint32_t
route_leaf(struct router *r, const struct route *rt, int create)
{
    uint32_t n = 0;

    for (size_t i = 0; i < rt->nsegs; i++) {
        const struct rseg *s = &rt->segs[i];
        if (s->kind == SEG_WILDCARD) {
            if (r->nodes[n].wild == NONE && create)
                r->nodes[n].wild = new_leaf(r);
            return r->nodes[n].wild;
        }
        uint32_t c =
            s->kind == SEG_PARAM ? r->nodes[n].param : literal_child(r, n, s->text, s->len);
        if (c == NONE) {
            if (!create)
                return NONE;
            c = new_child(r, n, s);
        }
        n = c;
    }
    if (r->nodes[n].leaf == NONE && create)
        r->nodes[n].leaf = new_leaf(r);
    return r->nodes[n].leaf;
}

/* Returns 1 when both routes pin the same names; pins are sorted by name. */
static int
same_names(const struct route *a, const struct route *b)
{
    if (a->npins != b->npins)
        return 0;
    for (size_t i = 0; i < a->npins; i++)
        if (a->pins[i].nlen != b->pins[i].nlen ||
            memcmp(a->pins[i].name, b->pins[i].name, a->pins[i].nlen) != 0)
            return 0;
    return 1;
}

/* The key of the route's values in pin set ps (whose names it pins). */
static uint64_t
route_values_hash(const struct route *rt, uint32_t ps)
{
    uint64_t h = FNV_OFFSET;
    for (size_t i = 0; i < rt->npins; i++)
        h = values_step(h, text_hash(rt->pins[i].value, rt->pins[i].vlen));
    return values_end(h, ps);
}

/* The variant of pin set ps with the route's values, or NONE. */
static uint32_t
route_variant(const struct router *r, uint32_t ps, const struct route *rt)
{
    uint64_t h = route_values_hash(rt, ps);
    for (size_t j = h & r->values.mask; r->values.slots[j].val != NONE;
         j = (j + 1) & r->values.mask) {
        const struct variant *v = &r->vars[r->values.slots[j].val];
        if (r->values.slots[j].hash == h && v->pinset == ps && same_pins(&r->routes[v->first], rt))
            return r->values.slots[j].val;
    }
    return NONE;
}

static int
method_slot(int method)
{
    return method == M_ANY ? SLOT_ANY : method;
}

/* The methods a route of `method` adds to router_match.allow. */
static unsigned
method_allow(int method)
{
    if (method == M_ANY)
        return (1u << NMETHODS) - 1;
    return (1u << method) | (method == M_GET ? 1u << M_HEAD : 0);
}

/*
 * The earliest route of leaf l that conflicts with rt (same method, as many pins, and one
 * query could satisfy both: equal pins or none pinned to two values), or NONE. The routes
 * in the router do not conflict with one another, so a route with rt's pins is the only one.
 */
static uint32_t
find_conflict(const struct router *r, uint32_t l, const struct route *rt)
{
    int slot = method_slot(rt->method);
    uint32_t best = NONE;

    for (size_t i = 0; i < r->leaves[l].n; i++) {
        uint32_t ps = r->leaves[l].pinsets[i];
        const struct route *first = &r->routes[r->pinsets[ps].route];
        if (first->npins != rt->npins)
            continue;
        if (same_names(first, rt)) {
            uint32_t v = route_variant(r, ps, rt);
            if (v != NONE && r->vars[v].slot[slot] != NONE)
                return r->vars[v].slot[slot];
            continue;
        }
        for (size_t k = 0; k < r->pinsets[ps].nvars; k++) {
            uint32_t o = r->vars[r->pinsets[ps].vars[k]].slot[slot];
            if (o != NONE && (best == NONE || o < best) && pins_compatible(&r->routes[o], rt))
                best = o;
        }
    }
    return best;
}

/* Files route ri (already in r->routes, its conflicts checked) under leaf l. */
static void
leaf_insert(struct router *r, uint32_t l, uint32_t ri)
{
    const struct route *rt = &r->routes[ri];
    struct leaf *lf = &r->leaves[l];
    uint32_t ps = NONE, v;

    for (size_t i = 0; i < lf->n && ps == NONE; i++)
        if (same_names(&r->routes[r->pinsets[lf->pinsets[i]].route], rt))
            ps = lf->pinsets[i];
    if (ps == NONE) {
        ps = (uint32_t)r->npinsets;
        GROW(r->pinsets, r->npinsets, r->cappinsets);
        r->npinsets++;
        memset(&r->pinsets[ps], 0, sizeof(r->pinsets[ps]));
        r->pinsets[ps].route = ri;
        GROW(lf->pinsets, lf->n, lf->cap);
        lf->pinsets[lf->n++] = ps;
    }
    v = route_variant(r, ps, rt);
    if (v == NONE) {
        struct pinset *set = &r->pinsets[ps];
        v = (uint32_t)r->nvars;
        GROW(r->vars, r->nvars, r->capvars);
        r->nvars++;
        memset(&r->vars[v], 0, sizeof(r->vars[v]));
        r->vars[v].pinset = ps;
        r->vars[v].first = ri;
        otab_put(&r->values, route_values_hash(rt, ps), v);
        GROW(set->vars, set->nvars, set->cap);
        set->vars[set->nvars++] = v;
    }
    assert(r->vars[v].slot[method_slot(rt->method)] == NONE);
    r->vars[v].slot[method_slot(rt->method)] = ri;
    r->vars[v].allow |= method_allow(rt->method);
}

struct router *
router_new(void)
{
    struct router *r = xcalloc(1, sizeof(*r));
    GROW(r->routes, 0, r->caproutes);
    GROW(r->nodes, 0, r->capnodes);
    GROW(r->leaves, 0, r->capleaves);
    GROW(r->pinsets, 0, r->cappinsets);
    GROW(r->vars, 0, r->capvars);
    memset(&r->routes[0], 0, sizeof(r->routes[0]));
    memset(&r->nodes[0], 0, sizeof(r->nodes[0])); /* the root */
    memset(&r->leaves[0], 0, sizeof(r->leaves[0]));
    memset(&r->pinsets[0], 0, sizeof(r->pinsets[0]));
    memset(&r->vars[0], 0, sizeof(r->vars[0]));
    r->nroutes = r->nnodes = r->nleaves = r->npinsets = r->nvars = 1;
    otab_init(&r->edges);
    otab_init(&r->values);
    return r;
}

void
router_free(struct router *r)
{
    if (r == NULL)
        return;
    for (size_t i = 1; i < r->nroutes; i++)
        route_clear(&r->routes[i]);
    for (size_t i = 1; i < r->nleaves; i++)
        free(r->leaves[i].pinsets);
    for (size_t i = 1; i < r->npinsets; i++)
        free(r->pinsets[i].vars);
    free(r->routes);
    free(r->nodes);
    free(r->leaves);
    free(r->pinsets);
    free(r->vars);
    free(r->edges.slots);
    free(r->values.slots);
    free(r);
}

int
router_add(struct router *r, const char *method, const char *pattern, void *data, char *err,
           size_t errlen)
{
    struct route rt;
    const char *qmark;
    size_t plen = strlen(pattern);
    uint32_t l, o, ri;

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

    l = route_leaf(r, &rt, 0);
    o = l == NONE ? NONE : find_conflict(r, l, &rt);
    if (o != NONE && same_pins(&r->routes[o], &rt)) {
        util_seterr(err, errlen, "duplicate route \"%s %s\": same as \"%s\"", method, pattern,
                    r->routes[o].pattern);
        goto fail;
    } else if (o != NONE) {
        util_seterr(err, errlen,
                    "route \"%s %s\" is ambiguous with \"%s\": one request can match both; "
                    "pin the same parameters on both",
                    method, pattern, r->routes[o].pattern);
        goto fail;
    }

    rt.pattern = xasprintf("%s %s", method, pattern);
    rt.data = data;
    ri = (uint32_t)r->nroutes;
    GROW(r->routes, r->nroutes, r->caproutes);
    r->routes[r->nroutes++] = rt;
    leaf_insert(r, route_leaf(r, &r->routes[ri], 1), ri);
    return 0;

fail:
    route_clear(&rt);
    return -1;
}

/* ---- matching ----------------------------------------------------------------------------- */

/* The length of the segment of path[0..plen) that starts at pos (<= plen). */
static size_t
segment_len(const char *path, size_t plen, size_t pos)
{
    const char *q = memchr(path + pos, '/', plen - pos);
    return q ? (size_t)(q - (path + pos)) : plen - pos;
}

/*
 * Finds the first parameter of the raw query q[0..qlen) whose decoded name ('+' as space)
 * is name[0..nlen); sets *v and *vlen to its raw value (empty without '='). Returns 1 when
 * there is one, else 0.
 */
static int
query_value(const char *q, size_t qlen, const char *name, size_t nlen, const char **v, size_t *vlen)
{
    size_t pos = 0;

    while (pos < qlen) {
        const char *p = q + pos;
        const char *amp = memchr(p, '&', qlen - pos);
        size_t len = amp ? (size_t)(amp - p) : qlen - pos;
        const char *eq = memchr(p, '=', len);
        size_t kl = eq ? (size_t)(eq - p) : len;
        if (pct_equal(p, kl, name, nlen, 1)) {
            *vlen = eq ? len - kl - 1 : 0;
            *v = p + len - *vlen;
            return 1;
        }
        pos += len + 1;
    }
    return 0;
}

/* Returns 1 when every pin of the route holds in the raw query q[0..qlen). */
static int
pins_match(const struct route *rt, const char *q, size_t qlen)
{
    for (size_t i = 0; i < rt->npins; i++) {
        const struct pin *pin = &rt->pins[i];
        const char *v;
        size_t vlen;
        if (!query_value(q, qlen, pin->name, pin->nlen, &v, &vlen) ||
            !pct_equal(v, vlen, pin->value, pin->vlen, 1))
            return 0;
    }
    return 1;
}

/* The variant of pin set ps whose values the query holds, or NONE. */
static uint32_t
query_variant(const struct router *r, uint32_t ps, const char *q, size_t qlen)
{
    const struct pinset *set = &r->pinsets[ps];
    const struct route *names = &r->routes[set->route];
    uint64_t h = FNV_OFFSET;

    if (names->npins == 0)
        return set->vars[0]; /* the one variant: no values */
    for (size_t i = 0; i < names->npins; i++) {
        const char *v;
        size_t vlen;
        uint64_t vh;
        if (!query_value(q, qlen, names->pins[i].name, names->pins[i].nlen, &v, &vlen) ||
            decoded_hash(v, vlen, 1, &vh) != 0)
            return NONE;
        h = values_step(h, vh);
    }
    h = values_end(h, ps);
    for (size_t j = h & r->values.mask; r->values.slots[j].val != NONE;
         j = (j + 1) & r->values.mask) {
        const struct variant *va = &r->vars[r->values.slots[j].val];
        if (r->values.slots[j].hash == h && va->pinset == ps &&
            pins_match(&r->routes[va->first], q, qlen))
            return r->values.slots[j].val;
    }
    return NONE;
}

/* The literal child of node n for the raw request segment seg[0..slen), or NONE. */
static uint32_t
request_child(const struct router *r, uint32_t n, const char *seg, size_t slen)
{
    uint64_t th, h;

    if (r->nodes[n].nlit == 0 || decoded_hash(seg, slen, 0, &th) != 0)
        return NONE;
    h = edge_hash(n, th);
    for (size_t j = h & r->edges.mask; r->edges.slots[j].val != NONE; j = (j + 1) & r->edges.mask) {
        const struct rnode *c = &r->nodes[r->edges.slots[j].val];
        if (r->edges.slots[j].hash == h && c->parent == n &&
            pct_equal(seg, slen, c->text, c->len, 0))
            return r->edges.slots[j].val;
    }
    return NONE;
}

/* What a match has found so far. */
struct found {
    int mi;         /* the request's method index, -1 outside router_methods */
    uint32_t route; /* the answer: the route of the first leaf that had one for the method */
    unsigned allow;
};

/* The route of variant va that takes a request of method index mi (-1: a method outside
 * router_methods), and how well it fits in *fit: 2 its own method, 1 GET for HEAD, 0 "*". */
static uint32_t
method_route(const struct variant *va, int mi, size_t *fit)
{
    if (mi >= 0 && va->slot[mi] != NONE) {
        *fit = 2;
        return va->slot[mi];
    }
    if (mi == M_HEAD && va->slot[M_GET] != NONE) {
        *fit = 1;
        return va->slot[M_GET];
    }
    *fit = 0;
    return va->slot[SLOT_ANY];
}

/*
 * Visits leaf l, which matches the path: adds the methods of its routes whose pins hold to
 * f->allow and, when no earlier leaf had a route for the method, picks its best route for
 * it: the most pins, then the method's own route, then GET for HEAD, then "*".
 */
static void
visit_leaf(const struct router *r, uint32_t l, const char *q, size_t qlen, struct found *f)
{
    uint32_t best = NONE;
    size_t best_rank = 0;

    for (size_t i = 0; i < r->leaves[l].n; i++) {
        uint32_t v = query_variant(r, r->leaves[l].pinsets[i], q, qlen), c;
        size_t fit;
        if (v == NONE)
            continue;
        f->allow |= r->vars[v].allow;
        c = method_route(&r->vars[v], f->mi, &fit);
        if (c == NONE)
            continue;
        size_t rank = r->routes[c].npins * 3 + fit;
        if (best == NONE || rank > best_rank) {
            best = c;
            best_rank = rank;
        }
    }
    if (f->route == NONE)
        f->route = best;
}

static void
capture(const struct route *rt, const char *path, size_t plen, struct router_match *m)
{
    size_t pos = 1;

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
        size_t slen = segment_len(path, plen, pos);
        if (seg->kind == SEG_PARAM) {
            prm->name = seg->text;
            prm->value = path + pos;
            prm->len = slen;
            m->nparams++;
        }
        pos += slen + 1;
    }
}

enum router_result
router_match(const struct router *r, const char *method, size_t mlen, const char *path, size_t plen,
             const char *query, size_t qlen, struct router_match *m)
{
    struct found f = {method_index(method, mlen), NONE, 0};
    enum { ENTER, AFTER_LITERAL, AFTER_PARAM } step = ENTER;
    uint32_t n = 0;  /* the node: its segments match the path up to pos */
    size_t pos = 1;  /* where the path's next segment starts; plen + 1 once it has none */
    size_t slen = 0; /* that segment's length */

    m->data = NULL;
    m->nparams = 0;
    m->allow = 0;
    if (plen == 0 || path[0] != '/')
        return ROUTER_NOT_FOUND;

    /* Depth first: literal child, {param} child, "*" leaf; then back to the parent. */
    for (;;) {
        const struct rnode *nd = &r->nodes[n];
        if (pos <= plen)
            slen = segment_len(path, plen, pos);
        if (step == ENTER && pos > plen) {
            if (nd->leaf != NONE)
                visit_leaf(r, nd->leaf, query, qlen, &f);
        } else {
            if (step == ENTER) {
                uint32_t c = request_child(r, n, path + pos, slen);
                if (c != NONE) {
                    n = c;
                    pos += slen + 1;
                    continue;
                }
                step = AFTER_LITERAL;
            }
            if (step == AFTER_LITERAL && nd->param != NONE && slen > 0) {
                n = nd->param;
                pos += slen + 1;
                step = ENTER;
                continue;
            }
            if (nd->wild != NONE)
                visit_leaf(r, nd->wild, query, qlen, &f);
        }
        if (n == 0)
            break;
        /* Up: the parent's segment is the one that ends just before pos. */
        step = nd->kind == SEG_LITERAL ? AFTER_LITERAL : AFTER_PARAM;
        n = nd->parent;
        pos--;
        while (path[pos - 1] != '/')
            pos--;
    }

    if (f.route != NONE) {
        m->data = r->routes[f.route].data;
        capture(&r->routes[f.route], path, plen, m);
        m->allow = f.allow;
        return ROUTER_FOUND;
    }
    m->allow = f.allow;
    return f.allow ? ROUTER_METHOD_NOT_ALLOWED : ROUTER_NOT_FOUND;
}
