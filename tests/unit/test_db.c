/* test_db.c - tests of the libpq pool (engine/db.c) against a real PostgreSQL server. */
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
#include <libpq-fe.h>

#include "db.h"

/* conninfo "" lets libpq read PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE. */
#define CONNINFO ""

struct loop {
    struct event_base *base;
    int remaining; /* answers still expected */
    int timed_out;
    struct event *guard;
};

/* One expected answer, recorded by on_answer. */
struct call {
    struct loop *loop;
    int n; /* times answered */
    enum db_status status;
    char *value; /* owned copy, NULL for SQL NULL / no row */
    size_t value_len;
    long nrows;
    long affected;
    char sqlstate[8];
    char detail[512];
    double at_ms;
    /* optional action run inside the callback */
    void (*then)(struct call *);
    struct db_pool *pool;
    int requery_rc;
};

static double
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void
on_answer(void *arg, const struct db_result *res)
{
    struct call *c = arg;

    c->n++;
    c->at_ms = now_ms();
    c->status = res->status;
    free(c->value);
    c->value = NULL;
    if (res->value != NULL) {
        c->value = malloc(res->value_len + 1);
        assert_non_null(c->value);
        memcpy(c->value, res->value, res->value_len);
        c->value[res->value_len] = '\0';
    }
    c->value_len = res->value_len;
    c->nrows = res->nrows;
    c->affected = res->affected;
    assert_non_null(res->sqlstate);
    assert_non_null(res->detail);
    snprintf(c->sqlstate, sizeof c->sqlstate, "%s", res->sqlstate);
    snprintf(c->detail, sizeof c->detail, "%s", res->detail);
    if (c->then != NULL)
        c->then(c);
    if (c->loop != NULL && --c->loop->remaining == 0)
        event_base_loopbreak(c->loop->base);
}

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
loop_init(struct loop *l)
{
    memset(l, 0, sizeof *l);
    l->base = event_base_new();
    assert_non_null(l->base);
}

/* Runs the loop until `remaining` reaches 0; fails after timeout_ms. */
static void
loop_run(struct loop *l, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};

    if (l->remaining == 0)
        return;
    l->timed_out = 0;
    l->guard = evtimer_new(l->base, guard_cb, l);
    evtimer_add(l->guard, &tv);
    event_base_dispatch(l->base);
    event_free(l->guard);
    l->guard = NULL;
    if (l->timed_out)
        fail_msg("event loop timed out with %d answers missing", l->remaining);
}

/* Runs the loop for ms milliseconds whatever happens. */
static void
loop_for(struct loop *l, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(l->base, &tv);
    event_base_dispatch(l->base);
}

static void
loop_done(struct loop *l)
{
    event_base_free(l->base);
}

static struct db_pool *
pool_new(struct loop *l, const char *conninfo, unsigned size, uint64_t deadline_ms,
         unsigned max_queue)
{
    char err[256] = "";
    struct db_pool *p =
        db_pool_new(l->base, conninfo, size, deadline_ms, max_queue, err, sizeof err);
    if (p == NULL)
        fail_msg("db_pool_new: %s", err);
    return p;
}

static void
submit_flags(struct db_pool *p, struct call *c, struct loop *l, const char *sql, int nparams,
             const char *const *params, unsigned flags)
{
    c->loop = l;
    l->remaining++;
    assert_int_equal(db_query(p, sql, nparams, params, flags, on_answer, c), 0);
}

/* A statement that only reads: it may wait behind others on a busy connection. */
static void
submit(struct db_pool *p, struct call *c, struct loop *l, const char *sql, int nparams,
       const char *const *params)
{
    submit_flags(p, c, l, sql, nparams, params, DB_READ);
}

static void
call_free(struct call *c)
{
    free(c->value);
    c->value = NULL;
}

