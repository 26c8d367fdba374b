/* db.c - asynchronous libpq connection pool driven by one worker's libevent event_base. */
#include "db.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <libpq-fe.h>

#include "pg_conn.h"
#include "util.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define MAX_STMTS 256 /* distinct SQL texts prepared per pool; later ones run unnamed */
#define STMT_SLOTS (2 * MAX_STMTS)
#define MAX_PARAMS 65535 /* protocol limit */

enum conn_state {
    C_DOWN,       /* no connection; may connect when there is work */
    C_BACKOFF,    /* the last connect attempt failed; timer pending */
    C_CONNECTING, /* PQconnectPoll in progress */
    C_READY,      /* connected and idle */
    C_BUSY,       /* running c->q */
};

enum query_state { Q_QUEUED, Q_RUNNING, Q_DONE };

struct query {
    TAILQ_ENTRY(query) link; /* in pool->queue or pool->done */
    struct db_pool *pool;
    struct conn *conn; /* while Q_RUNNING */
    struct event deadline;
    db_cb *cb;
    void *arg;
    const char *sql; /* the pool's statement table or this block */
    int stmt;        /* statement id, -1 when run unnamed */
    int nparams;
    const char **params; /* this block */
    enum query_state state;
    /* answer, once Q_DONE */
    enum db_status status;
    PGresult *res;      /* owned; value, counts and sqlstate come from it */
    const char *detail; /* static, inside res, or detail_owned */
    char *detail_owned;
};

struct conn {
    struct db_pool *pool;
    struct pg_conn pc;
    enum conn_state state;
    struct event timer;                /* backoff */
    unsigned backoff_ms;               /* wait after the next failed attempt / 2 */
    struct query *q;                   /* running statement */
    int preparing;                     /* q's PQsendPrepare is in flight */
    int stale;                         /* close once idle: prepared statements broke */
    PGresult *res;                     /* result kept for q so far */
    uint64_t prepared[MAX_STMTS / 64]; /* statement ids prepared here */
};

struct stmt {
    char *sql; /* owned; NULL for a free slot */
    size_t len;
    uint64_t hash;
    int id;
};

struct db_pool {
    struct event_base *base;
    struct pg_conn_params *params;
    struct conn *conns;
    unsigned size;
    unsigned max_queue;
    const struct timeval *deadline; /* NULL: no deadline */
    struct timeval deadline_tv;
    TAILQ_HEAD(, query) queue; /* waiting for a connection */
    TAILQ_HEAD(, query) done;  /* answered, callback not yet called */
    unsigned nqueued;
    unsigned npending; /* db_query accepted, callback not yet called */
    struct event kick; /* answers `done` from the event loop */
    struct stmt stmts[STMT_SLOTS];
    unsigned nstmts;
    char last_err[256];       /* last connect failure */
    char last_problem[256];   /* last connect failure or lost connection, for status output */
    uint64_t last_problem_ms; /* when (ms since the epoch); 0: none yet */
    int closing;
    int in_flush;
    int free_requested;
};

const char *
db_status_word(enum db_status s)
{
    switch (s) {
    case DB_OK:
        return "ok";
    case DB_CLIENT_ERROR:
        return "client_error";
    case DB_ERROR:
        return "error";
    case DB_UNAVAILABLE:
        return "unavailable";
    }
    return "unknown";
}

/* ---- statement names ---- */

/*
 * Statement id for `sql`, registering it on first sight; -1 when the table is
 * full. Keyed by the text, not the caller's pointer, which may be reused for
 * other text. *copy is set to the pool's copy of the text.
 */
static int
stmt_id(struct db_pool *p, const char *sql, size_t len, const char **copy)
{
    uint64_t h = util_fnv1a(sql, len);
    size_t i = (size_t)h & (STMT_SLOTS - 1);

    for (;;) {
        struct stmt *s = &p->stmts[i];
        if (s->sql == NULL) {
            if (p->nstmts >= MAX_STMTS)
                return -1;
            s->sql = xstrdup(sql);
            s->len = len;
            s->hash = h;
            s->id = (int)p->nstmts++;
            *copy = s->sql;
            return s->id;
        }
        if (s->hash == h && s->len == len && memcmp(s->sql, sql, len) == 0) {
            *copy = s->sql;
            return s->id;
        }
        i = (i + 1) & (STMT_SLOTS - 1);
    }
}

