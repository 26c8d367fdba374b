/* lua_sandbox.h - a Lua state for untrusted code: capped memory, instruction and time budgets. */
#ifndef SLUICE_LUA_SANDBOX_H
#define SLUICE_LUA_SANDBOX_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

#include "lua_limits.h"

/*
 * A sandbox is one lua_State with:
 *   - an allocator that counts bytes and refuses to go past a cap, so Lua
 *     raises "not enough memory" (the state stays usable once the garbage is
 *     collected);
 *   - only the base, string, table, math and utf8 libraries, opened with
 *     luaL_requiref; load, dofile, loadfile, require, collectgarbage and rawset
 *     are removed from the globals and string.dump from the string library;
 *     the functions that could run long inside C are replaced by bounded ones
 *     (lua_bounded.h: patterns with a step budget, string.rep capped);
 *   - text chunks only (mode "t"), each with the environment it is given;
 *   - read-only views of the shared library tables, and a protected string
 *     metatable (getmetatable("") is false);
 *   - an instruction budget and a time budget per call (lua_limits.h): once
 *     either is spent, a count hook raises an error on every instruction, so
 *     the code's own pcall can catch the error but never run on.
 *
 * Every function that allocates in the state can raise a Lua memory error:
 * run such code inside lua_sandbox_protect(), never bare.
 */
struct lua_sandbox;

/*
 * The message handler of lua_pcall for every Lua state of the engine: returns
 * the error message (a string error object as it is, never running a
 * __tostring; any other as "(error object is a T value)") with a traceback.
 */
int lua_sandbox_msghandler(lua_State *L);

enum lua_sandbox_status {
    LUA_SANDBOX_OK = 0,
    LUA_SANDBOX_ERROR,  /* a Lua error; the message and traceback are in err */
    LUA_SANDBOX_BUDGET, /* the call ran past its instruction budget */
    LUA_SANDBOX_MEMORY, /* the state reached its memory cap */
    LUA_SANDBOX_TIME,   /* the call ran past its time budget */
};

/*
 * Returns a new sandbox whose allocations total at most mem_cap bytes and
 * whose lua_sandbox_call() calls may run `budget` VM instructions and `us`
 * microseconds each, or NULL when mem_cap is too small to open it. Free with
 * lua_sandbox_free().
 */
struct lua_sandbox *lua_sandbox_new(size_t mem_cap, uint32_t budget, uint32_t us);

/* Closes the state and frees the sandbox. NULL is a no-op. */
void lua_sandbox_free(struct lua_sandbox *sb);

/* The state (borrowed; valid until lua_sandbox_free). */
lua_State *lua_sandbox_state(struct lua_sandbox *sb);

/* The sandbox a state belongs to (borrowed), from inside a protected function. */
struct lua_sandbox *lua_sandbox_of(lua_State *L);

/* Sets the instruction budget of each later lua_sandbox_call() (at least 1). */
void lua_sandbox_set_budget(struct lua_sandbox *sb, uint32_t budget);

/* Sets the time budget of each later lua_sandbox_call(), in microseconds (at least 1). */
void lua_sandbox_set_time(struct lua_sandbox *sb, uint32_t us);

/* Bytes the state holds now. */
size_t lua_sandbox_memory(const struct lua_sandbox *sb);

/*
 * Runs fn(L) protected, with `ud` as its only argument (a light userdata)
 * and a traceback message handler; fn's results are dropped. No instruction
 * budget applies to fn itself (it is C): Lua code it runs goes through
 * lua_sandbox_call(). Returns LUA_SANDBOX_OK, or the failure with its message in
 * err (errlen bytes, may be 0).
 */
enum lua_sandbox_status lua_sandbox_protect(struct lua_sandbox *sb, lua_CFunction fn, void *ud,
                                            char *err, size_t errlen);

/*
 * Pushes a new environment table: assert error ipairs next pairs pcall
 * select tonumber tostring type unpack and read-only string, table, math and
 * utf8; reading a name it does not hold raises "unknown name 'x'". Code may
 * set its own globals in it. Raises on memory exhaustion.
 */
void lua_sandbox_push_env(lua_State *L);

/*
 * Pushes a read-only view of the table at idx: reads, pairs, ipairs and #
 * see the table; writing raises "NAME is read-only (cannot set NAME.key)";
 * getmetatable on it is false. Raises on memory exhaustion.
 */
void lua_sandbox_push_readonly(lua_State *L, int idx, const char *name);

/*
 * Compiles `src` (len bytes) as a text chunk named chunkname ("@tenants/a.lua")
 * with the table at env_idx as its _ENV, and pushes the function; binary
 * chunks are refused. Returns LUA_SANDBOX_OK, or the failure with the message in
 * err and nothing pushed.
 */
enum lua_sandbox_status lua_sandbox_load(lua_State *L, const char *src, size_t len,
                                         const char *chunkname, int env_idx, char *err,
                                         size_t errlen);

/*
 * Calls the function below its nargs arguments like lua_pcall, under the
 * sandbox's instruction and time budgets and with a traceback message
 * handler. On
 * LUA_SANDBOX_OK the nresults results are pushed; otherwise nothing is, and the
 * message (with traceback) is in err. Call it from inside
 * lua_sandbox_protect().
 */
enum lua_sandbox_status lua_sandbox_call(lua_State *L, int nargs, int nresults, char *err,
                                         size_t errlen);

#endif
