/* store_redis_codec.c - the Redis store's data in Redis: key names, hash tags, stored responses. */
#define _GNU_SOURCE
#include "store_redis_codec.h"

#include <stdlib.h>
#include <string.h>

#include "redis_conn.h"
#include "store.h"
#include "util.h"

/*
 * Keys: "sl:{TAG}:l:ALGO:LIMIT:WINDOW:BURST:KEY" (a limit), "sl:{TAG}:c:KEY"
 * (an entry: its fill token, expiry and tags), "sl:{TAG}:r:KEY" (the stored
 * response), "sl:{TAG}:f:KEY" (the fill lease), "sl:{TAG}:v:KEY" (a primary's
 * variants: the set of its secondaries' KEYs), "sl:{TAG}:t:TAG" (a tag),
 * KEY being the bytes the gateway gave. TAG, the Redis Cluster hash tag, is
 * the part of KEY's primary part (up to its first STORE_KEY_SEP) after its
 * last ':' (template escaping keeps ':' out of values, so that is the last
 * variable's value: the user in "tier:u:{user}", "crm:contacts:{user}",
 * "crm:{user}"), or a hash of it when it is empty, longer than 40 bytes or
 * holds a brace. All keys of a caller whose templates end in the caller's id
 * share one slot, and a secondary entry shares its primary's. (Entries were
 * "e"/"b" keys in an earlier layout: those are never read, and expire.)
 */

size_t
codec_hash_tag(const char *raw, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const char *seg = raw;
    size_t n = len = store_key_primary_len(raw, len);
    const char *colon = len ? memrchr(raw, ':', len) : NULL;

    if (colon) {
        seg = colon + 1;
        n = len - (size_t)(seg - raw);
    }
    if (n >= 1 && n <= MAX_HASH_TAG && !memchr(seg, '{', n) && !memchr(seg, '}', n)) {
        memcpy(out, seg, n);
        return n;
    }
    uint64_t v = util_fnv1a(seg, n);
    out[0] = '#';
    for (int i = 16; i >= 1; i--, v >>= 4)
        out[i] = hex[v & 15];
    return 17;
}

/* Appends "sl:{TAG}:KIND:" to b. */
static void
key_prefix(struct sbuf *b, char kind, const char *raw, size_t len)
{
    char tag[MAX_HASH_TAG + 1];
    size_t n = codec_hash_tag(raw, len, tag);

    sbuf_add(b, "sl:{", 4);
    sbuf_add(b, tag, n);
    char tail[4] = {'}', ':', kind, ':'};
    sbuf_add(b, tail, 4);
}

struct limiter_rule
codec_rule_identity(const struct limiter_rule *r)
{
    struct limiter_rule id = {.algo = r->algo, .limit = r->limit, .window_ms = r->window_ms};

    if (r->algo == LIMITER_TOKEN_BUCKET)
        id.burst = r->burst ? r->burst : r->limit;
    return id;
}

void
codec_limit_key(struct sbuf *b, const struct limiter_rule *id, const char *raw, size_t len)
{
    key_prefix(b, 'l', raw, len);
    sbuf_add_u64(b, (uint64_t)id->algo);
    sbuf_add(b, ":", 1);
    sbuf_add_u64(b, id->limit);
    sbuf_add(b, ":", 1);
    sbuf_add_u64(b, id->window_ms);
    sbuf_add(b, ":", 1);
    sbuf_add_u64(b, id->burst);
    sbuf_add(b, ":", 1);
    sbuf_add(b, raw, len);
}

void
codec_cache_key(struct sbuf *b, char kind, const char *raw, size_t len)
{
    key_prefix(b, kind, raw, len);
    sbuf_add(b, raw, len);
}

bool
codec_rule_exact(const struct limiter_rule *id)
{
    unsigned __int128 lw = (unsigned __int128)id->limit * id->window_ms;
    unsigned __int128 bw = (unsigned __int128)id->burst * id->window_ms;

    return 2 * (lw + id->window_ms + id->limit) < EXACT_LIMIT && 2 * bw < EXACT_LIMIT;
}

void
codec_resp_key(struct sbuf *b, struct sbuf *scratch, char kind, const struct limiter_rule *id,
               const char *raw, size_t len)
{
    scratch->len = 0;
    if (kind == 'l')
        codec_limit_key(scratch, id, raw, len);
    else
        codec_cache_key(scratch, kind, raw, len);
    resp_arg(b, scratch->p, scratch->len);
}

