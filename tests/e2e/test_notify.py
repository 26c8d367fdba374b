"""End to end: database-driven invalidation. Rows changed in PostgreSQL behind sluice's back
(psql, not sluice) drop the cached entries the on_change declarations name, through the
triggers `sluice triggers` generates and the LISTEN connection of `sluice serve`.

This file restarts PostgreSQL, so it runs on a cluster of its own (pg_virtualenv), never on
one that other tests share."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import unittest

if __name__ == "__main__" and os.environ.get("SLUICE_NOTIFY_OWN_PG") != "1":
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["SLUICE_NOTIFY_OWN_PG"] = "1"
    os.execvpe("pg_virtualenv", ["pg_virtualenv", "-t", "-o", "max_connections=200",
                                 sys.executable, "-u", os.path.abspath(__file__)] + sys.argv[1:],
               env)

import lib
from lib import SluiceTestCase

POLICIES = os.path.join(lib.CRM, "policies")

# Users of the seed: 2 starter, 3 professional, 4 enterprise (1 is free: 100 requests an hour).
STARTER, PRO, ENTERPRISE = 2, 3, 4

LATENCY_LIMIT = 0.100  # seconds from the commit of a change to the first MISS
LATENCIES = []         # (from commit, from sending the statement) of every measurement


class Psql:
    """One psql session kept open, so a statement costs no connection setup."""

    def __init__(self, db):
        self.proc = subprocess.Popen(["psql", "-X", "-q", "-At", "-d", db],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.n = 0

    def run(self, sql):
        """Runs one statement (autocommit); returns its output lines. Raises on an error."""
        self.n += 1
        mark = "__sluice_done_%d__" % self.n
        self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo " + mark + "\n")
        self.proc.stdin.flush()
        out = []
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line == mark:
                break
            out.append(line)
        if any(l.startswith(("ERROR:", "psql:")) for l in out):
            raise RuntimeError("psql: %s" % "\n".join(out))
        return out

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


def install_triggers(db, policy_dir=POLICIES, check=True):
    """Pipes `sluice triggers POLICY_DIR` into psql; returns psql's CompletedProcess."""
    sql = subprocess.run([lib.BIN, "triggers", policy_dir], capture_output=True, text=True,
                         check=True).stdout
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db], input=sql,
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("installing the triggers failed: %s" % r.stderr)
    return r


def sluice_triggers(*args):
    return subprocess.run([lib.BIN, "triggers"] + list(args), capture_output=True, text=True)


def trigger_count(db):
    return int(lib.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'sluice_notify%'",
                        db=db))


def write_policy(text):
    d = tempfile.mkdtemp(prefix="sluice-notify-")
    with open(os.path.join(d, "policy.lua"), "w") as f:
        f.write(text)
    return d


class NotifyCase(SluiceTestCase):
    """Helpers: fill an entry, change rows with psql, wait for the MISS."""

    s = None
    sql = None

    def cache(self, path, user, s=None):
        st, h, b = (s or self.s).get(path, user=user)
        self.assertEqual(st, 200, b)
        return h.get("x-cache")

    def fill(self, path, user, s=None):
        """Makes the entry cached: the second of two reads is a HIT."""
        self.cache(path, user, s)
        self.assertEqual(self.cache(path, user, s), "HIT", (path, user))

    def change(self, sql):
        """
        Runs sql (autocommit) through the open psql session. Returns (sent, committed): the
        times the statement was sent and its commit was acknowledged.
        """
        sent = time.monotonic()
        out = self.sql.run(sql)
        return sent, time.monotonic(), out

    def wait_miss(self, path, user, t, s=None):
        """
        Reads until the entry is no longer a HIT; asserts that this took under LATENCY_LIMIT
        from the commit of the change `t` (what change() returned).
        """
        sent, committed = t[0], t[1]
        deadline = committed + 2.0
        while True:
            state = self.cache(path, user, s)
            now = time.monotonic()
            if state != "HIT":
                break
            if now > deadline:
                self.fail("%s of user %s is still a HIT %.0f ms after the commit" %
                          (path, user, (now - committed) * 1000))
            time.sleep(0.001)
        LATENCIES.append((now - committed, now - sent))
        self.assertLess(now - committed, LATENCY_LIMIT, "%s of user %s: MISS only %.1f ms "
                        "after the commit" % (path, user, (now - committed) * 1000))


