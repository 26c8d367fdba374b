/* lua_limits.c - what untrusted Lua may use in a state: memory, and per call instructions and time.
 */
#include "lua_limits.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define UNLIMITED UINT64_MAX

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct lua_limits *
lua_limits_of(lua_State *L)
{
    return *(struct lua_limits **)lua_getextraspace(L);
}

/* ---- the hook ---------------------------------------------------------------------------- */

static void hook(lua_State *L, lua_Debug *ar);

/* The line of lim->chunk running on L, innermost first; 0 when it does not run. */
static int
chunk_line(lua_State *L, const char *chunk)
{
    lua_Debug d;
    for (int level = 0; lua_getstack(L, level, &d); level++)
        if (lua_getinfo(L, "Sl", &d) && d.currentline > 0 && strcmp(d.source, chunk) == 0)
            return d.currentline;
    return 0;
}

/*
 * The call passed a limit: from now on the hook runs on every instruction of
 * L and of the call's thread. Safe anywhere, even in the allocator:
 * lua_sethook may be called at any time.
 */
static void
trip(struct lua_limits *lim, lua_State *L, enum lua_limits_trip why)
{
    if (lim->tripped)
        return;
    lim->tripped = why;
    if (lim->chunk && L)
        lim->trip_line = chunk_line(L, lim->chunk);
    lua_sethook(lim->thread, hook, LUA_MASKCOUNT, 1);
    if (L && L != lim->thread)
        lua_sethook(L, hook, LUA_MASKCOUNT, 1);
}

const char *
lua_limits_ms(uint64_t us, char buf[32])
{
    if (us % 1000 == 0)
        snprintf(buf, 32, "%llu", (unsigned long long)(us / 1000));
    else
        snprintf(buf, 32, "%.3g", (double)us / 1000.0);
    return buf;
}

int
lua_limits_error(lua_State *L)
{
    struct lua_limits *lim = lua_limits_of(L);
    lua_Debug d;
    const char *where = "";
    int line = 0;
    if (lua_getstack(L, 0, &d) && lua_getinfo(L, "Sl", &d) && d.currentline > 0) {
        where = d.short_src;
        line = d.currentline;
    } else if (lua_getstack(L, 1, &d) && lua_getinfo(L, "Sl", &d) && d.currentline > 0) {
        where = d.short_src; /* raised by a C function: where its caller is */
        line = d.currentline;
    }
    if (line)
        lua_pushfstring(L, "%s:%d: ", where, line);
    else
        lua_pushliteral(L, "");
    char ms[32];
    if (lim->tripped == LUA_LIMITS_TIME)
        lua_pushfstring(L, "time budget exceeded (%s ms)", lua_limits_ms(lim->us, ms));
    else
        lua_pushliteral(L, "instruction budget exceeded");
    lua_concat(L, 2);
    return lua_error(L);
}

static void
hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct lua_limits *lim = lua_limits_of(L);
    if (!lim->thread) /* a coroutine that outlived its call */
        return;
    if (!lim->tripped) {
        if (lim->left != UNLIMITED) {
            lim->left = lim->left > (uint64_t)lim->step ? lim->left - (uint64_t)lim->step : 0;
            if (lim->left == 0)
                trip(lim, L, LUA_LIMITS_INSTRUCTIONS);
        }
        if (!lim->tripped && lim->deadline_ns && now_ns() >= lim->deadline_ns)
            trip(lim, L, LUA_LIMITS_TIME);
        if (!lim->tripped) {
            lim->work = 0;
            int step = lim->left < LUA_LIMITS_EVERY ? (int)lim->left : LUA_LIMITS_EVERY;
            if (step != lim->step) {
                lim->step = step;
                lua_sethook(L, hook, LUA_MASKCOUNT, step);
            }
            return;
        }
    }
    lua_limits_error(L);
}

/* ---- memory ------------------------------------------------------------------------------ */

static void *
limits_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct lua_limits *lim = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        lim->used -= old;
        return NULL;
    }
    if (nsize > old) {
        size_t grow = nsize - old;
        if (grow > lim->cap - lim->used)
            return NULL;
        /* Work in C functions allocates: past the deadline, stop at the next instruction, and
         * refuse large blocks meanwhile, so that no more large work starts (small ones still
         * serve the error message). */
        lim->work += grow;
        if (lim->work >= LUA_LIMITS_CHECK_BYTES && lim->thread) {
            lim->work = 0;
            if (!lim->tripped && lim->deadline_ns && now_ns() >= lim->deadline_ns)
                trip(lim, NULL, LUA_LIMITS_TIME);
        }
        if (lim->tripped && lim->thread && grow >= LUA_LIMITS_CHECK_BYTES)
            return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p) {
        if (nsize <= old)
            return ptr; /* keep the larger block: Lua assumes a shrink succeeds */
        return NULL;
    }
    lim->used = lim->used - old + nsize;
    return p;
}

