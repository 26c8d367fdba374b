#!/usr/bin/env python3
"""End-to-end: https:// upstreams (RFC 9110 section 4.3.3: the https scheme is TLS with the
origin's identity verified, RFC 6125), with a test CA made by /usr/bin/openssl in a temp dir
and origin.py speaking HTTPS on 127.0.0.1."""

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import lib
import test_streaming as st
from lib import SluiceTestCase
from origin import Origin

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def openssl(*args, cwd):
    subprocess.run([OPENSSL] + list(args), cwd=cwd, check=True, capture_output=True, timeout=30)


class Pki:
    """A CA, and certificates it (or nobody) issued, in a temp dir."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-tls-")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sluice test CA",
                cwd=self.dir)

    def path(self, name):
        return os.path.join(self.dir, name)

    def issue(self, name, san, usage="serverAuth", self_signed=False):
        """NAME.pem and NAME.key for the subjectAltName san ("DNS:localhost,IP:127.0.0.1")."""
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                    "extendedKeyUsage=%s\nsubjectAltName=%s\n" % (usage, san))
        if self_signed:
            openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
                    "-subj", "/CN=" + name, "-addext", "subjectAltName=" + san, cwd=self.dir)
        else:
            openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name,
                    cwd=self.dir)
            openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "2", "-extfile", name + ".ext",
                    "-out", name + ".pem", cwd=self.dir)
        return {"cert": self.path(name + ".pem"), "key": self.path(name + ".key")}

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def policy_dir(pki, text, files=("ca.pem",)):
    d = tempfile.mkdtemp(prefix="sluice-tls-policy-")
    for f in files:
        shutil.copy(pki.path(f), os.path.join(d, os.path.basename(f)))
    with open(os.path.join(d, "10-main.lua"), "w") as f:
        f.write(text)
    return d


class HttpsUpstream(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()
        good = cls.pki.issue("good", "DNS:localhost,IP:127.0.0.1")
        selfsigned = cls.pki.issue("selfsigned", "DNS:localhost,IP:127.0.0.1", self_signed=True)
        other = cls.pki.issue("other", "DNS:other.example")
        client = cls.pki.issue("client", "DNS:sluice.client", usage="clientAuth")
        cls.origin = Origin(tls=good)
        cls.selfsigned = Origin(tls=selfsigned)
        cls.other = Origin(tls=other)
        cls.mtls = Origin(tls=dict(good, client_ca=cls.pki.path("ca.pem"),
                                   client_cert=client["cert"], client_key=client["key"]))
        ports = (cls.origin.port, cls.selfsigned.port, cls.other.port, cls.mtls.port)
        cls.dir = policy_dir(cls.pki, """
upstream "app"    { url = "https://127.0.0.1:%d", ca_file = "ca.pem" }
upstream "named"  { url = "https://localhost:%d/n", ca_file = "ca.pem" }
upstream "system" { url = "https://127.0.0.1:%d" }
upstream "wrong"  { url = "https://127.0.0.1:%d", ca_file = "ca.pem" }
upstream "wrongname" { url = "https://localhost:%d", ca_file = "ca.pem" }
upstream "mtls"   { url = "https://127.0.0.1:%d", ca_file = "ca.pem",
                    cert_file = "client.pem", key_file = "client.key" }
