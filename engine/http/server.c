/* server.c - HTTP/1.1 server on libevent: workers, connections, request lifecycle, limits. */
#define _GNU_SOURCE
#include "server.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <jansson.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "addr_count.h"
#include "head.h"
#include "log.h"
#include "proxy_proto.h"
#include "realip.h"
#include "slab.h"
#include "util.h"

#define IN_BUF_INITIAL 8192
#define IN_BUF_POOL 16 /* input buffers of IN_BUF_INITIAL bytes a worker keeps for reuse */
#define ACCEPT_BATCH 64
#define OUT_HIGH_WATER (1u << 20) /* stop reading a connection whose peer does not read */
#define OUT_LOW_WATER (64u << 10)
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (256u << 10)
#define EVICT_GRACE_MS 1000   /* at the cap, connections younger than this go last */
#define HANDOFF_MAX 64        /* new connections waiting for another worker to make room */
#define ACCEPT_PAUSE_MS 100   /* out of descriptors: accepting waits this long */
#define PRESSURE_LOG_MS 10000 /* at most one line per worker this often about the caps */
#define TRIM_MIN_PEAK 256     /* connections after which a fall to a quarter returns memory */
#define SLAB_CELLS 64         /* connections in one mapping */
#define STOP_GRACE_MS 1000    /* on stopping, for a new connection's first request to arrive */
#define STREAM_WINDOW                                                                              \
    (256u << 10)                /* a streamed answer's bytes waiting for the client: the           \
                                   application waits */
#define STREAM_LOW (64u << 10)  /* ... until they fall below this */
#define STREAM_READ (64u << 10) /* a streamed request body is read this much at a time */
#define STOP_STREAM_MS 10000    /* on stopping, streamed answers still going have this long */
/* A new connection's PROXY header is due within this (or the header timeout when shorter). */
#define PROXY_HEADER_MS 3000

enum conn_state {
    CONN_READ,     /* reading a request head or body */
    CONN_HANDLING, /* the application has the request */
    CONN_LINGER,   /* answered and half-closed: draining the peer's input until it closes */
};

/* TIMER_STREAM: a streamed answer whose client does not read, or that the server stops. */
enum timer_mode { TIMER_NONE, TIMER_IDLE, TIMER_REQUEST, TIMER_LINGER, TIMER_STREAM, TIMER_PROXY };

/* A request body read by the application (server_body_start). */
enum body_state {
    BODY_NONE,    /* none, or read whole before the request was handed over */
    BODY_PENDING, /* handed over with body_streamed, not read yet */
    BODY_READING, /* being read: server_body_start() */
    BODY_ENDED,   /* read to its end */
    BODY_FAILED,  /* cut short: the connection cannot read another request */
};

/*
 * The connections a worker may close to make room for a new one at the
 * connection cap, in its two queues: idle (no byte of a request yet: new, or
 * between keep-alive requests; least recently active first) and partial (a
 * request begun and not complete; oldest first). A connection the application
 * holds, one with output waiting for its peer, and one closing are in none.
 */
enum conn_queue { QUEUE_NONE, QUEUE_IDLE, QUEUE_PARTIAL };

struct conn {
    struct worker *w;
    int fd;
    enum conn_state state;
    enum timer_mode timer_mode;
    struct event *ev_read, *ev_write, *ev_timer;
    char *in; /* received bytes; the current request starts at in_off */
    size_t in_len, in_cap, in_off;
    struct evbuffer *out;
    /* body of the current request */
    struct http_chunked chunk;
    size_t chunk_raw; /* raw chunked bytes consumed after the head */
    char *body;       /* decoded chunked body */
    size_t body_len, body_cap;
    int sent_continue;
    int closing;         /* close once the output is written */
    size_t consumed;     /* bytes of the current request (head + raw body) */
    int in_process;      /* inside conn_process(): responses do not flush by themselves */
    int paused;          /* not reading: too much output is waiting for the peer */
    int dead;            /* closed while the application held its request: freed on answer */
    int served;          /* a request was answered: the idle timeout applies between requests */
    size_t head_scanned; /* bytes of an incomplete head already given to the parser */
    struct server_request req;
    /* The peer: the TCP one, or the PROXY header's source. */
    int proxy_wait;   /* its PROXY header has not been read yet */
    int peer_trusted; /* peer is in the trusted proxies */
    struct netaddr peer;
    char ip[NETADDR_TEXT_MAX]; /* peer's text, or "unknown" */
    char peer_key[NETADDR_KEY_MAX];
    /* The current request's client when a trusted peer's fields name another address. */
    char client[NETADDR_TEXT_MAX], client_key[NETADDR_KEY_MAX];
    uint32_t addr_slot; /* its address's slot in the server's addr_count, or ADDR_COUNT_NONE */
    enum conn_queue queue;
    uint64_t queued_ms;      /* when it entered its queue (idle: its last activity) */
    TAILQ_ENTRY(conn) qlink; /* in its worker's idle or partial queue */
    LIST_ENTRY(conn) link;   /* in its worker's conns */

    /* A streamed answer (server_stream_start), until its request ends. */
    int streaming;      /* its head is written */
    int stream_chunked; /* each write is a chunk */
    int stream_tunnel;  /* a 101: the bytes go raw both ways */
    int stream_blocked; /* over the window: DRAINED is due */
    int stream_asked;   /* 0: stream_body not asked yet for this request, 1: no, 2: yes */
    server_stream_fn *stream_fn;
    void *stream_arg;
    /* A streamed request body (server_body_start). */
    enum body_state bstate;
    int bpaused;
    int braw;       /* a tunnel's client bytes, until EOF */
    int reader;     /* ev_read runs on_body_read */
    uint64_t bleft; /* Content-Length bytes still to read */
    uint64_t btotal;
    char *bbuf; /* STREAM_READ bytes read at a time */
    char *left; /* bytes read past a chunked body's end: the next request's */
    size_t left_len;
    server_body_fn *body_fn;
    void *body_arg;
};

/* A new connection given to another worker, which closes one of its own for it. */
struct handoff {
    int fd;
    uint32_t addr_slot;
    struct sockaddr_storage ss;
};

struct worker {
    struct server *s;
    unsigned index;
    pthread_t thread;
    struct event_base *base;
    int listen_fd;
    struct event *ev_listen, *ev_stop;
    void *app_state;
    LIST_HEAD(, conn) conns; /* open connections */
    unsigned nconns;
    unsigned peak;    /* most connections open since memory was last returned */
    int trim_at_zero; /* return memory again when the last connection closes */
    /* Connections live in cells mapped apart from the heap: libevent keeps a small record
     * per descriptor number for good, and between such records the memory of closed
     * connections could not go back to the system after a burst. A cell is a struct conn
     * followed by its three events. */
    struct slab_pool cells;
    TAILQ_HEAD(, conn) idle, partial;
    unsigned nidle, npartial;
    atomic_uint nevictable; /* nidle + npartial, read by the other workers */
    char *inbufs[IN_BUF_POOL];
    unsigned ninbufs;
    struct event *ev_handoff, *ev_resume;
    pthread_mutex_t handoff_lock;
    struct handoff handoffs[HANDOFF_MAX]; /* under handoff_lock */
    unsigned nhandoffs;
    unsigned long evicted, refused, refused_ip; /* since the last line about the caps */
    uint64_t pressure_logged_ms;
    int draining;
    time_t date_sec;
    char date[64];
    size_t date_len;
};

struct server {
    struct server_config cfg;
    struct server_app app;
    struct worker *workers;
    unsigned nworkers;
    atomic_uint nconns;
    size_t event_offset, event_bytes; /* in a connection's cell */
    struct addr_count *addr_count;    /* NULL without a per-address cap */
    atomic_int stopping;
    pthread_t main_thread;
    int port;
};

static void conn_process(struct conn *c);
static int conn_flush(struct conn *c);
static void stream_gone(struct conn *c);
static void on_read(evutil_socket_t fd, short what, void *arg);
static int conn_proxy(struct conn *c);

