/* server.h - HTTP/1.1 server: worker threads, connections, request lifecycle, limits. */
#ifndef SLUICE_SERVER_H
#define SLUICE_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "http_parse.h"
#include "netaddr.h"

struct event_base;
struct json_t;
struct server;
struct worker;

struct server_config {
    const char *listen_addr; /* "127.0.0.1" */
    int listen_port;
    unsigned workers;        /* >= 1 */
    size_t max_header_bytes; /* request line + headers; larger: 431 */
    size_t max_body_bytes;   /* larger: 413 */
    /* Open connections of the server. At the cap a new connection closes an idle one
     * (none of a request yet: least recently active first) or else the one whose
     * unfinished request began first; only when every one is busy (the application
     * holds its request, or its answer is being written) is it refused with a 503. */
    unsigned max_connections;
    /* Open connections from one address (IPv6: one /64); beyond it new ones get a 503.
     * 0: no such cap. */
    unsigned max_connections_per_ip;
    /* From the accept (or, after the first request, from a request's first byte) to the
     * request's complete head and body: past it a started request gets 408, a connection
     * that sent nothing is closed. */
    uint64_t header_timeout_ms;
    uint64_t idle_timeout_ms; /* between the requests of a keep-alive connection */
    /* 0: refuse to start when another process listens on the address already (a second
     * instance); 1: share the port with it (SO_REUSEPORT; both must run as one user). */
    int reuse_port;
    /* 1: no other socket may share the port at all (one worker only). */
    int exclusive;
    /* Listening sockets to serve on instead of binding listen_addr:listen_port (borrowed; the
     * caller closes its own): worker i accepts on a duplicate of fds[i % nfds], so there should
     * be as many workers as sockets at least. NULL: bind. */
    const int *fds;
    unsigned nfds;
    /* Peers whose X-Forwarded-For or Forwarded name the client (realip_walk); borrowed, must
     * outlive the server. NULL or empty: every peer is the client. */
    const struct cidr_list *trusted_proxies;
    /* 1: every connection starts with a PROXY protocol header (v1 or v2), whose source
     * address then stands for the peer; a connection without a valid one is closed unanswered. */
    int proxy_protocol;
    /* An IPv6 client's ip_key is its address cut to this many bits (1..128; 0: 64). */
    unsigned ipv6_prefix;
};

/* A request handed to the application; valid until server_respond() (or server_stream_end(),
 * server_stream_abort()). */
struct server_request {
    struct http_request http; /* strings point into the connection's buffer */
    const char *body;         /* de-chunked body, body_len bytes (not NUL-terminated) */
    size_t body_len;
    int body_streamed; /* the body was not read: server_body_start() reads it (body is NULL) */
    /* The client's address, NUL-terminated: the peer's (the PROXY header's source when
     * there is one), or when the peer is a trusted proxy the one its X-Forwarded-For or
     * Forwarded names (realip_walk). Computed once per request; borrowed from the connection. */
    const char *ip;
    const char *ip_key; /* ip as a caller's key: an IPv6 address cut to its prefix (netaddr_key) */
    const char *peer;   /* the peer's address (what sent us the request), NUL-terminated */
    int peer_trusted;   /* the peer is in trusted_proxies: its forwarding fields are believed */
    struct worker *worker;
    void *app; /* the application's per-request state, set by it */
};

/* One response. Strings are copied by server_respond() unless said otherwise. */
struct server_response {
    int status;
    const char *content_type; /* NULL: no Content-Type */
    const char *headers;      /* extra "Name: value\r\n" lines, or NULL */
    size_t headers_len;
    const char *headers2; /* more such lines (a cached answer's own), or NULL */
    size_t headers2_len;
    const char *body;
    size_t body_len;
    /* When set, body is borrowed: release(body, body_len, body_arg) is called once it has
     * been written or dropped (the signature of libevent's evbuffer_ref_cleanup_cb). */
    void (*release)(const void *body, size_t body_len, void *body_arg);
    void *body_arg;
    int close; /* close the connection after this response */
    /* The body ends where the connection does (RFC 9112 6.3 item 7): no Content-Length is
     * written, "Connection: close" is, and the connection is closed once the body is out.
     * For a body in a transfer coding the application passes on undecoded (its
     * Transfer-Encoding line in headers or headers2); HTTP/1.0 requests get no
     * Transfer-Encoding (RFC 9112 6.1), which is the application's to ensure. */
    int close_delimited;
};

