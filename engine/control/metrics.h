/* metrics.h - the process's state in the Prometheus text exposition format (0.0.4). */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stdint.h>

#include "util.h"

struct gateway;
struct notifier;
struct reloader;

/* Counts the control plane keeps that the gateway does not see. */
struct metrics_counters {
    uint64_t invalidations_admin; /* tags, keys and patterns invalidated through POST /invalidate */
};

/* Connections of the gateway's listener by state (see server_connection_counts()). */
struct metrics_connections {
    uint64_t reading; /* a request is being read */
    uint64_t active;  /* a request is being answered */
    uint64_t idle;    /* kept alive between requests */
};

/* What the metrics are drawn from; each part is borrowed, and any may be NULL. */
struct metrics_sources {
    struct gateway *gateway;   /* requests, limits, origins, callers, the stores, the database */
    struct reloader *reloader; /* generation, reloads, tenant hooks */
    struct notifier *notifier; /* invalidations from database notifications */
    const struct metrics_counters *counters;
    const struct metrics_connections *connections;
};

/*
 * Appends every metric to out in the text exposition format 0.0.4: the
 * sluice_* families (requests, durations, limit decisions, origins, cache,
 * store, database, policy, connections) summed over all workers, and the
 * process_* set. No label holds a caller: cardinality is bounded by the
 * policy (routes, limit policies, tiers, tenants). Call from one thread at a
 * time (the admin listener); the workers are not stopped.
 */
void metrics_render(const struct metrics_sources *src, struct sbuf *out);

#endif
