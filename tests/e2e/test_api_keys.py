#!/usr/bin/env python3
"""End-to-end: callers identified by API keys looked up in PostgreSQL by their SHA-256, never
in clear; remembered per worker and forgotten at once when the key table changes (NOTIFY);
combined with JWT bearer tokens (the first credential present decides).

Run with /usr/bin/python3 (Debian's python3-jwt and python3-cryptography)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jwks  # noqa: E402
import lib  # noqa: E402
from lib import SluiceTestCase  # noqa: E402

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

ISS = "https://auth.example.com"

SCHEMA = """
CREATE TABLE api_keys (key_hash text PRIMARY KEY, user_id bigint NOT NULL, plan text,
                       org text, revoked_at timestamptz);
-- Every lookup leaves the value it was given here: the test reads what reached the database.
CREATE TABLE lookups (id bigserial PRIMARY KEY, arg text NOT NULL);
CREATE FUNCTION seen(a text) RETURNS boolean LANGUAGE sql VOLATILE AS
  $$ INSERT INTO lookups (arg) VALUES (a) RETURNING true $$;
"""

POLICY = """
tier "free" { limit = 100,  window = "1h" }
tier "pro"  { limit = 1000, window = "1h" }
identity {
  jwt = { keys = "jwks.json", issuer = "%(iss)s", leeway = "30s" },
  api_key = {
    %(where)s,
    sql = [[SELECT user_id::text AS sub, plan, org FROM api_keys
            WHERE seen($1) AND key_hash = $1 AND revoked_at IS NULL]],
    hash = "sha256", ttl = "1m",
  },
  user = claim "sub", tier = claim "plan", tenant = claim "org", default_tier = "free",
}
endpoint "GET /me" {
  sql   = "SELECT $1::text AS sub, $2::text AS tier, clock_timestamp()::text AS at",
  args  = { "{user}", "{tier}" },
  cache = { ttl = "1m", key = "me:{query}:{tier}:{user}" },
  limit = { "tier", { limit = 10000, window = "1m", key = "me:{user}", name = "me" } },
}
on_change "api_keys" { credentials = true }
"""

KEYS = {"alice-key-0123456789": (1, "pro", "acme"), "bob-key-9876543210": (2, "free", None)}


def sha256_hex(s):
    return hashlib.sha256(s.encode()).hexdigest()


def install_triggers(db, policy_dir):
    r = subprocess.run([lib.BIN, "triggers", policy_dir], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError("sluice triggers exited %d: %s" % (r.returncode, r.stderr))
    sql = r.stdout
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db], input=sql,
                   capture_output=True, text=True, check=True)


class ApiKeyCase(SluiceTestCase):
    WHERE = 'header = "X-API-Key"'

    @classmethod
    def setUpClass(cls):
        cls.db = "t_" + uuid.uuid4().hex[:12]
        lib.psql("CREATE DATABASE %s" % cls.db)
        cls.addClassCleanup(lib.psql, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % cls.db,
                            check=False)
        lib.psql(SCHEMA, db=cls.db)
        for key, (uid, plan, org) in KEYS.items():
            lib.psql("INSERT INTO api_keys VALUES ('%s', %d, '%s', %s, NULL)" % (
                sha256_hex(key), uid, plan, "'%s'" % org if org else "NULL"), db=cls.db)
        cls.ec = ec.generate_private_key(ec.SECP256R1())
        jwk = jwks.public_jwk(cls.ec, kid="e1", alg="ES256")
        cls.dir = tempfile.mkdtemp(prefix="sluice-apikey-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        with open(os.path.join(cls.dir, "jwks.json"), "w") as f:
            json.dump({"keys": [jwk]}, f)
        with open(os.path.join(cls.dir, "10-policy.lua"), "w") as f:
            f.write(POLICY % {"iss": ISS, "where": cls.WHERE})
        install_triggers(cls.db, cls.dir)
        cls.s = cls.start(cls.dir, database=cls.db)

    def token(self, sub, plan="pro"):
        now = int(time.time())
        return jwt.encode({"sub": sub, "plan": plan, "iss": ISS, "exp": now + 600}, self.ec,
                          algorithm="ES256", headers={"kid": "e1"})

    def get(self, key=None, token=None, path="/me"):
        h = {}
        if key is not None:
            h["X-API-Key"] = key
        if token is not None:
            h["Authorization"] = "Bearer " + token
        st, hd, body = self.s.request("GET", path, h)
        return st, hd, json.loads(body) if body else None

    def lookups(self):
        return lib.psql("SELECT arg FROM lookups ORDER BY id", db=self.db).split()


class ApiKeys(ApiKeyCase):
    def test_a_key_identifies_its_user_and_each_user_has_its_own_entry(self):
        st, h, b = self.get("alice-key-0123456789", path="/me?own")
        self.assertEqual(st, 200, b)
        self.assertEqual((b[0]["sub"], b[0]["tier"], h["x-cache"]), ("1", "pro", "MISS"))
        st, h, b2 = self.get("alice-key-0123456789", path="/me?own")
        self.assertEqual((st, h["x-cache"], b2), (200, "HIT", b))
        st, h, b = self.get("bob-key-9876543210", path="/me?own")
        self.assertEqual((st, h["x-cache"], b[0]["sub"], b[0]["tier"]), (200, "MISS", "2", "free"))

    def test_only_the_sha256_of_a_key_reaches_the_database_and_a_known_key_is_remembered(self):
        lib.psql("DELETE FROM lookups", db=self.db)
        key = "alice-key-0123456789"
        for _ in range(5):
            self.assertEqual(self.get(key, path="/me?remembered")[0], 200)
        args = self.lookups()
        # At most one lookup per worker within the TTL; each sent the hex SHA-256, not the key.
        self.assertTrue(1 <= len(args) <= 2, args)
        self.assertEqual(set(args), {sha256_hex(key)})
        self.assertNotIn(key, self.s.read_log())
        listing = self.s.admin("GET", "/cache?match=*&limit=1000")[2].decode()
        self.assertNotIn(key, listing)

    def test_an_unknown_key_is_401_never_anonymous(self):
        st, h, b = self.get("no-such-key")
        self.assertEqual(st, 401)
        self.assertTrue(h["www-authenticate"].startswith('ApiKey header="X-API-Key", '
                                                         'error="invalid_key"'), h)
        self.assertEqual(h["content-type"], "application/problem+json")
        self.assertNotIn("no-such-key", json.dumps(b) + h["www-authenticate"])
        # Remembered as unknown: asking again does not query the database again.
        n = len(self.lookups())
        for _ in range(4):
            self.assertEqual(self.get("no-such-key")[0], 401)
        self.assertLessEqual(len(self.lookups()) - n, 2)

    def test_a_key_given_twice_is_400(self):
        raw = (b"GET /me HTTP/1.1\r\nHost: x\r\nX-API-Key: a\r\nX-API-Key: b\r\n"
               b"Connection: close\r\n\r\n")
        self.assertEqual(lib.status_of(self.s.raw(raw)), 400)

    def test_a_revoked_key_stops_within_one_second(self):
        """on_change "api_keys" { credentials = true }: the NOTIFY of a change makes every worker
        forget the keys it remembered, well before their TTL (1 minute)."""
        key = "revoke-me-000000000001"
        lib.psql("INSERT INTO api_keys VALUES ('%s', 7, 'pro', NULL, NULL)" % sha256_hex(key),
                 db=self.db)
        for _ in range(4):  # remembered by both workers
            self.assertEqual(self.get(key, path="/me?revoke")[0], 200)
        lib.psql("UPDATE api_keys SET revoked_at = now() WHERE key_hash = '%s'" % sha256_hex(key),
                 db=self.db)
        revoked = time.monotonic()
        while True:
            statuses = [self.get(key, path="/me?revoke")[0] for _ in range(4)]
            if statuses == [401] * 4:
                break
            self.assertLess(time.monotonic() - revoked, 1.0, "still accepted: %s" % statuses)
            time.sleep(0.01)
        # And it stays refused.
        time.sleep(0.2)
        self.assertEqual([self.get(key, path="/me?revoke")[0] for _ in range(4)], [401] * 4)

    def test_the_first_credential_present_decides(self):
        """A bearer token decides before an API key; a present but invalid one is 401, never
        a fall back to the other credential or to an anonymous caller."""
        good_key, tok = "alice-key-0123456789", self.token("99", "free")
        st, h, b = self.get("no-such-key", tok, "/me?first")
        self.assertEqual((st, b[0]["sub"]), (200, "99"))
        st, h, b = self.get(good_key, "garbage", "/me?first")
        self.assertEqual(st, 401)
        self.assertTrue(h["www-authenticate"].startswith('Bearer error="invalid_token"'))
        st, h, b = self.get(good_key, None, "/me?first")
        self.assertEqual((st, b[0]["sub"]), (200, "1"))

    def test_two_users_never_see_each_others_entries_whichever_credential_they_use(self):
        """User 1 by API key, user 99 by token, user 2 by API key, on one key template:
        three entries, each answered with its own user."""
        path = "/me?mixed"
        seen = {}
        for _ in range(2):
            for who, (key, tok) in {"1": ("alice-key-0123456789", None),
                                    "99": (None, self.token("99")),
                                    "2": ("bob-key-9876543210", None)}.items():
                st, h, b = self.get(key, tok, path)
                self.assertEqual((st, b[0]["sub"]), (200, who))
                seen.setdefault(who, b)
                self.assertEqual(b, seen[who])

    def test_no_credential_is_an_anonymous_caller(self):
        st, h, b = self.get(path="/me?anon")
        self.assertEqual(st, 200)
        self.assertIn('"free"', h["ratelimit-policy"])


class QueryApiKeys(ApiKeyCase):
    WHERE = 'query = "api_key"'

    def get(self, key=None, token=None, path="/me"):
        if key is not None:
            path += ("&" if "?" in path else "?") + "api_key=" + key
        return super().get(None, token, path)

    def test_a_key_in_the_query_identifies_and_stays_out_of_the_cache_key(self):
        key = "alice-key-0123456789"
        st, h, b = self.get(key, path="/me?a=1")
        self.assertEqual((st, h["x-cache"], b[0]["sub"]), (200, "MISS", "1"))
        st, h, b = self.get(key, path="/me?a=1")
        self.assertEqual((st, h["x-cache"]), (200, "HIT"))
        listing = self.s.admin("GET", "/cache?match=*&limit=1000")[2].decode()
        self.assertIn("me:a=1:pro:1", listing)
        self.assertNotIn(key, listing)
        self.assertEqual(self.get("no-such-key")[0], 401)


if __name__ == "__main__":
    lib.main()
