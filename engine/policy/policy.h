/* policy.h - a policy directory compiled into an immutable, refcounted snapshot. */
#ifndef SLUICE_POLICY_H
#define SLUICE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "identity.h"
#include "jwt.h"
#include "limiter.h"
#include "policy_headers.h"

struct template;
struct router;
struct tenant;

/*
 * What one endpoint may list at most: the request path keeps these in fixed
 * arrays per request. policy_load refuses a policy that lists more, as
 * `sluice check` does (lua/sluice/validate.lua, M.MAX_*).
 */
#define POLICY_MAX_LIMITS 8 /* limits, in the main set or in a tenant's override */
#define POLICY_MAX_TAGS 16  /* cache.tags; and, of a write, invalidate templates */
#define POLICY_MAX_ARGS 32  /* SQL arguments; and those of the identity's tier lookup */

struct policy_tier {
    char *name;
    struct limiter_rule rule;
    bool shadow;        /* mode = "shadow": counted and decided, never refuses, never shown */
    char *policy_field; /* "\"free\";q=100;w=3600", for RateLimit-Policy */
};

struct policy_limit {
    char *name;               /* policy name in RateLimit headers */
    bool is_tier;             /* the caller's tier: rule and name come from the tier */
    struct limiter_rule rule; /* unless is_tier */
    struct template *key;     /* unless is_tier (the tier key is per caller) */
    struct template *key_ip;  /* a key naming a caller ({user}, {tenant}, {claim.NAME}): the
                                 key of callers who lack it, "KEY:ip:{ip}"; NULL when the key
                                 names no caller, or with anonymous = "share" (they share KEY) */
    bool anonymous_share;     /* anonymous = "share" */
    uint32_t cost;
    bool fail_closed;
    bool shadow;        /* unless is_tier (the tier's own mode applies): mode = "shadow",
                           counted and decided as if enforced, but it never refuses a request
                           and never shows in the caller's RateLimit headers */
    char *policy_field; /* unless is_tier */
};

enum policy_source { SOURCE_SQL, SOURCE_UPSTREAM, SOURCE_STATIC };

struct ssl_ctx_st;

/* upstream "NAME" { url = "http://HOST:PORT/PREFIX", timeout = "5s", forward_headers = {...} } */
struct policy_upstream {
    char *name;
    char *url;                   /* as written */
    char *host;                  /* "127.0.0.1", "::1" or a name */
    int port;                    /* 80 when the URL gives none */
    char *prefix;                /* path prefix without a trailing '/', "" for none */
    char *host_header;           /* "host[:port]" as the URL spells it, for the Host header */
    uint64_t timeout_ms;         /* response deadline: request sent to complete response */
    uint64_t connect_timeout_ms; /* connect deadline */
    bool forward_listed;         /* forward_headers = {...}: only these request fields go on */
    char **forward_headers;      /* ... their names, lowercased */
    size_t nforward_headers;
    /* https:// (policy_tls.c): the TLS client context built at load, verifying the chain
     * (ca_file's CAs, else the system's) and the host; a client certificate when given. */
    bool tls;
    char *ca_file, *cert_file, *key_file; /* relative to the policy directory, or NULL */
    struct ssl_ctx_st *ssl_ctx;           /* owned (one reference); NULL without tls */
    char *file;
    int line;
};

/* on_change "TABLE" { invalidate = { "crm:{row.owner_id}" } } */
struct policy_on_change {
    char *table; /* as written: "contacts" or "schema.contacts" */
    char *file;
    int line;
    struct template **invalidate; /* templates over {row.COLUMN} */
    size_t ninvalidate;
    char **columns; /* the row columns the templates use, sorted, unique */
    size_t ncolumns;
    bool credentials; /* credentials = true: a change forgets every API key the workers looked
                         up (the table holds them) */
};

/* Callers to warm an endpoint's cache for: a fixed list, or the rows of a query. */
struct policy_warm_caller {
    char *user;   /* NULL: anonymous */
    char *tenant; /* NULL: none */
};
struct policy_warm {
    struct policy_warm_caller *callers;
    size_t ncallers;
    char *sql; /* or: each row's first column is a user, the second (if any) a tenant */
};

/*
 * compress: the coded forms made of an endpoint's cached answers when they are stored
 * (gateway/fill.c), one of which a hit answers a client's Accept-Encoding with.
 */
struct policy_compress {
    unsigned codings;  /* CODEC_BIT()s to make; 0: compress is off */
    uint32_t min_size; /* bodies smaller than this are left alone */
    char **types;      /* the media types compressed, lowercased: "type/subtype", or a star for
                          the subtype (every one) or before a "+suffix" (every one with that
                          structured suffix); NULL: POLICY_COMPRESS_TYPES */
    size_t ntypes;
};

