/* http_parse.c - strict HTTP/1.1 request-head parser, chunked decoder, URL helpers. */
#include "http_parse.h"

#include <limits.h>
#include <string.h>

/*
 * Character classes of the bytes below 0x80 (all bytes from 0x80 up are in
 * none of them):
 *   TK  tchar, RFC 9110 5.6.2: method and field names
 *   TG  allowed raw in a request-target: VCHAR except '#'
 *   HS  allowed in a Host value: unreserved, sub-delims, '%', ':', '[', ']'
 */
#define TK 1
#define TG 2
#define HS 4

/* clang-format off */
static const unsigned char cls[256] = {
    0, 0, 0, 0, 0, 0, 0, 0,                                                 /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0,                                                 /* 0x08 */
    0, 0, 0, 0, 0, 0, 0, 0,                                                 /* 0x10 */
    0, 0, 0, 0, 0, 0, 0, 0,                                                 /* 0x18 */
    0, TK|TG|HS, TG, TK, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS,            /* 0x20  !"#$%&' */
    TG|HS, TG|HS, TK|TG|HS, TK|TG|HS, TG|HS, TK|TG|HS, TK|TG|HS, TG,        /* 0x28 ()*+,-./ */
    TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, /* 0-7 */
    TK|TG|HS, TK|TG|HS, TG|HS, TG|HS, TG, TG|HS, TG, TG,                    /* 0x38 89:;<=>? */
    TG, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, /* @A-G */
    TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, /* H-O */
    TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, /* P-W */
    TK|TG|HS, TK|TG|HS, TK|TG|HS, TG|HS, TG, TG|HS, TK|TG, TK|TG|HS,        /* 0x58 XYZ[\]^_ */
    TK|TG, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, /* `a-g */
    TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, /* h-o */
    TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, TK|TG|HS, /* p-w */
    TK|TG|HS, TK|TG|HS, TK|TG|HS, TG, TK|TG, TG, TK|TG|HS, 0,               /* 0x78 xyz{|}~ */
};
/* clang-format on */

#define IS(c, k) (cls[(unsigned char)(c)] & (k))

/* A control byte as field values see it: not HTAB, SP, VCHAR or obs-text. */
static inline int
is_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

static inline int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static inline unsigned char
lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* s[0..n) equals the lower-case literal lit, ignoring ASCII case. */
static int
eq_lit(const char *s, size_t n, const char *lit, size_t litlen)
{
    if (n != litlen)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}
#define EQ_LIT(s, n, lit) eq_lit((s), (n), lit, sizeof(lit) - 1)

/*
 * Returns the first byte in [p, end) below 0x20 or equal to 0x7f, or end.
 * Looks at eight bytes at a time; HTAB stops it too and is dealt with by the
 * caller.
 */
static inline const char *
find_ctl(const char *p, const char *end)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (end - p >= 8) {
        uint64_t x, y;
        memcpy(&x, p, 8);
        y = x ^ (0x7f * ones);
        /* Any byte < 0x20, any byte == 0x7f (exact as a yes/no test). */
        if (((x - 0x20 * ones) & ~x & highs) | ((y - ones) & ~y & highs))
            break;
        p += 8;
    }
    while (p < end && (unsigned char)*p >= 0x20 && *p != 0x7f)
        p++;
    return p;
}

/* Returns the first byte in [p, end) not in class k, or end; eight bytes a step. */
static inline const char *
span(const char *p, const char *end, unsigned k)
{
    const unsigned char *u = (const unsigned char *)p;
    while (end - p >= 8 && (cls[u[0]] & cls[u[1]] & cls[u[2]] & cls[u[3]] & cls[u[4]] & cls[u[5]] &
                            cls[u[6]] & cls[u[7]] & k)) {
        p += 8;
        u += 8;
    }
    while (p < end && IS(*p, k))
        p++;
    return p;
}

