"""The engine table: each engine's row, read from llm_stack's engine files (roles/llm_stack/vars/engine-<engine>.yml,
key __llm_stack_engine_info), as {engine: row}, in sorted order. Found beside this plugin, in the collection, whatever
role or play asks; read once per process while the files are unchanged."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase
from ansible_collections.llm_endpoints.core.plugins.plugin_utils.yaml_files import YamlFiles

DOCUMENTATION = r"""
name: llm_engines
author: LLM endpoints project
version_added: "0.4.0"
short_description: The engine table, read from llm_stack's engine files
description:
  - Returns one dict, each engine llm_stack can run (a file roles/llm_stack/vars/engine-<engine>.yml of this
    collection) mapped to its row (the file's __llm_stack_engine_info), the engines in sorted order.
  - The rows are data, untemplated (their checks are templated where they are judged).
"""

EXAMPLES = r"""
- name: The engines llm_stack can run
  ansible.builtin.debug:
    msg: "{{ lookup('llm_endpoints.core.llm_engines') | list }}"
"""

RETURN = r"""
_raw:
  description: One dict, engine name -> its row (gpu, image, gpu_memory_ratio, slots, metrics, checks).
  type: list
  elements: dict
"""

ENGINES = Path(__file__).resolve().parents[2] / "roles" / "llm_stack" / "vars"


def _table(files: list[tuple[Path, Any]]) -> dict[str, Any]:
    table = {}
    for path, content in files:
        row = content.get("__llm_stack_engine_info") if isinstance(content, dict) else None
        if not isinstance(row, dict):
            raise AnsibleError(f"{path.name} has no engine row (__llm_stack_engine_info)")
        table[path.name[len("engine-"):-len(".yml")]] = row
    return table


_TABLE = YamlFiles(_table)


def engines(folder: Path = ENGINES) -> dict[str, Any]:
    files = sorted(folder.glob("engine-*.yml"))
    if not files:
        raise AnsibleError(f"no engine files (engine-*.yml) in {folder}")
    return _TABLE.get(files)


class LookupModule(LookupBase):
    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        return [engines()]
