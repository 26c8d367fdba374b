"""HTTP caching conformance: sluice as a plain shared cache in front of any app.

Written from RFC 9111 (HTTP Caching), RFC 9110 section 13 (conditional requests),
RFC 5861 (stale-while-revalidate, stale-if-error) and RFC 9213 (CDN-Cache-Control).
Each test's name cites the section it checks. The gateway under test is

    upstream "origin" { url = "http://127.0.0.1:PORT" }
    endpoint "* /*" { upstream = "origin", cache = { ttl = "origin" } }

(plus a few variants: a policy stale_if_error, a policy TTL that caps, one that
overrides). The origin is tests/e2e/origin.py: it counts and logs what reaches it
per path, and answers what each test configures (Cache-Control, ETag, Date,
Expires, 304s to conditional requests). Every test uses paths of its own.

Answers from the cache say X-Cache: HIT, fetched ones MISS, a stale entry validated
by a 304 REVALIDATED, a stale one served under stale-while-revalidate or
stale-if-error STALE, and requests that may not use the cache BYPASS.

Waiting for an entry to go stale takes real time: the classes that need it store
their entries with 1-second lifetimes in setUpClass and wait once for all of them.
Most staleness is produced at once instead (max-age=0, an Age past the lifetime, a
Date past the lifetime), which RFC 9111 treats the same.

SLUICE_RFC_LEGACY=1 runs the suite against a gateway without "* /*" and
ttl = "origin" (a `GET /*` route with ttl = "1h"), to debug the harness.
"""

import email.utils
import os
import time

from test_proxy import ProxyCase, is_problem, raw, req, wait_until

LEGACY = os.environ.get("SLUICE_RFC_LEGACY") == "1"

# A lifetime that elapses during a test run, and how long to wait for it.
SHORT = 1
WAIT = SHORT + 0.3
TIMEOUT = 5  # no request of the suite needs longer


def policy_text(ttl="origin", override=False, stale_if_error=None, stale_while_revalidate=None):
    """The policy under test: one route for every method and path, cached by HTTP's rules.
    LEGACY: GET routes of the suite's two- and three-segment paths, keyed by the path (a
    `GET /*` route's key would not hold the path), without the query."""
    if LEGACY and ttl == "origin":
        ttl = "1h"
    cache = ['ttl = "%s"' % ttl]
    if override and not LEGACY:
        cache.append("override = true")
    if stale_if_error:
        cache.append('stale_if_error = "%s"' % stale_if_error)
    if stale_while_revalidate:
        cache.append('stale_while_revalidate = "%s"' % stale_while_revalidate)
    text = 'upstream "origin" { url = "@ORIGIN@" }\n'
    if not LEGACY:
        return text + 'endpoint "* /*" { upstream = "origin", cache = { %s } }\n' % ", ".join(cache)
    for route, key in (("GET /{a}/{b}", "r:{path.a}:{path.b}"),
                       ("GET /{a}/{b}/{c}", "r:{path.a}:{path.b}:{path.c}")):
        text += 'endpoint "%s" { upstream = "origin", cache = { %s } }\n' % (
            route, ", ".join(cache + ['key = "%s"' % key]))
    return text


def httpdate(t):
    return email.utils.formatdate(t, usegmt=True)


def cc(value, **kw):
    """An origin configuration answering Cache-Control: value (plus other header fields in
    headers=..., and any other origin.py key)."""
    headers = dict(kw.pop("headers", {}))
    if value is not None:
        headers["Cache-Control"] = value
    return dict(kw, headers=headers)


def age_of(r):
    v = r.headers.get("age")
    return int(v) if v is not None and v.isdigit() else None


