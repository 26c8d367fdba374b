/* admin.h - the admin listener: status, reload, explain, invalidate. */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

#include "server.h"

struct reloader;
struct gateway;
struct notifier;

struct admin_config {
    struct reloader *reloader; /* borrowed */
    struct gateway *gateway;   /* borrowed: the snapshot serving (explain), store health, and
                                  the store POST /invalidate uses */
    struct notifier *notifier; /* borrowed: database-driven invalidation for /status, or NULL */
    const char *token;         /* bearer token required when set */
};

/* The server_app answering admin requests. `cfg` must outlive the server. */
struct server_app admin_app(const struct admin_config *cfg);

/* Returns 1 when `addr` is a loopback address (127.0.0.0/8 or ::1). */
int admin_addr_is_loopback(const char *addr);

#endif
