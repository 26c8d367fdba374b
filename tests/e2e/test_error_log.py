"""End to end: the error log. Every 5xx answer and every origin failure leaves exactly one
line carrying its request id, its route and its cause (a statement failing on a bad column,
a slow upstream, an unreachable database, an origin failure served stale); --log-format json
makes every line a JSON object; --log-level leaves out what is below it.

Runs against real PostgreSQL (a copy of the CRM example's database) and tests/e2e/origin.py.
"""

import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid

import lib
from lib import SluiceTestCase
from origin import Origin

POLICY = r'''
identity { user = header "X-User-Id" }
upstream "slow" { url = "@ORIGIN@", timeout = "300ms" }
upstream "app" { url = "@ORIGIN@" }
endpoint "GET /badcol" { sql = "SELECT no_such_column_q FROM contacts" }
endpoint "GET /one" { sql = "SELECT 1 AS one", one = true }
endpoint "GET /slow" { upstream = "slow" }
endpoint "GET /app/*" { upstream = "app" }
endpoint "GET /kept" {
  upstream = "app", cache = { ttl = "1s", key = "kept", shared = true, stale_if_error = "1h" },
}
'''

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn|info|debug) sluice: ")


def policy_dir(**subs):
    text = POLICY
    for k, v in subs.items():
        text = text.replace("@%s@" % k, str(v))
    d = tempfile.mkdtemp(prefix="sluice-errlog-")
    with open(os.path.join(d, "policy.lua"), "w") as f:
        f.write(text)
    return d


class ErrorLogCase(SluiceTestCase):
    ARGS = ()
    DATABASE = True

    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.kill)
        cls.dir = policy_dir(ORIGIN=cls.origin.url)
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        # GET /badcol's statement fails on purpose: the start must not check it first.
        cls.s = cls.start(cls.dir, database=lib.crm_database() if cls.DATABASE else None,
                          args=("--no-sql-check",) + tuple(cls.ARGS), env=cls.env())

    @classmethod
    def env(cls):
        return None

    def lines_of(self, rid, settle=0.3):
        """The log's lines that carry rid, once no more come."""
        time.sleep(settle)
        return [l for l in self.s.read_log().splitlines() if rid in l]

    def one_line(self, path, status, headers=None):
        """Requests path with a fresh request id; checks the answer's status and that exactly
        one log line carries the id. Returns that line."""
        rid = "t-" + uuid.uuid4().hex
        st, h, b = self.s.request("GET", path, dict(headers or {}, **{"X-Request-Id": rid}))
        self.assertEqual(st, status, b)
        self.assertEqual(h.get("x-request-id"), rid)
        lines = self.lines_of(rid)
        self.assertEqual(len(lines), 1, "\n".join(lines) or self.s.read_log()[-3000:])
        return lines[0]


class EachFailureOnce(ErrorLogCase):
    def test_a_502_from_a_statement_on_a_bad_column_leaves_one_line_with_its_cause(self):
        line = self.one_line("/badcol", 502)
        self.assertRegex(line, LINE)
        self.assertIn(" error sluice: request t-", line)
        self.assertIn(": GET /badcol: 502 ", line)
        self.assertIn("no_such_column_q", line)  # PostgreSQL's words, for the log only
        self.assertIn("42703", line)

    def test_a_504_from_a_slow_upstream_leaves_one_line_with_its_cause(self):
        t0 = time.monotonic()
        line = self.one_line("/slow?delay_ms=3000", 504)
        self.assertLess(time.monotonic() - t0, 2.5)
        self.assertIn(" error sluice: ", line)
        self.assertIn(": GET /slow: 504 the upstream did not answer in time", line)
        self.assertIn('upstream "slow" (127.0.0.1:%d)' % self.origin.port, line)

    def test_an_upstreams_own_5xx_leaves_one_warning(self):
        line = self.one_line("/app/x?status=503", 503)
        self.assertIn(" warn sluice: ", line)
        self.assertIn(": GET /app/*: 503", line)

    def test_an_origin_failure_served_stale_leaves_one_warning(self):
        self.assertEqual(self.s.request("GET", "/kept")[0], 200)
        time.sleep(1.2)  # past the TTL, within stale_if_error
        self.origin.config("/kept", status=500)
        try:
            line = self.one_line("/kept", 200)
        finally:
            self.origin.config("/kept", status=200)
        self.assertIn(" warn sluice: ", line)
        self.assertIn(": GET /kept: serving a stale answer instead of 500", line)

    def test_a_4xx_or_a_2xx_leaves_none(self):
        for path, status in (("/one", 200), ("/nowhere", 404), ("/app/x", 200)):
            rid = "quiet-" + uuid.uuid4().hex
            st, _, _ = self.s.request("GET", path, {"X-Request-Id": rid})
            self.assertEqual(st, status)
            self.assertEqual(self.lines_of(rid, settle=0.1), [])