upstream "nocert" { url = "https://127.0.0.1:%d", ca_file = "ca.pem" }
endpoint "GET /app/*"       { upstream = "app" }
endpoint "GET /named/*"     { upstream = "named" }
endpoint "GET /system/*"    { upstream = "system" }
endpoint "GET /wrong/*"     { upstream = "wrong" }
endpoint "GET /wrongname/*" { upstream = "wrongname" }
endpoint "GET /mtls/*"      { upstream = "mtls" }
endpoint "GET /nocert/*"    { upstream = "nocert" }
""" % (ports[0], ports[0], ports[1], ports[2], ports[2], ports[3], ports[3]),
            files=("ca.pem", "client.pem", "client.key"))
        cls.s = cls.start(cls.dir, args=["--workers", "1"])

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            for o in (cls.origin, cls.selfsigned, cls.other, cls.mtls):
                o.kill()
            cls.pki.close()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def log_line(self, needle, timeout=5):
        end = time.monotonic() + timeout
        while True:
            for line in self.s.read_log().splitlines():
                if needle in line:
                    return line
            if time.monotonic() > end:
                self.fail("no log line with %r in:\n%s" % (needle, self.s.read_log()[-3000:]))
            time.sleep(0.05)

    def test_ca_file_verifies_the_chain_and_kept_connections_skip_the_handshake(self):
        before = self.origin.conns()["proxied"]
        st, h, b = self.s.get("/app/one")
        self.assertEqual(st, 200, b)
        st, h, b = self.s.get("/app/two")
        self.assertEqual(st, 200, b)
        # Both requests went over one TLS connection: one handshake, not one per request.
        self.assertEqual(self.origin.conns()["proxied"] - before, 1)

    def test_a_new_connection_resumes_the_session(self):
        # The origin closes after each of these answers: each request after the first needs a
        # new connection (the first may use one kept from before).
        st, _, b = self.s.get("/app/close?h=Connection:close")
        self.assertEqual(st, 200, b)
        before = self.origin.conns()
        for i in range(3):
            st, _, b = self.s.get("/app/close%d?h=Connection:close" % i)
            self.assertEqual(st, 200, b)
        after = self.origin.conns()
        self.assertEqual(after["proxied"] - before["proxied"], 3)
        self.assertEqual(after["resumed"] - before["resumed"], 3, after)

    def test_sni_names_a_host_never_an_address(self):
        # RFC 6066 section 3: HostName is a DNS name; literal addresses are not sent.
        st, _, b = self.s.get("/app/sni")
        self.assertEqual(st, 200, b)
        st, _, b = self.s.get("/named/sni")
        self.assertEqual(st, 200, b)
        self.assertEqual(self.origin.log("/n/named/sni")[0]["path"], "/n/named/sni")
        # Every connection so far: to 127.0.0.1 with no SNI, to localhost with it.
        self.assertEqual(set(self.origin.conns()["sni"]), {None, "localhost"})

    def test_a_self_signed_certificate_without_ca_file_is_502_and_the_log_says_why(self):
        st, h, b = self.s.get("/system/x")
        self.assertEqual(st, 502, b)
        self.assertIn("application/problem+json", h.get("content-type", ""))
        self.assertNotIn(b"127.0.0.1", b)  # the client is told no address
        line = self.log_line("GET /system/")
        self.assertRegex(line, r"self[- ]signed certificate")
        self.assertEqual(self.selfsigned.count("/system/x"), 0)

    def test_a_certificate_for_another_address_is_502(self):
        # RFC 6125 / RFC 9110 4.3.4: the certificate must name the address the URL gives.
        st, _, b = self.s.get("/wrong/x")
        self.assertEqual(st, 502, b)
        self.log_line("IP address mismatch")
        self.assertEqual(self.other.count("/wrong/x"), 0)

    def test_a_certificate_for_another_host_name_is_502(self):
        st, _, b = self.s.get("/wrongname/x")
        self.assertEqual(st, 502, b)
        self.log_line("hostname mismatch")
        self.assertEqual(self.other.count("/wrongname/x"), 0)

    def test_mutual_tls_passes_with_cert_file_and_fails_without(self):
        st, _, b = self.s.get("/mtls/x")
        self.assertEqual(st, 200, b)
        self.assertEqual(self.mtls.count("/mtls/x"), 1)
        st, _, b = self.s.get("/nocert/x")
        self.assertEqual(st, 502, b)
        self.assertEqual(self.mtls.count("/nocert/x"), 0)
        # TLS 1.3: the origin refuses the missing certificate after the handshake, by an
        # alert, which the log names.
        self.assertIn("certificate required", self.log_line("GET /nocert/"))

    def test_a_large_answer_streams_through_tls(self):
        # 3 MB, chunked: the streaming path (no store) reads TLS records as it reads a socket.
        st, _, b = self.s.get("/app/big?pad=3000000&chunked=1")
        self.assertEqual(st, 200)
        self.assertGreater(len(b), 3000000)
        self.assertTrue(b.endswith(b"}"), b[-50:])


class Reload(SluiceTestCase):
    """One TLS context per upstream per generation: a bad ca_file refuses the reload and the
    old one serves on; a good reload's context replaces the old one's kept connections."""

    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()
        cls.origin = Origin(tls=cls.pki.issue("good", "IP:127.0.0.1"))
        cls.dir = policy_dir(cls.pki, """
