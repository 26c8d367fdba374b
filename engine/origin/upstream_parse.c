/* upstream_parse.c - upstream HTTP/1.1 messages without I/O: answer parser, hop-by-hop rules.
 */
#include "upstream_parse.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"
#include "util.h"

#define READ_CHUNK 16384          /* least room offered to a read */
#define STREAM_CHUNK (256 * 1024) /* most room offered to a read of a streamed body */
#define KEEP_BUF (UPSTREAM_MAX_HEAD_BYTES + READ_CHUNK) /* larger buffers are freed when idle */

/* ---- small helpers ---- */

const char *
upstream_error_word(enum upstream_error e)
{
    switch (e) {
    case UPSTREAM_OK:
        return "ok";
    case UPSTREAM_CONNECT:
        return "connect";
    case UPSTREAM_TIMEOUT:
        return "timeout";
    case UPSTREAM_PROTOCOL:
        return "protocol";
    case UPSTREAM_TOO_LARGE:
        return "too_large";
    case UPSTREAM_SHUTDOWN:
        return "shutdown";
    }
    return "unknown";
}

static inline unsigned char
lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* s[0..n) equals the lower-case C string lit, ignoring ASCII case. */
static int
eq_nocase(const char *s, size_t n, const char *lit)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (lit[i] == '\0' || lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return 0;
    return lit[i] == '\0';
}

/* RFC 9110 5.6.2 tchar. */
static int
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A byte a field value may not hold: controls other than HTAB, and DEL. */
static int
is_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* The fields a proxy never forwards (RFC 9110 7.6.1), as lower-case names. */
static int
is_hop_by_hop(const char *name, size_t len)
{
    static const char *const hop[] = {"connection",          "keep-alive", "proxy-authenticate",
                                      "proxy-authorization", "te",         "trailer",
                                      "transfer-encoding",   "upgrade"};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (eq_nocase(name, len, hop[i]))
            return 1;
    return 0;
}

/* The comma-separated list s[0..n) holds the token name[0..namelen), ignoring case. */
static int
list_has(const char *s, size_t n, const char *name, size_t namelen)
{
    const char *p = s, *end = s + n;

    while (p < end) {
        const char *tok = p, *tend = memchr(p, ',', (size_t)(end - p));
        size_t i;
        if (tend == NULL)
            tend = end;
        p = tend < end ? tend + 1 : end;
        while (tok < tend && (*tok == ' ' || *tok == '\t'))
            tok++;
        while (tend > tok && (tend[-1] == ' ' || tend[-1] == '\t'))
            tend--;
        if ((size_t)(tend - tok) != namelen)
            continue;
        for (i = 0; i < namelen; i++)
            if (lower((unsigned char)tok[i]) != lower((unsigned char)name[i]))
                break;
        if (i == namelen)
            return 1;
    }
    return 0;
}

/* ---- the answer parser ---- */

enum { PS_HEAD, PS_INTERIM, PS_LENGTH, PS_CHUNKED, PS_CLOSE, PS_DONE, PS_ERROR };

/* A header field of the head in buf, by offsets (buf moves as it grows). */
struct field_at {
    size_t name, name_len, value, value_len;
    int keep; /* end-to-end: handed to the caller */
};

struct upstream_parser {
    int head_request;
    int upgrade;     /* the request asked to switch protocols: a 101 is its final answer */
    int report_head; /* feed returns UPSTREAM_PARSE_HEAD once the final head is complete */
    int stream;      /* the body is handed out in pieces (upstream_parser_body), not kept */
    size_t max_body;
    int state;
    int started; /* a byte arrived since the last reset */
    char *buf;   /* the head, then the body (Content-Length, close) or undecoded chunked bytes */
    size_t len, cap;
    size_t scan;     /* PS_HEAD: bytes of buf searched for the end of the head */
    size_t head_len; /* the final head (or PS_INTERIM: the interim head), at the start of buf */
    int status, minor_version, keep_alive, trailing;
    char *te; /* the transfer codings but chunked of the head's Transfer-Encoding, ", " between */
    size_t te_len, te_cap;
    int body_coded; /* the body is still in the codings of te */
    uint64_t content_length;
    uint64_t taken;    /* stream: body bytes handed out so far (PS_LENGTH counts them) */
    int head_told;     /* stream: UPSTREAM_PARSE_HEAD was returned for the final head */
    int length_framed; /* the final answer's body is Content-Length bytes */
    struct field_at *at;
    size_t nat, at_cap;
    struct http_chunked chunk;
    char *body; /* PS_CHUNKED: decoded payload */
    size_t body_len, body_cap;
    /* the result */
    struct upstream_header *fields;
    size_t nfields, fields_cap;
    const char *out_body;
    size_t out_body_len;
    enum upstream_error error;
    const char *detail; /* static */
};

