/* logwriter.c - a log file fed by many threads, each through a ring of its own, and written by
 * one thread of its own: at least every flush period, reopened on request, and when a ring is
 * full its lines are dropped and counted, never waited for. */
#define _GNU_SOURCE
#include "logwriter.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* 4 MiB: some 12,000 access-log lines, drained from a quarter full, so one write of 1 MiB per
 * 3,000 lines. On a core that serves too, each drain sweeps the serving thread's data out of
 * the caches once, whatever its size: measured side by side on the hit path
 * (bench/observability.sh), rings of 4 MiB cost 0.3-1.1% of a hit less than rings of 1 MiB,
 * and those 1.2% less than rings of 256 KiB. */
#define DEFAULT_RING_BYTES (4u << 20)
#define DEFAULT_FLUSH_MS 200
#define PREFETCH_BYTES 512

/* A ring of at least this many bytes is put on huge pages where the kernel allows it
 * (madvise): a line a few hundred bytes long starts a new 4 KiB page every ten or so lines,
 * each a TLB miss for the producer and for the writing thread. */
#define HUGE_PAGE_BYTES (2u << 20)

/* A regular file is given its blocks this far ahead of its end (fallocate, size kept): ext4
 * then maps each page a write dirties to blocks it has, rather than reserving them page by
 * page, which was a third of the writing thread's CPU. At most this much of a file's disk
 * space is past its end when it is closed or rotated away. */
#define PREALLOC_BYTES (1u << 20)

/*
 * One producer's ring: a single producer and a single consumer, no lock. head
 * and tail count bytes since the start (they never wrap); the bytes of
 * [tail, head) are lines waiting, at offset % cap. The producer alone writes
 * head, lines and dropped; the writing thread alone writes tail. Each side
 * publishes with a release store what the other reads with an acquire load.
 */
struct ring {
    _Alignas(64) uint64_t head;
    uint64_t lines, dropped;
    int kicked; /* the producer woke the writer and it has not drained since */
    _Alignas(64) uint64_t tail;
    char *buf;
    size_t cap;
};

struct logwriter {
    char *path;
    int fd;
    bool to_stdout;
    int efd; /* eventfd: producers and logwriter_reopen() wake the thread */
    uint64_t flush_ms;
    unsigned nrings;
    struct ring *rings;
    struct iovec *iov; /* two per ring: the writing thread's */
    uint64_t *heads;   /* one per ring: the writing thread's */
    bool prealloc;     /* fd is a regular file that takes fallocate(FALLOC_FL_KEEP_SIZE) */
    uint64_t end;      /* where the file ends, as the writing thread last wrote it */
    uint64_t alloc_to; /* the file has its blocks up to here */
    pthread_t thread;
    int stop, reopen;                      /* atomic requests to the thread */
    uint64_t bytes, reopens, write_errors; /* written by the thread, read relaxed */
};

static void
bump(uint64_t *c, uint64_t n)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static void
wake(struct logwriter *lw)
{
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(lw->efd, &one, sizeof(one));
    while (n < 0 && errno == EINTR);
}

/* Wakes the writing thread once a quarter of r is in use (once until it drains). */
static void
kick_at_quarter(struct logwriter *lw, struct ring *r, uint64_t used)
{
    if (used >= r->cap / 4 && !__atomic_exchange_n(&r->kicked, 1, __ATOMIC_ACQ_REL))
        wake(lw);
}

char *
logwriter_reserve(struct logwriter *lw, unsigned producer, size_t max)
{
    struct ring *r = &lw->rings[producer];
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    size_t off = (size_t)(r->head % r->cap);
    if (max > r->cap - (r->head - tail) || max > r->cap - off)
        return NULL;
    return r->buf + off;
}

void
logwriter_commit(struct logwriter *lw, unsigned producer, size_t len)
{
    struct ring *r = &lw->rings[producer];
    uint64_t head = r->head + len;
    __atomic_store_n(&r->head, head, __ATOMIC_RELEASE);
    /* The next line's place, asked for now so that it is in the cache when it is written
     * (a ring this size is not, and each line would wait for its cache lines). */
    size_t off = (size_t)(head % r->cap);
    for (size_t i = 0; i < PREFETCH_BYTES && off + i < r->cap; i += 64)
        __builtin_prefetch(r->buf + off + i, 1, 3);
    bump(&r->lines, 1);
    kick_at_quarter(lw, r, head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE));
}

