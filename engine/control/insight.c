/* insight.c - what the gateway served, as JSON for the admin listener: the heaviest callers of
 * each limit and the last hour a minute at a time. */
#include "insight.h"

#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "hist.h"
#include "stats.h"
#include "util.h"

#define HOUR_MS 3600000u
#define PAGE_CALLERS 10 /* callers per limit the status page lists */

static json_t *
caller_json(const struct gw_stat_caller *c)
{
    return json_pack("{s:s, s:s?, s:I, s:I, s:I, s:I}", "caller", c->caller, "tier",
                     c->tier[0] ? c->tier : NULL, "requests", (json_int_t)c->requests, "denied",
                     (json_int_t)c->denied, "remaining", (json_int_t)c->remaining, "error",
                     (json_int_t)c->error);
}

static int
by_denied(const void *a, const void *b)
{
    const struct gw_stat_caller *x = *(const struct gw_stat_caller *const *)a;
    const struct gw_stat_caller *y = *(const struct gw_stat_caller *const *)b;
    if (x->denied != y->denied)
        return x->denied < y->denied ? 1 : -1;
    return (x->requests < y->requests) - (x->requests > y->requests);
}

static int
by_remaining(const void *a, const void *b)
{
    const struct gw_stat_caller *x = *(const struct gw_stat_caller *const *)a;
    const struct gw_stat_caller *y = *(const struct gw_stat_caller *const *)b;
    if (x->remaining != y->remaining)
        return x->remaining > y->remaining ? 1 : -1;
    return (x->requests < y->requests) - (x->requests > y->requests);
}

/* The list of the n callers cs (one policy's, heaviest first) sorted by cmp (NULL: as they
 * are), at most top, skipping those keep() refuses. */
static json_t *
caller_list(const struct gw_stat_caller *cs, size_t n, size_t top,
            int (*cmp)(const void *, const void *), bool only_denied)
{
    const struct gw_stat_caller **order = xcalloc(n ? n : 1, sizeof(*order));
    for (size_t i = 0; i < n; i++)
        order[i] = &cs[i];
    if (cmp)
        qsort(order, n, sizeof(*order), cmp);
    json_t *a = json_array();
    for (size_t i = 0; i < n && json_array_size(a) < top; i++)
        if (!only_denied || order[i]->denied)
            json_array_append_new(a, caller_json(order[i]));
    free(order);
    return a;
}

/* The callers of v, per policy, as insight_callers() describes. */
static json_t *
callers_of(const struct gw_stats_view *v, size_t top, const char *policy)
{
    json_t *policies = json_array();
    for (size_t i = 0; i < v->ncallers;) {
        size_t j = i;
        while (j < v->ncallers && strcmp(v->callers[j].policy, v->callers[i].policy) == 0)
            j++;
        if (!policy || strcmp(policy, v->callers[i].policy) == 0) {
            const struct gw_stat_caller *cs = &v->callers[i];
            size_t n = j - i;
            json_array_append_new(
                policies, json_pack("{s:s, s:o, s:o, s:o}", "policy", cs->policy, "callers",
                                    caller_list(cs, n, top, NULL, false), "most_denied",
                                    caller_list(cs, n, top, by_denied, true), "nearest_limit",
                                    caller_list(cs, n, top, by_remaining, false)));
        }
        i = j;
    }
    char start[UTIL_RFC3339_LEN];
    util_rfc3339_ms(start, util_now_ms() / HOUR_MS * HOUR_MS);
    json_t *window = json_pack("{s:s, s:i}", "start", start, "seconds", (int)(HOUR_MS / 1000));
    return json_pack("{s:o, s:o}", "window", window, "policies", policies);
}

json_t *
insight_callers(struct gateway *g, size_t top, const char *policy)
{
    struct gw_stats_view v;
    gateway_stats(g, &v, INSIGHT_TOP_MAX);
    json_t *o = callers_of(&v, top, policy);
    gw_stats_view_free(&v);
    return o;
}

