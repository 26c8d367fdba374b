/* notify.h - database-driven invalidation: LISTEN for the on_change triggers, drop their tags. */
#ifndef SLUICE_NOTIFY_H
#define SLUICE_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

struct event_base;
struct policy;
struct store;
struct notifier;

/* What the listener needs from the process. The callbacks run on the notifier's thread. */
struct notify_config {
    /* A conninfo string or URI, read as the workers' pool reads it (pg_conn_params_new);
       NULL or "": the PG* environment. Read by notify_start only. */
    const char *conninfo;
    /* The policy snapshot serving now (a new reference, released with policy_release). */
    struct policy *(*policy)(void *ctx);
    /* A new handle on the store to invalidate, for the thread running `base` (borrowed) and
       used by it alone; freed with ops->destroy. `name` labels log lines. */
    struct store *(*store_new)(void *ctx, struct event_base *base, const char *name);
    /* A change of a table whose on_change says credentials = true was notified (or changes may
       have been missed): the API keys the workers remember must be forgotten. NULL: none. */
    void (*forget_credentials)(void *ctx);
    void *ctx; /* passed to the callbacks; borrowed, must outlive the notifier */
};

/*
 * Starts the listener: a thread of its own with its own event base and one
 * libpq connection to cfg->conninfo. While the policy serving (cfg->policy)
 * declares on_change, the connection is kept open with LISTEN on
 * TRIGGERS_CHANNEL and rebuilt after a failure (backoff 100 ms doubling to
 * 5 s); while it declares none, no connection is held. The policy is looked
 * at once a second and for every notification, so a reload needs nothing
 * more. For each notification the tags of the matching on_change templates,
 * expanded with the old and the new row, are invalidated through one store
 * handle from cfg->store_new, made when the listener first connects. cfg is
 * copied. Libevent's pthreads support must be on (evthread_use_pthreads()).
 * Returns a new notifier, or NULL with a message in err when the conninfo is
 * unusable.
 */
struct notifier *notify_start(const struct notify_config *cfg, char *err, size_t errlen);

/*
 * Stops the thread (joins it), closes the connection, frees the store handle
 * and the notifier. Invalidations still in flight get up to a second to
 * finish. NULL is a no-op.
 */
void notify_stop(struct notifier *n);

/*
 * The notifier's counters for status output (a new reference):
 * {"state": "idle"|"connecting"|"listening"|"down", "channel",
 *  "notifications", "unmatched", "invalidations", "drops_all", "reconnects",
 *  "errors", "last_error": string or null, "last_error_at": unix time or null}.
 * "idle": the policy declares no on_change. Callable from any thread.
 */
json_t *notify_status(struct notifier *n);

/*
 * The tags of a batch of notifications: distinct, each owned (NUL-terminated),
 * with their lengths. `all` is set when a notification of an on_change table
 * came without rows (TRUNCATE, a payload too long for NOTIFY, a row the
 * trigger could not read): then every cached entry must go, since the tags
 * it would name are unknown.
 */
struct notify_tags {
    char **tags;
    size_t *lens;
    size_t n, cap;
    bool all;
    bool credentials; /* an on_change with credentials = true matched */
};

/* Frees the tags and empties t. */
void notify_tags_free(struct notify_tags *t);

/*
 * Adds to t the tags one notification payload (JSON as the triggers send it)
 * names under policy p: for each on_change of the payload's table, each
 * invalidate template expanded once with "old" and once with "new", where
 * {row.COLUMN} is the row's value of COLUMN (a JSON string as is; null is an
 * absent value, written "%-"; numbers and booleans as JSON spells them). A
 * template naming a column the row lacks is skipped for that row. Returns
 * t->credentials is set when a matching on_change says credentials = true, and
 * a notification without rows sets t->all only for declarations that
 * invalidate tags. Returns
 * the number of on_change declarations that matched (0: a table the policy
 * does not watch), or -1 with a message in err when the payload is not such
 * JSON or a tag is too long to expand (tags found before are kept).
 */
int notify_collect(const struct policy *p, const char *payload, size_t len, struct notify_tags *t,
                   char *err, size_t errlen);

#endif