int
codec_reply_u64(const redisReply *r, uint64_t *out)
{
    if (r->type == REDIS_REPLY_INTEGER) {
        if (r->integer < 0)
            return -1;
        *out = (uint64_t)r->integer;
        return 0;
    }
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < 21) {
        uint64_t v = 0;
        for (size_t i = 0; i < r->len; i++) {
            unsigned d = (unsigned char)r->str[i] - '0';
            if (d > 9 || v > (UINT64_MAX - d) / 10)
                return -1;
            v = v * 10 + d;
        }
        *out = v;
        return 0;
    }
    return -1;
}

static uint32_t
rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
rd_f64_ms(const unsigned char *p)
{
    uint64_t bits = 0;
    double d;

    for (int i = 7; i >= 0; i--)
        bits = bits << 8 | p[i];
    memcpy(&d, &bits, sizeof(d));
    return d > 0 && d < 1.8e19 ? (uint64_t)d : 0;
}

static uint64_t
rd_u64(const unsigned char *p)
{
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static void
wr_u64(struct sbuf *b, uint64_t v)
{
    codec_put_u32(b, (uint32_t)v);
    codec_put_u32(b, (uint32_t)(v >> 32));
}

/* The parts a stored response holds, in the last byte of its head (see store_redis_codec.h). */
#define HAS_CONTENT_TYPE 1u
#define HAS_HEADERS 2u
#define HAS_ETAG 4u
#define HAS_AGES 8u   /* the layout with age_ms, swr_ms and sie_ms */
#define HAS_CODED 16u /* the coded forms of the body and their lengths, before the ages */

void
codec_entry_head(struct sbuf *b, const struct store_entry *e)
{
    size_t ctlen = e->content_type ? strlen(e->content_type) : 0;
    size_t etlen = e->etag ? strlen(e->etag) : 0;
    size_t hlen = e->headers ? e->headers_len : 0;
    unsigned char tail[4] = {
        (unsigned char)e->status, (unsigned char)(e->status >> 8), e->flags,
        (unsigned char)((e->content_type ? HAS_CONTENT_TYPE : 0) | (e->headers ? HAS_HEADERS : 0) |
                        (e->etag ? HAS_ETAG : 0) | (e->coded ? HAS_CODED : 0) | HAS_AGES)};

    if (e->body_len)
        sbuf_add(b, e->body, e->body_len);
    if (ctlen)
        sbuf_add(b, e->content_type, ctlen);
    if (hlen)
        sbuf_add(b, e->headers, hlen);
    if (etlen)
        sbuf_add(b, e->etag, etlen);
    if (e->coded) {
        for (int c = 0; c < CODEC_N; c++)
            if (e->coded->len[c])
                sbuf_add(b, e->coded->body[c], e->coded->len[c]);
        for (int c = 0; c < CODEC_N; c++)
            codec_put_u32(b, e->coded->len[c]);
    }
    wr_u64(b, e->age_ms);
    wr_u64(b, e->swr_ms);
    wr_u64(b, e->sie_ms);
    codec_put_u32(b, (uint32_t)ctlen);
    codec_put_u32(b, (uint32_t)hlen);
    codec_put_u32(b, (uint32_t)etlen);
    wr_u64(b, e->stale_ms);
    sbuf_add(b, tail, 4);
}

/* The bytes the coded forms take in a stored response (with their lengths). */
static size_t
coded_len(const struct store_entry *e)
{
    size_t n = 0;

    if (!e->coded)
        return 0;
    for (int c = 0; c < CODEC_N; c++)
        n += e->coded->len[c];
    return n + CODED_LEN;
}

size_t
codec_entry_head_len(const struct store_entry *e)
{
    return coded_len(e) + e->body_len + (e->content_type ? strlen(e->content_type) : 0) +
           (e->headers ? e->headers_len : 0) + (e->etag ? strlen(e->etag) : 0) + HEAD_TRAILER_LEN;
}

struct store_entry *
codec_entry_from_value(char *v, size_t len)
{
    const unsigned char *p = (const unsigned char *)v;

    if (len < TRAILER_LEN - AGES_LEN)
        return NULL;
    size_t t = len - (TRAILER_LEN - AGES_LEN); /* the trailer after the ages */
    uint64_t ctlen = rd_u32(p + t), hlen = rd_u32(p + t + 4), etlen = rd_u32(p + t + 8);
    uint64_t stale = rd_u64(p + t + 12);
    uint16_t status = (uint16_t)(p[t + 20] | p[t + 21] << 8);
    uint8_t flags = p[t + 22], has = p[t + 23];
    uint64_t stored = rd_f64_ms(p + t + 24), expires = rd_f64_ms(p + t + 32);
    uint64_t ages[3] = {0, 0, 0};
    if (has & HAS_AGES) {
        if (t < AGES_LEN)
            return NULL;
        t -= AGES_LEN;
        for (int i = 0; i < 3; i++)
            ages[i] = rd_u64(p + t + 8 * i);
    }
    struct store_coded *coded = NULL;
    if (has & HAS_CODED) {
        uint64_t sum = 0;
        if (t < CODED_LEN)
            return NULL;
        t -= CODED_LEN;
        coded = xcalloc(1, sizeof(*coded));
        for (int c = 0; c < CODEC_N; c++)
            sum += coded->len[c] = rd_u32(p + t + 4 * c);
        if (sum + ctlen + hlen + etlen > t) {
            free(coded);
            return NULL;
        }
        t -= (size_t)sum;
        for (int c = 0, at = 0; c < CODEC_N; at += (int)coded->len[c], c++)
            coded->body[c] = coded->len[c] ? v + t + at : NULL;
    }
    if (ctlen + hlen + etlen > t)
        return NULL;
    size_t blen = t - (size_t)(ctlen + hlen + etlen);
    const char *q = v + blen;
    char *ct = has & HAS_CONTENT_TYPE ? xstrndup(q, ctlen) : NULL;
    struct store_entry *e = store_entry_new(status, ct, v, blen);
    q += ctlen;
    if (has & HAS_HEADERS) {
        e->headers = xmalloc(hlen + 1); /* NUL-terminated too, for convenience */
        memcpy(e->headers, q, hlen);
        e->headers[hlen] = '\0';
        e->headers_len = (uint32_t)hlen;
    }
    q += hlen;
    if (has & HAS_ETAG)
        e->etag = xstrndup(q, etlen);
    e->flags = flags;
    e->stale_ms = stale;
    e->age_ms = ages[0];
    e->swr_ms = ages[1];
    e->sie_ms = ages[2];
    e->stored_ms = stored;
    e->expires_ms = expires;
    e->coded = coded;
    return e;
}

static bool
is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

void
codec_glob_to_redis(struct sbuf *b, const char *g, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)g[i];
        if (c == '*' || c == '?') {
            sbuf_add(b, &g[i], 1);
            continue;
        }
        if (c == '[') {
            /* fnmatch: [, optional ! or ^, a ']' first is literal, up to the next ']'. */
            size_t j = i + 1, start;
            bool neg = j < len && (g[j] == '!' || g[j] == '^'), simple = true;
            if (neg)
                j++;
            start = j;
            if (j < len && g[j] == ']')
                j++;
            while (j < len && g[j] != ']') {
                if (g[j] == '[' && j + 1 < len &&
                    (g[j + 1] == ':' || g[j + 1] == '=' || g[j + 1] == '.')) {
                    /* a class, equivalence class or collating symbol: skip over it */
                    const char *close = NULL;
                    for (size_t k = j + 2; k + 1 < len && !close; k++)
                        if (g[k] == g[j + 1] && g[k + 1] == ']')
                            close = &g[k];
                    if (!close) {
                        sbuf_add(b, "*", 1); /* unclear to the end: anything wider will do */
                        return;
                    }
                    simple = false;
                    j = (size_t)(close - g) + 2;
                    continue;
                }
                if (g[j] == '\\' && j + 1 < len)
                    j++;
                j++;
            }
            if (j >= len) {
                /* no closing ']': fnmatch takes this '[' literally */
                sbuf_add(b, "\\[", 2);
                continue;
            }
            /* g[start, j) is the set; check it is letters, digits and ranges "x-y" of them
             * (x <= y; no '-' next to a range) */
            for (size_t k = start; k < j && simple; k++) {
                if (g[k] == '-')
                    simple = k > start && k + 1 < j && g[k - 1] <= g[k + 1] &&
                             (k < start + 2 || g[k - 2] != '-') && (k + 2 >= j || g[k + 2] != '-');
                else
                    simple = is_alnum((unsigned char)g[k]);
            }
            if (simple && j > start) {
                sbuf_add(b, neg ? "[^" : "[", neg ? 2 : 1);
                sbuf_add(b, g + start, j - start);
                sbuf_add(b, "]", 1);
            } else {
                sbuf_add(b, "?", 1);
            }
            i = j;
            continue;
        }
        if (c == '\\') {
            if (i + 1 == len) {
                sbuf_add(b, "*", 1); /* fnmatch matches nothing: anything wider will do */
                continue;
            }
            c = (unsigned char)g[++i];
        }
        if (!is_alnum(c))
            sbuf_add(b, "\\", 1);
        sbuf_add(b, &c, 1);
    }
}

