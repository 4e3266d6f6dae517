#!/usr/bin/python
"""A run lock on the managed host, so two playbook runs do not interleave (standard library only; runs on the target).

The action plugin of the same name gives the run's identity and judges a foreign holder (only the controller can
tell whether a controller process still runs); this module only reads, creates, replaces and removes the lock file.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pwd
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llm_endpoints.core.plugins.module_utils.host_lock import TASK_ARGS, problems, same_run
from ansible_collections.llm_endpoints.core.plugins.module_utils.host_paths import (
    NotRegularFile,
    kind_of,
    read_regular,
    replace_file,
    write_all,
)

DOCUMENTATION = r"""
module: llm_host_lock
short_description: A host-level run lock, so two playbook runs against the same host do not interleave
version_added: "0.3.0"
description:
  - I(state=present) takes the lock file I(path) for this run; it is created atomically (C(O_CREAT|O_EXCL), mode
    0600, never through a symbolic link; missing directories are created 0700) holding the JSON record
    C({controller, pid, pid_start, user, label, started, started_epoch}).
  - Every read and change of the lock happens under an exclusive C(flock) of a guard file beside it,
    C(.<lock name>.guard) (created 0600, opened without following a symbolic link, never removed), not of the
    shared directory. Any local user can open a directory and C(flock) it, and so would block every run; no other
    user can open a 0600 file of the user the task runs as.
  - The lock's directory must be owned by root or by the user the task runs as, and writable by its owner only,
    as anyone else who could write there could create, replace or hold the lock's files. An existing directory is
    never changed (it may hold other things, such as C(/var/lib/llm-endpoints/metrics)); one that fails these
    rules is refused, naming the directory, its owner and its mode. The guard file must be a regular file of the
    user the task runs as, readable and writable by that user only; otherwise it is refused too (a guard that
    another user could open may be held open by that user still). Remove it and the next run creates it again.
  - The run is identified by the control node's host name, the ansible-playbook main process's pid and that
    process's start time, which the action plugin of the same name computes on the controller. A lock of the same
    run is taken again without a change (later plays of a run take it again).
  - A lock of another run is judged on the controller. On the same control node, a holder whose process is gone, or
    whose pid now belongs to a process started at another time, was interrupted, and its lock is taken over. A holder on
    another control node is taken over once its lock is older than I(stale_after_s) (measured with the host's clock).
    I(break_lock) takes over any holder. Otherwise the task fails, naming the holder and what to do.
  - A takeover replaces the lock (a temporary file renamed over it) only if the lock still holds the record that was
    judged (compare-and-swap under the guard's exclusive C(flock)), and warns, naming the previous holder.
  - Each lock taken (or taken over) is also copied to C(<path>.last), which its release leaves, so the record of the
    last run that took the lock stays for M(llm_endpoints.core.llm_host_state) to compare with its own record and
    tell whether another run came since.
  - I(state=absent) removes the lock only when this run holds it; a lock of another run is left alone.
  - The lock is run bookkeeping, not managed state, so the task never reports C(changed). In check mode nothing is
    written (not even the guard file); I(state=present) still fails for a live holder of another run, and a
    directory or guard file that breaks the rules above is still refused.
options:
  state:
    description: C(present) takes the lock, C(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  path:
    description:
      - Absolute path of the lock file on the host (no spaces or line breaks; never a symbolic link). Its directory
        must be owned by root (or the user the task runs as) and not writable by group or others.
    type: str
    default: /var/lib/llm-endpoints/run.lock
  stale_after_s:
    description: Age in seconds (60 to 604800) after which a lock taken from another control node counts as stale.
    type: int
    default: 10800
  break_lock:
    description: Take the lock over from any other holder (a run that is known to be gone).
    type: bool
    default: false
  label:
    description: What holds the lock (the playbook or play name); 1 to 200 printable characters.
    type: str
    default: ansible-playbook
  holder:
    description:
      - Set by the action plugin, never by a task; the run's identity C({controller, pid, pid_start, user}).
    type: dict
    required: true
  takeover:
    description:
      - Set by the action plugin, never by a task; the sha256 of the lock file's content it judged stale or broken.
        The lock is replaced only while it still has this content.
    type: str
    default: ""
notes:
  - Needs write access to the lock's directory (become, for the default path).
author: llm-endpoints project
"""

EXAMPLES = r"""
- name: This run holds the host's lock
  llm_endpoints.core.llm_host_lock:
    label: "{{ ansible_play_name }}"

- name: This run's lock is released
  llm_endpoints.core.llm_host_lock:
    state: absent
"""

RETURN = r"""
status:
  description:
    - C(acquired) (created), C(held) (this run held it already), C(taken_over) (a stale or broken lock replaced),
      C(free) (check mode, no lock), C(busy) (another run holds it; the action plugin judges it), C(released),
      C(would_release) (check mode), C(not_held) (no lock to release), C(left_alone) (another run's lock at release).
  type: str
  returned: always
lock:
  description: The record in the lock file after the task (null when there is none).
  type: dict
  returned: always
  sample: {"controller": "ctl-01", "pid": 41234, "pid_start": 8812345, "user": "deploy", "label": "Provision",
           "started": "2025-11-28T05:00:00Z", "started_epoch": 1764306000}
holder:
  description: Another run's record (busy, left_alone) or the record replaced (taken_over); null otherwise.
  type: dict
  returned: always
holder_digest:
  description: sha256 of the lock file's content when another run holds it (the takeover's compare-and-swap value).
  type: str
  returned: always
holder_age_s:
  description: Age of the other run's lock in seconds by the host's clock (from started_epoch, else the file's mtime).
  type: float
  returned: always
"""

GUARD_WAIT_S = 10.0
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "controller": (str,), "pid": (int,), "user": (str,), "label": (str,), "started": (str,),
    "started_epoch": (int, float),
}


class LockError(Exception):
    """The lock path cannot be used (not a regular file, a symbolic link, a directory that cannot be made or that
    another user could write, a guard file another user could open)."""


def who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def make_parents(directory: str) -> None:
    """Create the missing directories of `directory`, each 0700 (whatever the umask): only their owner may use
    them."""
    missing = []
    while not os.path.isdir(directory):
        if os.path.lexists(directory):
            raise LockError(f"{directory} exists and is not a directory")
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)


def check_directory(dir_fd: int, directory: str) -> None:
    """Refuse a lock directory that someone other than root or this task's user owns or could write: they could
    create, replace or hold the lock's files. Never mended: it may be shared (/var/lib/llm-endpoints holds the
    metrics too), and one that was open to others may hold files they planted."""
    info = os.fstat(dir_fd)
    me = os.geteuid()
    if info.st_uid not in (0, me):
        raise LockError(f"its directory {directory} is owned by {who(info.st_uid)}, not by root or by the user this "
                        f"task runs as, {who(me)}: that user could replace or hold the lock. Give it to root "
                        f"(chown root {directory}) or set host_lock_path to a file in a directory only root can write")
    if info.st_mode & 0o022:
        writers = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "all users")) if info.st_mode & bit)
        raise LockError(f"its directory {directory} has mode {stat.S_IMODE(info.st_mode):04o}, writable by {writers}: "
                        f"another user could create, replace or hold the lock's files. Make it writable by its owner "
                        f"only (chmod go-w {directory}) or set host_lock_path to a file in a directory only root can "
                        f"write")


def last_name(name: str) -> str:
    """The copy of the last lock taken, kept after its release: llm_host_state reads whether a run came since its
    record."""
    return f"{name}.last"


def guard_name(name: str) -> str:
    """The guard beside the lock `name`: hidden, and apart from the temporary files of a takeover (.<name>.*.tmp)."""
    return f".{name}.guard"


def open_guard(dir_fd: int, directory: str, name: str, create: bool) -> int | None:
    """The guard file beside the lock, opened (and created 0600 when `create`) without following a link or blocking
    on a FIFO; None when it is missing and not to be created (check mode)."""
    guard = guard_name(name)
    path = os.path.join(directory, guard)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(guard, flags, 0o600, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(f"the guard file {path} is a symbolic link; remove it (rm {path}): the next run creates "
                            f"it") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LockError(f"the guard file {path} is {kind_of(info.st_mode)}, not a regular file; remove it: the "
                            f"next run creates it")
        # A guard another user can open may be held open by them still: mending its mode would not stop that.
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise LockError(f"the guard file {path} is owned by {who(info.st_uid)} with mode "
                            f"{stat.S_IMODE(info.st_mode):04o}; it must be {who(os.geteuid())}'s, mode 0600, or "
                            f"another user could hold it and block every run. Remove it (rm {path}): the next run "
                            f"creates it 0600")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def guarded(directory: str, name: str, make_dir: bool, make_guard: bool) -> Iterator[int | None]:
    """The lock's directory, opened, while this process holds an exclusive flock of the guard file beside the lock
    for the whole operation (every change and every read of this module happens under it, so a compare-and-swap sees
    no change between its read and its rename); None when the directory does not exist and is not to be made.
    A guard that is missing and not to be made (check mode writes nothing) leaves the lock to be read only."""
    if not os.path.isdir(directory):
        if not make_dir:
            yield None
            return
        make_parents(directory)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check_directory(dir_fd, directory)
        guard_fd = open_guard(dir_fd, directory, name, create=make_guard)
        try:
            if guard_fd is not None:
                hold(guard_fd, os.path.join(directory, guard_name(name)))
            yield dir_fd
        finally:
            if guard_fd is not None:
                os.close(guard_fd)
    finally:
        os.close(dir_fd)


def hold(guard_fd: int, guard: str) -> None:
    """An exclusive flock of the guard, waited for a bounded time (another run's module call holds it briefly)."""
    deadline = time.monotonic() + GUARD_WAIT_S
    while True:
        try:
            fcntl.flock(guard_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError as exc:
            if time.monotonic() > deadline:
                raise LockError(f"the guard file {guard} stayed flock()ed by another run for {GUARD_WAIT_S:.0f} s"
                                ) from exc
            time.sleep(0.05)


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def parse(raw: bytes, mtime: float) -> dict[str, Any]:
    """A lock file's record; one that is not a record is described as unreadable, dated by the file's mtime."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        record = None
    if isinstance(record, dict) and all(isinstance(record.get(k), t) and not isinstance(record.get(k), bool)
                                        for k, t in RECORD_TYPES.items()) \
            and (record.get("pid_start") is None or type(record.get("pid_start")) is int):
        return record
    return {"unreadable": True, "controller": "", "pid": 0, "pid_start": None, "user": "?",
            "label": f"content {raw[:80]!r}",
            "started": utc(mtime),
            "started_epoch": mtime}


def read_lock(dir_fd: int | None, name: str, path: str) -> tuple[dict[str, Any], str] | None:
    """The lock's record and the sha256 of its content; None when there is no lock."""
    if dir_fd is None:
        return None
    try:
        raw, info = read_regular(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        raise LockError(f"{path} is {exc.kind}, not a regular file; a lock file is never read or written through a "
                        f"link") from exc
    return parse(raw, info.st_mtime), hashlib.sha256(raw).hexdigest()


def new_record(holder: dict[str, Any], label: str) -> bytes:
    now = time.time()
    record = {"controller": holder["controller"], "pid": holder["pid"], "pid_start": holder.get("pid_start"),
              "user": holder["user"], "label": label,
              "started": utc(now),
              "started_epoch": int(now)}
    return (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")


def create_lock(dir_fd: int, name: str, data: bytes) -> None:
    """Create the lock; FileExistsError when there is one (the guard makes that a race lost to nobody)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.fsync(dir_fd)


def age_of(record: dict[str, Any]) -> float:
    return round(time.time() - float(record["started_epoch"]), 1)


def acquire(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    path, holder, takeover = params["path"], params["holder"], params["takeover"]
    directory, name = os.path.split(path)
    with guarded(directory, name, make_dir=not check_mode, make_guard=not check_mode) as dir_fd:
        found = read_lock(dir_fd, name, path)
        if found is None:
            if check_mode:
                return {"status": "free", "lock": None, "msg": f"{path} is free (check mode: not taken)"}
            assert dir_fd is not None
            data = new_record(holder, params["label"])
            create_lock(dir_fd, name, data)
            replace_file(dir_fd, last_name(name), data)
            return {"status": "acquired", "lock": json.loads(data), "msg": f"{path} taken"}
        record, digest = found
        if same_run(record, holder):
            return {"status": "held", "lock": record, "msg": f"{path} is held by this run already"}
        foreign = {"holder": record, "holder_digest": digest, "holder_age_s": age_of(record)}
        if not takeover or takeover != digest or check_mode:
            # Not asked to take over, or the lock changed since it was judged: the action plugin judges it (again).
            return {"status": "busy", "lock": record, **foreign, "msg": f"{path} is held by another run"}
        assert dir_fd is not None
        data = new_record(holder, params["label"])
        replace_file(dir_fd, name, data)
        replace_file(dir_fd, last_name(name), data)
        return {"status": "taken_over", "lock": json.loads(data), **foreign, "msg": f"{path} taken over"}


def release(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    path, holder = params["path"], params["holder"]
    directory, name = os.path.split(path)
    with guarded(directory, name, make_dir=False, make_guard=not check_mode) as dir_fd:
        found = read_lock(dir_fd, name, path)
        if found is None:
            return {"status": "not_held", "lock": None, "msg": f"{path}: no lock to release"}
        record, digest = found
        if not same_run(record, holder):
            return {"status": "left_alone", "lock": record, "holder": record, "holder_digest": digest,
                    "holder_age_s": age_of(record), "msg": f"{path} is held by another run: left alone"}
        if check_mode:
            return {"status": "would_release", "lock": record, "msg": f"{path} would be released (check mode)"}
        assert dir_fd is not None
        os.unlink(name, dir_fd=dir_fd)
        os.fsync(dir_fd)
        return {"status": "released", "lock": None, "msg": f"{path} released"}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **TASK_ARGS,
            "holder": {"type": "dict", "required": True, "options": {
                "controller": {"type": "str", "required": True},
                "pid": {"type": "int", "required": True},
                "pid_start": {"type": "int"},
                "user": {"type": "str", "required": True},
            }},
            "takeover": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    bad = problems(module.params)
    if bad:
        module.fail_json(msg="; ".join(bad))
    try:
        if module.params["state"] == "present":
            outcome = acquire(module.params, module.check_mode)
        else:
            outcome = release(module.params, module.check_mode)
    except (LockError, OSError) as exc:
        module.fail_json(msg=f"lock file {module.params['path']}: {exc}", changed=False)
    base = {"lock": None, "holder": None, "holder_digest": "", "holder_age_s": 0.0}
    module.exit_json(changed=False, **{**base, **outcome})


if __name__ == "__main__":
    main()
