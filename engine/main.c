/* main.c - command line: serve, check, explain, triggers, version. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <getopt.h>
#include <math.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/thread.h>

#include "admin.h"
#include "duration.h"
#include "envopt.h"
#include "evmem.h"
#include "gateway.h"
#include "listenfd.h"
#include "log.h"
#include "logwriter.h"
#include "notify.h"
#include "policy.h"
#include "reload.h"
#include "router.h"
#include "sdnotify.h"
#include "server.h"
#include "service.h"
#include "sql_check.h"
#include "store.h"
#include "store_redis.h"
#include "triggers.h"
#include "upgrade.h"
#include "util.h"

/* How long a new binary started by SIGUSR2 has to report that it serves. */
#define UPGRADE_TIMEOUT_MS 60000

static char **main_argv; /* the command line as given, for SIGUSR2 to run again */

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
    "  --no-sql-check            load and reload the policy without checking its SQL\n"
    "                            against DATABASE_URL's database\n"
    "  --workers N               worker threads (default: number of cores)\n"
    "  --max-connections N       open connections (default 10000); at the cap a new one\n"
    "                            closes an idle or unfinished one, and is refused (503)\n"
    "                            only when every one is busy\n"
    "  --max-connections-per-ip N\n"
    "                            open connections from one address, an IPv6 /64 (default\n"
    "                            256; 0: no cap); behind a proxy all share its address\n"
    "  --trusted-proxies CIDR[,CIDR...]\n"
    "                            peers (IPv4 or IPv6 ranges) whose X-Forwarded-For, or\n"
    "                            else Forwarded, names the client: its right-most entry\n"
    "                            that is not itself trusted is the client's address\n"
    "                            ({ip}, the access log, the upstream's fields); from\n"
    "                            other peers those fields are ignored (default: none)\n"
    "  --proxy-protocol          every connection starts with a PROXY protocol header (v1\n"
    "                            or v2), whose source address counts as the peer; one\n"
    "                            without it, or a malformed one, is closed unanswered\n"
    "  --ipv6-prefix N           {ip} of an IPv6 client is its address cut to N bits,\n"
    "                            1 to 128 (default 64: one host may hold a whole /64)\n"
    "  --max-header-bytes N      request line and headers, else 431 (default 16384)\n"
    "  --max-body-bytes N        request body, else 413 (default 1048576)\n"
    "  --header-timeout DUR      to receive a whole request, else 408; a new connection's\n"
    "                            first one counts from the accept (default 10s)\n"
    "  --idle-timeout DUR        between requests of a keep-alive connection, and for a\n"
    "                            client that reads nothing of a streamed answer (default 60s)\n"
    "  --reuse-port              share the listen address with a running sluice (a handover:\n"
    "                            start the new one with another --admin, then SIGTERM the\n"
    "                            old one); without it an address in use is refused\n"
    "  --db-pool N               PostgreSQL connections per worker (default 4)\n"
    "  --db-deadline DUR         per statement, else 504 (default 5s)\n"
    "  --cache-bytes N           memory store budget for cached answers, with their keys,\n"
    "                            fields and tags; least recently used go first\n"
    "                            (default 268435456)\n"
    "  --cache-max-size SIZE     an upstream's answer larger than this (bytes, or 512k, 1m,\n"
    "                            ...) is streamed to its client and not stored, unless its\n"
    "                            endpoint's cache.max_size says otherwise (default 1m)\n"
    "  --limit-bytes N           memory store budget for rate-limit states and fill leases;\n"
    "                            when full of live states, requests needing a new one get\n"
    "                            503 (default 67108864)\n"
    "  --redis-deadline DUR      per Redis command, else the request goes on without Redis\n"
    "                            (cache bypassed, limits in-process) (default 50ms)\n"
    "  --fleet-ttl DUR           the instances sharing the store publish themselves every\n"
    "                            DUR/6 (at most 10s); one not heard of for DUR leaves\n"
    "                            /status's fleet (default 60s)\n"
    "  --websocket-idle-timeout DUR\n"
    "                            a WebSocket tunnel to an upstream with no byte moving either\n"
    "                            way this long is closed (default 60s; 0: never)\n"
    "  --websocket-max-duration DUR\n"
    "                            a WebSocket tunnel is closed after this long (default 1h;\n"
    "                            0: never)\n"
    "  --no-stats                do not count requests by route, limit decisions, origins\n"
    "                            and callers (/metrics keeps the store, database, policy\n"
    "                            and process; /callers and /stats are empty)\n"
    "  --drain-timeout DUR       on SIGTERM or after an upgrade, the longest wait for the\n"
    "                            requests in flight before exiting anyway with status 1\n"
    "                            (default 30s; 0: no limit)\n"
    "  --access-log PATH         a JSON line per answered request, appended to PATH ('-':\n"
    "                            standard output); written by a thread of its own, lines\n"
    "                            that find its buffers full are dropped and counted\n"
    "                            (default: off)\n"
    "  --access-log-sample R     keep this fraction (0 < R <= 1) of the lines of 2xx and\n"
    "                            3xx answers, chosen by request id; every other line is\n"
    "                            kept (default 1)\n"
    "  --access-log-buffer SIZE  each worker's buffer of lines waiting for the writing\n"
    "                            thread (64k to 1g; default 4m, some 12,000 lines)\n"
    "  --log-level LEVEL         error, warn, info or debug: the least severe message the\n"
    "                            error log (standard error) writes (default info)\n"
    "  --log-format FORMAT       text or json: one line per message (default text)\n"
    "\n"
    "environment:\n"
    "  DATABASE_URL              libpq connection string or URI (default: PG* variables)\n"
    "  REDIS_URL                 redis://[[user]:password@]host[:port][/db]: cache and limits\n"
    "                            shared through Redis (default: the in-process memory store);\n"
    "                            or redis+sentinel://[[user]:password@]host[:port][,...]\n"
    "                            /MASTER_NAME[/db]: the master the sentinels name;\n"
    "                            or redis+cluster://host:port[,host:port...]: a Redis Cluster\n"
    "  REDIS_LIMITS_URL          a separate Redis for the limits (default: REDIS_URL's)\n"
    "  SLUICE_ADMIN_TOKEN        bearer token the admin listener requires (needed when the\n"
    "                            admin address is not a loopback address)\n"
    "  SLUICE_<OPTION>           any option above: --max-body-bytes N is also\n"
    "                            SLUICE_MAX_BODY_BYTES=N, a switch such as --no-watch is\n"
    "                            SLUICE_NO_WATCH=1 (or true, yes, on); a flag wins over\n"
    "                            its variable\n"
    "\n"
    "SIGTERM and SIGINT finish the requests in flight and exit 0. The policy is reloaded\n"
    "when its files change, on SIGHUP and on POST /reload to the admin listener; a set\n"
    "that fails to load changes nothing. SIGUSR1 reopens the access log, and the error\n"
    "log when standard error is a file, after a rotation renamed them. SIGUSR2 starts\n"
    "the binary again (same path and arguments) on the same listening sockets; once it\n"
    "serves, this process finishes its requests in flight and exits, and if it fails\n"
    "this one serves on.\n"
    "\n"
    "Under systemd (NOTIFY_SOCKET) it reports READY=1, RELOADING=1, STOPPING=1, STATUS=\n"
    "and, with WatchdogSec=, WATCHDOG=1 while every worker's event loop runs; it serves\n"
    "on the sockets of a socket unit (LISTEN_FDS; one named \"admin\" is the admin\n"
    "listener's).\n"
    "\n"
    "While the policy declares on_change, one more PostgreSQL connection LISTENs for the\n"
    "notifications of the triggers 'sluice triggers' installs, and drops the tags they\n"
    "name; it reconnects by itself when the connection breaks.\n";

