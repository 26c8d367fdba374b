/* lua_bounded.h - library functions for untrusted Lua that cannot run long inside C. */
#ifndef SLUICE_LUA_BOUNDED_H
#define SLUICE_LUA_BOUNDED_H

#include <lua.h>
#include <stdint.h>

/*
 * The VM instructions of untrusted code are counted and timed
 * (lua_limits.h), but a call into a C function runs to its end unseen. So
 * the engine's states replace the library functions whose work can grow
 * without bound:
 *
 *   - string.find, match, gmatch and gsub match with lua_pattern.c, which
 *     gives Lua's answers but stops a match that spends more than
 *     LUA_BOUNDED_STEPS + LUA_BOUNDED_STEPS_PER_BYTE x (subject length)
 *     steps, with the error "pattern matching exceeded its step budget
 *     (N steps)", and reads the clock of the limited call as it goes; plain
 *     find is linear (memmem);
 *   - string.rep refuses a result over LUA_BOUNDED_REP_MAX bytes;
 *   - table.insert, remove, move and sort, utf8.len and utf8.offset and
 *     tonumber count their work with lua_limits_charge() (sort through its
 *     comparisons), so the clock is read while they run or before;
 *   - everything else that can take long allocates as it goes, and the
 *     allocator reads the clock (lua_limits.c).
 */

#define LUA_BOUNDED_STEPS 100000       /* pattern steps any one call may take */
#define LUA_BOUNDED_STEPS_PER_BYTE 16  /* and more for each byte of its subject */
#define LUA_BOUNDED_REP_MAX (1u << 20) /* bytes string.rep may make */

/*
 * Replaces those functions in the string, table and utf8 libraries and the
 * base library's tonumber of L, which must have them open; the string
 * metatable's __index is the string library, so methods change too. Raises
 * on memory exhaustion.
 */
void lua_bounded_open(lua_State *L);

/* The step budget of one pattern call on a subject of len bytes. */
uint64_t lua_bounded_steps(size_t len);

#endif
