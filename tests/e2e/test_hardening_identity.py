"""End to end: one caller has one identity, the upstream never sees a caller posing as a
proxy, and error answers keep the gateway's internals to its log.

The origin (tests/e2e/origin.py) reflects every request it receives, so each test reads
what the upstream saw; the database classes run against real PostgreSQL.
"""

import json
import os
import re
import shutil
import socket
import tempfile
import time

import lib
from lib import SluiceTestCase
from origin import Origin

POLICY = r'''
tier "free" { limit = 4, window = "1h" }
identity {
  user   = header("X-User-Id", { integer = true }),
  tenant = header "X-Tenant-Id" { pattern = "[a-z0-9-]{1,16}" },
  default_tier = "free",
}
upstream "app" { url = "@ORIGIN@" }
endpoint "GET /who" { upstream = "app", cache = { ttl = "5m", key = "who:{user}" }, limit = "tier" }
endpoint "GET /echo" { upstream = "app" }
endpoint "GET /tenant" { upstream = "app", cache = { ttl = "5m", key = "t:{tenant}" } }
endpoint "GET /shared/*" { upstream = "app", cache = { ttl = "5m", key = "s:{path}", shared = true } }
'''

# Fields a caller could pose as a proxy with: the app would read them as the scheme, the
# client's address or the host, and its answer is stored for everyone.
POSING = {
    "X-Forwarded-Scheme": "https", "X-Forwarded-SSL": "on", "Front-End-Https": "on",
    "X-Url-Scheme": "https", "X-Real-IP": "6.6.6.6", "X-Original-Host": "evil.example",
    "Via": "1.1 evil-proxy", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "8443", "X-Client-IP": "6.6.6.6", "True-Client-IP": "6.6.6.6",
    "Forwarded": "for=6.6.6.6;proto=https",
}


def policy_dir(text, **subs):
    for k, v in subs.items():
        text = text.replace("@%s@" % k, str(v))
    d = tempfile.mkdtemp(prefix="sluice-ident-")
    with open(os.path.join(d, "policy.lua"), "w") as f:
        f.write(text)
    return d


