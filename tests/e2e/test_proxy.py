"""End to end: upstream endpoints, the real binary in front of a real HTTP origin (origin.py).

Every class starts its own origin (tests/e2e/origin.py) on a free port, writes a policy
naming it, and starts sluice; the origin counts what reaches it per path, which the tests
read out of band (never through sluice). Timing bounds are wider on a sanitizer build.
"""

import concurrent.futures
import gzip
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import lib
from lib import SluiceTestCase
from origin import Origin

SAN = lib.SANITIZED
SLACK = 4.0 if SAN else 1.0  # how much slower a sanitizer build may be


def note(msg):
    """A measurement worth reading in the test log."""
    sys.stderr.write("    [measured] %s\n" % msg)
    sys.stderr.flush()


class Resp:
    def __init__(self, status, headers, body, took):
        self.status, self.headers, self.body, self.took = status, headers, body, took

    @property
    def cache(self):
        return self.headers.get("x-cache")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%s %s %r %.3fs>" % (self.status, self.cache, self.body[:300], self.took)


def req(port, method, path, headers=None, body=None, timeout=20):
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = dict(headers or {}, **{"Content-Type": "application/json"})
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data, time.monotonic() - t0)
    finally:
        conn.close()


def get(port, path, user=None, headers=None, **kw):
    h = dict(headers or {})
    if user is not None:
        h["X-User-Id"] = str(user)
    return req(port, "GET", path, h, **kw)


def raw(port, data, timeout=5):
    """Raw bytes in, everything the server answers until it closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def concurrently(n, fn):
    """fn(i) for i in range(n), all released at once; returns the results in order."""
    start = threading.Barrier(n)

    def one(i):
        start.wait(60)
        return fn(i)

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def wait_until(pred, timeout=10.0, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def policy_dir(text, **subs):
    for k, v in subs.items():
        text = text.replace("@%s@" % k, str(v))
    d = tempfile.mkdtemp(prefix="sluice-proxy-")
    with open(os.path.join(d, "proxy.lua"), "w") as f:
        f.write(text)
    return d


def is_problem(r, status):
    if r.status != status or r.headers.get("content-type") != "application/problem+json":
        return False
    try:
        return r.json().get("status") == status
    except ValueError:
        return False


class ProxyCase(SluiceTestCase):
    """Starts an origin before the class's servers and cleans both up after. With REDIS set,
    serve() starts its instances on a Redis of the class's own."""

    POLICY = None
    ORIGIN_CONFIG = {}
    REDIS = False
    INSTANCES = 1  # how many instances serve() starts with REDIS (one without)

    @classmethod
    def setUpClass(cls):
        # Class cleanups run even when setUpClass fails half-way (tearDownClass does not).
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dead_port = lib.free_port()
        cls.dirs = []
        cls.redis = None
        for path, c in cls.ORIGIN_CONFIG.items():
            cls.origin.config(path, **c)

    @classmethod
    def start(cls, *a, **kw):
        s = super().start(*a, **kw)
        cls.addClassCleanup(s.stop)
        return s

    @classmethod
    def redis_server(cls):
        r = lib.RedisServer()
        cls.addClassCleanup(r.stop)
        return r

    @classmethod
    def restart_origin(cls):
        """Kills the origin if it runs, starts it on its port, configures it again."""
        cls.origin.restart()
        for path, c in cls.ORIGIN_CONFIG.items():
            cls.origin.config(path, **c)

    @classmethod
    def serve(cls, d, **kw):
        """Starts the class's sluice: cls.s, and cls.ports (every instance)."""
        if cls.REDIS:
            cls.redis = cls.redis_server()
            env = dict(kw.pop("env", {}), REDIS_URL=cls.redis.url)
            args = list(kw.pop("args", [])) + ["--redis-deadline", "2s"]
            servers = [cls.start(d, env=env, args=args, **kw) for _ in range(cls.INSTANCES)]
        else:
            servers = [cls.start(d, **kw)]
        cls.s = servers[0]
        cls.ports = [x.port for x in servers]

    @classmethod
    def policy(cls, text=None, **subs):
        d = policy_dir(text or cls.POLICY, ORIGIN=cls.origin.url, DEAD=cls.dead_port, **subs)
        cls.dirs.append(d)
        return d

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.origin.kill()
            if cls.redis:
                cls.redis.stop()
            for d in cls.dirs:
                shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------

STAMPEDE_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@", timeout = "20s" }
endpoint "GET /stampede/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "stampede:{path.id}:{user}" },
}
'''


class Stampede(ProxyCase):
    """500 concurrent misses on one key reach the origin once: per instance, and across
    instances sharing Redis."""

    N = 500
    DELAY_MS = 200

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.redis = cls.redis_server()
        d = cls.policy(STAMPEDE_POLICY)
        cls.memory = cls.start(d, args=["--workers", "4"])
        env = {"REDIS_URL": cls.redis.url}
        cls.shared = [cls.start(d, env=env, args=["--redis-deadline", "2s"]) for _ in range(2)]

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.redis.stop()

    def stampede(self, ports, id_):
        path = "/stampede/" + id_
        self.origin.config(path, delay_ms=self.DELAY_MS)
        t0 = time.monotonic()
        answers = concurrently(self.N, lambda i: get(ports[i % len(ports)], path, user=1))
        took = time.monotonic() - t0
        kinds = {}
        for a in answers:
            kinds[a.cache] = kinds.get(a.cache, 0) + 1
        note("%d concurrent misses on %d instance(s): %.2fs, X-Cache %s, origin requests %d"
             % (self.N, len(ports), took, kinds, self.origin.count(path)))
        self.assertEqual([a for a in answers if a.status != 200][:3], [])
        self.assertEqual(self.origin.count(path), 1)
        self.assertEqual(len({a.body for a in answers}), 1, "every answer is the one fill")
        self.assertEqual(answers[0].json()["n"], 1)
        self.assertNotIn("BYPASS", kinds)
        # And afterwards it is a plain hit.
        r = get(ports[0], path, user=1)
        self.assertEqual((r.status, r.cache, r.body), (200, "HIT", answers[0].body))
        self.assertEqual(self.origin.count(path), 1)

    def test_memory_store_one_origin_request(self):
        self.stampede([self.memory.port], "mem")

    def test_redis_two_instances_one_origin_request_in_total(self):
        self.stampede([s.port for s in self.shared], "redis")

    def test_credentialed_callers_of_one_key_reach_the_origin_once_per_process(self):
        # Credentials under a key holding the caller use the cache, and coalesce like any miss:
        # 10 concurrent requests over the workers of one process, nine rounds, one fill each.
        counts = []
        for rnd in range(9):
            path = "/stampede/auth%d" % rnd
            self.origin.config(path, delay_ms=100)
            answers = concurrently(10, lambda i: get(self.memory.port, path, user=5,
                                                     headers={"Authorization": "Bearer t%d" % rnd}))
            self.assertEqual([a.status for a in answers], [200] * 10)
            self.assertEqual(len({a.body for a in answers}), 1)
            counts.append(self.origin.count(path))
        self.assertEqual(counts, [1] * 9)


# ---------------------------------------------------------------------------

STALE_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@", timeout = "10s" }
upstream "short" { url = "@ORIGIN@", timeout = "@SHORT@" }
endpoint "GET /swr/{id}" {
  upstream = "origin",
  cache = { ttl = "@TTL@", key = "swr:{path.id}:{user}", stale_while_revalidate = "30s" },
}
endpoint "GET /sie/{id}" {
  upstream = "origin",
  cache = { ttl = "@TTL@", key = "sie:{path.id}:{user}", stale_if_error = "10m" },
}
endpoint "GET /sie-short/{id}" {
  upstream = "short",
  cache = { ttl = "@TTL@", key = "sies:{path.id}:{user}", stale_if_error = "10m" },
}
endpoint "GET /plain/{id}" {
  upstream = "origin",
  cache = { ttl = "@TTL@", key = "plain:{path.id}:{user}" },
}
'''


