/* template.c - key templates: compiled once into segments, expanded per request with escaping. */
#include "template.h"
#include "util.h"

#include <assert.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Why expansion is injective (one template, distinct value tuples, distinct
 * texts).
 *
 * Let E(v) be the escaped form of a value v and E(absent) = "%-". Call a byte
 * a *delimiter* when E never writes it: ':', '{', '}', bytes <= 0x20 and
 * bytes >= 0x7f (all are written as %XX, and the X are hex digits).
 *
 * 1. E is injective on values plus "absent". For a present value, every '%'
 *    that E writes is followed by two hex digits, so undoing %XX gives v back:
 *    E(v) = E(w) implies v = w. E(absent) = "%-" has a '%' followed by '-',
 *    which no E(v) contains, so it differs from every E(v); in particular the
 *    value "%-" is written "%25-", and the empty value "" is written "".
 *
 * 2. A compiled template is L0 V1 L1 V2 ... Vn Ln, literals Li around
 *    variables Vi, and template_compile() demands that every literal between
 *    two variables (L1 .. Ln-1) contains a delimiter (that is why "{a}{b}" and
 *    "{a}-{b}" are rejected). Given the text T = L0 E1 L1 ... En Ln, read it
 *    left to right: L0 is a known prefix. Write L1 = P d R with d the first
 *    delimiter of L1. E1 and P contain no delimiter, so the first delimiter of
 *    T after L0 sits at offset |E1| + |P|, which fixes |E1| and so E1 itself.
 *    Repeat for E2 .. En-1. En is what lies between the known prefix and the
 *    known suffix Ln. Each Ei is recovered from T, and by (1) each value.
 *
 * Injectivity is per template: "a:{user}" with user "b" and the literal
 * template "a:b" give the same text; keeping different kinds of keys apart is
 * what literal prefixes ("crm:contacts:") are for.
 */

enum { SEG_LITERAL = -1 };

struct segment {
    int var;         /* enum template_var, or SEG_LITERAL */
    const char *str; /* literal text (not NUL-terminated) or variable name (NUL-terminated) */
    size_t len;      /* length of str; 0 and str NULL for a variable without a name */
};

struct template
{
    char *src;   /* owned copy of the source; literal segments point into it */
    char *names; /* owned pool of NUL-terminated variable names */
    struct segment *segs;
    size_t nsegs;
    unsigned uses;
};

static const struct {
    const char *name;
    enum template_var var;
    int dotted; /* 1: needs ".NAME", 2: takes one or stands alone, 0: takes none */
} vars[] = {
    {"user", TV_USER, 0}, {"tenant", TV_TENANT, 0}, {"tier", TV_TIER, 0},
    {"ip", TV_IP, 0},     {"method", TV_METHOD, 0}, {"route", TV_ROUTE, 0},
    {"path", TV_PATH, 2}, {"query", TV_QUERY, 2},   {"header", TV_HEADER, 1},
    {"body", TV_BODY, 1}, {"row", TV_ROW, 1},
};

static int
is_delimiter(unsigned char c)
{
    return c <= 0x20 || c >= 0x7f || c == ':' || c == '{' || c == '}';
}

static int
must_escape(unsigned char c)
{
    return is_delimiter(c) || c == '%';
}

static int
is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

static void
push(struct template *t, size_t *cap, int var, const char *str, size_t len)
{
    if (t->nsegs == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        t->segs = xrealloc(t->segs, *cap * sizeof(*t->segs));
    }
    t->segs[t->nsegs].var = var;
    t->segs[t->nsegs].str = str;
    t->segs[t->nsegs].len = len;
    t->nsegs++;
}

/* Returns 1 when lit[0..len) contains a byte no escaped value can contain. */
static int
has_delimiter(const char *lit, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (is_delimiter((unsigned char)lit[i]))
            return 1;
    return 0;
}

