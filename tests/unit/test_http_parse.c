/* test_http_parse.c - unit tests of the request-head parser, chunked decoder and URL helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http_parse.h"

#define LIT(s) s, sizeof(s) - 1

static struct http_request req;

static int
parse(const char *s, size_t n)
{
    memset(&req, 0xa5, sizeof(req));
    return http_parse_request(s, n, &req);
}

static int
parse_str(const char *s)
{
    return parse(s, strlen(s));
}

static void
assert_str(struct http_str got, const char *want)
{
    size_t n = strlen(want);
    if (got.len != n || (n && memcmp(got.p, want, n) != 0))
        fail_msg("got \"%.*s\", want \"%s\"", (int)got.len, got.p ? got.p : "", want);
}

/* Every strict prefix of s is INCOMPLETE and s itself parses to want. */
static void
assert_prefixes(const char *s, int want)
{
    size_t n = strlen(s);
    /* A heap copy of the exact length lets ASan see any read past the end. */
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    for (size_t k = 0; k < n; k++) {
        int r = parse(copy, k);
        if (r != HTTP_PARSE_INCOMPLETE && (want > 0 || r != want))
            fail_msg("prefix %zu of %zu: got %d, want INCOMPLETE%s", k, n, r,
                     want > 0 ? "" : " or the final status");
    }
    assert_int_equal(parse(copy, n), want);
    free(copy);
}

/* ---- http_parse_request: valid requests ---- */

static void
test_get_full(void **state)
{
    (void)state;
    const char *s = "GET /a/b%20c?x=1&y=two HTTP/1.1\r\n"
                    "Host: example.com:8080\r\n"
                    "User-Agent: t/1.0\r\n"
                    "Accept:*/*\r\n"
                    "X-Empty:\r\n"
                    "X-Pad: \t padded value \t \r\n"
                    "\r\n";
    assert_int_equal(parse_str(s), (int)strlen(s));
    assert_int_equal(req.method, HTTP_GET);
    assert_str(req.method_str, "GET");
    assert_str(req.target, "/a/b%20c?x=1&y=two");
    assert_str(req.path, "/a/b%20c");
    assert_str(req.query, "x=1&y=two");
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.nheaders, 5);
    assert_str(req.headers[0].name, "Host");
    assert_str(req.headers[0].value, "example.com:8080");
    assert_str(req.headers[1].name, "User-Agent");
    assert_str(req.headers[1].value, "t/1.0");
    assert_str(req.headers[2].name, "Accept");
    assert_str(req.headers[2].value, "*/*");
    assert_str(req.headers[3].name, "X-Empty");
    assert_str(req.headers[3].value, "");
    assert_str(req.headers[4].name, "X-Pad");
    assert_str(req.headers[4].value, "padded value");
    assert_str(req.host, "example.com:8080");
    assert_int_equal(req.content_length, -1);
    assert_int_equal(req.chunked, 0);
    assert_int_equal(req.keep_alive, 1);
    assert_int_equal(req.expect_continue, 0);
}

static void
test_no_query(void **state)
{
    (void)state;
    assert_true(parse_str("GET / HTTP/1.1\r\nHost: h\r\n\r\n") > 0);
    assert_str(req.path, "/");
    assert_int_equal(req.query.len, 0);
    assert_true(req.query.p == req.target.p + req.target.len);

    assert_true(parse_str("GET /p? HTTP/1.1\r\nHost: h\r\n\r\n") > 0);
    assert_str(req.path, "/p");
    assert_str(req.query, "");

    assert_true(parse_str("GET /p?a?b HTTP/1.1\r\nHost: h\r\n\r\n") > 0);
    assert_str(req.path, "/p");
    assert_str(req.query, "a?b");
}

