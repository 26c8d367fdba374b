/* store_redis_codec.h - the Redis store's data in Redis: key names, hash tags, stored responses. */
#ifndef SLUICE_STORE_REDIS_CODEC_H
#define SLUICE_STORE_REDIS_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "codec.h"
#include "limiter.h"
#include "util.h"

struct store_entry;

#define MAX_HASH_TAG 40          /* bytes of a hash tag taken from a key as it is */
#define EXACT_LIMIT (1ull << 53) /* the scripts' doubles hold integers exactly below this */
#define TOKEN_LEN 8              /* bytes of a fill token */

/*
 * The stored response: [body][content type][headers][etag], then the head's trailer
 * [u64 age_ms][u64 swr_ms][u64 sie_ms]
 * [u32 content type length][u32 headers length][u32 etag length][u64 stale_ms]
 * [u16 status][u8 flags][u8 which of content type (1), headers (2), etag (4) are set, and
 * 8 for this layout], written by the gateway, then [f64 stored_ms][f64 expires_ms][8-byte
 * fill token], appended by fill.lua. The body comes first so that it is used in place. A
 * value without the 8 bit (written before the three u64 of ages existed) has no ages: they
 * read as 0, and the whole value before the older trailer is body, content type, headers and
 * etag.
 *
 * With the 16 bit, the coded forms of the body (store_entry.coded) follow the etag:
 * [br form][zstd form][gzip form][u32 br length][u32 zstd length][u32 gzip length], before
 * the ages (a value without it has none). A binary older than this layout would read those
 * bytes as part of the body: entries of endpoints with compress must not be read by one.
 */
#define AGES_LEN (8 + 8 + 8)
#define CODED_LEN (4 * CODEC_N) /* the coded forms' lengths, with the 16 bit */
#define HEAD_TRAILER_LEN (AGES_LEN + 4 + 4 + 4 + 8 + 2 + 1 + 1)
#define TRAILER_LEN (HEAD_TRAILER_LEN + 8 + 8 + TOKEN_LEN)

/*
 * Writes the hash tag of the key raw[0..len) (the part store_redis_codec.c's
 * opening comment calls TAG) to out (room for at least 18 bytes, not
 * NUL-terminated). Returns its length: at most MAX_HASH_TAG.
 */
size_t codec_hash_tag(const char *raw, size_t len, char *out);

/*
 * Returns the rule as it decides behaviour: what makes two limits one counter
 * (as in the memory store).
 */
struct limiter_rule codec_rule_identity(const struct limiter_rule *r);

/* Returns whether the scripts' doubles compute the rule exactly (every intermediate below 2^53). */
bool codec_rule_exact(const struct limiter_rule *id);

/* Appends to b the key of a limit: "sl:{TAG}:l:ALGO:LIMIT:WINDOW:BURST:KEY", KEY raw[0..len). */
void codec_limit_key(struct sbuf *b, const struct limiter_rule *id, const char *raw, size_t len);

/*
 * Appends to b the key of one part of a cache entry or of a tag: 'c' the entry (its fill token,
 * expiry and tags), 'r' the stored response, 'f' the fill lease, 'v' a primary's variants,
 * 't' a tag's generation.
 */
void codec_cache_key(struct sbuf *b, char kind, const char *raw, size_t len);

/*
 * Appends to b one RESP argument whose bytes are a key of `kind` ('l' with id:
 * codec_limit_key(), else codec_cache_key()), built in scratch (the caller's
 * buffer, overwritten).
 */
void codec_resp_key(struct sbuf *b, struct sbuf *scratch, char kind, const struct limiter_rule *id,
                    const char *raw, size_t len);

/*
 * Reads a non-negative integer from an integer reply or a decimal string reply
 * (r is borrowed). Returns 0 with *out set, or -1.
 */
int codec_reply_u64(const redisReply *r, uint64_t *out);

/* Appends to b the head of e's stored response: everything but what fill.lua appends. */
void codec_entry_head(struct sbuf *b, const struct store_entry *e);

/* Returns the length codec_entry_head() appends for e. */
size_t codec_entry_head_len(const struct store_entry *e);

/*
 * Returns a new entry that owns v (a malloc'd stored response of len bytes), or NULL, v
 * untouched, when the value is malformed.
 */
struct store_entry *codec_entry_from_value(char *v, size_t len);

/*
 * Appends to b the SCAN pattern of the glob g[0..len): fnmatch's syntax written as Redis's,
 * widened where it cannot be said exactly (an untranslated bracket becomes '?'), so that it
 * matches at least the keys fnmatch matches (the process runs in the C locale: a character
 * is a byte); the keys it returns are filtered with store_key_matches(). A bracket is kept
 * when it holds only letters, digits and ranges between them; literal bytes are escaped.
 */
void codec_glob_to_redis(struct sbuf *b, const char *g, size_t len);

/*
 * Appends to b the SCAN pattern of the entry keys whose cache key the glob
 * g[0..len) matches, or whose primary part it matches (a variant of a
 * primary that matches): "sl:{*}:c:", codec_glob_to_redis(), and a final
 * '*' unless it has one.
 */
void codec_scan_match(struct sbuf *b, const char *g, size_t len);

/* Reads a SCAN reply: its cursor copied into cursor[cap] (NUL-terminated), *last set when it
 * is "0". Returns the reply's keys (borrowed from r), or NULL when r is not a SCAN reply. */
const redisReply *codec_scan_reply(const redisReply *r, char *cursor, size_t cap, bool *last);

/*
 * Returns the cache key in the entry key k[0..klen) ("sl:{TAG}:c:KEY"), pointing into k,
 * with its length in *rawlen; NULL when k is not an entry key.
 */
const char *codec_entry_key_raw(const char *k, size_t klen, size_t *rawlen);

/* What a stored response says of itself in its trailer, read without its body. */
struct codec_meta {
    uint16_t status;
    uint8_t flags;
    uint64_t stored_ms, expires_ms, stale_ms, age_ms, swr_ms, sie_ms;
    size_t body_len; /* the body alone */
    size_t bytes;    /* body, content type, header lines and ETag, and the coded forms */
};

/*
 * Reads the trailer of a stored response of `total` bytes from its last
 * taillen bytes, tail[0..taillen) (TRAILER_LEN + CODED_LEN of them are enough). Returns
 * 0 with *out filled, or -1 when they do not make a trailer.
 */
int codec_meta_from_tail(const char *tail, size_t taillen, size_t total, struct codec_meta *out);

/*
 * Calls fn(ctx, tag, taglen) for each tag recorded in an entry's value
 * v[0..len) ([fill token][f64 expires_ms], then each tag's key and
 * generation), the tag as the gateway named it (borrowed from v). Returns 0,
 * or -1 when the value is malformed (some tags may have been reported).
 */
int codec_entry_tags(const char *v, size_t len,
                     void (*fn)(void *ctx, const char *tag, size_t taglen), void *ctx);

/* ---- small encoders ----------------------------------------------------------------------- */

/* Appends v as 4 little-endian bytes. */
static inline void
codec_put_u32(struct sbuf *b, uint32_t v)
{
    unsigned char p[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    sbuf_add(b, p, 4);
}

/* Appends v as a little-endian IEEE double, the scripts' struct.unpack('<d'). */
static inline void
codec_put_f64(struct sbuf *b, double v)
{
    uint64_t bits;
    unsigned char p[8];

    memcpy(&bits, &v, sizeof(bits));
    for (int i = 0; i < 8; i++, bits >>= 8)
        p[i] = (unsigned char)bits;
    sbuf_add(b, p, 8);
}

#endif
