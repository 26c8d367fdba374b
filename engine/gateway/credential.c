/* credential.c - who a request's credential says its caller is: a bearer token verified
 * (RFC 6750, RFC 7519) or remembered, the caller's values read from its claims. */
#define _GNU_SOURCE
#include "credential.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cred_cache.h"
#include "util.h"

/* An error_description (RFC 6750 section 3): printable ASCII without '"' and '\'. */
static void
describe(char *out, size_t cap, const char *text)
{
    size_t o = 0;
    for (const char *p = text; *p && o + 1 < cap; p++) {
        unsigned char ch = (unsigned char)*p;
        out[o++] = ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\' ? '\'' : (char)ch;
    }
    out[o] = '\0';
}

/* Refuses the request's token: 401 with an invalid_token challenge carrying the description. */
static int
invalid_token(struct gw_req *rq, const char *reason, char *detail, size_t detail_len)
{
    char d[200];
    describe(d, sizeof(d), detail);
    char challenge[300];
    int n = snprintf(challenge, sizeof(challenge),
                     "Bearer error=\"invalid_token\", error_description=\"%s\"", d);
    rq->challenge = gw_vals_put(rq, challenge, (size_t)n);
    if (!rq->challenge)
        rq->challenge = "Bearer error=\"invalid_token\"";
    rq->id_refusal = reason;
    (void)detail_len;
    return 401;
}

/* The one Authorization field of the request into *v (NULL: none). Returns how many there are. */
static size_t
authorization(const struct http_request *h, const struct http_str **v)
{
    size_t n = 0;
    *v = NULL;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_str *f = &h->headers[i].name;
        if (f->len == 13 && strncasecmp(f->p, "authorization", 13) == 0 && n++ == 0)
            *v = &h->headers[i].value;
    }
    return n;
}

/* The bearer token of an Authorization value (RFC 6750 section 2.1: "Bearer" 1*SP b64token), or
 * NULL when it is another scheme. */
static const char *
bearer_token(const struct http_str *v, size_t *len)
{
    if (v->len < 7 || strncasecmp(v->p, "bearer", 6) != 0 || (v->p[6] != ' ' && v->p[6] != '\t'))
        return NULL;
    size_t i = 7;
    while (i < v->len && (v->p[i] == ' ' || v->p[i] == '\t'))
        i++;
    size_t end = v->len;
    while (end > i && (v->p[end - 1] == ' ' || v->p[end - 1] == '\t'))
        end--;
    *len = end - i;
    return v->p + i;
}

/* The token's claims: remembered by this worker, else verified (and remembered). */
static int
verify_token(struct gw_req *rq, const char *tok, size_t len, char *detail, size_t detail_len)
{
    const struct policy_jwt *j = rq->policy->identity.jwt;
    struct cred_cache *cache = rq->wk ? rq->wk->creds : NULL;
    rq->id_source = GW_ID_JWT;
    uint64_t now_ms = util_now_ms();
    if (len > JWT_MAX_BYTES) {
        snprintf(detail, detail_len, "the token is too long");
        return invalid_token(rq, jwt_status_name(JWT_TOO_LONG), detail, detail_len);
    }
    if (cache) {
        /* Under its own text: a hash that never runs over the token twice, and no two tokens
         * can share an entry. Only verified tokens are kept, so nobody can fill the table. */
        json_t *claims;
        if (cred_cache_get(cache, CRED_JWT, tok, len, rq->policy->generation, now_ms, &claims) &&
            claims) {
            rq->claims = json_incref(claims);
            rq->id_cached = true;
            rq->id_source = GW_ID_JWT;
            return 0;
        }
    }
    struct jwt_token t;
    enum jwt_status st =
        jwt_verify(&j->rules, tok, len, (double)now_ms / 1000.0, &t, detail, detail_len);
    if (st != JWT_OK)
        return invalid_token(rq, jwt_status_name(st), detail, detail_len);
    rq->claims = t.claims;
    rq->id_key = t.key;
    rq->id_exp = t.exp;
    if (cache) {
        /* Remembered until its exp plus the leeway (a far exp: as long as the cache keeps it). */
        double until = (t.exp + j->rules.leeway_s) * 1000.0;
        uint64_t expires = until >= 1.8e19 ? UINT64_MAX : until > 0 ? (uint64_t)until : 0;
        cred_cache_put(cache, CRED_JWT, tok, len, rq->policy->generation, t.claims, expires, len);
    }
    return 0;
}

