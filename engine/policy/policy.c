/* policy.c - a policy directory compiled into an immutable, refcounted snapshot. */
#define _GNU_SOURCE
#include "policy.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "embedded.h"
#include "http_parse.h"
#include "log.h"
#include "lua_bounded.h"
#include "lua_limits.h"
#include "lua_sandbox.h"
#include "policy_compile.h"
#include "router.h"
#include "template.h"
#include "tenant.h"
#include "util.h"

/* ---- reading the directory --------------------------------------------------------------- */

struct src_file {
    char *path;
    char *tenant; /* NULL for the main set */
    char *text;
    size_t len;
};

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends dir's *.lua files (sorted) to *files. Returns 0, or -1 with a message. */
static int
list_lua(const char *dir, int tenants, struct src_file **files, size_t *nfiles, struct sbuf *errs)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (tenants && errno == ENOENT)
            return 0;
        sbuf_printf(errs, "%s: cannot open policy directory: %s\n", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 4, ".lua") != 0 || de->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            names = xrealloc(names, cap * sizeof(*names));
        }
        names[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_str);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char *path = xasprintf("%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        if (!f) {
            sbuf_printf(errs, "%s: cannot read: %s\n", path, strerror(errno));
            free(path);
            rc = -1;
            continue;
        }
        struct sbuf text = {0};
        char buf[8192];
        size_t r;
        while ((r = fread(buf, 1, sizeof(buf), f)) > 0)
            sbuf_add(&text, buf, r);
        if (!text.p)
            sbuf_add(&text, "", 0);
        fclose(f);
        *files = xrealloc(*files, (*nfiles + 1) * sizeof(**files));
        struct src_file *sf = &(*files)[(*nfiles)++];
        sf->path = path;
        sf->tenant = tenants ? xstrndup(names[i], strlen(names[i]) - 4) : NULL;
        sf->text = text.p;
        sf->len = text.len;
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* ---- the loader's Lua state -------------------------------------------------------------- */

/* Registers the embedded lua/sluice modules in package.preload. */
static int
preload_embedded(lua_State *L, struct sbuf *errs)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (const struct embedded_file *e = embedded_lua; e->module; e++) {
        if (strncmp(e->module, "sluice.", 7) != 0)
            continue;
        char chunk[256];
        snprintf(chunk, sizeof(chunk), "@%s", e->path);
        if (luaL_loadbufferx(L, e->source, e->len, chunk, "t") != LUA_OK) {
            sbuf_printf(errs, "%s\n", lua_tostring(L, -1));
            lua_pop(L, 3);
            return -1;
        }
        lua_setfield(L, -2, e->module);
    }
    lua_pop(L, 2);
    return 0;
}

/* Bytes the loader's state may hold: tenant files run in it too, and must not be able to
 * exhaust the process while they load. Past it, Lua raises a memory error in the file that
 * allocates, which fails that file. */
#define LOADER_MEMORY ((size_t)256 << 20)

static int
loader_panic(lua_State *L)
{
    log_abort("policy loader: %s", lua_tostring(L, -1));
}

/*
 * A new loader state; lua_close() it, then free its limits (lua_limits_of).
 * Its string, table and utf8 functions are the bounded ones (lua_bounded.h)
 * and sluice.sandbox runs files with the limits of sluice.limits, so a
 * tenant file that runs long, in Lua or in C, fails alone.
 */
static lua_State *
loader_state(void)
{
    struct lua_limits *lim = xcalloc(1, sizeof(*lim));
    lua_State *L = lua_limits_newstate(lim, LOADER_MEMORY);
    if (!L) {
        log_abort("out of memory (Lua state)");
    }
    lua_atpanic(L, loader_panic);
    /* A load is a burst of allocation whose live part only grows (the declarations, the
     * normalized set): with the default pause (200%) the collector marks the growing set again
     * every time the heap doubles. 400% marks it half as often; on 10,000 endpoints sluice check
     * takes 15% less CPU for 7% more peak memory. LOADER_MEMORY still caps the state. */
    lua_gc(L, LUA_GCINC, 400, 0, 0);
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},
        {LUA_LOADLIBNAME, luaopen_package},
        {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table},
        {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},
        {LUA_DBLIBNAME, luaopen_debug},
        {LUA_COLIBNAME, luaopen_coroutine},
        {NULL, NULL},
    };
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    lua_bounded_open(L);
    /* Only the embedded modules may be required: no file system search path. */
    lua_getglobal(L, "package");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, lua_limits_open);
    lua_setfield(L, -2, "sluice.limits");
    lua_pop(L, 2);
    return L;
}