static const char usage_check[] =
    "usage: sluice check [--db] POLICY_DIR\n"
    "\n"
    "Loads and validates every policy file as 'sluice serve' would (and the key files\n"
    "its identity reads). Exits 0 when the set and every tenant file (tenants/*.lua) are\n"
    "valid, printing only a 'file:line: note: ...' line for each key that callers who lack\n"
    "what it names share (anonymous = \"share\"); prints one 'file:line: message' line per\n"
    "problem and exits 1 otherwise.\n"
    "\n"
    "When DATABASE_URL is set, the set's SQL is checked against that database too, on one\n"
    "connection within 5 s: every statement is prepared and described (never run), its\n"
    "parameters counted against its args, the tier lookup's column must be text, and the\n"
    "on_change tables and columns must exist; what PostgreSQL refuses is a\n"
    "'file:line: message' line. When the database cannot be reached, a warning on\n"
    "stderr says the SQL was not verified and the exit status ignores it.\n"
    "\n"
    "options:\n"
    "  --db    check the SQL against the database (DATABASE_URL, else the PG*\n"
    "          environment) and exit 1 when it cannot be reached\n";

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

/*
 * The SQL part of `sluice check`: returns 0 when the database accepts p's SQL or could not be
 * asked without `required` (a warning on stderr then), 1 otherwise (the database's
 * "file:line: message" lines on stdout, or the reason on stderr).
 */
static int
check_sql(const struct policy *p, bool required)
{
    const char *url = getenv("DATABASE_URL");
    if (!sql_check_wanted(p))
        return 0;
    if (!required && (!url || !url[0])) {
        fprintf(stderr, "sluice check: warning: the SQL was not verified against a database: "
                        "DATABASE_URL is not set (--db checks it against the PG* environment's)\n");
        return 0;
    }
    char why[512], *errors = NULL;
    int rc = sql_check_policy(p, url, SQL_CHECK_BUDGET_MS, &errors, why, sizeof(why));
    if (rc > 0) {
        fputs(errors, stdout);
        free(errors);
        return 1;
    }
    if (rc < 0 && required) {
        fprintf(stderr, "sluice check: could not verify the SQL against the database: %s\n", why);
        return 1;
    }
    if (rc < 0)
        fprintf(stderr, "sluice check: warning: the SQL was not verified against a database: %s\n",
                why);
    return 0;
}

