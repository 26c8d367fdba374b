/* redis_cluster.c - the Redis store on a Redis Cluster: a connection per master, commands by slot.
 */
#define _GNU_SOURCE
#include "redis_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "redis_conn.h"
#include "redis_slots.h"
#include "store_redis.h"
#include "util.h"

/*
 * The slot map is an array of 16384 node pointers, filled from CLUSTER
 * SLOTS (redis_slots.c). A node is a redis_conn of its own, made the first
 * time a map or a redirection names its address and kept for the client's
 * life (a master that fails and comes back as a replica is simply no longer
 * in the map; its connection reconnects in the background, backed off to 1 s).
 *
 * A command is kept (its bytes, its slot, its deadline) until it is answered
 * by something else than a redirection, so that it can be sent again:
 *
 *   MOVED slot host:port   the slot's new master: the map is updated at once
 *                          for that slot, a full refresh is asked for, and the
 *                          command goes to the new master;
 *   ASK slot host:port     the slot is being migrated and the key is already on
 *                          the importing node: ASKING and the command go there,
 *                          the map is left as it is;
 *   TRYAGAIN, CLUSTERDOWN  a multi-key command during a migration, or a
 *                          cluster without a quorum of masters (a failover in
 *                          progress): sent again after a wait.
 *
 * A redirection after the first one, TRYAGAIN and CLUSTERDOWN are followed
 * after a wait of 2 ms that doubles (while nodes disagree on a slot's owner
 * during a reshard, MOVED can bounce between them for a moment). Each
 * command is sent again at most MAX_REDIRECTS times and never past its
 * deadline (the store's per-command deadline, counted from the first send):
 * then its caller gets the last reply, an error, and fails the operation
 * (store_failover.c answers without Redis). A command with no reply (the
 * connection was lost or the deadline passed) is never sent again, as on one
 * node: its outcome is unknown; it asks for a refresh of the map soon, which is
 * how a promoted replica is found after a failover.
 */

#define MAX_REDIRECTS 8
#define REFRESH_US 10000000u    /* the periodic refresh of the slot map */
#define REFRESH_SOON_US 100000u /* after a command that got no reply */
#define RETRY_FIRST_US 2000u    /* TRYAGAIN, CLUSTERDOWN */

struct node {
    struct node *next;
    struct redis_conn conn;
};

struct redis_cluster {
    struct redis_conn_env *env;
    struct redis_endpoint auth; /* user and password of every node */
    struct node *nodes;         /* seeds first */
    size_t nseeds;
    struct node *slots[REDIS_SLOTS]; /* NULL: unknown */
    bool have_map;
    bool refreshing;     /* a CLUSTER SLOTS is in flight */
    struct node *asked;  /* the node the last CLUSTER SLOTS went to */
    uint64_t refresh_at; /* when the refresh timer fires (monotonic us) */
    struct redis_timer refresh;
    struct ccmd *retrying; /* commands waiting to be sent again (TRYAGAIN) */
};

struct ccmd {
    struct redis_cluster *cl;
    struct ccmd *next_retry;
    unsigned slot;
    int script;
    int tries;
    uint64_t deadline_us;
    uint64_t backoff_us;
    struct node *ask; /* send with ASKING to this node */
    struct redis_timer timer;
    struct sbuf cmd;
    redis_reply_fn *fn;
    void *arg;
};

bool
redis_cluster_is_url(const char *url)
{
    return url && strncmp(url, "redis+cluster://", 16) == 0;
}

