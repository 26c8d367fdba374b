/* test_tenant.c - unit tests of tenant overrides in snapshots, hook decisions, last good
 * versions, the cap on limits, and tenant files and hooks that run long. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http_parse.h"
#include "policy.h"
#include "tenant.h"
#include "tenant_hooks.h"

static const char MAIN[] =
    "tier 'free' { limit = 100, window = '1h', mode = 'shadow' }\n"
    "tier 'pro' { limit = 1000, window = '1h', algorithm = 'token_bucket', burst = 50 }\n"
    "identity { user = header 'X-User-Id', tenant = header 'X-Tenant-Id', tier = header('X-Plan', "
    "{ trusted = true }) "
    "}\n"
    "endpoint 'GET /items' { body = '[]', cache = { ttl = '1h', key = 'i:{tenant}:{user}' },"
    "  limit = 'tier' }\n"
    "endpoint 'GET /reports/{name}' { body = '{}',"
    "  limit = { 'tier', { limit = 10, window = '1m', key = 'rep:{user}' } } }\n"
    "endpoint 'DELETE /items/{id}' { body = '{}', limit = 'tier' }\n";

static const char ACME[] =
    "tier 'free' { limit = 500 }\n"
    "endpoint 'GET /items' { cache = { ttl = '1m' } }\n"
    "endpoint 'GET /reports/{name}' { limit = { 'tier', { limit = 3, window = '10s', key = "
    "'arep:{user}' } } }\n"
    "hook 'cost' { when = function(req) return req.path:sub(1, 9) == '/reports/' end,\n"
    "  adjust = function(req, d) d.cost = 5; d.limits[2].limit = 7 end }\n"
    "hook 'deny' { when = function(req) return req.headers['x-role'] == 'viewer' end,\n"
    "  adjust = function(req, d) d.deny = { status = 403, message = 'viewers read only' } end }\n"
    "hook 'broken' { when = function(req) return req.query.boom ~= nil end,\n"
    "  adjust = function(req, d) d.cost = 99; error('boom') end }\n"
    "hook 'bad_status' { when = function(req) return req.query.five ~= nil end,\n"
    "  adjust = function(req, d) d.deny = { status = 500 } end }\n"
    "hook 'spin' { when = function(req) return req.query.spin ~= nil end,\n"
    "  adjust = function(req, d) while true do end end }\n"
    "hook 'fields' { when = function(req) return req.query.echo ~= nil end,\n"
    "  adjust = function(req, d) d.deny = { status = 418, message = table.concat({ req.method,\n"
    "  req.path, req.query.echo, req.headers['x-user-id'], req.user, req.tenant, req.tier,\n"
    "  req.ip, req.endpoint, d.limits[1].name, d.limits[1].window, d.limits[1].mode,\n"
    "  d.cost }, '|') } end }\n"
    "hook 'long' { when = function(req) return req.query.long ~= nil end,\n"
    "  adjust = function(req, d) d.deny = { status = 429, message = ('\\u{e9}'):rep(200) } end }\n"
    "hook 'write' { when = function(req) return req.query.write ~= nil end,\n"
    "  adjust = function(req, d) req.user = 'root' end }\n";

static char dir[64];

static void
write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static struct policy *
load(uint64_t gen, const struct policy *prev)
{
    char *errors = NULL;
    struct policy *p = policy_load(dir, gen, prev, &errors);
    if (!p)
        fail_msg("policy_load: %s", errors ? errors : "?");
    return p;
}

static int
setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/sluice-tenant-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    char t[128];
    snprintf(t, sizeof(t), "%s/tenants", dir);
    mkdir(t, 0700);
    write_file("00-main.lua", MAIN);
    write_file("tenants/acme.lua", ACME);
    write_file("tenants/plain.lua", "tier 'pro' { burst = 5 }\n");
    return 0;
}

static int
teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A parsed request: text must outlive the request. */
static void
parse(const char *text, struct http_request *h)
{
    assert_true(http_parse_request(text, strlen(text), h) > 0);
}

static const struct policy_endpoint *
endpoint(const struct policy *p, const char *name)
{
    for (size_t i = 0; i < p->nendpoints; i++)
        if (strcmp(p->endpoints[i].name, name) == 0)
            return &p->endpoints[i];
    fail_msg("no endpoint %s", name);
    return NULL;
}

