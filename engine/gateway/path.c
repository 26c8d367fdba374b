/* path.c - the steps of the request path: identity and tier, tenant hooks, limits and lookup,
 * waiting for another's fill, serving stale entries and refreshing them, detached requests. */
#define _GNU_SOURCE
#include "path.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "db.h"
#include "httpcache.h"
#include "credential.h"
#include "plan.h"
#include "source.h"
#include "tier_cache.h"
#include "util.h"

#define FILL_POLL_MS 10     /* a request waiting for another's fill looks again after this, */
#define FILL_POLL_MAX_MS 50 /* then at doubling intervals up to this */

/* ---- the lookup and waiting for fills ----------------------------------------------------- */

static void on_looked_up(void *arg, int status);

static void
on_fill_timer(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *rq = arg;
    if (rq->wk->closing) {
        gw_fail(rq, 503, "the server is shutting down");
        return;
    }
    rq->admit.nlimits = 0; /* a lookup only: the request's limits were counted once */
    store_admit_and_lookup(rq->wk->store, &rq->admit, on_looked_up, rq);
}

/*
 * Waits for a fill another request leads: on this worker's (answered when it
 * lands), else by looking again after FILL_POLL_MS, then at doubling
 * intervals, for FILL_WAIT_MS at most. Returns false when the wait is over:
 * the caller goes to the origin.
 */
static bool
wait_for_fill(struct gw_req *rq)
{
    if (rq->wk->closing)
        return false;
    if (gw_inflight_wait(rq))
        return true;
    if (rq->fill_waited_ms >= FILL_WAIT_MS)
        return false;
    if (!rq->fill_timer)
        rq->fill_timer = evtimer_new(server_worker_base(rq->wk->w), on_fill_timer, rq);
    uint64_t ms = rq->fill_waited_ms ? rq->fill_waited_ms : FILL_POLL_MS;
    if (ms > FILL_POLL_MAX_MS)
        ms = FILL_POLL_MAX_MS;
    struct timeval tv = {0, (suseconds_t)(ms * 1000)};
    if (!rq->fill_timer || evtimer_add(rq->fill_timer, &tv) != 0)
        return false;
    rq->fill_waited_ms += ms;
    return true;
}

static void start_refresh(struct gw_req *rq, struct store_entry *stale);

/*
 * Whether a fresh entry may not be used as it is for this request: it must be
 * validated on every use (a response no-cache), or the request asks for a
 * fresher one (no-cache, max-age, min-fresh; RFC 9111 section 5.2.1).
 */
static bool
hit_needs_validation(const struct gw_req *rq, const struct store_entry *e, uint64_t now)
{
    if (e->flags & STORE_ENTRY_VALIDATE)
        return true;
    if (!rq->has_directives)
        return false;
    const struct httpcache_request *d = &rq->directives;
    uint64_t age = e->age_ms + (now > e->stored_ms ? now - e->stored_ms : 0);
    return d->no_cache || d->max_age == 0 || (d->max_age > 0 && age > (uint64_t)d->max_age) ||
           (d->min_fresh >= 0 && e->expires_ms < now + (uint64_t)d->min_fresh);
}

/* Whether the request's max-stale lets it take a stale entry as it is (section 5.2.1.2). */
static bool
max_stale_takes(const struct gw_req *rq, const struct store_entry *e, uint64_t now)
{
    if (!rq->has_directives || rq->directives.max_stale < 0 || rq->directives.no_cache ||
        (e->flags & (STORE_ENTRY_MUST_REVALIDATE | STORE_ENTRY_VALIDATE)))
        return false;
    return now - e->expires_ms <= (uint64_t)rq->directives.max_stale;
}

/* only-if-cached and no stored answer it may take: 504 without asking the origin
 * (section 5.2.1.7). Returns true when the request was answered so. */
