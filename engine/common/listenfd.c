/* listenfd.c - listening sockets a process is started with: socket activation and upgrades. */
#include "listenfd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

#define SD_LISTEN_FDS_START 3

/* Checks that fd is a listening TCP socket and sets it up. Returns 0, or -1 with err. */
static int
adopt(int fd, char *err, size_t errlen)
{
    int v = 0;
    socklen_t sl = sizeof(v);
    struct sockaddr_storage ss;
    socklen_t al = sizeof(ss);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &sl) != 0 || !v) {
        util_seterr(err, errlen, "inherited descriptor %d is not a listening socket", fd);
        return -1;
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &al) != 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
        util_seterr(err, errlen, "inherited descriptor %d is not a TCP socket", fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    int fdfl = fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 ||
        fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) != 0) {
        util_seterr(err, errlen, "inherited descriptor %d: %s", fd, strerror(errno));
        return -1;
    }
    return 0;
}

/* A non-negative decimal number filling s whole, or -1. */
static long
number(const char *s)
{
    char *end;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno || *end ? -1 : v;
}

/* The service manager's sockets. Returns how many, or -1. */
static int
take_systemd(struct listenfd *out, int cap, char *err, size_t errlen)
{
    long pid = number(getenv("LISTEN_PID")), n = number(getenv("LISTEN_FDS"));
    char *names = xstrdup(getenv("LISTEN_FDNAMES") ? getenv("LISTEN_FDNAMES") : "");
    int rc = 0;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (pid != (long)getpid() || n <= 0)
        goto out;
    if (n > cap) {
        util_seterr(err, errlen, "LISTEN_FDS=%ld: more sockets than the %d sluice takes", n, cap);
        rc = -1;
        goto out;
    }
    char *save = NULL, *name = strtok_r(names, ":", &save);
    for (int i = 0; i < n; i++) {
        out[i].fd = SD_LISTEN_FDS_START + i;
        out[i].admin = name && strcmp(name, "admin") == 0;
        name = name ? strtok_r(NULL, ":", &save) : NULL;
        if (adopt(out[i].fd, err, errlen) != 0) {
            rc = -1;
            goto out;
        }
    }
    rc = (int)n;
out:
    free(names);
    return rc;
}

/* The sockets LISTENFD_ENV names. Returns how many, or -1. */
static int
take_upgrade(struct listenfd *out, int cap, char *err, size_t errlen)
{
    const char *v = getenv(LISTENFD_ENV);
    char *list = xstrdup(v ? v : "");
    int n = 0, rc = -1;
    unsetenv(LISTENFD_ENV);
    char *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        long fd = colon ? number(colon + 1) : -1;
        if (fd < 0 || fd > 1 << 20) {
            util_seterr(err, errlen, "%s: '%s' is not NAME:FD", LISTENFD_ENV, item);
            goto out;
        }
        if (n == cap) {
            util_seterr(err, errlen, "%s: more sockets than the %d sluice takes", LISTENFD_ENV,
                        cap);
            goto out;
        }
        *colon = '\0';
        out[n].fd = (int)fd;
        out[n].admin = strcmp(item, "admin") == 0;
        if (adopt(out[n].fd, err, errlen) != 0)
            goto out;
        n++;
    }
    rc = n;
out:
    free(list);
    return rc;
}

int
listenfd_take(struct listenfd *out, int cap, char *err, size_t errlen)
{
    int n = take_systemd(out, cap, err, errlen);
    if (n != 0) {
        unsetenv(LISTENFD_ENV);
        return n;
    }
    return take_upgrade(out, cap, err, errlen);
}

int
listenfd_address(int fd, char *addr, size_t cap, int *port)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        *port = ntohs(sin->sin_port);
        return inet_ntop(AF_INET, &sin->sin_addr, addr, (socklen_t)cap) ? 0 : -1;
    }
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        *port = ntohs(sin6->sin6_port);
        return inet_ntop(AF_INET6, &sin6->sin6_addr, addr, (socklen_t)cap) ? 0 : -1;
    }
    return -1;
}

char *
listenfd_format(const int *fds, unsigned n, int admin_fd)
{
    struct sbuf b = {0};
    for (unsigned i = 0; i < n; i++) {
        sbuf_adds(&b, i ? ",listen:" : "listen:");
        sbuf_add_u64(&b, (uint64_t)fds[i]);
    }
    if (admin_fd >= 0) {
        sbuf_adds(&b, n ? ",admin:" : "admin:");
        sbuf_add_u64(&b, (uint64_t)admin_fd);
    }
    return b.p ? b.p : xstrdup("");
}
