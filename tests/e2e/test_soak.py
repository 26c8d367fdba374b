"""End to end: a bounded mixed soak. For SOAK_SECONDS (60 by default) four clients send hits,
misses on fresh keys, writes that invalidate, requests past a tight limit (429) and a catch-all
route's requests, while the policy is reloaded every second; afterwards no answer was a 5xx,
every answer was one the test expected, and the process's RSS and open descriptors are back
near where they stood after the warm-up.
"""

import http.client
import os
import random
import sys
import tempfile
import threading
import time

import lib
from lib import SluiceTestCase
from origin import Origin

SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
CACHE_BYTES = 4 << 20  # the misses fill it: RSS must level off at the budget

POLICY = """
tier "free" { limit = 1000000, window = "1h" }
identity { user = header "X-User-Id", default_tier = "free" }
upstream "app" { url = "http://127.0.0.1:%(port)d", timeout = "5s" }

endpoint "GET /soak/items/{id}" {
  upstream = "app",
  cache = { ttl = "5m", key = "items:{path.id}:{user}", tags = { "items:{user}" },
            stale_while_revalidate = "10s" },
  limit = "tier",
}
endpoint "POST /soak/items" { upstream = "app", invalidate = { "items:{user}" }, limit = "tier" }
endpoint "GET /soak/tight" {
  body = '{"ok":true}',
  limit = { { limit = 5, window = "10s", key = "tight:{user}" } },
}
endpoint "* /any/*" { upstream = "app", cache = { ttl = "origin" } }
-- generation %(gen)d
"""


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Soak(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.origin.config("/any/cached", headers={"Cache-Control": "max-age=2", "ETag": '"a1"'},
                          conditional=True)
        cls.dir = tempfile.mkdtemp(prefix="sluice-soak-")
        cls.gen = 0
        cls.write_policy()
        cls.s = cls.start(cls.dir, args=["--cache-bytes", str(CACHE_BYTES)])

    @classmethod
    def write_policy(cls):
        cls.gen += 1
        tmp = os.path.join(cls.dir, ".tmp")
        with open(tmp, "w") as f:
            f.write(POLICY % {"port": cls.origin.port, "gen": cls.gen})
        os.rename(tmp, os.path.join(cls.dir, "10-soak.lua"))

    def one(self, conn, rnd, user):
        """One request of a random kind; returns (kind, status)."""
        k = rnd.random()
        h = {"X-User-Id": str(user)}
        if k < 0.45:
            kind, method, path, body = "hit", "GET", "/soak/items/%d" % rnd.randrange(20), None
        elif k < 0.60:
            kind, method, path, body = "miss", "GET", "/soak/items/f%d" % rnd.randrange(10**9), None
        elif k < 0.70:
            kind, method, path, body = "write", "POST", "/soak/items", '{"x":1}'
        elif k < 0.82:
            kind, method, path, body = "tight", "GET", "/soak/tight", None
        else:
            kind, method, path, body = "any", "GET", "/any/cached", None
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        r.read()
        return kind, r.status

    def client(self, n, stop, results):
        rnd = random.Random(n)
        conn = http.client.HTTPConnection("127.0.0.1", self.s.port, timeout=10)
        counts = {}
        try:
            while not stop.is_set():
                try:
                    kind, status = self.one(conn, rnd, 100 + n)
                except (http.client.HTTPException, OSError) as e:
                    counts.setdefault("errors", []).append(repr(e))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.s.port, timeout=10)
                    continue
                counts[(kind, status)] = counts.get((kind, status), 0) + 1
        finally:
            conn.close()
            results[n] = counts

    def test_mixed_traffic_with_reloads_keeps_answers_memory_and_descriptors(self):
        pid = self.s.proc.pid
        # Warm-up: every kind of request once, so the baseline includes pools and tables.
        stop = threading.Event()
        warm = {}
        t = threading.Thread(target=self.client, args=(99, stop, warm))
        t.start()
        time.sleep(2)
        stop.set()
        t.join()
        time.sleep(0.5)
        rss0, fds0 = rss_kb(pid), fd_count(pid)

        stop = threading.Event()
        results = {}
        clients = [threading.Thread(target=self.client, args=(i, stop, results)) for i in range(4)]
        for c in clients:
            c.start()
        end = time.time() + SECONDS
        while time.time() < end:
            time.sleep(1)
            self.write_policy()
        stop.set()
        for c in clients:
            c.join(30)
        time.sleep(1.5)  # in-flight refreshes end, idle upstream connections settle
        rss1, fds1 = rss_kb(pid), fd_count(pid)

        total, unexpected, errors = {}, {}, []
        allowed = {"hit": {200}, "miss": {200}, "write": {200}, "tight": {200, 429},
                   "any": {200}}
        for counts in results.values():
            errors += counts.pop("errors", [])
            for (kind, status), n in counts.items():
                total[kind] = total.get(kind, 0) + n
                if status not in allowed[kind]:
                    unexpected[(kind, status)] = unexpected.get((kind, status), 0) + n
        sent = sum(total.values())
        sys_note = ("soak %.0f s, %d reloads: %d requests %s; RSS %d -> %d kB, fds %d -> %d"
                    % (SECONDS, self.gen - 1, sent, total, rss0, rss1, fds0, fds1))
        sys.stderr.write("    [measured] %s\n" % sys_note)
        self.assertEqual(errors, [])
        self.assertEqual(unexpected, {}, sys_note)
        self.assertGreater(sent, 100 * SECONDS, sys_note)
        self.assertGreater(total.get("tight", 0), 0)
        # Memory levels off: the misses fill the cache's byte budget and no further (each entry's
        # structure beyond its bytes is allowed for: 4 x the budget), and descriptors come back
        # to where the warm-up left them.
        if not lib.SANITIZED:  # ASan's quarantine holds freed memory; LeakSanitizer checks leaks
            self.assertLess(rss1, rss0 + 4 * CACHE_BYTES // 1024, sys_note)
        self.assertLessEqual(fds1, fds0 + 8, sys_note)
        st, _, _ = self.s.admin("GET", "/status")
        self.assertEqual(st, 200)


if __name__ == "__main__":
    lib.main()