static void
stmt_name(char *buf, size_t len, int id)
{
    snprintf(buf, len, "sluice_%d", id);
}

static int
is_prepared(const struct conn *c, int id)
{
    return (c->prepared[id / 64] >> (id % 64)) & 1;
}

static void
set_prepared(struct conn *c, int id, int on)
{
    uint64_t bit = (uint64_t)1 << (id % 64);
    if (on)
        c->prepared[id / 64] |= bit;
    else
        c->prepared[id / 64] &= ~bit;
}

/* ---- answers ---- */

/* Moves q to the answered list with a status and a static or owned detail. */
static void
query_fail(struct query *q, enum db_status status, const char *detail, char *owned)
{
    struct db_pool *p = q->pool;

    assert(q->state != Q_DONE);
    evtimer_del(&q->deadline);
    q->state = Q_DONE;
    q->conn = NULL;
    q->status = status;
    q->detail = owned ? owned : detail;
    q->detail_owned = owned;
    TAILQ_INSERT_TAIL(&p->done, q, link);
}

static int
sqlstate_class(const char *st, const char *cls)
{
    return st != NULL && st[0] == cls[0] && st[1] == cls[1];
}

/* Moves q to the answered list with result `res` (owned). */
static void
query_result(struct query *q, PGresult *res, int conn_bad)
{
    const char *st;

    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
        query_fail(q, DB_OK, PQcmdStatus(res), NULL);
        break;
    case PGRES_FATAL_ERROR:
        st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (sqlstate_class(st, "22") || sqlstate_class(st, "23"))
            q->status = DB_CLIENT_ERROR;
        else if (sqlstate_class(st, "08") || sqlstate_class(st, "53") || sqlstate_class(st, "57") ||
                 ((st == NULL || *st == '\0') && conn_bad))
            q->status = DB_UNAVAILABLE;
        else
            q->status = DB_ERROR;
        if (PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) != NULL)
            query_fail(q, q->status, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY), NULL);
        else
            query_fail(q, q->status, NULL, pg_conn_first_line(PQresultErrorMessage(res)));
        break;
    case PGRES_EMPTY_QUERY:
        query_fail(q, DB_ERROR, "empty query", NULL);
        break;
    default:
        query_fail(q, DB_ERROR, "unsupported result from server", NULL);
        break;
    }
    q->res = res;
}

/* Calls q's callback and frees q. */
static void
answer(struct query *q)
{
    struct db_result r;
    PGresult *res = q->res;

    memset(&r, 0, sizeof r);
    r.status = q->status;
    r.affected = -1;
    r.sqlstate = "";
    r.detail = q->detail ? q->detail : "";
    if (res != NULL) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (st != NULL)
            r.sqlstate = st;
        if (q->status == DB_OK) {
            const char *tuples = PQcmdTuples(res);
            r.nrows = PQntuples(res);
            if (r.nrows > 0 && PQnfields(res) > 0 && !PQgetisnull(res, 0, 0)) {
                r.value = PQgetvalue(res, 0, 0);
                r.value_len = (size_t)PQgetlength(res, 0, 0);
            }
            if (tuples != NULL && *tuples != '\0')
                r.affected = atol(tuples);
        }
    }
    q->pool->npending--;
    q->cb(q->arg, &r);
    PQclear(res);
    free(q->detail_owned);
    free(q);
}

static void pool_destroy(struct db_pool *p);

/*
 * Calls the callbacks of answered statements. Callbacks may call db_query and
 * db_pool_free; a free requested meanwhile happens once the list is empty, so
 * callers must not touch the pool after this returns.
 */
static void
flush_answers(struct db_pool *p)
{
    struct query *q;

    p->in_flush++;
    while ((q = TAILQ_FIRST(&p->done)) != NULL) {
        TAILQ_REMOVE(&p->done, q, link);
        answer(q);
    }
    p->in_flush--;
    if (p->in_flush == 0 && p->free_requested)
        pool_destroy(p);
}

/* ---- connections ---- */

