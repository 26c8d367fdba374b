/* jwt.h - JSON Web Tokens (RFC 7519) signed with JWS compact serialization (RFC 7515): the
 * header checked, the signature verified with a key of a set, the registered claims checked. */
#ifndef SLUICE_JWT_H
#define SLUICE_JWT_H

#include <jansson.h>
#include <stddef.h>

#include "jwk.h"

#define JWT_MAX_BYTES 8192 /* a longer token is refused unread */

/* Why a token was refused (or JWT_OK). */
enum jwt_status {
    JWT_OK = 0,
    JWT_TOO_LONG,         /* over JWT_MAX_BYTES */
    JWT_MALFORMED,        /* not three base64url parts, the first two JSON objects */
    JWT_ALGORITHM,        /* alg missing, "none", unknown, or not one its key takes */
    JWT_HEADER,           /* a header sluice refuses: jku, x5u, jwk, crit */
    JWT_UNKNOWN_KEY,      /* a kid not in the set, or no key for the algorithm */
    JWT_SIGNATURE,        /* the signature does not verify */
    JWT_EXPIRED,          /* exp passed (leeway allowed for) */
    JWT_NOT_YET_VALID,    /* nbf not reached (leeway allowed for) */
    JWT_ISSUED_IN_FUTURE, /* iat ahead of now (leeway allowed for) */
    JWT_ISSUER,           /* iss is not the one required */
    JWT_AUDIENCE,         /* aud does not name the audience required */
    JWT_CLAIMS,           /* the claims are not an object, exp is missing, a date is no number */
    JWT_STATUSES
};

/* What a token must satisfy. */
struct jwt_rules {
    const struct jwk_set *keys; /* borrowed */
    const char *issuer;         /* NULL: iss not checked */
    const char *audience;       /* NULL: a token naming an audience (aud) is refused,
                                   RFC 7519 section 4.1.3 */
    double leeway_s;            /* clock skew allowed on exp, nbf and iat */
};

/* A verified token. */
struct jwt_token {
    json_t *claims;        /* the payload object: a new reference for the caller */
    double exp;            /* its exp (seconds since the epoch) */
    enum jwk_alg alg;      /* the algorithm its key verified */
    const struct jwk *key; /* the key that verified it, borrowed from the rules' set */
};

/*
 * Verifies token[0..len) at now_s (seconds since the epoch) under r: the
 * header's alg must be one the key takes (the key pinned by the token's kid
 * when it names one, else each key that takes the alg is tried), "none" and
 * the headers jku, x5u, jwk and crit are refused; the signature is verified
 * before the payload is read; then the claims are checked
 * (jwt_check_claims). Returns JWT_OK with *out filled (out->claims a new
 * reference), or why the token is refused with a short description in
 * detail (printable ASCII without quotes or backslashes, fit for an
 * error_description, RFC 6750 section 3; never any part of the token).
 */
enum jwt_status jwt_verify(const struct jwt_rules *r, const char *token, size_t len, double now_s,
                           struct jwt_token *out, char *detail, size_t detail_len);

/*
 * Checks the registered claims of a verified payload at now_s: exp is
 * required and must be ahead of now - leeway; nbf, when present, at most now
 * + leeway; iat, when present, at most now + leeway (all NumericDates); iss
 * equal to r->issuer when that is set; aud (a string or an array of strings)
 * naming r->audience when that is set, and absent when it is not. Sets *exp.
 * Returns JWT_OK, or the status with a description in detail as jwt_verify.
 */
enum jwt_status jwt_check_claims(const struct jwt_rules *r, json_t *claims, double now_s,
                                 double *exp, char *detail, size_t detail_len);

/* A short name of status s for metrics and logs ("expired", "signature", ...), static. */
const char *jwt_status_name(enum jwt_status s);

#endif
