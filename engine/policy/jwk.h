/* jwk.h - verification keys for JSON Web Tokens: JWK sets (RFC 7517), PEM public keys and
 * HMAC secrets, each pinned to the algorithms (RFC 7518) it may verify. */
#ifndef SLUICE_JWK_H
#define SLUICE_JWK_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/evp.h>

/* The JWS algorithms sluice verifies (RFC 7518 section 3.1, RFC 8037 section 3.1). */
enum jwk_alg {
    JWK_RS256 = 0,
    JWK_RS384,
    JWK_RS512,
    JWK_PS256,
    JWK_ES256,
    JWK_ES384,
    JWK_EDDSA, /* Ed25519 */
    JWK_HS256,
    JWK_ALGS
};

#define JWK_ALG_BIT(a) (1u << (a))
#define JWK_RSA_ALGS                                                                               \
    (JWK_ALG_BIT(JWK_RS256) | JWK_ALG_BIT(JWK_RS384) | JWK_ALG_BIT(JWK_RS512) |                    \
     JWK_ALG_BIT(JWK_PS256))

#define JWK_RSA_MIN_BITS 2048 /* RFC 7518 section 3.3 */
#define JWK_HMAC_MIN_BYTES 32 /* RFC 7518 section 3.2: at least the hash's size */
#define JWK_MAX_KEYS 64       /* keys in one set */

enum jwk_kty { JWK_KTY_RSA, JWK_KTY_EC, JWK_KTY_OKP, JWK_KTY_OCT };

/* One key. */
struct jwk {
    char *kid; /* its key id; NULL when it has none */
    enum jwk_kty kty;
    unsigned algs; /* JWK_ALG_BIT()s of the algorithms it verifies: pinned, never the token's say */
    EVP_PKEY *pkey;        /* RSA, EC, OKP: the public key */
    unsigned char *secret; /* oct: the HMAC secret */
    size_t secret_len;
    char *source; /* where it came from, for messages: "jwks.json", "env JWT_SECRET" */
};

/* A set of keys, each kid at most once. A zeroed set is empty. */
struct jwk_set {
    struct jwk *keys;
    size_t n;
};

/*
 * Adds the signature keys of a JWK set document (json[0..len), RFC 7517
 * section 5) read from `source` (a name for messages). RSA keys (n, e; at
 * least JWK_RSA_MIN_BITS), EC keys on P-256 and P-384 (x, y; the point is
 * checked to be on the curve) and OKP Ed25519 keys (x) are taken. A key's
 * "alg", when given, pins it to that algorithm (and must fit its type); an
 * RSA key without one verifies RS256, RS384, RS512 and PS256, an EC key the
 * algorithm of its curve, an OKP key EdDSA. Keys with "use" other than
 * "sig", "key_ops" without "verify", or an algorithm or curve sluice does not
 * verify are left out, each with a line in *notes (a growing text the caller
 * frees; may be NULL). A symmetric key ("oct") is an error: a secret does not
 * belong in a key set document (jwk_set_add_secret). Returns 0, or -1 with a
 * message in err (keys added before the error stay in s).
 */
int jwk_set_add_jwks(struct jwk_set *s, const char *json, size_t len, const char *source,
                     char **notes, char *err, size_t errlen);

/*
 * Adds the public key of a PEM text (pem[0..len): "BEGIN PUBLIC KEY", or an
 * X.509 certificate) with key id `kid` (NULL: none), pinned to algorithm
 * `alg` (one that fits the key's type; NULL: as a JWK without "alg").
 * Returns 0, or -1 with a message in err.
 */
int jwk_set_add_pem(struct jwk_set *s, const char *pem, size_t len, const char *kid,
                    const char *alg, const char *source, char *err, size_t errlen);

/*
 * Adds an HMAC secret (copied; at least JWK_HMAC_MIN_BYTES) for HS256 with
 * key id `kid` (NULL: none). Returns 0, or -1 with a message in err.
 */
int jwk_set_add_secret(struct jwk_set *s, const unsigned char *secret, size_t len, const char *kid,
                       const char *source, char *err, size_t errlen);

/* Frees what s holds; s is empty after. */
void jwk_set_fini(struct jwk_set *s);

/* The key of s named kid (klen bytes), borrowed from s, or NULL. */
const struct jwk *jwk_set_find(const struct jwk_set *s, const char *kid, size_t klen);

/* Parses a JWS "alg" value (len bytes) into *alg. Returns 0, or -1 when sluice verifies no such
 * algorithm ("none" among them). */
int jwk_alg_parse(const char *name, size_t len, enum jwk_alg *alg);

/* The JWS name of alg ("RS256", ...), static. */
const char *jwk_alg_name(enum jwk_alg alg);

/*
 * Whether sig[0..siglen) is key k's signature by `alg` of data[0..len) (the
 * JWS signing input). alg must be one k takes (k->algs). An ECDSA signature
 * is JOSE's R || S (RFC 7518 section 3.4), an HMAC compared in constant time.
 * Returns 1 when it is, 0 when it is not (or on any failure). Thread-safe:
 * the key is only read.
 */
int jwk_verify(const struct jwk *k, enum jwk_alg alg, const unsigned char *data, size_t len,
               const unsigned char *sig, size_t siglen);

#endif
