/* test_logwriter.c - unit tests of the log file writer (engine/common/logwriter.c): threads
 * putting lines at once lose none and split none, a reopen after a rename loses nothing, a
 * writer that cannot write makes producers drop and count instead of wait, lines reach the
 * file within the flush period without any wake-up, lines written in place keep their order
 * with lines put, and blocks allocated ahead never show in the file. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "logwriter.h"
#include "util.h"

static char dir[64];

static int
setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/sluice-lw-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd);
}

/* The whole of a file (owned), its length in *len. */
static char *
slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    struct sbuf b = {0};
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        sbuf_add(&b, buf, n);
    fclose(f);
    sbuf_add(&b, "", 1);
    *len = b.len - 1;
    return b.p;
}

static uint64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define PRODUCERS 4
#define LINES 20000

struct producer {
    struct logwriter *lw;
    unsigned index;
    unsigned put, dropped;
    bool paced; /* sleeps a little every 50 lines, so that others can act meanwhile */
};

static void *
produce(void *arg)
{
    struct producer *p = arg;
    char line[128];
    for (unsigned i = 0; i < LINES; i++) {
        int n = snprintf(line, sizeof(line), "p%u %u %s\n", p->index, i,
                         "0123456789abcdefghijklmnopqrstuvwxyz0123456789");
        for (;;) { /* retried here so that every line is expected in the file */
            if (logwriter_put(p->lw, p->index, line, (size_t)n)) {
                p->put++;
                break;
            }
            p->dropped++;
            usleep(100);
        }
        if (p->paced && i % 50 == 0)
            usleep(50);
    }
    return NULL;
}

/* A writer of cfg to dir/name (written into path) that must open. */
static struct logwriter *
open_writer(char path[128], const char *name, struct logwriter_config cfg)
{
    snprintf(path, 128, "%s/%s", dir, name);
    cfg.path = path;
    char err[256];
    struct logwriter *lw = logwriter_open(&cfg, err, sizeof(err));
    assert_non_null(lw);
    return lw;
}

/* Checks that buf holds whole lines of the producers, each producer's in order from *next,
 * and advances *next past them. Returns the number of lines. */
static unsigned
check_lines(char *buf, unsigned next[PRODUCERS])
{
    unsigned count = 0;
    char *save = NULL;
    for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        unsigned p, i;
        char tail[64];
        if (sscanf(l, "p%u %u %63s", &p, &i, tail) != 3 || p >= PRODUCERS)
            fail_msg("not a whole line: %s", l);
        assert_string_equal(tail, "0123456789abcdefghijklmnopqrstuvwxyz0123456789");
        if (i != next[p])
            fail_msg("producer %u: line %u after %u", p, i, next[p]);
        next[p]++;
        count++;
    }
    return count;
}

