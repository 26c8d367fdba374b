"""End to end: explain and the server agree, because both run the request path's own plan.

Each case asks `GET /explain` on the admin listener (the same code as `sluice explain`) and then
sends the same request to the server, and compares what explain predicted with what served:
the status of a refused request, the cache bypass of a credentialed request, the limits counted
(RateLimit-Policy), the invalidations of a write.
"""

import json
import os
import tempfile
import urllib.parse

import lib
from lib import SluiceTestCase
from origin import Origin

POLICY = """
tier "free" { limit = 1000, window = "1h" }
identity { user = header "X-User-Id", default_tier = "free" }
upstream "app" { url = "http://127.0.0.1:%(port)d", timeout = "5s" }

-- shared, keyed by nothing of the caller: a Cookie bypasses the cache, Authorization takes only
-- answers that allow it
endpoint "GET /p" { upstream = "app", cache = { ttl = "5m", key = "p", shared = true } }
-- keyed by the caller: credentialed requests use the cache
endpoint "GET /mine" { upstream = "app", cache = { ttl = "5m", key = "mine:{user}" } }

endpoint "POST /n" {
  body = '{"ok":true}', status = 201,
  invalidate = { "n:{body.a}" },
}

endpoint "GET /eight" {
  body = '{}',
  limit = {
%(limits)s
  },
}
"""

TWO_LIMITS = """
endpoint "GET /two" {
  body = '{}',
  limit = { { limit = 10, window = "1m", key = "ten:{ip}" }, { limit = 1, window = "1m", key = "one:{ip}" } },
}
"""

EIGHT = ",\n".join('    { limit = %d, window = "1m", key = "l%d:{ip}" }' % (100 + i, i)
                   for i in range(1, 9))


class ExplainAgreesWithServer(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dir = tempfile.mkdtemp(prefix="sluice-explain-")
        with open(os.path.join(cls.dir, "10-main.lua"), "w") as f:
            f.write(POLICY % {"port": cls.origin.port, "limits": EIGHT})
            f.write(TWO_LIMITS)
        cls.s = cls.start(cls.dir)

    def explain(self, request, headers=(), body=None):
        q = [("request", request)] + [("header", h) for h in headers]
        if body is not None:
            q.append(("body", body))
        st, _, b = self.s.admin("GET", "/explain?" + urllib.parse.urlencode(q))
        self.assertEqual(st, 200, b)
        return json.loads(b)

    def test_11_credentials_bypass_a_key_without_the_caller_in_both(self):
        e = self.explain("GET /p", ["Cookie: sid=x"])
        self.assertTrue(e["cache"]["bypass"], e)
        self.assertIsNone(e["cache"]["key"], e)
        for _ in range(2):
            st, h, _ = self.s.request("GET", "/p", {"Cookie": "sid=x"})
            self.assertEqual((st, h.get("x-cache")), (200, "BYPASS"))
        # Authorization: the key is looked up, but only an answer that allows it (RFC 9111
        # section 3.5: public, s-maxage, must-revalidate) serves it; the origin's says none.
        e = self.explain("GET /p", ["Authorization: Bearer x"])
        self.assertFalse(e["cache"]["bypass"], e)
        self.assertEqual(e["cache"]["key"], "p")
        self.assertIn("section 3.5", e["cache"]["authorization"])
        for _ in range(2):
            st, h, _ = self.s.request("GET", "/p", {"Authorization": "Bearer x"})
            self.assertEqual((st, h.get("x-cache")), (200, "BYPASS"))
        # Without credentials explain shows the key, and the server uses it.
        e = self.explain("GET /p")
        self.assertFalse(e["cache"]["bypass"])
        self.assertEqual(e["cache"]["key"], "p")
        seen = [self.s.request("GET", "/p")[1].get("x-cache") for _ in range(2)]
        self.assertEqual(seen[-1], "HIT", seen)

    def test_11_credentials_with_the_caller_in_the_key_use_the_cache_in_both(self):
        hdrs = {"Authorization": "Bearer y", "X-User-Id": "7"}
        e = self.explain("GET /mine", ["%s: %s" % kv for kv in hdrs.items()])
        self.assertFalse(e["cache"]["bypass"])
        self.assertEqual(e["cache"]["key"], "mine:7")
        seen = [self.s.request("GET", "/mine", hdrs)[1].get("x-cache") for _ in range(2)]
        self.assertEqual(seen, ["MISS", "HIT"])

    def test_11_a_duplicate_json_key_is_refused_by_both(self):
        body = '{"a":"1","a":"2"}'
        e = self.explain("POST /n", body=body)
        self.assertEqual(e["status"], 400, e)
        self.assertIn("duplicate object key", e["detail"])
        self.assertNotIn("invalidate", e)
        st, h, b = self.s.request("POST", "/n", {"Content-Type": "application/json"}, body)
        self.assertEqual(st, 400, b)
        self.assertEqual(h["content-type"], "application/problem+json")
        self.assertIn("duplicate object key", json.loads(b)["detail"])

    def test_11_a_good_write_invalidates_what_explain_lists(self):
        e = self.explain("POST /n", body='{"a":"1"}')
        self.assertNotIn("status", e)
        self.assertEqual(e["invalidate"], ["n:1"])
        st, _, _ = self.s.request("POST", "/n", {"Content-Type": "application/json"}, '{"a":"1"}')
        self.assertEqual(st, 201)

    def test_11_every_limit_explain_lists_is_counted(self):
        e = self.explain("GET /eight")
        names = [l["name"] for l in e["limits"]]
        self.assertEqual(len(names), 8)
        st, h, _ = self.s.request("GET", "/eight")
        self.assertEqual(st, 200)
        served = [item.split(";")[0].strip().strip('"')
                  for item in h["ratelimit-policy"].split(",")]
        self.assertEqual(served, names)
        # The remaining budget of each limit moved by the one request just sent.
        remaining = [int(item.split("r=")[1].split(";")[0]) for item in h["ratelimit"].split(",")]
        self.assertEqual(remaining, [l["limit"] - 1 for l in e["limits"]])

    def test_an_uncharged_limit_keeps_its_remaining_count(self):
        # When one limit refuses, no limit counts the request: the RateLimit field of a limit
        # that would have admitted it shows what is left without it.
        def remaining(h):
            return [int(item.split("r=")[1].split(";")[0]) for item in h["ratelimit"].split(",")]
        st, h, _ = self.s.request("GET", "/two")
        self.assertEqual((st, remaining(h)), (200, [9, 0]))
        for _ in range(2):
            st, h, _ = self.s.request("GET", "/two")
            self.assertEqual((st, remaining(h)), (429, [9, 0]))


if __name__ == "__main__":
    lib.main()
