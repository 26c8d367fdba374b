/* test_pg_conn.c - the libpq connection core (origin/pg_conn.c) against a real PostgreSQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "net_helpers.h"
#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "db.h"
#include "notify.h"
#include "pg_conn.h"
#include "policy.h"
#include "store.h"
#include "store_memory.h"
#include "triggers.h"

/* What the LISTEN connection of notify.c adds to the conninfo. */
static const struct pg_conn_options listener_options = {
    .fallback_application_name = "sluice notify",
    .keepalives = 1,
};

/* The settings a connection ended up with, one text. */
#define SETTINGS_SQL                                                                               \
    "SELECT concat_ws('|', current_setting('application_name'), current_setting('work_mem'), "     \
    "current_user, current_database())"

static double
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---- environment ---- */

struct env_saved {
    const char *name;
    char *value; /* NULL: was unset */
};

/* Sets (value NULL: unsets) an environment variable, remembering what it was. */
static struct env_saved
env_set(const char *name, const char *value)
{
    struct env_saved s = {name, getenv(name) ? strdup(getenv(name)) : NULL};
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
    return s;
}

static void
env_restore(struct env_saved *s)
{
    if (s->value)
        setenv(s->name, s->value, 1);
    else
        unsetenv(s->name);
    free(s->value);
    s->value = NULL;
}

/* ---- an event loop that runs until `remaining` answers came ---- */

struct loop {
    struct event_base *base;
    int remaining;
    int timed_out;
};

static void
guard_cb(evutil_socket_t fd, short what, void *arg)
{
    struct loop *l = arg;
    (void)fd;
    (void)what;
    l->timed_out = 1;
    event_base_loopbreak(l->base);
}

static void
loop_run(struct loop *l, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    struct event *guard = evtimer_new(l->base, guard_cb, l);

    if (l->remaining > 0) {
        l->timed_out = 0;
        evtimer_add(guard, &tv);
        event_base_dispatch(l->base);
    }
    event_free(guard);
    if (l->timed_out)
        fail_msg("event loop timed out with %d answers missing", l->remaining);
}

static void
loop_answered(struct loop *l)
{
    if (--l->remaining == 0)
        event_base_loopbreak(l->base);
}

/* ---- a connection as notify.c drives one: pg_conn alone ---- */

struct probe {
    struct loop *loop;
    struct pg_conn pc;
    int up, failed, done;
    double at_ms;
    char msg[512];
    char *value;      /* first column of the first row, owned */
    char *keepalives; /* the keepalives_idle libpq applied, owned; NULL: none */
};

static void
probe_up(void *arg)
{
    struct probe *p = arg;
    PQconninfoOption *opts = PQconninfo(p->pc.pg);

    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "keepalives_idle") == 0 && o->val && *o->val)
            p->keepalives = strdup(o->val);
    PQconninfoFree(opts);
    p->up = 1;
    p->at_ms = now_ms();
    loop_answered(p->loop);
}

static void
probe_failed(void *arg, const char *msg)
{
    struct probe *p = arg;

    p->failed = 1;
    p->at_ms = now_ms();
    snprintf(p->msg, sizeof p->msg, "%s", msg);
    pg_conn_close(&p->pc);
    loop_answered(p->loop);
}

