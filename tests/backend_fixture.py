"""The backend run as its image runs it (`python apps/backend/llm_backend.py`, configured by environment), for the
tests that put it in front of an engine: its own (apps/backend/tests), the shared limits' and the front door's."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from helpers import ROOT
from llm_fixture import free_port

ALICE = "sk-alice-integration-0123456789abcdef0123"
BOB = "sk-bob-integration-0123456789abcdef01234"
KOREAN_PROMPT = "한국의 수도는 어디입니까?"
METRICS_TOKEN = "metrics-token-integration-0123456789"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@dataclass
class Backend:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def access_lines(self) -> list[dict]:
        return [line for line in self.log_lines() if "key_id" in line]


def poll(check: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


@contextmanager
def running_backend(tmp_path: Path, upstream: str, upstream_key: str = "", **settings: str) -> Iterator[Backend]:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [
        {"id": "alice", "sha256": hashlib.sha256(ALICE.encode()).hexdigest()},
        {"id": "bob", "sha256": hashlib.sha256(BOB.encode()).hexdigest(), "rate_limit": "3/minute"}]}))
    port = free_port()
    env = dict(os.environ, LLM_BACKEND_UPSTREAM_URL=upstream, LLM_BACKEND_UPSTREAM_API_KEY=upstream_key,
               LLM_BACKEND_KEYS_FILE=str(keys), LLM_BACKEND_HOST="127.0.0.1", LLM_BACKEND_PORT=str(port),
               LLM_BACKEND_RATE_LIMIT="1000/minute", LLM_BACKEND_METRICS_TOKEN=METRICS_TOKEN)
    env.update({f"LLM_BACKEND_{name}": value for name, value in settings.items()})
    log_path = tmp_path / f"backend-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "apps/backend/llm_backend.py")], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    backend = Backend(f"http://127.0.0.1:{port}", proc, log_path)

    def listening() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return httpx.get(backend.url + "/metrics", headers=METRICS_AUTH, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        poll(listening, 30, "the backend listening")
        yield backend
    finally:
        proc.terminate()
        proc.wait(timeout=15)



def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
