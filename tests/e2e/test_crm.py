"""End to end: the example CRM policies served by the real binary against real PostgreSQL."""

import json
import os
import socket
import subprocess
import threading
import time

import lib
from lib import SluiceTestCase, status_of

POLICIES = os.path.join(lib.CRM, "policies")

# Users of the seed: 1 free, 2 starter, 3 professional, 4 enterprise.
FREE, STARTER, PRO, ENTERPRISE = 1, 2, 3, 4


class CacheAndData(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.s = cls.start(POLICIES, database=cls.db)

    def test_miss_then_hit_with_identical_body(self):
        st1, h1, b1 = self.s.get("/api/crm?type=contacts", user=PRO)
        st2, h2, b2 = self.s.get("/api/crm?type=contacts", user=PRO)
        self.assertEqual(st1, 200)
        self.assertEqual(st2, 200)
        self.assertEqual(h1["x-cache"], "MISS")
        self.assertEqual(h2["x-cache"], "HIT")
        self.assertEqual(b1, b2)
        self.assertIn("age", h2)
        self.assertEqual(h2["content-type"], "application/json")
        rows = json.loads(b1)
        self.assertIsInstance(rows, list)
        self.assertGreater(len(rows), 0)

    def test_rows_have_json_types(self):
        st, _, b = self.s.get("/api/crm?type=deals", user=PRO)
        self.assertEqual(st, 200)
        rows = json.loads(b)
        self.assertGreater(len(rows), 0)
        self.assertIsInstance(rows[0]["id"], int)
        self.assertIsInstance(rows[0]["closed"], bool)

    def test_dashboard_is_one_object(self):
        st, h, b = self.s.get("/api/dashboard", user=PRO)
        self.assertEqual(st, 200, b)
        self.assertIsInstance(json.loads(b), dict)

    def test_two_users_never_see_each_others_data(self):
        owners = {}
        for user in (STARTER, PRO, STARTER, PRO):
            st, _, b = self.s.get("/api/crm?type=contacts", user=user)
            self.assertEqual(st, 200)
            rows = json.loads(b)
            self.assertGreater(len(rows), 0)
            ids = ",".join(str(r["id"]) for r in rows)
            owners_in_db = lib.psql("SELECT DISTINCT owner_id FROM contacts WHERE id IN (%s)" % ids,
                                    db=self.db)
            self.assertEqual(owners_in_db, str(user))
            owners.setdefault(user, b)
            self.assertEqual(owners[user], b)
        self.assertNotEqual(owners[STARTER], owners[PRO])

    def test_write_then_read_shows_the_write(self):
        user = ENTERPRISE
        st, h, _ = self.s.get("/api/crm?type=contacts", user=user)
        st, h, _ = self.s.get("/api/crm?type=contacts", user=user)
        self.assertEqual(h["x-cache"], "HIT")
        name = "Ada Lovelace %d" % time.time_ns()
        st, h, b = self.s.request("POST", "/api/crm/contacts",
                                  {"X-User-Id": str(user)},
                                  {"name": name, "email": "ada@example.com", "company": "Engines"})
        self.assertEqual(st, 201, b)
        created = json.loads(b)
        if isinstance(created, list):
            created = created[0]
        self.assertEqual(created["name"], name)
        self.assertEqual(created["owner_id"], user)
        st, h, b = self.s.get("/api/crm?type=contacts", user=user)
        self.assertEqual(st, 200)
        self.assertEqual(h["x-cache"], "MISS")
        self.assertIn(name, [r["name"] for r in json.loads(b)])

    def test_write_invalidates_the_dashboard_too(self):
        user = ENTERPRISE
        self.s.get("/api/dashboard", user=user)
        st, h, _ = self.s.get("/api/dashboard", user=user)
        self.assertEqual(h["x-cache"], "HIT")
        st, _, b = self.s.request("POST", "/api/crm/deals", {"X-User-Id": str(user)},
                                  {"title": "Big one", "amount": 1000, "stage": "lead",
                                   "contact_id": None})
        self.assertIn(st, (200, 201), b)
        st, h, _ = self.s.get("/api/dashboard", user=user)
        self.assertEqual(h["x-cache"], "MISS")

    def test_malformed_json_body_is_400_problem(self):
        st, h, b = self.s.request("POST", "/api/crm/contacts",
                                  {"X-User-Id": str(PRO), "Content-Type": "application/json"},
                                  '{"name": "x", ')
        self.assertEqual(st, 400)
        self.assertEqual(h["content-type"], "application/problem+json")
        p = json.loads(b)
        self.assertEqual(p["status"], 400)
        self.assertIn("JSON", p["detail"])

    def test_missing_field_is_400(self):
        st, h, b = self.s.request("POST", "/api/crm/contacts", {"X-User-Id": str(PRO)},
                                  {"email": "x@example.com"})
        self.assertEqual(st, 400, b)
        self.assertEqual(h["content-type"], "application/problem+json", (h, b))
        self.assertTrue(b.startswith(b"{"), (h, b))
        self.assertIn("name", json.loads(b)["detail"], (h, b))

    def test_error_answers_carry_no_header_of_an_earlier_request(self):
        # Per-request memory is reused: an error answer must hold its own headers only.
        for _ in range(50):
            self.s.get("/api/crm?type=projects", user=PRO)
            st, h, b = self.s.request("POST", "/api/crm/contacts", {"X-User-Id": str(PRO)},
                                      {"email": "x@example.com"})
            self.assertEqual(st, 400)
            self.assertNotIn("x-cache", h)
            self.assertNotIn("age", h)
            self.assertEqual(json.loads(b)["status"], 400)

    def test_unknown_route_is_404_problem(self):
        st, h, b = self.s.get("/api/nothing-here", user=PRO)
        self.assertEqual(st, 404)
        self.assertEqual(h["content-type"], "application/problem+json")
        self.assertEqual(json.loads(b)["status"], 404)

    def test_wrong_method_is_405_with_allow(self):
        st, h, b = self.s.request("DELETE", "/api/dashboard", {"X-User-Id": str(PRO)})
        self.assertEqual(st, 405)
        self.assertIn("GET", h["allow"])
        self.assertEqual(json.loads(b)["status"], 405)

    def test_oversized_headers_are_431(self):
        raw = self.s.raw(b"GET /api/dashboard HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 +
                         b"\r\n\r\n")
        self.assertEqual(status_of(raw), 431)

    def test_oversized_body_is_413(self):
        raw = self.s.raw(b"POST /api/crm/contacts HTTP/1.1\r\nHost: x\r\nX-User-Id: 3\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{")
        self.assertEqual(status_of(raw), 413)

    def test_smuggling_shapes_are_400(self):
        shapes = [
            b"POST /api/crm/contacts HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /api/crm/contacts HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            b"GET /api/dashboard HTTP/1.1\r\nHost : x\r\n\r\n",
            b"POST /api/crm/contacts HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc",
            b"GET /api/dashboard HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
            b"GET /api/dashboard HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
            b"POST /api/crm/contacts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n",
        ]
        for raw in shapes:
            with self.subTest(raw=raw[:60]):
                self.assertEqual(status_of(self.s.raw(raw)), 400)

    def test_chunked_body_is_accepted(self):
        body = json.dumps({"name": "Chunky", "email": "c@example.com", "company": "C"}).encode()
        raw = (b"POST /api/crm/contacts HTTP/1.1\r\nHost: x\r\nX-User-Id: 3\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" +
               b"%x\r\n%s\r\n" % (10, body[:10]) +
               b"%x\r\n%s\r\n" % (len(body) - 10, body[10:]) + b"0\r\n\r\n")
        resp = self.s.raw(raw)
        self.assertEqual(status_of(resp), 201, resp)
        self.assertIn(b"Chunky", resp)

    def test_request_trickled_in_small_pieces(self):
        body = json.dumps({"name": "Slow", "email": "s@example.com", "company": "S"}).encode()
        raw = (b"POST /api/crm/contacts HTTP/1.1\r\nHost: x\r\nX-User-Id: 3\r\n"
               b"Content-Type: application/json\r\nConnection: close\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        sock = socket.create_connection(("127.0.0.1", self.s.port), timeout=10)
        try:
            for i in range(0, len(raw), 7):
                sock.sendall(raw[i:i + 7])
                time.sleep(0.005)
            resp = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                resp += chunk
        finally:
            sock.close()
        self.assertEqual(status_of(resp), 201, resp)
        self.assertIn(b'"Slow"', resp)

    def test_many_pipelined_requests_from_a_slow_reader_are_all_answered(self):
        # Megabytes of answers to a peer that reads late: the server stops reading while its
        # output is above a high-water mark, then goes on; every answer arrives, in order.
        n = 2000
        self.s.get("/api/crm?type=interactions", user=ENTERPRISE)
        one = b"GET /api/crm?type=interactions HTTP/1.1\r\nHost: x\r\nX-User-Id: 4\r\n\r\n"
        sock = socket.create_connection(("127.0.0.1", self.s.port), timeout=20)
        try:
            sender = threading.Thread(target=sock.sendall, args=(one * n + b"GET /nope HTTP/1.1\r\n"
                                                                  b"Host: x\r\nConnection: close\r\n\r\n",))
            sender.start()
            time.sleep(1.0)  # let the server fill its side first
            resp = b""
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                resp += chunk
            sender.join()
        finally:
            sock.close()
        self.assertEqual(resp.count(b"HTTP/1.1 200 OK\r\n"), n)
        last = resp[resp.rindex(b"HTTP/1.1 "):]  # the 404 comes last, with its request id
        self.assertTrue(last.startswith(b"HTTP/1.1 404"), resp[-300:])
        self.assertIn(b'"detail":"no endpoint matches this path","request_id":', last)

    def test_pipelined_requests_answered_in_order(self):
        raw = b"".join(b"GET /api/crm?type=%s HTTP/1.1\r\nHost: x\r\nX-User-Id: 3\r\n\r\n" % t
                       for t in (b"contacts", b"projects", b"deals"))
        raw += b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        resp = self.s.raw(raw)
        self.assertEqual(resp.count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(resp.count(b"HTTP/1.1 404"), 1)
        self.assertLess(resp.index(b"HTTP/1.1 200"), resp.index(b"HTTP/1.1 404"))


class RateLimits(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.s = cls.start(POLICIES, database=cls.db)

    def test_free_user_gets_429_on_the_101st_request(self):
        last = None
        for i in range(100):
            path = "/api/crm?type=%s" % ("contacts", "projects", "deals", "interactions")[i % 4]
            st, h, _ = self.s.get(path, user=FREE)
            self.assertEqual(st, 200, "request %d" % (i + 1))
            self.assertEqual(h["x-ratelimit-limit"], "100")
            self.assertEqual(int(h["x-ratelimit-remaining"]), 99 - i)
            last = h
        self.assertEqual(last["ratelimit-policy"], '"free";q=100;w=3600')
        st, h, b = self.s.get("/api/crm?type=contacts", user=FREE)
        self.assertEqual(st, 429)
        self.assertEqual(h["content-type"], "application/problem+json")
        self.assertEqual(h["x-ratelimit-remaining"], "0")
        self.assertGreater(int(h["retry-after"]), 0)
        self.assertLessEqual(int(h["retry-after"]), 3600)
        self.assertTrue(h["ratelimit"].startswith('"free";r=0;t='))
        p = json.loads(b)
        self.assertEqual(p["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded")
        self.assertEqual(p["status"], 429)
        self.assertEqual(p["violated-policies"], ["free"])
        # A professional user goes on.
        for _ in range(110):
            st, h, _ = self.s.get("/api/crm?type=contacts", user=PRO)
            self.assertEqual(st, 200)
        self.assertEqual(h["x-ratelimit-limit"], "10000")

    def test_expensive_endpoint_is_10_per_minute_on_top_of_the_tier(self):
        for i in range(10):
            st, h, b = self.s.get("/api/reports/pipeline", user=ENTERPRISE)
            self.assertEqual(st, 200, b)
        self.assertIn('"expensive";q=10;w=60', h["ratelimit-policy"])
        st, h, b = self.s.get("/api/reports/pipeline", user=ENTERPRISE)
        self.assertEqual(st, 429)
        self.assertEqual(json.loads(b)["violated-policies"], ["expensive"])
        # The denied request did not count against the tier either.
        st, h, _ = self.s.get("/api/crm?type=contacts", user=ENTERPRISE)
        self.assertEqual(st, 200)
        self.assertEqual(int(h["x-ratelimit-remaining"]), 100000 - 11)

    def test_anonymous_callers_are_limited_by_address(self):
        st, h, _ = self.s.get("/api/crm?type=contacts")
        self.assertEqual(st, 200)
        self.assertEqual(h["x-ratelimit-limit"], "100")


class TtlExpiry(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.dir = lib.copy_policies(POLICIES)
        with open(os.path.join(cls.dir, "90-short.lua"), "w") as f:
            f.write('endpoint "GET /api/short" {\n'
                    '  sql = "SELECT count(*) AS n FROM contacts WHERE owner_id = $1::bigint",\n'
                    '  args = { "{user}" },\n'
                    '  one = true,\n'
                    '  cache = { ttl = "1s", key = "short:{user}", tags = { "crm:{user}" } },\n'
                    '  limit = "tier",\n'
                    '}\n')
        cls.s = cls.start(cls.dir, database=cls.db)

    def test_entry_expires_after_its_ttl(self):
        _, h1, _ = self.s.get("/api/short", user=PRO)
        _, h2, _ = self.s.get("/api/short", user=PRO)
        self.assertEqual((h1["x-cache"], h2["x-cache"]), ("MISS", "HIT"))
        time.sleep(1.3)
        _, h3, _ = self.s.get("/api/short", user=PRO)
        self.assertEqual(h3["x-cache"], "MISS")


class BrokenPolicy(SluiceTestCase):
    def test_check_and_serve_report_file_and_line(self):
        d = lib.copy_policies(POLICIES)
        with open(os.path.join(d, "50-broken.lua"), "w") as f:
            f.write('\n\nendpoint "GET /api/broken" {\n  cache = { tll = "5m" },\n}\n')
        r = subprocess.run([lib.BIN, "check", d], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stdout, r"50-broken\.lua:3: ")
        r = subprocess.run([lib.BIN, "serve", "--listen", "127.0.0.1:0", d],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"50-broken\.lua:3: ")

    def test_check_accepts_the_example(self):
        r = subprocess.run([lib.BIN, "check", POLICIES], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout, "")


class GracefulStop(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.dir = lib.copy_policies(POLICIES)
        with open(os.path.join(cls.dir, "90-slow.lua"), "w") as f:
            f.write('endpoint "GET /api/slow" {\n'
                    '  sql = "SELECT true AS slept, $1::bigint AS u FROM pg_sleep(0.5)",\n'
                    '  args = { "{user}" },\n'
                    '  one = true,\n'
                    '}\n')

    def test_sigterm_under_load_loses_no_in_flight_request(self):
        s = lib.Sluice(self.dir, database=self.db)
        results = []
        lock = threading.Lock()

        def client():
            st, _, b = s.get("/api/slow", user=PRO)
            with lock:
                results.append((st, b))

        threads = [threading.Thread(target=client) for _ in range(20)]
        for t in threads:
            t.start()
        time.sleep(0.2)  # all 20 are in flight (each takes 0.5 s in PostgreSQL)
        rc = s.stop()
        for t in threads:
            t.join()
        log = s.read_log()
        self.assertEqual(rc, 0, log)
        self.assertEqual(len(results), 20)
        for st, b in results:
            self.assertEqual(st, 200, b)
            self.assertEqual(json.loads(b)["slept"], True)
        self.assertNotIn("AddressSanitizer", log)


if __name__ == "__main__":
    lib.main()
