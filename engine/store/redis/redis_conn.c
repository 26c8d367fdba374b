/* redis_conn.c - a connection of the Redis store: hiredis on a worker's loop, deadlines, scripts.
 */
#define _GNU_SOURCE
#include "redis_conn.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "embedded.h"
#include "log.h"
#include "sha1.h"
#include "store.h"
#include "store_redis.h"
#include "util.h"

/*
 * Commands are built by the caller in RESP (resp_* in redis_conn.h) and
 * handed over with redis_conn_send(), which calls back exactly once.
 *
 * Deadlines. hiredis 0.14 has no timeouts: each connection keeps its pending
 * commands in send order with their deadlines and one timer for the earliest.
 * When a command passes its deadline the connection is dropped
 * (redisAsyncFree), which makes hiredis call every pending callback once
 * with no reply: each completes its operation (with STORE_UNAVAILABLE), and
 * none is ever sent again (its outcome is unknown). The connection is made
 * again after a backoff (10 ms doubling to 1 s); meanwhile operations fail at
 * once. The only command sent twice is one answered NOSCRIPT, which means
 * that the script did not run: SCRIPT LOAD is sent before it again. (A GET
 * of a stored response that then arrives before its lookup's reply is still
 * used only if it carries the token the lookup found fresh.)
 */

#define BACKOFF_MIN_US 10000
#define BACKOFF_MAX_US 1000000

struct script {
    const char *module;
    const char *src;
    size_t len;
    char sha[41];
};

static struct script scripts[REDIS_NSCRIPTS] = {
    {.module = "redis.admit"},  {.module = "redis.fill"}, {.module = "redis.invalidate"},
    {.module = "redis.delete"}, {.module = "redis.list"}, {.module = "redis.tags"},
};
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void
scripts_init(void)
{
    for (int i = 0; i < REDIS_NSCRIPTS; i++) {
        for (const struct embedded_file *f = embedded_lua; f->module; f++) {
            if (strcmp(f->module, scripts[i].module) == 0) {
                scripts[i].src = f->source;
                scripts[i].len = f->len;
                sha1_hex(f->source, f->len, scripts[i].sha);
            }
        }
        if (!scripts[i].src) {
            log_abort("the script %s is not embedded", scripts[i].module);
        }
    }
}

void
redis_conn_scripts_init(void)
{
    pthread_once(&scripts_once, scripts_init);
}

const char *
redis_conn_script_sha(int script)
{
    return scripts[script].sha;
}

/* ---- libevent adapter: every libevent call of the Redis store is in this section ---------- */

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
        log_abort("out of memory (redis events)");
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

static void
timer_fire(evutil_socket_t fd, short what, void *arg)
{
    struct redis_timer *t = arg;

    t->fn(t->arg);
}

static void
timer_init(struct redis_timer *t, struct event_base *base, void (*fn)(void *), void *arg)
{
    t->fn = fn;
    t->arg = arg;
    t->ev = evtimer_new(base, timer_fire, t);
    if (!t->ev) {
        log_abort("out of memory (redis timer)");
    }
}

/* (Re)arms the timer to fire once, `us` microseconds from now. */
static void
timer_arm(struct redis_timer *t, uint64_t us)
{
    struct timeval tv = {.tv_sec = (time_t)(us / 1000000), .tv_usec = (suseconds_t)(us % 1000000)};

    evtimer_add(t->ev, &tv);
}

static void
timer_stop(struct redis_timer *t)
{
    evtimer_del(t->ev);
}

static int
timer_pending(const struct redis_timer *t)
{
    return evtimer_pending(t->ev, NULL);
}

static void
timer_free(struct redis_timer *t)
{
    if (t->ev)
        event_free(t->ev);
    t->ev = NULL;
}

void
redis_conn_attach(redisAsyncContext *ac, struct event_base *base)
{
    ev_attach(ac, base);
}

void
redis_conn_timer_init(struct redis_timer *t, struct event_base *base, void (*fn)(void *), void *arg)
{
    timer_init(t, base, fn, arg);
}

void
redis_conn_timer_arm(struct redis_timer *t, uint64_t us)
{
    timer_arm(t, us);
}

void
redis_conn_timer_stop(struct redis_timer *t)
{
    if (t->ev)
        timer_stop(t);
}

void
redis_conn_timer_free(struct redis_timer *t)
{
    timer_free(t);
}

static void
turn_fire(evutil_socket_t fd, short what, void *arg)
{
    struct redis_turn *t = arg;

    t->on = false;
    t->fn(t->arg);
}

