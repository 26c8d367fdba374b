/* test_lua_sandbox.c - unit tests of the hook sandbox: instruction and time budgets, work inside C
 * functions, memory cap, and escapes that fail. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lua_sandbox.h"

#define CAP (8u << 20)
#define BUDGET 100000
#define MS 20
#define US (MS * 1000)

/* One chunk run in a sandbox, in an environment kept in the registry across runs. */
struct run {
    const char *code;
    size_t len;          /* 0: strlen(code) */
    int give_metatables; /* put the real getmetatable and setmetatable in the environment */
    enum lua_sandbox_status st;
    char err[2048];
    char result[256]; /* tostring of the first result */
};

static int
run_protected(lua_State *L)
{
    struct run *r = lua_touserdata(L, 1);
    if (lua_getfield(L, LUA_REGISTRYINDEX, "test.env") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_sandbox_push_env(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, "test.env");
    }
    int env = lua_gettop(L);
    if (r->give_metatables) {
        lua_pushliteral(L, "getmetatable");
        lua_getglobal(L, "getmetatable");
        lua_rawset(L, env);
        lua_pushliteral(L, "setmetatable");
        lua_getglobal(L, "setmetatable");
        lua_rawset(L, env);
    }
    r->st = lua_sandbox_load(L, r->code, r->len ? r->len : strlen(r->code), "=t", env, r->err,
                             sizeof(r->err));
    if (r->st != LUA_SANDBOX_OK)
        return 0;
    r->st = lua_sandbox_call(L, 0, 1, r->err, sizeof(r->err));
    if (r->st == LUA_SANDBOX_OK)
        snprintf(r->result, sizeof(r->result), "%s", luaL_tolstring(L, -1, NULL));
    return 0;
}

static struct run
run(struct lua_sandbox *sb, const char *code)
{
    struct run r = {.code = code};
    char err[256];
    enum lua_sandbox_status st = lua_sandbox_protect(sb, run_protected, &r, err, sizeof(err));
    assert_int_equal(st, LUA_SANDBOX_OK);
    return r;
}

/* The chunk must fail with status st and a message containing `want`. */
static void
fails(struct lua_sandbox *sb, const char *code, enum lua_sandbox_status st, const char *want)
{
    struct run r = run(sb, code);
    if (r.st != st || !strstr(r.err, want))
        fail_msg("%s\n  status %d (want %d), message: %s\n  want a message with: %s", code, r.st,
                 st, r.err, want);
}

/* The chunk must succeed, its first result printing as `want`. */
static void
gives(struct lua_sandbox *sb, const char *code, const char *want)
{
    struct run r = run(sb, code);
    if (r.st != LUA_SANDBOX_OK)
        fail_msg("%s\n  failed (%d): %s", code, r.st, r.err);
    assert_string_equal(r.result, want);
}

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
setup(void **state)
{
    *state = lua_sandbox_new(CAP, BUDGET, US);
    return *state ? 0 : -1;
}

static int
teardown(void **state)
{
    lua_sandbox_free(*state);
    return 0;
}

/* ---- the instruction budget -------------------------------------------------------------- */

static void
test_runaway_loop(void **state)
{
    struct lua_sandbox *sb = *state;
    double t0 = now_s();
    fails(sb, "while true do end", LUA_SANDBOX_BUDGET, "t:1: instruction budget exceeded");
    assert_true(now_s() - t0 < 1.0);
    gives(sb, "return 1 + 1", "2"); /* the state is still usable */
}

static void
test_runaway_inside_pcall(void **state)
{
    struct lua_sandbox *sb = *state;
    fails(sb, "pcall(function() while true do end end)\nreturn 'escaped'", LUA_SANDBOX_BUDGET,
          "instruction budget exceeded");
    fails(sb, "local ok, e = pcall(function() while true do end end)\nwhile true do end",
          LUA_SANDBOX_BUDGET, "instruction budget exceeded");
    fails(sb, "while true do pcall(function() while true do end end) end", LUA_SANDBOX_BUDGET,
          "instruction budget exceeded");
    fails(sb, "local function f() return pcall(f) end while true do pcall(f) end",
          LUA_SANDBOX_BUDGET, "instruction budget exceeded");
    fails(sb, "for i = 1, 10 do pcall(error, 'x') end while true do end", LUA_SANDBOX_BUDGET,
          "instruction budget exceeded");
    fails(sb, "table.sort({ 3, 2, 1 }, function() while true do end end)", LUA_SANDBOX_BUDGET,
          "instruction budget exceeded");
    fails(sb, "local function f() return f() end return f()", LUA_SANDBOX_BUDGET,
          "instruction budget exceeded");
    gives(sb, "return 'alive'", "alive");
}

