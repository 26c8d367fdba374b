/* admin.h - the admin listener: the status page, status, reload, explain, invalidate, cache
 * listings. */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

#include "server.h"

struct reloader;
struct gateway;
struct notifier;

struct admin_config {
    struct reloader *reloader;   /* borrowed */
    struct gateway *gateway;     /* borrowed: the snapshot serving (explain, the routes of
                                    GET /cache), store health, and the store POST /invalidate
                                    and GET /cache use */
    struct notifier *notifier;   /* borrowed: database-driven invalidation for /status, or NULL */
    const struct server *server; /* borrowed: the gateway's listener, for its connections in
                                    /metrics, or NULL */
    const char *token;           /* bearer token required when set */
};

/*
 * The settings of the admin listener on addr:port, from the data listener's
 * `data`: one worker; at most 64 connections, of which idle and unfinished
 * ones are closed for a new one (so idle or unauthenticated sockets cannot
 * lock the operator out); no per-address cap; at most 2 s for a request and
 * 10 s between keep-alive requests; a port no other process may share.
 * addr is borrowed and must outlive the server.
 */
struct server_config admin_server_config(const struct server_config *data, const char *addr,
                                         int port);

/* The server_app answering admin requests. `cfg` must outlive the server. */
struct server_app admin_app(const struct admin_config *cfg);

/* Returns 1 when `addr` is a loopback address (127.0.0.0/8 or ::1). */
int admin_addr_is_loopback(const char *addr);

#endif
