/* duration.c - parses durations such as "30s", "5m", "1h", "1d", "250ms" or "30" (seconds). */
#include "duration.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *unit;
    uint64_t ms;
} units[] = {
    {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
};

int
duration_parse(const char *s, uint64_t *ms, char *err, size_t errlen)
{
    uint64_t v = 0;
    size_t i = 0;

    if (s == NULL || s[0] == '\0') {
        util_seterr(err, errlen, "empty duration");
        return -1;
    }
    if (s[0] == '-') {
        util_seterr(err, errlen, "bad duration \"%s\": negative", s);
        return -1;
    }
    if (s[0] < '0' || s[0] > '9') {
        util_seterr(err, errlen, "bad duration \"%s\": expected a number, as in \"30s\" or \"5m\"",
                    s);
        return -1;
    }
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            util_seterr(err, errlen, "bad duration \"%s\": too large", s);
            return -1;
        }
        v = v * 10 + d;
    }
    if (s[i] == '.' || s[i] == ',') {
        util_seterr(err, errlen,
                    "bad duration \"%s\": decimals are not allowed; use a smaller unit (\"90m\", "
                    "not \"1.5h\")",
                    s);
        return -1;
    }
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        if (strcmp(s + i, units[u].unit) != 0)
            continue;
        if (v > UINT64_MAX / units[u].ms) {
            util_seterr(err, errlen, "bad duration \"%s\": too large", s);
            return -1;
        }
        *ms = v * units[u].ms;
        return 0;
    }
    if (s[i] == ' ' || s[i] == '\t') {
        util_seterr(err, errlen, "bad duration \"%s\": no space between number and unit", s);
        return -1;
    }
    util_seterr(err, errlen, "bad duration \"%s\": unknown unit \"%s\" (use ms, s, m, h or d)", s,
                s + i);
    return -1;
}
