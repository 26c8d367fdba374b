/* test_gateway_req.c - unit tests of the request path's coalescing of fills (engine/gateway/req.c)
 * with a real policy and a stub origin: waiters share an answer, an heir takes a failed fill
 * over, Vary splits waiters, hit-for-miss and shutdown send them to the origin. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The file under test, with its static functions (h2o's t/00unit style). Its replies reach the
 * stubs of server_respond() and server_respond_problem_body() below instead of a connection. */
#include "../../engine/gateway/req.c"

#include "logwriter.h"
#include "plan.h"
#include "store_memory.h"

/* ---- stubs: the server's replies, the origin ------------------------------------------------ */

struct answer {
    const struct server_request *sr;
    int status;
    char xcache[16];
    char body[512];
};
static struct answer answers[32];
static size_t nanswers;

static struct gw_req *sent[32]; /* requests handed to the origin */
static size_t nsent;

void
server_respond(struct server_request *req, const struct server_response *resp)
{
    assert_true(nanswers < 32);
    struct answer *a = &answers[nanswers++];
    memset(a, 0, sizeof(*a));
    a->sr = req;
    a->status = resp->status;
    const char *x = resp->headers ? strstr(resp->headers, "X-Cache: ") : NULL;
    if (x)
        sscanf(x + 9, "%15[A-Z]", a->xcache);
    snprintf(a->body, sizeof(a->body), "%.*s", (int)resp->body_len, resp->body ? resp->body : "");
    if (resp->release)
        resp->release(resp->body, resp->body_len, resp->body_arg);
}

char *
server_problem_body(int status, const char *type, const char *title, const char *detail,
                    json_t *ext, size_t *len)
{
    char *body = xasprintf("{\"status\":%d,\"detail\":\"%s\"}", status, detail ? detail : "");
    *len = strlen(body);
    return body;
}

void
server_respond_problem_body(struct server_request *req, int status, const char *body, size_t len,
                            const char *extra_headers)
{
    struct server_response resp = {.status = status, .body = body, .body_len = len};
    server_respond(req, &resp);
}

static void
stub_to_origin(struct gw_req *rq)
{
    assert_true(nsent < 32);
    sent[nsent++] = rq;
}

/* ---- fixtures ------------------------------------------------------------------------------- */

static const char POLICY[] =
    "upstream 'app' { url = 'http://127.0.0.1:9' }\n"
    "endpoint 'GET /x' { upstream = 'app', cache = { ttl = '1m', key = 'x', shared = true } }\n"
    "endpoint 'GET /y' { upstream = 'app', cache = { ttl = '1m', key = 'y', shared = true } }\n"
    "endpoint 'GET /l' { body = '{}', limit = {\n"
    "  { limit = 1, window = '1m', key = 'sh', name = 'sh', mode = 'shadow' },\n"
    "  { limit = 2, window = '1m', key = 'en', name = 'en' } } }\n";

static char dir[64];
static struct policy *policy;
static struct store_memory *mem;
static struct gw_worker wk;

/* A client's request: its bytes and parsed form live until the test ends. */
struct client {
    char raw[256];
    struct server_request sr;
};
static struct client clients[32];
static size_t nclients;

static int
setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/sluice-req-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/10-main.lua", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(POLICY, f);
    fclose(f);
    char *errors = NULL;
    policy = policy_load(dir, 1, NULL, &errors);
    assert_non_null(policy);
    unlink(path);
    rmdir(dir);
    mem = store_memory_new(1 << 20, 1 << 20);
    return 0;
}

static int
teardown(void **state)
{
    policy_release(policy);
    store_memory_free(mem);
    return 0;
}

static int
reset(void **state)
{
    memset(&wk, 0, sizeof(wk));
    gw_stats_init(&wk.stats);
    wk.store = store_memory_handle(mem);
    wk.to_origin = stub_to_origin;
    nanswers = nsent = nclients = 0;
    return 0;
}

static int
check_empty(void **state)
{
    assert_int_equal(wk.inflight.count, 0); /* every fill ended */
    hmap_free(&wk.inflight);
    wk.store->ops->destroy(wk.store);
    gw_stats_free(&wk.stats);
    return 0;
}

/* A routed request for `target` with an optional header line ("X-V: 1\r\n" or ""), its cache
 * key expanded as the path's plan does. */
