"""End to end: CORS (cors = { ... }, set-wide cors { ... }) and header rules (request_headers,
response_headers), the real binary in front of origin.py and PostgreSQL.

Sections cited: the Fetch standard's CORS protocol ("CORS-preflight request", "HTTP
responses", "CORS protocol and HTTP caches") and RFC 9110.
"""

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import textwrap

import lib
from lib import SluiceTestCase
from origin import Origin

APP = "https://app.example.com"
EVIL = "https://evil.example.com"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

POLICY = """
tier "free" { limit = 1000, window = "1h" }
identity { user = header "X-User-Id" }

upstream "app" {
  url = "%(origin)s",
  request_headers = { ["X-Source"] = "sluice", ["X-Debug"] = false },
  response_headers = { ["Server"] = false },
}

cors {
  origins = { "https://app.example.com" },
  methods = { "GET", "POST" },
  headers = { "Content-Type", "X-Trace" },
  expose = { "X-Cache" },
  credentials = true,
  max_age = "10m",
}

endpoint "GET /api/tickets" {
  upstream = "app",
  cache = { ttl = "5m", key = "tickets:{user}" },
  request_headers = { ["X-Caller"] = "user-{user}" },
  response_headers = { ["Cache-Control"] = "public, max-age=60" },
}

endpoint "GET /api/limited" {
  upstream = "app",
  cache = { ttl = "5m", key = "limited:{user}" },
  limit = { limit = 2, window = "1m", key = "limited:{user}" },
}

endpoint "GET /api/open" {
  upstream = "app",
  cache = { ttl = "5m", key = "open", shared = true },
  cors = { origins = "*", headers = "*" },
}

endpoint "GET /api/plain" { upstream = "app", cors = false }
"""

SQL_POLICY = """
tier "free" { limit = 1000, window = "1h" }
identity { user = header "X-User-Id" }
cors { origins = { "https://app.example.com" } }

endpoint "GET /api/one" {
  sql = "SELECT 1 AS one",
  one = true,
  cache = { ttl = "5m", key = "one:{user}" },
  response_headers = { ["Cache-Control"] = "private, max-age=5", ["X-Tier"] = "{tier}" },
}
"""


