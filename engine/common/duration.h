/* duration.h - parses durations such as "30s", "5m", "1h", "1d", "250ms" or "30" (seconds). */
#ifndef SLUICE_DURATION_H
#define SLUICE_DURATION_H

#include <stddef.h>
#include <stdint.h>

/*
 * Parses `s`: a non-negative integer with an optional unit, "ms", "s", "m",
 * "h" or "d", and no spaces; no unit means seconds. Zero is allowed.
 * Decimals ("1.5h"), signs, spaces, other units and values past UINT64_MAX
 * milliseconds are errors. Returns 0 with the duration in milliseconds in
 * *ms, or -1 with a message in err (and *ms untouched).
 */
int duration_parse(const char *s, uint64_t *ms, char *err, size_t errlen);

#endif