static int
ps_fail(struct upstream_parser *ps, enum upstream_error error, const char *detail)
{
    ps->state = PS_ERROR;
    ps->error = error;
    ps->detail = detail;
    return UPSTREAM_PARSE_ERROR;
}

/* Room for `more` bytes after len in buf; `exact` grows to just that. */
static void
ps_reserve(struct upstream_parser *ps, size_t more, int exact)
{
    size_t cap;
    if (ps->cap - ps->len >= more)
        return;
    cap = ps->len + more;
    if (!exact && cap < 2 * ps->cap)
        cap = 2 * ps->cap;
    ps->buf = xrealloc(ps->buf, cap);
    ps->cap = cap;
}

struct upstream_parser *
upstream_parser_new(int head_request, size_t max_body)
{
    struct upstream_parser *ps = xcalloc(1, sizeof *ps);
    ps->max_body = max_body;
    upstream_parser_reset(ps, head_request);
    return ps;
}

void
upstream_parser_free(struct upstream_parser *ps)
{
    if (ps == NULL)
        return;
    free(ps->buf);
    free(ps->at);
    free(ps->body);
    free(ps->fields);
    free(ps->te);
    free(ps);
}

void
upstream_parser_reset(struct upstream_parser *ps, int head_request)
{
    if (ps->cap > KEEP_BUF) {
        free(ps->buf);
        ps->buf = NULL;
        ps->cap = 0;
    }
    if (ps->body_cap > KEEP_BUF) {
        free(ps->body);
        ps->body = NULL;
        ps->body_cap = 0;
    }
    ps->head_request = head_request;
    ps->upgrade = 0;
    ps->report_head = 0;
    ps->stream = 0;
    ps->taken = 0;
    ps->head_told = 0;
    ps->length_framed = 0;
    ps->state = PS_HEAD;
    ps->started = 0;
    ps->len = ps->scan = ps->head_len = 0;
    ps->status = ps->minor_version = ps->keep_alive = ps->trailing = 0;
    ps->content_length = 0;
    ps->te_len = 0;
    ps->body_coded = 0;
    ps->nat = 0;
    memset(&ps->chunk, 0, sizeof ps->chunk);
    ps->body_len = 0;
    ps->nfields = 0;
    ps->out_body = NULL;
    ps->out_body_len = 0;
    ps->error = UPSTREAM_OK;
    ps->detail = "";
}

/*
 * Looks for the CRLF CRLF ending the head in buf[scan..len). Returns 1 and
 * sets *end past it, 0 when not there yet, -1 on a bare LF.
 */
static int
find_head_end(struct upstream_parser *ps, size_t *end)
{
    const char *b = ps->buf;
    size_t i = ps->scan;

    while (i < ps->len) {
        const char *lf = memchr(b + i, '\n', ps->len - i);
        if (lf == NULL)
            break;
        i = (size_t)(lf - b);
        if (i == 0 || b[i - 1] != '\r')
            return -1;
        if (i >= 3 && b[i - 2] == '\n' && b[i - 3] == '\r') {
            *end = i + 1;
            return 1;
        }
        i++;
    }
    ps->scan = ps->len;
    return 0;
}

/* A Content-Length value: 1*DIGIT, or a list of equal ones (RFC 9110 8.6). */
static int
parse_length(const char *s, size_t n, uint64_t *out)
{
    const char *p = s, *end = s + n;
    int have = 0;

    while (p <= end) {
        const char *e = memchr(p, ',', (size_t)(end - p));
        uint64_t v = 0;
        if (e == NULL)
            e = end;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        const char *d = p;
        while (p < e && *p >= '0' && *p <= '9') {
            if (v > (UINT64_C(1) << 60) / 10)
                return -1;
            v = v * 10 + (uint64_t)(*p++ - '0');
        }
        if (p == d)
            return -1;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        if (p != e || (have && v != *out))
            return -1;
        *out = v;
        have = 1;
        p = e + 1;
    }
    return 0;
}

