/* sql_check.h - the SQL of a policy set checked against the database before the set serves. */
#ifndef SLUICE_SQL_CHECK_H
#define SLUICE_SQL_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct policy;

/* How long one check may take, its connect included (also its statement_timeout). */
#define SQL_CHECK_BUDGET_MS 5000

/* Whether p declares anything the database could refuse: statements or on_change tables. */
bool sql_check_wanted(const struct policy *p);

/*
 * Checks, on one connection to `conninfo` (NULL or "": the PG* environment),
 * everything p declares of the database: every SQL endpoint's statement, the
 * identity's tier lookup and API key lookup, and each warm query are
 * prepared (as the engine runs them) and described, never run; each
 * statement must take as many parameters as it has args, and the tier lookup
 * must answer one column of a text-like type (a type of category 'S', as
 * text, varchar, char, name or citext, or an enum); each on_change table and
 * the columns its templates use must exist. Blocks the calling thread for at
 * most budget_ms: never call it on a worker's event loop.
 *
 * Returns 0 when the database accepts everything (or p declares nothing);
 * 1 with one "file:line: message" line per problem in *errors (a new string,
 * sorted by file and line; the line is the declaration's, the message
 * PostgreSQL's with its hint); -1 with the reason in `why` when the check
 * could not be made (no connection, the budget spent): nothing is known then.
 */
int sql_check_policy(const struct policy *p, const char *conninfo, uint64_t budget_ms,
                     char **errors, char *why, size_t whylen);

#endif
