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
