/* fuzz_lua_pattern.c - libFuzzer target: the engine's string.find, match, gmatch and gsub
 * (lua_bounded.c on lua_pattern.c) must give what Lua's own give, errors included. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_pattern_diff.h"

/* Prints bytes escaped, for a failure report. */
static void
dump(const char *what, const char *s, size_t n)
{
    fprintf(stderr, "%s \"", what);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 32 && c < 127 && c != '"' && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\%u", c);
    }
    fprintf(stderr, "\"\n");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * The input: byte 0 picks the function (its value mod 6: find, match, gmatch, gsub with a string,
 * a function or a table) and bits 3-4 plain (nil, false, true) and bit 5 whether init is given;
 * byte 1 is init (signed) and, for gsub, the most replacements (value mod 5 - 1, when bit 6 of
 * byte 0 is set); bytes 2 and 3 are the lengths of the pattern and of the replacement string,
 * which follow; the rest is the subject.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct pattern_diff d;
    static int opened;
    if (size < 4 || size > 4096)
        return 0;
    size_t plen = data[2], rlen = data[3];
    if (4 + plen + rlen > size)
        return 0;
    if (!opened) {
        diff_open(&d);
        opened = 1;
    }
    struct diff_case c = {
        .op = (enum diff_op)(data[0] % DIFF_NOPS),
        .p = (const char *)data + 4,
        .plen = plen,
        .repl = (const char *)data + 4 + plen,
        .rlen = rlen,
        .s = (const char *)data + 4 + plen + rlen,
        .slen = size - 4 - plen - rlen,
        .plain = (int)((data[0] >> 3) & 3) - 1,
        .has_init = (data[0] >> 5) & 1,
        .init = (int8_t)data[1],
        .has_max = (data[0] >> 6) & 1,
        .max = data[1] % 5 - 1,
    };
    if (c.plain > 1)
        c.plain = 1;
    const char *mine, *ref;
    int r = diff_run(&d, &c, &mine, &ref);
    if (r == 0) {
        fprintf(stderr, "op %d init %s%lld plain %d max %s%lld\n", c.op, c.has_init ? "" : "nil/",
                c.init, c.plain, c.has_max ? "" : "nil/", c.max);
        dump("subject", c.s, c.slen);
        dump("pattern", c.p, c.plen);
        dump("replacement", c.repl, c.rlen);
        fprintf(stderr, "engine: %s\nlua:    %s\n", mine, ref);
        abort();
    }
    diff_pop(&d, r != -1);
    return 0;
}