static struct gw_req *
request(const char *target, const char *header)
{
    struct client *c = &clients[nclients++];
    memset(c, 0, sizeof(*c));
    int n = snprintf(c->raw, sizeof(c->raw), "GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n", target,
                     header ? header : "");
    assert_true(http_parse_request(c->raw, (size_t)n, &c->sr.http) > 0);
    c->sr.ip = "127.0.0.1";
    const struct http_request *h = &c->sr.http;
    struct router_match m;
    assert_int_equal(router_match(policy->router, h->method_str.p, h->method_str.len, h->path.p,
                                  h->path.len, h->query.p, h->query.len, &m),
                     ROUTER_FOUND);
    struct gw_req *rq = gw_req_new(&wk, &c->sr, policy, &m);
    rq->admit.cache_key = gw_expand(rq, rq->ep->cache_key, &rq->admit.cache_keylen);
    assert_non_null(rq->admit.cache_key);
    return rq;
}

static struct store_entry *
answer_entry(const char *body)
{
    struct store_entry *e =
        store_entry_new(200, xstrdup("application/json"), xstrdup(body), strlen(body));
    e->stored_ms = store_now_ms();
    return e;
}

/* The leader answers from the origin (as a fill does once the store has it). */
static void
leader_answers(struct gw_req *rq, struct store_entry *e)
{
    store_entry_ref(e);
    rq->answer = e;
    gw_reply_entry(rq, e, "MISS", e->stored_ms);
}

