#!/usr/bin/env bash
# Make a Docker engine available to the tests and the lab.
# Uses a running engine when there is one; otherwise installs Debian's docker.io and starts dockerd
# in the background (no systemd on the CI machines), recording that we started it so that
# scripts/stop-docker.sh stops only what we started. The capability workaround
# (scripts/runc-capfilter) is applied only when a privileged container actually fails.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.cache/state
mkdir -p "$state"
log() { printf '[ensure-docker] %s\n' "$*" >&2; }

wait_for_engine() {
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "dockerd did not answer within 30 s; last log lines:"; tail -n 30 "$state/dockerd.log" >&2 || true
  return 1
}

start_dockerd() {
  log "starting dockerd in the background (log: $state/dockerd.log)"
  nohup dockerd >"$state/dockerd.log" 2>&1 &
  echo $! >"$state/dockerd.pid"
  wait_for_engine
}

if docker info >/dev/null 2>&1; then
  log "using the running Docker engine"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing Debian's docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  start_dockerd
fi

# Privileged containers are what the test hosts need; check they start, fix only if they do not.
probe_image=${PROBE_IMAGE:-local/debian:bookworm-minbase}
if docker image inspect "$probe_image" >/dev/null 2>&1; then
  if ! docker run --rm --privileged "$probe_image" true >/dev/null 2>"$state/privileged-probe.err"; then
    if grep -q 'unable to apply caps' "$state/privileged-probe.err" && [ -f "$state/dockerd.pid" ]; then
      log "privileged containers fail (capability bounding set); installing the runc capability filter"
      install -m 0755 scripts/runc-capfilter /usr/local/libexec/runc-capfilter -D
      python3 - <<'PY'
import json, os
path = "/etc/docker/daemon.json"
conf = json.load(open(path)) if os.path.exists(path) else {}
conf.setdefault("runtimes", {})["runc-capfilter"] = {"path": "/usr/local/libexec/runc-capfilter"}
conf["default-runtime"] = "runc-capfilter"
os.makedirs("/etc/docker", exist_ok=True)
json.dump(conf, open(path, "w"), indent=2)
PY
      kill "$(cat "$state/dockerd.pid")"; while kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null; do sleep 0.2; done
      start_dockerd
      docker run --rm --privileged "$probe_image" true
    else
      log "privileged containers fail on this engine:"; cat "$state/privileged-probe.err" >&2; exit 1
    fi
  fi
fi