int
redis_cluster_parse_url(const char *url, struct redis_endpoint *seeds, size_t cap, char *err,
                        size_t errlen)
{
    const char *p = url + 16, *at, *end;
    struct sbuf one = {0};
    int n = 0;

    if (!redis_cluster_is_url(url)) {
        snprintf(err, errlen, "'%s': expected redis+cluster://[[user]:password@]host:port[,...]",
                 url ? url : "");
        return -1;
    }
    end = p + strcspn(p, "/?#");
    at = memrchr(p, '@', (size_t)(end - p));
    const char *hosts = at ? at + 1 : p;
    if (*end == '/' && end[1] && strcmp(end, "/0") != 0) {
        snprintf(err, errlen, "'%s': a cluster has only database 0", url);
        return -1;
    }
    while (hosts < end) {
        const char *comma = memchr(hosts, ',', (size_t)(end - hosts));
        const char *stop = comma ? comma : end;
        if ((size_t)n == cap) {
            snprintf(err, errlen, "'%s': more than %zu seed nodes", url, cap);
            goto fail;
        }
        one.len = 0;
        sbuf_adds(&one, "redis://");
        if (at)
            sbuf_add(&one, p, (size_t)(at - p + 1));
        sbuf_add(&one, hosts, (size_t)(stop - hosts));
        sbuf_add(&one, "", 1);
        if (redis_conn_parse_url(one.p, &seeds[n], err, errlen) != 0)
            goto fail;
        n++;
        hosts = comma ? comma + 1 : end;
    }
    if (n == 0) {
        snprintf(err, errlen, "'%s': no seed node", url);
        goto fail;
    }
    sbuf_free(&one);
    return n;
fail:
    sbuf_free(&one);
    return -1;
}

/* The node at host:port, made (and connecting) if it is new. */
static struct node *
node_get(struct redis_cluster *cl, const char *host, int port)
{
    struct node **tail = &cl->nodes;

    for (struct node *nd = cl->nodes; nd; nd = nd->next) {
        if (nd->conn.ep.port == port && strcmp(nd->conn.ep.host, host) == 0)
            return nd;
        tail = &nd->next;
    }
    struct node *nd = xcalloc(1, sizeof(*nd));
    struct redis_endpoint ep = cl->auth;
    snprintf(ep.host, sizeof(ep.host), "%s", host);
    ep.port = port;
    ep.db = 0;
    redis_conn_init(&nd->conn, cl->env, "cluster node", &ep);
    *tail = nd;
    redis_conn_connect(&nd->conn);
    return nd;
}

static void refresh_soon(struct redis_cluster *cl, uint64_t us);

static void
on_slots(void *arg, redisReply *r)
{
    struct redis_cluster *cl = arg;
    struct redis_slot_map map;
    char err[256];

    cl->refreshing = false;
    if (cl->env->closing)
        return;
    if (!r || redis_slots_parse(r, &map, err, sizeof(err)) != 0) {
        if (r)
            log_warn("redis cluster %s:%d: %s", cl->asked->conn.ep.host, cl->asked->conn.ep.port,
                     err);
        refresh_soon(cl, REFRESH_SOON_US);
        return;
    }
    struct node *asked = cl->asked;
    if (!cl->have_map && map.n > 0)
        log_info("redis cluster: %zu slot ranges, from %s:%d", map.n, asked->conn.ep.host,
                 asked->conn.ep.port);
    struct node **was = xmalloc(sizeof(cl->slots));
    memcpy(was, cl->slots, sizeof(cl->slots));
    memset(cl->slots, 0, sizeof(cl->slots));
    for (size_t i = 0; i < map.n; i++) {
        const struct redis_slot_range *rg = &map.ranges[i];
        struct node *nd = node_get(cl, rg->host[0] ? rg->host : asked->conn.ep.host, rg->port);
        for (unsigned s = rg->first; s <= rg->last; s++)
            cl->slots[s] = nd;
    }
    if (cl->have_map && memcmp(was, cl->slots, sizeof(cl->slots)) != 0)
        cl->env->moves++;
    free(was);
    cl->have_map = map.n > 0;
    redis_slots_free(&map);
    /* While a master is unreachable the map is asked again soon: its replica's promotion is
     * found within REFRESH_SOON_US of the cluster announcing it. */
    refresh_soon(cl, redis_cluster_healthy(cl) ? REFRESH_US : REFRESH_SOON_US);
}

