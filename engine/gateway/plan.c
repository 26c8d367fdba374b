/* plan.c - what a request touches: its caller, body, limit keys, cache key, tags and
 * invalidations, computed once for the request path and for explain. */
#define _GNU_SOURCE
#include "plan.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "credential.h"
#include "httpcache.h"
#include "query.h"
#include "template.h"
#include "tenant.h"

#define FILL_LEASE_MS                                                                              \
    500 /* a miss holds its key's fill lease this long at most, or, filled by                      \
           an upstream, as long as the upstream may take to answer */

/*
 * The one field line of the request named `name` (ignoring case) into *v, NULL when there is
 * none. Returns how many lines have that name.
 */
static size_t
field_lines(const struct http_request *h, const char *name, const struct http_str **v)
{
    size_t n = 0, len = strlen(name);
    *v = NULL;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_str *f = &h->headers[i].name;
        if (f->len == len && strncasecmp(f->p, name, len) == 0 && n++ == 0)
            *v = &h->headers[i].value;
    }
    return n;
}

/*
 * Reads a trusted identity header `name` (NULL: not declared, *val left as it is) into *val
 * and *len: absent or
 * empty is NULL; a value of a declared type (chk) is its canonical form, in the value arena.
 * A header given twice (in any case), holding a list (a comma: lines an intermediary may have
 * joined, RFC 9110 section 5.3), too long or not of its type refuses the request: returns 400
 * with a message in detail, else 0.
 */
static int
identity_header(struct gw_req *rq, const char *name, const struct identity_check *chk,
                const char **val, size_t *len, char *detail, size_t detail_len)
{
    if (!name)
        return 0; /* not declared: *val stays as it is (a claim's value, or NULL) */
    *val = NULL;
    *len = 0;
    const struct http_str *v;
    size_t n = field_lines(&rq->sr->http, name, &v);
    if (n > 1) {
        snprintf(detail, detail_len, "the identity header %s is given more than once", name);
        return 400;
    }
    if (!v || v->len == 0)
        return 0;
    if (v->len > MAX_USER_LEN) {
        snprintf(detail, detail_len, "identity header too long");
        return 400;
    }
    if (memchr(v->p, ',', v->len)) {
        snprintf(detail, detail_len, "the identity header %s holds a list; it takes one value",
                 name);
        return 400;
    }
    if (!chk || chk->type == IDENTITY_TEXT) {
        *val = v->p;
        *len = v->len;
        return 0;
    }
    char canon[MAX_USER_LEN + IDENTITY_CANONICAL_EXTRA + 1];
    size_t clen;
    if (identity_canonical(chk, v->p, v->len, canon, sizeof(canon), &clen) != 0) {
        snprintf(detail, detail_len, "the identity header %s is not %s", name,
                 identity_type_text(chk));
        return 400;
    }
    *val = gw_vals_put(rq, canon, clen);
    assert(*val); /* the first values of the request: the arena has room */
    *len = clen;
    return 0;
}

bool
gw_reads_body(const struct policy_endpoint *ep)
{
    for (size_t i = 0; i < ep->nargs; i++)
        if (template_uses(ep->args[i]) & TV_BIT(TV_BODY))
            return true;
    for (size_t i = 0; i < ep->ninvalidate; i++)
        if (template_uses(ep->invalidate[i]) & TV_BIT(TV_BODY))
            return true;
    return false;
}

/* Whether a field named `name` of h lists `token` (comma-separated, ignoring case). */
static bool
lists_token(const struct http_request *h, const char *name, const char *token)
{
    size_t tl = strlen(token);
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        if (f->name.len != strlen(name) || strncasecmp(f->name.p, name, f->name.len) != 0)
            continue;
        const char *p = f->value.p, *end = p + f->value.len;
        while (p < end) {
            const char *e = memchr(p, ',', (size_t)(end - p));
            if (!e)
                e = end;
            const char *a = p, *b = e;
            while (a < b && (*a == ' ' || *a == '\t'))
                a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
                b--;
            if ((size_t)(b - a) == tl && strncasecmp(a, token, tl) == 0)
                return true;
            p = e + 1;
        }
    }
    return false;
}

