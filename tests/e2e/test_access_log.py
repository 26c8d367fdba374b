"""End to end: the access log (--access-log) has one JSON line per answered request with what
the client got, keeps every line across a rotation (rename, then SIGUSR1), samples 2xx/3xx
lines by request id and keeps every error; X-Request-Id is on every kind of answer, and a
valid traceparent reaches the upstream.

The upstream is tests/e2e/origin.py, which reflects what it received.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import lib
from lib import SluiceTestCase
from origin import Origin

POLICY = r'''
tier "free" { limit = 3, window = "1h" }
tier "gold" { limit = 100, window = "1h" }
identity { user = header "X-User-Id", tier = header("X-Plan", { trusted = true }), default_tier = "free" }
upstream "app" { url = "@ORIGIN@" }
upstream "down" { url = "http://127.0.0.1:@DEAD@" }
endpoint "GET /item/{id}" {
  upstream = "app", cache = { ttl = "5m", key = "item:{path.id}:{user}" }, limit = "tier",
}
endpoint "GET /fixed" {
  body = '{"ok":true}',
  limit = { { limit = 1, window = "1h", key = "fx:{user}", name = "probe", mode = "shadow" } },
}
endpoint "* /pass/*" { upstream = "app" }
endpoint "GET /down" { upstream = "down" }
'''

HEX_ID = re.compile(r"^[0-9a-f]{16}$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIELDS = {"ts", "request_id", "method", "path", "route", "status", "cache", "user", "tier",
          "tenant", "identity", "limit", "duration_ms", "origin_ms", "bytes", "client"}
# Left out of a line that has none (most lines).
OPTIONAL = {"query", "shadow_denied", "identity_refused"}


def policy_dir(**subs):
    text = POLICY
    for k, v in subs.items():
        text = text.replace("@%s@" % k, str(v))
    d = tempfile.mkdtemp(prefix="sluice-access-")
    with open(os.path.join(d, "policy.lua"), "w") as f:
        f.write(text)
    return d


def read_lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    assert data == b"" or data.endswith(b"\n"), "a partial line: %r" % data[-200:]
    return [json.loads(line) for line in data.split(b"\n") if line]


def wait_lines(paths, n, timeout=5.0):
    """The lines of the files once they hold n in all (the writer flushes every 200 ms)."""
    end = time.monotonic() + timeout
    while True:
        lines = [l for p in paths for l in read_lines(p)]
        if len(lines) >= n or time.monotonic() > end:
            time.sleep(0.3)  # none more may come: a line too many must show
            return [l for p in paths for l in read_lines(p)]
        time.sleep(0.05)


def sampled(rid, rate):
    """gw_access_sampled(): FNV-1a of the id, splitmix64's finalizer, below rate x 2^64."""
    m = (1 << 64) - 1
    x = 14695981039346656037
    for b in rid.encode():
        x = ((x ^ b) * 1099511628211) & m
    x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & m
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & m
    x ^= x >> 31
    return rate >= 1 or x < int(rate * 18446744073709551616.0)


class AccessCase(SluiceTestCase):
    ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dir = policy_dir(ORIGIN=cls.origin.url, DEAD=lib.free_port())
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.logdir = tempfile.mkdtemp(prefix="sluice-access-log-")
        cls.addClassCleanup(shutil.rmtree, cls.logdir, True)
        cls.path = os.path.join(cls.logdir, "access.log")
        cls.s = cls.start(cls.dir, args=("--access-log", cls.path) + tuple(cls.ARGS))

    def status(self):
        st, _, b = self.s.admin("GET", "/status")
        self.assertEqual(st, 200)
        return json.loads(b)["access_log"]


