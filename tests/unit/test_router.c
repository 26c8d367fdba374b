/* test_router.c - unit tests of the route table: patterns, priority, pins, 404/405, decoding. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

/* Distinct data pointers for routes. */
static int d[32];

static void
add_ok(struct router *r, const char *method, const char *pattern, void *data)
{
    char err[256] = "";
    if (router_add(r, method, pattern, data, err, sizeof(err)) != 0)
        fail_msg("router_add(%s %s) failed: %s", method, pattern, err);
}

static void
add_fails(struct router *r, const char *method, const char *pattern, const char *want)
{
    char err[256] = "";
    if (router_add(r, method, pattern, &d[31], err, sizeof(err)) == 0)
        fail_msg("router_add(%s %s) should fail with: %s", method, pattern, want);
    assert_string_equal(err, want);
}

/* Matches "METHOD" and a target "/path?query"; the path is what the match points into. */
static enum router_result
match(const struct router *r, const char *method, const char *target, struct router_match *m)
{
    const char *q = strchr(target, '?');
    size_t plen = q ? (size_t)(q - target) : strlen(target);
    return router_match(r, method, strlen(method), target, plen, q ? q + 1 : NULL,
                        q ? strlen(q + 1) : 0, m);
}

/* Returns the data index of the route that answers, or -1 with the result in *res. */
static int
which(const struct router *r, const char *method, const char *target)
{
    struct router_match m;
    enum router_result res = match(r, method, target, &m);
    if (res != ROUTER_FOUND) {
        assert_null(m.data);
        return -(int)res;
    }
    return (int)((int *)m.data - d);
}

static void
allow_string(unsigned allow, char *buf, size_t len)
{
    buf[0] = '\0';
    for (size_t i = 0; i < router_nmethods; i++) {
        if (allow & (1u << i)) {
            size_t used = strlen(buf);
            snprintf(buf + used, len - used, "%s%s", used ? ", " : "", router_methods[i]);
        }
    }
}

static void
test_methods_table(void **state)
{
    (void)state;
    assert_int_equal(router_nmethods, 7);
    assert_string_equal(router_methods[0], "GET");
    assert_string_equal(router_methods[1], "HEAD");
    assert_string_equal(router_methods[2], "POST");
    assert_string_equal(router_methods[3], "PUT");
    assert_string_equal(router_methods[4], "PATCH");
    assert_string_equal(router_methods[5], "DELETE");
    assert_string_equal(router_methods[6], "OPTIONS");
}