static int
cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {
        {"db", no_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    bool db = false;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'D':
            db = true;
            break;
        case 'h':
            fputs(usage_check, stdout);
            return 0;
        default:
            fputs(usage_check, stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fputs(usage_check, stderr);
        return 2;
    }
    char *errors = NULL;
    struct policy *p = policy_load(argv[optind], 1, NULL, &errors);
    if (!p) {
        fputs(errors ? errors : "policy rejected\n", stdout);
        free(errors);
        return 1;
    }
    if (p->notes)
        fputs(p->notes, stdout);
    int rc = check_sql(p, db);
    /* A broken tenant file does not stop a server, but it fails the check. */
    if (p->tenant_errors) {
        fputs(p->tenant_errors, stdout);
        rc = 1;
    }
    policy_release(p);
    return rc;
}

/* Everything `sluice serve` runs, and what it was told. */
struct serve {
    struct server_config cfg;
    struct gateway_config gcfg;
    char addr[256], admin_addr[256];
    int admin_on, admin_port, watch;
    int sql_check; /* -1: --no-sql-check; then 1 when the SQL is checked (DATABASE_URL set) */
    const char *dir;
    const char *token; /* SLUICE_ADMIN_TOKEN */
    struct gateway *gw;
    struct reloader *reloader;
    struct notifier *notifier;
    struct admin_config acfg; /* complete before the admin listener is created */
    struct server *server, *admin;
    const char *access_path; /* --access-log, or NULL */
    size_t access_buffer;    /* --access-log-buffer, or 0: the writer's default */
    struct logwriter *access;
    enum log_level log_level;
    enum log_format log_format;
    bool sample_given;
    sigset_t set;
    struct envopt env;        /* the command line with the options of SLUICE_* variables */
    struct cidr_list trusted; /* --trusted-proxies (cfg.trusted_proxies points here) */
    struct service *svc;
    struct listenfd inherited[LISTENFD_MAX]; /* sockets from systemd or an upgrading parent */
    int ninherited, nlisten;
    int listen_fds[LISTENFD_MAX], admin_fd; /* the server's inherited ones; the admin's or -1 */
    int ready_fd;                           /* an upgrading parent's pipe (upgrade.h), or -1 */
    char exe[2 * PATH_MAX + 2];             /* what SIGUSR2 starts */
    uint64_t drain_ms;                      /* --drain-timeout */
    uint64_t drain_deadline_us;             /* 0: not stopping, or no deadline */
    int stopping;
    struct upgrade *upgrade; /* one under way */
    int upgrade_wanted;      /* SIGUSR2 came before the server served: upgrade once it does */
    atomic_int ended;        /* the servers have returned */
};

/* SIGUSR1: the logs are opened again under their paths (a rotation renamed the files). */
static void
reopen_logs(struct serve *sv)
{
    if (sv->access)
        logwriter_reopen(sv->access); /* the writing thread writes what it holds first */
    int rc = log_reopen();
    if (rc < 0)
        log_error("SIGUSR1: reopening the error log %s: %s; still writing to the old file",
                  log_file_path(), strerror(errno));
    else if (rc == 0 || sv->access)
        log_info("SIGUSR1: %s%s%s", rc == 0 ? "reopened the error log" : "",
                 rc == 0 && sv->access ? "; " : "",
                 sv->access ? "the access log is reopened once what it holds is written" : "");
    else
        log_info("SIGUSR1: no log file to reopen (standard error is no file, no --access-log)");
}

static uint64_t
serve_generation(struct serve *sv)
{
    struct policy *p = gateway_policy(sv->gw);
    uint64_t gen = p->generation;
    policy_release(p);
    return gen;
}

/* Stops accepting and finishes the requests in flight (STOPPING=1 first when `notify`). */
static void
serve_stop(struct serve *sv, const char *why, int notify)
{
    if (sv->stopping)
        return;
    sv->stopping = 1;
    if (notify)
        service_stopping(sv->svc);
    log_info("%s: finishing requests in flight", why);
    upgrade_free(sv->upgrade); /* a new binary not ready yet is not left running */
    sv->upgrade = NULL;
    if (sv->drain_ms)
        sv->drain_deadline_us = util_mono_us() + sv->drain_ms * 1000;
    server_stop(sv->server);
    if (sv->admin)
        server_stop(sv->admin);
}

/* SIGUSR2: starts the binary again on the listening sockets. */
static void
serve_upgrade(struct serve *sv)
{
    const char *refused = sv->stopping  ? "the server is stopping"
                          : sv->upgrade ? "an upgrade is under way already"
                                        : NULL;
    if (!refused && !service_is_ready(sv->svc)) {
        log_info("upgrade: waiting until the server serves");
        sv->upgrade_wanted = 1;
        return;
    }
    sv->upgrade_wanted = 0;
    if (refused) {
        log_warn("upgrade not started: %s", refused);
        return;
    }
    int fds[LISTENFD_MAX], admin_fd = -1;
    unsigned n = server_listen_fds(sv->server, fds, LISTENFD_MAX);
    if (sv->admin && server_listen_fds(sv->admin, &admin_fd, 1) != 1)
        admin_fd = -1;
    char err[256];
    sv->upgrade = upgrade_start(sv->exe, main_argv, fds, n, admin_fd, sdnotify_watchdog_usec(),
                                UPGRADE_TIMEOUT_MS, err, sizeof(err));
    if (!sv->upgrade) {
        log_error("upgrade failed: %s; still serving", err);
        return;
    }
    log_info("upgrade: started %s as process %d; serving until it is ready", sv->exe,
             (int)upgrade_pid(sv->upgrade));
}

/*
 * The signal thread's periodic work: the service manager's messages, an
 * upgrade's outcome, the drain deadline. Returns the milliseconds until it is
 * due again.
 */
static uint64_t
serve_tick(struct serve *sv)
{
    uint64_t wait = service_tick(sv->svc, serve_generation(sv));
    if (sv->upgrade_wanted && service_is_ready(sv->svc))
        serve_upgrade(sv);
    if (sv->upgrade) {
        char err[256];
        switch (upgrade_poll(sv->upgrade, err, sizeof(err))) {
        case UPGRADE_PENDING:
            wait = wait < 20 ? wait : 20;
            break;
        case UPGRADE_READY: {
            int pid = (int)upgrade_pid(sv->upgrade);
            log_info("upgrade: new process %d serves", pid);
            sdnotify_printf("MAINPID=%d", pid); /* before this process exits */
            upgrade_free(sv->upgrade);
            sv->upgrade = NULL;
            serve_stop(sv, "upgraded", 0);
            break;
        }
        case UPGRADE_FAILED:
            log_error("upgrade failed: %s; still serving", err);
            upgrade_free(sv->upgrade);
            sv->upgrade = NULL;
            break;
        }
    }
    if (sv->drain_deadline_us) {
        uint64_t now = util_mono_us();
        if (now >= sv->drain_deadline_us) {
            struct server_conn_counts cc;
            server_connection_counts(sv->server, &cc);
            log_error("requests still in flight after --drain-timeout (%llu connections "
                      "open): exiting",
                      (unsigned long long)(cc.idle + cc.reading + cc.active));
            _exit(1);
        }
        uint64_t left = (sv->drain_deadline_us - now + 999) / 1000;
        wait = wait < left ? wait : left;
    }
    return wait;
}

static void *
signal_thread(void *arg)
{
    struct serve *sv = arg;
    for (;;) {
        uint64_t wait = serve_tick(sv);
        struct timespec ts = {.tv_sec = (time_t)(wait / 1000),
                              .tv_nsec = (long)(wait % 1000) * 1000000};
        int sig = sigtimedwait(&sv->set, NULL, &ts);
        if (atomic_load(&sv->ended))
            return NULL;
        if (sig < 0)
            continue;
        if (sig == SIGHUP) {
            service_reloading(sv->svc);
            int ok = reloader_reload(sv->reloader, "signal", NULL) == 0;
            service_reloaded(sv->svc, serve_generation(sv), ok);
            continue;
        }
        if (sig == SIGUSR1) {
            reopen_logs(sv);
            continue;
        }
        if (sig == SIGUSR2) {
            serve_upgrade(sv);
            continue;
        }
        serve_stop(sv, strsignal(sig), 1);
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

/* A size in bytes, or with a unit of 1024: "512k", "1m", "2g". */
static int
parse_size(const char *opt, const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10), per = 1;
    if (*end == 'k' || *end == 'K')
        per = 1ull << 10;
    else if (*end == 'm' || *end == 'M')
        per = 1ull << 20;
    else if (*end == 'g' || *end == 'G')
        per = 1ull << 30;
    if (per > 1)
        end++;
    if (errno || end == s || *end || s[0] == '-' || v == 0 || v > max / per) {
        fprintf(stderr,
                "sluice serve: %s: '%s' is not a size from 1 byte to %llu (e.g. 512k, 1m)\n", opt,
                s, max);
        return -1;
    }
    *out = v * per;
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

static void
notify_forget_credentials(void *gw)
{
    gateway_forget_api_keys(gw);
}

static void *
admin_thread(void *arg)
{
    struct server *admin = arg;
    char err[256];
    if (server_run(admin, err, sizeof(err)) != 0)
        log_error("admin listener: %s", err);
    return NULL;
}

/* The defaults of `sluice serve`, and what the environment gives. */
static void
serve_defaults(struct serve *sv)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    sv->cfg = (struct server_config){
        .listen_addr = "127.0.0.1",
        .listen_port = 8080,
        .workers = ncpu > 0 ? (unsigned)ncpu : 1,
        .max_header_bytes = 16384,
        .max_body_bytes = 1 << 20,
        .max_connections = 10000,
        .max_connections_per_ip = 256,
        .ipv6_prefix = 64,
        .header_timeout_ms = 10000,
        .idle_timeout_ms = 60000,
    };
    sv->gcfg = (struct gateway_config){
        .database_url = getenv("DATABASE_URL"),
        .db_pool_size = 4,
        .db_deadline_ms = 5000,
        .cache_bytes = 256u << 20,
        .limit_bytes = 64u << 20,
        .redis_url = getenv("REDIS_URL"),
        .redis_limits_url = getenv("REDIS_LIMITS_URL"),
        .redis_deadline_ms = 50,
        .cache_max_size = GATEWAY_CACHE_MAX_SIZE,
        .ws_idle_ms = 60000,
        .ws_max_ms = 3600000,
    };
    snprintf(sv->admin_addr, sizeof(sv->admin_addr), "127.0.0.1");
    sv->admin_on = 1;
    sv->admin_port = 8081;
    sv->watch = 1;
    sv->token = getenv("SLUICE_ADMIN_TOKEN");
    sv->log_level = LOGL_INFO;
    sv->log_format = LOG_TEXT;
    sv->drain_ms = 30000;
    sv->admin_fd = -1;
    sv->ready_fd = -1;
}

/*
 * Reads the options and the policy directory of `sluice serve` into sv.
 * Returns 0 to go on, or -1 with the exit status in *rc (0 after --help).
 */
static int
serve_options(struct serve *sv, int argc, char **argv, int *rc)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"admin", required_argument, NULL, 'a'},
        {"no-watch", no_argument, NULL, 'W'},
        {"no-sql-check", no_argument, NULL, 'Q'},
        {"workers", required_argument, NULL, 'w'},
        {"max-connections", required_argument, NULL, 'c'},
        {"max-connections-per-ip", required_argument, NULL, 'P'},
        {"trusted-proxies", required_argument, NULL, 'x'},
        {"proxy-protocol", no_argument, NULL, 'y'},
        {"ipv6-prefix", required_argument, NULL, '6'},
        {"reuse-port", no_argument, NULL, 'r'},
        {"max-header-bytes", required_argument, NULL, 'H'},
        {"max-body-bytes", required_argument, NULL, 'B'},
        {"header-timeout", required_argument, NULL, 't'},
        {"idle-timeout", required_argument, NULL, 'i'},
        {"db-pool", required_argument, NULL, 'p'},
        {"db-deadline", required_argument, NULL, 'd'},
        {"cache-bytes", required_argument, NULL, 'm'},
        {"limit-bytes", required_argument, NULL, 'L'},
        {"redis-deadline", required_argument, NULL, 'R'},
        {"fleet-ttl", required_argument, NULL, 'F'},
        {"no-stats", no_argument, NULL, 'S'},
        {"cache-max-size", required_argument, NULL, 'M'},
        {"websocket-idle-timeout", required_argument, NULL, 'I'},
        {"websocket-max-duration", required_argument, NULL, 'X'},
        {"access-log", required_argument, NULL, 'A'},
        {"access-log-sample", required_argument, NULL, 's'},
        {"access-log-buffer", required_argument, NULL, 'b'},
        {"log-level", required_argument, NULL, 'v'},
        {"log-format", required_argument, NULL, 'f'},
        {"drain-timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct server_config *cfg = &sv->cfg;
    struct gateway_config *gcfg = &sv->gcfg;
    unsigned long long v;
    int c;
    *rc = 2;
    char eerr[256];
    if (envopt_merge(&sv->env, opts, "SLUICE_", argc, argv, eerr, sizeof(eerr)) != 0) {
        fprintf(stderr, "sluice serve: %s\n", eerr);
        return -1;
    }
    argc = sv->env.argc;
    argv = sv->env.argv;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (parse_hostport("--listen", optarg, sv->addr, sizeof(sv->addr), &cfg->listen_port) !=
                0)
                return -1;
            cfg->listen_addr = sv->addr;
            break;
        case 'a':
            if (strcmp(optarg, "off") == 0) {
                sv->admin_on = 0;
                break;
            }
            if (parse_hostport("--admin", optarg, sv->admin_addr, sizeof(sv->admin_addr),
                               &sv->admin_port) != 0)
                return -1;
            sv->admin_on = 1;
            break;
        case 'W':
            sv->watch = 0;
            break;
        case 'Q':
            sv->sql_check = -1;
            break;
        case 'w':
            if (parse_count("--workers", optarg, 256, &v) != 0 || v == 0)
                return -1;
            cfg->workers = (unsigned)v;
            break;
        case 'c':
            if (parse_count("--max-connections", optarg, 1000000, &v) != 0 || v == 0)
                return -1;
            cfg->max_connections = (unsigned)v;
            break;
        case 'P':
            if (parse_count("--max-connections-per-ip", optarg, 1000000, &v) != 0)
                return -1;
            cfg->max_connections_per_ip = (unsigned)v;
            break;
        case 'r':
            cfg->reuse_port = 1;
            break;
        case 'x': {
            char cerr[256];
            cidr_list_free(&sv->trusted);
            if (cidr_list_parse(optarg, &sv->trusted, cerr, sizeof(cerr)) != 0) {
                fprintf(stderr, "sluice serve: --trusted-proxies: %s\n", cerr);
                return -1;
            }
            cfg->trusted_proxies = &sv->trusted;
            break;
        }
        case 'y':
            cfg->proxy_protocol = 1;
            break;
        case '6':
            if (parse_count("--ipv6-prefix", optarg, 128, &v) != 0)
                return -1;
            if (v == 0) {
                fprintf(stderr, "sluice serve: --ipv6-prefix: must be 1 to 128\n");
                return -1;
            }
            cfg->ipv6_prefix = (unsigned)v;
            break;
        case 'H':
            if (parse_count("--max-header-bytes", optarg, 1 << 20, &v) != 0 || v < 256)
                return -1;
            cfg->max_header_bytes = (size_t)v;
            break;
        case 'B':
            if (parse_count("--max-body-bytes", optarg, 1ull << 30, &v) != 0)
                return -1;
            cfg->max_body_bytes = (size_t)v;
            break;
        case 't':
            if (parse_dur("--header-timeout", optarg, &cfg->header_timeout_ms) != 0)
                return -1;
            break;
        case 'i':
            if (parse_dur("--idle-timeout", optarg, &cfg->idle_timeout_ms) != 0)
                return -1;
            break;
        case 'p':
            if (parse_count("--db-pool", optarg, 256, &v) != 0 || v == 0)
                return -1;
            gcfg->db_pool_size = (unsigned)v;
            break;
        case 'd':
            if (parse_dur("--db-deadline", optarg, &gcfg->db_deadline_ms) != 0)
                return -1;
            break;
        case 'm':
            if (parse_count("--cache-bytes", optarg, 1ull << 40, &v) != 0)
                return -1;
            gcfg->cache_bytes = (size_t)v;
            break;
        case 'L':
            if (parse_count("--limit-bytes", optarg, 1ull << 40, &v) != 0)
                return -1;
            if (v == 0) {
                fprintf(stderr, "sluice serve: --limit-bytes: must be more than 0\n");
                return -1;
            }
            gcfg->limit_bytes = (size_t)v;
            break;
        case 'R':
            if (parse_dur("--redis-deadline", optarg, &gcfg->redis_deadline_ms) != 0)
                return -1;
            if (gcfg->redis_deadline_ms == 0) {
                fprintf(stderr, "sluice serve: --redis-deadline: must be more than 0\n");
                return -1;
            }
            break;
        case 'F':
            if (parse_dur("--fleet-ttl", optarg, &gcfg->fleet_ttl_ms) != 0)
                return -1;
            if (gcfg->fleet_ttl_ms < 1000) {
                fprintf(stderr, "sluice serve: --fleet-ttl: must be 1s or more\n");
                return -1;
            }
            break;
        case 'S':
            gcfg->no_stats = true;
            break;
        case 'M':
            if (parse_size("--cache-max-size", optarg, 1ull << 30, &v) != 0)
                return -1;
            gcfg->cache_max_size = (size_t)v;
            break;
        case 'I':
            if (parse_dur("--websocket-idle-timeout", optarg, &gcfg->ws_idle_ms) != 0)
                return -1;
            break;
        case 'X':
            if (parse_dur("--websocket-max-duration", optarg, &gcfg->ws_max_ms) != 0)
                return -1;
            break;
        case 'A':
            if (!optarg[0]) {
                fprintf(stderr, "sluice serve: --access-log: expected a path or '-'\n");
                return -1;
            }
            sv->access_path = optarg;
            break;
        case 's': {
            char *end;
            errno = 0;
            double r = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(r) || !(r > 0) || r > 1) {
                fprintf(stderr,
                        "sluice serve: --access-log-sample: '%s' is not a number above 0 and "
                        "up to 1\n",
                        optarg);
                return -1;
            }
            gcfg->access_sample = r;
            sv->sample_given = true;
            break;
        }
        case 'b':
            if (parse_size("--access-log-buffer", optarg, 1ull << 30, &v) != 0)
                return -1;
            if (v < 64 * 1024) {
                fprintf(stderr, "sluice serve: --access-log-buffer: '%s' is less than 64k\n",
                        optarg);
                return -1;
            }
            sv->access_buffer = (size_t)v;
            break;
        case 'v':
            if (log_parse_level(optarg, &sv->log_level) != 0) {
                fprintf(stderr,
                        "sluice serve: --log-level: '%s' is not error, warn, info or debug\n",
                        optarg);
                return -1;
            }
            break;
        case 'f':
            if (log_parse_format(optarg, &sv->log_format) != 0) {
                fprintf(stderr, "sluice serve: --log-format: '%s' is not text or json\n", optarg);
                return -1;
            }
            break;
        case 'T':
            if (parse_dur("--drain-timeout", optarg, &sv->drain_ms) != 0)
                return -1;
            break;
        case 'h':
            fputs(usage_serve, stdout);
            *rc = 0;
            return -1;
        default:
            fputs(usage_serve, stderr);
            return -1;
        }
    }
    if (optind != argc - 1) {
        fputs(usage_serve, stderr);
        return -1;
    }
    if (sv->sample_given && !sv->access_path) {
        fprintf(stderr, "sluice serve: --access-log-sample needs --access-log\n");
        return -1;
    }
    if (sv->access_buffer && !sv->access_path) {
        fprintf(stderr, "sluice serve: --access-log-buffer needs --access-log\n");
        return -1;
    }
    sv->dir = argv[optind];
    return 0;
}

