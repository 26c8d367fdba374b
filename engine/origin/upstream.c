/* upstream.c - HTTP/1.1 client to upstream applications: keep-alive pool, connections, lookups.
 */
#include "upstream.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "util.h"

#define DEFAULT_MAX_IDLE 32
#define DEFAULT_MAX_RESPONSE ((size_t)8 << 20)
#define DEFAULT_IDLE_MS 30000
#define DEFAULT_CONNECT_MS 5000
#define DEFAULT_TIMEOUT_MS 30000
#define MAX_ADDRS 8              /* addresses kept per host name */
#define LOOKUP_TTL_MS 60000      /* a name's addresses are used this long */
#define READS_PER_EVENT 16       /* reads per readiness event before others get a turn */
#define BODY_WINDOW (256u << 10) /* pushed request body bytes waiting: the producer waits */
#define BODY_LOW (64u << 10)     /* ... until they fall below this */

/* ---- small helpers ---- */

/* RFC 9110 5.6.2 tchar. */
static int
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static uint64_t
now_ms(void)
{
    return util_mono_us() / 1000;
}

/* ---- the pool ---- */

/*
 * A name lookup on a helper thread. The thread and the pool hold one
 * reference each; the last one out frees it. The thread writes the pool's
 * eventfd once it is done, unless the pool has gone (efd < 0).
 */
struct lookup {
    pthread_mutex_t mu;
    int refs;
    int done;
    int efd;
    char *name;
    int port;
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t lens[MAX_ADDRS];
    unsigned naddrs;
    char err[128];
};

/* One (host, port) (and TLS context): its addresses and idle connections. */
struct host {
    LIST_ENTRY(host) link;
    struct upstream_pool *pool;
    char *name; /* without brackets */
    int port;
    int literal;
    SSL_CTX *tls;         /* a reference, or NULL: plain TCP */
    uint64_t tls_gen;     /* upstream_target.tls_generation */
    int retired;          /* a newer generation's context replaced tls: nothing is kept idle */
    SSL_SESSION *session; /* the last resumable session, for the next connection */
    unsigned users;       /* calls and connections pointing here */
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t lens[MAX_ADDRS];
    unsigned naddrs;
    unsigned prefer;      /* the address that worked last */
    uint64_t resolved_ms; /* names: when addrs were looked up */
    struct lookup *lookup;
    char lookup_err[160];
    TAILQ_HEAD(, upstream_call) waiting; /* for the lookup */
    TAILQ_HEAD(, conn) idle;             /* most recently used first */
    unsigned nidle;
};

enum conn_state {
    CONN_CONNECTING, /* in pool->busy */
    CONN_ACTIVE,     /* in pool->busy: sending or reading call's answer */
    CONN_IDLE,       /* in host->idle */
};

struct conn {
    TAILQ_ENTRY(conn) link;
    struct host *host;
    evutil_socket_t fd;
    SSL *ssl;                /* TLS, or NULL */
    int handshaking;         /* TLS: connected, the handshake under way (state CONN_CONNECTING) */
    int read_wants_write;    /* TLS: a read waits for the socket to take bytes */
    int write_wants_read;    /* TLS: a write waits for bytes to arrive */
    const SSL_SESSION *kept; /* TLS: the session last copied to the host (compared only) */
    char tls_err[96];        /* TLS: what failed a read or write, for the log */
    enum conn_state state;
    struct event rd, wr, idle_timer;
    int writing;   /* wr is added */
    int reused;    /* the current request is not its first */
    unsigned addr; /* index in host->addrs */
    struct upstream_call *call;
    size_t sent; /* bytes of the call's request written */
    struct upstream_parser *ps;
    int rc; /* what the parser said last of the call's answer (enum upstream_parse_status) */
};

enum call_state {
    CALL_LOOKUP,     /* in host->waiting */
    CALL_CONNECTING, /* conn is connecting */
    CALL_RUNNING,    /* request on conn */
    CALL_DONE,       /* in pool->done; conn set when the answer is OK */
};

/* How a pushed request body is framed. */
enum body_framing { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_RAW };

struct upstream_call {
    TAILQ_ENTRY(upstream_call) link;
    struct upstream_pool *pool;
    struct host *host;
    enum call_state state;
    upstream_done_fn *done;
    upstream_interim_fn *interim;
    upstream_head_fn *head_fn;
    upstream_body_fn *body_fn;
    upstream_drain_fn *drain_fn;
    void *arg;
    size_t max_body;
    int streaming;          /* the head said to hand the body on in pieces */
    int paused;             /* UPSTREAM_PAUSE: not reading until upstream_resume() */
    int upgrade;            /* asked to switch protocols */
    struct evbuffer *wbody; /* pushed request body bytes not written yet (body_stream) */
    enum body_framing framing;
    uint64_t wleft;  /* BODY_LENGTH: bytes still to be pushed */
    int wended;      /* upstream_end_body() was called */
    int wblocked;    /* upstream_write_body() said to wait: drain_fn is due */
    int half_closed; /* BODY_RAW ended: the write side was shut down */
    struct conn *conn;
    struct event deadline;
    uint64_t connect_ms, timeout_ms;
    int idempotent, head;
    int retried;
    unsigned tries; /* addresses tried by the current connect */
    enum upstream_error error;
    char detail[192];
    size_t req_len;
    char req[]; /* the whole request: head and body */
};

struct upstream_pool {
    struct event_base *base;
    unsigned max_idle;
    size_t max_response;
    struct timeval idle_tv;
    const struct timeval *idle_timeout; /* a common timeout when libevent has room */
    LIST_HEAD(, host) hosts;
    TAILQ_HEAD(, conn) busy;
    TAILQ_HEAD(, upstream_call) done; /* answered, callback not yet run */
    unsigned npending, nconns, nidle;
    struct event kick;             /* runs `done` from the loop */
    struct upstream_parser *spare; /* swapped in for a parser whose answer is being delivered */
    int lookup_fd;                 /* eventfd the lookup threads write; -1 until the first lookup */
    struct event lookup_ev;
    int closing, in_flush, free_requested;
};

static void conn_io_cb(evutil_socket_t fd, short what, void *arg);
static int request_sent(const struct conn *k);
static void want_write(struct conn *k, int on);
static void host_unuse(struct host *h);
static void conn_idle_cb(evutil_socket_t fd, short what, void *arg);
static void call_connect(struct upstream_call *c);
static void conn_open(struct upstream_call *c);

static void
addr_text(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        port = ntohs(s4->sin_port);
        snprintf(out, outlen, "%s:%d", ip, port);
    } else {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        port = ntohs(s6->sin6_port);
        snprintf(out, outlen, "[%s]:%d", ip, port);
    }
}

/* ---- the transport: a socket, or TLS on it ---- */