static void
te_add(struct upstream_parser *ps, const char *s, size_t n)
{
    if (ps->te_cap - ps->te_len < n + 1) {
        ps->te_cap = 2 * (ps->te_len + n + 1);
        ps->te = xrealloc(ps->te, ps->te_cap);
    }
    memcpy(ps->te + ps->te_len, s, n);
    ps->te_len += n;
    ps->te[ps->te_len] = '\0';
}

static const char *
skip_ows(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

static const char *
skip_token(const char *p, const char *end)
{
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    return p;
}

/*
 * Reads one Transfer-Encoding value v[0..n), a list of transfer codings
 * (RFC 9112 7: token *( OWS ";" OWS token BWS "=" BWS ( token / quoted-string ) )),
 * empty elements allowed. Codings other than chunked are appended to ps->te;
 * *nchunked counts chunked. Returns 0, or -1 when the value is not such a
 * list, names no coding, gives chunked parameters, or names a coding after
 * chunked (here or in an earlier field: *nchunked is already set).
 */
static int
add_codings(struct upstream_parser *ps, const char *v, size_t n, int *nchunked)
{
    const char *p = v, *end = v + n;
    int any = 0;

    for (;;) {
        const char *name, *name_end, *q;
        int params = 0;

        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        if (p == end)
            break;
        name = p;
        p = name_end = skip_token(p, end);
        if (p == name)
            return -1;
        for (;;) {
            q = skip_ows(p, end);
            if (q == end || *q != ';')
                break;
            q = skip_ows(q + 1, end);
            if ((p = skip_token(q, end)) == q)
                return -1;
            q = skip_ows(p, end);
            if (q == end || *q != '=')
                return -1;
            q = skip_ows(q + 1, end);
            if (q < end && *q == '"') {
                for (q++; q < end && *q != '"'; q++)
                    if (*q == '\\' && ++q == end)
                        return -1;
                if (q == end)
                    return -1;
                p = q + 1;
            } else if ((p = skip_token(q, end)) == q) {
                return -1;
            }
            params = 1;
        }
        q = skip_ows(p, end);
        if (q < end && *q != ',')
            return -1;
        any = 1;
        if (*nchunked > 0)
            return -1; /* chunked is applied last, and once */
        if (eq_nocase(name, (size_t)(name_end - name), "chunked")) {
            if (params)
                return -1;
            (*nchunked)++;
        } else {
            if (ps->te_len > 0)
                te_add(ps, ", ", 2);
            te_add(ps, name, (size_t)(p - name));
        }
        p = q;
    }
    return any ? 0 : -1;
}

/* Parses the status line at buf[0..): sets status and version; returns the line's length or -1. */
static long
parse_status_line(struct upstream_parser *ps, size_t end)
{
    const char *b = ps->buf, *p;

    if (end < 14 || memcmp(b, "HTTP/1.", 7) != 0 || (b[7] != '0' && b[7] != '1') || b[8] != ' ')
        return -1;
    for (int i = 9; i < 12; i++)
        if (b[i] < '0' || b[i] > '9')
            return -1;
    ps->minor_version = b[7] - '0';
    ps->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    if (ps->status < 100 || ps->status > 599)
        return -1;
    p = b + 12;
    if (*p == ' ') {
        /* reason-phrase: HTAB, SP, VCHAR, obs-text */
        for (p++; *p != '\r'; p++)
            if (is_ctl((unsigned char)*p))
                return -1;
    }
    if (p[0] != '\r' || p[1] != '\n')
        return -1;
    return p + 2 - b;
}

/*
 * Parses the head buf[0..end) ending in CRLF CRLF: status line, fields and the
 * framing they give. Field names and values are NUL-terminated in place.
 * Returns 0 or sets the error.
 */
static int
parse_head(struct upstream_parser *ps, size_t end)
{
    char *b = ps->buf, *p;
    long line = parse_status_line(ps, end);
    int has_length = 0, has_te = 0, chunked = 0, conn_close = 0, conn_keep = 0;

    if (line < 0)
        return ps_fail(ps, UPSTREAM_PROTOCOL, "malformed status line in the upstream answer");
    p = b + line;
    ps->nat = 0;
    ps->te_len = 0;
    ps->body_coded = 0;
    while (!(p[0] == '\r' && p[1] == '\n')) {
        char *name = p, *v, *vend;
        struct field_at *f;

        if (*p == ' ' || *p == '\t')
            return ps_fail(ps, UPSTREAM_PROTOCOL, "obsolete line folding in the upstream answer");
        while (is_tchar((unsigned char)*p))
            p++;
        if (*p != ':' || p == name)
            return ps_fail(ps, UPSTREAM_PROTOCOL,
                           *p == ' ' || *p == '\t'
                               ? "whitespace before a colon in the upstream answer"
                               : "malformed header field name in the upstream answer");
        if (ps->nat == UPSTREAM_MAX_FIELDS)
            return ps_fail(ps, UPSTREAM_PROTOCOL, "too many header fields in the upstream answer");
        *p++ = '\0';
        while (*p == ' ' || *p == '\t')
            p++;
        v = p;
        while (*p != '\r') {
            if (is_ctl((unsigned char)*p))
                return ps_fail(ps, UPSTREAM_PROTOCOL,
                               "control character in a header field of the upstream answer");
            p++;
        }
        if (p[1] != '\n')
            return ps_fail(ps, UPSTREAM_PROTOCOL, "bare CR in the upstream answer");
        vend = p;
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        p += 2;
        if (ps->nat == ps->at_cap) {
            ps->at_cap = ps->at_cap ? 2 * ps->at_cap : 16;
            ps->at = xrealloc(ps->at, ps->at_cap * sizeof *ps->at);
        }
        f = &ps->at[ps->nat++];
        f->name = (size_t)(name - b);
        f->name_len = strlen(name);
        f->value = (size_t)(v - b);
        f->value_len = (size_t)(vend - v);
        *vend = '\0';

        if (eq_nocase(name, f->name_len, "content-length")) {
            uint64_t cl = 0;
            if (parse_length(v, f->value_len, &cl) < 0 || (has_length && cl != ps->content_length))
                return ps_fail(ps, UPSTREAM_PROTOCOL, "bad or conflicting Content-Length");
            ps->content_length = cl;
            has_length = 1;
        } else if (eq_nocase(name, f->name_len, "transfer-encoding")) {
            /* Several fields are one list (RFC 9110 5.3). */
            if (add_codings(ps, v, f->value_len, &chunked) < 0)
                return ps_fail(ps, UPSTREAM_PROTOCOL,
                               "malformed Transfer-Encoding in the upstream answer (chunked must "
                               "come last, once, without parameters)");
            has_te = 1;
        } else if (eq_nocase(name, f->name_len, "connection")) {
            conn_close |= list_has(v, f->value_len, "close", 5);
            conn_keep |= list_has(v, f->value_len, "keep-alive", 10);
        }
    }
    if (has_te && has_length)
        return ps_fail(ps, UPSTREAM_PROTOCOL,
                       "both Content-Length and Transfer-Encoding in the upstream answer");
    if (has_te && ps->minor_version == 0)
        return ps_fail(ps, UPSTREAM_PROTOCOL, "Transfer-Encoding in an HTTP/1.0 answer");

    /* What the caller sees: end-to-end fields, without Content-Length. */
    for (size_t i = 0; i < ps->nat; i++) {
        struct field_at *f = &ps->at[i];
        const char *name = b + f->name;
        f->keep =
            !is_hop_by_hop(name, f->name_len) && !eq_nocase(name, f->name_len, "content-length");
        for (size_t j = 0; j < ps->nat && f->keep; j++)
            if (eq_nocase(b + ps->at[j].name, ps->at[j].name_len, "connection") &&
                list_has(b + ps->at[j].value, ps->at[j].value_len, name, f->name_len))
                f->keep = 0;
    }

    ps->keep_alive = ps->minor_version == 1 ? !conn_close : conn_keep && !conn_close;
    if (ps->status == 101 && ps->upgrade) {
        /* The protocol switched (RFC 9110 15.2.2): every byte after the head until the close is
         * the new protocol's, whatever framing fields the head has. */
        ps->state = PS_CLOSE;
        ps->keep_alive = 0;
        return 0;
    }
    if (ps->status < 200)
        return 0;
    if (ps->head_request || ps->status == 204 || ps->status == 304) {
        ps->state = PS_DONE;
    } else if (chunked) {
        ps->state = PS_CHUNKED;
        ps->body_coded = ps->te_len > 0;
    } else if (has_te) {
        /* Codings without a final chunked: the body ends when the connection closes. */
        ps->state = PS_CLOSE;
        ps->keep_alive = 0;
        ps->body_coded = 1;
    } else if (has_length) {
        if (!ps->report_head && ps->content_length > ps->max_body)
            return ps_fail(ps, UPSTREAM_TOO_LARGE, "upstream answer larger than the limit");
        ps->state = PS_LENGTH;
        ps->length_framed = 1;
    } else {
        ps->state = PS_CLOSE;
        ps->keep_alive = 0;
    }
    return 0;
}

/* Points the result's fields at the kept fields of the head at the start of buf. */
static void
ps_fields(struct upstream_parser *ps)
{
    char *b = ps->buf;

    ps->nfields = 0;
    if (ps->fields_cap < ps->nat) {
        ps->fields_cap = ps->nat;
        ps->fields = xrealloc(ps->fields, ps->fields_cap * sizeof *ps->fields);
    }
    for (size_t i = 0; i < ps->nat; i++) {
        const struct field_at *f = &ps->at[i];
        struct upstream_header *h;
        if (!f->keep)
            continue;
        h = &ps->fields[ps->nfields++];
        h->name = b + f->name;
        h->name_len = f->name_len;
        h->value = b + f->value;
        h->value_len = f->value_len;
    }
}

/* The answer is complete: points the result at fields and body. */
static int
ps_done(struct upstream_parser *ps)
{
    size_t body_len = ps->len - ps->head_len;

    if (ps->state == PS_CHUNKED) {
        if (ps->body_cap <= ps->body_len) {
            ps->body_cap = ps->body_len + 1;
            ps->body = xrealloc(ps->body, ps->body_cap);
        }
        ps->body[ps->body_len] = '\0';
        ps->out_body = ps->body;
        ps->out_body_len = ps->body_len;
    } else if (ps->state == PS_LENGTH || ps->state == PS_CLOSE) {
        if (ps->state == PS_LENGTH) {
            /* Streamed, what was handed out already is not in buf any more. */
            ps->trailing = body_len > ps->content_length - ps->taken;
            body_len = (size_t)(ps->content_length - ps->taken);
        }
        if (ps->head_len + body_len + 1 > ps->len)
            ps_reserve(ps, ps->head_len + body_len + 1 - ps->len, 1);
        ps->buf[ps->head_len + body_len] = '\0';
        ps->out_body = ps->buf + ps->head_len;
        ps->out_body_len = body_len;
    } else {
        /* no body */
        ps->trailing = ps->len > ps->head_len;
        ps->out_body = "";
        ps->out_body_len = 0;
    }
    ps->state = PS_DONE;
    ps_fields(ps);
    return UPSTREAM_PARSE_DONE;
}

/* Runs the state machine over the bytes in buf. */
static int
ps_advance(struct upstream_parser *ps)
{
    for (;;) {
        switch (ps->state) {
        case PS_HEAD: {
            size_t end;
            int r = find_head_end(ps, &end);
            if (r < 0)
                return ps_fail(ps, UPSTREAM_PROTOCOL, "bare LF in the upstream answer's head");
            if ((r == 0 && ps->len > UPSTREAM_MAX_HEAD_BYTES) ||
                (r > 0 && end > UPSTREAM_MAX_HEAD_BYTES))
                return ps_fail(ps, UPSTREAM_PROTOCOL, "upstream answer head over 64 KiB");
            if (r == 0)
                return UPSTREAM_PARSE_MORE;
            if (parse_head(ps, end) < 0)
                return UPSTREAM_PARSE_ERROR;
            ps->head_len = end;
            if (ps->status < 200 && !(ps->status == 101 && ps->upgrade)) {
                /* 1xx: an interim answer; 101 would switch protocols we never asked for. */
                if (ps->status == 101)
                    return ps_fail(ps, UPSTREAM_PROTOCOL, "unexpected 101 from upstream");
                ps->state = PS_INTERIM;
                ps->out_body = "";
                ps->out_body_len = 0;
                ps_fields(ps);
                return UPSTREAM_PARSE_INTERIM;
            }
            if (ps->report_head) {
                /* The caller chooses how the body is read (upstream_parser_body_mode), then
                 * resumes. */
                ps->head_told = 1;
                ps->out_body = "";
                ps->out_body_len = 0;
                ps_fields(ps);
                return UPSTREAM_PARSE_HEAD;
            }
            break;
        }
        case PS_LENGTH:
            if (ps->taken + (ps->len - ps->head_len) < ps->content_length)
                return UPSTREAM_PARSE_MORE;
            return ps_done(ps);
        case PS_CLOSE:
            if (!ps->stream && ps->len - ps->head_len > ps->max_body)
                return ps_fail(ps, UPSTREAM_TOO_LARGE, "upstream answer larger than the limit");
            return UPSTREAM_PARSE_MORE;
        case PS_CHUNKED: {
            size_t in = ps->len - ps->head_len, consumed, produced;
            int rc;
            if (in == 0)
                return UPSTREAM_PARSE_MORE;
            if (ps->body_cap - ps->body_len < in) {
                size_t cap = ps->body_len + in;
                if (cap < 2 * ps->body_cap)
                    cap = 2 * ps->body_cap;
                ps->body = xrealloc(ps->body, cap);
                ps->body_cap = cap;
            }
            rc = http_chunked_decode(&ps->chunk, ps->buf + ps->head_len, in, &consumed,
                                     ps->body + ps->body_len, &produced);
            ps->body_len += produced;
            /* Size first: whichever problem comes first in the bytes wins, however they were cut.
             */
            if (!ps->stream && ps->body_len > ps->max_body)
                return ps_fail(ps, UPSTREAM_TOO_LARGE, "upstream answer larger than the limit");
            if (rc < 0)
                return ps_fail(ps, UPSTREAM_PROTOCOL, "malformed chunked body from upstream");
            /* Decoded bytes are dropped; the head stays where the fields point. */
            ps->trailing = consumed < in;
            ps->len = ps->head_len;
            if (rc == 0)
                return UPSTREAM_PARSE_MORE;
            return ps_done(ps);
        }
        case PS_DONE:
            return ps_done(ps);
        case PS_INTERIM:
            return UPSTREAM_PARSE_INTERIM;
        default:
            return UPSTREAM_PARSE_ERROR;
        }
    }
}

char *
upstream_parser_space(struct upstream_parser *ps, size_t *room)
{
    assert(ps->state != PS_DONE && ps->state != PS_ERROR && ps->state != PS_INTERIM);
    if (ps->state == PS_LENGTH) {
        /* Exactly the rest of the body (streamed: a piece of it at most), and the byte that
         * terminates it. */
        size_t rest = (size_t)(ps->content_length - ps->taken) - (ps->len - ps->head_len);
        if (ps->stream && rest > STREAM_CHUNK)
            rest = STREAM_CHUNK;
        ps_reserve(ps, rest + 1, 1);
        *room = rest;
    } else {
        ps_reserve(ps, ps->stream ? STREAM_CHUNK : READ_CHUNK, 0);
        *room = ps->cap - ps->len;
    }
    return ps->buf + ps->len;
}

int
upstream_parser_feed(struct upstream_parser *ps, size_t n)
{
    if (ps->state == PS_DONE)
        return UPSTREAM_PARSE_DONE;
    if (ps->state == PS_ERROR)
        return UPSTREAM_PARSE_ERROR;
    assert(ps->state != PS_INTERIM && n > 0 && n <= ps->cap - ps->len);
    ps->started = 1;
    ps->len += n;
    return ps_advance(ps);
}

int
upstream_parser_resume(struct upstream_parser *ps)
{
    if (ps->state != PS_INTERIM) {
        /* After UPSTREAM_PARSE_HEAD: the bytes fed after the head are the body's. */
        assert(ps->head_told);
        return ps_advance(ps);
    }
    memmove(ps->buf, ps->buf + ps->head_len, ps->len - ps->head_len);
    ps->len -= ps->head_len;
    ps->head_len = ps->scan = 0;
    ps->nfields = 0;
    ps->state = PS_HEAD;
    return ps_advance(ps);
}

int
upstream_parser_eof(struct upstream_parser *ps)
{
    switch (ps->state) {
    case PS_DONE:
        return UPSTREAM_PARSE_DONE;
    case PS_ERROR:
        return UPSTREAM_PARSE_ERROR;
    case PS_CLOSE:
        return ps_done(ps);
    case PS_HEAD:
        if (ps->len == 0 && !ps->started)
            return ps_fail(ps, UPSTREAM_CONNECT,
                           "upstream closed the connection without answering");
        /* fall through */
    default:
        return ps_fail(ps, UPSTREAM_PROTOCOL, "upstream closed the connection mid-answer");
    }
}

void
upstream_parser_options(struct upstream_parser *ps, unsigned flags)
{
    assert(!ps->started);
    ps->report_head = (flags & UPSTREAM_PARSER_HEAD) != 0;
    ps->upgrade = (flags & UPSTREAM_PARSER_UPGRADE) != 0;
}

int
upstream_parser_body_mode(struct upstream_parser *ps, int stream, size_t max_body)
{
    assert(ps->head_told);
    ps->stream = stream;
    ps->max_body = max_body;
    if (!stream && ps->state == PS_LENGTH && ps->content_length > max_body)
        return ps_fail(ps, UPSTREAM_TOO_LARGE, "upstream answer larger than the limit");
    return 0;
}

const char *
upstream_parser_body(struct upstream_parser *ps, size_t *len)
{
    const char *p = "";
    size_t n = 0;

    if (ps->stream && ps->head_told) {
        switch (ps->state) {
        case PS_LENGTH:
        case PS_CLOSE:
            p = ps->buf + ps->head_len;
            n = ps->len - ps->head_len;
            ps->len = ps->head_len; /* the next read overwrites them */
            break;
        case PS_CHUNKED:
            p = ps->body;
            n = ps->body_len;
            ps->body_len = 0;
            break;
        case PS_DONE:
            p = ps->out_body;
            n = ps->out_body_len;
            ps->out_body_len = 0;
            break;
        default:
            break;
        }
    }
    ps->taken += n;
    *len = n;
    return n ? p : "";
}

void
upstream_parser_response(struct upstream_parser *ps, struct upstream_response *res)
{
    memset(res, 0, sizeof *res);
    res->content_length = -1;
    if (ps->state == PS_ERROR ||
        (ps->state != PS_DONE && ps->state != PS_INTERIM && !ps->head_told)) {
        res->error = ps->state == PS_ERROR ? ps->error : UPSTREAM_PROTOCOL;
        res->detail = ps->state == PS_ERROR ? ps->detail : "incomplete upstream answer";
        res->body = "";
        return;
    }
    if (ps->state != PS_INTERIM)
        ps_fields(ps); /* buf may have moved since the head was parsed */
    res->error = UPSTREAM_OK;
    res->detail = "";
    res->status = ps->status;
    res->content_length = ps->length_framed ? (int64_t)ps->content_length : -1;
    res->minor_version = ps->minor_version;
    res->fields = ps->fields;
    res->nfields = ps->nfields;
    res->body = ps->state == PS_DONE ? ps->out_body : "";
    res->body_len = ps->state == PS_DONE ? ps->out_body_len : 0;
    res->transfer_encoding =
        (ps->state == PS_DONE || ps->head_told) && ps->body_coded ? ps->te : NULL;
}

int
upstream_parser_reusable(const struct upstream_parser *ps)
{
    return ps->state == PS_DONE && ps->keep_alive && !ps->trailing;
}

int
upstream_parser_started(const struct upstream_parser *ps)
{
    return ps->started;
}

const char *
upstream_response_field(const struct upstream_response *res, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < res->nfields; i++) {
        const struct upstream_header *h = &res->fields[i];
        size_t j;
        if (h->name_len != n)
            continue;
        for (j = 0; j < n; j++)
            if (lower((unsigned char)h->name[j]) != lower((unsigned char)name[j]))
                break;
        if (j == n)
            return h->value;
    }
    return NULL;
}

