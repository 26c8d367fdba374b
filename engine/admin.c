/* admin.c - the admin listener: status, reload (and later metrics, explain, invalidate). */
#define _GNU_SOURCE
#include "admin.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

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
        reply_json(req, 200, reloader_status_json(cfg->reloader));
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
    server_respond_problem(req, 404, NULL, NULL, "admin endpoints: GET /status, POST /reload",
                           NULL);
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
