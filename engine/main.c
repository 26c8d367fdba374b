/* main.c - command line: serve, check, explain, triggers, version. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/thread.h>

#include "admin.h"
#include "duration.h"
#include "gateway.h"
#include "notify.h"
#include "policy.h"
#include "reload.h"
#include "router.h"
#include "server.h"
#include "store.h"
#include "triggers.h"
#include "util.h"

static const char usage_main[] =
    "usage: sluice COMMAND [OPTIONS]\n"
    "\n"
    "Caching and rate-limiting gateway driven by Lua policy files.\n"
    "\n"
    "commands:\n"
    "  serve POLICY_DIR   serve the endpoints of a policy directory\n"
    "  check POLICY_DIR   validate a policy directory (file:line errors, exit 1)\n"
    "  explain POLICY_DIR 'GET /path?query' [-H 'Name: value']...\n"
    "                     show which endpoint, limits, keys and tags a request gets\n"
    "  triggers POLICY_DIR print the SQL that installs the PostgreSQL triggers of on_change\n"
    "  version            print the version\n"
    "\n"
    "Run 'sluice COMMAND --help' for a command's options.\n";

static const char usage_serve[] =
    "usage: sluice serve [OPTIONS] POLICY_DIR\n"
    "\n"
    "options:\n"
    "  --listen ADDR:PORT        address to serve on (default 127.0.0.1:8080)\n"
    "  --admin ADDR:PORT|off     admin listener: /status, /reload (default 127.0.0.1:8081)\n"
    "  --no-watch                do not reload when files in POLICY_DIR change\n"
    "  --workers N               worker threads (default: number of cores)\n"
    "  --max-connections N       open connections before new ones are refused (default 10000)\n"
    "  --max-header-bytes N      request line and headers, else 431 (default 16384)\n"
    "  --max-body-bytes N        request body, else 413 (default 1048576)\n"
    "  --header-timeout DUR      to receive a whole request, else 408 (default 10s)\n"
    "  --idle-timeout DUR        keep-alive connection without a request (default 60s)\n"
    "  --db-pool N               PostgreSQL connections per worker (default 4)\n"
    "  --db-deadline DUR         per statement, else 503 (default 5s)\n"
    "  --cache-bytes N           memory store budget for cached bodies (default 268435456)\n"
    "  --redis-deadline DUR      per Redis command, else the request goes on without Redis\n"
    "                            (cache bypassed, limits in-process) (default 50ms)\n"
    "\n"
    "environment:\n"
    "  DATABASE_URL              libpq connection string or URI (default: PG* variables)\n"
    "  REDIS_URL                 redis://[[user]:password@]host[:port][/db]: cache and limits\n"
    "                            shared through Redis (default: the in-process memory store)\n"
    "  REDIS_LIMITS_URL          a separate Redis for the limits (default: REDIS_URL's)\n"
    "  SLUICE_ADMIN_TOKEN        bearer token the admin listener requires (needed when the\n"
    "                            admin address is not a loopback address)\n"
    "\n"
    "SIGTERM and SIGINT finish the requests in flight and exit 0. The policy is reloaded\n"
    "when its files change, on SIGHUP and on POST /reload to the admin listener; a set\n"
    "that fails to load changes nothing.\n"
    "\n"
    "While the policy declares on_change, one more PostgreSQL connection LISTENs for the\n"
    "notifications of the triggers 'sluice triggers' installs, and drops the tags they\n"
    "name; it reconnects by itself when the connection breaks.\n";

static const char usage_check[] =
    "usage: sluice check POLICY_DIR\n"
    "\n"
    "Loads and validates every policy file as 'sluice serve' would. Prints nothing and\n"
    "exits 0 when the set and every tenant file (tenants/*.lua) are valid; prints one\n"
    "'file:line: message' line per problem and exits 1 otherwise.\n";

static const char usage_explain[] =
    "usage: sluice explain [OPTIONS] POLICY_DIR 'METHOD /path?query'\n"
    "\n"
    "Prints as JSON what the policy does with the request: the endpoint matched\n"
    "(file and line), the caller, each limit (algorithm, window, key), the cache key\n"
    "and tags, what a write invalidates, and the policy generation. Runs no SQL.\n"
    "\n"
    "options:\n"
    "  -H, --header 'Name: value'   a request header (repeatable), e.g. -H 'X-User-Id: 42'\n"
    "  -d, --data BODY              a JSON request body (for {body.NAME} templates)\n"
    "  --ip ADDR                    the caller's address (default 127.0.0.1)\n"
    "  --tier NAME                  the tier an SQL lookup would find (default: the\n"
    "                               policy's default tier)\n";

static const char usage_triggers[] =
    "usage: sluice triggers [--drop] POLICY_DIR\n"
    "\n"
    "Prints the SQL that installs, for each on_change table of the policy, a trigger\n"
    "that sends pg_notify('" TRIGGERS_CHANNEL "', ...) with the changed row's columns\n"
    "that the on_change templates use; 'sluice serve' listens and drops those tags.\n"
    "The SQL runs in one transaction, checks that every table and column exists,\n"
    "and may be run again (it replaces what it installed). Install it with e.g.\n"
    "\n"
    "  sluice triggers POLICY_DIR | psql -v ON_ERROR_STOP=1 \"$DATABASE_URL\"\n"
    "\n"
    "When the policy is invalid, prints its 'file:line: message' lines to stderr,\n"
    "as 'sluice check' does, and exits 1.\n"
    "\n"
    "options:\n"
    "  --drop    print the SQL that removes those triggers and their functions instead\n";

static int
cmd_triggers(int argc, char **argv)
{
    static const struct option opts[] = {
        {"drop", no_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, drop = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'D':
            drop = 1;
            break;
        case 'h':
            fputs(usage_triggers, stdout);
            return 0;
        default:
            fputs(usage_triggers, stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fputs(usage_triggers, stderr);
        return 2;
    }
    /* Errors go to stderr: stdout is usually piped into psql. */
    char *errors = NULL;
    struct policy *p = policy_load(argv[optind], 1, NULL, &errors);
    if (!p) {
        fputs(errors ? errors : "policy rejected\n", stderr);
        free(errors);
        return 1;
    }
    if (p->tenant_errors) {
        fputs(p->tenant_errors, stderr);
        policy_release(p);
        return 1;
    }
    char *sql = triggers_sql(p->on_change, p->non_change, drop);
    policy_release(p);
    fputs(sql, stdout);
    free(sql);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int