/* An opening handshake of the WebSocket protocol (RFC 6455 section 4.1): an HTTP/1.1 GET with
 * "Connection: Upgrade" and "Upgrade: websocket". */
static bool
websocket_upgrade(const struct http_request *h)
{
    return h->method == HTTP_GET && h->minor_version == 1 &&
           lists_token(h, "connection", "upgrade") && lists_token(h, "upgrade", "websocket");
}

int
gw_read_request(struct gw_req *rq, char *detail, size_t detail_len)
{
    const struct server_request *sr = rq->sr;
    const struct policy_identity *id = &rq->policy->identity;
    const char *tier = NULL;
    size_t tier_len = 0;
    int status = gw_credential_read(rq, detail, detail_len);
    if (!status)
        status = gw_caller_from_claims(rq, detail, detail_len);
    if (!status)
        status = identity_header(rq, id->user_header, &id->user_check, &rq->user, &rq->user_len,
                                 detail, detail_len);
    if (!status)
        status = identity_header(rq, id->tenant_header, &id->tenant_check, &rq->tenant,
                                 &rq->tenant_len, detail, detail_len);
    if (!status) /* read again by gw_identify(), which takes its first line */
        status = identity_header(rq, id->tier_header, NULL, &tier, &tier_len, detail, detail_len);
    if (status)
        return status;
    if (!rq->id_source && (rq->user || rq->tenant))
        rq->id_source = GW_ID_HEADER;
    rq->upgrade = rq->ep->source == SOURCE_UPSTREAM && websocket_upgrade(&sr->http);
    if (!gw_reads_body(rq->ep))
        return 0;
    if (sr->body_len == 0) {
        snprintf(detail, detail_len, "this endpoint needs a JSON object body");
        return 400;
    }
    json_error_t jerr;
    rq->body = json_loadb(sr->body, sr->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!rq->body) {
        snprintf(detail, detail_len, "malformed JSON body: %s (line %d, column %d)", jerr.text,
                 jerr.line, jerr.column);
        return 400;
    }
    if (!json_is_object(rq->body)) {
        snprintf(detail, detail_len, "the JSON body must be an object");
        return 400;
    }
    return 0;
}

void
gw_set_tier(struct gw_req *rq, const char *name, size_t len)
{
    const struct policy *p = rq->policy;
    rq->tier = len ? policy_tier_find(p, name, len) : NULL;
    if (!rq->tier && p->identity.default_tier >= 0)
        rq->tier = &p->tiers[p->identity.default_tier];
    if (rq->tn)
        rq->tier = tenant_tier(rq->tn, p, rq->tier);
}

static bool
needs_tier(const struct policy_endpoint *ep)
{
    for (size_t i = 0; i < ep->nlimits; i++)
        if (ep->limits[i].is_tier)
            return true;
    return false;
}

enum gw_tier_from
gw_identify(struct gw_req *rq)
{
    /* A caller whose tenant has a tenant file gets the tenant's view of the endpoint. */
    rq->tn = tenant_find(rq->policy, rq->tenant, rq->tenant_len);
    if (rq->tn)
        rq->ep = tenant_endpoint(rq->tn, rq->ep);
    const struct policy_identity *id = &rq->policy->identity;
    enum gw_tier_from from;
    if (!rq->user)
        from = GW_TIER_ANONYMOUS;
    else if (!needs_tier(rq->ep))
        from = GW_TIER_UNUSED;
    else if (id->tier_claim)
        from = GW_TIER_CLAIM;
    else if (id->tier_header)
        from = GW_TIER_HEADER;
    else if (!id->tier_sql)
        from = GW_TIER_NO_LOOKUP;
    else
        return GW_TIER_SQL;
    if (from == GW_TIER_CLAIM) {
        const char *t;
        size_t tl;
        if (!gw_claim_value(rq, id->tier_claim, strlen(id->tier_claim), &t, &tl))
            t = NULL, tl = 0;
        gw_set_tier(rq, t, tl);
        return from;
    }
    const struct http_str *v =
        from == GW_TIER_HEADER ? http_header_get(&rq->sr->http, id->tier_header) : NULL;
    gw_set_tier(rq, v ? v->p : NULL, v ? v->len : 0);
    return from;
}

