/* metrics.c - the process's state in the Prometheus text exposition format (0.0.4). */
#define _GNU_SOURCE
#include "codec.h"
#include "metrics.h"

#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "gateway.h"
#include "hist.h"
#include "notify.h"
#include "reload.h"
#include "stats.h"
#include "tenant_hooks.h"

/* ---- the format ------------------------------------------------------------------------- */

static void
family(struct sbuf *out, const char *name, const char *type, const char *help)
{
    sbuf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped (section "Text format details"). */
static void
label_value(struct sbuf *out, const char *v, size_t len)
{
    size_t from = 0;
    for (size_t i = 0; i < len; i++) {
        const char *esc = v[i] == '\\'   ? "\\\\"
                          : v[i] == '"'  ? "\\\""
                          : v[i] == '\n' ? "\\n"
                                         : NULL;
        if (!esc)
            continue;
        sbuf_add(out, v + from, i - from);
        sbuf_adds(out, esc);
        from = i + 1;
    }
    sbuf_add(out, v + from, len - from);
}

/* Appends name="value" pairs, the values read from a stats key (values joined by
 * GW_STATS_KEY_SEP), without braces; n names. */
static void
labels_of_key(struct sbuf *out, const char *const *names, size_t n, const char *key, size_t len)
{
    const char *p = key, *end = key + len;
    for (size_t i = 0; i < n; i++) {
        const char *sep = memchr(p, GW_STATS_KEY_SEP, (size_t)(end - p));
        const char *vend = sep ? sep : end;
        sbuf_printf(out, "%s%s=\"", i ? "," : "", names[i]);
        label_value(out, p, (size_t)(vend - p));
        sbuf_adds(out, "\"");
        p = sep ? sep + 1 : end;
    }
}

/* Appends a label set "name=\"value\"" (no braces) for one label. */
static void
one_label(struct sbuf *out, const char *name, const char *value)
{
    sbuf_printf(out, "%s=\"", name);
    label_value(out, value, strlen(value));
    sbuf_adds(out, "\"");
}

/* name{labels} (or name alone when labels is NULL or ""), then a space. */
static void
sample_name(struct sbuf *out, const char *name, const char *suffix, const char *labels)
{
    sbuf_adds(out, name);
    sbuf_adds(out, suffix);
    if (labels && labels[0]) {
        sbuf_add(out, "{", 1);
        sbuf_adds(out, labels);
        sbuf_add(out, "}", 1);
    }
    sbuf_add(out, " ", 1);
}

static void
sample_u64(struct sbuf *out, const char *name, const char *labels, uint64_t v)
{
    sample_name(out, name, "", labels);
    sbuf_add_u64(out, v);
    sbuf_add(out, "\n", 1);
}

static void
sample_f(struct sbuf *out, const char *name, const char *labels, double v)
{
    sample_name(out, name, "", labels);
    sbuf_printf(out, "%.17g\n", v);
}

/* The le label of each bucket (seconds), "+Inf" for the last: `le="0.0001"} `. */
static char le_text[HIST_BUCKETS + 1][32];
static pthread_once_t le_once = PTHREAD_ONCE_INIT;

static void
le_init(void)
{
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        snprintf(le_text[i], sizeof(le_text[i]), "le=\"%g\"} ", (double)hist_bounds_us[i] / 1e6);
    snprintf(le_text[HIST_BUCKETS], sizeof(le_text[HIST_BUCKETS]), "le=\"+Inf\"} ");
}

/* A histogram's _bucket (cumulative, le in seconds), _sum (seconds) and _count samples;
 * labels (may be "") go before le. One metric with a thousand routes is a few thousand
 * lines: they are put together without printf. */
static void
histogram(struct sbuf *out, const char *name, const char *labels, const struct hist *h)
{
    pthread_once(&le_once, le_init);
    uint64_t cum = 0;
    size_t nlen = strlen(name), llen = strlen(labels);
    for (size_t i = 0; i <= HIST_BUCKETS; i++) {
        cum += h->counts[i];
        sbuf_add(out, name, nlen);
        sbuf_add(out, "_bucket{", 8);
        if (llen) {
            sbuf_add(out, labels, llen);
            sbuf_add(out, ",", 1);
        }
        sbuf_adds(out, le_text[i]);
        sbuf_add_u64(out, cum);
        sbuf_add(out, "\n", 1);
    }
    /* The sum in seconds from microseconds, exactly: whole seconds, then six decimals. */
    sample_name(out, name, "_sum", labels);
    sbuf_add_u64(out, h->sum_us / 1000000);
    char frac[8];
    snprintf(frac, sizeof(frac), ".%06u", (unsigned)(h->sum_us % 1000000));
    sbuf_adds(out, frac);
    sbuf_add(out, "\n", 1);
    sample_name(out, name, "_count", labels);
    sbuf_add_u64(out, cum);
    sbuf_add(out, "\n", 1);
}

/* Every item of a merged table as one sample each, labelled from its key. */
static void
items(struct sbuf *out, const char *name, const char *const *names, size_t nnames,
      const struct gw_stat_item *it, size_t n)
{
    struct sbuf l = {0};
    for (size_t i = 0; i < n; i++) {
        l.len = 0;
        labels_of_key(&l, names, nnames, it[i].key, it[i].keylen);
        sbuf_add(&l, "", 1);
        sample_u64(out, name, l.p, it[i].n);
    }
    sbuf_free(&l);
}

/* An integer member of a JSON object, 0 when absent. */
static uint64_t
json_u64(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

/* ---- the gateway ------------------------------------------------------------------------- */

static void
requests(struct sbuf *out, const struct gw_stats_view *v)
{
    static const char *const req_labels[] = {"route", "method", "status", "cache"};
    family(out, "sluice_requests_total", "counter",
           "Requests answered, by route, method, status and what the cache did.");
    items(out, "sluice_requests_total", req_labels, 4, v->requests, v->nrequests);

    family(out, "sluice_request_duration_seconds", "histogram",
           "Time from a request's arrival to its answer, by route.");
    struct sbuf l = {0};
    for (size_t i = 0; i < v->nroutes; i++) {
        l.len = 0;
        one_label(&l, "route", v->routes[i].route);
        sbuf_add(&l, "", 1);
        histogram(out, "sluice_request_duration_seconds", l.p, &v->routes[i].duration);
    }
    sbuf_free(&l);

    family(out, "sluice_origin_duration_seconds", "histogram",
           "Time an origin (a SQL statement or an upstream) took to answer, by source.");
    for (int o = 0; o < GW_ORIGINS; o++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "source=\"%s\"", gw_origin_names[o]);
        histogram(out, "sluice_origin_duration_seconds", labels, &v->origin[o]);
    }
    static const char *const err_labels[] = {"source", "reason"};
    family(out, "sluice_origin_errors_total", "counter",
           "Origin calls that failed, by source and reason.");
    items(out, "sluice_origin_errors_total", err_labels, 2, v->origin_errors, v->norigin_errors);

    static const char *const id_labels[] = {"source", "result"};
    family(out, "sluice_identity_total", "counter",
           "Requests by what identified the caller (jwt, api_key, header, anonymous) and how: "
           "verified (a signature checked), cached (a credential remembered), looked_up (an API "
           "key read from the database), trusted (identity headers), none (anonymous).");
    items(out, "sluice_identity_total", id_labels, 2, v->identity, v->nidentity);
    static const char *const refusal_labels[] = {"source", "reason"};
    family(out, "sluice_identity_refusals_total", "counter",
           "Requests refused for their credential, by source (jwt, api_key, or none for a "
           "missing one) and reason (expired, signature, unknown_key, missing, ...).");
    items(out, "sluice_identity_refusals_total", refusal_labels, 2, v->id_refusals,
          v->nid_refusals);

    static const char *const dec_labels[] = {"policy", "tier", "decision"};
    family(out, "sluice_ratelimit_decisions_total", "counter",
           "Rate limit decisions, by limit policy, caller tier and decision "
           "(allowed, denied, shadow_denied).");
    items(out, "sluice_ratelimit_decisions_total", dec_labels, 3, v->decisions, v->ndecisions);
}

static void
stores(struct sbuf *out, const struct gateway_health *h)
{
    const struct store_memory_stats *m = &h->memory;
    family(out, "sluice_cache_entries", "gauge",
           "Entries in the in-process store (the cache itself, or the fallback under Redis).");
    sample_u64(out, "sluice_cache_entries", NULL, m->entries);
    family(out, "sluice_cache_bytes", "gauge",
           "Bytes charged to the in-process store's cache budget.");
    sample_u64(out, "sluice_cache_bytes", NULL, m->cache_bytes);
    family(out, "sluice_cache_max_bytes", "gauge", "The in-process store's cache budget.");
    sample_u64(out, "sluice_cache_max_bytes", NULL, m->cache_max);
    family(out, "sluice_cache_evictions_total", "counter",
           "Entries the in-process store evicted to make room.");
    sample_u64(out, "sluice_cache_evictions_total", NULL, m->evicted_entries);
    family(out, "sluice_limit_bytes", "gauge",
           "Bytes charged to the in-process store's limit budget.");
    sample_u64(out, "sluice_limit_bytes", NULL, m->limit_bytes);
    family(out, "sluice_limit_refused_total", "counter",
           "Requests refused because the limit budget had no room for their state.");
    sample_u64(out, "sluice_limit_refused_total", NULL, m->limit_refused);

    char kind[48];
    snprintf(kind, sizeof(kind), "store=\"%s\"", h->store_kind);
    family(out, "sluice_store_up", "gauge",
           "1 when every worker is using the configured store, 0 when any answers without it.");
    sample_u64(out, "sluice_store_up", kind, h->store_degraded == 0);
    family(out, "sluice_store_breaker_open", "gauge",
           "1 when any worker's circuit breaker to the shared store is open.");
    sample_u64(out, "sluice_store_breaker_open", kind, h->store_degraded > 0);
    family(out, "sluice_store_errors_total", "counter", "Shared store operations that failed.");
    sample_u64(out, "sluice_store_errors_total", kind, h->store_failures);
    family(out, "sluice_store_fallbacks_total", "counter",
           "Requests answered by the in-process fallback while the shared store was unavailable.");
    sample_u64(out, "sluice_store_fallbacks_total", kind, h->store_fallbacks);
    if (strcmp(h->store_kind, "redis") == 0) {
        family(out, "sluice_store_latency_seconds", "histogram",
               "Round trips of commands to the shared store.");
        histogram(out, "sluice_store_latency_seconds", kind, &h->store_latency);
    }

    family(out, "sluice_db_up", "gauge",
           "0 when some worker's database pool has every connection failing, else 1.");
    sample_u64(out, "sluice_db_up", NULL, h->db_unreachable == 0);
    family(out, "sluice_db_connections", "gauge", "Database connections established.");
    sample_u64(out, "sluice_db_connections", NULL, h->db_connections);
    family(out, "sluice_db_pending", "gauge", "Statements waiting for or running on a connection.");
    sample_u64(out, "sluice_db_pending", NULL, h->db_pending);
    family(out, "sluice_db_pipelined_total", "counter",
           "Statements sent behind another on a busy connection (pipeline mode).");
    sample_u64(out, "sluice_db_pipelined_total", NULL, h->db_pipelined);
}

/* The access log's counters, when it is on. */
static void
access_log(struct sbuf *out, struct gateway *g)
{
    struct gateway_access_stats a;
    gateway_access_stats(g, &a);
    if (!a.on)
        return;
    family(out, "sluice_access_log_lines_total", "counter",
           "Access log lines handed to the log writer.");
    sample_u64(out, "sluice_access_log_lines_total", NULL, a.w.lines);
    family(out, "sluice_access_log_dropped_total", "counter",
           "Access log lines dropped because their worker's ring was full.");
    sample_u64(out, "sluice_access_log_dropped_total", NULL, a.w.dropped);
    family(out, "sluice_access_log_sampled_out_total", "counter",
           "Access log lines of 2xx and 3xx answers left out by --access-log-sample.");
    sample_u64(out, "sluice_access_log_sampled_out_total", NULL, a.sampled_out);
    family(out, "sluice_access_log_write_errors_total", "counter",
           "Writes to the access log (their lines lost) and reopens that failed.");
    sample_u64(out, "sluice_access_log_write_errors_total", NULL, a.w.write_errors);
}

/* ---- the control plane ------------------------------------------------------------------- */

static void
policy_metrics(struct sbuf *out, struct reloader *r)
{
    json_t *st = reloader_status(r);
    family(out, "sluice_policy_generation", "gauge", "The generation of the policy serving.");
    sample_u64(out, "sluice_policy_generation", NULL, json_u64(st, "generation"));
    family(out, "sluice_policy_endpoints", "gauge", "Endpoints the policy serving declares.");
    sample_u64(out, "sluice_policy_endpoints", NULL, json_u64(st, "endpoints"));
    uint64_t reloads = json_u64(st, "reloads"), failures = json_u64(st, "reload_failures");
    family(out, "sluice_reloads_total", "counter", "Policy reloads, by result.");
    sample_u64(out, "sluice_reloads_total", "result=\"ok\"", reloads);
    sample_u64(out, "sluice_reloads_total", "result=\"error\"", failures);
    const json_t *last = json_object_get(st, "last_reload");
    const json_t *res = json_object_get(last, "result");
    family(out, "sluice_last_reload_ok", "gauge", "1 when the last reload succeeded.");
    sample_u64(out, "sluice_last_reload_ok", NULL,
               !json_is_string(res) || strcmp(json_string_value(res), "ok") == 0);
    json_decref(st);

    /* Per tenant: every way a hook or a tenant file failed. */
    static const char *const reasons[][2] = {
        {"errors", "error"},           {"budget_exceeded", "budget"},
        {"memory_exceeded", "memory"}, {"invalid_decisions", "invalid_decision"},
        {"load_failures", "load"},
    };
    json_t *ts = tenant_stats_json();
    family(out, "sluice_tenant_hook_calls_total", "counter", "Tenant hook calls, by tenant.");
    const char *tenant;
    json_t *c;
    struct sbuf l = {0};
    json_object_foreach(ts, tenant, c)
    {
        l.len = 0;
        one_label(&l, "tenant", tenant);
        sbuf_add(&l, "", 1);
        sample_u64(out, "sluice_tenant_hook_calls_total", l.p, json_u64(c, "hook_calls"));
    }
    family(out, "sluice_tenant_hook_failures_total", "counter",
           "Tenant hook and tenant file failures, by tenant and reason.");
    json_object_foreach(ts, tenant, c)
    {
        for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
            l.len = 0;
            one_label(&l, "tenant", tenant);
            sbuf_adds(&l, ",");
            one_label(&l, "reason", reasons[i][1]);
            sbuf_add(&l, "", 1);
            sample_u64(out, "sluice_tenant_hook_failures_total", l.p, json_u64(c, reasons[i][0]));
        }
    }
    sbuf_free(&l);
    json_decref(ts);
}

