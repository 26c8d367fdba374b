/* store_redis.c - the Redis store: limits, cache entries and tags in Redis, through hiredis async.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
 *   admit_and_lookup  admit.lua: every limit, the entry, the tags' generations
 *   fill              fill.lua: refused when a tag moved since the lookup
 *   invalidate        invalidate.lua: bumps each tag's generation
 *
 * Commands of concurrent requests are appended to hiredis's output buffer
 * and leave together when the worker's loop next finds the socket writable,
 * so they are pipelined; replies come back in order.
 *
 * Keys. "sl:{TAG}:l:ALGO:LIMIT:WINDOW:BURST:KEY" (a limit), "sl:{TAG}:e:KEY"
 * (an entry), "sl:{TAG}:t:TAG" (a tag), KEY being the bytes the gateway gave.
 * TAG, the Redis Cluster hash tag, is the part of KEY after its last ':'
 * (template escaping keeps ':' out of values, so that is the last variable's
 * value: the user in "tier:u:{user}", "crm:contacts:{user}", "crm:{user}"),
 * or a hash of it when it is empty, longer than 40 bytes or holds a brace.
 * All keys of a caller whose templates end in the caller's id share one slot.
 *
 * Deadlines. hiredis 0.14 has no timeouts: each connection keeps its pending
 * commands in send order with their deadlines and one timer for the earliest.
 * When a command passes its deadline the connection is dropped
 * (redisAsyncFree), which makes hiredis call every pending callback once
 * with no reply: each completes its operation with STORE_UNAVAILABLE, and
 * none is ever sent again (its outcome is unknown). The connection is made
 * again after a backoff (10 ms doubling to 1 s); meanwhile operations fail at
 * once. The only command sent twice is one answered NOSCRIPT, which means
 * that the script did not run: SCRIPT LOAD is sent before it again.
 */

#define DEFAULT_DEADLINE_MS 50
#define DEFAULT_TAG_LEASE_MS 600000
#define BACKOFF_MIN_US 10000
#define BACKOFF_MAX_US 1000000
#define MAX_HASH_TAG 40
#define EXACT_LIMIT (1ull << 53) /* the scripts' doubles hold integers exactly below this */

enum { SCRIPT_ADMIT, SCRIPT_FILL, SCRIPT_INVALIDATE, NSCRIPTS };

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

struct evio {
    redisAsyncContext *ac;
    struct event *rev, *wev;
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
    event_add(((struct evio *)p)->wev, NULL);
}

static void
ev_del_write(void *p)
{
    event_del(((struct evio *)p)->wev);
}

static void
ev_cleanup(void *p)
{
    struct evio *e = p;

    event_free(e->rev);
    event_free(e->wev);
    free(e);
}

