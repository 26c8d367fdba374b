/* lua_sandbox.c - a Lua state for untrusted code: capped memory, instruction and time budgets. */
#include "lua_sandbox.h"

#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_bounded.h"
#include "util.h"

#define REG_BASICS "sluice.sandbox.basics"
#define REG_LIBS "sluice.sandbox.libs"

struct lua_sandbox {
    struct lua_limits lim; /* first: the state's extra space points here */
    lua_State *L;
    uint32_t budget, us;
};

struct lua_sandbox *
lua_sandbox_of(lua_State *L)
{
    return (struct lua_sandbox *)lua_limits_of(L);
}

int
lua_sandbox_msghandler(lua_State *L)
{
    const char *msg = lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : NULL;
    if (!msg)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void
copy_message(lua_State *L, int idx, char *err, size_t errlen)
{
    if (!errlen)
        return;
    const char *m = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : NULL;
    snprintf(err, errlen, "%s", m ? m : "(no error message)");
}

enum lua_sandbox_status
lua_sandbox_call(lua_State *L, int nargs, int nresults, char *err, size_t errlen)
{
    struct lua_sandbox *sb = lua_sandbox_of(L);
    int fn = lua_gettop(L) - nargs;
    lua_pushcfunction(L, lua_sandbox_msghandler);
    lua_insert(L, fn);
    struct lua_limits_frame outer;
    char ms[32];
    lua_limits_begin(L, sb->budget, sb->us, NULL, &outer);
    int rc = lua_pcall(L, nargs, nresults, fn);
    enum lua_limits_trip trip = lua_limits_end(L, &outer, NULL);
    enum lua_sandbox_status st = trip == LUA_LIMITS_INSTRUCTIONS ? LUA_SANDBOX_BUDGET
                                 : trip == LUA_LIMITS_TIME       ? LUA_SANDBOX_TIME
                                 : rc == LUA_OK                  ? LUA_SANDBOX_OK
                                 : rc == LUA_ERRMEM              ? LUA_SANDBOX_MEMORY
                                                                 : LUA_SANDBOX_ERROR;
    if (rc != LUA_OK) {
        if (rc == LUA_ERRMEM &&
            st == LUA_SANDBOX_TIME) /* a large block refused past the deadline */
            snprintf(err, errlen, "time budget exceeded (%s ms)", lua_limits_ms(sb->us, ms));
        else
            copy_message(L, -1, err, errlen);
        lua_pop(L, 2); /* the message and the handler */
        if (rc == LUA_ERRMEM)
            lua_gc(L, LUA_GCCOLLECT);
        return st == LUA_SANDBOX_OK ? LUA_SANDBOX_ERROR : st;
    }
    lua_remove(L, fn);
    if (st != LUA_SANDBOX_OK) { /* tripped in C, and no instruction ran after: still too long */
        lua_settop(L, fn - 1);
        if (st == LUA_SANDBOX_TIME)
            snprintf(err, errlen, "time budget exceeded (%s ms)", lua_limits_ms(sb->us, ms));
        else
            snprintf(err, errlen, "instruction budget exceeded");
    }
    return st;
}

enum lua_sandbox_status
lua_sandbox_protect(struct lua_sandbox *sb, lua_CFunction fn, void *ud, char *err, size_t errlen)
{
    lua_State *L = sb->L;
    int top = lua_gettop(L);
    /* Three slots: the handler, fn and ud fit in the stack Lua always keeps free. */
    lua_pushcfunction(L, lua_sandbox_msghandler);
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    int rc = lua_pcall(L, 1, 0, top + 1);
    enum lua_sandbox_status st = rc == LUA_OK       ? LUA_SANDBOX_OK
                                 : rc == LUA_ERRMEM ? LUA_SANDBOX_MEMORY
                                                    : LUA_SANDBOX_ERROR;
    if (st != LUA_SANDBOX_OK)
        copy_message(L, -1, err, errlen);
    lua_settop(L, top);
    if (st == LUA_SANDBOX_MEMORY)
        lua_gc(L, LUA_GCCOLLECT);
    return st;
}

/* ---- read-only views --------------------------------------------------------------------- */

static int
ro_newindex(lua_State *L)
{
    const char *name = lua_tostring(L, lua_upvalueindex(2));
    const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : luaL_typename(L, 2);
    return luaL_error(L, "%s is read-only (cannot set %s.%s)", name, name, key);
}

/* The iterator of pairs() over a view: next() on the table behind it (upvalue 1). */
static int
ro_next(lua_State *L)
{
    lua_settop(L, 2);
    if (lua_next(L, lua_upvalueindex(1)))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int
ro_pairs(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, ro_next, 1);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int
ro_len(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

void
lua_sandbox_push_readonly(lua_State *L, int idx, const char *name)
{
    idx = lua_absindex(L, idx);
    lua_createtable(L, 0, 0); /* the view */
    lua_createtable(L, 0, 5); /* its metatable */
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, idx);
    lua_pushstring(L, name);
    lua_pushcclosure(L, ro_newindex, 2);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, idx);
    lua_pushcclosure(L, ro_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushvalue(L, idx);
    lua_pushcclosure(L, ro_len, 1);
    lua_setfield(L, -2, "__len");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}

/* ---- environments ------------------------------------------------------------------------ */

static int
unknown_name(lua_State *L)
{
    const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : luaL_typename(L, 2);
    return luaL_error(L, "unknown name '%s'", key);
}

/* Copies every field of the table at the top into the table at dst, and pops it. */
static void
copy_fields(lua_State *L, int dst)
{
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, dst);
    }
    lua_pop(L, 1);
}

