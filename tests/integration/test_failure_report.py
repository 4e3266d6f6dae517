"""A host that fails still gets its report: what failed (play, task, error), in <host>.json, <host>.md and fleet.md,
with the run's id; the host then fails with the original error, and its run lock is released."""
from __future__ import annotations

import json
from pathlib import Path

from llm_fixture import run_playbook


def test_a_failed_step_is_reported_and_the_host_still_fails(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    run = run_playbook(tmp_path, "failure_report.yml", {"failure_marker": "m-42", "host_lock_path": str(lock),
                                                        "llm_stack_dir": str(tmp_path / "stack")})
    assert run.rc != 0
    assert "Engine answers on /health failed: The engine did not answer /health within 30 s" in run.output
    report = json.loads((run.report_dir / "failure-test" / "localhost.json").read_text())
    assert report["status"] == "fail"
    assert report["failure"]["task"] == "Engine answers on /health"
    assert "test failure m-42" in report["failure"]["message"]
    assert report["engine_log"] == []  # no compose project here: no log, and no error from looking for one
    # What Docker says of the engine's container comes before the log: here, that there is none ({} where the
    # machine has no Docker engine to ask).
    container = report["engine_container"]
    assert container == {} or container["summary"] == "no container for service engine (removed, or never created)"
    markdown = (run.report_dir / "failure-test" / "localhost.md").read_text()
    assert "## What failed" in markdown and "test failure m-42" in markdown
    docker_said = markdown.index("## Engine's container (Docker)")
    assert docker_said < markdown.index("## Engine's last log lines")
    assert container.get("summary", "Docker could not be asked.") in markdown[docker_said:]
    fleet = (run.report_dir / "failure-test" / "fleet.md").read_text()
    assert "| localhost | fail at Engine answers on /health |" in fleet
    assert not lock.exists()
