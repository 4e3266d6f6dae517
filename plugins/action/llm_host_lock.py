"""The host run lock's controller half: who this run is, and whether another run's lock is stale.

The module (plugins/modules/llm_host_lock.py) reads and writes the lock file on the host; only the controller can
tell whether a holder's ansible-playbook process still runs, so the module hands a foreign holder's record back here
and this plugin decides: take it over (a second module call, compare-and-swap on the record it saw) or fail.
"""
from __future__ import annotations

import getpass
import multiprocessing
import os
import socket
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.llm_endpoints.core.plugins.module_utils.host_lock import TASK_ARGS, problems

MODULE = "llm_endpoints.core.llm_host_lock"


def process_state(pid: int) -> tuple[bool, int | None]:
    """Whether pid runs on this machine (a zombie does not) and its start time (field 22 of /proc/<pid>/stat, clock
    ticks after boot; None without /proc)."""
    if pid <= 0:
        return False, None
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            return False, None
        # The command name (field 2) is in parentheses and may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rfind(b")") + 2:].split()
        return fields[0] not in (b"Z", b"X"), int(fields[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        return True, None
    return True, None


def run_identity() -> dict[str, Any]:
    """This run: the control node, the ansible-playbook main process (the worker running this plugin is forked from
    it) with its start time, and the user."""
    parent = multiprocessing.parent_process()
    pid = os.getppid() if parent is not None else os.getpid()  # a worker (always, with ansible-playbook) or the main
    return {"controller": socket.gethostname(), "pid": pid, "pid_start": process_state(pid)[1],
            "user": getpass.getuser()}


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def describe(record: dict[str, Any]) -> str:
    if record.get("unreadable"):
        return f"a lock file that holds no lock record ({record['label']}, last written {record['started']})"
    return (f"'{record['label']}' started {record['started']} by {record['user']}@{record['controller']} "
            f"pid {record['pid']}")


def judge(record: dict[str, Any], age_s: float, me: dict[str, Any], stale_after_s: int) -> tuple[bool, str]:
    """(stale, why) for another run's lock."""
    if record.get("unreadable"):
        if age_s > stale_after_s:
            return True, f"the file is older than stale_after_s ({stale_after_s} s)"
        return False, f"the lock file holds no lock record and is younger than stale_after_s ({stale_after_s} s)"
    if record["controller"] == me["controller"]:
        alive, start = process_state(record["pid"])
        if not alive:
            return True, f"pid {record['pid']} no longer runs on this control node"
        if record.get("pid_start") is not None and start is not None and start != record["pid_start"]:
            return True, f"pid {record['pid']} is now another process (it started at another time)"
        return False, f"that ansible-playbook process (pid {record['pid']}) still runs on this control node"
    if age_s > stale_after_s:
        return True, f"it was taken from another control node longer ago than stale_after_s ({stale_after_s} s)"
    return False, (f"it was taken from another control node less than stale_after_s ({stale_after_s} s) ago; "
                   f"this control node cannot see whether that run still goes on")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False
    _VALID_ARGS = frozenset(TASK_ARGS)

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _, args = self.validate_argument_spec(argument_spec=TASK_ARGS)
        bad = problems(args)
        if bad:
            raise AnsibleActionFail("; ".join(bad))
        try:
            result.update(self._lock(args, run_identity(), task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        result["changed"] = False  # run bookkeeping, never a change of the host
        return result

    def _module(self, args: dict[str, Any], me: dict[str, Any], task_vars: dict[str, Any],
                takeover: str = "") -> dict[str, Any]:
        return self._execute_module(module_name=MODULE, module_args={**args, "holder": me, "takeover": takeover},
                                    task_vars=task_vars)

    def _lock(self, args: dict[str, Any], me: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        host = task_vars.get("inventory_hostname", "this host")
        reply = self._module(args, me, task_vars)
        if reply.get("failed") or reply.get("status") not in ("busy", "left_alone"):
            return reply
        holder, age = reply["holder"], float(reply["holder_age_s"])
        if reply["status"] == "left_alone":
            return {**reply, "warnings": [f"host_lock: {host}: the lock {args['path']} is held by another run, "
                                          f"{describe(holder)}; this run did not hold it and leaves it alone"]}
        stale, why = judge(holder, age, me, args["stale_after_s"])
        if not (stale or args["break_lock"]):
            return {**reply, "failed": True, "msg": (
                f"{host} is locked by another run: {describe(holder)}; its lock is {duration(age)} old and not stale "
                f"({why}); lock file {args['path']}. Wait for that run to finish; if it is gone (killed, or its "
                f"control node lost), re-run with -e host_lock_break=true to take the lock over.")}
        whose = describe(holder)
        if not holder.get("unreadable"):
            whose = f"the {'interrupted ' if stale else ''}run of {whose}"
        taking = f"{'taken over' if stale else 'taken over on request (break_lock)'} from {whose} ({why})"
        if self._task.check_mode:
            return {**reply, "msg": f"check mode: the lock {args['path']} would be {taking}",
                    "warnings": [f"host_lock: {host}: the lock would be {taking} (check mode: nothing written)"]}
        swapped = self._module(args, me, task_vars, takeover=reply["holder_digest"])
        if swapped.get("failed") or swapped.get("status") in ("acquired", "held"):
            return swapped
        if swapped.get("status") == "taken_over":
            return {**swapped, "warnings": [f"host_lock: {host}: the lock {args['path']} was {taking}"]}
        now = swapped["holder"]
        return {**swapped, "failed": True, "msg": (
            f"{host} is locked by another run: while the lock of {describe(holder)} was being taken over, "
            f"{describe(now)} took it; lock file {args['path']}. Wait for that run to finish; if it is gone, "
            f"re-run with -e host_lock_break=true to take the lock over.")}
