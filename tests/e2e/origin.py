#!/usr/bin/env python3
"""A test upstream for the proxy end-to-end tests (stdlib only).

Run it:   python3 origin.py --port N      (prints "listening on 127.0.0.1:N" when ready)
Use it:   from origin import Origin        (starts, kills and restarts it, reads its counters)

Every request outside /__*, of any method (unknown ones like FOO too), answers a JSON
reflection of what the origin received:

  {"n": 3,                     how many requests this path has received (this one included)
   "method": "GET", "path": "/a/b", "query": "x=1", "target": "/a/b?x=1",
   "headers": [["host", "127.0.0.1:4000"], ...],   every header, in order, names lower-cased
   "h": {"host": "...", ...},  the same as a dict (the last value of a repeated name)
   "auth": true,               whether an Authorization header came
   "cookie": false,            whether a Cookie header came
   "user": "42",               X-User-Id, or null
   "body": "...",              the request body as text
   "tag": "...",               the tag of the path's configuration, if any
   "boot": "9f3a..."}          a token of this process's start

What it answers is set per path, out of band (POST /__config), by the request
headers X-Origin-Status: N and X-Origin-Delay-Ms: N, and by the query of the
request itself (the query wins):

  delay_ms=N        wait N ms before answering
  status=N          answer status N
  h=Name:Value      add a response header (repeatable; e.g. h=Cache-Control:no-store)
  etag=V            ETag: V
  cc=V              Cache-Control: V
  vary=V            Vary: V
  cookie=V          Set-Cookie: V
  body=TEXT         answer TEXT as text/plain instead of the reflection
  pad=N             add "pad": N times "x" to the reflection (a large body)
  chunked=1         send the body with Transfer-Encoding: chunked, in pieces
  eof=1             send no length: the body ends when the connection closes
  raw (config only) bytes (latin-1 text) written as the whole answer, as they are, or a
                    list of such texts and pauses (numbers, in ms) written in turn;
                    the connection stays open unless "close": true

For the HTTP caching tests (config only):

  date_offset=N     send Date: now + N seconds (default: now)
  date=false        send no Date at all
  expires_in=N      send Expires: the Date it sends + N seconds (now + N without a Date)
  conditional=true  answer 304 (no body) to a request whose If-None-Match matches the
                    answer's ETag (weak comparison; "*" matches any ETag), or, without
                    If-None-Match, whose If-Modified-Since is not earlier than the answer's
                    Last-Modified; the 304 carries the answer's header fields (not its
                    Content-Type), changed by "headers_304": {"Name": "Value" or null}
                    (null drops the field)

A 304 never carries Content-Length: a 304's length would have to be the one of
the 200 it stands for.

Out of band (these never go through the gateway):

  POST /__config {"path": "/a", "method": "GET"?, "delay_ms": 0, "status": 200,
                  "headers": {"Name": "Value"} or [["Name", "Value"], ...],
                  "body": null, "tag": null, "pad": 0, "chunked": false, "eof": false,
                  "date_offset": 0, "date": true, "expires_in": null,
                  "conditional": false, "headers_304": {}}
                                                  configure a path (method optional)
  GET  /__count?path=/a        {"count": N, "inflight": N, "max_inflight": N}
  GET  /__count                {"/a": {...}, ...} every path
  GET  /__log?path=/a          the reflections of the last requests of that path
  GET  /__conns                {"proxied": N, "resumed": N, "sni": [...]}: connections that
                               carried a request outside /__* (with TLS: how many of those
                               resumed a session, and the SNI names they sent, null for none)
  POST /__reset                forget counters, logs and configuration

With --tls-cert FILE --tls-key FILE it speaks HTTPS (handshakes in the handler threads);
--tls-client-ca FILE also requires a client certificate issued by that CA.
"""

