#!/usr/bin/env bash
# Installs what is missing, builds sluice (plain and with ASan + UBSan) and runs
# every test: cmocka units, busted specs, end-to-end tests against real
# PostgreSQL and Redis. Exit status is non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test

jobs=$(nproc)
cmake -S . -B build -DWERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
cmake -S . -B build-sanitize -DWERROR=ON -DSANITIZE=address,undefined \
      -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-sanitize -j"$jobs"

# One PostgreSQL cluster for the whole run; each end-to-end test makes its own database.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
tests/with-pg.sh bash -c '
    set -e
    echo "== tests (build)"
    ctest --test-dir build --output-on-failure
    echo "== tests (build-sanitize: ASan + UBSan)"
    ctest --test-dir build-sanitize --output-on-failure
'
