#!/usr/bin/env python3
"""End-to-end: callers identified by JWT bearer tokens (RFC 7519, RFC 6750) verified with keys
from a JWK set file (RFC 7517), minted by the test with PyJWT and cryptography.

Run with /usr/bin/python3 (Debian's python3-jwt and python3-cryptography)."""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jwks  # noqa: E402
import lib  # noqa: E402
from lib import SluiceTestCase  # noqa: E402
from origin import Origin  # noqa: E402

import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

ISS = "https://auth.example.com"
AUD = "crm"

POLICY = """
tier "free" { limit = 100,  window = "1h" }
tier "pro"  { limit = 1000, window = "1h" }
identity {
  jwt = { keys = "keys/jwks.json", issuer = "%(iss)s", audience = "%(aud)s", leeway = "30s",
          required = %(required)s },
  user = claim "sub", tier = claim "plan", tenant = claim "org", default_tier = "free",
}
upstream "app" { url = "%(origin)s" }
endpoint "GET /me" {
  upstream = "app",
  cache = { ttl = "1m", key = "me:{path}:{user}" },
  limit = { "tier", { limit = 50, window = "1m", key = "me:{user}", name = "me" } },
}
endpoint "GET /pub/*" {
  upstream = "app",
  cache = { ttl = "origin", key = "pub:{path}", shared = true },
  limit = { { limit = 50, window = "1m", key = "pub:{user}", name = "pub" } },
}
endpoint "GET /warm" {
  upstream = "app",
  cache = { ttl = "1h", key = "warm:{path}:{user}", warm = { { user = "w1" } } },
}
endpoint "GET /anon-share" {
  upstream = "app",
  cache = { ttl = "1m", key = "as:{path}:{user}", anonymous = "share" },
  limit = { { limit = 50, window = "1m", key = "as:{user}", name = "as", anonymous = "share" } },
}
"""


b64 = jwks.b64


def public_jwk(key, kid, alg):
    return jwks.public_jwk(key, kid=kid, alg=alg, use="sig")


class Keys:
    """The test's signing keys: one per algorithm, each with its kid."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.by_alg = {"RS256": (self.rsa, "rsa1"), "ES256": (self.ec, "ec1"),
                       "EdDSA": (self.ed, "ed1")}

    def jwks(self):
        return {"keys": [public_jwk(k, kid, alg) for alg, (k, kid) in self.by_alg.items()]}


def claims(sub, **kw):
    now = int(time.time())
    c = {"sub": sub, "iss": ISS, "aud": AUD, "iat": now, "exp": now + 600, "plan": "pro"}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def write_jwks(d, doc):
    """Replaces keys/jwks.json at once (a rename), as a key rotation does."""
    os.makedirs(os.path.join(d, "keys"), exist_ok=True)
    tmp = os.path.join(d, "keys", ".jwks.json.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, os.path.join(d, "keys", "jwks.json"))


def rate_remaining(headers, name):
    """r of the policy `name` in the RateLimit field, or None."""
    m = re.search(r'"%s";r=(\d+)' % re.escape(name), headers.get("ratelimit", ""))
    return int(m.group(1)) if m else None


class JwtCase(SluiceTestCase):
    REQUIRED = "true"

    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.keys = Keys()
        cls.dir = tempfile.mkdtemp(prefix="sluice-jwt-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        with open(os.path.join(cls.dir, "10-policy.lua"), "w") as f:
            f.write(POLICY % {"iss": ISS, "aud": AUD, "origin": cls.origin.url,
                              "required": cls.REQUIRED})
        write_jwks(cls.dir, cls.keys.jwks())
        cls.access = os.path.join(cls.dir, "access.log")
        cls.s = cls.start(cls.dir, args=["--access-log", cls.access])

    def access_lines(self, request_ids, timeout=5):
        """The access log's lines of the given request ids (the writer flushes every 200 ms)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.access) as f:
                by_id = {l["request_id"]: l for l in map(json.loads, f)}
            if all(i in by_id for i in request_ids) or time.monotonic() > deadline:
                return [by_id.get(i) for i in request_ids]
            time.sleep(0.05)

    def token(self, sub, alg="RS256", headers=None, **kw):
        key, kid = self.keys.by_alg[alg]
        h = {"kid": kid}
        h.update(headers or {})
        return jwt.encode(claims(sub, **kw), key, algorithm=alg, headers=h)

    def get(self, token=None, path="/me", headers=None):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = "Bearer " + token
        return self.s.request("GET", path, h)