static bool
only_if_cached(struct gw_req *rq)
{
    if (!rq->has_directives || !rq->directives.only_if_cached)
        return false;
    gw_log(rq, LOGL_WARN, 504, "504 only-if-cached: no stored answer");
    gw_fail(rq, 504, "only-if-cached: no stored answer for this request");
    return true;
}

/*
 * Serves an admitted request from its lookup: a hit from the cache, a miss
 * from the origin (leading the fill of its key in this worker), a stale entry
 * while one refresh runs (stale_while_revalidate) or kept in case the origin
 * fails (stale_if_error). A stale entry with validators goes to the origin
 * with them (proxy.c), and a 304 freshens it. A marker of a varying answer
 * leads to a second lookup under the secondary key; a hit-for-miss marker
 * straight to the origin. While another request fills the key, the request
 * waits for that fill (wait_for_fill).
 */
static void
on_looked_up(void *arg, int status)
{
    struct gw_req *rq = arg;
    struct store_admit *a = &rq->admit;
    struct store_entry *e = a->entry;
    a->entry = NULL;
    if (status != 0) {
        store_entry_release(e);
        if (!only_if_cached(rq))
            gw_to_origin(rq);
        return;
    }
    if (e && (e->flags & STORE_ENTRY_VARY) && !rq->primary_key) {
        snprintf(rq->vary_names, sizeof(rq->vary_names), "%.*s", (int)e->body_len, e->body);
        store_entry_release(e);
        rq->primary_key = a->cache_key;
        rq->primary_len = a->cache_keylen;
        long n = gw_vary_key(rq, rq->vary_names);
        if (n < 0) {
            rq->bypass = true;
            if (!only_if_cached(rq))
                gw_to_origin(rq);
            return;
        }
        a->cache_key = rq->vkey;
        a->cache_keylen = (size_t)n;
        a->nlimits = 0;
        store_admit_and_lookup(rq->wk->store, a, on_looked_up, rq);
        return;
    }
    if (rq->authorized_only && e && !(e->flags & (STORE_ENTRY_PASS | STORE_ENTRY_VARY)) &&
        !(e->flags & STORE_ENTRY_AUTHORIZED)) {
        /* A stored answer that did not allow reuse for requests with Authorization (RFC 9111
         * section 3.5): the origin answers this one, and its answer is not stored. */
        store_entry_release(e);
        rq->bypass = true;
        if (!only_if_cached(rq))
            gw_to_origin(rq);
        return;
    }
    if (e && (e->flags & STORE_ENTRY_PASS)) {
        store_entry_release(e);
        if (!only_if_cached(rq))
            gw_to_origin(rq); /* hit-for-miss: nothing to wait for */
        return;
    }
    bool validate = false; /* a stored answer to revalidate, held in rq->stale */
    if (a->state == STORE_HIT && e) {
        if (!hit_needs_validation(rq, e, a->now_ms)) {
            rq->entry = e; /* released with the request */
            gw_reply_entry(rq, e, "HIT", a->now_ms);
            return;
        }
        validate = true;
    } else if (a->state == STORE_STALE && e) {
        bool may_serve =
            !(e->flags & STORE_ENTRY_VALIDATE) && !(rq->has_directives && rq->directives.no_cache);
        if (may_serve && a->now_ms < e->expires_ms + e->swr_ms) {
            if (a->lease_taken && !gw_inflight_busy(rq)) {
                start_refresh(rq, e);
                a->lease_taken = false; /* the refresh holds it now */
            }
            rq->entry = e;
            gw_reply_entry(rq, e, "STALE", a->now_ms);
            return;
        }
        if (max_stale_takes(rq, e, a->now_ms)) {
            rq->entry = e;
            gw_reply_entry(rq, e, "STALE", a->now_ms);
            return;
        }
        validate = true;
    } else {
        store_entry_release(e); /* no entry comes with the other states */
        e = NULL;
    }
    if (only_if_cached(rq)) {
        store_entry_release(e);
        return;
    }
    if (validate) {
        store_entry_release(rq->stale);
        rq->stale = e; /* revalidated, and served if the origin fails while it may be */
        if (a->state == STORE_STALE && !a->lease_taken && wait_for_fill(rq))
            return;
        if (a->state == STORE_HIT && gw_inflight_wait(rq))
            return;
    } else if (a->state == STORE_FILLING ? wait_for_fill(rq) : gw_inflight_wait(rq)) {
        return;
    }
    if (rq->fill_timer) {
        event_free(rq->fill_timer);
        rq->fill_timer = NULL;
    }
    if (!rq->no_store)
        gw_inflight_lead(rq);
    gw_to_origin(rq);
}

