/* store_redis.c - the Redis store: limits, cache entries and tags in Redis, through hiredis async.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "embedded.h"
#include "sha1.h"
#include "store.h"
#include "util.h"

/*
 * One handle per worker holds one connection (two when limits live in a
 * separate Redis). Every operation is one EVALSHA of a script of lua/redis/
 * (embedded in the binary, loaded with SCRIPT LOAD on every new connection):
 *
 *   admit_and_lookup  admit.lua: every limit, the entry, the tags' generations,
 *                     the fill lease; then a GET of the stored response, in the
 *                     same write, unless the handle has a local copy of it
 *   fill              fill.lua: refused when a tag moved since the lookup
 *   invalidate        invalidate.lua: bumps each tag's generation
 *   delete_keys       delete.lua, one call per key (pipelined): the entry, its
 *                     response, and the secondaries its variants set names
 *   invalidate_pattern  SCAN cursor MATCH pattern COUNT 500 over the entry keys,
 *                     then UNLINK of what matched, batch after batch, each
 *                     command sent from the previous one's callback
 *
 * Commands of concurrent requests are appended to hiredis's output buffer
 * and leave in one write once the worker's loop has run every callback of
 * the iteration, so they are pipelined; replies come back in order.
 *
 * Keys. "sl:{TAG}:l:ALGO:LIMIT:WINDOW:BURST:KEY" (a limit), "sl:{TAG}:c:KEY"
 * (an entry: its fill token, expiry and tags), "sl:{TAG}:r:KEY" (the stored
 * response), "sl:{TAG}:f:KEY" (the fill lease), "sl:{TAG}:v:KEY" (a primary's
 * variants: the set of its secondaries' KEYs), "sl:{TAG}:t:TAG" (a tag),
 * KEY being the bytes the gateway gave. TAG, the Redis Cluster hash tag, is
 * the part of KEY's primary part (up to its first STORE_KEY_SEP) after its
 * last ':' (template escaping keeps ':' out of values, so that is the last
 * variable's value: the user in "tier:u:{user}", "crm:contacts:{user}",
 * "crm:{user}"), or a hash of it when it is empty, longer than 40 bytes or
 * holds a brace. All keys of a caller whose templates end in the caller's id
 * share one slot, and a secondary entry shares its primary's. (Entries were
 * "e"/"b" keys in an earlier layout: those are never read, and expire.)
 *
 * Stale keep. The entry's and the response's keys live for ttl + stale_ms;
 * the entry's value holds expires_ms, past which admit.lua reports it stale.
 *
 * Deadlines. hiredis 0.14 has no timeouts: each connection keeps its pending
 * commands in send order with their deadlines and one timer for the earliest.
 * When a command passes its deadline the connection is dropped
 * (redisAsyncFree), which makes hiredis call every pending callback once
 * with no reply: each completes its operation with STORE_UNAVAILABLE, and
 * none is ever sent again (its outcome is unknown). The connection is made
 * again after a backoff (10 ms doubling to 1 s); meanwhile operations fail at
 * once. The only command sent twice is one answered NOSCRIPT, which means
 * that the script did not run: SCRIPT LOAD is sent before it again. (A GET
 * of a stored response that then arrives before its lookup's reply is still
 * used only if it carries the token the lookup found fresh.)
 */

#define DEFAULT_DEADLINE_MS 50
#define DEFAULT_TAG_LEASE_MS 600000
#define BACKOFF_MIN_US 10000
#define BACKOFF_MAX_US 1000000
#define MAX_HASH_TAG 40
#define EXACT_LIMIT (1ull << 53) /* the scripts' doubles hold integers exactly below this */
#define TOKEN_LEN 8              /* bytes of a fill token */
#define DEFAULT_NEAR_BYTES (16u << 20)
#define MAX_BATCH 64   /* requests decided by one admit.lua call at most */
#define SCAN_COUNT 500 /* the COUNT of each SCAN of a pattern run */
#define BATCH_SLOTS 64 /* hash chains of a turn's open batches */

enum { SCRIPT_ADMIT, SCRIPT_FILL, SCRIPT_INVALIDATE, SCRIPT_DELETE, NSCRIPTS };

struct script {
    const char *module;
    const char *src;
    size_t len;
    char sha[41];
};

static struct script scripts[NSCRIPTS] = {
    {.module = "redis.admit"},
    {.module = "redis.fill"},
    {.module = "redis.invalidate"},
    {.module = "redis.delete"},
};
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void
scripts_init(void)
{
    for (int i = 0; i < NSCRIPTS; i++) {
        for (const struct embedded_file *f = embedded_lua; f->module; f++) {
            if (strcmp(f->module, scripts[i].module) == 0) {
                scripts[i].src = f->source;
                scripts[i].len = f->len;
                sha1_hex(f->source, f->len, scripts[i].sha);
            }
        }
        if (!scripts[i].src) {
            fprintf(stderr, "sluice: the script %s is not embedded\n", scripts[i].module);
            abort();
        }
    }
}

static uint64_t
mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---- libevent adapter: every libevent call of this file is in this section ---------------- */

/*
 * hiredis asks for write interest whenever a command is appended and drops
 * it once its buffer is written: with a plain adapter that is an epoll_ctl
 * pair per loop iteration. Here a command appended while the connection is
 * up activates a user event instead (no syscall); it runs after the other
 * callbacks of the iteration, so every command they produced leaves in one
 * write. Only when the socket cannot take everything (or while connecting)
 * is the real write event armed.
 */
struct evio {
    redisAsyncContext *ac;
    struct event *rev, *wev, *flush;
    bool wev_on;   /* wev is armed */
    bool flush_on; /* flush is active */
    bool flushing; /* inside a flush: write interest now means "socket full" */
    bool dead;     /* hiredis let go of it during a flush; freed when the flush returns */
};

static void
ev_on_read(evutil_socket_t fd, short what, void *arg)
{
    redisAsyncHandleRead(((struct evio *)arg)->ac);
}

static void
ev_on_write(evutil_socket_t fd, short what, void *arg)
{
    redisAsyncHandleWrite(((struct evio *)arg)->ac);
}

static void
ev_on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct evio *e = arg;

    e->flush_on = false;
    e->flushing = true;
    redisAsyncHandleWrite(e->ac); /* may free the context, and call ev_cleanup */
    e->flushing = false;
    if (e->dead)
        free(e);
}

static void
ev_add_read(void *p)
{
    event_add(((struct evio *)p)->rev, NULL);
}

static void
ev_del_read(void *p)
{
    event_del(((struct evio *)p)->rev);
}

static void
ev_add_write(void *p)
{
    struct evio *e = p;

    if (e->wev_on || e->flush_on)
        return;
    if (e->flushing || !(e->ac->c.flags & REDIS_CONNECTED)) {
        e->wev_on = true;
        event_add(e->wev, NULL);
        return;
    }
    e->flush_on = true;
    event_active(e->flush, EV_WRITE, 1);
}

static void
ev_del_write(void *p)
{
    struct evio *e = p;

    if (e->wev_on) {
        e->wev_on = false;
        event_del(e->wev);
    }
}

static void
ev_cleanup(void *p)
{
    struct evio *e = p;

    event_free(e->rev);
    event_free(e->wev);
    event_free(e->flush);
    if (e->flushing)
        e->dead = true;
    else
        free(e);
}

/* Lets base drive ac's socket. */
static void
ev_attach(redisAsyncContext *ac, struct event_base *base)
{
    struct evio *e = xcalloc(1, sizeof(*e));

    e->ac = ac;
    e->rev = event_new(base, ac->c.fd, EV_READ | EV_PERSIST, ev_on_read, e);
    e->wev = event_new(base, ac->c.fd, EV_WRITE | EV_PERSIST, ev_on_write, e);
    e->flush = event_new(base, -1, 0, ev_on_flush, e);
    if (!e->rev || !e->wev || !e->flush) {
        fprintf(stderr, "sluice: out of memory (redis events)\n");
        abort();
    }
    ac->ev.data = e;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    ev_add_read(e);
    ev_add_write(e); /* not connected yet: the real event completes the non-blocking connect */
}

struct timer {
    struct event *ev;
    void (*fn)(void *arg);
    void *arg;
};

static void
timer_fire(evutil_socket_t fd, short what, void *arg)
{
    struct timer *t = arg;

    t->fn(t->arg);
}

static void
timer_init(struct timer *t, struct event_base *base, void (*fn)(void *), void *arg)
{
    t->fn = fn;
    t->arg = arg;
    t->ev = evtimer_new(base, timer_fire, t);
    if (!t->ev) {
        fprintf(stderr, "sluice: out of memory (redis timer)\n");
        abort();
    }
}

/* (Re)arms the timer to fire once, `us` microseconds from now. */
static void
timer_arm(struct timer *t, uint64_t us)
{
    struct timeval tv = {.tv_sec = (time_t)(us / 1000000), .tv_usec = (suseconds_t)(us % 1000000)};

    evtimer_add(t->ev, &tv);
}

static void
timer_stop(struct timer *t)
{
    evtimer_del(t->ev);
}

static int
timer_pending(const struct timer *t)
{
    return evtimer_pending(t->ev, NULL);
}

static void
timer_free(struct timer *t)
{
    if (t->ev)
        event_free(t->ev);
    t->ev = NULL;
}

/* A callback run once, late in the loop's current turn (after the callbacks already due). */
struct turn {
    struct event *ev;
    bool on;
    void (*fn)(void *arg);
    void *arg;
};

static void
turn_fire(evutil_socket_t fd, short what, void *arg)
{
    struct turn *t = arg;

    t->on = false;
    t->fn(t->arg);
}

static void
turn_init(struct turn *t, struct event_base *base, void (*fn)(void *), void *arg)
{
    t->fn = fn;
    t->arg = arg;
    t->on = false;
    t->ev = event_new(base, -1, 0, turn_fire, t);
    if (!t->ev) {
        fprintf(stderr, "sluice: out of memory (redis turn)\n");
        abort();
    }
}

static void
turn_activate(struct turn *t)
{
    if (!t->on) {
        t->on = true;
        event_active(t->ev, EV_WRITE, 1);
    }
}

static void
turn_free(struct turn *t)
{
    if (t->ev)
        event_free(t->ev);
    t->ev = NULL;
}

/* ---- URLs --------------------------------------------------------------------------------- */

struct endpoint {
    char host[256];
    int port;
    char user[128];
    char password[256];
    bool has_user, has_password;
    unsigned db;
};

