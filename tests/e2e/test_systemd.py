"""End to end: sluice under a service manager. A test-owned NOTIFY_SOCKET (an AF_UNIX datagram
socket) receives READY=1 once the server serves, RELOADING=1 with MONOTONIC_USEC= and READY=1
around a SIGHUP reload, WATCHDOG=1 every half WATCHDOG_USEC while every worker's event loop
runs and none while one is stuck (the test builds' SLUICE_TEST_STALL_FILE), STOPPING=1 on
SIGTERM; sockets handed over as systemd does (LISTEN_FDS) are served on; and
`systemd-analyze verify` accepts the units of packaging/systemd/."""

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import lib
from lib import SluiceTestCase

POLICIES = os.path.join(lib.ROOT, "policies")
WATCHDOG_USEC = 600000  # pings every 0.3 s


def note(msg):
    """A measurement worth reading in the test log."""
    sys.stderr.write("    [measured] %s\n" % msg)
    sys.stderr.flush()


class NotifySocket:
    """An AF_UNIX datagram socket standing for the service manager's, and what came on it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []  # (time.monotonic(), {name: value}, text)
        self.lock = threading.Lock()
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            text = data.decode()
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            with self.lock:
                self.messages.append((time.monotonic(), fields, text))

    def with_field(self, name, value=None, since=0.0):
        """The messages (time, fields) holding name (= value when given) received after since."""
        with self.lock:
            return [(t, f) for t, f, _ in self.messages
                    if t >= since and name in f and (value is None or f[name] == value)]

    def wait_for(self, name, value=None, since=0.0, timeout=10):
        """The first such message, waiting for it up to timeout seconds; None if none came."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.with_field(name, value, since)
            if got:
                return got[0]
            time.sleep(0.02)
        return None

    def close(self):
        self.done = True
        self.thread.join()
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Notify(SluiceTestCase):
    """READY, RELOADING, WATCHDOG and STATUS on one server; STOPPING on another."""

    @classmethod
    def setUpClass(cls):
        cls.notify = NotifySocket()
        cls.stall = os.path.join(cls.notify.dir, "stall")
        cls.s = cls.start(POLICIES, env={"NOTIFY_SOCKET": cls.notify.path,
                                         "WATCHDOG_USEC": str(WATCHDOG_USEC),
                                         "SLUICE_TEST_STALL_FILE": cls.stall})

    @classmethod
    def tearDownClass(cls):
        if os.path.exists(cls.stall):
            os.unlink(cls.stall)
        try:
            super().tearDownClass()
        finally:
            cls.notify.close()

    def test_ready_once_serving_with_a_status_naming_the_generation(self):
        ready = self.notify.wait_for("READY", "1")
        self.assertIsNotNone(ready, "no READY=1")
        self.assertIn("generation 1", ready[1].get("STATUS", ""))
        self.assertEqual(self.s.request("GET", "/nowhere")[0], 404)  # it serves

    def test_sighup_sends_reloading_with_the_monotonic_clock_then_ready(self):
        self.assertIsNotNone(self.notify.wait_for("READY", "1"))
        before = time.monotonic()
        self.s.proc.send_signal(signal.SIGHUP)
        reloading = self.notify.wait_for("RELOADING", "1", since=before)
        self.assertIsNotNone(reloading, "no RELOADING=1 after SIGHUP")
        after = time.monotonic()
        # MONOTONIC_USEC is CLOCK_MONOTONIC, the clock time.monotonic() reads on Linux.
        usec = int(reloading[1]["MONOTONIC_USEC"])
        self.assertGreaterEqual(usec, int(before * 1e6) - 1000)
        self.assertLessEqual(usec, int(after * 1e6) + 1000)
        ready = self.notify.wait_for("READY", "1", since=reloading[0])
        self.assertIsNotNone(ready, "no READY=1 after the reload")
        self.assertRegex(ready[1].get("STATUS", ""), r"^reloaded: generation \d+")

    def test_watchdog_pings_every_half_interval(self):
        self.assertIsNotNone(self.notify.wait_for("READY", "1"))
        start = time.monotonic()
        time.sleep(2.0)
        pings = [t for t, _ in self.notify.with_field("WATCHDOG", "1", since=start)]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        note("%d pings in 2 s at WATCHDOG_USEC=%d, gaps %.3f-%.3f s"
             % (len(pings), WATCHDOG_USEC, min(gaps), max(gaps)))
        half = WATCHDOG_USEC / 2e6
        self.assertGreaterEqual(len(pings), 5)
        self.assertLessEqual(len(pings), 8)
        self.assertGreater(min(gaps), half * 0.7)
        self.assertLess(max(gaps), half * 1.5)

    def test_no_watchdog_ping_while_a_worker_is_stuck_and_pings_again_after(self):
        self.assertIsNotNone(self.notify.wait_for("READY", "1"))
        open(self.stall, "w").close()  # worker 0's loop stops at its next heartbeat
        try:
            # The last beat may have come just before: the pings stop half an interval later.
            time.sleep(WATCHDOG_USEC / 1e6)
            quiet_from = time.monotonic()
            time.sleep(1.5)
            during = self.notify.with_field("WATCHDOG", "1", since=quiet_from)
        finally:
            os.unlink(self.stall)
        resumed = self.notify.wait_for("WATCHDOG", "1", since=time.monotonic(), timeout=3)
        self.assertEqual(during, [], "pings while worker 0 was stuck")
        self.assertIsNotNone(resumed, "no ping once the worker ran again")
        self.assertIn("worker 0's event loop has not run", self.s.read_log())

    def test_status_says_the_request_rate_every_5_s(self):
        self.assertIsNotNone(self.notify.wait_for("READY", "1"))
        since = time.monotonic()
        for _ in range(50):
            self.assertEqual(self.s.request("GET", "/healthz")[0], 200)
        got = None
        end = time.monotonic() + 7
        while time.monotonic() < end and got is None:
            # The first line counting some of the requests (one may come before them).
            got = next((f["STATUS"] for _, f in self.notify.with_field("STATUS", since=since)
                        if re.match(r"serving: generation \d+, (?!0\.0 )", f["STATUS"])), None)
            time.sleep(0.1)
        self.assertIsNotNone(got, "no STATUS= with a request rate within 7 s")
        rate = float(got.split(", ")[1].split()[0])
        note("STATUS=%s after 50 requests" % got)
        self.assertGreater(rate, 0)
        self.assertRegex(got, r"^serving: generation \d+, \d+\.\d requests/s, 2 workers$")

    def test_sigterm_sends_stopping_and_exits_0(self):
        notify = NotifySocket()
        try:
            s = lib.Sluice(POLICIES, env={"NOTIFY_SOCKET": notify.path})
            self.assertIsNotNone(notify.wait_for("READY", "1"))
            before = time.monotonic()
            rc, log = s.close()
            stopping = notify.wait_for("STOPPING", "1", since=before, timeout=2)
            self.assertIsNotNone(stopping, "no STOPPING=1 on SIGTERM")
            self.assertEqual(rc, 0, log)
            # No watchdog was asked for: no pings.
            self.assertEqual(notify.with_field("WATCHDOG"), [])
        finally:
            notify.close()

    def test_a_watchdog_meant_for_another_process_is_not_fed(self):
        notify = NotifySocket()
        try:
            s = lib.Sluice(POLICIES, env={"NOTIFY_SOCKET": notify.path,
                                          "WATCHDOG_USEC": str(WATCHDOG_USEC),
                                          "WATCHDOG_PID": "1"})
            self.assertIsNotNone(notify.wait_for("READY", "1"))
            time.sleep(1.0)
            rc, log = s.close()
            self.assertEqual(notify.with_field("WATCHDOG"), [])
            self.assertEqual(rc, 0, log)
        finally:
            notify.close()


