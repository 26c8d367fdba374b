/* access.c - the access log: one JSON line per answered client request, formatted by the worker
 * that answered it into its own ring of the log writer (common/logwriter.h). */
#include "access.h"

#include <stdlib.h>
#include <string.h>

#include "jsonstr.h"
#include "log.h"
#include "logwriter.h"

void
gw_access_init(struct gw_access *a, struct logwriter *lw, unsigned ring, double sample)
{
    memset(a, 0, sizeof(*a));
    a->lw = lw;
    a->ring = ring;
    a->keep_all = !(sample < 1.0);
    a->keep_below = a->keep_all ? UINT64_MAX : (uint64_t)(sample * 18446744073709551616.0);
}

void
gw_access_free(struct gw_access *a)
{
    sbuf_free(&a->line);
}

/* FNV-1a of the id, then splitmix64's finalizer so that every bit of the result depends on
 * every byte (FNV-1a alone leaves the top bits of short, similar ids alike). */
static uint64_t
id_hash(const char *id, size_t len)
{
    uint64_t x = util_fnv1a(id, len);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

bool
gw_access_sampled(const char *id, size_t len, double sample)
{
    if (!(sample < 1.0))
        return true;
    return id_hash(id, len) < (uint64_t)(sample * 18446744073709551616.0);
}

/* Appends ,"name": */
static void
key(struct sbuf *b, const char *name)
{
    sbuf_add(b, ",\"", 2);
    sbuf_adds(b, name);
    sbuf_add(b, "\":", 2);
}

/* Appends us as milliseconds with three decimals ("12.345"). */
static void
add_ms(struct sbuf *b, uint64_t us)
{
    char frac[4] = {'.', (char)('0' + us % 1000 / 100), (char)('0' + us % 100 / 10),
                    (char)('0' + us % 10)};
    sbuf_add_u64(b, us / 1000);
    sbuf_add(b, frac, 4);
}

static void
add_str(struct sbuf *b, const char *s, size_t len)
{
    if (s)
        jsonstr_add(b, s, len);
    else
        sbuf_add(b, "null", 4);
}

void
gw_access_format(struct sbuf *b, const struct gw_access_record *r, uint64_t now_ms)
{
    const struct http_request *h = r->http;
    char ts[LOG_TIME_LEN + 1];
    uint64_t ms = r->duration_us / 1000;
    log_time_rfc3339(now_ms > ms ? now_ms - ms : 0, ts);
    sbuf_add(b, "{\"ts\":\"", 7);
    sbuf_add(b, ts, LOG_TIME_LEN);
    sbuf_add(b, "\"", 1);
    key(b, "request_id");
    jsonstr_adds(b, r->request_id);
    key(b, "method");
    jsonstr_add(b, h->method_str.p, h->method_str.len);
    key(b, "path");
    jsonstr_add(b, h->path.p, h->path.len);
    key(b, "query");
    /* "/a?" has an empty query; "/a" none. */
    if (h->query.len || (h->target.len > h->path.len && h->target.p[h->path.len] == '?'))
        jsonstr_add(b, h->query.p, h->query.len);
    else
        sbuf_add(b, "null", 4);
    key(b, "route");
    jsonstr_adds(b, r->route);
    key(b, "status");
    sbuf_add_u64(b, (uint64_t)r->status);
    key(b, "cache");
    jsonstr_adds(b, gw_cache_kind_names[r->cache]);
    key(b, "user");
    add_str(b, r->user, r->user_len);
    key(b, "tier");
    jsonstr_adds(b, r->tier);
    key(b, "tenant");
    add_str(b, r->tenant, r->tenant_len);
    key(b, "limit");
    if (r->limit) {
        sbuf_add(b, "{\"policy\":", 10);
        jsonstr_adds(b, r->limit);
        sbuf_add(b, ",\"remaining\":", 13);
        sbuf_add_u64(b, r->limit_remaining);
        sbuf_adds(b, r->limit_shadow ? ",\"mode\":\"shadow\"}" : ",\"mode\":\"enforce\"}");
    } else {
        sbuf_add(b, "null", 4);
    }
    key(b, "shadow_denied");
    sbuf_add(b, "[", 1);
    for (size_t i = 0; i < r->nshadow_denied; i++) {
        if (i)
            sbuf_add(b, ",", 1);
        jsonstr_adds(b, r->shadow_denied[i]);
    }
    sbuf_add(b, "]", 1);
    key(b, "duration_ms");
    add_ms(b, r->duration_us);
    key(b, "origin_ms");
    if (r->origin)
        add_ms(b, r->origin_us);
    else
        sbuf_add(b, "null", 4);
    key(b, "bytes");
    sbuf_add_u64(b, r->bytes);
    key(b, "client");
    jsonstr_adds(b, r->client);
    sbuf_add(b, "}\n", 2);
}

void
gw_access_log(struct gw_access *a, const struct gw_access_record *r)
{
    if (!a->lw)
        return;
    if (r->status >= 200 && r->status < 400 && !a->keep_all &&
        id_hash(r->request_id, strlen(r->request_id)) >= a->keep_below) {
        __atomic_store_n(&a->sampled_out, __atomic_load_n(&a->sampled_out, __ATOMIC_RELAXED) + 1,
                         __ATOMIC_RELAXED);
        return;
    }
    a->line.len = 0;
    gw_access_format(&a->line, r, log_now_ms());
    logwriter_put(a->lw, a->ring, a->line.p, a->line.len);
}
