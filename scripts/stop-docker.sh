#!/usr/bin/env bash
# Stop dockerd only if scripts/ensure-docker.sh started it.
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile=.cache/state/dockerd.pid
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
  echo "[stop-docker] stopping the dockerd we started (pid $pid)" >&2
  kill "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
fi
rm -f "$pidfile"
