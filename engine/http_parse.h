/* http_parse.h - strict HTTP/1.1 request-head parser, chunked decoder, URL helpers. */
#ifndef SLUICE_HTTP_PARSE_H
#define SLUICE_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 64

enum http_method {
    HTTP_OTHER = 0, /* a valid token we do not route (answered 405/501) */
    HTTP_GET,
    HTTP_HEAD,
    HTTP_POST,
    HTTP_PUT,
    HTTP_PATCH,
    HTTP_DELETE,
    HTTP_OPTIONS,
};

/* Results of http_parse_request() other than a complete head (> 0). */
enum http_parse_status {
    HTTP_PARSE_INCOMPLETE = 0,   /* need more bytes */
    HTTP_PARSE_BAD = -1,         /* malformed or smuggling-shaped: 400 */
    HTTP_PARSE_TOO_MANY = -2,    /* more than HTTP_MAX_HEADERS headers: 431 */
    HTTP_PARSE_VERSION = -3,     /* not HTTP/1.0 or HTTP/1.1: 505 */
    HTTP_PARSE_BAD_LENGTH = -4,  /* Content-Length unparsable, duplicated or with TE: 400 */
    HTTP_PARSE_BAD_ENCODING = -5 /* a Transfer-Encoding other than exactly "chunked": 501 */
};

struct http_str {
    const char *p; /* points into the caller's buffer; not NUL-terminated */
    size_t len;
};

struct http_header {
    struct http_str name, value; /* value without surrounding whitespace */
};

struct http_request {
    enum http_method method;
    struct http_str method_str;
    struct http_str target; /* request-target as sent (origin-form) */
    struct http_str path;   /* target up to '?', still percent-encoded */
    struct http_str query;  /* after '?', without it; len 0 when absent */
    int minor_version;      /* 0 or 1 */
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t nheaders;

    /* Derived from the headers while parsing. */
    int64_t content_length; /* -1 when absent */
    int chunked;            /* Transfer-Encoding: chunked */
    int keep_alive;         /* per version and Connection header */
    int expect_continue;    /* Expect: 100-continue */
    struct http_str host;
};

/*
 * Parses the request line and headers at buf[0..len). Returns the length of the
 * head including the final CRLF CRLF when it is complete, or an enum
 * http_parse_status (<= 0). It keeps no state: call it again from the start once
 * more bytes have arrived. All strings in *req point into buf.
 *
 * Rejected (HTTP_PARSE_BAD unless said otherwise): bare LF line endings, NUL,
 * CR or other control bytes in the request line or a header, whitespace
 * before a header's colon, an empty or non-token header name, obs-fold
 * (continuation lines), a target not in origin-form (or "*" for OPTIONS),
 * Content-Length that is not all digits, duplicated (even with the same value)
 * or sent together with Transfer-Encoding (HTTP_PARSE_BAD_LENGTH), a
 * Transfer-Encoding other than "chunked" (HTTP_PARSE_BAD_ENCODING), more than
 * one Host header.
 */
int http_parse_request(const char *buf, size_t len, struct http_request *req);

/* Returns the value of the first header named `name` (case-insensitive), or NULL. */
const struct http_str *http_header_get(const struct http_request *req, const char *name);

/* Decoder state for a chunked request body; zero it before the first call. */
struct http_chunked {
    int state;
    uint64_t remaining; /* bytes left in the current chunk */
    size_t line_len;    /* bytes seen on the current size/trailer line */
};

/*
 * Decodes chunked framing from in[0..inlen), appending payload bytes to out
 * (which has room for at least inlen bytes). Sets *consumed and *produced.
 * Returns 1 once the last chunk and the trailers are complete (bytes after
 * that are not consumed), 0 when it needs more input, -1 on malformed framing
 * (a size that is not hex, overflows, has junk, or a missing CRLF).
 */
int http_chunked_decode(struct http_chunked *d, const char *in, size_t inlen, size_t *consumed,
                        char *out, size_t *produced);

/*
 * Percent-decodes in[0..len) into out (room for len bytes), sets *outlen.
 * With plus_as_space, '+' becomes ' ' (query strings). Returns 0, or -1 for
 * a bad escape ("%zz", truncated "%4") or a decoded NUL byte.
 */
int http_pct_decode(const char *in, size_t len, char *out, size_t *outlen, int plus_as_space);

/*
 * Finds query parameter `name` in a raw query string (a=1&b=2). Sets *val to
 * its still-encoded value. Returns 1 when found, 0 when absent.
 */
int http_query_find(const char *query, size_t qlen, const char *name, size_t namelen,
                    struct http_str *val);

#endif
