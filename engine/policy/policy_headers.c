/* policy_headers.c - an endpoint's CORS and header rules, compiled once per snapshot. */
#define _GNU_SOURCE
#include "policy_headers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "policy.h"
#include "policy_compile.h"
#include "template.h"
#include "util.h"

bool
policy_cors_allows(const struct policy_cors *c, const char *origin, size_t len)
{
    if (c->any_origin)
        return true;
    for (size_t i = 0; i < c->norigins; i++)
        if (c->origin_lens[i] == len && strncasecmp(c->origins[i], origin, len) == 0)
            return true;
    return false;
}

bool
policy_cors_method(const struct policy_cors *c, const char *method, size_t len)
{
    if (!c->methods)
        return true;
    for (size_t i = 0; i < c->nmethods; i++)
        if (strlen(c->methods[i]) == len && memcmp(c->methods[i], method, len) == 0)
            return true;
    return false;
}

/* Whether line[0..len) is the field `name` (nl bytes) ignoring case. */
static bool
line_named(const char *line, size_t len, const char *name, size_t nl)
{
    return len > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0;
}

bool
policy_rules_name(const struct policy_header_rules *r, const char *line, size_t len)
{
    if (!r)
        return false;
    for (size_t i = 0; i < r->n; i++)
        if (line_named(line, len, r->rules[i].name, r->rules[i].name_len))
            return true;
    return false;
}

bool
policy_line_is_cors(const char *line, size_t len)
{
    return len > 15 && strncasecmp(line, "access-control-", 15) == 0;
}

/* The strings of the list field `name` of the table at the top (new array of new strings,
 * *n of them), or NULL when it is absent. */
static char **
field_list(lua_State *L, const char *name, size_t *n)
{
    char **out = NULL;
    *n = 0;
    lua_getfield(L, -1, name);
    if (lua_istable(L, -1)) {
        size_t len = lua_rawlen(L, -1);
        out = xcalloc(len ? len : 1, sizeof(*out));
        for (size_t i = 1; i <= len; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            const char *s = lua_tostring(L, -1);
            if (s)
                out[(*n)++] = xstrdup(s);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return out;
}

/* "Name: a, b, c\r\n" of list[0..n) into b; nothing when n is 0. */
static void
list_line(struct sbuf *b, const char *name, char **list, size_t n)
{
    if (!n)
        return;
    sbuf_printf(b, "%s: ", name);
    for (size_t i = 0; i < n; i++)
        sbuf_printf(b, "%s%s", i ? ", " : "", list[i]);
    sbuf_adds(b, "\r\n");
}

/* The cors table at the top: the normalized form sluice.headers writes. */
static struct policy_cors *
compile_cors(lua_State *L)
{
    struct policy_cors *c = xcalloc(1, sizeof(*c));
    c->any_origin = field_bool(L, "any_origin");
    c->credentials = field_bool(L, "credentials");
    c->headers_any = field_bool(L, "headers_any");
    c->origins = field_list(L, "origins", &c->norigins);
    c->origin_lens = xcalloc(c->norigins ? c->norigins : 1, sizeof(size_t));
    for (size_t i = 0; i < c->norigins; i++)
        c->origin_lens[i] = strlen(c->origins[i]);
    c->methods = field_list(L, "methods", &c->nmethods);
    c->vary_origin = !c->any_origin;
    size_t nheaders, nexpose;
    char **headers = field_list(L, "headers", &nheaders);
    char **expose = field_list(L, "expose", &nexpose);
    int64_t max_age = field_int(L, "max_age_s", -1);

    struct sbuf pre = {0}, act = {0};
    list_line(&pre, "Access-Control-Allow-Methods", c->methods, c->nmethods);
    list_line(&pre, "Access-Control-Allow-Headers", headers, nheaders);
    if (max_age >= 0)
        sbuf_printf(&pre, "Access-Control-Max-Age: %lld\r\n", (long long)max_age);
    if (c->credentials) {
        sbuf_adds(&pre, "Access-Control-Allow-Credentials: true\r\n");
        sbuf_adds(&act, "Access-Control-Allow-Credentials: true\r\n");
    }
    /* Fetch standard, CORS protocol and HTTP caches: a preflight's answer depends on all three. */
    sbuf_adds(&pre,
              "Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n");
    list_line(&act, "Access-Control-Expose-Headers", expose, nexpose);
    c->preflight = pre.p ? pre.p : xstrdup("");
    c->preflight_len = pre.len;
    c->actual = act.p ? act.p : xstrdup("");
    c->actual_len = act.len;
    for (size_t i = 0; i < nheaders; i++)
        free(headers[i]);
    free(headers);
    for (size_t i = 0; i < nexpose; i++)
        free(expose[i]);
    free(expose);
    return c;
}

/* What a header value may use: no query (a malformed one refuses what expands it) and no body
 * (it may be streamed to the upstream unread). */
#define HEADER_VALUE_VARS (TV_ALL_REQUEST & ~(TV_BIT(TV_QUERY) | TV_BIT(TV_BODY)))

/* The rules at field `name` of the table at the top, or NULL when it has none. */
static struct policy_header_rules *
compile_rules(struct compile *c, const char *name)
{
    lua_State *L = c->L;
    struct policy_header_rules *r = NULL;
    lua_getfield(L, -1, name);
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    if (n) {
        r = xcalloc(1, sizeof(*r));
        r->rules = xcalloc(n, sizeof(*r->rules));
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            struct policy_header_rule *rule = &r->rules[r->n];
            rule->name = field_str(L, "name");
            char *value = field_str(L, "value");
            if (rule->name) {
                rule->name_len = strlen(rule->name);
                if (value)
                    rule->value = compile_template(c, value, HEADER_VALUE_VARS, name);
                r->n++;
            }
            free(value);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return r;
}

void
policy_fields_compile(struct compile *c, struct policy_endpoint *e)
{
    lua_State *L = c->L;
    lua_getfield(L, -1, "cors");
    if (lua_istable(L, -1))
        e->fields.cors = compile_cors(L);
    lua_pop(L, 1);
    e->fields.request = compile_rules(c, "request_headers");
    e->fields.response = compile_rules(c, "response_headers");
}

static void
rules_free(struct policy_header_rules *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++) {
        free(r->rules[i].name);
        template_free(r->rules[i].value);
    }
    free(r->rules);
    free(r);
}

void
policy_fields_free(struct policy_fields *f)
{
    struct policy_cors *c = f->cors;
    if (c) {
        for (size_t i = 0; i < c->norigins; i++)
            free(c->origins[i]);
        free(c->origins);
        free(c->origin_lens);
        for (size_t i = 0; i < c->nmethods; i++)
            free(c->methods[i]);
        free(c->methods);
        free(c->preflight);
        free(c->actual);
        free(c);
    }
    rules_free(f->request);
    rules_free(f->response);
    f->cors = NULL;
    f->request = NULL;
    f->response = NULL;
}
