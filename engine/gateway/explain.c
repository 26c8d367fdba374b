/* explain.c - what a policy does with a request, as JSON: endpoint, caller, limits, cache key,
 * tags and invalidations, from the request path's own plan. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "http_parse.h"
#include "limiter.h"
#include "plan.h"
#include "template.h"
#include "util.h"

/* One limit as the request path counts it: rq->limits[i] after gw_plan(). */
static json_t *
limit_json(struct gw_req *rq, size_t i)
{
    const struct policy_limit *l = &rq->ep->limits[i];
    const struct store_limit *sl = &rq->limits[i];
    const struct limiter_rule *rule = sl->rule;
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:I, s:f, s:I, s:s, s:s%}", "name", gw_limit_name(rq, i), "mode",
                  sl->shadow ? "shadow" : "enforce", "algorithm", limiter_algo_name(rule->algo),
                  "limit", (json_int_t)rule->limit, "window_seconds",
                  (double)rule->window_ms / 1000.0, "cost", (json_int_t)sl->cost, "fail",
                  sl->fail_closed ? "closed" : "open", "key", sl->key, sl->keylen);
    if (rule->algo == LIMITER_TOKEN_BUCKET)
        json_object_set_new(o, "burst",
                            json_integer((json_int_t)(rule->burst ? rule->burst : rule->limit)));
    if (l->is_tier)
        json_object_set_new(o, "from", json_string("tier"));
    if (!l->is_tier && (template_uses(l->key) & TV_CALLER)) {
        /* A key naming a caller: those who lack it are counted by address, or share it. */
        json_object_set_new(o, "anonymous", json_string(l->anonymous_share ? "share" : "ip"));
        if (rq->by_ip & (1u << i))
            json_object_set_new(o, "keyed_by",
                                json_string("ip: the caller lacks what the key names"));
    }
    return o;
}

static json_t *
strings_json(const char *const *s, const size_t *lens, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_stringn(s[i], lens[i]));
    return a;
}

static const char *
tier_from_text(enum gw_tier_from from, bool given)
{
    switch (from) {
    case GW_TIER_ANONYMOUS:
        return "default (anonymous caller)";
    case GW_TIER_UNUSED:
        return "default (no limit of this endpoint uses the tier)";
    case GW_TIER_HEADER:
        return "header";
    case GW_TIER_CLAIM:
        return "claim";
    case GW_TIER_NO_LOOKUP:
        return "default";
    case GW_TIER_SQL:
    default:
        return given ? "given" : "default (explain does not run the SQL lookup)";
    }
}

/* Where an identity value came from: "claim NAME", "header NAME", or null when it is absent. */
static json_t *
value_from(const char *value, const char *claim, const char *header)
{
    if (!value)
        return json_null();
    return claim ? json_sprintf("claim %s", claim) : json_sprintf("header %s", header);
}

/* The caller's credential: what it is, and how it was checked (never the credential itself). */
static json_t *
credential_json(struct gw_req *rq)
{
    const struct policy_identity *id = &rq->policy->identity;
    json_t *c = json_pack("{s:s}", "source", gw_id_source_names[rq->id_source]);
    if (rq->id_refusal) {
        json_object_set_new(c, "refused", json_string(rq->id_refusal));
        if (rq->challenge)
            json_object_set_new(c, "challenge", json_string(rq->challenge));
    } else if (rq->id_source == GW_ID_JWT && rq->id_key) {
        json_object_set_new(c, "verified", json_true());
        json_object_set_new(c, "key", rq->id_key->kid ? json_string(rq->id_key->kid) : json_null());
        json_object_set_new(c, "key_from", json_string(rq->id_key->source));
        json_object_set_new(c, "expires", json_integer((json_int_t)rq->id_exp));
    } else if (rq->id_source == GW_ID_API_KEY) {
        json_object_set_new(c, "sha256", json_string(rq->api_key_hex));
        json_object_set_new(c, "lookup", json_string(id->api_key->sql));
        if (rq->api_key_pending)
            json_object_set_new(c, "note",
                                json_string("explain does not look API keys up: the caller is "
                                            "shown as it is before the lookup"));
    }
    return c;
}

