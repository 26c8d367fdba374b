/* jwk.c - verification keys for JSON Web Tokens: JWK sets (RFC 7517), PEM public keys and
 * HMAC secrets, each pinned to the algorithms (RFC 7518) it may verify. */
#define _GNU_SOURCE
#include "jwk.h"

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64url.h"
#include "util.h"

static const struct {
    const char *name;
    const char *md; /* digest, NULL for EdDSA */
} algs[JWK_ALGS] = {
    [JWK_RS256] = {"RS256", "SHA256"}, [JWK_RS384] = {"RS384", "SHA384"},
    [JWK_RS512] = {"RS512", "SHA512"}, [JWK_PS256] = {"PS256", "SHA256"},
    [JWK_ES256] = {"ES256", "SHA256"}, [JWK_ES384] = {"ES384", "SHA384"},
    [JWK_EDDSA] = {"EdDSA", NULL},     [JWK_HS256] = {"HS256", "SHA256"},
};

int
jwk_alg_parse(const char *name, size_t len, enum jwk_alg *alg)
{
    for (int a = 0; a < JWK_ALGS; a++)
        if (strlen(algs[a].name) == len && memcmp(algs[a].name, name, len) == 0) {
            *alg = (enum jwk_alg)a;
            return 0;
        }
    return -1;
}

const char *
jwk_alg_name(enum jwk_alg alg)
{
    return alg < JWK_ALGS ? algs[alg].name : "?";
}

/* The last OpenSSL error as text (and the queue emptied), for messages. */
static const char *
ssl_error(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "unknown error");
    ERR_clear_error();
    return buf;
}

/* ---- the set --------------------------------------------------------------------------- */

const struct jwk *
jwk_set_find(const struct jwk_set *s, const char *kid, size_t klen)
{
    for (size_t i = 0; i < s->n; i++) {
        const struct jwk *k = &s->keys[i];
        if (k->kid && strlen(k->kid) == klen && memcmp(k->kid, kid, klen) == 0)
            return k;
    }
    return NULL;
}

static void
key_fini(struct jwk *k)
{
    free(k->kid);
    EVP_PKEY_free(k->pkey);
    if (k->secret)
        OPENSSL_cleanse(k->secret, k->secret_len);
    free(k->secret);
    free(k->source);
    memset(k, 0, sizeof(*k));
}

void
jwk_set_fini(struct jwk_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        key_fini(&s->keys[i]);
    free(s->keys);
    s->keys = NULL;
    s->n = 0;
}

/* Adds k to s (taking what it holds), unless its kid is taken or the set is full: then k is
 * freed and -1 returned with a message. */
static int
add_key(struct jwk_set *s, struct jwk *k, char *err, size_t errlen)
{
    if (k->kid && jwk_set_find(s, k->kid, strlen(k->kid))) {
        util_seterr(err, errlen, "%s: key id \"%s\" is used by two keys", k->source, k->kid);
        key_fini(k);
        return -1;
    }
    if (s->n >= JWK_MAX_KEYS) {
        util_seterr(err, errlen, "%s: more than %d keys", k->source, JWK_MAX_KEYS);
        key_fini(k);
        return -1;
    }
    s->keys = xrealloc(s->keys, (s->n + 1) * sizeof(*s->keys));
    s->keys[s->n++] = *k;
    return 0;
}

/* The algorithms a key of type kty (curve crv for EC and OKP) may verify, pinned to `alg` when
 * given. Returns the mask, or 0 with a message when alg does not fit the key. */
