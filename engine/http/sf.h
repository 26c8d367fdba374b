/* sf.h - a strict parser of Structured Field Dictionaries (RFC 8941). */
#ifndef SLUICE_SF_H
#define SLUICE_SF_H

#include <stddef.h>
#include <stdint.h>

/* The type of a Dictionary member's value (RFC 8941 section 3.3, 3.1.1). */
enum sf_type {
    SF_INTEGER,
    SF_DECIMAL,
    SF_STRING,
    SF_TOKEN,
    SF_BYTES,
    SF_BOOLEAN,
    SF_INNER_LIST,
};

/* One member of a Dictionary. Its strings point into the parsed text (borrowed). */
struct sf_member {
    const char *key; /* lcalpha / "*", then lcalpha / DIGIT / "_" / "-" / "." / "*" */
    size_t key_len;
    enum sf_type type;
    int64_t num;      /* SF_INTEGER: the value; SF_DECIMAL: the value times 1000 (exact);
                         SF_BOOLEAN: 0 or 1; otherwise 0 */
    const char *text; /* the value as written: a String between its quotes (escapes kept), a
                         Token, a Byte Sequence's base64 between its colons, an Inner List
                         with its parentheses and the parameters of its items; a number or
                         Boolean with its sign or "?" */
    size_t text_len;
    const char *params; /* the member's own parameters as written (";a=1;b"), or empty */
    size_t params_len;
};

/*
 * Parses s[0..len) as a Dictionary by the strict rules of RFC 8941 section
 * 4.2 (SP may lead and trail; OWS around the commas; nothing outside the
 * grammar: no uppercase key, no trailing comma, no bytes outside ASCII, no
 * Date or Display String of RFC 9651). A field with several lines is parsed
 * as their values joined with ", " (section 4.2). When s is a Dictionary,
 * calls fn (unless NULL) for each member in the order written, a key given
 * twice once for each (the later value is the member's, section 4.2.2), and
 * returns the number of members, 0 for an empty value. Returns -1 without
 * calling fn when it is not one.
 */
long sf_parse_dictionary(const char *s, size_t len,
                         void (*fn)(const struct sf_member *m, void *ctx), void *ctx);

#endif