static void
probe_io(void *arg, short what)
{
    struct probe *p = arg;
    PGresult *r;

    if (what & EV_WRITE)
        assert_int_equal(pg_conn_flush(&p->pc), 0);
    if (!(what & EV_READ))
        return;
    assert_int_equal(PQconsumeInput(p->pc.pg), 1);
    while (!p->done && !PQisBusy(p->pc.pg)) {
        r = PQgetResult(p->pc.pg);
        if (r == NULL) {
            p->done = 1;
            loop_answered(p->loop);
            break;
        }
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
            fail_msg("probe: %s", PQresultErrorMessage(r));
        free(p->value);
        p->value = strdup(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
}

static const struct pg_conn_handler probe_handler = {
    .up = probe_up,
    .failed = probe_failed,
    .io = probe_io,
};

/* Starts p connecting to conninfo with options o; 0, or -1 when it failed at once. */
static int
probe_start(struct probe *p, struct loop *l, struct pg_conn_params *params)
{
    memset(p, 0, sizeof *p);
    p->loop = l;
    pg_conn_init(&p->pc, l->base, params, &probe_handler, p);
    if (pg_conn_start(&p->pc, p->msg, sizeof p->msg) < 0) {
        p->failed = 1;
        p->at_ms = now_ms();
        pg_conn_close(&p->pc);
        return -1;
    }
    l->remaining++;
    return 0;
}

static void
probe_free(struct probe *p)
{
    pg_conn_close(&p->pc);
    free(p->value);
    free(p->keepalives);
    p->value = p->keepalives = NULL;
}

/* Runs `sql` on a connection made with `o` (the listener's way); the answer, owned. */
static char *
listener_query(const char *conninfo, const char *sql, char **keepalives)
{
    struct loop l = {.base = event_base_new()};
    struct probe p;
    char err[256] = "";
    struct pg_conn_params *params =
        pg_conn_params_new(conninfo, &listener_options, err, sizeof err);
    char *value;

    if (params == NULL)
        fail_msg("pg_conn_params_new: %s", err);
    assert_int_equal(probe_start(&p, &l, params), 0);
    loop_run(&l, 5000);
    if (!p.up)
        fail_msg("listener: %s", p.msg);
    assert_int_equal(PQsendQuery(p.pc.pg, sql), 1);
    assert_int_equal(pg_conn_flush(&p.pc), 0);
    l.remaining = 1;
    loop_run(&l, 5000);
    assert_true(p.done);
    value = p.value;
    p.value = NULL;
    if (keepalives) {
        *keepalives = p.keepalives;
        p.keepalives = NULL;
    }
    probe_free(&p);
    pg_conn_params_free(params);
    event_base_free(l.base);
    assert_non_null(value);
    return value;
}

/* ---- the pool ---- */

struct answer {
    struct loop *loop;
    enum db_status status;
    char *value;
    char detail[512];
    double at_ms;
};

static void
on_answer(void *arg, const struct db_result *res)
{
    struct answer *a = arg;

    a->status = res->status;
    a->value = res->value ? strndup(res->value, res->value_len) : NULL;
    snprintf(a->detail, sizeof a->detail, "%s", res->detail);
    a->at_ms = now_ms();
    loop_answered(a->loop);
}

/* Runs `sql` on a fresh pool; the answer, owned. */
static char *
pool_query(const char *conninfo, const char *sql)
{
    struct loop l = {.base = event_base_new()};
    struct answer a = {.loop = &l};
    char err[256] = "";
    struct db_pool *pool = db_pool_new(l.base, conninfo, 1, 5000, 16, err, sizeof err);

    if (pool == NULL)
        fail_msg("db_pool_new: %s", err);
    l.remaining = 1;
    assert_int_equal(db_query(pool, sql, 0, NULL, DB_READ, on_answer, &a), 0);
    loop_run(&l, 5000);
    if (a.status != DB_OK)
        fail_msg("pool: %s", a.detail);
    db_pool_free(pool);
    event_base_free(l.base);
    assert_non_null(a.value);
    return a.value;
}

/* ---- parameters ---- */

/* The value params pass for keyword, or NULL. */
static const char *
param(const struct pg_conn_params *params, const char *keyword)
{
    const char *v = NULL;
    for (size_t i = 0; params->keywords[i]; i++)
        if (strcmp(params->keywords[i], keyword) == 0)
            v = params->values[i]; /* the last one wins, as in libpq */
    return v;
}

static void
test_bad_conninfo(void **state)
{
    static const char *const bad[] = {"nonsense", "host=x nosuchoption=1", "postgresql://h/db?x=1"};
    struct event_base *base = event_base_new();
    (void)state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "", pool_err[256] = "";
        assert_null(pg_conn_params_new(bad[i], &listener_options, err, sizeof err));
        assert_non_null(strstr(err, "bad conninfo: "));
        /* The pool refuses it with the same words. */
        assert_null(db_pool_new(base, bad[i], 1, 1000, 1, pool_err, sizeof pool_err));
        assert_string_equal(err, pool_err);
    }
    event_base_free(base);
}

static void
test_params(void **state)
{
    const struct pg_conn_options pool_like = {.fallback_application_name = "sluice",
                                              .server_options = "-c statement_timeout=5000"};
    struct env_saved opt = env_set("PGOPTIONS", NULL), ct = env_set("PGCONNECT_TIMEOUT", NULL);
    struct pg_conn_params *p;
    char err[256];
    (void)state;

    /* What conninfo sets wins over the owner's defaults; options are joined. */
    p = pg_conn_params_new("application_name=a fallback_application_name=f keepalives_idle=30 "
                           "options='-c work_mem=2MB' connect_timeout=7 dbname=d",
                           &listener_options, err, sizeof err);
    assert_non_null(p);
    assert_string_equal(param(p, "application_name"), "a");
    assert_string_equal(param(p, "fallback_application_name"), "f");
    assert_string_equal(param(p, "keepalives_idle"), "30");
    assert_string_equal(param(p, "keepalives_interval"), "5");
    assert_string_equal(param(p, "keepalives_count"), "3");
    assert_string_equal(param(p, "options"), "-c work_mem=2MB");
    assert_string_equal(param(p, "dbname"), "d");
    assert_int_equal(p->connect_tv.tv_sec, 7);
    pg_conn_params_free(p);

    p = pg_conn_params_new("options='-c work_mem=2MB'", &pool_like, err, sizeof err);
    assert_string_equal(param(p, "options"), "-c work_mem=2MB -c statement_timeout=5000");
    assert_string_equal(param(p, "fallback_application_name"), "sluice");
    assert_null(param(p, "keepalives_idle"));
    assert_int_equal(p->connect_tv.tv_sec, 2); /* the default */
    pg_conn_params_free(p);

    /* A URI: its query parameters are settings like any other; no "dbname" expansion. */
    p = pg_conn_params_new("postgresql://h:5433/db?application_name=u&options=-c%20work_mem%3D3MB"
                           "&connect_timeout=4",
                           &listener_options, err, sizeof err);
    assert_non_null(p);
    assert_string_equal(param(p, "host"), "h");
    assert_string_equal(param(p, "port"), "5433");
    assert_string_equal(param(p, "dbname"), "db");
    assert_string_equal(param(p, "application_name"), "u");
    assert_string_equal(param(p, "options"), "-c work_mem=3MB");
    assert_string_equal(param(p, "fallback_application_name"), "sluice notify");
    assert_int_equal(p->connect_tv.tv_sec, 4);
    pg_conn_params_free(p);

    /* Empty: the environment. PGOPTIONS is joined only when the owner adds options. */
    setenv("PGOPTIONS", "-c work_mem=4MB", 1);
    setenv("PGCONNECT_TIMEOUT", "3", 1);
    p = pg_conn_params_new("", &pool_like, err, sizeof err);
    assert_string_equal(param(p, "options"), "-c work_mem=4MB -c statement_timeout=5000");
    assert_int_equal(p->connect_tv.tv_sec, 3);
    pg_conn_params_free(p);
    p = pg_conn_params_new(NULL, &listener_options, err, sizeof err);
    assert_null(param(p, "options")); /* libpq reads PGOPTIONS itself */
    assert_null(param(p, "host"));
    assert_int_equal(p->connect_tv.tv_sec, 3);
    pg_conn_params_free(p);
    /* connect_timeout=0 (libpq: wait forever) still gets the engine's deadline. */
    p = pg_conn_params_new("connect_timeout=0", NULL, err, sizeof err);
    assert_int_equal(p->connect_tv.tv_sec, 2);
    pg_conn_params_free(p);

    env_restore(&opt);
    env_restore(&ct);
}

/* ---- the pool and the listener read a conninfo alike ---- */

/* SETTINGS_SQL's answer for application name `app` and work_mem `mem`. */
static void
expected_settings(char *out, size_t len, const char *app, const char *mem)
{
    PGconn *side = PQconnectdb("");
    PGresult *r;

    assert_int_equal(PQstatus(side), CONNECTION_OK);
    r = PQexec(side, "SELECT concat_ws('|', current_user, current_database())");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    snprintf(out, len, "%s|%s|%s", app, mem, PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(side);
}

static void
assert_both(const char *conninfo, const char *want)
{
    char *pool = pool_query(conninfo, SETTINGS_SQL);
    char *listener = listener_query(conninfo, SETTINGS_SQL, NULL);

    assert_string_equal(pool, want);
    assert_string_equal(listener, want);
    free(pool);
    free(listener);
}

static void
test_same_settings(void **state)
{
    struct env_saved app = env_set("PGAPPNAME", NULL), opt = env_set("PGOPTIONS", NULL);
    char want[512];
    (void)state;

    expected_settings(want, sizeof want, "pgc_kv", "1234kB");
    assert_both("application_name=pgc_kv options='-c work_mem=1234kB'", want);

    expected_settings(want, sizeof want, "pgc_uri", "2345kB");
    assert_both("postgresql://?application_name=pgc_uri&options=-c%20work_mem%3D2345kB", want);

    /* NULL and "": the PG* environment, for both. */
    setenv("PGAPPNAME", "pgc_env", 1);
    setenv("PGOPTIONS", "-c work_mem=3456kB", 1);
    expected_settings(want, sizeof want, "pgc_env", "3456kB");
    assert_both("", want);
    assert_both(NULL, want);

    env_restore(&app);
    env_restore(&opt);
}

static void
test_own_defaults(void **state)
{
    struct env_saved app = env_set("PGAPPNAME", NULL);
    char *v, *keepalives;
    (void)state;

    /* Each owner names itself when nothing else does; a name given wins for both. */
    v = pool_query("", "SELECT current_setting('application_name')");
    assert_string_equal(v, "sluice");
    free(v);
    v = listener_query("", "SELECT current_setting('application_name')", &keepalives);
    assert_string_equal(v, "sluice notify");
    free(v);
    assert_string_equal(keepalives, "10");
    free(keepalives);
    v = pool_query("fallback_application_name=fb", "SELECT current_setting('application_name')");
    assert_string_equal(v, "fb");
    free(v);
    v = listener_query("fallback_application_name=fb", "SELECT current_setting('application_name')",
                       &keepalives);
    assert_string_equal(v, "fb");
    free(v);
    free(keepalives);
    v = listener_query("keepalives_idle=30", "SELECT 1", &keepalives);
    assert_string_equal(keepalives, "30");
    free(v);
    free(keepalives);
    env_restore(&app);
}

/* ---- failing to connect ---- */

/* Connects a listener and a pool to conninfo at once; both must fail in [lo, hi) ms. */
static void
assert_both_fail(const char *conninfo, double lo, double hi, const char *why)
{
    struct loop l = {.base = event_base_new()};
    struct answer a = {.loop = &l};
    struct probe p;
    char err[256] = "";
    struct pg_conn_params *params =
        pg_conn_params_new(conninfo, &listener_options, err, sizeof err);
    struct db_pool *pool = db_pool_new(l.base, conninfo, 1, 10000, 16, err, sizeof err);
    double t0 = now_ms();

    assert_non_null(params);
    assert_non_null(pool);
    probe_start(&p, &l, params);
    l.remaining++;
    assert_int_equal(db_query(pool, "SELECT 1", 0, NULL, DB_READ, on_answer, &a), 0);
    loop_run(&l, 5000);
    assert_true(p.failed && !p.up);
    assert_int_equal(a.status, DB_UNAVAILABLE);
    if (why) {
        if (!strstr(p.msg, why) || !strstr(a.detail, why))
            fail_msg("expected \"%s\" from both: \"%s\" and \"%s\"", why, p.msg, a.detail);
    }
    if (p.at_ms - t0 < lo || p.at_ms - t0 >= hi || a.at_ms - t0 < lo || a.at_ms - t0 >= hi)
        fail_msg("failed after %.0f and %.0f ms, not in [%.0f, %.0f)", p.at_ms - t0, a.at_ms - t0,
                 lo, hi);
    probe_free(&p);
    db_pool_free(pool);
    pg_conn_params_free(params);
    event_base_free(l.base);
    free(a.value);
}

static void
test_connect_deadline(void **state)
{
    struct env_saved ct = env_set("PGCONNECT_TIMEOUT", NULL);
    char conninfo[128];
    int port, fd = test_listen_loopback(16, &port);
    (void)state;

    /* PQconnectPoll applies no timeout itself: pg_conn's deadline ends the attempt. */
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d connect_timeout=1", port);
    assert_both_fail(conninfo, 900, 1900, "timeout");
    snprintf(conninfo, sizeof conninfo, "postgresql://127.0.0.1:%d/?connect_timeout=1", port);
    assert_both_fail(conninfo, 900, 1900, "timeout");
    setenv("PGCONNECT_TIMEOUT", "1", 1);
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d", port);
    assert_both_fail(conninfo, 900, 1900, "timeout");
    unsetenv("PGCONNECT_TIMEOUT");
    assert_both_fail(conninfo, 1900, 2900, "timeout"); /* the engine's 2 s */
    close(fd);
    env_restore(&ct);
}

static void
test_refused(void **state)
{
    (void)state;
    /* Nothing listens on port 1: both give up at once, well before any deadline. */
    assert_both_fail("host=127.0.0.1 port=1 connect_timeout=5", 0, 1000, NULL);
}

/* ---- the listener of notify.c ---- */

static struct policy_on_change watched = {.table = "pgc_watched"};
static struct policy watching = {.refs = 1, .on_change = &watched, .non_change = 1};

struct listener_ctx {
    struct store_memory *mem;
    int stores; /* handles asked for */
};

static struct policy *
ctx_policy(void *ctx)
{
    (void)ctx;
    policy_ref(&watching);
    return &watching;
}

static struct store *
ctx_store_new(void *ctx, struct event_base *base, const char *name)
{
    struct listener_ctx *c = ctx;

    (void)base;
    assert_string_equal(name, "notify");
    c->stores++;
    return store_memory_handle(c->mem);
}

/* Rows of `sql` (one text column) on `side`, joined with spaces. */
static void
side_query(PGconn *side, const char *sql, char *out, size_t len)
{
    PGresult *r = PQexec(side, sql);
    size_t o = 0;

    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    out[0] = '\0';
    for (int i = 0; i < PQntuples(r); i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? " " : "", PQgetvalue(r, i, 0));
    PQclear(r);
}

#define LISTENERS_SQL                                                                              \
    "SELECT application_name FROM pg_stat_activity WHERE query = 'LISTEN " TRIGGERS_CHANNEL        \
    "' AND pid <> pg_backend_pid()"

/* Whether n is listening, waiting up to 5 s for it. */
static int
wait_listening(struct notifier *n)
{
    for (int i = 0; i < 250; i++) {
        json_t *st = notify_status(n);
        int ok = strcmp(json_string_value(json_object_get(st, "state")), "listening") == 0;
        json_decref(st);
        if (ok)
            return 1;
        usleep(20000);
    }
    return 0;
}

/* Starts a notifier on conninfo; the application_name its LISTEN connection has, owned. */
static char *
listener_app_name(const char *conninfo)
{
    struct listener_ctx ctx = {.mem = store_memory_new(1 << 20, 1 << 20)};
    struct notify_config cfg = {
        .conninfo = conninfo, .policy = ctx_policy, .store_new = ctx_store_new, .ctx = &ctx};
    PGconn *side = PQconnectdb("");
    char err[256] = "", names[512] = "";
    struct notifier *n = notify_start(&cfg, err, sizeof err);

    if (n == NULL)
        fail_msg("notify_start: %s", err);
    assert_int_equal(PQstatus(side), CONNECTION_OK);
    assert_true(wait_listening(n));
    side_query(side, LISTENERS_SQL, names, sizeof names);
    notify_stop(n);
    /* The backend goes a moment after the connection closes. */
    for (int i = 0; i < 100; i++) {
        char left[512];
        side_query(side, LISTENERS_SQL, left, sizeof left);
        if (!*left)
            break;
        usleep(20000);
    }
    PQfinish(side);
    store_memory_free(ctx.mem);
    assert_int_equal(ctx.stores, 1);
    return strdup(names);
}

static void
test_listener(void **state)
{
    struct env_saved app = env_set("PGAPPNAME", NULL);
    struct notify_config cfg = {.policy = ctx_policy, .store_new = ctx_store_new};
    struct event_base *base = event_base_new();
    char err[256] = "", pool_err[256] = "", *name, *pool;
    (void)state;

    /* notify.c's own connection: the settings the pool honours, the name it falls back to. */
    name = listener_app_name("application_name=pgc_notify_kv");
    assert_string_equal(name, "pgc_notify_kv");
    free(name);
    name = listener_app_name("postgresql://?application_name=pgc_notify_uri");
    assert_string_equal(name, "pgc_notify_uri");
    free(name);
    name = listener_app_name("");
    assert_string_equal(name, "sluice notify");
    free(name);
    setenv("PGAPPNAME", "pgc_notify_env", 1);
    name = listener_app_name(NULL);
    pool = pool_query(NULL, "SELECT current_setting('application_name')");
    assert_string_equal(name, "pgc_notify_env");
    assert_string_equal(pool, "pgc_notify_env");
    free(name);
    free(pool);

    /* What the pool refuses, the listener refuses with the same words. */
    cfg.conninfo = "mydb";
    assert_null(notify_start(&cfg, err, sizeof err));
    assert_null(db_pool_new(base, "mydb", 1, 1000, 1, pool_err, sizeof pool_err));
    assert_string_equal(err, pool_err);
    event_base_free(base);
    env_restore(&app);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_conninfo),     cmocka_unit_test(test_params),
        cmocka_unit_test(test_same_settings),    cmocka_unit_test(test_own_defaults),
        cmocka_unit_test(test_connect_deadline), cmocka_unit_test(test_refused),
        cmocka_unit_test(test_listener),
    };

    if (getenv("PGHOST") == NULL || *getenv("PGHOST") == '\0') {
        fprintf(stderr, "test_pg_conn: PGHOST is not set; these tests need a PostgreSQL server. "
                        "Run them under tests/with-pg.sh (or pg_virtualenv).\n");
        return 1;
    }
    evthread_use_pthreads(); /* the notifier runs a thread of its own */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
