/* db.h - asynchronous PostgreSQL pool (libpq) on a worker's event loop. */
#ifndef SLUICE_DB_H
#define SLUICE_DB_H

#include <stddef.h>
#include <stdint.h>

struct event_base;

enum db_status {
    DB_OK = 0,
    DB_CLIENT_ERROR, /* the statement failed because of its input (SQLSTATE class 22 or 23): 400/409
                      */
    DB_ERROR,        /* the statement failed otherwise: 502 */
    DB_UNAVAILABLE,  /* no connection, connection lost, queue full: 503 */
    DB_TIMEOUT,      /* the statement's deadline passed (ours, or its statement_timeout): 504 */
};

/* A word for s, for labels and logs: "ok", "client_error", "error", "unavailable", "timeout". */
const char *db_status_word(enum db_status s);

struct db_result {
    enum db_status status;
    const char *value; /* first column of the first row as text, NULL if no row or SQL NULL;
                          borrowed, valid during the callback only */
    size_t value_len;
    long nrows;           /* rows returned */
    long affected;        /* PQcmdTuples, or -1 */
    const char *sqlstate; /* "23505" ... or "" */
    const char *detail;   /* short human message, never NULL */
};

typedef void db_cb(void *arg, const struct db_result *res);

struct db_pool;

/*
 * Creates a pool of up to `size` connections to `conninfo` on `base`;
 * connections are opened lazily and reopened after failures (with backoff).
 * Every statement has `deadline_ms` from submission to answer (also set as
 * statement_timeout); past it the query is answered DB_TIMEOUT and its
 * connection is dropped; 0 means no deadline. At most `max_queue` statements
 * wait for a free connection. While every connection slot is backing off after
 * failed connect attempts, statements are answered DB_UNAVAILABLE at once.
 * Returns a new pool, or NULL with a message in err on a bad conninfo or a
 * size or max_queue of 0. The pool belongs to the thread running `base`.
 * Host names are resolved by libpq synchronously when connecting; use IP
 * addresses (hostaddr) or a socket directory to keep the loop from blocking.
 */
struct db_pool *db_pool_new(struct event_base *base, const char *conninfo, unsigned size,
                            uint64_t deadline_ms, unsigned max_queue, char *err, size_t errlen);

/*
 * Frees the pool; every pending callback is answered DB_UNAVAILABLE first
 * (db_query from those callbacks returns -1). May be called from a callback;
 * the pool is then freed once the callbacks due in that pass have run.
 */
void db_pool_free(struct db_pool *p);

/* db_query flags. DB_READ: the statement only reads, so it may wait on a busy connection
 * behind others (at most 8 in flight on one), and run again on another connection when its
 * own is lost before the server began it. Without it a statement waits for an idle one. */
#define DB_READ 1u

/*
 * Runs `sql` with text parameters (NULL for SQL NULL); the SQL text and the
 * parameters are copied before this returns. Each distinct SQL text is
 * prepared once per connection (the first 256 per pool; later ones run
 * unprepared). Each statement is its own transaction, as outside a pipeline.
 * `cb` is called exactly once, always from the event loop (never before
 * db_query returns). Returns 0, or -1 when the pool is shutting down (cb is
 * not called then).
 */
int db_query(struct db_pool *p, const char *sql, int nparams, const char *const *params,
             unsigned flags, db_cb *cb, void *arg);

/*
 * As db_query, with a deadline of its own: `deadline_ms` from submission to
 * answer instead of the pool's (0: the pool's). The server stops the
 * statement at it too (a SET LOCAL statement_timeout sent with it, in its
 * own implicit transaction: no extra round trip), longer or shorter than
 * the pool's.
 */
int db_query_within(struct db_pool *p, const char *sql, int nparams, const char *const *params,
                    unsigned flags, uint64_t deadline_ms, db_cb *cb, void *arg);

/* Statements waiting or running, for status output. */
unsigned db_pool_pending(const struct db_pool *p);

/* Connections currently established (idle or running a statement). */
unsigned db_pool_connections(const struct db_pool *p);

/* A pool's state, for status output and metrics. */
struct db_health {
    unsigned size;          /* connection slots */
    unsigned connections;   /* established (idle or running a statement) */
    unsigned backing_off;   /* slots waiting to retry after a failed connect */
    unsigned pending;       /* statements waiting or running */
    uint64_t pipelined;     /* statements sent behind another on a busy connection, ever */
    char last_error[256];   /* the last failed connect or lost connection; "" if none */
    uint64_t last_error_ms; /* when it happened (ms since the epoch); 0 if never */
};

/* Fills *h with p's state now. */
void db_pool_health(const struct db_pool *p, struct db_health *h);

#endif
