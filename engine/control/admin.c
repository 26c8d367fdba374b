/* admin.c - the admin listener: the status page, status, metrics, callers, reload, explain,
 * invalidate, cache. */
#define _GNU_SOURCE
#include "admin.h"

#include <arpa/inet.h>
#include <assert.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedded.h"
#include "gateway.h"
#include "insight.h"
#include "metrics.h"
#include "notify.h"
#include "policy.h"
#include "policy_keys.h"
#include "reload.h"
#include "status.h"
#include "store.h"
#include "util.h"

/*
 * Routes: GET / (the status page), GET /status, /metrics, /callers, /stats,
 * POST /reload, GET /explain, POST /invalidate, GET /cache. Every one but the
 * page needs the bearer token when one is configured. The listener has one
 * worker; with a gateway it holds its own handle on the gateway's store (Redis
 * with its fallback, or the shared memory store) for /invalidate and /cache,
 * so that neither runs on a gateway worker.
 */

#define INVALIDATE_MAX 1000    /* tags or keys in one POST /invalidate */
#define CACHE_LIST_DEFAULT 100 /* entries GET /cache lists without a limit */
#define CACHE_LIST_MAX 1000    /* and at most */
#define ADMIN_MAX_CONNECTIONS 64
#define ADMIN_HEADER_TIMEOUT_MS 2000 /* a request to the admin listener is small */
#define ADMIN_IDLE_TIMEOUT_MS 10000

struct admin_worker {
    const struct admin_config *cfg;
    struct store *store; /* NULL without a gateway */
    struct metrics_counters counters;
};

int
admin_addr_is_loopback(const char *addr)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, addr, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, addr, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return 0;
}

struct server_config
admin_server_config(const struct server_config *data, const char *addr, int port)
{
    struct server_config cfg = *data;

    cfg.listen_addr = addr;
    cfg.listen_port = port;
    cfg.workers = 1;
    cfg.max_connections = ADMIN_MAX_CONNECTIONS;
    cfg.max_connections_per_ip = 0; /* the operator's own host holds them all */
    if (cfg.header_timeout_ms > ADMIN_HEADER_TIMEOUT_MS)
        cfg.header_timeout_ms = ADMIN_HEADER_TIMEOUT_MS;
    if (cfg.idle_timeout_ms > ADMIN_IDLE_TIMEOUT_MS)
        cfg.idle_timeout_ms = ADMIN_IDLE_TIMEOUT_MS;
    cfg.reuse_port = 0;
    cfg.exclusive = 1;
    cfg.fds = NULL; /* the server's sockets are not the admin listener's */
    cfg.nfds = 0;
    return cfg;
}

static void *
admin_worker_init(struct worker *w, void *ctx)
{
    const struct admin_config *cfg = ctx;
    struct admin_worker *aw = xcalloc(1, sizeof(*aw));

    aw->cfg = cfg;
    aw->store = gateway_store_new(cfg->gateway, server_worker_base(w), "admin");
    return aw;
}

static void
admin_worker_fini(void *state)
{
    struct admin_worker *aw = state;

    if (!aw)
        return;
    aw->store->ops->destroy(aw->store);
    free(aw);
}

static void
reply_json(struct server_request *req, int status, char *body)
{
    struct server_response resp = {
        .status = status,
        .content_type = "application/json",
        .body = body,
        .body_len = strlen(body),
    };
    server_respond(req, &resp);
    free(body);
}

/* Replies 200 with o (taken) as indented JSON. */
static void
reply_object(struct server_request *req, json_t *o)
{
    reply_json(req, 200, json_dumps(o, JSON_INDENT(2)));
    json_decref(o);
}

static int
path_is(const struct http_request *h, const char *path)
{
    return h->path.len == strlen(path) && memcmp(h->path.p, path, h->path.len) == 0;
}

