/* jsonstr.c - any bytes as one JSON string: control characters escaped, invalid UTF-8 replaced. */
#include "jsonstr.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* Bytes that go out as they are: printable ASCII but `"` and `\`. */
static bool
plain(unsigned char c)
{
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
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

void
jsonstr_add(struct sbuf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    sbuf_add(b, "\"", 1);
    size_t i = 0;
    while (i < len) {
        size_t run = i;
        while (run < len && plain(p[run]))
            run++;
        if (run > i) {
            sbuf_add(b, p + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = p[i];
        if (c < 0x80) {
            char esc[6] = {'\\', 0, 0, 0, 0, 0};
            size_t n = 2;
            switch (c) {
            case '"':
                esc[1] = '"';
                break;
            case '\\':
                esc[1] = '\\';
                break;
            case '\n':
                esc[1] = 'n';
                break;
            case '\r':
                esc[1] = 'r';
                break;
            case '\t':
                esc[1] = 't';
                break;
            case '\b':
                esc[1] = 'b';
                break;
            case '\f':
                esc[1] = 'f';
                break;
            default: /* other controls and DEL */
                memcpy(esc + 1, "u00", 3);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                n = 6;
                break;
            }
            sbuf_add(b, esc, n);
            i++;
            continue;
        }
        size_t bad = 0;
        size_t n = utf8_seq(p + i, len - i, &bad);
        if (n == 0) {
            sbuf_add(b, "\\ufffd", 6);
            i += bad;
        } else if (n == 3 && p[i] == 0xe2 && p[i + 1] == 0x80 &&
                   (p[i + 2] == 0xa8 || p[i + 2] == 0xa9)) {
            sbuf_add(b, p[i + 2] == 0xa8 ? "\\u2028" : "\\u2029", 6);
            i += 3;
        } else {
            sbuf_add(b, p + i, n);
            i += n;
        }
    }
    sbuf_add(b, "\"", 1);
}

void
jsonstr_adds(struct sbuf *b, const char *s)
{
    if (!s)
        sbuf_add(b, "null", 4);
    else
        jsonstr_add(b, s, strlen(s));
}
