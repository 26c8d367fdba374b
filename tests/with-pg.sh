#!/usr/bin/env bash
# Runs a command with a PostgreSQL server: the one named by PG* variables when
# the caller has one, else a throwaway cluster from pg_virtualenv.
set -euo pipefail
if [ -n "${PGHOST:-}" ] && pg_isready -q; then
    exec "$@"
fi
exec pg_virtualenv -t -o 'max_connections=200' "$@"
