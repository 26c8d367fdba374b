/* test_policy_keys.c - a cache key read back to the endpoint whose template wrote it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway.h"
#include "policy.h"
#include "policy_keys.h"

/* Endpoints whose keys look alike: default keys (method, route, path parameters, caller),
 * declared keys that share a prefix, an upstream's default key (path and query), shared keys,
 * an endpoint that is not cached, and two that declare one key. */
static const char POLICY[] =
    "identity { user = header 'X-User-Id' }\n"
    "upstream 'app' { url = 'http://127.0.0.1:1' }\n"
    "endpoint 'GET /items/{id}' { body = '[]', cache = { ttl = '1m' } }\n"
    "endpoint 'GET /things/{id}' { body = '[]', cache = { ttl = '1m' } }\n"
    "endpoint 'GET /raw/{id}' { body = '[]' }\n"
    "endpoint 'GET /crm?type=contacts' { body = '[]',\n"
    "  cache = { ttl = '1m', key = 'crm:contacts:{user}' } }\n"
    "endpoint 'GET /crm?type=deals' { body = '[]', cache = { ttl = '1m', key = 'crm:deals:{user}' "
    "} }\n"
    "endpoint 'GET /dash' { body = '{}', cache = { ttl = '1m', key = 'crm:{user}' } }\n"
    "endpoint 'GET /app/*' { upstream = 'app', cache = { ttl = '1m' } }\n"
    "endpoint 'GET /pub/{file}' { body = '{}', cache = { ttl = '1m', key = 'pub:{path.file}',\n"
    "  shared = true } }\n"
    "endpoint 'GET /pub2/{file}' { body = '{}', cache = { ttl = '1m', key = 'pub:{path.file}',\n"
    "  shared = true } }\n";

static char dir[64];
static struct policy *P;

static int
setup(void **state)
{
    char path[128], *errors = NULL;

    snprintf(dir, sizeof(dir), "/tmp/sluice-keys-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof(path), "%s/00-main.lua", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(POLICY, f);
    fclose(f);
    P = policy_load(dir, 1, NULL, &errors);
    if (!P) {
        fprintf(stderr, "policy_load: %s\n", errors ? errors : "?");
        free(errors);
        return -1;
    }
    return 0;
}

static int
teardown(void **state)
{
    char cmd[128];

    policy_release(P);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The cache key the request path builds for `line` (as explain shows it); the caller frees it. */
static char *
key_of(const char *line, const char *user)
{
    char hdr[64], err[256];
    const char *headers[1] = {hdr};

    snprintf(hdr, sizeof(hdr), "X-User-Id: %s", user ? user : "");
    char *json = gateway_explain_request(P, line, headers, user ? 1 : 0, NULL, "10.0.0.1", NULL,
                                         err, sizeof(err));
    if (!json)
        fail_msg("explain %s: %s", line, err);
    json_t *o = json_loads(json, 0, NULL);
    free(json);
    assert_non_null(o);
    const char *k = json_string_value(json_object_get(json_object_get(o, "cache"), "key"));
    if (!k)
        fail_msg("explain %s: no cache key", line);
    char *key = strdup(k);
    json_decref(o);
    return key;
}

/* The name of the endpoint key belongs to, or "" for none. */
static const char *
route_of(const char *key)
{
    const struct policy_endpoint *ep = policy_key_endpoint(P, key, strlen(key));

    return ep ? ep->name : "";
}

static void
test_request_keys_come_back_to_their_endpoint(void **state)
{
    static const struct {
        const char *line, *user, *want;
    } cases[] = {
        {"GET /items/7", "42", "GET /items/{id}"},
        {"HEAD /items/7", "42", "GET /items/{id}"},
        {"GET /items/a%3Ab%20c", "u:1", "GET /items/{id}"},
        {"GET /items/7", NULL, "GET /items/{id}"},
        {"GET /things/7", "42", "GET /things/{id}"},
        {"GET /crm?type=contacts", "42", "GET /crm?type=contacts"},
        {"GET /crm?type=deals", "42", "GET /crm?type=deals"},
        {"GET /dash", "42", "GET /dash"},
        {"GET /app/x/y?b=2&a=1", "42", "GET /app/*"},
        {"GET /app/", NULL, "GET /app/*"},
        {"GET /pub/logo.png", NULL, "GET /pub/{file}"},
        /* One key declared twice: the first endpoint of the policy is named. */
        {"GET /pub2/logo.png", NULL, "GET /pub/{file}"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *key = key_of(cases[i].line, cases[i].user);
        if (strcmp(route_of(key), cases[i].want) != 0)
            fail_msg("%s: key \"%s\" read as \"%s\", want \"%s\"", cases[i].line, key,
                     route_of(key), cases[i].want);
        free(key);
    }
}

static void
test_other_keys_belong_to_none(void **state)
{
    char *items = key_of("GET /items/7", "42");

    (void)state;
    assert_string_equal(route_of("crm:contacts:42"), "GET /crm?type=contacts");
    assert_string_equal(route_of("crm:42"), "GET /dash");
    /* Values hold no ':' (escaping writes %3A): a key with one more part is no endpoint's. */
    assert_string_equal(route_of("crm:contacts:4:2"), "");
    assert_string_equal(route_of("crm:leads:42"), "");
    assert_string_equal(route_of("nothing:here"), "");
    assert_string_equal(route_of(""), "");
    /* The route in a default key is the endpoint's own: not cached, or unknown, is none. */
    assert_string_equal(route_of("GET:GET%20/raw/%7Bid%7D:7:42"), "");
    assert_string_equal(route_of("GET:GET%20/nope/%7Bid%7D:7:42"), "");
    /* Only GET (and HEAD, keyed as GET) is cached. */
    items[0] = 'P';
    assert_string_equal(route_of(items), "");
    free(items);
    /* A variant's key is read by its primary part, which the caller passes. */
    assert_string_equal(route_of("crm:42\x1f"
                                 "gzip"),
                        "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_keys_come_back_to_their_endpoint),
        cmocka_unit_test(test_other_keys_belong_to_none),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
