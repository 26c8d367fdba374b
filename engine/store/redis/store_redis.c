/* store_redis.c - the Redis store: limits, cache entries and tags in Redis, through hiredis async.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "hmap.h"
#include "log.h"
#include "redis_cluster.h"
#include "redis_conn.h"
#include "redis_sentinel.h"
#include "store_redis_fleet.h"
#include "redis_slots.h"
#include "store.h"
#include "store_redis.h"
#include "store_redis_codec.h"
#include "store_redis_list.h"
#include "store_redis_near.h"
#include "util.h"

/*
 * One handle per worker holds one connection (two when limits live in a
 * separate Redis). Every operation is one EVALSHA of a script of lua/redis/
 * (embedded in the binary, loaded with SCRIPT LOAD on every new connection):
 *
 *   admit_and_lookup  admit.lua: every limit, the entry, the tags' generations,
 *                     the fill lease; then a GET of the stored response, in the
 *                     same write, unless the handle has a local copy of it
 *   fill              fill.lua: refused when a tag moved since the lookup
 *   invalidate        invalidate.lua: bumps each tag's generation
 *   delete_keys       delete.lua, one call per key (pipelined): the entry, its
 *                     response, and the secondaries its variants set names
 *   invalidate_pattern  SCAN cursor MATCH pattern COUNT 500 over the entry keys,
 *                     then UNLINK of what matched, batch after batch, each
 *                     command sent from the previous one's callback
 *   list              SCAN rounds likewise, and list.lua on the primaries that
 *                     matched (store_redis_list.c)
 *
 * Commands of concurrent requests are appended to hiredis's output buffer
 * and leave in one write once the worker's loop has run every callback of
 * the iteration, so they are pipelined; replies come back in order.
 *
 * Stale keep. The entry's and the response's keys live for ttl + stale_ms;
 * the entry's value holds expires_ms, past which admit.lua reports it stale.
 *
 * Redis Cluster (REDIS_URL=redis+cluster://...). Every key is named with a
 * hash tag (store_redis_codec.c), so each command goes to the master of one
 * slot (redis_cluster.c). A request whose keys share a hash tag is one call,
 * as on one node. Otherwise (cluster_route()): its limits are decided by one
 * call per slot, its lookup rides with the limits of its cache key's slot,
 * and the tags of its lookup under another hash tag are read by tags.lua in
 * their own slots, compared with the generations the entry recorded (read
 * with a GET of the entry beside the response's). Invalidation is one
 * invalidate.lua per tag, in the tag's slot; pattern runs and listings SCAN
 * every master in turn. docs/redis-cluster.md says what this guarantees.
 *
 * The connections (deadlines, reconnection, scripts, the libevent adapter) are
 * in redis_conn.c, the layout of keys and values in store_redis_codec.c, the
 * local copies of responses in store_redis_near.c.
 */

#define DEFAULT_DEADLINE_MS 50
#define DEFAULT_TAG_LEASE_MS 600000
#define DEFAULT_NEAR_BYTES (16u << 20)
#define MAX_BATCH 64         /* requests decided by one admit.lua call at most */
#define SCAN_COUNT 500       /* the COUNT of each SCAN of a pattern run */
#define REDIS_MAX_MASTERS 64 /* masters of a cluster a pattern run or a listing covers at most */

int
store_redis_check_url(const char *url, char *err, size_t errlen)
{
    struct redis_endpoint ep[REDIS_CLUSTER_MAX_SEEDS];
    struct redis_sentinel_url su;

    if (redis_cluster_is_url(url))
        return redis_cluster_parse_url(url, ep, REDIS_CLUSTER_MAX_SEEDS, err, errlen) < 0 ? -1 : 0;
    if (redis_sentinel_is_url(url))
        return redis_sentinel_parse_url(url, &su, err, errlen);
    return redis_conn_parse_url(url, ep, err, errlen);
}

#define SENTINEL_DEADLINE_MS 250 /* of each question to a sentinel */

/*
 * Reads url into *ep, or for a redis+sentinel:// URL into *su (then ep is
 * its master's settings with no host yet, and *sentinel is set). 0 or -1.
 */
static int
parse_any_url(const char *url, struct redis_endpoint *ep, struct redis_sentinel_url *su,
              bool *sentinel, char *err, size_t errlen)
{
    *sentinel = redis_sentinel_is_url(url);
    if (!*sentinel)
        return redis_conn_parse_url(url, ep, err, errlen);
    if (redis_sentinel_parse_url(url, su, err, errlen) != 0)
        return -1;
    *ep = su->master;
    return 0;
}

struct batch;
STAILQ_HEAD(batch_list, batch);

struct store_redis {
    struct store base;
    struct redis_conn_env env; /* the loop, the deadline, closing: shared by the connections */
    struct redis_conn cache, limits;
    struct redis_sentinel *watch[2]; /* where cache's and limits' masters are (sentinel URLs) */
    bool split;                      /* limits live in their own Redis */
    struct redis_cluster *cluster;   /* a Redis Cluster (then cache and limits are unused) */
    uint64_t tag_lease_ms;
    uint64_t token_state;        /* the fill tokens' random stream */
    struct near near;            /* local copies of responses */
    struct redis_turn turn_ev;   /* runs once the loop's turn has run its other callbacks */
    struct batch_list turn;      /* the admits of this turn, by batch */
    struct hmap open;            /* the turn's batches still taking requests, by tag */
    struct hmap tagq;            /* in a cluster: the turn's reads of foreign tags, by tag key */
    struct tag_read *tagq_first; /* ... in the order they were asked for */
    struct sbuf scratch;         /* for building keys */
    unsigned list_rounds;        /* SCAN rounds of one listing (0: the default) */
    struct store_redis_stats stats;
};

static void
on_ignored(void *arg, redisReply *r)
{
}

/* Makes room for `more` bytes in b at once, so that building a command reallocates rarely. */
static void
buf_reserve(struct sbuf *b, size_t more)
{
    if (b->cap - b->len > more)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= more)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

/* The cluster slot of every key the store names after raw (codec_hash_tag()). */
static unsigned
raw_slot(const char *raw, size_t len)
{
    char tag[MAX_HASH_TAG + 1];

    return redis_slots_crc16(tag, codec_hash_tag(raw, len, tag)) & (REDIS_SLOTS - 1);
}

/*
 * Sends b (taken) where the keys named after raw live: on the cache's connection, or in a
 * cluster to the master of their slot. fn(arg, reply) is called once, as redis_conn_send() does.
 */
static void
send_for(struct store_redis *s, const char *raw, size_t len, int script, struct sbuf *b,
         redis_reply_fn *fn, void *arg)
{
    if (s->cluster)
        redis_cluster_send(s->cluster, raw_slot(raw, len), script, b, fn, arg);
    else
        redis_conn_send(&s->cache, script, b, fn, arg);
}

/* ---- admit_and_lookup --------------------------------------------------------------------- */

struct admit_op {
    struct store_redis *s;
    struct store_admit *a;
    store_done_fn *done;
    void *arg;
    int pending; /* replies awaited, and one for the sender while it sends */
    int status;
    size_t nu;                   /* distinct limits sent */
    size_t *map;                 /* a->nlimits: the distinct limit each one counts in */
    struct limiter_rule *ids;    /* nu */
    uint64_t *costs;             /* nu */
    struct limiter_result *ures; /* nu */
    bool *shadow;                /* nu: every limit counting in it is a shadow limit */
    bool allowed;
    bool lease;     /* the lookup asked for the fill lease */
    bool found;     /* the script found the entry, fresh or stale: token holds its fill token */
    bool stale;     /* ... past its expiry, kept for its stale_ms */
    bool leased;    /* the lookup took the fill lease (on a miss, or with a stale entry) */
    bool filling;   /* another caller holds the fill lease */
    bool near;      /* a local copy was found: no GET was sent with the lookup */
    bool refetched; /* the GET was sent after the lookup */
    bool split;     /* the limits and the lookup went in separate calls */
    uint64_t now_ms;
    unsigned char token[TOKEN_LEN];
    char *value; /* the stored response read after the script (owned), or NULL */
    size_t value_len;
    /* In a cluster, the tags of the lookup outside the cache key's hash tag (bits by index in
     * a->tags): their generations are read by tags.lua in their own slots, and compared with
     * the ones the entry recorded (its 'c' key, read after the script) here. */
    uint64_t foreign;
    char *cvalue; /* the entry's value (owned), or NULL */
    size_t cvalue_len;
};

