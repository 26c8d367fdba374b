/* policy_headers.h - an endpoint's CORS and header rules, compiled once per snapshot. */
#ifndef SLUICE_POLICY_HEADERS_H
#define SLUICE_POLICY_HEADERS_H

#include <stdbool.h>
#include <stddef.h>

struct template;

/* One header rule: the field set to a template's expansion, or removed. */
struct policy_header_rule {
    char *name; /* as written */
    size_t name_len;
    struct template *value; /* NULL: the field is removed */
};

/* request_headers or response_headers of an endpoint, its upstream's first (sorted by name). */
struct policy_header_rules {
    struct policy_header_rule *rules;
    size_t n;
};

/* cors = { ... } of an endpoint (its own or the set's), with the fixed parts of its fields. */
struct policy_cors {
    char **origins; /* "https://app.example.com", as written (lowercase) */
    size_t *origin_lens;
    size_t norigins;
    bool any_origin;  /* origins = "*" (never with credentials) */
    bool credentials; /* Access-Control-Allow-Credentials: true */
    bool headers_any; /* headers = "*": a preflight's requested headers are allowed */
    char **methods;   /* methods = { ... }, or NULL: the requested method, as routed */
    size_t nmethods;
    char *preflight; /* the fixed lines of an allowed preflight's answer (after -Allow-Origin): */
    size_t preflight_len; /* -Allow-Methods when listed, -Allow-Headers when listed, -Max-Age,
                             -Allow-Credentials, and Vary */
    char *actual;         /* the fixed lines of an actual answer to an allowed origin (after
                             -Allow-Origin): -Allow-Credentials, -Expose-Headers */
    size_t actual_len;
    bool vary_origin; /* answers depend on the Origin (a list of origins): "Vary: Origin" */
};

/* An endpoint's compiled fields; NULL pointers when it has none. */
struct policy_fields {
    struct policy_cors *cors;
    struct policy_header_rules *request; /* upstream endpoints only */
    struct policy_header_rules *response;
};

/* Whether origin[0..len) is one cors allows ("*" allows any; compared ignoring ASCII case). */
bool policy_cors_allows(const struct policy_cors *c, const char *origin, size_t len);

/* Whether method[0..len) is one a preflight may be answered for: listed in methods (exact, as
 * RFC 9110 9.1 methods are case-sensitive), or any when none are listed. */
bool policy_cors_method(const struct policy_cors *c, const char *method, size_t len);

/* Whether the field line line[0..len) ("Name: value\r\n") is named by a rule of r (set or
 * removed): the rules replace such a field. NULL r names none. */
bool policy_rules_name(const struct policy_header_rules *r, const char *line, size_t len);

/* Whether the field line is an Access-Control-* field (an upstream's own, which sluice drops
 * on an endpoint with cors). */
bool policy_line_is_cors(const char *line, size_t len);

struct compile;
struct policy_endpoint;

/*
 * Compiles the fields "cors", "request_headers" and "response_headers" of the normalized
 * endpoint table at the top of c->L into e->fields (new, freed by policy_fields_free); errors
 * are added to c. For policy/ only (policy.c).
 */
void policy_fields_compile(struct compile *c, struct policy_endpoint *e);

/* Frees what f holds (not f itself). */
void policy_fields_free(struct policy_fields *f);

#endif
