/* store_redis_list.c - the Redis store's listing of cache entries: SCAN rounds and list.lua. */
#define _GNU_SOURCE
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "hmap.h"
#include "redis_conn.h"
#include "store.h"
#include "store_redis_codec.h"
#include "store_redis_list.h"
#include "util.h"

/*
 * A listing runs in steps, each sent from the replies of the one before (at
 * most a few commands in flight on the connection, which keeps serving the
 * admin's other operations in between):
 *
 *   SCAN cursor MATCH "sl:{*}:c:GLOB*" COUNT SCAN_COUNT, as a pattern run
 *       does: the entry keys of the primaries that match and of the
 *       variants that do (their primary is what is listed); each primary
 *       found is queued once (SCAN may return a key twice);
 *   list.lua on the queued primaries, LIST_PER_CALL a call, as many as the
 *       limit leaves room for: each one's entry (gone, or a tag moved: not
 *       listed), its response's trailer, and its variants.
 *
 * The queue is emptied before the next SCAN, so a round's matches are all
 * looked at, and the listing ends once `limit` primaries are listed (more
 * queued, or the cursor not back at 0: truncated), when the cursor comes
 * back to 0, or after its rounds (truncated). A glob without wildcards is
 * one primary: no SCAN.
 *
 * On a Redis Cluster the listing is given every master: SCAN runs on each in
 * turn (its cursor from 0; the queue of one is emptied before the next is
 * scanned), list.lua on the master that returned the keys, one primary per
 * call (the keys of different primaries are in different slots).
 */

#define SCAN_COUNT 500 /* the COUNT of each SCAN */
/* Primaries read by one list.lua call, and members of one's variants set read at most: a call
 * makes a few thousand commands inside Redis at worst (a few ms, well within a deadline). */
#define LIST_PER_CALL 8
#define VARIANTS_LOOKED STORE_LIST_VARIANTS

/* A primary found: queued, then asked for. */
struct cand {
    struct hmap_node node; /* in seen */
    size_t len;
    char key[];
};

struct list_op {
    struct redis_conn **conns; /* the masters; conns[at] is scanned and asked */
    size_t nconns, at;
    size_t per_call; /* primaries per list.lua call */
    bool advance;    /* conns[at] is scanned: the next SCAN goes to the next one, from 0 */
    uint64_t *failed;
    store_list_fn *done;
    void *arg;
    int pending; /* replies awaited, and one for the sender while it sends */
    int status;
    size_t limit;
    unsigned rounds, max_rounds;
    char *glob;        /* NUL-terminated */
    struct sbuf match; /* the SCAN pattern */
    char cursor[24];   /* the next SCAN's cursor */
    bool last;         /* no SCAN left: the cursor came back 0, or a literal glob */
    struct hmap seen;  /* every primary queued, by key */
    struct cand **queue;
    size_t nqueue, qhead, qcap;
    struct sbuf scratch;
    struct store_listing l;
};

/* One list.lua call: the primaries it asked for. */
struct ask {
    struct list_op *op;
    size_t n;
    struct cand *cands[LIST_PER_CALL];
};

static void step(struct list_op *op);

static void
fail(struct list_op *op, const redisReply *r)
{
    if (op->status == 0)
        op->status = r ? -1 : STORE_UNAVAILABLE;
}

static void
finish(struct list_op *op)
{
    if (op->status != 0)
        (*op->failed)++;
    op->done(op->arg, op->status, op->status == 0 ? &op->l : NULL);
    for (struct hmap_node *n = hmap_first(&op->seen), *next; n; n = next) {
        next = hmap_next(&op->seen, n);
        free(HMAP_ENTRY(n, struct cand, node));
    }
    hmap_free(&op->seen);
    store_listing_free(&op->l);
    sbuf_free(&op->match);
    sbuf_free(&op->scratch);
    free(op->queue);
    free(op->glob);
    free(op->conns);
    free(op);
}

/* One reply (or the sender) less; the last one takes the next step. */
static void
part_done(struct list_op *op)
{
    if (--op->pending == 0)
        step(op);
}

/* Queues the primary key[0..len) unless it was queued before. */
static void
enqueue(struct list_op *op, const char *key, size_t len)
{
    if (hmap_find(&op->seen, key, len))
        return;
    struct cand *c = xmalloc(sizeof(*c) + len);
    c->len = len;
    memcpy(c->key, key, len);
    hmap_insert(&op->seen, &c->node, c->key, len);
    if (op->nqueue == op->qcap) {
        op->qcap = op->qcap ? 2 * op->qcap : 64;
        op->queue = xrealloc(op->queue, op->qcap * sizeof(*op->queue));
    }
    op->queue[op->nqueue++] = c;
}

