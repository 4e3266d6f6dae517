"""Input checks as one table, judged in order on the control node: the first row that fails fails the task with its
own message, naming the variable. One task for a role's checks, not one assert each: Ansible starts a worker process
per task and host (about 30 ms on the CI machine), paid on every row by each host of a bad-input batch.

A row is one of:
  {that: <condition or list of conditions>, msg: <message template>}
  {name: <variable>, value: <template>, min: <number>, max: <number>}: a whole number in range, with the shared
    message ("<name> must be a whole number from <min> to <max>; got <value>."); `number: true` takes a decimal
    number too (digits, a point, digits: no sign, exponent, nan or inf), `above: true` excludes min ("greater than
    <min> and at most <max>"), `unit: seconds` names what it counts ("a number of seconds ...")
and may carry `when: <condition>` (the row is skipped when false); a row {table: <variable>} stands for the rows of
that variable (a list kept elsewhere, such as an engine's own checks in its vars file: a variable from a file or a
play, role or task, whose conditions Ansible trusts; one set by set_fact or registered is not). Conditions are bare
expressions, as assert's `that`. The rows are not templated before the task runs: each row's condition is evaluated
only after every earlier row passed (a later row may rely on an earlier one: a value checked to be a list before it
is mapped), and a message only when its row fails. A message is written so that it never shows a secret's value; an
expression that cannot be evaluated fails the task naming its row, without the error text (which could quote a
value).
"""
from __future__ import annotations

import json
import re
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

_WHOLE = re.compile(r"[0-9]+\Z")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?\Z")
_NUMBER = frozenset(("name", "value", "min", "max"))
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("checks",))

    @classmethod
    def finalize_task_arg(cls, name: str, value: Any, templar: Any, context: Any) -> Any:
        if name == "checks":
            return value
        return super().finalize_task_arg(name, value, templar, context)

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        rows = self._task.args.get("checks")
        if not isinstance(rows, list):
            return {**result, "failed": True, "msg": "input_checks: checks must be a list of rows"}
        try:
            rows = self._expand(rows, task_vars or {})
        except AnsibleError as error:
            return {**result, "failed": True, "msg": f"input_checks: {error.message}"}
        judged = 0
        for where, row in rows:
            if not isinstance(row, dict) or not ({"that", "msg"} <= row.keys() or _NUMBER <= row.keys()):
                return {**result, "failed": True,
                        "msg": f"input_checks: {where} must be {{that, msg}} or {{name, value, min, max}}"}
            label = row.get("name", where)
            try:
                if "when" in row and not self._templar.evaluate_conditional(row["when"]):
                    continue
                judged += 1
                failure = self._judge(row)
            except AnsibleError as error:
                # The error's text may quote a value (a secret's too): only its kind is shown.
                return {**result, "failed": True,
                        "msg": f"input_checks: the check of {label} could not be evaluated ({type(error).__name__})"}
            if failure is not None:
                return {**result, "failed": True, "msg": failure}
        return {**result, "changed": False, "msg": f"{judged} checks passed"}

    def _expand(self, rows: list[Any], task_vars: dict[str, Any]) -> list[tuple[str, Any]]:
        """(where, row) for each row, each {table: <variable>} row replaced by that variable's rows (a list, such as an
        engine's own checks kept in its vars file), read as defined: untemplated, so each is still judged only when
        reached. `where` names the row for messages: "row 3", or "table x.y row 1" for a row of a table. A table row
        takes no `when`, and a table's rows are not expanded again."""
        expanded: list[tuple[str, Any]] = []
        for index, row in enumerate(rows):
            if isinstance(row, dict) and "table" in row:
                path = str(row["table"])
                if row.keys() != {"table"} or not _TABLE.match(path):
                    raise AnsibleError(f"row {index}: a table row is {{table: <variable name[.key...]>}} alone; "
                                       f"got {sorted(row)} naming {path!r}")
                table: Any = task_vars
                for key in path.split("."):
                    if not isinstance(table, dict) or key not in table:
                        raise AnsibleError(f"table {path} is not defined")
                    table = table[key]
                if not isinstance(table, list):
                    raise AnsibleError(f"table {path} must be a list of rows")
                expanded.extend((f"table {path} row {number}", each) for number, each in enumerate(table))
            else:
                expanded.append((f"row {index}", row))
        return expanded

    def _judge(self, row: dict[str, Any]) -> str | None:
        """None when the row passes, else its message."""
        if "that" in row:
            conditions = row["that"] if isinstance(row["that"], list) else [row["that"]]
            for condition in conditions:
                passed = condition if isinstance(condition, bool) else self._templar.evaluate_conditional(condition)
                if not passed:
                    return str(self._templar.template(row["msg"])).strip()
            return None
        value = self._templar.template(row["value"])
        text, decimal, above = str(value), bool(row.get("number")), bool(row.get("above"))
        if not isinstance(value, bool) and (_DECIMAL if decimal else _WHOLE).match(text):
            # Whole numbers as int (exact at any size), decimals as float.
            number, low, high = ((float(text), float(row["min"]), float(row["max"])) if decimal
                                 else (int(text), int(row["min"]), int(row["max"])))
            if (number > low if above else number >= low) and number <= high:
                return None
        kind = ("number" if decimal else "whole number") + (f" of {row['unit']}" if row.get("unit") else "")
        bounds = (f"greater than {row['min']} and at most {row['max']}" if above
                  else f"from {row['min']} to {row['max']}")
        return f"{row['name']} must be a {kind} {bounds}; got {json.dumps(value, default=str)}."
