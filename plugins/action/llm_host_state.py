"""The desired state's digest, computed on the control node, then the module of the same name on the host.

The digest covers what a site.yml run's result on this host depends on: the host's own variables of the collection's
roles (inventory, group and extra vars, templated: a key taken from the environment or the vault counts by value),
the facts the roles decide by, the membership of the groups that change a host's services (front door, monitoring),
the collection's code, the ansible-core version and the files on the control node that a variable names. A host
whose configuration is made from other hosts' (a front door, a monitoring host) also covers theirs. Only the digest
leaves this process: the templated values (secrets among them) are never in the task's result.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from ansible import __version__ as ansible_version
from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

# The collection's roles' variable prefixes (every role variable starts with one: ansible-lint's var-naming rule).
PREFIXES = ("llm_", "preflight_", "nvidia_", "cuda_", "container_engine_", "vendor_repo_", "monitoring_",
            "front_door_", "limits_store_", "host_lock_", "host_state_", "vault_")
# Facts a run sets that an unchanged host's check sets again from its record (roles/host_state/vars/main.yml).
RESTORED = ("preflight_gpu_mode", "preflight_nvidia_gpus", "preflight_nvidia_driver_requirements",
            "preflight_secure_boot", "monitoring_urls")
# Per-run values and the control node's own places (where it runs from, where reports go), not desired state; and
# the restored facts, which other hosts' checks may have set by now.
PER_RUN = frozenset(("llm_run_id", "llm_report_run_id", "llm_rollout_run_id", "llm_rollout_run", "host_lock_label",
                     "host_lock_hold", "host_lock_break", "llm_rollout_serial", "llm_rollout_max_fail_percentage",
                     "llm_project_dir", "llm_report_dir", "host_state_enabled", "host_state_max_age_s",
                     "host_state_path", *RESTORED))
# Facts the roles decide by (distribution files, kernel headers, thread counts). Addresses count through the
# settings made of them (the bind addresses): every Docker network adds one to the host's list.
FACTS = ("distribution", "distribution_version", "distribution_major_version", "os_family", "kernel",
         "architecture", "processor_vcpus", "virtualization_type")
# Groups whose members change a host's services (the bind address behind a front door, the exporters).
GROUPS = ("llm_edge", "llm_monitoring")
# The collection's code that a run deploys or runs (not its tests, docs or caches), and what its artifact leaves out
# (galaxy.yml's build_ignore: lab-only playbooks and templates): a checkout and the artifact built from it, installed in
# an execution environment, give the same digest.
CODE = ("roles", "plugins", "playbooks", "apps", "templates", "meta")
SKIPPED = ("__pycache__", "tests", ".pytest_cache")
SKIPPED_SUFFIXES = (".pyc", ".md")
# The collection's identity and dependencies: galaxy.yml in a checkout, MANIFEST.json in an installed artifact.
METADATA = ("namespace", "name", "version", "dependencies")
CONTROLLER_FILE_HASHED_BYTES = 16 * 1024 * 1024
HOST_SIDE = ("host_state_", "host_lock_")
# Tables the collection reads from its own files (the engine table's lookup): the code digest covers them, and
# templating them for every host and peer would read those files again.
FROM_CODE = frozenset(("llm_defaults_engines",))

_ROOT = Path(__file__).resolve().parents[2]


def code_digest(root: Path = _ROOT) -> str:
    """sha256 over the collection's metadata and code: each file's path and content, in a stable order."""
    galaxy = root / "galaxy.yml"
    if galaxy.is_file():
        info = yaml.safe_load(galaxy.read_text()) or {}
    else:
        manifest = root / "MANIFEST.json"
        info = json.loads(manifest.read_text()).get("collection_info", {}) if manifest.is_file() else {}
    ignored = tuple(info.get("build_ignore") or ()) if galaxy.is_file() else ()
    digest = hashlib.sha256(json.dumps({key: info.get(key) for key in METADATA}, sort_keys=True).encode() + b"\0")
    for top in CODE:
        base = root / top
        paths = [base] if base.is_file() else sorted(
            p for p in base.rglob("*") if p.is_file() and not any(part in SKIPPED for part in p.relative_to(root).parts)
            and p.suffix not in SKIPPED_SUFFIXES and not _ignored(p.relative_to(root), ignored))
        for path in paths:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _ignored(relative: Path, patterns: tuple[str, ...]) -> bool:
    """Left out of the artifact: a pattern matches the path or a folder above it (as ansible-galaxy build matches)."""
    parts = relative.parts
    return any(fnmatch.fnmatch("/".join(parts[:end]), pattern)
               for pattern in patterns for end in range(1, len(parts) + 1))


def controller_files(value: Any, found: dict[str, str]) -> None:
    """Each absolute path to a file on the control node among the (templated) values, and its content's sha256
    (size and mtime when large): a certificate or model that changes under the same name changes the digest."""
    if isinstance(value, dict):
        for item in value.values():
            controller_files(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            controller_files(item, found)
    elif isinstance(value, str) and value.startswith("/") and "\n" not in value and len(value) < 4096:
        try:
            info = os.stat(value)
        except (OSError, ValueError):
            return
        if not os.path.isfile(value):
            return
        if info.st_size > CONTROLLER_FILE_HASHED_BYTES:
            found[value] = f"size={info.st_size} mtime_ns={info.st_mtime_ns}"
            return
        try:
            with open(value, "rb") as handle:
                found[value] = hashlib.sha256(handle.read()).hexdigest()
        except OSError as exc:
            # Not readable here (a host path that the control node has too, root-only): known by its metadata.
            found[value] = f"unreadable {type(exc).__name__} size={info.st_size} mtime_ns={info.st_mtime_ns}"


def host_part(templar: Any, variables: Any, names: list[str]) -> dict[str, Any]:
    """A host's templated role variables and decisive facts."""
    values: dict[str, Any] = {}
    for name in sorted(names):
        if name.startswith("__") or name in PER_RUN or name in FROM_CODE or not name.startswith(PREFIXES):
            continue
        try:
            values[name] = templar.template(variables[name])
        except (AnsibleError, KeyError, TypeError, ValueError) as exc:
            # The value is unknown here (it reads a fact no play gathered): its kind is recorded, never its text.
            values[name] = f"<not templated: {type(exc).__name__}>"
    facts = variables.get("ansible_facts") or {}
    return {"vars": values, "facts": {key: facts.get(key) for key in FACTS}}


