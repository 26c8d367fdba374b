/* tenant.c - per-tenant overrides: tenants/NAME.lua compiled into a snapshot, and their lookups. */
#define _GNU_SOURCE
#include "tenant.h"

#include <stdlib.h>
#include <string.h>

#include "policy_compile.h"
#include "util.h"

/* ---- compiling the normalized tenants ---------------------------------------------------- */

void
tenant_push_load_options(lua_State *L, const struct policy *prev)
{
    lua_createtable(L, 0, 1);
    lua_createtable(L, 0, prev ? (int)prev->ntenants : 0);
    for (size_t i = 0; prev && i < prev->ntenants; i++) {
        const struct tenant *t = &prev->tenants[i];
        lua_createtable(L, 0, 2);
        lua_pushstring(L, t->file);
        lua_setfield(L, -2, "path");
        lua_pushlstring(L, t->source, t->source_len);
        lua_setfield(L, -2, "source");
        lua_setfield(L, -2, t->name);
    }
    lua_setfield(L, -2, "last_good");
}

/* A tier override: the main tier's rule with the normalized fields. */
static int
compile_tier(struct compile *c, struct tenant *t)
{
    lua_State *L = c->L;
    struct policy *p = c->p;
    char *name = field_str(L, "name");
    c->line = (int)field_int(L, "line", 1);
    const struct policy_tier *main = name ? policy_tier_find(p, name, strlen(name)) : NULL;
    if (!main) {
        cerr(c, "tier \"%s\" is not a tier of the main policy set", name ? name : "?");
        free(name);
        return -1;
    }
    struct policy_tier *o = &t->tiers[t->ntiers++];
    o->name = name;
    o->rule = main->rule;
    char *algo = field_str(L, "algorithm");
    if (algo && limiter_algo_parse(algo, &o->rule.algo) != 0)
        cerr(c, "unknown algorithm '%s'", algo);
    free(algo);
    o->rule.limit = (uint64_t)field_int(L, "limit", (int64_t)main->rule.limit);
    o->rule.window_ms = (uint64_t)field_int(L, "window_ms", (int64_t)main->rule.window_ms);
    o->rule.burst = (uint64_t)field_int(L, "burst", 0);
    o->shadow = field_shadow(c, main->shadow);
    o->policy_field = policy_field(name, &o->rule);
    t->tier_for[main - p->tiers] = o;
    return 0;
}

/* An endpoint override: the main endpoint with the tenant's ttl and limits. */
static int
compile_endpoint(struct compile *c, struct tenant *t)
{
    lua_State *L = c->L;
    struct policy *p = c->p;
    int64_t index = field_int(L, "index", 0);
    c->line = (int)field_int(L, "line", 1);
    if (index < 1 || (uint64_t)index > p->nendpoints) {
        cerr(c, "the endpoint is not in the main policy set");
        return -1;
    }
    struct tenant_endpoint *te = &t->endpoints[t->nendpoints++];
    te->main = &p->endpoints[index - 1];
    te->ep = *te->main;
    te->ep.ttl_ms = (uint64_t)field_int(L, "ttl_ms", (int64_t)te->main->ttl_ms);
    lua_getfield(L, -1, "limits");
    bool own_limits = lua_istable(L, -1);
    lua_pop(L, 1);
    if (!own_limits)
        return 0;
    te->ep.limits = NULL;
    te->ep.nlimits = 0;
    te->own_limits = true;
    return compile_limits(c, &te->ep);
}

/* Calls fn for each item of the list field `name` of the table at the top; -1 if any failed. */
static int
each_item(struct compile *c, const char *name, struct tenant *t,
          int (*fn)(struct compile *, struct tenant *))
{
    lua_State *L = c->L;
    int rc = 0;
    lua_getfield(L, -1, name);
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        if (fn(c, t) != 0)
            rc = -1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return rc;
}

static size_t
list_len(lua_State *L, const char *name)
{
    lua_getfield(L, -1, name);
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    lua_pop(L, 1);
    return n;
}

static void
tenant_clear(struct tenant *t)
{
    free(t->name);
    free(t->file);
    free(t->source);
    for (size_t i = 0; i < t->ntiers; i++) {
        free(t->tiers[i].name);
        free(t->tiers[i].policy_field);
    }
    free(t->tiers);
    free(t->tier_for);
    for (size_t i = 0; i < t->nendpoints; i++)
        if (t->endpoints[i].own_limits)
            policy_limits_free(t->endpoints[i].ep.limits, t->endpoints[i].ep.nlimits);
    free(t->endpoints);
    for (size_t i = 0; i < t->nhooks; i++)
        free(t->hooks[i].name);
    free(t->hooks);
    memset(t, 0, sizeof(*t));
}

