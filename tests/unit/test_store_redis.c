/* test_store_redis.c - the store conformance suite on the Redis store, its own tests, and failover.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "store.h"
#include "store_failover.h"
#include "store_memory.h"
#include "store_redis.h"
#include "store_redis_codec.h"
#include "store_conformance.h"

/*
 * A redis-server of its own on a free loopback port, started here and
 * stopped at the end (and killed with this process if it dies first).
 */
struct redis_server {
    int port;
    pid_t pid;
    char url[64];
    struct event_base *base;
};

static struct redis_server R;

static uint64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int
free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *
sync_connect(void)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", R.port, tv);

    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    if (c)
        redisSetTimeout(c, tv);
    return c;
}

/* Runs one command on a fresh synchronous connection; returns the reply (caller frees) or NULL. */
static redisReply *
cmd(const char *fmt, ...)
{
    redisContext *c = sync_connect();
    va_list ap;

    if (!c)
        return NULL;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

static int
server_start(void)
{
    char port[16];

    snprintf(port, sizeof(port), "%d", R.port);
    R.pid = fork();
    if (R.pid < 0)
        return -1;
    if (R.pid == 0) {
        int null = open("/dev/null", O_RDWR);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(null, 1);
        dup2(null, 2);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        redisReply *r = cmd("PING");
        if (r) {
            freeReplyObject(r);
            return 0;
        }
        usleep(25000);
    }
    return -1;
}

static void
server_kill(int sig)
{
    if (R.pid > 0) {
        kill(R.pid, SIGCONT);
        kill(R.pid, sig);
        waitpid(R.pid, NULL, 0);
        R.pid = 0;
    }
}

/* ---- the event loop ----------------------------------------------------------------------- */

static void
tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until *done or timeout_ms; returns whether *done. */
static bool
loop_until(const bool *done, uint64_t timeout_ms)
{
    struct event *t = event_new(R.base, -1, EV_PERSIST, tick, NULL);
    struct timeval tv = {0, 5000};
    uint64_t end = now_ms() + timeout_ms;

    event_add(t, &tv);
    while (!*done && now_ms() < end)
        event_base_loop(R.base, EVLOOP_ONCE);
    event_free(t);
    return *done;
}

/* Runs the loop for ms milliseconds. */
static void
loop_for(uint64_t ms)
{
    bool never = false;

    loop_until(&never, ms);
}

/* ---- the conformance harness -------------------------------------------------------------- */

static uint64_t conf_deadline_ms = 1000;

static struct store *
redis_open_cfg(uint64_t deadline_ms)
{
    struct store_redis_config cfg = {.url = R.url, .deadline_ms = deadline_ms};
    char err[256];
    struct store *s = store_redis_new(R.base, &cfg, err, sizeof(err));

    if (!s)
        fprintf(stderr, "store_redis_new: %s\n", err);
    return s;
}

static struct store *
redis_open(void *ctx)
{
    redisReply *r = cmd("FLUSHALL");

    if (!r)
        return NULL;
    freeReplyObject(r);
    return redis_open_cfg(conf_deadline_ms);
}

/* Every key the store wrote has a TTL and is of a kind of the current layout (limit, entry,
 * response, fill lease, variants, tag): SCAN + PTTL. Returns the number of keys seen. */
static size_t
check_ttls(void)
{
    redisContext *c = sync_connect();
    char cursor[32] = "0";
    size_t seen = 0;

    assert_non_null(c);
    for (int rounds = 0; rounds < 100000; rounds++) {
        redisReply *r = redisCommand(c, "SCAN %s COUNT 1000", cursor);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            redisReply *k = r->element[1]->element[i];
            redisReply *t = redisCommand(c, "PTTL %b", k->str, k->len);
            assert_non_null(t);
            if (t->integer == -1)
                fail_msg("key without a TTL: %.*s", (int)k->len, k->str);
            assert_true(memcmp(k->str, "sl:{", 4) == 0);
            const char *close = memchr(k->str, '}', k->len);
            assert_non_null(close);
            assert_true(close + 3 < k->str + k->len && close[1] == ':' && close[3] == ':');
            if (!strchr("lcrfvt", close[2]))
                fail_msg("key of an unknown kind: %.*s", (int)k->len, k->str);
            freeReplyObject(t);
            seen++;
        }
        freeReplyObject(r);
        if (strcmp(cursor, "0") == 0)
            break;
    }
    redisFree(c);
    return seen;
}

static struct store *
redis_another(void *ctx)
{
    return redis_open_cfg(conf_deadline_ms);
}

static void
redis_close(void *ctx, struct store *s)
{
    s->ops->destroy(s);
    check_ttls();
}

static void
redis_run_until_done(void *ctx, const bool *done)
{
    loop_until(done, 10000);
}

static void
redis_advance(void *ctx, uint64_t ms)
{
    loop_for(ms);
}

static const struct store_harness redis_harness = {
    .name = "store_redis_conformance",
    .open = redis_open,
    .close = redis_close,
    .run_until_done = redis_run_until_done,
    .advance = redis_advance,
    .another = redis_another,
};

/* ---- helpers for the tests below ---------------------------------------------------------- */

struct op {
    bool done;
    int calls;
    int status;
    uint64_t at_ms;
};

static void
op_done(void *arg, int status)
{
    struct op *o = arg;

    o->calls++;
    o->done = true;
    o->status = status;
    o->at_ms = now_ms();
}

/* One admit of a fixed-window limit of `limit` per hour on key; returns status, fills *res. */
/* One limit of `limit` an hour under key, enforced or in shadow mode: the store's status. */
static int
admit_mode(struct store *s, const char *key, uint64_t limit, bool fail_closed, bool shadow,
           struct limiter_result *res, struct store_admit *out)
{
    struct limiter_rule rule = {.algo = LIMITER_FIXED_WINDOW, .limit = limit, .window_ms = HOUR};
    struct store_limit l = {.rule = &rule,
                            .key = key,
                            .keylen = strlen(key),
                            .cost = 1,
                            .fail_closed = fail_closed,
                            .shadow = shadow};
    struct store_admit a = {.limits = &l, .nlimits = 1, .results = res};
    struct op o = {0};

    store_admit_and_lookup(s, &a, op_done, &o);
    assert_true(loop_until(&o.done, 10000));
    loop_for(1);
    assert_int_equal(o.calls, 1);
    if (out)
        *out = a;
    return o.status;
}

static int
admit1(struct store *s, const char *key, uint64_t limit, bool fail_closed,
       struct limiter_result *res, struct store_admit *out)
{
    return admit_mode(s, key, limit, fail_closed, false, res, out);
}

static struct store *
open_fresh(uint64_t deadline_ms)
{
    redisReply *r = cmd("FLUSHALL");

    assert_non_null(r);
    freeReplyObject(r);
    struct store *s = redis_open_cfg(deadline_ms);
    assert_non_null(s);
    return s;
}

/* ---- Redis-only tests --------------------------------------------------------------------- */

static void
test_noscript_retried(void **state)
{
    struct store *s = open_fresh(1000);
    struct limiter_result res;
    struct store_redis_stats st;

    assert_int_equal(admit1(s, "ns", 2, false, &res, NULL), 0);
    assert_int_equal(res.remaining, 1);
    redisReply *r = cmd("SCRIPT FLUSH");
    assert_non_null(r);
    freeReplyObject(r);
    assert_int_equal(admit1(s, "ns", 2, false, &res, NULL), 0);
    assert_true(res.allowed);
    assert_int_equal(res.remaining, 0); /* counted once, not twice */
    store_redis_stats(s, &st);
    assert_true(st.noscript >= 1);
    assert_int_equal(admit1(s, "ns", 2, false, &res, NULL), 0);
    assert_false(res.allowed);

    /* A flush under a pipeline of requests: each is answered once, none counted twice. */
    r = cmd("SCRIPT FLUSH");
    freeReplyObject(r);
    enum { N = 50 };
    struct limiter_rule rule = {.algo = LIMITER_SLIDING_LOG, .limit = N, .window_ms = HOUR};
    struct store_limit l = {.rule = &rule, .key = "pipe", .keylen = 4, .cost = 1};
    struct limiter_result rs[N];
    struct store_admit a[N];
    struct op o[N];
    for (int i = 0; i < N; i++) {
        a[i] = (struct store_admit){.limits = &l, .nlimits = 1, .results = &rs[i]};
        o[i] = (struct op){0};
        store_admit_and_lookup(s, &a[i], op_done, &o[i]);
    }
    assert_true(loop_until(&o[N - 1].done, 10000));
    bool seen[N] = {0};
    for (int i = 0; i < N; i++) {
        assert_true(loop_until(&o[i].done, 10000));
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].status, 0);
        assert_true(rs[i].remaining < N);
        assert_false(seen[rs[i].remaining]);
        seen[rs[i].remaining] = true;
    }
    assert_int_equal(admit1(s, "x", 1, false, &res, NULL), 0);
    r = cmd("ZCARD %s", "sl:{pipe}:l:1:50:3600000:0:pipe");
    assert_non_null(r);
    assert_int_equal(r->integer, N + 1); /* N entries and the last-commit marker */
    freeReplyObject(r);
    s->ops->destroy(s);
    check_ttls();
}

