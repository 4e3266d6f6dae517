#!/usr/bin/env bash
# promtool (rule checks and `promtool test rules`) and amtool (Alertmanager configuration checks) from Debian's own
# `prometheus` and `prometheus-alertmanager` packages, unpacked into .cache/promtool: nothing installed
# system-wide, no service started. Reused when present.
# Debian 12's package is Prometheus 2.42 (promtool's test files accept the 2.42 keys only: no fuzzy_compare).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[ensure-promtool] %s\n' "$*" >&2; }
dest=.cache/promtool
if [ -x "$dest/usr/bin/promtool" ] && [ -x "$dest/usr/bin/amtool" ]; then
  log "using $dest/usr/bin/promtool ($("$dest/usr/bin/promtool" --version 2>&1 | head -n1))"
  exit 0
fi
scripts/unpack-debs.sh "$dest" prometheus prometheus-alertmanager
log "unpacked $("$dest/usr/bin/promtool" --version 2>&1 | head -n1) into $dest"
