/* test_jwk.c - unit tests of JWT verification keys: JWK sets of RSA, EC and OKP keys (RFC 7517,
 * RFC 7518 section 6, RFC 8037), PEM keys, HMAC secrets, and each algorithm's good and bad
 * signatures with keys made by OpenSSL in the test. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/pem.h>

#include "jose_helpers.h"

/* One key pair per algorithm, made once. */
static EVP_PKEY *keys[JWK_ALGS];

static int
setup(void **state)
{
    (void)state;
    for (int a = 0; a < JWK_ALGS; a++)
        if (a != JWK_HS256)
            keys[a] = a == JWK_RS384 || a == JWK_RS512 || a == JWK_PS256 ? NULL : jh_keygen(a);
    keys[JWK_RS384] = keys[JWK_RS512] = keys[JWK_PS256] = keys[JWK_RS256];
    EVP_PKEY_up_ref(keys[JWK_RS256]);
    EVP_PKEY_up_ref(keys[JWK_RS256]);
    EVP_PKEY_up_ref(keys[JWK_RS256]);
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    for (int a = 0; a < JWK_ALGS; a++)
        EVP_PKEY_free(keys[a]);
    return 0;
}

/* A JWK set of the given JWKs (texts), into s. Returns what jwk_set_add_jwks returned. */
static int
load(struct jwk_set *s, char **notes, char *err, size_t errlen, const char *k1, const char *k2)
{
    char *doc = xasprintf("{\"keys\":[%s%s%s]}", k1, k2 ? "," : "", k2 ? k2 : "");
    int rc = jwk_set_add_jwks(s, doc, strlen(doc), "jwks.json", notes, err, errlen);
    free(doc);
    return rc;
}

/* RFC 7517 section 4, RFC 7518 section 6: each key type is read, pinned to its algorithms by
 * its type and curve, or by its own "alg". */
static void
test_jwks_reads_rsa_ec_and_okp_keys_pinned_by_type(void **state)
{
    (void)state;
    struct jwk_set s = {0};
    char err[256], *notes = NULL;
    char *rsa = jh_jwk(keys[JWK_RS256], "r1", NULL);
    char *ec = jh_jwk(keys[JWK_ES256], "e1", NULL);
    char *ec384 = jh_jwk(keys[JWK_ES384], "e2", "ES384");
    char *ed = jh_jwk(keys[JWK_EDDSA], "o1", NULL);
    char *pinned = jh_jwk(keys[JWK_PS256], "r2", "PS256");
    assert_int_equal(load(&s, &notes, err, sizeof(err), rsa, ec), 0);
    assert_int_equal(load(&s, &notes, err, sizeof(err), ec384, ed), 0);
    assert_int_equal(load(&s, &notes, err, sizeof(err), pinned, NULL), 0);
    assert_null(notes);
    assert_int_equal(s.n, 5);
    assert_int_equal(jwk_set_find(&s, "r1", 2)->algs, JWK_RSA_ALGS);
    assert_int_equal(jwk_set_find(&s, "e1", 2)->algs, JWK_ALG_BIT(JWK_ES256));
    assert_int_equal(jwk_set_find(&s, "e2", 2)->algs, JWK_ALG_BIT(JWK_ES384));
    assert_int_equal(jwk_set_find(&s, "o1", 2)->algs, JWK_ALG_BIT(JWK_EDDSA));
    assert_int_equal(jwk_set_find(&s, "r2", 2)->algs, JWK_ALG_BIT(JWK_PS256));
    assert_null(jwk_set_find(&s, "r3", 2));
    jwk_set_fini(&s);
    free(rsa);
    free(ec);
    free(ec384);
    free(ed);
    free(pinned);
}

static void
refused_jwks(const char *doc, const char *want)
{
    struct jwk_set s = {0};
    char err[256] = "";
    if (jwk_set_add_jwks(&s, doc, strlen(doc), "jwks.json", NULL, err, sizeof(err)) == 0)
        fail_msg("%s was taken", doc);
    if (!strstr(err, want))
        fail_msg("error \"%s\" does not say \"%s\"", err, want);
    jwk_set_fini(&s);
}