/*
 * Keeps a copy of the connection's session for the host's next connection,
 * when it is a new one that can be resumed (TLS 1.3: once a ticket came). A
 * copy: OpenSSL marks a connection's own session not resumable when the
 * connection ends without a close_notify (an upstream that closes after an
 * answer), which says nothing of the ticket's worth.
 */
static void
tls_keep_session(struct conn *k)
{
    struct host *h = k->host;
    SSL_SESSION *s = SSL_get0_session(k->ssl), *copy;

    if (s == NULL || s == k->kept || !SSL_SESSION_is_resumable(s))
        return;
    if ((copy = SSL_SESSION_dup(s)) == NULL)
        log_abort("out of memory (SSL_SESSION_dup)");
    k->kept = s;
    SSL_SESSION_free(h->session);
    h->session = copy;
}

/*
 * Reads up to len bytes as recv() does: the count, 0 at the end (TLS: the
 * peer's close_notify), or -1 with errno (EAGAIN: nothing now). With TLS, a
 * close without close_notify is ECONNRESET (the end of a body read to the
 * close cannot be told from a cut: RFC 9112 section 9.8), any other failure
 * EPROTO.
 */
static ssize_t
conn_recv(struct conn *k, char *buf, size_t len)
{
    size_t n;
    int r;

    if (k->ssl == NULL)
        return recv(k->fd, buf, len, 0);
    ERR_clear_error();
    r = SSL_read_ex(k->ssl, buf, len, &n);
    if (r == 1)
        return (ssize_t)n;
    switch (SSL_get_error(k->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        k->read_wants_write = 1;
        want_write(k, 1);
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == 0 || errno == EAGAIN)
            errno = ECONNRESET;
        return -1;
    default:
        if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            snprintf(k->tls_err, sizeof k->tls_err, "closed without TLS close_notify");
            errno = ECONNRESET;
        } else {
            ERR_error_string_n(ERR_peek_last_error(), k->tls_err, sizeof k->tls_err);
            errno = EPROTO;
        }
        ERR_clear_error();
        return -1;
    }
}

/* Writes up to len bytes as send() does: the count, or -1 with errno (EAGAIN: not now). */
static ssize_t
conn_send(struct conn *k, const char *buf, size_t len)
{
    size_t n;
    int r;

    if (k->ssl == NULL)
        return send(k->fd, buf, len, MSG_NOSIGNAL);
    ERR_clear_error();
    r = SSL_write_ex(k->ssl, buf, len, &n);
    if (r == 1)
        return (ssize_t)n;
    switch (SSL_get_error(k->ssl, r)) {
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_READ:
        k->write_wants_read = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_SYSCALL:
        if (errno == 0 || errno == EAGAIN)
            errno = EPIPE;
        return -1;
    default:
        ERR_error_string_n(ERR_peek_last_error(), k->tls_err, sizeof k->tls_err);
        ERR_clear_error();
        errno = EPROTO;
        return -1;
    }
}

/* ---- answers ---- */

/* Closes and frees a connection; its call, if any, loses it. */
static void
conn_free(struct conn *k)
{
    struct upstream_pool *p = k->host->pool;

    if (k->state == CONN_IDLE) {
        TAILQ_REMOVE(&k->host->idle, k, link);
        k->host->nidle--;
        p->nidle--;
        evtimer_del(&k->idle_timer);
    } else {
        TAILQ_REMOVE(&p->busy, k, link);
    }
    if (k->call != NULL)
        k->call->conn = NULL;
    event_del(&k->rd);
    event_del(&k->wr);
    if (k->ssl != NULL) {
        if (k->state == CONN_IDLE)
            (void)SSL_shutdown(k->ssl); /* close_notify, if the socket takes it */
        SSL_free(k->ssl);
        ERR_clear_error();
    }
    close(k->fd);
    upstream_parser_free(k->ps);
    host_unuse(k->host);
    free(k);
    p->nconns--;
}

/* Moves c to the answered list; a connection that failed it is closed. */
static void
call_finish(struct upstream_call *c, enum upstream_error error, const char *detail)
{
    struct upstream_pool *p = c->pool;

    assert(c->state != CALL_DONE);
    evtimer_del(&c->deadline);
    c->state = CALL_DONE;
    c->error = error;
    snprintf(c->detail, sizeof c->detail, "%s", detail);
    if (error != UPSTREAM_OK && c->conn != NULL)
        conn_free(c->conn);
    TAILQ_INSERT_TAIL(&p->done, c, link);
}

/*
 * The connection is done with its call, whose answer was complete (and left
 * the connection in step when `clean`): keep it idle when it can carry
 * another request, else close it.
 */
static void
conn_release(struct conn *k, int clean)
{
    struct host *h = k->host;
    struct upstream_pool *p = h->pool;
    int reusable = clean && k->call != NULL && request_sent(k) && !p->closing && !h->retired &&
                   h->nidle < p->max_idle;

    if (k->ssl != NULL)
        tls_keep_session(k); /* a TLS 1.3 ticket arrives after the handshake */
    if (!reusable) {
        conn_free(k);
        return;
    }
    TAILQ_REMOVE(&p->busy, k, link);
    k->call->conn = NULL;
    k->call = NULL;
    k->state = CONN_IDLE;
    k->sent = 0;
    upstream_parser_reset(k->ps, 0);
    TAILQ_INSERT_HEAD(&h->idle, k, link);
    h->nidle++;
    p->nidle++;
    evtimer_add(&k->idle_timer, p->idle_timeout);
}

static void
call_free(struct upstream_call *c)
{
    evtimer_del(&c->deadline);
    if (c->wbody != NULL)
        evbuffer_free(c->wbody);
    host_unuse(c->host);
    free(c);
}

/*
 * (Re)starts a streamed call's timeout on a move: a body pushed to the
 * upstream, or a streamed answer read or written (until the head of its answer
 * the deadline counts from the request's last byte written). Not while it is
 * paused.
 */
static void
arm_idle(struct upstream_call *c)
{
    struct timeval tv;
    if (c->head_fn == NULL || c->paused || c->timeout_ms == 0)
        return;
    tv = util_ms_to_tv(c->timeout_ms);
    evtimer_add(&c->deadline, &tv);
}

/* Whether everything of the call's request has been written (pushed bodies: ended too). */
static int
request_sent(const struct conn *k)
{
    const struct upstream_call *c = k->call;
    if (k->sent != c->req_len)
        return 0;
    return c->wbody == NULL ||
           (c->wended && evbuffer_get_length(c->wbody) == 0 && c->framing != BODY_RAW);
}

