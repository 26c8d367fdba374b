/* test_httpcache.c - unit tests of the HTTP caching rules for answers of upstream apps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "http_parse.h"
#include "httpcache.h"
#include "util.h"

#define TTL 300000u /* the endpoint's TTL in the judge tests: 300 s */

/* The clock of the judge tests: the answer arrives at NOW_MS, which Date can say as NOW. */
#define NOW_MS 1700000000000ull
#define NOW "Tue, 14 Nov 2023 22:13:20 GMT"
#define NOW_MINUS_600S "Tue, 14 Nov 2023 22:03:20 GMT"
#define NOW_PLUS_60S "Tue, 14 Nov 2023 22:14:20 GMT"
#define NOW_MINUS_2H "Tue, 14 Nov 2023 20:13:20 GMT"
#define NOW_MINUS_1D "Mon, 13 Nov 2023 22:13:20 GMT"
#define NOW_MINUS_30D "Sun, 15 Oct 2023 22:13:20 GMT"

/* ---- helpers ------------------------------------------------------------------------------ */

/* Header fields of an answer, from "Name: value" strings (borrowed, so literals only). */
struct fields {
    struct http_header f[HTTP_MAX_HEADERS];
    size_t n;
};

static void
fields_from(struct fields *fs, const char *const *lines, size_t n)
{
    assert_true(n <= HTTP_MAX_HEADERS);
    fs->n = 0;
    for (size_t i = 0; i < n; i++) {
        const char *colon = strchr(lines[i], ':');
        assert_non_null(colon);
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        fs->f[fs->n].name = (struct http_str){lines[i], (size_t)(colon - lines[i])};
        fs->f[fs->n].value = (struct http_str){v, strlen(v)};
        fs->n++;
    }
}

/* A literal list of "Name: value" lines, and its count: two arguments. */
#define LINES(...)                                                                                 \
    (const char *const[]){__VA_ARGS__},                                                            \
        sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)

static const struct httpcache_policy ttl_policy = {.ttl_ms = TTL};
static const struct httpcache_policy origin_policy = {.ttl_origin = true};

/* Judges an answer sent at req_ms and received at resp_ms, with "Name: value" fields. */
static struct httpcache_verdict
judge_full(const struct httpcache_policy *p, int status, size_t body, uint64_t req_ms,
           uint64_t resp_ms, const char *const *lines, size_t n)
{
    struct fields fs;
    fields_from(&fs, lines, n);
    struct httpcache_answer a = {.status = status,
                                 .f = fs.f,
                                 .n = fs.n,
                                 .body_len = body,
                                 .request_ms = req_ms,
                                 .response_ms = resp_ms};
    struct httpcache_verdict v;
    memset(&v, 0xa5, sizeof(v));
    httpcache_judge(&a, p, &v);
    return v;
}

/* An answer of 10 bytes sent and received at NOW_MS, under policy p. */
#define JUDGE_P(p, status, ...) judge_full(p, status, 10, NOW_MS, NOW_MS, LINES(__VA_ARGS__))
/* ... under a TTL of 300 s. */
#define JUDGE(status, ...) JUDGE_P(&ttl_policy, status, __VA_ARGS__)
/* ... under ttl = "origin". */
#define ORIGIN(status, ...) JUDGE_P(&origin_policy, status, __VA_ARGS__)

static void
assert_storable(struct httpcache_verdict v, uint64_t lifetime_ms)
{
    if (!v.storable)
        fail_msg("not storable (%s), want storable with a lifetime of %llu ms", v.why ? v.why : "?",
                 (unsigned long long)lifetime_ms);
    assert_null(v.why);
    if (v.lifetime_ms != lifetime_ms)
        fail_msg("lifetime %llu ms, want %llu ms", (unsigned long long)v.lifetime_ms,
                 (unsigned long long)lifetime_ms);
}

static void
assert_not_storable(struct httpcache_verdict v, const char *why)
{
    if (v.storable)
        fail_msg("storable (lifetime %llu ms), want not storable: %s",
                 (unsigned long long)v.lifetime_ms, why);
    assert_non_null(v.why);
    assert_string_equal(v.why, why);
    /* Nothing else is said about an answer that is not kept. */
    assert_int_equal(v.lifetime_ms, 0);
    assert_int_equal(v.initial_age_ms, 0);
    assert_false(v.heuristic || v.no_cache || v.must_revalidate || v.has_validator || v.vary);
    assert_int_equal(v.swr_ms, -1);
    assert_int_equal(v.sie_ms, -1);
    assert_string_equal(v.vary_names, "");
}

/* Storable with these lifetime and initial age (both ms). */
static void
assert_aged(struct httpcache_verdict v, uint64_t lifetime_ms, uint64_t initial_age_ms)
{
    assert_storable(v, lifetime_ms);
    if (v.initial_age_ms != initial_age_ms)
        fail_msg("initial age %llu ms, want %llu ms", (unsigned long long)v.initial_age_ms,
                 (unsigned long long)initial_age_ms);
}

/* A request parsed from literal text; its strings point into buf. */
struct req {
    char buf[4096];
    struct http_request h;
};

/* Parses "GET / HTTP/1.1", Host and then the given header lines (each ending in CRLF). */
static void
parse_req(struct req *r, const char *lines)
{
    int n = snprintf(r->buf, sizeof(r->buf), "GET /p?q=1 HTTP/1.1\r\nHost: h\r\n%s\r\n", lines);
    assert_true(n > 0 && (size_t)n < sizeof(r->buf));
    int got = http_parse_request(r->buf, (size_t)n, &r->h);
    if (got != n)
        fail_msg("http_parse_request: %d on \"%s\"", got, r->buf);
}

/* The secondary key of the request with these fields, varying on names (with primary "P"). */
static long
vkey(const char *lines, const char *names, char *out, size_t cap)
{
    struct req r;
    parse_req(&r, lines);
    return httpcache_vary_key("P", 1, names, &r.h, out, cap);
}

static void
assert_vkey(const char *lines, const char *names, const char *want)
{
    char out[512];
    memset(out, 'z', sizeof(out));
    long n = vkey(lines, names, out, sizeof(out));
    assert_int_equal(n, (long)strlen(want));
    assert_memory_equal(out, want, strlen(want) + 1);
}

/* ---- httpcache_judge: what may be stored (RFC 9111 section 3) ----------------------------- */

/* RFC 9111 section 3: a final status the cache understands; the policy keeps no errors. */
static void
test_rfc9111_3_storable_statuses(void **state)
{
    (void)state;
    static const int ok[] = {200, 203, 204, 300, 301, 308};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct httpcache_verdict v = judge_full(&ttl_policy, ok[i], 10, NOW_MS, NOW_MS, NULL, 0);
        assert_aged(v, TTL, 0);
        assert_false(v.vary || v.heuristic || v.no_cache || v.must_revalidate || v.has_validator);
        assert_int_equal(v.swr_ms, -1);
        assert_int_equal(v.sie_ms, -1);
        assert_string_equal(v.vary_names, "");
    }
}

/* RFC 9111 section 3: other statuses are not stored here, whatever the answer says. */
static void
test_rfc9111_3_other_statuses_not_stored(void **state)
{
    (void)state;
    static const int no[] = {0,   100, 201, 202, 205, 206, 302, 303, 304, 307,
                             400, 401, 403, 404, 410, 429, 500, 502, 503, 504};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        assert_not_storable(judge_full(&ttl_policy, no[i], 10, NOW_MS, NOW_MS, NULL, 0), "status");
        assert_not_storable(judge_full(&origin_policy, no[i], 10, NOW_MS, NOW_MS, NULL, 0),
                            "status");
    }
    /* Even an explicit freshness lifetime does not make an error storable. */
    assert_not_storable(JUDGE(404, "Cache-Control: public, max-age=60"), "status");
    assert_not_storable(ORIGIN(404, "Cache-Control: max-age=60", "ETag: \"a\""), "status");
    assert_not_storable(JUDGE(500, "Cache-Control: s-maxage=60"), "status");
}

/* The gateway's own limit on what it keeps: HTTPCACHE_MAX_BODY, unless the policy says. */
static void
test_policy_body_size_limit(void **state)
{
    (void)state;
    assert_storable(judge_full(&ttl_policy, 200, 0, NOW_MS, NOW_MS, NULL, 0), TTL);
    assert_storable(judge_full(&ttl_policy, 200, HTTPCACHE_MAX_BODY, NOW_MS, NOW_MS, NULL, 0), TTL);
    assert_not_storable(
        judge_full(&ttl_policy, 200, HTTPCACHE_MAX_BODY + 1, NOW_MS, NOW_MS, NULL, 0),
        "body too large");
    assert_not_storable(judge_full(&ttl_policy, 200, (size_t)-1, NOW_MS, NOW_MS, NULL, 0),
                        "body too large");
    /* cache.max_size (or --cache-max-size) sets it, smaller or larger. */
    struct httpcache_policy small = ttl_policy, large = ttl_policy;
    small.max_body = 4096;
    large.max_body = 8u << 20;
    assert_storable(judge_full(&small, 200, 4096, NOW_MS, NOW_MS, NULL, 0), TTL);
    assert_not_storable(judge_full(&small, 200, 4097, NOW_MS, NOW_MS, NULL, 0), "body too large");
    assert_storable(judge_full(&large, 200, HTTPCACHE_MAX_BODY + 1, NOW_MS, NOW_MS, NULL, 0), TTL);
    assert_not_storable(judge_full(&large, 200, (8u << 20) + 1, NOW_MS, NOW_MS, NULL, 0),
                        "body too large");
}

/* A shared cache does not keep Set-Cookie (RFC 9111 section 3, RFC 6265 section 8): never. */
static void
test_policy_set_cookie_not_stored(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "Set-Cookie: a=1"), "set-cookie");
    assert_not_storable(JUDGE(200, "set-cookie: a=1"), "set-cookie");
    assert_not_storable(JUDGE(200, "SET-COOKIE: a=1"), "set-cookie");
    assert_not_storable(JUDGE(200, "sEt-CoOkIe: "), "set-cookie");
    /* Wherever it is, whatever else says the answer may be kept. */
    assert_not_storable(JUDGE(200, "Cache-Control: public, s-maxage=600", "X-A: 1",
                              "Set-Cookie: sid=2; HttpOnly", "Vary: Accept"),
                        "set-cookie");
    assert_not_storable(ORIGIN(200, "ETag: \"x\"", "Set-Cookie: a=1"), "set-cookie");
    /* Look-alike names are other fields. */
    assert_storable(JUDGE(200, "Set-Cookie2: a=1", "X-Set-Cookie: a=1", "Set-Cookies: a"), TTL);
}

/* RFC 9111 section 5.2.2.5: no-store, with or without an argument, in any field line. */
static void
test_rfc9111_5_2_2_5_no_store(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "Cache-Control: no-store"), "no-store");
    assert_not_storable(JUDGE(200, "Cache-Control: no-store=\"x\""), "no-store");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=60", "cache-control: no-store"),
                        "no-store");
    assert_not_storable(ORIGIN(200, "Cache-Control: no-store, max-age=60", "ETag: \"a\""),
                        "no-store");
    /* Among others, with spaces and empty elements. */
    assert_not_storable(JUDGE(200, "Cache-Control: public ,, max-age=60 ,\tno-store ,"),
                        "no-store");
    /* Named first among several forbidding directives, then private, then no-cache. */
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache=\"a\", private, no-store"), "no-store");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache=\"a\", private"), "private");
}

/* RFC 9111 section 5.2.2.7: a shared cache stores no private answer, qualified or not. */
static void
test_rfc9111_5_2_2_7_private_not_stored(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "Cache-Control: private"), "private");
    assert_not_storable(JUDGE(200, "Cache-Control: private=\"x\""), "private");
    assert_not_storable(JUDGE(200, "Cache-Control: private=x"), "private");
    assert_not_storable(JUDGE(200, "Cache-Control: private=\"X-A, X-B\", max-age=60"), "private");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=60", "Cache-Control: private"),
                        "private");
    assert_not_storable(ORIGIN(200, "Cache-Control: private, s-maxage=60", "ETag: \"a\""),
                        "private");
}

/*
 * RFC 9111 section 3.5: a shared cache may reuse an answer for a request with Authorization
 * only when the answer says must-revalidate, public or s-maxage (proxy-revalidate, max-age and
 * the rest do not allow it).
 */
static void
test_rfc9111_3_5_answers_reusable_with_authorization(void **state)
{
    (void)state;
    assert_true(ORIGIN(200, "Cache-Control: public, max-age=60").authorized);
    assert_true(ORIGIN(200, "Cache-Control: PUBLIC", "Cache-Control: max-age=60").authorized);
    assert_true(ORIGIN(200, "Cache-Control: s-maxage=60").authorized);
    assert_true(ORIGIN(200, "Cache-Control: max-age=60, must-revalidate").authorized);
    assert_false(ORIGIN(200, "Cache-Control: max-age=60").authorized);
    assert_false(ORIGIN(200, "Cache-Control: max-age=60, proxy-revalidate").authorized);
    assert_false(ORIGIN(200, "Cache-Control: max-age=60, s-maxage=x").authorized);
    assert_false(JUDGE(200, "ETag: \"a\"").authorized);
    /* From a targeted field (RFC 9213) as from Cache-Control. */
    static const char *const cdn[] = {"cdn-cache-control"};
    static const struct httpcache_policy targeted = {
        .ttl_origin = true, .targeted = cdn, .ntargeted = 1};
    assert_true(JUDGE_P(&targeted, 200, "CDN-Cache-Control: public, max-age=60").authorized);
    assert_false(JUDGE_P(&targeted, 200, "CDN-Cache-Control: max-age=60", "Cache-Control: public")
                     .authorized);
}

/*
 * RFC 9111 section 5.2.2.4: unqualified no-cache may be stored but is validated on
 * every reuse; without a validator nothing could reuse it.
 */
static void
test_rfc9111_5_2_2_4_no_cache_revalidated_on_every_use(void **state)
{
    (void)state;
    struct httpcache_verdict v = JUDGE(200, "Cache-Control: no-cache", "ETag: \"a\"");
    assert_storable(v, TTL);
    assert_true(v.no_cache);
    assert_true(v.must_revalidate);
    assert_true(v.has_validator);
    v = ORIGIN(200, "Cache-Control: no-cache, max-age=60", "Last-Modified: " NOW_MINUS_1D);
    assert_storable(v, 60000);
    assert_true(v.no_cache);
    assert_true(v.must_revalidate);
    /* The most restrictive wins (section 4.2.1): no-cache in another line still counts. */
    v = JUDGE(200, "Cache-Control: max-age=60", "ETag: W/\"a\"", "Cache-Control: NO-CACHE");
    assert_true(v.storable && v.no_cache && v.must_revalidate);

    assert_not_storable(JUDGE(200, "Cache-Control: no-cache"), "no-cache");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache", "Cache-Control: max-age=60"),
                        "no-cache");
    assert_not_storable(ORIGIN(200, "Cache-Control: no-cache, max-age=600"), "no-cache");
}

