"""Show a warning without failing (a play-level warning that `debug` cannot give)."""
from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("msg",))

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        result.update(changed=False, warnings=[str(self._task.args.get("msg", ""))], msg="warned")
        return result
