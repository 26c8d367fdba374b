/* sdnotify.h - the service manager's notification protocol (sd_notify(3)) without libsystemd. */
#ifndef SLUICE_SDNOTIFY_H
#define SLUICE_SDNOTIFY_H

#include <stdint.h>

/*
 * Sends `msg` ("READY=1", "STATUS=...", several "NAME=value" lines joined by
 * '\n') as one datagram to the AF_UNIX socket NOTIFY_SOCKET names: a path, or
 * "@name" for the abstract namespace. Returns 1 when sent, 0 when NOTIFY_SOCKET
 * is unset or empty (nothing to do), -1 when the send failed (errno set).
 * Thread-safe; opens a socket per call, as sd_notify does.
 */
int sdnotify_send(const char *msg);

/* As sdnotify_send, the message formatted as printf would; a message is at most 4 KiB. */
int sdnotify_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * The watchdog interval the service manager asks for: WATCHDOG_USEC in
 * microseconds when it is set to a positive number and WATCHDOG_PID is unset
 * or names this process, else 0 (no watchdog). As sd_watchdog_enabled(3).
 */
uint64_t sdnotify_watchdog_usec(void);

#endif
