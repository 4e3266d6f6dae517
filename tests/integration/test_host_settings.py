"""The lookup llm_host_settings: llm_defaults' defaults as another host of the inventory has them (its own variables
win; the defaults reference each other and that host's facts), and its errors, over a simulated inventory."""
from __future__ import annotations

import json
import re
from pathlib import Path

from llm_fixture import run_playbook

NAMES = ("llm_stack_bind_address", "llm_apps_backend_bind_address", "llm_stack_port", "llm_backend_enabled")


def test_each_host_has_the_shared_settings_its_own_variables_make(tmp_path: Path) -> None:
    run = run_playbook(tmp_path, "host_settings.yml", {})
    assert run.rc == 0, run.output[-4000:]
    found = json.loads(re.search(r'"HOST_SETTINGS (.*)"\n', run.output).group(1).replace('\\"', '"'))
    rows = {name: [[row[n] for n in NAMES] for row in found[name]] for name in ("plain", "door")}
    # No front door: every address, and the engine on loopback where the backend runs (llm_defaults' rule); the
    # host's own port.
    assert rows["plain"] == [["0.0.0.0", "0.0.0.0", 8000, False], ["127.0.0.1", "0.0.0.0", 9000, True]]
    # Behind a front door: the host's internal address, from its facts or as the inventory pins it.
    assert rows["door"] == [["10.0.0.3", "10.0.0.3", 8000, True], ["10.0.0.4", "10.0.0.4", 8000, False]]
    assert "llm_host_settings: 'ghost' is not a host of the inventory" in found["ghost"]
    assert "llm_host_settings: names must be variable names" in found["name"]
