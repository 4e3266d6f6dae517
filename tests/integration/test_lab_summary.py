"""The lab summary play (`make lab`'s last step) gathers no facts and still reads the shared settings."""
from __future__ import annotations

from pathlib import Path

from helpers import ROOT
from llm_fixture import run_playbook


def test_summary_prints_the_endpoint_and_a_working_request(tmp_path: Path) -> None:
    run = run_playbook(tmp_path, str(ROOT / "playbooks/lab_summary.yml"),
                       {"llm_stack_engine": "llamacpp_cpu", "llm_stack_port": 8000,
                        "llm_stack_served_model_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_stack_api_key": ""})
    assert run.rc == 0, run.output[-3000:]
    assert ("The lab endpoint is up: http://127.0.0.1:8000/v1 (model HuggingFaceTB/SmolLM2-135M-Instruct, "
            "engine llamacpp_cpu).") in run.output
    assert "curl -s http://127.0.0.1:8000/v1/chat/completions" in run.output


def test_summary_with_the_apps_prints_the_three_urls_and_a_request_through_the_backend(tmp_path: Path) -> None:
    run = run_playbook(tmp_path, str(ROOT / "playbooks/lab_summary.yml"),
                       {"llm_stack_engine": "llamacpp_cpu", "llm_stack_port": 8000, "llm_backend_enabled": True,
                        "llm_frontend_enabled": True, "llm_backend_port": 8080, "llm_frontend_port": 8501,
                        "llm_stack_served_model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
                        "llm_stack_api_key": "engine-key-not-printed-0123456789"})
    assert run.rc == 0, run.output[-3000:]
    assert "engine    http://127.0.0.1:8000/v1 inside the lab host" in run.output
    assert "backend   http://127.0.0.1:8080/v1" in run.output
    assert "chat UI   http://127.0.0.1:8501/" in run.output
    assert "curl -sN http://127.0.0.1:8080/v1/chat/completions" in run.output
    assert "engine-key-not-printed-0123456789" not in run.output
    assert "Prometheus" not in run.output  # monitoring off


def test_summary_with_monitoring_prints_the_prometheus_url(tmp_path: Path) -> None:
    run = run_playbook(tmp_path, str(ROOT / "playbooks/lab_summary.yml"),
                       {"llm_stack_engine": "llamacpp_cpu", "llm_stack_port": 8000, "monitoring_enabled": True,
                        "monitoring_prometheus_ui_path": "/classic",
                        "llm_stack_served_model_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_stack_api_key": ""})
    assert run.rc == 0, run.output[-3000:]
    assert "Prometheus    http://127.0.0.1:9090/ (targets: /classic/targets;" in run.output
    assert "Alertmanager  http://127.0.0.1:9093/" in run.output