static void
test_overrides(void **state)
{
    struct policy *p = load(1, NULL);
    assert_null(p->tenant_errors);
    assert_int_equal(p->ntenants, 2);
    const struct tenant *t = tenant_find(p, "acme", 4);
    assert_non_null(t);
    assert_null(tenant_find(p, "acm", 3));
    assert_null(tenant_find(p, "acmee", 5));
    assert_null(tenant_find(p, "zzz", 3));
    assert_null(tenant_find(p, NULL, 0));
    assert_ptr_equal(tenant_find(p, "plain", 5), &p->tenants[1]);
    assert_false(t->last_good);
    assert_int_equal(t->nhooks, 8);
    assert_string_equal(t->hooks[0].name, "cost");
    assert_int_equal(t->hooks[0].line, 4);

    const struct policy_tier *free_ = policy_tier_find(p, "free", 4);
    const struct policy_tier *pro = policy_tier_find(p, "pro", 3);
    const struct policy_tier *o = tenant_tier(t, p, free_);
    assert_ptr_not_equal(o, free_);
    assert_int_equal(o->rule.limit, 500);
    assert_true(o->shadow); /* the main tier's mode, which the override leaves alone */
    assert_false(pro->shadow);
    assert_int_equal(o->rule.window_ms, 3600000);
    assert_string_equal(o->name, "free");
    assert_string_equal(o->policy_field, "\"free\";q=500;w=3600");
    assert_ptr_equal(tenant_tier(t, p, pro), pro);
    assert_null(tenant_tier(t, p, NULL));
    const struct tenant *plain = tenant_find(p, "plain", 5);
    const struct policy_tier *pp = tenant_tier(plain, p, pro);
    assert_int_equal(pp->rule.burst, 5);
    assert_int_equal(pp->rule.limit, 1000);
    assert_int_equal(pp->rule.algo, LIMITER_TOKEN_BUCKET);

    const struct policy_endpoint *items = endpoint(p, "GET /items");
    const struct policy_endpoint *ti = tenant_endpoint(t, items);
    assert_ptr_not_equal(ti, items);
    assert_int_equal(ti->ttl_ms, 60000);
    assert_int_equal(items->ttl_ms, 3600000);
    assert_ptr_equal(ti->limits, items->limits);
    assert_ptr_equal(ti->cache_key, items->cache_key);
    const struct policy_endpoint *rep = endpoint(p, "GET /reports/{name}");
    const struct policy_endpoint *tr = tenant_endpoint(t, rep);
    assert_int_equal(tr->nlimits, 2);
    assert_true(tr->limits[0].is_tier);
    assert_int_equal(tr->limits[1].rule.limit, 3);
    assert_int_equal(tr->limits[1].rule.window_ms, 10000);
    assert_string_equal(tr->limits[1].name, "arep");
    assert_ptr_equal(tenant_endpoint(plain, rep), rep);
    const struct policy_endpoint *del = endpoint(p, "DELETE /items/{id}");
    assert_ptr_equal(tenant_endpoint(t, del), del);
    policy_release(p);
}

struct call {
    struct http_request h;
    struct tenant_call c;
};

static void
make_call(struct call *c, const struct policy *p, const struct tenant *t, const char *text,
          const char *ep)
{
    memset(c, 0, sizeof(*c));
    parse(text, &c->h);
    c->c.http = &c->h;
    c->c.user = "42";
    c->c.user_len = 2;
    c->c.tenant = "acme";
    c->c.tenant_len = 4;
    c->c.ip = "127.0.0.1";
    c->c.ep = tenant_endpoint(t, endpoint(p, ep));
    c->c.tier = tenant_tier(t, p, policy_tier_find(p, "free", 4));
}

static json_int_t
stat_of(const char *tenant, const char *name)
{
    json_t *s = tenant_stats_json();
    json_int_t v = json_integer_value(json_object_get(json_object_get(s, tenant), name));
    json_decref(s);
    return v;
}

