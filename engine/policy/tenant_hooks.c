/* tenant_hooks.c - the tenant hooks each worker runs: its Lua states, the decisions, the counts. */
#define _GNU_SOURCE
#include "tenant_hooks.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "lua_sandbox.h"
#include "util.h"

#define REG_HOOKS "sluice.tenant.hooks"
#define MAX_LOGGED 5 /* hook failures logged per tenant state; the rest are only counted */

/* ---- failure counts ---------------------------------------------------------------------- */

struct tenant_counters {
    char *name;
    uint64_t calls, failures, errors, budget, time, memory, invalid, load_failures, denied;
    struct tenant_counters *next;
};

static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tenant_counters *stats_head; /* one per tenant name, kept for the process */

static struct tenant_counters *
counters_for(const char *name)
{
    pthread_mutex_lock(&stats_lock);
    struct tenant_counters *c = stats_head;
    while (c && strcmp(c->name, name) != 0)
        c = c->next;
    if (!c) {
        c = xcalloc(1, sizeof(*c));
        c->name = xstrdup(name);
        c->next = stats_head;
        stats_head = c;
    }
    pthread_mutex_unlock(&stats_lock);
    return c;
}

static void
bump(uint64_t *counter)
{
    __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

static json_int_t
get(const uint64_t *counter)
{
    return (json_int_t)__atomic_load_n(counter, __ATOMIC_RELAXED);
}

json_t *
tenant_stats_json(void)
{
    json_t *o = json_object();
    pthread_mutex_lock(&stats_lock);
    for (struct tenant_counters *c = stats_head; c; c = c->next)
        json_object_set_new(
            o, c->name,
            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "hook_calls", get(&c->calls),
                      "hook_failures", get(&c->failures), "errors", get(&c->errors),
                      "budget_exceeded", get(&c->budget), "time_exceeded", get(&c->time),
                      "memory_exceeded", get(&c->memory), "invalid_decisions", get(&c->invalid),
                      "load_failures", get(&c->load_failures), "denied", get(&c->denied)));
    pthread_mutex_unlock(&stats_lock);
    return o;
}

/* ---- time ------------------------------------------------------------------------------ */

#define BASE_NS ((uint64_t)TENANT_HOOK_BASE_US * 1000u)
#define EXTRA_MAX_NS ((uint64_t)TENANT_HOOK_MS * 1000000u - BASE_NS)

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- per-worker states ------------------------------------------------------------------- */

/* One tenant's Lua state in one worker. */
struct hook_state {
    struct lua_sandbox *sb; /* NULL: not built yet, or the tenant file did not load */
    int built;
    unsigned logged;
    struct tenant_counters *stats;
    uint64_t extra_ns, extra_at; /* the time allowance past the base, and when it was counted */
};

struct tenant_runtime {
    uint64_t generation;
    struct hook_state *states; /* [nstates], by tenant index in that generation */
    size_t nstates;
};

struct tenant_runtime *
tenant_runtime_new(void)
{
    return xcalloc(1, sizeof(struct tenant_runtime));
}

static void
states_free(struct tenant_runtime *rt)
{
    for (size_t i = 0; i < rt->nstates; i++)
        lua_sandbox_free(rt->states[i].sb);
    free(rt->states);
    rt->states = NULL;
    rt->nstates = 0;
}

void
tenant_runtime_free(struct tenant_runtime *rt)
{
    if (!rt)
        return;
    states_free(rt);
    free(rt);
}

void
tenant_runtime_reset(struct tenant_runtime *rt, uint64_t generation)
{
    if (rt->generation == generation)
        return;
    states_free(rt);
    rt->generation = generation;
}