/* Counts each limit's decision (a shadow limit's refusal as GW_SHADOW_DENIED: it refused
 * nothing), and the caller under each limit (its key: the counter it is), denied when the limit
 * refused or would have, for metrics and /callers. */
static void
count_decisions(struct gw_req *rq)
{
    struct gw_stats *st = &rq->wk->stats;
    const char *tier = rq->tier ? rq->tier->name : NULL;
    for (size_t i = 0; i < rq->admit.nlimits; i++) {
        const struct limiter_result *r = &rq->results[i];
        const char *name = gw_limit_name(rq, i);
        gw_stats_decision(st, name, tier, gw_limit_decision(rq, i));
        gw_stats_caller(st, name, tier, rq->limits[i].key, rq->limits[i].keylen, !r->allowed,
                        r->remaining, rq->admit.now_ms);
    }
}

static void
on_admitted(void *arg, int status)
{
    struct gw_req *rq = arg;
    if (status != 0) {
        gw_fail(rq, 503, "the store is unavailable");
        return;
    }
    if (rq->admit.refused_closed) {
        gw_fail(rq, 503,
                "the rate-limit store is unavailable and a limit of this endpoint fails closed");
        return;
    }
    if (rq->admit.refused_full) {
        /* Counting this caller would mean forgetting another's state: refused, counted nowhere. */
        gw_fail_retry(rq, 503, 1, "the rate-limit store is full: no room to count this request");
        return;
    }
    gw_add_limit_headers(rq);
    count_decisions(rq);
    if (!rq->admit.allowed) {
        gw_reply_denied(rq);
        return;
    }
    rq->fill_timer = NULL;
    rq->fill_waited_ms = 0;
    if (!rq->admit.cache_key) {
        gw_to_origin(rq);
        return;
    }
    on_looked_up(rq, 0);
}

/* ---- identity, hooks, limits ---------------------------------------------------------------- */

/* Runs the hooks of the caller's tenant. Returns 0, or -1 when a hook denied (answered). */
static int
run_tenant_hooks(struct gw_req *rq)
{
    struct tenant_call call = {
        .http = &rq->sr->http,
        .user = rq->user,
        .user_len = rq->user_len,
        .tenant = rq->tenant,
        .tenant_len = rq->tenant_len,
        .ip = rq->sr->ip,
        .ep = rq->ep,
        .tier = rq->tier,
    };
    tenant_hooks_run(rq->wk->tenants, rq->policy, rq->tn, &call, &rq->dec);
    rq->hooked = 1;
    if (rq->dec.deny_status) {
        gw_fail(rq, rq->dec.deny_status, rq->dec.deny_message);
        return -1;
    }
    return 0;
}

/* With the caller known: the tenant's hooks, the plan, then the limits and the lookup. */
static void
admit_request(struct gw_req *rq)
{
    if (rq->tn && rq->tn->nhooks && run_tenant_hooks(rq) != 0)
        return;
    char detail[128];
    int status = gw_plan(rq, detail, sizeof(detail));
    if (status != 0) {
        gw_fail(rq, status, detail);
        return;
    }
    struct store_admit *a = &rq->admit;
    if (rq->refresh) {
        /* The refresh of a stale entry: its lease is held, its tag generations known. */
        if (!a->cache_key) {
            gw_req_free(rq);
            return;
        }
        if (rq->primary_len) {
            /* The entry varies: the secondary key came with the request. */
            rq->primary_key = a->cache_key;
            rq->primary_len = a->cache_keylen;
            a->cache_key = rq->vkey;
            a->cache_keylen = strlen(rq->vkey);
        }
        a->allowed = true;
        gw_inflight_lead(rq);
        gw_to_origin(rq);
        return;
    }
    store_admit_and_lookup(rq->wk->store, a, on_admitted, rq);
}