import argparse
import email.utils
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_KEEP = 200
BOOT = os.urandom(6).hex()  # changes with every start: tells a fresh answer from a kept one


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.counts = {}
            self.inflight = {}
            self.max_inflight = {}
            self.logs = {}
            self.config = {}
            self.conns = {"proxied": 0, "resumed": 0, "sni": []}


STATE = State()


def _httpdate(t):
    return email.utils.formatdate(t, usegmt=True)


def _parse_httpdate(text):
    """Seconds since the epoch of an HTTP date, or None when it is not one."""
    try:
        d = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return d.timestamp() if d is not None and d.tzinfo is not None else None


def _etag_matches(inm, etag):
    """If-None-Match's weak comparison (RFC 9110 13.1.2) of a list of tags with etag."""
    if etag is None:
        return False
    if inm.strip() == "*":
        return True

    def opaque(t):
        return t[2:] if t.startswith("W/") else t
    return any(opaque(t) == opaque(etag.strip()) for t in re.findall(r'(?:W/)?"[^"]*"', inm))


def _not_modified(request_headers, headers):
    """Whether a conditional GET/HEAD with these request headers gets a 304 for an answer with
    these header fields (If-None-Match first; If-Modified-Since only without it)."""
    names = {k.lower(): v for k, v in headers}
    inm = request_headers.get("If-None-Match")
    if inm is not None:
        return _etag_matches(inm, names.get("etag"))
    ims = request_headers.get("If-Modified-Since")
    if ims is not None and "last-modified" in names:
        since, modified = _parse_httpdate(ims), _parse_httpdate(names["last-modified"])
        return since is not None and modified is not None and since >= modified
    return False