static void
test_post_body(void **state)
{
    (void)state;
    const char *head = "POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n"
                       "Expect: 100-Continue\r\n\r\n";
    char buf[256];
    snprintf(buf, sizeof(buf), "%shello world", head);
    assert_int_equal(parse_str(buf), (int)strlen(head));
    assert_int_equal(req.method, HTTP_POST);
    assert_int_equal(req.content_length, 11);
    assert_int_equal(req.chunked, 0);
    assert_int_equal(req.expect_continue, 1);
    assert_int_equal(req.keep_alive, 1);

    assert_true(parse_str("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n") > 0);
    assert_int_equal(req.content_length, 0);
    assert_true(parse_str("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:  007 \r\n\r\n") > 0);
    assert_int_equal(req.content_length, 7);
    assert_true(
        parse_str("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775807\r\n\r\n") > 0);
    assert_int_equal(req.content_length, INT64_MAX);
}

static void
test_chunked_request(void **state)
{
    (void)state;
    const char *s = "PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(parse_str(s), (int)strlen(s));
    assert_int_equal(req.method, HTTP_PUT);
    assert_int_equal(req.chunked, 1);
    assert_int_equal(req.content_length, -1);

    assert_true(parse_str("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\t CHUNKED \t\r\n\r\n") >
                0);
    assert_int_equal(req.chunked, 1);
}

static void
test_methods(void **state)
{
    (void)state;
    static const struct {
        const char *m;
        enum http_method want;
    } cases[] = {
        {"GET", HTTP_GET},         {"HEAD", HTTP_HEAD},      {"POST", HTTP_POST},
        {"PUT", HTTP_PUT},         {"PATCH", HTTP_PATCH},    {"DELETE", HTTP_DELETE},
        {"OPTIONS", HTTP_OPTIONS}, {"get", HTTP_OTHER},      {"PROPFIND", HTTP_OTHER},
        {"GETS", HTTP_OTHER},      {"M-SEARCH", HTTP_OTHER}, {"X!#$%&'*+.^_`|~1", HTTP_OTHER},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[128];
        int n = snprintf(buf, sizeof(buf), "%s /x HTTP/1.1\r\nHost: h\r\n\r\n", cases[i].m);
        assert_int_equal(parse(buf, (size_t)n), n);
        assert_int_equal(req.method, cases[i].want);
        assert_str(req.method_str, cases[i].m);
    }
}

static void
test_options_star(void **state)
{
    (void)state;
    assert_true(parse_str("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n") > 0);
    assert_int_equal(req.method, HTTP_OPTIONS);
    assert_str(req.target, "*");
    assert_str(req.path, "*");
    assert_int_equal(req.query.len, 0);
}

static void
test_keep_alive(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int want;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", 1},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: ,, close ,\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: x\r\nConnection: close\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 1},
        {"GET / HTTP/1.0\r\nConnection: te ,\tkeep-alive ,x\r\n\r\n", 1},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", 0},
        {"GET / HTTP/1.0\r\nConnection: keep-alive-ish\r\n\r\n", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int r = parse_str(cases[i].s);
        if (r <= 0 || req.keep_alive != cases[i].want)
            fail_msg("case %zu: r=%d keep_alive=%d, want %d", i, r, req.keep_alive, cases[i].want);
    }
}

static void
test_http10_no_host(void **state)
{
    (void)state;
    assert_true(parse_str("GET / HTTP/1.0\r\n\r\n") > 0);
    assert_int_equal(req.minor_version, 0);
    assert_null(req.host.p);
    assert_int_equal(req.nheaders, 0);
}

static void
test_leading_crlf(void **state)
{
    (void)state;
    const char *s = "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_int_equal(parse_str(s), (int)strlen(s));
    assert_str(req.method_str, "GET");
}

