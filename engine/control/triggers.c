/* triggers.c - generates the SQL of the PostgreSQL triggers that send on_change notifications. */
#include "triggers.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "util.h"

#define FUNCTION_PREFIX "sluice_notify_"
#define ROW_TRIGGER "sluice_notify"
#define TRUNCATE_TRIGGER "sluice_notify_truncate"
#define NAME_MAX_BYTES 63 /* PostgreSQL's NAMEDATALEN - 1 */

/* Appends s[0..len) as a quoted identifier. */
static void
add_ident(struct sbuf *b, const char *s, size_t len)
{
    sbuf_adds(b, "\"");
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"')
            sbuf_adds(b, "\"\"");
        else
            sbuf_add(b, &s[i], 1);
    }
    sbuf_adds(b, "\"");
}

/* Appends "table" or "schema"."table". */
static void
add_table(struct sbuf *b, const char *table)
{
    const char *dot = strchr(table, '.');
    if (dot) {
        add_ident(b, table, (size_t)(dot - table));
        sbuf_adds(b, ".");
        table = dot + 1;
    }
    add_ident(b, table, strlen(table));
}

char *
triggers_table_name(const char *table)
{
    struct sbuf b = {0};
    add_table(&b, table);
    return b.p;
}

/* Appends s as a string literal, right whatever standard_conforming_strings says. */
static void
add_literal(struct sbuf *b, const char *s)
{
    sbuf_adds(b, strchr(s, '\\') ? "E'" : "'");
    for (; *s; s++) {
        if (*s == '\'')
            sbuf_adds(b, "''");
        else if (*s == '\\')
            sbuf_adds(b, "\\\\");
        else
            sbuf_add(b, s, 1);
    }
    sbuf_adds(b, "'");
}

/* Appends s as the inside of a JSON string (no quotes). */
static void
add_json_chars(struct sbuf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            sbuf_printf(b, "\\%c", c);
        else if (c < 0x20)
            sbuf_printf(b, "\\u%04x", c);
        else
            sbuf_add(b, s, 1);
    }
}

/* Appends a string literal holding `prefix` + JSON string chars of `s` + `suffix`. */
static void
add_json_literal(struct sbuf *b, const char *prefix, const char *s, const char *suffix)
{
    struct sbuf t = {0};
    sbuf_adds(&t, prefix);
    add_json_chars(&t, s);
    sbuf_adds(&t, suffix);
    add_literal(b, t.p);
    sbuf_free(&t);
}

/* Appends the trigger function's name for `table`, quoted and schema-qualified as it is. */
static void
add_function_name(struct sbuf *b, const char *table)
{
    const char *dot = strchr(table, '.');
    const char *name = dot ? dot + 1 : table;
    char fn[NAME_MAX_BYTES + 1];

    if (strlen(FUNCTION_PREFIX) + strlen(name) <= NAME_MAX_BYTES)
        snprintf(fn, sizeof(fn), "%s%s", FUNCTION_PREFIX, name);
    else
        snprintf(fn, sizeof(fn), "%s%.32s_%016llx", FUNCTION_PREFIX, name,
                 (unsigned long long)util_fnv1a(table, strlen(table)));
    if (dot) {
        add_ident(b, table, (size_t)(dot - table));
        sbuf_adds(b, ".");
    }
    add_ident(b, fn, strlen(fn));
}

long
triggers_function_name(const char *table, char *out, size_t cap)
{
    struct sbuf b = {0};
    long rc = -1;

    add_function_name(&b, table);
    if (b.len < cap) {
        memcpy(out, b.p, b.len + 1);
        rc = (long)b.len;
    } else if (cap > 0) {
        out[0] = '\0';
    }
    sbuf_free(&b);
    return rc;
}

/* Appends the expression building one row's JSON object from `rec` (OLD or NEW). */
static void
add_row_expr(struct sbuf *b, const struct policy_on_change *oc, const char *rec)
{
    if (oc->ncolumns == 0) {
        sbuf_adds(b, "'{}'");
        return;
    }
    for (size_t i = 0; i < oc->ncolumns; i++) {
        const char *col = oc->columns[i];
        add_json_literal(b, i == 0 ? "{\"" : ",\"", col, "\":");
        sbuf_printf(b, "\n                || coalesce(to_json(%s.", rec);
        add_ident(b, col, strlen(col));
        sbuf_adds(b, "::text)::text, 'null') || ");
    }
    sbuf_adds(b, "'}'");
}