static void
test_hooks(void **state)
{
    struct policy *p = load(1, NULL);
    const struct tenant *t = tenant_find(p, "acme", 4);
    struct tenant_runtime *rt = tenant_runtime_new();
    tenant_runtime_reset(rt, p->generation);
    struct tenant_decision d;
    struct call c;

    /* No hook matches: nothing changes. */
    make_call(&c, p, t, "GET /items HTTP/1.1\r\nHost: x\r\n\r\n", "GET /items");
    tenant_hooks_run(rt, p, t, &c.c, &d);
    assert_int_equal(d.cost, 0);
    assert_int_equal(d.deny_status, 0);
    assert_int_equal(d.limit[0], 0);

    /* cost and a limit */
    make_call(&c, p, t, "GET /reports/x HTTP/1.1\r\nHost: x\r\n\r\n", "GET /reports/{name}");
    tenant_hooks_run(rt, p, t, &c.c, &d);
    assert_int_equal(d.cost, 5);
    assert_int_equal(d.limit[0], 0);
    assert_int_equal(d.limit[1], 7);

    /* deny */
    make_call(&c, p, t, "DELETE /items/3 HTTP/1.1\r\nHost: x\r\nX-Role: viewer\r\n\r\n",
              "DELETE /items/{id}");
    tenant_hooks_run(rt, p, t, &c.c, &d);
    assert_int_equal(d.deny_status, 403);
    assert_string_equal(d.deny_message, "viewers read only");

    /* a long deny message is cut, never inside a UTF-8 sequence */
    make_call(&c, p, t, "GET /items?long=1 HTTP/1.1\r\nHost: x\r\n\r\n", "GET /items");
    tenant_hooks_run(rt, p, t, &c.c, &d);
    assert_int_equal(d.deny_status, 429);
    assert_int_equal(strlen(d.deny_message), 254);

    /* what req and decision hold */
    make_call(&c, p, t, "GET /items?echo=a%20b&echo=2 HTTP/1.1\r\nHost: x\r\nX-User-Id: 42\r\n\r\n",
              "GET /items");
    tenant_hooks_run(rt, p, t, &c.c, &d);
    assert_int_equal(d.deny_status, 418);
    assert_string_equal(d.deny_message,
                        "GET|/items|a b|42|42|acme|free|127.0.0.1|GET /items|free|3600|shadow|1");

    /* failures: each hook skipped as if absent, and counted */
    json_int_t failures = stat_of("acme", "hook_failures");
    json_int_t errors = stat_of("acme", "errors"), budget = stat_of("acme", "budget_exceeded");
    json_int_t invalid = stat_of("acme", "invalid_decisions");
    make_call(&c, p, t, "GET /reports/x?boom=1&five=1&spin=1&write=1 HTTP/1.1\r\nHost: x\r\n\r\n",
              "GET /reports/{name}");
    tenant_hooks_run(rt, p, t, &c.c, &d);
    assert_int_equal(d.cost, 5); /* from 'cost'; 'broken' set 99 and then failed */
    assert_int_equal(d.deny_status, 0);
    assert_int_equal(stat_of("acme", "hook_failures"), failures + 4);
    assert_int_equal(stat_of("acme", "errors"), errors + 2); /* broken, and the write to req */
    assert_int_equal(stat_of("acme", "budget_exceeded"), budget + 1);
    assert_int_equal(stat_of("acme", "invalid_decisions"), invalid + 1);

    /* A request of an older generation gets a throwaway state, with the same answers. */
    tenant_runtime_reset(rt, p->generation + 1);
    make_call(&c, p, t, "GET /reports/x HTTP/1.1\r\nHost: x\r\n\r\n", "GET /reports/{name}");
    tenant_hooks_run(rt, p, t, &c.c, &d);
    assert_int_equal(d.cost, 5);

    tenant_runtime_free(rt);
    policy_release(p);
}

