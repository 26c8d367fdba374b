/* tenant.h - per-tenant overrides in a policy snapshot, and the tenant hooks each worker runs. */
#ifndef SLUICE_TENANT_H
#define SLUICE_TENANT_H

#include <jansson.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http_parse.h"
#include "policy.h"

/* VM instructions per call of a hook's when() or adjust(). */
#define TENANT_HOOK_BUDGET 100000
/* Bytes of one tenant's Lua state in one worker. */
#define TENANT_HOOK_MEMORY (8u << 20)
/* VM instructions to run a tenant file when its state is built (sluice.tenant.BUDGET). */
#define TENANT_LOAD_BUDGET 1000000
/* Limits of one request that a hook can see and change. */
#define TENANT_MAX_LIMITS 8

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

/* ---- in the snapshot --------------------------------------------------------------------- */

/*
 * Pushes the options table sluice.dsl.load takes, holding the last good
 * source of each tenant of `prev` (NULL: none). Raises on memory exhaustion.
 */
void tenant_push_load_options(lua_State *L, const struct policy *prev);

/*
 * Compiles set.tenants and set.tenant_errors of the normalized set at the
 * top of L into p->tenants (sorted by name) and p->tenant_errors (one
 * "file:line: message" line each, NULL when there are none). A tenant that
 * fails here is left out and its problem added to the tenant errors.
 */
void tenant_compile(lua_State *L, struct policy *p);

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

/* ---- hooks ------------------------------------------------------------------------------- */

/* A request as hooks see it. Everything is borrowed for the call. */
struct tenant_call {
    const struct http_request *http;
    const char *user, *tenant; /* NULL when absent */
    size_t user_len, tenant_len;
    const char *ip;
    const struct policy_endpoint *ep; /* as the tenant sees it */
    const struct policy_tier *tier;   /* as the tenant sees it; NULL when none applies */
};

/* What the hooks decided; zero is "nothing changed". */
struct tenant_decision {
    uint32_t cost;                     /* >0: every limit counts the request this many times */
    uint64_t limit[TENANT_MAX_LIMITS]; /* >0: the limit of ep->limits[i] for this request */
    int deny_status;                   /* 4xx: answer this instead */
    char deny_message[256];
};

/* One worker's Lua states of tenant hooks, for one policy generation. */
struct tenant_runtime;

/* Returns a new, empty runtime (owned by the worker). */
struct tenant_runtime *tenant_runtime_new(void);

/* Frees every state and the runtime. NULL is a no-op. */
void tenant_runtime_free(struct tenant_runtime *rt);

/* The worker now serves `generation`: the states of the previous one are freed. */
void tenant_runtime_reset(struct tenant_runtime *rt, uint64_t generation);

/*
 * Runs the hooks of tenant t (of snapshot p) for one request, in their
 * order: each hook whose when(req) is true (or that has no when) runs
 * adjust(req, decision), and what it leaves in decision is checked and
 * kept in *d, which starts zeroed here. A hook that raises an error, runs
 * out of instructions or memory, or leaves an invalid decision is skipped
 * for this request, as if it were absent, and counted as a failure of its
 * tenant; the first hook that denies ends the run. The state of t is built
 * on first use in this worker for p's generation (for an older one, a
 * throwaway state serves the one request).
 */
void tenant_hooks_run(struct tenant_runtime *rt, const struct policy *p, const struct tenant *t,
                      const struct tenant_call *call, struct tenant_decision *d);

/*
 * Returns a new JSON object: for each tenant whose hooks ran since the
 * process started, its counts of hook calls, failures (and of those: errors,
 * budget_exceeded, memory_exceeded, invalid_decisions, load_failures) and
 * denials. Thread-safe.
 */
json_t *tenant_stats_json(void);

#endif