/* ---- forwarded request headers ---- */

/*
 * Request fields the proxy never passes on from a client: hop-by-hop ones; those the proxy
 * sets itself (Host, Content-Length, Expect: upstream_send frames the request; X-Forwarded-*,
 * Via: upstream_proxy_fields); and those a caller could pose as a proxy with, which apps and
 * frameworks read as the client's address, the scheme, the host or the URL.
 */
static int
dropped_on_forward(const char *name, size_t len)
{
    static const char *const drop[] = {"host",
                                       "content-length",
                                       "expect",
                                       "forwarded",
                                       "via",
                                       "x-real-ip",
                                       "x-client-ip",
                                       "client-ip",
                                       "true-client-ip",
                                       "x-cluster-client-ip",
                                       "front-end-https",
                                       "x-url-scheme",
                                       "x-original-host",
                                       "x-host",
                                       "x-original-url",
                                       "x-rewrite-url",
                                       "proxy-connection"};
    static const char prefix[] = "x-forwarded-";
    size_t plen = sizeof(prefix) - 1;
    if (is_hop_by_hop(name, len))
        return 1;
    if (len > plen) {
        size_t i = 0;
        while (i < plen && (name[i] | 0x20) == prefix[i])
            i++;
        if (i == plen)
            return 1;
    }
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        if (eq_nocase(name, len, drop[i]))
            return 1;
    return 0;
}

