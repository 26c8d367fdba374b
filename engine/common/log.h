/* log.h - the error log: four levels, one line per message in text or JSON, one write(2) each. */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Named LOGL_ so as not to meet syslog.h's LOG_INFO and LOG_DEBUG. */
enum log_level { LOGL_ERROR = 0, LOGL_WARN, LOGL_INFO, LOGL_DEBUG };
enum log_format { LOG_TEXT = 0, LOG_JSON };

/* "2026-12-07T01:02:03.456Z": RFC 3339, UTC, milliseconds. */
#define LOG_TIME_LEN 24

/* A field of a JSON line besides ts, level and msg; a NULL value is written as null. */
struct log_field {
    const char *name;
    const char *value;
};

/* The level named s ("error", "warn", "info", "debug") into *lv. Returns 0, or -1. */
int log_parse_level(const char *s, enum log_level *lv);

/* The format named s ("text", "json") into *fmt. Returns 0, or -1. */
int log_parse_format(const char *s, enum log_format *fmt);

/* Sets the least severe level written (default LOGL_INFO) and the format (default LOG_TEXT),
 * and has util.c's allocation failures reported in that format (util_fatal). Safe from any
 * thread; lines being written meanwhile use either setting. */
void log_configure(enum log_level lv, enum log_format fmt);

/* Writes to fd (default 2, stderr) from now on; for tests. */
void log_set_fd(int fd);

/*
 * Remembers the path of the file the log writes to when it is a regular file
 * (standard error redirected to one), for log_reopen(); forgets it when it
 * is not. Returns whether it is one. Call at start, before other threads log.
 */
bool log_follow_file(void);

/*
 * Opens the remembered path again in place of the log's descriptor, after a
 * rotation renamed the file: lines written meanwhile go to one file or the
 * other, whole. Returns 0, 1 when no file is remembered (nothing to do), or
 * -1 with errno set (the old file stays).
 */
int log_reopen(void);

/* The remembered path (borrowed), or NULL. */
const char *log_file_path(void);

/* Whether a message of level lv is written (to skip building one that is not). */
bool log_enabled(enum log_level lv);

/*
 * Writes one message of level lv, printf-formatted, when the level is
 * enabled. Text: "TS LEVEL sluice: MSG", a line per line of MSG, each with the
 * prefix, control characters but tab as \xNN (no caller's bytes can forge a
 * line); fields are not written (the message says what it needs). JSON: one
 * object {"ts", "level", "msg", then each field}, every string escaped by
 * jsonstr. Either way one write(2) for the whole message, so lines of
 * different threads never interleave. f[0..nf) and their strings are borrowed.
 */
void log_fields(enum log_level lv, const struct log_field *f, size_t nf, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void log_vfields(enum log_level lv, const struct log_field *f, size_t nf, const char *fmt,
                 va_list ap);

/* log_fields() without fields, at each level. */
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Writes an error message (printf-formatted, cut at 512 bytes) in the
 * configured format without allocating, then aborts: for out of memory and
 * broken invariants, where the heap cannot be trusted.
 */
void log_abort(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Milliseconds since the epoch (CLOCK_REALTIME). */
uint64_t log_now_ms(void);

/*
 * Writes unix_ms as RFC 3339 in UTC with milliseconds ("1970-01-01T00:00:00.000Z",
 * LOG_TIME_LEN bytes) and a NUL into out (LOG_TIME_LEN + 1 bytes) for years
 * 1970 to 9999. Returns LOG_TIME_LEN. Thread safe (no gmtime).
 */
size_t log_time_rfc3339(uint64_t unix_ms, char *out);

#endif