static json_t *
caller_json(struct gw_req *rq, const char *tier_from)
{
    const struct policy_identity *id = &rq->policy->identity;
    json_t *c = json_object();
    json_object_set_new(c, "user", rq->user ? json_stringn(rq->user, rq->user_len) : json_null());
    json_object_set_new(c, "tenant",
                        rq->tenant ? json_stringn(rq->tenant, rq->tenant_len) : json_null());
    json_object_set_new(c, "ip", json_string(rq->sr->ip));
    json_object_set_new(c, "tier", rq->tier ? json_string(rq->tier->name) : json_null());
    json_object_set_new(c, "tier_from", json_string(tier_from));
    json_object_set_new(c, "source", json_string(gw_id_source_names[rq->id_source]));
    json_t *from =
        json_pack("{s:o, s:o}", "user", value_from(rq->user, id->user_claim, id->user_header),
                  "tenant", value_from(rq->tenant, id->tenant_claim, id->tenant_header));
    if (id->tier_claim)
        json_object_set_new(from, "tier", json_sprintf("claim %s", id->tier_claim));
    else if (id->tier_header)
        json_object_set_new(
            from, "tier",
            json_sprintf("header %s%s", id->tier_header, id->tier_trusted ? " (trusted)" : ""));
    else if (id->tier_sql)
        json_object_set_new(from, "tier", json_string("sql"));
    json_object_set_new(c, "from", from);
    if (id->jwt || id->api_key)
        json_object_set_new(c, "credential", credential_json(rq));
    return c;
}

static json_t *
tenant_json(struct gw_req *rq, const struct policy_endpoint *routed)
{
    const struct tenant *tn = rq->tn;
    if (!tn)
        return json_null();
    /* A tenant's tier override carries its main tier's name. */
    const struct policy_tier *main_tier =
        rq->tier ? policy_tier_find(rq->policy, rq->tier->name, strlen(rq->tier->name)) : NULL;
    json_t *hooks = json_array();
    for (size_t i = 0; i < tn->nhooks; i++)
        json_array_append_new(hooks, json_string(tn->hooks[i].name));
    return json_pack("{s:s, s:s, s:b, s:b, s:b, s:o, s:s}", "name", tn->name, "file", tn->file,
                     "last_good_version", tn->last_good, "tier_override",
                     rq->tier && rq->tier != main_tier, "endpoint_override", rq->ep != routed,
                     "hooks", hooks, "note", "hooks are not run by explain");
}

static const char *const source_names[] = {"sql", "upstream", "static"};

static json_t *
endpoint_json(const struct policy_endpoint *ep)
{
    json_t *e = json_pack("{s:s, s:s, s:i, s:s}", "name", ep->name, "file", ep->file, "line",
                          ep->line, "source", source_names[ep->source]);
    if (ep->source == SOURCE_SQL)
        json_object_set_new(e, "sql", json_string(ep->sql));
    if (ep->source == SOURCE_UPSTREAM && ep->up)
        json_object_set_new(e, "upstream",
                            json_pack("{s:s, s:s, s:f}", "name", ep->up->name, "url", ep->up->url,
                                      "timeout_seconds", (double)ep->timeout_ms / 1000.0));
    return e;
}