static void
test_budget_is_per_call(void **state)
{
    struct lua_sandbox *sb = *state;
    /* About 40k instructions each: many calls in a row never add up to a trip. */
    for (int i = 0; i < 20; i++)
        gives(sb, "local n = 0 for i = 1, 10000 do n = n + i end return n", "50005000");
    lua_sandbox_set_budget(sb, 1000);
    fails(sb, "local n = 0 for i = 1, 10000 do n = n + i end return n", LUA_SANDBOX_BUDGET,
          "instruction budget exceeded");
    lua_sandbox_set_budget(sb, BUDGET);
}

/* ---- the time budget --------------------------------------------------------------------- */

/* Runs code that must stop at the time budget MS: returns the ms it took. */
static double
stops_in_time(struct lua_sandbox *sb, const char *code)
{
    double t0 = now_s();
    fails(sb, code, LUA_SANDBOX_TIME, "time budget exceeded (20 ms)");
    double ms = (now_s() - t0) * 1e3;
    const char *last = strrchr(code, '\n');
    printf("  %6.1f ms  %.70s\n", ms, last ? last + 1 : code);
    assert_true(ms >= MS);
    assert_true(ms < 10 * MS); /* one C call past the deadline at most, even under sanitizers */
    return ms;
}

/*
 * Work inside C functions: s:upper() of a 2 MiB string takes a millisecond and 4 instructions,
 * so the instruction budget alone let a hook run 25,000 of them (30 s). The allocator and the
 * functions that work without allocating read the clock, and the call stops at its time budget,
 * its own pcall or not.
 */
static void
test_spin_in_c_stops_at_the_time_budget(void **state)
{
    struct lua_sandbox *sb = *state;
    static const char *const spins[] = {
        "local s = string.rep('x', 1 << 20) s = s .. s\nfor i = 1, 1e9 do s:upper() end",
        "local s = string.rep('x', 1 << 20) s = s .. s\nfor i = 1, 1e9 do pcall(s.upper, s) end",
        "local s = string.rep('x', 1 << 20) s = s .. s\n"
        "while true do pcall(function() for i = 1, 1e9 do s:lower() end end) end",
        "local s = string.rep('a', 1 << 20) local n = string.rep('a', 1 << 19) .. 'b'\n"
        "for i = 1, 1e9 do s:find(n, 1, true) end",
        "local s = string.rep('\\u{e9}', 1 << 19)\nfor i = 1, 1e9 do utf8.len(s) end",
        "local s = string.rep('\\u{e9}', 1 << 19)\nfor i = 1, 1e9 do utf8.offset(s, 1 << 18) end",
        "local s = string.rep('1', 1 << 20)\nfor i = 1, 1e9 do tonumber(s) end",
        "local t = { utf8.codepoint(string.rep('a', 100000), 1, -1) }\n"
        "for i = 1, 1e9 do table.insert(t, 1, 0) table.remove(t, 1) end",
        "local t = { utf8.codepoint(string.rep('a', 100000), 1, -1) }\n"
        "for i = 1, 1e9 do table.sort(t) end",
        "return table.move({}, 1, 1e12, 2)",
        "local s = string.rep('x', 1 << 20) local t = {}\n"
        "for i = 1, 1e9 do t[i % 2] = s .. i end",
    };
    for (size_t i = 0; i < sizeof(spins) / sizeof(spins[0]); i++)
        stops_in_time(sb, spins[i]);
    gives(sb, "return ('alive'):upper()", "ALIVE");
    fails(sb, "return table.insert({}, 5, 1)", LUA_SANDBOX_ERROR,
          "t:1: bad argument #2 to 'insert' (position out of bounds)");
    fails(sb, "return utf8.len('abc', 9)", LUA_SANDBOX_ERROR,
          "t:1: bad argument #2 to 'len' (initial position out of bounds)");
    fails(sb, "return tonumber('z', 99)", LUA_SANDBOX_ERROR,
          "t:1: bad argument #2 to 'tonumber' (base out of range)");
    gives(sb, "local t = { 3, 1, 2 } table.sort(t) return table.concat(t, ',')", "1,2,3");
    gives(sb, "return table.concat(table.move({ 1, 2, 3 }, 1, 3, 2), ',')", "1,1,2,3");
}

