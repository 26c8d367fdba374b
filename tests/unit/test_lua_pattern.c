/* test_lua_pattern.c - the engine's Lua patterns against Lua's own (the same answers and errors on
 * random and chosen calls), and the step budget that stops the backtracking ones. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../fuzz/lua_pattern_diff.h"
#include "lua_pattern.h"
#include "lua_sandbox.h"

static uint64_t rng = 0x9E3779B97F4A7C15u;

static uint32_t
rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static double
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Appends a C string to buf (cap bytes, *len used). */
static void
put(char *buf, size_t cap, size_t *len, const char *s, size_t n)
{
    if (*len + n > cap)
        return;
    memcpy(buf + *len, s, n);
    *len += n;
}

static void
puts_(char *buf, size_t cap, size_t *len, const char *s)
{
    put(buf, cap, len, s, strlen(s));
}

/* A subject: bytes that the patterns below talk about, NUL included. */
static size_t
random_subject(char *buf, size_t cap)
{
    static const char alphabet[] = "aabbc,,=x() []%1 A9.-^$\n";
    size_t n = rnd(8) == 0 ? rnd(80) : rnd(16), len = 0;
    for (size_t i = 0; i < n && len < cap; i++)
        buf[len++] = rnd(40) == 0 ? '\0' : alphabet[rnd(sizeof(alphabet) - 1)];
    return len;
}

/* A pattern of random items, sometimes malformed. */
static size_t
random_pattern(char *buf, size_t cap)
{
    static const char *const single[] = {
        "a",     "b",     "c",   ",",    "=",    "x",     ".",      "%a",     "%d",    "%s",
        "%w",    "%p",    "%x",  "%l",   "%u",   "%c",    "%g",     "%A",     "%D",    "%S",
        "%W",    "%P",    "%%",  "%.",   "%(",   "%]",    "%z",     "%-",     "[abc]", "[^a]",
        "[a-c]", "[%d,]", "[]]", "[^]]", "[a-]", "[-a]",  "[%a-z]", "[a-%%]", "[%]]",  "[.]",
        "[^%s]", "[,=]",  " ",   "1",    "]",    "[a%-]", "[%w_]",  "[b-a]",
    };
    static const char *const other[] = {
        "(",      ")",     "()",     "%b()",   "%b,,", "%bab", "%f[%w]", "%f[a]",
        "%f[^a]", "%f[,]", "%1",     "%2",     "%0",   "%9",   "^",      "$",
        "%",      "[",     "[^",     "%b",     "%b(",  "%f",   "%fa",    "(a*)",
        "(.-)",   "(%w+)", "((a)b)", "%f[%z]", "[%",   "[a-",  "%f[]",
    };
    static const char *const suffix[] = {"*", "+", "-", "?"};
    size_t len = 0;
    if (rnd(5) == 0)
        puts_(buf, cap, &len, "^");
    int items = (int)rnd(7);
    for (int i = 0; i < items; i++) {
        uint32_t k = rnd(20);
        if (k < 12) {
            puts_(buf, cap, &len, single[rnd(sizeof(single) / sizeof(single[0]))]);
            if (rnd(2))
                puts_(buf, cap, &len, suffix[rnd(4)]);
        } else if (k < 19) {
            puts_(buf, cap, &len, other[rnd(sizeof(other) / sizeof(other[0]))]);
        } else {
            char c = (char)rnd(256);
            put(buf, cap, &len, &c, 1);
        }
    }
    if (rnd(6) == 0)
        puts_(buf, cap, &len, "$");
    return len;
}

static size_t
random_repl(char *buf, size_t cap)
{
    static const char *const parts[] = {"%0", "%1", "%2", "%%", "x", "%", "%a", "<", "%9", ""};
    size_t len = 0;
    for (int i = (int)rnd(4); i > 0; i--)
        puts_(buf, cap, &len, parts[rnd(sizeof(parts) / sizeof(parts[0]))]);
    return len;
}

