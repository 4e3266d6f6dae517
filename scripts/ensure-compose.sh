#!/usr/bin/env bash
# Make `docker compose` (v2) available on the control node, for validating rendered compose projects.
# Bookworm has only compose v1; trixie's docker-compose 2.x .deb needs only libc6 >= 2.34, so its plugin binary
# is taken from it with a private apt configuration: the host's own apt sources stay as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
docker compose version >/dev/null 2>&1 && exit 0
log() { printf '[ensure-compose] %s\n' "$*" >&2; }
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
root=$(pwd)/.cache/apt-trixie
mkdir -p "$root/lists/partial" "$root/archives/partial" "$root/debs"
echo "deb $mirror trixie main" >"$root/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$root/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$root/lists" -o "Dir::Cache::Archives=$root/archives"
          -o Acquire::Check-Valid-Until=false -o APT::Get::List-Cleanup=false)
log "fetching docker-compose from trixie ($mirror)"
apt-get -qq "${apt_opts[@]}" update
(cd "$root/debs" && apt-get -qq "${apt_opts[@]}" download docker-compose)
rm -rf "$root/x" && dpkg-deb -x "$root"/debs/docker-compose_*.deb "$root/x"
install -D -m 0755 "$root/x/usr/libexec/docker/cli-plugins/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
docker compose version