/* Runs one statement on a fresh pool and returns its answer in *c. */
static void
run_one(struct call *c, const char *sql, int nparams, const char *const *params)
{
    struct loop l;
    struct db_pool *p;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, 16);
    submit(p, c, &l, sql, nparams, params);
    assert_int_equal(c->n, 0);
    loop_run(&l, 5000);
    assert_int_equal(c->n, 1);
    db_pool_free(p);
    assert_int_equal(c->n, 1);
    loop_done(&l);
}

static void
test_bad_conninfo(void **state)
{
    struct event_base *base = event_base_new();
    char err[256] = "";
    (void)state;
    assert_null(db_pool_new(base, "nonsense", 1, 1000, 1, err, sizeof err));
    assert_non_null(strstr(err, "nonsense"));
    assert_null(db_pool_new(base, "", 0, 1000, 1, err, sizeof err));
    event_base_free(base);
}

static void
test_select_json(void **state)
{
    struct call c = {0};
    (void)state;
    run_one(&c,
            "SELECT json_agg(t) FROM (SELECT 1 AS a, 'x' AS b, true AS c, NULL AS d, "
            "'{\"k\":[1]}'::jsonb AS e) t",
            0, NULL);
    assert_int_equal(c.status, DB_OK);
    assert_string_equal(c.value,
                        "[{\"a\":1,\"b\":\"x\",\"c\":true,\"d\":null,\"e\":{\"k\": [1]}}]");
    assert_int_equal(c.value_len, strlen(c.value));
    assert_int_equal(c.nrows, 1);
    assert_int_equal(c.affected, 1);
    assert_string_equal(c.sqlstate, "");
    call_free(&c);
}

static void
test_params(void **state)
{
    static const char text[] = "it's \"quoted\" \\ back; ünïcødé ☃ 😀 ';DROP TABLE x;--";
    struct loop l;
    struct db_pool *p;
    struct call c[8] = {{0}};
    const char *appname = getenv("PGAPPNAME");
    const char *null1[] = {NULL};
    const char *text1[] = {text};
    const char *empty1[] = {""};
    const char *mixed[] = {"a'b\"c", "42", NULL};
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 2, 5000, 16);
    submit(p, &c[0], &l, "SELECT $1::text", 1, text1);
    submit(p, &c[1], &l, "SELECT $1::text", 1, null1);
    submit(p, &c[2], &l, "SELECT $1::text IS NULL", 1, null1);
    submit(p, &c[3], &l, "SELECT $1::text", 1, empty1);
    submit(p, &c[4], &l, "SELECT json_build_array($1::text, $2::int, $3::text)", 3, mixed);
    submit(p, &c[5], &l, "SELECT 1 WHERE false", 0, NULL);
    /* Settings the pool adds to every connection. */
    submit(p, &c[6], &l, "SELECT current_setting('statement_timeout')", 0, NULL);
    submit(p, &c[7], &l, "SELECT current_setting('application_name')", 0, NULL);
    loop_run(&l, 5000);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(c[i].n, 1);
        assert_int_equal(c[i].status, DB_OK);
    }
    assert_string_equal(c[0].value, text);
    assert_null(c[1].value);
    assert_int_equal(c[1].nrows, 1);
    assert_string_equal(c[2].value, "t");
    assert_non_null(c[3].value);
    assert_string_equal(c[3].value, "");
    assert_string_equal(c[4].value, "[\"a'b\\\"c\", 42, null]");
    assert_null(c[5].value);
    assert_int_equal(c[5].nrows, 0);
    assert_int_equal(c[5].affected, 0);
    assert_string_equal(c[6].value, "5s");
    assert_string_equal(c[7].value, appname && *appname ? appname : "sluice");
    db_pool_free(p);
    loop_done(&l);
    for (int i = 0; i < 8; i++)
        call_free(&c[i]);
}

#define REUSE_N 100
#define REUSE_SQL "SELECT $1::int + 1"

