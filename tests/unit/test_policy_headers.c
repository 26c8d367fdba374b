/* test_policy_headers.c - unit tests of an endpoint's compiled cors and header rules. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "policy_compile.h"
#include "policy_headers.h"
#include "template.h"
#include "util.h"

/* Compiles the normalized endpoint table `code` returns into e; returns the errors (new). */
static char *
compile(const char *code, struct policy_endpoint *e)
{
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    assert_int_equal(luaL_dostring(L, code), LUA_OK);
    struct policy p = {0};
    struct sbuf errs = {0};
    struct compile c = {.L = L, .p = &p, .errs = &errs, .file = "t.lua", .line = 1};
    policy_fields_compile(&c, e);
    lua_close(L);
    return errs.p;
}

/* Fetch standard, CORS protocol, "HTTP responses": the fixed lines of both kinds of answer. */
static void
test_cors_fixed_lines(void **state)
{
    (void)state;
    struct policy_endpoint e = {0};
    char *errs = compile("return { cors = { origins = { 'https://app.example.com' },"
                         " methods = { 'GET', 'POST' }, headers = { 'Content-Type' },"
                         " expose = { 'X-Cache', 'ETag' }, credentials = true, max_age_s = 600 } }",
                         &e);
    assert_null(errs);
    const struct policy_cors *c = e.fields.cors;
    assert_non_null(c);
    assert_string_equal(
        c->preflight,
        "Access-Control-Allow-Methods: GET, POST\r\n"
        "Access-Control-Allow-Headers: Content-Type\r\n"
        "Access-Control-Max-Age: 600\r\n"
        "Access-Control-Allow-Credentials: true\r\n"
        "Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n");
    assert_int_equal(c->preflight_len, strlen(c->preflight));
    assert_string_equal(c->actual, "Access-Control-Allow-Credentials: true\r\n"
                                   "Access-Control-Expose-Headers: X-Cache, ETag\r\n");
    assert_true(c->vary_origin);
    policy_fields_free(&e.fields);
    assert_null(e.fields.cors);
}

static void
test_cors_origins_and_methods(void **state)
{
    (void)state;
    struct policy_endpoint e = {0};
    assert_null(
        compile("return { cors = { origins = { 'https://a.example', 'http://b.example:8080' },"
                " methods = { 'GET' } } }",
                &e));
    const struct policy_cors *c = e.fields.cors;
    assert_true(policy_cors_allows(c, "https://a.example", 17));
    assert_true(policy_cors_allows(c, "HTTPS://A.EXAMPLE", 17));
    assert_true(policy_cors_allows(c, "http://b.example:8080", 21));
    assert_false(policy_cors_allows(c, "https://a.example.evil", 22));
    assert_false(policy_cors_allows(c, "https://a.exampl", 16));
    assert_false(policy_cors_allows(c, "http://b.example", 16));
    /* RFC 9110 9.1: methods are case-sensitive. */
    assert_true(policy_cors_method(c, "GET", 3));
    assert_false(policy_cors_method(c, "get", 3));
    assert_false(policy_cors_method(c, "POST", 4));
    policy_fields_free(&e.fields);

    assert_null(compile("return { cors = { any_origin = true } }", &e));
    c = e.fields.cors;
    assert_true(policy_cors_allows(c, "https://anything.example", 24));
    assert_true(policy_cors_method(c, "PATCH", 5)); /* none listed: the one asked, as routed */
    assert_false(c->vary_origin);
    assert_string_equal(c->actual, "");
    policy_fields_free(&e.fields);
}

static void
test_rules_name_lines(void **state)
{
    (void)state;
    struct policy_endpoint e = {0};
    assert_null(compile("return { response_headers = { { name = 'Cache-Control', value = 'x' },"
                        " { name = 'Server', remove = true } } }",
                        &e));
    const struct policy_header_rules *r = e.fields.response;
    assert_non_null(r);
    assert_int_equal(r->n, 2);
    assert_non_null(r->rules[0].value);
    assert_null(r->rules[1].value);
    assert_null(e.fields.request);
    const char *l1 = "server: origin/1\r\n", *l2 = "Servers: x\r\n", *l3 = "Server\r\n";
    assert_true(policy_rules_name(r, l1, strlen(l1)));
    assert_false(policy_rules_name(r, l2, strlen(l2)));
    assert_false(policy_rules_name(r, l3, strlen(l3)));
    assert_false(policy_rules_name(NULL, l1, strlen(l1)));
    const char *a = "access-control-allow-origin: *\r\n", *b = "Access-Control: x\r\n";
    assert_true(policy_line_is_cors(a, strlen(a)));
    assert_false(policy_line_is_cors(b, strlen(b)));
    policy_fields_free(&e.fields);
}

static void
test_rule_value_template_errors(void **state)
{
    (void)state;
    struct policy_endpoint e = {0};
    char *errs =
        compile("return { request_headers = { { name = 'X-A', value = '{body.x}' } } }", &e);
    assert_non_null(errs);
    assert_non_null(strstr(errs, "t.lua:1: request_headers \"{body.x}\""));
    free(errs);
    policy_fields_free(&e.fields);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cors_fixed_lines),
        cmocka_unit_test(test_cors_origins_and_methods),
        cmocka_unit_test(test_rules_name_lines),
        cmocka_unit_test(test_rule_value_template_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
