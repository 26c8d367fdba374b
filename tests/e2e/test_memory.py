"""End to end: the memory store's two byte budgets hold against client-chosen keys.

The real binary with small budgets (--cache-bytes, --limit-bytes) takes a flood of requests
whose cache keys, tags and limit keys the client chooses: RSS (VmRSS) stays under 1.3 x the
budgets above the process's own baseline, the cache evicts, and once the limit budget is
full of live states a new caller is refused (503 problem+json, Retry-After), never admitted
with a fresh budget, while callers with a state keep being counted. Answers of 200 bytes and
2 KiB fill a 64 MiB budget densely (one block per entry) without holes in the heap. No
database, no origin: the endpoints answer fixed bodies.
"""

import json
import os
import sys
import tempfile

import lib
from lib import SluiceTestCase

POLICY = r'''
endpoint "GET /small" { body = "x", cache = { ttl = "1h", key = "s:{query.k}" } }
endpoint "GET /tags" {
  body = "x",
  cache = { ttl = "1h", key = "t:{query.k}",
            tags = { "a:{query.a}", "b:{query.b}", "c:{query.c}", "d:{query.d}" } },
}
endpoint "GET /limits" { body = "x", limit = { { limit = 5, window = "1h", key = "l:{query.k}" } } }
endpoint "GET /logs" {
  body = "x",
  limit = { { limit = 1000, window = "1h", key = "g:{query.k}", algorithm = "sliding_log" } },
}
'''

MIB = 1 << 20


def note(msg):
    """A measurement worth reading in the test log."""
    sys.stderr.write("    [measured] %s\n" % msg)
    sys.stderr.flush()


def policy_dir():
    d = tempfile.mkdtemp(prefix="sluice-mem-")
    with open(os.path.join(d, "main.lua"), "w") as f:
        f.write(POLICY)
    return d


def memory_status(s):
    status, _, body = s.admin("GET", "/status")
    assert status == 200, status
    return json.loads(body)["store"]["memory"]


