/* limiter.c - rate-limit math: sliding window, sliding log, token bucket (GCRA), fixed window. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limiter.h"

#include "log.h"

/*
 * Every algorithm works in integer milliseconds; products that could pass
 * 2^64 (counts times window lengths, GCRA's scaled time) are done in 128 bits.
 *
 * Every state remembers the last time a request was committed, and a check
 * or commit at an earlier time acts as if it happened at that time: a clock
 * stepping back is treated as no time passing.
 *
 * State fields:
 *   sliding_window  a = last commit ms, b = count of a's window, c = count of the window before
 *   fixed_window    a = last commit ms, b = count of a's window
 *   sliding_log     a = total count in the log, b = last commit ms, log = entries
 *   token_bucket    a, b = theoretical arrival time (TAT) as a + b/limit ms, c = last commit ms
 */

typedef unsigned __int128 u128;

static const char *const algo_names[] = {
    [LIMITER_SLIDING_WINDOW] = "sliding_window",
    [LIMITER_SLIDING_LOG] = "sliding_log",
    [LIMITER_TOKEN_BUCKET] = "token_bucket",
    [LIMITER_FIXED_WINDOW] = "fixed_window",
};

int
limiter_algo_parse(const char *name, enum limiter_algo *out)
{
    for (size_t i = 0; i < sizeof(algo_names) / sizeof(algo_names[0]); i++) {
        if (strcmp(name, algo_names[i]) == 0) {
            *out = (enum limiter_algo)i;
            return 0;
        }
    }
    return -1;
}

const char *
limiter_algo_name(enum limiter_algo algo)
{
    if ((unsigned)algo >= sizeof(algo_names) / sizeof(algo_names[0]))
        return "unknown";
    return algo_names[algo];
}

