/* embedded.h - files compiled into the binary: the lua/ sources and the admin listener's status
 * page (see cmake/embed.cmake). */
#ifndef SLUICE_EMBEDDED_H
#define SLUICE_EMBEDDED_H

#include <stddef.h>

struct embedded_file {
    const char *module; /* "sluice.dsl", "redis.limit"; a page: its file name, "status.html" */
    const char *path;   /* "lua/sluice/dsl.lua", used in chunk names */
    const char *source; /* len bytes, NUL-terminated */
    size_t len;
    const char *script_hash; /* an HTML page: the Content-Security-Policy source of its one
                                inline <script>, "'sha256-...'"; otherwise NULL */
};

/* lua/: Lua modules by name. Terminated by an entry whose module is NULL. */
extern const struct embedded_file embedded_lua[];

/* engine/control/page/: the admin listener's pages. Terminated as embedded_lua. */
extern const struct embedded_file embedded_page[];

#endif
