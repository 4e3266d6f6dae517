#!/usr/bin/python
"""The host's record of the last successful site.yml run, and the check of an unchanged host against it (standard
library only; runs on the target). The action plugin of the same name computes the desired state's digest on the
controller."""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llm_endpoints.core.plugins.module_utils.host_paths import replace_file
from ansible_collections.llm_endpoints.core.plugins.module_utils.host_state import (
    FORMAT,
    REASONS_SHOWN,
    differences,
    lock_stamp,
    observe,
    read_json,
)

DOCUMENTATION = r"""
module: llm_host_state
short_description: Record what a site.yml run applied on a host, and check in one call whether the host is unchanged
version_added: "0.4.0"
description:
  - I(state=record), at the end of a successful whole C(site.yml) run, observes what the run manages on the host and
    writes it to I(path) (JSON, mode 0600, written to a temporary file and renamed) with the desired state's digest
    and the record of the run lock this run holds (C(<lock_path>)).
  - The observation is the OS (C(/etc/os-release) ID and VERSION_ID, the kernel release, the machine), the NVIDIA
    PCI devices under I(sysfs_root), every file under I(files) (type, mode, owner and the content's sha256; files
    over 64 MiB by size and modification time), the versions of the installed packages matching I(packages), every
    container of a compose project (its compose configuration hash, image and whether it runs) and the answer of
    each URL of I(health_urls) to a GET from the host.
  - I(state=check) compares the host with its record and says whether it is unchanged, without changing anything.
    It is unchanged when the digest equals I(digest), the record is at most I(max_age_s) old, no run lock is held,
    the last lock taken (C(<lock_path>.last), kept by M(llm_endpoints.core.llm_host_lock)) is the recorded run's, and
    a new observation of what the record lists is the same (every recorded file, package and OS detail equal, every
    recorded container there and running with the same configuration and image, every URL answering). Otherwise
    I(reasons) says what differs (at most 20 lines, naming paths, packages and containers, never content).
  - An unchanged host's recorded I(facts) come back in I(restored), for the role to set again, so later plays that
    read them (the monitoring host's scrape configuration) need no other call.
  - A record that cannot be written (a service not answering, more files than 20,000) fails nothing, with a warning;
    the next run applies every role.
  - Neither state reports C(changed), as the record is run bookkeeping, like the run lock. In check mode nothing is
    written.
options:
  state:
    description: C(check) compares the host with its record; C(record) writes the record.
    type: str
    choices: [check, record]
    default: check
  path:
    description: The record's absolute path.
    type: str
    default: /var/lib/llm-endpoints/state.json
  digest:
    description:
      - The desired state's digest. At I(state=check) the action plugin computes it when it is not given; a record
        keeps the digest its run's check computed.
    type: str
  max_age_s:
    description: A record older than this many seconds is not trusted (0 to 2592000; 0 trusts none).
    type: int
    default: 86400
  lock_path:
    description:
      - The run lock's file (M(llm_endpoints.core.llm_host_lock)) this run holds, kept with the record at
        I(state=record); the check reads it from the record. Empty when the run holds no lock.
    type: str
    default: ""
  files:
    description: Files and directories (absolute) the run manages, observed at I(state=record).
    type: list
    elements: str
    default: []
  packages:
    description: Shell-style patterns of the package names whose versions are observed at I(state=record).
    type: list
    elements: str
    default: []
  containers:
    description: Whether the compose projects' containers are observed at I(state=record).
    type: bool
    default: true
  health_urls:
    description: http URLs that must answer a GET from the host with a 2xx status, observed at I(state=record).
    type: list
    elements: str
    default: []
  sysfs_root:
    description: Where sysfs is mounted (a simulated GPU host's tests give another root).
    type: str
    default: /sys
  facts:
    description: Facts (no secrets) kept with the record and set again on an unchanged host.
    type: dict
    default: {}
notes:
  - Needs root (become) for the default paths.
author: llm-endpoints
"""

EXAMPLES = r"""
- name: The host is compared with its last successful run
  llm_endpoints.core.llm_host_state:
    state: check
  register: host_state

- name: What this run applied is recorded
  llm_endpoints.core.llm_host_state:
    state: record
    digest: "{{ host_state.digest }}"
    files: [/opt/llm-stack, /etc/docker/daemon.json]
    packages: ["*nvidia*", "cuda-*", "docker*"]
    health_urls: ["http://127.0.0.1:8000/health"]
    facts:
      preflight_gpu_mode: "{{ preflight_gpu_mode }}"
"""

RETURN = r"""
restored:
  description: The recorded facts, for the role to set again (state=check, unchanged host); empty otherwise.
  returned: always
  type: dict
unchanged:
  description: Whether the host equals its record (state=check); false at state=record.
  returned: always
  type: bool
reasons:
  description: What differs from the record (state=check), at most 20 lines; empty when unchanged.
  returned: always
  type: list
  elements: str
digest:
  description: The desired state's digest the task compared or recorded.
  returned: always
  type: str
recorded_at:
  description: When the record was written (UTC, ISO 8601); empty when there is none.
  returned: always
  type: str
"""


OBSERVATION_ERRORS = (OSError, ValueError, RuntimeError, subprocess.SubprocessError)


class NotRecorded(Exception):
    """What the record could not observe as a successful run left it (a service not answering)."""