class Stale(ProxyCase):
    """stale_while_revalidate and stale_if_error."""

    TTL = 2 if SAN else 1
    DELAY = 1.0 if SAN else 0.5
    FAST = 0.25 if SAN else 0.1  # a STALE answer does not wait for the origin (DELAY)
    SHORT_MS = 500

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(STALE_POLICY, TTL="%ds" % cls.TTL, SHORT="%dms" % cls.SHORT_MS))

    def setUp(self):
        if self.origin.proc.poll() is not None:
            self.origin.start()

    def expire(self):
        time.sleep(self.TTL + 0.3)

    def test_stale_while_revalidate(self):
        path = "/swr/a"
        self.origin.config(path, delay_ms=int(self.DELAY * 1000))
        first = get(self.s.port, path, user=1)
        self.assertEqual((first.status, first.cache), (200, "MISS"))
        self.assertEqual(get(self.s.port, path, user=1).cache, "HIT")
        self.expire()
        answers = concurrently(20, lambda i: get(self.ports[i % len(self.ports)], path, user=1))
        took = sorted(a.took for a in answers)
        note("20 concurrent requests past the ttl on %d instance(s): X-Cache %s, latency median %.1f ms, "
             "max %.1f ms" % (len(self.ports), sorted({str(a.cache) for a in answers}),
                              statistics.median(took) * 1000, took[-1] * 1000))
        self.assertEqual([a.status for a in answers], [200] * 20)
        self.assertEqual([a.cache for a in answers], ["STALE"] * 20)
        self.assertEqual({a.body for a in answers}, {first.body})
        self.assertLess(took[-1], self.FAST, "a STALE answer waited for the origin")
        # One background refresh, and only one.
        self.assertTrue(wait_until(lambda: self.origin.count(path) >= 2, 5), self.origin.count(path))
        time.sleep(self.DELAY + 0.15)  # the refresh answers and is stored
        self.assertEqual(self.origin.count(path), 2)
        r = get(self.s.port, path, user=1)
        self.assertEqual((r.status, r.cache), (200, "HIT"), r)
        self.assertEqual(r.json()["n"], 2, "the refreshed content")
        self.assertEqual(self.origin.count(path), 2)

    def test_stale_if_error_origin_down_then_back(self):
        path = "/sie/a"
        first = get(self.s.port, path, user=1)
        self.assertEqual((first.status, first.cache), (200, "MISS"))
        self.expire()
        self.origin.kill()
        for _ in range(3):
            r = get(self.s.port, path, user=1)
            self.assertEqual((r.status, r.cache), (200, "STALE"), r)
            self.assertEqual(r.body, first.body)
        self.origin.start()
        r = get(self.s.port, path, user=1)
        self.assertEqual((r.status, r.cache), (200, "MISS"), r)
        self.assertNotEqual(r.json()["boot"], first.json()["boot"], "fresh from the restarted origin")
        r2 = get(self.s.port, path, user=1)
        self.assertEqual((r2.status, r2.cache, r2.body), (200, "HIT", r.body))

    def test_stale_if_error_on_5xx(self):
        path = "/sie/b"
        first = get(self.s.port, path, user=1)
        self.assertEqual(first.cache, "MISS")
        self.expire()
        self.origin.config(path, status=503)
        r = get(self.s.port, path, user=1)
        self.assertEqual((r.status, r.cache, r.body), (200, "STALE", first.body))
        self.origin.config(path, status=200)
        r = get(self.s.port, path, user=1)
        self.assertEqual((r.status, r.cache), (200, "MISS"), r)
        self.assertEqual(r.json()["n"], 3)
        self.assertEqual(get(self.s.port, path, user=1).cache, "HIT")

    def test_stale_if_error_on_deadline(self):
        path = "/sie-short/a"
        first = get(self.s.port, path, user=1)
        self.assertEqual(first.cache, "MISS")
        self.expire()
        self.origin.config(path, delay_ms=3000)
        r = get(self.s.port, path, user=1)
        note("stale_if_error past a %d ms upstream timeout: answered in %.0f ms"
             % (self.SHORT_MS, r.took * 1000))
        self.assertEqual((r.status, r.cache, r.body), (200, "STALE", first.body))
        self.assertLess(r.took, self.SHORT_MS / 1000.0 + 1.0 * SLACK)
        self.origin.config(path, delay_ms=0)

    def test_a_failed_refresh_keeps_the_stale_entry(self):
        path = "/swr/fail"
        first = get(self.s.port, path, user=2)
        self.assertEqual(first.cache, "MISS")
        self.expire()
        self.origin.config(path, status=500)
        for _ in range(3):
            r = get(self.s.port, path, user=2)
            self.assertEqual((r.status, r.cache, r.body), (200, "STALE", first.body))
            time.sleep(0.1)
        self.origin.config(path, status=200)
        # The next refresh succeeds: the new answer is served as a HIT once it has landed.
        self.assertTrue(wait_until(lambda: get(self.s.port, path, user=2).cache == "HIT", 5, 0.1))
        self.assertEqual(get(self.s.port, path, user=2).json()["boot"], first.json()["boot"])
        self.assertGreater(get(self.s.port, path, user=2).json()["n"], 1)

    def test_without_stale_if_error_an_expired_entry_is_not_served(self):
        path = "/plain/a"
        self.assertEqual(get(self.s.port, path, user=1).cache, "MISS")
        self.expire()
        self.origin.kill()
        r = get(self.s.port, path, user=1)
        self.assertTrue(is_problem(r, 502), r)


class StaleRedis(Stale):
    """The same on two instances sharing Redis: still one background refresh in all."""
    REDIS = True
    INSTANCES = 2


# ---------------------------------------------------------------------------