static int
hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Copies the percent-decoded n bytes of s into out (cap bytes with the NUL); -1 if it cannot. */
static int
pct_copy(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            c = h * 16 + l;
            i += 2;
        }
        if (c == 0 || o + 1 >= cap)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* redis://[[user]:password@]host[:port][/db], host a name, an IPv4 address or [IPv6]. */
static int
parse_url(const char *url, struct endpoint *ep, char *err, size_t errlen)
{
    static const char scheme[] = "redis://";
    const char *p, *end, *at, *hend;

    memset(ep, 0, sizeof(*ep));
    ep->port = 6379;
    if (!url || strncmp(url, scheme, sizeof(scheme) - 1) != 0) {
        snprintf(err, errlen, "'%s': expected redis://[[user]:password@]host[:port][/db]",
                 url ? url : "");
        return -1;
    }
    p = url + sizeof(scheme) - 1;
    end = p + strcspn(p, "/?#");
    at = memrchr(p, '@', (size_t)(end - p));
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        if (colon && colon > p) {
            if (pct_copy(p, (size_t)(colon - p), ep->user, sizeof(ep->user)) != 0)
                goto bad_userinfo;
            ep->has_user = true;
        }
        if (pct_copy(pw, (size_t)(at - pw), ep->password, sizeof(ep->password)) != 0)
            goto bad_userinfo;
        ep->has_password = ep->password[0] != '\0';
        p = at + 1;
    }
    if (*p == '[') {
        hend = memchr(p, ']', (size_t)(end - p));
        if (!hend || (size_t)(hend - p - 1) >= sizeof(ep->host) || hend == p + 1) {
            snprintf(err, errlen, "'%s': bad IPv6 host", url);
            return -1;
        }
        memcpy(ep->host, p + 1, (size_t)(hend - p - 1));
        p = hend + 1;
    } else {
        hend = p + strcspn(p, ":/?#");
        if (hend > end)
            hend = end;
        if (hend == p || (size_t)(hend - p) >= sizeof(ep->host)) {
            snprintf(err, errlen, "'%s': missing or overlong host", url);
            return -1;
        }
        memcpy(ep->host, p, (size_t)(hend - p));
        p = hend;
    }
    if (*p == ':') {
        char *e;
        errno = 0;
        long port = strtol(p + 1, &e, 10);
        if (errno || e == p + 1 || port < 1 || port > 65535 || e != end) {
            snprintf(err, errlen, "'%s': bad port", url);
            return -1;
        }
        ep->port = (int)port;
        p = e;
    }
    if (p != end) {
        snprintf(err, errlen, "'%s': unexpected text after the host", url);
        return -1;
    }
    if (*p == '/') {
        const char *d = p + 1;
        if (*d) {
            char *e;
            errno = 0;
            unsigned long db = strtoul(d, &e, 10);
            if (errno || e == d || *e || db > 1000000 || *d == '-' || *d == '+') {
                snprintf(err, errlen, "'%s': the path must be a database number", url);
                return -1;
            }
            ep->db = (unsigned)db;
        }
    } else if (*p) {
        snprintf(err, errlen, "'%s': query strings and fragments are not supported", url);
        return -1;
    }
    return 0;
bad_userinfo:
    snprintf(err, errlen, "'%s': bad user or password (percent-encode reserved characters)", url);
    return -1;
}

int
store_redis_check_url(const char *url, char *err, size_t errlen)
{
    struct endpoint ep;

    return parse_url(url, &ep, err, errlen);
}

/* ---- connections and commands ------------------------------------------------------------ */

struct store_redis;

/* Called once per command: r is the reply, or NULL when there is none (deadline, connection). */
typedef void reply_fn(void *arg, redisReply *r);

struct rcmd {
    struct rcmd *prev, *next; /* the connection's pending list, in send order */
    struct rconn *conn;
    int script;      /* SCRIPT_*, or -1: never resent */
    struct sbuf cmd; /* the command as sent, for a resend after NOSCRIPT */
    uint64_t seq;    /* its number on the connection when last sent */
    uint64_t deadline_us;
    bool resent;
    reply_fn *fn;
    void *arg;
};

struct rconn {
    struct store_redis *s;
    const char *role; /* "cache", "limits", for logs */
    struct endpoint ep;
    redisAsyncContext *ac; /* NULL while down */
    struct rcmd *head, *tail;
    struct timer deadline; /* for the earliest deadline among pending commands */
    uint64_t deadline_at;  /* when it fires (monotonic us), 0 when not armed */
    struct timer retry;    /* reconnect */
    uint64_t backoff_us;
    uint64_t seq;                 /* commands sent on this connection */
    uint64_t loaded_at[NSCRIPTS]; /* seq of each script's last SCRIPT LOAD on it */
    bool down_logged;             /* its failure was logged; log the recovery */
    uint64_t last_error_log_us;
};

#define NEAR_MIN_BUCKETS 64

struct near_entry {
    struct near_entry *hnext;       /* bucket chain */
    struct near_entry *prev, *next; /* recency list, most recent first */
    uint64_t hash;
    unsigned char token[TOKEN_LEN];
    struct store_entry *entry; /* one reference */
    size_t charge;
    size_t keylen;
    char key[];
};

struct near {
    struct near_entry **buckets;
    size_t mask;
    size_t count;
    size_t nsecondary; /* copies of secondary entries among count */
    struct near_entry *head, *tail;
    size_t bytes, max_bytes;
};

struct batch;

struct store_redis {
    struct store base;
    struct event_base *evbase;
    struct rconn cache, limits;
    bool split; /* limits live in their own Redis */
    bool closing;
    uint64_t deadline_us;
    uint64_t tag_lease_ms;
    uint64_t token_state;            /* the fill tokens' random stream */
    struct near near;                /* local copies of responses */
    struct turn turn_ev;             /* runs once the loop's turn has run its other callbacks */
    struct batch *turn, *turn_tail;  /* the admits of this turn, by batch */
    struct batch *open[BATCH_SLOTS]; /* the batches still open, by hash of their tag */
    struct sbuf scratch;             /* for building keys */
    struct store_redis_stats stats;
};

static void conn_connect(struct rconn *c);

static void
fifo_push(struct rconn *c, struct rcmd *rc)
{
    rc->next = NULL;
    rc->prev = c->tail;
    if (c->tail)
        c->tail->next = rc;
    else
        c->head = rc;
    c->tail = rc;
}

static void
fifo_unlink(struct rconn *c, struct rcmd *rc)
{
    if (rc->prev)
        rc->prev->next = rc->next;
    else
        c->head = rc->next;
    if (rc->next)
        rc->next->prev = rc->prev;
    else
        c->tail = rc->prev;
    rc->prev = rc->next = NULL;
}

static void
rcmd_free(struct rcmd *rc)
{
    sbuf_free(&rc->cmd);
    free(rc);
}

static void
conn_log(struct rconn *c, const char *what, const char *detail)
{
    fprintf(stderr, "sluice: redis %s %s:%d: %s%s%s\n", c->role, c->ep.host, c->ep.port, what,
            detail ? ": " : "", detail ? detail : "");
}

/* Schedules the next connection attempt after the backoff, which then doubles. */
static void
conn_schedule(struct rconn *c)
{
    if (c->s->closing || timer_pending(&c->retry))
        return;
    timer_arm(&c->retry, c->backoff_us);
    c->backoff_us = c->backoff_us * 2 > BACKOFF_MAX_US ? BACKOFF_MAX_US : c->backoff_us * 2;
}

/* Forgets the hiredis context (it is being freed, by hiredis or by us). */
static void
conn_detach(struct rconn *c, const char *why, const char *detail)
{
    if (!c->ac)
        return;
    c->ac->data = NULL;
    c->ac = NULL;
    if (!c->down_logged && !c->s->closing) {
        char msg[160];
        snprintf(msg, sizeof(msg), "%s; reconnecting", why);
        conn_log(c, msg, detail);
        c->down_logged = true;
    }
    conn_schedule(c);
}

/*
 * Drops the connection: hiredis calls every pending callback with no reply
 * (each completes its operation once, with an error), then it is freed.
 */
static void
conn_drop(struct rconn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;

    if (!ac)
        return;
    conn_detach(c, why, NULL);
    redisAsyncFree(ac);
    c->deadline_at = 0;
    timer_stop(&c->deadline);
}

/* The deadline timer: drops the connection when a pending command is past its deadline. */
static void
on_deadline(void *arg)
{
    struct rconn *c = arg;
    uint64_t now = mono_us(), next = UINT64_MAX;

    c->deadline_at = 0;
    for (struct rcmd *rc = c->head; rc; rc = rc->next) {
        if (rc->deadline_us <= now) {
            c->s->stats.deadlines++;
            conn_drop(c, "a command passed its deadline");
            return;
        }
        if (rc->deadline_us < next)
            next = rc->deadline_us;
    }
    if (next != UINT64_MAX) {
        c->deadline_at = next;
        timer_arm(&c->deadline, next - now);
    }
}

