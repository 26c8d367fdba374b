/* service.h - running under a service manager: readiness, a watchdog fed by the workers'
 * heartbeats, reload and stop notices, status lines (sd_notify protocol). */
#ifndef SLUICE_SERVICE_H
#define SLUICE_SERVICE_H

#include <stdint.h>

#include "server.h"

struct service;

/*
 * A new supervisor for a server of `workers` workers (>= 1). The messages go
 * to NOTIFY_SOCKET (none when it is unset); WATCHDOG_USEC, when set for this
 * process, turns the watchdog on. Freed with service_free().
 */
struct service *service_new(unsigned workers);

/* Frees svc (NULL: nothing); the server wrapped with it must be freed first. */
void service_free(struct service *svc);

/*
 * The application to give server_new(): `app` (copied) with each worker
 * stamping a heartbeat from a timer in its own event loop (at start, then
 * every few hundred ms, more often under a short watchdog) and counting the
 * requests it handles. svc must outlive the server.
 */
struct server_app service_wrap(struct service *svc, const struct server_app *app);

/*
 * A descriptor to write one byte to (then close) when the process is ready,
 * as well as READY=1: the pipe of an upgrading parent (upgrade.h). -1: none.
 */
void service_set_ready_fd(struct service *svc, int fd);

/*
 * The supervising thread's periodic work, `generation` being the policy's
 * serving now: once every worker has run its loop, READY=1 (and the ready
 * descriptor); WATCHDOG=1 every half watchdog interval while every worker's
 * last heartbeat is younger than that (a stuck worker stops the pings, and
 * one line says which); STATUS= every 5 s with the generation and the request
 * rate. Returns the milliseconds until it should be called again.
 */
uint64_t service_tick(struct service *svc, uint64_t generation);

/* Whether every worker has run its loop (readiness was reported). */
int service_is_ready(const struct service *svc);

/* Before a reload asked for by SIGHUP: RELOADING=1 and MONOTONIC_USEC= (the monotonic clock). */
void service_reloading(struct service *svc);

/*
 * After it: READY=1 with a status naming `generation`, the one serving (the new
 * one, or the old one when the reload failed: ok 0).
 */
void service_reloaded(struct service *svc, uint64_t generation, int ok);

/* On SIGTERM or SIGINT: STOPPING=1. */
void service_stopping(struct service *svc);

/* Requests the workers have handed to the application since start. */
uint64_t service_requests(const struct service *svc);

#endif