static void
test_prepared_reuse(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call c[REUSE_N] = {{0}}, plans = {0}, count = {0};
    char num[REUSE_N][16];
    const char *sqlparam[] = {REUSE_SQL};
    (void)state;

    /* Across a pool of 4: every answer right. */
    loop_init(&l);
    p = pool_new(&l, CONNINFO, 4, 5000, REUSE_N + 1);
    for (int i = 0; i < REUSE_N; i++) {
        const char *params[1] = {num[i]};
        snprintf(num[i], sizeof num[i], "%d", i);
        submit(p, &c[i], &l, REUSE_SQL, 1, params);
    }
    loop_run(&l, 10000);
    for (int i = 0; i < REUSE_N; i++) {
        char want[16];
        snprintf(want, sizeof want, "%d", i + 1);
        assert_int_equal(c[i].n, 1);
        assert_int_equal(c[i].status, DB_OK);
        assert_string_equal(c[i].value, want);
        call_free(&c[i]);
        c[i].n = 0;
    }
    /* Whichever connection answers holds the statement exactly once. */
    submit(p, &count, &l, "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", 1,
           sqlparam);
    loop_run(&l, 5000);
    assert_int_equal(count.status, DB_OK);
    assert_string_equal(count.value, "1");
    db_pool_free(p);
    loop_done(&l);

    /* On one connection: prepared once, executed 100 times. */
    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, REUSE_N + 1);
    for (int i = 0; i < REUSE_N; i++) {
        const char *params[1] = {num[i]};
        submit(p, &c[i], &l, REUSE_SQL, 1, params);
    }
    submit(p, &plans, &l,
           "SELECT generic_plans + custom_plans FROM pg_prepared_statements WHERE statement = $1",
           1, sqlparam);
    loop_run(&l, 10000);
    for (int i = 0; i < REUSE_N; i++) {
        assert_int_equal(c[i].n, 1);
        assert_int_equal(c[i].status, DB_OK);
        call_free(&c[i]);
    }
    assert_int_equal(plans.status, DB_OK);
    assert_string_equal(plans.value, "100");
    assert_int_equal(db_pool_connections(p), 1);
    db_pool_free(p);
    loop_done(&l);
    call_free(&plans);
    call_free(&count);
}

#define MANY_N 200

static void
test_many_concurrent(void **state)
{
    struct loop l;
    struct db_pool *p;
    static struct call c[MANY_N];
    char num[MANY_N][16];
    (void)state;

    memset(c, 0, sizeof c);
    loop_init(&l);
    p = pool_new(&l, CONNINFO, 4, 10000, MANY_N);
    assert_int_equal(db_pool_connections(p), 0);
    for (int i = 0; i < MANY_N; i++) {
        const char *params[1] = {num[i]};
        snprintf(num[i], sizeof num[i], "%d", i);
        /* Two texts interleaved, so connections switch between statements. */
        submit(p, &c[i], &l, i % 2 ? "SELECT $1::int * 2" : "SELECT ($1::int * 2)::text", 1,
               params);
    }
    assert_int_equal(db_pool_pending(p), MANY_N);
    loop_run(&l, 20000);
    for (int i = 0; i < MANY_N; i++) {
        char want[16];
        snprintf(want, sizeof want, "%d", i * 2);
        assert_int_equal(c[i].n, 1);
        assert_int_equal(c[i].status, DB_OK);
        assert_string_equal(c[i].value, want);
        call_free(&c[i]);
    }
    assert_int_equal(db_pool_pending(p), 0);
    assert_true(db_pool_connections(p) >= 1 && db_pool_connections(p) <= 4);
    /* Nothing is answered twice later on. */
    loop_for(&l, 50);
    for (int i = 0; i < MANY_N; i++)
        assert_int_equal(c[i].n, 1);
    db_pool_free(p);
    loop_done(&l);
}

