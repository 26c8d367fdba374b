/* reload.h - policy generations: reloading a directory, watching it, and reporting status. */
#ifndef SLUICE_RELOAD_H
#define SLUICE_RELOAD_H

#include <stddef.h>
#include <stdint.h>

struct gateway;
struct policy;

struct reloader;

/*
 * Returns a new reloader for `dir`, publishing to `g`, whose current snapshot
 * is `initial` (a reference is taken).
 */
struct reloader *reloader_new(const char *dir, struct gateway *g, struct policy *initial);

/* Stops the watcher (if started) and frees. */
void reloader_free(struct reloader *r);

/*
 * Loads the directory whole and, if it is valid, publishes it as the next
 * generation. Reloads are serialized. `trigger` ("signal", "inotify",
 * "admin") is recorded for status. Returns 0, or -1 with the
 * "file:line: message" lines in *errors (a new string; NULL if not wanted).
 * A failed reload changes nothing that serves.
 */
int reloader_reload(struct reloader *r, const char *trigger, char **errors);

/*
 * Starts watching the directory and its tenants/ subdirectory with inotify in
 * a thread of its own; a burst of changes within `debounce_ms` is one reload.
 * Returns 0, or -1 with a message in err.
 */
int reloader_watch(struct reloader *r, uint64_t debounce_ms, char *err, size_t errlen);

/* The current snapshot (a new reference). */
struct policy *reloader_current(struct reloader *r);

/*
 * Status as a JSON object (a new string): generation, files with content
 * hashes, counts, and the time, trigger, result and error of the last reload.
 */
char *reloader_status_json(struct reloader *r);

#endif
