/* reload.c - policy generations: reloading a directory, watching it, and reporting status. */
#define _GNU_SOURCE
#include "reload.h"

#include <errno.h>
#include <event2/event.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "gateway.h"
#include "log.h"
#include "policy.h"
#include "sql_check.h"
#include "tenant.h"
#include "tenant_hooks.h"
#include "util.h"

#define WATCH_MASK                                                                                 \
    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF |       \
     IN_ATTRIB)

#define RETIRED_MAX 16
#define SWEEP_MS 100 /* how often the watcher frees retired snapshots nobody holds any more */

struct reloader {
    char *dir;
    struct gateway *g;
    pthread_mutex_t load_lock; /* serializes reloads: held while a directory loads */
    pthread_mutex_t lock;      /* guards everything below, never held while a directory loads;
                                  the snapshot serving is the gateway's (gateway_policy) */
    uint64_t reloads, failures;
    time_t last_time;
    char *last_trigger;
    int last_ok;
    char *last_error; /* of the last failed reload; kept until a reload succeeds */
    bool check_sql;   /* reloads check the new set's SQL against the database ... */
    char *conninfo;   /* ... at this conninfo (NULL: the PG* environment) */

    /* Snapshots that served before, each with a reference of ours, kept until ours is the
     * last: freeing a snapshot of thousands of endpoints takes as many free() calls, which must
     * not run on a worker between two requests (nor contend there with a reload that
     * allocates). Guarded by load_lock. */
    struct policy *retired[RETIRED_MAX];
    size_t nretired;

    /* watcher */
    int ifd, wd_dir, wd_tenants;
    struct key_dir {
        int wd;
        char *path; /* a directory holding a file the policy reads (a key file) */
    } * key_dirs;   /* the watcher thread's own */
    size_t nkey_dirs;
    struct event_base *base;
    struct event *ev_inotify, *ev_debounce, *ev_stop, *ev_refresh, *ev_sweep;
    struct timeval debounce;
    pthread_t thread;
    int watching;
};

struct reloader *
reloader_new(const char *dir, struct gateway *g)
{
    struct reloader *r = xcalloc(1, sizeof(*r));
    r->dir = xstrdup(dir);
    r->g = g;
    pthread_mutex_init(&r->load_lock, NULL);
    pthread_mutex_init(&r->lock, NULL);
    r->last_time = time(NULL);
    r->last_trigger = xstrdup("start");
    r->last_ok = 1;
    r->ifd = r->wd_dir = r->wd_tenants = -1;
    return r;
}

/* Frees the retired snapshots that nobody else holds any more. Called with load_lock held. */
static void
sweep_retired(struct reloader *r)
{
    size_t kept = 0;
    for (size_t i = 0; i < r->nretired; i++)
        if (!policy_release_if_last(r->retired[i]))
            r->retired[kept++] = r->retired[i];
    r->nretired = kept;
}

/* Keeps our reference to p, which no longer serves, until it is the last one (sweep_retired).
 * Called with load_lock held. */
static void
retire(struct reloader *r, struct policy *p)
{
    if (r->nretired == RETIRED_MAX) {
        /* Held for long (a request that takes minutes): its last holder frees it. */
        policy_release(r->retired[0]);
        memmove(r->retired, r->retired + 1, (RETIRED_MAX - 1) * sizeof(*r->retired));
        r->nretired--;
    }
    r->retired[r->nretired++] = p;
    sweep_retired(r);
}

void
reloader_check_sql(struct reloader *r, const char *conninfo)
{
    free(r->conninfo);
    r->conninfo = conninfo ? xstrdup(conninfo) : NULL;
    r->check_sql = true;
}

/*
 * Checks the SQL of p, a set that loaded, against the database. Returns p, or NULL (p released)
 * with the database's "file:line: message" lines in *errs when it refused the set. Runs on the
 * reload's own thread, with load_lock held.
 */
static struct policy *
check_sql(struct reloader *r, struct policy *p, const char *trigger, char **errs)
{
    if (!p || !r->check_sql)
        return p;
    char why[512];
    char *refused = NULL;
    int rc = sql_check_policy(p, r->conninfo, SQL_CHECK_BUDGET_MS, &refused, why, sizeof(why));
    if (rc < 0)
        log_warn("reload of %s (%s): its SQL was not verified against the database (%s); "
                 "loading it anyway",
                 r->dir, trigger, why);
    if (rc <= 0)
        return p;
    free(*errs);
    *errs = refused;
    policy_release(p);
    return NULL;
}