static unsigned
count_conns(const struct db_pool *p, unsigned mask)
{
    unsigned n = 0;
    for (unsigned i = 0; i < p->size; i++)
        if (mask & (1u << p->conns[i].state))
            n++;
    return n;
}

static struct conn *
find_conn(struct db_pool *p, enum conn_state state)
{
    for (unsigned i = 0; i < p->size; i++)
        if (p->conns[i].state == state)
            return &p->conns[i];
    return NULL;
}

#define MASK(s) (1u << (s))

/* Closes the connection, if any, and stops its events; the state is left to the caller. */
static void
conn_close(struct conn *c)
{
    pg_conn_close(&c->pc);
    evtimer_del(&c->timer);
    PQclear(c->res);
    c->res = NULL;
    c->preparing = 0;
    c->stale = 0;
}

static void
fail_queue(struct db_pool *p, const char *detail)
{
    struct query *q;

    while ((q = TAILQ_FIRST(&p->queue)) != NULL) {
        TAILQ_REMOVE(&p->queue, q, link);
        p->nqueued--;
        query_fail(q, DB_UNAVAILABLE, NULL, xstrdup(detail));
    }
}

/* Remembers what went wrong with the server last, and when, for status output. */
static void
note_problem(struct db_pool *p, const char *what)
{
    snprintf(p->last_problem, sizeof p->last_problem, "%s", what);
    p->last_problem_ms = util_now_ms();
}

/*
 * A connect attempt failed: back off. When nothing else can serve the queue,
 * the server is taken to be unreachable and waiting statements are failed now
 * rather than at their deadline.
 */
static void
connect_failed(struct conn *c, const char *msg)
{
    struct db_pool *p = c->pool;
    char *line = pg_conn_first_line(msg);
    struct timeval tv;

    snprintf(p->last_err, sizeof p->last_err, "database unavailable: %s", line);
    note_problem(p, p->last_err);
    free(line);
    conn_close(c);
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
    c->state = C_BACKOFF;
    tv = util_ms_to_tv(c->backoff_ms);
    evtimer_add(&c->timer, &tv);
    if (count_conns(p, MASK(C_READY) | MASK(C_BUSY) | MASK(C_CONNECTING)) == 0)
        fail_queue(p, p->last_err);
}

/* An established connection broke: its statement is answered, the slot may reconnect. */
static void
conn_lost(struct conn *c, const char *msg)
{
    struct query *q = c->q;
    char *line = pg_conn_first_line(msg);

    c->q = NULL;
    note_problem(c->pool, line);
    conn_close(c);
    c->state = C_DOWN;
    if (q != NULL)
        query_fail(q, DB_UNAVAILABLE, NULL, line);
    else
        free(line);
}

static void
conn_start(struct conn *c)
{
    char err[512];

    assert(c->state == C_DOWN && c->pc.pg == NULL);
    c->state = C_CONNECTING;
    if (pg_conn_start(&c->pc, err, sizeof err) < 0)
        connect_failed(c, err);
}

static void
conn_flush(struct conn *c)
{
    if (pg_conn_flush(&c->pc) < 0)
        conn_lost(c, PQerrorMessage(c->pc.pg));
}

/* After a PQsend* call: flush, or answer the statement if it could not be sent. */
static void
conn_sent(struct conn *c, int ok)
{
    struct query *q = c->q;

    if (ok) {
        conn_flush(c);
    } else if (PQstatus(c->pc.pg) == CONNECTION_OK) {
        /* Refused before anything was sent (e.g. too many parameters). */
        c->q = NULL;
        c->preparing = 0;
        c->state = C_READY;
        query_fail(q, DB_ERROR, NULL, pg_conn_first_line(PQerrorMessage(c->pc.pg)));
    } else {
        conn_lost(c, PQerrorMessage(c->pc.pg));
    }
}

static void
conn_send(struct conn *c)
{
    struct query *q = c->q;
    char name[32];
    int ok;

    if (q->stmt < 0) {
        c->preparing = 0;
        ok = PQsendQueryParams(c->pc.pg, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0);
    } else if (!is_prepared(c, q->stmt)) {
        c->preparing = 1;
        stmt_name(name, sizeof name, q->stmt);
        ok = PQsendPrepare(c->pc.pg, name, q->sql, 0, NULL);
    } else {
        c->preparing = 0;
        stmt_name(name, sizeof name, q->stmt);
        ok = PQsendQueryPrepared(c->pc.pg, name, q->nparams, q->params, NULL, NULL, 0);
    }
    conn_sent(c, ok);
}

