/* relay.c - bytes between a client and an upstream as they come: streamed answers (with a copy
 * for the store while it may be stored), pushed request bodies, WebSocket tunnels. */
#define _GNU_SOURCE
#include "relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fill.h"
#include "util.h"

static bool relay_reply(struct gw_req *rq, const struct server_response *resp);
static void relay_free(struct gw_req *rq);
static const struct gw_relay_ops relay_ops = {relay_reply, relay_free};

/* rq's relay, made on first use. */
static struct gw_relay *
relay_of(struct gw_req *rq)
{
    if (!rq->relay) {
        rq->relay = xcalloc(1, sizeof(*rq->relay));
        rq->relay->length = -1;
        rq->relay_ops = &relay_ops;
    }
    return rq->relay;
}

/*
 * Ends rq and its client's answer: completed (its last chunk, or the close
 * that delimits it), or cut (the connection reset). The request is freed
 * first: what it counts reads the request, which the server's next one may
 * overwrite.
 */
static void
finish(struct gw_req *rq, bool cut)
{
    struct server_request *sr = rq->sr;
    bool started = rq->relay->started;
    if (started)
        gw_answered(rq, rq->relay->passed);
    rq->relay->started = false; /* relay_free() leaves the stream alone */
    gw_req_free(rq);
    if (cut || !started)
        server_stream_abort(sr);
    else
        server_stream_end(sr);
}

/* The copy for the store is given up (the answer is too large): the requests waiting on the
 * fill go to the origin now, and nothing is stored. */
static void
drop_copy(struct gw_req *rq)
{
    struct gw_relay *r = rq->relay;
    r->keep = false;
    r->holding = false;
    sbuf_free(&r->copy);
    rq->uncacheable = true;
    if (rq->inflight)
        gw_inflight_finish(rq);
}

/* What the client's side of a streamed answer says. */
static void
on_client(void *arg, enum server_stream_event ev)
{
    struct gw_req *rq = arg;
    struct gw_relay *r = rq->relay;
    if (ev == SERVER_STREAM_DRAINED) {
        if (r->paused && rq->call) {
            r->paused = false;
            upstream_resume(rq->call);
        }
        return;
    }
    /* The client has gone: the answer ends here, but not under a store operation's feet. */
    if (r->store_pending) {
        r->gone = true;
        return;
    }
    finish(rq, true);
}

static bool
relay_reply(struct gw_req *rq, const struct server_response *resp)
{
    struct gw_relay *r = rq->relay;
    if (!r->head || r->off)
        return false;
    r->store_pending = false;
    if (r->gone) {
        finish(rq, true);
        return true;
    }
    if (!r->started && r->failed != UPSTREAM_OK) {
        /* The upstream failed while the head waited for the store: an error like any other. */
        r->off = true;
        gw_upstream_failed(rq, r->failed, r->failed_detail);
        return true;
    }
    if (!r->started) {
        rq->status = resp->status;
        r->started = true;
        if (resp->status >= 500 && !rq->logged)
            /* As respond() does: one line for every 5xx, here the origin's own. */
            gw_log(rq, LOGL_WARN, resp->status, "%d: the origin's own answer", resp->status);
        server_stream_start(rq->sr, resp,
                            resp->close_delimited || r->length < 0 ? SERVER_LENGTH_UNKNOWN
                                                                   : r->length,
                            on_client, rq);
        if (rq->call)
            upstream_resume(rq->call); /* it waited for the head to go out */
        return true;
    }
    /* The store answered for the copy: the piece held back, then the end. */
    if (r->holding && r->kept)
        (void)server_stream_write(rq->sr, r->kept->body + r->hold_off,
                                  r->kept->body_len - r->hold_off);
    finish(rq, false);
    return true;
}

static void
relay_free(struct gw_req *rq)
{
    struct gw_relay *r = rq->relay;
    if (r->started)
        server_stream_abort(rq->sr); /* never left open */
    if (r->total_timer)
        event_free(r->total_timer);
    store_entry_release(r->head);
    store_entry_release(r->kept);
    sbuf_free(&r->copy);
    free(r);
    rq->relay = NULL;
    rq->relay_ops = NULL;
}

struct gw_relay *
gw_relay_new(struct gw_req *rq, struct store_entry *e, int64_t length)
{
    struct gw_relay *r = relay_of(rq);
    store_entry_ref(e);
    store_entry_release(r->head);
    r->head = e;
    r->length = length;
    r->response_ms = store_now_ms();
    return r;
}

void
gw_relay_keep(struct gw_req *rq, size_t max, const struct httpcache_verdict *v)
{
    struct gw_relay *r = rq->relay;
    r->keep = true;
    r->keep_max = max;
    r->verdict = *v;
}

enum upstream_action
gw_relay_body(struct gw_req *rq, const char *data, size_t len)
{
    struct gw_relay *r = rq->relay;
    if (r->keep) {
        if (r->copy.len + len > r->keep_max) {
            drop_copy(rq);
        } else {
            sbuf_add(&r->copy, data, len);
            if (r->length >= 0 && r->passed + len == (uint64_t)r->length) {
                /* The last piece: the client gets it once the store has the answer, so that
                 * its next request finds it stored. */
                r->holding = true;
                r->hold_off = r->copy.len - len;
                r->passed += len;
                return UPSTREAM_GO;
            }
        }
    }
    r->passed += len;
    int w = server_stream_write(rq->sr, data, len);
    if (w < 0) {
        finish(rq, true);
        return UPSTREAM_ABANDON;
    }
    if (w > 0) {
        r->paused = true;
        return UPSTREAM_PAUSE;
    }
    return UPSTREAM_GO;
}

