"""The smoke and throughput roles and the report against a real llama.cpp server, through ansible-runner."""
from __future__ import annotations

import json
from pathlib import Path

from llm_fixture import Engine, run_checks

LAB_THROUGHPUT = {"llm_throughput_concurrency": [1, 2], "llm_throughput_requests_per_level": 3,
                  "llm_throughput_max_tokens": 24, "llm_throughput_warmup_requests": 1}


def good_vars(engine: Engine, tmp_path: Path) -> dict:
    return {"llm_stack_engine": "llamacpp_cpu", "llm_stack_dir": str(tmp_path / "stack"),
            "llm_stack_port": engine.port, "llm_stack_served_model_name": engine.model,
            "llm_stack_api_key": engine.api_key, "llm_smoke_profile": "smollm2-135m",
            "preflight_min_memory_mb": 512, "preflight_min_disk_gb": 1,
            "llm_report_run_id": "itest", **LAB_THROUGHPUT}


def test_healthy_engine_passes_and_reports(engine: Engine, tmp_path: Path) -> None:
    run = run_checks(tmp_path, good_vars(engine, tmp_path))
    assert run.rc == 0, run.output[-3000:]
    run_dir = run.report_dir / "itest"
    report = json.loads((run_dir / "localhost.json").read_text())
    assert report["status"] == "pass"
    names = [c["name"] for c in report["checks"]]
    assert names == ["health", "models", "chat", "stream", "prompt:korean", "prompt:code",
                     "auth:without-key", "auth:with-key"]
    assert all(c["passed"] for c in report["checks"])
    levels = report["performance"]["levels"]
    assert [lvl["max_concurrency"] for lvl in levels] == [1, 2]
    assert all(lvl["completed"] == 3 and lvl["total_output_tokens"] > 0 for lvl in levels)
    assert report["memory"]["quantization"] == "Q4_1"
    # The deployment fact as llm_stack sets it, and the system as preflight found it.
    assert report["deployment"]["engine"] == "llamacpp_cpu"
    assert report["deployment"]["served_model_name"] == engine.model
    assert report["deployment"]["api_key_required"] is True
    assert report["system"]["gpu_mode"] == "cpu" and report["system"]["nvidia_driver"] is None
    assert "| prompt:code | pass |" in (run_dir / "localhost.md").read_text()
    assert "| localhost | pass |" in (run_dir / "fleet.md").read_text()
    assert (run_dir / "localhost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in run_dir.iterdir():
        assert engine.api_key.encode() not in path.read_bytes(), f"API key leaked into {path.name}"
    assert engine.api_key not in run.output


def test_wrong_model_name_fails_with_clear_message(engine: Engine, tmp_path: Path) -> None:
    run = run_checks(tmp_path, {**good_vars(engine, tmp_path), "llm_stack_served_model_name": "openai/gpt-oss-20b"})
    assert run.rc != 0
    assert "check 'models': expected 'openai/gpt-oss-20b' among the served model ids" in run.output
    assert f"ids=['{engine.model}']" in run.output
    assert not (run.report_dir / "itest").exists()


def test_api_key_mismatch_fails_with_clear_message(engine: Engine, tmp_path: Path) -> None:
    wrong = "wrong-key-for-the-test"
    run = run_checks(tmp_path, {**good_vars(engine, tmp_path), "llm_stack_api_key": wrong})
    assert run.rc != 0
    assert "check 'auth:with-key': expected HTTP 200 with the API key" in run.output
    assert "came back: HTTP 401" in run.output
    assert wrong not in run.output and engine.api_key not in run.output


def test_too_high_threshold_fails_with_measured_and_required(engine: Engine, tmp_path: Path) -> None:
    # The floor is judged on the single-stream level: one level of two requests is enough to measure it.
    run = run_checks(tmp_path, {**good_vars(engine, tmp_path), "llm_throughput_min_decode_tps": 100000,
                                "llm_throughput_concurrency": [1], "llm_throughput_requests_per_level": 2})
    assert run.rc != 0
    assert "single-stream decode: measured" in run.output
    assert "required 100000 (llm_throughput_min_decode_tps" in run.output


def test_unknown_smoke_profile_fails_before_any_request(engine: Engine, tmp_path: Path) -> None:
    run = run_checks(tmp_path, {**good_vars(engine, tmp_path), "llm_smoke_profile": "nonexistent"})
    assert run.rc != 0
    assert "llm_smoke_profile 'nonexistent' is unknown" in run.output


def test_report_fails_loudly_on_a_malformed_producer_fact(engine: Engine, tmp_path: Path) -> None:
    # As if llm_stack had renamed its deployment keys: the report names what is missing instead of printing n/a.
    # No benchmark (llm_throughput_run: never): the report judges the facts it is handed, measured or not.
    run = run_checks(tmp_path, {**good_vars(engine, tmp_path), "llm_stack_deployment": {"engine": "llamacpp_cpu"},
                                "llm_throughput_run": "never"})
    assert run.rc != 0
    assert "missing required arguments" in run.output and "found in llm_stack_deployment" in run.output
    assert "served_model_name" in run.output
    assert not (run.report_dir / "itest").exists()
