/* fill.c - filling the cache from an origin: one fill per key per worker, Vary, hit-for-miss. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway_internal.h"
#include "httpcache.h"
#include "util.h"

static void
fill_done(void *arg, int status)
{
    (void)arg;
    (void)status; /* refused fills are expected after a concurrent invalidation */
}

/* ---- fills in progress: local coalescing ------------------------------------------------- */

static size_t
inflight_bucket(const char *key, size_t len)
{
    return (size_t)(util_fnv1a(key, len) % INFLIGHT_BUCKETS);
}

static struct inflight *
inflight_find(struct gw_worker *wk, const char *key, size_t len)
{
    for (struct inflight *f = wk->inflight[inflight_bucket(key, len)]; f; f = f->next)
        if (f->keylen == len && memcmp(f->key, key, len) == 0)
            return f;
    return NULL;
}

/* Makes rq the local filler of its cache key (when no other request of this worker is). */
void
gw_inflight_lead(struct gw_req *rq)
{
    const char *key = rq->admit.cache_key;
    size_t len = rq->admit.cache_keylen;
    if (!key || rq->inflight || inflight_find(rq->wk, key, len))
        return;
    struct inflight *f = xmalloc(sizeof(*f) + len + 1);
    memcpy(f->key, key, len);
    f->key[len] = '\0';
    f->keylen = len;
    f->filler = rq;
    f->waiters = NULL;
    size_t b = inflight_bucket(key, len);
    f->next = rq->wk->inflight[b];
    rq->wk->inflight[b] = f;
    rq->inflight = f;
}

/* Whether rq may wait on a fill of its key that another request of this worker leads. */
bool
gw_inflight_wait(struct gw_req *rq)
{
    struct inflight *f = inflight_find(rq->wk, rq->admit.cache_key, rq->admit.cache_keylen);
    if (!f || f->filler == rq)
        return false;
    if (!rq->wait_start_ms)
        rq->wait_start_ms = store_now_ms();
    rq->next_waiter = f->waiters;
    f->waiters = rq;
    return true;
}

/*
 * The leader of a fill is done. With a stored answer, each waiting request
 * gets it (when the answer varies, only those sending the same fields; the
 * others go to the origin). With an answer that may not be stored
 * (hit-for-miss), every waiter goes to the origin at once. When the leader
 * failed or went away, the first waiter takes the fill over and the others
 * keep waiting on it.
 */
void
gw_inflight_finish(struct gw_req *rq)
{
    struct inflight *f = rq->inflight;
    rq->inflight = NULL;
    struct inflight **pp = &rq->wk->inflight[inflight_bucket(f->key, f->keylen)];
    while (*pp != f)
        pp = &(*pp)->next;
    *pp = f->next;
    struct gw_req *w = f->waiters;
    free(f);
    struct store_entry *e = rq->answer;
    if (!e && !rq->uncacheable && w && !rq->wk->closing) {
        struct gw_req *heir = w;
        w = w->next_waiter;
        heir->next_waiter = NULL;
        gw_inflight_lead(heir);
        gw_to_origin(heir); /* the others wait on it below, while their wait lasts */
    }
    uint64_t now = store_now_ms();
    while (w) {
        struct gw_req *next = w->next_waiter;
        w->next_waiter = NULL;
        if (!e && !rq->uncacheable && !rq->wk->closing && w->wait_start_ms + FILL_WAIT_MS > now) {
            /* The fill failed and this one may wait longer: it waits on the heir's fill. */
            if (gw_inflight_wait(w)) {
                w = next;
                continue;
            }
        }
        bool share = e != NULL;
        if (share && rq->vary_names[0] && !rq->primary_key) {
            /* The answer varies: shared only with a waiter sending the same fields. */
            long n = gw_vary_key(w, rq->vary_names);
            share = n >= 0 && (size_t)n == strlen(rq->vkey) &&
                    memcmp(w->vkey, rq->vkey, (size_t)n) == 0;
        }
        if (share)
            gw_reply_entry(w, e, rq->admit.bypassed ? "BYPASS" : "HIT", e->stored_ms);
        else
            gw_to_origin(w);
        w = next;
    }
}