static int
cont_server(void **state)
{
    if (R.pid > 0)
        kill(R.pid, SIGCONT);
    return 0;
}

static void
test_deadline_once(void **state)
{
    const uint64_t D = 50;
    struct store *s = open_fresh(D);
    struct limiter_result res;
    enum { N = 8 };
    struct limiter_result rs[N];
    struct store_admit a[N];
    struct op o[N];
    struct limiter_rule rule = {.algo = LIMITER_SLIDING_WINDOW, .limit = 100, .window_ms = HOUR};
    struct store_limit l = {.rule = &rule, .key = "d", .keylen = 1, .cost = 1};
    struct store_redis_stats st;

    assert_int_equal(admit1(s, "warm", 10, false, &res, NULL), 0);
    kill(R.pid, SIGSTOP);
    uint64_t t0 = now_ms();
    for (int i = 0; i < N; i++) {
        a[i] = (struct store_admit){.limits = &l, .nlimits = 1, .results = &rs[i]};
        o[i] = (struct op){0};
        store_admit_and_lookup(s, &a[i], op_done, &o[i]);
    }
    for (int i = 0; i < N; i++)
        assert_true(loop_until(&o[i].done, 2000));
    loop_for(200); /* nothing completes twice later */
    for (int i = 0; i < N; i++) {
        uint64_t took = o[i].at_ms - t0;
        if (i == 0)
            print_message("deadline %llu ms: answered after %llu ms\n", (unsigned long long)D,
                          (unsigned long long)took);
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].status, STORE_UNAVAILABLE);
        assert_true(took >= D - 1);
        assert_true(took <= D + 15);
    }
    store_redis_stats(s, &st);
    assert_true(st.deadlines >= 1); /* and once per reconnection while stopped */
    /* While stopped, every command ends at its deadline too, after a reconnection. */
    struct op late = {0};
    a[0] = (struct store_admit){.limits = &l, .nlimits = 1, .results = &rs[0]};
    uint64_t t1 = now_ms();
    store_admit_and_lookup(s, &a[0], op_done, &late);
    assert_true(loop_until(&late.done, 2000));
    assert_int_equal(late.status, STORE_UNAVAILABLE);
    assert_true(late.at_ms - t1 <= D + 15);

    kill(R.pid, SIGCONT);
    bool ok = false;
    for (int i = 0; i < 100 && !ok; i++) {
        ok = admit1(s, "after", 100, false, &res, NULL) == 0;
        if (!ok)
            loop_for(20);
    }
    assert_true(ok);
    s->ops->destroy(s);
}

static void
test_reconnect_after_restart(void **state)
{
    struct store *s = open_fresh(200);
    struct limiter_result res;
    struct store_redis_stats st;

    assert_int_equal(admit1(s, "r", 10, false, &res, NULL), 0);
    server_kill(SIGKILL);
    int status = admit1(s, "r", 10, false, &res, NULL);
    assert_int_equal(status, STORE_UNAVAILABLE);
    assert_int_equal(admit1(s, "r", 10, false, &res, NULL), STORE_UNAVAILABLE);
    assert_int_equal(server_start(), 0);
    bool ok = false;
    for (int i = 0; i < 200 && !ok; i++) {
        ok = admit1(s, "r", 10, false, &res, NULL) == 0;
        if (!ok)
            loop_for(20);
    }
    assert_true(ok);
    assert_int_equal(res.remaining, 9); /* a new server: counting starts again */
    store_redis_stats(s, &st);
    assert_true(st.connects >= 2);
    s->ops->destroy(s);
}

static void
test_bad_urls(void **state)
{
    char err[256];
    static const char *const good[] = {"redis://127.0.0.1:6379/0", "redis://localhost",
                                       "redis://:secret@10.0.0.1:7000/3",
                                       "redis://user:p%40ss@host:1/", "redis://[::1]:6380"};
    static const char *const bad[] = {
        "http://x",    "redis://",       "redis://h:0",     "redis://h:99999", "redis://h:12x",
        "redis://h/x", "redis://h?db=1", "redis://:p%zz@h", "redis://[::1",    "127.0.0.1:6379"};

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_int_equal(store_redis_check_url(good[i], err, sizeof(err)), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(store_redis_check_url(bad[i], err, sizeof(err)), -1);
        assert_true(strlen(err) > 0);
    }
}

static void
test_db_and_password(void **state)
{
    /* A password the server requires, and a database other than 0. */
    redisReply *r = cmd("CONFIG SET requirepass %s", "s3cret");
    assert_non_null(r);
    freeReplyObject(r);
    char url[128];
    snprintf(url, sizeof(url), "redis://:s3cret@127.0.0.1:%d/5", R.port);
    struct store_redis_config cfg = {.url = url, .deadline_ms = 1000};
    char err[128];
    struct store *s = store_redis_new(R.base, &cfg, err, sizeof(err));
    struct limiter_result res;

    assert_non_null(s);
    assert_int_equal(admit1(s, "pw", 3, false, &res, NULL), 0);
    assert_int_equal(res.remaining, 2);
    s->ops->destroy(s);
    redisContext *c = sync_connect();
    r = redisCommand(c, "AUTH s3cret");
    freeReplyObject(r);
    r = redisCommand(c, "SELECT 5");
    freeReplyObject(r);
    r = redisCommand(c, "DBSIZE");
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    r = redisCommand(c, "FLUSHALL");
    freeReplyObject(r);
    r = redisCommand(c, "CONFIG SET requirepass %s", "");
    freeReplyObject(r);
    redisFree(c);
}

