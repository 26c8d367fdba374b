/* log.c - the error log: four levels, one line per message in text or JSON, one write(2) each. */
#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jsonstr.h"
#include "util.h"

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"};

static int cur_level = LOGL_INFO; /* relaxed atomics: set once, read on every message */
static int cur_format = LOG_TEXT;
static int cur_fd = 2;

int
log_parse_level(const char *s, enum log_level *lv)
{
    for (int i = 0; i <= LOGL_DEBUG; i++)
        if (strcmp(s, level_names[i]) == 0) {
            *lv = (enum log_level)i;
            return 0;
        }
    return -1;
}

int
log_parse_format(const char *s, enum log_format *fmt)
{
    for (int i = 0; i <= LOG_JSON; i++)
        if (strcmp(s, format_names[i]) == 0) {
            *fmt = (enum log_format)i;
            return 0;
        }
    return -1;
}

static void fatal_message(const char *msg) __attribute__((noreturn));

/* util.c's allocation failures, in the log's format. */
static void
fatal_message(const char *msg)
{
    log_abort("%s", msg);
}

void
log_configure(enum log_level lv, enum log_format fmt)
{
    util_fatal = fatal_message;
    __atomic_store_n(&cur_level, (int)lv, __ATOMIC_RELAXED);
    __atomic_store_n(&cur_format, (int)fmt, __ATOMIC_RELAXED);
}

void
log_set_fd(int fd)
{
    __atomic_store_n(&cur_fd, fd, __ATOMIC_RELAXED);
}

static char *file_path; /* the regular file cur_fd writes to, set once by log_follow_file() */

bool
log_follow_file(void)
{
    int fd = __atomic_load_n(&cur_fd, __ATOMIC_RELAXED);
    free(file_path);
    file_path = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink == 0)
        return false;
    char link[32], buf[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, sizeof(buf) - 1);
    if (n <= 0 || buf[0] != '/')
        return false;
    buf[n] = '\0';
    file_path = xstrdup(buf);
    return true;
}

int
log_reopen(void)
{
    if (!file_path)
        return 1;
    int fd = open(file_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    /* dup2 swaps the file under the same descriptor at once: every write goes to one file. */
    int rc = dup2(fd, __atomic_load_n(&cur_fd, __ATOMIC_RELAXED)) < 0 ? -1 : 0;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

const char *
log_file_path(void)
{
    return file_path;
}

bool
log_enabled(enum log_level lv)
{
    return (int)lv <= __atomic_load_n(&cur_level, __ATOMIC_RELAXED);
}

uint64_t
log_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static char *
put2(char *o, unsigned v)
{
    o[0] = (char)('0' + v / 10 % 10);
    o[1] = (char)('0' + v % 10);
    return o + 2;
}

size_t
log_time_rfc3339(uint64_t unix_ms, char *out)
{
    uint64_t secs = unix_ms / 1000;
    unsigned ms = (unsigned)(unix_ms % 1000);
    unsigned sod = (unsigned)(secs % 86400);
    /* Days to a civil date (Howard Hinnant's days_from_civil, inverted), in the proleptic
     * Gregorian calendar; eras of 400 years start on March 1. */
    int64_t z = (int64_t)(secs / 86400) + 719468;
    int64_t era = z / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned day = doy - (153 * mp + 2) / 5 + 1;
    unsigned month = mp < 10 ? mp + 3 : mp - 9;
    unsigned year = (unsigned)(yoe + era * 400) + (month <= 2);
    char *o = out;
    o = put2(o, year / 100);
    o = put2(o, year % 100);
    *o++ = '-';
    o = put2(o, month);
    *o++ = '-';
    o = put2(o, day);
    *o++ = 'T';
    o = put2(o, sod / 3600);
    *o++ = ':';
    o = put2(o, sod / 60 % 60);
    *o++ = ':';
    o = put2(o, sod % 60);
    *o++ = '.';
    *o++ = (char)('0' + ms / 100);
    o = put2(o, ms % 100);
    *o++ = 'Z';
    *o = '\0';
    return (size_t)(o - out);
}

/* The text form's prefix of each line: "TS LEVEL sluice: ". */
static void
text_prefix(struct sbuf *b, const char *ts, enum log_level lv)
{
    sbuf_add(b, ts, LOG_TIME_LEN);
    sbuf_add(b, " ", 1);
    sbuf_adds(b, level_names[lv]);
    sbuf_add(b, " sluice: ", 9);
}

/* Appends a message in the text form: a prefixed line per line of msg, controls as \xNN. */
static void
text_lines(struct sbuf *b, const char *ts, enum log_level lv, const char *msg, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    while (len > 0 && msg[len - 1] == '\n')
        len--;
    text_prefix(b, ts, lv);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c == '\n') {
            sbuf_add(b, "\n", 1);
            text_prefix(b, ts, lv);
        } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
            char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
            sbuf_add(b, e, 4);
        } else {
            sbuf_add(b, &msg[i], 1);
        }
    }
    sbuf_add(b, "\n", 1);
}

