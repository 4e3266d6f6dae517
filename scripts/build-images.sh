#!/usr/bin/env bash
# Build the local images the lab and molecule use, without a registry (shared/ENVIRONMENT.md):
#   local/debian:<suite>-minbase  debootstrap --variant=minbase, imported
#   local/llm-base:bookworm       python3 + venv: base of the lab's llama.cpp engine image
#   local/debian:<suite>          systemd test host (bookworm on llm-base, so the layers are shared)
#   local/fedora42-sim            SIMULATED Fedora 42 (forky + dnf5/rpm), for molecule/fedora42_sim
# Existing images are reused; FORCE=1 rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[build-images] %s\n' "$*" >&2; }
suites=${SUITES:-bookworm trixie}
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
have() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }

for suite in $suites; do
  if ! have "local/debian:$suite-minbase"; then
    root=$(mktemp -d "/tmp/minbase-$suite.XXXX")
    log "debootstrap $suite from $mirror"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"/tmp/debootstrap-$suite.log" 2>&1 \
      || { tail -n 30 "/tmp/debootstrap-$suite.log" >&2; exit 1; }
    tar -C "$root" -c . | docker import - "local/debian:$suite-minbase" >/dev/null
    rm -rf "$root"
  fi
done

if ! have local/llm-base:bookworm; then
  log "building local/llm-base:bookworm"
  docker build -q -t local/llm-base:bookworm -f tests/images/llm-base.Dockerfile tests/images >/dev/null
fi

for suite in $suites; do
  base="local/debian:$suite-minbase"
  [ "$suite" = bookworm ] && base=local/llm-base:bookworm
  if ! have "local/debian:$suite"; then
    log "building local/debian:$suite (systemd test host)"
    docker build -q --build-arg "BASE=$base" -t "local/debian:$suite" -f tests/images/systemd-host.Dockerfile tests/images >/dev/null
  fi
done
# SIMULATED Fedora 42 host (molecule/fedora42_sim): a forky userland with Debian's dnf5 and rpm. Bookworm's
# debootstrap has no forky script; sid's fits.
if [ "${FEDORA_SIM:-1}" = 1 ] && ! have local/fedora42-sim; then
  if ! have local/debian:forky-minbase; then
    root=$(mktemp -d /tmp/minbase-forky.XXXX)
    log "debootstrap forky from $mirror"
    debootstrap --variant=minbase --include=ca-certificates forky "$root" "$mirror" /usr/share/debootstrap/scripts/sid \
      >/tmp/debootstrap-forky.log 2>&1 || { tail -n 30 /tmp/debootstrap-forky.log >&2; exit 1; }
    tar -C "$root" -c . | docker import - local/debian:forky-minbase >/dev/null
    rm -rf "$root"
  fi
  log "building local/fedora42-sim"
  docker build -q -t local/fedora42-sim -f tests/images/fedora42-sim.Dockerfile tests/images >/dev/null
fi

# The lab host has its own Docker engine and no registry: llm_stack loads this archive there.
archive=.cache/images/llm-base-bookworm.tar
if [ "${FORCE:-0}" = 1 ] || [ ! -s "$archive" ]; then
  mkdir -p .cache/images
  docker save -o "$archive.tmp" local/llm-base:bookworm && mv "$archive.tmp" "$archive"
fi
# The lab's monitoring images from Debian's packages (roles/monitoring; production pulls prom/*), and the SIMULATED
# DCGM exporter the tests use in place of NVIDIA's; each saved for loading into a lab host.
if [ "${MONITORING:-1}" = 1 ]; then
  for target in prometheus alertmanager node-exporter; do
    if ! have "local/$target:bookworm"; then
      log "building local/$target:bookworm (Debian's package)"
      docker build -q --target "$target" -t "local/$target:bookworm" -f tests/images/monitoring-debian.Dockerfile tests/images >/dev/null
    fi
  done
  if ! have local/dcgm-exporter-sim:bookworm; then
    log "building local/dcgm-exporter-sim:bookworm (SIMULATED)"
    docker build -q -t local/dcgm-exporter-sim:bookworm -f tests/images/dcgm-exporter-sim.Dockerfile \
      tests/fixtures/dcgm-exporter-sim >/dev/null
  fi
  save() {  # archive, images...: written when missing (FORCE=1: written again)
    local archive=$1; shift
    if [ "${FORCE:-0}" = 1 ] || [ ! -s "$archive" ]; then
      docker save -o "$archive.tmp" "$@" && mv "$archive.tmp" "$archive"
    fi
  }
  save .cache/images/monitoring-bookworm.tar local/prometheus:bookworm local/alertmanager:bookworm local/node-exporter:bookworm
  save .cache/images/dcgm-exporter-sim.tar local/dcgm-exporter-sim:bookworm
fi
log "images ready: $(docker images --format '{{.Repository}}:{{.Tag}}' 'local/*' | sort | tr '\n' ' ')"