class RfcCase(ProxyCase):
    """One origin, and a sluice per entry of SERVERS (attribute name: policy_text options);
    `s` is the plain shared cache above."""

    SERVERS = {"s": {}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for attr, opts in cls.SERVERS.items():
            setattr(cls, attr, cls.start(cls.policy(policy_text(**opts))))

    # -- requests ----------------------------------------------------------

    def path(self, suffix=""):
        """A path of this test's own."""
        return "/%s/%s%s" % (type(self).__name__.lower(), self._testMethodName, suffix)

    def get(self, path, headers=None, server=None, method="GET", body=None):
        return req((server or self.s).port, method, path, headers, body, timeout=TIMEOUT)

    def head(self, path, headers=None, server=None):
        return self.get(path, headers, server, method="HEAD")

    def sent(self, path, i=-1):
        """The request headers the origin received on path (the last request by default)."""
        return self.origin.log(path)[i]["h"]

    # -- assertions --------------------------------------------------------

    def assertStored(self, path, config=None, headers=None, server=None):
        """The answer is fetched once and then reused: MISS, HIT, HIT, one origin request."""
        if config is not None:
            self.origin.config(path, **config)
        rs = [self.get(path, headers, server) for _ in range(3)]
        self.assertEqual([r.cache for r in rs], ["MISS", "HIT", "HIT"], rs)
        self.assertEqual(self.origin.count(path), 1, rs)
        self.assertEqual({r.body for r in rs}, {rs[0].body}, "a hit replays the stored body")
        self.assertEqual({r.status for r in rs}, {rs[0].status})
        return rs

    def assertNotStored(self, path, config=None, n=3, headers=None, server=None, status=200):
        """Every request reaches the origin and every answer is the origin's own."""
        if config is not None:
            self.origin.config(path, **config)
        rs = [self.get(path, headers, server) for _ in range(n)]
        self.assertEqual([r.status for r in rs], [status] * n, rs)
        for r in rs:
            self.assertNotIn(r.cache, ("HIT", "STALE", "REVALIDATED"), rs)
        self.assertEqual(self.origin.count(path), n, rs)
        return rs

    def assertValidated(self, path, config=None, server=None):
        """A stored answer that is stale (or must be validated): the next request sends the
        origin a conditional request, the origin's 304 validates it, and the stored body is
        served as REVALIDATED. Returns (first answer, validated answer, what the origin got)."""
        if config is not None:
            self.origin.config(path, **dict(config, conditional=True))
        first = self.get(path, server=server)
        self.assertEqual((first.status, first.cache), (200, "MISS"), first)
        second = self.get(path, server=server)
        self.assertEqual(self.origin.count(path), 2, ("the stale entry was not validated", second))
        got = self.sent(path)
        self.assertTrue("if-none-match" in got or "if-modified-since" in got,
                        ("the second request was not conditional", got))
        self.assertEqual((second.status, second.cache), (200, "REVALIDATED"), second)
        self.assertEqual(second.body, first.body, "a 304 keeps the stored body")
        return first, second, got

    def assertServedStale(self, r, first):
        self.assertEqual((r.status, r.cache), (200, "STALE"), r)
        self.assertEqual(r.body, first.body, "the stale answer is the stored one")

    def assertNotServedStale(self, r, first, status):
        self.assertEqual(r.status, status, r)
        self.assertNotEqual(r.cache, "STALE", r)
        self.assertNotEqual(r.body, first.body, "the stale body was served")


class PrimedCase(RfcCase):
    """Stores the entries of prime() (name: (server attribute, origin config)) in
    setUpClass, each requested twice (PRIMED[name] = (path, first, second)), then waits
    once until their SHORT lifetimes have passed. The origin sends Date a second ahead:
    Date is whole seconds, and a Date up to a second behind would already count as age."""

    @classmethod
    def prime(cls):
        return {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.PRIMED = {}
        cls.PRIME = cls.prime()
        for name, (server, config) in cls.PRIME.items():
            path = "/%s/%s" % (cls.__name__.lower(), name)
            cls.origin.config(path, **dict({"date_offset": 1}, **config))
            s = getattr(cls, server)
            cls.PRIMED[name] = (path, req(s.port, "GET", path, timeout=TIMEOUT),
                                req(s.port, "GET", path, timeout=TIMEOUT))
        time.sleep(WAIT)

    def primed(self, name):
        """The path and the two answers of a primed entry, checking that it was stored (the
        second request, while fresh, was a hit, or a validation for a no-cache answer)."""
        path, first, second = self.PRIMED[name]
        self.assertEqual((first.status, first.cache), (200, "MISS"), first)
        self.assertIn(second.cache, ("HIT", "REVALIDATED"), ("not stored", second))
        return path, first, second

    def reconfigure(self, name, **changes):
        """Changes what the origin answers on a primed path, keeping the rest."""
        path = self.PRIMED[name][0]
        self.origin.config(path, **dict({"date_offset": 1}, **dict(self.PRIME[name][1], **changes)))


# ---------------------------------------------------------------------------
# RFC 9111 section 2 (the cache key), 3 (storing) and 4 (reuse).

class Storing(RfcCase):

    def test_rfc9111_3_fresh_answer_is_stored_and_reused(self):
        rs = self.assertStored(self.path(), cc("max-age=60"))
        self.assertEqual(rs[0].json()["n"], 1)

    def test_rfc9111_3_storable_statuses(self):
        for status in (203, 204, 300, 301, 308):
            with self.subTest(status=status):
                path = self.path("/%d" % status)
                headers = {"Location": "/moved"} if status in (300, 301, 308) else {}
                rs = self.assertStored(path, cc("max-age=60", status=status, headers=headers))
                self.assertEqual(rs[2].status, status)
                if headers:
                    self.assertEqual(rs[2].headers.get("location"), "/moved")

    def test_rfc9111_3_other_statuses_are_not_stored(self):
        for status in (201, 302, 307, 404, 410, 500, 503):
            with self.subTest(status=status):
                path = self.path("/%d" % status)
                headers = {"Location": "/moved"} if status in (302, 307) else {}
                self.assertNotStored(path, cc("max-age=60", status=status, headers=headers),
                                     status=status)

    def test_rfc9111_3_no_freshness_and_no_validator_is_not_stored(self):
        self.assertNotStored(self.path(), {})

    def test_rfc9111_3_validator_without_freshness_is_stored_and_validated(self):
        for name, headers in (("etag", {"ETag": '"v-3"'}),
                              ("lm", {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})):
            with self.subTest(validator=name):
                # Last-Modified alone would give a heuristic lifetime: max-age=0 rules it out.
                config = cc("max-age=0" if name == "lm" else None, headers=headers)
                self.assertValidated(self.path("/" + name), config)

    def test_rfc9111_3_1_connection_listed_fields_are_not_stored(self):
        path = self.path()
        rs = self.assertStored(path, cc("max-age=60", headers=[
            ["Connection", "X-Hop"], ["X-Hop", "secret"], ["X-App", "kept"]]))
        self.assertNotIn("x-hop", rs[1].headers)
        self.assertEqual(rs[1].headers.get("x-app"), "kept")

    def test_rfc9111_3_5_requests_with_credentials_are_answered_only_by_answers_that_allow_it(self):
        """Section 3.5: a stored answer serves a request with Authorization only when it says
        public, s-maxage or must-revalidate; a request with a Cookie is never served from a
        key that does not name its caller."""
        path = self.path()
        plain = self.assertStored(path, cc("max-age=60"))
        for h in ({"Authorization": "Bearer t-1"}, {"Cookie": "sid=c-1"}):
            with self.subTest(header=sorted(h)[0]):
                r = self.get(path, h)
                self.assertEqual((r.status, r.cache), (200, "BYPASS"), r)
                self.assertEqual(self.sent(path).get(sorted(h)[0].lower()), list(h.values())[0])
        self.assertEqual(self.origin.count(path), 3)
        # The answers to those requests replaced nothing.
        r = self.get(path)
        self.assertEqual((r.cache, r.body), ("HIT", plain[0].body))
        public = self.path("/public")
        self.assertStored(public, cc("public, max-age=60"))
        r = self.get(public, {"Authorization": "Bearer t-1"})
        self.assertEqual((r.status, r.cache), (200, "HIT"), r)
        r = self.get(public, {"Cookie": "sid=c-1"})
        self.assertEqual((r.status, r.cache), (200, "BYPASS"), r)

    def test_rfc9111_3_5_answer_to_a_request_with_authorization_is_stored_only_when_allowed(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60"))
        r = self.get(path, {"Authorization": "Bearer t-2"})
        self.assertEqual((r.status, r.cache), (200, "BYPASS"), r)
        r = self.get(path)
        self.assertEqual(r.cache, "MISS", r)
        self.assertFalse(r.json()["auth"])
        # public: the origin allows a shared cache to keep it, whoever asked.
        path = self.path("/public")
        self.origin.config(path, **cc("public, max-age=60"))
        r = self.get(path, {"Authorization": "Bearer t-2"})
        self.assertEqual((r.status, r.cache), (200, "MISS"), r)
        r = self.get(path)
        self.assertEqual(r.cache, "HIT", r)

    def test_rfc9111_5_2_2_5_no_store_answer_is_not_stored(self):
        self.assertNotStored(self.path(), cc("max-age=60, no-store"))

    def test_rfc9111_5_2_2_7_private_answer_is_not_stored(self):
        self.assertNotStored(self.path(), cc("private, max-age=60"))

    def test_rfc9111_7_3_answer_with_set_cookie_is_not_stored(self):
        rs = self.assertNotStored(self.path(), cc("max-age=60", headers={"Set-Cookie": "sid=s-1"}))
        self.assertEqual([r.headers.get("set-cookie") for r in rs], ["sid=s-1"] * 3,
                         "the cookie still reaches its caller")

    def test_rfc9111_5_2_unknown_directives_are_ignored(self):
        self.assertStored(self.path(), cc('community="UCI", foo-ext="a, no-store", max-age=60, bar'))

    def test_rfc9111_5_2_directive_names_are_case_insensitive(self):
        self.assertStored(self.path("/max-age"), cc("MAX-AGE=60"))
        self.assertNotStored(self.path("/no-store"), cc("max-age=60, No-Store"))

    def test_rfc9111_5_2_cache_control_field_lines_are_combined(self):
        self.assertStored(self.path("/public"), {"headers": [
            ["Cache-Control", "public"], ["Cache-Control", "max-age=60"]]})
        self.assertNotStored(self.path("/no-store"), {"headers": [
            ["Cache-Control", "max-age=60"], ["Cache-Control", "no-store"]]})

    def test_rfc9111_5_2_quoted_max_age_is_accepted(self):
        self.assertStored(self.path(), cc('max-age="60"'))

    def test_rfc9111_2_query_is_part_of_the_key(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60"))
        a1, b1 = self.get(path + "?a=1"), self.get(path + "?a=2")
        self.assertEqual((a1.cache, b1.cache), ("MISS", "MISS"), (a1, b1))
        a2, b2 = self.get(path + "?a=1"), self.get(path + "?a=2")
        self.assertEqual((a2.cache, a2.body), ("HIT", a1.body))
        self.assertEqual((b2.cache, b2.body), ("HIT", b1.body))
        self.assertEqual((a2.json()["query"], b2.json()["query"]), ("a=1", "a=2"))
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_2_query_parameter_order_shares_an_entry(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60"))
        first = self.get(path + "?a=1&b=2")
        again = self.get(path + "?b=2&a=1")
        self.assertEqual((first.cache, again.cache), ("MISS", "HIT"), (first, again))
        self.assertEqual(again.body, first.body)
        self.assertEqual(self.origin.count(path), 1)

    def test_rfc9111_4_stored_get_answers_head(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60"))
        first = self.get(path)
        self.assertEqual(first.cache, "MISS", first)
        h = self.head(path)
        self.assertEqual((h.status, h.cache, h.body), (200, "HIT", b""), h)
        self.assertEqual(h.headers.get("content-type"), first.headers.get("content-type"))
        self.assertEqual(self.origin.count(path), 1)

    def test_rfc9111_4_head_answer_never_stands_for_a_get(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60"))
        self.assertEqual(self.head(path).status, 200)
        g = self.get(path)
        self.assertEqual(g.status, 200, g)
        self.assertEqual(g.json()["path"], path, "a GET gets a body")
        self.assertEqual(len(g.body), int(g.headers["content-length"]))

    def test_rfc9111_4_other_methods_are_forwarded_and_not_stored(self):
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"):
            with self.subTest(method=method):
                path = self.path("/" + method)
                self.origin.config(path, **cc("max-age=60"))
                rs = [self.get(path, method=method, body="b") for _ in range(2)]
                self.assertEqual([r.status for r in rs], [200, 200], rs)
                self.assertEqual([r.json()["method"] for r in rs], [method, method])
                self.assertEqual([r.json()["n"] for r in rs], [1, 2], "every request reached the origin")
                self.assertEqual(rs[0].json()["body"], "b")


# ---------------------------------------------------------------------------
# RFC 9111 section 4.1: Vary.

class Vary(RfcCase):

    def test_rfc9111_4_1_vary_selects_by_the_named_request_field(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60", headers={"Vary": "Accept-Language"}))
        seen = {}
        for lang, want in (("en", "MISS"), ("fr", "MISS"), ("en", "HIT"), ("fr", "HIT")):
            r = self.get(path, {"Accept-Language": lang})
            self.assertEqual((r.status, r.cache), (200, want), (lang, r))
            self.assertEqual(r.json()["h"].get("accept-language"), lang)
            self.assertEqual(seen.setdefault(lang, r.body), r.body)
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_4_1_an_absent_field_is_a_value_of_its_own(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60", headers={"Vary": "Accept-Language"}))
        self.assertEqual(self.get(path, {"Accept-Language": "en"}).cache, "MISS")
        r = self.get(path)
        self.assertEqual(r.cache, "MISS", r)
        self.assertNotIn("accept-language", r.json()["h"])
        self.assertEqual(self.get(path).cache, "HIT")
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_4_1_vary_on_several_fields(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60", headers={"Vary": "Accept-Language, X-Variant"}))
        want = [({"Accept-Language": "en", "X-Variant": "a"}, "MISS"),
                ({"Accept-Language": "en", "X-Variant": "b"}, "MISS"),
                ({"Accept-Language": "de", "X-Variant": "a"}, "MISS"),
                ({"Accept-Language": "en", "X-Variant": "a"}, "HIT"),
                ({"Accept-Language": "en", "X-Variant": "b"}, "HIT")]
        for h, cache in want:
            r = self.get(path, h)
            self.assertEqual(r.cache, cache, (h, r))
            self.assertEqual(r.json()["h"].get("x-variant"), h["X-Variant"])
        self.assertEqual(self.origin.count(path), 3)

    def test_rfc9111_4_1_vary_field_names_are_case_insensitive(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=60", headers={"Vary": "ACCEPT-LANGUAGE"}))
        self.assertEqual(self.get(path, {"Accept-Language": "en"}).cache, "MISS")
        self.assertEqual(self.get(path, {"Accept-Language": "en"}).cache, "HIT")
        r = self.get(path, {"Accept-Language": "fr"})
        self.assertEqual(r.cache, "MISS", "fr was answered with the en entry")
        self.assertEqual(r.json()["h"]["accept-language"], "fr")

    def test_rfc9111_4_1_vary_star_is_never_stored(self):
        self.assertNotStored(self.path(), cc("max-age=60", headers={"Vary": "*"}))


# ---------------------------------------------------------------------------
# RFC 9111 section 4.2: freshness, made stale at once where the RFC allows.

class Freshness(RfcCase):

    ETAG = {"ETag": '"f-1"'}

    def test_rfc9111_4_2_1_max_age_overrides_expires(self):
        self.assertStored(self.path(), cc("max-age=60", headers={
            "Expires": "Thu, 01 Jan 1970 00:00:00 GMT"}))

    def test_rfc9111_4_2_1_max_age_zero_overrides_a_future_expires(self):
        self.assertValidated(self.path(), cc("max-age=0", expires_in=3600, headers=self.ETAG))

    def test_rfc9111_5_2_2_10_s_maxage_overrides_max_age(self):
        self.assertStored(self.path("/long"), cc("max-age=0, s-maxage=60"))
        self.assertValidated(self.path("/zero"), cc("max-age=60, s-maxage=0", headers=self.ETAG))

    def test_rfc9111_4_2_1_expires_minus_date(self):
        # The origin's clock is 100 s ahead: Expires - Date is the lifetime, whatever the
        # cache's own clock says of Expires.
        self.assertStored(self.path("/fresh"), cc(None, date_offset=100, expires_in=60))
        self.assertValidated(self.path("/stale"), cc(None, date_offset=100, expires_in=-50,
                                                     headers=self.ETAG))

    def test_rfc9111_4_2_1_expires_without_date(self):
        rs = self.assertStored(self.path(), cc(None, date=False, expires_in=60))
        for r in rs:
            self.assertIsNotNone(email.utils.parsedate_tz(r.headers.get("date", "")),
                                 ("RFC 9110 6.6.1: a Date is added", r.headers))

    def test_rfc9111_5_3_invalid_expires_means_stale(self):
        for i, expires in enumerate(("0", "not a date", "Thu, 01 Jan 1970 00:00:00 GMT")):
            with self.subTest(expires=expires):
                self.assertValidated(self.path("/%d" % i), cc(None, headers=dict(
                    self.ETAG, Expires=expires)))

    def test_rfc9111_4_2_1_negative_max_age_means_stale(self):
        self.assertValidated(self.path(), cc("max-age=-1", headers=self.ETAG))

    def test_rfc9111_4_2_1_conflicting_max_age_is_the_first_or_stale(self):
        # Either reading (the first value, or stale) makes this answer stale.
        self.assertValidated(self.path(), cc("max-age=0, max-age=60", headers=self.ETAG))

    def test_rfc9111_4_2_2_heuristic_freshness_from_last_modified(self):
        lm = {"Last-Modified": httpdate(time.time() - 1000)}  # 10%: 100 s
        self.assertStored(self.path("/200"), cc(None, headers=lm))
        for status in (203, 301):
            with self.subTest(status=status):
                h = dict(lm, Location="/moved") if status == 301 else lm
                self.assertStored(self.path("/%d" % status), cc(None, status=status, headers=h))

    def test_rfc9111_4_2_2_heuristic_is_ten_percent_of_date_minus_last_modified(self):
        lm = httpdate(time.time() - 1000)  # 100 s
        self.assertStored(self.path("/age50"), cc(None, headers={"Last-Modified": lm, "Age": "50"}))
        _, _, got = self.assertValidated(self.path("/age150"), cc(None, headers={
            "Last-Modified": lm, "Age": "150"}))
        self.assertEqual(got.get("if-modified-since"), lm)

    def test_rfc9111_4_2_2_heuristic_is_capped_at_one_day(self):
        lm = httpdate(time.time() - 100 * 86400)  # 10%: 10 days, capped at 1 day
        self.assertStored(self.path("/80000"), cc(None, headers={"Last-Modified": lm, "Age": "80000"}))
        self.assertValidated(self.path("/90000"), cc(None, headers={"Last-Modified": lm, "Age": "90000"}))

    def test_rfc9111_4_2_2_no_heuristic_with_explicit_freshness(self):
        lm = httpdate(time.time() - 100 * 86400)
        self.assertValidated(self.path(), cc("max-age=0", headers={"Last-Modified": lm}))

    def test_rfc9111_4_2_3_origin_age_counts(self):
        rs = self.assertStored(self.path(), cc("max-age=60", headers={"Age": "50"}))
        self.assertIsNotNone(age_of(rs[1]), rs[1].headers)
        self.assertGreaterEqual(age_of(rs[1]), 50, rs[1].headers)
        self.assertLessEqual(age_of(rs[1]), 55, rs[1].headers)

    def test_rfc9111_4_2_3_origin_age_past_the_lifetime_is_stale(self):
        self.assertValidated(self.path(), cc("max-age=60", headers=dict(self.ETAG, Age="100")))

    def test_rfc9111_4_2_3_date_in_the_past_counts_as_age(self):
        # apparent_age = response_time - date_value = 100 s, past max-age=60.
        self.assertValidated(self.path(), cc("max-age=60", date_offset=-100, headers=self.ETAG))

    def test_rfc9111_4_2_3_response_delay_counts_as_age(self):
        rs = self.assertStored(self.path(), cc("max-age=60", delay_ms=1100))
        self.assertIsNotNone(age_of(rs[1]), rs[1].headers)
        self.assertGreaterEqual(age_of(rs[1]), 1, rs[1].headers)

    def test_rfc9111_5_1_hit_carries_age(self):
        rs = self.assertStored(self.path(), cc("max-age=60"))
        for r in rs[1:]:
            self.assertIsNotNone(age_of(r), ("Age is a whole number of seconds", r.headers))
            self.assertLessEqual(age_of(r), 1, r.headers)


# ---------------------------------------------------------------------------
# Lifetimes that elapse: one wait for the class.

class Expiry(PrimedCase):
    SERVERS = {"s": {}, "capped": {"ttl": "1s"}, "override": {"ttl": "1h", "override": True}}

    @classmethod
    def prime(cls):
        # Date - Last-Modified is 11 or 12 s (Date is a second ahead): a heuristic lifetime
        # of 1.1 to 1.2 s. Primed first, so that it has the longest wait.
        cls.LM = httpdate(time.time() - 10)
        return {
        "heuristic": ("s", cc(None, conditional=True, headers={"Last-Modified": cls.LM})),
        "max-age": ("s", cc("max-age=%d" % SHORT)),
        "s-maxage-long": ("s", cc("max-age=%d, s-maxage=60" % SHORT)),
        "s-maxage-short": ("s", cc("max-age=60, s-maxage=%d" % SHORT)),
        "expires": ("s", cc(None, date_offset=100, expires_in=SHORT)),
        "etag": ("s", cc("max-age=%d" % SHORT, conditional=True, headers={"ETag": '"x-1"'})),
        "age": ("s", cc("max-age=60")),
        "cdn-short": ("s", cc("max-age=600", headers={"CDN-Cache-Control": "max-age=%d" % SHORT})),
        "cdn-long": ("s", cc("max-age=%d" % SHORT, headers={"CDN-Cache-Control": "max-age=600"})),
        "capped": ("capped", cc("max-age=600")),
        "capped-none": ("capped", {}),
        "override": ("override", cc("max-age=%d" % SHORT)),
        }

    def test_rfc9111_4_2_fresh_until_max_age_then_fetched_again(self):
        path, first, second = self.primed("max-age")
        self.assertEqual(second.cache, "HIT", second)
        r = self.get(path)
        self.assertEqual((r.status, r.cache), (200, "MISS"), r)
        self.assertEqual(r.json()["n"], 2)
        self.assertEqual(self.get(path).cache, "HIT")

    def test_rfc9111_5_2_2_10_s_maxage_lifetime_overrides_max_age(self):
        path, _, second = self.primed("s-maxage-long")
        self.assertEqual(second.cache, "HIT", second)
        r = self.get(path)
        self.assertEqual((r.cache, r.body), ("HIT", second.body), r)
        path, _, second = self.primed("s-maxage-short")
        self.assertEqual(second.cache, "HIT", second)
        r = self.get(path)
        self.assertNotEqual(r.cache, "HIT", r)
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_4_2_1_expires_minus_date_lifetime_elapses(self):
        # Expires is 101 s ahead of the cache's clock, but only 1 s past Date.
        path, _, second = self.primed("expires")
        self.assertEqual(second.cache, "HIT", second)
        r = self.get(path)
        self.assertNotEqual(r.cache, "HIT", r)
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_4_3_1_expired_entry_is_revalidated_with_if_none_match(self):
        path, first, second = self.primed("etag")
        self.assertEqual(second.cache, "HIT", second)
        r = self.get(path)
        self.assertEqual(self.origin.count(path), 2, r)
        self.assertEqual(self.sent(path).get("if-none-match"), '"x-1"')
        self.assertEqual((r.status, r.cache, r.body), (200, "REVALIDATED", first.body), r)
        # The 304 freshened the entry (max-age=1 again): the next request is a hit.
        r = self.get(path)
        self.assertEqual((r.cache, r.body), ("HIT", first.body), r)

    def test_rfc9111_4_2_2_heuristic_lifetime_elapses_then_if_modified_since(self):
        path, first, second = self.primed("heuristic")
        self.assertEqual(second.cache, "HIT", second)
        r = self.get(path)
        self.assertEqual(self.origin.count(path), 2, r)
        self.assertEqual(self.sent(path).get("if-modified-since"), self.LM)
        self.assertEqual((r.status, r.cache, r.body), (200, "REVALIDATED", first.body), r)

    def test_rfc9111_4_2_3_age_grows_while_stored(self):
        path, _, second = self.primed("age")
        r = self.get(path)
        self.assertEqual(r.cache, "HIT", r)
        self.assertIsNotNone(age_of(r), r.headers)
        self.assertGreaterEqual(age_of(r), 1, r.headers)
        self.assertLessEqual(age_of(r), 3, r.headers)
        self.assertGreaterEqual(age_of(r), age_of(second) or 0)

    def test_rfc9213_2_cdn_cache_control_lifetime_overrides_cache_control(self):
        path, _, second = self.primed("cdn-short")
        self.assertEqual(second.cache, "HIT", second)
        r = self.get(path)
        self.assertNotEqual(r.cache, "HIT", r)
        self.assertEqual(self.origin.count(path), 2)
        path, _, second = self.primed("cdn-long")
        r = self.get(path)
        self.assertEqual((r.cache, r.body), ("HIT", second.body), r)

    def test_rfc9111_4_2_1_policy_ttl_caps_the_origins_lifetime(self):
        path, _, second = self.primed("capped")
        self.assertEqual(second.cache, "HIT", second)
        r = self.get(path, server=self.capped)
        self.assertNotEqual(r.cache, "HIT", r)
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_4_2_2_policy_ttl_is_the_lifetime_without_freshness(self):
        path, _, second = self.primed("capped-none")
        self.assertEqual(second.cache, "HIT", ("stored for the policy's TTL", second))
        r = self.get(path, server=self.capped)
        self.assertNotEqual(r.cache, "HIT", r)
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_4_2_1_policy_override_wins_over_the_origins_lifetime(self):
        path, first, second = self.primed("override")
        r = self.get(path, server=self.override)
        self.assertEqual((r.cache, r.body), ("HIT", first.body), r)
        self.assertEqual(self.origin.count(path), 1)


# ---------------------------------------------------------------------------
# RFC 9111 section 4.3: validating stored answers with the origin.

class Validation(RfcCase):

    def test_rfc9111_4_3_1_if_none_match_carries_the_origins_etag(self):
        for name, etag in (("strong", '"v-1"'), ("weak", 'W/"w-1"')):
            with self.subTest(etag=etag):
                _, _, got = self.assertValidated(self.path("/" + name), cc("max-age=0", headers={
                    "ETag": etag}))
                self.assertEqual(got.get("if-none-match"), etag)

    def test_rfc9111_4_3_1_if_modified_since_carries_last_modified(self):
        lm = "Tue, 02 Jan 2024 03:04:05 GMT"
        _, _, got = self.assertValidated(self.path(), cc("max-age=0", headers={"Last-Modified": lm}))
        self.assertEqual(got.get("if-modified-since"), lm)
        self.assertNotIn("if-none-match", got)

    def test_rfc9111_4_3_3_304_keeps_the_stored_body_and_fields(self):
        path = self.path()
        first, second, _ = self.assertValidated(path, cc("max-age=0", headers={
            "ETag": '"k-1"', "X-App": "one"}))
        self.assertEqual(second.headers.get("content-type"), "application/json")
        self.assertEqual(second.headers.get("x-app"), "one")
        self.assertEqual(second.headers.get("etag"), '"k-1"')
        self.assertEqual(second.json()["n"], 1)

    def test_rfc9111_4_3_3_200_replaces_the_stored_answer(self):
        path = self.path()
        self.assertValidated(path, cc("max-age=0", headers={"ETag": '"r-1"'}))
        self.origin.config(path, **cc("max-age=0", conditional=True, headers={"ETag": '"r-2"'}))
        r = self.get(path)
        self.assertEqual(self.sent(path).get("if-none-match"), '"r-1"')
        self.assertEqual((r.status, r.json()["n"]), (200, 3), r)
        self.assertEqual(r.headers.get("etag"), '"r-2"')
        again = self.get(path)
        self.assertEqual(self.sent(path).get("if-none-match"), '"r-2"', "the new answer was stored")
        self.assertEqual((again.cache, again.body), ("REVALIDATED", r.body), again)

    def test_rfc9111_4_3_4_304_updates_the_stored_fields(self):
        path = self.path()
        first, second, _ = self.assertValidated(path, cc("max-age=0", headers={
            "ETag": '"u-1"', "X-Version": "1"}, headers_304={"Cache-Control": "max-age=60",
                                                         "X-Version": "2"}))
        self.assertEqual(second.headers.get("x-version"), "2", second.headers)
        self.assertEqual(second.headers.get("cache-control"), "max-age=60")
        # Stored that way: fresh for 60 s now, a hit with the new fields and the old body.
        r = self.get(path)
        self.assertEqual((r.cache, r.body), ("HIT", first.body), r)
        self.assertEqual(r.headers.get("x-version"), "2")
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_4_3_3_server_error_during_validation_is_forwarded(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=0", conditional=True, headers={"ETag": '"e-1"'}))
        first = self.get(path)
        self.assertEqual(first.cache, "MISS")
        self.origin.config(path, **cc("max-age=0", status=500, headers={"ETag": '"e-1"'}))
        r = self.get(path)
        self.assertNotServedStale(r, first, 500)
        self.assertEqual(r.json()["n"], 2)

    def test_rfc9111_5_2_2_4_no_cache_answer_is_validated_on_every_reuse(self):
        path = self.path()
        self.origin.config(path, **cc("no-cache", conditional=True, headers={"ETag": '"n-1"'}))
        rs = [self.get(path) for _ in range(3)]
        self.assertEqual([r.cache for r in rs], ["MISS", "REVALIDATED", "REVALIDATED"], rs)
        self.assertEqual({r.body for r in rs}, {rs[0].body})
        log = self.origin.log(path)
        self.assertEqual([x["h"].get("if-none-match") for x in log], [None, '"n-1"', '"n-1"'])

    def test_rfc9111_5_2_2_4_no_cache_answer_without_validator_is_never_reused(self):
        rs = self.assertNotStored(self.path(), cc("no-cache, max-age=60"))
        self.assertEqual([r.json()["n"] for r in rs], [1, 2, 3])


# ---------------------------------------------------------------------------
# RFC 9111 section 4.3.2, RFC 9110 section 13: conditional requests of clients.

LM = "Wed, 03 Jan 2024 10:00:00 GMT"
LM_EARLIER = "Wed, 03 Jan 2024 09:00:00 GMT"
LM_LATER = "Wed, 03 Jan 2024 11:00:00 GMT"


class ClientConditionals(RfcCase):

    def stored(self, etag='"c-1"'):
        path = self.path()
        self.origin.config(path, **cc("max-age=600", headers={"ETag": etag, "Last-Modified": LM}))
        return path, self.assertStored(path)[0]

    def assertNotModified(self, path, headers, method="GET"):
        r = self.get(path, headers, method=method)
        self.assertEqual((r.status, r.body), (304, b""), (headers, r))
        return r

    def assertFull(self, path, headers, first):
        r = self.get(path, headers)
        self.assertEqual((r.status, r.cache, r.body), (200, "HIT", first.body), (headers, r))

    def test_rfc9111_4_3_2_if_none_match_answered_from_a_fresh_entry(self):
        path, _ = self.stored()
        r = self.assertNotModified(path, {"If-None-Match": '"c-1"'})
        # RFC 9110 15.4.5: the 304 carries the fields a 200 would have.
        self.assertEqual(r.headers.get("etag"), '"c-1"')
        self.assertEqual(r.headers.get("cache-control"), "max-age=600")
        self.assertIn("date", r.headers)
        self.assertNotModified(path, {"If-None-Match": '"c-1"'}, method="HEAD")
        self.assertEqual(self.origin.count(path), 1, "answered by the cache")

    def test_rfc9110_13_1_2_if_none_match_uses_the_weak_comparison(self):
        path, _ = self.stored()
        for inm in ('W/"c-1"', '"other", "c-1"', '"other",W/"c-1"', "*"):
            with self.subTest(inm=inm):
                self.assertNotModified(path, {"If-None-Match": inm})
        self.assertEqual(self.origin.count(path), 1)

    def test_rfc9110_13_1_2_weak_stored_etag_matches(self):
        path, _ = self.stored('W/"c-weak"')
        for inm in ('W/"c-weak"', '"c-weak"'):
            with self.subTest(inm=inm):
                self.assertNotModified(path, {"If-None-Match": inm})

    def test_rfc9110_13_1_2_if_none_match_mismatch_gets_the_full_answer(self):
        path, first = self.stored()
        for inm in ('"other"', '"c-1-other"', 'W/"c-2"'):
            with self.subTest(inm=inm):
                self.assertFull(path, {"If-None-Match": inm}, first)
        self.assertEqual(self.origin.count(path), 1)

    def test_rfc9110_13_1_3_if_modified_since(self):
        path, first = self.stored()
        for ims in (LM, LM_LATER):
            with self.subTest(ims=ims):
                self.assertNotModified(path, {"If-Modified-Since": ims})
        for ims in (LM_EARLIER, "yesterday"):
            with self.subTest(ims=ims):
                self.assertFull(path, {"If-Modified-Since": ims}, first)
        self.assertEqual(self.origin.count(path), 1)

    def test_rfc9110_13_2_2_if_none_match_takes_precedence_over_if_modified_since(self):
        path, first = self.stored()
        self.assertFull(path, {"If-None-Match": '"other"', "If-Modified-Since": LM_LATER}, first)
        self.assertNotModified(path, {"If-None-Match": '"c-1"', "If-Modified-Since": LM_EARLIER})
        self.assertEqual(self.origin.count(path), 1)

    def test_rfc9111_4_3_2_conditional_request_for_a_stale_entry_is_validated_first(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=0", conditional=True, headers={"ETag": '"s-1"'}))
        self.assertEqual(self.get(path).cache, "MISS")
        self.assertNotModified(path, {"If-None-Match": '"s-1"'})
        self.assertEqual(self.origin.count(path), 2, "the stale entry was validated")
        self.assertIn('"s-1"', self.sent(path).get("if-none-match", ""))

    def test_rfc9110_13_1_2_if_none_match_on_an_unsafe_method_goes_to_the_origin(self):
        path, _ = self.stored()
        r = self.get(path, {"If-None-Match": '"c-1"'}, method="POST", body="x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["method"], "POST")
        self.assertEqual(self.origin.count(path), 2)


# ---------------------------------------------------------------------------
# RFC 9111 section 5.2.1 and 5.4: request directives.

class RequestDirectives(RfcCase):

    def stored(self):
        path = self.path()
        self.assertStored(path, cc("max-age=600"))
        return path

    def assertToOrigin(self, path, headers):
        r = self.get(path, headers)
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(r.cache, "HIT", r)
        self.assertEqual(self.origin.count(path), 2, (headers, r))
        self.assertEqual(r.json()["n"], 2, "the answer is the origin's")
        # What it fetched is stored as usual.
        self.assertEqual(self.get(path).cache, "HIT")
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_5_2_1_4_request_no_cache_goes_to_the_origin(self):
        self.assertToOrigin(self.stored(), {"Cache-Control": "no-cache"})

    def test_rfc9111_5_2_1_1_request_max_age_zero_goes_to_the_origin(self):
        self.assertToOrigin(self.stored(), {"Cache-Control": "max-age=0"})

    def test_rfc9111_5_4_pragma_no_cache_without_cache_control_goes_to_the_origin(self):
        self.assertToOrigin(self.stored(), {"Pragma": "no-cache"})

    def test_rfc9111_5_4_pragma_is_ignored_with_cache_control(self):
        path = self.stored()
        r = self.get(path, {"Pragma": "no-cache", "Cache-Control": "max-age=600"})
        self.assertEqual(r.cache, "HIT", r)
        self.assertEqual(self.origin.count(path), 1)

    def test_rfc9111_5_2_1_7_only_if_cached(self):
        path = self.stored()
        r = self.get(path, {"Cache-Control": "only-if-cached"})
        self.assertEqual((r.status, r.cache), (200, "HIT"), r)
        other = self.path("/absent")
        r = self.get(other, {"Cache-Control": "only-if-cached"})
        self.assertEqual(r.status, 504, r)
        self.assertEqual(self.origin.count(other), 0, "only-if-cached never reaches the origin")

    def test_rfc9111_5_2_1_5_request_no_store_answer_is_not_stored(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=600"))
        r = self.get(path, {"Cache-Control": "no-store"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual([self.get(path).cache for _ in range(2)], ["MISS", "HIT"])
        self.assertEqual(self.origin.count(path), 2)

    def test_rfc9111_5_2_3_unknown_request_directive_is_ignored(self):
        path = self.stored()
        r = self.get(path, {"Cache-Control": 'x-ext="1", foo'})
        self.assertEqual(r.cache, "HIT", r)
        self.assertEqual(self.origin.count(path), 1)


# ---------------------------------------------------------------------------
# RFC 9111 section 4.4: invalidation by unsafe and unknown methods.

class Invalidation(RfcCase):

    def stored(self, path, headers=None):
        self.origin.config(path.partition("?")[0], **cc("max-age=600"))
        rs = [self.get(path, headers) for _ in range(2)]
        self.assertEqual([r.cache for r in rs], ["MISS", "HIT"], (path, rs))
        return rs[0]

    def assertHit(self, path, first, headers=None):
        r = self.get(path, headers)
        self.assertEqual((r.cache, r.body), ("HIT", first.body), (path, r))

    def assertMiss(self, path, headers=None):
        r = self.get(path, headers)
        self.assertEqual((r.status, r.cache), (200, "MISS"), (path, r))
        self.assertEqual(r.json()["method"], "GET")

    def test_rfc9111_4_4_unsafe_methods_invalidate_the_target_uri(self):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                path = self.path("/" + method)
                other = self.path("/%s-other" % method)
                kept = self.stored(other)
                self.stored(path)
                w = self.get(path, method=method, body="x")
                self.assertEqual((w.status, w.json()["method"]), (200, method), w)
                self.assertMiss(path)
                self.assertHit(other, kept)

    def test_rfc9111_4_4_unknown_method_invalidates_the_target_uri(self):
        path = self.path()
        self.stored(path)
        w = self.get(path, method="FOO")
        self.assertEqual((w.status, w.json()["method"]), (200, "FOO"), w)
        self.assertMiss(path)

    def test_rfc9111_4_4_invalidation_covers_head_and_every_variant(self):
        path = self.path()
        self.origin.config(path, **cc("max-age=600", headers={"Vary": "Accept-Language"}))
        for lang in ("en", "fr", "en", "fr"):
            self.get(path, {"Accept-Language": lang})
        self.assertEqual(self.get(path, {"Accept-Language": "fr"}).cache, "HIT")
        self.assertEqual(self.get(path, method="POST", body="x").status, 200)
        for lang in ("en", "fr"):
            self.assertMiss(path, {"Accept-Language": lang})
        head = self.path("/head")
        self.stored(head)
        self.assertEqual(self.get(head, method="DELETE").status, 200)
        h = self.head(head)
        self.assertEqual(h.status, 200)
        self.assertNotEqual(h.cache, "HIT", h)

    def test_rfc9111_4_4_invalidation_is_per_target_uri_with_its_query(self):
        path = self.path()
        self.stored(path + "?a=1&b=2")
        kept = self.stored(path + "?a=3")
        self.assertEqual(self.get(path + "?b=2&a=1", method="POST", body="x").status, 200)
        self.assertMiss(path + "?a=1&b=2")
        self.assertHit(path + "?a=3", kept)

    def test_rfc9111_4_4_error_answer_invalidates_nothing(self):
        path = self.path()
        first = self.stored(path)
        loc = self.path("/loc")
        loc_first = self.stored(loc)
        self.origin.config(path, method="POST", headers={"Location": loc, "Content-Location": loc})
        for status in (400, 404, 409, 500, 503):
            with self.subTest(status=status):
                w = self.get(path, {"X-Origin-Status": str(status)}, method="POST", body="x")
                self.assertEqual(w.status, status, w)
                self.assertHit(path, first)
                self.assertHit(loc, loc_first)

    def test_rfc9111_4_4_location_and_content_location_on_the_same_origin_are_invalidated(self):
        path = self.path()
        here = "http://127.0.0.1:%d" % self.s.port
        cases = {"Location": self.path("/rel-loc"), "Content-Location": self.path("/rel-cl")}
        absolute = {"Location": self.path("/abs-loc"), "Content-Location": self.path("/abs-cl")}
        for p in list(cases.values()) + list(absolute.values()):
            self.stored(p)
        self.origin.config(path, method="POST", status=201, headers=cases)
        self.assertEqual(self.get(path, method="POST", body="x").status, 201)
        self.origin.config(path, method="PUT", headers={k: here + v for k, v in absolute.items()})
        self.assertEqual(self.get(path, method="PUT", body="x").status, 200)
        for name, p in list(cases.items()) + list(absolute.items()):
            with self.subTest(field=name, uri=p):
                self.assertMiss(p)

    def test_rfc9111_4_4_location_on_another_host_is_not_invalidated(self):
        path = self.path()
        elsewhere = self.path("/elsewhere")
        first = self.stored(elsewhere)
        self.origin.config(path, method="POST", status=201, headers={
            "Location": "http://other.example" + elsewhere,
            "Content-Location": "http://other.example" + elsewhere})
        self.assertEqual(self.get(path, method="POST", body="x").status, 201)
        self.assertHit(elsewhere, first)


# ---------------------------------------------------------------------------
# RFC 9111 section 4.2.4, RFC 5861: serving stale, and the directives that forbid it.

def stale_config(value, **kw):
    return ("s", cc(value, **kw))


def sie_config(value, **kw):
    return ("sie", cc(value, **kw))


def swr_config(value, **kw):
    return ("swr", cc(value, **kw))


class Stale(PrimedCase):
    """`s` is the plain cache; `sie` has stale_if_error = "10m" in its policy, `swr`
    stale_while_revalidate = "30s"."""

    SERVERS = {"s": {}, "sie": {"stale_if_error": "10m"}, "swr": {"stale_while_revalidate": "30s"}}

    @classmethod
    def prime(cls):
        return {
        "swr": stale_config("max-age=%d, stale-while-revalidate=60" % SHORT),
        "swr0": stale_config("max-age=%d, stale-while-revalidate=0" % SHORT),
        "sie": stale_config("max-age=%d, stale-if-error=60" % SHORT),
        "sie0": stale_config("max-age=%d, stale-if-error=0" % SHORT),
        "plain": stale_config("max-age=%d" % SHORT),
        "mr-sie": stale_config("max-age=%d, must-revalidate, stale-if-error=60" % SHORT),
        "mr-swr": stale_config("max-age=%d, must-revalidate, stale-while-revalidate=60" % SHORT),
        "cdn-sie": stale_config("max-age=%d" % SHORT, headers={
            "CDN-Cache-Control": "max-age=%d, stale-if-error=60" % SHORT}),
        "policy": sie_config("max-age=%d" % SHORT),
        "policy-mr": sie_config("max-age=%d, must-revalidate" % SHORT),
        "policy-pr": sie_config("max-age=%d, proxy-revalidate" % SHORT),
        "policy-sm": sie_config("s-maxage=%d" % SHORT),
        "policy-nc": sie_config("no-cache", conditional=True, headers={"ETag": '"nc-1"'}),
        "policy-swr": swr_config("max-age=%d" % SHORT),
        "policy-swr-mr": swr_config("max-age=%d, must-revalidate" % SHORT),
        }

    def fail_with(self, name, status=503, server=None):
        path, first, _ = self.primed(name)
        self.reconfigure(name, status=status)
        return first, self.get(path, server=server)

    def test_rfc5861_3_stale_while_revalidate_from_origin(self):
        path, first, _ = self.primed("swr")
        before = self.origin.count(path)
        self.reconfigure("swr", delay_ms=600)
        r = self.get(path)
        self.assertServedStale(r, first)
        self.assertLess(r.took, 0.4, "a stale answer does not wait for the origin")
        self.assertIsNotNone(age_of(r), r.headers)
        self.assertGreaterEqual(age_of(r), 1, "a stale answer is older than its lifetime")
        # One refresh in the background, then the new answer is a hit.
        self.assertTrue(wait_until(lambda: self.origin.count(path) > before, 5))
        self.assertTrue(wait_until(lambda: self.get(path).cache == "HIT", 5, 0.05))
        r = self.get(path)
        self.assertEqual((r.cache, r.json()["n"]), ("HIT", before + 1), r)
        self.assertEqual(self.origin.count(path), before + 1, "one refresh")

    def test_rfc5861_3_stale_while_revalidate_window_is_bounded(self):
        path, first, _ = self.primed("swr0")
        r = self.get(path)
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(r.cache, "STALE", r)
        self.assertEqual(r.json()["n"], self.origin.count(path), "the origin's answer, waited for")

    def test_rfc5861_4_stale_if_error_from_origin(self):
        path, first, _ = self.primed("sie")
        for status in (500, 502, 503, 504):
            with self.subTest(status=status):
                self.reconfigure("sie", status=status)
                self.assertServedStale(self.get(path), first)
        self.reconfigure("sie")
        r = self.get(path)
        self.assertEqual((r.status, r.cache), (200, "MISS"), r)
        self.assertEqual(r.json()["n"], self.origin.count(path))

    def test_rfc5861_4_stale_if_error_window_is_bounded(self):
        first, r = self.fail_with("sie0")
        self.assertNotServedStale(r, first, 503)

    def test_rfc9111_4_2_4_stale_is_not_served_without_permission(self):
        first, r = self.fail_with("plain")
        self.assertNotServedStale(r, first, 503)

    def test_rfc9111_5_2_2_2_must_revalidate_overrides_stale_if_error(self):
        first, r = self.fail_with("mr-sie")
        self.assertNotServedStale(r, first, 503)

    def test_rfc9111_5_2_2_2_must_revalidate_overrides_stale_while_revalidate(self):
        path, first, _ = self.primed("mr-swr")
        r = self.get(path)
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(r.cache, "STALE", r)
        self.assertEqual(r.json()["n"], self.origin.count(path), "the origin's answer, waited for")

    def test_rfc9213_2_cdn_cache_control_stale_if_error(self):
        path, first, _ = self.primed("cdn-sie")
        self.reconfigure("cdn-sie", status=503)
        self.assertServedStale(self.get(path), first)

    def test_rfc9111_4_2_4_policy_stale_if_error_serves_stale_on_5xx(self):
        first, r = self.fail_with("policy", server=self.sie)
        self.assertServedStale(r, first)

    def test_rfc9111_4_2_4_policy_stale_while_revalidate_serves_stale(self):
        path, first, _ = self.primed("policy-swr")
        self.assertServedStale(self.get(path, server=self.swr), first)
        self.assertTrue(wait_until(lambda: self.origin.count(path) == 2, 5), "the refresh")

    def test_rfc9111_5_2_2_2_must_revalidate_forbids_the_policys_stale_while_revalidate(self):
        path, first, _ = self.primed("policy-swr-mr")
        r = self.get(path, server=self.swr)
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(r.cache, "STALE", r)
        self.assertEqual(r.json()["n"], self.origin.count(path), "the origin's answer, waited for")

    def test_rfc9111_5_2_2_2_must_revalidate_forbids_the_policys_stale_if_error(self):
        first, r = self.fail_with("policy-mr", server=self.sie)
        self.assertNotServedStale(r, first, 503)

    def test_rfc9111_5_2_2_8_proxy_revalidate_forbids_the_policys_stale_if_error(self):
        first, r = self.fail_with("policy-pr", server=self.sie)
        self.assertNotServedStale(r, first, 503)

    def test_rfc9111_5_2_2_10_s_maxage_forbids_the_policys_stale_if_error(self):
        first, r = self.fail_with("policy-sm", server=self.sie)
        self.assertNotServedStale(r, first, 503)

    def test_rfc9111_5_2_2_4_no_cache_forbids_the_policys_stale_if_error(self):
        path, first, second = self.primed("policy-nc")
        self.assertEqual(second.cache, "REVALIDATED", ("stored, and validated", second))
        first, r = self.fail_with("policy-nc", server=self.sie)
        self.assertNotServedStale(r, first, 503)


class OriginDown(PrimedCase):
    """The same with the origin down: refused connections instead of 5xx answers."""

    SERVERS = {"s": {}, "sie": {"stale_if_error": "10m"}}

    @classmethod
    def prime(cls):
        return {
        "sie": stale_config("max-age=%d, stale-if-error=60" % SHORT),
        "plain": stale_config("max-age=%d" % SHORT),
        "fresh": stale_config("max-age=600"),
        "policy": sie_config("max-age=%d" % SHORT),
        "policy-mr": sie_config("max-age=%d, must-revalidate" % SHORT),
        "policy-pr": sie_config("max-age=%d, proxy-revalidate" % SHORT),
        "policy-sm": sie_config("s-maxage=%d" % SHORT),
        "policy-nc": sie_config("no-cache", conditional=True, headers={"ETag": '"nc-2"'}),
        }

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.origin.kill()

    def down(self, name, server=None):
        path, first, _ = self.primed(name)
        return first, self.get(path, server=server)

    def assertGatewayError(self, r, first):
        self.assertIn(r.status, (502, 504), r)
        self.assertTrue(is_problem(r, r.status), r)
        self.assertNotEqual(r.cache, "STALE")
        self.assertNotEqual(r.body, first.body)

    def test_rfc5861_4_stale_if_error_when_the_origin_is_down(self):
        first, r = self.down("sie")
        self.assertServedStale(r, first)

    def test_rfc9111_4_2_4_origin_down_without_permission_is_an_error(self):
        first, r = self.down("plain")
        self.assertGatewayError(r, first)

    def test_rfc9111_4_2_4_policy_stale_if_error_when_the_origin_is_down(self):
        first, r = self.down("policy", self.sie)
        self.assertServedStale(r, first)

    def test_rfc9111_5_2_2_2_must_revalidate_origin_down_is_an_error(self):
        first, r = self.down("policy-mr", self.sie)
        self.assertGatewayError(r, first)

    def test_rfc9111_5_2_2_8_proxy_revalidate_origin_down_is_an_error(self):
        first, r = self.down("policy-pr", self.sie)
        self.assertGatewayError(r, first)

    def test_rfc9111_5_2_2_10_s_maxage_origin_down_is_an_error(self):
        first, r = self.down("policy-sm", self.sie)
        self.assertGatewayError(r, first)

    def test_rfc9111_5_2_2_4_no_cache_origin_down_is_an_error(self):
        first, r = self.down("policy-nc", self.sie)
        self.assertGatewayError(r, first)

    def test_rfc9111_5_2_1_7_only_if_cached_needs_no_origin(self):
        path, first, _ = self.primed("fresh")
        r = self.get(path, {"Cache-Control": "only-if-cached"})
        self.assertEqual((r.status, r.cache, r.body), (200, "HIT", first.body), r)
        r = self.get(self.path(), {"Cache-Control": "only-if-cached"})
        self.assertEqual(r.status, 504, r)


# ---------------------------------------------------------------------------
# RFC 9213: CDN-Cache-Control.

class CdnCacheControl(RfcCase):

    def test_rfc9213_2_cdn_cache_control_stores_despite_cache_control_no_store(self):
        self.assertStored(self.path(), cc("no-store", headers={"CDN-Cache-Control": "max-age=60"}))

    def test_rfc9213_2_cdn_cache_control_no_store_wins_over_cache_control(self):
        self.assertNotStored(self.path(), cc("max-age=60", headers={"CDN-Cache-Control": "no-store"}))

    def test_rfc9213_2_cdn_cache_control_max_age_zero_wins_over_cache_control(self):
        self.assertValidated(self.path(), cc("max-age=600", headers={
            "CDN-Cache-Control": "max-age=0", "ETag": '"cdn-1"'}))

    def test_rfc9213_2_1_invalid_cdn_cache_control_is_ignored(self):
        invalid = ("No-Store", "no-store, ,", "no-store,", 'no-store="x', "no-store max-age=0")
        for i, value in enumerate(invalid):
            with self.subTest(cdn=value):
                self.assertStored(self.path("/ignored%d" % i), cc("max-age=60", headers={
                    "CDN-Cache-Control": value}))
        for i, value in enumerate(("MAX-AGE=60", "max-age=60,", "max-age=60;;")):
            with self.subTest(cdn=value):
                self.assertNotStored(self.path("/no-store%d" % i), cc("no-store", headers={
                    "CDN-Cache-Control": value}))


# ---------------------------------------------------------------------------
# Interim answers and message framing, as they pass through.

class Framing(RfcCase):

    def test_rfc9110_15_2_early_hints_are_forwarded(self):
        path = self.path()
        self.origin.config(path, raw="HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                                     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        out = raw(self.s.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        self.assertTrue(out.startswith(b"HTTP/1.1 103"), out[:300])
        hints, _, rest = out.partition(b"\r\n\r\n")
        self.assertIn(b"link: </style.css>; rel=preload", hints.lower())
        self.assertTrue(rest.startswith(b"HTTP/1.1 200"), out[:300])
        self.assertTrue(rest.endswith(b"hello"), out[-300:])

    def test_rfc9112_6_3_unknown_transfer_coding_read_until_close_is_passed_on(self):
        path = self.path()
        self.origin.config(path, close=True, raw="HTTP/1.1 200 OK\r\nTransfer-Encoding: x-custom\r\n"
                                                 "Connection: close\r\n\r\nhello, coded")
        out = raw(self.s.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), out[:300])
        self.assertIn(b"transfer-encoding: x-custom", head.lower())
        self.assertNotIn(b"content-length", head.lower(), "a length beside Transfer-Encoding")
        self.assertEqual(body, b"hello, coded")


if __name__ == "__main__":
    import lib
    lib.main()
