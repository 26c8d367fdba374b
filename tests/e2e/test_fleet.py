"""End to end: the fleet view. Instances sharing one Redis publish themselves (id, listening
address, policy hash, start, health) to it, and /status on any of them lists those heard of
within the fleet TTL (--fleet-ttl, here SLUICE_FLEET_TTL=3s: published every 500 ms)."""

import json
import os
import shutil
import tempfile
import time

import lib
from lib import SluiceTestCase
from test_redis import wait_until

POLICY = r'''
endpoint "GET /x" { body = "x" }
'''
TTL = 3.0
REDIS = None


def setUpModule():
    global REDIS
    REDIS = lib.RedisServer()


def tearDownModule():
    if REDIS:
        REDIS.stop()


def policy_dir():
    d = tempfile.mkdtemp(prefix="sluice-fleet-")
    with open(os.path.join(d, "a.lua"), "w") as f:
        f.write(POLICY)
    return d


def fleet(s):
    return json.loads(s.admin("GET", "/status")[2])["fleet"]


def listens(s):
    return sorted(i["listen"] for i in fleet(s)["instances"])


class SharedRedisFleet(SluiceTestCase):
    """Two instances on one Redis see each other, and whether they serve the same policies."""

    @classmethod
    def setUpClass(cls):
        cls.dirs = [policy_dir(), policy_dir()]
        env = {"REDIS_URL": REDIS.url, "SLUICE_FLEET_TTL": "%ds" % TTL}
        cls.a = cls.start(cls.dirs[0], env=env)
        cls.b = cls.start(cls.dirs[1], env=env)
        cls.both = sorted("127.0.0.1:%d" % s.port for s in (cls.a, cls.b))

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        for d in cls.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def test_1_instances_see_each_other_with_the_same_policies(self):
        for s in (self.a, self.b):
            self.assertTrue(wait_until(lambda: listens(s) == self.both, 5), fleet(s))
        f = fleet(self.a)
        self.assertTrue(f["same_policies"])
        self.assertTrue(f["shared"])
        self.assertEqual(f["ttl_ms"], TTL * 1000)
        ids = {i["id"] for i in f["instances"]}
        self.assertEqual(len(ids), 2)
        own = json.loads(self.a.admin("GET", "/status")[2])["hash"]
        for i in f["instances"]:
            self.assertEqual(i["policy_hash"], own)
            self.assertTrue(i["store_up"])
            self.assertLess(i["seen_ms_ago"], TTL * 1000)
            self.assertEqual(i["self"], i["listen"] == "127.0.0.1:%d" % self.a.port)
        # one hash in Redis, with a TTL
        self.assertEqual(REDIS.keys("sl:{fleet}*"), ["sl:{fleet}"])
        self.assertGreater(int(REDIS.cli("PTTL", "sl:{fleet}")), 0)

    def test_2_a_different_policy_set_is_seen_by_the_other(self):
        with open(os.path.join(self.dirs[1], "b.lua"), "w") as f:
            f.write('endpoint "GET /y" { body = "y" }\n')
        st, _, body = self.b.admin("POST", "/reload")
        self.assertEqual(st, 200, body)
        hash_b = json.loads(self.b.admin("GET", "/status")[2])["hash"]
        self.assertTrue(wait_until(lambda: not fleet(self.a)["same_policies"], 3), fleet(self.a))
        seen = {i["listen"]: i["policy_hash"] for i in fleet(self.a)["instances"]}
        self.assertEqual(seen["127.0.0.1:%d" % self.b.port], hash_b)
        self.assertNotEqual(seen["127.0.0.1:%d" % self.a.port], hash_b)
        # the same files again: the same hash, wherever they live
        os.unlink(os.path.join(self.dirs[1], "b.lua"))
        self.assertEqual(self.b.admin("POST", "/reload")[0], 200)
        self.assertTrue(wait_until(lambda: fleet(self.a)["same_policies"], 3), fleet(self.a))

    def test_3_a_stopped_instance_leaves_after_the_ttl(self):
        self.assertTrue(wait_until(lambda: listens(self.a) == self.both, 5))
        gone = "127.0.0.1:%d" % self.b.port
        self.assertEqual(self.b.stop(), 0)
        t_stop = time.monotonic()
        time.sleep(TTL / 3)
        self.assertIn(gone, listens(self.a))  # not before its TTL
        self.assertTrue(wait_until(lambda: gone not in listens(self.a), TTL + 2.0))
        left = time.monotonic() - t_stop
        print("\n  the stopped instance left the fleet after %.1f s (TTL %.0f s)" % (left, TTL))
        self.assertGreater(left, TTL - 0.6)  # it published at most one interval before stopping
        self.assertEqual(listens(self.a), ["127.0.0.1:%d" % self.a.port])


class MemoryStoreFleet(SluiceTestCase):
    """The memory store is one process's: its fleet is itself alone."""

    @classmethod
    def setUpClass(cls):
        cls.dir = policy_dir()
        cls.s = cls.start(cls.dir, env={"SLUICE_FLEET_TTL": "3s"})

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_memory_store_fleet_is_this_instance_alone(self):
        # worker 0 publishes as it starts, which may be just after the listener answers
        self.assertTrue(wait_until(lambda: len(fleet(self.s)["instances"]) == 1, 2))
        time.sleep(0.6)  # and again, every TTL/6
        f = fleet(self.s)
        self.assertEqual(len(f["instances"]), 1)
        self.assertFalse(f["shared"])
        me = f["instances"][0]
        self.assertTrue(me["self"])
        self.assertEqual(me["listen"], "127.0.0.1:%d" % self.s.port)
        self.assertEqual(me["id"].rsplit(":", 1)[1], str(self.s.proc.pid))
        self.assertTrue(f["same_policies"])


if __name__ == "__main__":
    lib.main()
