/* cred_cache.h - a per-worker cache of verified credentials (bearer tokens, API keys), each
 * under the bytes that name it (a token's text; an API key's SHA-256) with the claims it gave,
 * until it expires; bounded in entries and bytes, the least recently used out first. */
#ifndef SLUICE_CRED_CACHE_H
#define SLUICE_CRED_CACHE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CRED_DIGEST_LEN 32 /* SHA-256 */

enum cred_kind { CRED_JWT = 0, CRED_API_KEY, CRED_KINDS };

struct cred_cache;

/* Returns a new cache of at most max_entries entries and max_bytes charged bytes (one worker's;
 * not thread-safe). */
struct cred_cache *cred_cache_new(size_t max_entries, size_t max_bytes);

/* Frees the cache and the references it holds. NULL is a no-op. */
void cred_cache_free(struct cred_cache *cc);

/* The SHA-256 of p[0..n) into out (OpenSSL EVP). */
void cred_digest(const void *p, size_t n, unsigned char out[CRED_DIGEST_LEN]);

/*
 * Looks up the credential of `kind` named by id (idlen bytes: what was given to
 * cred_cache_put, compared whole, so two credentials never share an entry), remembered under
 * policy generation `generation`, at now_ms. Returns 1 when it is there and
 * has not expired, with *claims its claims (borrowed until the next put or
 * clear: take a reference to keep them; NULL when the credential was found to
 * be unknown), else 0.
 */
int cred_cache_get(struct cred_cache *cc, enum cred_kind kind, const void *id, size_t idlen,
                   uint64_t generation, uint64_t now_ms, json_t **claims);

/*
 * Remembers the credential of `kind` named by id (idlen bytes, copied) under
 * `generation` until expires_ms: its claims (a reference is taken; NULL: the
 * credential is unknown), charged `charge` bytes besides the entry and its id.
 * Makes room by dropping the least recently used entries.
 */
void cred_cache_put(struct cred_cache *cc, enum cred_kind kind, const void *id, size_t idlen,
                    uint64_t generation, json_t *claims, uint64_t expires_ms, size_t charge);

/* Drops every entry of `kind`. */
void cred_cache_clear(struct cred_cache *cc, enum cred_kind kind);

/* Entries held now (for tests and status). */
size_t cred_cache_count(const struct cred_cache *cc);

#endif
