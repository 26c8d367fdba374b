/* store_failover.h - a shared store with an in-process fallback and a circuit breaker. */
#ifndef SLUICE_STORE_FAILOVER_H
#define SLUICE_STORE_FAILOVER_H

#include <stdint.h>

#include "store.h"

/*
 * A store that uses `primary` (the Redis store) while it answers and
 * `fallback` (a memory store handle) while it does not: the cache is bypassed
 * (a->bypassed, no fills), limits are checked by the fallback (fail open: N
 * instances admit at most N x limit), and a request with a fail-closed limit
 * is refused (a->refused_closed). A circuit breaker stops calling the primary
 * for cooldown_ms after `failures` consecutive failures, then lets one request
 * probe it; its success closes the breaker. Transitions are logged to stderr
 * under `name`. Invalidations that could not reach the primary are kept
 * (a bounded number) and sent again once it answers. Takes ownership of both
 * stores; ops->destroy frees them.
 */
struct store_failover_config {
    unsigned failures;    /* consecutive failures that open the breaker; 0: 3 */
    uint64_t cooldown_ms; /* 0: 1000 */
    const char *name;     /* for log lines, e.g. "worker 0"; copied */
};
struct store *store_failover_new(struct store *primary, struct store *fallback,
                                 const struct store_failover_config *cfg);

#endif
