"""End to end: the status page of the admin listener (GET /), rendered by headless Chromium.

A policy with tier limits, a per-header limit and a cached upstream gets traffic (hits,
misses, 429s, one caller far heavier than another); Chromium loads the page from the admin
listener, the page polls GET /stats, and the DOM Chromium dumps must show what /stats says:
each route, the heaviest caller first in its limit's list, the 429s of its tier, the policy
generation. A screenshot is kept under the build directory (test-artifacts/). The page is
served without the admin token and finds its data with the token given in the URL fragment;
a caller key holding markup is shown as text; a poll that fails shows "disconnected" with the
time of the last good update.
"""

import base64
import hashlib
import html.parser
import http.server
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time

import lib
from lib import SluiceTestCase
from origin import Origin

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.environ.get("SLUICE_ARTIFACTS") or os.path.join(
    os.path.dirname(os.path.abspath(lib.BIN)), "test-artifacts")
WINDOW = (1400, 1800)

POLICY = """
tier "free" { limit = 10, window = "1h" }
tier "pro"  { limit = 1000, window = "1h" }
identity { user = header "X-User-Id", tier = header("X-Plan", { trusted = true }), default_tier = "free" }
upstream "app" { url = "http://127.0.0.1:%(port)d", timeout = "5s" }

endpoint "GET /items/{id}" {
  upstream = "app", limit = "tier",
  cache = { ttl = "5m", key = "item:{path.id}", shared = true },
}
endpoint "GET /keyed" {
  body = '{}', limit = { limit = 3, window = "1h", key = "k:{header.X-Key}" },
}
endpoint "GET /health" { body = '{"ok":true}' }
"""

# A caller key that is markup if the page ever inserts it as HTML (no space, no colon: the
# key template would escape those).
MARKUP_KEY = ("<script>document.title='pwned'</script>"
              "<img/src='x'onerror='document.title=\"pwned\"'>")


def chromium(url, *args, timeout=30):
    """Runs headless Chromium on url with args (a fresh profile); returns its stdout. Fails
    after `timeout` s, killing Chromium and its children."""
    profile = tempfile.mkdtemp(prefix="sluice-chromium-")
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
           "--hide-scrollbars", "--user-data-dir=" + profile, "--virtual-time-budget=6000"]
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")
    p = subprocess.Popen(cmd + list(args) + [url], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("chromium did not finish within %d s" % timeout)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # its own group: Chromium and its helpers
        except ProcessLookupError:
            pass
        p.communicate()
        shutil.rmtree(profile, ignore_errors=True)
    if p.returncode != 0:
        raise AssertionError("chromium exited %s" % p.returncode)
    return out.decode()


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def all(self, tag=None, cls=None):
        """Every element below this one (document order) with that tag and class."""
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.classes()):
                    yield c
                yield from c.all(tag, cls)

    def by_id(self, ident):
        return next((n for n in self.all() if n.attrs.get("id") == ident), None)


class Tree(html.parser.HTMLParser):
    """The DOM Chromium dumped, as Nodes (text unescaped)."""
    VOID = {"meta", "link", "input", "br", "img", "hr", "source", "wbr"}

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#document", {}, None)
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in self.VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n.parent and n.tag != tag:
            n = n.parent
        if n.parent:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def render(url):
    return Tree(chromium(url, "--dump-dom")).root


