#!/usr/bin/env bash
# Runs a command with a PostgreSQL server: the one named by PG* variables when
# the caller has one, else a throwaway cluster from pg_virtualenv on a port of
# its own (chosen at random among free ones, so that two runs at once on one
# machine do not both take pg_createcluster's first free port).
set -euo pipefail
if [ -n "${PGHOST:-}" ] && pg_isready -q; then
    exec "$@"
fi
for _ in $(seq 50); do
    port=$((20000 + RANDOM % 10000))
    # Free when nothing listens there and no cluster (running or not) was given it.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
        ! grep -qs "^port = $port\$" /etc/postgresql/*/*/postgresql.conf; then
        exec pg_virtualenv -t -c "-p $port" -o 'max_connections=200' "$@"
    fi
done
echo "with-pg.sh: no free port for a throwaway cluster" >&2
exit 1
