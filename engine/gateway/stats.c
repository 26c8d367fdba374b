/* stats.c - what each worker counts of the requests it serves (requests, latencies, limit
 * decisions, origins, callers), read by the control plane without a lock on the request path. */
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "util.h"

const char *const gw_cache_kind_names[GW_CACHE_KINDS] = {"none",  "hit",         "miss",
                                                         "stale", "revalidated", "bypass"};
const char *const gw_origin_names[GW_ORIGINS] = {"sql", "upstream"};
const char *const gw_decision_names[GW_DECISIONS] = {"allowed", "denied", "shadow_denied"};

#define MINUTE_MS 60000u
#define HOUR_MS 3600000u

/* One writer: a relaxed load and store (no locked instruction), which readers on other threads
 * see whole. */
static void
bump(uint64_t *c, uint64_t n)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static void
bump32(uint32_t *c, uint32_t n)
{
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static uint64_t
load(const uint64_t *c)
{
    return __atomic_load_n(c, __ATOMIC_RELAXED);
}

void
gw_stats_init(struct gw_stats *st)
{
    memset(st, 0, sizeof(*st));
    pthread_mutex_init(&st->lock, NULL);
}

static void
free_table(struct hmap *m, size_t offset)
{
    for (struct hmap_node *n = hmap_first(m), *next; n; n = next) {
        next = hmap_next(m, n);
        free((char *)n - offset);
    }
    hmap_free(m);
}

void
gw_stats_free(struct gw_stats *st)
{
    free_table(&st->requests, offsetof(struct gw_counter, node));
    free_table(&st->decisions, offsetof(struct gw_counter, node));
    free_table(&st->origin_errors, offsetof(struct gw_counter, node));
    free_table(&st->refused_tiers, offsetof(struct gw_counter, node));
    free_table(&st->identity, offsetof(struct gw_counter, node));
    free_table(&st->id_refusals, offsetof(struct gw_counter, node));
    free_table(&st->routes, offsetof(struct gw_route_stat, node));
    for (struct hmap_node *n = hmap_first(&st->callers); n; n = hmap_next(&st->callers, n)) {
        struct gw_callers *c = HMAP_ENTRY(n, struct gw_callers, node);
        topk_free(&c->live);
        free(c->published);
    }
    free_table(&st->callers, offsetof(struct gw_callers, node));
    pthread_mutex_destroy(&st->lock);
}

/*
 * The node of key in m, made (zeroed but for its key, of `size` bytes with the key at
 * key_offset and its length at len_offset) under the lock when it is new: readers walk the
 * tables under that lock, so only the worker's own inserts need it.
 */
static struct hmap_node *
find_or_make(struct gw_stats *st, struct hmap *m, const char *key, size_t keylen, size_t size,
             size_t node_offset, size_t key_offset, size_t len_offset)
{
    struct hmap_node *n = hmap_find(m, key, keylen);
    if (n)
        return n;
    char *p = xcalloc(1, size + keylen + 1);
    memcpy(p + key_offset, key, keylen);
    memcpy(p + len_offset, &keylen, sizeof(keylen));
    n = (struct hmap_node *)(void *)(p + node_offset);
    pthread_mutex_lock(&st->lock);
    hmap_insert(m, n, p + key_offset, keylen);
    pthread_mutex_unlock(&st->lock);
    return n;
}

static struct gw_counter *
counter(struct gw_stats *st, struct hmap *m, const char *key, size_t keylen)
{
    struct hmap_node *n = find_or_make(
        st, m, key, keylen, sizeof(struct gw_counter), offsetof(struct gw_counter, node),
        offsetof(struct gw_counter, key), offsetof(struct gw_counter, keylen));
    return HMAP_ENTRY(n, struct gw_counter, node);
}

/* Joins label values into buf with GW_STATS_KEY_SEP; returns the length (values are cut to
 * fit, which only merges counters of absurdly long labels). */
static size_t
join(char *buf, size_t cap, const char *const *vals, const size_t *lens, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && o < cap)
            buf[o++] = GW_STATS_KEY_SEP;
        size_t len = lens[i] < cap - o ? lens[i] : cap - o;
        memcpy(buf + o, vals[i], len);
        o += len;
    }
    return o;
}

