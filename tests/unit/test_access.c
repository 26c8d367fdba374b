/* test_access.c - unit tests of the access log's lines (engine/gateway/access.c): every field,
 * hostile bytes in the path, query and user still make one valid JSON line, the sampling is
 * a pure function of the request id and keeps every 4xx and 5xx, the lines reach the file
 * through the writer, and names remembered by address are written again after a reload. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "access.h"
#include "logwriter.h"
#include "policy.h"
#include "util.h"

#define KNOWN_MASK 0xd2f6u

/* A request head whose strings are set by hand: no parser between the test and the bytes. */
static struct http_request
head(const char *method, const char *target, size_t target_len)
{
    struct http_request h;
    memset(&h, 0, sizeof(h));
    h.method = strcmp(method, "HEAD") == 0 ? HTTP_HEAD : HTTP_GET;
    h.method_str = (struct http_str){method, strlen(method)};
    h.target = (struct http_str){target, target_len};
    const char *q = memchr(target, '?', target_len);
    size_t plen = q ? (size_t)(q - target) : target_len;
    h.path = (struct http_str){target, plen};
    if (q)
        h.query = (struct http_str){q + 1, target_len - plen - 1};
    return h;
}

/* The one JSON object of a line (which must end in its only newline). */
static json_t *
parse_line(const struct sbuf *b)
{
    assert_true(b->len > 0);
    assert_int_equal(b->p[b->len - 1], '\n');
    assert_null(memchr(b->p, '\n', b->len - 1));
    json_error_t e;
    json_t *o = json_loadb(b->p, b->len, JSON_ALLOW_NUL, &e);
    if (!o)
        fail_msg("not JSON (%s): %.*s", e.text, (int)b->len, b->p);
    assert_true(json_is_object(o));
    return o;
}

static const char *
str(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_string(v))
        fail_msg("%s is not a string", k);
    return json_string_value(v);
}

static void
test_a_line_has_every_field(void **state)
{
    (void)state;
    static const char target[] = "/api/crm?type=deals&x=%20";
    struct http_request h = head("GET", target, sizeof(target) - 1);
    const char *shadow[] = {"burst", "daily"};
    struct gw_access_record r = {
        .duration_us = 12345,
        .request_id = "abc-1",
        .http = &h,
        .route = "GET /api/crm",
        .status = 200,
        .cache = GW_CACHE_HIT,
        .user = "42",
        .user_len = 2,
        .tier = "gold",
        .limit = "tier",
        .limit_remaining = 7,
        .shadow_denied = shadow,
        .nshadow_denied = 2,
        .origin = true,
        .origin_us = 2001,
        .client = "10.0.0.1",
        .identity = "jwt",
        .identity_refused = "expired",
        .bytes = 1024,
    };
    struct sbuf b = {0};
    /* 2026-12-07T01:02:03.456Z is 1796605323456 ms; the request arrived 12 ms before. */
    gw_access_format(&b, &r, 1796605323456ull);
    json_t *o = parse_line(&b);
    assert_string_equal(str(o, "ts"), "2026-12-07T01:02:03.444Z");
    assert_string_equal(str(o, "request_id"), "abc-1");
    assert_string_equal(str(o, "method"), "GET");
    assert_string_equal(str(o, "path"), "/api/crm");
    assert_string_equal(str(o, "query"), "type=deals&x=%20");
    assert_string_equal(str(o, "route"), "GET /api/crm");
    assert_int_equal(json_integer_value(json_object_get(o, "status")), 200);
    assert_string_equal(str(o, "cache"), "hit");
    assert_string_equal(str(o, "user"), "42");
    assert_string_equal(str(o, "tier"), "gold");
    assert_true(json_is_null(json_object_get(o, "tenant")));
    json_t *l = json_object_get(o, "limit");
    assert_string_equal(str(l, "policy"), "tier");
    assert_int_equal(json_integer_value(json_object_get(l, "remaining")), 7);
    assert_string_equal(str(l, "mode"), "enforce");
    json_t *sd = json_object_get(o, "shadow_denied");
    assert_int_equal(json_array_size(sd), 2);
    assert_string_equal(json_string_value(json_array_get(sd, 1)), "daily");
    assert_true(json_real_value(json_object_get(o, "duration_ms")) == 12.345);
    assert_true(json_real_value(json_object_get(o, "origin_ms")) == 2.001);
    assert_int_equal(json_integer_value(json_object_get(o, "bytes")), 1024);
    assert_string_equal(str(o, "client"), "10.0.0.1");
    assert_string_equal(str(o, "identity"), "jwt");
    assert_string_equal(str(o, "identity_refused"), "expired");
    assert_int_equal(json_object_size(o), 19);
    json_decref(o);
    sbuf_free(&b);
}

