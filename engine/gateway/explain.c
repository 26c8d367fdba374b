/* explain.c - what a policy does with a request, as JSON: endpoint, caller, limits, cache key and
 * tags. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway_internal.h"
#include "http_parse.h"
#include "limiter.h"
#include "template.h"
#include "util.h"

/* ---- explain ------------------------------------------------------------------------------ */

static json_t *
expanded_list(struct gw_req *rq, struct template *const *t, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *k = gw_expand(rq, t[i], &len);
        json_array_append_new(a, k ? json_stringn(k, len) : json_string("(too long)"));
    }
    return a;
}

static json_t *
limit_json(struct gw_req *rq, const struct policy_limit *l)
{
    const struct limiter_rule *rule = l->is_tier ? &rq->tier->rule : &l->rule;
    size_t len;
    const char *key = l->is_tier ? gw_caller_key(rq, &len) : gw_expand(rq, l->key, &len);
    json_t *o =
        json_pack("{s:s, s:s, s:I, s:f, s:I, s:s}", "name", l->is_tier ? rq->tier->name : l->name,
                  "algorithm", limiter_algo_name(rule->algo), "limit", (json_int_t)rule->limit,
                  "window_seconds", (double)rule->window_ms / 1000.0, "cost", (json_int_t)l->cost,
                  "fail", l->fail_closed ? "closed" : "open");
    json_object_set_new(o, "key", key ? json_stringn(key, len) : json_string("(too long)"));
    if (rule->algo == LIMITER_TOKEN_BUCKET)
        json_object_set_new(o, "burst",
                            json_integer((json_int_t)(rule->burst ? rule->burst : rule->limit)));
    if (l->is_tier)
        json_object_set_new(o, "from", json_string("tier"));
    return o;
}

static const char *const source_names[] = {"sql", "upstream", "static"};