static void
test_header_bytes(void **state)
{
    (void)state;
    /* HTAB and obs-text are allowed inside values; the value keeps them. */
    assert_true(parse_str("GET / HTTP/1.1\r\nHost: h\r\nX: a\tb\xc3\xa9\x80 c\r\n\r\n") > 0);
    assert_str(req.headers[1].value, "a\tb\xc3\xa9\x80 c");
    /* All tchar in a name. */
    assert_true(parse_str("GET / HTTP/1.1\r\nHost: h\r\n!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n") > 0);
    assert_str(req.headers[1].name, "!#$%&'*+-.^_`|~09azAZ");
    /* Long values go through the word-at-a-time scan; a control byte anywhere is caught. */
    char buf[512];
    for (size_t at = 0; at < 40; at++) {
        int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nX: %s\r\n\r\n",
                         "0123456789abcdefghijklmnopqrstuvwxyzABCD");
        assert_int_equal(parse(buf, (size_t)n), n);
        buf[28 + at] = 0x7f;
        assert_int_equal(parse(buf, (size_t)n), HTTP_PARSE_BAD);
        buf[28 + at] = 0x01;
        assert_int_equal(parse(buf, (size_t)n), HTTP_PARSE_BAD);
        buf[28 + at] = '\0';
        assert_int_equal(parse(buf, (size_t)n), HTTP_PARSE_BAD);
        buf[28 + at] = '\t';
        assert_int_equal(parse(buf, (size_t)n), n);
    }
}

static void
test_header_get(void **state)
{
    (void)state;
    assert_true(parse_str("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nX-AB: 3\r\n\r\n") > 0);
    const struct http_str *v = http_header_get(&req, "x-A");
    assert_non_null(v);
    assert_str(*v, "1");
    v = http_header_get(&req, "X-AB");
    assert_non_null(v);
    assert_str(*v, "3");
    assert_null(http_header_get(&req, "X"));
    assert_null(http_header_get(&req, "X-ABC"));
    assert_null(http_header_get(&req, ""));
}

static void
test_max_headers(void **state)
{
    (void)state;
    char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 1; i < HTTP_MAX_HEADERS; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "X-%d: %d\r\n", i, i);
    memcpy(buf + n, "\r\n", 3);
    assert_int_equal(parse(buf, n + 2), (int)(n + 2));
    assert_int_equal(req.nheaders, HTTP_MAX_HEADERS);
    assert_str(req.headers[HTTP_MAX_HEADERS - 1].value, "63");

    memcpy(buf + n, "Y: 1\r\n\r\n", 9);
    assert_int_equal(parse(buf, n + 8), HTTP_PARSE_TOO_MANY);
    /* Known as soon as the extra line starts. */
    assert_int_equal(parse(buf, n + 1), HTTP_PARSE_TOO_MANY);
}

/* ---- http_parse_request: incomplete input and pipelining ---- */

static void
test_every_prefix(void **state)
{
    (void)state;
    static const char *const valid[] = {
        "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
        "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX:\t\r\n\r\n",
        "PUT /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        "\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        ("GET /a-rather-long-target/with/many/segments/0123456789 HTTP/1.1\r\n"
         "Host: h\r\nX-Long: 0123456789abcdefghijklmnopqrstuvwxyz0123456789\r\n\r\n"),
    };
    for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++)
        assert_prefixes(valid[i], (int)strlen(valid[i]));
}

static void
test_pipelined(void **state)
{
    (void)state;
    const char *a = "GET /one HTTP/1.1\r\nHost: h\r\n\r\n";
    const char *b = "POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi";
    char buf[256];
    snprintf(buf, sizeof(buf), "%s%s", a, b);
    int r = parse_str(buf);
    assert_int_equal(r, (int)strlen(a));
    assert_str(req.path, "/one");
    assert_int_equal(req.nheaders, 1);
    assert_int_equal(parse_str(buf + r), (int)strlen(b) - 2);
    assert_str(req.path, "/two");
    assert_int_equal(req.content_length, 2);
    /* The second one being partial or malformed does not change the first. */
    assert_int_equal(parse(buf, strlen(a) + 3), (int)strlen(a));
    snprintf(buf, sizeof(buf), "%s\n\n\x01", a);
    assert_int_equal(parse_str(buf), (int)strlen(a));
}

/* ---- http_parse_request: hostile shapes ---- */