def raw_request(port, head, timeout=5):
    """Sends one request head as bytes (repeated fields as written); returns (status, headers
    with lower-case names, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head.encode("latin-1"))
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        top, _, body = out.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(body) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split(" ")[1]), headers, body
    finally:
        s.close()


class UpstreamCase(SluiceTestCase):
    """An origin and a sluice in front of it, on POLICY (or the class's own)."""

    POLICY = POLICY

    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dead_port = lib.free_port()
        cls.dir = policy_dir(cls.POLICY, ORIGIN=cls.origin.url, DEAD=cls.dead_port)
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.s = cls.start(cls.dir)

    def setUp(self):
        self.origin.reset()  # counts and logs are per test

    def get(self, path, headers=None):
        return self.s.request("GET", path, headers or {})

    def problem(self, resp, status):
        st, h, b = resp
        self.assertEqual(st, status, b)
        self.assertEqual(h.get("content-type"), "application/problem+json", (h, b))
        p = json.loads(b)
        self.assertEqual(p["status"], status)
        return p


class OneIdentityPerCaller(UpstreamCase):
    def test_two_user_id_lines_are_refused_with_400(self):
        for second in ("X-User-Id: 2", "x-user-id: 1", "X-USER-ID: 1"):
            st, h, b = raw_request(self.s.port, "GET /who HTTP/1.1\r\nHost: x\r\nX-User-Id: 1\r\n"
                                   + second + "\r\n\r\n")
            self.assertEqual(st, 400, (second, b))
            self.assertEqual(h.get("content-type"), "application/problem+json")
            self.assertIn("more than once", json.loads(b)["detail"])
        self.assertEqual(self.origin.count("/who"), 0)

    def test_a_comma_joined_user_id_line_is_refused_with_400(self):
        p = self.problem(self.get("/echo", {"X-User-Id": "1, 2"}), 400)
        self.assertIn("holds a list", p["detail"])
        self.assertEqual(self.origin.count("/echo"), 0)

    def test_two_tenant_lines_are_refused_with_400(self):
        st, _, b = raw_request(self.s.port, "GET /tenant HTTP/1.1\r\nHost: x\r\n"
                               "X-Tenant-Id: acme\r\nX-Tenant-Id: beta\r\n\r\n")
        self.assertEqual(st, 400, b)
        self.assertEqual(self.origin.count("/tenant"), 0)

    def test_spellings_of_one_user_share_one_budget_and_one_entry(self):
        seen = []
        for u in ("5", "05", "005", "+5"):
            st, h, b = self.get("/who", {"X-User-Id": u})
            self.assertEqual(st, 200, b)
            seen.append((h["x-cache"], h["x-ratelimit-remaining"], json.loads(b)["user"]))
        # One entry (filled once, under the canonical value) and one counter of 4.
        self.assertEqual(seen, [("MISS", "3", "5"), ("HIT", "2", "5"), ("HIT", "1", "5"),
                                ("HIT", "0", "5")])
        self.assertEqual(self.origin.count("/who"), 1)
        self.problem(self.get("/who", {"X-User-Id": "0005"}), 429)
        # Another user has a budget of their own.
        st, h, _ = self.get("/who", {"X-User-Id": "6"})
        self.assertEqual((st, h["x-ratelimit-remaining"]), (200, "3"))

    def test_the_upstream_receives_the_canonical_value_once(self):
        st, _, b = self.get("/echo", {"X-User-Id": "+0042"})
        self.assertEqual(st, 200, b)
        o = json.loads(b)
        self.assertEqual([v for k, v in o["headers"] if k == "x-user-id"], ["42"])

    def test_values_not_of_the_declared_type_are_refused_with_400(self):
        for u in ("abc", "1.0", "1e3", "0x10", "99999999999999999999"):
            p = self.problem(self.get("/echo", {"X-User-Id": u}), 400)
            self.assertIn("not a whole number", p["detail"])
        for t in ("Acme", "acme!", "a" * 17):
            p = self.problem(self.get("/tenant", {"X-Tenant-Id": t}), 400)
            self.assertIn("pattern", p["detail"])
        self.assertEqual(self.origin.count("/echo") + self.origin.count("/tenant"), 0)
        st, _, b = self.get("/tenant", {"X-Tenant-Id": "acme-1"})
        self.assertEqual(st, 200, b)

    def test_explain_shows_the_canonical_value(self):
        import urllib.parse
        q = urllib.parse.urlencode([("request", "GET /who"), ("header", "X-User-Id: 007")])
        st, _, b = self.s.admin("GET", "/explain?" + q)
        self.assertEqual(st, 200, b)
        e = json.loads(b)
        self.assertEqual((e["caller"]["user"], e["cache"]["key"]), ("7", "who:7"))


class NoCallerPosesAsAProxy(UpstreamCase):
    def test_each_posing_header_is_not_seen_by_the_origin(self):
        for name, value in POSING.items():
            path = "/shared/" + name.lower()
            st, h, b = self.get(path, {name: value})
            self.assertEqual((st, h.get("x-cache")), (200, "MISS"), (name, b))
            seen = json.loads(b)["h"]
            self.assertNotEqual(seen.get(name.lower()), value, name)
            # Another caller is answered the stored reflection: it never held the value.
            st, h, b = self.get(path)
            self.assertEqual(h.get("x-cache"), "HIT", name)
            self.assertNotIn(value, [v for _, v in json.loads(b)["headers"]], name)
        self.assertEqual(self.origin.count("/shared/via"), 1)

    def test_the_origin_sees_the_proxy_fields_of_sluice_only(self):
        st, _, b = self.get("/echo", dict(POSING, **{"X-User-Id": "3"}))
        self.assertEqual(st, 200, b)
        pairs = json.loads(b)["headers"]
        names = [k for k, _ in pairs]
        for name in POSING:
            if name.lower() not in ("via", "x-forwarded-proto", "forwarded"):
                self.assertNotIn(name.lower(), names)
        self.assertEqual([v for k, v in pairs if k == "via"], ["1.1 sluice"])
        self.assertEqual([v for k, v in pairs if k == "x-forwarded-proto"], ["http"])
        self.assertEqual([v for k, v in pairs if k == "x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual([v for k, v in pairs if k == "forwarded"], ["for=127.0.0.1;proto=http"])

    def test_an_http10_request_is_received_as_10_in_via(self):
        st, _, b = raw_request(self.s.port, "GET /echo HTTP/1.0\r\nVia: 1.0 evil\r\n\r\n")
        self.assertEqual(st, 200, b)
        pairs = json.loads(b)["headers"]
        self.assertEqual([v for k, v in pairs if k == "via"], ["1.0 sluice"])


ALLOW_POLICY = r'''
identity { user = header("X-User-Id", { integer = true }) }
upstream "listed" { url = "@ORIGIN@", forward_headers = { "Accept", "authorization", "X-User-Id" } }
upstream "bare" { url = "@ORIGIN@", forward_headers = {} }
endpoint "* /listed/*" { upstream = "listed" }
endpoint "* /bare/*" { upstream = "bare" }
'''


class ForwardHeadersAllowList(UpstreamCase):
    POLICY = ALLOW_POLICY
    SENT = {"Accept": "application/json", "Authorization": "Bearer t", "X-User-Id": "012",
            "Accept-Language": "fr", "Cookie": "session=s", "X-Custom": "c",
            "X-Forwarded-Scheme": "https"}

    def seen(self, method, path, body=None, headers=None):
        st, _, b = self.s.request(method, path, dict(self.SENT, **(headers or {})), body)
        self.assertEqual(st, 200, b)
        return json.loads(b)["headers"]

    def test_only_listed_fields_and_those_sluice_sets_reach_the_upstream(self):
        pairs = self.seen("GET", "/listed/a")
        names = sorted(k for k, _ in pairs)
        self.assertEqual(names, ["accept", "authorization", "forwarded", "host", "via",
                                 "x-forwarded-for", "x-forwarded-proto", "x-request-id",
                                 "x-user-id"])
        self.assertIn(["x-user-id", "12"], pairs)  # the canonical value
        self.assertIn(["authorization", "Bearer t"], pairs)

    def test_an_empty_list_forwards_only_what_sluice_sets(self):
        names = sorted(k for k, _ in self.seen("GET", "/bare/a"))
        self.assertEqual(names, ["forwarded", "host", "via", "x-forwarded-for",
                                 "x-forwarded-proto", "x-request-id"])

    def test_a_forwarded_body_keeps_the_fields_that_describe_it(self):
        pairs = self.seen("POST", "/bare/w", body='{"a": 1}',
                          headers={"Content-Type": "application/json", "Content-Encoding": "identity"})
        names = [k for k, _ in pairs]
        self.assertIn(["content-type", "application/json"], pairs)
        self.assertIn(["content-encoding", "identity"], pairs)
        self.assertNotIn("cookie", names)
        self.assertNotIn("x-user-id", names)
        # Without a body, they are fields like any other.
        names = [k for k, _ in self.seen("GET", "/bare/r", headers={"Content-Type": "text/plain"})]
        self.assertNotIn("content-type", names)


ERRORS_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "down" { url = "http://127.0.0.1:@DEAD@" }
upstream "slow" { url = "@ORIGIN@", timeout = "300ms" }
upstream "app" { url = "@ORIGIN@" }
endpoint "GET /broken" { sql = "SELECT secret_column FROM no_such_table_x" }
endpoint "GET /cast" { sql = "SELECT $1::bigint AS v", args = { "{user}" } }
endpoint "POST /dup" {
  sql = "INSERT INTO users (id, name, email) VALUES (1, 'x', 'dup-secret@example.com')",
}
endpoint "POST /needs" { sql = "SELECT $1::text AS v", args = { "{body.name}" } }
endpoint "GET /down" { upstream = "down" }
endpoint "GET /slow" { upstream = "slow" }
endpoint "GET /app" { upstream = "app" }
'''

HEX_ID = re.compile(r"^[0-9a-f]{16}$")


class ErrorsKeepInternalsInTheLog(SluiceTestCase):
    """A database's error text, its SQLSTATE and an upstream's address go to the log with the
    request id; the client gets a generic detail and that id."""

    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dead_port = lib.free_port()
        cls.db = lib.crm_database()
        cls.dir = policy_dir(ERRORS_POLICY, ORIGIN=cls.origin.url, DEAD=cls.dead_port)
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        # GET /broken's statement fails on purpose: the start must not check it first.
        cls.s = cls.start(cls.dir, database=cls.db, args=["--no-sql-check"])

    def failed(self, method, path, status, detail, leaks, headers=None, body=None):
        """The answer: the status, exactly `detail`, a request id in the body and header that
        the log quotes next to what the client must not see (`leaks`)."""
        st, h, b = self.s.request(method, path, headers, body)
        self.assertEqual(st, status, b)
        self.assertEqual(h.get("content-type"), "application/problem+json")
        p = json.loads(b)
        self.assertEqual(p["detail"], detail)
        rid = p["request_id"]
        self.assertEqual(h.get("x-request-id"), rid)
        for leak in leaks:
            self.assertNotIn(leak.encode(), b)
            self.assertNotIn(leak, json.dumps(h))
        line = self.log_line(rid)
        for leak in leaks:
            self.assertIn(leak, line)
        return rid

    def log_line(self, rid, timeout=5.0):
        end = time.monotonic() + timeout
        while True:
            for line in self.s.read_log().splitlines():
                if ("request %s:" % rid) in line:
                    return line
            if time.monotonic() > end:
                self.fail("no log line has request %s:\n%s" % (rid, self.s.read_log()[-2000:]))
            time.sleep(0.02)

    def test_a_failed_statement_is_502_without_the_database_text(self):
        rid = self.failed("GET", "/broken", 502, "the database failed the statement",
                          ["no_such_table_x", "42P01"])
        self.assertRegex(rid, HEX_ID)

    def test_a_value_the_database_refuses_is_400_without_its_text(self):
        self.failed("GET", "/cast", 400, "the database refused a value of the request",
                    ["invalid input syntax", "22P02"], headers={"X-User-Id": "abc"})

    def test_a_conflict_is_409_without_the_constraint_or_the_row(self):
        self.failed("POST", "/dup", 409, "the request conflicts with data the database holds",
                    ["users_pkey", "23505"], body={})

    def test_an_upstream_down_is_502_without_its_name_or_address(self):
        rid = self.failed("GET", "/down", 502, "the upstream is unavailable",
                          ["127.0.0.1:%d" % self.dead_port, '"down"'])
        self.assertRegex(rid, HEX_ID)

    def test_an_upstream_past_its_timeout_is_504_without_its_address(self):
        self.failed("GET", "/slow?delay_ms=2000", 504, "the upstream did not answer in time",
                    [":%d" % self.origin.port, '"slow"'])

    def test_a_missing_body_field_still_names_the_field(self):
        st, h, b = self.s.request("POST", "/needs", {}, {"other": 1})
        self.assertEqual(st, 400, b)
        p = json.loads(b)
        self.assertEqual(p["detail"], "missing field 'name' in the JSON body")
        self.assertRegex(p["request_id"], HEX_ID)

    def test_each_error_has_its_own_id(self):
        ids = {json.loads(self.s.request("GET", "/down")[2])["request_id"] for _ in range(5)}
        self.assertEqual(len(ids), 5)

    def test_a_safe_client_request_id_is_used_and_passed_on(self):
        rid = "client-id_1.2:3"
        st, h, b = self.s.request("GET", "/down", {"X-Request-Id": rid})
        self.assertEqual((st, json.loads(b)["request_id"], h.get("x-request-id")), (502, rid, rid))
        self.assertIn("upstream", self.log_line(rid))
        st, _, b = self.s.request("GET", "/app", {"X-Request-Id": rid})
        self.assertEqual(st, 200, b)
        self.assertEqual([v for k, v in json.loads(b)["headers"] if k == "x-request-id"], [rid])

    def test_an_unsafe_or_repeated_client_request_id_is_replaced(self):
        for bad in ("has space", "a\"b", "x" * 129, "semi;colon"):
            st, h, b = self.s.request("GET", "/down", {"X-Request-Id": bad})
            rid = json.loads(b)["request_id"]
            self.assertRegex(rid, HEX_ID, bad)
            self.assertEqual(h.get("x-request-id"), rid)
            self.assertNotIn(bad, self.s.read_log())
        st, _, b = raw_request(self.s.port, "GET /app HTTP/1.1\r\nHost: x\r\n"
                               "X-Request-Id: one\r\nX-Request-Id: two\r\n\r\n")
        self.assertEqual(st, 200, b)
        sent = [v for k, v in json.loads(b)["headers"] if k == "x-request-id"]
        self.assertEqual(len(sent), 1)
        self.assertRegex(sent[0], HEX_ID)


class OneIdentityInTheDatabase(SluiceTestCase):
    """The CRM example declares its user an integer: "01", "001" and "+1" are user 1 in
    PostgreSQL, and now in the cache and the limits too."""

    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.s = cls.start(os.path.join(lib.CRM, "policies"), database=cls.db)

    def test_spellings_of_user_1_share_its_entry_and_a_write_by_1_invalidates_it(self):
        path = "/api/crm?type=contacts"
        st, h, first = self.s.get(path, user="1")
        self.assertEqual((st, h["x-cache"]), (200, "MISS"), first)
        remaining = int(h["x-ratelimit-remaining"])
        for i, u in enumerate(("01", "001", "+1"), 1):
            st, h, b = self.s.get(path, user=u)
            self.assertEqual((st, h["x-cache"], b), (200, "HIT", first), u)
            self.assertEqual(int(h["x-ratelimit-remaining"]), remaining - i, u)
        name = "Written by one %d" % time.time_ns()
        st, _, b = self.s.request("POST", "/api/crm/contacts", {"X-User-Id": "1"},
                                  {"name": name, "email": "one@example.com", "company": "One"})
        self.assertEqual(st, 201, b)
        for u in ("+1", "001"):
            st, h, b = self.s.get(path, user=u)
            self.assertEqual(st, 200, b)
            self.assertIn(name, [r["name"] for r in json.loads(b)], u)
        self.assertEqual(h["x-cache"], "HIT")  # "+1" filled it again, "001" reads that fill

    def test_spellings_of_a_user_get_its_plan_and_one_counter_of_it(self):
        # User 4 is on the enterprise plan; the tier lookup casts $1::bigint, as the keys now do.
        left = []
        for u in ("+004", "4", "0004"):
            st, h, b = self.s.get("/api/crm?type=projects", user=u)
            self.assertEqual(st, 200, b)
            self.assertTrue(h["ratelimit-policy"].startswith('"enterprise"'), h)
            left.append(int(h["x-ratelimit-remaining"]))
        self.assertEqual(left, [left[0], left[0] - 1, left[0] - 2])


if __name__ == "__main__":
    lib.main()
