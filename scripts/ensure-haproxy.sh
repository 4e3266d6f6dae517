#!/usr/bin/env bash
# HAProxy (the front door's load balancer) from Debian's own package, with the libraries a bare Debian 12 lacks,
# unpacked into .cache/haproxy for the tests: nothing installed system-wide, no service started. Reused when present.
# The tests run it as the front_door role renders it for a host (haproxy -c, then a real process).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[ensure-haproxy] %s\n' "$*" >&2; }
dest=.cache/haproxy
run() { LD_LIBRARY_PATH="$dest/usr/lib/x86_64-linux-gnu:$dest/usr/lib" "$dest/usr/sbin/haproxy" "$@"; }
if [ -x "$dest/usr/sbin/haproxy" ] && run -v >/dev/null 2>&1; then
  log "using $(run -v | head -n1)"
  exit 0
fi
scripts/unpack-debs.sh "$dest" haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1
log "unpacked $(run -v | head -n1) into $dest"
