/* test_notify.c - unit tests of turning on_change notifications into tags (no database). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "notify.h"
#include "policy.h"
#include "template.h"

#define MAX_DECLS 4

static struct policy_on_change decls[MAX_DECLS];
static struct policy pol;

/* Adds on_change TABLE { invalidate = tags } to the test policy. */
static void
add_decl(const char *table, const char *const *tags, size_t ntags)
{
    struct policy_on_change *oc = &decls[pol.non_change++];
    assert_true(pol.non_change <= MAX_DECLS);
    oc->table = (char *)table;
    oc->file = "t.lua";
    oc->line = (int)pol.non_change;
    oc->invalidate = calloc(ntags, sizeof(*oc->invalidate));
    for (size_t i = 0; i < ntags; i++) {
        char err[128];
        oc->invalidate[i] = template_compile(tags[i], TV_BIT(TV_ROW), err, sizeof(err));
        assert_non_null(oc->invalidate[i]);
    }
    oc->ninvalidate = ntags;
    pol.on_change = decls;
}

static int
setup(void **state)
{
    (void)state;
    static const char *const crm[] = {"crm:{row.owner_id}", "dash:{row.owner_id}"};
    static const char *const pair[] = {"t:{row.team}:{row.owner_id}", "static-tag"};
    memset(&pol, 0, sizeof(pol));
    add_decl("contacts", crm, 2);
    add_decl("crm.deals", pair, 2);
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < pol.non_change; i++) {
        for (size_t k = 0; k < decls[i].ninvalidate; k++)
            template_free(decls[i].invalidate[k]);
        free(decls[i].invalidate);
    }
    memset(decls, 0, sizeof(decls));
    return 0;
}

/* Collects one payload; returns what notify_collect returned. */
static int
collect(const char *payload, struct notify_tags *t)
{
    char err[256] = "";
    int rc = notify_collect(&pol, payload, strlen(payload), t, err, sizeof(err));
    if (rc < 0)
        assert_true(err[0] != '\0');
    return rc;
}

/* The tags joined with spaces, in the order found. */
static const char *
joined(const struct notify_tags *t)
{
    static char buf[1024];
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < t->n; i++) {
        assert_int_equal(strlen(t->tags[i]), t->lens[i]);
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", i ? " " : "", t->tags[i]);
    }
    return buf;
}

static void
test_insert_update_delete(void **state)
{
    (void)state;
    struct notify_tags t = {0};

    assert_int_equal(
        collect("{\"table\":\"contacts\",\"op\":\"INSERT\",\"new\":{\"owner_id\":\"7\"}}", &t), 1);
    assert_string_equal(joined(&t), "crm:7 dash:7");
    assert_false(t.all);
    notify_tags_free(&t);

    /* An owner change names both owners; each tag once. */
    assert_int_equal(
        collect("{\"table\":\"contacts\",\"op\":\"UPDATE\",\"old\":{\"owner_id\":\"1\"},"
                "\"new\":{\"owner_id\":\"2\"}}",
                &t),
        1);
    assert_string_equal(joined(&t), "crm:1 crm:2 dash:1 dash:2");
    notify_tags_free(&t);

    assert_int_equal(
        collect("{\"table\":\"contacts\",\"op\":\"UPDATE\",\"old\":{\"owner_id\":\"3\"},"
                "\"new\":{\"owner_id\":\"3\"}}",
                &t),
        1);
    assert_string_equal(joined(&t), "crm:3 dash:3");
    notify_tags_free(&t);

    assert_int_equal(
        collect("{\"table\":\"contacts\",\"op\":\"DELETE\",\"old\":{\"owner_id\":\"4\"}}", &t), 1);
    assert_string_equal(joined(&t), "crm:4 dash:4");
    notify_tags_free(&t);
}

static void
test_batch_deduplicates(void **state)
{
    (void)state;
    struct notify_tags t = {0};
    const char *p = "{\"table\":\"contacts\",\"op\":\"INSERT\",\"new\":{\"owner_id\":\"7\"}}";

    for (int i = 0; i < 3; i++)
        assert_int_equal(collect(p, &t), 1);
    assert_int_equal(
        collect("{\"table\":\"contacts\",\"op\":\"DELETE\",\"old\":{\"owner_id\":\"8\"}}", &t), 1);
    assert_string_equal(joined(&t), "crm:7 dash:7 crm:8 dash:8");
    notify_tags_free(&t);
    assert_int_equal(t.n, 0);
    assert_null(t.tags);
}

