/* credential.h - who a request's credential says its caller is: a bearer token verified
 * (RFC 6750, RFC 7519) or remembered, the caller's values read from its claims. */
#ifndef SLUICE_CREDENTIAL_H
#define SLUICE_CREDENTIAL_H

#include <stddef.h>

#include "req.h"

/* Verified tokens a worker remembers at most (and the bytes their text may add up to). */
#define GW_CRED_CACHE_ENTRIES 16384
#define GW_CRED_CACHE_BYTES (32u << 20)
#define GW_API_KEY_MAX 512 /* bytes of an API key; a longer one is refused */

/*
 * Reads the request's credential when its identity declares one (jwt,
 * api_key); the first present decides, a bearer token before an API key. The
 * bearer token of its Authorization field (RFC 6750 section 2.1) is verified
 * (rq->wk's cache spares a signature for a token seen before, until its exp
 * plus the leeway, within one policy generation) and its claims go to
 * rq->claims (a reference), rq->id_source to GW_ID_JWT. An API key (its
 * field or query parameter) is hashed (SHA-256): a key the worker remembers
 * gives its claims at once, another leaves rq->api_key_pending (the lookup
 * of rq->api_key_hex, answered with gw_api_key_answer). No credential:
 * anonymous, or refused when the identity requires one. A present but
 * invalid credential is refused, never taken for none. Returns 0, or the
 * status the request is refused with (401; 400 for a credential given
 * twice) with rq->challenge (the WWW-Authenticate value), rq->id_refusal (a
 * word for metrics) and a description in detail that never holds the
 * credential.
 */
int gw_credential_read(struct gw_req *rq, char *detail, size_t detail_len);

/*
 * The answer of the API key lookup of rq (gw_credential_read left
 * rq->api_key_pending): row[0..len) is the row as a JSON object (its columns
 * are the caller's claims), NULL when no row matched. Remembered by the
 * worker for the identity's api_key ttl (the unknown key too). Returns 0 with
 * rq->claims, rq->user and rq->tenant set, or 401 (an unknown key, a row
 * without the user's claim) with rq->challenge and a description in detail.
 */
int gw_api_key_answer(struct gw_req *rq, const char *row, size_t len, char *detail,
                      size_t detail_len);

/*
 * Sets rq->user and rq->tenant from the claims the identity names (claim
 * "NAME"), in their canonical form when typed. A verified credential without
 * the user's claim, or with a caller's claim that is not a string or an
 * integer (or not of its declared type), refuses the request: returns 401
 * with rq->challenge and a description in detail; else 0.
 */
int gw_caller_from_claims(struct gw_req *rq, char *detail, size_t detail_len);

#endif