/* Appends body wrapped in a dollar quote whose tag it does not contain. */
static void
add_dollar_quoted(struct sbuf *b, const char *body)
{
    char tag[32] = "$sluice$";
    for (int i = 1; strstr(body, tag); i++)
        snprintf(tag, sizeof(tag), "$sluice%d$", i);
    sbuf_printf(b, "%s\n%s%s", tag, body, tag);
}

/* The DO block that refuses to install when the table or a column is missing. */
static void
add_check(struct sbuf *b, const struct policy_on_change *oc)
{
    struct sbuf where = {0}, qtable = {0}, body = {0};
    sbuf_printf(&where, "on_change \"%s\" (%s:%d)", oc->table, oc->file ? oc->file : "?", oc->line);
    add_table(&qtable, oc->table);

    sbuf_adds(&body, "DECLARE\n    col text;\nBEGIN\n    IF to_regclass(");
    add_literal(&body, qtable.p);
    sbuf_adds(&body, ") IS NULL THEN\n        RAISE EXCEPTION '%: there is no table %', ");
    add_literal(&body, where.p);
    sbuf_adds(&body, ", ");
    add_literal(&body, qtable.p);
    sbuf_adds(&body, ";\n    END IF;\n    FOREACH col IN ARRAY ARRAY[");
    for (size_t i = 0; i < oc->ncolumns; i++) {
        if (i)
            sbuf_adds(&body, ", ");
        add_literal(&body, oc->columns[i]);
    }
    sbuf_adds(&body, "]::text[] LOOP\n"
                     "        IF NOT EXISTS (SELECT 1 FROM pg_attribute\n"
                     "                       WHERE attrelid = ");
    add_literal(&body, qtable.p);
    sbuf_adds(&body, "::regclass AND attname = col\n"
                     "                         AND attnum > 0 AND NOT attisdropped) THEN\n"
                     "            RAISE EXCEPTION '%: table % has no column \"%\"', ");
    add_literal(&body, where.p);
    sbuf_adds(&body, ", ");
    add_literal(&body, qtable.p);
    sbuf_adds(&body, ", col;\n        END IF;\n    END LOOP;\nEND\n");
    sbuf_adds(b, "DO ");
    add_dollar_quoted(b, body.p);
    sbuf_adds(b, ";\n");
    sbuf_free(&where);
    sbuf_free(&qtable);
    sbuf_free(&body);
}

/* The trigger function of one declaration. */
static void
add_function(struct sbuf *b, const struct policy_on_change *oc, const char *fn)
{
    struct sbuf body = {0}, where = {0};

    sbuf_printf(&where, "on_change \"%s\" (%s:%d)", oc->table, oc->file ? oc->file : "?", oc->line);
    sbuf_adds(&body, "DECLARE\n    payload text;\nBEGIN\n"
                     "    IF TG_OP <> 'TRUNCATE' THEN\n"
                     "        BEGIN\n"
                     "            payload := ");
    add_json_literal(&body, "{\"table\":\"", oc->table, "\",\"op\":\"");
    sbuf_adds(&body, " || TG_OP || '\"';\n"
                     "            IF TG_OP <> 'INSERT' THEN\n"
                     "                payload := payload || ',\"old\":' || ");
    add_row_expr(&body, oc, "OLD");
    sbuf_adds(&body, ";\n"
                     "            END IF;\n"
                     "            IF TG_OP <> 'DELETE' THEN\n"
                     "                payload := payload || ',\"new\":' || ");
    add_row_expr(&body, oc, "NEW");
    sbuf_adds(&body, ";\n"
                     "            END IF;\n"
                     "            payload := payload || '}';\n"
                     "        EXCEPTION WHEN OTHERS THEN\n"
                     "            RAISE WARNING '%: %; every cached entry is dropped instead', ");
    add_literal(&body, where.p);
    sbuf_adds(&body, ", SQLERRM;\n"
                     "            payload := NULL;\n"
                     "        END;\n"
                     "    END IF;\n");
    sbuf_printf(&body,
                "    -- Without rows (TRUNCATE, too long, unreadable): the rows are unknown.\n"
                "    IF payload IS NULL OR octet_length(payload) > %d THEN\n"
                "        payload := ",
                TRIGGERS_PAYLOAD_MAX);
    add_json_literal(&body, "{\"table\":\"", oc->table, "\",\"op\":\"");
    sbuf_adds(&body, " || TG_OP || '\"}';\n"
                     "    END IF;\n"
                     "    PERFORM pg_notify('" TRIGGERS_CHANNEL "', payload);\n"
                     "    RETURN NULL;\n"
                     "END\n");

    sbuf_printf(b, "CREATE OR REPLACE FUNCTION %s() RETURNS trigger\nLANGUAGE plpgsql AS ", fn);
    add_dollar_quoted(b, body.p);
    sbuf_adds(b, ";\n");
    sbuf_free(&body);
    sbuf_free(&where);
}

