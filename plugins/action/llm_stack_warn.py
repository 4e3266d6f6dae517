"""Show a warning without failing (a play-level warning that `debug` cannot give), naming its host."""
from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("msg",))

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        msg = str(self._task.args.get("msg", ""))
        # Ansible prints a warning's text once per run: without its host, a fleet's hosts that warn alike would show
        # as one warning of one unnamed host.
        host = str((task_vars or {}).get("inventory_hostname", ""))
        if host and not msg.startswith(f"{host}: "):
            msg = f"{host}: {msg}"
        result.update(changed=False, warnings=[msg], msg="warned")
        return result
