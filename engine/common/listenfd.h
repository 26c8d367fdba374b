/* listenfd.h - listening sockets a process is started with: socket activation and upgrades. */
#ifndef SLUICE_LISTENFD_H
#define SLUICE_LISTENFD_H

#include <stddef.h>

/* The variable an upgrade names the sockets it hands over in ("listen:5,listen:6,admin:7"). */
#define LISTENFD_ENV "SLUICE_INHERIT_FDS"
#define LISTENFD_MAX 256

struct listenfd {
    int fd;
    int admin; /* for the admin listener: named "admin" */
};

/*
 * Takes the listening sockets this process was started with: the service
 * manager's (sd_listen_fds(3): LISTEN_PID names this process, LISTEN_FDS
 * sockets from descriptor 3 on, LISTEN_FDNAMES their names, FileDescriptorName=
 * of the socket unit) or, without those, the ones LISTENFD_ENV names. A
 * socket named "admin" is the admin listener's; every other one the server's.
 * The variables are unset, so that no child sees them. Each must be a
 * listening TCP socket; it is made non-blocking and close-on-exec. Fills
 * out[0..cap) and returns how many (0: none), or -1 with a message in err
 * (the sockets are left open).
 */
int listenfd_take(struct listenfd *out, int cap, char *err, size_t errlen);

/*
 * The local address of socket fd as text ("127.0.0.1", "::1") in addr (cap
 * bytes) and its port in *port. Returns 0, or -1.
 */
int listenfd_address(int fd, char *addr, size_t cap, int *port);

/*
 * The value of LISTENFD_ENV naming n server sockets and, when admin_fd >= 0,
 * the admin listener's: a new string, "listen:5,listen:6,admin:7".
 */
char *listenfd_format(const int *fds, unsigned n, int admin_fd);

#endif