const redisReply *
codec_scan_reply(const redisReply *r, char *cursor, size_t cap, bool *last)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= cap ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    memcpy(cursor, r->element[0]->str, r->element[0]->len);
    cursor[r->element[0]->len] = '\0';
    *last = strcmp(cursor, "0") == 0;
    return r->element[1];
}

void
codec_scan_match(struct sbuf *b, const char *g, size_t len)
{
    size_t start = b->len;

    sbuf_adds(b, "sl:{*}:c:");
    codec_glob_to_redis(b, g, len);
    size_t n = b->len - start;
    if (b->p[b->len - 1] != '*' || (n >= 2 && b->p[b->len - 2] == '\\'))
        sbuf_add(b, "*", 1);
}

/* The raw part of the key k[0..klen) of `kind` ("sl:{TAG}:KIND:RAW"), or NULL. */
static const char *
key_raw(const char *k, size_t klen, char kind, size_t *rawlen)
{
    const char *close = klen > 4 && memcmp(k, "sl:{", 4) == 0 ? memchr(k, '}', klen) : NULL;
    const char tail[4] = {'}', ':', kind, ':'};

    if (!close || (size_t)(k + klen - close) < 4 || memcmp(close, tail, 4) != 0)
        return NULL;
    *rawlen = klen - (size_t)(close + 4 - k);
    return close + 4;
}

