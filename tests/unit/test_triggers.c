/* test_triggers.c - unit tests of the SQL that installs the on_change triggers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "template.h"
#include "triggers.h"

/* An on_change declaration as policy.c compiles it; columns sorted and unique. */
static struct policy_on_change
decl(const char *table, const char *file, int line, const char *const *tags, size_t ntags,
     const char *const *columns, size_t ncolumns)
{
    struct policy_on_change oc = {.table = (char *)table, .file = (char *)file, .line = line};
    oc.invalidate = calloc(ntags + 1, sizeof(*oc.invalidate));
    for (size_t i = 0; i < ntags; i++) {
        char err[128];
        oc.invalidate[i] = template_compile(tags[i], TV_BIT(TV_ROW), err, sizeof(err));
        assert_non_null(oc.invalidate[i]);
    }
    oc.ninvalidate = ntags;
    oc.columns = (char **)columns;
    oc.ncolumns = ncolumns;
    return oc;
}

static void
decl_free(struct policy_on_change *oc)
{
    for (size_t i = 0; i < oc->ninvalidate; i++)
        template_free(oc->invalidate[i]);
    free(oc->invalidate);
}

static size_t
count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static void
test_one_table(void **state)
{
    (void)state;
    static const char *const tags[] = {"crm:{row.owner_id}", "dash:{row.owner_id}"};
    static const char *const cols[] = {"owner_id"};
    struct policy_on_change oc = decl("contacts", "p/50-changes.lua", 11, tags, 2, cols, 1);
    char *sql = triggers_sql(&oc, 1, false);

    /* One transaction, idempotent statements. */
    assert_non_null(strstr(sql, "\nBEGIN;\n"));
    assert_non_null(strstr(sql, "\nCOMMIT;\n"));
    assert_true(strstr(sql, "BEGIN;") < strstr(sql, "CREATE OR REPLACE FUNCTION"));
    assert_true(strstr(sql, "CREATE TRIGGER \"sluice_notify_truncate\"") < strstr(sql, "COMMIT;"));
    assert_int_equal(count(sql, "CREATE OR REPLACE FUNCTION \"sluice_notify_contacts\"() "
                                "RETURNS trigger"),
                     1);
    assert_non_null(strstr(sql, "DROP TRIGGER IF EXISTS \"sluice_notify\" ON \"contacts\";\n"
                                "CREATE TRIGGER \"sluice_notify\" AFTER INSERT OR UPDATE OR "
                                "DELETE ON \"contacts\"\n"
                                "    FOR EACH ROW EXECUTE FUNCTION \"sluice_notify_contacts\"();"));
    assert_non_null(strstr(sql, "DROP TRIGGER IF EXISTS \"sluice_notify_truncate\" ON "
                                "\"contacts\";\nCREATE TRIGGER \"sluice_notify_truncate\" AFTER "
                                "TRUNCATE ON \"contacts\"\n    FOR EACH STATEMENT EXECUTE "
                                "FUNCTION \"sluice_notify_contacts\"();"));
    /* The payload: the table as written, the op, the template columns of old and new. */
    assert_non_null(strstr(sql, "'{\"table\":\"contacts\",\"op\":\"' || TG_OP || '\"'"));
    assert_non_null(strstr(sql,
                           "',\"old\":' || '{\"owner_id\":'\n"
                           "                || coalesce(to_json(OLD.\"owner_id\"::text)::text, "
                           "'null') || '}'"));
    assert_non_null(strstr(sql, "coalesce(to_json(NEW.\"owner_id\"::text)::text, 'null')"));
    assert_non_null(strstr(sql, "pg_notify('" TRIGGERS_CHANNEL "', payload)"));
    assert_non_null(strstr(sql, "octet_length(payload) > 7900"));
    /* Missing tables and columns stop the script before anything is installed. */
    assert_non_null(strstr(sql, "to_regclass('\"contacts\"') IS NULL"));
    assert_non_null(strstr(sql, "ARRAY['owner_id']::text[]"));
    assert_non_null(strstr(sql, "'on_change \"contacts\" (p/50-changes.lua:11)'"));
    assert_true(strstr(sql, "DO $sluice$") < strstr(sql, "CREATE OR REPLACE FUNCTION"));
    free(sql);
    decl_free(&oc);
}

static void
test_schema_and_several_columns(void **state)
{
    (void)state;
    static const char *const tags[] = {"t:{row.team_id}:{row.owner_id}"};
    static const char *const cols[] = {"owner_id", "team_id"};
    struct policy_on_change oc[2] = {
        decl("crm.deals", "a.lua", 1, tags, 1, cols, 2),
        decl("deals", "a.lua", 2, tags, 1, cols, 2),
    };
    char *sql = triggers_sql(oc, 2, false);

    assert_non_null(strstr(sql, "CREATE OR REPLACE FUNCTION \"crm\".\"sluice_notify_deals\"()"));
    assert_non_null(strstr(sql, "CREATE OR REPLACE FUNCTION \"sluice_notify_deals\"()"));
    assert_non_null(strstr(sql,
                           "AFTER INSERT OR UPDATE OR DELETE ON \"crm\".\"deals\"\n"
                           "    FOR EACH ROW EXECUTE FUNCTION \"crm\".\"sluice_notify_deals\"()"));
    assert_non_null(strstr(sql, "to_regclass('\"crm\".\"deals\"')"));
    assert_non_null(strstr(sql, "'{\"table\":\"crm.deals\",\"op\":\"'"));
    assert_non_null(strstr(sql,
                           "'{\"owner_id\":'\n"
                           "                || coalesce(to_json(NEW.\"owner_id\"::text)::text, "
                           "'null') || ',\"team_id\":'\n"
                           "                || coalesce(to_json(NEW.\"team_id\"::text)::text, "
                           "'null') || '}'"));
    assert_non_null(strstr(sql, "ARRAY['owner_id', 'team_id']::text[]"));
    assert_int_equal(count(sql, "CREATE OR REPLACE FUNCTION"), 2);
    assert_int_equal(count(sql, "BEGIN;\n"), 1);
    free(sql);
    decl_free(&oc[0]);
    decl_free(&oc[1]);
}

