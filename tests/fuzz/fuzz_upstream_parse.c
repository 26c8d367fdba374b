/* fuzz_upstream_parse.c - libFuzzer target for the upstream answer parser. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_parse.h"
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

static uint64_t
next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int
is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int
eq_nocase(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
        if (x != *b)
            return 0;
    }
    return *a == *b;
}

/* What one parse gave, copied out of the parser. */
struct outcome {
    int rc;
    enum upstream_error error;
    int status, minor_version, reusable;
    size_t nfields;
    char *fields; /* "name\0value\0" each */
    size_t fields_len;
    char *body;
    size_t body_len;
    char *te;      /* transfer_encoding, or NULL */
    char *interim; /* each interim answer: "status\0" then "name\0value\0" each, then "\n" */
    size_t interim_len;
};

/* Token field names, values without control bytes or outer whitespace, no hop-by-hop field. */
static void
check_fields(const struct upstream_response *res)
{
    static const char *const hidden[] = {"connection",          "keep-alive", "proxy-authenticate",
                                         "proxy-authorization", "te",         "trailer",
                                         "transfer-encoding",   "upgrade",    "content-length"};

    for (size_t i = 0; i < res->nfields; i++) {
        const struct upstream_header *h = &res->fields[i];
        CHECK(h->name_len > 0 && strlen(h->name) == h->name_len);
        CHECK(strlen(h->value) == h->value_len);
        for (size_t j = 0; j < h->name_len; j++)
            CHECK(is_tchar((unsigned char)h->name[j]));
        for (size_t j = 0; j < h->value_len; j++) {
            unsigned char c = (unsigned char)h->value[j];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (h->value_len) {
            CHECK(h->value[0] != ' ' && h->value[0] != '\t');
            CHECK(h->value[h->value_len - 1] != ' ' && h->value[h->value_len - 1] != '\t');
        }
        for (size_t j = 0; j < sizeof hidden / sizeof hidden[0]; j++)
            CHECK(!eq_nocase(h->name, hidden[j]));
        CHECK(upstream_response_field(res, h->name) != NULL);
    }
}

static void
check_response(const struct upstream_response *res, int rc, size_t max_body)
{
    CHECK(res->detail != NULL && res->body != NULL);
    if (rc != UPSTREAM_PARSE_DONE) {
        CHECK(res->error == UPSTREAM_PROTOCOL || res->error == UPSTREAM_TOO_LARGE ||
              res->error == UPSTREAM_CONNECT);
        CHECK(res->detail[0] != '\0');
        CHECK(res->nfields == 0 && res->body_len == 0 && res->transfer_encoding == NULL);
        return;
    }
    CHECK(res->error == UPSTREAM_OK);
    CHECK(res->status >= 200 && res->status <= 599);
    CHECK(res->minor_version == 0 || res->minor_version == 1);
    CHECK(res->body_len <= max_body);
    CHECK(res->body[res->body_len] == '\0');
    if (res->transfer_encoding != NULL) {
        /* Codings of an HTTP/1.1 answer with a body, none of them chunked. */
        const char *te = res->transfer_encoding;
        size_t n = strlen(te);
        CHECK(n > 0 && res->minor_version == 1 && res->status != 204 && res->status != 304);
        CHECK(te[0] != ' ' && te[0] != ',' && te[n - 1] != ' ' && te[n - 1] != ',');
        for (size_t i = 0; i < n; i++)
            CHECK(te[i] == '\t' || ((unsigned char)te[i] >= 0x20 && te[i] != 0x7f));
        CHECK(!eq_nocase(te, "chunked") && !(n >= 9 && eq_nocase(te + n - 9, ", chunked")));
    }
    check_fields(res);
}

/* An interim answer: a 1xx but 101, fields checked like a final answer's, no body. */
static void
check_interim(struct upstream_parser *ps, struct sbuf *log)
{
    struct upstream_response res;
    char status[8];

    upstream_parser_response(ps, &res);
    CHECK(res.error == UPSTREAM_OK && res.detail != NULL && res.detail[0] == '\0');
    CHECK(res.status >= 100 && res.status <= 199 && res.status != 101);
    CHECK(res.body != NULL && res.body_len == 0 && res.transfer_encoding == NULL);
    CHECK(!upstream_parser_reusable(ps));
    check_fields(&res);
    snprintf(status, sizeof status, "%d", res.status);
    sbuf_add(log, status, strlen(status) + 1);
    for (size_t i = 0; i < res.nfields; i++) {
        sbuf_add(log, res.fields[i].name, res.fields[i].name_len + 1);
        sbuf_add(log, res.fields[i].value, res.fields[i].value_len + 1);
    }
    sbuf_add(log, "\n", 1);
}

/* Feeds in[0..n) in pieces cut by rng (whole when rng is NULL), then EOF when eof. */
static void
run(struct upstream_parser *ps, const char *in, size_t n, uint64_t *rng, int eof, size_t max_body,
    struct outcome *o)
{
    struct upstream_response res;
    struct sbuf log = {0};
    size_t off = 0, pos = 0;
    int rc = UPSTREAM_PARSE_MORE;

    while (off < n && rc == UPSTREAM_PARSE_MORE) {
        size_t room, k = n - off;
        char *space = upstream_parser_space(ps, &room);
        CHECK(room > 0);
        if (rng != NULL)
            k = 1 + (size_t)(next_rand(rng) % k);
        if (k > room)
            k = room;
        memcpy(space, in + off, k);
        off += k;
        rc = upstream_parser_feed(ps, k);
        while (rc == UPSTREAM_PARSE_INTERIM) {
            check_interim(ps, &log);
            rc = upstream_parser_resume(ps);
        }
        CHECK(rc >= UPSTREAM_PARSE_ERROR && rc <= UPSTREAM_PARSE_DONE);
    }
    if (rc == UPSTREAM_PARSE_MORE && eof)
        rc = upstream_parser_eof(ps);
    if (rc != UPSTREAM_PARSE_MORE) {
        /* DONE and ERROR stick. */
        CHECK(upstream_parser_eof(ps) == rc);
    }
    upstream_parser_response(ps, &res);
    if (rc != UPSTREAM_PARSE_MORE)
        check_response(&res, rc, max_body);
    memset(o, 0, sizeof *o);
    o->rc = rc;
    o->error = res.error;
    o->status = res.status;
    o->minor_version = res.minor_version;
    o->reusable = rc == UPSTREAM_PARSE_DONE && upstream_parser_reusable(ps);
    o->nfields = res.nfields;
    for (size_t i = 0; i < res.nfields; i++)
        o->fields_len += res.fields[i].name_len + res.fields[i].value_len + 2;
    o->fields = malloc(o->fields_len + 1);
    CHECK(o->fields != NULL);
    for (size_t i = 0; i < res.nfields; i++) {
        memcpy(o->fields + pos, res.fields[i].name, res.fields[i].name_len + 1);
        pos += res.fields[i].name_len + 1;
        memcpy(o->fields + pos, res.fields[i].value, res.fields[i].value_len + 1);
        pos += res.fields[i].value_len + 1;
    }
    o->body = malloc(res.body_len + 1);
    CHECK(o->body != NULL);
    memcpy(o->body, res.body, res.body_len);
    o->body_len = res.body_len;
    if (res.transfer_encoding != NULL) {
        o->te = strdup(res.transfer_encoding);
        CHECK(o->te != NULL);
    }
    o->interim = log.p;
    o->interim_len = log.len;
}

static void
same(const struct outcome *a, const struct outcome *b)
{
    CHECK(a->rc == b->rc && a->error == b->error);
    CHECK(a->status == b->status && a->minor_version == b->minor_version);
    CHECK(a->nfields == b->nfields && a->fields_len == b->fields_len);
    CHECK(memcmp(a->fields, b->fields, a->fields_len) == 0);
    CHECK(a->body_len == b->body_len && memcmp(a->body, b->body, a->body_len) == 0);
    CHECK((a->te == NULL) == (b->te == NULL) && (a->te == NULL || strcmp(a->te, b->te) == 0));
    CHECK(a->interim_len == b->interim_len &&
          (a->interim_len == 0 || memcmp(a->interim, b->interim, a->interim_len) == 0));
}

static void
outcome_free(struct outcome *o)
{
    free(o->fields);
    free(o->body);
    free(o->te);
    free(o->interim);
}

/*
 * The first byte picks the request (bit 0: HEAD), the body cap (bit 1: 64
 * bytes, else 1 MiB) and whether the input ends with the connection's EOF
 * (bit 2); the rest is the answer as read from the connection.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct upstream_parser *ps, *again;
    struct outcome whole, cut, reused;
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ size;
    int head, eof;
    size_t max_body;
    const char *in;

    if (size < 1)
        return 0;
    head = data[0] & 1;
    max_body = data[0] & 2 ? 64 : (size_t)1 << 20;
    eof = (data[0] & 4) != 0;
    in = (const char *)data + 1;
    size--;
    for (size_t i = 0; i < size; i++)
        seed = (seed ^ (uint8_t)in[i]) * 0x100000001b3ull;
    if (seed == 0)
        seed = 1;

    ps = upstream_parser_new(head, max_body);
    run(ps, in, size, NULL, eof, max_body, &whole);

    /* The way the bytes are cut into reads changes nothing. */
    again = upstream_parser_new(head, max_body);
    run(again, in, size, &seed, eof, max_body, &cut);
    same(&whole, &cut);
    upstream_parser_free(again);

    /* A reset parser (a kept connection) gives the same answer again. */
    upstream_parser_reset(ps, head);
    CHECK(!upstream_parser_started(ps));
    run(ps, in, size, &seed, eof, max_body, &reused);
    same(&whole, &reused);
    upstream_parser_free(ps);

    outcome_free(&whole);
    outcome_free(&cut);
    outcome_free(&reused);
    return 0;
}
