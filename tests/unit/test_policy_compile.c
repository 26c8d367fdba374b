/* test_policy_compile.c - unit tests of the compiler's own caps on limits, tags and arguments. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedded.h"
#include "policy.h"
#include "policy_compile.h"
#include "template.h"
#include "util.h"

/*
 * Pushes a normalized endpoint table as sluice.validate would build it, with
 * n limits (a1..aN) and n templates in each of tags, invalidate and args.
 * The compiler sees it without the checks of sluice check before it.
 */
static void
push_endpoint(lua_State *L, int n)
{
    char code[512];
    snprintf(code, sizeof(code),
             "local e = { name = 'GET /x', limits = {}, tags = {}, invalidate = {}, args = {} }\n"
             "for i = 1, %d do\n"
             "  e.limits[i] = { name = 'a' .. i, key = 'a' .. i, limit = 10, window_ms = 60000 }\n"
             "  e.tags[i] = 't' .. i\n"
             "  e.invalidate[i] = 'i' .. i\n"
             "  e.args[i] = '{query.q' .. i .. '}'\n"
             "end\n"
             "return e\n",
             n);
    assert_int_equal(luaL_dostring(L, code), LUA_OK);
}

struct fixture {
    lua_State *L;
    struct policy p;
    struct sbuf errs;
    struct compile c;
};

static struct fixture *
fixture_new(int n)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->L = luaL_newstate();
    assert_non_null(f->L);
    push_endpoint(f->L, n);
    f->c = (struct compile){.L = f->L, .p = &f->p, .errs = &f->errs, .file = "t.lua", .line = 3};
    return f;
}

static void
fixture_free(struct fixture *f)
{
    lua_close(f->L);
    sbuf_free(&f->errs);
    free(f);
}

static void
free_templates(struct template **t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        template_free(t[i]);
    free(t);
}

static void
test_limits(void **state)
{
    struct fixture *f = fixture_new(POLICY_MAX_LIMITS);
    struct policy_endpoint e = {.name = "GET /x"};
    assert_int_equal(compile_limits(&f->c, &e), 0);
    assert_int_equal(e.nlimits, POLICY_MAX_LIMITS);
    assert_null(f->errs.p);
    policy_limits_free(e.limits, e.nlimits);
    fixture_free(f);

    f = fixture_new(POLICY_MAX_LIMITS + 1);
    e = (struct policy_endpoint){.name = "GET /x"};
    assert_int_equal(compile_limits(&f->c, &e), -1);
    assert_string_equal(f->errs.p, "t.lua:3: endpoint \"GET /x\": limit: lists 9 limits; an "
                                   "endpoint may have at most 8\n");
    policy_limits_free(e.limits, e.nlimits);
    fixture_free(f);
}

static void
test_templates(void **state)
{
    static const struct {
        const char *field;
        size_t max;
    } caps[] = {
        {"tags", POLICY_MAX_TAGS}, {"invalidate", POLICY_MAX_TAGS}, {"args", POLICY_MAX_ARGS}};
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        struct fixture *f = fixture_new((int)caps[i].max);
        size_t n;
        struct template **t =
            field_templates(&f->c, caps[i].field, TV_ALL_REQUEST, caps[i].max, &n);
        assert_int_equal(n, caps[i].max);
        assert_null(f->errs.p);
        free_templates(t, n);
        fixture_free(f);

        f = fixture_new((int)caps[i].max + 1);
        t = field_templates(&f->c, caps[i].field, TV_ALL_REQUEST, caps[i].max, &n);
        char want[128];
        snprintf(want, sizeof(want), "t.lua:3: %s: lists %zu templates; at most %zu\n",
                 caps[i].field, caps[i].max + 1, caps[i].max);
        assert_string_equal(f->errs.p, want);
        free_templates(t, n);
        fixture_free(f);
    }
}

/* A limit's mode: "shadow" sets its flag, "enforce" and no mode leave it clear, another is an
 * error at the declaration's line. */
static void
test_limit_modes(void **state)
{
    struct fixture *f = fixture_new(0);
    lua_pop(f->L, 1);
    assert_int_equal(luaL_dostring(f->L, "return { name = 'GET /x', limits = {"
                                         "{ name = 'a', key = 'a', limit = 1, window_ms = 1000,"
                                         "  mode = 'shadow' },"
                                         "{ name = 'b', key = 'b', limit = 1, window_ms = 1000,"
                                         "  mode = 'enforce' },"
                                         "{ name = 'c', key = 'c', limit = 1, window_ms = 1000 },"
                                         "{ tier = true } } }"),
                     LUA_OK);
    f->p.ntiers = 1; /* "tier" needs a tier: its mode is the tier's own */
    struct policy_endpoint e = {.name = "GET /x"};
    assert_int_equal(compile_limits(&f->c, &e), 0);
    assert_int_equal(e.nlimits, 4);
    assert_true(e.limits[0].shadow);
    assert_false(e.limits[1].shadow);
    assert_false(e.limits[2].shadow);
    assert_false(e.limits[3].shadow);
    policy_limits_free(e.limits, e.nlimits);
    fixture_free(f);

    f = fixture_new(0);
    lua_pop(f->L, 1);
    assert_int_equal(luaL_dostring(f->L, "return { name = 'GET /x', limits = {"
                                         "{ name = 'a', key = 'a', limit = 1, window_ms = 1000,"
                                         "  mode = 'dry' } } }"),
                     LUA_OK);
    e = (struct policy_endpoint){.name = "GET /x"};
    assert_int_equal(compile_limits(&f->c, &e), -1);
    assert_string_equal(f->errs.p, "t.lua:3: unknown mode 'dry' (use \"enforce\" or \"shadow\")\n");
    policy_limits_free(e.limits, e.nlimits);
    fixture_free(f);
}

/* sluice check (validate.lua) refuses at the same numbers as the compiler. */
static void
test_same_caps_as_validate(void **state)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (const struct embedded_file *e = embedded_lua; e->module; e++) {
        if (strncmp(e->module, "sluice.", 7) != 0)
            continue;
        assert_int_equal(luaL_loadbufferx(L, e->source, e->len, e->path, "t"), LUA_OK);
        lua_setfield(L, -2, e->module);
    }
    lua_pop(L, 2);
    assert_int_equal(luaL_dostring(L, "return (require 'sluice.validate')"), LUA_OK);
    static const struct {
        const char *name;
        lua_Integer value;
    } caps[] = {{"MAX_LIMITS", POLICY_MAX_LIMITS},
                {"MAX_TAGS", POLICY_MAX_TAGS},
                {"MAX_ARGS", POLICY_MAX_ARGS}};
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        lua_getfield(L, -1, caps[i].name);
        assert_true(lua_isinteger(L, -1));
        assert_int_equal(lua_tointeger(L, -1), caps[i].value);
        lua_pop(L, 1);
    }
    lua_close(L);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_templates),
        cmocka_unit_test(test_limit_modes),
        cmocka_unit_test(test_same_caps_as_validate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
