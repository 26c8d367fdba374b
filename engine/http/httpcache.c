/* httpcache.c - HTTP caching rules (RFC 9111) for answers of upstream apps. */
#define _GNU_SOURCE
#include "httpcache.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sf.h"
#include "util.h"

static bool
name_is_n(const struct http_str *name, const char *s, size_t n)
{
    return name->len == n && strncasecmp(name->p, s, n) == 0;
}

static bool
name_is(const struct http_str *name, const char *s)
{
    return name_is_n(name, s, strlen(s));
}

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Trims optional whitespace around p[0..*len). */
static const char *
trim(const char *p, size_t *len)
{
    while (*len && is_ows(*p)) {
        p++;
        (*len)--;
    }
    while (*len && is_ows(p[*len - 1]))
        (*len)--;
    return p;
}

/*
 * Calls fn for each element of a comma-separated list (empty ones skipped),
 * honouring quoted strings so that a comma inside quotes does not split.
 * With escapes, a backslash inside quotes escapes the next byte (a
 * quoted-string); without, it is an ordinary byte (an entity tag).
 */
static void
each_element(const char *v, size_t len, bool escapes,
             void (*fn)(const char *el, size_t ellen, void *ctx), void *ctx)
{
    size_t start = 0;
    bool quoted = false;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && v[i] == '"')
            quoted = !quoted;
        else if (escapes && i < len && v[i] == '\\' && quoted && i + 1 < len)
            i++;
        if (i == len || (v[i] == ',' && !quoted)) {
            size_t el = i - start;
            const char *p = trim(v + start, &el);
            if (el)
                fn(p, el, ctx);
            start = i + 1;
        }
    }
}

/* Splits a list element "name[=value]" around its '=', trimming both parts. */
static void
split_directive(const char *el, size_t len, struct http_str *name, struct http_str *val,
                bool *has_val)
{
    const char *eq = memchr(el, '=', len);
    name->p = el;
    name->len = eq ? (size_t)(eq - el) : len;
    name->p = trim(name->p, &name->len);
    *has_val = eq != NULL;
    val->p = eq ? eq + 1 : el + len;
    val->len = eq ? len - (size_t)(eq - el) - 1 : 0;
    val->p = trim(val->p, &val->len);
}

/* ---- HTTP-dates (RFC 9110 section 5.6.7) ------------------------------------------------ */

