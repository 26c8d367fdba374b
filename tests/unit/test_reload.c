/* test_reload.c - unit tests of policy generations: the snapshot a reload replaces is let go of
 * by the reloader, never freed by a worker that drops its last request's reference. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway.h"
#include "policy.h"
#include "reload.h"
#include "util.h"

static char dir[64];

static void
write_policy(int limit)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/00-main.lua", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "tier \"free\" { limit = %d, window = \"1h\" }\n"
            "endpoint \"GET /a/{id}\" { body = \"{}\", limit = \"tier\" }\n"
            "endpoint \"GET /b\" { body = \"{}\" }\n",
            limit);
    fclose(f);
}

static struct gateway *
gateway_for(struct policy *p)
{
    struct gateway_config cfg = {.cache_bytes = 1 << 20, .limit_bytes = 1 << 20, .no_stats = true};
    struct gateway *g = gateway_new(&cfg, p);
    policy_release(p); /* the gateway holds it */
    return g;
}

static uint32_t
refs(const struct policy *p)
{
    return __atomic_load_n(&p->refs, __ATOMIC_ACQUIRE);
}

static void
test_the_reloader_lets_go_of_old_generations(void **state)
{
    char *errs = NULL;
    struct policy *p;
    struct gateway *g;
    struct reloader *r;

    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sluice-reload-XXXXXX");
    assert_non_null(mkdtemp(dir));
    write_policy(10);
    p = policy_load(dir, 1, NULL, &errs);
    assert_non_null(p);
    g = gateway_for(p);
    r = reloader_new(dir, g);

    /* A worker (or a request) holds generation 1 while the reload publishes generation 2. */
    struct policy *held = gateway_policy(g);
    assert_int_equal(held->generation, 1);
    write_policy(20);
    assert_int_equal(reloader_reload(r, "test", NULL), 0);
    struct policy *now = gateway_policy(g);
    assert_int_equal(now->generation, 2);
    policy_release(now);
    /* The reloader kept its reference to generation 1: the worker's is not the last. */
    assert_int_equal(refs(held), 2);
    policy_release(held);
    assert_int_equal(refs(held), 1); /* still there: the reloader frees it, on its thread */

    /* Many reloads with nobody holding the old generations: none of them piles up (the
     * sanitizer build checks that each is freed once). */
    for (int i = 0; i < 50; i++) {
        write_policy(30 + i);
        assert_int_equal(reloader_reload(r, "test", NULL), 0);
    }
    now = gateway_policy(g);
    assert_int_equal(now->generation, 52);
    policy_release(now);

    /* A generation still held when the reloader goes is freed by its last holder. */
    held = gateway_policy(g);
    write_policy(99);
    assert_int_equal(reloader_reload(r, "test", NULL), 0);
    assert_int_equal(refs(held), 2);
    reloader_free(r);
    assert_int_equal(refs(held), 1);
    policy_release(held);

    gateway_free(g);
    char path[128];
    snprintf(path, sizeof(path), "%s/00-main.lua", dir);
    unlink(path);
    rmdir(dir);
}

/* policy_release_if_last frees only when the caller holds the last reference. */
static void
test_release_if_last(void **state)
{
    char *errs = NULL;

    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sluice-reload-XXXXXX");
    assert_non_null(mkdtemp(dir));
    write_policy(10);
    struct policy *p = policy_load(dir, 1, NULL, &errs);
    assert_non_null(p);
    policy_ref(p);
    assert_int_equal(policy_release_if_last(p), 0);
    assert_int_equal(refs(p), 2);
    policy_release(p);
    assert_int_equal(policy_release_if_last(p), 1);
    char path[128];
    snprintf(path, sizeof(path), "%s/00-main.lua", dir);
    unlink(path);
    rmdir(dir);
}

/* policy_load_then leaves the loader to its caller, loaded or not, and nothing when nothing
 * was read (the sanitizer build checks that each is freed once). */
static void
test_load_then_leaves_the_loader_to_free(void **state)
{
    char *errs = NULL, path[128];
    struct policy_leftover *rest = NULL;

    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sluice-reload-XXXXXX");
    assert_non_null(mkdtemp(dir));
    write_policy(10);
    struct policy *p = policy_load_then(dir, 1, NULL, &errs, &rest);
    assert_non_null(p);
    assert_null(errs);
    assert_non_null(rest);
    policy_release(p);
    policy_leftover_free(rest);

    snprintf(path, sizeof(path), "%s/00-main.lua", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("endpoint \"GET /x\" {\n", f);
    fclose(f);
    p = policy_load_then(dir, 1, NULL, &errs, &rest);
    assert_null(p);
    assert_non_null(strstr(errs, "00-main.lua:"));
    assert_non_null(rest);
    free(errs);
    policy_leftover_free(rest);

    unlink(path);
    rmdir(dir);
    p = policy_load_then(dir, 1, NULL, &errs, &rest);
    assert_null(p);
    assert_non_null(strstr(errs, "cannot open policy directory"));
    assert_null(rest);
    free(errs);
    policy_leftover_free(NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_reloader_lets_go_of_old_generations),
        cmocka_unit_test(test_release_if_last),
        cmocka_unit_test(test_load_then_leaves_the_loader_to_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