static enum http_method
method_of(const char *m, size_t n)
{
    switch (n) {
    case 3:
        if (memcmp(m, "GET", 3) == 0)
            return HTTP_GET;
        if (memcmp(m, "PUT", 3) == 0)
            return HTTP_PUT;
        break;
    case 4:
        if (memcmp(m, "HEAD", 4) == 0)
            return HTTP_HEAD;
        if (memcmp(m, "POST", 4) == 0)
            return HTTP_POST;
        break;
    case 5:
        if (memcmp(m, "PATCH", 5) == 0)
            return HTTP_PATCH;
        break;
    case 6:
        if (memcmp(m, "DELETE", 6) == 0)
            return HTTP_DELETE;
        break;
    case 7:
        if (memcmp(m, "OPTIONS", 7) == 0)
            return HTTP_OPTIONS;
        break;
    }
    return HTTP_OTHER;
}

/* Parses a Content-Length value: 1*DIGIT, no larger than INT64_MAX. */
static int64_t
parse_length(const char *s, size_t n)
{
    int64_t v = 0;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)s[i] - '0';
        if (d > 9 || v > (INT64_MAX - (int64_t)d) / 10)
            return -1;
        v = v * 10 + d;
    }
    return v;
}

/* Notes the "close" and "keep-alive" tokens of a Connection value. */
static void
scan_connection(const char *s, size_t n, int *has_close, int *has_keep)
{
    const char *p = s, *end = s + n;
    while (p < end) {
        const char *tok, *tend = memchr(p, ',', (size_t)(end - p));
        if (!tend)
            tend = end;
        tok = p;
        p = tend < end ? tend + 1 : end;
        while (tok < tend && (*tok == ' ' || *tok == '\t'))
            tok++;
        while (tend > tok && (tend[-1] == ' ' || tend[-1] == '\t'))
            tend--;
        if (EQ_LIT(tok, (size_t)(tend - tok), "close"))
            *has_close = 1;
        else if (EQ_LIT(tok, (size_t)(tend - tok), "keep-alive"))
            *has_keep = 1;
    }
}

/* Scratch state of one parse that does not belong in struct http_request. */
struct head_flags {
    int conn_close, conn_keep;
};

/* Derives the request's fields from one header; returns 0 or a status. */
static int
take_header(struct http_request *req, const struct http_header *h, struct head_flags *f)
{
    const char *n = h->name.p, *v = h->value.p;
    size_t nl = h->name.len, vl = h->value.len;

    switch (nl) {
    case 4:
        if (!EQ_LIT(n, nl, "host"))
            break;
        if (req->host.p)
            return HTTP_PARSE_BAD;
        for (size_t i = 0; i < vl; i++)
            if (!IS(v[i], HS))
                return HTTP_PARSE_BAD;
        req->host = h->value;
        break;
    case 6:
        if (EQ_LIT(n, nl, "expect") && EQ_LIT(v, vl, "100-continue"))
            req->expect_continue = 1;
        break;
    case 10:
        if (EQ_LIT(n, nl, "connection"))
            scan_connection(v, vl, &f->conn_close, &f->conn_keep);
        break;
    case 14:
        if (!EQ_LIT(n, nl, "content-length"))
            break;
        if (req->content_length >= 0 || req->chunked)
            return HTTP_PARSE_BAD_LENGTH;
        req->content_length = parse_length(v, vl);
        if (req->content_length < 0)
            return HTTP_PARSE_BAD_LENGTH;
        break;
    case 17:
        if (!EQ_LIT(n, nl, "transfer-encoding"))
            break;
        if (req->content_length >= 0)
            return HTTP_PARSE_BAD_LENGTH;
        /* A second one would make it "chunked, chunked". */
        if (req->chunked || !EQ_LIT(v, vl, "chunked"))
            return HTTP_PARSE_BAD_ENCODING;
        req->chunked = 1;
        break;
    }
    return 0;
}

