"""End to end: compress. Cached answers get their gzip, br and zstd forms once, when they are
stored (RFC 9110 section 8.4 Content-Encoding), and a hit answers the coding the client's
Accept-Encoding prefers (section 12.5.3, q values section 12.4.2), with Vary: Accept-Encoding,
an ETag of its own per coding (section 8.8.3) and the coded body's Content-Length. The same
tests run on the memory store and on a Redis store of the test's own."""

import gzip
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import lib
from lib import SluiceTestCase
from origin import Origin

try:
    import brotli
except ImportError:  # decoded with Debian's brotli tool instead
    brotli = None
try:
    import zstandard
except ImportError:  # decoded with Debian's zstd tool instead
    zstandard = None

# A JSON body well over the 1 KiB default min_size, and one under it.
BIG = "[" + ",".join('{"id":%d,"name":"contact %d","company":"Acme %d"}' % (i, i, i % 7)
                     for i in range(150)) + "]"
SMALL = '{"id":1,"name":"small"}'

POLICY = r'''
compress(true)   -- the set's default: every cached endpoint below, unless it says otherwise

upstream "app" { url = "%(origin)s" }

endpoint "GET /big"      { body = [==[%(big)s]==], cache = { ttl = "5m" } }
endpoint "GET /counted"  { body = [==[%(big)s ]==], cache = { ttl = "5m" } }
endpoint "GET /small"    { body = [==[%(small)s]==], cache = { ttl = "5m" } }
endpoint "GET /off"      { body = [==[%(big)s]==], cache = { ttl = "5m" }, compress = false }
endpoint "GET /png"      { body = [==[%(big)s]==], content_type = "image/png", cache = { ttl = "5m" } }
endpoint "GET /gzip-only" {
  body = [==[%(big)s]==], cache = { ttl = "5m" },
  compress = { codings = { "gzip" }, min_size = "1k", types = { "application/*+json", "application/json" } },
}
endpoint "GET /up/{name}" { upstream = "app", cache = { ttl = "1m", key = "up:{path.name}" } }
'''


def decode(coding, data):
    """The identity body of data in coding (stdlib gzip; brotli and zstandard modules of
    Debian's python3, else the brotli and zstd command-line tools)."""
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        if brotli:
            return brotli.decompress(data)
        return subprocess.run(["brotli", "-dc"], input=data, capture_output=True, check=True).stdout
    if coding == "zstd":
        if zstandard:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
    raise AssertionError("unknown coding %r" % coding)


def compressions(s):
    """sluice_compressions_total by coding, from /metrics."""
    text = s.admin("GET", "/metrics")[2].decode()
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r'^sluice_compressions_total\{coding="(\w+)"\} (\d+)$', text, re.M)}


