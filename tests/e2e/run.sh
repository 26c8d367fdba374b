#!/usr/bin/env bash
# Runs one end-to-end test file: tests/e2e/run.sh SLUICE_BINARY TEST.py
# PostgreSQL comes from the PG* environment (tests/with-pg.sh provides one when absent).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export SLUICE_BIN=$1
export SLUICE_ROOT=$(cd "$here/../.." && pwd)
# Debian's python3 (/usr/bin): the packages of scripts/deps.sh (psycopg2, jwt, cryptography)
# are installed for it, whichever python3 comes first on PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
exec "$here/../with-pg.sh" "$py" -u "$2"