static void
test_separate_limits_redis(void **state)
{
    /* Limits and cache in two databases of the server stand for two servers. */
    char url[64], lurl[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/1", R.port);
    snprintf(lurl, sizeof(lurl), "redis://127.0.0.1:%d/2", R.port);
    struct store_redis_config cfg = {.url = url, .limits_url = lurl, .deadline_ms = 1000};
    char err[128];
    struct store *s = store_redis_new(R.base, &cfg, err, sizeof(err));
    struct store_harness h = redis_harness;
    struct conf c = {.h = &h, .s = s};
    const char *tags[] = {"T:1", NULL};
    struct conf_req q;

    assert_non_null(s);
    redisReply *r = cmd("FLUSHALL");
    freeReplyObject(r);
    assert_int_equal(conf_put(&c, "page:1", tags, "body", 60000), 0);
    for (int i = 0; i < 3; i++) {
        memset(&q, 0, sizeof(q));
        conf_add_limit(&q, conf_rule(LIMITER_SLIDING_LOG, 2, HOUR), "u:1", 3, 1);
        q.key = "page:1";
        q.keylen = 6;
        conf_add_tag(&q, "T:1", 3);
        conf_admit(&c, &q);
        assert_int_equal(q.a.allowed, i < 2);
        assert_int_equal(q.a.state, i < 2 ? STORE_HIT : STORE_MISS);
        store_entry_release(q.a.entry);
    }
    conf_invalidate1(&c, "T:1");
    assert_false(conf_hit(&c, "page:1", tags, NULL));
    s->ops->destroy(s);
    redisContext *sc = sync_connect();
    r = redisCommand(sc, "SELECT 2");
    freeReplyObject(r);
    r = redisCommand(sc, "KEYS *");
    assert_int_equal(r->elements, 1); /* the limit, alone */
    assert_non_null(strstr(r->element[0]->str, ":l:"));
    freeReplyObject(r);
    redisFree(sc);
    check_ttls();
}

static uint64_t
xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/*
 * Set-after-invalidate: requests look up, read the origin (its version),
 * then fill, interleaved at random with invalidations of their tags (each
 * a write that bumps the version). Any hit must show the current version.
 */
static void
test_set_after_invalidate_random(void **state)
{
    struct store *s = open_fresh(1000);
    struct store_harness h = redis_harness;
    struct conf c = {.h = &h, .s = s};
    uint64_t seed = 0x2545f4914f6cdd1dull;
    enum { NREQ = 4, ROUNDS = 300 };
    int hits = 0, refused = 0, stored = 0;

    for (int round = 0; round < ROUNDS; round++) {
        struct conf_req req[NREQ];
        int step[NREQ] = {0}; /* 0 lookup, 1 origin read, 2 fill, 3 done */
        unsigned version_read[NREQ] = {0};
        static unsigned version; /* the origin's data, bumped by every write */
        const char *tags[] = {"crm:7", "dash:7", NULL};
        const char *one[] = {"crm:7", NULL};
        int left = NREQ;

        while (left > 0) {
            uint64_t r = xorshift(&seed);
            if (r % 5 == 0) {
                /* A write: every entry carries crm:7; some writes name dash:7 too. */
                const char *both[] = {"dash:7", "crm:7"};
                size_t lens[] = {6, 5};
                version++;
                if ((r >> 8) % 2)
                    conf_invalidate(&c, both, lens, 2);
                else
                    conf_invalidate1(&c, "crm:7");
                continue;
            }
            int i = (int)((r >> 16) % NREQ);
            switch (step[i]) {
            case 0:
                conf_lookup(&c, &req[i], "crm:contacts:7", (r >> 24) % 2 ? tags : one);
                if (req[i].a.state == STORE_HIT) {
                    unsigned v = 0;
                    sscanf(req[i].a.entry->body, "v%u", &v);
                    assert_int_equal(v, version);
                    store_entry_release(req[i].a.entry);
                    hits++;
                    step[i] = 3;
                    left--;
                } else {
                    step[i] = 1;
                }
                break;
            case 1:
                version_read[i] = version;
                step[i] = 2;
                break;
            case 2: {
                char body[32];
                snprintf(body, sizeof(body), "v%u", version_read[i]);
                struct store_entry *e = conf_entry(200, "text/plain", body, strlen(body) + 1);
                int st = conf_fill_req(&c, &req[i], e, 1 + (r >> 32) % 60000);
                store_entry_release(e);
                if (st == 0)
                    stored++;
                else
                    refused++;
                step[i] = 3;
                left--;
                break;
            }
            default:
                break;
            }
        }
        /* After the round, a hit is the latest version. */
        struct conf_req q;
        conf_lookup(&c, &q, "crm:contacts:7", one);
        if (q.a.state == STORE_HIT) {
            unsigned v = 0;
            sscanf(q.a.entry->body, "v%u", &v);
            assert_int_equal(v, version);
            store_entry_release(q.a.entry);
        }
    }
    print_message("set-after-invalidate: %d hits, %d fills stored, %d refused\n", hits, stored,
                  refused);
    assert_true(refused > 0 && stored > 0 && hits > 0);
    s->ops->destroy(s);
    check_ttls();
}

static void
test_pipelined_batch(void **state)
{
    /* Many requests issued at once leave in few writes and all complete. */
    struct store *s = open_fresh(1000);
    enum { N = 500 };
    static struct limiter_result rs[N];
    static struct store_admit a[N];
    static struct op o[N];
    struct limiter_rule rule = {.algo = LIMITER_TOKEN_BUCKET, .limit = 300, .window_ms = HOUR};
    struct store_limit l = {.rule = &rule, .key = "burst", .keylen = 5, .cost = 1};
    int admitted = 0;

    for (int i = 0; i < N; i++) {
        a[i] = (struct store_admit){.limits = &l, .nlimits = 1, .results = &rs[i]};
        o[i] = (struct op){0};
        store_admit_and_lookup(s, &a[i], op_done, &o[i]);
    }
    for (int i = 0; i < N; i++) {
        assert_true(loop_until(&o[i].done, 10000));
        assert_int_equal(o[i].status, 0);
        admitted += a[i].allowed;
    }
    assert_int_equal(admitted, 300);
    s->ops->destroy(s);
}

/*
 * The limits decide as limiter.c does: random requests (one or two limits, costs up to past
 * the limit, short windows crossed by random pauses) against Redis and against limiter.c
 * fed with the time Redis decided at, on states dropped at their expiry as the memory
 * store drops them. Requests are sent one at a time, or up to 24 at once: those share one
 * call of the script (their keys share a hash tag) and are decided one after the other.
 */
static void
test_limits_match_limiter(void **state)
{
    static const struct limiter_rule rules[] = {
        {LIMITER_SLIDING_WINDOW, 5, 300, 0}, {LIMITER_SLIDING_WINDOW, 40, 1000, 0},
        {LIMITER_SLIDING_LOG, 4, 250, 0},    {LIMITER_SLIDING_LOG, 9, 700, 0},
        {LIMITER_TOKEN_BUCKET, 3, 200, 5},   {LIMITER_TOKEN_BUCKET, 10, 500, 10},
        {LIMITER_TOKEN_BUCKET, 7, 90, 2},    {LIMITER_FIXED_WINDOW, 6, 200, 0},
        {LIMITER_FIXED_WINDOW, 2, 1000, 0},
    };
    enum { NR = sizeof(rules) / sizeof(rules[0]), STEPS = 400, MAXK = 24 };
    struct store *s = open_fresh(1000);
    struct limiter_state local[NR];
    uint64_t seed = 0x51ce5eedull, last_now = 0;
    int admitted = 0, denied = 0, batched = 0;
    struct req {
        size_t n, idx[2];
        char keys[2][24];
        struct store_limit l[2];
        struct limiter_result res[2];
        uint32_t cost[2];
        struct store_admit a;
        struct op o;
    } *q = calloc(MAXK, sizeof(*q));

    assert_non_null(q);
    memset(local, 0, sizeof(local));
    for (int step = 0; step < STEPS; step++) {
        uint64_t r0 = xorshift(&seed);
        size_t k = r0 % 3 == 0 ? 2 + (r0 >> 8) % (MAXK - 1) : 1;
        for (size_t j = 0; j < k; j++) {
            struct req *rq = &q[j];
            uint64_t r = xorshift(&seed);
            rq->n = 1 + r % 2;
            rq->idx[0] = (r >> 8) % NR;
            rq->idx[1] = (r >> 16) % NR;
            if (rq->n == 2 && rq->idx[0] == rq->idx[1])
                rq->n = 1;
            for (size_t i = 0; i < rq->n; i++) {
                snprintf(rq->keys[i], sizeof(rq->keys[i]), "rule%zu:caller", rq->idx[i]);
                uint64_t c = (r >> (24 + 4 * i)) % 16;
                rq->cost[i] = (uint32_t)(c < 10 ? 1 : c < 12 ? 0 : c - 10);
                rq->l[i] = (struct store_limit){.rule = &rules[rq->idx[i]],
                                                .key = rq->keys[i],
                                                .keylen = strlen(rq->keys[i]),
                                                .cost = rq->cost[i]};
            }
            rq->a = (struct store_admit){.limits = rq->l, .nlimits = rq->n, .results = rq->res};
            rq->o = (struct op){0};
            store_admit_and_lookup(s, &rq->a, op_done, &rq->o);
        }
        batched += k > 1 ? (int)k : 0;
        for (size_t j = 0; j < k; j++) {
            struct req *rq = &q[j];
            assert_true(loop_until(&rq->o.done, 10000));
            assert_int_equal(rq->o.status, 0);
            assert_true(rq->a.now_ms >= last_now);
            last_now = rq->a.now_ms;
            struct limiter_result want[2];
            bool all = true;
            for (size_t i = 0; i < rq->n; i++) {
                struct limiter_state *st = &local[rq->idx[i]];
                if (rq->a.now_ms >= limiter_expiry(&rules[rq->idx[i]], st))
                    limiter_state_clear(st);
                limiter_check(&rules[rq->idx[i]], st, rq->a.now_ms, rq->cost[i], &want[i]);
                all = all && want[i].allowed;
            }
            assert_int_equal(rq->a.allowed, all);
            for (size_t i = 0; i < rq->n; i++) {
                const struct limiter_result *got = &rq->res[i];
                if (got->allowed != want[i].allowed || got->remaining != want[i].remaining ||
                    got->reset_ms != want[i].reset_ms ||
                    got->retry_after_ms != want[i].retry_after_ms)
                    fail_msg("step %d.%zu, rule %zu, cost %u, at %llu: redis %d/%llu/%llu/%llu, "
                             "limiter.c %d/%llu/%llu/%llu",
                             step, j, rq->idx[i], rq->cost[i], (unsigned long long)rq->a.now_ms,
                             got->allowed, (unsigned long long)got->remaining,
                             (unsigned long long)got->reset_ms,
                             (unsigned long long)got->retry_after_ms, want[i].allowed,
                             (unsigned long long)want[i].remaining,
                             (unsigned long long)want[i].reset_ms,
                             (unsigned long long)want[i].retry_after_ms);
                assert_int_equal(got->limit, rules[rq->idx[i]].limit);
            }
            if (all)
                for (size_t i = 0; i < rq->n; i++)
                    limiter_commit(&rules[rq->idx[i]], &local[rq->idx[i]], rq->a.now_ms,
                                   rq->cost[i]);
            admitted += all;
            denied += !all;
        }
        if ((r0 >> 40) % 4 == 0)
            loop_for((r0 >> 44) % 60);
    }
    print_message(
        "limits against limiter.c: %d admitted, %d denied (%d in batches), all the same\n",
        admitted, denied, batched);
    assert_true(admitted > 100 && denied > 100 && batched > 100);
    for (size_t i = 0; i < NR; i++)
        limiter_state_clear(&local[i]);
    free(q);
    s->ops->destroy(s);
    check_ttls();
}

/* Lookups of one turn share a call: one of them takes the lease, a fill is seen by all. */
static void
test_batched_lookups(void **state)
{
    enum { K = 20 };
    struct store *s = open_fresh(1000);
    struct store_harness h = redis_harness;
    struct conf c = {.h = &h, .s = s};
    static struct conf_req r[K];
    struct op o[K];
    struct store_redis_stats st0, st1;
    int miss = 0, filling = 0;

    for (int round = 0; round < 3; round++) {
        store_redis_stats(s, &st0);
        for (int i = 0; i < K; i++) {
            memset(&r[i], 0, sizeof(r[i]));
            conf_add_limit(&r[i], conf_rule(LIMITER_FIXED_WINDOW, 1000, HOUR), "reads:u7", 8, 1);
            conf_add_tag(&r[i], "crm:u7", 6);
            r[i].key = "page:u7";
            r[i].keylen = 7;
            r[i].lease_ms = CONF_LEASE;
            r[i].limits[0].rule = &r[i].rules[0];
            r[i].a = (struct store_admit){.limits = r[i].limits,
                                          .nlimits = 1,
                                          .cache_key = r[i].key,
                                          .cache_keylen = r[i].keylen,
                                          .tags = r[i].tags,
                                          .taglens = r[i].taglens,
                                          .ntags = 1,
                                          .lease_ms = CONF_LEASE,
                                          .results = r[i].results,
                                          .tag_gens = r[i].gens};
            o[i] = (struct op){0};
            store_admit_and_lookup(s, &r[i].a, op_done, &o[i]);
        }
        for (int i = 0; i < K; i++) {
            assert_true(loop_until(&o[i].done, 10000));
            assert_int_equal(o[i].status, 0);
            assert_true(r[i].a.allowed);
            assert_int_equal(r[i].results[0].remaining, 1000 - (uint64_t)(round * K + i) - 1);
            assert_memory_equal(r[i].gens, r[0].gens, sizeof(uint64_t));
        }
        store_redis_stats(s, &st1);
        /* One call for all; a GET each while there is no local copy (before the fill). */
        assert_int_equal(st1.commands - st0.commands, 1 + (round == 0 ? K : 0));
        if (round == 0) {
            for (int i = 0; i < K; i++) {
                miss += r[i].a.state == STORE_MISS;
                filling += r[i].a.state == STORE_FILLING;
            }
            assert_int_equal(r[0].a.state, STORE_MISS);
            assert_int_equal(miss, 1);
            assert_int_equal(filling, K - 1);
            struct store_entry *e = conf_entry(200, "text/plain", "batched", 7);
            assert_int_equal(conf_fill_req(&c, &r[0], e, 60000), 0);
            store_entry_release(e);
        } else {
            for (int i = 0; i < K; i++) {
                assert_int_equal(r[i].a.state, STORE_HIT);
                assert_memory_equal(r[i].a.entry->body, "batched", 7);
                store_entry_release(r[i].a.entry);
            }
        }
    }
    s->ops->destroy(s);
    check_ttls();
}

/* Two instances on one Redis: each keeps local copies of responses, never a stale one. */
static void
test_local_copies(void **state)
{
    struct store *a = open_fresh(1000), *b = redis_open_cfg(1000);
    struct store_harness h = redis_harness;
    struct conf ca = {.h = &h, .s = a}, cb = {.h = &h, .s = b};
    const char *tags[] = {"crm:9", NULL};
    struct store_redis_stats sa, sb;

    assert_non_null(b);
    assert_int_equal(conf_put(&ca, "page:9", tags, "v1", 60000), 0);
    assert_true(conf_hit(&ca, "page:9", tags, "v1")); /* a: the copy it stored */
    assert_true(conf_hit(&cb, "page:9", tags, "v1")); /* b: read with the lookup */
    assert_true(conf_hit(&cb, "page:9", tags, "v1")); /* b: now its copy */
    store_redis_stats(a, &sa);
    store_redis_stats(b, &sb);
    assert_int_equal(sa.local_hits, 1);
    assert_int_equal(sb.local_hits, 1);
    /* b stores another response: a's copy is not it, so a reads it after the lookup. */
    assert_int_equal(conf_put(&cb, "page:9", tags, "v2", 60000), 0);
    assert_true(conf_hit(&ca, "page:9", tags, "v2"));
    assert_true(conf_hit(&ca, "page:9", tags, "v2"));
    store_redis_stats(a, &sa);
    assert_int_equal(sa.refetches, 1);
    assert_int_equal(sa.local_hits, 2);
    /* The same bytes stored again are another fill: still read once, then the copy. */
    assert_int_equal(conf_put(&cb, "page:9", tags, "v2", 60000), 0);
    assert_true(conf_hit(&ca, "page:9", tags, "v2"));
    store_redis_stats(a, &sa);
    assert_int_equal(sa.refetches, 2);
    /* An invalidation through b: a's copy is never served again. */
    conf_invalidate1(&cb, "crm:9");
    assert_false(conf_hit(&ca, "page:9", tags, NULL));
    assert_false(conf_hit(&cb, "page:9", tags, NULL));
    /* An entry that expired in Redis is not served from a copy either. */
    assert_int_equal(conf_put(&ca, "short:9", NULL, "s", 200), 0);
    assert_true(conf_hit(&ca, "short:9", NULL, "s"));
    loop_for(400);
    assert_false(conf_hit(&ca, "short:9", NULL, NULL));
    /* A tiny budget keeps nothing, and answers the same. */
    struct store_redis_config cfg = {.url = R.url, .deadline_ms = 1000, .near_bytes = 1};
    char err[128];
    struct store *t = store_redis_new(R.base, &cfg, err, sizeof(err));
    struct conf ct = {.h = &h, .s = t};
    assert_non_null(t);
    assert_int_equal(conf_put(&ct, "tiny", NULL, "t", 60000), 0);
    for (int i = 0; i < 3; i++)
        assert_true(conf_hit(&ct, "tiny", NULL, "t"));
    store_redis_stats(t, &sa);
    assert_int_equal(sa.local_hits, 0);
    t->ops->destroy(t);
    a->ops->destroy(a);
    b->ops->destroy(b);
    check_ttls();
}

/* The fill lease holds across instances; limits kept apart: a denied request gives it back. */
static void
test_lease_across_instances(void **state)
{
    struct store *a = open_fresh(1000), *b = redis_open_cfg(1000);
    struct store_harness h = redis_harness;
    struct conf ca = {.h = &h, .s = a}, cb = {.h = &h, .s = b};
    struct conf_req ra, rb;

    assert_non_null(b);
    assert_int_equal(conf_lease_lookup(&ca, &ra, "one", NULL, CONF_LEASE), STORE_MISS);
    assert_int_equal(conf_lease_lookup(&cb, &rb, "one", NULL, CONF_LEASE), STORE_FILLING);
    struct store_entry *e = conf_entry(200, "text/plain", "once", 4);
    assert_int_equal(conf_fill_req(&ca, &ra, e, 60000), 0);
    store_entry_release(e);
    assert_int_equal(conf_lease_lookup(&cb, &rb, "one", NULL, CONF_LEASE), STORE_HIT);
    assert_memory_equal(rb.a.entry->body, "once", 4);
    store_entry_release(rb.a.entry);
    a->ops->destroy(a);
    b->ops->destroy(b);

    char url[64], lurl[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/1", R.port);
    snprintf(lurl, sizeof(lurl), "redis://127.0.0.1:%d/2", R.port);
    struct store_redis_config cfg = {.url = url, .limits_url = lurl, .deadline_ms = 1000};
    char err[128];
    struct store *s = store_redis_new(R.base, &cfg, err, sizeof(err));
    struct conf c = {.h = &h, .s = s};
    struct limiter_rule one = conf_rule(LIMITER_FIXED_WINDOW, 1, HOUR);
    struct conf_req r = {0};
    assert_non_null(s);
    assert_true(conf_limit(&c, one, "spent", 1).allowed);
    conf_add_limit(&r, one, "spent", 5, 1);
    r.key = "split";
    r.keylen = 5;
    r.lease_ms = CONF_LEASE;
    conf_admit(&c, &r);
    assert_false(r.a.allowed);
    assert_int_equal(conf_lease_lookup(&c, &r, "split", NULL, CONF_LEASE), STORE_MISS);
    assert_int_equal(conf_lease_lookup(&c, &r, "split", NULL, CONF_LEASE), STORE_FILLING);
    s->ops->destroy(s);
    check_ttls();
}

/* ---- removal by key and pattern, stale keep ---------------------------------------------- */

struct count {
    bool done;
    int calls;
    int status;
    uint64_t count;
    uint64_t at_ms;
};

static void
count_done(void *arg, int status, uint64_t n)
{
    struct count *c = arg;

    c->calls++;
    c->done = true;
    c->status = status;
    c->count = n;
    c->at_ms = now_ms();
}

static uint64_t
dbsize(void)
{
    redisReply *r = cmd("DBSIZE");
    uint64_t n;

    assert_non_null(r);
    n = (uint64_t)r->integer;
    freeReplyObject(r);
    return n;
}

static long long
pttl(const char *key, size_t len)
{
    redisReply *r = cmd("PTTL %b", key, len);
    long long v;

    assert_non_null(r);
    v = r->integer;
    freeReplyObject(r);
    return v;
}

/* Fills n entries "pat:NNNN" through s, pipelined. */
static void
fill_many(struct store *s, int n)
{
    struct store_harness h = redis_harness;
    struct conf c = {.h = &h, .s = s};

    for (int i = 0; i < n; i++) {
        char k[32];
        snprintf(k, sizeof(k), "pat:%04d", i);
        assert_int_equal(conf_put(&c, k, NULL, "v", 60000), 0);
    }
}

/* A pattern run goes in several SCAN batches; every entry key, response and variants set goes. */
static void
test_pattern_batches(void **state)
{
    struct store *s = open_fresh(1000);
    struct store_harness h = redis_harness;
    struct conf c = {.h = &h, .s = s};
    struct store_redis_stats st0, st1;
    struct count n = {0};

    fill_many(s, 5000);
    assert_int_equal(conf_put(&c, "pat:0001" CONF_SEP "gzip", NULL, "g", 60000), 0);
    assert_int_equal(dbsize(), 2 * 5001 + 1);
    store_redis_stats(s, &st0);
    store_invalidate_pattern(s, "pat:*", 5, count_done, &n);
    assert_true(loop_until(&n.done, 10000));
    loop_for(5);
    store_redis_stats(s, &st1);
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.status, 0);
    assert_int_equal(n.count, 5001);
    assert_int_equal(dbsize(), 0);
    /* 10002 keys, 500 a SCAN: at least 20 of them, each followed by two UNLINKs at most. */
    print_message("pattern run over 10002 keys: %llu commands\n",
                  (unsigned long long)(st1.commands - st0.commands));
    assert_true(st1.commands - st0.commands >= 20);
    /* A run that finds nothing completes too. */
    n = (struct count){0};
    store_invalidate_pattern(s, "pat:*", 5, count_done, &n);
    assert_true(loop_until(&n.done, 10000));
    assert_int_equal(n.status, 0);
    assert_int_equal(n.count, 0);
    s->ops->destroy(s);
}

/* A pattern run, and a delete, while Redis does not answer: an error, once, at the deadline. */
static void
test_pattern_stopped(void **state)
{
    const uint64_t D = 50;
    struct store *s = open_fresh(D);
    struct count n = {0}, d = {0};
    const char *key = "pat:0001";
    size_t keylen = 8;

    fill_many(s, 3000);
    kill(R.pid, SIGSTOP);
    uint64_t t0 = now_ms();
    store_invalidate_pattern(s, "pat:1*", 6, count_done, &n);
    store_delete_keys(s, &key, &keylen, 1, count_done, &d);
    assert_true(loop_until(&n.done, 2000));
    assert_true(loop_until(&d.done, 2000));
    loop_for(200);
    print_message("pattern run while stopped: failed after %llu ms\n",
                  (unsigned long long)(n.at_ms - t0));
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.status, STORE_UNAVAILABLE);
    assert_true(n.at_ms - t0 <= D + 15);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, STORE_UNAVAILABLE);
    kill(R.pid, SIGCONT);

    /* Stopped in the middle of a run: the SCAN or UNLINK then waiting fails it. */
    bool ok = false;
    for (int i = 0; i < 100 && !ok; i++) {
        struct conf_req r;
        struct store_harness h = redis_harness;
        struct conf c = {.h = &h, .s = s};
        memset(&r, 0, sizeof(r));
        r.key = "x";
        r.keylen = 1;
        struct op o = {0};
        r.a = (struct store_admit){.cache_key = "x", .cache_keylen = 1, .results = r.results};
        store_admit_and_lookup(c.s, &r.a, op_done, &o);
        loop_until(&o.done, 1000);
        ok = o.status == 0;
        if (!ok)
            loop_for(20);
    }
    assert_true(ok);
    struct store_redis_stats st0, st;
    n = (struct count){0};
    store_redis_stats(s, &st0);
    store_invalidate_pattern(s, "pat:*", 5, count_done, &n);
    do {
        event_base_loop(R.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        store_redis_stats(s, &st);
    } while (!n.done && st.commands - st0.commands < 4);
    assert_false(n.done);
    kill(R.pid, SIGSTOP);
    t0 = now_ms();
    assert_true(loop_until(&n.done, 2000));
    loop_for(200);
    kill(R.pid, SIGCONT);
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.status, STORE_UNAVAILABLE);
    assert_true(n.at_ms - t0 <= D + 15);
    s->ops->destroy(s);
}