/* The head parser proper on buf[0..len), len <= INT_MAX. */
static int
parse_head(const char *buf, size_t len, struct http_request *req)
{
    const char *p = buf, *end = buf + len, *start;
    struct head_flags f = {0, 0};
    int rc;

    req->nheaders = 0;
    req->content_length = -1;
    req->chunked = 0;
    req->keep_alive = 0;
    req->expect_continue = 0;
    req->host.p = NULL;
    req->host.len = 0;

    /* RFC 9112 2.2: empty lines before the request-line are skipped. */
    while (p < end && *p == '\r') {
        if (end - p < 2)
            return HTTP_PARSE_INCOMPLETE;
        if (p[1] != '\n')
            return HTTP_PARSE_BAD;
        p += 2;
    }

    /* method SP */
    start = p;
    p = span(p, end, TK);
    if (p == end)
        return HTTP_PARSE_INCOMPLETE;
    if (*p != ' ' || p == start)
        return HTTP_PARSE_BAD;
    req->method_str.p = start;
    req->method_str.len = (size_t)(p - start);
    req->method = method_of(start, req->method_str.len);
    p++;

    /* request-target SP */
    start = p;
    p = span(p, end, TG);
    if (p == end)
        return HTTP_PARSE_INCOMPLETE;
    if (*p != ' ' || p == start)
        return HTTP_PARSE_BAD;
    if (*start != '/' && !(p - start == 1 && *start == '*' && req->method == HTTP_OPTIONS))
        return HTTP_PARSE_BAD;
    req->target.p = start;
    req->target.len = (size_t)(p - start);
    {
        const char *q = memchr(start, '?', req->target.len);
        req->path.p = start;
        req->path.len = q ? (size_t)(q - start) : req->target.len;
        req->query.p = q ? q + 1 : p;
        req->query.len = q ? (size_t)(p - q - 1) : 0;
    }
    p++;

    /* HTTP-version CRLF: "HTTP/" DIGIT "." DIGIT, then only 1.0 and 1.1. */
    {
        static const char shape[] = "HTTP/9.9\r\n";
        size_t avail = (size_t)(end - p), n = avail < 10 ? avail : 10;
        for (size_t i = 0; i < n; i++) {
            int ok = shape[i] == '9' ? p[i] >= '0' && p[i] <= '9' : p[i] == shape[i];
            if (!ok)
                return HTTP_PARSE_BAD;
        }
        if (avail < 10)
            return HTTP_PARSE_INCOMPLETE;
        if (p[5] != '1' || p[7] > '1')
            return HTTP_PARSE_VERSION;
        req->minor_version = p[7] - '0';
        p += 10;
    }

    /* *( field-line CRLF ) CRLF */
    for (;;) {
        struct http_header *h;
        const char *v, *vend;

        if (p == end)
            return HTTP_PARSE_INCOMPLETE;
        if (*p == '\r') {
            if (end - p < 2)
                return HTTP_PARSE_INCOMPLETE;
            if (p[1] != '\n')
                return HTTP_PARSE_BAD;
            p += 2;
            break;
        }
        if (req->nheaders == HTTP_MAX_HEADERS)
            return HTTP_PARSE_TOO_MANY;

        /* field-name ":"; a SP or HTAB here is obs-fold or space before ':' */
        start = p;
        p = span(p, end, TK);
        if (p == end)
            return HTTP_PARSE_INCOMPLETE;
        if (*p != ':' || p == start)
            return HTTP_PARSE_BAD;
        h = &req->headers[req->nheaders];
        h->name.p = start;
        h->name.len = (size_t)(p - start);
        p++;

        /* OWS field-value OWS CRLF */
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        v = p;
        for (;;) {
            p = find_ctl(p, end);
            if (p == end)
                return HTTP_PARSE_INCOMPLETE;
            if (*p != '\t')
                break;
            p++;
        }
        if (*p != '\r')
            return HTTP_PARSE_BAD;
        if (end - p < 2)
            return HTTP_PARSE_INCOMPLETE;
        if (p[1] != '\n')
            return HTTP_PARSE_BAD;
        vend = p;
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        h->value.p = v;
        h->value.len = (size_t)(vend - v);
        p += 2;
        req->nheaders++;

        if ((rc = take_header(req, h, &f)) != 0)
            return rc;
    }

    if (req->minor_version == 1 && !req->host.p)
        return HTTP_PARSE_BAD; /* RFC 9112 3.2 */
    if (req->minor_version == 0 && req->chunked)
        return HTTP_PARSE_BAD; /* RFC 9112 6.1: faulty framing */
    req->keep_alive = req->minor_version == 1 ? !f.conn_close : f.conn_keep && !f.conn_close;
    return (int)(p - buf);
}