static double
ms(uint64_t us)
{
    return (double)us / 1000.0;
}

json_t *
insight_stats(const struct status_sources *src)
{
    char now[UTIL_RFC3339_LEN];
    util_rfc3339_ms(now, util_now_ms());
    json_t *o = json_pack("{s:s, s:o}", "now", now, "status", status_json(src));
    if (!src->gateway)
        return o;
    struct gw_stats_view v;
    gateway_stats(src->gateway, &v, INSIGHT_TOP_MAX);

    json_t *minutes = json_array();
    for (size_t i = 0; i < GW_STATS_MINUTES; i++) {
        const struct gw_minute *m = &v.minutes[i];
        json_array_append_new(
            minutes, json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f}", "t",
                               (json_int_t)(m->minute * 60), "requests", (json_int_t)m->requests,
                               "hits", (json_int_t)m->hits, "misses", (json_int_t)m->misses,
                               "denied", (json_int_t)m->denied, "errors", (json_int_t)m->errors,
                               "p50_ms", ms(hist_quantile(&m->duration, 0.5)), "p99_ms",
                               ms(hist_quantile(&m->duration, 0.99)), "origin_p50_ms",
                               ms(hist_quantile(&m->origin, 0.5)), "origin_p99_ms",
                               ms(hist_quantile(&m->origin, 0.99))));
    }
    json_object_set_new(o, "minutes", minutes);

    uint64_t requests = 0, hits = 0, denied = 0;
    struct hist all = {0};
    json_t *routes = json_array();
    for (size_t i = 0; i < v.nroutes; i++) {
        const struct gw_stat_route *r = &v.routes[i];
        json_t *per_minute = json_array();
        for (size_t m = 0; m < GW_STATS_MINUTES; m++)
            json_array_append_new(per_minute, json_integer((json_int_t)r->minute_requests[m]));
        json_array_append_new(
            routes,
            json_pack("{s:s, s:I, s:I, s:I, s:f, s:f, s:f, s:I, s:o}", "route", r->route,
                      "requests", (json_int_t)r->requests, "hits", (json_int_t)r->hits, "denied",
                      (json_int_t)r->denied, "hit_ratio",
                      r->requests ? (double)r->hits / (double)r->requests : 0.0, "p50_ms",
                      ms(hist_quantile(&r->duration, 0.5)), "p99_ms",
                      ms(hist_quantile(&r->duration, 0.99)), "last_minute",
                      (json_int_t)r->minute_requests[GW_STATS_MINUTES - 1], "minutes", per_minute));
        requests += r->requests;
        hits += r->hits;
        denied += r->denied;
        hist_merge(&all, &r->duration);
    }
    json_object_set_new(o, "routes", routes);

    struct hist origin = {0};
    for (int i = 0; i < GW_ORIGINS; i++)
        hist_merge(&origin, &v.origin[i]);
    json_object_set_new(
        o, "totals",
        json_pack("{s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f}", "requests", (json_int_t)requests,
                  "hits", (json_int_t)hits, "denied", (json_int_t)denied, "hit_ratio",
                  requests ? (double)hits / (double)requests : 0.0, "p50_ms",
                  ms(hist_quantile(&all, 0.5)), "p99_ms", ms(hist_quantile(&all, 0.99)),
                  "origin_p50_ms", ms(hist_quantile(&origin, 0.5)), "origin_p99_ms",
                  ms(hist_quantile(&origin, 0.99))));

    json_t *tiers = json_object();
    for (size_t i = 0; i < v.nrefused_tiers; i++) {
        char *t = v.refused_tiers[i].keylen ? v.refused_tiers[i].key : "(none)";
        json_object_set_new(tiers, t, json_integer((json_int_t)v.refused_tiers[i].n));
    }
    json_object_set_new(o, "denied_by_tier", tiers);
    json_object_set_new(o, "callers", callers_of(&v, PAGE_CALLERS, NULL));
    gw_stats_view_free(&v);
    return o;
}