/* The media types compressed when compress names none. */
#define POLICY_COMPRESS_TYPES                                                                      \
    "text/*", "application/json", "application/*+json", "application/javascript",                  \
        "application/xml", "application/*+xml", "image/svg+xml"

/*
 * Whether compress `pc` applies to an answer of this content type (its parameters ignored,
 * compared without case) and body length: on, at least min_size bytes, and a type it names.
 */
bool policy_compress_applies(const struct policy_compress *pc, const char *content_type,
                             size_t body_len);

struct policy_endpoint {
    char *name; /* "GET /api/crm?type=contacts" */
    char *file;
    int line;
    int method;      /* enum http_method (HTTP_OTHER with any_method) */
    bool any_method; /* "* /path": every method, known or not; a request's own method says
                        whether it reads (GET, HEAD: the cache applies) or writes (gw_writes) */
    bool is_write;   /* POST PUT PATCH DELETE (false with any_method) */
    enum policy_source source;

    /* sql */
    char *sql; /* as wrapped for PostgreSQL to build the JSON */
    struct template **args;
    size_t nargs;
    bool one;
    bool returns_rows;

    /* upstream */
    char *upstream;                   /* its name */
    const struct policy_upstream *up; /* resolved, in the same snapshot */
    uint64_t timeout_ms;              /* the endpoint's timeout, else its upstream's */
    uint64_t connect_timeout_ms;      /* the endpoint's connect_timeout, else its upstream's */

    /* sql: the statement's deadline (sql_timeout); 0: the server's --db-deadline */
    uint64_t sql_timeout_ms;

    /* static */
    char *static_body;
    size_t static_len;
    int static_status;
    char *content_type;

    /* cache */
    bool cached;
    bool shared;
    bool anonymous_share;  /* cache.anonymous = "share": a caller who lacks a caller variable
                              of the key uses the entry the key expands to without it; by
                              default such a request bypasses the cache */
    uint64_t ttl_ms;       /* the policy's TTL; 0 with ttl_origin */
    bool ttl_origin;       /* ttl = "origin": freshness only from the upstream's answer */
    bool override;         /* override = true: ttl_ms whatever the answer says */
    uint64_t keep_ms;      /* an upstream's answer with a validator is kept this long past its
                              freshness, to be revalidated instead of fetched again */
    size_t cache_max_size; /* cache.max_size: an upstream's answer larger is streamed and not
                              stored; 0: the server's --cache-max-size */
    char **targeted;       /* RFC 9213 targeted fields read before Cache-Control, lowercased */
    size_t ntargeted;
    struct template *cache_key;
    struct template **tags;
    size_t ntags;
    uint64_t swr_ms;          /* stale_while_revalidate: serve a stale entry this long past its TTL
                                 while one background refresh runs */
    uint64_t sie_ms;          /* stale_if_error: serve a stale entry this long past its TTL when the
                                 origin fails */
    struct policy_warm *warm; /* NULL: not warmed */
    char **cache_query;       /* upstream: the query parameters a cacheable request forwards
                                 (pinned or named in the key); the others are not sent */
    size_t ncache_query;
    bool cache_query_all; /* upstream: the key holds {query}: the whole (canonical) query
                             is forwarded */

    struct policy_limit *limits;
    size_t nlimits;

    struct template **invalidate;
    size_t ninvalidate;

    struct policy_fields fields; /* cors, request_headers, response_headers (policy_headers.h) */
    struct policy_compress compress; /* the endpoint's, else the set's default */
};

/* identity { jwt = { keys = "jwks.json", issuer = ..., audience = ..., leeway = "30s" } } */
struct policy_jwt {
    struct jwk_set keys;     /* read from the policy directory (or the environment) at load */
    struct jwt_rules rules;  /* rules.keys is &keys; issuer and audience point below */
    char *issuer, *audience; /* NULL: not configured */
    bool required;           /* a request without a credential is refused (401) */
};

/* identity { api_key = { header = "X-API-Key" | query = "api_key", sql = "...$1...", ttl } } */
struct policy_api_key {
    char *header;    /* the field callers send the key in, or NULL */
    char *query;     /* or the query parameter */
    char *sql;       /* the lookup, wrapped to answer its first row as a JSON object (the
                        caller's claims); $1 is the hex SHA-256 of the key, never the key */
    uint64_t ttl_ms; /* how long a worker reuses a lookup's answer (a NOTIFY of an on_change
                        with credentials = true ends it at once) */
    bool required;   /* a request without a credential is refused (401) */
};