int
reloader_reload(struct reloader *r, const char *trigger, char **errors)
{
    pthread_mutex_lock(&r->load_lock);
    char *errs = NULL;
    struct policy *cur = gateway_policy(r->g); /* only reloads change it: they are serialized */
    uint64_t gen = cur->generation + 1;
    struct policy_leftover *rest;
    struct policy *p = policy_load_then(r->dir, gen, cur, &errs, &rest);
    p = check_sql(r, p, trigger, &errs);
    /* Status waits for the publication and its record, never for the load. */
    pthread_mutex_lock(&r->lock);
    r->last_time = time(NULL);
    free(r->last_trigger);
    r->last_trigger = xstrdup(trigger);
    r->reloads++;
    int rc = 0;
    if (p) {
        gateway_set_policy(r->g, p);
        retire(r, cur);
        cur = NULL;
        r->last_ok = 1;
        free(r->last_error);
        r->last_error = NULL;
        log_info("reloaded %s (%s): generation %llu, %zu endpoints", r->dir, trigger,
                 (unsigned long long)gen, p->nendpoints);
        if (p->tenant_errors)
            log_warn("tenant files that did not load (each tenant keeps its last "
                     "good version, if any):\n%s",
                     p->tenant_errors);
    } else {
        r->failures++;
        r->last_ok = 0;
        free(r->last_error);
        r->last_error = xstrdup(errs ? errs : "policy rejected\n");
        log_error("reload of %s (%s) failed; still serving generation %llu:\n%s", r->dir, trigger,
                  (unsigned long long)cur->generation, r->last_error);
        rc = -1;
    }
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_unlock(&r->load_lock);
    if (p && r->watching)
        event_active(r->ev_refresh, EV_TIMEOUT, 0); /* its key files may be in new directories */
    policy_release(p);
    policy_release(cur);
    policy_leftover_free(rest); /* once the new generation serves */
    if (errors)
        *errors = errs;
    else
        free(errs);
    return rc;
}

json_t *
reloader_status(struct reloader *r)
{
    pthread_mutex_lock(&r->lock);
    struct policy *p = gateway_policy(r->g); /* published under the lock, with its record */
    json_t *files = json_array();
    for (size_t i = 0; i < p->nfiles; i++)
        json_array_append_new(
            files, json_pack("{s:s, s:s}", "path", p->files[i].path, "hash", p->files[i].hash));
    char when[32];
    struct tm tm;
    gmtime_r(&r->last_time, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *last = json_pack("{s:s, s:s, s:s}", "time", when, "trigger", r->last_trigger, "result",
                             r->last_ok ? "ok" : "error");
    json_object_set_new(last, "error", r->last_error ? json_string(r->last_error) : json_null());
    json_t *tenants = json_array();
    for (size_t i = 0; i < p->ntenants; i++)
        json_array_append_new(tenants, json_pack("{s:s, s:s, s:b, s:i}", "name", p->tenants[i].name,
                                                 "file", p->tenants[i].file, "last_good_version",
                                                 p->tenants[i].last_good, "hooks",
                                                 (int)p->tenants[i].nhooks));
    json_t *terr = json_array();
    for (const char *l = p->tenant_errors; l && *l;) {
        const char *nl = strchr(l, '\n');
        size_t len = nl ? (size_t)(nl - l) : strlen(l);
        if (len)
            json_array_append_new(terr, json_stringn(l, len));
        l += len + (nl ? 1 : 0);
    }
    json_t *o = json_pack("{s:s, s:I, s:I, s:o, s:I, s:I, s:o}", "directory", r->dir, "generation",
                          (json_int_t)p->generation, "endpoints", (json_int_t)p->nendpoints,
                          "files", files, "reloads", (json_int_t)r->reloads, "reload_failures",
                          (json_int_t)r->failures, "last_reload", last);
    char hash[17];
    policy_hash(p, hash);
    json_object_set_new(o, "hash", json_string(hash));
    json_object_set_new(o, "tenants", tenants);
    json_object_set_new(o, "tenant_errors", terr);
    json_object_set_new(o, "hook_stats", tenant_stats_json());
    pthread_mutex_unlock(&r->lock);
    policy_release(p);
    return o;
}

/* ---- watching ---------------------------------------------------------------------------- */

static void
watch_tenants(struct reloader *r)
{
    if (r->wd_tenants >= 0)
        return;
    char *t = xasprintf("%s/tenants", r->dir);
    r->wd_tenants = inotify_add_watch(r->ifd, t, WATCH_MASK);
    free(t);
}

/* The directory (a new string) of a file path, or NULL when it has none. */
static char *
dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? xstrndup(path, (size_t)(slash - path)) : NULL;
}