static void
test_client_errors(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call create = {0}, ins1 = {0}, ins2 = {0}, cast = {0}, after = {0};
    const char *one[] = {"1"};
    const char *abc[] = {"abc"};
    (void)state;

    /* One connection, so the temporary table is visible to every statement. */
    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, 16);
    submit(p, &create, &l, "CREATE TEMP TABLE u (k int PRIMARY KEY)", 0, NULL);
    submit(p, &ins1, &l, "INSERT INTO u VALUES ($1::int)", 1, one);
    submit(p, &ins2, &l, "INSERT INTO u VALUES ($1::int)", 1, one);
    submit(p, &cast, &l, "SELECT $1::int", 1, abc);
    submit(p, &after, &l, "SELECT count(*) FROM u", 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(create.status, DB_OK);
    assert_int_equal(create.affected, -1);
    assert_int_equal(ins1.status, DB_OK);
    assert_int_equal(ins1.affected, 1);
    assert_null(ins1.value);
    assert_int_equal(ins2.status, DB_CLIENT_ERROR);
    assert_string_equal(ins2.sqlstate, "23505");
    assert_non_null(strstr(ins2.detail, "duplicate key"));
    assert_null(strstr(ins2.detail, "INSERT"));
    assert_int_equal(cast.status, DB_CLIENT_ERROR);
    assert_string_equal(cast.sqlstate, "22P02");
    assert_non_null(strstr(cast.detail, "integer"));
    assert_int_equal(after.status, DB_OK);
    assert_string_equal(after.value, "1");
    assert_int_equal(db_pool_connections(p), 1);
    db_pool_free(p);
    loop_done(&l);
    call_free(&after);
}

static void
test_plan_change(void **state)
{
    enum { CREATE, INSERT, SELECT_JSON, ALTER1, SELECT1, ALTER2, SELECT2, SELECT3, DROP, N };
    static const char *const fmt[N] = {
        [CREATE] = "CREATE TABLE %s (a int)",
        [INSERT] = "INSERT INTO %s VALUES (1)",
        [SELECT_JSON] = "SELECT row_to_json(t) FROM (SELECT * FROM %s) t",
        [ALTER1] = "ALTER TABLE %s ADD COLUMN b int DEFAULT 2",
        [SELECT1] = "SELECT * FROM %s",
        [ALTER2] = "ALTER TABLE %s ADD COLUMN c int DEFAULT 3",
        [SELECT2] = "SELECT * FROM %s",
        [SELECT3] = "SELECT * FROM %s",
        [DROP] = "DROP TABLE %s",
    };
    struct loop l;
    struct db_pool *p;
    struct call c[N] = {{0}};
    char table[64], sql[N][128];
    (void)state;

    /* A table of this process's own, in case the server is shared. */
    snprintf(table, sizeof table, "sluice_plan_test_%ld", (long)getpid());
    for (int i = 0; i < N; i++)
        snprintf(sql[i], sizeof sql[i], fmt[i], table);

    /*
     * One connection. SELECT * is prepared before the second ALTER, so it then
     * fails once (its result type changed); the connection is replaced and the
     * same text works again.
     */
    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, 16);
    for (int i = CREATE; i <= ALTER2; i++)
        submit(p, &c[i], &l, sql[i], 0, NULL);
    loop_run(&l, 5000);
    for (int i = CREATE; i <= ALTER2; i++)
        assert_int_equal(c[i].status, DB_OK);
    assert_string_equal(c[SELECT_JSON].value, "{\"a\":1}");
    submit(p, &c[SELECT2], &l, sql[SELECT2], 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(c[SELECT2].status, DB_ERROR);
    assert_string_equal(c[SELECT2].sqlstate, "0A000");
    submit(p, &c[SELECT3], &l, sql[SELECT3], 0, NULL);
    submit(p, &c[DROP], &l, sql[DROP], 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(c[SELECT3].status, DB_OK);
    assert_string_equal(c[SELECT3].value, "1");
    assert_int_equal(c[DROP].status, DB_OK);
    db_pool_free(p);
    loop_done(&l);
    for (int i = 0; i < N; i++)
        call_free(&c[i]);
}

static void
test_syntax_error(void **state)
{
    struct call c = {0};
    (void)state;
    run_one(&c, "SELEC 1 FROM secret_table", 0, NULL);
    assert_int_equal(c.status, DB_ERROR);
    assert_string_equal(c.sqlstate, "42601");
    assert_non_null(strstr(c.detail, "syntax error"));
    assert_null(strstr(c.detail, "secret_table"));
    assert_null(c.value);
}

static void
test_deadline(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call slow = {0}, queued = {0}, next = {0};
    double t0;
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 200, 16);
    t0 = now_ms();
    submit(p, &slow, &l, "SELECT pg_sleep(2)", 0, NULL);
    /* A write waits for an idle connection: it times out queued. */
    submit_flags(p, &queued, &l, "SELECT 2", 0, NULL, 0);
    loop_run(&l, 3000);
    assert_int_equal(slow.n, 1);
    assert_int_equal(slow.status, DB_TIMEOUT);
    assert_true(strcmp(slow.detail, "statement deadline exceeded") == 0 ||
                strcmp(slow.sqlstate, "57014") == 0);
    assert_true(slow.at_ms - t0 >= 150 && slow.at_ms - t0 < 1000);
    assert_int_equal(queued.n, 1);
    assert_int_equal(queued.status, DB_TIMEOUT);
    assert_string_equal(queued.detail, "statement deadline exceeded");
    assert_true(queued.at_ms - t0 >= 150 && queued.at_ms - t0 < 1000);

    /* The pool reconnects and keeps working. */
    submit(p, &next, &l, "SELECT 3", 0, NULL);
    loop_run(&l, 3000);
    assert_int_equal(next.status, DB_OK);
    assert_string_equal(next.value, "3");
    loop_for(&l, 50);
    assert_int_equal(slow.n, 1);
    assert_int_equal(queued.n, 1);
    db_pool_free(p);
    loop_done(&l);
    call_free(&next);
}

