/* fuzz_httpcache.c - libFuzzer target for the HTTP caching rules, HTTP-dates and Dictionaries. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"
#include "httpcache.h"
#include "sf.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Not assert(): release builds define NDEBUG. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define NOW_MS 1700000000000ull
#define DELTA_MAX_MS (2147483648ll * 1000)

static const int statuses[] = {200, 203, 204, 206, 300, 301, 304, 308, 404, 500};
static const char *const targeted[] = {"cdn-cache-control", "x-cache-control"};

/* ---- Dictionaries ------------------------------------------------------------------------- */

struct members {
    const char *s;
    size_t len;
    long n;
};

static void
check_member(const struct sf_member *m, void *ctx)
{
    struct members *ms = ctx;
    const char *end = ms->s + ms->len;
    CHECK(m->key >= ms->s && m->key + m->key_len <= end && m->key_len > 0);
    CHECK((m->key[0] >= 'a' && m->key[0] <= 'z') || m->key[0] == '*');
    CHECK(m->type >= SF_INTEGER && m->type <= SF_INNER_LIST);
    if (m->text_len)
        CHECK((m->text >= ms->s && m->text + m->text_len <= end) || m->type == SF_BOOLEAN);
    if (m->params_len)
        CHECK(m->params >= ms->s && m->params + m->params_len <= end && m->params[0] == ';');
    if (m->type == SF_INTEGER)
        CHECK(m->num > -1000000000000000 && m->num < 1000000000000000);
    if (m->type == SF_BOOLEAN)
        CHECK(m->num == 0 || m->num == 1);
    ms->n++;
}

static void
fuzz_dictionary(const char *s, size_t len)
{
    struct members ms = {s, len, 0};
    long r = sf_parse_dictionary(s, len, check_member, &ms);
    CHECK(r >= -1);
    CHECK(r == -1 ? ms.n == 0 : ms.n == r);
    CHECK(sf_parse_dictionary(s, len, NULL, NULL) == r);
}

/* ---- HTTP-dates --------------------------------------------------------------------------- */

static void
fuzz_date(const char *s, size_t len)
{
    int64_t t = 42;
    if (httpcache_parse_date(s, len, &t) < 0) {
        CHECK(t == 42);
        return;
    }
    /* A date is one of the three forms, and formats back to a date that reads the same. */
    CHECK(len == 29 || len == 24 || (len >= 30 && len <= 33));
    char out[30], again[30];
    httpcache_format_date(t, out);
    CHECK(strlen(out) == 29);
    int64_t u;
    CHECK(httpcache_parse_date(out, 29, &u) == 0 && u == t);
    httpcache_format_date(u, again);
    CHECK(memcmp(out, again, 30) == 0);
}

/* ---- the judge ---------------------------------------------------------------------------- */

static void
check_verdict(const struct httpcache_verdict *v, const struct httpcache_policy *p, int status)
{
    if (!v->storable) {
        CHECK(v->why != NULL && v->why[0] != '\0');
        CHECK(v->lifetime_ms == 0 && v->initial_age_ms == 0);
        CHECK(!v->heuristic && !v->no_cache && !v->must_revalidate && !v->has_validator);
        CHECK(v->swr_ms == -1 && v->sie_ms == -1 && !v->vary && v->vary_names[0] == '\0');
        return;
    }
    CHECK(v->why == NULL);
    CHECK(status == 200 || status == 203 || status == 204 || status == 300 || status == 301 ||
          status == 308);
    if (p->ttl_origin)
        CHECK(v->lifetime_ms <= (uint64_t)DELTA_MAX_MS);
    else if (p->override)
        CHECK(v->lifetime_ms == p->ttl_ms);
    else
        CHECK(v->lifetime_ms <= p->ttl_ms);
    if (v->heuristic)
        CHECK(p->ttl_origin && v->lifetime_ms <= 86400000);
    if (v->no_cache)
        CHECK(v->must_revalidate);
    /* Stored only when something could reuse it. */
    CHECK(v->has_validator || (!v->no_cache && v->lifetime_ms > v->initial_age_ms));
    CHECK(v->swr_ms >= -1 && v->swr_ms <= DELTA_MAX_MS);
    CHECK(v->sie_ms >= -1 && v->sie_ms <= DELTA_MAX_MS);
    size_t n = strnlen(v->vary_names, sizeof(v->vary_names));
    CHECK(n < sizeof(v->vary_names));
    CHECK(v->vary == (n > 0));
    for (size_t i = 0; i < n; i++)
        CHECK(!(v->vary_names[i] >= 'A' && v->vary_names[i] <= 'Z') && v->vary_names[i] != ' ');
}