/* ---- filling the cache -------------------------------------------------------------------- */

/* The secondary key of rq when the answer varies on `names`, into rq->vkey. */
long
gw_vary_key(struct gw_req *rq, const char *names)
{
    const char *primary = rq->primary_key ? rq->primary_key : rq->admit.cache_key;
    size_t plen = rq->primary_key ? rq->primary_len : rq->admit.cache_keylen;
    return httpcache_vary_key(primary, plen, names, &rq->sr->http, rq->vkey, sizeof(rq->vkey));
}

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
    gw_reply_entry(rq, rq->answer, "MISS", rq->answer->stored_ms);
}

static uint64_t
stale_keep_ms(const struct policy_endpoint *ep)
{
    return ep->swr_ms > ep->sie_ms ? ep->swr_ms : ep->sie_ms;
}

/*
 * Stores an origin's answer e under the request's key for ttl_ms (with the
 * endpoint's stale window), then replies with it. `vary` (or NULL) lists the
 * request fields the answer varies on: the answer then goes under the
 * secondary key and a marker naming the fields under the primary one.
 */
void
gw_store_and_reply(struct gw_req *rq, struct store_entry *e, uint64_t ttl_ms, const char *vary)
{
    const struct policy_endpoint *ep = rq->ep;
    uint64_t now = store_now_ms();
    e->stored_ms = now;
    e->expires_ms = now + ttl_ms;
    e->stale_ms = stale_keep_ms(ep);
    if (!e->etag) {
        char tag[19];
        httpcache_etag_of(e->body, e->body_len, tag);
        e->etag = xstrdup(tag);
    }
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
            struct store_entry *m = store_entry_new(200, NULL, xstrdup(vary), strlen(vary));
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
        gw_reply_entry(rq, e, "MISS", now);
        return;
    }
    if (rq->warm)
        rq->warm_outcome = WARM_FILLED;
    /* Answered once the store has it: the caller's next request, on any instance, hits. */
    store_fill(rq->wk->store, key, keylen, e, ttl_ms, rq->tags, rq->taglens, rq->tag_gens,
               rq->admit.ntags, on_filled, rq);
}

/* The hit-for-miss marker is in the store: now the answer goes out. */
static void
on_uncacheable_noted(void *arg, int status)
{
    struct gw_req *rq = arg;
    gw_reply_entry(rq, rq->entry, "MISS", store_now_ms()); /* rq->entry is released with rq */
}

/*
 * Remembers briefly that the key's answers are not cacheable (hit-for-miss),
 * then answers with e (a reference is taken) once the store has the marker:
 * the caller's next request, on any instance, then finds it, and the marker
 * can never land after a good answer that request fills.
 */
void
gw_remember_uncacheable(struct gw_req *rq, struct store_entry *e)
{
    rq->uncacheable = true;
    if (!rq->admit.cache_key || rq->admit.bypassed) {
        gw_reply_entry(rq, e, "MISS", store_now_ms());
        return;
    }
    uint64_t ttl = rq->ep->ttl_ms < HIT_FOR_MISS_MS ? rq->ep->ttl_ms : HIT_FOR_MISS_MS;
    struct store_entry *m = store_entry_new(200, NULL, xstrdup(""), 0);
    m->flags = STORE_ENTRY_PASS;
    const char *key = rq->primary_key ? rq->primary_key : rq->admit.cache_key;
    size_t keylen = rq->primary_key ? rq->primary_len : rq->admit.cache_keylen;
    store_entry_ref(e);
    store_entry_release(rq->entry);
    rq->entry = e;
    store_fill(rq->wk->store, key, keylen, m, ttl, rq->tags, rq->taglens, rq->tag_gens,
               rq->admit.ntags, on_uncacheable_noted, rq);
    store_entry_release(m);
}
