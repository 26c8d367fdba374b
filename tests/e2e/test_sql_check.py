"""End to end: the SQL of a policy set checked against PostgreSQL by `sluice check`, at the
start of `sluice serve` and on every reload (statements prepared and described, never run)."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import lib
from lib import SluiceTestCase

SCHEMA = """
CREATE TYPE plan_kind AS ENUM ('free', 'pro');
CREATE TABLE users (id bigint PRIMARY KEY, plan text NOT NULL, plan_enum plan_kind NOT NULL,
                    plan_id integer NOT NULL);
CREATE TABLE tickets (id bigserial PRIMARY KEY, owner_id bigint NOT NULL, subject text NOT NULL);
INSERT INTO users VALUES (1, 'pro', 'pro', 2);
INSERT INTO tickets (owner_id, subject) VALUES (1, 'hello');
"""

TIERS = """tier "free" { limit = 100, window = "1h" }
tier "pro" { limit = 1000, window = "1h" }
"""

# The identity block is declared on line 2 of 10-identity.lua.
IDENTITY = """-- who calls
identity {
  user = header "X-User-Id",
  tier = sql("SELECT plan FROM users WHERE id = $1::bigint", "{user}"),
  default_tier = "free",
}
"""

# The endpoint is declared on line 3 of 20-tickets.lua, its statement two lines below.
TICKETS = """-- the caller's tickets

endpoint "GET /tickets" {
  sql = [[
    SELECT t.id, t.subject FROM tickets t WHERE t.owner_id = $1::bigint ORDER BY t.id
  ]],
  args = { "{user}" },
  limit = "tier",
}