/* Logs a failure of tenant t's hooks (the first line of msg), a few per state. */
static void
log_failure(struct hook_state *hs, const struct tenant *t, const char *hook, const char *what,
            const char *msg)
{
    if (hs->logged >= MAX_LOGGED)
        return;
    hs->logged++;
    const char *nl = strchr(msg, '\n');
    int len = nl ? (int)(nl - msg) : (int)strlen(msg);
    log_warn("tenant %s: %s%s skipped (%s): %.*s%s", t->name, hook ? "hook " : "hooks",
             hook ? hook : "", what, len, msg,
             hs->logged == MAX_LOGGED ? " (further failures in this worker are only counted)" : "");
}

static void
hook_failed(struct hook_state *hs, const struct tenant *t, const char *hook,
            enum lua_sandbox_status st, const char *msg)
{
    struct tenant_counters *c = hs->stats;
    bump(&c->failures);
    const char *what = "error";
    switch (st) {
    case LUA_SANDBOX_BUDGET:
        bump(&c->budget);
        what = "instruction budget exceeded";
        break;
    case LUA_SANDBOX_TIME:
        bump(&c->time);
        what = "time budget exceeded";
        break;
    case LUA_SANDBOX_MEMORY:
        bump(&c->memory);
        what = "memory cap reached";
        break;
    case LUA_SANDBOX_OK:
        bump(&c->invalid);
        what = "invalid decision";
        break;
    case LUA_SANDBOX_ERROR:
    default:
        bump(&c->errors);
        break;
    }
    log_failure(hs, t, hook, what, msg);
}

/*
 * Sets the time budget of the next call of hs's state: the base, and as much
 * of the allowance as there is, refilled for the time since it was counted.
 */
static void
time_allow(struct hook_state *hs, uint64_t now)
{
    if (!hs->extra_at) {
        hs->extra_ns = EXTRA_MAX_NS;
    } else if (now > hs->extra_at) {
        uint64_t refill = (now - hs->extra_at) / 1000u * TENANT_HOOK_EXTRA_MS_PER_S;
        hs->extra_ns = refill >= EXTRA_MAX_NS - hs->extra_ns ? EXTRA_MAX_NS : hs->extra_ns + refill;
    }
    hs->extra_at = now;
    lua_sandbox_set_time(hs->sb, (uint32_t)((BASE_NS + hs->extra_ns) / 1000u));
}

/* A call of hs's state that began at `since` has ended: its time past the base is spent. */
static void
time_spent(struct hook_state *hs, uint64_t since)
{
    uint64_t now = now_ns(), took = now > since ? now - since : 0;
    uint64_t past = took > BASE_NS ? took - BASE_NS : 0;
    hs->extra_ns = past >= hs->extra_ns ? 0 : hs->extra_ns - past;
}

/* Calls the function below its nargs arguments in hs's state, within its budgets. */
static enum lua_sandbox_status
timed_call(struct hook_state *hs, lua_State *L, int nargs, int nresults, char *err, size_t errlen)
{
    uint64_t t0 = now_ns();
    time_allow(hs, t0);
    enum lua_sandbox_status st = lua_sandbox_call(L, nargs, nresults, err, errlen);
    time_spent(hs, t0);
    return st;
}

/* The tenant file at runtime: `hook` records, every other declaration does nothing. */
static int
noop(lua_State *L)
{
    return 0;
}

/* tier "x" { ... } and tier("x", { ... }): nothing. */
static int
noop_decl(lua_State *L)
{
    if (lua_gettop(L) >= 2)
        return 0;
    lua_pushcfunction(L, noop);
    return 1;
}

/* The fields of hook "NAME" { ... } (upvalues: the list of hooks, the name). */
static int
hook_fields(lua_State *L)
{
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_setfield(L, -2, "name");
    if (lua_type(L, 1) == LUA_TTABLE) {
        lua_getfield(L, 1, "when");
        lua_setfield(L, -2, "when");
        lua_getfield(L, 1, "adjust");
        lua_setfield(L, -2, "adjust");
    }
    lua_rawseti(L, lua_upvalueindex(1), (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)) + 1);
    return 0;
}