/* Whether s[0..n) is n lower-case hex digits, not all of them zero when nonzero is set. */
static int
lower_hex(const char *s, size_t n, int nonzero)
{
    int any = 0;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
        any |= s[i] != '0';
    }
    return any || !nonzero;
}

int
upstream_traceparent_valid(const char *v, size_t len)
{
    /* version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55 */
    if (len < 55 || !lower_hex(v, 2, 0) || memcmp(v, "ff", 2) == 0 || v[2] != '-' ||
        !lower_hex(v + 3, 32, 1) || v[35] != '-' || !lower_hex(v + 36, 16, 1) || v[52] != '-' ||
        !lower_hex(v + 53, 2, 0))
        return 0;
    if (memcmp(v, "00", 2) == 0)
        return len == 55;
    return len == 55 || v[55] == '-'; /* a later version: what follows is its own */
}

int
upstream_tracestate_valid(const char *v, size_t len)
{
    if (len > 512)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            return 0;
    return 1;
}

/* Whether the request's trace context goes on: exactly one traceparent, well formed, and every
 * tracestate line well formed (W3C Trace Context, section 3). */
static int
trace_context_valid(const struct http_request *h)
{
    size_t parents = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        if (eq_nocase(f->name.p, f->name.len, "traceparent")) {
            if (parents++ || !upstream_traceparent_valid(f->value.p, f->value.len))
                return 0;
        } else if (eq_nocase(f->name.p, f->name.len, "tracestate") &&
                   !upstream_tracestate_valid(f->value.p, f->value.len)) {
            return 0;
        }
    }
    return parents == 1;
}