static void
deadline_watch(struct rconn *c, uint64_t deadline_us)
{
    if (c->deadline_at == 0 || deadline_us < c->deadline_at) {
        uint64_t now = mono_us();
        c->deadline_at = deadline_us;
        timer_arm(&c->deadline, deadline_us > now ? deadline_us - now : 0);
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Hands rc (already built) to hiredis. Returns 0, or -1 when the connection refused it. */
static int
conn_write(struct rconn *c, struct rcmd *rc)
{
    if (!c->ac || c->s->closing)
        return -1;
    rc->seq = ++c->seq;
    fifo_push(c, rc);
    if (redisAsyncFormattedCommand(c->ac, on_reply, rc, rc->cmd.p, rc->cmd.len) != REDIS_OK) {
        fifo_unlink(c, rc);
        return -1;
    }
    c->s->stats.commands++;
    deadline_watch(c, rc->deadline_us);
    return 0;
}

/*
 * Sends a command (taking its buffer) whose reply goes to fn(arg, reply)
 * exactly once: now, with no reply, when the connection is down.
 */
static void
conn_send(struct rconn *c, int script, struct sbuf *cmd, reply_fn *fn, void *arg)
{
    struct rcmd *rc = xcalloc(1, sizeof(*rc));

    rc->conn = c;
    rc->script = script;
    rc->cmd = *cmd;
    *cmd = (struct sbuf){0};
    rc->deadline_us = mono_us() + c->s->deadline_us;
    rc->fn = fn;
    rc->arg = arg;
    if (conn_write(c, rc) != 0) {
        fn(arg, NULL);
        rcmd_free(rc);
    }
}

static bool
is_noscript(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR && r->len >= 8 && memcmp(r->str, "NOSCRIPT", 8) == 0;
}

static void send_script_load(struct rconn *c, int script);

static void
on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rcmd *rc = privdata;
    struct rconn *c = rc->conn;
    redisReply *r = reply;

    fifo_unlink(c, rc);
    if (r && is_noscript(r) && rc->script >= 0 && !rc->resent && c->ac == ac) {
        /* The script did not run: load it (unless a load was sent after this command) and
         * send the command again, with its original deadline. */
        rc->resent = true;
        c->s->stats.noscript++;
        if (c->loaded_at[rc->script] < rc->seq)
            send_script_load(c, rc->script);
        if (conn_write(c, rc) == 0)
            return;
        r = NULL;
    }
    if (r) {
        c->backoff_us = BACKOFF_MIN_US;
        if (c->down_logged) {
            c->down_logged = false;
            conn_log(c, "answering again", NULL);
        }
        if (r->type == REDIS_REPLY_ERROR) {
            uint64_t now = mono_us();
            if (now - c->last_error_log_us >= 1000000 || c->last_error_log_us == 0) {
                c->last_error_log_us = now;
                conn_log(c, "error reply", r->str);
            }
        }
    }
    rc->fn(rc->arg, r);
    rcmd_free(rc);
}

/* ---- RESP ------------------------------------------------------------------------------- */

static void
resp_num(struct sbuf *b, char prefix, uint64_t v)
{
    char buf[24];
    size_t i = sizeof(buf);

    buf[--i] = '\n';
    buf[--i] = '\r';
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    buf[--i] = prefix;
    sbuf_add(b, buf + i, sizeof(buf) - i);
}

static void
resp_argc(struct sbuf *b, size_t n)
{
    resp_num(b, '*', n);
}

static void
resp_arg(struct sbuf *b, const void *p, size_t len)
{
    resp_num(b, '$', len);
    sbuf_add(b, p, len);
    sbuf_add(b, "\r\n", 2);
}

static void
resp_str(struct sbuf *b, const char *s)
{
    resp_arg(b, s, strlen(s));
}

static void
resp_u64(struct sbuf *b, uint64_t v)
{
    char buf[24];
    size_t i = sizeof(buf);

    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    resp_arg(b, buf + i, sizeof(buf) - i);
}

static void
resp_evalsha(struct sbuf *b, int script, size_t nkeys, size_t nargs)
{
    resp_argc(b, 3 + nkeys + nargs);
    resp_str(b, "EVALSHA");
    resp_arg(b, scripts[script].sha, 40);
    resp_u64(b, nkeys);
}

static void
on_ignored(void *arg, redisReply *r)
{
}

static void
on_setup_reply(void *arg, redisReply *r)
{
    struct rconn *c = arg;

    if (r && r->type == REDIS_REPLY_ERROR)
        conn_log(c, "setting up the connection failed", r->str);
}

static void
send_script_load(struct rconn *c, int script)
{
    struct sbuf b = {0};

    resp_argc(&b, 3);
    resp_str(&b, "SCRIPT");
    resp_str(&b, "LOAD");
    resp_arg(&b, scripts[script].src, scripts[script].len);
    conn_send(c, -1, &b, on_setup_reply, c);
    c->loaded_at[script] = c->seq;
}

/* ---- connection life ---------------------------------------------------------------------- */

static void
on_connect(const redisAsyncContext *ac, int status)
{
    struct rconn *c = ac->data;

    if (!c)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context and fails its pending commands after this returns. */
        conn_detach(c, "cannot connect", ac->errstr);
        return;
    }
    c->s->stats.connects++;
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rconn *c = ac->data;

    if (!c)
        return;
    conn_detach(c, "connection lost", ac->errstr[0] ? ac->errstr : NULL);
}

static void
on_retry(void *arg)
{
    conn_connect(arg);
}

static void
conn_connect(struct rconn *c)
{
    redisAsyncContext *ac;

    if (c->ac || c->s->closing)
        return;
    ac = redisAsyncConnect(c->ep.host, c->ep.port);
    if (!ac || ac->err) {
        if (!c->down_logged) {
            conn_log(c, "cannot connect; retrying", ac ? ac->errstr : "out of memory");
            c->down_logged = true;
        }
        if (ac)
            redisAsyncFree(ac);
        conn_schedule(c);
        return;
    }
    ev_attach(ac, c->s->evbase);
    ac->data = c;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->seq = 0;
    memset(c->loaded_at, 0, sizeof(c->loaded_at));

    /* Sent ahead of any request, so that every later command finds them done. */
    struct sbuf b = {0};
    if (c->ep.has_password) {
        resp_argc(&b, c->ep.has_user ? 3 : 2);
        resp_str(&b, "AUTH");
        if (c->ep.has_user)
            resp_str(&b, c->ep.user);
        resp_str(&b, c->ep.password);
        conn_send(c, -1, &b, on_setup_reply, c);
    }
    if (c->ep.db != 0) {
        resp_argc(&b, 2);
        resp_str(&b, "SELECT");
        resp_u64(&b, c->ep.db);
        conn_send(c, -1, &b, on_setup_reply, c);
    }
    for (int i = 0; i < NSCRIPTS && c->ac; i++)
        send_script_load(c, i);
}

static void
conn_init(struct store_redis *s, struct rconn *c, const char *role, const struct endpoint *ep)
{
    c->s = s;
    c->role = role;
    c->ep = *ep;
    c->backoff_us = BACKOFF_MIN_US;
    timer_init(&c->deadline, s->evbase, on_deadline, c);
    timer_init(&c->retry, s->evbase, on_retry, c);
}

static void
conn_fini(struct rconn *c)
{
    if (!c->s)
        return;
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->ac->data = NULL;
        c->ac = NULL;
        redisAsyncFree(ac);
    }
    timer_free(&c->deadline);
    timer_free(&c->retry);
}

/* ---- keys ------------------------------------------------------------------------------- */

static uint64_t
fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h;
}

/* Makes room for `more` bytes in b at once, so that building a command reallocates rarely. */
static void
buf_reserve(struct sbuf *b, size_t more)
{
    if (b->cap - b->len > more)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= more)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void
put_u64(struct sbuf *b, uint64_t v)
{
    char buf[20];
    size_t i = sizeof(buf);

    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sbuf_add(b, buf + i, sizeof(buf) - i);
}

/* The hash tag of a key: TAG as the header comment says, in out (at least 18 bytes). */
static size_t
hash_tag(const char *raw, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const char *seg = raw;
    size_t n = len = store_key_primary_len(raw, len);
    const char *colon = len ? memrchr(raw, ':', len) : NULL;

    if (colon) {
        seg = colon + 1;
        n = len - (size_t)(seg - raw);
    }
    if (n >= 1 && n <= MAX_HASH_TAG && !memchr(seg, '{', n) && !memchr(seg, '}', n)) {
        memcpy(out, seg, n);
        return n;
    }
    uint64_t v = fnv1a(seg, n);
    out[0] = '#';
    for (int i = 16; i >= 1; i--, v >>= 4)
        out[i] = hex[v & 15];
    return 17;
}

/* Appends "sl:{TAG}:KIND:" to b. */
static void
key_prefix(struct sbuf *b, char kind, const char *raw, size_t len)
{
    char tag[MAX_HASH_TAG + 1];
    size_t n = hash_tag(raw, len, tag);

    sbuf_add(b, "sl:{", 4);
    sbuf_add(b, tag, n);
    char tail[4] = {'}', ':', kind, ':'};
    sbuf_add(b, tail, 4);
}

/* The rule as it decides behaviour: what makes two limits one counter (as in the memory store). */
static struct limiter_rule
rule_identity(const struct limiter_rule *r)
{
    struct limiter_rule id = {.algo = r->algo, .limit = r->limit, .window_ms = r->window_ms};

    if (r->algo == LIMITER_TOKEN_BUCKET)
        id.burst = r->burst ? r->burst : r->limit;
    return id;
}

/* Appends the key of a limit, "sl:{TAG}:l:ALGO:LIMIT:WINDOW:BURST:KEY". */
static void
limit_key(struct sbuf *b, const struct limiter_rule *id, const char *raw, size_t len)
{
    key_prefix(b, 'l', raw, len);
    put_u64(b, (uint64_t)id->algo);
    sbuf_add(b, ":", 1);
    put_u64(b, id->limit);
    sbuf_add(b, ":", 1);
    put_u64(b, id->window_ms);
    sbuf_add(b, ":", 1);
    put_u64(b, id->burst);
    sbuf_add(b, ":", 1);
    sbuf_add(b, raw, len);
}

/*
 * Appends the key of one part of a cache entry or of a tag: 'c' the entry (its fill token,
 * expiry and tags), 'r' the stored response, 'f' the fill lease, 'v' a primary's variants,
 * 't' a tag's generation.
 */
static void
cache_key(struct sbuf *b, char kind, const char *raw, size_t len)
{
    key_prefix(b, kind, raw, len);
    sbuf_add(b, raw, len);
}

/* Whether the scripts' doubles compute this rule exactly (every intermediate below 2^53). */
static bool
rule_exact(const struct limiter_rule *id)
{
    unsigned __int128 lw = (unsigned __int128)id->limit * id->window_ms;
    unsigned __int128 bw = (unsigned __int128)id->burst * id->window_ms;

    return 2 * (lw + id->window_ms + id->limit) < EXACT_LIMIT && 2 * bw < EXACT_LIMIT;
}

/* Appends one argument whose bytes are a key of `kind` (see cache_key and limit_key). */
static void
resp_key(struct sbuf *b, struct sbuf *scratch, char kind, const struct limiter_rule *id,
         const char *raw, size_t len)
{
    scratch->len = 0;
    if (kind == 'l')
        limit_key(scratch, id, raw, len);
    else
        cache_key(scratch, kind, raw, len);
    resp_arg(b, scratch->p, scratch->len);
}

/* ---- replies ------------------------------------------------------------------------------ */