upstream "app" { url = "https://127.0.0.1:%d", ca_file = "ca.pem" }
endpoint "GET /app/*" { upstream = "app" }
""" % cls.origin.port)
        cls.s = cls.start(cls.dir, args=["--workers", "1"])

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.origin.kill()
            cls.pki.close()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def test_a_bad_ca_file_refuses_the_reload_and_a_good_one_replaces_the_connections(self):
        ca = os.path.join(self.dir, "ca.pem")
        with open(ca) as f:
            good = f.read()
        self.assertEqual(self.s.get("/app/a")[0], 200)
        conns = self.origin.conns()["proxied"]
        with open(ca, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        st, h, b = self.s.admin("POST", "/reload")
        self.assertEqual(st, 422, b)
        self.assertIn('10-main.lua:2: upstream "app": ca_file "ca.pem"', json.loads(b)["errors"])
        self.assertEqual(self.s.get("/app/b")[0], 200)  # the old context serves on
        self.assertEqual(self.origin.conns()["proxied"], conns)  # on its kept connection
        with open(ca, "w") as f:
            f.write(good)
        st, _, b = self.s.admin("POST", "/reload")
        self.assertEqual(st, 200, b)
        self.assertEqual(self.s.get("/app/c")[0], 200)
        self.assertEqual(self.s.get("/app/d")[0], 200)
        # The new generation connected anew (once), its predecessor's connection is gone.
        self.assertEqual(self.origin.conns()["proxied"], conns + 1)


class TlsStreamsAndTunnels(SluiceTestCase):
    """The streamed paths over TLS: a pushed upload, a streamed answer read at the client's
    pace, and a WebSocket tunnel (a wss upstream), with test_streaming's raw upstream
    wrapped in TLS."""

    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()
        good = cls.pki.issue("good", "IP:127.0.0.1")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(good["cert"], good["key"])
        cls.up = st.Upstream()
        accept = cls.up.server.get_request
        cls.up.server.get_request = lambda: (lambda sock, addr: (
            ctx.wrap_socket(sock, server_side=True), addr))(*accept())
        cls.dir = policy_dir(cls.pki, """
