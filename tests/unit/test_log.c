/* test_log.c - unit tests of the error log (engine/common/log.c): RFC 3339 times against
 * gmtime, levels, the text and JSON forms, and whole lines from threads writing at once. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static void
test_rfc3339_known_instants(void **state)
{
    (void)state;
    char ts[LOG_TIME_LEN + 1];
    assert_int_equal(log_time_rfc3339(0, ts), LOG_TIME_LEN);
    assert_string_equal(ts, "1970-01-01T00:00:00.000Z");
    log_time_rfc3339(951782400007ull, ts);
    assert_string_equal(ts, "2000-02-29T00:00:00.007Z");
    log_time_rfc3339(1709251199999ull, ts);
    assert_string_equal(ts, "2024-02-29T23:59:59.999Z");
    log_time_rfc3339(4107542400050ull, ts); /* 2100 is not a leap year */
    assert_string_equal(ts, "2100-03-01T00:00:00.050Z");
    log_time_rfc3339(253402300799999ull, ts);
    assert_string_equal(ts, "9999-12-31T23:59:59.999Z");
}

/* Every instant agrees with gmtime_r and strftime, milliseconds included. */
static void
test_rfc3339_agrees_with_gmtime(void **state)
{
    (void)state;
    srand(7);
    for (int i = 0; i < 200000; i++) {
        uint64_t ms = ((uint64_t)rand() << 31 ^ (uint64_t)rand()) % 253402300800000ull;
        char ts[LOG_TIME_LEN + 1], want[64];
        log_time_rfc3339(ms, ts);
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        size_t n = strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(want + n, sizeof(want) - n, ".%03uZ", (unsigned)(ms % 1000));
        if (strcmp(ts, want) != 0)
            fail_msg("%llu: %s, gmtime says %s", (unsigned long long)ms, ts, want);
    }
}

static void
test_level_and_format_names(void **state)
{
    (void)state;
    enum log_level lv;
    enum log_format f;
    assert_int_equal(log_parse_level("debug", &lv), 0);
    assert_int_equal(lv, LOGL_DEBUG);
    assert_int_equal(log_parse_level("warn", &lv), 0);
    assert_int_equal(lv, LOGL_WARN);
    assert_int_equal(log_parse_level("verbose", &lv), -1);
    assert_int_equal(log_parse_format("json", &f), 0);
    assert_int_equal(f, LOG_JSON);
    assert_int_equal(log_parse_format("xml", &f), -1);
}

/* What the log wrote into a temporary file, from its start (static, NUL-terminated). */
static int logfd = -1;
static char logbuf[1 << 22];

static void
capture(void)
{
    char path[] = "/tmp/sluice-test-log-XXXXXX";
    logfd = mkstemp(path);
    assert_true(logfd >= 0);
    unlink(path);
    int fl = fcntl(logfd, F_GETFL);
    fcntl(logfd, F_SETFL, fl | O_APPEND);
    log_set_fd(logfd);
}

static const char *
captured(void)
{
    ssize_t n = pread(logfd, logbuf, sizeof(logbuf) - 1, 0);
    assert_true(n >= 0);
    logbuf[n] = '\0';
    return logbuf;
}

static void
release(void)
{
    log_set_fd(2);
    close(logfd);
    logfd = -1;
    log_configure(LOGL_INFO, LOG_TEXT);
}

static void
test_levels_below_the_setting_are_not_written(void **state)
{
    (void)state;
    capture();
    log_configure(LOGL_WARN, LOG_TEXT);
    assert_false(log_enabled(LOGL_INFO));
    assert_true(log_enabled(LOGL_ERROR));
    log_info("not this");
    log_debug("nor this");
    log_warn("this %d", 1);
    log_error("and this");
    const char *out = captured();
    assert_null(strstr(out, "not this"));
    assert_null(strstr(out, "nor this"));
    assert_non_null(strstr(out, " warn sluice: this 1\n"));
    assert_non_null(strstr(out, " error sluice: and this\n"));
    release();
}

