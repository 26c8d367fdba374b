/* insight.h - what the gateway served, as JSON for the admin listener: the heaviest callers of
 * each limit (GET /callers) and the last hour a minute at a time (GET /stats, which the status
 * page draws). */
#ifndef SLUICE_INSIGHT_H
#define SLUICE_INSIGHT_H

#include <jansson.h>
#include <stddef.h>

#include "status.h"

#define INSIGHT_TOP_MAX 64 /* callers per limit policy the workers keep, and so at most listed */

/*
 * The callers of the current hour, per limit policy (only `policy` when not
 * NULL): {"window": {"start", "seconds"}, "policies": [{"policy",
 * "callers": [...] by requests, "most_denied": [...] by refusals (those with
 * any), "nearest_limit": [...] by remaining}]}, each list at most `top` long,
 * each caller {"caller", "tier", "requests", "denied", "remaining",
 * "error"}. "caller" is the limit's key (what it counts); counts are
 * estimates over by at most "error" (a space-saving summary); "remaining" is
 * the smallest any worker saw at the caller's last request; "denied" counts
 * would-be refusals of shadow limits too. New reference.
 */
json_t *insight_callers(struct gateway *g, size_t top, const char *policy);

/*
 * Everything the status page shows: {"now", "status": status_json(src),
 * "totals": {...}, "minutes": [60 x {"t", "requests", "hits", "misses",
 * "denied", "errors", "p50_ms", "p99_ms", "origin_p50_ms",
 * "origin_p99_ms"}] oldest first, "routes": [{"route", "requests",
 * "hits", "denied", "hit_ratio", "p50_ms", "p99_ms", "last_minute",
 * "minutes": [60 requests]}], "denied_by_tier": {tier: n},
 * "callers": insight_callers(top 10)}. New reference.
 */
json_t *insight_stats(const struct status_sources *src);

#endif
