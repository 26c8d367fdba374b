"""End to end: REDIS_URL=redis+sentinel://, against a master, a replica and three sentinels
started here on loopback, and a fake sentinel whose answers the test chooses.

The test names cite the sections of the Redis Sentinel documentation they check: "Sentinel
clients implementation guidelines" (https://redis.io/docs/reference/sentinel-clients/): Step 1
(connecting to the first Sentinel), Step 2 (ask for the master address), Step 3 (call ROLE in
the target instance), "Handling reconnections", "Sentinel failover disconnection" and the
+switch-master event of "Pub/Sub messages" (https://redis.io/docs/management/sentinel/)."""

import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time

import lib
from lib import SluiceTestCase
from test_redis import Load, get, sanitized, wait_until

POLICY = r'''
identity { user = header "X-User-Id" }

endpoint "GET /c/page" {
  body = "cached page",
  cache = { ttl = "5m", key = "page:{user}" },
  limit = { limit = 1000000, window = "1h", key = "reads:{user}" },
}
endpoint "GET /count" {
  body = "counted",
  limit = { limit = 1000000, window = "1d", key = "count:{user}", algorithm = "sliding_log" },
}
endpoint "GET /strict" {
  body = "strict",
  limit = { limit = 1000000, window = "1h", key = "strict:{user}", fail = "closed" },
}
'''

MASTER = "sluice-ha"
DOWN_AFTER_MS = 600
FAILOVER_TIMEOUT_MS = 2000
DEADLINE = 0.050


def policy_dir():
    d = tempfile.mkdtemp(prefix="sluice-sentinel-")
    with open(os.path.join(d, "ha.lua"), "w") as f:
        f.write(POLICY)
    return d


def cli(port, *args):
    r = subprocess.run(["redis-cli", "-p", str(port), "--raw"] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=5)
    return r.stdout.strip() if r.returncode == 0 else None


def evalsha_calls(port):
    """(calls, rejected_calls) of EVALSHA on a Redis node, from INFO commandstats."""
    out = cli(port, "INFO", "commandstats") or ""
    for line in out.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            f = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return int(f["calls"]), int(f.get("rejected_calls", 0))
    return 0, 0


