/* lua_pattern.h - Lua 5.4 string patterns (reference manual 6.4.1) with a step budget. */
#ifndef SLUICE_LUA_PATTERN_H
#define SLUICE_LUA_PATTERN_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The matcher of string.find, match, gmatch and gsub, written to give the
 * same results and the same errors as Lua 5.4's (classes %a %c %d %g %l %p
 * %s %u %w %x and their complements, sets, anchors, . * + - ?, captures and
 * position captures, %b, %f, back-references), with one difference: every
 * match counts its steps and stops once it has spent its budget, so that no
 * pattern can backtrack for long. No Lua: the subject and the pattern are
 * plain bytes.
 */

#define LUA_PATTERN_MAXCAPTURES 32 /* as LUA_MAXCAPTURES */
#define LUA_PATTERN_MAXDEPTH 200   /* nested pattern items, as Lua's MAXCCALLS */
#define LUA_PATTERN_POSITION (-2)  /* the len of a position capture () */
#define LUA_PATTERN_UNFINISHED (-1)
#define LUA_PATTERN_TICK 65536 /* steps between two calls of the tick function */

enum lua_pattern_result {
    LUA_PATTERN_NOMATCH = 0,
    LUA_PATTERN_MATCH = 1,
    LUA_PATTERN_ERROR = -1,   /* a malformed pattern or a bad capture: the message is in err */
    LUA_PATTERN_BUDGET = -2,  /* the steps spent reached the budget */
    LUA_PATTERN_STOPPED = -3, /* the tick function asked to stop */
};

struct lua_pattern_capture {
    const char *init;
    ptrdiff_t len; /* LUA_PATTERN_POSITION, LUA_PATTERN_UNFINISHED or a length */
};

/*
 * One subject and one pattern, matched at as many positions as the caller
 * wants; lua_pattern_init() fills it. The subject and the pattern are
 * borrowed and must outlive it.
 */
struct lua_pattern {
    const char *src, *src_end; /* the subject */
    const char *p, *p_end;     /* the pattern, without the '^' anchor the caller handles */
    uint64_t steps;            /* spent so far, over every match of this struct */
    uint64_t budget;           /* the most steps all matches may spend together */
    int (*tick)(void *ud);     /* NULL, or called every LUA_PATTERN_TICK steps: nonzero stops */
    void *tick_ud;
    int level; /* captures of the last match */
    struct lua_pattern_capture capture[LUA_PATTERN_MAXCAPTURES];
    char err[64]; /* the message of LUA_PATTERN_ERROR, as Lua words it */
    /* private */
    int depth;
    jmp_buf jb;
};

/* Sets m up to match pattern p (plen bytes) in subject s (slen bytes) within `budget` steps. */
void lua_pattern_init(struct lua_pattern *m, const char *s, size_t slen, const char *p, size_t plen,
                      uint64_t budget);

/*
 * Matches the pattern at offset `at` of the subject (at most slen). Returns
 * LUA_PATTERN_MATCH with the offset just past the match in *end and the
 * captures in m->level and m->capture, LUA_PATTERN_NOMATCH, or an error
 * (LUA_PATTERN_ERROR with the message in m->err, LUA_PATTERN_BUDGET,
 * LUA_PATTERN_STOPPED); the steps it took are added to m->steps.
 */
enum lua_pattern_result lua_pattern_match(struct lua_pattern *m, size_t at, size_t *end);

/*
 * Whether pattern p (plen bytes) holds none of the characters that make it
 * more than plain text (^$*+?.([%-): string.find then looks for it as
 * plain text, as Lua does. Returns 1 or 0.
 */
int lua_pattern_is_plain(const char *p, size_t plen);

/*
 * Capture i of the last match as bytes: returns its length and sets *start,
 * or LUA_PATTERN_POSITION with its 1-based position in *pos. With no
 * captures at all, capture 0 is the whole match [s, e). Returns
 * LUA_PATTERN_ERROR with the message in m->err for an index past the
 * captures or an unfinished capture.
 */
ptrdiff_t lua_pattern_capture_of(struct lua_pattern *m, int i, const char *s, const char *e,
                                 const char **start, size_t *pos);

#endif
