/* envopt.c - command-line options read from environment variables (SLUICE_LISTEN for --listen). */
#include "envopt.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

void
envopt_name(const char *prefix, const char *name, char *out, size_t cap)
{
    if (cap == 0)
        return;
    size_t n = 0;
    for (const char *p = prefix; *p && n + 1 < cap; p++)
        out[n++] = *p;
    for (const char *p = name; *p && n + 1 < cap; p++)
        out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[n] = '\0';
}

/* 1 for a word that turns a switch on, 0 for one that leaves it off, -1 otherwise. */
static int
switch_word(const char *v)
{
    static const char *const on[] = {"1", "true", "yes", "on"};
    static const char *const off[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
        if (strcasecmp(v, on[i]) == 0)
            return 1;
        if (strcasecmp(v, off[i]) == 0)
            return 0;
    }
    return -1;
}

static char *
own(struct envopt *eo, char *s)
{
    eo->owned[eo->nowned++] = s;
    return s;
}

int
envopt_merge(struct envopt *eo, const struct option *opts, const char *prefix, int argc,
             char **argv, char *err, size_t errlen)
{
    size_t nopts = 0;
    while (opts[nopts].name)
        nopts++;
    memset(eo, 0, sizeof(*eo));
    eo->argv = xcalloc((size_t)argc + nopts + 1, sizeof(*eo->argv));
    eo->from = xcalloc((size_t)argc + nopts + 1, sizeof(*eo->from));
    eo->owned = xcalloc(2 * nopts + 1, sizeof(*eo->owned));
    eo->argv[0] = argv[0];
    int n = 1;
    for (size_t i = 0; i < nopts; i++) {
        const struct option *o = &opts[i];
        if (strcmp(o->name, "help") == 0)
            continue;
        char var[128];
        envopt_name(prefix, o->name, var, sizeof(var));
        const char *v = getenv(var);
        if (!v || !v[0])
            continue;
        char *arg;
        if (o->has_arg == no_argument) {
            int on = switch_word(v);
            if (on < 0) {
                snprintf(err, errlen, "%s: '%s' is not one of 1, true, yes, on, 0, false, no, off",
                         var, v);
                envopt_free(eo);
                return -1;
            }
            if (!on)
                continue;
            arg = xmalloc(strlen(o->name) + 3);
            sprintf(arg, "--%s", o->name);
        } else {
            arg = xmalloc(strlen(o->name) + strlen(v) + 4);
            sprintf(arg, "--%s=%s", o->name, v);
        }
        eo->argv[n] = own(eo, arg);
        eo->from[n] = own(eo, xstrdup(var));
        n++;
    }
    eo->nenv = n - 1;
    for (int i = 1; i < argc; i++)
        eo->argv[n++] = argv[i];
    eo->argv[n] = NULL;
    eo->argc = n;
    return 0;
}

const char *
envopt_source(const struct envopt *eo, int i)
{
    return i >= 1 && i <= eo->nenv ? eo->from[i] : NULL;
}

void
envopt_free(struct envopt *eo)
{
    for (int i = 0; i < eo->nowned; i++)
        free(eo->owned[i]);
    free(eo->owned);
    free(eo->from);
    free(eo->argv);
    memset(eo, 0, sizeof(*eo));
}
