/* jose_helpers.h - what the JOSE unit tests and the verification timing share: keys made with
 * OpenSSL EVP_PKEY_Q_keygen, their JWKs, and tokens signed with them (static functions). */
#ifndef SLUICE_JOSE_HELPERS_H
#define SLUICE_JOSE_HELPERS_H

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64url.h"
#include "jwk.h"
#include "util.h"

/* A new key pair for alg (RSA 2048 for the RS and PS algorithms). Aborts on failure. */
static __attribute__((unused)) EVP_PKEY *
jh_keygen(enum jwk_alg alg)
{
    EVP_PKEY *k = NULL;
    switch (alg) {
    case JWK_ES256:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        break;
    case JWK_ES384:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
        break;
    case JWK_EDDSA:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        break;
    default:
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
        break;
    }
    if (!k)
        abort();
    return k;
}

/* b64url of a BIGNUM parameter of k, padded to pad bytes (0: its own length), into out. */
static __attribute__((unused)) void
jh_bn_b64(EVP_PKEY *k, const char *param, size_t pad, char *out, size_t cap)
{
    BIGNUM *bn = NULL;
    if (EVP_PKEY_get_bn_param(k, param, &bn) != 1)
        abort();
    unsigned char buf[1024];
    int n = pad ? BN_bn2binpad(bn, buf, (int)pad) : BN_bn2bin(bn, buf);
    BN_free(bn);
    if (n <= 0 || b64url_encode(buf, (size_t)n, out, cap) < 0)
        abort();
}

/* The public JWK of k (a JSON object text, new) with kid (NULL: none) and alg (NULL: none). */
static __attribute__((unused)) char *
jh_jwk(EVP_PKEY *k, const char *kid, const char *alg)
{
    char a[1500], b[1500], extra[256];
    snprintf(extra, sizeof(extra), "%s%s%s%s%s%s", kid ? ",\"kid\":\"" : "", kid ? kid : "",
             kid ? "\"" : "", alg ? ",\"alg\":\"" : "", alg ? alg : "", alg ? "\"" : "");
    if (EVP_PKEY_is_a(k, "RSA")) {
        jh_bn_b64(k, OSSL_PKEY_PARAM_RSA_N, 0, a, sizeof(a));
        jh_bn_b64(k, OSSL_PKEY_PARAM_RSA_E, 0, b, sizeof(b));
        return xasprintf("{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"%s}", a, b, extra);
    }
    if (EVP_PKEY_is_a(k, "EC")) {
        size_t size = EVP_PKEY_get_bits(k) == 256 ? 32 : 48;
        jh_bn_b64(k, OSSL_PKEY_PARAM_EC_PUB_X, size, a, sizeof(a));
        jh_bn_b64(k, OSSL_PKEY_PARAM_EC_PUB_Y, size, b, sizeof(b));
        return xasprintf("{\"kty\":\"EC\",\"crv\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"%s}",
                         size == 32 ? "P-256" : "P-384", a, b, extra);
    }
    unsigned char raw[32];
    size_t rlen = sizeof(raw);
    if (EVP_PKEY_get_raw_public_key(k, raw, &rlen) != 1 ||
        b64url_encode(raw, rlen, a, sizeof(a)) < 0)
        abort();
    return xasprintf("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\"%s}", a, extra);
}

/* Signs in[0..len) with k by alg into sig (JOSE form: R || S for ECDSA). Returns its length. */
static __attribute__((unused)) size_t
jh_sign(EVP_PKEY *k, enum jwk_alg alg, const char *in, size_t len, unsigned char *sig, size_t cap)
{
    static const char *const md[JWK_ALGS] = {"SHA256", "SHA384", "SHA512", "SHA256",
                                             "SHA256", "SHA384", NULL,     "SHA256"};
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *p = NULL;
    unsigned char der[1024];
    size_t dlen = sizeof(der);
    if (EVP_DigestSignInit_ex(m, &p, md[alg], NULL, NULL, k, NULL) != 1)
        abort();
    if (alg == JWK_PS256 && (EVP_PKEY_CTX_set_rsa_padding(p, RSA_PKCS1_PSS_PADDING) != 1 ||
                             EVP_PKEY_CTX_set_rsa_pss_saltlen(p, RSA_PSS_SALTLEN_DIGEST) != 1))
        abort();
    if (EVP_DigestSign(m, der, &dlen, (const unsigned char *)in, len) != 1)
        abort();
    EVP_MD_CTX_free(m);
    if (alg != JWK_ES256 && alg != JWK_ES384) {
        if (dlen > cap)
            abort();
        memcpy(sig, der, dlen);
        return dlen;
    }
    size_t size = alg == JWK_ES256 ? 32 : 48;
    const unsigned char *q = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)dlen);
    if (!es || cap < 2 * size)
        abort();
    BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, (int)size);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + size, (int)size);
    ECDSA_SIG_free(es);
    return 2 * size;
}

/* HMAC-SHA256 of in with secret into sig (32 bytes). */
static __attribute__((unused)) size_t
jh_hmac(const unsigned char *secret, size_t slen, const char *in, size_t len, unsigned char *sig)
{
    size_t out = 0;
    if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, secret, slen, (const unsigned char *)in, len,
                   sig, 32, &out))
        abort();
    return out;
}

/* base64url of a text. */
static __attribute__((unused)) char *
jh_b64s(const char *s)
{
    size_t len = strlen(s);
    char *out = xmalloc(B64URL_ENCODED_LEN(len) + 1);
    b64url_encode((const unsigned char *)s, len, out, B64URL_ENCODED_LEN(len) + 1);
    return out;
}

/*
 * A compact JWS of the header and payload JSON texts, signed with k by alg
 * (or with an HMAC secret when k is NULL). Returns a new string.
 */
static __attribute__((unused)) char *
jh_token(EVP_PKEY *k, const unsigned char *secret, size_t slen, enum jwk_alg alg,
         const char *header, const char *payload)
{
    char *h = jh_b64s(header), *p = jh_b64s(payload);
    char *input = xasprintf("%s.%s", h, p);
    unsigned char sig[1024];
    size_t n = k ? jh_sign(k, alg, input, strlen(input), sig, sizeof(sig))
                 : jh_hmac(secret, slen, input, strlen(input), sig);
    char s[1500];
    b64url_encode(sig, n, s, sizeof(s));
    char *t = xasprintf("%s.%s", input, s);
    free(h);
    free(p);
    free(input);
    return t;
}

#endif
