# shellcheck shell=bash
# Sourced by scripts/run-example.sh and scripts/run-proxy-example.sh, from the
# repository's root (and again in the shell they run under tests/with-pg.sh).

# build_sluice POLICY_DIR: installs what is missing, builds build/sluice and checks
# the policies in POLICY_DIR.
build_sluice() {
    scripts/deps.sh build
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build build -j"$(nproc)" --target sluice >/dev/null
    build/sluice check "$1"
}

# load_crm: loads the example CRM schema and seed into the database the PG* variables
# name. PGOPTIONS stays exported (notices quieted) for what follows.
load_crm() {
    echo "loading examples/crm/schema.sql and seed.sql ..."
    export PGOPTIONS="-c client_min_messages=warning"
    psql -q -v ON_ERROR_STOP=1 -f examples/crm/schema.sql >/dev/null
    psql -q -v ON_ERROR_STOP=1 -f examples/crm/seed.sql >/dev/null
}
