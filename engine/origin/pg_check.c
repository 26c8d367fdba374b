/* pg_check.c - statements prepared and described on one blocking connection under one deadline. */
#define _GNU_SOURCE
#include "pg_check.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "log.h"
#include "pg_conn.h"
#include "util.h"

struct pg_check {
    PGconn *pg;
    uint64_t budget_ms;
    uint64_t deadline_us; /* on the monotonic clock: nothing waits past it */
};

/* Copies libpq's message for the connection (its first line) into err. */
static void
conn_error(struct pg_check *c, char *err, size_t errlen)
{
    char *line = pg_conn_first_line(PQerrorMessage(c->pg));
    util_seterr(err, errlen, "%s", line);
    free(line);
}

/* Waits until the socket is ready for `events`, at most until `deadline_us`. Returns 0, or -1
 * with the reason in err. */
static int
wait_socket(struct pg_check *c, short events, uint64_t deadline_us, const char *late, char *err,
            size_t errlen)
{
    for (;;) {
        uint64_t now = util_mono_us();
        if (now >= deadline_us) {
            util_seterr(err, errlen, "%s", late);
            return -1;
        }
        struct pollfd pfd = {.fd = PQsocket(c->pg), .events = events};
        if (pfd.fd < 0) {
            util_seterr(err, errlen, "the connection has no socket");
            return -1;
        }
        int n = poll(&pfd, 1, (int)((deadline_us - now + 999) / 1000));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR) {
            util_seterr(err, errlen, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

static void
ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Connects, within the connect deadline of params and the session's. Returns 0, or -1. */
static int
connect_within(struct pg_check *c, const struct pg_conn_params *params, char *err, size_t errlen)
{
    uint64_t deadline = util_mono_us() + (uint64_t)params->connect_tv.tv_sec * 1000000 +
                        (uint64_t)params->connect_tv.tv_usec;
    if (deadline > c->deadline_us)
        deadline = c->deadline_us;
    c->pg = PQconnectStartParams((const char *const *)params->keywords,
                                 (const char *const *)params->values, 0);
    if (c->pg == NULL) {
        log_abort("out of memory (libpq connection)");
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_error(c, err, errlen);
        return -1;
    }
    PQsetNoticeProcessor(c->pg, ignore_notice, NULL); /* libpq would print them on stderr */
    /* Before the first PQconnectPoll, libpq wants the socket writable. */
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) {
            conn_error(c, err, errlen);
            return -1;
        }
        if (wait_socket(c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline,
                        "timeout expired while connecting", err, errlen) != 0)
            return -1;
        st = PQconnectPoll(c->pg);
    }
    if (PQsetnonblocking(c->pg, 1) != 0) {
        conn_error(c, err, errlen);
        return -1;
    }
    return 0;
}

struct pg_check *
pg_check_open(const char *conninfo, uint64_t budget_ms, char *err, size_t errlen)
{
    char timeout[64];
    snprintf(timeout, sizeof(timeout), "-c statement_timeout=%llu", (unsigned long long)budget_ms);
    const struct pg_conn_options opts = {
        .fallback_application_name = "sluice check",
        .server_options = timeout,
    };
    struct pg_conn_params *params = pg_conn_params_new(conninfo, &opts, err, errlen);
    if (params == NULL)
        return NULL;
    struct pg_check *c = xcalloc(1, sizeof(*c));
    c->budget_ms = budget_ms;
    c->deadline_us = util_mono_us() + budget_ms * 1000;
    int rc = connect_within(c, params, err, errlen);
    pg_conn_params_free(params);
    if (rc != 0) {
        pg_check_close(c);
        return NULL;
    }
    return c;
}

void
pg_check_close(struct pg_check *c)
{
    if (c == NULL)
        return;
    PQfinish(c->pg);
    free(c);
}

/*
 * Waits for the answer to what was just sent: returns the first failed result, else the last
 * one (new), or NULL with err when the connection broke or the deadline passed.
 */
static PGresult *
collect(struct pg_check *c, char *err, size_t errlen)
{
    char late[96];
    snprintf(late, sizeof(late), "no answer within %llu ms", (unsigned long long)c->budget_ms);
    int f;
    while ((f = PQflush(c->pg)) == 1) {
        if (wait_socket(c, POLLIN | POLLOUT, c->deadline_us, late, err, errlen) != 0)
            return NULL;
        if (PQconsumeInput(c->pg) == 0)
            goto broken;
    }
    if (f < 0)
        goto broken;
    PGresult *keep = NULL;
    for (;;) {
        while (PQisBusy(c->pg)) {
            if (wait_socket(c, POLLIN, c->deadline_us, late, err, errlen) != 0) {
                PQclear(keep);
                return NULL;
            }
            if (PQconsumeInput(c->pg) == 0) {
                PQclear(keep);
                goto broken;
            }
        }
        PGresult *r = PQgetResult(c->pg);
        if (r == NULL)
            break;
        if (keep && PQresultStatus(keep) == PGRES_FATAL_ERROR) {
            PQclear(r);
        } else {
            PQclear(keep);
            keep = r;
        }
    }
    if (keep)
        return keep;
broken:
    conn_error(c, err, errlen);
    return NULL;
}

/*
 * PostgreSQL's reason for the failed result r into err: the primary message, and its hint.
 * Returns PG_CHECK_REFUSED, or PG_CHECK_FAILED when the failure is not the statement's
 * (connection, timeout, resources: SQLSTATE classes 08, 53, 57).
 */
static int
refusal(const PGresult *r, char *err, size_t errlen)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    const char *hint = PQresultErrorField(r, PG_DIAG_MESSAGE_HINT);
    char *line = primary ? NULL : pg_conn_first_line(PQresultErrorMessage(r));
    if (hint)
        util_seterr(err, errlen, "%s (hint: %s)", primary ? primary : line, hint);
    else
        util_seterr(err, errlen, "%s", primary ? primary : line);
    free(line);
    for (char *p = err; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' '; /* one line per problem */
    if (state && (strncmp(state, "08", 2) == 0 || strncmp(state, "53", 2) == 0 ||
                  strncmp(state, "57", 2) == 0))
        return PG_CHECK_FAILED;
    return PG_CHECK_REFUSED;
}

int
pg_check_describe(struct pg_check *c, const char *sql, struct pg_check_statement *st, char *err,
                  size_t errlen)
{
    memset(st, 0, sizeof(*st));
    if (!PQsendPrepare(c->pg, "", sql, 0, NULL)) {
        conn_error(c, err, errlen);
        return PG_CHECK_FAILED;
    }
    PGresult *r = collect(c, err, errlen);
    if (r == NULL)
        return PG_CHECK_FAILED;
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : refusal(r, err, errlen);
    PQclear(r);
    if (rc != 0)
        return rc;
    if (!PQsendDescribePrepared(c->pg, "")) {
        conn_error(c, err, errlen);
        return PG_CHECK_FAILED;
    }
    r = collect(c, err, errlen);
    if (r == NULL)
        return PG_CHECK_FAILED;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = refusal(r, err, errlen);
        PQclear(r);
        return rc;
    }
    st->nparams = PQnparams(r);
    st->ncolumns = PQnfields(r);
    st->first_type = st->ncolumns > 0 ? (unsigned)PQftype(r, 0) : 0;
    PQclear(r);
    return 0;
}

int
pg_check_value(struct pg_check *c, const char *sql, int nparams, const char *const *params,
               char *out, size_t outlen, int *isnull, char *err, size_t errlen)
{
    if (outlen)
        out[0] = '\0';
    if (isnull)
        *isnull = 1;
    if (!PQsendQueryParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0)) {
        conn_error(c, err, errlen);
        return PG_CHECK_FAILED;
    }
    PGresult *r = collect(c, err, errlen);
    if (r == NULL)
        return PG_CHECK_FAILED;
    int rc = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = refusal(r, err, errlen);
    else if (PQntuples(r) > 0 && PQnfields(r) > 0 && !PQgetisnull(r, 0, 0)) {
        if (isnull)
            *isnull = 0;
        if (outlen)
            snprintf(out, outlen, "%s", PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return rc;
}