bool
logwriter_put(struct logwriter *lw, unsigned producer, const char *line, size_t len)
{
    struct ring *r = &lw->rings[producer];
    uint64_t head = r->head;
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    if (len > r->cap - (head - tail)) {
        bump(&r->dropped, 1);
        if (!__atomic_exchange_n(&r->kicked, 1, __ATOMIC_ACQ_REL))
            wake(lw);
        return false;
    }
    size_t off = (size_t)(head % r->cap);
    size_t first = len < r->cap - off ? len : r->cap - off;
    memcpy(r->buf + off, line, first);
    memcpy(r->buf, line + first, len - first);
    __atomic_store_n(&r->head, head + len, __ATOMIC_RELEASE);
    bump(&r->lines, 1);
    kick_at_quarter(lw, r, head + len - tail);
    return true;
}

/* Room for a ring of cap bytes: aligned to huge pages when it takes whole ones. */
static char *
ring_alloc(size_t cap)
{
    if (cap < HUGE_PAGE_BYTES || cap % HUGE_PAGE_BYTES)
        return xmalloc(cap);
    void *p = NULL;
    if (posix_memalign(&p, HUGE_PAGE_BYTES, cap) != 0)
        return xmalloc(cap);
    (void)madvise(p, cap, MADV_HUGEPAGE); /* advice: without it, 4 KiB pages */
    return p;
}