static const char *const day_names[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
static const char *const day_names_long[] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                             "Friday", "Saturday", "Sunday"};
static const char *const month_names[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar (any m and d). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The inverse of days_from_civil(). */
static void
civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static bool
is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
days_in_month(int64_t y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* n decimal digits at p, or -1. */
static int
digits(const char *p, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* The index of the name at p[0..len) in names[0..n) (exact case), or -1. */
static int
name_index(const char *p, size_t len, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(p, names[i], len) == 0)
            return i;
    return -1;
}

/* A broken-down date; -1 in a field that did not parse. */
struct civil {
    int64_t year;
    int month, day, hour, min, sec;
};

/* time-of-day = hour ":" minute ":" second, 8 bytes (RFC 9110 section 5.6.7). */
static bool
time_of_day(const char *p, struct civil *c)
{
    if (p[2] != ':' || p[5] != ':')
        return false;
    c->hour = digits(p, 2);
    c->min = digits(p + 3, 2);
    c->sec = digits(p + 6, 2);
    return c->hour >= 0 && c->hour <= 23 && c->min >= 0 && c->min <= 59 && c->sec >= 0 &&
           c->sec <= 60;
}

static int64_t
civil_seconds(const struct civil *c)
{
    return days_from_civil(c->year, c->month, c->day) * 86400 + c->hour * 3600 + c->min * 60 +
           c->sec;
}

/*
 * Sets the year of an RFC 850 date with two-digit year yy: the one whose
 * date is at most 50 years after now and less than 100 years before that
 * (RFC 9110 section 5.6.7).
 */
static void
rfc850_year(struct civil *c, int yy, int64_t now_s)
{
    int64_t days = (now_s >= 0 ? now_s : now_s - 86399) / 86400, ny;
    int nm, nd;
    civil_from_days(days, &ny, &nm, &nd);
    int64_t limit = days_from_civil(ny + 50, nm, nd) * 86400 + (now_s - days * 86400);
    c->year = ny - (ny % 100 + 100) % 100 + yy;
    if (civil_seconds(c) > limit) {
        c->year -= 100;
    } else {
        c->year += 100;
        if (civil_seconds(c) > limit)
            c->year -= 100;
    }
}

/* httpcache_parse_date() with the wall clock given (for RFC 850 years). */
static int
parse_date_at(const char *s, size_t len, int64_t now_s, int64_t *epoch_s)
{
    struct civil c = {0};
    if (len == 29 && s[3] == ',') {
        /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
        if (name_index(s, 3, day_names, 7) < 0 || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' ||
            s[16] != ' ' || s[25] != ' ' || memcmp(s + 26, "GMT", 3) != 0)
            return -1;
        c.day = digits(s + 5, 2);
        c.month = name_index(s + 8, 3, month_names, 12) + 1;
        c.year = digits(s + 12, 4);
        if (!time_of_day(s + 17, &c))
            return -1;
    } else if (len == 24 && s[3] == ' ') {
        /* asctime-date: Sun Nov  6 08:49:37 1994 */
        if (name_index(s, 3, day_names, 7) < 0 || s[7] != ' ' || s[10] != ' ' || s[19] != ' ')
            return -1;
        c.month = name_index(s + 4, 3, month_names, 12) + 1;
        c.day = s[8] == ' ' ? digits(s + 9, 1) : digits(s + 8, 2);
        c.year = digits(s + 20, 4);
        if (!time_of_day(s + 11, &c))
            return -1;
    } else {
        /* rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT */
        const char *comma = memchr(s, ',', len);
        if (!comma)
            return -1;
        size_t wl = (size_t)(comma - s);
        if (name_index(s, wl, day_names_long, 7) < 0 || len - wl != 24)
            return -1;
        const char *p = comma;
        if (p[1] != ' ' || p[4] != '-' || p[8] != '-' || p[11] != ' ' || p[20] != ' ' ||
            memcmp(p + 21, "GMT", 3) != 0)
            return -1;
        c.day = digits(p + 2, 2);
        c.month = name_index(p + 5, 3, month_names, 12) + 1;
        int yy = digits(p + 9, 2);
        if (yy < 0 || c.month < 1 || !time_of_day(p + 12, &c))
            return -1;
        rfc850_year(&c, yy, now_s);
    }
    if (c.year < 0 || c.month < 1 || c.day < 1 || c.day > days_in_month(c.year, c.month))
        return -1;
    *epoch_s = civil_seconds(&c);
    return 0;
}

int
httpcache_parse_date(const char *s, size_t len, int64_t *epoch_s)
{
    return parse_date_at(s, len, (int64_t)time(NULL), epoch_s);
}

static void
put_digits(char *p, int64_t v, int n)
{
    while (n-- > 0) {
        p[n] = (char)('0' + v % 10);
        v /= 10;
    }
}

void
httpcache_format_date(int64_t epoch_s, char out[30])
{
    const int64_t lo = days_from_civil(0, 1, 1) * 86400;
    const int64_t hi = days_from_civil(9999, 12, 31) * 86400 + 86399;
    if (epoch_s < lo)
        epoch_s = lo;
    if (epoch_s > hi)
        epoch_s = hi;
    int64_t days = (epoch_s >= 0 ? epoch_s : epoch_s - 86399) / 86400;
    int64_t sod = epoch_s - days * 86400;
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    int wd = (int)(((days + 3) % 7 + 7) % 7); /* 1970-01-01 was a Thursday: index 3 */
    memcpy(out, "Sun, 00 Jan 0000 00:00:00 GMT", 30);
    memcpy(out, day_names[wd], 3);
    put_digits(out + 5, d, 2);
    memcpy(out + 8, month_names[m - 1], 3);
    put_digits(out + 12, y, 4);
    put_digits(out + 17, sod / 3600, 2);
    put_digits(out + 20, sod / 60 % 60, 2);
    put_digits(out + 23, sod % 60, 2);
}

/* ---- delta-seconds (RFC 9111 section 1.2.2) ----------------------------------------------- */

/* Delta-seconds too large to represent count as this (RFC 9111 section 1.2.2). */
#define DELTA_SECONDS_MAX 2147483648LL

/* 1*DIGIT as delta-seconds (capped at 2^31), or -1 when it is not one. */
static int64_t
delta_digits(const char *p, size_t len)
{
    if (len == 0)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        if (v < DELTA_SECONDS_MAX)
            v = v * 10 + (p[i] - '0');
    }
    return v < DELTA_SECONDS_MAX ? v : DELTA_SECONDS_MAX;
}

/* A directive's delta-seconds argument, as a token or a quoted-string (section 5.2), or -1. */
static int64_t
delta_seconds(const char *p, size_t len)
{
    if (len >= 2 && p[0] == '"' && p[len - 1] == '"') {
        p++;
        len -= 2;
    }
    return delta_digits(p, len);
}

/* ---- the directives of an answer --------------------------------------------------------- */

#define ABSENT (-1)  /* a delta-seconds directive not given */
#define INVALID (-2) /* given with an argument that is not a delta-seconds */

struct directives {
    bool no_store, private_, no_cache, no_cache_names, must_revalidate;
    bool public_, must_revalidate_only;  /* public; must-revalidate itself (not proxy-) */
    int64_t s_maxage, max_age, swr, sie; /* seconds, ABSENT or INVALID */
    bool last_wins;                      /* a Dictionary: a later member replaces an earlier one */
};

/* A directive's argument, read from Cache-Control or from a Dictionary. */
enum arg_kind {
    ARG_NONE,  /* no argument (a Dictionary's Boolean true) */
    ARG_FALSE, /* a Dictionary's Boolean false: as if not given */
    ARG_DELTA, /* a valid delta-seconds */
    ARG_OTHER, /* anything else */
};

static void
set_flag(const struct directives *d, bool *flag, bool on)
{
    if (d->last_wins)
        *flag = on;
    else
        *flag |= on;
}

static void
set_delta(const struct directives *d, int64_t *dst, enum arg_kind k, int64_t delta)
{
    if (d->last_wins || *dst == ABSENT)
        *dst = k == ARG_DELTA ? delta : INVALID;
}

static void
directive(struct directives *d, const char *name, size_t len, enum arg_kind k, int64_t delta)
{
    struct http_str n = {name, len};
    bool on = k != ARG_FALSE;
    if (name_is(&n, "no-store")) {
        set_flag(d, &d->no_store, on);
    } else if (name_is(&n, "private")) {
        set_flag(d, &d->private_, on);
    } else if (name_is(&n, "no-cache")) {
        set_flag(d, &d->no_cache, k == ARG_NONE);
        set_flag(d, &d->no_cache_names, k == ARG_DELTA || k == ARG_OTHER);
    } else if (name_is(&n, "must-revalidate") || name_is(&n, "proxy-revalidate")) {
        set_flag(d, &d->must_revalidate, on);
        if (name_is(&n, "must-revalidate"))
            set_flag(d, &d->must_revalidate_only, on);
    } else if (name_is(&n, "public")) {
        set_flag(d, &d->public_, on);
    } else if (name_is(&n, "s-maxage")) {
        set_delta(d, &d->s_maxage, k, delta);
    } else if (name_is(&n, "max-age")) {
        set_delta(d, &d->max_age, k, delta);
    } else if (name_is(&n, "stale-while-revalidate")) {
        set_delta(d, &d->swr, k, delta);
    } else if (name_is(&n, "stale-if-error")) {
        set_delta(d, &d->sie, k, delta);
    }
}

static void
cc_directive(const char *el, size_t len, void *ctx)
{
    struct http_str name, val;
    bool has_val;
    split_directive(el, len, &name, &val, &has_val);
    int64_t delta = has_val ? delta_seconds(val.p, val.len) : -1;
    directive(ctx, name.p, name.len,
              !has_val     ? ARG_NONE
              : delta >= 0 ? ARG_DELTA
                           : ARG_OTHER,
              delta);
}

static void
sf_directive(const struct sf_member *m, void *ctx)
{
    enum arg_kind k = ARG_OTHER;
    int64_t delta = -1;
    if (m->type == SF_BOOLEAN) {
        k = m->num ? ARG_NONE : ARG_FALSE;
    } else if (m->type == SF_INTEGER && m->num >= 0) {
        k = ARG_DELTA;
        delta = m->num < DELTA_SECONDS_MAX ? m->num : DELTA_SECONDS_MAX;
    }
    directive(ctx, m->key, m->key_len, k, delta);
}

static void
directives_init(struct directives *d, bool last_wins)
{
    *d = (struct directives){.s_maxage = ABSENT,
                             .max_age = ABSENT,
                             .swr = ABSENT,
                             .sie = ABSENT,
                             .last_wins = last_wins};
}

/*
 * Reads the directives of targeted field `name` (RFC 9213 section 2.2): its
 * lines joined with ", " as one Dictionary. Returns false, *d untouched,
 * when the answer does not carry it or it is not a valid, non-empty one.
 */
static bool
targeted_directives(const struct httpcache_answer *a, const char *name, struct directives *d)
{
    struct sbuf joined = {0};
    const struct http_str *one = NULL;
    size_t lines = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (!name_is(&a->f[i].name, name))
            continue;
        if (lines == 1)
            sbuf_add(&joined, one->p, one->len);
        if (lines >= 1) {
            sbuf_add(&joined, ", ", 2);
            sbuf_add(&joined, a->f[i].value.p, a->f[i].value.len);
        }
        one = &a->f[i].value;
        lines++;
    }
    if (lines == 0)
        return false;
    struct directives t;
    directives_init(&t, true);
    long members = lines == 1 ? sf_parse_dictionary(one->p, one->len, sf_directive, &t)
                              : sf_parse_dictionary(joined.p, joined.len, sf_directive, &t);
    sbuf_free(&joined);
    if (members <= 0)
        return false;
    *d = t;
    return true;
}