struct template *
template_compile(const char *src, unsigned allowed, char *err, size_t errlen)
{
    struct template *t = xrealloc(NULL, sizeof(*t));
    size_t n = strlen(src), cap = 0, pool = 0, lit = 0, i = 0;
    const char *prev = NULL; /* text of the previous variable, for messages */
    size_t prevlen = 0;

    memset(t, 0, sizeof(*t));
    t->src = xrealloc(NULL, n + 1);
    memcpy(t->src, src, n + 1);
    /* Each "{kind.NAME}" spends at least |NAME| + 3 source bytes on |NAME| + 1 pool bytes. */
    t->names = xrealloc(NULL, n + 1);
    src = t->src;

    while (i < n) {
        if (src[i] == '}') {
            util_seterr(err, errlen, "stray '}' at offset %zu (templates have no literal braces)",
                        i);
            goto fail;
        }
        if (src[i] != '{') {
            i++;
            continue;
        }

        size_t open = i, j = i + 1;
        while (j < n && src[j] != '}' && src[j] != '{')
            j++;
        if (j == n || src[j] == '{') {
            util_seterr(err, errlen, "unclosed '{' at offset %zu", open);
            goto fail;
        }
        const char *body = src + open + 1;
        size_t blen = j - open - 1;
        if (blen == 0) {
            util_seterr(err, errlen, "empty '{}' at offset %zu", open);
            goto fail;
        }

        const char *dot = memchr(body, '.', blen);
        size_t klen = dot ? (size_t)(dot - body) : blen;
        size_t k;
        for (k = 0; k < sizeof(vars) / sizeof(vars[0]); k++)
            if (strlen(vars[k].name) == klen && memcmp(vars[k].name, body, klen) == 0)
                break;
        if (k == sizeof(vars) / sizeof(vars[0])) {
            util_seterr(err, errlen, "unknown variable {%.*s} at offset %zu", (int)blen, body,
                        open);
            goto fail;
        }
        const char *name = dot ? dot + 1 : NULL;
        size_t nlen = dot ? blen - klen - 1 : 0;
        if ((vars[k].dotted == 1 || (vars[k].dotted && dot)) && nlen == 0) {
            util_seterr(err, errlen, "{%.*s} at offset %zu needs a name, as in {%s.NAME}",
                        (int)blen, body, open, vars[k].name);
            goto fail;
        }
        if (!vars[k].dotted && dot) {
            util_seterr(err, errlen, "{%.*s} at offset %zu: {%s} takes no name", (int)blen, body,
                        open, vars[k].name);
            goto fail;
        }
        if (nlen > TEMPLATE_MAX_NAME) {
            util_seterr(err, errlen, "the name in {%.*s} at offset %zu is longer than %d bytes",
                        (int)blen, body, open, TEMPLATE_MAX_NAME);
            goto fail;
        }
        for (size_t c = 0; c < nlen; c++) {
            if (!is_name_char((unsigned char)name[c])) {
                util_seterr(
                    err, errlen,
                    "bad name in {%.*s} at offset %zu: names use letters, digits, '_' and '-'",
                    (int)blen, body, open);
                goto fail;
            }
        }
        if (!(allowed & TV_BIT(vars[k].var))) {
            util_seterr(err, errlen, "{%.*s} at offset %zu is not allowed here", (int)blen, body,
                        open);
            goto fail;
        }
        if (prev != NULL && !has_delimiter(src + lit, open - lit)) {
            util_seterr(
                err, errlen,
                "{%.*s} at offset %zu follows {%.*s} without a ':' between them, so different "
                "values could expand to the same text",
                (int)blen, body, open, (int)prevlen, prev);
            goto fail;
        }

        if (open > lit)
            push(t, &cap, SEG_LITERAL, src + lit, open - lit);
        if (name != NULL) {
            char *copy = t->names + pool;
            for (size_t c = 0; c < nlen; c++) {
                char ch = name[c];
                if (vars[k].var == TV_HEADER && ch >= 'A' && ch <= 'Z')
                    ch = (char)(ch - 'A' + 'a');
                copy[c] = ch;
            }
            copy[nlen] = '\0';
            pool += nlen + 1;
            assert(pool <= n + 1);
            push(t, &cap, (int)vars[k].var, copy, nlen);
        } else {
            push(t, &cap, (int)vars[k].var, NULL, 0);
        }
        t->uses |= TV_BIT(vars[k].var);
        prev = body;
        prevlen = blen;
        i = lit = j + 1;
    }
    if (n > lit)
        push(t, &cap, SEG_LITERAL, src + lit, n - lit);
    return t;

fail:
    template_free(t);
    return NULL;
}

void
template_free(struct template *t)
{
    if (t == NULL)
        return;
    free(t->segs);
    free(t->names);
    free(t->src);
    free(t);
}

const char *
template_source(const struct template *t)
{
    return t->src;
}

unsigned
template_uses(const struct template *t)
{
    return t->uses;
}

int
template_single_var(const struct template *t, enum template_var *var, const char **name)
{
    if (t->nsegs != 1 || t->segs[0].var == SEG_LITERAL)
        return 0;
    *var = (enum template_var)t->segs[0].var;
    *name = t->segs[0].str;
    return 1;
}

