/* codec.h - content codings of response bodies (RFC 9110 section 8.4.1): gzip, br, zstd. */
#ifndef SLUICE_CODEC_H
#define SLUICE_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The codings, in the server's order of preference among equal q values: br, zstd, gzip. */
enum codec {
    CODEC_BR = 0,
    CODEC_ZSTD,
    CODEC_GZIP,
    CODEC_N,
};

#define CODEC_BIT(c) (1u << (c))
#define CODEC_ALL (CODEC_BIT(CODEC_BR) | CODEC_BIT(CODEC_ZSTD) | CODEC_BIT(CODEC_GZIP))

/* The coding's name as Content-Encoding says it ("br", "zstd", "gzip"); static. */
const char *codec_name(enum codec c);

/* The coding named name[0..len) (ASCII case-insensitive; "x-gzip" is gzip, RFC 9110 section
 * 8.4.1.3), or -1 when it is none of them. */
int codec_from_name(const char *name, size_t len);

/*
 * Codes in[0..len) with coding c (gzip level 6, brotli quality 5 and window 2^22, zstd level
 * 3). Returns a new block of *outlen bytes (the caller frees it), or NULL when the coder
 * failed or the coded form would not be smaller than the input (then nothing is worth keeping).
 * Counts each coded form made (codec_count()).
 */
char *codec_encode(enum codec c, const void *in, size_t len, size_t *outlen);

/*
 * Decodes in[0..len), coded with c, into a new block of *outlen bytes (the caller frees it),
 * refusing more than max bytes of output. Returns NULL on malformed input or past max.
 */
char *codec_decode(enum codec c, const void *in, size_t len, size_t max, size_t *outlen);

/* How many coded forms codec_encode() made with c since the process started (every thread). */
uint64_t codec_count(enum codec c);

#endif
