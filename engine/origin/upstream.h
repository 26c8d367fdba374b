/* upstream.h - HTTP/1.1 client to upstream applications: keep-alive pool on a worker's event loop.
 */
#ifndef SLUICE_UPSTREAM_H
#define SLUICE_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "upstream_parse.h"

struct event_base;
struct ssl_ctx_st;

struct upstream_pool_config {
    unsigned max_idle;         /* idle keep-alive connections kept per target; 0: 32 */
    size_t max_response_bytes; /* body bytes buffered per answer kept whole; 0: 8 MiB */
    uint64_t idle_timeout_ms;  /* an idle connection is closed after this; 0: 30 s */
};

/* Where to send a request. Strings are copied by upstream_send(). */
struct upstream_target {
    const char *host;            /* "127.0.0.1", "::1" (brackets allowed) or a host name */
    int port;                    /* 1..65535 */
    const char *host_header;     /* Host value to send; NULL: host[:port] */
    uint64_t connect_timeout_ms; /* from upstream_send to an established connection
                                    (name lookup included); 0: 5 s */
    uint64_t timeout_ms;         /* from writing the request to the complete answer; 0: 30 s.
                                    A pushed body counts from its last byte written; after
                                    a streamed answer's head, between two moves (nothing
                                    read or written for this long) */
    /*
     * TLS (https): NULL for plain TCP, else the client context to connect with
     * (borrowed; the pool takes references for as long as it keeps connections
     * made with it). The handshake is part of the connect (connect_timeout_ms);
     * `host` is sent as SNI (names only) and checked against the certificate
     * (a name, or an IP address literal).
     */
    struct ssl_ctx_st *tls;
    /*
     * Which of the contexts of one (host, port) is newest (the policy
     * generation): once a context of a higher one is used, idle connections
     * of older ones are closed and their busy ones are not kept.
     */
    uint64_t tls_generation;
};

/*
 * Called for each interim answer (status 100..199 but 101) that arrives
 * before the final one, in order, from the event loop; res (error
 * UPSTREAM_OK, status, fields, an empty body) is valid during the call only.
 * It must not cancel its own call nor free the pool; it may send requests.
 */
typedef void upstream_interim_fn(void *arg, const struct upstream_response *res);

/*
 * What a streamed call's head or body callback tells the pool to do next.
 * UPSTREAM_BUFFER is for the head callback only.
 */
enum upstream_action {
    UPSTREAM_GO = 0,  /* hand the body on in pieces as it arrives */
    UPSTREAM_PAUSE,   /* the same, but read nothing more until upstream_resume() */
    UPSTREAM_BUFFER,  /* keep the body whole (within upstream_request.max_body): `done` gets it,
                         as for a call that is not streamed */
    UPSTREAM_ABANDON, /* forget the call: its connection is closed, `done` is not called */
};

/*
 * A streamed call's final answer head (res: status, fields, transfer codings,
 * an empty body; valid during the call only). May not cancel the call or free
 * the pool (return UPSTREAM_ABANDON instead); may push body bytes.
 */
typedef enum upstream_action upstream_head_fn(void *arg, const struct upstream_response *res);

/* A piece of a streamed body, de-chunked (borrowed for the call). As upstream_head_fn, but
 * UPSTREAM_BUFFER is UPSTREAM_GO. */
typedef enum upstream_action upstream_body_fn(void *arg, const char *data, size_t len);

/* The bytes pushed with upstream_write_body() fell below the window after it said to wait. */
typedef void upstream_drain_fn(void *arg);

/* One request. Everything is copied by upstream_send() (the callback pointer too). */
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
    upstream_interim_fn *interim; /* NULL: interim answers are skipped; else called with the
                                     `arg` given to upstream_send() */
    /*
     * A streamed answer: `head` (set) is called with the final head, then `on_body` with
     * each piece unless the head callback said UPSTREAM_BUFFER, then `done` with an
     * empty body (or the error, also after the head). Nothing is kept but the piece
     * being read (at most 256 KiB) and there is no size limit.
     */
    upstream_head_fn *head;
    upstream_body_fn *on_body;
    size_t max_body; /* after UPSTREAM_BUFFER, the body kept whole is at most this (else
                        UPSTREAM_TOO_LARGE); 0: the pool's max_response_bytes */
    /*
     * A pushed request body: `body` and body_len above are not used (but body_len
     * for the length); its bytes are given with
     * upstream_write_body() and ended with upstream_end_body(). Framed with
     * Content-Length: body_len, or with body_chunked as chunked (RFC 9112 7.1). Such
     * a call is never sent twice. `drain` (required) says when to push again.
     */
    int body_stream;
    int body_chunked;
    upstream_drain_fn *drain;
    /*
     * Asks to switch protocols (`headers` hold Upgrade and "Connection: Upgrade"; needs
     * `head` and body_stream): a 101 is the final answer, and after it the bytes pushed
     * go to the upstream raw and the body is every byte it sends until it closes.
     */
    int upgrade;
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
 * small entry per distinct (host, port) is kept for the pool's life (with
 * TLS, per (host, port, context): those of contexts a newer generation
 * replaced go once unused). A TLS connection's session is kept for the next
 * connection to the same entry to resume. Aborts on out-of-memory; never
 * returns NULL.
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
 * call is cancelled first; req->interim, when set, before it for each
 * interim answer. The request never carries Expect, so no interim answer is
 * one the pool asked for. A request that failed on a reused connection
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
 * Pushes len bytes of a call's request body (body_stream; copied). Returns
 * 0 when more may be pushed at once, 1 when over the window (256 KiB waiting
 * to be written): push again after `drain`; -1 when the call has been
 * answered or failed (its done callback is coming: nothing more is sent).
 * Never calls a callback itself. With a Content-Length, no more than it may
 * be pushed in all.
 */
int upstream_write_body(struct upstream_call *c, const char *data, size_t len);

/* Ends a call's pushed request body (the last chunk; after a 101, a half-close once written). */
void upstream_end_body(struct upstream_call *c);

/* A streamed call paused by UPSTREAM_PAUSE reads on: what it holds is handed on from the
 * event loop (never before this returns). */
void upstream_resume(struct upstream_call *c);

/* Sets a streamed call's timeout between two moves (upstream_target.timeout_ms; 0: none). */
void upstream_set_timeout(struct upstream_call *c, uint64_t ms);

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

#endif