on_change "tickets" { invalidate = { "tickets:{row.owner_id}" } }
"""

CHECK_TIMEOUT = 20  # seconds; the check itself is bounded by 5 s


def database():
    """A new database holding SCHEMA; returns its name."""
    name = "t_sql_" + uuid.uuid4().hex[:12]
    lib.psql("CREATE DATABASE %s" % name)
    lib.psql(SCHEMA, db=name)
    return name


def policy_dir(identity=IDENTITY, tickets=TICKETS):
    d = tempfile.mkdtemp(prefix="sluice-sql-")
    for name, text in (("00-tiers.lua", TIERS), ("10-identity.lua", identity),
                       ("20-tickets.lua", tickets)):
        write(d, name, text)
    return d


def write(d, name, text):
    """Writes the whole file at once (rename), as deploy tools do."""
    tmp = os.path.join(d, ".tmp-" + name)
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(d, name))


def unreachable():
    """A conninfo of a port nobody listens on."""
    return "host=127.0.0.1 port=%d dbname=postgres connect_timeout=2" % lib.free_port()


class CheckAgainstTheDatabase(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = database()

    def check(self, d, *flags, url=None):
        env = dict(os.environ, DATABASE_URL=url or "dbname=%s" % self.db)
        r = subprocess.run([lib.BIN, "check"] + list(flags) + [d], capture_output=True,
                           text=True, env=env, timeout=CHECK_TIMEOUT)
        self.addCleanup(shutil.rmtree, d, True)
        return r

    def assertRefused(self, r, line):
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(line, r.stdout.splitlines())

    def test_good_set_passes(self):
        r = self.check(policy_dir(), "--db")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "", ""))

    def test_tier_of_an_enum_column_passes(self):
        r = self.check(policy_dir(identity=IDENTITY.replace("SELECT plan ",
                                                            "SELECT plan_enum ")), "--db")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "", ""))

    def test_wrong_column_is_refused_at_the_endpoints_line_with_postgres_message_and_hint(self):
        d = policy_dir(tickets=TICKETS.replace("t.subject", "t.subjct"))
        r = self.check(d, "--db")
        self.assertRefused(r, '%s/20-tickets.lua:3: endpoint "GET /tickets": sql: column '
                           't.subjct does not exist (hint: Perhaps you meant to reference the '
                           'column "t.subject".)' % d)
        # DATABASE_URL alone (no --db) checks too.
        r = self.check(d)
        self.assertEqual(r.returncode, 1)
        self.assertIn("20-tickets.lua:3: ", r.stdout)

    def test_wrong_tier_query_is_refused_at_the_identitys_line(self):
        d = policy_dir(identity=IDENTITY.replace("SELECT plan ", "SELECT plann "))
        r = self.check(d, "--db")
        self.assertRefused(r, '%s/10-identity.lua:2: identity: tier.sql: column "plann" does not '
                           'exist (hint: Perhaps you meant to reference the column '
                           '"users.plan".)' % d)

    def test_tier_query_answering_an_integer_is_refused(self):
        d = policy_dir(identity=IDENTITY.replace("SELECT plan ", "SELECT plan_id "))
        r = self.check(d, "--db")
        self.assertRefused(r, "%s/10-identity.lua:2: identity: tier.sql: its column is of type "
                           "integer; the tier's name must be text (text, varchar, char, name, "
                           "citext or an enum)" % d)

    def test_tier_query_answering_two_columns_is_refused(self):
        d = policy_dir(identity=IDENTITY.replace("SELECT plan ", "SELECT plan, id "))
        r = self.check(d, "--db")
        self.assertRefused(r, "%s/10-identity.lua:2: identity: tier.sql: answers 2 columns; the "
                           "tier lookup answers one, the tier's name" % d)

    def test_parameter_count_other_than_args_is_refused(self):
        # PostgreSQL ends a -- comment at a carriage return; the policy checker's reading of
        # the text (lua/sluice/sql.lua) only at a line feed, so it sees $1 alone where
        # PostgreSQL also sees $2.
        sql = ('  sql = "SELECT t.id, t.subject FROM tickets t WHERE t.owner_id = $1::bigint '
               '-- newest first\\rAND t.id > $2::bigint",')
        lines = TICKETS.split("\n")
        d = policy_dir(tickets="\n".join(lines[:3] + [sql] + lines[6:]))
        r = self.check(d, "--db")
        self.assertRefused(r, '%s/20-tickets.lua:3: endpoint "GET /tickets": sql: PostgreSQL '
                           'counts 2 parameters in the statement but args has 1 value' % d)

    def test_missing_on_change_table_is_refused(self):
        d = policy_dir(tickets=TICKETS.replace('on_change "tickets"', 'on_change "tickts"'))
        r = self.check(d, "--db")
        self.assertRefused(r, '%s/20-tickets.lua:11: on_change "tickts": the database has no '
                           'table "tickts"' % d)

    def test_every_problem_is_listed_in_file_and_line_order(self):
        d = policy_dir(identity=IDENTITY.replace("SELECT plan ", "SELECT plann "),
                       tickets=TICKETS.replace("t.subject", "t.subjct"))
        r = self.check(d, "--db")
        self.assertEqual(r.returncode, 1)
        self.assertEqual([l.split(": ")[0] for l in r.stdout.splitlines()],
                         ["%s/10-identity.lua:2" % d, "%s/20-tickets.lua:3" % d])

    def test_unreachable_database_warns_and_passes_without_db(self):
        d = policy_dir(tickets=TICKETS.replace("t.subject", "t.subjct"))
        r = self.check(d, url=unreachable())
        self.assertEqual((r.returncode, r.stdout), (0, ""), r.stderr)
        self.assertRegex(r.stderr, r"^sluice check: warning: the SQL was not verified against "
                                   r"a database: .*127\.0\.0\.1.*\n$")

    def test_unreachable_database_fails_with_db(self):
        r = self.check(policy_dir(), "--db", url=unreachable())
        self.assertEqual((r.returncode, r.stdout), (1, ""), r.stderr)
        self.assertRegex(r.stderr, r"^sluice check: could not verify the SQL against the "
                                   r"database: .*127\.0\.0\.1")

    def test_db_without_database_url_checks_against_the_pg_environment(self):
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["PGDATABASE"] = self.db
        d = policy_dir(tickets=TICKETS.replace("t.subject", "t.subjct"))
        self.addCleanup(shutil.rmtree, d, True)
        r = subprocess.run([lib.BIN, "check", "--db", d], capture_output=True, text=True,
                           env=env, timeout=CHECK_TIMEOUT)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("20-tickets.lua:3: ", r.stdout)

    def test_without_database_url_check_warns_and_passes(self):
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        d = policy_dir()
        self.addCleanup(shutil.rmtree, d, True)
        r = subprocess.run([lib.BIN, "check", d], capture_output=True, text=True, env=env,
                           timeout=CHECK_TIMEOUT)
        self.assertEqual((r.returncode, r.stdout), (0, ""))
        self.assertIn("warning: the SQL was not verified against a database: DATABASE_URL is "
                      "not set", r.stderr)


class StartAgainstTheDatabase(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.db = database()

    def test_start_refuses_a_set_the_database_refuses(self):
        d = policy_dir(tickets=TICKETS.replace("t.subject", "t.subjct"))
        self.addCleanup(shutil.rmtree, d, True)
        env = dict(os.environ, DATABASE_URL="dbname=%s" % self.db)
        r = subprocess.run([lib.BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "off", d],
                           capture_output=True, text=True, env=env, timeout=CHECK_TIMEOUT)
        self.assertEqual(r.returncode, 1)
        self.assertIn('20-tickets.lua:3: endpoint "GET /tickets": sql: column t.subjct does not '
                      'exist', r.stderr)

    def test_no_sql_check_serves_it_unchecked(self):
        d = policy_dir(tickets=TICKETS.replace("t.subject", "t.subjct"))
        self.addCleanup(shutil.rmtree, d, True)
        s = self.start(d, database=self.db, args=["--no-sql-check"])
        st, _, _ = s.get("/tickets", user=1)
        self.assertEqual(st, 502)

    def test_unreachable_database_at_start_and_reload_serves_with_a_warning(self):
        d = policy_dir()
        self.addCleanup(shutil.rmtree, d, True)
        s = self.start(d, env={"DATABASE_URL": unreachable()}, args=["--no-watch"])
        self.assertEqual(json.loads(s.admin("GET", "/status")[2])["generation"], 1)
        self.assertIn("the SQL of the policy in %s was not verified against the database" % d,
                      s.read_log())
        st, _, b = s.admin("POST", "/reload")
        self.assertEqual((st, json.loads(b)["generation"]), (200, 2))
        self.assertIn("reload of %s (admin): its SQL was not verified against the database" % d,
                      s.read_log())


class SilentDatabase(SluiceTestCase):
    """A database that accepts connections and never answers: the check gives up after its
    5 s, on the reload's thread, while the workers serve."""

    @classmethod
    def setUpClass(cls):
        cls.listener = socket.socket()
        cls.listener.bind(("127.0.0.1", 0))
        cls.listener.listen(16)
        cls.addClassCleanup(cls.listener.close)
        url = "host=127.0.0.1 port=%d dbname=x connect_timeout=30" % cls.listener.getsockname()[1]
        cls.dir = policy_dir(tickets=TICKETS + 'endpoint "GET /static" { body = "{}" }\n')
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        t0 = time.monotonic()
        cls.s = cls.start(cls.dir, env={"DATABASE_URL": url}, args=["--no-watch"])
        cls.start_s = time.monotonic() - t0

    def test_a_reload_waits_at_most_its_budget_and_traffic_goes_on(self):
        self.assertLess(self.start_s, 10)
        answer = {}

        def reload():
            t0 = time.monotonic()
            answer["status"] = self.s.admin("POST", "/reload", timeout=20)[0]
            answer["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=reload)
        t.start()
        time.sleep(0.5)  # the reload is waiting for the database
        slowest = 0
        while t.is_alive():
            t0 = time.monotonic()
            st, _, _ = self.s.get("/static")
            slowest = max(slowest, time.monotonic() - t0)
            self.assertEqual(st, 200)
            time.sleep(0.1)
        t.join()
        self.assertEqual(answer["status"], 200)
        self.assertGreater(answer["seconds"], 4)
        self.assertLess(answer["seconds"], 8)
        self.assertLess(slowest, 0.5)
        self.assertIn("its SQL was not verified against the database (timeout expired while "
                      "connecting)", self.s.read_log())


class ReloadAgainstTheDatabase(SluiceTestCase):
    def setUp(self):
        self.db = database()
        self.dir = policy_dir()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.s = self.start(self.dir, database=self.db, args=["--no-watch"])

    def status(self):
        st, _, b = self.s.admin("GET", "/status")
        self.assertEqual(st, 200)
        return json.loads(b)

    def tickets(self):
        st, _, b = self.s.get("/tickets", user=1)
        self.assertEqual(st, 200, b)
        return json.loads(b)

    def test_reload_with_a_wrong_column_is_refused_and_the_old_generation_serves(self):
        self.assertEqual(self.tickets(), [{"id": 1, "subject": "hello"}])
        write(self.dir, "20-tickets.lua", TICKETS.replace("t.subject", "t.subjct"))
        st, _, b = self.s.admin("POST", "/reload")
        self.assertEqual(st, 422, b)
        want = ('20-tickets.lua:3: endpoint "GET /tickets": sql: column t.subjct does not exist '
                '(hint: Perhaps you meant to reference the column "t.subject".)')
        self.assertIn(want, json.loads(b)["errors"])
        status = self.status()
        self.assertEqual(status["generation"], 1)
        self.assertEqual(status["last_reload"]["result"], "error")
        self.assertIn(want, status["last_reload"]["error"])
        self.assertIn(want, self.s.read_log())
        self.assertEqual(self.tickets(), [{"id": 1, "subject": "hello"}])  # the old set

        # Fixed: the next reload publishes generation 2.
        write(self.dir, "20-tickets.lua", TICKETS)
        st, _, b = self.s.admin("POST", "/reload")
        self.assertEqual(st, 200, b)
        self.assertEqual(self.status()["generation"], 2)

    def test_reload_checks_a_renamed_column_in_the_database(self):
        # The policy stays; the schema changes under it: the next reload says so.
        lib.psql("ALTER TABLE users RENAME COLUMN plan TO plan_name", db=self.db)
        st, _, b = self.s.admin("POST", "/reload")
        self.assertEqual(st, 422, b)
        self.assertIn('10-identity.lua:2: identity: tier.sql: column "plan" does not exist',
                      json.loads(b)["errors"])
        self.assertEqual(self.status()["generation"], 1)


if __name__ == "__main__":
    lib.main()