/* The slot of memo that (a, b, c) would be remembered in. */
static struct gw_stats_memo *
memo_slot(struct gw_stats_memo *memo, const void *a, const void *b, uint32_t c)
{
    uint64_t h = ((uintptr_t)a >> 3) * 0x9e3779b97f4a7c15ULL ^ ((uintptr_t)b >> 3) ^ c;
    return &memo[(h ^ h >> 29) & (GW_STATS_MEMO - 1)];
}

/* What slot s remembers for (a, b, c), when no policy was freed since (frees: policy_frees()
 * now), or NULL. */
static void *
memo_find(const struct gw_stats_memo *s, const void *a, const void *b, uint32_t c, uint64_t frees)
{
    return s->a == a && s->b == b && s->c == c && s->frees == frees ? s->found : NULL;
}

static void
memo_keep(struct gw_stats_memo *s, const void *a, const void *b, uint32_t c, uint64_t frees,
          void *found)
{
    *s = (struct gw_stats_memo){.a = a, .b = b, .c = c, .frees = frees, .found = found};
}

/*
 * The counter of the n label values vals (NUL-terminated) in table m, through memo: a lookup
 * the worker made before costs three comparisons, not a join, a hash and a probe. (a, b, c)
 * are the caller's own pointers (static, or a policy's strings) and numbers that determine
 * the values.
 */
static struct gw_counter *
counter_of(struct gw_stats *st, struct hmap *m, struct gw_stats_memo *memo, const void *a,
           const void *b, uint32_t c, const char *const *vals, size_t n)
{
    uint64_t frees = policy_frees();
    struct gw_stats_memo *s = memo_slot(memo, a, b, c);
    struct gw_counter *ctr = memo_find(s, a, b, c, frees);
    if (ctr)
        return ctr;
    size_t lens[4];
    for (size_t i = 0; i < n; i++)
        lens[i] = strlen(vals[i]);
    char key[512];
    ctr = counter(st, m, key, join(key, sizeof(key), vals, lens, n));
    memo_keep(s, a, b, c, frees, ctr);
    return ctr;
}

/* Writes status in decimal into code (at least 8 bytes); returns its length. */
static size_t
status_text(char *code, int status)
{
    if (status >= 100 && status <= 999) {
        code[0] = (char)('0' + status / 100);
        code[1] = (char)('0' + status / 10 % 10);
        code[2] = (char)('0' + status % 10);
        code[3] = '\0';
        return 3;
    }
    return (size_t)snprintf(code, 8, "%d", status);
}

/* The slot of the minute now_ms falls in, emptied (under the lock) when it held another. */
static struct gw_minute *
minute_slot(struct gw_stats *st, uint64_t now_ms)
{
    uint64_t minute = now_ms / MINUTE_MS;
    struct gw_minute *m = &st->minutes[minute % GW_STATS_MINUTES];
    if (load(&m->minute) != minute) {
        pthread_mutex_lock(&st->lock);
        memset(m, 0, sizeof(*m));
        __atomic_store_n(&m->minute, minute, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&st->lock);
    }
    return m;
}

