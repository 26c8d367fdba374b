"""End to end: GET /cache on the admin listener lists the cached entries, with the memory store
and with Redis (started here on a free port): two routes, one whose upstream answers Vary."""

import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse

import lib
from lib import SluiceTestCase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from origin import Origin  # noqa: E402

POLICY = r'''
upstream "origin" { url = "@ORIGIN@", timeout = "5s" }
endpoint "GET /bulk/{id}" {
  body = '{"ok":true}',
  cache = { ttl = "60s", key = "bulk:{path.id}", shared = true,
            tags = { "bulk", "bulk:{path.id}" } },
}
endpoint "GET /v/{id}" {
  upstream = "origin",
  cache = { ttl = "30s", stale_while_revalidate = "10s", tags = { "v:{path.id}" } },
}
'''

# The keys of GET /v/{id}: its default key, "{method}:{route}:{path}:{query}:{path.id}".
V_KEYS = "GET:GET%20/v/%7Bid%7D:*"
LANGS = ("en", "fr", "de")
BIG = 50000

REDIS = None


def setUpModule():
    global REDIS
    REDIS = lib.RedisServer()


def tearDownModule():
    if REDIS:
        REDIS.stop()


class CacheListMemory(SluiceTestCase):
    """The memory store; CacheListRedis runs the same tests against Redis."""

    STORE = "memory"

    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dir = tempfile.mkdtemp(prefix="sluice-cache-list-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        with open(os.path.join(cls.dir, "p.lua"), "w") as f:
            f.write(POLICY.replace("@ORIGIN@", cls.origin.url))
        for path in ("/v/1", "/v/2"):
            cls.origin.config(path, headers={"Vary": "Accept-Language"})
        cls.s = cls.start(cls.dir, env=cls.make_env())

    @classmethod
    def make_env(cls):
        return None

    def setUp(self):
        st, _, b = self.s.admin("POST", "/invalidate", body={"pattern": "*"})
        self.assertEqual(st, 200, b)

    def listing(self, match=None, limit=None, raw=None):
        """GET /cache with these parameters (or the raw query): (status, headers, JSON)."""
        q = raw
        if q is None:
            params = []
            if match is not None:
                params.append("match=" + urllib.parse.quote(match, safe=""))
            if limit is not None:
                params.append("limit=%s" % limit)
            q = "&".join(params)
        st, h, b = self.s.admin("GET", "/cache" + ("?" + q if q else ""))
        return st, h, json.loads(b) if b else None

    def ok_listing(self, match=None, limit=None):
        st, h, b = self.listing(match, limit)
        self.assertEqual(st, 200, b)
        self.assertEqual(h["content-type"], "application/json")
        self.assertEqual(b["store"], self.STORE)
        return b

    def get(self, path, headers=None):
        st, h, b = self.s.get(path, headers=headers)
        self.assertEqual(st, 200, b)
        return h, b

    def fill_two_routes(self):
        """Five /bulk entries, and /v/1 in three languages and /v/2 in one (Vary). Returns what
        /bulk/1 answered (headers, body) and each /v answer's body by (id, language)."""
        for i in range(1, 6):
            h, b = self.get("/bulk/%d" % i)
            self.assertEqual(h["x-cache"], "MISS")
            if i == 1:
                bulk = (h, b)
        bodies = {}
        for vid, langs in (("1", LANGS), ("2", ("en",))):
            for lang in langs:
                h, b = self.get("/v/" + vid, {"Accept-Language": lang})
                self.assertEqual(h["x-cache"], "MISS", (vid, lang))
                bodies[vid, lang] = b
        h, _ = self.get("/v/1", {"Accept-Language": "fr"})
        self.assertEqual(h["x-cache"], "HIT")
        return bulk, bodies

    def test_every_field_of_two_routes(self):
        (bh, bbody), bodies = self.fill_two_routes()

        # Only the Vary route's keys: each primary once, with its variants.
        b = self.ok_listing(V_KEYS)
        self.assertFalse(b["truncated"])
        self.assertGreaterEqual(b["scanned"], 2)
        entries = sorted(b["entries"], key=lambda e: e["key"])
        self.assertEqual(len(entries), 2, entries)
        for e, (vid, langs) in zip(entries, (("1", LANGS), ("2", ("en",)))):
            self.assertEqual(e["key"], "GET:GET%%20/v/%%7Bid%%7D:/v/%s::%s" % (vid, vid))
            self.assertEqual(e["route"], "GET /v/{id}")
            self.assertEqual(e["kind"], "vary")
            self.assertIsNone(e["status"])
            self.assertEqual(e["vary"], "accept-language")
            self.assertEqual(e["bytes"], len("accept-language"))
            self.assertEqual(sorted(e["tags"]), ["url:/v/" + vid, "v:" + vid])
            self.assertLessEqual(e["age"], 1)
            self.assertTrue(28 <= e["ttl"] <= 30, e)
            self.assertEqual(e["variant_count"], len(langs))
            self.assertFalse(e["variants_partial"])
            variants = {v["key"]: v for v in e["variants"]}
            self.assertEqual(set(variants), {e["key"] + "\x1f" + lang for lang in langs})
            for lang in langs:
                v = variants[e["key"] + "\x1f" + lang]
                self.assertEqual(v["kind"], "response")
                self.assertEqual(v["status"], 200)
                self.assertNotIn("route", v)
                # The body and the stored fields (Vary, content type, ETag, ...).
                self.assertGreater(v["bytes"], len(bodies[vid, lang]))
                self.assertLess(v["bytes"], len(bodies[vid, lang]) + 400)
                self.assertEqual(sorted(v["tags"]), ["url:/v/" + vid, "v:" + vid])
                self.assertTrue(28 <= v["ttl"] <= 30, v)
                self.assertEqual(v["stale_while_revalidate"], v["ttl"] + 10)
                self.assertIsNone(v["stale_if_error"])

        # The other route: fixed answers, tags as declared, nothing of the first route.
        b = self.ok_listing("bulk:*")
        entries = sorted(b["entries"], key=lambda e: e["key"])
        self.assertEqual([e["key"] for e in entries], ["bulk:%d" % i for i in range(1, 6)])
        for i, e in enumerate(entries, 1):
            self.assertEqual(e["route"], "GET /bulk/{id}")
            self.assertEqual(e["kind"], "response")
            self.assertEqual(e["status"], 200)
            self.assertEqual(e["bytes"], len(bbody) + len(bh["content-type"]) + len(bh["etag"]))
            self.assertEqual(sorted(e["tags"]), ["bulk", "bulk:%d" % i])
            self.assertIsNone(e["stale_while_revalidate"])
            self.assertIsNone(e["stale_if_error"])
            self.assertIsNone(e["vary"])
            self.assertEqual((e["variant_count"], e["variants"]), (0, []))

        # Time passes: every entry is older, with less time left.
        before = {e["key"]: e for e in self.ok_listing("*")["entries"]}
        self.assertEqual(len(before), 7)
        time.sleep(1.1)
        after = {e["key"]: e for e in self.ok_listing("*")["entries"]}
        self.assertEqual(set(after), set(before))
        for k, e in after.items():
            self.assertGreaterEqual(e["age"], before[k]["age"] + 1, k)
            self.assertLessEqual(e["ttl"], before[k]["ttl"] - 1, k)
        # What a lookup cannot find is not listed: an invalidated tag takes its entries away.
        st, _, _ = self.s.admin("POST", "/invalidate", body={"tags": ["bulk:3", "v:2"]})
        self.assertEqual(st, 200)
        keys = {e["key"] for e in self.ok_listing("*")["entries"]}
        self.assertEqual(keys, set(before) - {"bulk:3", "GET:GET%20/v/%7Bid%7D:/v/2::2"})
        # One variant's key: its primary, with that variant alone.
        b = self.ok_listing("*\x1ffr")
        self.assertEqual(len(b["entries"]), 1)
        self.assertEqual(b["entries"][0]["variant_count"], 1)
        self.assertTrue(b["entries"][0]["variants"][0]["key"].endswith("\x1ffr"))

    def test_limit_truncates(self):
        self.fill_two_routes()
        b = self.ok_listing("bulk:*", 2)
        self.assertEqual(len(b["entries"]), 2)
        self.assertTrue(b["truncated"])
        # The limit counts primaries: a Vary entry and its variants are one.
        b = self.ok_listing(V_KEYS, 1)
        self.assertEqual(len(b["entries"]), 1)
        self.assertTrue(b["truncated"])
        self.assertIn(b["entries"][0]["variant_count"], (1, 3))
        b = self.ok_listing("bulk:*", 1000)
        self.assertEqual(len(b["entries"]), 5)
        self.assertFalse(b["truncated"])
        # Without parameters: every key, up to 100.
        b = self.ok_listing()
        self.assertEqual(len(b["entries"]), 7)
        self.assertFalse(b["truncated"])

    def test_bad_queries_are_400_other_methods_405(self):
        cases = [
            ("foo=1", "unknown"),
            ("match=a*&match=b*", "repeated"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-1", "limit"),
            ("limit=ten", "limit"),
            ("limit=", "limit"),
            ("match=", "match"),
            ("match=%zz", "match"),
            ("match=a%00*", "match"),
        ]
        for q, detail in cases:
            with self.subTest(q=q):
                st, h, p = self.listing(raw=q)
                self.assertEqual(st, 400, p)
                self.assertEqual(h["content-type"], "application/problem+json")
                self.assertEqual(p["status"], 400)
                self.assertIn(detail, p["detail"])
        self.assertEqual(self.listing(limit=1000)[0], 200)
        for method in ("POST", "DELETE", "HEAD"):
            st, h, _ = self.s.admin(method, "/cache")
            self.assertEqual(st, 405, method)
            self.assertEqual(h["allow"], "GET")

    def test_requests_answered_while_listing_50000_entries(self):
        t0 = time.monotonic()
        counts = lib.pipelined(self.s.port, ("/bulk/%d" % i for i in range(BIG)), conns=4,
                               depth=64, timeout=120)
        self.assertEqual(counts, {200: BIG})
        fill_s = time.monotonic() - t0
        # On a loaded machine Redis may fall behind the fill long enough to open the store's
        # breaker (answers say BYPASS meanwhile); the entries are there once it closes.
        deadline = time.monotonic() + 10
        while True:
            h, _ = self.get("/bulk/7")
            if h["x-cache"] == "HIT" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(h["x-cache"], "HIT")

        # Listings that walk every entry (the pattern matches none of them) one after the other,
        # while requests are answered on a keep-alive connection.
        listings = []
        stop = threading.Event()

        def lister():
            while not stop.is_set():
                t = time.monotonic()
                st, _, b = self.listing(V_KEYS, 1000)
                listings.append((st, b, time.monotonic() - t))

        th = threading.Thread(target=lister)
        th.start()
        latencies = []
        conn = http.client.HTTPConnection("127.0.0.1", self.s.port, timeout=10)
        try:
            end = time.monotonic() + 2.0
            while time.monotonic() < end or not listings:
                t = time.monotonic()
                conn.request("GET", "/bulk/7")
                r = conn.getresponse()
                r.read()
                latencies.append(time.monotonic() - t)
                self.assertEqual((r.status, r.getheader("x-cache")), (200, "HIT"))
        finally:
            stop.set()
            th.join(60)
            conn.close()
        latencies.sort()
        took = sorted(x[2] for x in listings)
        lib_note = ("%s: %d entries filled in %.1fs; %d listings of every entry (median %.0f ms, "
                    "max %.0f ms); %d requests meanwhile: p50 %.2f ms, p99 %.2f ms, max %.2f ms"
                    % (self.STORE, BIG, fill_s, len(listings), 1000 * took[len(took) // 2],
                       1000 * took[-1], len(latencies), 1000 * latencies[len(latencies) // 2],
                       1000 * latencies[int(len(latencies) * 0.99)], 1000 * latencies[-1]))
        print("\n" + lib_note, file=sys.stderr)
        for st, b, _ in listings:
            self.assertEqual(st, 200, b)
            self.assertEqual(b["entries"], [])
            self.assertFalse(b["truncated"], "the walk saw every entry")
            self.check_walk(b)
        self.assertLess(latencies[-1], 0.1, lib_note)

    def check_walk(self, b):
        # The memory store walked every record: the entries and their tag records.
        self.assertGreaterEqual(b["scanned"], BIG)


class CacheListRedis(CacheListMemory):
    STORE = "redis"

    @classmethod
    def make_env(cls):
        REDIS.cli("FLUSHALL")
        return {"REDIS_URL": REDIS.url}

    def check_walk(self, b):
        # Redis's SCAN returned only the keys that match (none): the cursor came back to 0.
        self.assertEqual(b["scanned"], 0)


if __name__ == "__main__":
    lib.main()
