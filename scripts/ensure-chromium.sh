#!/usr/bin/env bash
# Make Debian's Chromium available for the browser tests (Playwright drives it through executable_path:
# Playwright's own browser download cannot reach its CDN here), with a Korean font so Hangul renders as text in
# the screenshots rather than as empty boxes. Needs root when it has to install.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -d /usr/share/fonts/truetype/nanum ] || missing+=(fonts-nanum)
[ ${#missing[@]} -eq 0 ] && exit 0
log() { printf '[ensure-chromium] %s\n' "$*" >&2; }
if [ "$(id -u)" != 0 ]; then
  log "missing ${missing[*]}; installing needs root: run this script as root"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
# apt's output is shown only when a step fails, so a successful run stays quiet.
quietly() {
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" >&2
    log "failed: $*"
    exit 1
  fi
}
# Refresh the package lists only when apt does not know the packages yet (a fresh machine or container).
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
  log "updating the package lists"
  quietly apt-get -q -o DPkg::Lock::Timeout=300 update
fi
log "installing ${missing[*]}"
# Waits for dpkg's lock rather than failing: another apt run (a user's, unattended-upgrades) may hold it.
quietly apt-get -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}"
[ -x /usr/bin/chromium ]
