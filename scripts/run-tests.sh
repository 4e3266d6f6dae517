#!/usr/bin/env bash
# What `make test` (and CI) runs, in order, stopping at the first failure. A Docker engine this
# script had to start is stopped again at the end; one that was already running is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
started_here=0
[ -f .cache/state/dockerd.pid ] || started_here=1
# Each step's minutes, printed as a table at the end (also when a step fails): CI has 30 minutes on a fresh machine.
steps=()
step_name="" step_start=${SECONDS}
started_at=${SECONDS}
end_step() {
  [ -n "${step_name}" ] && steps+=("$(printf '%-18s %3d min %02d s' "${step_name}" \
    $(((SECONDS - step_start) / 60)) $(((SECONDS - step_start) % 60)))")
  step_name=""
}
checks_pid=""
summary() {
  local rc=$?
  [ -n "${checks_pid}" ] && kill "${checks_pid}" 2>/dev/null
  end_step
  [ "$started_here" = 1 ] && scripts/stop-docker.sh || true
  printf '\n=== minutes per step (%s) ===\n' "$([ "${rc}" = 0 ] && echo passed || echo "FAILED, exit ${rc}")"
  printf '%s\n' "${steps[@]}"
  [ -s .cache/state/molecule-minutes ] && sed 's/^/  /' .cache/state/molecule-minutes
  printf '%-18s %3d min %02d s\n' total $(((SECONDS - started_at) / 60)) $(((SECONDS - started_at) % 60))
}
trap summary EXIT
# Each step's heading names the free disk space (Docker-in-Docker scenarios need a few GB: a failure is read with it).
# The minutes since the start too: CI must stay well inside its 90 minutes, and the log says where they went.
step() {
  end_step
  step_name=$1 step_start=${SECONDS}
  printf '\n=== %s (free disk: %s, at %d min) ===\n' "$*" "$(df -Ph . | awk 'NR == 2 {print $4}')" \
    $(((SECONDS - started_at) / 60))
}
# A long step's output is also kept in .cache/state/<name>.log; when the step fails, its failing tests and tasks
# are printed again last, so that the tail of a CI log names them (molecule prints pages after its verifier).
logged() {
  local name=$1; shift
  local log=.cache/state/${name}.log rc=0
  mkdir -p .cache/state
  COLUMNS=250 "$@" 2>&1 | tee "${log}" || rc=$?
  if [ "${rc}" != 0 ]; then
    printf '\n=== %s failed (exit %s); what failed, from %s ===\n' "${name}" "${rc}" "${log}"
    # Colours and molecule's box drawing off first; then pytest's failures, ansible's failed tasks, molecule's errors.
    sed -E 's/\x1b\[[0-9;]*m//g; s/^\s*│ ?//' "${log}" \
      | grep -aE '^(FAILED|ERROR)( |$)|^E  |^_{3,} .* _{3,}$|^fatal: |^failed: |FAILED! =>|^CRITICAL|^ERROR ' \
      | grep -av 'FAILED - RETRYING' | cut -c1-1000 | tail -60 || true
  fi
  return "${rc}"
}
mkdir -p .cache/state && rm -f .cache/state/molecule-minutes
# Set-up in two lanes side by side: the Python environment, the linters and the syntax check beside the Docker engine,
# the images (mostly waits on the Debian mirror) and then the test tools (Chromium, promtool, HAProxy, Redis from
# Debian's packages: their apt runs after Docker's, in the same lane). CI's lanes took 218 s and 178 s with the tools
# in the first. The first lane's output is printed when both are done.
step "set-up"
checks_log=.cache/state/checks.log
(
  for target in venv lint syntax; do
    start=${SECONDS}
    make --no-print-directory "${target}"
    printf -- '--- %s: %d s\n' "${target}" $((SECONDS - start))
  done
) >"${checks_log}" 2>&1 &
checks_pid=$!
scripts/ensure-docker.sh && scripts/ensure-compose.sh && scripts/ci-quiet-machine.sh
make --no-print-directory images
printf -- '--- docker, images: %d s\n' $((SECONDS - step_start))
start=${SECONDS} tools_rc=0
{ scripts/ensure-chromium.sh && scripts/ensure-promtool.sh && scripts/ensure-haproxy.sh && scripts/ensure-redis.sh; } \
  || tools_rc=$?
printf -- '--- chromium, promtool, haproxy, redis: %d s\n' $((SECONDS - start))
checks_rc=0
wait "${checks_pid}" || checks_rc=$?
checks_pid=""
printf '\n=== venv, lint, syntax (beside the images and test tools; from %s) ===\n' "${checks_log}"
cat "${checks_log}"
[ "${checks_rc}" = 0 ] || { printf '\nvenv, lint or syntax failed (exit %s)\n' "${checks_rc}"; exit "${checks_rc}"; }
[ "${tools_rc}" = 0 ] || { printf '\na test tool failed to install (exit %s)\n' "${tools_rc}"; exit "${tools_rc}"; }
step "pytest";          LLM_REQUIRE_BROWSER=1 logged pytest make --no-print-directory unit
step "molecule";        logged molecule make --no-print-directory molecule
end_step
