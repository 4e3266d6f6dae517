#!/usr/bin/env bash
# Build the SIMULATED vendor mirror for the gpu_sim scenario (tests/fixtures/vendor-mirror/README.md):
# flat apt repositories with NVIDIA's package names and versions, signed with a throwaway key.
# Output: .cache/vendor-mirror/{nvidia-cuda,libnvidia-container}/ and fixture-key.asc. Rebuilt when the
# fixture sources change; KERNEL names the headers package (default: this machine's running kernel, which
# is also the test containers' kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
src=tests/fixtures/vendor-mirror
out=.cache/vendor-mirror
kernel=${KERNEL:-$(uname -r)}
stamp=$(cat "$0" "$src"/*.in | sha1sum | cut -c1-12)-$kernel
[ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] && exit 0
log() { printf '[vendor-mirror] %s\n' "$*" >&2; }
need=()
command -v apt-ftparchive >/dev/null || need+=(apt-utils)
command -v gpg >/dev/null || need+=(gnupg)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
rm -rf "$out" && mkdir -p "$out/nvidia-cuda" "$out/libnvidia-container"
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT

# pkg REPO NAME VERSION DEPENDS [SRC:DEST[:VERSION-SUBST]]...
pkg() {
  local repo=$1 name=$2 version=$3 depends=$4; shift 4
  local root="$work/$name-$version"
  mkdir -p "$root/DEBIAN" "$root/usr/share/doc/$name"
  {
    echo "Package: $name"; echo "Version: $version"; echo "Architecture: amd64"
    echo "Maintainer: llm-endpoints test fixture <fixture@invalid>"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Description: SIMULATED $name for the llm-endpoints gpu_sim tests"
  } >"$root/DEBIAN/control"
  echo "SIMULATED package built by scripts/build-vendor-mirror.sh; not NVIDIA software." >"$root/usr/share/doc/$name/SIMULATION"
  local spec file dest
  for spec in "$@"; do
    file=${spec%%:*}; dest=${spec#*:}
    mkdir -p "$root$(dirname "$dest")"
    sed "s/@VERSION@/${version%-*}/g" "$src/$file" >"$root$dest"
    chmod 0755 "$root$dest"
  done
  dpkg-deb --root-owner-group -Zgzip -b "$root" "$out/$repo/${name}_${version}_amd64.deb" >/dev/null
}

for v in 570.172.08-1 570.195.03-1 575.64.05-1; do
  pkg nvidia-cuda nvidia-smi "$v" "" nvidia-smi.in:/usr/bin/nvidia-smi
  # What the loaded open module reports, under the fixture procfs the scenario points nvidia_driver_procfs_root at.
  pkg nvidia-cuda nvidia-kernel-open-dkms "$v" "" proc-version-open.in:/srv/sim-proc/driver/nvidia/version
  pkg nvidia-cuda nvidia-open "$v" "nvidia-kernel-open-dkms (= $v), nvidia-smi (= $v)"
done
pkg nvidia-cuda cuda-toolkit-12-8 12.8.93-1 "" nvcc.in:/usr/local/cuda-12.8/bin/nvcc
pkg nvidia-cuda "linux-headers-$kernel" 1.0-1 ""
ctk=1.17.8-1
pkg libnvidia-container libnvidia-container1 "$ctk" ""
pkg libnvidia-container libnvidia-container-tools "$ctk" "libnvidia-container1 (= $ctk)"
pkg libnvidia-container nvidia-container-toolkit-base "$ctk" "" nvidia-ctk.in:/usr/bin/nvidia-ctk
pkg libnvidia-container nvidia-container-toolkit "$ctk" \
  "nvidia-container-toolkit-base (= $ctk), libnvidia-container-tools (= $ctk)"

export GNUPGHOME="$work/gnupg"; mkdir -m 0700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key "llm-endpoints fixture (throwaway) <fixture@invalid>" rsa3072 sign 1d
gpg --batch --armor --export >"$out/fixture-key.asc"
for repo in nvidia-cuda libnvidia-container; do
  (cd "$out/$repo" && apt-ftparchive packages . >Packages && gzip -kf Packages \
     && apt-ftparchive -o APT::FTPArchive::Release::Origin="llm-endpoints fixture" release . >Release \
     && gpg --batch --yes --clearsign -o InRelease Release && gpg --batch --yes -abs -o Release.gpg Release)
done
# A second throwaway key, for the test that a repository signed by another key is refused.
GNUPGHOME="$work/other" && mkdir -m 0700 "$GNUPGHOME" && export GNUPGHOME
gpg --batch --quiet --passphrase '' --quick-gen-key "other throwaway <other@invalid>" rsa3072 sign 1d
gpg --batch --armor --export >"$out/wrong-key.asc"
echo "$stamp" >"$out/.stamp"
log "built $(ls "$out"/*/*.deb | wc -l) packages in $out (kernel headers for $kernel)"
