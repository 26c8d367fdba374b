/* store.c - what both stores share: cache entries, the store clock, and key patterns. */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store.h"
#include "util.h"

struct store_entry *
store_entry_new(uint16_t status, char *content_type, char *body, size_t body_len)
{
    struct store_entry *e = calloc(1, sizeof(*e));

    if (!e) {
        fprintf(stderr, "sluice: out of memory (cache entry)\n");
        abort();
    }
    e->refs = 1;
    e->status = status;
    e->content_type = content_type;
    e->body = body;
    e->body_len = body_len;
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
    free(e->content_type);
    free(e->headers);
    free(e->etag);
    free(e->body);
    free(e);
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
