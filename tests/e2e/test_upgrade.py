"""End to end: a zero-downtime binary upgrade. SIGUSR2 starts the binary again (same path,
same arguments) on the listening sockets of the running one; once the new process serves, the
old one finishes its requests in flight and exits 0. A client opening a new connection for
every request all the while sees no failure. A new binary that fails to start leaves the old
one serving, and its log says why."""

import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unittest

import lib

POLICIES = os.path.join(lib.ROOT, "policies")
PR_SET_CHILD_SUBREAPER = 36


def note(msg):
    """A measurement worth reading in the test log."""
    sys.stderr.write("    [measured] %s\n" % msg)
    sys.stderr.flush()


def fresh(port, path="/healthz", timeout=2):
    """One request on a new connection: the status, or a text saying how it failed."""
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return "connect: %r" % e
    try:
        c.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data.startswith(b"HTTP/1.1 "):
            return "<%d bytes, no answer>" % len(data)
        return int(data.split(b" ", 2)[1])
    except OSError as e:
        return repr(e)
    finally:
        c.close()


class Client:
    """Keeps opening connections and sending requests until stopped; counts what came back."""

    def __init__(self, port):
        self.port = port
        self.results = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        self.slowest = 0.0
        while not self.done.is_set():
            t0 = time.monotonic()
            self.results.append(fresh(self.port))
            self.slowest = max(self.slowest, time.monotonic() - t0)

    def stop(self):
        self.done.set()
        self.thread.join()
        return [r for r in self.results if r != 200]