/* What is not there is null, but for the fields most lines lack (query, shadow_denied,
 * identity_refused), which are left out (and an empty query is not a missing one). */
static void
test_absent_values_are_null(void **state)
{
    (void)state;
    struct http_request h = head("HEAD", "/x", 2), e = head("GET", "/x?", 3);
    struct gw_access_record r = {
        .request_id = "id", .http = &h, .route = "(unmatched)", .status = 404, .client = "::1"};
    struct sbuf b = {0};
    gw_access_format(&b, &r, 1000000);
    json_t *o = parse_line(&b);
    const char *nulls[] = {"user", "tier", "tenant", "identity", "limit", "origin_ms"};
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (!json_is_null(json_object_get(o, nulls[i])))
            fail_msg("%s is not null", nulls[i]);
    const char *absent[] = {"query", "shadow_denied", "identity_refused"};
    for (size_t i = 0; i < sizeof(absent) / sizeof(absent[0]); i++)
        if (json_object_get(o, absent[i]))
            fail_msg("%s is there", absent[i]);
    assert_int_equal(json_object_size(o), 16);
    assert_string_equal(str(o, "cache"), "none");
    assert_true(json_real_value(json_object_get(o, "duration_ms")) == 0.0);
    json_decref(o);
    b.len = 0;
    r.http = &e;
    r.limit = "sh";
    r.limit_shadow = true;
    gw_access_format(&b, &r, 1000000);
    o = parse_line(&b);
    assert_string_equal(str(o, "query"), "");
    assert_string_equal(str(json_object_get(o, "limit"), "mode"), "shadow");
    json_decref(o);
    sbuf_free(&b);
}

/* Quotes, backslashes, controls, a NUL, a newline and broken UTF-8 in the path, the query, the
 * user and the tenant: still one line of valid JSON, each value as the bytes said (ill-formed
 * UTF-8 as U+FFFD), nothing of one field spilling into another. */
