"""fleet.md's usage section (llm_report), rendered from the role's own template with what its ledger read
registers when the store or the backend does not answer: a line naming it, the report written all the same
(molecule's fleet scenario renders the table from a real store)."""
from __future__ import annotations

from typing import Any

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from helpers import ROOT, trusted

TEMPLATE = ROOT / "roles/llm_report/templates/fleet.md.j2"


def fleet_md(ledger: dict[str, Any]) -> str:
    variables = {"__llm_report_run": "20261207T031900", "ansible_play_hosts_all": [], "hostvars": {},
                 "__llm_report_ledger": ledger, "__llm_report_ledger_hosts": ["fleet-2"], "llm_report_ledger_days": 7}
    return Templar(loader=DataLoader(), variables=variables).template(trusted(TEMPLATE.read_text()))


def test_a_store_that_does_not_answer_is_named_and_the_report_is_still_written() -> None:
    stderr = ("Traceback (most recent call last):\n  ...\n"
              "redis.exceptions.ConnectionError: Error 111 connecting to limits:6379 | Connection refused.\n")
    text = fleet_md({"rc": 1, "stdout": "", "stderr": stderr})
    # The last line of what the backend said, through the first host that counts in a store; a table's pipe is not
    # taken for a column.
    assert text.rstrip().endswith("Not read through fleet-2's backend: redis.exceptions.ConnectionError: Error 111 "
                                  "connecting to limits:6379 / Connection refused.")
    assert "| day | key |" not in text
    assert fleet_md({"rc": 137, "stdout": "", "stderr": ""}).rstrip().endswith(
        "Not read through fleet-2's backend: no message")
    # No host counts in a store: the read was skipped and there is no usage section at all.
    assert "Usage per key" not in fleet_md({"skipped": True, "changed": False})