SECURITY_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@", timeout = "10s" }
endpoint "GET /priv/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "priv:{path.id}:{user}" },
}
endpoint "GET /shared/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "shared:{path.id}", shared = true },
}
endpoint "GET /nc/{kind}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "nc:{path.kind}:{user}" },
}
endpoint "GET /vary/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "vary:{path.id}:{user}" },
}
endpoint "GET /account/*" { upstream = "origin" }
endpoint "GET /static/{file}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "static:{path.file}", shared = true },
}
'''

# What the origin answers on /nc/KIND: none of these may be stored.
UNCACHEABLE = {
    "cookie": {"headers": {"Set-Cookie": "sid=abc; HttpOnly"}},
    "private": {"headers": {"Cache-Control": "private, max-age=300"}},
    "no-store": {"headers": {"Cache-Control": "no-store"}},
    "no-cache": {"headers": {"Cache-Control": "no-cache"}},
    "vary-star": {"headers": {"Vary": "*"}},
    "max-age-0": {"headers": {"Cache-Control": "max-age=0"}},
    "e500": {"status": 500},
    "e503": {"status": 503},
    "e404": {"status": 404},
    "e403": {"status": 403},
    "r302": {"status": 302, "headers": {"Location": "/elsewhere"}},
    "c201": {"status": 201},
}
# And these are stored.
CACHEABLE = {
    "s200": {},
    "s203": {"status": 203},
    "s204": {"status": 204},
    "s301": {"status": 301, "headers": {"Location": "/moved"}},
    "s308": {"status": 308, "headers": {"Location": "/moved"}},
    "public": {"headers": {"Cache-Control": "public, max-age=600"}},
}

VICTIM = {"X-User-Id": "1", "Authorization": "Bearer victim-token-1",
          "Cookie": "session=victim-secret-1"}
VICTIM_MARKS = (b"victim-token-1", b"victim-secret-1")


class CacheSecurity(ProxyCase):
    """Per-user entries stay per user; uncacheable answers are never stored; poisoning and
    deception attempts never reach another caller."""

    ROUNDS = 300

    ORIGIN_CONFIG = dict({"/nc/" + k: v for k, v in UNCACHEABLE.items()},
                         **{"/nc/" + k: v for k, v in CACHEABLE.items()})

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(SECURITY_POLICY))

    def test_two_users_never_see_each_others_answers(self):
        path = "/priv/same"
        users = {1: "Bearer token-of-user-1", 2: "Bearer token-of-user-2"}

        def one(i):
            u = 1 + i % 2
            return u, get(self.s.port, path, headers={"X-User-Id": str(u), "Authorization": users[u]})

        crossed, hits = [], 0
        for _ in range(2):
            for u, r in concurrently(200, one):
                self.assertEqual(r.status, 200, r)
                b = r.json()
                if b["user"] != str(u) or b["h"].get("authorization") != users[u]:
                    crossed.append((u, b["user"], b["h"].get("authorization")))
                hits += r.cache == "HIT"
        note("400 requests of two users on one URL: %d HIT, %d crossed" % (hits, len(crossed)))
        self.assertEqual(crossed, [])
        self.assertEqual(self.origin.count(path), 2, "one fill per user")
        self.assertGreaterEqual(hits, 398)

    def test_uncacheable_answers_are_never_stored(self):
        for kind, c in UNCACHEABLE.items():
            with self.subTest(kind=kind):
                path = "/nc/" + kind
                for i in range(4):
                    r = get(self.s.port, path, user=5)
                    self.assertEqual(r.status, c.get("status", 200), r)
                    self.assertNotIn(r.cache, ("HIT", "STALE"), (i, r))
                    self.assertLessEqual(int(r.headers.get("age", "0")), 1, "a fresh answer")
                self.assertEqual(self.origin.count(path), 4, "every request reached the origin")
        # The cookie reached the caller, although it was not stored.
        r = get(self.s.port, "/nc/cookie", user=5)
        self.assertEqual(r.headers.get("set-cookie"), "sid=abc; HttpOnly")

    def test_cacheable_statuses_are_stored(self):
        for kind, c in CACHEABLE.items():
            with self.subTest(kind=kind):
                path = "/nc/" + kind
                a = get(self.s.port, path, user=6)
                b = get(self.s.port, path, user=6)
                self.assertEqual((a.status, b.status), (c.get("status", 200),) * 2)
                self.assertEqual((a.cache, b.cache), ("MISS", "HIT"))
                self.assertEqual(a.body, b.body)
                self.assertEqual(self.origin.count(path), 1)
                for h, v in c.get("headers", {}).items():
                    self.assertEqual(b.headers.get(h.lower()), v, "stored headers are replayed")

    def test_upstream_max_age_caps_the_ttl(self):
        for kind, cc in (("maxage1", "max-age=1"), ("smaxage1", "max-age=600, s-maxage=1")):
            with self.subTest(cc=cc):
                path = "/nc/" + kind
                self.origin.config(path, headers={"Cache-Control": cc})
                self.assertEqual(get(self.s.port, path, user=7).cache, "MISS")
                self.assertEqual(get(self.s.port, path, user=7).cache, "HIT")
                time.sleep(1.3)
                self.assertEqual(get(self.s.port, path, user=7).cache, "MISS")
                self.assertEqual(self.origin.count(path), 2)

    def test_age_grows_on_hits(self):
        path = "/priv/age"
        self.assertEqual(get(self.s.port, path, user=4).headers.get("age"), "0")
        time.sleep(1.1)
        r = get(self.s.port, path, user=4)
        self.assertEqual(r.cache, "HIT")
        self.assertGreaterEqual(int(r.headers["age"]), 1)
        self.assertLessEqual(int(r.headers["age"]), 2)

    def test_vary_headers_are_part_of_the_key(self):
        path = "/vary/a"
        self.origin.config(path, headers={"Vary": "Accept-Language"})
        seen = {}
        for lang, want in (("en", "MISS"), ("fr", "MISS"), ("en", "HIT"), ("fr", "HIT")):
            r = get(self.s.port, path, user=8, headers={"Accept-Language": lang})
            self.assertEqual(r.cache, want, (lang, r))
            self.assertEqual(r.json()["h"].get("accept-language"), lang)
            seen.setdefault(lang, r.body)
            self.assertEqual(seen[lang], r.body)
        self.assertEqual(self.origin.count(path), 2)

    def test_credentials_bypass_a_shared_entry(self):
        path = "/shared/creds"
        for h in ({"Authorization": "Bearer x"}, {"Cookie": "sid=x"}):
            for _ in range(2):
                r = get(self.s.port, path, headers=h)
                self.assertEqual((r.status, r.cache), (200, "BYPASS"), (h, r))
        self.assertEqual(self.origin.count(path), 4)
        plain = [get(self.s.port, path) for _ in range(2)]
        self.assertEqual([r.cache for r in plain], ["MISS", "HIT"])
        self.assertFalse(plain[1].json()["auth"])
        # A caller with credentials is not answered from the shared entry either.
        r = get(self.s.port, path, headers={"Authorization": "Bearer y"})
        self.assertEqual(r.cache, "BYPASS")
        self.assertTrue(r.json()["auth"])
        self.assertEqual(self.origin.count(path), 6)

    def test_credentials_with_identity_use_the_per_user_entry(self):
        path = "/priv/creds"
        h = {"X-User-Id": "9", "Authorization": "Bearer nine"}
        self.assertEqual([get(self.s.port, path, headers=h).cache for _ in range(2)], ["MISS", "HIT"])
        # Authorization without the identity the key names: straight to the origin.
        r = [get(self.s.port, path, headers={"Authorization": "Bearer anon"}) for _ in range(2)]
        self.assertEqual([x.cache for x in r], ["BYPASS", "BYPASS"])
        self.assertEqual(self.origin.count(path), 3)

    def attacks(self, base):
        """(name, request) pairs: each sends a poisoning attempt for base (a path)."""
        port = self.s.port
        return [
            ("x-forwarded-host", lambda h: get(port, base, headers=dict(h, **{
                "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example;proto=https",
                "X-Forwarded-For": "6.6.6.6"}))),
            ("unkeyed header", lambda h: get(port, base, headers=dict(h, **{"X-Evil": "evil-header"}))),
            ("unkeyed query", lambda h: get(port, base + "?utm_content=evil-query&cb=1", headers=h)),
            ("path parameter", lambda h: get(port, base + ";evil-param", headers=h)),
            ("fat GET", lambda h: req(port, "GET", base, headers=dict(h, **{"Content-Type": "text/plain"}),
                                      body="evil-body")),
        ]

    def test_poisoning_a_per_user_entry_never_reaches_another_user(self):
        for i, (name, _) in enumerate(self.attacks("/")):
            with self.subTest(attack=name):
                base = "/priv/p%d" % i
                attack = dict(self.attacks(base))[name]
                a = attack({"X-User-Id": "666"})
                for _ in range(2):
                    v = get(self.s.port, base, user=2)
                    self.assertEqual(v.status, 200, v)
                    self.assertNotIn(b"evil", v.body, (name, a, v))
                    self.assertEqual(v.json()["user"], "2")

    def test_poisoning_a_shared_entry_never_reaches_another_caller(self):
        for i, (name, _) in enumerate(self.attacks("/")):
            with self.subTest(attack=name):
                base = "/shared/p%d" % i
                if name == "unkeyed header":
                    # The origin's answer depends on X-Evil and says so.
                    self.origin.config(base, headers={"Vary": "X-Evil"})
                attack = dict(self.attacks(base))[name]
                a = attack({})
                for _ in range(2):
                    v = get(self.s.port, base)
                    self.assertEqual(v.status, 200, v)
                    self.assertNotIn(b"evil", v.body, (name, a, v))
                    self.assertEqual(v.json()["path"], base)

    def test_forwarded_headers_are_never_passed_on_even_when_cached(self):
        a = get(self.s.port, "/shared/xfh", headers={"X-Forwarded-Host": "evil.example",
                                                     "X-Forwarded-For": "6.6.6.6"})
        self.assertEqual(a.status, 200)
        got = a.json()["h"]
        self.assertNotIn("x-forwarded-host", got)
        self.assertEqual(got.get("x-forwarded-for"), "127.0.0.1")

    def test_deception_paths_never_serve_one_callers_answer_to_another(self):
        paths = ["/account/x.css", "/account/x.css?v=.css", "/account%2Fx.css", "/account/x%2Fy.css",
                 "/account/x%00.css", "/account/..%2Fx.css", "/account/x;.css", "/static/x.css",
                 "/static/..%2Faccount", "/static/%2E%2E%2Faccount", "/static/x%00.css",
                 "/priv/x.css", "/shared/x.css", "/shared/x%2F..%2Fy.css"]
        for path in paths:
            with self.subTest(path=path):
                victim = [get(self.s.port, path, headers=VICTIM) for _ in range(2)]
                for v in victim:
                    if v.status == 200 and not path.startswith("/priv/"):
                        self.assertNotEqual(v.cache, "HIT", (path, v))
                for _ in range(2):
                    a = get(self.s.port, path)
                    for mark in VICTIM_MARKS:
                        self.assertNotIn(mark, a.body, (path, a))
                    if a.status == 200 and a.headers.get("content-type") == "application/json":
                        self.assertNotEqual(a.json().get("user"), "1", (path, a))

    def test_error_answers_of_the_origin_are_passed_through_and_not_cached(self):
        for status in (500, 404):
            with self.subTest(status=status):
                path = "/priv/err%d" % status
                self.origin.config(path, status=status)
                rs = [get(self.s.port, path, user=3) for _ in range(3)]
                self.assertEqual([r.status for r in rs], [status] * 3)
                self.assertEqual([r.json()["n"] for r in rs], [1, 2, 3])
                self.assertNotIn("HIT", [r.cache for r in rs])
                # Once the origin recovers, its good answer is cached (how soon: the next test).
                self.origin.config(path, status=200)
                self.assertEqual(get(self.s.port, path, user=3).cache, "MISS")
                self.assertIn("HIT", [get(self.s.port, path, user=3).cache for _ in range(3)])

    def test_after_an_uncacheable_answer_the_first_good_answer_is_stored(self):
        # Sequential requests: 404, 404, then 200 from the origin. The 200 is stored, and the
        # next request is a HIT: the remembered "uncacheable" never overwrites it.
        late = []
        t0 = time.monotonic()
        for i in range(self.ROUNDS):
            path = "/priv/recover%d" % i
            for _ in range(2):
                r = get(self.s.port, path, user=3, headers={"X-Origin-Status": "404"})
                self.assertEqual(r.status, 404)
            seq = [get(self.s.port, path, user=3).cache for _ in range(2)]
            if seq != ["MISS", "HIT"]:
                late.append((i, seq))
        note("%d rounds of 404, 404, 200, 200 in %.1f s: %d rounds with the 200 not stored at once"
             % (self.ROUNDS, time.monotonic() - t0, len(late)))
        self.assertEqual(late, [], "the good answer was not stored at once (%d of %d)"
                         % (len(late), self.ROUNDS))


class CacheSecurityRedis(CacheSecurity):
    REDIS = True


# ---------------------------------------------------------------------------

COND_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@" }
endpoint "GET /cond/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "cond:{path.id}:{user}" },
}
'''


class Conditional(ProxyCase):
    ORIGIN_CONFIG = {"/cond/own": {"headers": {"ETag": '"v1-from-origin"'}}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(COND_POLICY))

    def cached(self, path):
        self.assertEqual(get(self.s.port, path, user=1).cache, "MISS")
        r = get(self.s.port, path, user=1)
        self.assertEqual((r.status, r.cache), (200, "HIT"))
        self.assertIn("etag", r.headers, "a cached answer carries an ETag")
        return r

    def check(self, path):
        r = self.cached(path)
        etag = r.headers["etag"]
        c = get(self.s.port, path, user=1, headers={"If-None-Match": etag})
        self.assertEqual(c.status, 304, c)
        self.assertEqual(c.body, b"")
        self.assertEqual(c.headers.get("etag"), etag)
        c = get(self.s.port, path, user=1, headers={"If-None-Match": '"nope", ' + etag})
        self.assertEqual(c.status, 304, c)
        n = get(self.s.port, path, user=1, headers={"If-None-Match": '"nope"'})
        self.assertEqual((n.status, n.body), (200, r.body))
        self.assertEqual(self.origin.count(path), 1)
        return etag

    def test_origin_etag(self):
        self.assertEqual(self.check("/cond/own"), '"v1-from-origin"')

    def test_computed_etag_is_strong(self):
        etag = self.check("/cond/computed")
        self.assertTrue(etag.startswith('"') and etag.endswith('"') and len(etag) > 2, etag)

    def test_if_none_match_uses_weak_comparison(self):
        # RFC 9110 13.1.2: If-None-Match compares weakly, so W/"x" matches "x".
        etag = self.cached("/cond/weak").headers["etag"]
        c = get(self.s.port, "/cond/weak", user=1, headers={"If-None-Match": "W/" + etag})
        self.assertEqual(c.status, 304, c)

    def test_if_none_match_star(self):
        self.cached("/cond/star")
        c = get(self.s.port, "/cond/star", user=1, headers={"If-None-Match": "*"})
        self.assertEqual(c.status, 304, c)

    def test_another_users_etag_does_not_match(self):
        etag = self.cached("/cond/other").headers["etag"]
        c = get(self.s.port, "/cond/other", user=2, headers={"If-None-Match": etag})
        self.assertEqual(c.status, 200, "user 2 has an answer of their own")
        self.assertEqual(c.json()["user"], "2")


class ConditionalRedis(Conditional):
    REDIS = True


# ---------------------------------------------------------------------------

