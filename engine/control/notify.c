/* notify.c - database-driven invalidation: a LISTEN connection on a thread of its own. */
#define _GNU_SOURCE
#include "notify.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <libpq-fe.h>

#include "log.h"
#include "pg_conn.h"
#include "policy.h"
#include "store.h"
#include "template.h"
#include "triggers.h"
#include "util.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define POLICY_CHECK_MS 1000 /* how often the policy is asked whether to listen */
#define DRAIN_MS 1000        /* on stop, how long invalidations in flight may take */
#define TAG_MAX 4096         /* a request's whole key arena: a longer tag names no entry */
#define BATCH_MAX 256        /* tags per store call */

/* ---- notifications to tags (no I/O) ---- */

void
notify_tags_free(struct notify_tags *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->tags[i]);
    free(t->tags);
    free(t->lens);
    memset(t, 0, sizeof(*t));
}

static void
add_tag(struct notify_tags *t, const char *tag, size_t len)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->lens[i] == len && memcmp(t->tags[i], tag, len) == 0)
            return;
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->tags = xrealloc(t->tags, t->cap * sizeof(*t->tags));
        t->lens = xrealloc(t->lens, t->cap * sizeof(*t->lens));
    }
    t->tags[t->n] = xstrndup(tag, len);
    t->lens[t->n++] = len;
}

struct row_ctx {
    json_t *row; /* borrowed */
    int missing; /* a variable had no column in the row */
    char num[64];
};