/* What credentials of the request mean for a cache key which does not hold the caller. */
enum unkeyed {
    KEYED,      /* no credentials, or the key holds the caller: the cache as usual */
    UNKEYED,    /* a Cookie may shape the answer: the cache is not used */
    AUTHORIZED, /* Authorization: only answers that allow it serve the request, and its answer
                   is stored only when it allows it (RFC 9111 section 3.5) */
};

static enum unkeyed
credentials_unkeyed(const struct gw_req *rq)
{
    const struct policy_endpoint *ep = rq->ep;
    const struct http_request *h = &rq->sr->http;
    if (ep->source != SOURCE_UPSTREAM || !httpcache_has_credentials(h))
        return KEYED;
    unsigned uses = template_uses(ep->cache_key);
    bool keyed =
        ((uses & TV_BIT(TV_USER)) && rq->user) || ((uses & TV_BIT(TV_TENANT)) && rq->tenant);
    if (keyed)
        return KEYED;
    return http_header_get(h, "cookie") ? UNKEYED : AUTHORIZED;
}

/*
 * The tag of the stored answers of a URL: "url:", its path as it is, and "?"
 * and the canonical encoding of its parsed query q when that has parameters
 * (so ?a=1&b=2 and ?b=2&a=1 are one URL), into the key arena. Returns it
 * (borrowed), or NULL when the arena is full.
 */
static const char *
url_tag(struct gw_req *rq, const char *path, size_t plen, const struct http_query *q, size_t *len)
{
    char *out = rq->keys + rq->keys_used;
    size_t cap = sizeof(rq->keys) - rq->keys_used;
    if (4 + plen + 2 > cap)
        return NULL;
    memcpy(out, "url:", 4);
    memcpy(out + 4, path, plen);
    size_t o = 4 + plen;
    if (q && q->n) {
        out[o++] = '?';
        long n = http_query_encode(q, NULL, 0, out + o, cap - o);
        if (n < 0)
            return NULL;
        o += (size_t)n;
    }
    out[o] = '\0';
    rq->keys_used += o + 1;
    *len = o;
    return out;
}

/* The tag of the request's own URL; NULL with rq->refusal set when its query is malformed. */
static const char *
target_tag(struct gw_req *rq, size_t *len)
{
    const struct http_query *q = gw_query(rq);
    if (!q)
        return NULL;
    return url_tag(rq, rq->sr->http.path.p, rq->sr->http.path.len, q, len);
}

/* A key could not be expanded: 400, with why a value could not be used, else `what`. */
static int
refused(const struct gw_req *rq, char *detail, size_t detail_len, const char *what)
{
    snprintf(detail, detail_len, "%s", rq->refusal ? rq->refusal : what);
    return 400;
}

