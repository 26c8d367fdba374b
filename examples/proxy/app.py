#!/usr/bin/env python3
"""The CRM of examples/crm as an ordinary HTTP app, for sluice to sit in front of.

    DATABASE_URL=postgresql://... python3 examples/proxy/app.py --port 3000

It reads and writes the tables of examples/crm/schema.sql. The caller is the
X-User-Id header (set by the auth layer in front, as in examples/crm); every
statement is scoped to the caller's rows. Without DATABASE_URL, libpq's PG*
variables name the database.

Routes (the same as the CRM example's policies):

  GET    /api/crm?type=contacts|projects|deals|interactions   the 20 newest rows
  GET    /api/dashboard                                       headline numbers
  GET    /api/dashboard/messages | agents | events            the dashboard's panels
  GET    /api/reports/pipeline                                deals by stage
  POST   /api/crm/contacts | projects | deals                 create (201)
  PUT    /api/crm/KIND/ID                                     replace the editable fields
  PATCH  /api/crm/KIND/ID                                     change the fields given
  DELETE /api/crm/KIND/ID                                     delete
  GET    /healthz                                             200 once the database answers

Reads answer `Cache-Control: max-age=N` (how long the data may lag: the gateway
caps its TTL by it), `Vary: X-User-Id` (the answer depends on the caller) and a
strong ETag; a matching If-None-Match answers 304. Writes answer
`Cache-Control: no-store`. Errors are application/problem+json.

Needs Python 3 and psycopg2 (Debian: python3-psycopg2); nothing else.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import psycopg2.errors
import psycopg2.pool

# ---------------------------------------------------------------------------
# Reads: (SQL producing one JSON text, max-age in seconds). $1 is the caller.

LISTS = {
    "contacts": """SELECT id, name, email, company, created_at FROM contacts
                   WHERE owner_id = %(user)s ORDER BY created_at DESC, id DESC LIMIT 20""",
    "projects": """SELECT id, name, status, budget, created_at FROM projects
                   WHERE owner_id = %(user)s ORDER BY created_at DESC, id DESC LIMIT 20""",
    "deals": """SELECT id, contact_id, title, amount, stage, closed, created_at FROM deals
                WHERE owner_id = %(user)s ORDER BY created_at DESC, id DESC LIMIT 20""",
    "interactions": """SELECT id, contact_id, kind, notes, occurred_at FROM interactions
                       WHERE owner_id = %(user)s ORDER BY occurred_at DESC, id DESC LIMIT 20""",
}

DASHBOARD = """
SELECT
  (SELECT count(*) FROM contacts WHERE owner_id = %(user)s)                              AS contacts,
  (SELECT count(*) FROM projects WHERE owner_id = %(user)s AND status = 'active')        AS active_projects,
  (SELECT coalesce(sum(budget), 0) FROM projects
    WHERE owner_id = %(user)s AND status = 'active')                                     AS active_budget,
  (SELECT count(*) FROM deals WHERE owner_id = %(user)s AND NOT closed)                  AS open_deals,
  (SELECT coalesce(sum(amount), 0) FROM deals WHERE owner_id = %(user)s AND NOT closed)  AS pipeline_value,
  (SELECT coalesce(sum(amount), 0) FROM deals WHERE owner_id = %(user)s AND stage = 'won') AS won_value,
  (SELECT count(*) FROM interactions WHERE owner_id = %(user)s)                          AS interactions,
  (SELECT count(*) FROM messages WHERE owner_id = %(user)s AND NOT read)                 AS unread_messages,
  (SELECT count(*) FROM agents WHERE owner_id = %(user)s AND status = 'running')         AS running_agents
"""

PANELS = {
    "/api/dashboard/messages": ("""SELECT id, body, read, created_at FROM messages
                                   WHERE owner_id = %(user)s
                                   ORDER BY read, created_at DESC, id DESC LIMIT 20""", 60),
    "/api/dashboard/agents": ("""SELECT id, name, status, config FROM agents
                                 WHERE owner_id = %(user)s ORDER BY name, id""", 300),
    "/api/dashboard/events": ("""SELECT id, kind, payload, created_at FROM events
                                 WHERE owner_id = %(user)s
                                 ORDER BY created_at DESC, id DESC LIMIT 50""", 300),
}

PIPELINE = """
WITH d AS (SELECT stage, amount, contact_id FROM deals WHERE owner_id = %(user)s)
SELECT d.stage, count(*) AS deals, sum(d.amount) AS total, round(avg(d.amount), 2) AS average,
       count(DISTINCT d.contact_id) AS contacts