/*
 * RFC 9111 section 5.2.2.4: no-cache with field names. Stripping those fields is
 * allowed; this cache does not store the answer at all, which is always correct.
 */
static void
test_rfc9111_5_2_2_4_no_cache_field_names_not_stored(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache=\"x\""), "no-cache");
    assert_not_storable(
        JUDGE(200, "Cache-Control: no-cache=\"Set-Cookie, X-Id\", max-age=60", "ETag: \"a\""),
        "no-cache");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache=x-id"), "no-cache");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache=\"\""), "no-cache");
    assert_not_storable(ORIGIN(200, "Cache-Control: no-cache, no-cache=\"a\"", "ETag: \"a\""),
                        "no-cache");
}

/* RFC 9111 section 5.2: directive names are case-insensitive, and only exact names count. */
static void
test_rfc9111_5_2_directive_names_case_insensitive(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "CACHE-CONTROL: no-store"), "no-store");
    assert_not_storable(JUDGE(200, "cache-control: No-Store"), "no-store");
    assert_not_storable(JUDGE(200, "Cache-Control: NO-CACHE"), "no-cache");
    assert_not_storable(JUDGE(200, "Cache-Control: Private=\"x\""), "private");
    assert_storable(JUDGE(200, "Cache-Control: MAX-AGE=60"), 60000);
    assert_storable(JUDGE(200, "cAcHe-CoNtRoL: Max-Age=60, S-MaxAge=30"), 30000);
    assert_true(JUDGE(200, "Cache-Control: Must-Revalidate").must_revalidate);
    /* Prefixes and extensions are other directives, ignored. */
    assert_storable(JUDGE(200, "Cache-Control: no-stored, privately, no-cache-x, x-no-store"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: max-ages=0, xs-maxage=0"), TTL);
}

/* RFC 9111 section 5.2: "recipients ought to accept both forms" of an argument. */
static void
test_rfc9111_5_2_quoted_arguments(void **state)
{
    (void)state;
    assert_storable(JUDGE(200, "Cache-Control: max-age=\"60\""), 60000);
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=\"30\", max-age=\"60\""), 30000);
    assert_not_storable(JUDGE(200, "Cache-Control: s-maxage=\"0\""), "no freshness");
    assert_int_equal(JUDGE(200, "Cache-Control: stale-if-error=\"5\"").sie_ms, 5000);
    /* A comma or a directive inside quotes belongs to the quoted value. */
    assert_storable(JUDGE(200, "Cache-Control: ext=\"a, max-age=0, no-store\", max-age=60"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: ext=\"a\\\", no-store\", max-age=60"), 60000);
    /* The list goes on after a quoted value. */
    assert_not_storable(JUDGE(200, "Cache-Control: ext=\"x, y\", no-store"), "no-store");
}

/* RFC 9110 section 5.3: the lines of Cache-Control are one list. */
static void
test_rfc9110_5_3_several_cache_control_lines(void **state)
{
    (void)state;
    assert_storable(JUDGE(200, "Cache-Control: public", "Cache-Control: max-age=60"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=60", "X-A: b", "cache-control: s-maxage=20"),
                    20000);
    /* The first max-age is in the first line. */
    assert_storable(JUDGE(200, "Cache-Control: max-age=60", "Cache-Control: max-age=10"), 60000);
}

/* RFC 9111 section 5.2.2.2, 5.2.2.8: must-revalidate and, in a shared cache, proxy-revalidate. */
static void
test_rfc9111_5_2_2_2_must_and_proxy_revalidate(void **state)
{
    (void)state;
    struct httpcache_verdict v = JUDGE(200, "Cache-Control: max-age=60, must-revalidate");
    assert_storable(v, 60000);
    assert_true(v.must_revalidate);
    assert_false(v.no_cache);
    v = JUDGE(200, "Cache-Control: proxy-revalidate", "Cache-Control: max-age=60");
    assert_storable(v, 60000);
    assert_true(v.must_revalidate);
    assert_false(v.no_cache);
    v = JUDGE(200, "Cache-Control: max-age=60, public");
    assert_false(v.must_revalidate);
    /* A stale window of the answer does not lift it. */
    v = JUDGE(200, "Cache-Control: max-age=60, must-revalidate, stale-if-error=600");
    assert_true(v.must_revalidate);
    assert_int_equal(v.sie_ms, 600000);
}

/* RFC 9111 section 5.2.2.10: "s-maxage ... also implies the semantics of proxy-revalidate". */
static void
test_rfc9111_5_2_2_10_s_maxage_implies_proxy_revalidate(void **state)
{
    (void)state;
    struct httpcache_verdict v = JUDGE(200, "Cache-Control: s-maxage=60");
    assert_storable(v, 60000);
    assert_true(v.must_revalidate);
    assert_false(v.no_cache);
    v = JUDGE(200, "Cache-Control: max-age=60");
    assert_false(v.must_revalidate);
    /* Also when the policy bounds the lifetime, or overrides it. */
    v = JUDGE(200, "Cache-Control: s-maxage=6000");
    assert_storable(v, TTL);
    assert_true(v.must_revalidate);
    static const struct httpcache_policy over = {.ttl_ms = TTL, .override = true};
    v = JUDGE_P(&over, 200, "Cache-Control: s-maxage=6");
    assert_storable(v, TTL);
    assert_true(v.must_revalidate);
}

/* ---- httpcache_judge: Vary (RFC 9111 section 4.1) ----------------------------------------- */

/* RFC 9111 section 4.1: "Vary: *" always fails to match; such an answer is not stored. */
static void
test_rfc9111_4_1_vary_star(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "Vary: *"), "vary");
    assert_not_storable(JUDGE(200, "Vary: Accept, *"), "vary");
    assert_not_storable(JUDGE(200, "Vary: Accept", "vary: *"), "vary");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=60", "Vary:  * "), "vary");
}

/*
 * RFC 9110 section 12.5.5: Vary = #( "*" / field-name ). An element that is not a
 * field name cannot be matched: not stored, as with "*" (and it never reaches vary_names,
 * whose commas separate names).
 */
static void
test_rfc9110_12_5_5_vary_element_not_a_field_name(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "Vary: Accept-Eary: Accept-Encoding"), "vary");
    assert_not_storable(JUDGE(200, "Vary: Accept Encoding"), "vary");
    assert_not_storable(JUDGE(200, "Vary: Accept,\"a,b\""), "vary");
    assert_not_storable(JUDGE(200, "Vary: \"accept\""), "vary");
    assert_not_storable(JUDGE(200, "Vary: accept;q=1"), "vary");
    assert_not_storable(JUDGE(200, "Vary: x-a", "Vary: caf\xc3\xa9"), "vary");
    assert_not_storable(JUDGE(200, "Vary: a/b"), "vary");
    /* Every tchar is fine. */
    struct httpcache_verdict v = JUDGE(200, "Vary: !#$%&'*+-.^_`|~09AZaz");
    assert_storable(v, TTL);
    assert_string_equal(v.vary_names, "!#$%&'*+-.^_`|~09azaz");
}

/* RFC 9111 section 4.1: the fields a secondary key is made of. */
static void
test_rfc9111_4_1_vary_list(void **state)
{
    (void)state;
    struct httpcache_verdict v = JUDGE(200, "Vary: Accept-Encoding");
    assert_storable(v, TTL);
    assert_true(v.vary);
    assert_string_equal(v.vary_names, "accept-encoding");

    /* Lowercased, deduplicated ignoring case, empty elements skipped, across fields. */
    v = JUDGE(200, "Vary: Accept-Encoding, ACCEPT-language ,,", "X-A: 1",
              "vary: accept-encoding,X-Foo", "VARY: x-foo, Accept-Language,\tAccept");
    assert_storable(v, TTL);
    assert_true(v.vary);
    assert_string_equal(v.vary_names, "accept-encoding,accept-language,x-foo,accept");

    /* With a lifetime: both apply. */
    v = JUDGE(200, "Vary: Accept", "Cache-Control: max-age=5");
    assert_storable(v, 5000);
    assert_true(v.vary);
    assert_string_equal(v.vary_names, "accept");

    /* An empty Vary varies on nothing. */
    v = JUDGE(200, "Vary: ", "Vary: , ,");
    assert_storable(v, TTL);
    assert_false(v.vary);
    assert_string_equal(v.vary_names, "");
}

/* A Vary list too long to key is not stored (the key has a bounded size). */
static void
test_rfc9111_4_1_vary_too_long(void **state)
{
    (void)state;
    /* Two names of 127 bytes fill vary_names exactly (255 bytes and the NUL). */
    char a[128], b[128], f1[160], f2[300];
    memset(a, 'a', 127);
    a[127] = '\0';
    memset(b, 'b', 127);
    b[127] = '\0';
    snprintf(f1, sizeof(f1), "Vary: %s", a);
    snprintf(f2, sizeof(f2), "Vary: %s, %s", a, b);
    const char *lines[2] = {f2, "Vary: A"};
    struct httpcache_verdict v = judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, lines, 1);
    assert_storable(v, TTL);
    assert_int_equal(strlen(v.vary_names), 255);
    assert_memory_equal(v.vary_names, a, 127);
    assert_int_equal(v.vary_names[127], ',');
    /* A name already listed adds nothing... */
    const char *again[2] = {f2, f1};
    assert_storable(judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, again, 2), TTL);
    /* ...one more does not fit. */
    assert_not_storable(judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, lines, 2), "vary");

    /* Many short names. */
    char many[1024] = "Vary: ";
    for (int i = 0; i < 60; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "x-field-%02d, ", i);
    const char *m[1] = {many};
    assert_not_storable(judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, m, 1), "vary");

    /* One long name fits as long as it leaves room for the NUL. */
    char longname[256], lf[280];
    memset(longname, 'n', sizeof(longname));
    longname[254] = '\0';
    snprintf(lf, sizeof(lf), "Vary: %s", longname);
    const char *l[1] = {lf};
    v = judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, l, 1);
    assert_storable(v, TTL);
    assert_string_equal(v.vary_names, longname);
    longname[254] = 'n';
    longname[255] = '\0';
    snprintf(lf, sizeof(lf), "Vary: %s", longname);
    assert_not_storable(judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, l, 1), "vary");
}

/* ---- httpcache_judge: freshness lifetime (RFC 9111 section 4.2.1) ------------------------- */

/* RFC 9111 section 4.2.1: s-maxage first in a shared cache, then max-age, then Expires. */
static void
test_rfc9111_4_2_1_precedence(void **state)
{
    (void)state;
    assert_storable(ORIGIN(200, "Cache-Control: max-age=60"), 60000);
    assert_storable(ORIGIN(200, "Cache-Control: public, max-age=1"), 1000);
    assert_storable(ORIGIN(200, "Cache-Control: s-maxage=30"), 30000);
    /* s-maxage wins over max-age, smaller or larger, in either order. */
    assert_storable(ORIGIN(200, "Cache-Control: s-maxage=30, max-age=60"), 30000);
    assert_storable(ORIGIN(200, "Cache-Control: max-age=60, s-maxage=30"), 30000);
    assert_storable(ORIGIN(200, "Cache-Control: max-age=10, s-maxage=120"), 120000);
    /* max-age wins over Expires, shorter or longer. */
    assert_storable(ORIGIN(200, "Date: " NOW, "Expires: " NOW_PLUS_60S, "Cache-Control: max-age=5"),
                    5000);
    assert_storable(ORIGIN(200, "Expires: " NOW_MINUS_600S, "Cache-Control: max-age=500"), 500000);
    /* Even an invalid Expires is not looked at then. */
    assert_storable(ORIGIN(200, "Expires: 0", "Cache-Control: s-maxage=5"), 5000);
    /* No lifetime at all under ttl = "origin": nothing could reuse it. */
    assert_not_storable(ORIGIN(200, "Cache-Control: public"), "no freshness");
    assert_not_storable(ORIGIN(200, "Content-Type: text/plain"), "no freshness");
}

/* RFC 9111 section 4.2.1: Expires minus Date. */
static void
test_rfc9111_4_2_1_expires_minus_date(void **state)
{
    (void)state;
    assert_aged(ORIGIN(200, "Date: " NOW, "Expires: " NOW_PLUS_60S), 60000, 0);
    /* Measured from Date, not from the arrival: a Date 600 s old is 600 s of age. */
    assert_aged(ORIGIN(200, "Date: " NOW_MINUS_600S, "Expires: " NOW_PLUS_60S), 660000, 600000);
    /* The obsolete date forms are dates too. */
    assert_storable(
        ORIGIN(200, "Date: Tuesday, 14-Nov-23 22:13:20 GMT", "Expires: Tue Nov 14 22:14:20 2023"),
        60000);
    /* Several Expires lines: the first (section 4.2.1). */
    assert_storable(ORIGIN(200, "Date: " NOW, "Expires: " NOW_PLUS_60S, "Expires: 0"), 60000);
    assert_not_storable(ORIGIN(200, "Date: " NOW, "Expires: 0", "Expires: " NOW_PLUS_60S),
                        "no freshness");
}

/* RFC 9111 section 4.2.1: without Date, the time the answer was received stands for it. */
static void
test_rfc9111_4_2_1_expires_without_date_uses_response_time(void **state)
{
    (void)state;
    assert_aged(ORIGIN(200, "Expires: " NOW_PLUS_60S), 60000, 0);
    /* Received 500 ms after NOW: 59.5 s to go. */
    struct httpcache_verdict v =
        judge_full(&origin_policy, 200, 10, NOW_MS, NOW_MS + 500, LINES("Expires: " NOW_PLUS_60S));
    assert_storable(v, 59500);
    /* An invalid Date is as good as none (RFC 9110 section 6.6.1). */
    assert_aged(ORIGIN(200, "Date: yesterday", "Expires: " NOW_PLUS_60S), 60000, 0);
    assert_aged(ORIGIN(200, "Date: Tue, 14 Nov 2023 22:13:20 UTC", "Expires: " NOW_PLUS_60S), 60000,
                0);
}