/* The cache as the request path uses it: the key looked up (null when bypassed or not a read). */
static json_t *
cache_json(struct gw_req *rq)
{
    const struct policy_endpoint *ep = rq->ep;
    if (!ep->cached)
        return json_null();
    const struct store_admit *a = &rq->admit;
    json_t *c = json_pack("{s:f, s:b, s:b}", "ttl_seconds", (double)ep->ttl_ms / 1000.0, "shared",
                          ep->shared, "bypass", rq->bypass);
    if (ep->source == SOURCE_UPSTREAM) {
        /* Freshness as the upstream's answers decide it, within the policy's bounds. */
        json_object_set_new(c, "ttl",
                            json_string(ep->ttl_origin ? "origin"
                                        : ep->override ? "policy (override)"
                                                       : "origin, at most the policy's"));
        json_object_set_new(c, "keep_seconds", json_real((double)ep->keep_ms / 1000.0));
        json_t *t = json_array();
        for (size_t i = 0; i < ep->ntargeted; i++)
            json_array_append_new(t, json_string(ep->targeted[i]));
        json_object_set_new(c, "targeted", t);
    }
    json_object_set_new(c, "key",
                        a->cache_key ? json_stringn(a->cache_key, a->cache_keylen) : json_null());
    if (template_uses(ep->cache_key) & TV_CALLER)
        json_object_set_new(c, "anonymous", json_string(ep->anonymous_share ? "share" : "bypass"));
    if (rq->bypass_anonymous)
        json_object_set_new(
            c, "bypass_reason",
            json_string("the cache key names a caller ({user}, {tenant} or a claim) this request "
                        "lacks: such entries are never shared by the callers who lack it "
                        "(cache.anonymous = \"share\" shares them)"));
    else if (rq->bypass)
        json_object_set_new(c, "bypass_reason",
                            json_string("the request carries a Cookie and the cache key holds "
                                        "neither {user} nor {tenant} of the caller"));
    if (rq->authorized_only)
        json_object_set_new(c, "authorization",
                            json_string("the request carries Authorization and the key does not "
                                        "name its caller: only answers that said public, s-maxage "
                                        "or must-revalidate serve it or are stored from it (RFC "
                                        "9111 section 3.5)"));
    json_object_set_new(c, "tags", strings_json(rq->tags, rq->taglens, a->ntags));
    json_object_set_new(c, "stale_while_revalidate_seconds",
                        json_real((double)ep->swr_ms / 1000.0));
    json_object_set_new(c, "stale_if_error_seconds", json_real((double)ep->sie_ms / 1000.0));
    if (ep->warm)
        json_object_set_new(c, "warm",
                            ep->warm->sql
                                ? json_pack("{s:s}", "sql", ep->warm->sql)
                                : json_pack("{s:I}", "callers", (json_int_t)ep->warm->ncallers));
    return c;
}

/* Marks the explanation as the request being refused, as the server would refuse it. */
static void
refused(json_t *o, int status, const char *detail)
{
    json_object_set_new(o, "status", json_integer(status));
    json_object_set_new(o, "detail", json_string(detail));
}

/*
 * A CORS preflight that sluice answers itself (gateway.c, gw_reply_preflight): adds to o its
 * status (204, or 403 when the origin or method is not allowed), "preflight": true and the
 * endpoint of the requested method, and returns true; false when h is no such preflight.
 */
static bool
preflight_json(struct policy *p, const struct http_request *h, json_t *o)
{
    const struct http_str *method = http_header_get(h, "access-control-request-method");
    const struct http_str *origin = http_header_get(h, "origin");
    struct router_match m;
    if (h->method != HTTP_OPTIONS || !method || !method->len || !origin ||
        router_match(p->router, method->p, method->len, h->path.p, h->path.len, h->query.p,
                     h->query.len, &m) != ROUTER_FOUND)
        return false;
    const struct policy_endpoint *ep = m.data;
    const struct policy_cors *c = ep->fields.cors;
    if (!c)
        return false;
    bool ok = policy_cors_allows(c, origin->p, origin->len) &&
              policy_cors_method(c, method->p, method->len);
    json_object_set_new(o, "status", json_integer(ok ? 204 : 403));
    json_object_set_new(o, "preflight", json_true());
    json_object_set_new(o, "endpoint", endpoint_json(ep));
    return true;
}

/*
 * Explains the request sr on snapshot p through the request path's own
 * steps (gw_read_request, gw_identify, gw_plan, gw_plan_invalidations): only
 * the SQL tier lookup and the tenant hooks are not run. Returns a new JSON
 * object; *planned gets the request when it was planned and has limits to
 * check (the caller frees it), else NULL.
 */
