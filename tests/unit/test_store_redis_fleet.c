/* test_store_redis_fleet.c - the fleet's records: how an instance's hash field in sl:{fleet} is
 * read, and the memory store's fleet (the caller alone). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "store.h"
#include "store_memory.h"
#include "store_redis_fleet.h"

static void
test_a_record_is_read_whole(void **state)
{
    static const char v[] =
        "1796619286019\t127.0.0.1:8080\t5138779b00c079c0\t3\t1796619284518\t1\t0";
    struct store_fleet_member m;

    assert_int_equal(redis_fleet_parse("web-1:42", 8, v, sizeof(v) - 1, &m), 0);
    assert_string_equal(m.id, "web-1:42");
    assert_string_equal(m.listen, "127.0.0.1:8080");
    assert_string_equal(m.policy_hash, "5138779b00c079c0");
    assert_int_equal(m.seen_ms, 1796619286019ull);
    assert_int_equal(m.generation, 3);
    assert_int_equal(m.started_ms, 1796619284518ull);
    assert_true(m.store_up);
    assert_false(m.db_up);
}

static void
test_an_empty_listen_address_is_kept_empty(void **state)
{
    static const char v[] = "1\t\t0123456789abcdef\t1\t2\t0\t1";
    struct store_fleet_member m;

    assert_int_equal(redis_fleet_parse("x", 1, v, sizeof(v) - 1, &m), 0);
    assert_string_equal(m.listen, "");
    assert_true(m.db_up);
}

static void
test_records_that_are_not_one_are_skipped(void **state)
{
    static const char *bad[] = {
        "",                                   /* nothing */
        "1\t\th\t1\t2\t1",                    /* a field missing */
        "1\t\th\t1\t2\t1\t1\textra",          /* a field too many */
        "x\t\th\t1\t2\t1\t1",                 /* a time that is no number */
        "1\t\th\t-\t2\t1\t1",                 /* a generation that is no number */
        "1\t\t0123456789abcdef0\t1\t2\t1\t1", /* an overlong hash */
    };
    struct store_fleet_member m;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (redis_fleet_parse("x", 1, bad[i], strlen(bad[i]), &m) != -1)
            fail_msg("accepted '%s'", bad[i]);
    char id[200];
    memset(id, 'a', sizeof(id));
    assert_int_equal(redis_fleet_parse(id, sizeof(id), "1\t\th\t1\t2\t1\t1", 15, &m), -1);
    assert_int_equal(redis_fleet_parse("", 0, "1\t\th\t1\t2\t1\t1", 15, &m), -1);
}

struct seen {
    int calls, status;
    size_t n;
    struct store_fleet_member first;
};

static void
on_fleet(void *arg, int status, const struct store_fleet_member *m, size_t n)
{
    struct seen *s = arg;

    s->calls++;
    s->status = status;
    s->n = n;
    if (n)
        s->first = m[0];
}

static void
test_memory_store_fleet_is_the_caller_alone(void **state)
{
    struct store_memory *mem = store_memory_new(1 << 20, 1 << 20);
    struct store *h = store_memory_handle(mem);
    struct store_fleet_member me = {.id = "h:1",
                                    .listen = "127.0.0.1:1",
                                    .policy_hash = "ab",
                                    .generation = 2,
                                    .started_ms = 5,
                                    .store_up = true};
    struct seen s = {0};
    uint64_t before = store_now_ms();

    store_fleet(h, &me, 60000, on_fleet, &s);
    assert_int_equal(s.calls, 1); /* before it returned */
    assert_int_equal(s.status, 0);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.first.id, "h:1");
    assert_string_equal(s.first.policy_hash, "ab");
    assert_int_equal(s.first.generation, 2);
    assert_true(s.first.seen_ms >= before);
    h->ops->destroy(h);
    store_memory_free(mem);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_record_is_read_whole),
        cmocka_unit_test(test_an_empty_listen_address_is_kept_empty),
        cmocka_unit_test(test_records_that_are_not_one_are_skipped),
        cmocka_unit_test(test_memory_store_fleet_is_the_caller_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