def wait_for(pred, timeout, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def alive(pid):
    """Whether process pid runs (a zombie does not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fd_targets(pid):
    """What each descriptor of process pid but 0-2 refers to ("socket:[123]", a path, ...)."""
    out = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        if int(fd) > 2:
            try:
                out[int(fd)] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                pass
    return out


def listening_inodes(pid):
    """The sockets of process pid that listen (TCP, state 0A), as "socket:[INODE]"."""
    inodes = set()
    for table in ("/proc/%d/net/tcp" % pid, "/proc/%d/net/tcp6" % pid):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A":
                    inodes.add("socket:[%s]" % cols[9])
    return {t for t in fd_targets(pid).values() if t in inodes}


class Upgrade(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The new process is started by the old one, which exits: it becomes our child, so
        # that the test can wait for it and read its exit status.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")

    def setUp(self):
        # A copy of the binary in a directory of the test's own, which the test can replace.
        self.dir = tempfile.mkdtemp(prefix="sluice-upgrade-")
        self.bin = os.path.join(self.dir, "sluice")
        shutil.copy2(lib.BIN, self.bin)
        self.s = lib.Sluice(POLICIES, binary=self.bin, args=["--no-watch"])
        self.extra = []  # processes started by upgrades, to end

    def tearDown(self):
        for pid in self.extra:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        rc, log = self.s.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        # The old process (and the new ones, which log to the same file) ended cleanly.
        self.assertEqual(rc, 0, log[-4000:])
        for bad in ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer"):
            self.assertNotIn(bad, log)

    def new_pid(self):
        for line in self.s.read_log().splitlines():
            if "upgrade: new process" in line and line.endswith(" serves"):
                return int(line.split("new process ")[1].split()[0])
        return None

    def test_sigusr2_hands_over_to_the_new_binary_without_a_failed_request(self):
        old = self.s.proc.pid
        client = Client(self.s.port)
        try:
            time.sleep(0.5)
            self.s.proc.send_signal(signal.SIGUSR2)
            pid = wait_for(self.new_pid, 20)
            self.assertIsNotNone(pid, self.s.read_log())
            self.extra.append(pid)
            self.assertEqual(self.s.proc.wait(20), 0, self.s.read_log())  # the old one exits 0
            time.sleep(0.5)  # the new one alone serves
        finally:
            failures = client.stop()
        note("upgrade under a client opening a connection per request: %d requests, "
             "failures %s" % (len(client.results), failures[:5]))
        self.assertGreater(len(client.results), 100)
        self.assertEqual(failures, [])
        self.assertNotEqual(pid, old)
        self.assertTrue(alive(pid))
        # The new process serves both listeners on the same ports, which nobody else holds.
        self.assertEqual(fresh(self.s.port), 200)
        self.assertEqual(fresh(self.s.admin_port, "/status"), 200)
        # And it upgrades again: the handed-over sockets are handed over in turn.
        os.kill(pid, signal.SIGUSR2)
        third = wait_for(lambda: [int(l.split("new process ")[1].split()[0])
                                  for l in self.s.read_log().splitlines()
                                  if "upgrade: new process" in l and l.endswith(" serves")
                                  and "new process %d " % pid not in l][:1], 20)
        self.assertIsNotNone(third, self.s.read_log())
        self.extra.append(third[0])
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(fresh(self.s.port), 200)
        os.kill(third[0], signal.SIGTERM)
        _, status = os.waitpid(third[0], 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, self.s.read_log())
        log = self.s.read_log()
        self.assertNotIn("runtime error:", log)
        self.assertNotIn("Sanitizer", log)

    def test_the_old_one_accepts_until_the_new_one_is_ready(self):
        # A new binary that takes 1.5 s to start: meanwhile every request is answered at
        # once, so the old process still accepts; it exits only once the new one serves.
        shutil.move(self.bin, self.bin + ".real")
        with open(self.bin, "w") as f:
            f.write('#!/bin/sh\nsleep 1.5\nexec "$0.real" "$@"\n')
        os.chmod(self.bin, 0o755)
        client = Client(self.s.port)
        try:
            time.sleep(0.2)
            t0 = time.monotonic()
            self.s.proc.send_signal(signal.SIGUSR2)
            pid = wait_for(self.new_pid, 20)
            ready_after = time.monotonic() - t0
            self.assertIsNotNone(pid, self.s.read_log())
            self.extra.append(pid)
            self.assertEqual(self.s.proc.wait(20), 0, self.s.read_log())
        finally:
            failures = client.stop()
        note("new binary ready after %.2f s; %d requests meanwhile, slowest %.3f s, failures %s"
             % (ready_after, len(client.results), client.slowest, failures[:5]))
        self.assertGreater(ready_after, 1.4)
        self.assertEqual(failures, [])
        self.assertLess(client.slowest, 0.5)
        self.assertEqual(fresh(self.s.port), 200)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, self.s.read_log())

    def test_the_new_process_holds_no_descriptor_of_the_old_but_its_listening_sockets(self):
        # With Redis the old process holds connections of its own (hiredis does not mark
        # them close-on-exec): the new one must not inherit them, upgrade after upgrade.
        redis = lib.RedisServer()
        try:
            self.s.close()
            self.s = lib.Sluice(POLICIES, binary=self.bin, args=["--no-watch"],
                                env={"REDIS_URL": redis.url})
            self.assertEqual(fresh(self.s.port), 200)
            old = self.s.proc.pid
            listening = listening_inodes(old)
            theirs = {t for t in fd_targets(old).values() if t.startswith("socket:")} - listening
            self.assertTrue(theirs, "the old process holds no socket but its listeners")
            self.s.proc.send_signal(signal.SIGUSR2)
            pid = wait_for(self.new_pid, 20)
            self.assertIsNotNone(pid, self.s.read_log())
            self.extra.append(pid)
            self.assertEqual(self.s.proc.wait(20), 0, self.s.read_log())
            self.assertEqual(fresh(self.s.port), 200)
            mine = fd_targets(pid)
            self.assertEqual({t for t in mine.values() if t in theirs}, set())
            self.assertTrue(listening <= set(mine.values()), (listening, mine))
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0, self.s.read_log())
        finally:
            redis.stop()

    def test_a_new_binary_that_fails_leaves_the_old_one_serving(self):
        with open(self.bin + ".new", "w") as f:
            f.write("#!/bin/sh\necho 'broken build: refusing to start' >&2\nexit 1\n")
        os.chmod(self.bin + ".new", 0o755)
        os.rename(self.bin + ".new", self.bin)
        client = Client(self.s.port)
        try:
            self.s.proc.send_signal(signal.SIGUSR2)
            failed = wait_for(lambda: "upgrade failed" in self.s.read_log(), 20)
            time.sleep(0.3)
        finally:
            failures = client.stop()
        log = self.s.read_log()
        self.assertTrue(failed, log)
        self.assertIn("broken build: refusing to start", log)
        self.assertRegex(log, r"upgrade failed: new process \d+ ended before it was ready: it "
                              r"exited with status 1; still serving")
        self.assertIsNone(self.s.proc.poll())
        self.assertEqual(failures, [])
        self.assertEqual(fresh(self.s.port), 200)

    def test_a_missing_binary_leaves_the_old_one_serving(self):
        os.unlink(self.bin)
        self.s.proc.send_signal(signal.SIGUSR2)
        self.assertTrue(wait_for(lambda: "upgrade failed" in self.s.read_log(), 20))
        self.assertIn("cannot start %s: No such file or directory" % self.bin, self.s.read_log())
        self.assertIsNone(self.s.proc.poll())
        self.assertEqual(fresh(self.s.port), 200)


if __name__ == "__main__":
    lib.main()