/* Backtracking patterns stop at their step budget at once; in a loop, at the time budget. */
static void
test_backtracking_patterns_stop(void **state)
{
    struct lua_sandbox *sb = *state;
    static const char *const attacks[] = {
        "return (string.rep('a', 600)):find('.-.-.-b')", /* Lua's own: 29 s */
        "local q = string.rep('a,', 300) return q:match('^(.-),(.-),(.-),(.-)=')", /* 5 s */
        "return (string.rep('a', 5000)):gsub('a*a*a*b', '')",
        "for w in (string.rep('a,', 300)):gmatch('(.-),(.-),(.-),(.-)=') do end",
    };
    for (size_t i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++) {
        double t0 = now_s();
        fails(sb, attacks[i], LUA_SANDBOX_ERROR, "pattern matching exceeded its step budget");
        assert_true(now_s() - t0 < 0.05);
    }
    stops_in_time(sb, "local q = string.rep('a,', 300)\n"
                      "for i = 1, 1e9 do pcall(q.match, q, '^(.-),(.-),(.-),(.-)=') end");
    gives(sb, "return ('a=1&b=2'):gsub('(%w+)=(%w+)', '%2=%1')", "1=a&2=b");
}

static void
test_rep_is_capped(void **state)
{
    struct lua_sandbox *sb = *state;
    /* The cap on size is under test here, not the clock: a loaded machine may take 20 ms to
     * write the 1 MiB the cap allows (and five times that under ASan). */
    lua_sandbox_set_time(sb, 5000000);
    fails(sb, "return string.rep('x', 1e9)", LUA_SANDBOX_ERROR,
          "resulting string too large (1000000000 bytes; string.rep makes at most 1048576)");
    fails(sb, "return ('ab'):rep(1 << 19, ',')", LUA_SANDBOX_ERROR, "resulting string too large");
    gives(sb, "return #string.rep('x', 1 << 20)", "1048576");
    gives(sb, "return ('ab'):rep(3, ',')", "ab,ab,ab");
    /* Nothing, many times over: Lua's own rep loops 2^62 times, which the time budget
     * would stop with an error. */
    lua_sandbox_set_time(sb, 200000);
    gives(sb, "return #string.rep('', 1 << 62) + #string.rep('', 1 << 62, '')", "0");
}

/* Each call has its own time budget. */
static void
test_time_budget_is_per_call(void **state)
{
    struct lua_sandbox *sb = *state;
    static const char count[] = "local n = 0 for i = 1, 100000 do n = n + 1 end return n";
    lua_sandbox_set_budget(sb, 2000000000);
    lua_sandbox_set_time(sb, 5000);
    double t0 = now_s();
    fails(sb, "while true do end", LUA_SANDBOX_TIME, "t:1: time budget exceeded (5 ms)");
    double ms = (now_s() - t0) * 1e3;
    assert_true(ms >= 5 && ms < 100);
    /* Calls that each take at most a quarter of the budget, until together they took twice
     * the budget: each is allowed, for the budget is each call's. (The budget leaves room for
     * a call to wait for a core on a busy machine: wall time is what it counts.) */
    lua_sandbox_set_time(sb, 10000000);
    t0 = now_s();
    gives(sb, count, "100000");
    double call_us = (now_s() - t0) * 1e6;
    double budget_us = call_us * 4 > 50000 ? call_us * 4 : 50000;
    lua_sandbox_set_time(sb, (uint32_t)budget_us);
    int calls = 0;
    t0 = now_s();
    while ((now_s() - t0) * 1e6 < 2 * budget_us && calls < 100000) {
        gives(sb, count, "100000");
        calls++;
    }
    assert_true((now_s() - t0) * 1e6 >= 2 * budget_us);
    assert_true(calls >= 2);
    lua_sandbox_set_budget(sb, BUDGET);
    lua_sandbox_set_time(sb, US);
}

/* ---- the memory cap ---------------------------------------------------------------------- */

