#!/usr/bin/env bash
# What `make test` (and CI) runs, in order, stopping at the first failure. A Docker engine this
# script had to start is stopped again at the end; one that was already running is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
started_here=0
[ -f .cache/state/dockerd.pid ] || started_here=1
cleanup() { [ "$started_here" = 1 ] && scripts/stop-docker.sh || true; }
trap cleanup EXIT
step() { printf '\n=== %s ===\n' "$*"; }
step "venv";            make --no-print-directory venv
step "lint";            make --no-print-directory lint
step "syntax";          make --no-print-directory syntax
step "docker + compose"; scripts/ensure-docker.sh && scripts/ensure-compose.sh
step "images";          make --no-print-directory images
step "chromium";        scripts/ensure-chromium.sh
step "pytest";          LLM_REQUIRE_BROWSER=1 make --no-print-directory unit
step "molecule";        make --no-print-directory molecule
