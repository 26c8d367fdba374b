/* httpcache.h - HTTP caching rules (RFC 9111) for answers of upstream apps. */
#ifndef SLUICE_HTTPCACHE_H
#define SLUICE_HTTPCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http_parse.h"

struct sbuf;

/* Largest body the cache keeps; larger answers are passed on and not stored. */
#define HTTPCACHE_MAX_BODY (1024u * 1024u)

/* ---- freshness of an origin's answer (RFC 9111 section 4.2, RFC 5861, RFC 9213) ---------- */

/* How an endpoint's policy bounds what the origin says. */
struct httpcache_policy {
    uint64_t ttl_ms;             /* the policy's TTL (ttl = "5m"); unused when ttl_origin */
    bool ttl_origin;             /* ttl = "origin": freshness only from the answer (explicit, or
                                    heuristic where section 4.2.2 allows it); none: 0 */
    bool override;               /* override = true: ttl_ms is the lifetime whatever the answer says
                                    (Cache-Control, Expires, CDN-Cache-Control are not read for
                                    freshness; no-store, private, Set-Cookie still forbid storing, and
                                    the other verdict fields are still read); ignored with ttl_origin */
    const char *const *targeted; /* targeted fields in precedence order (RFC 9213), e.g.
                                    {"CDN-Cache-Control"}; lowercased; NULL: none */
    size_t ntargeted;
    size_t max_body; /* a larger body is not stored; 0: HTTPCACHE_MAX_BODY */
};

/* An origin's answer as the cache saw it arrive. Times are the store clock's, in ms. */
struct httpcache_answer {
    int status;
    const struct http_header *f; /* its header fields, n of them */
    size_t n;
    size_t body_len;
    uint64_t request_ms;  /* request_time: when the request was sent (section 4.2.3) */
    uint64_t response_ms; /* response_time: when the answer was received */
};

/* What the rules say about an origin's answer to a GET or HEAD. */
struct httpcache_verdict {
    bool storable;
    const char *why; /* when not: a short reason (static string), for logs and tests */

    /* When storable: */
    uint64_t lifetime_ms;    /* freshness_lifetime (section 4.2.1), after the policy */
    uint64_t initial_age_ms; /* corrected_initial_age (section 4.2.3): the answer's age when it
                                arrived; fresh for lifetime_ms - initial_age_ms more (0 when
                                that is negative: stored stale, reusable only after validation) */
    bool heuristic;          /* the lifetime is heuristic (section 4.2.2) */
    bool no_cache;           /* response no-cache (no field names): every reuse is validated */
    bool must_revalidate;    /* must-revalidate, proxy-revalidate, no-cache, or s-maxage (which
                                implies proxy-revalidate, section 5.2.2.10): once stale it is
                                never served without validation (section 5.2.2.2), whatever
                                the policy's or the answer's stale windows say */
    int64_t swr_ms;          /* the answer's stale-while-revalidate (RFC 5861), -1 absent or
                                invalid */
    int64_t sie_ms;          /* the answer's stale-if-error (RFC 5861), -1 absent or invalid */
    bool has_validator;      /* the answer has a valid ETag (an entity-tag) or a Last-Modified
                                that is an HTTP-date: it can be revalidated */
    bool authorized;         /* public, must-revalidate or s-maxage: a shared cache may reuse it
                                for a request with Authorization (RFC 9111 section 3.5) */
    bool vary;               /* storable under a secondary key: vary_names lists the fields */
    char vary_names[256];    /* lowercased field names of Vary, comma-separated, no spaces */
};

/*
 * Judges an answer to a cacheable request under policy p. Not storable, with
 * `why` in this order: a status other than 200, 203, 204, 300, 301 and 308
 * ("status": errors are never cached); a body larger than p->max_body
 * ("body too large"); Set-Cookie ("set-cookie"); no-store ("no-store");
 * private, also with field names ("private"); no-cache with field names
 * ("no-cache": the fields are not stripped, the answer is not kept); Vary: *,
 * a Vary element that is not a field name, or a Vary list too long to key
 * ("vary"); no usable freshness (fresh for
 * 0 ms after its initial age, or no-cache) and no validator: nothing could
 * ever reuse it ("no-cache" when no-cache, else "no freshness"). When not
 * storable, the other fields are 0 and swr_ms and sie_ms -1.
 *
 * The directives come from the first targeted field present with a valid,
 * non-empty Structured Fields Dictionary (RFC 9213 section 2.2; a key given
 * twice keeps its last value, RFC 8941 section 4.2.2), which also hides
 * Expires; else from Cache-Control (a directive given twice keeps its first
 * value, section 4.2.1). Lifetime, in precedence: s-maxage, max-age, Expires
 * minus Date (Date absent or invalid: response_ms), heuristic (10% of Date
 * minus Last-Modified, at most 1 day, only with ttl_origin, a heuristically
 * cacheable status and no explicit freshness); then bounded by the policy:
 * with ttl_origin as it is; with a TTL, the TTL where the answer gives none
 * and the smaller of the two otherwise; with override, the TTL. Invalid
 * freshness (a malformed or negative max-age or s-maxage, an Expires that is
 * not an HTTP-date, "0" among them) makes the answer stale on arrival
 * (section 4.2.1, 5.3); a delta-seconds past 2^31 is 2^31 (section 1.2.2).
 * Quoted arguments are accepted in Cache-Control (section 5.2); in a
 * targeted field a delta-seconds must be an Integer (RFC 9213 section 2.1).
 * Age (its first member; ignored when invalid, section 5.1), Date and the
 * two times give the corrected initial age (section 4.2.3).
 */
