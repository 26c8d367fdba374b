/* test_stats.c - unit tests of the workers' counts (engine/gateway/stats.c): what two workers
 * counted, merged into one view, adds up; callers of one limit seen by both workers are one
 * caller; the last hour's minute slots land in their place; a worker with stats off counts
 * nothing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "policy.h"
#include "stats.h"
#include "util.h"

#define MIN_MS 60000ull
#define NOW (29000000ull * MIN_MS + 1234) /* some minute, and a bit */

static uint64_t
item(const struct gw_stat_item *items, size_t n, const char *const *vals, size_t nvals)
{
    char key[256];
    size_t len = 0;
    for (size_t i = 0; i < nvals; i++) {
        if (i)
            key[len++] = GW_STATS_KEY_SEP;
        memcpy(key + len, vals[i], strlen(vals[i]));
        len += strlen(vals[i]);
    }
    for (size_t i = 0; i < n; i++)
        if (items[i].keylen == len && memcmp(items[i].key, key, len) == 0)
            return items[i].n;
    return 0;
}

static void
merged(struct gw_stats *a, struct gw_stats *b, struct gw_stats_view *v, size_t callers)
{
    gw_stats_publish(a);
    gw_stats_publish(b);
    gw_stats_view_init(v, NOW, callers);
    gw_stats_merge(v, a);
    gw_stats_merge(v, b);
    gw_stats_view_finish(v);
}

static void
test_counters_of_two_workers_add_up(void **state)
{
    (void)state;
    struct gw_stats a, b;
    gw_stats_init(&a);
    gw_stats_init(&b);
    for (int i = 0; i < 3; i++)
        gw_stats_request(&a, "GET /x", "free", "GET", 200, GW_CACHE_HIT, 150, NOW);
    gw_stats_request(&b, "GET /x", "free", "GET", 200, GW_CACHE_HIT, 700, NOW);
    gw_stats_request(&b, "GET /x", "free", "GET", 200, GW_CACHE_MISS, 30000, NOW);
    gw_stats_request(&b, "GET /y", "pro", "GET", 429, GW_CACHE_NONE, 50, NOW);
    gw_stats_decision(&a, "lim", "free", GW_ALLOWED);
    gw_stats_decision(&b, "lim", "free", GW_ALLOWED);
    gw_stats_decision(&b, "lim", "pro", GW_SHADOW_DENIED);
    gw_stats_origin(&a, GW_ORIGIN_SQL, 2000, NOW);
    gw_stats_origin(&b, GW_ORIGIN_SQL, 3000, NOW);
    gw_stats_origin_error(&b, GW_ORIGIN_UPSTREAM, "timeout");
    gw_stats_invalidations(&a, 2);
    gw_stats_invalidations(&b, 3);

    struct gw_stats_view v;
    merged(&a, &b, &v, 0);
    const char *hit[] = {"GET /x", "GET", "200", "hit"};
    const char *miss[] = {"GET /x", "GET", "200", "miss"};
    const char *refused[] = {"GET /y", "GET", "429", "none"};
    assert_int_equal(item(v.requests, v.nrequests, hit, 4), 4);
    assert_int_equal(item(v.requests, v.nrequests, miss, 4), 1);
    assert_int_equal(item(v.requests, v.nrequests, refused, 4), 1);
    assert_int_equal(v.nrequests, 3); /* equal keys of the two workers are one item */
    const char *allowed[] = {"lim", "free", "allowed"};
    const char *shadow[] = {"lim", "pro", "shadow_denied"};
    assert_int_equal(item(v.decisions, v.ndecisions, allowed, 3), 2);
    assert_int_equal(item(v.decisions, v.ndecisions, shadow, 3), 1);
    const char *timeout[] = {"upstream", "timeout"};
    assert_int_equal(item(v.origin_errors, v.norigin_errors, timeout, 2), 1);
    const char *pro[] = {"pro"};
    assert_int_equal(item(v.refused_tiers, v.nrefused_tiers, pro, 1), 1);
    assert_int_equal(hist_count(&v.origin[GW_ORIGIN_SQL]), 2);
    assert_int_equal(v.origin[GW_ORIGIN_SQL].sum_us, 5000);
    assert_int_equal(v.invalidations_write, 5);

    /* Routes, in order of their text, with their durations merged. */
    assert_int_equal(v.nroutes, 2);
    assert_string_equal(v.routes[0].route, "GET /x");
    assert_int_equal(v.routes[0].requests, 5);
    assert_int_equal(v.routes[0].hits, 4);
    assert_int_equal(hist_count(&v.routes[0].duration), 5);
    assert_int_equal(v.routes[0].duration.sum_us, 3 * 150 + 700 + 30000);
    assert_string_equal(v.routes[1].route, "GET /y");
    assert_int_equal(v.routes[1].denied, 1);
    /* This minute is the last slot of the hour, for the route and for the totals. */
    assert_int_equal(v.routes[0].minute_requests[GW_STATS_MINUTES - 1], 5);
    assert_int_equal(v.routes[0].minute_requests[GW_STATS_MINUTES - 2], 0);
    assert_int_equal(v.minutes[GW_STATS_MINUTES - 1].requests, 6);
    assert_int_equal(v.minutes[GW_STATS_MINUTES - 1].hits, 4);
    assert_int_equal(v.minutes[GW_STATS_MINUTES - 1].misses, 1);
    assert_int_equal(v.minutes[GW_STATS_MINUTES - 1].denied, 1);
    assert_int_equal(v.minutes[GW_STATS_MINUTES - 1].minute, NOW / MIN_MS);
    gw_stats_view_free(&v);
    gw_stats_free(&a);
    gw_stats_free(&b);
}

