/* policy_compile.h - reading the normalized set's Lua tables into a snapshot; for policy/ only. */
#ifndef SLUICE_POLICY_COMPILE_H
#define SLUICE_POLICY_COMPILE_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"

struct sbuf;
struct template;

/*
 * One compilation into p. Every reader below works on the table at the top
 * of L and leaves the stack as it found it.
 */
struct compile {
    lua_State *L;      /* the loader's state */
    struct policy *p;  /* the snapshot being compiled */
    struct sbuf *errs; /* "file:line: message" lines */
    const char *file;  /* of the declaration being compiled (borrowed), NULL: "?" */
    int line;
    const char *dir; /* the policy directory (borrowed): files the policy names are in it */
};

/* Adds "file:line: message" of the current declaration to c->errs. */
void cerr(struct compile *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Returns the string field `name` (new; *len gets its length when len is not NULL), or NULL. */
char *field_lstr(lua_State *L, const char *name, size_t *len);

/* Returns the string field `name` (new), or NULL. */
char *field_str(lua_State *L, const char *name);

/* Returns the number field `name` as an integer, or dflt. */
int64_t field_int(lua_State *L, const char *name, int64_t dflt);

/* Returns the truth of field `name` (nil and false are false). */
bool field_bool(lua_State *L, const char *name);

/*
 * Returns the field "mode" of the limit or tier at the top: true for "shadow", false for
 * "enforce", dflt when absent; another value is an error added to c (and dflt returned).
 */
bool field_shadow(struct compile *c, bool dflt);

/* Takes c->file and c->line from the fields file and line of the table at the top. */
void set_location(struct compile *c);

/* Returns the compiled template src (new), or NULL with an error naming `what` added to c. */
struct template *compile_template(struct compile *c, const char *src, unsigned allowed,
                                  const char *what);

/*
 * Returns the compiled list of template strings in field `name` (new array
 * of new templates, *n of them); a template that does not compile is left
 * out and its error added to c. A list longer than max (SIZE_MAX: no cap)
 * is an error too.
 */
struct template **field_templates(struct compile *c, const char *name, unsigned allowed, size_t max,
                                  size_t *n);

/* Returns the RateLimit-Policy item of rule r named name: "\"free\";q=100;w=3600" (new). */
char *policy_field(const char *name, const struct limiter_rule *r);

/*
 * Compiles the field "limits" into e->limits (new, owned by e's owner; free
 * with policy_limits_free); more than POLICY_MAX_LIMITS is an error. Returns
 * 0, or -1 with errors added to c.
 */
int compile_limits(struct compile *c, struct policy_endpoint *e);

/* Frees n limits and the array. */
void policy_limits_free(struct policy_limit *limits, size_t n);

/* ---- compress ---- */

/* Compiles the field "compress" of the endpoint table at the top (absent: off) into
 * e->compress; errors are added to c. */
void compile_compress(struct compile *c, struct policy_endpoint *e);

/* Frees what compile_compress() made and zeroes pc. */
void policy_compress_free(struct policy_compress *pc);

/* ---- the identity's credentials (policy_credentials.c) ---- */

/*
 * Compiles the field "jwt" of the identity table at the top (absent: nothing)
 * into c->p->identity.jwt, reading its key files from c->dir and adding each
 * to c->p->files with its hash. Keys a JWK set holds that sluice does not
 * verify with are reported on stderr. Errors are added to c.
 */
void compile_jwt(struct compile *c);

/* Frees a jwt block (NULL is a no-op). */
void policy_jwt_free(struct policy_jwt *j);

/* Compiles the field "api_key" of the identity table at the top (absent: nothing) into
 * c->p->identity.api_key; errors are added to c. */
void compile_api_key(struct compile *c);

/* Frees an api_key block (NULL is a no-op). */
void policy_api_key_free(struct policy_api_key *k);

/*
 * Reads the file `rel` of c->dir (at most max bytes) into a new buffer
 * (NUL-terminated, *len its length) and adds it to c->p->files. Returns it,
 * or NULL with an error naming `what` added to c.
 */
char *policy_read_file(struct compile *c, const char *rel, size_t max, size_t *len,
                       const char *what);

/* ---- an https upstream's TLS (policy_tls.c) ---- */

/*
 * Reads the fields tls, ca_file, cert_file and key_file of the upstream
 * table at the top into u and, for tls, builds u->ssl_ctx (new): TLS 1.2 or
 * later, the peer's chain verified against ca_file's certificates (read
 * from c->dir and added to c->p->files) or else the system's, the client
 * certificate and key when given. A file that cannot be read or used is an
 * error added to c (u->ssl_ctx stays NULL).
 */
void compile_upstream_tls(struct compile *c, struct policy_upstream *u);

/* Frees what compile_upstream_tls() set in u (the context: one reference). */
void policy_upstream_tls_free(struct policy_upstream *u);

/* ---- tenant files (tenant.c), compiled with the main set by policy.c ---- */

/*
 * Pushes the options table sluice.dsl.load takes, holding the last good
 * source of each tenant of `prev` (NULL: none). Raises on memory exhaustion.
 */
void tenant_push_load_options(lua_State *L, const struct policy *prev);

/*
 * Compiles set.tenants and set.tenant_errors of the normalized set at the
 * top of L into p->tenants (sorted by name) and p->tenant_errors (one
 * "file:line: message" line each, NULL when there are none). A tenant that
 * fails here is left out and its problem added to the tenant errors.
 */
void tenant_compile(lua_State *L, struct policy *p);

#endif