/* ---- reading the normalized set ---------------------------------------------------------- */

static void
compile_tiers(struct compile *c)
{
    lua_State *L = c->L;
    lua_getfield(L, -1, "tiers");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    c->p->tiers = xcalloc(n ? n : 1, sizeof(struct policy_tier));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        set_location(c);
        struct policy_tier *t = &c->p->tiers[c->p->ntiers++];
        t->name = field_str(L, "name");
        char *algo = field_str(L, "algorithm");
        if (algo && limiter_algo_parse(algo, &t->rule.algo) != 0)
            cerr(c, "unknown algorithm '%s'", algo);
        free(algo);
        t->rule.limit = (uint64_t)field_int(L, "limit", 1);
        t->rule.window_ms = (uint64_t)field_int(L, "window_ms", 1000);
        t->rule.burst = (uint64_t)field_int(L, "burst", 0);
        t->shadow = field_shadow(c, false);
        t->policy_field = policy_field(t->name ? t->name : "", &t->rule);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* The type of an identity header's values ({ header = ..., integer | uuid | pattern }, at the
 * top) into *chk; a pattern that does not compile is an error of the identity block. */
static void
compile_identity_check(struct compile *c, const char *field, struct identity_check *chk)
{
    lua_State *L = c->L;
    enum identity_type type = IDENTITY_TEXT;
    char *pattern = field_str(L, "pattern");
    if (field_bool(L, "integer"))
        type = IDENTITY_INTEGER;
    else if (field_bool(L, "uuid"))
        type = IDENTITY_UUID;
    else if (pattern)
        type = IDENTITY_PATTERN;
    char err[256];
    if (identity_check_init(chk, type, pattern, err, sizeof(err)) != 0)
        cerr(c, "identity: %s: %s", field, err);
    free(pattern);
}

static void
compile_identity(struct compile *c)
{
    lua_State *L = c->L;
    struct policy_identity *id = &c->p->identity;
    id->default_tier = c->p->ntiers ? 0 : -1;
    lua_getfield(L, -1, "identity");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    set_location(c);
    id->file = xstrdup(c->file ? c->file : "?");
    id->line = c->line;
    compile_jwt(c);
    compile_api_key(c);
    lua_getfield(L, -1, "user");
    if (lua_istable(L, -1)) {
        id->user_header = field_str(L, "header");
        id->user_claim = field_str(L, "claim");
        compile_identity_check(c, "user", &id->user_check);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "tenant");
    if (lua_istable(L, -1)) {
        id->tenant_header = field_str(L, "header");
        id->tenant_claim = field_str(L, "claim");
        compile_identity_check(c, "tenant", &id->tenant_check);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "tier");
    if (lua_istable(L, -1)) {
        id->tier_header = field_str(L, "header");
        id->tier_claim = field_str(L, "claim");
        id->tier_trusted = field_bool(L, "trusted");
        id->tier_sql = field_str(L, "sql");
        id->tier_args = field_templates(
            c, "args", TV_BIT(TV_USER) | TV_BIT(TV_TENANT) | TV_BIT(TV_HEADER) | TV_BIT(TV_IP),
            POLICY_MAX_ARGS, &id->ntier_args);
    }
    lua_pop(L, 1);
    id->tier_ttl_ms = (uint64_t)field_int(L, "tier_ttl_ms", 60000);
    char *dt = field_str(L, "default_tier");
    if (dt) {
        id->default_tier = -1;
        for (size_t i = 0; i < c->p->ntiers; i++)
            if (strcmp(c->p->tiers[i].name, dt) == 0)
                id->default_tier = (int)i;
        if (id->default_tier < 0)
            cerr(c, "default_tier '%s' is not a declared tier", dt);
        free(dt);
    }
    lua_pop(L, 1);
}