static int
reply_u64(const redisReply *r, uint64_t *out)
{
    if (r->type == REDIS_REPLY_INTEGER) {
        if (r->integer < 0)
            return -1;
        *out = (uint64_t)r->integer;
        return 0;
    }
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < 21) {
        uint64_t v = 0;
        for (size_t i = 0; i < r->len; i++) {
            unsigned d = (unsigned char)r->str[i] - '0';
            if (d > 9 || v > (UINT64_MAX - d) / 10)
                return -1;
            v = v * 10 + d;
        }
        *out = v;
        return 0;
    }
    return -1;
}

static uint32_t
rd_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
wr_u32(struct sbuf *b, uint32_t v)
{
    unsigned char p[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    sbuf_add(b, p, 4);
}

/* Appends v as a little-endian IEEE double, the scripts' struct.unpack('<d'). */
static void
wr_f64(struct sbuf *b, double v)
{
    uint64_t bits;
    unsigned char p[8];

    memcpy(&bits, &v, sizeof(bits));
    for (int i = 0; i < 8; i++, bits >>= 8)
        p[i] = (unsigned char)bits;
    sbuf_add(b, p, 8);
}

static uint64_t
rd_f64_ms(const unsigned char *p)
{
    uint64_t bits = 0;
    double d;

    for (int i = 7; i >= 0; i--)
        bits = bits << 8 | p[i];
    memcpy(&d, &bits, sizeof(d));
    return d > 0 && d < 1.8e19 ? (uint64_t)d : 0;
}

static uint64_t
rd_u64(const unsigned char *p)
{
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static void
wr_u64(struct sbuf *b, uint64_t v)
{
    wr_u32(b, (uint32_t)v);
    wr_u32(b, (uint32_t)(v >> 32));
}

/*
 * The stored response: [body][content type][headers][etag], then the head's trailer
 * [u32 content type length][u32 headers length][u32 etag length][u64 stale_ms]
 * [u16 status][u8 flags][u8 which of content type (1), headers (2), etag (4) are set],
 * written by the gateway, then [f64 stored_ms][f64 expires_ms][8-byte fill token], appended
 * by fill.lua. The body comes first so that it is used in place.
 */
#define HEAD_TRAILER_LEN (4 + 4 + 4 + 8 + 2 + 1 + 1)
#define TRAILER_LEN (HEAD_TRAILER_LEN + 8 + 8 + TOKEN_LEN)
#define HAS_CONTENT_TYPE 1u
#define HAS_HEADERS 2u
#define HAS_ETAG 4u

/* Appends the head of entry's stored response: everything but what fill.lua appends. */
static void
entry_head(struct sbuf *b, const struct store_entry *e)
{
    size_t ctlen = e->content_type ? strlen(e->content_type) : 0;
    size_t etlen = e->etag ? strlen(e->etag) : 0;
    size_t hlen = e->headers ? e->headers_len : 0;
    unsigned char tail[4] = {(unsigned char)e->status, (unsigned char)(e->status >> 8), e->flags,
                             (unsigned char)((e->content_type ? HAS_CONTENT_TYPE : 0) |
                                             (e->headers ? HAS_HEADERS : 0) |
                                             (e->etag ? HAS_ETAG : 0))};

    if (e->body_len)
        sbuf_add(b, e->body, e->body_len);
    if (ctlen)
        sbuf_add(b, e->content_type, ctlen);
    if (hlen)
        sbuf_add(b, e->headers, hlen);
    if (etlen)
        sbuf_add(b, e->etag, etlen);
    wr_u32(b, (uint32_t)ctlen);
    wr_u32(b, (uint32_t)hlen);
    wr_u32(b, (uint32_t)etlen);
    wr_u64(b, e->stale_ms);
    sbuf_add(b, tail, 4);
}

static size_t
entry_head_len(const struct store_entry *e)
{
    return e->body_len + (e->content_type ? strlen(e->content_type) : 0) +
           (e->headers ? e->headers_len : 0) + (e->etag ? strlen(e->etag) : 0) + HEAD_TRAILER_LEN;
}

/*
 * Returns a new entry that owns v (a malloc'd stored response of len bytes), or NULL, v
 * untouched, when the value is malformed.
 */
static struct store_entry *
entry_from_value(char *v, size_t len)
{
    const unsigned char *p = (const unsigned char *)v;

    if (len < TRAILER_LEN)
        return NULL;
    size_t t = len - TRAILER_LEN;
    uint64_t ctlen = rd_u32(p + t), hlen = rd_u32(p + t + 4), etlen = rd_u32(p + t + 8);
    if (ctlen + hlen + etlen > t)
        return NULL;
    uint64_t stale = rd_u64(p + t + 12);
    uint16_t status = (uint16_t)(p[t + 20] | p[t + 21] << 8);
    uint8_t flags = p[t + 22], has = p[t + 23];
    uint64_t stored = rd_f64_ms(p + t + 24), expires = rd_f64_ms(p + t + 32);
    size_t blen = t - (size_t)(ctlen + hlen + etlen);
    const char *q = v + blen;
    char *ct = has & HAS_CONTENT_TYPE ? xstrndup(q, ctlen) : NULL;
    struct store_entry *e = store_entry_new(status, ct, v, blen);
    q += ctlen;
    if (has & HAS_HEADERS) {
        e->headers = xmalloc(hlen + 1); /* NUL-terminated too, for convenience */
        memcpy(e->headers, q, hlen);
        e->headers[hlen] = '\0';
        e->headers_len = hlen;
    }
    q += hlen;
    if (has & HAS_ETAG)
        e->etag = xstrndup(q, etlen);
    e->flags = flags;
    e->stale_ms = stale;
    e->stored_ms = stored;
    e->expires_ms = expires;
    return e;
}

/* ---- local copies ------------------------------------------------------------------------- */

/*
 * Each handle keeps copies of the responses it read or stored lately, under
 * their cache key with the fill token they were stored with, within a byte
 * budget (least recently used go first). A lookup that finds a copy names
 * no GET: when the script reports the entry fresh with the copy's token, the
 * copy is that very response (a token is drawn at random for every fill).
 * Any other token costs a GET after the script (a second round trip), a miss
 * drops the copy. Every hit is still decided in Redis, with the limits.
 */
static struct near_entry **
near_slot(struct near *n, uint64_t hash, const char *key, size_t keylen)
{
    struct near_entry **pp = &n->buckets[hash & n->mask];

    while (*pp && !((*pp)->hash == hash && (*pp)->keylen == keylen &&
                    memcmp((*pp)->key, key, keylen) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void
near_unlist(struct near *n, struct near_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        n->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        n->tail = e->prev;
}

static void
near_push(struct near *n, struct near_entry *e)
{
    e->prev = NULL;
    e->next = n->head;
    if (n->head)
        n->head->prev = e;
    else
        n->tail = e;
    n->head = e;
}

/* Unlinks the copy at *pp and frees it. */
static void
near_remove(struct near *n, struct near_entry **pp)
{
    struct near_entry *e = *pp;

    *pp = e->hnext;
    near_unlist(n, e);
    n->bytes -= e->charge;
    n->count--;
    n->nsecondary -= store_key_primary_len(e->key, e->keylen) < e->keylen;
    store_entry_release(e->entry);
    free(e);
}

/* The copy of key, made the most recent, or NULL. */
static struct near_entry *
near_find(struct near *n, const char *key, size_t keylen)
{
    if (!n->buckets)
        return NULL;
    struct near_entry *e = *near_slot(n, fnv1a(key, keylen), key, keylen);
    if (e && n->head != e) {
        near_unlist(n, e);
        near_push(n, e);
    }
    return e;
}

static void
near_drop(struct near *n, const char *key, size_t keylen)
{
    if (!n->buckets)
        return;
    struct near_entry **pp = near_slot(n, fnv1a(key, keylen), key, keylen);
    if (*pp)
        near_remove(n, pp);
}

/* Keeps a reference to entry as the copy of key stored with token (replacing any other). */
static void
near_put(struct near *n, const char *key, size_t keylen, const unsigned char *token,
         struct store_entry *entry)
{
    size_t charge = sizeof(struct near_entry) + keylen + entry->body_len + entry->headers_len + 64;
    uint64_t hash = fnv1a(key, keylen);

    if (charge > n->max_bytes / 4) {
        near_drop(n, key, keylen);
        return;
    }
    if (!n->buckets) {
        n->buckets = xcalloc(NEAR_MIN_BUCKETS, sizeof(*n->buckets));
        n->mask = NEAR_MIN_BUCKETS - 1;
    }
    struct near_entry **pp = near_slot(n, hash, key, keylen);
    if (*pp)
        near_remove(n, pp);
    while (n->bytes + charge > n->max_bytes && n->tail)
        near_remove(n, near_slot(n, n->tail->hash, n->tail->key, n->tail->keylen));
    if (n->count >= n->mask + 1) {
        size_t nb = (n->mask + 1) * 2;
        struct near_entry **b = xcalloc(nb, sizeof(*b));
        for (size_t i = 0; i <= n->mask; i++) {
            for (struct near_entry *e = n->buckets[i], *next; e; e = next) {
                next = e->hnext;
                e->hnext = b[e->hash & (nb - 1)];
                b[e->hash & (nb - 1)] = e;
            }
        }
        free(n->buckets);
        n->buckets = b;
        n->mask = nb - 1;
    }
    struct near_entry *e = xmalloc(sizeof(*e) + keylen);
    e->hash = hash;
    memcpy(e->token, token, TOKEN_LEN);
    store_entry_ref(entry);
    e->entry = entry;
    e->charge = charge;
    e->keylen = keylen;
    memcpy(e->key, key, keylen);
    e->hnext = n->buckets[hash & n->mask];
    n->buckets[hash & n->mask] = e;
    near_push(n, e);
    n->bytes += charge;
    n->count++;
    n->nsecondary += store_key_primary_len(key, keylen) < keylen;
}

/* Drops the copies of the secondaries of the primary key p (plen bytes): a walk of them all. */
static void
near_drop_secondaries(struct near *n, const char *p, size_t plen)
{
    for (size_t b = 0; n->nsecondary && n->buckets && b <= n->mask; b++) {
        struct near_entry **pp = &n->buckets[b];
        while (*pp) {
            struct near_entry *e = *pp;
            if (e->keylen > plen && e->key[plen] == STORE_KEY_SEP && memcmp(e->key, p, plen) == 0)
                near_remove(n, pp);
            else
                pp = &e->hnext;
        }
    }
}

static void
near_free(struct near *n)
{
    while (n->tail)
        near_remove(n, near_slot(n, n->tail->hash, n->tail->key, n->tail->keylen));
    free(n->buckets);
    n->buckets = NULL;
}

/* ---- admit_and_lookup --------------------------------------------------------------------- */

struct admit_op {
    struct store_redis *s;
    struct store_admit *a;
    store_done_fn *done;
    void *arg;
    int pending; /* replies awaited, and one for the sender while it sends */
    int status;
    size_t nu;                   /* distinct limits sent */
    size_t *map;                 /* a->nlimits: the distinct limit each one counts in */
    struct limiter_rule *ids;    /* nu */
    uint64_t *costs;             /* nu */
    struct limiter_result *ures; /* nu */
    bool allowed;
    bool lease;     /* the lookup asked for the fill lease */
    bool found;     /* the script found the entry, fresh or stale: token holds its fill token */
    bool stale;     /* ... past its expiry, kept for its stale_ms */
    bool leased;    /* the lookup took the fill lease (on a miss, or with a stale entry) */
    bool filling;   /* another caller holds the fill lease */
    bool near;      /* a local copy was found: no GET was sent with the lookup */
    bool refetched; /* the GET was sent after the lookup */
    uint64_t now_ms;
    unsigned char token[TOKEN_LEN];
    char *value; /* the stored response read after the script (owned), or NULL */
    size_t value_len;
};

static void admit_value_command(struct store_redis *s, struct admit_op *op);
static void admit_part_done(struct admit_op *op);

/* The entry found: the response read with it, or the local copy, when it carries the
 * same fill token. NULL when there is none (yet). */
static struct store_entry *
admit_entry(struct admit_op *op)
{
    struct store_admit *a = op->a;
    struct store_entry *e;

    if (op->value) {
        if (op->value_len < TRAILER_LEN ||
            memcmp(op->value + op->value_len - TOKEN_LEN, op->token, TOKEN_LEN) != 0)
            return NULL;
        e = entry_from_value(op->value, op->value_len);
        if (e) {
            op->value = NULL;
            near_put(&op->s->near, a->cache_key, a->cache_keylen, op->token, e);
        }
        return e;
    }
    struct near_entry *ne = near_find(&op->s->near, a->cache_key, a->cache_keylen);
    if (!ne || memcmp(ne->token, op->token, TOKEN_LEN) != 0)
        return NULL;
    store_entry_ref(ne->entry);
    op->s->stats.local_hits++;
    return ne->entry;
}

static void
admit_finish(struct admit_op *op)
{
    struct store_admit *a = op->a;
    struct store_entry *entry = NULL;

    a->entry = NULL;
    a->state = STORE_MISS;
    a->lease_taken = false;
    if (op->status == 0) {
        a->allowed = op->allowed;
        a->now_ms = op->now_ms;
        for (size_t i = 0; i < a->nlimits; i++) {
            a->results[i] = op->ures[op->map[i]];
            a->results[i].limit = a->limits[i].rule->limit;
        }
        if (!a->allowed) {
            for (size_t i = 0; i < a->ntags; i++)
                a->tag_gens[i] = 0;
            if (op->s->split && op->leased) {
                /* The lookup ran beside a denied check and took the lease: give it back. */
                struct sbuf b = {0}, k = {0};
                resp_argc(&b, 2);
                resp_str(&b, "DEL");
                resp_key(&b, &k, 'f', NULL, a->cache_key, a->cache_keylen);
                sbuf_free(&k);
                conn_send(&op->s->cache, -1, &b, on_ignored, NULL);
            }
        } else if (op->found) {
            entry = admit_entry(op);
            if (entry) {
                a->entry = entry;
                a->state = op->stale ? STORE_STALE : STORE_HIT;
                a->lease_taken = op->leased;
            } else if (op->near && !op->refetched) {
                /* Another response than the local copy: read it now (a second round trip). */
                op->refetched = true;
                op->s->stats.refetches++;
                op->pending = 2; /* the GET, and this sender */
                admit_value_command(op->s, op);
                admit_part_done(op);
                return;
            }
            /* Else the entry vanished since the lookup: a miss (with the lease when it was
             * stale and the lookup took it). */
            a->lease_taken = op->leased;
        } else if (a->cache_key) {
            near_drop(&op->s->near, a->cache_key, a->cache_keylen);
            if (op->filling)
                a->state = STORE_FILLING;
            a->lease_taken = op->leased;
        }
    } else {
        op->s->stats.failed++;
    }
    store_done_fn *done = op->done;
    void *arg = op->arg;
    int status = op->status;
    free(op->value);
    free(op);
    done(arg, status);
}

/* One reply awaited less; the last one completes the operation. */
static void
admit_part_done(struct admit_op *op)
{
    if (--op->pending == 0)
        admit_finish(op);
}

/* The stored response, read right after the lookup; used only if the lookup found it fresh. */
static void
on_admit_value(void *arg, redisReply *r)
{
    struct admit_op *op = arg;

    if (r && r->type == REDIS_REPLY_STRING && r->str) {
        /* hiredis 0.14 mallocs a string reply's buffer and frees it with free(): take it. */
        op->value = r->str;
        op->value_len = r->len;
        r->str = NULL;
        r->len = 0;
    }
    admit_part_done(op);
}

/* Reads one request's part of an admit.lua reply at *pos: its limits (when with_limits) and
 * its lookup (when with_cache). Returns 0 or -1. */
static int
admit_parse(struct admit_op *op, const redisReply *r, size_t *pos, uint64_t now, bool with_limits,
            bool with_cache)
{
    struct store_admit *a = op->a;
    size_t nl = with_limits ? op->nu : 0;
    bool look = with_cache && a->cache_key;
    size_t nt = look ? a->ntags : 0;
    size_t p = *pos;
    uint64_t allowed, v[4];

    if (reply_u64(r->element[p++], &allowed) != 0)
        return -1;
    for (size_t i = 0; i < nl; i++) {
        for (int k = 0; k < 4; k++)
            if (reply_u64(r->element[p++], &v[k]) != 0)
                return -1;
        op->ures[i] = (struct limiter_result){.allowed = v[0] != 0,
                                              .limit = op->ids[i].limit,
                                              .remaining = v[1],
                                              .reset_ms = v[2],
                                              .retry_after_ms = v[3]};
    }
    if (look) {
        for (size_t i = 0; i < nt; i++)
            if (reply_u64(r->element[p++], &a->tag_gens[i]) != 0)
                return -1;
        const redisReply *e = r->element[p++];
        if (e->type == REDIS_REPLY_STRING) {
            if (e->len != TOKEN_LEN && e->len != TOKEN_LEN + 1)
                return -1;
            memcpy(op->token, e->str, TOKEN_LEN);
            op->found = true;
            op->stale = e->len > TOKEN_LEN;
            op->leased = op->stale && e->str[TOKEN_LEN] == 1;
        } else if (e->type == REDIS_REPLY_INTEGER) {
            op->filling = true;
        } else if (e->type == REDIS_REPLY_NIL) {
            op->leased = op->lease && allowed; /* a miss with the lease asked took it */
        } else {
            return -1;
        }
    }
    if (nl > 0) {
        op->allowed = allowed != 0;
        op->now_ms = now;
    } else if (op->now_ms == 0) {
        op->now_ms = now;
    }
    *pos = p;
    return 0;
}

static int
reply_status(const redisReply *r)
{
    return r ? -1 : STORE_UNAVAILABLE;
}

/*
 * A batch: admits of one turn of the worker's loop whose keys share one hash tag, decided
 * by one EVALSHA (admit.lua runs them one after the other). An admit whose keys are under
 * several tags, and every admit when limits live in their own Redis, is a batch of one.
 */

struct batch {
    struct batch *next;  /* the turn's batches, in order */
    struct batch *chain; /* the open batches of one hash chain */
    struct rconn *conn;
    bool with_limits, with_cache;
    size_t n;
    size_t taglen; /* 0: not joinable */
    char tag[MAX_HASH_TAG + 1];
    struct admit_op *ops[MAX_BATCH];
};

static void
on_batch(void *arg, redisReply *r)
{
    struct batch *bt = arg;
    size_t pos = 1, want = 1;
    uint64_t now = 0;

    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        bool look = bt->with_cache && op->a->cache_key;
        want += 1 + 4 * (bt->with_limits ? op->nu : 0) + (look ? op->a->ntags + 1 : 0);
    }
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == want &&
              reply_u64(r->element[0], &now) == 0;
    for (size_t i = 0; i < bt->n; i++) {
        struct admit_op *op = bt->ops[i];
        if (ok && admit_parse(op, r, &pos, now, bt->with_limits, bt->with_cache) != 0)
            ok = false;
        if (!ok && op->status != STORE_UNAVAILABLE)
            op->status = reply_status(r);
        admit_part_done(op);
    }
    free(bt);
}

/* The keys of one command, each once: their bytes in `bytes`, found again by hash. */
struct keyset {
    struct sbuf bytes;
    size_t *off, *len; /* per key */
    uint32_t *slot;    /* open addressing: key index + 1, 0 empty */
    size_t n, cap, mask;
};

static void
keyset_init(struct keyset *ks, size_t max)
{
    size_t slots = 16;

    while (slots < 2 * max)
        slots *= 2;
    *ks = (struct keyset){.cap = max, .mask = slots - 1};
    ks->off = xmalloc(max * sizeof(*ks->off));
    ks->len = xmalloc(max * sizeof(*ks->len));
    ks->slot = xcalloc(slots, sizeof(*ks->slot));
}

static void
keyset_free(struct keyset *ks)
{
    sbuf_free(&ks->bytes);
    free(ks->off);
    free(ks->len);
    free(ks->slot);
}

/* Adds the key of `kind` (see resp_key); returns its index in KEYS (from 1). */
static size_t
keyset_add(struct keyset *ks, char kind, const struct limiter_rule *id, const char *raw, size_t len)
{
    size_t off = ks->bytes.len;

    if (kind == 'l')
        limit_key(&ks->bytes, id, raw, len);
    else
        cache_key(&ks->bytes, kind, raw, len);
    size_t klen = ks->bytes.len - off;
    const char *k = ks->bytes.p + off;
    for (uint64_t h = fnv1a(k, klen);; h++) {
        uint32_t *sl = &ks->slot[h & ks->mask];
        if (*sl == 0) {
            ks->off[ks->n] = off;
            ks->len[ks->n] = klen;
            *sl = (uint32_t)++ks->n;
            return ks->n;
        }
        size_t i = *sl - 1;
        if (ks->len[i] == klen && memcmp(ks->bytes.p + ks->off[i], k, klen) == 0) {
            ks->bytes.len = off; /* known: forget the copy */
            return i + 1;
        }
    }
}

/*
 * Appends the EVALSHA of admit.lua deciding the batch: every request's distinct limits
 * (when with_limits) and its lookup (when with_cache), in the order of bt->ops.
 */
static void
batch_command(struct store_redis *s, const struct batch *bt, struct sbuf *b)
{
    size_t nidx = 0, nargs = 3;
    bool wl = bt->with_limits, wc = bt->with_cache;

    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        bool look = wc && op->a->cache_key;
        size_t nl = wl ? op->nu : 0, nt = look ? op->a->ntags : 0;
        nidx += nl + nt + 2;
        nargs += 5 + 6 * nl + nt;
    }
    /* Keys read first (limits, entries, tags), then the fill leases. */
    struct keyset ks;
    size_t *idx = xmalloc(nidx * sizeof(*idx)), at = 0;
    size_t *lease = xcalloc(bt->n, sizeof(*lease));
    keyset_init(&ks, nidx);
    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        const struct store_admit *a = op->a;
        for (size_t j = 0, u = 0; wl && j < a->nlimits; j++) {
            if (op->map[j] != u)
                continue;
            idx[at++] = keyset_add(&ks, 'l', &op->ids[u], a->limits[j].key, a->limits[j].keylen);
            u++;
        }
        if (wc && a->cache_key) {
            idx[at++] = keyset_add(&ks, 'c', NULL, a->cache_key, a->cache_keylen);
            for (size_t j = 0; j < a->ntags; j++)
                idx[at++] = keyset_add(&ks, 't', NULL, a->tags[j], a->taglens[j]);
        }
    }
    size_t nread = ks.n;
    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        if (wc && op->a->cache_key && op->lease)
            lease[i] = keyset_add(&ks, 'f', NULL, op->a->cache_key, op->a->cache_keylen);
    }

    buf_reserve(b, 128 + ks.bytes.len + 16 * ks.n + 8 * nargs);
    resp_evalsha(b, SCRIPT_ADMIT, ks.n, 1);
    for (size_t k = 0; k < ks.n; k++)
        resp_arg(b, ks.bytes.p + ks.off[k], ks.len[k]);
    /* The numbers, as doubles (exact: every one is below 2^53). */
    resp_num(b, '$', 8 * nargs);
    wr_f64(b, (double)bt->n);
    wr_f64(b, (double)nread);
    wr_f64(b, (double)s->tag_lease_ms);
    size_t r = 0;
    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        bool look = wc && op->a->cache_key;
        size_t nl = wl ? op->nu : 0, nt = look ? op->a->ntags : 0;
        const size_t *mine = idx + r;
        r += nl + (look ? 1 + nt : 0);
        wr_f64(b, (double)nl);
        wr_f64(b, look ? (double)mine[nl] : 0);
        wr_f64(b, (double)lease[i]);
        wr_f64(b, lease[i] ? (double)op->a->lease_ms : 0);
        wr_f64(b, (double)nt);
        for (size_t u = 0; u < nl; u++) {
            wr_f64(b, (double)mine[u]);
            wr_f64(b, (double)op->ids[u].algo);
            wr_f64(b, (double)op->ids[u].limit);
            wr_f64(b, (double)op->ids[u].window_ms);
            wr_f64(b, (double)op->ids[u].burst);
            wr_f64(b, (double)op->costs[u]);
        }
        for (size_t j = 0; j < nt; j++)
            wr_f64(b, (double)mine[nl + 1 + j]);
    }
    sbuf_add(b, "\r\n", 2);
    keyset_free(&ks);
    free(idx);
    free(lease);
}