static void
test_hostile_bytes_stay_inside_their_strings(void **state)
{
    (void)state;
    static const char target[] = "/a\"b\\c\x01\xff\xc3(\n\",\"status\":200?q=\"}\r\x00z";
    static const char user[] = "u\"\n{\"admin\":true}\xe2\x80\xa8\x7f";
    static const char tenant[] = "t\x00\xed\xa0\x80";
    struct http_request h = head("GET", target, sizeof(target) - 1);
    struct gw_access_record r = {.request_id = "id",
                                 .http = &h,
                                 .route = "GET /a",
                                 .status = 502,
                                 .user = user,
                                 .user_len = sizeof(user) - 1,
                                 .tenant = tenant,
                                 .tenant_len = sizeof(tenant) - 1,
                                 .client = "127.0.0.1"};
    struct sbuf b = {0};
    gw_access_format(&b, &r, 1000000);
    json_t *o = parse_line(&b);
    assert_string_equal(str(o, "path"), "/a\"b\\c\x01\xef\xbf\xbd\xef\xbf\xbd(\n\",\"status\":200");
    const json_t *q = json_object_get(o, "query");
    assert_int_equal(json_string_length(q), 7);
    assert_memory_equal(json_string_value(q), "q=\"}\r\0z", 7);
    assert_string_equal(str(o, "user"), "u\"\n{\"admin\":true}\xe2\x80\xa8\x7f");
    /* A surrogate's bytes are no prefix of any character: each is replaced. */
    const json_t *t = json_object_get(o, "tenant");
    assert_int_equal(json_string_length(t), 11);
    assert_memory_equal(json_string_value(t), "t\0\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 11);
    json_decref(o);
    sbuf_free(&b);
}

/* The same id gets the same answer every time; the share kept follows the rate. */
static void
test_sampling_is_a_function_of_the_id(void **state)
{
    (void)state;
    char id[32];
    unsigned kept_half = 0, kept_tenth = 0;
    for (unsigned i = 0; i < 20000; i++) {
        int n = snprintf(id, sizeof(id), "%016x", i * 2654435761u);
        bool half = gw_access_sampled(id, (size_t)n, 0.5);
        assert_true(half == gw_access_sampled(id, (size_t)n, 0.5));
        bool tenth = gw_access_sampled(id, (size_t)n, 0.1);
        assert_true(tenth == gw_access_sampled(id, (size_t)n, 0.1));
        assert_true(!tenth || half); /* a lower rate keeps a subset */
        assert_true(gw_access_sampled(id, (size_t)n, 1.0));
        kept_half += half;
        kept_tenth += tenth;
    }
    /* Binomial(20000, p): within 5 standard deviations. */
    assert_in_range(kept_half, 10000 - 354, 10000 + 354);
    assert_in_range(kept_tenth, 2000 - 212, 2000 + 212);
    /* Known answers: no seed, no process state; another process or build keeps the same. */
    unsigned mask = 0;
    for (unsigned i = 0; i < 16; i++) {
        int n = snprintf(id, sizeof(id), "req-%u", i);
        mask |= (unsigned)gw_access_sampled(id, (size_t)n, 0.5) << i;
    }
    assert_int_equal(mask, KNOWN_MASK);
}

/* A log writer to dir/access.log (dir a mkdtemp() template, path its 64 bytes) with one
 * worker's access log a on it at the sample rate `sample`. */
static struct logwriter *
open_log(char *dir, char *path, double sample, struct gw_access *a)
{
    assert_non_null(mkdtemp(dir));
    snprintf(path, 64, "%s/access.log", dir);
    char err[256];
    struct logwriter_config lc = {.path = path, .producers = 1};
    struct logwriter *lw = logwriter_open(&lc, err, sizeof(err));
    assert_non_null(lw);
    gw_access_init(a, lw, 0, sample);
    return lw;
}

/* Through the writer at a rate of 0.3: every 4xx and 5xx line is in the file, and of the 2xx
 * and 3xx lines exactly those gw_access_sampled() keeps; the others are counted. */
static void
test_the_sample_keeps_every_error_and_counts_the_rest(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-access-XXXXXX", path[64];
    struct gw_access a;
    struct logwriter *lw = open_log(dir, path, 0.3, &a);
    static const int statuses[] = {200, 204, 301, 304, 400, 404, 429, 500, 502, 503, 504};
    size_t ns = sizeof(statuses) / sizeof(statuses[0]);
    struct http_request h = head("GET", "/x", 2);
    unsigned expect = 0, expect_out = 0, expect_errors = 0;
    char id[32];
    for (unsigned i = 0; i < 2000; i++) {
        int status = statuses[i % ns];
        int n = snprintf(id, sizeof(id), "req-%u", i);
        bool keep = status >= 400 || gw_access_sampled(id, (size_t)n, 0.3);
        expect += keep;
        expect_out += !keep;
        expect_errors += status >= 400;
        struct gw_access_record r = {.now_us = util_mono_us(),
                                     .request_id = id,
                                     .http = &h,
                                     .route = "GET /x",
                                     .status = status,
                                     .client = "c"};
        gw_access_log(&a, &r);
    }
    assert_int_equal(a.sampled_out, expect_out);
    gw_access_free(&a);
    logwriter_close(lw);

    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[1024];
    unsigned lines = 0, errors = 0;
    while (fgets(line, sizeof(line), f)) {
        json_error_t e;
        json_t *o = json_loads(line, 0, &e);
        assert_non_null(o);
        const char *rid = str(o, "request_id");
        unsigned i;
        assert_int_equal(sscanf(rid, "req-%u", &i), 1);
        int status = (int)json_integer_value(json_object_get(o, "status"));
        if (lines == 0) { /* the time of day, from the monotonic clock and its offset */
            struct tm tm = {0};
            int msec;
            assert_int_equal(sscanf(str(o, "ts"), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon,
                                    &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &msec),
                             7);
            tm.tm_year -= 1900;
            tm.tm_mon -= 1;
            long ago = (long)time(NULL) - (long)timegm(&tm);
            assert_in_range(ago, 0, 5);
        }
        assert_int_equal(status, statuses[i % ns]);
        if (status < 400)
            assert_true(gw_access_sampled(rid, strlen(rid), 0.3));
        else
            errors++;
        lines++;
        json_decref(o);
    }
    fclose(f);
    assert_int_equal(lines, expect);
    assert_int_equal(errors, expect_errors);
    unlink(path);
    rmdir(dir);
}

/* Off: nothing is formatted, nothing counted. */
static void
test_off_logs_nothing(void **state)
{
    (void)state;
    struct gw_access a;
    gw_access_init(&a, NULL, 0, 0.5);
    assert_false(gw_access_on(&a));
    struct http_request h = head("GET", "/x", 2);
    struct gw_access_record r = {.request_id = "x", .http = &h, .route = "r", .status = 200};
    gw_access_log(&a, &r);
    assert_int_equal(a.sampled_out, 0);
    assert_int_equal(a.line.len, 0);
    gw_access_free(&a);
}

/* The worker remembers its names' JSON by address: a reload frees a generation's names
 * (policy_release() counts it before), and the next may put another name at the same
 * address: its line has the new name. A name too long to remember, and one that needs
 * escaping, are written as they are. */
static void
test_a_new_name_at_a_remembered_address_is_written_as_it_is(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-access-XXXXXX", path[64];
    struct gw_access a;
    struct logwriter *lw = open_log(dir, path, 1.0, &a);
    struct http_request h = head("GET", "/x", 2);
    char route[32], tier[16], limit[16];
    strcpy(route, "GET /old");
    strcpy(tier, "free");
    strcpy(limit, "lim-old");
    struct gw_access_record r = {.now_us = util_mono_us(),
                                 .request_id = "id",
                                 .http = &h,
                                 .route = route,
                                 .status = 200,
                                 .tier = tier,
                                 .limit = limit,
                                 .client = "c"};
    gw_access_log(&a, &r);
    gw_access_log(&a, &r);
    struct policy *old = xcalloc(1, sizeof(*old)); /* a policy freed: a reload */
    old->refs = 1;
    policy_release(old);
    strcpy(route, "GET /new \"quoted\"");
    strcpy(tier, "pro");
    strcpy(limit, "lim-new");
    gw_access_log(&a, &r);
    char long_route[160]; /* past what a slot holds */
    memset(long_route, 'r', 150);
    long_route[150] = '\0';
    r.route = long_route;
    gw_access_log(&a, &r);
    gw_access_log(&a, &r);
    gw_access_free(&a);
    logwriter_close(lw);

    char *text = NULL;
    size_t cap = 0;
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static const char *const routes[] = {"GET /old", "GET /old", "GET /new \"quoted\"", NULL, NULL};
    static const char *const tiers[] = {"free", "free", "pro", "pro", "pro"};
    static const char *const limits[] = {"lim-old", "lim-old", "lim-new", "lim-new", "lim-new"};
    for (int i = 0; i < 5; i++) {
        ssize_t n = getline(&text, &cap, f);
        assert_true(n > 0);
        struct sbuf b = {.p = text, .len = (size_t)n};
        json_t *o = parse_line(&b);
        if (routes[i])
            assert_string_equal(str(o, "route"), routes[i]);
        else
            assert_int_equal(strspn(str(o, "route"), "r"), 150);
        assert_string_equal(str(o, "tier"), tiers[i]);
        assert_string_equal(str(json_object_get(o, "limit"), "policy"), limits[i]);
        json_decref(o);
    }
    assert_int_equal(getline(&text, &cap, f), -1);
    fclose(f);
    free(text);
    unlink(path);
    rmdir(dir);
}

/* Names of one line that share a slot of the worker's remembered names (the route and the
 * limit at addresses that map to the same one): each line still has each name whole. */
static void
test_names_of_one_line_in_the_same_slot_stay_whole(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-access-XXXXXX", path[64];
    struct gw_access a;
    struct logwriter *lw = open_log(dir, path, 1.0, &a);
    struct http_request h = head("GET", "/x", 2);
    enum { N = 1024 };
    static char pool[N * 16];
    strcpy(pool, "GET /a-longer-route"); /* the first 32 bytes */
    for (int k = 2; k < N; k++)
        snprintf(pool + 16 * k, 16, k % 2 ? "lim-%d" : "tier-%d", k);
    for (int k = 3; k + 1 < N; k += 2) {
        struct gw_access_record r = {.now_us = util_mono_us(),
                                     .request_id = "id",
                                     .http = &h,
                                     .route = pool,
                                     .status = 200,
                                     .limit = pool + 16 * k,
                                     .tier = pool + 16 * (k + 1),
                                     .client = "c"};
        gw_access_log(&a, &r);
    }
    gw_access_free(&a);
    logwriter_close(lw);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *text = NULL;
    size_t cap = 0;
    for (int k = 3; k + 1 < N; k += 2) {
        ssize_t n = getline(&text, &cap, f);
        assert_true(n > 0);
        struct sbuf b = {.p = text, .len = (size_t)n};
        json_t *o = parse_line(&b);
        assert_string_equal(str(o, "route"), "GET /a-longer-route");
        assert_string_equal(str(json_object_get(o, "limit"), "policy"), pool + 16 * k);
        assert_string_equal(str(o, "tier"), pool + 16 * (k + 1));
        json_decref(o);
    }
    fclose(f);
    free(text);
    unlink(path);
    rmdir(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_line_has_every_field),
        cmocka_unit_test(test_absent_values_are_null),
        cmocka_unit_test(test_hostile_bytes_stay_inside_their_strings),
        cmocka_unit_test(test_sampling_is_a_function_of_the_id),
        cmocka_unit_test(test_the_sample_keeps_every_error_and_counts_the_rest),
        cmocka_unit_test(test_off_logs_nothing),
        cmocka_unit_test(test_a_new_name_at_a_remembered_address_is_written_as_it_is),
        cmocka_unit_test(test_names_of_one_line_in_the_same_slot_stay_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
