/* warm.c - cache warming: the warm callers of each generation, filled in the background at a
 * bounded rate. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "warm.h"

#include "db.h"
#include "log.h"
#include "path.h"
#include "util.h"

#define WARM_TICK_MS 50      /* a batch every tick */
#define WARM_PER_TICK 10     /* of at most this many requests (200 per second) */
#define WARM_MAX_INFLIGHT 32 /* with at most this many in flight */

static void warm_tick(evutil_socket_t fd, short what, void *arg);

static void
warm_clear(struct warm_state *ws)
{
    for (size_t i = 0; i < ws->nitems; i++) {
        free(ws->items[i].user);
        free(ws->items[i].tenant);
    }
    free(ws->items);
    ws->items = NULL;
    ws->nitems = ws->next = 0;
    ws->queries_pending = 0;
    policy_release(ws->policy);
    ws->policy = NULL;
}

static void
warm_add(struct warm_state *ws, const struct policy_endpoint *ep, const char *user, size_t ulen,
         const char *tenant, size_t tlen)
{
    if (ws->nitems % 64 == 0)
        ws->items = xrealloc(ws->items, (ws->nitems + 64) * sizeof(*ws->items));
    struct warm_item *it = &ws->items[ws->nitems++];
    it->ep = ep;
    it->user = user ? xstrndup(user, ulen) : NULL;
    it->tenant = tenant ? xstrndup(tenant, tlen) : NULL;
}

struct warm_query {
    struct gw_worker *wk;
    struct policy *policy; /* the generation it was asked for */
    const struct policy_endpoint *ep;
};

static void
warm_schedule(struct gw_worker *wk)
{
    struct timeval tv = {0, WARM_TICK_MS * 1000};
    evtimer_add(wk->warm.timer, &tv);
}

/* The rows of a warm query: each row's first column a user, its second (if any) a tenant. */
static void
on_warm_rows(void *arg, const struct db_result *res)
{
    struct warm_query *q = arg;
    struct warm_state *ws = &q->wk->warm;
    if (ws->policy != q->policy) {
        /* A newer generation is being warmed meanwhile. */
        policy_release(q->policy);
        free(q);
        return;
    }
    ws->queries_pending--;
    json_t *rows =
        res->status == DB_OK && res->value ? json_loadb(res->value, res->value_len, 0, NULL) : NULL;
    if (!rows)
        log_warn("the warm query of %s failed: %s", q->ep->name,
                 res->status == DB_OK ? "no rows" : res->detail);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        const char *col[2] = {NULL, NULL};
        char num[2][32];
        int n = 0;
        const char *k;
        json_t *v;
        json_object_foreach(row, k, v)
        {
            if (n == 2)
                break;
            if (json_is_string(v)) {
                col[n] = json_string_value(v);
            } else if (json_is_integer(v)) {
                snprintf(num[n], sizeof(num[n]), "%lld", (long long)json_integer_value(v));
                col[n] = num[n];
            }
            n++;
        }
        if (col[0])
            warm_add(ws, q->ep, col[0], strlen(col[0]), col[1], col[1] ? strlen(col[1]) : 0);
    }
    json_decref(rows);
    struct gw_worker *wk = q->wk;
    policy_release(q->policy);
    free(q);
    warm_schedule(wk);
}

char *
gw_warm_query_sql(const char *sql)
{
    return xasprintf("SELECT coalesce(json_agg(row_to_json(t)), '[]')::text FROM (%s) t", sql);
}

/* Starts warming generation p: the fixed callers now, the queried ones as they arrive. */
void
gw_warm_start(struct gw_worker *wk, struct policy *p)
{
    struct warm_state *ws = &wk->warm;
    warm_clear(ws);
    ws->filled = ws->hits = ws->failed = 0;
    bool any = false;
    for (size_t i = 0; i < p->nendpoints; i++)
        any |= p->endpoints[i].warm != NULL;
    if (!any)
        return;
    policy_ref(p);
    ws->policy = p;
    for (size_t i = 0; i < p->nendpoints; i++) {
        const struct policy_endpoint *ep = &p->endpoints[i];
        const struct policy_warm *w = ep->warm;
        if (!w)
            continue;
        for (size_t j = 0; j < w->ncallers; j++) {
            const struct policy_warm_caller *c = &w->callers[j];
            warm_add(ws, ep, c->user, c->user ? strlen(c->user) : 0, c->tenant,
                     c->tenant ? strlen(c->tenant) : 0);
        }
        if (w->sql && wk->db) {
            char *sql = gw_warm_query_sql(w->sql);
            struct warm_query *q = xmalloc(sizeof(*q));
            q->wk = wk;
            policy_ref(p);
            q->policy = p;
            q->ep = ep;
            if (db_query(wk->db, sql, 0, NULL, DB_READ, on_warm_rows, q) == 0) {
                ws->queries_pending++;
            } else {
                policy_release(p);
                free(q);
            }
            free(sql);
        }
    }
    warm_schedule(wk);
}

/* Sends the next few warming requests, at most WARM_PER_TICK per tick and WARM_MAX_INFLIGHT. */
static void
warm_tick(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *wk = arg;
    struct warm_state *ws = &wk->warm;
    if (!ws->policy)
        return;
    unsigned sent = 0;
    while (ws->next < ws->nitems && sent < WARM_PER_TICK && ws->inflight < WARM_MAX_INFLIGHT) {
        const struct warm_item *it = &ws->items[ws->next++];
        const struct policy_identity *id = &ws->policy->identity;
        const char *target = strchr(it->ep->name, ' ');
        if (!target || strchr(target, '*'))
            continue;
        struct sbuf raw = {0};
        sbuf_printf(&raw, "GET %s HTTP/1.1\r\nHost: sluice\r\n", target + 1);
        if (it->user && id->user_header)
            sbuf_printf(&raw, "%s: %s\r\n", id->user_header, it->user);
        if (it->tenant && id->tenant_header)
            sbuf_printf(&raw, "%s: %s\r\n", id->tenant_header, it->tenant);
        sbuf_adds(&raw, "\r\n");
        struct gw_req *rq =
            gw_detached_new(wk, ws->policy, &raw, raw.len, "127.0.0.1", "127.0.0.1");
        if (!rq) {
            ws->failed++;
            continue;
        }
        rq->warm = true;
        if (id->user_claim || id->tenant_claim) {
            /* A verified identity: the warm caller is given as the claims its credential would
             * carry (warming sends no credential, and counts against no limit). */
            rq->claims = json_object();
            if (it->user && id->user_claim)
                json_object_set_new(rq->claims, id->user_claim, json_string(it->user));
            if (it->tenant && id->tenant_claim)
                json_object_set_new(rq->claims, id->tenant_claim, json_string(it->tenant));
        }
        ws->inflight++;
        sent++;
        gw_req_begin(rq);
    }
    if (ws->next < ws->nitems || ws->queries_pending || ws->inflight) {
        warm_schedule(wk);
        return;
    }
    log_info("warmed generation %llu: %llu filled, %llu already cached, %llu failed",
             (unsigned long long)ws->policy->generation, (unsigned long long)ws->filled,
             (unsigned long long)ws->hits, (unsigned long long)ws->failed);
    warm_clear(ws);
}

void
gw_warm_init(struct gw_worker *wk)
{
    wk->warm.timer = evtimer_new(server_worker_base(wk->w), warm_tick, wk);
}

void
gw_warm_free(struct gw_worker *wk)
{
    if (wk->warm.timer) {
        event_free(wk->warm.timer);
        wk->warm.timer = NULL;
    }
    warm_clear(&wk->warm);
}
