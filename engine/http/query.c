/* query.c - one canonical parse of a query string: names and values decoded once, sorted by
 * name, encoded one way. */
#include "query.h"

#include <string.h>

#include "http_parse.h"

/* Decodes raw[0..len) into buf at *used; sets *out to the NUL-terminated text. */
static enum http_query_status
decode_into(const char *raw, size_t len, char *buf, size_t cap, size_t *used, const char **out,
            size_t *outlen)
{
    if (cap - *used < len + 1)
        return HTTP_QUERY_TOO_LONG;
    char *dst = buf + *used;
    if (http_pct_decode(raw, len, dst, outlen, 1) != 0)
        return HTTP_QUERY_MALFORMED;
    dst[*outlen] = '\0';
    *used += *outlen + 1;
    *out = dst;
    return HTTP_QUERY_OK;
}

static int
name_cmp(const struct http_query_param *a, const struct http_query_param *b)
{
    size_t n = a->nlen < b->nlen ? a->nlen : b->nlen;
    int c = memcmp(a->name, b->name, n);
    if (c)
        return c;
    return a->nlen < b->nlen ? -1 : a->nlen > b->nlen;
}

enum http_query_status
http_query_parse(const char *q, size_t qlen, char *buf, size_t cap, struct http_query *out)
{
    size_t used = 0;
    out->n = out->used = 0;
    for (size_t pos = 0; pos < qlen;) {
        const char *p = q + pos;
        const char *amp = memchr(p, '&', qlen - pos);
        size_t len = amp ? (size_t)(amp - p) : qlen - pos;
        pos += len + 1;
        if (len == 0)
            continue;
        if (out->n == HTTP_QUERY_MAX_PARAMS)
            return HTTP_QUERY_TOO_MANY;
        const char *eq = memchr(p, '=', len);
        size_t nlen = eq ? (size_t)(eq - p) : len;
        struct http_query_param *prm = &out->params[out->n];
        enum http_query_status st = decode_into(p, nlen, buf, cap, &used, &prm->name, &prm->nlen);
        if (st == HTTP_QUERY_OK)
            st = decode_into(eq ? eq + 1 : p + len, eq ? len - nlen - 1 : 0, buf, cap, &used,
                             &prm->value, &prm->vlen);
        if (st != HTTP_QUERY_OK)
            return st;
        prm->has_value = eq != NULL;
        /* Insertion sort by name, stable: a few parameters, almost always in order already. */
        struct http_query_param cur = *prm;
        size_t i = out->n;
        while (i > 0 && name_cmp(&out->params[i - 1], &cur) > 0) {
            out->params[i] = out->params[i - 1];
            i--;
        }
        out->params[i] = cur;
        out->n++;
        out->used = used;
    }
    return HTTP_QUERY_OK;
}

size_t
http_query_count(const struct http_query *qr, const char *name, size_t nlen,
                 const struct http_query_param **first)
{
    size_t count = 0;
    *first = NULL;
    for (size_t i = 0; i < qr->n; i++) {
        const struct http_query_param *p = &qr->params[i];
        if (p->nlen == nlen && memcmp(p->name, name, nlen) == 0) {
            if (!count)
                *first = p;
            count++;
        }
    }
    return count;
}

static bool
kept(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c && strchr("-._~!$'()*,:@/?", c) != NULL;
}

/* Appends the encoding of s[0..len) at out[*o]; false when it does not fit. */
static bool
put_encoded(char *out, size_t cap, size_t *o, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t need = kept(c) || c == ' ' ? 1 : 3;
        if (cap - *o <= need)
            return false;
        if (c == ' ') {
            out[(*o)++] = '+';
        } else if (need == 1) {
            out[(*o)++] = (char)c;
        } else {
            out[(*o)++] = '%';
            out[(*o)++] = hex[c >> 4];
            out[(*o)++] = hex[c & 15];
        }
    }
    return true;
}

static bool
wanted(const struct http_query_param *p, const char *const *names, size_t nnames)
{
    if (!names)
        return true;
    for (size_t i = 0; i < nnames; i++)
        if (strlen(names[i]) == p->nlen && memcmp(names[i], p->name, p->nlen) == 0)
            return true;
    return false;
}

long
http_query_encode(const struct http_query *qr, const char *const *names, size_t nnames, char *out,
                  size_t cap)
{
    size_t o = 0;
    if (cap == 0)
        return -1;
    for (size_t i = 0; i < qr->n; i++) {
        const struct http_query_param *p = &qr->params[i];
        if (!wanted(p, names, nnames))
            continue;
        if (o) {
            if (cap - o <= 1)
                return -1;
            out[o++] = '&';
        }
        if (!put_encoded(out, cap, &o, p->name, p->nlen))
            return -1;
        if (p->has_value) {
            if (cap - o <= 1)
                return -1;
            out[o++] = '=';
            if (!put_encoded(out, cap, &o, p->value, p->vlen))
                return -1;
        }
    }
    out[o] = '\0';
    return (long)o;
}
