"""End to end: GET /metrics, /callers and /status say what the gateway did.

Traffic of known shape (misses, hits, refusals, unmatched paths, origin failures) is sent, then
the exposition is parsed and each counter compared with what was sent; `promtool check metrics`
must accept it; a real Prometheus scrapes it and its query API must return the same numbers;
/callers must name the heaviest caller first.
"""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import lib
from lib import SluiceTestCase
from origin import Origin

POLICY = """
tier "free" { limit = 1000, window = "1h" }
tier "pro"  { limit = 5000, window = "1h" }
identity { user = header "X-User-Id", tier = header "X-Tier", default_tier = "free" }
upstream "app" { url = "http://127.0.0.1:%(port)d", timeout = "300ms" }

endpoint "GET /items" { upstream = "app", cache = { ttl = "5m", key = "items", shared = true } }
endpoint "GET /slow" { upstream = "app" }
endpoint "GET /limited" {
  body = '{}',
  limit = { limit = 3, window = "1m", key = "lim:{user}" },
}
endpoint "GET /tiered" { body = '{}', limit = "tier" }
endpoint "GET /one" { sql = "SELECT 1 AS one", one = true }
endpoint "GET /bad" { sql = "SELECT no_such_column FROM pg_class LIMIT 1", one = true }
"""

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """The samples of an exposition: {(name, frozenset(labels)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


class MetricsCountWhatWasSent(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dir = tempfile.mkdtemp(prefix="sluice-metrics-")
        with open(os.path.join(cls.dir, "10-main.lua"), "w") as f:
            f.write(POLICY % {"port": cls.origin.port})
        cls.s = cls.start(cls.dir)
        s = cls.s
        # items: one miss, then three hits.
        cls.items = [s.get("/items")[1].get("x-cache") for _ in range(4)]
        # limited: user 1 sends 5 (3 admitted, 2 refused), user 2 sends 1.
        cls.limited = [s.get("/limited", user=1)[0] for _ in range(5)] + [s.get("/limited", user=2)[0]]
        # tiered: user 7 (pro) 6 times, user 8 (free) twice: 7 is the heaviest caller.
        cls.tiered = ([s.get("/tiered", user=7, headers={"X-Tier": "pro"})[0] for _ in range(6)] +
                      [s.get("/tiered", user=8)[0] for _ in range(2)])
        cls.unmatched = [s.get("/nowhere")[0] for _ in range(2)]
        cls.slow = s.request("GET", "/slow", {"X-Origin-Delay-Ms": "1000"})[0]
        cls.one = [s.get("/one")[0] for _ in range(3)]
        cls.bad = s.get("/bad")[0]
        time.sleep(0.7)  # the workers publish their callers every 500 ms
        st, h, body = s.admin("GET", "/metrics")
        assert st == 200, body
        cls.content_type = h["content-type"]
        cls.text = body.decode()
        cls.samples = parse(cls.text)

    def req(self, route, status, cache, method="GET"):
        return value(self.samples, "sluice_requests_total", route=route, method=method,
                     status=str(status), cache=cache)

    def test_the_traffic_was_what_the_counts_are_compared_with(self):
        self.assertEqual(self.items, ["MISS", "HIT", "HIT", "HIT"])
        self.assertEqual(self.limited, [200, 200, 200, 429, 429, 200])
        self.assertEqual(self.tiered, [200] * 8)
        self.assertEqual(self.unmatched, [404, 404])
        self.assertEqual(self.slow, 504)
        self.assertEqual(self.one, [200] * 3)
        self.assertEqual(self.bad, 502)

    def test_exposition_format_0_0_4_content_type(self):
        self.assertEqual(self.content_type, "text/plain; version=0.0.4; charset=utf-8")

    def test_requests_total_by_route_method_status_and_cache(self):
        self.assertEqual(self.req("GET /items", 200, "miss"), 1)
        self.assertEqual(self.req("GET /items", 200, "hit"), 3)
        self.assertEqual(self.req("GET /limited", 200, "none"), 4)
        self.assertEqual(self.req("GET /limited", 429, "none"), 2)
        self.assertEqual(self.req("GET /tiered", 200, "none"), 8)
        self.assertEqual(self.req("(unmatched)", 404, "none"), 2)
        self.assertEqual(self.req("GET /slow", 504, "none"), 1)
        self.assertEqual(self.req("GET /one", 200, "none"), 3)
        self.assertEqual(self.req("GET /bad", 502, "none"), 1)

    def test_request_duration_histogram_counts_every_request_of_its_route(self):
        for route, n in (("GET /items", 4), ("GET /limited", 6), ("GET /tiered", 8)):
            count = value(self.samples, "sluice_request_duration_seconds_count", route=route)
            self.assertEqual(count, n, route)
            inf = value(self.samples, "sluice_request_duration_seconds_bucket", route=route,
                        le="+Inf")
            self.assertEqual(inf, n, route)
        # The slow upstream answered after its 300 ms timeout: that request is above 0.25 s.
        le = value(self.samples, "sluice_request_duration_seconds_bucket", route="GET /slow",
                   le="0.25")
        self.assertEqual(le, 0)

    def test_buckets_are_cumulative(self):
        for (name, labels), v in self.samples.items():
            if not name.endswith("_bucket"):
                continue
            d = dict(labels)
            le = d.pop("le")
            bounds = sorted(
                (float("inf") if dict(l)["le"] == "+Inf" else float(dict(l)["le"]), w)
                for (n, l), w in self.samples.items()
                if n == name and {k: x for k, x in l if k != "le"} == d)
            counts = [w for _, w in bounds]
            self.assertEqual(counts, sorted(counts), (name, d))

    def test_origin_durations_and_errors_by_source(self):
        # Three statements answered (GET /one), one failed (GET /bad); the cached miss went
        # upstream once; the slow one timed out.
        self.assertEqual(
            value(self.samples, "sluice_origin_duration_seconds_count", source="sql"), 3)
        self.assertEqual(
            value(self.samples, "sluice_origin_duration_seconds_count", source="upstream"), 1)
        self.assertEqual(value(self.samples, "sluice_origin_errors_total", source="sql",
                               reason="error"), 1)
        self.assertEqual(value(self.samples, "sluice_origin_errors_total", source="upstream",
                               reason="timeout"), 1)

    def test_ratelimit_decisions_by_policy_tier_and_decision(self):
        d = lambda policy, tier, decision: value(self.samples, "sluice_ratelimit_decisions_total",
                                                 policy=policy, tier=tier, decision=decision)
        self.assertEqual(d("lim", "free", "allowed"), 4)
        self.assertEqual(d("lim", "free", "denied"), 2)
        self.assertEqual(d("pro", "pro", "allowed"), 6)
        self.assertEqual(d("free", "free", "allowed"), 2)

    def test_no_caller_is_a_label(self):
        for (name, labels) in self.samples:
            for k, v in labels:
                self.assertNotIn("lim:1", v)
                self.assertNotRegex(v, r"^[78]$", (name, k))

    def test_store_database_policy_connections_and_process(self):
        s = self.samples
        self.assertEqual(value(s, "sluice_store_up", store="memory"), 1)
        self.assertEqual(value(s, "sluice_store_breaker_open", store="memory"), 0)
        self.assertEqual(value(s, "sluice_db_up"), 1)
        self.assertGreaterEqual(value(s, "sluice_db_connections"), 1)
        # The traffic sent one statement at a time: none waited behind another.
        self.assertEqual(value(s, "sluice_db_pipelined_total"), 0)
        self.assertEqual(value(s, "sluice_policy_generation"), 1)
        self.assertEqual(value(s, "sluice_reloads_total", result="ok"), 0)
        self.assertEqual(value(s, "sluice_cache_entries"), 1)  # the one answer of GET /items
        self.assertGreater(value(s, "sluice_cache_bytes"), 0)
        for state in ("reading", "active", "idle"):
            self.assertIsNotNone(value(s, "sluice_connections", state=state), state)
        rss = value(s, "process_resident_memory_bytes")
        self.assertGreater(rss, 1 << 20)
        with open("/proc/%d/statm" % self.s.proc.pid) as f:
            pages = int(f.read().split()[1])
        self.assertLess(abs(rss - pages * os.sysconf("SC_PAGE_SIZE")), 64 << 20)
        self.assertGreater(value(s, "process_open_fds"), 3)
        start = value(s, "process_start_time_seconds")
        self.assertLess(abs(start - time.time()), 600)

    def test_promtool_check_metrics_accepts_it(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool is missing: scripts/deps.sh test installs it")
        r = subprocess.run([promtool, "check", "metrics"], input=self.text.encode(),
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())

    def test_callers_names_the_heaviest_caller_first_with_tier_and_remaining(self):
        st, _, body = self.s.admin("GET", "/callers?top=5")
        self.assertEqual(st, 200, body)
        doc = json.loads(body)
        by_policy = {p["policy"]: p for p in doc["policies"]}
        pro = by_policy["pro"]["callers"]
        self.assertEqual(pro[0]["requests"], 6, pro)
        self.assertIn("7", pro[0]["caller"])
        self.assertEqual(pro[0]["tier"], "pro")
        self.assertEqual(pro[0]["remaining"], 5000 - 6)
        lim = by_policy["lim"]
        self.assertEqual(lim["callers"][0]["requests"], 5)
        self.assertEqual(lim["callers"][0]["denied"], 2)
        self.assertEqual(lim["most_denied"][0]["caller"], lim["callers"][0]["caller"])
        self.assertEqual(lim["nearest_limit"][0]["remaining"], 0)
        # top bounds each list; policy= selects one policy.
        st, _, body = self.s.admin("GET", "/callers?top=1&policy=lim")
        doc = json.loads(body)
        self.assertEqual([p["policy"] for p in doc["policies"]], ["lim"])
        self.assertEqual(len(doc["policies"][0]["callers"]), 1)

    def test_callers_refuses_a_bad_top(self):
        for q in ("top=0", "top=65", "top=x", "top="):
            st, h, body = self.s.admin("GET", "/callers?" + q)
            self.assertEqual(st, 400, q)
            self.assertEqual(h["content-type"], "application/problem+json")

    def test_metrics_refuses_other_methods(self):
        st, h, _ = self.s.admin("POST", "/metrics", body="")
        self.assertEqual(st, 405)
        self.assertEqual(h["allow"], "GET, HEAD")

    def test_status_has_a_database_section(self):
        st, _, body = self.s.admin("GET", "/status")
        db = json.loads(body)["database"]
        self.assertEqual(db["state"], "connected")
        self.assertGreaterEqual(db["connections"], 1)
        self.assertIsNone(db["last_error"])


class PrometheusScrapesTheSameNumbers(SluiceTestCase):
    """A real Prometheus scrapes the admin listener; its query API returns what was sent."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sluice-prom-")
        with open(os.path.join(cls.dir, "10-main.lua"), "w") as f:
            f.write('endpoint "GET /x" { body = "{}", limit = { limit = 2, window = "1m", '
                    'key = "x:{ip}" } }\n')
        cls.s = cls.start(cls.dir)

    def query(self, port, expr):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        res = doc["data"]["result"]
        return float(res[0]["value"][1]) if res else None

    def test_prometheus_query_api_returns_the_counts(self):
        prom = shutil.which("prometheus")
        self.assertIsNotNone(prom, "prometheus is missing: scripts/deps.sh test installs it")
        statuses = [self.s.get("/x")[0] for _ in range(5)]
        self.assertEqual(statuses, [200, 200, 429, 429, 429])
        work = tempfile.mkdtemp(prefix="sluice-prom-data-")
        self.addCleanup(shutil.rmtree, work, True)
        cfg = os.path.join(work, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "scrape_configs:\n"
                    "  - job_name: sluice\n"
                    "    static_configs: [{targets: ['127.0.0.1:%d']}]\n" % self.s.admin_port)
        port = lib.free_port()
        log = open(os.path.join(work, "log"), "wb")
        self.addCleanup(log.close)
        p = subprocess.Popen([prom, "--config.file", cfg, "--storage.tsdb.path",
                              os.path.join(work, "data"), "--web.listen-address",
                              "127.0.0.1:%d" % port], stdout=log, stderr=log)
        self.addCleanup(p.wait, 10)
        self.addCleanup(p.kill)
        deadline = time.time() + 30
        got = None
        while time.time() < deadline:
            try:
                got = (self.query(port, 'sluice_requests_total{route="GET /x",status="200"}'),
                       self.query(port, 'sluice_requests_total{route="GET /x",status="429"}'),
                       self.query(port, 'sluice_ratelimit_decisions_total{policy="x",'
                                        'decision="denied"}'),
                       self.query(port, 'up{job="sluice"}'))
                if None not in got:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        self.assertEqual(got, (2.0, 3.0, 3.0, 1.0))