class Lines(AccessCase):
    def test_mixed_requests_give_one_valid_line_each_with_what_the_client_got(self):
        start = len(read_lines(self.path))
        reqs = [  # method, target, headers, body
            ("GET", "/item/1?x=1&y=%20", {"X-User-Id": "alice"}, None),  # miss
            ("GET", "/item/1?x=1&y=%20", {"X-User-Id": "alice"}, None),  # hit
            ("HEAD", "/item/1", {"X-User-Id": "alice"}, None),  # hit, no body
            ("GET", "/item/2", {"X-User-Id": "alice"}, None),  # 429: free allows 3
            ("GET", "/item/2", {"X-User-Id": "bob", "X-Plan": "gold"}, None),  # gold
            ("GET", "/fixed", {"X-User-Id": "carol"}, None),  # shadow admits
            ("GET", "/fixed", {"X-User-Id": "carol"}, None),  # shadow would refuse
            ("GET", "/nowhere", {}, None),  # 404
            ("DELETE", "/fixed", {}, None),  # 405
            ("POST", "/pass/w?status=503", {"X-User-Id": "dave"}, "{}"),  # the upstream's 503
            ("GET", "/down", {"X-User-Id": "erin"}, None),  # 502: upstream unreachable
            ("GET", "/item/3", {"X-User-Id": "bob", "X-User-ID": "bob2"}, None),  # 400
        ]
        answers = []
        for method, target, headers, body in reqs:
            st, h, b = self.s.request(method, target, headers, body)
            answers.append((st, h, b))
        lines = wait_lines([self.path], start + len(reqs))[start:]
        self.assertEqual(len(lines), len(reqs), lines)
        by_id = {l["request_id"]: l for l in lines}
        self.assertEqual(len(by_id), len(reqs))
        for (method, target, headers, body), (st, h, b) in zip(reqs, answers):
            rid = h.get("x-request-id")
            self.assertRegex(rid or "", HEX_ID, (target, st))
            l = by_id[rid]
            self.assertEqual(set(l) - OPTIONAL, FIELDS)
            self.assertEqual(set(l) & OPTIONAL, ({"query"} if "?" in target else set()) |
                             ({"shadow_denied"} if l.get("shadow_denied") else set()), l)
            self.assertRegex(l["ts"], TS)
            path, _, query = target.partition("?")
            self.assertEqual((l["method"], l["path"], l.get("query"), l["status"]),
                             (method, path, query if "?" in target else None, st), l)
            self.assertEqual(l["bytes"], 0 if method == "HEAD" else len(b), l)
            self.assertEqual(l["client"], "127.0.0.1")
            self.assertIsInstance(l["duration_ms"], float)
            self.assertIsNone(l["tenant"])
            if "x-ratelimit-remaining" in h:
                self.assertEqual(l["limit"]["remaining"], int(h["x-ratelimit-remaining"]), l)
                self.assertEqual(l["limit"]["mode"], "enforce")
            xc = h.get("x-cache")
            self.assertEqual(l["cache"], xc.lower() if xc else "none", l)
        L = [by_id[a[1]["x-request-id"]] for a in answers]
        self.assertEqual([l["cache"] for l in L[:3]], ["miss", "hit", "hit"])
        self.assertEqual([l["route"] for l in L], ["GET /item/{id}"] * 5 + ["GET /fixed"] * 2 +
                         ["(unmatched)"] * 2 + ["* /pass/*", "GET /down", "GET /item/{id}"])
        self.assertEqual([l["status"] for l in L], [200, 200, 200, 429, 200, 200, 200, 404, 405,
                                                    503, 502, 400])
        self.assertEqual([l["user"] for l in L[:7]], ["alice"] * 4 + ["bob", "carol", "carol"])
        self.assertEqual([l["tier"] for l in L[:7]], ["free"] * 4 + ["gold", "free", "free"])
        # Callers named by the (trusted) headers; paths no route has: no identity at all.
        self.assertEqual([l["identity"] for l in L[:7]], ["header"] * 7)
        self.assertEqual([l["identity"] for l in L[7:9]], [None, None])
        self.assertEqual({l.get("identity_refused") for l in L}, {None})
        self.assertEqual([l["limit"] for l in L[:5]], [
            {"policy": "free", "remaining": r, "mode": "enforce"} for r in (2, 1, 0, 0)] + [
            {"policy": "gold", "remaining": 99, "mode": "enforce"}])
        self.assertEqual(L[5]["limit"], {"policy": "probe", "remaining": 0, "mode": "shadow"})
        self.assertEqual([l.get("shadow_denied") for l in L[5:7]], [None, ["probe"]])
        self.assertEqual([l["limit"] for l in L[7:9]], [None, None])
        # The origin's time where one was called: the miss, the pass, the failed connect.
        for i, l in enumerate(L):
            if i in (0, 4, 9, 10):
                self.assertIsInstance(l["origin_ms"], float, l)
                self.assertLessEqual(l["origin_ms"], l["duration_ms"], l)
            else:
                self.assertIsNone(l["origin_ms"], l)

    def test_hostile_bytes_in_the_path_and_user_stay_valid_json(self):
        start = len(read_lines(self.path))
        # A target takes any VCHAR raw (quotes, backslashes, braces); a field value takes
        # bytes from 0x80 up too, as they are.
        head = (b"GET /item/\"},\\?q=\"}\\{ HTTP/1.1\r\nHost: x\r\n"
                b"X-User-Id: u\"}\\\tx\xe2\x80\xa8\xff\xc3(\r\n\r\n")
        raw = self.s.raw(head)
        self.assertEqual(lib.status_of(raw), 200, raw)
        lines = wait_lines([self.path], start + 1)[start:]
        self.assertEqual(len(lines), 1, lines)
        l = lines[0]
        self.assertEqual((l["status"], l["route"]), (200, "GET /item/{id}"))
        self.assertEqual(l["path"], "/item/\"},\\")
        self.assertEqual(l["query"], "q=\"}\\{")
        self.assertEqual(l["user"], "u\"}\\\tx\u2028\ufffd\ufffd(")

    def test_status_and_metrics_count_lines_and_drops(self):
        self.s.request("GET", "/fixed", {"X-User-Id": "counted"})
        a = self.status()
        self.assertEqual(a["path"], self.path)
        self.assertEqual((a["dropped"], a["sampled_out"], a["write_errors"]), (0, 0, 0))
        self.assertGreaterEqual(a["lines"], 1)
        st, _, b = self.s.admin("GET", "/metrics")
        m = dict(re.findall(r"^(sluice_access_log_\w+) (\d+)$", b.decode(), re.M))
        self.assertEqual(m["sluice_access_log_dropped_total"], "0")
        self.assertGreaterEqual(int(m["sluice_access_log_lines_total"]), a["lines"])


