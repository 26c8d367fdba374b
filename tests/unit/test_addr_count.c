/* test_addr_count.c - unit tests of the per-address connection counts (engine/http/addr_count.c).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "addr_count.h"

static uint32_t
slot_of(const struct addr_count *t, const char *addr)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(40000);
    } else {
        assert_int_equal(inet_pton(AF_INET6, addr, &sin6->sin6_addr), 1);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(40001);
    }
    return addr_count_slot(t, (const struct sockaddr *)&ss);
}

static void
test_cap_refuses_one_more_and_release_makes_room(void **state)
{
    struct addr_count *t = addr_count_new(3, 100);
    uint32_t a = slot_of(t, "192.0.2.1");

    for (int i = 0; i < 3; i++)
        assert_int_equal(addr_count_take(t, a), 0);
    assert_int_equal(addr_count_take(t, a), -1);
    assert_int_equal(addr_count_take(t, a), -1); /* a refusal counts nothing */
    addr_count_release(t, a);
    assert_int_equal(addr_count_take(t, a), 0);
    assert_int_equal(addr_count_take(t, a), -1);
    addr_count_free(t);
}

static void
test_mapped_ipv4_is_the_ipv4_address_and_ipv6_counts_by_64(void **state)
{
    struct addr_count *t = addr_count_new(1, 10000);

    assert_int_equal(slot_of(t, "192.0.2.7"), slot_of(t, "::ffff:192.0.2.7"));
    assert_int_equal(slot_of(t, "2001:db8:1:2::1"), slot_of(t, "2001:db8:1:2:ffff:1:2:3"));
    assert_int_not_equal(slot_of(t, "192.0.2.7"), ADDR_COUNT_NONE);

    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    assert_int_equal(addr_count_slot(t, (const struct sockaddr *)&sun), ADDR_COUNT_NONE);
    assert_int_equal(addr_count_take(t, ADDR_COUNT_NONE), 0);
    addr_count_free(t);
}

static void
test_distinct_addresses_rarely_share_a_slot(void **state)
{
    /* 10000 connections allowed: 65536 slots; 200 addresses meet ~0.3 times on average. */
    struct addr_count *t = addr_count_new(1, 10000);
    uint32_t slots[400];
    size_t n = 0, distinct = 0;
    char addr[64];

    for (int i = 0; i < 200; i++) {
        snprintf(addr, sizeof(addr), "10.0.%d.%d", i / 250, i % 250 + 1);
        slots[n++] = slot_of(t, addr);
        snprintf(addr, sizeof(addr), "2001:db8:%x::1", i);
        slots[n++] = slot_of(t, addr);
    }
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        while (k < i && slots[k] != slots[i])
            k++;
        distinct += k == i;
    }
    assert_true(distinct >= n - 8);
    addr_count_free(t);
}

#define THREADS 8
#define CAP 5

struct race {
    struct addr_count *t;
    uint32_t slot;
    pthread_barrier_t start;
    atomic_int admitted;
};

static void *
racer(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(&r->start);
    for (int i = 0; i < 1000; i++) {
        if (addr_count_take(r->t, r->slot) == 0) {
            atomic_fetch_add(&r->admitted, 1);
            break;
        }
    }
    return NULL;
}

static void
test_threads_taking_at_once_never_pass_the_cap(void **state)
{
    struct race r = {.t = addr_count_new(CAP, 100)};
    pthread_t th[THREADS];

    r.slot = slot_of(r.t, "198.51.100.9");
    pthread_barrier_init(&r.start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, racer, &r);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&r.admitted), CAP);
    assert_int_equal(addr_count_take(r.t, r.slot), -1);
    pthread_barrier_destroy(&r.start);
    addr_count_free(r.t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_refuses_one_more_and_release_makes_room),
        cmocka_unit_test(test_mapped_ipv4_is_the_ipv4_address_and_ipv6_counts_by_64),
        cmocka_unit_test(test_distinct_addresses_rarely_share_a_slot),
        cmocka_unit_test(test_threads_taking_at_once_never_pass_the_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