/* Watches the directories of the files the policy serving reads besides its *.lua files (key
 * files, which may sit in a subdirectory), so that replacing one reloads the policy. */
static void
watch_key_dirs(struct reloader *r)
{
    struct policy *p = gateway_policy(r->g);
    char *tenants = xasprintf("%s/tenants", r->dir);
    for (size_t i = 0; i < p->nfiles; i++) {
        size_t len = strlen(p->files[i].path);
        if (len > 4 && strcmp(p->files[i].path + len - 4, ".lua") == 0)
            continue;
        char *d = dir_of(p->files[i].path);
        bool known = !d || strcmp(d, r->dir) == 0 || strcmp(d, tenants) == 0;
        for (size_t k = 0; !known && k < r->nkey_dirs; k++)
            known = strcmp(r->key_dirs[k].path, d) == 0;
        int wd = known ? -1 : inotify_add_watch(r->ifd, d, WATCH_MASK);
        if (wd >= 0) {
            r->key_dirs = xrealloc(r->key_dirs, (r->nkey_dirs + 1) * sizeof(*r->key_dirs));
            r->key_dirs[r->nkey_dirs].wd = wd;
            r->key_dirs[r->nkey_dirs++].path = d;
            d = NULL;
        }
        free(d);
    }
    free(tenants);
    policy_release(p);
}

static void
on_refresh(evutil_socket_t fd, short what, void *arg)
{
    watch_key_dirs(arg);
}

static void
on_debounce(evutil_socket_t fd, short what, void *arg)
{
    struct reloader *r = arg;
    reloader_reload(r, "inotify", NULL);
}

/* Whether dir/name (name len bytes) is a file the policy serving reads besides its *.lua. */
static bool
is_read_file(struct reloader *r, const char *dir, const char *name)
{
    struct policy *p = gateway_policy(r->g);
    size_t dlen = strlen(dir), nlen = strlen(name);
    bool hit = false;
    for (size_t i = 0; i < p->nfiles && !hit; i++) {
        const char *f = p->files[i].path;
        hit = strlen(f) == dlen + 1 + nlen && memcmp(f, dir, dlen) == 0 && f[dlen] == '/' &&
              memcmp(f + dlen + 1, name, nlen) == 0;
    }
    policy_release(p);
    return hit;
}

/* The directory path of watch wd (borrowed; tenants_buf for the tenants directory), or NULL. */
static const char *
watched_dir(struct reloader *r, int wd, char *tenants_buf, size_t len)
{
    if (wd == r->wd_dir)
        return r->dir;
    if (wd == r->wd_tenants) {
        snprintf(tenants_buf, len, "%s/tenants", r->dir);
        return tenants_buf;
    }
    for (size_t k = 0; k < r->nkey_dirs; k++)
        if (r->key_dirs[k].wd == wd)
            return r->key_dirs[k].path;
    return NULL;
}

/* Forgets the key directory of watch wd (its directory went away). */
static void
forget_key_dir(struct reloader *r, int wd)
{
    for (size_t k = 0; k < r->nkey_dirs; k++)
        if (r->key_dirs[k].wd == wd) {
            free(r->key_dirs[k].path);
            r->key_dirs[k] = r->key_dirs[--r->nkey_dirs];
            return;
        }
}