/* Sends the GET of the stored response (the caller counted the reply in op->pending). */
static void
admit_value_command(struct store_redis *s, struct admit_op *op)
{
    struct sbuf b = {0};

    buf_reserve(&b, op->a->cache_keylen + 96);
    resp_argc(&b, 2);
    resp_str(&b, "GET");
    resp_key(&b, &s->scratch, 'r', NULL, op->a->cache_key, op->a->cache_keylen);
    conn_send(&s->cache, -1, &b, on_admit_value, op);
}

/* Sends the turn's batches, each as one command, and behind each the GETs of the responses
 * its requests have no local copy of: all in the same write. */
static void
batch_flush(struct store_redis *s)
{
    struct batch *bt = s->turn;

    s->turn = s->turn_tail = NULL;
    memset(s->open, 0, sizeof(s->open));
    while (bt) {
        struct batch *next = bt->next;
        struct admit_op *gets[MAX_BATCH];
        size_t ng = 0;
        for (size_t i = 0; i < bt->n; i++) {
            struct admit_op *op = bt->ops[i];
            if (bt->with_cache && op->a->cache_key && !op->near) {
                op->pending++; /* keeps op alive if the batch fails at once */
                gets[ng++] = op;
            }
        }
        struct sbuf b = {0};
        batch_command(s, bt, &b);
        conn_send(bt->conn, SCRIPT_ADMIT, &b, on_batch, bt); /* bt is the callback's now */
        for (size_t j = 0; j < ng; j++)
            admit_value_command(s, gets[j]);
        bt = next;
    }
}