static void
test_threads_putting_at_once_lose_and_split_no_line(void **state)
{
    (void)state;
    char path[128];
    struct logwriter *lw =
        open_writer(path, "a.log",
                    (struct logwriter_config){
                        .producers = PRODUCERS, .ring_bytes = 64 * 1024, .flush_ms = 200});
    pthread_t th[PRODUCERS];
    struct producer ps[PRODUCERS];
    for (unsigned i = 0; i < PRODUCERS; i++) {
        ps[i] = (struct producer){.lw = lw, .index = i};
        pthread_create(&th[i], NULL, produce, &ps[i]);
    }
    for (unsigned i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
    struct logwriter_stats st;
    logwriter_stats(lw, &st);
    assert_int_equal(st.lines, PRODUCERS * LINES);
    logwriter_close(lw);
    size_t len;
    char *buf = slurp(path, &len);
    unsigned next[PRODUCERS] = {0};
    assert_int_equal(check_lines(buf, next), PRODUCERS * LINES);
    free(buf);
}

struct rotator {
    const char *path, *rotated;
    struct logwriter *lw;
};

static void *
rotate(void *arg)
{
    struct rotator *r = arg;
    struct logwriter_stats st;
    do { /* half way through the traffic */
        usleep(1000);
        logwriter_stats(r->lw, &st);
    } while (st.lines < PRODUCERS * LINES / 2);
    assert_int_equal(rename(r->path, r->rotated), 0); /* logrotate: rename, then signal */
    logwriter_reopen(r->lw);
    return NULL;
}

/* A rotation in the middle of the traffic: the old file and the new one hold every line
 * between them, each producer's in order (the old file's first). */
static void
test_a_reopen_after_rename_loses_no_line(void **state)
{
    (void)state;
    char path[128], rotated[128];
    snprintf(rotated, sizeof(rotated), "%s/b.log.1", dir);
    struct logwriter *lw = open_writer(
        path, "b.log", (struct logwriter_config){.producers = PRODUCERS, .ring_bytes = 64 * 1024});
    pthread_t th[PRODUCERS], rt;
    struct producer ps[PRODUCERS];
    struct rotator r = {path, rotated, lw};
    for (unsigned i = 0; i < PRODUCERS; i++) {
        ps[i] = (struct producer){.lw = lw, .index = i, .paced = true};
        pthread_create(&th[i], NULL, produce, &ps[i]);
    }
    pthread_create(&rt, NULL, rotate, &r);
    for (unsigned i = 0; i < PRODUCERS; i++)
        pthread_join(th[i], NULL);
    pthread_join(rt, NULL);
    logwriter_close(lw);
    size_t l1, l2;
    char *old = slurp(rotated, &l1), *cur = slurp(path, &l2);
    unsigned next[PRODUCERS] = {0};
    unsigned n1 = check_lines(old, next);
    unsigned n2 = check_lines(cur, next);
    assert_int_equal(n1 + n2, PRODUCERS * LINES);
    assert_true(n2 > 0); /* lines went on into the new file */
    free(old);
    free(cur);
}

static void *
read_all(void *arg)
{
    int fd = *(int *)arg;
    char buf[65536];
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    return NULL;
}

/* The writing thread blocked on a pipe nobody reads: producers are never held up; lines that
 * find no room are dropped and counted, and the count adds up. */
static void
test_a_writer_that_falls_behind_makes_lines_drop_not_wait(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/fifo", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int rfd = open(path, O_RDONLY | O_NONBLOCK); /* a reader that never reads */
    assert_true(rfd >= 0);
    struct logwriter *lw = open_writer(
        path, "fifo", (struct logwriter_config){.producers = 1, .ring_bytes = 16 * 1024});
    char line[100];
    memset(line, 'x', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\n';
    unsigned ok = 0, dropped = 0;
    uint64_t start = now_ms();
    for (int i = 0; i < 200000; i++) {
        if (logwriter_put(lw, 0, line, sizeof(line)))
            ok++;
        else
            dropped++;
    }
    uint64_t took = now_ms() - start;
    assert_true(took < 2000); /* 200,000 puts never waited for the writer */
    assert_true(dropped > 0);
    struct logwriter_stats st;
    logwriter_stats(lw, &st);
    assert_int_equal(st.lines, ok);
    assert_int_equal(st.dropped, dropped);
    /* Let the writer go: a thread reads everything until the writer closes the pipe. */
    int fl = fcntl(rfd, F_GETFL);
    fcntl(rfd, F_SETFL, fl & ~O_NONBLOCK);
    pthread_t th;
    pthread_create(&th, NULL, read_all, &rfd);
    logwriter_close(lw);
    pthread_join(th, NULL);
    close(rfd);
}

/* One line and no more: it reaches the file within the flush period (200 ms) and slack, with
 * no wake-up from a full ring. */
static void
test_a_lone_line_is_written_within_the_flush_period(void **state)
{
    (void)state;
    char path[128];
    struct logwriter *lw = open_writer(path, "c.log", (struct logwriter_config){.producers = 2});
    usleep(50000);
    uint64_t start = now_ms();
    assert_true(logwriter_put(lw, 1, "one\n", 4));
    struct stat st;
    while (stat(path, &st) == 0 && st.st_size == 0 && now_ms() - start < 2000)
        usleep(5000);
    uint64_t took = now_ms() - start;
    assert_int_equal(st.st_size, 4);
    assert_true(took <= 400);
    logwriter_close(lw);
}

/* Lines written in place (reserve, commit) and put whole, of lengths that cross the ring's end
 * at every offset: the file is every line, in order, whole. A reservation never straddles the
 * end: there it is refused and the line is put in two pieces. */
static void
test_lines_written_in_place_and_put_keep_their_order(void **state)
{
    (void)state;
    char path[128];
    struct logwriter *lw = open_writer(
        path, "inplace.log", (struct logwriter_config){.producers = 1, .ring_bytes = 4096});
    struct sbuf want = {0};
    unsigned in_place = 0, put = 0;
    for (unsigned i = 0; i < 20000; i++) {
        char line[200];
        size_t len = (size_t)snprintf(line, sizeof(line), "%u %.*s\n", i, (int)(i * 7 % 150),
                                      "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
                                      "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"
                                      "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy");
        for (;;) { /* a full ring is waited for here, so that no line is dropped */
            char *o = logwriter_reserve(lw, 0, sizeof(line));
            if (o) {
                memcpy(o, line, len);
                logwriter_commit(lw, 0, len);
                in_place++;
                break;
            }
            if (logwriter_put(lw, 0, line, len)) {
                put++;
                break;
            }
            usleep(1000);
        }
        sbuf_add(&want, line, len);
    }
    struct logwriter_stats st;
    logwriter_stats(lw, &st);
    logwriter_close(lw);
    assert_int_equal(st.lines, 20000);
    assert_true(in_place > 10000 && put > 0);
    size_t len;
    char *got = slurp(path, &len);
    assert_int_equal(len, want.len);
    assert_memory_equal(got, want.p, len);
    free(got);
    sbuf_free(&want);
}

/* A regular file's blocks are allocated ahead of what is written, never its size: the file is
 * exactly the lines, before and after another process truncates it (logrotate's
 * copytruncate). */
static void
test_blocks_ahead_never_change_what_the_file_holds(void **state)
{
    (void)state;
    char path[128];
    struct logwriter *lw =
        open_writer(path, "ahead.log", (struct logwriter_config){.producers = 1, .flush_ms = 20});
    char line[100];
    memset(line, 'z', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\n';
    for (int i = 0; i < 1000; i++)
        assert_true(logwriter_put(lw, 0, line, sizeof(line)));
    struct stat st;
    uint64_t start = now_ms();
    while (stat(path, &st) == 0 && st.st_size < 100000 && now_ms() - start < 2000)
        usleep(5000);
    assert_int_equal(st.st_size, 100000);
    /* The file system here takes fallocate (ext4, xfs, tmpfs do): more blocks than bytes. */
    int probe = open(path, O_WRONLY);
    bool ahead = fallocate(probe, FALLOC_FL_KEEP_SIZE, 0, 1) == 0;
    close(probe);
    if (ahead)
        assert_true((uint64_t)st.st_blocks * 512 >= 100000 + 512 * 1024);
    assert_int_equal(truncate(path, 0), 0); /* which frees the blocks ahead too */
    for (int i = 0; i < 10; i++)
        assert_true(logwriter_put(lw, 0, line, sizeof(line)));
    start = now_ms();
    while (stat(path, &st) == 0 && st.st_size < 1000 && now_ms() - start < 2000)
        usleep(5000);
    assert_int_equal(st.st_size, 1000);
    if (ahead) /* allocated ahead again from the new end */
        assert_true((uint64_t)st.st_blocks * 512 >= 1000 + 512 * 1024);
    logwriter_close(lw);
    size_t len;
    char *got = slurp(path, &len);
    assert_int_equal(len, 1000);
    for (size_t i = 0; i < len; i++)
        if (got[i] != (i % 100 == 99 ? '\n' : 'z'))
            fail_msg("byte %zu is %d", i, got[i]);
    free(got);
}

static void
test_an_unwritable_path_is_refused_with_a_message(void **state)
{
    (void)state;
    char err[256] = "";
    struct logwriter_config cfg = {.path = "/nonexistent-dir/x.log", .producers = 1};
    assert_null(logwriter_open(&cfg, err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent-dir/x.log"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_putting_at_once_lose_and_split_no_line),
        cmocka_unit_test(test_a_reopen_after_rename_loses_no_line),
        cmocka_unit_test(test_a_writer_that_falls_behind_makes_lines_drop_not_wait),
        cmocka_unit_test(test_a_lone_line_is_written_within_the_flush_period),
        cmocka_unit_test(test_lines_written_in_place_and_put_keep_their_order),
        cmocka_unit_test(test_blocks_ahead_never_change_what_the_file_holds),
        cmocka_unit_test(test_an_unwritable_path_is_refused_with_a_message),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