static void admit_value_command(struct store_redis *s, struct admit_op *op);
static void admit_part_done(struct admit_op *op);
static void on_admit_cvalue(void *arg, redisReply *r);

/* Whether tag i of the lookup is read in its own call (a cluster's foreign tag). */
static bool
is_foreign(const struct admit_op *op, size_t i)
{
    return i < 64 && (op->foreign >> i & 1);
}

/* The tags admit.lua reads for op's lookup. */
static size_t
local_ntags(const struct admit_op *op)
{
    size_t n = 0;

    for (size_t i = 0; i < op->a->ntags; i++)
        n += !is_foreign(op, i);
    return n;
}

/*
 * In a cluster: whether the entry's value, read after the lookup, is the entry the lookup
 * found (the same fill token: 1 when it records for each of its tags outside its hash tag
 * the generation the lookup read for that tag now; 0 when it does not, the entry is stale),
 * or -1 when the value is not that entry's (gone, or another fill's since). Anything but 1
 * is a miss: never a stale answer.
 */
static int
foreign_tags_hold(struct admit_op *op)
{
    const struct store_admit *a = op->a;
    const unsigned char *v = (const unsigned char *)op->cvalue;
    size_t len = op->cvalue_len, p = 16;
    char own[MAX_HASH_TAG + 1], gen[24];
    size_t ownlen = codec_hash_tag(a->cache_key, a->cache_keylen, own);
    struct sbuf k = {0};
    bool ok = true;

    if (!v || len < 16 || memcmp(v, op->token, TOKEN_LEN) != 0)
        return -1;
    while (ok && p < len) {
        uint32_t kl, gl;
        if (len - p < 4)
            break;
        memcpy(&kl, v + p, 4); /* little-endian, as codec_put_u32 wrote it (x86, arm64) */
        p += 4;
        if (len - p < (size_t)kl + 4) {
            ok = false;
            break;
        }
        const char *tk = (const char *)v + p;
        p += kl;
        memcpy(&gl, v + p, 4);
        p += 4;
        if (len - p < gl) {
            ok = false;
            break;
        }
        const char *g = (const char *)v + p;
        p += gl;
        /* "sl:{TAG}:t:..." under the entry's own hash tag: admit.lua compared it. */
        if (kl > 4 + ownlen && memcmp(tk + 4, own, ownlen) == 0 && tk[4 + ownlen] == '}')
            continue;
        bool seen = false;
        for (size_t i = 0; i < a->ntags && !seen; i++) {
            if (!is_foreign(op, i))
                continue;
            k.len = 0;
            codec_cache_key(&k, 't', a->tags[i], a->taglens[i]);
            if (k.len != kl || memcmp(k.p, tk, kl) != 0)
                continue;
            seen = true;
            size_t n = util_u64(gen, a->tag_gens[i]);
            ok = n == gl && memcmp(gen, g, gl) == 0;
        }
        ok = ok && seen;
    }
    sbuf_free(&k);
    return ok ? 1 : 0;
}

/* The entry found: the response read with it, or the local copy, when it carries the
 * same fill token. NULL when there is none (yet). */
static struct store_entry *
admit_entry(struct admit_op *op)
{
    struct store_admit *a = op->a;
    struct store_entry *e;

    if (op->value) {
        if (op->value_len < TRAILER_LEN - AGES_LEN ||
            memcmp(op->value + op->value_len - TOKEN_LEN, op->token, TOKEN_LEN) != 0)
            return NULL;
        e = codec_entry_from_value(op->value, op->value_len);
        if (e) {
            op->value = NULL;
            near_put(&op->s->near, a->cache_key, a->cache_keylen, op->token, e);
        }
        return e;
    }
    struct near_entry *ne = near_find(&op->s->near, a->cache_key, a->cache_keylen);
    if (!ne || memcmp(ne->token, op->token, TOKEN_LEN) != 0)
        return NULL;
    store_entry_ref(ne->entry);
    op->s->stats.local_hits++;
    return ne->entry;
}

static void
admit_finish(struct admit_op *op)
{
    struct store_admit *a = op->a;
    struct store_entry *entry = NULL;
    int held;

    a->entry = NULL;
    a->state = STORE_MISS;
    a->lease_taken = false;
    if (op->status == 0) {
        a->allowed = op->allowed;
        a->now_ms = op->now_ms;
        for (size_t i = 0; i < a->nlimits; i++) {
            a->results[i] = op->ures[op->map[i]];
            a->results[i].limit = a->limits[i].rule->limit;
        }
        if (!a->allowed) {
            for (size_t i = 0; i < a->ntags; i++)
                a->tag_gens[i] = 0;
            if (op->split && op->leased) {
                /* The lookup ran beside a denied check and took the lease: give it back. */
                struct sbuf b = {0}, k = {0};
                resp_argc(&b, 2);
                resp_str(&b, "DEL");
                codec_resp_key(&b, &k, 'f', NULL, a->cache_key, a->cache_keylen);
                sbuf_free(&k);
                send_for(op->s, a->cache_key, a->cache_keylen, -1, &b, on_ignored, NULL);
            }
        } else if (op->found && op->foreign && (held = foreign_tags_hold(op)) != 1) {
            /* Filled under a generation of a foreign tag that has moved since: a miss, and
             * the entry goes, so that the next lookups take the lease and fill again (not
             * when the entry read was another fill's: that one is left to its lookups). */
            if (held == 0) {
                struct sbuf b = {0}, k = {0};
                resp_argc(&b, 2);
                resp_str(&b, "DEL");
                codec_resp_key(&b, &k, 'c', NULL, a->cache_key, a->cache_keylen);
                sbuf_free(&k);
                send_for(op->s, a->cache_key, a->cache_keylen, -1, &b, on_ignored, NULL);
            }
            near_drop(&op->s->near, a->cache_key, a->cache_keylen);
            a->lease_taken = op->leased;
        } else if (op->found) {
            entry = admit_entry(op);
            if (entry) {
                a->entry = entry;
                a->state = op->stale ? STORE_STALE : STORE_HIT;
                a->lease_taken = op->leased;
            } else if (op->near && !op->refetched) {
                /* Another response than the local copy: read it now (a second round trip). */
                op->refetched = true;
                op->s->stats.refetches++;
                op->pending = 2; /* the GET, and this sender */
                admit_value_command(op->s, op);
                admit_part_done(op);
                return;
            }
            /* Else the entry vanished since the lookup: a miss (with the lease when it was
             * stale and the lookup took it). */
            a->lease_taken = op->leased;
        } else if (a->cache_key) {
            near_drop(&op->s->near, a->cache_key, a->cache_keylen);
            if (op->filling)
                a->state = STORE_FILLING;
            a->lease_taken = op->leased;
        }
    } else {
        op->s->stats.failed++;
    }
    store_done_fn *done = op->done;
    void *arg = op->arg;
    int status = op->status;
    free(op->value);
    free(op->cvalue);
    free(op);
    done(arg, status);
}

/* One reply awaited less; the last one completes the operation. */
static void
admit_part_done(struct admit_op *op)
{
    if (--op->pending == 0)
        admit_finish(op);
}

/* The stored response, read right after the lookup; used only if the lookup found it fresh. */
static void
on_admit_value(void *arg, redisReply *r)
{
    struct admit_op *op = arg;

    if (r && r->type == REDIS_REPLY_STRING && r->str) {
        /* hiredis 0.14 mallocs a string reply's buffer and frees it with free(): take it. */
        op->value = r->str;
        op->value_len = r->len;
        r->str = NULL;
        r->len = 0;
    }
    admit_part_done(op);
}

#define ALL_LIMITS (~0ull)

/* Whether the distinct limit u is in mask (ALL_LIMITS: every one, however many). */
static bool
in_mask(uint64_t mask, size_t u)
{
    return mask == ALL_LIMITS || (u < 64 && (mask >> u & 1));
}

/* How many of op's distinct limits mask holds. */
static size_t
mask_count(const struct admit_op *op, uint64_t mask)
{
    size_t n = 0;

    for (size_t u = 0; u < op->nu; u++)
        n += in_mask(mask, u);
    return n;
}