static json_t *
explain(struct policy *p, struct server_request *sr, const char *tier, struct gw_req **planned)
{
    *planned = NULL;
    const struct http_request *h = &sr->http;
    struct router_match m;
    enum router_result r = router_match(p->router, h->method_str.p, h->method_str.len, h->path.p,
                                        h->path.len, h->query.p, h->query.len, &m);
    char *line = xasprintf("%.*s %.*s", (int)h->method_str.len, h->method_str.p, (int)h->target.len,
                           h->target.p);
    json_t *o = json_pack("{s:I, s:s}", "generation", (json_int_t)p->generation, "request", line);
    free(line);
    if (preflight_json(p, h, o))
        return o;
    if (r != ROUTER_FOUND) {
        json_object_set_new(o, "status", json_integer(r == ROUTER_NOT_FOUND ? 404 : 405));
        json_object_set_new(o, "endpoint", json_null());
        return o;
    }
    struct gw_req *rq = gw_req_new(NULL, sr, p, &m);
    const struct policy_endpoint *routed = rq->ep;
    char detail[300];
    int status = gw_read_request(rq, detail, sizeof(detail));
    if (status != 0) {
        refused(o, status, detail);
        const struct policy_identity *id = &rq->policy->identity;
        if (id->jwt || id->api_key)
            json_object_set_new(o, "credential", credential_json(rq));
        json_object_set_new(o, "endpoint", endpoint_json(routed));
        goto out;
    }
    enum gw_tier_from from = gw_identify(rq);
    if (from == GW_TIER_SQL)
        gw_set_tier(rq, tier, tier ? strlen(tier) : 0);
    json_object_set_new(o, "caller", caller_json(rq, tier_from_text(from, tier != NULL)));
    json_object_set_new(o, "tenant", tenant_json(rq, routed));
    json_object_set_new(o, "endpoint", endpoint_json(rq->ep));
    status = gw_plan(rq, detail, sizeof(detail));
    if (status != 0) {
        refused(o, status, detail);
        goto out;
    }
    json_t *limits = json_array();
    for (size_t i = 0; i < rq->admit.nlimits; i++)
        json_array_append_new(limits, limit_json(rq, i));
    json_object_set_new(o, "limits", limits);
    json_object_set_new(o, "cache", cache_json(rq));
    if (gw_writes(rq) && gw_plan_invalidations(rq, NULL, 0) != 0) {
        refused(o, 500, "an invalidation key was too long");
        goto out;
    }
    json_object_set_new(o, "invalidate", strings_json(rq->inv_tags, rq->inv_lens, rq->ninv));
    if (rq->admit.nlimits > 0) {
        *planned = rq;
        return o;
    }
out:
    gw_req_free(rq);
    return o;
}

static char *
dump(json_t *o)
{
    char *s = json_dumps(o, JSON_INDENT(2));
    json_decref(o);
    return s;
}

/* ---- with the store: what each limit would decide now ------------------------------------ */

struct explain_op {
    json_t *o;
    struct gw_req *rq;
    struct sbuf raw; /* the request's bytes: rq's parsed strings point into them */
    struct server_request sr;
    char ip[64]; /* the caller's address as given (sr.ip) */
    char ip_key[NETADDR_KEY_MAX];
    struct store_admit a;
    struct limiter_result results[POLICY_MAX_LIMITS];
    gateway_explain_fn *done;
    void *arg;
};

/*
 * The store's answer to the peek: each limit's decision and what it has left, and the
 * verdict. A shadow limit that would refuse says so and refuses nothing.
 */
static void
on_peeked(void *arg, int status)
{
    struct explain_op *op = arg;
    struct gw_req *rq = op->rq;
    json_t *limits = json_object_get(op->o, "limits");
    const char *verdict;

    if (status != 0) {
        verdict = "unknown: the store is unavailable";
    } else if (op->a.refused_closed) {
        verdict = "refused (503): the store is unavailable and a limit fails closed";
    } else {
        for (size_t i = 0; i < op->a.nlimits; i++) {
            const struct limiter_result *r = &op->results[i];
            json_t *l = json_array_get(limits, i);
            const char *d = r->allowed             ? "admit"
                            : rq->limits[i].shadow ? "shadow: would refuse"
                                                   : "refuse";
            json_object_set_new(l, "decision", json_string(d));
            json_object_set_new(l, "remaining", json_integer((json_int_t)r->remaining));
        }
        verdict = op->a.allowed ? "admitted" : "refused (429)";
    }
    json_object_set_new(op->o, "verdict", json_string(verdict));
    gw_req_free(rq);
    sbuf_free(&op->raw);
    gateway_explain_fn *done = op->done;
    void *darg = op->arg;
    char *s = dump(op->o);
    free(op);
    done(darg, s, NULL);
}