static void
on_turn(void *arg)
{
    batch_flush(arg);
}

/* The hash tag all of the request's keys share, in tag; 0 when they do not share one. */
static size_t
admit_tag(const struct store_admit *a, char *tag)
{
    char t[MAX_HASH_TAG + 1];
    size_t n = 0, m;
    bool any = false;

#define SAME_TAG(raw, len)                                                                         \
    do {                                                                                           \
        m = hash_tag((raw), (len), any ? t : tag);                                                 \
        if (any && (m != n || memcmp(t, tag, n) != 0))                                             \
            return 0;                                                                              \
        n = m;                                                                                     \
        any = true;                                                                                \
    } while (0)
    for (size_t i = 0; i < a->nlimits; i++)
        SAME_TAG(a->limits[i].key, a->limits[i].keylen);
    if (a->cache_key) {
        SAME_TAG(a->cache_key, a->cache_keylen);
        for (size_t i = 0; i < a->ntags; i++)
            SAME_TAG(a->tags[i], a->taglens[i]);
    }
#undef SAME_TAG
    return n;
}

/* Puts op in a batch of this turn (joining an open one under the same tag when taglen > 0),
 * to be sent on c. */
static void
batch_add(struct store_redis *s, struct admit_op *op, struct rconn *c, bool with_limits,
          bool with_cache, const char *tag, size_t taglen)
{
    struct batch *bt = NULL, **chain = NULL;

    if (taglen) {
        chain = &s->open[fnv1a(tag, taglen) & (BATCH_SLOTS - 1)];
        for (bt = *chain; bt; bt = bt->chain)
            if (bt->taglen == taglen && memcmp(bt->tag, tag, taglen) == 0)
                break;
    }
    if (!bt) {
        bt = xmalloc(sizeof(*bt));
        bt->next = bt->chain = NULL;
        bt->conn = c;
        bt->with_limits = with_limits;
        bt->with_cache = with_cache;
        bt->n = 0;
        bt->taglen = taglen;
        if (taglen)
            memcpy(bt->tag, tag, taglen);
        if (s->turn_tail)
            s->turn_tail->next = bt;
        else
            s->turn = bt;
        s->turn_tail = bt;
        if (chain) {
            bt->chain = *chain;
            *chain = bt;
        }
        turn_activate(&s->turn_ev);
    }
    bt->ops[bt->n++] = op;
    op->pending++;
    if (bt->n == MAX_BATCH && chain) {
        /* Full: the next request under this tag opens another. */
        struct batch **pp = chain;
        while (*pp != bt)
            pp = &(*pp)->chain;
        *pp = bt->chain;
    }
}

static void
redis_admit_and_lookup(struct store *st, struct store_admit *a, store_done_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    size_t n = a->nlimits;
    /* One allocation: the op, then map, ids, costs and results of up to n distinct limits. */
    struct admit_op *op =
        xmalloc(sizeof(*op) + n * (sizeof(size_t) + sizeof(struct limiter_rule) + sizeof(uint64_t) +
                                   sizeof(struct limiter_result)));

    *op = (struct admit_op){.s = s,
                            .a = a,
                            .done = done,
                            .arg = arg,
                            .pending = 1,
                            .allowed = true,
                            .lease = a->cache_key && a->lease_ms > 0};
    op->map = (size_t *)(op + 1);
    op->ids = (struct limiter_rule *)(op->map + n);
    op->costs = (uint64_t *)(op->ids + n);
    op->ures = (struct limiter_result *)(op->costs + n);
    a->entry = NULL;
    a->state = STORE_MISS;
    a->bypassed = a->refused_closed = false;

    /* The same key under the same rule named twice is one counter spending both costs. */
    for (size_t i = 0; i < n; i++) {
        const struct store_limit *l = &a->limits[i];
        struct limiter_rule id = rule_identity(l->rule);
        size_t u;
        for (u = 0; u < op->nu; u++) {
            size_t j = 0;
            while (op->map[j] != u)
                j++;
            if (memcmp(&op->ids[u], &id, sizeof(id)) == 0 && a->limits[j].keylen == l->keylen &&
                memcmp(a->limits[j].key, l->key, l->keylen) == 0)
                break;
        }
        if (u == op->nu) {
            if (!rule_exact(&id)) {
                static bool warned;
                if (!warned)
                    fprintf(stderr,
                            "sluice: redis store: a limit of %llu per %llu ms is beyond what "
                            "it computes exactly (limit x window < 2^53); requests refused\n",
                            (unsigned long long)id.limit, (unsigned long long)id.window_ms);
                warned = true;
                op->status = -1;
                admit_finish(op);
                return;
            }
            op->ids[u] = id;
            op->costs[u] = 0;
            op->nu++;
        }
        op->map[i] = u;
        op->costs[u] += l->cost;
        if (op->costs[u] > UINT32_MAX)
            op->costs[u] = UINT32_MAX;
    }

    if (op->nu == 0 && !a->cache_key) {
        op->now_ms = store_now_ms();
        admit_finish(op);
        return;
    }
    if (s->closing) {
        op->status = STORE_UNAVAILABLE;
        admit_finish(op);
        return;
    }
    /* The response is read right behind the lookup, unless a local copy may be it. */
    if (a->cache_key)
        op->near = near_find(&s->near, a->cache_key, a->cache_keylen) != NULL;
    if (!s->split) {
        char tag[MAX_HASH_TAG + 1];
        size_t taglen = admit_tag(a, tag);
        batch_add(s, op, &s->cache, true, true, tag, taglen);
    } else if (op->nu == 0 || !a->cache_key) {
        batch_add(s, op, op->nu > 0 ? &s->limits : &s->cache, true, true, NULL, 0);
    } else {
        /* Limits and cache in two Redis servers: both asked at once; the lookup of a request
         * that turns out denied is dropped. */
        batch_add(s, op, &s->limits, true, false, NULL, 0);
        batch_add(s, op, &s->cache, false, true, NULL, 0);
    }
    admit_part_done(op); /* the sender's own count */
}