static void
conn_run(struct conn *c, struct query *q)
{
    assert(c->state == C_READY && c->q == NULL && c->res == NULL);
    c->q = q;
    c->state = C_BUSY;
    q->conn = c;
    q->state = Q_RUNNING;
    conn_send(c);
}

/* Keeps the result that answers the statement: the first error, else the last. */
static void
conn_keep(struct conn *c, PGresult *r)
{
    if (c->res != NULL && PQresultStatus(c->res) == PGRES_FATAL_ERROR) {
        PQclear(r);
        return;
    }
    PQclear(c->res);
    c->res = r;
}

/* PQgetResult returned NULL: the command in flight is over. */
static void
conn_command_done(struct conn *c)
{
    struct query *q = c->q;
    PGresult *res = c->res;
    int bad = PQstatus(c->pc.pg) == CONNECTION_BAD;
    const char *st;

    c->res = NULL;
    if (c->preparing && res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
        PQclear(res);
        res = NULL;
        set_prepared(c, q->stmt, 1);
        if (!bad) {
            conn_send(c);
            return;
        }
    }
    /*
     * A prepared statement the server lost (26000: DISCARD ALL, a pooler) or
     * can no longer run (0A000: its result type changed after ALTER TABLE)
     * stays broken on this connection: replace the connection.
     */
    st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!c->preparing && q->stmt >= 0 && st != NULL &&
        (strcmp(st, "26000") == 0 || strcmp(st, "0A000") == 0))
        c->stale = 1;
    c->q = NULL;
    c->preparing = 0;
    c->state = C_READY;
    if (res == NULL)
        query_fail(q, bad ? DB_UNAVAILABLE : DB_ERROR, NULL,
                   pg_conn_first_line(bad ? PQerrorMessage(c->pc.pg) : "no result from server"));
    else
        query_result(q, res, bad);
}

static void
conn_read(struct conn *c)
{
    int ok = PQconsumeInput(c->pc.pg);
    PGnotify *n;

    if (ok && c->pc.writing) {
        conn_flush(c);
        if (c->pc.pg == NULL)
            return;
    }
    while (c->state == C_BUSY && !PQisBusy(c->pc.pg)) {
        PGresult *r = PQgetResult(c->pc.pg);
        if (r == NULL) {
            conn_command_done(c);
            continue;
        }
        switch (PQresultStatus(r)) {
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH: {
            /* The connection is stuck in COPY mode: answer, then drop it. */
            struct query *q = c->q;
            c->q = NULL;
            PQclear(r);
            conn_close(c);
            c->state = C_DOWN;
            query_fail(q, DB_ERROR, "COPY is not supported", NULL);
            return;
        }
        default:
            conn_keep(c, r);
            break;
        }
    }
    if (c->pc.pg == NULL)
        return;
    while ((n = PQnotifies(c->pc.pg)) != NULL)
        PQfreemem(n);
    if (!ok || PQstatus(c->pc.pg) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pc.pg));
    } else if (c->stale && c->state == C_READY) {
        conn_close(c);
        c->state = C_DOWN;
    }
}

/* ---- scheduling ---- */

/* Starts queued statements on idle connections and opens connections for the rest. */
static void
pump(struct db_pool *p)
{
    struct query *q;
    struct conn *c;

    if (p->closing)
        return;
    while ((q = TAILQ_FIRST(&p->queue)) != NULL && (c = find_conn(p, C_READY)) != NULL) {
        TAILQ_REMOVE(&p->queue, q, link);
        p->nqueued--;
        conn_run(c, q);
    }
    while (p->nqueued > count_conns(p, MASK(C_CONNECTING)) && (c = find_conn(p, C_DOWN)) != NULL)
        conn_start(c);
}

/* End of every event callback: schedule, then answer. The pool may be gone after. */
static void
settle(struct db_pool *p)
{
    pump(p);
    flush_answers(p);
}