static uint64_t
sat_sub(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

static uint64_t
sat_add(uint64_t a, uint64_t b)
{
    return a + b < a ? UINT64_MAX : a + b;
}

/* ceil(a / b) for b > 0, clamped to 64 bits. */
static uint64_t
ceil_div(u128 a, u128 b)
{
    u128 q = a / b + (a % b != 0);
    return q > UINT64_MAX ? UINT64_MAX : (uint64_t)q;
}

static uint64_t
clamp64(u128 v)
{
    return v > UINT64_MAX ? UINT64_MAX : (uint64_t)v;
}

static uint64_t
window_start(uint64_t t, uint64_t w)
{
    return t - t % w;
}

/* ---- sliding window ---------------------------------------------------- */

/* The counts as seen at `now`: current window, previous window, ms elapsed in current. */
struct sw_view {
    uint64_t cur, prev, elapsed;
};

static void
sw_view(const struct limiter_rule *r, const struct limiter_state *st, uint64_t now,
        struct sw_view *v)
{
    uint64_t w = r->window_ms;
    uint64_t ws_now = window_start(now, w), ws_state = window_start(st->a, w);

    if (ws_now == ws_state) {
        v->cur = st->b;
        v->prev = st->c;
    } else if (ws_now - ws_state == w) {
        v->cur = 0;
        v->prev = st->b;
    } else {
        v->cur = 0;
        v->prev = 0;
    }
    v->elapsed = now - ws_now;
}

/* floor(prev * (window - elapsed) / window) + cur. */
static u128
sw_estimate(const struct sw_view *v, uint64_t w)
{
    return (u128)v->prev * (w - v->elapsed) / w + v->cur;
}

/*
 * Largest r >= 0 with floor(n * r / w) <= k: the weighted count of n
 * requests stays within k while at most r ms of their window remain.
 */
static u128
sw_max_remaining(uint64_t n, u128 k, uint64_t w)
{
    return ((k + 1) * w + n - 1) / n - 1;
}

static void
sw_check(const struct limiter_rule *r, const struct limiter_state *st, uint64_t now, uint32_t cost,
         struct limiter_result *res)
{
    uint64_t w = r->window_ms, limit = r->limit;
    struct sw_view v;

    sw_view(r, st, now, &v);
    u128 est = sw_estimate(&v, w);
    res->allowed = cost <= limit && est + cost <= limit;
    res->remaining = res->allowed ? (uint64_t)(limit - est - cost) : sat_sub(limit, clamp64(est));
    res->reset_ms = w - v.elapsed;
    res->retry_after_ms = 0;
    if (res->allowed)
        return;
    if (cost > limit) {
        res->retry_after_ms = w;
        return;
    }
    uint64_t m = limit - cost; /* the estimate has to fall to m */
    uint64_t left = w - v.elapsed;
    if (v.cur <= m) {
        /* Within this window, once prev's weight has decayed enough. */
        assert(v.prev > 0);
        u128 rmax = sw_max_remaining(v.prev, m - v.cur, w);
        res->retry_after_ms = left - (uint64_t)rmax; /* rmax < left, or it would admit now */
    } else {
        /* In the next window, where this window's count is the decaying one. */
        u128 rmax = sw_max_remaining(v.cur, m, w);
        res->retry_after_ms = left + (w - (uint64_t)rmax); /* rmax < w since cur > m */
    }
}

static void
sw_commit(const struct limiter_rule *r, struct limiter_state *st, uint64_t now, uint32_t cost)
{
    struct sw_view v;

    sw_view(r, st, now, &v);
    st->a = now;
    st->b = sat_add(v.cur, cost);
    st->c = v.prev;
}

/* ---- fixed window ------------------------------------------------------- */

static uint64_t
fw_count(const struct limiter_rule *r, const struct limiter_state *st, uint64_t now)
{
    return window_start(now, r->window_ms) == window_start(st->a, r->window_ms) ? st->b : 0;
}

static void
fw_check(const struct limiter_rule *r, const struct limiter_state *st, uint64_t now, uint32_t cost,
         struct limiter_result *res)
{
    uint64_t w = r->window_ms, limit = r->limit;
    uint64_t count = fw_count(r, st, now);
    uint64_t left = window_start(now, w) + w - now;

    res->allowed = cost <= limit && count <= limit - cost;
    res->remaining = res->allowed ? limit - count - cost : sat_sub(limit, count);
    res->reset_ms = left;
    res->retry_after_ms = res->allowed ? 0 : cost > limit ? w : left;
}

static void
fw_commit(const struct limiter_rule *r, struct limiter_state *st, uint64_t now, uint32_t cost)
{
    st->b = sat_add(fw_count(r, st, now), cost);
    st->a = now;
}

/* ---- sliding log -------------------------------------------------------- */

/* A ring of (timestamp, count) entries, oldest first; one entry per distinct commit ms. */
struct log_entry {
    uint64_t ts, n;
};

struct limiter_log {
    size_t head, len, cap; /* cap is a power of two */
    struct log_entry e[];
};

#define LOG_MIN_CAP 4

static struct log_entry *
log_at(struct limiter_log *l, size_t i)
{
    return &l->e[(l->head + i) & (l->cap - 1)];
}

/* The bytes a ring of cap entries is allocated with. */
static size_t
log_size(size_t cap)
{
    return sizeof(struct limiter_log) + cap * sizeof(struct log_entry);
}

static struct limiter_log *
log_resize(struct limiter_log *l, size_t cap)
{
    struct limiter_log *n = malloc(log_size(cap));
    if (!n) {
        log_abort("out of memory (sliding log of %zu entries)", cap);
    }
    n->head = 0;
    n->len = 0;
    n->cap = cap;
    if (l) {
        for (size_t i = 0; i < l->len; i++)
            n->e[i] = *log_at(l, i);
        n->len = l->len;
        free(l);
    }
    return n;
}

/* Drops entries that left the window (ts + window <= now); shrinks a mostly empty ring. */
static void
log_prune(const struct limiter_rule *r, struct limiter_state *st, uint64_t now)
{
    struct limiter_log *l = st->log;

    if (!l)
        return;
    while (l->len > 0) {
        struct log_entry *e = log_at(l, 0);
        if (now - e->ts < r->window_ms)
            break;
        st->a -= e->n;
        l->head = (l->head + 1) & (l->cap - 1);
        l->len--;
    }
    if (l->len == 0) {
        free(l);
        st->log = NULL;
        st->a = 0;
    } else if (l->cap > LOG_MIN_CAP && l->len * 4 <= l->cap) {
        st->log = log_resize(l, l->cap / 2);
    }
}

static void
sl_check(const struct limiter_rule *r, struct limiter_state *st, uint64_t now, uint32_t cost,
         struct limiter_result *res)
{
    uint64_t w = r->window_ms, limit = r->limit;

    log_prune(r, st, now);
    uint64_t total = st->a;
    struct limiter_log *l = st->log;
    uint64_t newest_left = l ? log_at(l, l->len - 1)->ts + w - now : 0;

    res->allowed = cost <= limit && total <= limit - cost;
    res->remaining = res->allowed ? limit - total - cost : sat_sub(limit, total);
    res->reset_ms = res->allowed && cost > 0 ? w : newest_left;
    res->retry_after_ms = 0;
    if (res->allowed)
        return;
    if (cost > limit) {
        res->retry_after_ms = w;
        return;
    }
    /* Wait until enough of the oldest entries have left the window. */
    uint64_t excess = total - (limit - cost), freed = 0;
    for (size_t i = 0; i < l->len; i++) {
        struct log_entry *e = log_at(l, i);
        freed += e->n;
        if (freed >= excess) {
            res->retry_after_ms = e->ts + w - now;
            return;
        }
    }
    assert(!"sliding log total out of step with its entries");
}

static void
sl_commit(const struct limiter_rule *r, struct limiter_state *st, uint64_t now, uint32_t cost)
{
    log_prune(r, st, now);
    st->b = now;
    if (cost == 0)
        return;
    struct limiter_log *l = st->log;
    if (l && log_at(l, l->len - 1)->ts == now) {
        log_at(l, l->len - 1)->n += cost;
    } else {
        if (!l || l->len == l->cap)
            st->log = l = log_resize(l, l ? l->cap * 2 : LOG_MIN_CAP);
        *log_at(l, l->len) = (struct log_entry){now, cost};
        l->len++;
    }
    st->a += cost;
}

/* ---- token bucket (GCRA) ------------------------------------------------ */

/*
 * Time is scaled by `limit`: one unit is 1/limit ms, so the emission
 * interval (window/limit ms) is exactly window_ms units and every rate is
 * exact. The bucket holds `burst` requests: a request is admitted when the
 * TAT after it is at most burst emission intervals ahead of now.
 */
struct tb_view {
    u128 now_u, base_u, cap_u; /* now, max(TAT, now), now + burst intervals */
};

static uint64_t
tb_burst(const struct limiter_rule *r)
{
    return r->burst ? r->burst : r->limit;
}

static void
tb_view(const struct limiter_rule *r, const struct limiter_state *st, uint64_t now,
        struct tb_view *v)
{
    u128 tat_u = (u128)st->a * r->limit + st->b;

    v->now_u = (u128)now * r->limit;
    v->base_u = tat_u > v->now_u ? tat_u : v->now_u;
    v->cap_u = v->now_u + (u128)tb_burst(r) * r->window_ms;
}

static void
tb_check(const struct limiter_rule *r, const struct limiter_state *st, uint64_t now, uint32_t cost,
         struct limiter_result *res)
{
    uint64_t w = r->window_ms, burst = tb_burst(r);
    struct tb_view v;

    tb_view(r, st, now, &v);
    u128 new_u = v.base_u + (u128)cost * w;
    res->allowed = cost <= burst && new_u <= v.cap_u;
    u128 after_u = res->allowed ? new_u : v.base_u;
    res->remaining = after_u < v.cap_u ? clamp64((v.cap_u - after_u) / w) : 0;
    res->reset_ms = ceil_div(after_u - v.now_u, r->limit);
    if (res->allowed)
        res->retry_after_ms = 0;
    else if (cost > burst)
        res->retry_after_ms = w;
    else
        res->retry_after_ms = ceil_div(new_u - v.cap_u, r->limit);
}

static void
tb_commit(const struct limiter_rule *r, struct limiter_state *st, uint64_t now, uint32_t cost)
{
    struct tb_view v;

    tb_view(r, st, now, &v);
    u128 tat_u = v.base_u + (u128)cost * r->window_ms;
    st->a = clamp64(tat_u / r->limit);
    st->b = (uint64_t)(tat_u % r->limit);
    st->c = now;
}

/* ---- dispatch ----------------------------------------------------------- */

/* The state's reference time: a check or commit before it acts at it. */
static uint64_t
clamp_now(const struct limiter_rule *r, const struct limiter_state *st, uint64_t now)
{
    uint64_t last;

    switch (r->algo) {
    case LIMITER_SLIDING_LOG:
        last = st->b;
        break;
    case LIMITER_TOKEN_BUCKET:
        last = st->c;
        break;
    default:
        last = st->a;
        break;
    }
    return now < last ? last : now;
}

void
limiter_check(const struct limiter_rule *rule, struct limiter_state *st, uint64_t now_ms,
              uint32_t cost, struct limiter_result *res)
{
    assert(rule->limit >= 1 && rule->window_ms >= 1);
    now_ms = clamp_now(rule, st, now_ms);
    res->limit = rule->limit;
    switch (rule->algo) {
    case LIMITER_SLIDING_LOG:
        sl_check(rule, st, now_ms, cost, res);
        break;
    case LIMITER_TOKEN_BUCKET:
        tb_check(rule, st, now_ms, cost, res);
        break;
    case LIMITER_FIXED_WINDOW:
        fw_check(rule, st, now_ms, cost, res);
        break;
    case LIMITER_SLIDING_WINDOW:
    default:
        sw_check(rule, st, now_ms, cost, res);
        break;
    }
}

void
limiter_commit(const struct limiter_rule *rule, struct limiter_state *st, uint64_t now_ms,
               uint32_t cost)
{
    assert(rule->limit >= 1 && rule->window_ms >= 1);
    now_ms = clamp_now(rule, st, now_ms);
    switch (rule->algo) {
    case LIMITER_SLIDING_LOG:
        sl_commit(rule, st, now_ms, cost);
        break;
    case LIMITER_TOKEN_BUCKET:
        tb_commit(rule, st, now_ms, cost);
        break;
    case LIMITER_FIXED_WINDOW:
        fw_commit(rule, st, now_ms, cost);
        break;
    case LIMITER_SLIDING_WINDOW:
    default:
        sw_commit(rule, st, now_ms, cost);
        break;
    }
}

uint64_t
limiter_expiry(const struct limiter_rule *rule, const struct limiter_state *st)
{
    uint64_t w = rule->window_ms;

    switch (rule->algo) {
    case LIMITER_SLIDING_LOG:
        return st->log ? sat_add(log_at(st->log, st->log->len - 1)->ts, w) : 0;
    case LIMITER_TOKEN_BUCKET:
        return sat_add(st->a, st->b != 0); /* ceil(TAT) */
    case LIMITER_FIXED_WINDOW:
        return sat_add(window_start(st->a, w), w);
    case LIMITER_SLIDING_WINDOW:
    default:
        return sat_add(window_start(st->a, w), sat_add(w, w));
    }
}

size_t
limiter_state_bytes(const struct limiter_state *st)
{
    return st->log ? log_size(st->log->cap) : 0;
}

size_t
limiter_commit_bytes(const struct limiter_rule *rule, const struct limiter_state *st,
                     uint64_t now_ms, uint32_t cost)
{
    struct limiter_log *l = st->log;
    size_t len = 0, cap = 0;
    uint64_t newest = 0;

    if (rule->algo != LIMITER_SLIDING_LOG)
        return limiter_state_bytes(st);
    now_ms = clamp_now(rule, st, now_ms);
    /* What sl_commit() does: log_prune() (which may halve the ring once more), then append. */
    if (l) {
        size_t gone = 0;
        while (gone < l->len && now_ms - log_at(l, gone)->ts >= rule->window_ms)
            gone++;
        len = l->len - gone;
        cap = len == 0 ? 0 : l->cap;
        if (cap > LOG_MIN_CAP && len * 4 <= cap)
            cap /= 2;
        if (len)
            newest = log_at(l, l->len - 1)->ts;
    }
    if (cost > 0 && !(len > 0 && newest == now_ms)) {
        if (cap == 0)
            cap = LOG_MIN_CAP;
        else if (len == cap)
            cap *= 2;
    }
    return cap ? log_size(cap) : 0;
}

void
limiter_state_clear(struct limiter_state *st)
{
    free(st->log);
    memset(st, 0, sizeof(*st));
}