int
gw_plan(struct gw_req *rq, char *detail, size_t detail_len)
{
    const struct policy_endpoint *ep = rq->ep;
    struct store_admit *a = &rq->admit;
    assert(ep->nlimits <= POLICY_MAX_LIMITS &&
           ep->ntags <= POLICY_MAX_TAGS); /* refused at compile */
    for (size_t i = 0; i < ep->nlimits; i++) {
        const struct policy_limit *l = &ep->limits[i];
        struct store_limit *sl = &rq->limits[i];
        if (l->is_tier) {
            assert(rq->tier); /* a policy with a tier limit declares tiers: there is a default */
            sl->rule = &rq->tier->rule;
            sl->key = gw_caller_key(rq, &sl->keylen);
        } else {
            sl->rule = &l->rule;
            size_t mark = rq->keys_used;
            bool lacks;
            sl->key = gw_expand_caller(rq, l->key, &sl->keylen, &lacks);
            if (sl->key && lacks && l->key_ip) {
                /* A key naming a caller is never one counter for all who lack it. */
                rq->keys_used = mark;
                sl->key = gw_expand(rq, l->key_ip, &sl->keylen);
                rq->by_ip |= (uint8_t)(1u << i);
            }
        }
        if (!sl->key)
            return refused(rq, detail, detail_len, "request values too long for a limit key");
        sl->fail_closed = l->fail_closed;
        sl->shadow = l->is_tier ? rq->tier->shadow : l->shadow;
        sl->cost = l->cost;
    }
    if (rq->hooked)
        gw_apply_decision(rq, ep->nlimits);
    a->limits = rq->limits;
    a->nlimits = rq->warm ? 0 : ep->nlimits; /* warming counts against nobody's limits */
    a->results = rq->results;
    a->tags = rq->tags;
    a->taglens = rq->taglens;
    a->tag_gens = rq->tag_gens;
    if (!ep->cached)
        return 0;
    if (!rq->bypass) {
        enum unkeyed u = credentials_unkeyed(rq);
        rq->bypass = u == UNKEYED;
        rq->authorized_only = u == AUTHORIZED;
    }
    if (rq->bypass || rq->upgrade ||
        (rq->sr->http.method != HTTP_GET && rq->sr->http.method != HTTP_HEAD))
        return 0; /* a WebSocket tunnel is never cached: it counts its limits, no more */
    bool lacks;
    a->cache_key = gw_expand_caller(rq, ep->cache_key, &a->cache_keylen, &lacks);
    if (!a->cache_key)
        return refused(rq, detail, detail_len, "request values too long for a cache key");
    if (lacks && !ep->anonymous_share) {
        /* An entry keyed by a caller is never shared by the callers who lack that caller. */
        a->cache_key = NULL;
        a->cache_keylen = 0;
        rq->bypass = rq->bypass_anonymous = true;
        return 0;
    }
    for (size_t i = 0; i < ep->ntags; i++) {
        rq->tags[i] = gw_expand(rq, ep->tags[i], &rq->taglens[i]);
        if (!rq->tags[i])
            return refused(rq, detail, detail_len, "request values too long for a cache tag");
    }
    a->ntags = ep->ntags;
    if (ep->source == SOURCE_UPSTREAM) {
        /* The entry of an upstream's answer also carries its URL, which a write to that URL
         * (or naming it in Location or Content-Location) invalidates (RFC 9111 section 4.4). */
        const char *tag = target_tag(rq, &rq->taglens[a->ntags]);
        if (!tag)
            return refused(rq, detail, detail_len, "request values too long for a cache tag");
        rq->tags[a->ntags++] = tag;
    }
    if (ep->source == SOURCE_UPSTREAM) {
        /* What the request asks of a cache (RFC 9111 section 5.2.1): an upstream's answers
         * are HTTP's; the SQL and fixed sources' are the gateway's own. */
        httpcache_request_directives(&rq->sr->http, &rq->directives);
        rq->has_directives = true;
        rq->no_store = rq->directives.no_store;
    }
    uint64_t lease = ep->up && ep->timeout_ms > FILL_LEASE_MS ? ep->timeout_ms : FILL_LEASE_MS;
    a->lease_ms = rq->no_store ? 0 : lease;
    return 0;
}

/* The Host of the request (its authority), for telling a same-origin URL. */
static bool
same_authority(const struct gw_req *rq, const char *auth, size_t len)
{
    const struct http_str *host = &rq->sr->http.host;
    return host->p && host->len == len && strncasecmp(host->p, auth, len) == 0;
}

/* Adds the URL tag of a URI reference in a write's answer (Location, Content-Location) when
 * it names a URL of this origin: an absolute path, an absolute URL with the request's host, or
 * a path relative to the target's. */