/* Runs the callback of one answered call and frees it. */
static void
deliver(struct upstream_call *c)
{
    struct upstream_pool *p = c->pool;
    struct conn *k = c->conn;
    struct upstream_parser *ps = NULL;
    struct upstream_response res;

    if (k != NULL) {
        /*
         * The answer stays in its parser; the connection gets the spare one
         * and is released now, so a request sent from the callback can use it.
         */
        assert(c->error == UPSTREAM_OK && k->state == CONN_ACTIVE);
        ps = k->ps;
        k->ps = p->spare != NULL ? p->spare : upstream_parser_new(0, p->max_response);
        p->spare = NULL;
        conn_release(k, upstream_parser_reusable(ps));
        upstream_parser_response(ps, &res);
        if (c->streaming) {
            res.body = "";
            res.body_len = 0;
        }
    } else {
        memset(&res, 0, sizeof res);
        res.content_length = -1;
        res.error = c->error;
        res.detail = c->detail;
        res.body = "";
    }
    p->npending--;
    c->done(c->arg, &res);
    if (ps != NULL) {
        if (p->spare == NULL) {
            upstream_parser_reset(ps, 0);
            p->spare = ps;
        } else {
            upstream_parser_free(ps);
        }
    }
    call_free(c);
}

static void pool_destroy(struct upstream_pool *p);

/*
 * Runs the callbacks of answered calls. Callbacks may send, cancel and free
 * the pool; a free requested meanwhile happens once the list is empty, so
 * callers must not touch the pool after this returns.
 */
static void
flush_answers(struct upstream_pool *p)
{
    struct upstream_call *c;

    p->in_flush++;
    while ((c = TAILQ_FIRST(&p->done)) != NULL) {
        TAILQ_REMOVE(&p->done, c, link);
        deliver(c);
    }
    p->in_flush--;
    if (p->in_flush == 0 && p->free_requested)
        pool_destroy(p);
}

static void
kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    flush_answers(arg);
}

/* ---- connections ---- */

static struct conn *
conn_new(struct host *h, evutil_socket_t fd, unsigned addr)
{
    struct upstream_pool *p = h->pool;
    struct conn *k = xcalloc(1, sizeof *k);

    k->host = h;
    h->users++;
    k->fd = fd;
    k->addr = addr;
    k->ps = upstream_parser_new(0, p->max_response);
    event_assign(&k->rd, p->base, fd, EV_READ | EV_PERSIST, conn_io_cb, k);
    event_assign(&k->wr, p->base, fd, EV_WRITE | EV_PERSIST, conn_io_cb, k);
    evtimer_assign(&k->idle_timer, p->base, conn_idle_cb, k);
    k->state = CONN_CONNECTING;
    TAILQ_INSERT_TAIL(&p->busy, k, link);
    p->nconns++;
    return k;
}

/* Binds call and connection and starts the response deadline. */
static void
conn_attach(struct conn *k, struct upstream_call *c)
{
    struct timeval tv = util_ms_to_tv(c->timeout_ms);

    k->call = c;
    k->sent = 0;
    k->rc = UPSTREAM_PARSE_MORE;
    c->conn = k;
    c->state = CALL_RUNNING;
    upstream_parser_reset(k->ps, c->head);
    if (c->head_fn != NULL)
        upstream_parser_options(k->ps,
                                UPSTREAM_PARSER_HEAD | (c->upgrade ? UPSTREAM_PARSER_UPGRADE : 0u));
    evtimer_add(&c->deadline, &tv);
}

/* Stops reading a streamed call's answer until upstream_resume(); its timeout waits too. */
static void
call_pause(struct upstream_call *c)
{
    c->paused = 1;
    evtimer_del(&c->deadline);
    if (c->conn != NULL)
        event_del(&c->conn->rd);
}

/* The consumer of a streamed call gave it up: it is forgotten, its connection closed. */
static void
call_abandon(struct upstream_call *c)
{
    struct upstream_pool *p = c->pool;

    if (c->conn != NULL)
        conn_free(c->conn);
    p->npending--;
    call_free(c);
}

/*
 * Hands the consumer of a streamed call the body its parser holds, and
 * finishes the call once its answer is complete. Returns 0 to read on, 1
 * while paused, -1 once the call is finished or abandoned (k may be gone).
 */
static int
pump(struct conn *k)
{
    struct upstream_call *c = k->call;

    if (c->paused)
        return 1;
    if (c->streaming) {
        size_t len;
        const char *b = upstream_parser_body(k->ps, &len);
        if (len > 0) {
            enum upstream_action act = c->body_fn(c->arg, b, len);
            if (act == UPSTREAM_ABANDON) {
                call_abandon(c);
                return -1;
            }
            if (act == UPSTREAM_PAUSE)
                call_pause(c);
        }
    }
    if (k->rc == UPSTREAM_PARSE_DONE && !c->paused) {
        call_finish(c, UPSTREAM_OK, "");
        return -1;
    }
    return c->paused;
}

/*
 * The final head of a streamed call's answer arrived: its consumer says how
 * the body is read. Returns the parser's next status, or -2 when the call was
 * abandoned (k is gone).
 */
static int
on_head(struct conn *k)
{
    struct upstream_call *c = k->call;
    struct upstream_response res;
    enum upstream_action act;
    int rc;

    /* What came with the head is parsed first: an answer whose body starts malformed is an
     * error before any of it goes on. */
    (void)upstream_parser_body_mode(k->ps, 1, 0);
    rc = upstream_parser_resume(k->ps);
    if (rc == UPSTREAM_PARSE_ERROR)
        return rc;
    upstream_parser_response(k->ps, &res);
    act = c->head_fn(c->arg, &res);
    if (act == UPSTREAM_ABANDON) {
        call_abandon(c);
        return -2;
    }
    c->streaming = act != UPSTREAM_BUFFER;
    if (c->upgrade && res.status == 101 && c->wbody != NULL)
        c->framing = BODY_RAW; /* the other protocol's bytes, as they come */
    if (act == UPSTREAM_PAUSE)
        call_pause(c);
    else if (c->streaming)
        arm_idle(c); /* from the head on: between two moves */
    if (!c->streaming &&
        upstream_parser_body_mode(k->ps, 0, c->max_body ? c->max_body : c->pool->max_response) < 0)
        return UPSTREAM_PARSE_ERROR;
    return rc;
}

/*
 * The connection failed before the call's answer was complete: reading or
 * writing hit EOF or an error (errno_ else 0).
 */
static void
conn_broken(struct conn *k, int errno_)
{
    struct upstream_call *c = k->call;
    int started = upstream_parser_started(k->ps), reused = k->reused;
    char detail[160], why[96];

    /* TLS says more than errno: an alert of the upstream (a client certificate it refused). */
    snprintf(why, sizeof why, "%s", k->tls_err[0] ? k->tls_err : errno_ ? strerror(errno_) : "");
    if (!started) {
        conn_free(k);
        if (reused && c->idempotent && !c->retried) {
            /* The upstream closed a kept connection meanwhile: once more, on a new one. */
            c->retried = 1;
            call_connect(c);
            return;
        }
        snprintf(detail, sizeof detail, "upstream closed the connection before answering%s%s",
                 why[0] ? ": " : "", why);
        call_finish(c, UPSTREAM_CONNECT, detail);
        return;
    }
    if (errno_ == 0 && upstream_parser_eof(k->ps) == UPSTREAM_PARSE_DONE) {
        /* The close ended the body: its last piece goes on first (or once resumed). */
        k->rc = UPSTREAM_PARSE_DONE;
        event_del(&k->rd);
        (void)pump(k);
        return;
    }
    snprintf(detail, sizeof detail, "upstream closed the connection mid-answer%s%s",
             why[0] ? ": " : "", why);
    call_finish(c, UPSTREAM_PROTOCOL, detail);
}