/* {row.COLUMN} from the row object: see notify_collect() for the rules. */
static int
row_lookup(void *vctx, enum template_var var, const char *name, size_t namelen, const char **val,
           size_t *len)
{
    struct row_ctx *c = vctx;
    json_t *v = var == TV_ROW && name ? json_object_get(c->row, name) : NULL;
    int n;

    (void)namelen;
    switch (v ? json_typeof(v) : JSON_OBJECT) {
    case JSON_NULL:
        return 0;
    case JSON_STRING:
        *val = json_string_value(v);
        *len = json_string_length(v);
        return 1;
    case JSON_INTEGER:
        n = snprintf(c->num, sizeof(c->num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        n = snprintf(c->num, sizeof(c->num), "%.17g", json_real_value(v));
        break;
    case JSON_TRUE:
        n = snprintf(c->num, sizeof(c->num), "true");
        break;
    case JSON_FALSE:
        n = snprintf(c->num, sizeof(c->num), "false");
        break;
    default: /* absent, or an object or array: no text to put in a tag */
        c->missing = 1;
        return 0;
    }
    *val = c->num;
    *len = (size_t)n;
    return 1;
}

int
notify_collect(const struct policy *p, const char *payload, size_t len, struct notify_tags *t,
               char *err, size_t errlen)
{
    static const char *const row_names[2] = {"old", "new"};
    json_error_t je;
    json_t *root = json_loadb(payload, len, 0, &je);
    json_t *rows[2];
    json_t *table;
    int matched = 0, failed = 0;
    char *buf = NULL;

    if (!root || !json_is_object(root)) {
        util_seterr(err, errlen, "notification is not a JSON object%s%s", root ? "" : ": ",
                    root ? "" : je.text);
        failed = 1;
        goto out;
    }
    table = json_object_get(root, "table");
    if (!json_is_string(table)) {
        util_seterr(err, errlen, "notification without a \"table\" string");
        failed = 1;
        goto out;
    }
    for (int i = 0; i < 2; i++) {
        rows[i] = json_object_get(root, row_names[i]);
        if (json_is_null(rows[i]))
            rows[i] = NULL;
        if (rows[i] && !json_is_object(rows[i])) {
            util_seterr(err, errlen, "notification for \"%s\": \"%s\" is not an object",
                        json_string_value(table), row_names[i]);
            failed = 1;
            goto out;
        }
    }
    for (size_t i = 0; i < p->non_change; i++) {
        const struct policy_on_change *oc = &p->on_change[i];
        if (strlen(oc->table) != json_string_length(table) ||
            strcmp(oc->table, json_string_value(table)) != 0)
            continue;
        matched++;
        if (!rows[0] && !rows[1]) {
            t->all = true;
            continue;
        }
        if (!buf)
            buf = xmalloc(TAG_MAX);
        for (size_t k = 0; k < oc->ninvalidate; k++) {
            for (int r = 0; r < 2; r++) {
                struct row_ctx ctx = {.row = rows[r]};
                if (!rows[r])
                    continue;
                long n = template_expand(oc->invalidate[k], row_lookup, &ctx, buf, TAG_MAX);
                if (ctx.missing)
                    continue;
                if (n < 0) {
                    util_seterr(
                        err, errlen, "%s:%d: on_change \"%s\": tag \"%s\" is longer than %d bytes",
                        oc->file, oc->line, oc->table, template_source(oc->invalidate[k]), TAG_MAX);
                    failed = 1;
                    continue;
                }
                add_tag(t, buf, (size_t)n);
            }
        }
    }
out:
    free(buf);
    json_decref(root);
    return failed ? -1 : matched;
}

/* ---- the listener ---- */

enum nstate {
    N_IDLE,        /* the policy declares no on_change: no connection */
    N_BACKOFF,     /* the last attempt failed or the connection broke; timer pending */
    N_CONNECTING,  /* PQconnectPoll in progress */
    N_LISTEN_SENT, /* connected, LISTEN not yet answered */
    N_LISTENING,
    N_STOPPING,
};

static const char *const state_names[] = {"idle",       "down",      "connecting",
                                          "connecting", "listening", "stopped"};

struct notifier {
    struct notify_config cfg;      /* conninfo is not kept */
    struct pg_conn_params *params; /* its connect deadline bounds LISTEN's answer too */
    pthread_t thread;
    struct event_base *base;

    /* used by the thread only */
    struct pg_conn pc;
    struct event timer, check, stop;
    enum nstate st;
    unsigned backoff_ms;
    int listened;    /* LISTEN succeeded since the policy asked for it */
    int down_logged; /* the current outage was logged */
    int bad_logged;  /* a malformed notification was logged */
    struct store *store;
    struct notify_tags pending; /* tags of the notifications read so far in this pass */
    unsigned inflight;          /* store operations not yet completed */

    /* status, guarded by lock */
    pthread_mutex_t lock;
    enum nstate shown;
    uint64_t notifications, unmatched, invalidations, drops_all, reconnects, errors;
    char last_error[256];
    time_t last_error_at;
};

static void
set_state(struct notifier *n, enum nstate st)
{
    n->st = st;
    pthread_mutex_lock(&n->lock);
    n->shown = st;
    pthread_mutex_unlock(&n->lock);
}

static void set_error(struct notifier *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
set_error(struct notifier *n, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&n->lock);
    va_start(ap, fmt);
    vsnprintf(n->last_error, sizeof(n->last_error), fmt, ap);
    va_end(ap);
    n->last_error_at = time(NULL);
    n->errors++;
    pthread_mutex_unlock(&n->lock);
}

static void
finish_stop_if_drained(struct notifier *n)
{
    if (n->st == N_STOPPING && n->inflight == 0)
        event_base_loopexit(n->base, NULL);
}

/* ---- invalidation ---- */

struct batch {
    struct notifier *n;
    struct notify_tags t;
};

static void
invalidated(void *arg, int status)
{
    struct batch *b = arg;
    struct notifier *n = b->n;

    if (status == 0) {
        pthread_mutex_lock(&n->lock);
        n->invalidations += b->t.n;
        pthread_mutex_unlock(&n->lock);
    } else {
        set_error(n, "store: invalidating %zu tags failed%s", b->t.n,
                  status == STORE_UNAVAILABLE ? " (store unavailable)" : "");
    }
    notify_tags_free(&b->t);
    free(b);
    n->inflight--;
    finish_stop_if_drained(n);
}

static void
dropped(void *arg, int status, uint64_t count)
{
    struct notifier *n = arg;

    if (status == 0) {
        pthread_mutex_lock(&n->lock);
        n->drops_all++;
        pthread_mutex_unlock(&n->lock);
        log_info("notify: dropped %llu cached entries", (unsigned long long)count);
    } else {
        set_error(n, "store: dropping every cached entry failed");
    }
    n->inflight--;
    finish_stop_if_drained(n);
}

static void
ensure_store(struct notifier *n)
{
    if (!n->store)
        n->store = n->cfg.store_new(n->cfg.ctx, n->base, "notify");
}

/* Every cached entry goes: the tags that changes named are unknown. */
static void
drop_all(struct notifier *n, const char *why)
{
    ensure_store(n);
    if (!n->store->ops->invalidate_pattern) {
        log_warn("notify: %s, but the %s store cannot drop every entry: entries live "
                 "until their TTL",
                 why, n->store->ops->name);
        set_error(n, "%s: the store cannot drop every entry", why);
        return;
    }
    log_warn("notify: %s: dropping every cached entry", why);
    n->inflight++;
    store_invalidate_pattern(n->store, "*", 1, dropped, n);
}

/* Sends the tags gathered from the notifications read so far. */
static void
flush_pending(struct notifier *n)
{
    int all = n->pending.all;

    n->pending.all = false;
    if (n->pending.n > 0) {
        struct batch *b = xcalloc(1, sizeof(*b));
        ensure_store(n);
        b->n = n;
        b->t = n->pending;
        memset(&n->pending, 0, sizeof(n->pending));
        n->inflight++;
        store_invalidate(n->store, (const char *const *)b->t.tags, b->t.lens, b->t.n, invalidated,
                         b);
    }
    if (all)
        drop_all(n, "a change came without its rows (TRUNCATE, or a row too large for NOTIFY)");
}

static void
handle_notification(struct notifier *n, const char *payload)
{
    char err[256];
    struct policy *p = n->cfg.policy(n->cfg.ctx);
    int m = notify_collect(p, payload, strlen(payload), &n->pending, err, sizeof(err));

    policy_release(p);
    pthread_mutex_lock(&n->lock);
    n->notifications++;
    if (m == 0)
        n->unmatched++;
    pthread_mutex_unlock(&n->lock);
    if (m < 0) {
        set_error(n, "%s", err);
        if (!n->bad_logged)
            log_warn("notify: %s (further ones are only counted)", err);
        n->bad_logged = 1;
    }
    if (n->pending.n >= BATCH_MAX)
        flush_pending(n);
}

/* ---- the connection ---- */

static void
conn_close(struct notifier *n)
{
    pg_conn_close(&n->pc);
    evtimer_del(&n->timer);
}

/* A connect attempt failed or the connection broke: log once per outage, back off. */
static void
conn_failed(struct notifier *n, const char *msg)
{
    char *line = pg_conn_first_line(msg);
    struct timeval tv;

    set_error(n, "database: %s", line);
    if (n->st == N_LISTENING) {
        log_warn("notify: lost the connection to PostgreSQL (%s); reconnecting", line);
        n->down_logged = 1;
        n->backoff_ms = 0;
    } else if (!n->down_logged) {
        log_warn("notify: cannot listen for changes yet (%s); retrying", line);
        n->down_logged = 1;
    }
    free(line);
    conn_close(n);
    n->backoff_ms = n->backoff_ms ? n->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (n->backoff_ms > BACKOFF_MAX_MS)
        n->backoff_ms = BACKOFF_MAX_MS;
    set_state(n, N_BACKOFF);
    tv = util_ms_to_tv(n->backoff_ms);
    evtimer_add(&n->timer, &tv);
}

static void
conn_start(struct notifier *n)
{
    char err[512];

    ensure_store(n);
    set_state(n, N_CONNECTING);
    if (pg_conn_start(&n->pc, err, sizeof(err)) != 0)
        conn_failed(n, err);
}

/* Returns 0, or -1 when the connection broke (already handled). */
static int
conn_flush(struct notifier *n)
{
    if (pg_conn_flush(&n->pc) != 0) {
        conn_failed(n, PQerrorMessage(n->pc.pg));
        return -1;
    }
    return 0;
}

static void
listening(struct notifier *n)
{
    struct policy *p = n->cfg.policy(n->cfg.ctx);
    size_t tables = p->non_change;

    policy_release(p);
    evtimer_del(&n->timer);
    n->backoff_ms = 0;
    n->down_logged = 0;
    set_state(n, N_LISTENING);
    if (n->listened) {
        pthread_mutex_lock(&n->lock);
        n->reconnects++;
        pthread_mutex_unlock(&n->lock);
        log_info("notify: listening again on " TRIGGERS_CHANNEL "");
        /* Rows changed while the connection was down were not seen. */
        drop_all(n, "changes made while the connection was down were not seen");
    } else {
        log_info("notify: listening on " TRIGGERS_CHANNEL " for changes to %zu table%s", tables,
                 tables == 1 ? "" : "s");
    }
    n->listened = 1;
}

static void
conn_read(struct notifier *n)
{
    PGconn *pg = n->pc.pg;
    PGnotify *nt;
    PGresult *r;
    int listen_ok = 0;
    char *listen_err = NULL;

    if (!PQconsumeInput(pg)) {
        conn_failed(n, PQerrorMessage(pg));
        return;
    }
    while (!PQisBusy(pg) && (r = PQgetResult(pg)) != NULL) {
        if (n->st == N_LISTEN_SENT) {
            if (PQresultStatus(r) == PGRES_COMMAND_OK) {
                listen_ok = 1;
            } else {
                free(listen_err);
                listen_err = pg_conn_first_line(PQresultErrorMessage(r));
            }
        }
        PQclear(r);
    }
    if (listen_err) {
        conn_failed(n, listen_err);
        free(listen_err);
        return;
    }
    if (listen_ok)
        listening(n);
    while ((nt = PQnotifies(pg)) != NULL) {
        handle_notification(n, nt->extra);
        PQfreemem(nt);
    }
    flush_pending(n);
    if (PQstatus(pg) == CONNECTION_BAD)
        conn_failed(n, PQerrorMessage(pg));
}

/* pg_conn handlers: connected, the connect attempt failed, the socket is ready. */
static void
conn_up(void *arg)
{
    struct notifier *n = arg;

    if (!PQsendQuery(n->pc.pg, "LISTEN " TRIGGERS_CHANNEL)) {
        conn_failed(n, PQerrorMessage(n->pc.pg));
        return;
    }
    set_state(n, N_LISTEN_SENT);
    evtimer_add(&n->timer, &n->params->connect_tv); /* LISTEN is answered in time too */
    conn_flush(n);
}

static void
conn_connect_failed(void *arg, const char *msg)
{
    conn_failed(arg, msg);
}

static void
conn_io(void *arg, short what)
{
    struct notifier *n = arg;

    if ((what & EV_WRITE) && conn_flush(n) < 0)
        return;
    if (what & EV_READ)
        conn_read(n);
}

static const struct pg_conn_handler conn_handler = {
    .up = conn_up,
    .failed = conn_connect_failed,
    .io = conn_io,
};

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct notifier *n = arg;

    (void)fd;
    (void)what;
    switch (n->st) {
    case N_LISTEN_SENT:
        conn_failed(n, "timeout expired while connecting");
        break;
    case N_BACKOFF:
        conn_start(n);
        break;
    case N_STOPPING:
        event_base_loopexit(n->base, NULL); /* invalidations in flight took too long */
        break;
    default:
        break;
    }
}

/* Listens while the policy serving now declares on_change, and only then. */
static void
check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct notifier *n = arg;
    struct policy *p = n->cfg.policy(n->cfg.ctx);
    int want = p->non_change > 0;

    (void)fd;
    (void)what;
    policy_release(p);
    if (want && n->st == N_IDLE) {
        conn_start(n);
    } else if (!want && n->st != N_IDLE && n->st != N_STOPPING) {
        if (n->listened)
            log_info("notify: the policy declares no on_change now: not listening");
        conn_close(n);
        n->listened = 0;
        n->down_logged = 0;
        n->backoff_ms = 0;
        set_state(n, N_IDLE);
    }
}

