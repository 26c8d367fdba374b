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

/* Judges an answer with the given status, body size and "Name: value" fields. */
static struct httpcache_verdict
judge_n(int status, uint64_t ttl, size_t body, const char *const *lines, size_t n)
{
    struct fields fs;
    fields_from(&fs, lines, n);
    struct httpcache_verdict v;
    memset(&v, 0xa5, sizeof(v));
    httpcache_judge(status, fs.f, fs.n, ttl, body, &v);
    return v;
}

#define JUDGE(status, ...)                                                                         \
    judge_n(status, TTL, 10, (const char *const[]){__VA_ARGS__},                                   \
            sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

static void
assert_storable(struct httpcache_verdict v, uint64_t ttl_ms)
{
    if (!v.storable)
        fail_msg("not storable (%s), want storable with a TTL of %llu ms", v.why ? v.why : "?",
                 (unsigned long long)ttl_ms);
    assert_int_equal(v.ttl_ms, ttl_ms);
    assert_null(v.why);
}

static void
assert_not_storable(struct httpcache_verdict v, const char *why)
{
    if (v.storable)
        fail_msg("storable (TTL %llu ms), want not storable: %s", (unsigned long long)v.ttl_ms,
                 why);
    assert_non_null(v.why);
    assert_string_equal(v.why, why);
    assert_false(v.vary);
}

/* A literal list of "Name: value" lines, and its count: two arguments. */
#define LINES(...)                                                                                 \
    (const char *const[]){__VA_ARGS__},                                                            \
        sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)

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

/* ---- httpcache_judge: statuses, body size ------------------------------------------------- */

static void
test_judge_storable_statuses(void **state)
{
    (void)state;
    static const int ok[] = {200, 203, 204, 300, 301, 308};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct httpcache_verdict v = judge_n(ok[i], TTL, 10, NULL, 0);
        assert_storable(v, TTL);
        assert_false(v.vary);
        assert_string_equal(v.vary_names, "");
    }
}

static void
test_judge_other_statuses(void **state)
{
    (void)state;
    static const int no[] = {0,   100, 201, 202, 205, 206, 302, 303, 304, 307,
                             400, 401, 403, 404, 410, 429, 500, 502, 503, 504};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        assert_not_storable(judge_n(no[i], TTL, 10, NULL, 0), "status");
    /* Even an explicit freshness lifetime does not make an error storable. */
    assert_not_storable(JUDGE(404, "Cache-Control: public, max-age=60"), "status");
    assert_not_storable(JUDGE(500, "Cache-Control: s-maxage=60"), "status");
}

static void
test_judge_body_size(void **state)
{
    (void)state;
    assert_storable(judge_n(200, TTL, 0, NULL, 0), TTL);
    assert_storable(judge_n(200, TTL, HTTPCACHE_MAX_BODY, NULL, 0), TTL);
    assert_not_storable(judge_n(200, TTL, HTTPCACHE_MAX_BODY + 1, NULL, 0), "body too large");
    assert_not_storable(judge_n(200, TTL, (size_t)-1, NULL, 0), "body too large");
}

/* ---- httpcache_judge: Set-Cookie and Cache-Control ---------------------------------------- */

static void
test_judge_set_cookie(void **state)
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
    /* Look-alike names are other fields. */
    assert_storable(JUDGE(200, "Set-Cookie2: a=1", "X-Set-Cookie: a=1", "Set-Cookies: a"), TTL);
}

static void
test_judge_cache_control_forbids(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "Cache-Control: no-store"), "no-store");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache"), "no-cache");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache=\"x\""), "no-cache");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache=\"Set-Cookie, X-Id\""), "no-cache");
    assert_not_storable(JUDGE(200, "Cache-Control: private"), "private");
    assert_not_storable(JUDGE(200, "Cache-Control: private=\"x\""), "private");
    assert_not_storable(JUDGE(200, "Cache-Control: private=\"X-A, X-B\", max-age=60"), "private");
    assert_not_storable(JUDGE(200, "Cache-Control: s-maxage=0"), "max-age=0");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=0"), "max-age=0");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=000"), "max-age=0");
    /* s-maxage=0 wins over a max-age that would allow it. */
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=60, s-maxage=0"), "max-age=0");
    /* Among several, no-store is named first, then private. */
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache, private, no-store"), "no-store");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache, private"), "private");
    /* The forbidding directive among others, with spaces and empty elements. */
    assert_not_storable(JUDGE(200, "Cache-Control: public ,, max-age=60 ,\tno-store ,"),
                        "no-store");
    /* A TTL of 0 from the policy is never stored either. */
    assert_false(judge_n(200, 0, 10, NULL, 0).storable);
}