/* Parses one request head; see http_parse.h. Returns its length or a status. */
const char *
http_method_name(enum http_method m)
{
    static const char *const names[] = {
        [HTTP_OTHER] = "OTHER",   [HTTP_GET] = "GET",         [HTTP_HEAD] = "HEAD",
        [HTTP_POST] = "POST",     [HTTP_PUT] = "PUT",         [HTTP_PATCH] = "PATCH",
        [HTTP_DELETE] = "DELETE", [HTTP_OPTIONS] = "OPTIONS",
    };
    return (size_t)m < sizeof(names) / sizeof(names[0]) ? names[m] : "OTHER";
}

int
http_parse_request(const char *buf, size_t len, struct http_request *req)
{
    int rc;
    if (len == 0)
        return HTTP_PARSE_INCOMPLETE;
    if (len <= INT_MAX)
        return parse_head(buf, len, req);
    /* A head that does not fit in an int is refused rather than waited for. */
    rc = parse_head(buf, INT_MAX, req);
    return rc == HTTP_PARSE_INCOMPLETE ? HTTP_PARSE_BAD : rc;
}

/* Returns the first header value named `name` (borrowed from req), or NULL. */
const struct http_str *
http_header_get(const struct http_request *req, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_str *hn = &req->headers[i].name;
        size_t j;
        if (hn->len != n)
            continue;
        for (j = 0; j < n; j++)
            if (lower((unsigned char)hn->p[j]) != lower((unsigned char)name[j]))
                break;
        if (j == n)
            return &req->headers[i].value;
    }
    return NULL;
}

/* Chunked decoder states; 0 must be the start. */
enum {
    CH_SIZE = 0, /* chunk-size hex digits */
    CH_SIZE_WS,  /* BWS after the size, before ';' */
    CH_EXT,      /* chunk-ext, up to CR */
    CH_SIZE_LF,  /* LF ending the size line */
    CH_DATA,     /* chunk-data */
    CH_DATA_CR,  /* CR after chunk-data */
    CH_DATA_LF,  /* LF after chunk-data */
    CH_TRAILER,  /* start of a trailer line or of the final CRLF */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF, /* LF ending a trailer line */
    CH_FINAL_LF,   /* LF of the final CRLF */
    CH_DONE,
    CH_ERROR,
};

#define CHUNK_MAX_SIZE (1ull << 60)
#define CHUNK_MAX_DIGITS 16
#define CHUNK_MAX_LINE 4096      /* size line with its extensions */
#define CHUNK_MAX_TRAILERS 16384 /* the whole trailer section */