/* Lets base drive ac's socket; writes wait for the loop, so commands queued meanwhile batch. */
static void
ev_attach(redisAsyncContext *ac, struct event_base *base)
{
    struct evio *e = xmalloc(sizeof(*e));

    e->ac = ac;
    e->rev = event_new(base, ac->c.fd, EV_READ | EV_PERSIST, ev_on_read, e);
    e->wev = event_new(base, ac->c.fd, EV_WRITE | EV_PERSIST, ev_on_write, e);
    if (!e->rev || !e->wev) {
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
    ev_add_write(e); /* completes the non-blocking connect */
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

struct store_redis {
    struct store base;
    struct event_base *evbase;
    struct rconn cache, limits;
    bool split; /* limits live in their own Redis */
    bool closing;
    uint64_t deadline_us;
    uint64_t tag_lease_ms;
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

/* Appends "sl:{TAG}:KIND:" to b, TAG chosen from raw as the header comment says. */
static void
key_prefix(struct sbuf *b, char kind, const char *raw, size_t len)
{
    const char *seg = raw;
    size_t n = len;
    const char *colon = len ? memrchr(raw, ':', len) : NULL;

    if (colon) {
        seg = colon + 1;
        n = len - (size_t)(seg - raw);
    }
    sbuf_add(b, "sl:{", 4);
    if (n >= 1 && n <= MAX_HASH_TAG && !memchr(seg, '{', n) && !memchr(seg, '}', n)) {
        sbuf_add(b, seg, n);
    } else {
        char hex[18];
        snprintf(hex, sizeof(hex), "#%016llx", (unsigned long long)fnv1a(seg, n));
        sbuf_add(b, hex, 17);
    }
    char tail[3] = {'}', ':', kind};
    sbuf_add(b, tail, 3);
    sbuf_add(b, ":", 1);
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

static void
limit_key(struct sbuf *b, const struct limiter_rule *id, const char *raw, size_t len)
{
    key_prefix(b, 'l', raw, len);
    sbuf_printf(b, "%d:%llu:%llu:%llu:", (int)id->algo, (unsigned long long)id->limit,
                (unsigned long long)id->window_ms, (unsigned long long)id->burst);
    sbuf_add(b, raw, len);
}

static void
entry_key(struct sbuf *b, const char *raw, size_t len)
{
    key_prefix(b, 'e', raw, len);
    sbuf_add(b, raw, len);
}

static void
tag_key(struct sbuf *b, const char *raw, size_t len)
{
    key_prefix(b, 't', raw, len);
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
        char buf[24], *end;
        memcpy(buf, r->str, r->len);
        buf[r->len] = '\0';
        errno = 0;
        unsigned long long v = strtoull(buf, &end, 10);
        if (errno || *end || buf[0] == '-')
            return -1;
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

/*
 * The stored value: [u32 n][n bytes of tags][u16 status][f64 stored_ms][f64 expires_ms]
 * [u32 content type length][content type][body]. Returns a new entry, or NULL when malformed.
 */
static struct store_entry *
entry_decode(const char *v, size_t len)
{
    const unsigned char *p = (const unsigned char *)v;
    size_t pos;

    if (len < 4)
        return NULL;
    pos = 4 + (size_t)rd_u32(p);
    if (pos > len || len - pos < 2 + 16 + 4)
        return NULL;
    uint16_t status = (uint16_t)(p[pos] | p[pos + 1] << 8);
    uint64_t stored = rd_f64_ms(p + pos + 2), expires = rd_f64_ms(p + pos + 10);
    size_t ctlen = rd_u32(p + pos + 18);
    pos += 22;
    if (ctlen > len - pos)
        return NULL;
    char *ct = xstrndup(v + pos, ctlen);
    pos += ctlen;
    size_t blen = len - pos;
    char *body = xmalloc(blen ? blen : 1);
    memcpy(body, v + pos, blen);
    struct store_entry *e = store_entry_new(status, ct, body, blen);
    e->stored_ms = stored;
    e->expires_ms = expires;
    return e;
}

/* ---- admit_and_lookup --------------------------------------------------------------------- */

struct admit_op {
    struct store_redis *s;
    struct store_admit *a;
    store_done_fn *done;
    void *arg;
    int pending; /* replies awaited */
    int status;
    size_t nu;                   /* distinct limits sent */
    size_t *map;                 /* a->nlimits: the distinct limit each one counts in */
    struct limiter_rule *ids;    /* nu */
    uint64_t *costs;             /* nu */
    struct limiter_result *ures; /* nu */
    bool allowed;
    uint64_t now_ms;
    struct store_entry *entry;
};

static void
admit_finish(struct admit_op *op)
{
    struct store_admit *a = op->a;

    if (op->status == 0) {
        a->allowed = op->allowed;
        a->now_ms = op->now_ms;
        for (size_t i = 0; i < a->nlimits; i++) {
            a->results[i] = op->ures[op->map[i]];
            a->results[i].limit = a->limits[i].rule->limit;
        }
        if (!a->allowed) {
            store_entry_release(op->entry);
            op->entry = NULL;
            for (size_t i = 0; i < a->ntags; i++)
                a->tag_gens[i] = 0;
        }
        a->entry = op->entry;
        a->state = op->entry ? STORE_HIT : STORE_MISS;
    } else {
        store_entry_release(op->entry);
        a->entry = NULL;
        a->state = STORE_MISS;
        op->s->stats.failed++;
    }
    store_done_fn *done = op->done;
    void *arg = op->arg;
    int status = op->status;
    free(op->map);
    free(op);
    done(arg, status);
}

/* Reads one admit.lua reply carrying `nl` limits and `nt` tags. Returns 0 or -1. */
static int
admit_parse(struct admit_op *op, const redisReply *r, size_t nl, size_t nt)
{
    struct store_admit *a = op->a;
    uint64_t now, allowed, v[4];

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 + 4 * nl + nt)
        return -1;
    if (reply_u64(r->element[0], &now) != 0 || reply_u64(r->element[1], &allowed) != 0)
        return -1;
    for (size_t i = 0; i < nl; i++) {
        for (int k = 0; k < 4; k++)
            if (reply_u64(r->element[2 + 4 * i + (size_t)k], &v[k]) != 0)
                return -1;
        op->ures[i] = (struct limiter_result){.allowed = v[0] != 0,
                                              .limit = op->ids[i].limit,
                                              .remaining = v[1],
                                              .reset_ms = v[2],
                                              .retry_after_ms = v[3]};
    }
    for (size_t i = 0; i < nt; i++)
        if (reply_u64(r->element[2 + 4 * nl + i], &a->tag_gens[i]) != 0)
            return -1;
    const redisReply *e = r->element[2 + 4 * nl + nt];
    if (e->type == REDIS_REPLY_STRING) {
        op->entry = entry_decode(e->str, e->len);
        if (!op->entry)
            return -1;
    } else if (e->type != REDIS_REPLY_NIL) {
        return -1;
    }
    if (nl > 0) {
        op->allowed = allowed != 0;
        op->now_ms = now;
    } else if (op->now_ms == 0) {
        op->now_ms = now;
    }
    return 0;
}

static int
reply_status(const redisReply *r)
{
    return r ? -1 : STORE_UNAVAILABLE;
}

static void
on_admit_both(void *arg, redisReply *r)
{
    struct admit_op *op = arg;

    if (!r || admit_parse(op, r, op->nu, op->a->cache_key ? op->a->ntags : 0) != 0)
        op->status = reply_status(r);
    admit_finish(op);
}

static void
on_admit_limits(void *arg, redisReply *r)
{
    struct admit_op *op = arg;

    if (!r || admit_parse(op, r, op->nu, 0) != 0) {
        if (op->status != STORE_UNAVAILABLE)
            op->status = reply_status(r);
    }
    if (--op->pending == 0)
        admit_finish(op);
}

static void
on_admit_cache(void *arg, redisReply *r)
{
    struct admit_op *op = arg;

    if (!r || admit_parse(op, r, 0, op->a->ntags) != 0) {
        if (op->status != STORE_UNAVAILABLE)
            op->status = reply_status(r);
    }
    if (--op->pending == 0)
        admit_finish(op);
}

/* Appends the EVALSHA of admit.lua for the distinct limits (when with_limits) and the lookup
 * (when with_cache). */
static void
admit_command(struct store_redis *s, struct admit_op *op, bool with_limits, bool with_cache,
              struct sbuf *b)
{
    const struct store_admit *a = op->a;
    size_t nl = with_limits ? op->nu : 0;
    bool entry = with_cache && a->cache_key;
    size_t nt = entry ? a->ntags : 0;
    size_t nkeys = nl + (entry ? 1 : 0) + nt;
    struct sbuf k = {0};

    resp_evalsha(b, SCRIPT_ADMIT, nkeys, 4 + 5 * nl);
    for (size_t i = 0, u = 0; i < a->nlimits && nl; i++) {
        if (op->map[i] != u)
            continue;
        k.len = 0;
        limit_key(&k, &op->ids[u], a->limits[i].key, a->limits[i].keylen);
        resp_arg(b, k.p, k.len);
        u++;
    }
    if (entry) {
        k.len = 0;
        entry_key(&k, a->cache_key, a->cache_keylen);
        resp_arg(b, k.p, k.len);
    }
    for (size_t i = 0; i < nt; i++) {
        k.len = 0;
        tag_key(&k, a->tags[i], a->taglens[i]);
        resp_arg(b, k.p, k.len);
    }
    resp_u64(b, nl);
    resp_u64(b, entry ? 1 : 0);
    resp_u64(b, nt);
    resp_u64(b, s->tag_lease_ms);
    for (size_t u = 0; u < nl; u++) {
        resp_u64(b, (uint64_t)op->ids[u].algo);
        resp_u64(b, op->ids[u].limit);
        resp_u64(b, op->ids[u].window_ms);
        resp_u64(b, op->ids[u].burst);
        resp_u64(b, op->costs[u]);
    }
    sbuf_free(&k);
}

static void
redis_admit_and_lookup(struct store *st, struct store_admit *a, store_done_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    size_t n = a->nlimits;
    /* One allocation: the op, then map, ids, costs and results of up to n distinct limits. */
    struct admit_op *op = xcalloc(1, sizeof(*op));
    char *mem = xmalloc(n * (sizeof(size_t) + sizeof(struct limiter_rule) + sizeof(uint64_t) +
                             sizeof(struct limiter_result)) +
                        1);

    op->s = s;
    op->a = a;
    op->done = done;
    op->arg = arg;
    op->allowed = true;
    op->map = (size_t *)mem;
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
    struct sbuf b = {0};
    if (!s->split || op->nu == 0 || !a->cache_key) {
        struct rconn *c = s->split && op->nu > 0 ? &s->limits : &s->cache;
        admit_command(s, op, true, true, &b);
        conn_send(c, SCRIPT_ADMIT, &b, on_admit_both, op);
        return;
    }
    /* Limits and cache in two Redis servers: both asked at once; the lookup of a request
     * that turns out denied is dropped. */
    op->pending = 2;
    admit_command(s, op, true, false, &b);
    conn_send(&s->limits, SCRIPT_ADMIT, &b, on_admit_limits, op);
    admit_command(s, op, false, true, &b);
    conn_send(&s->cache, SCRIPT_ADMIT, &b, on_admit_cache, op);
}

/* ---- fill and invalidate ------------------------------------------------------------------ */

struct fill_op {
    struct store_redis *s;
    struct store_entry *entry; /* a reference, to stamp its times */
    uint64_t ttl_ms;
    store_done_fn *done;
    void *arg;
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
    store_entry_release(op->entry);
    store_done_fn *done = op->done;
    void *darg = op->arg;
    free(op);
    done(darg, status);
}

static void
redis_fill(struct store *st, const char *key, size_t keylen, struct store_entry *entry,
           uint64_t ttl_ms, const char *const *tags, const size_t *taglens,
           const uint64_t *tag_gens, size_t ntags, store_done_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct fill_op *op = xmalloc(sizeof(*op));
    struct sbuf b = {0}, k = {0}, head = {0}, sec = {0};
    char gen[24];

    store_entry_ref(entry);
    *op = (struct fill_op){.s = s, .entry = entry, .ttl_ms = ttl_ms, .done = done, .arg = arg};

    /* head: the tag section (tag keys and the generations recorded), then the status */
    for (size_t i = 0; i < ntags; i++) {
        k.len = 0;
        tag_key(&k, tags[i], taglens[i]);
        wr_u32(&sec, (uint32_t)k.len);
        sbuf_add(&sec, k.p, k.len);
        int n = snprintf(gen, sizeof(gen), "%llu", (unsigned long long)tag_gens[i]);
        wr_u32(&sec, (uint32_t)n);
        sbuf_add(&sec, gen, (size_t)n);
    }
    wr_u32(&head, (uint32_t)sec.len);
    if (sec.len)
        sbuf_add(&head, sec.p, sec.len);
    unsigned char status[2] = {(unsigned char)entry->status, (unsigned char)(entry->status >> 8)};
    sbuf_add(&head, status, 2);

    resp_evalsha(&b, SCRIPT_FILL, 1 + ntags, 3 + ntags);
    k.len = 0;
    entry_key(&k, key, keylen);
    resp_arg(&b, k.p, k.len);
    for (size_t i = 0; i < ntags; i++) {
        k.len = 0;
        tag_key(&k, tags[i], taglens[i]);
        resp_arg(&b, k.p, k.len);
    }
    resp_u64(&b, ttl_ms);
    resp_arg(&b, head.p, head.len);
    /* tail: content type and body, written straight into the command */
    size_t ctlen = entry->content_type ? strlen(entry->content_type) : 0;
    resp_num(&b, '$', 4 + ctlen + entry->body_len);
    wr_u32(&b, (uint32_t)ctlen);
    if (ctlen)
        sbuf_add(&b, entry->content_type, ctlen);
    if (entry->body_len)
        sbuf_add(&b, entry->body, entry->body_len);
    sbuf_add(&b, "\r\n", 2);
    for (size_t i = 0; i < ntags; i++)
        resp_u64(&b, tag_gens[i]);
    sbuf_free(&k);
    sbuf_free(&sec);
    sbuf_free(&head);
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
        tag_key(&k, tags[i], taglens[i]);
        resp_arg(&b, k.p, k.len);
    }
    resp_u64(&b, s->tag_lease_ms);
    sbuf_free(&k);
    conn_send(&s->cache, SCRIPT_INVALIDATE, &b, on_invalidate, op);
}

/* ---- the store ---------------------------------------------------------------------------- */

static void
redis_destroy(struct store *st)
{
    struct store_redis *s = (struct store_redis *)st;

    s->closing = true;
    conn_fini(&s->cache);
    conn_fini(&s->limits);
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
