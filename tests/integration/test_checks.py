"""The smoke and throughput roles and the report against a real llama.cpp server, through ansible-runner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_fixture import Cases, Engine, run_cases, run_checks

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


# Refusals, each one host of one run (the engine is shared; only the threshold case benchmarks: one level of two
# requests is enough to judge the single-stream floor).
REFUSALS = {
    "wrong-model": ({"llm_stack_served_model_name": "openai/gpt-oss-20b"},
                    ["check 'models': expected 'openai/gpt-oss-20b' among the served model ids", "ids=['{model}']"]),
    "key-mismatch": ({"llm_stack_api_key": "wrong-key-for-the-test"},
                     ["check 'auth:with-key': expected HTTP 200 with the API key", "came back: HTTP 401"]),
    "threshold": ({"llm_throughput_min_decode_tps": 100000, "llm_throughput_concurrency": [1],
                   "llm_throughput_requests_per_level": 2},
                  ["single-stream decode: measured", "required 100000 (llm_throughput_min_decode_tps"]),
    "unknown-profile": ({"llm_smoke_profile": "nonexistent"}, ["llm_smoke_profile 'nonexistent' is unknown"]),
}


@pytest.fixture(scope="module")
def refusals(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Cases:
    work = tmp_path_factory.mktemp("refusals")
    return run_cases(work, "checks.yml", {name: {**good_vars(engine, work / name), **overrides}
                                          for name, (overrides, _) in REFUSALS.items()})


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_failing_check_fails_its_host_saying_what_was_wrong(refusals: Cases, engine: Engine, case: str) -> None:
    output = refusals.hosts[case]
    assert case in refusals.failed, output[-3000:]
    for fragment in REFUSALS[case][1]:
        assert fragment.format(model=engine.model) in output, output[-3000:]
    for secret in (engine.api_key, "wrong-key-for-the-test"):
        assert secret not in refusals.output


def test_report_fails_loudly_on_a_malformed_producer_fact(engine: Engine, tmp_path: Path) -> None:
    # As if llm_stack had renamed its deployment keys: the report names what is missing instead of printing n/a.
    # No benchmark (llm_throughput_run: never): the report judges the facts it is handed, measured or not.
    run = run_checks(tmp_path, {**good_vars(engine, tmp_path), "llm_stack_deployment": {"engine": "llamacpp_cpu"},
                                "llm_throughput_run": "never"})
    assert run.rc != 0
    assert "missing required arguments" in run.output and "found in llm_stack_deployment" in run.output
    assert "served_model_name" in run.output
    assert not (run.report_dir / "itest").exists()