def _config_for(method, path):
    with STATE.lock:
        c = STATE.config.get((method, path)) or STATE.config.get((None, path)) or {}
        return dict(c)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "origin/1"

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # a failure ends this connection only
        self.counted = False
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # peer's delayed ACK hold the body back for tens of milliseconds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # quiet
        pass

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = b""
            while True:
                line = self.rfile.readline(65537).strip()
                size = int(line.split(b";", 1)[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline(3)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, body, ctype="application/json", headers=(), head_only=False,
              framing="length", date=True):
        """date: True sends the current Date, a string sends that, None sends none."""
        self.log_request(status)
        self.send_response_only(status)
        self.send_header("Server", self.version_string())
        if date is True:
            self.send_header("Date", self.date_time_string())
        elif date:
            self.send_header("Date", date)
        names = {k.lower() for k, _ in headers}
        bodiless = status in (204, 304) or head_only
        if status in (204, 304):
            body = b""
        elif "content-type" not in names:
            self.send_header("Content-Type", ctype)
        if framing == "chunked" and not bodiless:
            self.send_header("Transfer-Encoding", "chunked")
        elif framing == "eof" and not bodiless:
            self.send_header("Connection", "close")
            self.close_connection = True
        elif status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if bodiless:
            return
        if framing == "chunked":
            step = max(1, len(body) // 3)
            for i in range(0, len(body), step):
                piece = body[i:i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    def _json(self, obj, status=200):
        self._send(status, json.dumps(obj).encode())

    def _control(self, method, path, query, body):
        q = urllib.parse.parse_qs(query)
        if path == "/__reset" and method == "POST":
            STATE.reset()
            return self._json({"ok": True})
        if path == "/__config" and method == "POST":
            c = json.loads(body or b"{}")
            p = c.pop("path")
            m = c.pop("method", None)
            with STATE.lock:
                STATE.config[(m, p)] = c
            return self._json({"ok": True})
        if path == "/__count":
            with STATE.lock:
                def one(p):
                    return {"count": STATE.counts.get(p, 0), "inflight": STATE.inflight.get(p, 0),
                            "max_inflight": STATE.max_inflight.get(p, 0)}
                if "path" in q:
                    return self._json(one(q["path"][0]))
                return self._json({p: one(p) for p in STATE.counts})
        if path == "/__conns":
            with STATE.lock:
                return self._json(STATE.conns)
        if path == "/__log":
            with STATE.lock:
                return self._json(list(STATE.logs.get(q.get("path", [""])[0], [])))
        return self._json({"error": "unknown control path"}, 404)

    def _handle(self):
        method = self.command
        target = self.path
        path, _, query = target.partition("?")
        body = self._read_body()
        if path.startswith("/__"):
            return self._control(method, path, query, body)

        if not self.counted:
            self.counted = True
            with STATE.lock:
                STATE.conns["proxied"] += 1
                if isinstance(self.connection, ssl.SSLSocket):
                    STATE.conns["resumed"] += 1 if self.connection.session_reused else 0
                    STATE.conns["sni"].append(getattr(self.connection, "sni_name", None))
        c = _config_for(method, path)
        headers = []
        h = c.get("headers") or []
        headers += list(h.items()) if isinstance(h, dict) else [tuple(x) for x in h]
        delay_ms = c.get("delay_ms", 0)
        status = c.get("status", 200)
        text = c.get("body")
        pad = c.get("pad", 0)
        framing = "chunked" if c.get("chunked") else "eof" if c.get("eof") else "length"
        if self.headers.get("X-Origin-Status"):
            status = int(self.headers["X-Origin-Status"])
        if self.headers.get("X-Origin-Delay-Ms"):
            delay_ms = int(self.headers["X-Origin-Delay-Ms"])
        for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if k == "delay_ms":
                delay_ms = int(v)
            elif k == "status":
                status = int(v)
            elif k == "h" and ":" in v:
                name, _, value = v.partition(":")
                headers.append((name.strip(), value.strip()))
            elif k == "etag":
                headers.append(("ETag", v))
            elif k == "cc":
                headers.append(("Cache-Control", v))
            elif k == "vary":
                headers.append(("Vary", v))
            elif k == "cookie":
                headers.append(("Set-Cookie", v))
            elif k == "body":
                text = v
            elif k == "pad":
                pad = int(v)
            elif k == "chunked" and v == "1":
                framing = "chunked"
            elif k == "eof" and v == "1":
                framing = "eof"

        with STATE.lock:
            n = STATE.counts[path] = STATE.counts.get(path, 0) + 1
            cur = STATE.inflight[path] = STATE.inflight.get(path, 0) + 1
            STATE.max_inflight[path] = max(STATE.max_inflight.get(path, 0), cur)
        try:
            pairs = [(k.lower(), v) for k, v in self.headers.items()]
            hd = dict(pairs)
            reflection = {
                "n": n, "method": method, "path": path, "query": query, "target": target,
                "headers": pairs, "h": hd,
                "auth": "authorization" in hd, "cookie": "cookie" in hd, "user": hd.get("x-user-id"),
                "body": body.decode("utf-8", "replace"), "tag": c.get("tag"), "boot": BOOT,
            }
            with STATE.lock:
                log = STATE.logs.setdefault(path, [])
                log.append(reflection)
                del log[:-LOG_KEEP]
            if delay_ms:
                time.sleep(delay_ms / 1000.0)
            now = time.time() + c.get("date_offset", 0)
            date = _httpdate(now) if c.get("date", True) else None
            if c.get("expires_in") is not None:
                headers.append(("Expires", _httpdate(now + c["expires_in"])))
            if c.get("conditional") and 200 <= status < 300 and method in ("GET", "HEAD") and \
                    _not_modified(self.headers, headers):
                change = c.get("headers_304") or {}
                lower = {k.lower() for k in change}
                kept = [(k, v) for k, v in headers
                        if k.lower() not in lower and k.lower() != "content-type"]
                kept += [(k, v) for k, v in change.items() if v is not None]
                return self._send(304, b"", headers=kept, date=date)
            if c.get("raw") is not None:
                pieces = c["raw"] if isinstance(c["raw"], list) else [c["raw"]]
                for piece in pieces:
                    if isinstance(piece, (int, float)):
                        time.sleep(piece / 1000.0)
                        continue
                    self.wfile.write(piece.encode("latin-1"))
                    self.wfile.flush()
                self.close_connection = bool(c.get("close"))
                return
            if text is not None:
                out = text.encode()
                ctype = "text/plain"
            else:
                if pad:
                    reflection = dict(reflection, pad="x" * pad)
                out = json.dumps(reflection).encode()
                ctype = "application/json"
            self._send(status, out, ctype, headers, head_only=(method == "HEAD"), framing=framing,
                       date=date)
        finally:
            with STATE.lock:
                STATE.inflight[path] -= 1

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def __getattr__(self, name):
        # Any other method (FOO) is handled as well, rather than answered 501.
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    tls = None  # an ssl.SSLContext: HTTPS

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


def tls_context(cert, key, client_ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)

    def on_sni(sock, name, _ctx):
        sock.sni_name = name
    ctx.sni_callback = on_sni
    return ctx


def serve(port, tls=None):
    srv = Server(("127.0.0.1", port), Handler)
    srv.tls = tls
    print("listening on 127.0.0.1:%d" % srv.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    srv.serve_forever()


# ---------------------------------------------------------------------------
# The client side, for the tests.

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Origin:
    """An origin.py process on a loopback port; kill() and start() keep the port."""

    def __init__(self, port=None, tls=None):
        """tls: {"cert": FILE, "key": FILE, "client_ca": FILE (optional)}: HTTPS."""
        self.port = port or free_port()
        self.tls = tls
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)
        self.proc = None
        self.start()

    def start(self):
        end = time.monotonic() + 10
        while True:
            tls = []
            if self.tls:
                tls = ["--tls-cert", self.tls["cert"], "--tls-key", self.tls["key"]]
                if self.tls.get("client_ca"):
                    tls += ["--tls-client-ca", self.tls["client_ca"]]
            self.proc = subprocess.Popen([sys.executable, "-u", os.path.abspath(__file__),
                                          "--port", str(self.port)] + tls,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            line = self.proc.stdout.readline()
            if line.startswith(b"listening on"):
                return self
            self.proc.wait()
            if time.monotonic() > end:
                raise RuntimeError("origin did not start on port %d" % self.port)
            time.sleep(0.1)  # the port is still held by a closing socket

    def kill(self):
        """Ends the process at once (connections reset, the port refuses)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc:
            self.proc.stdout.close()

    stop = kill

    def restart(self):
        self.kill()
        return self.start()

    def _call(self, method, path, body=None):
        if self.tls:
            # The test talks to its own origin: no verification, and its client certificate
            # when the origin requires one.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if self.tls.get("client_cert"):
                ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return json.loads(r.read())
        finally:
            conn.close()

    def count(self, path):
        return self._call("GET", "/__count?path=" + urllib.parse.quote(path, safe="/"))["count"]

    def stats(self, path):
        return self._call("GET", "/__count?path=" + urllib.parse.quote(path, safe="/"))

    def log(self, path):
        return self._call("GET", "/__log?path=" + urllib.parse.quote(path, safe="/"))

    def conns(self):
        return self._call("GET", "/__conns")

    def reset(self):
        self._call("POST", "/__reset")

    def config(self, path, method=None, **kw):
        """Sets what a path answers: delay_ms, status, headers, body, tag, and the other keys
        of POST /__config (date_offset, date, expires_in, conditional, headers_304, ...)."""
        c = dict(kw, path=path)
        if method:
            c["method"] = method
        self._call("POST", "/__config", c)


def main():
    ap = argparse.ArgumentParser(description="test upstream for sluice's proxy tests")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca")
    a = ap.parse_args()
    serve(a.port, tls_context(a.tls_cert, a.tls_key, a.tls_client_ca) if a.tls_cert else None)


if __name__ == "__main__":
    main()