void httpcache_judge(const struct httpcache_answer *a, const struct httpcache_policy *p,
                     struct httpcache_verdict *v);

/* ---- request directives (RFC 9111 section 5.2.1) -------------------------------------------- */

struct httpcache_request {
    bool no_cache;       /* no-cache, or Pragma: no-cache without Cache-Control (section 5.4) */
    bool no_store;       /* no-store */
    bool only_if_cached; /* only-if-cached: a stored answer or 504 */
    int64_t max_age;     /* ms, -1 absent; max-age=0 is a validation every time */
    int64_t max_stale;   /* ms, -1 absent; INT64_MAX for max-stale without a value */
    int64_t min_fresh;   /* ms, -1 absent */
};

/*
 * Reads the request's Cache-Control (and Pragma) directives into *r. Names
 * are compared ignoring case; a directive given twice keeps its first value;
 * quoted arguments are accepted; a delta-seconds past 2^31 is 2^31. An
 * invalid argument is read the strict way: max-age as 0, max-stale and
 * min-fresh as absent.
 */
void httpcache_request_directives(const struct http_request *h, struct httpcache_request *r);

/* ---- dates and conditionals ----------------------------------------------------------------- */

/*
 * Parses an HTTP-date (RFC 9110 section 5.6.7: IMF-fixdate, and the obsolete
 * RFC 850 and asctime forms) into seconds since the epoch. Strict: exactly
 * the grammar (names in their case, no whitespace around or extra), a day
 * that exists in its month and year, hours 00-23, minutes 00-59, seconds
 * 00-60 (60: a leap second, read as the next minute's 00). The day name is
 * not checked against the date. An RFC 850 two-digit year more than 50 years
 * in the future by the wall clock is in the previous century. Returns 0, or
 * -1 when it is not one (*epoch_s untouched).
 */
int httpcache_parse_date(const char *s, size_t len, int64_t *epoch_s);

/* Formats seconds since the epoch as an IMF-fixdate (29 bytes and a NUL); times before year
 * 0000 or after 9999 are written as the first or last second of that range. */
void httpcache_format_date(int64_t epoch_s, char out[30]);

/*
 * Whether a stored answer with entity tag `etag` (or NULL) and Last-Modified
 * `last_modified` (an HTTP-date, or NULL) satisfies the conditionals of a GET
 * or HEAD request, so that 304 is the answer (RFC 9110 section 13.2.2): when
 * If-None-Match is present (on one line or more) only it is evaluated (weak
 * comparison; "*" matches any stored answer); else If-Modified-Since, when
 * it is one HTTP-date (a date in the future counts as it is) and the answer
 * has a Last-Modified that parses and is no later than it. False for other
 * methods. If-Match and If-Unmodified-Since (412) are the caller's.
 */
bool httpcache_not_modified(const struct http_request *h, const char *etag,
                            const char *last_modified);

/*
 * The stored header lines after a 304 (RFC 9111 section 3.2, 4.3.4): each
 * line of stored[0..len) ("Name: value\r\n") whose name none of the 304's
 * replayed fields carries, then the 304's own fields f[0..n) as
 * httpcache_replay_fields() would replay them (Content-Length and the other
 * fields a replay never carries are left out, and neither replace nor
 * remove a stored line), but Set-Cookie, which is never stored. A last
 * stored line without its CRLF gets one. Appended to out.
 */
void httpcache_update_fields(const char *stored, size_t len, const struct http_header *f, size_t n,
                             struct sbuf *out);

/*
 * The value of field `name` (lowercase; names in the lines in any case) in
 * header lines ("Name: value\r\n"): that of its first line, without the
 * whitespace around it, into out (NUL-terminated, cap bytes). Returns its
 * length, or -1 when the lines do not carry it or it does not fit.
 */
long httpcache_field_in_lines(const char *lines, size_t len, const char *name, char *out,
                              size_t cap);

/* Whether the request carries credentials (Authorization or Cookie). */
bool httpcache_has_credentials(const struct http_request *h);

/*
 * Whether an If-None-Match value (a list of entity tags, or "*") matches
 * etag by the weak comparison of RFC 9110 section 13.1.2.
 */
bool httpcache_etag_matches(const char *inm, size_t len, const char *etag);

/* A strong entity tag computed from the body: a quoted 16-digit hex hash, NUL-terminated. */
void httpcache_etag_of(const char *body, size_t len, char out[19]);

/*
 * The secondary key of an answer that varies on the comma-separated field
 * names `names`: primary, then 0x1f, then for each name its value in the
 * request (the values of all its lines joined with ", ", escaped as template
 * values are: '%', ':', '{', '}', bytes below 0x21 and above 0x7e as %XX;
 * absent as "%-"), separated by ':'. Returns the length written
 * (NUL-terminated), or -1 when it does not fit in cap.
 */
long httpcache_vary_key(const char *primary, size_t plen, const char *names,
                        const struct http_request *h, char *out, size_t cap);

/*
 * Appends the fields an answer is replayed with, as "Name: value\r\n"
 * lines: every field of f but those the gateway writes itself or that do not
 * belong to a replay (Content-Type, Content-Length, Date, Age, ETag, X-Cache,
 * the rate-limit fields, hop-by-hop fields). Set-Cookie is kept: an answer
 * carrying it is passed to its caller but never stored.
 */
void httpcache_replay_fields(const struct http_header *f, size_t n, struct sbuf *out);

#endif