/* Stale keep: the entry's keys live ttl + stale_ms, its tags and variants set at least as long. */
static void
test_stale_keep_ttls(void **state)
{
    struct store *s = open_fresh(1000);
    struct store_harness h = redis_harness;
    struct conf c = {.h = &h, .s = s};
    const char *tags[] = {"keep:1", NULL};
    static const char sec[] = "keep:page:1" CONF_SEP "gzip";
    struct conf_req r;

    conf_lookup(&c, &r, sec, tags);
    struct store_entry *e = conf_entry(200, "text/plain", "v", 1);
    e->stale_ms = 30000;
    assert_int_equal(conf_fill_req(&c, &r, e, 60000), 0);
    store_entry_release(e);
    /* The secondary's keys share its primary's hash tag. */
    static const char ck[] = "sl:{1}:c:keep:page:1" CONF_SEP "gzip";
    static const char rk[] = "sl:{1}:r:keep:page:1" CONF_SEP "gzip";
    static const char vk[] = "sl:{1}:v:keep:page:1";
    static const char tk[] = "sl:{1}:t:keep:1";
    long long tc = pttl(ck, sizeof(ck) - 1), tr = pttl(rk, sizeof(rk) - 1);
    long long tv = pttl(vk, sizeof(vk) - 1), tt = pttl(tk, sizeof(tk) - 1);
    print_message("ttl 60 s, stale 30 s: entry %lld ms, response %lld, variants %lld, tag %lld\n",
                  tc, tr, tv, tt);
    assert_true(tc > 85000 && tc <= 90000);
    assert_true(tr > 85000 && tr <= 90000);
    assert_true(tv > 85000);
    assert_true(tt > 85000);
    redisReply *m = cmd("SMEMBERS %b", vk, sizeof(vk) - 1);
    assert_non_null(m);
    assert_int_equal(m->elements, 1);
    assert_int_equal(m->element[0]->len, sizeof(sec) - 1);
    assert_memory_equal(m->element[0]->str, sec, sizeof(sec) - 1);
    freeReplyObject(m);
    check_ttls();
    /* Removing the primary removes the secondary and the variants set. */
    const char *p = "keep:page:1";
    size_t plen = strlen(p);
    struct count n = {0};
    store_delete_keys(s, &p, &plen, 1, count_done, &n);
    assert_true(loop_until(&n.done, 10000));
    assert_int_equal(n.status, 0);
    assert_int_equal(n.count, 1);
    assert_int_equal(pttl(ck, sizeof(ck) - 1), -2);
    assert_int_equal(pttl(rk, sizeof(rk) - 1), -2);
    assert_int_equal(pttl(vk, sizeof(vk) - 1), -2);
    s->ops->destroy(s);
    check_ttls();
}