/* Prints bytes as a Lua string literal, for failure messages. */
static const char *
quoted(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < n && o + 6 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 32 && c < 127 && c != '"' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\%u", c);
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

static void
check_same(struct pattern_diff *d, const struct diff_case *c, int *skipped)
{
    const char *mine, *ref;
    int r = diff_run(d, c, &mine, &ref);
    if (r == -1) {
        (*skipped)++;
    } else if (r == 0) {
        char qs[512], qp[512], qr[256];
        fail_msg(
            "op %d s=%s p=%s init=%s%lld plain=%d repl=%s max=%s%lld\n  engine: %s\n  lua:    %s",
            c->op, quoted(c->s, c->slen, qs, sizeof(qs)), quoted(c->p, c->plen, qp, sizeof(qp)),
            c->has_init ? "" : "nil/", c->init, c->plain,
            quoted(c->repl ? c->repl : "", c->rlen, qr, sizeof(qr)), c->has_max ? "" : "nil/",
            c->max, mine, ref);
    }
    diff_pop(d, r != -1);
}

/* ---- the same answers as Lua ------------------------------------------------------------- */

/* Thousands of random calls of find, match, gmatch and gsub: the same results, or the same
 * error, in Lua's string library and in the engine's. */
static void
test_random_calls_agree_with_lua(void **state)
{
    (void)state;
    struct pattern_diff d;
    diff_open(&d);
    int skipped = 0, n = 30000;
    for (int i = 0; i < n; i++) {
        char s[128], p[128], r[64];
        struct diff_case c = {.op = (enum diff_op)rnd(DIFF_NOPS), .s = s, .p = p, .repl = r};
        c.slen = random_subject(s, sizeof(s));
        c.plen = random_pattern(p, sizeof(p));
        c.rlen = random_repl(r, sizeof(r));
        c.has_init = rnd(3) == 0;
        c.init = (long long)rnd(40) - 20;
        c.plain = (int)rnd(3) - 1;
        c.has_max = rnd(4) == 0;
        c.max = (long long)rnd(6) - 1;
        check_same(&d, &c, &skipped);
    }
    /* Short subjects rarely need the budget: the comparison covered nearly everything. */
    assert_true(skipped < n / 100);
    diff_close(&d);
}

/* The corners of the manual, one by one. */
static void
test_chosen_calls_agree_with_lua(void **state)
{
    (void)state;
    static const struct {
        enum diff_op op;
        const char *s, *p, *repl;
    } cases[] = {
        {DIFF_FIND, "a)", ")", NULL},  /* no specials: plain, no error */
        {DIFF_MATCH, "a)", ")", NULL}, /* invalid pattern capture */
        {DIFF_FIND, "a", "%1", NULL},
        {DIFF_FIND, "a", "%0", NULL},
        {DIFF_FIND, "aa", "(a)%1", NULL},
        {DIFF_FIND, "a", "(a%1)", NULL},
        {DIFF_FIND, "a", "%", NULL},
        {DIFF_FIND, "a", "[a", NULL},
        {DIFF_FIND, "]", "[]]", NULL},
        {DIFF_FIND, "a]", "[^]]", NULL},
        {DIFF_FIND, "a", "%b", NULL},
        {DIFF_FIND, "a", "%bx", NULL},
        {DIFF_FIND, "a", "%f", NULL},
        {DIFF_FIND, "a", "%fa", NULL},
        {DIFF_MATCH, "a", "(a", NULL},
        {DIFF_FIND, "a", "(a", NULL},
        {DIFF_MATCH, "((x))", "%b()", NULL},
        {DIFF_MATCH, "THE (quick) fox", "%f[%a]%a+", NULL},
        {DIFF_GMATCH, "THE (quick) fox", "%f[%a]%a+", NULL},
        {DIFF_GMATCH, "abc", "", NULL},
        {DIFF_GMATCH, "^a^a", "^a", NULL},
        {DIFF_GSUB_STRING, "abc", "", "-"},
        {DIFF_GSUB_STRING, "hello world", "(o)", "[%1%1]"},
        {DIFF_GSUB_STRING, "abc", "b", "%2"},
        {DIFF_GSUB_STRING, "abc", "b", "%"},
        {DIFF_GSUB_STRING, "abc", "(b)()", "%2"},
        {DIFF_GSUB_STRING, "abc", "^b", "x"},
        {DIFF_GSUB_STRING, "abc", "^a", "x"},
        {DIFF_GSUB_STRING, "a,b,,c", ",*", "|"},
        {DIFF_FIND, "key = value", "(%w+)%s*=%s*(%w+)", NULL},
        {DIFF_MATCH, "2024-01-02", "^(%d+)-(%d+)-(%d+)$", NULL},
        {DIFF_MATCH, "[[x]]", "%[(%b[])%]", NULL},
        {DIFF_MATCH, "a-b", "[a%-]+", NULL},
        {DIFF_MATCH, "%%", "[a-%%]+", NULL},
        {DIFF_MATCH, "x", "[%", NULL},
        {DIFF_MATCH, "aaa", "a-$", NULL},
        {DIFF_MATCH, "aaa", "()a*()", NULL},
        {DIFF_MATCH, "a$b", "a$b", NULL},
        {DIFF_MATCH, "ab", "a?b?c?$", NULL},
    };
    struct pattern_diff d;
    diff_open(&d);
    int skipped = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (int init = -1; init <= 4; init++) {
            struct diff_case c = {
                .op = cases[i].op,
                .s = cases[i].s,
                .slen = strlen(cases[i].s),
                .p = cases[i].p,
                .plen = strlen(cases[i].p),
                .repl = cases[i].repl,
                .rlen = cases[i].repl ? strlen(cases[i].repl) : 0,
                .has_init = init >= 0,
                .init = init,
                .plain = -1,
            };
            check_same(&d, &c, &skipped);
            c.op = c.op == DIFF_GSUB_STRING ? DIFF_GSUB_FUNCTION : c.op;
            check_same(&d, &c, &skipped);
        }
    }
    /* Arguments of the wrong type, and "pattern too complex" at Lua's own depth. */
    static const char *const calls[] = {
        "return string.find()",
        "return string.find('a')",
        "return string.match('a', {})",
        "return string.gsub('a', 'a')",
        "return string.gsub('a', 'a', nil, 'x')",
        "return string.gmatch(1, 2)()",
        "return (''):rep(-1), ('ab'):rep(3, ','), ('x'):rep(0, ',')",
        "return string.find(('a'):rep(300), ('a?'):rep(300))",
        "return string.find(('a'):rep(180), ('a?'):rep(180))",
        "return string.find(('x'):rep(40), ('()'):rep(33))",
        "return string.gsub('abc', '%w', { a = 1, b = true })",
        "return string.find(12345, 34)",
        "return string.match('  x  ', '^%s*(.-)%s*$')",
    };
    for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
        lua_State *both[2] = {d.ref, d.mine};
        char got[2][512];
        for (int k = 0; k < 2; k++) {
            lua_State *L = both[k];
            int rc = luaL_loadstring(L, calls[i]) || lua_pcall(L, 0, LUA_MULTRET, 0);
            size_t o = 0;
            puts_(got[k], sizeof(got[k]) - 1, &o, rc ? "error" : "ok");
            for (int j = 1, top = lua_gettop(L); j <= top; j++) {
                puts_(got[k], sizeof(got[k]) - 1, &o, " ");
                puts_(got[k], sizeof(got[k]) - 1, &o, luaL_tolstring(L, j, NULL));
                lua_pop(L, 1);
            }
            got[k][o] = '\0';
            lua_settop(L, 0);
        }
        if (strcmp(got[0], got[1]) != 0)
            fail_msg("%s\n  engine: %s\n  lua:    %s", calls[i], got[1], got[0]);
    }
    diff_close(&d);
}