static const struct hostile {
    const char *name;
    const char *s;
    size_t len;
    int want;
} hostile[] = {
#define HC(name, s, want)                                                                          \
    {                                                                                              \
        name, s, sizeof(s) - 1, want                                                               \
    }
    /* line endings */
    HC("bare LF after request line", "GET / HTTP/1.1\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("bare LF after header", "GET / HTTP/1.1\r\nHost: h\n\r\n", HTTP_PARSE_BAD),
    HC("bare LF ending head", "GET / HTTP/1.1\r\nHost: h\r\n\n", HTTP_PARSE_BAD),
    HC("bare LF leading", "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("bare CR in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", HTTP_PARSE_BAD),
    HC("CR CR LF", "GET / HTTP/1.1\r\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("bare CR leading", "\rGET / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("bare CR at head end", "GET / HTTP/1.1\r\nHost: h\r\n\rX", HTTP_PARSE_BAD),
    /* control bytes */
    HC("NUL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n", HTTP_PARSE_BAD),
    HC("NUL in name", "GET / HTTP/1.1\r\nHost: h\r\nX\0: a\r\n\r\n", HTTP_PARSE_BAD),
    HC("NUL in target", "GET /a\0 HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("NUL in method", "G\0T / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("DEL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n", HTTP_PARSE_BAD),
    HC("ESC in value", "GET / HTTP/1.1\r\nHost: h\r\nX: \x1b[0m\r\n\r\n", HTTP_PARSE_BAD),
    HC("VT in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\vb\r\n\r\n", HTTP_PARSE_BAD),
    HC("control in target", "GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("HTAB in target", "GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("DEL in target", "GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("non-ASCII in target", "GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("fragment in target", "GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    /* header names */
    HC("space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", HTTP_PARSE_BAD),
    HC("tab before colon", "GET / HTTP/1.1\r\nHost: h\r\nX\t: a\r\n\r\n", HTTP_PARSE_BAD),
    HC("CL with space before colon",
       "POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello", HTTP_PARSE_BAD),
    HC("obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", HTTP_PARSE_BAD),
    HC("obs-fold tab", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", HTTP_PARSE_BAD),
    HC("space before first header", "GET / HTTP/1.1\r\n Host: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("empty name", "GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n", HTTP_PARSE_BAD),
    HC("no colon", "GET / HTTP/1.1\r\nHost: h\r\nJunk\r\n\r\n", HTTP_PARSE_BAD),
    HC("non-tchar name", "GET / HTTP/1.1\r\nHost: h\r\nX(y): v\r\n\r\n", HTTP_PARSE_BAD),
    HC("slash in name", "GET / HTTP/1.1\r\nHost: h\r\nX/Y: v\r\n\r\n", HTTP_PARSE_BAD),
    HC("non-ASCII name", "GET / HTTP/1.1\r\nHost: h\r\n\xc3\xa9: v\r\n\r\n", HTTP_PARSE_BAD),
    /* Content-Length */
    HC("CL twice equal",
       "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL twice differ",
       "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL empty", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", HTTP_PARSE_BAD_LENGTH),
    HC("CL sign", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL negative", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL hex", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL inner space", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL overflow", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775808\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL huge", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("CL then TE",
       "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    HC("TE then CL",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
       HTTP_PARSE_BAD_LENGTH),
    /* Transfer-Encoding */
    HC("TE gzip", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
       HTTP_PARSE_BAD_ENCODING),
    HC("TE gzip, chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
       HTTP_PARSE_BAD_ENCODING),
    HC("TE chunked, chunked",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
       HTTP_PARSE_BAD_ENCODING),
    HC("TE twice",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
       "chunked\r\n\r\n",
       HTTP_PARSE_BAD_ENCODING),
    HC("TE chunked junk", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunkedx\r\n\r\n",
       HTTP_PARSE_BAD_ENCODING),
    HC("TE quoted", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
       HTTP_PARSE_BAD_ENCODING),
    HC("TE identity", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
       HTTP_PARSE_BAD_ENCODING),
    HC("TE empty", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n",
       HTTP_PARSE_BAD_ENCODING),
    HC("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP_PARSE_BAD),
    /* Host */
    HC("Host twice", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", HTTP_PARSE_BAD),
    HC("Host twice case", "GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n", HTTP_PARSE_BAD),
    HC("Host missing in 1.1", "GET / HTTP/1.1\r\nX: a\r\n\r\n", HTTP_PARSE_BAD),
    HC("Host with slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", HTTP_PARSE_BAD),
    HC("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", HTTP_PARSE_BAD),
    HC("Host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", HTTP_PARSE_BAD),
    /* version */
    HC("HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", HTTP_PARSE_VERSION),
    HC("HTTP/1.2", "GET / HTTP/1.2\r\nHost: h\r\n\r\n", HTTP_PARSE_VERSION),
    HC("HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", HTTP_PARSE_VERSION),
    HC("HTTP/9.9", "GET / HTTP/9.9\r\n\r\n", HTTP_PARSE_VERSION),
    HC("HTTP/x", "GET / HTTP/x\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("HTTP/1.x", "GET / HTTP/1.x\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("HTTP/2", "GET / HTTP/2\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("HTTP/11.0", "GET / HTTP/11.0\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("http/1.1", "GET / http/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("no version", "GET /\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("space after version", "GET / HTTP/1.1 \r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    /* request line shape */
    HC("target not slash", "GET a HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("absolute-form", "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("authority-form", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("star with GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("star with more", "OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("space in target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("two spaces", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("empty method", " / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("method not token", "GE(T / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("method with slash", "GET/ / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("tab separator", "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", HTTP_PARSE_BAD),
    HC("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTP_PARSE_BAD),
    HC("TLS hello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", HTTP_PARSE_BAD),
#undef HC
};

static void
test_hostile(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        const struct hostile *h = &hostile[i];
        size_t n = h->len;
        char *copy = malloc(n);
        assert_non_null(copy);
        memcpy(copy, h->s, n);
        int r = parse(copy, n);
        if (r != h->want)
            fail_msg("%s: got %d, want %d", h->name, r, h->want);
        /* No prefix may be reported as anything but INCOMPLETE or the same error. */
        for (size_t k = 0; k < n; k++) {
            r = parse(copy, k);
            if (r != HTTP_PARSE_INCOMPLETE && r != h->want)
                fail_msg("%s: prefix %zu gave %d, want %d or 0", h->name, k, r, h->want);
        }
        free(copy);
    }
}

/* ---- http_chunked_decode ---- */

/* Decodes in[0..n) cut at the given split points; returns the decoder's last result. */
static int
decode_split(const char *in, size_t n, const size_t *cuts, size_t ncuts, char *out, size_t *outlen,
             size_t *used)
{
    struct http_chunked d;
    size_t from = 0, total = 0;
    int rc = 0;
    memset(&d, 0, sizeof(d));
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : n, consumed = 0, produced = 0;
        rc = http_chunked_decode(&d, in + from, to - from, &consumed, out + total, &produced);
        assert_true(produced <= consumed);
        assert_true(consumed <= to - from);
        total += produced;
        if (rc != 0) {
            from += consumed;
            break;
        }
        assert_int_equal(consumed, to - from);
        from = to;
    }
    *outlen = total;
    *used = from;
    return rc;
}

static const char chunked_body[] = "4\r\nWiki\r\n"
                                   "5;name=val;flag\r\npedia\r\n"
                                   "E  ; x=\"q s\"\r\n in\r\n\r\nchunks.\r\n"
                                   "0000A\r\n0123456789\r\n"
                                   "0\r\n"
                                   "Trailer-One: v\r\n"
                                   "X:\r\n"
                                   "\r\n";
static const char chunked_payload[] = "Wikipedia in\r\n\r\nchunks.0123456789";

static void
test_chunked_whole(void **state)
{
    (void)state;
    char in[256], out[256];
    size_t n = sizeof(chunked_body) - 1, outlen, used;
    memcpy(in, chunked_body, n);
    memcpy(in + n, "GET /next", 9); /* a pipelined request right after */
    assert_int_equal(decode_split(in, n + 9, NULL, 0, out, &outlen, &used), 1);
    assert_int_equal(used, n);
    assert_int_equal(outlen, sizeof(chunked_payload) - 1);
    assert_memory_equal(out, chunked_payload, outlen);
}

static void
test_chunked_every_split(void **state)
{
    (void)state;
    size_t n = sizeof(chunked_body) - 1, outlen, used;
    char out[256];
    /* one cut */
    for (size_t a = 0; a <= n; a++) {
        assert_int_equal(decode_split(chunked_body, n, &a, 1, out, &outlen, &used), 1);
        assert_int_equal(used, n);
        assert_int_equal(outlen, sizeof(chunked_payload) - 1);
        assert_memory_equal(out, chunked_payload, outlen);
    }
    /* two cuts */
    for (size_t a = 0; a <= n; a++) {
        for (size_t b = a; b <= n; b++) {
            size_t cuts[2] = {a, b};
            assert_int_equal(decode_split(chunked_body, n, cuts, 2, out, &outlen, &used), 1);
            assert_int_equal(used, n);
            assert_int_equal(outlen, sizeof(chunked_payload) - 1);
            assert_memory_equal(out, chunked_payload, outlen);
        }
    }
    /* byte by byte */
    size_t cuts[sizeof(chunked_body)];
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    assert_int_equal(decode_split(chunked_body, n, cuts, n, out, &outlen, &used), 1);
    assert_int_equal(used, n);
    assert_memory_equal(out, chunked_payload, sizeof(chunked_payload) - 1);
}

static void
test_chunked_incomplete_and_done(void **state)
{
    (void)state;
    struct http_chunked d;
    char out[64];
    size_t c, p;
    memset(&d, 0, sizeof(d));
    assert_int_equal(http_chunked_decode(&d, LIT("3\r\nab"), &c, out, &p), 0);
    assert_int_equal(c, 5);
    assert_int_equal(p, 2);
    assert_int_equal(http_chunked_decode(&d, "", 0, &c, out, &p), 0);
    assert_int_equal(c, 0);
    assert_int_equal(p, 0);
    assert_int_equal(http_chunked_decode(&d, LIT("c\r\n0\r\n\r"), &c, out, &p), 0);
    assert_int_equal(c, 7);
    assert_int_equal(p, 1);
    assert_int_equal(http_chunked_decode(&d, LIT("\nxyz"), &c, out, &p), 1);
    assert_int_equal(c, 1);
    assert_int_equal(p, 0);
    /* Once done it stays done and takes nothing. */
    assert_int_equal(http_chunked_decode(&d, LIT("0\r\n\r\n"), &c, out, &p), 1);
    assert_int_equal(c, 0);
    assert_int_equal(p, 0);
}

static void
test_chunked_limits(void **state)
{
    (void)state;
    struct http_chunked d;
    char out[64];
    size_t c, p;
    /* 2^60 is the largest size taken; it then waits for data. */
    memset(&d, 0, sizeof(d));
    assert_int_equal(http_chunked_decode(&d, LIT("1000000000000000\r\nab"), &c, out, &p), 0);
    assert_int_equal(p, 2);
    assert_true(d.remaining == (1ull << 60) - 2);
    /* Sixteen digits with leading zeros are fine. */
    memset(&d, 0, sizeof(d));
    assert_int_equal(
        http_chunked_decode(&d, LIT("0000000000000001\r\na\r\n0\r\n\r\n"), &c, out, &p), 1);
    assert_int_equal(p, 1);
    /* Upper-case hex. */
    memset(&d, 0, sizeof(d));
    assert_int_equal(http_chunked_decode(&d, LIT("A\r\n0123456789\r\n0\r\n\r\n"), &c, out, &p), 1);
    assert_int_equal(p, 10);
}

static void
test_chunked_errors(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\r\n",                          /* no size */
        ";x\r\n",                        /* no size before ext */
        "g\r\n",                         /* not hex */
        "-1\r\n",                        /* sign */
        "0x5\r\n",                       /* prefix */
        "1000000000000001\r\n",          /* 2^60 + 1 */
        "FFFFFFFFFFFFFFFF\r\n",          /* 2^64 - 1 */
        "10000000000000000\r\n",         /* 2^64 */
        "00000000000000001\r\n",         /* seventeen digits */
        "5\nhello\r\n0\r\n\r\n",         /* bare LF after size */
        "5\r\rhello\r\n0\r\n\r\n",       /* CR CR */
        "5 \r\nhello\r\n0\r\n\r\n",      /* whitespace without ext */
        "5;a\x01\r\nhello\r\n0\r\n\r\n", /* control in ext */
        "5;a\nb\r\nhello\r\n0\r\n\r\n",  /* bare LF in ext */
        "5\r\nhelloX\r\n0\r\n\r\n",      /* data longer than size */
        "5\r\nhello\n0\r\n\r\n",         /* bare LF after data */
        "5\r\nhello\r0\r\n\r\n",         /* CR without LF after data */
        "0\r\nX: a\nY: b\r\n\r\n",       /* bare LF in trailer */
        "0\r\nX: a\r\n b\r\n\r\n",       /* obs-fold in trailer */
        "0\r\n: a\r\n\r\n",              /* empty trailer name */
        "0\r\nX : a\r\n\r\n",            /* space before colon in trailer */
        "0\r\nJunk\r\n\r\n",             /* trailer without colon */
        "0\r\n\n",                       /* bare LF ending */
        "0\r\n\rX",                      /* CR without LF ending */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = strlen(bad[i]);
        char out[64];
        size_t outlen, used;
        int rc = decode_split(bad[i], n, NULL, 0, out, &outlen, &used);
        if (rc != -1)
            fail_msg("case %zu: got %d, want -1", i, rc);
        /* The same error byte by byte. */
        size_t cuts[64];
        for (size_t k = 0; k < n; k++)
            cuts[k] = k + 1;
        size_t used2;
        rc = decode_split(bad[i], n, cuts, n, out, &outlen, &used2);
        if (rc != -1 || used2 != used)
            fail_msg("case %zu split: got %d at %zu, want -1 at %zu", i, rc, used2, used);
    }
    /* NUL in a trailer value, with its real length. */
    char out[64];
    size_t outlen, used;
    assert_int_equal(decode_split("0\r\nX: a\0\r\n\r\n", 13, NULL, 0, out, &outlen, &used), -1);
    /* An error sticks. */
    struct http_chunked d;
    size_t c, p;
    memset(&d, 0, sizeof(d));
    assert_int_equal(http_chunked_decode(&d, LIT("z"), &c, out, &p), -1);
    assert_int_equal(http_chunked_decode(&d, LIT("0\r\n\r\n"), &c, out, &p), -1);
}

static void
test_chunked_line_caps(void **state)
{
    (void)state;
    static char in[40000], out[40000];
    size_t outlen, used;
    /* A size line stuffed with extensions. */
    memcpy(in, "1;", 2);
    memset(in + 2, 'x', 5000);
    memcpy(in + 5002, "\r\nA\r\n0\r\n\r\n", 11);
    assert_int_equal(decode_split(in, 5012, NULL, 0, out, &outlen, &used), -1);
    /* An endless trailer section. */
    size_t n = 3;
    memcpy(in, "0\r\n", 3);
    while (n < 30000) {
        memcpy(in + n, "X-Trailer: padding-padding\r\n", 28);
        n += 28;
    }
    assert_int_equal(decode_split(in, n, NULL, 0, out, &outlen, &used), -1);
    /* A modest one is fine. */
    memcpy(in + 3 + 28 * 100, "\r\n", 2);
    assert_int_equal(decode_split(in, 3 + 28 * 100 + 2, NULL, 0, out, &outlen, &used), 1);
    assert_int_equal(outlen, 0);
}

/* ---- http_pct_decode / http_query_find ---- */

static void
test_pct_decode(void **state)
{
    (void)state;
    char out[64];
    size_t n;
    assert_int_equal(http_pct_decode(LIT("a%20b%2Fc%2fd+e"), out, &n, 0), 0);
    assert_int_equal(n, 9);
    assert_memory_equal(out, "a b/c/d+e", 9);
    assert_int_equal(http_pct_decode(LIT("a+b%2B"), out, &n, 1), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "a b+", 4);
    assert_int_equal(http_pct_decode(LIT("%C3%A9"), out, &n, 0), 0);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "\xc3\xa9", 2);
    assert_int_equal(http_pct_decode("", 0, out, &n, 1), 0);
    assert_int_equal(n, 0);

    /* In place. */
    char buf[] = "x%41%42y";
    assert_int_equal(http_pct_decode(buf, 8, buf, &n, 0), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(buf, "xABy", 4);

    assert_int_equal(http_pct_decode(LIT("%zz"), out, &n, 0), -1);
    assert_int_equal(http_pct_decode(LIT("%4"), out, &n, 0), -1);
    assert_int_equal(http_pct_decode(LIT("ab%"), out, &n, 0), -1);
    assert_int_equal(http_pct_decode(LIT("%4g"), out, &n, 0), -1);
    assert_int_equal(http_pct_decode(LIT("%g4"), out, &n, 0), -1);
    assert_int_equal(http_pct_decode(LIT("a%00b"), out, &n, 0), -1);
    assert_int_equal(http_pct_decode("a\0b", 3, out, &n, 0), -1);
}

static void
test_query_find(void **state)
{
    (void)state;
    struct http_str v;
    const char *q = "a=1&bb=two%20x&flag&&c=&a=again&d=x=y";
    size_t qn = strlen(q);
    assert_int_equal(http_query_find(q, qn, LIT("a"), &v), 1);
    assert_str(v, "1");
    assert_int_equal(http_query_find(q, qn, LIT("bb"), &v), 1);
    assert_str(v, "two%20x");
    assert_int_equal(http_query_find(q, qn, LIT("flag"), &v), 1);
    assert_int_equal(v.len, 0);
    assert_true(v.p >= q && v.p <= q + qn);
    assert_int_equal(http_query_find(q, qn, LIT("c"), &v), 1);
    assert_int_equal(v.len, 0);
    assert_int_equal(http_query_find(q, qn, LIT("d"), &v), 1);
    assert_str(v, "x=y");
    assert_int_equal(http_query_find(q, qn, LIT("b"), &v), 0);
    assert_int_equal(http_query_find(q, qn, LIT("bbb"), &v), 0);
    assert_int_equal(http_query_find(q, qn, LIT("1"), &v), 0);
    assert_int_equal(http_query_find(q, qn, LIT("fla"), &v), 0);
    assert_int_equal(http_query_find("", 0, LIT("a"), &v), 0);
    assert_int_equal(http_query_find(NULL, 0, LIT("a"), &v), 0);
    /* Only the given length of the query is looked at. */
    assert_int_equal(http_query_find("x=1&a=2", 3, LIT("a"), &v), 0);
    assert_int_equal(http_query_find("a=12", 3, LIT("a"), &v), 1);
    assert_str(v, "1");
    assert_int_equal(http_query_find(LIT("x=1&"), LIT("y"), &v), 0);
    assert_int_equal(http_query_find(LIT("x=1&=e"), "", 0, &v), 1);
    assert_str(v, "e");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_full),
        cmocka_unit_test(test_no_query),
        cmocka_unit_test(test_post_body),
        cmocka_unit_test(test_chunked_request),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_options_star),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_http10_no_host),
        cmocka_unit_test(test_leading_crlf),
        cmocka_unit_test(test_header_bytes),
        cmocka_unit_test(test_header_get),
        cmocka_unit_test(test_max_headers),
        cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_chunked_whole),
        cmocka_unit_test(test_chunked_every_split),
        cmocka_unit_test(test_chunked_incomplete_and_done),
        cmocka_unit_test(test_chunked_limits),
        cmocka_unit_test(test_chunked_errors),
        cmocka_unit_test(test_chunked_line_caps),
        cmocka_unit_test(test_pct_decode),
        cmocka_unit_test(test_query_find),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