void
gw_stats_request(struct gw_stats *st, const char *route, const char *tier, const char *method,
                 int status, enum gw_cache_kind cache, uint64_t duration_us, uint64_t now_ms)
{
    if (st->off)
        return;
    char code[8];
    status_text(code, status);
    const char *vals[] = {route, method, code, gw_cache_kind_names[cache]};
    uint32_t sc = (uint32_t)status << 4 | (uint32_t)cache;
    bump(&counter_of(st, &st->requests, st->memo_requests, route, method, sc, vals, 4)->n, 1);

    bool hit = cache == GW_CACHE_HIT || cache == GW_CACHE_STALE || cache == GW_CACHE_REVALIDATED;
    bool denied = status == 429;
    if (denied) {
        const char *t = tier ? tier : "";
        bump(&counter(st, &st->refused_tiers, t, strlen(t))->n, 1);
    }
    uint64_t frees = policy_frees();
    struct gw_stats_memo *s = memo_slot(st->memo_routes, route, NULL, 0);
    struct gw_route_stat *r = memo_find(s, route, NULL, 0, frees);
    if (!r) {
        struct hmap_node *n =
            find_or_make(st, &st->routes, route, strlen(route), sizeof(struct gw_route_stat),
                         offsetof(struct gw_route_stat, node), offsetof(struct gw_route_stat, key),
                         offsetof(struct gw_route_stat, keylen));
        r = HMAP_ENTRY(n, struct gw_route_stat, node);
        memo_keep(s, route, NULL, 0, frees, r);
    }
    hist_add(&r->duration, duration_us);
    bump(&r->requests, 1);
    bump(&r->hits, hit);
    bump(&r->denied, denied);
    uint64_t minute = now_ms / MINUTE_MS;
    size_t slot = minute % GW_STATS_MINUTES;
    if (__atomic_load_n(&r->minutes[slot].minute, __ATOMIC_RELAXED) != minute) {
        pthread_mutex_lock(&st->lock);
        r->minutes[slot].requests = r->minutes[slot].hits = r->minutes[slot].denied = 0;
        __atomic_store_n(&r->minutes[slot].minute, minute, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&st->lock);
    }
    bump32(&r->minutes[slot].requests, 1);
    bump32(&r->minutes[slot].hits, hit);
    bump32(&r->minutes[slot].denied, denied);

    struct gw_minute *m = minute_slot(st, now_ms);
    bump(&m->requests, 1);
    bump(&m->hits, hit);
    bump(&m->misses, cache == GW_CACHE_MISS);
    bump(&m->denied, denied);
    bump(&m->errors, status >= 500);
    hist_add(&m->duration, duration_us);
}

void
gw_stats_decision(struct gw_stats *st, const char *policy, const char *tier, enum gw_decision d)
{
    if (st->off)
        return;
    const char *t = tier ? tier : "";
    const char *vals[] = {policy, t, gw_decision_names[d]};
    bump(&counter_of(st, &st->decisions, st->memo_decisions, policy, t, d, vals, 3)->n, 1);
}

void
gw_stats_invalidations(struct gw_stats *st, size_t n)
{
    if (st->off)
        return;
    bump(&st->invalidations_write, n);
}

void
gw_stats_origin(struct gw_stats *st, enum gw_origin_kind o, uint64_t duration_us, uint64_t now_ms)
{
    if (st->off)
        return;
    hist_add(&st->origin[o], duration_us);
    hist_add(&minute_slot(st, now_ms)->origin, duration_us);
}

/* Counts one (a, b) in table t, the `which`th of the tables counted this way. */
static void
count_pair(struct gw_stats *st, struct hmap *t, uint32_t which, const char *a, const char *b)
{
    if (st->off)
        return;
    const char *vals[] = {a, b};
    bump(&counter_of(st, t, st->memo_pairs, a, b, which, vals, 2)->n, 1);
}

void
gw_stats_identity(struct gw_stats *st, const char *source, const char *result)
{
    count_pair(st, &st->identity, 0, source, result);
}

void
gw_stats_id_refusal(struct gw_stats *st, const char *source, const char *reason)
{
    count_pair(st, &st->id_refusals, 1, source, reason);
}

void
gw_stats_origin_error(struct gw_stats *st, enum gw_origin_kind o, const char *reason)
{
    if (st->off)
        return;
    count_pair(st, &st->origin_errors, 2, gw_origin_names[o], reason);
}

void
gw_stats_caller(struct gw_stats *st, const char *policy, const char *tier, const char *caller,
                size_t len, bool denied, uint64_t remaining, uint64_t now_ms)
{
    if (st->off)
        return;
    uint64_t frees = policy_frees();
    struct gw_stats_memo *s = memo_slot(st->memo_callers, policy, NULL, 0);
    struct gw_callers *c = memo_find(s, policy, NULL, 0, frees);
    if (!c) {
        size_t plen = strlen(policy);
        struct hmap_node *n = hmap_find(&st->callers, policy, plen);
        if (n) {
            c = HMAP_ENTRY(n, struct gw_callers, node);
        } else {
            c = xcalloc(1, sizeof(*c) + plen + 1);
            memcpy(c->key, policy, plen);
            c->keylen = plen;
            topk_init(&c->live, GW_STATS_CALLERS);
            pthread_mutex_lock(&st->lock);
            hmap_insert(&st->callers, &c->node, c->key, plen);
            pthread_mutex_unlock(&st->lock);
        }
        memo_keep(s, policy, NULL, 0, frees, c);
    }
    uint64_t window = now_ms / HOUR_MS;
    if (c->window != window) { /* a new hour: the live count starts over */
        topk_clear(&c->live);
        c->window = window;
    }
    topk_add(&c->live, caller, len, 1, denied, remaining, tier);
}

