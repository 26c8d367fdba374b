/* service.c - running under a service manager: readiness, a watchdog fed by the workers'
 * heartbeats, reload and stop notices, status lines (sd_notify protocol). */
#include "service.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "sdnotify.h"
#include "util.h"

#define BEAT_MS_MAX 500          /* a worker's heartbeat without a watchdog (readiness needs one) */
#define BEAT_MS_MIN 10           /* under a very short watchdog */
#define STATUS_MS 5000           /* between two STATUS= lines */
#define READY_POLL_MS 20         /* while waiting for the workers' first heartbeats */
#define STALL_MAX_US 30000000ull /* the test hook's longest stall */

/* One worker's heartbeat, on a cache line of its own. */
struct beat {
    _Alignas(64) atomic_uint_fast64_t stamp_us; /* util_mono_us() of its last timer; 0: none */
    atomic_uint_fast64_t requests;
};

/* A worker's state as the wrapped application sees it. */
struct wrapped {
    struct service *svc;
    struct beat *beat;
    struct event *ev;
    void *inner;
};

struct service {
    struct server_app app; /* the wrapped one */
    unsigned nworkers;
    struct beat *beats;
    uint64_t beat_ms;
    uint64_t watchdog_us; /* 0: none */
    int notify;           /* NOTIFY_SOCKET is set */
    int ready_fd;
    int ready;
    uint64_t next_ping_us, next_status_us;
    uint64_t status_requests, status_at_us; /* at the last STATUS= */
    unsigned stuck_logged;                  /* 1 + the worker last said to be stuck; 0: none */
    const char *stall_file;                 /* the test hook (SLUICE_TEST_HOOKS builds) */
};

static void
on_beat(evutil_socket_t fd, short what, void *arg)
{
    struct wrapped *wr = arg;
#ifdef SLUICE_TEST_HOOKS
    /* Test builds: while the file SLUICE_TEST_STALL_FILE names exists, worker 0's loop is
     * stuck here, as a worker caught in a long computation would be. */
    if (wr->svc->stall_file && wr->beat == &wr->svc->beats[0]) {
        uint64_t start = util_mono_us();
        while (access(wr->svc->stall_file, F_OK) == 0 && util_mono_us() - start < STALL_MAX_US)
            usleep(10000);
    }
#endif
    atomic_store_explicit(&wr->beat->stamp_us, util_mono_us(), memory_order_relaxed);
}

static void *
wrap_init(struct worker *w, void *ctx)
{
    struct service *svc = ctx;
    unsigned i = server_worker_index(w);
    void *inner = NULL;
    if (svc->app.worker_init && !(inner = svc->app.worker_init(w, svc->app.ctx)))
        return NULL;
    struct wrapped *wr = xcalloc(1, sizeof(*wr));
    wr->svc = svc;
    wr->beat = &svc->beats[i < svc->nworkers ? i : svc->nworkers - 1];
    wr->inner = inner;
    wr->ev = event_new(server_worker_base(w), -1, EV_PERSIST, on_beat, wr);
    struct timeval tv = util_ms_to_tv(svc->beat_ms);
    event_add(wr->ev, &tv);
    event_active(wr->ev, EV_TIMEOUT, 0); /* the first beat as soon as the loop runs */
    return wr;
}

static void
wrap_fini(void *state)
{
    struct wrapped *wr = state;
    event_free(wr->ev);
    if (wr->svc->app.worker_fini)
        wr->svc->app.worker_fini(wr->inner);
    free(wr);
}

static void
wrap_handle(struct server_request *req, void *state)
{
    struct wrapped *wr = state;
    atomic_fetch_add_explicit(&wr->beat->requests, 1, memory_order_relaxed);
    wr->svc->app.handle(req, wr->inner);
}

/* Whether the wrapped application reads the body of this request itself (its stream_body). */
static int
wrap_stream_body(const struct server_request *req, void *state)
{
    struct wrapped *wr = state;
    return wr->svc->app.stream_body(req, wr->inner);
}

struct service *
service_new(unsigned workers)
{
    struct service *svc = xcalloc(1, sizeof(*svc));
    svc->nworkers = workers ? workers : 1;
    svc->beats = aligned_alloc(64, sizeof(struct beat) * svc->nworkers);
    if (!svc->beats) {
        log_abort("out of memory");
    }
    memset(svc->beats, 0, sizeof(struct beat) * svc->nworkers);
    svc->watchdog_us = sdnotify_watchdog_usec();
    const char *ns = getenv("NOTIFY_SOCKET");
    svc->notify = ns && ns[0];
    svc->ready_fd = -1;
    svc->beat_ms = BEAT_MS_MAX;
    if (svc->watchdog_us) {
        uint64_t ms = svc->watchdog_us / 8000;
        svc->beat_ms = ms < BEAT_MS_MIN ? BEAT_MS_MIN : ms > BEAT_MS_MAX ? BEAT_MS_MAX : ms;
    }
#ifdef SLUICE_TEST_HOOKS
    const char *stall = getenv("SLUICE_TEST_STALL_FILE");
    svc->stall_file = stall && stall[0] ? stall : NULL;
#endif
    return svc;
}