/*
 * The application: called on the worker's thread for every complete request.
 * It must end in exactly one server_respond() for that request, now or later
 * from the same worker's event loop.
 */
struct server_app {
    void *(*worker_init)(struct worker *w, void *app_ctx); /* per-worker state, or NULL to fail */
    void (*worker_fini)(void *worker_state);
    void (*handle)(struct server_request *req, void *worker_state);
    /*
     * Optional: asked once per request with a body, when its head is complete (req's
     * http, ip and worker set): nonzero to have the request handed over at once with
     * body_streamed, its body read later through server_body_start(); 0 to have it
     * read whole first (within max_body_bytes), as without this callback.
     */
    int (*stream_body)(const struct server_request *req, void *worker_state);
    void *ctx;
};

/*
 * Returns a new server with listeners bound, or NULL with a message in err
 * (among others when another process listens on the address and
 * cfg->reuse_port is not set). cfg is copied; listen_addr must outlive the server.
 */
struct server *server_new(const struct server_config *cfg, const struct server_app *app, char *err,
                          size_t errlen);

/* The port listened on (the one the system chose when the configuration said 0). */
int server_port(const struct server *s);

/*
 * Writes the listening socket of each worker into fds (cap entries) and
 * returns how many there are (the number of workers). Borrowed: valid until
 * server_stop(), when each worker closes its own.
 */
unsigned server_listen_fds(const struct server *s, int *fds, unsigned cap);

/*
 * Runs the workers until server_stop(); returns 0 after every in-flight
 * request has been answered and every worker has exited, -1 on failure.
 */
int server_run(struct server *s, char *err, size_t errlen);

/* Asks every worker to stop accepting, finish in-flight requests and exit. Safe from any thread. */
void server_stop(struct server *s);
void server_free(struct server *s);

/* Sends the response and ends the request. */
void server_respond(struct server_request *req, const struct server_response *resp);

/*
 * Sends an interim answer (status 100..199 but 101, reason phrase from
 * http_reason_phrase in head.h) with `headers` ("Name: value\r\n" lines, len bytes,
 * copied; NULL when len is 0) on a request before its server_respond(). It
 * is written at once, ahead of the final answer (from the application's own
 * handle() it leaves with that turn's batch). Dropped silently when the
 * request is HTTP/1.0 (RFC 9110 15.2), when the client has gone, and when
 * over 1 MiB already waits for the client to read it. Calling it after
 * server_respond() for the request is a bug (the request is gone).
 */
void server_respond_interim(struct server_request *req, int status, const char *headers,
                            size_t len);

/* ---- streamed answers, streamed request bodies, tunnels ---- */

/* What the application hears of a streamed answer or body. */
enum server_stream_event {
    SERVER_STREAM_DRAINED, /* the client read what waited: server_stream_write() may go on */
    SERVER_STREAM_GONE,    /* the connection is closed (the client left, stopped reading for the
                              idle timeout, or the server stops): end the request, writing
                              nothing more */
};
typedef void server_stream_fn(void *arg, enum server_stream_event ev);

#define SERVER_LENGTH_UNKNOWN (-1) /* chunked to an HTTP/1.1 client, else until the close */
#define SERVER_LENGTH_TUNNEL (-2)  /* a 101: no framing; the connection ends with the stream */

/*
 * Starts a streamed answer to req: its head (resp's status, content type and
 * fields; resp's body and release are not used) is written at once, its body
 * follows with server_stream_write() and it ends with server_stream_end()
 * (or server_stream_abort()). `length` is the body's Content-Length (>= 0),
 * SERVER_LENGTH_UNKNOWN (chunked to HTTP/1.1 unless resp->close_delimited,
 * else delimited by the close), or SERVER_LENGTH_TUNNEL for a 101 switching
 * protocols ("Connection: Upgrade" is written; resp's fields hold Upgrade).
 * fn(arg, ...) hears DRAINED and GONE until the request ends (never from
 * within a server_* call). Every write is sent at once (the socket has
 * TCP_NODELAY): nothing waits to be batched.
 */
void server_stream_start(struct server_request *req, const struct server_response *resp,
                         int64_t length, server_stream_fn *fn, void *arg);

