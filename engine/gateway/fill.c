/* fill.c - what an origin's answer does to the cache: fills (Vary markers), hit-for-miss markers,
 * and the invalidations of a write. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fill.h"

#include "codec.h"
#include "httpcache.h"
#include "plan.h"
#include "util.h"

#define HIT_FOR_MISS_MS                                                                            \
    30000 /* an uncacheable answer sends its key's requests straight to the                        \
             origin this long (at most the endpoint's TTL) */

static void
fill_done(void *arg, int status)
{
    (void)arg;
    (void)status; /* refused fills are expected after a concurrent invalidation */
}

/* ---- filling the cache -------------------------------------------------------------------- */

static void
fill_key(struct gw_req *rq, const char *key, size_t keylen, struct store_entry *e, uint64_t ttl)
{
    store_fill(rq->wk->store, key, keylen, e, ttl, rq->tags, rq->taglens, rq->tag_gens,
               rq->admit.ntags, fill_done, NULL);
}

/* The store has the fill (or refused it after an invalidation): now the answer goes out. */
static void
on_filled(void *arg, int status)
{
    struct gw_req *rq = arg;
    gw_reply_entry(rq, rq->answer, rq->fill_xcache, rq->answer->stored_ms);
}

struct store_entry *
gw_entry_new(const struct gw_req *rq, uint16_t status, const char *content_type,
             const char *headers, size_t headers_len, const char *etag, const void *body,
             size_t body_len)
{
    size_t room = rq->admit.cache_key
                      ? store_record_room(rq->wk->store, rq->admit.cache_keylen, rq->admit.ntags)
                      : 0;
    return store_entry_make(status, content_type, headers, headers_len, etag, body, body_len, room);
}

void
gw_entry_windows(struct store_entry *e, uint64_t swr_ms, uint64_t sie_ms, uint64_t keep_ms)
{
    e->swr_ms = swr_ms;
    e->sie_ms = sie_ms;
    uint64_t m = swr_ms > sie_ms ? swr_ms : sie_ms;
    e->stale_ms = m > keep_ms ? m : keep_ms;
}

/* ---- compress: the coded forms of an entry, made once before it is stored --------------- */

/* Whether the stored header lines say the body must stay as it is: the origin coded it itself
 * (Content-Encoding: never coded twice) or forbids transformations (Cache-Control:
 * no-transform, RFC 9111 section 5.2.2.6). */
static bool
keep_as_is(const struct store_entry *e)
{
    char v[256];
    if (!e->headers)
        return false;
    if (httpcache_field_in_lines(e->headers, e->headers_len, "content-encoding", v, sizeof(v)) >= 0)
        return true;
    return httpcache_field_in_lines(e->headers, e->headers_len, "cache-control", v, sizeof(v)) >
               0 &&
           strcasestr(v, "no-transform") != NULL;
}

/*
 * Gives e the coded forms its endpoint's compress asks for (RFC 9110 section 8.4): each of
 * them made here, once per stored entry, never for a hit. Left alone: markers, statuses
 * without a body to code (204, 206, 304), bodies under min_size, types compress does not
 * name, bodies the origin coded or marked no-transform, and forms no smaller than the body.
 */
static void
code_entry(const struct gw_req *rq, struct store_entry *e)
{
    const struct policy_compress *pc = &rq->ep->compress;
    char *form[CODEC_N] = {0};
    size_t len[CODEC_N] = {0}, total = 0;

    if (!pc->codings || e->coded || (e->flags & (STORE_ENTRY_PASS | STORE_ENTRY_VARY)) ||
        e->status == 204 || e->status == 206 || e->status == 304 ||
        !policy_compress_applies(pc, e->content_type, e->body_len) || keep_as_is(e))
        return;
    for (int c = 0; c < CODEC_N; c++) {
        if ((pc->codings & CODEC_BIT(c)) &&
            (form[c] = codec_encode((enum codec)c, e->body, e->body_len, &len[c])))
            total += len[c];
    }
    if (total == 0)
        return;
    struct store_coded *coded = xmalloc(sizeof(*coded) + total);
    char *at = (char *)(coded + 1);
    for (int c = 0; c < CODEC_N; c++) {
        coded->body[c] = form[c] ? at : NULL;
        coded->len[c] = (uint32_t)len[c];
        if (form[c])
            memcpy(at, form[c], len[c]);
        at += len[c];
        free(form[c]);
    }
    e->coded = coded;
}

/* ---- filling the cache, continued --------------------------------------------------------- */

