/* upgrade.h - replacing the running binary without closing its listening sockets (SIGUSR2). */
#ifndef SLUICE_UPGRADE_H
#define SLUICE_UPGRADE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The variable naming the pipe a new process writes one byte to once it serves. */
#define UPGRADE_READY_ENV "SLUICE_UPGRADE_READY_FD"

/*
 * In a process started by an upgrade: the descriptor of its parent's pipe
 * (UPGRADE_READY_ENV, then unset, the descriptor made close-on-exec), or -1.
 */
int upgrade_ready_fd(void);

struct upgrade;

enum upgrade_state {
    UPGRADE_PENDING, /* started, not ready yet */
    UPGRADE_READY,   /* the new process serves */
    UPGRADE_FAILED,  /* it is gone (it exited, or was killed past the deadline) */
};

/*
 * Starts the program `path` (searched in PATH when it holds no '/') with
 * `argv` and this process's environment, in which the listening sockets fds
 * (nfds of them) and admin_fd (-1: none) are named in LISTENFD_ENV, a pipe in
 * UPGRADE_READY_ENV, WATCHDOG_USEC is watchdog_usec (0: unset) and
 * WATCHDOG_PID unset, with default signal dispositions and no signal blocked.
 * The new process has those as descriptors 3, 4, ... and no other but 0-2.
 * Returns the upgrade under way (free with upgrade_free()), or NULL with a
 * message in err when the program could not be started.
 */
struct upgrade *upgrade_start(const char *path, char *const argv[], const int *fds, unsigned nfds,
                              int admin_fd, uint64_t watchdog_usec, uint64_t timeout_ms, char *err,
                              size_t errlen);

/*
 * Looks without waiting at how the upgrade goes. Past timeout_ms without the
 * ready byte, the new process is killed (SIGKILL) and the upgrade failed.
 * UPGRADE_FAILED comes with the reason in err; the process has been reaped.
 */
enum upgrade_state upgrade_poll(struct upgrade *u, char *err, size_t errlen);

/* The new process's id. */
pid_t upgrade_pid(const struct upgrade *u);

/* Frees u (NULL: nothing). A new process not ready yet is killed and reaped; a ready one runs on.
 */
void upgrade_free(struct upgrade *u);

#endif
