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
#define MAX_PARAMS 65535       /* protocol limit */
#define PIPELINE_DEPTH 8       /* statements in flight on one connection, at most */
#define PIPELINE_STALL_US 5000 /* none queues behind a statement running this long already */

enum conn_state {
    C_DOWN,       /* no connection; may connect when there is work */
    C_BACKOFF,    /* the last connect attempt failed; timer pending */
    C_CONNECTING, /* PQconnectPoll in progress */
    C_READY,      /* connected and idle */
    C_BUSY,       /* running the statements of c->inflight */
};

enum query_state { Q_QUEUED, Q_RUNNING, Q_DONE };

/* What keeps a query allocated: its answer not given yet, its place on a connection. */
#define HOLD_ANSWER 1u
#define HOLD_CONN 2u

struct query {
    TAILQ_ENTRY(query) link;  /* in pool->queue or pool->done */
    TAILQ_ENTRY(query) clink; /* in its connection's inflight while HOLD_CONN */
    struct db_pool *pool;
    struct conn *conn;        /* while Q_RUNNING */
    unsigned hold;            /* HOLD_* */
    unsigned read : 1;        /* DB_READ: may queue behind others on a connection, may run again */
    unsigned preparing : 1;   /* its PQsendPrepare goes before it on its connection */
    unsigned abandoned : 1;   /* answered (its deadline) while in flight: its result is dropped */
    unsigned own_timeout : 1; /* a deadline of its own: SET LOCAL statement_timeout goes first */
    uint64_t deadline_ms;     /* its own deadline (own_timeout) */
    struct timeval deadline_tv;
    PGresult *acc; /* the result kept so far while in flight */
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

/*
 * A connection runs in libpq's pipeline mode: each statement is sent with its
 * own sync (so each is its own implicit transaction, as outside a pipeline)
 * and up to PIPELINE_DEPTH statements that only read may wait in it behind
 * the one the server runs: under load one wakeup of the server and one read
 * of its socket serve several statements.
 */
struct conn {
    struct db_pool *pool;
    struct pg_conn pc;
    enum conn_state state;
    struct event timer;                     /* backoff */
    unsigned backoff_ms;                    /* wait after the next failed attempt / 2 */
    TAILQ_HEAD(query_list, query) inflight; /* sent, answered in this order */
    unsigned ninflight;
    int stage;        /* results of the first in flight: 0 its prepare's, 1 its own */
    uint64_t head_us; /* when the first in flight became first (util_mono_us) */
    int stale;        /* close once idle: prepared statements broke */
    uint64_t prepared[MAX_STMTS / 64]; /* statement ids prepared (or being prepared) here */
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
    uint64_t deadline_ms;      /* 0: none */
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
    uint64_t pipelined;       /* statements sent on a busy connection */
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
    case DB_TIMEOUT:
        return "timeout";
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
        else if (st != NULL && strcmp(st, "57014") == 0)
            q->status = DB_TIMEOUT; /* statement_timeout: the server's side of the deadline */
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

/* Drops one of q's holds; frees q when none is left. */
static void
query_release(struct query *q, unsigned hold)
{
    q->hold &= ~hold;
    if (q->hold == 0) {
        PQclear(q->acc);
        free(q);
    }
}

/* Calls q's callback; frees q unless a connection still holds it. */
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
    q->res = NULL;
    free(q->detail_owned);
    q->detail_owned = NULL;
    query_release(q, HOLD_ANSWER);
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
    c->stale = 0;
}

/* Takes q off its connection. */
static void
conn_unlink(struct conn *c, struct query *q)
{
    TAILQ_REMOVE(&c->inflight, q, clink);
    c->ninflight--;
    PQclear(q->acc);
    q->acc = NULL;
}

/*
 * Ends the connection's statements in flight after it was closed: the first,
 * which the server was running, is answered `status` with `detail` (owned);
 * those behind it that only read go back to the front of the queue, in order
 * (the server had not run them, or ran them to no effect); any other is
 * answered DB_UNAVAILABLE, since it may have run.
 */
static void
conn_drop_inflight(struct conn *c, enum db_status status, char *detail)
{
    struct db_pool *p = c->pool;
    struct query *first = TAILQ_FIRST(&c->inflight), *q;

    while ((q = TAILQ_LAST(&c->inflight, query_list)) != NULL) {
        PGresult *said = q == first ? q->acc : NULL;
        if (said != NULL)
            q->acc = NULL;
        conn_unlink(c, q);
        q->conn = NULL;
        if (q->abandoned) {
            query_release(q, HOLD_CONN);
        } else if (said != NULL) {
            /* What the server said of it (57P01: terminated) says more than `detail`. */
            q->hold &= ~HOLD_CONN;
            query_result(q, said, 1);
        } else if (q == first) {
            q->hold &= ~HOLD_CONN;
            query_fail(q, status, NULL, detail);
            detail = NULL;
        } else if (q->read) {
            q->hold &= ~HOLD_CONN;
            q->state = Q_QUEUED;
            q->preparing = 0;
            TAILQ_INSERT_HEAD(&p->queue, q, link);
            p->nqueued++;
        } else {
            q->hold &= ~HOLD_CONN;
            query_fail(q, DB_UNAVAILABLE, NULL, xstrdup("connection lost"));
        }
    }
    free(detail);
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

/* An established connection broke: its statements are answered or queued again, the slot
 * may reconnect. */
static void
conn_lost(struct conn *c, const char *msg)
{
    char *line = pg_conn_first_line(msg);

    note_problem(c->pool, line);
    conn_close(c);
    c->state = C_DOWN;
    conn_drop_inflight(c, DB_UNAVAILABLE, line);
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

/*
 * Sends q on c, behind what c has in flight: its prepare first when c has not
 * prepared (or is not preparing) its text, then the statement, then a sync.
 * A connection that cannot take it is lost.
 */
/*
 * A statement with a deadline of its own is preceded, in the same implicit
 * transaction (no sync between), by a SET LOCAL of statement_timeout: the
 * server stops it at its own deadline rather than the pool's, and the
 * connection's setting is back at the sync. Its result is the first of the
 * statement's (query_keep keeps the statement's, or the first error).
 * Returns libpq's answer (1: queued), 1 for a statement without one.
 */
static int
send_own_timeout(PGconn *pg, const struct query *q)
{
    char ms[24];
    const char *param = ms;
    if (!q->own_timeout)
        return 1;
    snprintf(ms, sizeof ms, "%llu",
             q->deadline_ms > INT_MAX ? (unsigned long long)INT_MAX
                                      : (unsigned long long)q->deadline_ms);
    return PQsendQueryParams(pg, "SELECT set_config('statement_timeout', $1, true)", 1, NULL,
                             &param, NULL, NULL, 0);
}

static void
conn_run(struct conn *c, struct query *q)
{
    PGconn *pg = c->pc.pg;
    char name[32];
    int ok;

    assert(c->state == C_READY || c->state == C_BUSY);
    TAILQ_INSERT_TAIL(&c->inflight, q, clink);
    c->ninflight++;
    q->hold |= HOLD_CONN;
    q->conn = c;
    q->state = Q_RUNNING;
    q->preparing = q->stmt >= 0 && !is_prepared(c, q->stmt);
    if (c->state == C_BUSY) {
        c->pool->pipelined++;
    } else {
        c->state = C_BUSY;
        c->stage = q->preparing ? 0 : 1;
        c->head_us = util_mono_us();
    }
    if (q->stmt < 0) {
        ok = send_own_timeout(pg, q) &&
             PQsendQueryParams(pg, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0);
    } else {
        stmt_name(name, sizeof name, q->stmt);
        ok = !q->preparing || PQsendPrepare(pg, name, q->sql, 0, NULL);
        if (q->preparing && ok)
            set_prepared(c, q->stmt, 1); /* those sent behind it use it */
        ok = ok && send_own_timeout(pg, q) &&
             PQsendQueryPrepared(pg, name, q->nparams, q->params, NULL, NULL, 0);
    }
    ok = ok && PQpipelineSync(pg);
    if (ok)
        conn_flush(c);
    else
        conn_lost(c, PQerrorMessage(pg));
}

/* Keeps the result that answers q: the first error, else the last. */
static void
query_keep(struct query *q, PGresult *r)
{
    if (q->acc != NULL && PQresultStatus(q->acc) == PGRES_FATAL_ERROR) {
        PQclear(r);
        return;
    }
    PQclear(q->acc);
    q->acc = r;
}

/* The sync after the first statement in flight arrived: it is over. */
static void
conn_statement_done(struct conn *c)
{
    struct query *q = TAILQ_FIRST(&c->inflight), *next;
    PGresult *res = q->acc;
    int bad = PQstatus(c->pc.pg) == CONNECTION_BAD;
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    /*
     * A prepared statement the server lost (26000: DISCARD ALL, a pooler) or
     * can no longer run (0A000: its result type changed after ALTER TABLE)
     * stays broken on this connection: replace the connection. (One whose
     * prepare failed here is no longer marked prepared: its errors say nothing
     * of the connection.)
     */
    if (q->stmt >= 0 && !q->preparing && is_prepared(c, q->stmt) && st != NULL &&
        (strcmp(st, "26000") == 0 || strcmp(st, "0A000") == 0))
        c->stale = 1;
    q->acc = NULL;
    TAILQ_REMOVE(&c->inflight, q, clink);
    c->ninflight--;
    next = TAILQ_FIRST(&c->inflight);
    if (next != NULL) {
        c->stage = next->preparing ? 0 : 1;
        c->head_us = util_mono_us();
    } else
        c->state = C_READY;
    q->conn = NULL;
    if (q->abandoned) {
        PQclear(res);
        query_release(q, HOLD_CONN);
        return;
    }
    q->hold &= ~HOLD_CONN;
    if (res == NULL)
        query_fail(q, bad ? DB_UNAVAILABLE : DB_ERROR, NULL,
                   pg_conn_first_line(bad ? PQerrorMessage(c->pc.pg) : "no result from server"));
    else
        query_result(q, res, bad);
}

/* Takes the results that have arrived, statement by statement. Returns -1 when the
 * connection was dropped. */
static int
conn_results(struct conn *c)
{
    while (c->ninflight > 0 && !PQisBusy(c->pc.pg)) {
        struct query *q = TAILQ_FIRST(&c->inflight);
        PGresult *r = PQgetResult(c->pc.pg);
        if (r == NULL) {
            /* The end of a command's results: the prepare's, then its own. Past that a
             * sync comes, unless the connection broke (the caller sees it). */
            if (++c->stage > 2 + (int)q->own_timeout || PQstatus(c->pc.pg) == CONNECTION_BAD)
                break;
            continue;
        }
        switch (PQresultStatus(r)) {
        case PGRES_PIPELINE_SYNC:
            PQclear(r);
            conn_statement_done(c);
            break;
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            /* The connection is stuck in COPY mode: answer, then drop it. */
            PQclear(r);
            conn_close(c);
            c->state = C_DOWN;
            conn_drop_inflight(c, DB_ERROR, xstrdup("COPY is not supported"));
            return -1;
        default:
            if (q->preparing && c->stage == 0) {
                if (PQresultStatus(r) == PGRES_COMMAND_OK) {
                    PQclear(r);
                    break;
                }
                set_prepared(c, q->stmt, 0);
            }
            query_keep(q, r);
            break;
        }
    }
    return 0;
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
    if (conn_results(c) < 0)
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

/*
 * The busy connection a read may queue on: the one with the fewest statements
 * in flight, then the most recently started first one; never one whose first
 * has run PIPELINE_STALL_US already (a slow statement: what queues behind it
 * waits for all of it). NULL when none fits, or while a connection is being
 * opened (it will take the queue's head soon).
 */
static struct conn *
least_busy(struct db_pool *p)
{
    struct conn *best = NULL;
    uint64_t now = util_mono_us();

    if (count_conns(p, MASK(C_CONNECTING)) > 0)
        return NULL;
    for (unsigned i = 0; i < p->size; i++) {
        struct conn *c = &p->conns[i];
        if (c->state != C_BUSY || c->stale || c->ninflight >= PIPELINE_DEPTH ||
            now - c->head_us > PIPELINE_STALL_US)
            continue;
        if (best == NULL || c->ninflight < best->ninflight ||
            (c->ninflight == best->ninflight && c->head_us > best->head_us))
            best = c;
    }
    return best;
}

/*
 * Starts queued statements on idle connections and opens connections for the
 * rest; then, while the first waiting statement only reads, queues it on the
 * least busy connection. A write waits for an idle connection, and the reads
 * behind it wait with it, so that connections drain for it.
 */
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
    while ((q = TAILQ_FIRST(&p->queue)) != NULL && q->read && (c = least_busy(p)) != NULL) {
        TAILQ_REMOVE(&p->queue, q, link);
        p->nqueued--;
        conn_run(c, q);
    }
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
    if (PQenterPipelineMode(c->pc.pg) != 1) {
        connect_failed(c, "could not enter pipeline mode");
    } else {
        c->state = C_READY;
    }
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
    if (q->state == Q_RUNNING && q == TAILQ_FIRST(&c->inflight)) {
        /* No PQcancel (it blocks): drop the connection; statement_timeout stops the server. */
        conn_close(c);
        c->state = C_DOWN;
        conn_drop_inflight(c, DB_TIMEOUT, xstrdup("statement deadline exceeded"));
        settle(p);
        return;
    }
    if (q->state == Q_QUEUED) {
        TAILQ_REMOVE(&p->queue, q, link);
        p->nqueued--;
    } else if (q->state == Q_RUNNING) {
        /* Waiting behind another on its connection: answered now, its result dropped. */
        q->abandoned = 1;
        PQclear(q->acc);
        q->acc = NULL;
    }
    query_fail(q, DB_TIMEOUT, "statement deadline exceeded", NULL);
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
    p->deadline_ms = deadline_ms;
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
        TAILQ_INIT(&c->inflight);
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
        conn_close(c);
        c->state = C_DOWN;
        while ((q = TAILQ_FIRST(&c->inflight)) != NULL) {
            conn_unlink(c, q);
            q->conn = NULL;
            if (q->abandoned) {
                query_release(q, HOLD_CONN);
            } else {
                q->hold &= ~HOLD_CONN;
                query_fail(q, DB_UNAVAILABLE, "database pool closed", NULL);
            }
        }
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
db_query(struct db_pool *p, const char *sql, int nparams, const char *const *params, unsigned flags,
         db_cb *cb, void *arg)
{
    return db_query_within(p, sql, nparams, params, flags, 0, cb, arg);
}

int
db_query_within(struct db_pool *p, const char *sql, int nparams, const char *const *params,
                unsigned flags, uint64_t deadline_ms, db_cb *cb, void *arg)
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
    q->hold = HOLD_ANSWER;
    q->read = (flags & DB_READ) != 0;
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
    if (deadline_ms > 0 && deadline_ms != p->deadline_ms) {
        q->own_timeout = 1;
        q->deadline_ms = deadline_ms;
        q->deadline_tv = util_ms_to_tv(deadline_ms);
    }
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
        if (q->own_timeout)
            evtimer_add(&q->deadline, &q->deadline_tv);
        else if (p->deadline != NULL)
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
    h->pipelined = p->pipelined;
    snprintf(h->last_error, sizeof h->last_error, "%s", p->last_problem);
    h->last_error_ms = p->last_problem_ms;
}