/* Reads one request's part of an admit.lua reply at *pos: its limits in mask (when
 * with_limits) and its lookup (when with_cache). Returns 0 or -1. */
static int
admit_parse(struct admit_op *op, const redisReply *r, size_t *pos, uint64_t now, bool with_limits,
            bool with_cache, uint64_t mask)
{
    struct store_admit *a = op->a;
    size_t nl = with_limits ? mask_count(op, mask) : 0;
    bool look = with_cache && a->cache_key;
    size_t nt = look ? a->ntags : 0;
    size_t p = *pos;
    uint64_t allowed, v[4];

    if (codec_reply_u64(r->element[p++], &allowed) != 0)
        return -1;
    for (size_t i = 0; nl > 0 && i < op->nu; i++) {
        if (!in_mask(mask, i))
            continue;
        for (int k = 0; k < 4; k++)
            if (codec_reply_u64(r->element[p++], &v[k]) != 0)
                return -1;
        op->ures[i] = (struct limiter_result){.allowed = v[0] != 0,
                                              .limit = op->ids[i].limit,
                                              .remaining = v[1],
                                              .reset_ms = v[2],
                                              .retry_after_ms = v[3]};
    }
    if (look) {
        for (size_t i = 0; i < nt; i++) /* the foreign ones come from tags.lua */
            if (!is_foreign(op, i) && codec_reply_u64(r->element[p++], &a->tag_gens[i]) != 0)
                return -1;
        const redisReply *e = r->element[p++];
        if (e->type == REDIS_REPLY_STRING) {
            if (e->len != TOKEN_LEN && e->len != TOKEN_LEN + 1)
                return -1;
            memcpy(op->token, e->str, TOKEN_LEN);
            op->found = true;
            op->stale = e->len > TOKEN_LEN;
            op->leased = op->stale && e->str[TOKEN_LEN] == 1;
        } else if (e->type == REDIS_REPLY_INTEGER) {
            op->filling = true;
        } else if (e->type == REDIS_REPLY_NIL) {
            op->leased = op->lease && allowed; /* a miss with the lease asked took it */
        } else {
            return -1;
        }
    }
    if (nl > 0) {
        op->allowed = op->allowed && allowed != 0; /* every part of the limits admits */
        op->now_ms = now;
    } else if (op->now_ms == 0) {
        op->now_ms = now;
    }
    *pos = p;
    return 0;
}

static int
reply_status(const redisReply *r)
{
    return r ? -1 : STORE_UNAVAILABLE;
}

/*
 * A batch: admits of one turn of the worker's loop whose keys share one hash tag, decided
 * by one EVALSHA (admit.lua runs them one after the other). An admit whose keys are under
 * several tags, and every admit when limits live in their own Redis, is a batch of one.
 */

struct batch {
    STAILQ_ENTRY(batch) link; /* in the turn */
    struct hmap_node node;    /* in open by tag, while it takes requests (tagged ones only) */
    struct redis_conn *conn;
    unsigned slot; /* in a cluster: where it goes */
    bool with_limits, with_cache;
    size_t n;
    char tag[MAX_HASH_TAG + 1]; /* the hash tag its admits share, when it has one */
    struct admit_op *ops[MAX_BATCH];
    uint64_t masks[MAX_BATCH]; /* the distinct limits of each op this batch decides */
};

static void
on_batch(void *arg, redisReply *r)
{
    struct batch *bt = arg;
    size_t pos = 1, want = 1;
    uint64_t now = 0;

    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        bool look = bt->with_cache && op->a->cache_key;
        want += 1 + 4 * (bt->with_limits ? mask_count(op, bt->masks[i]) : 0) +
                (look ? local_ntags(op) + 1 : 0);
    }
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == want &&
              codec_reply_u64(r->element[0], &now) == 0;
    for (size_t i = 0; i < bt->n; i++) {
        struct admit_op *op = bt->ops[i];
        if (ok && admit_parse(op, r, &pos, now, bt->with_limits, bt->with_cache, bt->masks[i]) != 0)
            ok = false;
        if (!ok && op->status != STORE_UNAVAILABLE)
            op->status = reply_status(r);
        admit_part_done(op);
    }
    free(bt);
}

/* The keys of one command, each once: their bytes in `bytes`, found again by hash. */
struct keyset {
    struct sbuf bytes;
    size_t *off, *len; /* per key */
    uint32_t *slot;    /* open addressing: key index + 1, 0 empty */
    size_t n, cap, mask;
};

static void
keyset_init(struct keyset *ks, size_t max)
{
    size_t slots = 16;

    while (slots < 2 * max)
        slots *= 2;
    *ks = (struct keyset){.cap = max, .mask = slots - 1};
    ks->off = xmalloc(max * sizeof(*ks->off));
    ks->len = xmalloc(max * sizeof(*ks->len));
    ks->slot = xcalloc(slots, sizeof(*ks->slot));
}

static void
keyset_free(struct keyset *ks)
{
    sbuf_free(&ks->bytes);
    free(ks->off);
    free(ks->len);
    free(ks->slot);
}

/* Adds the key of `kind` (see codec_resp_key); returns its index in KEYS (from 1). */
static size_t
keyset_add(struct keyset *ks, char kind, const struct limiter_rule *id, const char *raw, size_t len)
{
    size_t off = ks->bytes.len;

    if (kind == 'l')
        codec_limit_key(&ks->bytes, id, raw, len);
    else
        codec_cache_key(&ks->bytes, kind, raw, len);
    size_t klen = ks->bytes.len - off;
    const char *k = ks->bytes.p + off;
    for (uint64_t h = util_fnv1a(k, klen);; h++) {
        uint32_t *sl = &ks->slot[h & ks->mask];
        if (*sl == 0) {
            ks->off[ks->n] = off;
            ks->len[ks->n] = klen;
            *sl = (uint32_t)++ks->n;
            return ks->n;
        }
        size_t i = *sl - 1;
        if (ks->len[i] == klen && memcmp(ks->bytes.p + ks->off[i], k, klen) == 0) {
            ks->bytes.len = off; /* known: forget the copy */
            return i + 1;
        }
    }
}

/*
 * Appends the EVALSHA of admit.lua deciding the batch: every request's distinct limits
 * (when with_limits) and its lookup (when with_cache), in the order of bt->ops.
 */
static void
batch_command(struct store_redis *s, const struct batch *bt, struct sbuf *b)
{
    size_t nidx = 0, nargs = 4;
    bool wl = bt->with_limits, wc = bt->with_cache;

    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        bool look = wc && op->a->cache_key;
        size_t nl = wl ? mask_count(op, bt->masks[i]) : 0, nt = look ? local_ntags(op) : 0;
        nidx += nl + nt + 2;
        nargs += 6 + 7 * nl + nt;
    }
    /* Keys read first (limits, entries, tags), then the fill leases. */
    struct keyset ks;
    size_t *idx = xmalloc(nidx * sizeof(*idx)), at = 0;
    size_t *lease = xcalloc(bt->n, sizeof(*lease));
    keyset_init(&ks, nidx);
    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        const struct store_admit *a = op->a;
        for (size_t j = 0, u = 0; wl && j < a->nlimits; j++) {
            if (op->map[j] != u)
                continue;
            if (in_mask(bt->masks[i], u))
                idx[at++] =
                    keyset_add(&ks, 'l', &op->ids[u], a->limits[j].key, a->limits[j].keylen);
            u++;
        }
        if (wc && a->cache_key) {
            idx[at++] = keyset_add(&ks, 'c', NULL, a->cache_key, a->cache_keylen);
            for (size_t j = 0; j < a->ntags; j++)
                if (!is_foreign(op, j))
                    idx[at++] = keyset_add(&ks, 't', NULL, a->tags[j], a->taglens[j]);
        }
    }
    size_t nread = ks.n;
    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        if (wc && op->a->cache_key && op->lease)
            lease[i] = keyset_add(&ks, 'f', NULL, op->a->cache_key, op->a->cache_keylen);
    }

    buf_reserve(b, 128 + ks.bytes.len + 16 * ks.n + 8 * nargs);
    resp_evalsha(b, REDIS_SCRIPT_ADMIT, ks.n, 1);
    for (size_t k = 0; k < ks.n; k++)
        resp_arg(b, ks.bytes.p + ks.off[k], ks.len[k]);
    /* The numbers, as doubles (exact: every one is below 2^53). */
    resp_num(b, '$', 8 * nargs);
    codec_put_f64(b, (double)bt->n);
    codec_put_f64(b, (double)nread);
    codec_put_f64(b, (double)s->tag_lease_ms);
    codec_put_f64(b, s->cluster ? 1 : 0);
    size_t r = 0;
    for (size_t i = 0; i < bt->n; i++) {
        const struct admit_op *op = bt->ops[i];
        bool look = wc && op->a->cache_key;
        size_t nl = wl ? mask_count(op, bt->masks[i]) : 0, nt = look ? local_ntags(op) : 0;
        const size_t *mine = idx + r;
        r += nl + (look ? 1 + nt : 0);
        codec_put_f64(b, (double)nl);
        codec_put_f64(b, look ? (double)mine[nl] : 0);
        codec_put_f64(b, (double)lease[i]);
        codec_put_f64(b, lease[i] ? (double)op->a->lease_ms : 0);
        codec_put_f64(b, (double)nt);
        codec_put_f64(b, op->a->peek ? 1 : 0);
        for (size_t u = 0, k = 0; k < nl; u++) {
            if (!in_mask(bt->masks[i], u))
                continue;
            codec_put_f64(b, (double)mine[k++]);
            codec_put_f64(b, (double)op->ids[u].algo);
            codec_put_f64(b, (double)op->ids[u].limit);
            codec_put_f64(b, (double)op->ids[u].window_ms);
            codec_put_f64(b, (double)op->ids[u].burst);
            codec_put_f64(b, (double)op->costs[u]);
            codec_put_f64(b, op->shadow[u] ? 1 : 0);
        }
        for (size_t j = 0; j < nt; j++)
            codec_put_f64(b, (double)mine[nl + 1 + j]);
    }
    sbuf_add(b, "\r\n", 2);
    keyset_free(&ks);
    free(idx);
    free(lease);
}