/* Constant-time comparison of the presented bearer token. */
static int
authorized(const struct admin_config *cfg, const struct http_request *h)
{
    if (!cfg->token || !cfg->token[0])
        return 1;
    const struct http_str *v = http_header_get(h, "authorization");
    size_t tl = strlen(cfg->token);
    if (!v || v->len != 7 + tl || strncasecmp(v->p, "Bearer ", 7) != 0)
        return 0;
    unsigned char diff = 0;
    for (size_t i = 0; i < tl; i++)
        diff |= (unsigned char)(v->p[7 + i] ^ cfg->token[i]);
    return diff == 0;
}

#define EXPLAIN_MAX_HEADERS 32

/* The explanation is ready: the one reply. */
static void
on_explained(void *arg, char *json, const char *err)
{
    struct server_request *req = arg;

    if (!json)
        server_respond_problem(req, 400, NULL, NULL, err, NULL);
    else
        reply_json(req, 200, json);
}

/*
 * GET /explain?request=GET%20/api/x&header=X-User-Id:%2042&tier=pro&ip=10.0.0.1&body=...
 * explains against the snapshot now serving, with what each limit would decide now by the
 * counts of the store (checked without counting).
 */
static void
admin_explain(struct admin_worker *aw, struct server_request *req)
{
    const struct http_str *q = &req->http.query;
    char *buf = xmalloc(q->len + 1); /* decoded values, NUL-separated */
    size_t used = 0;
    const char *line = NULL, *body = NULL, *ip = "127.0.0.1", *tier = NULL;
    const char *headers[EXPLAIN_MAX_HEADERS];
    size_t nheaders = 0;
    const char *detail = NULL;
    for (size_t i = 0; i < q->len && !detail;) {
        size_t end = i;
        while (end < q->len && q->p[end] != '&')
            end++;
        const char *eq = memchr(q->p + i, '=', end - i);
        if (eq) {
            size_t klen = (size_t)(eq - (q->p + i)), vlen;
            char *v = buf + used;
            if (http_pct_decode(eq + 1, (size_t)(q->p + end - eq - 1), v, &vlen, 1) != 0) {
                detail = "bad percent-encoding in the query";
                break;
            }
            v[vlen] = '\0';
            used += vlen + 1;
            if (klen == 7 && memcmp(q->p + i, "request", 7) == 0)
                line = v;
            else if (klen == 6 && memcmp(q->p + i, "header", 6) == 0) {
                if (nheaders == EXPLAIN_MAX_HEADERS)
                    detail = "too many headers";
                else
                    headers[nheaders++] = v;
            } else if (klen == 4 && memcmp(q->p + i, "body", 4) == 0)
                body = v;
            else if (klen == 2 && memcmp(q->p + i, "ip", 2) == 0)
                ip = v;
            else if (klen == 4 && memcmp(q->p + i, "tier", 4) == 0)
                tier = v;
        }
        i = end + 1;
    }
    if (!detail && !line)
        detail = "give the request as ?request=GET%20/path (and header=Name:%20value, ...)";
    if (detail) {
        server_respond_problem(req, 400, NULL, NULL, detail, NULL);
        free(buf);
        return;
    }
    struct policy *p = gateway_policy(aw->cfg->gateway);
    /* The policy and buf may go once the request is planned: explain keeps what it needs. */
    gateway_explain_request_now(p, aw->store, line, headers, nheaders, body, ip, tier, on_explained,
                                req);
    policy_release(p);
    free(buf);
}

/* ---- POST /invalidate ---------------------------------------------------------------------- */

/* One invalidation in flight: the parsed body keeps the strings the store was given. */
struct invalidate_op {
    struct admin_worker *aw;
    struct server_request *req;
    json_t *doc;
    const char **items; /* into doc */
    size_t *lens;
    size_t n;
};