HFM_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@", timeout = "20s" }
endpoint "GET /hfm/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "hfm:{path.id}:{user}" },
}
'''


class HitForMiss(ProxyCase):
    """An uncacheable slow route: concurrent requests go to the origin side by side."""

    DELAY = 0.3 * (2 if SAN else 1)
    N = 20

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(HFM_POLICY))

    def fire(self, path):
        t0 = time.monotonic()
        rs = concurrently(self.N, lambda i: get(self.s.port, path, user=1))
        took = time.monotonic() - t0
        self.assertEqual([r.status for r in rs], [200] * self.N)
        self.assertNotIn("HIT", [r.cache for r in rs])
        st = self.origin.stats(path)
        note("%d concurrent requests, uncacheable answer, origin delay %d ms: %.0f ms in all, "
             "origin count %d, at most %d at once, X-Cache %s"
             % (self.N, self.DELAY * 1000, took * 1000, st["count"], st["max_inflight"],
                sorted({str(r.cache) for r in rs})))
        return took, st

    def test_remembered_uncacheable_goes_straight_to_the_origin(self):
        path = "/hfm/a"
        self.origin.config(path, delay_ms=int(self.DELAY * 1000), headers={"Cache-Control": "no-store"})
        self.assertEqual(get(self.s.port, path, user=1).status, 200)  # now remembered as uncacheable
        self.origin.reset()
        self.origin.config(path, delay_ms=int(self.DELAY * 1000), headers={"Cache-Control": "no-store"})
        took, st = self.fire(path)
        self.assertEqual(st["count"], self.N)
        self.assertGreaterEqual(st["max_inflight"], self.N // 2, "in parallel, not one by one")
        self.assertLess(took, self.DELAY * 2.5, "about one origin delay, not %d" % self.N)

    def test_first_wave_waits_at_most_one_fill(self):
        path = "/hfm/b"
        self.origin.config(path, delay_ms=int(self.DELAY * 1000), headers={"Set-Cookie": "s=1"})
        took, st = self.fire(path)
        self.assertEqual(st["count"], self.N)
        # The others wait for the first answer (bounded), then go together: never one by one.
        self.assertLess(took, self.DELAY * 2 + 1.2 * SLACK, "the waiters were serialized")


class HitForMissRedis(HitForMiss):
    REDIS = True


# ---------------------------------------------------------------------------

CATCHALL_POLICY = r'''
upstream "origin" { url = "@ORIGIN@", timeout = "5s" }
endpoint "* /c/*" { upstream = "origin", cache = { ttl = "5m" } }
endpoint "GET /assets/*" { upstream = "origin", cache = { ttl = "5m" } }
endpoint "GET /search" { upstream = "origin", cache = { ttl = "5m", key = "search:{query.q}", shared = true } }
endpoint "* /lim/*" {
  upstream = "origin",
  cache = { ttl = "origin", tags = { "lim-all" } },
  limit = { { limit = 3, window = "1m", key = "lim:{ip}" } },
}
'''


class CatchAll(ProxyCase):
    """Catch-all routes ("* /*", "GET /*") as a plain shared cache: the default key holds the
    method, the whole path and the canonical query; any method is forwarded; a write
    invalidates the stored answers of its URL, Location and Content-Location (RFC 9111 4.4);
    the query an upstream receives is the one the key holds."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(CATCHALL_POLICY))

    def get2(self, path, **kw):
        a, b = get(self.s.port, path, **kw), get(self.s.port, path, **kw)
        return a, b

    def test_rfc9111_2_default_key_of_a_wildcard_route_holds_the_whole_path(self):
        a, b = self.get2("/assets/app.js")
        c, d = self.get2("/assets/private/x.css")
        self.assertEqual([x.cache for x in (a, b, c, d)], ["MISS", "HIT", "MISS", "HIT"])
        self.assertEqual(a.json()["path"], "/assets/app.js")
        self.assertEqual(d.json()["path"], "/assets/private/x.css")
        self.assertEqual(b.body, a.body)

    def test_rfc9111_2_query_order_does_not_split_an_entry_but_values_do(self):
        a = get(self.s.port, "/c/q?b=2&a=1")
        b = get(self.s.port, "/c/q?a=1&b=2")
        c = get(self.s.port, "/c/q?a=1&b=3")
        d = get(self.s.port, "/c/q?a=1&b=%32")  # the same parameters, spelled another way
        self.assertEqual([x.cache for x in (a, b, c, d)], ["MISS", "HIT", "MISS", "HIT"])
        self.assertEqual(a.json()["query"], "a=1&b=2")  # the canonical query is what is sent
        self.assertEqual(d.body, b.body)
        self.assertEqual(self.origin.count("/c/q"), 2)

    def test_rfc9110_9_3_head_is_answered_from_the_get_entry(self):
        a = get(self.s.port, "/c/h")
        h = req(self.s.port, "HEAD", "/c/h")
        self.assertEqual((a.cache, h.cache, h.status, h.body), ("MISS", "HIT", 200, b""))
        self.assertEqual(self.origin.count("/c/h"), 1)

    def test_rfc9110_9_1_any_method_is_forwarded_as_it_came(self):
        for m in ("FOO", "PUT", "OPTIONS", "DELETE"):
            r = req(self.s.port, m, "/c/m?x=1", body="payload" if m in ("FOO", "PUT") else None)
            self.assertEqual(r.status, 200, (m, r))
            self.assertIsNone(r.cache, m)
            j = r.json()
            self.assertEqual((j["method"], j["query"]), (m, "x=1"))
        self.assertEqual(self.origin.log("/c/m")[0]["body"], "payload")

    def test_rfc9111_4_4_a_write_invalidates_its_target_url(self):
        a, b = self.get2("/c/item?v=1")
        self.assertEqual((a.cache, b.cache), ("MISS", "HIT"))
        w = req(self.s.port, "POST", "/c/item?v=1", body="x")
        self.assertEqual(w.status, 200)
        self.assertEqual(get(self.s.port, "/c/item?v=1").cache, "MISS")
        # An unknown method invalidates too; an error answer does not.
        self.assertEqual(get(self.s.port, "/c/item?v=1").cache, "HIT")
        req(self.s.port, "FOO", "/c/item?v=1")
        self.assertEqual(get(self.s.port, "/c/item?v=1").cache, "MISS")
        req(self.s.port, "POST", "/c/item?v=1&status=500")
        req(self.s.port, "DELETE", "/c/item?status=404&v=1")
        self.assertEqual(get(self.s.port, "/c/item?v=1").cache, "HIT")

    def test_rfc9111_4_4_location_and_content_location_of_this_origin(self):
        host = "127.0.0.1:%d" % self.s.port
        for p in ("/c/loc/a", "/c/loc/b", "/c/loc/c", "/c/loc/d"):
            self.get2(p)
        req(self.s.port, "POST", "/c/loc/new?h=Location:/c/loc/a&h=Content-Location:b")
        req(self.s.port, "POST", "/c/loc/new?h=Location:http://%s/c/loc/c" % host)
        req(self.s.port, "POST", "/c/loc/new?h=Location:http://elsewhere.example/c/loc/d")
        got = {p: get(self.s.port, p).cache for p in ("/c/loc/a", "/c/loc/b", "/c/loc/c",
                                                       "/c/loc/d")}
        self.assertEqual(got, {"/c/loc/a": "MISS", "/c/loc/b": "MISS", "/c/loc/c": "MISS",
                               "/c/loc/d": "HIT"})

    def test_query_spelled_two_ways_or_repeated_is_refused_where_keyed(self):
        # The poisoning shapes: what the upstream reads must be what the key holds.
        for q in ("%71=ATTACKER&q=shoes", "q=shoes&q=ATTACKER", "q=a&%71=b"):
            r = get(self.s.port, "/search?" + q)
            self.assertTrue(is_problem(r, 400), (q, r))
        self.assertEqual(self.origin.count("/search"), 0)
        r = get(self.s.port, "/search?utm=1&q=shoes")
        self.assertEqual((r.status, r.json()["query"]), (200, "q=shoes"))
        r2 = get(self.s.port, "/search?q=sh%6Fes&utm=2")
        self.assertEqual((r2.cache, r2.body), ("HIT", r.body))

    def test_limits_and_tags_work_the_same_on_a_catch_all_route(self):
        a = get(self.s.port, "/lim/a?cc=max-age%3D60")
        b = get(self.s.port, "/lim/a?cc=max-age%3D60")
        self.assertEqual((a.cache, b.cache), ("MISS", "HIT"))
        self.assertEqual(b.headers["x-ratelimit-remaining"], "1")
        st, _, body = self.s.admin("POST", "/invalidate", body={"tags": ["lim-all"]})
        self.assertEqual(st, 200, body)
        c = get(self.s.port, "/lim/a?cc=max-age%3D60")
        self.assertEqual(c.cache, "MISS")
        d = req(self.s.port, "POST", "/lim/b")
        self.assertTrue(is_problem(d, 429), d)
        self.assertIn("retry-after", d.headers)

    def test_a_long_upstream_etag_never_cuts_the_head(self):
        # An ETag longer than the request's own header buffer: the head grows, it is never cut
        # (a cut head would put the body in the header section and the next answer after it).
        etag = '"' + "e" * 3000 + '"'
        self.origin.config("/c/longtag", headers={"ETag": etag, "Cache-Control": "max-age=60"})
        one = b"GET /c/longtag HTTP/1.1\r\nHost: x\r\n\r\n"
        out = raw(self.s.port, one + one + one, timeout=1)
        heads = [p for p in out.split(b"HTTP/1.1 ")[1:]]
        self.assertEqual(len(heads), 3, out[:300])
        for h in heads:
            head, _, body = h.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"200"), head[:100])
            self.assertIn(b"\r\nETag: " + etag.encode() + b"\r\n", head + b"\r\n")
            self.assertTrue(body.startswith(b"{"), body[:40])

    def test_malformed_query_on_a_cacheable_request_is_400(self):
        r = get(self.s.port, "/c/bad?a=%zz")
        self.assertTrue(is_problem(r, 400), r)
        self.assertEqual(self.origin.count("/c/bad"), 0)


FORWARD_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@", timeout = "5s", connect_timeout = "1s" }
upstream "prefixed" { url = "@ORIGIN@/base" }
upstream "down" { url = "http://127.0.0.1:@DEAD@", timeout = "2s", connect_timeout = "500ms" }
upstream "short" { url = "@ORIGIN@", timeout = "500ms" }
endpoint "GET /fwd/{id}" { upstream = "origin" }
endpoint "PUT /fwd/{id}" { upstream = "origin" }
endpoint "PATCH /fwd/{id}" { upstream = "origin" }
endpoint "DELETE /fwd/{id}" { upstream = "origin" }
endpoint "POST /fwd/{id}" { upstream = "origin" }
endpoint "GET /fwdc/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "fwdc:{path.id}:{user}" },
}
endpoint "GET /fwdq?type=a" {
  upstream = "origin",
  cache = { ttl = "5m", key = "fwdq:{query.page}:{user}" },
}
endpoint "GET /pfx/{id}" { upstream = "prefixed" }
endpoint "GET /down" { upstream = "down" }
endpoint "GET /downc" { upstream = "down", cache = { ttl = "5m", key = "downc:{user}" } }
endpoint "GET /slow" { upstream = "short" }
'''

HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
              "upgrade", "proxy-authorization", "proxy-authenticate", "x-hop-secret", "http2-settings")


class Forwarding(ProxyCase):
    ORIGIN_CONFIG = {"/fwd/resp": {"headers": [
        ["X-App", "yes"], ["Connection", "X-Resp-Hop"], ["X-Resp-Hop", "secret"],
        ["Keep-Alive", "timeout=77"], ["Proxy-Authenticate", "Basic realm=x"],
        ["Upgrade", "h2c"], ["Cache-Control", "max-age=60"]]}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.s = cls.start(cls.policy(FORWARD_POLICY))

    def test_request_as_the_origin_sees_it(self):
        r = get(self.s.port, "/fwd/a?x=1&y=two%20words&x=3", headers={
            "X-User-Id": "7", "Authorization": "Bearer fwd-token", "X-Custom": "kept",
            "Accept": "application/json",
            "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6;host=evil.example",
            "Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "s", "Keep-Alive": "timeout=5",
            "TE": "trailers", "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Proxy-Connection": "keep-alive"})
        self.assertEqual(r.status, 200, r)
        o = r.json()
        names = [k for k, _ in o["headers"]]
        self.assertEqual(o["method"], "GET")
        self.assertEqual(o["path"], "/fwd/a")
        self.assertEqual(o["query"], "x=1&y=two%20words&x=3")
        self.assertEqual(o["h"]["host"], "127.0.0.1:%d" % self.origin.port)
        self.assertEqual(names.count("host"), 1)
        self.assertEqual(o["h"].get("x-forwarded-for"), "127.0.0.1")
        self.assertEqual(names.count("x-forwarded-for"), 1)
        self.assertEqual(o["h"].get("x-forwarded-proto"), "http")
        self.assertEqual(names.count("x-forwarded-proto"), 1)
        self.assertNotIn("x-forwarded-host", names)
        # The client's Forwarded is dropped; sluice's own names the peer (RFC 7239 section 4).
        self.assertEqual(names.count("forwarded"), 1)
        self.assertEqual(o["h"].get("forwarded"), "for=127.0.0.1;proto=http")
        self.assertEqual(o["user"], "7")
        self.assertEqual(o["h"].get("authorization"), "Bearer fwd-token")
        self.assertEqual(o["h"].get("x-custom"), "kept")
        self.assertEqual(o["h"].get("accept"), "application/json")
        for h in HOP_BY_HOP:
            if h == "connection":
                # A Connection header of the gateway's own is allowed; the client's tokens are not.
                self.assertNotIn("x-hop-secret", o["h"].get("connection", "").lower())
            else:
                self.assertNotIn(h, names, "hop-by-hop %s was forwarded" % h)
        self.assertEqual(o["body"], "")

    def test_h2c_upgrade_is_not_forwarded(self):
        r = get(self.s.port, "/fwd/h2c", headers={
            "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA",
            "Connection": "Upgrade, HTTP2-Settings"})
        self.assertIn(r.status, (200, 400), r)
        self.assertNotEqual(r.status, 101)
        if r.status == 200:
            names = [k for k, _ in r.json()["headers"]]
            self.assertNotIn("upgrade", names)
            self.assertNotIn("http2-settings", names)

    def test_upstream_path_prefix(self):
        r = get(self.s.port, "/pfx/a?q=1", user=7)
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["path"], r.json()["query"]), ("/base/pfx/a", "q=1"))

    def test_methods_and_bodies(self):
        for method in ("PUT", "PATCH", "DELETE", "POST"):
            with self.subTest(method=method):
                body = json.dumps({"m": method, "text": "héllo"})
                r = req(self.s.port, method, "/fwd/m1?k=v",
                        {"X-User-Id": "7", "Content-Type": "application/json"}, body.encode())
                self.assertEqual(r.status, 200, r)
                o = r.json()
                self.assertEqual((o["method"], o["path"], o["query"]), (method, "/fwd/m1", "k=v"))
                self.assertEqual(o["body"], body)
                self.assertEqual(o["h"].get("content-type"), "application/json")
                self.assertEqual(o["h"].get("content-length"), str(len(body.encode())))

    def test_chunked_request_body_is_forwarded(self):
        body = b'{"chunked": true}'
        resp = raw(self.s.port, b"POST /fwd/ch HTTP/1.1\r\nHost: x\r\nX-User-Id: 7\r\n"
                                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
                   b"%x\r\n%s\r\n" % (5, body[:5]) + b"%x\r\n%s\r\n" % (len(body) - 5, body[5:]) +
                   b"0\r\n\r\n")
        self.assertTrue(resp.startswith(b"HTTP/1.1 200"), resp[:300])
        self.assertIn(b'"body": "{\\"chunked\\": true}"', resp)

    def test_response_headers_without_hop_by_hop(self):
        r = get(self.s.port, "/fwd/resp", user=7)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("x-app"), "yes")
        self.assertEqual(r.headers.get("cache-control"), "max-age=60")
        self.assertNotIn("x-resp-hop", r.headers)
        self.assertNotIn("proxy-authenticate", r.headers)
        self.assertNotIn("upgrade", r.headers)
        self.assertNotEqual(r.headers.get("keep-alive"), "timeout=77")

    def test_origin_status_and_problem_bodies_pass_through(self):
        self.origin.config("/fwd/e503", status=503, headers={"Retry-After": "7"})
        r = get(self.s.port, "/fwd/e503", user=7)
        self.assertEqual(r.status, 503)
        self.assertEqual(r.headers.get("retry-after"), "7")
        self.assertEqual(r.json()["path"], "/fwd/e503")

    def test_response_framings_and_large_bodies(self):
        framings = {"chunked": {"chunked": True}, "eof": {"eof": True},
                    "bigchunked": {"pad": 300000, "chunked": True}, "bigeof": {"pad": 300000, "eof": True},
                    "big": {"pad": 900000}}
        for name, c in framings.items():
            with self.subTest(framing=name):
                path = "/fwdc/" + name
                self.origin.config(path, **c)
                r = get(self.s.port, path, user=7)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["path"], path)
                self.assertEqual(len(r.json().get("pad", "")), c.get("pad", 0))
                h = get(self.s.port, path, user=7)
                self.assertEqual((h.cache, h.body), ("HIT", r.body))

    def test_cacheable_request_forwards_only_pinned_and_keyed_query_parameters(self):
        r = get(self.s.port, "/fwdq?utm=x&type=a&page=2&cb=9", user=7)
        self.assertEqual(r.status, 200, r)
        got = sorted(r.json()["query"].split("&"))
        self.assertEqual(got, ["page=2", "type=a"])
        # Another unkeyed value: the same entry.
        r2 = get(self.s.port, "/fwdq?type=a&page=2&utm=other", user=7)
        self.assertEqual((r2.cache, r2.body), ("HIT", r.body))
        r3 = get(self.s.port, "/fwdq?type=a&page=3", user=7)
        self.assertEqual(r3.cache, "MISS")

    def test_upstream_down_is_502_problem(self):
        for path in ("/down", "/downc"):
            r = get(self.s.port, path, user=7)
            self.assertTrue(is_problem(r, 502), r)
            self.assertLess(r.took, 2.0 * SLACK)

    def test_slow_past_timeout_is_504_problem(self):
        r = get(self.s.port, "/slow?delay_ms=3000", user=7)
        note("upstream timeout 500 ms: 504 after %.0f ms" % (r.took * 1000))
        self.assertTrue(is_problem(r, 504), r)
        self.assertGreater(r.took, 0.45)
        self.assertLess(r.took, 0.5 + 1.0 * SLACK)

    def test_answers_never_go_to_the_wrong_request(self):
        # Many concurrent requests with random origin delays over the gateway's connection pool:
        # each answer is the one to its own request.
        def one(i):
            return i, get(self.s.port, "/fwd/mix%d?delay_ms=%d&i=%d" % (i % 50, (i * 37) % 60, i),
                          user=1000 + i)

        wrong = []
        for i, r in concurrently(300, one):
            self.assertEqual(r.status, 200, r)
            o = r.json()
            if (o["path"], o["user"], o["query"].split("&")[-1]) != ("/fwd/mix%d" % (i % 50),
                                                                   str(1000 + i), "i=%d" % i):
                wrong.append((i, o["path"], o["user"], o["query"]))
        self.assertEqual(wrong, [])

    def test_a_late_answer_is_never_given_to_the_next_request(self):
        # A request that timed out leaves its connection with an answer still coming: that
        # connection must not be reused for the next request.
        for round_ in range(3):
            r = get(self.s.port, "/slow?delay_ms=800&late=%d" % round_, user=7)
            self.assertTrue(is_problem(r, 504), r)
            time.sleep(0.4)  # the late answer arrives on the old connection
            for i in range(6):
                n = get(self.s.port, "/slow?next=%d-%d" % (round_, i), user=7)
                self.assertEqual(n.status, 200, n)
                self.assertEqual(n.json()["query"], "next=%d-%d" % (round_, i))

    def test_origin_restart_does_not_fail_the_next_requests(self):
        # The gateway's pooled keep-alive connections die with the origin; the next GETs must
        # open new ones rather than answer 502.
        for i in range(8):
            self.assertEqual(get(self.s.port, "/fwd/pool%d" % i, user=7).status, 200)
        self.restart_origin()
        for i in range(8):
            r = get(self.s.port, "/fwd/pool%d" % i, user=7)
            self.assertEqual(r.status, 200, (i, r))

    def test_keep_alive_client_gets_every_answer(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.s.port, timeout=10)
        try:
            for i in range(20):
                conn.request("GET", "/fwd/ka%d" % (i % 3), headers={"X-User-Id": "7"})
                r = conn.getresponse()
                self.assertEqual(r.status, 200)
                self.assertEqual(json.loads(r.read())["path"], "/fwd/ka%d" % (i % 3))
        finally:
            conn.close()


