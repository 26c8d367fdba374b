/* envopt.h - command-line options read from environment variables (SLUICE_LISTEN for --listen). */
#ifndef SLUICE_ENVOPT_H
#define SLUICE_ENVOPT_H

#include <getopt.h>
#include <stddef.h>

/*
 * The variable of option `name` under `prefix`, written into out (cap bytes,
 * cut to fit): the prefix, then the name in upper case with '-' as '_'
 * ("SLUICE_", "max-body-bytes": "SLUICE_MAX_BODY_BYTES").
 */
void envopt_name(const char *prefix, const char *name, char *out, size_t cap);

/* An argument vector with the options the environment sets placed before the command line's. */
struct envopt {
    int argc;
    char **argv;       /* argv[0], one "--name=value" or "--name" per variable set, argv[1..] */
    int nenv;          /* how many elements after argv[0] came from the environment */
    const char **from; /* the variable of each such element (from[1..nenv]), else NULL */
    char **owned;      /* what was allocated, to free */
    int nowned;
};

/*
 * Builds eo from the option table `opts` (ended by a zeroed entry; every
 * option but "help" is read) and the command line argc/argv (borrowed: the
 * elements of eo->argv past the environment's point into it). A variable that
 * is unset or empty sets nothing; an option with an argument takes the
 * variable's value as it is; an option without one is set by 1, true, yes or
 * on and left unset by 0, false, no or off. Since getopt_long reads the
 * elements in order and the command line's come last, a flag wins over its
 * variable. Returns 0, or -1 with a message in err (a switch's variable holds
 * another word) and nothing to free.
 */
int envopt_merge(struct envopt *eo, const struct option *opts, const char *prefix, int argc,
                 char **argv, char *err, size_t errlen);

/*
 * The variable that element i of eo->argv came from, or NULL for one of the
 * command line's. After getopt_long stopped on a bad value, i = optind - 1
 * names the culprit (the environment's elements are options, never moved by
 * getopt's permutation).
 */
const char *envopt_source(const struct envopt *eo, int i);

/* Frees what envopt_merge() allocated (eo may be zeroed). */
void envopt_free(struct envopt *eo);

#endif