def shape(name, n):
    """n requests of one hostile shape: small answers under new keys, answers under four new
    200-byte tags each, new limit keys of 100 bytes, or new sliding logs of two requests."""
    pad = "p" * 190
    for i in range(n):
        if name == "small":
            yield "/small?k=%d" % i
        elif name == "tags":
            yield "/tags?k=%d&a=%s%d&b=%s%d&c=%s%d&d=%s%d" % (i, pad, i, pad, i, pad, i, pad, i)
        elif name == "limits":
            yield "/limits?k=%s%d" % ("u" * 100, i)
        else:
            yield "/logs?k=%d" % (i // 2)


SHAPES = ("small", "tags", "limits", "logs")


class MemoryBudgets(SluiceTestCase):
    CACHE = 4 * MIB
    LIMIT = 4 * MIB

    @classmethod
    def setUpClass(cls):
        cls.dir = policy_dir()
        cls.s = cls.start(cls.dir, args=["--no-watch", "--cache-bytes", str(cls.CACHE),
                                         "--limit-bytes", str(cls.LIMIT)])

    def test_rss_within_budgets_under_hostile_keys(self):
        s = self.s
        # The baseline: started, every path warmed on every connection, nothing much stored.
        for name in SHAPES:
            self.assertEqual(lib.pipelined(s.port, shape(name, 50)), {200: 50})
        base = lib.rss_kib(s.proc.pid)
        bound = base + 1.3 * (self.CACHE + self.LIMIT) / 1024
        peak = [base]

        def sample():
            peak[0] = max(peak[0], lib.rss_kib(s.proc.pid))

        # One shape after the other, each on a connection of its own (so on one worker or
        # the other, as the kernel spreads them: what one worker fills another evicts), the
        # cache shapes enough to fill their budget several times over.
        total = {}
        rounds = (("small", 40000), ("logs", 30000), ("tags", 20000), ("limits", 30000),
                  ("small", 40000), ("tags", 20000), ("small", 40000))
        for r, (name, n) in enumerate(rounds):
            paths = ("%s&r=%d" % (p, r) for p in shape(name, n))
            counts = lib.pipelined(s.port, paths, conns=1, on_batch=sample, timeout=120)
            sample()
            note("%-6s %6d requests %s: RSS peak %.1f MiB (baseline %.1f MiB, bound %.1f MiB)"
                 % (name, n, dict(sorted(counts.items())), peak[0] / 1024, base / 1024,
                    bound / 1024))
            self.assertEqual(sum(counts.values()), n)
            for code, k in counts.items():
                total[code] = total.get(code, 0) + k
            if not lib.SANITIZED:  # ASan's shadow and quarantine are not the store's
                self.assertLess(peak[0], bound, name)
        mem = memory_status(s)
        note("store: %s" % json.dumps(mem, sort_keys=True))
        self.assertEqual(set(total), {200, 503})
        # Both budgets were filled and held.
        self.assertLessEqual(mem["cache_bytes"], mem["cache_max"])
        self.assertLessEqual(mem["limit_bytes"], mem["limit_max"])
        self.assertGreater(mem["cache_bytes"], 0.9 * self.CACHE)
        self.assertGreater(mem["limit_bytes"], 0.9 * self.LIMIT)
        self.assertGreater(mem["evicted_entries"], 100000)
        self.assertGreater(mem["evicted_tags"], 100000)
        self.assertEqual(mem["limit_refused"], total[503])


ANSWERS = r'''
endpoint "GET /a200" { body = ("x"):rep(200), cache = { ttl = "1h", key = "a:{query.k}" } }
endpoint "GET /a2k" { body = ("y"):rep(2048), cache = { ttl = "1h", key = "b:{query.k}" } }
'''


class AnswersFillTheBudget(SluiceTestCase):
    """The cache budget filled twice over with answers of one size under new keys: RSS stays
    under 1.3 x the budget above the baseline, the budget holds as many entries as one block
    per entry allows (record, key, fields and body together), and the process grows by little
    more than that per entry (the heap keeps no holes between entries)."""

    CACHE = 64 * MIB

    def fill(self, path, size, charged, resident, n):
        """n requests of path under new keys; each entry charged at most `charged` bytes and
        RSS grown by at most `resident` bytes per entry held."""
        d = tempfile.mkdtemp(prefix="sluice-mem-")
        with open(os.path.join(d, "main.lua"), "w") as f:
            f.write(ANSWERS)
        s = self.start(d, args=["--no-watch", "--cache-bytes", str(self.CACHE)])
        self.assertEqual(lib.pipelined(s.port, ("%s?k=w%d" % (path, i) for i in range(50))),
                         {200: 50})
        base = lib.rss_kib(s.proc.pid)
        peak = [base]

        def sample():
            peak[0] = max(peak[0], lib.rss_kib(s.proc.pid))

        counts = lib.pipelined(s.port, ("%s?k=%d" % (path, i) for i in range(n)),
                               on_batch=sample, timeout=25)
        sample()
        mem = memory_status(s)
        bound = base + 1.3 * self.CACHE / 1024
        grown = (peak[0] - base) * 1024.0 / mem["entries"]
        note("%d-byte answers, %d new keys: RSS peak %.1f MiB (baseline %.1f MiB, bound %.1f "
             "MiB, (peak - baseline) / budget %.2f); %d entries, %.0f bytes charged and %.0f "
             "resident each" % (size, n, peak[0] / 1024, base / 1024, bound / 1024,
                                (peak[0] - base) * 1024 / self.CACHE, mem["entries"],
                                mem["cache_bytes"] / mem["entries"], grown))
        self.assertEqual(counts, {200: n})
        self.assertLessEqual(mem["cache_bytes"], self.CACHE)
        self.assertGreater(mem["cache_bytes"], 0.95 * self.CACHE)
        self.assertGreater(mem["evicted_entries"], 0)
        self.assertGreaterEqual(mem["entries"], self.CACHE // charged)
        if not lib.SANITIZED:  # ASan's shadow and quarantine are not the store's
            self.assertLess(peak[0], bound)
            self.assertLess(grown, resident)
        # The newest answers are there, whole.
        for i in range(n - 5, n):
            status, headers, body = s.get("%s?k=%d" % (path, i))
            self.assertEqual((status, headers["x-cache"], len(body)), (200, "HIT", size))

    def test_200_byte_answers_dense_and_rss_within_1_3_budget(self):
        # Charged 513 bytes an entry as five allocations, 429 as one block. The process grew
        # by 514 and 512 bytes per entry with holes left between entries in the heap, 430
        # without.
        self.fill("/a200", 200, 450, 480, 320000)

    def test_2_kib_answers_dense_and_rss_within_1_3_budget(self):
        # Charged 2347 and 2265 bytes; resident 2574 and 2634 with holes, 2276 without.
        self.fill("/a2k", 2048, 2300, 2450, 60000)


class LimitBudgetFull(SluiceTestCase):
    LIMIT = 256 * 1024

    @classmethod
    def setUpClass(cls):
        cls.dir = policy_dir()
        cls.s = cls.start(cls.dir, args=["--no-watch", "--limit-bytes", str(cls.LIMIT)])

    def test_new_callers_refused_never_admitted_unlimited(self):
        s = self.s
        spent = ["/limits?k=spent"] * 6
        self.assertEqual(lib.pipelined(s.port, spent, conns=1), {200: 5, 429: 1})
        self.assertEqual(lib.pipelined(s.port, ["/limits?k=half"] * 2, conns=1), {200: 2})
        # New callers until the budget is full of live states.
        order = []
        keys = ["/limits?k=new%d" % i for i in range(20000)]
        counts = lib.pipelined(s.port, keys, conns=1, record=order)
        note("20000 new callers in %d bytes of limit budget: %s"
             % (self.LIMIT, dict(sorted(counts.items()))))
        self.assertEqual(set(counts), {200, 503})
        admitted = [k for k, code in zip(keys, order) if code == 200]
        self.assertGreater(len(admitted), 500)
        self.assertGreater(counts[503], 1000)
        # A new caller is refused: 503 problem+json with Retry-After, no rate-limit fields.
        status, headers, body = s.get("/limits?k=newcomer")
        self.assertEqual(status, 503)
        self.assertEqual(headers["content-type"], "application/problem+json")
        self.assertEqual(headers["retry-after"], "1")
        self.assertNotIn("ratelimit", headers)
        problem = json.loads(body)
        self.assertEqual(problem["status"], 503)
        self.assertIn("rate-limit store is full", problem["detail"])
        # The callers with a state are still counted: never a fresh budget.
        self.assertEqual(lib.pipelined(s.port, ["/limits?k=spent"] * 3, conns=1), {429: 3})
        self.assertEqual(lib.pipelined(s.port, ["/limits?k=half"] * 4, conns=1),
                         {200: 3, 429: 1})
        for k in admitted[:20] + admitted[-20:]:
            self.assertEqual(lib.pipelined(s.port, [k] * 5, conns=1), {200: 4, 429: 1}, k)
        mem = memory_status(s)
        self.assertEqual(mem["limit_refused"], counts[503] + 1)
        self.assertLessEqual(mem["limit_bytes"], self.LIMIT)


if __name__ == "__main__":
    lib.main()