class Drain(unittest.TestCase):
    """SIGTERM waits for the requests in flight, but not past --drain-timeout."""

    def test_a_stop_waiting_past_drain_timeout_exits_1_saying_so(self):
        s = lib.Sluice(POLICIES, args=["--drain-timeout", "1s", "--header-timeout", "30s"])
        c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        try:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a request begun, never ended
            time.sleep(0.3)
            t0 = time.monotonic()
            rc = s.stop(timeout=20)
            took = time.monotonic() - t0
        finally:
            c.close()
        rc, log = s.close()
        note("stop with a request in flight and --drain-timeout 1s: exited after %.2f s" % took)
        self.assertEqual(rc, 1, log)
        self.assertGreater(took, 0.9)
        self.assertLess(took, 5)
        self.assertIn("requests still in flight after --drain-timeout (1 connections open)", log)


def listener():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


class SocketActivation(unittest.TestCase):
    """Sockets handed over as systemd does: LISTEN_PID, LISTEN_FDS from fd 3, LISTEN_FDNAMES."""

    def test_serves_on_the_sockets_it_is_given_and_ignores_listen(self):
        http, admin = listener(), listener()

        def to_3_and_4():
            # Out of the way first: either socket may be fd 3 or 4 already.
            hi = [fcntl.fcntl(f.fileno(), fcntl.F_DUPFD, 50) for f in (http, admin)]
            os.dup2(hi[0], 3)
            os.dup2(hi[1], 4)
            for f in hi:
                os.close(f)

        env = dict(os.environ, LISTEN_FDS="2", LISTEN_FDNAMES="http:admin")
        # LISTEN_PID must be the pid of sluice itself: the shell sets it and execs.
        cmd = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', lib.BIN, "serve",
               "--listen", "127.0.0.1:1", "--admin", "127.0.0.1:1", "--workers", "2",
               "--no-watch", POLICIES]
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log,
                                preexec_fn=to_3_and_4,
                                pass_fds=(http.fileno(), admin.fileno(), 3, 4))
        try:
            lines = [proc.stdout.readline() for _ in range(2)]
            if b"" in lines:
                proc.wait(10)
                log.seek(0)
                self.fail("sluice did not start: %s" % log.read().decode(errors="replace"))
            self.assertIn(b"admin on http://127.0.0.1:%d\n" % admin.getsockname()[1], lines)
            self.assertIn(b"listening on http://127.0.0.1:%d\n" % http.getsockname()[1], lines)
            http.close()  # only sluice holds the sockets now
            admin.close()
            for port, path, want in ((int(lines[1].rsplit(b":", 1)[1]), "/nowhere", 404),
                                     (int(lines[0].rsplit(b":", 1)[1]), "/status", 200)):
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
                c.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                          % path.encode())
                got = c.recv(100)
                c.close()
                self.assertTrue(got.startswith(b"HTTP/1.1 %d" % want), got)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(15)
            proc.stdout.close()
            log.seek(0)
            text = log.read().decode(errors="replace")
            log.close()
        self.assertEqual(rc, 0, text)
        self.assertNotIn("runtime error:", text)

    def test_a_descriptor_that_is_not_a_listening_socket_is_refused(self):
        r, w = os.pipe()

        def to_3():
            hi = fcntl.fcntl(r, fcntl.F_DUPFD, 50)
            os.dup2(hi, 3)
            os.close(hi)

        env = dict(os.environ, LISTEN_FDS="1")
        cmd = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', lib.BIN, "serve",
               "--admin", "off", POLICIES]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=20,
                           preexec_fn=to_3, pass_fds=(r, 3))
        os.close(r)
        os.close(w)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("inherited descriptor 3 is not a listening socket", p.stderr)


