/* redis_conn.h - a connection of the Redis store: hiredis on a worker's loop, deadlines, scripts.
 */
#ifndef SLUICE_REDIS_CONN_H
#define SLUICE_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/queue.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "util.h"

struct event;
struct event_base;
struct store_redis_stats;

/* The scripts of lua/redis/ the store runs, loaded with SCRIPT LOAD on every new connection. */
enum {
    REDIS_SCRIPT_ADMIT,
    REDIS_SCRIPT_FILL,
    REDIS_SCRIPT_INVALIDATE,
    REDIS_SCRIPT_DELETE,
    REDIS_SCRIPT_LIST,
    REDIS_SCRIPT_TAGS,
    REDIS_NSCRIPTS
};

/*
 * Finds the scripts among the embedded Lua sources and computes their SHA-1s,
 * once per process (later calls return at once; any thread). Aborts when one
 * is not embedded. Call it before anything else of this file.
 */
void redis_conn_scripts_init(void);

/* Returns the SHA-1 of `script` (a REDIS_SCRIPT_*) in 40 hex digits; static, NUL-terminated. */
const char *redis_conn_script_sha(int script);

/* Where a connection goes, as a redis:// URL says. */
struct redis_endpoint {
    char host[256];
    int port;
    char user[128];
    char password[256];
    bool has_user, has_password;
    unsigned db;
};

/*
 * Parses redis://[[user]:password@]host[:port][/db], host a name, an IPv4
 * address or [IPv6], user and password percent-encoded, into *ep (the
 * caller's). Returns 0, or -1 with a message in err.
 */
int redis_conn_parse_url(const char *url, struct redis_endpoint *ep, char *err, size_t errlen);

/* A timer of a connection; only redis_conn.c touches it. */
struct redis_timer {
    struct event *ev;
    void (*fn)(void *arg);
    void *arg;
};

/* A callback run once, late in the loop's current turn (after the callbacks already due). */
struct redis_turn {
    struct event *ev;
    bool on;
    void (*fn)(void *arg);
    void *arg;
};

/* Sets up t (the caller's) to call fn(arg) on base. Aborts when out of memory. */
void redis_conn_turn_init(struct redis_turn *t, struct event_base *base, void (*fn)(void *),
                          void *arg);

/* Has t's callback run once late in this turn of the loop; until then, further calls do nothing. */
void redis_conn_turn_activate(struct redis_turn *t);

/* Frees what redis_conn_turn_init() allocated (not t); the callback will not run. Idempotent. */
void redis_conn_turn_free(struct redis_turn *t);

/*
 * A timer on base for code beside the connections (redis_cluster.c, redis_sentinel.c), so that
 * libevent stays in this file: set up with redis_conn_timer_init() (aborts
 * when out of memory), armed to fire fn(arg) once `us` from now (re-arming
 * moves it), stopped, and freed (idempotent; then it never fires).
 */
void redis_conn_timer_init(struct redis_timer *t, struct event_base *base, void (*fn)(void *),
                           void *arg);
void redis_conn_timer_arm(struct redis_timer *t, uint64_t us);
void redis_conn_timer_stop(struct redis_timer *t);
void redis_conn_timer_free(struct redis_timer *t);

/* Called once per command: r is the reply, or NULL when there is none (deadline, connection). */
typedef void redis_reply_fn(void *arg, redisReply *r);

/* What the connections of one store share: owned by the store, borrowed by each connection. */
struct redis_conn_env {
    struct event_base *base;         /* the worker's loop */
    uint64_t deadline_us;            /* of every command, from when it is sent */
    bool closing;                    /* set by the owner: no command is taken, no reconnection */
    struct store_redis_stats *stats; /* commands, noscript, deadlines and connects are counted */
    uint64_t moves; /* times commands were sent somewhere new: a master the sentinels named, a
                       slot map with other owners (lets the store's breaker try at once) */
};

struct redis_cmd;