static void
stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct notifier *n = arg;
    struct timeval tv = util_ms_to_tv(DRAIN_MS);

    (void)fd;
    (void)what;
    conn_close(n);
    event_del(&n->check);
    set_state(n, N_STOPPING);
    if (n->inflight == 0)
        event_base_loopexit(n->base, NULL);
    else
        evtimer_add(&n->timer, &tv);
}

static void *
notify_thread(void *arg)
{
    struct notifier *n = arg;
    struct timeval tv = util_ms_to_tv(POLICY_CHECK_MS);

    check_cb(-1, 0, n);
    event_add(&n->check, &tv);
    event_base_dispatch(n->base);
    conn_close(n);
    if (n->store)
        n->store->ops->destroy(n->store); /* answers what is still in flight */
    n->store = NULL;
    notify_tags_free(&n->pending);
    return NULL;
}

/* ---- construction ---- */

/*
 * The pool's reading of the conninfo, plus a name of its own and TCP
 * keepalives: a silently dead peer is noticed in about 25 s rather than hours.
 */
static const struct pg_conn_options listener_options = {
    .fallback_application_name = "sluice notify",
    .keepalives = 1,
};

struct notifier *
notify_start(const struct notify_config *cfg, char *err, size_t errlen)
{
    struct notifier *n = xcalloc(1, sizeof(*n));

    n->cfg = *cfg;
    n->cfg.conninfo = NULL;
    pthread_mutex_init(&n->lock, NULL);
    n->params = pg_conn_params_new(cfg->conninfo, &listener_options, err, errlen);
    if (!n->params)
        goto fail;
    n->base = event_base_new();
    if (!n->base) {
        util_seterr(err, errlen, "cannot create an event base");
        goto fail;
    }
    pg_conn_init(&n->pc, n->base, n->params, &conn_handler, n);
    evtimer_assign(&n->timer, n->base, timer_cb, n);
    event_assign(&n->check, n->base, -1, EV_PERSIST, check_cb, n);
    event_assign(&n->stop, n->base, -1, 0, stop_cb, n);
    if (pthread_create(&n->thread, NULL, notify_thread, n) != 0) {
        util_seterr(err, errlen, "cannot start the notify thread");
        goto fail;
    }
    return n;
fail:
    if (n->base)
        event_base_free(n->base);
    pg_conn_params_free(n->params);
    pthread_mutex_destroy(&n->lock);
    free(n);
    return NULL;
}