/*
 * Sends len bytes (copied) of a streamed answer's body. Returns 0 when more
 * may be written, 1 when over the connection's window (256 KiB waiting for
 * the client): write again after DRAINED (a client that reads nothing for
 * the idle timeout is closed: GONE), -1 when the connection is closed
 * (end the request with server_stream_abort()). A HEAD request's body is
 * dropped.
 */
int server_stream_write(struct server_request *req, const char *data, size_t len);

/* Ends a streamed answer (its last chunk; a tunnel or close-delimited body: the close) and the
 * request. */
void server_stream_end(struct server_request *req);

/* Ends a streamed answer that cannot be completed (its upstream failed mid-answer): the
 * connection is reset, so the client cannot take a cut body for a whole one; the request
 * ends. */
void server_stream_abort(struct server_request *req);

/* What a streamed request body (or a tunnel's client bytes) brings. */
enum server_body_event {
    SERVER_BODY_DATA,      /* data[0..len): the next bytes, de-chunked */
    SERVER_BODY_END,       /* the body is complete (a tunnel: the client half-closed) */
    SERVER_BODY_TOO_LARGE, /* over max_body_bytes (chunked): answer 413 */
    SERVER_BODY_MALFORMED, /* bad chunked framing: answer 400 */
    SERVER_BODY_GONE,      /* the client left before the end */
};
typedef void server_body_fn(void *arg, enum server_body_event ev, const char *data, size_t len);

/*
 * Reads the body of a request handed over with body_streamed (a 100
 * Continue goes first when the client expects one), or after
 * server_stream_start(..., SERVER_LENGTH_TUNNEL) the client's bytes until it
 * closes. fn(arg, ...) is called from the event loop only, DATA with bytes
 * borrowed for the call, until one of the other events, which is the last.
 * From DATA the application may pause or resume, not end the request. A
 * request answered before its body was read to the end closes its
 * connection after the answer.
 */
void server_body_start(struct server_request *req, server_body_fn *fn, void *arg);

/* Stops reading the body (the kernel's buffers fill and the client waits) until resumed. */
void server_body_pause(struct server_request *req);
void server_body_resume(struct server_request *req);

/* Convenience: an application/problem+json error with this status, title and detail. */
void server_respond_problem(struct server_request *req, int status, const char *type,
                            const char *title, const char *detail, const char *extra_headers);

/*
 * As server_respond_problem, with the members of the JSON object `ext`
 * (borrowed; NULL: none) added to the problem as extension members (RFC 9457
 * section 3.2), after those this function sets, which they do not replace.
 */
void server_respond_problem_ext(struct server_request *req, int status, const char *type,
                                const char *title, const char *detail, struct json_t *ext,
                                const char *extra_headers);

/*
 * The body server_respond_problem_ext() sends: the problem+json object of
 * this status, type (NULL: about:blank), title (NULL: the reason phrase),
 * detail (NULL: none) and the members of `ext` (borrowed; NULL: none).
 * Returns it (new: the caller frees it), its length in *len. For an
 * application that must know what it sends before it sends it.
 */
char *server_problem_body(int status, const char *type, const char *title, const char *detail,
                          struct json_t *ext, size_t *len);

/*
 * Sends body[0..len) (borrowed, copied) as an application/problem+json answer
 * with this status and extra_headers (NULL: none), as
 * server_respond_problem_ext() does with the body it builds: the connection
 * is closed after it for the statuses that end one (400, 408, 413, 431, 501,
 * 505).
 */
void server_respond_problem_body(struct server_request *req, int status, const char *body,
                                 size_t len, const char *extra_headers);

/* The worker's event base, index and cached "Date: ...\r\n" header line. */
/* The open connections of every worker, by what they are doing. */
struct server_conn_counts {
    uint64_t idle;    /* no byte of a request yet: new, or between keep-alive requests */
    uint64_t reading; /* a request begun and not complete */
    uint64_t active;  /* a request with the application, its answer being written, or closing */
};

/* Fills *out; callable from any thread while the server runs (each count is read whole, the
 * sum is not one instant's). */
void server_connection_counts(const struct server *s, struct server_conn_counts *out);

struct event_base *server_worker_base(struct worker *w);
unsigned server_worker_index(const struct worker *w);
const char *server_worker_date_header(struct worker *w, size_t *len);

#endif
