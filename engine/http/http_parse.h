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
    struct http_str query;  /* after the first '?', without it; len 0 when absent */
    int minor_version;      /* 0 or 1 */
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t nheaders;

    /* Derived from the headers while parsing. */
    int64_t content_length; /* -1 when absent */
    int chunked;            /* Transfer-Encoding: chunked */
    int keep_alive;         /* per version and Connection header */
    int expect_continue;    /* Expect: 100-continue */
    struct http_str host;   /* p is NULL when absent (HTTP/1.0 only) */
};

/*
 * Parses the request line and headers at buf[0..len). Returns the length of the
 * head including the final CRLF CRLF when it is complete, or an enum
 * http_parse_status (<= 0). It keeps no state: call it again from the start once
 * more bytes have arrived; a prefix of the input never gets an answer other than
 * HTTP_PARSE_INCOMPLETE or the one the whole input gets. Bytes after the head
 * (a body, a pipelined request) are not looked at. All strings in *req point
 * into buf (borrowed); *req is only meaningful when the return is > 0. Empty
 * lines (CRLF) before the request line are skipped and counted in the length.
 *
 * Rejected (HTTP_PARSE_BAD unless said otherwise): bare LF line endings, NUL,
 * CR or other control bytes in the request line or a header (HTAB is allowed
 * inside a value), whitespace before a header's colon, an empty or non-token
 * method or header name, obs-fold (continuation lines), a target not in
 * origin-form (or "*" for OPTIONS), a target holding bytes other than VCHAR or
 * a '#', separators other than one SP in the request line, "HTTP/" D "." D
 * other than 1.0 and 1.1 (HTTP_PARSE_VERSION; any other shape is BAD),
 * Content-Length that is not all digits, larger than INT64_MAX, duplicated
 * (even with the same value) or sent together with Transfer-Encoding
 * (HTTP_PARSE_BAD_LENGTH), a Transfer-Encoding other than "chunked", also when
 * repeated (HTTP_PARSE_BAD_ENCODING), Transfer-Encoding in an HTTP/1.0
 * request, more than one Host header, a Host value with characters outside
 * the URI host and port grammar, an HTTP/1.1 request without Host, and more
 * than HTTP_MAX_HEADERS headers (HTTP_PARSE_TOO_MANY). The caller bounds the
 * head's size: this function waits for more bytes as long as none of the above
 * is seen.
 */
int http_parse_request(const char *buf, size_t len, struct http_request *req);

/* The name of a routed method ("GET", ...), a static string; "OTHER" for HTTP_OTHER. */
const char *http_method_name(enum http_method m);

/*
 * Returns the value of the first header named `name` (a C string, compared
 * ignoring ASCII case), or NULL. The result is borrowed from *req.
 */
const struct http_str *http_header_get(const struct http_request *req, const char *name);

/* Decoder state for a chunked request body; zero it before the first call. */
struct http_chunked {
    int state;
    uint64_t remaining; /* bytes left in the current chunk; in trailers, bytes seen */
    size_t line_len;    /* bytes seen on the current size line */
};

/*
 * Decodes chunked framing from in[0..inlen), appending payload bytes to out
 * (which has room for at least inlen bytes; out may be in itself: the payload
 * is then decoded in place, never past what was consumed). Sets *consumed and *produced
 * (produced <= consumed). Input may be cut anywhere between calls. Returns 1
 * once the last chunk and the trailers are complete, consuming exactly up to
 * the final CRLF (bytes after it are left; later calls return 1 and consume
 * nothing), 0 when it needs more input (all of in was consumed), -1 on
 * malformed framing, which sticks: a size that is not 1 to 16 hex digits or
 * exceeds 2^60, whitespace after the size not followed by ';', a control byte
 * in an extension, a missing or bare-LF line end, a trailer line that is not
 * "token: value" without control bytes, a size line over 4 KiB or a trailer
 * section over 16 KiB. Extensions and trailers are checked and dropped.
 */
int http_chunked_decode(struct http_chunked *d, const char *in, size_t inlen, size_t *consumed,
                        char *out, size_t *produced);

/*
 * Percent-decodes in[0..len) into out (room for len bytes; out may be in), sets
 * *outlen. With plus_as_space, '+' becomes ' ' (query strings). Returns 0, or
 * -1 for a bad escape ("%zz", truncated "%4") or a NUL byte in the result
 * ("%00" or a raw one). The output is not NUL-terminated.
 */
int http_pct_decode(const char *in, size_t len, char *out, size_t *outlen, int plus_as_space);

/* Returns the value of a hex digit (either case), or -1. */
int http_hex_digit(unsigned char c);

/*
 * Finds the first query parameter `name` in a raw query string (a=1&b=2). Keys
 * are compared byte for byte, still encoded. Sets *val to the still-encoded
 * value, pointing into query (len 0 for "a=" and for a bare "a"). Returns 1
 * when found, 0 when absent.
 */
int http_query_find(const char *query, size_t qlen, const char *name, size_t namelen,
                    struct http_str *val);

#endif