def _reached_at(variables: Any) -> list[Any]:
    """Where a front door or Prometheus reaches a served host: its inventory address and its default IPv4 address
    (its role defaults, the bind addresses made of them, are not in another host's variables)."""
    facts = variables.get("ansible_facts") or {}
    return [variables.get("ansible_host"), variables.get("monitoring_scrape_address"),
            (facts.get("default_ipv4") or {}).get("address")]


def _controller_side(values: dict[str, Any]) -> dict[str, Any]:
    """The values that may name a file on the control node: not the run lock's and the record's own paths, which are
    the host's (a control node that is also a managed host would see the record change with every run)."""
    return {name: value for name, value in values.items() if not name.startswith(HOST_SIDE)}


def desired_digest(templar: Any, task_vars: dict[str, Any]) -> str:
    host = task_vars.get("inventory_hostname", "")
    groups = task_vars.get("groups") or {}
    doc: dict[str, Any] = {
        "host": host_part(templar, task_vars, list(task_vars)),
        "groups": {name: sorted(groups.get(name, [])) for name in GROUPS},
        "code": code_digest(),
        "ansible": ansible_version,
    }
    # A front door or monitoring host's configuration is made of every served host's: the parts of the play's other
    # hosts count too.
    if any(host in groups.get(name, []) for name in GROUPS):
        hostvars = task_vars.get("hostvars") or {}
        doc["peers"] = {peer: {**host_part(templar, hostvars[peer], list(hostvars[peer].keys())),
                               "reached_at": _reached_at(hostvars[peer])}
                        for peer in sorted(task_vars.get("ansible_play_hosts_all") or []) if peer != host}
    files: dict[str, str] = {}
    controller_files([_controller_side(doc["host"]["vars"]),
                      [_controller_side(p["vars"]) for p in doc.get("peers", {}).values()]], files)
    doc["controller_files"] = files
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        if not args.get("digest"):
            if args.get("state", "check") != "check":
                return {**result, "failed": True, "msg": "llm_host_state: state=record needs the digest its check "
                                                         "computed (digest)"}
            try:
                args["digest"] = desired_digest(self._templar, task_vars)
            except Exception as exc:  # noqa: BLE001 (any failure means "not known unchanged", never a failed host)
                # The host runs every role (no record has this digest); the error's text could quote a value.
                result.setdefault("warnings", []).append(
                    f"llm_host_state: the desired state could not be read ({type(exc).__name__}): the host runs "
                    f"every role")
                args["digest"] = "undetermined"
        result.update(self._execute_module(module_name="llm_endpoints.core.llm_host_state", module_args=args,
                                           task_vars=task_vars))
        return result