/* ---- the budget -------------------------------------------------------------------------- */

/* Runs pattern p on s from position 0 with the budget of a call: returns the result and the
 * time it took in *ms. */
static enum lua_pattern_result
timed_match(const char *s, size_t slen, const char *p, double *ms)
{
    struct lua_pattern m;
    lua_pattern_init(&m, s, slen, p, strlen(p), lua_bounded_steps(slen));
    double t0 = now_ms();
    enum lua_pattern_result r = LUA_PATTERN_NOMATCH;
    size_t end;
    for (size_t at = 0; at <= slen && r == LUA_PATTERN_NOMATCH; at++)
        r = lua_pattern_match(&m, at, &end);
    *ms = now_ms() - t0;
    return r;
}

/* Patterns that backtrack for seconds in Lua's own matcher stop at the budget, in well under a
 * millisecond or so each. */
static void
test_backtracking_stops_at_the_budget(void **state)
{
    (void)state;
    char commas[601], as[2001];
    for (int i = 0; i < 300; i++)
        memcpy(commas + 2 * i, "a,", 2);
    commas[600] = '\0';
    memset(as, 'a', 2000);
    as[2000] = '\0';
    static const struct {
        int subject; /* 0: 300 commas, 1: 2000 a's */
        const char *p;
    } attacks[] = {
        {0, "(.-),(.-),(.-),(.-)="}, /* Lua: 5 s */
        {1, ".-.-.-b"},              /* Lua: beyond a minute */
        {1, "a*a*a*a*b"},
        {1, "(a*)*b"},
        {1, "(.-)%1%1b"},
    };
    for (size_t i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++) {
        const char *s = attacks[i].subject ? as : commas;
        double ms;
        enum lua_pattern_result r = timed_match(s, strlen(s), attacks[i].p, &ms);
        printf("  %-22s %6.2f ms\n", attacks[i].p, ms);
        assert_int_equal(r, LUA_PATTERN_BUDGET);
        assert_true(ms < 50);
    }
    /* Linear work on a long subject stays within the budget, which grows with the subject. */
    static char big[1 << 20];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 2] = '=';
    double ms;
    assert_int_equal(timed_match(big, sizeof(big) - 1, "%s*(=)", &ms), LUA_PATTERN_MATCH);
    assert_int_equal(timed_match(big, sizeof(big) - 1, "^[^=]*=x", &ms), LUA_PATTERN_NOMATCH);
}

