/* fuzz_http_parse.c - libFuzzer target for the HTTP parser, chunked decoder and URL helpers. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Not assert(): release builds define NDEBUG. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A small deterministic generator seeded from the input, for split points. */
static uint64_t
next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void
check_inside(struct http_str s, const char *buf, size_t len)
{
    CHECK(s.p >= buf && s.len <= len && s.p - buf <= (ptrdiff_t)(len - s.len));
}

static int
is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static void
check_request(const struct http_request *req, const char *buf, size_t head)
{
    check_inside(req->method_str, buf, head);
    check_inside(req->target, buf, head);
    check_inside(req->path, buf, head);
    check_inside(req->query, buf, head);
    CHECK(req->method_str.len > 0 && req->target.len > 0);
    CHECK(req->path.p == req->target.p && req->path.len <= req->target.len);
    CHECK(req->target.p[0] == '/' || (req->target.len == 1 && req->method == HTTP_OPTIONS));
    CHECK(req->minor_version == 0 || req->minor_version == 1);
    CHECK(req->nheaders <= HTTP_MAX_HEADERS);
    CHECK(req->content_length >= -1);
    CHECK(!(req->chunked && req->content_length >= 0));
    CHECK(req->keep_alive == 0 || req->keep_alive == 1);
    CHECK(req->minor_version == 0 || req->host.p);
    if (req->host.p)
        check_inside(req->host, buf, head);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        check_inside(h->name, buf, head);
        check_inside(h->value, buf, head);
        CHECK(h->name.len > 0);
        for (size_t j = 0; j < h->name.len; j++)
            CHECK(is_tchar((unsigned char)h->name.p[j]));
        for (size_t j = 0; j < h->value.len; j++) {
            unsigned char c = (unsigned char)h->value.p[j];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (h->value.len) {
            CHECK(h->value.p[0] != ' ' && h->value.p[0] != '\t');
            CHECK(h->value.p[h->value.len - 1] != ' ' && h->value.p[h->value.len - 1] != '\t');
        }
        /* Looking a header up by its own name finds it or an earlier one. */
        char name[256];
        if (h->name.len < sizeof(name)) {
            memcpy(name, h->name.p, h->name.len);
            name[h->name.len] = '\0';
            const struct http_str *v = http_header_get(req, name);
            CHECK(v && v >= &req->headers[0].value && v <= &h->value);
        }
    }
}

/* Percent-decodes s into a buffer of exactly its size. */
static void
check_pct(const char *s, size_t n, int plus)
{
    char *out = malloc(n ? n : 1);
    size_t outlen = (size_t)-1;
    CHECK(out);
    int rc = http_pct_decode(s, n, out, &outlen, plus);
    CHECK(rc == 0 || rc == -1);
    CHECK(outlen <= n);
    if (rc == 0)
        CHECK(memchr(out, 0, outlen) == NULL);
    free(out);
}

static void
check_query(const char *q, size_t qn, const char *name, size_t namelen)
{
    struct http_str v;
    if (http_query_find(q, qn, name, namelen, &v) != 1)
        return;
    check_inside(v, q, qn);
    CHECK(memchr(v.p, '&', v.len) == NULL);
    CHECK(v.p == q + qn || v.len == qn - (size_t)(v.p - q) || v.p[v.len] == '&');
    /* The key right before the value is the name, at the start of a parameter. */
    size_t off = (size_t)(v.p - q);
    int with_eq = off >= namelen + 1 && q[off - 1] == '=' &&
                  memcmp(q + off - 1 - namelen, name, namelen) == 0 &&
                  (off - 1 == namelen || q[off - 2 - namelen] == '&');
    int bare = v.len == 0 && off >= namelen && memcmp(q + off - namelen, name, namelen) == 0 &&
               (off == namelen || q[off - 1 - namelen] == '&');
    CHECK(with_eq || bare);
}