/* ---- httpcache_judge ----------------------------------------------------------------------- */

struct vary {
    char *out;
    size_t cap, len;
    bool star, overflow, bad;
};

/* tchar of RFC 9110 section 5.6.2: a field name is a token. */
static bool
is_tchar(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void
vary_name(const char *el, size_t len, void *ctx)
{
    struct vary *v = ctx;
    if (len == 1 && el[0] == '*') {
        v->star = true;
        return;
    }
    /* Not a field name: what it varies on cannot be matched (RFC 9110 section 12.5.5). */
    for (size_t i = 0; i < len; i++) {
        if (!is_tchar(el[i])) {
            v->bad = true;
            return;
        }
    }
    /* Skip a name already listed (case-insensitively). */
    for (size_t i = 0; i < v->len;) {
        size_t j = i;
        while (j < v->len && v->out[j] != ',')
            j++;
        if (j - i == len && strncasecmp(v->out + i, el, len) == 0)
            return;
        i = j + 1;
    }
    if (v->len + len + 2 > v->cap) {
        v->overflow = true;
        return;
    }
    if (v->len)
        v->out[v->len++] = ',';
    for (size_t i = 0; i < len; i++) {
        char c = el[i];
        v->out[v->len++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    v->out[v->len] = '\0';
}

static const int storable_status[] = {200, 203, 204, 300, 301, 308};

/* Heuristically cacheable statuses (RFC 9110 section 15.1). */
static const int heuristic_status[] = {200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501};

static bool
status_in(int status, const int *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (status == list[i])
            return true;
    return false;
}

/* The value of the first field named `name`, or NULL. */
static const struct http_str *
field(const struct httpcache_answer *a, const char *name)
{
    for (size_t i = 0; i < a->n; i++)
        if (name_is(&a->f[i].name, name))
            return &a->f[i].value;
    return NULL;
}

/* The first field `name` as an HTTP-date in ms since the epoch; false when absent or invalid. */
static bool
date_field_ms(const struct httpcache_answer *a, const char *name, int64_t *ms)
{
    const struct http_str *v = field(a, name);
    int64_t s;
    if (!v || httpcache_parse_date(v->p, v->len, &s) < 0)
        return false;
    *ms = s * 1000;
    return true;
}

/* entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE (RFC 9110 section 8.8.3). */
static bool
is_entity_tag(const char *p, size_t len)
{
    if (len >= 2 && p[0] == 'W' && p[1] == '/') {
        p += 2;
        len -= 2;
    }
    if (len < 2 || p[0] != '"' || p[len - 1] != '"')
        return false;
    for (size_t i = 1; i + 1 < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x21 || c == '"' || c == 0x7f)
            return false;
    }
    return true;
}

static void
first_element(const char *el, size_t len, void *ctx)
{
    struct http_str *first = ctx;
    if (!first->p)
        *first = (struct http_str){el, len};
}

/* Age's value in seconds: its first member when it is a delta-seconds, else 0 (section 5.1). */
static int64_t
age_value(const struct httpcache_answer *a)
{
    const struct http_str *v = field(a, "age");
    struct http_str first = {NULL, 0};
    if (v)
        each_element(v->p, v->len, false, first_element, &first);
    int64_t age = first.p ? delta_digits(first.p, first.len) : -1;
    return age < 0 ? 0 : age;
}

/* A clock reading as a signed count, far enough from the limits to subtract dates from it. */
static int64_t
clock_ms(uint64_t ms)
{
    return ms > (uint64_t)INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)ms;
}

static void
refuse(struct httpcache_verdict *v, const char *why)
{
    memset(v, 0, sizeof(*v));
    v->why = why;
    v->swr_ms = v->sie_ms = -1;
}

void
httpcache_judge(const struct httpcache_answer *a, const struct httpcache_policy *p,
                struct httpcache_verdict *v)
{
    refuse(v, NULL);
    if (!status_in(a->status, storable_status, sizeof(storable_status) / sizeof(int))) {
        v->why = "status";
        return;
    }
    if (a->body_len > (p->max_body ? p->max_body : HTTPCACHE_MAX_BODY)) {
        v->why = "body too large";
        return;
    }
    struct vary vy = {.out = v->vary_names, .cap = sizeof(v->vary_names)};
    for (size_t i = 0; i < a->n; i++) {
        if (name_is(&a->f[i].name, "set-cookie")) {
            refuse(v, "set-cookie");
            return;
        }
        if (name_is(&a->f[i].name, "vary"))
            each_element(a->f[i].value.p, a->f[i].value.len, true, vary_name, &vy);
    }

    struct directives d;
    bool targeted = false;
    for (size_t i = 0; p->targeted && i < p->ntargeted && !targeted; i++)
        targeted = targeted_directives(a, p->targeted[i], &d);
    if (!targeted) {
        directives_init(&d, false);
        for (size_t i = 0; i < a->n; i++)
            if (name_is(&a->f[i].name, "cache-control"))
                each_element(a->f[i].value.p, a->f[i].value.len, true, cc_directive, &d);
    }
    const char *why = d.no_store                         ? "no-store"
                      : d.private_                       ? "private"
                      : d.no_cache_names                 ? "no-cache"
                      : vy.star || vy.bad || vy.overflow ? "vary"
                                                         : NULL;
    if (why) {
        refuse(v, why);
        return;
    }

    /* The times of section 4.2.3, in ms of the store's clock. */
    int64_t response_ms = clock_ms(a->response_ms), request_ms = clock_ms(a->request_ms);
    int64_t date_ms;
    if (!date_field_ms(a, "date", &date_ms))
        date_ms = response_ms;
    /* Date has a resolution of one second: the response time is compared at that resolution
     * too, or every answer would look up to 999 ms old. */
    int64_t response_s_ms = response_ms - response_ms % 1000;
    int64_t apparent_age = response_s_ms > date_ms ? response_s_ms - date_ms : 0;
    int64_t response_delay = response_ms > request_ms ? response_ms - request_ms : 0;
    int64_t corrected_age_value = age_value(a) * 1000 + response_delay;
    int64_t initial_age = apparent_age > corrected_age_value ? apparent_age : corrected_age_value;

    /* The lifetime the answer gives (section 4.2.1), -1 when none. */
    int64_t explicit_ms = -1, expires_ms;
    int64_t delta = d.s_maxage != ABSENT ? d.s_maxage : d.max_age;
    if (delta == INVALID)
        explicit_ms = 0;
    else if (delta >= 0)
        explicit_ms = delta * 1000;
    else if (!targeted && field(a, "expires"))
        explicit_ms = !date_field_ms(a, "expires", &expires_ms) ? 0
                      : expires_ms > date_ms                    ? expires_ms - date_ms
                                                                : 0;

    uint64_t lifetime = 0;
    int64_t last_modified_ms;
    if (p->ttl_origin) {
        if (explicit_ms >= 0) {
            lifetime = (uint64_t)explicit_ms;
        } else if (status_in(a->status, heuristic_status, sizeof(heuristic_status) / sizeof(int)) &&
                   date_field_ms(a, "last-modified", &last_modified_ms) &&
                   last_modified_ms <= date_ms) {
            /* Section 4.2.2: a fraction of the time since the last modification. */
            int64_t h = (date_ms - last_modified_ms) / 10;
            lifetime = (uint64_t)(h < 86400000 ? h : 86400000);
            v->heuristic = true;
        }
    } else if (p->override || explicit_ms < 0 || (uint64_t)explicit_ms > p->ttl_ms) {
        lifetime = p->ttl_ms;
    } else {
        lifetime = (uint64_t)explicit_ms;
    }

    const struct http_str *etag = field(a, "etag");
    int64_t unused;
    v->has_validator =
        (etag && is_entity_tag(etag->p, etag->len)) || date_field_ms(a, "last-modified", &unused);
    bool usable = !d.no_cache && lifetime > (uint64_t)initial_age;
    if (!usable && !v->has_validator) {
        refuse(v, d.no_cache ? "no-cache" : "no freshness");
        return;
    }
    v->storable = true;
    v->lifetime_ms = lifetime;
    v->initial_age_ms = (uint64_t)initial_age;
    v->no_cache = d.no_cache;
    v->must_revalidate = d.must_revalidate || d.no_cache || d.s_maxage != ABSENT;
    v->authorized = d.public_ || d.must_revalidate_only || d.s_maxage >= 0;
    v->swr_ms = d.swr >= 0 ? d.swr * 1000 : -1;
    v->sie_ms = d.sie >= 0 ? d.sie * 1000 : -1;
    v->vary = vy.len > 0;
}

/* ---- request directives ------------------------------------------------------------------ */

static void
request_directive(const char *el, size_t len, void *ctx)
{
    struct httpcache_request *r = ctx;
    struct http_str name, val;
    bool has_val;
    split_directive(el, len, &name, &val, &has_val);
    int64_t delta = has_val ? delta_seconds(val.p, val.len) : -1;
    if (name_is(&name, "no-cache")) {
        r->no_cache = true;
    } else if (name_is(&name, "no-store")) {
        r->no_store = true;
    } else if (name_is(&name, "only-if-cached")) {
        r->only_if_cached = true;
    } else if (name_is(&name, "max-age")) {
        if (r->max_age < 0)
            r->max_age = delta >= 0 ? delta * 1000 : 0;
    } else if (name_is(&name, "max-stale")) {
        if (r->max_stale < 0 && !has_val)
            r->max_stale = INT64_MAX;
        else if (r->max_stale < 0 && delta >= 0)
            r->max_stale = delta * 1000;
    } else if (name_is(&name, "min-fresh")) {
        if (r->min_fresh < 0 && delta >= 0)
            r->min_fresh = delta * 1000;
    }
}

static void
pragma_directive(const char *el, size_t len, void *ctx)
{
    struct http_str name, val;
    bool has_val;
    split_directive(el, len, &name, &val, &has_val);
    if (name_is(&name, "no-cache"))
        *(bool *)ctx = true;
}

void
httpcache_request_directives(const struct http_request *h, struct httpcache_request *r)
{
    *r = (struct httpcache_request){.max_age = -1, .max_stale = -1, .min_fresh = -1};
    bool cc = false, pragma_no_cache = false;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        if (name_is(&f->name, "cache-control")) {
            cc = true;
            each_element(f->value.p, f->value.len, true, request_directive, r);
        } else if (name_is(&f->name, "pragma")) {
            each_element(f->value.p, f->value.len, true, pragma_directive, &pragma_no_cache);
        }
    }
    if (!cc && pragma_no_cache)
        r->no_cache = true;
}

