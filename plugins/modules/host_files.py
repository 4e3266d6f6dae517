#!/usr/bin/python
"""Several small files written (or removed) on the host in one module call (standard library and AnsibleModule only).

Why not ansible.builtin.template/copy: each of those costs four round trips per file even when nothing changes (a
temporary directory made, a stat with checksum, the file module for its attributes, the directory removed): 1.5 s per
file over the lab's docker connection, a third of one host's idempotent converge (benchmarks/README.md). The
files' contents are rendered on the control node (the template and file lookups) and passed here in one call.
"""
from __future__ import annotations

import functools
import grp
import os
import pwd
import re
import shutil
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llm_endpoints.core.plugins.module_utils.host_paths import NotRegularFile, read_regular

DOCUMENTATION = r"""
module: host_files
short_description: Several small text files written, or paths removed, on the host in one call
version_added: "0.3.0"
description:
  - Each entry of I(files) is written when its content differs from the file on the host (a temporary file in the
    same directory, given its mode and owner first, then renamed over the old one, so a reader never sees half a
    file and a 0600 file is never readable by others), and its mode, owner and group are set when they differ.
  - Each path in I(absent) is removed (a file, a link, or a directory with its contents), as
    M(ansible.builtin.file) with C(state=absent) does.
  - Each entry of I(directories) is made first when it is missing (with its missing parents, as
    M(ansible.builtin.file) with C(state=directory) does), and its mode, owner and group are set when they differ.
  - The parent directory of each file must exist or be one of I(directories); the task fails naming the file
    otherwise, before anything is written (in check mode a missing directory is one an earlier task would have made,
    so the file counts as new).
  - A path of I(files) that holds anything but a regular file fails the task before anything is written, naming the
    path and what it found (a symbolic link, a FIFO, a socket, a device; a directory, or a link to one). The
    content there is never read (a FIFO would block the module, a link would put another file, perhaps a root-only
    one, into the diff) and nothing is written through it. Remove it (or make it a regular file) to let the task
    write the file.
  - A rewritten file keeps its SELinux context (a new one gets the policy's default for its path).
  - Supports check mode (reports what would change) and diff mode (a diff per changed text file). For a file of
    secrets, set C(no_log) on the task; the result then holds neither the contents (its C(invocation) names the
    paths only) nor a diff.
options:
  files:
    description: Files to write.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: str, required: true}
      content: {description: The whole content (text)., type: str, required: true}
      mode:
        description: Octal mode, as a string (C("0644")) or as the number an unquoted YAML C(0644) gives (420), as
          M(ansible.builtin.file) reads it.
        type: raw
        required: true
      owner: {description: User name or id; overrides I(owner) for this file., type: str}
      group: {description: Group name or id; overrides I(group) for this file., type: str}
  directories:
    description: Directories to make (before the files).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: str, required: true}
      mode: {description: Octal mode, read as for I(files)., type: raw, required: true}
      owner: {description: User name or id; overrides I(owner) for this directory., type: str}
      group: {description: Group name or id; overrides I(group) for this directory., type: str}
  owner:
    description: User name or id of every file in I(files) and directory in I(directories) without its own. Not
      given, a file's owner is left as it is (kept when the file is rewritten; a new file belongs to the user the
      module runs as).
    type: str
  group:
    description: Group name or id of every file in I(files) and directory in I(directories) without its own (not
      given, left as it is).
    type: str
  absent:
    description: Absolute paths to remove.
    type: list
    elements: str
    default: []
author: llm_endpoints
"""

EXAMPLES = r"""
- name: Build context is written
  llm_endpoints.core.host_files:
    directories:
      - {path: /opt/llm-stack/engine-build, mode: "0755"}
    files:
      - path: /opt/llm-stack/engine-build/Dockerfile
        content: "{{ lookup('ansible.builtin.template', 'llamacpp.Dockerfile.j2') }}"
        mode: "0644"
  register: written
- name: Changed paths are known
  ansible.builtin.debug:
    msg: "{{ '/opt/llm-stack/engine-build/Dockerfile' in written.changed_paths }}"
"""

RETURN = r"""
changed_paths:
  description: Directories made or mended, files written or mended, and paths removed (or that would be, in check
    mode), in that order.
  type: list
  elements: str
  returned: always
"""

MODE = re.compile(r"^0?[0-7]{3,4}\Z")


