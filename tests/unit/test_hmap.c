/* test_hmap.c - unit tests of the intrusive hash table (engine/common/hmap.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"

/* A caller's struct: the node is not its first member, and the key is in the same allocation. */
struct item {
    int value;
    struct hmap_node node;
    int visits;
    size_t len;
    char key[24];
};

static struct item *
item_new(struct hmap *m, const void *key, size_t len, int value)
{
    struct item *it = calloc(1, sizeof(*it));
    assert_non_null(it);
    assert_true(len <= sizeof(it->key));
    memcpy(it->key, key, len);
    it->len = len;
    it->value = value;
    hmap_insert(m, &it->node, it->key, len);
    return it;
}

static struct item *
find(const struct hmap *m, const void *key, size_t len)
{
    struct hmap_node *n = hmap_find(m, key, len);
    return HMAP_ENTRY(n, struct item, node);
}

static struct item *
finds(const struct hmap *m, const char *key)
{
    return find(m, key, strlen(key));
}

static void
test_empty(void **state)
{
    struct hmap m = {0};

    assert_null(finds(&m, "a"));
    assert_null(find(&m, "", 0));
    assert_null(hmap_first(&m));
    assert_int_equal(m.count, 0);
    hmap_free(&m); /* nothing allocated: a no-op */
    assert_null(m.buckets);
}

static void
test_insert_find_remove(void **state)
{
    struct hmap m = {0};
    struct item *a = item_new(&m, "a", 1, 1);
    struct item *ab = item_new(&m, "ab", 2, 2);
    struct item *empty = item_new(&m, "", 0, 3);
    struct item *nul = item_new(&m, "a\0b", 3, 4); /* keys are bytes, NULs included */

    assert_int_equal(m.count, 4);
    assert_ptr_equal(finds(&m, "a"), a);
    assert_ptr_equal(finds(&m, "ab"), ab);
    assert_ptr_equal(find(&m, "", 0), empty);
    assert_ptr_equal(find(&m, "a\0b", 3), nul);
    assert_null(finds(&m, "b"));
    assert_null(finds(&m, "abc"));
    assert_null(finds(&m, "A"));
    assert_null(find(&m, "a\0c", 3));

    hmap_remove(&m, &ab->node);
    assert_int_equal(m.count, 3);
    assert_null(finds(&m, "ab"));
    assert_ptr_equal(finds(&m, "a"), a);
    free(ab);
    /* A key removed can go in again, under another node. */
    ab = item_new(&m, "ab", 2, 5);
    assert_int_equal(finds(&m, "ab")->value, 5);

    hmap_remove(&m, &a->node);
    hmap_remove(&m, &ab->node);
    hmap_remove(&m, &empty->node);
    hmap_remove(&m, &nul->node);
    assert_int_equal(m.count, 0);
    assert_null(hmap_first(&m));
    assert_null(finds(&m, "a"));
    free(a);
    free(ab);
    free(empty);
    free(nul);
    hmap_free(&m);
}

#define MANY 5000

/* Past many doublings every key is found, and removing any of them (chains of every length,
 * heads, middles and tails) leaves the others findable. */
static void
test_growth_and_removal(void **state)
{
    struct hmap m = {0};
    static struct item *items[MANY];
    char key[24];

    for (int i = 0; i < MANY; i++) {
        int n = snprintf(key, sizeof(key), "key:%d", i);
        items[i] = item_new(&m, key, (size_t)n, i);
        if (i % 500 == 0)
            for (int j = 0; j <= i; j++)
                assert_ptr_equal(find(&m, items[j]->key, items[j]->len), items[j]);
    }
    assert_int_equal(m.count, MANY);
    assert_true(m.mask + 1 >= MANY);                  /* it grew */
    assert_int_equal((m.mask + 1) & m.mask, 0);       /* a power of two */
    assert_true(m.mask + 1 <= 2 * (size_t)MANY + 16); /* and no more than it needed */

    /* Remove every third, then check all. */
    for (int i = 0; i < MANY; i += 3) {
        hmap_remove(&m, &items[i]->node);
        free(items[i]);
        items[i] = NULL;
    }
    for (int i = 0; i < MANY; i++) {
        int n = snprintf(key, sizeof(key), "key:%d", i);
        struct item *it = find(&m, key, (size_t)n);
        if (items[i])
            assert_ptr_equal(it, items[i]);
        else
            assert_null(it);
    }
    for (int i = 0; i < MANY; i++) {
        if (items[i]) {
            hmap_remove(&m, &items[i]->node);
            free(items[i]);
        }
    }
    assert_int_equal(m.count, 0);
    assert_null(hmap_first(&m));
    hmap_free(&m);
}

