/* template.h - key templates such as "crm:contacts:{user}", compiled once, expanded per request. */
#ifndef SLUICE_TEMPLATE_H
#define SLUICE_TEMPLATE_H

#include <stddef.h>

enum template_var {
    TV_USER = 0,
    TV_TENANT,
    TV_TIER,
    TV_IP,
    TV_METHOD,
    TV_ROUTE,
    TV_PATH,   /* {path.NAME}, or {path}: the whole path */
    TV_QUERY,  /* {query.NAME}, or {query}: the whole query, canonical (http/query.h) */
    TV_HEADER, /* {header.NAME} */
    TV_BODY,   /* {body.NAME} */
    TV_ROW,    /* {row.COLUMN}, on_change only */
    TV_COUNT
};

#define TV_BIT(v) (1u << (v))
#define TV_ALL_REQUEST (TV_BIT(TV_ROW) - 1u) /* every variable but {row.*} */

struct template;

#define TEMPLATE_MAX_NAME 64 /* bytes of a variable's NAME ({header.NAME}, {body.NAME}, ...) */

/*
 * Value lookup for expansion. Sets *val and *len and returns 1 when the
 * variable has a value (possibly empty), returns 0 when it has none
 * (anonymous caller, absent header or field). `name` is the part after the
 * dot ("id" in {path.id}; lowercased for {header.*}), NUL-terminated, or NULL
 * with namelen 0 for variables without one ({path} and {query} alone among them).
 */
typedef int (*template_lookup_fn)(void *ctx, enum template_var var, const char *name,
                                  size_t namelen, const char **val, size_t *len);

/*
 * Compiles `src`. Variables outside `allowed` (a mask of TV_BIT()s) are
 * errors, as are unknown names, an unclosed or empty "{}", a stray "}" (there
 * are no literal braces), a dotted variable without a name (but {path} and
 * {query}, which stand alone too), "{path.}", a name longer than
 * TEMPLATE_MAX_NAME, a name outside
 * [A-Za-z0-9_-], a name on a variable that takes none ("{user.x}"), and two
 * variables with no ':' (or other byte that escaping never writes: space,
 * control, non-ASCII) between them ("{user}{tenant}", "{user}-{tenant}"),
 * which would make expansion ambiguous. {header.NAME} names are stored
 * lowercased; other names keep their case. Returns a new template owned by
 * the caller (free with template_free), or NULL with a message in err.
 */
struct template *template_compile(const char *src, unsigned allowed, char *err, size_t errlen);

/* Frees a template; NULL is a no-op. */
void template_free(struct template *t);

/* The source text, borrowed. */
const char *template_source(const struct template *t);

/* Mask of TV_BIT()s of the variables used. */
unsigned template_uses(const struct template *t);

/*
 * Returns 1 when the template is exactly one variable and nothing else
 * ("{body.name}"), setting *var and *name (borrowed, NUL-terminated, NULL
 * for variables without a name); 0 otherwise.
 */
int template_single_var(const struct template *t, enum template_var *var, const char **name);

/*
 * Expands into out[0..cap) and NUL-terminates. Variable values are escaped so
 * that distinct value tuples can never expand to the same text: '%', ':',
 * '{', '}', bytes below 0x21 and 0x7f and above are written as %XX
 * (uppercase hex), every other byte as itself; an
 * absent value is written as "%-", which no present value can produce.
 * Literal text is copied as is. `lookup` is called once per variable, in
 * order; values it returns are only read during the call. Returns the length
 * written (without the NUL), or -1 when it does not fit in cap bytes
 * including the NUL, in which case out is "" (when cap > 0). Allocates
 * nothing.
 */
long template_expand(const struct template *t, template_lookup_fn lookup, void *ctx, char *out,
                     size_t cap);

/*
 * Returns 1 when text[0..len) is a text template_expand() could write for t,
 * 0 otherwise: t's literal parts in order, and for each variable the escaped
 * form of the value `known` gives for it (when known, which may be NULL,
 * returns 1 for that variable), or else any run of bytes without one that
 * escaping never writes (':', '{', '}', space, control and non-ASCII bytes;
 * "%-", an absent value, is such a run). Expansion being injective, there is
 * only one way to read a text: the work is linear in len per segment.
 * Allocates nothing.
 */
int template_match(const struct template *t, const char *text, size_t len, template_lookup_fn known,
                   void *ctx);

#endif