/* Sends the GET of the stored response (the caller counted the reply in op->pending). */
static void
admit_value_command(struct store_redis *s, struct admit_op *op)
{
    struct sbuf b = {0};

    buf_reserve(&b, op->a->cache_keylen + 96);
    resp_argc(&b, 2);
    resp_str(&b, "GET");
    codec_resp_key(&b, &s->scratch, 'r', NULL, op->a->cache_key, op->a->cache_keylen);
    send_for(s, op->a->cache_key, op->a->cache_keylen, -1, &b, on_admit_value, op);
}

/* Sends the turn's batches, each as one command, and behind each the GETs of the responses
 * its requests have no local copy of: all in the same write. */
static void
batch_flush(struct store_redis *s)
{
    struct batch_list turn = STAILQ_HEAD_INITIALIZER(turn);
    struct batch *bt;

    STAILQ_CONCAT(&turn, &s->turn); /* batches made from here on are the next turn's */
    hmap_clear(&s->open);
    while ((bt = STAILQ_FIRST(&turn))) {
        STAILQ_REMOVE_HEAD(&turn, link);
        struct admit_op *gets[MAX_BATCH], *cgets[MAX_BATCH];
        size_t ng = 0, nc = 0;
        for (size_t i = 0; i < bt->n; i++) {
            struct admit_op *op = bt->ops[i];
            if (bt->with_cache && op->a->cache_key && !op->near) {
                op->pending++; /* keeps op alive if the batch fails at once */
                gets[ng++] = op;
            }
            if (bt->with_cache && op->a->cache_key && op->foreign) {
                op->pending++; /* the entry's value, for its foreign tags */
                cgets[nc++] = op;
            }
        }
        struct sbuf b = {0};
        batch_command(s, bt, &b);
        /* bt is the callback's now */
        if (s->cluster)
            redis_cluster_send(s->cluster, bt->slot, REDIS_SCRIPT_ADMIT, &b, on_batch, bt);
        else
            redis_conn_send(bt->conn, REDIS_SCRIPT_ADMIT, &b, on_batch, bt);
        for (size_t j = 0; j < ng; j++)
            admit_value_command(s, gets[j]);
        for (size_t j = 0; j < nc; j++) {
            struct admit_op *op = cgets[j];
            struct sbuf c = {0};
            resp_argc(&c, 2);
            resp_str(&c, "GET");
            codec_resp_key(&c, &s->scratch, 'c', NULL, op->a->cache_key, op->a->cache_keylen);
            send_for(s, op->a->cache_key, op->a->cache_keylen, -1, &c, on_admit_cvalue, op);
        }
    }
}

static void tags_flush(struct store_redis *s);

static void
on_turn(void *arg)
{
    batch_flush(arg);
    tags_flush(arg);
}

/* The hash tag all of the request's keys share, in tag; 0 when they do not share one. */
static size_t
admit_tag(const struct store_admit *a, char *tag)
{
    char t[MAX_HASH_TAG + 1];
    size_t n = 0, m;
    bool any = false;

#define SAME_TAG(raw, len)                                                                         \
    do {                                                                                           \
        m = codec_hash_tag((raw), (len), any ? t : tag);                                           \
        if (any && (m != n || memcmp(t, tag, n) != 0))                                             \
            return 0;                                                                              \
        n = m;                                                                                     \
        any = true;                                                                                \
    } while (0)
    for (size_t i = 0; i < a->nlimits; i++)
        SAME_TAG(a->limits[i].key, a->limits[i].keylen);
    if (a->cache_key) {
        SAME_TAG(a->cache_key, a->cache_keylen);
        for (size_t i = 0; i < a->ntags; i++)
            SAME_TAG(a->tags[i], a->taglens[i]);
    }
#undef SAME_TAG
    return n;
}

/* Puts op in a batch of this turn (joining an open one under the same tag when taglen > 0),
 * to be sent on c (in a cluster: to slot), deciding the distinct limits in mask. */
static void
batch_add(struct store_redis *s, struct admit_op *op, struct redis_conn *c, unsigned slot,
          uint64_t mask, bool with_limits, bool with_cache, const char *tag, size_t taglen)
{
    struct batch *bt = NULL;

    if (taglen) {
        struct hmap_node *n = hmap_find(&s->open, tag, taglen);
        bt = HMAP_ENTRY(n, struct batch, node);
    }
    if (!bt) {
        bt = xmalloc(sizeof(*bt));
        bt->conn = c;
        bt->slot = slot;
        bt->with_limits = with_limits;
        bt->with_cache = with_cache;
        bt->n = 0;
        STAILQ_INSERT_TAIL(&s->turn, bt, link);
        if (taglen) {
            memcpy(bt->tag, tag, taglen);
            hmap_insert(&s->open, &bt->node, bt->tag, taglen);
        }
        redis_conn_turn_activate(&s->turn_ev);
    }
    bt->masks[bt->n] = mask;
    bt->ops[bt->n++] = op;
    op->pending++;
    if (bt->n == MAX_BATCH && taglen)
        hmap_remove(&s->open, &bt->node); /* full: the next request under this tag opens another */
}

static void
on_admit_cvalue(void *arg, redisReply *r)
{
    struct admit_op *op = arg;

    if (r && r->type == REDIS_REPLY_STRING && r->str) {
        op->cvalue = r->str; /* taken, as on_admit_value does */
        op->cvalue_len = r->len;
        r->str = NULL;
        r->len = 0;
    }
    admit_part_done(op);
}

/*
 * A read of one foreign tag for the lookups of this turn of the loop that name it: one
 * tags.lua for all of them, sent with the turn's batches (every lookup waiting for it was
 * asked for before it is sent, so it reads the tag after each one began).
 */
struct tag_waiter {
    struct admit_op *op;
    size_t idx; /* in op->a->tags */
};

struct tag_read {
    struct hmap_node node; /* in tagq */
    struct tag_read *next;
    size_t n, cap;
    struct tag_waiter *w;
    const char *raw; /* the tag as the first lookup named it (borrowed until sent) */
    size_t rawlen;
    size_t keylen;
    char key[]; /* the tag's key */
};

static void
on_tags_read(void *arg, redisReply *r)
{
    struct tag_read *tr = arg;
    uint64_t gen = 0;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
              codec_reply_u64(r->element[0], &gen) == 0;

    for (size_t i = 0; i < tr->n; i++) {
        struct admit_op *op = tr->w[i].op;
        if (ok)
            op->a->tag_gens[tr->w[i].idx] = gen;
        else if (op->status == 0)
            op->status = reply_status(r);
        admit_part_done(op);
    }
    free(tr->w);
    free(tr);
}