/* Asks the next connected node (round robin, from the one asked last) for CLUSTER SLOTS. */
static void
refresh_now(struct redis_cluster *cl)
{
    struct node *start = cl->asked && cl->asked->next ? cl->asked->next : cl->nodes, *nd = start;

    if (cl->refreshing || cl->env->closing)
        return;
    do {
        if (nd->conn.ac)
            break;
        nd = nd->next ? nd->next : cl->nodes;
    } while (nd != start);
    cl->asked = nd; /* when none is up: fails at once, and is tried again soon */
    struct sbuf b = {0};
    resp_argc(&b, 2);
    resp_str(&b, "CLUSTER");
    resp_str(&b, "SLOTS");
    cl->refreshing = true;
    redis_conn_send(&nd->conn, -1, &b, on_slots, cl);
}

static void
on_refresh_timer(void *arg)
{
    struct redis_cluster *cl = arg;

    cl->refresh_at = 0;
    if (cl->refreshing)
        refresh_soon(cl, REFRESH_SOON_US);
    else
        refresh_now(cl);
}

/* Has the map asked for within us, unless it already is sooner. */
static void
refresh_soon(struct redis_cluster *cl, uint64_t us)
{
    uint64_t at = util_mono_us() + us;

    if (cl->env->closing || (cl->refresh_at && cl->refresh_at <= at))
        return;
    cl->refresh_at = at;
    redis_conn_timer_arm(&cl->refresh, us);
}

struct redis_cluster *
redis_cluster_new(struct redis_conn_env *env, const struct redis_endpoint *seeds, size_t n)
{
    struct redis_cluster *cl = xcalloc(1, sizeof(*cl));

    cl->env = env;
    cl->auth = seeds[0];
    redis_conn_timer_init(&cl->refresh, env->base, on_refresh_timer, cl);
    for (size_t i = 0; i < n; i++)
        node_get(cl, seeds[i].host, seeds[i].port);
    cl->nseeds = n;
    refresh_now(cl);
    return cl;
}

static void ccmd_send(struct ccmd *cc);

static void
ccmd_free(struct ccmd *cc)
{
    sbuf_free(&cc->cmd);
    redis_conn_timer_free(&cc->timer);
    free(cc);
}

static void
ccmd_finish(struct ccmd *cc, redisReply *r)
{
    cc->fn(cc->arg, r);
    ccmd_free(cc);
}

static void
on_ignored(void *arg, redisReply *r)
{
}

static void
on_retry_timer(void *arg)
{
    struct ccmd *cc = arg, **pp;

    for (pp = &cc->cl->retrying; *pp != cc; pp = &(*pp)->next_retry)
        ;
    *pp = cc->next_retry;
    ccmd_send(cc);
}

static bool
is_error(const redisReply *r, const char *prefix)
{
    size_t n = strlen(prefix);

    return r->type == REDIS_REPLY_ERROR && r->len >= n && memcmp(r->str, prefix, n) == 0;
}

static void
on_ccmd_reply(void *arg, redisReply *r)
{
    struct ccmd *cc = arg;
    struct redis_cluster *cl = cc->cl;
    uint64_t now = util_mono_us();

    if (!r) {
        refresh_soon(cl, REFRESH_SOON_US);
        ccmd_finish(cc, r);
        return;
    }
    if (r->type != REDIS_REPLY_ERROR || cl->env->closing || cc->tries >= MAX_REDIRECTS ||
        now >= cc->deadline_us) {
        ccmd_finish(cc, r);
        return;
    }
    char host[256];
    unsigned slot;
    int port;
    int kind = redis_slots_redirect(r->str, r->len, &slot, host, sizeof(host), &port);
    if (kind == 1) {
        struct node *nd = node_get(cl, host, port);
        if (cl->slots[slot] != nd)
            cl->env->moves++;
        cl->slots[slot] = nd;
        refresh_soon(cl, 0);
    } else if (kind == 2) {
        cc->ask = node_get(cl, host, port);
    } else if (is_error(r, "CLUSTERDOWN")) {
        refresh_soon(cl, REFRESH_SOON_US);
    } else if (!is_error(r, "TRYAGAIN")) {
        ccmd_finish(cc, r);
        return;
    }
    /* The first redirection is followed at once; after that (the nodes do not agree yet:
     * a slot's new owner announced to one before the other), and for TRYAGAIN and
     * CLUSTERDOWN, after a wait that doubles. */
    cc->tries++;
    if ((kind == 1 || kind == 2) && cc->tries == 1) {
        ccmd_send(cc);
        return;
    }
    uint64_t wait = cc->backoff_us ? cc->backoff_us * 2 : RETRY_FIRST_US;
    if (now + wait >= cc->deadline_us) {
        ccmd_finish(cc, r);
        return;
    }
    cc->backoff_us = wait;
    if (!cc->timer.ev)
        redis_conn_timer_init(&cc->timer, cl->env->base, on_retry_timer, cc);
    cc->next_retry = cl->retrying;
    cl->retrying = cc;
    redis_conn_timer_arm(&cc->timer, wait);
}