class TriggersCommand(unittest.TestCase):
    """`sluice triggers`: help, errors, and its SQL against the real PostgreSQL."""

    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()

    def test_help(self):
        r = sluice_triggers("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: sluice triggers", r.stdout)
        self.assertIn("sluice_changes", r.stdout)

    def test_invalid_policy_is_reported_like_check(self):
        d = write_policy('on_change "contacts" { invalidate = { "crm:{user}" } }\n')
        r = sluice_triggers(d)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")  # nothing for psql to run
        check = subprocess.run([lib.BIN, "check", d], capture_output=True, text=True)
        self.assertEqual(check.returncode, 1)
        self.assertEqual(r.stderr, check.stdout)
        self.assertIn("policy.lua:1:", r.stderr)

    def test_install_twice_then_drop(self):
        db = lib.crm_database()
        for _ in range(2):
            r = install_triggers(db)
            self.assertEqual(r.stderr, "")  # no notices either
        # 7 tables: a row trigger and a TRUNCATE trigger each.
        self.assertEqual(trigger_count(db), 14)
        drop = sluice_triggers("--drop", POLICIES)
        self.assertEqual(drop.returncode, 0)
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db],
                           input=drop.stdout, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(trigger_count(db), 0)
        self.assertEqual(lib.psql("SELECT count(*) FROM pg_proc WHERE proname LIKE "
                                  "'sluice_notify%'", db=db), "0")

    def test_missing_column_installs_nothing(self):
        db = lib.crm_database()
        d = write_policy('on_change "contacts" { invalidate = { "crm:{row.owner_id}" } }\n'
                         'on_change "deals" { invalidate = { "crm:{row.ownr_id}" } }\n')
        r = install_triggers(db, d, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('on_change "deals" (%s/policy.lua:2): table "deals" has no column '
                      '"ownr_id"' % d, r.stderr)
        self.assertEqual(trigger_count(db), 0)  # one transaction: contacts got none either

    def test_payloads(self):
        """What the triggers send, read back with LISTEN in one psql session."""
        db = lib.crm_database()
        install_triggers(db)
        r = subprocess.run(
            ["psql", "-X", "-q", "-d", db], capture_output=True, text=True,
            input="LISTEN sluice_changes;\n"
                  "UPDATE contacts SET owner_id = 5 WHERE id = 4;\n"
                  "BEGIN;\n"
                  "UPDATE contacts SET company = 'x' WHERE owner_id = 7;\n"
                  "INSERT INTO deals (owner_id, title) VALUES (8, 'd');\n"
                  "COMMIT;\n"
                  "DELETE FROM interactions WHERE id = (SELECT min(id) FROM interactions "
                  "WHERE owner_id = 9);\n"
                  "TRUNCATE events;\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        payloads = [line.split('payload "', 1)[1].rsplit('" received', 1)[0]
                    for line in r.stdout.splitlines() if "payload" in line]
        self.assertEqual(payloads, [
            '{"table":"contacts","op":"UPDATE","old":{"owner_id":"4"},"new":{"owner_id":"5"}}',
            # 100 rows of one owner: PostgreSQL folds equal payloads of a transaction into one.
            '{"table":"contacts","op":"UPDATE","old":{"owner_id":"7"},"new":{"owner_id":"7"}}',
            '{"table":"deals","op":"INSERT","new":{"owner_id":"8"}}',
            '{"table":"interactions","op":"DELETE","old":{"owner_id":"9"}}',
            '{"table":"events","op":"TRUNCATE"}',
        ])

    def test_oversized_row_is_sent_without_rows(self):
        db = lib.crm_database()
        d = write_policy('on_change "contacts" { invalidate = { "c:{row.notes}" } }\n')
        lib.psql("ALTER TABLE contacts ADD COLUMN notes text", db=db)
        install_triggers(db, d)
        r = subprocess.run(
            ["psql", "-X", "-q", "-d", db], capture_output=True, text=True,
            input="LISTEN sluice_changes;\n"
                  "UPDATE contacts SET notes = repeat('n', 9000) WHERE id = 1;\n"
                  "UPDATE contacts SET notes = 'short' WHERE id = 1;\n"
                  "UPDATE contacts SET notes = 'shorter' WHERE id = 1;\n")
        self.assertEqual(r.returncode, 0, r.stderr)  # the writes themselves never fail
        # A payload past 7900 bytes (old or new row) goes without rows: "the rows are unknown".
        self.assertEqual(r.stdout.count('payload "{"table":"contacts","op":"UPDATE"}"'), 2,
                         r.stdout)
        self.assertIn('"old":{"notes":"short"},"new":{"notes":"shorter"}', r.stdout)


class Notify(NotifyCase):
    """The example CRM: its own policies, triggers installed, rows changed with psql."""

    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        install_triggers(cls.db)
        cls.s = cls.start(POLICIES, database=cls.db)
        cls.sql = Psql(cls.db)
        wait_listening(cls.s)

    @classmethod
    def tearDownClass(cls):
        cls.sql.close()
        super().tearDownClass()

    def test_update_invalidates_within_100ms(self):
        self.fill("/api/crm?type=contacts", STARTER)
        for k in range(10):
            self.fill("/api/crm?type=contacts", PRO)
            self.fill("/api/dashboard", PRO)
            ch = self.change("UPDATE contacts SET company = 'Acme %d' WHERE owner_id = %d" %
                             (k, PRO))
            self.wait_miss("/api/crm?type=contacts", PRO, ch)
            self.assertEqual(self.cache("/api/dashboard", PRO), "MISS")  # dash:{row.owner_id}
            self.assertEqual(self.cache("/api/crm?type=contacts", STARTER), "HIT")

    def test_status_reports_the_listener(self):
        self.fill("/api/crm?type=contacts", PRO)
        ch = self.change("UPDATE contacts SET company = 'Status' WHERE owner_id = %d" % PRO)
        self.wait_miss("/api/crm?type=contacts", PRO, ch)
        st, _, body = self.s.admin("GET", "/status")
        self.assertEqual(st, 200)
        n = json.loads(body)["notify"]
        self.assertEqual((n["state"], n["channel"]), ("listening", "sluice_changes"))
        self.assertGreaterEqual(n["notifications"], 1)
        self.assertGreaterEqual(n["invalidations"], 1)

    def test_moving_a_row_invalidates_both_owners(self):
        cid = self.sql.run("SELECT min(id) FROM contacts WHERE owner_id = %d" % STARTER)[0]
        for user in (STARTER, PRO, ENTERPRISE):
            self.fill("/api/crm?type=contacts", user)
        ch = self.change("UPDATE contacts SET owner_id = %d WHERE id = %s" % (ENTERPRISE, cid))
        self.wait_miss("/api/crm?type=contacts", STARTER, ch)
        self.wait_miss("/api/crm?type=contacts", ENTERPRISE, ch)
        self.assertEqual(self.cache("/api/crm?type=contacts", PRO), "HIT")
        # and back
        self.fill("/api/crm?type=contacts", STARTER)
        self.fill("/api/crm?type=contacts", ENTERPRISE)
        ch = self.change("UPDATE contacts SET owner_id = %d WHERE id = %s" % (STARTER, cid))
        self.wait_miss("/api/crm?type=contacts", ENTERPRISE, ch)
        self.wait_miss("/api/crm?type=contacts", STARTER, ch)

    def test_insert_and_delete(self):
        self.fill("/api/crm?type=contacts", ENTERPRISE)
        ch = self.change("INSERT INTO contacts (owner_id, name) VALUES (%d, 'Grace') "
                         "RETURNING id" % ENTERPRISE)
        cid = ch[2][0]
        self.wait_miss("/api/crm?type=contacts", ENTERPRISE, ch)
        self.fill("/api/crm?type=contacts", ENTERPRISE)
        ch = self.change("DELETE FROM contacts WHERE id = %s" % cid)
        self.wait_miss("/api/crm?type=contacts", ENTERPRISE, ch)

    def test_every_watched_table(self):
        for table in ("projects", "deals", "interactions"):
            path = "/api/crm?type=" + table
            self.fill(path, ENTERPRISE)
            self.fill("/api/dashboard", ENTERPRISE)
            ch = self.change("UPDATE %s SET owner_id = owner_id WHERE id = (SELECT min(id) "
                             "FROM %s WHERE owner_id = %d)" % (table, table, ENTERPRISE))
            self.wait_miss(path, ENTERPRISE, ch)
            self.assertEqual(self.cache("/api/dashboard", ENTERPRISE), "MISS")
        # messages name only the dashboard
        self.fill("/api/crm?type=contacts", ENTERPRISE)
        self.fill("/api/dashboard", ENTERPRISE)
        ch = self.change("UPDATE messages SET read = NOT read WHERE id = (SELECT min(id) "
                         "FROM messages WHERE owner_id = %d)" % ENTERPRISE)
        self.wait_miss("/api/dashboard", ENTERPRISE, ch)
        self.assertEqual(self.cache("/api/crm?type=contacts", ENTERPRISE), "HIT")

    def test_truncate_drops_every_entry(self):
        # TRUNCATE names no rows: every cached entry goes, the other users' too.
        self.fill("/api/crm?type=contacts", PRO)
        self.fill("/api/dashboard", ENTERPRISE)
        ch = self.change("TRUNCATE events")
        self.wait_miss("/api/crm?type=contacts", PRO, ch)
        self.assertEqual(self.cache("/api/dashboard", ENTERPRISE), "MISS")
        self.assertIn("sluice: notify: a change came without its rows", self.s.read_log())

    def test_unwatched_table_changes_nothing(self):
        self.fill("/api/crm?type=contacts", PRO)
        self.change("UPDATE users SET name = name || '' WHERE id = %d" % PRO)
        time.sleep(0.2)
        self.assertEqual(self.cache("/api/crm?type=contacts", PRO), "HIT")


class SchemaQualified(NotifyCase):
    """on_change "Sales.Leads": a schema-qualified table whose names need quoting."""

    POLICY = r'''
identity { user = header "X-User-Id" }

endpoint "GET /leads" {
  sql   = [[SELECT id, name FROM "Sales"."Leads" WHERE owner = $1 ORDER BY id]],
  args  = { "{user}" },
  cache = { ttl = "5m", key = "leads:{user}", tags = { "leads:{user}" } },
}

on_change "Sales.Leads" { invalidate = { "leads:{row.owner}" } }
'''

    @classmethod
    def setUpClass(cls):
        cls.db = "t_sales_%d" % os.getpid()
        lib.psql("DROP DATABASE IF EXISTS %s" % cls.db)
        lib.psql("CREATE DATABASE %s" % cls.db)
        lib.psql('CREATE SCHEMA "Sales"; CREATE TABLE "Sales"."Leads" (id serial PRIMARY KEY, '
                 'owner text NOT NULL, name text NOT NULL); INSERT INTO "Sales"."Leads" '
                 "(owner, name) VALUES ('ann', 'a'), ('bob', 'b')", db=cls.db)
        cls.dir = write_policy(cls.POLICY)
        install_triggers(cls.db, cls.dir)
        cls.s = cls.start(cls.dir, database=cls.db)
        cls.sql = Psql(cls.db)
        wait_listening(cls.s)

    @classmethod
    def tearDownClass(cls):
        cls.sql.close()
        super().tearDownClass()

    def test_update_invalidates(self):
        self.fill("/leads", "ann")
        self.fill("/leads", "bob")
        ch = self.change('''UPDATE "Sales"."Leads" SET name = 'a2' WHERE owner = 'ann' ''')
        self.wait_miss("/leads", "ann", ch)
        self.assertEqual(self.cache("/leads", "bob"), "HIT")
        ch = self.change('''UPDATE "Sales"."Leads" SET owner = 'bob' WHERE owner = 'ann' ''')
        self.wait_miss("/leads", "ann", ch)
        self.wait_miss("/leads", "bob", ch)


class ReloadAddsOnChange(NotifyCase):
    """A policy without on_change holds no connection; a reload that adds one starts it."""

    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        install_triggers(cls.db)
        cls.dir = lib.copy_policies(POLICIES)
        with open(os.path.join(cls.dir, "50-changes.lua")) as f:
            cls.changes = f.read()
        os.unlink(os.path.join(cls.dir, "50-changes.lua"))
        cls.s = cls.start(cls.dir, database=cls.db)
        cls.sql = Psql(cls.db)

    @classmethod
    def tearDownClass(cls):
        cls.sql.close()
        super().tearDownClass()

    def test_reload_starts_listening(self):
        self.fill("/api/crm?type=contacts", PRO)
        self.change("UPDATE contacts SET company = 'unseen' WHERE owner_id = %d" % PRO)
        time.sleep(1.5)
        self.assertNotIn("notify: listening", self.s.read_log())
        self.assertEqual(self.cache("/api/crm?type=contacts", PRO), "HIT")  # nobody listens

        with open(os.path.join(self.dir, "50-changes.lua"), "w") as f:
            f.write(self.changes)
        wait_listening(self.s)
        self.fill("/api/crm?type=contacts", STARTER)
        ch = self.change("UPDATE contacts SET company = 'seen' WHERE owner_id = %d" % PRO)
        self.wait_miss("/api/crm?type=contacts", PRO, ch)
        self.assertEqual(self.cache("/api/crm?type=contacts", STARTER), "HIT")


class PostgresRestart(NotifyCase):
    """The LISTEN connection comes back by itself after PostgreSQL restarts."""

    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        install_triggers(cls.db)
        cls.s = cls.start(POLICIES, database=cls.db)
        cls.sql = None
        wait_listening(cls.s)

    @classmethod
    def tearDownClass(cls):
        if cls.sql:
            cls.sql.close()
        super().tearDownClass()

    def test_reconnects_after_restart(self):
        self.__class__.sql = Psql(self.db)
        self.fill("/api/crm?type=contacts", PRO)
        ch = self.change("UPDATE contacts SET company = 'before' WHERE owner_id = %d" % PRO)
        self.wait_miss("/api/crm?type=contacts", PRO, ch)
        self.sql.close()
        self.__class__.sql = None
        self.fill("/api/crm?type=contacts", ENTERPRISE)

        restart_postgres()
        log = wait_log(self.s, "listening again", 30)
        self.assertEqual(log.count("lost the connection to PostgreSQL"), 1, log)
        self.assertEqual(log.count("listening again"), 1, log)
        self.assertIsNone(self.s.proc.poll(), "sluice exited:\n" + log)

        # The workers' pools reconnect on demand: the first reads may be 503.
        deadline = time.monotonic() + 20
        while self.s.get("/api/crm?type=contacts", user=PRO)[0] != 200:
            self.assertLess(time.monotonic(), deadline, "sluice does not serve again")
            time.sleep(0.1)
        # What changed while nobody listened is unknown: every entry was dropped.
        wait_log(self.s, "sluice: notify: dropped", 10)
        self.assertEqual(self.cache("/api/crm?type=contacts", ENTERPRISE), "MISS")
        self.__class__.sql = Psql(self.db)
        self.fill("/api/crm?type=contacts", PRO)
        self.fill("/api/crm?type=contacts", STARTER)
        ch = self.change("UPDATE contacts SET company = 'after' WHERE owner_id = %d" % PRO)
        self.wait_miss("/api/crm?type=contacts", PRO, ch)
        self.assertEqual(self.cache("/api/crm?type=contacts", STARTER), "HIT")
        self.assertIsNone(self.s.proc.poll())


class WithRedis(NotifyCase):
    """Two instances sharing one Redis: a change dropped by the listeners is gone for both."""

    @classmethod
    def setUpClass(cls):
        cls.redis = lib.RedisServer()
        cls.db = lib.crm_database()
        install_triggers(cls.db)
        env = {"REDIS_URL": cls.redis.url}
        cls.a = cls.start(POLICIES, database=cls.db, env=env)
        cls.b = cls.start(POLICIES, database=cls.db, env=env)
        cls.s = cls.a
        cls.sql = Psql(cls.db)
        wait_listening(cls.a)
        wait_listening(cls.b)

    @classmethod
    def tearDownClass(cls):
        cls.sql.close()
        try:
            super().tearDownClass()
        finally:
            cls.redis.stop()

    @staticmethod
    def notified(s):
        """The invalidations instance s made on notifications, as /metrics counts them (once
        the store confirmed them)."""
        st, _, body = s.admin("GET", "/metrics")
        for line in body.decode().splitlines():
            if line.startswith('sluice_invalidations_total{via="notify"} '):
                return float(line.split()[-1])
        raise AssertionError("no notify invalidations in /metrics")

    def test_shared_entries_are_dropped(self):
        for k in range(5):
            self.fill("/api/crm?type=contacts", PRO, s=self.a)
            self.assertEqual(self.cache("/api/crm?type=contacts", PRO, s=self.b), "HIT")
            self.fill("/api/crm?type=contacts", STARTER, s=self.b)
            before = (self.notified(self.a), self.notified(self.b))
            ch = self.change("UPDATE contacts SET company = 'R%d' WHERE owner_id = %d" % (k, PRO))
            self.wait_miss("/api/crm?type=contacts", PRO, ch, s=self.b if k % 2 else self.a)
            self.assertEqual(self.cache("/api/crm?type=contacts", STARTER, s=self.a), "HIT")
            # Both instances listen and both drop the tags; the next round's fill must not
            # race the slower one's (a second drop costs a miss, never a stale answer).
            deadline = time.monotonic() + 5
            while self.notified(self.a) == before[0] or self.notified(self.b) == before[1]:
                self.assertLess(time.monotonic(), deadline, "an instance missed the change")
                time.sleep(0.01)


def wait_log(s, text, timeout):
    """Waits until the server's log holds `text`; returns the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = s.read_log()
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError("no %r in the log after %ss:\n%s" % (text, timeout, log))
        time.sleep(0.05)


def wait_listening(s):
    wait_log(s, "sluice: notify: listening on sluice_changes", 20)


def restart_postgres():
    """Restarts the cluster serving PGPORT (a pg_virtualenv cluster; see the module doc)."""
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        ver, name, port = line.split()[:3]
        if port != os.environ.get("PGPORT", "5432"):
            continue
        r = subprocess.run(["pg_ctlcluster", ver, name, "stop", "-m", "fast"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError("stopping PostgreSQL failed: %s%s" % (r.stdout, r.stderr))
        # Start again; right after a stop pg_ctlcluster may still see the old postmaster.
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run(["pg_ctlcluster", ver, name, "start"], capture_output=True,
                               text=True)
            if r.returncode == 0 and subprocess.run(["pg_isready", "-t", "30"],
                                                    capture_output=True).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError("starting PostgreSQL failed: %s%s" % (r.stdout, r.stderr))
            time.sleep(0.2)
    raise unittest.SkipTest("no cluster on port %s to restart" % os.environ.get("PGPORT"))


def tearDownModule():
    for i, what in ((0, "commit"), (1, "sending the statement")):
        ms = sorted(x[i] * 1000 for x in LATENCIES)
        if ms:
            print("invalidation latency, %s -> first MISS: n=%d, median %.1f ms, p90 %.1f ms, "
                  "max %.1f ms" % (what, len(ms), statistics.median(ms),
                                   ms[max(0, int(len(ms) * 0.9) - 1)], ms[-1]), file=sys.stderr)


if __name__ == "__main__":
    lib.main()
