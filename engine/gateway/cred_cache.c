/* cred_cache.c - a per-worker cache of verified credentials (bearer tokens, API keys), each
 * under the bytes that name it (a token's text; an API key's SHA-256) with the claims it gave,
 * until it expires; bounded in entries and bytes, the least recently used out first. */
#include "cred_cache.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "hmap.h"
#include "log.h"
#include "util.h"

struct cred_entry {
    struct hmap_node node;       /* in the table of its kind, by id */
    TAILQ_ENTRY(cred_entry) lru; /* most recently used first */
    enum cred_kind kind;
    uint64_t generation;
    uint64_t expires_ms;
    size_t charge;
    json_t *claims; /* a reference, or NULL: an unknown credential */
    size_t idlen;
    unsigned char id[];
};

struct cred_cache {
    struct hmap table[CRED_KINDS];
    TAILQ_HEAD(cred_lru, cred_entry) lru;
    size_t max_entries, max_bytes, bytes;
};

static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void
fetch_sha256(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!sha256)
        log_abort("OpenSSL has no SHA-256");
}

void
cred_digest(const void *p, size_t n, unsigned char out[CRED_DIGEST_LEN])
{
    pthread_once(&sha256_once, fetch_sha256);
    unsigned int len = 0;
    if (EVP_Digest(p, n, out, &len, sha256, NULL) != 1 || len != CRED_DIGEST_LEN)
        log_abort("SHA-256 failed");
}

struct cred_cache *
cred_cache_new(size_t max_entries, size_t max_bytes)
{
    struct cred_cache *cc = xcalloc(1, sizeof(*cc));
    TAILQ_INIT(&cc->lru);
    cc->max_entries = max_entries ? max_entries : 1;
    cc->max_bytes = max_bytes;
    return cc;
}

static void
drop(struct cred_cache *cc, struct cred_entry *e)
{
    hmap_remove(&cc->table[e->kind], &e->node);
    TAILQ_REMOVE(&cc->lru, e, lru);
    cc->bytes -= e->charge;
    json_decref(e->claims);
    free(e);
}

void
cred_cache_free(struct cred_cache *cc)
{
    if (!cc)
        return;
    struct cred_entry *e;
    while ((e = TAILQ_FIRST(&cc->lru)))
        drop(cc, e);
    for (int k = 0; k < CRED_KINDS; k++)
        hmap_free(&cc->table[k]);
    free(cc);
}

/* The entry of (kind, id), compared byte for byte: the hash only finds the bucket. */
static struct cred_entry *
find(struct cred_cache *cc, enum cred_kind kind, const void *id, size_t idlen)
{
    return HMAP_ENTRY(hmap_find(&cc->table[kind], id, idlen), struct cred_entry, node);
}

int
cred_cache_get(struct cred_cache *cc, enum cred_kind kind, const void *id, size_t idlen,
               uint64_t generation, uint64_t now_ms, json_t **claims)
{
    struct cred_entry *e = find(cc, kind, id, idlen);
    if (!e)
        return 0;
    if (e->generation != generation || e->expires_ms <= now_ms) {
        drop(cc, e);
        return 0;
    }
    TAILQ_REMOVE(&cc->lru, e, lru);
    TAILQ_INSERT_HEAD(&cc->lru, e, lru);
    *claims = e->claims;
    return 1;
}

void
cred_cache_put(struct cred_cache *cc, enum cred_kind kind, const void *id, size_t idlen,
               uint64_t generation, json_t *claims, uint64_t expires_ms, size_t charge)
{
    struct cred_entry *e = find(cc, kind, id, idlen);
    if (e)
        drop(cc, e);
    charge += sizeof(*e) + idlen;
    if (charge > cc->max_bytes)
        return;
    struct cred_entry *last;
    while ((cred_cache_count(cc) >= cc->max_entries || cc->bytes + charge > cc->max_bytes) &&
           (last = TAILQ_LAST(&cc->lru, cred_lru)))
        drop(cc, last);
    e = xcalloc(1, sizeof(*e) + idlen);
    e->kind = kind;
    memcpy(e->id, id, idlen);
    e->idlen = idlen;
    e->generation = generation;
    e->expires_ms = expires_ms;
    e->charge = charge;
    e->claims = claims ? json_incref(claims) : NULL;
    hmap_insert(&cc->table[kind], &e->node, e->id, idlen);
    TAILQ_INSERT_HEAD(&cc->lru, e, lru);
    cc->bytes += charge;
}

void
cred_cache_clear(struct cred_cache *cc, enum cred_kind kind)
{
    for (struct cred_entry *e = TAILQ_FIRST(&cc->lru), *next; e; e = next) {
        next = TAILQ_NEXT(e, lru);
        if (e->kind == kind)
            drop(cc, e);
    }
}

size_t
cred_cache_count(const struct cred_cache *cc)
{
    size_t n = 0;
    for (int k = 0; k < CRED_KINDS; k++)
        n += cc->table[k].count;
    return n;
}