class Rotation(AccessCase):
    def test_rename_then_sigusr1_loses_no_line_and_later_lines_go_to_the_new_file(self):
        rotated = self.path + ".1"
        sent, lock, stop = [], threading.Lock(), threading.Event()

        def client(k):
            i = 0
            while not stop.is_set():
                rid = "c%d-%d" % (k, i)
                st, _, _ = self.s.request("GET", "/fixed", {"X-Request-Id": rid})
                self.assertEqual(st, 200)
                with lock:
                    sent.append(rid)
                i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.4)
        os.rename(self.path, rotated)
        os.kill(self.s.proc.pid, signal.SIGUSR1)
        end = time.monotonic() + 5
        while self.status()["reopens"] < 1:
            self.assertLess(time.monotonic(), end, "no reopen")
            time.sleep(0.02)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        after = ["after-%d" % i for i in range(20)]
        for rid in after:
            self.s.request("GET", "/fixed", {"X-Request-Id": rid})
        total = len(sent) + len(after)
        old = read_lines(rotated)
        new = wait_lines([self.path], total - len(old))
        ids = [l["request_id"] for l in old + new]
        self.assertEqual(sorted(ids), sorted(sent + after))  # none lost, none twice
        self.assertTrue(old and new, (len(old), len(new)))
        self.assertFalse({l["request_id"] for l in old} & set(after))
        self.assertEqual(self.status()["dropped"], 0)
        # The error log is a file here (the harness's): it follows its path too.
        self.assertIn("SIGUSR1: reopened the error log; the access log is reopened",
                      self.s.read_log())