void
server_connection_counts(const struct server *s, struct server_conn_counts *out)
{
    *out = (struct server_conn_counts){0};
    for (unsigned i = 0; i < s->nworkers; i++) {
        const struct worker *w = &s->workers[i];
        unsigned n = __atomic_load_n(&w->nconns, __ATOMIC_RELAXED);
        unsigned idle = __atomic_load_n(&w->nidle, __ATOMIC_RELAXED);
        unsigned partial = __atomic_load_n(&w->npartial, __ATOMIC_RELAXED);
        out->idle += idle;
        out->reading += partial;
        out->active += n > idle + partial ? n - idle - partial : 0;
    }
}

struct event_base *
server_worker_base(struct worker *w)
{
    return w->base;
}

unsigned
server_worker_index(const struct worker *w)
{
    return w->index;
}

const char *
server_worker_date_header(struct worker *w, size_t *len)
{
    struct timeval tv;
    event_base_gettimeofday_cached(w->base, &tv);
    if (tv.tv_sec != w->date_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        w->date_len =
            strftime(w->date, sizeof(w->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        w->date_sec = tv.tv_sec;
    }
    *len = w->date_len;
    return w->date;
}

/* ---- connections ---------------------------------------------------------------------- */

/* A monotonic clock in ms, coarse (a few ms) and cheap: it orders connections for closing. */
static uint64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Gives c an input buffer (from the worker's spares when it has one). */
static void
inbuf_take(struct conn *c)
{
    struct worker *w = c->w;
    c->in = w->ninbufs ? w->inbufs[--w->ninbufs] : xmalloc(IN_BUF_INITIAL);
    c->in_cap = IN_BUF_INITIAL;
}

/*
 * Drops c's input buffer and chunked-body buffer (nothing may point into
 * them): a connection without a request in progress holds neither. Buffers
 * of the initial size go back to the worker's spares, larger ones are freed.
 */
static void
inbuf_release(struct conn *c)
{
    struct worker *w = c->w;
    if (c->in && c->in_cap == IN_BUF_INITIAL && w->ninbufs < IN_BUF_POOL)
        w->inbufs[w->ninbufs++] = c->in;
    else
        free(c->in);
    c->in = NULL;
    c->in_cap = c->in_len = c->in_off = 0;
    c->head_scanned = 0;
    if (c->body) {
        free(c->body);
        c->body = NULL;
        c->body_cap = 0;
    }
}

static void
publish_evictable(struct worker *w)
{
    atomic_store_explicit(&w->nevictable, w->nidle + w->npartial, memory_order_relaxed);
}

static void
queue_remove(struct conn *c)
{
    struct worker *w = c->w;
    if (c->queue == QUEUE_NONE)
        return;
    if (c->queue == QUEUE_IDLE) {
        TAILQ_REMOVE(&w->idle, c, qlink);
        w->nidle--;
    } else {
        TAILQ_REMOVE(&w->partial, c, qlink);
        w->npartial--;
    }
    c->queue = QUEUE_NONE;
    publish_evictable(w);
}

/*
 * Puts c in the queue its state calls for: at the tail when it changes queue,
 * and when it is idle at every call, so that the idle queue is in the order
 * of last activity while the partial one stays in the order requests began.
 */
static void
conn_requeue(struct conn *c)
{
    struct worker *w = c->w;
    enum conn_queue q = QUEUE_NONE;

    if (c->state == CONN_READ && !c->closing && !c->dead && evbuffer_get_length(c->out) == 0)
        q = c->in_len > c->in_off ? QUEUE_PARTIAL : QUEUE_IDLE;
    if (q == c->queue) {
        if (q == QUEUE_IDLE) { /* active again: the most recently active */
            c->queued_ms = now_ms();
            if (TAILQ_NEXT(c, qlink)) {
                TAILQ_REMOVE(&w->idle, c, qlink);
                TAILQ_INSERT_TAIL(&w->idle, c, qlink);
            }
        }
        return;
    }
    queue_remove(c);
    c->queue = q;
    c->queued_ms = now_ms();
    if (q == QUEUE_IDLE) {
        TAILQ_INSERT_TAIL(&w->idle, c, qlink);
        w->nidle++;
    } else if (q == QUEUE_PARTIAL) {
        TAILQ_INSERT_TAIL(&w->partial, c, qlink);
        w->npartial++;
    }
    publish_evictable(w);
}

/*
 * The connection to close for a new one at the cap, or NULL when every one
 * is busy: the least recently active idle one, else the partial one whose
 * request began first; either only when it has been so for EVICT_GRACE_MS,
 * unless no connection has.
 */
static struct conn *
conn_victim(struct worker *w)
{
    uint64_t now = now_ms();
    struct conn *i = TAILQ_FIRST(&w->idle), *p = TAILQ_FIRST(&w->partial);
    if (i && now - i->queued_ms >= EVICT_GRACE_MS)
        return i;
    if (p && now - p->queued_ms >= EVICT_GRACE_MS)
        return p;
    return i ? i : p;
}

/* Counts a connection less from the address in slot (when the server counts them). */
static void
addr_release(struct server *s, uint32_t slot)
{
    if (s->addr_count)
        addr_count_release(s->addr_count, slot);
}

static size_t
round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

/* A zeroed connection of worker w with the storage of its events. */
static struct conn *
conn_alloc(struct worker *w)
{
    const struct server *s = w->s;
    struct conn *c = slab_alloc(&w->cells);
    c->ev_read = (struct event *)((char *)c + s->event_offset);
    c->ev_write = (struct event *)((char *)c + s->event_offset + s->event_bytes);
    c->ev_timer = (struct event *)((char *)c + s->event_offset + 2 * s->event_bytes);
    return c;
}

static void
conn_free(struct conn *c)
{
    struct worker *w = c->w;
    queue_remove(c);
    LIST_REMOVE(c, link);
    w->nconns--;
    atomic_fetch_sub(&w->s->nconns, 1);
    addr_release(w->s, c->addr_slot);
    event_del(c->ev_read);
    event_del(c->ev_write);
    event_del(c->ev_timer);
    evbuffer_free(c->out); /* runs the release callbacks of borrowed bodies */
    if (c->fd >= 0)
        close(c->fd);
    inbuf_release(c);
    free(c->bbuf);
    free(c->left);
    slab_free(&w->cells, c);
#ifdef __GLIBC__
    /* After a burst (a flood of connections) give the freed memory back: each time the
     * connections fall to a quarter of their peak, and once more when none is left. glibc
     * returns the top of its heaps by itself, not what lies between live allocations. */
    if ((w->peak >= TRIM_MIN_PEAK && w->nconns <= w->peak / 4) ||
        (w->trim_at_zero && w->nconns == 0)) {
        w->trim_at_zero = w->nconns > 0;
        w->peak = w->nconns;
        malloc_trim(0);
    }
#endif
    if (w->draining && w->nconns == 0)
        event_base_loopexit(w->base, NULL);
}

/*
 * Closes a connection. One whose request the application still holds stops
 * all I/O now but stays allocated (its request points into it) until the
 * application answers; server_respond() then frees it.
 */
static void
conn_close(struct conn *c)
{
    if (c->state != CONN_HANDLING) {
        conn_free(c);
        return;
    }
    c->dead = 1;
    queue_remove(c);
    event_del(c->ev_read);
    event_del(c->ev_write);
    evtimer_del(c->ev_timer);
    close(c->fd);
    c->fd = -1;
}

static void
conn_set_timer(struct conn *c, enum timer_mode mode)
{
    const struct server_config *cfg = &c->w->s->cfg;
    if (c->timer_mode == mode)
        return;
    c->timer_mode = mode;
    if (mode == TIMER_NONE) {
        evtimer_del(c->ev_timer);
        return;
    }
    uint64_t ms =
        mode == TIMER_IDLE      ? cfg->idle_timeout_ms
        : mode == TIMER_REQUEST ? cfg->header_timeout_ms
        : mode == TIMER_PROXY
            ? (cfg->header_timeout_ms < PROXY_HEADER_MS ? cfg->header_timeout_ms : PROXY_HEADER_MS)
            : LINGER_MS;
    struct timeval tv = util_ms_to_tv(ms);
    evtimer_add(c->ev_timer, &tv);
}

static void
on_linger_read(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            /* Bounded: a peer that keeps sending is cut off. */
            c->in_len += (size_t)n;
            if (c->in_len > LINGER_MAX_BYTES)
                break;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        break; /* EOF or error: the peer has everything */
    }
    conn_close(c);
}

/*
 * Ends a connection whose last response is written: half-closes, then reads
 * and drops what the peer still sends until it closes (at most LINGER_MS from
 * now, however the peer trickles), so that unread input cannot make the
 * kernel reset the connection and destroy the response before the peer has
 * read it.
 */
static void
conn_linger(struct conn *c)
{
    shutdown(c->fd, SHUT_WR);
    queue_remove(c);
    inbuf_release(c);
    event_del(c->ev_read);
    event_assign(c->ev_read, c->w->base, c->fd, EV_READ | EV_PERSIST, on_linger_read, c);
    event_add(c->ev_read, NULL);
    c->state = CONN_LINGER;
    conn_set_timer(c, TIMER_LINGER);
    c->in_len = c->in_off = 0; /* counts the bytes drained */
}

/*
 * Writes what it can; closes the connection when closing and everything is out.
 * Returns -1 when the connection was closed (and freed), else 0.
 */
static int
conn_flush(struct conn *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            conn_close(c); /* peer gone: what it did not read is dropped */
            return -1;
        }
        if (n == 0)
            break;
    }
    if (evbuffer_get_length(c->out) > 0) {
        event_add(c->ev_write, NULL);
        /* A peer that stops reading is given the idle timeout, not forever. */
        if (c->state != CONN_HANDLING)
            conn_set_timer(c, TIMER_IDLE);
        conn_requeue(c);
        return 0;
    }
    event_del(c->ev_write);
    if (c->closing && c->state != CONN_HANDLING) {
        conn_linger(c);
        return -1;
    }
    conn_requeue(c);
    return 0;
}