def _problems(directories: list[dict[str, Any]], files: list[dict[str, Any]], absent: list[str],
              check_mode: bool) -> list[str]:
    found = []
    made = set()
    for i, entry in enumerate(directories):
        path = entry["path"]
        if not _well_formed(path) or path == "/":
            found.append(f"directories[{i}].path must be an absolute path without . or .. components, other than /; "
                         f"got {path!r}")
            continue
        if path in made:
            found.append(f"directories[{i}].path {path} is given twice")
        made.add(path)
        if _mode(entry["mode"]) is None:
            found.append(f"directories[{i}].mode must be an octal mode such as \"0755\"; "
                         f"got {entry['mode']!r} ({path})")
        # A file (or a link to one) in the way, here or above: os.makedirs would fail half-way.
        above = path
        while above != "/":
            if os.path.lexists(above) and not os.path.isdir(above):
                found.append(f"directories[{i}]: {above} is in the way of {path} (not a directory)")
                break
            above = os.path.dirname(above)
        found += _unknown_ids(entry, f"directories[{i}]", path)
    seen: set[str] = set()
    for i, entry in enumerate(files):
        path = entry["path"]
        if not _well_formed(path):
            found.append(f"files[{i}].path must be an absolute path without . or .. components; got {path!r}")
            continue
        if path in seen:
            found.append(f"files[{i}].path {path} is given twice")
        seen.add(path)
        if _mode(entry["mode"]) is None:
            found.append(f"files[{i}].mode must be an octal mode such as \"0644\"; got {entry['mode']!r} ({path})")
        # In check mode an earlier task that would create the directory did not run: the file is reported as new.
        if not os.path.isdir(os.path.dirname(path)) and os.path.dirname(path) not in made and not check_mode:
            found.append(f"files[{i}]: the directory of {path} does not exist")
        elif os.path.isdir(path) or path in made:
            found.append(f"files[{i}]: {path} is a directory (or a link to one)")
        found += _unknown_ids(entry, f"files[{i}]", path)
    for i, path in enumerate(absent):
        if not _well_formed(path) or path == "/":
            found.append(f"absent[{i}] must be an absolute path without . or .. components, other than /; "
                         f"got {path!r}")
        elif path in seen or path in made:
            found.append(f"absent[{i}] {path} is also a path to write")
    return found


def _unknown_ids(entry: dict[str, Any], name: str, path: str) -> list[str]:
    found = []
    for key, lookup in (("owner", _uid), ("group", _gid)):
        if entry[key] is not None and not entry[key].isdigit():
            try:
                lookup(entry[key])
            except KeyError:
                found.append(f"{name}.{key} {entry[key]!r} is not known on the host ({path})")
    return found


def _well_formed(path: str) -> bool:
    return path.startswith("/") and "\x00" not in path and not {".", ".."} & set(path.split("/"))


def _mode(value: Any) -> int | None:
    """A mode as ansible.builtin.file reads it: a string of octal digits, or the number YAML made of 0644."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0o7777 else None
    if isinstance(value, str) and MODE.match(value):
        return int(value, 8)
    return None


# Each name is looked up once a call (checked first, used again for every file written).
@functools.cache
def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


@functools.cache
def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _ids(entry: dict[str, Any]) -> tuple[int, int]:
    """Owner and group ids to give the file: as asked, else the existing file's, else -1 (as created)."""
    owner, group = entry["owner"], entry["group"]
    try:
        old = os.lstat(entry["path"])  # a regular file (_read refused anything else): no link followed
    except OSError:
        old = None
    uid = int(owner) if owner and owner.isdigit() else _uid(owner) if owner else \
        old.st_uid if old else -1
    gid = int(group) if group and group.isdigit() else _gid(group) if group else \
        old.st_gid if old else -1
    return uid, gid


def _attrs(entry: dict[str, Any], path: str) -> dict[str, Any]:
    """What AnsibleModule.set_fs_attributes_if_different compares and sets: mode, owner and group (no SELinux change
    or file attributes)."""
    return {"path": path, "mode": _mode(entry["mode"]), "owner": entry["owner"], "group": entry["group"],
            "secontext": [None, None, None, None], "attributes": None}


def _collapse(path: str) -> str:
    return "/" + "/".join(part for part in path.split("/") if part) if path.startswith("/") else path


