/* status.h - the state of the process as one JSON object: policy generations and reloads, the
 * store's health, the access log, database-driven invalidation. */
#ifndef SLUICE_STATUS_H
#define SLUICE_STATUS_H

#include <jansson.h>

struct gateway;
struct notifier;
struct reloader;

/* What the status is assembled from; each part is borrowed, and any may be NULL. */
struct status_sources {
    struct reloader *reloader; /* generation, files, reloads, tenants */
    struct gateway *gateway;   /* the store's health as the workers published it */
    struct notifier *notifier; /* the LISTEN connection and its counters */
};

/* Returns the status (a new reference): the reloader's object with "store", "database",
 * "access_log", "fleet" and "notify". */
json_t *status_json(const struct status_sources *src);

#endif
