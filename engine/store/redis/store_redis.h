/* store_redis.h - the Redis store: limits, cache entries and tags in Redis, through hiredis async.
 */
#ifndef SLUICE_STORE_REDIS_H
#define SLUICE_STORE_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/*
 * The Redis store: hiredis on one worker's event base, the same results as the
 * memory store (docs/architecture.md, "Redis store"). One handle per worker,
 * used by that worker's thread only. Connections are made in the background
 * and rebuilt after a failure; while one is down, operations fail at once
 * with STORE_UNAVAILABLE.
 */
struct event_base;
struct store_redis_config {
    const char *url;        /* redis://[[user]:password@]host[:port][/db], or
                               redis+cluster://[[user]:password@]host:port[,host:port...]
                               (seed nodes of a Redis Cluster; no limits_url then) */
    const char *limits_url; /* NULL or "": limits live with the cache; else a separate
                               Redis for limits (admit_and_lookup then makes two calls) */
    uint64_t deadline_ms;   /* per command; 0: 50 */
    uint64_t tag_lease_ms;  /* least TTL of a tag key; 0: 600000 (10 minutes) */
    size_t near_bytes;      /* budget of the handle's local copies of responses; 0: 16 MiB */
    unsigned list_rounds;   /* SCAN rounds one store_list() makes at most; 0: 1000 */
};

/* Returns 0 when url is a usable Redis URL, else -1 with a message in err. */
int store_redis_check_url(const char *url, char *err, size_t errlen);

/*
 * Returns a new Redis store on `base` (borrowed; it must outlive the store),
 * or NULL with a message in err when a URL is invalid. Freed with
 * ops->destroy, which completes every pending operation with an error.
 */
struct store *store_redis_new(struct event_base *base, const struct store_redis_config *cfg,
                              char *err, size_t errlen);

/* Counters of a Redis store, since it was created. */
struct store_redis_stats {
    uint64_t commands;   /* commands sent (a NOSCRIPT resend counts again) */
    uint64_t noscript;   /* NOSCRIPT replies answered by SCRIPT LOAD and a resend */
    uint64_t deadlines;  /* connections dropped because a command passed its deadline */
    uint64_t connects;   /* connections established */
    uint64_t failed;     /* operations completed with an error */
    uint64_t local_hits; /* hits answered with the handle's local copy of the response */
    uint64_t refetches;  /* hits whose response was read after the lookup (not the local copy) */
    struct hist latency; /* from sending a command to its reply, replies that came only */
};
/* Fills *st; `s` must come from store_redis_new(). */
void store_redis_stats(struct store *s, struct store_redis_stats *st);

#endif