/* ---- failover ----------------------------------------------------------------------------- */

/* A primary that answers with `status` and counts its calls. */
struct fake {
    struct store base;
    int status;
    int admits, fills, invalidates, deletes, patterns, lists;
    size_t tags_invalidated;
};

static void
fake_admit(struct store *s, struct store_admit *a, store_done_fn *done, void *arg)
{
    struct fake *f = (struct fake *)s;

    f->admits++;
    if (f->status == 0) {
        a->allowed = true;
        a->now_ms = 1;
        a->state = STORE_MISS;
        a->entry = NULL;
        for (size_t i = 0; i < a->nlimits; i++)
            a->results[i] = (struct limiter_result){.allowed = true, .limit = 1000};
    }
    done(arg, f->status);
}

static void
fake_fill(struct store *s, const char *key, size_t keylen, struct store_entry *entry,
          uint64_t ttl_ms, const char *const *tags, const size_t *taglens, const uint64_t *tag_gens,
          size_t ntags, store_done_fn *done, void *arg)
{
    ((struct fake *)s)->fills++;
    done(arg, ((struct fake *)s)->status);
}

static void
fake_invalidate(struct store *s, const char *const *tags, const size_t *taglens, size_t ntags,
                store_done_fn *done, void *arg)
{
    struct fake *f = (struct fake *)s;

    f->invalidates++;
    if (f->status == 0)
        f->tags_invalidated += ntags;
    done(arg, f->status);
}

static void
fake_delete_keys(struct store *s, const char *const *keys, const size_t *lens, size_t n,
                 store_count_fn *done, void *arg)
{
    struct fake *f = (struct fake *)s;

    f->deletes++;
    done(arg, f->status, f->status == 0 ? n : 0);
}

static void
fake_invalidate_pattern(struct store *s, const char *glob, size_t globlen, store_count_fn *done,
                        void *arg)
{
    struct fake *f = (struct fake *)s;

    f->patterns++;
    done(arg, f->status, f->status == 0 ? 7 : 0);
}

static void
fake_list(struct store *s, const char *glob, size_t globlen, size_t limit, store_list_fn *done,
          void *arg)
{
    struct fake *f = (struct fake *)s;
    struct store_listing l = {.store = "fake"};

    f->lists++;
    if (f->status == 0)
        store_listing_add(&l, "fake:1", 6);
    done(arg, f->status, f->status == 0 ? &l : NULL);
    store_listing_free(&l);
}

static void
fake_destroy(struct store *s)
{
}

