/* redis_cluster.h - the Redis store on a Redis Cluster: a connection per master, commands by slot.
 */
#ifndef SLUICE_REDIS_CLUSTER_H
#define SLUICE_REDIS_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redis_conn.h"
#include "redis_slots.h"

#define REDIS_CLUSTER_MAX_SEEDS 16

/* Returns whether url names a cluster (redis+cluster://). */
bool redis_cluster_is_url(const char *url);

/*
 * Parses redis+cluster://[[user]:password@]host:port[,host:port...] into up
 * to REDIS_CLUSTER_MAX_SEEDS seed endpoints (the caller's array), each with
 * the URL's user and password. No database: a cluster has only database 0.
 * Returns the number of seeds, or -1 with a message in err.
 */
int redis_cluster_parse_url(const char *url, struct redis_endpoint *seeds, size_t cap, char *err,
                            size_t errlen);

struct redis_cluster;

/*
 * Returns a new cluster client on env (borrowed: it must outlive the
 * client) for the seeds (copied; n >= 1). It connects to the seeds at
 * once, asks one of them for CLUSTER SLOTS, and asks again every 10 s, at
 * once after a MOVED and soon after a command that got no reply; a master
 * it learns of gets a connection of its own (redis_conn: scripts loaded on
 * each). Freed with redis_cluster_free(). Aborts when out of memory.
 */
struct redis_cluster *redis_cluster_new(struct redis_conn_env *env,
                                        const struct redis_endpoint *seeds, size_t n);

/*
 * Sends cmd (taken, as redis_conn_send() takes it) to the master of `slot`
 * (a seed until the slot map is known), with fn(arg, reply) called exactly
 * once, as redis_conn_send() does. Redirections are followed within the
 * command's deadline (env->deadline_us from this call): MOVED updates the
 * map and sends again to the named node, ASK sends ASKING and the command to
 * it, TRYAGAIN and CLUSTERDOWN send again after a short backoff; when the
 * deadline or the redirection budget runs out, fn gets the last reply.
 */
void redis_cluster_send(struct redis_cluster *cl, unsigned slot, int script, struct sbuf *cmd,
                        redis_reply_fn *fn, void *arg);

/*
 * The masters of the slot map, for commands that run on each (SCAN):
 * fills out[0..cap) with their connections (borrowed, valid until the
 * client is freed) and returns how many there are (possibly more than cap).
 * Before the map is known, the seeds.
 */
size_t redis_cluster_masters(struct redis_cluster *cl, struct redis_conn **out, size_t cap);

/* Returns the connection of the master of slot (a seed before the map is known); borrowed. */
struct redis_conn *redis_cluster_conn(struct redis_cluster *cl, unsigned slot);

/* Returns whether the slot map is known and every master in it is connected. */
bool redis_cluster_healthy(const struct redis_cluster *cl);

/* Closes every connection (their pending commands complete with no reply) and frees cl. */
void redis_cluster_free(struct redis_cluster *cl);

#endif