class VerifiedTokens(JwtCase):
    def test_rs256_es256_and_eddsa_tokens_pass_and_each_sub_has_its_own_entry(self):
        """RFC 7518 sections 3.3 and 3.4, RFC 8037: tokens of each key verify; the cache key
        holds the verified sub, so each caller has its own entry."""
        for alg in ("RS256", "ES256", "EdDSA"):
            with self.subTest(alg=alg):
                a, b = "a-" + alg, "b-" + alg
                ta, tb = self.token(a, alg), self.token(b, alg)
                st, h, body = self.get(ta, "/me?" + alg)
                self.assertEqual(st, 200, body)
                self.assertEqual(h.get("x-cache"), "MISS")
                self.assertEqual(json.loads(body)["h"]["authorization"], "Bearer " + ta)
                st, h, body = self.get(ta, "/me?" + alg)
                self.assertEqual((st, h.get("x-cache")), (200, "HIT"))
                st, h, body = self.get(tb, "/me?" + alg)
                self.assertEqual((st, h.get("x-cache")), (200, "MISS"))
                self.assertEqual(json.loads(body)["h"]["authorization"], "Bearer " + tb)
                # The tier comes from the plan claim.
                self.assertIn('"pro"', h.get("ratelimit-policy", ""))

    def test_warming_fills_the_entry_of_a_caller_named_by_claims(self):
        """cache.warm names users; with a verified identity the warming request carries them
        as the claims their token would, so the entry of sub w1 is there before w1 asks."""
        deadline = time.time() + 10
        while "warmed generation" not in self.s.read_log():
            self.assertLess(time.time(), deadline, "never warmed")
            time.sleep(0.05)
        st, h, _ = self.get(self.token("w1"), "/warm")
        self.assertEqual((st, h.get("x-cache")), (200, "HIT"))
        self.assertEqual(self.get(self.token("w2"), "/warm")[1].get("x-cache"), "MISS")

    def test_a_token_expiring_in_a_far_future_is_accepted_and_remembered(self):
        """RFC 7519 section 2: a NumericDate may be any number; a far exp (1e300) verifies and
        is remembered as long as the cache keeps it."""
        t = self.token("far", exp=1e300)
        for _ in range(3):
            st, h, _ = self.get(t, "/me?far")
            self.assertEqual(st, 200)

    def test_no_token_is_401_with_a_bare_bearer_challenge(self):
        """RFC 6750 section 3.1: a request without credentials gets a challenge with no error."""
        st, h, body = self.get()
        self.assertEqual(st, 401)
        self.assertEqual(h.get("www-authenticate"), "Bearer")
        self.assertEqual(h.get("content-type"), "application/problem+json")
        st, h, body = self.get(headers={"Authorization": "Basic dXNlcjpwdw=="})
        self.assertEqual((st, h.get("www-authenticate")), (401, "Bearer"))

    def test_two_authorization_fields_are_400_invalid_request(self):
        """RFC 6750 section 3.1: invalid_request for a repeated parameter."""
        t = self.token("dup")
        raw = ("GET /me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Authorization: Bearer %s\r\nConnection: close\r\n\r\n" % (t, t)).encode()
        out = self.s.raw(raw)
        self.assertEqual(lib.status_of(out), 400)
        self.assertIn(b'WWW-Authenticate: Bearer error="invalid_request"', out)

    def refused_tokens(self):
        """(name, token, description part) of every token the server must refuse."""
        now = int(time.time())
        key, kid = self.keys.by_alg["RS256"]
        pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        victim = claims("victim")
        good = self.token("victim")
        h, p, s = good.split(".")
        # HS256 keyed with the RSA public key's PEM: the algorithm confusion attack.
        hs_head = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
        hs_input = (hs_head + "." + p).encode()
        hs = hs_input.decode() + "." + b64(hmac.new(pub_pem, hs_input, hashlib.sha256).digest())
        none = b64(json.dumps({"alg": "none", "kid": kid}).encode()) + "." + p + "."
        tampered = h + "." + b64(json.dumps(dict(victim, sub="victim", plan="enterprise",
                                                 exp=now + 9999)).encode()) + "." + s
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return [
            ("expired", self.token("victim", exp=now - 31, iat=now - 700), "expired"),
            ("not yet valid", self.token("victim", nbf=now + 120), "not valid yet"),
            ("issued in the future", self.token("victim", iat=now + 120), "future"),
            ("wrong issuer", self.token("victim", iss="https://evil.example.com"), "issuer"),
            ("wrong audience", self.token("victim", aud="billing"), "audience"),
            ("no audience", self.token("victim", aud=None), "audience"),
            ("no exp", self.token("victim", exp=None), "no exp"),
            ("alg none", none, "algorithm"),
            ("HS256 with the RSA public key", hs, "algorithm"),
            ("tampered payload", tampered, "signature"),
            ("another key under a known kid", jwt.encode(victim, other, algorithm="RS256",
                                                         headers={"kid": kid}), "signature"),
            ("unknown kid", jwt.encode(victim, other, algorithm="RS256",
                                       headers={"kid": "gone"}), "key is not known"),
            ("jku header", self.token("victim", headers={"jku": "https://evil.example/k"}),
             "header jku"),
            ("jwk header", self.token("victim", headers={"jwk": public_jwk(other, "x", "RS256")}),
             "header jwk"),
            ("crit header", self.token("victim", headers={"crit": ["exp"]}), "header crit"),
            ("oversized", self.token("victim", pad="x" * 9000), "too long"),
            ("garbage", "not-a-token", "not a signed JWT"),
            ("four parts", good + ".x", "not a signed JWT"),
            ("bad base64", "%%%." + p + "." + s, "malformed"),
        ]

    def test_refused_tokens_are_401_invalid_token_never_served_nor_counted(self):
        """RFC 7519 section 4.1, RFC 8725 sections 3.1 and 3.10, RFC 6750 section 3: every
        refused token gets 401 with an invalid_token challenge saying why, is never served a
        stored answer, and counts against nobody's limit, the sub it names included."""
        good = self.token("victim")
        st, h, _ = self.get(good, "/me?refused")
        self.assertEqual((st, h.get("x-cache")), (200, "MISS"))
        before = rate_remaining(h, "me")
        for name, tok, why in self.refused_tokens():
            with self.subTest(name):
                st, h, body = self.get(tok, "/me?refused")
                self.assertEqual(st, 401, body)
                challenge = h.get("www-authenticate", "")
                self.assertTrue(challenge.startswith('Bearer error="invalid_token", '
                                                     'error_description="'), challenge)
                self.assertIn(why, challenge)
                self.assertNotIn("x-cache", h)
                self.assertEqual(h.get("content-type"), "application/problem+json")
                problem = json.loads(body)
                self.assertEqual(problem["status"], 401)
                self.assertNotIn(tok[:40], challenge + body.decode())
        st, h, _ = self.get(good, "/me?refused")
        self.assertEqual((st, h.get("x-cache")), (200, "HIT"))
        self.assertEqual(rate_remaining(h, "me"), before - 1)

    def test_rotating_the_jwks_file_accepts_new_keys_and_refuses_removed_ones(self):
        """RFC 7517 section 5: the key set is a file of the policy; replacing it reloads the
        policy, so a rotation takes effect without a restart."""
        new = ec.generate_private_key(ec.SECP256R1())
        old_token = self.token("rotor")
        new_token = jwt.encode(claims("rotor"), new, algorithm="ES256", headers={"kid": "ec2"})
        self.assertEqual(self.get(new_token, "/me?rot")[0], 401)
        self.assertEqual(self.get(old_token, "/me?rot")[0], 200)
        doc = self.keys.jwks()
        doc["keys"] = [k for k in doc["keys"] if k["kid"] != "rsa1"] + \
            [public_jwk(new, "ec2", "ES256")]
        try:
            write_jwks(self.dir, doc)
            deadline = time.time() + 5
            while self.get(new_token, "/me?rot")[0] != 200:
                self.assertLess(time.time(), deadline, "the new key was never accepted")
                time.sleep(0.05)
            st, h, _ = self.get(old_token, "/me?rot")
            self.assertEqual(st, 401)
            self.assertIn("key is not known", h.get("www-authenticate", ""))
            status = json.loads(self.s.admin("GET", "/status")[2])
            paths = [f["path"] for f in status["files"]]
            self.assertTrue(any(p.endswith("keys/jwks.json") for p in paths), paths)
        finally:
            write_jwks(self.dir, self.keys.jwks())
            deadline = time.time() + 5
            while self.get(old_token, "/me?rot")[0] != 200:
                self.assertLess(time.time(), deadline, "the restored key was never accepted")
                time.sleep(0.05)

    def test_a_broken_jwks_file_keeps_the_keys_serving(self):
        """A key set that does not load is a policy that does not load: the last one serves."""
        t = self.token("broken")
        self.assertEqual(self.get(t, "/me?broken")[0], 200)
        status = json.loads(self.s.admin("GET", "/status")[2])
        gen = status["generation"]
        try:
            write_jwks(self.dir, {"keys": "nope"})
            deadline = time.time() + 5
            while json.loads(self.s.admin("GET", "/status")[2])["reload_failures"] == \
                    status["reload_failures"]:
                self.assertLess(time.time(), deadline, "the broken file was never read")
                time.sleep(0.05)
            after = json.loads(self.s.admin("GET", "/status")[2])
            self.assertEqual(after["generation"], gen)
            self.assertIn("keys/jwks.json", after["last_reload"]["error"])
            self.assertEqual(self.get(t, "/me?broken")[0], 200)
        finally:
            write_jwks(self.dir, self.keys.jwks())
            deadline = time.time() + 5
            while json.loads(self.s.admin("GET", "/status")[2])["generation"] == gen:
                self.assertLess(time.time(), deadline)
                time.sleep(0.05)