/* Wraps a statement so that PostgreSQL returns the rows as one JSON text value. */
static char *
wrap_sql(const char *sql, bool is_write, bool one, bool *returns_rows)
{
    size_t len = strlen(sql);
    while (len > 0 && (sql[len - 1] == ';' || sql[len - 1] == ' ' || sql[len - 1] == '\n' ||
                       sql[len - 1] == '\t' || sql[len - 1] == '\r'))
        len--;
    const char *agg =
        one ? "row_to_json(t)::text" : "coalesce(array_to_json(array_agg(t)), '[]'::json)::text";
    const char *lim = one ? " LIMIT 1" : "";
    *returns_rows = true;
    if (!is_write)
        return xasprintf("SELECT %s FROM (%.*s) t%s", agg, (int)len, sql, lim);
    /* A write returns rows only with RETURNING; otherwise it answers the affected count. */
    const char *r = strcasestr(sql, "returning");
    if (!r || r >= sql + len) {
        *returns_rows = false;
        return xstrndup(sql, len);
    }
    return xasprintf("WITH t AS (%.*s) SELECT %s FROM t%s", (int)len, sql, agg, lim);
}

static int
method_code(const char *m)
{
    static const struct {
        const char *name;
        int code;
    } methods[] = {{"GET", HTTP_GET},        {"HEAD", HTTP_HEAD},   {"POST", HTTP_POST},
                   {"PUT", HTTP_PUT},        {"PATCH", HTTP_PATCH}, {"DELETE", HTTP_DELETE},
                   {"OPTIONS", HTTP_OPTIONS}};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strcmp(m, methods[i].name) == 0)
            return methods[i].code;
    return HTTP_OTHER;
}

/* The warm table at the top: { callers = { {user=, tenant=}, ... } } or { sql = "..." }. */
static struct policy_warm *
compile_warm(lua_State *L)
{
    struct policy_warm *w = xcalloc(1, sizeof(*w));
    w->sql = field_str(L, "sql");
    lua_getfield(L, -1, "callers");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    w->callers = xcalloc(n ? n : 1, sizeof(*w->callers));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        struct policy_warm_caller *wc = &w->callers[w->ncallers++];
        wc->user = field_str(L, "user");
        wc->tenant = field_str(L, "tenant");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return w;
}

static void
warm_free(struct policy_warm *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->ncallers; i++) {
        free(w->callers[i].user);
        free(w->callers[i].tenant);
    }
    free(w->callers);
    free(w->sql);
    free(w);
}

/* Returns a lowercased copy of s (new). */
static char *
lowercase_dup(const char *s)
{
    char *low = xstrdup(s);
    for (char *q = low; *q; q++)
        if (*q >= 'A' && *q <= 'Z')
            *q = (char)(*q - 'A' + 'a');
    return low;
}

