/* util.h - allocation that aborts on exhaustion, small string and time helpers. */
#ifndef SLUICE_UTIL_H
#define SLUICE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

/* Allocators that abort with a message when memory is exhausted; never return NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Formats into err[0..errlen) when err is not NULL (the house error convention). */
void util_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Says why the process aborts when an allocation fails (msg: what failed),
 * and does not return: set by the error log (common/log.c, which uses this
 * file and so is not called from it by name) to write the message in its
 * format. NULL: a plain line on standard error.
 */
extern void (*util_fatal)(const char *msg);

/* Writes v in decimal to out (room for 20 bytes), not terminated; returns the length. */
size_t util_u64(char *out, uint64_t v);

/* FNV-1a 64 of p[0..n): hash tables, statement names, fingerprints. Not for secrets. */
uint64_t util_fnv1a(const void *p, size_t n);

/*
 * A 64-bit hash of n bytes read eight at a time (little-endian words, a
 * multiply-rotate mix and a final avalanche): about ten times as fast as
 * util_fnv1a on long input, the same on every host. For hashing bodies
 * (entity tags); not for security.
 */
uint64_t util_hash64(const void *p, size_t n);

/* Microseconds on the monotonic clock (for durations). */
uint64_t util_mono_us(void);

/* Wall clock (CLOCK_REALTIME) in ms since the epoch. */
uint64_t util_now_ms(void);

/* Writes ms (since the epoch) as RFC 3339 UTC with milliseconds, "2026-12-07T01:02:03.456Z",
 * NUL-terminated; returns its length (24). */
#define UTIL_RFC3339_LEN 32
size_t util_rfc3339_ms(char out[UTIL_RFC3339_LEN], uint64_t ms);

/* ms milliseconds as a struct timeval (for libevent timers). */
struct timeval util_ms_to_tv(uint64_t ms);

/* printf into a new string (owned by the caller). */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable byte string; zero-initialised is empty. */
struct sbuf {
    char *p;
    size_t len, cap;
};
/* Makes room for `more` bytes and a NUL after b->len (aborts when memory is exhausted). */
void sbuf_reserve(struct sbuf *b, size_t more);
void sbuf_add(struct sbuf *b, const void *data, size_t len);
void sbuf_adds(struct sbuf *b, const char *s);
/* Appends v in decimal. */
void sbuf_add_u64(struct sbuf *b, uint64_t v);
void sbuf_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_free(struct sbuf *b);

#endif
