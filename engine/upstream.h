/* upstream.h - HTTP/1.1 client to upstream applications: keep-alive pool on a worker's event loop.
 */
#ifndef SLUICE_UPSTREAM_H
#define SLUICE_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct http_request;
struct sbuf;

#define UPSTREAM_MAX_HEAD_BYTES (64 * 1024) /* status line and header section of an answer */

struct upstream_pool_config {
    unsigned max_idle;         /* idle keep-alive connections kept per target; 0: 32 */
    size_t max_response_bytes; /* body bytes buffered per answer; 0: 8 MiB */
    uint64_t idle_timeout_ms;  /* an idle connection is closed after this; 0: 30 s */
};

/* Where to send a request. Strings are copied by upstream_send(). */
struct upstream_target {
    const char *host;            /* "127.0.0.1", "::1" (brackets allowed) or a host name */
    int port;                    /* 1..65535 */
    const char *host_header;     /* Host value to send; NULL: host[:port] */
    uint64_t connect_timeout_ms; /* from upstream_send to an established connection
                                    (name lookup included); 0: 5 s */
    uint64_t timeout_ms;         /* from writing the request to the complete answer; 0: 30 s */
};

/* One request. Everything is copied by upstream_send(). */
struct upstream_request {
    const char *method; /* a token: "GET", "POST", ... */
    size_t method_len;
    const char *target; /* origin-form path?query, sent as is */
    size_t target_len;
    const char *headers; /* "Name: value\r\n" lines to send (already filtered), or NULL */
    size_t headers_len;
    const char *body; /* sent with Content-Length when body_len > 0 or the method is
                         POST, PUT or PATCH */
    size_t body_len;
};

enum upstream_error {
    UPSTREAM_OK = 0,
    UPSTREAM_CONNECT,   /* refused, unreachable, unknown host, reset before any answer: 502 */
    UPSTREAM_TIMEOUT,   /* connect or response deadline passed: 504 */
    UPSTREAM_PROTOCOL,  /* malformed or truncated answer: 502 */
    UPSTREAM_TOO_LARGE, /* body over max_response_bytes: 502 */
    UPSTREAM_SHUTDOWN,  /* the pool was freed first: 503 */
};

/* One header field of an answer; name and value are also NUL-terminated. */
struct upstream_header {
    const char *name;
    size_t name_len;
    const char *value; /* without surrounding whitespace */
    size_t value_len;
};

/* An answer, or why there is none. Everything is borrowed, valid during the callback only. */
struct upstream_response {
    enum upstream_error error;
    const char *detail; /* short human text when error != UPSTREAM_OK, else "" */
    int status;         /* 200..599 (100..199 are skipped); 0 unless UPSTREAM_OK */
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
};

/* Called exactly once per upstream_send() unless cancelled; res is valid during the call only. */
typedef void upstream_done_fn(void *arg, const struct upstream_response *res);

struct upstream_pool;
struct upstream_call;

/*
 * Returns a new pool on `base` (cfg may be NULL for the defaults). The pool
 * belongs to the thread running `base`: every function below must be called
 * from it. Connections are opened on demand, one per request in flight, and
 * kept per (host, port) while idle. Literal IPv4 and IPv6 hosts are connected
 * to directly; a host name is resolved off the loop (getaddrinfo on a short
 * helper thread, answered through an eventfd) and its addresses are kept for
 * 60 s; past that they are still used while a new lookup runs, and when it
 * fails. Addresses are tried in order until one accepts the connection. A
 * small entry per distinct (host, port) is kept for the pool's life. Aborts
 * on out-of-memory; never returns NULL.
 */
struct upstream_pool *upstream_pool_new(struct event_base *base,
                                        const struct upstream_pool_config *cfg);

/*
 * Frees the pool and closes every connection. Calls still in flight are
 * answered UPSTREAM_SHUTDOWN, answers already complete are delivered as they
 * are, each once, before this returns. May be called from a done callback;
 * the pool is then freed once the callbacks due in that pass have run.
 */
void upstream_pool_free(struct upstream_pool *p);

/*
 * Sends req to t. Target and request are copied. `done` is called exactly
 * once, always from the event loop (never before this returns), unless the
 * call is cancelled first. A request that failed on a reused connection
 * before any byte of its answer arrived is sent again once on a fresh
 * connection when its method is GET, HEAD, PUT, DELETE or OPTIONS. Returns
 * a handle valid until `done` runs or upstream_cancel(), or NULL (done is not
 * called then) when the pool is shutting down or the request cannot be sent:
 * a method that is not a token, a target with bytes other than VCHAR, header
 * lines not ending in CRLF or holding bare CR, LF or NUL, a host header with
 * such bytes, a port outside 1..65535 or an empty host.
 */
struct upstream_call *upstream_send(struct upstream_pool *p, const struct upstream_target *t,
                                    const struct upstream_request *req, upstream_done_fn *done,
                                    void *arg);

/*
 * Forgets a call: its done callback will not run. Its connection is closed,
 * unless the answer was already complete and the connection can be reused.
 * Must not be called from the call's own done callback (the handle is gone
 * by then).
 */
void upstream_cancel(struct upstream_call *c);

/* Calls accepted and not yet answered or cancelled. */
unsigned upstream_pool_pending(const struct upstream_pool *p);

/* Connections open: idle ones and those serving a call. */
unsigned upstream_pool_connections(const struct upstream_pool *p);

/* Idle keep-alive connections, all targets together. */
unsigned upstream_pool_idle(const struct upstream_pool *p);

/*
 * Appends to `out` the header lines to forward from a client's request:
 * its end-to-end fields as received, then "X-Forwarded-For: <client_ip>" and
 * "X-Forwarded-Proto: http". Dropped: Connection, Keep-Alive,
 * Proxy-Authenticate, Proxy-Authorization, TE, Trailer, Transfer-Encoding,
 * Upgrade and every field named in Connection (hop-by-hop); Host (the target's
 * is sent instead), Content-Length and Expect (upstream_send frames the body);
 * and the client's own X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host
 * and Forwarded, which anyone can forge.
 */
void upstream_forward_headers(const struct http_request *h, const char *client_ip,
                              struct sbuf *out);

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
    UPSTREAM_PARSE_MORE = 0,  /* needs more bytes */
    UPSTREAM_PARSE_DONE = 1,  /* a complete answer: see upstream_parser_response() */
    UPSTREAM_PARSE_ERROR = -1 /* see upstream_parser_response() for the error and detail */
};

struct upstream_parser;

/*
 * Returns a new parser for one answer to a request (head_request: the request
 * was HEAD, so the answer has no body) keeping at most max_body body bytes.
 */
struct upstream_parser *upstream_parser_new(int head_request, size_t max_body);
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
 * enum upstream_parse_status; DONE and ERROR stick.
 */
int upstream_parser_feed(struct upstream_parser *ps, size_t n);

/*
 * The peer closed the connection: ends a body delimited by the close (DONE),
 * anything else incomplete is an ERROR. Returns an enum upstream_parse_status.
 */
int upstream_parser_eof(struct upstream_parser *ps);

/*
 * Fills *res from a parser that returned DONE or ERROR (error, detail, and on
 * DONE the status, fields and body, borrowed from the parser until its next
 * reset or free).
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
