/* lua_bounded.c - library functions for untrusted Lua that cannot run long inside C. */
#define _GNU_SOURCE
#include "lua_bounded.h"

#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <string.h>

#include "lua_limits.h"
#include "lua_pattern.h"

#define REG_ORIGINALS "sluice.bounded.originals" /* the library functions wrapped here */
#define ELEMENT 16 /* the work of moving one table element, in bytes for lua_limits_charge() */

uint64_t
lua_bounded_steps(size_t len)
{
    uint64_t per = LUA_BOUNDED_STEPS_PER_BYTE;
    return len > (UINT64_MAX - LUA_BOUNDED_STEPS) / per ? UINT64_MAX
                                                        : LUA_BOUNDED_STEPS + per * len;
}

/* ---- patterns ---------------------------------------------------------------------------- */

/* The matcher's clock: stops a match once the limited call is past its deadline. */
static int
tick(void *ud)
{
    return lua_limits_late(ud);
}

static void
begin_match(lua_State *L, struct lua_pattern *m, const char *s, size_t ls, const char *p, size_t lp)
{
    lua_pattern_init(m, s, ls, p, lp, lua_bounded_steps(ls));
    m->tick = tick;
    m->tick_ud = L;
}

/* Raises the error of a match that did not end in a match or no match. */
static int
failed(lua_State *L, struct lua_pattern *m, enum lua_pattern_result r)
{
    if (r == LUA_PATTERN_STOPPED)
        return lua_limits_error(L);
    if (r == LUA_PATTERN_BUDGET)
        return luaL_error(L, "pattern matching exceeded its step budget (%I steps)",
                          (lua_Integer)m->budget);
    return luaL_error(L, "%s", m->err);
}

/* Pushes capture i of the last match ([s, e) is the whole match). */
static void
push_capture(lua_State *L, struct lua_pattern *m, int i, const char *s, const char *e)
{
    const char *start;
    size_t pos = 0;
    ptrdiff_t len = lua_pattern_capture_of(m, i, s, e, &start, &pos);
    if (len == LUA_PATTERN_ERROR)
        luaL_error(L, "%s", m->err);
    else if (len == LUA_PATTERN_POSITION)
        lua_pushinteger(L, (lua_Integer)pos);
    else
        lua_pushlstring(L, start, (size_t)len);
}

/* Pushes the captures of the last match, or the whole match [s, e) when it has none and s is
 * not NULL. Returns how many. */
static int
push_captures(lua_State *L, struct lua_pattern *m, const char *s, const char *e)
{
    int n = m->level == 0 && s ? 1 : m->level;
    luaL_checkstack(L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(L, m, i, s, e);
    return n;
}

/* A 1-based position from the end when negative, as string.find's init. */
static size_t
start_at(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 1;
    return len + (size_t)(pos + 1);
}

/* string.find (find = 1) and string.match (find = 0). */
static int
find_or_match(lua_State *L, int find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_at(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || lua_pattern_is_plain(p, lp))) {
        lua_limits_charge(L, ls - init);
        const char *at = memmem(s + init, ls - init, p, lp);
        if (at) {
            lua_pushinteger(L, (lua_Integer)(at - s) + 1);
            lua_pushinteger(L, (lua_Integer)(at - s + (ptrdiff_t)lp));
            return 2;
        }
        luaL_pushfail(L);
        return 1;
    }
    int anchor = lp > 0 && p[0] == '^';
    struct lua_pattern m;
    begin_match(L, &m, s, ls, p + anchor, lp - (size_t)anchor);
    size_t at = init;
    do {
        size_t end;
        enum lua_pattern_result r = lua_pattern_match(&m, at, &end);
        if (r == LUA_PATTERN_MATCH) {
            if (!find)
                return push_captures(L, &m, s + at, s + end);
            lua_pushinteger(L, (lua_Integer)at + 1);
            lua_pushinteger(L, (lua_Integer)end);
            return push_captures(L, &m, NULL, NULL) + 2;
        }
        if (r != LUA_PATTERN_NOMATCH)
            return failed(L, &m, r);
    } while (at++ < ls && !anchor);
    luaL_pushfail(L);
    return 1;
}

static int
str_find(lua_State *L)
{
    return find_or_match(L, 1);
}