static const struct store_ops fake_ops = {
    .name = "fake",
    .admit_and_lookup = fake_admit,
    .fill = fake_fill,
    .invalidate = fake_invalidate,
    .destroy = fake_destroy,
    .delete_keys = fake_delete_keys,
    .invalidate_pattern = fake_invalidate_pattern,
    .list = fake_list,
};

/*
 * Removal by key and pattern: to the primary while it answers (its failures count toward
 * the breaker); while degraded, applied to the fallback and reported failed, not kept.
 */
static void
test_failover_removal(void **state)
{
    struct fake fk = {.base = {.ops = &fake_ops}, .status = 0};
    struct store_memory *m = store_memory_new(1 << 20, 1 << 20);
    struct store_failover_config cfg = {.failures = 2, .cooldown_ms = 100, .name = "test"};
    struct store *s = store_failover_new(&fk.base, store_memory_handle(m), &cfg);
    struct store *local = store_memory_handle(m);
    struct store_harness hh = redis_harness;
    struct conf lc = {.h = &hh, .s = local};
    const char *keys[] = {"a", "b"};
    size_t lens[] = {1, 1};
    struct limiter_result res;
    struct store_admit a;
    struct store_health h;
    struct count n = {0};

    store_delete_keys(s, keys, lens, 2, count_done, &n);
    assert_true(n.done);
    assert_int_equal(n.status, 0);
    assert_int_equal(n.count, 2);
    n = (struct count){0};
    store_invalidate_pattern(s, "a*", 2, count_done, &n);
    assert_int_equal(n.status, 0);
    assert_int_equal(n.count, 7);
    assert_int_equal(fk.deletes, 1);
    assert_int_equal(fk.patterns, 1);
    /* Two removals the primary does not answer open the breaker. */
    fk.status = STORE_UNAVAILABLE;
    for (int i = 0; i < 2; i++) {
        n = (struct count){0};
        store_delete_keys(s, keys, lens, 2, count_done, &n);
        assert_int_equal(n.calls, 1);
        assert_int_equal(n.status, STORE_UNAVAILABLE);
    }
    store_health(s, &h);
    assert_true(h.degraded);
    /* Degraded: the fallback's entries go, the answer is a failure, the primary is not called. */
    assert_int_equal(conf_put(&lc, "a1", NULL, "x", 60000), 0);
    assert_int_equal(conf_put(&lc, "b", NULL, "x", 60000), 0);
    n = (struct count){0};
    store_invalidate_pattern(s, "a*", 2, count_done, &n);
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.status, -1);
    n = (struct count){0};
    store_delete_keys(s, keys, lens, 2, count_done, &n);
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.status, -1);
    assert_int_equal(fk.deletes, 3);
    assert_int_equal(fk.patterns, 1);
    assert_false(conf_hit(&lc, "a1", NULL, NULL));
    assert_false(conf_hit(&lc, "b", NULL, NULL));
    /* Recovered: nothing is sent again; removals go to the primary once more. */
    fk.status = 0;
    loop_for(120);
    assert_int_equal(admit1(s, "fr", 100, false, &res, &a), 0);
    assert_false(a.bypassed);
    assert_int_equal(fk.deletes, 3);
    assert_int_equal(fk.patterns, 1);
    n = (struct count){0};
    store_invalidate_pattern(s, "a*", 2, count_done, &n);
    assert_int_equal(n.status, 0);
    assert_int_equal(fk.patterns, 2);
    local->ops->destroy(local);
    s->ops->destroy(s);
    store_memory_free(m);
}

static void
test_failover_breaker(void **state)
{
    struct fake fk = {.base = {.ops = &fake_ops}, .status = STORE_UNAVAILABLE};
    struct store_memory *m = store_memory_new(1 << 20, 1 << 20);
    struct store_failover_config cfg = {.failures = 3, .cooldown_ms = 100, .name = "test"};
    struct store *s = store_failover_new(&fk.base, store_memory_handle(m), &cfg);
    struct limiter_result res;
    struct store_admit a;
    struct store_health h;

    store_health(s, &h);
    assert_false(h.degraded);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(admit1(s, "fo", 100, false, &res, &a), 0);
        assert_true(a.bypassed);
        assert_true(a.allowed);
        assert_int_equal(fk.admits, i + 1);
    }
    store_health(s, &h);
    assert_true(h.degraded);
    assert_string_equal(h.state, "degraded");
    assert_int_equal(h.transitions, 1);
    /* Open: the primary is not called. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(admit1(s, "fo", 100, false, &res, &a), 0);
    assert_int_equal(fk.admits, 3);
    assert_int_equal(res.remaining, 100 - 8); /* counted in-process */
    /* Fills are dropped, invalidations kept. */
    const char *tag = "crm:1";
    size_t taglen = 5;
    struct op o = {0};
    store_invalidate(s, &tag, &taglen, 1, op_done, &o);
    assert_true(o.done);
    assert_int_equal(fk.invalidates, 0);
    /* After the cooldown one request probes; it fails: open again. */
    loop_for(120);
    assert_int_equal(admit1(s, "fo", 100, false, &res, &a), 0);
    assert_int_equal(fk.admits, 4);
    assert_true(a.bypassed);
    assert_int_equal(admit1(s, "fo", 100, false, &res, &a), 0);
    assert_int_equal(fk.admits, 4);
    /* The primary is back: the next probe closes the breaker; the kept invalidation is sent. */
    fk.status = 0;
    loop_for(120);
    assert_int_equal(admit1(s, "fo", 100, false, &res, &a), 0);
    assert_int_equal(fk.admits, 5);
    assert_false(a.bypassed);
    assert_int_equal(fk.tags_invalidated, 1);
    store_health(s, &h);
    assert_false(h.degraded);
    assert_int_equal(admit1(s, "fo", 100, false, &res, &a), 0);
    assert_int_equal(fk.admits, 6);
    /* A single failure does not open it. */
    fk.status = -1;
    assert_int_equal(admit1(s, "fo", 100, false, &res, &a), 0);
    assert_true(a.bypassed);
    fk.status = 0;
    assert_int_equal(admit1(s, "fo", 100, false, &res, &a), 0);
    assert_false(a.bypassed);
    assert_int_equal(fk.admits, 8);
    s->ops->destroy(s);
    store_memory_free(m);
}

static void
test_failover_limits_in_process(void **state)
{
    /* A Redis nobody listens on: limits fall back to the memory store, cache bypassed. */
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", free_port());
    struct store_redis_config rc = {.url = url, .deadline_ms = 50};
    char err[128];
    struct store *r = store_redis_new(R.base, &rc, err, sizeof(err));
    struct store_memory *m = store_memory_new(1 << 20, 1 << 20);
    struct store_failover_config cfg = {.failures = 2, .cooldown_ms = 50, .name = "test"};
    struct store *s = store_failover_new(r, store_memory_handle(m), &cfg);
    struct limiter_result res;
    struct store_admit a;

    assert_non_null(r);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(admit1(s, "down", 3, false, &res, &a), 0);
        assert_true(a.bypassed);
        assert_false(a.refused_closed);
        assert_int_equal(a.allowed, i < 3);
    }
    /* A fail-closed limit cannot be checked: refused. */
    assert_int_equal(admit1(s, "strict", 3, true, &res, &a), 0);
    assert_true(a.refused_closed);
    assert_false(a.allowed);
    /* A cached lookup is bypassed, and the fill is not attempted. */
    struct store_harness hh = redis_harness;
    struct conf c = {.h = &hh, .s = s};
    struct conf_req q;
    conf_lookup(&c, &q, "page", (const char *[]){"t", NULL});
    assert_true(q.a.bypassed);
    assert_int_equal(q.a.state, STORE_MISS);
    s->ops->destroy(s);
    store_memory_free(m);
}

/* With the primary down, a fallback with no room for a new limit state refuses the request. */
static void
test_failover_fallback_full_refuses(void **state)
{
    struct fake fk = {.base = {.ops = &fake_ops}, .status = STORE_UNAVAILABLE};
    struct store_memory *m = store_memory_new(1 << 20, 8192);
    struct store_failover_config cfg = {.failures = 1, .cooldown_ms = 60000, .name = "test"};
    struct store *s = store_failover_new(&fk.base, store_memory_handle(m), &cfg);
    struct limiter_result res;
    struct store_admit a;
    char key[32];
    int i;

    for (i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "caller:%d", i);
        assert_int_equal(admit1(s, key, 5, false, &res, &a), 0);
        assert_true(a.bypassed);
        if (a.refused_full)
            break;
        assert_true(a.allowed);
    }
    assert_true(i > 10 && i < 1000);
    assert_false(a.allowed);
    assert_false(a.refused_closed);
    /* A caller with a state is still counted. */
    assert_int_equal(admit1(s, "caller:0", 5, false, &res, &a), 0);
    assert_true(a.allowed);
    assert_false(a.refused_full);
    s->ops->destroy(s);
    store_memory_free(m);
}