/* Broken documents and keys refuse the whole set, with what is wrong. */
static void
test_jwks_refuses_broken_keys(void **state)
{
    (void)state;
    refused_jwks("{\"keys\":", "not JSON");
    refused_jwks("[]", "\"keys\" array");
    refused_jwks("{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\"}]}", "has no \"n\"");
    refused_jwks("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"a+b\",\"e\":\"AQAB\"}]}", "not base64url");
    /* A 1024-bit modulus: RFC 7518 section 3.3 asks for 2048 at least. */
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    char *jwk = jh_jwk(small, "small", NULL);
    char *doc = xasprintf("{\"keys\":[%s]}", jwk);
    refused_jwks(doc, "key \"small\" an RSA key of 1024 bits; at least 2048");
    free(doc);
    free(jwk);
    EVP_PKEY_free(small);
    refused_jwks("{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAA\"}]}", "symmetric");
    refused_jwks("{\"keys\":[{\"kid\":\"x\"}]}", "no \"kty\"");
    refused_jwks("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AAAA\"}]}", "32 bytes");
    refused_jwks("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AAAA\",\"y\":\"AAAA\"}]}",
                 "32 bytes");
    /* A point that is not on P-256: x = y = 1 (the full 32 bytes each). */
    refused_jwks("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\","
                 "\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\","
                 "\"y\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\"}]}",
                 "key 1");
    refused_jwks("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"a\","
                 "\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"},"
                 "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"a\","
                 "\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}",
                 "used by two keys");
}

/* Keys for encryption, for other operations, or of algorithms sluice does not verify are left
 * out with a note, and the others are kept. */
static void
test_jwks_leaves_out_keys_it_does_not_verify_with(void **state)
{
    (void)state;
    struct jwk_set s = {0};
    char err[256], *notes = NULL;
    char *rsa = jh_jwk(keys[JWK_RS256], "sig", NULL);
    const char *doc_fmt = "{\"keys\":[%s,"
                          "{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":"
                          "\"AQAB\"},"
                          "{\"kty\":\"EC\",\"kid\":\"p521\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":"
                          "\"AA\"},"
                          "{\"kty\":\"RSA\",\"kid\":\"oaep\",\"alg\":\"RSA-OAEP\",\"n\":\"AQAB\","
                          "\"e\":\"AQAB\"},"
                          "{\"kty\":\"RSA\",\"kid\":\"ops\",\"key_ops\":[\"sign\"],\"n\":\"AQAB\","
                          "\"e\":\"AQAB\"},"
                          "{\"kty\":\"OKP\",\"kid\":\"x25519\",\"crv\":\"X25519\",\"x\":\"AA\"}]}";
    char *doc = xasprintf(doc_fmt, rsa);
    assert_int_equal(jwk_set_add_jwks(&s, doc, strlen(doc), "jwks.json", &notes, err, sizeof(err)),
                     0);
    assert_int_equal(s.n, 1);
    assert_non_null(jwk_set_find(&s, "sig", 3));
    assert_non_null(notes);
    assert_non_null(strstr(notes, "key \"enc\" left out"));
    assert_non_null(strstr(notes, "key \"p521\" left out"));
    assert_non_null(strstr(notes, "key \"oaep\" left out"));
    assert_non_null(strstr(notes, "key \"ops\" left out"));
    assert_non_null(strstr(notes, "key \"x25519\" left out"));
    free(notes);
    free(doc);
    free(rsa);
    jwk_set_fini(&s);
}

/* A key's "alg" must fit its type: an EC key cannot be pinned to RS256. */
static void
test_jwk_alg_must_fit_the_key_type(void **state)
{
    (void)state;
    struct jwk_set s = {0};
    char err[256], *notes = NULL;
    char *ec = jh_jwk(keys[JWK_ES256], "e", "RS256");
    char *ed = jh_jwk(keys[JWK_EDDSA], "o", "HS256");
    assert_int_equal(load(&s, &notes, err, sizeof(err), ec, ed), 0);
    assert_int_equal(s.n, 0);
    assert_non_null(strstr(notes, "does not go with this key's type"));
    free(notes);
    free(ec);
    free(ed);
    jwk_set_fini(&s);
}

