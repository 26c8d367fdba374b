/* store.c - what both stores share: cache entries, the store clock, and key patterns. */
#include <assert.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store.h"
#include "log.h"
#include "util.h"

struct store_entry *
store_entry_new(uint16_t status, char *content_type, char *body, size_t body_len)
{
    struct store_entry *e = calloc(1, sizeof(*e));

    if (!e) {
        log_abort("out of memory (cache entry)");
    }
    e->refs = 1;
    e->status = status;
    e->content_type = content_type;
    e->body = body;
    e->body_len = body_len;
    return e;
}

/* Copies p[0..n) and a NUL to *at, moves *at past them, and returns the copy; NULL: none. */
static char *
put_field(char **at, const void *p, size_t n)
{
    char *to = *at;

    if (!p)
        return NULL;
    if (n)
        memcpy(to, p, n);
    to[n] = '\0';
    *at = to + n + 1;
    return to;
}

struct store_entry *
store_entry_make(uint16_t status, const char *content_type, const char *headers, size_t headers_len,
                 const char *etag, const void *body, size_t body_len, size_t room)
{
    size_t ctlen = content_type ? strlen(content_type) : 0, etaglen = etag ? strlen(etag) : 0;
    size_t size = sizeof(struct store_entry) + room; /* the room starts aligned, at e + 1 */
    struct store_entry *e;
    char *at;

    assert(headers_len <= UINT32_MAX && room <= UINT32_MAX);
    size += (content_type ? ctlen + 1 : 0) + (headers ? headers_len + 1 : 0) +
            (etag ? etaglen + 1 : 0) + (body ? body_len + 1 : 0);
    e = xmalloc(size);
    *e = (struct store_entry){.refs = 1, .status = status, .room = (uint32_t)room};
    at = (char *)(e + 1) + e->room;
    e->content_type = put_field(&at, content_type, ctlen);
    e->headers = put_field(&at, headers, headers_len);
    e->headers_len = headers ? (uint32_t)headers_len : 0;
    e->etag = put_field(&at, etag, etaglen);
    e->body = put_field(&at, body, body_len);
    e->body_len = body ? body_len : 0;
    e->packed = (content_type ? STORE_PACKED_CONTENT_TYPE : 0) |
                (headers ? STORE_PACKED_HEADERS : 0) | (etag ? STORE_PACKED_ETAG : 0) |
                (body ? STORE_PACKED_BODY : 0);
    return e;
}

void
store_entry_ref(struct store_entry *e)
{
    __atomic_add_fetch(&e->refs, 1, __ATOMIC_RELAXED);
}

