#!/usr/bin/env bash
# check_package.sh OUT_DIR: builds the Debian package with scripts/package.sh into OUT_DIR
# (lintian errors fail it), then checks the .deb without installing it on this machine: its
# files (dpkg-deb -c), conffiles, dependencies from the shared libraries, maintainer scripts
# (the service enabled the Debian way, the socket not; SIGUSR2 on upgrade), the unit it ships,
# and the packaged binary (no test hooks) checking the packaged policies.
# Skipped (exit 0 with a message) where dpkg-buildpackage or lintian is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in dpkg-buildpackage dpkg-deb lintian dh; do
    if ! command -v "$tool" >/dev/null; then
        echo "SKIP: $tool is not installed (scripts/deps.sh package installs it)"
        exit 0
    fi
done

"$root/scripts/package.sh" --out "$out" | tee "$out.log"
version=$(cd "$root" && dpkg-parsechangelog -S Version)
deb=$(ls "$out"/sluice_"$version"_*.deb)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$tmp/files"
for f in /usr/bin/sluice /usr/share/man/man1/sluice.1.gz /usr/share/man/man5/sluice-policies.5.gz \
         /lib/systemd/system/sluice.service /lib/systemd/system/sluice.socket \
         /etc/default/sluice /etc/sluice/policies/00-tiers.lua /etc/sluice/policies/10-identity.lua \
         /etc/sluice/policies/20-endpoints.lua /usr/share/doc/sluice/copyright \
         /usr/share/doc/sluice/changelog.gz /usr/share/doc/sluice/operations.md.gz \
         /usr/share/sluice/luals/sluice.lua; do
    grep -qx "$f" "$tmp/files" || fail "$f is not in the package"
done
if grep -E '^/(usr/local|home|tmp|root|opt)/' "$tmp/files"; then fail "files outside the FHS places"; fi

dpkg-deb -e "$deb" "$tmp/control"
for f in /etc/default/sluice /etc/sluice/policies/00-tiers.lua /etc/sluice/policies/10-identity.lua \
         /etc/sluice/policies/20-endpoints.lua; do
    grep -qx "$f" "$tmp/control/conffiles" || fail "$f is not a conffile"
done
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libevent-2.1 libhiredis libjansson liblua5.4 libpq5 libc6; do
    case "$depends" in *"$lib"*) ;; *) fail "Depends lacks $lib: $depends" ;; esac
done
grep -q "deb-systemd-helper enable 'sluice.service'" "$tmp/control/postinst" ||
    fail "postinst does not enable sluice.service with deb-systemd-helper"
grep -q "sluice.socket" "$tmp/control/postinst" && fail "postinst enables sluice.socket"
grep -q 'kill -USR2' "$tmp/control/postinst" || fail "postinst has no binary upgrade"
grep -q "deb-systemd-invoke stop 'sluice.service'" "$tmp/control/prerm" ||
    fail "prerm does not stop the service on removal"
grep -q "deb-systemd-helper purge 'sluice.service'" "$tmp/control/postrm" ||
    fail "postrm does not clean up on purge"
for s in postinst prerm postrm; do sh -n "$tmp/control/$s" || fail "$s is not valid sh"; done

dpkg-deb -x "$deb" "$tmp/root"
grep -qx 'ExecStart=/usr/bin/sluice serve /etc/sluice/policies' \
    "$tmp/root/lib/systemd/system/sluice.service" || fail "the unit runs something else"
grep -q '@' <(grep -v '@system-service' "$tmp/root/lib/systemd/system/sluice.service") &&
    fail "the unit holds an unconfigured @VARIABLE@"
(cd / && "$tmp/root/usr/bin/sluice" check "$tmp/root/etc/sluice/policies") ||
    fail "the packaged binary rejects the packaged policies"
grep -q SLUICE_TEST_STALL_FILE "$tmp/root/usr/bin/sluice" &&
    fail "the packaged binary honours the tests' hooks"
echo "package: $(basename "$deb"), $(wc -l <"$tmp/files") entries, Depends: $depends"