static void
add_reference(struct gw_req *rq, const char *ref, size_t len)
{
    char path[2048];
    size_t plen = 0;
    const char *scheme_end = len > 3 ? memmem(ref, len, "://", 3) : NULL;
    if (scheme_end || (len > 1 && ref[0] == '/' && ref[1] == '/')) {
        const char *auth = scheme_end ? scheme_end + 3 : ref + 2;
        const char *end = ref + len;
        const char *slash = memchr(auth, '/', (size_t)(end - auth));
        const char *auth_end = slash ? slash : end;
        const char *qm = memchr(auth, '?', (size_t)(end - auth));
        if (qm && qm < auth_end)
            auth_end = qm;
        if (!same_authority(rq, auth, (size_t)(auth_end - auth)))
            return; /* another origin: not ours to invalidate */
        ref = auth_end;
        len = (size_t)(end - auth_end);
        if (len == 0 || ref[0] != '/') {
            ref = "/";
            len = 1;
        }
    } else if (len == 0 || ref[0] != '/') {
        /* Relative to the target's directory (RFC 3986 section 5.2.3; dot segments are kept
         * as they are: such a URL is simply not found). */
        const struct http_str *tp = &rq->sr->http.path;
        const char *last = tp->len ? memrchr(tp->p, '/', tp->len) : NULL;
        plen = last ? (size_t)(last - tp->p) + 1 : 0;
        if (plen + len > sizeof(path))
            return;
        memcpy(path, tp->p, plen);
    }
    if (plen + len > sizeof(path))
        return;
    memcpy(path + plen, ref, len);
    plen += len;
    const char *hash = memchr(path, '#', plen);
    if (hash)
        plen = (size_t)(hash - path);
    const char *qm = memchr(path, '?', plen);
    size_t pathlen = qm ? (size_t)(qm - path) : plen;
    struct http_query q;
    char buf[2048];
    if (qm && http_query_parse(qm + 1, plen - pathlen - 1, buf, sizeof(buf), &q) != HTTP_QUERY_OK)
        return; /* not a URL anything could have been stored under */
    const char *tag = url_tag(rq, path, pathlen, qm ? &q : NULL, &rq->inv_lens[rq->ninv]);
    if (tag)
        rq->inv_tags[rq->ninv++] = tag;
}

/* The URL tags of a write to an upstream: its target, Location and Content-Location. */
static int
plan_url_invalidations(struct gw_req *rq, const struct http_header *f, size_t n)
{
    const char *tag = target_tag(rq, &rq->inv_lens[rq->ninv]);
    if (!tag)
        return -1;
    rq->inv_tags[rq->ninv++] = tag;
    bool loc = false, cloc = false;
    for (size_t i = 0; i < n; i++) {
        const struct http_str *name = &f[i].name;
        if (!loc && name->len == 8 && strncasecmp(name->p, "location", 8) == 0) {
            loc = true;
            add_reference(rq, f[i].value.p, f[i].value.len);
        } else if (!cloc && name->len == 16 && strncasecmp(name->p, "content-location", 16) == 0) {
            cloc = true;
            add_reference(rq, f[i].value.p, f[i].value.len);
        }
    }
    return 0;
}

int
gw_plan_invalidations(struct gw_req *rq, const struct http_header *f, size_t n)
{
    const struct policy_endpoint *ep = rq->ep;
    assert(ep->ninvalidate <= POLICY_MAX_TAGS);
    rq->ninv = 0;
    if (ep->ninvalidate == 0)
        return ep->source == SOURCE_UPSTREAM ? plan_url_invalidations(rq, f, n) : 0;
    for (size_t i = 0; i < ep->ninvalidate; i++) {
        rq->inv_tags[i] = gw_expand(rq, ep->invalidate[i], &rq->inv_lens[i]);
        if (!rq->inv_tags[i])
            return -1;
        rq->ninv = i + 1;
    }
    return 0;
}