FROM d GROUP BY d.stage
ORDER BY array_position(ARRAY['lead', 'qualified', 'proposal', 'negotiation', 'won', 'lost'], d.stage)
"""


def as_array(sql):
    return "SELECT coalesce(json_agg(t), '[]'::json)::text FROM (%s) AS t" % sql


def as_object(sql):
    return "SELECT row_to_json(t)::text FROM (%s) AS t" % sql


# ---------------------------------------------------------------------------
# Writes. Each returns the written row (RETURNING *), or no row when the id is
# not one of the caller's.

WRITABLE = {
    # kind: (columns a POST or PUT sets, defaults as SQL, required fields)
    "contacts": (("name", "email", "company"), {}, ("name",)),
    "projects": (("name", "status", "budget"), {"status": "'active'", "budget": "0"}, ("name",)),
    "deals": (("contact_id", "title", "amount", "stage"),
              {"amount": "0", "stage": "'lead'"}, ("title",)),
}
CASTS = {"budget": "::numeric", "amount": "::numeric", "contact_id": "::bigint"}

# A deal may name only one of the caller's own contacts.
OWN_CONTACT = ("(%(contact_id)s::bigint IS NULL OR EXISTS (SELECT 1 FROM contacts "
               "WHERE id = %(contact_id)s::bigint AND owner_id = %(user)s))")


def insert_sql(kind):
    cols, defaults, _ = WRITABLE[kind]
    vals = ["coalesce(%%(%s)s%s, %s)" % (c, CASTS.get(c, ""), defaults[c]) if c in defaults
            else "%%(%s)s%s" % (c, CASTS.get(c, "")) for c in cols]
    extra_cols, extra_vals, where = "", "", ""
    if kind == "deals":
        extra_cols, extra_vals = ", closed", ", coalesce(%(stage)s, 'lead') IN ('won', 'lost')"
        where = " WHERE " + OWN_CONTACT
    return ("INSERT INTO %s (owner_id, %s%s) SELECT %%(user)s, %s%s%s RETURNING row_to_json(%s)::text"
            % (kind, ", ".join(cols), extra_cols, ", ".join(vals), extra_vals, where, kind))


def update_sql(kind, fields, patch):
    cols, defaults, _ = WRITABLE[kind]
    sets = []
    for c in cols:
        if patch and c not in fields:
            continue
        v = "%%(%s)s%s" % (c, CASTS.get(c, ""))
        if not patch and c in defaults:
            v = "coalesce(%s, %s)" % (v, defaults[c])
        sets.append("%s = %s" % (c, v))
    if kind == "deals" and (not patch or "stage" in fields):
        sets.append("closed = coalesce(%(stage)s, 'lead') IN ('won', 'lost')")
    if not sets:
        sets.append("id = id")
    where = "id = %(id)s AND owner_id = %(user)s"
    if kind == "deals":
        where += " AND " + OWN_CONTACT
    return ("UPDATE %s SET %s WHERE %s RETURNING row_to_json(%s)::text"
            % (kind, ", ".join(sets), where, kind))


def delete_sql(kind):
    return ("DELETE FROM %s WHERE id = %%(id)s AND owner_id = %%(user)s RETURNING row_to_json(%s)::text"
            % (kind, kind))


ITEM = re.compile(r"^/api/crm/(contacts|projects|deals)(?:/(\d{1,18}))?$")


class HTTPError(Exception):
    def __init__(self, status, detail):
        super().__init__(detail)
        self.status, self.detail = status, detail


class App:
    def __init__(self, dsn, size):
        self.pool = psycopg2.pool.ThreadedConnectionPool(1, size, dsn)
        # psycopg2's pool raises when every connection is taken: wait for one instead.
        self.free = threading.BoundedSemaphore(size)

    def query(self, sql, params, write=False):
        """One statement in its own transaction; returns the first column of the first row."""
        with self.free:
            return self._query(sql, params, write)

    def _query(self, sql, params, write):
        conn = self.pool.getconn()
        broken = False
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                row = cur.fetchone()
            if write:
                conn.commit()
            else:
                conn.rollback()
            return row[0] if row else None
        except (psycopg2.errors.InvalidTextRepresentation, psycopg2.errors.CheckViolation,
                psycopg2.errors.NotNullViolation, psycopg2.errors.NumericValueOutOfRange,
                psycopg2.errors.ForeignKeyViolation) as e:
            conn.rollback()
            raise HTTPError(400, e.diag.message_primary or str(e))
        except psycopg2.Error:
            broken = conn.closed != 0
            if not broken:
                conn.rollback()
            raise
        finally:
            self.pool.putconn(conn, close=broken)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "crm-app/1"
    app = None

    def log_message(self, fmt, *args):
        if os.environ.get("APP_LOG"):
            sys.stderr.write("app: " + fmt % args + "\n")

    def send(self, status, body, ctype="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def problem(self, status, detail):
        body = json.dumps({"type": "about:blank", "title": self.responses.get(status, ("",))[0],
                           "status": status, "detail": detail}).encode()
        self.send(status, body, "application/problem+json", [("Cache-Control", "no-store")])

    def read(self, text, max_age):
        body = text.encode()
        etag = '"%s"' % hashlib.sha1(body).hexdigest()[:20]
        headers = [("Cache-Control", "max-age=%d" % max_age), ("Vary", "X-User-Id"), ("ETag", etag)]
        inm = self.headers.get("If-None-Match")
        if inm and etag in [t.strip().removeprefix("W/") for t in inm.split(",")]:
            self.send_response(304)
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            return
        self.send(200, body, headers=headers)

    def user(self):
        u = self.headers.get("X-User-Id", "")
        if not re.fullmatch(r"\d{1,18}", u):
            raise HTTPError(401, "X-User-Id (a user id) is required")
        return int(u)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 1 << 20:
            raise HTTPError(413, "body too large")
        raw = self.rfile.read(n) if n else b""
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            raise HTTPError(400, "the body is not valid JSON")
        if not isinstance(doc, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return doc

    def handle_one(self):
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        method = "GET" if self.command == "HEAD" else self.command
        if path == "/healthz" and method == "GET":
            self.app.query("SELECT 1", {})
            return self.send(200, b'{"ok":true}', headers=[("Cache-Control", "no-store")])
        if method == "GET":
            if path == "/api/crm":
                kind = query.get("type", [""])[0]
                if kind not in LISTS:
                    raise HTTPError(404, "type must be one of " + ", ".join(LISTS))
                return self.read(self.app.query(as_array(LISTS[kind]), {"user": self.user()}), 300)
            if path == "/api/dashboard":
                return self.read(self.app.query(as_object(DASHBOARD), {"user": self.user()}), 180)
            if path in PANELS:
                sql, max_age = PANELS[path]
                return self.read(self.app.query(as_array(sql), {"user": self.user()}), max_age)
            if path == "/api/reports/pipeline":
                return self.read(self.app.query(as_array(PIPELINE), {"user": self.user()}), 600)
        m = ITEM.match(path)
        if m and method in ("POST", "PUT", "PATCH", "DELETE") and (method == "POST") == (m.group(2) is None):
            kind, ident = m.group(1), m.group(2)
            params = {"user": self.user(), "id": int(ident) if ident else None}
            fields = {}
            if method != "DELETE":
                fields = self.body()
                cols, _, required = WRITABLE[kind]
                for c in cols:
                    v = fields.get(c)
                    if isinstance(v, bool) or (v is not None and not isinstance(v, (str, int, float))):
                        raise HTTPError(400, "%s must be a string or a number" % c)
                    params[c] = None if v is None else str(v)
                if method in ("POST", "PUT"):
                    for c in required:
                        if not params.get(c):
                            raise HTTPError(400, "the body needs a field %r" % c)
            if method == "POST":
                sql = insert_sql(kind)
            elif method == "DELETE":
                sql = delete_sql(kind)
            else:
                sql = update_sql(kind, fields, method == "PATCH")
            row = self.app.query(sql, params, write=True)
            if row is None:
                raise HTTPError(404, "no such %s among yours" % kind[:-1])
            return self.send(201 if method == "POST" else 200, row.encode(),
                             headers=[("Cache-Control", "no-store")])
        raise HTTPError(404, "no route for %s %s" % (self.command, path))

    def dispatch(self):
        try:
            self.handle_one()
        except HTTPError as e:
            self.problem(e.status, e.detail)
        except psycopg2.Error as e:
            sys.stderr.write("app: database error: %s\n" % str(e).strip())
            self.problem(503, "the database did not answer")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=3000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--pool", type=int, default=16, help="database connections at most")
    a = ap.parse_args()
    Handler.app = App(os.environ.get("DATABASE_URL", ""), a.pool)
    srv = Server((a.host, a.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
    print("app listening on http://%s:%d" % (a.host, srv.server_address[1]), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
