"""The fleet as a client sees it: its front door on fleet-1 over HTTPS (the lab CA's certificate names fleet-1), a
bounded client load through it, and HAProxy's view of each host (its own metrics, and its runtime API asked on
fleet-1)."""
from __future__ import annotations

import csv
import os
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[3]
CA = Path(os.environ.get("LLM_CACHE_DIR") or ROOT / ".cache") / "lab/tls/ca.pem"
# The scenario's network (molecule.yml): fixed addresses, fleet-1 also the front door and the limits store.
ADDRESS = {"fleet-1": "172.30.77.11", "fleet-2": "172.30.77.12", "fleet-3": "172.30.77.13"}
DOOR = f"https://{ADDRESS['fleet-1']}"
# HAProxy's own metrics (role front_door's metrics frontend: fleet-1's internal address, front_door_metrics_port).
METRICS = f"http://{ADDRESS['fleet-1']}:8405/metrics"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The stack's compose project on each host (llm_stack_dir), as `docker compose` is run there.
COMPOSE = "docker compose --project-directory /opt/llm-stack"
# The name the lab CA's certificate gives the front door, sent as SNI (the client connects to its address).
SNI = {"sni_hostname": "fleet-1"}
CLIENT_KEY = "molecule-fleet-client-key-0123456789"
LIMITED_KEY = "molecule-fleet-limited-key-0123456789"
# HAProxy's runtime API on fleet-1 (the socket is root's): each API server's status and total sessions.
SHOW_STAT = """
import csv, socket
s = socket.socket(socket.AF_UNIX)
s.connect('/var/lib/llm-front-door/admin.sock')
s.sendall(b'show stat\\n')
data = b''
while chunk := s.recv(65536):
    data += chunk
print(data.decode().lstrip('# '))
"""


def on(host: str, command: str, timeout: float = 120) -> str:
    done = subprocess.run(["docker", "exec", host, "bash", "-c", command], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{host}: {command}: {done.stderr}"
    return done.stdout.strip()


def servers() -> dict[str, dict[str, str]]:
    """Each server of the front door's API backend: its HAProxy status (UP, DOWN, DRAIN, ...) and counters, from the
    runtime API (`show stat`)."""
    out = subprocess.run(["docker", "exec", "fleet-1", "python3", "-c", SHOW_STAT], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return {row["svname"]: row for row in csv.DictReader(out.splitlines())
            if row["pxname"] == "api" and row["svname"] not in ("FRONTEND", "BACKEND")}


def states() -> dict[str, str]:
    """Each API server's state (UP, DOWN, DRAIN, MAINT, ...) from HAProxy's own metrics on fleet-1's internal
    address: an HTTP request, not a `docker exec` (the load's poller asks every second, on 2 shared cores)."""
    text = httpx.get(METRICS, timeout=10).raise_for_status().text
    return {sample.labels["server"]: sample.labels["state"]
            for family in text_string_to_metric_families(text) if family.name == "haproxy_server_status"
            for sample in family.samples if sample.labels.get("proxy") == "api" and sample.value == 1}


def wait_all_up(timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := states()) != dict.fromkeys(ADDRESS, "UP"):
        assert time.monotonic() < deadline, seen
        time.sleep(1)


def door_client(timeout_s: float = 120) -> httpx.Client:
    """HTTPS to the front door's address, checked against the lab CA for the name fleet-1 (sni_hostname)."""
    return httpx.Client(base_url=DOOR, verify=ssl.create_default_context(cafile=str(CA)), timeout=timeout_s,
                        headers={"Host": "fleet-1"})


def door_request(client: httpx.Client, method: str, path: str, **kwargs: object) -> httpx.Response:
    return client.request(method, path, extensions=SNI, **kwargs)


@dataclass
class Result:
    started: float
    ok: bool
    detail: str


@dataclass
class Load:
    """`clients` threads, each sending streamed chat completions through the front door one after another (a short
    pause between them: a bounded load on 2 shared cores) until stopped; a request passes when it gets 200 and its
    stream ends with [DONE] after at least one token. A poller beside them records what HAProxy says of each host."""
    clients: int = 2
    max_tokens: int = 8
    pause_s: float = 0.2
    results: list[Result] = field(default_factory=list)
    seen: dict[str, set[str]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def one(self, client: httpx.Client) -> Result:
        body = {"model": MODEL, "stream": True, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": "안녕하세요! 한 문장으로 자기소개를 해 주세요."}]}
        started = time.monotonic()
        try:
            with client.stream("POST", "/v1/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                               extensions=SNI) as response:
                events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
            ok = response.status_code == 200 and len(events) >= 2 and events[-1] == "[DONE]" \
                and not any('"error"' in event for event in events)
            detail = f"{response.status_code} {events[-1][:200] if events else ''}"
        except httpx.HTTPError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        return Result(started, ok, detail)

    def client_loop(self) -> None:
        with door_client() as client:
            while not self.stop.is_set():
                self.results.append(self.one(client))
                self.stop.wait(self.pause_s)

    def poll_loop(self) -> None:
        while not self.stop.is_set():
            for name, state in states().items():
                self.seen.setdefault(name, set()).add(state)
            self.stop.wait(1)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.client_loop) for _ in range(self.clients)]
        self.threads.append(threading.Thread(target=self.poll_loop))
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