static void
test_failover_recovers(void **state)
{
    struct store *r = open_fresh(50);
    struct store_memory *m = store_memory_new(1 << 20, 1 << 20);
    struct store_failover_config cfg = {.failures = 2, .cooldown_ms = 50, .name = "test"};
    struct store *s = store_failover_new(r, store_memory_handle(m), &cfg);
    struct limiter_result res;
    struct store_admit a;
    struct store_health h;

    assert_int_equal(admit1(s, "rec", 100, false, &res, &a), 0);
    assert_false(a.bypassed);
    server_kill(SIGKILL);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(admit1(s, "rec", 100, false, &res, &a), 0);
        assert_true(a.bypassed);
    }
    store_health(s, &h);
    assert_true(h.degraded);
    assert_int_equal(server_start(), 0);
    bool back = false;
    for (int i = 0; i < 200 && !back; i++) {
        assert_int_equal(admit1(s, "rec", 100, false, &res, &a), 0);
        back = !a.bypassed;
        if (!back)
            loop_for(20);
    }
    assert_true(back);
    store_health(s, &h);
    assert_false(h.degraded);
    s->ops->destroy(s);
    store_memory_free(m);
}

/* The fallback counts what Redis admits: it goes on from this instance's count when Redis goes
 * away, and refuses past the limit when a Redis that restarted empty would admit again. */
static void
test_failover_shadow_counts(void **state)
{
    struct store *r = open_fresh(50);
    struct store_memory *m = store_memory_new(1 << 20, 1 << 20);
    struct store_failover_config cfg = {.failures = 1, .cooldown_ms = 50, .name = "test"};
    struct store *s = store_failover_new(r, store_memory_handle(m), &cfg);
    struct limiter_result res;
    struct store_admit a;
    int admitted = 0;

    for (int i = 0; i < 3; i++) {
        assert_int_equal(admit1(s, "shadow", 5, false, &res, &a), 0);
        assert_false(a.bypassed);
        admitted += a.allowed;
    }
    assert_int_equal(admitted, 3);
    server_kill(SIGKILL);
    admitted = 0;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(admit1(s, "shadow", 5, false, &res, &a), 0);
        assert_true(a.bypassed);
        admitted += a.allowed;
    }
    assert_int_equal(admitted, 2);       /* 5 in all, not 3 + 5 */
    assert_int_equal(server_start(), 0); /* an empty Redis */
    bool back = false;
    for (int i = 0; i < 200 && !back; i++) {
        assert_int_equal(admit1(s, "shadow", 5, false, &res, &a), 0);
        back = !a.bypassed;
        if (!back)
            loop_for(20);
    }
    assert_true(back);
    assert_false(a.allowed); /* Redis counted 1 of 5, this instance is at 5 of 5 */
    assert_int_equal(res.remaining, 0);
    s->ops->destroy(s);
    store_memory_free(m);
}

/*
 * Shadow-mode limits through the failover store: one Redis refused (the budget spent by
 * another instance) is not charged to this instance's shadow count either, so while Redis is
 * away this instance still has its whole budget; a fail-closed shadow limit is checked
 * in-process rather than refuse.
 */
static void
test_failover_shadow_mode(void **state)
{
    struct store *r = open_fresh(50);
    struct store *other = redis_open_cfg(50);
    struct store_memory *m = store_memory_new(1 << 20, 1 << 20);
    struct store_failover_config cfg = {.failures = 1, .cooldown_ms = 50, .name = "test"};
    struct store *s = store_failover_new(r, store_memory_handle(m), &cfg);
    struct limiter_result res;
    struct store_admit a;
    int admitted = 0;

    assert_non_null(other);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(admit1(other, "sm", 3, false, &res, NULL), 0);
        assert_true(res.allowed);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(admit_mode(s, "sm", 3, false, true, &res, &a), 0);
        assert_false(a.bypassed);
        assert_true(a.allowed);    /* a shadow limit refuses nothing */
        assert_false(res.allowed); /* but says it would have */
    }
    server_kill(SIGKILL);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(admit1(s, "sm", 3, false, &res, &a), 0);
        assert_true(a.bypassed);
        admitted += a.allowed;
    }
    assert_int_equal(admitted, 3);
    assert_int_equal(admit_mode(s, "fc", 3, true, true, &res, &a), 0);
    assert_true(a.bypassed);
    assert_false(a.refused_closed);
    assert_true(a.allowed);
    assert_int_equal(res.remaining, 2); /* counted in-process */
    assert_int_equal(server_start(), 0);
    other->ops->destroy(other);
    s->ops->destroy(s);
    store_memory_free(m);
}

/* A stored response written before the ages were part of its trailer still reads, with
 * zero ages; one written now reads back with them. */
static void
test_codec_reads_values_without_ages(void **state)
{
    (void)state;
    unsigned char v[64];
    size_t n = 0;
    memcpy(v, "abc", 3);
    n = 3;
    memset(v + n, 0, 12); /* content type, headers and etag lengths */
    n += 12;
    uint64_t stale = 7000;
    for (int i = 0; i < 8; i++)
        v[n++] = (unsigned char)(stale >> (8 * i));
    v[n++] = 200 & 0xff;
    v[n++] = 0;
    v[n++] = STORE_ENTRY_PASS; /* flags */
    v[n++] = 0;                /* nothing optional, and no ages */
    double stored = 1000.0, expires = 2000.0;
    memcpy(v + n, &stored, 8);
    memcpy(v + n + 8, &expires, 8);
    n += 16;
    memset(v + n, 'T', TOKEN_LEN);
    n += TOKEN_LEN;
    char *copy = malloc(n);
    memcpy(copy, v, n);
    struct store_entry *e = codec_entry_from_value(copy, n);
    assert_non_null(e);
    assert_int_equal(e->body_len, 3);
    assert_memory_equal(e->body, "abc", 3);
    assert_int_equal(e->stale_ms, 7000);
    assert_int_equal(e->flags, STORE_ENTRY_PASS);
    assert_int_equal(e->status, 200);
    assert_int_equal(e->stored_ms, 1000);
    assert_int_equal(e->expires_ms, 2000);
    assert_int_equal(e->age_ms + e->swr_ms + e->sie_ms, 0);
    store_entry_release(e);

    /* Today's layout round-trips the ages. */
    e = store_entry_new(203, NULL, strdup("xy"), 2);
    e->age_ms = 12000;
    e->swr_ms = 34000;
    e->sie_ms = 56000;
    struct sbuf b = {0};
    codec_entry_head(&b, e);
    assert_int_equal(b.len, codec_entry_head_len(e));
    sbuf_add(&b, &stored, 8);
    sbuf_add(&b, &expires, 8);
    sbuf_add(&b, "TTTTTTTT", TOKEN_LEN);
    store_entry_release(e);
    e = codec_entry_from_value(b.p, b.len);
    assert_non_null(e);
    assert_int_equal(e->status, 203);
    assert_memory_equal(e->body, "xy", 2);
    assert_int_equal(e->body_len, 2);
    assert_int_equal(e->age_ms, 12000);
    assert_int_equal(e->swr_ms, 34000);
    assert_int_equal(e->sie_ms, 56000);
    store_entry_release(e);
}

/* The layout with coded forms (bit 16): they follow the ETag, their lengths before the ages;
 * the value reads back with them, and its trailer, read without the body, still gives the
 * identity body's length (a tail too short to hold the lengths is refused, not misread). */
static void
test_codec_keeps_coded_forms_after_the_etag(void **state)
{
    (void)state;
    struct store_entry *e = store_entry_new(200, strdup("text/plain"), strdup("identity!"), 9);
    struct store_coded *coded = calloc(1, sizeof(*coded));
    coded->body[CODEC_ZSTD] = "zz";
    coded->len[CODEC_ZSTD] = 2;
    coded->body[CODEC_GZIP] = "ggg";
    coded->len[CODEC_GZIP] = 3;
    e->coded = coded;
    e->etag = strdup("\"t\"");
    e->age_ms = 5000;
    struct sbuf b = {0};
    codec_entry_head(&b, e);
    assert_int_equal(b.len, codec_entry_head_len(e));
    double stored = 1000.0, expires = 2000.0;
    sbuf_add(&b, &stored, 8);
    sbuf_add(&b, &expires, 8);
    sbuf_add(&b, "TTTTTTTT", TOKEN_LEN);
    store_entry_release(e);

    struct codec_meta meta;
    size_t tail = TRAILER_LEN + CODED_LEN;
    assert_int_equal(codec_meta_from_tail(b.p + b.len - tail, tail, b.len, &meta), 0);
    assert_int_equal(meta.body_len, 9);
    assert_int_equal(meta.bytes, 9 + 10 + 3 + 2 + 3);
    assert_int_equal(meta.age_ms, 5000);
    assert_int_equal(codec_meta_from_tail(b.p + b.len - TRAILER_LEN, TRAILER_LEN, b.len, &meta),
                     -1);

    e = codec_entry_from_value(b.p, b.len);
    assert_non_null(e);
    assert_int_equal(e->body_len, 9);
    assert_memory_equal(e->body, "identity!", 9);
    assert_string_equal(e->content_type, "text/plain");
    assert_string_equal(e->etag, "\"t\"");
    assert_int_equal(e->age_ms, 5000);
    assert_int_equal(store_entry_codings(e), CODEC_BIT(CODEC_ZSTD) | CODEC_BIT(CODEC_GZIP));
    assert_memory_equal(e->coded->body[CODEC_ZSTD], "zz", 2);
    assert_memory_equal(e->coded->body[CODEC_GZIP], "ggg", 3);
    assert_null(e->coded->body[CODEC_BR]);
    store_entry_release(e);
}

