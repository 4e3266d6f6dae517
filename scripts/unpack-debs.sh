#!/usr/bin/env bash
# unpack-debs.sh DEST PACKAGE...: Debian's packages downloaded (apt-get download; the index updated once if a
# package is not found) and unpacked into DEST, replacing it whole: tools for the tests, nothing installed
# system-wide and no maintainer script run.
set -euo pipefail
dest=$1
shift
work=$(mktemp -d /tmp/unpack-debs.XXXX)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get download "$@" >/dev/null 2>&1 ) \
  || { apt-get update -qq && ( cd "$work" && apt-get download "$@" >/dev/null ); }
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$dest.tmp"; done
rm -rf "$dest" && mv "$dest.tmp" "$dest"
