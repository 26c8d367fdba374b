#!/usr/bin/env python3
"""Connection exhaustion, measured: a running `sluice serve` against sockets that hold
connections without finishing a request.

    bench/flood.py idle [N]        N sockets (default 10000) that connect and send nothing
    bench/flood.py slowloris [N]   N sockets (default 2000) that send one header byte a second
    bench/flood.py admin [N]       N idle sockets (default 100) on the admin listener

Starts the binary of SLUICE_BIN (default build/sluice) on policies/ with its defaults
(plus SLUICE_ARGS, split on spaces), opens the sockets from 127.0.0.1, and prints:
  * the server's RSS before, during and 2 s after the sockets are closed (VmRSS);
  * how long a fresh client (from FRESH_FROM, default 127.0.0.2) waits for its first 200
    (GET /healthz, or GET /status on the admin listener) while the sockets stay open: each
    try is a new connection with a 2 s timeout, tried again at once when refused; the
    first try's latency is printed too;
  * the server's open descriptors during the flood and when it gave up on the sockets.
The attack's sockets stay open (trickling, for slowloris) until the fresh client got its
200 or 90 s passed.
"""

import os
import resource
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))
# The sockets come from 127.0.0.1, the fresh client from this address (another one, so
# that the per-address cap does not refuse it with them).
FRESH_FROM = os.environ.get("FRESH_FROM", "127.0.0.2")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def fresh_request(port, path, timeout=2.0):
    """One GET on a new connection from FRESH_FROM: (status or None, seconds)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                     source_address=(FRESH_FROM, 0))
        try:
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else None
    except OSError:
        status = None
    return status, time.monotonic() - t0


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "idle"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else {"idle": 10000, "slowloris": 2000,
                                                       "admin": 100}[mode]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    extra = os.environ.get("SLUICE_ARGS", "").split()
    proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                             "--no-watch"] + extra + [os.path.join(ROOT, "policies")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    port = admin = None
    for line in proc.stdout:
        if line.startswith(b"admin on"):
            admin = int(line.strip().rsplit(b":", 1)[1])
        if line.startswith(b"listening on"):
            port = int(line.strip().rsplit(b":", 1)[1])
            break
    target, path = (admin, b"/status") if mode == "admin" else (port, b"/healthz")
    try:
        status, _ = fresh_request(target, path)
        assert status == 200, status
        base_fds = nfds(proc.pid)
        print("%s: %d sockets, server pid %d, RSS before %d KB, %d fds" %
              (mode, n, proc.pid, rss_kb(proc.pid), base_fds))
        socks = []
        t_flood = time.monotonic()
        for i in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", target), timeout=2)
            except OSError:
                continue
            s.setblocking(False)
            socks.append(s)
        stop = threading.Event()

        def trickle():
            while not stop.wait(1.0):
                for s in socks:
                    try:
                        s.send(b"G")
                    except OSError:
                        pass

        if mode == "slowloris":
            for s in socks:
                try:
                    s.send(b"G")
                except OSError:
                    pass
            threading.Thread(target=trickle, daemon=True).start()
        print("opened %d in %.1f s; server: RSS %d KB, %d fds" %
              (len(socks), time.monotonic() - t_flood, rss_kb(proc.pid), nfds(proc.pid)))
        t0 = time.monotonic()
        first = None
        tries = 0
        while time.monotonic() - t0 < 90:
            status, took = fresh_request(target, path)
            tries += 1
            if first is None:
                first = (status, took)
            if status == 200:
                break
            time.sleep(0.05)
        waited = time.monotonic() - t0
        print("fresh client: first try %s in %.3f s; first 200 after %.3f s (%d tries)" %
              (first[0], first[1], waited, tries))
        # When did the server give up on the sockets (they stay open on this side)?
        t1 = time.monotonic()
        while nfds(proc.pid) > base_fds + 2 and time.monotonic() - t1 < 90:
            time.sleep(0.1)
        print("server fds back to %d (baseline %d) %.1f s later (%.1f s after the flood began)"
              % (nfds(proc.pid), base_fds, time.monotonic() - t1, time.monotonic() - t_flood))
        stop.set()
        for s in socks:
            s.close()
        time.sleep(2)
        print("2 s after closing: RSS %d KB, %d fds" % (rss_kb(proc.pid), nfds(proc.pid)))
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
