/* test_slab.c - unit tests of the slab allocator (engine/common/slab.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "slab.h"

#define CELL 100
#define PER_SLAB 8

static void
test_cells_are_zeroed_aligned_and_apart(void **state)
{
    struct slab_pool p;
    unsigned char *cells[3 * PER_SLAB];

    slab_pool_init(&p, CELL, PER_SLAB);
    for (unsigned i = 0; i < 3 * PER_SLAB; i++) {
        cells[i] = slab_alloc(&p);
        assert_int_equal((uintptr_t)cells[i] % 16, 0);
        for (unsigned k = 0; k < CELL; k++)
            assert_int_equal(cells[i][k], 0);
        memset(cells[i], (int)i + 1, CELL); /* would spill into a neighbour if they overlapped */
    }
    for (unsigned i = 0; i < 3 * PER_SLAB; i++)
        for (unsigned k = 0; k < CELL; k++)
            assert_int_equal(cells[i][k], i + 1);
    assert_int_equal(p.nslabs, 3);
    /* A cell given back comes back zeroed. */
    slab_free(&p, cells[5]);
    cells[5] = slab_alloc(&p);
    assert_int_equal(cells[5][0], 0);
    for (unsigned i = 0; i < 3 * PER_SLAB; i++)
        slab_free(&p, cells[i]);
    slab_pool_destroy(&p);
    assert_int_equal(p.nslabs, 0);
}

static void
test_burst_is_unmapped_but_for_one_slab(void **state)
{
    struct slab_pool p;
    enum { N = 50 * PER_SLAB };
    void *cells[N];

    slab_pool_init(&p, CELL, PER_SLAB);
    for (unsigned round = 0; round < 2; round++) {
        for (unsigned i = 0; i < N; i++)
            cells[i] = slab_alloc(&p);
        assert_int_equal(p.nslabs, 50);
        /* Freed in an order unlike the allocation's: every other one, then the rest. */
        for (unsigned i = 0; i < N; i += 2)
            slab_free(&p, cells[i]);
        assert_int_equal(p.nslabs, 50); /* every slab still holds a cell in use */
        for (unsigned i = 1; i < N; i += 2)
            slab_free(&p, cells[i]);
        assert_int_equal(p.nslabs, 1); /* one kept for the next burst */
        assert_int_equal(p.nempty, 1);
    }
    slab_free(&p, NULL);
    slab_pool_destroy(&p);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cells_are_zeroed_aligned_and_apart),
        cmocka_unit_test(test_burst_is_unmapped_but_for_one_slab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