/* Asks for op's foreign tags with this turn's reads (one per tag key, shared by the turn's
 * lookups); each is counted in op->pending here. */
static void
foreign_tags_read(struct store_redis *s, struct admit_op *op)
{
    const struct store_admit *a = op->a;
    struct sbuf *k = &s->scratch;

    for (size_t i = 0; i < a->ntags && i < 64; i++) {
        if (!is_foreign(op, i))
            continue;
        k->len = 0;
        codec_cache_key(k, 't', a->tags[i], a->taglens[i]);
        struct hmap_node *n = hmap_find(&s->tagq, k->p, k->len);
        struct tag_read *tr = HMAP_ENTRY(n, struct tag_read, node);
        if (!tr) {
            tr = xcalloc(1, sizeof(*tr) + k->len);
            memcpy(tr->key, k->p, k->len);
            tr->keylen = k->len;
            tr->raw = a->tags[i];
            tr->rawlen = a->taglens[i];
            hmap_insert(&s->tagq, &tr->node, tr->key, tr->keylen);
            tr->next = s->tagq_first;
            s->tagq_first = tr;
            redis_conn_turn_activate(&s->turn_ev);
        }
        if (tr->n == tr->cap) {
            tr->cap = tr->cap ? 2 * tr->cap : 4;
            tr->w = xrealloc(tr->w, tr->cap * sizeof(*tr->w));
        }
        tr->w[tr->n++] = (struct tag_waiter){.op = op, .idx = i};
        op->pending++;
    }
}

/* Sends the turn's reads of foreign tags (after its batches). */
static void
tags_flush(struct store_redis *s)
{
    struct tag_read *tr = s->tagq_first;

    s->tagq_first = NULL;
    hmap_clear(&s->tagq);
    while (tr) {
        struct tag_read *next = tr->next;
        struct sbuf b = {0};
        resp_evalsha(&b, REDIS_SCRIPT_TAGS, 1, 2);
        resp_arg(&b, tr->key, tr->keylen);
        resp_u64(&b, s->tag_lease_ms);
        resp_u64(&b, 0);
        send_for(s, tr->raw, tr->rawlen, REDIS_SCRIPT_TAGS, &b, on_tags_read, tr);
        tr = next;
    }
}

/*
 * In a cluster, one call per slot: a request whose keys share a hash tag (the common case:
 * templates ending in the caller's id) joins the turn's batch of that tag. Otherwise its
 * distinct limits are grouped by slot, one call each, the lookup riding with the limits of its
 * own slot or alone; each call commits its own limits when they admit, so a request refused
 * by one slot's limits may have been counted in another's (docs/redis-cluster.md). The tags
 * of a lookup under another hash tag than its cache key's are read by tags.lua in their own
 * slots, at the same time, and compared with what the entry recorded (foreign_tags_hold()).
 */
static void
cluster_route(struct store_redis *s, struct admit_op *op)
{
    struct store_admit *a = op->a;
    char tag[MAX_HASH_TAG + 1];
    size_t taglen = admit_tag(a, tag);

    if (taglen) {
        unsigned slot = redis_slots_crc16(tag, taglen) & (REDIS_SLOTS - 1);
        batch_add(s, op, NULL, slot, ALL_LIMITS, true, true, tag, taglen);
        return;
    }
    bool look = a->cache_key != NULL;
    unsigned cslot = look ? raw_slot(a->cache_key, a->cache_keylen) : 0;
    if (look) {
        char own[MAX_HASH_TAG + 1], t[MAX_HASH_TAG + 1];
        size_t ownlen = codec_hash_tag(a->cache_key, a->cache_keylen, own);
        for (size_t i = 0; i < a->ntags; i++) {
            size_t n = codec_hash_tag(a->tags[i], a->taglens[i], t);
            if (n == ownlen && memcmp(t, own, n) == 0)
                continue;
            if (i >= 64) {
                look = false; /* beyond what one lookup can check: not cached */
                a->bypassed = true;
                op->foreign = 0;
                break;
            }
            op->foreign |= 1ull << i;
        }
    }
    if (look && op->foreign)
        foreign_tags_read(s, op);
    if (op->nu > 64) {
        op->status = -1; /* more distinct limits than one request can have */
        return;
    }
    /* The slot of each distinct limit, by the first limit naming it. */
    unsigned lslot[64];
    for (size_t j = 0, u = 0; j < a->nlimits; j++) {
        if (op->map[j] == u)
            lslot[u++] = raw_slot(a->limits[j].key, a->limits[j].keylen);
    }
    uint64_t done = 0;
    bool looked = false;
    size_t calls = 0;
    for (size_t u = 0; u < op->nu; u++) {
        if (done >> u & 1)
            continue;
        uint64_t mask = 0;
        for (size_t v = u; v < op->nu; v++)
            if (lslot[v] == lslot[u])
                mask |= 1ull << v;
        done |= mask;
        bool here = look && lslot[u] == cslot;
        looked = looked || here;
        calls++;
        batch_add(s, op, NULL, lslot[u], mask, true, here, NULL, 0);
    }
    if (look && !looked) {
        calls++;
        batch_add(s, op, NULL, cslot, 0, false, true, NULL, 0);
    }
    op->split = calls > 1;
    if (calls == 0)
        op->now_ms = store_now_ms();
}

static void
redis_admit_and_lookup(struct store *st, struct store_admit *a, store_done_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    size_t n = a->nlimits;
    /* One allocation: the op, then map, ids, costs, results and modes of up to n distinct
     * limits. */
    struct admit_op *op =
        xmalloc(sizeof(*op) + n * (sizeof(size_t) + sizeof(struct limiter_rule) + sizeof(uint64_t) +
                                   sizeof(struct limiter_result) + sizeof(bool)));

    *op = (struct admit_op){.s = s,
                            .a = a,
                            .done = done,
                            .arg = arg,
                            .pending = 1,
                            .allowed = true,
                            .lease = a->cache_key && a->lease_ms > 0};
    op->map = (size_t *)(op + 1);
    op->ids = (struct limiter_rule *)(op->map + n);
    op->costs = (uint64_t *)(op->ids + n);
    op->ures = (struct limiter_result *)(op->costs + n);
    op->shadow = (bool *)(op->ures + n);
    a->entry = NULL;
    a->state = STORE_MISS;
    a->bypassed = a->refused_closed = false;

    /* The same key under the same rule named twice is one counter spending both costs. */
    for (size_t i = 0; i < n; i++) {
        const struct store_limit *l = &a->limits[i];
        struct limiter_rule id = codec_rule_identity(l->rule);
        size_t u;
        for (u = 0; u < op->nu; u++) {
            size_t j = 0;
            while (op->map[j] != u)
                j++;
            if (memcmp(&op->ids[u], &id, sizeof(id)) == 0 && a->limits[j].keylen == l->keylen &&
                memcmp(a->limits[j].key, l->key, l->keylen) == 0)
                break;
        }
        if (u == op->nu) {
            if (!codec_rule_exact(&id)) {
                static bool warned;
                if (!warned)
                    log_error("redis store: a limit of %llu per %llu ms is beyond what "
                              "it computes exactly (limit x window < 2^53); requests refused",
                              (unsigned long long)id.limit, (unsigned long long)id.window_ms);
                warned = true;
                op->status = -1;
                admit_finish(op);
                return;
            }
            op->ids[u] = id;
            op->costs[u] = 0;
            op->shadow[u] = true;
            op->nu++;
        }
        op->map[i] = u;
        op->shadow[u] = op->shadow[u] && l->shadow; /* enforced if any of its limits is */
        op->costs[u] += l->cost;
        if (op->costs[u] > UINT32_MAX)
            op->costs[u] = UINT32_MAX;
    }

    if (op->nu == 0 && !a->cache_key) {
        op->now_ms = store_now_ms();
        admit_finish(op);
        return;
    }
    if (s->env.closing) {
        op->status = STORE_UNAVAILABLE;
        admit_finish(op);
        return;
    }
    /* The response is read right behind the lookup, unless a local copy may be it. */
    if (a->cache_key)
        op->near = near_find(&s->near, a->cache_key, a->cache_keylen) != NULL;
    if (s->cluster) {
        cluster_route(s, op);
    } else if (!s->split) {
        char tag[MAX_HASH_TAG + 1];
        size_t taglen = admit_tag(a, tag);
        batch_add(s, op, &s->cache, 0, ALL_LIMITS, true, true, tag, taglen);
    } else if (op->nu == 0 || !a->cache_key) {
        batch_add(s, op, op->nu > 0 ? &s->limits : &s->cache, 0, ALL_LIMITS, true, true, NULL, 0);
    } else {
        /* Limits and cache in two Redis servers: both asked at once; the lookup of a request
         * that turns out denied is dropped. */
        op->split = true;
        batch_add(s, op, &s->limits, 0, ALL_LIMITS, true, false, NULL, 0);
        batch_add(s, op, &s->cache, 0, ALL_LIMITS, false, true, NULL, 0);
    }
    admit_part_done(op); /* the sender's own count */
}

