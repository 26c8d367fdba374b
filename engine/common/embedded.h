/* embedded.h - lua/ sources compiled into the binary (see cmake/embed.cmake). */
#ifndef SLUICE_EMBEDDED_H
#define SLUICE_EMBEDDED_H

#include <stddef.h>

struct embedded_file {
    const char *module; /* "sluice.dsl", "redis.limit" */
    const char *path;   /* "lua/sluice/dsl.lua", used in chunk names */
    const char *source;
    size_t len;
};

/* Terminated by an entry whose module is NULL. */
extern const struct embedded_file embedded_lua[];

#endif