/* The challenge naming where an API key goes: ApiKey header="X-API-Key" (or query="..."). */
static const char *
api_key_challenge(struct gw_req *rq, const char *error, const char *description)
{
    const struct policy_api_key *k = rq->policy->identity.api_key;
    char c[400], d[200];
    int n;
    if (error) {
        describe(d, sizeof(d), description);
        n = snprintf(c, sizeof(c), "ApiKey %s=\"%s\", error=\"%s\", error_description=\"%s\"",
                     k->header ? "header" : "query", k->header ? k->header : k->query, error, d);
    } else {
        n = snprintf(c, sizeof(c), "%sApiKey %s=\"%s\"", rq->policy->identity.jwt ? "Bearer, " : "",
                     k->header ? "header" : "query", k->header ? k->header : k->query);
    }
    const char *v = gw_vals_put(rq, c, (size_t)n);
    return v ? v : "ApiKey";
}

/* Refuses the request's API key: 401 with the reason for metrics. */
static int
invalid_key(struct gw_req *rq, const char *reason, const char *description, char *detail,
            size_t detail_len)
{
    snprintf(detail, detail_len, "%s", description);
    rq->challenge = api_key_challenge(rq, "invalid_key", description);
    rq->id_refusal = reason;
    return 401;
}

/* The API key's one field or query parameter into *v (NULL: none). Returns how many there
 * are, or -1 when the query is malformed. */
static long
api_key_value(struct gw_req *rq, const char **v, size_t *len)
{
    const struct policy_api_key *k = rq->policy->identity.api_key;
    *v = NULL;
    *len = 0;
    if (k->query) {
        if (!gw_query(rq))
            return -1;
        *v = rq->api_key_param;
        *len = rq->api_key_param_len;
        return (long)rq->api_key_params;
    }
    size_t n = 0, hl = strlen(k->header);
    const struct http_request *h = &rq->sr->http;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_str *f = &h->headers[i].name;
        if (f->len == hl && strncasecmp(f->p, k->header, hl) == 0 && n++ == 0) {
            *v = h->headers[i].value.p;
            *len = h->headers[i].value.len;
        }
    }
    return (long)n;
}

/* This worker's remembered API keys, forgotten when a change of their table was notified. */
static struct cred_cache *
api_key_cache(struct gw_req *rq)
{
    struct gw_worker *wk = rq->wk;
    if (!wk)
        return NULL;
    uint64_t epoch = wk->forget_epoch ? __atomic_load_n(wk->forget_epoch, __ATOMIC_ACQUIRE) : 0;
    if (epoch != wk->forgot_epoch) {
        cred_cache_clear(wk->creds, CRED_API_KEY);
        wk->forgot_epoch = epoch;
    }
    return wk->creds;
}

/* An API key: remembered by this worker, else left for gw_req_begin to look up. */
static int
read_api_key(struct gw_req *rq, const char *key, size_t len, char *detail, size_t detail_len)
{
    static const char hex[] = "0123456789abcdef";
    if (len > GW_API_KEY_MAX)
        return invalid_key(rq, "too_long", "the API key is too long", detail, detail_len);
    rq->id_source = GW_ID_API_KEY;
    cred_digest(key, len, rq->api_key_digest);
    for (size_t i = 0; i < CRED_DIGEST_LEN; i++) {
        rq->api_key_hex[2 * i] = hex[rq->api_key_digest[i] >> 4];
        rq->api_key_hex[2 * i + 1] = hex[rq->api_key_digest[i] & 15];
    }
    rq->api_key_hex[2 * CRED_DIGEST_LEN] = '\0';
    struct cred_cache *cache = api_key_cache(rq);
    json_t *claims;
    if (cache && cred_cache_get(cache, CRED_API_KEY, rq->api_key_digest, CRED_DIGEST_LEN,
                                rq->policy->generation, util_now_ms(), &claims)) {
        rq->id_cached = true;
        if (!claims)
            return invalid_key(rq, "unknown_key", "the API key is not known", detail, detail_len);
        rq->claims = json_incref(claims);
        return 0;
    }
    rq->api_key_pending = true;
    return 0;
}

int
gw_api_key_answer(struct gw_req *rq, const char *row, size_t len, char *detail, size_t detail_len)
{
    const struct policy_api_key *k = rq->policy->identity.api_key;
    rq->api_key_pending = false;
    json_t *claims = row ? json_loadb(row, len, 0, NULL) : NULL;
    if (claims && !json_is_object(claims)) {
        json_decref(claims);
        claims = NULL;
    }
    struct cred_cache *cache = api_key_cache(rq);
    if (cache)
        cred_cache_put(cache, CRED_API_KEY, rq->api_key_digest, CRED_DIGEST_LEN,
                       rq->policy->generation, claims, util_now_ms() + k->ttl_ms, row ? len : 0);
    if (!claims)
        return invalid_key(rq, "unknown_key", "the API key is not known", detail, detail_len);
    rq->claims = claims;
    return gw_caller_from_claims(rq, detail, detail_len);
}