/* pg_conn handlers: a connect attempt succeeded or failed, the socket is ready. */
static void
conn_up(void *arg)
{
    struct conn *c = arg;

    memset(c->prepared, 0, sizeof c->prepared);
    c->backoff_ms = 0;
    c->state = C_READY;
    settle(c->pool);
}

static void
conn_connect_failed(void *arg, const char *msg)
{
    struct conn *c = arg;
    struct db_pool *p = c->pool;

    connect_failed(c, msg);
    settle(p);
}

static void
conn_io(void *arg, short what)
{
    struct conn *c = arg;
    struct db_pool *p = c->pool;

    if (what & EV_WRITE)
        conn_flush(c);
    if ((what & EV_READ) && c->pc.pg != NULL)
        conn_read(c);
    settle(p);
}

static const struct pg_conn_handler conn_handler = {
    .up = conn_up,
    .failed = conn_connect_failed,
    .io = conn_io,
};

static void
backoff_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct db_pool *p = c->pool;

    (void)fd;
    (void)what;
    if (c->state == C_BACKOFF)
        c->state = C_DOWN;
    settle(p);
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct query *q = arg;
    struct db_pool *p = q->pool;
    struct conn *c = q->conn;

    (void)fd;
    (void)what;
    if (q->state == Q_QUEUED) {
        TAILQ_REMOVE(&p->queue, q, link);
        p->nqueued--;
    } else if (q->state == Q_RUNNING) {
        /* No PQcancel (it blocks): drop the connection; statement_timeout stops the server. */
        c->q = NULL;
        conn_close(c);
        c->state = C_DOWN;
    }
    query_fail(q, DB_UNAVAILABLE, "statement deadline exceeded", NULL);
    settle(p);
}

static void
kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    settle(arg);
}

/* ---- construction ---- */

struct db_pool *
db_pool_new(struct event_base *base, const char *conninfo, unsigned size, uint64_t deadline_ms,
            unsigned max_queue, char *err, size_t errlen)
{
    struct pg_conn_options o = {.fallback_application_name = "sluice"};
    char timeout[64];
    struct db_pool *p;

    if (size == 0 || max_queue == 0) {
        snprintf(err, errlen, "db pool needs size and max_queue of at least 1");
        return NULL;
    }
    p = xcalloc(1, sizeof *p);
    p->base = base;
    p->size = size;
    p->max_queue = max_queue;
    TAILQ_INIT(&p->queue);
    TAILQ_INIT(&p->done);
    if (deadline_ms > 0) {
        /* The server stops a statement at its deadline too (past INT_MAX ms: at INT_MAX). */
        snprintf(timeout, sizeof timeout, "-c statement_timeout=%llu",
                 deadline_ms > INT_MAX ? (unsigned long long)INT_MAX
                                       : (unsigned long long)deadline_ms);
        o.server_options = timeout;
    }
    p->params = pg_conn_params_new(conninfo, &o, err, errlen);
    if (p->params == NULL) {
        free(p);
        return NULL;
    }
    if (deadline_ms > 0) {
        p->deadline_tv = util_ms_to_tv(deadline_ms);
        /* All statements share one duration: an O(1) timeout queue instead of the heap. */
        p->deadline = event_base_init_common_timeout(base, &p->deadline_tv);
        if (p->deadline == NULL)
            p->deadline = &p->deadline_tv;
    }
    p->conns = xcalloc(size, sizeof *p->conns);
    for (unsigned i = 0; i < size; i++) {
        struct conn *c = &p->conns[i];
        c->pool = p;
        c->state = C_DOWN;
        pg_conn_init(&c->pc, base, p->params, &conn_handler, c);
        evtimer_assign(&c->timer, base, backoff_cb, c);
    }
    event_assign(&p->kick, base, -1, 0, kick_cb, p);
    return p;
}

static void
pool_destroy(struct db_pool *p)
{
    assert(TAILQ_EMPTY(&p->queue) && TAILQ_EMPTY(&p->done) && p->npending == 0);
    for (unsigned i = 0; i < p->size; i++)
        conn_close(&p->conns[i]);
    event_del(&p->kick);
    for (unsigned i = 0; i < STMT_SLOTS; i++)
        free(p->stmts[i].sql);
    pg_conn_params_free(p->params);
    free(p->conns);
    free(p);
}