def problems(params: dict[str, Any]) -> list[str]:
    """What is wrong with the task's options (empty: nothing)."""
    found = []
    for key in ("path", "lock_path", "sysfs_root"):
        value = params[key]
        if key == "lock_path" and value == "":
            continue
        if not value.startswith("/") or not value.isprintable() or any(c.isspace() for c in value):
            found.append(f"{key} must be an absolute path without spaces or control characters; got {value!r}")
    for value in params["files"]:
        if not value.startswith("/") or not value.isprintable() or "\n" in value:
            found.append(f"files must hold absolute paths; got {value!r}")
    for value in params["health_urls"]:
        if not value.startswith("http://") or not value.isprintable() or any(c.isspace() for c in value):
            found.append(f"health_urls must hold http:// URLs; got {value!r}")
    if not 0 <= params["max_age_s"] <= 2592000:
        found.append(f"max_age_s must be a whole number from 0 to 2592000; got {params['max_age_s']}")
    if not params["digest"] or len(params["digest"]) > 128 or not params["digest"].isalnum():
        found.append("digest must be 1 to 128 letters and digits")
    return found


def write_record(path: str, record: dict[str, Any]) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_file(dir_fd, os.path.basename(path), (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
    finally:
        os.close(dir_fd)


def record(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    spec = {key: params[key] for key in ("files", "packages", "containers", "health_urls", "sysfs_root")}
    observed = observe(spec)
    failing = [f"{url} does not answer: {answer}" for url, answer in observed["health"].items() if answer != "ok"]
    if failing:
        raise NotRecorded("; ".join(failing))
    now = time.time()
    doc = {"format": FORMAT, "digest": params["digest"], "recorded_epoch": int(now),
           "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
           "lock_path": params["lock_path"],
           "lock": lock_stamp(read_json(params["lock_path"])) if params["lock_path"] else None,
           "spec": spec, "observed": observed,
           "facts": params["facts"]}
    if not check_mode:
        write_record(params["path"], doc)
    return {"unchanged": False, "reasons": [], "recorded_at": doc["recorded_at"],
            "msg": f"recorded: {len(observed['files'])} paths, {len(observed['packages'])} packages, "
                   f"{len(observed['containers'])} containers"}


def last_lock(lock_path: str) -> dict[str, Any] | None:
    """The identity of the last run that took the lock (kept by llm_host_lock); unreadable counts as unknown."""
    try:
        return lock_stamp(read_json(lock_path + ".last"))
    except (OSError, ValueError):
        return {"unreadable": True}


def check(params: dict[str, Any]) -> dict[str, Any]:
    try:
        return compare(params)
    except Exception as exc:  # noqa: BLE001 (a record it cannot judge means "changed", never a failed host)
        return {"unchanged": False, "reasons": [f"the record could not be judged ({type(exc).__name__}: {exc})"],
                "recorded_at": ""}


def compare(params: dict[str, Any]) -> dict[str, Any]:
    try:
        doc = read_json(params["path"])
    except (OSError, ValueError) as exc:
        return {"unchanged": False, "reasons": [f"the record could not be read: {exc}"], "recorded_at": ""}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return {"unchanged": False, "reasons": ["no record of a successful run"], "recorded_at": ""}
    at = str(doc.get("recorded_at", ""))
    reasons = []
    if doc.get("digest") != params["digest"]:
        reasons.append("the desired state changed (inventory, variables, collection or facts)")
    age = time.time() - float(doc.get("recorded_epoch") or 0)
    if age > params["max_age_s"]:
        reasons.append(f"the record is {int(age)} s old, more than max_age_s {params['max_age_s']}")
    elif age < -60:
        reasons.append("the record is dated in the future (the host's clock moved back)")
    lock_path = str(doc.get("lock_path") or "")
    if lock_path and os.path.lexists(lock_path):
        reasons.append(f"a run lock is held ({lock_path})")
    elif lock_path and last_lock(lock_path) != doc.get("lock"):
        reasons.append("another run took the host's lock since the record")
    if not reasons:
        # Observed only when nothing cheaper already said the host changed.
        try:
            reasons = differences(doc.get("observed", {}), observe(doc.get("spec", {})))
        except OBSERVATION_ERRORS as exc:
            reasons = [f"the host could not be observed: {exc}"]
    result = {"unchanged": not reasons, "recorded_at": at,
              "reasons": reasons[:REASONS_SHOWN] + ([f"and {len(reasons) - REASONS_SHOWN} more"]
                                                    if len(reasons) > REASONS_SHOWN else [])}
    result["restored"] = doc.get("facts", {}) if not reasons else {}
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["check", "record"], "default": "check"},
            "path": {"type": "str", "default": "/var/lib/llm-endpoints/state.json"},
            "digest": {"type": "str", "default": ""},
            "max_age_s": {"type": "int", "default": 86400},
            "lock_path": {"type": "str", "default": ""},
            "files": {"type": "list", "elements": "str", "default": []},
            "packages": {"type": "list", "elements": "str", "default": []},
            "containers": {"type": "bool", "default": True},
            "health_urls": {"type": "list", "elements": "str", "default": []},
            "sysfs_root": {"type": "str", "default": "/sys"},
            "facts": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    bad = problems(module.params)
    if bad:
        module.fail_json(msg="; ".join(bad))
    recording = module.params["state"] == "record"
    try:
        outcome = record(module.params, module.check_mode) if recording else check(module.params)
    except (NotRecorded, *OBSERVATION_ERRORS) as exc:
        # The run itself succeeded: no record only means the next run applies every role (its lock differs).
        module.warn(f"host state {module.params['path']} not recorded: {exc}; the next run applies every role")
        outcome = {"unchanged": False, "reasons": [], "recorded_at": "", "restored": {}, "msg": "not recorded"}
    module.exit_json(changed=False, digest=module.params["digest"], **outcome)


if __name__ == "__main__":
    main()
