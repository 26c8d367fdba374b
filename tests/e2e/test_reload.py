"""End to end: hot reload (inotify, SIGHUP, POST /reload), /status, explain."""

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse

import lib
from lib import SluiceTestCase

TIERS = 'tier "free" {{ limit = {limit}, window = "1h" }}\n'
REST = '''
identity { user = header "X-User-Id", default_tier = "free" }
endpoint "GET /ping" {
  body = '{"pong":true}',
  cache = { ttl = "5m", key = "ping:{user}" },
  limit = "tier",
}
'''


def write_policy(d, limit, name="00-main.lua"):
    """Writes the whole file at once (rename), as deploy tools do."""
    tmp = os.path.join(d, ".tmp-" + name)
    with open(tmp, "w") as f:
        f.write(TIERS.format(limit=limit) + REST)
    os.rename(tmp, os.path.join(d, name))


def limit_of(s, user="1"):
    st, h, _ = s.get("/ping", user=user)
    assert st == 200, st
    return int(h["x-ratelimit-limit"])


def wait_for(pred, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Reload(SluiceTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-pol-")
        write_policy(self.dir, 1000)
        self.s = self.start(self.dir)

    def status(self):
        st, _, b = self.s.admin("GET", "/status")
        self.assertEqual(st, 200)
        return json.loads(b)

    def test_status_lists_generation_and_files(self):
        st = self.status()
        self.assertEqual(st["generation"], 1)
        self.assertEqual([os.path.basename(f["path"]) for f in st["files"]], ["00-main.lua"])
        self.assertEqual(len(st["files"][0]["hash"]), 16)
        self.assertEqual(st["tenants"], [])
        self.assertEqual((st["store"]["kind"], st["store"]["state"]), ("memory", "ok"))
        # Each worker publishes its store's state when it starts, then every 500 ms; the
        # admin listener may answer before both have started.
        deadline = time.time() + 5
        while len(st["store"]["workers"]) < 2 and time.time() < deadline:
            time.sleep(0.05)
            st = self.status()
        self.assertEqual(len(st["store"]["workers"]), 2)
        self.assertEqual(st["tenant_errors"], [])
        self.assertEqual(st["last_reload"]["result"], "ok")

    def test_file_change_is_picked_up_by_inotify(self):
        self.assertEqual(limit_of(self.s), 1000)
        t0 = time.time()
        write_policy(self.dir, 2000)
        self.assertTrue(wait_for(lambda: limit_of(self.s) == 2000), "new generation never served")
        elapsed = time.time() - t0
        self.assertEqual(self.status()["generation"], 2)
        self.assertEqual(self.status()["last_reload"]["trigger"], "inotify")
        print("\nwrite -> new generation serving: %.0f ms" % (elapsed * 1000))

    def test_broken_file_keeps_the_old_set_and_fixing_recovers(self):
        self.assertEqual(limit_of(self.s), 1000)
        with open(os.path.join(self.dir, "50-broken.lua"), "w") as f:
            f.write('\nendpoint "GET /x" { cache = { tll = "5m" } }\n')
        self.assertTrue(wait_for(lambda: self.status()["last_reload"]["result"] == "error"))
        st = self.status()
        self.assertEqual(st["generation"], 1)
        self.assertRegex(st["last_reload"]["error"], r"50-broken\.lua:2: ")
        self.assertEqual(limit_of(self.s), 1000)  # still serving the old set
        os.unlink(os.path.join(self.dir, "50-broken.lua"))
        write_policy(self.dir, 3000)
        self.assertTrue(wait_for(lambda: limit_of(self.s) == 3000))
        st = self.status()
        self.assertEqual(st["last_reload"]["result"], "ok")
        self.assertIsNone(st["last_reload"]["error"])

    def test_post_reload_and_sighup(self):
        st, _, b = self.s.admin("POST", "/reload")
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["generation"], 2)
        self.s.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: self.status()["generation"] == 3))
        self.assertEqual(self.status()["last_reload"]["trigger"], "signal")
        st, _, _ = self.s.admin("GET", "/reload")
        self.assertEqual(st, 405)

    def test_post_reload_of_a_broken_set_is_422_and_changes_nothing(self):
        with open(os.path.join(self.dir, "00-main.lua"), "a") as f:
            f.write("\nthis is not lua\n")
        st, h, b = self.s.admin("POST", "/reload")
        # inotify may have loaded (and refused) it first: either way nothing changed
        self.assertEqual(st, 422, b)
        self.assertEqual(h["content-type"], "application/problem+json")
        self.assertIn("00-main.lua:", json.loads(b)["errors"])
        self.assertEqual(self.status()["generation"], 1)
        self.assertEqual(limit_of(self.s), 1000)

    def test_explain_on_the_admin_listener(self):
        q = urllib.parse.urlencode([("request", "GET /ping"), ("header", "X-User-Id: a:b")])
        st, _, b = self.s.admin("GET", "/explain?" + q)
        self.assertEqual(st, 200, b)
        e = json.loads(b)
        self.assertEqual(e["endpoint"]["name"], "GET /ping")
        self.assertEqual(e["cache"]["key"], "ping:a%3Ab")
        self.assertEqual(e["limits"][0]["key"], "tier:u:a%3Ab")
        self.assertEqual(e["limits"][0]["limit"], 1000)
        self.assertEqual(e["generation"], 1)
        st, _, _ = self.s.admin("GET", "/explain")
        self.assertEqual(st, 400)