struct store_entry *
gw_relay_done(struct gw_req *rq, enum upstream_error error, const char *internal)
{
    struct gw_relay *r = rq->relay;
    if (error != UPSTREAM_OK) {
        if (r->store_pending) {
            /* The head waits for the store: the failure is answered once it has. */
            r->failed = error;
            snprintf(r->failed_detail, sizeof(r->failed_detail), "%s", internal);
            return NULL;
        }
        if (!r->started) {
            r->off = true;
            gw_upstream_failed(rq, error, internal);
            return NULL;
        }
        if (r->tunnel) {
            finish(rq, false); /* idle for too long, or broken: the tunnel closes */
            return NULL;
        }
        /* The head is out: no error answer can follow it. A reset tells the client that what
         * it got is not the whole answer. */
        gw_log(rq, LOGL_ERROR, rq->status, "the upstream failed mid-answer after %llu bytes: %s",
               (unsigned long long)r->passed, internal);
        gw_stats_origin_error(&rq->wk->stats, GW_ORIGIN_UPSTREAM, "midstream");
        finish(rq, true);
        return NULL;
    }
    if (!r->keep) {
        finish(rq, false);
        return NULL;
    }
    /* The whole answer for the store; the stream ends when the store has answered. */
    const struct store_entry *h = r->head;
    struct store_entry *e =
        gw_entry_new(rq, h->status, h->content_type, h->headers, h->headers ? h->headers_len : 0,
                     h->etag, r->copy.p ? r->copy.p : "", r->copy.len);
    sbuf_free(&r->copy);
    e->stored_ms = h->stored_ms;
    e->flags = h->flags;
    store_entry_ref(e);
    r->kept = e;
    r->store_pending = true;
    return e;
}

/* ---- the request body --------------------------------------------------------------------- */

/* The client's body failed (too large, malformed, cut): the request ends with it. */
static void
body_failed(struct gw_req *rq, enum server_body_event ev)
{
    struct gw_relay *r = rq->relay;
    if (r->store_pending) {
        r->gone = true; /* ended once the store has answered */
        return;
    }
    if (r->started) {
        finish(rq, true);
        return;
    }
    switch (ev) {
    case SERVER_BODY_TOO_LARGE:
        gw_fail(rq, 413, "request body too large");
        return;
    case SERVER_BODY_MALFORMED:
        gw_fail(rq, 400, "malformed chunked body");
        return;
    default:
        gw_fail(rq, 400, "the client left before its whole request body");
        return;
    }
}

static void
on_client_body(void *arg, enum server_body_event ev, const char *data, size_t len)
{
    struct gw_req *rq = arg;
    struct gw_relay *r = rq->relay;
    switch (ev) {
    case SERVER_BODY_DATA: {
        if (!rq->call) {
            server_body_pause(rq->sr); /* answered already: the rest is never read */
            return;
        }
        int w = upstream_write_body(rq->call, data, len);
        if (w != 0) {
            /* The window is full (drained later), or the call is answered: read no more. */
            r->pump_paused = w > 0;
            server_body_pause(rq->sr);
        }
        return;
    }
    case SERVER_BODY_END:
        r->pumping = false;
        if (rq->call)
            upstream_end_body(rq->call);
        return;
    default:
        r->pumping = false;
        body_failed(rq, ev);
        return;
    }
}

void
gw_relay_pump(struct gw_req *rq)
{
    struct gw_relay *r = relay_of(rq);
    r->pumping = true;
    server_body_start(rq->sr, on_client_body, rq);
}

void
gw_relay_drain(void *arg)
{
    struct gw_req *rq = arg;
    struct gw_relay *r = rq->relay;
    if (r && r->pump_paused) {
        r->pump_paused = false;
        server_body_resume(rq->sr);
    }
}

/* ---- WebSocket tunnels -------------------------------------------------------------------- */

static void
on_tunnel_total(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *rq = arg;
    gw_log(rq, LOGL_INFO, 101, "WebSocket tunnel closed after %llu ms",
           (unsigned long long)rq->wk->ws_max_ms);
    finish(rq, false);
}

enum upstream_action
gw_relay_tunnel(struct gw_req *rq, const struct upstream_response *res)
{
    struct gw_relay *r = relay_of(rq);
    struct sbuf h = {0};
    for (size_t i = 0; i < res->nfields; i++) {
        sbuf_add(&h, res->fields[i].name, res->fields[i].name_len);
        sbuf_add(&h, ": ", 2);
        sbuf_add(&h, res->fields[i].value, res->fields[i].value_len);
        sbuf_add(&h, "\r\n", 2);
    }
    sbuf_adds(&h, "Upgrade: websocket\r\n");
    /* The rate-limit fields of the upgrade (its limits were counted once, for the tunnel), then
     * the upstream's end-to-end fields. */
    struct server_response resp = {.status = 101,
                                   .headers = rq->hdrs,
                                   .headers_len = rq->hdrs_len,
                                   .headers2 = h.p,
                                   .headers2_len = h.len};
    r->tunnel = true;
    r->started = true;
    rq->status = 101;
    server_stream_start(rq->sr, &resp, SERVER_LENGTH_TUNNEL, on_client, rq);
    sbuf_free(&h);
    /* Idle: nothing moved either way on the upstream's connection (while the client reads,
     * the server's own idle timeout watches it). */
    upstream_set_timeout(rq->call, rq->wk->ws_idle_ms);
    if (rq->wk->ws_max_ms) {
        struct timeval tv = util_ms_to_tv(rq->wk->ws_max_ms);
        r->total_timer = evtimer_new(server_worker_base(rq->wk->w), on_tunnel_total, rq);
        evtimer_add(r->total_timer, &tv);
    }
    gw_relay_pump(rq);
    return UPSTREAM_GO;
}