static void
test_unreachable(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call a = {0}, b = {0}, c = {0};
    double t0;
    (void)state;

    loop_init(&l);
    p = pool_new(&l, "host=127.0.0.1 port=1", 2, 5000, 16);
    t0 = now_ms();
    submit(p, &a, &l, "SELECT 1", 0, NULL);
    submit(p, &b, &l, "SELECT 2", 0, NULL);
    assert_int_equal(a.n + b.n, 0);
    loop_run(&l, 3000);
    assert_int_equal(a.status, DB_UNAVAILABLE);
    assert_int_equal(b.status, DB_UNAVAILABLE);
    assert_true(a.at_ms - t0 < 1000 && b.at_ms - t0 < 1000);
    assert_true(strlen(a.detail) > 0);
    /* Later statements fail fast too, while the pool backs off. */
    t0 = now_ms();
    submit(p, &c, &l, "SELECT 3", 0, NULL);
    assert_int_equal(c.n, 0);
    loop_run(&l, 3000);
    assert_int_equal(c.status, DB_UNAVAILABLE);
    assert_true(c.at_ms - t0 < 1000);
    assert_int_equal(db_pool_connections(p), 0);
    assert_int_equal(db_pool_pending(p), 0);
    db_pool_free(p);
    loop_done(&l);
    assert_int_equal(a.n + b.n + c.n, 3);
}

static void
test_multi_host_failover(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call c = {0};
    char conninfo[512];
    const char *port = getenv("PGPORT");
    double t0;
    (void)state;

    /* The first host refuses; libpq moves on with a new socket during polling. */
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1,%s port=1,%s", getenv("PGHOST"),
             port && *port ? port : "5432");
    loop_init(&l);
    p = pool_new(&l, conninfo, 1, 5000, 16);
    t0 = now_ms();
    submit(p, &c, &l, "SELECT 'second host'", 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(c.status, DB_OK);
    assert_string_equal(c.value, "second host");
    assert_true(c.at_ms - t0 < 1000);
    db_pool_free(p);
    loop_done(&l);
    call_free(&c);
}

