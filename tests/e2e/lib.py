"""Helpers for the end-to-end tests: a real sluice binary, real PostgreSQL, real HTTP."""

import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

ROOT = os.environ.get("SLUICE_ROOT", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BIN = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))
CRM = os.path.join(ROOT, "examples", "crm")
TEMPLATE_DB = "sluice_crm_template"


def _sanitized(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SANITIZED = _sanitized(BIN)  # built with -DSANITIZE=address,...


def psql(sql, db="postgres", check=True):
    """Runs SQL with psql against the test cluster; returns stdout (tuples only, unaligned)."""
    r = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("psql failed: %s" % r.stderr)
    return r.stdout.strip()


def _ensure_template():
    """Creates the seeded CRM template database once per cluster (safe across processes)."""
    lock_path = os.path.join(tempfile.gettempdir(), "sluice-e2e-%s-%s.lock" % (
        os.environ.get("PGHOST", "local").replace("/", "_"), os.environ.get("PGPORT", "5432")))
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if psql("SELECT 1 FROM pg_database WHERE datname = '%s'" % TEMPLATE_DB) == "1":
            return
        tmp = TEMPLATE_DB + "_build"
        psql("DROP DATABASE IF EXISTS %s" % tmp)
        psql("CREATE DATABASE %s" % tmp)
        for f in ("schema.sql", "seed.sql"):
            r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", tmp, "-f",
                                os.path.join(CRM, f)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError("loading %s failed: %s" % (f, r.stderr))
        psql("ALTER DATABASE %s RENAME TO %s" % (tmp, TEMPLATE_DB))


def crm_database():
    """Returns the name of a new database holding the seeded CRM example."""
    _ensure_template()
    name = "t_" + uuid.uuid4().hex[:12]
    psql("CREATE DATABASE %s TEMPLATE %s" % (name, TEMPLATE_DB))
    return name


class Sluice:
    """A running `sluice serve` on a free loopback port."""

    def __init__(self, policy_dir, database=None, args=(), env=None, per_ip_cap=False, binary=None):
        self.policy_dir = policy_dir
        e = dict(os.environ)
        if database:
            e["DATABASE_URL"] = "dbname=%s" % database
        if env:
            e.update(env)
        self.log = tempfile.NamedTemporaryFile(prefix="sluice-e2e-", suffix=".log", delete=False)
        cmd = [binary or BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--workers", "2"]
        if not per_ip_cap:
            # The tests' clients all connect from 127.0.0.1 and stand for many callers: no
            # per-address connection cap unless a test asks for the binary's own (or sets one).
            cmd += ["--max-connections-per-ip", "0"]
        cmd += list(args) + [policy_dir]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=e)
        self.port = None
        self.admin_port = None
        # Read the start lines; a watchdog ends a start that hangs.
        watchdog = threading.Timer(20, self.proc.kill)
        watchdog.start()
        try:
            for line in self.proc.stdout:
                if line.startswith(b"admin on"):
                    self.admin_port = int(line.strip().rsplit(b":", 1)[1])
                elif line.startswith(b"listening on"):
                    self.port = int(line.strip().rsplit(b":", 1)[1])
                    break
        finally:
            watchdog.cancel()
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("sluice did not start: %s" % self.read_log())

    def read_log(self):
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def admin(self, method, path, headers=None, body=None, timeout=10):
        """A request to the admin listener."""
        return self.request(method, path, headers, body, timeout, port=self.admin_port)

    def request(self, method, path, headers=None, body=None, timeout=10, port=None):
        """One request on a new connection; returns (status, headers dict lowercased, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
                headers = dict(headers or {})
                headers.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def get(self, path, user=None, headers=None):
        h = dict(headers or {})
        if user is not None:
            h["X-User-Id"] = str(user)
        return self.request("GET", path, h)

    def raw(self, data, timeout=5):
        """Sends raw bytes and returns everything the server answers until it closes or goes quiet."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(data)
            out = b""
            end = time.time() + timeout
            while time.time() < end:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    # wait briefly for the close
                    s.settimeout(0.5)
            return out
        finally:
            s.close()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        rc = self.stop()
        log = self.read_log()
        self.proc.stdout.close()
        self.log.close()
        os.unlink(self.log.name)
        return rc, log


def _complete(resp):
    head, _, body = resp.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def status_of(raw):
    """The status code of the first response in raw bytes, or None."""
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


def copy_policies(src):
    """A private copy of a policy directory (tests edit it)."""
    d = tempfile.mkdtemp(prefix="sluice-pol-")
    shutil.rmtree(d)
    shutil.copytree(src, d)
    return d


class SluiceTestCase(unittest.TestCase):
    """Checks that the server stopped cleanly (exit 0, no sanitizer report) after each class."""

    @classmethod
    def start(cls, *a, **kw):
        if "servers" not in cls.__dict__:
            cls.servers = []
        s = Sluice(*a, **kw)
        cls.servers.append(s)
        return s

    @classmethod
    def tearDownClass(cls):
        problems = []
        for s in cls.__dict__.get("servers", []):
            rc, log = s.close()
            if rc != 0 or "ERROR: AddressSanitizer" in log or "runtime error:" in log or \
                    "LeakSanitizer" in log:
                problems.append("sluice exited %s:\n%s" % (rc, log[-4000:]))
        cls.servers = []
        if problems:
            raise AssertionError("\n".join(problems))


def main():
    unittest.main(verbosity=2)


def free_port():
    """A loopback port nobody listens on (at the time of the call)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RedisServer:
    """A redis-server of the test's own on a free loopback port. stop() ends it and start()
    brings it back on the same port; pause() and resume() freeze and thaw it; kill() ends it
    at once, as a crash would."""

    def __init__(self):
        self.port = free_port()
        self.url = "redis://127.0.0.1:%d" % self.port
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.cli("PING", check=False) == "PONG":
                return
            time.sleep(0.025)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def cli(self, *args, check=True):
        r = subprocess.run(["redis-cli", "-p", str(self.port), "--raw"] + list(args),
                           capture_output=True, text=True, timeout=10)
        if check and r.returncode != 0:
            raise RuntimeError("redis-cli %s: %s" % (args, r.stderr))
        return r.stdout.strip()

    def keys(self, pattern="*"):
        """The keys matching pattern (SCAN)."""
        return [k for k in self.cli("--scan", "--pattern", pattern).split("\n") if k]

    def keys_without_ttl(self):
        """Every key, and those of them without a TTL (SCAN + PTTL)."""
        keys = self.keys()
        return keys, [k for k in keys if self.cli("PTTL", k) == "-1"]

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def kill(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server acts on SIGTERM only once thawed
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rss_kib(pid):
    """The resident set of process pid (VmRSS of /proc/PID/status), in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


def pipelined(port, paths, conns=4, depth=32, timeout=60, on_batch=None, record=None):
    """Sends GET requests for every path of the iterable `paths` over `conns` keep-alive
    connections, up to `depth` in flight on each, and reads every answer. Returns a dict
    {status: count}. on_batch(), when given, is called after every 1000 answers (to sample
    the server while it works); record, a list, gets every status as it comes (in the order
    of `paths` when conns is 1). Fails when an answer does not come within `timeout` s."""
    import selectors
    sel = selectors.DefaultSelector()
    it = iter(paths)
    counts = {}
    done = 0
    state = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        st = {"sock": s, "inflight": 0, "buf": b"", "out": b""}
        state.append(st)
        sel.register(s, selectors.EVENT_READ, st)
    exhausted = False

    def refill(st):
        nonlocal exhausted
        reqs = []
        while not exhausted and st["inflight"] + len(reqs) < depth:
            p = next(it, None)
            if p is None:
                exhausted = True
                break
            reqs.append(b"GET " + p.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        st["inflight"] += len(reqs)
        st["out"] += b"".join(reqs)

    def parse(st):
        nonlocal done
        buf = st["buf"]
        pos = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = buf[pos:end]
            length = 0
            i = head.lower().find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17:j if j >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                break
            code = int(head[9:12])
            counts[code] = counts.get(code, 0) + 1
            if record is not None:
                record.append(code)
            pos = end + 4 + length
            st["inflight"] -= 1
            done += 1
            if on_batch and done % 1000 == 0:
                on_batch()
        st["buf"] = buf[pos:]

    deadline = time.time() + timeout
    try:
        for st in state:
            refill(st)
        while any(st["inflight"] for st in state):
            if time.time() > deadline:
                raise AssertionError("answers did not come within %d s" % timeout)
            for st in state:
                if st["out"]:
                    try:
                        n = st["sock"].send(st["out"])
                        st["out"] = st["out"][n:]
                    except BlockingIOError:
                        pass
            for key, _ in sel.select(1):
                st = key.data
                data = st["sock"].recv(1 << 20)
                if not data:
                    raise AssertionError("the server closed a connection")
                st["buf"] += data
                parse(st)
                refill(st)
    finally:
        for st in state:
            sel.unregister(st["sock"])
            st["sock"].close()
    return counts