int
gw_credential_read(struct gw_req *rq, char *detail, size_t detail_len)
{
    const struct policy_identity *id = &rq->policy->identity;
    if (!id->jwt && !id->api_key)
        return 0;
    if (rq->warm && rq->claims)
        return 0; /* warming: the policy's warm caller, given as claims (warm.c) */
    if (id->jwt) {
        /* The first credential present decides: a bearer token, then an API key. */
        const struct http_str *v;
        size_t n = authorization(&rq->sr->http, &v);
        if (n > 1) {
            snprintf(detail, detail_len, "the Authorization field is given more than once");
            rq->challenge = "Bearer error=\"invalid_request\", error_description=\"the "
                            "Authorization field is given more than once\"";
            rq->id_refusal = "malformed";
            return 400;
        }
        size_t len;
        const char *tok = v ? bearer_token(v, &len) : NULL;
        if (tok)
            return verify_token(rq, tok, len, detail, detail_len);
    }
    if (id->api_key) {
        const char *key;
        size_t len;
        long n = api_key_value(rq, &key, &len);
        if (n < 0) {
            snprintf(detail, detail_len, "%s", rq->refusal ? rq->refusal : "malformed query");
            return 400;
        }
        if (n > 1) {
            snprintf(detail, detail_len, "the API key is given more than once");
            rq->challenge = api_key_challenge(rq, "invalid_request", detail);
            rq->id_refusal = "malformed";
            return 400;
        }
        if (key && len)
            return read_api_key(rq, key, len, detail, detail_len);
    }
    if ((id->jwt && id->jwt->required) || (id->api_key && id->api_key->required)) {
        /* No credential: challenges without an error code (RFC 6750 section 3.1). */
        snprintf(detail, detail_len, "this endpoint needs %s",
                 id->jwt && id->api_key ? "a bearer token or an API key"
                 : id->jwt              ? "a bearer token"
                                        : "an API key");
        rq->challenge = id->api_key ? api_key_challenge(rq, NULL, NULL) : "Bearer";
        rq->id_refusal = "missing";
        return 401;
    }
    return 0;
}

/* The caller's value of claim `name` into *val (absent: NULL), canonical under chk. Returns 0,
 * or 401 when it is there and not a string or integer of its type. */
static int
caller_claim(struct gw_req *rq, const char *what, const char *name,
             const struct identity_check *chk, const char **val, size_t *len, char *detail,
             size_t detail_len)
{
    *val = NULL;
    *len = 0;
    if (!name || !rq->claims)
        return 0;
    json_t *c = json_object_get(rq->claims, name);
    if (!c || json_is_null(c))
        return 0;
    const char *v;
    size_t vlen;
    if ((!json_is_string(c) && !json_is_integer(c)) ||
        !gw_claim_value(rq, name, strlen(name), &v, &vlen) || vlen == 0 || vlen > MAX_USER_LEN) {
        snprintf(detail, detail_len, "the credential's %s claim %s is not a string or an integer",
                 what, name);
        return invalid_token(rq, "claims", detail, detail_len);
    }
    if (!chk || chk->type == IDENTITY_TEXT) {
        *val = v;
        *len = vlen;
        return 0;
    }
    char canon[MAX_USER_LEN + IDENTITY_CANONICAL_EXTRA + 1];
    size_t clen;
    if (identity_canonical(chk, v, vlen, canon, sizeof(canon), &clen) != 0) {
        snprintf(detail, detail_len, "the credential's %s claim %s is not %s", what, name,
                 identity_type_text(chk));
        return invalid_token(rq, "claims", detail, detail_len);
    }
    *val = gw_vals_put(rq, canon, clen);
    *len = clen;
    return *val ? 0 : 400;
}

int
gw_caller_from_claims(struct gw_req *rq, char *detail, size_t detail_len)
{
    const struct policy_identity *id = &rq->policy->identity;
    if (!rq->claims)
        return 0;
    int status = caller_claim(rq, "user", id->user_claim, &id->user_check, &rq->user, &rq->user_len,
                              detail, detail_len);
    if (!status)
        status = caller_claim(rq, "tenant", id->tenant_claim, &id->tenant_check, &rq->tenant,
                              &rq->tenant_len, detail, detail_len);
    if (status)
        return status;
    if (id->user_claim && !rq->user) {
        snprintf(detail, detail_len, "the credential has no %s claim", id->user_claim);
        return invalid_token(rq, "claims", detail, detail_len);
    }
    return 0;
}