const char *
codec_entry_key_raw(const char *k, size_t klen, size_t *rawlen)
{
    return key_raw(k, klen, 'c', rawlen);
}

int
codec_meta_from_tail(const char *tail, size_t taillen, size_t total, struct codec_meta *out)
{
    const unsigned char *p = (const unsigned char *)tail;
    size_t fixed = TRAILER_LEN - AGES_LEN; /* the trailer after the ages */

    if (taillen > total || taillen < fixed)
        return -1;
    size_t base = total - taillen; /* where tail starts in the value */
    size_t t = taillen - fixed;    /* the trailer after the ages, in tail */
    size_t region = base + t;      /* body, content type, headers and etag, and the ages */
    uint64_t ctlen = rd_u32(p + t), hlen = rd_u32(p + t + 4), etlen = rd_u32(p + t + 8);
    unsigned has = p[t + 23];

    *out = (struct codec_meta){
        .status = (uint16_t)(p[t + 20] | p[t + 21] << 8),
        .flags = p[t + 22],
        .stale_ms = rd_u64(p + t + 12),
        .stored_ms = rd_f64_ms(p + t + 24),
        .expires_ms = rd_f64_ms(p + t + 32),
    };
    if (has & HAS_AGES) {
        if (t < AGES_LEN)
            return -1;
        out->age_ms = rd_u64(p + t - AGES_LEN);
        out->swr_ms = rd_u64(p + t - AGES_LEN + 8);
        out->sie_ms = rd_u64(p + t - AGES_LEN + 16);
        region -= AGES_LEN;
    }
    size_t coded = 0;
    if (has & HAS_CODED) {
        if (t < AGES_LEN + CODED_LEN)
            return -1; /* the caller read too few bytes to know */
        for (int c = 0; c < CODEC_N; c++)
            coded += rd_u32(p + t - AGES_LEN - CODED_LEN + 4 * c);
        if (coded + CODED_LEN > region)
            return -1;
        region -= CODED_LEN;
    }
    if (ctlen + hlen + etlen + coded > region)
        return -1;
    out->bytes = region;
    out->body_len = region - (size_t)(ctlen + hlen + etlen) - coded;
    return 0;
}

int
codec_entry_tags(const char *v, size_t len, void (*fn)(void *ctx, const char *tag, size_t taglen),
                 void *ctx)
{
    const unsigned char *p = (const unsigned char *)v;
    size_t pos = TOKEN_LEN + 8;

    if (len < pos)
        return -1;
    while (pos < len) {
        if (len - pos < 4)
            return -1;
        size_t kl = rd_u32(p + pos);
        pos += 4;
        if (len - pos < kl + 4)
            return -1;
        size_t rawlen;
        const char *raw = key_raw(v + pos, kl, 't', &rawlen);
        if (!raw)
            return -1;
        fn(ctx, raw, rawlen);
        pos += kl;
        size_t gl = rd_u32(p + pos);
        pos += 4;
        if (len - pos < gl)
            return -1;
        pos += gl;
    }
    return 0;
}
