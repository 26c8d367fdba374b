/* access.c - the access log: one JSON line per answered client request, formatted by the worker
 * that answered it into its own ring of the log writer (common/logwriter.h). */
#include "access.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jsonstr.h"
#include "log.h"
#include "logwriter.h"
#include "policy.h"

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

/*
 * The line is written straight into room sized once for its worst case (the
 * worker's ring, or a buffer): no call per token, and every string through
 * jsonstr_write(). Fixed text of a line (field names, numbers, the time, the cache
 * kind) stays below LINE_FIXED.
 */
#define LINE_FIXED 768

/* n bytes of s. Most are a few bytes long (a method, an address, a word), copied as two
 * overlapping pieces of fixed size rather than by a call. */
static inline char *
put(char *o, const char *s, size_t n)
{
    if (n > 32) {
        memcpy(o, s, n);
    } else if (n >= 16) {
        memcpy(o, s, 16);
        memcpy(o + n - 16, s + n - 16, 16);
    } else if (n >= 8) {
        memcpy(o, s, 8);
        memcpy(o + n - 8, s + n - 8, 8);
    } else if (n >= 4) {
        memcpy(o, s, 4);
        memcpy(o + n - 4, s + n - 4, 4);
    } else if (n) {
        o[0] = s[0];
        o[n / 2] = s[n / 2];
        o[n - 1] = s[n - 1];
    }
    return o + n;
}

#define PUT(o, lit) put(o, lit, sizeof(lit) - 1)

/* A string, or null. */
static char *
put_str(char *o, const char *s, size_t n)
{
    return s ? o + jsonstr_write(o, s, n) : PUT(o, "null");
}

static char *
put_strz(char *o, const char *s)
{
    return put_str(o, s, s ? strlen(s) : 0);
}

/* A string that needs no escaping, quoted: what the gateway made or checked to be printable
 * ASCII without `"` or `\` (a request id, a method token, an address, a static word). */
static char *
put_plain(char *o, const char *s, size_t n)
{
    assert(jsonstr_plain(s, n));
    *o++ = '"';
    o = put(o, s, n);
    *o++ = '"';
    return o;
}

static char *
put_plainz(char *o, const char *s)
{
    return put_plain(o, s, strlen(s));
}

static char *
put_u64(char *o, uint64_t v)
{
    return o + util_u64(o, v);
}

/* v (below 1000) as three digits, leading zeros kept. */
static char *
put_3digits(char *o, unsigned v)
{
    o[0] = (char)('0' + v / 100);
    o[1] = (char)('0' + v / 10 % 10);
    o[2] = (char)('0' + v % 10);
    return o + 3;
}

/* us as milliseconds with three decimals ("12.345"). */
static char *
put_ms(char *o, uint64_t us)
{
    o = put_u64(o, us / 1000);
    *o++ = '.';
    return put_3digits(o, (unsigned)(us % 1000));
}

/* The time ms as RFC 3339: its second formatted once per second and thread. */
static char *
put_time(char *o, uint64_t ms)
{
    static __thread uint64_t cached_sec = UINT64_MAX;
    static __thread char cached[LOG_TIME_LEN + 1];
    if (ms / 1000 != cached_sec) {
        cached_sec = ms / 1000;
        log_time_rfc3339(cached_sec * 1000, cached); /* "...T01:02:03.000Z" */
    }
    o = put(o, cached, LOG_TIME_LEN - 4);
    o = put_3digits(o, (unsigned)(ms % 1000));
    *o++ = 'Z';
    return o;
}

/* What measure() found of a line: its strings' lengths, the most bytes it can take,
 * policy_frees() then, and the slot its names are remembered in (NULL: none) and whether
 * that slot holds them. */
struct lens {
    size_t id, client, max;
    uint64_t frees;
    struct gw_access_names *slot;
    bool remembered;
};

