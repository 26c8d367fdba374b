/* query.h - one canonical parse of a query string: names and values decoded once, sorted by
 * name, encoded one way. The cache key and the query an upstream receives are both built from
 * it, so an upstream can only ever see what a key holds. */
#ifndef SLUICE_QUERY_H
#define SLUICE_QUERY_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_QUERY_MAX_PARAMS 64

struct http_query_param {
    const char *name, *value; /* decoded ('+' as space), NUL-terminated; in the caller's buffer */
    size_t nlen, vlen;
    bool has_value; /* "a=" (empty value) rather than a bare "a" */
};

/* A parsed query: its parameters sorted by decoded name (bytes), repeated names in the order
 * they came. */
struct http_query {
    struct http_query_param params[HTTP_QUERY_MAX_PARAMS];
    size_t n;
    size_t used; /* bytes of the caller's buffer the decoded text takes */
};

enum http_query_status {
    HTTP_QUERY_OK = 0,
    HTTP_QUERY_MALFORMED = -1, /* a bad percent-escape or a NUL byte in a name or value */
    HTTP_QUERY_TOO_MANY = -2,  /* more than HTTP_QUERY_MAX_PARAMS parameters */
    HTTP_QUERY_TOO_LONG = -3,  /* the decoded text does not fit in the buffer */
};

/*
 * Parses the raw query q[0..qlen) ("a=1&b=x+y"; empty pieces between '&' are
 * dropped) into *out, decoding names and values into buf (cap bytes; qlen +
 * 2 per parameter is always enough). Returns HTTP_QUERY_OK or the failure.
 */
enum http_query_status http_query_parse(const char *q, size_t qlen, char *buf, size_t cap,
                                        struct http_query *out);

/*
 * The values of parameter `name` (decoded, nlen bytes): returns how many
 * there are and sets *first to the first of them (borrowed), or to NULL.
 */
size_t http_query_count(const struct http_query *qr, const char *name, size_t nlen,
                        const struct http_query_param **first);

/*
 * Writes the canonical encoding of the parameters of qr to out (cap bytes,
 * NUL-terminated): every parameter, or with names != NULL only those whose
 * decoded name is one of names[0..nnames) (NUL-terminated, decoded). In
 * qr's order, joined with '&', "name=value" or a bare "name"; ALPHA, DIGIT
 * and "-._~!$'()*,:@/?" as they are, space as '+', every other byte as %XX
 * (upper case). Two queries that decode to the same parameters encode to the
 * same text, and the text decodes back to them. Returns its length, or -1
 * when it does not fit.
 */
long http_query_encode(const struct http_query *qr, const char *const *names, size_t nnames,
                       char *out, size_t cap);

#endif