/*
 * Reads what has arrived for the call on k. Returns 0 while its answer is
 * incomplete, -1 once the call is finished (k may be gone).
 */
static int
conn_read(struct conn *k)
{
    struct upstream_call *c = k->call;
    int r;

    if (c->paused)
        return 0;
    /* What was held while paused, and an answer completed meanwhile, go first. */
    if ((r = pump(k)) != 0)
        return r < 0 ? -1 : 0;
    for (int i = 0; i < READS_PER_EVENT; i++) {
        size_t room;
        char *space = upstream_parser_space(k->ps, &room);
        ssize_t n = conn_recv(k, space, room);
        int rc;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0) {
            conn_broken(k, n < 0 ? errno : 0);
            return -1;
        }
        if (c->streaming)
            arm_idle(c);
        rc = upstream_parser_feed(k->ps, (size_t)n);
        while (rc == UPSTREAM_PARSE_INTERIM) {
            if (c->interim != NULL) {
                struct upstream_response res;
                upstream_parser_response(k->ps, &res);
                c->interim(c->arg, &res);
            }
            rc = upstream_parser_resume(k->ps);
        }
        if (rc == UPSTREAM_PARSE_HEAD && (rc = on_head(k)) == -2)
            return -1;
        k->rc = rc;
        if (rc == UPSTREAM_PARSE_ERROR) {
            struct upstream_response res;
            upstream_parser_response(k->ps, &res);
            call_finish(c, res.error, res.detail);
            return -1;
        }
        if ((r = pump(k)) != 0)
            return r < 0 ? -1 : 0;
        if ((size_t)n < room && (k->ssl == NULL || !SSL_has_pending(k->ssl)))
            return 0; /* a TLS read takes one record: what TLS holds is read on */
    }
    if (k->ssl != NULL && SSL_has_pending(k->ssl))
        event_active(&k->rd, EV_READ, 1); /* the socket may be empty: no event would come */
    return 0;
}

/* Arms or disarms the write event of k as its call has bytes to write or not. */
static void
want_write(struct conn *k, int on)
{
    if (on && !k->writing) {
        event_add(&k->wr, NULL);
        k->writing = 1;
    } else if (!on && k->writing) {
        event_del(&k->wr);
        k->writing = 0;
    }
}

/* Writes what the socket takes; returns 0, or -1 once the call is finished (k may be gone). */
static int
conn_write(struct conn *k)
{
    struct upstream_call *c = k->call;
    int err;

    while (k->sent < c->req_len) {
        ssize_t n = conn_send(k, c->req + k->sent, c->req_len - k->sent);
        if (n > 0) {
            k->sent += (size_t)n;
            if (c->wbody != NULL || c->streaming)
                arm_idle(c);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_write(k, !k->write_wants_read);
            return 0;
        }
        err = n < 0 ? errno : EPIPE;
        goto broken;
    }
    while (c->wbody != NULL && evbuffer_get_length(c->wbody) > 0) {
        int n;
        if (k->ssl != NULL) {
            struct evbuffer_iovec v;
            ssize_t w;
            evbuffer_peek(c->wbody, -1, NULL, &v, 1);
            w = conn_send(k, v.iov_base, v.iov_len);
            if (w > 0)
                evbuffer_drain(c->wbody, (size_t)w);
            n = (int)w;
        } else {
            n = evbuffer_write(c->wbody, k->fd);
        }
        if (n > 0) {
            arm_idle(c);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_write(k, !k->write_wants_read);
            goto drained;
        }
        err = n < 0 ? errno : EPIPE;
        goto broken;
    }
    want_write(k, 0);
    if (c->framing == BODY_RAW && c->wended && !c->half_closed) {
        c->half_closed = 1;
        if (k->ssl != NULL)
            (void)SSL_shutdown(k->ssl); /* close_notify: the end of what goes up */
        shutdown(k->fd, SHUT_WR);
    }
drained:
    if (c->wblocked && evbuffer_get_length(c->wbody) < BODY_LOW) {
        c->wblocked = 0;
        c->drain_fn(c->arg);
    }
    return 0;
broken:
    want_write(k, 0);
    /* The upstream may have answered before it stopped reading (a 413, a 401): take it. */
    if (conn_read(k) == 0)
        conn_broken(k, err);
    return -1;
}

static void
conn_connected(struct conn *k)
{
    struct upstream_call *c = k->call;

    k->host->prefer = k->addr;
    k->state = CONN_ACTIVE;
    event_add(&k->rd, NULL);
    conn_attach(k, c);
    (void)conn_write(k);
}

/* The TLS handshake on k failed (SSL_do_handshake said r): the call fails, saying why. */
static void
tls_failed(struct conn *k, int r)
{
    struct upstream_call *c = k->call;
    char why[160], detail[192];
    int e = SSL_get_error(k->ssl, r), sys = errno;
    long vr = SSL_get_verify_result(k->ssl);

    if (vr != X509_V_OK)
        snprintf(why, sizeof why, "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        snprintf(why, sizeof why, "%s", sys ? strerror(sys) : "the upstream closed the connection");
    else
        ERR_error_string_n(ERR_peek_last_error(), why, sizeof why);
    ERR_clear_error();
    snprintf(detail, sizeof detail, "TLS handshake with upstream %.40s:%d failed: %.100s",
             k->host->name, k->host->port, why);
    call_finish(c, UPSTREAM_CONNECT, detail);
}

/* Goes on with k's TLS handshake; once done, the connection serves its call. */
static void
tls_handshake(struct conn *k)
{
    int r;

    ERR_clear_error();
    errno = 0;
    r = SSL_do_handshake(k->ssl);
    if (r == 1) {
        k->handshaking = 0;
        event_del(&k->wr);
        tls_keep_session(k);
        conn_connected(k);
        return;
    }
    switch (SSL_get_error(k->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        event_del(&k->wr);
        event_add(&k->rd, NULL);
        return;
    case SSL_ERROR_WANT_WRITE:
        event_add(&k->wr, NULL);
        return;
    default:
        tls_failed(k, r);
        return;
    }
}

/*
 * k is connected to a TLS host: starts the handshake, with the host's name
 * as SNI (RFC 6066 section 3: names only, never an address) and as the
 * name the certificate must hold (RFC 6125; an address literal: an IP
 * address SAN), and the host's last session to resume.
 */
static void
tls_start(struct conn *k)
{
    struct host *h = k->host;
    SSL *ssl = SSL_new(h->tls);
    int ok;

    if (ssl == NULL)
        log_abort("out of memory (SSL_new)");
    k->ssl = ssl;
    k->handshaking = 1;
    SSL_set_connect_state(ssl);
    ok = SSL_set_fd(ssl, k->fd) == 1;
    if (h->literal)
        ok = ok && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), h->name) == 1;
    else
        ok = ok && SSL_set_tlsext_host_name(ssl, h->name) == 1 && SSL_set1_host(ssl, h->name) == 1;
    if (!ok) {
        char detail[192];
        ERR_clear_error();
        snprintf(detail, sizeof detail, "cannot set up TLS to upstream %s", h->name);
        call_finish(k->call, UPSTREAM_CONNECT, detail);
        return;
    }
    if (h->session != NULL)
        (void)SSL_set_session(ssl, h->session);
    tls_handshake(k);
}

