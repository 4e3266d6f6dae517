"""What the llm_host_state action plugin (controller) and module (managed host) share: the host side's observation
of what a run manages (files, packages, compose containers, services answering, the OS, NVIDIA PCI devices, the last
run lock taken) and the comparison of two observations. Standard library only: it runs on the target.

An observation is a dict of plain JSON values, so a record written by one run is compared by the next one key by key;
a difference is a short line naming what differs (a path, a package, a container), never a file's content.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from typing import Any

from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import nvidia_pci
from ansible_collections.llm_endpoints.core.plugins.module_utils.host_paths import NotRegularFile, read_regular

FORMAT = 1
DEFAULT_PATH = "/var/lib/llm-endpoints/state.json"
# Files larger than this are known by size and modification time, not hashed (model weights: GBs).
LARGE_FILE_BYTES = 64 * 1024 * 1024
# More files than this under the given paths is a configuration mistake (a cache directory listed), not state.
MAX_FILES = 20000
HEALTH_TIMEOUT_S = 5.0
MAX_AGE_MIN_S = 0
MAX_AGE_MAX_S = 2592000
REASONS_SHOWN = 20

# Python caches written beside the code the run installs are not state.
_SKIPPED_NAMES = frozenset(("__pycache__",))


def _signature(path: str, info: os.stat_result) -> str:
    owner = f"{stat.S_IMODE(info.st_mode):04o} {info.st_uid}:{info.st_gid}"
    if stat.S_ISLNK(info.st_mode):
        return f"link {os.readlink(path)}"
    if stat.S_ISDIR(info.st_mode):
        return f"dir {owner}"
    if not stat.S_ISREG(info.st_mode):
        return f"special {stat.S_IFMT(info.st_mode):o} {owner}"
    if info.st_size > LARGE_FILE_BYTES:
        return f"file {owner} size={info.st_size} mtime_ns={info.st_mtime_ns}"
    digest = hashlib.sha256()
    # O_NOFOLLOW | O_NONBLOCK: a path swapped for a link or a FIFO since the lstat is neither followed nor waited on.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return f"file {owner} sha256={digest.hexdigest()}"


def observe_files(roots: list[str]) -> dict[str, str]:
    """Every path under `roots` (a file or a directory, walked without following links) and its signature: type,
    mode, owner, and the content's sha256 (size and mtime above LARGE_FILE_BYTES); a missing root is 'absent'."""
    found: dict[str, str] = {}
    for root in sorted(set(roots)):
        try:
            info = os.lstat(root)
        except FileNotFoundError:
            found[root] = "absent"
            continue
        found[root] = _signature(root, info)
        walked = root
        if stat.S_ISLNK(info.st_mode):
            # A root that is a link (the stack's directory on another disk): what it points to is walked.
            walked = os.path.realpath(root)
            if not os.path.isdir(walked):
                continue
        elif not stat.S_ISDIR(info.st_mode):
            continue
        for directory, dirs, files in os.walk(walked):
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_NAMES)
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(directory, name)
                if name.endswith(".pyc"):
                    continue
                try:
                    found[path] = _signature(path, os.lstat(path))
                except FileNotFoundError:
                    continue
                if len(found) > MAX_FILES:
                    raise ValueError(f"more than {MAX_FILES} files under {', '.join(sorted(set(roots)))}: list the "
                                     f"files a run manages, not a cache directory")
    return found


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[:200]}")
    return done.stdout