/* Formats one message of lv at unix_ms into b, in format fmt. */
static void
format_message(struct sbuf *b, enum log_format fmt, enum log_level lv, uint64_t unix_ms,
               const struct log_field *f, size_t nf, const char *msg, size_t len)
{
    char ts[LOG_TIME_LEN + 1];
    log_time_rfc3339(unix_ms, ts);
    if (fmt == LOG_TEXT) {
        text_lines(b, ts, lv, msg, len);
        return;
    }
    while (len > 0 && msg[len - 1] == '\n')
        len--;
    sbuf_add(b, "{\"ts\":\"", 7);
    sbuf_add(b, ts, LOG_TIME_LEN);
    sbuf_add(b, "\",\"level\":\"", 11);
    sbuf_adds(b, level_names[lv]);
    sbuf_add(b, "\",\"msg\":", 8);
    jsonstr_add(b, msg, len);
    for (size_t i = 0; i < nf; i++) {
        sbuf_add(b, ",", 1);
        jsonstr_adds(b, f[i].name);
        sbuf_add(b, ":", 1);
        jsonstr_adds(b, f[i].value);
    }
    sbuf_add(b, "}\n", 2);
}

/* Writes all of p[0..len) to fd: one write(2) unless the kernel takes less. */
static void
write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to say it */
        }
        p += n;
        len -= (size_t)n;
    }
}

void
log_vfields(enum log_level lv, const struct log_field *f, size_t nf, const char *fmt, va_list ap)
{
    if (!log_enabled(lv))
        return;
    char stack[1024];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(stack, sizeof(stack), fmt, ap2);
    va_end(ap2);
    char *msg = stack;
    if (n < 0) {
        n = 0;
        stack[0] = '\0';
    } else if ((size_t)n >= sizeof(stack)) {
        msg = xmalloc((size_t)n + 1);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
    }
    struct sbuf b = {0};
    format_message(&b, (enum log_format)__atomic_load_n(&cur_format, __ATOMIC_RELAXED), lv,
                   log_now_ms(), f, nf, msg, (size_t)n);
    write_all(__atomic_load_n(&cur_fd, __ATOMIC_RELAXED), b.p, b.len);
    sbuf_free(&b);
    if (msg != stack)
        free(msg);
}

void
log_fields(enum log_level lv, const struct log_field *f, size_t nf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vfields(lv, f, nf, fmt, ap);
    va_end(ap);
}

void
log_abort(const char *fmt, ...)
{
    char msg[513], line[LOG_TIME_LEN + 64 + JSONSTR_MAX(512)], ts[LOG_TIME_LEN + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;
    log_time_rfc3339(log_now_ms(), ts);
    size_t o = 0;
    if (__atomic_load_n(&cur_format, __ATOMIC_RELAXED) == LOG_JSON) {
        o +=
            (size_t)snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"error\",\"msg\":", ts);
        o += jsonstr_write(line + o, msg, len);
        line[o++] = '}';
    } else {
        o += (size_t)snprintf(line, sizeof(line), "%s error sluice: ", ts);
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)msg[i];
            line[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
        }
    }
    line[o++] = '\n';
    write_all(__atomic_load_n(&cur_fd, __ATOMIC_RELAXED), line, o);
    abort();
}

#define LOG_AT(name, lv)                                                                           \
    void name(const char *fmt, ...)                                                                \
    {                                                                                              \
        va_list ap;                                                                                \
        va_start(ap, fmt);                                                                         \
        log_vfields(lv, NULL, 0, fmt, ap);                                                         \
        va_end(ap);                                                                                \
    }

LOG_AT(log_error, LOGL_ERROR)
LOG_AT(log_warn, LOGL_WARN)
LOG_AT(log_info, LOGL_INFO)
LOG_AT(log_debug, LOGL_DEBUG)