class CompressCases:
    """The cases, run against the store the subclass starts sluice with (cls.s)."""

    def get(self, path, ae=None, method="GET", headers=None):
        h = dict(headers or {})
        if ae is not None:
            h["Accept-Encoding"] = ae
        return self.s.request(method, path, h)

    def warm(self, path):
        status, h, _ = self.get(path)
        self.assertEqual(status, 200)
        return h

    def test_each_coding_decodes_to_the_identity_body(self):
        self.warm("/big")
        for coding in ("gzip", "br", "zstd"):
            status, h, body = self.get("/big", coding)
            self.assertEqual(status, 200)
            self.assertEqual(h.get("x-cache"), "HIT")
            self.assertEqual(h.get("content-encoding"), coding)
            self.assertEqual(int(h["content-length"]), len(body))  # the coded body's length
            self.assertLess(len(body), len(BIG) // 3)
            self.assertEqual(decode(coding, body).decode(), BIG)

    def test_client_without_accept_encoding_gets_identity(self):
        self.warm("/big")
        status, h, body = self.get("/big")
        self.assertEqual(status, 200)
        self.assertNotIn("content-encoding", h)
        self.assertEqual(body.decode(), BIG)
        self.assertEqual(h.get("vary"), "Accept-Encoding")  # it still varies (RFC 9110 12.5.5)
        # A client that refuses every coding we hold gets the identity body too.
        for ae in ("identity", "gzip;q=0, br;q=0, zstd;q=0", "*;q=0", "compress", ""):
            status, h, body = self.get("/big", ae)
            self.assertEqual((status, h.get("content-encoding"), body.decode()), (200, None, BIG), ae)

    def test_q_values_and_server_preference_choose_the_coding(self):
        self.warm("/big")
        cases = {
            "gzip, deflate, br, zstd": "br",       # equal q: br > zstd > gzip
            "gzip, zstd": "zstd",
            "br;q=0.5, gzip;q=0.9, zstd;q=0.7": "gzip",
            "*": "br",
            "br;q=0, *": "zstd",
            "gzip, identity;q=0": "gzip",
            "x-gzip": "gzip",
        }
        for ae, want in cases.items():
            _, h, body = self.get("/big", ae)
            self.assertEqual(h.get("content-encoding"), want, ae)
            self.assertEqual(decode(want, body).decode(), BIG, ae)

    def test_compressed_once_per_stored_entry_not_per_hit(self):
        before = compressions(self.s)
        for i in range(20):
            ae = ("gzip", "br", "zstd", None, "gzip, br")[i % 5]
            status, h, _ = self.get("/counted", ae)
            self.assertEqual(status, 200)
            self.assertEqual(h.get("x-cache"), "MISS" if i == 0 else "HIT", i)
        after = compressions(self.s)
        self.assertEqual({c: after[c] - before.get(c, 0) for c in after},
                         {"gzip": 1, "br": 1, "zstd": 1})

    def test_small_body_is_left_alone(self):
        self.warm("/small")
        status, h, body = self.get("/small", "gzip, br, zstd")
        self.assertEqual(status, 200)
        self.assertNotIn("content-encoding", h)
        self.assertNotIn("vary", h)
        self.assertEqual(body.decode(), SMALL)

    def test_endpoint_off_and_compressed_types_are_left_alone(self):
        for path in ("/off", "/png"):
            self.warm(path)
            status, h, body = self.get(path, "gzip, br, zstd")
            self.assertEqual(status, 200, path)
            self.assertNotIn("content-encoding", h, path)
            self.assertEqual(body.decode(), BIG, path)

    def test_codings_list_limits_what_is_made(self):
        self.warm("/gzip-only")
        _, h, body = self.get("/gzip-only", "br, zstd, gzip;q=0.1")
        self.assertEqual(h.get("content-encoding"), "gzip")
        self.assertEqual(decode("gzip", body).decode(), BIG)
        _, h, body = self.get("/gzip-only", "br, zstd")
        self.assertNotIn("content-encoding", h)
        self.assertEqual(body.decode(), BIG)

    def test_etag_differs_per_coding_and_vary_is_sent(self):
        self.warm("/big")
        tags = {}
        for coding in (None, "gzip", "br", "zstd"):
            _, h, _ = self.get("/big", coding)
            self.assertEqual(h.get("vary"), "Accept-Encoding")
            tags[coding] = h["etag"]
        plain = tags[None]
        self.assertRegex(plain, r'^"[^"]+"$')
        for coding in ("gzip", "br", "zstd"):
            self.assertEqual(tags[coding], plain[:-1] + "-" + coding + '"')
        self.assertEqual(len(set(tags.values())), 4)

    def test_if_none_match_with_coded_etag_is_304_for_that_coding_only(self):
        self.warm("/big")
        _, h, _ = self.get("/big", "gzip")
        gz = h["etag"]
        status, h, body = self.get("/big", "gzip", headers={"If-None-Match": gz})
        self.assertEqual((status, body), (304, b""))
        self.assertEqual(h.get("etag"), gz)
        self.assertEqual(h.get("vary"), "Accept-Encoding")
        # The gzip tag does not validate the br form, nor the identity body (RFC 9110 8.8.3).
        status, h, body = self.get("/big", "br", headers={"If-None-Match": gz})
        self.assertEqual(status, 200)
        self.assertEqual(h.get("content-encoding"), "br")
        status, h, body = self.get("/big", None, headers={"If-None-Match": gz})
        self.assertEqual(status, 200)
        self.assertEqual(body.decode(), BIG)

    def test_head_gets_the_coded_headers(self):
        self.warm("/big")
        _, got, body = self.get("/big", "gzip")
        status, h, hbody = self.get("/big", "gzip", method="HEAD")
        self.assertEqual((status, hbody), (200, b""))
        self.assertEqual(h.get("content-encoding"), "gzip")
        self.assertEqual(h.get("etag"), got["etag"])
        self.assertEqual(int(h["content-length"]), len(body))

    def test_upstream_coded_answer_passes_through_untouched(self):
        # The origin says its (JSON) body is gzip: it is never coded again, nor decoded.
        self.origin.config("/up/coded", headers={"Content-Encoding": "gzip",
                                              "Cache-Control": "max-age=60"}, pad=4000)
        _, h1, first = self.get("/up/coded", "gzip, br, zstd")
        status, h, body = self.get("/up/coded", "gzip, br, zstd")
        self.assertEqual(status, 200)
        self.assertEqual(h.get("x-cache"), "HIT")
        self.assertEqual(h.get("content-encoding"), "gzip")
        self.assertEqual(body, first)
        self.assertTrue(body.startswith(b"{"), body[:40])  # the origin's bytes as they came
        self.assertNotIn("Accept-Encoding", h.get("vary", ""))

    def test_upstream_plain_answer_is_compressed_when_stored(self):
        self.origin.config("/up/plain", headers={"Cache-Control": "max-age=60"}, pad=4000)
        _, _, plain = self.get("/up/plain")
        status, h, body = self.get("/up/plain", "zstd")
        self.assertEqual((status, h.get("x-cache"), h.get("content-encoding")), (200, "HIT", "zstd"))
        self.assertEqual(decode("zstd", body), plain)


class MemoryStore(CompressCases, SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.dir = tempfile.mkdtemp(prefix="sluice-compress-")
        with open(os.path.join(cls.dir, "api.lua"), "w") as f:
            f.write(POLICY % {"origin": cls.origin.url, "big": BIG, "small": SMALL})
        cls.s = cls.start(cls.dir, env=cls.env())

    @classmethod
    def env(cls):
        return None

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.origin.kill()
            shutil.rmtree(cls.dir, ignore_errors=True)


class RedisStore(MemoryStore):
    @classmethod
    def env(cls):
        return {"REDIS_URL": REDIS.url}


class RedisUnavailable(SluiceTestCase):
    """While the shared store is away nothing is stored (X-Cache: BYPASS), so nothing is
    coded either: every request would pay for the forms."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sluice-compress-")
        with open(os.path.join(cls.dir, "api.lua"), "w") as f:
            f.write(POLICY % {"origin": "http://127.0.0.1:9", "big": BIG, "small": SMALL})
        cls.s = cls.start(cls.dir, env={"REDIS_URL": REDIS.url})

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def test_bypassed_answers_are_identity_and_not_coded(self):
        REDIS.stop()
        try:
            before = compressions(self.s)
            for _ in range(5):
                status, h, body = self.s.request("GET", "/big", {"Accept-Encoding": "gzip, br"})
                self.assertEqual((status, h.get("x-cache")), (200, "BYPASS"))
                self.assertNotIn("content-encoding", h)
                self.assertEqual(body.decode(), BIG)
            self.assertEqual(compressions(self.s), before)
        finally:
            REDIS.start()


REDIS = None


def setUpModule():
    global REDIS
    REDIS = lib.RedisServer()


def tearDownModule():
    if REDIS:
        REDIS.stop()


if __name__ == "__main__":
    lib.main()