class ExplainAndMetrics(JwtCase):
    def test_the_access_log_names_the_source_and_a_refusals_reason_never_the_token(self):
        good = self.token("log1", "EdDSA")
        expired = self.token("log2", exp=int(time.time()) - 3600)
        ids = []
        for t in (good, expired, None):
            st, h, _ = self.get(t)
            ids.append(h["x-request-id"])
        lines = self.access_lines(ids)
        self.assertEqual([(l["status"], l["identity"], l["user"]) for l in lines],
                         [(200, "jwt", "log1"), (401, "jwt", None), (401, "anonymous", None)])
        self.assertNotIn("identity_refused", lines[0])  # left out when none
        self.assertEqual(lines[1]["identity_refused"], "expired")
        with open(self.access) as f:
            text = f.read()
        for t in (good, expired):
            self.assertNotIn(t.split(".")[2], text)  # no signature, no token
    def explain(self, token):
        r = subprocess.run([lib.BIN, "explain", "-H", "Authorization: Bearer " + token, self.dir,
                            "GET /me"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout, json.loads(r.stdout)

    def test_explain_says_which_source_identified_the_caller_and_why_a_token_was_refused(self):
        """sluice explain shows the source, the key that verified the token and where each
        identity value came from; for a refused token the reason, never the token."""
        good = self.token("ex1", "ES256")
        text, o = self.explain(good)
        c = o["caller"]
        self.assertEqual((c["user"], c["source"], c["tier"], c["tier_from"]),
                         ("ex1", "jwt", "pro", "claim"))
        self.assertEqual(c["from"], {"user": "claim sub", "tenant": None, "tier": "claim plan"})
        self.assertEqual(c["credential"]["key"], "ec1")
        self.assertTrue(c["credential"]["key_from"].endswith("keys/jwks.json"))
        self.assertNotIn(good.split(".")[2], text)
        expired = self.token("ex1", exp=int(time.time()) - 100)
        text, o = self.explain(expired)
        self.assertEqual(o["status"], 401)
        self.assertEqual(o["credential"]["refused"], "expired")
        self.assertIn('error="invalid_token"', o["credential"]["challenge"])
        for part in expired.split("."):
            self.assertNotIn(part, text)

    def test_metrics_count_verified_remembered_and_refused_tokens(self):
        """/metrics: sluice_identity_total by source and result, and
        sluice_identity_refusals_total by reason."""
        def metric(name, labels):
            text = self.s.admin("GET", "/metrics")[2].decode()
            m = re.search(r"^%s\{%s\} (\d+)" % (re.escape(name), re.escape(labels)), text,
                          re.M)
            return int(m.group(1)) if m else 0
        expired0 = metric("sluice_identity_refusals_total", 'source="jwt",reason="expired"')
        missing0 = metric("sluice_identity_refusals_total", 'source="none",reason="missing"')
        ok0 = metric("sluice_identity_total", 'source="jwt",result="verified"') + \
            metric("sluice_identity_total", 'source="jwt",result="cached"')
        cached0 = metric("sluice_identity_total", 'source="jwt",result="cached"')
        expired = self.token("m1", exp=int(time.time()) - 100)
        for _ in range(3):
            self.assertEqual(self.get(expired, "/me?metrics")[0], 401)
        self.assertEqual(self.get(None, "/me?metrics")[0], 401)
        t = self.token("m2")
        for _ in range(6):
            self.assertEqual(self.get(t, "/me?metrics")[0], 200)
        self.assertEqual(metric("sluice_identity_refusals_total",
                                'source="jwt",reason="expired"') - expired0, 3)
        self.assertEqual(metric("sluice_identity_refusals_total",
                                'source="none",reason="missing"') - missing0, 1)
        ok = metric("sluice_identity_total", 'source="jwt",result="verified"') + \
            metric("sluice_identity_total", 'source="jwt",result="cached"')
        self.assertEqual(ok - ok0, 6)
        # Two workers: each verifies the token once at most, then remembers it.
        self.assertGreaterEqual(metric("sluice_identity_total", 'source="jwt",result="cached"') -
                                cached0, 4)


class OptionalTokens(JwtCase):
    REQUIRED = "false"

    def test_without_a_token_the_caller_is_anonymous_and_limited_by_address(self):
        """Not required: no token is an anonymous caller (the default tier, by address)."""
        st, h, _ = self.get(path="/me?anon")
        self.assertEqual(st, 200)
        self.assertIn('"free"', h.get("ratelimit-policy", ""))

    def test_a_key_naming_the_user_is_never_shared_by_anonymous_callers(self):
        """An anonymous caller bypasses a cache whose key holds {user} (no shared "no user"
        entry) and is counted by its address under a limit whose key holds {user}."""
        before = self.origin.count("/me")
        for _ in range(2):
            st, h, b = self.get(path="/me?nobody")
            self.assertEqual((st, h.get("x-cache")), (200, "BYPASS"))
        self.assertEqual(self.origin.count("/me") - before, 2)
        # A user's own entry is still a HIT for that user, and never for the anonymous.
        t = self.token("someone")
        self.assertEqual(self.get(t, "/me?nobody")[1].get("x-cache"), "MISS")
        self.assertEqual(self.get(t, "/me?nobody")[1].get("x-cache"), "HIT")
        st, h, b = self.get(path="/me?nobody")
        self.assertEqual(h.get("x-cache"), "BYPASS")
        self.assertNotIn("Bearer", json.dumps(json.loads(b)["h"]))
        r = subprocess.run([lib.BIN, "explain", self.dir, "GET /me?nobody"], capture_output=True,
                           text=True, timeout=20)
        o = json.loads(r.stdout)
        self.assertIsNone(o["cache"]["key"])
        self.assertEqual(o["cache"]["anonymous"], "bypass")
        self.assertIn("lacks", o["cache"]["bypass_reason"])
        me = [l for l in o["limits"] if l["name"] == "me"][0]
        self.assertEqual(me["key"], "me:%-:ip:127.0.0.1")
        self.assertEqual(me["anonymous"], "ip")
        self.assertIn("ip", me["keyed_by"])

    def test_anonymous_share_is_explicit_and_check_says_so(self):
        """anonymous = "share": the callers who lack the user share one entry and one counter;
        sluice check names every such key."""
        st, h, _ = self.get(path="/anon-share?x")
        self.assertEqual((st, h.get("x-cache")), (200, "MISS"))
        st, h, _ = self.get(path="/anon-share?x")
        self.assertEqual((st, h.get("x-cache")), (200, "HIT"))
        r = subprocess.run([lib.BIN, "check", self.dir], capture_output=True, text=True,
                           timeout=20)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('note: endpoint "GET /anon-share": callers who lack what cache key '
                      '"as:{path}:{user}" names share one entry', r.stdout)
        self.assertIn('callers who lack what limit key "as:{user}" names share one counter',
                      r.stdout)
        o = json.loads(subprocess.run([lib.BIN, "explain", self.dir, "GET /anon-share?x"],
                                      capture_output=True, text=True, timeout=20).stdout)
        self.assertEqual((o["cache"]["key"], o["cache"]["anonymous"]),
                         ("as:/anon-share:%-", "share"))
        self.assertEqual(o["limits"][0]["key"], "as:%-")

    def test_a_shared_public_entry_is_a_hit_for_a_caller_with_a_valid_token(self):
        """RFC 9111 section 3.5: an answer saying public may serve requests with Authorization
        from a shared entry; each caller's limit still counts its own requests."""
        self.origin.config("/pub/a", headers={"Cache-Control": "public, max-age=60"})
        ta, tb = self.token("pa"), self.token("pb")
        st, h, _ = self.get(ta, "/pub/a")
        self.assertEqual((st, h.get("x-cache")), (200, "MISS"))
        st, h, _ = self.get(tb, "/pub/a")
        self.assertEqual((st, h.get("x-cache")), (200, "HIT"))
        self.assertEqual(rate_remaining(h, "pub"), 49)
        st, h, _ = self.get(ta, "/pub/a")
        self.assertEqual((h.get("x-cache"), rate_remaining(h, "pub")), ("HIT", 48))
        self.assertEqual(self.get(None, "/pub/a")[1].get("x-cache"), "HIT")
        self.assertEqual(self.origin.count("/pub/a"), 1)
        for cc in ("s-maxage=60", "max-age=60, must-revalidate"):
            path = "/pub/" + cc.replace(" ", "").replace(",", "-").replace("=", "")
            self.origin.config(path, headers={"Cache-Control": cc})
            self.assertEqual(self.get(ta, path)[1].get("x-cache"), "MISS", cc)
            self.assertEqual(self.get(tb, path)[1].get("x-cache"), "HIT", cc)

    def test_an_entry_that_does_not_allow_it_never_serves_a_request_with_authorization(self):
        """RFC 9111 section 3.5: without public, s-maxage or must-revalidate, a stored answer
        does not serve a request with Authorization, and such a request's answer is not stored
        (nor remembered as uncacheable for the others)."""
        self.origin.config("/pub/b", headers={"Cache-Control": "max-age=60"})
        t = self.token("pc")
        self.assertEqual(self.get(None, "/pub/b")[1].get("x-cache"), "MISS")
        self.assertEqual(self.get(None, "/pub/b")[1].get("x-cache"), "HIT")
        for _ in range(2):
            st, h, b = self.get(t, "/pub/b")
            self.assertEqual((st, h.get("x-cache")), (200, "BYPASS"))
            self.assertEqual(json.loads(b)["h"]["authorization"], "Bearer " + t)
        self.assertEqual(self.origin.count("/pub/b"), 3)
        self.assertEqual(self.get(None, "/pub/b")[1].get("x-cache"), "HIT")
        # First asked with a token: answered, not stored; the next anonymous request misses.
        self.origin.config("/pub/c", headers={"Cache-Control": "max-age=60"})
        self.assertEqual(self.get(t, "/pub/c")[1].get("x-cache"), "BYPASS")
        self.assertEqual(self.get(None, "/pub/c")[1].get("x-cache"), "MISS")
        self.assertEqual(self.get(None, "/pub/c")[1].get("x-cache"), "HIT")

    def test_an_invalid_token_is_401_not_anonymous(self):
        """A present but invalid token is refused, never taken as no token."""
        st, h, _ = self.get("garbage", "/me?anon")
        self.assertEqual(st, 401)
        self.assertTrue(h["www-authenticate"].startswith('Bearer error="invalid_token"'))


class JwkCoordinates(unittest.TestCase):
    """RFC 7518 section 6.2.1.2: an EC key's "x" (and "y", 6.2.1.3) is the full size of a
    coordinate of its curve, so one that starts with a zero byte keeps it."""

    def check(self, jwk):
        d = tempfile.mkdtemp(prefix="sluice-jwk-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "jwks.json"), "w") as f:
            json.dump({"keys": [jwk]}, f)
        with open(os.path.join(d, "10-policy.lua"), "w") as f:
            f.write('identity { jwt = { keys = "jwks.json", issuer = "%s" }, user = claim "sub" }\n'
                    'endpoint "GET /me" { body = "{}" }\n' % ISS)
        return subprocess.run([lib.BIN, "check", d], capture_output=True, text=True, timeout=20)

    def test_rfc7518_6_2_1_2_a_coordinate_with_a_leading_zero_byte_is_written_whole(self):
        # About one P-256 key in 256 has an x below 2^248.
        for _ in range(20000):
            key = ec.generate_private_key(ec.SECP256R1())
            if key.public_key().public_numbers().x < 1 << 248:
                break
        else:
            self.fail("no P-256 key with a leading zero byte in x in 20,000")
        good = public_jwk(key, "z1", "ES256")
        self.assertEqual(len(base64.urlsafe_b64decode(good["x"] + "=")), 32)
        r = self.check(good)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # What a writer that drops the zero byte makes: 31 bytes, refused with its reason.
        short = dict(good, x=b64(key.public_key().public_numbers().x.to_bytes(31, "big")))
        r = self.check(short)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn('"x" and "y" must be 32 bytes each on P-256', r.stdout + r.stderr)


class CrmJwtExample(SluiceTestCase):
    """examples/crm/jwt: the CRM served to callers with tokens that its tokens.py mints."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sluice-crm-jwt-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.dir = os.path.join(cls.tmp, "policies")
        # The example's links resolved: a copy the test may write jwks.json into.
        shutil.copytree(os.path.join(lib.ROOT, "examples", "crm", "jwt", "policies"), cls.dir,
                        symlinks=False, ignore=shutil.ignore_patterns("jwks.json"))
        cls.tool = [sys.executable, os.path.join(lib.ROOT, "examples", "crm", "jwt", "tokens.py"),
                    "--policies", cls.dir, "--private", os.path.join(cls.tmp, "private")]
        subprocess.run(cls.tool + ["keys"], check=True, timeout=30)
        cls.s = cls.start(cls.dir, database=lib.crm_database())

    def mint(self, *args):
        return subprocess.run(self.tool + ["mint"] + list(args), check=True, capture_output=True,
                              text=True, timeout=30).stdout.strip()

    def test_a_minted_token_reads_its_users_contacts_and_only_theirs(self):
        one, three = self.mint("1", "free"), self.mint("3", "professional")
        st, h, b = self.s.request("GET", "/api/crm?type=contacts",
                                  {"Authorization": "Bearer " + one})
        self.assertEqual(st, 200, b)
        self.assertIn('"free"', h["ratelimit-policy"])
        st, h, b3 = self.s.request("GET", "/api/crm?type=contacts",
                                   {"Authorization": "Bearer " + three})
        self.assertEqual(st, 200, b3)
        self.assertIn('"professional"', h["ratelimit-policy"])
        self.assertNotEqual(b, b3)
        # A header naming a user is no identity here: the token is required.
        st, h, _ = self.s.request("GET", "/api/crm?type=contacts", {"X-User-Id": "1"})
        self.assertEqual((st, h["www-authenticate"]), (401, "Bearer"))

    def test_rotate_keeps_the_previous_key_for_one_rotation(self):
        old = self.mint("2", "starter")
        subprocess.run(self.tool + ["rotate"], check=True, timeout=30)
        new = self.mint("2", "starter")
        deadline = time.time() + 15  # the watcher's reload, on a machine that may be busy
        while True:
            st = self.s.request("GET", "/api/dashboard", {"Authorization": "Bearer " + new})[0]
            if st == 200:
                break
            self.assertLess(time.time(), deadline, "the rotated key was never accepted: %d" % st)
            time.sleep(0.05)
        self.assertEqual(self.s.request("GET", "/api/dashboard",
                                        {"Authorization": "Bearer " + old})[0], 200)


if __name__ == "__main__":
    lib.main()