PARSE_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@", timeout = "1s" }
endpoint "GET /c/{id}" { upstream = "origin", cache = { ttl = "5m", key = "c:{path.id}:{user}" } }
endpoint "GET /u/{id}" { upstream = "origin" }
'''

# Answers no gateway may pass on or store: each is a 502 (or a 504 when it never completes).
MALFORMED = {
    "two-lengths": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "length-and-chunked": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "5\r\nhello\r\n0\r\n\r\n",
    "bad-chunk-size": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "nul-in-field": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: a\x00b\r\n\r\nhello",
    "no-status-line": "hello there\r\n\r\n",
    "space-before-colon": "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    "obs-fold": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: a\r\n b\r\n\r\nhello",
    "negative-length": "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
    "huge-length": "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
    "chunked-not-last": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
                        "5\r\nhello\r\n0\r\n\r\n",
    "chunked-twice": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
                     "5\r\nhello\r\n0\r\n\r\n",
    "coding-and-length": "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
    "status-999": "HTTP/1.1 999 Odd\r\nContent-Length: 5\r\n\r\nhello",
    "body-short-of-length": "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello",
}


class UpstreamAnswers(ProxyCase):
    """What the upstream client accepts from an origin: malformed answers are errors, never
    cached, and bytes past an answer's end never become another request's answer."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(PARSE_POLICY))

    def test_malformed_answers_are_gateway_errors(self):
        for name, answer in MALFORMED.items():
            with self.subTest(answer=name):
                for base in ("/c/", "/u/"):
                    self.origin.config(base + name, raw=answer)
                    for _ in range(2):
                        r = get(self.s.port, base + name, user=1)
                        self.assertTrue(is_problem(r, 502) or is_problem(r, 504), (base, r))
                        self.assertNotIn(b"hello", r.body)
                self.assertEqual(self.origin.count("/c/" + name), 2, "an error is never cached")

    def test_interim_and_http10_answers(self):
        for name, answer in (("http10", "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
                             ("continue", "HTTP/1.1 100 Continue\r\n\r\n"
                                          "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")):
            with self.subTest(answer=name):
                self.origin.config("/c/" + name, raw=answer)
                rs = [get(self.s.port, "/c/" + name, user=1) for _ in range(2)]
                self.assertEqual([(r.status, r.body) for r in rs], [(200, b"hello")] * 2)
                self.assertEqual([r.cache for r in rs], ["MISS", "HIT"])

    def test_bytes_past_the_end_never_answer_another_request(self):
        smuggled = ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                    "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Evil: 1\r\n\r\nevil")
        for i in range(3):
            self.origin.config("/u/smuggle%d" % i, raw=smuggled)
            r = get(self.s.port, "/u/smuggle%d" % i, user=1)
            self.assertEqual((r.status, r.body), (200, b"hello"))
            for j in range(10):
                n = get(self.s.port, "/u/next%d-%d" % (i, j), user=2)
                self.assertEqual(n.status, 200, n)
                self.assertNotIn("x-evil", n.headers)
                self.assertEqual(n.json()["path"], "/u/next%d-%d" % (i, j))


def exchange(port, data, timeout=5):
    """Raw bytes in; (everything the server answers, whether it closed the connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out, False
            if not chunk:
                return out, True
            out += chunk
    finally:
        s.close()


def get11(port, path, extra=b""):
    """A raw HTTP/1.1 GET of path as user 1 (extra: more header lines); like exchange()."""
    return exchange(port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-User-Id: 1\r\n" +
                    extra + b"\r\n")


def answers(data):
    """The answers in data: [(status, status line, {lower-cased name: [values]}, body)], the
    interim ones with an empty body, the final one with every byte after its head."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields.setdefault(name.strip().lower(), []).append(value.strip())
        status = int(lines[0].split(" ")[1])
        if 100 <= status < 200:
            out.append((status, lines[0], fields, b""))
            continue
        out.append((status, lines[0], fields, data))
        break
    return out


PASS_ON_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@", timeout = "5s" }
endpoint "GET /ic/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "ic:{path.id}:{user}", tags = { "ic:{user}" } },
}
endpoint "POST /ic/{id}" { upstream = "origin", invalidate = { "ic:{user}" } }
endpoint "GET /iu/{id}" { upstream = "origin" }
'''

HINT = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
FINAL = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CODED = gzip.compress(b"hello, coded world\n" * 20)


def coded_answer(coding="gzip"):
    return ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-App: 1\r\n"
            "Transfer-Encoding: %s\r\n\r\n" % coding) + CODED.decode("latin-1")


