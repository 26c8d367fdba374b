/* tier_cache.c - a per-worker cache of each user's tier, looked up by SQL. */
#include "tier_cache.h"

#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "util.h"

struct tier_entry {
    struct hmap_node node; /* in users, by user */
    char tier[32];
    size_t tier_len;
    uint64_t expires_ms;
    char user[];
};

struct tier_cache {
    struct hmap users;
    size_t max;
};

struct tier_cache *
tier_cache_new(size_t max)
{
    struct tier_cache *tc = xcalloc(1, sizeof(*tc));
    tc->max = max ? max : 1;
    return tc;
}

static void
clear(struct tier_cache *tc)
{
    for (struct hmap_node *n = hmap_first(&tc->users), *next; n; n = next) {
        next = hmap_next(&tc->users, n);
        hmap_remove(&tc->users, n);
        free(HMAP_ENTRY(n, struct tier_entry, node));
    }
}

void
tier_cache_free(struct tier_cache *tc)
{
    if (!tc)
        return;
    clear(tc);
    hmap_free(&tc->users);
    free(tc);
}

static struct tier_entry *
find(struct tier_cache *tc, const char *user, size_t len)
{
    struct hmap_node *n = hmap_find(&tc->users, user, len);
    return HMAP_ENTRY(n, struct tier_entry, node);
}

int
tier_cache_get(struct tier_cache *tc, const char *user, size_t len, uint64_t now_ms,
               const char **tier, size_t *tier_len)
{
    struct tier_entry *e = find(tc, user, len);
    if (!e || e->expires_ms <= now_ms)
        return 0;
    *tier = e->tier;
    *tier_len = e->tier_len;
    return 1;
}

void
tier_cache_put(struct tier_cache *tc, const char *user, size_t len, const char *tier,
               size_t tier_len, uint64_t expires_ms)
{
    if (tier_len >= sizeof(((struct tier_entry *)0)->tier))
        return; /* not a tier name any policy could declare usefully; do not cache */
    struct tier_entry *e = find(tc, user, len);
    if (!e) {
        if (tc->users.count >= tc->max)
            clear(tc); /* Full: start over. Entries are cheap to look up again. */
        e = xmalloc(sizeof(*e) + len);
        memcpy(e->user, user, len);
        hmap_insert(&tc->users, &e->node, e->user, len);
    }
    memcpy(e->tier, tier, tier_len);
    e->tier[tier_len] = '\0';
    e->tier_len = tier_len;
    e->expires_ms = expires_ms;
}