/* Sends cc to its slot's master (or to the node an ASK named, after ASKING). */
static void
ccmd_send(struct ccmd *cc)
{
    struct redis_cluster *cl = cc->cl;
    struct node *nd = cc->ask ? cc->ask : cl->slots[cc->slot];
    struct sbuf b = {0};

    if (!nd)
        nd = cl->nodes; /* no map yet: a seed, which redirects */
    if (cc->ask) {
        resp_argc(&b, 1);
        resp_str(&b, "ASKING");
        redis_conn_send(&nd->conn, -1, &b, on_ignored, NULL);
        cc->ask = NULL;
    }
    sbuf_add(&b, cc->cmd.p, cc->cmd.len);
    redis_conn_send(&nd->conn, cc->script, &b, on_ccmd_reply, cc);
}

void
redis_cluster_send(struct redis_cluster *cl, unsigned slot, int script, struct sbuf *cmd,
                   redis_reply_fn *fn, void *arg)
{
    struct ccmd *cc = xcalloc(1, sizeof(*cc));

    cc->cl = cl;
    cc->slot = slot & (REDIS_SLOTS - 1);
    cc->script = script;
    cc->cmd = *cmd;
    *cmd = (struct sbuf){0};
    cc->deadline_us = util_mono_us() + cl->env->deadline_us;
    cc->fn = fn;
    cc->arg = arg;
    ccmd_send(cc);
}

size_t
redis_cluster_masters(struct redis_cluster *cl, struct redis_conn **out, size_t cap)
{
    size_t n = 0;

    if (!cl->have_map) {
        struct node *nd = cl->nodes;
        for (size_t i = 0; i < cl->nseeds; i++, nd = nd->next) {
            if (n < cap)
                out[n] = &nd->conn;
            n++;
        }
        return n;
    }
    for (struct node *nd = cl->nodes; nd; nd = nd->next) {
        bool master = false;
        for (unsigned s = 0; s < REDIS_SLOTS && !master; s++)
            master = cl->slots[s] == nd;
        if (master) {
            if (n < cap)
                out[n] = &nd->conn;
            n++;
        }
    }
    return n;
}

struct redis_conn *
redis_cluster_conn(struct redis_cluster *cl, unsigned slot)
{
    struct node *nd = cl->slots[slot & (REDIS_SLOTS - 1)];

    return nd ? &nd->conn : &cl->nodes->conn;
}

bool
redis_cluster_healthy(const struct redis_cluster *cl)
{
    if (!cl->have_map)
        return false;
    for (unsigned s = 0; s < REDIS_SLOTS; s++)
        if (cl->slots[s] && !cl->slots[s]->conn.ac)
            return false;
    return true;
}

void
redis_cluster_free(struct redis_cluster *cl)
{
    struct node *nd, *next;

    if (!cl)
        return;
    /* Commands waiting to be sent again complete now, with no reply. */
    while (cl->retrying) {
        struct ccmd *cc = cl->retrying;
        cl->retrying = cc->next_retry;
        ccmd_finish(cc, NULL);
    }
    for (nd = cl->nodes; nd; nd = next) {
        next = nd->next;
        redis_conn_fini(&nd->conn);
        free(nd);
    }
    redis_conn_timer_free(&cl->refresh);
    free(cl);
}