static void
test_connect_deadline(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call c = {0};
    char conninfo[128];
    int port, fd = test_listen_loopback(16, &port);
    double t0;
    (void)state;

    /* PQconnectPoll applies no timeout itself: the pool's timer must end the attempt. */
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d connect_timeout=1", port);
    loop_init(&l);
    p = pool_new(&l, conninfo, 1, 10000, 16);
    t0 = now_ms();
    submit(p, &c, &l, "SELECT 1", 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(c.status, DB_UNAVAILABLE);
    assert_non_null(strstr(c.detail, "timeout"));
    assert_true(c.at_ms - t0 >= 900 && c.at_ms - t0 < 2500);
    db_pool_free(p);
    loop_done(&l);
    close(fd);
}

struct killer {
    PGconn *side;
    const char *where; /* which backend to terminate */
    struct event *ev;
    int tries;
    int killed;
};

/* Terminates the backends matching `where`; blocking is fine in the test. */
static int
terminate(PGconn *side, const char *where)
{
    char sql[512];
    PGresult *r;
    int n;

    snprintf(sql, sizeof sql,
             "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE %s AND pid <> pg_backend_pid()",
             where);
    r = PQexec(side, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    n = PQntuples(r);
    PQclear(r);
    return n;
}

static void
kill_cb(evutil_socket_t fd, short what, void *arg)
{
    struct killer *k = arg;
    struct timeval tv = {0, 100000};
    (void)fd;
    (void)what;

    k->killed = terminate(k->side, k->where);
    if (k->killed == 0 && ++k->tries < 50)
        evtimer_add(k->ev, &tv);
}

static void
test_killed_connection(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call victim = {0}, queued = {0}, next = {0}, idle = {0};
    struct killer k = {0};
    struct timeval tv = {0, 300000};
    char appname[64], conninfo[128], where[128], active[256];
    (void)state;

    k.side = PQconnectdb(CONNINFO);
    assert_int_equal(PQstatus(k.side), CONNECTION_OK);
    loop_init(&l);
    k.ev = evtimer_new(l.base, kill_cb, &k);
    evtimer_add(k.ev, &tv);
    snprintf(appname, sizeof appname, "sluice_test_%ld", (long)getpid());
    snprintf(conninfo, sizeof conninfo, "application_name=%s", appname);
    snprintf(where, sizeof where, "application_name = '%s'", appname);
    snprintf(active, sizeof active, "%s AND state = 'active' AND query LIKE '%%kill-me%%'", where);
    k.where = active;
    p = pool_new(&l, conninfo, 1, 10000, 16);
    submit(p, &victim, &l, "SELECT pg_sleep(5) /* kill-me */", 0, NULL);
    submit(p, &queued, &l, "SELECT 'queued'", 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(k.killed, 1);
    assert_int_equal(victim.n, 1);
    assert_int_equal(victim.status, DB_UNAVAILABLE);
    assert_string_equal(victim.sqlstate, "57P01");
    /* The statement waiting behind it survives and runs on the new connection. */
    assert_int_equal(queued.n, 1);
    assert_int_equal(queued.status, DB_OK);
    assert_string_equal(queued.value, "queued");

    submit(p, &next, &l, "SELECT 'alive'", 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(next.status, DB_OK);
    assert_string_equal(next.value, "alive");
    loop_for(&l, 100);
    assert_int_equal(victim.n, 1);
    assert_int_equal(next.n, 1);

    /* An idle connection closed by the server is noticed and replaced. */
    assert_int_equal(db_pool_connections(p), 1);
    assert_int_equal(terminate(k.side, where), 1);
    loop_for(&l, 200);
    assert_int_equal(db_pool_connections(p), 0);
    submit(p, &idle, &l, "SELECT 'again'", 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(idle.status, DB_OK);
    assert_string_equal(idle.value, "again");
    db_pool_free(p);
    event_free(k.ev);
    loop_done(&l);
    PQfinish(k.side);
    call_free(&queued);
    call_free(&next);
    call_free(&idle);
}

static void
test_queue_overflow(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call c[5] = {{0}};
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, 2);
    for (int i = 0; i < 5; i++)
        submit(p, &c[i], &l, "SELECT 'ok'", 0, NULL);
    for (int i = 0; i < 5; i++)
        assert_int_equal(c[i].n, 0); /* never answered inside db_query */
    loop_run(&l, 5000);
    for (int i = 0; i < 5; i++)
        assert_int_equal(c[i].n, 1);
    assert_int_equal(c[0].status, DB_OK);
    assert_string_equal(c[0].value, "ok");
    assert_int_equal(c[1].status, DB_OK);
    for (int i = 2; i < 5; i++) {
        assert_int_equal(c[i].status, DB_UNAVAILABLE);
        assert_string_equal(c[i].detail, "too many queued statements");
    }
    db_pool_free(p);
    loop_done(&l);
    for (int i = 0; i < 5; i++)
        call_free(&c[i]);
}

static void
requery(struct call *c)
{
    c->requery_rc = db_query(c->pool, "SELECT 1", 0, NULL, DB_READ, on_answer, c);
}

static void
test_free_with_pending(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call c[6] = {{0}};
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 2, 10000, 16);
    for (int i = 0; i < 6; i++) {
        c[i].then = requery;
        c[i].pool = p;
        submit(p, &c[i], &l, "SELECT pg_sleep(1)", 0, NULL);
    }
    loop_for(&l, 200); /* two running, four queued */
    for (int i = 0; i < 6; i++)
        assert_int_equal(c[i].n, 0);
    assert_int_equal(db_pool_connections(p), 2);
    db_pool_free(p);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(c[i].n, 1);
        assert_int_equal(c[i].status, DB_UNAVAILABLE);
        assert_int_equal(c[i].requery_rc, -1);
    }
    loop_done(&l);
}

static void
free_pool(struct call *c)
{
    db_pool_free(c->pool);
}

static void
test_free_from_callback(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call first = {0}, running = {0}, queued = {0};
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 2, 10000, 16);
    first.then = free_pool;
    first.pool = p;
    submit(p, &running, &l, "SELECT pg_sleep(2)", 0, NULL);
    loop_for(&l, 200);
    submit(p, &first, &l, "SELECT 'first'", 0, NULL);
    submit_flags(p, &queued, &l, "SELECT 'queued'", 0, NULL, 0); /* a write: waits */
    loop_run(&l, 5000);
    assert_int_equal(first.n, 1);
    assert_int_equal(first.status, DB_OK);
    assert_int_equal(running.n, 1);
    assert_int_equal(running.status, DB_UNAVAILABLE);
    assert_int_equal(queued.n, 1);
    assert_int_equal(queued.status, DB_UNAVAILABLE);
    loop_done(&l);
    call_free(&first);
}

/* How many statements the pool sent behind another on a busy connection. */
static uint64_t
pipelined(const struct db_pool *p)
{
    struct db_health h;
    db_pool_health(p, &h);
    return h.pipelined;
}

static void
test_reads_queue_on_a_busy_connection_and_answer_in_order(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call c[8] = {{0}};
    char text[8][8];
    const char *params[8][1];
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, 16);
    for (int i = 0; i < 8; i++) {
        snprintf(text[i], sizeof text[i], "%d", i);
        params[i][0] = text[i];
        submit(p, &c[i], &l, "SELECT $1::int * 10", 1, params[i]);
    }
    loop_run(&l, 5000);
    /* All eight waited for the one connection; once it was up, the first ran on it and
     * the seven others went behind it at once. */
    assert_int_equal(pipelined(p), 7);
    for (int i = 0; i < 8; i++) {
        char want[8];
        snprintf(want, sizeof want, "%d", i * 10);
        assert_int_equal(c[i].n, 1);
        assert_int_equal(c[i].status, DB_OK);
        assert_string_equal(c[i].value, want);
        if (i > 0)
            assert_true(c[i].at_ms >= c[i - 1].at_ms);
        call_free(&c[i]);
    }
    db_pool_free(p);
    loop_done(&l);
}