static void
on_write(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    int streaming = c->state == CONN_HANDLING && c->streaming;
    if (conn_flush(c) != 0) {
        if (streaming)
            stream_gone(c); /* closed under a streamed answer: the application ends it */
        return;
    }
    if (streaming) {
        if (c->stream_blocked && evbuffer_get_length(c->out) < STREAM_LOW) {
            c->stream_blocked = 0;
            if (!c->w->draining)
                conn_set_timer(c, TIMER_NONE);
            c->stream_fn(c->stream_arg, SERVER_STREAM_DRAINED);
        }
        return;
    }
    if (c->paused && evbuffer_get_length(c->out) < OUT_LOW_WATER) {
        c->paused = 0;
        event_add(c->ev_read, NULL);
        conn_process(c);
    }
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    enum timer_mode mode = c->timer_mode;
    c->timer_mode = TIMER_NONE;
    if (c->state == CONN_HANDLING) {
        /* The application's own deadlines apply, but for a streamed answer whose client reads
         * nothing, or whose time is up as the server stops. */
        if (mode == TIMER_STREAM) {
            if (!c->dead)
                conn_close(c);
            stream_gone(c);
        }
        return;
    }
    if (c->state == CONN_LINGER) {
        conn_close(c);
        return;
    }
    /* A connection that sent no byte of a request in time (a new one within the
     * header timeout, a keep-alive one within the idle timeout) is closed silently. */
    if (mode == TIMER_REQUEST && c->in_len > c->in_off) {
        /* A request started and did not complete in time. */
        c->state = CONN_HANDLING;
        c->req.worker = c->w;
        server_respond_problem(&c->req, 408, NULL, "Request Timeout",
                               "the request was not received in time", NULL);
        return;
    }
    conn_close(c);
}

static void
on_read(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    const struct server_config *cfg = &c->w->s->cfg;

    if (c->state == CONN_HANDLING) {
        /* No reading until the response: the request points into the buffer. */
        event_del(c->ev_read);
        return;
    }
    if (c->in_off > 0 && c->in_off == c->in_len) {
        c->in_off = c->in_len = 0;
    }
    if (!c->in)
        inbuf_take(c);
    if (c->in_cap - c->in_len < 2048) {
        if (c->in_off > 0) {
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        if (c->in_cap - c->in_len < 2048) {
            size_t limit = cfg->max_header_bytes + cfg->max_body_bytes + 4096;
            size_t ncap = c->in_cap * 2;
            if (ncap > limit)
                ncap = limit;
            if (ncap > c->in_cap) {
                c->in = xrealloc(c->in, ncap);
                c->in_cap = ncap;
            }
        }
    }
    if (c->in_cap == c->in_len) {
        /* Cannot happen while limits are enforced in conn_process(): be safe. */
        conn_close(c);
        return;
    }
    ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (c->in_len == c->in_off)
                inbuf_release(c);
            return;
        }
        conn_close(c);
        return;
    }
    if (n == 0) {
        /* Peer closed. Whatever was half-received is dropped. */
        conn_close(c);
        return;
    }
    c->in_len += (size_t)n;
    if (c->proxy_wait && conn_proxy(c) != 0)
        return;
    conn_process(c);
}

/* Sets the connection's peer: its text, its key and whether it is a trusted proxy. */
static void
conn_peer_set(struct conn *c, const struct netaddr *a)
{
    const struct server_config *cfg = &c->w->s->cfg;
    if (!a) {
        strcpy(c->ip, "unknown");
        strcpy(c->peer_key, "unknown");
        c->peer_trusted = 0;
        return;
    }
    c->peer = *a;
    netaddr_text(a, c->ip, sizeof(c->ip));
    netaddr_key(a, cfg->ipv6_prefix, c->peer_key, sizeof(c->peer_key));
    c->peer_trusted = cfg->trusted_proxies && cidr_list_match(cfg->trusted_proxies, a);
}

/*
 * Reads the PROXY header at the start of the input. Returns 0 once it is read (the bytes
 * after it are the first request's), 1 when the connection waits for more or was closed.
 */
static int
conn_proxy(struct conn *c)
{
    struct proxy_proto pp;
    int r = proxy_proto_parse(c->in + c->in_off, c->in_len - c->in_off, &pp);
    if (r == 0)
        return 1;
    if (r < 0) {
        /* Not a PROXY header: nothing of it is HTTP to answer. */
        conn_close(c);
        return 1;
    }
    c->proxy_wait = 0;
    c->in_off += (size_t)r;
    if (pp.has_addr)
        conn_peer_set(c, &pp.src);
    conn_set_timer(c, TIMER_REQUEST);
    return 0;
}

/* Sets the request's client address, peer and key, once it has its head. */
static void
conn_client(struct conn *c)
{
    struct server_request *req = &c->req;
    const struct server_config *cfg = &c->w->s->cfg;
    req->ip = c->ip;
    req->ip_key = c->peer_key;
    req->peer = c->ip;
    req->peer_trusted = c->peer_trusted;
    if (!c->peer_trusted)
        return;
    struct netaddr a;
    if (realip_walk(&req->http, cfg->trusted_proxies, &c->peer, &a) == REALIP_PEER)
        return;
    size_t n = netaddr_text(&a, c->client, sizeof(c->client));
    if (a.v6)
        netaddr_key(&a, cfg->ipv6_prefix, c->client_key, sizeof(c->client_key));
    else /* an IPv4 address is its own key */
        memcpy(c->client_key, c->client, n + 1);
    req->ip = c->client;
    req->ip_key = c->client_key;
}

/* Answers an error found while reading a request, then closes. */
static void
conn_fail(struct conn *c, int status, const char *detail)
{
    c->state = CONN_HANDLING;
    c->closing = 1;
    c->req.worker = c->w;
    event_del(c->ev_read);
    server_respond_problem(&c->req, status, NULL, http_reason_phrase(status), detail, NULL);
}

static int
parse_status_to_http(int r, const char **detail)
{
    switch (r) {
    case HTTP_PARSE_TOO_MANY:
        *detail = "too many header fields";
        return 431;
    case HTTP_PARSE_VERSION:
        *detail = "only HTTP/1.0 and HTTP/1.1 are served";
        return 505;
    case HTTP_PARSE_BAD_LENGTH:
        *detail = "invalid or conflicting Content-Length";
        return 400;
    case HTTP_PARSE_BAD_ENCODING:
        *detail = "unsupported Transfer-Encoding";
        return 501;
    default:
        *detail = "malformed request";
        return 400;
    }
}

