"""Verify a converged lab host: the unit runs the compose project and the endpoint really serves."""
from __future__ import annotations

import json
import os
from pathlib import Path

from testinfra.host import Host

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
API = "http://127.0.0.1:8000"
KEY = os.environ["LLM_API_KEY"]
AUTH = f"-H 'Authorization: Bearer {KEY}'"


def curl_json(host: Host, *args: str) -> dict:
    cmd = host.run("curl -sS --max-time 60 " + " ".join(args))
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def test_unit_is_active_and_enabled(host: Host) -> None:
    unit = host.service("llm-stack")
    assert unit.is_running
    assert unit.is_enabled


def test_compose_project_runs_engine(host: Host) -> None:
    out = host.check_output("docker compose --project-directory /opt/llm-stack ps --format json engine")
    states = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [s["State"] for s in states] == ["running"]
    assert states[0]["Health"] == "healthy"


def test_env_file_is_private(host: Host) -> None:
    env = host.file("/opt/llm-stack/engine.env")
    assert env.mode == 0o600
    assert env.user == "root"
    assert f"LLAMACPP_API_KEY={KEY}" in env.content_string


def test_request_without_key_is_refused(host: Host) -> None:
    code = host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' {API}/v1/models")
    assert code == "401"


def test_reports_exist_parse_and_hold_no_secret() -> None:
    runs = sorted(Path(os.environ["LLM_REPORT_DIR"]).iterdir())
    assert runs, "no report run directory"
    for run in runs:  # converge and idempotence each wrote one
        report = json.loads((run / "molecule-bookworm.json").read_text())
        assert report["status"] == "pass"
        assert {c["name"] for c in report["checks"]} >= {"health", "models", "chat", "stream", "auth:without-key"}
        assert [lvl["max_concurrency"] for lvl in report["performance"]["levels"]] == [1, 2]
        assert report["deployment"]["served_model_name"] == MODEL
        assert "| molecule-bookworm | pass |" in (run / "fleet.md").read_text()
        assert (run / "molecule-bookworm.png").read_bytes()[:4] == b"\x89PNG"
        for path in run.iterdir():
            assert KEY.encode() not in path.read_bytes(), f"API key in {path}"


def test_models_lists_alias(host: Host) -> None:
    models = curl_json(host, AUTH, f"{API}/v1/models")
    assert MODEL in [m["id"] for m in models["data"]]


def test_chat_completion_returns_text(host: Host) -> None:
    body = json.dumps({"model": MODEL, "max_tokens": 32, "temperature": 0,
                       "messages": [{"role": "user", "content": "Name a colour."}]})
    reply = curl_json(host, AUTH, "-H 'Content-Type: application/json'", f"-d '{body}'",
                      f"{API}/v1/chat/completions")
    text = reply["choices"][0]["message"]["content"]
    assert text.strip(), reply
    assert reply["usage"]["completion_tokens"] > 0


def test_crashed_engine_comes_back(host: Host) -> None:
    # A crash, not `docker kill`: Docker treats a kill through its API as a manual stop and does
    # not apply the restart policy to it.
    container = host.check_output("docker compose --project-directory /opt/llm-stack ps -q engine")
    pid = host.check_output(f"docker inspect -f '{{{{.State.Pid}}}}' {container}")
    host.check_output(f"kill -9 {pid}")
    health = host.run(f"for i in $(seq 1 60); do curl -sf {API}/health && exit 0; sleep 1; done; exit 1")
    assert health.rc == 0, "engine did not come back after its process was killed (restart policy)"
