/* jwt.c - JSON Web Tokens (RFC 7519) signed with JWS compact serialization (RFC 7515): the
 * header checked, the signature verified with a key of a set, the registered claims checked. */
#define _GNU_SOURCE
#include "jwt.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64url.h"
#include "util.h"

static const char *const status_names[JWT_STATUSES] = {
    [JWT_OK] = "ok",
    [JWT_TOO_LONG] = "too_long",
    [JWT_MALFORMED] = "malformed",
    [JWT_ALGORITHM] = "algorithm",
    [JWT_HEADER] = "header",
    [JWT_UNKNOWN_KEY] = "unknown_key",
    [JWT_SIGNATURE] = "signature",
    [JWT_EXPIRED] = "expired",
    [JWT_NOT_YET_VALID] = "not_yet_valid",
    [JWT_ISSUED_IN_FUTURE] = "issued_in_future",
    [JWT_ISSUER] = "issuer",
    [JWT_AUDIENCE] = "audience",
    [JWT_CLAIMS] = "claims",
};

const char *
jwt_status_name(enum jwt_status s)
{
    return s < JWT_STATUSES ? status_names[s] : "?";
}

static enum jwt_status
refuse(enum jwt_status s, char *detail, size_t detail_len, const char *text)
{
    util_seterr(detail, detail_len, "%s", text);
    return s;
}

/* A NumericDate claim (RFC 7519 section 2): 1 with *v when present and a finite number, 0 when
 * absent, -1 when present and not one. */
static int
date_claim(json_t *claims, const char *name, double *v)
{
    json_t *j = json_object_get(claims, name);
    if (!j)
        return 0;
    if (!json_is_number(j))
        return -1;
    *v = json_number_value(j);
    return isfinite(*v) ? 1 : -1;
}

static bool
aud_names(json_t *aud, const char *audience)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), audience) == 0;
    size_t i;
    json_t *a;
    json_array_foreach(aud, i, a)
    {
        if (json_is_string(a) && strcmp(json_string_value(a), audience) == 0)
            return true;
    }
    return false;
}

enum jwt_status
jwt_check_claims(const struct jwt_rules *r, json_t *claims, double now_s, double *exp, char *detail,
                 size_t detail_len)
{
    double v;
    if (!json_is_object(claims))
        return refuse(JWT_CLAIMS, detail, detail_len, "the token's claims are not an object");
    int has = date_claim(claims, "exp", &v);
    if (has <= 0)
        return refuse(JWT_CLAIMS, detail, detail_len,
                      has ? "the token's exp is not a number" : "the token has no exp");
    *exp = v;
    if (now_s >= v + r->leeway_s)
        return refuse(JWT_EXPIRED, detail, detail_len, "the token has expired");
    has = date_claim(claims, "nbf", &v);
    if (has < 0)
        return refuse(JWT_CLAIMS, detail, detail_len, "the token's nbf is not a number");
    if (has && now_s + r->leeway_s < v)
        return refuse(JWT_NOT_YET_VALID, detail, detail_len, "the token is not valid yet");
    has = date_claim(claims, "iat", &v);
    if (has < 0)
        return refuse(JWT_CLAIMS, detail, detail_len, "the token's iat is not a number");
    if (has && v > now_s + r->leeway_s)
        return refuse(JWT_ISSUED_IN_FUTURE, detail, detail_len,
                      "the token was issued in the future");
    if (r->issuer) {
        json_t *iss = json_object_get(claims, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), r->issuer) != 0)
            return refuse(JWT_ISSUER, detail, detail_len, "the token's issuer is not accepted");
    }
    json_t *aud = json_object_get(claims, "aud");
    if (r->audience) {
        if (!aud || !aud_names(aud, r->audience))
            return refuse(JWT_AUDIENCE, detail, detail_len,
                          "the token is not meant for this audience");
    } else if (aud) {
        return refuse(JWT_AUDIENCE, detail, detail_len,
                      "the token names an audience and none is accepted");
    }
    return JWT_OK;
}

/* Decodes a base64url part into a new buffer (NUL-terminated). Returns its length or -1. */
static long
decode_part(const char *p, size_t len, unsigned char **out)
{
    unsigned char *b = xmalloc(B64URL_DECODED_MAX(len) + 1);
    long n = b64url_decode(p, len, b, B64URL_DECODED_MAX(len) + 1);
    if (n < 0) {
        free(b);
        return -1;
    }
    b[n] = '\0';
    *out = b;
    return n;
}