static void
test_minutes_of_the_last_hour_land_in_their_slots(void **state)
{
    (void)state;
    struct gw_stats a, b;
    gw_stats_init(&a);
    gw_stats_init(&b);
    gw_stats_request(&a, "GET /x", NULL, "GET", 200, GW_CACHE_NONE, 10, NOW - 5 * MIN_MS);
    gw_stats_request(&b, "GET /x", NULL, "GET", 200, GW_CACHE_NONE, 10, NOW - 5 * MIN_MS);
    /* Older than the hour: kept by the worker until its slot is reused, not shown. */
    gw_stats_request(&a, "GET /x", NULL, "GET", 200, GW_CACHE_NONE, 10, NOW - 61 * MIN_MS);
    struct gw_stats_view v;
    merged(&a, &b, &v, 0);
    assert_int_equal(v.routes[0].minute_requests[GW_STATS_MINUTES - 6], 2);
    assert_int_equal(v.minutes[GW_STATS_MINUTES - 6].requests, 2);
    uint64_t shown = 0;
    for (size_t i = 0; i < GW_STATS_MINUTES; i++)
        shown += v.minutes[i].requests;
    assert_int_equal(shown, 2);
    assert_int_equal(v.routes[0].requests, 3); /* since start, all of them */
    for (size_t i = 1; i < GW_STATS_MINUTES; i++)
        assert_int_equal(v.minutes[i].minute, v.minutes[i - 1].minute + 1);
    gw_stats_view_free(&v);
    gw_stats_free(&a);
    gw_stats_free(&b);
}

static void
count_caller(struct gw_stats *st, const char *policy, const char *caller, const char *tier, int n,
             bool denied, uint64_t remaining)
{
    for (int i = 0; i < n; i++)
        gw_stats_caller(st, policy, tier, caller, strlen(caller), denied, remaining, NOW);
}

static void
test_callers_merge_across_workers_heaviest_first(void **state)
{
    (void)state;
    struct gw_stats a, b;
    gw_stats_init(&a);
    gw_stats_init(&b);
    /* u:1 is split over both workers and, in all, the heaviest of "lim". */
    count_caller(&a, "lim", "u:1", "pro", 4, false, 90);
    count_caller(&b, "lim", "u:1", "pro", 4, true, 0);
    count_caller(&a, "lim", "u:2", "free", 6, false, 50);
    count_caller(&b, "lim", "u:3", "free", 1, false, 99);
    count_caller(&b, "other", "u:9", NULL, 2, false, 7);
    struct gw_stats_view v;
    merged(&a, &b, &v, 2);
    assert_int_equal(v.ncallers, 3); /* two of lim (at most 2 kept), one of other */
    assert_string_equal(v.callers[0].policy, "lim");
    assert_string_equal(v.callers[0].caller, "u:1");
    assert_int_equal(v.callers[0].requests, 8);
    assert_int_equal(v.callers[0].denied, 4);
    assert_int_equal(v.callers[0].remaining, 0); /* the smallest either worker saw */
    assert_string_equal(v.callers[0].tier, "pro");
    assert_string_equal(v.callers[1].caller, "u:2");
    assert_int_equal(v.callers[1].requests, 6);
    assert_string_equal(v.callers[2].policy, "other");
    assert_string_equal(v.callers[2].tier, "");
    gw_stats_view_free(&v);

    /* Nothing published since: a new count shows only after the next publication. */
    count_caller(&a, "lim", "u:3", "free", 10, false, 80);
    gw_stats_view_init(&v, NOW, 5);
    gw_stats_merge(&v, &a);
    gw_stats_merge(&v, &b);
    gw_stats_view_finish(&v);
    assert_string_equal(v.callers[0].caller, "u:1");
    gw_stats_view_free(&v);
    merged(&a, &b, &v, 5);
    assert_string_equal(v.callers[0].caller, "u:3");
    assert_int_equal(v.callers[0].requests, 11);
    gw_stats_view_free(&v);

    /* A view for metrics gathers no callers. */
    merged(&a, &b, &v, 0);
    assert_int_equal(v.ncallers, 0);
    gw_stats_view_free(&v);
    gw_stats_free(&a);
    gw_stats_free(&b);
}