void
gw_stats_publish(struct gw_stats *st)
{
    pthread_mutex_lock(&st->lock);
    for (struct hmap_node *n = hmap_first(&st->callers); n; n = hmap_next(&st->callers, n)) {
        struct gw_callers *c = HMAP_ENTRY(n, struct gw_callers, node);
        c->published = xrealloc(c->published, (c->live.n + 1) * sizeof(*c->published));
        memcpy(c->published, c->live.items, c->live.n * sizeof(*c->published));
        c->npublished = c->live.n;
    }
    pthread_mutex_unlock(&st->lock);
}

/* ---- reading ------------------------------------------------------------------------------- */

void
gw_stats_view_init(struct gw_stats_view *v, uint64_t now_ms, size_t callers_per_policy)
{
    memset(v, 0, sizeof(*v));
    v->now_minute = now_ms / MINUTE_MS;
    v->callers_max = callers_per_policy;
}

/* Adds a table of counters into the view's items (equal keys added up at finish). */
static void
merge_counters(struct gw_stat_item **items, size_t *n, const struct hmap *m)
{
    for (struct hmap_node *x = hmap_first(m); x; x = hmap_next(m, x)) {
        const struct gw_counter *c = HMAP_ENTRY(x, struct gw_counter, node);
        if (*n % 64 == 0)
            *items = xrealloc(*items, (*n + 64) * sizeof(**items));
        (*items)[*n] = (struct gw_stat_item){
            .key = xstrndup(c->key, c->keylen), .keylen = c->keylen, .n = load(&c->n)};
        (*n)++;
    }
}

/* A route's place in the view's array (which moves as it grows), by its text. */
struct route_at {
    struct hmap_node node;
    size_t at;
};

static struct gw_stat_route *
view_route(struct gw_stats_view *v, const char *route, size_t len)
{
    struct route_at *ra = HMAP_ENTRY(hmap_find(&v->route_at, route, len), struct route_at, node);
    if (ra)
        return &v->routes[ra->at];
    if (v->nroutes % 64 == 0)
        v->routes = xrealloc(v->routes, (v->nroutes + 64) * sizeof(*v->routes));
    struct gw_stat_route *r = &v->routes[v->nroutes];
    memset(r, 0, sizeof(*r));
    r->route = xstrndup(route, len);
    ra = xcalloc(1, sizeof(*ra));
    ra->at = v->nroutes++;
    hmap_insert(&v->route_at, &ra->node, r->route, len);
    return r;
}

/* Whether a minute slot of the last hour is `minute`; its place in the view (oldest first). */
static bool
minute_place(const struct gw_stats_view *v, uint64_t minute, size_t *at)
{
    if (minute == 0 || minute > v->now_minute || v->now_minute - minute >= GW_STATS_MINUTES)
        return false;
    *at = GW_STATS_MINUTES - 1 - (size_t)(v->now_minute - minute);
    return true;
}