static void
test_text_lines_carry_time_and_level_and_no_forged_line(void **state)
{
    (void)state;
    capture();
    log_configure(LOGL_DEBUG, LOG_TEXT);
    log_error("request %s: a failure\nfile.lua:3: second line", "r1");
    log_debug("a\rb\x1b[2Jc\td\n");
    const char *out = captured();
    regex_t re;
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                             "(error|debug) sluice: ",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    int lines = 0;
    char *copy = strdup(out), *save = NULL;
    for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (regexec(&re, l, 0, NULL, 0) != 0)
            fail_msg("line without its prefix: %s", l);
        lines++;
    }
    free(copy);
    regfree(&re);
    assert_int_equal(lines, 3);
    assert_non_null(strstr(out, "error sluice: request r1: a failure\n"));
    assert_non_null(strstr(out, "error sluice: file.lua:3: second line\n"));
    assert_non_null(strstr(out, "debug sluice: a\\x0db\\x1b[2Jc\td\n"));
    release();
}

static void
test_json_lines_are_objects_with_their_fields(void **state)
{
    (void)state;
    capture();
    log_configure(LOGL_INFO, LOG_JSON);
    struct log_field f[] = {{"request_id", "abc"}, {"route", "GET /a \"b\""}, {"tenant", NULL}};
    log_fields(LOGL_WARN, f, 3, "upstream \"%s\" failed:\n%s", "app", "\xff\x01");
    log_info("plain");
    const char *out = captured();
    const char *nl = strchr(out, '\n');
    assert_non_null(nl);
    json_error_t err;
    json_t *o = json_loadb(out, (size_t)(nl - out), 0, &err);
    if (!o)
        fail_msg("not JSON: %s: %s", out, err.text);
    assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(o, "msg")),
                        "upstream \"app\" failed:\n\xef\xbf\xbd\x01");
    assert_string_equal(json_string_value(json_object_get(o, "request_id")), "abc");
    assert_string_equal(json_string_value(json_object_get(o, "route")), "GET /a \"b\"");
    assert_true(json_is_null(json_object_get(o, "tenant")));
    assert_int_equal(strlen(json_string_value(json_object_get(o, "ts"))), LOG_TIME_LEN);
    json_decref(o);
    o = json_loads(nl + 1, 0, &err);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "plain");
    json_decref(o);
    release();
}

static void
test_a_long_message_is_written_whole(void **state)
{
    (void)state;
    capture();
    char *big = malloc(20000);
    memset(big, 'x', 19999);
    big[19999] = '\0';
    log_error("%s|end", big);
    const char *out = captured();
    assert_non_null(strstr(out, "|end\n"));
    assert_true(strlen(out) > 20000);
    free(big);
    release();
}

#define THREADS 4
#define PER_THREAD 5000

static void *
writer(void *arg)
{
    long t = (long)arg;
    for (int i = 0; i < PER_THREAD; i++)
        log_info("thread %ld line %d %s", t, i,
                 "padding padding padding padding padding padding padding padding");
    return NULL;
}

/* Threads writing at once: every line whole, none lost. */
static void
test_lines_of_threads_never_interleave(void **state)
{
    (void)state;
    capture();
    pthread_t th[THREADS];
    for (long t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, writer, (void *)t);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    const char *out = captured();
    int seen[THREADS] = {0};
    char *copy = strdup(out), *save = NULL;
    for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        long t;
        int i;
        char tail[128];
        const char *m = strstr(l, " info sluice: thread ");
        assert_non_null(m);
        assert_int_equal(sscanf(m, " info sluice: thread %ld line %d %127[a-z ]", &t, &i, tail), 3);
        assert_string_equal(tail, "padding padding padding padding padding padding padding "
                                  "padding");
        assert_int_equal(i, seen[t]); /* each thread's lines in its order */
        seen[t]++;
    }
    free(copy);
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(seen[t], PER_THREAD);
    release();
}

/* The whole of a file, NUL-terminated, into logbuf. */
static const char *
file_text(const char *path)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, logbuf, sizeof(logbuf) - 1);
    assert_true(n >= 0);
    logbuf[n] = '\0';
    close(fd);
    return logbuf;
}

/* A log that is a file is followed by its path: after a rename, a reopen writes the next
 * lines to a new file under the old name, the earlier ones stay in the renamed one. A log
 * that is no regular file (a pipe) is not followed, and a reopen does nothing. */