/* Parses and dispatches as many complete requests as the buffer holds. */
static void
conn_process(struct conn *c)
{
    const struct server_config *cfg = &c->w->s->cfg;

    c->in_process = 1;
    while (c->state == CONN_READ && !c->closing && evbuffer_get_length(c->out) < OUT_HIGH_WATER) {
        size_t avail = c->in_len - c->in_off;
        if (avail == 0) {
            /* Between requests: the idle timeout, and no buffer held. Until one request
             * has been answered the header timeout from the accept goes on instead. */
            inbuf_release(c);
            conn_set_timer(c, c->w->draining || !c->served ? TIMER_REQUEST : TIMER_IDLE);
            if (c->w->draining)
                c->closing = 1;
            break;
        }
        const char *p = c->in + c->in_off;
        conn_set_timer(c, TIMER_REQUEST);
        struct http_request *h = &c->req.http;
        /* The parser starts over on every call: while the head is incomplete, call it again
         * only once a new line has arrived, so a client trickling bytes costs linear time. */
        if (c->head_scanned > 0 && !memchr(p + c->head_scanned, '\n', avail - c->head_scanned)) {
            if (avail > cfg->max_header_bytes)
                conn_fail(c, 431, "request header section too large");
            c->head_scanned = avail;
            break;
        }
        int r = http_parse_request(p, avail, h);
        if (r == HTTP_PARSE_INCOMPLETE) {
            if (avail > cfg->max_header_bytes)
                conn_fail(c, 431, "request header section too large");
            c->head_scanned = avail;
            break;
        }
        if (r < 0) {
            const char *detail;
            int status = parse_status_to_http(r, &detail);
            conn_fail(c, status, detail);
            break;
        }
        size_t head = (size_t)r;
        c->head_scanned = 0; /* complete: body bytes must not gate the next parse */
        if (head > cfg->max_header_bytes) {
            conn_fail(c, 431, "request header section too large");
            break;
        }
        const char *body = NULL;
        size_t body_len = 0;
        if (c->stream_asked == 0 && (h->chunked || h->content_length > 0) &&
            c->w->s->app.stream_body) {
            if (!h->chunked && (uint64_t)h->content_length > cfg->max_body_bytes) {
                conn_fail(c, 413, "request body too large");
                break;
            }
            conn_client(c);
            c->req.worker = c->w;
            c->stream_asked = c->w->s->app.stream_body(&c->req, c->w->app_state) ? 2 : 1;
        }
        if (c->stream_asked == 2) {
            /* The application reads the body itself (server_body_start), later. */
            c->consumed = head;
            c->bstate = BODY_PENDING;
            c->bleft = h->chunked ? 0 : (uint64_t)h->content_length;
            c->btotal = 0;
        } else if (h->chunked) {
            if (c->body == NULL) {
                c->body_cap = 4096;
                c->body = xmalloc(c->body_cap);
            }
            const char *raw = p + head + c->chunk_raw;
            size_t rawlen = avail - head - c->chunk_raw;
            if (c->body_cap - c->body_len < rawlen) {
                size_t ncap = c->body_len + rawlen;
                if (ncap > cfg->max_body_bytes + 4096)
                    ncap = cfg->max_body_bytes + 4096;
                if (ncap > c->body_cap) {
                    c->body = xrealloc(c->body, ncap);
                    c->body_cap = ncap;
                }
                if (c->body_cap - c->body_len < rawlen)
                    rawlen = c->body_cap - c->body_len;
            }
            size_t used = 0, produced = 0;
            int d = http_chunked_decode(&c->chunk, raw, rawlen, &used, c->body + c->body_len,
                                        &produced);
            c->chunk_raw += used;
            c->body_len += produced;
            if (d < 0) {
                conn_fail(c, 400, "malformed chunked body");
                break;
            }
            if (c->body_len > cfg->max_body_bytes) {
                conn_fail(c, 413, "request body too large");
                break;
            }
            if (d == 0) {
                if (h->expect_continue && !c->sent_continue) {
                    evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                    c->sent_continue = 1;
                }
                break;
            }
            body = c->body;
            body_len = c->body_len;
            c->consumed = head + c->chunk_raw;
        } else if (h->content_length > 0) {
            if ((uint64_t)h->content_length > cfg->max_body_bytes) {
                conn_fail(c, 413, "request body too large");
                break;
            }
            size_t cl = (size_t)h->content_length;
            if (avail - head < cl) {
                if (h->expect_continue && !c->sent_continue) {
                    evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                    c->sent_continue = 1;
                }
                break;
            }
            body = p + head;
            body_len = cl;
            c->consumed = head + cl;
        } else {
            c->consumed = head;
        }

        /* A complete request: hand it to the application. */
        c->state = CONN_HANDLING;
        conn_set_timer(c, TIMER_NONE);
        if (!h->keep_alive || c->w->draining)
            c->closing = 1;
        c->req.body = body;
        c->req.body_len = body_len;
        c->req.body_streamed = c->stream_asked == 2;
        conn_client(c);
        c->req.worker = c->w;
        c->req.app = NULL;
        c->w->s->app.handle(&c->req, c->w->app_state);
        /* If it answered synchronously, the state is CONN_READ again and the loop goes on. */
    }
    c->in_process = 0;
    /* While the application has a request the read event stays armed: disarming and arming
     * it around every answer would cost two epoll_ctl calls. If the peer sends meanwhile,
     * on_read disarms it until the response. */
    if (c->state != CONN_HANDLING && !c->closing && !c->paused)
        event_add(c->ev_read, NULL);
    if (conn_flush(c) != 0)
        return;
    if (c->state == CONN_READ && !c->closing && evbuffer_get_length(c->out) >= OUT_HIGH_WATER) {
        c->paused = 1;
        event_del(c->ev_read);
    }
}

static struct conn *
req_conn(struct server_request *req)
{
    return (struct conn *)((char *)req - offsetof(struct conn, req));
}

/* Writes the head of c's answer: Content-Length: body_len when content_length, else
 * Transfer-Encoding: chunked when chunked; Connection: Upgrade for a 101 (upgrade). */
static void
put_head(struct conn *c, const struct server_response *resp, bool content_length, uint64_t body_len,
         bool chunked, bool upgrade)
{
    struct http_head head = {
        .status = resp->status,
        .minor_version = c->req.http.minor_version,
        .content_type = resp->content_type,
        .content_length = content_length,
        .chunked = chunked,
        .body_len = body_len,
        .headers = resp->headers,
        .headers_len = resp->headers_len,
        .headers2 = resp->headers2,
        .headers2_len = resp->headers2_len,
        .connection = upgrade                          ? HTTP_HEAD_CONN_UPGRADE
                      : c->closing                     ? HTTP_HEAD_CONN_CLOSE
                      : c->req.http.minor_version == 0 ? HTTP_HEAD_CONN_KEEP_ALIVE
                                                       : HTTP_HEAD_CONN_NONE,
    };
    head.date = server_worker_date_header(c->w, &head.date_len);
    size_t cap = http_head_size(&head);
    char stackbuf[2048];
    char *buf = cap <= sizeof(stackbuf) ? stackbuf : xmalloc(cap);
    evbuffer_add(c->out, buf, http_head_write(buf, &head));
    if (buf != stackbuf)
        free(buf);
}

/*
 * The request is answered: its bytes are dropped (what was read past a
 * streamed body goes back in front of the next request's) and the connection
 * goes back to reading. One whose body was not read to its end, or that
 * switched protocols, closes after the answer.
 */