void
db_pool_free(struct db_pool *p)
{
    struct query *q;

    if (p == NULL || p->closing)
        return;
    p->closing = 1;
    for (unsigned i = 0; i < p->size; i++) {
        struct conn *c = &p->conns[i];
        q = c->q;
        c->q = NULL;
        conn_close(c);
        c->state = C_DOWN;
        if (q != NULL)
            query_fail(q, DB_UNAVAILABLE, "database pool closed", NULL);
    }
    while ((q = TAILQ_FIRST(&p->queue)) != NULL) {
        TAILQ_REMOVE(&p->queue, q, link);
        p->nqueued--;
        query_fail(q, DB_UNAVAILABLE, "database pool closed", NULL);
    }
    p->free_requested = 1;
    if (p->in_flush)
        return; /* the flush in progress answers the rest and frees the pool */
    flush_answers(p);
}

int
db_query(struct db_pool *p, const char *sql, int nparams, const char *const *params, db_cb *cb,
         void *arg)
{
    size_t sqllen, need, off;
    const char *sqlcopy = NULL;
    struct query *q;
    char *block;
    int id;

    assert(p != NULL && sql != NULL && cb != NULL);
    assert(nparams >= 0 && (nparams == 0 || params != NULL));
    if (p->closing)
        return -1;

    sqllen = strlen(sql);
    id = stmt_id(p, sql, sqllen, &sqlcopy);
    need = sizeof *q + (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++)
        if (params[i] != NULL)
            need += strlen(params[i]) + 1;
    if (id < 0)
        need += sqllen + 1;

    /* One block: the query, its parameter pointers, the parameter texts, the SQL if unnamed. */
    q = xmalloc(need);
    memset(q, 0, sizeof *q);
    q->pool = p;
    q->cb = cb;
    q->arg = arg;
    q->stmt = id;
    q->nparams = nparams;
    q->params = (const char **)(q + 1);
    block = (char *)(q->params + nparams);
    off = 0;
    for (int i = 0; i < nparams; i++) {
        if (params[i] == NULL) {
            q->params[i] = NULL;
            continue;
        }
        size_t len = strlen(params[i]) + 1;
        memcpy(block + off, params[i], len);
        q->params[i] = block + off;
        off += len;
    }
    if (id < 0) {
        memcpy(block + off, sql, sqllen + 1);
        sqlcopy = block + off;
    }
    q->sql = sqlcopy;
    evtimer_assign(&q->deadline, p->base, deadline_cb, q);
    p->npending++;

    if (nparams > MAX_PARAMS) {
        query_fail(q, DB_ERROR, "too many parameters", NULL);
    } else if (count_conns(p, MASK(C_BACKOFF)) == p->size) {
        /* Every connect attempt failed lately: fail fast until a backoff ends. */
        query_fail(q, DB_UNAVAILABLE, NULL, xstrdup(p->last_err));
    } else if (p->nqueued >= p->max_queue) {
        query_fail(q, DB_UNAVAILABLE, "too many queued statements", NULL);
    } else {
        q->state = Q_QUEUED;
        TAILQ_INSERT_TAIL(&p->queue, q, link);
        p->nqueued++;
        if (p->deadline != NULL)
            evtimer_add(&q->deadline, p->deadline);
        pump(p);
    }
    /* Answers are never given before db_query returns. */
    if (!TAILQ_EMPTY(&p->done))
        event_active(&p->kick, EV_TIMEOUT, 1);
    return 0;
}

unsigned
db_pool_pending(const struct db_pool *p)
{
    return p->npending;
}

unsigned
db_pool_connections(const struct db_pool *p)
{
    return count_conns(p, MASK(C_READY) | MASK(C_BUSY));
}

void
db_pool_health(const struct db_pool *p, struct db_health *h)
{
    h->size = p->size;
    h->connections = count_conns(p, MASK(C_READY) | MASK(C_BUSY));
    h->backing_off = count_conns(p, MASK(C_BACKOFF));
    h->pending = p->npending;
    snprintf(h->last_error, sizeof h->last_error, "%s", p->last_problem);
    h->last_error_ms = p->last_problem_ms;
}