void
redis_conn_turn_init(struct redis_turn *t, struct event_base *base, void (*fn)(void *), void *arg)
{
    t->fn = fn;
    t->arg = arg;
    t->on = false;
    t->ev = event_new(base, -1, 0, turn_fire, t);
    if (!t->ev) {
        log_abort("out of memory (redis turn)");
    }
}

void
redis_conn_turn_activate(struct redis_turn *t)
{
    if (!t->on) {
        t->on = true;
        event_active(t->ev, EV_WRITE, 1);
    }
}

void
redis_conn_turn_free(struct redis_turn *t)
{
    if (t->ev)
        event_free(t->ev);
    t->ev = NULL;
}

/* ---- URLs --------------------------------------------------------------------------------- */

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

int
redis_conn_parse_url(const char *url, struct redis_endpoint *ep, char *err, size_t errlen)
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

/* ---- connections and commands ------------------------------------------------------------ */

struct redis_cmd {
    TAILQ_ENTRY(redis_cmd) link; /* in its connection's pending */
    struct redis_conn *conn;
    int script;      /* REDIS_SCRIPT_*, or -1: never resent */
    struct sbuf cmd; /* the command as sent, for a resend after NOSCRIPT */
    uint64_t seq;    /* its number on the connection when last sent */
    uint64_t deadline_us;
    uint64_t sent_us; /* when last sent */
    bool resent;
    redis_reply_fn *fn;
    void *arg;
};

static void
rcmd_free(struct redis_cmd *rc)
{
    sbuf_free(&rc->cmd);
    free(rc);
}

/* Completes every command held for ROLE with no reply (the connection went, or is no master). */
static void
held_fail(struct redis_conn *c)
{
    struct redis_cmd *rc;

    while ((rc = TAILQ_FIRST(&c->held))) {
        TAILQ_REMOVE(&c->held, rc, link);
        rc->fn(rc->arg, NULL);
        rcmd_free(rc);
    }
}

static void
conn_log(struct redis_conn *c, enum log_level lv, const char *what, const char *detail)
{
    log_fields(lv, NULL, 0, "redis %s %s:%d: %s%s%s", c->role, c->ep.host, c->ep.port, what,
               detail ? ": " : "", detail ? detail : "");
}

/* Schedules the next connection attempt after the backoff, which then doubles. */
static void
conn_schedule(struct redis_conn *c)
{
    if (c->env->closing || timer_pending(&c->retry))
        return;
    timer_arm(&c->retry, c->backoff_us);
    c->backoff_us = c->backoff_us * 2 > BACKOFF_MAX_US ? BACKOFF_MAX_US : c->backoff_us * 2;
}

/* Forgets the hiredis context (it is being freed, by hiredis or by us). */
static void
conn_detach(struct redis_conn *c, const char *why, const char *detail)
{
    if (!c->ac)
        return;
    c->ac->data = NULL;
    c->ac = NULL;
    c->verified = false;
    held_fail(c);
    if (!c->down_logged && !c->env->closing) {
        char msg[160];
        snprintf(msg, sizeof(msg), "%s; reconnecting", why);
        conn_log(c, LOGL_WARN, msg, detail);
        c->down_logged = true;
    }
    conn_schedule(c);
    if (c->lost_master && !c->env->closing)
        c->lost_master(c->lost_arg);
}

/*
 * Drops the connection: hiredis calls every pending callback with no reply
 * (each completes its operation once, with an error), then it is freed.
 */
static void
conn_drop(struct redis_conn *c, const char *why)
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
    struct redis_conn *c = arg;
    uint64_t now = util_mono_us(), next = UINT64_MAX;

    c->deadline_at = 0;
    for (int held = 0; held < 2; held++) {
        struct redis_cmd *rc = held ? TAILQ_FIRST(&c->held) : TAILQ_FIRST(&c->pending);
        for (; rc; rc = TAILQ_NEXT(rc, link)) {
            if (rc->deadline_us <= now) {
                c->env->stats->deadlines++;
                conn_drop(c, "a command passed its deadline");
                return;
            }
            if (rc->deadline_us < next)
                next = rc->deadline_us;
        }
    }
    if (next != UINT64_MAX) {
        c->deadline_at = next;
        timer_arm(&c->deadline, next - now);
    }
}