lua_State *
lua_limits_newstate(struct lua_limits *lim, size_t cap)
{
    memset(lim, 0, sizeof(*lim));
    lim->cap = cap;
    lua_State *L = lua_newstate(limits_alloc, lim);
    if (L)
        *(struct lua_limits **)lua_getextraspace(L) = lim;
    return L;
}

/* ---- limited calls ----------------------------------------------------------------------- */

void
lua_limits_begin(lua_State *thread, uint64_t instructions, uint64_t us, const char *chunk,
                 struct lua_limits_frame *outer)
{
    struct lua_limits *lim = lua_limits_of(thread);
    *outer = (struct lua_limits_frame){
        .thread = lim->thread,
        .deadline_ns = lim->deadline_ns,
        .left = lim->left,
        .us = lim->us,
        .step = lim->step,
        .trip_line = lim->trip_line,
        .tripped = lim->tripped,
        .chunk = lim->chunk,
    };
    uint64_t deadline = us ? now_ns() + us * 1000u : 0;
    if (outer->thread && outer->deadline_ns && (!deadline || outer->deadline_ns < deadline)) {
        deadline = outer->deadline_ns;
        us = outer->us;
    }
    lim->thread = thread;
    lim->deadline_ns = deadline;
    lim->us = us;
    lim->left = instructions ? instructions : UNLIMITED;
    lim->step = lim->left < LUA_LIMITS_EVERY ? (int)lim->left : LUA_LIMITS_EVERY;
    lim->tripped = outer->thread ? outer->tripped : LUA_LIMITS_NONE;
    lim->chunk = chunk;
    lim->trip_line = 0;
    lim->work = 0;
    lua_sethook(thread, hook, LUA_MASKCOUNT, lim->tripped ? 1 : lim->step);
}

enum lua_limits_trip
lua_limits_end(lua_State *thread, const struct lua_limits_frame *outer, int *trip_line)
{
    struct lua_limits *lim = lua_limits_of(thread);
    enum lua_limits_trip why = lim->tripped;
    if (trip_line)
        *trip_line = lim->trip_line;
    lua_sethook(thread, NULL, 0, 0);
    lim->thread = outer->thread;
    lim->deadline_ns = outer->deadline_ns;
    lim->left = outer->left;
    lim->us = outer->us;
    lim->step = outer->step;
    lim->trip_line = outer->trip_line;
    lim->chunk = outer->chunk;
    /* A call inside another that ran out of the other's time trips the other too, at its next
     * check; any other trip was this call's own. */
    lim->tripped = outer->tripped;
    return why;
}

void
lua_limits_charge(lua_State *L, size_t work)
{
    struct lua_limits *lim = lua_limits_of(L);
    if (!lim->thread || !lim->deadline_ns)
        return;
    lim->work += work;
    if (lim->work < LUA_LIMITS_CHECK_BYTES && !lim->tripped)
        return;
    lim->work = 0;
    if (lua_limits_late(L))
        lua_limits_error(L);
}

int
lua_limits_late(lua_State *L)
{
    struct lua_limits *lim = lua_limits_of(L);
    if (!lim->thread)
        return 0;
    if (!lim->tripped && lim->deadline_ns && now_ns() >= lim->deadline_ns)
        trip(lim, L, LUA_LIMITS_TIME);
    return lim->tripped != LUA_LIMITS_NONE;
}

/* ---- the loader's module ----------------------------------------------------------------- */

static int
l_run(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co != NULL, 1, "coroutine");
    const char *chunk = luaL_optstring(L, 2, NULL);
    lua_Integer instructions = luaL_optinteger(L, 3, 0);
    lua_Integer ms = luaL_optinteger(L, 4, 0);
    luaL_argcheck(L, instructions >= 0, 3, "must not be negative");
    luaL_argcheck(L, ms >= 0 && ms <= INT32_MAX, 4, "out of range");
    struct lua_limits_frame outer;
    lua_limits_begin(co, (uint64_t)instructions, (uint64_t)ms * 1000u, chunk, &outer);
    int nres = 0;
    int rc = lua_resume(co, L, 0, &nres);
    int line = 0;
    enum lua_limits_trip why = lua_limits_end(co, &outer, &line);
    int ok = rc == LUA_OK || rc == LUA_YIELD;
    lua_pushboolean(L, ok);
    if (ok) {
        lua_pop(co, nres);
        lua_pushnil(L);
    } else {
        lua_xmove(co, L, 1);
    }
    if (why == LUA_LIMITS_INSTRUCTIONS)
        lua_pushliteral(L, "instructions");
    else if (why == LUA_LIMITS_TIME)
        lua_pushliteral(L, "time");
    else
        lua_pushnil(L);
    if (line > 0)
        lua_pushinteger(L, line);
    else
        lua_pushnil(L);
    return 4;
}

int
lua_limits_open(lua_State *L)
{
    static const luaL_Reg fns[] = {{"run", l_run}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
