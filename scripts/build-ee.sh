#!/usr/bin/env bash
# `make ee`: the execution environment of execution-environment.yml, built by ansible-builder into the local Docker
# engine as local/llm-endpoints-ee:latest. What the build copies in is put into .cache/ee/ first, on this machine:
#   wheels/       every Python package the EE installs (ee/requirements.txt, ansible-core and ansible-runner at the
#                 definition's pins, ee/build-wheels.txt), downloaded once per list from PyPI;
#   collections/  this collection's artifact (ansible-galaxy collection build) and community.docker,
#                 community.general and ansible.posix packed from the pinned `ansible` package in .venv (Galaxy may be
#                 unreachable: they are the versions requirements.yml names).
# Then `ansible-builder build` (Docker; its context in .cache/ee/context). Docker's layer cache keeps the stages before
# the collections: a rebuild after a change to the collection takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
ee=.cache/ee
mkdir -p "${ee}/wheels" "${ee}/collections"
# One build at a time: a second (`make ee` beside molecule's) would rewrite the artifacts while the first copies them.
exec 9>"${ee}/.lock"
flock 9

# The definition's two pins, read from it (one place to change them).
pins=$("${bin}/python" - <<'PY'
import yaml
deps = yaml.safe_load(open("execution-environment.yml"))["dependencies"]
print(deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"])
PY
)
list=$( { grep -hvE '^\s*(#|$)' ee/requirements.txt ee/build-wheels.txt; printf '%s\n' ${pins}; } | sort)
if [ "$(cat "${ee}/wheels/.complete" 2>/dev/null)" != "${list}" ]; then
  rm -rf "${ee}/wheels" && mkdir -p "${ee}/wheels"
  # The EE's base is Debian 12 with its Python 3.11, as this machine's (make test's): binary wheels for this
  # machine's platform (its glibc, 2.36) and CPython 3.11.
  printf '%s\n' "${list}" >"${ee}/wheels.txt"
  "${bin}/python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --dest "${ee}/wheels" -r "${ee}/wheels.txt" 2>"${ee}/download.log" || { cat "${ee}/download.log" >&2; exit 1; }
  printf '%s\n' "${list}" >"${ee}/wheels/.complete"
fi

rm -rf "${ee}/collections" && mkdir -p "${ee}/collections"
"${bin}/ansible-galaxy" collection build --force --output-path "${ee}/collections" . >/dev/null
# The three collections and what they depend on (their MANIFEST.json), each packed from the `ansible` package.
"${bin}/python" - "${ee}/collections" community.docker community.general ansible.posix <<'PY'
import hashlib, io, json, os, sys, sysconfig, tarfile
dest, wanted, packed = sys.argv[1], list(sys.argv[2:]), set()
root = os.path.join(sysconfig.get_paths()["purelib"], "ansible_collections")
while wanted:
    name = wanted.pop()
    if name in packed:
        continue
    source = os.path.join(root, *name.split("."))
    info = json.load(open(os.path.join(source, "MANIFEST.json")))["collection_info"]
    # An installed collection holds its artifact's files, less those the `ansible` package leaves out (CI
    # configuration, tests): packed again with its FILES.json listing only what is there (each file's checksum as
    # the artifact had it, checked again by ansible-galaxy) and MANIFEST.json naming that FILES.json's checksum.
    files = json.load(open(os.path.join(source, "FILES.json")))
    files["files"] = [f for f in files["files"] if f["name"] == "." or os.path.lexists(os.path.join(source, f["name"]))]
    files_json = json.dumps(files, indent=4).encode()
    manifest = json.load(open(os.path.join(source, "MANIFEST.json")))
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    with tarfile.open(os.path.join(dest, f"{info['namespace']}-{info['name']}-{info['version']}.tar.gz"), "w:gz") as tar:
        for arcname, data in (("MANIFEST.json", json.dumps(manifest, indent=4).encode()), ("FILES.json", files_json)):
            member = tarfile.TarInfo(arcname)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
        for entry in files["files"]:
            if entry["name"] != ".":
                tar.add(os.path.join(source, entry["name"]), arcname=entry["name"], recursive=False)
    packed.add(name)
    wanted.extend(info.get("dependencies") or {})
print("collections packed:", ", ".join(sorted(packed)))
PY

"${bin}/ansible-builder" build --container-runtime docker --file execution-environment.yml \
  --context "${ee}/context" --verbosity 1
docker image inspect --format 'built {{index .RepoTags 0}} ({{.Size}} bytes)' local/llm-endpoints-ee:latest