/*
 * With a DATABASE_URL (and without --no-sql-check), checks the SQL of the first generation p
 * against the database, as reloads will (reloader_check_sql). Returns 0 to serve p (a database
 * that cannot be reached is a warning), or -1 when the database refused it (logged).
 */
static int
serve_check_sql(struct serve *sv, const struct policy *p)
{
    const char *url = sv->gcfg.database_url;
    sv->sql_check = sv->sql_check >= 0 && url && url[0];
    if (!sv->sql_check)
        return 0;
    char why[512], *errors = NULL;
    int rc = sql_check_policy(p, url, SQL_CHECK_BUDGET_MS, &errors, why, sizeof(why));
    if (rc < 0)
        log_warn("the SQL of the policy in %s was not verified against the database (%s); "
                 "serving it anyway",
                 sv->dir, why);
    if (rc > 0)
        log_error("the database refuses the policy in %s:\n%s", sv->dir, errors);
    free(errors);
    return rc > 0 ? -1 : 0;
}

/* Frees what serve_options() kept: the merged command line and the trusted proxies. */
static void
serve_options_free(struct serve *sv)
{
    envopt_free(&sv->env);
    cidr_list_free(&sv->trusted);
}

/* Checks the settings that only make sense together. Returns 0, or -1 with a message printed. */
static int
serve_check(const struct serve *sv)
{
    const struct gateway_config *g = &sv->gcfg;
    const char *redis_urls[2] = {g->redis_url, g->redis_limits_url};
    for (int i = 0; i < 2; i++) {
        char rerr[256];
        if (redis_urls[i] && redis_urls[i][0] &&
            store_redis_check_url(redis_urls[i], rerr, sizeof(rerr)) != 0) {
            fprintf(stderr, "sluice serve: %s: %s\n", i ? "REDIS_LIMITS_URL" : "REDIS_URL", rerr);
            return -1;
        }
    }
    if (g->redis_limits_url && g->redis_limits_url[0] && !(g->redis_url && g->redis_url[0])) {
        fprintf(stderr, "sluice serve: REDIS_LIMITS_URL is set but REDIS_URL is not\n");
        return -1;
    }
    if (sv->admin_on && !admin_addr_is_loopback(sv->admin_addr) && !(sv->token && sv->token[0])) {
        fprintf(stderr,
                "sluice serve: --admin %s is not a loopback address: set "
                "SLUICE_ADMIN_TOKEN to protect it\n",
                sv->admin_addr);
        return -1;
    }
    return 0;
}

