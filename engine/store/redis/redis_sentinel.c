/* redis_sentinel.c - where the master is, as Redis Sentinel says: redis+sentinel:// URLs, asking
 * the sentinels, following +switch-master. */
#define _GNU_SOURCE
#include "redis_sentinel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "log.h"
#include "store_redis.h"
#include "util.h"

/*
 * Each connection of a Redis store whose URL is redis+sentinel:// has a
 * watcher (so each worker has its own: no thread hands addresses to
 * another). The watcher asks the sentinels through plain redis_conn
 * connections (deadlines, reconnection), one per sentinel, made when first
 * asked; the +switch-master subscription is one hiredis context of its own,
 * on the same adapter (redis_conn_attach()).
 */

#define ASK_GAP_US 100000   /* between two rounds of asking */
#define RETRY_MIN_US 100000 /* after a round nobody answered: doubling to RETRY_MAX_US */
#define RETRY_MAX_US 1000000
#define SUB_RETRY_US 500000 /* a lost subscription is made again (to the next sentinel) */
#define SENTINEL_PORT 26379

struct redis_sentinel {
    struct redis_conn *data; /* the connection whose master this is (borrowed) */
    struct event_base *base;
    struct redis_sentinel_url url;
    struct redis_conn_env env; /* of the connections to the sentinels */
    struct store_redis_stats stats;
    struct redis_conn q[REDIS_SENTINEL_MAX]; /* to each sentinel, for asking */
    bool q_init[REDIS_SENTINEL_MAX];

    /* asking */
    bool asking;       /* a round is on */
    bool again;        /* asked for another round while one was on */
    size_t first;      /* the sentinel that answered last: asked first */
    size_t cur, tried; /* the sentinel asked now; how many of this round were */
    uint64_t last_round_us;
    uint64_t retry_us;        /* the backoff after a round nobody answered */
    struct redis_timer later; /* the next round */
    bool known;               /* a sentinel answered once */
    bool silent_logged;       /* "no sentinel answered" was logged */

    /* +switch-master */
    redisAsyncContext *sub;
    size_t sub_at;
    struct redis_timer sub_retry;
};

/* ---- URLs --------------------------------------------------------------------------------- */

static const char scheme[] = "redis+sentinel://";

bool
redis_sentinel_is_url(const char *url)
{
    return url && strncmp(url, scheme, sizeof(scheme) - 1) == 0;
}

int
redis_sentinel_parse_url(const char *url, struct redis_sentinel_url *u, char *err, size_t errlen)
{
    const char *p, *hosts, *hosts_end, *name, *name_end, *at;
    char buf[1024];

    memset(u, 0, sizeof(*u));
    if (!redis_sentinel_is_url(url)) {
        snprintf(err, errlen,
                 "'%s': expected redis+sentinel://[[user]:password@]host[:port][,host[:port]...]"
                 "/MASTER_NAME[/db]",
                 url ? url : "");
        return -1;
    }
    p = url + sizeof(scheme) - 1;
    hosts_end = p + strcspn(p, "/?#");
    at = memrchr(p, '@', (size_t)(hosts_end - p));
    hosts = at ? at + 1 : p;
    if (*hosts_end != '/') {
        snprintf(err, errlen, "'%s': the master's name is missing (.../MASTER_NAME)", url);
        return -1;
    }
    name = hosts_end + 1;
    name_end = name + strcspn(name, "/?#");
    if (name_end == name || (size_t)(name_end - name) >= sizeof(u->master_name)) {
        snprintf(err, errlen, "'%s': missing or overlong master name", url);
        return -1;
    }
    memcpy(u->master_name, name, (size_t)(name_end - name));

    /* The master's user, password and database, read as redis:// reads them. */
    if (snprintf(buf, sizeof(buf), "redis://%.*sx%s", at ? (int)(at - p + 1) : 0, p, name_end) >=
        (int)sizeof(buf)) {
        snprintf(err, errlen, "'%s': too long", url);
        return -1;
    }
    if (redis_conn_parse_url(buf, &u->master, err, errlen) != 0) {
        char why[256];
        snprintf(why, sizeof(why), "%s", err);
        snprintf(err, errlen, "'%s': %s", url, strstr(why, "': ") ? strstr(why, "': ") + 3 : why);
        return -1;
    }
    u->master.host[0] = '\0';

    /* The sentinels, each as the host of a redis:// URL. */
    for (const char *h = hosts; h < hosts_end;) {
        const char *comma = memchr(h, ',', (size_t)(hosts_end - h));
        const char *e = comma ? comma : hosts_end;
        if (e == h) {
            snprintf(err, errlen, "'%s': an empty sentinel address", url);
            return -1;
        }
        if (u->n == REDIS_SENTINEL_MAX) {
            snprintf(err, errlen, "'%s': more than %d sentinels", url, REDIS_SENTINEL_MAX);
            return -1;
        }
        if (memchr(h, '@', (size_t)(e - h)) ||
            snprintf(buf, sizeof(buf), "redis://%.*s", (int)(e - h), h) >= (int)sizeof(buf) ||
            redis_conn_parse_url(buf, &u->sentinels[u->n], err, errlen) != 0) {
            snprintf(err, errlen, "'%s': bad sentinel address '%.*s'", url, (int)(e - h), h);
            return -1;
        }
        /* redis_conn_parse_url's default is Redis's port; a sentinel's is 26379. */
        const char *port = h;
        if (*h == '[')
            port = memchr(h, ']', (size_t)(e - h));
        if (!port || !memchr(port, ':', (size_t)(e - port)))
            u->sentinels[u->n].port = SENTINEL_PORT;
        u->n++;
        h = comma ? comma + 1 : hosts_end;
        if (comma && h == hosts_end) {
            snprintf(err, errlen, "'%s': an empty sentinel address", url);
            return -1;
        }
    }
    if (u->n == 0) {
        snprintf(err, errlen, "'%s': no sentinel address", url);
        return -1;
    }
    return 0;
}

