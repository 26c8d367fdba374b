/* router.h - compiled route table: method + path pattern + pinned query -> endpoint. */
#ifndef SLUICE_ROUTER_H
#define SLUICE_ROUTER_H

#include <stddef.h>

#define ROUTER_MAX_PARAMS 16

enum router_result {
    ROUTER_FOUND = 0,
    ROUTER_NOT_FOUND,          /* no route has this path: 404 */
    ROUTER_METHOD_NOT_ALLOWED, /* a route has the path, not the method: 405 */
};

struct router_param {
    const char *name;  /* borrowed from the router: "id", or "*" for a wildcard (the rest of
                          the path after the previous '/', possibly empty) */
    const char *value; /* points into the matched path, still percent-encoded */
    size_t len;
};

struct router_match {
    void *data; /* the route's data pointer */
    size_t nparams;
    struct router_param params[ROUTER_MAX_PARAMS];
    unsigned allow; /* bit (1u << method index) per method of the routes whose path and pins
                       match (a GET route adds HEAD too): the Allow header on
                       ROUTER_METHOD_NOT_ALLOWED; also set on ROUTER_FOUND, 0 on 404 */
};

struct router;

/* Returns a new, empty router (aborts when out of memory). */
struct router *router_new(void);

/* Frees the router and its routes (not their data pointers); NULL is a no-op. */
void router_free(struct router *r);

/*
 * Adds a route. `method` is "GET", "POST", ... (GET also answers HEAD), or
 * "*" for every method, those outside router_methods too;
 * `pattern` is a path with literal segments, "{name}" segments and a final
 * "*", optionally followed by "?k=v&k2=v2" pinned query parameters that must
 * be present with exactly these (decoded) values. `data` is borrowed.
 * Methods are case-sensitive, one of router_methods. A path is split on '/'
 * into segments; "/api/crm/" ends with an empty segment and is a different
 * path from "/api/crm". Empty segments are allowed only there (no "//"). A
 * {param} or "*" counts towards ROUTER_MAX_PARAMS; parameter names use
 * [A-Za-z0-9_-]. Returns 0, or -1 with a message in err (bad pattern,
 * duplicate route: same method, same segments with parameter names aside and
 * same pins; ambiguous route: same method and segments, as many pins, and
 * one query could satisfy both; duplicate parameter name, too many
 * parameters). A failed add leaves the router unchanged.
 */
int router_add(struct router *r, const char *method, const char *pattern, void *data, char *err,
               size_t errlen);

/*
 * Matches a request. `path` and `query` are raw (still percent-encoded;
 * query may be NULL when qlen is 0); segments are split on raw '/' and
 * literal segments are compared after decoding, so "a%2Fb" is one segment.
 * A {param} never matches an empty segment. A pin compares the decoded value
 * ('+' as space) of the first occurrence of its parameter. Among the routes
 * that match, the most specific wins: literal before {param} before *,
 * segment by segment from the left, then the route with more pinned query
 * parameters, then the route of the request's own method over a GET route
 * (for HEAD) over a "*" route. A path not
 * starting with '/' matches nothing. Allocates nothing; fills *m (params
 * point into `path`, names into the router).
 */
enum router_result router_match(const struct router *r, const char *method, size_t mlen,
                                const char *path, size_t plen, const char *query, size_t qlen,
                                struct router_match *m);

/* Method names in `allow` bit order, for building an Allow header. */
extern const char *const router_methods[];
extern const size_t router_nmethods;

#endif
