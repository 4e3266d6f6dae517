#!/usr/bin/env bash
# Build the local images the lab and molecule use, without a registry (shared/ENVIRONMENT.md):
#   local/debian:<suite>-minbase  debootstrap --variant=minbase, imported
#   local/llm-base:bookworm       python3 + venv: base of the lab's llama.cpp engine image
#   local/debian:<suite>          systemd test host (bookworm on llm-base, so the layers are shared)
#   local/fedora42-sim            SIMULATED Fedora 42 (forky + dnf5/rpm), for molecule/fedora42_sim
#   local/{prometheus,alertmanager,node-exporter}:bookworm, local/dcgm-exporter-sim:bookworm   the lab's monitoring
# Existing images are reused; FORCE=1 rebuilds. Independent images are built side by side: each is mostly a wait on
# the Debian mirror, and one after another they took four minutes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[build-images] %s\n' "$*" >&2; }
# Bookworm is the only suite a scenario or the lab runs on (SUITES adds others for a test host of another release).
suites=${SUITES:-bookworm}
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
have() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }

# minbase SUITE [debootstrap options...]: local/debian:SUITE-minbase (SCRIPT: debootstrap's script for the suite).
minbase() {
  local suite=$1 root; shift
  have "local/debian:$suite-minbase" && return 0
  root=$(mktemp -d "/tmp/minbase-$suite.XXXX")
  log "debootstrap $suite from $mirror"
  debootstrap --variant=minbase "$@" "$suite" "$root" "$mirror" ${SCRIPT:+"$SCRIPT"} >"/tmp/debootstrap-$suite.log" 2>&1 \
    || { tail -n 30 "/tmp/debootstrap-$suite.log" >&2; rm -rf "$root"; return 1; }
  tar -C "$root" -c . | docker import - "local/debian:$suite-minbase" >/dev/null
  rm -rf "$root"
}

# build IMAGE CONTEXT DOCKERFILE [docker build options...]: built when missing.
build() {
  local image=$1 context=$2 dockerfile=$3; shift 3
  have "$image" && return 0
  log "building $image"
  docker build -q -t "$image" -f "$dockerfile" "$@" "$context" >/dev/null
}

# together CMD...: run CMD in the background; `joined` waits for every one and fails if any failed.
jobs_started=()
together() { "$@" & jobs_started+=($!); }
joined() {
  local pid rc=0
  for pid in "${jobs_started[@]}"; do wait "$pid" || rc=1; done
  jobs_started=()
  return "$rc"
}

# First the debootstraps, side by side; then the images on them, side by side.
for suite in $suites; do together minbase "$suite"; done
# SIMULATED Fedora 42 host (molecule/fedora42_sim): a forky userland with Debian's dnf5 and rpm. Bookworm's
# debootstrap has no forky script; sid's fits.
if [ "${FEDORA_SIM:-1}" = 1 ] && ! have local/fedora42-sim; then
  SCRIPT=/usr/share/debootstrap/scripts/sid together minbase forky --include=ca-certificates
fi
joined

# The systemd test hosts: bookworm on llm-base (the lab engine's base), so the layers are shared.
test_hosts() {
  local suite base
  build local/llm-base:bookworm tests/images tests/images/llm-base.Dockerfile
  for suite in $suites; do
    base=local/debian:$suite-minbase
    [ "$suite" = bookworm ] && base=local/llm-base:bookworm
    build "local/debian:$suite" tests/images tests/images/systemd-host.Dockerfile --build-arg "BASE=$base"
  done
  if [ "${MONITORING:-1}" = 1 ]; then
    build local/dcgm-exporter-sim:bookworm tests/fixtures/dcgm-exporter-sim tests/images/dcgm-exporter-sim.Dockerfile
  fi
}
# The lab's monitoring images from Debian's packages (roles/monitoring; production pulls prom/*): one package layer.
monitoring() {
  local target
  for target in prometheus alertmanager node-exporter; do
    build "local/$target:bookworm" tests/images tests/images/monitoring-debian.Dockerfile --target "$target"
  done
}
together test_hosts
[ "${MONITORING:-1}" = 1 ] && together monitoring
[ "${FEDORA_SIM:-1}" = 1 ] && together build local/fedora42-sim tests/images tests/images/fedora42-sim.Dockerfile
joined

# save ARCHIVE IMAGE...: a docker save archive for loading into a lab host (which has its own engine and no registry),
# written when missing (FORCE=1: written again).
save() {
  local archive=$1; shift
  if [ "${FORCE:-0}" = 1 ] || [ ! -s "$archive" ]; then
    mkdir -p "$(dirname "$archive")"
    docker save -o "$archive.tmp" "$@" && mv "$archive.tmp" "$archive"
  fi
}
save .cache/images/llm-base-bookworm.tar local/llm-base:bookworm
if [ "${MONITORING:-1}" = 1 ]; then
  save .cache/images/monitoring-bookworm.tar local/prometheus:bookworm local/alertmanager:bookworm local/node-exporter:bookworm
  save .cache/images/dcgm-exporter-sim.tar local/dcgm-exporter-sim:bookworm
fi
log "images ready: $(docker images --format '{{.Repository}}:{{.Tag}}' 'local/*' | sort | tr '\n' ' ')"
