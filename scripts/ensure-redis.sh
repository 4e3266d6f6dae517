#!/usr/bin/env bash
# Redis (the shared limits store the front door's host runs) from Debian's own package, with the libraries a bare
# Debian 12 lacks, unpacked into .cache/redis for the tests: nothing installed system-wide, no service started.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[ensure-redis] %s\n' "$*" >&2; }
dest=.cache/redis
run() { LD_LIBRARY_PATH="$dest/usr/lib/x86_64-linux-gnu" "$dest/usr/bin/redis-server" "$@"; }
if [ -x "$dest/usr/bin/redis-server" ] && run --version >/dev/null 2>&1; then
  log "using $(run --version)"
  exit 0
fi
scripts/unpack-debs.sh "$dest" redis-server redis-tools liblzf1 libjemalloc2
log "unpacked $(run --version) into $dest"