/* ---- listing ------------------------------------------------------------------------------ */

/* A store whose listings make at most `rounds` SCAN rounds. */
static struct store *
open_list_rounds(unsigned rounds)
{
    struct store_redis_config cfg = {.url = R.url, .deadline_ms = 1000, .list_rounds = rounds};
    char err[256];
    struct store *s = store_redis_new(R.base, &cfg, err, sizeof(err));

    assert_non_null(s);
    return s;
}

/* A listing's SCAN rounds are bounded (truncated when they run out); a walk within them lists
 * every match, and never reads a body (a 1 MiB one costs nothing). */
static void
test_list_rounds(void **state)
{
    struct store *s = open_fresh(1000);
    struct store_harness h = redis_harness;
    struct conf c = {.h = &h, .s = s};
    struct store_redis_stats st0, st1;
    struct store_listing l;
    enum { N = 3000 };

    fill_many(s, N);
    size_t big = 1 << 20;
    char *body = malloc(big);
    assert_non_null(body);
    memset(body, 'b', big);
    struct store_entry *e = store_entry_new(200, strdup("text/plain"), body, big);
    assert_int_equal(conf_put_entry(&c, "pat:big", 7, e, 60000), 0);
    store_entry_release(e);
    s->ops->destroy(s);

    /* Few keys match: 3 rounds of SCAN, about 3 x 500 keys of 6002, then it stops. */
    s = open_list_rounds(3);
    c.s = s;
    store_redis_stats(s, &st0);
    assert_int_equal(conf_list(&c, "pat:big*", 1000, &l), 0);
    store_redis_stats(s, &st1);
    print_message("3 rounds: %llu keys scanned, %llu commands\n", (unsigned long long)l.scanned,
                  (unsigned long long)(st1.commands - st0.commands));
    assert_true(l.truncated);
    assert_true(l.scanned <= 3 * 600);
    assert_true(st1.commands - st0.commands <= 3 + 1);
    store_listing_free(&l);
    s->ops->destroy(s);

    /* With the default rounds: the whole keyspace, every match, the large body's size. */
    s = open_list_rounds(0);
    c.s = s;
    store_redis_stats(s, &st0);
    uint64_t t0 = now_ms();
    assert_int_equal(conf_list(&c, "pat:*", N + 10, &l), 0);
    uint64_t took = now_ms() - t0;
    store_redis_stats(s, &st1);
    print_message("all of 6002 keys: %llu scanned, %zu listed, %llu commands, %llu ms\n",
                  (unsigned long long)l.scanned, l.n,
                  (unsigned long long)(st1.commands - st0.commands), (unsigned long long)took);
    assert_false(l.truncated);
    assert_int_equal(l.n, N + 1);
    assert_true(l.scanned >= N + 1);
    const struct store_list_entry *b = NULL;
    for (size_t i = 0; i < l.n; i++)
        if (strcmp(l.entries[i].key, "pat:big") == 0)
            b = &l.entries[i];
    assert_non_null(b);
    assert_int_equal(b->bytes, big + strlen("text/plain"));
    store_listing_free(&l);
    /* The limit: the walk ends early. */
    assert_int_equal(conf_list(&c, "pat:*", 100, &l), 0);
    assert_int_equal(l.n, 100);
    assert_true(l.truncated);
    store_listing_free(&l);
    s->ops->destroy(s);
}

/* A listing while Redis does not answer: an error, once, at the deadline. */
static void
test_list_stopped(void **state)
{
    const uint64_t D = 50;
    struct store *s = open_fresh(D);
    struct conf_list_op op = {0};

    fill_many(s, 100);
    kill(R.pid, SIGSTOP);
    uint64_t t0 = now_ms();
    store_list(s, "pat:*", 5, 10, conf_list_done, &op);
    assert_true(loop_until(&op.done, 2000));
    uint64_t took = now_ms() - t0;
    loop_for(100);
    kill(R.pid, SIGCONT);
    assert_int_equal(op.calls, 1);
    assert_int_equal(op.status, STORE_UNAVAILABLE);
    assert_true(took <= D + 15);
    s->ops->destroy(s);
}

/* The failover store lists the primary while it answers, else the fallback, and says which. */
static void
test_failover_list(void **state)
{
    struct fake fk = {.base = {.ops = &fake_ops}, .status = 0};
    struct store_memory *m = store_memory_new(1 << 20, 1 << 20);
    struct store_failover_config cfg = {.failures = 2, .cooldown_ms = 100, .name = "test"};
    struct store *s = store_failover_new(&fk.base, store_memory_handle(m), &cfg);
    struct store *local = store_memory_handle(m);
    struct store_harness hh = redis_harness;
    struct conf lc = {.h = &hh, .s = local}, fc = {.h = &hh, .s = s};
    struct store_listing l;
    struct store_health h;
    struct limiter_result res;
    struct store_admit a;

    assert_int_equal(conf_put(&lc, "local:1", NULL, "x", 60000), 0);
    assert_int_equal(conf_list(&fc, "*", 10, &l), 0);
    assert_string_equal(l.store, "fake");
    assert_int_equal(l.n, 1);
    assert_string_equal(l.entries[0].key, "fake:1");
    store_listing_free(&l);
    /* The primary does not answer: the fallback lists its own, and that counts as a failure. */
    fk.status = STORE_UNAVAILABLE;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(conf_list(&fc, "*", 10, &l), 0);
        assert_string_equal(l.store, "memory");
        assert_int_equal(l.n, 1);
        assert_string_equal(l.entries[0].key, "local:1");
        store_listing_free(&l);
    }
    assert_int_equal(fk.lists, 3);
    store_health(s, &h);
    assert_true(h.degraded);
    /* Degraded: the primary is not asked. */
    assert_int_equal(conf_list(&fc, "*", 10, &l), 0);
    assert_string_equal(l.store, "memory");
    store_listing_free(&l);
    assert_int_equal(fk.lists, 3);
    /* Recovered (a request probed it): the primary again. An error reply is its answer. */
    fk.status = 0;
    loop_for(120);
    assert_int_equal(admit1(s, "fl", 100, false, &res, &a), 0);
    assert_false(a.bypassed);
    assert_int_equal(conf_list(&fc, "*", 10, &l), 0);
    assert_string_equal(l.store, "fake");
    store_listing_free(&l);
    fk.status = -1;
    assert_int_equal(conf_list(&fc, "*", 10, &l), -1);
    assert_int_equal(fk.lists, 5);
    store_health(s, &h);
    assert_false(h.degraded);
    local->ops->destroy(local);
    s->ops->destroy(s);
    store_memory_free(m);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_noscript_retried),
        cmocka_unit_test_teardown(test_deadline_once, cont_server),
        cmocka_unit_test(test_pipelined_batch),
        cmocka_unit_test(test_limits_match_limiter),
        cmocka_unit_test(test_batched_lookups),
        cmocka_unit_test(test_local_copies),
        cmocka_unit_test(test_lease_across_instances),
        cmocka_unit_test(test_pattern_batches),
        cmocka_unit_test_teardown(test_pattern_stopped, cont_server),
        cmocka_unit_test(test_stale_keep_ttls),
        cmocka_unit_test(test_set_after_invalidate_random),
        cmocka_unit_test(test_db_and_password),
        cmocka_unit_test(test_separate_limits_redis),
        cmocka_unit_test(test_reconnect_after_restart),
        cmocka_unit_test(test_failover_breaker),
        cmocka_unit_test(test_failover_removal),
        cmocka_unit_test(test_failover_limits_in_process),
        cmocka_unit_test(test_failover_fallback_full_refuses),
        cmocka_unit_test(test_failover_recovers),
        cmocka_unit_test(test_failover_shadow_counts),
        cmocka_unit_test(test_failover_shadow_mode),
        cmocka_unit_test(test_codec_reads_values_without_ages),
        cmocka_unit_test(test_codec_keeps_coded_forms_after_the_etag),
        cmocka_unit_test(test_list_rounds),
        cmocka_unit_test_teardown(test_list_stopped, cont_server),
        cmocka_unit_test(test_failover_list),
    };
    int failed;

    signal(SIGPIPE, SIG_IGN);
    if (system("command -v redis-server >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test_store_redis: redis-server is not installed (scripts/deps.sh test)\n");
        return 77;
    }
    R.port = free_port();
    snprintf(R.url, sizeof(R.url), "redis://127.0.0.1:%d", R.port);
    R.base = event_base_new();
    if (R.port <= 0 || server_start() != 0) {
        fprintf(stderr, "test_store_redis: cannot start redis-server\n");
        server_kill(SIGKILL);
        return 1;
    }
    failed = store_conformance_run(&redis_harness);
    failed += store_conformance_list_run(&redis_harness);
    failed += cmocka_run_group_tests_name("store_redis", tests, NULL, NULL);
    server_kill(SIGTERM);
    event_base_free(R.base);
    return failed;
}
