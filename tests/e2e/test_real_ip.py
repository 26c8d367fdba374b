"""End to end: the client address behind trusted proxies and the PROXY protocol.

`{ip}` (an anonymous caller's rate-limit bucket), the access log, /callers and the fields an
upstream gets name the client: the peer, or when the peer is in --trusted-proxies the
right-most untrusted X-Forwarded-For entry (else RFC 7239 Forwarded for=); with
--proxy-protocol the PROXY header's source stands for the peer. Every class starts its own
origin (origin.py) and sluice on free loopback ports.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import lib
from origin import Origin
from test_proxy import ProxyCase, get, wait_until

POLICY = r'''
upstream "origin" { url = "@ORIGIN@", timeout = "5s" }
endpoint "GET /r/*" {
  upstream = "origin",
  limit = { { limit = 5, window = "1m", key = "anon:{ip}", name = "anon" } },
}
endpoint "GET /f/*" { upstream = "origin" }
'''

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def xff(port, path, value, **kw):
    return get(port, path, headers={"X-Forwarded-For": value}, **kw)


def raw_exchange(port, data, timeout=5):
    """Sends data on a new connection; returns everything answered until the server closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out + b"<timeout>"
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def http_get(path, extra=b""):
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + extra + b"\r\n"


def body_json(raw):
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def v2_header(cmd, fam, addr, tlvs=b""):
    block = addr + tlvs
    return V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(block)) + block


def v2_inet(src, dst="127.0.0.1", sport=40000, dport=80, tlvs=b""):
    a = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
    return v2_header(1, 0x11, a + struct.pack("!HH", sport, dport), tlvs)


def v2_inet6(src, dst="::1", sport=40000, dport=80):
    a = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return v2_header(1, 0x21, a + struct.pack("!HH", sport, dport))


class RealIpCase(ProxyCase):
    ARGS = ()

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.logdir = tempfile.mkdtemp(prefix="sluice-realip-")
        cls.addClassCleanup(shutil.rmtree, cls.logdir, True)
        cls.access = os.path.join(cls.logdir, "access.log")
        cls.serve(cls.policy(POLICY), args=("--access-log", cls.access) + tuple(cls.ARGS))

    def access_lines(self, path):
        """The access log's lines of requests to path (the writer flushes every 200 ms)."""
        def lines():
            try:
                with open(self.access) as f:
                    return [json.loads(l) for l in f if l.strip()]
            except FileNotFoundError:
                return []
        wait_until(lambda: any(l.get("path") == path for l in lines()), timeout=5)
        return [l for l in lines() if l.get("path") == path]

    def callers(self):
        time.sleep(0.7)  # the workers publish their callers every 500 ms
        st, _, body = self.s.admin("GET", "/callers?top=50&policy=anon")
        self.assertEqual(st, 200, body)
        doc = json.loads(body)
        return {c["caller"]: c for p in doc["policies"] for c in p["callers"]}


class BehindATrustedProxy(RealIpCase):
    """sluice behind a load balancer at 127.0.0.1 it trusts: each caller is its own."""

    ARGS = ("--trusted-proxies", "127.0.0.1/32")

    def test_seven_callers_behind_a_trusted_proxy_each_get_their_own_ip_budget(self):
        for i in range(1, 8):
            got = [xff(self.s.port, "/r/seven", "198.51.100.%d" % i).status for _ in range(5)]
            self.assertEqual(got, [200] * 5, i)
        for i in range(1, 8):
            self.assertEqual(xff(self.s.port, "/r/seven", "198.51.100.%d" % i).status, 429, i)
        callers = self.callers()
        for i in range(1, 8):
            c = callers.get("anon:198.51.100.%d" % i)
            self.assertIsNotNone(c, sorted(callers))
            self.assertEqual((c["requests"], c["denied"]), (6, 1))
        self.assertNotIn("anon:127.0.0.1", callers)

    def test_rfc7239_s4_upstream_sees_the_client_in_xff_and_forwarded(self):
        r = xff(self.s.port, "/r/fields", "203.0.113.9")
        self.assertEqual(r.status, 200, r)
        h = r.json()["h"]
        # The chain kept, the peer the request came from appended; Forwarded: the client alone.
        self.assertEqual(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1")
        self.assertEqual(h["forwarded"], "for=203.0.113.9;proto=http")
        r = get(self.s.port, "/r/fields6", headers={"Forwarded": 'for="[2001:db8::5]:4711"'})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["h"]["forwarded"], 'for="[2001:db8::5]";proto=http')
        self.assertEqual(self.access_lines("/r/fields6")[0]["client"], "2001:db8::5")

    def test_spoofed_left_entries_do_not_choose_the_address_and_the_log_shows_the_client(self):
        # The caller wrote 6.6.6.6 itself; the proxy appended the address it saw.
        for _ in range(5):
            self.assertEqual(xff(self.s.port, "/r/spoof", "6.6.6.%d, 192.0.2.44" % _).status, 200)
        self.assertEqual(xff(self.s.port, "/r/spoof", "6.6.6.99, 192.0.2.44").status, 429)
        self.assertEqual({l["client"] for l in self.access_lines("/r/spoof")}, {"192.0.2.44"})

    def test_ipv6_callers_share_their_slash_64(self):
        for i in range(5):
            self.assertEqual(xff(self.s.port, "/r/six", "2001:db8:aa:bb::%x" % (i + 1)).status, 200)
        self.assertEqual(xff(self.s.port, "/r/six", "2001:db8:aa:bb:ffff::1").status, 429)
        self.assertEqual(xff(self.s.port, "/r/six", "2001:db8:aa:bc::1").status, 200)
        # The key's template escapes ':' (injective escaping), the /64 is the caller.
        self.assertIn("anon:2001%3Adb8%3Aaa%3Abb%3A%3A/64", self.callers())


