"""What the llm_host_lock action plugin (controller) and module (managed host) share: the task's options, their
limits, and how a holder record is read and named.

A holder record is the lock file's JSON: {controller, pid, pid_start, user, label, started, started_epoch}. The
identity of a run is (controller, pid, pid_start): the control node's host name, the ansible-playbook main process's
pid and that process's start time (field 22 of /proc/<pid>/stat, clock ticks after boot; null where the control node
has no /proc), so a pid reused by another process is not mistaken for the holder.
"""
from __future__ import annotations

import os
from typing import Any

DEFAULT_PATH = "/var/lib/llm-endpoints/run.lock"
STALE_MIN_S = 60
STALE_MAX_S = 604800
STALE_DEFAULT_S = 10800
LABEL_MAX = 200

# The options a task gives (the action plugin adds the holder identity and, for a takeover, the record it replaces).
TASK_ARGS: dict[str, dict[str, Any]] = {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "path": {"type": "str", "default": DEFAULT_PATH},
    "stale_after_s": {"type": "int", "default": STALE_DEFAULT_S},
    "break_lock": {"type": "bool", "default": False},
    "label": {"type": "str", "default": "ansible-playbook"},
}

IDENTITY = ("controller", "pid", "pid_start")


def problems(params: dict[str, Any]) -> list[str]:
    """What is wrong with validated, converted task options (empty: nothing)."""
    found = []
    path = params["path"]
    if not path.startswith("/") or os.path.basename(path) in ("", ".", ".."):
        found.append(f"path must be an absolute path of a file; got {path!r}")
    elif not path.isprintable() or any(c.isspace() for c in path):
        found.append(f"path must not hold spaces, line breaks or control characters; got {path!r}")
    if not STALE_MIN_S <= params["stale_after_s"] <= STALE_MAX_S:
        found.append(f"stale_after_s must be a whole number from {STALE_MIN_S} to {STALE_MAX_S}; "
                     f"got {params['stale_after_s']}")
    label = params["label"]
    if not label or len(label) > LABEL_MAX or not label.isprintable():
        found.append(f"label must be 1 to {LABEL_MAX} printable characters (no line breaks); got {label!r}")
    return found


def same_run(record: dict[str, Any], holder: dict[str, Any]) -> bool:
    """Whether a lock record names the run `holder` identifies."""
    return all(record.get(key) == holder.get(key) for key in IDENTITY)
