/* notify.h - database-driven invalidation: LISTEN for the on_change triggers, drop their tags. */
#ifndef SLUICE_NOTIFY_H
#define SLUICE_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

struct gateway;
struct policy;
struct notifier;

/*
 * Starts the listener: a thread of its own with its own event base and one
 * libpq connection to `conninfo` (a conninfo string or URI; NULL or "": the
 * PG* environment, as the workers' pool does). While the policy serving on
 * `g` (borrowed; it must outlive the notifier) declares on_change, the
 * connection is kept open with LISTEN on TRIGGERS_CHANNEL and rebuilt after
 * a failure (backoff 100 ms doubling to 5 s); while it declares none, no
 * connection is held. The policy is looked at once a second and for every
 * notification, so a reload needs nothing more. For each notification the
 * tags of the matching on_change templates, expanded with the old and the
 * new row, are invalidated through a store handle of the gateway's store.
 * Libevent's pthreads support must be on (evthread_use_pthreads()). Returns
 * a new notifier, or NULL with a message in err when conninfo is unusable.
 */
struct notifier *notify_start(struct gateway *g, const char *conninfo, char *err, size_t errlen);

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
 * the number of on_change declarations that matched (0: a table the policy
 * does not watch), or -1 with a message in err when the payload is not such
 * JSON or a tag is too long to expand (tags found before are kept).
 */
int notify_collect(const struct policy *p, const char *payload, size_t len, struct notify_tags *t,
                   char *err, size_t errlen);

#endif