static unsigned
key_algs(enum jwk_kty kty, const char *crv, const char *alg, char *why, size_t whylen)
{
    unsigned fit = 0;
    switch (kty) {
    case JWK_KTY_RSA:
        fit = JWK_RSA_ALGS;
        break;
    case JWK_KTY_EC:
        fit = strcmp(crv, "P-256") == 0 ? JWK_ALG_BIT(JWK_ES256) : JWK_ALG_BIT(JWK_ES384);
        break;
    case JWK_KTY_OKP:
        fit = JWK_ALG_BIT(JWK_EDDSA);
        break;
    case JWK_KTY_OCT:
        fit = JWK_ALG_BIT(JWK_HS256);
        break;
    }
    if (!alg)
        return fit;
    enum jwk_alg a;
    if (jwk_alg_parse(alg, strlen(alg), &a) != 0) {
        snprintf(why, whylen, "algorithm \"%s\" is not one sluice verifies", alg);
        return 0;
    }
    if (!(fit & JWK_ALG_BIT(a))) {
        snprintf(why, whylen, "algorithm %s does not go with this key's type", alg);
        return 0;
    }
    return JWK_ALG_BIT(a);
}

/* ---- building public keys ---------------------------------------------------------------- */

/* Decodes the base64url member `name` of o into a new buffer (*out, *len). Returns 0, or -1 with
 * a message. */
static int
member_bytes(json_t *o, const char *name, unsigned char **out, size_t *len, char *why,
             size_t whylen)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_string(v)) {
        snprintf(why, whylen, "has no \"%s\"", name);
        return -1;
    }
    size_t tlen = json_string_length(v);
    unsigned char *b = xmalloc(B64URL_DECODED_MAX(tlen) + 1);
    long n = b64url_decode(json_string_value(v), tlen, b, B64URL_DECODED_MAX(tlen) + 1);
    if (n <= 0) {
        free(b);
        snprintf(why, whylen, "\"%s\" is not base64url", name);
        return -1;
    }
    *out = b;
    *len = (size_t)n;
    return 0;
}

/* A public key from OSSL parameters: type "RSA" or "EC". */
static EVP_PKEY *
from_params(const char *type, OSSL_PARAM *params, char *why, size_t whylen)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    char e[160];
    if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
        snprintf(why, whylen, "is not a valid %s public key (%s)", type, ssl_error(e, sizeof(e)));
        pkey = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

/* Checks an EC or RSA public key (the point on its curve). Returns 0, or -1 with a message. */
static int
check_public(EVP_PKEY *pkey, char *why, size_t whylen)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    char e[160];
    int ok = ctx && EVP_PKEY_public_check(ctx) > 0;
    if (!ok)
        snprintf(why, whylen, "fails the public key check (%s)", ssl_error(e, sizeof(e)));
    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : -1;
}

static EVP_PKEY *
rsa_key(json_t *o, char *why, size_t whylen)
{
    unsigned char *n = NULL, *e = NULL;
    size_t nlen, elen;
    EVP_PKEY *pkey = NULL;
    BIGNUM *bn = NULL, *be = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    if (member_bytes(o, "n", &n, &nlen, why, whylen) != 0 ||
        member_bytes(o, "e", &e, &elen, why, whylen) != 0)
        goto out;
    bn = BN_bin2bn(n, (int)nlen, NULL);
    be = BN_bin2bn(e, (int)elen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!bn || !be || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
        !(params = OSSL_PARAM_BLD_to_param(bld))) {
        snprintf(why, whylen, "could not be built");
        goto out;
    }
    pkey = from_params("RSA", params, why, whylen);
out:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return pkey;
}

static EVP_PKEY *
ec_key(json_t *o, const char *crv, char *why, size_t whylen)
{
    size_t size = strcmp(crv, "P-256") == 0 ? 32 : 48;
    unsigned char *x = NULL, *y = NULL;
    size_t xlen, ylen;
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    unsigned char point[1 + 2 * 48];
    if (member_bytes(o, "x", &x, &xlen, why, whylen) != 0 ||
        member_bytes(o, "y", &y, &ylen, why, whylen) != 0)
        goto out;
    if (xlen != size || ylen != size) { /* RFC 7518 section 6.2.1.2: the full length */
        snprintf(why, whylen, "\"x\" and \"y\" must be %zu bytes each on %s", size, crv);
        goto out;
    }
    point[0] = 4; /* uncompressed */
    memcpy(point + 1, x, size);
    memcpy(point + 1 + size, y, size);
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, crv, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * size) ||
        !(params = OSSL_PARAM_BLD_to_param(bld))) {
        snprintf(why, whylen, "could not be built");
        goto out;
    }
    pkey = from_params("EC", params, why, whylen);
    if (pkey && check_public(pkey, why, whylen) != 0) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
out:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return pkey;
}

static EVP_PKEY *
okp_key(json_t *o, char *why, size_t whylen)
{
    unsigned char *x = NULL;
    size_t xlen;
    if (member_bytes(o, "x", &x, &xlen, why, whylen) != 0)
        return NULL;
    EVP_PKEY *pkey = NULL;
    char e[160];
    if (xlen != 32)
        snprintf(why, whylen, "\"x\" must be 32 bytes on Ed25519");
    else if (!(pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xlen)))
        snprintf(why, whylen, "is not a valid Ed25519 key (%s)", ssl_error(e, sizeof(e)));
    free(x);
    return pkey;
}

/* ---- JWK sets ---------------------------------------------------------------------------- */

static const char *
str_member(json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Notes a key left out of the set. */
static void
note(char **notes, const char *source, const char *kid, size_t i, const char *why)
{
    if (!notes)
        return;
    char *line = kid ? xasprintf("%s: key \"%s\" left out: %s\n", source, kid, why)
                     : xasprintf("%s: key %zu left out: %s\n", source, i + 1, why);
    char *all = xasprintf("%s%s", *notes ? *notes : "", line);
    free(line);
    free(*notes);
    *notes = all;
}

/* Whether key_ops (absent, or a list) allows verifying. */
static bool
ops_verify(json_t *ops)
{
    if (!ops)
        return true;
    size_t i;
    json_t *op;
    json_array_foreach(ops, i, op)
    {
        if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0)
            return true;
    }
    return false;
}

int
jwk_set_add_jwks(struct jwk_set *s, const char *text, size_t len, const char *source, char **notes,
                 char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = -1;
    if (!doc) {
        util_seterr(err, errlen, "%s: not JSON: %s (line %d)", source, jerr.text, jerr.line);
        return -1;
    }
    json_t *keys = json_object_get(doc, "keys");
    if (!json_is_array(keys)) {
        util_seterr(err, errlen, "%s: a JWK set is an object with a \"keys\" array", source);
        goto out;
    }
    size_t i;
    json_t *o;
    json_array_foreach(keys, i, o)
    {
        char why[256];
        if (!json_is_object(o)) {
            util_seterr(err, errlen, "%s: key %zu is not an object", source, i + 1);
            goto out;
        }
        const char *kty = str_member(o, "kty"), *kid = str_member(o, "kid");
        const char *alg = str_member(o, "alg"), *use = str_member(o, "use");
        const char *crv = str_member(o, "crv");
        if (json_object_get(o, "kid") && !kid) {
            util_seterr(err, errlen, "%s: key %zu: \"kid\" is not a string", source, i + 1);
            goto out;
        }
        if (!kty) {
            util_seterr(err, errlen, "%s: key %zu has no \"kty\"", source, i + 1);
            goto out;
        }
        if (strcmp(kty, "oct") == 0) {
            util_seterr(err, errlen,
                        "%s: key %zu is a symmetric (oct) key: an HMAC secret does not belong in "
                        "a key set; give it with secret_file or secret_env",
                        source, i + 1);
            goto out;
        }
        if (use && strcmp(use, "sig") != 0) {
            note(notes, source, kid, i, "its \"use\" is not \"sig\"");
            continue;
        }
        if (!ops_verify(json_object_get(o, "key_ops"))) {
            note(notes, source, kid, i, "its \"key_ops\" do not include \"verify\"");
            continue;
        }
        struct jwk k = {0};
        if (strcmp(kty, "RSA") == 0) {
            k.kty = JWK_KTY_RSA;
        } else if (strcmp(kty, "EC") == 0 && crv &&
                   (strcmp(crv, "P-256") == 0 || strcmp(crv, "P-384") == 0)) {
            k.kty = JWK_KTY_EC;
        } else if (strcmp(kty, "OKP") == 0 && crv && strcmp(crv, "Ed25519") == 0) {
            k.kty = JWK_KTY_OKP;
        } else {
            snprintf(why, sizeof(why), "key type %s%s%s is not one sluice verifies", kty,
                     crv ? " on " : "", crv ? crv : "");
            note(notes, source, kid, i, why);
            continue;
        }
        k.algs = key_algs(k.kty, crv ? crv : "", alg, why, sizeof(why));
        if (!k.algs) {
            note(notes, source, kid, i, why);
            continue;
        }
        k.pkey = k.kty == JWK_KTY_RSA  ? rsa_key(o, why, sizeof(why))
                 : k.kty == JWK_KTY_EC ? ec_key(o, crv, why, sizeof(why))
                                       : okp_key(o, why, sizeof(why));
        if (k.pkey && k.kty == JWK_KTY_RSA && EVP_PKEY_get_bits(k.pkey) < JWK_RSA_MIN_BITS)
            snprintf(why, sizeof(why), "an RSA key of %d bits; at least %d are needed",
                     EVP_PKEY_get_bits(k.pkey), JWK_RSA_MIN_BITS);
        if (!k.pkey || (k.kty == JWK_KTY_RSA && EVP_PKEY_get_bits(k.pkey) < JWK_RSA_MIN_BITS)) {
            if (kid)
                util_seterr(err, errlen, "%s: key \"%s\" %s", source, kid, why);
            else
                util_seterr(err, errlen, "%s: key %zu %s", source, i + 1, why);
            EVP_PKEY_free(k.pkey);
            goto out;
        }
        k.kid = kid ? xstrdup(kid) : NULL;
        k.source = xstrdup(source);
        if (add_key(s, &k, err, errlen) != 0)
            goto out;
    }
    rc = 0;
out:
    json_decref(doc);
    return rc;
}

