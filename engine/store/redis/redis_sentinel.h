/* redis_sentinel.h - where the master is, as Redis Sentinel says: redis+sentinel:// URLs, asking
 * the sentinels, following +switch-master. */
#ifndef SLUICE_REDIS_SENTINEL_H
#define SLUICE_REDIS_SENTINEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redis_conn.h"

#define REDIS_SENTINEL_MAX 16 /* sentinels one URL may name */

/* What a redis+sentinel:// URL says. */
struct redis_sentinel_url {
    struct redis_endpoint sentinels[REDIS_SENTINEL_MAX]; /* host and port of each */
    size_t n;
    char master_name[128];
    struct redis_endpoint master; /* user, password and db for the master; no host yet */
};

/* Returns whether url starts with redis+sentinel:// (NULL: false). */
bool redis_sentinel_is_url(const char *url);

/*
 * Parses redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER_NAME[/db]
 * into *u (the caller's): sentinels as redis:// hosts (a name, IPv4 or
 * [IPv6]; port 26379 when absent), the master's name (not empty, no '/'),
 * and the user, password (percent-encoded) and database number that apply
 * to the master. The sentinels are asked without AUTH. Returns 0, or -1
 * with a message in err.
 */
int redis_sentinel_parse_url(const char *url, struct redis_sentinel_url *u, char *err,
                             size_t errlen);

struct redis_sentinel;

/*
 * Makes the sentinels of u (copied) say where c's master is, on base (the
 * loop of c; borrowed, as is c: both must outlive the watcher), following
 * the Sentinel client guidelines:
 *   - the sentinels are asked in turn (SENTINEL get-master-addr-by-name,
 *     each within deadline_ms), starting with the last one that answered;
 *     the first answer moves c there (redis_conn_set_endpoint());
 *   - c asks ROLE on every connection and leaves a node that is not a
 *     master, or that answers READONLY, or that it loses: the sentinels are
 *     asked again (at most one round per 100 ms);
 *   - one connection to a sentinel subscribes to +switch-master and moves c
 *     at once (another sentinel is tried when it is lost).
 * While no sentinel answers, c stays where it is (down, at the start: the
 * store fails over to its fallback), and they are asked again after a
 * backoff. Returns the watcher (new; freed with redis_sentinel_free()).
 * Aborts when out of memory.
 */
struct redis_sentinel *redis_sentinel_watch(struct redis_conn *c, struct event_base *base,
                                            const struct redis_sentinel_url *u,
                                            uint64_t deadline_ms);

/* Stops watching and frees s (c is left as it is); NULL is a no-op. */
void redis_sentinel_free(struct redis_sentinel *s);

#endif
