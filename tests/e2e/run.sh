#!/usr/bin/env bash
# Runs one end-to-end test file: tests/e2e/run.sh SLUICE_BINARY TEST.py
# PostgreSQL comes from the PG* environment (tests/with-pg.sh provides one when absent).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export SLUICE_BIN=$1
export SLUICE_ROOT=$(cd "$here/../.." && pwd)
exec "$here/../with-pg.sh" python3 -u "$2"