/* Writes iov[0..n) whole to fd, going on after short writes. Returns 0, or -1 (errno). */
static int
writev_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n > IOV_MAX ? IOV_MAX : n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* The file's blocks for len more bytes at its end, allocated ahead when they are not. Its
 * size is looked at each time (once a drain): another writer may have grown it, and a
 * truncation (logrotate's copytruncate) frees the blocks past its new end. An optimisation
 * only: a write to blocks not allocated ahead allocates them as it goes. */
static void
prealloc(struct logwriter *lw, uint64_t len)
{
    struct stat st;
    if (!lw->prealloc || fstat(lw->fd, &st) != 0)
        return;
    uint64_t size = (uint64_t)st.st_size;
    bool shrunk = size < lw->end;
    lw->end = size;
    if (!shrunk && size + len <= lw->alloc_to)
        return;
    if (fallocate(lw->fd, FALLOC_FL_KEEP_SIZE, st.st_size, (off_t)(len + PREALLOC_BYTES)) == 0)
        lw->alloc_to = size + len + PREALLOC_BYTES;
    else if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
        lw->prealloc = false; /* the file system has no such thing; ENOSPC: try again later */
}

/* Whether fd is a regular file (to allocate ahead); it starts at its end. */
static void
watch_file(struct logwriter *lw)
{
    struct stat st;
    lw->prealloc = !lw->to_stdout && fstat(lw->fd, &st) == 0 && S_ISREG(st.st_mode);
    lw->end = lw->alloc_to = lw->prealloc ? (uint64_t)st.st_size : 0;
}

/* Writes what every ring holds in one writev (bytes that fail to be written are lost and
 * counted: a ring is never held for a file that cannot take it). */
static void
drain(struct logwriter *lw)
{
    int n = 0;
    uint64_t total = 0;
    uint64_t *heads = lw->heads;
    for (unsigned i = 0; i < lw->nrings; i++) {
        struct ring *r = &lw->rings[i];
        uint64_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        heads[i] = head;
        uint64_t len = head - r->tail;
        if (len == 0)
            continue;
        size_t off = (size_t)(r->tail % r->cap);
        size_t first = len < r->cap - off ? (size_t)len : r->cap - off;
        lw->iov[n++] = (struct iovec){r->buf + off, first};
        if (len > first)
            lw->iov[n++] = (struct iovec){r->buf, (size_t)len - first};
        total += len;
    }
    if (n > 0) {
        prealloc(lw, total);
        lw->end += total;
        if (writev_all(lw->fd, lw->iov, n) == 0)
            bump(&lw->bytes, total);
        else
            bump(&lw->write_errors, 1);
    }
    for (unsigned i = 0; i < lw->nrings; i++) {
        __atomic_store_n(&lw->rings[i].tail, heads[i], __ATOMIC_RELEASE);
        __atomic_store_n(&lw->rings[i].kicked, 0, __ATOMIC_RELEASE);
    }
}

static int
open_path(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

/* Opens the path again: what was drained went to the old file, what comes goes to the new. */
static void
reopen(struct logwriter *lw)
{
    if (lw->to_stdout)
        return;
    int fd = open_path(lw->path);
    if (fd < 0) {
        log_error("access log: reopening %s: %s; still writing to the old file", lw->path,
                  strerror(errno));
        bump(&lw->write_errors, 1);
        return;
    }
    close(lw->fd);
    lw->fd = fd;
    watch_file(lw);
    bump(&lw->reopens, 1);
}

static void *
writer_main(void *arg)
{
    struct logwriter *lw = arg;
    for (;;) {
        struct pollfd p = {.fd = lw->efd, .events = POLLIN};
        if (poll(&p, 1, (int)lw->flush_ms) > 0) {
            uint64_t v;
            if (read(lw->efd, &v, sizeof(v)) < 0 && errno != EAGAIN && errno != EINTR)
                log_error("access log: eventfd: %s", strerror(errno));
        }
        /* Both requests are taken before the drain: what was put before either was asked
         * is written (to the old file) before it is done. */
        bool stop = __atomic_load_n(&lw->stop, __ATOMIC_ACQUIRE);
        bool reopening = __atomic_exchange_n(&lw->reopen, 0, __ATOMIC_ACQ_REL);
        drain(lw);
        if (reopening)
            reopen(lw);
        if (stop)
            return NULL;
    }
}

struct logwriter *
logwriter_open(const struct logwriter_config *cfg, char *err, size_t errlen)
{
    struct logwriter *lw = xcalloc(1, sizeof(*lw));
    lw->path = xstrdup(cfg->path);
    lw->to_stdout = strcmp(cfg->path, "-") == 0;
    lw->fd = lw->to_stdout ? STDOUT_FILENO : open_path(cfg->path);
    lw->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    lw->flush_ms = cfg->flush_ms ? cfg->flush_ms : DEFAULT_FLUSH_MS;
    lw->nrings = cfg->producers ? cfg->producers : 1;
    lw->rings = xcalloc(lw->nrings, sizeof(*lw->rings));
    lw->iov = xcalloc(2 * (size_t)lw->nrings, sizeof(*lw->iov));
    lw->heads = xcalloc(lw->nrings, sizeof(*lw->heads));
    size_t cap = cfg->ring_bytes ? cfg->ring_bytes : DEFAULT_RING_BYTES;
    for (unsigned i = 0; i < lw->nrings; i++) {
        lw->rings[i].cap = cap;
        lw->rings[i].buf = ring_alloc(cap);
    }
    if (lw->fd < 0 || lw->efd < 0) {
        util_seterr(err, errlen, "%s: %s", cfg->path, strerror(errno));
        goto fail;
    }
    watch_file(lw);
    int rc = pthread_create(&lw->thread, NULL, writer_main, lw);
    if (rc != 0) {
        util_seterr(err, errlen, "starting the writing thread: %s", strerror(rc));
        goto fail;
    }
    return lw;
fail:
    if (lw->fd >= 0 && !lw->to_stdout)
        close(lw->fd);
    if (lw->efd >= 0)
        close(lw->efd);
    for (unsigned i = 0; i < lw->nrings; i++)
        free(lw->rings[i].buf);
    free(lw->rings);
    free(lw->iov);
    free(lw->heads);
    free(lw->path);
    free(lw);
    return NULL;
}

void
logwriter_reopen(struct logwriter *lw)
{
    __atomic_store_n(&lw->reopen, 1, __ATOMIC_RELEASE);
    wake(lw);
}

void
logwriter_stats(struct logwriter *lw, struct logwriter_stats *st)
{
    memset(st, 0, sizeof(*st));
    for (unsigned i = 0; i < lw->nrings; i++) {
        st->lines += __atomic_load_n(&lw->rings[i].lines, __ATOMIC_RELAXED);
        st->dropped += __atomic_load_n(&lw->rings[i].dropped, __ATOMIC_RELAXED);
    }
    st->bytes = __atomic_load_n(&lw->bytes, __ATOMIC_RELAXED);
    st->reopens = __atomic_load_n(&lw->reopens, __ATOMIC_RELAXED);
    st->write_errors = __atomic_load_n(&lw->write_errors, __ATOMIC_RELAXED);
}

const char *
logwriter_path(const struct logwriter *lw)
{
    return lw->path;
}

void
logwriter_close(struct logwriter *lw)
{
    if (!lw)
        return;
    __atomic_store_n(&lw->stop, 1, __ATOMIC_RELEASE);
    wake(lw);
    pthread_join(lw->thread, NULL);
    if (!lw->to_stdout)
        close(lw->fd);
    close(lw->efd);
    for (unsigned i = 0; i < lw->nrings; i++)
        free(lw->rings[i].buf);
    free(lw->rings);
    free(lw->iov);
    free(lw->heads);
    free(lw->path);
    free(lw);
}
