/* fuzz_response_head.c - libFuzzer target: a hostile upstream's answer, as the gateway passes it
 * on. The input is an upstream answer; once the upstream parser takes it, its fields are
 * replayed (httpcache_replay_fields), the gateway's own lines are added (X-Cache, Age, an ETag
 * of any length) and the head is written (http_head_write). A client reading that answer with
 * a strict parser must find exactly one answer: the same status, the gateway's lines and every
 * replayed field in order, Content-Type and Content-Length once, the body whole, and nothing
 * after it (no response splitting, whatever the upstream sent). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "head.h"
#include "http_parse.h"
#include "httpcache.h"
#include "upstream_parse.h"
#include "util.h"

/* Checked in every build type (assert() vanishes under NDEBUG). */
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);                  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_BODY (64 * 1024)

/* Parses in[0..n) whole as one answer (to a GET); returns DONE, ERROR or MORE. */
static int
parse(struct upstream_parser *ps, const char *in, size_t n)
{
    size_t off = 0;
    int rc = UPSTREAM_PARSE_MORE;
    while (off < n && rc == UPSTREAM_PARSE_MORE) {
        size_t room;
        char *space = upstream_parser_space(ps, &room);
        size_t k = n - off < room ? n - off : room;
        memcpy(space, in + off, k);
        off += k;
        rc = upstream_parser_feed(ps, k);
        while (rc == UPSTREAM_PARSE_INTERIM)
            rc = upstream_parser_resume(ps);
    }
    if (rc == UPSTREAM_PARSE_MORE)
        rc = upstream_parser_eof(ps);
    return rc;
}

static size_t
count_field(const struct upstream_response *res, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < res->nfields; i++)
        n += strcasecmp(res->fields[i].name, name) == 0;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256 * 1024)
        return 0;
    struct upstream_parser *up = upstream_parser_new(0, MAX_BODY);
    if (parse(up, (const char *)data, size) != UPSTREAM_PARSE_DONE) {
        upstream_parser_free(up);
        return 0;
    }
    struct upstream_response res;
    upstream_parser_response(up, &res);
    /* An answer passed on in its transfer coding is close-delimited: another path. One with
     * nearly the upstream parser's most fields would, with the gateway's own, be more than
     * this test's client reads (a limit of that parser, not of the answer). */
    if (res.transfer_encoding || res.nfields + 8 > UPSTREAM_MAX_FIELDS) {
        upstream_parser_free(up);
        return 0;
    }

    /* What the gateway stores and replays of the answer (proxy.c, upstream_entry). */
    struct http_header *f = xcalloc(res.nfields + 1, sizeof(*f));
    for (size_t i = 0; i < res.nfields; i++)
        f[i] = (struct http_header){{res.fields[i].name, res.fields[i].name_len},
                                    {res.fields[i].value, res.fields[i].value_len}};
    struct sbuf replay = {0};
    httpcache_replay_fields(f, res.nfields, &replay);
    const char *ct = upstream_response_field(&res, "content-type");
    const char *etag = upstream_response_field(&res, "etag");
    struct sbuf own = {0}; /* what gw_reply_entry writes before the replayed fields */
    sbuf_adds(&own, "X-Cache: HIT\r\nAge: 7\r\n");
    if (etag && etag[0])
        sbuf_printf(&own, "ETag: %s\r\n", etag);

    const char date[] = "Date: Mon, 07 Dec 2026 01:02:03 GMT\r\n";
    struct http_head head = {
        .status = res.status,
        .minor_version = 1,
        .date = date,
        .date_len = sizeof(date) - 1,
        .content_type = ct,
        .content_length = res.status != 204 && res.status != 304,
        .body_len = res.body_len,
        .headers = own.p,
        .headers_len = own.len,
        .headers2 = replay.p,
        .headers2_len = replay.len,
        .connection = size % 2 ? HTTP_HEAD_CONN_CLOSE : HTTP_HEAD_CONN_NONE,
    };
    size_t cap = http_head_size(&head);
    char *wire = xmalloc(cap + res.body_len + 1);
    size_t len = http_head_write(wire, &head);
    CHECK(len <= cap);
    if (head.content_length) {
        memcpy(wire + len, res.body, res.body_len);
        len += res.body_len;
    }

    /* The client's reading: one answer, all of it, as meant. */
    struct upstream_parser *cp = upstream_parser_new(0, MAX_BODY);
    int rc = parse(cp, wire, len);
    struct upstream_response got;
    upstream_parser_response(cp, &got);
    if (rc != UPSTREAM_PARSE_DONE)
        fprintf(stderr, "the answer as sent does not parse: %s\n%.*s\n", got.detail, (int)len,
                wire);
    CHECK(rc == UPSTREAM_PARSE_DONE);
    CHECK(got.status == res.status);
    CHECK(head.connection == HTTP_HEAD_CONN_CLOSE || upstream_parser_reusable(cp));
    if (head.content_length)
        CHECK(got.body_len == res.body_len && memcmp(got.body, res.body, res.body_len) == 0);
    CHECK(count_field(&got, "x-cache") == 1 && count_field(&got, "age") == 1);
    CHECK(count_field(&got, "content-type") == (ct ? 1u : 0u));
    CHECK(count_field(&got, "etag") == (etag && etag[0] ? 1u : 0u));
    if (ct)
        CHECK(strcmp(upstream_response_field(&got, "content-type"), ct) == 0);
    /* Every replayed line comes back as the same field, in order, after the gateway's own. */
    size_t at = 3 + (etag && etag[0]) + (ct != NULL); /* Date, X-Cache, Age, ETag, Content-Type */
    for (const char *l = replay.p; l && l < replay.p + replay.len;) {
        const char *colon = strchr(l, ':');
        const char *eol = strstr(l, "\r\n");
        CHECK(colon && eol && colon < eol);
        CHECK(at < got.nfields);
        const struct upstream_header *g = &got.fields[at++];
        CHECK(g->name_len == (size_t)(colon - l) && strncasecmp(g->name, l, g->name_len) == 0);
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        CHECK(g->value_len == (size_t)(eol - v) && memcmp(g->value, v, g->value_len) == 0);
        l = eol + 2;
    }
    CHECK(at == got.nfields);

    upstream_parser_free(cp);
    upstream_parser_free(up);
    free(wire);
    free(f);
    sbuf_free(&replay);
    sbuf_free(&own);
    return 0;
}