/* ---- the process ------------------------------------------------------------------------- */

static void
process_metrics(struct sbuf *out)
{
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    unsigned long long utime = 0, stime = 0, start = 0, vsize = 0;
    long long rss = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        /* The fields after the command name (which may hold spaces) from its closing ')'. */
        const char *p = strrchr(buf, ')');
        if (p && sscanf(p + 2,
                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
                        "%*d %llu %llu %lld",
                        &utime, &stime, &start, &vsize, &rss) != 5)
            utime = stime = start = vsize = 0, rss = 0;
    }
    unsigned long long btime = 0;
    f = fopen("/proc/stat", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "btime %llu", &btime) == 1)
                break;
        fclose(f);
    }
    uint64_t fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d));)
            fds += e->d_name[0] != '.';
        fds -= fds > 0; /* the directory's own descriptor */
        closedir(d);
    }
    struct rlimit rl = {0};
    getrlimit(RLIMIT_NOFILE, &rl);

    family(out, "process_cpu_seconds_total", "counter", "User and system CPU time in seconds.");
    sample_f(out, "process_cpu_seconds_total", NULL, (double)(utime + stime) / (double)ticks);
    family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    sample_u64(out, "process_resident_memory_bytes", NULL, (uint64_t)rss * (uint64_t)page);
    family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    sample_u64(out, "process_virtual_memory_bytes", NULL, vsize);
    family(out, "process_open_fds", "gauge", "Open file descriptors.");
    sample_u64(out, "process_open_fds", NULL, fds);
    family(out, "process_max_fds", "gauge", "The limit on open file descriptors.");
    sample_u64(out, "process_max_fds", NULL, rl.rlim_cur == RLIM_INFINITY ? 0 : rl.rlim_cur);
    family(out, "process_start_time_seconds", "gauge",
           "Start time of the process since the epoch, in seconds.");
    sample_f(out, "process_start_time_seconds", NULL,
             (double)btime + (double)start / (double)ticks);
}

