/* store_redis_fleet.h - the Redis store's fleet: instances publishing themselves to one hash;
 * for store/redis/ only. */
#ifndef SLUICE_STORE_REDIS_FLEET_H
#define SLUICE_STORE_REDIS_FLEET_H

#include <stdint.h>

#include "redis_conn.h"
#include "store.h"

#define REDIS_FLEET_KEY "sl:{fleet}" /* one hash, one cluster slot */

/*
 * store_fleet() on the connection c (borrowed; it must outlive the call, as
 * its closing completes it): fleet.lua publishes `me` and reads the others
 * in one EVAL (the script's text is sent: it runs every few seconds, so no
 * SCRIPT LOAD is kept for it). *failed (borrowed) is counted up when it fails.
 */
void redis_fleet(struct redis_conn *c, uint64_t *failed, const struct store_fleet_member *me,
                 uint64_t ttl_ms, store_fleet_fn *done, void *arg);

/*
 * Reads one instance's hash field: id (idlen bytes) and value
 * "SEEN_MS\tLISTEN\tPOLICY_HASH\tGENERATION\tSTARTED_MS\tSTORE_UP\tDB_UP"
 * into *m. Returns 0, or -1 when it is not one.
 */
int redis_fleet_parse(const char *id, size_t idlen, const char *v, size_t len,
                      struct store_fleet_member *m);

#endif
