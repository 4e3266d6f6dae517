#!/usr/bin/env bash
# What else is running when the tests start: CI's minutes are read against the machine's two cores.
#
# On a machine that development has used, containers started by `make lab` or `make bench-fleet` have restart policy
# unless-stopped: when CI's Docker engine starts, they start again, each with its own engine, watchdog and monitoring
# stack, and take CPU from the tests for the whole run. Under CI (CI=true) they are stopped (not removed: their
# storage stays, and `make lab` starts the lab host again); elsewhere they are only listed, with their CPU use.
set -euo pipefail
log() { printf '[quiet-machine] %s\n' "$*" >&2; }
log "load average: $(cut -d' ' -f1-3 /proc/loadavg); busiest processes:"
ps -eo pcpu=,etime=,comm= --sort=-pcpu | head -n 5 | sed 's/^/    /' >&2
mapfile -t running < <(docker ps --format '{{.Names}}')
[ ${#running[@]} -eq 0 ] && { log "no container is running"; exit 0; }
log "containers already running: ${running[*]}"
docker stats --no-stream --format '    {{.Name}}: {{.CPUPerc}} CPU, {{.MemUsage}}' "${running[@]}" >&2 || true
if [ "${CI:-}" = true ]; then
  log "CI: stopping them for the run (their storage is kept; \`make lab\` starts the lab host again)"
  docker stop --time 20 "${running[@]}" >/dev/null
else
  log "not stopped (CI is not set): they share the CPUs with the tests; \`docker stop\` them for comparable minutes"
fi
