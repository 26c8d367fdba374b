/* reload.h - policy generations: reloading a directory, watching it, and reporting status. */
#ifndef SLUICE_RELOAD_H
#define SLUICE_RELOAD_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct gateway;
struct policy;

struct reloader;

/*
 * Returns a new reloader for `dir`, publishing each new generation to `g`
 * (borrowed; it outlives the reloader), which owns the snapshot serving.
 */
struct reloader *reloader_new(const char *dir, struct gateway *g);

/* Stops the watcher (if started) and frees. */
void reloader_free(struct reloader *r);

/*
 * From now on, every reload of r checks the new set's SQL against the
 * database at `conninfo` (copied; NULL or "": the PG* environment) before it
 * publishes it (sql_check.h): a set the database refuses is refused like any
 * set that fails to load; when the database cannot be reached in time, the
 * set is published and a warning logged that its SQL was not verified. The
 * check blocks the thread of the reload (never a worker) for at most
 * SQL_CHECK_BUDGET_MS.
 */
void reloader_check_sql(struct reloader *r, const char *conninfo);

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

/*
 * Status as a JSON object (a new reference): directory, generation, files
 * with content hashes, counts, the time, trigger, result and error of the
 * last reload, tenants, tenant errors and hook counts.
 */
json_t *reloader_status(struct reloader *r);

#endif
