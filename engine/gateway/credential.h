/* credential.h - who a request's credential says its caller is: a bearer token verified
 * (RFC 6750, RFC 7519) or remembered, the caller's values read from its claims. */
#ifndef SLUICE_CREDENTIAL_H
#define SLUICE_CREDENTIAL_H

#include <stddef.h>

#include "req.h"

/* Verified tokens a worker remembers at most (and the bytes their text may add up to). */
#define GW_CRED_CACHE_ENTRIES 16384
#define GW_CRED_CACHE_BYTES (32u << 20)

/*
 * Reads the request's credential when its identity declares one (jwt): the
 * bearer token of its Authorization field (RFC 6750 section 2.1) is verified
 * (rq->wk's cache spares a signature for a token seen before, until its exp
 * plus the leeway, within one policy generation) and its claims go to
 * rq->claims (a reference), rq->id_source to GW_ID_JWT. No token: anonymous,
 * or refused when the identity requires a credential. Returns 0, or the
 * status the request is refused with (401; 400 for two Authorization fields)
 * with rq->challenge (the WWW-Authenticate value), rq->id_refusal (a word for
 * metrics) and a description in detail that never holds the token.
 */
int gw_credential_read(struct gw_req *rq, char *detail, size_t detail_len);

/*
 * Sets rq->user and rq->tenant from the claims the identity names (claim
 * "NAME"), in their canonical form when typed. A verified credential without
 * the user's claim, or with a caller's claim that is not a string or an
 * integer (or not of its declared type), refuses the request: returns 401
 * with rq->challenge and a description in detail; else 0.
 */
int gw_caller_from_claims(struct gw_req *rq, char *detail, size_t detail_len);

#endif