/* hook "NAME" { ... } and hook("NAME", { ... }) (upvalue: the list of hooks). */
static int
hook_decl(lua_State *L)
{
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, hook_fields, 2);
    if (n < 2)
        return 1;
    lua_pushvalue(L, 2);
    lua_call(L, 1, 0);
    return 0;
}

struct build_ctx {
    struct hook_state *hs;
    const struct tenant *t;
    enum lua_sandbox_status st;
    char err[512];
};

/* Runs the tenant file in a fresh environment; its hooks go to the registry. */
static int
build_protected(lua_State *L)
{
    struct build_ctx *bc = lua_touserdata(L, 1);
    static const char *const decls[] = {"tier", "endpoint", "identity", "upstream", "on_change"};
    lua_sandbox_push_env(L);
    int env = lua_gettop(L);
    for (size_t i = 0; i < sizeof(decls) / sizeof(decls[0]); i++) {
        lua_pushcfunction(L, noop_decl);
        lua_setfield(L, env, decls[i]);
    }
    lua_pushcfunction(L, noop);
    lua_setfield(L, env, "header");
    lua_pushcfunction(L, noop);
    lua_setfield(L, env, "sql");
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_HOOKS);
    lua_pushcclosure(L, hook_decl, 1);
    lua_setfield(L, env, "hook");

    lua_pushfstring(L, "@%s", bc->t->file);
    const char *chunk = lua_tostring(L, -1);
    bc->st =
        lua_sandbox_load(L, bc->t->source, bc->t->source_len, chunk, env, bc->err, sizeof(bc->err));
    if (bc->st != LUA_SANDBOX_OK)
        return 0;
    struct lua_sandbox *sb = lua_sandbox_of(L);
    lua_sandbox_set_budget(sb, TENANT_LOAD_BUDGET);
    bc->st = timed_call(bc->hs, L, 0, 0, bc->err, sizeof(bc->err));
    lua_sandbox_set_budget(sb, TENANT_HOOK_BUDGET);
    return 0;
}

static void
state_build(struct hook_state *hs, const struct tenant *t)
{
    hs->built = 1;
    hs->stats = counters_for(t->name);
    struct build_ctx bc = {.hs = hs, .t = t};
    hs->sb = lua_sandbox_new(TENANT_HOOK_MEMORY, TENANT_HOOK_BUDGET, TENANT_HOOK_MS * 1000u);
    if (!hs->sb) {
        snprintf(bc.err, sizeof(bc.err), "cannot open a Lua state within the memory cap");
        bc.st = LUA_SANDBOX_MEMORY;
    } else {
        enum lua_sandbox_status st =
            lua_sandbox_protect(hs->sb, build_protected, &bc, bc.err, sizeof(bc.err));
        if (st != LUA_SANDBOX_OK)
            bc.st = st;
    }
    if (bc.st != LUA_SANDBOX_OK) {
        bump(&hs->stats->load_failures);
        log_failure(hs, t, NULL, "the tenant file did not load", bc.err);
        lua_sandbox_free(hs->sb);
        hs->sb = NULL;
    }
}

/* ---- running the hooks ------------------------------------------------------------------- */

struct run_ctx {
    struct hook_state *hs;
    const struct tenant *t;
    const struct tenant_call *call;
    struct tenant_decision *d;
    char err[512];
};

static void
set_str(lua_State *L, int t, const char *k, const char *v, size_t len)
{
    if (!v)
        return;
    lua_pushlstring(L, v, len);
    lua_setfield(L, t, k);
}

