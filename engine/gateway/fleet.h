/* fleet.h - the instances sharing this one's store: publishing this one, the last list seen. */
#ifndef SLUICE_FLEET_H
#define SLUICE_FLEET_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "store.h"

#define GW_FLEET_TTL_MS 60000   /* an instance not heard of this long is gone (--fleet-ttl) */
#define GW_FLEET_EVERY_MS 10000 /* an instance publishes itself this often, at most */

/* The fleet as one process sees it: written by the worker that publishes, read by status. */
struct gw_fleet {
    pthread_mutex_t lock;
    uint64_t ttl_ms;
    uint64_t every_ms;   /* ttl_ms / 6, at most GW_FLEET_EVERY_MS */
    char id[128];        /* hostname:pid */
    char listen[128];    /* "" until known */
    uint64_t started_ms; /* ms since the epoch */
    bool busy;           /* a publication is on its way (the publishing worker's own) */
    struct store_fleet_member *members; /* as last seen (owned) */
    size_t n;
    uint64_t updated_ms; /* when they were (ms since the epoch); 0: never */
    bool shared;         /* they came from the shared store (not the fallback) */
};

/* Sets up f (the caller's) with ttl_ms (0: GW_FLEET_TTL_MS), this process's id and start time. */
void gw_fleet_init(struct gw_fleet *f, uint64_t ttl_ms);

/* Frees what f holds (not f). */
void gw_fleet_free(struct gw_fleet *f);

/* Records this instance's listening address (copied). Thread-safe. */
void gw_fleet_set_listen(struct gw_fleet *f, const char *listen);

/*
 * Publishes this instance through s (the calling worker's store; the call
 * completes on its loop) with its policy hash and generation and its
 * health, and keeps the list that comes back for gw_fleet_json(). Skipped
 * while the previous publication has not completed. Called by one worker.
 */
void gw_fleet_publish(struct gw_fleet *f, struct store *s, const char *policy_hash,
                      uint64_t generation, bool store_up, bool db_up);

/*
 * The fleet as JSON (new reference): {"instances": [{"id", "listen",
 * "policy_hash", "generation", "started", "seen_ms_ago", "store_up",
 * "db_up", "self"}...], "same_policies": every instance serves the policy
 * hash of the first, "ttl_ms", "updated": RFC 3339 or null, "shared": the
 * list came from the shared store}. Thread-safe.
 */
json_t *gw_fleet_json(struct gw_fleet *f);

/* When ms (since the epoch) was, as RFC 3339 text, or null when it is 0 (new). */
json_t *gw_time_json(uint64_t ms);

#endif