static void
test_judge_names_case_insensitive(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "CACHE-CONTROL: no-store"), "no-store");
    assert_not_storable(JUDGE(200, "cache-control: No-Store"), "no-store");
    assert_not_storable(JUDGE(200, "Cache-Control: NO-CACHE"), "no-cache");
    assert_not_storable(JUDGE(200, "Cache-Control: Private=\"x\""), "private");
    assert_not_storable(JUDGE(200, "Cache-Control: S-MAXAGE=0"), "max-age=0");
    assert_storable(JUDGE(200, "Cache-Control: MAX-AGE=60"), 60000);
    assert_storable(JUDGE(200, "cAcHe-CoNtRoL: Max-Age=60, S-MaxAge=30"), 30000);
    /* Only exact names count: prefixes and extensions are other directives. */
    assert_storable(JUDGE(200, "Cache-Control: no-stored, privately, no-cache-x, x-no-store"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: max-ages=0, xs-maxage=0"), TTL);
}

static void
test_judge_ttl(void **state)
{
    (void)state;
    assert_storable(JUDGE(200, "Cache-Control: max-age=60"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: public, max-age=1"), 1000);
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=30"), 30000);
    /* s-maxage wins over max-age, smaller or larger, in either order. */
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=30, max-age=60"), 30000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=60, s-maxage=30"), 30000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=10, s-maxage=120"), 120000);
    /* A lifetime longer than the policy's TTL keeps the policy's TTL. */
    assert_storable(JUDGE(200, "Cache-Control: max-age=600"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=600, max-age=10"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: max-age=300"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: max-age=299"), 299000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=31536000"), TTL);
    /* No lifetime: the policy's TTL. */
    assert_storable(JUDGE(200, "Cache-Control: public"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: "), TTL);
    assert_storable(JUDGE(200, "Content-Type: text/plain"), TTL);
}

static void
test_judge_huge_lifetimes(void **state)
{
    (void)state;
    /* Lifetimes past what fits are a very long time (RFC 9111 1.2.2), not malformed. */
    assert_storable(JUDGE(200, "Cache-Control: max-age=99999999999999999999999"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=99999999999999999999999, max-age=10"), TTL);
    assert_storable(JUDGE(200, "Cache-Control: max-age=10, s-maxage=18446744073709551617"), TTL);
}

static void
test_judge_malformed_max_age(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Cache-Control: max-age=abc", "Cache-Control: max-age=",     "Cache-Control: max-age",
        "Cache-Control: max-age=-5",  "Cache-Control: max-age=1.5",  "Cache-Control: max-age=+5",
        "Cache-Control: max-age=5s",  "Cache-Control: max-age=0x10", "Cache-Control: max-age=\"\"",
        "Cache-Control: max-age=\"5", "Cache-Control: s-maxage=abc", "Cache-Control: s-maxage",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct httpcache_verdict v = judge_n(200, TTL, 10, &bad[i], 1);
        if (!v.storable || v.ttl_ms != TTL)
            fail_msg("%s: storable %d, TTL %llu", bad[i], v.storable, (unsigned long long)v.ttl_ms);
    }
    /* A malformed directive is ignored: it neither hides a valid one nor is taken as 0. */
    assert_storable(JUDGE(200, "Cache-Control: max-age=60, max-age=abc"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=abc, max-age=60"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=60", "Cache-Control: max-age=x"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=abc, max-age=60"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=30, s-maxage=-1"), 30000);
}

static void
test_judge_quoted_values(void **state)
{
    (void)state;
    assert_storable(JUDGE(200, "Cache-Control: max-age=\"60\""), 60000);
    assert_storable(JUDGE(200, "Cache-Control: s-maxage=\"30\", max-age=\"60\""), 30000);
    assert_not_storable(JUDGE(200, "Cache-Control: s-maxage=\"0\""), "max-age=0");
    /* A comma or a directive inside quotes belongs to the quoted value. */
    assert_storable(JUDGE(200, "Cache-Control: ext=\"a, max-age=0, no-store\", max-age=60"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: ext=\"a\\\", no-store\", max-age=60"), 60000);
    /* The list goes on after a quoted value. */
    assert_not_storable(JUDGE(200, "Cache-Control: ext=\"x, y\", no-store"), "no-store");
}

static void
test_judge_several_fields(void **state)
{
    (void)state;
    assert_storable(JUDGE(200, "Cache-Control: public", "Cache-Control: max-age=60"), 60000);
    assert_storable(JUDGE(200, "Cache-Control: max-age=60", "X-A: b", "cache-control: s-maxage=20"),
                    20000);
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=60", "cache-control: no-store"),
                        "no-store");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=60", "Cache-Control: private"),
                        "private");
    assert_not_storable(JUDGE(200, "Cache-Control: no-cache", "Cache-Control: max-age=60"),
                        "no-cache");
}

/* ---- httpcache_judge: Vary ---------------------------------------------------------------- */

static void
test_judge_vary_star(void **state)
{
    (void)state;
    assert_not_storable(JUDGE(200, "Vary: *"), "vary");
    assert_not_storable(JUDGE(200, "Vary: Accept, *"), "vary");
    assert_not_storable(JUDGE(200, "Vary: Accept", "vary: *"), "vary");
    assert_not_storable(JUDGE(200, "Cache-Control: max-age=60", "Vary:  * "), "vary");
}

static void
test_judge_vary_list(void **state)
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

static void
test_judge_vary_too_long(void **state)
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
    struct httpcache_verdict v = judge_n(200, TTL, 10, lines, 1);
    assert_storable(v, TTL);
    assert_int_equal(strlen(v.vary_names), 255);
    assert_memory_equal(v.vary_names, a, 127);
    assert_int_equal(v.vary_names[127], ',');
    /* A name already listed adds nothing... */
    const char *again[2] = {f2, f1};
    assert_storable(judge_n(200, TTL, 10, again, 2), TTL);
    /* ...one more does not fit. */
    assert_not_storable(judge_n(200, TTL, 10, lines, 2), "vary");

    /* Many short names. */
    char many[1024] = "Vary: ";
    for (int i = 0; i < 60; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "x-field-%02d, ", i);
    const char *m[1] = {many};
    assert_not_storable(judge_n(200, TTL, 10, m, 1), "vary");

    /* One long name fits as long as it leaves room for the NUL. */
    char longname[256], lf[280];
    memset(longname, 'n', sizeof(longname));
    longname[254] = '\0';
    snprintf(lf, sizeof(lf), "Vary: %s", longname);
    const char *l[1] = {lf};
    v = judge_n(200, TTL, 10, l, 1);
    assert_storable(v, TTL);
    assert_string_equal(v.vary_names, longname);
    longname[254] = 'n';
    longname[255] = '\0';
    snprintf(lf, sizeof(lf), "Vary: %s", longname);
    assert_not_storable(judge_n(200, TTL, 10, l, 1), "vary");
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
    assert_string_equal(a, "\"cbf29ce484222325\""); /* FNV-1a 64 of nothing */
    httpcache_etag_of("a", 1, a);
    assert_string_equal(a, "\"af63dc4c8601ec8c\"");

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
    assert_string_equal(b, "\"af63dc4c8601ec8c\"");
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
        cmocka_unit_test(test_judge_storable_statuses),
        cmocka_unit_test(test_judge_other_statuses),
        cmocka_unit_test(test_judge_body_size),
        cmocka_unit_test(test_judge_set_cookie),
        cmocka_unit_test(test_judge_cache_control_forbids),
        cmocka_unit_test(test_judge_names_case_insensitive),
        cmocka_unit_test(test_judge_ttl),
        cmocka_unit_test(test_judge_huge_lifetimes),
        cmocka_unit_test(test_judge_malformed_max_age),
        cmocka_unit_test(test_judge_quoted_values),
        cmocka_unit_test(test_judge_several_fields),
        cmocka_unit_test(test_judge_vary_star),
        cmocka_unit_test(test_judge_vary_list),
        cmocka_unit_test(test_judge_vary_too_long),
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