class ReloadUnderLoad(SluiceTestCase):
    def test_fifty_changes_under_load_no_failed_or_mixed_response(self):
        d = tempfile.mkdtemp(prefix="sluice-pol-")
        write_policy(d, 100000)
        s = self.start(d)
        stop = threading.Event()
        errors, seen, count = [], set(), [0]
        lock = threading.Lock()

        def client(n):
            import http.client
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            while not stop.is_set():
                try:
                    conn.request("GET", "/ping", headers={"X-User-Id": "u%d" % n})
                    r = conn.getresponse()
                    body = r.read()
                    lim = r.getheader("X-RateLimit-Limit")
                    pol = r.getheader("RateLimit-Policy")
                    ok = (r.status == 200 and body == b'{"pong":true}' and lim is not None and
                          pol == '"free";q=%s;w=3600' % lim)
                    with lock:
                        count[0] += 1
                        if ok:
                            seen.add(int(lim))
                        else:
                            errors.append((r.status, lim, pol, body[:100]))
                except Exception as e:  # a failed request is a test failure
                    with lock:
                        errors.append(repr(e))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            for gen in range(1, 51):
                write_policy(d, 100000 + gen)
                time.sleep(0.15)  # longer than the debounce: each write is its own reload
        finally:
            time.sleep(0.3)
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(errors, [])
        self.assertGreater(count[0], 500)
        self.assertIn(100050, seen)
        self.assertTrue(seen <= set(range(100000, 100051)), seen)
        st = json.loads(s.admin("GET", "/status")[2])
        self.assertGreaterEqual(st["generation"], 40)  # bursts may merge into one reload
        print("\n%d requests across %d generations, 0 failed" % (count[0], len(seen)))


class ReloadLeaks(SluiceTestCase):
    def test_thousand_reloads_leave_rss_and_fds_where_they_were(self):
        d = lib.copy_policies(os.path.join(lib.CRM, "policies"))
        s = self.start(d, args=["--no-watch"])
        pid = s.proc.pid
        for _ in range(50):  # warm up allocator arenas
            self.assertEqual(s.admin("POST", "/reload")[0], 200)
        time.sleep(0.2)  # the last admin connection is closed on the server side too
        fds0, rss0 = fd_count(pid), rss_kb(pid)
        for _ in range(1000):
            self.assertEqual(s.admin("POST", "/reload")[0], 200)
        time.sleep(0.2)
        fds1, rss1 = fd_count(pid), rss_kb(pid)
        print("\nfds %d -> %d, rss %d kB -> %d kB" % (fds0, fds1, rss0, rss1))
        self.assertLessEqual(fds1, fds0)
        if not lib.SANITIZED:  # ASan's quarantine holds freed memory; LeakSanitizer checks leaks
            self.assertLess(rss1 - rss0, 4096)