class MetricsUnderRedis(SluiceTestCase):
    """With Redis: the store is up and its round trips are measured; once Redis dies, down."""

    @classmethod
    def setUpClass(cls):
        cls.redis = lib.RedisServer()
        cls.addClassCleanup(cls.redis.stop)
        cls.dir = tempfile.mkdtemp(prefix="sluice-metrics-redis-")
        with open(os.path.join(cls.dir, "10-main.lua"), "w") as f:
            f.write('endpoint "GET /x" { body = "{}", cache = { ttl = "1m", key = "x", '
                    'shared = true }, limit = { limit = 100, window = "1m", key = "x:{ip}" } }\n')
        cls.s = cls.start(cls.dir, env={"REDIS_URL": "redis://127.0.0.1:%d" % cls.redis.port})

    def scrape(self):
        return parse(self.s.admin("GET", "/metrics")[2].decode())

    def test_redis_latency_then_down_when_it_dies(self):
        for _ in range(20):
            self.assertEqual(self.s.get("/x")[0], 200)
        time.sleep(0.7)
        s = self.scrape()
        self.assertEqual(value(s, "sluice_store_up", store="redis"), 1)
        self.assertGreaterEqual(
            value(s, "sluice_store_latency_seconds_count", store="redis"), 20)
        st, _, body = self.s.admin("GET", "/status")
        self.assertGreater(json.loads(body)["store"]["latency"]["count"], 0)
        self.redis.kill()
        deadline = time.time() + 15
        while time.time() < deadline:
            self.s.get("/x")
            s = self.scrape()
            if value(s, "sluice_store_up", store="redis") == 0:
                break
            time.sleep(0.3)
        self.assertEqual(value(s, "sluice_store_up", store="redis"), 0)
        self.assertEqual(value(s, "sluice_store_breaker_open", store="redis"), 1)
        self.assertGreater(value(s, "sluice_store_errors_total", store="redis"), 0)


