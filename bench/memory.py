#!/usr/bin/env python3
"""RSS of sluice (memory store) under hostile key shapes, against its budgets.

usage: bench/memory.py [--cache-bytes N] [--limit-bytes N] [--requests N] [--tsv FILE] SHAPE...
SHAPE is small (small cached answers under new keys), tags (cached answers under four new
200-byte tags each), limits (a new 100-byte limit key per request), logs (sliding_log keys,
four requests each), mixed (the four interleaved), phases (the four one after the other,
four times, each round of REQUESTS/16 on a connection of its own, which the kernel puts on
one worker or the other: what one worker fills, another evicts), a200 or a2k (answers of 200
bytes or 2 KiB under new keys: what an entry costs). Each runs on a fresh server (two
workers, the budgets given; 4 MiB each by default) and prints the answers' statuses, the
baseline RSS (started, a few requests of each shape served), the peak RSS while it ran
(VmRSS sampled every 1000 answers) and at its end, in MiB, and (peak - baseline) / budgets;
then the cache entries held, the bytes each is charged (the store's count) and the RSS grown
per entry ((peak - baseline) / entries). --tsv appends one line per shape to FILE: shape,
requests, cache and limit budgets, baseline and peak RSS (bytes), entries, cache bytes.
SLUICE_BIN names the binary (default build/sluice); --no-limit-flag runs a binary that has
no --limit-bytes (its limit states have no budget: the ratio is to --cache-bytes alone).
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import lib  # noqa: E402

POLICY = r'''
endpoint "GET /small" { body = "x", cache = { ttl = "1h", key = "s:{query.k}" } }
endpoint "GET /tags" {
  body = "x",
  cache = { ttl = "1h", key = "t:{query.k}",
            tags = { "a:{query.a}", "b:{query.b}", "c:{query.c}", "d:{query.d}" } },
}
endpoint "GET /limits" { body = "x", limit = { { limit = 5, window = "1h", key = "l:{query.k}" } } }
endpoint "GET /logs" {
  body = "x",
  limit = { { limit = 1000, window = "1h", key = "g:{query.k}", algorithm = "sliding_log" } },
}
endpoint "GET /a200" { body = ("x"):rep(200), cache = { ttl = "1h", key = "a:{query.k}" } }
endpoint "GET /a2k" { body = ("y"):rep(2048), cache = { ttl = "1h", key = "b:{query.k}" } }
'''


SHAPES = ("small", "tags", "limits", "logs")
ANSWERS = {"a200": "/a200", "a2k": "/a2k"}


def paths(shape, n, first=0):
    pad = "p" * 190
    for i in range(first, n):
        if shape == "mixed":
            yield next(paths(SHAPES[i % 4], i + 1, i // 4))
            continue
        if shape == "small":
            yield "/small?k=%d" % i
        elif shape == "tags":
            yield "/tags?k=%d&a=%s%d&b=%s%d&c=%s%d&d=%s%d" % (i, pad, i, pad, i, pad, i, pad, i)
        elif shape == "limits":
            yield "/limits?k=%s%d" % ("u" * 100, i)
        elif shape == "logs":
            yield "/logs?k=%d" % (i // 4)  # four requests a key, at different ms mostly
        elif shape in ANSWERS:
            yield "%s?k=%d" % (ANSWERS[shape], i)
        else:
            raise SystemExit("unknown shape %s" % shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-bytes", type=int, default=4 << 20)
    ap.add_argument("--limit-bytes", type=int, default=4 << 20)
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--no-limit-flag", action="store_true", help="a binary without --limit-bytes")
    ap.add_argument("--tsv", help="append a line of figures per shape to this file")
    ap.add_argument("shapes", nargs="+")
    o = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sluice-mem-")
    with open(os.path.join(d, "main.lua"), "w") as f:
        f.write(POLICY)
    for shape in o.shapes:
        args = ["--cache-bytes", str(o.cache_bytes), "--no-watch"]
        if not o.no_limit_flag:
            args += ["--limit-bytes", str(o.limit_bytes)]
        s = lib.Sluice(d, args=args)
        try:
            for warm in SHAPES + ((shape,) if shape in ANSWERS else ()):
                lib.pipelined(s.port, ("%s&w" % p for p in paths(warm, 50)))
            base = lib.rss_kib(s.proc.pid)
            peak = [base]

            def sample():
                peak[0] = max(peak[0], lib.rss_kib(s.proc.pid))

            if shape == "phases":
                counts = {}
                for r in range(16):
                    rnd = ("%s&r=%d" % (p, r) for p in paths(SHAPES[r % 4], o.requests // 16))
                    for code, k in lib.pipelined(s.port, rnd, conns=1, on_batch=sample).items():
                        counts[code] = counts.get(code, 0) + k
            else:
                counts = lib.pipelined(s.port, paths(shape, o.requests), on_batch=sample,
                                       timeout=600)
            end = lib.rss_kib(s.proc.pid)
            sample()
            st = s.admin("GET", "/status")[2].decode()
            mem = json.loads(st)["store"]["memory"]
            budgets = o.cache_bytes + (0 if o.no_limit_flag else o.limit_bytes)
            entries = max(mem["entries"], 1)
            print("%-6s %d requests %s: RSS baseline %.1f MiB, peak %.1f MiB, end %.1f MiB; "
                  "budgets %.1f MiB, (peak - baseline) / budgets %.2f; %d entries, %.0f bytes "
                  "charged and %.0f resident each"
                  % (shape, o.requests, dict(sorted(counts.items())), base / 1024,
                     peak[0] / 1024, end / 1024, budgets / 1048576,
                     (peak[0] - base) * 1024 / budgets, mem["entries"],
                     mem["cache_bytes"] / entries, (peak[0] - base) * 1024 / entries))
            if o.tsv:
                with open(o.tsv, "a") as f:
                    f.write("%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n"
                            % (shape, o.requests, o.cache_bytes,
                               0 if o.no_limit_flag else o.limit_bytes, base * 1024,
                               peak[0] * 1024, mem["entries"], mem["cache_bytes"]))
            if os.environ.get("STATUS"):
                print(st)
        finally:
            s.close()


if __name__ == "__main__":
    main()
