/* pg_conn.c - one libpq connection on an event loop: conninfo, connect with a deadline, flush. */
#include "pg_conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

#define CONNECT_TIMEOUT_MS 2000 /* when neither conninfo nor PGCONNECT_TIMEOUT sets one */

/* ---- conninfo ---- */

static const char *const keepalive_defaults[][2] = {
    {"keepalives_idle", "10"},
    {"keepalives_interval", "5"},
    {"keepalives_count", "3"},
};

#define NKEEPALIVE (sizeof keepalive_defaults / sizeof keepalive_defaults[0])

static void
free_strv(char **v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

/* The value conninfo gives `keyword`, or NULL. */
static const char *
option_value(const PQconninfoOption *opts, const char *keyword)
{
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++)
        if (strcmp(o->keyword, keyword) == 0)
            return o->val;
    return NULL;
}

/* Appends keyword = value (taken) to params. */
static void
add_param(struct pg_conn_params *params, size_t *k, const char *keyword, char *value)
{
    params->keywords[*k] = xstrdup(keyword);
    params->values[(*k)++] = value;
}

struct pg_conn_params *
pg_conn_params_new(const char *conninfo, const struct pg_conn_options *o, char *err, size_t errlen)
{
    static const struct pg_conn_options none;
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo ? conninfo : "", &msg);
    struct pg_conn_params *params;
    const char *options, *timeout;
    size_t n = 0, k = 0;

    if (opts == NULL) {
        char *line = pg_conn_first_line(msg ? msg : "out of memory");
        util_seterr(err, errlen, "bad conninfo: %s", line);
        free(line);
        PQfreemem(msg);
        return NULL;
    }
    if (o == NULL)
        o = &none;
    for (PQconninfoOption *opt = opts; opt->keyword != NULL; opt++)
        n++;
    params = xcalloc(1, sizeof *params);
    params->keywords = xcalloc(n + NKEEPALIVE + 2, sizeof *params->keywords);
    params->values = xcalloc(n + NKEEPALIVE + 2, sizeof *params->values);

    /* What conninfo sets, as it is; "options" last, with the owner's appended. */
    for (PQconninfoOption *opt = opts; opt->keyword != NULL; opt++)
        if (opt->val != NULL && strcmp(opt->keyword, "options") != 0)
            add_param(params, &k, opt->keyword, xstrdup(opt->val));
    if (o->fallback_application_name && !option_value(opts, "fallback_application_name"))
        add_param(params, &k, "fallback_application_name", xstrdup(o->fallback_application_name));
    for (size_t i = 0; o->keepalives && i < NKEEPALIVE; i++)
        if (!option_value(opts, keepalive_defaults[i][0]))
            add_param(params, &k, keepalive_defaults[i][0], xstrdup(keepalive_defaults[i][1]));
    options = option_value(opts, "options");
    if (o->server_options) {
        if (options == NULL)
            options = getenv("PGOPTIONS"); /* libpq reads it only when "options" is not given */
        add_param(params, &k, "options",
                  xasprintf("%s%s%s", options ? options : "", options && *options ? " " : "",
                            o->server_options));
    } else if (options != NULL) {
        add_param(params, &k, "options", xstrdup(options));
    }

    timeout = option_value(opts, "connect_timeout");
    if (timeout == NULL)
        timeout = getenv("PGCONNECT_TIMEOUT");
    params->connect_tv = util_ms_to_tv(CONNECT_TIMEOUT_MS);
    if (timeout != NULL && atoi(timeout) > 0)
        params->connect_tv = util_ms_to_tv((uint64_t)atoi(timeout) * 1000);
    PQconninfoFree(opts);
    return params;
}

void
pg_conn_params_free(struct pg_conn_params *params)
{
    if (params == NULL)
        return;
    free_strv(params->keywords);
    free_strv(params->values);
    free(params);
}

char *
pg_conn_first_line(const char *msg)
{
    static const char *const prefixes[] = {"ERROR:  ", "FATAL:  ", "PANIC:  "};

    if (msg == NULL || *msg == '\0')
        msg = "unknown error";
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t plen = strlen(prefixes[i]);
        if (strncmp(msg, prefixes[i], plen) == 0) {
            msg += plen;
            break;
        }
    }
    return xstrndup(msg, strcspn(msg, "\n"));
}