static void
compile_upstreams(struct compile *c)
{
    lua_State *L = c->L;
    lua_getfield(L, -1, "upstreams");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    c->p->upstreams = xcalloc(n ? n : 1, sizeof(*c->p->upstreams));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        set_location(c);
        struct policy_upstream *u = &c->p->upstreams[c->p->nupstreams++];
        u->name = field_str(L, "name");
        u->url = field_str(L, "url");
        u->host = field_str(L, "host");
        u->port = (int)field_int(L, "port", 80);
        u->prefix = field_str(L, "prefix");
        u->host_header = field_str(L, "host_header");
        u->timeout_ms = (uint64_t)field_int(L, "timeout_ms", 5000);
        u->connect_timeout_ms = (uint64_t)field_int(L, "connect_timeout_ms", 1000);
        lua_getfield(L, -1, "forward_headers");
        if (lua_istable(L, -1)) {
            size_t nf = lua_rawlen(L, -1);
            u->forward_listed = true;
            u->forward_headers = xcalloc(nf ? nf : 1, sizeof(char *));
            for (size_t j = 1; j <= nf; j++) {
                lua_rawgeti(L, -1, (lua_Integer)j);
                const char *name = lua_tostring(L, -1);
                if (name)
                    u->forward_headers[u->nforward_headers++] = lowercase_dup(name);
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
        u->file = xstrdup(c->file ? c->file : "?");
        u->line = c->line;
        compile_upstream_tls(c, u);
        if (!u->name || !u->host || !u->prefix || !u->host_header)
            cerr(c, "upstream \"%s\": incomplete url", u->name ? u->name : "?");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void
compile_on_change(struct compile *c)
{
    lua_State *L = c->L;
    lua_getfield(L, -1, "on_change");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    c->p->on_change = xcalloc(n ? n : 1, sizeof(*c->p->on_change));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        set_location(c);
        struct policy_on_change *oc = &c->p->on_change[c->p->non_change++];
        oc->table = field_str(L, "table");
        oc->file = xstrdup(c->file ? c->file : "?");
        oc->line = c->line;
        oc->credentials = field_bool(L, "credentials");
        /* No cap: notify.c gathers the tags of a change in arrays that grow. */
        oc->invalidate =
            field_templates(c, "invalidate", TV_BIT(TV_ROW), SIZE_MAX, &oc->ninvalidate);
        lua_getfield(L, -1, "columns");
        size_t nc = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
        oc->columns = xcalloc(nc ? nc : 1, sizeof(char *));
        for (size_t j = 1; j <= nc; j++) {
            lua_rawgeti(L, -1, (lua_Integer)j);
            const char *col = lua_tostring(L, -1);
            if (col)
                oc->columns[oc->ncolumns++] = xstrdup(col);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void
compile_endpoint(struct compile *c, struct policy_endpoint *e)
{
    lua_State *L = c->L;
    set_location(c);
    e->file = xstrdup(c->file ? c->file : "?");
    e->line = c->line;
    e->name = field_str(L, "name");
    char *method = field_str(L, "method");
    char *path = field_str(L, "path");
    e->method = method ? method_code(method) : HTTP_OTHER;
    e->any_method = method && strcmp(method, "*") == 0;
    e->is_write = e->method == HTTP_POST || e->method == HTTP_PUT || e->method == HTTP_PATCH ||
                  e->method == HTTP_DELETE;

    /* The route pattern: path plus pinned query parameters. */
    struct sbuf pattern = {0};
    sbuf_adds(&pattern, path ? path : "/");
    lua_getfield(L, -1, "pins");
    size_t npins = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    for (size_t i = 1; i <= npins; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        char *pn = field_str(L, "name"), *pv = field_str(L, "value");
        sbuf_printf(&pattern, "%c%s=%s", i == 1 ? '?' : '&', pn ? pn : "", pv ? pv : "");
        free(pn);
        free(pv);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    char err[256];
    if (router_add(c->p->router, method ? method : "GET", pattern.p, e, err, sizeof(err)) != 0)
        cerr(c, "endpoint \"%s\": %s", e->name ? e->name : "?", err);
    sbuf_free(&pattern);
    free(method);
    free(path);

    char *source = field_str(L, "source");
    if (source && strcmp(source, "sql") == 0) {
        e->source = SOURCE_SQL;
        e->one = field_bool(L, "one");
        char *sql = field_str(L, "sql");
        e->sql = wrap_sql(sql ? sql : "", e->is_write, e->one, &e->returns_rows);
        free(sql);
        e->args = field_templates(c, "args", TV_ALL_REQUEST, POLICY_MAX_ARGS, &e->nargs);
        e->sql_timeout_ms = (uint64_t)field_int(L, "sql_timeout_ms", 0);
    } else if (source && strcmp(source, "upstream") == 0) {
        e->source = SOURCE_UPSTREAM;
        e->upstream = field_str(L, "upstream");
        for (size_t i = 0; e->upstream && i < c->p->nupstreams; i++)
            if (strcmp(c->p->upstreams[i].name, e->upstream) == 0)
                e->up = &c->p->upstreams[i];
        if (!e->up)
            cerr(c, "endpoint \"%s\": upstream \"%s\" is not declared", e->name ? e->name : "?",
                 e->upstream ? e->upstream : "?");
        /* The endpoint's own deadlines, else its upstream's. */
        e->timeout_ms =
            (uint64_t)field_int(L, "timeout_ms", e->up ? (int64_t)e->up->timeout_ms : 0);
        e->connect_timeout_ms = (uint64_t)field_int(L, "connect_timeout_ms",
                                                    e->up ? (int64_t)e->up->connect_timeout_ms : 0);
    } else {
        e->source = SOURCE_STATIC;
        e->static_body = field_str(L, "body");
        if (!e->static_body)
            e->static_body = xstrdup("");
        e->static_len = strlen(e->static_body);
        e->static_status = (int)field_int(L, "status", 200);
    }
    free(source);
    e->content_type = field_str(L, "content_type");
    if (!e->content_type)
        e->content_type = xstrdup("application/json");

    lua_getfield(L, -1, "cache");
    if (lua_istable(L, -1)) {
        e->cached = true;
        e->shared = field_bool(L, "shared");
        char *anon = field_str(L, "anonymous");
        e->anonymous_share = anon && strcmp(anon, "share") == 0;
        free(anon);
        e->ttl_ms = (uint64_t)field_int(L, "ttl_ms", 0);
        e->ttl_origin = field_bool(L, "ttl_origin");
        e->override = field_bool(L, "override");
        e->keep_ms = (uint64_t)field_int(L, "keep_ms", 0);
        e->cache_max_size = (size_t)field_int(L, "max_size", 0);
        lua_getfield(L, -1, "targeted");
        size_t nt = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
        e->targeted = xcalloc(nt ? nt : 1, sizeof(char *));
        for (size_t i = 1; i <= nt; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            const char *name = lua_tostring(L, -1);
            if (name)
                e->targeted[e->ntargeted++] = lowercase_dup(name);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        char *key = field_str(L, "key");
        if (key)
            e->cache_key = compile_template(c, key, TV_ALL_REQUEST, "cache key");
        else
            cerr(c, "endpoint \"%s\": cache has no key", e->name ? e->name : "?");
        free(key);
        e->tags = field_templates(c, "tags", TV_ALL_REQUEST, POLICY_MAX_TAGS, &e->ntags);
        e->swr_ms = (uint64_t)field_int(L, "swr_ms", 0);
        e->sie_ms = (uint64_t)field_int(L, "sie_ms", 0);
        lua_getfield(L, -1, "warm");
        if (lua_istable(L, -1))
            e->warm = compile_warm(L);
        lua_pop(L, 1);
        e->cache_query_all = field_bool(L, "query_all");
        lua_getfield(L, -1, "query");
        size_t nq = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
        e->cache_query = xcalloc(nq ? nq : 1, sizeof(char *));
        for (size_t i = 1; i <= nq; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            const char *q = lua_tostring(L, -1);
            if (q)
                e->cache_query[e->ncache_query++] = xstrdup(q);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    compile_limits(c, e);
    e->invalidate =
        field_templates(c, "invalidate", TV_ALL_REQUEST, POLICY_MAX_TAGS, &e->ninvalidate);
    policy_fields_compile(c, e);
    compile_compress(c, e);
}

static void
compile_set(struct compile *c)
{
    lua_State *L = c->L;
    struct policy *p = c->p;

    lua_getfield(L, -1, "notes");
    size_t nn = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    struct sbuf notes = {0};
    for (size_t i = 1; i <= nn; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        const char *line = lua_tostring(L, -1);
        if (line)
            sbuf_printf(&notes, "%s\n", line);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    p->notes = notes.p;
    compile_tiers(c);
    compile_identity(c);
    compile_upstreams(c);
    compile_on_change(c);
    lua_getfield(L, -1, "endpoints");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    p->endpoints = xcalloc(n ? n : 1, sizeof(*p->endpoints));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        compile_endpoint(c, &p->endpoints[p->nendpoints++]);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* FNV-1a 64, as a content fingerprint for status output. */
static void
hash_hex(const char *s, size_t len, char out[17])
{
    uint64_t h = util_fnv1a(s, len);
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

void
policy_hash(const struct policy *p, char out[17])
{
    struct sbuf b = {0};

    for (size_t i = 0; i < p->nfiles; i++)
        sbuf_add(&b, p->files[i].hash, strlen(p->files[i].hash));
    hash_hex(b.p ? b.p : "", b.len, out);
    sbuf_free(&b);
}

/* Frees a loader state and its limits. */
static void
loader_close(lua_State *L)
{
    struct lua_limits *lim = lua_limits_of(L);
    lua_close(L);
    free(lim);
}

struct policy_leftover {
    lua_State *L; /* the loader state, to close */
};

/* policy_load; with keep, the loader state goes to *keep rather than being closed here. */
static struct policy *
load(const char *dir, uint64_t generation, const struct policy *prev, char **errors,
     lua_State **keep)
{
    struct sbuf errs = {0};
    struct src_file *files = NULL;
    size_t nfiles = 0;
    struct policy *p = NULL;
    lua_State *L = NULL;

    if (list_lua(dir, 0, &files, &nfiles, &errs) != 0)
        goto out;
    char *tdir = xasprintf("%s/tenants", dir);
    int trc = list_lua(tdir, 1, &files, &nfiles, &errs);
    free(tdir);
    if (trc != 0)
        goto out;
    if (nfiles == 0) {
        sbuf_printf(&errs, "%s: no *.lua policy files\n", dir);
        goto out;
    }

    L = loader_state();
    if (preload_embedded(L, &errs) != 0)
        goto out;
    lua_pushcfunction(L, lua_sandbox_msghandler);
    int mh = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sluice.dsl");
    if (lua_pcall(L, 1, 1, mh) != LUA_OK) {
        sbuf_printf(&errs, "internal error loading the DSL: %s\n", lua_tostring(L, -1));
        goto out;
    }
    lua_getfield(L, -1, "load");
    lua_createtable(L, (int)nfiles, 0);
    for (size_t i = 0; i < nfiles; i++) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, files[i].path);
        lua_setfield(L, -2, "path");
        lua_pushlstring(L, files[i].text, files[i].len);
        lua_setfield(L, -2, "source");
        if (files[i].tenant) {
            lua_pushstring(L, files[i].tenant);
            lua_setfield(L, -2, "tenant");
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    tenant_push_load_options(L, prev);
    if (lua_pcall(L, 2, 2, mh) != LUA_OK) {
        sbuf_printf(&errs, "internal error in the DSL: %s\n", lua_tostring(L, -1));
        goto out;
    }
    if (lua_isnil(L, -2)) {
        size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            sbuf_printf(&errs, "%s\n", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        if (n == 0)
            sbuf_printf(&errs, "%s: the policy set was rejected\n", dir);
        goto out;
    }
    lua_pop(L, 1); /* the nil errors */

    p = xcalloc(1, sizeof(*p));
    p->refs = 1;
    p->generation = generation;
    p->router = router_new();
    char terr[128];
    p->tier_key_user = template_compile("tier:u:{user}", TV_BIT(TV_USER), terr, sizeof(terr));
    p->tier_key_ip = template_compile("tier:ip:{ip}", TV_BIT(TV_IP), terr, sizeof(terr));
    p->files = xcalloc(nfiles, sizeof(*p->files));
    p->nfiles = nfiles;
    for (size_t i = 0; i < nfiles; i++) {
        p->files[i].path = xstrdup(files[i].path);
        hash_hex(files[i].text, files[i].len, p->files[i].hash);
    }
    struct compile c = {.L = L, .p = p, .errs = &errs, .dir = dir};
    compile_set(&c);
    if (!errs.len)
        tenant_compile(L, p);
    if (errs.len) {
        policy_release(p);
        p = NULL;
    }

out:
    if (L && keep)
        *keep = L;
    else if (L)
        loader_close(L);
    for (size_t i = 0; i < nfiles; i++) {
        free(files[i].path);
        free(files[i].tenant);
        free(files[i].text);
    }
    free(files);
    *errors = errs.p;
    if (p && *errors) {
        free(*errors);
        *errors = NULL;
    }
    return p;
}

struct policy *
policy_load(const char *dir, uint64_t generation, const struct policy *prev, char **errors)
{
    return load(dir, generation, prev, errors, NULL);
}

struct policy *
policy_load_then(const char *dir, uint64_t generation, const struct policy *prev, char **errors,
                 struct policy_leftover **rest)
{
    lua_State *L = NULL;
    struct policy *p = load(dir, generation, prev, errors, &L);
    *rest = NULL;
    if (L) {
        *rest = xmalloc(sizeof(**rest));
        (*rest)->L = L;
    }
    return p;
}

void
policy_leftover_free(struct policy_leftover *rest)
{
    if (rest == NULL)
        return;
    loader_close(rest->L);
    free(rest);
}

int
policy_release_if_last(struct policy *p)
{
    if (__atomic_load_n(&p->refs, __ATOMIC_ACQUIRE) != 1)
        return 0;
    policy_release(p);
    return 1;
}

void
policy_ref(struct policy *p)
{
    __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
}

static void
free_templates(struct template **t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        template_free(t[i]);
    free(t);
}

uint64_t policy_frees_;

void
policy_release(struct policy *p)
{
    if (!p || __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    __atomic_add_fetch(&policy_frees_, 1, __ATOMIC_SEQ_CST); /* before its strings are freed */
    for (size_t i = 0; i < p->nendpoints; i++) {
        struct policy_endpoint *e = &p->endpoints[i];
        free(e->name);
        free(e->file);
        free(e->sql);
        free_templates(e->args, e->nargs);
        free(e->upstream);
        free(e->static_body);
        free(e->content_type);
        template_free(e->cache_key);
        free_templates(e->tags, e->ntags);
        policy_limits_free(e->limits, e->nlimits);
        free_templates(e->invalidate, e->ninvalidate);
        policy_compress_free(&e->compress);
        warm_free(e->warm);
        for (size_t j = 0; j < e->ncache_query; j++)
            free(e->cache_query[j]);
        free(e->cache_query);
        for (size_t j = 0; j < e->ntargeted; j++)
            free(e->targeted[j]);
        free(e->targeted);
        policy_fields_free(&e->fields);
    }
    free(p->endpoints);
    for (size_t i = 0; i < p->nupstreams; i++) {
        struct policy_upstream *u = &p->upstreams[i];
        free(u->name);
        free(u->url);
        free(u->host);
        free(u->prefix);
        free(u->host_header);
        for (size_t j = 0; j < u->nforward_headers; j++)
            free(u->forward_headers[j]);
        free(u->forward_headers);
        policy_upstream_tls_free(u);
        free(u->file);
    }
    free(p->upstreams);
    for (size_t i = 0; i < p->non_change; i++) {
        struct policy_on_change *oc = &p->on_change[i];
        free(oc->table);
        free(oc->file);
        free_templates(oc->invalidate, oc->ninvalidate);
        for (size_t j = 0; j < oc->ncolumns; j++)
            free(oc->columns[j]);
        free(oc->columns);
    }
    free(p->on_change);
    for (size_t i = 0; i < p->ntiers; i++) {
        free(p->tiers[i].name);
        free(p->tiers[i].policy_field);
    }
    free(p->tiers);
    free(p->identity.user_header);
    free(p->identity.tenant_header);
    free(p->identity.user_claim);
    free(p->identity.tenant_claim);
    free(p->identity.tier_claim);
    policy_jwt_free(p->identity.jwt);
    policy_api_key_free(p->identity.api_key);
    identity_check_fini(&p->identity.user_check);
    identity_check_fini(&p->identity.tenant_check);
    free(p->identity.tier_header);
    free(p->identity.tier_sql);
    free(p->identity.file);
    free_templates(p->identity.tier_args, p->identity.ntier_args);
    for (size_t i = 0; i < p->nfiles; i++)
        free(p->files[i].path);
    free(p->files);
    if (p->router)
        router_free(p->router);
    template_free(p->tier_key_user);
    template_free(p->tier_key_ip);
    tenant_free_all(p->tenants, p->ntenants);
    free(p->tenant_errors);
    free(p->notes);
    free(p);
}