static void
deadline_watch(struct redis_conn *c, uint64_t deadline_us)
{
    if (c->deadline_at == 0 || deadline_us < c->deadline_at) {
        uint64_t now = util_mono_us();
        c->deadline_at = deadline_us;
        timer_arm(&c->deadline, deadline_us > now ? deadline_us - now : 0);
    }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Hands rc (already built) to hiredis. Returns 0, or -1 when the connection refused it. */
static int
conn_write(struct redis_conn *c, struct redis_cmd *rc)
{
    if (!c->ac || c->env->closing)
        return -1;
    rc->seq = ++c->seq;
    rc->sent_us = util_mono_us();
    TAILQ_INSERT_TAIL(&c->pending, rc, link);
    if (redisAsyncFormattedCommand(c->ac, on_reply, rc, rc->cmd.p, rc->cmd.len) != REDIS_OK) {
        TAILQ_REMOVE(&c->pending, rc, link);
        return -1;
    }
    c->env->stats->commands++;
    deadline_watch(c, rc->deadline_us);
    return 0;
}

void
redis_conn_send(struct redis_conn *c, int script, struct sbuf *cmd, redis_reply_fn *fn, void *arg)
{
    struct redis_cmd *rc = xcalloc(1, sizeof(*rc));

    rc->conn = c;
    rc->script = script;
    rc->cmd = *cmd;
    *cmd = (struct sbuf){0};
    rc->deadline_us = util_mono_us() + c->env->deadline_us;
    rc->fn = fn;
    rc->arg = arg;
    if (c->ac && c->check_role && !c->verified && !c->setup && !c->env->closing) {
        /* not sent to a node that may be a replica: it waits for ROLE's answer */
        TAILQ_INSERT_TAIL(&c->held, rc, link);
        deadline_watch(c, rc->deadline_us);
        return;
    }
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

static void send_script_load(struct redis_conn *c, int script);

static bool
is_readonly(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR && r->len >= 8 && memcmp(r->str, "READONLY", 8) == 0;
}

static void
on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_cmd *rc = privdata;
    struct redis_conn *c = rc->conn;
    redisReply *r = reply;

    TAILQ_REMOVE(&c->pending, rc, link);
    if (r && is_noscript(r) && rc->script >= 0 && !rc->resent && c->ac == ac) {
        /* The script did not run: load it (unless a load was sent after this command) and
         * send the command again, with its original deadline. */
        rc->resent = true;
        c->env->stats->noscript++;
        if (c->loaded_at[rc->script] < rc->seq)
            send_script_load(c, rc->script);
        if (conn_write(c, rc) == 0)
            return;
        r = NULL;
    }
    if (r) {
        hist_add(&c->env->stats->latency, util_mono_us() - rc->sent_us);
        c->backoff_us = BACKOFF_MIN_US;
        if (c->down_logged) {
            c->down_logged = false;
            conn_log(c, LOGL_INFO, "answering again", NULL);
        }
        /* A cluster's redirections are followed by redis_cluster.c, not errors. */
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "MOVED ", 6) != 0 &&
            strncmp(r->str, "ASK ", 4) != 0 && strncmp(r->str, "TRYAGAIN", 8) != 0) {
            uint64_t now = util_mono_us();
            if (now - c->last_error_log_us >= 1000000 || c->last_error_log_us == 0) {
                c->last_error_log_us = now;
                conn_log(c, LOGL_WARN, "error reply", r->str);
            }
        }
    }
    bool demoted = r && c->check_role && c->ac == ac && is_readonly(r);
    rc->fn(rc->arg, r);
    rcmd_free(rc);
    if (demoted) /* the master we were told of is a replica now: leave it (and ask again) */
        conn_drop(c, "the node is read-only (a replica now)");
}

static void
on_setup_reply(void *arg, redisReply *r)
{
    struct redis_conn *c = arg;

    if (r && r->type == REDIS_REPLY_ERROR)
        conn_log(c, LOGL_WARN, "setting up the connection failed", r->str);
}

/* ROLE's reply on a new connection: a node that is not a master is left (and the watcher asks
 * again where the master is). */
static void
on_role_reply(void *arg, redisReply *r)
{
    struct redis_conn *c = arg;

    if (!r || !c->ac)
        return;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0) {
        /* a master: the held commands go, in their order */
        struct redis_cmd *rc;
        c->verified = true;
        while ((rc = TAILQ_FIRST(&c->held))) {
            TAILQ_REMOVE(&c->held, rc, link);
            if (conn_write(c, rc) != 0) {
                rc->fn(rc->arg, NULL);
                rcmd_free(rc);
            }
        }
        return;
    }
    conn_drop(c, r->type == REDIS_REPLY_ERROR ? "ROLE failed" : "the node is not a master (ROLE)");
}