bool
httpcache_has_credentials(const struct http_request *h)
{
    return http_header_get(h, "authorization") != NULL || http_header_get(h, "cookie") != NULL;
}

/* The opaque part of an entity tag: without W/ and with its quotes. */
static const char *
etag_opaque(const char *p, size_t *len)
{
    if (*len >= 2 && p[0] == 'W' && p[1] == '/') {
        p += 2;
        *len -= 2;
    }
    return p;
}

struct inm {
    const char *etag;
    size_t etag_len;
    bool match;
};

static void
inm_element(const char *el, size_t len, void *ctx)
{
    struct inm *m = ctx;
    if (len == 1 && el[0] == '*') {
        m->match = true;
        return;
    }
    el = etag_opaque(el, &len);
    if (len == m->etag_len && memcmp(el, m->etag, len) == 0)
        m->match = true;
}

bool
httpcache_etag_matches(const char *inm, size_t len, const char *etag)
{
    if (!etag)
        return false;
    struct inm m = {.etag_len = strlen(etag)};
    m.etag = etag_opaque(etag, &m.etag_len);
    each_element(inm, len, false, inm_element, &m);
    return m.match;
}

void
httpcache_etag_of(const char *body, size_t len, char out[19])
{
    uint64_t h = util_hash64(body, len);
    snprintf(out, 19, "\"%016llx\"", (unsigned long long)h);
}