/* The connect attempt on k failed with err: try the host's next address, if any. */
static void
connect_failed(struct conn *k, int err)
{
    struct upstream_call *c = k->call;
    char where[INET6_ADDRSTRLEN + 16], detail[192];

    addr_text(&k->host->addrs[k->addr], where, sizeof where);
    conn_free(k);
    if (c->tries < c->host->naddrs) {
        conn_open(c);
        return;
    }
    snprintf(detail, sizeof detail, "cannot connect to upstream %s: %s", where, strerror(err));
    call_finish(c, UPSTREAM_CONNECT, detail);
}

static void
conn_io_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *k = arg;
    struct upstream_pool *p = k->host->pool;

    if (k->state == CONN_IDLE) {
        /* EOF, an error or stray bytes on an idle connection: it is of no more use (TLS
         * messages that carry no bytes, session tickets, leave it be). */
        char b[64];
        ssize_t n = conn_recv(k, b, sizeof b);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_free(k);
        return;
    }
    if (k->call == NULL || k->call->state == CALL_DONE)
        return; /* answered; delivered before the loop runs again */
    if (k->state == CONN_CONNECTING && k->handshaking) {
        tls_handshake(k);
    } else if (k->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err == EINPROGRESS || err == EALREADY)
            return;
        event_del(&k->wr);
        if (err != 0)
            connect_failed(k, err);
        else if (k->host->tls != NULL)
            tls_start(k);
        else
            conn_connected(k);
    } else {
        /* TLS: a read that waited for the socket to take bytes, or a write for bytes. */
        if (k->read_wants_write && (what & EV_WRITE)) {
            k->read_wants_write = 0;
            what |= EV_READ;
        }
        if (k->write_wants_read && (what & EV_READ)) {
            k->write_wants_read = 0;
            what |= EV_WRITE;
        }
        if ((what & EV_WRITE) && conn_write(k) < 0) {
            flush_answers(p);
            return;
        }
        if ((what & EV_READ) && k->call->state == CALL_RUNNING)
            (void)conn_read(k);
    }
    flush_answers(p);
}

static void
conn_idle_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_free(arg);
}

/*
 * An idle connection to reuse, most recent first, or NULL. For a request
 * that is not sent twice (`check`), a connection whose FIN has arrived but
 * not been seen by the loop yet is dropped on the way (one recv with
 * MSG_PEEK); the others rely on the retry instead of paying that syscall.
 */
static struct conn *
take_idle(struct host *h, int check)
{
    struct conn *k;

    while ((k = TAILQ_FIRST(&h->idle)) != NULL) {
        char b;
        if (check) {
            ssize_t n = recv(k->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (!(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
                conn_free(k);
                continue;
            }
        }
        TAILQ_REMOVE(&h->idle, k, link);
        h->nidle--;
        h->pool->nidle--;
        evtimer_del(&k->idle_timer);
        TAILQ_INSERT_TAIL(&h->pool->busy, k, link);
        k->state = CONN_ACTIVE;
        k->reused = 1;
        return k;
    }
    return NULL;
}

/* Opens a connection to the host's next untried address for c. */
static void
conn_open(struct upstream_call *c)
{
    struct host *h = c->host;
    char where[INET6_ADDRSTRLEN + 16], detail[192];
    int err = 0;

    while (c->tries < h->naddrs) {
        unsigned i = (h->prefer + c->tries++) % h->naddrs;
        const struct sockaddr_storage *ss = &h->addrs[i];
        int one = 1;
        evutil_socket_t fd =
            socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0) {
            snprintf(detail, sizeof detail, "cannot open a socket: %s", strerror(errno));
            call_finish(c, UPSTREAM_CONNECT, detail);
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (const struct sockaddr *)ss, h->lens[i]) == 0 || errno == EINPROGRESS) {
            struct conn *k = conn_new(h, fd, i);
            k->call = c;
            c->conn = k;
            c->state = CALL_CONNECTING;
            event_add(&k->wr, NULL);
            return;
        }
        err = errno;
        addr_text(ss, where, sizeof where);
        close(fd);
    }
    if (err == 0) {
        snprintf(detail, sizeof detail, "no address for upstream %s", h->name);
    } else {
        snprintf(detail, sizeof detail, "cannot connect to upstream %s: %s", where, strerror(err));
    }
    call_finish(c, UPSTREAM_CONNECT, detail);
}

/* ---- name lookups ---- */

static void
lookup_unref(struct lookup *lk)
{
    int last;
    pthread_mutex_lock(&lk->mu);
    last = --lk->refs == 0;
    pthread_mutex_unlock(&lk->mu);
    if (!last)
        return;
    pthread_mutex_destroy(&lk->mu);
    free(lk->name);
    free(lk);
}

static void *
lookup_main(void *arg)
{
    struct lookup *lk = arg;
    struct addrinfo hints, *res = NULL;
    char port[8];
    int rc;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    snprintf(port, sizeof port, "%d", lk->port);
    rc = getaddrinfo(lk->name, port, &hints, &res);

    pthread_mutex_lock(&lk->mu);
    if (rc != 0) {
        snprintf(lk->err, sizeof lk->err, "%s", gai_strerror(rc));
    } else {
        for (struct addrinfo *ai = res; ai != NULL && lk->naddrs < MAX_ADDRS; ai = ai->ai_next) {
            if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
                ai->ai_addrlen > sizeof lk->addrs[0])
                continue;
            memcpy(&lk->addrs[lk->naddrs], ai->ai_addr, ai->ai_addrlen);
            lk->lens[lk->naddrs++] = ai->ai_addrlen;
        }
        if (lk->naddrs == 0)
            snprintf(lk->err, sizeof lk->err, "no IPv4 or IPv6 address");
    }
    lk->done = 1;
    if (lk->efd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(lk->efd, &one, sizeof one);
        (void)w; /* the counter cannot overflow here */
    }
    pthread_mutex_unlock(&lk->mu);
    if (res != NULL)
        freeaddrinfo(res);
    lookup_unref(lk);
    return NULL;
}