class InterimAnswers(ProxyCase):
    """RFC 9110 15.2: interim (1xx) answers of the origin go on to HTTP/1.1 clients at once,
    never to HTTP/1.0 ones; 101 is never passed on."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(PASS_ON_POLICY))

    def test_rfc9110_15_2_proxy_forwards_103(self):
        for path in ("/iu/hints", "/ic/hints"):
            with self.subTest(path=path):
                self.origin.config(path, raw=HINT + FINAL)
                out, _ = get11(self.s.port, path, b"Connection: close\r\n")
                self.assertTrue(out.startswith(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\n"), out)
                a = answers(out)
                self.assertEqual([x[0] for x in a], [103, 200])
                self.assertEqual(a[1][3], b"hello")
                self.assertNotIn("link", a[1][2])
        # A hit is answered from the cache: no interim answer then.
        out, _ = get11(self.s.port, "/ic/hints", b"Connection: close\r\n")
        a = answers(out)
        self.assertEqual([x[0] for x in a], [200], out)
        self.assertEqual(a[0][2]["x-cache"], ["HIT"])

    def test_rfc9110_15_2_proxy_forwards_103_before_the_final_answer_exists(self):
        self.origin.config("/iu/slowhints", raw=[HINT, 800, FINAL])
        s = socket.create_connection(("127.0.0.1", self.s.port), timeout=10)
        try:
            s.sendall(b"GET /iu/slowhints HTTP/1.1\r\nHost: x\r\nX-User-Id: 1\r\n"
                      b"Connection: close\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            hint_at = time.monotonic()
            self.assertTrue(buf.startswith(b"HTTP/1.1 103 Early Hints\r\n"), buf)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            final_at = time.monotonic()
        finally:
            s.close()
        note("103 went out %.0f ms before the final answer" % ((final_at - hint_at) * 1000))
        self.assertGreater(final_at - hint_at, 0.5)
        self.assertEqual([x[0] for x in answers(buf)], [103, 200])

    def test_rfc9110_15_2_http10_client_gets_no_interim_answer(self):
        self.origin.config("/iu/hints10", raw=HINT + FINAL)
        out, closed = exchange(self.s.port, b"GET /iu/hints10 HTTP/1.0\r\nX-User-Id: 1\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.0 200 OK\r\n"), out)
        self.assertNotIn(b" 103 ", out)
        self.assertTrue(out.endswith(b"\r\n\r\nhello"), out)
        self.assertTrue(closed)

    def test_rfc9110_15_2_proxy_forwards_100_102_and_unknown_1xx_without_hop_by_hop_fields(self):
        self.origin.config("/iu/many", raw="HTTP/1.1 100 Continue\r\n\r\n"
                                           "HTTP/1.1 102 Processing\r\n\r\n"
                                           "HTTP/1.1 199 Odd\r\nX-A: 1\r\nConnection: X-H\r\n"
                                           "X-H: 2\r\nKeep-Alive: timeout=9\r\n\r\n" + FINAL)
        out, _ = get11(self.s.port, "/iu/many", b"Connection: close\r\n")
        a = answers(out)
        self.assertEqual([x[0] for x in a], [100, 102, 199, 200], out)
        self.assertEqual(a[2][2], {"x-a": ["1"]})
        self.assertEqual(a[3][3], b"hello")

    def test_rfc9110_15_2_upstream_101_is_a_bad_gateway(self):
        self.origin.config("/iu/switch", raw="HTTP/1.1 101 Switching Protocols\r\n"
                                             "Upgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        r = get(self.s.port, "/iu/switch", user=1)
        self.assertTrue(is_problem(r, 502), r)
        self.origin.config("/iu/hintswitch", raw=HINT + "HTTP/1.1 101 Switching Protocols\r\n\r\n")
        out, _ = get11(self.s.port, "/iu/hintswitch", b"Connection: close\r\n")
        self.assertEqual([x[0] for x in answers(out)], [103, 502], out)


class TransferCodings(ProxyCase):
    """RFC 9112 6.1 and 6.3: an answer in a transfer coding the gateway does not decode goes on
    as it came, delimited by closing the connection, and is never stored; never to HTTP/1.0."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(PASS_ON_POLICY))

    def check_coded(self, out, closed, body=CODED):
        a = answers(out)
        self.assertEqual(len(a), 1, out)
        status, _, f, got = a[0]
        self.assertEqual(status, 200, out)
        self.assertEqual(f.get("transfer-encoding"), ["gzip"])
        self.assertNotIn("content-length", f)
        self.assertEqual(f.get("connection"), ["close"])
        self.assertEqual(f.get("x-app"), ["1"])
        self.assertEqual(got, body)  # byte for byte
        self.assertTrue(closed, "the connection is closed after the body")
        return f

    def test_rfc9112_6_3_unknown_coding_passed_on_until_close_and_never_stored(self):
        for path, xcache in (("/ic/coded", ["MISS"]), ("/iu/coded", None)):
            with self.subTest(path=path):
                self.origin.config(path, raw=coded_answer(), close=True)
                for i in range(2):
                    out, closed = get11(self.s.port, path)  # a keep-alive request
                    f = self.check_coded(out, closed)
                    self.assertEqual(f.get("x-cache"), xcache)
                    self.assertEqual(f.get("age"), xcache and ["0"])
                self.assertEqual(gzip.decompress(CODED), b"hello, coded world\n" * 20)
                self.assertEqual(self.origin.count(path), 2, "never stored")

    def test_rfc9112_6_1_gzip_chunked_is_dechunked_and_passed_on_as_gzip(self):
        chunked = ("HTTP/1.1 200 OK\r\nX-App: 1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                   "%x\r\n%s\r\n0\r\n\r\n" % (len(CODED), CODED.decode("latin-1")))
        self.origin.config("/ic/gzchunked", raw=chunked)
        for i in range(2):
            out, closed = get11(self.s.port, "/ic/gzchunked")
            self.check_coded(out, closed)
        self.assertEqual(self.origin.count("/ic/gzchunked"), 2, "never stored")

    def test_rfc9112_6_1_http10_client_never_gets_a_transfer_coding(self):
        self.origin.config("/iu/coded10", raw=coded_answer(), close=True)
        out, closed = exchange(self.s.port, b"GET /iu/coded10 HTTP/1.0\r\nX-User-Id: 1\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.0 502 "), out)
        self.assertNotIn(b"transfer-encoding", out.lower())
        self.assertNotIn(CODED, out)
        self.assertTrue(closed)

    def test_rfc9112_6_1_a_coded_write_answer_still_invalidates(self):
        self.origin.config("/ic/w", method="GET", body="v1")
        self.assertEqual(get(self.s.port, "/ic/w", user=1).cache, "MISS")
        self.assertEqual(get(self.s.port, "/ic/w", user=1).cache, "HIT")
        self.origin.config("/ic/w", method="POST", raw=coded_answer(), close=True)
        out, closed = exchange(self.s.port, b"POST /ic/w HTTP/1.1\r\nHost: x\r\nX-User-Id: 1\r\n"
                                            b"Content-Type: application/json\r\n"
                                            b"Content-Length: 2\r\n\r\n{}")
        self.check_coded(out, closed)
        self.assertEqual(get(self.s.port, "/ic/w", user=1).cache, "MISS")
        self.assertEqual(self.origin.count("/ic/w"), 3)

    def test_rfc9112_6_1_request_in_an_unknown_coding_is_501(self):
        before = self.origin.count("/ic/w501")
        out, closed = exchange(self.s.port, b"POST /ic/w501 HTTP/1.1\r\nHost: x\r\nX-User-Id: 1\r\n"
                                            b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 501 "), out)
        self.assertTrue(closed)
        self.assertEqual(self.origin.count("/ic/w501"), before)


# ---------------------------------------------------------------------------

WRITE_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@" }
upstream "down" { url = "http://127.0.0.1:@DEAD@", connect_timeout = "500ms" }
endpoint "GET /w/items" {
  upstream = "origin",
  cache = { ttl = "5m", key = "items:{user}", tags = { "items:{user}" } },
}
endpoint "GET /w/keep/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "keep:{path.id}:{user}", tags = { "items:{user}" },
            stale_while_revalidate = "30s", stale_if_error = "10m" },
}
endpoint "POST /w/items" { upstream = "origin", invalidate = { "items:{user}" } }
endpoint "DELETE /w/items/{id}" { upstream = "origin", invalidate = { "items:{user}" } }
endpoint "POST /w/down" { upstream = "down", invalidate = { "items:{user}" } }
'''


class WriteInvalidation(ProxyCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.serve(cls.policy(WRITE_POLICY))

    def cached(self, user):
        get(self.s.port, "/w/items", user=user)
        r = get(self.s.port, "/w/items", user=user)
        self.assertEqual(r.cache, "HIT")
        return r

    def write(self, user, path, status=None, method="POST"):
        q = "?status=%d" % status if status else ""
        return req(self.s.port, method, path + q, {"X-User-Id": str(user)}, {"name": "x"})

    def test_2xx_write_invalidates(self):
        self.cached(1)
        self.cached(2)
        for status in (None, 201, 204):
            with self.subTest(status=status):
                self.cached(1)
                w = self.write(1, "/w/items", status)
                self.assertEqual(w.status, status or 200, w)
                r = get(self.s.port, "/w/items", user=1)
                self.assertEqual(r.cache, "MISS")
        # Only the writer's entries were dropped.
        self.assertEqual(get(self.s.port, "/w/items", user=2).cache, "HIT")
        # And the origin saw the write as sent.
        o = [x for x in self.origin.log("/w/items") if x["method"] == "POST"][-1]
        self.assertEqual((o["body"], o["user"]), ('{"name": "x"}', "1"))

    def test_delete_invalidates(self):
        self.cached(3)
        w = self.write(3, "/w/items/5", method="DELETE")
        self.assertEqual(w.status, 200)
        self.assertEqual(get(self.s.port, "/w/items", user=3).cache, "MISS")

    def test_refused_write_does_not_invalidate(self):
        for status in (400, 404, 409, 422, 500, 503):
            with self.subTest(status=status):
                before = self.cached(4)
                w = self.write(4, "/w/items", status)
                self.assertEqual(w.status, status, w)
                r = get(self.s.port, "/w/items", user=4)
                self.assertEqual((r.cache, r.body), ("HIT", before.body))

    def test_a_write_is_never_followed_by_stale_data(self):
        # An entry that may be served stale (swr, stale_if_error) and is dropped by a write is
        # not served STALE afterwards: the writer sees the write at once.
        path = "/w/keep/a"
        self.assertEqual([get(self.s.port, path, user=7).cache for _ in range(2)], ["MISS", "HIT"])
        self.assertEqual(self.write(7, "/w/items").status, 200)
        r = get(self.s.port, path, user=7)
        self.assertEqual((r.cache, r.json()["n"]), ("MISS", 2))
        # Nor when the origin fails right after the write.
        self.assertEqual(self.write(7, "/w/items").status, 200)
        self.origin.config(path, status=500)
        r = get(self.s.port, path, user=7)
        self.assertEqual(r.status, 500, r)
        self.assertNotEqual(r.cache, "STALE")
        self.origin.config(path, status=200)

    def test_a_fill_racing_a_write_is_not_stored(self):
        # The origin's answer was read before the write landed: storing it would hide the write.
        path = "/w/keep/race"
        self.origin.config(path, delay_ms=600)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("r", get(self.ports[-1], path, user=8)))
        t.start()
        time.sleep(0.2)
        self.assertEqual(self.write(8, "/w/items").status, 200)
        t.join()
        self.assertEqual((box["r"].status, box["r"].json()["n"]), (200, 1))
        r = get(self.s.port, path, user=8)
        self.assertEqual((r.cache, r.json()["n"]), ("MISS", 2))
        self.origin.config(path, delay_ms=0)

    def test_write_to_a_down_upstream_does_not_invalidate(self):
        self.cached(5)
        w = self.write(5, "/w/down")
        self.assertTrue(is_problem(w, 502), w)
        self.assertEqual(get(self.s.port, "/w/items", user=5).cache, "HIT")


class WriteInvalidationRedis(WriteInvalidation):
    """Two instances sharing Redis: a write through one drops what the other serves."""
    REDIS = True
    INSTANCES = 2

    def test_write_through_one_instance_invalidates_the_other(self):
        a, b = self.ports
        get(b, "/w/items", user=6)
        self.assertEqual(get(b, "/w/items", user=6).cache, "HIT")
        self.assertEqual(get(a, "/w/items", user=6).cache, "HIT")
        w = req(a, "POST", "/w/items", {"X-User-Id": "6"}, {"name": "x"})
        self.assertEqual(w.status, 200)
        self.assertEqual(get(b, "/w/items", user=6).cache, "MISS")


# ---------------------------------------------------------------------------

WARM_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@" }
endpoint "GET /warm/list" {
  upstream = "origin",
  cache = { ttl = "5m", key = "warm:list:{user}", warm = { { user = "1" }, { user = "2" } } },
  limit = { limit = 100, window = "1h", key = "wl:{user}" },
}
endpoint "GET /warm/sql" {
  upstream = "origin",
  cache = { ttl = "5m", key = "warm:sql:{user}",
            warm = sql("SELECT id::text FROM users WHERE plan = 'enterprise' AND id < 60 ORDER BY id") },
}
'''