static char *
explain(struct policy *p, struct server_request *sr, const char *tier, char *err, size_t errlen)
{
    const struct http_request *h = &sr->http;
    struct router_match m;
    enum router_result r = router_match(p->router, h->method_str.p, h->method_str.len, h->path.p,
                                        h->path.len, h->query.p, h->query.len, &m);
    char *line = xasprintf("%.*s %.*s", (int)h->method_str.len, h->method_str.p, (int)h->target.len,
                           h->target.p);
    json_t *o = json_pack("{s:I, s:s}", "generation", (json_int_t)p->generation, "request", line);
    free(line);
    if (r != ROUTER_FOUND) {
        json_object_set_new(o, "status", json_integer(r == ROUTER_NOT_FOUND ? 404 : 405));
        json_object_set_new(o, "endpoint", json_null());
        char *s = json_dumps(o, JSON_INDENT(2));
        json_decref(o);
        return s;
    }
    struct gw_req *rq = xcalloc(1, sizeof(*rq));
    rq->sr = sr;
    policy_ref(p);
    rq->policy = p;
    rq->ep = m.data;
    rq->m = m;
    const struct policy_endpoint *ep = rq->ep;
    const struct policy_identity *id = &p->identity;
    char *out = NULL;
    const struct policy_tier *main_tier = NULL;
    if (gw_identity_header(rq, id->user_header, &rq->user, &rq->user_len) != 0 ||
        gw_identity_header(rq, id->tenant_header, &rq->tenant, &rq->tenant_len) != 0) {
        snprintf(err, errlen, "identity header too long");
        goto done;
    }
    if (sr->body_len > 0) {
        json_error_t jerr;
        rq->body = json_loadb(sr->body, sr->body_len, 0, &jerr);
    }
    /* The caller's tenant file, as the request path applies it. */
    rq->tn = tenant_find(p, rq->tenant, rq->tenant_len);
    if (rq->tn)
        rq->ep = tenant_endpoint(rq->tn, rq->ep);
    ep = rq->ep;

    /* The tier: from the header, as given, or the default (explain runs no SQL). */
    const char *tier_from;
    if (id->tier_header && rq->user) {
        const struct http_str *v = http_header_get(h, id->tier_header);
        gw_set_tier(rq, v ? v->p : NULL, v ? v->len : 0);
        tier_from = "header";
    } else if (tier && rq->user) {
        gw_set_tier(rq, tier, strlen(tier));
        tier_from = "given";
    } else {
        gw_set_tier(rq, NULL, 0);
        tier_from = !rq->user      ? "default (anonymous caller)"
                    : id->tier_sql ? "default (explain does not run the SQL lookup)"
                                   : "default";
    }

    /* A tenant's tier override carries its main tier's name. */
    main_tier = rq->tier ? policy_tier_find(p, rq->tier->name, strlen(rq->tier->name)) : NULL;
    json_t *caller = json_object();
    json_object_set_new(caller, "user",
                        rq->user ? json_stringn(rq->user, rq->user_len) : json_null());
    json_object_set_new(caller, "tenant",
                        rq->tenant ? json_stringn(rq->tenant, rq->tenant_len) : json_null());
    json_object_set_new(caller, "ip", json_string(sr->ip));
    json_object_set_new(caller, "tier", rq->tier ? json_string(rq->tier->name) : json_null());
    json_object_set_new(caller, "tier_from", json_string(tier_from));
    json_object_set_new(o, "caller", caller);

    if (rq->tn) {
        const struct tenant *tn = rq->tn;
        json_t *hooks = json_array();
        for (size_t i = 0; i < tn->nhooks; i++)
            json_array_append_new(hooks, json_string(tn->hooks[i].name));
        json_t *t = json_pack("{s:s, s:s, s:b, s:b, s:b, s:o, s:s}", "name", tn->name, "file",
                              tn->file, "last_good_version", tn->last_good, "tier_override",
                              rq->tier && rq->tier != main_tier, "endpoint_override",
                              ep != (const struct policy_endpoint *)m.data, "hooks", hooks, "note",
                              "hooks are not run by explain");
        json_object_set_new(o, "tenant", t);
    } else {
        json_object_set_new(o, "tenant", json_null());
    }

    json_t *e = json_pack("{s:s, s:s, s:i, s:s}", "name", ep->name, "file", ep->file, "line",
                          ep->line, "source", source_names[ep->source]);
    if (ep->source == SOURCE_SQL)
        json_object_set_new(e, "sql", json_string(ep->sql));
    if (ep->source == SOURCE_UPSTREAM && ep->up)
        json_object_set_new(e, "upstream",
                            json_pack("{s:s, s:s, s:f}", "name", ep->up->name, "url", ep->up->url,
                                      "timeout_seconds", (double)ep->up->timeout_ms / 1000.0));
    json_object_set_new(o, "endpoint", e);

    json_t *limits = json_array();
    for (size_t i = 0; i < ep->nlimits; i++) {
        if (ep->limits[i].is_tier && !rq->tier)
            continue;
        json_array_append_new(limits, limit_json(rq, &ep->limits[i]));
    }
    json_object_set_new(o, "limits", limits);

    if (ep->cached) {
        size_t len;
        const char *key = gw_expand(rq, ep->cache_key, &len);
        json_t *c = json_pack("{s:f, s:b}", "ttl_seconds", (double)ep->ttl_ms / 1000.0, "shared",
                              ep->shared);
        json_object_set_new(c, "key", key ? json_stringn(key, len) : json_string("(too long)"));
        json_object_set_new(c, "tags", expanded_list(rq, ep->tags, ep->ntags));
        json_object_set_new(c, "stale_while_revalidate_seconds",
                            json_real((double)ep->swr_ms / 1000.0));
        json_object_set_new(c, "stale_if_error_seconds", json_real((double)ep->sie_ms / 1000.0));
        if (ep->warm)
            json_object_set_new(
                c, "warm",
                ep->warm->sql ? json_pack("{s:s}", "sql", ep->warm->sql)
                              : json_pack("{s:I}", "callers", (json_int_t)ep->warm->ncallers));
        json_object_set_new(o, "cache", c);
    } else {
        json_object_set_new(o, "cache", json_null());
    }
    json_object_set_new(o, "invalidate", expanded_list(rq, ep->invalidate, ep->ninvalidate));
    out = json_dumps(o, JSON_INDENT(2));
done:
    json_decref(o);
    if (rq->body)
        json_decref(rq->body);
    policy_release(rq->policy);
    free(rq);
    return out;
}

char *
gateway_explain_request(struct policy *p, const char *line, const char *const *headers,
                        size_t nheaders, const char *body, const char *ip, const char *tier,
                        char *err, size_t errlen)
{
    struct sbuf raw = {0};
    const char *sp = strchr(line, ' ');
    if (!sp || sp == line || sp[1] != '/') {
        snprintf(err, errlen, "expected a request like 'GET /path?query', got '%s'", line);
        return NULL;
    }
    sbuf_printf(&raw, "%.*s %s HTTP/1.1\r\nHost: explain\r\n", (int)(sp - line), line, sp + 1);
    for (size_t i = 0; i < nheaders; i++)
        sbuf_printf(&raw, "%s\r\n", headers[i]);
    size_t blen = body ? strlen(body) : 0;
    if (blen)
        sbuf_printf(&raw, "Content-Length: %zu\r\n", blen);
    sbuf_adds(&raw, "\r\n");
    size_t head_len = raw.len;
    if (blen)
        sbuf_add(&raw, body, blen);
    struct server_request sr;
    memset(&sr, 0, sizeof(sr));
    int r = http_parse_request(raw.p, raw.len, &sr.http);
    char *out = NULL;
    if (r <= 0) {
        snprintf(err, errlen, "the request line or a header is malformed");
    } else {
        sr.body = blen ? raw.p + head_len : NULL;
        sr.body_len = blen;
        sr.ip = ip;
        out = explain(p, &sr, tier, err, errlen);
    }
    sbuf_free(&raw);
    return out;
}