static void
test_last_good(void **state)
{
    struct policy *p1 = load(1, NULL);
    /* acme breaks, a new tenant arrives broken, plain is fine. */
    write_file("tenants/acme.lua", "tier 'free' { limit = 'lots' }\n");
    write_file("tenants/newco.lua", "tier 'gold' { limit = 1 }\n");
    struct policy *p2 = load(2, p1);
    assert_non_null(p2->tenant_errors);
    assert_non_null(strstr(p2->tenant_errors, "tenants/acme.lua:1: tier \"free\": limit: expected "
                                              "a positive whole number, got string \"lots\""));
    assert_non_null(strstr(p2->tenant_errors, "tenants/newco.lua:1: tier \"gold\": is not a tier "
                                              "of the main policy set"));
    const struct tenant *t = tenant_find(p2, "acme", 4);
    assert_non_null(t);
    assert_true(t->last_good);
    assert_int_equal(tenant_tier(t, p2, policy_tier_find(p2, "free", 4))->rule.limit, 500);
    assert_int_equal(t->nhooks, 8);
    assert_null(tenant_find(p2, "newco", 5));
    assert_non_null(tenant_find(p2, "plain", 5));

    /* Still broken on the next reload: the last good version carries on. */
    struct policy *p3 = load(3, p2);
    t = tenant_find(p3, "acme", 4);
    assert_non_null(t);
    assert_true(t->last_good);

    /* Fixed: the new version serves. */
    write_file("tenants/acme.lua", "tier 'free' { limit = 700 }\n");
    char path[256];
    snprintf(path, sizeof(path), "%s/tenants/newco.lua", dir);
    unlink(path);
    struct policy *p4 = load(4, p3);
    assert_null(p4->tenant_errors);
    t = tenant_find(p4, "acme", 4);
    assert_false(t->last_good);
    assert_int_equal(tenant_tier(t, p4, policy_tier_find(p4, "free", 4))->rule.limit, 700);
    assert_int_equal(t->nhooks, 0);

    /* The main set drops the tier acme overrides while acme's file is broken: acme's last good
     * version no longer loads, so acme has no overrides. */
    write_file("tenants/acme.lua", "tier 'free' { limit = 'x' }\n");
    write_file("00-main.lua", "tier 'pro' { limit = 5, window = '1h' }\n"
                              "identity { user = header 'U', tenant = header 'T' }\n");
    struct policy *p5 = load(5, p4);
    assert_null(tenant_find(p5, "acme", 4));
    assert_non_null(strstr(p5->tenant_errors, "does not load against this policy set either"));

    policy_release(p1);
    policy_release(p2);
    policy_release(p3);
    policy_release(p4);
    policy_release(p5);
}

/* A tenant file that allocates without end while it loads fails alone; the process lives on. */
static void
test_memory_bomb_while_loading(void **state)
{
    write_file(
        "tenants/bomb.lua",
        "local s = ('x'):rep(1 << 20)\nlocal t = {}\nfor i = 1, 1000 do t[i] = s .. i end\n");
    struct policy *p = load(1, NULL);
    assert_non_null(p->tenant_errors);
    /* 256 MiB of 1 MiB strings: the memory cap, or the time budget on a slow machine */
    assert_true(strstr(p->tenant_errors, "tenants/bomb.lua:3: not enough memory") ||
                strstr(p->tenant_errors,
                       "tenants/bomb.lua:3: policy file exceeded its time budget (200 ms)"));
    assert_null(tenant_find(p, "bomb", 4));
    assert_non_null(tenant_find(p, "acme", 4));
    assert_int_equal(p->nendpoints, 3);
    policy_release(p);
}

static double
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/*
 * Tenant files whose top level runs long, in Lua or inside C functions, fail alone within their
 * time budget (200 ms each): the main set and the other tenants load. Before, the spin in C held
 * the loader for minutes and the one backtracking match for 5 s.
 */
