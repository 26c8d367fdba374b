/* sql_check.c - the SQL of a policy set checked against the database before the set serves. */
#define _GNU_SOURCE
#include "sql_check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg_check.h"
#include "policy.h"
#include "triggers.h"
#include "util.h"
#include "warm.h"

/* One problem found, to be sorted by place. */
struct problem {
    const char *file; /* borrowed from the policy */
    int line;
    size_t seq; /* order found, among problems of one line */
    char *text; /* what follows "file:line: " */
};

struct run {
    struct pg_check *db;
    struct problem *problems;
    size_t nproblems;
    int failed;     /* the check could not go on */
    char why[1024]; /* ... because of this */
};

static void add_problem(struct run *r, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
add_problem(struct run *r, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = NULL;
    if (vasprintf(&text, fmt, ap) < 0)
        text = NULL;
    va_end(ap);
    if (text == NULL) {
        log_abort("out of memory (sql check)");
    }
    r->problems = xrealloc(r->problems, (r->nproblems + 1) * sizeof(*r->problems));
    r->problems[r->nproblems] = (struct problem){
        .file = file ? file : "?", .line = line, .seq = r->nproblems, .text = text};
    r->nproblems++;
}

/* Records a failure that stops the check (the first one says why). */
static void
fail(struct run *r, const char *why)
{
    if (!r->failed)
        util_seterr(r->why, sizeof(r->why), "%s", why);
    r->failed = 1;
}

/*
 * Prepares and describes `sql` of the declaration `what` at file:line: a refusal is a problem,
 * and so is a parameter count other than nargs. Returns 0 with *st filled when PostgreSQL
 * accepted the statement, else -1.
 */
static int
describe(struct run *r, const char *file, int line, const char *what, const char *sql, size_t nargs,
         const char *args_field, struct pg_check_statement *st)
{
    char err[1024];
    if (r->failed)
        return -1;
    int rc = pg_check_describe(r->db, sql, st, err, sizeof(err));
    if (rc == PG_CHECK_FAILED) {
        fail(r, err);
        return -1;
    }
    if (rc == PG_CHECK_REFUSED) {
        add_problem(r, file, line, "%s: %s", what, err);
        return -1;
    }
    if ((size_t)st->nparams != nargs) {
        if (args_field)
            add_problem(r, file, line,
                        "%s: PostgreSQL counts %d parameter%s in the statement but %s has %zu "
                        "value%s",
                        what, st->nparams, st->nparams == 1 ? "" : "s", args_field, nargs,
                        nargs == 1 ? "" : "s");
        else
            add_problem(r, file, line,
                        "%s: PostgreSQL counts %d parameter%s in the statement, which takes %zu",
                        what, st->nparams, st->nparams == 1 ? "" : "s", nargs);
        return -1;
    }
    return 0;
}

/* The identity's tier lookup: one column of a text-like type. */
static void
check_tier(struct run *r, const struct policy_identity *id)
{
    struct pg_check_statement st;
    if (describe(r, id->file, id->line, "identity: tier.sql", id->tier_sql, id->ntier_args,
                 "tier.args", &st) != 0)
        return;
    if (st.ncolumns != 1) {
        add_problem(r, id->file, id->line,
                    "identity: tier.sql: answers %d columns; the tier lookup answers one, the "
                    "tier's name",
                    st.ncolumns);
        return;
    }
    /* The category and the name of the column's type: "S text", "N integer", ... */
    char oid[16], out[256], err[512];
    snprintf(oid, sizeof(oid), "%u", st.first_type);
    const char *params[] = {oid};
    int rc = pg_check_value(r->db,
                            "SELECT typcategory::text || ' ' || format_type(oid, NULL) "
                            "FROM pg_catalog.pg_type WHERE oid = $1::oid",
                            1, params, out, sizeof(out), NULL, err, sizeof(err));
    if (rc != 0) {
        fail(r, err);
        return;
    }
    if (out[0] != 'S' && out[0] != 'E')
        add_problem(r, id->file, id->line,
                    "identity: tier.sql: its column is of type %s; the tier's name must be text "
                    "(text, varchar, char, name, citext or an enum)",
                    out[0] ? out + 2 : oid);
}

/* An on_change table, and the columns its templates use. */
static void
check_on_change(struct run *r, const struct policy_on_change *oc)
{
    char out[256], err[512];
    int isnull;
    if (r->failed)
        return;
    char *qtable = triggers_table_name(oc->table);
    const char *params[2] = {qtable, NULL};
    int rc = pg_check_value(r->db, "SELECT to_regclass($1)::text", 1, params, out, sizeof(out),
                            &isnull, err, sizeof(err));
    if (rc == PG_CHECK_FAILED) {
        fail(r, err);
    } else if (rc == PG_CHECK_REFUSED) {
        add_problem(r, oc->file, oc->line, "on_change \"%s\": %s", oc->table, err);
    } else if (isnull) {
        add_problem(r, oc->file, oc->line, "on_change \"%s\": the database has no table %s",
                    oc->table, qtable);
    } else {
        for (size_t i = 0; i < oc->ncolumns && !r->failed; i++) {
            params[1] = oc->columns[i];
            rc = pg_check_value(r->db,
                                "SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = "
                                "to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT "
                                "attisdropped",
                                2, params, out, sizeof(out), &isnull, err, sizeof(err));
            if (rc != 0)
                fail(r, err);
            else if (isnull)
                add_problem(r, oc->file, oc->line,
                            "on_change \"%s\": table %s has no column \"%s\"", oc->table, qtable,
                            oc->columns[i]);
        }
    }
    free(qtable);
}

static void
check_endpoint(struct run *r, const struct policy_endpoint *e)
{
    struct pg_check_statement st;
    char what[512];
    if (e->source == SOURCE_SQL && e->sql) {
        snprintf(what, sizeof(what), "endpoint \"%s\": sql", e->name ? e->name : "?");
        describe(r, e->file, e->line, what, e->sql, e->nargs, "args", &st);
    }
    if (e->warm && e->warm->sql) {
        char *sql = gw_warm_query_sql(e->warm->sql);
        snprintf(what, sizeof(what), "endpoint \"%s\": cache.warm.sql", e->name ? e->name : "?");
        describe(r, e->file, e->line, what, sql, 0, NULL, &st);
        free(sql);
    }
}

bool
sql_check_wanted(const struct policy *p)
{
    if (p->identity.tier_sql || (p->identity.api_key && p->identity.api_key->sql) || p->non_change)
        return true;
    for (size_t i = 0; i < p->nendpoints; i++)
        if ((p->endpoints[i].source == SOURCE_SQL && p->endpoints[i].sql) ||
            (p->endpoints[i].warm && p->endpoints[i].warm->sql))
            return true;
    return false;
}

static int
cmp_problem(const void *a, const void *b)
{
    const struct problem *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    if (c)
        return c;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int
sql_check_policy(const struct policy *p, const char *conninfo, uint64_t budget_ms, char **errors,
                 char *why, size_t whylen)
{
    *errors = NULL;
    if (!sql_check_wanted(p))
        return 0;
    struct run r = {0};
    char err[512];
    r.db = pg_check_open(conninfo, budget_ms, err, sizeof(err));
    if (r.db == NULL) {
        util_seterr(why, whylen, "%s", err);
        return -1;
    }
    const struct policy_identity *id = &p->identity;
    struct pg_check_statement st;
    if (id->tier_sql)
        check_tier(&r, id);
    if (id->api_key && id->api_key->sql)
        describe(&r, id->file, id->line, "identity: api_key.sql", id->api_key->sql, 1, NULL, &st);
    for (size_t i = 0; i < p->nendpoints; i++)
        check_endpoint(&r, &p->endpoints[i]);
    for (size_t i = 0; i < p->non_change; i++)
        check_on_change(&r, &p->on_change[i]);
    pg_check_close(r.db);

    /* What PostgreSQL refused is known even when the check stopped before the end. */
    int rc = r.nproblems ? 1 : r.failed ? -1 : 0;
    if (r.nproblems) {
        qsort(r.problems, r.nproblems, sizeof(*r.problems), cmp_problem);
        struct sbuf b = {0};
        for (size_t i = 0; i < r.nproblems; i++)
            sbuf_printf(&b, "%s:%d: %s\n", r.problems[i].file, r.problems[i].line,
                        r.problems[i].text);
        *errors = b.p;
    } else if (r.failed) {
        util_seterr(why, whylen, "%s", r.why);
    }
    for (size_t i = 0; i < r.nproblems; i++)
        free(r.problems[i].text);
    free(r.problems);
    return rc;
}