/* Pushes the read-only `req` of a call. */
static void
push_request(lua_State *L, const struct tenant_call *call)
{
    const struct http_request *h = call->http;
    lua_createtable(L, 0, 10);
    int r = lua_gettop(L);
    set_str(L, r, "method", h->method_str.p, h->method_str.len);
    set_str(L, r, "path", h->path.p, h->path.len);

    /* query: decoded names and values, the first of each name */
    lua_createtable(L, 0, 4);
    int q = lua_gettop(L);
    char *tmp = lua_newuserdatauv(L, h->query.len + 1, 0);
    const char *s = h->query.p, *end = h->query.p + h->query.len;
    while (s && s < end) {
        const char *amp = memchr(s, '&', (size_t)(end - s));
        const char *e = amp ? amp : end;
        const char *eq = memchr(s, '=', (size_t)(e - s));
        const char *ke = eq ? eq : e;
        size_t kl, vl;
        if (ke > s && http_pct_decode(s, (size_t)(ke - s), tmp, &kl, 1) == 0) {
            lua_pushlstring(L, tmp, kl);
            if (lua_rawget(L, q) == LUA_TNIL) {
                lua_pushlstring(L, tmp, kl);
                const char *v = eq ? eq + 1 : e;
                if (http_pct_decode(v, (size_t)(e - v), tmp, &vl, 1) == 0)
                    lua_pushlstring(L, tmp, vl);
                else
                    lua_pushlstring(L, v, (size_t)(e - v));
                lua_rawset(L, q);
            }
            lua_pop(L, 1);
        }
        s = amp ? amp + 1 : NULL;
    }
    lua_pop(L, 1); /* tmp */
    lua_sandbox_push_readonly(L, q, "req.query");
    lua_setfield(L, r, "query");
    lua_pop(L, 1);

    /* headers: lower-case names, the first of each name */
    lua_createtable(L, 0, (int)h->nheaders);
    int hd = lua_gettop(L);
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_header *x = &h->headers[i];
        char name[256];
        if (x->name.len >= sizeof(name))
            continue;
        for (size_t j = 0; j < x->name.len; j++) {
            char c = x->name.p[j];
            name[j] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
        }
        lua_pushlstring(L, name, x->name.len);
        if (lua_rawget(L, hd) == LUA_TNIL) {
            lua_pushlstring(L, name, x->name.len);
            lua_pushlstring(L, x->value.p, x->value.len);
            lua_rawset(L, hd);
        }
        lua_pop(L, 1);
    }
    lua_sandbox_push_readonly(L, hd, "req.headers");
    lua_setfield(L, r, "headers");
    lua_pop(L, 1);

    set_str(L, r, "user", call->user, call->user_len);
    set_str(L, r, "tenant", call->tenant, call->tenant_len);
    if (call->tier)
        set_str(L, r, "tier", call->tier->name, strlen(call->tier->name));
    if (call->ip)
        set_str(L, r, "ip", call->ip, strlen(call->ip));
    set_str(L, r, "endpoint", call->ep->name, strlen(call->ep->name));
    lua_sandbox_push_readonly(L, r, "req");
    lua_remove(L, r);
}

static size_t
nlimits_of(const struct tenant_call *call)
{
    return call->ep->nlimits < POLICY_MAX_LIMITS ? call->ep->nlimits : POLICY_MAX_LIMITS;
}

/* The rule and name of limit i of the call's endpoint. */
static const struct limiter_rule *
limit_rule(const struct tenant_call *call, size_t i, const char **name)
{
    const struct policy_limit *l = &call->ep->limits[i];
    if (l->is_tier) {
        *name = call->tier ? call->tier->name : "tier";
        return call->tier ? &call->tier->rule : NULL;
    }
    *name = l->name;
    return &l->rule;
}

/* Whether limit i of the call's endpoint is in shadow mode (a tier limit: its tier's mode). */
static bool
limit_shadow(const struct tenant_call *call, size_t i)
{
    const struct policy_limit *l = &call->ep->limits[i];
    return l->is_tier ? call->tier && call->tier->shadow : l->shadow;
}

static uint32_t
shown_cost(const struct tenant_decision *d)
{
    return d->cost ? d->cost : 1;
}