/* Every algorithm: its own signature verifies; a changed byte of the input, of the signature,
 * a signature of another key, and another algorithm of the same key do not. */
static void
test_each_algorithm_good_and_bad_signatures(void **state)
{
    (void)state;
    static const unsigned char secret[] = "0123456789abcdef0123456789abcdef";
    for (int a = 0; a < JWK_ALGS; a++) {
        struct jwk_set s = {0};
        char err[256];
        const char *msg = "eyJhbGciOiJ4In0.eyJzdWIiOiIxIn0";
        unsigned char sig[1024];
        size_t n;
        if (a == JWK_HS256) {
            assert_int_equal(jwk_set_add_secret(&s, secret, 32, "k", "test", err, sizeof(err)), 0);
            n = jh_hmac(secret, 32, msg, strlen(msg), sig);
        } else {
            char *jwk = jh_jwk(keys[a], "k", NULL);
            assert_int_equal(load(&s, NULL, err, sizeof(err), jwk, NULL), 0);
            free(jwk);
            n = jh_sign(keys[a], (enum jwk_alg)a, msg, strlen(msg), sig, sizeof(sig));
        }
        const struct jwk *k = &s.keys[0];
        const unsigned char *in = (const unsigned char *)msg;
        size_t len = strlen(msg);
        if (jwk_verify(k, (enum jwk_alg)a, in, len, sig, n) != 1)
            fail_msg("%s: a good signature was refused", jwk_alg_name((enum jwk_alg)a));
        char changed[64];
        memcpy(changed, msg, len);
        changed[len - 1] ^= 1;
        assert_int_equal(jwk_verify(k, (enum jwk_alg)a, (unsigned char *)changed, len, sig, n), 0);
        sig[n / 2] ^= 0x40;
        assert_int_equal(jwk_verify(k, (enum jwk_alg)a, in, len, sig, n), 0);
        sig[n / 2] ^= 0x40;
        assert_int_equal(jwk_verify(k, (enum jwk_alg)a, in, len, sig, n - 1), 0);
        /* The same key under an algorithm it does not take. */
        enum jwk_alg other = a == JWK_HS256 ? JWK_RS256 : JWK_HS256;
        assert_int_equal(jwk_verify(k, other, in, len, sig, n), 0);
        /* Another key of the same type. */
        if (a != JWK_HS256) {
            EVP_PKEY *o = jh_keygen((enum jwk_alg)a);
            unsigned char osig[1024];
            size_t on = jh_sign(o, (enum jwk_alg)a, msg, len, osig, sizeof(osig));
            assert_int_equal(jwk_verify(k, (enum jwk_alg)a, in, len, osig, on), 0);
            EVP_PKEY_free(o);
        }
        jwk_set_fini(&s);
    }
}

/* RS256 and PS256 are different paddings: one's signature is not the other's. */
static void
test_pkcs1_and_pss_signatures_are_not_interchangeable(void **state)
{
    (void)state;
    struct jwk_set s = {0};
    char err[256];
    char *jwk = jh_jwk(keys[JWK_RS256], "k", NULL);
    assert_int_equal(load(&s, NULL, err, sizeof(err), jwk, NULL), 0);
    const char *msg = "a.b";
    unsigned char sig[512];
    size_t n = jh_sign(keys[JWK_RS256], JWK_RS256, msg, 3, sig, sizeof(sig));
    assert_int_equal(jwk_verify(&s.keys[0], JWK_RS256, (unsigned char *)msg, 3, sig, n), 1);
    assert_int_equal(jwk_verify(&s.keys[0], JWK_PS256, (unsigned char *)msg, 3, sig, n), 0);
    assert_int_equal(jwk_verify(&s.keys[0], JWK_RS384, (unsigned char *)msg, 3, sig, n), 0);
    n = jh_sign(keys[JWK_RS256], JWK_PS256, msg, 3, sig, sizeof(sig));
    assert_int_equal(jwk_verify(&s.keys[0], JWK_PS256, (unsigned char *)msg, 3, sig, n), 1);
    assert_int_equal(jwk_verify(&s.keys[0], JWK_RS256, (unsigned char *)msg, 3, sig, n), 0);
    free(jwk);
    jwk_set_fini(&s);
}