/* The slot the names (route, tier, limit) are remembered in. */
static struct gw_access_names *
names_slot(struct gw_access_names *names, const char *route, const char *tier, const char *limit)
{
    uint64_t h = (uintptr_t)route * 0x9e3779b97f4a7c15ULL ^
                 (uintptr_t)tier * 0xc2b2ae3d27d4eb4fULL ^ (uintptr_t)limit * 0x165667b19e3779f9ULL;
    return &names[h >> 58 & (GW_ACCESS_NAMES - 1)];
}

/* The most bytes name s (NULL: null) takes in a line, beside its key. */
static size_t
name_max(const char *s)
{
    return s ? JSONSTR_MAX(strlen(s)) : 4;
}

static void
measure(const struct gw_access_record *r, struct gw_access_names *names, struct lens *n)
{
    const struct http_request *h = r->http;
    n->frees = 0;
    n->slot = NULL;
    n->remembered = false;
    if (names) {
        n->frees = policy_frees();
        n->slot = names_slot(names, r->route, r->tier, r->limit);
        n->remembered = n->slot->len && n->slot->route == r->route && n->slot->tier == r->tier &&
                        n->slot->limit == r->limit && n->slot->frees == n->frees;
    }
    n->id = strlen(r->request_id);
    n->client = r->client ? strlen(r->client) : 0;
    size_t shadow = 0;
    for (size_t i = 0; i < r->nshadow_denied; i++)
        shadow += JSONSTR_MAX(strlen(r->shadow_denied[i])) + 1;
    size_t names_max =
        n->remembered ? n->slot->len : name_max(r->route) + name_max(r->tier) + name_max(r->limit);
    n->max = LINE_FIXED + shadow + names_max +
             JSONSTR_MAX(h->method_str.len + h->path.len + h->query.len + r->user_len +
                         r->tenant_len + n->id + n->client);
}

/* Writes r's names, from `,"route":` to the limit's `"remaining":` (or `"limit":null`): as
 * remembered in n->slot, or formatted and then remembered there when they fit. */
static char *
put_names(char *o, const struct gw_access_record *r, const struct lens *n)
{
    struct gw_access_names *slot = n->slot;
    if (n->remembered)
        return put(o, slot->json, slot->len);
    char *start = o;
    o = PUT(o, ",\"route\":");
    o = put_strz(o, r->route);
    o = PUT(o, ",\"tier\":");
    o = put_strz(o, r->tier);
    if (r->limit) {
        o = PUT(o, ",\"limit\":{\"policy\":");
        o = put_strz(o, r->limit);
        o = PUT(o, ",\"remaining\":");
    } else {
        o = PUT(o, ",\"limit\":null");
    }
    size_t len = (size_t)(o - start);
    if (slot && len <= GW_ACCESS_NAMES_JSON) {
        memcpy(slot->json, start, len);
        slot->len = (uint16_t)len;
        slot->route = r->route;
        slot->tier = r->tier;
        slot->limit = r->limit;
        slot->frees = n->frees;
    }
    return o;
}

/* A status code: three digits, as every one an answer can have is. */
static char *
put_status(char *o, int status)
{
    if (status < 100 || status > 999)
        return put_u64(o, (uint64_t)(status < 0 ? 0 : status));
    return put_3digits(o, (unsigned)status);
}

/* Writes r's line at o (room for n->max bytes); returns its length. Fields that are absent
 * for most requests (query, shadow_denied, identity_refused) are left out when absent. */