static uint64_t
shown_limit(const struct tenant_decision *d, const struct limiter_rule *r, size_t i)
{
    return d->limit[i] ? d->limit[i] : r ? r->limit : 0;
}

/* Pushes the `decision` table a hook's adjust() receives: what the hooks before it decided. */
static void
push_decision(lua_State *L, const struct tenant_call *call, const struct tenant_decision *d)
{
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)shown_cost(d));
    lua_setfield(L, -2, "cost");
    size_t n = nlimits_of(call);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const struct limiter_rule *r = limit_rule(call, i, &name);
        lua_createtable(L, 0, 5);
        lua_pushstring(L, name);
        lua_setfield(L, -2, "name");
        lua_pushinteger(L, (lua_Integer)shown_limit(d, r, i));
        lua_setfield(L, -2, "limit");
        uint64_t w = r ? r->window_ms : 0;
        if (w % 1000 == 0)
            lua_pushinteger(L, (lua_Integer)(w / 1000));
        else
            lua_pushnumber(L, (lua_Number)w / 1000.0);
        lua_setfield(L, -2, "window");
        lua_pushstring(L, r ? limiter_algo_name(r->algo) : "none");
        lua_setfield(L, -2, "algorithm");
        lua_pushstring(L, limit_shadow(call, i) ? "shadow" : "enforce");
        lua_setfield(L, -2, "mode");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "limits");
}

/* A whole number in [1, max] at the top of the stack, or 0. */
static uint64_t
whole(lua_State *L, uint64_t max)
{
    int isnum = 0;
    lua_Integer v = lua_tointegerx(L, -1, &isnum);
    if (!isnum || lua_type(L, -1) != LUA_TNUMBER || v < 1 || (uint64_t)v > max)
        return 0;
    return (uint64_t)v;
}

/*
 * Reads back the decision table at idx into *d (which holds what the hooks
 * before decided). Returns 0, or -1 with the reason in err.
 */
static int
read_decision(lua_State *L, int idx, const struct tenant_call *call, struct tenant_decision *d,
              char *err, size_t errlen)
{
    int rc = -1;
    int top = lua_gettop(L);
    lua_getfield(L, idx, "cost");
    uint64_t cost = whole(L, UINT32_MAX);
    if (!cost) {
        snprintf(err, errlen, "decision.cost must be a whole number from 1 up, got %s",
                 luaL_typename(L, -1));
        goto out;
    }
    if (cost != shown_cost(d))
        d->cost = (uint32_t)cost;
    lua_getfield(L, idx, "limits");
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "decision.limits must stay a table, got %s", luaL_typename(L, -1));
        goto out;
    }
    for (size_t i = 0; i < nlimits_of(call); i++) {
        const char *name;
        const struct limiter_rule *r = limit_rule(call, i, &name);
        if (lua_rawgeti(L, -1, (lua_Integer)i + 1) != LUA_TTABLE) {
            snprintf(err, errlen, "decision.limits[%zu] must stay a table", i + 1);
            goto out;
        }
        lua_getfield(L, -1, "limit");
        uint64_t v = whole(L, UINT64_C(1) << 53);
        if (!v) {
            snprintf(err, errlen,
                     "decision.limits[%zu].limit must be a whole number from 1 up, got %s", i + 1,
                     luaL_typename(L, -1));
            goto out;
        }
        if (r && v != shown_limit(d, r, i))
            d->limit[i] = v;
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "deny");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1)) {
            snprintf(err, errlen,
                     "decision.deny must be a table { status = 403, message = \"...\" }");
            goto out;
        }
        lua_getfield(L, -1, "status");
        uint64_t status = whole(L, 499);
        if (status < 400) {
            snprintf(err, errlen, "decision.deny.status must be a 4xx status");
            goto out;
        }
        lua_getfield(L, -2, "message");
        if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, errlen, "decision.deny.message must be a string");
            goto out;
        }
        d->deny_status = (int)status;
        const char *m = lua_isnil(L, -1) ? "denied by a tenant rule" : lua_tostring(L, -1);
        size_t len = strnlen(m, sizeof(d->deny_message) - 1);
        if (m[len] != '\0') /* cut: never in the middle of a UTF-8 sequence */
            while (len > 0 && ((unsigned char)m[len] & 0xC0) == 0x80)
                len--;
        memcpy(d->deny_message, m, len);
        d->deny_message[len] = '\0';
    }
    rc = 0;