static void
test_values(void **state)
{
    (void)state;
    struct notify_tags t = {0};

    /* Escaped as in a request; null is an absent value; JSON numbers and booleans as spelled. */
    assert_int_equal(collect("{\"table\":\"crm.deals\",\"op\":\"UPDATE\","
                             "\"old\":{\"owner_id\":\"a b:%\",\"team\":null},"
                             "\"new\":{\"owner_id\":42,\"team\":true}}",
                             &t),
                     1);
    assert_string_equal(joined(&t), "t:%-:a%20b%3A%25 t:true:42 static-tag");
    notify_tags_free(&t);

    /* A row without a column the template names: that template is skipped for that row. */
    assert_int_equal(collect("{\"table\":\"crm.deals\",\"op\":\"UPDATE\","
                             "\"old\":{\"owner_id\":\"1\"},"
                             "\"new\":{\"owner_id\":\"2\",\"team\":\"x\"}}",
                             &t),
                     1);
    assert_string_equal(joined(&t), "t:x:2 static-tag");
    notify_tags_free(&t);

    /* Objects and arrays have no text for a tag: skipped too. */
    assert_int_equal(collect("{\"table\":\"contacts\",\"op\":\"INSERT\","
                             "\"new\":{\"owner_id\":[1]}}",
                             &t),
                     1);
    assert_string_equal(joined(&t), "");
    notify_tags_free(&t);
}

static void
test_rows_unknown(void **state)
{
    (void)state;
    struct notify_tags t = {0};

    assert_int_equal(collect("{\"table\":\"contacts\",\"op\":\"TRUNCATE\"}", &t), 1);
    assert_true(t.all);
    assert_int_equal(t.n, 0);
    notify_tags_free(&t);
    assert_false(t.all);

    assert_int_equal(collect("{\"table\":\"contacts\",\"op\":\"UPDATE\",\"old\":null}", &t), 1);
    assert_true(t.all);
    notify_tags_free(&t);

    /* A table the policy does not watch changes nothing, with or without rows. */
    assert_int_equal(collect("{\"table\":\"users\",\"op\":\"TRUNCATE\"}", &t), 0);
    assert_false(t.all);
    assert_int_equal(
        collect("{\"table\":\"deals\",\"op\":\"INSERT\",\"new\":{\"owner_id\":\"1\"}}", &t), 0);
    assert_int_equal(collect("{\"table\":\"contacts\\u0000x\",\"op\":\"TRUNCATE\"}", &t), -1);
    assert_int_equal(t.n, 0);
    assert_false(t.all);
}

static void
test_malformed(void **state)
{
    (void)state;
    struct notify_tags t = {0};

    assert_int_equal(collect("", &t), -1);
    assert_int_equal(collect("not json", &t), -1);
    assert_int_equal(collect("[1,2]", &t), -1);
    assert_int_equal(collect("{\"op\":\"INSERT\"}", &t), -1);
    assert_int_equal(collect("{\"table\":7}", &t), -1);
    assert_int_equal(collect("{\"table\":\"contacts\",\"new\":\"x\"}", &t), -1);
    assert_int_equal(t.n, 0);
    assert_false(t.all);
}

static void
test_tag_too_long(void **state)
{
    (void)state;
    struct notify_tags t = {0};
    size_t n = 5000;
    char *payload = malloc(n + 200);
    char err[256];

    strcpy(payload, "{\"table\":\"contacts\",\"op\":\"UPDATE\",\"old\":{\"owner_id\":\"1\"},"
                    "\"new\":{\"owner_id\":\"");
    size_t o = strlen(payload);
    memset(payload + o, 'x', n);
    strcpy(payload + o + n, "\"}}");
    assert_int_equal(notify_collect(&pol, payload, strlen(payload), &t, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "longer than"));
    /* The tags that fit are kept. */
    assert_string_equal(joined(&t), "crm:1 dash:1");
    notify_tags_free(&t);
    free(payload);
}

/* on_change "api_keys" { credentials = true }: any change of the table says the API keys
 * remembered are stale, and without invalidate templates a change without rows (TRUNCATE)
 * does not drop every cached entry. */
static void
test_credentials_tables(void **state)
{
    (void)state;
    add_decl("api_keys", NULL, 0);
    decls[pol.non_change - 1].credentials = true;
    struct notify_tags t = {0};
    assert_int_equal(
        collect("{\"table\":\"api_keys\",\"op\":\"UPDATE\",\"old\":{},\"new\":{}}", &t), 1);
    assert_true(t.credentials);
    assert_int_equal(t.n, 0);
    assert_false(t.all);
    notify_tags_free(&t);
    memset(&t, 0, sizeof(t));
    assert_int_equal(collect("{\"table\":\"api_keys\",\"op\":\"TRUNCATE\"}", &t), 1);
    assert_true(t.credentials);
    assert_false(t.all);
    notify_tags_free(&t);
    memset(&t, 0, sizeof(t));
    assert_int_equal(collect("{\"table\":\"contacts\",\"op\":\"TRUNCATE\"}", &t), 1);
    assert_false(t.credentials);
    assert_true(t.all);
    notify_tags_free(&t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_insert_update_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_deduplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rows_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tag_too_long, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credentials_tables, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
