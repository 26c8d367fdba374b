/* jsonstr.c - any bytes as one JSON string: control characters escaped, invalid UTF-8 replaced. */
#include "jsonstr.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* Bytes that go out as they are: printable ASCII but `"` and `\`. */
static inline bool
plain(unsigned char c)
{
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether one of the eight bytes of w is zero (exact for the word, not for each byte). */
static inline uint64_t
has_zero8(uint64_t w)
{
    return (w - ONES) & ~w & HIGHS;
}

/* Whether all eight bytes of w are plain(): none below 0x20 (the high bit of each byte of
 * w + 0x60 sets at 0x20 and above, when w's own high bit is clear), none at or past 0x7F
 * (w + 0x01 sets the high bit from 0x7F), none `"` or `\`. */
static inline bool
all_plain8(uint64_t w)
{
    if (w & HIGHS)
        return false;
    uint64_t ge20 = (w + 0x6060606060606060ULL) & HIGHS;
    uint64_t ge7f = (w + ONES) & HIGHS;
    return ge20 == HIGHS && !ge7f && !has_zero8(w ^ (ONES * '"')) && !has_zero8(w ^ (ONES * '\\'));
}

static inline uint64_t
load64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static inline uint64_t
load32(const unsigned char *p)
{
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

static inline uint64_t
load16(const unsigned char *p)
{
    uint16_t w;
    memcpy(&w, p, 2);
    return w;
}

/*
 * p[0..len) quoted at out when every byte of it is plain (most strings are):
 * returns the length written, or 0 when a byte is not (then what it wrote is
 * to be written over). Words of eight, the last one overlapping the one
 * before; a string shorter than eight as two overlapping halves, the rest of
 * the word filled with plain bytes.
 */
static size_t
write_if_plain(char *out, const unsigned char *p, size_t len)
{
    static const uint64_t fill = ONES * 'a';
    char *o = out + 1;
    out[0] = '"';
    if (len >= 8) {
        for (size_t i = 0; i + 8 < len; i += 8) {
            uint64_t w = load64(p + i);
            if (!all_plain8(w))
                return 0;
            memcpy(o + i, &w, 8);
        }
        uint64_t last = load64(p + len - 8);
        if (!all_plain8(last))
            return 0;
        memcpy(o + len - 8, &last, 8);
        out[len + 1] = '"';
        return len + 2;
    }
    if (len >= 4) {
        uint64_t a = load32(p), b = load32(p + len - 4);
        if (!all_plain8(a | b << 32))
            return 0;
        uint32_t a32 = (uint32_t)a, b32 = (uint32_t)b;
        memcpy(o, &a32, 4);
        memcpy(o + len - 4, &b32, 4);
    } else if (len >= 2) {
        uint64_t a = load16(p), b = load16(p + len - 2);
        if (!all_plain8(a | b << 16 | (fill & ~0xffffffffULL)))
            return 0;
        uint16_t a16 = (uint16_t)a, b16 = (uint16_t)b;
        memcpy(o, &a16, 2);
        memcpy(o + len - 2, &b16, 2);
    } else if (len == 1) {
        if (!plain(p[0]))
            return 0;
        o[0] = (char)p[0];
    }
    out[len + 1] = '"';
    return len + 2;
}

/*
 * The length of the well-formed UTF-8 sequence that starts s[0..n) (s[0] >=
 * 0x80), or 0 when it is ill-formed, with *bad set to the length of its
 * maximal subpart (at least 1): the bytes that start a well-formed sequence
 * but do not finish one (Unicode 15, section 3.9, table 3-7).
 */
static size_t
utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf; /* the range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong below */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates above */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong below */
        else if (c == 0xf4)
            hi = 0x8f; /* past U+10FFFF above */
    } else {
        *bad = 1; /* a continuation byte, 0xC0, 0xC1, 0xF5..0xFF */
        return 0;
    }
    size_t i = 1;
    for (; i < need && i < n; i++) {
        unsigned char x = s[i];
        if (i == 1 ? (x < lo || x > hi) : (x < 0x80 || x > 0xbf))
            break;
    }
    if (i == need)
        return need;
    *bad = i;
    return 0;
}

bool
jsonstr_plain(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!plain((unsigned char)s[i]))
            return false;
    return true;
}

size_t
jsonstr_write(char *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t plain_len = write_if_plain(out, p, len);
    if (plain_len)
        return plain_len;
    char *o = out;
    *o++ = '"';
    size_t i = 0;
    while (i < len) {
        /* Eight plain bytes at a time: most strings are all plain, and out has room for six
         * bytes of each byte of s. */
        while (len - i >= 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!all_plain8(w))
                break;
            memcpy(o, &w, 8);
            o += 8;
            i += 8;
        }
        if (i == len)
            break;
        unsigned char c = p[i];
        if (plain(c)) {
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c < 0x80) {
            *o++ = '\\';
            switch (c) {
            case '"':
            case '\\':
                *o++ = (char)c;
                break;
            case '\n':
                *o++ = 'n';
                break;
            case '\r':
                *o++ = 'r';
                break;
            case '\t':
                *o++ = 't';
                break;
            case '\b':
                *o++ = 'b';
                break;
            case '\f':
                *o++ = 'f';
                break;
            default: /* other controls and DEL */
                memcpy(o, "u00", 3);
                o[3] = hex[c >> 4];
                o[4] = hex[c & 15];
                o += 5;
                break;
            }
            i++;
            continue;
        }
        size_t bad = 0;
        size_t n = utf8_seq(p + i, len - i, &bad);
        if (n == 0) {
            memcpy(o, "\\ufffd", 6);
            o += 6;
            i += bad;
        } else if (n == 3 && c == 0xe2 && p[i + 1] == 0x80 &&
                   (p[i + 2] == 0xa8 || p[i + 2] == 0xa9)) {
            memcpy(o, p[i + 2] == 0xa8 ? "\\u2028" : "\\u2029", 6);
            o += 6;
            i += 3;
        } else {
            memcpy(o, p + i, n);
            o += n;
            i += n;
        }
    }
    *o++ = '"';
    return (size_t)(o - out);
}

void
jsonstr_add(struct sbuf *b, const char *s, size_t len)
{
    sbuf_reserve(b, JSONSTR_MAX(len));
    b->len += jsonstr_write(b->p + b->len, s, len);
    b->p[b->len] = '\0';
}

void
jsonstr_adds(struct sbuf *b, const char *s)
{
    if (!s)
        sbuf_add(b, "null", 4);
    else
        jsonstr_add(b, s, strlen(s));
}
