/* jsonstr.h - any bytes as one JSON string: control characters escaped, invalid UTF-8 replaced. */
#ifndef SLUICE_JSONSTR_H
#define SLUICE_JSONSTR_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/*
 * Appends s[0..len) to b as a quoted JSON string (RFC 8259 section 7) that
 * any JSON parser reads: `"` and `\` escaped, control characters (U+0000 to
 * U+001F, and DEL) as \n, \r, \t, \b, \f or \u00XX, U+2028 and U+2029 as
 * \u2028 and \u2029 (JavaScript reads them as line ends), valid UTF-8 kept as
 * it is, and every maximal ill-formed subsequence (a stray continuation byte,
 * a truncated sequence, an overlong form, a surrogate, a code point past
 * U+10FFFF, bytes 0xC0, 0xC1, 0xF5 to 0xFF) replaced by one \ufffd (the
 * Unicode Standard's "substitution of maximal subparts", as WHATWG's decoder
 * does). s may hold NUL bytes; s may be NULL when len is 0.
 */
void jsonstr_add(struct sbuf *b, const char *s, size_t len);

/* The most bytes jsonstr_write() writes for len bytes: each byte at most six ("\u00XX",
 * "\ufffd"), and the quotes. */
#define JSONSTR_MAX(len) (6 * (size_t)(len) + 2)

/*
 * As jsonstr_add(), into out, which has room for JSONSTR_MAX(len) bytes (not
 * terminated). Returns the length written. For formatters that size their
 * buffer once for a whole line.
 */
size_t jsonstr_write(char *out, const char *s, size_t len);

/* Whether s[0..len) goes into a JSON string as it is: printable ASCII but `"` and `\`. */
bool jsonstr_plain(const char *s, size_t len);

/* As jsonstr_add() for a NUL-terminated s; NULL appends the JSON literal null. */
void jsonstr_adds(struct sbuf *b, const char *s);

#endif
