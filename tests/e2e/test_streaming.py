"""End to end: answers, request bodies and WebSocket tunnels streamed through sluice.

Each class starts an upstream of its own (Upstream, below: a raw-socket HTTP/1.1 server in this
process, so that its clock is the test's) and a sluice in front of it. Memory is read from
/proc/PID/status (VmRSS) while bytes flow; times with time.monotonic() on both sides. The bounds
are functional, not benchmarks: a sanitizer build (detected from the binary) gets wider ones,
said where they apply.
"""

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time

import lib
from lib import SluiceTestCase

SAN = lib.SANITIZED
SLACK = 4.0 if SAN else 1.0
MIB = 1 << 20
# RSS growth allowed while 50 MiB flow. ASan keeps freed blocks in its quarantine (256 MiB by
# default) before it reuses them, so every buffer a stream frees would show in RSS: under ASan
# these servers run with an 8 MiB quarantine (use-after-free is still caught within it), and
# the bound is 16 MiB instead of 4 MiB (the quarantine, and ASan's own per-thread caches).
RSS_BOUND_KIB = (16 * 1024) if SAN else (4 * 1024)
SAN_ENV = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=8"} if SAN else None
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def note(msg):
    sys.stderr.write("    [measured] %s\n" % msg)
    sys.stderr.flush()


def pieces(n, seed=0):
    """n bytes that are not all alike, in pieces of 64 KiB (made as they are needed)."""
    for i, off in enumerate(range(0, n, 65536)):
        block = hashlib.sha256(b"%d:%d" % (seed, i)).digest() * 2048
        yield block[:min(65536, n - off)]


def pattern(n, seed=0):
    """The bytes of pieces(n, seed), whole: a body the test can check byte for byte."""
    return b"".join(pieces(n, seed))


def pattern_sha(n, seed=0):
    h = hashlib.sha256()
    for piece in pieces(n, seed):
        h.update(piece)
    return h.hexdigest()


# ---- the upstream ------------------------------------------------------------------------------

