/* upstream_parse.h - upstream HTTP/1.1 messages without I/O: answer parser, hop-by-hop rules.
 */
#ifndef SLUICE_UPSTREAM_PARSE_H
#define SLUICE_UPSTREAM_PARSE_H

#include <stddef.h>
#include <stdint.h>

struct http_request;
struct sbuf;

#define UPSTREAM_MAX_HEAD_BYTES (64 * 1024) /* status line and header section of an answer */
#define UPSTREAM_MAX_FIELDS 256 /* header fields of an answer; more is a malformed answer */

enum upstream_error {
    UPSTREAM_OK = 0,
    UPSTREAM_CONNECT,   /* refused, unreachable, unknown host, reset before any answer: 502 */
    UPSTREAM_TIMEOUT,   /* connect or response deadline passed: 504 */
    UPSTREAM_PROTOCOL,  /* malformed or truncated answer: 502 */
    UPSTREAM_TOO_LARGE, /* body over max_response_bytes: 502 */
    UPSTREAM_SHUTDOWN,  /* the pool was freed first: 503 */
};

/* A word for e, for labels and logs: "ok", "connect", "timeout", "protocol", "too_large",
 * "shutdown". */
const char *upstream_error_word(enum upstream_error e);

/* One header field of an answer; name and value are also NUL-terminated. */
struct upstream_header {
    const char *name;
    size_t name_len;
    const char *value; /* without surrounding whitespace */
    size_t value_len;
};

/*
 * An answer, or why there is none: a final answer (status 200..599), or an
 * interim one (100..199 but 101, no body) where the parser or the pool says
 * so. Everything is borrowed, valid during the callback only.
 */
struct upstream_response {
    enum upstream_error error;
    const char *detail; /* short human text when error != UPSTREAM_OK, else "" */
    int status;         /* 100..599; 0 unless UPSTREAM_OK */
    int minor_version;  /* of the answer: 0 or 1 */
    /*
     * End-to-end fields in the order received. Removed: Connection, Keep-Alive,
     * Proxy-Authenticate, Proxy-Authorization, TE, Trailer, Transfer-Encoding,
     * Upgrade, every field named in Connection, and Content-Length.
     */
    const struct upstream_header *fields;
    size_t nfields;
    const char *body; /* de-chunked; NUL-terminated (not counted in body_len) */
    size_t body_len;
    int64_t content_length; /* the body's Content-Length when it has one, else -1 */
    /*
     * NULL, or the transfer codings other than chunked that the answer's
     * Transfer-Encoding applied to its body ("gzip", "x-foo, br"; a final
     * chunked is removed and decoded): the body is then as received, still in
     * those codings, which the parser does not decode. Without a final
     * chunked the body is every byte until the connection closed (RFC 9112
     * 6.3). Set only for a final answer with a body (not for HEAD, 204, 304).
     */
    const char *transfer_encoding;
};

/*
 * Appends to `out` the header lines to forward from a client's request: its
 * end-to-end fields as received ("Name: value\r\n"), but for these, dropped:
 * hop-by-hop (Connection, Keep-Alive, Proxy-Authenticate,
 * Proxy-Authorization, TE, Trailer, Transfer-Encoding, Upgrade, every field
 * named in Connection, and Proxy-Connection); those the proxy sets itself
 * (Host, Content-Length and Expect: upstream_send frames the body; every
 * X-Forwarded-* and Via: upstream_proxy_fields); and those anyone could forge
 * to pose as a proxy in front of the app (Forwarded, X-Real-IP, X-Client-IP,
 * Client-IP, True-Client-IP, X-Cluster-Client-IP, Front-End-Https,
 * X-Url-Scheme, X-Original-Host, X-Host, X-Original-URL, X-Rewrite-URL).
 * The W3C trace context (traceparent, tracestate) goes on unchanged only
 * when the request has exactly one traceparent, well formed, and every
 * tracestate is well formed; else none of its fields does.
 */
void upstream_forward_headers(const struct http_request *h, struct sbuf *out);

/*
 * Whether v[0..len) is a well-formed W3C traceparent (Trace Context, section
 * 3.2): a version of 2 lower-case hex digits but "ff", a 32-digit trace id and
 * a 16-digit parent id that are not all zeros, 2 digits of flags, joined by
 * "-"; version 00 is exactly that (55 characters), a later version may go on
 * after a "-". Returns 1 or 0.
 */
int upstream_traceparent_valid(const char *v, size_t len);

/* Whether v[0..len) may go on as a tracestate: at most 512 characters, printable ASCII. */
int upstream_tracestate_valid(const char *v, size_t len);

/*
 * Appends the fields the proxy itself sets on a forwarded request h:
 * "X-Forwarded-For": when peer_trusted, the entries of h's own X-Forwarded-For
 * lines as received, then `peer` (the address the request came from; the
 * client's when NULL), else `peer` alone, as every proxy appends the one it
 * heard from; "Forwarded: for=<client>;proto=http" (RFC 7239 section 4; an
 * IPv6 address quoted and in brackets, section 6), the one address the
 * gateway concluded; "X-Forwarded-Proto: http" and "Via: 1.<minor> sluice"
 * (RFC 9110 section 7.6.3: the protocol the request was received with, and
 * the proxy's pseudonym). Without client (NULL or empty) neither address
 * field is set. h is only read.
 */
void upstream_proxy_fields(const struct http_request *h, const char *client, const char *peer,
                           int peer_trusted, struct sbuf *out);

