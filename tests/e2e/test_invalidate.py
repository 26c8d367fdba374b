"""End to end: POST /invalidate on the admin listener, by tags, keys and pattern, on the
example CRM policies, with the memory store and with Redis (started here on a free port)."""

import json
import os
import time

import lib
from lib import SluiceTestCase

POLICIES = os.path.join(lib.CRM, "policies")

# Users of the seed: 2 starter, 3 professional, 4 enterprise (enough budget for these tests).
USERS = (2, 3, 4)
KINDS = ("contacts", "projects", "deals")


REDIS = None


def setUpModule():
    global REDIS
    REDIS = lib.RedisServer()


def tearDownModule():
    if REDIS:
        REDIS.stop()


def crm(kind):
    return "/api/crm?type=%s" % kind


class InvalidateMemory(SluiceTestCase):
    """The memory store; InvalidateRedis runs the same tests against Redis."""

    env = None

    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.s = cls.start(POLICIES, database=cls.db, env=cls.make_env())

    @classmethod
    def make_env(cls):
        return None

    def invalidate(self, body):
        st, h, b = self.s.admin("POST", "/invalidate", body=body)
        return st, h, json.loads(b) if b else None

    def xcache(self, path, user):
        st, h, b = self.s.get(path, user=user)
        self.assertEqual(st, 200, b)
        return h["x-cache"]

    def fill(self):
        """Every (kind, user) list and the users' dashboards cached: returns their paths."""
        self.assertEqual(self.invalidate({"pattern": "*"})[0], 200)
        entries = [(crm(k), u) for k in KINDS for u in USERS] + \
                  [("/api/dashboard", u) for u in USERS]
        for path, user in entries:
            self.assertEqual(self.xcache(path, user), "MISS", (path, user))
        for path, user in entries:
            self.assertEqual(self.xcache(path, user), "HIT", (path, user))
        return entries

    def check(self, entries, gone):
        """The next request is a MISS exactly for the entries in gone, a HIT for the others."""
        for path, user in entries:
            want = "MISS" if (path, user) in gone else "HIT"
            self.assertEqual(self.xcache(path, user), want, (path, user))

    def test_by_tags(self):
        entries = self.fill()
        st, h, b = self.invalidate({"tags": ["crm:3", "dash:4"]})
        self.assertEqual(st, 200, b)
        self.assertEqual(h["content-type"], "application/json")
        self.assertEqual(b, {"tags": 2})
        self.check(entries, {(crm(k), 3) for k in KINDS} | {("/api/dashboard", 4)})
        # A tag nobody used is fine, and touches nothing.
        st, _, b = self.invalidate({"tags": ["crm:999999"]})
        self.assertEqual((st, b), (200, {"tags": 1}))
        self.check(entries, set())

    def test_by_keys(self):
        entries = self.fill()
        st, _, b = self.invalidate({"keys": ["crm:contacts:2", "crm:deals:4", "dash:stats:3",
                                             "crm:contacts:999999"]})
        self.assertEqual(st, 200, b)
        self.assertEqual(b, {"deleted": 3})
        self.check(entries, {(crm("contacts"), 2), (crm("deals"), 4), ("/api/dashboard", 3)})

    def test_by_pattern(self):
        entries = self.fill()
        st, _, b = self.invalidate({"pattern": "crm:*:3"})
        self.assertEqual(st, 200, b)
        self.assertEqual(b, {"deleted": 3})
        self.check(entries, {(crm(k), 3) for k in KINDS})
        st, _, b = self.invalidate({"pattern": "crm:[cd]??????s:[24]"})
        self.assertEqual(st, 200, b)
        self.assertEqual(b, {"deleted": 2})  # contacts:2 and :4 ("deals" is too short)
        self.check(entries, {(crm("contacts"), 2), (crm("contacts"), 4)})
        st, _, b = self.invalidate({"pattern": "crm:*"})
        self.assertEqual(st, 200, b)
        self.assertEqual(b, {"deleted": len(KINDS) * len(USERS)})
        self.check(entries, {(crm(k), u) for k in KINDS for u in USERS})
        # A pattern without wildcards is one key.
        st, _, b = self.invalidate({"pattern": "dash:stats:2"})
        self.assertEqual((st, b), (200, {"deleted": 1}))
        self.check(entries, {("/api/dashboard", 2)})

    def test_bad_bodies_are_400(self):
        cases = [
            ('{"tags": ["crm:3"', "malformed JSON"),
            ("", "malformed JSON"),
            ('["crm:3"]', "JSON object"),
            ({"tags": "crm:3"}, "array of strings"),
            ({"tags": []}, "empty"),
            ({"keys": ["a", 7]}, '"keys"[1]'),
            ({"keys": ["a", ""]}, "non-empty"),
            ({"tags": ["t%d" % i for i in range(1001)]}, "at most 1000"),
            ({"pattern": ["crm:*"]}, "non-empty string"),
            ({"pattern": ""}, "non-empty string"),
            ({"tags": ["a"], "keys": ["b"]}, "only one"),
            ({}, "give one of"),
            ({"tag": ["crm:3"]}, "unknown member"),
            ('{"tags": ["a"], "tags": ["b"]}', "malformed JSON"),
        ]
        for body, detail in cases:
            with self.subTest(body=str(body)[:60]):
                st, h, p = self.invalidate(body)
                self.assertEqual(st, 400, p)
                self.assertEqual(h["content-type"], "application/problem+json")
                self.assertEqual(p["status"], 400)
                self.assertIn(detail, p["detail"])
        # 1000 items is the most, and fine.
        st, _, b = self.invalidate({"keys": ["k:%d" % i for i in range(1000)]})
        self.assertEqual((st, b), (200, {"deleted": 0}))

    def test_other_methods_are_405(self):
        st, h, b = self.s.admin("GET", "/invalidate")
        self.assertEqual(st, 405)
        self.assertEqual(h["allow"], "POST")