void
upstream_forward_headers(const struct http_request *h, struct sbuf *out)
{
    int trace = -1; /* whether the trace context goes on: found out at its first field */
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        int listed = 0;
        if (dropped_on_forward(f->name.p, f->name.len))
            continue;
        if (eq_nocase(f->name.p, f->name.len, "traceparent") ||
            eq_nocase(f->name.p, f->name.len, "tracestate")) {
            if (trace < 0)
                trace = trace_context_valid(h);
            if (!trace)
                continue;
        }
        for (size_t j = 0; j < h->nheaders && !listed; j++)
            listed =
                eq_nocase(h->headers[j].name.p, h->headers[j].name.len, "connection") &&
                list_has(h->headers[j].value.p, h->headers[j].value.len, f->name.p, f->name.len);
        if (listed)
            continue;
        sbuf_add(out, f->name.p, f->name.len);
        sbuf_add(out, ": ", 2);
        sbuf_add(out, f->value.p, f->value.len);
        sbuf_add(out, "\r\n", 2);
    }
}

void
upstream_proxy_fields(const struct http_request *h, const char *client, const char *peer,
                      int peer_trusted, struct sbuf *out)
{
    if (client != NULL && *client != '\0') {
        if (!peer || !*peer)
            peer = client;
        sbuf_adds(out, "X-Forwarded-For: ");
        for (size_t i = 0; peer_trusted && i < h->nheaders; i++) {
            const struct http_header *f = &h->headers[i];
            if (f->value.len && eq_nocase(f->name.p, f->name.len, "x-forwarded-for")) {
                sbuf_add(out, f->value.p, f->value.len);
                sbuf_adds(out, ", ");
            }
        }
        sbuf_printf(out, "%s\r\n", peer);
        if (strchr(client, ':'))
            sbuf_printf(out, "Forwarded: for=\"[%s]\";proto=http\r\n", client);
        else
            sbuf_printf(out, "Forwarded: for=%s;proto=http\r\n", client);
    }
    sbuf_adds(out, "X-Forwarded-Proto: http\r\n");
    sbuf_printf(out, "Via: 1.%d sluice\r\n", h->minor_version == 0 ? 0 : 1);
}
