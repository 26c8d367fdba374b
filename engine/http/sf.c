/* sf.c - a strict parser of Structured Field Dictionaries (RFC 8941). */
#include "sf.h"

#include <stdbool.h>
#include <string.h>

/* The text being parsed and the position in it (RFC 8941's input_string). */
struct in {
    const char *s;
    size_t i, n;
};

static bool
at_end(const struct in *in)
{
    return in->i >= in->n;
}

/* The next byte, or -1 at the end. */
static int
peek(const struct in *in)
{
    return at_end(in) ? -1 : (unsigned char)in->s[in->i];
}

static bool
is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool
is_lcalpha(int c)
{
    return c >= 'a' && c <= 'z';
}

static bool
is_alpha(int c)
{
    return is_lcalpha(c) || (c >= 'A' && c <= 'Z');
}

/* tchar of RFC 9110 section 5.6.2. */
static bool
is_tchar(int c)
{
    return c > 0 && (is_alpha(c) || is_digit(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void
skip_sp(struct in *in)
{
    while (peek(in) == ' ')
        in->i++;
}

static void
skip_ows(struct in *in)
{
    while (peek(in) == ' ' || peek(in) == '\t')
        in->i++;
}

/* Section 4.2.3.3. */
static bool
parse_key(struct in *in, const char **key, size_t *len)
{
    int c = peek(in);
    if (!is_lcalpha(c) && c != '*')
        return false;
    size_t start = in->i;
    for (c = peek(in); is_lcalpha(c) || is_digit(c) || (c > 0 && strchr("_-.*", c)); c = peek(in))
        in->i++;
    *key = in->s + start;
    *len = in->i - start;
    return true;
}

/* Section 4.2.4: an Integer of at most 15 digits or a Decimal of at most 12.3 digits. */
static bool
parse_number(struct in *in, struct sf_member *m)
{
    int64_t sign = 1, whole = 0, frac = 0;
    size_t digits = 0, fdigits = 0;
    bool decimal = false;
    if (peek(in) == '-') {
        in->i++;
        sign = -1;
    }
    if (!is_digit(peek(in)))
        return false;
    for (int c = peek(in); !at_end(in); c = peek(in)) {
        if (is_digit(c)) {
            if (decimal) {
                frac = frac * 10 + (c - '0');
                fdigits++;
            } else {
                whole = whole * 10 + (c - '0');
                digits++;
            }
        } else if (c == '.' && !decimal) {
            if (digits > 12)
                return false;
            decimal = true;
        } else {
            break;
        }
        in->i++;
        if ((!decimal && digits > 15) || (decimal && digits + fdigits > 15))
            return false;
    }
    if (!decimal) {
        m->type = SF_INTEGER;
        m->num = sign * whole;
        return true;
    }
    if (fdigits == 0 || fdigits > 3)
        return false;
    while (fdigits++ < 3)
        frac *= 10;
    m->type = SF_DECIMAL;
    m->num = sign * (whole * 1000 + frac);
    return true;
}

/* Section 4.2.5: printable ASCII, with \" and \\ as the only escapes. */
static bool
parse_string(struct in *in, struct sf_member *m)
{
    in->i++; /* the opening quote */
    size_t start = in->i;
    for (;;) {
        int c = peek(in);
        if (c < 0)
            return false;
        in->i++;
        if (c == '\\') {
            c = peek(in);
            if (c != '"' && c != '\\')
                return false;
            in->i++;
        } else if (c == '"') {
            m->type = SF_STRING;
            m->text = in->s + start;
            m->text_len = in->i - 1 - start;
            return true;
        } else if (c < 0x20 || c > 0x7e) {
            return false;
        }
    }
}

/* Section 4.2.6. */
static void
parse_token(struct in *in, struct sf_member *m)
{
    size_t start = in->i;
    in->i++; /* ALPHA or "*", checked by the caller */
    for (int c = peek(in); is_tchar(c) || c == ':' || c == '/'; c = peek(in))
        in->i++;
    m->type = SF_TOKEN;
    m->text = in->s + start;
    m->text_len = in->i - start;
}

/* Section 4.2.7: base64 characters between colons (padding is not checked). */
static bool
parse_bytes(struct in *in, struct sf_member *m)
{
    in->i++; /* the opening colon */
    size_t start = in->i;
    for (int c = peek(in); c != ':'; c = peek(in)) {
        if (!(is_alpha(c) || is_digit(c) || c == '+' || c == '/' || c == '='))
            return false;
        in->i++;
    }
    m->type = SF_BYTES;
    m->text = in->s + start;
    m->text_len = in->i - start;
    in->i++; /* the closing colon */
    return true;
}

/* Section 4.2.8. */
static bool
parse_boolean(struct in *in, struct sf_member *m)
{
    in->i++; /* "?" */
    int c = peek(in);
    if (c != '0' && c != '1')
        return false;
    in->i++;
    m->type = SF_BOOLEAN;
    m->num = c == '1';
    return true;
}

/* Section 4.2.3.1. */
static bool
parse_bare_item(struct in *in, struct sf_member *m)
{
    int c = peek(in);
    size_t start = in->i;
    bool ok;
    m->num = 0;
    if (c == '-' || is_digit(c))
        ok = parse_number(in, m);
    else if (c == '"')
        return parse_string(in, m);
    else if (c == ':')
        return parse_bytes(in, m);
    else if (c == '?')
        ok = parse_boolean(in, m);
    else if (is_alpha(c) || c == '*') {
        parse_token(in, m);
        return true;
    } else {
        return false;
    }
    m->text = in->s + start;
    m->text_len = in->i - start;
    return ok;
}

/* Section 4.2.3.2: ";" key ["=" bare item], SP allowed after each ";". */
static bool
parse_parameters(struct in *in)
{
    while (peek(in) == ';') {
        in->i++;
        skip_sp(in);
        const char *key;
        size_t klen;
        if (!parse_key(in, &key, &klen))
            return false;
        if (peek(in) == '=') {
            in->i++;
            struct sf_member scratch;
            if (!parse_bare_item(in, &scratch))
                return false;
        }
    }
    return true;
}

/* Section 4.2.1.2: "(" items separated by SP ")" and its parameters. */
static bool
parse_inner_list(struct in *in, struct sf_member *m)
{
    size_t start = in->i;
    in->i++; /* "(" */
    for (;;) {
        skip_sp(in);
        if (at_end(in))
            return false;
        if (peek(in) == ')') {
            in->i++;
            m->type = SF_INNER_LIST;
            m->num = 0;
            m->text = in->s + start;
            m->text_len = in->i - start;
            return true;
        }
        struct sf_member item;
        if (!parse_bare_item(in, &item) || !parse_parameters(in))
            return false;
        if (peek(in) != ' ' && peek(in) != ')')
            return false;
    }
}

/* Section 4.2.2, preceded and followed by SP as section 4.2 says. */
static long
parse_dictionary(struct in *in, void (*fn)(const struct sf_member *m, void *ctx), void *ctx)
{
    long count = 0;
    skip_sp(in);
    while (!at_end(in)) {
        struct sf_member m;
        if (!parse_key(in, &m.key, &m.key_len))
            return -1;
        if (peek(in) == '=') {
            in->i++;
            bool ok = peek(in) == '(' ? parse_inner_list(in, &m) : parse_bare_item(in, &m);
            if (!ok)
                return -1;
        } else {
            m.type = SF_BOOLEAN;
            m.num = 1;
            m.text = "?1";
            m.text_len = 2;
        }
        size_t pstart = in->i;
        if (!parse_parameters(in))
            return -1;
        m.params = in->s + pstart;
        m.params_len = in->i - pstart;
        count++;
        if (fn)
            fn(&m, ctx);
        skip_ows(in);
        if (at_end(in))
            break;
        if (peek(in) != ',')
            return -1;
        in->i++;
        skip_ows(in);
        if (at_end(in))
            return -1; /* a trailing comma */
    }
    return count;
}

long
sf_parse_dictionary(const char *s, size_t len, void (*fn)(const struct sf_member *m, void *ctx),
                    void *ctx)
{
    struct in in = {s, 0, len};
    long r = parse_dictionary(&in, NULL, NULL);
    if (r <= 0 || !fn)
        return r;
    in.i = 0;
    return parse_dictionary(&in, fn, ctx);
}