class AdminAccess(SluiceTestCase):
    def test_token_is_required_when_set(self):
        d = os.path.join(lib.CRM, "policies")
        s = self.start(d, env={"SLUICE_ADMIN_TOKEN": "s3cret"})
        self.assertEqual(s.admin("GET", "/status")[0], 401)
        self.assertEqual(s.admin("GET", "/status", {"Authorization": "Bearer nope"})[0], 401)
        self.assertEqual(s.admin("GET", "/status", {"Authorization": "Bearer s3cret"})[0], 200)

    def test_non_loopback_admin_without_token_refuses_to_start(self):
        d = os.path.join(lib.CRM, "policies")
        env = dict(os.environ)
        env.pop("SLUICE_ADMIN_TOKEN", None)
        r = subprocess.run([lib.BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0", d],
                           capture_output=True, text=True, timeout=20, env=env)
        self.assertEqual(r.returncode, 2)
        self.assertIn("SLUICE_ADMIN_TOKEN", r.stderr)


class ExplainCli(SluiceTestCase):
    def test_explain_prints_endpoint_limits_keys_and_tags(self):
        d = os.path.join(lib.CRM, "policies")
        r = subprocess.run([lib.BIN, "explain", d, "GET /api/reports/pipeline", "-H", "X-User-Id: 7",
                            "--tier", "starter"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        e = json.loads(r.stdout)
        self.assertEqual(e["endpoint"]["name"], "GET /api/reports/pipeline")
        self.assertTrue(e["endpoint"]["file"].endswith("40-expensive.lua"))
        self.assertEqual([(x["name"], x["limit"], x["key"]) for x in e["limits"]],
                         [("starter", 1000, "tier:u:7"), ("expensive", 10, "expensive:7")])
        self.assertEqual(e["limits"][1]["algorithm"], "sliding_log")
        self.assertEqual(e["caller"]["tier"], "starter")
        self.assertIn("crm:7", e["cache"]["tags"])
        r = subprocess.run([lib.BIN, "explain", d, "DELETE /api/crm/contacts/5", "-H",
                            "X-User-Id: 7"], capture_output=True, text=True)
        e = json.loads(r.stdout)
        self.assertEqual(sorted(e["invalidate"]), ["crm:7", "dash:7"])
        r = subprocess.run([lib.BIN, "explain", d, "GET /nowhere"], capture_output=True, text=True)
        self.assertEqual(json.loads(r.stdout)["status"], 404)

    def test_explain_shows_the_tenant_overrides_applied(self):
        d = os.path.join(lib.CRM, "policies")
        r = subprocess.run([lib.BIN, "explain", d, "GET /api/crm?type=contacts", "-H",
                            "X-User-Id: 5", "-H", "X-Tenant-Id: acme"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        e = json.loads(r.stdout)
        self.assertEqual(e["tenant"]["name"], "acme")
        self.assertTrue(e["tenant"]["tier_override"])
        self.assertGreater(len(e["tenant"]["hooks"]), 0)
        plain = json.loads(subprocess.run([lib.BIN, "explain", d, "GET /api/crm?type=contacts",
                                           "-H", "X-User-Id: 5"], capture_output=True,
                                          text=True).stdout)
        self.assertIsNone(plain["tenant"])
        self.assertNotEqual(e["limits"][0]["limit"], plain["limits"][0]["limit"])


if __name__ == "__main__":
    lib.main()