/* Appends an escaped value; returns the new length or -1 when full. */
static long
put_escaped(char *out, size_t cap, size_t o, const char *v, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        bool esc = c < 0x21 || c > 0x7e || c == '%' || c == ':' || c == '{' || c == '}';
        if (o + (esc ? 3 : 1) >= cap)
            return -1;
        if (esc) {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    return (long)o;
}

long
httpcache_vary_key(const char *primary, size_t plen, const char *names,
                   const struct http_request *h, char *out, size_t cap)
{
    if (plen + 2 > cap)
        return -1;
    memcpy(out, primary, plen);
    size_t o = plen;
    out[o++] = '\x1f';
    const char *p = names;
    bool first = true;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t nlen = comma ? (size_t)(comma - p) : strlen(p);
        if (!first) {
            if (o + 2 > cap)
                return -1;
            out[o++] = ':';
        }
        first = false;
        /* Every line of the field, combined as the origin sees them (RFC 9110 section 5.3). */
        bool found = false;
        for (size_t i = 0; i < h->nheaders; i++) {
            if (!name_is_n(&h->headers[i].name, p, nlen))
                continue;
            long r = found ? put_escaped(out, cap, o, ", ", 2) : (long)o;
            if (r >= 0)
                r = put_escaped(out, cap, (size_t)r, h->headers[i].value.p,
                                h->headers[i].value.len);
            if (r < 0)
                return -1;
            o = (size_t)r;
            found = true;
        }
        if (!found) {
            if (o + 3 > cap)
                return -1;
            out[o++] = '%';
            out[o++] = '-';
        }
        p += nlen + (comma ? 1 : 0);
    }
    out[o] = '\0';
    return (long)o;
}