static void
test_writes_wait_for_an_idle_connection(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call c[4] = {{0}};
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, 16);
    for (int i = 0; i < 4; i++)
        submit_flags(p, &c[i], &l, "SELECT 'w'", 0, NULL, 0);
    loop_run(&l, 5000);
    assert_int_equal(pipelined(p), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(c[i].status, DB_OK);
        call_free(&c[i]);
    }
    db_pool_free(p);
    loop_done(&l);
}

static void
test_a_read_does_not_queue_behind_a_slow_statement(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call slow = {0}, quick = {0};
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, 16);
    submit(p, &slow, &l, "SELECT pg_sleep(0.3)", 0, NULL);
    loop_for(&l, 100); /* the slow one has run 100 ms */
    submit(p, &quick, &l, "SELECT 'quick'", 0, NULL);
    loop_run(&l, 5000);
    assert_int_equal(pipelined(p), 0);
    assert_int_equal(quick.status, DB_OK);
    assert_true(quick.at_ms >= slow.at_ms);
    db_pool_free(p);
    loop_done(&l);
    call_free(&slow);
    call_free(&quick);
}

static void
test_a_failed_statement_spares_those_behind_it_and_the_connection(void **state)
{
    struct loop l;
    struct db_pool *p;
    struct call c[6] = {{0}}, pid1 = {0}, pid2 = {0};
    const char *sql[6] = {"SELECT 1", "SELECT 1/0", "SELEC 2", "SELEC 2", "SELECT 5", "SELECT 6"};
    (void)state;

    loop_init(&l);
    p = pool_new(&l, CONNINFO, 1, 5000, 16);
    submit(p, &pid1, &l, "SELECT pg_backend_pid()", 0, NULL);
    loop_run(&l, 5000);
    for (int i = 0; i < 6; i++)
        submit(p, &c[i], &l, sql[i], 0, NULL);
    loop_run(&l, 5000);
    assert_true(pipelined(p) >= 1);
    assert_int_equal(c[0].status, DB_OK);
    assert_int_equal(c[1].status, DB_CLIENT_ERROR); /* 22012: division by zero */
    assert_string_equal(c[1].sqlstate, "22012");
    assert_int_equal(c[2].status, DB_ERROR); /* 42601: syntax error, in its prepare */
    assert_string_equal(c[2].sqlstate, "42601");
    assert_int_equal(c[3].status, DB_ERROR);
    assert_int_equal(c[4].status, DB_OK);
    assert_string_equal(c[4].value, "5");
    assert_int_equal(c[5].status, DB_OK);
    assert_string_equal(c[5].value, "6");
    /* Each statement was its own transaction, on the same connection throughout. */
    submit(p, &pid2, &l, "SELECT pg_backend_pid()", 0, NULL);
    loop_run(&l, 5000);
    assert_string_equal(pid1.value, pid2.value);
    for (int i = 0; i < 6; i++)
        call_free(&c[i]);
    call_free(&pid1);
    call_free(&pid2);
    db_pool_free(p);
    loop_done(&l);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_conninfo),
        cmocka_unit_test(test_select_json),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_prepared_reuse),
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_client_errors),
        cmocka_unit_test(test_plan_change),
        cmocka_unit_test(test_syntax_error),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_multi_host_failover),
        cmocka_unit_test(test_connect_deadline),
        cmocka_unit_test(test_killed_connection),
        cmocka_unit_test(test_queue_overflow),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_free_from_callback),
        cmocka_unit_test(test_reads_queue_on_a_busy_connection_and_answer_in_order),
        cmocka_unit_test(test_writes_wait_for_an_idle_connection),
        cmocka_unit_test(test_a_read_does_not_queue_behind_a_slow_statement),
        cmocka_unit_test(test_a_failed_statement_spares_those_behind_it_and_the_connection),
    };

    if (getenv("PGHOST") == NULL || *getenv("PGHOST") == '\0') {
        fprintf(stderr, "test_db: PGHOST is not set; these tests need a PostgreSQL server. "
                        "Run them under tests/with-pg.sh (or pg_virtualenv).\n");
        return 1;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
