/* coding.c - choosing a response's content coding from a request's Accept-Encoding. */
#include "coding.h"

#include <stdbool.h>
#include <strings.h>

#define Q_UNSET (-1)

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* The weight "q=..." of RFC 9110 section 12.4.2 in thousandths, or -1 when it does not parse:
 * "0" ["." 0-3 digits] or "1" ["." 0-3 zeros]. */
static int
parse_qvalue(const char *p, size_t len)
{
    if (len == 0 || (p[0] != '0' && p[0] != '1'))
        return -1;
    int q = (p[0] - '0') * 1000, scale = 100;
    if (len == 1)
        return q;
    if (p[1] != '.' || len > 5)
        return -1;
    for (size_t i = 2; i < len; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        q += (p[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

/* Weights of the members seen so far: one per coding, identity and "*". */
struct weights {
    int coding[CODEC_N];
    int identity, star;
};

/* Reads one member "coding *( OWS ; OWS param )" of s[0..len) into w. */
static void
member(struct weights *w, const char *s, size_t len)
{
    size_t i = 0, nend;
    int q = 1000;

    while (i < len && s[i] != ';' && !is_ows(s[i]))
        i++;
    nend = i;
    if (nend == 0)
        return;
    while (i < len) {
        while (i < len && (is_ows(s[i]) || s[i] == ';'))
            i++;
        size_t ps = i;
        while (i < len && s[i] != ';')
            i++;
        size_t pe = i;
        while (pe > ps && is_ows(s[pe - 1]))
            pe--;
        if (pe - ps >= 2 && (s[ps] == 'q' || s[ps] == 'Q') && s[ps + 1] == '=') {
            q = parse_qvalue(s + ps + 2, pe - ps - 2);
            if (q < 0)
                return; /* a member with a bad weight is ignored */
        }
    }
    int c = codec_from_name(s, nend);
    if (c >= 0) {
        if (w->coding[c] == Q_UNSET || q > w->coding[c])
            w->coding[c] = q;
    } else if (nend == 1 && s[0] == '*') {
        w->star = q;
    } else if (nend == 8 && strncasecmp(s, "identity", 8) == 0) {
        w->identity = q;
    }
}

int
coding_negotiate(const struct http_str *values, size_t n, unsigned offered)
{
    struct weights w = {.identity = Q_UNSET, .star = Q_UNSET};

    for (int c = 0; c < CODEC_N; c++)
        w.coding[c] = Q_UNSET;
    if (n == 0)
        return -1;
    for (size_t v = 0; v < n; v++) {
        const char *s = values[v].p;
        size_t len = values[v].len, i = 0;
        while (i < len) {
            while (i < len && (is_ows(s[i]) || s[i] == ','))
                i++;
            size_t start = i;
            while (i < len && s[i] != ',')
                i++;
            if (i > start)
                member(&w, s + start, i - start);
        }
    }
    int floor = w.identity != Q_UNSET ? w.identity : w.star;
    int best = -1, bestq = 0;
    for (int c = 0; c < CODEC_N; c++) {
        if (!(offered & CODEC_BIT(c)))
            continue;
        int q = w.coding[c] != Q_UNSET ? w.coding[c] : w.star;
        if (q > bestq) {
            best = c;
            bestq = q;
        }
    }
    if (best >= 0 && floor != Q_UNSET && bestq < floor)
        return -1;
    return best;
}

int
coding_for_request(const struct http_request *h, unsigned offered)
{
    struct http_str v[8];
    size_t n = 0;

    for (size_t i = 0; i < h->nheaders && n < sizeof(v) / sizeof(v[0]); i++)
        if (h->headers[i].name.len == 15 &&
            strncasecmp(h->headers[i].name.p, "accept-encoding", 15) == 0)
            v[n++] = h->headers[i].value;
    return coding_negotiate(v, n, offered);
}
