/* policy.h - a policy directory compiled into an immutable, refcounted snapshot. */
#ifndef SLUICE_POLICY_H
#define SLUICE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limiter.h"

struct template;
struct router;
struct tenant;
struct sbuf;
typedef struct lua_State lua_State;

struct policy_tier {
    char *name;
    struct limiter_rule rule;
    char *policy_field; /* "\"free\";q=100;w=3600", for RateLimit-Policy */
};

struct policy_limit {
    char *name;               /* policy name in RateLimit headers */
    bool is_tier;             /* the caller's tier: rule and name come from the tier */
    struct limiter_rule rule; /* unless is_tier */
    struct template *key;     /* unless is_tier (the tier key is per caller) */
    uint32_t cost;
    bool fail_closed;
    char *policy_field; /* unless is_tier */
};

enum policy_source { SOURCE_SQL, SOURCE_UPSTREAM, SOURCE_STATIC };

struct policy_endpoint {
    char *name; /* "GET /api/crm?type=contacts" */
    char *file;
    int line;
    int method;    /* enum http_method */
    bool is_write; /* POST PUT PATCH DELETE */
    enum policy_source source;

    /* sql */
    char *sql; /* as wrapped for PostgreSQL to build the JSON */
    struct template **args;
    size_t nargs;
    bool one;
    bool returns_rows;

    /* upstream */
    char *upstream;

    /* static */
    char *static_body;
    size_t static_len;
    int static_status;
    char *content_type;

    /* cache */
    bool cached;
    bool shared;
    uint64_t ttl_ms;
    struct template *cache_key;
    struct template **tags;
    size_t ntags;

    struct policy_limit *limits;
    size_t nlimits;

    struct template **invalidate;
    size_t ninvalidate;
};

struct policy_identity {
    char *user_header;           /* NULL: everyone is anonymous */
    char *tenant_header;         /* NULL: no tenants */
    char *tier_header;           /* tier taken from a trusted header, or */
    char *tier_sql;              /* looked up with this statement ... */
    struct template **tier_args; /* ... and these arguments */
    size_t ntier_args;
    uint64_t tier_ttl_ms;
    int default_tier; /* index into tiers, -1 when there are no tiers */
};

struct policy_file {
    char *path;
    char hash[17]; /* FNV-1a 64 of the content, hex */
};

struct policy {
    uint32_t refs; /* atomic */
    uint64_t generation;
    struct policy_file *files;
    size_t nfiles;
    struct policy_tier *tiers;
    size_t ntiers;
    struct policy_identity identity;
    struct policy_endpoint *endpoints;
    size_t nendpoints;
    struct router *router; /* data: struct policy_endpoint * */
    /* The tier counter of a caller: "tier:u:{user}", or "tier:ip:{ip}" when anonymous. */
    struct template *tier_key_user, *tier_key_ip;
    /* tenants/NAME.lua that loaded (or their last good version), sorted by name (tenant.h). */
    struct tenant *tenants;
    size_t ntenants;
    char *tenant_errors; /* "file:line: message" lines of the tenant files that failed, or NULL */
};

/*
 * Loads every *.lua of `dir` (in name order, then tenants/ *.lua) through the
 * Lua DSL and compiles the result. Returns a new snapshot with one reference,
 * or NULL with every problem as "file:line: message" lines in *errors (a new
 * string the caller frees). A tenant file that fails does not fail the load:
 * its messages go to p->tenant_errors, and the tenant keeps the version it
 * has in `prev` (the snapshot serving now; NULL: none) if that version still
 * loads against the new main set, else it has no overrides.
 */
struct policy *policy_load(const char *dir, uint64_t generation, const struct policy *prev,
                           char **errors);

void policy_ref(struct policy *p);
void policy_release(struct policy *p);

/* Returns the tier named `name` (len bytes), or NULL. */
const struct policy_tier *policy_tier_find(const struct policy *p, const char *name, size_t len);

/*
 * Compiles the "limits" list of the normalized table at the top of L into
 * e->limits (new, owned by e's owner). Returns 0, or -1 with
 * "file:line: message" lines added to errs.
 */
int policy_compile_limits(lua_State *L, struct policy *p, struct policy_endpoint *e,
                          const char *file, int line, struct sbuf *errs);

/* Frees n limits and the array. */
void policy_limits_free(struct policy_limit *limits, size_t n);

#endif