static void
test_quoting(void **state)
{
    (void)state;
    /* Names sluice check would refuse still come out as one identifier or literal each. */
    static const char *const tags[] = {"x"};
    static const char *const cols[] = {"we\"ird'col"};
    struct policy_on_change oc =
        decl("sch\"ema.ta'ble", "dir\\it's $sluice$.lua", 3, tags, 1, cols, 1);
    char *sql = triggers_sql(&oc, 1, false);

    assert_non_null(strstr(sql, "ON \"sch\"\"ema\".\"ta'ble\"\n"));
    assert_non_null(strstr(sql, "to_regclass('\"sch\"\"ema\".\"ta''ble\"')"));
    assert_non_null(strstr(sql, "NEW.\"we\"\"ird'col\"::text"));
    /* The JSON key is escaped for JSON, then for SQL (E'' since JSON wrote a backslash). */
    assert_non_null(strstr(sql, "E'{\"we\\\\\"ird''col\":'"));
    assert_non_null(strstr(sql, "E'{\"table\":\"sch\\\\\"ema.ta''ble\",\"op\":\"'"));
    /* A backslash makes an E'' literal with doubled backslashes. */
    assert_non_null(strstr(sql, "E'on_change \"sch\"ema.ta''ble\" (dir\\\\it''s $sluice$.lua:3)'"));
    /* The body contains "$sluice$": another dollar-quote tag is used for it. */
    assert_non_null(strstr(sql, "LANGUAGE plpgsql AS $sluice1$\n"));
    assert_non_null(strstr(sql, "END\n$sluice1$;\n"));
    free(sql);
    decl_free(&oc);
}

static void
test_no_columns(void **state)
{
    (void)state;
    static const char *const tags[] = {"all-contacts"};
    struct policy_on_change oc = decl("contacts", "a.lua", 1, tags, 1, NULL, 0);
    char *sql = triggers_sql(&oc, 1, false);

    assert_non_null(strstr(sql, "',\"old\":' || '{}'"));
    assert_non_null(strstr(sql, "',\"new\":' || '{}'"));
    assert_non_null(strstr(sql, "ARRAY[]::text[]"));
    free(sql);
    decl_free(&oc);
}

static void
test_drop_and_empty(void **state)
{
    (void)state;
    static const char *const tags[] = {"crm:{row.owner_id}"};
    static const char *const cols[] = {"owner_id"};
    struct policy_on_change oc[2] = {
        decl("contacts", "a.lua", 1, tags, 1, cols, 1),
        decl("crm.deals", "a.lua", 2, tags, 1, cols, 1),
    };
    char *sql = triggers_sql(oc, 2, true);

    assert_non_null(strstr(sql, "BEGIN;\n"));
    assert_non_null(strstr(sql, "DROP FUNCTION IF EXISTS \"sluice_notify_contacts\"() CASCADE;\n"));
    assert_non_null(
        strstr(sql, "DROP FUNCTION IF EXISTS \"crm\".\"sluice_notify_deals\"() CASCADE;\n"));
    assert_null(strstr(sql, "CREATE"));
    assert_non_null(strstr(sql, "COMMIT;\n"));
    free(sql);

    sql = triggers_sql(NULL, 0, false);
    assert_non_null(strstr(sql, "no on_change"));
    assert_null(strstr(sql, "CREATE"));
    assert_non_null(strstr(sql, "BEGIN;\n"));
    assert_non_null(strstr(sql, "COMMIT;\n"));
    free(sql);
    decl_free(&oc[0]);
    decl_free(&oc[1]);
}

static void
test_function_names(void **state)
{
    (void)state;
    char out[256], out2[256];
    char longname[80];

    assert_int_equal(triggers_function_name("contacts", out, sizeof(out)),
                     strlen("\"sluice_notify_contacts\""));
    assert_string_equal(out, "\"sluice_notify_contacts\"");
    assert_true(triggers_function_name("crm.contacts", out, sizeof(out)) > 0);
    assert_string_equal(out, "\"crm\".\"sluice_notify_contacts\"");

    /* Names past 63 bytes are shortened, with a hash keeping them apart. */
    memset(longname, 'a', 60);
    strcpy(longname + 60, "_one");
    assert_true(triggers_function_name(longname, out, sizeof(out)) > 0);
    strcpy(longname + 60, "_two");
    assert_true(triggers_function_name(longname, out2, sizeof(out2)) > 0);
    assert_int_equal(strlen(out), 63 + 2);
    assert_int_equal(strlen(out2), 63 + 2);
    assert_string_not_equal(out, out2);
    assert_memory_equal(out, "\"sluice_notify_aaaa", 19);

    /* Exactly 63 bytes is kept as is. */
    memset(longname, 'b', 49);
    longname[49] = '\0';
    assert_int_equal(triggers_function_name(longname, out, sizeof(out)), 63 + 2);
    assert_null(strchr(out + 15, '_'));

    /* Too small a buffer. */
    assert_int_equal(triggers_function_name("contacts", out, 10), -1);
    assert_string_equal(out, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_table),      cmocka_unit_test(test_schema_and_several_columns),
        cmocka_unit_test(test_quoting),        cmocka_unit_test(test_no_columns),
        cmocka_unit_test(test_drop_and_empty), cmocka_unit_test(test_function_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