void
gw_stats_merge(struct gw_stats_view *v, struct gw_stats *st)
{
    pthread_mutex_lock(&st->lock);
    merge_counters(&v->requests, &v->nrequests, &st->requests);
    merge_counters(&v->decisions, &v->ndecisions, &st->decisions);
    merge_counters(&v->origin_errors, &v->norigin_errors, &st->origin_errors);
    merge_counters(&v->refused_tiers, &v->nrefused_tiers, &st->refused_tiers);
    merge_counters(&v->identity, &v->nidentity, &st->identity);
    merge_counters(&v->id_refusals, &v->nid_refusals, &st->id_refusals);
    for (struct hmap_node *x = hmap_first(&st->routes); x; x = hmap_next(&st->routes, x)) {
        const struct gw_route_stat *r = HMAP_ENTRY(x, struct gw_route_stat, node);
        struct gw_stat_route *vr = view_route(v, r->key, r->keylen);
        hist_merge(&vr->duration, &r->duration);
        vr->requests += load(&r->requests);
        vr->hits += load(&r->hits);
        vr->denied += load(&r->denied);
        for (size_t i = 0; i < GW_STATS_MINUTES; i++) {
            size_t at;
            if (!minute_place(v, load(&r->minutes[i].minute), &at))
                continue;
            vr->minute_requests[at] += __atomic_load_n(&r->minutes[i].requests, __ATOMIC_RELAXED);
            vr->minute_hits[at] += __atomic_load_n(&r->minutes[i].hits, __ATOMIC_RELAXED);
            vr->minute_denied[at] += __atomic_load_n(&r->minutes[i].denied, __ATOMIC_RELAXED);
        }
    }
    for (size_t o = 0; o < GW_ORIGINS; o++)
        hist_merge(&v->origin[o], &st->origin[o]);
    v->invalidations_write += load(&st->invalidations_write);
    for (size_t i = 0; i < GW_STATS_MINUTES; i++) {
        const struct gw_minute *m = &st->minutes[i];
        size_t at;
        if (!minute_place(v, load(&m->minute), &at))
            continue;
        struct gw_minute *d = &v->minutes[at];
        d->minute = load(&m->minute);
        d->requests += load(&m->requests);
        d->hits += load(&m->hits);
        d->misses += load(&m->misses);
        d->denied += load(&m->denied);
        d->errors += load(&m->errors);
        hist_merge(&d->duration, &m->duration);
        hist_merge(&d->origin, &m->origin);
    }
    /* Every caller each worker published, as it is: finish() adds up those of equal keys. A
     * summary's keys are distinct, so a caller appears at most once per worker; its counts
     * and their error bounds add up across workers, as a space-saving merge would. */
    for (struct hmap_node *x = hmap_first(&st->callers); v->callers_max && x;
         x = hmap_next(&st->callers, x)) {
        const struct gw_callers *c = HMAP_ENTRY(x, struct gw_callers, node);
        v->callers = xrealloc(v->callers, (v->ncallers + c->npublished + 1) * sizeof(*v->callers));
        for (size_t i = 0; i < c->npublished; i++) {
            const struct topk_item *it = &c->published[i];
            struct gw_stat_caller *vc = &v->callers[v->ncallers++];
            *vc = (struct gw_stat_caller){
                .policy = xstrndup(c->key, c->keylen),
                .caller = xstrndup(it->key, it->keylen),
                .requests = it->count,
                .denied = it->extra,
                .error = it->error,
                .remaining = it->last,
            };
            memcpy(vc->tier, it->note, TOPK_NOTE_MAX);
        }
    }
    pthread_mutex_unlock(&st->lock);
}

/* qsort() of n elements at base, which is NULL when nothing was gathered. */
static void
sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    if (n > 1)
        qsort(base, n, size, cmp);
}

static int
item_cmp(const void *a, const void *b)
{
    const struct gw_stat_item *x = a, *y = b;
    size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->keylen > y->keylen) - (x->keylen < y->keylen);
}

/* Sorts items by key and adds up those with equal keys (one per worker). */
static void
fold(struct gw_stat_item *items, size_t *n)
{
    sort(items, *n, sizeof(*items), item_cmp);
    size_t o = 0;
    for (size_t i = 0; i < *n; i++) {
        if (o && item_cmp(&items[o - 1], &items[i]) == 0) {
            items[o - 1].n += items[i].n;
            free(items[i].key);
        } else {
            items[o++] = items[i];
        }
    }
    *n = o;
}

static int
route_cmp(const void *a, const void *b)
{
    return strcmp(((const struct gw_stat_route *)a)->route,
                  ((const struct gw_stat_route *)b)->route);
}

static int
caller_key_cmp(const void *a, const void *b)
{
    const struct gw_stat_caller *x = a, *y = b;
    int c = strcmp(x->policy, y->policy);
    return c ? c : strcmp(x->caller, y->caller);
}

