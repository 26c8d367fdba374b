/* source.c - the origins of a request: SQL statements, fixed answers, and the dispatch to the
 * upstream source. */
#define _GNU_SOURCE
#include "source.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "fill.h"
#include "httpcache.h"
#include "proxy.h"
#include "template.h"
#include "util.h"

/* An answer of the SQL or static source as an entry (body copied), with the entity tag of its
 * body when it is to be cached (as gw_store_and_reply() would make it: one block for all). */
static struct store_entry *
origin_entry(struct gw_req *rq, int status, const char *body, size_t len, bool cached)
{
    char tag[19];

    if (cached)
        httpcache_etag_of(body, len, tag);
    return gw_entry_new(rq, (uint16_t)status, rq->ep->content_type, NULL, 0, cached ? tag : NULL,
                        body, len);
}

/* A fresh origin answer for a cached endpoint: store it, then reply (body copied). */
static void
fill_and_reply(struct gw_req *rq, int status, const char *body, size_t len)
{
    const struct policy_endpoint *ep = rq->ep;
    struct store_entry *e = origin_entry(rq, status, body, len, true);
    gw_entry_windows(e, ep->swr_ms, ep->sie_ms, 0);
    gw_store_and_reply(rq, e, ep->ttl_ms, NULL, "MISS");
    store_entry_release(e);
}

/* An answer of a cached endpoint whose cache the request bypasses: replied, not stored, with
 * X-Cache: BYPASS (body copied). */
static void
bypass_reply(struct gw_req *rq, int status, const char *body, size_t len)
{
    struct store_entry *e = origin_entry(rq, status, body, len, true);
    uint64_t now = store_now_ms();
    e->stored_ms = now; /* Age: 0 */
    gw_reply_entry(rq, e, "BYPASS", now);
    store_entry_release(e);
}

/*
 * The database's own words (its message, SQLSTATE) name tables, columns, constraints and the
 * values of other rows: they go to the log with the request id, and the client gets a generic
 * detail that says which side was at fault.
 */
static void
on_db(void *arg, const struct db_result *res)
{
    struct gw_req *rq = arg;
    const struct policy_endpoint *ep = rq->ep;
    char internal[320];
    struct gw_stats *st = &rq->wk->stats;
    uint64_t took_us = gw_origin_done(rq);
    if (res->status == DB_OK)
        gw_stats_origin(st, GW_ORIGIN_SQL, took_us, store_now_ms());
    else
        gw_stats_origin_error(st, GW_ORIGIN_SQL, db_status_word(res->status));
    snprintf(internal, sizeof(internal), "database: %s (SQLSTATE %s)", res->detail,
             res->sqlstate && res->sqlstate[0] ? res->sqlstate : "none");
    switch (res->status) {
    case DB_OK:
        break;
    case DB_CLIENT_ERROR:
        /* Class 23, integrity: the data conflicts with rows the database holds; class 22: a
         * value of the request is not what the statement takes. */
        if (res->sqlstate && strncmp(res->sqlstate, "23", 2) == 0)
            gw_fail_internal(rq, 409, "the request conflicts with data the database holds",
                             internal);
        else
            gw_fail_internal(rq, 400, "the database refused a value of the request", internal);
        return;
    case DB_ERROR:
        gw_origin_failed(rq, 502, "the database failed the statement", internal);
        return;
    case DB_TIMEOUT:
        gw_origin_failed(rq, 504, "the database did not answer in time", internal);
        return;
    case DB_UNAVAILABLE:
    default:
        gw_origin_failed(rq, 503, "the database is unavailable", internal);
        return;
    }

    char affected[40];
    const char *body;
    size_t len;
    if (!ep->returns_rows) {
        len = (size_t)snprintf(affected, sizeof(affected), "{\"affected\":%ld}",
                               res->affected < 0 ? 0 : res->affected);
        body = affected;
    } else if (res->value) {
        body = res->value;
        len = res->value_len;
    } else if (ep->one) {
        gw_fail(rq, 404, "no such record");
        return;
    } else {
        body = "[]";
        len = 2;
    }

    if (ep->is_write) {
        struct store_entry *e =
            origin_entry(rq, ep->method == HTTP_POST ? 201 : 200, body, len, false);
        gw_invalidate_then_reply(rq, e, NULL, 0);
        store_entry_release(e);
        return;
    }
    if (ep->cached && rq->admit.cache_key) {
        fill_and_reply(rq, 200, body, len);
        return;
    }
    if (ep->cached && rq->bypass) {
        bypass_reply(rq, 200, body, len);
        return;
    }
    gw_reply_body(rq, 200, body, len);
}

/* Builds the statement's parameters and sends it. */
static void
run_sql(struct gw_req *rq)
{
    const struct policy_endpoint *ep = rq->ep;
    const char *params[POLICY_MAX_ARGS];
    size_t n = ep->nargs;
    assert(n <= POLICY_MAX_ARGS); /* the policy refuses more */
    for (size_t i = 0; i < n; i++) {
        enum template_var var;
        const char *name;
        const char *val;
        size_t len;
        if (template_single_var(ep->args[i], &var, &name)) {
            /* A lone variable is passed as it is: no escaping, absent is NULL. */
            if (var == TV_BODY && (!rq->body || !json_object_get(rq->body, name))) {
                char detail[192];
                snprintf(detail, sizeof(detail), "missing field '%s' in the JSON body", name);
                gw_fail(rq, 400, detail);
                return;
            }
            if (gw_lookup(rq, var, name, name ? strlen(name) : 0, &val, &len))
                params[i] = (val >= rq->vals && val < rq->vals + sizeof(rq->vals))
                                ? val
                                : gw_vals_put(rq, val, len);
            else
                params[i] = NULL;
        } else {
            params[i] = gw_expand(rq, ep->args[i], &len);
        }
        if (rq->value_overflow || rq->refusal) {
            gw_fail(rq, 400, rq->refusal ? rq->refusal : "request values too long");
            return;
        }
    }
    if (!rq->wk->db) {
        gw_fail_internal(rq, 503, "the database is unavailable", "no database is configured");
        return;
    }
    rq->origin_us = util_mono_us();
    if (db_query_within(rq->wk->db, ep->sql, (int)n, params, ep->is_write ? 0 : DB_READ,
                        ep->sql_timeout_ms, on_db, rq) != 0)
        gw_fail_internal(rq, 503, "the database is unavailable",
                         "the database pool is shutting down");
}

void
gw_to_origin(struct gw_req *rq)
{
    if (rq->wk->closing) {
        gw_fail(rq, 503, "the server is shutting down");
        return;
    }
    const struct policy_endpoint *ep = rq->ep;
    switch (ep->source) {
    case SOURCE_SQL:
        run_sql(rq);
        return;
    case SOURCE_STATIC:
        if (ep->is_write) {
            struct store_entry *e =
                origin_entry(rq, ep->static_status, ep->static_body, ep->static_len, false);
            gw_invalidate_then_reply(rq, e, NULL, 0);
            store_entry_release(e);
            return;
        }
        if (ep->cached && rq->admit.cache_key) {
            fill_and_reply(rq, ep->static_status, ep->static_body, ep->static_len);
            return;
        }
        if (ep->cached && rq->bypass) {
            bypass_reply(rq, ep->static_status, ep->static_body, ep->static_len);
            return;
        }
        gw_reply_body(rq, ep->static_status, ep->static_body, ep->static_len);
        return;
    case SOURCE_UPSTREAM:
    default:
        gw_proxy_run(rq);
        return;
    }
}