def _read(path: str) -> bytes | None:
    """The file's bytes; None when there is none (or, in check mode, no parent directory yet). NotRegularFile for
    anything else: a link is not followed, a FIFO not waited on."""
    try:
        return read_regular(path)[0]
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write(module: AnsibleModule, entry: dict[str, Any], data: bytes) -> None:
    path = entry["path"]
    uid, gid = _ids(entry)
    # mkstemp creates the file 0600; it gets its final mode and owner before it is renamed into place.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chown(tmp, uid, gid)
        os.chmod(tmp, _mode(entry["mode"]))
        # A rewritten file keeps its SELinux context, as Ansible's own writes do (no-op without SELinux).
        context = module.selinux_context(path) if os.path.lexists(path) and module.selinux_enabled() else None
        os.rename(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    if context:
        module.set_context_if_different(path, context, False)
    else:
        module.set_default_selinux_context(path, False)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "default": [], "options": {
                "path": {"type": "str", "required": True},
                "content": {"type": "str", "required": True},
                "mode": {"type": "raw", "required": True},
                "owner": {"type": "str"},
                "group": {"type": "str"},
            }},
            "directories": {"type": "list", "elements": "dict", "default": [], "options": {
                "path": {"type": "str", "required": True},
                "mode": {"type": "raw", "required": True},
                "owner": {"type": "str"},
                "group": {"type": "str"},
            }},
            "owner": {"type": "str"},
            "group": {"type": "str"},
            "absent": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    # Repeated slashes and a trailing one (a directory setting such as "/opt/llm-stack/" joined with a name) are
    # collapsed; . and .. components are refused (_problems).
    directories, files = ([{**entry, "path": _collapse(entry["path"]),
                            "owner": module.params["owner"] if entry["owner"] is None else entry["owner"],
                            "group": module.params["group"] if entry["group"] is None else entry["group"]}
                           for entry in module.params[key]] for key in ("directories", "files"))
    absent = [_collapse(path) for path in module.params["absent"]]
    problems = _problems(directories, files, absent, module.check_mode)
    befores: dict[str, bytes | None] = {}
    # Read only once the inputs are right, then every file, so that each path in the way is named at once.
    inputs_ok = not problems
    for i, entry in enumerate(files):
        if inputs_ok:
            try:
                befores[entry["path"]] = _read(entry["path"])
            except NotRegularFile as err:
                problems.append(f"files[{i}]: {entry['path']} is {err.kind}, not a regular file: host_files neither "
                                f"reads nor writes through it; remove it to have the file written there")
            except OSError as err:
                problems.append(f"{entry['path']} could not be read: {err.strerror}")
    # With no_log (a file of secrets) the result names the paths only: no contents in `invocation`, no diff.
    quiet = {"invocation": {"module_args": {"directories": [e["path"] for e in directories],
                                            "files": [e["path"] for e in files], "absent": absent}}} \
        if module.no_log else {}
    if problems:
        module.fail_json(msg="host_files: " + "; ".join(problems), changed=False, changed_paths=[], **quiet)
    changed_paths: list[str] = []
    diffs: list[dict[str, str]] = []

    def fail(msg: str) -> None:
        module.fail_json(msg=msg, changed=bool(changed_paths), changed_paths=changed_paths, **quiet)

    for entry in directories:
        path = entry["path"]
        made = not os.path.isdir(path)
        if made:
            if module._diff and not module.no_log:
                diffs.append({"before_header": path, "after_header": path, "before": "(absent)\n",
                              "after": "(directory)\n"})
            if not module.check_mode:
                try:
                    # exist_ok: another host's call (delegated to the same control node) may make it first.
                    os.makedirs(path, exist_ok=True)
                except OSError as err:
                    fail(f"host_files: directory {path} could not be made: {err.strerror}")
                module.set_default_selinux_context(path, False)
        # A link to a directory is followed, as ansible.builtin.file's state=directory does: the target gets the mode.
        attrs = _attrs(entry, os.path.realpath(path) if os.path.islink(path) else path)
        if not made or not module.check_mode:
            made = module.set_fs_attributes_if_different(attrs, made)
        if made:
            changed_paths.append(path)
    for entry in files:
        path = entry["path"]
        data = entry["content"].encode("utf-8")
        before = befores[path]
        written = before != data
        if written:
            if module._diff and not module.no_log:
                try:
                    old = "" if before is None else before.decode("utf-8")
                except UnicodeDecodeError:
                    old = "(binary)\n"
                diffs.append({"before_header": path, "after_header": path, "before": old, "after": entry["content"]})
            if not module.check_mode:
                try:
                    _write(module, entry, data)
                except OSError as err:
                    fail(f"host_files: {path} could not be written: {err.strerror}")
        attrs = _attrs(entry, path)
        # A file written here already has its mode and owner; one that only differs in them gets them now (check
        # mode: a file that is not there yet is reported through its content alone).
        if not written or not module.check_mode:
            written = module.set_fs_attributes_if_different(attrs, written)
        if written:
            changed_paths.append(path)
    for path in absent:
        if os.path.lexists(path):
            if not module.check_mode:
                try:
                    _remove(path)
                except OSError as err:
                    fail(f"host_files: {path} could not be removed: {err.strerror}")
            changed_paths.append(path)
            if module._diff:
                diffs.append({"before_header": path, "after_header": path, "before": "(present)\n",
                              "after": "(absent)\n"})
    result: dict[str, Any] = {"changed": bool(changed_paths), "changed_paths": changed_paths, **quiet}
    if module._diff and not module.no_log:
        result["diff"] = diffs
    module.exit_json(**result)

if __name__ == "__main__":
    main()