/* ---- fill and invalidate ------------------------------------------------------------------ */

struct fill_op {
    struct store_redis *s;
    struct store_entry *entry; /* a reference, to stamp its times */
    uint64_t ttl_ms;
    store_done_fn *done;
    void *arg;
    unsigned char token[TOKEN_LEN];
    size_t keylen;
    char key[]; /* the cache key, for the local copy */
};

static void
on_fill(void *arg, redisReply *r)
{
    struct fill_op *op = arg;
    uint64_t stored = 0, now = 0;
    int status = reply_status(r);

    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        reply_u64(r->element[0], &stored) == 0 && reply_u64(r->element[1], &now) == 0) {
        status = stored ? 0 : -1;
        if (stored) {
            op->entry->stored_ms = now;
            op->entry->expires_ms = now + op->ttl_ms;
        }
    } else {
        op->s->stats.failed++;
    }
    if (status == 0 && op->ttl_ms > 0)
        near_put(&op->s->near, op->key, op->keylen, op->token, op->entry);
    else
        near_drop(&op->s->near, op->key, op->keylen);
    store_entry_release(op->entry);
    store_done_fn *done = op->done;
    void *darg = op->arg;
    free(op);
    done(darg, status);
}

/* A fresh fill token: 64 bits from a per-store random stream (splitmix64). */
static void
fill_token(struct store_redis *s, unsigned char out[TOKEN_LEN])
{
    uint64_t z = (s->token_state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    for (int i = 0; i < TOKEN_LEN; i++, z >>= 8)
        out[i] = (unsigned char)z;
}

static void
redis_fill(struct store *st, const char *key, size_t keylen, struct store_entry *entry,
           uint64_t ttl_ms, const char *const *tags, const size_t *taglens,
           const uint64_t *tag_gens, size_t ntags, store_done_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct fill_op *op = xmalloc(sizeof(*op) + keylen);
    struct sbuf b = {0}, k = {0}, meta = {0};
    unsigned char *token = op->token;
    size_t headlen = entry_head_len(entry);
    bool secondary = store_key_primary_len(key, keylen) < keylen;
    uint64_t keep = ttl_ms + entry->stale_ms < ttl_ms ? UINT64_MAX : ttl_ms + entry->stale_ms;

    if (keep > EXACT_LIMIT)
        keep = EXACT_LIMIT; /* fill.lua computes with doubles */
    store_entry_ref(entry);
    *op = (struct fill_op){
        .s = s, .entry = entry, .ttl_ms = ttl_ms, .done = done, .arg = arg, .keylen = keylen};
    memcpy(op->key, key, keylen);
    fill_token(s, token);

    /* The entry's value: the token, room for expires_ms (written by fill.lua), then each
     * tag's key and the generation recorded. */
    sbuf_add(&meta, token, TOKEN_LEN);
    sbuf_add(&meta, "\0\0\0\0\0\0\0\0", 8);
    for (size_t i = 0; i < ntags; i++) {
        k.len = 0;
        cache_key(&k, 't', tags[i], taglens[i]);
        wr_u32(&meta, (uint32_t)k.len);
        sbuf_add(&meta, k.p, k.len);
        k.len = 0;
        put_u64(&k, tag_gens[i]);
        wr_u32(&meta, (uint32_t)k.len);
        sbuf_add(&meta, k.p, k.len);
    }

    buf_reserve(&b, 256 + 5 * keylen + meta.len + headlen + 100 * ntags);
    resp_evalsha(&b, SCRIPT_FILL, 4 + ntags, 6 + ntags);
    resp_key(&b, &k, 'c', NULL, key, keylen);
    resp_key(&b, &k, 'r', NULL, key, keylen);
    resp_key(&b, &k, 'f', NULL, key, keylen);
    resp_key(&b, &k, 'v', NULL, key, store_key_primary_len(key, keylen));
    for (size_t i = 0; i < ntags; i++)
        resp_key(&b, &k, 't', NULL, tags[i], taglens[i]);
    resp_u64(&b, ttl_ms);
    resp_arg(&b, meta.p, meta.len);
    /* The response's head, written straight into the command. */
    resp_num(&b, '$', headlen);
    entry_head(&b, entry);
    sbuf_add(&b, "\r\n", 2);
    resp_arg(&b, token, TOKEN_LEN);
    resp_u64(&b, keep);
    resp_arg(&b, key, secondary ? keylen : 0);
    for (size_t i = 0; i < ntags; i++)
        resp_u64(&b, tag_gens[i]);
    sbuf_free(&k);
    sbuf_free(&meta);
    conn_send(&s->cache, SCRIPT_FILL, &b, on_fill, op);
}

struct done_op {
    struct store_redis *s;
    store_done_fn *done;
    void *arg;
};

static void
on_invalidate(void *arg, redisReply *r)
{
    struct done_op *op = arg;
    int status = r && r->type == REDIS_REPLY_INTEGER ? 0 : reply_status(r);
    store_done_fn *done = op->done;
    void *darg = op->arg;

    if (status != 0)
        op->s->stats.failed++;
    free(op);
    done(darg, status);
}

static void
redis_invalidate(struct store *st, const char *const *tags, const size_t *taglens, size_t ntags,
                 store_done_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct sbuf b = {0}, k = {0};

    if (ntags == 0) {
        done(arg, 0);
        return;
    }
    struct done_op *op = xmalloc(sizeof(*op));
    *op = (struct done_op){.s = s, .done = done, .arg = arg};
    resp_evalsha(&b, SCRIPT_INVALIDATE, ntags, 1);
    for (size_t i = 0; i < ntags; i++) {
        k.len = 0;
        cache_key(&k, 't', tags[i], taglens[i]);
        resp_arg(&b, k.p, k.len);
    }
    resp_u64(&b, s->tag_lease_ms);
    sbuf_free(&k);
    conn_send(&s->cache, SCRIPT_INVALIDATE, &b, on_invalidate, op);
}

/* ---- delete_keys and invalidate_pattern --------------------------------------------------- */

/*
 * An operation made of several commands, completed once when the last reply is in: a
 * count of what they removed, or the first failure. `pending` counts the replies awaited
 * and one for the code sending, so that a command failing at once cannot end it early.
 */
struct count_op {
    struct store_redis *s;
    store_count_fn *done;
    void *arg;
    int pending;
    int status;
    uint64_t count;
    /* pattern runs only */
    char *glob;        /* NUL-terminated */
    struct sbuf match; /* the SCAN pattern */
    char cursor[24];   /* the next SCAN's cursor */
    bool last;         /* the cursor came back 0: no more SCAN */
    void (*next)(struct count_op *op);
};

static struct count_op *
count_op_new(struct store_redis *s, store_count_fn *done, void *arg)
{
    struct count_op *op = xcalloc(1, sizeof(*op));

    op->s = s;
    op->done = done;
    op->arg = arg;
    op->pending = 1;
    return op;
}

static void
count_op_fail(struct count_op *op, redisReply *r)
{
    if (op->status == 0)
        op->status = reply_status(r);
}

/* One reply (or the sender) less; the last one either sends the next step or completes. */
static void
count_op_part_done(struct count_op *op)
{
    if (--op->pending > 0)
        return;
    if (op->status == 0 && op->next && !op->last) {
        op->pending = 1;
        op->next(op);
        return;
    }
    if (op->status != 0)
        op->s->stats.failed++;
    store_count_fn *done = op->done;
    void *arg = op->arg;
    int status = op->status;
    uint64_t count = status == 0 ? op->count : 0;
    free(op->glob);
    sbuf_free(&op->match);
    free(op);
    done(arg, status, count);
}

/* A reply counting removed entries (an integer). */
static void
on_count_reply(void *arg, redisReply *r)
{
    struct count_op *op = arg;
    uint64_t n;

    if (r && r->type == REDIS_REPLY_INTEGER && reply_u64(r, &n) == 0)
        op->count += n;
    else
        count_op_fail(op, r);
    count_op_part_done(op);
}

/* A reply whose value does not matter, only that it is not an error. */
static void
on_plain_reply(void *arg, redisReply *r)
{
    struct count_op *op = arg;

    if (!r || r->type == REDIS_REPLY_ERROR)
        count_op_fail(op, r);
    count_op_part_done(op);
}

/* Sends delete.lua for one key (the caller counted it in op->pending). */
static void
delete_command(struct count_op *op, const char *key, size_t keylen)
{
    struct store_redis *s = op->s;
    struct sbuf b = {0};

    buf_reserve(&b, 3 * keylen + 200);
    resp_evalsha(&b, SCRIPT_DELETE, 3, 0);
    resp_key(&b, &s->scratch, 'c', NULL, key, keylen);
    resp_key(&b, &s->scratch, 'r', NULL, key, keylen);
    resp_key(&b, &s->scratch, 'v', NULL, key, keylen);
    conn_send(&s->cache, SCRIPT_DELETE, &b, on_count_reply, op);
}

/* Drops the local copies of key and, for a primary, of its secondaries. */
static void
near_drop_entry(struct near *n, const char *key, size_t keylen)
{
    near_drop(n, key, keylen);
    if (store_key_primary_len(key, keylen) == keylen)
        near_drop_secondaries(n, key, keylen);
}

static void
redis_delete_keys(struct store *st, const char *const *keys, const size_t *lens, size_t n,
                  store_count_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct count_op *op = count_op_new(s, done, arg);

    for (size_t i = 0; i < n; i++) {
        near_drop_entry(&s->near, keys[i], lens[i]);
        if (op->status != 0)
            continue; /* the connection refused one: send no more */
        op->pending++;
        delete_command(op, keys[i], lens[i]);
    }
    count_op_part_done(op);
}

static bool
is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/*
 * Appends the SCAN pattern of a glob: fnmatch's syntax written as Redis's, widened where
 * it cannot be said exactly (an untranslated bracket becomes '?'), so that it matches at
 * least the keys fnmatch matches (the process runs in the C locale: a character is a
 * byte); the keys it returns are filtered with store_key_matches(). A bracket is kept when
 * it holds only letters, digits and ranges between them; literal bytes are escaped.
 */
static void
glob_to_redis(struct sbuf *b, const char *g, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)g[i];
        if (c == '*' || c == '?') {
            sbuf_add(b, &g[i], 1);
            continue;
        }
        if (c == '[') {
            /* fnmatch: [, optional ! or ^, a ']' first is literal, up to the next ']'. */
            size_t j = i + 1, start;
            bool neg = j < len && (g[j] == '!' || g[j] == '^'), simple = true;
            if (neg)
                j++;
            start = j;
            if (j < len && g[j] == ']')
                j++;
            while (j < len && g[j] != ']') {
                if (g[j] == '[' && j + 1 < len &&
                    (g[j + 1] == ':' || g[j + 1] == '=' || g[j + 1] == '.')) {
                    /* a class, equivalence class or collating symbol: skip over it */
                    const char *close = NULL;
                    for (size_t k = j + 2; k + 1 < len && !close; k++)
                        if (g[k] == g[j + 1] && g[k + 1] == ']')
                            close = &g[k];
                    if (!close) {
                        sbuf_add(b, "*", 1); /* unclear to the end: anything wider will do */
                        return;
                    }
                    simple = false;
                    j = (size_t)(close - g) + 2;
                    continue;
                }
                if (g[j] == '\\' && j + 1 < len)
                    j++;
                j++;
            }
            if (j >= len) {
                /* no closing ']': fnmatch takes this '[' literally */
                sbuf_add(b, "\\[", 2);
                continue;
            }
            /* g[start, j) is the set; check it is letters, digits and ranges "x-y" of them
             * (x <= y; no '-' next to a range) */
            for (size_t k = start; k < j && simple; k++) {
                if (g[k] == '-')
                    simple = k > start && k + 1 < j && g[k - 1] <= g[k + 1] &&
                             (k < start + 2 || g[k - 2] != '-') && (k + 2 >= j || g[k + 2] != '-');
                else
                    simple = is_alnum((unsigned char)g[k]);
            }
            if (simple && j > start) {
                sbuf_add(b, neg ? "[^" : "[", neg ? 2 : 1);
                sbuf_add(b, g + start, j - start);
                sbuf_add(b, "]", 1);
            } else {
                sbuf_add(b, "?", 1);
            }
            i = j;
            continue;
        }
        if (c == '\\') {
            if (i + 1 == len) {
                sbuf_add(b, "*", 1); /* fnmatch matches nothing: anything wider will do */
                continue;
            }
            c = (unsigned char)g[++i];
        }
        if (!is_alnum(c))
            sbuf_add(b, "\\", 1);
        sbuf_add(b, &c, 1);
    }
}