static void
test_a_log_file_is_reopened_under_its_path(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-test-log-XXXXXX", path[64], rotated[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/error.log", dir);
    snprintf(rotated, sizeof(rotated), "%s/error.log.1", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    assert_true(fd >= 0);
    log_set_fd(fd);
    assert_true(log_follow_file());
    assert_string_equal(log_file_path(), path);
    log_info("before");
    assert_int_equal(rename(path, rotated), 0);
    log_info("still before"); /* the descriptor follows the renamed file until the reopen */
    assert_int_equal(log_reopen(), 0);
    log_info("after");
    log_set_fd(2);
    close(fd); /* the reopened file went onto the same descriptor */
    file_text(rotated);
    assert_non_null(strstr(logbuf, "info sluice: before\n"));
    assert_non_null(strstr(logbuf, "info sluice: still before\n"));
    assert_null(strstr(logbuf, "sluice: after"));
    assert_non_null(strstr(file_text(path), "info sluice: after\n"));
    assert_null(strstr(logbuf, "before"));
    unlink(path);
    unlink(rotated);
    rmdir(dir);

    int p[2];
    assert_int_equal(pipe(p), 0);
    log_set_fd(p[1]);
    assert_false(log_follow_file());
    assert_null(log_file_path());
    assert_int_equal(log_reopen(), 1);
    log_set_fd(2);
    close(p[0]);
    close(p[1]);
}

/* Runs fn in a child whose log goes to a pipe; returns what it wrote (in logbuf) and checks
 * that it died of SIGABRT. */
static const char *
in_aborting_child(void (*fn)(void))
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        log_set_fd(p[1]);
        fn();
        _exit(0); /* not reached */
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while ((r = read(p[0], logbuf + n, sizeof(logbuf) - 1 - n)) > 0)
        n += (size_t)r;
    close(p[0]);
    logbuf[n] = '\0';
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
    return logbuf;
}

static void
abort_json(void)
{
    log_configure(LOGL_ERROR, LOG_JSON);
    log_abort("internal error: %s \"%d\"\n", "x", 42);
}

static void
oom_text(void)
{
    log_configure(LOGL_ERROR, LOG_TEXT);
    /* What util.c's oom() calls (a real failed malloc would be the sanitizers' to report). */
    assert_non_null(util_fatal);
    util_fatal("out of memory (allocating 12345 bytes)");
}

/* log_abort writes one line in the configured format, then aborts; util.c's allocation
 * failures go through it once the log is configured. */
static void
test_log_abort_writes_one_line_then_aborts(void **state)
{
    (void)state;
    const char *out = in_aborting_child(abort_json);
    json_error_t e;
    json_t *o = json_loads(out, 0, &e);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "level")), "error");
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "internal error: x \"42\"\n");
    json_decref(o);
    assert_int_equal(strchr(out, '\n') - out, (long)strlen(out) - 1);

    out = in_aborting_child(oom_text);
    regex_t re;
    assert_int_equal(regcomp(&re,
                             "^[0-9-]{10}T[0-9:]{8}\\.[0-9]{3}Z error sluice: out of memory "
                             "\\(allocating [0-9]+ bytes\\)\n$",
                             REG_EXTENDED),
                     0);
    if (regexec(&re, out, 0, NULL, 0) != 0)
        fail_msg("not a log line: %s", out);
    regfree(&re);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc3339_known_instants),
        cmocka_unit_test(test_rfc3339_agrees_with_gmtime),
        cmocka_unit_test(test_level_and_format_names),
        cmocka_unit_test(test_levels_below_the_setting_are_not_written),
        cmocka_unit_test(test_text_lines_carry_time_and_level_and_no_forged_line),
        cmocka_unit_test(test_json_lines_are_objects_with_their_fields),
        cmocka_unit_test(test_a_long_message_is_written_whole),
        cmocka_unit_test(test_lines_of_threads_never_interleave),
        cmocka_unit_test(test_a_log_file_is_reopened_under_its_path),
        cmocka_unit_test(test_log_abort_writes_one_line_then_aborts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
