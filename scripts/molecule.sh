#!/usr/bin/env bash
# `make molecule`: every scenario under molecule/, two at a time (MOLECULE_JOBS), the longest first (default, fleet),
# then the others by name; a new scenario is picked up without being listed. Measured on the 2-core CI machine, one
# scenario alone left much of the machine idle: a scenario of one test host keeps about one core busy (Ansible works
# through one host's tasks in order: 40-45 % idle during default's converge), and its verify mostly waits (a watchdog,
# an alert window: 90 % idle). Three at a time was measured too (CONTRIBUTING.md) and was slower: the load went to
# about 6 and every scenario stretched (fleet 11 -> 17 min). With SCENARIOS="a b" only those run, one after another.
#
# A scenario's output goes to .cache/state/molecule-<name>.log and is printed whole when it ends, with its minutes
# (also added to .cache/state/molecule-minutes for `make test`'s summary). Exits non-zero if any scenario failed.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.cache/state
mkdir -p "$state"
molecule=${MOLECULE:-$(command -v molecule || echo .venv/bin/molecule)}

run_scenario() {
  local name=$1 start=${SECONDS} rc=0 line
  printf -- '--- molecule test -s %s: started at %s ---\n' "${name}" "$(date +%H:%M:%S)"
  # Molecule's own lines (each step's start and end, coloured) get the time of day: where a scenario's minutes went.
  "${molecule}" test -s "${name}" 2>&1 \
    | perl -MPOSIX -pe '$_ = strftime("%H:%M:%S ", localtime) . $_ if /^(?:\e\[[0-9;]*m)*INFO/' \
    >"${state}/molecule-${name}.log" || rc=$?
  line=$(printf 'molecule %-13s %3d min %02d s, %s' "${name}" $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) \
    "$([ "${rc}" = 0 ] && echo passed || echo FAILED)")
  # One scenario's log at a time, whole, however the lanes interleave.
  {
    flock 9
    printf '\n--- molecule test -s %s ---\n' "${name}"
    cat "${state}/molecule-${name}.log"
    printf '\n--- %s ---\n' "${line}"
    echo "${line}" >>"${state}/molecule-minutes"
  } 9>"${state}/molecule.lock"
  return "${rc}"
}

if [ -n "${SCENARIOS:-}" ]; then
  rc=0
  # shellcheck disable=SC2086 # a space-separated list of names
  for name in ${SCENARIOS}; do run_scenario "${name}" || rc=1; done
  exit "${rc}"
fi

order=()
for name in default fleet; do [ -f "molecule/${name}/molecule.yml" ] && order+=("${name}"); done
for file in molecule/*/molecule.yml; do
  name=$(basename "$(dirname "${file}")")
  case "${name}" in default | fleet) ;; *) order+=("${name}") ;; esac
done
jobs_max=${MOLECULE_JOBS:-2}
running=0 rc=0
for name in "${order[@]}"; do
  if [ "${running}" -ge "${jobs_max}" ]; then
    wait -n || rc=1
    running=$((running - 1))
  fi
  run_scenario "${name}" &
  running=$((running + 1))
done
while [ "${running}" -gt 0 ]; do
  wait -n || rc=1
  running=$((running - 1))
done
exit "${rc}"