class Sampling(AccessCase):
    RATE = 0.2
    ARGS = ("--access-log-sample", str(RATE))

    def test_the_sample_keeps_every_429_and_5xx_and_the_2xx_its_ids_choose(self):
        kinds = []
        for i in range(60):
            rid = "s-%d" % i
            if i % 4 == 0:
                st, _, _ = self.s.request("GET", "/down", {"X-Request-Id": rid})
            else:  # 3 a user, then 429s
                st, _, _ = self.s.request("GET", "/item/%d" % i,
                                          {"X-Request-Id": rid, "X-User-Id": "u%d" % (i // 20)})
            kinds.append((rid, st))
        self.assertEqual({st for _, st in kinds}, {200, 429, 502})
        want = {rid for rid, st in kinds if st >= 400 or sampled(rid, self.RATE)}
        self.assertLess(len(want), len(kinds))  # the sample left some out
        lines = wait_lines([self.path], len(want))
        self.assertEqual({l["request_id"] for l in lines}, want)
        self.assertEqual(len(lines), len(want))
        a = self.status()
        self.assertEqual(a["sample"], self.RATE)
        self.assertEqual(a["sampled_out"], len(kinds) - len(want))


class Buffer(AccessCase):
    """--access-log-buffer sets each worker's buffer: at the least, 64k, every line still
    arrives (drained from a quarter full); sizes out of range and the option without
    --access-log are refused before anything starts."""
    ARGS = ("--access-log-buffer", "64k")

    def test_a_small_buffer_loses_no_line(self):
        start = len(read_lines(self.path))
        for i in range(600):
            st, _, _ = self.s.request("GET", "/pass/b%d" % i, {"X-Request-Id": "buf-%d" % i})
            self.assertEqual(st, 200)
        lines = wait_lines([self.path], start + 600)[start:]
        # (Each worker has a buffer of its own: lines of two are not in order.)
        self.assertEqual(sorted(l["request_id"] for l in lines),
                         sorted("buf-%d" % i for i in range(600)))
        self.assertEqual(self.status()["dropped"], 0)

    def test_bad_sizes_are_refused_with_the_reason(self):
        for args, want in [
                (("--access-log", "-", "--access-log-buffer", "10k"), "'10k' is less than 64k"),
                (("--access-log", "-", "--access-log-buffer", "2g"), "is not a size"),
                (("--access-log", "-", "--access-log-buffer", "lots"), "is not a size"),
                (("--access-log-buffer", "1m"), "--access-log-buffer needs --access-log")]:
            r = subprocess.run([lib.BIN, "serve"] + list(args) + [self.dir],
                               capture_output=True, text=True, timeout=10)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(want, r.stderr, args)


class Stdout(SluiceTestCase):
    """--access-log - writes to standard output, after the start lines."""

    def test_lines_go_to_standard_output(self):
        origin_dir = policy_dir(ORIGIN="http://127.0.0.1:9", DEAD=lib.free_port())
        self.addCleanup(shutil.rmtree, origin_dir, True)
        s = self.start(origin_dir, args=("--access-log", "-"))
        for i in range(3):
            s.request("GET", "/fixed", {"X-Request-Id": "out-%d" % i})
        got = []
        t = threading.Thread(target=lambda: got.extend(
            json.loads(s.proc.stdout.readline()) for _ in range(3)))
        t.daemon = True
        t.start()
        t.join(5)
        self.assertEqual(sorted(l["request_id"] for l in got), ["out-0", "out-1", "out-2"])


class RequestIds(AccessCase):
    """X-Request-Id on every kind of answer: the client's when it is a safe token, else a new
    one; the access log line carries the same."""

    KINDS = [  # what, method, target, headers, status
        ("miss", "GET", "/item/9", {"X-User-Id": "ids", "X-Plan": "gold"}, 200),
        ("hit", "GET", "/item/9", {"X-User-Id": "ids", "X-Plan": "gold"}, 200),
        ("head", "HEAD", "/item/9", {"X-User-Id": "ids", "X-Plan": "gold"}, 200),
        ("fixed body", "GET", "/fixed", {}, 200),
        ("pass", "GET", "/pass/x", {}, 200),
        ("upstream 500", "GET", "/pass/x?status=500", {}, 500),
        ("502", "GET", "/down", {}, 502),
        ("404", "GET", "/nope", {}, 404),
        ("405", "PUT", "/fixed", {}, 405),
        ("400", "GET", "/fixed", {"X-User-Id": "a, b"}, 400),
    ]

    def check(self, rid_header, expect_echo):
        def verify(rh, what):
            rid = rh.get("x-request-id")
            if expect_echo:
                self.assertEqual(rid, rid_header, what)
            else:
                self.assertRegex(rid or "", HEX_ID, what)

        def headers(h):
            return dict(h, **({"X-Request-Id": rid_header} if rid_header is not None else {}))

        for what, method, target, h, status in self.KINDS:
            st, rh, _ = self.s.request(method, target, headers(h))
            self.assertEqual(st, status, what)
            verify(rh, what)
        # A 304, and a 429.
        gold = {"X-User-Id": "ids", "X-Plan": "gold"}
        etag = self.s.request("GET", "/item/9", gold)[1]["etag"]
        st, rh, _ = self.s.request("GET", "/item/9", headers(dict(gold, **{"If-None-Match": etag})))
        self.assertEqual(st, 304)
        verify(rh, "304")
        for _ in range(4):
            st, rh, _ = self.s.request("GET", "/item/1",
                                       headers({"X-User-Id": "limited-%s" % rid_header}))
        self.assertEqual(st, 429)
        verify(rh, "429")

    def test_a_good_client_id_is_echoed_on_every_kind_of_answer(self):
        self.check("trace-1:2/3=+_.", True)
        lines = wait_lines([self.path], 1)
        self.assertGreaterEqual(sum(l["request_id"] == "trace-1:2/3=+_." for l in lines),
                                len(self.KINDS) + 2)

    def test_a_bad_or_missing_client_id_is_replaced_on_every_kind_of_answer(self):
        for bad in (None, "has space", "x" * 129, "a;b"):
            self.check(bad, False)


class TraceContext(AccessCase):
    TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def seen(self, headers):
        st, _, b = self.s.request("GET", "/pass/trace", headers)
        self.assertEqual(st, 200, b)
        return json.loads(b)["h"]

    def test_a_valid_traceparent_and_its_tracestate_reach_the_upstream(self):
        h = self.seen({"traceparent": self.TP, "tracestate": "rojo=00f067aa0ba902b7"})
        self.assertEqual(h.get("traceparent"), self.TP)
        self.assertEqual(h.get("tracestate"), "rojo=00f067aa0ba902b7")

    def test_a_malformed_traceparent_and_its_tracestate_do_not(self):
        for bad in ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
                    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "junk"):
            h = self.seen({"traceparent": bad, "tracestate": "rojo=1"})
            self.assertNotIn("traceparent", h, bad)
            self.assertNotIn("tracestate", h, bad)


if __name__ == "__main__":
    lib.main()