void
lua_sandbox_push_env(lua_State *L)
{
    lua_createtable(L, 0, 16);
    int env = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_BASICS);
    copy_fields(L, env);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_LIBS);
    copy_fields(L, env);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, unknown_name);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, env);
}

enum lua_sandbox_status
lua_sandbox_load(lua_State *L, const char *src, size_t len, const char *chunkname, int env_idx,
                 char *err, size_t errlen)
{
    env_idx = lua_absindex(L, env_idx);
    int rc = luaL_loadbufferx(L, src, len, chunkname, "t");
    if (rc != LUA_OK) {
        copy_message(L, -1, err, errlen);
        lua_pop(L, 1);
        return rc == LUA_ERRMEM ? LUA_SANDBOX_MEMORY : LUA_SANDBOX_ERROR;
    }
    lua_pushvalue(L, env_idx);
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    return LUA_SANDBOX_OK;
}

/* ---- opening a state --------------------------------------------------------------------- */

/* What sandboxed code may call from the base library. */
static const char *const basics[] = {
    "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber", "tostring", "type",
};

/* Globals removed from the state itself, so no path leads to them. */
static const char *const removed[] = {
    "load", "loadstring", "dofile", "loadfile", "require", "collectgarbage", "rawset",
};

static const char *const shared_libs[] = {LUA_STRLIBNAME, LUA_TABLIBNAME, LUA_MATHLIBNAME,
                                          LUA_UTF8LIBNAME};

static int
setup(lua_State *L)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8}, {NULL, NULL},
    };
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    lua_bounded_open(L);
    for (size_t i = 0; i < sizeof(removed) / sizeof(removed[0]); i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    /* string.dump makes bytecode; the string metatable's __index is this table too. */
    lua_getglobal(L, LUA_STRLIBNAME);
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_createtable(L, 0, 4);
    for (size_t i = 0; i < sizeof(shared_libs) / sizeof(shared_libs[0]); i++) {
        lua_getglobal(L, shared_libs[i]);
        lua_sandbox_push_readonly(L, -1, shared_libs[i]);
        lua_setfield(L, -3, shared_libs[i]);
        lua_pop(L, 1);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, REG_LIBS);

    lua_createtable(L, 0, 12);
    for (size_t i = 0; i < sizeof(basics) / sizeof(basics[0]); i++) {
        lua_getglobal(L, basics[i]);
        lua_setfield(L, -2, basics[i]);
    }
    lua_getglobal(L, LUA_TABLIBNAME);
    lua_getfield(L, -1, "unpack");
    lua_setfield(L, -3, "unpack");
    lua_pop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_BASICS);
    return 0;
}

struct lua_sandbox *
lua_sandbox_new(size_t mem_cap, uint32_t budget, uint32_t us)
{
    struct lua_sandbox *sb = xcalloc(1, sizeof(*sb));
    sb->L = lua_limits_newstate(&sb->lim, mem_cap);
    if (!sb->L) {
        free(sb);
        return NULL;
    }
    lua_sandbox_set_budget(sb, budget);
    lua_sandbox_set_time(sb, us);
    lua_State *L = sb->L;
    lua_pushcfunction(L, setup);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        lua_sandbox_free(sb);
        return NULL;
    }
    return sb;
}

void
lua_sandbox_free(struct lua_sandbox *sb)
{
    if (!sb)
        return;
    if (sb->L)
        lua_close(sb->L);
    free(sb);
}

lua_State *
lua_sandbox_state(struct lua_sandbox *sb)
{
    return sb->L;
}

void
lua_sandbox_set_budget(struct lua_sandbox *sb, uint32_t budget)
{
    sb->budget = budget == 0 ? 1 : budget;
}

void
lua_sandbox_set_time(struct lua_sandbox *sb, uint32_t us)
{
    sb->us = us == 0 ? 1 : us;
}

size_t
lua_sandbox_memory(const struct lua_sandbox *sb)
{
    return sb->lim.used;
}