/*
 * Raises the soft limit on open files to what the connection caps need (each
 * connection is a descriptor, and so are the listeners and the pools); warns
 * when the hard limit is lower: accepting then pauses on EMFILE.
 */
static void
serve_raise_nofile(const struct serve *sv)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)sv->cfg.max_connections + 64 /* admin */ +
                  (rlim_t)sv->cfg.workers * (sv->gcfg.db_pool_size + 16) + 256;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < need)
        log_warn("the open-file limit (%llu) is below the %llu descriptors that "
                 "--max-connections %u needs: raise it (ulimit -n) or lower --max-connections",
                 (unsigned long long)rl.rlim_cur, (unsigned long long)need,
                 sv->cfg.max_connections);
}

/*
 * Takes the listening sockets the process was started with (a socket unit's,
 * or an upgrading parent's): the server serves on them instead of binding
 * --listen, the admin listener on the one named "admin". Returns 0, or -1
 * with a message printed.
 */
static int
serve_inherit(struct serve *sv)
{
    char err[256];
    int n = listenfd_take(sv->inherited, LISTENFD_MAX, err, sizeof(err));
    if (n < 0) {
        log_error("%s", err);
        return -1;
    }
    sv->ninherited = n;
    sv->ready_fd = upgrade_ready_fd(); /* read now: it unsets its variable, before any thread */
    for (int i = 0; i < n; i++) {
        const struct listenfd *l = &sv->inherited[i];
        if (!l->admin)
            sv->listen_fds[sv->nlisten++] = l->fd;
        else if (sv->admin_on && sv->admin_fd < 0)
            sv->admin_fd = l->fd;
        else
            log_warn("inherited admin socket %d left unused", l->fd);
    }
    if (sv->nlisten) {
        if (listenfd_address(sv->listen_fds[0], sv->addr, sizeof(sv->addr), &sv->cfg.listen_port) !=
            0)
            snprintf(sv->addr, sizeof(sv->addr), "inherited");
        sv->cfg.listen_addr = sv->addr;
        sv->cfg.fds = sv->listen_fds;
        sv->cfg.nfds = (unsigned)sv->nlisten;
        if ((unsigned)sv->nlisten > sv->cfg.workers) {
            log_info("%d inherited listening sockets: %d workers", sv->nlisten, sv->nlisten);
            sv->cfg.workers = (unsigned)sv->nlisten;
        }
    }
    if (sv->admin_fd >= 0 && listenfd_address(sv->admin_fd, sv->admin_addr, sizeof(sv->admin_addr),
                                              &sv->admin_port) != 0)
        snprintf(sv->admin_addr, sizeof(sv->admin_addr), "inherited");
    return 0;
}