void
notify_stop(struct notifier *n)
{
    if (!n)
        return;
    event_active(&n->stop, EV_TIMEOUT, 1);
    pthread_join(n->thread, NULL);
    if (n->notifications || n->reconnects || n->errors)
        log_info("notify: %llu notifications, %llu tags invalidated, %llu reconnects, "
                 "%llu errors",
                 (unsigned long long)n->notifications, (unsigned long long)n->invalidations,
                 (unsigned long long)n->reconnects, (unsigned long long)n->errors);
    event_del(&n->check);
    event_del(&n->stop);
    event_base_free(n->base);
    pg_conn_params_free(n->params);
    pthread_mutex_destroy(&n->lock);
    free(n);
}

json_t *
notify_status(struct notifier *n)
{
    json_t *o;

    pthread_mutex_lock(&n->lock);
    o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "state", state_names[n->shown],
                  "channel", TRIGGERS_CHANNEL, "notifications", (json_int_t)n->notifications,
                  "unmatched", (json_int_t)n->unmatched, "invalidations",
                  (json_int_t)n->invalidations, "drops_all", (json_int_t)n->drops_all, "reconnects",
                  (json_int_t)n->reconnects, "errors", (json_int_t)n->errors);
    json_t *e = n->last_error[0] ? json_string(n->last_error) : json_null();
    json_object_set_new(o, "last_error", e ? e : json_string("(not UTF-8)"));
    json_object_set_new(o, "last_error_at",
                        n->last_error_at ? json_integer((json_int_t)n->last_error_at)
                                         : json_null());
    pthread_mutex_unlock(&n->lock);
    return o;
}