static void
add_triggers(struct sbuf *b, const struct policy_on_change *oc, const char *fn)
{
    struct sbuf qtable = {0};
    add_table(&qtable, oc->table);
    sbuf_printf(b,
                "DROP TRIGGER IF EXISTS \"" ROW_TRIGGER "\" ON %s;\n"
                "CREATE TRIGGER \"" ROW_TRIGGER "\" AFTER INSERT OR UPDATE OR DELETE ON %s\n"
                "    FOR EACH ROW EXECUTE FUNCTION %s();\n"
                "DROP TRIGGER IF EXISTS \"" TRUNCATE_TRIGGER "\" ON %s;\n"
                "CREATE TRIGGER \"" TRUNCATE_TRIGGER "\" AFTER TRUNCATE ON %s\n"
                "    FOR EACH STATEMENT EXECUTE FUNCTION %s();\n",
                qtable.p, qtable.p, fn, qtable.p, qtable.p, fn);
    sbuf_free(&qtable);
}

/* "-- on_change "contacts" (file:line): columns a, b" with no line break inside. */
static void
add_heading(struct sbuf *b, const struct policy_on_change *oc)
{
    struct sbuf t = {0};
    sbuf_printf(&t, "on_change \"%s\" (%s:%d)", oc->table, oc->file ? oc->file : "?", oc->line);
    if (oc->ncolumns) {
        sbuf_adds(&t, ", columns");
        for (size_t i = 0; i < oc->ncolumns; i++)
            sbuf_printf(&t, "%s %s", i ? "," : "", oc->columns[i]);
    }
    for (char *s = t.p; *s; s++)
        if (*s == '\n' || *s == '\r')
            *s = ' ';
    sbuf_printf(b, "\n-- %s\n", t.p);
    sbuf_free(&t);
}

char *
triggers_sql(const struct policy_on_change *oc, size_t n, bool drop)
{
    struct sbuf b = {0}, fn = {0};

    if (drop)
        sbuf_adds(&b, "-- Generated by `sluice triggers --drop`: removes the on_change triggers\n"
                      "-- (and their functions) that `sluice triggers` installed.\n");
    else
        sbuf_adds(&b, "-- Generated by `sluice triggers`: for each on_change table, a trigger\n"
                      "-- that sends pg_notify('" TRIGGERS_CHANNEL "', ...) for every inserted,\n"
                      "-- updated or deleted row (and for TRUNCATE); `sluice serve` listens and\n"
                      "-- drops the tags the on_change declaration names. Running it again\n"
                      "-- replaces what an earlier run installed.\n");
    if (n == 0)
        sbuf_adds(&b, "-- The policy declares no on_change: there is nothing to do.\n");
    sbuf_adds(&b, "BEGIN;\nSET LOCAL client_min_messages = warning;\n");
    for (size_t i = 0; i < n; i++) {
        fn.len = 0;
        add_function_name(&fn, oc[i].table);
        add_heading(&b, &oc[i]);
        if (drop) {
            sbuf_printf(&b, "DROP FUNCTION IF EXISTS %s() CASCADE;\n", fn.p);
            continue;
        }
        add_check(&b, &oc[i]);
        add_function(&b, &oc[i], fn.p);
        add_triggers(&b, &oc[i], fn.p);
    }
    sbuf_adds(&b, "\nCOMMIT;\n");
    sbuf_free(&fn);
    return b.p;
}