def request(port, method, path, headers=None):
    """(status, [(name lowercased, value), ...], body) on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, [(k.lower(), v) for k, v in r.getheaders()], body
    finally:
        conn.close()


def values(fields, name):
    return [v for k, v in fields if k == name]


def one(fields, name):
    vs = values(fields, name)
    return vs[0] if len(vs) == 1 else (None if not vs else vs)


def varies_on_origin(fields):
    return any("origin" in [x.strip().lower() for x in v.split(",")] for v in values(fields, "vary"))


def write_policy(text):
    d = tempfile.mkdtemp(prefix="sluice-cors-")
    with open(os.path.join(d, "policy.lua"), "w") as f:
        f.write(text)
    return d


class Cors(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        # An upstream that says its own CORS: sluice's replace it on endpoints with cors.
        cls.origin.config("/api/tickets", headers={"Access-Control-Allow-Origin": "*"})
        cls.dir = write_policy(POLICY % {"origin": cls.origin.url})
        cls.s = cls.start(cls.dir)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.origin.kill()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def preflight(self, path, origin=APP, method="GET", asked=None):
        h = {"Origin": origin, "Access-Control-Request-Method": method}
        if asked:
            h["Access-Control-Request-Headers"] = asked
        return request(self.s.port, "OPTIONS", path, h)

    def test_preflight_from_listed_origin_gets_every_allow_field(self):
        """Fetch, CORS protocol, "HTTP responses" to a CORS-preflight request."""
        before = self.origin.count("/api/tickets")
        st, f, body = self.preflight("/api/tickets", asked="content-type")
        self.assertEqual(st, 204, body)
        self.assertEqual(body, b"")
        self.assertEqual(one(f, "access-control-allow-origin"), APP)
        self.assertEqual(one(f, "access-control-allow-methods"), "GET, POST")
        self.assertEqual(one(f, "access-control-allow-headers"), "Content-Type, X-Trace")
        self.assertEqual(one(f, "access-control-max-age"), "600")
        self.assertEqual(one(f, "access-control-allow-credentials"), "true")
        self.assertEqual(one(f, "vary"), PREFLIGHT_VARY)
        self.assertIsNone(one(f, "content-length"))  # RFC 9110 8.6: none in a 204
        self.assertEqual(self.origin.count("/api/tickets"), before, "a preflight was forwarded")

    def test_preflight_from_unlisted_origin_gets_no_allow_fields(self):
        st, f, body = self.preflight("/api/tickets", origin=EVIL)
        self.assertEqual(st, 403, body)
        self.assertEqual(one(f, "content-type"), "application/problem+json")
        self.assertFalse([k for k, _ in f if k.startswith("access-control-")], f)
        self.assertEqual(one(f, "vary"), PREFLIGHT_VARY)

    def test_preflight_for_unlisted_method_gets_no_allow_fields(self):
        st, f, _ = self.preflight("/api/tickets", method="DELETE")
        # No DELETE route: an OPTIONS routed as it is (405 with Allow), no CORS.
        self.assertEqual(st, 405)
        self.assertFalse([k for k, _ in f if k.startswith("access-control-")], f)

    def test_preflights_are_neither_forwarded_nor_counted_against_a_limit(self):
        before = self.origin.count("/api/limited")
        for _ in range(5):
            self.assertEqual(self.preflight("/api/limited")[0], 204)
        h = {"X-User-Id": "limits", "Origin": APP}
        self.assertEqual(request(self.s.port, "GET", "/api/limited", h)[0], 200)
        self.assertEqual(request(self.s.port, "GET", "/api/limited", h)[0], 200)
        st, f, _ = request(self.s.port, "GET", "/api/limited", h)
        self.assertEqual(st, 429, "the 2/min limit was consumed by preflights, or not at all")
        # A refusal is readable by the page that asked: it carries the CORS fields too.
        self.assertEqual(one(f, "access-control-allow-origin"), APP)
        self.assertEqual(self.origin.count("/api/limited"), before + 1)  # a MISS, then a HIT

    def test_actual_answers_carry_cors_for_listed_origin_from_origin_and_cache(self):
        """Fetch, CORS protocol, "CORS protocol and HTTP caches": one entry serves every origin."""
        user = {"X-User-Id": "actual"}
        st, f, _ = request(self.s.port, "GET", "/api/tickets", dict(user, Origin=APP))
        self.assertEqual((st, one(f, "x-cache")), (200, "MISS"))
        self.assertEqual(one(f, "access-control-allow-origin"), APP)  # the upstream's "*" dropped
        self.assertEqual(one(f, "access-control-allow-credentials"), "true")
        self.assertEqual(one(f, "access-control-expose-headers"), "X-Cache")
        self.assertTrue(varies_on_origin(f), f)

        st, f, _ = request(self.s.port, "GET", "/api/tickets", dict(user, Origin=EVIL))
        self.assertEqual((st, one(f, "x-cache")), (200, "HIT"))
        self.assertFalse([k for k, _ in f if k.startswith("access-control-")], f)
        self.assertTrue(varies_on_origin(f), f)

        st, f, _ = request(self.s.port, "GET", "/api/tickets", user)
        self.assertEqual((st, one(f, "x-cache")), (200, "HIT"))
        self.assertIsNone(one(f, "access-control-allow-origin"))
        self.assertTrue(varies_on_origin(f), f)

    def test_hit_for_listed_origin_after_miss_without_origin(self):
        user = {"X-User-Id": "hit-after"}
        st, f, _ = request(self.s.port, "GET", "/api/tickets", user)
        self.assertEqual((st, one(f, "x-cache"), one(f, "access-control-allow-origin")),
                         (200, "MISS", None))
        st, f, _ = request(self.s.port, "GET", "/api/tickets", dict(user, Origin=APP))
        self.assertEqual((st, one(f, "x-cache"), one(f, "access-control-allow-origin")),
                         (200, "HIT", APP))

    def test_any_origin_answers_star_and_echoes_asked_headers(self):
        st, f, _ = self.preflight("/api/open", origin=EVIL, asked="x-one, x-two")
        self.assertEqual(st, 204)
        self.assertEqual(one(f, "access-control-allow-origin"), "*")
        self.assertEqual(one(f, "access-control-allow-methods"), "GET")  # the method asked
        self.assertEqual(one(f, "access-control-allow-headers"), "x-one, x-two")
        self.assertIsNone(one(f, "access-control-allow-credentials"))
        st, f, _ = request(self.s.port, "GET", "/api/open", {"Origin": EVIL})
        self.assertEqual(st, 200)
        self.assertEqual(one(f, "access-control-allow-origin"), "*")
        self.assertFalse(varies_on_origin(f), "a \"*\" answer does not depend on the Origin")

    def test_cors_false_turns_the_set_default_off(self):
        st, f, _ = self.preflight("/api/plain")
        self.assertEqual(st, 405)  # routed as any OPTIONS: the endpoint takes GET only
        self.assertIn("GET", one(f, "allow"))
        st, f, _ = request(self.s.port, "GET", "/api/plain", {"Origin": APP})
        self.assertEqual(st, 200)
        self.assertFalse([k for k, _ in f if k.startswith("access-control-")], f)
        self.assertFalse(varies_on_origin(f))

    def test_request_rules_set_remove_and_expand_templates(self):
        st, f, body = request(self.s.port, "GET", "/api/tickets",
                              {"X-User-Id": "req-rules", "X-Debug": "1", "X-Source": "client"})
        self.assertEqual(st, 200, body)
        seen = self.origin.log("/api/tickets")[-1]["headers"]
        names = [k for k, _ in seen]
        self.assertNotIn("x-debug", names)  # removed by the upstream's rule
        self.assertEqual([v for k, v in seen if k == "x-source"], ["sluice"])  # replaced
        self.assertEqual([v for k, v in seen if k == "x-caller"], ["user-req-rules"])  # {user}

    def test_response_rules_apply_from_origin_and_from_cache(self):
        user = {"X-User-Id": "resp-rules"}
        for want in ("MISS", "HIT"):
            st, f, _ = request(self.s.port, "GET", "/api/tickets", user)
            self.assertEqual((st, one(f, "x-cache")), (200, want))
            self.assertIsNone(one(f, "server"), "the upstream's Server was not removed")
            self.assertEqual(one(f, "cache-control"), "public, max-age=60")
        # The upstream does send one: the rule removed it, on every endpoint of the upstream.
        self.assertIsNotNone(one(request(self.origin.port, "GET", "/api/plain")[1], "server"))
        st, f, _ = request(self.s.port, "GET", "/api/plain")
        self.assertIsNone(one(f, "server"))


class CorsSql(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.dir = write_policy(SQL_POLICY)
        cls.s = cls.start(cls.dir, database=cls.db)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def test_sql_answers_get_response_rules_and_cors(self):
        h = {"X-User-Id": "7", "Origin": APP}
        for want in ("MISS", "HIT"):
            st, f, body = request(self.s.port, "GET", "/api/one", h)
            self.assertEqual((st, one(f, "x-cache")), (200, want), body)
            self.assertEqual(one(f, "cache-control"), "private, max-age=5")
            self.assertEqual(one(f, "x-tier"), "free")
            self.assertEqual(one(f, "access-control-allow-origin"), APP)
            self.assertTrue(varies_on_origin(f))

    def test_sql_preflight_answered_without_the_database(self):
        st, f, _ = request(self.s.port, "OPTIONS", "/api/one",
                           {"Origin": APP, "Access-Control-Request-Method": "GET"})
        self.assertEqual(st, 204)
        self.assertEqual(one(f, "access-control-allow-methods"), "GET")


class CheckRefusals(SluiceTestCase):
    BAD = textwrap.dedent("""\
        identity { user = header "X-User-Id" }
        endpoint "GET /a" { body = "{}", cors = { origins = "*", credentials = true } }
        endpoint "GET /b" { body = "{}", cors = { origins = { "https://app.example.com/" } } }
        endpoint "GET /c" { body = "{}", response_headers = { ["X-User-Id"] = "x" } }
        endpoint "GET /d" { body = "{}", response_headers = { ["Transfer-Encoding"] = false } }
        endpoint "GET /e" { body = "{}", response_headers = { ["Bad Name"] = "x" } }
        endpoint "GET /f" { body = "{}", request_headers = { ["X-A"] = "b" } }
        """)

    def test_check_refuses_each_with_file_and_line(self):
        d = write_policy(self.BAD)
        try:
            p = subprocess.run([lib.BIN, "check", d], capture_output=True, text=True, timeout=20)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        out = p.stdout + p.stderr
        f = os.path.join(d, "policy.lua")
        for line, text in [
            (2, 'cors.credentials: true cannot go with origins = "*"'),
            (3, 'cors.origins[1]: "https://app.example.com/" is not an origin'),
            (4, '"X-User-Id" cannot be set or removed here: it is read by the identity block'),
            (5, '"Transfer-Encoding" cannot be set or removed here: it is hop-by-hop'),
            (6, 'expected a header field name (an RFC 9110 token), got "Bad Name"'),
            (7, 'request_headers: only goes with upstream = "NAME"'),
        ]:
            self.assertTrue(any(l.startswith("%s:%d: " % (f, line)) and text in l
                                for l in out.splitlines()), (line, text, out))

    def test_explain_shows_a_preflight_answered_by_sluice(self):
        d = write_policy('cors { origins = { "https://app.example.com" } }\n'
                         'endpoint "GET /a" { body = "{}" }\n')
        try:
            def explain(origin):
                p = subprocess.run([lib.BIN, "explain", d, "OPTIONS /a", "-H", "Origin: " + origin,
                                    "-H", "Access-Control-Request-Method: GET"],
                                   capture_output=True, text=True, timeout=20)
                self.assertEqual(p.returncode, 0, p.stderr)
                return json.loads(p.stdout)
            o = explain(APP)
            self.assertEqual((o["status"], o["preflight"], o["endpoint"]["name"]), (204, True, "GET /a"))
            self.assertEqual(explain(EVIL)["status"], 403)
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    lib.main()
