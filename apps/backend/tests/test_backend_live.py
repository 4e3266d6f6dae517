"""The backend gateway run as its image runs it (`python apps/backend/llm_backend.py`, configured by environment),
in front of the real llama.cpp engine, the synthetic SSE server, or nothing at all."""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx
import pytest
from backend_fixture import ALICE, BOB, KOREAN_PROMPT, METRICS_AUTH, ROOT, Backend, auth, poll, running_backend
from llm_fixture import Engine, free_port
from sse_server import Script, serve


@pytest.fixture(scope="module")
def backend(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with running_backend(tmp_path_factory.mktemp("backend"), engine.url, engine.api_key) as running:
        yield running



def chat(engine: Engine, content: str, stream: bool = True, max_tokens: int = 12) -> dict:
    return {"model": engine.model, "messages": [{"role": "user", "content": content}], "stream": stream,
            "max_tokens": max_tokens, "temperature": 0}


def sse_payloads(body: bytes) -> list[bytes]:
    """The data of each SSE event; every event must be exactly one `data: ` line."""
    assert body.endswith(b"\n\n"), body[-200:]
    events = body[:-2].split(b"\n\n")
    assert all(event.startswith(b"data: ") and b"\n" not in event for event in events), events
    return [event[len(b"data: "):] for event in events]


def stream_text(payloads: list[bytes]) -> str:
    return "".join(choice["delta"].get("content") or "" for payload in payloads[:-1]
                   for choice in json.loads(payload)["choices"])


def test_requests_without_a_valid_key_are_401(backend: Backend, engine: Engine) -> None:
    for headers in ({}, auth("sk-wrong-key-0123456789abcdef"), {"Authorization": ALICE}):
        for response in (httpx.get(backend.url + "/v1/models", headers=headers),
                         httpx.post(backend.url + "/v1/chat/completions", headers=headers, json=chat(engine, "hi"))):
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.json()["error"]["type"] == "invalid_request_error"


def test_models_are_the_engines(backend: Backend, engine: Engine) -> None:
    response = httpx.get(backend.url + "/v1/models", headers=auth(ALICE))
    assert response.status_code == 200
    assert engine.model in [model["id"] for model in response.json()["data"]]


def test_past_the_rate_limit_is_429(backend: Backend) -> None:
    statuses = [httpx.get(backend.url + "/v1/models", headers=auth(BOB)) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    refused = statuses[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert httpx.get(backend.url + "/v1/models", headers=auth(ALICE)).status_code == 200  # bob's limit only


def test_streamed_chat_is_well_formed_and_ends_with_usage_and_done(backend: Backend, engine: Engine) -> None:
    with httpx.stream("POST", backend.url + "/v1/chat/completions", headers=auth(ALICE),
                      json=chat(engine, "Name three colours."), timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read()
    payloads = sse_payloads(body)
    assert payloads[-1] == b"[DONE]"
    events = [json.loads(payload) for payload in payloads[:-1]]
    usage = events[-1]["usage"]  # asked for by the gateway, passed on to the client
    assert events[-1]["choices"] == [] and usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 12
    assert all(event["object"] == "chat.completion.chunk" and event["choices"] for event in events[:-1])
    assert stream_text(payloads).strip()


def test_korean_prompt_streams_text(backend: Backend, engine: Engine) -> None:
    with httpx.stream("POST", backend.url + "/v1/chat/completions", headers=auth(ALICE),
                      json=chat(engine, KOREAN_PROMPT, max_tokens=24), timeout=60) as response:
        assert response.status_code == 200
        text = stream_text(sse_payloads(response.read()))
    assert text.strip()
    logged = backend.log_path.read_text()
    assert KOREAN_PROMPT not in logged and text.strip() not in logged and ALICE not in logged


def test_metrics_and_access_log_record_requests_and_tokens(backend: Backend, engine: Engine) -> None:
    response = httpx.post(backend.url + "/v1/chat/completions", headers=auth(ALICE),
                          json=chat(engine, "Say hello.", stream=False), timeout=60)
    assert response.status_code == 200
    usage = response.json()["usage"]
    metrics = httpx.get(backend.url + "/metrics", headers=METRICS_AUTH).text
    assert re.search(r'^llm_backend_requests_total\{key_id="alice",route="/v1/chat/completions",status="200"\} '
                     r'[1-9]', metrics, re.M)
    for kind in ("prompt", "completion"):
        found = re.search(rf'^llm_backend_tokens_total\{{key_id="alice",model="{re.escape(engine.model)}",'
                          rf'type="{kind}"\}} (\S+)$', metrics, re.M)
        assert found and float(found.group(1)) >= usage[f"{kind}_tokens"] > 0
    # This test's own request (not streamed): the test passes alone too.
    assert re.search(r'^llm_backend_time_to_first_byte_seconds_count\{route="/v1/chat/completions",stream="false"\} '
                     r'[1-9]', metrics, re.M)
    assert "sk-" not in metrics
    line = poll(lambda: [x for x in backend.access_lines() if x["stream"] is False and x["status"] == 200
                         and x["path"] == "/v1/chat/completions"], 5, "the access log line")[-1]
    assert (line["key_id"], line["method"], line["model"], line["client"]) == \
        ("alice", "POST", engine.model, "127.0.0.1")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert 0 < line["ttfb_ms"] <= line["latency_ms"]


def test_health_follows_the_engine(backend: Backend) -> None:
    response = httpx.get(backend.url + "/health")
    assert response.status_code == 200 and response.json() == {"status": "ok", "engine": "ok"}


def test_engine_refusing_the_gateways_key_is_503(engine: Engine, tmp_path: Path) -> None:
    with running_backend(tmp_path, engine.url, "not-the-engine-key") as gateway:
        response = httpx.post(gateway.url + "/v1/chat/completions", headers=auth(ALICE), json=chat(engine, "hi"))
    assert response.status_code == 503
    assert "LLM_BACKEND_UPSTREAM_API_KEY" in response.json()["error"]["message"]


def test_closed_engine_port_is_503_at_once(engine: Engine, tmp_path: Path) -> None:
    with running_backend(tmp_path, f"http://127.0.0.1:{free_port()}", CONNECT_TIMEOUT_S="2") as gateway:
        started = time.monotonic()
        health = httpx.get(gateway.url + "/health", timeout=10)
        response = httpx.post(gateway.url + "/v1/chat/completions", headers=auth(ALICE), json=chat(engine, "hi"),
                              timeout=10)
        elapsed = time.monotonic() - started
    assert health.status_code == 503 and health.json()["error"]["code"] == "engine_unavailable"
    assert response.status_code == 503 and response.json()["error"]["type"] == "server_error"
    assert elapsed < 3


def test_silent_engine_is_503_within_the_timeouts(engine: Engine, tmp_path: Path) -> None:
    """An engine that accepts connections and never answers: bounded by the health and read timeouts."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent, \
            running_backend(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}", HEALTH_TIMEOUT_S="1",
                            READ_TIMEOUT_S="1.5") as gateway:
        started = time.monotonic()
        health = httpx.get(gateway.url + "/health", timeout=10)
        health_s = time.monotonic() - started
        response = httpx.post(gateway.url + "/v1/chat/completions", headers=auth(ALICE), json=chat(engine, "hi"),
                              timeout=10)
        chat_s = time.monotonic() - started - health_s
    assert health.status_code == 503 and "within 1 s" in health.json()["error"]["message"]
    assert 0.9 < health_s < 3
    assert response.status_code == 503 and "sent nothing for 1.5 s" in response.json()["error"]["message"]
    assert 1.4 < chat_s < 4


class RecordingProxy:
    """A TCP proxy in front of the engine that keeps, per connection, the bytes each side sent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[tuple[bytearray, bytearray]] = []  # (to the engine, from the engine)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            sent, received = bytearray(), bytearray()
            self.connections.append((sent, received))
            threading.Thread(target=self.pump, args=(client, upstream, sent), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, received), daemon=True).start()

    @staticmethod
    def pump(source: socket.socket, target: socket.socket, record: bytearray) -> None:
        try:
            while data := source.recv(65536):
                record += data
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def response_body(raw: bytes) -> tuple[int, bytes]:
    """The status and body (de-chunked) of the one HTTP/1.1 response in `raw`, as h11 reads it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/v1/chat/completions",
                          headers=[("Host", "engine"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    status, body = 0, bytearray()
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)
        else:
            raise AssertionError(f"incomplete response: {event!r}")


def test_stream_passes_the_engines_bytes_exactly(engine: Engine, tmp_path: Path) -> None:
    proxy = RecordingProxy(engine.port)
    try:
        with running_backend(tmp_path, f"http://127.0.0.1:{proxy.port}", engine.api_key) as gateway:
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=auth(ALICE),
                              json=chat(engine, "Count to five.", max_tokens=16), timeout=60) as response:
                assert response.status_code == 200
                received = b"".join(response.iter_raw())
    finally:
        proxy.close()
    # /metrics polling never reaches the engine; the gateway's own GET /v1/models (the ids it takes as the
    # metrics' model label) may come on a connection of its own, beside the chat completion's.
    chats = [(out, back) for out, back in proxy.connections if not out.startswith(b"GET /v1/models ")]
    [(sent, from_engine)] = chats
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    status, engine_body = response_body(bytes(from_engine))
    assert status == 200
    assert received == engine_body
    assert engine_body.endswith(b"data: [DONE]\n\n") and b'"usage"' in engine_body


def test_client_disconnect_stops_the_engine_stream(tmp_path: Path) -> None:
    script = Script(ttft_s=0.05, gap_s=0.05, chunks=200)  # 10 s of stream
    server, url = serve(script)
    try:
        with running_backend(tmp_path, url) as gateway:
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=auth(ALICE),
                              json={"model": "m", "messages": [], "stream": True}, timeout=10) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert sum(1 for _, line in zip(range(6), lines, strict=False) if line.startswith("data: ")) == 3
            closed_at = time.monotonic()
            [stream] = poll(lambda: [s for s in server.streams if s.ended], 5, "the engine's stream ending")
            assert stream.peer_closed
            assert stream.ended - closed_at < 1.0
            assert stream.ended - stream.started < 2.0
            line = poll(lambda: [x for x in gateway.access_lines() if x["path"] == "/v1/chat/completions"], 5,
                        "the access log line")[0]
            assert (line["status"], line["error"], line["stream"]) == (200, "client_disconnected", True)
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------ hostile and sloppy clients (issue 24)
def test_hostile_cases_and_back_to_back_requests_against_the_real_engine(engine: Engine, tmp_path: Path) -> None:
    """tests/hostile_client.py (also run inside the lab host by molecule default) against a backend in front of
    the real llama.cpp server: idle and trickling sockets closed after the header timeout, refusals that name the
    field, and 300 requests one after the other on two connections with no failure (a pooled connection the
    engine closed is sent again, once). Then the connection cap, from another address, with /health answering."""
    with running_backend(tmp_path, engine.url, engine.api_key, HEADER_TIMEOUT_S="1", MAX_CONNECTIONS="16") as gw:
        run = subprocess.run([sys.executable, str(ROOT / "tests/hostile_client.py"), gw.url, ALICE, "--model",
                              engine.model, "--header-timeout", "1", "--back-to-back", "300"],
                             capture_output=True, text=True, timeout=600)
        results = {line["case"]: line for line in map(json.loads, run.stdout.splitlines())}
        assert run.returncode == 0 and all(r["ok"] for r in results.values()), run.stdout + run.stderr
        assert set(results) >= {"metrics_need_a_token", "stream_not_a_boolean", "deeply_nested_json", "caps",
                                "lone_surrogate_model", "idle_and_slow_connections_are_closed", "back_to_back",
                                "responses_api"}
        # Past the cap of 16, connections from another address are closed at once; the healthcheck's own
        # (loopback) still gets its answer.
        crowd = []
        for _ in range(40):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
            crowd.append(sock)
        try:
            health = httpx.get(gw.url + "/health", timeout=3)
            closed = 0
            for sock in crowd:
                sock.settimeout(0.5)
                try:
                    closed += sock.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
                except TimeoutError:
                    pass
        finally:
            for sock in crowd:
                sock.close()
        assert health.status_code == 200
        assert 24 <= closed <= 40
        metrics = httpx.get(gw.url + "/metrics", headers=METRICS_AUTH).text
        assert re.search(r'^llm_backend_connections_closed_total\{reason="connection_limit"\} (2[4-9]|3[0-9]|40)',
                         metrics, re.M), metrics
        assert re.search(r'^llm_backend_connections_closed_total\{reason="header_timeout"\} [1-9]', metrics, re.M)
        logged = gw.log_path.read_text()
        assert "Traceback" not in logged and '"model": "?-hostile"' in logged
        access = gw.access_lines()
        assert len([x for x in access if x["path"] == "/v1/chat/completions" and x["status"] == 200]) >= 300
        assert not [x for x in access if x["status"] >= 500]


def test_the_openai_client_drives_the_responses_api_through_the_backend(backend: Backend, engine: Engine) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=backend.url + "/v1", api_key=ALICE, max_retries=0)
    response = client.responses.create(model=engine.model, input="Name a colour.", max_output_tokens=8)
    assert response.output_text.strip() and response.usage.output_tokens > 0
    # Streamed: the raw events (the SDK's accumulating helper trips over llama.cpp's `"output": null` in its
    # response.created event, an engine quirk the gateway passes on unchanged).
    events = list(client.responses.create(model=engine.model, input="Say hi.", max_output_tokens=6, stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.usage.input_tokens > 0
    completion = client.completions.create(model=engine.model, prompt="One, two,", max_tokens=3)
    assert completion.usage.completion_tokens > 0
    metrics = httpx.get(backend.url + "/metrics", headers=METRICS_AUTH).text
    assert re.search(r'^llm_backend_requests_total\{key_id="alice",route="/v1/responses",status="200"\} [2-9]',
                     metrics, re.M)


def test_keys_are_reloaded_on_sighup_and_a_disabled_key_is_refused(engine: Engine, tmp_path: Path) -> None:
    carol = "sk-carol-integration-0123456789abcdef0"
    with running_backend(tmp_path, engine.url, engine.api_key) as gw:
        keys = tmp_path / "keys.json"
        document = json.loads(keys.read_text())
        document["keys"][0]["enabled"] = False
        document["keys"].append({"id": "carol", "sha256": hashlib.sha256(carol.encode()).hexdigest()})
        keys.write_text(json.dumps(document))
        gw.proc.send_signal(signal.SIGHUP)
        poll(lambda: httpx.get(gw.url + "/v1/models", headers=auth(carol)).status_code == 200, 5, "carol admitted")
        refused = httpx.get(gw.url + "/v1/models", headers=auth(ALICE))
        assert refused.status_code == 401 and "disabled" in refused.json()["error"]["message"]
        assert gw.proc.poll() is None


def test_a_descriptor_limit_below_the_connection_cap_is_a_configuration_error(engine: Engine, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"id": "alice", "sha256": hashlib.sha256(ALICE.encode()).hexdigest()}]}))
    env = dict(os.environ, LLM_BACKEND_UPSTREAM_URL=engine.url, LLM_BACKEND_KEYS_FILE=str(keys),
               LLM_BACKEND_MAX_CONNECTIONS="1000", LLM_BACKEND_PORT=str(free_port()))
    run = subprocess.run([sys.executable, str(ROOT / "apps/backend/llm_backend.py")], env=env, capture_output=True,
                         text=True, timeout=60,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    assert run.returncode == 1
    assert "LLM_BACKEND_MAX_CONNECTIONS: 1000 connections need 2064 file descriptors" in run.stderr