long
template_expand(const struct template *t, template_lookup_fn lookup, void *ctx, char *out,
                size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    if (cap == 0)
        return -1;
    if (cap > LONG_MAX)
        cap = LONG_MAX;
    /* Invariant: o < cap, so out[o] can always take the final NUL. */
    for (size_t s = 0; s < t->nsegs; s++) {
        const struct segment *seg = &t->segs[s];
        if (seg->var == SEG_LITERAL) {
            if (seg->len >= cap - o)
                goto overflow;
            memcpy(out + o, seg->str, seg->len);
            o += seg->len;
            continue;
        }

        const char *val = NULL;
        size_t len = 0;
        if (!lookup(ctx, (enum template_var)seg->var, seg->str, seg->len, &val, &len)) {
            if (2 >= cap - o)
                goto overflow;
            out[o++] = '%';
            out[o++] = '-';
            continue;
        }
        assert(val != NULL || len == 0);
        for (size_t k = 0; k < len; k++) {
            unsigned char c = (unsigned char)val[k];
            if (!must_escape(c)) {
                if (1 >= cap - o)
                    goto overflow;
                out[o++] = (char)c;
            } else {
                if (3 >= cap - o)
                    goto overflow;
                out[o++] = '%';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
            }
        }
    }
    out[o] = '\0';
    return (long)o;

overflow:
    out[0] = '\0';
    return -1;
}

/* ---- matching a text against a template ---------------------------------------------------- */

/* One piece of fixed text while matching: a literal, or a known value written escaped. */
struct piece {
    const char *p;
    size_t len;
    bool escaped; /* p is a value: compare its escaped form */
};

/* Whether text[0..len) starts with the piece (as written); its written length in *used. */
static bool
piece_at(const struct piece *pc, const char *text, size_t len, size_t *used)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    if (!pc->escaped) {
        if (pc->len > len || memcmp(text, pc->p, pc->len) != 0)
            return false;
        *used = pc->len;
        return true;
    }
    for (size_t k = 0; k < pc->len; k++) {
        unsigned char c = (unsigned char)pc->p[k];
        if (!must_escape(c)) {
            if (o >= len || (unsigned char)text[o] != c)
                return false;
            o++;
        } else {
            if (len - o < 3 || text[o] != '%' || text[o + 1] != hex[c >> 4] ||
                text[o + 2] != hex[c & 15])
                return false;
            o += 3;
        }
    }
    *used = o;
    return true;
}

/* The written length of the piece, and the offset of its first delimiter in *delim (or none). */
static size_t
piece_len(const struct piece *pc, size_t *delim)
{
    size_t n = 0;

    *delim = SIZE_MAX;
    if (!pc->escaped) {
        for (size_t k = 0; k < pc->len; k++)
            if (is_delimiter((unsigned char)pc->p[k])) {
                *delim = k;
                break;
            }
        return pc->len;
    }
    for (size_t k = 0; k < pc->len; k++) /* an escaped value holds no delimiter */
        n += must_escape((unsigned char)pc->p[k]) ? 3 : 1;
    return n;
}

/* Segment s of t as a fixed piece: false for a variable whose value is not known. */
static bool
segment_piece(const struct template *t, size_t s, template_lookup_fn known, void *ctx,
              struct piece *pc)
{
    const struct segment *seg = &t->segs[s];

    if (seg->var == SEG_LITERAL) {
        *pc = (struct piece){seg->str, seg->len, false};
        return true;
    }
    const char *val = NULL;
    size_t len = 0;
    if (!known || !known(ctx, (enum template_var)seg->var, seg->str, seg->len, &val, &len))
        return false;
    *pc = (struct piece){val, len, true};
    return true;
}

int
template_match(const struct template *t, const char *text, size_t len, template_lookup_fn known,
               void *ctx)
{
    size_t pos = 0;

    for (size_t s = 0; s < t->nsegs; s++) {
        struct piece pc;
        size_t used;
        if (segment_piece(t, s, known, ctx, &pc)) {
            if (!piece_at(&pc, text + pos, len - pos, &used))
                return 0;
            pos += used;
            continue;
        }
        /*
         * A variable of any value. The fixed text after it, up to the next such variable
         * (or the end), is F; the proof at the top of this file reads its value: when another
         * variable follows, F holds a delimiter at offset d, and the value ends d bytes before
         * the first delimiter of the text from here; else it ends |F| bytes before the end.
         */
        size_t flen = 0, d = SIZE_MAX, next = s + 1;
        for (; next < t->nsegs && segment_piece(t, next, known, ctx, &pc); next++) {
            size_t pd, pl = piece_len(&pc, &pd);
            if (d == SIZE_MAX && pd != SIZE_MAX)
                d = flen + pd;
            flen += pl;
        }
        size_t end;
        if (next == t->nsegs) {
            if (flen > len - pos)
                return 0;
            end = len - flen;
        } else {
            assert(d != SIZE_MAX); /* template_compile() puts a delimiter between variables */
            size_t q = pos;
            while (q < len && !is_delimiter((unsigned char)text[q]))
                q++;
            if (q == len || q - pos < d)
                return 0;
            end = q - d;
        }
        for (size_t k = pos; k < end; k++)
            if (is_delimiter((unsigned char)text[k]))
                return 0;
        pos = end;
    }
    return pos == len;
}