static void
test_literal_and_param(void **state)
{
    struct router *r = router_new();
    struct router_match m;
    const char *path = "/api/users/42/posts/a%20b";

    (void)state;
    add_ok(r, "GET", "/api/crm", &d[0]);
    add_ok(r, "GET", "/api/users/{id}/posts/{post_id}", &d[1]);

    assert_int_equal(match(r, "GET", "/api/crm", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[0]);
    assert_int_equal(m.nparams, 0);

    assert_int_equal(match(r, "GET", path, &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[1]);
    assert_int_equal(m.nparams, 2);
    assert_string_equal(m.params[0].name, "id");
    assert_ptr_equal(m.params[0].value, path + 11); /* points into the path */
    assert_int_equal(m.params[0].len, 2);
    assert_string_equal(m.params[1].name, "post_id");
    assert_int_equal(m.params[1].len, 5);
    assert_memory_equal(m.params[1].value, "a%20b", 5); /* captured raw */

    /* A param value may hold any byte but '/', encoded or not. */
    assert_int_equal(match(r, "GET", "/api/users/%2F%00/posts/x", &m), ROUTER_FOUND);
    assert_int_equal(m.params[0].len, 6);
    assert_memory_equal(m.params[0].value, "%2F%00", 6);

    assert_int_equal(which(r, "GET", "/api/crm/x"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/api"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/API/crm"), -ROUTER_NOT_FOUND); /* case-sensitive */
    assert_int_equal(which(r, "GET", "/api/users/42/posts"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/api/users/42/posts/1/x"), -ROUTER_NOT_FOUND);
    router_free(r);
}

static void
test_priority(void **state)
{
    struct router *r = router_new();
    struct router_match m;

    (void)state;
    /* Added least specific first: order of addition must not matter. */
    add_ok(r, "GET", "/*", &d[0]);
    add_ok(r, "GET", "/a/*", &d[1]);
    add_ok(r, "GET", "/{y}/b", &d[2]);
    add_ok(r, "GET", "/a/{x}", &d[3]);
    add_ok(r, "GET", "/a/b", &d[4]);
    add_ok(r, "GET", "/a/{x}/c", &d[5]);
    add_ok(r, "GET", "/{p}/{q}/{s}", &d[6]);

    assert_int_equal(which(r, "GET", "/a/b"), 4);   /* literal over {param} and * */
    assert_int_equal(which(r, "GET", "/a/c"), 3);   /* {param} over * */
    assert_int_equal(which(r, "GET", "/z/b"), 2);   /* only {y}/b and the wildcard match */
    assert_int_equal(which(r, "GET", "/a/b/c"), 5); /* a/{x}/c over the wildcard and {p}/{q}/{s} */
    assert_int_equal(which(r, "GET", "/z/b/c"), 6); /* {p}/{q}/{s} over the wildcard */
    assert_int_equal(which(r, "GET", "/a/b/c/d"), 1);
    assert_int_equal(which(r, "GET", "/zz"), 0);
    assert_int_equal(which(r, "GET", "/"), 0);

    /* Segment by segment from the left: a literal first segment wins. */
    assert_int_equal(match(r, "GET", "/a/x/c", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[5]);
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.params[0].name, "x");

    assert_int_equal(match(r, "GET", "/a/b/c/d", &m), ROUTER_FOUND);
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.params[0].name, "*");
    assert_int_equal(m.params[0].len, 5);
    assert_memory_equal(m.params[0].value, "b/c/d", 5);
    router_free(r);

    r = router_new();
    add_ok(r, "GET", "/{a}/b", &d[0]);
    add_ok(r, "GET", "/a/{b}", &d[1]);
    assert_int_equal(which(r, "GET", "/a/b"), 1);
    assert_int_equal(which(r, "GET", "/x/b"), 0);
    router_free(r);
}

static void
test_wildcard(void **state)
{
    struct router *r = router_new();
    struct router_match m;

    (void)state;
    add_ok(r, "GET", "/static/*", &d[0]);
    add_ok(r, "GET", "/u/{id}/*", &d[1]);

    assert_int_equal(match(r, "GET", "/static/", &m), ROUTER_FOUND);
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.params[0].name, "*");
    assert_int_equal(m.params[0].len, 0);
    assert_int_equal(match(r, "GET", "/static/css/a%20b.css", &m), ROUTER_FOUND);
    assert_int_equal(m.params[0].len, 13);
    assert_memory_equal(m.params[0].value, "css/a%20b.css", 13);
    /* The wildcard needs the slash before it. */
    assert_int_equal(which(r, "GET", "/static"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/staticx/y"), -ROUTER_NOT_FOUND);
    /* It covers empty segments too. */
    assert_int_equal(match(r, "GET", "/static//x//", &m), ROUTER_FOUND);
    assert_int_equal(m.params[0].len, 4);
    assert_memory_equal(m.params[0].value, "/x//", 4);

    assert_int_equal(match(r, "GET", "/u/7/a/b", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[1]);
    assert_int_equal(m.nparams, 2);
    assert_string_equal(m.params[0].name, "id");
    assert_memory_equal(m.params[0].value, "7", 1);
    assert_string_equal(m.params[1].name, "*");
    assert_int_equal(m.params[1].len, 3);
    assert_memory_equal(m.params[1].value, "a/b", 3);
    router_free(r);

    r = router_new();
    add_ok(r, "GET", "/*", &d[0]);
    assert_int_equal(match(r, "GET", "/", &m), ROUTER_FOUND);
    assert_int_equal(m.params[0].len, 0);
    assert_int_equal(match(r, "GET", "//", &m), ROUTER_FOUND);
    assert_int_equal(m.params[0].len, 1);
    router_free(r);
}

static void
test_trailing_slash_and_empty_segments(void **state)
{
    struct router *r = router_new();

    (void)state;
    add_ok(r, "GET", "/api/crm", &d[0]);
    add_ok(r, "GET", "/api/crm/", &d[1]); /* a different path, not a duplicate */
    add_ok(r, "GET", "/", &d[2]);
    add_ok(r, "GET", "/x/{id}/y", &d[3]);
    add_ok(r, "GET", "/p/{id}", &d[4]);

    assert_int_equal(which(r, "GET", "/api/crm"), 0);
    assert_int_equal(which(r, "GET", "/api/crm/"), 1);
    assert_int_equal(which(r, "GET", "/api/crm//"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/"), 2);
    assert_int_equal(which(r, "GET", "//"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/api//crm"), -ROUTER_NOT_FOUND);
    /* Empty segments never match a {param}. */
    assert_int_equal(which(r, "GET", "/x//y"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/x/1/y"), 3);
    assert_int_equal(which(r, "GET", "/p/"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/p/1/"), -ROUTER_NOT_FOUND);
    /* Not origin-form: nothing matches. */
    assert_int_equal(which(r, "GET", "*"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", ""), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "api/crm"), -ROUTER_NOT_FOUND);
    router_free(r);

    /* Only the trailing slash form exists: the other one is a 404. */
    r = router_new();
    add_ok(r, "GET", "/only/", &d[0]);
    assert_int_equal(which(r, "GET", "/only"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/only/"), 0);
    router_free(r);
}

static void
test_percent_encoding(void **state)
{
    struct router *r = router_new();

    (void)state;
    add_ok(r, "GET", "/api/crm", &d[0]);
    add_ok(r, "GET", "/files/a%20b", &d[1]);
    add_ok(r, "GET", "/caf%C3%A9", &d[2]);
    add_ok(r, "GET", "/a%2Fb", &d[3]);
    add_ok(r, "GET", "/a/b", &d[4]);
    add_ok(r, "GET", "/plus+sign", &d[5]);
    add_ok(r, "GET", "/lit%2541", &d[6]);

    /* Literals compare decoded; hex digits in either case. */
    assert_int_equal(which(r, "GET", "/api/%63rm"), 0);
    assert_int_equal(which(r, "GET", "/%61%70%69/%63%72%6D"), 0);
    assert_int_equal(which(r, "GET", "/files/a%20b"), 1);
    assert_int_equal(which(r, "GET", "/files/a b"), 1);
    assert_int_equal(which(r, "GET", "/files/a+b"), -ROUTER_NOT_FOUND); /* '+' is no space here */
    assert_int_equal(which(r, "GET", "/caf%c3%a9"), 2);
    assert_int_equal(which(r, "GET", "/caf\xc3\xa9"), 2);
    assert_int_equal(which(r, "GET", "/caf%C3"), -ROUTER_NOT_FOUND);
    /* Segments are split before decoding: an encoded slash stays inside its segment. */
    assert_int_equal(which(r, "GET", "/a%2fb"), 3);
    assert_int_equal(which(r, "GET", "/a/b"), 4);
    assert_int_equal(which(r, "GET", "/plus+sign"), 5);
    assert_int_equal(which(r, "GET", "/plus%2Bsign"), 5);
    assert_int_equal(which(r, "GET", "/plus%20sign"), -ROUTER_NOT_FOUND);
    /* Decoding happens once: "%2541" is the literal "%41", not "A". */
    assert_int_equal(which(r, "GET", "/lit%2541"), 6);
    assert_int_equal(which(r, "GET", "/lit%41"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/litA"), -ROUTER_NOT_FOUND);
    /* Bad escapes and NUL never match a literal. */
    assert_int_equal(which(r, "GET", "/api/cr%zz"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/api/crm%"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/api/crm%0"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/api/crm%00"), -ROUTER_NOT_FOUND);
    router_free(r);
}

static void
test_pins(void **state)
{
    struct router *r = router_new();

    (void)state;
    add_ok(r, "GET", "/api/crm", &d[0]);
    add_ok(r, "GET", "/api/crm?type=contacts", &d[1]);
    add_ok(r, "GET", "/api/crm?type=contacts&view=full", &d[2]);
    add_ok(r, "GET", "/api/crm?type=deals", &d[3]);
    add_ok(r, "GET", "/search?q=a+b", &d[4]);
    add_ok(r, "GET", "/flags?on=", &d[5]);

    assert_int_equal(which(r, "GET", "/api/crm"), 0);
    assert_int_equal(which(r, "GET", "/api/crm?"), 0);
    assert_int_equal(which(r, "GET", "/api/crm?type=contacts"), 1);
    assert_int_equal(which(r, "GET", "/api/crm?page=2&type=contacts&x"), 1);
    assert_int_equal(which(r, "GET", "/api/crm?type=deals"), 3);
    assert_int_equal(which(r, "GET", "/api/crm?type=other"), 0);
    assert_int_equal(which(r, "GET", "/api/crm?type=contactsx"), 0);
    assert_int_equal(which(r, "GET", "/api/crm?type="), 0);
    assert_int_equal(which(r, "GET", "/api/crm?type"), 0);
    assert_int_equal(which(r, "GET", "/api/crm?xtype=contacts"), 0);
    /* More pins win. */
    assert_int_equal(which(r, "GET", "/api/crm?type=contacts&view=full"), 2);
    assert_int_equal(which(r, "GET", "/api/crm?view=full&type=contacts"), 2);
    assert_int_equal(which(r, "GET", "/api/crm?view=brief&type=contacts"), 1);
    /* Names and values compare decoded. */
    assert_int_equal(which(r, "GET", "/api/crm?type=cont%61cts"), 1);
    assert_int_equal(which(r, "GET", "/api/crm?t%79pe=contacts"), 1);
    assert_int_equal(which(r, "GET", "/api/crm?type=contacts%"), 0);
    /* The first occurrence of a parameter decides. */
    assert_int_equal(which(r, "GET", "/api/crm?type=deals&type=contacts"), 3);
    assert_int_equal(which(r, "GET", "/api/crm?type=contacts&type=deals"), 1);
    /* '+' is a space in queries, on both sides. */
    assert_int_equal(which(r, "GET", "/search?q=a+b"), 4);
    assert_int_equal(which(r, "GET", "/search?q=a%20b"), 4);
    assert_int_equal(which(r, "GET", "/search?q=a%2Bb"), -ROUTER_NOT_FOUND);
    /* A pin with an empty value wants the parameter present and empty. */
    assert_int_equal(which(r, "GET", "/flags?on="), 5);
    assert_int_equal(which(r, "GET", "/flags?on"), 5);
    assert_int_equal(which(r, "GET", "/flags?on=1"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "GET", "/flags"), -ROUTER_NOT_FOUND);
    router_free(r);

    /* Path specificity comes before pins. */
    r = router_new();
    add_ok(r, "GET", "/a/{x}?t=1", &d[0]);
    add_ok(r, "GET", "/a/b", &d[1]);
    assert_int_equal(which(r, "GET", "/a/b?t=1"), 1);
    assert_int_equal(which(r, "GET", "/a/c?t=1"), 0);
    assert_int_equal(which(r, "GET", "/a/c?t=2"), -ROUTER_NOT_FOUND);
    router_free(r);
}

static void
test_404_405(void **state)
{
    struct router *r = router_new();
    struct router_match m;
    char allow[128];

    (void)state;
    add_ok(r, "GET", "/items", &d[0]);
    add_ok(r, "POST", "/items", &d[1]);
    add_ok(r, "DELETE", "/items/{id}", &d[2]);
    add_ok(r, "PUT", "/items/{id}", &d[3]);
    add_ok(r, "OPTIONS", "/items", &d[4]);
    add_ok(r, "POST", "/api/crm?type=contacts", &d[5]);
    add_ok(r, "PATCH", "/api/crm?type=deals", &d[6]);

    assert_int_equal(match(r, "PUT", "/items", &m), ROUTER_METHOD_NOT_ALLOWED);
    assert_null(m.data);
    allow_string(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "GET, HEAD, POST, OPTIONS");

    assert_int_equal(match(r, "GET", "/items/5", &m), ROUTER_METHOD_NOT_ALLOWED);
    allow_string(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "PUT, DELETE");

    /* Unknown and wrongly cased methods: 405 when the path exists. */
    assert_int_equal(match(r, "BREW", "/items", &m), ROUTER_METHOD_NOT_ALLOWED);
    assert_int_equal(m.allow, (1u << 0) | (1u << 1) | (1u << 2) | (1u << 6));
    assert_int_equal(match(r, "get", "/items", &m), ROUTER_METHOD_NOT_ALLOWED);

    assert_int_equal(match(r, "GET", "/nothing", &m), ROUTER_NOT_FOUND);
    assert_int_equal(m.allow, 0);
    assert_int_equal(match(r, "BREW", "/nothing", &m), ROUTER_NOT_FOUND);

    /* Pins take part: the methods of routes whose path and pins match. */
    assert_int_equal(match(r, "GET", "/api/crm?type=contacts", &m), ROUTER_METHOD_NOT_ALLOWED);
    allow_string(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "POST");
    assert_int_equal(match(r, "GET", "/api/crm?type=deals", &m), ROUTER_METHOD_NOT_ALLOWED);
    allow_string(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "PATCH");
    assert_int_equal(match(r, "GET", "/api/crm?type=x", &m), ROUTER_NOT_FOUND);
    assert_int_equal(match(r, "GET", "/api/crm", &m), ROUTER_NOT_FOUND);

    /* On a match, allow still lists every method of the path. */
    assert_int_equal(match(r, "POST", "/items", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[1]);
    allow_string(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "GET, HEAD, POST, OPTIONS");
    assert_int_equal(which(r, "OPTIONS", "/items"), 4);
    assert_int_equal(which(r, "OPTIONS", "/items/1"), -ROUTER_METHOD_NOT_ALLOWED);
    router_free(r);
}

static void
test_head(void **state)
{
    struct router *r = router_new();
    struct router_match m;

    (void)state;
    add_ok(r, "GET", "/items", &d[0]);
    add_ok(r, "GET", "/both", &d[1]);
    add_ok(r, "HEAD", "/both", &d[2]);
    add_ok(r, "HEAD", "/only-head", &d[3]);
    add_ok(r, "HEAD", "/a/{x}", &d[4]);
    add_ok(r, "GET", "/a/b", &d[5]);
    add_ok(r, "GET", "/users/{id}", &d[6]);

    assert_int_equal(which(r, "HEAD", "/items"), 0); /* a GET route answers HEAD */
    assert_int_equal(match(r, "HEAD", "/users/9", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[6]);
    assert_int_equal(m.nparams, 1);
    assert_memory_equal(m.params[0].value, "9", 1);
    /* An explicit HEAD route beats the GET route of the same pattern. */
    assert_int_equal(which(r, "HEAD", "/both"), 2);
    assert_int_equal(which(r, "GET", "/both"), 1);
    /* A HEAD route does not answer GET. */
    assert_int_equal(match(r, "GET", "/only-head", &m), ROUTER_METHOD_NOT_ALLOWED);
    assert_int_equal(m.allow, 1u << 1);
    /* Path specificity comes before the method. */
    assert_int_equal(which(r, "HEAD", "/a/b"), 5);
    assert_int_equal(which(r, "HEAD", "/a/c"), 4);
    assert_int_equal(which(r, "GET", "/a/c"), -ROUTER_METHOD_NOT_ALLOWED);
    router_free(r);
}

/* A "*" route takes every method, those outside the list too; a route of the request's own
 * method, then a GET route for HEAD, beat it on the same path. */
static void
test_any_method(void **state)
{
    struct router *r = router_new();
    struct router_match m;

    (void)state;
    add_ok(r, "*", "/*", &d[0]);
    add_ok(r, "GET", "/x", &d[1]);
    add_ok(r, "*", "/x", &d[2]);
    add_ok(r, "POST", "/x", &d[3]);
    add_fails(r, "*", "/x", "duplicate route \"* /x\": same as \"* /x\"");

    assert_int_equal(which(r, "FOO", "/anything/at/all"), 0);
    assert_int_equal(which(r, "DELETE", "/"), 0);
    assert_int_equal(match(r, "GET", "/a/b?c=1", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[0]);
    assert_int_equal(m.nparams, 1);
    assert_memory_equal(m.params[0].value, "a/b", 3);
    assert_int_equal(which(r, "GET", "/x"), 1);
    assert_int_equal(which(r, "HEAD", "/x"), 1); /* GET for HEAD before * */
    assert_int_equal(which(r, "POST", "/x"), 3);
    assert_int_equal(which(r, "PUT", "/x"), 2);
    assert_int_equal(which(r, "FOO", "/x"), 2);
    router_free(r);

    /* With a "*" route on a path, no method is refused there. */
    r = router_new();
    add_ok(r, "*", "/only", &d[4]);
    assert_int_equal(match(r, "OPTIONS", "/only", &m), ROUTER_FOUND);
    assert_int_equal(m.allow, (1u << router_nmethods) - 1);
    assert_int_equal(which(r, "GET", "/other"), -ROUTER_NOT_FOUND);
    router_free(r);
}

static void
test_too_many_params(void **state)
{
    struct router *r = router_new();
    struct router_match m;
    char pat[512] = "", path[512] = "";

    (void)state;
    for (int i = 0; i < ROUTER_MAX_PARAMS; i++) {
        snprintf(pat + strlen(pat), sizeof(pat) - strlen(pat), "/{p%d}", i);
        snprintf(path + strlen(path), sizeof(path) - strlen(path), "/v%d", i);
    }
    add_ok(r, "GET", pat, &d[0]);
    assert_int_equal(match(r, "GET", path, &m), ROUTER_FOUND);
    assert_int_equal(m.nparams, ROUTER_MAX_PARAMS);
    assert_string_equal(m.params[15].name, "p15");
    assert_int_equal(m.params[15].len, 3);
    assert_memory_equal(m.params[15].value, "v15", 3);
    assert_string_equal(m.params[0].name, "p0");
    assert_memory_equal(m.params[0].value, "v0", 2);

    char more[600];
    snprintf(more, sizeof(more), "%s/{p16}", pat);
    add_fails(r, "GET", more, "too many parameters (at most 16)");
    snprintf(more, sizeof(more), "%s/*", pat);
    add_fails(r, "GET", more, "too many parameters (at most 16)");
    /* Literals do not count. */
    snprintf(more, sizeof(more), "/lit%s/lit", pat);
    add_ok(r, "GET", more, &d[1]);
    router_free(r);
}

static void
test_add_errors(void **state)
{
    struct router *r = router_new();

    (void)state;
    add_fails(r, "FOO", "/a",
              "unknown method \"FOO\" (use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS or *)");
    add_fails(r, "get", "/a",
              "unknown method \"get\" (use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS or *)");
    add_fails(r, "GET", "api", "pattern \"api\" must start with '/'");
    add_fails(r, "GET", "", "pattern \"\" must start with '/'");
    add_fails(r, "GET", "/a//b", "empty segment (\"//\"): only a trailing '/' may be empty");
    add_fails(r, "GET", "//", "empty segment (\"//\"): only a trailing '/' may be empty");
    add_fails(r, "GET", "/a/*/b", "'*' must be the last segment");
    add_fails(r, "GET", "/*/", "'*' must be the last segment");
    add_fails(r, "GET", "/a/b*",
              "'*' in segment \"b*\": parameters are whole segments \"{name}\", '*' a whole last "
              "segment (write %7B, %7D, %2A for the bytes)");
    add_fails(r, "GET", "/a/x{id}",
              "'{' in segment \"x{id}\": parameters are whole segments \"{name}\", '*' a whole "
              "last segment (write %7B, %7D, %2A for the bytes)");
    add_fails(r, "GET", "/a/id}",
              "'}' in segment \"id}\": parameters are whole segments \"{name}\", '*' a whole last "
              "segment (write %7B, %7D, %2A for the bytes)");
    add_fails(r, "GET", "/a/{id", "parameter \"{id\" must be a whole segment \"{name}\"");
    add_fails(r, "GET", "/a/{id}x", "parameter \"{id}x\" must be a whole segment \"{name}\"");
    add_fails(r, "GET", "/a/{}", "empty parameter name \"{}\"");
    add_fails(r, "GET", "/a/{i.d}",
              "bad parameter name \"{i.d}\": names use letters, digits, '_' and '-'");
    add_fails(r, "GET", "/a/{{id}}",
              "bad parameter name \"{{id}}\": names use letters, digits, '_' and '-'");
    add_fails(r, "GET", "/a/{id}/b/{id}", "duplicate parameter \"{id}\"");
    add_fails(r, "GET", "/a%zz", "bad percent-encoding in segment \"a%zz\"");
    add_fails(r, "GET", "/a%4", "bad percent-encoding in segment \"a%4\"");
    add_fails(r, "GET", "/a%00", "bad percent-encoding in segment \"a%00\"");
    add_fails(r, "GET", "/a b", "bad character 0x20 in segment \"a b\"");
    add_fails(r, "GET", "/a#b", "bad character 0x23 in segment \"a#b\"");
    add_fails(r, "GET", "/a\x7f", "bad character 0x7f in segment \"a\x7f\"");
    add_fails(r, "GET", "/caf\xc3\xa9", "bad character 0xc3 in segment \"caf\xc3\xa9\"");
    add_fails(r, "GET", "/a?", "empty query after '?'");
    add_fails(r, "GET", "/a?type", "pinned query parameter \"type\" needs a value (name=value)");
    add_fails(r, "GET", "/a?=x", "pinned query parameter \"=x\" has no name");
    add_fails(r, "GET", "/a?x=1&&y=2", "empty parameter in pinned query \"x=1&&y=2\"");
    add_fails(r, "GET", "/a?x=1&", "empty parameter in pinned query \"x=1&\"");
    add_fails(r, "GET", "/a?&x=1", "empty parameter in pinned query \"&x=1\"");
    add_fails(r, "GET", "/a?x=1&x=2", "pinned query parameter \"x\" given twice");
    add_fails(r, "GET", "/a?x=1&%78=1", "pinned query parameter \"x\" given twice");
    add_fails(r, "GET", "/a?x=%zz", "bad percent-encoding in pinned query parameter \"x=%zz\"");
    add_fails(r, "GET", "/a?x=%00", "bad percent-encoding in pinned query parameter \"x=%00\"");
    add_fails(r, "GET", "/a?x=a b", "bad character 0x20 in pinned query \"x=a b\"");
    add_fails(r, "GET", "/a?x=1#f", "bad character 0x23 in pinned query \"x=1#f\"");
    /* Nothing was added by the failures; no error buffer is fine. */
    assert_int_equal(which(r, "GET", "/a"), -ROUTER_NOT_FOUND);
    assert_int_equal(router_add(r, "GET", "/a//", &d[0], NULL, 0), -1);
    router_free(r);
}

static void
test_duplicates(void **state)
{
    struct router *r = router_new();

    (void)state;
    add_ok(r, "GET", "/users/{id}", &d[0]);
    add_fails(r, "GET", "/users/{uid}",
              "duplicate route \"GET /users/{uid}\": same as \"GET /users/{id}\"");
    add_ok(r, "POST", "/users/{id}", &d[1]);
    add_ok(r, "HEAD", "/users/{id}", &d[2]);
    add_ok(r, "GET", "/users/{id}/", &d[3]);
    add_ok(r, "GET", "/users/me", &d[4]);
    add_ok(r, "GET", "/users/*", &d[5]);
    add_fails(r, "GET", "/users/m%65",
              "duplicate route \"GET /users/m%65\": same as \"GET /users/me\"");

    add_ok(r, "GET", "/crm?a=1&b=2", &d[6]);
    add_fails(r, "GET", "/crm?b=2&a=1",
              "duplicate route \"GET /crm?b=2&a=1\": same as \"GET /crm?a=1&b=2\"");
    add_ok(r, "GET", "/crm?type=contacts", &d[7]);
    add_fails(r, "GET", "/crm?type=cont%61cts",
              "duplicate route \"GET /crm?type=cont%61cts\": same as \"GET /crm?type=contacts\"");
    add_ok(r, "GET", "/crm?type=deals", &d[8]);
    add_ok(r, "GET", "/crm", &d[9]);
    /* Same shape, same number of pins, a request can satisfy both: ambiguous. */
    add_fails(r, "GET", "/crm?view=full",
              "route \"GET /crm?view=full\" is ambiguous with \"GET /crm?type=contacts\": one "
              "request can match both; pin the same parameters on both");
    add_fails(r, "GET", "/crm?a=1&c=3",
              "route \"GET /crm?a=1&c=3\" is ambiguous with \"GET /crm?a=1&b=2\": one request "
              "can match both; pin the same parameters on both");
    add_ok(r, "GET", "/crm?a=2&c=3", &d[10]); /* a=2 never meets a=1 */

    assert_int_equal(which(r, "GET", "/users/me"), 4);
    assert_int_equal(which(r, "GET", "/users/7"), 0);
    assert_int_equal(which(r, "GET", "/users/7/"), 3);
    assert_int_equal(which(r, "GET", "/users/7/x"), 5);
    assert_int_equal(which(r, "GET", "/crm?b=2&a=1"), 6);
    assert_int_equal(which(r, "GET", "/crm?c=3&a=2"), 10);
    assert_int_equal(which(r, "GET", "/crm?type=deals"), 8);
    assert_int_equal(which(r, "GET", "/crm?a=1"), 9);
    router_free(r);
}

static void
test_no_query(void **state)
{
    struct router *r = router_new();
    struct router_match m;

    (void)state;
    add_ok(r, "GET", "/a?x=1", &d[0]);
    add_ok(r, "GET", "/a", &d[1]);
    assert_int_equal(router_match(r, "GET", 3, "/a", 2, NULL, 0, &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[1]);
    /* Lengths are honoured: bytes past plen and qlen are not looked at. */
    assert_int_equal(router_match(r, "GETX", 3, "/a/b", 2, "x=12", 3, &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[0]);
    router_free(r);
    router_free(NULL);
}

/* ---- trie walks: answers a walk that stops at the first leaf it reaches would get wrong --- */

static void
test_literal_dead_end_falls_back(void **state)
{
    struct router *r = router_new();
    struct router_match m;

    (void)state;
    add_ok(r, "GET", "/a/b/c", &d[0]);
    add_ok(r, "GET", "/{x}/b/d", &d[1]);
    add_ok(r, "GET", "/{x}/*", &d[2]);
    add_ok(r, "GET", "/k/{y}/c", &d[3]);
    add_ok(r, "GET", "/k/*", &d[4]);
    add_ok(r, "GET", "/n/{y}", &d[5]);
    add_ok(r, "GET", "/n/*", &d[6]);

    /* The literal branch a/b has no "d": back up to {x}, whose b/d matches. */
    assert_int_equal(match(r, "GET", "/a/b/d", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[1]);
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.params[0].name, "x");
    assert_memory_equal(m.params[0].value, "a", 1);
    /* Neither a/b/... nor {x}/b/... has "e": the wildcard under {x} answers. */
    assert_int_equal(match(r, "GET", "/a/b/e", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[2]);
    assert_int_equal(m.nparams, 2);
    assert_memory_equal(m.params[1].value, "b/e", 3);
    /* A path longer than a/b/c: only the wildcard covers it. */
    assert_int_equal(which(r, "GET", "/a/b/c/d"), 2);
    /* The {param} branch ends without the last segment: the wildcard beside it answers. */
    assert_int_equal(which(r, "GET", "/k/1/c"), 3);
    assert_int_equal(which(r, "GET", "/k/1/x"), 4);
    /* {param} takes no empty segment, "*" does. */
    assert_int_equal(which(r, "GET", "/n/1"), 5);
    assert_int_equal(which(r, "GET", "/n/"), 6);
    /* The literal first segment decides: k and its wildcard over {x}/b/d. */
    assert_int_equal(which(r, "GET", "/k/b/d"), 4);
    assert_int_equal(which(r, "GET", "/z/b/c"), 2);
    assert_int_equal(match(r, "GET", "/z", &m), ROUTER_NOT_FOUND);
    assert_int_equal(m.allow, 0);
    router_free(r);
}

static void
test_leaf_without_the_method_falls_back(void **state)
{
    struct router *r = router_new();
    struct router_match m;
    char allow[128];

    (void)state;
    add_ok(r, "GET", "/a/b", &d[0]);
    add_ok(r, "POST", "/{x}/b", &d[1]);
    add_ok(r, "DELETE", "/a/*", &d[2]);
    add_ok(r, "GET", "/p/q?t=1", &d[3]);
    add_ok(r, "GET", "/{x}/q", &d[4]);
    add_ok(r, "*", "/s/t", &d[5]);
    add_ok(r, "GET", "/{x}/t", &d[6]);

    /* The literal leaf has no POST route: the {param} leaf answers, and allow names every
     * method of every leaf that matches the path. */
    assert_int_equal(match(r, "POST", "/a/b", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[1]);
    allow_string(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "GET, HEAD, POST, DELETE");
    assert_int_equal(which(r, "DELETE", "/a/b"), 2);
    assert_int_equal(match(r, "GET", "/a/b", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[0]);
    allow_string(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "GET, HEAD, POST, DELETE");
    assert_int_equal(match(r, "PUT", "/a/b", &m), ROUTER_METHOD_NOT_ALLOWED);
    allow_string(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "GET, HEAD, POST, DELETE");
    /* The literal leaf's pins do not hold: the {param} leaf answers. */
    assert_int_equal(which(r, "GET", "/p/q?t=1"), 3);
    assert_int_equal(which(r, "GET", "/p/q?t=2"), 4);
    assert_int_equal(which(r, "GET", "/p/q"), 4);
    /* A "*" route in the literal leaf beats the method's own route in a {param} leaf. */
    assert_int_equal(which(r, "GET", "/s/t"), 5);
    assert_int_equal(which(r, "BREW", "/s/t"), 5);
    assert_int_equal(which(r, "GET", "/u/t"), 6);
    router_free(r);
}

/* Routes that branch on every segment, literal or {param}: the walk enters each node once. */
static void
test_every_branch_once(void **state)
{
    struct router *r = router_new();
    char pat[64], path[64];
    static int data[1 << 10];
    struct router_match m;

    (void)state;
    /* Every route of 10 segments, each "a" or {pN}: 1,024 routes, one per mask. */
    for (int mask = 0; mask < 1 << 10; mask++) {
        size_t len = 0;
        for (int i = 0; i < 10; i++)
            len += (size_t)snprintf(pat + len, sizeof(pat) - len, (mask >> i) & 1 ? "/{p%d}" : "/a",
                                    i);
        add_ok(r, "GET", pat, &data[mask]);
    }
    /* Every one of them matches "/a/a/.../a"; the all-literal one is the most specific. */
    assert_int_equal(match(r, "GET", "/a/a/a/a/a/a/a/a/a/a", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &data[0]);
    assert_int_equal(m.nparams, 0);
    /* A "b" where a route has "a" leaves only the routes with a {param} there; of those, the
     * one with literals everywhere else. */
    for (int i = 0; i < 10; i++) {
        size_t len = 0;
        for (int j = 0; j < 10; j++)
            len += (size_t)snprintf(path + len, sizeof(path) - len, "/%s", j == i ? "b" : "a");
        assert_int_equal(match(r, "GET", path, &m), ROUTER_FOUND);
        assert_ptr_equal(m.data, &data[1 << i]);
        assert_int_equal(m.nparams, 1);
    }
    router_free(r);
}

/* A path of 100,000 segments: the walk goes no deeper than the routes. */
static void
test_path_with_many_segments(void **state)
{
    struct router *r = router_new();
    struct router_match m;
    size_t n = 100000, plen = 2 * n;
    char *path = malloc(plen + 1);

    (void)state;
    assert_non_null(path);
    for (size_t i = 0; i < n; i++)
        memcpy(path + 2 * i, "/a", 2);
    path[plen] = '\0';
    add_ok(r, "GET", "/a/a/{x}", &d[0]);
    add_ok(r, "GET", "/{x}/{y}/{z}/{w}", &d[1]);
    assert_int_equal(router_match(r, "GET", 3, path, plen, NULL, 0, &m), ROUTER_NOT_FOUND);
    add_ok(r, "GET", "/a/{x}/*", &d[2]);
    assert_int_equal(router_match(r, "GET", 3, path, plen, NULL, 0, &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &d[2]);
    assert_int_equal(m.nparams, 2);
    assert_int_equal(m.params[1].len, plen - 5);
    free(path);
    router_free(r);
}

/* 10,000 routes: each path finds its own; 2,000 pinned values on one path; conflicts found
 * among them. */
static void
test_ten_thousand_routes(void **state)
{
    static int data[10000];
    struct router *r = router_new();
    char pat[128], target[128], err[256];

    (void)state;
    for (int i = 0; i < 10000; i++) {
        switch (i % 5) {
        case 0:
            snprintf(pat, sizeof(pat), "/api/r%d", i);
            break;
        case 1:
            snprintf(pat, sizeof(pat), "/api/r%d/{id}", i);
            break;
        case 2:
            snprintf(pat, sizeof(pat), "/t/{tenant}/r%d/*", i);
            break;
        case 3:
            snprintf(pat, sizeof(pat), "/search?type=t%d", i);
            break;
        default:
            snprintf(pat, sizeof(pat), "/api/r%d/{id}/items", i - 3);
            break;
        }
        add_ok(r, i % 5 == 4 ? "POST" : "GET", pat, &data[i]);
    }
    for (int i = 0; i < 10000; i++) {
        const char *method = i % 5 == 4 ? "POST" : "GET";
        switch (i % 5) {
        case 0:
            snprintf(target, sizeof(target), "/api/r%d", i);
            break;
        case 1:
            snprintf(target, sizeof(target), "/api/r%d/7", i);
            break;
        case 2:
            snprintf(target, sizeof(target), "/t/acme/r%d/x/y", i);
            break;
        case 3:
            snprintf(target, sizeof(target), "/search?q=1&type=t%d", i);
            break;
        default:
            snprintf(target, sizeof(target), "/api/r%d/7/items", i - 3);
            break;
        }
        struct router_match m;
        if (match(r, method, target, &m) != ROUTER_FOUND || m.data != &data[i])
            fail_msg("%s %s did not find route %d", method, target, i);
    }
    assert_int_equal(which(r, "GET", "/search?type=t4"), -ROUTER_NOT_FOUND);
    assert_int_equal(which(r, "POST", "/api/r0"), -ROUTER_METHOD_NOT_ALLOWED);
    assert_int_equal(router_add(r, "GET", "/search?type=t%39993", &d[0], err, sizeof(err)), -1);
    assert_string_equal(err, "duplicate route \"GET /search?type=t%39993\": same as \"GET "
                             "/search?type=t9993\"");
    assert_int_equal(router_add(r, "GET", "/search?kind=k", &d[0], err, sizeof(err)), -1);
    assert_string_equal(err, "route \"GET /search?kind=k\" is ambiguous with \"GET "
                             "/search?type=t3\": one request can match both; pin the same "
                             "parameters on both");
    add_ok(r, "POST", "/search?kind=k", &d[0]);
    router_free(r);
}

/* ---- the rule as the header states it, against random tables ------------------------------ */

/* A route of the model: segments from a small alphabet, pins from a small one. */
struct mroute {
    const char *method; /* "GET", "HEAD", "POST" or "*" */
    int nsegs;
    char kind[6];        /* 'L', 'P', 'W' */
    const char *text[6]; /* a literal's text */
    int npins;
    const char *pname[3], *pval[3];
    char pattern[128];
    int added;
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static unsigned
rnd(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

/* A random route; a dense one has one or two segments and a method of two, so that tables
 * of them have many conflicts. */
static void
random_route(struct mroute *rt, int dense)
{
    static const char *methods[] = {"GET", "GET", "HEAD", "POST", "*"};
    static const char *lits[] = {"a", "b", "a"};
    static const char *names[] = {"x", "y", "x"};
    static const char *vals[] = {"1", "2"};
    size_t len;

    memset(rt, 0, sizeof(*rt));
    rt->method = dense ? methods[rnd(2) * 4] : methods[rnd(5)];
    rt->nsegs = 1 + (int)rnd(dense ? 2 : 3);
    len = 0;
    for (int i = 0; i < rt->nsegs; i++) {
        int last = i == rt->nsegs - 1, k = (int)rnd(last ? 8 : 6);
        if (k < 3) {
            rt->kind[i] = 'L';
            rt->text[i] = lits[k];
        } else if (k < 6) {
            rt->kind[i] = 'P';
        } else if (k == 6) {
            rt->kind[i] = 'W';
        } else {
            rt->kind[i] = 'L';
            rt->text[i] = ""; /* a trailing slash */
        }
        if (rt->kind[i] == 'L')
            len +=
                (size_t)snprintf(rt->pattern + len, sizeof(rt->pattern) - len, "/%s", rt->text[i]);
        else if (rt->kind[i] == 'P')
            len += (size_t)snprintf(rt->pattern + len, sizeof(rt->pattern) - len, "/{p%d}", i);
        else
            len += (size_t)snprintf(rt->pattern + len, sizeof(rt->pattern) - len, "/*");
    }
    for (int i = 0, n = (int)rnd(3); i < n; i++) {
        const char *name = names[rnd(3)];
        int dup = 0;
        for (int j = 0; j < rt->npins; j++)
            dup |= strcmp(rt->pname[j], name) == 0;
        if (dup)
            continue;
        rt->pname[rt->npins] = name;
        rt->pval[rt->npins] = vals[rnd(2)];
        len += (size_t)snprintf(rt->pattern + len, sizeof(rt->pattern) - len, "%c%s=%s",
                                rt->npins ? '&' : '?', name, rt->pval[rt->npins]);
        rt->npins++;
    }
}

static const char *
pin_of(const struct mroute *rt, const char *name)
{
    for (int i = 0; i < rt->npins; i++)
        if (strcmp(rt->pname[i], name) == 0)
            return rt->pval[i];
    return NULL;
}

/* router_add's conflict rule: same method and shape, then equal pins, or as many pins and
 * none pinned to two values. Returns the first earlier route in conflict, or NULL; *dup says
 * which kind. */
static const struct mroute *
model_conflict(const struct mroute *routes, int n, const struct mroute *rt, int *dup)
{
    for (int i = 0; i < n; i++) {
        const struct mroute *o = &routes[i];
        int same = o->added && strcmp(o->method, rt->method) == 0 && o->nsegs == rt->nsegs;
        for (int s = 0; same && s < rt->nsegs; s++)
            same = o->kind[s] == rt->kind[s] &&
                   (o->kind[s] != 'L' || strcmp(o->text[s], rt->text[s]) == 0);
        if (!same || o->npins != rt->npins)
            continue;
        int equal = 1, compatible = 1;
        for (int p = 0; p < rt->npins; p++) {
            const char *v = pin_of(o, rt->pname[p]);
            equal &= v != NULL && strcmp(v, rt->pval[p]) == 0;
            compatible &= v == NULL || strcmp(v, rt->pval[p]) == 0;
        }
        if (equal || compatible) {
            *dup = equal;
            return o;
        }
    }
    return NULL;
}

/* A request of the model: decoded segments, and the raw path and query. */
struct mreq {
    int nsegs;
    const char *seg[6]; /* decoded */
    char path[64], query[64];
    const char *qname[4], *qval[4];
    int nq;
};

static void
random_request(struct mreq *q)
{
    static const char *raw[] = {"a", "b", "c", "", "%61", "zz"};
    static const char *dec[] = {"a", "b", "c", "", "a", "zz"};
    static const char *names[] = {"x", "y", "z", "w"};
    static const char *vals[] = {"1", "2", "3"};
    size_t len = 0;

    memset(q, 0, sizeof(*q));
    q->nsegs = 1 + (int)rnd(5);
    for (int i = 0; i < q->nsegs; i++) {
        int k = (int)rnd(6);
        q->seg[i] = dec[k];
        len += (size_t)snprintf(q->path + len, sizeof(q->path) - len, "/%s", raw[k]);
    }
    len = 0;
    q->nq = (int)rnd(4);
    for (int i = 0; i < q->nq; i++) {
        q->qname[i] = names[rnd(4)];
        q->qval[i] = vals[rnd(3)];
        len += (size_t)snprintf(q->query + len, sizeof(q->query) - len, "%s%s=%s", i ? "&" : "",
                                q->qname[i], q->qval[i]);
    }
}

static int
model_matches(const struct mroute *rt, const struct mreq *q)
{
    int wild = rt->kind[rt->nsegs - 1] == 'W';
    if (wild ? q->nsegs < rt->nsegs : q->nsegs != rt->nsegs)
        return 0;
    for (int i = 0; i < rt->nsegs; i++) {
        if (rt->kind[i] == 'L' && strcmp(rt->text[i], q->seg[i]) != 0)
            return 0;
        if (rt->kind[i] == 'P' && q->seg[i][0] == '\0')
            return 0;
    }
    for (int p = 0; p < rt->npins; p++) {
        const char *v = NULL;
        for (int i = 0; i < q->nq && v == NULL; i++)
            if (strcmp(q->qname[i], rt->pname[p]) == 0)
                v = q->qval[i];
        if (v == NULL || strcmp(v, rt->pval[p]) != 0)
            return 0;
    }
    return 1;
}

static int
model_method_index(const char *m)
{
    for (size_t i = 0; i < router_nmethods; i++)
        if (strcmp(router_methods[i], m) == 0)
            return (int)i;
    return -1;
}

static int
model_fit(const struct mroute *rt, const char *method)
{
    if (strcmp(rt->method, "*") == 0)
        return 0;
    return strcmp(rt->method, method) == 0 ? 2 : 1;
}

/* router.h's rule: literal before {param} before *, segment by segment from the left; then
 * more pins; then the request's own method, GET for HEAD, "*". */
static int
model_beats(const struct mroute *a, const struct mroute *b, const char *method)
{
    static const char order[] = "LPW";
    int n = a->nsegs < b->nsegs ? a->nsegs : b->nsegs;
    for (int i = 0; i < n; i++)
        if (a->kind[i] != b->kind[i])
            return strchr(order, a->kind[i]) < strchr(order, b->kind[i]);
    if (a->nsegs != b->nsegs)
        return a->nsegs > b->nsegs;
    if (a->npins != b->npins)
        return a->npins > b->npins;
    return model_fit(a, method) > model_fit(b, method);
}

static void
test_matches_the_rule_on_random_tables(void **state)
{
    static const char *methods[] = {"GET", "HEAD", "POST", "PUT", "BREW"};
    struct mroute routes[12];
    int dups = 0, ambiguous = 0, found = 0, refused = 0;

    (void)state;
    for (int t = 0; t < 5000; t++) {
        struct router *r = router_new();
        int n = 1 + (int)rnd(12);
        for (int i = 0; i < n; i++) {
            char err[256] = "", want[512];
            int dup = 0;
            random_route(&routes[i], t % 2);
            const struct mroute *o = model_conflict(routes, i, &routes[i], &dup);
            int rc =
                router_add(r, routes[i].method, routes[i].pattern, &routes[i], err, sizeof(err));
            if (o == NULL) {
                if (rc != 0)
                    fail_msg("%s %s: %s", routes[i].method, routes[i].pattern, err);
                routes[i].added = 1;
                continue;
            }
            dups += dup;
            ambiguous += !dup;
            if (dup)
                snprintf(want, sizeof(want), "duplicate route \"%s %s\": same as \"%s %s\"",
                         routes[i].method, routes[i].pattern, o->method, o->pattern);
            else
                snprintf(want, sizeof(want),
                         "route \"%s %s\" is ambiguous with \"%s %s\": one request can match "
                         "both; pin the same parameters on both",
                         routes[i].method, routes[i].pattern, o->method, o->pattern);
            assert_int_equal(rc, -1);
            assert_string_equal(err, want);
        }
        for (int k = 0; k < 40; k++) {
            struct mreq q;
            struct router_match m;
            const char *method = methods[rnd(5)];
            int mi = model_method_index(method);
            const struct mroute *best = NULL;
            unsigned allow = 0;

            random_request(&q);
            for (int i = 0; i < n; i++) {
                const struct mroute *rt = &routes[i];
                if (!rt->added || !model_matches(rt, &q))
                    continue;
                int any = strcmp(rt->method, "*") == 0, ri = model_method_index(rt->method);
                allow |= any ? (1u << router_nmethods) - 1 : 1u << ri;
                if (ri == 0)
                    allow |= 1u << 1;
                if (!any && !(mi >= 0 && (ri == mi || (mi == 1 && ri == 0))))
                    continue;
                if (best == NULL || model_beats(rt, best, method))
                    best = rt;
            }
            enum router_result res = router_match(r, method, strlen(method), q.path, strlen(q.path),
                                                  q.query, strlen(q.query), &m);
            if (m.data != best || m.allow != allow)
                fail_msg("%s %s?%s: got %s (allow %#x), want %s (allow %#x)", method, q.path,
                         q.query, m.data ? ((struct mroute *)m.data)->pattern : "none", m.allow,
                         best ? best->pattern : "none", allow);
            assert_int_equal(res, best    ? ROUTER_FOUND
                                  : allow ? ROUTER_METHOD_NOT_ALLOWED
                                          : ROUTER_NOT_FOUND);
            refused += res == ROUTER_METHOD_NOT_ALLOWED;
            if (best == NULL)
                continue;
            found++;
            /* The captures: each {param} its raw segment, "*" the rest of the raw path. */
            size_t np = 0, pos = 1;
            for (int s = 0; s < best->nsegs; s++) {
                const char *seg = q.path + pos, *slash = strchr(seg, '/');
                size_t slen = slash ? (size_t)(slash - seg) : strlen(seg);
                if (best->kind[s] == 'L') {
                    pos += slen + 1;
                    continue;
                }
                assert_true(np < m.nparams);
                if (best->kind[s] == 'W') {
                    assert_string_equal(m.params[np].name, "*");
                    assert_int_equal(m.params[np].len, strlen(q.path) - pos);
                    assert_ptr_equal(m.params[np].value, q.path + pos);
                } else {
                    assert_int_equal(m.params[np].len, slen);
                    assert_ptr_equal(m.params[np].value, seg);
                }
                np++;
                pos += slen + 1;
            }
            assert_int_equal(m.nparams, np);
        }
        router_free(r);
    }
    print_message("%d duplicates, %d ambiguous, %d found, %d refused\n", dups, ambiguous, found,
                  refused);
    /* The tables did exercise conflicts and answers. */
    assert_true(dups > 300);
    assert_true(ambiguous > 100);
    assert_true(found > 20000);
    assert_true(refused > 5000);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_methods_table),
        cmocka_unit_test(test_literal_and_param),
        cmocka_unit_test(test_priority),
        cmocka_unit_test(test_wildcard),
        cmocka_unit_test(test_trailing_slash_and_empty_segments),
        cmocka_unit_test(test_percent_encoding),
        cmocka_unit_test(test_pins),
        cmocka_unit_test(test_404_405),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_any_method),
        cmocka_unit_test(test_too_many_params),
        cmocka_unit_test(test_add_errors),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_no_query),
        cmocka_unit_test(test_literal_dead_end_falls_back),
        cmocka_unit_test(test_leaf_without_the_method_falls_back),
        cmocka_unit_test(test_every_branch_once),
        cmocka_unit_test(test_path_with_many_segments),
        cmocka_unit_test(test_ten_thousand_routes),
        cmocka_unit_test(test_matches_the_rule_on_random_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
