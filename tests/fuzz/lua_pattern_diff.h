/* lua_pattern_diff.h - one string-library call run by Lua's own library and by the engine's
 * bounded one (lua_bounded.c on lua_pattern.c), for the differential test and the fuzzer. */
#ifndef SLUICE_LUA_PATTERN_DIFF_H
#define SLUICE_LUA_PATTERN_DIFF_H

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_bounded.h"
#include "lua_limits.h"

enum diff_op {
    DIFF_FIND,
    DIFF_MATCH,
    DIFF_GMATCH,
    DIFF_GSUB_STRING,
    DIFF_GSUB_FUNCTION,
    DIFF_GSUB_TABLE,
    DIFF_NOPS
};

/* One call: string.find(s, p, init, plain), match(s, p, init), gmatch(s, p, init) iterated,
 * gsub(s, p, repl, max) with repl a string, a function or a table. */
struct diff_case {
    enum diff_op op;
    const char *s, *p, *repl;
    size_t slen, plen, rlen;
    int has_init, plain, has_max;
    long long init, max;
};

/* Runs a call in a state and serializes what it returned, or its error, into one string. */
static const char DIFF_DRIVER[] =
    "local function ser(...)\n"
    "  local out = {}\n"
    "  for i = 1, select('#', ...) do\n"
    "    local v = select(i, ...)\n"
    "    out[i] = type(v) == 'string' and string.format('%q', v) or math.type(v) or tostring(v)\n"
    "    if math.type(v) then out[i] = out[i] .. ':' .. tostring(v) end\n"
    "  end\n"
    "  return select('#', ...) .. '[' .. table.concat(out, ',') .. ']'\n"
    "end\n"
    "local calls = 0\n"
    "local function f(...)\n"
    "  calls = calls + 1\n"
    "  local first = ...\n"
    "  local k = (calls + select('#', ...)) % 7\n"
    "  if k == 0 then return nil elseif k == 1 then return first elseif k == 2 then return false\n"
    "  elseif k == 3 then return '<' .. tostring(first) .. '>' elseif k == 4 then return 42\n"
    "  elseif k == 5 then return (calls > 3) and {} or 'x' end\n"
    "  return select('#', ...)\n"
    "end\n"
    "local t = setmetatable({}, { __index = function(_, k)\n"
    "  if type(k) == 'number' then return k % 2 == 0 and k or nil end\n"
    "  return #k % 3 == 0 and (k .. k) or (#k % 3 == 1 and false or nil)\n"
    "end })\n"
    "return function(op, s, p, init, plain, repl, max)\n"
    "  calls = 0\n"
    "  local ok, r = pcall(function()\n"
    "    if op == 0 then return ser(string.find(s, p, init, plain))\n"
    "    elseif op == 1 then return ser(string.match(s, p, init))\n"
    "    elseif op == 2 then\n"
    "      local it, out = string.gmatch(s, p, init), {}\n"
    "      for i = 1, 40 do\n"
    "        local r = table.pack(it())\n"
    "        out[i] = ser(table.unpack(r, 1, r.n))\n"
    "        if r[1] == nil then break end\n"
    "      end\n"
    "      return table.concat(out, ';')\n"
    "    elseif op == 3 then return ser(string.gsub(s, p, repl, max))\n"
    "    elseif op == 4 then return ser(string.gsub(s, p, f, max))\n"
    "    else return ser(string.gsub(s, p, t, max)) end\n"
    "  end)\n"
    "  return (ok and 'ok ' or 'error ') .. tostring(r)\n"
    "end\n";

struct pattern_diff {
    lua_State *ref, *mine;
    struct lua_limits lim;
};

static inline lua_State *
diff_state(lua_State *L, int bounded)
{
    luaL_openlibs(L);
    if (bounded)
        lua_bounded_open(L);
    if (luaL_loadbufferx(L, DIFF_DRIVER, sizeof(DIFF_DRIVER) - 1, "=diff", "t") != LUA_OK ||
        lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "diff driver: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "diff.run");
    return L;
}

static inline void
diff_open(struct pattern_diff *d)
{
    d->ref = diff_state(luaL_newstate(), 0);
    d->mine = diff_state(lua_limits_newstate(&d->lim, (size_t)1 << 30), 1);
}

static inline void
diff_close(struct pattern_diff *d)
{
    lua_close(d->ref);
    lua_close(d->mine);
}

/* Runs c in L; the result is at the top of L's stack. */
static inline const char *
diff_call(lua_State *L, const struct diff_case *c, size_t *len)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "diff.run");
    lua_pushinteger(L, c->op);
    lua_pushlstring(L, c->s, c->slen);
    lua_pushlstring(L, c->p, c->plen);
    if (c->has_init)
        lua_pushinteger(L, (lua_Integer)c->init);
    else
        lua_pushnil(L);
    if (c->plain < 0)
        lua_pushnil(L);
    else
        lua_pushboolean(L, c->plain);
    lua_pushlstring(L, c->repl ? c->repl : "", c->repl ? c->rlen : 0);
    if (c->has_max)
        lua_pushinteger(L, (lua_Integer)c->max);
    else
        lua_pushnil(L);
    if (lua_pcall(L, 7, 1, 0) != LUA_OK) {
        fprintf(stderr, "diff driver failed: %s\n", lua_tostring(L, -1));
        abort();
    }
    return lua_tolstring(L, -1, len);
}

/*
 * Runs c in both states. Returns 1 when they agree, 0 when they differ (their results are at the
 * top of each state's stack: pop them with diff_pop), -1 when the engine's matcher ran out of
 * steps (Lua's own is not run then: it might take that long or far longer).
 */
static inline int
diff_run(struct pattern_diff *d, const struct diff_case *c, const char **mine, const char **ref)
{
    size_t ml, rl;
    *mine = diff_call(d->mine, c, &ml);
    *ref = NULL;
    if (strstr(*mine, "exceeded its step budget"))
        return -1;
    *ref = diff_call(d->ref, c, &rl);
    return ml == rl && memcmp(*mine, *ref, ml) == 0;
}

static inline void
diff_pop(struct pattern_diff *d, int ran_ref)
{
    lua_settop(d->mine, 0);
    if (ran_ref)
        lua_settop(d->ref, 0);
}

#endif
