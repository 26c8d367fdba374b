#!/usr/bin/python3
"""check_calls.py - fails when the object files of engine/ call each other in a circle,
or when a lower layer uses a symbol defined in a higher one.

Usage: check_calls.py [--nm NM] OBJECT...

The objects are those of the layer libraries (ctest passes $<TARGET_OBJECTS:sluice_LAYER>
of every layer). For each object, `nm -P` gives the symbols it defines (T, D, B, R: global
functions, data, bss, read-only data; what `nm --defined-only` lists) and those it uses but
does not define (U; what `nm -u` lists). Object A "uses" object B when A has a U symbol
that B defines. Two checks run on that file-to-file graph:

  * cycles: every elementary cycle of the graph, printed as `a.c -> b.c -> a.c` with the
    symbols on each edge, fails the check.
  * layers: an edge from a file to a file of a layer it may not use (LAYERS below) fails
    the check, cycle or not. A file's layer is the first folder under engine/
    (engine/store/redis/ is store); an object outside engine/ takes the layer of the
    library that compiled it (build/embedded_lua.c is in sluice_common).

What is not seen, by design:
  * static functions and data (lower-case nm types): they cannot be reached from another
    object file by name;
  * symbols that no object defines: libc, libevent, Lua, hiredis, libpq, jansson, ...;
  * a dependency through a function pointer set at run time. When gateway.c hands
    server.c a table of callbacks and server.c calls them, server.c's object names none of
    the gateway's symbols, so there is no edge from http/ to gateway/. That is how an
    upward dependency is legally expressed: the lower layer defines the callback type, the
    higher layer fills it in. (Taking the address of a higher layer's function by name,
    `cb = gw_fn;`, is a use of that symbol and is seen.)

Exit status: 0 when there is no new cycle and no layer violation, 1 when there is one,
2 on a usage error or when nm fails.
"""

import argparse
import os
import re
import subprocess
import sys

# The layers of engine/, bottom to top, each with every layer it may use besides itself.
# Keep in step with SLUICE_DIRS_* in CMakeLists.txt: store and origin are siblings (neither
# uses the other), and so are origin and policy; http sits below origin and policy.
LAYERS = {
    "common": [],
    "http": ["common"],
    "store": ["common"],
    "origin": ["common", "http"],
    "policy": ["common", "http"],
    "gateway": ["common", "http", "store", "origin", "policy"],
    "control": ["common", "http", "store", "origin", "policy", "gateway"],
}

DEFINED = set("TDBR")
MAX_CYCLES = 1000  # stop listing beyond this many; the check fails all the same


class Obj:
    def __init__(self, path):
        self.path = path
        self.name, self.layer = name_and_layer(path)
        self.defines = set()
        self.uses = set()


def name_and_layer(path):
    """Returns the file's name as shown (relative to engine/) and its layer."""
    p = path.replace(os.sep, "/")
    m = re.search(r"/([^/]+)\.dir/(.*)$", p)  # CMake: .../CMakeFiles/TARGET.dir/SOURCE.o
    target, src = (m.group(1), m.group(2)) if m else (None, p)
    src = re.sub(r"\.(o|obj)$", "", src)
    i = src.rfind("engine/")
    if i >= 0:
        name = src[i + len("engine/"):]
        return name, name.split("/")[0] if "/" in name else None
    name = os.path.basename(src)
    if target and target.startswith("sluice_"):
        return name, target[len("sluice_"):]
    return name, None


def read_symbols(nm, obj):
    try:
        out = subprocess.run([nm, "-P", obj.path], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", "") or str(e)
        print(f"check_calls: {nm} {obj.path}: {err.strip()}", file=sys.stderr)
        sys.exit(2)
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) < 2:
            continue
        sym, kind = f[0], f[1]
        if kind == "U":
            obj.uses.add(sym)
        elif kind in DEFINED:
            obj.defines.add(sym)


def build_graph(objs):
    """Returns {a: {b: sorted symbols of b that a uses}} over object names."""
    definer = {}
    for o in objs:
        for s in o.defines:
            definer.setdefault(s, []).append(o.name)
    graph = {o.name: {} for o in objs}
    for o in objs:
        for s in o.uses:
            for d in definer.get(s, []):
                if d != o.name:
                    graph[o.name].setdefault(d, []).append(s)
    for edges in graph.values():
        for d in edges:
            edges[d].sort()
    return graph


def strongly_connected(graph):
    """Tarjan's algorithm; returns the components, each a sorted list of names."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 4 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def elementary_cycles(graph, comp):
    """Every cycle inside one component, each starting at its smallest name."""
    members = set(comp)
    cycles = []
    for start in comp:  # sorted: a cycle is found once, from its smallest node
        allowed = {v for v in members if v >= start}
        path, seen = [start], {start}

        def walk(v):
            for w in sorted(graph[v]):
                if len(cycles) >= MAX_CYCLES:
                    return
                if w == start:
                    cycles.append(path + [start])
                elif w in allowed and w not in seen:
                    path.append(w)
                    seen.add(w)
                    walk(w)
                    seen.discard(w)
                    path.pop()

        walk(start)
    return cycles


def show_edges(graph, cycle):
    for a, b in zip(cycle, cycle[1:]):
        print(f"    {a} -> {b}: {', '.join(graph[a][b])}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nm", default="nm", help="the nm to run (default: nm)")
    ap.add_argument("objects", nargs="+")
    args = ap.parse_args()

    objs = [Obj(p) for p in args.objects]
    unknown = [o for o in objs if o.layer not in LAYERS]
    for o in unknown:
        if o.layer is None:
            print(f"{o.path}: cannot tell its layer (not under engine/, not in a sluice_LAYER.dir)")
        else:
            print(f"{o.name}: layer {o.layer!r} is not in the LAYERS table of {sys.argv[0]}")
    if unknown:
        return 1
    names = [o.name for o in objs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        print(f"check_calls: objects given twice: {', '.join(dups)}")
        return 2
    for o in objs:
        read_symbols(args.nm, o)
    layer = {o.name: o.layer for o in objs}
    graph = build_graph(objs)

    # Layers: every edge into a layer that its file may not use.
    violations = 0
    for a in sorted(graph):
        for b in sorted(graph[a]):
            la, lb = layer[a], layer[b]
            if la != lb and lb not in LAYERS[la]:
                below = ", ".join(LAYERS[la]) or "nothing else"
                print(f"layer violation: {a} uses {b}: {la} may not use {lb} "
                      f"({la} may use {below})")
                print(f"    {a} -> {b}: {', '.join(graph[a][b])}")
                violations += 1

    # Cycles.
    found = []
    for comp in strongly_connected(graph):
        if len(comp) > 1:
            found += elementary_cycles(graph, comp)
    found.sort()
    for cycle in found:
        print(f"cycle: {' -> '.join(cycle)}")
        show_edges(graph, cycle)
    if len(found) >= MAX_CYCLES:
        print(f"(listing stopped after {MAX_CYCLES} cycles)")

    edges = sum(len(e) for e in graph.values())
    print(f"{len(objs)} objects, {edges} file-to-file edges, {len(found)} cycles")
    if violations or found:
        print(f"FAILED: {violations} layer violations, {len(found)} cycles")
        return 1
    print("ok: no layer violation, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
