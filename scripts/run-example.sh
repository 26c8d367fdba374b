#!/usr/bin/env bash
# Installs what is missing, builds sluice, starts a throwaway PostgreSQL loaded
# with the example CRM schema and seed and the triggers of its on_change
# declarations, and serves examples/crm/policies in the foreground on the
# embedded store. Ctrl-C stops it and removes the database.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
build_sluice examples/crm/policies

listen=${SLUICE_LISTEN:-127.0.0.1:8080}
exec tests/with-pg.sh bash -c '
    set -e
    . scripts/lib.sh
    load_crm
    echo "installing the on_change triggers (sluice triggers examples/crm/policies | psql) ..."
    build/sluice triggers examples/crm/policies | psql -q -v ON_ERROR_STOP=1 >/dev/null
    url="http://'"$listen"'"
    cat <<MSG

sluice is serving examples/crm/policies on $url (Ctrl-C stops it). Try:

  curl -i -H "X-User-Id: 1" "$url/api/crm?type=contacts"       # MISS, then HIT
  curl -i -H "X-User-Id: 3" "$url/api/dashboard"                # stats of a professional user
  curl -i -H "X-User-Id: 1" "$url/api/dashboard/messages"
  curl -i -X POST -H "X-User-Id: 1" -H "Content-Type: application/json" \\
       -d "{\"name\":\"Ada\",\"email\":\"ada@example.com\",\"company\":\"Acme\"}" \\
       "$url/api/crm/contacts"                                  # invalidates user 1 entries
  curl -i -H "X-User-Id: 1" "$url/api/reports/pipeline"         # 10 per minute on top of the tier
  curl -i "$url/nope"                                           # 404 problem+json

A change made in PostgreSQL directly, not through sluice, drops what it makes stale
(on_change in examples/crm/policies/50-changes.lua, triggers from sluice triggers):

  PGPASSWORD=$PGPASSWORD psql -h $PGHOST -p $PGPORT -U $PGUSER -d $PGDATABASE \\
       -c "UPDATE contacts SET company = upper(company) WHERE owner_id = 1"
  curl -i -H "X-User-Id: 1" "$url/api/crm?type=contacts"       # MISS again

MSG
    exec build/sluice serve --listen '"$listen"' examples/crm/policies
'
