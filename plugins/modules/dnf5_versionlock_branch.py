#!/usr/bin/python
"""Keep packages on one version branch with dnf5's versionlock file (/etc/dnf/versionlock.toml)."""
from __future__ import annotations

import json
import os
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dnf5_versionlock_branch
short_description: Keep packages on one version branch with dnf5's versionlock file
description:
  - Writes one entry per package into dnf5's versionlock file, each allowing only versions inside the branch
    (C(evr >= E:<branch>) and C(evr < E:<branch+1>)), so point releases of the branch stay installable and every
    other branch is excluded. This is the file format's own example ("keep all *nvidia* packages on version
    3:570.*", dnf5 versionlock(8)); C(dnf5 versionlock add) can only lock one exact version.
  - Entries this module wrote before (recognised by O(comment)) for packages no longer listed are removed;
    entries of other packages are kept as they are. dnf5 rewrites the file itself and drops comments, so the module
    compares parsed entries, not text.
  - Needs Python 3.11 or later on the host (tomllib). Supports check mode and diff.
version_added: "0.3.0"
options:
  packages:
    description: The packages to keep on the branch, each with its epoch (0 when the package has none).
    type: list
    elements: dict
    required: true
    suboptions:
      name: {description: Package name., type: str, required: true}
      epoch: {description: Package epoch., type: int, default: 0}
      version: {description: The installed version (informative; the entry allows the whole branch)., type: str}
  branch:
    description: The branch, the first component of the version (C(580)).
    type: int
    required: true
  comment:
    description: Marks the entries this module owns.
    type: str
    default: "llm-endpoints: driver branch lock"
  path:
    description: The versionlock file.
    type: path
    default: /etc/dnf/versionlock.toml
author: llm-endpoints project
"""

EXAMPLES = r"""
- name: The NVIDIA driver packages stay on branch 580
  llm_endpoints.core.dnf5_versionlock_branch:
    packages: [{name: nvidia-open, epoch: 3}, {name: nvidia-driver, epoch: 3}]
    branch: 580
"""

RETURN = r"""
entries:
  description: The entries this module owns after the run.
  type: list
  returned: always
"""


def _entry(name: str, epoch: int, branch: int, comment: str) -> dict:
    return {"name": name, "comment": comment,
            "conditions": [{"key": "evr", "comparator": ">=", "value": f"{epoch}:{branch}"},
                           {"key": "evr", "comparator": "<", "value": f"{epoch}:{branch + 1}"}]}


def _string(value: Any) -> str:
    # TOML basic strings share JSON's escapes for the characters that can occur here.
    return json.dumps(str(value), ensure_ascii=False)


def render(document: dict) -> str:
    """dnf5's versionlock schema: version, then [[packages]] with name, comment and [[packages.conditions]]."""
    lines = [f"version = {_string(document.get('version', '1.0'))}"]
    for package in document.get("packages", []):
        lines += ["", "[[packages]]"]
        lines += [f"{key} = {_string(value)}" for key, value in package.items() if key != "conditions"]
        for condition in package.get("conditions", []):
            lines += ["", "[[packages.conditions]]"]
            lines += [f"{key} = {_string(value)}" for key, value in condition.items()]
    return "\n".join(lines) + "\n"


def desired(document: dict, packages: list[dict], branch: int, comment: str) -> dict:
    names = {p["name"] for p in packages}
    kept = [e for e in document.get("packages", []) if e.get("name") not in names and e.get("comment") != comment]
    ours = [_entry(p["name"], int(p.get("epoch") or 0), branch, comment)
            for p in sorted(packages, key=lambda p: p["name"])]
    return {"version": document.get("version", "1.0"), "packages": kept + ours}


def _entries(document: dict) -> list[str]:
    return sorted(json.dumps(e, sort_keys=True) for e in document.get("packages", []))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "dict", "required": True,
                         "options": {"name": {"type": "str", "required": True},
                                     "epoch": {"type": "int", "default": 0},
                                     "version": {"type": "str"}}},
            "branch": {"type": "int", "required": True},
            "comment": {"type": "str", "default": "llm-endpoints: driver branch lock"},
            "path": {"type": "path", "default": "/etc/dnf/versionlock.toml"},
        },
        supports_check_mode=True,
    )
    try:
        import tomllib
    except ImportError:
        module.fail_json(msg="dnf5_versionlock_branch needs Python 3.11 or later on the host (tomllib)")
    path = module.params["path"]
    if module.params["branch"] < 1:
        module.fail_json(msg=f"branch must be a positive driver branch such as 580, got {module.params['branch']}")
    before_text = ""
    document: dict = {"version": "1.0", "packages": []}
    if os.path.exists(path):
        with open(path, "rb") as handle:
            raw = handle.read()
        before_text = raw.decode()
        try:
            document = tomllib.loads(before_text)
        except tomllib.TOMLDecodeError as err:
            module.fail_json(msg=f"{path} is not valid TOML ({err}); nothing was changed")
    after = desired(document, module.params["packages"], module.params["branch"], module.params["comment"])
    # Order does not matter to dnf5, and dnf5 appends what `versionlock add` adds: compare the sets of entries.
    changed = after["version"] != document.get("version", "1.0") or _entries(after) != _entries(document)
    after_text = render(after)
    if changed and not module.check_mode:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, ".versionlock.toml.llm-endpoints")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(after_text)
        os.chmod(tmp, 0o644)
        module.atomic_move(tmp, path)
    owned = [e for e in after["packages"] if e.get("comment") == module.params["comment"]]
    module.exit_json(changed=changed, entries=owned,
                     diff={"before": before_text, "after": after_text, "before_header": path, "after_header": path})


if __name__ == "__main__":
    main()