/* Closes the inherited sockets: the servers hold their own descriptors of them. */
static void
serve_close_inherited(struct serve *sv)
{
    for (int i = 0; i < sv->ninherited; i++)
        close(sv->inherited[i].fd);
    sv->ninherited = sv->nlisten = 0;
    sv->admin_fd = -1;
    if (sv->ready_fd >= 0)
        close(sv->ready_fd);
    sv->ready_fd = -1;
}

/* Frees what serve_start() made (any part may be missing). */
static void
serve_free(struct serve *sv)
{
    upgrade_free(sv->upgrade);
    notify_stop(sv->notifier);
    server_free(sv->admin);
    server_free(sv->server);
    service_free(sv->svc);
    serve_close_inherited(sv);
    reloader_free(sv->reloader);
    gateway_free(sv->gw);
    logwriter_close(sv->access); /* the workers are gone: it writes what they left */
    sv->access = NULL;
}

/*
 * Builds the process around snapshot p (a reference is taken): the gateway,
 * the reloader, the listener, database-driven invalidation, the admin
 * listener and the directory watch. Returns 0, or -1 with a message in err
 * (what was built is freed by serve_free()).
 */
static int
serve_start(struct serve *sv, struct policy *p, char *err, size_t errlen)
{
    if (sv->access_path) {
        /* Each worker's ring: --access-log-buffer, or the writer's default (0). */
        struct logwriter_config lc = {
            .path = sv->access_path, .producers = sv->cfg.workers, .ring_bytes = sv->access_buffer};
        char lerr[256];
        sv->access = logwriter_open(&lc, lerr, sizeof(lerr));
        if (!sv->access) {
            util_seterr(err, errlen, "--access-log: %s", lerr);
            return -1;
        }
        sv->gcfg.access_log = sv->access;
    }
    sv->gw = gateway_new(&sv->gcfg, p);
    sv->reloader = reloader_new(sv->dir, sv->gw);
    if (sv->sql_check)
        reloader_check_sql(sv->reloader, sv->gcfg.database_url);
    /* Each worker stamps a heartbeat (readiness, the watchdog) around the gateway. */
    sv->svc = service_new(sv->cfg.workers);
    service_set_ready_fd(sv->svc, sv->ready_fd);
    sv->ready_fd = -1; /* the service's now */
    struct server_app gapp = gateway_app(sv->gw);
    struct server_app app = service_wrap(sv->svc, &gapp);
    sv->server = server_new(&sv->cfg, &app, err, errlen);
    if (!sv->server)
        return -1;
    char listen[128];
    snprintf(listen, sizeof(listen), "%s:%d", sv->cfg.listen_addr, server_port(sv->server));
    gateway_set_listen(sv->gw, listen);
    /*
     * Database-driven invalidation: the listener connects only while the
     * snapshot serving declares on_change, so it starts with every server and
     * follows reloads by itself.
     */
    struct notify_config ncfg = {.conninfo = sv->gcfg.database_url,
                                 .policy = notify_policy,
                                 .store_new = notify_store_new,
                                 .forget_credentials = notify_forget_credentials,
                                 .ctx = sv->gw};
    char nerr[256];
    sv->notifier = notify_start(&ncfg, nerr, sizeof(nerr));
    if (!sv->notifier)
        log_warn("database-driven invalidation is off: %s", nerr);
    sv->acfg = (struct admin_config){.reloader = sv->reloader,
                                     .gateway = sv->gw,
                                     .notifier = sv->notifier,
                                     .server = sv->server,
                                     .token = sv->token};
    if (sv->admin_on) {
        struct server_config acfg = admin_server_config(&sv->cfg, sv->admin_addr, sv->admin_port);
        if (sv->admin_fd >= 0) {
            acfg.fds = &sv->admin_fd;
            acfg.nfds = 1;
        }
        struct server_app aapp = admin_app(&sv->acfg);
        sv->admin = server_new(&acfg, &aapp, err, errlen);
        if (!sv->admin)
            return -1;
    }
    if (sv->watch && reloader_watch(sv->reloader, 100, err, errlen) != 0)
        return -1;
    serve_close_inherited(sv);
    return 0;
}