upstream "up" { url = "https://127.0.0.1:%d", ca_file = "ca.pem", timeout = "10s" }
endpoint "GET /big" { upstream = "up" }
endpoint "POST /upload" { upstream = "up" }
endpoint "GET /ws" { upstream = "up" }
""" % cls.up.port)
        cls.s = cls.start(cls.dir, args=["--max-body-bytes", str(64 << 20)])

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.up.stop()
            cls.pki.close()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def test_a_chunked_upload_of_8_mib_reaches_a_tls_upstream_intact(self):
        body = st.pattern(8 << 20, 3)
        s = socket.create_connection(("127.0.0.1", self.s.port), timeout=30)
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for off in range(0, len(body), 65536):
            piece = body[off:off + 65536]
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        s.sendall(b"0\r\n\r\n")
        buf = b""
        while not buf.rstrip().endswith(b"}"):
            d = s.recv(65536)
            if not d:
                break
            buf += d
        s.close()
        head, _, out = buf.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(json.loads(out), {"sha256": hashlib.sha256(body).hexdigest(),
                                           "len": len(body)})

    def test_a_16_mib_answer_read_slowly_streams_intact(self):
        status, _, sha, n = read_sha(self.s.port, "/big?n=%d&seed=5" % (16 << 20), slow=True)
        self.assertEqual((status, n), (200, 16 << 20))
        self.assertEqual(sha, st.pattern_sha(16 << 20, 5))

    def test_rfc6455_echo_through_a_wss_upstream(self):
        status, head, s, rd = st.ws_connect(self.s.port)
        self.assertEqual(status, 101, head)
        for j in range(4):
            msg = b"tls %d " % j + b"y" * (j * 50000)
            s.sendall(st.ws_frame(1 if j % 2 == 0 else 2, msg, mask=os.urandom(4)))
            self.assertEqual(rd.frame(), (1 if j % 2 == 0 else 2, msg))
        s.sendall(st.ws_frame(8, b"\x03\xe8", mask=os.urandom(4)))
        self.assertEqual(rd.frame(), (8, b"\x03\xe8"))
        s.settimeout(5)
        self.assertEqual(s.recv(10), b"", "sluice closes the tunnel after the upstream")
        s.close()


def read_sha(port, path, slow=False):
    """GETs path; returns (status, head, sha256 hex of the body, its length). slow: reads 64 KiB
    every 2 ms, so the client's window fills and the upstream is paused and resumed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    h, n = hashlib.sha256(rest), len(rest)
    while True:
        if slow:
            time.sleep(0.002)
        d = s.recv(65536)
        if not d:
            break
        h.update(d)
        n += len(d)
    s.close()
    return int(head.split(b" ", 2)[1]), head, h.hexdigest(), n


class CheckRefusesBadFiles(unittest.TestCase):
    def setUp(self):
        self.pki = Pki()
        self.pki.issue("client", "DNS:sluice.client", usage="clientAuth")

    def tearDown(self):
        self.pki.close()

    def check(self, text, files=()):
        d = policy_dir(self.pki, text, files)
        try:
            return subprocess.run([lib.BIN, "check", d], capture_output=True, text=True,
                                  timeout=20)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_a_missing_ca_file_is_a_file_line_error(self):
        r = self.check('\n\nupstream "a" { url = "https://127.0.0.1:1", ca_file = "nope.pem" }\n'
                       'endpoint "GET /a" { upstream = "a" }\n')
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout + r.stderr, r'10-main\.lua:3: upstream "a": ca_file "nope\.pem"')

    def test_a_ca_file_without_certificates_and_a_key_of_another_certificate_are_refused(self):
        with open(self.pki.path("junk.pem"), "w") as f:
            f.write("not a certificate\n")
        self.pki.issue("stranger", "DNS:x", usage="clientAuth")
        r = self.check('upstream "a" { url = "https://127.0.0.1:1", ca_file = "junk.pem",\n'
                       '  cert_file = "client.pem", key_file = "stranger.key" }\n'
                       'endpoint "GET /a" { upstream = "a" }\n',
                       files=("junk.pem", "client.pem", "stranger.key"))
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, out)
        self.assertIn('10-main.lua:1: upstream "a": ca_file "junk.pem": no PEM certificate', out)
        self.assertIn('10-main.lua:1: upstream "a": key_file "stranger.key" is not the key of', out)

    def test_tls_files_on_an_http_upstream_are_refused(self):
        r = self.check('upstream "a" { url = "http://127.0.0.1:1", ca_file = "ca.pem" }\n'
                       'endpoint "GET /a" { upstream = "a" }\n')
        self.assertEqual(r.returncode, 1)
        self.assertIn('10-main.lua:1: upstream "a": ca_file: only goes with an https:// url',
                      r.stdout + r.stderr)


if __name__ == "__main__":
    lib.main()
