"""End to end: shadow rate limits (mode = "shadow"), on the memory store and on Redis.

A shadow limit is counted and decided like an enforced one, but refuses nothing and shows in no
header the caller sees; explain on the admin listener says when it would refuse; and its count
is the enforced limit's count, so a hot reload that switches it to "enforce" goes on from it.
"""

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.parse

import lib
from lib import SluiceTestCase

# sliding_log counts exactly the last minute, so no window boundary can drop a count mid-test.
MAIN = """
endpoint "GET /try" {
  body = '{}',
  limit = {
    { limit = 3, window = "1m", key = "try:{ip}", name = "trial", algorithm = "sliding_log", mode = "shadow" },
    { limit = 100, window = "1m", key = "all:{ip}", name = "all", algorithm = "sliding_log" },
  },
}
endpoint "GET /only" {
  body = '{}',
  limit = { limit = 3, window = "1m", key = "only:{ip}", algorithm = "sliding_log", mode = "shadow" },
}
"""

# Only for test_4's counts of decisions and callers.
MAIN += """
endpoint "GET /seen" {
  body = '{}',
  limit = { limit = 1, window = "1m", key = "seen:{ip}", name = "seen", algorithm = "sliding_log", mode = "shadow" },
}
"""

SWITCH = """
endpoint "GET /switch" {
  body = '{}',
  limit = { limit = 3, window = "1m", key = "switch:{ip}", name = "switch", algorithm = "sliding_log",
            mode = "%s" },
}
"""

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit",
                "ratelimit-policy", "retry-after")

REDIS = None


def setUpModule():
    global REDIS
    REDIS = lib.RedisServer()


def tearDownModule():
    if REDIS:
        REDIS.stop()


