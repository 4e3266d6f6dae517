"""playbooks/doctor.yml on this machine (a CPU host) against the real llama.cpp server: what it finds, that it
changes nothing (--check gives changed=0), that it fails when the engine is down, and that no key leaks."""
from __future__ import annotations

import json
from pathlib import Path

from helpers import ROOT
from llm_fixture import Engine, free_port, run_checks, run_playbook
from test_checks import good_vars

DOCTOR = str(ROOT / "playbooks/doctor.yml")


def doctor_json(report_dir: Path) -> dict:
    [path] = sorted((report_dir / "doctor").glob("doctor-*.json"))
    return json.loads(path.read_text())


def test_doctor_reads_a_serving_host_and_its_last_report(engine: Engine, tmp_path: Path) -> None:
    variables = good_vars(engine, tmp_path)
    # The last report is what the doctor reads here, not its figures: the checks run without their benchmark.
    assert run_checks(tmp_path, {**variables, "llm_throughput_run": "never"}).rc == 0
    run = run_playbook(tmp_path, DOCTOR, variables)
    assert run.rc == 0, run.output[-3000:]
    [host] = doctor_json(run.report_dir)["hosts"]
    checks = {f["check"]: f for f in host["findings"]}
    assert host["status"] in ("ok", "warn"), host["findings"]
    assert checks["engine"]["status"] == "ok"
    assert checks["engine_model"]["status"] == "ok" and engine.model in checks["engine_model"]["detail"]
    assert host["engine"]["models"] == [engine.model]
    # llama.cpp reports its KV cache through /props (context per slot x slots): 2048 tokens in all.
    assert checks["kv_cache"]["status"] == "ok"
    assert host["engine"]["kv_cache"]["tokens"] == 2048
    assert checks["last_report"]["status"] == "ok"
    assert host["last_report"]["path"].endswith("itest/localhost.json")
    # A CPU host: no GPU expected, none found, no driver checks.
    assert checks["gpus_pci"]["status"] == "ok" and "driver" not in checks
    assert "localhost  ok" in run.output or "localhost  warn" in run.output
    for path in (run.report_dir / "doctor").iterdir():
        assert engine.api_key not in path.read_text(), "API key leaked into the doctor's JSON"
    assert engine.api_key not in run.output


def test_doctor_changes_nothing_under_check(engine: Engine, tmp_path: Path) -> None:
    run = run_playbook(tmp_path, DOCTOR, good_vars(engine, tmp_path), cmdline="--check")
    assert run.rc == 0, run.output[-3000:]
    assert "changed=0" in run.output
    assert doctor_json(run.report_dir)["hosts"][0]["engine"]["healthy"] is True


def test_doctor_fails_when_the_engine_is_down(engine: Engine, tmp_path: Path) -> None:
    run = run_playbook(tmp_path, DOCTOR, {**good_vars(engine, tmp_path), "llm_stack_port": free_port()})
    assert run.rc != 0
    assert "localhost: engine failed" in run.output
    [host] = doctor_json(run.report_dir)["hosts"]
    assert host["status"] == "fail" and host["engine"]["healthy"] is False