/* Parses a decoded part as a JSON object (duplicate names refused, RFC 7515 section 5.2). */
static json_t *
json_part(const unsigned char *b, size_t len)
{
    json_t *o = json_loadb((const char *)b, len, JSON_REJECT_DUPLICATES, NULL);
    if (o && !json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

enum jwt_status
jwt_verify(const struct jwt_rules *r, const char *token, size_t len, double now_s,
           struct jwt_token *out, char *detail, size_t detail_len)
{
    enum jwt_status st;
    unsigned char *hb = NULL, *pb = NULL, *sig = NULL;
    json_t *header = NULL, *claims = NULL;
    memset(out, 0, sizeof(*out));
    if (len > JWT_MAX_BYTES)
        return refuse(JWT_TOO_LONG, detail, detail_len, "the token is too long");
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(token + len - d1 - 1)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', (size_t)(token + len - d2 - 1)) || d1 == token ||
        d2 == d1 + 1) {
        st = refuse(JWT_MALFORMED, detail, detail_len, "the token is not a signed JWT");
        goto out;
    }
    long hlen = decode_part(token, (size_t)(d1 - token), &hb);
    if (hlen < 0 || !(header = json_part(hb, (size_t)hlen))) {
        st = refuse(JWT_MALFORMED, detail, detail_len, "the token's header is malformed");
        goto out;
    }
    /* The algorithm: pinned by the key, never chosen by the token alone (RFC 8725 3.1). */
    json_t *alg = json_object_get(header, "alg");
    enum jwk_alg a;
    if (!json_is_string(alg)) {
        st = refuse(JWT_ALGORITHM, detail, detail_len, "the token names no algorithm");
        goto out;
    }
    if (jwk_alg_parse(json_string_value(alg), json_string_length(alg), &a) != 0) {
        st = refuse(JWT_ALGORITHM, detail, detail_len, "the token's algorithm is not accepted");
        goto out;
    }
    /* Keys and extensions the token would choose itself are refused (RFC 8725 3.10). */
    static const char *const refused_headers[] = {"jku", "x5u", "jwk", "crit"};
    for (size_t i = 0; i < sizeof(refused_headers) / sizeof(refused_headers[0]); i++)
        if (json_object_get(header, refused_headers[i])) {
            char text[96];
            snprintf(text, sizeof(text), "the token's header %s is not accepted",
                     refused_headers[i]);
            st = refuse(JWT_HEADER, detail, detail_len, text);
            goto out;
        }
    json_t *kid = json_object_get(header, "kid");
    if (kid && !json_is_string(kid)) {
        st = refuse(JWT_MALFORMED, detail, detail_len, "the token's kid is not a string");
        goto out;
    }
    const struct jwk *key = NULL;
    if (kid) {
        key = jwk_set_find(r->keys, json_string_value(kid), json_string_length(kid));
        if (!key) {
            st = refuse(JWT_UNKNOWN_KEY, detail, detail_len, "the token's key is not known");
            goto out;
        }
        if (!(key->algs & JWK_ALG_BIT(a))) {
            st = refuse(JWT_ALGORITHM, detail, detail_len,
                        "the token's algorithm is not the one of its key");
            goto out;
        }
    }
    long slen = decode_part(d2 + 1, (size_t)(token + len - d2 - 1), &sig);
    if (slen < 0) {
        st = refuse(JWT_MALFORMED, detail, detail_len, "the token's signature is malformed");
        goto out;
    }
    /* The signing input is the first two parts as they came (RFC 7515 section 5.2). */
    const unsigned char *input = (const unsigned char *)token;
    size_t ilen = (size_t)(d2 - token);
    bool verified = false, any = false;
    if (key) {
        any = true;
        verified = jwk_verify(key, a, input, ilen, sig, (size_t)slen) == 1;
    } else {
        for (size_t i = 0; i < r->keys->n && !verified; i++) {
            const struct jwk *k = &r->keys->keys[i];
            if (!(k->algs & JWK_ALG_BIT(a)))
                continue;
            any = true;
            if (jwk_verify(k, a, input, ilen, sig, (size_t)slen) == 1) {
                verified = true;
                key = k;
            }
        }
    }
    if (!any) {
        st = refuse(JWT_UNKNOWN_KEY, detail, detail_len,
                    "no key of this server takes the token's algorithm");
        goto out;
    }
    if (!verified) {
        st = refuse(JWT_SIGNATURE, detail, detail_len, "the token's signature does not verify");
        goto out;
    }
    long plen = decode_part(d1 + 1, (size_t)(d2 - d1 - 1), &pb);
    if (plen < 0 || !(claims = json_part(pb, (size_t)plen))) {
        st = refuse(JWT_MALFORMED, detail, detail_len, "the token's claims are malformed");
        goto out;
    }
    st = jwt_check_claims(r, claims, now_s, &out->exp, detail, detail_len);
    if (st == JWT_OK) {
        out->claims = claims;
        claims = NULL;
        out->alg = a;
        out->key = key;
    }
out:
    json_decref(header);
    json_decref(claims);
    free(hb);
    free(pb);
    free(sig);
    return st;
}
