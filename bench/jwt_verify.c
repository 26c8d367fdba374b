/* jwt_verify.c - what verifying a JWT costs sluice the first time it sees one, per algorithm,
 * and what a remembered one costs (a lookup in a worker's cache under the token's text).
 * Built by bench/identity.sh (target jwt_verify_timing); prints one tab-separated line per
 * case: name, microseconds per verification (median of ROUNDS), verifications timed. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cred_cache.h"
#include "jose_helpers.h"
#include "jwt.h"

#define ROUNDS 5

static double
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median over ROUNDS of the time per verification of n verifications of token t. */
static double
time_verify(const struct jwt_rules *r, const char *t, int n)
{
    double per[ROUNDS];
    size_t len = strlen(t);
    for (int k = 0; k < ROUNDS; k++) {
        double t0 = now_us();
        for (int i = 0; i < n; i++) {
            struct jwt_token tok;
            char detail[128];
            if (jwt_verify(r, t, len, 1700000000.0, &tok, detail, sizeof(detail)) != JWT_OK) {
                fprintf(stderr, "jwt_verify: %s\n", detail);
                exit(1);
            }
            json_decref(tok.claims);
        }
        per[k] = (now_us() - t0) / n;
    }
    qsort(per, ROUNDS, sizeof(per[0]), cmp_double);
    return per[ROUNDS / 2];
}

int
main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    static const unsigned char secret[] = "a bench HS256 secret of at least thirty-two bytes";
    static const char *const claims =
        "{\"sub\":\"42\",\"iss\":\"bench\",\"aud\":\"bench\",\"plan\":\"pro\",\"org\":\"acme\","
        "\"iat\":1699999000,\"exp\":1700003600}";
    static const enum jwk_alg order[] = {JWK_HS256, JWK_EDDSA, JWK_RS256, JWK_RS384,
                                         JWK_RS512, JWK_PS256, JWK_ES256, JWK_ES384};
    printf("# case\tus per verification\tverifications\n");
    const char *rs256_token = NULL;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        enum jwk_alg a = order[i];
        struct jwk_set s = {0};
        char err[256], header[64];
        EVP_PKEY *k = NULL;
        if (a == JWK_HS256) {
            if (jwk_set_add_secret(&s, secret, sizeof(secret) - 1, "k", "bench", err,
                                   sizeof(err)) != 0)
                abort();
        } else {
            k = jh_keygen(a);
            char *jwk = jh_jwk(k, "k", jwk_alg_name(a));
            char *doc = xasprintf("{\"keys\":[%s]}", jwk);
            if (jwk_set_add_jwks(&s, doc, strlen(doc), "bench", NULL, err, sizeof(err)) != 0)
                abort();
            free(jwk);
            free(doc);
        }
        snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"kid\":\"k\",\"typ\":\"JWT\"}",
                 jwk_alg_name(a));
        char *t = jh_token(k, secret, sizeof(secret) - 1, a, header, claims);
        struct jwt_rules r = {.keys = &s, .issuer = "bench", .audience = "bench", .leeway_s = 30};
        int count = a == JWK_RS256 || a == JWK_RS384 || a == JWK_RS512 || a == JWK_PS256 ||
                            a == JWK_HS256 || a == JWK_EDDSA
                        ? n
                        : n / 2;
        printf("%s first sight\t%.1f\t%d\n", jwk_alg_name(a), time_verify(&r, t, count), count);
        fflush(stdout);
        if (a == JWK_RS256)
            rs256_token = xstrdup(t);
        free(t);
        EVP_PKEY_free(k);
        jwk_set_fini(&s);
    }
    /* A remembered token: a hit in a worker's cache, under the token's text. */
    struct cred_cache *cc = cred_cache_new(16384, 32u << 20);
    size_t len = strlen(rs256_token);
    json_t *c = json_object();
    cred_cache_put(cc, CRED_JWT, rs256_token, len, 1, c, UINT64_MAX, len);
    json_decref(c);
    double per[ROUNDS];
    int m = n * 50;
    for (int k = 0; k < ROUNDS; k++) {
        double t0 = now_us();
        for (int i = 0; i < m; i++) {
            json_t *got;
            if (!cred_cache_get(cc, CRED_JWT, rs256_token, len, 1, 1, &got))
                abort();
        }
        per[k] = (now_us() - t0) / m;
    }
    qsort(per, ROUNDS, sizeof(per[0]), cmp_double);
    printf("RS256 remembered\t%.2f\t%d\n", per[ROUNDS / 2], m); /* a cache hit */
    cred_cache_free(cc);
    free((void *)rs256_token);
    return 0;
}
