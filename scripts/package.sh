#!/usr/bin/env bash
# Builds the Debian package of sluice into dist/ and checks it with lintian.
# Usage: scripts/package.sh [--no-lintian] [--out DIR]   (DIR: where the .deb goes, default dist)
#
# The package is built with debhelper from debian/ (dpkg-buildpackage -b) in a copy of the
# tree (its tracked and new files, not the ignored ones), so nothing is written beside the
# repository. Dependencies come from the linked libraries (dpkg-shlibdeps). dist/ gets
# sluice_VERSION_ARCH.deb (and the -dbgsym package of its debugging symbols). Lintian errors
# fail the script; its warnings are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
lint=1
out=dist
while [ $# -gt 0 ]; do
    case "$1" in
    --no-lintian) lint=0 ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--no-lintian] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
scripts/deps.sh package

version=$(dpkg-parsechangelog -S Version)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/sluice-$version
mkdir -p "$src"
if git rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files -z -co --exclude-standard |
        tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$src"
else
    tar --exclude='./build*' --exclude=./dist --exclude=./.git -cf - . | tar -xf - -C "$src"
fi

echo "building sluice $version (log: dpkg-buildpackage in $src) ..."
if ! (cd "$src" && dpkg-buildpackage -b -us -uc -j"$(nproc)") >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    echo "dpkg-buildpackage failed" >&2
    exit 1
fi
mkdir -p "$out"
rm -f "$out"/sluice_*.deb "$out"/sluice-dbgsym_*.deb
mv "$work"/*.deb "$out"/
deb=$(ls "$out"/sluice_"$version"_*.deb)
echo "built $deb"

if [ "$lint" = 1 ]; then
    # As root, lintian would say so on every run; its checks are the same.
    out=$(lintian --allow-root --tag-display-limit 0 --display-info "$deb" 2>&1 || true)
    [ -n "$out" ] && printf '%s\n' "$out"
    if printf '%s\n' "$out" | grep -q '^E: '; then
        echo "lintian found errors in $deb" >&2
        exit 1
    fi
    echo "lintian: no errors ($(printf '%s\n' "$out" | grep -c '^W: ' || true) warnings)"
fi
