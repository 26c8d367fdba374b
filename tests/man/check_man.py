#!/usr/bin/env python3
"""The manual pages are kept in step with the binary and render cleanly.

check_man.py SLUICE_BINARY DOCS_MAN_DIR

* every flag that `sluice --help` and each command's --help print is in sluice.1's OPTIONS, and every
  variable their "environment:" sections name; so a flag added to engine/main.c without a
  line in the manual fails here;
* every flag sluice.1's OPTIONS section documents is one the binary prints (none stale);
* sluice.1 and sluice-policies.5 render with groff -ww and man --warnings without a warning.
"""

import os
import re
import shutil
import subprocess
import sys

COMMANDS = ([], ["serve"], ["check"], ["explain"], ["triggers"])
FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][a-zA-Z0-9-]*)")


def help_text(binary, cmd):
    r = subprocess.run([binary] + cmd + ["--help"], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        sys.exit("%s --help exited %d: %s" % (" ".join(cmd), r.returncode, r.stderr))
    return r.stdout


def flags_of(text):
    """The options a help text lists: the words starting with - at the start of its lines and
    after the usage line's command."""
    found = set()
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("usage:"):
            found.update(f for f in FLAG.findall(s) if f.startswith("--"))
        elif s.startswith("-"):
            # "-H, --header 'Name: value'   text": the option words before the description.
            head = re.split(r"\s{2,}", s)[0]
            found.update(FLAG.findall(head))
    return found


def env_of(text):
    """The variables an "environment:" section names."""
    out, on = set(), False
    for line in text.splitlines():
        if line.strip() == "environment:":
            on = True
            continue
        if on and not line.strip():
            on = False
        if on:
            m = re.match(r"\s+([A-Z][A-Z0-9_<>]*)\s", line)
            if m:
                out.add(m.group(1))
    return out


def man_text(path):
    """The roff source with its escapes for '-' and '\\e' undone, for plain searching."""
    with open(path) as f:
        return f.read().replace("\\-", "-").replace("\\e", "\\")


def section(text, name):
    m = re.search(r"^\.SH %s\n(.*?)^\.SH " % re.escape(name), text, re.S | re.M)
    return m.group(1) if m else ""


def main():
    binary, man_dir = sys.argv[1], sys.argv[2]
    problems = []
    page = man_text(os.path.join(man_dir, "sluice.1"))
    options = section(page, "OPTIONS")
    printed = set()
    for cmd in COMMANDS:
        text = help_text(binary, cmd)
        flags = flags_of(text)
        printed |= flags
        for f in sorted(flags):
            if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(f), options):
                problems.append("sluice.1's OPTIONS do not document %s (sluice %s--help prints it)"
                                % (f, " ".join(cmd) + " " if cmd else ""))
        for v in sorted(env_of(text)):
            word = "SLUICE_" if v == "SLUICE_<OPTION>" else v
            if word not in page:
                problems.append("sluice.1 does not name %s (sluice %s--help does)"
                                % (v, " ".join(cmd) + " " if cmd else ""))
    if len(printed) < 20:
        problems.append("only %d flags found in the --help texts: the reader is broken" % len(printed))
    # main() takes these itself, outside any help text's option list.
    printed |= {"-h", "--help", "--version"}
    documented = set()
    for line in options.splitlines():
        # A bold option word of a .B/.BI/.BR line, outside quoted arguments (examples).
        if re.match(r"^\.B[IR]? ", line):
            documented.update(FLAG.findall(re.sub(r'"[^"]*"', " ", line.split(" ", 1)[1])))
    for f in sorted(documented):
        if f not in printed:
            problems.append("sluice.1 documents %s, which no --help prints (stale?)" % f)

    for name in ("sluice.1", "sluice-policies.5"):
        path = os.path.join(man_dir, name)
        r = subprocess.run(["groff", "-ww", "-z", "-man", path], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0 or r.stderr.strip():
            problems.append("groff -ww warns about %s:\n%s" % (name, r.stderr))
        if shutil.which("man"):
            env = dict(os.environ, MANROFFSEQ="", MANWIDTH="80", LC_ALL="C.UTF-8")
            r = subprocess.run(["man", "--warnings", "-l", path], capture_output=True, text=True,
                               timeout=60, env=env)
            if r.returncode != 0 or r.stderr.strip():
                problems.append("man --warnings -l %s:\n%s" % (name, r.stderr))
            if "SEE ALSO" not in r.stdout:
                problems.append("man -l %s rendered no SEE ALSO section" % name)
        else:
            problems.append("man is not installed (scripts/deps.sh test installs man-db)")

    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print("sluice.1 documents the %d flags the --help texts print; both pages render cleanly"
          % len(printed))


if __name__ == "__main__":
    main()