/* Iteration visits every node once, also when the body removes the node it is on. */
static void
test_iteration(void **state)
{
    struct hmap m = {0};
    char key[24];

    for (int i = 0; i < 300; i++) {
        int n = snprintf(key, sizeof(key), "it%d", i);
        item_new(&m, key, (size_t)n, i);
    }
    size_t seen = 0;
    for (struct hmap_node *n = hmap_first(&m); n; n = hmap_next(&m, n)) {
        HMAP_ENTRY(n, struct item, node)->visits++;
        seen++;
    }
    assert_int_equal(seen, 300);

    /* Remove the odd values while iterating; each node is still visited once. */
    seen = 0;
    for (struct hmap_node *n = hmap_first(&m), *next; n; n = next) {
        next = hmap_next(&m, n);
        struct item *it = HMAP_ENTRY(n, struct item, node);
        assert_int_equal(it->visits, 1);
        it->visits++;
        seen++;
        if (it->value % 2) {
            hmap_remove(&m, n);
            free(it);
        }
    }
    assert_int_equal(seen, 300);
    assert_int_equal(m.count, 150);

    /* Empty it the same way. */
    for (struct hmap_node *n = hmap_first(&m), *next; n; n = next) {
        next = hmap_next(&m, n);
        struct item *it = HMAP_ENTRY(n, struct item, node);
        assert_int_equal(it->value % 2, 0);
        assert_int_equal(it->visits, 2);
        hmap_remove(&m, n);
        free(it);
    }
    assert_int_equal(m.count, 0);
    assert_null(hmap_first(&m));
    hmap_free(&m);
    assert_null(m.buckets);
    assert_int_equal(m.mask, 0);
}

/* Clearing forgets every node at once and keeps the buckets; the nodes can go in again. */
static void
test_clear(void **state)
{
    struct hmap m = {0};
    static struct item *items[100];
    char key[24];

    hmap_clear(&m); /* empty, nothing allocated: a no-op */
    assert_null(m.buckets);
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof(key), "c%d", i);
        items[i] = item_new(&m, key, (size_t)n, i);
    }
    struct hmap_node **buckets = m.buckets;
    size_t mask = m.mask;
    hmap_clear(&m);
    assert_int_equal(m.count, 0);
    assert_ptr_equal(m.buckets, buckets);
    assert_int_equal(m.mask, mask);
    assert_null(hmap_first(&m));
    for (int i = 0; i < 100; i++)
        assert_null(find(&m, items[i]->key, items[i]->len));
    for (int i = 0; i < 100; i += 2)
        hmap_insert(&m, &items[i]->node, items[i]->key, items[i]->len);
    assert_int_equal(m.count, 50);
    for (int i = 0; i < 100; i++) {
        if (i % 2)
            assert_null(find(&m, items[i]->key, items[i]->len));
        else
            assert_ptr_equal(find(&m, items[i]->key, items[i]->len), items[i]);
    }
    hmap_free(&m);
    for (int i = 0; i < 100; i++)
        free(items[i]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_insert_find_remove),
        cmocka_unit_test(test_growth_and_removal),
        cmocka_unit_test(test_iteration),
        cmocka_unit_test(test_clear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