class Upstream:
    """An HTTP/1.1 upstream on a free loopback port. What each path does is in handle(); what
    it saw and when is kept in self.log (path -> list of dicts) for the tests to read."""

    def __init__(self):
        self.log = {}
        self.lock = threading.Lock()
        up = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    up.serve(self.request)
                except (OSError, ValueError):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128  # 16 connects at once must not wait for a SYN retry

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def record(self, path, **what):
        with self.lock:
            self.log.setdefault(path, []).append(what)
        return what

    def seen(self, path):
        with self.lock:
            return list(self.log.get(path, []))

    # -- the HTTP side --

    @staticmethod
    def read_head(sock, buf):
        while b"\r\n\r\n" not in buf:
            d = sock.recv(65536)
            if not d:
                return None, buf
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return (method, target, headers), rest

    @staticmethod
    def body_chunks(sock, headers, rest):
        """Yields the request body in pieces as they arrive (Content-Length or chunked)."""
        if "content-length" in headers:
            left = int(headers["content-length"])
            if rest:
                yield rest[:left]
                left -= len(rest[:left])
            while left > 0:
                d = sock.recv(min(left, 262144))
                if not d:
                    raise ValueError("body cut")
                left -= len(d)
                yield d
            return
        if headers.get("transfer-encoding", "").lower() != "chunked":
            return
        buf = rest

        def need(n):
            nonlocal buf
            while len(buf) < n:
                d = sock.recv(262144)
                if not d:
                    raise ValueError("body cut")
                buf += d

        while True:
            while b"\r\n" not in buf:
                need(len(buf) + 1)
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                    need(len(buf) + 1)
                return
            while size > 0:
                if not buf:
                    need(1)
                piece, buf = buf[:size], buf[size:]
                size -= len(piece)
                yield piece
            need(2)
            buf = buf[2:]

    def serve(self, sock):
        buf = b""
        while True:
            req, buf = self.read_head(sock, buf)
            if req is None:
                return
            method, target, headers = req
            path, _, query = target.partition("?")
            q = dict(p.partition("=")[::2] for p in query.split("&") if p)
            if not self.answer(sock, method, path, q, headers, buf):
                return
            buf = b""

    def answer(self, sock, method, path, q, headers, rest):
        """Answers one request; returns True to read another on the connection."""
        n = int(q.get("n", "0"))
        cc = q.get("cc", "no-store")
        if path.startswith("/big"):
            # n bytes, with a Content-Length or chunked, written as fast as the socket takes them.
            chunked = q.get("chunked") == "1"
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" \
                   "Cache-Control: %s\r\n" % cc
            head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "Content-Length: %d\r\n\r\n" % n
            entry = self.record(path, t_head=time.monotonic(), sent=0, done=False)
            sock.sendall(head.encode())
            for piece in pieces(n, int(q.get("seed", "0"))):
                if chunked:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    sock.sendall(piece)
                entry["sent"] += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
            entry["done"] = True
            return True
        if path == "/die":
            # A head promising n bytes, half of them, then the connection is cut.
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            sock.sendall(pattern(n // 2))
            time.sleep(0.05)
            sock.shutdown(socket.SHUT_RDWR)
            return False
        if path == "/sse":
            count, gap = int(q.get("events", "5")), float(q.get("gap_ms", "200")) / 1000
            entry = self.record(path, sent=[])
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(count):
                time.sleep(gap)
                ev = b"id: %d\ndata: event %d\n\n" % (i, i)
                entry["sent"].append(time.monotonic())
                sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
            sock.sendall(b"0\r\n\r\n")
            return True
        if path == "/upload":
            # Hashes the body as it arrives; reads slowly when asked to, so that sluice must
            # hold the client back instead of holding the body.
            h, total, t0 = hashlib.sha256(), 0, time.monotonic()
            delay = float(q.get("read_delay_ms", "0")) / 1000
            for piece in self.body_chunks(sock, headers, rest):
                h.update(piece)
                total += len(piece)
                if delay:
                    time.sleep(delay)
            self.record(path, sha=h.hexdigest(), len=total, te=headers.get("transfer-encoding"),
                        cl=headers.get("content-length"), took=time.monotonic() - t0)
            out = json.dumps({"sha256": h.hexdigest(), "len": total}).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
            return True
        if path == "/ws":
            return self.websocket(sock, headers)
        sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True

    def websocket(self, sock, headers):
        """RFC 6455 4.2.2: the server's handshake, then every data frame echoed (unmasked, as a
        server sends them, 5.1) until a close frame, which is answered."""
        key = headers.get("sec-websocket-key", "").encode()
        if headers.get("upgrade", "").lower() != "websocket" or not key:
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return True
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept)
        self.record("/ws", opened=time.monotonic())
        reader = FrameReader(sock)
        while True:
            frame = reader.frame()
            if frame is None:
                return False
            opcode, payload = frame
            if opcode == 8:
                sock.sendall(ws_frame(8, payload[:2]))
                return False
            if opcode in (1, 2):
                sock.sendall(ws_frame(opcode, payload))
                self.record("/ws-echo", n=len(payload))


# ---- a minimal RFC 6455 client ------------------------------------------------------------------

def ws_frame(opcode, payload, mask=None):
    """One final frame (RFC 6455 5.2); a client's is masked (5.3)."""
    b0 = 0x80 | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return head + mask + payload
    return head + payload


class FrameReader:
    def __init__(self, sock, buf=b""):
        self.sock, self.buf = sock, buf

    def need(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                return False
            self.buf += d
        return True

    def take(self, n):
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        """(opcode, payload) of the next frame, unmasked, or None at EOF."""
        if not self.need(2):
            return None
        b0, b1 = self.take(2)
        n = b1 & 0x7f
        if n == 126:
            if not self.need(2):
                return None
            n = struct.unpack("!H", self.take(2))[0]
        elif n == 127:
            if not self.need(8):
                return None
            n = struct.unpack("!Q", self.take(8))[0]
        mask = None
        if b1 & 0x80:
            if not self.need(4):
                return None
            mask = self.take(4)
        if not self.need(n):
            return None
        payload = self.take(n)
        if mask:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return b0 & 0x0f, payload


def ws_connect(port, path="/ws", headers=b"", timeout=10):
    """Opens a WebSocket through sluice: returns (status, head bytes, socket, reader). The
    socket is open only when the status is 101."""
    key = base64.b64encode(os.urandom(16))
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
              % (path.encode(), key, headers))
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    if status == 101:
        want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        fields = {l.split(b":", 1)[0].strip().lower(): l.split(b":", 1)[1].strip()
                  for l in head.split(b"\r\n")[1:]}
        assert fields.get(b"sec-websocket-accept") == want, head
        return status, head, s, FrameReader(s, rest)
    # Not upgraded: read the rest of the answer's body (Content-Length) and close.
    cl = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    while cl and len(rest) < cl[0]:
        d = s.recv(65536)
        if not d:
            break
        rest += d
    s.close()
    return status, head + b"\r\n\r\n" + rest, None, None


# ---- helpers ----------------------------------------------------------------------------------

class RssSampler:
    """Samples a process's VmRSS every 5 ms while running; peak is the highest seen."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop_ = pid, 0, threading.Event()
        self.base = lib.rss_kib(pid)
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop_.is_set():
            self.peak = max(self.peak, lib.rss_kib(self.pid))
            time.sleep(0.005)

    def stop(self):
        self.stop_.set()
        self.t.join()
        self.peak = max(self.peak, lib.rss_kib(self.pid))
        return self.peak - self.base


def read_answer(port, path, headers=b"", rate=None, limit=None, timeout=60):
    """GETs path on a raw socket: returns (status, head fields, body, seconds to the first body
    byte, seconds in all). rate: read at most this many bytes a second; limit: stop (closing)
    after this many body bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if rate is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    t0 = time.monotonic()
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n" % (path.encode(), headers))
    buf, first, body_start = bytearray(), None, None
    try:
        while True:
            want = 1 << 20 if rate is None else max(1, int(rate / 20))
            d = s.recv(want)
            if not d:
                break
            buf += d
            if body_start is None and b"\r\n\r\n" in buf:
                body_start = buf.index(b"\r\n\r\n") + 4
            if body_start is not None and first is None and len(buf) > body_start:
                first = time.monotonic() - t0
            if limit is not None and body_start is not None and len(buf) - body_start >= limit:
                break
            if rate is not None:
                time.sleep(0.05)
    finally:
        s.close()
    head = bytes(buf[:body_start - 4]) if body_start else bytes(buf)
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        fields[k.strip().lower().decode()] = v.strip().decode()
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    body = bytes(buf[body_start:]) if body_start else b""
    if fields.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return status, fields, body, first, time.monotonic() - t0


def lib_wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def dechunk(raw):
    out, i, mv = [], 0, memoryview(raw)
    while True:
        j = raw.index(b"\r\n", i)
        size = int(raw[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(mv[j + 2:j + 2 + size])
        i = j + 2 + size + 2


POLICY = r'''
identity { user = header "X-User-Id" }
upstream "up" { url = "@UP@", timeout = "10s" }
endpoint "GET /big" { upstream = "up" }
endpoint "GET /big-cached" {
  upstream = "up",
  cache = { ttl = "1m", key = "big:{query.n}:{query.chunked}:{query.cc}:{query.seed}", shared = true },
}
endpoint "GET /big-small-max" {
  upstream = "up",
  cache = { ttl = "1m", key = "bsm:{query.n}:{query.chunked}:{query.cc}", shared = true, max_size = "256k" },
}
endpoint "GET /die" { upstream = "up" }
endpoint "GET /sse" { upstream = "up" }
endpoint "POST /upload" { upstream = "up" }
endpoint "GET /ws" { upstream = "up", limit = { limit = 3, window = "1m", key = "ws:{ip}" } }
'''


class StreamCase(SluiceTestCase):
    ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.addClassCleanup(cls.up.stop)
        d = tempfile.mkdtemp(prefix="sluice-stream-")
        cls.addClassCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "stream.lua"), "w") as f:
            f.write(POLICY.replace("@UP@", cls.up.url))
        cls.s = cls.start(d, args=list(cls.ARGS), env=SAN_ENV)
        cls.port = cls.s.port

    def metrics(self):
        status, _, body = self.s.admin("GET", "/metrics")
        self.assertEqual(status, 200)
        return body.decode()

    def midstream(self):
        """Upstream answers cut after their head, as /metrics counts them."""
        for line in self.metrics().splitlines():
            if line.startswith('sluice_origin_errors_total{source="upstream",reason="midstream"}'):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0


# ---- answers ----------------------------------------------------------------------------------

class StreamedAnswers(StreamCase):
    """Answers that are not stored go to the client as they arrive, within a window per
    connection (RFC 9112 7.1 for the chunked ones)."""

    def test_50_mib_answer_first_byte_fast_and_rss_flat(self):
        for chunked in ("0", "1"):
            with self.subTest(chunked=chunked):
                n = 50 * MIB
                rss = RssSampler(self.s.proc.pid)
                status, fields, body, first, took = read_answer(
                    self.port, "/big?n=%d&chunked=%s" % (n, chunked))
                grew = rss.stop()
                note("50 MiB (chunked=%s): first byte %.1f ms, all in %.2f s, RSS +%d KiB"
                     % (chunked, first * 1000, took, grew))
                self.assertEqual(status, 200)
                self.assertEqual(len(body), n)
                self.assertEqual(hashlib.sha256(body).hexdigest(), pattern_sha(n))
                if chunked == "1":
                    self.assertEqual(fields.get("transfer-encoding"), "chunked")
                else:
                    self.assertEqual(fields.get("content-length"), str(n))
                self.assertLess(first, 0.050 * SLACK, "first byte later than 50 ms")
                self.assertLess(grew, RSS_BOUND_KIB, "RSS grew %d KiB" % grew)

    def test_slow_reader_holds_the_upstream_back_and_memory_flat(self):
        # A client reading 64 KiB/s of a 50 MiB answer: sluice stops reading the upstream when
        # the connection's window is full, so neither its memory nor what the upstream got to
        # send grows with the answer.
        rss = RssSampler(self.s.proc.pid)
        status, _, body, _, took = read_answer(self.port, "/big?n=%d&seed=7" % (50 * MIB),
                                               rate=65536, limit=192 * 1024, timeout=30)
        grew = rss.stop()
        sent = self.up.seen("/big")[-1]["sent"]
        note("slow reader: %d KiB read in %.1f s; upstream sent %.1f MiB; RSS +%d KiB"
             % (len(body) // 1024, took, sent / MIB, grew))
        self.assertEqual(status, 200)
        self.assertLess(grew, RSS_BOUND_KIB)
        # What the kernel's socket buffers hold on both sides, and no more: far from 50 MiB.
        self.assertLess(sent, 24 * MIB, "the upstream was read ahead of the client")

    def test_sixteen_slow_readers_of_an_8_mib_answer_hold_their_windows_not_the_answers(self):
        # Before answers were streamed, each in-flight pass-through held the body until its
        # client had read it: 16 slow clients of 8 MiB cost about 120 MiB. Now each holds
        # its window (256 KiB, and the piece that crossed it) and one read (256 KiB): under
        # 1 MiB each.
        rss = RssSampler(self.s.proc.pid)
        threads, results = [], []
        for i in range(16):
            t = threading.Thread(target=lambda i=i: results.append(read_answer(
                self.port, "/big?n=%d&seed=%d" % (8 * MIB, 20 + i), rate=65536,
                limit=128 * 1024, timeout=30)))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        grew = rss.stop()
        note("16 slow readers of 8 MiB: RSS +%d KiB" % grew)
        self.assertEqual([r[0] for r in results], [200] * 16)
        self.assertLess(grew, (32 if SAN else 16) * 1024)

    def test_rfc9112_8_upstream_failing_midway_resets_the_client_and_is_counted(self):
        # RFC 9112 8: the client must be able to tell an incomplete answer from a whole one.
        before = self.midstream()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/die?n=%d" % (2 * MIB))
        r = conn.getresponse()
        self.assertEqual(r.status, 200, "the head went out before the upstream failed")
        with self.assertRaises((http.client.IncompleteRead, ConnectionResetError)):
            r.read()
        conn.close()
        self.assertEqual(self.midstream(), before + 1)

    def test_event_stream_events_arrive_one_by_one(self):
        # Server-sent events (HTML Living Standard 9.2; text/event-stream): each event leaves
        # sluice as soon as the upstream wrote it, not batched with the next one 200 ms later.
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.sendall(b"GET /sse?events=5&gap_ms=200 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        buf, arrived = b"", []
        while len(arrived) < 5:
            d = s.recv(65536)
            self.assertTrue(d, "the stream ended early: %r" % buf)
            now = time.monotonic()
            buf += d
            while buf.count(b"\n\n") > len(arrived):
                arrived.append(now)
        s.close()
        sent = self.up.seen("/sse")[-1]["sent"]
        lags = [(a - t) * 1000 for a, t in zip(arrived, sent)]
        note("event lags (ms): %s" % ", ".join("%.2f" % x for x in lags))
        self.assertIn(b"text/event-stream", buf)
        self.assertEqual(len(lags), 5)
        # 10 ms, and a margin for a machine shared with other work: still far below the 200 ms
        # an event would wait if it went out with the next one.
        for lag in lags:
            self.assertLess(lag, 10 + (100 if SAN else 50), "an event waited %.1f ms in sluice" % lag)

    def test_stored_answer_streams_to_its_first_client_then_hits(self):
        n = 600 * 1024  # over the 64 KiB read whole, within the 1 MiB cache.max_size default
        for chunked, seed in (("1", 3), ("0", 4)):
            with self.subTest(chunked=chunked):
                path = "/big-cached?n=%d&chunked=%s&cc=max-age%%3D60&seed=%d" % (n, chunked, seed)
                before = len(self.up.seen("/big-cached"))
                st, f1, b1, first, _ = read_answer(self.port, path)
                # The next request right after the last byte: the store has it already.
                st2, f2, b2, _, _ = read_answer(self.port, path)
                self.assertEqual((st, f1.get("x-cache")), (200, "MISS"))
                self.assertEqual((st2, f2.get("x-cache")), (200, "HIT"))
                self.assertEqual(b1, pattern(n, seed))
                self.assertEqual(b2, b1)
                self.assertEqual(len(self.up.seen("/big-cached")) - before, 1)

    def test_rfc9112_9_3_streamed_answers_one_after_another_on_a_kept_connection(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for i, chunked in enumerate(("1", "0", "1")):
            conn.request("GET", "/big?n=%d&chunked=%s&seed=%d" % (300000, chunked, i))
            r = conn.getresponse()
            self.assertEqual((r.status, r.read()), (200, pattern(300000, i)))
        conn.close()

    def test_client_leaving_midway_cancels_the_upstream_read(self):
        rss = RssSampler(self.s.proc.pid)
        before = len(self.up.seen("/big"))
        status, _, body, _, _ = read_answer(self.port, "/big?n=%d&seed=9" % (50 * MIB),
                                            limit=256 * 1024)
        self.assertEqual(status, 200)
        self.assertTrue(lib_wait(lambda: len(self.up.seen("/big")) > before))
        # The upstream's writes fail once sluice has closed its side: it stops well short.
        time.sleep(0.5)
        entry = self.up.seen("/big")[-1]
        self.assertFalse(entry["done"])
        self.assertLess(entry["sent"], 40 * MIB)
        self.assertLess(rss.stop(), RSS_BOUND_KIB)
        # And the next answer is whole.
        status, _, body, _, _ = read_answer(self.port, "/big?n=100000")
        self.assertEqual((status, body), (200, pattern(100000)))

    def test_answer_over_max_size_is_streamed_and_never_stored(self):
        n = 512 * 1024  # the endpoint's max_size is 256k
        for chunked in ("0", "1"):
            path = "/big-small-max?n=%d&chunked=%s&cc=max-age%%3D60" % (n, chunked)
            before = len(self.up.seen("/big-small-max"))
            for _ in range(2):
                st, f, body, _, _ = read_answer(self.port, path)
                self.assertEqual((st, f.get("x-cache"), len(body)), (200, "MISS", n))
            self.assertEqual(len(self.up.seen("/big-small-max")) - before, 2, "stored after all")

    def test_rfc9110_9_3_2_head_of_a_streamed_answer(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("HEAD", "/big?n=%d" % (5 * MIB))
        r = conn.getresponse()
        self.assertEqual((r.status, r.read()), (200, b""))
        conn.close()


# ---- request bodies -----------------------------------------------------------------------------

class StreamedUploads(StreamCase):
    """Request bodies go to the upstream as they arrive, held back by the upstream's reading."""

    ARGS = ("--max-body-bytes", str(64 * MIB))

    def upload(self, body, chunked, query=""):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        if chunked:
            s.sendall(b"POST /upload%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      % query.encode())
            for off in range(0, len(body), 65536):
                piece = body[off:off + 65536]
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            s.sendall(b"0\r\n\r\n")
        else:
            s.sendall(b"POST /upload%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                      % (query.encode(), len(body)))
            s.sendall(body)
        buf = b""
        while b"\r\n\r\n" not in buf or not buf.rstrip().endswith(b"}"):
            d = s.recv(65536)
            if not d:
                break
            buf += d
        s.close()
        head, _, out = buf.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), json.loads(out)

    def test_rfc9112_7_1_chunked_upload_of_50_mib_intact_with_flat_rss(self):
        body = pattern(50 * MIB, 11)
        time.sleep(0.2)
        rss = RssSampler(self.s.proc.pid)
        t0 = time.monotonic()
        status, out = self.upload(body, chunked=True)
        grew = rss.stop()
        note("chunked upload of 50 MiB in %.2f s, RSS +%d KiB" % (time.monotonic() - t0, grew))
        self.assertEqual(status, 200)
        self.assertEqual(out, {"sha256": hashlib.sha256(body).hexdigest(), "len": len(body)})
        self.assertEqual(self.up.seen("/upload")[-1]["te"], "chunked", "chunked in, chunked out")
        self.assertLess(grew, RSS_BOUND_KIB)

    def test_content_length_upload_keeps_its_length_and_waits_for_a_slow_upstream(self):
        # The upstream reads a 4 MiB body slowly (10 ms per read of at most 256 KiB): sluice
        # holds the client back instead of the body.
        body = pattern(4 * MIB, 12)
        rss = RssSampler(self.s.proc.pid)
        status, out = self.upload(body, chunked=False, query="?read_delay_ms=10")
        grew = rss.stop()
        seen = self.up.seen("/upload")[-1]
        note("Content-Length upload of 4 MiB to a slow reader: %.2f s, RSS +%d KiB"
             % (seen["took"], grew))
        self.assertEqual(status, 200)
        self.assertEqual(out["sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(seen["cl"], str(len(body)))
        self.assertLess(grew, RSS_BOUND_KIB)


    def test_rfc9110_10_1_1_expect_100_continue_then_the_body(self):
        body = pattern(2 * MIB, 14)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                  b"Expect: 100-continue\r\n\r\n" % len(body))
        got = s.recv(65536)
        self.assertTrue(got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), got)
        s.sendall(body)
        buf = got[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        while not buf.rstrip().endswith(b"}"):
            d = s.recv(65536)
            self.assertTrue(d)
            buf += d
        s.close()
        self.assertTrue(buf.startswith(b"HTTP/1.1 200 "), buf[:200])
        self.assertIn(hashlib.sha256(body).hexdigest().encode(), buf)

    def test_rfc9112_9_3_a_request_pipelined_after_a_chunked_upload_is_answered(self):
        # The bytes read past the last chunk belong to the next request.
        body = pattern(300000, 15)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        raw = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        for off in range(0, len(body), 100000):
            raw += b"%x\r\n%s\r\n" % (len(body[off:off + 100000]), body[off:off + 100000])
        raw += b"0\r\n\r\nGET /big?n=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        s.sendall(raw)
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        s.close()
        first, _, rest = buf.partition(b"\r\n\r\n")
        self.assertTrue(first.startswith(b"HTTP/1.1 200 "), buf[:300])
        self.assertIn(hashlib.sha256(body).hexdigest().encode(), rest)
        second = rest[rest.index(b"HTTP/1.1 "):]
        self.assertTrue(second.startswith(b"HTTP/1.1 200 "), second[:300])
        self.assertTrue(second.endswith(pattern(10)), second[-50:])

    def test_client_leaving_midway_through_its_upload_ends_the_request(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (10 * MIB))
        s.sendall(pattern(MIB))
        s.close()
        time.sleep(0.3)
        status, out = self.upload(pattern(1000), chunked=False)
        self.assertEqual((status, out["len"]), (200, 1000))


class UploadLimit(StreamCase):
    ARGS = ("--max-body-bytes", str(1 * MIB))

    def test_rfc9110_15_5_14_chunked_upload_over_the_body_limit_is_413(self):
        body = pattern(3 * MIB, 13)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for off in range(0, len(body), 65536):
                s.sendall(b"%x\r\n%s\r\n" % (65536, body[off:off + 65536]))
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # sluice answered and closed while the client was still sending
        buf = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
        except OSError:
            pass
        s.close()
        self.assertTrue(buf.startswith(b"HTTP/1.1 413 "), buf[:200])
        self.assertIn(b"application/problem+json", buf)

    def test_content_length_over_the_limit_is_413_before_anything_is_sent(self):
        before = len(self.up.seen("/upload"))
        status, _, body = self.s.request("POST", "/upload", body=b"x" * (MIB + 1))
        self.assertEqual(status, 413)
        self.assertEqual(len(self.up.seen("/upload")), before)


class StreamsInTheAccessLog(StreamCase):
    """A streamed answer and a tunnel each leave one access log line when they end, with the
    status of their head and the bytes passed on."""

    @classmethod
    def setUpClass(cls):
        cls.logdir = tempfile.mkdtemp(prefix="sluice-stream-log-")
        cls.addClassCleanup(shutil.rmtree, cls.logdir, True)
        cls.path = os.path.join(cls.logdir, "access.log")
        cls.ARGS = ("--access-log", cls.path)
        super().setUpClass()

    def lines(self, n, timeout=5.0):
        end = time.monotonic() + timeout
        out = []
        while time.monotonic() < end:
            with open(self.path, "rb") as f:
                out = [json.loads(l) for l in f.read().split(b"\n") if l]
            if len(out) >= n:
                break
            time.sleep(0.05)
        return out

    def test_a_streamed_answer_and_a_tunnel_are_logged_with_their_bytes(self):
        n = 3 * MIB + 5
        status, _, body, _, _ = read_answer(self.port, "/big?n=%d&chunked=1" % n)
        self.assertEqual((status, len(body)), (200, n))
        ws, _, s, rd = ws_connect(self.port)
        self.assertEqual(ws, 101)
        s.sendall(ws_frame(1, b"hello", mask=os.urandom(4)))
        self.assertEqual(rd.frame(), (1, b"hello"))
        s.sendall(ws_frame(8, b"\x03\xe8", mask=os.urandom(4)))
        self.assertEqual(rd.frame(), (8, b"\x03\xe8"))
        s.close()
        lines = self.lines(2)
        self.assertEqual(len(lines), 2, lines)
        big = next(l for l in lines if l.get("route") == "GET /big")
        tunnel = next(l for l in lines if l.get("route") == "GET /ws")
        self.assertEqual((big["status"], big["bytes"]), (200, n))
        self.assertEqual(tunnel["status"], 101)
        self.assertEqual(tunnel["bytes"], 7 + 4)  # the two frames the upstream sent


# ---- WebSocket --------------------------------------------------------------------------------

class WebSocketTunnel(StreamCase):
    """RFC 6455: the opening handshake passes the limits once, then frames flow both ways."""

    def test_rfc6455_echo_round_trip_and_a_limit_counted_once_per_connection(self):
        # The endpoint allows 3 upgrades a minute per address: 3 tunnels each carry 5
        # messages (15 in all, past the limit), and the 4th upgrade is refused.
        tunnels = []
        for i in range(3):
            status, head, s, rd = ws_connect(self.port)
            self.assertEqual(status, 101, head)
            self.assertIn(b"upgrade: websocket", head.lower())
            tunnels.append((s, rd))
        for i, (s, rd) in enumerate(tunnels):
            for j in range(5):
                msg = b"hello %d.%d " % (i, j) + b"x" * (j * 30000)
                t0 = time.monotonic()
                s.sendall(ws_frame(1 if j % 2 == 0 else 2, msg, mask=os.urandom(4)))
                opcode, payload = rd.frame()
                rtt = time.monotonic() - t0
                self.assertEqual((opcode, payload), (1 if j % 2 == 0 else 2, msg))
                if j == 0:
                    note("WebSocket round trip of %d bytes: %.2f ms" % (len(msg), rtt * 1000))
        status, head, _, _ = ws_connect(self.port)
        self.assertEqual(status, 429, head)
        self.assertIn(b"application/problem+json", head)
        # Closing handshake (RFC 6455 5.5.1), echoed by the upstream; then both sides close.
        for s, rd in tunnels:
            s.sendall(ws_frame(8, b"\x03\xe8", mask=os.urandom(4)))
            self.assertEqual(rd.frame(), (8, b"\x03\xe8"))
            s.settimeout(5)
            self.assertEqual(s.recv(10), b"", "sluice closes the tunnel after the upstream")
            s.close()

    def test_not_upgraded_errors_are_problem_json(self):
        status, head, _, _ = ws_connect(self.port, path="/nowhere")
        self.assertEqual(status, 404)
        self.assertIn(b"application/problem+json", head)


class WebSocketTimeouts(StreamCase):
    ARGS = ("--websocket-idle-timeout", "500ms", "--websocket-max-duration", "2s")

    def test_idle_tunnel_is_closed_after_the_idle_timeout(self):
        status, _, s, rd = ws_connect(self.port)
        self.assertEqual(status, 101)
        t0 = time.monotonic()
        s.settimeout(10)
        self.assertIsNone(rd.frame(), "the tunnel stays open")
        took = time.monotonic() - t0
        note("idle tunnel closed after %.2f s" % took)
        self.assertGreater(took, 0.4)
        self.assertLess(took, 0.5 + 1.0 * SLACK)
        s.close()

    def test_busy_tunnel_is_closed_after_the_total_timeout(self):
        status, _, s, rd = ws_connect(self.port)
        self.assertEqual(status, 101)
        t0 = time.monotonic()
        closed = None
        while time.monotonic() - t0 < 6:
            try:
                s.sendall(ws_frame(1, b"ping", mask=os.urandom(4)))
                if rd.frame() is None:
                    closed = time.monotonic() - t0
                    break
            except OSError:
                closed = time.monotonic() - t0
                break
            time.sleep(0.1)
        s.close()
        note("busy tunnel closed after %.2f s" % (closed or -1))
        self.assertIsNotNone(closed, "never closed")
        self.assertGreater(closed, 1.8)
        self.assertLess(closed, 2.0 + 1.0 * SLACK)


if __name__ == "__main__":
    lib.main()
