/* test_jwt.c - unit tests of JWT verification: RFC 7515's HS256 example, the header rules of
 * RFC 8725 (alg pinned by the key, none refused, jku/x5u/jwk/crit refused), and the claims of
 * RFC 7519 section 4.1 (exp, nbf, iat at the leeway's boundaries, iss, aud). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "jose_helpers.h"
#include "jwt.h"

static EVP_PKEY *rsa, *ec, *ed;
static struct jwk_set set;
static const unsigned char secret[] = "an HS256 secret of thirty-two bytes at least";

static int
setup(void **state)
{
    (void)state;
    char err[256];
    rsa = jh_keygen(JWK_RS256);
    ec = jh_keygen(JWK_ES256);
    ed = jh_keygen(JWK_EDDSA);
    char *a = jh_jwk(rsa, "rsa", "RS256"), *b = jh_jwk(ec, "ec", NULL), *c = jh_jwk(ed, "ed", NULL);
    char *doc = xasprintf("{\"keys\":[%s,%s,%s]}", a, b, c);
    if (jwk_set_add_jwks(&set, doc, strlen(doc), "jwks.json", NULL, err, sizeof(err)) != 0 ||
        jwk_set_add_secret(&set, secret, sizeof(secret) - 1, "hs", "env S", err, sizeof(err)) != 0)
        fail_msg("%s", err);
    free(a);
    free(b);
    free(c);
    free(doc);
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    jwk_set_fini(&set);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(ed);
    return 0;
}

#define NOW 1700000000.0

static const struct jwt_rules rules = {
    .keys = &set, .issuer = "https://auth.example.com", .audience = "crm", .leeway_s = 30};

/* Verifies t under r at now; returns the status (and frees what it got). */
static enum jwt_status
check(const struct jwt_rules *r, const char *t, double now)
{
    struct jwt_token tok;
    char detail[128] = "";
    enum jwt_status st = jwt_verify(r, t, strlen(t), now, &tok, detail, sizeof(detail));
    if (st != JWT_OK) {
        assert_null(tok.claims);
        assert_true(detail[0] != '\0');
        /* Fit for an error_description (RFC 6750 section 3): no quote, no backslash. */
        for (const char *p = detail; *p; p++)
            assert_true(*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\');
    }
    json_decref(tok.claims);
    return st;
}

static char *
claims(const char *extra)
{
    return xasprintf("{\"sub\":\"42\",\"iss\":\"https://auth.example.com\",\"aud\":\"crm\","
                     "\"exp\":%.0f%s%s}",
                     NOW + 600, extra ? "," : "", extra ? extra : "");
}

/* RFC 7515 appendix A.1: the HS256 example verifies with its key (before its exp). */
static void
test_rfc7515_a1_hs256_example(void **state)
{
    (void)state;
    static const char *k =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    static const char *t =
        "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
        "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0"
        "cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    unsigned char key[64];
    assert_int_equal(b64url_decode(k, strlen(k), key, sizeof(key)), 64);
    struct jwk_set s = {0};
    char err[128];
    assert_int_equal(jwk_set_add_secret(&s, key, 64, NULL, "rfc", err, sizeof(err)), 0);
    struct jwt_rules r = {.keys = &s, .issuer = "joe"};
    struct jwt_token tok;
    char detail[128];
    assert_int_equal(jwt_verify(&r, t, strlen(t), 1300819000, &tok, detail, sizeof(detail)),
                     JWT_OK);
    assert_string_equal(json_string_value(json_object_get(tok.claims, "iss")), "joe");
    assert_true(tok.exp == 1300819380.0);
    assert_int_equal(tok.alg, JWK_HS256);
    json_decref(tok.claims);
    /* Past its exp. */
    assert_int_equal(check(&r, t, 1300819381), JWT_EXPIRED);
    jwk_set_fini(&s);
}

/* RS256, ES256, EdDSA and HS256 tokens of the set's keys verify, with or without a kid. */
static void
test_good_tokens_of_each_key(void **state)
{
    (void)state;
    char *c = claims(NULL);
    struct {
        EVP_PKEY *k;
        enum jwk_alg alg;
        const char *header;
    } cases[] = {
        {rsa, JWK_RS256, "{\"alg\":\"RS256\",\"kid\":\"rsa\",\"typ\":\"JWT\"}"},
        {rsa, JWK_RS256, "{\"alg\":\"RS256\"}"},
        {ec, JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec\"}"},
        {ed, JWK_EDDSA, "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}"},
        {NULL, JWK_HS256, "{\"alg\":\"HS256\",\"kid\":\"hs\"}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *t =
            jh_token(cases[i].k, secret, sizeof(secret) - 1, cases[i].alg, cases[i].header, c);
        struct jwt_token tok;
        char detail[128];
        enum jwt_status st = jwt_verify(&rules, t, strlen(t), NOW, &tok, detail, sizeof(detail));
        if (st != JWT_OK)
            fail_msg("%s: %s", cases[i].header, detail);
        assert_string_equal(json_string_value(json_object_get(tok.claims, "sub")), "42");
        assert_int_equal(tok.alg, cases[i].alg);
        json_decref(tok.claims);
        free(t);
    }
    free(c);
}

/* RFC 8725 section 3.1: the algorithm is the key's. "none" is refused, an HS256 token MACed
 * with the RSA key's public text is refused, a kid names one key and no other. */
static void
test_algorithm_is_pinned_by_the_key(void **state)
{
    (void)state;
    char *c = claims(NULL);
    char *h = jh_b64s("{\"alg\":\"none\",\"kid\":\"rsa\"}"), *p = jh_b64s(c);
    char *none = xasprintf("%s.%s.", h, p);
    assert_int_equal(check(&rules, none, NOW), JWT_ALGORITHM);
    free(none);
    free(h);
    /* HS256 keyed with the RSA key's JWK text (what a library that takes "the key" does). */
    char *pub = jh_jwk(rsa, "rsa", "RS256");
    char *t = jh_token(NULL, (const unsigned char *)pub, strlen(pub), JWK_HS256,
                       "{\"alg\":\"HS256\",\"kid\":\"rsa\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_ALGORITHM);
    free(t);
    t = jh_token(NULL, (const unsigned char *)pub, strlen(pub), JWK_HS256, "{\"alg\":\"HS256\"}",
                 c);
    assert_int_equal(check(&rules, t, NOW), JWT_SIGNATURE); /* tried on the HS256 key only */
    free(t);
    free(pub);
    /* ES256 signed by the EC key but naming the RSA key's kid. */
    t = jh_token(ec, NULL, 0, JWK_ES256, "{\"alg\":\"ES256\",\"kid\":\"rsa\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_ALGORITHM);
    free(t);
    /* RS256 naming the EdDSA key's kid. */
    t = jh_token(rsa, NULL, 0, JWK_RS256, "{\"alg\":\"RS256\",\"kid\":\"ed\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_ALGORITHM);
    free(t);
    /* A kid not in the set, and an algorithm no key takes. */
    t = jh_token(rsa, NULL, 0, JWK_RS256, "{\"alg\":\"RS256\",\"kid\":\"gone\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_UNKNOWN_KEY);
    free(t);
    t = jh_token(rsa, NULL, 0, JWK_PS256, "{\"alg\":\"PS256\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_UNKNOWN_KEY); /* "rsa" is pinned to RS256 */
    free(t);
    t = jh_token(rsa, NULL, 0, JWK_RS256, "{\"alg\":\"HS512\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_ALGORITHM);
    free(t);
    t = jh_token(rsa, NULL, 0, JWK_RS256, "{\"kid\":\"rsa\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_ALGORITHM);
    free(t);
    free(p);
    free(c);
}

/* RFC 8725 section 3.10, RFC 7515 section 4.1.11: headers that bring their own key or URL, and
 * critical extensions, are refused even when the signature is good. */
static void
test_headers_naming_keys_or_extensions_are_refused(void **state)
{
    (void)state;
    char *c = claims(NULL);
    const char *headers[] = {
        "{\"alg\":\"RS256\",\"kid\":\"rsa\",\"jku\":\"https://evil.example/jwks\"}",
        "{\"alg\":\"RS256\",\"kid\":\"rsa\",\"x5u\":\"https://evil.example/cert\"}",
        "{\"alg\":\"RS256\",\"kid\":\"rsa\",\"jwk\":{\"kty\":\"RSA\"}}",
        "{\"alg\":\"RS256\",\"kid\":\"rsa\",\"crit\":[\"exp\"],\"exp\":1}",
    };
    for (size_t i = 0; i < 4; i++) {
        char *t = jh_token(rsa, NULL, 0, JWK_RS256, headers[i], c);
        assert_int_equal(check(&rules, t, NOW), JWT_HEADER);
        free(t);
    }
    /* A duplicate header member is refused (RFC 7515 section 5.2). */
    char *t = jh_token(rsa, NULL, 0, JWK_RS256, "{\"alg\":\"RS256\",\"alg\":\"none\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_MALFORMED);
    free(t);
    free(c);
}

/* A changed payload, a changed signature, and shapes that are no signed JWT. */
static void
test_tampered_and_malformed_tokens(void **state)
{
    (void)state;
    char *c = claims(NULL);
    char *t = jh_token(rsa, NULL, 0, JWK_RS256, "{\"alg\":\"RS256\",\"kid\":\"rsa\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_OK);
    /* Another payload under the same header and signature: sub 43 instead of 42. */
    char *c43 = xasprintf("{\"sub\":\"43\",\"iss\":\"https://auth.example.com\",\"aud\":\"crm\","
                          "\"exp\":%.0f}",
                          NOW + 600);
    char *p43 = jh_b64s(c43);
    char *d1 = strchr(t, '.'), *d2 = strchr(d1 + 1, '.');
    char *forged = xasprintf("%.*s.%s%s", (int)(d1 - t), t, p43, d2);
    assert_int_equal(check(&rules, forged, NOW), JWT_SIGNATURE);
    free(forged);
    /* The last signature character changed. */
    char *bad = xstrdup(t);
    size_t n = strlen(bad);
    bad[n - 2] = bad[n - 2] == 'A' ? 'B' : 'A';
    assert_int_equal(check(&rules, bad, NOW), JWT_SIGNATURE);
    free(bad);
    const char *shapes[] = {"",        "abc",       "a.b",
                            "a.b.c.d", "a.b.c.d.e", ".b.c",
                            "a..c",    "%%%.a.b",   "eyJhbGciOiJSUzI1NiJ9.e30.AA=="};
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        assert_int_equal(check(&rules, shapes[i], NOW), JWT_MALFORMED);
    /* A header that is JSON but no object. */
    char *h = jh_b64s("[\"alg\"]");
    char *arr = xasprintf("%s.e30.AA", h);
    assert_int_equal(check(&rules, arr, NOW), JWT_MALFORMED);
    free(arr);
    free(h);
    /* Over the size cap: refused before anything is decoded. */
    char *big = xmalloc(JWT_MAX_BYTES + 2);
    memset(big, 'A', JWT_MAX_BYTES + 1);
    big[JWT_MAX_BYTES + 1] = '\0';
    assert_int_equal(check(&rules, big, NOW), JWT_TOO_LONG);
    free(big);
    free(p43);
    free(c43);
    free(t);
    free(c);
}

/* The claims alone, at now with a leeway of 30 s. */
static enum jwt_status
claims_at(const char *json, double now)
{
    json_t *c = json_loads(json, 0, NULL);
    assert_non_null(c);
    double exp;
    char detail[128];
    enum jwt_status st = jwt_check_claims(&rules, c, now, &exp, detail, sizeof(detail));
    json_decref(c);
    return st;
}

/* RFC 7519 section 4.1.4: the token is valid while now < exp; with 30 s of leeway, until exp +
 * 30 s, and not at it. */
static void
test_exp_at_the_leeway_boundary(void **state)
{
    (void)state;
    const char *c = "{\"iss\":\"https://auth.example.com\",\"aud\":\"crm\",\"exp\":1000}";
    assert_int_equal(claims_at(c, 999), JWT_OK);
    assert_int_equal(claims_at(c, 1000), JWT_OK);
    assert_int_equal(claims_at(c, 1029.999), JWT_OK);
    assert_int_equal(claims_at(c, 1030), JWT_EXPIRED);
    assert_int_equal(claims_at(c, 5000), JWT_EXPIRED);
    /* A fractional NumericDate (RFC 7519 section 2). */
    const char *f = "{\"iss\":\"https://auth.example.com\",\"aud\":\"crm\",\"exp\":1000.5}";
    assert_int_equal(claims_at(f, 1030.4), JWT_OK);
    assert_int_equal(claims_at(f, 1030.5), JWT_EXPIRED);
}

/* RFC 7519 section 4.1.5: not before nbf; with the leeway, from nbf - 30 s on. */
static void
test_nbf_at_the_leeway_boundary(void **state)
{
    (void)state;
    const char *c =
        "{\"iss\":\"https://auth.example.com\",\"aud\":\"crm\",\"exp\":5000,\"nbf\":1000}";
    assert_int_equal(claims_at(c, 969), JWT_NOT_YET_VALID);
    assert_int_equal(claims_at(c, 969.999), JWT_NOT_YET_VALID);
    assert_int_equal(claims_at(c, 970), JWT_OK);
    assert_int_equal(claims_at(c, 1000), JWT_OK);
}

/* RFC 7519 section 4.1.6: a token issued ahead of now (beyond the leeway) is refused. */
static void
test_iat_at_the_leeway_boundary(void **state)
{
    (void)state;
    const char *c =
        "{\"iss\":\"https://auth.example.com\",\"aud\":\"crm\",\"exp\":5000,\"iat\":1000}";
    assert_int_equal(claims_at(c, 969.5), JWT_ISSUED_IN_FUTURE);
    assert_int_equal(claims_at(c, 970), JWT_OK);
    assert_int_equal(claims_at(c, 4000), JWT_OK);
}

/* RFC 7519 sections 4.1.1 and 4.1.3: iss equal to the one required; aud a string or a list
 * naming the audience; a token naming an audience when none is configured is refused. */
static void
test_iss_and_aud(void **state)
{
    (void)state;
    assert_int_equal(claims_at("{\"iss\":\"https://auth.example.com\",\"aud\":[\"x\",\"crm\"],"
                               "\"exp\":5000}",
                               1000),
                     JWT_OK);
    assert_int_equal(claims_at("{\"iss\":\"https://evil.example.com\",\"aud\":\"crm\","
                               "\"exp\":5000}",
                               1000),
                     JWT_ISSUER);
    assert_int_equal(claims_at("{\"aud\":\"crm\",\"exp\":5000}", 1000), JWT_ISSUER);
    assert_int_equal(claims_at("{\"iss\":\"https://auth.example.com\",\"aud\":\"crm2\","
                               "\"exp\":5000}",
                               1000),
                     JWT_AUDIENCE);
    assert_int_equal(
        claims_at("{\"iss\":\"https://auth.example.com\",\"aud\":[],\"exp\":5000}", 1000),
        JWT_AUDIENCE);
    assert_int_equal(claims_at("{\"iss\":\"https://auth.example.com\",\"exp\":5000}", 1000),
                     JWT_AUDIENCE);
    struct jwt_rules open = {.keys = &set};
    json_t *c = json_loads("{\"aud\":\"crm\",\"exp\":5000}", 0, NULL);
    double exp;
    char detail[128];
    assert_int_equal(jwt_check_claims(&open, c, 1000, &exp, detail, sizeof(detail)), JWT_AUDIENCE);
    json_decref(c);
    c = json_loads("{\"exp\":5000}", 0, NULL);
    assert_int_equal(jwt_check_claims(&open, c, 1000, &exp, detail, sizeof(detail)), JWT_OK);
    json_decref(c);
}

/* exp is required; dates must be numbers. */
static void
test_claims_shapes(void **state)
{
    (void)state;
    assert_int_equal(claims_at("{\"iss\":\"https://auth.example.com\",\"aud\":\"crm\"}", 1000),
                     JWT_CLAIMS);
    assert_int_equal(claims_at("{\"iss\":\"https://auth.example.com\",\"aud\":\"crm\","
                               "\"exp\":\"5000\"}",
                               1000),
                     JWT_CLAIMS);
    assert_int_equal(claims_at("{\"iss\":\"https://auth.example.com\",\"aud\":\"crm\","
                               "\"exp\":5000,\"nbf\":null}",
                               1000),
                     JWT_CLAIMS);
    /* Claims checked only after the signature: a forged expired token says "signature". */
    char *c = xasprintf("{\"iss\":\"https://auth.example.com\",\"aud\":\"crm\",\"exp\":1}");
    char *t = jh_token(rsa, NULL, 0, JWK_RS256, "{\"alg\":\"RS256\",\"kid\":\"rsa\"}", c);
    assert_int_equal(check(&rules, t, NOW), JWT_EXPIRED);
    size_t n = strlen(t);
    t[n - 3] = t[n - 3] == 'A' ? 'B' : 'A'; /* another signature, still base64url */
    assert_int_equal(check(&rules, t, NOW), JWT_SIGNATURE);
    free(t);
    free(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc7515_a1_hs256_example),
        cmocka_unit_test(test_good_tokens_of_each_key),
        cmocka_unit_test(test_algorithm_is_pinned_by_the_key),
        cmocka_unit_test(test_headers_naming_keys_or_extensions_are_refused),
        cmocka_unit_test(test_tampered_and_malformed_tokens),
        cmocka_unit_test(test_exp_at_the_leeway_boundary),
        cmocka_unit_test(test_nbf_at_the_leeway_boundary),
        cmocka_unit_test(test_iat_at_the_leeway_boundary),
        cmocka_unit_test(test_iss_and_aud),
        cmocka_unit_test(test_claims_shapes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