/* The worker remembers its last lookups by the addresses of the texts it was given; a reload
 * frees a generation's texts (policy_release() counts it before), and the next may put another
 * route's text at the same address: it is counted under its own name, never under the one
 * that lived there before. */
static void
test_a_new_text_at_a_remembered_address_counts_under_its_own_name(void **state)
{
    (void)state;
    struct gw_stats a, b;
    gw_stats_init(&a);
    gw_stats_init(&b);
    char route[32], policy[16], tier[16], result[16];
    strcpy(route, "GET /old");
    strcpy(policy, "lim-old");
    strcpy(tier, "free");
    strcpy(result, "trusted");
    for (int i = 0; i < 2; i++) {
        gw_stats_request(&a, route, tier, "GET", 200, GW_CACHE_HIT, 10, NOW);
        gw_stats_decision(&a, policy, tier, GW_ALLOWED);
        gw_stats_caller(&a, policy, tier, "u1", 2, false, 5, NOW);
        gw_stats_identity(&a, "header", result);
    }
    struct policy *old = xcalloc(1, sizeof(*old)); /* a policy freed: a reload */
    old->refs = 1;
    policy_release(old);
    strcpy(route, "GET /new"); /* the same addresses, other texts */
    strcpy(policy, "lim-new");
    strcpy(tier, "pro");
    strcpy(result, "none");
    gw_stats_request(&a, route, tier, "GET", 200, GW_CACHE_HIT, 10, NOW);
    gw_stats_decision(&a, policy, tier, GW_ALLOWED);
    gw_stats_caller(&a, policy, tier, "u2", 2, false, 5, NOW);
    gw_stats_identity(&a, "header", result);

    struct gw_stats_view v;
    merged(&a, &b, &v, 8);
    const char *old_hit[] = {"GET /old", "GET", "200", "hit"};
    const char *new_hit[] = {"GET /new", "GET", "200", "hit"};
    assert_int_equal(item(v.requests, v.nrequests, old_hit, 4), 2);
    assert_int_equal(item(v.requests, v.nrequests, new_hit, 4), 1);
    const char *old_dec[] = {"lim-old", "free", "allowed"};
    const char *new_dec[] = {"lim-new", "pro", "allowed"};
    assert_int_equal(item(v.decisions, v.ndecisions, old_dec, 3), 2);
    assert_int_equal(item(v.decisions, v.ndecisions, new_dec, 3), 1);
    const char *old_id[] = {"header", "trusted"};
    const char *new_id[] = {"header", "none"};
    assert_int_equal(item(v.identity, v.nidentity, old_id, 2), 2);
    assert_int_equal(item(v.identity, v.nidentity, new_id, 2), 1);
    assert_int_equal(v.nroutes, 2);
    assert_string_equal(v.routes[0].route, "GET /new");
    assert_int_equal(v.routes[0].requests, 1);
    assert_int_equal(v.routes[1].requests, 2);
    size_t callers_new = 0, callers_old = 0;
    for (size_t i = 0; i < v.ncallers; i++) {
        if (strcmp(v.callers[i].policy, "lim-new") == 0)
            callers_new++;
        if (strcmp(v.callers[i].policy, "lim-old") == 0)
            callers_old++;
    }
    assert_int_equal(callers_new, 1);
    assert_int_equal(callers_old, 1);
    gw_stats_view_free(&v);
    gw_stats_free(&a);
    gw_stats_free(&b);
}

static void
test_a_worker_with_stats_off_counts_nothing(void **state)
{
    (void)state;
    struct gw_stats a, b;
    gw_stats_init(&a);
    gw_stats_init(&b);
    a.off = true;
    gw_stats_request(&a, "GET /x", NULL, "GET", 200, GW_CACHE_HIT, 10, NOW);
    gw_stats_decision(&a, "lim", NULL, GW_DENIED);
    gw_stats_caller(&a, "lim", NULL, "u", 1, true, 0, NOW);
    gw_stats_origin(&a, GW_ORIGIN_SQL, 10, NOW);
    gw_stats_invalidations(&a, 4);
    struct gw_stats_view v;
    merged(&a, &b, &v, 5);
    assert_int_equal(v.nrequests + v.ndecisions + v.nroutes + v.ncallers, 0);
    assert_int_equal(hist_count(&v.origin[GW_ORIGIN_SQL]), 0);
    assert_int_equal(v.invalidations_write, 0);
    gw_stats_view_free(&v);
    gw_stats_free(&a);
    gw_stats_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counters_of_two_workers_add_up),
        cmocka_unit_test(test_minutes_of_the_last_hour_land_in_their_slots),
        cmocka_unit_test(test_callers_merge_across_workers_heaviest_first),
        cmocka_unit_test(test_a_new_text_at_a_remembered_address_counts_under_its_own_name),
        cmocka_unit_test(test_a_worker_with_stats_off_counts_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
