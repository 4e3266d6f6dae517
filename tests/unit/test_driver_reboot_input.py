"""nvidia_driver_reboot_tasks (the task file that reboots a host between its drain and its undrain) is checked before
anything is drained: the role's own file, or an absolute path to a YAML file (tests/playbooks/driver_reboot.yml
runs the whole reboot with a simulated one)."""
from __future__ import annotations

import pytest
from test_fedora_rendering import find_task, render


@pytest.mark.parametrize(("value", "ok"), [
    ("reboot-now.yml", True), ("/srv/site/bmc-power-cycle.yml", True), ("/srv/site/kexec.yaml", True),
    ("reboot.yml", False),  # another of the role's files: it would run the drain again
    ("site/reboot.yml", False), ("/srv/site/reboot.sh", False), ("/srv/a\nb.yml", False), (["reboot-now.yml"], False),
])
def test_the_reboot_task_file_is_checked_first(value: object, ok: bool) -> None:
    # First in validate.yml (before the install: nothing changed yet) and in reboot.yml (before the drain).
    for tasks_file in ("validate.yml", "reboot.yml"):
        first = find_task("nvidia_driver", tasks_file, "")
        assert first["ansible.builtin.include_tasks"] == "check-reboot-tasks.yml", tasks_file
    check = find_task("nvidia_driver", "check-reboot-tasks.yml", "The reboot's task file is the role's")
    [row] = check["llm_endpoints.core.input_checks"]["checks"]
    assert render("{{ " + row["that"] + " }}", {"nvidia_driver_reboot_tasks": value}) is ok
