#!/usr/bin/env python3
"""End-to-end: an endpoint's own deadlines. timeout and connect_timeout on an upstream endpoint
override its upstream's; sql_timeout on an SQL endpoint overrides --db-deadline, both ways.
A deadline that passes is 504 (RFC 9110 section 15.6.5)."""

import os
import shutil
import tempfile
import time

import lib
from lib import SluiceTestCase
from origin import Origin


def policy_dir(text):
    d = tempfile.mkdtemp(prefix="sluice-timeouts-")
    with open(os.path.join(d, "10-main.lua"), "w") as f:
        f.write(text)
    return d


class UpstreamEndpointTimeout(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.dir = policy_dir("""
upstream "app" { url = "%s", timeout = "1s" }
endpoint "GET /patient/*" { upstream = "app", timeout = "3s" }
endpoint "GET /plain/*"   { upstream = "app" }
""" % cls.origin.url)
        cls.s = cls.start(cls.dir)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.origin.kill()
            shutil.rmtree(cls.dir, ignore_errors=True)

    def test_an_endpoint_timeout_longer_than_its_upstreams_lets_a_slow_answer_pass(self):
        t0 = time.monotonic()
        st, _, b = self.s.get("/patient/x?delay_ms=1500")
        took = time.monotonic() - t0
        self.assertEqual(st, 200, b)
        self.assertGreaterEqual(took, 1.4)

    def test_a_sibling_without_the_override_keeps_the_upstreams_timeout(self):
        t0 = time.monotonic()
        st, h, b = self.s.get("/plain/x?delay_ms=1500")
        took = time.monotonic() - t0
        self.assertEqual(st, 504, b)
        self.assertIn("application/problem+json", h.get("content-type", ""))
        self.assertLess(took, 1.45)


class SqlEndpointTimeout(SluiceTestCase):
    POLICY = """
endpoint "GET /short" { sql = "SELECT true AS slept FROM pg_sleep(0.3)", one = true,
                        sql_timeout = "100ms" }
endpoint "GET /long"  { sql = "SELECT true AS slept FROM pg_sleep(0.3)", one = true,
                        sql_timeout = "2s" }
endpoint "GET /plain" { sql = "SELECT true AS slept FROM pg_sleep(0.3)", one = true }
"""

    @classmethod
    def setUpClass(cls):
        cls.db = lib.crm_database()
        cls.dir = policy_dir(cls.POLICY)

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def test_a_shorter_sql_timeout_is_504_under_a_longer_db_deadline(self):
        s = self.start(self.dir, database=self.db, args=["--db-deadline", "2s"])
        t0 = time.monotonic()
        st, h, b = s.get("/short")
        took = time.monotonic() - t0
        self.assertEqual(st, 504, b)
        self.assertIn("application/problem+json", h.get("content-type", ""))
        self.assertLess(took, 0.29)
        st, _, b = s.get("/plain")  # the pool's own deadline is 2 s: 0.3 s passes
        self.assertEqual(st, 200, b)

    def test_a_longer_sql_timeout_passes_under_a_shorter_db_deadline(self):
        s = self.start(self.dir, database=self.db, args=["--db-deadline", "100ms"])
        st, _, b = s.get("/long")
        self.assertEqual(st, 200, b)  # PostgreSQL's statement_timeout was raised for it too
        st, _, b = s.get("/long")  # and the connection kept its own afterwards:
        self.assertEqual(st, 200, b)
        st, _, b = s.get("/plain")
        self.assertEqual(st, 504, b)


if __name__ == "__main__":
    lib.main()
