"""The record of the last successful run (roles/host_state), after side_effect.yml's repair run wrote it and the
idempotence step's run found the host unchanged: what it holds, and the proof that the idempotence run sat out every
play after the check. The drift side of it (stopped and removed containers, edited files found, the host run whole
and repaired) is side_effect.yml's, whose two runs the check judged changed, naming the drift."""
from __future__ import annotations

import json
import os
from pathlib import Path

from testinfra.host import Host

RECORD = "/var/lib/llm-endpoints/state.json"
SECRETS = (os.environ["LLM_API_KEY"], os.environ["LLM_BACKEND_API_KEY"])


def test_the_record_is_root_only_and_holds_no_secret(host: Host) -> None:
    record = host.file(RECORD)
    assert (record.user, record.mode) == ("root", 0o600)
    text = record.content_string
    assert not any(secret in text for secret in SECRETS)
    doc = json.loads(text)
    assert doc["lock"]["label"]  # the run that recorded held the lock
    containers = doc["observed"]["containers"]
    assert {c["service"] for c in containers.values()} >= {"engine", "backend", "frontend"}
    assert all(c["running"] and c["config_hash"] for c in containers.values())
    assert set(doc["observed"]["health"].values()) == {"ok"}
    assert any(path.endswith("/docker-compose.yml") for path in doc["observed"]["files"])
    assert doc["facts"]["preflight_gpu_mode"] == "cpu"  # the lab has no GPU


def test_the_idempotence_run_found_the_host_unchanged_and_sat_out_the_run(host: Host) -> None:
    # The converge and side_effect.yml's repair run each wrote a report and took the run lock; the idempotence run
    # (0 changed, molecule's own check) wrote none and took no lock: its first play found the host unchanged, and it
    # sat out every later play. (A whole run would have written a third report and recorded its own lock.)
    runs = sorted(Path(os.environ["LLM_REPORT_DIR"]).iterdir())
    assert len(runs) == 2, [run.name for run in runs]
    last = json.loads(host.file("/var/lib/llm-endpoints/run.lock.last").content_string)
    doc = json.loads(host.file(RECORD).content_string)
    assert {key: last[key] for key in doc["lock"]} == doc["lock"]
    assert not host.file("/var/lib/llm-endpoints/run.lock").exists
