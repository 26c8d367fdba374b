/* test_evmem.c - libevent's buffer blocks, recycled per thread. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>
#include <pthread.h>
#include <string.h>

#include "evmem.h"

/* A freed buffer block of a power-of-two size is the next block of that size this thread
 * gets: a burst of frees is used again by the next burst, not left to the heap's free lists. */
static void
test_freed_block_is_reused(void **state)
{
    size_t before = evmem_kept(NULL);
    void *a = evmem_malloc(1024), *b = evmem_malloc(8192);

    memset(a, 1, 1024);
    memset(b, 2, 8192);
    evmem_free(a);
    evmem_free(b);
    assert_int_equal(evmem_kept(NULL), before + 2);
    assert_ptr_equal(evmem_malloc(8192), b);
    assert_ptr_equal(evmem_malloc(1024), a);
    assert_int_equal(evmem_kept(NULL), before);
    evmem_free(a);
    evmem_free(b);
}

/* Only power-of-two sizes from 1 to 64 KiB are kept; others go straight back. */
static void
test_other_sizes_are_freed(void **state)
{
    size_t before = evmem_kept(NULL);
    void *small = evmem_malloc(136), *odd = evmem_malloc(3000), *big = evmem_malloc(1 << 17);

    evmem_free(small);
    evmem_free(odd);
    evmem_free(big);
    evmem_free(NULL);
    assert_int_equal(evmem_kept(NULL), before);
}

struct burst {
    size_t size, kept, bytes;
};

/* 300 blocks of b->size taken, then all given back, on a thread of its own (nothing kept). */
static void *
burst(void *arg)
{
    struct burst *b = arg;
    void *p[300];

    for (int i = 0; i < 300; i++)
        p[i] = evmem_malloc(b->size);
    for (int i = 0; i < 300; i++)
        evmem_free(p[i]);
    b->kept = evmem_kept(&b->bytes);
    return NULL;
}

static struct burst
burst_of(size_t size)
{
    struct burst b = {.size = size};
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, burst, &b), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    return b;
}

/* A thread keeps at most EVMEM_CLASS_BLOCKS blocks of a size, and EVMEM_THREAD_BYTES in all: a
 * burst larger than that goes back to the allocator past it. */
static void
test_kept_bytes_are_bounded(void **state)
{
    struct burst b = burst_of(2048);

    assert_int_equal(b.kept, EVMEM_CLASS_BLOCKS);
    assert_int_equal(b.bytes, EVMEM_CLASS_BLOCKS * 2048);
    b = burst_of(65536);
    assert_int_equal(b.kept, EVMEM_THREAD_BYTES / 65536);
    assert_int_equal(b.bytes, EVMEM_THREAD_BYTES);
}

/* realloc keeps the bytes, and the grown block may be kept when freed. */
static void
test_realloc_keeps_bytes(void **state)
{
    char *p = evmem_malloc(1024);

    memset(p, 'r', 1024);
    p = evmem_realloc(p, 4096);
    for (int i = 0; i < 1024; i++)
        assert_int_equal(p[i], 'r');
    evmem_free(p);
}

static void *
keep_and_exit(void *arg)
{
    size_t *kept = arg;

    for (int i = 0; i < 4; i++)
        evmem_free(evmem_malloc(4096 << (i % 2)));
    *kept = evmem_kept(NULL);
    return NULL; /* its blocks are freed at its exit (LeakSanitizer reports them otherwise) */
}

/* Each thread keeps its own blocks, and they go when it exits. */
static void
test_per_thread(void **state)
{
    pthread_t t;
    size_t in_thread = 0, here = evmem_kept(NULL);

    assert_int_equal(pthread_create(&t, NULL, keep_and_exit, &in_thread), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(in_thread, 2);
    assert_int_equal(evmem_kept(NULL), here);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_freed_block_is_reused),
        cmocka_unit_test(test_other_sizes_are_freed),
        cmocka_unit_test(test_kept_bytes_are_bounded),
        cmocka_unit_test(test_realloc_keeps_bytes),
        cmocka_unit_test(test_per_thread),
    };
    int failed = cmocka_run_group_tests_name("evmem", tests, NULL, NULL);
    return failed;
}
