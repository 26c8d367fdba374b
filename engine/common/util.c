/* util.c - allocation that aborts on exhaustion, small string and time helpers. */
#include "util.h"

#include <endian.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void (*util_fatal)(const char *msg);

static void
oom(size_t n)
{
    char msg[96];
    int len = snprintf(msg, sizeof(msg), "out of memory (allocating %zu bytes)", n);
    if (util_fatal)
        util_fatal(msg); /* does not return */
    /* Before the error log is set up: a plain line, written without allocating. */
    if (write(2, "sluice: ", 8) == 8 && write(2, msg, (size_t)len) == len)
        (void)!write(2, "\n", 1);
    abort();
}

void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *
xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

char *
xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *
xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void
sbuf_reserve(struct sbuf *b, size_t more)
{
    if (b->cap - b->len > more)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len <= more)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

void
sbuf_add(struct sbuf *b, const void *data, size_t len)
{
    sbuf_reserve(b, len);
    memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
}

void
sbuf_adds(struct sbuf *b, const char *s)
{
    sbuf_add(b, s, strlen(s));
}

void
sbuf_add_u64(struct sbuf *b, uint64_t v)
{
    char buf[20];
    sbuf_add(b, buf, util_u64(buf, v));
}

void
sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    sbuf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void
sbuf_free(struct sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void
util_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

uint64_t
util_fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t
load_le64(const unsigned char *p, size_t n)
{
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)p[i] << (8 * i);
    return w;
}

uint64_t
util_hash64(const void *p, size_t n)
{
    const unsigned char *b = p;
    const uint64_t m1 = 0xff51afd7ed558ccdULL, m2 = 0xc4ceb9fe1a85ec53ULL;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * m2);
    for (; n >= 8; b += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        w = le64toh(w) * m1;
        h ^= (w << 31) | (w >> 33);
        h = ((h << 27) | (h >> 37)) * m2 + 0x52dce729;
    }
    h ^= load_le64(b, n) * m1;
    h ^= h >> 33;
    h *= m1;
    h ^= h >> 33;
    h *= m2;
    h ^= h >> 33;
    return h;
}

uint64_t
util_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t
util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

size_t
util_rfc3339_ms(char out[UTIL_RFC3339_LEN], uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, UTIL_RFC3339_LEN, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(out + n, UTIL_RFC3339_LEN - n, ".%03uZ", (unsigned)(ms % 1000));
    return n;
}

size_t
util_u64(char *out, uint64_t v)
{
    static const uint64_t pow10[20] = {1ull,
                                       10ull,
                                       100ull,
                                       1000ull,
                                       10000ull,
                                       100000ull,
                                       1000000ull,
                                       10000000ull,
                                       100000000ull,
                                       1000000000ull,
                                       10000000000ull,
                                       100000000000ull,
                                       1000000000000ull,
                                       10000000000000ull,
                                       100000000000000ull,
                                       1000000000000000ull,
                                       10000000000000000ull,
                                       100000000000000000ull,
                                       1000000000000000000ull,
                                       10000000000000000000ull};
    static const char pairs[201] = "00010203040506070809101112131415161718192021222324"
                                   "25262728293031323334353637383940414243444546474849"
                                   "50515253545556575859606162636465666768697071727374"
                                   "75767778798081828384858687888990919293949596979899";
    if (v < 10) {
        out[0] = (char)('0' + v);
        return 1;
    }
    /* Its digits from its bits (log10(2) is about 1233 / 4096, one too many at most), then
     * written in place two a division, from the back. */
    unsigned t = (unsigned)(64 - __builtin_clzll(v)) * 1233 >> 12;
    size_t n = t + 1 - (v < pow10[t]);
    char *o = out + n;
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100);
        v /= 100;
        o -= 2;
        memcpy(o, pairs + 2 * d, 2);
    }
    if (v >= 10)
        memcpy(o - 2, pairs + 2 * v, 2);
    else
        o[-1] = (char)('0' + v);
    return n;
}

struct timeval
util_ms_to_tv(uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}
