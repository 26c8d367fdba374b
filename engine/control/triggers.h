/* triggers.h - the PostgreSQL triggers behind on_change: SQL that installs or removes them. */
#ifndef SLUICE_TRIGGERS_H
#define SLUICE_TRIGGERS_H

#include <stdbool.h>
#include <stddef.h>

struct policy_on_change;

/* The NOTIFY channel the triggers send on and `sluice serve` listens to. */
#define TRIGGERS_CHANNEL "sluice_changes"

/*
 * Longest payload a trigger sends with rows (bytes). PostgreSQL refuses
 * payloads of 8000 bytes and more; a longer one is sent without rows.
 */
#define TRIGGERS_PAYLOAD_MAX 7900

/*
 * Returns the SQL (a new string, owned by the caller) that installs, for
 * each of the n on_change declarations, a trigger function and two triggers
 * on its table: AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW, and AFTER
 * TRUNCATE. Each changed row is sent as pg_notify(TRIGGERS_CHANNEL, payload)
 * with the compact JSON payload
 *
 *   {"table":"contacts","op":"UPDATE","old":{"owner_id":"1"},"new":{"owner_id":"2"}}
 *
 * where "table" is the declaration's table as written, "old" (UPDATE,
 * DELETE) and "new" (INSERT, UPDATE) hold only the declaration's columns,
 * each as its text form (SQL NULL as null). A payload that would be longer
 * than TRIGGERS_PAYLOAD_MAX, a row that cannot be read (a column dropped
 * since), and TRUNCATE send {"table":...,"op":...} without rows, which means
 * "the rows are unknown". The script runs in one transaction, checks first
 * that every table and column exists, and replaces what an earlier run
 * installed. With `drop`, the SQL removes the functions and their triggers
 * instead.
 */
char *triggers_sql(const struct policy_on_change *oc, size_t n, bool drop);

/*
 * Writes the trigger function's name for `table` ("contacts" or
 * "schema.contacts") into out[0..cap) as a quoted, possibly schema-qualified
 * identifier: "sluice_notify_contacts" or "schema"."sluice_notify_contacts";
 * names that would pass PostgreSQL's 63 bytes are shortened with a hash.
 * Returns the length, or -1 when it does not fit.
 */
long triggers_function_name(const char *table, char *out, size_t cap);

/*
 * Returns `table` ("contacts" or "schema.contacts") as the triggers name it:
 * a quoted, possibly schema-qualified identifier ("contacts" or
 * "schema"."contacts"), as a new string.
 */
char *triggers_table_name(const char *table);

#endif