/* A lookup finished: take its addresses and move the calls that waited for them. */
static void
host_lookup_done(struct host *h)
{
    struct lookup *lk = h->lookup;
    struct upstream_call *c;

    h->lookup = NULL;
    if (lk->naddrs > 0) {
        memcpy(h->addrs, lk->addrs, sizeof h->addrs);
        memcpy(h->lens, lk->lens, sizeof h->lens);
        h->naddrs = lk->naddrs;
        h->prefer = 0;
        h->resolved_ms = now_ms();
    } else {
        /*
         * A failure is not cached: the next call looks the name up again,
         * meanwhile using the addresses of the last success, if any.
         */
        snprintf(h->lookup_err, sizeof h->lookup_err, "cannot resolve upstream host %s: %s",
                 h->name, lk->err);
    }
    lookup_unref(lk);
    while ((c = TAILQ_FIRST(&h->waiting)) != NULL) {
        TAILQ_REMOVE(&h->waiting, c, link);
        if (h->naddrs == 0) {
            call_finish(c, UPSTREAM_CONNECT, h->lookup_err);
        } else {
            c->tries = 0;
            conn_open(c);
        }
    }
}

static void
lookup_ready_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_pool *p = arg;
    struct host *h;
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof n);

    (void)what;
    (void)r;
    LIST_FOREACH(h, &p->hosts, link)
    {
        int done;
        if (h->lookup == NULL)
            continue;
        pthread_mutex_lock(&h->lookup->mu);
        done = h->lookup->done;
        pthread_mutex_unlock(&h->lookup->mu);
        if (done)
            host_lookup_done(h);
    }
    flush_answers(p);
}

/* Starts looking h's name up; returns 0, or -1 with h->lookup_err set. */
static int
lookup_start(struct host *h)
{
    struct upstream_pool *p = h->pool;
    struct lookup *lk;
    pthread_attr_t attr;
    pthread_t tid;
    sigset_t all, old;
    int rc;

    if (p->lookup_fd < 0) {
        p->lookup_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (p->lookup_fd < 0) {
            snprintf(h->lookup_err, sizeof h->lookup_err, "cannot resolve upstream host %s: %s",
                     h->name, strerror(errno));
            return -1;
        }
        event_assign(&p->lookup_ev, p->base, p->lookup_fd, EV_READ | EV_PERSIST, lookup_ready_cb,
                     p);
        event_add(&p->lookup_ev, NULL);
    }
    lk = xcalloc(1, sizeof *lk);
    pthread_mutex_init(&lk->mu, NULL);
    lk->refs = 2;
    lk->efd = p->lookup_fd;
    lk->name = xstrdup(h->name);
    lk->port = h->port;

    /* Signals stay with the threads that handle them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 512 * 1024);
    rc = pthread_create(&tid, &attr, lookup_main, lk);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        lk->refs = 1;
        lookup_unref(lk);
        snprintf(h->lookup_err, sizeof h->lookup_err, "cannot resolve upstream host %s: %s",
                 h->name, strerror(rc));
        return -1;
    }
    h->lookup = lk;
    return 0;
}

/* The pool forgets a lookup in flight; its thread frees it. */
static void
lookup_orphan(struct lookup *lk)
{
    pthread_mutex_lock(&lk->mu);
    lk->efd = -1;
    pthread_mutex_unlock(&lk->mu);
    lookup_unref(lk);
}

/* ---- calls ---- */

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_call *c = arg;
    struct upstream_pool *p = c->pool;
    char detail[192];

    (void)fd;
    (void)what;
    switch (c->state) {
    case CALL_LOOKUP:
        TAILQ_REMOVE(&c->host->waiting, c, link);
        snprintf(detail, sizeof detail, "looking up upstream host %s took over %llu ms",
                 c->host->name, (unsigned long long)c->connect_ms);
        break;
    case CALL_CONNECTING:
        snprintf(detail, sizeof detail, "connecting to upstream %s:%d took over %llu ms",
                 c->host->name, c->host->port, (unsigned long long)c->connect_ms);
        break;
    default:
        snprintf(detail, sizeof detail, "upstream %s:%d did not answer within %llu ms",
                 c->host->name, c->host->port, (unsigned long long)c->timeout_ms);
        break;
    }
    /* call_finish closes the connection: it is never reused after a deadline. */
    call_finish(c, UPSTREAM_TIMEOUT, detail);
    flush_answers(p);
}

/* Gets c a new connection: from the host's addresses, after a lookup when needed. */
static void
call_connect(struct upstream_call *c)
{
    struct host *h = c->host;
    struct timeval tv = util_ms_to_tv(c->connect_ms);
    int stale = !h->literal && (h->naddrs == 0 || now_ms() - h->resolved_ms > LOOKUP_TTL_MS);

    evtimer_add(&c->deadline, &tv);
    c->tries = 0;
    if (stale && h->lookup == NULL && lookup_start(h) < 0 && h->naddrs == 0) {
        call_finish(c, UPSTREAM_CONNECT, h->lookup_err);
        return;
    }
    if (h->naddrs == 0) {
        c->state = CALL_LOOKUP;
        TAILQ_INSERT_TAIL(&h->waiting, c, link);
        return;
    }
    /* Addresses past their time are used while the new ones are looked up. */
    conn_open(c);
}

/* Frees a host entry that nothing uses (no call, no connection). */
static void
host_free(struct host *h)
{
    assert(h->users == 0 && TAILQ_EMPTY(&h->waiting) && TAILQ_EMPTY(&h->idle));
    LIST_REMOVE(h, link);
    if (h->lookup != NULL)
        lookup_orphan(h->lookup);
    SSL_SESSION_free(h->session);
    SSL_CTX_free(h->tls);
    free(h->name);
    free(h);
}

/* A call or a connection of h is gone: a retired entry goes with its last one. */
static void
host_unuse(struct host *h)
{
    assert(h->users > 0);
    if (--h->users == 0 && h->retired && !h->pool->closing)
        host_free(h);
}

/*
 * A newer generation's context for h's (host, port) is in use: h keeps no
 * connection idle from now on, and goes once unused.
 */
static void
host_retire(struct host *h)
{
    h->retired = 1;
    h->users++; /* closing its idle connections must not free it under our feet */
    while (!TAILQ_EMPTY(&h->idle))
        conn_free(TAILQ_FIRST(&h->idle));
    host_unuse(h);
}

