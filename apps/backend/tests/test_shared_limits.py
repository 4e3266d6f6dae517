"""A key's limits across a fleet: two backends (as their image runs them) share one real Redis (Debian's package,
scripts/ensure-redis.sh), with a password and persistence, in front of one synthetic SSE engine."""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from backend_fixture import ALICE, BOB, METRICS_AUTH, Backend, auth, poll, running_backend
from helpers import ROOT
from llm_fixture import free_port
from sse_server import Script, serve

REDIS_DIR = ROOT / ".cache/redis"
PASSWORD = "store-password-integration-0123456789"


@dataclass
class Store:
    port: int
    data: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if not (REDIS_DIR / "usr/bin/redis-server").exists():
            pytest.fail("Redis is not unpacked: run scripts/ensure-redis.sh (make test does)")
        self.proc = subprocess.Popen(
            [str(REDIS_DIR / "usr/bin/redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data), "--appendonly", "yes", "--save", "", "--requirepass", PASSWORD],
            env={**os.environ, "LD_LIBRARY_PATH": str(REDIS_DIR / "usr/lib/x86_64-linux-gnu")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=PASSWORD, socket_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        poll(up, 15, "Redis answering")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
            self.proc = None


@dataclass
class Fleet:
    store: Store
    a: Backend
    b: Backend
    closed: Backend
    engine_url: str


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("shared-limits")
    (work / "redis").mkdir()
    store = Store(free_port(), work / "redis")
    store.start()
    server, engine_url = serve(Script(chunks=20, gap_s=0.05))
    try:
        with ExitStack() as stack:
            backends = []
            for name, failure in (("a", "open"), ("b", "open"), ("closed", "closed")):
                (work / name).mkdir()
                backends.append(stack.enter_context(running_backend(
                    work / name, engine_url, LIMITS_URL=store.url, LIMITS_FAILURE=failure, MAX_STREAMS="1")))
            yield Fleet(store, *backends, engine_url)
    finally:
        server.shutdown()
        store.stop()


def chat(stream: bool = True) -> dict:
    return {"model": "scripted-model", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def test_the_store_error_counts_are_exported_at_zero_from_the_start(fleet: Fleet) -> None:
    """Before any failure, so that Prometheus's increase() sees the first one (LLMLimitsStoreUnreachable)."""
    metrics = httpx.get(fleet.b.url + "/metrics", headers=METRICS_AUTH).text
    counted = re.findall(r'^llm_backend_limits_store_errors_total\{operation="(\w+)"\} 0\.0$', metrics, re.M)
    assert sorted(counted) == ["admit", "count", "hit", "release", "usage"], metrics


def test_a_keys_rate_counts_once_across_two_hosts(fleet: Fleet) -> None:
    """bob may send 3 a minute: 2 through one host and 1 through the other use it up on both."""
    codes = [httpx.get(backend.url + "/v1/models", headers=auth(BOB)).status_code
             for backend in (fleet.a, fleet.b, fleet.a)]
    assert codes == [200, 200, 200]
    for backend in (fleet.b, fleet.a):
        refused = httpx.get(backend.url + "/v1/models", headers=auth(BOB))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    print("bob's 3/minute: 3 admitted through two hosts, the 4th and 5th refused on either")


@contextmanager
def stream_in_background(backend: Backend) -> Iterator[threading.Event]:
    """alice's stream (about a second long) on `backend`; the event is set once its first bytes arrived."""
    started, results = threading.Event(), []

    def run() -> None:
        with httpx.stream("POST", backend.url + "/v1/chat/completions", headers=auth(ALICE), json=chat(),
                          timeout=30) as response:
            results.append(response.status_code)
            for _ in response.iter_bytes():
                started.set()
    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield started
    finally:
        thread.join(timeout=30)
        assert results == [200]


def test_a_keys_in_flight_limit_holds_across_hosts_and_a_finished_request_frees_it(fleet: Fleet) -> None:
    """alice may have 1 request in flight (MAX_STREAMS=1): one stream on host a, and host b refuses a second."""
    with stream_in_background(fleet.a) as started:
        assert started.wait(10)
        refused = httpx.post(fleet.b.url + "/v1/chat/completions", headers=auth(ALICE), json=chat(False))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrency_limit_exceeded"
    # The stream ended: its lease is released (in the background) and host b admits alice again.
    poll(lambda: httpx.post(fleet.b.url + "/v1/chat/completions", headers=auth(ALICE),
                            json=chat(False), timeout=30).status_code == 200, 5, "host b admitting alice again")


def ledger(store: Store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "apps/backend/llm_backend.py"), "ledger", *args],
                          env={**os.environ, "LLM_BACKEND_LIMITS_URL": store.url}, capture_output=True, text=True,
                          timeout=30)


def alice_row(store: Store) -> dict[str, str]:
    out = ledger(store, "--csv")
    assert out.returncode == 0, out.stderr
    rows = [row for row in csv.DictReader(io.StringIO(out.stdout)) if row["key_id"] == "alice"]
    assert len(rows) == 1, out.stdout
    return rows[0]


def test_the_usage_ledger_counts_tokens_per_key_and_day_and_survives_a_restart(fleet: Fleet) -> None:
    before = alice_row(fleet.store) if "alice" in ledger(fleet.store, "--csv").stdout else \
        {"requests": "0", "prompt_tokens": "0", "completion_tokens": "0"}
    for backend in (fleet.a, fleet.b):
        with httpx.stream("POST", backend.url + "/v1/chat/completions", headers=auth(ALICE), json=chat(),
                          timeout=30) as response:
            assert response.status_code == 200
            response.read()
    # The synthetic engine's usage event: 7 prompt tokens and 20 completion tokens a stream.
    poll(lambda: int(alice_row(fleet.store)["requests"]) >= int(before["requests"]) + 2, 5, "usage recorded")
    row = alice_row(fleet.store)
    assert int(row["prompt_tokens"]) - int(before["prompt_tokens"]) == 2 * 7
    assert int(row["completion_tokens"]) - int(before["completion_tokens"]) == 2 * 20
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", row["day"])
    table = ledger(fleet.store)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == \
        ["day", "key_id", "requests", "prompt_tokens", "completion_tokens"]
    fleet.store.stop()
    fleet.store.start()
    assert alice_row(fleet.store) == row
    refused = ledger(fleet.store, "--days", "0")
    assert refused.returncode == 2 and "--days: 0 is out of range" in refused.stderr


def test_an_unreachable_store_is_counted_locally_or_refused_as_configured(fleet: Fleet) -> None:
    fleet.store.stop()
    try:
        started = time.monotonic()
        assert httpx.post(fleet.a.url + "/v1/chat/completions", headers=auth(ALICE), json=chat(False),
                          timeout=30).status_code == 200
        closed = httpx.post(fleet.closed.url + "/v1/chat/completions", headers=auth(ALICE), json=chat(False),
                            timeout=30)
        assert closed.status_code == 503 and closed.json()["error"]["code"] == "limits_store_unavailable"
        assert time.monotonic() - started < 10
        metrics = httpx.get(fleet.a.url + "/metrics", headers=METRICS_AUTH).text
        assert re.search(r'^llm_backend_limits_store_errors_total\{operation="admit"\} [1-9]', metrics, re.M)
        # Open: counted on this host meanwhile (alice's limit of 1 in flight still holds on it).
        with stream_in_background(fleet.a) as streaming:
            assert streaming.wait(10)
            assert httpx.post(fleet.a.url + "/v1/chat/completions", headers=auth(ALICE),
                              json=chat(False)).status_code == 429
        out = ledger(fleet.store)
        assert out.returncode == 1 and "did not answer" in out.stderr
    finally:
        fleet.store.start()
    for backend in (fleet.a, fleet.b, fleet.closed):
        assert PASSWORD not in backend.log_path.read_text()