/* ---- fill and invalidate ------------------------------------------------------------------ */

struct fill_op {
    struct store_redis *s;
    struct store_entry *entry; /* a reference, to stamp its times */
    uint64_t ttl_ms;
    store_done_fn *done;
    void *arg;
    unsigned char token[TOKEN_LEN];
    size_t keylen;
    char key[]; /* the cache key, for the local copy */
};

static void
on_fill(void *arg, redisReply *r)
{
    struct fill_op *op = arg;
    uint64_t stored = 0, now = 0;
    int status = reply_status(r);

    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        codec_reply_u64(r->element[0], &stored) == 0 && codec_reply_u64(r->element[1], &now) == 0) {
        status = stored ? 0 : -1;
        if (stored) {
            op->entry->stored_ms = now;
            op->entry->expires_ms = now + op->ttl_ms;
        }
    } else {
        op->s->stats.failed++;
    }
    if (status == 0 && (op->ttl_ms > 0 || op->entry->stale_ms > 0))
        near_put(&op->s->near, op->key, op->keylen, op->token, op->entry);
    else
        near_drop(&op->s->near, op->key, op->keylen);
    store_entry_release(op->entry);
    store_done_fn *done = op->done;
    void *darg = op->arg;
    free(op);
    done(darg, status);
}