class UnreachableDatabase(ErrorLogCase):
    DATABASE = False

    @classmethod
    def env(cls):
        return {"DATABASE_URL": "host=127.0.0.1 port=%d dbname=none connect_timeout=1"
                % lib.free_port()}

    def test_a_503_from_an_unreachable_database_leaves_one_line_with_its_cause(self):
        line = self.one_line("/one", 503)
        self.assertIn(" error sluice: ", line)
        self.assertIn(": GET /one: 503 the database is unavailable: ", line)
        # Again: each request its own line, not one for the outage.
        self.one_line("/one", 503)


class Rotation(ErrorLogCase):
    """Standard error is a file here (the harness's): SIGUSR1 opens its path again."""
    DATABASE = False

    def test_after_a_rename_and_sigusr1_lines_go_to_a_new_file_at_the_path(self):
        before = self.one_line("/app/x?status=502", 502)
        path = self.s.log.name
        os.rename(path, path + ".1")
        self.addCleanup(os.unlink, path + ".1")
        os.kill(self.s.proc.pid, signal.SIGUSR1)
        end = time.monotonic() + 5
        while not os.path.exists(path):
            self.assertLess(time.monotonic(), end, "no new file")
            time.sleep(0.02)
        after = self.one_line("/app/x?status=503", 503)  # read from the new file
        with open(path + ".1") as f:
            old = f.read()
        self.assertIn(before, old)
        self.assertNotIn(after, old)
        self.assertIn("SIGUSR1: reopened the error log", self.s.read_log())


class JsonLines(ErrorLogCase):
    ARGS = ("--log-format", "json")

    def test_every_line_is_a_json_object_and_a_failure_carries_its_fields(self):
        rid = "json-" + uuid.uuid4().hex
        st, _, _ = self.s.request("GET", "/badcol", {"X-Request-Id": rid})
        self.assertEqual(st, 502)
        time.sleep(0.3)
        lines = self.s.read_log().splitlines()
        self.assertTrue(lines)
        objs = [json.loads(l) for l in lines]  # every line, the start's too
        for o in objs:
            self.assertIn(o["level"], ("error", "warn", "info", "debug"))
            self.assertRegex(o["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertIsInstance(o["msg"], str)
        mine = [o for o in objs if rid in json.dumps(o)]
        self.assertEqual(len(mine), 1, mine)
        o = mine[0]
        self.assertEqual((o["level"], o["request_id"], o["route"], o["status"]),
                         ("error", rid, "GET /badcol", "502"))
        self.assertIn("42703", o["msg"])


class LevelError(ErrorLogCase):
    ARGS = ("--log-level", "error")

    def test_only_errors_are_written(self):
        st, _, _ = self.s.request("GET", "/app/x?status=503")  # a warning
        self.assertEqual(st, 503)
        self.one_line("/badcol", 502)  # an error
        log = self.s.read_log()
        levels = {LINE.match(l).group(1) for l in log.splitlines() if LINE.match(l)}
        self.assertEqual(levels, {"error"}, log)
        self.assertNotIn("endpoints from", log)  # the start line is information


if __name__ == "__main__":
    lib.main()