/* ---- asking the sentinels ----------------------------------------------------------------- */

static void ask(struct redis_sentinel *s);

/* A sentinel said the master is host:port: c goes there. */
static void
found(struct redis_sentinel *s, const char *host, size_t hostlen, long port, const char *how)
{
    struct redis_endpoint ep = s->url.master;

    if (hostlen == 0 || hostlen >= sizeof(ep.host) || port < 1 || port > 65535)
        return;
    memcpy(ep.host, host, hostlen);
    ep.host[hostlen] = '\0';
    ep.port = (int)port;
    if (!s->known || strcmp(ep.host, s->data->ep.host) != 0 || ep.port != s->data->ep.port)
        log_info("redis %s: master %s is at %s:%d (%s)", s->data->role, s->url.master_name, ep.host,
                 ep.port, how);
    s->known = true;
    redis_conn_set_endpoint(s->data, &ep);
}

static void ask_next(struct redis_sentinel *s);

static void
round_end(struct redis_sentinel *s, bool answered)
{
    s->asking = false;
    s->last_round_us = util_mono_us();
    if (answered) {
        s->retry_us = RETRY_MIN_US;
        s->silent_logged = false;
    } else {
        if (!s->silent_logged) {
            log_warn("redis %s: no sentinel of %s answered where the master is; %s", s->data->role,
                     s->url.master_name,
                     s->known ? "keeping the last known master" : "the store is down meanwhile");
            s->silent_logged = true;
        }
        redis_conn_timer_arm(&s->later, s->retry_us);
        s->retry_us = s->retry_us * 2 > RETRY_MAX_US ? RETRY_MAX_US : s->retry_us * 2;
    }
    if (s->again) {
        s->again = false;
        ask(s);
    }
}

static void
on_master_addr(void *arg, redisReply *r)
{
    struct redis_sentinel *s = arg;

    if (s->env.closing)
        return;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING) {
        char *e;
        errno = 0;
        long port = strtol(r->element[1]->str, &e, 10);
        if (!errno && *e == '\0') {
            s->first = s->cur;
            found(s, r->element[0]->str, r->element[0]->len, port, "asked");
            round_end(s, true);
            return;
        }
    }
    /* no answer, an error, or nil (this sentinel does not know the name): the next one */
    s->cur = (s->cur + 1) % s->url.n;
    ask_next(s);
}

static void
ask_next(struct redis_sentinel *s)
{
    if (s->tried == s->url.n) {
        round_end(s, false);
        return;
    }
    s->tried++;
    struct redis_conn *q = &s->q[s->cur];
    if (!s->q_init[s->cur]) {
        redis_conn_init(q, &s->env, "sentinel", &s->url.sentinels[s->cur]);
        q->plain = true;
        s->q_init[s->cur] = true;
    }
    redis_conn_connect(q);
    struct sbuf b = {0};
    resp_argc(&b, 3);
    resp_str(&b, "SENTINEL");
    resp_str(&b, "get-master-addr-by-name");
    resp_str(&b, s->url.master_name);
    redis_conn_send(q, -1, &b, on_master_addr, s); /* may answer at once: not connected */
}