static void
test_attacks_while_loading_fail_alone(void **state)
{
    static const struct {
        const char *file, *text, *error;
    } attacks[] = {
        {"tenants/spin.lua",
         "local s = string.rep('x', 1 << 20)\ns = s .. s\nfor i = 1, 1e9 do s:upper() end\n",
         "tenants/spin.lua:3: policy file exceeded its time budget (200 ms)"},
        {"tenants/commas.lua",
         "local q = string.rep('a,', 300)\nlocal a = q:match('^(.-),(.-),(.-),(.-)=')\n",
         "tenants/commas.lua:2: pattern matching exceeded its step budget (109600 steps)"},
        {"tenants/find.lua",
         "tier 'free' { limit = 5 }\nlocal s = string.rep('a', 600)\n"
         "for i = 1, 1e9 do pcall(s.find, s, '.-.-.-b') end\n",
         "tenants/find.lua:3: policy file exceeded its time budget (200 ms)"},
        {"tenants/rep.lua", "local s = ('x'):rep(1e9)\n",
         "tenants/rep.lua:1: resulting string too large (1000000000 bytes; string.rep makes at "
         "most 1048576)"},
        {"tenants/empty.lua", "local s = (''):rep(1 << 62)\ntier 'nope' { limit = 1 }\n",
         "tenants/empty.lua:2: tier \"nope\": is not a tier of the main policy set"},
        /* The checks of what a file declares count too: a misspelt name of a megabyte. */
        {"tenants/name.lua",
         "local n = string.rep('f', 1 << 20)\nfor i = 1, 50 do tier(n .. i) { limit = 1 } end\n",
         "tenants/name.lua:2: tier \"fff"},
    };
    for (size_t i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++)
        write_file(attacks[i].file, attacks[i].text);
    double t0 = now_ms();
    struct policy *p = load(1, NULL);
    double ms = now_ms() - t0;
    printf("  policy_load with %zu attacking tenant files: %.0f ms\n",
           sizeof(attacks) / sizeof(attacks[0]), ms);
    assert_true(ms < 2000);
    assert_int_equal(p->nendpoints, 3);
    assert_non_null(tenant_find(p, "acme", 4));
    assert_non_null(tenant_find(p, "plain", 5));
    for (size_t i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++) {
        if (!strstr(p->tenant_errors, attacks[i].error))
            fail_msg("no \"%s\" in:\n%s", attacks[i].error, p->tenant_errors);
        const char *name = strchr(attacks[i].file, '/') + 1;
        assert_null(tenant_find(p, name, strlen(name) - 4));
    }
    policy_release(p);
}

/* A tenant that turns into an attack keeps its last good version, and the reload stays fast. */
static void
test_attack_keeps_the_last_good_version(void **state)
{
    struct policy *p1 = load(1, NULL);
    write_file("tenants/acme.lua", "local s = string.rep('x', 1 << 20)\ns = s .. s\n"
                                   "while true do pcall(s.upper, s) end\n");
    double t0 = now_ms();
    struct policy *p2 = load(2, p1);
    double ms = now_ms() - t0;
    printf("  reload with acme spinning in C: %.0f ms\n", ms);
    assert_true(ms < 1000);
    assert_non_null(strstr(p2->tenant_errors,
                           "tenants/acme.lua:3: policy file exceeded its time budget (200 ms)"));
    const struct tenant *t = tenant_find(p2, "acme", 4);
    assert_non_null(t);
    assert_true(t->last_good);
    assert_int_equal(t->nhooks, 8);
    assert_non_null(tenant_find(p2, "plain", 5));
    policy_release(p1);
    policy_release(p2);
}

static const char EVIL[] =
    "hook 'tags' { when = function(req) return req.query.tags ~= nil end,\n"
    "  adjust = function(req, d) if req.query.tags:match('^(.-),(.-),(.-),(.-)=') then\n"
    "    d.cost = 9 end end }\n"
    "hook 'spin' { when = function(req) return req.query.spin ~= nil end,\n"
    "  adjust = function(req, d) local s = ('x'):rep(1 << 20) s = s .. s\n"
    "    for i = 1, 1e9 do pcall(s.upper, s) end end }\n"
    "hook 'find' { when = function(req) return req.query.find ~= nil end,\n"
    "  adjust = function(req, d) return (('a'):rep(600)):find('.-.-.-b') end }\n"
    "hook 'rep' { when = function(req) return req.query.rep ~= nil end,\n"
    "  adjust = function(req, d) return ('x'):rep(1e9) end }\n"
    "hook 'after' { adjust = function(req, d) d.cost = 3 end }\n";