static struct host *
host_get(struct upstream_pool *p, const char *name, int port, SSL_CTX *tls, uint64_t tls_gen)
{
    struct host *h, *other, *next;
    size_t n = strlen(name);
    struct sockaddr_in *s4;
    struct sockaddr_in6 *s6;
    int older = 0;

    if (n >= 2 && name[0] == '[' && name[n - 1] == ']') {
        name++;
        n -= 2;
    }
    LIST_FOREACH(h, &p->hosts, link)
    {
        if (h->port == port && h->tls == tls && strlen(h->name) == n &&
            memcmp(h->name, name, n) == 0)
            return h;
    }
    /* Another context of the same (host, port): the older generation's is retired. */
    for (other = LIST_FIRST(&p->hosts); other != NULL && tls != NULL; other = next) {
        next = LIST_NEXT(other, link);
        if (other->tls == NULL || other->port != port || strlen(other->name) != n ||
            memcmp(other->name, name, n) != 0)
            continue;
        if (other->tls_gen > tls_gen)
            older = 1;
        else if (other->tls_gen < tls_gen && !other->retired)
            host_retire(other); /* may free it: `next` was taken first */
    }
    h = xcalloc(1, sizeof *h);
    h->pool = p;
    h->name = xstrndup(name, n);
    h->port = port;
    if (tls != NULL) {
        SSL_CTX_up_ref(tls);
        h->tls = tls;
        h->tls_gen = tls_gen;
        h->retired = older;
    }
    TAILQ_INIT(&h->waiting);
    TAILQ_INIT(&h->idle);
    s4 = (struct sockaddr_in *)&h->addrs[0];
    s6 = (struct sockaddr_in6 *)&h->addrs[0];
    if (inet_pton(AF_INET, h->name, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        h->lens[0] = sizeof *s4;
        h->naddrs = 1;
        h->literal = 1;
    } else if (inet_pton(AF_INET6, h->name, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        h->lens[0] = sizeof *s6;
        h->naddrs = 1;
        h->literal = 1;
    }
    LIST_INSERT_HEAD(&p->hosts, h, link);
    return h;
}

static int
valid_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i]))
            return 0;
    return 1;
}

/* Bytes a request target or Host value may hold: VCHAR. */
static int
valid_vchars(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

/* Header lines: each "name:value" CRLF, no NUL, CR or LF elsewhere. */
static int
valid_header_lines(const char *s, size_t n)
{
    size_t line = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\r') {
            if (i + 1 >= n || s[i + 1] != '\n' || i == line)
                return 0;
            i++;
            line = i + 1;
        } else if (ch == '\n' || ch == '\0') {
            return 0;
        } else if (i == line && !is_tchar(ch)) {
            return 0;
        }
    }
    return line == n;
}

static int
method_is(const struct upstream_request *r, const char *m)
{
    return r->method_len == strlen(m) && memcmp(r->method, m, r->method_len) == 0;
}

struct upstream_call *
upstream_send(struct upstream_pool *p, const struct upstream_target *t,
              const struct upstream_request *req, upstream_done_fn *done, void *arg)
{
    char host_buf[300], cl_buf[48];
    const char *host_header = t->host_header;
    size_t hh_len, cl_len = 0, need, body_len;
    struct upstream_call *c;
    struct host *h;
    struct conn *k;
    char *w;

    assert(p != NULL && t != NULL && req != NULL && done != NULL);
    assert(req->head == NULL || req->on_body != NULL);
    assert(!req->body_stream || (req->drain != NULL && !(req->body_chunked && req->body_len)));
    assert(!req->upgrade || (req->head != NULL && req->body_stream));
    if (p->closing || t->host == NULL || *t->host == '\0' || t->port < 1 || t->port > 65535 ||
        !valid_token(req->method, req->method_len) || !valid_vchars(req->target, req->target_len) ||
        (req->headers_len > 0 && !valid_header_lines(req->headers, req->headers_len)))
        return NULL;
    if (host_header == NULL) {
        int v6 = strchr(t->host, ':') != NULL && t->host[0] != '[';
        if (t->port == 80)
            snprintf(host_buf, sizeof host_buf, "%s%s%s", v6 ? "[" : "", t->host, v6 ? "]" : "");
        else
            snprintf(host_buf, sizeof host_buf, "%s%s%s:%d", v6 ? "[" : "", t->host, v6 ? "]" : "",
                     t->port);
        host_header = host_buf;
    }
    hh_len = strlen(host_header);
    if (!valid_vchars(host_header, hh_len))
        return NULL;
    if (req->body_stream && req->body_chunked)
        cl_len = (size_t)snprintf(cl_buf, sizeof cl_buf, "Transfer-Encoding: chunked\r\n");
    else if (req->body_len > 0 || method_is(req, "POST") || method_is(req, "PUT") ||
             method_is(req, "PATCH"))
        cl_len = (size_t)snprintf(cl_buf, sizeof cl_buf, "Content-Length: %zu\r\n", req->body_len);

    /* One block: the call, then the request as it goes on the wire. */
    body_len = req->body_stream ? 0 : req->body_len; /* a pushed body comes later */
    need = req->method_len + 1 + req->target_len + sizeof " HTTP/1.1\r\nHost: " - 1 + hh_len + 2 +
           req->headers_len + cl_len + 2 + body_len;
    c = xmalloc(sizeof *c + need);
    memset(c, 0, sizeof *c);
    w = c->req;
#define PUT(s, n) (memcpy(w, (s), (n)), w += (n))
    PUT(req->method, req->method_len);
    PUT(" ", 1);
    PUT(req->target, req->target_len);
    PUT(" HTTP/1.1\r\nHost: ", sizeof " HTTP/1.1\r\nHost: " - 1);
    PUT(host_header, hh_len);
    PUT("\r\n", 2);
    if (req->headers_len > 0)
        PUT(req->headers, req->headers_len);
    PUT(cl_buf, cl_len);
    PUT("\r\n", 2);
    if (body_len > 0)
        PUT(req->body, body_len);
#undef PUT
    c->req_len = need;
    assert((size_t)(w - c->req) == need);

    h = host_get(p, t->host, t->port, t->tls, t->tls_generation);
    h->users++;
    c->pool = p;
    c->host = h;
    c->done = done;
    c->interim = req->interim;
    c->head_fn = req->head;
    c->body_fn = req->on_body;
    c->max_body = req->max_body;
    c->upgrade = req->upgrade;
    c->arg = arg;
    if (req->body_stream) {
        c->wbody = evbuffer_new();
        if (c->wbody == NULL)
            log_abort("out of memory (evbuffer)");
        c->drain_fn = req->drain;
        c->framing = req->body_chunked ? BODY_CHUNKED : BODY_LENGTH;
        c->wleft = req->body_len;
        c->retried = 1; /* what was pushed is gone: never sent twice */
    }
    c->connect_ms = t->connect_timeout_ms ? t->connect_timeout_ms : DEFAULT_CONNECT_MS;
    c->timeout_ms = t->timeout_ms ? t->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->head = method_is(req, "HEAD");
    c->idempotent = method_is(req, "GET") || c->head || method_is(req, "PUT") ||
                    method_is(req, "DELETE") || method_is(req, "OPTIONS");
    evtimer_assign(&c->deadline, p->base, deadline_cb, c);
    p->npending++;

    if ((k = take_idle(h, !c->idempotent || c->wbody != NULL)) != NULL) {
        conn_attach(k, c);
        (void)conn_write(k);
    } else {
        call_connect(c);
    }
    /* Answers are never given before upstream_send returns. */
    if (!TAILQ_EMPTY(&p->done))
        event_active(&p->kick, EV_TIMEOUT, 1);
    return c;
}