/*
 * Builds the request of gateway_explain_request() into *raw and *sr (its parsed strings point
 * into raw), from client address ip, whose {ip} key (an IPv6 address cut to the default /64)
 * goes into key[NETADDR_KEY_MAX]. Returns 0, or -1 with a message in err.
 */
static int
build_request(struct sbuf *raw, struct server_request *sr, const char *line,
              const char *const *headers, size_t nheaders, const char *body, const char *ip,
              char *key, char *err, size_t errlen)
{
    const char *sp = strchr(line, ' ');
    if (!sp || sp == line || sp[1] != '/') {
        snprintf(err, errlen, "expected a request like 'GET /path?query', got '%s'", line);
        return -1;
    }
    sbuf_printf(raw, "%.*s %s HTTP/1.1\r\nHost: explain\r\n", (int)(sp - line), line, sp + 1);
    for (size_t i = 0; i < nheaders; i++)
        sbuf_printf(raw, "%s\r\n", headers[i]);
    size_t blen = body ? strlen(body) : 0;
    if (blen)
        sbuf_printf(raw, "Content-Length: %zu\r\n", blen);
    sbuf_adds(raw, "\r\n");
    size_t head_len = raw->len;
    if (blen)
        sbuf_add(raw, body, blen);
    memset(sr, 0, sizeof(*sr));
    if (http_parse_request(raw->p, raw->len, &sr->http) <= 0) {
        snprintf(err, errlen, "the request line or a header is malformed");
        return -1;
    }
    sr->body = blen ? raw->p + head_len : NULL;
    sr->body_len = blen;
    sr->ip = ip;
    struct netaddr a;
    if (netaddr_parse(ip, strlen(ip), &a) == 0) {
        netaddr_key(&a, 64, key, NETADDR_KEY_MAX);
        sr->ip_key = key;
    }
    return 0;
}

char *
gateway_explain_request(struct policy *p, const char *line, const char *const *headers,
                        size_t nheaders, const char *body, const char *ip, const char *tier,
                        char *err, size_t errlen)
{
    struct sbuf raw = {0};
    struct server_request sr;
    char *out = NULL;
    char key[NETADDR_KEY_MAX];
    if (build_request(&raw, &sr, line, headers, nheaders, body, ip, key, err, errlen) == 0) {
        struct gw_req *rq;
        json_t *o = explain(p, &sr, tier, &rq);
        if (rq)
            gw_req_free(rq);
        out = dump(o);
    }
    sbuf_free(&raw);
    return out;
}

void
gateway_explain_request_now(struct policy *p, struct store *s, const char *line,
                            const char *const *headers, size_t nheaders, const char *body,
                            const char *ip, const char *tier, gateway_explain_fn *done, void *arg)
{
    struct explain_op *op = xcalloc(1, sizeof(*op));
    char err[256];
    snprintf(op->ip, sizeof(op->ip), "%s", ip);
    if (build_request(&op->raw, &op->sr, line, headers, nheaders, body, op->ip, op->ip_key, err,
                      sizeof(err)) != 0) {
        sbuf_free(&op->raw);
        free(op);
        done(arg, NULL, err);
        return;
    }
    op->o = explain(p, &op->sr, tier, &op->rq);
    op->done = done;
    op->arg = arg;
    if (!op->rq || !s) {
        if (op->rq)
            gw_req_free(op->rq);
        if (s && !json_object_get(op->o, "status")) /* planned, with no limit to refuse it */
            json_object_set_new(op->o, "verdict", json_string("admitted"));
        sbuf_free(&op->raw);
        char *out = dump(op->o);
        free(op);
        done(arg, out, NULL);
        return;
    }
    op->a = (struct store_admit){.limits = op->rq->limits,
                                 .nlimits = op->rq->admit.nlimits,
                                 .results = op->results,
                                 .peek = true};
    store_admit_and_lookup(s, &op->a, on_peeked, op);
}