/* Runs the hooks of tenant t on a GET of target; returns the ms it took. */
static double
run_hooks(struct tenant_runtime *rt, const struct policy *p, const struct tenant *t,
          const char *target, struct tenant_decision *d)
{
    static char text[2048];
    snprintf(text, sizeof(text), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", target);
    struct call c;
    make_call(&c, p, t, text, "GET /items");
    double t0 = now_ms();
    tenant_hooks_run(rt, p, t, &c.c, d);
    return now_ms() - t0;
}

/*
 * Hooks attacked through the request (4 lazy captures over 300 commas: 5 s in Lua's own matcher)
 * or running long by themselves are stopped and skipped; a tenant whose calls keep running long
 * gets the base time of a call only, once its allowance is spent.
 */
static void
test_hook_attacks_are_stopped(void **state)
{
    write_file("tenants/evil.lua", EVIL);
    struct policy *p = load(1, NULL);
    const struct tenant *t = tenant_find(p, "evil", 4);
    assert_non_null(t);
    struct tenant_runtime *rt = tenant_runtime_new();
    tenant_runtime_reset(rt, p->generation);
    struct tenant_decision d;
    run_hooks(rt, p, t, "/items", &d); /* builds the state */
    assert_int_equal(d.cost, 3);

    char target[1024] = "/items?tags=";
    for (int i = 0; i < 300; i++)
        strcat(target, "a,");
    json_int_t errors = stat_of("evil", "errors"), timed = stat_of("evil", "time_exceeded");
    double ms = run_hooks(rt, p, t, target, &d);
    printf("  the 300 commas: %.2f ms\n", ms);
    assert_true(ms < 20);
    assert_int_equal(d.cost, 3); /* 'tags' failed, 'after' ran */
    ms = run_hooks(rt, p, t, "/items?find=1", &d);
    printf("  the backtracking find: %.2f ms\n", ms);
    assert_true(ms < 20);
    ms = run_hooks(rt, p, t, "/items?rep=1", &d);
    assert_true(ms < 20);
    assert_int_equal(stat_of("evil", "errors"), errors + 3);

    /* The first call runs on the allowance (less what the calls above took past the base)... */
    ms = run_hooks(rt, p, t, "/items?spin=1", &d);
    printf("  the spin in C, first call: %.1f ms\n", ms);
    assert_true(ms >= TENANT_HOOK_MS / 2 && ms < 10 * TENANT_HOOK_MS);
    assert_int_equal(d.cost, 3);
    /* ... which it spends: the next ones get the base, and the C work that was running. */
    double later = 0;
    for (int i = 0; i < 10; i++)
        later += run_hooks(rt, p, t, "/items?spin=1", &d);
    printf("  the spin in C, 10 calls more: %.1f ms\n", later);
    assert_true(later < 7.5 * TENANT_HOOK_MS); /* at least 10 x TENANT_HOOK_MS without it */
    assert_int_equal(stat_of("evil", "time_exceeded"), timed + 11);
    tenant_runtime_free(rt);
    policy_release(p);
}

/* The list of n limits { limit = 10, window = '1m', key = 'aI:{user}' } as policy text. */
static void
limits_text(char *buf, size_t len, int n)
{
    size_t off = (size_t)snprintf(buf, len, "{ ");
    for (int i = 1; i <= n; i++)
        off += (size_t)snprintf(buf + off, len - off,
                                "{ limit = 10, window = '1m', key = 'a%d:{user}' }, ", i);
    snprintf(buf + off, len - off, "}");
}

/* More limits than a request counts are refused with file:line, in the main set or a tenant. */
static void
test_limits_capped(void **state)
{
    char limits[1024], text[1200];
    limits_text(limits, sizeof(limits), POLICY_MAX_LIMITS);
    snprintf(text, sizeof(text), "endpoint 'GET /wide' { body = '{}', limit = %s }\n", limits);
    write_file("01-wide.lua", text);
    limits_text(limits, sizeof(limits), POLICY_MAX_LIMITS + 1);
    snprintf(text, sizeof(text), "\nendpoint 'GET /wide' { limit = %s }\n", limits);
    write_file("tenants/acme.lua", text);
    struct policy *p = load(1, NULL);
    assert_int_equal(endpoint(p, "GET /wide")->nlimits, POLICY_MAX_LIMITS);
    assert_null(tenant_find(p, "acme", 4));
    assert_non_null(p->tenant_errors);
    assert_non_null(strstr(p->tenant_errors, "tenants/acme.lua:2: endpoint \"GET /wide\": limit: "
                                             "lists 9 limits; an endpoint may have at most 8\n"));
    policy_release(p);

    snprintf(text, sizeof(text), "endpoint 'GET /wide' { body = '{}', limit = %s }\n", limits);
    write_file("01-wide.lua", text);
    char *errors = NULL;
    assert_null(policy_load(dir, 2, NULL, &errors));
    assert_non_null(errors);
    assert_non_null(strstr(errors, "01-wide.lua:1: endpoint \"GET /wide\": limit: lists 9 limits; "
                                   "an endpoint may have at most 8\n"));
    free(errors);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_overrides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hooks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_last_good, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_bomb_while_loading, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attacks_while_loading_fail_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attack_keeps_the_last_good_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_attacks_are_stopped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits_capped, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