static void
on_inotify(evutil_socket_t fd, short what, void *arg)
{
    struct reloader *r = arg;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int relevant = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            p += sizeof(*ev) + ev->len;
            if (ev->wd == r->wd_tenants && (ev->mask & (IN_DELETE_SELF | IN_IGNORED)))
                r->wd_tenants = -1;
            if (ev->wd == r->wd_dir && ev->len && strcmp(ev->name, "tenants") == 0)
                watch_tenants(r);
            if (ev->mask & IN_IGNORED)
                forget_key_dir(r, ev->wd);
            /* Editors write temporary files: only *.lua names (or the tenants dir) matter, and
             * the files the policy reads (key files). */
            size_t len = ev->len ? strlen(ev->name) : 0;
            char tbuf[PATH_MAX];
            const char *dir = len ? watched_dir(r, ev->wd, tbuf, sizeof(tbuf)) : NULL;
            if ((len > 4 && strcmp(ev->name + len - 4, ".lua") == 0 &&
                 (ev->wd == r->wd_dir || ev->wd == r->wd_tenants)) ||
                (ev->len && strcmp(ev->name, "tenants") == 0) || (ev->mask & IN_DELETE_SELF) ||
                (dir && is_read_file(r, dir, ev->name)))
                relevant = 1;
        }
    }
    if (relevant)
        evtimer_add(r->ev_debounce, &r->debounce); /* restarts the debounce window */
}

static void
on_sweep(evutil_socket_t fd, short what, void *arg)
{
    struct reloader *r = arg;
    if (pthread_mutex_trylock(&r->load_lock) != 0)
        return; /* a reload runs: it sweeps when it is done */
    sweep_retired(r);
    pthread_mutex_unlock(&r->load_lock);
}

static void
on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct reloader *r = arg;
    event_base_loopexit(r->base, NULL);
}

static void *
watch_main(void *arg)
{
    struct reloader *r = arg;
    pthread_setname_np(pthread_self(), "sluice-reload"); /* for top -H, perf, bench/routing.sh */
    event_base_dispatch(r->base);
    return NULL;
}

int
reloader_watch(struct reloader *r, uint64_t debounce_ms, char *err, size_t errlen)
{
    r->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (r->ifd < 0) {
        snprintf(err, errlen, "inotify: %s", strerror(errno));
        return -1;
    }
    r->wd_dir = inotify_add_watch(r->ifd, r->dir, WATCH_MASK);
    if (r->wd_dir < 0) {
        snprintf(err, errlen, "cannot watch %s: %s", r->dir, strerror(errno));
        close(r->ifd);
        r->ifd = -1;
        return -1;
    }
    watch_tenants(r);
    r->debounce.tv_sec = (time_t)(debounce_ms / 1000);
    r->debounce.tv_usec = (suseconds_t)(debounce_ms % 1000) * 1000;
    r->base = event_base_new();
    r->ev_inotify = event_new(r->base, r->ifd, EV_READ | EV_PERSIST, on_inotify, r);
    r->ev_debounce = evtimer_new(r->base, on_debounce, r);
    r->ev_stop = event_new(r->base, -1, 0, on_stop, r);
    r->ev_refresh = event_new(r->base, -1, 0, on_refresh, r);
    r->ev_sweep = event_new(r->base, -1, EV_PERSIST, on_sweep, r);
    event_add(r->ev_inotify, NULL);
    struct timeval sweep = {0, SWEEP_MS * 1000};
    event_add(r->ev_sweep, &sweep);
    watch_key_dirs(r);
    if (pthread_create(&r->thread, NULL, watch_main, r) != 0) {
        snprintf(err, errlen, "cannot start the watcher thread");
        return -1;
    }
    r->watching = 1;
    return 0;
}

void
reloader_free(struct reloader *r)
{
    if (!r)
        return;
    if (r->watching) {
        event_active(r->ev_stop, EV_TIMEOUT, 0);
        pthread_join(r->thread, NULL);
    }
    if (r->base) {
        event_free(r->ev_inotify);
        event_free(r->ev_debounce);
        event_free(r->ev_stop);
        event_free(r->ev_refresh);
        event_free(r->ev_sweep);
        event_base_free(r->base);
    }
    for (size_t i = 0; i < r->nretired; i++)
        policy_release(r->retired[i]);
    if (r->ifd >= 0)
        close(r->ifd);
    for (size_t k = 0; k < r->nkey_dirs; k++)
        free(r->key_dirs[k].path);
    free(r->key_dirs);
    free(r->dir);
    free(r->last_trigger);
    free(r->last_error);
    free(r->conninfo);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->load_lock);
    free(r);
}
