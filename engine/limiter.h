/* limiter.h - rate-limit math: sliding window, sliding log, token bucket (GCRA), fixed window. */
#ifndef SLUICE_LIMITER_H
#define SLUICE_LIMITER_H

#include <stdbool.h>
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

/* The decision for one limit, and the header values that go with it. */
struct limiter_result {
    bool allowed;
    uint64_t limit;
    uint64_t remaining;      /* after this request if allowed, else now */
    uint64_t reset_ms;       /* ms from now until the quota is fully restored
                                (sliding/fixed window: until the current window ends) */
    uint64_t retry_after_ms; /* when denied: ms from now until `cost` would be admitted */
};

struct limiter_log; /* sliding_log entries */

/* Per-key state. Zeroed memory is a valid empty state. */
struct limiter_state {
    uint64_t a, b, c;        /* meaning depends on the algorithm */
    struct limiter_log *log; /* sliding_log only; owned */
};

/* Returns the algorithm named `name` ("sliding_window", ...) in *out: 0, or -1 if unknown. */
int limiter_algo_parse(const char *name, enum limiter_algo *out);
const char *limiter_algo_name(enum limiter_algo algo);

/*
 * Decides whether `cost` more requests at now_ms are admitted, without
 * recording them (expired sliding-log entries may be dropped). Fills *res.
 * now_ms must not go backwards for one state by more than the caller accepts:
 * a clock step back is treated as no time passing.
 */
void limiter_check(const struct limiter_rule *rule, struct limiter_state *st, uint64_t now_ms,
                   uint32_t cost, struct limiter_result *res);

/*
 * Records `cost` requests at now_ms. Call it only after limiter_check()
 * admitted them (and every other limit of the request did too).
 */
void limiter_commit(const struct limiter_rule *rule, struct limiter_state *st, uint64_t now_ms,
                    uint32_t cost);

/* The time (ms, absolute like now_ms) after which the state is empty again and may be dropped. */
uint64_t limiter_expiry(const struct limiter_rule *rule, const struct limiter_state *st);

/* Frees what the state owns and zeroes it. */
void limiter_state_clear(struct limiter_state *st);

#endif
