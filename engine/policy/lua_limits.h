/* lua_limits.h - what untrusted Lua may use in a state: memory, and per call instructions and time.
 */
#ifndef SLUICE_LUA_LIMITS_H
#define SLUICE_LUA_LIMITS_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Every Lua state of the engine (the hook sandboxes and the policy loader)
 * is made by lua_limits_newstate(), with a struct lua_limits of its own:
 *
 *   - memory: the allocator counts bytes and refuses to grow past a cap, so
 *     Lua raises "not enough memory";
 *   - a limited call (lua_limits_begin .. lua_limits_end) may run a number of
 *     VM instructions and until a deadline on the monotonic clock. A count
 *     hook runs every LUA_LIMITS_EVERY instructions and checks both; time
 *     spent inside C functions is seen by the allocator (every
 *     LUA_LIMITS_CHECK_BYTES bytes allocated it reads the clock) and by the
 *     C functions that work without allocating (lua_limits_charge()). Once a
 *     limit is passed the hook runs on every instruction and raises the
 *     error each time, so the code's own pcall can catch it but never run
 *     on; until the call ends, blocks of LUA_LIMITS_CHECK_BYTES or more are
 *     refused (a memory error), so no large work starts meanwhile.
 */

#define LUA_LIMITS_EVERY 1000                     /* instructions between two checks */
#define LUA_LIMITS_CHECK_BYTES ((size_t)64 << 10) /* bytes of work between two clock reads */

enum lua_limits_trip {
    LUA_LIMITS_NONE = 0,
    LUA_LIMITS_INSTRUCTIONS, /* the call ran its instruction budget out */
    LUA_LIMITS_TIME,         /* the call ran past its deadline */
};

struct lua_limits {
    size_t used, cap; /* bytes the state holds, and the most it may hold */
    /* the limited call running, if any */
    lua_State *thread;    /* the thread it runs on; NULL: no call is limited */
    uint64_t deadline_ns; /* CLOCK_MONOTONIC; 0: no time limit */
    uint64_t us;          /* the time limit, for messages */
    uint64_t left;        /* instructions left; UINT64_MAX: no instruction budget */
    int step;             /* instructions between two runs of the hook */
    enum lua_limits_trip tripped;
    size_t work;       /* bytes allocated or charged since the clock was last read */
    const char *chunk; /* NULL, or the chunk name ("@path") whose line a trip records */
    int trip_line;     /* the line of chunk running when the call tripped; 0: unknown */
};

/* The limits of a call that runs inside another, saved by lua_limits_begin(). */
struct lua_limits_frame {
    lua_State *thread;
    uint64_t deadline_ns, left, us;
    int step, trip_line;
    enum lua_limits_trip tripped;
    const char *chunk;
};

/*
 * Returns a new state whose allocator counts its bytes in *lim (zeroed here,
 * borrowed: it must outlive the state) and refuses to pass `cap`, or NULL
 * when not even the state fits. Close it with lua_close().
 */
lua_State *lua_limits_newstate(struct lua_limits *lim, size_t cap);

/* The limits of the state that L (any of its threads) belongs to (borrowed). */
struct lua_limits *lua_limits_of(lua_State *L);

/*
 * Starts a limited call on `thread`: at most `instructions` VM instructions
 * (0: no budget), until `us` microseconds from now (0: no deadline) or the
 * deadline of the call this one runs inside, whichever is sooner. The call in
 * progress, if any, is saved in *outer. chunk (may be NULL, borrowed until
 * lua_limits_end) names the chunk whose current line a trip records.
 */
void lua_limits_begin(lua_State *thread, uint64_t instructions, uint64_t us, const char *chunk,
                      struct lua_limits_frame *outer);

/*
 * Ends the limited call begun on `thread` and restores *outer. Returns what
 * stopped it, if anything; the line of the trip is in *trip_line (0 when
 * unknown), when trip_line is not NULL.
 */
enum lua_limits_trip lua_limits_end(lua_State *thread, const struct lua_limits_frame *outer,
                                    int *trip_line);

/*
 * For a C function about to do `work` (bytes, elements) without allocating:
 * every LUA_LIMITS_CHECK_BYTES of work reads the clock, and past the
 * deadline of the limited call raises the time error. No-op outside a
 * limited call. May raise: call it where a Lua error may be raised.
 */
void lua_limits_charge(lua_State *L, size_t work);

/*
 * Reads the clock: returns 1, and trips the limited call, when it is past its
 * deadline; else 0. For C code that raises later (lua_limits_error()).
 */
int lua_limits_late(lua_State *L);

/* Raises the error of the limit the call passed ("time budget exceeded (20 ms)"). */
int lua_limits_error(lua_State *L);

/* Writes a time of `us` microseconds as milliseconds ("20", "0.5") into buf; returns buf. */
const char *lua_limits_ms(uint64_t us, char buf[32]);

/*
 * Opens the module the policy loader gives sluice.sandbox (package.preload
 * "sluice.limits"), and pushes it: run(co, chunkname, instructions, ms)
 * resumes the coroutine co once under those limits (nil or 0: none) and
 * returns ok, the error value (nil when ok), "instructions" | "time" | nil,
 * and the line of chunkname that ran when it tripped (or nil).
 */
int lua_limits_open(lua_State *L);

#endif