static void
invalidate_finish(struct invalidate_op *op, int status, const char *member, uint64_t n)
{
    if (status == 0) {
        /* Counted as asked for: each tag or key, or the pattern. */
        op->aw->counters.invalidations_admin += op->n ? op->n : 1;
        json_t *o = json_pack("{s:I}", member, (json_int_t)n);
        char *body = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        reply_json(op->req, 200, body);
    } else {
        server_respond_problem(op->req, 503, NULL, NULL,
                               "the store did not complete the invalidation (it is unavailable "
                               "or failed; part of it may have happened): retry",
                               "Retry-After: 1\r\n");
    }
    json_decref(op->doc);
    free(op->items);
    free(op->lens);
    free(op);
}

static void
on_tags_invalidated(void *arg, int status)
{
    struct invalidate_op *op = arg;

    invalidate_finish(op, status, "tags", op->n);
}

static void
on_entries_removed(void *arg, int status, uint64_t count)
{
    invalidate_finish(arg, status, "deleted", count);
}

/* Reads the array `name` of doc into op->items; NULL, or a message for a 400 (static or in buf). */
static const char *
string_list(struct invalidate_op *op, const char *name, char *buf, size_t buflen)
{
    json_t *a = json_object_get(op->doc, name);
    size_t n = json_is_array(a) ? json_array_size(a) : 0;

    if (!json_is_array(a)) {
        snprintf(buf, buflen, "\"%s\" must be an array of strings", name);
        return buf;
    }
    if (n == 0) {
        snprintf(buf, buflen, "\"%s\" is empty: give at least one", name);
        return buf;
    }
    if (n > INVALIDATE_MAX) {
        snprintf(buf, buflen, "\"%s\" has %zu items; at most %d in one request", name, n,
                 INVALIDATE_MAX);
        return buf;
    }
    op->items = xmalloc(n * sizeof(*op->items));
    op->lens = xmalloc(n * sizeof(*op->lens));
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_string(v) || json_string_length(v) == 0) {
            snprintf(buf, buflen, "\"%s\"[%zu] must be a non-empty string", name, i);
            return buf;
        }
        op->items[i] = json_string_value(v);
        op->lens[i] = json_string_length(v);
    }
    op->n = n;
    return NULL;
}

/*
 * POST /invalidate with one of {"tags": [...]}, {"keys": [...]} or {"pattern": "..."}:
 * bumps the tags' generations, removes the entries under the keys, or removes every entry
 * whose key matches the glob (store.h says how, secondaries included). 200 {"tags": N} or
 * {"deleted": N}; 400 for a body that is not exactly one of them; 503 when the store fails.
 */