int
upstream_write_body(struct upstream_call *c, const char *data, size_t len)
{
    struct conn *k = c->conn;

    assert(c->wbody != NULL && !c->wended);
    if (c->state == CALL_DONE)
        return -1;
    if (len > 0) {
        switch (c->framing) {
        case BODY_LENGTH:
            assert(len <= c->wleft);
            c->wleft -= len;
            evbuffer_add(c->wbody, data, len);
            break;
        case BODY_CHUNKED:
            evbuffer_add_printf(c->wbody, "%zx\r\n", len);
            evbuffer_add(c->wbody, data, len);
            evbuffer_add(c->wbody, "\r\n", 2);
            break;
        case BODY_RAW:
            evbuffer_add(c->wbody, data, len);
            break;
        case BODY_NONE:
            assert(0);
            break;
        }
    }
    /* Written from the loop: no callback can run from here. */
    if (k != NULL && c->state == CALL_RUNNING)
        want_write(k, 1);
    if (evbuffer_get_length(c->wbody) >= BODY_WINDOW) {
        c->wblocked = 1;
        return 1;
    }
    return 0;
}

void
upstream_end_body(struct upstream_call *c)
{
    assert(c->wbody != NULL);
    if (c->wended || c->state == CALL_DONE)
        return;
    c->wended = 1;
    if (c->framing == BODY_CHUNKED)
        evbuffer_add(c->wbody, "0\r\n\r\n", 5);
    if (c->conn != NULL && c->state == CALL_RUNNING)
        want_write(c->conn, 1);
}

void
upstream_resume(struct upstream_call *c)
{
    struct conn *k = c->conn;

    if (!c->paused || c->state != CALL_RUNNING)
        return;
    c->paused = 0;
    arm_idle(c);
    if (k != NULL) {
        event_add(&k->rd, NULL);
        event_active(&k->rd, EV_READ, 1); /* what it holds goes on from the loop */
    }
}

void
upstream_set_timeout(struct upstream_call *c, uint64_t ms)
{
    c->timeout_ms = ms;
    if (ms == 0)
        evtimer_del(&c->deadline);
    else if (c->state == CALL_RUNNING)
        arm_idle(c);
}

void
upstream_cancel(struct upstream_call *c)
{
    struct upstream_pool *p;

    if (c == NULL)
        return;
    p = c->pool;
    switch (c->state) {
    case CALL_LOOKUP:
        TAILQ_REMOVE(&c->host->waiting, c, link);
        break;
    case CALL_CONNECTING:
    case CALL_RUNNING:
        if (c->conn != NULL)
            conn_free(c->conn);
        break;
    case CALL_DONE:
        TAILQ_REMOVE(&p->done, c, link);
        if (c->conn != NULL)
            /* The answer is complete: the connection may be kept. */
            conn_release(c->conn, upstream_parser_reusable(c->conn->ps));
        break;
    }
    p->npending--;
    call_free(c);
}

/* ---- the pool itself ---- */

struct upstream_pool *
upstream_pool_new(struct event_base *base, const struct upstream_pool_config *cfg)
{
    struct upstream_pool *p = xcalloc(1, sizeof *p);
    uint64_t idle_ms = cfg && cfg->idle_timeout_ms ? cfg->idle_timeout_ms : DEFAULT_IDLE_MS;

    p->base = base;
    p->max_idle = cfg && cfg->max_idle ? cfg->max_idle : DEFAULT_MAX_IDLE;
    p->max_response =
        cfg && cfg->max_response_bytes ? cfg->max_response_bytes : DEFAULT_MAX_RESPONSE;
    p->idle_tv = util_ms_to_tv(idle_ms);
    /* Every idle connection has the same timeout: an O(1) queue instead of the heap. */
    p->idle_timeout = event_base_init_common_timeout(base, &p->idle_tv);
    if (p->idle_timeout == NULL)
        p->idle_timeout = &p->idle_tv;
    LIST_INIT(&p->hosts);
    TAILQ_INIT(&p->busy);
    TAILQ_INIT(&p->done);
    p->lookup_fd = -1;
    event_assign(&p->kick, base, -1, 0, kick_cb, p);
    return p;
}

static void
pool_destroy(struct upstream_pool *p)
{
    struct host *h;

    assert(TAILQ_EMPTY(&p->done) && TAILQ_EMPTY(&p->busy) && p->npending == 0);
    while ((h = LIST_FIRST(&p->hosts)) != NULL) {
        assert(TAILQ_EMPTY(&h->waiting));
        while (!TAILQ_EMPTY(&h->idle))
            conn_free(TAILQ_FIRST(&h->idle));
        host_free(h);
    }
    if (p->lookup_fd >= 0) {
        event_del(&p->lookup_ev);
        close(p->lookup_fd);
    }
    event_del(&p->kick);
    upstream_parser_free(p->spare);
    assert(p->nconns == 0);
    free(p);
}

void
upstream_pool_free(struct upstream_pool *p)
{
    struct host *h;
    struct conn *k, *next;
    struct upstream_call *c;

    if (p == NULL || p->closing)
        return;
    p->closing = 1;
    LIST_FOREACH(h, &p->hosts, link)
    {
        while ((c = TAILQ_FIRST(&h->waiting)) != NULL) {
            TAILQ_REMOVE(&h->waiting, c, link);
            call_finish(c, UPSTREAM_SHUTDOWN, "the upstream pool is shutting down");
        }
        while (!TAILQ_EMPTY(&h->idle))
            conn_free(TAILQ_FIRST(&h->idle));
    }
    for (k = TAILQ_FIRST(&p->busy); k != NULL; k = next) {
        next = TAILQ_NEXT(k, link);
        /* A complete answer not yet delivered keeps its connection until it is. */
        if (k->call != NULL && k->call->state != CALL_DONE)
            call_finish(k->call, UPSTREAM_SHUTDOWN, "the upstream pool is shutting down");
        else if (k->call == NULL)
            conn_free(k);
    }
    p->free_requested = 1;
    if (p->in_flush)
        return; /* the flush in progress answers the rest and frees the pool */
    flush_answers(p);
}

unsigned
upstream_pool_pending(const struct upstream_pool *p)
{
    return p->npending;
}

unsigned
upstream_pool_connections(const struct upstream_pool *p)
{
    return p->nconns;
}

unsigned
upstream_pool_idle(const struct upstream_pool *p)
{
    return p->nidle;
}