/* The coded forms made of cached answers (once per stored entry and coding), by coding. */
static void
compressions(struct sbuf *out)
{
    family(out, "sluice_compressions_total", "counter",
           "Coded forms of cached answers made when they were stored (compress), by coding.");
    for (int c = 0; c < CODEC_N; c++) {
        char label[32];
        snprintf(label, sizeof(label), "coding=\"%s\"", codec_name((enum codec)c));
        sample_u64(out, "sluice_compressions_total", label, codec_count((enum codec)c));
    }
}

void
metrics_render(const struct metrics_sources *src, struct sbuf *out)
{
    family(out, "sluice_build_info", "gauge", "The version running, as a label; always 1.");
    sample_u64(out, "sluice_build_info", "version=\"" SLUICE_VERSION "\"", 1);
    uint64_t inv_write = 0;
    if (src->gateway) {
        struct gw_stats_view v;
        gateway_stats(src->gateway, &v, 0);
        requests(out, &v);
        inv_write = v.invalidations_write;
        gw_stats_view_free(&v);
        struct gateway_health h;
        gateway_health(src->gateway, &h);
        stores(out, &h);
        access_log(out, src->gateway);
    }
    family(out, "sluice_invalidations_total", "counter",
           "Cache invalidations (tags, keys or patterns), by what asked for them: a write "
           "through the gateway, POST /invalidate, or a database notification.");
    sample_u64(out, "sluice_invalidations_total", "via=\"write\"", inv_write);
    sample_u64(out, "sluice_invalidations_total", "via=\"admin\"",
               src->counters ? src->counters->invalidations_admin : 0);
    uint64_t notified = 0;
    if (src->notifier) {
        json_t *n = notify_status(src->notifier);
        notified = json_u64(n, "invalidations");
        json_decref(n);
    }
    sample_u64(out, "sluice_invalidations_total", "via=\"notify\"", notified);
    compressions(out);
    if (src->reloader)
        policy_metrics(out, src->reloader);
    if (src->connections) {
        family(out, "sluice_connections", "gauge", "Client connections open, by state.");
        sample_u64(out, "sluice_connections", "state=\"reading\"", src->connections->reading);
        sample_u64(out, "sluice_connections", "state=\"active\"", src->connections->active);
        sample_u64(out, "sluice_connections", "state=\"idle\"", src->connections->idle);
    }
    process_metrics(out);
}