void
service_free(struct service *svc)
{
    if (!svc)
        return;
    if (svc->ready_fd >= 0)
        close(svc->ready_fd);
    free(svc->beats);
    free(svc);
}

struct server_app
service_wrap(struct service *svc, const struct server_app *app)
{
    svc->app = *app;
    return (struct server_app){.worker_init = wrap_init,
                               .worker_fini = wrap_fini,
                               .handle = wrap_handle,
                               .stream_body = app->stream_body ? wrap_stream_body : NULL,
                               .ctx = svc};
}

void
service_set_ready_fd(struct service *svc, int fd)
{
    svc->ready_fd = fd;
}

int
service_is_ready(const struct service *svc)
{
    return svc->ready;
}

uint64_t
service_requests(const struct service *svc)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < svc->nworkers; i++)
        n += atomic_load_explicit(&svc->beats[i].requests, memory_order_relaxed);
    return n;
}

/* The status line's text: generation, request rate since the last line, workers. */
static void
status_text(struct service *svc, uint64_t generation, const char *what, char *out, size_t cap)
{
    uint64_t now = util_mono_us(), n = service_requests(svc);
    double secs = svc->status_at_us ? (double)(now - svc->status_at_us) / 1e6 : 0;
    double rate = secs > 0 ? (double)(n - svc->status_requests) / secs : 0;
    snprintf(out, cap, "%sgeneration %" PRIu64 ", %.1f requests/s, %u workers", what, generation,
             rate, svc->nworkers);
    svc->status_requests = n;
    svc->status_at_us = now;
}

/* The first worker whose last heartbeat is max_age_us old or older (or never came); -1: none. */
static int
stale_worker(const struct service *svc, uint64_t now, uint64_t max_age_us)
{
    for (unsigned i = 0; i < svc->nworkers; i++) {
        uint64_t t = atomic_load_explicit(&svc->beats[i].stamp_us, memory_order_relaxed);
        if (t == 0 || (now > t && now - t >= max_age_us))
            return (int)i;
    }
    return -1;
}

uint64_t
service_tick(struct service *svc, uint64_t generation)
{
    uint64_t now = util_mono_us();
    if (!svc->ready) {
        if (stale_worker(svc, now, UINT64_MAX) >= 0)
            return READY_POLL_MS;
        svc->ready = 1;
        char st[160];
        status_text(svc, generation, "serving: ", st, sizeof(st));
        sdnotify_printf("READY=1\nSTATUS=%s", st);
        if (svc->ready_fd >= 0) {
            ssize_t w = write(svc->ready_fd, "R", 1);
            (void)w; /* a parent that went away reads nothing: nothing to do */
            close(svc->ready_fd);
            svc->ready_fd = -1;
        }
        svc->next_status_us = now + STATUS_MS * 1000ull;
        svc->next_ping_us = now;
    }
    uint64_t next = now + STATUS_MS * 1000ull;
    if (svc->watchdog_us) {
        uint64_t half = svc->watchdog_us / 2;
        if (now >= svc->next_ping_us) {
            int stuck = stale_worker(svc, now, half);
            if (stuck < 0) {
                sdnotify_send("WATCHDOG=1");
                svc->next_ping_us = now + half;
                if (svc->stuck_logged)
                    log_info("every worker's loop runs again: watchdog pings "
                             "go on");
                svc->stuck_logged = 0;
            } else {
                if (svc->stuck_logged != (unsigned)stuck + 1)
                    log_warn("worker %d's event loop has not run for %" PRIu64
                             " ms: no watchdog ping while it is stuck",
                             stuck, half / 1000);
                svc->stuck_logged = (unsigned)stuck + 1;
                svc->next_ping_us = now + svc->beat_ms * 1000ull;
            }
        }
        if (svc->next_ping_us < next)
            next = svc->next_ping_us;
    }
    if (svc->notify) {
        if (now >= svc->next_status_us) {
            char st[160];
            status_text(svc, generation, "serving: ", st, sizeof(st));
            sdnotify_printf("STATUS=%s", st);
            svc->next_status_us = now + STATUS_MS * 1000ull;
        }
        if (svc->next_status_us < next)
            next = svc->next_status_us;
    }
    return next > now ? (next - now + 999) / 1000 : 1;
}

void
service_reloading(struct service *svc)
{
    (void)svc;
    sdnotify_printf("RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading the policy",
                    util_mono_us());
}

void
service_reloaded(struct service *svc, uint64_t generation, int ok)
{
    char st[160];
    status_text(svc, generation, ok ? "reloaded: " : "reload failed, still serving: ", st,
                sizeof(st));
    sdnotify_printf("READY=1\nSTATUS=%s", st);
}

void
service_stopping(struct service *svc)
{
    (void)svc;
    sdnotify_send("STOPPING=1\nSTATUS=finishing requests in flight");
}
