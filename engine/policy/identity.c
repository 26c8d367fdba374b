/* identity.c - the declared types of identity values (integer, UUID, pattern) and their
 * canonical forms: one caller, one spelling, whatever way the value was written. */
#include "identity.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int
identity_check_init(struct identity_check *c, enum identity_type type, const char *pattern,
                    char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    c->type = type;
    if (type != IDENTITY_PATTERN)
        return 0;
    if (!pattern || !*pattern) {
        snprintf(err, errlen, "the pattern is empty");
        c->type = IDENTITY_TEXT;
        return -1;
    }
    /* Not REG_NOSUB: the match's bounds tell whether it covers the whole value. */
    int rc = regcomp(&c->re, pattern, REG_EXTENDED);
    if (rc != 0) {
        char msg[160];
        regerror(rc, &c->re, msg, sizeof(msg));
        snprintf(err, errlen, "pattern \"%s\" is not a POSIX extended regular expression: %s",
                 pattern, msg);
        c->type = IDENTITY_TEXT;
        return -1;
    }
    c->pattern = xstrdup(pattern);
    return 0;
}

void
identity_check_fini(struct identity_check *c)
{
    if (c->type == IDENTITY_PATTERN && c->pattern)
        regfree(&c->re);
    free(c->pattern);
    memset(c, 0, sizeof(*c));
}

/* A signed 64-bit decimal integer: [+-]digits, in the range of PostgreSQL's bigint; written
 * without sign for 0 and positive numbers, without leading zeros. */
static int
canonical_integer(const char *in, size_t len, char *out, size_t *outlen)
{
    size_t i = 0;
    bool neg = false;
    if (i < len && (in[i] == '+' || in[i] == '-'))
        neg = in[i++] == '-';
    if (i == len)
        return -1;
    for (size_t j = i; j < len; j++)
        if (in[j] < '0' || in[j] > '9')
            return -1;
    while (i + 1 < len && in[i] == '0')
        i++;
    size_t digits = len - i;
    const char *max = neg ? "9223372036854775808" : "9223372036854775807";
    if (digits > 19 || (digits == 19 && memcmp(in + i, max, 19) > 0))
        return -1;
    size_t o = 0;
    if (neg && !(digits == 1 && in[i] == '0'))
        out[o++] = '-';
    memcpy(out + o, in + i, digits);
    o += digits;
    out[o] = '\0';
    *outlen = o;
    return 0;
}

static int
hex_lower(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch;
    if (ch >= 'a' && ch <= 'f')
        return ch;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 'a';
    return -1;
}

/* A UUID: 8-4-4-4-12 hex digits, or 32 in a row, either in braces; any case. Written
 * 8-4-4-4-12 in lower case. */
static int
canonical_uuid(const char *in, size_t len, char *out, size_t *outlen)
{
    if (len >= 2 && in[0] == '{' && in[len - 1] == '}') {
        in++;
        len -= 2;
    }
    bool hyphens = len == 36;
    if (!hyphens && len != 32)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (hyphens && (i == 8 || i == 13 || i == 18 || i == 23)) {
            if (in[i] != '-')
                return -1;
            continue;
        }
        int h = hex_lower(in[i]);
        if (h < 0)
            return -1;
        if (o == 8 || o == 13 || o == 18 || o == 23)
            out[o++] = '-';
        out[o++] = (char)h;
    }
    out[o] = '\0';
    *outlen = o;
    return 0;
}

int
identity_canonical(const struct identity_check *c, const char *in, size_t len, char *out,
                   size_t cap, size_t *outlen)
{
    if (cap < len + IDENTITY_CANONICAL_EXTRA + 1)
        return -1;
    switch (c->type) {
    case IDENTITY_INTEGER:
        return canonical_integer(in, len, out, outlen);
    case IDENTITY_UUID:
        return canonical_uuid(in, len, out, outlen);
    case IDENTITY_PATTERN: {
        memcpy(out, in, len);
        out[len] = '\0';
        if (memchr(in, '\0', len))
            return -1;
        /* The leftmost-longest match (POSIX) spans the whole value exactly when the whole
         * value matches, whatever anchors and alternatives the expression holds. */
        regmatch_t m;
        if (regexec(&c->re, out, 1, &m, 0) != 0 || m.rm_so != 0 || (size_t)m.rm_eo != len)
            return -1;
        *outlen = len;
        return 0;
    }
    case IDENTITY_TEXT:
    default:
        memcpy(out, in, len);
        out[len] = '\0';
        *outlen = len;
        return 0;
    }
}

const char *
identity_type_text(const struct identity_check *c)
{
    switch (c->type) {
    case IDENTITY_INTEGER:
        return "a whole number (a 64-bit integer in decimal)";
    case IDENTITY_UUID:
        return "a UUID";
    case IDENTITY_PATTERN:
        return "matched by the policy's pattern";
    case IDENTITY_TEXT:
    default:
        return "a value";
    }
}
