#!/usr/bin/env bash
# Installs what is missing, builds sluice, starts a throwaway PostgreSQL loaded
# with the example CRM schema and seed, starts the example app
# (examples/proxy/app.py) on 127.0.0.1:3000 in the background, and serves
# examples/proxy/policies in front of it in the foreground on the embedded
# store. Ctrl-C stops both and removes the database.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
build_sluice examples/proxy/policies

listen=${SLUICE_LISTEN:-127.0.0.1:8080}
admin=${SLUICE_ADMIN:-127.0.0.1:8081}
exec tests/with-pg.sh bash -c '
    set -e
    . scripts/lib.sh
    load_crm
    unset PGOPTIONS

    # The app, on the port examples/proxy/policies/20-upstream.lua names, run by
    # the system python3 (the one python3-psycopg2 is installed for).
    /usr/bin/python3 examples/proxy/app.py --port 3000 &
    app=$!
    trap "kill $app 2>/dev/null; wait $app 2>/dev/null || true" EXIT
    for _ in $(seq 100); do
        curl -fsS -o /dev/null http://127.0.0.1:3000/healthz 2>/dev/null && break
        kill -0 $app 2>/dev/null || { echo "the app did not start" >&2; exit 1; }
        sleep 0.1
    done

    url="http://'"$listen"'"
    adm="http://'"$admin"'"
    cat <<MSG

The app answers on http://127.0.0.1:3000; sluice serves examples/proxy/policies in
front of it on $url (Ctrl-C stops both). Try:

  curl -i -H "X-User-Id: 5" "$url/api/crm?type=contacts"       # MISS (from the app), then HIT
  curl -i -H "X-User-Id: 1" "$url/api/crm?type=contacts"       # HIT at once: users 1-4 are warmed
  curl -i -H "X-User-Id: 4" "$url/api/dashboard"                # enterprise users: warmed too
  curl -i -H "X-User-Id: 5" -H "If-None-Match: \"ETAG\"" "$url/api/crm?type=contacts"
                                                                # 304 from the cache (ETAG from above)
  curl -i -X POST -H "X-User-Id: 5" -H "Content-Type: application/json" \\
       -d "{\"name\":\"Ada\",\"email\":\"ada@example.com\",\"company\":\"Acme\"}" \\
       "$url/api/crm/contacts"                                  # 201 from the app; drops user 5 entries
  curl -i -H "X-User-Id: 5" "$url/api/reports/pipeline"         # 10 per minute on top of the tier
  curl -i -X POST -d "{\"pattern\": \"dash:*\"}" "$adm/invalidate"   # empty every dashboard entry

Stop the app (kill $app): cached answers keep coming, the dashboard panels even
past their ttl (X-Cache: STALE, for stale_if_error = 10 minutes); anything else
answers 502 problem+json.

MSG
    build/sluice serve --listen '"$listen"' --admin '"$admin"' examples/proxy/policies
'
