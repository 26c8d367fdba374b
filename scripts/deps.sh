#!/usr/bin/env bash
# Installs the Debian packages sluice needs to build, test and benchmark.
# Usage: scripts/deps.sh [build|test|bench|package]   (each of build, test, bench includes the
# ones before; package is build plus what scripts/package.sh needs to make the .deb)
set -euo pipefail
level=${1:-build}

build_pkgs=(build-essential cmake pkg-config clang clang-format
            libevent-dev libhiredis-dev libpq-dev libjansson-dev liblua5.4-dev lua5.4
            libssl-dev  # OpenSSL 3: JWT signatures, digests, HMAC; TLS to https upstreams
            zlib1g-dev libbrotli-dev libzstd-dev  # response compression: gzip, br, zstd
            postgresql postgresql-common curl
            python3-psycopg2)  # examples/proxy/app.py (scripts/run-proxy-example.sh, e2e)
test_pkgs=(libcmocka-dev lua-busted lua-dkjson redis-server redis-sentinel python3 libclang-rt-14-dev faketime
           prometheus   # promtool and a real scrape (tests/e2e/test_metrics.py)
           chromium     # the status page rendered headless (tests/e2e/test_status_page.py)
           groff-base man-db   # the manual pages rendered with warnings on (ctest man/pages)
           systemd             # systemd-analyze verify of the units (tests/e2e/test_systemd.py)
           debhelper dpkg-dev fakeroot lintian  # scripts/package.sh, ctest package/deb
           python3-jwt python3-cryptography  # tokens minted by tests/e2e/test_jwt.py
           openssl  # the test CA and certificates of tests/e2e/test_https_upstream.py
           python3-brotli python3-zstandard)  # br and zstd answers decoded (test_compress.py)
package_pkgs=(debhelper dpkg-dev fakeroot lintian)
bench_pkgs=(wrk nginx varnish varnish-modules lua-nginx-redis libnginx-mod-http-lua linux-perf
            gnuplot-nox)  # the charts of bench/*.sh with CHART=1

pkgs=("${build_pkgs[@]}")
case "$level" in
build) ;;
test) pkgs+=("${test_pkgs[@]}") ;;
bench) pkgs+=("${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
package) pkgs+=("${package_pkgs[@]}") ;;
*) echo "usage: $0 [build|test|bench|package]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