void
gw_store_and_reply(struct gw_req *rq, struct store_entry *e, uint64_t ttl_ms, const char *vary,
                   const char *xcache)
{
    uint64_t now = store_now_ms();
    rq->fill_xcache = xcache;
    e->stored_ms = now;
    e->expires_ms = now + ttl_ms;
    if (!e->etag) {
        char tag[19];
        httpcache_etag_of(e->body, e->body_len, tag);
        e->etag = xstrdup(tag);
    }
    if (!rq->admit.bypassed)
        code_entry(rq, e); /* not stored while the store is away: not coded per request either */
    store_entry_ref(e);
    store_entry_release(rq->answer);
    rq->answer = e; /* shared with the requests waiting on this fill */
    if (rq->admit.bypassed) {
        /* The shared store is unavailable: the cache was not consulted and is not filled;
         * the waiters of this worker still share the answer (only theirs, when it varies). */
        if (vary && gw_vary_key(rq, vary) >= 0) {
            snprintf(rq->vary_names, sizeof(rq->vary_names), "%s", vary);
        } else if (vary) {
            store_entry_release(rq->answer);
            rq->answer = NULL;
        }
        gw_reply_entry(rq, e, "BYPASS", now);
        return;
    }
    const char *key = rq->admit.cache_key;
    size_t keylen = rq->admit.cache_keylen;
    if (vary && rq->primary_key && strcmp(vary, rq->vary_names) != 0) {
        /* The answer varies on other fields than the marker says: start over from the primary
         * key with a new marker. */
        rq->admit.cache_key = rq->primary_key;
        rq->admit.cache_keylen = rq->primary_len;
        key = rq->primary_key;
        keylen = rq->primary_len;
        rq->primary_key = NULL;
        rq->primary_len = 0;
    }
    if (vary && !rq->primary_key) {
        long n = gw_vary_key(rq, vary);
        if (n >= 0) {
            struct store_entry *m = gw_entry_new(rq, 200, NULL, NULL, 0, NULL, vary, strlen(vary));
            m->flags = STORE_ENTRY_VARY;
            m->stale_ms = e->stale_ms;
            fill_key(rq, key, keylen, m, ttl_ms);
            store_entry_release(m);
            snprintf(rq->vary_names, sizeof(rq->vary_names), "%s", vary);
            key = rq->vkey;
            keylen = (size_t)n;
        } else {
            key = NULL; /* the fields are too long to key: not stored */
        }
    } else if (!vary && rq->primary_key) {
        /* It no longer varies: the answer replaces the marker. */
        key = rq->primary_key;
        keylen = rq->primary_len;
    }
    if (!key) {
        store_entry_release(rq->answer); /* not stored: waiters go to the origin themselves */
        rq->answer = NULL;
        gw_reply_entry(rq, e, xcache, now);
        return;
    }
    if (rq->warm)
        rq->warm_outcome = WARM_FILLED;
    /* Answered once the store has it: the caller's next request, on any instance, hits. */
    rq->filled = true;
    store_fill(rq->wk->store, key, keylen, e, ttl_ms, rq->tags, rq->taglens, rq->tag_gens,
               rq->admit.ntags, on_filled, rq);
}

/* The hit-for-miss marker is in the store: now the answer goes out. */
static void
on_uncacheable_noted(void *arg, int status)
{
    struct gw_req *rq = arg;
    gw_reply_entry(rq, rq->entry, rq->fill_xcache, store_now_ms()); /* released with rq */
}

void
gw_remember_uncacheable(struct gw_req *rq, struct store_entry *e, const char *xcache)
{
    rq->uncacheable = true;
    rq->fill_xcache = xcache;
    if (!rq->admit.cache_key || rq->admit.bypassed) {
        gw_reply_entry(rq, e, xcache, store_now_ms());
        return;
    }
    const struct policy_endpoint *ep = rq->ep;
    uint64_t ttl = !ep->ttl_origin && ep->ttl_ms < HIT_FOR_MISS_MS ? ep->ttl_ms : HIT_FOR_MISS_MS;
    struct store_entry *m = gw_entry_new(rq, 200, NULL, NULL, 0, NULL, "", 0);
    m->flags = STORE_ENTRY_PASS;
    const char *key = rq->primary_key ? rq->primary_key : rq->admit.cache_key;
    size_t keylen = rq->primary_key ? rq->primary_len : rq->admit.cache_keylen;
    store_entry_ref(e);
    store_entry_release(rq->entry);
    rq->entry = e;
    rq->filled = true;
    store_fill(rq->wk->store, key, keylen, m, ttl, rq->tags, rq->taglens, rq->tag_gens,
               rq->admit.ntags, on_uncacheable_noted, rq);
    store_entry_release(m);
}

/* ---- the invalidations of a write ------------------------------------------------------- */

/* The invalidation of a write landed (or failed): now the write is answered. */
static void
on_invalidated(void *arg, int status)
{
    struct gw_req *rq = arg;
    if (status != 0)
        gw_log(rq, LOGL_WARN, 0,
               "the invalidation after the write failed; entries may stay "
               "until their TTL");
    gw_reply_entry(rq, rq->answer, NULL, 0);
}

void
gw_invalidate_then_reply(struct gw_req *rq, struct store_entry *e, const struct http_header *f,
                         size_t n)
{
    store_entry_ref(e);
    rq->answer = e;
    if (gw_plan_invalidations(rq, f, n) != 0) {
        gw_fail(rq, 500, "an invalidation key was too long");
        return;
    }
    if (rq->ninv == 0) {
        gw_reply_entry(rq, e, NULL, 0);
        return;
    }
    gw_stats_invalidations(&rq->wk->stats, rq->ninv);
    /* The store may hold the tags until it is done: they live in the request. */
    store_invalidate(rq->wk->store, rq->inv_tags, rq->inv_lens, rq->ninv, on_invalidated, rq);
}