/* Runs the listeners until a signal stops them. Returns 0, or -1 when the server failed. */
static int
serve_run(struct serve *sv)
{
    pthread_t st, at;
    pthread_create(&st, NULL, signal_thread, sv);
    if (sv->admin)
        pthread_create(&at, NULL, admin_thread, sv->admin);
    char err[256];
    int rc = server_run(sv->server, err, sizeof(err));
    if (rc != 0)
        log_error("%s", err);
    /* Wake the signal thread: its work is done. */
    atomic_store(&sv->ended, 1);
    pthread_kill(st, SIGTERM);
    pthread_join(st, NULL);
    if (sv->admin) {
        server_stop(sv->admin);
        pthread_join(at, NULL);
    }
    return rc;
}

/* What SIGUSR2 starts: the path the process was started by, made absolute (PATH searched
 * when it holds no '/'), not resolved through links, so a replaced file is what runs. */
static void
serve_exe(struct serve *sv)
{
    const char *a0 = main_argv[0];
    char cwd[PATH_MAX];
    if (a0[0] != '/' && strchr(a0, '/') && getcwd(cwd, sizeof(cwd)))
        snprintf(sv->exe, sizeof(sv->exe), "%s/%s", cwd, a0);
    else
        snprintf(sv->exe, sizeof(sv->exe), "%s", a0);
}