static size_t
write_line(char *start, const struct gw_access_record *r, const struct lens *n, uint64_t now_ms)
{
    const struct http_request *h = r->http;
    char *o = start;
    uint64_t ms = r->duration_us / 1000;
    o = PUT(o, "{\"ts\":\"");
    o = put_time(o, now_ms > ms ? now_ms - ms : 0);
    o = PUT(o, "\",\"request_id\":");
    o = put_plain(o, r->request_id, n->id); /* made, or checked (gw_request_id_for) */
    o = PUT(o, ",\"method\":");
    o = put_plain(o, h->method_str.p, h->method_str.len); /* a token (RFC 9110 9.1) */
    o = PUT(o, ",\"path\":");
    o = put_str(o, h->path.p, h->path.len);
    /* "/a?" has an empty query; "/a" none. */
    if (h->query.len || (h->target.len > h->path.len && h->target.p[h->path.len] == '?')) {
        o = PUT(o, ",\"query\":");
        o = o + jsonstr_write(o, h->query.p, h->query.len);
    }
    o = put_names(o, r, n);
    if (r->limit) {
        o = put_u64(o, r->limit_remaining);
        o = r->limit_shadow ? PUT(o, ",\"mode\":\"shadow\"}") : PUT(o, ",\"mode\":\"enforce\"}");
    }
    o = PUT(o, ",\"status\":");
    o = put_status(o, r->status);
    o = PUT(o, ",\"cache\":");
    o = put_plainz(o, gw_cache_kind_names[r->cache]);
    o = PUT(o, ",\"user\":");
    o = put_str(o, r->user, r->user_len);
    o = PUT(o, ",\"tenant\":");
    o = put_str(o, r->tenant, r->tenant_len);
    if (r->nshadow_denied) {
        o = PUT(o, ",\"shadow_denied\":[");
        for (size_t i = 0; i < r->nshadow_denied; i++) {
            if (i)
                *o++ = ',';
            o = put_strz(o, r->shadow_denied[i]);
        }
        *o++ = ']';
    }
    /* Static words, never a credential: the caller's source, and a refusal's reason. */
    o = PUT(o, ",\"identity\":");
    o = r->identity ? put_plainz(o, r->identity) : PUT(o, "null");
    if (r->identity_refused) {
        o = PUT(o, ",\"identity_refused\":");
        o = put_plainz(o, r->identity_refused);
    }
    o = PUT(o, ",\"duration_ms\":");
    o = put_ms(o, r->duration_us);
    o = PUT(o, ",\"origin_ms\":");
    o = r->origin ? put_ms(o, r->origin_us) : PUT(o, "null");
    o = PUT(o, ",\"bytes\":");
    o = put_u64(o, r->bytes);
    o = PUT(o, ",\"client\":");
    o = r->client ? put_plain(o, r->client, n->client) : PUT(o, "null"); /* an address */
    o = PUT(o, "}\n");
    return (size_t)(o - start);
}

/* Appends r's line (measured in n) to b. */
static void
append_line(struct sbuf *b, const struct gw_access_record *r, const struct lens *n, uint64_t now_ms)
{
    sbuf_reserve(b, n->max);
    b->len += write_line(b->p + b->len, r, n, now_ms);
    b->p[b->len] = '\0';
}

void
gw_access_format(struct sbuf *b, const struct gw_access_record *r, uint64_t now_ms)
{
    struct lens n;
    measure(r, NULL, &n);
    append_line(b, r, &n, now_ms);
}

/* The wall clock (ms since the epoch) at monotonic time mono_us: the offset between the two
 * clocks is read once a second per thread, not for every line. */
static uint64_t
wall_ms(uint64_t mono_us)
{
    static __thread uint64_t offset_us, read_at_us;
    if (!read_at_us || mono_us - read_at_us >= 1000000) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t wall_us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
        read_at_us = util_mono_us();
        offset_us = wall_us - read_at_us;
    }
    return (mono_us + offset_us) / 1000;
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
    /* Straight into the ring; through the line buffer when the ring has not the line's
     * worst case in one piece (at its end, or nearly full). */
    struct lens n;
    measure(r, a->names, &n);
    uint64_t now_ms = wall_ms(r->now_us);
    char *o = logwriter_reserve(a->lw, a->ring, n.max);
    if (o) {
        logwriter_commit(a->lw, a->ring, write_line(o, r, &n, now_ms));
        return;
    }
    a->line.len = 0;
    append_line(&a->line, r, &n, now_ms);
    logwriter_put(a->lw, a->ring, a->line.p, a->line.len);
}
