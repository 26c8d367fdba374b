/* tier_cache.c - a per-worker cache of each user's tier, looked up by SQL. */
#include "tier_cache.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

struct tier_slot {
    char *user; /* NULL: empty slot */
    size_t len;
    char tier[32];
    size_t tier_len;
    uint64_t expires_ms;
};

struct tier_cache {
    struct tier_slot *slots;
    size_t cap; /* power of two, twice max */
    size_t used, max;
};

static uint64_t
hash(const char *s, size_t len)
{
    return util_fnv1a(s, len);
}

struct tier_cache *
tier_cache_new(size_t max)
{
    struct tier_cache *tc = xcalloc(1, sizeof(*tc));
    tc->max = max ? max : 1;
    tc->cap = 2;
    while (tc->cap < tc->max * 2)
        tc->cap *= 2;
    tc->slots = xcalloc(tc->cap, sizeof(*tc->slots));
    return tc;
}

static void
clear(struct tier_cache *tc)
{
    for (size_t i = 0; i < tc->cap; i++) {
        free(tc->slots[i].user);
        tc->slots[i].user = NULL;
    }
    tc->used = 0;
}

void
tier_cache_free(struct tier_cache *tc)
{
    if (!tc)
        return;
    clear(tc);
    free(tc->slots);
    free(tc);
}

static struct tier_slot *
find(struct tier_cache *tc, const char *user, size_t len)
{
    size_t mask = tc->cap - 1;
    for (size_t i = hash(user, len) & mask;; i = (i + 1) & mask) {
        struct tier_slot *s = &tc->slots[i];
        if (!s->user || (s->len == len && memcmp(s->user, user, len) == 0))
            return s;
    }
}

int
tier_cache_get(struct tier_cache *tc, const char *user, size_t len, uint64_t now_ms,
               const char **tier, size_t *tier_len)
{
    struct tier_slot *s = find(tc, user, len);
    if (!s->user || s->expires_ms <= now_ms)
        return 0;
    *tier = s->tier;
    *tier_len = s->tier_len;
    return 1;
}

void
tier_cache_put(struct tier_cache *tc, const char *user, size_t len, const char *tier,
               size_t tier_len, uint64_t expires_ms)
{
    if (tier_len >= sizeof(((struct tier_slot *)0)->tier))
        return; /* not a tier name any policy could declare usefully; do not cache */
    struct tier_slot *s = find(tc, user, len);
    if (!s->user) {
        if (tc->used >= tc->max) {
            /* Full: start over. Entries are cheap to look up again. */
            clear(tc);
            s = find(tc, user, len);
        }
        s->user = xstrndup(user, len);
        s->len = len;
        tc->used++;
    }
    memcpy(s->tier, tier, tier_len);
    s->tier[tier_len] = '\0';
    s->tier_len = tier_len;
    s->expires_ms = expires_ms;
}
