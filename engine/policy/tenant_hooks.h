/* tenant_hooks.h - the tenant hooks each worker runs: its Lua states, the decisions, the counts. */
#ifndef SLUICE_TENANT_HOOKS_H
#define SLUICE_TENANT_HOOKS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "http_parse.h"
#include "policy.h"
#include "tenant.h"

/* VM instructions per call of a hook's when() or adjust(). */
#define TENANT_HOOK_BUDGET 100000
/* Bytes of one tenant's Lua state in one worker. */
#define TENANT_HOOK_MEMORY (8u << 20)
/* VM instructions to run a tenant file when its state is built (sluice.tenant.BUDGET). */
#define TENANT_LOAD_BUDGET 1000000

/*
 * Wall-clock time of one call of a hook (and of running the tenant file when
 * a worker builds the tenant's state): every call may take
 * TENANT_HOOK_BASE_US; time past that comes out of an allowance each tenant
 * has in each worker, which refills at TENANT_HOOK_EXTRA_MS_PER_S and holds
 * at most what takes a call to TENANT_HOOK_MS, the most any call may take.
 * So the hooks of one tenant that keep running long take a few percent of a
 * worker besides the base of each call, while calls that end within the base
 * never notice.
 */
#define TENANT_HOOK_MS 20
#define TENANT_HOOK_BASE_US 500
#define TENANT_HOOK_EXTRA_MS_PER_S 20

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
    uint64_t limit[POLICY_MAX_LIMITS]; /* >0: the limit of ep->limits[i] for this request */
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
 * out of instructions, time or memory, or leaves an invalid decision is skipped
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
 * budget_exceeded, time_exceeded, memory_exceeded, invalid_decisions,
 * load_failures) and denials. Thread-safe.
 */
json_t *tenant_stats_json(void);

#endif