/* The answer client number c (in the order requests were made) got, or NULL. */
static const struct answer *
answer_to(size_t c)
{
    for (size_t i = 0; i < nanswers; i++)
        if (answers[i].sr == &clients[c].sr)
            return &answers[i];
    return NULL;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void
admitted(void *arg, int status)
{
    assert_int_equal(status, 0);
    *(bool *)arg = true;
}

/* GET /l counted by the memory store; its rate-limit fields in rq->hdrs. */
static struct gw_req *
limited_request(void)
{
    struct client *c = &clients[nclients++];
    memset(c, 0, sizeof(*c));
    int n = snprintf(c->raw, sizeof(c->raw), "GET /l HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(http_parse_request(c->raw, (size_t)n, &c->sr.http) > 0);
    c->sr.ip = "127.0.0.1";
    struct router_match m;
    assert_int_equal(router_match(policy->router, "GET", 3, "/l", 2, "", 0, &m), ROUTER_FOUND);
    struct gw_req *rq = gw_req_new(&wk, &c->sr, policy, &m);
    char detail[128];
    assert_int_equal(gw_plan(rq, detail, sizeof(detail)), 0);
    assert_int_equal(rq->admit.nlimits, 2);
    bool done = false;
    store_admit_and_lookup(wk.store, &rq->admit, admitted, &done);
    assert_true(done);
    gw_add_limit_headers(rq);
    return rq;
}

/*
 * A shadow limit is counted beside an enforced one but never shows: the rate-limit fields name
 * only the enforced limit, a would-be refusal is GW_SHADOW_DENIED, and only the enforced limit
 * refuses (429 naming it alone).
 */
static void
test_shadow_limits_stay_out_of_the_answer(void **state)
{
    for (int i = 0; i < 3; i++) {
        struct gw_req *rq = limited_request();
        char *h = xasprintf("%.*s", (int)rq->hdrs_len, rq->hdrs);
        assert_null(strstr(h, "\"sh\""));
        assert_non_null(strstr(h, "RateLimit-Policy: \"en\";q=2;w=60\r\n"));
        assert_non_null(strstr(h, "X-RateLimit-Limit: 2\r\n"));
        assert_int_equal(gw_limit_decision(rq, 0), i == 0 ? GW_ALLOWED : GW_SHADOW_DENIED);
        assert_int_equal(gw_limit_decision(rq, 1), i < 2 ? GW_ALLOWED : GW_DENIED);
        assert_true(rq->limits[0].shadow);
        assert_false(rq->limits[1].shadow);
        free(h);
        if (i < 2) {
            assert_true(rq->admit.allowed); /* the shadow limit refused nothing */
            gw_req_free(rq);
            continue;
        }
        gw_reply_denied(rq); /* answers and frees */
        assert_int_equal(answers[nanswers - 1].status, 429);
        assert_non_null(strstr(answers[nanswers - 1].body, "\"violated-policies\":[\"en\"]"));
    }
}

/* The whole of a file (owned). */
static char *
slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    struct sbuf b = {0};
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        sbuf_add(&b, buf, n);
    fclose(f);
    sbuf_add(&b, "", 1);
    return b.p;
}

/*
 * The access log names the limit the rate-limit fields describe, remaining as they say, and
 * lists the shadow limits that would have refused: 200 with en at 1 and no shadow refusal,
 * 200 with en at 0 and "sh" refusing in shadow, then 429 by en, "sh" again.
 */
static void
test_access_lines_name_the_deciding_limit_and_shadow_refusals(void **state)
{
    char dir2[] = "/tmp/sluice-req-access-XXXXXX", path[80];
    assert_non_null(mkdtemp(dir2));
    snprintf(path, sizeof(path), "%s/access.log", dir2);
    char err[256];
    struct logwriter_config lc = {.path = path, .producers = 1};
    struct logwriter *lw = logwriter_open(&lc, err, sizeof(err));
    assert_non_null(lw);
    gw_access_init(&wk.access, lw, 0, 1.0);
    /* Counts of its own: the limits of the other tests are in the shared store. */
    struct store_memory *own = store_memory_new(1 << 20, 1 << 20);
    wk.store->ops->destroy(wk.store);
    wk.store = store_memory_handle(own);
    for (int i = 0; i < 3; i++) {
        struct gw_req *rq = limited_request();
        assert_string_equal(rq->deciding_limit, "en");
        assert_false(rq->deciding_shadow);
        if (i < 2)
            gw_reply_body(rq, 200, "{}", 2);
        else
            gw_reply_denied(rq);
    }
    wk.store->ops->destroy(wk.store);
    store_memory_free(own);
    wk.store = store_memory_handle(mem);
    gw_access_free(&wk.access);
    memset(&wk.access, 0, sizeof(wk.access));
    logwriter_close(lw);
    char *log = slurp(path);
    unlink(path);
    rmdir(dir2);
    static const char *const want[] = {
        "\"tier\":null,\"limit\":{\"policy\":\"en\",\"remaining\":1,\"mode\":\"enforce\"},"
        "\"status\":200,\"cache\":\"none\",\"user\":null,\"tenant\":null,\"identity\":",
        "\"tier\":null,\"limit\":{\"policy\":\"en\",\"remaining\":0,\"mode\":\"enforce\"},"
        "\"status\":200,\"cache\":\"none\",\"user\":null,\"tenant\":null,"
        "\"shadow_denied\":[\"sh\"]",
        "\"tier\":null,\"limit\":{\"policy\":\"en\",\"remaining\":0,\"mode\":\"enforce\"},"
        "\"status\":429,\"cache\":\"none\",\"user\":null,\"tenant\":null,"
        "\"shadow_denied\":[\"sh\"]",
    };
    char *save = NULL, *line = strtok_r(log, "\n", &save);
    for (size_t i = 0; i < 3; i++, line = strtok_r(NULL, "\n", &save)) {
        assert_non_null(line);
        if (!strstr(line, want[i]))
            fail_msg("line %zu: %s", i, line);
        assert_non_null(strstr(line, "\"route\":\"GET /l\""));
        assert_non_null(strstr(line, "\"bytes\":2,") || strstr(line, "\"status\":429"));
    }
    assert_null(line); /* one line per answer */
    free(log);
}

/* Each 5xx leaves one error line with its request id: a plain failure, one whose cause was
 * logged already (gw_fail_internal), an origin's own 5xx; a 4xx leaves none. */
static void
test_each_5xx_leaves_one_error_line(void **state)
{
    char path[] = "/tmp/sluice-req-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    log_set_fd(fd);
    struct gw_req *a = request("/x", "X-Request-Id: plain-503\r\n");
    gw_fail(a, 503, "the store is unavailable");
    struct gw_req *b = request("/x", "X-Request-Id: internal-502\r\n");
    gw_fail_internal(b, 502, "the database failed the statement", "column \"nope\"\nDETAIL");
    struct gw_req *c = request("/x", "X-Request-Id: origin-500\r\n");
    struct store_entry *e = store_entry_new(500, NULL, xstrdup("x"), 1);
    gw_reply_entry(c, e, NULL, 0);
    store_entry_release(e);
    struct gw_req *d = request("/x", "X-Request-Id: client-400\r\n");
    gw_fail(d, 400, "bad");
    log_set_fd(2);
    close(fd);
    char *log = slurp(path);
    unlink(path);
    static const char *const ids[] = {"plain-503", "internal-502", "origin-500"};
    for (size_t i = 0; i < 3; i++) {
        char needle[64];
        snprintf(needle, sizeof(needle), "request %s: GET /x: ", ids[i]);
        const char *at = strstr(log, needle);
        if (!at)
            fail_msg("no line of %s in:\n%s", ids[i], log);
        if (strstr(at + strlen(needle), ids[i])) /* once */
            fail_msg("%s twice in:\n%s", ids[i], log);
    }
    assert_null(strstr(log, "client-400"));
    /* The cause's newline is shown, not written: four lines in all would be a forgery. */
    assert_non_null(strstr(log, "column \"nope\"\\nDETAIL"));
    size_t lines = 0;
    for (const char *p = log; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 3);
    free(log);
}

static void
test_one_fill_per_key_per_worker(void **state)
{
    struct gw_req *a = request("/x", NULL), *b = request("/x", NULL), *y = request("/y", NULL);
    gw_inflight_lead(a);
    gw_inflight_lead(b); /* a leads already: b does not */
    gw_inflight_lead(y); /* another key: its own fill */
    assert_non_null(a->inflight);
    assert_null(b->inflight);
    assert_non_null(y->inflight);
    assert_true(gw_inflight_wait(b));
    assert_false(gw_inflight_wait(a)); /* the leader never waits on itself */
    struct store_entry *e = answer_entry("{\"x\":1}");
    leader_answers(a, e);
    leader_answers(y, e);
    store_entry_release(e);
    assert_int_equal(nanswers, 3);
    assert_string_equal(answer_to(1)->xcache, "HIT");
    assert_int_equal(nsent, 0);
}

static void
test_waiters_share_the_leaders_answer(void **state)
{
    struct gw_req *a = request("/x", NULL);
    gw_inflight_lead(a);
    for (int i = 0; i < 5; i++)
        assert_true(gw_inflight_wait(request("/x", NULL)));
    struct store_entry *e = answer_entry("{\"shared\":true}");
    leader_answers(a, e);
    store_entry_release(e);
    assert_int_equal(nanswers, 6);
    assert_string_equal(answer_to(0)->xcache, "MISS");
    for (int c = 1; c <= 5; c++) {
        assert_int_equal(answer_to(c)->status, 200);
        assert_string_equal(answer_to(c)->xcache, "HIT");
        assert_string_equal(answer_to(c)->body, "{\"shared\":true}");
    }
    assert_int_equal(nsent, 0); /* nobody else went to the origin */
}

static void
test_an_heir_takes_a_failed_fill_over(void **state)
{
    struct gw_req *a = request("/x", NULL), *b = request("/x", NULL), *c = request("/x", NULL);
    gw_inflight_lead(a);
    assert_true(gw_inflight_wait(b));
    assert_true(gw_inflight_wait(c));
    a->admit.lease_taken = true; /* the leader holds its key's fill lease */
    gw_fail(a, 502, "the origin failed");
    assert_int_equal(answer_to(0)->status, 502);
    /* One waiter (the last to come) goes to the origin and leads; the other waits on it. */
    assert_int_equal(nsent, 1);
    struct gw_req *heir = sent[0], *other = heir == c ? b : c;
    assert_ptr_equal(heir, c);
    assert_non_null(heir->inflight);
    assert_true(heir->admit.lease_taken); /* the lease went with the fill */
    assert_false(other->admit.lease_taken);
    assert_ptr_equal(heir->inflight->waiters, other);
    assert_int_equal(nanswers, 1);
    struct store_entry *e = answer_entry("{\"second\":1}");
    leader_answers(heir, e);
    store_entry_release(e);
    assert_int_equal(nanswers, 3);
    assert_string_equal(answer_to(1)->xcache, "HIT");
    assert_string_equal(answer_to(1)->body, "{\"second\":1}");
    assert_int_equal(nsent, 1);
}

static void
test_a_waiter_past_its_wait_goes_to_the_origin(void **state)
{
    struct gw_req *a = request("/x", NULL), *b = request("/x", NULL), *c = request("/x", NULL);
    gw_inflight_lead(a);
    assert_true(gw_inflight_wait(b));
    b->wait_start_ms = store_now_ms() - FILL_WAIT_MS - 1; /* has waited its whole wait */
    assert_true(gw_inflight_wait(c));
    gw_fail(a, 504, "deadline");
    assert_int_equal(nsent, 2); /* c takes over, b goes on by itself */
    assert_ptr_equal(sent[0], c);
    assert_ptr_equal(sent[1], b);
    assert_null(c->inflight->waiters);
    assert_null(b->inflight);
    gw_fail(b, 502, "x");
    gw_fail(c, 502, "x");
}

static void
test_an_uncacheable_answer_sends_every_waiter_to_the_origin(void **state)
{
    struct gw_req *a = request("/x", NULL);
    gw_inflight_lead(a);
    assert_true(gw_inflight_wait(request("/x", NULL)));
    assert_true(gw_inflight_wait(request("/x", NULL)));
    a->uncacheable = true; /* hit-for-miss: not shared, nothing to take over */
    struct store_entry *e = answer_entry("{\"private\":1}");
    gw_reply_entry(a, e, "MISS", e->stored_ms);
    store_entry_release(e);
    assert_int_equal(nsent, 2);
    for (size_t i = 0; i < nsent; i++) {
        assert_null(sent[i]->inflight);
        gw_fail(sent[i], 502, "x");
    }
}

static void
test_vary_shares_only_with_the_same_fields(void **state)
{
    struct gw_req *a = request("/x", "X-V: 1\r\n");
    struct gw_req *same = request("/x", "X-V: 1\r\n"), *other = request("/x", "X-V: 2\r\n");
    gw_inflight_lead(a);
    assert_true(gw_inflight_wait(same));
    assert_true(gw_inflight_wait(other));
    snprintf(a->vary_names, sizeof(a->vary_names), "x-v");
    assert_true(gw_vary_key(a, "x-v") > 0);
    struct store_entry *e = answer_entry("{\"v\":1}");
    leader_answers(a, e);
    store_entry_release(e);
    assert_string_equal(answer_to(1)->xcache, "HIT");
    assert_string_equal(answer_to(1)->body, "{\"v\":1}");
    assert_null(answer_to(2));
    assert_int_equal(nsent, 1);
    assert_ptr_equal(sent[0], other);
    gw_fail(other, 502, "x");
}

static void
test_a_closing_worker_hands_no_fill_over(void **state)
{
    struct gw_req *a = request("/x", NULL);
    gw_inflight_lead(a);
    assert_true(gw_inflight_wait(request("/x", NULL)));
    assert_true(gw_inflight_wait(request("/x", NULL)));
    wk.closing = true;
    gw_fail(a, 503, "shutting down");
    /* Both go on to the origin step, which fails them while the worker closes; none leads. */
    assert_int_equal(nsent, 2);
    for (size_t i = 0; i < nsent; i++) {
        assert_null(sent[i]->inflight);
        gw_fail(sent[i], 503, "x");
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_fill_per_key_per_worker, reset, check_empty),
        cmocka_unit_test_setup_teardown(test_shadow_limits_stay_out_of_the_answer, reset,
                                        check_empty),
        cmocka_unit_test_setup_teardown(test_waiters_share_the_leaders_answer, reset, check_empty),
        cmocka_unit_test_setup_teardown(test_an_heir_takes_a_failed_fill_over, reset, check_empty),
        cmocka_unit_test_setup_teardown(test_a_waiter_past_its_wait_goes_to_the_origin, reset,
                                        check_empty),
        cmocka_unit_test_setup_teardown(test_an_uncacheable_answer_sends_every_waiter_to_the_origin,
                                        reset, check_empty),
        cmocka_unit_test_setup_teardown(test_vary_shares_only_with_the_same_fields, reset,
                                        check_empty),
        cmocka_unit_test_setup_teardown(test_a_closing_worker_hands_no_fill_over, reset,
                                        check_empty),
        cmocka_unit_test_setup_teardown(
            test_access_lines_name_the_deciding_limit_and_shadow_refusals, reset, check_empty),
        cmocka_unit_test_setup_teardown(test_each_5xx_leaves_one_error_line, reset, check_empty),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