/* Decodes body[0..n) in pieces cut by rng (or whole when rng is NULL). */
static int
decode(const char *body, size_t n, uint64_t *rng, char *payload, size_t *plen, size_t *used)
{
    struct http_chunked d;
    size_t off = 0, total = 0;
    int rc = 0;
    memset(&d, 0, sizeof(d));
    do {
        size_t piece = n - off;
        if (rng && piece > 0)
            piece = (size_t)(next_rand(rng) % (piece + 1));
        /* A heap buffer of exactly the piece's size, so overruns are seen. */
        char *out = malloc(piece ? piece : 1);
        size_t consumed = (size_t)-1, produced = (size_t)-1;
        CHECK(out);
        rc = http_chunked_decode(&d, body + off, piece, &consumed, out, &produced);
        CHECK(rc >= -1 && rc <= 1);
        CHECK(consumed <= piece);
        CHECK(produced <= consumed);
        if (rc == 0)
            CHECK(consumed == piece);
        memcpy(payload + total, out, produced);
        free(out);
        total += produced;
        off += consumed;
    } while (rc == 0 && off < n);
    *plen = total;
    *used = off;
    return rc;
}

static void
check_chunked(const char *body, size_t n, uint64_t seed)
{
    char *p1 = malloc(n ? n : 1), *p2 = malloc(n ? n : 1);
    size_t l1, l2, u1, u2;
    CHECK(p1 && p2);
    int r1 = decode(body, n, NULL, p1, &l1, &u1);
    int r2 = decode(body, n, &seed, p2, &l2, &u2);
    /* The split points change nothing. */
    CHECK(r1 == r2);
    CHECK(u1 == u2);
    CHECK(l1 == l2 && memcmp(p1, p2, l1) == 0);
    CHECK(l1 <= u1);
    free(p1);
    free(p2);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct http_request req;
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ size;
    for (size_t i = 0; i < size; i++)
        seed = (seed ^ data[i]) * 0x100000001b3ull;
    if (!seed)
        seed = 1;

    int r = http_parse_request(buf, size, &req);
    CHECK(r <= 0 || (size_t)r <= size);
    CHECK(r > 0 || r == HTTP_PARSE_INCOMPLETE || r == HTTP_PARSE_BAD || r == HTTP_PARSE_TOO_MANY ||
          r == HTTP_PARSE_VERSION || r == HTTP_PARSE_BAD_LENGTH || r == HTTP_PARSE_BAD_ENCODING);

    /* Stateless: a prefix is incomplete, or gives the same answer. */
    for (int k = 0; k < 2 && size > 0; k++) {
        size_t cut = (size_t)(next_rand(&seed) % size);
        struct http_request req2;
        int r2 = http_parse_request(buf, cut, &req2);
        if (r > 0)
            CHECK(cut >= (size_t)r ? r2 == r : r2 == HTTP_PARSE_INCOMPLETE);
        else
            CHECK(r2 == HTTP_PARSE_INCOMPLETE || r2 == r);
    }

    if (r > 0) {
        struct http_request again;
        CHECK(http_parse_request(buf, (size_t)r, &again) == r);
        check_request(&req, buf, (size_t)r);
        check_pct(req.path.p, req.path.len, 0);
        check_pct(req.query.p, req.query.len, 1);
        check_query(req.query.p, req.query.len, "a", 1);
        if (req.query.len) {
            /* The first parameter's name, whatever it is. */
            const char *q = req.query.p, *e = q;
            while (e < q + req.query.len && *e != '&' && *e != '=')
                e++;
            check_query(q, req.query.len, q, (size_t)(e - q));
        }
        check_chunked(buf + r, size - (size_t)r, seed);
    } else {
        /* Not a request head: give the whole input to the other decoders. */
        check_chunked(buf, size, seed);
        check_pct(buf, size, (int)(seed & 1));
        if (size > 0)
            check_query(buf + 1, size - 1, buf, (size_t)(data[0] % 4 < size ? data[0] % 4 : 0));
    }
    return 0;
}