static void
request_over(struct conn *c)
{
    if ((c->bstate != BODY_NONE && c->bstate != BODY_ENDED) || c->stream_tunnel)
        c->closing = 1;
    if (c->reader) {
        event_del(c->ev_read);
        event_assign(c->ev_read, c->w->base, c->fd, EV_READ | EV_PERSIST, on_read, c);
        c->reader = 0;
    }
    c->served = 1;
    c->in_off += c->consumed;
    c->consumed = 0;
    c->head_scanned = 0;
    c->body_len = 0;
    c->chunk_raw = 0;
    memset(&c->chunk, 0, sizeof(c->chunk));
    c->sent_continue = 0;
    c->streaming = c->stream_chunked = c->stream_tunnel = c->stream_blocked = 0;
    c->stream_asked = 0;
    c->stream_fn = NULL;
    c->bstate = BODY_NONE;
    c->bpaused = c->braw = 0;
    c->body_fn = NULL;
    free(c->bbuf);
    c->bbuf = NULL;
    if (c->left_len > 0) {
        if (!c->in)
            inbuf_take(c);
        if (c->in_off > 0) {
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        if (c->in_cap - c->in_len < c->left_len) {
            c->in_cap = c->in_len + c->left_len;
            c->in = xrealloc(c->in, c->in_cap);
        }
        memcpy(c->in + c->in_len, c->left, c->left_len);
        c->in_len += c->left_len;
        free(c->left);
        c->left = NULL;
        c->left_len = 0;
    }
    if (c->timer_mode == TIMER_STREAM)
        conn_set_timer(c, TIMER_NONE);
    c->state = CONN_READ;
    if (c->in_process)
        return; /* conn_process() goes on with pipelined requests and flushes */
    if (c->closing) {
        conn_flush(c);
        return;
    }
    if (!c->paused)
        event_add(c->ev_read, NULL);
    conn_process(c);
}

void
server_respond(struct server_request *req, const struct server_response *resp)
{
    struct conn *c = req_conn(req);
    struct worker *w = c->w;
    if (c->state != CONN_HANDLING || c->streaming) {
        /* A second answer to one request is a bug in the caller. */
        log_abort("internal error: response to a finished request");
    }
    if (c->dead) {
        /* The peer is gone: nothing to send; the connection ends here. */
        if (resp->release)
            resp->release(resp->body, resp->body_len, resp->body_arg);
        c->state = CONN_READ;
        conn_free(c);
        return;
    }
    if (resp->close || resp->close_delimited || w->draining)
        c->closing = 1;
    if (c->bstate != BODY_NONE && c->bstate != BODY_ENDED)
        c->closing = 1; /* Connection: close: the rest of the body is never read */

    /* RFC 9110 8.6: no Content-Length for 1xx, 204 and 304; none when the close delimits the
     * body. */
    put_head(c, resp,
             resp->status >= 200 && resp->status != 204 && resp->status != 304 &&
                 !resp->close_delimited,
             resp->body_len, false, false);

    int send_body = c->req.http.method != HTTP_HEAD && resp->body_len > 0;
    if (resp->release) {
        if (send_body)
            evbuffer_add_reference(c->out, resp->body, resp->body_len, resp->release,
                                   resp->body_arg);
        else
            resp->release(resp->body, resp->body_len, resp->body_arg);
    } else if (send_body) {
        evbuffer_add(c->out, resp->body, resp->body_len);
    }
    request_over(c);
}

/* ---- streamed answers, request bodies, tunnels -------------------------------------------- */

/* Arms c's timer for a streamed answer: past ms the connection is closed (GONE). */
static void
stream_timer(struct conn *c, uint64_t ms)
{
    struct timeval tv = util_ms_to_tv(ms);
    c->timer_mode = TIMER_STREAM;
    evtimer_add(c->ev_timer, &tv);
}

/*
 * Tells the application streaming on c (its answer, else its request body)
 * that the connection is closed; it ends the request. Told once.
 */
static void
stream_gone(struct conn *c)
{
    if (c->streaming && c->stream_fn) {
        server_stream_fn *fn = c->stream_fn;
        c->stream_fn = NULL;
        c->bstate = c->bstate == BODY_READING ? BODY_FAILED : c->bstate;
        fn(c->stream_arg, SERVER_STREAM_GONE);
    } else if (c->bstate == BODY_READING && c->body_fn) {
        c->bstate = BODY_FAILED;
        c->body_fn(c->body_arg, SERVER_BODY_GONE, NULL, 0);
    }
}

/* The body is over (ended or failed): its reader gives ev_read back, not armed while the
 * application holds the request. */
static void
body_reader_off(struct conn *c)
{
    if (!c->reader)
        return;
    event_del(c->ev_read);
    event_assign(c->ev_read, c->w->base, c->fd, EV_READ | EV_PERSIST, on_read, c);
    c->reader = 0;
}

/* The body's last event: the reader is off first, as the application may end the request. */
static void
body_last(struct conn *c, enum body_state st, enum server_body_event ev)
{
    c->bstate = st;
    body_reader_off(c);
    c->body_fn(c->body_arg, ev, NULL, 0);
}

/*
 * Hands the application n bytes of its request body at p (a tunnel's as
 * they came; chunked ones decoded in place), `from_in` when they lie in c->in
 * after what the request has consumed. Returns 1 while the body goes on, 0
 * once its last event was given (c may be gone).
 */
static int
body_deliver(struct conn *c, char *p, size_t n, int from_in)
{
    size_t used = n, produced = n;
    int end = 0;

    if (c->braw) {
        /* every byte */
    } else if (!c->req.http.chunked) {
        if (used > c->bleft)
            used = produced = (size_t)c->bleft;
        c->bleft -= used;
        end = c->bleft == 0;
    } else {
        int d = http_chunked_decode(&c->chunk, p, n, &used, p, &produced);
        if (d < 0) {
            body_last(c, BODY_FAILED, SERVER_BODY_MALFORMED);
            return 0;
        }
        end = d == 1;
        if (end && used < n && !from_in) {
            /* Read past the body: the next request's bytes, kept until this one ends (in
             * c->in they stay where they are). */
            c->left = xmalloc(n - used);
            memcpy(c->left, p + used, n - used);
            c->left_len = n - used;
        }
    }
    if (from_in)
        c->consumed += used;
    c->btotal += produced;
    if (!c->braw && c->btotal > c->w->s->cfg.max_body_bytes) {
        body_last(c, BODY_FAILED, SERVER_BODY_TOO_LARGE);
        return 0;
    }
    if (produced > 0)
        c->body_fn(c->body_arg, SERVER_BODY_DATA, p, produced);
    if (end) {
        body_last(c, BODY_ENDED, SERVER_BODY_END);
        return 0;
    }
    return 1;
}

/* Reads a request body the application streams: what is buffered, then the socket. */
static void
on_body_read(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    if (c->bstate != BODY_READING || c->bpaused)
        return;
    if (c->dead) {
        body_last(c, BODY_FAILED, SERVER_BODY_GONE);
        return;
    }
    size_t avail = c->in ? c->in_len - c->in_off - c->consumed : 0;
    if (avail > 0 && body_deliver(c, c->in + c->in_off + c->consumed, avail, 1) == 0)
        return;
    for (int i = 0; i < 16 && c->bstate == BODY_READING && !c->bpaused; i++) {
        size_t want = STREAM_READ;
        if (!c->braw && !c->req.http.chunked && c->bleft < want)
            want = (size_t)c->bleft;
        if (!c->bbuf)
            c->bbuf = xmalloc(STREAM_READ);
        ssize_t n = read(c->fd, c->bbuf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n == 0 && c->braw) {
            body_last(c, BODY_ENDED, SERVER_BODY_END); /* the client half-closed its side */
            return;
        }
        if (n <= 0) {
            body_last(c, BODY_FAILED, SERVER_BODY_GONE);
            return;
        }
        if (body_deliver(c, c->bbuf, (size_t)n, 0) == 0 || (size_t)n < want)
            return;
    }
}

void
server_body_start(struct server_request *req, server_body_fn *fn, void *arg)
{
    struct conn *c = req_conn(req);
    assert(c->state == CONN_HANDLING && (c->bstate == BODY_PENDING || c->stream_tunnel));
    c->braw = c->stream_tunnel;
    c->bstate = BODY_READING;
    c->body_fn = fn;
    c->body_arg = arg;
    if (!c->dead && !c->braw && c->req.http.expect_continue && !c->sent_continue &&
        c->req.http.minor_version == 1) {
        /* RFC 9110 10.1.1: the client waits for this before it sends the body. */
        evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        c->sent_continue = 1;
        (void)conn_flush(c); /* a failure makes it dead: told from the loop */
    }
    event_del(c->ev_read);
    event_assign(c->ev_read, c->w->base, c->dead ? -1 : c->fd, c->dead ? 0 : EV_READ | EV_PERSIST,
                 on_body_read, c);
    c->reader = 1;
    if (!c->dead && !c->bpaused)
        event_add(c->ev_read, NULL);
    event_active(c->ev_read, EV_READ, 0); /* what is buffered goes first, from the loop */
}

void
server_body_pause(struct server_request *req)
{
    struct conn *c = req_conn(req);
    c->bpaused = 1;
    if (c->reader)
        event_del(c->ev_read);
}

void
server_body_resume(struct server_request *req)
{
    struct conn *c = req_conn(req);
    if (!c->bpaused)
        return;
    c->bpaused = 0;
    if (c->bstate == BODY_READING && c->reader) {
        if (!c->dead)
            event_add(c->ev_read, NULL);
        event_active(c->ev_read, EV_READ, 0);
    }
}

void
server_stream_start(struct server_request *req, const struct server_response *resp, int64_t length,
                    server_stream_fn *fn, void *arg)
{
    struct conn *c = req_conn(req);
    const struct http_request *h = &c->req.http;
    assert(c->state == CONN_HANDLING && !c->streaming);
    c->streaming = 1;
    c->stream_fn = fn;
    c->stream_arg = arg;
    c->stream_tunnel = length == SERVER_LENGTH_TUNNEL;
    if (c->dead) {
        /* Told from the loop, never from here. */
        c->timer_mode = TIMER_STREAM;
        event_active(c->ev_timer, EV_TIMEOUT, 0);
        return;
    }
    c->stream_chunked =
        length == SERVER_LENGTH_UNKNOWN && !resp->close_delimited && h->minor_version == 1;
    if ((length == SERVER_LENGTH_UNKNOWN && !c->stream_chunked) || resp->close || c->w->draining)
        c->closing = 1;
    if (c->bstate != BODY_NONE && c->bstate != BODY_ENDED && !c->stream_tunnel)
        c->closing = 1;
    put_head(c, resp, length >= 0, length >= 0 ? (uint64_t)length : 0, c->stream_chunked,
             c->stream_tunnel);
    if (c->w->draining)
        stream_timer(c, c->stream_tunnel ? 0 : STOP_STREAM_MS);
    if (!c->in_process && conn_flush(c) != 0) {
        c->timer_mode = TIMER_STREAM; /* closed: told from the loop */
        event_active(c->ev_timer, EV_TIMEOUT, 0);
    }
}

int
server_stream_write(struct server_request *req, const char *data, size_t len)
{
    struct conn *c = req_conn(req);
    assert(c->state == CONN_HANDLING && c->streaming);
    if (c->dead)
        return -1;
    if (len > 0 && c->req.http.method != HTTP_HEAD) {
        char size[24];
        struct iovec iov[3];
        int n = 0;
        if (c->stream_chunked)
            iov[n++] = (struct iovec){size, (size_t)snprintf(size, sizeof(size), "%zx\r\n", len)};
        iov[n++] = (struct iovec){(void *)data, len};
        if (c->stream_chunked)
            iov[n++] = (struct iovec){"\r\n", 2};
        if (evbuffer_get_length(c->out) == 0 && !c->in_process) {
            /* Nothing waits: written from where it is, and only what the socket does not take
             * now is copied. */
            ssize_t w = writev(c->fd, iov, n);
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_close(c); /* the client has gone */
                return -1;
            }
            for (int i = 0; i < n && w > 0; i++) {
                size_t k = (size_t)w < iov[i].iov_len ? (size_t)w : iov[i].iov_len;
                iov[i].iov_base = (char *)iov[i].iov_base + k;
                iov[i].iov_len -= k;
                w -= (ssize_t)k;
            }
        }
        for (int i = 0; i < n; i++)
            if (iov[i].iov_len > 0)
                evbuffer_add(c->out, iov[i].iov_base, iov[i].iov_len);
    }
    if (!c->in_process && evbuffer_get_length(c->out) > 0 && conn_flush(c) != 0)
        return -1;
    if (evbuffer_get_length(c->out) >= STREAM_WINDOW) {
        if (!c->stream_blocked && !c->w->draining)
            stream_timer(c, c->w->s->cfg.idle_timeout_ms); /* a client that reads nothing */
        c->stream_blocked = 1;
        return 1;
    }
    return 0;
}