/* Starts a round of asking, unless one is on or the last one was under ASK_GAP_US ago. */
static void
ask(struct redis_sentinel *s)
{
    uint64_t now = util_mono_us();

    if (s->env.closing)
        return;
    if (s->asking) {
        s->again = true;
        return;
    }
    if (s->last_round_us && now - s->last_round_us < ASK_GAP_US) {
        redis_conn_timer_arm(&s->later, ASK_GAP_US - (now - s->last_round_us));
        return;
    }
    s->asking = true;
    s->tried = 0;
    s->cur = s->first;
    ask_next(s);
}

static void
on_later(void *arg)
{
    ask(arg);
}

/* c lost its master, or found a replica there. */
static void
on_lost_master(void *arg)
{
    ask(arg);
}

/* ---- +switch-master ----------------------------------------------------------------------- */

static void sub_connect(struct redis_sentinel *s);

static void
sub_lost(struct redis_sentinel *s)
{
    s->sub = NULL;
    if (s->env.closing)
        return;
    s->sub_at = (s->sub_at + 1) % s->url.n;
    redis_conn_timer_arm(&s->sub_retry, SUB_RETRY_US);
}

static void
on_sub_connect(const redisAsyncContext *ac, int status)
{
    struct redis_sentinel *s = ac->data;

    if (s && status != REDIS_OK)
        sub_lost(s);
}

static void
on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_sentinel *s = ac->data;

    if (s)
        sub_lost(s);
}

/* "message" "+switch-master" "NAME OLD_IP OLD_PORT NEW_IP NEW_PORT", or the subscription's
 * confirmation: after it, ask once, for a switch that happened before it. */
static void
on_sub_message(redisAsyncContext *ac, void *reply, void *arg)
{
    struct redis_sentinel *s = arg;
    redisReply *r = reply;

    if (!r || !ac->data || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(r->element[0]->str, "subscribe") == 0) {
        ask(s);
        return;
    }
    if (strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
        return;
    char name[128], oldhost[256], newhost[256];
    long oldport, newport;
    if (sscanf(r->element[2]->str, "%127s %255s %ld %255s %ld", name, oldhost, &oldport, newhost,
               &newport) == 5 &&
        strcmp(name, s->url.master_name) == 0)
        found(s, newhost, strlen(newhost), newport, "+switch-master");
}

static void
sub_connect(struct redis_sentinel *s)
{
    const struct redis_endpoint *ep = &s->url.sentinels[s->sub_at];
    redisAsyncContext *ac;

    if (s->sub || s->env.closing)
        return;
    ac = redisAsyncConnect(ep->host, ep->port);
    if (!ac || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        sub_lost(s);
        return;
    }
    redis_conn_attach(ac, s->base);
    ac->data = s;
    redisAsyncSetConnectCallback(ac, on_sub_connect);
    redisAsyncSetDisconnectCallback(ac, on_sub_disconnect);
    s->sub = ac;
    redisAsyncCommand(ac, on_sub_message, s, "SUBSCRIBE +switch-master");
}

static void
on_sub_retry(void *arg)
{
    sub_connect(arg);
}

/* ---- the watcher -------------------------------------------------------------------------- */

struct redis_sentinel *
redis_sentinel_watch(struct redis_conn *c, struct event_base *base,
                     const struct redis_sentinel_url *u, uint64_t deadline_ms)
{
    struct redis_sentinel *s = xcalloc(1, sizeof(*s));

    s->data = c;
    s->base = base;
    s->url = *u;
    s->env.base = base;
    s->env.deadline_us = deadline_ms * 1000;
    s->env.stats = &s->stats;
    s->retry_us = RETRY_MIN_US;
    redis_conn_timer_init(&s->later, base, on_later, s);
    redis_conn_timer_init(&s->sub_retry, base, on_sub_retry, s);
    c->check_role = true;
    c->lost_master = on_lost_master;
    c->lost_arg = s;
    ask(s);
    sub_connect(s);
    return s;
}

void
redis_sentinel_free(struct redis_sentinel *s)
{
    if (!s)
        return;
    s->env.closing = true;
    s->data->lost_master = NULL;
    if (s->sub) {
        redisAsyncContext *ac = s->sub;
        ac->data = NULL;
        s->sub = NULL;
        redisAsyncFree(ac);
    }
    for (size_t i = 0; i < s->url.n; i++)
        if (s->q_init[i])
            redis_conn_fini(&s->q[i]);
    redis_conn_timer_free(&s->later);
    redis_conn_timer_free(&s->sub_retry);
    free(s);
}