static const char *const not_replayed[] = {
    "content-type",
    "content-length",
    "date",
    "age",
    "etag",
    "x-cache",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-connection",
};

void
httpcache_replay_fields(const struct http_header *f, size_t n, struct sbuf *out)
{
    for (size_t i = 0; i < n; i++) {
        bool skip = false;
        for (size_t j = 0; j < sizeof(not_replayed) / sizeof(not_replayed[0]) && !skip; j++)
            skip = name_is(&f[i].name, not_replayed[j]);
        if (skip)
            continue;
        sbuf_add(out, f[i].name.p, f[i].name.len);
        sbuf_add(out, ": ", 2);
        sbuf_add(out, f[i].value.p, f[i].value.len);
        sbuf_add(out, "\r\n", 2);
    }
}

/* ---- conditionals and 304 updates ------------------------------------------------------- */

struct inm_star {
    bool star;
};

static void
star_element(const char *el, size_t len, void *ctx)
{
    if (len == 1 && el[0] == '*')
        ((struct inm_star *)ctx)->star = true;
}

bool
httpcache_not_modified(const struct http_request *h, const char *etag, const char *last_modified)
{
    if (h->method != HTTP_GET && h->method != HTTP_HEAD)
        return false;
    bool inm = false, match = false;
    const struct http_str *ims = NULL;
    size_t nims = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct http_header *f = &h->headers[i];
        if (name_is(&f->name, "if-none-match")) {
            struct inm_star s = {false};
            each_element(f->value.p, f->value.len, false, star_element, &s);
            inm = true;
            match |= s.star || httpcache_etag_matches(f->value.p, f->value.len, etag);
        } else if (name_is(&f->name, "if-modified-since") && nims++ == 0) {
            ims = &f->value;
        }
    }
    if (inm)
        return match;
    /* Section 13.1.3: ignored unless one HTTP-date and a modification date to compare. */
    int64_t since, modified;
    if (nims != 1 || !last_modified || httpcache_parse_date(ims->p, ims->len, &since) < 0 ||
        httpcache_parse_date(last_modified, strlen(last_modified), &modified) < 0)
        return false;
    return modified <= since;
}

