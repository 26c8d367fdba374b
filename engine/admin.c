/* admin.c - the admin listener: status, reload, explain. */
#define _GNU_SOURCE
#include "admin.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "policy.h"
#include "reload.h"
#include "util.h"

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

static void *
admin_worker_init(struct worker *w, void *ctx)
{
    return ctx;
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

/* The reloader's status with the store's health added (a new string). */
static char *
status_json(const struct admin_config *cfg)
{
    char *text = reloader_status_json(cfg->reloader);
    if (!cfg->gateway)
        return text;
    json_t *o = json_loads(text, 0, NULL);
    free(text);
    json_object_set_new(o, "store", gateway_store_status(cfg->gateway));
    char *s = json_dumps(o, JSON_INDENT(2));
    json_decref(o);
    return s;
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

/*
 * GET /explain?request=GET%20/api/x&header=X-User-Id:%2042&tier=pro&ip=10.0.0.1&body=...
 * explains against the snapshot now serving.
 */
static void
admin_explain(const struct admin_config *cfg, struct server_request *req)
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
    struct policy *p = reloader_current(cfg->reloader);
    char err[256];
    char *json =
        gateway_explain_request(p, line, headers, nheaders, body, ip, tier, err, sizeof(err));
    policy_release(p);
    free(buf);
    if (!json) {
        server_respond_problem(req, 400, NULL, NULL, err, NULL);
        return;
    }
    reply_json(req, 200, json);
}

static void
admin_handle(struct server_request *req, void *state)
{
    const struct admin_config *cfg = state;
    const struct http_request *h = &req->http;
    if (!authorized(cfg, h)) {
        server_respond_problem(req, 401, NULL, NULL, "a valid bearer token is required",
                               "WWW-Authenticate: Bearer realm=\"sluice-admin\"\r\n");
        return;
    }
    if (path_is(h, "/status")) {
        if (h->method != HTTP_GET && h->method != HTTP_HEAD) {
            server_respond_problem(req, 405, NULL, NULL, "use GET", "Allow: GET, HEAD\r\n");
            return;
        }
        reply_json(req, 200, status_json(cfg));
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
        reply_json(req, 200, reloader_status_json(cfg->reloader));
        return;
    }
    if (path_is(h, "/explain")) {
        if (h->method != HTTP_GET && h->method != HTTP_HEAD) {
            server_respond_problem(req, 405, NULL, NULL, "use GET", "Allow: GET, HEAD\r\n");
            return;
        }
        admin_explain(cfg, req);
        return;
    }
    server_respond_problem(req, 404, NULL, NULL,
                           "admin endpoints: GET /status, POST /reload, GET /explain", NULL);
}

struct server_app
admin_app(const struct admin_config *cfg)
{
    struct server_app app = {
        .worker_init = admin_worker_init,
        .handle = admin_handle,
        .ctx = (void *)cfg,
    };
    return app;
}
