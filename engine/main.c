/* main.c - command line: serve, check, version. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "duration.h"
#include "gateway.h"
#include "policy.h"
#include "router.h"
#include "server.h"
#include "util.h"

static const char usage_main[] =
    "usage: sluice COMMAND [OPTIONS]\n"
    "\n"
    "Caching and rate-limiting gateway driven by Lua policy files.\n"
    "\n"
    "commands:\n"
    "  serve POLICY_DIR   serve the endpoints of a policy directory\n"
    "  check POLICY_DIR   validate a policy directory (file:line errors, exit 1)\n"
    "  version            print the version\n"
    "\n"
    "Run 'sluice COMMAND --help' for a command's options.\n";

static const char usage_serve[] =
    "usage: sluice serve [OPTIONS] POLICY_DIR\n"
    "\n"
    "options:\n"
    "  --listen ADDR:PORT        address to serve on (default 127.0.0.1:8080)\n"
    "  --workers N               worker threads (default: number of cores)\n"
    "  --max-connections N       open connections before new ones are refused (default 10000)\n"
    "  --max-header-bytes N      request line and headers, else 431 (default 16384)\n"
    "  --max-body-bytes N        request body, else 413 (default 1048576)\n"
    "  --header-timeout DUR      to receive a whole request, else 408 (default 10s)\n"
    "  --idle-timeout DUR        keep-alive connection without a request (default 60s)\n"
    "  --db-pool N               PostgreSQL connections per worker (default 4)\n"
    "  --db-deadline DUR         per statement, else 503 (default 5s)\n"
    "  --cache-bytes N           memory store budget for cached bodies (default 268435456)\n"
    "\n"
    "environment:\n"
    "  DATABASE_URL              libpq connection string or URI (default: PG* variables)\n"
    "\n"
    "SIGTERM and SIGINT finish the requests in flight and exit 0; SIGHUP reloads the policy.\n";

static const char usage_check[] =
    "usage: sluice check POLICY_DIR\n"
    "\n"
    "Loads and validates every policy file as 'sluice serve' would. Prints nothing and\n"
    "exits 0 when the set is valid; prints one 'file:line: message' line per problem\n"
    "and exits 1 otherwise.\n";

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
    struct policy *p = policy_load(argv[1], 1, &errors);
    if (!p) {
        fputs(errors ? errors : "policy rejected\n", stdout);
        free(errors);
        return 1;
    }
    policy_release(p);
    return 0;
}

struct serve_ctx {
    struct server *server;
    struct gateway *gw;
    const char *dir;
    uint64_t generation;
    sigset_t set;
};

static void
reload(struct serve_ctx *sc)
{
    char *errors = NULL;
    struct policy *p = policy_load(sc->dir, sc->generation + 1, &errors);
    if (!p) {
        fprintf(stderr, "sluice: reload of %s failed; still serving generation %llu:\n%s", sc->dir,
                (unsigned long long)sc->generation, errors ? errors : "");
        free(errors);
        return;
    }
    sc->generation++;
    fprintf(stderr, "sluice: reloaded %s: generation %llu, %zu endpoints\n", sc->dir,
            (unsigned long long)sc->generation, p->nendpoints);
    gateway_set_policy(sc->gw, p);
    policy_release(p);
}

static void *
signal_thread(void *arg)
{
    struct serve_ctx *sc = arg;
    for (;;) {
        int sig;
        if (sigwait(&sc->set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            reload(sc);
            continue;
        }
        fprintf(stderr, "sluice: %s: finishing requests in flight\n", strsignal(sig));
        server_stop(sc->server);
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

static int
cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"workers", required_argument, NULL, 'w'},
        {"max-connections", required_argument, NULL, 'c'},
        {"max-header-bytes", required_argument, NULL, 'H'},
        {"max-body-bytes", required_argument, NULL, 'B'},
        {"header-timeout", required_argument, NULL, 't'},
        {"idle-timeout", required_argument, NULL, 'i'},
        {"db-pool", required_argument, NULL, 'p'},
        {"db-deadline", required_argument, NULL, 'd'},
        {"cache-bytes", required_argument, NULL, 'm'},
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
    };
    static char addr[256];
    unsigned long long v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l': {
            const char *colon = strrchr(optarg, ':');
            if (!colon || colon == optarg || (size_t)(colon - optarg) >= sizeof(addr) ||
                parse_count("--listen", colon + 1, 65535, &v) != 0) {
                fprintf(stderr, "sluice serve: --listen: expected ADDR:PORT, got '%s'\n", optarg);
                return 2;
            }
            memcpy(addr, optarg, (size_t)(colon - optarg));
            addr[colon - optarg] = '\0';
            if (addr[0] == '[' && addr[strlen(addr) - 1] == ']') {
                memmove(addr, addr + 1, strlen(addr) - 2);
                addr[strlen(addr) - 2] = '\0';
            }
            cfg.listen_addr = addr;
            cfg.listen_port = (int)v;
            break;
        }
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
    struct serve_ctx sc = {.dir = argv[optind], .generation = 1};

    char *errors = NULL;
    struct policy *p = policy_load(sc.dir, sc.generation, &errors);
    if (!p) {
        fprintf(stderr, "sluice serve: the policy in %s is invalid:\n%s", sc.dir,
                errors ? errors : "");
        free(errors);
        return 1;
    }

    /* Signals go to the signal thread only: block them before any thread starts. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sc.set);
    sigaddset(&sc.set, SIGTERM);
    sigaddset(&sc.set, SIGINT);
    sigaddset(&sc.set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sc.set, NULL);

    sc.gw = gateway_new(&gcfg, p);
    struct server_app app = gateway_app(sc.gw);
    char err[256];
    sc.server = server_new(&cfg, &app, err, sizeof(err));
    if (!sc.server) {
        fprintf(stderr, "sluice serve: %s\n", err);
        gateway_free(sc.gw);
        policy_release(p);
        return 1;
    }
    fprintf(stderr, "sluice %s: %zu endpoints from %s, %u workers, memory store\n", SLUICE_VERSION,
            p->nendpoints, sc.dir, cfg.workers);
    printf("listening on http://%s:%d\n", cfg.listen_addr, server_port(sc.server));
    fflush(stdout);
    policy_release(p);

    pthread_t st;
    pthread_create(&st, NULL, signal_thread, &sc);
    int rc = server_run(sc.server, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "sluice serve: %s\n", err);
    /* Wake the signal thread if the server ended on its own. */
    pthread_kill(st, SIGTERM);
    pthread_join(st, NULL);
    server_free(sc.server);
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
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(argc - 1, argv + 1);
    fprintf(stderr, "sluice: unknown command '%s'\n\n%s", cmd, usage_main);
    return 2;
}