static void
admin_invalidate(struct admin_worker *aw, struct server_request *req)
{
    struct invalidate_op *op = xcalloc(1, sizeof(*op));
    char buf[320];
    const char *detail = NULL, *form = NULL;
    json_error_t jerr;

    op->aw = aw;
    op->req = req;
    op->doc = json_loadb(req->body ? req->body : "", req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!op->doc) {
        snprintf(buf, sizeof(buf), "malformed JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        detail = buf;
        goto out;
    }
    if (!json_is_object(op->doc)) {
        detail = "the body must be a JSON object: {\"tags\": [...]}, {\"keys\": [...]} or "
                 "{\"pattern\": \"...\"}";
        goto out;
    }
    const char *name;
    json_t *v;
    size_t forms = 0;
    json_object_foreach(op->doc, name, v)
    {
        if (strcmp(name, "tags") != 0 && strcmp(name, "keys") != 0 &&
            strcmp(name, "pattern") != 0) {
            detail = "unknown member: give exactly one of \"tags\", \"keys\" or \"pattern\"";
            goto out;
        }
        form = strcmp(name, "tags") == 0 ? "tags" : strcmp(name, "keys") == 0 ? "keys" : "pattern";
        forms++;
    }
    if (forms != 1) {
        detail = forms ? "give only one of \"tags\", \"keys\" or \"pattern\" per request"
                       : "give one of \"tags\", \"keys\" or \"pattern\"";
        goto out;
    }
    if (strcmp(form, "pattern") == 0) {
        v = json_object_get(op->doc, "pattern");
        if (!json_is_string(v) || json_string_length(v) == 0) {
            detail = "\"pattern\" must be a non-empty string (a glob such as \"crm:*\")";
            goto out;
        }
    } else if ((detail = string_list(op, form, buf, sizeof(buf)))) {
        goto out;
    }
    /* The store completes now (memory) or later from this worker's loop (Redis). */
    if (strcmp(form, "tags") == 0)
        store_invalidate(aw->store, op->items, op->lens, op->n, on_tags_invalidated, op);
    else if (strcmp(form, "keys") == 0)
        store_delete_keys(aw->store, op->items, op->lens, op->n, on_entries_removed, op);
    else
        store_invalidate_pattern(aw->store, json_string_value(v), json_string_length(v),
                                 on_entries_removed, op);
    return;
out:
    if (detail)
        server_respond_problem(req, 400, NULL, NULL, detail, NULL);
    json_decref(op->doc);
    free(op->items);
    free(op->lens);
    free(op);
}

/* ---- GET /cache ---------------------------------------------------------------------------- */

/* A listing in flight: the request it answers, and the snapshot that names the routes. */
struct cache_op {
    struct server_request *req;
    struct policy *policy; /* a reference, or NULL */
};

/* A JSON string of text that may not be UTF-8: bytes of an invalid sequence become "%XX". */
static json_t *
json_bytes(const char *p, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    json_t *s = json_stringn(p, len);

    if (s)
        return s;
    struct sbuf b = {0};
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x80) {
            sbuf_add(&b, &p[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            sbuf_add(&b, e, 3);
        }
    }
    s = json_stringn(b.p ? b.p : "", b.len);
    sbuf_free(&b);
    return s;
}

/* Seconds of ms rounded up (time left: 0 only once it is over), or null for "none". */
static json_t *
seconds_left(uint64_t ms, bool has)
{
    return has ? json_integer((json_int_t)((ms + 999) / 1000)) : json_null();
}

/*
 * One entry as JSON: key, (a primary's route), kind, status, age, times left, size, tags, and
 * for a primary its Vary fields and variants. New reference.
 */
static json_t *
cache_entry_json(const struct store_list_entry *e, const struct policy *p, bool primary)
{
    const char *kind = e->flags & STORE_ENTRY_VARY   ? "vary"
                       : e->flags & STORE_ENTRY_PASS ? "pass"
                                                     : "response";
    json_t *tags = json_array();
    for (size_t i = 0; i < e->ntags; i++)
        json_array_append_new(tags, json_bytes(e->tags[i], e->taglens[i]));
    json_t *o = json_object();
    json_object_set_new(o, "key", json_bytes(e->key, e->keylen));
    if (primary) {
        const struct policy_endpoint *ep = p ? policy_key_endpoint(p, e->key, e->keylen) : NULL;
        json_object_set_new(o, "route", ep ? json_string(ep->name) : json_null());
    }
    json_object_set_new(o, "kind", json_string(kind));
    json_object_set_new(o, "status",
                        strcmp(kind, "response") == 0 ? json_integer(e->status) : json_null());
    json_object_set_new(o, "age", json_integer((json_int_t)(e->age_ms / 1000)));
    json_object_set_new(o, "ttl", seconds_left(e->ttl_ms, true));
    json_object_set_new(o, "stale_while_revalidate", seconds_left(e->swr_left_ms, e->swr_ms > 0));
    json_object_set_new(o, "stale_if_error", seconds_left(e->sie_left_ms, e->sie_ms > 0));
    json_object_set_new(o, "bytes", json_integer((json_int_t)e->bytes));
    json_object_set_new(o, "tags", tags);
    if (!primary)
        return o;
    json_t *variants = json_array();
    for (size_t j = 0; j < e->nvariants; j++)
        json_array_append_new(variants, cache_entry_json(&e->variants[j], p, false));
    json_object_set_new(o, "vary", e->vary ? json_bytes(e->vary, strlen(e->vary)) : json_null());
    json_object_set_new(o, "variant_count", json_integer((json_int_t)e->variant_count));
    json_object_set_new(o, "variants", variants);
    json_object_set_new(o, "variants_partial", json_boolean(e->variants_partial));
    return o;
}

static void
on_cache_listed(void *arg, int status, const struct store_listing *l)
{
    struct cache_op *op = arg;

    if (status != 0) {
        server_respond_problem(op->req, 503, NULL, NULL,
                               "the store did not complete the listing (it is unavailable or "
                               "failed): retry",
                               "Retry-After: 1\r\n");
        goto out;
    }
    json_t *entries = json_array();
    for (size_t i = 0; i < l->n; i++)
        json_array_append_new(entries, cache_entry_json(&l->entries[i], op->policy, true));
    reply_object(op->req, json_pack("{s:s, s:o, s:b, s:I}", "store", l->store, "entries", entries,
                                    "truncated", l->truncated, "scanned", (json_int_t)l->scanned));
out:
    policy_release(op->policy);
    free(op);
}

/*
 * GET /cache?match=GLOB&limit=N: the cache entries whose keys match GLOB (as POST /invalidate's
 * pattern; default "*"), at most N primaries (default 100, at most 1000), each with the route
 * whose key template wrote it. 400 for another parameter, one given twice, an empty or
 * undecodable glob, a bad limit; 503 when the store fails.
 */
static void
admin_cache(struct admin_worker *aw, struct server_request *req)
{
    const struct http_str *q = &req->http.query;
    char *glob = xmalloc(q->len + 2);
    size_t globlen = 1, limit = CACHE_LIST_DEFAULT;
    bool seen_match = false, seen_limit = false;
    char detail[160];

    glob[0] = '*';
    for (size_t i = 0; i < q->len;) {
        size_t end = i;
        while (end < q->len && q->p[end] != '&')
            end++;
        const char *name = q->p + i, *eq = memchr(name, '=', end - i);
        size_t nlen = eq ? (size_t)(eq - name) : end - i;
        const char *val = eq ? eq + 1 : q->p + end;
        size_t vlen = (size_t)(q->p + end - val);
        i = end + 1;
        if (nlen == 0 && !eq)
            continue; /* "a=1&&b=2" */
        if (nlen == 5 && memcmp(name, "match", 5) == 0 && !seen_match) {
            seen_match = true;
            if (vlen == 0 || http_pct_decode(val, vlen, glob, &globlen, 1) != 0 || globlen == 0) {
                snprintf(detail, sizeof(detail),
                         "match must be a non-empty glob, percent-encoded (no NUL byte)");
                goto bad;
            }
        } else if (nlen == 5 && memcmp(name, "limit", 5) == 0 && !seen_limit) {
            seen_limit = true;
            limit = 0;
            for (size_t k = 0; k < vlen && limit <= CACHE_LIST_MAX; k++)
                limit = val[k] >= '0' && val[k] <= '9' ? limit * 10 + (size_t)(val[k] - '0')
                                                       : CACHE_LIST_MAX + 1;
            if (limit < 1 || limit > CACHE_LIST_MAX) {
                snprintf(detail, sizeof(detail), "limit must be a number from 1 to %d",
                         CACHE_LIST_MAX);
                goto bad;
            }
        } else {
            snprintf(detail, sizeof(detail),
                     "unknown or repeated query parameter \"%.*s\": give match=GLOB and limit=N "
                     "once each",
                     (int)(nlen > 40 ? 40 : nlen), name);
            goto bad;
        }
    }
    if (!aw->store) {
        free(glob);
        server_respond_problem(req, 404, NULL, NULL, "no gateway runs here", NULL);
        return;
    }
    struct cache_op *op = xmalloc(sizeof(*op));
    op->req = req;
    op->policy = gateway_policy(aw->cfg->gateway);
    /* The store completes now (memory) or later from this worker's loop (Redis). */
    store_list(aw->store, glob, globlen, limit, on_cache_listed, op);
    free(glob);
    return;
bad:
    free(glob);
    server_respond_problem(req, 400, NULL, NULL, detail, NULL);
}

/* ---- GET /metrics, /callers, /stats -------------------------------------------------------- */

static void
admin_metrics(struct admin_worker *aw, struct server_request *req)
{
    const struct admin_config *cfg = aw->cfg;
    struct server_conn_counts cc;
    struct metrics_connections conns;
    struct metrics_sources src = {
        .gateway = cfg->gateway,
        .reloader = cfg->reloader,
        .notifier = cfg->notifier,
        .counters = &aw->counters,
    };
    if (cfg->server) {
        server_connection_counts(cfg->server, &cc);
        conns = (struct metrics_connections){
            .reading = cc.reading, .active = cc.active, .idle = cc.idle};
        src.connections = &conns;
    }
    struct sbuf out = {0};
    metrics_render(&src, &out);
    struct server_response resp = {
        .status = 200,
        .content_type = "text/plain; version=0.0.4; charset=utf-8",
        .body = out.p,
        .body_len = out.len,
    };
    server_respond(req, &resp);
    sbuf_free(&out);
}

/* GET /callers?top=N&policy=NAME: N (1..64, default 10) callers per limit policy. */
static void
admin_callers(const struct admin_config *cfg, struct server_request *req)
{
    const struct http_str *q = &req->http.query;
    struct http_str v;
    size_t top = 10;
    char policy[256];
    const char *only = NULL;
    if (http_query_find(q->p, q->len, "top", 3, &v)) {
        char num[8];
        size_t n = v.len < sizeof(num) - 1 ? v.len : sizeof(num) - 1;
        memcpy(num, v.p, n);
        num[n] = '\0';
        char *end;
        long t = strtol(num, &end, 10);
        if (v.len == 0 || v.len >= sizeof(num) || *end || t < 1 || t > INSIGHT_TOP_MAX) {
            char detail[96];
            snprintf(detail, sizeof(detail), "top must be a number from 1 to %d", INSIGHT_TOP_MAX);
            server_respond_problem(req, 400, NULL, NULL, detail, NULL);
            return;
        }
        top = (size_t)t;
    }
    if (http_query_find(q->p, q->len, "policy", 6, &v)) {
        size_t n;
        if (v.len >= sizeof(policy) || http_pct_decode(v.p, v.len, policy, &n, 1) != 0) {
            server_respond_problem(req, 400, NULL, NULL, "policy must be a limit policy's name",
                                   NULL);
            return;
        }
        policy[n] = '\0';
        only = policy;
    }
    if (!cfg->gateway) {
        server_respond_problem(req, 404, NULL, NULL, "no gateway runs here", NULL);
        return;
    }
    reply_object(req, insight_callers(cfg->gateway, top, only));
}

/* Answers 405 unless the method is GET or HEAD; returns whether it did. */
static bool
not_get(struct server_request *req)
{
    if (req->http.method == HTTP_GET || req->http.method == HTTP_HEAD)
        return false;
    server_respond_problem(req, 405, NULL, NULL, "use GET", "Allow: GET, HEAD\r\n");
    return true;
}

/* ---- GET /: the status page ---------------------------------------------------------------- */

static void
static_body(const void *body, size_t len, void *arg)
{
    /* The page is the binary's own data: nothing to release. */
}

/*
 * GET / (and HEAD): engine/control/page/status.html as built in. The page holds
 * no data: its script fetches /stats, with the token the operator gives it, so
 * it is served without one. Its Content-Security-Policy lets nothing run but
 * the page's own inline script (by its hash) and lets it fetch only from this
 * listener; the answer is never stored and never sniffed as anything but HTML.
 */
static void
admin_page(struct server_request *req)
{
    const struct embedded_file *f = embedded_page;
    while (f->module && strcmp(f->module, "status.html") != 0)
        f++;
    if (!f->module || !f->script_hash) {
        server_respond_problem(req, 404, NULL, NULL, "no status page is built into this binary",
                               NULL);
        return;
    }
    char headers[512];
    int n = snprintf(headers, sizeof(headers),
                     "Cache-Control: no-store\r\n"
                     "Content-Security-Policy: default-src 'none'; script-src %s; "
                     "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                     "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "Referrer-Policy: no-referrer\r\n",
                     f->script_hash);
    assert(n > 0 && (size_t)n < sizeof(headers));
    struct server_response resp = {
        .status = 200,
        .content_type = "text/html; charset=utf-8",
        .headers = headers,
        .headers_len = (size_t)n,
        .body = f->source,
        .body_len = f->len,
        .release = static_body,
    };
    server_respond(req, &resp);
}

static void
admin_handle(struct server_request *req, void *state)
{
    struct admin_worker *aw = state;
    const struct admin_config *cfg = aw->cfg;
    const struct http_request *h = &req->http;
    if (path_is(h, "/")) { /* the page: no data, no token */
        if (!not_get(req))
            admin_page(req);
        return;
    }
    if (!authorized(cfg, h)) {
        server_respond_problem(req, 401, NULL, NULL, "a valid bearer token is required",
                               "WWW-Authenticate: Bearer realm=\"sluice-admin\"\r\n");
        return;
    }
    struct status_sources src = {cfg->reloader, cfg->gateway, cfg->notifier};
    if (path_is(h, "/status")) {
        if (!not_get(req))
            reply_object(req, status_json(&src));
        return;
    }
    if (path_is(h, "/metrics")) {
        if (!not_get(req))
            admin_metrics(aw, req);
        return;
    }
    if (path_is(h, "/callers")) {
        if (!not_get(req))
            admin_callers(cfg, req);
        return;
    }
    if (path_is(h, "/stats")) {
        if (!not_get(req))
            reply_object(req, insight_stats(&src));
        return;
    }
    if (path_is(h, "/reload")) {
        if (h->method != HTTP_POST) {
            server_respond_problem(req, 405, NULL, NULL, "use POST", "Allow: POST\r\n");
            return;
        }
        char *errors = NULL;
        if (reloader_reload(cfg->reloader, "admin", &errors) != 0) {
            json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:s}", "type", "about:blank", "title",
                                  "Policy rejected", "status", 422, "detail",
                                  "the policy directory failed to load; nothing changed", "errors",
                                  errors ? errors : "");
            free(errors);
            char *body = json_dumps(o, JSON_COMPACT);
            json_decref(o);
            struct server_response resp = {
                .status = 422,
                .content_type = "application/problem+json",
                .body = body,
                .body_len = strlen(body),
            };
            server_respond(req, &resp);
            free(body);
            return;
        }
        reply_object(req, reloader_status(cfg->reloader));
        return;
    }
    if (path_is(h, "/explain")) {
        if (!not_get(req))
            admin_explain(aw, req);
        return;
    }
    if (path_is(h, "/invalidate")) {
        if (h->method != HTTP_POST) {
            server_respond_problem(req, 405, NULL, NULL, "use POST", "Allow: POST\r\n");
            return;
        }
        admin_invalidate(aw, req);
        return;
    }
    if (path_is(h, "/cache")) {
        if (h->method != HTTP_GET) {
            server_respond_problem(req, 405, NULL, NULL, "use GET", "Allow: GET\r\n");
            return;
        }
        admin_cache(aw, req);
        return;
    }
    server_respond_problem(
        req, 404, NULL, NULL,
        "admin endpoints: GET / (the status page), /status, /metrics, /callers, /stats, "
        "/explain, /cache; POST /reload, /invalidate",
        NULL);
}

struct server_app
admin_app(const struct admin_config *cfg)
{
    struct server_app app = {
        .worker_init = admin_worker_init,
        .worker_fini = admin_worker_fini,
        .handle = admin_handle,
        .ctx = (void *)cfg,
    };
    return app;
}
