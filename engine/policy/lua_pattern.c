/* lua_pattern.c - Lua 5.4 string patterns (reference manual 6.4.1) with a step budget. */
#include "lua_pattern.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ESC '%'
#define SPECIALS "^$*+?.([%-"

/*
 * A backtracking matcher like Lua's own: match() walks the pattern item by
 * item and calls itself where an item may be matched more than one way (a
 * capture, or a quantifier: the rest of the pattern is tried after each
 * choice), so its nesting, and so "pattern too complex", is Lua's. What it
 * adds is a count of steps: one for each match() and each test of a
 * single-character class, and the bytes a back-reference or %b reads.
 *
 * Lua strings end in a NUL that Lua's matcher reads past the end of the
 * subject or the pattern; here pat() and src() give that '\0' instead, so
 * the answers are the same without reading past either buffer.
 */

static int
pat(const struct lua_pattern *m, const char *p)
{
    return p < m->p_end ? (unsigned char)*p : 0;
}

static int
src(const struct lua_pattern *m, const char *s)
{
    return s < m->src_end ? (unsigned char)*s : 0;
}

static void
fail(struct lua_pattern *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->err, sizeof(m->err), fmt, ap);
    va_end(ap);
    longjmp(m->jb, LUA_PATTERN_ERROR);
}

static void
spend(struct lua_pattern *m, uint64_t n)
{
    uint64_t before = m->steps;
    m->steps += n;
    if (m->steps > m->budget)
        longjmp(m->jb, LUA_PATTERN_BUDGET);
    if (m->tick && before / LUA_PATTERN_TICK != m->steps / LUA_PATTERN_TICK && m->tick(m->tick_ud))
        longjmp(m->jb, LUA_PATTERN_STOPPED);
}

/* ---- single-character classes ------------------------------------------------------------ */

/* Whether byte c is in class %cl (a letter of the manual's list, else cl itself). */
static int
in_class(int c, int cl)
{
    int in;
    switch (tolower(cl)) {
    case 'a':
        in = isalpha(c);
        break;
    case 'c':
        in = iscntrl(c);
        break;
    case 'd':
        in = isdigit(c);
        break;
    case 'g':
        in = isgraph(c);
        break;
    case 'l':
        in = islower(c);
        break;
    case 'p':
        in = ispunct(c);
        break;
    case 's':
        in = isspace(c);
        break;
    case 'u':
        in = isupper(c);
        break;
    case 'w':
        in = isalnum(c);
        break;
    case 'x':
        in = isxdigit(c);
        break;
    case 'z': /* NUL: gone from the manual since 5.2, still in Lua's matcher */
        in = c == 0;
        break;
    default:
        return cl == c;
    }
    return isupper(cl) ? !in : in != 0;
}

/*
 * Whether byte c is in the set that opens at p ('[') and closes at close
 * (its ']'). Inside: %x classes, ranges a-z, single bytes; [^...] is the
 * complement. A '-' right before the closing ']' is itself.
 */
static int
in_set(int c, const char *p, const char *close)
{
    int want = 1;
    if (p[1] == '^') {
        want = 0;
        p++;
    }
    while (++p < close) {
        if (*p == ESC) {
            p++;
            if (in_class(c, (unsigned char)*p))
                return want;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
                return want;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return want;
        }
    }
    return !want;
}