/* The type of a public key from PEM, with its curve for EC. Returns -1 when sluice verifies
 * nothing with it. */
static int
pkey_type(EVP_PKEY *pkey, enum jwk_kty *kty, char *crv, size_t crvlen)
{
    crv[0] = '\0';
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        *kty = JWK_KTY_RSA;
        return 0;
    }
    if (EVP_PKEY_is_a(pkey, "ED25519")) {
        *kty = JWK_KTY_OKP;
        snprintf(crv, crvlen, "Ed25519");
        return 0;
    }
    if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[64];
        size_t glen = 0;
        if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           &glen) != 1)
            return -1;
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
            snprintf(crv, crvlen, "P-256");
        else if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            snprintf(crv, crvlen, "P-384");
        else
            return -1;
        *kty = JWK_KTY_EC;
        return 0;
    }
    return -1;
}

int
jwk_set_add_pem(struct jwk_set *s, const char *pem, size_t len, const char *kid, const char *alg,
                const char *source, char *err, size_t errlen)
{
    char e[160], why[200], crv[16];
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    if (!pkey && bio) {
        /* An X.509 certificate: its subject's public key. */
        ERR_clear_error();
        BIO_reset(bio);
        X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (cert) {
            pkey = X509_get_pubkey(cert);
            X509_free(cert);
        }
    }
    BIO_free(bio);
    if (!pkey) {
        util_seterr(err, errlen, "%s: no PEM public key or certificate (%s)", source,
                    ssl_error(e, sizeof(e)));
        return -1;
    }
    struct jwk k = {0};
    k.pkey = pkey;
    if (pkey_type(pkey, &k.kty, crv, sizeof(crv)) != 0) {
        util_seterr(err, errlen, "%s: a key type sluice does not verify with", source);
        EVP_PKEY_free(pkey);
        return -1;
    }
    if (k.kty == JWK_KTY_RSA && EVP_PKEY_get_bits(pkey) < JWK_RSA_MIN_BITS) {
        util_seterr(err, errlen, "%s: an RSA key of %d bits; at least %d are needed", source,
                    EVP_PKEY_get_bits(pkey), JWK_RSA_MIN_BITS);
        EVP_PKEY_free(pkey);
        return -1;
    }
    if (k.kty == JWK_KTY_EC && check_public(pkey, why, sizeof(why)) != 0) {
        util_seterr(err, errlen, "%s: the key %s", source, why);
        EVP_PKEY_free(pkey);
        return -1;
    }
    k.algs = key_algs(k.kty, crv, alg, why, sizeof(why));
    if (!k.algs) {
        util_seterr(err, errlen, "%s: %s", source, why);
        EVP_PKEY_free(pkey);
        return -1;
    }
    k.kid = kid ? xstrdup(kid) : NULL;
    k.source = xstrdup(source);
    return add_key(s, &k, err, errlen);
}

