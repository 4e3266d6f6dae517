"""The hostile and sloppy clients of tests/hostile_client.py against the lab's running backend, from inside the lab
host (the script is standard library only): refusals that name the field, idle and trickling sockets closed after
the header timeout (10 s by default), requests back to back with no failure, the Responses API through to the
engine; then the backend's log holds no traceback and a line for the client's broken model name."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from testinfra.host import Host

SCRIPT = Path(__file__).resolve().parents[3] / "tests/hostile_client.py"
BACKEND_KEY = os.environ["LLM_BACKEND_API_KEY"]
STACK = "docker compose --project-directory /opt/llm-stack"


def test_hostile_clients_get_clear_answers_from_the_lab_backend(host: Host) -> None:
    # lab-user's key allows 60 requests a minute, shared with the other verify tests: 20 back to back.
    cmd = host.run("python3 -c " + shlex.quote(SCRIPT.read_text()) + " http://127.0.0.1:8080 "
                   + shlex.quote(BACKEND_KEY) + " --model HuggingFaceTB/SmolLM2-135M-Instruct --back-to-back 20")
    results = [json.loads(line) for line in cmd.stdout.splitlines() if line.startswith("{")]
    assert cmd.rc == 0 and results and all(r["ok"] for r in results), cmd.stdout + cmd.stderr
    logs = host.check_output(f"{STACK} logs --no-color backend")
    assert "Traceback" not in logs
    assert '"model": "?-hostile"' in logs
    assert BACKEND_KEY not in logs