/* Whether a field of the 304 goes into the stored fields: replayed, and not Set-Cookie. */
static bool
updates(const struct http_str *name)
{
    if (name_is(name, "set-cookie"))
        return false;
    for (size_t j = 0; j < sizeof(not_replayed) / sizeof(not_replayed[0]); j++)
        if (name_is(name, not_replayed[j]))
            return false;
    return true;
}

void
httpcache_update_fields(const char *stored, size_t len, const struct http_header *f, size_t n,
                        struct sbuf *out)
{
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(stored + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - stored) + 1 : len;
        const char *line = stored + i;
        size_t llen = end - i;
        const char *colon = memchr(line, ':', llen);
        bool replaced = false;
        if (colon) {
            struct http_str name = {line, (size_t)(colon - line)};
            for (size_t j = 0; j < n && !replaced; j++)
                replaced = name_is_n(&f[j].name, name.p, name.len) && updates(&f[j].name);
        }
        if (!replaced) {
            sbuf_add(out, line, llen);
            if (!nl)
                sbuf_add(out, "\r\n", 2);
        }
        i = end;
    }
    for (size_t j = 0; j < n; j++) {
        if (!updates(&f[j].name))
            continue;
        sbuf_add(out, f[j].name.p, f[j].name.len);
        sbuf_add(out, ": ", 2);
        sbuf_add(out, f[j].value.p, f[j].value.len);
        sbuf_add(out, "\r\n", 2);
    }
}

long
httpcache_field_in_lines(const char *lines, size_t len, const char *name, char *out, size_t cap)
{
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(lines + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - lines) + 1 : len;
        const char *line = lines + i;
        size_t llen = end - i;
        i = end;
        if (llen && line[llen - 1] == '\n')
            llen--;
        if (llen && line[llen - 1] == '\r')
            llen--;
        const char *colon = memchr(line, ':', llen);
        if (!colon)
            continue;
        struct http_str n = {line, (size_t)(colon - line)};
        if (!name_is(&n, name))
            continue;
        size_t vlen = llen - n.len - 1;
        const char *v = trim(colon + 1, &vlen);
        if (vlen + 1 > cap)
            return -1;
        memcpy(out, v, vlen);
        out[vlen] = '\0';
        return (long)vlen;
    }
    return -1;
}