class Node:
    """A redis-server on a free loopback port, optionally a replica of another."""

    def __init__(self, replicaof=None):
        self.port = lib.free_port()
        self.proc = None
        self.start(replicaof)

    def start(self, replicaof=None):
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning"]
        if replicaof:
            cmd += ["--replicaof", "127.0.0.1", str(replicaof)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(lambda: cli(self.port, "PING") == "PONG", 5, 0.02):
            raise RuntimeError("redis-server did not start")

    def role(self):
        out = cli(self.port, "ROLE")
        return out.split("\n")[0] if out else None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    stop = kill


class Sentinel:
    """A redis-sentinel on a free loopback port with a generated configuration."""

    def __init__(self, master_port, workdir):
        self.port = lib.free_port()
        self.conf = os.path.join(workdir, "sentinel-%d.conf" % self.port)
        with open(self.conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndir %s\n" % (self.port, workdir))
            f.write("sentinel monitor %s 127.0.0.1 %d 2\n" % (MASTER, master_port))
            f.write("sentinel down-after-milliseconds %s %d\n" % (MASTER, DOWN_AFTER_MS))
            f.write("sentinel failover-timeout %s %d\n" % (MASTER, FAILOVER_TIMEOUT_MS))
            f.write("sentinel parallel-syncs %s 1\n" % MASTER)
        self.proc = subprocess.Popen(["redis-sentinel", self.conf, "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(lambda: cli(self.port, "PING") == "PONG", 5, 0.02):
            raise RuntimeError("redis-sentinel did not start")

    def master_port(self):
        out = cli(self.port, "SENTINEL", "get-master-addr-by-name", MASTER)
        return int(out.split("\n")[1]) if out and "\n" in out else None

    def ready(self, replica_port):
        """It knows the replica and the two other sentinels (needed for a failover)."""
        reps = cli(self.port, "SENTINEL", "replicas", MASTER) or ""
        sens = cli(self.port, "SENTINEL", "sentinels", MASTER) or ""
        return str(replica_port) in reps and sens.split("\n").count("runid") >= 2

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


class FakeSentinel:
    """Speaks just enough RESP to answer SENTINEL get-master-addr-by-name with the port the
    test sets (and to accept SUBSCRIBE): the test decides where the master is said to be."""

    def __init__(self):
        self.master_port = None
        self.asked = 0
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                buf = b""
                while True:
                    try:
                        data = self.request.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                    while True:
                        cmd, buf2 = parse(buf)
                        if cmd is None:
                            break
                        buf = buf2
                        self.request.sendall(fake.answer([c.lower() for c in cmd]))

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, cmd):
        if cmd[:2] == [b"sentinel", b"get-master-addr-by-name"]:
            self.asked += 1
            if self.master_port is None:
                return b"*-1\r\n"
            p = str(self.master_port).encode()
            return b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(p), p)
        if cmd[:1] == [b"subscribe"]:
            return b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
        return b"-ERR unknown\r\n"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def parse(buf):
    """One RESP array of bulk strings from buf: (args, rest), or (None, buf) when incomplete."""
    if not buf.startswith(b"*"):
        return None, buf
    try:
        end = buf.index(b"\r\n")
        n, pos, args = int(buf[1:end]), end + 2, []
        for _ in range(n):
            end = buf.index(b"\r\n", pos)
            ln = int(buf[pos + 1:end])
            pos = end + 2
            if len(buf) < pos + ln + 2:
                return None, buf
            args.append(buf[pos:pos + ln])
            pos += ln + 2
        return args, buf[pos:]
    except ValueError:
        return None, buf


def store_state(s):
    return json.loads(s.admin("GET", "/status")[2])["store"]["state"]


class SentinelFailover(SluiceTestCase):
    """A master, a replica and three sentinels; sluice on redis+sentinel:// through a failover."""

    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="sluice-sentinels-")
        cls.dir = policy_dir()
        cls.master = Node()
        cls.replica = Node(replicaof=cls.master.port)
        cls.sentinels = [Sentinel(cls.master.port, cls.work) for _ in range(3)]
        # A failover needs every sentinel to know the replica and the others (hello messages
        # every 2 s on the master).
        if not wait_until(lambda: all(s.ready(cls.replica.port) for s in cls.sentinels), 15,
                          0.1):
            raise RuntimeError("the sentinels did not find each other and the replica")
        addrs = ",".join("127.0.0.1:%d" % s.port for s in cls.sentinels)
        cls.url = "redis+sentinel://%s/%s" % (addrs, MASTER)
        cls.s = cls.start(cls.dir, env={"REDIS_URL": cls.url})
        cls.margin = 0.100 if sanitized() else 0.010

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            for n in cls.sentinels + [cls.master, cls.replica]:
                n.stop()
            shutil.rmtree(cls.work, ignore_errors=True)
            shutil.rmtree(cls.dir, ignore_errors=True)

    def served_by_redis(self, user=700):
        st, h, _ = get(self.s.port, "/c/page", user)
        return st == 200 and h.get("x-cache") in ("HIT", "MISS")

    def current_master(self):
        for sn in self.sentinels:
            p = sn.master_port()
            if p:
                return p
        return None

    def test_1_step2_asks_sentinels_for_the_master_address_and_serves_from_it(self):
        """Guidelines, Step 1 and Step 2: the sentinels give the master; limits and cache live
        there (not on the replica)."""
        self.assertTrue(wait_until(self.served_by_redis, 10))
        before = evalsha_calls(self.master.port)[0]
        for _ in range(5):
            self.assertEqual(get(self.s.port, "/count", 701)[0], 200)
        self.assertGreaterEqual(evalsha_calls(self.master.port)[0], before + 5)
        self.assertEqual(evalsha_calls(self.replica.port)[0], 0)
        # every worker has its connection (each publishes its health twice a second)
        self.assertTrue(wait_until(lambda: store_state(self.s) == "ok", 2))
        self.assertIn("master %s is at 127.0.0.1:%d" % (MASTER, self.master.port),
                      self.s.read_log())

    def test_2_sentinels_unreachable_keep_the_last_known_master(self):
        """Handling reconnections: with every sentinel frozen, the known master keeps serving."""
        self.assertTrue(wait_until(self.served_by_redis, 10))
        for sn in self.sentinels:
            sn.pause()
        try:
            time.sleep(1.0)
            for i in range(20):
                self.assertTrue(self.served_by_redis(710 + i))
            self.assertEqual(store_state(self.s), "ok")
        finally:
            for sn in self.sentinels:
                sn.resume()

    def test_3_switch_master_killed_master_fails_over_within_deadline_without_restart(self):
        """SIGKILL of the master under load: every answer within the store deadline (+10 ms),
        no 5xx but the fail-closed limit's 503, and the new master (+switch-master) takes the
        load within the failover time plus one second."""
        self.assertTrue(wait_until(self.served_by_redis, 10))
        load = Load(self.s.port, "/c/page", threads=3)
        strict = []
        time.sleep(0.3)
        old = self.master.port
        self.master.kill()
        t_kill = time.monotonic()
        try:
            # The failover, as the sentinels see it.
            self.assertTrue(wait_until(lambda: self.current_master() == self.replica.port, 25,
                                       0.02), "no failover")
            t_switch = time.monotonic()
            for _ in range(3):
                strict.append(get(self.s.port, "/strict", 720)[0])
            # Back on the store within a second: cache answers, counts moving on the new master.
            c0 = evalsha_calls(self.replica.port)[0]

            def back():
                return self.served_by_redis(721) and evalsha_calls(self.replica.port)[0] > c0 \
                    and store_state(self.s) == "ok"
            self.assertTrue(wait_until(back, t_switch + 1.0 - time.monotonic(), 0.02),
                            "not back on the new master within a second of the failover")
            t_back = time.monotonic()
        finally:
            results = load.stop()
        print("\n  failover took %.2f s; sluice back %.0f ms after it; %d requests, the slowest "
              "answered in %.1f ms" % (t_switch - t_kill, (t_back - t_switch) * 1000, len(results),
                                       max(r[3] for r in results) * 1000))
        self.assertLess(t_back - t_switch, 1.0)
        bad = [r for r in results if r[1] != 200]
        self.assertEqual(bad, [])
        self.assertTrue(set(strict) <= {200, 503}, strict)
        during = [r for r in results if t_kill + 0.1 < r[0] < t_switch - 0.1]
        self.assertTrue(during and all(r[2] == "BYPASS" for r in during))
        slowest = max(r[3] for r in results)
        self.assertLess(slowest, DEADLINE + self.margin,
                        "slowest answer %.1f ms" % (slowest * 1000))
        self.assertIn("+switch-master", self.s.read_log())
        self.assertEqual(self.s.proc.poll(), None)
        self.assertNotEqual(old, self.replica.port)

    def test_4_failover_disconnection_demoted_master_back_as_replica_is_not_written_to(self):
        """Sentinel failover disconnection / Step 3 (ROLE): the old master, started again, is
        made a replica by the sentinels; sluice never writes to it."""
        self.assertTrue(wait_until(lambda: self.current_master() == self.replica.port, 25))
        self.master.start()
        self.assertTrue(wait_until(lambda: self.master.role() == "slave", 25, 0.1),
                        "the sentinels did not demote the old master")
        for i in range(20):
            self.assertTrue(self.served_by_redis(730 + i))
        self.assertEqual(evalsha_calls(self.master.port), (0, 0))


class DemotedMaster(SluiceTestCase):
    """A fake sentinel names the master; the test demotes it under sluice's feet."""

    @classmethod
    def setUpClass(cls):
        cls.dir = policy_dir()
        cls.a = Node()
        cls.b = Node()
        cls.fake = FakeSentinel()
        cls.fake.master_port = cls.a.port
        cls.s = cls.start(cls.dir, env={
            "REDIS_URL": "redis+sentinel://127.0.0.1:%d/%s" % (cls.fake.port, MASTER)})

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.fake.stop()
            cls.a.stop()
            cls.b.stop()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def counted(self, user):
        return get(self.s.port, "/count", user)[0] == 200

    def test_readonly_reply_leaves_a_demoted_master_and_asks_again(self):
        """A master made a replica (REPLICAOF) while sluice is connected to it: the first write
        is answered READONLY, sluice leaves it, asks the sentinel again and writes to the
        master it names now, with no restart."""
        self.assertTrue(wait_until(lambda: self.counted(800) and
                                   evalsha_calls(self.a.port)[0] > 0, 10))
        # the start's questions are over (one more follows each subscription, 100 ms apart at
        # most): from here on only sluice's own finding makes it ask again
        time.sleep(0.5)
        asked = self.fake.asked
        self.fake.master_port = self.b.port
        cli(self.a.port, "REPLICAOF", "127.0.0.1", self.b.port)
        self.assertEqual(self.a.role(), "slave")
        b0 = evalsha_calls(self.b.port)[0]
        self.assertTrue(wait_until(lambda: self.counted(801) and
                                   evalsha_calls(self.b.port)[0] > b0, 5))
        self.assertGreater(self.fake.asked, asked)
        self.assertIn("read-only", self.s.read_log())

    def test_step3_role_a_named_replica_is_not_used(self):
        """Step 3: the sentinel names a node whose ROLE is slave: sluice does not use it
        (requests fall back in-process) and asks again until a master is named."""
        self.fake.master_port = None
        replica = Node(replicaof=self.b.port)
        try:
            self.fake.master_port = replica.port
            # Make sluice reconnect: the node it uses now goes away for a moment.
            cli(self.b.port, "CLIENT", "KILL", "TYPE", "normal")
            time.sleep(1.0)
            c0 = evalsha_calls(replica.port)
            for i in range(10):
                self.assertEqual(get(self.s.port, "/c/page", 810 + i)[1].get("x-cache"),
                                 "BYPASS")
            self.assertEqual(evalsha_calls(replica.port)[0] - c0[0], 0)
            self.assertIn("not a master", self.s.read_log())
            self.fake.master_port = self.b.port
            self.assertTrue(wait_until(lambda: self.counted(820), 5))
            self.assertTrue(wait_until(lambda: get(self.s.port, "/c/page", 821)[1]
                                       .get("x-cache") in ("HIT", "MISS"), 5))
        finally:
            replica.stop()


class NoSentinel(SluiceTestCase):
    """Step 1 with nobody answering at start: the store is down and the fallback answers."""

    @classmethod
    def setUpClass(cls):
        cls.dir = policy_dir()
        ports = [lib.free_port() for _ in range(2)]
        cls.s = cls.start(cls.dir, env={"REDIS_URL": "redis+sentinel://%s/%s" % (
            ",".join("127.0.0.1:%d" % p for p in ports), MASTER)})

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_step1_no_sentinel_reachable_at_start_falls_back(self):
        time.sleep(0.3)
        st, h, took = get(self.s.port, "/c/page", 900)
        self.assertEqual((st, h.get("x-cache")), (200, "BYPASS"))
        self.assertEqual(get(self.s.port, "/strict", 900)[0], 503)
        self.assertEqual(store_state(self.s), "degraded")
        self.assertIn("no sentinel of %s answered" % MASTER, self.s.read_log())


if __name__ == "__main__":
    lib.main()