/* RFC 9111 section 5.3: an invalid Expires ("0" among them) is a time in the past. */
static void
test_rfc9111_5_3_expires_invalid_is_stale(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Expires: 0",
        "Expires: -1",
        "Expires: ",
        "Expires: never",
        "Expires: Tue, 14 Nov 2099 22:13:20",
        "Expires: Tue, 14 Nov 2099 22:13:20 GMT ",
        "Expires: Tue, 31 Nov 2099 22:13:20 GMT",
        "Expires: 4102444800",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *lines[2] = {bad[i], "ETag: \"v\""};
        /* With a validator: stored stale, fresh for 0 ms. */
        struct httpcache_verdict v = judge_full(&origin_policy, 200, 10, NOW_MS, NOW_MS, lines, 2);
        if (!v.storable || v.lifetime_ms != 0 || v.heuristic)
            fail_msg("%s: storable %d, lifetime %llu", bad[i], v.storable,
                     (unsigned long long)v.lifetime_ms);
        /* Without: not stored. */
        assert_not_storable(judge_full(&origin_policy, 200, 10, NOW_MS, NOW_MS, lines, 1),
                            "no freshness");
        /* Under a TTL it is the smaller of the two: 0. */
        v = judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, lines, 2);
        assert_storable(v, 0);
        /* Never a reason for the heuristic, even with Last-Modified. */
        const char *lm[2] = {bad[i], "Last-Modified: " NOW_MINUS_1D};
        v = judge_full(&origin_policy, 200, 10, NOW_MS, NOW_MS, lm, 2);
        assert_storable(v, 0);
        assert_false(v.heuristic);
    }
}

/* RFC 9111 section 4.2.1: an Expires at or before Date is already stale. */
static void
test_rfc9111_4_2_1_expires_in_past_is_stale(void **state)
{
    (void)state;
    assert_not_storable(ORIGIN(200, "Date: " NOW, "Expires: " NOW), "no freshness");
    assert_not_storable(ORIGIN(200, "Date: " NOW, "Expires: " NOW_MINUS_600S), "no freshness");
    assert_not_storable(ORIGIN(200, "Expires: Thu, 01 Jan 1970 00:00:00 GMT"), "no freshness");
    assert_aged(ORIGIN(200, "Date: " NOW, "Expires: " NOW_MINUS_600S, "ETag: \"a\""), 0, 0);
}

/* RFC 9111 section 4.2.1: "either the first occurrence should be used or ... stale": first. */
static void
test_rfc9111_4_2_1_first_of_duplicate_directives(void **state)
{
    (void)state;
    assert_storable(ORIGIN(200, "Cache-Control: max-age=60, max-age=10"), 60000);
    assert_storable(ORIGIN(200, "Cache-Control: max-age=10, max-age=60"), 10000);
    assert_storable(ORIGIN(200, "Cache-Control: s-maxage=30, s-maxage=5, max-age=1"), 30000);
    /* The first is invalid: stale, a later valid one does not count. */
    assert_not_storable(ORIGIN(200, "Cache-Control: max-age=abc, max-age=60"), "no freshness");
    assert_storable(ORIGIN(200, "Cache-Control: max-age=60, max-age=abc"), 60000);
    assert_storable(ORIGIN(200, "Cache-Control: max-age=60", "Cache-Control: max-age=x"), 60000);
}

/* RFC 9111 section 4.2.1: "encouraged to consider responses that have invalid freshness ... stale".
 */
static void
test_rfc9111_4_2_1_malformed_max_age_is_stale(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Cache-Control: max-age=abc",  "Cache-Control: max-age=",
        "Cache-Control: max-age",      "Cache-Control: max-age=-5",
        "Cache-Control: max-age=1.5",  "Cache-Control: max-age=+5",
        "Cache-Control: max-age=5s",   "Cache-Control: max-age=0x10",
        "Cache-Control: max-age=\"\"", "Cache-Control: max-age=\"5",
        "Cache-Control: s-maxage=abc", "Cache-Control: s-maxage",
        "Cache-Control: s-maxage=-1",  "Cache-Control: max-age=\"-1\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *lines[3] = {bad[i], "ETag: \"v\"", "Expires: " NOW_PLUS_60S};
        struct httpcache_verdict v = judge_full(&origin_policy, 200, 10, NOW_MS, NOW_MS, lines, 3);
        if (!v.storable || v.lifetime_ms != 0)
            fail_msg("%s: storable %d (%s), lifetime %llu", bad[i], v.storable, v.why ? v.why : "",
                     (unsigned long long)v.lifetime_ms);
        /* Under a TTL: stale as well, the TTL does not fill it in. */
        v = judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, lines, 2);
        assert_storable(v, 0);
        assert_not_storable(judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, lines, 1),
                            "no freshness");
    }
    /* An invalid s-maxage hides a valid max-age: it comes first. */
    assert_not_storable(ORIGIN(200, "Cache-Control: s-maxage=abc, max-age=60"), "no freshness");
    /* A 0 is valid and stale as well. */
    assert_not_storable(ORIGIN(200, "Cache-Control: max-age=0"), "no freshness");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=000"), "no freshness");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=60, s-maxage=0"), "no freshness");
}

/* RFC 9111 section 1.2.2: a delta-seconds too large is 2147483648, not an error. */
static void
test_rfc9111_1_2_2_delta_seconds_overflow(void **state)
{
    (void)state;
    const uint64_t max = 2147483648ull * 1000;
    assert_storable(ORIGIN(200, "Cache-Control: max-age=99999999999999999999999"), max);
    assert_storable(ORIGIN(200, "Cache-Control: max-age=2147483648"), max);
    assert_storable(ORIGIN(200, "Cache-Control: max-age=2147483647"), max - 1000);
    assert_storable(ORIGIN(200, "Cache-Control: s-maxage=18446744073709551617, max-age=10"), max);
    assert_int_equal(ORIGIN(200, "Cache-Control: max-age=1, stale-if-error=99999999999999").sie_ms,
                     (int64_t)max);
    /* Under a TTL: the TTL is smaller. */
    assert_storable(JUDGE(200, "Cache-Control: max-age=99999999999999999999999"), TTL);
}

/* ---- httpcache_judge: heuristic freshness (RFC 9111 section 4.2.2) ------------------------ */

/* RFC 9111 section 4.2.2: 10% of the time since Last-Modified, at most a day. */
static void
test_rfc9111_4_2_2_heuristic_fraction_of_last_modified(void **state)
{
    (void)state;
    static const int statuses[] = {200, 203, 204, 300, 301, 308};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        struct httpcache_verdict v =
            ORIGIN(statuses[i], "Date: " NOW, "Last-Modified: " NOW_MINUS_2H);
        assert_aged(v, 720000, 0);
        assert_true(v.heuristic);
        assert_true(v.has_validator);
    }
    struct httpcache_verdict v = ORIGIN(200, "Date: " NOW, "Last-Modified: " NOW_MINUS_1D);
    assert_storable(v, 8640000);
    assert_true(v.heuristic);
    /* 30 days ago would give 3 days: capped at 1. */
    v = ORIGIN(200, "Date: " NOW, "Last-Modified: " NOW_MINUS_30D);
    assert_storable(v, 86400000);
    assert_true(v.heuristic);
    /* Without Date, from the arrival. */
    v = judge_full(&origin_policy, 200, 10, NOW_MS, NOW_MS + 1000,
                   LINES("Last-Modified: " NOW_MINUS_2H));
    assert_storable(v, 720100);
    /* Modified at Date: 0, and with Last-Modified as validator, stored stale. */
    v = ORIGIN(200, "Date: " NOW, "Last-Modified: " NOW);
    assert_storable(v, 0);
    assert_true(v.heuristic);
    assert_true(v.has_validator);
}

/* RFC 9111 section 4.2.2: "MUST NOT use heuristics ... when an explicit expiration time is
 * present". */
static void
test_rfc9111_4_2_2_no_heuristic_with_explicit_freshness(void **state)
{
    (void)state;
    struct httpcache_verdict v =
        ORIGIN(200, "Date: " NOW, "Last-Modified: " NOW_MINUS_1D, "Cache-Control: max-age=5");
    assert_storable(v, 5000);
    assert_false(v.heuristic);
    v = ORIGIN(200, "Date: " NOW, "Last-Modified: " NOW_MINUS_1D, "Expires: " NOW_PLUS_60S);
    assert_storable(v, 60000);
    assert_false(v.heuristic);
    v = ORIGIN(200, "Last-Modified: " NOW_MINUS_1D, "Cache-Control: s-maxage=0");
    assert_storable(v, 0);
    assert_false(v.heuristic);
    v = ORIGIN(200, "Last-Modified: " NOW_MINUS_1D, "Cache-Control: max-age=x");
    assert_storable(v, 0);
    assert_false(v.heuristic);
}

/* RFC 9111 section 4.2.2: heuristics are the cache's choice; only under ttl = "origin". */
static void
test_rfc9111_4_2_2_heuristic_only_with_ttl_origin(void **state)
{
    (void)state;
    struct httpcache_verdict v = JUDGE(200, "Date: " NOW, "Last-Modified: " NOW_MINUS_1D);
    assert_storable(v, TTL);
    assert_false(v.heuristic);
    static const struct httpcache_policy over = {.ttl_ms = 1000, .override = true};
    v = JUDGE_P(&over, 200, "Date: " NOW, "Last-Modified: " NOW_MINUS_1D);
    assert_storable(v, 1000);
    assert_false(v.heuristic);
}

/* RFC 9111 section 4.2.2: Last-Modified must be a date no later than Date. */
static void
test_rfc9111_4_2_2_heuristic_needs_valid_past_last_modified(void **state)
{
    (void)state;
    assert_not_storable(ORIGIN(200, "Date: " NOW, "Last-Modified: yesterday"), "no freshness");
    assert_not_storable(ORIGIN(200, "Date: " NOW, "Last-Modified: 0"), "no freshness");
    /* In the future of Date: no heuristic, but still a validator. */
    struct httpcache_verdict v = ORIGIN(200, "Date: " NOW_MINUS_600S, "Last-Modified: " NOW);
    assert_aged(v, 0, 600000);
    assert_false(v.heuristic);
    assert_true(v.has_validator);
}

/* ---- httpcache_judge: the policy's bounds ------------------------------------------------- */

