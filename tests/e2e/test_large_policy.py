"""End to end: a policy set of 10,000 endpoints loads, routes each request to its most specific
route, and reloads when one of its files changes."""

import http.client
import json
import os
import random
import shutil
import tempfile
import time

import lib
from lib import SluiceTestCase

GROUPS = 1250  # eight endpoints each, and one more: 10,001 endpoints
FILES = 10


def group_endpoints(g):
    """The endpoints of group g, as policy text: literal, {param}, a literal beside the {param},
    another method, a wildcard, a pinned and an unpinned query, and SQL."""
    def body(route):
        return "body = '%s'" % json.dumps({"route": route, "g": g}, separators=(",", ":"))
    return "\n".join([
        'endpoint "GET /api/r%d" { %s }' % (g, body("list")),
        'endpoint "GET /api/r%d/{id}" { %s }' % (g, body("item")),
        'endpoint "GET /api/r%d/special" { %s }' % (g, body("special")),
        'endpoint "PUT /api/r%d/{id}" { %s }' % (g, body("put")),
        'endpoint "GET /files/r%d/*" { %s }' % (g, body("files")),
        'endpoint "GET /search/r%d?type=a" { %s }' % (g, body("search-a")),
        'endpoint "GET /search/r%d" { %s }' % (g, body("search")),
        'endpoint "GET /api/r%d/{id}/sql" { sql = "SELECT $1::text AS id, %d AS g", '
        'args = { "{path.id}" }, one = true }' % (g, g),
    ]) + "\n"


def write_policies(d):
    """GROUPS groups spread over FILES files, and one route of three {param} segments that every
    /api/X/Y/Z path matches, the least specific of them."""
    per = GROUPS // FILES
    for f in range(FILES):
        with open(os.path.join(d, "%02d-routes.lua" % (10 + f)), "w") as out:
            for g in range(f * per, (f + 1) * per):
                out.write(group_endpoints(g))
    with open(os.path.join(d, "90-fallback.lua"), "w") as out:
        out.write('endpoint "GET /api/{kind}/{id}/{sub}" { body = \'{"route":"fallback"}\' }\n')


class LargePolicy(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sluice-large-")
        write_policies(cls.dir)
        cls.s = cls.start(cls.dir, database="postgres")
        cls.conn = http.client.HTTPConnection("127.0.0.1", cls.s.port, timeout=10)

    @classmethod
    def tearDownClass(cls):
        cls.conn.close()
        super().tearDownClass()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def call(self, method, target):
        """One request on the class's keep-alive connection: (status, headers, body)."""
        self.conn.request(method, target)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def route_of(self, method, target):
        st, _, b = self.call(method, target)
        self.assertEqual(st, 200, "%s %s: %s" % (method, target, b))
        return json.loads(b)

    def test_status_counts_10001_endpoints(self):
        st, _, b = self.s.admin("GET", "/status")
        self.assertEqual(st, 200)
        self.assertEqual(len(json.loads(b)["files"]), FILES + 1)
        self.assertIn("10001 endpoints", self.s.read_log())

    def test_a_sample_of_routes_answers_with_the_most_specific_endpoint(self):
        rnd = random.Random(7)
        for g in rnd.sample(range(GROUPS), 150) + [0, GROUPS - 1]:
            self.assertEqual(self.route_of("GET", "/api/r%d" % g), {"route": "list", "g": g})
            self.assertEqual(self.route_of("GET", "/api/r%d/42" % g), {"route": "item", "g": g})
            # The literal beats the {param} beside it; HEAD goes to the GET route.
            self.assertEqual(self.route_of("GET", "/api/r%d/special" % g),
                             {"route": "special", "g": g})
            st, _, _ = self.call("HEAD", "/api/r%d/special" % g)
            self.assertEqual(st, 200)
            self.assertEqual(self.route_of("PUT", "/api/r%d/42" % g), {"route": "put", "g": g})
            self.assertEqual(self.route_of("GET", "/files/r%d/a/b.css" % g),
                             {"route": "files", "g": g})
            # More pins win; a query that does not hold the pin goes to the unpinned route.
            self.assertEqual(self.route_of("GET", "/search/r%d?page=2&type=a" % g),
                             {"route": "search-a", "g": g})
            self.assertEqual(self.route_of("GET", "/search/r%d?type=b" % g),
                             {"route": "search", "g": g})
            # r{g}/{id}/sql beats the three-{param} fallback, segment by segment from the left.
            self.assertEqual(self.route_of("GET", "/api/r%d/7/sql" % g), {"id": "7", "g": g})
            # r{g}/{id} has no "other" under it: the fallback answers.
            self.assertEqual(self.route_of("GET", "/api/r%d/7/other" % g), {"route": "fallback"})

    def test_missing_routes_and_methods(self):
        st, h, b = self.call("GET", "/api/r%d" % GROUPS)  # no such group
        self.assertEqual(st, 404, b)
        self.assertEqual(h["content-type"], "application/problem+json")
        st, h, b = self.call("DELETE", "/api/r17/1")
        self.assertEqual(st, 405, b)
        self.assertEqual(h["allow"], "GET, HEAD, PUT")
        st, _, _ = self.call("GET", "/api/r17/")  # {param} takes no empty segment
        self.assertEqual(st, 404)

    def test_editing_one_file_reloads_the_set(self):
        g = GROUPS - 1
        path = os.path.join(self.dir, "%02d-routes.lua" % (10 + FILES - 1))
        with open(path) as f:
            text = f.read()
        old = "endpoint \"GET /api/r%d\" { body = '{\"route\":\"list\",\"g\":%d}' }" % (g, g)
        self.assertIn(old, text)
        tmp = path + ".part"
        with open(tmp, "w") as f:
            f.write(text.replace(old, old.replace('"list"', '"list-v2"')))
        os.rename(tmp, path)
        deadline = time.time() + 20
        while time.time() < deadline and self.route_of("GET", "/api/r%d" % g)["route"] == "list":
            time.sleep(0.02)
        self.assertEqual(self.route_of("GET", "/api/r%d" % g), {"route": "list-v2", "g": g})
        self.assertEqual(self.route_of("GET", "/api/r0/special"), {"route": "special", "g": 0})
        st, _, b = self.s.admin("GET", "/status")
        self.assertEqual(json.loads(b)["last_reload"]["result"], "ok")


if __name__ == "__main__":
    lib.main()