static void
test_memory_bomb(void **state)
{
    struct lua_sandbox *sb = *state;
    lua_sandbox_set_budget(sb, 100000000);
    lua_sandbox_set_time(sb, 10000000);
    size_t before = lua_sandbox_memory(sb);
    double t0 = now_s();
    fails(sb, "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) end", LUA_SANDBOX_MEMORY,
          "not enough memory");
    assert_true(now_s() - t0 < 5.0);
    assert_true(lua_sandbox_memory(sb) <= CAP);
    fails(sb, "local s = string.rep('x', 1 << 20) return s .. s .. s .. s .. s .. s .. s .. s",
          LUA_SANDBOX_MEMORY, "not enough memory");
    /* Caught by the code's own pcall, a memory error is just an error value. */
    gives(sb,
          "local s = string.rep('x', 1 << 20)\n"
          "return select(2, pcall(function() local t = {} for i = 1, 9 do t[i] = s .. i end end))",
          "not enough memory");
    fails(sb, "local s = 'x' while true do s = s .. s end", LUA_SANDBOX_MEMORY,
          "not enough memory");
    lua_sandbox_set_budget(sb, BUDGET);
    lua_sandbox_set_time(sb, US);
    /* The garbage was collected and the state still works. */
    assert_true(lua_sandbox_memory(sb) < before + (1u << 20));
    gives(sb, "local t = {} for i = 1, 100 do t[i] = i end return #t", "100");
}

static void
test_tiny_cap(void **state)
{
    (void)state;
    assert_null(lua_sandbox_new(1024, BUDGET, US)); /* not even a state fits */
    struct lua_sandbox *sb = lua_sandbox_new(256 * 1024, BUDGET, US);
    assert_non_null(sb);
    fails(sb, "local t = {} for i = 1, 1e6 do t[i] = {} end", LUA_SANDBOX_MEMORY,
          "not enough memory");
    gives(sb, "return 'ok'", "ok");
    lua_sandbox_free(sb);
}

/* ---- escapes ----------------------------------------------------------------------------- */

static void
test_no_io_os_package_debug(void **state)
{
    struct lua_sandbox *sb = *state;
    unlink("/tmp/sluice-sandbox-escape");
    fails(sb, "os.execute('touch /tmp/sluice-sandbox-escape')", LUA_SANDBOX_ERROR,
          "unknown name 'os'");
    assert_int_not_equal(access("/tmp/sluice-sandbox-escape", F_OK), 0);
    fails(sb, "return io.open('/etc/passwd')", LUA_SANDBOX_ERROR, "unknown name 'io'");
    fails(sb, "return require('os')", LUA_SANDBOX_ERROR, "unknown name 'require'");
    fails(sb, "return package.loaded", LUA_SANDBOX_ERROR, "unknown name 'package'");
    fails(sb, "return debug.getregistry()", LUA_SANDBOX_ERROR, "unknown name 'debug'");
    fails(sb, "return dofile('/etc/passwd')", LUA_SANDBOX_ERROR, "unknown name 'dofile'");
    fails(sb, "return loadfile('/etc/passwd')", LUA_SANDBOX_ERROR, "unknown name 'loadfile'");
    fails(sb, "return collectgarbage('count')", LUA_SANDBOX_ERROR, "unknown name 'collectgarbage'");
    fails(sb, "return coroutine.create(print)", LUA_SANDBOX_ERROR, "unknown name 'coroutine'");
    fails(sb, "return _G", LUA_SANDBOX_ERROR, "unknown name '_G'");
    fails(sb, "return print", LUA_SANDBOX_ERROR, "unknown name 'print'");
    fails(sb, "return xpcall", LUA_SANDBOX_ERROR, "unknown name 'xpcall'");
    fails(sb, "return _ENV.os", LUA_SANDBOX_ERROR, "unknown name 'os'");
}

static void
test_no_load(void **state)
{
    struct lua_sandbox *sb = *state;
    fails(sb, "return load('return 1')()", LUA_SANDBOX_ERROR, "unknown name 'load'");
    fails(sb, "return loadstring('return 1')()", LUA_SANDBOX_ERROR, "unknown name 'loadstring'");
    /* No string.dump to make bytecode with, through the library or the string metatable. */
    fails(sb, "return string.dump(function() end)", LUA_SANDBOX_ERROR,
          "a nil value (field 'dump')");
    gives(sb, "return tostring(('').dump)", "nil");
    fails(sb, "return rawget(string, 'dump')", LUA_SANDBOX_ERROR, "unknown name 'rawget'");

    /* Bytecode made elsewhere is refused by the loader itself. */
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    assert_int_equal(luaL_dostring(L, "return string.dump(function() return 'pwned' end)"), 0);
    size_t len;
    const char *bc = lua_tolstring(L, -1, &len);
    struct run r = {.code = bc, .len = len};
    char err[256];
    assert_int_equal(lua_sandbox_protect(sb, run_protected, &r, err, sizeof(err)), LUA_SANDBOX_OK);
    assert_int_equal(r.st, LUA_SANDBOX_ERROR);
    assert_non_null(strstr(r.err, "attempt to load a binary chunk"));
    lua_close(L);
}