/* PEM public keys and certificates: the type is read from the key, the algorithm pinned. */
static void
test_pem_keys_are_pinned(void **state)
{
    (void)state;
    struct jwk_set s = {0};
    char err[256];
    for (int a = JWK_RS256; a <= JWK_EDDSA; a++) {
        if (a == JWK_RS384 || a == JWK_RS512)
            continue;
        BIO *b = BIO_new(BIO_s_mem());
        PEM_write_bio_PUBKEY(b, keys[a]);
        char *pem;
        long len = BIO_get_mem_data(b, &pem);
        char kid[8];
        snprintf(kid, sizeof(kid), "p%d", a);
        assert_int_equal(jwk_set_add_pem(&s, pem, (size_t)len, kid, a == JWK_PS256 ? "PS256" : NULL,
                                         "key.pem", err, sizeof(err)),
                         0);
        BIO_free(b);
    }
    assert_int_equal(jwk_set_find(&s, "p0", 2)->algs, JWK_RSA_ALGS);
    assert_int_equal(jwk_set_find(&s, "p3", 2)->algs, JWK_ALG_BIT(JWK_PS256));
    assert_int_equal(jwk_set_find(&s, "p4", 2)->algs, JWK_ALG_BIT(JWK_ES256));
    assert_int_equal(jwk_set_find(&s, "p5", 2)->algs, JWK_ALG_BIT(JWK_ES384));
    assert_int_equal(jwk_set_find(&s, "p6", 2)->algs, JWK_ALG_BIT(JWK_EDDSA));
    /* An EC key pinned to an RSA algorithm, and text that is no PEM, are refused. */
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, keys[JWK_ES256]);
    char *pem;
    long len = BIO_get_mem_data(b, &pem);
    assert_int_equal(
        jwk_set_add_pem(&s, pem, (size_t)len, "x", "RS256", "ec.pem", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "does not go with this key's type"));
    BIO_free(b);
    assert_int_equal(jwk_set_add_pem(&s, "hello", 5, "y", NULL, "bad.pem", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no PEM public key"));
    jwk_set_fini(&s);
}

/* RFC 7518 section 3.2: an HS256 secret has at least 256 bits. */
static void
test_hmac_secret_has_at_least_32_bytes(void **state)
{
    (void)state;
    struct jwk_set s = {0};
    char err[256];
    assert_int_equal(
        jwk_set_add_secret(&s, (const unsigned char *)"short", 5, NULL, "env S", err, sizeof(err)),
        -1);
    assert_non_null(strstr(err, "at least 32"));
    assert_int_equal(s.n, 0);
}

static void
test_alg_names(void **state)
{
    (void)state;
    enum jwk_alg a;
    assert_int_equal(jwk_alg_parse("none", 4, &a), -1);
    assert_int_equal(jwk_alg_parse("HS512", 5, &a), -1);
    assert_int_equal(jwk_alg_parse("RS25", 4, &a), -1);
    assert_int_equal(jwk_alg_parse("EdDSA", 5, &a), 0);
    assert_int_equal(a, JWK_EDDSA);
    for (int i = 0; i < JWK_ALGS; i++) {
        const char *n = jwk_alg_name((enum jwk_alg)i);
        assert_int_equal(jwk_alg_parse(n, strlen(n), &a), 0);
        assert_int_equal(a, i);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jwks_reads_rsa_ec_and_okp_keys_pinned_by_type),
        cmocka_unit_test(test_jwks_refuses_broken_keys),
        cmocka_unit_test(test_jwks_leaves_out_keys_it_does_not_verify_with),
        cmocka_unit_test(test_jwk_alg_must_fit_the_key_type),
        cmocka_unit_test(test_each_algorithm_good_and_bad_signatures),
        cmocka_unit_test(test_pkcs1_and_pss_signatures_are_not_interchangeable),
        cmocka_unit_test(test_pem_keys_are_pinned),
        cmocka_unit_test(test_hmac_secret_has_at_least_32_bytes),
        cmocka_unit_test(test_alg_names),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
