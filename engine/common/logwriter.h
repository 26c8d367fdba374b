/* logwriter.h - a log file fed by many threads, each through a ring of its own, and written by
 * one thread of its own: at least every flush period, reopened on request, and when a ring is
 * full its lines are dropped and counted, never waited for. */
#ifndef SLUICE_LOGWRITER_H
#define SLUICE_LOGWRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct logwriter;

struct logwriter_config {
    const char *path;   /* the file (created, appended to), or "-" for standard output */
    unsigned producers; /* the threads that put lines, each with its index below this */
    size_t ring_bytes;  /* each producer's ring; 0: 4 MiB */
    uint64_t flush_ms;  /* what a ring holds is written at least this often; 0: 200 */
};

/* Totals since the start (each read whole, not all at one instant). */
struct logwriter_stats {
    uint64_t lines;        /* lines put in a ring */
    uint64_t dropped;      /* lines refused because their ring was full */
    uint64_t bytes;        /* bytes written to the file */
    uint64_t reopens;      /* reopens done */
    uint64_t write_errors; /* writes (their bytes lost) and reopens that failed */
};

/*
 * Opens cfg->path and starts the writing thread. Returns the writer (closed
 * with logwriter_close()), or NULL with a message in err.
 */
struct logwriter *logwriter_open(const struct logwriter_config *cfg, char *err, size_t errlen);

/*
 * Puts line[0..len) (a whole line, its newline included) in the ring of
 * `producer`, which only that thread may use. Never blocks and takes no lock:
 * returns true, or false when the ring has no room for it (the line is
 * dropped and counted). Wakes the writing thread once a quarter of the ring
 * is in use.
 */
bool logwriter_put(struct logwriter *lw, unsigned producer, const char *line, size_t len);

/*
 * The place in the ring of `producer` to write a line of at most max bytes
 * straight into, or NULL when the ring has not that much room in one piece
 * (then put the line with logwriter_put(), which takes it in two pieces or
 * drops it). Nothing is put until logwriter_commit(). Producer's thread only.
 */
char *logwriter_reserve(struct logwriter *lw, unsigned producer, size_t max);

/* Puts the len bytes (a whole line) written at what logwriter_reserve() returned (len <= its
 * max), as logwriter_put() would. */
void logwriter_commit(struct logwriter *lw, unsigned producer, size_t len);

/*
 * Asks the writing thread to reopen the path (after a rotation renamed the
 * file): everything put before the call is written to the old file first.
 * Safe from any thread; not async-signal-safe (call it from a thread that
 * waited for the signal).
 */
void logwriter_reopen(struct logwriter *lw);

/* Fills *st. Safe from any thread. */
void logwriter_stats(struct logwriter *lw, struct logwriter_stats *st);

/* The path it writes to (borrowed, valid until logwriter_close()). */
const char *logwriter_path(const struct logwriter *lw);

/*
 * Writes what every ring holds, stops the thread and frees lw (NULL: nothing).
 * The producers must have stopped putting lines.
 */
void logwriter_close(struct logwriter *lw);

#endif