class InvalidateRedis(InvalidateMemory):
    @classmethod
    def make_env(cls):
        REDIS.cli("FLUSHALL")
        return {"REDIS_URL": REDIS.url}

    def test_redis_keys_go(self):
        self.fill()
        self.assertTrue(REDIS.keys("sl:{3}:c:crm:*"))
        st, _, b = self.invalidate({"pattern": "crm:*"})
        self.assertEqual((st, b), (200, {"deleted": len(KINDS) * len(USERS)}))
        self.assertEqual(REDIS.keys("sl:*:[cr]:crm:*"), [])
        self.assertTrue(REDIS.keys("sl:{3}:c:dash:*"))
        for k in REDIS.keys():
            self.assertNotEqual(REDIS.cli("PTTL", k), "-1", k)

    def test_store_failure_is_503(self):
        self.fill()
        REDIS.pause()
        try:
            t0 = time.monotonic()
            st, h, p = self.invalidate({"pattern": "crm:*"})
            took = time.monotonic() - t0
        finally:
            REDIS.resume()
        self.assertEqual(st, 503, p)
        self.assertEqual(h["content-type"], "application/problem+json")
        self.assertIn("retry", p["detail"])
        self.assertLess(took, 2)
        # Redis answers again: so does the admin listener (after its reconnection).
        for _ in range(100):
            st, _, b = self.invalidate({"keys": ["crm:contacts:2"]})
            if st == 200:
                break
            time.sleep(0.05)
        self.assertEqual(st, 200, b)


class AdminToken(SluiceTestCase):
    def test_invalidate_needs_the_token(self):
        db = lib.crm_database()
        s = self.start(POLICIES, database=db, env={"SLUICE_ADMIN_TOKEN": "s3cret"})
        st, h, b = s.admin("POST", "/invalidate", body={"tags": ["crm:3"]})
        self.assertEqual(st, 401)
        self.assertIn("Bearer", h["www-authenticate"])
        st, _, b = s.admin("POST", "/invalidate", headers={"Authorization": "Bearer s3cret"},
                           body={"tags": ["crm:3"]})
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b), {"tags": 1})


if __name__ == "__main__":
    lib.main()