/* Decodes chunked framing incrementally; returns 1 done, 0 needs more, -1 malformed. */
int
http_chunked_decode(struct http_chunked *d, const char *in, size_t inlen, size_t *consumed,
                    char *out, size_t *produced)
{
    const char *p = in, *end = in + inlen;
    char *o = out;
    int rc = 0, h;

    while (p < end) {
        unsigned char c;

        if (d->state == CH_DATA) {
            size_t n = (size_t)(end - p);
            if (n > d->remaining)
                n = (size_t)d->remaining;
            memmove(o, p, n); /* out may be in itself: decoding in place */
            o += n;
            p += n;
            d->remaining -= n;
            if (d->remaining == 0)
                d->state = CH_DATA_CR;
            continue;
        }
        if (d->state == CH_DONE) {
            rc = 1;
            goto out;
        }
        if (d->state == CH_ERROR)
            goto bad;

        c = (unsigned char)*p++;
        if (d->state <= CH_SIZE_LF) {
            if (++d->line_len > CHUNK_MAX_LINE)
                goto bad;
        } else if (d->state >= CH_TRAILER) {
            /* remaining is 0 after the last chunk and counts trailer bytes. */
            if (++d->remaining > CHUNK_MAX_TRAILERS)
                goto bad;
        }

        switch (d->state) {
        case CH_SIZE:
            if ((h = hexval(c)) >= 0) {
                /* line_len - 1 digits came before this one */
                if (d->line_len > CHUNK_MAX_DIGITS || d->remaining > CHUNK_MAX_SIZE >> 4)
                    goto bad;
                d->remaining = d->remaining << 4 | (unsigned)h;
                if (d->remaining > CHUNK_MAX_SIZE)
                    goto bad;
            } else if (d->line_len == 1) {
                goto bad; /* no digit */
            } else if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else if (c == ';') {
                d->state = CH_EXT;
            } else if (c == ' ' || c == '\t') {
                d->state = CH_SIZE_WS;
            } else {
                goto bad;
            }
            break;
        case CH_SIZE_WS:
            if (c == ';')
                d->state = CH_EXT;
            else if (c != ' ' && c != '\t')
                goto bad;
            break;
        case CH_EXT:
            if (c == '\r')
                d->state = CH_SIZE_LF;
            else if (is_ctl(c))
                goto bad;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                goto bad;
            d->line_len = 0;
            d->state = d->remaining ? CH_DATA : CH_TRAILER;
            break;
        case CH_DATA_CR:
            if (c != '\r')
                goto bad;
            d->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                goto bad;
            d->state = CH_SIZE;
            break;
        case CH_TRAILER:
            if (c == '\r')
                d->state = CH_FINAL_LF;
            else if (IS(c, TK))
                d->state = CH_TRAILER_NAME;
            else
                goto bad; /* obs-fold, empty name, bare LF, junk */
            break;
        case CH_TRAILER_NAME:
            if (c == ':')
                d->state = CH_TRAILER_VALUE;
            else if (!IS(c, TK))
                goto bad;
            break;
        case CH_TRAILER_VALUE:
            if (c == '\r')
                d->state = CH_TRAILER_LF;
            else if (is_ctl(c))
                goto bad;
            break;
        case CH_TRAILER_LF:
            if (c != '\n')
                goto bad;
            d->state = CH_TRAILER;
            break;
        case CH_FINAL_LF:
            if (c != '\n')
                goto bad;
            d->state = CH_DONE;
            d->remaining = 0;
            rc = 1;
            goto out;
        default:
            goto bad;
        }
    }
    if (d->state == CH_DONE)
        rc = 1;
    else if (d->state == CH_ERROR)
        rc = -1;
out:
    *consumed = (size_t)(p - in);
    *produced = (size_t)(o - out);
    return rc;
bad:
    d->state = CH_ERROR;
    rc = -1;
    goto out;
}

/* Percent-decodes in into out; returns 0, or -1 on a bad escape or NUL. */
int
http_pct_decode(const char *in, size_t len, char *out, size_t *outlen, int plus_as_space)
{
    size_t i = 0, o = 0;
    while (i < len) {
        unsigned char c = (unsigned char)in[i++];
        if (c == '%') {
            int hi, lo;
            if (len - i < 2 || (hi = hexval((unsigned char)in[i])) < 0 ||
                (lo = hexval((unsigned char)in[i + 1])) < 0)
                goto bad;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus_as_space) {
            c = ' ';
        }
        if (c == 0)
            goto bad;
        out[o++] = (char)c;
    }
    *outlen = o;
    return 0;
bad:
    *outlen = o;
    return -1;
}

/* Finds a raw query parameter; returns 1 and its encoded value, or 0. */
int
http_query_find(const char *query, size_t qlen, const char *name, size_t namelen,
                struct http_str *val)
{
    const char *p, *end;
    if (qlen == 0)
        return 0;
    p = query;
    end = query + qlen;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p)), *eq;
        if (!amp)
            amp = end;
        eq = memchr(p, '=', (size_t)(amp - p));
        if (!eq)
            eq = amp;
        if (amp > p && (size_t)(eq - p) == namelen &&
            (namelen == 0 || memcmp(p, name, namelen) == 0)) {
            val->p = eq < amp ? eq + 1 : amp;
            val->len = eq < amp ? (size_t)(amp - eq - 1) : 0;
            return 1;
        }
        p = amp < end ? amp + 1 : end;
    }
    return 0;
}

int
http_hex_digit(unsigned char c)
{
    return hexval(c);
}
