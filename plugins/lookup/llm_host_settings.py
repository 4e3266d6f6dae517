"""The shared settings (llm_defaults' defaults) as another host of the inventory has them. A role's defaults are not in
hostvars: a play that configures one host from others' settings (the monitoring host's scrape targets) would
otherwise copy llm_defaults' defaults and rules as literals. Here each default is templated as it is on that host:
its own variables (inventory, group and extra vars, facts, set_fact) win, the defaults fill the rest, and
inventory_hostname is that host."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase
from ansible.template import trust_as_template
from ansible_collections.llm_endpoints.core.plugins.plugin_utils.yaml_files import YamlFiles

DOCUMENTATION = r"""
name: llm_host_settings
author: LLM endpoints project
version_added: "0.4.0"
short_description: The shared settings (llm_defaults' defaults) as another host has them
description:
  - For each host named, a dict of the variables named, as the llm_defaults role's defaults give them on that host
    (its bind addresses, ports, whether the backend runs), templated with that host's own variables, which win.
  - Another role's defaults are not included (a role's defaults are in no host's variables).
options:
  _terms:
    description: Inventory host names.
    required: true
  names:
    description: The variables to return, each a default of llm_defaults or a variable of the host.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Where node-01's engine and backend listen
  ansible.builtin.debug:
    msg: >-
      {{ lookup('llm_endpoints.core.llm_host_settings', 'node-01',
                names=['llm_stack_bind_address', 'llm_stack_port', 'llm_backend_enabled']) }}
"""

RETURN = r"""
_raw:
  description: One dict per host, variable name -> its value on that host.
  type: list
  elements: dict
"""

DEFAULTS = Path(__file__).resolve().parents[2] / "roles" / "llm_defaults" / "defaults" / "main.yml"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _defaults(files: list[tuple[Path, Any]]) -> dict[str, Any]:
    [(path, raw)] = files
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise AnsibleError(f"{path} is not a mapping of defaults")
    return {name: trust_as_template(value) if isinstance(value, str) else value for name, value in raw.items()}


_DEFAULTS = YamlFiles(_defaults)


def defaults(path: Path = DEFAULTS) -> dict[str, Any]:
    """llm_defaults' defaults, each string trusted as a template as Ansible trusts a role's files."""
    return _DEFAULTS.get([path])


class LookupModule(LookupBase):
    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        self.set_options(var_options=variables, direct=kwargs)
        names = self.get_option("names")
        bad = [name for name in names if not _NAME.match(str(name))]
        if bad:
            raise AnsibleError(f"llm_host_settings: names must be variable names; got {bad!r}")
        variables = variables or {}
        hostvars, groups = variables.get("hostvars"), variables.get("groups") or {}
        if hostvars is None:
            raise AnsibleError("llm_host_settings needs the play's hostvars")
        found = []
        for host in terms:
            if host not in hostvars:
                raise AnsibleError(f"llm_host_settings: {host!r} is not a host of the inventory")
            own = hostvars.raw_get(host)
            view = {**defaults(), **own, "hostvars": hostvars, "groups": groups, "inventory_hostname": host}
            templar = self._templar.copy_with_new_env(available_variables=view)
            found.append({name: templar.template(trust_as_template("{{ " + name + " }}")) for name in names})
        return found
