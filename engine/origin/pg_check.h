/* pg_check.h - statements prepared and described on one blocking connection under one deadline. */
#ifndef SLUICE_PG_CHECK_H
#define SLUICE_PG_CHECK_H

#include <stddef.h>
#include <stdint.h>

struct pg_check;

/* What PostgreSQL says of a prepared statement. */
struct pg_check_statement {
    int nparams;         /* $n parameters the statement takes */
    int ncolumns;        /* columns of its rows (0: it returns none) */
    unsigned first_type; /* the type OID of the first column; 0 when there is none */
};

/* What pg_check_describe and pg_check_value return besides 0. */
#define PG_CHECK_REFUSED 1 /* PostgreSQL refused the statement: its message is in err */
#define PG_CHECK_FAILED -1 /* the connection broke or the deadline passed: err says which */

/*
 * Opens one connection to `conninfo` (read as pg_conn_params_new reads it;
 * NULL or "": the PG* environment) for checking statements. Everything done
 * on it, the connect included, ends within `budget_ms` of this call; the
 * session's statement_timeout is the budget too. Blocks the calling thread:
 * never call it on an event loop that serves. Returns a new session, or NULL
 * with the reason in err (the first line of libpq's message, or the deadline).
 */
struct pg_check *pg_check_open(const char *conninfo, uint64_t budget_ms, char *err, size_t errlen);

/* Closes the session; NULL is a no-op. */
void pg_check_close(struct pg_check *c);

/*
 * Prepares `sql` as the unnamed statement (untyped parameters, as the pool
 * prepares it) and describes it into *st. Nothing runs. Returns 0;
 * PG_CHECK_REFUSED with PostgreSQL's primary message, and " (hint: HINT)"
 * when it gives one, in err; or PG_CHECK_FAILED.
 */
int pg_check_describe(struct pg_check *c, const char *sql, struct pg_check_statement *st, char *err,
                      size_t errlen);

/*
 * Runs `sql` with `nparams` text parameters and copies the first column of
 * its first row into out (cut to outlen - 1 bytes; "" for SQL NULL or no
 * row; *isnull says which when not NULL). Returns 0, PG_CHECK_REFUSED or
 * PG_CHECK_FAILED as pg_check_describe does.
 */
int pg_check_value(struct pg_check *c, const char *sql, int nparams, const char *const *params,
                   char *out, size_t outlen, int *isnull, char *err, size_t errlen);

#endif
