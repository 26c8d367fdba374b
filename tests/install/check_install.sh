#!/usr/bin/env bash
# check_install.sh BUILD_DIR: `cmake --install` of BUILD_DIR into a temporary DESTDIR puts each
# file in its GNUInstallDirs place under the tree's CMAKE_INSTALL_PREFIX, and the installed
# binary, run from / with no source tree around, checks the installed policies (the Lua half
# of the language is compiled in). The prefix /usr layout of the Debian package is checked by
# tests/package/check_package.sh.
set -euo pipefail
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
[ -n "$prefix" ] || fail "no CMAKE_INSTALL_PREFIX in $build/CMakeCache.txt"
DESTDIR=$tmp cmake --install "$build" >/dev/null
root=$tmp$prefix
etc=$root/etc
unitdir=$root/lib/systemd/system
if [ "$prefix" = /usr ]; then etc=$tmp/etc; unitdir=$tmp/lib/systemd/system; fi
for f in "$root/bin/sluice" "$root/share/man/man1/sluice.1" "$root/share/man/man5/sluice-policies.5" \
         "$etc/sluice/policies/00-tiers.lua" "$etc/sluice/policies/20-endpoints.lua" \
         "$etc/default/sluice" "$unitdir/sluice.service" "$unitdir/sluice.socket" \
         "$root/share/doc/sluice/README.md" "$root/share/doc/sluice/operations.md" \
         "$root/share/doc/sluice/policies.md" "$root/share/sluice/luals/sluice.lua" \
         "$root/share/doc/sluice/examples/crm/policies/00-tiers.lua"; do
    [ -e "$f" ] || fail "${f#"$tmp"} is not installed"
done
confdir=${etc#"$tmp"}
grep -qx "ExecStart=$prefix/bin/sluice serve $confdir/sluice/policies" "$unitdir/sluice.service" ||
    fail "sluice.service: $(grep ExecStart= "$unitdir/sluice.service")"
if find "$tmp" -path "$tmp$prefix" -prune -o -path "$tmp/etc" -prune -o -path "$tmp/lib" -prune \
        -o -type f -print | grep -q .; then
    fail "files outside the prefix: $(find "$tmp" -type f | grep -v "^$tmp$prefix/" | head -3)"
fi
(cd / && env -i PATH=/usr/bin:/bin "$root/bin/sluice" check "$etc/sluice/policies") ||
    fail "the installed binary rejects the installed policies"
"$root/bin/sluice" version | grep -q '^sluice ' || fail "sluice version"
echo "installed under DESTDIR$prefix as expected; the installed binary runs on its own"