out:
    lua_settop(L, top);
    return rc;
}

/* Calls every hook of the state (the list in the registry) for one request. */
static int
run_protected(lua_State *L)
{
    struct run_ctx *rc = lua_touserdata(L, 1);
    struct hook_state *hs = rc->hs;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_HOOKS);
    int hooks = lua_gettop(L);
    push_request(L, rc->call);
    int req = lua_gettop(L);
    size_t n = lua_rawlen(L, hooks);
    for (size_t i = 1; i <= n; i++) {
        lua_settop(L, req);
        lua_rawgeti(L, hooks, (lua_Integer)i);
        int h = lua_gettop(L);
        lua_getfield(L, h, "name");
        const char *name = lua_tostring(L, -1);
        enum lua_sandbox_status st;
        if (lua_getfield(L, h, "when") == LUA_TFUNCTION) {
            lua_pushvalue(L, req);
            bump(&hs->stats->calls);
            st = timed_call(hs, L, 1, 1, rc->err, sizeof(rc->err));
            if (st != LUA_SANDBOX_OK) {
                hook_failed(hs, rc->t, name, st, rc->err);
                continue;
            }
            if (!lua_toboolean(L, -1))
                continue;
        }
        push_decision(L, rc->call, rc->d);
        int dec = lua_gettop(L);
        if (lua_getfield(L, h, "adjust") != LUA_TFUNCTION) {
            hook_failed(hs, rc->t, name, LUA_SANDBOX_OK, "adjust is not a function");
            continue;
        }
        lua_pushvalue(L, req);
        lua_pushvalue(L, dec);
        bump(&hs->stats->calls);
        st = timed_call(hs, L, 2, 0, rc->err, sizeof(rc->err));
        if (st != LUA_SANDBOX_OK) {
            hook_failed(hs, rc->t, name, st, rc->err);
            continue;
        }
        struct tenant_decision nd = *rc->d;
        if (read_decision(L, dec, rc->call, &nd, rc->err, sizeof(rc->err)) != 0) {
            hook_failed(hs, rc->t, name, LUA_SANDBOX_OK, rc->err);
            continue;
        }
        *rc->d = nd;
        if (nd.deny_status) {
            bump(&hs->stats->denied);
            break;
        }
    }
    return 0;
}

void
tenant_hooks_run(struct tenant_runtime *rt, const struct policy *p, const struct tenant *t,
                 const struct tenant_call *call, struct tenant_decision *d)
{
    memset(d, 0, sizeof(*d));
    if (t->nhooks == 0)
        return;
    struct hook_state once = {0}, *hs = &once;
    if (p->generation == rt->generation && t->index < p->ntenants) {
        if (!rt->states) {
            rt->states = xcalloc(p->ntenants, sizeof(*rt->states));
            rt->nstates = p->ntenants;
        }
        hs = &rt->states[t->index];
    }
    if (!hs->built)
        state_build(hs, t);
    if (!hs->sb) {
        bump(&hs->stats->failures);
    } else {
        struct run_ctx rc = {.hs = hs, .t = t, .call = call, .d = d};
        enum lua_sandbox_status st =
            lua_sandbox_protect(hs->sb, run_protected, &rc, rc.err, sizeof(rc.err));
        if (st != LUA_SANDBOX_OK)
            hook_failed(hs, t, NULL, st, rc.err);
    }
    if (hs == &once)
        lua_sandbox_free(once.sb);
}