static void
on_tier(void *arg, const struct db_result *res)
{
    struct gw_req *rq = arg;
    const struct policy_identity *id = &rq->policy->identity;
    if (res->status == DB_OK) {
        const char *t = res->value ? res->value : "";
        size_t tl = res->value ? res->value_len : 0;
        tier_cache_put(rq->wk->tiers, rq->user, rq->user_len, t, tl,
                       store_now_ms() + id->tier_ttl_ms);
        gw_set_tier(rq, t, tl);
    } else {
        /* The lookup failed: serve under the default tier, and do not remember it. */
        /* Not tied to the request: its answer may still fail on its own, in one line. */
        log_warn("tier lookup failed (%s); the default tier serves meanwhile", res->detail);
        gw_set_tier(rq, NULL, 0);
    }
    admit_request(rq);
}

/* Finds the caller's tier (header, cache, or an asynchronous SQL lookup), then admits. */
static void
identify(struct gw_req *rq)
{
    if (gw_identify(rq) != GW_TIER_SQL) {
        admit_request(rq);
        return;
    }
    const struct policy_identity *id = &rq->policy->identity;
    const char *t;
    size_t tl;
    if (tier_cache_get(rq->wk->tiers, rq->user, rq->user_len, store_now_ms(), &t, &tl)) {
        gw_set_tier(rq, t, tl);
        admit_request(rq);
        return;
    }
    const char *params[POLICY_MAX_ARGS];
    size_t n = id->ntier_args;
    assert(n <= POLICY_MAX_ARGS); /* the policy refuses more */
    for (size_t i = 0; i < n; i++) {
        enum template_var var;
        const char *name, *val;
        size_t len;
        if (template_single_var(id->tier_args[i], &var, &name) &&
            gw_lookup(rq, var, name, name ? strlen(name) : 0, &val, &len))
            params[i] = gw_vals_put(rq, val, len);
        else
            params[i] = NULL;
    }
    if (!rq->wk->db ||
        db_query(rq->wk->db, id->tier_sql, (int)n, params, DB_READ, on_tier, rq) != 0) {
        gw_set_tier(rq, NULL, 0);
        admit_request(rq);
    }
}

/* Answers a request refused before it was identified: with its challenge when a credential
 * was refused. */
static void
refuse(struct gw_req *rq, int status, const char *detail)
{
    if (rq->challenge)
        gw_fail_auth(rq, status, rq->challenge, detail);
    else
        gw_fail(rq, status, detail);
}

static void
on_api_key(void *arg, const struct db_result *res)
{
    struct gw_req *rq = arg;
    char detail[300];
    if (res->status != DB_OK) {
        /* Not known either way: nothing is remembered, the caller may try again. */
        rq->id_refusal = "lookup_failed";
        gw_fail_internal(rq, 503, "the API key could not be checked", res->detail);
        return;
    }
    int status =
        gw_api_key_answer(rq, res->value, res->value ? res->value_len : 0, detail, sizeof(detail));
    if (status != 0) {
        refuse(rq, status, detail);
        return;
    }
    identify(rq);
}

void
gw_req_begin(struct gw_req *rq)
{
    char detail[300];
    int status = gw_read_request(rq, detail, sizeof(detail));
    if (status != 0) {
        refuse(rq, status, detail);
        return;
    }
    if (rq->api_key_pending) {
        /* $1 is the key's SHA-256 in hex: the key itself never reaches the database. */
        const char *params[1] = {rq->api_key_hex};
        if (!rq->wk->db || db_query(rq->wk->db, rq->policy->identity.api_key->sql, 1, params,
                                    DB_READ, on_api_key, rq) != 0) {
            rq->id_refusal = "lookup_failed";
            gw_fail_internal(rq, 503, "the API key could not be checked",
                             "no database to look API keys up in");
        }
        return;
    }
    identify(rq);
}

