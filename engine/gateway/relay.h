/* relay.h - bytes between a client and an upstream as they come: streamed answers (with a copy
 * for the store while it may be stored), pushed request bodies, WebSocket tunnels. */
#ifndef SLUICE_RELAY_H
#define SLUICE_RELAY_H

#include "req.h"
#include "upstream.h"
#include "util.h"

/* An answer streamed to its client, and the request body pushed to its upstream. */
struct gw_relay {
    struct store_entry *head;   /* the answer's head as an entry (its body empty) */
    int64_t length;             /* the answer body's Content-Length, or -1 */
    uint64_t passed;            /* body bytes given to the client */
    bool started;               /* the client has the head */
    bool paused;                /* the upstream waits for the client to read */
    bool store_pending;         /* a store operation holds the request: it ends after its answer */
    bool gone;                  /* the client left while a store operation held the request */
    bool off;                   /* replies go the usual way again (a failure before the head) */
    enum upstream_error failed; /* the upstream failed while the head waited for the store */
    char failed_detail[192];
    /* A copy of the body for the store, while it may be stored. */
    bool keep;
    size_t keep_max;
    struct sbuf copy;
    struct store_entry *kept; /* the whole answer, once complete, while the store takes it */
    bool holding;             /* with a Content-Length, the copy's last piece waits for the store */
    size_t hold_off;          /* ... from here in the copy */
    struct httpcache_verdict verdict; /* the rules' word on the answer, for its store */
    uint64_t response_ms;             /* when its head arrived (RFC 9111 4.2.3) */
    /* The request body pushed to the upstream. */
    bool pumping;
    bool pump_paused; /* the client is not read: the upstream's window is full */
    /* A WebSocket tunnel. */
    bool tunnel;
    struct event *total_timer;
};

/* Answers smaller than this, with a Content-Length, are read whole before they are answered. */
#define GW_RELAY_SMALL (64u << 10)

/*
 * Makes rq's answer a streamed one, from its head e (a reference is taken;
 * its body empty) and its Content-Length (-1: unknown): from now on
 * gw_reply_entry() on rq starts the stream (its head written, the upstream
 * read on) and, once gw_relay_keep()'s copy has been stored, ends it.
 * Returns the relay (owned by rq, freed with it).
 */
struct gw_relay *gw_relay_new(struct gw_req *rq, struct store_entry *e, int64_t length);

/* Keeps a copy of the body (at most max bytes; past it the copy is dropped and the waiters on
 * the fill go to the origin) for the store, judged by v. */
void gw_relay_keep(struct gw_req *rq, size_t max, const struct httpcache_verdict *v);

/*
 * A piece of the answer's body: to the client (and the copy). Returns what
 * the upstream does next: UPSTREAM_PAUSE when the client's window is full,
 * UPSTREAM_ABANDON when the client has gone (rq is freed then).
 */
enum upstream_action gw_relay_body(struct gw_req *rq, const char *data, size_t len);

/*
 * The upstream's answer ended. A failure (error set, internal for the log)
 * after the head cut the answer: the client's connection is reset and it is
 * counted ("midstream"); a tunnel ends. Else: returns a new entry holding the
 * whole answer when a copy was kept (the caller stores it, the stream ends
 * once the store answers), or NULL once the stream has ended (rq freed).
 */
struct store_entry *gw_relay_done(struct gw_req *rq, enum upstream_error error,
                                  const char *internal);

/*
 * Pushes the client's body (sr->body_streamed) to rq's call as it arrives,
 * within the call's window. Call after upstream_send().
 */
void gw_relay_pump(struct gw_req *rq);

/* The call's window has room again (its upstream_drain_fn). */
void gw_relay_drain(void *arg);

/*
 * A 101 to a WebSocket upgrade: the 101 goes to the client with the
 * upstream's end-to-end fields (res), then bytes go both ways until either
 * side closes, the tunnel is idle for wk->ws_idle_ms or open for
 * wk->ws_max_ms. Returns what the upstream does next.
 */
enum upstream_action gw_relay_tunnel(struct gw_req *rq, const struct upstream_response *res);

#endif