/* A fresh fill token: 64 bits from a per-store random stream (splitmix64). */
static void
fill_token(struct store_redis *s, unsigned char out[TOKEN_LEN])
{
    uint64_t z = (s->token_state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    for (int i = 0; i < TOKEN_LEN; i++, z >>= 8)
        out[i] = (unsigned char)z;
}

static void
redis_fill(struct store *st, const char *key, size_t keylen, struct store_entry *entry,
           uint64_t ttl_ms, const char *const *tags, const size_t *taglens,
           const uint64_t *tag_gens, size_t ntags, store_done_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct fill_op *op = xmalloc(sizeof(*op) + keylen);
    struct sbuf b = {0}, k = {0}, meta = {0};
    unsigned char *token = op->token;
    size_t headlen = codec_entry_head_len(entry);
    bool secondary = store_key_primary_len(key, keylen) < keylen;
    uint64_t keep = ttl_ms + entry->stale_ms < ttl_ms ? UINT64_MAX : ttl_ms + entry->stale_ms;

    if (keep > EXACT_LIMIT)
        keep = EXACT_LIMIT; /* fill.lua computes with doubles */
    /* In a cluster, the tags under another hash tag than the key's are checked by fill.lua
     * only through the generations the entry records (compared at each lookup); their keys
     * are kept alive as long as the entry by tags.lua in their own slots. */
    char own[MAX_HASH_TAG + 1], t[MAX_HASH_TAG + 1];
    size_t ownlen = s->cluster ? codec_hash_tag(key, keylen, own) : 0, nlocal = 0;
    bool *foreign = s->cluster && ntags ? xcalloc(ntags, sizeof(*foreign)) : NULL;
    for (size_t i = 0; i < ntags; i++) {
        size_t n = foreign ? codec_hash_tag(tags[i], taglens[i], t) : 0;
        if (foreign)
            foreign[i] = n != ownlen || memcmp(t, own, n) != 0;
        nlocal += !(foreign && foreign[i]);
        if (foreign && foreign[i] && keep > 0) {
            struct sbuf tb = {0};
            resp_evalsha(&tb, REDIS_SCRIPT_TAGS, 1, 2);
            codec_resp_key(&tb, &k, 't', NULL, tags[i], taglens[i]);
            resp_u64(&tb, s->tag_lease_ms);
            resp_u64(&tb, keep);
            send_for(s, tags[i], taglens[i], REDIS_SCRIPT_TAGS, &tb, on_ignored, NULL);
        }
    }
    store_entry_ref(entry);
    *op = (struct fill_op){
        .s = s, .entry = entry, .ttl_ms = ttl_ms, .done = done, .arg = arg, .keylen = keylen};
    memcpy(op->key, key, keylen);
    fill_token(s, token);

    /* The entry's value: the token, room for expires_ms (written by fill.lua), then each
     * tag's key and the generation recorded. */
    sbuf_add(&meta, token, TOKEN_LEN);
    sbuf_add(&meta, "\0\0\0\0\0\0\0\0", 8);
    for (size_t i = 0; i < ntags; i++) {
        k.len = 0;
        codec_cache_key(&k, 't', tags[i], taglens[i]);
        codec_put_u32(&meta, (uint32_t)k.len);
        sbuf_add(&meta, k.p, k.len);
        k.len = 0;
        sbuf_add_u64(&k, tag_gens[i]);
        codec_put_u32(&meta, (uint32_t)k.len);
        sbuf_add(&meta, k.p, k.len);
    }

    buf_reserve(&b, 256 + 5 * keylen + meta.len + headlen + 100 * ntags);
    resp_evalsha(&b, REDIS_SCRIPT_FILL, 4 + nlocal, 6 + nlocal);
    codec_resp_key(&b, &k, 'c', NULL, key, keylen);
    codec_resp_key(&b, &k, 'r', NULL, key, keylen);
    codec_resp_key(&b, &k, 'f', NULL, key, keylen);
    codec_resp_key(&b, &k, 'v', NULL, key, store_key_primary_len(key, keylen));
    for (size_t i = 0; i < ntags; i++)
        if (!(foreign && foreign[i]))
            codec_resp_key(&b, &k, 't', NULL, tags[i], taglens[i]);
    resp_u64(&b, ttl_ms);
    resp_arg(&b, meta.p, meta.len);
    /* The response's head, written straight into the command. */
    resp_num(&b, '$', headlen);
    codec_entry_head(&b, entry);
    sbuf_add(&b, "\r\n", 2);
    resp_arg(&b, token, TOKEN_LEN);
    resp_u64(&b, keep);
    resp_arg(&b, key, secondary ? keylen : 0);
    for (size_t i = 0; i < ntags; i++)
        if (!(foreign && foreign[i]))
            resp_u64(&b, tag_gens[i]);
    free(foreign);
    sbuf_free(&k);
    sbuf_free(&meta);
    send_for(s, key, keylen, REDIS_SCRIPT_FILL, &b, on_fill, op);
}

struct done_op {
    struct store_redis *s;
    store_done_fn *done;
    void *arg;
    int pending; /* replies awaited (in a cluster, one per slot) and one for the sender */
    int status;  /* the first failure */
};

static void
done_op_part(struct done_op *op)
{
    if (--op->pending > 0)
        return;
    store_done_fn *done = op->done;
    void *darg = op->arg;
    int status = op->status;

    if (status != 0)
        op->s->stats.failed++;
    free(op);
    done(darg, status);
}

static void
on_invalidate(void *arg, redisReply *r)
{
    struct done_op *op = arg;
    int status = r && r->type == REDIS_REPLY_INTEGER ? 0 : reply_status(r);

    if (status != 0 && op->status == 0)
        op->status = status;
    done_op_part(op);
}

static void
redis_invalidate(struct store *st, const char *const *tags, const size_t *taglens, size_t ntags,
                 store_done_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct sbuf b = {0}, k = {0};

    if (ntags == 0) {
        done(arg, 0);
        return;
    }
    struct done_op *op = xmalloc(sizeof(*op));
    *op = (struct done_op){.s = s, .done = done, .arg = arg, .pending = 1};
    if (!s->cluster) {
        op->pending++;
        resp_evalsha(&b, REDIS_SCRIPT_INVALIDATE, ntags, 1);
        for (size_t i = 0; i < ntags; i++) {
            k.len = 0;
            codec_cache_key(&k, 't', tags[i], taglens[i]);
            resp_arg(&b, k.p, k.len);
        }
        resp_u64(&b, s->tag_lease_ms);
        redis_conn_send(&s->cache, REDIS_SCRIPT_INVALIDATE, &b, on_invalidate, op);
    } else {
        /* A tag's key is in the tag's own slot: one call per tag (they are few), all at once;
         * done when every one is answered. */
        for (size_t i = 0; i < ntags; i++) {
            op->pending++;
            resp_evalsha(&b, REDIS_SCRIPT_INVALIDATE, 1, 1);
            codec_resp_key(&b, &k, 't', NULL, tags[i], taglens[i]);
            resp_u64(&b, s->tag_lease_ms);
            send_for(s, tags[i], taglens[i], REDIS_SCRIPT_INVALIDATE, &b, on_invalidate, op);
        }
    }
    sbuf_free(&k);
    done_op_part(op);
}

/* ---- delete_keys and invalidate_pattern --------------------------------------------------- */

/*
 * An operation made of several commands, completed once when the last reply is in: a
 * count of what they removed, or the first failure. `pending` counts the replies awaited
 * and one for the code sending, so that a command failing at once cannot end it early.
 */
struct count_op {
    struct store_redis *s;
    store_count_fn *done;
    void *arg;
    int pending;
    int status;
    uint64_t count;
    /* pattern runs only */
    char *glob;                                    /* NUL-terminated */
    struct sbuf match;                             /* the SCAN pattern */
    char cursor[24];                               /* the next SCAN's cursor */
    bool last;                                     /* the cursor came back 0: no more SCAN */
    struct redis_conn *masters[REDIS_MAX_MASTERS]; /* in a cluster: SCAN each in turn */
    size_t nmasters, at;
    void (*next)(struct count_op *op);
};

static struct count_op *
count_op_new(struct store_redis *s, store_count_fn *done, void *arg)
{
    struct count_op *op = xcalloc(1, sizeof(*op));

    op->s = s;
    op->done = done;
    op->arg = arg;
    op->pending = 1;
    return op;
}

static void
count_op_fail(struct count_op *op, redisReply *r)
{
    if (op->status == 0)
        op->status = reply_status(r);
}

/* One reply (or the sender) less; the last one either sends the next step or completes. */
static void
count_op_part_done(struct count_op *op)
{
    if (--op->pending > 0)
        return;
    if (op->status == 0 && op->next && !op->last) {
        op->pending = 1;
        op->next(op);
        return;
    }
    if (op->status != 0)
        op->s->stats.failed++;
    store_count_fn *done = op->done;
    void *arg = op->arg;
    int status = op->status;
    uint64_t count = status == 0 ? op->count : 0;
    free(op->glob);
    sbuf_free(&op->match);
    free(op);
    done(arg, status, count);
}

/* A reply counting removed entries (an integer). */
static void
on_count_reply(void *arg, redisReply *r)
{
    struct count_op *op = arg;
    uint64_t n;

    if (r && r->type == REDIS_REPLY_INTEGER && codec_reply_u64(r, &n) == 0)
        op->count += n;
    else
        count_op_fail(op, r);
    count_op_part_done(op);
}

/* A reply whose value does not matter, only that it is not an error. */
static void
on_plain_reply(void *arg, redisReply *r)
{
    struct count_op *op = arg;

    if (!r || r->type == REDIS_REPLY_ERROR)
        count_op_fail(op, r);
    count_op_part_done(op);
}

/* Sends delete.lua for one key (the caller counted it in op->pending). */
static void
delete_command(struct count_op *op, const char *key, size_t keylen)
{
    struct store_redis *s = op->s;
    struct sbuf b = {0};

    buf_reserve(&b, 3 * keylen + 200);
    resp_evalsha(&b, REDIS_SCRIPT_DELETE, 3, 0);
    codec_resp_key(&b, &s->scratch, 'c', NULL, key, keylen);
    codec_resp_key(&b, &s->scratch, 'r', NULL, key, keylen);
    codec_resp_key(&b, &s->scratch, 'v', NULL, key, keylen);
    send_for(s, key, keylen, REDIS_SCRIPT_DELETE, &b, on_count_reply, op);
}

static void
redis_delete_keys(struct store *st, const char *const *keys, const size_t *lens, size_t n,
                  store_count_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct count_op *op = count_op_new(s, done, arg);

    for (size_t i = 0; i < n; i++) {
        near_drop_entry(&s->near, keys[i], lens[i]);
        if (op->status != 0)
            continue; /* the connection refused one: send no more */
        op->pending++;
        delete_command(op, keys[i], lens[i]);
    }
    count_op_part_done(op);
}

static void pattern_scan(struct count_op *op);

/* A SCAN reply: unlinks the entries whose keys match, with their responses and variants. */
static void
on_scan(void *arg, redisReply *r)
{
    struct count_op *op = arg;
    struct store_redis *s = op->s;

    const redisReply *keys = codec_scan_reply(r, op->cursor, sizeof(op->cursor), &op->last);
    if (!keys) {
        count_op_fail(op, r);
        count_op_part_done(op);
        return;
    }
    if (s->cluster) {
        /* Each entry that matches is removed by delete.lua in its own slot (UNLINK of several
         * keys would cross slots); then the next master, from cursor 0. */
        for (size_t i = 0; i < keys->elements; i++) {
            const redisReply *kr = keys->element[i];
            size_t rawlen;
            const char *raw = kr->type == REDIS_REPLY_STRING
                                  ? codec_entry_key_raw(kr->str, kr->len, &rawlen)
                                  : NULL;
            if (!raw || !store_key_matches(op->glob, raw, rawlen))
                continue;
            near_drop(&s->near, raw, rawlen);
            op->pending++;
            delete_command(op, raw, rawlen);
        }
        if (op->last && op->at + 1 < op->nmasters) {
            op->at++;
            memcpy(op->cursor, "0", 2);
            op->last = false;
        }
        count_op_part_done(op);
        return;
    }
    struct sbuf entries = {0}, rest = {0}, k = {0};
    size_t nentries = 0, nrest = 0;
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *kr = keys->element[i];
        size_t rawlen;
        const char *raw =
            kr->type == REDIS_REPLY_STRING ? codec_entry_key_raw(kr->str, kr->len, &rawlen) : NULL;
        if (!raw || !store_key_matches(op->glob, raw, rawlen))
            continue;
        near_drop(&s->near, raw, rawlen);
        resp_arg(&entries, kr->str, kr->len);
        nentries++;
        codec_resp_key(&rest, &k, 'r', NULL, raw, rawlen);
        nrest++;
        if (store_key_primary_len(raw, rawlen) == rawlen) {
            codec_resp_key(&rest, &k, 'v', NULL, raw, rawlen);
            nrest++;
        }
    }
    sbuf_free(&k);
    if (nentries) {
        /* The entries first (their count is what was removed), then the rest. */
        struct sbuf b = {0};
        resp_argc(&b, 1 + nentries);
        resp_str(&b, "UNLINK");
        sbuf_add(&b, entries.p, entries.len);
        op->pending++;
        redis_conn_send(&s->cache, -1, &b, on_count_reply, op);
        resp_argc(&b, 1 + nrest);
        resp_str(&b, "UNLINK");
        sbuf_add(&b, rest.p, rest.len);
        op->pending++;
        redis_conn_send(&s->cache, -1, &b, on_plain_reply, op);
    }
    sbuf_free(&entries);
    sbuf_free(&rest);
    count_op_part_done(op); /* this reply: the next SCAN goes once the UNLINKs are answered */
}

/* Sends the next SCAN of a pattern run (the caller counted it in op->pending). */
static void
pattern_scan(struct count_op *op)
{
    struct sbuf b = {0};

    resp_argc(&b, 6);
    resp_str(&b, "SCAN");
    resp_str(&b, op->cursor);
    resp_str(&b, "MATCH");
    resp_arg(&b, op->match.p, op->match.len);
    resp_str(&b, "COUNT");
    resp_u64(&b, SCAN_COUNT);
    redis_conn_send(op->s->cluster ? op->masters[op->at] : &op->s->cache, -1, &b, on_scan, op);
}