struct policy_identity {
    char *user_header;                /* NULL: everyone is anonymous (unless user_claim) */
    char *tenant_header;              /* NULL: no tenants (unless tenant_claim) */
    char *user_claim, *tenant_claim;  /* claim "NAME" of a verified credential, or NULL */
    char *tier_claim;                 /* the tier from a claim, or NULL */
    bool tier_trusted;                /* the tier header is marked { trusted = true } */
    struct policy_jwt *jwt;           /* bearer tokens; NULL: none */
    struct policy_api_key *api_key;   /* API keys; NULL: none */
    struct identity_check user_check; /* what the user's value must be, and its canonical form */
    struct identity_check tenant_check;
    char *tier_header;           /* tier taken from a trusted header, or */
    char *tier_sql;              /* looked up with this statement ... */
    struct template **tier_args; /* ... and these arguments */
    size_t ntier_args;
    uint64_t tier_ttl_ms;
    int default_tier; /* index into tiers, -1 when there are no tiers */
    char *file;       /* where the identity block is declared (NULL: it is not) */
    int line;
};

struct policy_file {
    char *path;    /* "DIR/NAME": a policy file, or a file the policy reads (a key file) */
    char hash[17]; /* FNV-1a 64 of the content, hex */
};

/*
 * How many policies have been freed since the start (policy_release()). A
 * policy's strings (endpoint, tier and limit names) keep their address and
 * text while it lives, so a string read while this said n is still that text
 * at that address as long as it says n: what gateway/stats.c relies on to
 * remember its lookups by address. Counted before anything is freed.
 */
extern uint64_t policy_frees_;

static inline uint64_t
policy_frees(void)
{
    return __atomic_load_n(&policy_frees_, __ATOMIC_ACQUIRE);
}

struct policy {
    uint32_t refs; /* atomic */
    uint64_t generation;
    struct policy_file *files; /* the *.lua files, then the key files the identity reads */
    size_t nfiles;
    struct policy_tier *tiers;
    size_t ntiers;
    struct policy_identity identity;
    struct policy_endpoint *endpoints;
    size_t nendpoints;
    struct policy_upstream *upstreams;
    size_t nupstreams;
    struct policy_on_change *on_change;
    size_t non_change;
    struct router *router; /* data: struct policy_endpoint * */
    /* The tier counter of a caller: "tier:u:{user}", or "tier:ip:{ip}" when anonymous. */
    struct template *tier_key_user, *tier_key_ip;
    /* tenants/NAME.lua that loaded (or their last good version), sorted by name (tenant.h). */
    struct tenant *tenants;
    size_t ntenants;
    char *tenant_errors; /* "file:line: message" lines of the tenant files that failed, or NULL */
    char *notes;         /* "file:line: note: ..." lines sluice check prints (keys that callers
                            who lack what they name share), or NULL */
};

/*
 * Loads every *.lua of `dir` (in name order, then tenants/ *.lua) through the
 * Lua DSL and compiles the result, reading the key files the identity block
 * names (paths relative to dir; they join p->files). Returns a new snapshot with one reference,
 * or NULL with every problem as "file:line: message" lines in *errors (a new
 * string the caller frees). A tenant file that fails does not fail the load:
 * its messages go to p->tenant_errors, and the tenant keeps the version it
 * has in `prev` (the snapshot serving now; NULL: none) if that version still
 * loads against the new main set, else it has no overrides.
 */
struct policy *policy_load(const char *dir, uint64_t generation, const struct policy *prev,
                           char **errors);

struct policy_leftover;

/*
 * As policy_load, but leaves to the caller what is left to free of the load (the loader's Lua
 * state: tens of megabytes for thousands of endpoints, the last seventh of the work), so that
 * the snapshot can be published first. *rest is set to a new object (or NULL) that the caller
 * passes to policy_leftover_free(), whether the load succeeded or not.
 */
struct policy *policy_load_then(const char *dir, uint64_t generation, const struct policy *prev,
                                char **errors, struct policy_leftover **rest);

/* Frees what policy_load_then() left; NULL is a no-op. */
void policy_leftover_free(struct policy_leftover *rest);

/*
 * Writes the hash of the policy set p serves to out (16 hex digits and a
 * NUL): FNV-1a 64 over its files' content hashes, in the files' order. Two
 * processes that loaded the same files agree, whatever their directories.
 */
void policy_hash(const struct policy *p, char out[17]);

/* Takes one more reference to p. Thread-safe. */
void policy_ref(struct policy *p);

/* Drops one reference to p; the last one frees it. NULL is a no-op. Thread-safe. */
void policy_release(struct policy *p);

/*
 * Drops the caller's reference to p and frees p when it is the last one, returning 1; while
 * others hold p, does nothing and returns 0 (the caller keeps its reference). Only for a
 * snapshot nobody can take a new reference to (no longer serving): then 1 means freed here,
 * on the caller's thread.
 */
int policy_release_if_last(struct policy *p);

/* Returns the tier named `name` (len bytes) of p, or NULL; borrowed from p. */
const struct policy_tier *policy_tier_find(const struct policy *p, const char *name, size_t len);

#endif