static void
send_script_load(struct redis_conn *c, int script)
{
    struct sbuf b = {0};

    resp_argc(&b, 3);
    resp_str(&b, "SCRIPT");
    resp_str(&b, "LOAD");
    resp_arg(&b, scripts[script].src, scripts[script].len);
    redis_conn_send(c, -1, &b, on_setup_reply, c);
    c->loaded_at[script] = c->seq;
}

/* ---- connection life ---------------------------------------------------------------------- */

static void
on_connect(const redisAsyncContext *ac, int status)
{
    struct redis_conn *c = ac->data;

    if (!c)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context and fails its pending commands after this returns. */
        conn_detach(c, "cannot connect", ac->errstr);
        return;
    }
    c->env->stats->connects++;
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_conn *c = ac->data;

    if (!c)
        return;
    conn_detach(c, "connection lost", ac->errstr[0] ? ac->errstr : NULL);
}

static void
on_retry(void *arg)
{
    redis_conn_connect(arg);
}

void
redis_conn_connect(struct redis_conn *c)
{
    redisAsyncContext *ac;

    if (c->ac || c->env->closing || !c->ep.host[0])
        return;
    ac = redisAsyncConnect(c->ep.host, c->ep.port);
    if (!ac || ac->err) {
        if (!c->down_logged) {
            conn_log(c, LOGL_WARN, "cannot connect; retrying", ac ? ac->errstr : "out of memory");
            c->down_logged = true;
        }
        if (ac)
            redisAsyncFree(ac);
        conn_schedule(c);
        return;
    }
    ev_attach(ac, c->env->base);
    ac->data = c;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->seq = 0;
    c->verified = false;
    c->setup = true;
    memset(c->loaded_at, 0, sizeof(c->loaded_at));

    /* Sent ahead of any request, so that every later command finds them done. */
    struct sbuf b = {0};
    if (c->ep.has_password) {
        resp_argc(&b, c->ep.has_user ? 3 : 2);
        resp_str(&b, "AUTH");
        if (c->ep.has_user)
            resp_str(&b, c->ep.user);
        resp_str(&b, c->ep.password);
        redis_conn_send(c, -1, &b, on_setup_reply, c);
    }
    if (c->ep.db != 0) {
        resp_argc(&b, 2);
        resp_str(&b, "SELECT");
        resp_u64(&b, c->ep.db);
        redis_conn_send(c, -1, &b, on_setup_reply, c);
    }
    if (c->check_role && c->ac) {
        resp_argc(&b, 1);
        resp_str(&b, "ROLE");
        redis_conn_send(c, -1, &b, on_role_reply, c);
    }
    for (int i = 0; i < REDIS_NSCRIPTS && c->ac && !c->plain; i++)
        send_script_load(c, i);
    c->setup = false;
}

void
redis_conn_set_endpoint(struct redis_conn *c, const struct redis_endpoint *ep)
{
    if (strcmp(c->ep.host, ep->host) == 0 && c->ep.port == ep->port)
        return;
    if (c->ac) {
        char msg[320];
        void (*lost)(void *) = c->lost_master;
        snprintf(msg, sizeof(msg), "moving to %s:%d", ep->host, ep->port);
        c->lost_master = NULL; /* a move, not a loss: the watcher need not ask again */
        conn_drop(c, msg);
        c->lost_master = lost;
    }
    c->ep = *ep;
    c->backoff_us = BACKOFF_MIN_US;
    c->env->moves++;
    timer_stop(&c->retry);
    redis_conn_connect(c);
}

void
redis_conn_init(struct redis_conn *c, struct redis_conn_env *env, const char *role,
                const struct redis_endpoint *ep)
{
    c->env = env;
    c->role = role;
    c->ep = *ep;
    TAILQ_INIT(&c->pending);
    TAILQ_INIT(&c->held);
    c->backoff_us = BACKOFF_MIN_US;
    timer_init(&c->deadline, env->base, on_deadline, c);
    timer_init(&c->retry, env->base, on_retry, c);
}

void
redis_conn_fini(struct redis_conn *c)
{
    if (!c->env)
        return;
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->ac->data = NULL;
        c->ac = NULL;
        redisAsyncFree(ac);
    }
    held_fail(c);
    timer_free(&c->deadline);
    timer_free(&c->retry);
}
