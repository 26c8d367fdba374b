#!/usr/bin/env bash
# As scripts/run-example.sh, for the CRM with JWT identity (examples/crm/jwt/policies):
# makes a signing key if there is none (examples/crm/jwt/private/, never committed) and its
# jwks.json, then serves the CRM to callers with tokens that examples/crm/jwt/tokens.py mints.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
scripts/deps.sh test >/dev/null # python3-jwt and python3-cryptography for tokens.py
/usr/bin/python3 examples/crm/jwt/tokens.py keys
build_sluice examples/crm/jwt/policies

listen=${SLUICE_LISTEN:-127.0.0.1:8080}
exec tests/with-pg.sh bash -c '
    set -e
    . scripts/lib.sh
    load_crm
    build/sluice triggers examples/crm/jwt/policies | psql -q -v ON_ERROR_STOP=1 >/dev/null
    url="http://'"$listen"'"
    cat <<MSG

sluice is serving examples/crm/jwt/policies on $url (Ctrl-C stops it). Try:

  t=\$(examples/crm/jwt/tokens.py mint 1 free)            # users.id 1, on the free plan
  curl -i -H "Authorization: Bearer \$t" "$url/api/crm?type=contacts"    # MISS, then HIT
  t3=\$(examples/crm/jwt/tokens.py mint 3 professional acme)
  curl -i -H "Authorization: Bearer \$t3" "$url/api/dashboard"
  curl -i -H "X-User-Id: 1" "$url/api/crm?type=contacts"  # 401: a header is no identity here
  curl -i -H "Authorization: Bearer \${t}x" "$url/api/crm?type=contacts"  # 401 invalid_token
  examples/crm/jwt/tokens.py rotate                        # a new key; the old one still verifies

MSG
    exec build/sluice serve --listen '"$listen"' examples/crm/jwt/policies
'