class Units(unittest.TestCase):
    """packaging/systemd/ as `cmake --install` writes it, checked by systemd-analyze."""

    def test_systemd_analyze_verify_accepts_the_units(self):
        tool = shutil.which("systemd-analyze")
        if not tool:
            self.skipTest("systemd-analyze is not installed (scripts/deps.sh test installs systemd)")
        d = tempfile.mkdtemp(prefix="sluice-units-")
        try:
            src = os.path.join(lib.ROOT, "packaging", "systemd")
            with open(os.path.join(src, "sluice.service.in")) as f:
                text = f.read()
            text = text.replace("@CMAKE_INSTALL_FULL_BINDIR@", os.path.dirname(lib.BIN))
            text = text.replace("@SLUICE_POLICY_DIR@", POLICIES)
            self.assertNotIn("@", text.replace("@system-service", ""))
            with open(os.path.join(d, "sluice.service"), "w") as f:
                f.write(text)
            shutil.copy(os.path.join(src, "sluice.socket"), d)
            # Documentation=man:... is checked against the man pages of docs/man.
            for sec, name in ((1, "sluice.1"), (5, "sluice-policies.5")):
                os.makedirs(os.path.join(d, "man", "man%d" % sec), exist_ok=True)
                shutil.copy(os.path.join(lib.ROOT, "docs", "man", name),
                            os.path.join(d, "man", "man%d" % sec))
            env = dict(os.environ, MANPATH=os.path.join(d, "man"), SYSTEMD_LOG_LEVEL="notice")
            r = subprocess.run([tool, "verify", os.path.join(d, "sluice.service"),
                                os.path.join(d, "sluice.socket")],
                               capture_output=True, text=True, timeout=60, env=env)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(r.stderr.strip(), "", r.stderr)
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    lib.main()