class ClientsThatLeaveBeforeTheirAnswer(SluiceTestCase):
    """A request whose client has gone is answered into a closed connection, which frees
    it at once: counting it must not read the freed request (ASan catches a read)."""

    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dir = tempfile.mkdtemp(prefix="sluice-metrics-gone-")
        with open(os.path.join(cls.dir, "10-main.lua"), "w") as f:
            f.write('upstream "app" { url = "http://127.0.0.1:%d" }\n' % cls.origin.port)
            f.write('endpoint "GET /slow/{n}" { upstream = "app", '
                    'cache = { ttl = "1m", key = "slow:{path.n}", shared = true } }\n')
        cls.s = cls.start(cls.dir)

    def send(self, target, headers=""):
        c = socket.create_connection(("127.0.0.1", self.s.port))
        c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (target, headers)).encode())
        return c

    def test_misses_and_404s_whose_clients_left_are_counted_and_the_server_lives(self):
        # Misses: each client leaves (a reset) while the origin takes 300 ms to answer.
        waiting = [self.send("/slow/%d" % i, "X-Origin-Delay-Ms: 300\r\n") for i in range(10)]
        time.sleep(0.1)
        for c in waiting:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        for _ in range(10):
            self.send("/nowhere").close()
        time.sleep(0.9)  # the origin answers after 300 ms; the workers publish every 500 ms
        self.assertEqual(self.s.get("/slow/x")[0], 200)
        samples = parse(self.s.admin("GET", "/metrics")[2].decode())
        total = lambda route: sum(v for (name, labels), v in samples.items()
                                  if name == "sluice_requests_total" and ("route", route) in labels)
        self.assertEqual(total("GET /slow/{n}"), 11)
        self.assertEqual(total("(unmatched)"), 10)


if __name__ == "__main__":
    lib.main()