/* Compiles the normalized tenant at the top of L into t. Returns 0, or -1 with errs. */
static int
compile_tenant(lua_State *L, struct policy *p, struct tenant *t, struct sbuf *errs)
{
    t->name = field_str(L, "name");
    t->file = field_str(L, "file");
    t->source = field_lstr(L, "source", &t->source_len);
    struct compile c = {.L = L, .p = p, .errs = errs, .file = t->file, .line = 1};
    if (!t->name || !t->file || !t->source) {
        cerr(&c, "incomplete tenant entry");
        return -1;
    }
    lua_getfield(L, -1, "last_good");
    t->last_good = lua_toboolean(L, -1);
    lua_pop(L, 1);

    size_t n = list_len(L, "tiers");
    t->tiers = xcalloc(n ? n : 1, sizeof(*t->tiers));
    t->tier_for = xcalloc(p->ntiers ? p->ntiers : 1, sizeof(*t->tier_for));
    n = list_len(L, "endpoints");
    t->endpoints = xcalloc(n ? n : 1, sizeof(*t->endpoints));
    int rc = each_item(&c, "tiers", t, compile_tier);
    if (each_item(&c, "endpoints", t, compile_endpoint) != 0)
        rc = -1;

    n = list_len(L, "hooks");
    t->hooks = xcalloc(n ? n : 1, sizeof(*t->hooks));
    lua_getfield(L, -1, "hooks");
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        t->hooks[t->nhooks].name = field_str(L, "name");
        t->hooks[t->nhooks].line = (int)field_int(L, "line", 0);
        if (t->hooks[t->nhooks].name)
            t->nhooks++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return rc;
}

static int
cmp_tenant(const void *a, const void *b)
{
    return strcmp(((const struct tenant *)a)->name, ((const struct tenant *)b)->name);
}

static int
cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends the messages of set.tenant_errors (at the top of L), tenant by tenant in name order. */
static void
collect_errors(lua_State *L, struct sbuf *out)
{
    lua_getfield(L, -1, "tenant_errors");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    char **names = NULL;
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            names = xrealloc(names, (n + 1) * sizeof(*names));
            names[n++] = xstrdup(lua_tostring(L, -2));
        }
        lua_pop(L, 1);
    }
    if (n)
        qsort(names, n, sizeof(*names), cmp_cstr);
    for (size_t i = 0; i < n; i++) {
        lua_getfield(L, -1, names[i]);
        size_t m = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
        for (size_t j = 1; j <= m; j++) {
            lua_rawgeti(L, -1, (lua_Integer)j);
            if (lua_type(L, -1) == LUA_TSTRING)
                sbuf_printf(out, "%s\n", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        free(names[i]);
    }
    free(names);
    lua_pop(L, 1);
}

void
tenant_compile(lua_State *L, struct policy *p)
{
    struct sbuf errs = {0};
    collect_errors(L, &errs);
    size_t n = list_len(L, "tenants");
    p->tenants = xcalloc(n ? n : 1, sizeof(*p->tenants));
    lua_getfield(L, -1, "tenants");
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        struct tenant *t = &p->tenants[p->ntenants];
        if (compile_tenant(L, p, t, &errs) == 0)
            p->ntenants++;
        else
            tenant_clear(t);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    qsort(p->tenants, p->ntenants, sizeof(*p->tenants), cmp_tenant);
    for (size_t i = 0; i < p->ntenants; i++)
        p->tenants[i].index = i;
    p->tenant_errors = errs.p;
}

void
tenant_free_all(struct tenant *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tenant_clear(&t[i]);
    free(t);
}

/* ---- looking up ------------------------------------------------------------------------ */

const struct tenant *
tenant_find(const struct policy *p, const char *name, size_t len)
{
    size_t lo = 0, hi = p->ntenants;
    if (!name)
        return NULL;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *m = p->tenants[mid].name;
        int c = strncmp(m, name, len);
        if (c == 0)
            c = m[len] != '\0'; /* m is longer: it sorts after */
        if (c == 0)
            return &p->tenants[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const struct policy_endpoint *
tenant_endpoint(const struct tenant *t, const struct policy_endpoint *ep)
{
    for (size_t i = 0; i < t->nendpoints; i++)
        if (t->endpoints[i].main == ep)
            return &t->endpoints[i].ep;
    return ep;
}

const struct policy_tier *
tenant_tier(const struct tenant *t, const struct policy *p, const struct policy_tier *tier)
{
    if (!tier || tier < p->tiers || tier >= p->tiers + p->ntiers)
        return tier;
    const struct policy_tier *o = t->tier_for[tier - p->tiers];
    return o ? o : tier;
}