def png_size(path):
    """(width, height) of the PNG at path; fails when it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise AssertionError("%s is not a PNG" % path)
    return struct.unpack(">II", head[16:24])


def send_traffic(s):
    """Hits, misses, 429s and two callers of tier free, one far heavier. Returns the 429s."""
    refused = 0
    for i in range(14):  # heavy: 10 allowed, 4 refused by the tier
        st, _, _ = s.get("/items/%d" % (i % 3), user="heavy")
        refused += st == 429
    for i in range(2):
        s.get("/items/%d" % i, user="light")
    for i in range(3):
        s.get("/items/%d" % i, user="payer", headers={"X-Plan": "pro"})
    for _ in range(5):  # 3 allowed, 2 refused: anonymous, so tier free
        st, _, _ = s.get("/keyed", headers={"X-Key": MARKUP_KEY})
        refused += st == 429
    for _ in range(3):
        s.get("/health")
    return refused


def wait_for_callers(s, headers=None):
    """GET /stats once the workers have published the callers (every second)."""
    end = time.monotonic() + 10
    while True:
        st, _, b = s.admin("GET", "/stats", headers)
        assert st == 200, b
        d = json.loads(b)
        policies = {p["policy"]: p for p in d["callers"]["policies"]}
        if "free" in policies and any(c["caller"].endswith(MARKUP_KEY)
                                      for p in policies.values() for c in p["callers"]):
            return d
        if time.monotonic() > end:
            raise AssertionError("no callers in /stats: %s" % d["callers"])
        time.sleep(0.2)


def start(cls, env=None):
    cls.origin = Origin()
    cls.addClassCleanup(cls.origin.kill)
    cls.dir = tempfile.mkdtemp(prefix="sluice-page-")
    cls.addClassCleanup(shutil.rmtree, cls.dir, True)
    with open(os.path.join(cls.dir, "10-main.lua"), "w") as f:
        f.write(POLICY % {"port": cls.origin.port})
    return cls.start(cls.dir, env=env)


class StatusPageShowsTheTraffic(SluiceTestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = start(cls)
        st, _, b = cls.s.admin("POST", "/reload")  # generation 2: not a value by chance
        assert st == 200, b
        cls.refused = send_traffic(cls.s)
        cls.stats = wait_for_callers(cls.s)
        cls.url = "http://127.0.0.1:%d/" % cls.s.admin_port
        cls.dom = render(cls.url)

    def test_page_is_html_with_a_csp_that_admits_only_its_own_script(self):
        st, h, body = self.s.admin("GET", "/")
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "text/html; charset=utf-8")
        self.assertEqual(h["cache-control"], "no-store")
        self.assertEqual(h["x-content-type-options"], "nosniff")
        csp = dict(d.strip().split(" ", 1) for d in h["content-security-policy"].split(";"))
        script = re.search(rb"<script>(.*?)</script>", body, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
        self.assertEqual(csp["script-src"], "'sha256-%s'" % digest)
        self.assertEqual(csp["default-src"], "'none'")
        self.assertEqual(csp["connect-src"], "'self'")
        self.assertEqual(csp["img-src"], "data:")
        self.assertEqual(csp["style-src"], "'unsafe-inline'")
        st, h, b = self.s.admin("HEAD", "/")
        self.assertEqual((st, b, int(h["content-length"])), (200, b"", len(body)))
        st, h, b = self.s.admin("POST", "/")
        self.assertEqual((st, h["allow"]), (405, "GET, HEAD"))
        self.assertEqual(h["content-type"], "application/problem+json")

    def test_page_shows_every_route_of_the_traffic(self):
        shown = [td.text() for td in self.dom.by_id("routes").all("td", "key")]
        self.assertEqual(sorted(shown), ["GET /health", "GET /items/{id}", "GET /keyed"])

    def test_heaviest_caller_is_first_in_its_limits_list(self):
        free = next(p for p in self.stats["callers"]["policies"] if p["policy"] == "free")
        heavy = free["callers"][0]["caller"]
        self.assertIn("heavy", heavy)  # what the server counted
        self.assertIn("light", free["callers"][1]["caller"])
        section = next(d for d in self.dom.all("div", "policy")
                       if next(d.all("h3")).text() == "free")
        callers = [td.text() for td in section.all("td", "caller")]
        self.assertEqual(callers[0], heavy)
        self.assertEqual(len(callers), 2)

    def test_page_shows_the_429s_of_the_tier(self):
        self.assertEqual(self.refused, 6)
        self.assertEqual(self.stats["denied_by_tier"], {"free": 6})
        rows = {next(tr.all("td", "key")).text(): next(tr.all("td", "count")).text()
                for tr in self.dom.by_id("tiers").all("tr") if list(tr.all("td", "key"))}
        self.assertEqual(rows, {"free": "6"})

    def test_page_shows_the_policy_generation(self):
        self.assertEqual(self.stats["status"]["generation"], 2)
        self.assertEqual(self.dom.by_id("generation").text(), "2")
        self.assertEqual(self.dom.by_id("conn").text(), "live")

    def test_page_shows_the_fleet_this_instance_alone_on_the_memory_store(self):
        fleet = self.stats["status"]["fleet"]
        self.assertEqual([i["self"] for i in fleet["instances"]], [True])
        text = self.dom.by_id("fleet").text()
        self.assertIn("1 (this one alone)", text)
        self.assertIn("the same", text)
        self.assertIn("127.0.0.1:%d" % self.s.port, text)
        self.assertIn("(this one)", text)

    def test_a_caller_key_holding_markup_is_shown_as_text(self):
        keys = [td.text() for td in self.dom.all("td", "caller")]
        self.assertIn("k:" + MARKUP_KEY, keys)
        self.assertEqual(len(list(self.dom.all("script"))), 1)  # the page's own
        self.assertEqual(list(self.dom.all("img")), [])
        self.assertEqual(next(self.dom.all("title")).text(), "sluice status")

    def test_screenshot_is_a_png_of_the_window(self):
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, "status-page.png")
        if os.path.exists(path):
            os.unlink(path)
        chromium(self.url, "--screenshot=" + path, "--window-size=%d,%d" % WINDOW)
        self.assertEqual(png_size(path), WINDOW)
        print("\nscreenshot: %s" % path)


class TokenGuardsTheDataNotThePage(SluiceTestCase):
    TOKEN = "s3cret-token"

    @classmethod
    def setUpClass(cls):
        cls.s = start(cls, env={"SLUICE_ADMIN_TOKEN": cls.TOKEN})
        send_traffic(cls.s)
        cls.stats = wait_for_callers(cls.s, {"Authorization": "Bearer " + cls.TOKEN})
        cls.url = "http://127.0.0.1:%d/" % cls.s.admin_port

    def test_page_is_served_without_the_token_and_nothing_else_is(self):
        st, h, b = self.s.admin("GET", "/")
        self.assertEqual(st, 200)
        self.assertIn(b"<title>sluice status</title>", b)
        for path in ("/stats", "/status", "/metrics", "/callers", "/explain?request=GET%20/x",
                     "/nothing"):
            st, h, _ = self.s.admin("GET", path)
            self.assertEqual(st, 401, path)
            self.assertEqual(h["content-type"], "application/problem+json", path)
        st, _, _ = self.s.admin("POST", "/reload")
        self.assertEqual(st, 401)

    def test_page_with_the_token_in_its_fragment_shows_the_data(self):
        dom = render(self.url + "#token=" + self.TOKEN)
        self.assertEqual(dom.by_id("conn").text(), "live")
        self.assertEqual(dom.by_id("generation").text(), str(self.stats["status"]["generation"]))
        shown = [td.text() for td in dom.by_id("routes").all("td", "key")]
        self.assertIn("GET /items/{id}", shown)
        self.assertIn("hidden", dom.by_id("login").attrs)

    def test_page_without_the_token_asks_for_it(self):
        dom = render(self.url)
        self.assertNotIn("hidden", dom.by_id("login").attrs)
        self.assertEqual(dom.by_id("conn").text(), "locked")
        self.assertEqual(list(dom.by_id("routes").all("td", "key")), [])


class FailedPollShowsDisconnected(SluiceTestCase):
    """The page as sluice serves it, from a stand-in listener whose /stats answers once (with
    sluice's own /stats) and then fails."""

    @classmethod
    def setUpClass(cls):
        s = start(cls)
        send_traffic(s)
        stats = json.dumps(wait_for_callers(s)).encode()
        _, headers, page = s.admin("GET", "/")
        polls = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/":
                    status, body, ctype = 200, page, headers["content-type"]
                elif self.path == "/stats" and not polls:
                    status, body, ctype = 200, stats, "application/json"
                else:
                    status, body, ctype = 503, b"{}", "application/problem+json"
                if self.path == "/stats":
                    polls.append(status)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if self.path == "/":
                    self.send_header("Content-Security-Policy", headers["content-security-policy"])
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        cls.polls = polls
        cls.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=cls.httpd.serve_forever, daemon=True).start()
        cls.addClassCleanup(cls.httpd.server_close)
        cls.addClassCleanup(cls.httpd.shutdown)

    def test_failed_poll_shows_disconnected_and_the_last_good_update(self):
        dom = render("http://127.0.0.1:%d/" % self.httpd.server_address[1])
        self.assertGreaterEqual(len(self.polls), 2, self.polls)  # it polled again
        self.assertEqual(dom.by_id("conn").text(), "disconnected")
        self.assertRegex(dom.by_id("updated").text(), r"HTTP 503; last update \d\d:\d\d:\d\d$")
        # What the good poll showed stays.
        shown = [td.text() for td in dom.by_id("routes").all("td", "key")]
        self.assertIn("GET /items/{id}", shown)


if __name__ == "__main__":
    lib.main()