/* One connection: its hiredis context while up, the commands pending on it, its backoff. */
struct redis_conn {
    struct redis_conn_env *env;
    const char *role; /* "cache", "limits", for logs */
    struct redis_endpoint ep;
    redisAsyncContext *ac;           /* NULL while down */
    TAILQ_HEAD(, redis_cmd) pending; /* sent and not answered yet, in send order */
    struct redis_timer deadline;     /* for the earliest deadline among pending commands */
    uint64_t deadline_at;            /* when it fires (monotonic us), 0 when not armed */
    struct redis_timer retry;        /* reconnect */
    uint64_t backoff_us;
    uint64_t seq;                       /* commands sent on this connection */
    uint64_t loaded_at[REDIS_NSCRIPTS]; /* seq of each script's last SCRIPT LOAD on it */
    bool down_logged;                   /* its failure was logged; log the recovery */
    uint64_t last_error_log_us;
    bool plain; /* no scripts are loaded (a Sentinel, not a data node) */

    /* Set when a watcher (redis_sentinel.c) says where the master is, else zero: */
    bool check_role; /* ROLE is asked first on every connection; not a master: left. Until
                        it answers master, commands wait in `held` (not sent) */
    bool verified;   /* this connection's ROLE said master */
    bool setup;      /* redis_conn_connect() is sending its own commands */
    TAILQ_HEAD(, redis_cmd) held;   /* waiting for ROLE, in send order */
    void (*lost_master)(void *arg); /* the node is gone, or says it is not the master (ROLE, a
                                       READONLY error reply): ask again where the master is */
    void *lost_arg;
};

/*
 * Sets up c (zeroed by the caller) to connect to ep (copied). env and role
 * are borrowed and must outlive c. Does not connect: see redis_conn_connect().
 * Aborts when out of memory.
 */
void redis_conn_init(struct redis_conn *c, struct redis_conn_env *env, const char *role,
                     const struct redis_endpoint *ep);

/*
 * Starts connecting in the background, unless c is up or env->closing is
 * set; a failure is logged once and retried after the backoff (10 ms doubling
 * to 1 s), as is a connection lost later. AUTH and SELECT (when the URL asks
 * for them) and a SCRIPT LOAD of every script are sent ahead of any command.
 */
void redis_conn_connect(struct redis_conn *c);

/*
 * Sends a command (taking its buffer) whose reply goes to fn(arg, reply)
 * exactly once: now, with no reply, when the connection is down. cmd is a
 * complete RESP command and is left empty. script is the REDIS_SCRIPT_* an
 * EVALSHA runs, sent again once after a SCRIPT LOAD when it is answered
 * NOSCRIPT, or -1. The reply belongs to hiredis and is freed when fn returns
 * (fn may take a string reply's buffer, which hiredis frees with free()).
 */
void redis_conn_send(struct redis_conn *c, int script, struct sbuf *cmd, redis_reply_fn *fn,
                     void *arg);

/*
 * Points c at ep (copied) when it names another host or port: the
 * connection to the old one is dropped (its pending commands complete with
 * no reply) and the new one is made at once. Does nothing when ep names the
 * host and port c already uses. An ep with an empty host leaves c down.
 */
void redis_conn_set_endpoint(struct redis_conn *c, const struct redis_endpoint *ep);

/*
 * Closes c, when it is up (every pending command's fn is called with no
 * reply), and frees its timers. Does nothing for a c never set up (zeroed).
 */
void redis_conn_fini(struct redis_conn *c);

/* ---- the libevent adapter, for the other clients of this folder (redis_sentinel.c) ------ */

/* Lets base drive ac's socket (hiredis's event hooks); freed with ac. Aborts when out of memory. */
void redis_conn_attach(redisAsyncContext *ac, struct event_base *base);

/* ---- RESP: commands built into a buffer for redis_conn_send() ---------------------------- */

static inline void
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

static inline void
resp_argc(struct sbuf *b, size_t n)
{
    resp_num(b, '*', n);
}

static inline void
resp_arg(struct sbuf *b, const void *p, size_t len)
{
    resp_num(b, '$', len);
    sbuf_add(b, p, len);
    sbuf_add(b, "\r\n", 2);
}

static inline void
resp_str(struct sbuf *b, const char *s)
{
    resp_arg(b, s, strlen(s));
}

static inline void
resp_u64(struct sbuf *b, uint64_t v)
{
    char buf[20];
    resp_arg(b, buf, util_u64(buf, v));
}

static inline void
resp_evalsha(struct sbuf *b, int script, size_t nkeys, size_t nargs)
{
    resp_argc(b, 3 + nkeys + nargs);
    resp_str(b, "EVALSHA");
    resp_arg(b, redis_conn_script_sha(script), 40);
    resp_u64(b, nkeys);
}

#endif