/* The cache key of an entry key ("sl:{TAG}:c:KEY"), or NULL when k is not one. */
static const char *
entry_key_raw(const char *k, size_t klen, size_t *rawlen)
{
    const char *close = klen > 4 && memcmp(k, "sl:{", 4) == 0 ? memchr(k, '}', klen) : NULL;

    if (!close || (size_t)(k + klen - close) < 4 || memcmp(close, "}:c:", 4) != 0)
        return NULL;
    *rawlen = klen - (size_t)(close + 4 - k);
    return close + 4;
}

static void pattern_scan(struct count_op *op);

/* A SCAN reply: unlinks the entries whose keys match, with their responses and variants. */
static void
on_scan(void *arg, redisReply *r)
{
    struct count_op *op = arg;
    struct store_redis *s = op->s;

    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= sizeof(op->cursor) ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        count_op_fail(op, r);
        count_op_part_done(op);
        return;
    }
    memcpy(op->cursor, r->element[0]->str, r->element[0]->len);
    op->cursor[r->element[0]->len] = '\0';
    op->last = strcmp(op->cursor, "0") == 0;

    const redisReply *keys = r->element[1];
    struct sbuf entries = {0}, rest = {0}, k = {0};
    size_t nentries = 0, nrest = 0;
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *kr = keys->element[i];
        size_t rawlen;
        const char *raw =
            kr->type == REDIS_REPLY_STRING ? entry_key_raw(kr->str, kr->len, &rawlen) : NULL;
        if (!raw || !store_key_matches(op->glob, raw, rawlen))
            continue;
        near_drop(&s->near, raw, rawlen);
        resp_arg(&entries, kr->str, kr->len);
        nentries++;
        resp_key(&rest, &k, 'r', NULL, raw, rawlen);
        nrest++;
        if (store_key_primary_len(raw, rawlen) == rawlen) {
            resp_key(&rest, &k, 'v', NULL, raw, rawlen);
            nrest++;
        }
    }
    sbuf_free(&k);
    if (nentries) {
        /* The entries first (their count is what was removed), then the rest. */
        struct sbuf b = {0};
        resp_argc(&b, 1 + nentries);
        resp_str(&b, "UNLINK");
        sbuf_add(&b, entries.p, entries.len);
        op->pending++;
        conn_send(&s->cache, -1, &b, on_count_reply, op);
        resp_argc(&b, 1 + nrest);
        resp_str(&b, "UNLINK");
        sbuf_add(&b, rest.p, rest.len);
        op->pending++;
        conn_send(&s->cache, -1, &b, on_plain_reply, op);
    }
    sbuf_free(&entries);
    sbuf_free(&rest);
    count_op_part_done(op); /* this reply: the next SCAN goes once the UNLINKs are answered */
}

/* Sends the next SCAN of a pattern run (the caller counted it in op->pending). */
static void
pattern_scan(struct count_op *op)
{
    struct sbuf b = {0};

    resp_argc(&b, 6);
    resp_str(&b, "SCAN");
    resp_str(&b, op->cursor);
    resp_str(&b, "MATCH");
    resp_arg(&b, op->match.p, op->match.len);
    resp_str(&b, "COUNT");
    resp_u64(&b, SCAN_COUNT);
    conn_send(&op->s->cache, -1, &b, on_scan, op);
}

static void
redis_invalidate_pattern(struct store *st, const char *glob, size_t globlen, store_count_fn *done,
                         void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct count_op *op = count_op_new(s, done, arg);
    size_t litlen;

    op->glob = xmalloc(globlen + 1);
    if (memchr(glob, '\0', globlen)) {
        op->status = -1;
    } else if (store_glob_literal(glob, globlen, op->glob, &litlen)) {
        near_drop_entry(&s->near, op->glob, litlen);
        op->pending++;
        delete_command(op, op->glob, litlen);
    } else {
        memcpy(op->glob, glob, globlen);
        op->glob[globlen] = '\0';
        /* Entry keys whose cache key matches the glob, or starts with what does (a secondary
         * whose primary matches): the hash tag is any. */
        sbuf_adds(&op->match, "sl:{*}:c:");
        glob_to_redis(&op->match, glob, globlen);
        if (op->match.p[op->match.len - 1] != '*' ||
            (op->match.len >= 2 && op->match.p[op->match.len - 2] == '\\'))
            sbuf_add(&op->match, "*", 1);
        memcpy(op->cursor, "0", 2);
        op->next = pattern_scan;
    }
    count_op_part_done(op);
}

/* ---- the store ---------------------------------------------------------------------------- */

static void
redis_destroy(struct store *st)
{
    struct store_redis *s = (struct store_redis *)st;

    s->closing = true;
    batch_flush(s); /* the admits of this turn fail now */
    turn_free(&s->turn_ev);
    conn_fini(&s->cache);
    conn_fini(&s->limits);
    sbuf_free(&s->scratch);
    near_free(&s->near);
    free(s);
}

static void
redis_health(struct store *st, struct store_health *h)
{
    struct store_redis *s = (struct store_redis *)st;

    h->degraded = !s->cache.ac || (s->split && !s->limits.ac);
    h->state = h->degraded ? "degraded" : "ok";
    h->failures = s->stats.failed;
}

static const struct store_ops redis_ops = {
    .name = "redis",
    .admit_and_lookup = redis_admit_and_lookup,
    .fill = redis_fill,
    .invalidate = redis_invalidate,
    .destroy = redis_destroy,
    .health = redis_health,
    .delete_keys = redis_delete_keys,
    .invalidate_pattern = redis_invalidate_pattern,
};

struct store *
store_redis_new(struct event_base *base, const struct store_redis_config *cfg, char *err,
                size_t errlen)
{
    struct endpoint cache_ep, limits_ep;
    bool split = cfg->limits_url && cfg->limits_url[0] && strcmp(cfg->limits_url, cfg->url) != 0;

    pthread_once(&scripts_once, scripts_init);
    if (parse_url(cfg->url, &cache_ep, err, errlen) != 0)
        return NULL;
    if (split && parse_url(cfg->limits_url, &limits_ep, err, errlen) != 0)
        return NULL;

    struct store_redis *s = xcalloc(1, sizeof(*s));
    s->base.ops = &redis_ops;
    s->evbase = base;
    s->split = split;
    s->deadline_us = (cfg->deadline_ms ? cfg->deadline_ms : DEFAULT_DEADLINE_MS) * 1000;
    s->tag_lease_ms = cfg->tag_lease_ms ? cfg->tag_lease_ms : DEFAULT_TAG_LEASE_MS;
    s->near.max_bytes = cfg->near_bytes ? cfg->near_bytes : DEFAULT_NEAR_BYTES;
    if (getrandom(&s->token_state, sizeof(s->token_state), GRND_NONBLOCK) != sizeof(s->token_state))
        s->token_state = mono_us() ^ (uint64_t)(uintptr_t)s;
    turn_init(&s->turn_ev, base, on_turn, s);
    conn_init(s, &s->cache, split ? "cache" : "store", &cache_ep);
    conn_connect(&s->cache);
    if (split) {
        conn_init(s, &s->limits, "limits", &limits_ep);
        conn_connect(&s->limits);
    }
    return &s->base;
}

void
store_redis_stats(struct store *st, struct store_redis_stats *out)
{
    *out = ((struct store_redis *)st)->stats;
}
