"""Verify a converged lab host: the unit runs the compose project (engine, backend API, chat UI) and all three
really serve."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from testinfra.host import Host

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
API = "http://127.0.0.1:8000"
KEY = os.environ["LLM_API_KEY"]
AUTH = f"-H 'Authorization: Bearer {KEY}'"
BACKEND = "http://127.0.0.1:8080"
BACKEND_KEY = os.environ["LLM_BACKEND_API_KEY"]
BACKEND_AUTH = f"-H 'Authorization: Bearer {BACKEND_KEY}'"
UI = "http://127.0.0.1:8501"
STACK = "docker compose --project-directory /opt/llm-stack"


def curl_json(host: Host, *args: str) -> dict:
    cmd = host.run("curl -sS --max-time 60 " + " ".join(args))
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def test_unit_is_active_and_enabled(host: Host) -> None:
    unit = host.service("llm-stack")
    assert unit.is_running
    assert unit.is_enabled


def test_compose_project_runs_engine_backend_and_chat_ui_healthy(host: Host) -> None:
    out = host.check_output(f"{STACK} ps --format json")
    states = {s["Service"]: s for s in (json.loads(line) for line in out.splitlines() if line.strip())}
    # With monitoring on (the lab's default): node exporter, and the SIMULATED DCGM exporter (host_vars), which have
    # no health check of their own (Prometheus's `up` is theirs).
    assert sorted(states) == ["backend", "dcgm-exporter", "engine", "frontend", "node-exporter"]
    for service in states.values():
        health = "" if service["Service"].endswith("-exporter") else "healthy"
        assert (service["Service"], service["State"], service["Health"]) == (service["Service"], "running", health)


def test_apps_run_as_an_unprivileged_user(host: Host) -> None:
    for service in ("backend", "frontend"):
        assert host.check_output(f"{STACK} exec -T {service} id -u") == "10001"


def test_backend_keeps_key_hashes_only(host: Host) -> None:
    keys = host.file("/opt/llm-stack/apps/backend-keys/keys.json")
    assert (keys.mode, keys.user, keys.gid) == (0o640, "root", 10001)
    entries = json.loads(keys.content_string)["keys"]
    assert {"id": "lab-user", "sha256": hashlib.sha256(BACKEND_KEY.encode()).hexdigest()} in entries
    assert BACKEND_KEY not in keys.content_string
    assert host.file("/opt/llm-stack/backend.env").mode == 0o600
    assert host.file("/opt/llm-stack/frontend.env").mode == 0o600


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
    for run in runs:  # converge, the side effect's repair run and idempotence each wrote one (check mode writes none)
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


def test_backend_refuses_a_request_without_a_key_as_openai_does(host: Host) -> None:
    cmd = host.run(f"curl -s -w '\\n%{{http_code}}' {BACKEND}/v1/models")
    body, code = cmd.stdout.rsplit("\n", 1)
    assert code == "401"
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


def test_backend_streams_a_korean_answer_with_usage(host: Host) -> None:
    body = json.dumps({"model": MODEL, "max_tokens": 24, "temperature": 0, "stream": True,
                       "messages": [{"role": "user", "content": "한국의 수도는 어디입니까?"}]}, ensure_ascii=False)
    cmd = host.run(f"curl -sS -N --max-time 120 {BACKEND_AUTH} -H 'Content-Type: application/json' "
                   f"-d '{body}' {BACKEND}/v1/chat/completions")
    assert cmd.rc == 0, cmd.stderr
    events = [line[5:].strip() for line in cmd.stdout.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert text.strip(), cmd.stdout
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_backend_access_log_has_the_request_but_no_prompt_or_key(host: Host) -> None:
    logs = host.check_output(f"{STACK} logs --no-color backend")
    assert '"key_id": "lab-user"' in logs or '"key_id":"lab-user"' in logs
    assert "한국의 수도" not in logs
    assert BACKEND_KEY not in logs


def test_backend_metrics_count_the_requests(host: Host) -> None:
    # /metrics asks for the metrics token, by default the engine's key; without it every key's usage is hidden.
    assert host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' {BACKEND}/metrics") == "401"
    metrics = host.check_output(f"curl -sS {AUTH} {BACKEND}/metrics")
    assert 'key_id="lab-user"' in metrics


def test_chat_ui_serves_its_page_and_health(host: Host) -> None:
    assert host.check_output(f"curl -sS {UI}/_stcore/health") == "ok"
    assert "<html" in host.check_output(f"curl -sS {UI}/").lower()


def test_report_lists_the_three_endpoints_and_the_app_checks() -> None:
    run = sorted(Path(os.environ["LLM_REPORT_DIR"]).iterdir())[-1]
    report = json.loads((run / "molecule-bookworm.json").read_text())
    assert [e["name"] for e in report["endpoints"]] == ["engine", "backend", "frontend"]
    assert {c["name"] for c in report["checks"] if c["passed"]} >= {
        "backend:health", "backend:without-key", "backend:stream", "backend:rate-limit", "backend:metrics",
        "frontend:health", "frontend:page"}
    for path in run.iterdir():
        assert BACKEND_KEY.encode() not in path.read_bytes(), f"backend key in {path}"


def test_release_is_current_known_good_and_records_its_images_and_benchmark(host: Host) -> None:
    current = host.file("/opt/llm-stack/current")
    assert current.is_symlink and current.linked_to.startswith("/opt/llm-stack/releases/")
    compose = host.file("/opt/llm-stack/docker-compose.yml")
    assert compose.is_symlink and compose.linked_to == current.linked_to + "/docker-compose.yml"
    release_dir = current.linked_to
    release = json.loads(host.file(f"{release_dir}/release.json").content_string)
    assert release["id"] == release_dir.rsplit("/", 1)[1]
    # Every service's image is on the host under the id recorded (locally built images keep their content tag).
    for service, image in release["images"].items():
        assert image["id"].startswith("sha256:"), (service, image)
        assert host.check_output(f"docker image inspect -f '{{{{.Id}}}}' {image['pinned']}") == image["id"]
    running = host.check_output(f"{STACK} ps --format '{{{{.Service}}}} {{{{.Image}}}}'").splitlines()
    assert sorted(running) == sorted(f"{s} {i['pinned']}" for s, i in release["images"].items())
    assert {e["path"] for e in release["env_files"]} == {"engine.env", "backend.env", "frontend.env"}
    assert KEY not in host.file(f"{release_dir}/release.json").content_string
    assert host.file(f"{release_dir}/good").exists
    bench = json.loads(host.file(f"{release_dir}/benchmark.json").content_string)
    assert bench["release"] == release["id"] and bench["passed"] and bench["levels"]


def test_the_second_run_sent_no_benchmark_and_reported_the_last_figures(host: Host) -> None:
    # The newest report is side_effect.yml's repair run's (check mode writes none; the idempotence run found the host
    # unchanged and wrote none): release unchanged, benchmark not run, the converge's figures shown instead.
    runs = sorted(Path(os.environ["LLM_REPORT_DIR"]).iterdir())
    assert len(runs) >= 2
    first = json.loads((runs[0] / "molecule-bookworm.json").read_text())
    last = json.loads((runs[-1] / "molecule-bookworm.json").read_text())
    assert first["performance"]["measured"] is True
    assert last["performance"]["measured"] is False
    assert "unchanged since its benchmark" in last["performance"]["note"]
    assert last["performance"]["levels"] == first["performance"]["levels"]
    assert last["release"]["id"] == first["release"]["id"]
    bench = json.loads(host.file(f"/opt/llm-stack/releases/{last['release']['id']}/benchmark.json").content_string)
    assert bench["levels"] == first["performance"]["levels"]


def test_the_run_lock_was_released(host: Host) -> None:
    assert not host.file("/var/lib/llm-endpoints/run.lock").exists
    assert host.file("/var/lib/llm-endpoints").is_directory


# Last: it restarts the engine (the tests above need it serving; this one waits until it serves again).
def test_a_hung_engine_is_restarted_by_the_watchdog_within_60_s(host: Host) -> None:
    assert host.service("llm-stack-watchdog.timer").is_running
    container = host.check_output(f"{STACK} ps -q engine")
    # A hung engine is one that was healthy. An engine restarted a moment ago (the crash test above) is still in its
    # health check's start period, in which Docker does not count failed probes (Dockerfile reference, HEALTHCHECK:
    # "probe failure during that period will not be counted towards the maximum number of retries"): wait until
    # Docker reports it healthy, as it does within seconds of serving.
    status = f"docker inspect -f '{{{{.State.Health.Status}}}}' {container}"
    healthy = host.run(f"for i in $(seq 1 90); do [ \"$({status})\" = healthy ] && exit 0; sleep 1; done; exit 1")
    assert healthy.rc == 0, "the engine's health check did not pass within 90 s"
    started = host.check_output(f"docker inspect -f '{{{{.State.StartedAt}}}}' {container}")
    # Freeze the engine's process tree (SIGSTOP): alive, but /health unanswered. Docker's restart policy does
    # nothing for a running container; the watchdog must. Only the engine's own processes: a health probe that
    # Docker runs in the container at that moment is not part of a hung engine (freezing one stalls Docker's
    # health checker for about 25 s).
    main = host.check_output(f"docker inspect -f '{{{{.State.Pid}}}}' {container}")
    pids = host.check_output(
        "tree() { echo $1; for c in $(cat /proc/$1/task/*/children 2>/dev/null); do tree $c; done; }; "
        f"tree {main}").split()
    assert main in pids
    host.check_output(f"kill -STOP {' '.join(pids)}")
    waited = host.run(
        f"t0=$(date +%s); while [ $(( $(date +%s) - t0 )) -le 90 ]; do "
        f"s=$(docker inspect -f '{{{{.State.StartedAt}}}}' {container}); "
        f"[ \"$s\" != '{started}' ] && {{ echo $(( $(date +%s) - t0 )); exit 0; }}; sleep 1; done; exit 1")
    diagnosis = host.run(f"docker inspect -f '{{{{json .State.Health}}}}' {container}; "
                         "journalctl -u llm-stack-watchdog.service --no-pager -o short-precise | tail -20").stdout
    assert waited.rc == 0, f"the frozen engine was not restarted within 90 s: {diagnosis}"
    seconds = int(waited.stdout.strip())
    assert seconds <= 60, f"restarted after {seconds} s (goal: within 60 s): {diagnosis}"
    name = host.check_output(f"docker inspect -f '{{{{.Name}}}}' {container}").lstrip("/")
    log = host.check_output("journalctl -u llm-stack-watchdog.service --no-pager")
    assert f"{name}: health check failing, restarting it" in log
    health = host.run(f"for i in $(seq 1 90); do curl -sf {API}/health && exit 0; sleep 1; done; exit 1")
    assert health.rc == 0, "engine did not serve again after the watchdog restarted it"