/* A TTL fills in where the answer gives no lifetime and caps one that is longer. */
static void
test_policy_ttl_caps_or_fills_in(void **state)
{
    (void)state;
    assert_storable(JUDGE(200, "Cache-Control: max-age=60"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=299"), 299000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=300"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: max-age=600"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=600, max-age=10"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: max-age=31536000"), TTL);
    assert_storable(JUDGE(200, "Date: " NOW, "Expires: " NOW_PLUS_60S), 60000);
    /* No lifetime: the TTL. */
    assert_storable(JUDGE(200, "Cache-Control: public"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: "), TTL);
    assert_storable(JUDGE(200, "Content-Type: text/plain"), TTL);
    /* A TTL of 0 stores nothing but what has a validator, stale. */
    static const struct httpcache_policy zero = {.ttl_ms = 0};
    assert_not_storable(judge_full(&zero, 200, 10, NOW_MS, NOW_MS, NULL, 0), "no freshness");
    assert_storable(JUDGE_P(&zero, 200, "ETag: \"a\""), 0);
}

/* override = true: the TTL whatever the answer says about freshness. */
static void
test_policy_override(void **state)
{
    (void)state;
    static const struct httpcache_policy over = {.ttl_ms = TTL, .override = true};
    assert_storable(JUDGE_P(&over, 200, "Cache-Control: max-age=5"), TTL);
    assert_storable(JUDGE_P(&over, 200, "Cache-Control: max-age=0"), TTL);
    assert_storable(JUDGE_P(&over, 200, "Cache-Control: max-age=abc"), TTL);
    assert_storable(JUDGE_P(&over, 200, "Cache-Control: max-age=99999"), TTL);
    assert_storable(JUDGE_P(&over, 200, "Expires: 0"), TTL);
    assert_storable(JUDGE_P(&over, 200, "Date: " NOW, "Expires: " NOW_PLUS_60S), TTL);
    /* What forbids storing still does. */
    assert_not_storable(JUDGE_P(&over, 200, "Cache-Control: no-store"), "no-store");
    assert_not_storable(JUDGE_P(&over, 200, "Cache-Control: private"), "private");
    assert_not_storable(JUDGE_P(&over, 200, "Set-Cookie: a=b"), "set-cookie");
    assert_not_storable(JUDGE_P(&over, 200, "Vary: *"), "vary");
    /* And the age and the other directives are still told. */
    struct httpcache_verdict v = JUDGE_P(&over, 200, "Age: 10", "ETag: \"a\"",
                                         "Cache-Control: no-cache, stale-while-revalidate=5");
    assert_aged(v, TTL, 10000);
    assert_true(v.no_cache && v.must_revalidate && v.has_validator);
    assert_int_equal(v.swr_ms, 5000);
    /* With ttl_origin, override is not looked at. */
    static const struct httpcache_policy both = {
        .ttl_ms = TTL, .ttl_origin = true, .override = true};
    assert_storable(JUDGE_P(&both, 200, "Cache-Control: max-age=5"), 5000);
}

/* ttl = "origin": with a validator, an answer with no freshness is stored stale. */
static void
test_policy_ttl_origin_stale_with_validator(void **state)
{
    (void)state;
    struct httpcache_verdict v = ORIGIN(200, "ETag: \"x\"");
    assert_aged(v, 0, 0);
    assert_true(v.has_validator);
    assert_false(v.heuristic);
    v = ORIGIN(200, "Cache-Control: max-age=0", "ETag: W/\"x\"");
    assert_aged(v, 0, 0);
    assert_true(v.has_validator);
    /* Arrived older than its lifetime: stored stale too. */
    v = ORIGIN(200, "Cache-Control: max-age=10", "Age: 20", "ETag: \"x\"");
    assert_aged(v, 10000, 20000);
    assert_not_storable(ORIGIN(200, "Cache-Control: max-age=10", "Age: 20"), "no freshness");
    assert_not_storable(ORIGIN(200, "Cache-Control: max-age=10", "Age: 10"), "no freshness");
    assert_aged(ORIGIN(200, "Cache-Control: max-age=10", "Age: 9"), 10000, 9000);
}

/* ---- httpcache_judge: age (RFC 9111 section 4.2.3) ---------------------------------------- */

/* RFC 9111 section 4.2.3: apparent_age = max(0, response_time - date_value). */
static void
test_rfc9111_4_2_3_apparent_age(void **state)
{
    (void)state;
    assert_aged(ORIGIN(200, "Date: " NOW_MINUS_600S, "Cache-Control: max-age=3600"), 3600000,
                600000);
    /* A Date after the arrival (a clock ahead): 0. */
    assert_aged(ORIGIN(200, "Date: " NOW_PLUS_60S, "Cache-Control: max-age=60"), 60000, 0);
    /* The arrival's milliseconds count. */
    struct httpcache_verdict v = judge_full(&origin_policy, 200, 10, NOW_MS, NOW_MS + 750,
                                            LINES("Date: " NOW, "Cache-Control: max-age=60"));
    assert_aged(v, 60000, 750);
}

/* RFC 9111 section 4.2.3: corrected_age_value = age_value + response_delay. */
static void
test_rfc9111_4_2_3_age_plus_response_delay(void **state)
{
    (void)state;
    assert_aged(ORIGIN(200, "Age: 30", "Cache-Control: max-age=60"), 60000, 30000);
    /* Sent 2 s before it arrived: 2 s more. */
    struct httpcache_verdict v = judge_full(&origin_policy, 200, 10, NOW_MS - 2000, NOW_MS,
                                            LINES("Age: 30", "Cache-Control: max-age=60"));
    assert_aged(v, 60000, 32000);
    /* Without Age, the delay alone. */
    v = judge_full(&origin_policy, 200, 10, NOW_MS - 2000, NOW_MS,
                   LINES("Cache-Control: max-age=60"));
    assert_aged(v, 60000, 2000);
    /* A request time after the response time does not make a negative delay. */
    v = judge_full(&origin_policy, 200, 10, NOW_MS + 5000, NOW_MS,
                   LINES("Cache-Control: max-age=60"));
    assert_aged(v, 60000, 0);
}

/* RFC 9111 section 4.2.3: corrected_initial_age = max(apparent_age, corrected_age_value). */
static void
test_rfc9111_4_2_3_initial_age_is_the_larger(void **state)
{
    (void)state;
    /* Apparent 600 s, Age 30 s: 600 s. */
    assert_aged(ORIGIN(200, "Date: " NOW_MINUS_600S, "Age: 30", "Cache-Control: max-age=3600"),
                3600000, 600000);
    /* Apparent 600 s, Age 900 s: 900 s. */
    assert_aged(ORIGIN(200, "Date: " NOW_MINUS_600S, "Age: 900", "Cache-Control: max-age=3600"),
                3600000, 900000);
    /* Apparent 600 s, Age 599 s and 2 s of delay: 601 s. */
    struct httpcache_verdict v =
        judge_full(&origin_policy, 200, 10, NOW_MS - 2000, NOW_MS,
                   LINES("Date: " NOW_MINUS_600S, "Age: 599", "Cache-Control: max-age=3600"));
    assert_aged(v, 3600000, 601000);
    /* Under a TTL, told as well. */
    assert_aged(JUDGE(200, "Age: 100"), TTL, 100000);
}

/* RFC 9111 section 5.1: an invalid Age is ignored; of several members, the first. */
static void
test_rfc9111_5_1_age_field(void **state)
{
    (void)state;
    static const char *const ignored[] = {"Age: -5", "Age: abc", "Age: 1.5", "Age: \"10\"",
                                          "Age: ",   "Age: +3",  "Age: 5s",  "Age: x, 10"};
    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
        const char *lines[2] = {ignored[i], "Cache-Control: max-age=60"};
        struct httpcache_verdict v = judge_full(&origin_policy, 200, 10, NOW_MS, NOW_MS, lines, 2);
        if (!v.storable || v.initial_age_ms != 0)
            fail_msg("%s: storable %d, initial age %llu", ignored[i], v.storable,
                     (unsigned long long)v.initial_age_ms);
    }
    assert_aged(ORIGIN(200, "Age: 5, 10", "Cache-Control: max-age=60"), 60000, 5000);
    assert_aged(ORIGIN(200, "Age: 5", "Age: 10", "Cache-Control: max-age=60"), 60000, 5000);
    assert_aged(ORIGIN(200, "Age: 007", "Cache-Control: max-age=60"), 60000, 7000);
    /* Past 2^31, 2^31 (section 1.2.2): older than any lifetime. */
    assert_aged(ORIGIN(200, "Age: 99999999999999999999", "ETag: \"a\"",
                       "Cache-Control: max-age=99999999999999"),
                2147483648000ull, 2147483648000ull);
}

/* ---- httpcache_judge: RFC 5861 ------------------------------------------------------------ */

/* RFC 5861 section 3: stale-while-revalidate. */
static void
test_rfc5861_3_stale_while_revalidate(void **state)
{
    (void)state;
    struct httpcache_verdict v = JUDGE(200, "Cache-Control: max-age=60, stale-while-revalidate=30");
    assert_storable(v, 60000);
    assert_int_equal(v.swr_ms, 30000);
    assert_int_equal(v.sie_ms, -1);
    assert_int_equal(JUDGE(200, "Cache-Control: stale-while-revalidate=0").swr_ms, 0);
    assert_int_equal(JUDGE(200, "Cache-Control: Stale-While-Revalidate=\"7\"").swr_ms, 7000);
    assert_int_equal(JUDGE(200, "Cache-Control: max-age=1").swr_ms, -1);
    /* First occurrence. */
    assert_int_equal(JUDGE(200, "Cache-Control: stale-while-revalidate=1",
                           "Cache-Control: stale-while-revalidate=2")
                         .swr_ms,
                     1000);
}

/* RFC 5861 section 4: stale-if-error. */
static void
test_rfc5861_4_stale_if_error(void **state)
{
    (void)state;
    struct httpcache_verdict v = JUDGE(200, "Cache-Control: max-age=60, stale-if-error=86400");
    assert_storable(v, 60000);
    assert_int_equal(v.sie_ms, 86400000);
    assert_int_equal(v.swr_ms, -1);
    v = JUDGE(200, "Cache-Control: stale-if-error=5, stale-while-revalidate=6");
    assert_int_equal(v.sie_ms, 5000);
    assert_int_equal(v.swr_ms, 6000);
}

/* RFC 5861 section 3, 4: an invalid argument is as if the directive were absent. */
static void
test_rfc5861_invalid_is_absent(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Cache-Control: stale-while-revalidate",     "Cache-Control: stale-while-revalidate=",
        "Cache-Control: stale-while-revalidate=-1",  "Cache-Control: stale-while-revalidate=x",
        "Cache-Control: stale-while-revalidate=1.5", "Cache-Control: stale-if-error",
        "Cache-Control: stale-if-error=-5",          "Cache-Control: stale-if-error=\"\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct httpcache_verdict v = judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, &bad[i], 1);
        assert_storable(v, TTL); /* not a freshness directive: the lifetime stays */
        assert_int_equal(v.swr_ms, -1);
        assert_int_equal(v.sie_ms, -1);
    }
    /* An invalid first occurrence is the one that counts. */
    assert_int_equal(JUDGE(200, "Cache-Control: stale-if-error=x, stale-if-error=5").sie_ms, -1);
}

/* ---- httpcache_judge: targeted fields (RFC 9213) ------------------------------------------ */

static const char *const cdn[] = {"cdn-cache-control"};
static const struct httpcache_policy cdn_origin = {
    .ttl_origin = true, .targeted = cdn, .ntargeted = 1};
static const struct httpcache_policy cdn_ttl = {.ttl_ms = TTL, .targeted = cdn, .ntargeted = 1};
#define CDN(status, ...) JUDGE_P(&cdn_origin, status, __VA_ARGS__)

/* RFC 9213 section 2.2: the targeted field is used instead of Cache-Control, for everything. */
static void
test_rfc9213_2_2_targeted_field_replaces_cache_control(void **state)
{
    (void)state;
    assert_storable(CDN(200, "Cache-Control: max-age=5", "CDN-Cache-Control: max-age=600"), 600000);
    assert_storable(CDN(200, "CDN-Cache-Control: s-maxage=60", "Cache-Control: s-maxage=1"), 60000);
    /* Cache-Control's no-store, private, no-cache are not this cache's. */
    assert_storable(CDN(200, "Cache-Control: no-store", "CDN-Cache-Control: max-age=60"), 60000);
    assert_storable(CDN(200, "Cache-Control: private", "CDN-Cache-Control: max-age=60"), 60000);
    struct httpcache_verdict v =
        CDN(200, "Cache-Control: no-cache, must-revalidate, stale-if-error=9",
            "CDN-Cache-Control: max-age=60, stale-while-revalidate=10");
    assert_storable(v, 60000);
    assert_false(v.no_cache || v.must_revalidate);
    assert_int_equal(v.swr_ms, 10000);
    assert_int_equal(v.sie_ms, -1);
    /* ...and the targeted field's are. */
    assert_not_storable(CDN(200, "Cache-Control: max-age=60", "CDN-Cache-Control: no-store"),
                        "no-store");
    assert_not_storable(CDN(200, "Cache-Control: max-age=60", "CDN-Cache-Control: private"),
                        "private");
    assert_not_storable(CDN(200, "CDN-Cache-Control: private=\"x-a\""), "private");
    assert_not_storable(CDN(200, "CDN-Cache-Control: no-cache=\"x-a\", max-age=60"), "no-cache");
    v = CDN(200, "Cache-Control: max-age=60", "ETag: \"e\"",
            "CDN-Cache-Control: no-cache, must-revalidate, stale-if-error=30");
    assert_storable(v, 0); /* no lifetime in the targeted field, nor a heuristic */
    assert_true(v.no_cache && v.must_revalidate);
    assert_int_equal(v.sie_ms, 30000);
    v = CDN(200, "CDN-Cache-Control: proxy-revalidate, max-age=5");
    assert_true(v.must_revalidate);
    /* Under a TTL, it bounds the TTL as Cache-Control would. */
    assert_storable(
        JUDGE_P(&cdn_ttl, 200, "Cache-Control: max-age=600", "CDN-Cache-Control: max-age=60"),
        60000);
    assert_storable(
        JUDGE_P(&cdn_ttl, 200, "Cache-Control: max-age=6", "CDN-Cache-Control: stale-if-error=60"),
        TTL);
}

/* RFC 9213 section 2.2: "it MUST ignore the Cache-Control and Expires header fields". */
static void
test_rfc9213_2_2_targeted_field_hides_expires(void **state)
{
    (void)state;
    assert_not_storable(
        CDN(200, "Date: " NOW, "Expires: " NOW_PLUS_60S, "CDN-Cache-Control: stale-if-error=60"),
        "no freshness");
    /* The heuristic may then apply: Expires is not an explicit lifetime here. */
    struct httpcache_verdict v = CDN(200, "Date: " NOW, "Expires: " NOW_PLUS_60S,
                                     "Last-Modified: " NOW_MINUS_2H, "CDN-Cache-Control: public");
    assert_storable(v, 720000);
    assert_true(v.heuristic);
    /* Without the targeted field, Expires counts. */
    assert_storable(ORIGIN(200, "Date: " NOW, "Expires: " NOW_PLUS_60S), 60000);
}

/* RFC 9213 section 2.2: the first field of the target list that is present and valid. */
static void
test_rfc9213_2_2_first_valid_field_of_the_list(void **state)
{
    (void)state;
    static const char *const list[] = {"acme-cache-control", "cdn-cache-control"};
    static const struct httpcache_policy p = {.ttl_origin = true, .targeted = list, .ntargeted = 2};
    /* The list's order, not the answer's. */
    assert_storable(JUDGE_P(&p, 200, "CDN-Cache-Control: max-age=20",
                            "Acme-Cache-Control: max-age=10", "Cache-Control: max-age=30"),
                    10000);
    assert_storable(JUDGE_P(&p, 200, "CDN-Cache-Control: max-age=20", "Cache-Control: max-age=30"),
                    20000);
    /* An invalid one is skipped for the next. */
    assert_storable(JUDGE_P(&p, 200, "Acme-Cache-Control: max-age=1.2.3",
                            "CDN-Cache-Control: max-age=20", "Cache-Control: max-age=30"),
                    20000);
    assert_storable(JUDGE_P(&p, 200, "Acme-Cache-Control: Max-Age=10",
                            "CDN-Cache-Control: max-age=20,", "Cache-Control: max-age=30"),
                    30000);
    /* A field not on the list changes nothing. */
    assert_storable(ORIGIN(200, "CDN-Cache-Control: no-store", "Cache-Control: max-age=30"), 30000);
    static const struct httpcache_policy other = {
        .ttl_origin = true, .targeted = list, .ntargeted = 1};
    assert_storable(
        JUDGE_P(&other, 200, "CDN-Cache-Control: no-store", "Cache-Control: max-age=30"), 30000);
    /* targeted NULL with a count is no list. */
    static const struct httpcache_policy none = {.ttl_origin = true, .ntargeted = 3};
    assert_storable(JUDGE_P(&none, 200, "Cache-Control: max-age=30"), 30000);
}

/* RFC 9213 section 2.1: an invalid or empty targeted field is ignored: Cache-Control then. */
static void
test_rfc9213_2_1_invalid_targeted_field_ignored(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "CDN-Cache-Control: ",
        "CDN-Cache-Control: Max-Age=600",
        "CDN-Cache-Control: max-age=600,",
        "CDN-Cache-Control: max-age = 600",
        "CDN-Cache-Control: max-age=600;",
        "CDN-Cache-Control: max-age=600 no-store",
        "CDN-Cache-Control: no-store, \"x\"",
        "CDN-Cache-Control: max-age=1234567890123456",
        "CDN-Cache-Control: max-age=\"600",
        "CDN-Cache-Control: no-store=?2",
        "CDN-Cache-Control: 1=2",
        "CDN-Cache-Control: a=@1659578233",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *lines[2] = {bad[i], "Cache-Control: max-age=30"};
        struct httpcache_verdict v = judge_full(&cdn_origin, 200, 10, NOW_MS, NOW_MS, lines, 2);
        if (!v.storable || v.lifetime_ms != 30000)
            fail_msg("%s: storable %d (%s), lifetime %llu", bad[i], v.storable, v.why ? v.why : "",
                     (unsigned long long)v.lifetime_ms);
    }
}

/* RFC 9213 section 2.1: values have the types of their directives, or are not used. */
static void
test_rfc9213_2_1_targeted_value_types(void **state)
{
    (void)state;
    /* Parameters are ignored. */
    assert_storable(CDN(200, "CDN-Cache-Control: max-age=60;x=1;y"), 60000);
    assert_not_storable(CDN(200, "CDN-Cache-Control: max-age=60, no-store;a=\"b\""), "no-store");
    /* A delta-seconds must be a non-negative Integer: a String, Decimal, Token, Boolean or
     * negative one is invalid freshness, stale on arrival (RFC 9111 section 4.2.1). */
    static const char *const stale[] = {
        "CDN-Cache-Control: max-age=\"60\"", "CDN-Cache-Control: max-age=60.0",
        "CDN-Cache-Control: max-age=sixty",  "CDN-Cache-Control: max-age",
        "CDN-Cache-Control: max-age=?1",     "CDN-Cache-Control: max-age=-60",
        "CDN-Cache-Control: s-maxage=(60)",  "CDN-Cache-Control: max-age=:NjA=:",
    };
    for (size_t i = 0; i < sizeof(stale) / sizeof(stale[0]); i++) {
        const char *lines[3] = {stale[i], "Cache-Control: max-age=30", "ETag: \"e\""};
        struct httpcache_verdict v = judge_full(&cdn_origin, 200, 10, NOW_MS, NOW_MS, lines, 3);
        if (!v.storable || v.lifetime_ms != 0)
            fail_msg("%s: storable %d (%s), lifetime %llu", stale[i], v.storable,
                     v.why ? v.why : "", (unsigned long long)v.lifetime_ms);
    }
    /* Past 2^31: 2^31 (RFC 9111 section 1.2.2). */
    assert_storable(CDN(200, "CDN-Cache-Control: max-age=999999999999999"), 2147483648000ull);
    /* A Boolean false is as if not given. */
    assert_storable(CDN(200, "CDN-Cache-Control: no-store=?0, max-age=60"), 60000);
    assert_storable(CDN(200, "CDN-Cache-Control: private=?0, max-age=60"), 60000);
    struct httpcache_verdict v = CDN(200, "CDN-Cache-Control: must-revalidate=?0, max-age=60");
    assert_false(v.must_revalidate);
    v = CDN(200, "CDN-Cache-Control: no-cache=?0, max-age=60");
    assert_storable(v, 60000);
    assert_false(v.no_cache);
    /* Another value on a directive without argument still forbids: the safe reading. */
    assert_not_storable(CDN(200, "CDN-Cache-Control: no-store=1, max-age=60"), "no-store");
    assert_not_storable(CDN(200, "CDN-Cache-Control: private=\"x\", max-age=60"), "private");
    /* Stale windows: Integers, else absent. */
    v = CDN(200, "CDN-Cache-Control: max-age=1, stale-while-revalidate=\"5\", stale-if-error=6");
    assert_int_equal(v.swr_ms, -1);
    assert_int_equal(v.sie_ms, 6000);
}

/* RFC 8941 section 4.2: the field's lines are one Dictionary; section 4.2.2: the last key wins. */
static void
test_rfc8941_4_2_targeted_lines_joined_last_key_wins(void **state)
{
    (void)state;
    assert_storable(CDN(200, "CDN-Cache-Control: max-age=60", "CDN-Cache-Control: max-age=20"),
                    20000);
    assert_storable(CDN(200, "CDN-Cache-Control: max-age=60, max-age=20"), 20000);
    assert_not_storable(CDN(200, "CDN-Cache-Control: max-age=60", "Cache-Control: max-age=5",
                            "cdn-cache-control: no-store"),
                        "no-store");
    assert_storable(CDN(200, "CDN-Cache-Control: no-store", "CDN-Cache-Control: no-store=?0",
                        "CDN-Cache-Control: s-maxage=10"),
                    10000);
    /* An invalid line makes the whole field invalid. */
    assert_storable(CDN(200, "CDN-Cache-Control: no-store", "CDN-Cache-Control: Bad",
                        "Cache-Control: max-age=30"),
                    30000);
    assert_storable(
        CDN(200, "CDN-Cache-Control: no-store", "CDN-Cache-Control: ", "Cache-Control: max-age=30"),
        30000);
}

/* ---- httpcache_judge: validators (RFC 9110 section 8.8) ----------------------------------- */

/* RFC 9111 section 4.3.1: an ETag or a Last-Modified to validate with. */
static void
test_rfc9111_4_3_1_has_validator(void **state)
{
    (void)state;
    assert_true(JUDGE(200, "ETag: \"abc\"").has_validator);
    assert_true(JUDGE(200, "ETag: W/\"abc\"").has_validator);
    assert_true(JUDGE(200, "ETag: \"\"").has_validator);
    assert_true(JUDGE(200, "Last-Modified: " NOW_MINUS_1D).has_validator);
    assert_true(JUDGE(200, "etag: \"x\"", "last-modified: junk").has_validator);
    assert_false(JUDGE(200, "Cache-Control: max-age=5").has_validator);
    /* Not an entity-tag (RFC 9110 section 8.8.3), not an HTTP-date: nothing to validate with. */
    static const char *const bad[] = {
        "ETag: abc", "ETag: \"abc",      "ETag: w/\"abc\"", "ETag: W/abc",
        "ETag: ",    "ETag: \"a\"b\"",   "ETag: \"a b\"",   "ETag: \"a\" ",
        "ETag: \"",  "Last-Modified: 0", "Last-Modified: ", "Last-Modified: yesterday",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct httpcache_verdict v = judge_full(&ttl_policy, 200, 10, NOW_MS, NOW_MS, &bad[i], 1);
        if (!v.storable || v.has_validator)
            fail_msg("%s: storable %d, validator %d", bad[i], v.storable, v.has_validator);
    }
}

/* ---- httpcache_request_directives (RFC 9111 section 5.2.1) -------------------------------- */

static struct httpcache_request
request_dirs(const char *lines)
{
    struct req r;
    parse_req(&r, lines);
    struct httpcache_request d;
    memset(&d, 0xa5, sizeof(d));
    httpcache_request_directives(&r.h, &d);
    return d;
}

static void
assert_request(struct httpcache_request d, bool no_cache, bool no_store, bool only_if_cached,
               int64_t max_age, int64_t max_stale, int64_t min_fresh)
{
    assert_int_equal(d.no_cache, no_cache);
    assert_int_equal(d.no_store, no_store);
    assert_int_equal(d.only_if_cached, only_if_cached);
    assert_int_equal(d.max_age, max_age);
    assert_int_equal(d.max_stale, max_stale);
    assert_int_equal(d.min_fresh, min_fresh);
}

/* RFC 9111 section 5.2.1: the request directives a cache acts on. */
static void
test_rfc9111_5_2_1_request_directives(void **state)
{
    (void)state;
    assert_request(request_dirs(""), false, false, false, -1, -1, -1);
    assert_request(request_dirs("Cache-Control: no-cache\r\n"), true, false, false, -1, -1, -1);
    assert_request(request_dirs("Cache-Control: no-store\r\n"), false, true, false, -1, -1, -1);
    assert_request(request_dirs("Cache-Control: only-if-cached\r\n"), false, false, true, -1, -1,
                   -1);
    assert_request(request_dirs("Cache-Control: max-age=0\r\n"), false, false, false, 0, -1, -1);
    assert_request(request_dirs("Cache-Control: max-age=60\r\n"), false, false, false, 60000, -1,
                   -1);
    assert_request(request_dirs("Cache-Control: max-stale\r\n"), false, false, false, -1, INT64_MAX,
                   -1);
    assert_request(request_dirs("Cache-Control: max-stale=30\r\n"), false, false, false, -1, 30000,
                   -1);
    assert_request(request_dirs("Cache-Control: min-fresh=5\r\n"), false, false, false, -1, -1,
                   5000);
    /* All at once, on several lines, in any case, quoted (section 5.2), with unknown ones. */
    assert_request(request_dirs("Cache-Control: No-Cache, x-ext=\"a, b\", MAX-AGE=\"10\"\r\n"
                                "X-A: 1\r\ncache-control: max-stale=\"20\", no-store, "
                                "Only-If-Cached, min-fresh=3, no-transform\r\n"),
                   true, true, true, 10000, 20000, 3000);
    /* First occurrence (section 4.2.1 by analogy). */
    assert_request(request_dirs("Cache-Control: max-age=1, max-age=2\r\nCache-Control: max-age=3, "
                                "min-fresh=4, min-fresh=5, max-stale=6, max-stale\r\n"),
                   false, false, false, 1000, 6000, 4000);
    /* Past 2^31 (section 1.2.2). */
    assert_request(request_dirs("Cache-Control: max-age=99999999999, min-fresh=2147483649\r\n"),
                   false, false, false, 2147483648000, -1, 2147483648000);
    /* Response directives mean nothing here. */
    assert_request(request_dirs("Cache-Control: private, public, s-maxage=5, must-revalidate\r\n"),
                   false, false, false, -1, -1, -1);
}

/* RFC 9111 section 5.2.1: invalid arguments, read the strict way. */
static void
test_rfc9111_5_2_1_request_invalid_arguments(void **state)
{
    (void)state;
    /* max-age: validated as 0. */
    assert_request(request_dirs("Cache-Control: max-age=abc\r\n"), false, false, false, 0, -1, -1);
    assert_request(request_dirs("Cache-Control: max-age\r\n"), false, false, false, 0, -1, -1);
    assert_request(request_dirs("Cache-Control: max-age=-1\r\n"), false, false, false, 0, -1, -1);
    assert_request(request_dirs("Cache-Control: max-age=x, max-age=60\r\n"), false, false, false, 0,
                   -1, -1);
    /* max-stale and min-fresh: as if absent. */
    assert_request(request_dirs("Cache-Control: max-stale=abc, min-fresh=-3, min-fresh\r\n"), false,
                   false, false, -1, -1, -1);
    assert_request(request_dirs("Cache-Control: max-stale=\"\"\r\n"), false, false, false, -1, -1,
                   -1);
}

/* RFC 9111 section 5.4: Pragma: no-cache counts only when Cache-Control is absent. */
static void
test_rfc9111_5_4_pragma_only_without_cache_control(void **state)
{
    (void)state;
    assert_request(request_dirs("Pragma: no-cache\r\n"), true, false, false, -1, -1, -1);
    assert_request(request_dirs("Pragma: NO-CACHE\r\n"), true, false, false, -1, -1, -1);
    assert_request(request_dirs("Pragma: x-y, no-cache\r\n"), true, false, false, -1, -1, -1);
    assert_request(request_dirs("Pragma: no-cachex\r\n"), false, false, false, -1, -1, -1);
    assert_request(request_dirs("Pragma: x\r\nPragma: no-cache\r\n"), true, false, false, -1, -1,
                   -1);
    /* With Cache-Control, Pragma is ignored, whatever Cache-Control says. */
    assert_request(request_dirs("Pragma: no-cache\r\nCache-Control: max-age=5\r\n"), false, false,
                   false, 5000, -1, -1);
    assert_request(request_dirs("Cache-Control: \r\nPragma: no-cache\r\n"), false, false, false, -1,
                   -1, -1);
}

/* ---- httpcache_parse_date, httpcache_format_date (RFC 9110 section 5.6.7) ----------------- */

static int64_t
date_of(const char *s)
{
    /* A heap copy of the exact length lets ASan see any read past the end. */
    size_t n = strlen(s);
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    int64_t t = 12345;
    int r = httpcache_parse_date(copy, n, &t);
    free(copy);
    if (r < 0) {
        assert_int_equal(t, 12345); /* untouched */
        return INT64_MIN;
    }
    assert_int_equal(r, 0);
    return t;
}

static void
assert_not_date(const char *s)
{
    if (date_of(s) != INT64_MIN)
        fail_msg("\"%s\" parsed as %lld", s, (long long)date_of(s));
}

/* RFC 9110 section 5.6.7: the preferred format, IMF-fixdate. */
static void
test_rfc9110_5_6_7_imf_fixdate(void **state)
{
    (void)state;
    assert_int_equal(date_of("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
    assert_int_equal(date_of("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
    assert_int_equal(date_of(NOW), 1700000000);
    assert_int_equal(date_of("Fri, 31 Dec 9999 23:59:59 GMT"), 253402300799);
    assert_int_equal(date_of("Wed, 31 Dec 1969 23:59:59 GMT"), -1);
    assert_int_equal(date_of("Sat, 01 Jan 0000 00:00:00 GMT"), -62167219200);
    /* Every month. */
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (int m = 0; m < 12; m++) {
        char s[40];
        snprintf(s, sizeof(s), "Mon, 01 %s 2024 00:00:00 GMT", months[m]);
        struct tm tm = {.tm_year = 124, .tm_mon = m, .tm_mday = 1};
        assert_int_equal(date_of(s), (int64_t)timegm(&tm));
    }
    /* The day name is not checked against the date (06 Nov 1994 was a Sunday). */
    assert_int_equal(date_of("Mon, 06 Nov 1994 08:49:37 GMT"), 784111777);
}

/* RFC 9110 section 5.6.7: the obsolete RFC 850 form. */
static void
test_rfc9110_5_6_7_rfc850_date(void **state)
{
    (void)state;
    assert_int_equal(date_of("Sunday, 06-Nov-94 08:49:37 GMT"), 784111777);
    assert_int_equal(date_of("Thursday, 01-Jan-98 00:00:00 GMT"), 883612800);
    assert_int_equal(date_of("Wednesday, 29-Feb-00 00:00:00 GMT"), 951782400);
    assert_not_date("Sun, 06-Nov-94 08:49:37 GMT");
    assert_not_date("sunday, 06-Nov-94 08:49:37 GMT");
    assert_not_date("Sunday, 06-Nov-1994 08:49:37 GMT");
    assert_not_date("Sunday, 06 Nov 94 08:49:37 GMT");
    assert_not_date("Sunday,06-Nov-94 08:49:37 GMT");
    assert_not_date("Sunday, 06-Nov-94 08:49:37 UTC");
    assert_not_date("Sunday, 06-nov-94 08:49:37 GMT");
    assert_not_date("Sunday, 31-Nov-94 08:49:37 GMT");
    assert_not_date("Sunday, 6-Nov-94 08:49:37 GMT");
    assert_not_date("Funday, 06-Nov-94 08:49:37 GMT");
    assert_not_date("Sunday, 06-Nov-9x 08:49:37 GMT");
    assert_not_date("Sunday, 06-Nov-94 08:49:37 GMT ");
    assert_not_date(", 06-Nov-94 08:49:37 GMT");
}

/*
 * RFC 9110 section 5.6.7: a two-digit year "that appears to be more than 50 years in the
 * future" is "the most recent year in the past that had the same last two digits".
 */
static void
test_rfc9110_5_6_7_rfc850_two_digit_year(void **state)
{
    (void)state;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    int year = tm.tm_year + 1900;
    char s[64];
    /* 49 years ahead: that year; 51 ahead: a century earlier, 49 years ago. */
    int cases[][2] = {{49, year + 49},  {51, year + 51 - 100}, {0, year},      {-1, year - 1},
                      {-30, year - 30}, {-49, year - 49},      {30, year + 30}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int y = year + cases[i][0];
        snprintf(s, sizeof(s), "Monday, 01-Jan-%02d 00:00:00 GMT", y % 100);
        struct tm want = {.tm_year = cases[i][1] - 1900, .tm_mon = 0, .tm_mday = 1};
        if (date_of(s) != (int64_t)timegm(&want))
            fail_msg("%s: %lld, want 01 Jan %d", s, (long long)date_of(s), cases[i][1]);
    }
    /* 29 Feb of a year 00 exists only in a century divisible by 400: checked in the year chosen. */
    int y00 = year + 100 - year % 100; /* the next year 00 */
    snprintf(s, sizeof(s), "Tuesday, 29-Feb-00 00:00:00 GMT");
    int64_t t = date_of(s);
    int chosen = y00 - year > 50 ? y00 - 100 : y00;
    if ((chosen % 400 == 0) != (t != INT64_MIN))
        fail_msg("29-Feb-00 read in %d: %lld", chosen, (long long)t);
}

/* RFC 9110 section 5.6.7: the obsolete asctime form. */
static void
test_rfc9110_5_6_7_asctime_date(void **state)
{
    (void)state;
    assert_int_equal(date_of("Sun Nov  6 08:49:37 1994"), 784111777);
    assert_int_equal(date_of("Sun Nov 06 08:49:37 1994"), 784111777);
    assert_int_equal(date_of("Thu Jan  1 00:00:00 1970"), 0);
    assert_int_equal(date_of("Tue Feb 29 00:00:00 2000"), 951782400);
    assert_int_equal(date_of("Mon Nov 16 08:49:37 1994"), 784111777 + 10 * 86400);
    assert_not_date("Sun Nov 6 08:49:37 1994");
    assert_not_date("Sun Nov  6 08:49:37 1994 GMT");
    assert_not_date("Sun Nov  6 08:49:37 94");
    assert_not_date("Sun, Nov  6 08:49:37 1994");
    assert_not_date("Sun Nov   6 8:49:37 1994");
    assert_not_date("Sunday Nov  6 08:49:37 1994");
    assert_not_date("Sun Nov  0 08:49:37 1994");
    assert_not_date("Sun Nov 6  08:49:37 1994");
}

/* RFC 9110 section 5.6.7: a day that exists in its month and year (proleptic Gregorian). */
static void
test_rfc9110_5_6_7_leap_years(void **state)
{
    (void)state;
    assert_int_equal(date_of("Tue, 29 Feb 2000 00:00:00 GMT"), 951782400);
    assert_true(date_of("Thu, 29 Feb 2024 12:00:00 GMT") != INT64_MIN);
    assert_true(date_of("Sat, 29 Feb 2400 00:00:00 GMT") != INT64_MIN);
    assert_true(date_of("Tue, 29 Feb 1916 00:00:00 GMT") != INT64_MIN);
    assert_not_date("Mon, 29 Feb 2100 00:00:00 GMT");
    assert_not_date("Thu, 29 Feb 1900 00:00:00 GMT");
    assert_not_date("Wed, 29 Feb 2023 00:00:00 GMT");
    assert_not_date("Wed, 30 Feb 2024 00:00:00 GMT");
    assert_int_equal(date_of("Sun, 28 Feb 2100 23:59:59 GMT") + 1,
                     date_of("Mon, 01 Mar 2100 00:00:00 GMT"));
    assert_int_equal(date_of("Thu, 29 Feb 2024 23:59:59 GMT") + 1,
                     date_of("Fri, 01 Mar 2024 00:00:00 GMT"));
    /* Months of 30 and 31 days. */
    static const char *const last[] = {"31 Jan", "28 Feb", "31 Mar", "30 Apr", "31 May", "30 Jun",
                                       "31 Jul", "31 Aug", "30 Sep", "31 Oct", "30 Nov", "31 Dec"};
    static const char *const over[] = {"32 Jan", "29 Feb", "32 Mar", "31 Apr", "32 May", "31 Jun",
                                       "32 Jul", "32 Aug", "31 Sep", "32 Oct", "31 Nov", "32 Dec"};
    for (int m = 0; m < 12; m++) {
        char s[40];
        snprintf(s, sizeof(s), "Mon, %s 2023 00:00:00 GMT", last[m]);
        assert_true(date_of(s) != INT64_MIN);
        snprintf(s, sizeof(s), "Mon, %s 2023 00:00:00 GMT", over[m]);
        assert_not_date(s);
    }
}

/* RFC 9110 section 5.6.7: hour 00-23, minute 00-59, second 00-60 (a leap second). */
static void
test_rfc9110_5_6_7_out_of_range_fields(void **state)
{
    (void)state;
    assert_not_date("Sun, 00 Nov 1994 08:49:37 GMT");
    assert_not_date("Sun, 06 Nov 1994 24:00:00 GMT");
    assert_not_date("Sun, 06 Nov 1994 08:60:37 GMT");
    assert_not_date("Sun, 06 Nov 1994 08:49:61 GMT");
    assert_not_date("Sun, 06 Nov 1994 99:99:99 GMT");
    assert_int_equal(date_of("Sun, 06 Nov 1994 23:59:59 GMT"), 784166399);
    /* A leap second is the next minute's 00. */
    assert_int_equal(date_of("Sat, 31 Dec 2016 23:59:60 GMT"),
                     date_of("Sun, 01 Jan 2017 00:00:00 GMT"));
}

/* RFC 9110 section 5.6.7: only the grammar; names are case-sensitive (%s"..."). */
static void
test_rfc9110_5_6_7_strict_syntax(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "0",
        "-1",
        "784111777",
        "Sun, 06 Nov 1994 08:49:37 GMT ",
        " Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "SUN, 06 Nov 1994 08:49:37 GMT",
        "sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 NOV 1994 08:49:37 GMT",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun, 06-Nov-1994 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08.49.37 GMT",
        "Sun, 06 Nov 1994 08:49:37GMT ",
        "Sun, 0x Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 19x4 08:49:37 GMT",
        "Sun, 06 Nov -994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:3x GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT\r",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun,\t06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMX",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_not_date(bad[i]);
    /* Only the first len bytes are looked at. */
    int64_t t;
    assert_int_equal(httpcache_parse_date("Sun, 06 Nov 1994 08:49:37 GMTxyz", 29, &t), 0);
    assert_int_equal(t, 784111777);
    assert_int_equal(httpcache_parse_date("Sun, 06 Nov 1994 08:49:37 GMT", 28, &t), -1);
}

/* RFC 9110 section 5.6.7: a sender generates IMF-fixdate. */
static void
test_rfc9110_5_6_7_format_date(void **state)
{
    (void)state;
    char out[30];
    memset(out, 'x', sizeof(out));
    httpcache_format_date(784111777, out);
    assert_string_equal(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    httpcache_format_date(0, out);
    assert_string_equal(out, "Thu, 01 Jan 1970 00:00:00 GMT");
    httpcache_format_date(1700000000, out);
    assert_string_equal(out, NOW);
    httpcache_format_date(951782400, out);
    assert_string_equal(out, "Tue, 29 Feb 2000 00:00:00 GMT");
    httpcache_format_date(-1, out);
    assert_string_equal(out, "Wed, 31 Dec 1969 23:59:59 GMT");
    httpcache_format_date(253402300799, out);
    assert_string_equal(out, "Fri, 31 Dec 9999 23:59:59 GMT");
    httpcache_format_date(-62167219200, out);
    assert_string_equal(out, "Sat, 01 Jan 0000 00:00:00 GMT");
    /* Out of the 4-digit years: clamped. */
    httpcache_format_date(253402300800, out);
    assert_string_equal(out, "Fri, 31 Dec 9999 23:59:59 GMT");
    httpcache_format_date(INT64_MAX, out);
    assert_string_equal(out, "Fri, 31 Dec 9999 23:59:59 GMT");
    httpcache_format_date(INT64_MIN, out);
    assert_string_equal(out, "Sat, 01 Jan 0000 00:00:00 GMT");

    /* It agrees with the C library and parses back, across ~ 3 centuries. */
    for (int64_t t = -2208988800LL; t < 7258118400LL; t += 86400 * 7 + 3607) {
        httpcache_format_date(t, out);
        assert_int_equal(strlen(out), 29);
        time_t tt = (time_t)t;
        struct tm tm;
        char want[64];
        gmtime_r(&tt, &tm);
        strftime(want, sizeof(want), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        assert_string_equal(out, want);
        assert_int_equal(date_of(out), t);
    }
}

/* ---- httpcache_not_modified (RFC 9110 section 13) ----------------------------------------- */

static bool
not_modified(const char *lines, const char *etag, const char *lm)
{
    struct req r;
    parse_req(&r, lines);
    return httpcache_not_modified(&r.h, etag, lm);
}

/* RFC 9110 section 13.1.2: If-None-Match with the weak comparison. */
static void
test_rfc9110_13_1_2_if_none_match(void **state)
{
    (void)state;
    assert_true(not_modified("If-None-Match: \"a\"\r\n", "\"a\"", NULL));
    assert_true(not_modified("If-None-Match: W/\"a\"\r\n", "\"a\"", NULL));
    assert_true(not_modified("If-None-Match: \"a\"\r\n", "W/\"a\"", NULL));
    assert_true(not_modified("If-None-Match: \"x\", W/\"a\"\r\n", "\"a\"", NULL));
    assert_false(not_modified("If-None-Match: \"b\"\r\n", "\"a\"", NULL));
    assert_false(not_modified("If-None-Match: \"a\"\r\n", NULL, NULL));
    /* Its lines are one list. */
    assert_true(not_modified("If-None-Match: \"x\"\r\nIf-None-Match: \"a\"\r\n", "\"a\"", NULL));
    assert_false(not_modified("If-None-Match: \"x\"\r\nIf-None-Match: \"y\"\r\n", "\"a\"", NULL));
    /* No conditional: not a 304. */
    assert_false(not_modified("", "\"a\"", NOW));
}

/* RFC 9110 section 13.1.2: "*" matches any current representation, with or without a tag. */
static void
test_rfc9110_13_1_2_if_none_match_star(void **state)
{
    (void)state;
    assert_true(not_modified("If-None-Match: *\r\n", "\"a\"", NULL));
    assert_true(not_modified("If-None-Match: *\r\n", NULL, NULL));
    assert_true(not_modified("If-None-Match: *\r\n", NULL, NOW));
    assert_false(not_modified("If-None-Match: \"*\"\r\n", NULL, NULL));
}

/* RFC 9110 section 13.2.2: with If-None-Match, If-Modified-Since is not evaluated. */
static void
test_rfc9110_13_2_2_if_none_match_before_if_modified_since(void **state)
{
    (void)state;
    const char *both = "If-None-Match: \"b\"\r\nIf-Modified-Since: " NOW "\r\n";
    assert_false(not_modified(both, "\"a\"", NOW_MINUS_1D));
    assert_false(not_modified(both, NULL, NOW_MINUS_1D));
    assert_true(not_modified(both, "\"b\"", NOW_PLUS_60S));
    assert_false(
        not_modified("If-None-Match: \r\nIf-Modified-Since: " NOW "\r\n", "\"a\"", NOW_MINUS_1D));
}

/* RFC 9110 section 13.1.3: If-Modified-Since: 304 when not modified after the date. */
static void
test_rfc9110_13_1_3_if_modified_since(void **state)
{
    (void)state;
    assert_true(not_modified("If-Modified-Since: " NOW "\r\n", "\"a\"", NOW));
    assert_true(not_modified("If-Modified-Since: " NOW "\r\n", NULL, NOW_MINUS_1D));
    assert_false(not_modified("If-Modified-Since: " NOW "\r\n", NULL, NOW_PLUS_60S));
    /* Any of the three forms, on either side. */
    assert_true(not_modified("If-Modified-Since: Tuesday, 14-Nov-23 22:13:20 GMT\r\n", NULL,
                             "Tue Nov 14 22:13:20 2023"));
    assert_false(not_modified("If-Modified-Since: Tue Nov 14 22:13:19 2023\r\n", NULL, NOW));
    /* "MUST ignore ... if the resource does not have a modification date available". */
    assert_false(not_modified("If-Modified-Since: " NOW "\r\n", "\"a\"", NULL));
    assert_false(not_modified("If-Modified-Since: " NOW "\r\n", "\"a\"", "yesterday"));
    /* A date in the future is a valid HTTP-date (RFC 9110 does not ask to ignore it). */
    assert_true(not_modified("If-Modified-Since: Fri, 31 Dec 9999 23:59:59 GMT\r\n", NULL, NOW));
}

/* RFC 9110 section 13.1.3: "MUST ignore" an invalid date or a value with several members. */
static void
test_rfc9110_13_1_3_invalid_if_modified_since_ignored(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "If-Modified-Since: 0\r\n",
        "If-Modified-Since: yesterday\r\n",
        "If-Modified-Since: Tue, 14 Nov 2023 22:13:20\r\n",
        "If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT, Tue, 14 Nov 2023 22:13:20 GMT\r\n",
        "If-Modified-Since: " NOW "\r\nIf-Modified-Since: " NOW "\r\n",
        "If-Modified-Since: \r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (not_modified(bad[i], NULL, NOW_MINUS_1D))
            fail_msg("304 for %s", bad[i]);
}

/* RFC 9110 section 13.1.2, 13.1.3: only GET and HEAD. */
static void
test_rfc9110_13_1_3_only_get_and_head(void **state)
{
    (void)state;
    static const char *const heads[] = {
        "HEAD / HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"a\"\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"a\"\r\n\r\n",
        "PUT / HTTP/1.1\r\nHost: h\r\nIf-Modified-Since: " NOW "\r\n\r\n",
        "DELETE / HTTP/1.1\r\nHost: h\r\nIf-None-Match: *\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        struct http_request h;
        assert_true(http_parse_request(heads[i], strlen(heads[i]), &h) > 0);
        assert_int_equal(httpcache_not_modified(&h, "\"a\"", NOW_MINUS_1D), i == 0);
    }
}

/* ---- httpcache_update_fields, httpcache_field_in_lines (RFC 9111 section 3.2) ------------- */

static void
assert_updated(const char *stored, const char *const *lines, size_t n, const char *want)
{
    struct fields fs;
    fields_from(&fs, lines, n);
    struct sbuf out = {0};
    sbuf_adds(&out, "Before: 0\r\n"); /* appended to what is there */
    httpcache_update_fields(stored, strlen(stored), fs.f, fs.n, &out);
    if (out.len != strlen(want) + 11 || memcmp(out.p + 11, want, strlen(want)) != 0)
        fail_msg("got:\n%s\nwant:\n%s", out.p + 11, want);
    sbuf_free(&out);
}

/* RFC 9111 section 3.2: the 304's fields replace the stored ones of the same name. */
static void
test_rfc9111_3_2_update_fields_replaces(void **state)
{
    (void)state;
    const char *stored = "Cache-Control: max-age=60\r\n"
                         "X-A: 1\r\n"
                         "Link: <a>\r\n"
                         "link: <b>\r\n"
                         "X-B: 2\r\n";
    /* Every line of a replaced name goes, and the 304's lines come after the kept ones. */
    assert_updated(stored, LINES("CACHE-CONTROL: max-age=120", "Link: <c>"),
                   "X-A: 1\r\n"
                   "X-B: 2\r\n"
                   "CACHE-CONTROL: max-age=120\r\n"
                   "Link: <c>\r\n");
    /* Several lines of the 304 all stay. */
    assert_updated(stored, LINES("X-B: 3", "x-b: 4"),
                   "Cache-Control: max-age=60\r\n"
                   "X-A: 1\r\n"
                   "Link: <a>\r\n"
                   "link: <b>\r\n"
                   "X-B: 3\r\n"
                   "x-b: 4\r\n");
    /* A 304 without fields keeps everything. */
    assert_updated(stored, NULL, 0, stored);
    /* An empty value replaces too. */
    assert_updated("X-A: 1\r\n", LINES("X-A: "), "X-A: \r\n");
    /* Nothing stored. */
    assert_updated("", LINES("X-A: 1"), "X-A: 1\r\n");
    /* A name is the whole name: X-A does not replace X-AB. */
    assert_updated("X-AB: 1\r\nX-: 2\r\n", LINES("X-A: 3"), "X-AB: 1\r\nX-: 2\r\nX-A: 3\r\n");
}

/*
 * RFC 9111 section 3.2: except Content-Length and the fields the cache handles itself
 * (Date, Age, ETag, Content-Type, hop-by-hop ... : those a replay never carries), which
 * neither replace nor add; Set-Cookie is never stored.
 */
static void
test_rfc9111_3_2_update_fields_exceptions(void **state)
{
    (void)state;
    const char *stored = "X-A: 1\r\nContent-Length: 5\r\nSet-Cookie: s=1\r\n";
    assert_updated(stored,
                   LINES("Content-Length: 0", "Date: " NOW, "Age: 4", "ETag: \"b\"",
                         "Content-Type: text/plain", "Connection: close", "Transfer-Encoding: x",
                         "Keep-Alive: 5", "X-Cache: HIT", "RateLimit: x", "Set-Cookie: s=2",
                         "X-C: 3"),
                   "X-A: 1\r\nContent-Length: 5\r\nSet-Cookie: s=1\r\nX-C: 3\r\n");
    /* A stored line without its CRLF gets one; a line without a colon is kept as it is. */
    assert_updated("X-A: 1\r\nodd line\r\nX-B: 2", LINES("X-C: 3"),
                   "X-A: 1\r\nodd line\r\nX-B: 2\r\nX-C: 3\r\n");
    /* Only the first len bytes are read. */
    struct fields fs;
    fields_from(&fs, LINES("X-C: 3"));
    struct sbuf out = {0};
    httpcache_update_fields("X-A: 1\r\nX-B: 2\r\n", 8, fs.f, fs.n, &out);
    assert_string_equal(out.p, "X-A: 1\r\nX-C: 3\r\n");
    sbuf_free(&out);
}

static long
field_in(const char *lines, const char *name, char *out, size_t cap)
{
    memset(out, 'z', cap);
    return httpcache_field_in_lines(lines, strlen(lines), name, out, cap);
}

/* The stored value of a field (the ETag and Last-Modified of a stored answer). */
static void
test_field_in_lines(void **state)
{
    (void)state;
    const char *lines = "X-A: 1\r\n"
                        "ETag:  \"abc\" \r\n"
                        "last-modified: " NOW "\r\n"
                        "X-Empty:\r\n"
                        "X-Two: a\r\n"
                        "x-two: b\r\n"
                        "X-Last: end";
    char out[64];
    assert_int_equal(field_in(lines, "etag", out, sizeof(out)), 5);
    assert_string_equal(out, "\"abc\"");
    assert_int_equal(field_in(lines, "last-modified", out, sizeof(out)), 29);
    assert_string_equal(out, NOW);
    assert_int_equal(field_in(lines, "x-a", out, sizeof(out)), 1);
    assert_string_equal(out, "1");
    assert_int_equal(field_in(lines, "x-empty", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(field_in(lines, "x-two", out, sizeof(out)), 1);
    assert_string_equal(out, "a");
    assert_int_equal(field_in(lines, "x-last", out, sizeof(out)), 3);
    assert_string_equal(out, "end");
    assert_int_equal(field_in(lines, "x-absent", out, sizeof(out)), -1);
    assert_int_equal(field_in(lines, "x", out, sizeof(out)), -1);
    assert_int_equal(field_in(lines, "x-a:", out, sizeof(out)), -1);
    assert_int_equal(field_in("", "x-a", out, sizeof(out)), -1);
    /* It fits with its NUL, or it is -1 and nothing past cap is written. */
    assert_int_equal(field_in(lines, "etag", out, 6), 5);
    memset(out, 'z', sizeof(out));
    assert_int_equal(httpcache_field_in_lines(lines, strlen(lines), "etag", out, 5), -1);
    assert_int_equal(out[5], 'z');
    assert_int_equal(field_in(lines, "x-empty", out, 1), 0);
    assert_int_equal(field_in(lines, "x-a", out, 0), -1);
    /* Only the first len bytes are read. */
    assert_int_equal(httpcache_field_in_lines("X-A: 12\r\n", 6, "x-a", out, sizeof(out)), 1);
    assert_string_equal(out, "1");
}

/* ---- httpcache_has_credentials ------------------------------------------------------------ */

static void
test_has_credentials(void **state)
{
    (void)state;
    struct req r;
    parse_req(&r, "");
    assert_false(httpcache_has_credentials(&r.h));
    parse_req(&r, "Accept: */*\r\nX-Authorization: x\r\nProxy-Authorization: Basic eA==\r\n"
                  "Set-Cookie: a=1\r\nCookies: a\r\n");
    assert_false(httpcache_has_credentials(&r.h));
    parse_req(&r, "Authorization: Bearer t\r\n");
    assert_true(httpcache_has_credentials(&r.h));
    parse_req(&r, "authorization: \r\n");
    assert_true(httpcache_has_credentials(&r.h));
    parse_req(&r, "Accept: */*\r\nCookie: sid=1\r\n");
    assert_true(httpcache_has_credentials(&r.h));
    parse_req(&r, "COOKIE: a=b\r\nAUTHORIZATION: Basic eDp5\r\n");
    assert_true(httpcache_has_credentials(&r.h));
}

/* ---- httpcache_etag_matches --------------------------------------------------------------- */

static bool
matches(const char *inm, const char *etag)
{
    /* A heap copy of the exact length lets ASan see any read past the end. */
    size_t n = strlen(inm);
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, inm, n);
    bool r = httpcache_etag_matches(copy, n, etag);
    free(copy);
    return r;
}

static void
test_etag_strong_and_weak(void **state)
{
    (void)state;
    assert_true(matches("\"abc\"", "\"abc\""));
    assert_true(matches("W/\"abc\"", "\"abc\""));
    assert_true(matches("\"abc\"", "W/\"abc\""));
    assert_true(matches("W/\"abc\"", "W/\"abc\""));
    assert_true(matches("\"\"", "\"\""));
    assert_false(matches("\"abc\"", "\"abd\""));
    assert_false(matches("W/\"abc\"", "W/\"ab\""));
    assert_false(matches("\"ABC\"", "\"abc\""));
    /* Quotes are part of the tag; w/ is not the weak prefix. */
    assert_false(matches("abc", "\"abc\""));
    assert_false(matches("w/\"abc\"", "\"abc\""));
    assert_false(matches("\"abc\"", NULL));
    assert_false(matches("*", NULL));
    assert_false(matches("", "\"abc\""));
}

static void
test_etag_lists(void **state)
{
    (void)state;
    assert_true(matches("\"x\", \"abc\"", "\"abc\""));
    assert_true(matches("\"x\",W/\"abc\",\"y\"", "\"abc\""));
    assert_true(matches("  \"x\" ,\t W/\"abc\"  , \"y\" ", "W/\"abc\""));
    assert_true(matches(",,\"abc\",", "\"abc\""));
    assert_false(matches("\"x\", \"y\", W/\"z\"", "\"abc\""));
    assert_false(matches(", ,", "\"abc\""));
    assert_true(matches("*", "\"abc\""));
    assert_true(matches(" * ", "W/\"abc\""));
    assert_false(matches("\"*\"", "\"abc\""));

    /* Only the first len bytes are looked at. */
    const char *s = "\"x\", \"abc\"";
    assert_false(httpcache_etag_matches(s, 3, "\"abc\""));
    assert_true(httpcache_etag_matches(s, strlen(s), "\"abc\""));
}

static void
test_etag_commas_inside_quotes(void **state)
{
    (void)state;
    assert_true(matches("\"a,b\"", "\"a,b\""));
    assert_true(matches("\"x\", W/\"a, b\"", "\"a, b\""));
    assert_false(matches("\"a,b\"", "\"a\""));
    assert_false(matches("\"a,b\"", "\"b\""));
    assert_false(matches("\"a\", \"b\"", "\"a,b\""));
    /* A backslash is an ordinary byte of an entity tag, not an escape. */
    assert_true(matches("\"a\\\"", "\"a\\\""));
    assert_true(matches("\"a\\\", \"b\"", "\"b\""));
    assert_true(matches("W/\"a\\\",W/\"b,c\"", "\"b,c\""));
}

/* ---- httpcache_etag_of -------------------------------------------------------------------- */

static void
assert_tag_shape(const char *tag)
{
    assert_int_equal(strlen(tag), 18);
    assert_int_equal(tag[0], '"');
    assert_int_equal(tag[17], '"');
    for (int i = 1; i < 17; i++)
        if (!((tag[i] >= '0' && tag[i] <= '9') || (tag[i] >= 'a' && tag[i] <= 'f')))
            fail_msg("byte %d of %s is not a lowercase hex digit", i, tag);
}

static void
test_etag_of(void **state)
{
    (void)state;
    char a[19], b[19];
    memset(a, 'x', sizeof(a));
    httpcache_etag_of("", 0, a);
    assert_tag_shape(a);
    char want[19];
    snprintf(want, sizeof(want), "\"%016llx\"", (unsigned long long)util_hash64("", 0));
    assert_string_equal(a, want); /* util_hash64 of the body, in hex */
    httpcache_etag_of("a", 1, a);
    snprintf(want, sizeof(want), "\"%016llx\"", (unsigned long long)util_hash64("a", 1));
    assert_string_equal(a, want);

    const char body[] = "{\"id\":1,\"name\":\"ada\"}";
    httpcache_etag_of(body, sizeof(body) - 1, a);
    httpcache_etag_of(body, sizeof(body) - 1, b);
    assert_tag_shape(a);
    assert_string_equal(a, b);

    /* One byte changed anywhere, or one byte fewer, gives another tag. */
    char copy[sizeof(body)];
    for (size_t i = 0; i < sizeof(body) - 1; i++) {
        memcpy(copy, body, sizeof(body));
        copy[i] ^= 1;
        httpcache_etag_of(copy, sizeof(body) - 1, b);
        assert_tag_shape(b);
        assert_string_not_equal(a, b);
    }
    httpcache_etag_of(body, sizeof(body) - 2, b);
    assert_string_not_equal(a, b);

    /* Bytes past len and NULs inside count as they should. */
    httpcache_etag_of("ab", 1, b);
    httpcache_etag_of("a", 1, a);
    assert_string_equal(b, a);
    httpcache_etag_of("a\0b", 3, a);
    httpcache_etag_of("a\0c", 3, b);
    assert_string_not_equal(a, b);

    /* A computed tag matches itself in If-None-Match, strong and weak. */
    char inm[32];
    httpcache_etag_of(body, sizeof(body) - 1, a);
    snprintf(inm, sizeof(inm), "W/%s", a);
    assert_true(httpcache_etag_matches(inm, strlen(inm), a));
}

/* ---- httpcache_vary_key ------------------------------------------------------------------- */

static void
test_vary_key_plain(void **state)
{
    (void)state;
    assert_vkey("Accept: text/html\r\n", "accept", "P\x1ftext/html");
    /* Names as the judge writes them match fields in any case. */
    assert_vkey("ACCEPT-ENCODING: gzip\r\n", "accept-encoding", "P\x1fgzip");
    /* No names: the primary key and the separator. */
    assert_vkey("Accept: x\r\n", "", "P\x1f");
}

static void
test_vary_key_escaping(void **state)
{
    (void)state;
    assert_vkey("X-V: a:b%c{d}e f\r\n", "x-v",
                "P\x1f"
                "a%3Ab%25c%7Bd%7De%20f");
    assert_vkey("X-V: caf\xc3\xa9\t1~\r\n", "x-v",
                "P\x1f"
                "caf%C3%A9%091~");
    assert_vkey("X-V: \xff\x80~!\r\n", "x-v",
                "P\x1f"
                "%FF%80~!");
    assert_vkey("X-V: a\"b\\c,d;e=f\r\n", "x-v",
                "P\x1f"
                "a\"b\\c,d;e=f");
    /* An empty value is empty; an absent field is "%-". */
    assert_vkey("X-V: \r\n", "x-v", "P\x1f");
    assert_vkey("", "x-v", "P\x1f%-");
}

static void
test_vary_key_several_names(void **state)
{
    (void)state;
    assert_vkey("Accept: a/b\r\nX-V: 1:2\r\nAccept-Language: fr\r\n",
                "accept-language,x-absent,x-v,accept",
                "P\x1f"
                "fr:%-:1%3A2:a/b");
    assert_vkey("", "a,b,c", "P\x1f%-:%-:%-");
    assert_vkey("A: \r\nB: \r\n", "a,b", "P\x1f:");
    /* The primary key is copied as it is, whatever its bytes. */
    struct req r;
    parse_req(&r, "X-V: 1\r\n");
    char out[64];
    const char primary[] = "k:{a}%\x1f";
    long n = httpcache_vary_key(primary, sizeof(primary) - 1, "x-v", &r.h, out, sizeof(out));
    assert_int_equal(n, (long)sizeof(primary) - 1 + 2);
    assert_memory_equal(out,
                        "k:{a}%\x1f\x1f"
                        "1",
                        (size_t)n + 1);
}

static void
test_vary_key_repeated_field(void **state)
{
    (void)state;
    char one[128], two[128], joined[128];
    /* Every line of a field counts, as the origin sees them: combined with ", ". */
    assert_vkey("X-V: 1\r\nX-A: z\r\nx-v: 2\r\n", "x-v",
                "P\x1f"
                "1,%202");
    assert_true(vkey("X-V: 1\r\n", "x-v", one, sizeof(one)) > 0);
    assert_true(vkey("X-V: 1\r\nX-V: 2\r\n", "x-v", two, sizeof(two)) > 0);
    assert_true(vkey("X-V: 1, 2\r\n", "x-v", joined, sizeof(joined)) > 0);
    assert_string_not_equal(one, two);
    assert_string_equal(two, joined);
    /* An empty line still counts. */
    assert_vkey("X-V: 1\r\nX-V: \r\n", "x-v",
                "P\x1f"
                "1,%20");
}

static void
test_vary_key_overflow(void **state)
{
    (void)state;
    struct req r;
    parse_req(&r, "X-V: ab:\r\nX-W: c\r\n");
    char out[64];
    /* "P" 0x1f "ab%3A" ":" "c" ":" "%-" is 12 bytes: fits in 13, not in 12. */
    const char *want = "P\x1f"
                       "ab%3A:c:%-";
    for (size_t cap = 0; cap <= 13; cap++) {
        memset(out, 'z', sizeof(out));
        long n = httpcache_vary_key("P", 1, "x-v,x-w,x-absent", &r.h, out, cap);
        if (cap < 13) {
            if (n != -1)
                fail_msg("cap %zu: got %ld, want -1", cap, n);
            for (size_t i = cap; i < sizeof(out); i++)
                assert_int_equal(out[i], 'z'); /* nothing written past cap */
        } else {
            assert_int_equal(n, 12);
            assert_memory_equal(out, want, 13);
        }
    }
    /* A value escaped at the very end: its 3 bytes and the NUL, or nothing. */
    for (size_t cap = 2; cap <= 6; cap++) {
        memset(out, 'z', sizeof(out));
        long n = httpcache_vary_key("P", 1, "x-v", &r.h, out, cap + 2);
        assert_int_equal(n, cap + 2 >= 8 ? 7 : -1);
    }
    /* A primary key that does not fit. */
    assert_int_equal(httpcache_vary_key("PPPP", 4, "", &r.h, out, 5), -1);
    assert_int_equal(httpcache_vary_key("PPPP", 4, "", &r.h, out, 6), 5);
    /* A long name is looked up like any other. */
    char name[255], lines[1200];
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    snprintf(lines, sizeof(lines), "%s: v\r\n", name);
    parse_req(&r, lines);
    char big[1024];
    assert_int_equal(httpcache_vary_key("P", 1, name, &r.h, big, sizeof(big)), 3);
    assert_string_equal(big, "P\x1fv");
    /* A long value does not fit a small buffer. */
    strcpy(lines, "X-V: ");
    memset(lines + 5, 'v', 1000);
    strcpy(lines + 1005, "\r\n");
    parse_req(&r, lines);
    assert_int_equal(httpcache_vary_key("P", 1, "x-v", &r.h, big, sizeof(big)), 1002);
    assert_int_equal(httpcache_vary_key("P", 1, "x-v", &r.h, out, sizeof(out)), -1);
}

static void
test_vary_key_injective(void **state)
{
    (void)state;
    /* Requests whose fields differ never share a secondary key. */
    static const char *const reqs[] = {
        "",
        "X-A: \r\n",
        "X-B: \r\n",
        "X-A: \r\nX-B: \r\n",
        "X-A: %-\r\n",
        "X-B: %-\r\n",
        "X-A: %-\r\nX-B: %-\r\n",
        "X-A: :\r\n",
        "X-A: :\r\nX-B: \r\n",
        "X-A: a:\r\nX-B: b\r\n",
        "X-A: a\r\nX-B: :b\r\n",
        "X-A: a:b\r\n",
        "X-A: %3A\r\n",
        "X-A: %25\r\n",
        "X-A: %\r\n",
        "X-A: caf\xc3\xa9\r\n",
        "X-A: caf%C3%A9\r\n",
        "X-A: a b\r\n",
        "X-A: a%20b\r\n",
        "X-A: {x}\r\n",
        "X-A: %7Bx%7D\r\n",
        "X-A: a\r\nX-B: %-\r\n",
        "X-A: a:%-\r\n",
        "X-A: 1\r\nX-A: 2\r\n",
        "X-A: 1\r\n",
        "X-A: 2\r\n",
    };
    enum { N = sizeof(reqs) / sizeof(reqs[0]) };
    char keys[N][256];
    for (size_t i = 0; i < N; i++) {
        long n = vkey(reqs[i], "x-a,x-b", keys[i], sizeof(keys[i]));
        assert_true(n > 0);
    }
    for (size_t i = 0; i < N; i++)
        for (size_t j = i + 1; j < N; j++)
            if (strcmp(keys[i], keys[j]) == 0)
                fail_msg("the same key for [%s] and [%s]", reqs[i], reqs[j]);
}

/* ---- httpcache_replay_fields -------------------------------------------------------------- */

static void
test_replay_fields(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "Content-Type: text/html",
        "X-First: 1",
        "content-length: 12",
        "DATE: Tue, 01 Jan 2030 00:00:00 GMT",
        "Age: 3",
        "Set-Cookie: a=1; Path=/",
        "etag: \"x\"",
        "X-Cache: HIT",
        "X-RateLimit-Limit: 10",
        "x-ratelimit-remaining: 9",
        "X-RATELIMIT-RESET: 1",
        "RateLimit: \"a\";r=1;t=1",
        "RateLimit-Policy: \"a\";q=10;w=1",
        "Cache-Control: max-age=60",
        "Connection: close",
        "Keep-Alive: timeout=5",
        "Transfer-Encoding: chunked",
        "TE: trailers",
        "Trailer: X-T",
        "Upgrade: h2c",
        "Proxy-Authenticate: Basic",
        "Proxy-Connection: keep-alive",
        "X-Unknown: a, b",
        "set-cookie: b=2",
        "Vary: Accept",
        "Location: /next",
        "X-Empty: ",
        "X-Cache-Status: kept",
        "Content-Type-Options: kept",
    };
    struct fields fs;
    fields_from(&fs, lines, sizeof(lines) / sizeof(lines[0]));
    struct sbuf out = {0};
    sbuf_adds(&out, "Before: 0\r\n"); /* appended to what is there */
    httpcache_replay_fields(fs.f, fs.n, &out);
    const char *want = "Before: 0\r\n"
                       "X-First: 1\r\n"
                       "Set-Cookie: a=1; Path=/\r\n"
                       "Cache-Control: max-age=60\r\n"
                       "X-Unknown: a, b\r\n"
                       "set-cookie: b=2\r\n"
                       "Vary: Accept\r\n"
                       "Location: /next\r\n"
                       "X-Empty: \r\n"
                       "X-Cache-Status: kept\r\n"
                       "Content-Type-Options: kept\r\n";
    assert_int_equal(out.len, strlen(want));
    assert_memory_equal(out.p, want, out.len);
    sbuf_free(&out);

    /* Nothing to replay appends nothing. */
    struct sbuf empty = {0};
    httpcache_replay_fields(fs.f, 0, &empty);
    assert_int_equal(empty.len, 0);
    fields_from(&fs, lines, 5); /* only dropped ones but X-First */
    httpcache_replay_fields(fs.f + 2, 3, &empty);
    assert_int_equal(empty.len, 0);
    sbuf_free(&empty);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc9111_3_storable_statuses),
        cmocka_unit_test(test_rfc9111_3_other_statuses_not_stored),
        cmocka_unit_test(test_policy_body_size_limit),
        cmocka_unit_test(test_policy_set_cookie_not_stored),
        cmocka_unit_test(test_rfc9111_5_2_2_5_no_store),
        cmocka_unit_test(test_rfc9111_3_5_answers_reusable_with_authorization),
        cmocka_unit_test(test_rfc9111_5_2_2_7_private_not_stored),
        cmocka_unit_test(test_rfc9111_5_2_2_4_no_cache_revalidated_on_every_use),
        cmocka_unit_test(test_rfc9111_5_2_2_4_no_cache_field_names_not_stored),
        cmocka_unit_test(test_rfc9111_5_2_directive_names_case_insensitive),
        cmocka_unit_test(test_rfc9111_5_2_quoted_arguments),
        cmocka_unit_test(test_rfc9110_5_3_several_cache_control_lines),
        cmocka_unit_test(test_rfc9111_5_2_2_2_must_and_proxy_revalidate),
        cmocka_unit_test(test_rfc9111_5_2_2_10_s_maxage_implies_proxy_revalidate),
        cmocka_unit_test(test_rfc9111_4_1_vary_star),
        cmocka_unit_test(test_rfc9110_12_5_5_vary_element_not_a_field_name),
        cmocka_unit_test(test_rfc9111_4_1_vary_list),
        cmocka_unit_test(test_rfc9111_4_1_vary_too_long),
        cmocka_unit_test(test_rfc9111_4_2_1_precedence),
        cmocka_unit_test(test_rfc9111_4_2_1_expires_minus_date),
        cmocka_unit_test(test_rfc9111_4_2_1_expires_without_date_uses_response_time),
        cmocka_unit_test(test_rfc9111_5_3_expires_invalid_is_stale),
        cmocka_unit_test(test_rfc9111_4_2_1_expires_in_past_is_stale),
        cmocka_unit_test(test_rfc9111_4_2_1_first_of_duplicate_directives),
        cmocka_unit_test(test_rfc9111_4_2_1_malformed_max_age_is_stale),
        cmocka_unit_test(test_rfc9111_1_2_2_delta_seconds_overflow),
        cmocka_unit_test(test_rfc9111_4_2_2_heuristic_fraction_of_last_modified),
        cmocka_unit_test(test_rfc9111_4_2_2_no_heuristic_with_explicit_freshness),
        cmocka_unit_test(test_rfc9111_4_2_2_heuristic_only_with_ttl_origin),
        cmocka_unit_test(test_rfc9111_4_2_2_heuristic_needs_valid_past_last_modified),
        cmocka_unit_test(test_policy_ttl_caps_or_fills_in),
        cmocka_unit_test(test_policy_override),
        cmocka_unit_test(test_policy_ttl_origin_stale_with_validator),
        cmocka_unit_test(test_rfc9111_4_2_3_apparent_age),
        cmocka_unit_test(test_rfc9111_4_2_3_age_plus_response_delay),
        cmocka_unit_test(test_rfc9111_4_2_3_initial_age_is_the_larger),
        cmocka_unit_test(test_rfc9111_5_1_age_field),
        cmocka_unit_test(test_rfc5861_3_stale_while_revalidate),
        cmocka_unit_test(test_rfc5861_4_stale_if_error),
        cmocka_unit_test(test_rfc5861_invalid_is_absent),
        cmocka_unit_test(test_rfc9213_2_2_targeted_field_replaces_cache_control),
        cmocka_unit_test(test_rfc9213_2_2_targeted_field_hides_expires),
        cmocka_unit_test(test_rfc9213_2_2_first_valid_field_of_the_list),
        cmocka_unit_test(test_rfc9213_2_1_invalid_targeted_field_ignored),
        cmocka_unit_test(test_rfc9213_2_1_targeted_value_types),
        cmocka_unit_test(test_rfc8941_4_2_targeted_lines_joined_last_key_wins),
        cmocka_unit_test(test_rfc9111_4_3_1_has_validator),
        cmocka_unit_test(test_rfc9111_5_2_1_request_directives),
        cmocka_unit_test(test_rfc9111_5_2_1_request_invalid_arguments),
        cmocka_unit_test(test_rfc9111_5_4_pragma_only_without_cache_control),
        cmocka_unit_test(test_rfc9110_5_6_7_imf_fixdate),
        cmocka_unit_test(test_rfc9110_5_6_7_rfc850_date),
        cmocka_unit_test(test_rfc9110_5_6_7_rfc850_two_digit_year),
        cmocka_unit_test(test_rfc9110_5_6_7_asctime_date),
        cmocka_unit_test(test_rfc9110_5_6_7_leap_years),
        cmocka_unit_test(test_rfc9110_5_6_7_out_of_range_fields),
        cmocka_unit_test(test_rfc9110_5_6_7_strict_syntax),
        cmocka_unit_test(test_rfc9110_5_6_7_format_date),
        cmocka_unit_test(test_rfc9110_13_1_2_if_none_match),
        cmocka_unit_test(test_rfc9110_13_1_2_if_none_match_star),
        cmocka_unit_test(test_rfc9110_13_2_2_if_none_match_before_if_modified_since),
        cmocka_unit_test(test_rfc9110_13_1_3_if_modified_since),
        cmocka_unit_test(test_rfc9110_13_1_3_invalid_if_modified_since_ignored),
        cmocka_unit_test(test_rfc9110_13_1_3_only_get_and_head),
        cmocka_unit_test(test_rfc9111_3_2_update_fields_replaces),
        cmocka_unit_test(test_rfc9111_3_2_update_fields_exceptions),
        cmocka_unit_test(test_field_in_lines),
        cmocka_unit_test(test_has_credentials),
        cmocka_unit_test(test_etag_strong_and_weak),
        cmocka_unit_test(test_etag_lists),
        cmocka_unit_test(test_etag_commas_inside_quotes),
        cmocka_unit_test(test_etag_of),
        cmocka_unit_test(test_vary_key_plain),
        cmocka_unit_test(test_vary_key_escaping),
        cmocka_unit_test(test_vary_key_several_names),
        cmocka_unit_test(test_vary_key_repeated_field),
        cmocka_unit_test(test_vary_key_overflow),
        cmocka_unit_test(test_vary_key_injective),
        cmocka_unit_test(test_replay_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