class ShadowLimits(SluiceTestCase):
    env = None  # the store: None for the memory store

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sluice-shadow-")
        with open(os.path.join(cls.dir, "10-main.lua"), "w") as f:
            f.write(MAIN)
        cls.write_switch("shadow")
        cls.s = cls.start(cls.dir, env=cls.env() if cls.env else None)

    @classmethod
    def write_switch(cls, mode):
        with open(os.path.join(cls.dir, "20-switch.lua"), "w") as f:
            f.write(SWITCH % mode)

    def explain(self, request):
        st, _, b = self.s.admin("GET", "/explain?" + urllib.parse.urlencode({"request": request}))
        self.assertEqual(st, 200, b)
        return json.loads(b)

    def test_1_a_shadow_limit_past_its_limit_refuses_nothing_and_shows_in_no_header(self):
        for i in range(6):
            st, h, b = self.s.request("GET", "/try")
            self.assertEqual(st, 200, (i, b))
            self.assertEqual(h["ratelimit-policy"], '"all";q=100;w=60')
            self.assertEqual(h["ratelimit"].split(";")[0], '"all"')
            self.assertEqual(h["x-ratelimit-limit"], "100")
            self.assertEqual(h["x-ratelimit-remaining"], str(99 - i))
            self.assertNotIn("retry-after", h)
            self.assertNotIn("trial", json.dumps(h))
        # An endpoint whose only limit is a shadow one has no rate-limit header at all.
        for i in range(6):
            st, h, b = self.s.request("GET", "/only")
            self.assertEqual(st, 200, (i, b))
            self.assertEqual([k for k in RATE_HEADERS if k in h], [])

    def test_2_explain_says_the_shadow_limit_would_refuse_and_the_request_is_admitted(self):
        for _ in range(3):
            self.assertEqual(self.s.request("GET", "/only")[0], 200)
        e = self.explain("GET /only")
        (l,) = e["limits"]
        self.assertEqual((l["mode"], l["decision"], l["remaining"]), ("shadow", "shadow: would refuse", 0))
        self.assertEqual(e["verdict"], "admitted")
        e = self.explain("GET /try")
        by_name = {l["name"]: l for l in e["limits"]}
        self.assertEqual(by_name["trial"]["mode"], "shadow")
        self.assertEqual(by_name["trial"]["decision"], "shadow: would refuse")
        self.assertEqual((by_name["all"]["mode"], by_name["all"]["decision"]), ("enforce", "admit"))
        self.assertEqual(e["verdict"], "admitted")
        # Explain counted nothing: the enforced limit has what the last request left it.
        st, h, _ = self.s.request("GET", "/try")
        self.assertEqual(st, 200)
        self.assertEqual(int(h["x-ratelimit-remaining"]), by_name["all"]["remaining"])
        # sluice explain (no store) shows the modes, and no decision.
        out = subprocess.run([lib.BIN, "explain", self.dir, "GET /try"], capture_output=True,
                             text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        cli = {l["name"]: l for l in json.loads(out.stdout)["limits"]}
        self.assertEqual((cli["trial"]["mode"], cli["all"]["mode"]), ("shadow", "enforce"))
        self.assertNotIn("decision", cli["trial"])

    def test_3_the_count_carries_over_when_a_reload_enforces_the_limit(self):
        for i in range(3):
            st, h, b = self.s.request("GET", "/switch")
            self.assertEqual(st, 200, (i, b))
            self.assertNotIn("ratelimit", h)
        self.write_switch("enforce")
        st, _, b = self.s.admin("POST", "/reload")
        self.assertEqual(st, 200, b)
        st, h, b = self.s.request("GET", "/switch")
        self.assertEqual(st, 429, b)
        self.assertEqual(json.loads(b)["violated-policies"], ["switch"])
        self.assertEqual(h["ratelimit-policy"], '"switch";q=3;w=60')
        self.assertIn("retry-after", h)


    def test_4_metrics_and_callers_count_would_be_refusals_apart(self):
        for _ in range(3):
            self.assertEqual(self.s.request("GET", "/seen")[0], 200)
        st, _, b = self.s.admin("GET", "/metrics")
        self.assertEqual(st, 200)
        counts = dict(re.findall(r'^sluice_ratelimit_decisions_total\{policy="seen",tier="",'
                                 r'decision="(\w+)"\} (\d+)$', b.decode(), re.M))
        self.assertEqual(counts, {"allowed": "1", "shadow_denied": "2"})
        # The workers publish their callers every 500 ms.
        caller = None
        deadline = time.time() + 5
        while time.time() < deadline and not caller:
            st, _, b = self.s.admin("GET", "/callers?policy=seen")
            self.assertEqual(st, 200, b)
            policies = json.loads(b)["policies"]
            caller = policies[0]["most_denied"][0] if policies and policies[0]["most_denied"] else None
            if not caller or caller["requests"] < 3:
                caller = None
                time.sleep(0.1)
        self.assertIsNotNone(caller, "no caller under the shadow limit")
        self.assertEqual((caller["caller"], caller["requests"], caller["denied"]),
                         ("seen:127.0.0.1", 3, 2))


class ShadowLimitsMemory(ShadowLimits):
    pass


class ShadowLimitsRedis(ShadowLimits):
    env = staticmethod(lambda: {"REDIS_URL": REDIS.url})

    def test_5_redis_holds_the_shadow_count_and_not_the_would_be_refusals(self):
        for _ in range(5):
            self.assertEqual(self.s.request("GET", "/only")[0], 200)
        keys = REDIS.keys("*:only:*")
        self.assertEqual(len(keys), 1, keys)
        # A sliding log: one member per counted request, and "m". Test 2 may have run first
        # and sent 3 more; either way only 3 were counted, the others would have been refused.
        self.assertEqual(REDIS.cli("ZCARD", keys[0]), "4")
        self.assertNotEqual(REDIS.cli("PTTL", keys[0]), "-1")


del ShadowLimits  # the base class runs only through its subclasses

if __name__ == "__main__":
    lib.main()