/* ---- the connection ---- */

static void io_cb(evutil_socket_t fd, short what, void *arg);

static void
ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static void
unwatch(struct pg_conn *c)
{
    if (c->fd >= 0) {
        event_del(&c->rd);
        event_del(&c->wr);
        c->fd = -1;
    }
    c->writing = 0;
}

/* Points rd and wr at the connection's current socket (it changes between hosts). */
static int
watch(struct pg_conn *c)
{
    evutil_socket_t fd = PQsocket(c->pg);

    unwatch(c);
    if (fd < 0)
        return -1;
    event_assign(&c->rd, c->base, fd, EV_READ | EV_PERSIST, io_cb, c);
    event_assign(&c->wr, c->base, fd, EV_WRITE | EV_PERSIST, io_cb, c);
    c->fd = fd;
    return 0;
}

/* Waits for the socket to be readable or writable; -1: the connection has no socket. */
static int
connect_wait(struct pg_conn *c, short what)
{
    if (watch(c) < 0)
        return -1;
    event_add(what == EV_READ ? &c->rd : &c->wr, NULL);
    return 0;
}

static void
connected(struct pg_conn *c)
{
    if (PQsetnonblocking(c->pg, 1) != 0 || watch(c) < 0) {
        c->h->failed(c->arg, PQerrorMessage(c->pg));
        return;
    }
    c->connecting = 0;
    evtimer_del(&c->deadline);
    event_add(&c->rd, NULL);
    c->h->up(c->arg);
}

static void
connect_poll(struct pg_conn *c)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pg);

    switch (st) {
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        if (connect_wait(c, st == PGRES_POLLING_READING ? EV_READ : EV_WRITE) < 0)
            c->h->failed(c->arg, "connection has no socket");
        break;
    case PGRES_POLLING_OK:
        connected(c);
        break;
    default:
        c->h->failed(c->arg, PQerrorMessage(c->pg));
        break;
    }
}

static void
io_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;

    (void)fd;
    if (c->connecting)
        connect_poll(c);
    else if (c->pg != NULL)
        c->h->io(c->arg, what);
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;

    (void)fd;
    (void)what;
    if (c->connecting)
        c->h->failed(c->arg, "timeout expired while connecting");
}

void
pg_conn_init(struct pg_conn *c, struct event_base *base, const struct pg_conn_params *params,
             const struct pg_conn_handler *h, void *arg)
{
    memset(c, 0, sizeof *c);
    c->base = base;
    c->params = params;
    c->h = h;
    c->arg = arg;
    c->fd = -1;
    evtimer_assign(&c->deadline, base, deadline_cb, c);
}

int
pg_conn_start(struct pg_conn *c, char *err, size_t errlen)
{
    const struct pg_conn_params *params = c->params;

    c->pg = PQconnectStartParams((const char *const *)params->keywords,
                                 (const char *const *)params->values, 0);
    if (c->pg == NULL) {
        log_abort("out of memory (libpq connection)");
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        util_seterr(err, errlen, "%s", PQerrorMessage(c->pg));
        return -1;
    }
    PQsetNoticeProcessor(c->pg, ignore_notice, NULL);
    c->connecting = 1;
    evtimer_add(&c->deadline, &params->connect_tv);
    /* Before the first PQconnectPoll, libpq wants the socket writable. */
    if (connect_wait(c, EV_WRITE) < 0) {
        util_seterr(err, errlen, "connection has no socket");
        return -1;
    }
    return 0;
}

int
pg_conn_flush(struct pg_conn *c)
{
    int r = PQflush(c->pg);

    if (r == 0 && c->writing) {
        event_del(&c->wr);
        c->writing = 0;
    } else if (r == 1 && !c->writing) {
        event_add(&c->wr, NULL);
        c->writing = 1;
    }
    return r < 0 ? -1 : 0;
}

void
pg_conn_close(struct pg_conn *c)
{
    unwatch(c);
    evtimer_del(&c->deadline);
    PQfinish(c->pg);
    c->pg = NULL;
    c->connecting = 0;
}