/* ---- detached requests --------------------------------------------------------------------- */

struct gw_req *
gw_detached_new(struct gw_worker *wk, struct policy *p, struct sbuf *raw, size_t head_len,
                const char *ip, const char *ip_key)
{
    struct server_request sr;
    memset(&sr, 0, sizeof(sr));
    struct router_match m;
    if (http_parse_request(raw->p, raw->len, &sr.http) <= 0 ||
        router_match(p->router, sr.http.method_str.p, sr.http.method_str.len, sr.http.path.p,
                     sr.http.path.len, sr.http.query.p, sr.http.query.len, &m) != ROUTER_FOUND) {
        sbuf_free(raw);
        return NULL;
    }
    struct gw_req *rq = gw_req_new(wk, NULL, p, &m);
    rq->own_raw = raw->p; /* the parsed strings point into it */
    rq->own_sr = sr;
    rq->own_sr.body = raw->len > head_len ? raw->p + head_len : NULL;
    rq->own_sr.body_len = raw->len - head_len;
    snprintf(rq->own_ip, sizeof(rq->own_ip), "%s", ip);
    snprintf(rq->own_ip_key, sizeof(rq->own_ip_key), "%s", ip_key);
    rq->own_sr.ip = rq->own_ip;
    rq->own_sr.ip_key = rq->own_ip_key;
    rq->own_sr.peer = rq->own_ip;
    rq->own_sr.worker = wk->w;
    rq->sr = &rq->own_sr;
    rq->method = sr.http.method;
    rq->detached = true;
    LIST_INSERT_HEAD(&wk->background, rq, bg_link);
    *raw = (struct sbuf){0};
    return rq;
}

/*
 * Stale-while-revalidate: the request was answered from a stale entry and
 * took the key's lease; a copy of it, without a client, fetches the fresh
 * answer and fills it.
 */
static void
start_refresh(struct gw_req *rq, struct store_entry *stale)
{
    const struct http_request *h = &rq->sr->http;
    struct sbuf raw = {0};
    sbuf_printf(&raw, "%.*s %.*s HTTP/1.1\r\n", (int)h->method_str.len, h->method_str.p,
                (int)h->target.len, h->target.p);
    if (!h->host.p)
        sbuf_adds(&raw, "Host: sluice\r\n"); /* an HTTP/1.0 request may have none */
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        if ((f->name.len == 14 && strncasecmp(f->name.p, "content-length", 14) == 0) ||
            (f->name.len == 17 && strncasecmp(f->name.p, "transfer-encoding", 17) == 0))
            continue;
        sbuf_printf(&raw, "%.*s: %.*s\r\n", (int)f->name.len, f->name.p, (int)f->value.len,
                    f->value.p);
    }
    sbuf_adds(&raw, "\r\n");
    size_t head_len = raw.len;
    struct gw_req *c =
        gw_detached_new(rq->wk, rq->policy, &raw, head_len, rq->sr->ip, gw_ip_key(rq->sr));
    if (!c)
        return; /* the lease runs out by itself */
    c->refresh = true;
    c->admit.lease_taken = true; /* the lease of the lookup that found it stale */
    store_entry_ref(stale);
    c->stale = stale; /* revalidated with its validators */
    memcpy(c->tag_gens, rq->tag_gens, sizeof(c->tag_gens));
    if (rq->primary_key) {
        snprintf(c->vkey, sizeof(c->vkey), "%.*s", (int)rq->admit.cache_keylen,
                 rq->admit.cache_key);
        c->primary_len = 1; /* the entry varies: admit() takes the secondary key from vkey */
    }
    gw_req_begin(c);
}