void
server_stream_end(struct server_request *req)
{
    struct conn *c = req_conn(req);
    assert(c->state == CONN_HANDLING && c->streaming);
    if (c->dead) {
        c->state = CONN_READ;
        conn_free(c);
        return;
    }
    if (c->stream_chunked && c->req.http.method != HTTP_HEAD)
        evbuffer_add(c->out, "0\r\n\r\n", 5);
    request_over(c);
}

void
server_stream_abort(struct server_request *req)
{
    struct conn *c = req_conn(req);
    assert(c->state == CONN_HANDLING);
    if (!c->dead) {
        /* A reset, not a FIN: a close-delimited body must not look complete. */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        conn_close(c);
    }
    c->state = CONN_READ;
    conn_free(c);
}

void
server_respond_interim(struct server_request *req, int status, const char *headers, size_t len)
{
    struct conn *c = req_conn(req);
    const char *reason = http_reason_phrase(status);
    char head[64];
    int n;

    assert(status >= 100 && status < 200 && status != 101);
    if (c->state != CONN_HANDLING) {
        log_abort("internal error: interim response to a finished request");
    }
    if (c->dead || c->req.http.minor_version == 0 || evbuffer_get_length(c->out) >= OUT_HIGH_WATER)
        return;
    n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n", status, reason);
    evbuffer_add(c->out, head, (size_t)n);
    if (len > 0)
        evbuffer_add(c->out, headers, len);
    evbuffer_add(c->out, "\r\n", 2);
    if (c->in_process)
        return; /* conn_process() writes the batch */
    /* While the application holds the request a failed write only marks the connection dead. */
    (void)conn_flush(c);
}

void
server_respond_problem(struct server_request *req, int status, const char *type, const char *title,
                       const char *detail, const char *extra_headers)
{
    server_respond_problem_ext(req, status, type, title, detail, NULL, extra_headers);
}

char *
server_problem_body(int status, const char *type, const char *title, const char *detail,
                    json_t *ext, size_t *len)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type ? type : "about:blank"));
    json_object_set_new(o, "title", json_string(title ? title : http_reason_phrase(status)));
    json_object_set_new(o, "status", json_integer(status));
    if (detail)
        json_object_set_new(o, "detail", json_string(detail));
    if (ext)
        json_object_update_missing(o, ext);
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!body) {
        log_abort("out of memory (problem body)");
    }
    *len = strlen(body);
    return body;
}

void
server_respond_problem_body(struct server_request *req, int status, const char *body, size_t len,
                            const char *extra_headers)
{
    struct server_response resp = {
        .status = status,
        .content_type = "application/problem+json",
        .headers = extra_headers,
        .headers_len = extra_headers ? strlen(extra_headers) : 0,
        .body = body,
        .body_len = len,
        .close = status == 400 || status == 408 || status == 413 || status == 431 ||
                 status == 501 || status == 505,
    };
    server_respond(req, &resp);
}

void
server_respond_problem_ext(struct server_request *req, int status, const char *type,
                           const char *title, const char *detail, json_t *ext,
                           const char *extra_headers)
{
    size_t len;
    char *body = server_problem_body(status, type, title, detail, ext, &len);
    server_respond_problem_body(req, status, body, len, extra_headers);
    free(body);
}

/* ---- accepting --------------------------------------------------------------------------- */