static bool
same_verdict(const struct httpcache_verdict *a, const struct httpcache_verdict *b)
{
    return a->storable == b->storable && a->why == b->why && a->lifetime_ms == b->lifetime_ms &&
           a->initial_age_ms == b->initial_age_ms && a->heuristic == b->heuristic &&
           a->no_cache == b->no_cache && a->must_revalidate == b->must_revalidate &&
           a->swr_ms == b->swr_ms && a->sie_ms == b->sie_ms &&
           a->has_validator == b->has_validator && a->vary == b->vary &&
           strcmp(a->vary_names, b->vary_names) == 0;
}

/* ---- 304 updates and stored values -------------------------------------------------------- */

static void
fuzz_update(const struct http_header *f, size_t n)
{
    /* The stored lines of the first half of the fields, updated by the second half. */
    struct sbuf stored = {0}, out = {0};
    httpcache_replay_fields(f, n / 2, &stored);
    sbuf_adds(&stored, "");
    httpcache_update_fields(stored.p, stored.len, f + n / 2, n - n / 2, &out);
    sbuf_adds(&out, "");
    CHECK(out.len == 0 ||
          (out.len >= 2 && out.p[out.len - 2] == '\r' && out.p[out.len - 1] == '\n'));
    char value[64];
    static const char *const names[] = {"etag", "last-modified", "cache-control", "x"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        long r = httpcache_field_in_lines(out.p, out.len, names[i], value, sizeof(value));
        CHECK(r >= -1 && r < (long)sizeof(value));
        if (r >= 0)
            CHECK(value[r] == '\0'); /* a value may hold NUL bytes: not strlen */
    }
    sbuf_free(&stored);
    sbuf_free(&out);
}

/*
 * Input: a byte of flags (bit 0 ttl = "origin", bit 1 override, bit 2 the
 * targeted fields, bits 3-6 the status), two bytes of response delay in ms,
 * then header fields as "name:value" lines separated by '\n' (a line without
 * ':' is a name with an empty value). The fields are judged as an answer and
 * read as a request's; every value also goes to the date and Dictionary
 * parsers.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    uint8_t flags = data[0];
    uint64_t delay = (uint64_t)data[1] << 8 | data[2];
    size_t len = size - 3;
    char *text = malloc(len ? len : 1); /* an exact copy, so ASan sees reads past it */
    CHECK(text != NULL);
    memcpy(text, data + 3, len);

    struct http_request req;
    memset(&req, 0, sizeof(req));
    req.method = HTTP_GET;
    size_t n = 0;
    for (size_t i = 0; i < len && n < HTTP_MAX_HEADERS;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *line = text + i;
        size_t llen = end - i;
        const char *colon = memchr(line, ':', llen);
        struct http_header *h = &req.headers[n++];
        h->name = (struct http_str){line, colon ? (size_t)(colon - line) : llen};
        h->value = colon ? (struct http_str){colon + 1, llen - h->name.len - 1}
                         : (struct http_str){line + llen, 0};
        i = end + 1;
    }
    req.nheaders = n;

    for (size_t i = 0; i < n; i++) {
        fuzz_date(req.headers[i].value.p, req.headers[i].value.len);
        fuzz_dictionary(req.headers[i].value.p, req.headers[i].value.len);
    }

    struct httpcache_policy p = {.ttl_ms = 300000,
                                 .ttl_origin = flags & 1,
                                 .override = (flags & 2) != 0,
                                 .targeted = (flags & 4) ? targeted : NULL,
                                 .ntargeted = (flags & 4) ? 2 : 0};
    int status = statuses[((flags >> 3) & 15) % (sizeof(statuses) / sizeof(statuses[0]))];
    struct httpcache_answer a = {.status = status,
                                 .f = req.headers,
                                 .n = n,
                                 .body_len = 10,
                                 .request_ms = NOW_MS,
                                 .response_ms = NOW_MS + delay};
    struct httpcache_verdict v, w;
    httpcache_judge(&a, &p, &v);
    check_verdict(&v, &p, status);
    httpcache_judge(&a, &p, &w);
    CHECK(same_verdict(&v, &w));

    struct httpcache_request r;
    httpcache_request_directives(&req, &r);
    CHECK(r.max_age >= -1 && r.max_age <= DELTA_MAX_MS);
    CHECK(r.min_fresh >= -1 && r.min_fresh <= DELTA_MAX_MS);
    CHECK(r.max_stale >= -1 && (r.max_stale <= DELTA_MAX_MS || r.max_stale == INT64_MAX));

    httpcache_not_modified(&req, "\"x\"", "Sun, 06 Nov 1994 08:49:37 GMT");
    httpcache_not_modified(&req, NULL, NULL);
    if (n > 0)
        fuzz_update(req.headers, n);
    free(text);
    return 0;
}