class Warming(ProxyCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.db = lib.crm_database()
        cls.s = cls.start(cls.policy(WARM_POLICY), database=cls.db)

    def users_fetched(self, path):
        return sorted({x["user"] for x in self.origin.log(path)})

    def test_listed_callers_are_warmed(self):
        self.assertTrue(wait_until(lambda: self.origin.count("/warm/list") >= 2, 10),
                        self.origin.count("/warm/list"))
        self.assertEqual(self.users_fetched("/warm/list"), ["1", "2"])
        time.sleep(0.2)  # the fills land
        r = get(self.s.port, "/warm/list", user=1)
        self.assertEqual((r.status, r.cache), (200, "HIT"), r)
        self.assertEqual(r.json()["user"], "1")
        self.assertEqual(r.headers.get("x-ratelimit-remaining"), "99", "warming counted no request")
        self.assertEqual(get(self.s.port, "/warm/list", user=2).json()["user"], "2")
        self.assertEqual(get(self.s.port, "/warm/list", user=3).cache, "MISS")
        self.assertEqual(self.origin.count("/warm/list"), 3)

    def test_query_callers_are_warmed(self):
        want = ["19", "39", "4", "59"]  # the seed's enterprise users below 60
        self.assertTrue(wait_until(lambda: self.origin.count("/warm/sql") >= 4, 10),
                        self.origin.count("/warm/sql"))
        self.assertEqual(self.users_fetched("/warm/sql"), want)
        time.sleep(0.2)
        for u in want:
            r = get(self.s.port, "/warm/sql", user=u)
            self.assertEqual((r.cache, r.json()["user"]), ("HIT", u))

    def test_zz_warmed_again_after_a_reload(self):
        self.assertTrue(wait_until(lambda: self.origin.count("/warm/list") >= 2, 10))
        st, _, _ = self.s.admin("POST", "/invalidate", body={"keys": ["warm:list:1"]})
        self.assertEqual(st, 200)
        before = self.origin.count("/warm/list")
        st, _, b = self.s.admin("POST", "/reload")
        self.assertEqual(st, 200, b)
        self.assertTrue(wait_until(lambda: self.origin.count("/warm/list") > before, 10),
                        "no warm fill after the reload")
        time.sleep(0.2)
        r = get(self.s.port, "/warm/list", user=1)
        self.assertEqual((r.cache, r.json()["user"]), ("HIT", "1"))


# ---------------------------------------------------------------------------

ADMIN_POLICY = r'''
identity { user = header "X-User-Id" }
upstream "origin" { url = "@ORIGIN@" }
endpoint "GET /adm/{id}" {
  upstream = "origin",
  cache = { ttl = "5m", key = "adm:{path.id}:{user}", tags = { "adm:{user}" } },
}
'''


class AdminInvalidate(ProxyCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.redis = cls.redis_server()
        d = cls.policy(ADMIN_POLICY)
        cls.stores = {"memory": cls.start(d),
                      "redis": cls.start(d, env={"REDIS_URL": cls.redis.url},
                                         args=["--redis-deadline", "2s"])}

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.redis.stop()

    def fill(self, s, entries):
        for id_, user in entries:
            get(s.port, "/adm/" + id_, user=user)
            self.assertEqual(get(s.port, "/adm/" + id_, user=user).cache, "HIT")

    def states(self, s, entries):
        return {(i, u): get(s.port, "/adm/" + i, user=u).cache for i, u in entries}

    def test_pattern_keys_and_tags(self):
        for name, s in self.stores.items():
            with self.subTest(store=name):
                p = name[0]  # ids of their own per store (one origin)
                entries = [(p + "a", 1), (p + "a", 2), (p + "b", 1), (p + "ab", 1)]
                self.fill(s, entries)
                st, _, b = s.admin("POST", "/invalidate", body={"pattern": "adm:%sa:*" % p})
                self.assertEqual(st, 200, b)
                self.assertEqual(self.states(s, entries), {
                    (p + "a", 1): "MISS", (p + "a", 2): "MISS", (p + "b", 1): "HIT", (p + "ab", 1): "HIT"})
                st, _, b = s.admin("POST", "/invalidate", body={"keys": ["adm:%sb:1" % p]})
                self.assertEqual(st, 200, b)
                self.assertEqual(self.states(s, entries), {
                    (p + "a", 1): "HIT", (p + "a", 2): "HIT", (p + "b", 1): "MISS", (p + "ab", 1): "HIT"})
                st, _, b = s.admin("POST", "/invalidate", body={"tags": ["adm:2"]})
                self.assertEqual(st, 200, b)
                self.assertEqual(self.states(s, entries), {
                    (p + "a", 1): "HIT", (p + "a", 2): "MISS", (p + "b", 1): "HIT", (p + "ab", 1): "HIT"})

    def test_bad_bodies_are_400(self):
        s = self.stores["memory"]
        for body in ('{"pattern": 5}', "{", '{"nothing": []}', '{"tags": "x"}'):
            with self.subTest(body=body):
                st, h, _ = s.admin("POST", "/invalidate", {"Content-Type": "application/json"}, body)
                self.assertEqual(st, 400)


# ---------------------------------------------------------------------------

class ProxyExample(SluiceTestCase):
    """examples/proxy: the CRM app (app.py, Debian's python3 with psycopg2) behind
    examples/proxy/policies, on the seeded CRM database."""

    PYTHON = "/usr/bin/python3"

    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.app_port = lib.free_port()
        env = dict(os.environ, DATABASE_URL="dbname=%s" % cls.db)
        cls.app = subprocess.Popen([cls.PYTHON, os.path.join(lib.ROOT, "examples", "proxy", "app.py"),
                                    "--port", str(cls.app_port)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cls.addClassCleanup(cls.app.kill)
        ok = wait_until(lambda: cls._app_up(), 15, 0.1)
        if not ok:
            cls.app.kill()
            raise RuntimeError("examples/proxy/app.py did not start: %s" % cls.app.stderr.read()[-2000:])
        cls.dir = lib.copy_policies(os.path.join(lib.ROOT, "examples", "proxy", "policies"))
        f = os.path.join(cls.dir, "20-upstream.lua")
        with open(f) as fh:
            text = fh.read()
        assert "http://127.0.0.1:3000" in text
        with open(f, "w") as fh:
            fh.write(text.replace("http://127.0.0.1:3000", "http://127.0.0.1:%d" % cls.app_port))
        cls.s = cls.start(cls.dir, database=cls.db)
        cls.addClassCleanup(cls.s.stop)

    @classmethod
    def _app_up(cls):
        try:
            return req(cls.app_port, "GET", "/healthz", timeout=2).status == 200
        except OSError:
            return False

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.app.terminate()
            cls.app.wait(10)
            cls.app.stderr.close()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def test_lists_are_cached_per_user_with_the_apps_etag(self):
        r1 = get(self.s.port, "/api/crm?type=contacts", user=5)
        r2 = get(self.s.port, "/api/crm?type=contacts", user=5)
        self.assertEqual((r1.status, r1.cache), (200, "MISS"), r1)
        self.assertEqual((r2.status, r2.cache, r2.body), (200, "HIT", r1.body))
        ids = ",".join(str(x["id"]) for x in r1.json())
        self.assertEqual(lib.psql("SELECT DISTINCT owner_id FROM contacts WHERE id IN (%s)" % ids,
                                  db=self.db), "5")
        etag = r2.headers.get("etag")
        self.assertTrue(etag)
        c = get(self.s.port, "/api/crm?type=contacts", user=5, headers={"If-None-Match": etag})
        self.assertEqual((c.status, c.body), (304, b""))

    def test_warmed_users_hit_first(self):
        # The warm fills at start: 16 lists and 40 dashboard panels. The log says when.
        wait_until(lambda: "warmed generation 1" in self.s.read_log(), 10 * SLACK, 0.1)
        for path, user in (("/api/crm?type=deals", 2), ("/api/dashboard", 4), ("/api/dashboard/events", 19)):
            r = get(self.s.port, path, user=user)
            warm_log = [x for x in self.s.read_log().splitlines() if "warm" in x]
            self.assertEqual((r.status, r.cache), (200, "HIT"), (path, user, r, warm_log))

    def test_write_through_the_app_invalidates(self):
        user = 6
        get(self.s.port, "/api/crm?type=contacts", user=user)
        self.assertEqual(get(self.s.port, "/api/dashboard", user=user).status, 200)
        self.assertEqual(get(self.s.port, "/api/dashboard", user=user).cache, "HIT")
        name = "Ada %d" % time.time_ns()
        w = req(self.s.port, "POST", "/api/crm/contacts", {"X-User-Id": str(user)},
                {"name": name, "email": "ada@example.com", "company": "Engines"})
        self.assertEqual(w.status, 201, w)
        self.assertEqual(w.json()["owner_id"], user)
        r = get(self.s.port, "/api/crm?type=contacts", user=user)
        self.assertEqual(r.cache, "MISS")
        self.assertIn(name, [x["name"] for x in r.json()])
        self.assertEqual(get(self.s.port, "/api/dashboard", user=user).cache, "MISS")
        # A write the app refuses drops nothing.
        self.assertEqual(get(self.s.port, "/api/crm?type=contacts", user=user).cache, "HIT")
        bad = req(self.s.port, "POST", "/api/crm/contacts", {"X-User-Id": str(user)}, {"email": "x"})
        self.assertEqual(bad.status, 400, bad)
        self.assertEqual(get(self.s.port, "/api/crm?type=contacts", user=user).cache, "HIT")

    def test_tier_limits_apply(self):
        # User 1 is on the free plan: 100 an hour across the CRM.
        r = get(self.s.port, "/api/crm?type=projects", user=1)
        self.assertEqual(r.headers.get("x-ratelimit-limit"), "100")
        self.assertEqual(r.headers.get("ratelimit-policy"), '"free";q=100;w=3600')


if __name__ == "__main__":
    lib.main()