/*
 * Returns the value (NUL-terminated, borrowed from res) of the first field
 * named `name` (compared ignoring ASCII case), or NULL. Removed hop-by-hop
 * fields and Content-Length are never found.
 */
const char *upstream_response_field(const struct upstream_response *res, const char *name);

/*
 * The answer parser, a state machine without I/O (the pool feeds it what it
 * reads; the fuzz target and tests drive it directly).
 */
enum upstream_parse_status {
    UPSTREAM_PARSE_MORE = 0,    /* needs more bytes */
    UPSTREAM_PARSE_DONE = 1,    /* a complete answer: see upstream_parser_response() */
    UPSTREAM_PARSE_INTERIM = 2, /* a complete interim (1xx) answer: see upstream_parser_response(),
                                   then upstream_parser_resume() */
    UPSTREAM_PARSE_HEAD = 3,    /* with UPSTREAM_PARSER_HEAD: the final answer's head is complete:
                                   see upstream_parser_response(), choose the body's reading
                                   with upstream_parser_body_mode(), then
                                   upstream_parser_resume() */
    UPSTREAM_PARSE_ERROR = -1   /* see upstream_parser_response() for the error and detail */
};

struct upstream_parser;

/*
 * Returns a new parser for one answer to a request (head_request: the request
 * was HEAD, so the answer has no body) keeping at most max_body body bytes.
 */
struct upstream_parser *upstream_parser_new(int head_request, size_t max_body);

/* Options of upstream_parser_options(). */
#define UPSTREAM_PARSER_HEAD 1u /* report the final head (UPSTREAM_PARSE_HEAD) before the body */
#define UPSTREAM_PARSER_UPGRADE                                                                    \
    2u /* the request asked to switch protocols (Upgrade): a 101 is                                \
          its final answer, whose body is every byte until the                                     \
          close (RFC 9110 15.2.2); without it a 101 is an error */

/*
 * Sets the options (UPSTREAM_PARSER_*) for the answer to come, after
 * upstream_parser_new() or upstream_parser_reset() (which clear them) and
 * before the first byte is fed.
 */
void upstream_parser_options(struct upstream_parser *ps, unsigned flags);

/*
 * After UPSTREAM_PARSE_HEAD: how the body is read. stream: handed out in
 * pieces by upstream_parser_body() as it is fed, never kept whole, without a
 * size limit; else kept whole within max_body bytes, as without
 * UPSTREAM_PARSER_HEAD. May be called again, from stream to kept whole, as
 * long as no piece has been handed out. Returns 0, or UPSTREAM_PARSE_ERROR
 * (sticking) when kept whole and the Content-Length already exceeds max_body.
 */
int upstream_parser_body_mode(struct upstream_parser *ps, int stream, size_t max_body);

/*
 * In stream mode: the body bytes (de-chunked) fed since the last call,
 * borrowed until the next upstream_parser_space(), feed, reset or free; sets
 * *len (0: none yet). Each byte is handed out once; after DONE this gives the
 * last piece. Call it after every feed (and after resume) so that at most one
 * read's worth is held.
 */
const char *upstream_parser_body(struct upstream_parser *ps, size_t *len);

/* Frees ps and the answer it holds (NULL is allowed). */
void upstream_parser_free(struct upstream_parser *ps);

/* Makes the parser ready for the next answer on the same connection; buffers are kept. */
void upstream_parser_reset(struct upstream_parser *ps, int head_request);

/*
 * Returns where the next bytes read go (owned by the parser) and sets *room
 * (> 0) to how many may be written there. Only valid while the parser has
 * returned UPSTREAM_PARSE_MORE.
 */
char *upstream_parser_space(struct upstream_parser *ps, size_t *room);

/*
 * Takes n (1..room) bytes just written at upstream_parser_space(). Returns an
 * enum upstream_parse_status; DONE and ERROR stick. After INTERIM, call
 * upstream_parser_resume() before feeding again.
 */
int upstream_parser_feed(struct upstream_parser *ps, size_t n);

/*
 * Goes on after an INTERIM result: drops that interim answer (its fields are
 * then gone) and parses the bytes already fed after it. Returns an enum
 * upstream_parse_status, INTERIM again when the next answer is interim too.
 * After a HEAD result: parses the bytes fed after the head as the body's.
 */
int upstream_parser_resume(struct upstream_parser *ps);

/*
 * The peer closed the connection: ends a body delimited by the close (DONE),
 * anything else incomplete is an ERROR. Returns an enum upstream_parse_status.
 */
int upstream_parser_eof(struct upstream_parser *ps);

/*
 * Fills *res from a parser that returned DONE, INTERIM, HEAD or ERROR (error,
 * detail, and on DONE the status, fields, body and transfer codings, on
 * INTERIM the status and fields with an empty body, on HEAD and after it the
 * final answer's status, fields and transfer codings with an empty body),
 * borrowed from the parser until its next reset, resume, feed or free.
 */
void upstream_parser_response(struct upstream_parser *ps, struct upstream_response *res);

/*
 * Whether the connection can carry another request after this DONE answer:
 * keep-alive by version and Connection, length known, no bytes beyond it.
 */
int upstream_parser_reusable(const struct upstream_parser *ps);

/* Whether any byte of an answer (interim ones included) has been fed since the last reset. */
int upstream_parser_started(const struct upstream_parser *ps);

#endif