static int
caller_weight_cmp(const void *a, const void *b)
{
    const struct gw_stat_caller *x = a, *y = b;
    int c = strcmp(x->policy, y->policy);
    if (c)
        return c;
    if (x->requests != y->requests)
        return x->requests < y->requests ? 1 : -1;
    return strcmp(x->caller, y->caller);
}

static void
caller_free(struct gw_stat_caller *c)
{
    free(c->policy);
    free(c->caller);
}

/* Adds up the callers of equal policy and key (one per worker), orders each policy's by
 * requests, heaviest first, and keeps callers_max of each. */
static void
fold_callers(struct gw_stats_view *v)
{
    size_t n = v->ncallers, o = 0;
    sort(v->callers, n, sizeof(*v->callers), caller_key_cmp);
    for (size_t i = 0; i < n; i++) {
        struct gw_stat_caller *c = &v->callers[i];
        struct gw_stat_caller *last = o ? &v->callers[o - 1] : NULL;
        if (last && caller_key_cmp(last, c) == 0) {
            last->requests += c->requests;
            last->denied += c->denied;
            last->error += c->error;
            if (c->remaining < last->remaining)
                last->remaining = c->remaining;
            if (!last->tier[0])
                memcpy(last->tier, c->tier, sizeof(last->tier));
            caller_free(c);
        } else {
            v->callers[o++] = *c;
        }
    }
    sort(v->callers, o, sizeof(*v->callers), caller_weight_cmp);
    n = o;
    bool *keep = xcalloc(n ? n : 1, sizeof(*keep));
    for (size_t i = 0, rank = 0; i < n; i++) {
        rank = i && strcmp(v->callers[i].policy, v->callers[i - 1].policy) == 0 ? rank + 1 : 0;
        keep[i] = rank < v->callers_max;
    }
    o = 0;
    for (size_t i = 0; i < n; i++) {
        if (keep[i])
            v->callers[o++] = v->callers[i];
        else
            caller_free(&v->callers[i]);
    }
    free(keep);
    v->ncallers = o;
}

void
gw_stats_view_finish(struct gw_stats_view *v)
{
    fold(v->requests, &v->nrequests);
    fold(v->decisions, &v->ndecisions);
    fold(v->origin_errors, &v->norigin_errors);
    fold(v->refused_tiers, &v->nrefused_tiers);
    fold(v->identity, &v->nidentity);
    fold(v->id_refusals, &v->nid_refusals);
    for (struct hmap_node *x = hmap_first(&v->route_at), *next; x; x = next) {
        next = hmap_next(&v->route_at, x);
        hmap_remove(&v->route_at, x);
        free(HMAP_ENTRY(x, struct route_at, node));
    }
    hmap_free(&v->route_at);
    sort(v->routes, v->nroutes, sizeof(*v->routes), route_cmp);
    for (size_t i = 0; i < GW_STATS_MINUTES; i++)
        if (!v->minutes[i].minute)
            v->minutes[i].minute = v->now_minute - (GW_STATS_MINUTES - 1 - i);
    fold_callers(v);
}

void
gw_stats_view_free(struct gw_stats_view *v)
{
    for (size_t i = 0; i < v->nrequests; i++)
        free(v->requests[i].key);
    for (size_t i = 0; i < v->ndecisions; i++)
        free(v->decisions[i].key);
    for (size_t i = 0; i < v->norigin_errors; i++)
        free(v->origin_errors[i].key);
    for (size_t i = 0; i < v->nrefused_tiers; i++)
        free(v->refused_tiers[i].key);
    for (size_t i = 0; i < v->nidentity; i++)
        free(v->identity[i].key);
    for (size_t i = 0; i < v->nid_refusals; i++)
        free(v->id_refusals[i].key);
    for (size_t i = 0; i < v->nroutes; i++)
        free(v->routes[i].route);
    for (size_t i = 0; i < v->ncallers; i++) {
        free(v->callers[i].policy);
        free(v->callers[i].caller);
    }
    free(v->requests);
    free(v->decisions);
    free(v->origin_errors);
    free(v->refused_tiers);
    free(v->identity);
    free(v->id_refusals);
    free(v->routes);
    free(v->callers);
    memset(v, 0, sizeof(*v));
}