static int
cmd_serve(int argc, char **argv)
{
#ifdef M_ARENA_MAX
    /* One malloc arena for every thread, set before any starts. A block goes back to the arena
     * it came from, and an arena reuses it only for its own threads: with one per worker,
     * whatever one worker evicts from the memory store that another filled stays resident,
     * and floods that move between workers left RSS at 1.5-1.8 x the store's budgets instead
     * of 1.16 x (bench/memory.py phases). */
    mallopt(M_ARENA_MAX, 1);
#endif
    /* libevent's buffers recycled per thread: bursts of them, freed, would otherwise become
     * holes among the cache's entries (evmem.h). */
    evmem_install();
    struct serve sv;
    memset(&sv, 0, sizeof(sv));
    serve_defaults(&sv);
    int rc;
    if (serve_options(&sv, argc, argv, &rc) != 0) {
        const char *var = envopt_source(&sv.env, optind - 1);
        if (rc != 0 && var)
            fprintf(stderr, "sluice serve: that value comes from %s\n", var);
        serve_options_free(&sv);
        return rc;
    }
    if (serve_check(&sv) != 0) {
        serve_options_free(&sv);
        return 2;
    }
    log_configure(sv.log_level, sv.log_format);
    log_follow_file();
    if (serve_inherit(&sv) != 0) {
        serve_options_free(&sv);
        return 1;
    }
    serve_exe(&sv);

    char *errors = NULL;
    struct policy *p = policy_load(sv.dir, 1, NULL, &errors);
    if (!p) {
        log_error("the policy in %s is invalid:\n%s", sv.dir, errors ? errors : "");
        free(errors);
        serve_close_inherited(&sv);
        serve_options_free(&sv);
        return 1;
    }
    if (serve_check_sql(&sv, p) != 0) {
        policy_release(p);
        serve_close_inherited(&sv);
        serve_options_free(&sv);
        return 1;
    }
    if (p->tenant_errors)
        log_warn("these tenant files did not load; their tenants get no "
                 "overrides:\n%s",
                 p->tenant_errors);

    /* Signals go to the signal thread only: block them before any thread starts. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sv.set);
    sigaddset(&sv.set, SIGTERM);
    sigaddset(&sv.set, SIGINT);
    sigaddset(&sv.set, SIGHUP);
    sigaddset(&sv.set, SIGUSR1);
    sigaddset(&sv.set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &sv.set, NULL);

    evthread_use_pthreads();
    serve_raise_nofile(&sv);
    char err[256];
    if (serve_start(&sv, p, err, sizeof(err)) != 0) {
        log_error("%s", err);
        serve_free(&sv);
        policy_release(p);
        serve_options_free(&sv);
        return 1;
    }
    log_info("version %s: %zu endpoints from %s, %u workers, %s store", SLUICE_VERSION,
             p->nendpoints, sv.dir, sv.cfg.workers,
             sv.gcfg.redis_url && sv.gcfg.redis_url[0] ? "redis" : "memory");
    policy_release(p);
    if (sv.admin)
        printf("admin on http://%s:%d\n", sv.admin_addr, server_port(sv.admin));
    printf("listening on http://%s:%d\n", sv.cfg.listen_addr, server_port(sv.server));
    fflush(stdout);

    rc = serve_run(&sv);
    serve_free(&sv);
    serve_options_free(&sv);
    log_info("stopped");
    return rc == 0 ? 0 : 1;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_main, stderr);
        return 2;
    }
    main_argv = argv;
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
