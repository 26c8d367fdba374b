/* tenant.h - per-tenant overrides: tenants/NAME.lua compiled into a snapshot, and their lookups. */
#ifndef SLUICE_TENANT_H
#define SLUICE_TENANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"

struct tenant_hook {
    char *name;
    int line;
};

/* An endpoint of the main set as one tenant sees it. */
struct tenant_endpoint {
    const struct policy_endpoint *main; /* the overridden endpoint of the same snapshot */
    struct policy_endpoint ep;          /* main's fields (shared, not owned), with the tenant's
                                           ttl_ms and, when own_limits, its limits (owned) */
    bool own_limits;
};

/* tenants/NAME.lua, compiled. Immutable; owned by its snapshot. */
struct tenant {
    char *name;
    char *file;
    char *source; /* the text the hooks are loaded from */
    size_t source_len;
    bool last_good;            /* the current file failed: this is the last version that loaded */
    size_t index;              /* in policy->tenants */
    struct policy_tier *tiers; /* overrides: whole rules, each named after its main tier */
    size_t ntiers;
    const struct policy_tier **tier_for; /* [policy->ntiers]: the override of each main tier */
    struct tenant_endpoint *endpoints;
    size_t nendpoints;
    struct tenant_hook *hooks;
    size_t nhooks;
};

/* Frees the n tenants of a snapshot and the array. */
void tenant_free_all(struct tenant *t, size_t n);

/* Returns the tenant named name (len bytes) in p, or NULL; borrowed from p. */
const struct tenant *tenant_find(const struct policy *p, const char *name, size_t len);

/* Returns t's view of the main endpoint ep (ep itself when t does not override it). */
const struct policy_endpoint *tenant_endpoint(const struct tenant *t,
                                              const struct policy_endpoint *ep);

/* Returns t's rule for the main tier `tier` of p (tier itself when t does not override it). */
const struct policy_tier *tenant_tier(const struct tenant *t, const struct policy *p,
                                      const struct policy_tier *tier);

#endif