static void
conn_new(struct worker *w, int fd, const struct sockaddr_storage *ss, uint32_t slot)
{
    struct conn *c = conn_alloc(w);
    c->w = w;
    c->fd = fd;
    c->addr_slot = slot;
    c->out = evbuffer_new(); /* the input buffer comes with the first byte (inbuf_take) */
    if (!c->out) {
        log_abort("out of memory (evbuffer)");
    }
    struct netaddr peer;
    conn_peer_set(c, netaddr_from_sockaddr((const struct sockaddr *)ss, &peer) == 0 ? &peer : NULL);
    event_assign(c->ev_read, w->base, fd, EV_READ | EV_PERSIST, on_read, c);
    event_assign(c->ev_write, w->base, fd, EV_WRITE | EV_PERSIST, on_write, c);
    evtimer_assign(c->ev_timer, w->base, on_timer, c);
    LIST_INSERT_HEAD(&w->conns, c, link);
    w->nconns++;
    if (w->nconns > w->peak)
        w->peak = w->nconns;
    event_add(c->ev_read, NULL);
    /* The first request's head is due within the header timeout from now (after the PROXY
     * header, which has a shorter deadline of its own). */
    c->proxy_wait = w->s->cfg.proxy_protocol;
    conn_set_timer(c, c->proxy_wait ? TIMER_PROXY : TIMER_REQUEST);
    conn_requeue(c);
}

/* At most one line per worker every PRESSURE_LOG_MS about connections closed or refused. */
static void
pressure_log(struct worker *w)
{
    const struct server_config *cfg = &w->s->cfg;
    uint64_t now = now_ms();
    if (w->pressure_logged_ms && now - w->pressure_logged_ms < PRESSURE_LOG_MS)
        return;
    w->pressure_logged_ms = now;
    log_warn("%s:%d worker %u: %lu idle or unfinished connections closed for new ones, "
             "%lu new ones refused at the connection cap (%u), %lu at the per-address cap (%u)",
             cfg->listen_addr, w->s->port, w->index, w->evicted, w->refused, cfg->max_connections,
             w->refused_ip, cfg->max_connections_per_ip);
    w->evicted = w->refused = w->refused_ip = 0;
}

/*
 * Answers a connection that is not taken 503 problem+json and closes it. The
 * answer is written once, without waiting: a peer that sent its request
 * already may see a reset instead.
 */
static void
refuse(struct worker *w, int fd, const char *detail)
{
    char body[256], head[512];
    size_t datelen;
    const char *date = server_worker_date_header(w, &datelen);
    int blen = snprintf(body, sizeof(body),
                        "{\"type\":\"about:blank\",\"title\":\"Service Unavailable\","
                        "\"status\":503,\"detail\":\"%s\"}",
                        detail);
    int hlen = snprintf(head, sizeof(head),
                        "HTTP/1.1 503 Service Unavailable\r\n%.*s"
                        "Content-Type: application/problem+json\r\nContent-Length: %d\r\n"
                        "Retry-After: 1\r\nConnection: close\r\n\r\n",
                        (int)datelen, date, blen);
    struct iovec iov[2] = {{head, (size_t)hlen}, {body, (size_t)blen}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    (void)sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    close(fd);
}

/*
 * Gives a new connection, counted already, to another worker that has an
 * idle or partial connection to close for it. Returns 0 when one took it
 * (it owns fd now), -1 when none can.
 */
static int
handoff(struct worker *w, int fd, const struct sockaddr_storage *ss, uint32_t slot)
{
    struct server *s = w->s;
    if (atomic_load(&s->stopping))
        return -1;
    for (unsigned k = 1; k < s->nworkers; k++) {
        struct worker *o = &s->workers[(w->index + k) % s->nworkers];
        if (atomic_load_explicit(&o->nevictable, memory_order_relaxed) == 0)
            continue;
        pthread_mutex_lock(&o->handoff_lock);
        int taken = o->nhandoffs < HANDOFF_MAX;
        if (taken)
            o->handoffs[o->nhandoffs++] = (struct handoff){.fd = fd, .addr_slot = slot, .ss = *ss};
        pthread_mutex_unlock(&o->handoff_lock);
        if (taken) {
            event_active(o->ev_handoff, EV_READ, 0);
            return 0;
        }
    }
    return -1;
}

/*
 * Takes a new connection, already counted in the server's connections and
 * its address's counter. Over the connection cap it closes this worker's
 * conn_victim() for it, else hands it to another worker that has one (not
 * when `handed`: it came from one), else refuses it.
 */
static void
admit(struct worker *w, int fd, const struct sockaddr_storage *ss, uint32_t slot, int handed)
{
    struct server *s = w->s;
    if (w->draining) {
        atomic_fetch_sub(&s->nconns, 1);
        addr_release(s, slot);
        refuse(w, fd, "the server is stopping");
        return;
    }
    if (atomic_load(&s->nconns) > s->cfg.max_connections) {
        struct conn *v = conn_victim(w);
        if (v) {
            conn_close(v);
            w->evicted++;
            pressure_log(w);
        } else if (!handed && handoff(w, fd, ss, slot) == 0) {
            return;
        } else {
            atomic_fetch_sub(&s->nconns, 1);
            addr_release(s, slot);
            refuse(w, fd, "every connection is busy: try again");
            w->refused++;
            pressure_log(w);
            return;
        }
    }
    conn_new(w, fd, ss, slot);
}

/* Takes the connections other workers handed to this one. */
static void
on_handoff(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct handoff batch[HANDOFF_MAX];
    pthread_mutex_lock(&w->handoff_lock);
    unsigned n = w->nhandoffs;
    memcpy(batch, w->handoffs, n * sizeof(*batch));
    w->nhandoffs = 0;
    pthread_mutex_unlock(&w->handoff_lock);
    for (unsigned i = 0; i < n; i++)
        admit(w, batch[i].fd, &batch[i].ss, batch[i].addr_slot, 1);
}

static void
on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (w->ev_listen)
        event_add(w->ev_listen, NULL);
}

/* Takes up to ACCEPT_BATCH connections off the listener's queue; returns how many it took. */
static int
accept_batch(struct worker *w)
{
    struct server *s = w->s;
    int taken = 0;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int cfd = accept4(w->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                /* Out of descriptors: the listener stays readable, so accepting would spin.
                 * Wait a moment (connections closing give descriptors back). */
                uint64_t now = now_ms();
                if (!w->pressure_logged_ms || now - w->pressure_logged_ms >= PRESSURE_LOG_MS) {
                    w->pressure_logged_ms = now;
                    log_error("accept: %s (raise the open-file limit, ulimit -n)", strerror(errno));
                }
                event_del(w->ev_listen);
                struct timeval tv = util_ms_to_tv(ACCEPT_PAUSE_MS);
                evtimer_add(w->ev_resume, &tv);
            }
            return taken;
        }
        taken++;
        uint32_t slot = ADDR_COUNT_NONE;
        if (s->addr_count) {
            slot = addr_count_slot(s->addr_count, (const struct sockaddr *)&ss);
            if (addr_count_take(s->addr_count, slot) != 0) {
                refuse(w, cfd, "too many connections from this address");
                w->refused_ip++;
                pressure_log(w);
                continue;
            }
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        atomic_fetch_add(&s->nconns, 1);
        admit(w, cfd, &ss, slot, 0);
    }
    return taken;
}

static void
on_accept(evutil_socket_t fd, short what, void *arg)
{
    accept_batch(arg);
}

/*
 * Stop accepting: take what waits in the listener's queue and close the
 * listener (the kernel would reset what a closed listener leaves in its
 * queue; with another instance on the port, new connections go to it from
 * now on). Close idle connections; the others close after their current
 * request.
 */
