/* tier_cache.h - a per-worker cache of each user's tier, looked up by SQL. */
#ifndef SLUICE_TIER_CACHE_H
#define SLUICE_TIER_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct tier_cache;

/* Returns a new cache holding at most `max` users (one worker's; not thread-safe). */
struct tier_cache *tier_cache_new(size_t max);
void tier_cache_free(struct tier_cache *tc);

/*
 * Returns 1 and sets *tier (borrowed until the next put) when `user` has an
 * entry that has not expired at now_ms; *tier is "" when the lookup found no
 * tier (the caller uses the default). Returns 0 otherwise.
 */
int tier_cache_get(struct tier_cache *tc, const char *user, size_t len, uint64_t now_ms,
                   const char **tier, size_t *tier_len);

/* Remembers `tier` (copied; "" for none) for `user` until expires_ms. */
void tier_cache_put(struct tier_cache *tc, const char *user, size_t len, const char *tier,
                    size_t tier_len, uint64_t expires_ms);

#endif
