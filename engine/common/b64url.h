/* b64url.h - base64url without padding (RFC 4648 section 5), as JOSE writes it (RFC 7515
 * section 2). */
#ifndef SLUICE_B64URL_H
#define SLUICE_B64URL_H

#include <stddef.h>

/* The most bytes decoding len characters can give. */
#define B64URL_DECODED_MAX(len) (((len) / 4) * 3 + 2)

/* The characters encoding len bytes take (no padding), without a NUL. */
#define B64URL_ENCODED_LEN(len) (((len) / 3) * 4 + ((len) % 3 ? (len) % 3 + 1 : 0))

/*
 * Decodes in[0..len) into out (cap bytes). Strict, so that one byte string
 * has exactly one encoding: only the characters A-Z a-z 0-9 - _, no padding
 * ("="), no white space, no length of 1 modulo 4, and the unused low bits of
 * the last character zero. Returns the number of bytes written, or -1 when
 * the text is not such an encoding or out is too small. Allocates nothing.
 */
long b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap);

/*
 * Encodes in[0..len) into out (cap bytes) without padding and NUL-terminates
 * it. Returns the length written (B64URL_ENCODED_LEN(len)), or -1 when cap is
 * smaller than that plus one.
 */
long b64url_encode(const unsigned char *in, size_t len, char *out, size_t cap);

#endif