static void
on_scan(void *arg, redisReply *r)
{
    struct list_op *op = arg;

    const redisReply *keys = codec_scan_reply(r, op->cursor, sizeof(op->cursor), &op->last);
    if (!keys) {
        fail(op, r);
        part_done(op);
        return;
    }
    if (op->last && op->at + 1 < op->nconns) {
        /* This master is done: the next one, once the queue (asked here) is emptied. */
        op->advance = true;
        op->last = false;
    }
    op->l.scanned += keys->elements;
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *kr = keys->element[i];
        size_t rawlen;
        const char *raw =
            kr->type == REDIS_REPLY_STRING ? codec_entry_key_raw(kr->str, kr->len, &rawlen) : NULL;
        if (raw && store_key_matches(op->glob, raw, rawlen))
            enqueue(op, raw, store_key_primary_len(raw, rawlen));
    }
    part_done(op);
}

static void
add_tag(void *ctx, const char *tag, size_t len)
{
    store_list_add_tag(ctx, tag, len);
}

/* Fills li from an entry's value v, its response's trailer tr and length n, at now. Returns 0,
 * or -1 when they are malformed. */
static int
describe(struct store_list_entry *li, const redisReply *v, const redisReply *tr,
         const redisReply *n, uint64_t now, struct codec_meta *meta)
{
    uint64_t total;

    if (v->type != REDIS_REPLY_STRING || tr->type != REDIS_REPLY_STRING ||
        codec_reply_u64(n, &total) != 0 || total > SIZE_MAX ||
        codec_meta_from_tail(tr->str, tr->len, (size_t)total, meta) != 0)
        return -1;
    li->status = meta->status;
    li->flags = meta->flags;
    li->bytes = meta->bytes;
    store_list_set_times(li, meta->stored_ms, meta->expires_ms, meta->age_ms, meta->swr_ms,
                         meta->sie_ms, now);
    return codec_entry_tags(v->str, v->len, add_tag, li);
}

/* Moves what probe describes into the listing's entry li, which keeps its key. */
static void
take(struct store_list_entry *li, struct store_list_entry *probe)
{
    char *key = li->key;
    size_t keylen = li->keylen;

    *li = *probe;
    li->key = key;
    li->keylen = keylen;
}

/* One primary's part of a list.lua reply: [entry, trailer, length, head, set size, variants]. */
static void
list_primary(struct list_op *op, const struct cand *c, const redisReply *e, uint64_t now)
{
    struct store_list_entry probe = {0};
    struct codec_meta meta;

    if (e->type != REDIS_REPLY_ARRAY || e->elements != 6 ||
        e->element[5]->type != REDIS_REPLY_ARRAY)
        return; /* nil: gone, or invalidated */
    if (describe(&probe, e->element[0], e->element[1], e->element[2], now, &meta) != 0) {
        store_list_entry_free(&probe);
        return;
    }
    struct store_list_entry *li = store_listing_add(&op->l, c->key, c->len);
    take(li, &probe);
    const redisReply *head = e->element[3];
    if ((meta.flags & STORE_ENTRY_VARY) && head->type == REDIS_REPLY_STRING)
        li->vary = xstrndup(head->str, head->len < meta.body_len ? head->len : meta.body_len);
    uint64_t size = 0;
    if (codec_reply_u64(e->element[4], &size) == 0 && size > VARIANTS_LOOKED)
        li->variants_partial = true;
    const redisReply *vs = e->element[5];
    for (size_t j = 0; j + 4 <= vs->elements; j += 4) {
        const redisReply *m = vs->element[j]; /* the whole cache key of a variant */
        if (m->type != REDIS_REPLY_STRING || !store_key_matches(op->glob, m->str, m->len))
            continue;
        probe = (struct store_list_entry){0};
        if (describe(&probe, vs->element[j + 1], vs->element[j + 2], vs->element[j + 3], now,
                     &meta) != 0) {
            store_list_entry_free(&probe);
            continue;
        }
        struct store_list_entry *v = store_list_add_variant(li, m->str, m->len);
        if (v)
            take(v, &probe);
        else
            store_list_entry_free(&probe);
    }
}