static void
test_shared_tables_read_only(void **state)
{
    struct lua_sandbox *sb = *state;
    fails(sb, "string.upper = nil", LUA_SANDBOX_ERROR,
          "string is read-only (cannot set string.upper)");
    fails(sb, "string.upper = function() return 'pwned' end", LUA_SANDBOX_ERROR, "read-only");
    fails(sb, "table.insert = nil", LUA_SANDBOX_ERROR, "table is read-only");
    fails(sb, "math.pi = 3", LUA_SANDBOX_ERROR, "math is read-only");
    fails(sb, "utf8.char = nil", LUA_SANDBOX_ERROR, "utf8 is read-only");
    fails(sb, "rawset(string, 'upper', nil)", LUA_SANDBOX_ERROR, "unknown name 'rawset'");
    fails(sb, "setmetatable(string, {})", LUA_SANDBOX_ERROR, "unknown name 'setmetatable'");
    fails(sb, "getmetatable('').__index = {}", LUA_SANDBOX_ERROR, "unknown name 'getmetatable'");
    fails(sb, "('x').upper = 1", LUA_SANDBOX_ERROR, "attempt to index a string value");
    gives(sb, "return ('ok'):upper() .. string.upper('!') .. math.floor(math.pi)", "OK!3");
    gives(sb, "local n = 0 for k in pairs(string) do n = n + 1 end return n > 10", "true");
    gives(sb, "return #table", "0");
}

/* With getmetatable and setmetatable handed in, the shared tables still hold. */
static void
test_metatables_protected(void **state)
{
    struct lua_sandbox *sb = *state;
    const char *cases[][2] = {
        {"return tostring(getmetatable(''))", "false"},
        {"return tostring(getmetatable(string))", "false"},
        {"getmetatable('').__index = {}", "attempt to index a boolean value"},
        {"setmetatable(string, {})", "cannot change a protected metatable"},
        {"setmetatable(math, { __index = function() return 1 end })",
         "cannot change a protected metatable"},
        {"return ('abc'):upper()", "ABC"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct run r = {.code = cases[i][0], .give_metatables = 1};
        char err[256];
        assert_int_equal(lua_sandbox_protect(sb, run_protected, &r, err, sizeof(err)),
                         LUA_SANDBOX_OK);
        const char *got = r.st == LUA_SANDBOX_OK ? r.result : r.err;
        if (!strstr(got, cases[i][1]))
            fail_msg("%s: got %s, want %s", cases[i][0], got, cases[i][1]);
    }
}

static void
test_tenants_do_not_share_globals(void **state)
{
    (void)state;
    struct lua_sandbox *a = lua_sandbox_new(CAP, BUDGET, US), *b = lua_sandbox_new(CAP, BUDGET, US);
    gives(a, "secret = 'of a' return secret", "of a");
    gives(a, "return secret", "of a"); /* a keeps its own globals ... */
    fails(b, "return secret", LUA_SANDBOX_ERROR,
          "unknown name 'secret'"); /* ... b cannot see them */
    gives(b, "secret = 'of b' return secret", "of b");
    gives(a, "return secret", "of a");
    lua_sandbox_free(a);
    lua_sandbox_free(b);
}

static void
test_errors_with_traceback(void **state)
{
    struct lua_sandbox *sb = *state;
    fails(sb, "\nlocal x = nil\nreturn x.y", LUA_SANDBOX_ERROR,
          "t:3: attempt to index a nil value");
    fails(sb, "error({})", LUA_SANDBOX_ERROR, "(error object is a table value)");
    fails(sb, "error('boom')", LUA_SANDBOX_ERROR, "stack traceback:");
    fails(sb, "return nope", LUA_SANDBOX_ERROR, "unknown name 'nope'");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_runaway_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runaway_inside_pcall, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_is_per_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spin_in_c_stops_at_the_time_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backtracking_patterns_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rep_is_capped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_time_budget_is_per_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_bomb, setup, teardown),
        cmocka_unit_test(test_tiny_cap),
        cmocka_unit_test_setup_teardown(test_no_io_os_package_debug, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_tables_read_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metatables_protected, setup, teardown),
        cmocka_unit_test(test_tenants_do_not_share_globals),
        cmocka_unit_test_setup_teardown(test_errors_with_traceback, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
