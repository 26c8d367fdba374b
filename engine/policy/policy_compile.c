/* policy_compile.c - reading the normalized set's Lua tables into a snapshot; for policy/ only. */
#define _GNU_SOURCE
#include "policy_compile.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "template.h"
#include "util.h"

void
cerr(struct compile *c, const char *fmt, ...)
{
    va_list ap;
    char msg[512];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sbuf_printf(c->errs, "%s:%d: %s\n", c->file ? c->file : "?", c->line, msg);
}

char *
field_lstr(lua_State *L, const char *name, size_t *len)
{
    lua_getfield(L, -1, name);
    char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *v = lua_tolstring(L, -1, &n);
        s = xstrndup(v, n);
        if (len)
            *len = n;
    }
    lua_pop(L, 1);
    return s;
}

char *
field_str(lua_State *L, const char *name)
{
    return field_lstr(L, name, NULL);
}

int64_t
field_int(lua_State *L, const char *name, int64_t dflt)
{
    lua_getfield(L, -1, name);
    int64_t v = dflt;
    if (lua_isinteger(L, -1))
        v = lua_tointeger(L, -1);
    else if (lua_type(L, -1) == LUA_TNUMBER)
        v = (int64_t)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

bool
field_bool(lua_State *L, const char *name)
{
    lua_getfield(L, -1, name);
    bool v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

bool
field_shadow(struct compile *c, bool dflt)
{
    char *mode = field_str(c->L, "mode");
    bool shadow = dflt;
    if (mode && strcmp(mode, "shadow") == 0)
        shadow = true;
    else if (mode && strcmp(mode, "enforce") == 0)
        shadow = false;
    else if (mode)
        cerr(c, "unknown mode '%s' (use \"enforce\" or \"shadow\")", mode);
    free(mode);
    return shadow;
}

void
set_location(struct compile *c)
{
    lua_getfield(c->L, -1, "file");
    c->file = lua_tostring(c->L, -1); /* kept alive by the set table */
    lua_pop(c->L, 1);
    c->line = (int)field_int(c->L, "line", 0);
}

struct template *
compile_template(struct compile *c, const char *src, unsigned allowed, const char *what)
{
    char err[256];
    struct template *t = template_compile(src, allowed, err, sizeof(err));
    if (!t)
        cerr(c, "%s \"%s\": %s", what, src, err);
    return t;
}

struct template **
field_templates(struct compile *c, const char *name, unsigned allowed, size_t max, size_t *n)
{
    lua_State *L = c->L;
    struct template **out = NULL;
    *n = 0;
    lua_getfield(L, -1, name);
    if (lua_istable(L, -1)) {
        size_t len = lua_rawlen(L, -1);
        if (len > max)
            cerr(c, "%s: lists %zu templates; at most %zu", name, len, max);
        out = xcalloc(len ? len : 1, sizeof(*out));
        for (size_t i = 1; i <= len; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            const char *s = lua_tostring(L, -1);
            struct template *t = s ? compile_template(c, s, allowed, name) : NULL;
            if (t)
                out[(*n)++] = t;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return out;
}

char *
policy_field(const char *name, const struct limiter_rule *r)
{
    return xasprintf("\"%s\";q=%llu;w=%llu", name, (unsigned long long)r->limit,
                     (unsigned long long)((r->window_ms + 999) / 1000));
}

int
compile_limits(struct compile *c, struct policy_endpoint *e)
{
    lua_State *L = c->L;
    size_t before = c->errs->len;
    lua_getfield(L, -1, "limits");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    if (n > POLICY_MAX_LIMITS)
        cerr(c, "endpoint \"%s\": limit: lists %zu limits; an endpoint may have at most %d",
             e->name ? e->name : "?", n, POLICY_MAX_LIMITS);
    e->limits = xcalloc(n ? n : 1, sizeof(*e->limits));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        struct policy_limit *l = &e->limits[e->nlimits++];
        l->cost = (uint32_t)field_int(L, "cost", 1);
        if (field_bool(L, "tier")) {
            l->is_tier = true;
            if (c->p->ntiers == 0)
                cerr(c, "limit \"tier\" needs at least one tier declared");
        } else {
            l->name = field_str(L, "name");
            if (!l->name)
                l->name = xasprintf("limit%zu", i);
            char *algo = field_str(L, "algorithm");
            if (algo && limiter_algo_parse(algo, &l->rule.algo) != 0)
                cerr(c, "unknown algorithm '%s'", algo);
            free(algo);
            l->rule.limit = (uint64_t)field_int(L, "limit", 1);
            l->rule.window_ms = (uint64_t)field_int(L, "window_ms", 1000);
            l->rule.burst = (uint64_t)field_int(L, "burst", 0);
            char *fail = field_str(L, "fail");
            l->fail_closed = fail && strcmp(fail, "closed") == 0;
            free(fail);
            l->shadow = field_shadow(c, false);
            char *key = field_str(L, "key");
            char *anon = field_str(L, "anonymous");
            l->anonymous_share = anon && strcmp(anon, "share") == 0;
            free(anon);
            if (key)
                l->key = compile_template(c, key, TV_ALL_REQUEST, "limit key");
            else
                cerr(c, "limit '%s' has no key", l->name);
            if (l->key && (template_uses(l->key) & TV_CALLER) && !l->anonymous_share) {
                /* Callers who lack what the key names are counted by their address. */
                char *by_ip = xasprintf("%s:ip:{ip}", key);
                l->key_ip = compile_template(c, by_ip, TV_ALL_REQUEST, "limit key");
                free(by_ip);
            }
            free(key);
            l->policy_field = policy_field(l->name, &l->rule);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return c->errs->len == before ? 0 : -1;
}

void
policy_limits_free(struct policy_limit *limits, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        free(limits[j].name);
        template_free(limits[j].key);
        template_free(limits[j].key_ip);
        free(limits[j].policy_field);
    }
    free(limits);
}

const struct policy_tier *
policy_tier_find(const struct policy *p, const char *name, size_t len)
{
    for (size_t i = 0; i < p->ntiers; i++)
        if (strlen(p->tiers[i].name) == len && memcmp(p->tiers[i].name, name, len) == 0)
            return &p->tiers[i];
    return NULL;
}

/* ---- compress ---------------------------------------------------------------------------- */

void
compile_compress(struct compile *c, struct policy_endpoint *e)
{
    lua_State *L = c->L;

    lua_getfield(L, -1, "compress");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    struct policy_compress *pc = &e->compress;
    pc->min_size = (uint32_t)field_int(L, "min_size", 1024);
    lua_getfield(L, -1, "codings");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        int cd = name ? codec_from_name(name, len) : -1;
        if (cd < 0)
            cerr(c, "endpoint \"%s\": compress: unknown coding '%s'", e->name ? e->name : "?",
                 name ? name : "?");
        else
            pc->codings |= CODEC_BIT(cd);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "types");
    if (lua_istable(L, -1)) {
        size_t nt = lua_rawlen(L, -1);
        pc->types = xcalloc(nt ? nt : 1, sizeof(char *));
        for (size_t i = 1; i <= nt; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            const char *t = lua_tostring(L, -1);
            if (t) {
                char *d = xstrdup(t);
                for (char *q = d; *q; q++)
                    *q = (char)tolower((unsigned char)*q);
                pc->types[pc->ntypes++] = d;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 2);
}

void
policy_compress_free(struct policy_compress *pc)
{
    for (size_t i = 0; i < pc->ntypes; i++)
        free(pc->types[i]);
    free(pc->types);
    *pc = (struct policy_compress){0};
}

/* Whether the media type t[0..len) (lowercase) matches pattern p: "a/b" exactly, or "a/" and
 * a star (any subtype), or "a/", a star and "+s" (any subtype ending in "+s"). */
static bool
type_matches(const char *p, const char *t, size_t len)
{
    const char *star = strstr(p, "/*");
    if (!star)
        return strlen(p) == len && memcmp(p, t, len) == 0;
    size_t plen = (size_t)(star - p) + 1; /* "a/" */
    if (len <= plen || memcmp(p, t, plen) != 0)
        return false;
    const char *suffix = star + 2; /* "" or "+s" */
    size_t slen = strlen(suffix);
    return slen == 0 || (len - plen > slen && memcmp(t + len - slen, suffix, slen) == 0);
}

bool
policy_compress_applies(const struct policy_compress *pc, const char *content_type, size_t body_len)
{
    static const char *const dflt[] = {POLICY_COMPRESS_TYPES};
    char t[128];
    size_t len = 0;

    if (!pc->codings || body_len < pc->min_size || !content_type)
        return false;
    while (content_type[len] && content_type[len] != ';' && len < sizeof(t) - 1) {
        t[len] = (char)tolower((unsigned char)content_type[len]);
        len++;
    }
    while (len && (t[len - 1] == ' ' || t[len - 1] == '\t'))
        len--;
    const char *const *types = pc->types ? (const char *const *)pc->types : dflt;
    size_t n = pc->types ? pc->ntypes : sizeof(dflt) / sizeof(dflt[0]);
    for (size_t i = 0; i < n; i++)
        if (type_matches(types[i], t, len))
            return true;
    return false;
}