cmd_explain(int argc, char **argv)
{
    static const struct option opts[] = {
        {"header", required_argument, NULL, 'H'}, {"data", required_argument, NULL, 'd'},
        {"ip", required_argument, NULL, 'i'},     {"tier", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    char **headers = xcalloc((size_t)argc, sizeof(*headers));
    size_t nheaders = 0;
    const char *body = NULL, *ip = "127.0.0.1", *tier = NULL;
    int c, rc = 2;
    optind = 1;
    while ((c = getopt_long(argc, argv, "H:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'H':
            headers[nheaders++] = optarg;
            break;
        case 'd':
            body = optarg;
            break;
        case 'i':
            ip = optarg;
            break;
        case 't':
            tier = optarg;
            break;
        case 'h':
            fputs(usage_explain, stdout);
            rc = 0;
            goto out;
        default:
            fputs(usage_explain, stderr);
            goto out;
        }
    }
    if (optind != argc - 2) {
        fputs(usage_explain, stderr);
        goto out;
    }
    char *errors = NULL;
    struct policy *p = policy_load(argv[optind], 1, NULL, &errors);
    if (!p) {
        fputs(errors ? errors : "policy rejected\n", stdout);
        free(errors);
        rc = 1;
        goto out;
    }
    char err[256];
    char *json = gateway_explain_request(p, argv[optind + 1], (const char *const *)headers,
                                         nheaders, body, ip, tier, err, sizeof(err));
    policy_release(p);
    if (!json) {
        fprintf(stderr, "sluice explain: %s\n", err);
        rc = 2;
        goto out;
    }
    printf("%s\n", json);
    free(json);
    rc = 0;
out:
    free(headers);
    return rc;
}

static int
cmd_version(void)
{
    printf("sluice %s\n", SLUICE_VERSION);
    return 0;
}

static int
wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    return 0;
}

static int
cmd_check(int argc, char **argv)
{
    if (wants_help(argc, argv)) {
        fputs(usage_check, stdout);
        return 0;
    }
    if (argc != 2) {
        fputs(usage_check, stderr);
        return 2;
    }
    char *errors = NULL;
    struct policy *p = policy_load(argv[1], 1, NULL, &errors);
    if (!p) {
        fputs(errors ? errors : "policy rejected\n", stdout);
        free(errors);
        return 1;
    }
    /* A broken tenant file does not stop a server, but it fails the check. */
    int rc = p->tenant_errors ? 1 : 0;
    if (p->tenant_errors)
        fputs(p->tenant_errors, stdout);
    policy_release(p);
    return rc;
}

struct serve_ctx {
    struct server *server, *admin;
    struct gateway *gw;
    struct reloader *reloader;
    const char *dir;
    sigset_t set;
};

static void *
signal_thread(void *arg)
{
    struct serve_ctx *sc = arg;
    for (;;) {
        int sig;
        if (sigwait(&sc->set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            reloader_reload(sc->reloader, "signal", NULL);
            continue;
        }
        fprintf(stderr, "sluice: %s: finishing requests in flight\n", strsignal(sig));
        server_stop(sc->server);
        if (sc->admin)
            server_stop(sc->admin);
        return NULL;
    }
}

static int
parse_count(const char *opt, const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v > max) {
        fprintf(stderr, "sluice serve: %s: '%s' is not a number up to %llu\n", opt, s, max);
        return -1;
    }
    *out = v;
    return 0;
}

static int
parse_dur(const char *opt, const char *s, uint64_t *ms)
{
    char err[128];
    if (duration_parse(s, ms, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice serve: %s: %s\n", opt, err);
        return -1;
    }
    return 0;
}

/* Parses ADDR:PORT ([v6]:PORT too) into addr (cap bytes) and *port. Returns 0 or -1. */
static int
parse_hostport(const char *opt, const char *s, char *addr, size_t cap, int *port)
{
    unsigned long long v;
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= cap ||
        parse_count(opt, colon + 1, 65535, &v) != 0) {
        fprintf(stderr, "sluice serve: %s: expected ADDR:PORT, got '%s'\n", opt, s);
        return -1;
    }
    memcpy(addr, s, (size_t)(colon - s));
    addr[colon - s] = '\0';
    size_t n = strlen(addr);
    if (n >= 2 && addr[0] == '[' && addr[n - 1] == ']') {
        memmove(addr, addr + 1, n - 2);
        addr[n - 2] = '\0';
    }
    *port = (int)v;
    return 0;
}

/* The notifier's view of the gateway: the snapshot serving and a store handle. */
static struct policy *
notify_policy(void *gw)
{
    return gateway_policy(gw);
}

static struct store *
notify_store_new(void *gw, struct event_base *base, const char *name)
{
    return gateway_store_new(gw, base, name);
}

static void *
admin_thread(void *arg)
{
    struct server *admin = arg;
    char err[256];
    if (server_run(admin, err, sizeof(err)) != 0)
        fprintf(stderr, "sluice: admin listener: %s\n", err);
    return NULL;
}

static int
cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"admin", required_argument, NULL, 'a'},
        {"no-watch", no_argument, NULL, 'W'},
        {"workers", required_argument, NULL, 'w'},
        {"max-connections", required_argument, NULL, 'c'},
        {"max-header-bytes", required_argument, NULL, 'H'},
        {"max-body-bytes", required_argument, NULL, 'B'},
        {"header-timeout", required_argument, NULL, 't'},
        {"idle-timeout", required_argument, NULL, 'i'},
        {"db-pool", required_argument, NULL, 'p'},
        {"db-deadline", required_argument, NULL, 'd'},
        {"cache-bytes", required_argument, NULL, 'm'},
        {"redis-deadline", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct server_config cfg = {
        .listen_addr = "127.0.0.1",
        .listen_port = 8080,
        .workers = ncpu > 0 ? (unsigned)ncpu : 1,
        .max_header_bytes = 16384,
        .max_body_bytes = 1 << 20,
        .max_connections = 10000,
        .header_timeout_ms = 10000,
        .idle_timeout_ms = 60000,
    };
    struct gateway_config gcfg = {
        .database_url = getenv("DATABASE_URL"),
        .db_pool_size = 4,
        .db_deadline_ms = 5000,
        .cache_bytes = 256u << 20,
        .redis_url = getenv("REDIS_URL"),
        .redis_limits_url = getenv("REDIS_LIMITS_URL"),
        .redis_deadline_ms = 50,
    };
    static char addr[256], admin_addr[256] = "127.0.0.1";
    int admin_on = 1, admin_port = 8081, watch = 1;
    unsigned long long v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (parse_hostport("--listen", optarg, addr, sizeof(addr), &cfg.listen_port) != 0)
                return 2;
            cfg.listen_addr = addr;
            break;
        case 'a':
            if (strcmp(optarg, "off") == 0) {
                admin_on = 0;
                break;
            }
            if (parse_hostport("--admin", optarg, admin_addr, sizeof(admin_addr), &admin_port) != 0)
                return 2;
            admin_on = 1;
            break;
        case 'W':
            watch = 0;
            break;
        case 'w':
            if (parse_count("--workers", optarg, 256, &v) != 0 || v == 0)
                return 2;
            cfg.workers = (unsigned)v;
            break;
        case 'c':
            if (parse_count("--max-connections", optarg, 1000000, &v) != 0 || v == 0)
                return 2;
            cfg.max_connections = (unsigned)v;
            break;
        case 'H':
            if (parse_count("--max-header-bytes", optarg, 1 << 20, &v) != 0 || v < 256)
                return 2;
            cfg.max_header_bytes = (size_t)v;
            break;
        case 'B':
            if (parse_count("--max-body-bytes", optarg, 1ull << 30, &v) != 0)
                return 2;
            cfg.max_body_bytes = (size_t)v;
            break;
        case 't':
            if (parse_dur("--header-timeout", optarg, &cfg.header_timeout_ms) != 0)
                return 2;
            break;
        case 'i':
            if (parse_dur("--idle-timeout", optarg, &cfg.idle_timeout_ms) != 0)
                return 2;
            break;
        case 'p':
            if (parse_count("--db-pool", optarg, 256, &v) != 0 || v == 0)
                return 2;
            gcfg.db_pool_size = (unsigned)v;
            break;
        case 'd':
            if (parse_dur("--db-deadline", optarg, &gcfg.db_deadline_ms) != 0)
                return 2;
            break;
        case 'm':
            if (parse_count("--cache-bytes", optarg, 1ull << 40, &v) != 0)
                return 2;
            gcfg.cache_bytes = (size_t)v;
            break;
        case 'R':
            if (parse_dur("--redis-deadline", optarg, &gcfg.redis_deadline_ms) != 0)
                return 2;
            if (gcfg.redis_deadline_ms == 0) {
                fprintf(stderr, "sluice serve: --redis-deadline: must be more than 0\n");
                return 2;
            }
            break;
        case 'h':
            fputs(usage_serve, stdout);
            return 0;
        default:
            fputs(usage_serve, stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fputs(usage_serve, stderr);
        return 2;
    }
    struct serve_ctx sc = {.dir = argv[optind]};
    const char *redis_urls[2] = {gcfg.redis_url, gcfg.redis_limits_url};
    for (int i = 0; i < 2; i++) {
        char rerr[256];
        if (redis_urls[i] && redis_urls[i][0] &&
            store_redis_check_url(redis_urls[i], rerr, sizeof(rerr)) != 0) {
            fprintf(stderr, "sluice serve: %s: %s\n", i ? "REDIS_LIMITS_URL" : "REDIS_URL", rerr);
            return 2;
        }
    }
    if (gcfg.redis_limits_url && gcfg.redis_limits_url[0] &&
        !(gcfg.redis_url && gcfg.redis_url[0])) {
        fprintf(stderr, "sluice serve: REDIS_LIMITS_URL is set but REDIS_URL is not\n");
        return 2;
    }
    const char *token = getenv("SLUICE_ADMIN_TOKEN");
    if (admin_on && !admin_addr_is_loopback(admin_addr) && !(token && token[0])) {
        fprintf(stderr,
                "sluice serve: --admin %s is not a loopback address: set "
                "SLUICE_ADMIN_TOKEN to protect it\n",
                admin_addr);
        return 2;
    }

    char *errors = NULL;
    struct policy *p = policy_load(sc.dir, 1, NULL, &errors);
    if (!p) {
        fprintf(stderr, "sluice serve: the policy in %s is invalid:\n%s", sc.dir,
                errors ? errors : "");
        free(errors);
        return 1;
    }
    if (p->tenant_errors)
        fprintf(stderr,
                "sluice serve: these tenant files did not load; their tenants get no "
                "overrides:\n%s",
                p->tenant_errors);

    /* Signals go to the signal thread only: block them before any thread starts. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sc.set);
    sigaddset(&sc.set, SIGTERM);
    sigaddset(&sc.set, SIGINT);
    sigaddset(&sc.set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sc.set, NULL);

    evthread_use_pthreads();
    sc.gw = gateway_new(&gcfg, p);
    sc.reloader = reloader_new(sc.dir, sc.gw);
    struct server_app app = gateway_app(sc.gw);
    char err[256];
    sc.server = server_new(&cfg, &app, err, sizeof(err));
    struct admin_config acfg = {.reloader = sc.reloader, .gateway = sc.gw, .token = token};
    if (sc.server && admin_on) {
        struct server_config admin_cfg = cfg;
        admin_cfg.listen_addr = admin_addr;
        admin_cfg.listen_port = admin_port;
        admin_cfg.workers = 1;
        admin_cfg.max_connections = 64;
        struct server_app aapp = admin_app(&acfg);
        sc.admin = server_new(&admin_cfg, &aapp, err, sizeof(err));
        if (!sc.admin) {
            server_free(sc.server);
            sc.server = NULL;
        }
    }
    if (sc.server && watch && reloader_watch(sc.reloader, 100, err, sizeof(err)) != 0) {
        server_free(sc.admin);
        server_free(sc.server);
        sc.server = NULL;
    }
    /*
     * Database-driven invalidation: the listener connects only while the
     * snapshot serving declares on_change, so it starts with every server and
     * follows reloads by itself.
     */
    struct notifier *notifier = NULL;
    if (sc.server) {
        struct notify_config ncfg = {.conninfo = gcfg.database_url,
                                     .policy = notify_policy,
                                     .store_new = notify_store_new,
                                     .ctx = sc.gw};
        notifier = notify_start(&ncfg, err, sizeof(err));
        if (!notifier)
            fprintf(stderr, "sluice serve: database-driven invalidation is off: %s\n", err);
        acfg.notifier = notifier; /* the admin thread has not started yet */
    }
    if (!sc.server) {
        fprintf(stderr, "sluice serve: %s\n", err);
        reloader_free(sc.reloader);
        gateway_free(sc.gw);
        policy_release(p);
        return 1;
    }
    fprintf(stderr, "sluice %s: %zu endpoints from %s, %u workers, %s store\n", SLUICE_VERSION,
            p->nendpoints, sc.dir, cfg.workers,
            gcfg.redis_url && gcfg.redis_url[0] ? "redis" : "memory");
    if (sc.admin)
        printf("admin on http://%s:%d\n", admin_addr, server_port(sc.admin));
    printf("listening on http://%s:%d\n", cfg.listen_addr, server_port(sc.server));
    fflush(stdout);
    policy_release(p);

    pthread_t st, at;
    pthread_create(&st, NULL, signal_thread, &sc);
    if (sc.admin)
        pthread_create(&at, NULL, admin_thread, sc.admin);
    int rc = server_run(sc.server, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "sluice serve: %s\n", err);
    /* Wake the signal thread if the server ended on its own. */
    pthread_kill(st, SIGTERM);
    pthread_join(st, NULL);
    if (sc.admin) {
        server_stop(sc.admin);
        pthread_join(at, NULL);
        server_free(sc.admin);
    }
    notify_stop(notifier);
    server_free(sc.server);
    reloader_free(sc.reloader);
    gateway_free(sc.gw);
    fprintf(stderr, "sluice: stopped\n");
    return rc == 0 ? 0 : 1;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_main, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage_main, stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        return cmd_version();
    if (strcmp(cmd, "check") == 0)
        return cmd_check(argc - 1, argv + 1);
    if (strcmp(cmd, "explain") == 0)
        return cmd_explain(argc - 1, argv + 1);
    if (strcmp(cmd, "triggers") == 0)
        return cmd_triggers(argc - 1, argv + 1);
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "sluice: unknown command '%s'\n\n%s", cmd, usage_main);
    return 2;
}