static void
redis_invalidate_pattern(struct store *st, const char *glob, size_t globlen, store_count_fn *done,
                         void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    struct count_op *op = count_op_new(s, done, arg);
    size_t litlen;

    op->glob = xmalloc(globlen + 1);
    if (memchr(glob, '\0', globlen)) {
        op->status = -1;
    } else if (store_glob_literal(glob, globlen, op->glob, &litlen)) {
        near_drop_entry(&s->near, op->glob, litlen);
        op->pending++;
        delete_command(op, op->glob, litlen);
    } else {
        memcpy(op->glob, glob, globlen);
        op->glob[globlen] = '\0';
        /* Entry keys whose cache key matches the glob, or starts with what does (a secondary
         * whose primary matches): the hash tag is any. */
        codec_scan_match(&op->match, glob, globlen);
        memcpy(op->cursor, "0", 2);
        op->next = pattern_scan;
        if (s->cluster) {
            op->nmasters = redis_cluster_masters(s->cluster, op->masters, REDIS_MAX_MASTERS);
            if (op->nmasters > REDIS_MAX_MASTERS)
                op->status = -1; /* not every master could be scanned */
        }
    }
    count_op_part_done(op);
}

/* ---- the store ---------------------------------------------------------------------------- */

static void
redis_destroy(struct store *st)
{
    struct store_redis *s = (struct store_redis *)st;

    s->env.closing = true;
    batch_flush(s); /* the admits of this turn fail now */
    tags_flush(s);
    redis_conn_turn_free(&s->turn_ev);
    redis_sentinel_free(s->watch[0]);
    redis_sentinel_free(s->watch[1]);
    redis_conn_fini(&s->cache);
    redis_conn_fini(&s->limits);
    redis_cluster_free(s->cluster);
    sbuf_free(&s->scratch);
    near_free(&s->near);
    hmap_free(&s->open);
    hmap_free(&s->tagq);
    free(s);
}

static void
redis_health(struct store *st, struct store_health *h)
{
    struct store_redis *s = (struct store_redis *)st;

    if (s->cluster)
        h->degraded = !redis_cluster_healthy(s->cluster);
    else
        h->degraded = !s->cache.ac || (s->split && !s->limits.ac);
    h->state = h->degraded ? "degraded" : "ok";
    h->failures = s->stats.failed;
    h->latency = s->stats.latency;
}

static void
redis_release_lease(struct store *st, const char *key, size_t keylen)
{
    struct store_redis *s = (struct store_redis *)st;
    struct sbuf b = {0};

    resp_argc(&b, 2);
    resp_str(&b, "DEL");
    codec_resp_key(&b, &s->scratch, 'f', NULL, key, keylen);
    send_for(s, key, keylen, -1, &b, on_ignored, NULL);
}

static void
redis_list_entries(struct store *st, const char *glob, size_t globlen, size_t limit,
                   store_list_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;

    struct redis_conn *conns[REDIS_MAX_MASTERS], *one = &s->cache;
    size_t n = 1, litlen;

    if (!s->cluster) {
        redis_list(&one, 1, false, s->list_rounds, &s->stats.failed, glob, globlen, limit, done,
                   arg);
        return;
    }
    char *lit = xmalloc(globlen + 1);
    if (store_glob_literal(glob, globlen, lit, &litlen))
        conns[0] =
            redis_cluster_conn(s->cluster, raw_slot(lit, store_key_primary_len(lit, litlen)));
    else
        n = redis_cluster_masters(s->cluster, conns, REDIS_MAX_MASTERS);
    free(lit);
    if (n > REDIS_MAX_MASTERS) {
        done(arg, -1, NULL);
        return;
    }
    redis_list(conns, n, true, s->list_rounds, &s->stats.failed, glob, globlen, limit, done, arg);
}

static void
redis_fleet_op(struct store *st, const struct store_fleet_member *me, uint64_t ttl_ms,
               store_fleet_fn *done, void *arg)
{
    struct store_redis *s = (struct store_redis *)st;
    /* On a cluster, the one key lives on the master of its slot. */
    struct redis_conn *c =
        s->cluster ? redis_cluster_conn(
                         s->cluster, redis_slots_key_slot(REDIS_FLEET_KEY, strlen(REDIS_FLEET_KEY)))
                   : &s->cache;

    redis_fleet(c, &s->stats.failed, me, ttl_ms, done, arg);
}

static uint64_t
redis_moves(struct store *st)
{
    return ((struct store_redis *)st)->env.moves;
}

static const struct store_ops redis_ops = {
    .name = "redis",
    .admit_and_lookup = redis_admit_and_lookup,
    .fill = redis_fill,
    .invalidate = redis_invalidate,
    .destroy = redis_destroy,
    .health = redis_health,
    .delete_keys = redis_delete_keys,
    .invalidate_pattern = redis_invalidate_pattern,
    .release_lease = redis_release_lease,
    .list = redis_list_entries,
    .fleet = redis_fleet_op,
    .moves = redis_moves,
};

struct store *
store_redis_new(struct event_base *base, const struct store_redis_config *cfg, char *err,
                size_t errlen)
{
    struct redis_endpoint cache_ep, limits_ep, seeds[REDIS_CLUSTER_MAX_SEEDS];
    struct redis_sentinel_url *su = xcalloc(2, sizeof(*su));
    bool sentinel[2] = {false, false};
    bool split = cfg->limits_url && cfg->limits_url[0] && strcmp(cfg->limits_url, cfg->url) != 0;
    int nseeds = 0;

    redis_conn_scripts_init();
    if (redis_cluster_is_url(cfg->url)) {
        if (split) {
            snprintf(err, errlen, "REDIS_LIMITS_URL cannot be used with a cluster");
            free(su);
            return NULL;
        }
        nseeds = redis_cluster_parse_url(cfg->url, seeds, REDIS_CLUSTER_MAX_SEEDS, err, errlen);
        if (nseeds < 0) {
            free(su);
            return NULL;
        }
    } else if (parse_any_url(cfg->url, &cache_ep, &su[0], &sentinel[0], err, errlen) != 0 ||
               (split && parse_any_url(cfg->limits_url, &limits_ep, &su[1], &sentinel[1], err,
                                       errlen) != 0)) {
        free(su);
        return NULL;
    }

    struct store_redis *s = xcalloc(1, sizeof(*s));
    s->base.ops = &redis_ops;
    s->env.base = base;
    s->env.stats = &s->stats;
    s->split = split;
    STAILQ_INIT(&s->turn);
    s->env.deadline_us = (cfg->deadline_ms ? cfg->deadline_ms : DEFAULT_DEADLINE_MS) * 1000;
    s->tag_lease_ms = cfg->tag_lease_ms ? cfg->tag_lease_ms : DEFAULT_TAG_LEASE_MS;
    s->list_rounds = cfg->list_rounds;
    near_init(&s->near, cfg->near_bytes ? cfg->near_bytes : DEFAULT_NEAR_BYTES);
    if (getrandom(&s->token_state, sizeof(s->token_state), GRND_NONBLOCK) != sizeof(s->token_state))
        s->token_state = util_mono_us() ^ (uint64_t)(uintptr_t)s;
    redis_conn_turn_init(&s->turn_ev, base, on_turn, s);
    if (nseeds > 0) {
        s->cluster = redis_cluster_new(&s->env, seeds, (size_t)nseeds);
        free(su);
        return &s->base;
    }
    redis_conn_init(&s->cache, &s->env, split ? "cache" : "store", &cache_ep);
    if (sentinel[0])
        s->watch[0] = redis_sentinel_watch(&s->cache, base, &su[0], SENTINEL_DEADLINE_MS);
    redis_conn_connect(&s->cache);
    if (split) {
        redis_conn_init(&s->limits, &s->env, "limits", &limits_ep);
        if (sentinel[1])
            s->watch[1] = redis_sentinel_watch(&s->limits, base, &su[1], SENTINEL_DEADLINE_MS);
        redis_conn_connect(&s->limits);
    }
    free(su);
    return &s->base;
}

void
store_redis_stats(struct store *st, struct store_redis_stats *out)
{
    *out = ((struct store_redis *)st)->stats;
}
