/* test_envopt.c - unit tests of envopt: options from SLUICE_* variables, a flag over its variable.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "envopt.h"

static const struct option opts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"max-body-bytes", required_argument, NULL, 'B'},
    {"no-watch", no_argument, NULL, 'W'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* What one getopt_long pass over eo read. */
struct parsed {
    const char *listen, *body, *dir;
    int no_watch, bad;
};

static struct parsed
parse(struct envopt *eo)
{
    struct parsed p = {0};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(eo->argc, eo->argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            p.listen = optarg;
            break;
        case 'B':
            p.body = optarg;
            break;
        case 'W':
            p.no_watch = 1;
            break;
        default:
            p.bad = 1;
        }
    }
    p.dir = optind < eo->argc ? eo->argv[optind] : NULL;
    return p;
}

static void
clear(void)
{
    unsetenv("T_LISTEN");
    unsetenv("T_MAX_BODY_BYTES");
    unsetenv("T_NO_WATCH");
    unsetenv("T_HELP");
}

static void
test_names_are_the_prefix_and_the_option_in_upper_case(void **state)
{
    (void)state;
    char out[64];
    envopt_name("SLUICE_", "max-connections-per-ip", out, sizeof(out));
    assert_string_equal(out, "SLUICE_MAX_CONNECTIONS_PER_IP");
    envopt_name("SLUICE_", "listen", out, 10);
    assert_string_equal(out, "SLUICE_LI"); /* cut to fit */
}

static void
test_a_variable_alone_sets_its_option(void **state)
{
    (void)state;
    clear();
    setenv("T_LISTEN", "0.0.0.0:9000", 1);
    setenv("T_MAX_BODY_BYTES", "42", 1);
    char *argv[] = {"serve", "pol", NULL};
    struct envopt eo;
    char err[128];
    assert_int_equal(envopt_merge(&eo, opts, "T_", 2, argv, err, sizeof(err)), 0);
    assert_int_equal(eo.nenv, 2);
    struct parsed p = parse(&eo);
    assert_false(p.bad);
    assert_string_equal(p.listen, "0.0.0.0:9000");
    assert_string_equal(p.body, "42");
    assert_string_equal(p.dir, "pol");
    assert_int_equal(p.no_watch, 0);
    envopt_free(&eo);
    clear();
}

static void
test_a_flag_wins_over_its_variable(void **state)
{
    (void)state;
    clear();
    setenv("T_LISTEN", "0.0.0.0:9000", 1);
    char *argv[] = {"serve", "pol", "--listen", "127.0.0.1:1", NULL};
    struct envopt eo;
    char err[128];
    assert_int_equal(envopt_merge(&eo, opts, "T_", 4, argv, err, sizeof(err)), 0);
    struct parsed p = parse(&eo);
    assert_string_equal(p.listen, "127.0.0.1:1");
    assert_string_equal(p.dir, "pol");
    envopt_free(&eo);
    clear();
}

static void
test_switches_take_yes_and_no_words_and_refuse_others(void **state)
{
    (void)state;
    static const char *const on[] = {"1", "true", "YES", "on"};
    static const char *const off[] = {"0", "false", "no", "Off", ""};
    char *argv[] = {"serve", "pol", NULL};
    struct envopt eo;
    char err[128];
    clear();
    for (size_t i = 0; i < 4; i++) {
        setenv("T_NO_WATCH", on[i], 1);
        assert_int_equal(envopt_merge(&eo, opts, "T_", 2, argv, err, sizeof(err)), 0);
        assert_int_equal(parse(&eo).no_watch, 1);
        envopt_free(&eo);
    }
    for (size_t i = 0; i < 5; i++) {
        setenv("T_NO_WATCH", off[i], 1);
        assert_int_equal(envopt_merge(&eo, opts, "T_", 2, argv, err, sizeof(err)), 0);
        assert_int_equal(eo.nenv, 0);
        assert_int_equal(parse(&eo).no_watch, 0);
        envopt_free(&eo);
    }
    setenv("T_NO_WATCH", "maybe", 1);
    assert_int_equal(envopt_merge(&eo, opts, "T_", 2, argv, err, sizeof(err)), -1);
    assert_string_equal(err, "T_NO_WATCH: 'maybe' is not one of 1, true, yes, on, 0, false, "
                             "no, off");
    clear();
}

static void
test_help_is_never_read_and_empty_values_set_nothing(void **state)
{
    (void)state;
    clear();
    setenv("T_HELP", "1", 1);
    setenv("T_LISTEN", "", 1);
    char *argv[] = {"serve", "pol", NULL};
    struct envopt eo;
    char err[128];
    assert_int_equal(envopt_merge(&eo, opts, "T_", 2, argv, err, sizeof(err)), 0);
    assert_int_equal(eo.nenv, 0);
    assert_int_equal(eo.argc, 2);
    envopt_free(&eo);
    clear();
}

static void
test_the_source_of_a_bad_value_is_its_variable(void **state)
{
    (void)state;
    clear();
    setenv("T_MAX_BODY_BYTES", "lots", 1);
    char *argv[] = {"serve", "--listen", "x", "pol", NULL};
    struct envopt eo;
    char err[128];
    assert_int_equal(envopt_merge(&eo, opts, "T_", 4, argv, err, sizeof(err)), 0);
    /* Stop where a caller's parser would, at the bad value, and ask whose it is. */
    optind = 1;
    opterr = 0;
    int c;
    const char *culprit = "none";
    while ((c = getopt_long(eo.argc, eo.argv, "h", opts, NULL)) != -1)
        if (c == 'B' && strcmp(optarg, "lots") == 0) {
            culprit = envopt_source(&eo, optind - 1);
            break;
        }
    assert_non_null(culprit);
    assert_string_equal(culprit, "T_MAX_BODY_BYTES");
    assert_null(envopt_source(&eo, eo.argc - 1)); /* the command line's own */
    envopt_free(&eo);
    clear();
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_are_the_prefix_and_the_option_in_upper_case),
        cmocka_unit_test(test_a_variable_alone_sets_its_option),
        cmocka_unit_test(test_a_flag_wins_over_its_variable),
        cmocka_unit_test(test_switches_take_yes_and_no_words_and_refuse_others),
        cmocka_unit_test(test_help_is_never_read_and_empty_values_set_nothing),
        cmocka_unit_test(test_the_source_of_a_bad_value_is_its_variable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