/* The tick function stops a match that is within its steps but past the call's deadline. */
static int
stop_now(void *ud)
{
    (*(int *)ud)++;
    return 1;
}

static void
test_tick_stops_a_long_match(void **state)
{
    (void)state;
    static char s[200000];
    memset(s, 'a', sizeof(s));
    struct lua_pattern m;
    int ticks = 0;
    lua_pattern_init(&m, s, sizeof(s), "a*b", 3, UINT64_MAX);
    m.tick = stop_now;
    m.tick_ud = &ticks;
    size_t end;
    assert_int_equal(lua_pattern_match(&m, 0, &end), LUA_PATTERN_STOPPED);
    assert_int_equal(ticks, 1);
    assert_true(m.steps <= LUA_PATTERN_TICK + 1);
}

/* Through Lua: the budget error names itself, and the code's own pcall catches it. */
static void
test_budget_error_in_lua(void **state)
{
    (void)state;
    struct lua_sandbox *sb = lua_sandbox_new(8u << 20, 100000, 1000000);
    lua_State *L = lua_sandbox_state(sb);
    assert_int_equal(luaL_loadstring(L, "local q = string.rep('a,', 300)\n"
                                        "local ok, e = pcall(q.match, q, '^(.-),(.-),(.-),(.-)=')\n"
                                        "return e"),
                     LUA_OK);
    double t0 = now_ms();
    assert_int_equal(lua_pcall(L, 0, 1, 0), LUA_OK);
    assert_true(now_ms() - t0 < 50);
    assert_string_equal(lua_tostring(L, -1),
                        "pattern matching exceeded its step budget (109600 steps)");
    lua_sandbox_free(sb);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_calls_agree_with_lua),
        cmocka_unit_test(test_chosen_calls_agree_with_lua),
        cmocka_unit_test(test_backtracking_stops_at_the_budget),
        cmocka_unit_test(test_tick_stops_a_long_match),
        cmocka_unit_test(test_budget_error_in_lua),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