void
store_entry_release(struct store_entry *e)
{
    if (!e)
        return;
    if (__atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (!(e->packed & STORE_PACKED_CONTENT_TYPE))
        free(e->content_type);
    if (!(e->packed & STORE_PACKED_HEADERS))
        free(e->headers);
    if (!(e->packed & STORE_PACKED_ETAG))
        free(e->etag);
    if (!(e->packed & STORE_PACKED_BODY))
        free(e->body);
    free(e->coded);
    free(e);
}

unsigned
store_entry_codings(const struct store_entry *e)
{
    unsigned set = 0;

    for (int c = 0; e->coded && c < CODEC_N; c++)
        if (e->coded->len[c])
            set |= CODEC_BIT(c);
    return set;
}

uint64_t
store_now_ms(void)
{
    return util_now_ms();
}

size_t
store_key_primary_len(const char *key, size_t keylen)
{
    const char *sep = keylen ? memchr(key, STORE_KEY_SEP, keylen) : NULL;

    return sep ? (size_t)(sep - key) : keylen;
}

/* fnmatch() needs NUL-terminated text: keys up to this length are copied on the stack. */
#define MATCH_STACK 512

bool
store_key_matches(const char *glob, const char *key, size_t keylen)
{
    char buf[MATCH_STACK];
    char *k = keylen < sizeof(buf) ? buf : xmalloc(keylen + 1);
    bool hit = false;

    if (keylen && memchr(key, '\0', keylen))
        goto out;
    memcpy(k, key, keylen);
    k[keylen] = '\0';
    hit = fnmatch(glob, k, 0) == 0;
    size_t plen = store_key_primary_len(key, keylen);
    if (!hit && plen < keylen) {
        k[plen] = '\0';
        hit = fnmatch(glob, k, 0) == 0;
    }
out:
    if (k != buf)
        free(k);
    return hit;
}

bool
store_glob_literal(const char *glob, size_t globlen, char *out, size_t *outlen)
{
    size_t o = 0;

    for (size_t i = 0; i < globlen; i++) {
        char c = glob[i];
        if (c == '*' || c == '?' || c == '[')
            return false;
        if (c == '\\') {
            if (++i == globlen)
                return false; /* a trailing backslash: fnmatch matches nothing with it */
            c = glob[i];
        }
        out[o++] = c;
    }
    *outlen = o;
    return true;
}

/* ---- listings ----------------------------------------------------------------------------- */

static void
entry_init(struct store_list_entry *e, const char *key, size_t keylen)
{
    *e = (struct store_list_entry){.keylen = keylen};
    e->key = xmalloc(keylen + 1);
    memcpy(e->key, key, keylen);
    e->key[keylen] = '\0';
}

/* Makes room for item n + 1 of an array of `size`-byte items holding n, which grows from 8 by
 * doubling. Returns the array. */
static void *
grow(void *a, size_t n, size_t size)
{
    if (n == 0 || (n >= 8 && (n & (n - 1)) == 0))
        a = xrealloc(a, (n ? 2 * n : 8) * size);
    return a;
}

struct store_list_entry *
store_listing_add(struct store_listing *l, const char *key, size_t keylen)
{
    l->entries = grow(l->entries, l->n, sizeof(*l->entries));
    struct store_list_entry *e = &l->entries[l->n++];
    entry_init(e, key, keylen);
    return e;
}

struct store_list_entry *
store_list_add_variant(struct store_list_entry *p, const char *key, size_t keylen)
{
    p->variant_count++;
    if (p->nvariants == STORE_LIST_VARIANTS)
        return NULL;
    p->variants = grow(p->variants, p->nvariants, sizeof(*p->variants));
    struct store_list_entry *e = &p->variants[p->nvariants++];
    entry_init(e, key, keylen);
    return e;
}

void
store_list_add_tag(struct store_list_entry *e, const char *tag, size_t len)
{
    e->tags = grow(e->tags, e->ntags, sizeof(*e->tags));
    e->taglens = grow(e->taglens, e->ntags, sizeof(*e->taglens));
    char *t = xmalloc(len + 1);
    memcpy(t, tag, len);
    t[len] = '\0';
    e->tags[e->ntags] = t;
    e->taglens[e->ntags++] = len;
}

/* How long from now until `end` (0 when it has passed). */
static uint64_t
left(uint64_t end, uint64_t now)
{
    return end > now ? end - now : 0;
}

/* How long from now until the window of w ms from `from` ends (0: none, or over). */
static uint64_t
window_left(uint64_t from, uint64_t w, uint64_t now)
{
    if (!w)
        return 0;
    return left(from + w < from ? UINT64_MAX : from + w, now);
}

void
store_list_set_times(struct store_list_entry *e, uint64_t stored_ms, uint64_t expires_ms,
                     uint64_t age_ms, uint64_t swr_ms, uint64_t sie_ms, uint64_t now)
{
    e->age_ms = age_ms + (now > stored_ms ? now - stored_ms : 0);
    e->ttl_ms = left(expires_ms, now);
    e->swr_ms = swr_ms;
    e->sie_ms = sie_ms;
    e->swr_left_ms = window_left(expires_ms, swr_ms, now);
    e->sie_left_ms = window_left(expires_ms, sie_ms, now);
}

void
store_list_entry_free(struct store_list_entry *e)
{
    for (size_t i = 0; i < e->ntags; i++)
        free(e->tags[i]);
    for (size_t i = 0; i < e->nvariants; i++)
        store_list_entry_free(&e->variants[i]);
    free(e->tags);
    free(e->taglens);
    free(e->variants);
    free(e->vary);
    free(e->key);
    *e = (struct store_list_entry){0};
}

void
store_listing_free(struct store_listing *l)
{
    for (size_t i = 0; i < l->n; i++)
        store_list_entry_free(&l->entries[i]);
    free(l->entries);
    l->entries = NULL;
    l->n = 0;
}