int
jwk_set_add_secret(struct jwk_set *s, const unsigned char *secret, size_t len, const char *kid,
                   const char *source, char *err, size_t errlen)
{
    if (len < JWK_HMAC_MIN_BYTES) {
        util_seterr(err, errlen, "%s: an HS256 secret of %zu bytes; at least %d are needed", source,
                    len, JWK_HMAC_MIN_BYTES);
        return -1;
    }
    struct jwk k = {0};
    k.kty = JWK_KTY_OCT;
    k.algs = JWK_ALG_BIT(JWK_HS256);
    k.secret = xmalloc(len);
    memcpy(k.secret, secret, len);
    k.secret_len = len;
    k.kid = kid ? xstrdup(kid) : NULL;
    k.source = xstrdup(source);
    return add_key(s, &k, err, errlen);
}

/* ---- verifying --------------------------------------------------------------------------- */

/* JOSE's R || S (2 * size bytes) as a DER ECDSA-Sig-Value, into a new buffer. */
static unsigned char *
ecdsa_der(const unsigned char *sig, size_t size, int *derlen)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)size, NULL), *s = BN_bin2bn(sig + size, (int)size, NULL);
    unsigned char *der = NULL;
    *derlen = 0;
    if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return NULL;
    }
    *derlen = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    return *derlen > 0 ? der : NULL;
}

static int
hmac_verify(const struct jwk *k, const unsigned char *data, size_t len, const unsigned char *sig,
            size_t siglen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, k->secret, k->secret_len, data, len, mac,
                   sizeof(mac), &maclen))
        return 0;
    return maclen == siglen && CRYPTO_memcmp(mac, sig, maclen) == 0;
}

int
jwk_verify(const struct jwk *k, enum jwk_alg alg, const unsigned char *data, size_t len,
           const unsigned char *sig, size_t siglen)
{
    if (alg >= JWK_ALGS || !(k->algs & JWK_ALG_BIT(alg)))
        return 0;
    if (alg == JWK_HS256)
        return k->secret ? hmac_verify(k, data, len, sig, siglen) : 0;
    if (!k->pkey)
        return 0;
    unsigned char *der = NULL;
    if (alg == JWK_ES256 || alg == JWK_ES384) {
        size_t size = alg == JWK_ES256 ? 32 : 48;
        if (siglen != 2 * size)
            return 0;
        int derlen;
        der = ecdsa_der(sig, size, &derlen);
        if (!der) {
            ERR_clear_error();
            return 0;
        }
        sig = der;
        siglen = (size_t)derlen;
    }
    int ok = 0;
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    if (mctx && EVP_DigestVerifyInit_ex(mctx, &pctx, algs[alg].md, NULL, NULL, k->pkey, NULL) > 0) {
        int padded = 1;
        if (alg == JWK_PS256) /* RFC 7518 section 3.5: MGF1 with the same hash, salt its size */
            padded = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                     EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
        else if (k->kty == JWK_KTY_RSA)
            padded = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0;
        ok = padded && EVP_DigestVerify(mctx, sig, siglen, data, len) == 1;
    }
    EVP_MD_CTX_free(mctx);
    OPENSSL_free(der);
    ERR_clear_error();
    return ok;
}
