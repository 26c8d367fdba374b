/* upgrade.c - replacing the running binary without closing its listening sockets (SIGUSR2). */
#define _GNU_SOURCE
#include "upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "listenfd.h"
#include "util.h"

extern char **environ;

struct upgrade {
    pid_t pid;
    int rfd; /* the read end of the pipe */
    int state;
    uint64_t deadline_us;
};

int
upgrade_ready_fd(void)
{
    const char *v = getenv(UPGRADE_READY_ENV);
    char *end;
    long fd = v && v[0] ? strtol(v, &end, 10) : -1;
    unsetenv(UPGRADE_READY_ENV);
    if (fd < 0 || *end || fcntl((int)fd, F_GETFD) < 0)
        return -1;
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return (int)fd;
}

/* Whether environment entry e ("NAME=value") is one the new process gets from us instead. */
static int
replaced(const char *e)
{
    static const char *const names[] = {LISTENFD_ENV,    UPGRADE_READY_ENV, "WATCHDOG_USEC",
                                        "WATCHDOG_PID",  "LISTEN_PID",      "LISTEN_FDS",
                                        "LISTEN_FDNAMES"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t n = strlen(names[i]);
        if (strncmp(e, names[i], n) == 0 && e[n] == '=')
            return 1;
    }
    return 0;
}

struct upgrade *
upgrade_start(const char *path, char *const argv[], const int *fds, unsigned nfds, int admin_fd,
              uint64_t watchdog_usec, uint64_t timeout_ms, char *err, size_t errlen)
{
    struct upgrade *u = NULL;
    int p[2] = {-1, -1};
    size_t nenv = 0;
    while (environ[nenv])
        nenv++;
    char **envp = xcalloc(nenv + 4, sizeof(*envp));
    /* In the new process the sockets are 3, 4, ... and the pipe follows them; every other
     * descriptor is closed there (a connection to Redis, say, has no business in it). */
    unsigned nsrc = nfds + (admin_fd >= 0) + 1;
    int *src = xcalloc(nsrc, sizeof(*src)), *dst = xcalloc(nsrc, sizeof(*dst));
    char *inherit = NULL, *vars[3] = {NULL, NULL, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);

    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
        util_seterr(err, errlen, "pipe: %s", strerror(errno));
        goto out;
    }
    /* The write end blocks as usual in the new process, which writes one byte. */
    fcntl(p[1], F_SETFL, fcntl(p[1], F_GETFL) & ~O_NONBLOCK);
    unsigned m = 0;
    for (unsigned i = 0; i < nfds; i++)
        src[m++] = fds[i];
    if (admin_fd >= 0)
        src[m++] = admin_fd;
    src[m++] = p[1];
    int high = 2;
    for (unsigned i = 0; i < nsrc; i++) {
        high = src[i] > high ? src[i] : high;
        dst[i] = 3 + (int)i;
    }
    inherit = listenfd_format(dst, nfds, admin_fd >= 0 ? dst[nfds] : -1);
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++)
        if (!replaced(environ[i]))
            envp[k++] = environ[i];
    envp[k++] = vars[0] = xasprintf("%s=%s", LISTENFD_ENV, inherit);
    envp[k++] = vars[1] = xasprintf("%s=%d", UPGRADE_READY_ENV, dst[nsrc - 1]);
    if (watchdog_usec)
        envp[k++] = vars[2] = xasprintf("WATCHDOG_USEC=%llu", (unsigned long long)watchdog_usec);
    envp[k] = NULL;

    /* Above every source first, so that no move overwrites a source not moved yet; a
     * descriptor dup2 makes has no close-on-exec flag. */
    for (unsigned i = 0; i < nsrc; i++)
        posix_spawn_file_actions_adddup2(&fa, src[i], high + 1 + (int)i);
    for (unsigned i = 0; i < nsrc; i++)
        posix_spawn_file_actions_adddup2(&fa, high + 1 + (int)i, dst[i]);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3 + (int)nsrc);
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    pid_t pid;
    int rc = strchr(path, '/') ? posix_spawn(&pid, path, &fa, &attr, argv, envp)
                               : posix_spawnp(&pid, path, &fa, &attr, argv, envp);
    if (rc != 0) {
        util_seterr(err, errlen, "cannot start %s: %s", path, strerror(rc));
        goto out;
    }
    u = xcalloc(1, sizeof(*u));
    u->pid = pid;
    u->rfd = p[0];
    p[0] = -1;
    u->state = UPGRADE_PENDING;
    u->deadline_us = util_mono_us() + timeout_ms * 1000;
out:
    if (p[0] >= 0)
        close(p[0]);
    if (p[1] >= 0)
        close(p[1]);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    for (int i = 0; i < 3; i++)
        free(vars[i]);
    free(inherit);
    free(envp);
    free(src);
    free(dst);
    return u;
}

/* Reaps the new process (killing it when it does not end within a second); says how it ended. */
static void
reap(struct upgrade *u, const char *why, char *err, size_t errlen)
{
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 100 && (r = waitpid(u->pid, &status, WNOHANG)) == 0; i++)
        usleep(10000);
    if (r == 0) {
        kill(u->pid, SIGKILL);
        r = waitpid(u->pid, &status, 0);
    }
    if (r != u->pid)
        util_seterr(err, errlen, "new process %d %s", (int)u->pid, why);
    else if (WIFEXITED(status))
        util_seterr(err, errlen, "new process %d %s: it exited with status %d", (int)u->pid, why,
                    WEXITSTATUS(status));
    else
        util_seterr(err, errlen, "new process %d %s: it was killed by signal %d (%s)", (int)u->pid,
                    why, WTERMSIG(status), strsignal(WTERMSIG(status)));
}

enum upgrade_state
upgrade_poll(struct upgrade *u, char *err, size_t errlen)
{
    if (u->state != UPGRADE_PENDING)
        return u->state;
    char c;
    ssize_t n = read(u->rfd, &c, 1);
    if (n == 1) {
        u->state = UPGRADE_READY;
    } else if (n == 0) {
        reap(u, "ended before it was ready", err, errlen);
        u->state = UPGRADE_FAILED;
    } else if (errno == EAGAIN || errno == EINTR) {
        if (util_mono_us() < u->deadline_us)
            return UPGRADE_PENDING;
        kill(u->pid, SIGKILL);
        reap(u, "was not ready in time and was killed", err, errlen);
        u->state = UPGRADE_FAILED;
    } else {
        kill(u->pid, SIGKILL);
        reap(u, "could not be followed", err, errlen);
        u->state = UPGRADE_FAILED;
    }
    close(u->rfd);
    u->rfd = -1;
    return u->state;
}

pid_t
upgrade_pid(const struct upgrade *u)
{
    return u->pid;
}

void
upgrade_free(struct upgrade *u)
{
    if (!u)
        return;
    if (u->state == UPGRADE_PENDING) {
        char err[160];
        kill(u->pid, SIGKILL);
        reap(u, "killed", err, sizeof(err));
    }
    if (u->rfd >= 0)
        close(u->rfd);
    free(u);
}