class BehindAnUntrustedPeer(RealIpCase):
    """The same headers from a peer not in the list change nothing: one shared bucket."""

    ARGS = ("--trusted-proxies", "10.0.0.0/8,::1")

    def test_xff_from_an_untrusted_peer_is_ignored_one_shared_bucket(self):
        got = [xff(self.s.port, "/r/shared", "198.51.100.%d" % i).status for i in range(1, 8)]
        self.assertEqual(got, [200] * 5 + [429] * 2)
        self.assertEqual(list(self.callers()), ["anon:127.0.0.1"])

    def test_forwarded_from_an_untrusted_peer_is_ignored_and_replaced_upstream(self):
        r = get(self.s.port, "/f/untrusted-fields",
                headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=7.7.7.7"})
        self.assertEqual(r.status, 200, r)
        h = r.json()["h"]
        self.assertEqual(h["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(h["forwarded"], "for=127.0.0.1;proto=http")
        self.assertEqual(self.access_lines("/f/untrusted-fields")[0]["client"], "127.0.0.1")


class ProxyProtocol(RealIpCase):
    """--proxy-protocol: the PROXY header's source is the peer; 192.0.2.0/24 is trusted on top."""

    ARGS = ("--proxy-protocol", "--trusted-proxies", "192.0.2.0/24")

    def upstream_fields(self, header, path, extra=b""):
        out = raw_exchange(self.s.port, header + http_get(path, extra))
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:300])
        return body_json(out)["h"]

    def test_proxy_protocol_v1_s2_1_tcp4_and_tcp6_source_is_the_client(self):
        h = self.upstream_fields(b"PROXY TCP4 198.51.100.20 127.0.0.1 40000 80\r\n", "/r/v1")
        self.assertEqual(h["x-forwarded-for"], "198.51.100.20")
        h = self.upstream_fields(b"PROXY TCP6 2001:db8::20 ::1 40000 80\r\n", "/r/v1-6")
        self.assertEqual(h["forwarded"], 'for="[2001:db8::20]";proto=http')
        h = self.upstream_fields(b"PROXY UNKNOWN\r\n", "/r/v1-unknown")
        self.assertEqual(h["x-forwarded-for"], "127.0.0.1")
        self.assertEqual({l["client"] for l in self.access_lines("/r/v1")}, {"198.51.100.20"})

    def test_proxy_protocol_v2_s2_2_inet_inet6_tlvs_and_local(self):
        tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP, skipped
        h = self.upstream_fields(v2_inet("198.51.100.21", tlvs=tlv), "/r/v2")
        self.assertEqual(h["x-forwarded-for"], "198.51.100.21")
        h = self.upstream_fields(v2_inet6("2001:db8::21"), "/r/v2-6")
        self.assertEqual(h["x-forwarded-for"], "2001:db8::21")
        local = v2_header(0, 0x11, socket.inet_aton("198.51.100.99") * 2 + b"\0\1\0\2")
        h = self.upstream_fields(local, "/r/v2-local")  # LOCAL keeps the peer
        self.assertEqual(h["x-forwarded-for"], "127.0.0.1")

    def test_proxy_protocol_address_keys_the_limit(self):
        hdr = b"PROXY TCP4 198.51.100.30 127.0.0.1 40000 80\r\n"
        got = [raw_exchange(self.s.port, hdr + http_get("/r/pplimit"))[:12] for _ in range(6)]
        self.assertEqual(got, [b"HTTP/1.1 200"] * 5 + [b"HTTP/1.1 429"])
        other = raw_exchange(self.s.port, v2_inet("198.51.100.31") + http_get("/r/pplimit"))
        self.assertTrue(other.startswith(b"HTTP/1.1 200"), other[:200])

    def test_trusted_proxies_apply_on_top_of_the_proxy_address(self):
        xf = b"X-Forwarded-For: 203.0.113.50\r\n"
        h = self.upstream_fields(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 80\r\n", "/r/stack", xf)
        self.assertEqual(h["forwarded"], "for=203.0.113.50;proto=http")
        self.assertEqual(h["x-forwarded-for"], "203.0.113.50, 192.0.2.1")
        # From an untrusted PROXY source the field is ignored.
        h = self.upstream_fields(b"PROXY TCP4 198.51.100.40 127.0.0.1 1 80\r\n", "/r/stack2", xf)
        self.assertEqual(h["forwarded"], "for=198.51.100.40;proto=http")

    def test_malformed_or_missing_proxy_header_closes_without_an_answer(self):
        for bad in (b"", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                    b"PROXY " + b"x" * 120, V2_SIG + b"\x11\x11\x00\x0c" + b"\0" * 12,
                    V2_SIG[:-1] + b"X" + b"\x21\x11\x00\x0c" + b"\0" * 12):
            t0 = time.monotonic()
            out = raw_exchange(self.s.port, bad + http_get("/r/bad"))
            self.assertEqual(out, b"", bad)
            self.assertLess(time.monotonic() - t0, 2.5, bad)
        self.assertEqual(self.origin.count("/r/bad"), 0)

    def test_a_connection_that_sends_no_proxy_header_is_closed_within_its_deadline(self):
        s = socket.create_connection(("127.0.0.1", self.s.port), timeout=10)
        try:
            t0 = time.monotonic()
            s.sendall(b"PROXY TCP4")  # and then nothing
            self.assertEqual(s.recv(100), b"")
            self.assertLess(time.monotonic() - t0, 6)
        finally:
            s.close()


class Options(lib.SluiceTestCase):
    """Bad values exit 2 with a message naming the bad item, from a flag or a variable."""

    def run_serve(self, args, env=None):
        e = dict(os.environ, **(env or {}))
        d = tempfile.mkdtemp(prefix="sluice-realip-opt-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "p.lua"), "w") as f:
            f.write('endpoint "GET /x" { body = "{}" }\n')
        return subprocess.run([lib.BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "off"] +
                              list(args) + [d], capture_output=True, text=True, env=e, timeout=20)

    def test_bad_trusted_proxies_exit_2_naming_the_item(self):
        r = self.run_serve(["--trusted-proxies", "10.0.0.0/8,10.1.2.3/16"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--trusted-proxies: '10.1.2.3/16'", r.stderr)
        r = self.run_serve([], env={"SLUICE_TRUSTED_PROXIES": "::1,nope/8"})
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("'nope/8'", r.stderr)
        self.assertIn("SLUICE_TRUSTED_PROXIES", r.stderr)
        for bad in ("0", "129", "x"):
            r = self.run_serve(["--ipv6-prefix", bad])
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("--ipv6-prefix", r.stderr)

    def test_explain_keys_an_ipv6_caller_by_its_slash_64(self):
        d = tempfile.mkdtemp(prefix="sluice-realip-explain-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "p.lua"), "w") as f:
            f.write('endpoint "GET /x" { body = "{}", limit = { limit = 5, window = "1m", '
                    'key = "a:{ip}" } }\n')
        keys = []
        for ip in ("2001:db8:1:2::99", "2001:db8:1:2:ffff::1", "192.0.2.8"):
            r = subprocess.run([lib.BIN, "explain", d, "GET /x", "--ip", ip], capture_output=True,
                               text=True, timeout=20)
            self.assertEqual(r.returncode, 0, r.stderr)
            keys.append(json.loads(r.stdout)["limits"][0]["key"])
        self.assertEqual(keys, ["a:2001%3Adb8%3A1%3A2%3A%3A/64"] * 2 + ["a:192.0.2.8"])


if __name__ == "__main__":
    lib.main()