static int
str_match(lua_State *L)
{
    return find_or_match(L, 0);
}

/* The state of a gmatch iterator; the subject and the pattern are its upvalues 1 and 2. */
struct gmatch {
    struct lua_pattern m;
    size_t at;   /* where the next search starts */
    size_t last; /* the end of the last match; SIZE_MAX: none yet */
};

static int
gmatch_next(lua_State *L)
{
    struct gmatch *g = lua_touserdata(L, lua_upvalueindex(3));
    size_t ls = (size_t)(g->m.src_end - g->m.src);
    g->m.steps = 0; /* a budget for each call */
    g->m.tick_ud = L;
    for (size_t at = g->at; at <= ls; at++) {
        size_t end;
        enum lua_pattern_result r = lua_pattern_match(&g->m, at, &end);
        if (r == LUA_PATTERN_MATCH && end != g->last) {
            g->at = g->last = end;
            return push_captures(L, &g->m, g->m.src + at, g->m.src + end);
        }
        if (r != LUA_PATTERN_MATCH && r != LUA_PATTERN_NOMATCH)
            return failed(L, &g->m, r);
    }
    return 0;
}

static int
str_gmatch(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_at(luaL_optinteger(L, 3, 1), ls) - 1;
    lua_settop(L, 2); /* the closure keeps both strings */
    struct gmatch *g = lua_newuserdatauv(L, sizeof(*g), 0);
    begin_match(L, &g->m, s, ls, p, lp); /* no anchor: a '^' here is a plain byte, as in Lua */
    g->at = init > ls ? ls + 1 : init;
    g->last = SIZE_MAX;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

/* Appends the replacement string (argument 3) for the match [s, e), with its %0-%9 and %%. */
static void
add_string(lua_State *L, luaL_Buffer *b, struct lua_pattern *m, const char *s, const char *e)
{
    size_t len;
    const char *r = lua_tolstring(L, 3, &len);
    const char *end = r + len, *pct;
    while ((pct = memchr(r, '%', (size_t)(end - r))) != NULL) {
        luaL_addlstring(b, r, (size_t)(pct - r));
        int c = pct + 1 < end ? (unsigned char)pct[1] : 0;
        if (c == '%') {
            luaL_addchar(b, '%');
        } else if (c == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (c >= '1' && c <= '9') {
            push_capture(L, m, c - '1', s, e);
            luaL_addvalue(b); /* a position capture is a number, added in decimal */
        } else {
            luaL_error(L, "invalid use of '%%' in replacement string");
        }
        r = pct + 2;
    }
    luaL_addlstring(b, r, (size_t)(end - r));
}

/* Appends what replaces the match [s, e) (argument 3 of type tr). Returns whether it changed
 * the text. */
static int
add_replacement(lua_State *L, luaL_Buffer *b, struct lua_pattern *m, const char *s, const char *e,
                int tr)
{
    if (tr == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(L, m, s, e);
        lua_call(L, n, 1);
    } else if (tr == LUA_TTABLE) {
        push_capture(L, m, 0, s, e);
        lua_gettable(L, 3);
    } else {
        add_string(L, b, m, s, e);
        return 1;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: the match stays */
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

static int
str_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int tr = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(
        L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
        "string/function/table");
    int anchor = lp > 0 && p[0] == '^';
    struct lua_pattern m;
    begin_match(L, &m, s, ls, p + anchor, lp - (size_t)anchor);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t at = 0, last = SIZE_MAX;
    lua_Integer n = 0;
    int changed = 0;
    while (n < max) {
        size_t end;
        enum lua_pattern_result r = lua_pattern_match(&m, at, &end);
        if (r != LUA_PATTERN_MATCH && r != LUA_PATTERN_NOMATCH)
            return failed(L, &m, r);
        if (r == LUA_PATTERN_MATCH && end != last) {
            n++;
            changed |= add_replacement(L, &b, &m, s + at, s + end, tr);
            at = last = end;
        } else if (at < ls) {
            luaL_addchar(&b, s[at++]);
        } else {
            break;
        }
        if (anchor)
            break;
    }
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, s + at, ls - at);
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

/* ---- string.rep -------------------------------------------------------------------------- */

static int
str_rep(lua_State *L)
{
    size_t l, lsep;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    if (l + lsep < l || (l + lsep > 0 && (size_t)n > (SIZE_MAX - lsep) / (l + lsep)))
        return luaL_error(L, "resulting string too large");
    size_t total = (size_t)n * l + (size_t)(n - 1) * lsep;
    if (total == 0) { /* Lua itself would copy nothing n times over */
        lua_pushliteral(L, "");
        return 1;
    }
    if (total > LUA_BOUNDED_REP_MAX)
        return luaL_error(L, "resulting string too large (%I bytes; string.rep makes at most %I)",
                          (lua_Integer)total, (lua_Integer)LUA_BOUNDED_REP_MAX);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, total);
    for (lua_Integer i = 0; i < n; i++) {
        if (i > 0 && lsep) {
            memcpy(out, sep, lsep);
            out += lsep;
        }
        memcpy(out, s, l);
        out += l;
    }
    luaL_pushresultsize(&b, total);
    return 1;
}

/* ---- tables ------------------------------------------------------------------------------ */

enum { READ = 1, WRITE = 2, LEN = 4 };

/* Argument arg must be a table, or have a metatable with what the operation needs. */
static void
check_table(lua_State *L, int arg, int need)
{
    if (lua_type(L, arg) == LUA_TTABLE)
        return;
    static const struct {
        int bit;
        const char *field;
    } fields[] = {{READ, "__index"}, {WRITE, "__newindex"}, {LEN, "__len"}};
    int ok = lua_getmetatable(L, arg);
    for (size_t i = 0; ok && i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (!(need & fields[i].bit))
            continue;
        lua_pushstring(L, fields[i].field);
        ok = lua_rawget(L, -2) != LUA_TNIL;
        lua_pop(L, 1);
    }
    if (!ok)
        luaL_checktype(L, arg, LUA_TTABLE);
    lua_pop(L, 1);
}

/* table.insert(t, [pos,] v): the elements from pos on move up one. */
static int
tab_insert(lua_State *L)
{
    check_table(L, 1, READ | WRITE | LEN);
    lua_Integer first_free = luaL_intop(+, luaL_len(L, 1), 1), pos;
    switch (lua_gettop(L)) {
    case 2:
        pos = first_free;
        break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)first_free, 2,
                      "position out of bounds");
        for (lua_Integer i = first_free; i > pos; i--) {
            lua_limits_charge(L, ELEMENT);
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    default:
        return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

/* table.remove(t, [pos]): returns t[pos]; the elements after it move down one. */
static int
tab_remove(lua_State *L)
{
    check_table(L, 1, READ | WRITE | LEN);
    lua_Integer size = luaL_len(L, 1);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size) /* argument 1, as Lua 5.4.4 says */
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 1, "position out of bounds");
    lua_geti(L, 1, pos);
    for (; pos < size; pos++) {
        lua_limits_charge(L, ELEMENT);
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

/* table.move(a1, f, e, t, [a2]): a2[t], ... = a1[f], ..., a1[e]; returns a2. */
static int
tab_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    lua_Integer t = luaL_checkinteger(L, 4);
    int dst = lua_isnoneornil(L, 5) ? 1 : 5;
    check_table(L, 1, READ);
    check_table(L, dst, WRITE);
    if (e >= f) {
        luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
        lua_Integer n = e - f + 1;
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        int up = t > e || t <= f || (dst != 1 && !lua_compare(L, 1, dst, LUA_OPEQ));
        for (lua_Integer i = 0; i < n; i++) {
            lua_Integer k = up ? i : n - 1 - i; /* overlapping upwards: from the end */
            lua_limits_charge(L, ELEMENT);
            lua_geti(L, 1, f + k);
            lua_seti(L, dst, t + k);
        }
    }
    lua_pushvalue(L, dst);
    return 1;
}

/* The default order of table.sort, counted. */
static int
sort_less(lua_State *L)
{
    lua_limits_charge(L, ELEMENT);
    lua_pushboolean(L, lua_compare(L, 1, 2, LUA_OPLT));
    return 1;
}

/* table.sort(t, [comp]): Lua's sort, with a comparison that is counted when none is given (one
 * that is given is Lua code, whose instructions count). */
static int
tab_sort(lua_State *L)
{
    check_table(L, 1, READ | WRITE | LEN);
    lua_Integer n = luaL_len(L, 1);
    if (n > 1) {
        luaL_argcheck(L, n < INT_MAX, 1, "array too big");
        if (!lua_isnoneornil(L, 2))
            luaL_checktype(L, 2, LUA_TFUNCTION);
    }
    lua_settop(L, 2);
    if (lua_isnil(L, 2)) {
        lua_pushcfunction(L, sort_less);
        lua_replace(L, 2);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 0);
    return 0;
}

/* ---- utf8 and tonumber ------------------------------------------------------------------- */

/* A position from the end when negative, as utf8's functions read it. */
static lua_Integer
utf8_pos(lua_Integer pos, size_t len)
{
    if (pos >= 0)
        return pos;
    if (0u - (size_t)pos > len)
        return 0;
    return (lua_Integer)len + pos + 1;
}

/* Calls the wrapped function (upvalue 1) with this call's arguments. */
static int
call_original(lua_State *L)
{
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* utf8.len(s, [i, [j, [lax]]]): its arguments checked here, so the errors name it. */
static int
utf8_len(lua_State *L)
{
    size_t len;
    luaL_checklstring(L, 1, &len);
    lua_Integer i = utf8_pos(luaL_optinteger(L, 2, 1), len);
    lua_Integer j = utf8_pos(luaL_optinteger(L, 3, -1), len);
    luaL_argcheck(L, 1 <= i && i - 1 <= (lua_Integer)len, 2, "initial position out of bounds");
    luaL_argcheck(L, j - 1 < (lua_Integer)len, 3, "final position out of bounds");
    lua_limits_charge(L, len);
    return call_original(L);
}

/* utf8.offset(s, n, [i]). */
static int
utf8_offset(lua_State *L)
{
    size_t len;
    luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    lua_Integer i = utf8_pos(luaL_optinteger(L, 3, n >= 0 ? 1 : (lua_Integer)len + 1), len);
    luaL_argcheck(L, 1 <= i && i - 1 <= (lua_Integer)len, 3, "position out of bounds");
    lua_limits_charge(L, len);
    return call_original(L);
}

/* tonumber(e, [base]). */
static int
base_tonumber(lua_State *L)
{
    if (lua_isnoneornil(L, 2)) {
        luaL_checkany(L, 1);
    } else {
        lua_Integer base = luaL_checkinteger(L, 2);
        luaL_checktype(L, 1, LUA_TSTRING);
        luaL_argcheck(L, 2 <= base && base <= 36, 2, "base out of range");
    }
    if (lua_type(L, 1) == LUA_TSTRING)
        lua_limits_charge(L, lua_rawlen(L, 1));
    return call_original(L);
}

/* ---- installing them --------------------------------------------------------------------- */

/* Sets lib.name (lib at the top of the stack) to fn; with wrap, fn gets the old lib.name as its
 * upvalue. */
static void
replace(lua_State *L, const char *name, lua_CFunction fn, int wrap)
{
    if (wrap) {
        lua_getfield(L, -1, name);
        lua_pushcclosure(L, fn, 1);
    } else {
        lua_pushcfunction(L, fn);
    }
    lua_setfield(L, -2, name);
}

void
lua_bounded_open(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);

    lua_getfield(L, -1, LUA_STRLIBNAME);
    replace(L, "find", str_find, 0);
    replace(L, "match", str_match, 0);
    replace(L, "gmatch", str_gmatch, 0);
    replace(L, "gsub", str_gsub, 0);
    replace(L, "rep", str_rep, 0);
    lua_pop(L, 1);

    lua_getfield(L, -1, LUA_TABLIBNAME);
    replace(L, "insert", tab_insert, 0);
    replace(L, "remove", tab_remove, 0);
    replace(L, "move", tab_move, 0);
    replace(L, "sort", tab_sort, 1);
    lua_pop(L, 1);

    lua_getfield(L, -1, LUA_UTF8LIBNAME);
    replace(L, "len", utf8_len, 1);
    replace(L, "offset", utf8_offset, 1);
    lua_pop(L, 1);

    lua_getfield(L, -1, LUA_GNAME);
    replace(L, "tonumber", base_tonumber, 1);
    lua_pop(L, 2);
}