static void
on_ask(void *arg, redisReply *r)
{
    struct ask *a = arg;
    struct list_op *op = a->op;
    uint64_t now;

    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != a->n + 1 ||
        codec_reply_u64(r->element[0], &now) != 0) {
        fail(op, r);
    } else {
        op->l.now_ms = now;
        for (size_t i = 0; i < a->n; i++)
            list_primary(op, a->cands[i], r->element[1 + i], now);
    }
    free(a);
    part_done(op);
}

/* Sends list.lua for the next n queued primaries (the caller counts the replies). */
static void
ask(struct list_op *op, size_t n)
{
    while (n > 0) {
        struct ask *a = xmalloc(sizeof(*a));
        struct sbuf b = {0};
        a->op = op;
        a->n = n < op->per_call ? n : op->per_call;
        n -= a->n;
        resp_evalsha(&b, REDIS_SCRIPT_LIST, a->n, 3);
        for (size_t i = 0; i < a->n; i++) {
            struct cand *c = op->queue[op->qhead++];
            a->cands[i] = c;
            codec_resp_key(&b, &op->scratch, 'c', NULL, c->key, c->len);
        }
        resp_u64(&b, TRAILER_LEN + CODED_LEN);
        resp_u64(&b, VARIANTS_LOOKED);
        resp_u64(&b, op->per_call == 1 ? 1 : 0); /* one per call: a cluster */
        op->pending++;
        redis_conn_send(op->conns[op->at], REDIS_SCRIPT_LIST, &b, on_ask, a);
    }
}

/* The next step, once every reply of the last one is in. */
static void
step(struct list_op *op)
{
    size_t queued = op->nqueue - op->qhead, room = op->limit - op->l.n;

    if (op->status != 0) {
        finish(op);
        return;
    }
    if (room == 0) {
        op->l.truncated = queued > 0 || !op->last;
        finish(op);
        return;
    }
    if (queued == 0 && op->last) {
        finish(op);
        return;
    }
    if (queued == 0 && op->rounds == op->max_rounds) {
        op->l.truncated = true;
        finish(op);
        return;
    }
    op->pending = 1; /* the sender */
    if (queued > 0) {
        ask(op, queued < room ? queued : room);
    } else {
        struct sbuf b = {0};
        if (op->advance) {
            op->advance = false;
            op->at++;
            memcpy(op->cursor, "0", 2);
        }
        op->rounds++;
        resp_argc(&b, 6);
        resp_str(&b, "SCAN");
        resp_str(&b, op->cursor);
        resp_str(&b, "MATCH");
        resp_arg(&b, op->match.p, op->match.len);
        resp_str(&b, "COUNT");
        resp_u64(&b, SCAN_COUNT);
        op->pending++;
        redis_conn_send(op->conns[op->at], -1, &b, on_scan, op);
    }
    part_done(op);
}

void
redis_list(struct redis_conn *const *conns, size_t nconns, bool cluster, unsigned rounds,
           uint64_t *failed, const char *glob, size_t globlen, size_t limit, store_list_fn *done,
           void *arg)
{
    struct list_op *op = xcalloc(1, sizeof(*op));
    size_t litlen;

    assert(limit > 0 && nconns > 0);
    *op = (struct list_op){.nconns = nconns,
                           .per_call = cluster ? 1 : LIST_PER_CALL,
                           .failed = failed,
                           .done = done,
                           .arg = arg,
                           .pending = 1,
                           .limit = limit,
                           .max_rounds = rounds ? rounds : REDIS_LIST_ROUNDS,
                           .l = {.store = "redis"}};
    op->conns = xmalloc(nconns * sizeof(*op->conns));
    memcpy(op->conns, conns, nconns * sizeof(*op->conns));
    op->glob = xmalloc(globlen + 1);
    if (memchr(glob, '\0', globlen)) {
        op->status = -1;
    } else if (store_glob_literal(glob, globlen, op->glob, &litlen)) {
        /* One key: its primary, and the variants the glob names. */
        enqueue(op, op->glob, store_key_primary_len(op->glob, litlen));
        op->l.scanned = 1;
        op->last = true;
    } else {
        codec_scan_match(&op->match, glob, globlen);
        memcpy(op->cursor, "0", 2);
    }
    memcpy(op->glob, glob, globlen);
    op->glob[globlen] = '\0';
    part_done(op);
}
