/* limiter.h - rate-limit math: sliding window, sliding log, token bucket (GCRA), fixed window. */
#ifndef SLUICE_LIMITER_H
#define SLUICE_LIMITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum limiter_algo {
    LIMITER_SLIDING_WINDOW = 0, /* two-window weighted counter, O(1) memory */
    LIMITER_SLIDING_LOG,        /* exact, one log entry per admitted request */
    LIMITER_TOKEN_BUCKET,       /* GCRA: rate limit/window, capacity `burst` */
    LIMITER_FIXED_WINDOW,       /* counter per aligned window */
};

struct limiter_rule {
    enum limiter_algo algo;
    uint64_t limit;     /* requests per window, >= 1 */
    uint64_t window_ms; /* >= 1 */
    uint64_t burst;     /* token_bucket capacity; 0 means `limit` */
};

/*
 * The decision for one limit, and the header values that go with it.
 *
 * sliding_window: windows are aligned to multiples of window_ms; the count is
 * floor(prev * (window - elapsed) / window) + cur, and a request is admitted
 * when count + cost <= limit. sliding_log: the exact count of the last
 * window_ms (a request at t counts until t + window_ms). token_bucket: GCRA,
 * one request per window_ms/limit (exact, no rounding), up to `burst` at once.
 * fixed_window: the count of the current aligned window.
 */
struct limiter_result {
    bool allowed;
    uint64_t limit;          /* rule->limit (token_bucket too, whatever its burst) */
    uint64_t remaining;      /* cost-1 requests that would still be admitted at this
                                instant: after this request if allowed, else now */
    uint64_t reset_ms;       /* ms from now until the quota is fully restored
                                (sliding/fixed window: until the current window ends) */
    uint64_t retry_after_ms; /* when denied: the smallest wait (> 0) after which `cost`
                                would be admitted with no other traffic; window_ms when
                                cost exceeds the limit (token_bucket: the burst) and so
                                never fits. 0 when allowed. */
};

struct limiter_log; /* sliding_log entries */

/* Per-key state. Zeroed memory is a valid empty state. */
struct limiter_state {
    uint64_t a, b, c;        /* meaning depends on the algorithm */
    struct limiter_log *log; /* sliding_log only; owned */
};

/* Returns the algorithm named `name` ("sliding_window", ...) in *out: 0, or -1 if unknown. */
int limiter_algo_parse(const char *name, enum limiter_algo *out);
/* Returns the static name of `algo` ("sliding_window", ...), "unknown" if out of range. */
const char *limiter_algo_name(enum limiter_algo algo);

/*
 * Decides whether `cost` more requests at now_ms are admitted, without
 * recording them (sliding-log entries that left the window by now_ms are
 * dropped, so checks of one state should not go back in time). Fills *res.
 * A now_ms before the state's last commit counts as the time of that
 * commit: a clock step back is treated as no time passing.
 */
void limiter_check(const struct limiter_rule *rule, struct limiter_state *st, uint64_t now_ms,
                   uint32_t cost, struct limiter_result *res);

/*
 * Records `cost` requests at now_ms. Call it only after limiter_check()
 * admitted them (and every other limit of the request did too).
 */
void limiter_commit(const struct limiter_rule *rule, struct limiter_state *st, uint64_t now_ms,
                    uint32_t cost);

/*
 * The time (ms, absolute like now_ms) from which the state is empty again
 * and may be dropped (a dropped state forgets the clock-step guard).
 */
uint64_t limiter_expiry(const struct limiter_rule *rule, const struct limiter_state *st);

/*
 * Returns the bytes the state owns outside itself, as requested from malloc: the size of a
 * sliding log's one allocation, else 0.
 */
size_t limiter_state_bytes(const struct limiter_state *st);

/*
 * Returns what limiter_state_bytes() will be after limiter_commit(rule, st, now_ms, cost),
 * when called right after limiter_check() at the same now_ms: a caller counting memory
 * can refuse a commit it has no room for before making it.
 */
size_t limiter_commit_bytes(const struct limiter_rule *rule, const struct limiter_state *st,
                            uint64_t now_ms, uint32_t cost);

/* Frees what the state owns and zeroes it. */
void limiter_state_clear(struct limiter_state *st);

#endif
