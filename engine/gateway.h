/* gateway.h - the request path: route, identify, limit + lookup, origin, fill, invalidate. */
#ifndef SLUICE_GATEWAY_H
#define SLUICE_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

struct policy;
struct gateway;

struct gateway_config {
    const char *database_url; /* libpq conninfo; NULL or "": from the PG* environment */
    unsigned db_pool_size;    /* connections per worker */
    uint64_t db_deadline_ms;  /* per statement */
    size_t cache_bytes;       /* memory store budget */
};

/* Returns a new gateway serving `policy` (a reference is taken). */
struct gateway *gateway_new(const struct gateway_config *cfg, struct policy *policy);
void gateway_free(struct gateway *g);

/* Publishes a new policy snapshot (a reference is taken); requests in flight keep theirs. */
void gateway_set_policy(struct gateway *g, struct policy *policy);

/* The server_app that runs the gateway on each worker. */
struct server_app gateway_app(struct gateway *g);

#endif