static void
on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (w->draining)
        return;
    if (w->ev_listen) {
        while (accept_batch(w) == ACCEPT_BATCH)
            ;
        event_free(w->ev_listen);
        w->ev_listen = NULL;
        close(w->listen_fd);
        w->listen_fd = -1;
    }
    w->draining = 1;
    evtimer_del(w->ev_resume);
    for (struct conn *c = LIST_FIRST(&w->conns), *next; c; c = next) {
        next = LIST_NEXT(c, link);
        if (c->state == CONN_HANDLING && c->streaming && !c->dead) {
            /* A streamed answer has STOP_STREAM_MS more; a tunnel ends now. */
            stream_timer(c, c->stream_tunnel ? 0 : STOP_STREAM_MS);
            continue;
        }
        /* Idle connections go now (or once their output is written); a new one that has
         * not sent its first request yet (it may be on its way) has STOP_GRACE_MS for it; a
         * connection with a request in progress answers it with "Connection: close"; a
         * lingering one ends when its peer closes (or LINGER_MS). */
        if (c->state == CONN_READ && c->in_len == c->in_off) {
            if (evbuffer_get_length(c->out) > 0) {
                c->closing = 1;
            } else if (c->served) {
                conn_close(c);
            } else {
                uint64_t ms = w->s->cfg.header_timeout_ms;
                struct timeval tv = util_ms_to_tv(ms < STOP_GRACE_MS ? ms : STOP_GRACE_MS);
                c->timer_mode = TIMER_REQUEST; /* past it: closed without an answer */
                evtimer_add(c->ev_timer, &tv);
            }
        }
    }
    if (w->nconns == 0)
        event_base_loopexit(w->base, NULL);
}

static void *
worker_main(void *arg)
{
    struct worker *w = arg;
    w->app_state = w->s->app.worker_init ? w->s->app.worker_init(w, w->s->app.ctx) : NULL;
    if (w->s->app.worker_init && !w->app_state) {
        log_error("worker %u failed to start", w->index);
        server_stop(w->s);
        return NULL;
    }
    event_base_dispatch(w->base);
    /* The application answers what it still holds, then connections left are closed. */
    if (w->s->app.worker_fini)
        w->s->app.worker_fini(w->app_state);
    while (!LIST_EMPTY(&w->conns))
        conn_close(LIST_FIRST(&w->conns));
    return NULL;
}

/*
 * Whether another socket listens on the address in ss (its port set): a
 * socket without SO_REUSEPORT cannot bind beside a listener, while our own
 * socket, bound and not listening yet, does not stand in its way.
 */
static int
port_taken(const struct sockaddr_storage *ss, socklen_t sl)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, taken;

    if (fd < 0)
        return 0; /* cannot tell: the bind of our own socket has succeeded */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    taken = bind(fd, (const struct sockaddr *)ss, sl) < 0 && errno == EADDRINUSE;
    close(fd);
    return taken;
}

/*
 * A listening socket on cfg's address and `port` (0: one the system picks,
 * returned in *bound_port). Unless cfg says exclusive it has SO_REUSEPORT so
 * that the workers share the port; with `first` and without cfg->reuse_port,
 * a port another process listens on already is refused.
 */
static int
listen_socket(const struct server_config *cfg, int port, int first, char *err, size_t errlen,
              int *bound_port)
{
    const char *addr = cfg->listen_addr;
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        sl = sizeof(*sin);
    } else if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        sl = sizeof(*sin6);
    } else {
        snprintf(err, errlen, "bad listen address '%s' (use an IP address)", addr);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (!cfg->exclusive)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", addr, port, strerror(errno));
        close(fd);
        return -1;
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        port = ntohs(ss.ss_family == AF_INET ? sin->sin_port : sin6->sin6_port);
    if (first && !cfg->exclusive && !cfg->reuse_port && port_taken(&ss, sl)) {
        snprintf(err, errlen,
                 "cannot listen on %s:%d: another process listens on it (a second sluice "
                 "serve?); to share the port on purpose, for a handover, pass --reuse-port",
                 addr, port);
        close(fd);
        return -1;
    }
    if (listen(fd, 1024) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", addr, port, strerror(errno));
        close(fd);
        return -1;
    }
    *bound_port = port;
    return fd;
}

/* A worker's own descriptor for an inherited listening socket, and the port it listens on. */
static int
inherited_socket(int fd, char *err, size_t errlen, int *bound_port)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (own < 0 || getsockname(own, (struct sockaddr *)&ss, &sl) != 0) {
        snprintf(err, errlen, "inherited listening socket %d: %s", fd, strerror(errno));
        if (own >= 0)
            close(own);
        return -1;
    }
    *bound_port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                : ((struct sockaddr_in6 *)&ss)->sin6_port);
    return own;
}

struct server *
server_new(const struct server_config *cfg, const struct server_app *app, char *err, size_t errlen)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, (void (*)(void))evthread_use_pthreads);

    struct server *s = xcalloc(1, sizeof(*s));
    s->cfg = *cfg;
    if (s->cfg.ipv6_prefix == 0 || s->cfg.ipv6_prefix > 128)
        s->cfg.ipv6_prefix = 64;
    s->app = *app;
    s->nworkers = cfg->workers ? cfg->workers : 1;
    assert(!cfg->exclusive || s->nworkers == 1);
    s->workers = xcalloc(s->nworkers, sizeof(*s->workers));
    s->event_offset = round_up(sizeof(struct conn), 16);
    s->event_bytes = round_up(event_get_struct_event_size(), 16);
    if (cfg->max_connections_per_ip > 0)
        s->addr_count = addr_count_new(cfg->max_connections_per_ip, cfg->max_connections);
    int port = cfg->listen_port;
    for (unsigned i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        w->s = s;
        w->index = i;
        LIST_INIT(&w->conns);
        slab_pool_init(&w->cells, s->event_offset + 3 * s->event_bytes, SLAB_CELLS);
        TAILQ_INIT(&w->idle);
        TAILQ_INIT(&w->partial);
        pthread_mutex_init(&w->handoff_lock, NULL);
        w->listen_fd = cfg->nfds ? inherited_socket(cfg->fds[i % cfg->nfds], err, errlen, &port)
                                 : listen_socket(cfg, port, i == 0, err, errlen, &port);
        if (w->listen_fd < 0)
            goto fail;
        w->base = event_base_new();
        if (!w->base) {
            snprintf(err, errlen, "cannot create an event base");
            goto fail;
        }
        w->ev_listen = event_new(w->base, w->listen_fd, EV_READ | EV_PERSIST, on_accept, w);
        w->ev_stop = event_new(w->base, -1, 0, on_stop, w);
        w->ev_handoff = event_new(w->base, -1, 0, on_handoff, w);
        w->ev_resume = evtimer_new(w->base, on_resume, w);
        event_add(w->ev_listen, NULL);
    }
    s->port = port;
    return s;
fail:
    server_free(s);
    return NULL;
}

int
server_port(const struct server *s)
{
    return s->port;
}

unsigned
server_listen_fds(const struct server *s, int *fds, unsigned cap)
{
    unsigned n = 0;
    for (unsigned i = 0; i < s->nworkers && n < cap; i++)
        fds[n++] = s->workers[i].listen_fd;
    return n;
}

int
server_run(struct server *s, char *err, size_t errlen)
{
    s->main_thread = pthread_self();
    unsigned started = 0;
    for (; started < s->nworkers; started++) {
        if (pthread_create(&s->workers[started].thread, NULL, worker_main, &s->workers[started])) {
            snprintf(err, errlen, "cannot start worker threads");
            server_stop(s);
            break;
        }
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(s->workers[i].thread, NULL);
    return started == s->nworkers ? 0 : -1;
}

void
server_stop(struct server *s)
{
    if (atomic_exchange(&s->stopping, 1))
        return;
    for (unsigned i = 0; i < s->nworkers; i++)
        if (s->workers[i].ev_stop)
            event_active(s->workers[i].ev_stop, EV_TIMEOUT, 0);
}

void
server_free(struct server *s)
{
    if (!s)
        return;
    for (unsigned i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        if (w->ev_listen)
            event_free(w->ev_listen);
        if (w->ev_stop)
            event_free(w->ev_stop);
        if (w->ev_handoff)
            event_free(w->ev_handoff);
        if (w->ev_resume)
            event_free(w->ev_resume);
        if (w->base)
            event_base_free(w->base);
        if (w->listen_fd > 0)
            close(w->listen_fd);
        /* Connections handed to a worker that had stopped already. */
        for (unsigned k = 0; k < w->nhandoffs; k++)
            close(w->handoffs[k].fd);
        for (unsigned k = 0; k < w->ninbufs; k++)
            free(w->inbufs[k]);
        slab_pool_destroy(&w->cells); /* every connection is closed */
        pthread_mutex_destroy(&w->handoff_lock);
    }
    if (s->addr_count)
        addr_count_free(s->addr_count);
    free(s->workers);
    free(s);
}