def installed_packages() -> dict[str, str]:
    """Every installed package and its version (dpkg or rpm, whichever the host has)."""
    if os.path.exists("/usr/bin/dpkg-query"):
        out = _run(["/usr/bin/dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"])
        return {name: version for status, name, version in (line.split("\t") for line in out.splitlines() if line)
                if status.startswith("i")}
    if os.path.exists("/usr/bin/rpm"):
        out = _run(["/usr/bin/rpm", "-qa", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n"])
        packages: dict[str, str] = {}
        for line in out.splitlines():
            if line:
                name, version = line.split("\t", 1)
                packages[name] = ",".join(sorted(filter(None, [packages.get(name, ""), version])))
        return packages
    raise RuntimeError("neither dpkg-query nor rpm is installed")


def observe_packages(patterns: list[str], installed: dict[str, str]) -> dict[str, str]:
    """The installed packages whose name matches one of `patterns` (shell-style: 'nvidia-*'), and their versions."""
    return {name: version for name, version in sorted(installed.items())
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}


def observe_containers(docker: str = "docker") -> dict[str, dict[str, Any]]:
    """Every container of a compose project: project, service, the compose configuration hash, image id, running."""
    ids = _run([docker, "ps", "-aq", "--no-trunc", "--filter", "label=com.docker.compose.project"]).split()
    if not ids:
        return {}
    found = {}
    for item in json.loads(_run([docker, "inspect", *ids])):
        labels = (item.get("Config") or {}).get("Labels") or {}
        found[item.get("Name", "").lstrip("/")] = {
            "project": labels.get("com.docker.compose.project", ""),
            "service": labels.get("com.docker.compose.service", ""),
            "config_hash": labels.get("com.docker.compose.config-hash", ""),
            "image": item.get("Image", ""),
            "running": bool((item.get("State") or {}).get("Running")),
        }
    return found


def os_identity() -> dict[str, str]:
    """The distribution (/etc/os-release ID and VERSION_ID), the kernel release and the machine."""
    release = {}
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.strip().partition("=")
                if key in ("ID", "VERSION_ID"):
                    release[key.lower()] = value.strip('"')
    except FileNotFoundError:
        pass
    uname = os.uname()
    return {**release, "kernel": uname.release, "machine": uname.machine}


def nvidia_devices(sysfs_root: str) -> list[str]:
    """The NVIDIA PCI devices (address and device id) the host's sysfs lists."""
    return [f"{device['pci_address']} 0x{device['device_id']}" for device in nvidia_pci(sysfs_root)
            if device["device_id"]]


def health(urls: list[str]) -> dict[str, str]:
    """Each URL's answer to a GET from the host: 'ok' for a 2xx status, else what came back."""
    answers = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as reply:  # noqa: S310 (http URLs checked)
                answers[url] = "ok" if 200 <= reply.status < 300 else f"status {reply.status}"
        except urllib.error.HTTPError as exc:
            answers[url] = f"status {exc.code}"
        except (OSError, ValueError) as exc:
            answers[url] = f"no answer ({type(exc).__name__})"
    return answers


def read_json(path: str) -> Any:
    """A JSON file's content, read without following a link or waiting on a FIFO; None when there is none."""
    try:
        raw, _ = read_regular(path)
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        raise ValueError(f"{path} is {exc.kind}, not a regular file") from exc
    return json.loads(raw.decode("utf-8"))


def lock_stamp(record: Any) -> dict[str, Any] | None:
    """The identity of the run a lock record names (None for no record)."""
    if not isinstance(record, dict):
        return None
    return {key: record.get(key) for key in ("controller", "pid", "pid_start", "started_epoch", "label")}


def _kind(signature: str) -> str:
    """A file signature without its content part: type, mode and owner."""
    return signature.split(" sha256=")[0].split(" size=")[0]


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a recorded observation and the present one, one short line each."""
    found: list[str] = []
    if recorded.get("os") != now.get("os"):
        found.append(f"the OS or kernel changed: {recorded.get('os')} -> {now.get('os')}")
    if recorded.get("nvidia_devices") != now.get("nvidia_devices"):
        found.append(f"the NVIDIA PCI devices changed: {recorded.get('nvidia_devices')} -> {now.get('nvidia_devices')}")
    before, after = recorded.get("files", {}), now.get("files", {})
    for path in sorted(before.keys() | after.keys()):
        if before.get(path) != after.get(path):
            what = ("is new" if path not in before else "is gone" if path not in after or after[path] == "absent"
                    else "changed" if _kind(before[path]) == _kind(after[path]) else "changed type, mode or owner")
            found.append(f"file {path} {what}")
    before, after = recorded.get("packages", {}), now.get("packages", {})
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            found.append(f"package {name}: {before.get(name, 'not installed')} -> {after.get(name, 'not installed')}")
    before, after = recorded.get("containers", {}), now.get("containers", {})
    for name in sorted(before):
        was, there = before[name], after.get(name)
        if there is None:
            found.append(f"container {name} is gone")
        elif was.get("running") and not there.get("running"):
            found.append(f"container {name} is not running")
        elif (was.get("config_hash"), was.get("image")) != (there.get("config_hash"), there.get("image")):
            found.append(f"container {name} was recreated with another configuration or image")
    for url, answer in sorted(now.get("health", {}).items()):
        if answer != "ok":
            found.append(f"{url} does not answer: {answer}")
    return found


def observe(spec: dict[str, Any], docker: str = "docker") -> dict[str, Any]:
    """The observation `spec` (files, packages, containers, health_urls, sysfs_root) asks for."""
    return {
        "os": os_identity(),
        "nvidia_devices": nvidia_devices(spec.get("sysfs_root") or "/sys"),
        "files": observe_files(spec.get("files", [])),
        "packages": observe_packages(spec.get("packages", []), installed_packages()) if spec.get("packages") else {},
        "containers": observe_containers(docker) if spec.get("containers") else {},
        "health": health(spec.get("health_urls", [])),
    }