/* The end of the single-character class at p: a byte, '.', %x or a set. */
static const char *
class_end(struct lua_pattern *m, const char *p)
{
    int c = (unsigned char)*p++;
    if (c == ESC) {
        if (p >= m->p_end)
            fail(m, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c == '[') {
        if (pat(m, p) == '^')
            p++;
        do { /* the first byte is in the set even when it is ']' */
            if (p >= m->p_end)
                fail(m, "malformed pattern (missing ']')");
            c = (unsigned char)*p++;
            if (c == ESC && p < m->p_end)
                p++;
        } while (pat(m, p) != ']');
        return p + 1;
    }
    return p;
}

/* Whether the subject byte at s is in the class [p, ep). */
static int
single(struct lua_pattern *m, const char *s, const char *p, const char *ep)
{
    spend(m, 1);
    if (s >= m->src_end)
        return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.':
        return 1;
    case ESC:
        return in_class(c, (unsigned char)p[1]);
    case '[':
        return in_set(c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* ---- items that match more than one byte ------------------------------------------------- */

static const char *match(struct lua_pattern *m, const char *s, const char *p);

/* class* from s: as many as there are, then fewer until the rest matches. */
static const char *
longest(struct lua_pattern *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t n = 0;
    while (single(m, s + n, p, ep))
        n++;
    for (; n >= 0; n--) {
        const char *e = match(m, s + n, ep + 1);
        if (e)
            return e;
    }
    return NULL;
}

/* class- from s: none, then one more at a time until the rest matches. */
static const char *
shortest(struct lua_pattern *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *e = match(m, s, ep + 1);
        if (e)
            return e;
        if (!single(m, s, p, ep))
            return NULL;
        s++;
    }
}

/* %bxy at s (p at x): from an x to the y that balances it. */
static const char *
balanced(struct lua_pattern *m, const char *s, const char *p)
{
    if (p + 1 >= m->p_end)
        fail(m, "malformed pattern (missing arguments to '%%b')");
    if (src(m, s) != (unsigned char)*p)
        return NULL;
    int open = *p, close = p[1], depth = 1;
    while (++s < m->src_end) {
        spend(m, 1);
        if (*s == close) {
            if (--depth == 0)
                return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* %1-%9 at s: the same bytes as that capture. */
static const char *
backref(struct lua_pattern *m, const char *s, int digit)
{
    int i = digit - '1';
    if (i < 0 || i >= m->level || m->capture[i].len == LUA_PATTERN_UNFINISHED)
        fail(m, "invalid capture index %%%d", i + 1);
    size_t len = (size_t)m->capture[i].len; /* a position capture is huge here: no match */
    if ((size_t)(m->src_end - s) < len)
        return NULL;
    spend(m, 1 + len / 8);
    return memcmp(m->capture[i].init, s, len) == 0 ? s + len : NULL;
}

static const char *
open_capture(struct lua_pattern *m, const char *s, const char *p, ptrdiff_t what)
{
    if (m->level >= LUA_PATTERN_MAXCAPTURES)
        fail(m, "too many captures");
    m->capture[m->level].init = s;
    m->capture[m->level].len = what;
    m->level++;
    const char *e = match(m, s, p);
    if (!e)
        m->level--;
    return e;
}

static const char *
close_capture(struct lua_pattern *m, const char *s, const char *p)
{
    int i = m->level - 1;
    while (i >= 0 && m->capture[i].len != LUA_PATTERN_UNFINISHED)
        i--;
    if (i < 0)
        fail(m, "invalid pattern capture");
    m->capture[i].len = s - m->capture[i].init;
    const char *e = match(m, s, p);
    if (!e)
        m->capture[i].len = LUA_PATTERN_UNFINISHED;
    return e;
}

/* ---- the pattern ------------------------------------------------------------------------- */

/* Matches the pattern from p on at s: returns the end of the match, or NULL. */
static const char *
match(struct lua_pattern *m, const char *s, const char *p)
{
    if (m->depth-- == 0)
        fail(m, "pattern too complex");
    spend(m, 1);
    while (p != m->p_end) {
        switch (*p) {
        case '(':
            if (pat(m, p + 1) == ')')
                s = open_capture(m, s, p + 2, LUA_PATTERN_POSITION);
            else
                s = open_capture(m, s, p + 1, LUA_PATTERN_UNFINISHED);
            goto out;
        case ')':
            s = close_capture(m, s, p + 1);
            goto out;
        case '$':
            if (p + 1 == m->p_end) { /* an anchor only at the very end */
                s = s == m->src_end ? s : NULL;
                goto out;
            }
            break;
        case ESC: {
            int c = pat(m, p + 1);
            if (c == 'b') {
                s = balanced(m, s, p + 2);
                if (!s)
                    goto out;
                p += 4;
                continue;
            }
            if (c == 'f') {
                p += 2;
                if (pat(m, p) != '[')
                    fail(m, "missing '[' after '%%f' in pattern");
                const char *ep = class_end(m, p);
                int before = s == m->src ? 0 : (unsigned char)s[-1];
                if (in_set(before, p, ep - 1) || !in_set(src(m, s), p, ep - 1)) {
                    s = NULL;
                    goto out;
                }
                p = ep;
                continue;
            }
            if (c >= '0' && c <= '9') {
                s = backref(m, s, c);
                if (!s)
                    goto out;
                p += 2;
                continue;
            }
            break;
        }
        default:
            break;
        }
        /* a single-character class, maybe followed by * + - ? */
        const char *ep = class_end(m, p);
        int suffix = pat(m, ep);
        if (!single(m, s, p, ep)) {
            if (suffix == '*' || suffix == '?' || suffix == '-') { /* zero times will do */
                p = ep + 1;
                continue;
            }
            s = NULL;
            goto out;
        }
        if (suffix == '?') {
            const char *e = match(m, s + 1, ep + 1);
            if (e) {
                s = e;
                goto out;
            }
            p = ep + 1;
            continue;
        }
        if (suffix == '+') {
            s = longest(m, s + 1, p, ep);
            goto out;
        }
        if (suffix == '*') {
            s = longest(m, s, p, ep);
            goto out;
        }
        if (suffix == '-') {
            s = shortest(m, s, p, ep);
            goto out;
        }
        s++;
        p = ep;
    }
out:
    m->depth++;
    return s;
}

/* ---- the interface ----------------------------------------------------------------------- */

void
lua_pattern_init(struct lua_pattern *m, const char *s, size_t slen, const char *p, size_t plen,
                 uint64_t budget)
{
    memset(m, 0, offsetof(struct lua_pattern, capture));
    m->src = s;
    m->src_end = s + slen;
    m->p = p;
    m->p_end = p + plen;
    m->budget = budget;
    m->err[0] = '\0';
}

enum lua_pattern_result
lua_pattern_match(struct lua_pattern *m, size_t at, size_t *end)
{
    m->level = 0;
    m->depth = LUA_PATTERN_MAXDEPTH;
    switch (setjmp(m->jb)) {
    case 0:
        break;
    case LUA_PATTERN_BUDGET:
        return LUA_PATTERN_BUDGET;
    case LUA_PATTERN_STOPPED:
        return LUA_PATTERN_STOPPED;
    default:
        return LUA_PATTERN_ERROR;
    }
    const char *e = match(m, m->src + at, m->p);
    if (!e)
        return LUA_PATTERN_NOMATCH;
    *end = (size_t)(e - m->src);
    return LUA_PATTERN_MATCH;
}

int
lua_pattern_is_plain(const char *p, size_t plen)
{
    for (size_t i = 0; i < plen; i++)
        if (p[i] != '\0' && strchr(SPECIALS, p[i]))
            return 0;
    return 1;
}

ptrdiff_t
lua_pattern_capture_of(struct lua_pattern *m, int i, const char *s, const char *e,
                       const char **start, size_t *pos)
{
    if (i >= m->level) {
        if (i != 0) {
            snprintf(m->err, sizeof(m->err), "invalid capture index %%%d", i + 1);
            return LUA_PATTERN_ERROR;
        }
        *start = s;
        return e - s;
    }
    *start = m->capture[i].init;
    ptrdiff_t len = m->capture[i].len;
    if (len == LUA_PATTERN_UNFINISHED) {
        snprintf(m->err, sizeof(m->err), "unfinished capture");
        return LUA_PATTERN_ERROR;
    }
    if (len == LUA_PATTERN_POSITION)
        *pos = (size_t)(m->capture[i].init - m->src) + 1;
    return len;
}
