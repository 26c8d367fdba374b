/* identity.h - the declared types of identity values (integer, UUID, pattern) and their
 * canonical forms. */
#ifndef SLUICE_IDENTITY_H
#define SLUICE_IDENTITY_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>

/* What an identity header's value must be: header("X-User-Id", { integer = true }). */
enum identity_type {
    IDENTITY_TEXT = 0, /* any value, used as it came */
    IDENTITY_INTEGER,  /* a signed 64-bit decimal integer: "+01" is "1" */
    IDENTITY_UUID,     /* a UUID: lowercase 8-4-4-4-12 hex */
    IDENTITY_PATTERN,  /* text the whole of which a POSIX extended regular expression matches */
};

/* Room a canonical value may need beyond its input's length (a UUID without hyphens). */
#define IDENTITY_CANONICAL_EXTRA 8

struct identity_check {
    enum identity_type type;
    char *pattern; /* IDENTITY_PATTERN: as written, else NULL */
    regex_t re;    /* IDENTITY_PATTERN: compiled from pattern */
};

/*
 * Makes *c check values of `type` (pattern: the expression for
 * IDENTITY_PATTERN, copied; ignored otherwise). Returns 0, or -1 with why the
 * pattern does not compile in err; *c is then as after identity_check_fini.
 */
int identity_check_init(struct identity_check *c, enum identity_type type, const char *pattern,
                        char *err, size_t errlen);

/* Frees what *c holds (a zeroed or finished check is allowed). */
void identity_check_fini(struct identity_check *c);

/*
 * The canonical form of in[0..len) under c, into out (cap bytes, at least
 * len + IDENTITY_CANONICAL_EXTRA + 1), NUL-terminated, its length in *outlen.
 * Returns 0, or -1 when the value is not of c's type. Thread-safe.
 */
int identity_canonical(const struct identity_check *c, const char *in, size_t len, char *out,
                       size_t cap, size_t *outlen);

/* What c's values must be, for messages: "an integer", "a UUID", ... (static). */
const char *identity_type_text(const struct identity_check *c);

#endif
