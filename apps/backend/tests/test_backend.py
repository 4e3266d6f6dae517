"""The backend gateway (apps/backend/gateway/) as an ASGI app, with a scripted engine behind it."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
from gateway import app as gw_app
from gateway import limits as gw_limits
from gateway import logs as gw_logs
from gateway import proxy as gw_proxy
from gateway import settings as gw_settings
from helpers import ROOT

ALICE = "sk-alice-unit-test-key-0123456789abcdef"
BOB = "sk-bob-unit-test-key-0123456789abcdef"
CAROL = "sk-carol-unit-test-key-0123456789abcdef"
PROMPT = "SECRET-PROMPT-TEXT do not log"
REPLY = "SECRET-REPLY-TEXT"
MODEL = "engine-model"
METRICS_TOKEN = "metrics-token-unit-0123456789"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_keys(path: Path, entries: list[dict] | None = None) -> Path:
    entries = entries if entries is not None else [
        {"id": "alice", "sha256": sha(ALICE)},
        {"id": "bob", "sha256": sha(BOB), "rate_limit": "3/minute"},
        {"id": "carol", "sha256": sha(CAROL), "max_streams": 1},
    ]
    path.write_text(json.dumps({"keys": entries}))
    return path


def env_for(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {"LLM_BACKEND_UPSTREAM_URL": "http://engine:8000",
           "LLM_BACKEND_KEYS_FILE": str(write_keys(tmp_path / "keys.json"))}
    env.update({f"LLM_BACKEND_{name}": value for name, value in overrides.items()})
    return env


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(gw_settings.ConfigError) as caught:
        gw_settings.settings_from_env(env)
    return str(caught.value)


# ------------------------------------------------------------------------------------------------ configuration
def test_defaults(tmp_path: Path) -> None:
    settings = gw_settings.settings_from_env(env_for(tmp_path))
    assert (settings.upstream_url, settings.upstream_api_key, settings.rate_limit, settings.max_streams) == \
        ("http://engine:8000", "", "60/minute", 4)
    assert (settings.connect_timeout_s, settings.read_timeout_s, settings.health_timeout_s) == (3.0, 300.0, 2.0)
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 8080, "info")
    alice, bob, carol = settings.keys
    assert (alice.id, alice.digest, alice.rate_limit, alice.windows, alice.max_streams) == \
        ("alice", hashlib.sha256(ALICE.encode()).digest(), "60/minute", ((60, 60),), 4)
    assert (bob.windows, bob.max_streams) == (((3, 60),), 4)
    assert carol.max_streams == 1


@pytest.mark.parametrize(("overrides", "variable", "fragment"), [
    ({"UPSTREAM_URL": ""}, "LLM_BACKEND_UPSTREAM_URL", "is required"),
    ({"UPSTREAM_URL": "engine:8000"}, "LLM_BACKEND_UPSTREAM_URL", "not an http(s) URL"),
    ({"UPSTREAM_URL": "ftp://engine"}, "LLM_BACKEND_UPSTREAM_URL", "not an http(s) URL"),
    ({"UPSTREAM_URL": "http://engine:8000/v1"}, "LLM_BACKEND_UPSTREAM_URL", "without /v1"),
    ({"UPSTREAM_URL": "http://engine:99999"}, "LLM_BACKEND_UPSTREAM_URL", "invalid port"),
    ({"UPSTREAM_URL": "http://user:pw@engine"}, "LLM_BACKEND_UPSTREAM_URL", "no query, fragment or credentials"),
    ({"UPSTREAM_API_KEY": "has space"}, "LLM_BACKEND_UPSTREAM_API_KEY", "printable ASCII"),
    ({"KEYS_FILE": ""}, "LLM_BACKEND_KEYS_FILE", "is required"),
    ({"LIMITS_URL": "http://store:6379"}, "LLM_BACKEND_LIMITS_URL", "scheme must be redis, rediss or unix"),
    ({"LIMITS_URL": "redis://:secret-pw@/0"}, "LLM_BACKEND_LIMITS_URL", "needs a host"),
    ({"LIMITS_URL": "redis://:secret pw@store:6379"}, "LLM_BACKEND_LIMITS_URL", "spaces and control characters"),
    ({"LIMITS_URL": "redis://store:99999"}, "LLM_BACKEND_LIMITS_URL", "not a URL"),
    ({"LIMITS_URL": "unix://relative.sock"}, "LLM_BACKEND_LIMITS_URL", "absolute socket path"),
    ({"LIMITS_FAILURE": "maybe"}, "LLM_BACKEND_LIMITS_FAILURE", "is not open"),
    ({"LIMITS_TIMEOUT_S": "0"}, "LLM_BACKEND_LIMITS_TIMEOUT_S", "out of range"),
    ({"KEYS_FILE": "/nonexistent/keys.json"}, "LLM_BACKEND_KEYS_FILE", "cannot read /nonexistent/keys.json"),
    ({"RATE_LIMIT": "lots"}, "LLM_BACKEND_RATE_LIMIT", "not a rate limit"),
    ({"RATE_LIMIT": "0/minute"}, "LLM_BACKEND_RATE_LIMIT", "allows no request"),
    ({"MAX_STREAMS": "0"}, "LLM_BACKEND_MAX_STREAMS", "out of range"),
    ({"MAX_STREAMS": "four"}, "LLM_BACKEND_MAX_STREAMS", "not a whole number"),
    ({"CONNECT_TIMEOUT_S": "0"}, "LLM_BACKEND_CONNECT_TIMEOUT_S", "out of range"),
    ({"READ_TIMEOUT_S": "5m"}, "LLM_BACKEND_READ_TIMEOUT_S", "not a number of seconds"),
    ({"HEALTH_TIMEOUT_S": "-1"}, "LLM_BACKEND_HEALTH_TIMEOUT_S", "out of range"),
    ({"MAX_BODY_BYTES": "4MiB"}, "LLM_BACKEND_MAX_BODY_BYTES", "not a whole number"),
    ({"MAX_BODY_BYTES": "100"}, "LLM_BACKEND_MAX_BODY_BYTES", "out of range"),
    ({"PORT": "70000"}, "LLM_BACKEND_PORT", "out of range"),
    ({"LOG_LEVEL": "verbose"}, "LLM_BACKEND_LOG_LEVEL", "not one of"),
])
def test_each_bad_setting_is_named(tmp_path: Path, overrides: dict[str, str], variable: str, fragment: str) -> None:
    message = config_error(env_for(tmp_path, **overrides))
    assert message.startswith(variable) and fragment in message
    assert "secret" not in message  # a store URL's password is never repeated


def keys_json(*entries: object) -> str:
    return json.dumps({"keys": list(entries)})


def entry(key_id: str = "alice", digest: str = sha(ALICE), **extra: object) -> dict:
    return {"id": key_id, "sha256": digest, **extra}


BAD_KEY_FILES = [
    ("not json", "is not valid JSON"),
    (json.dumps([entry()]), 'must hold an object {"keys": [...]}'),
    (json.dumps({"keys": [entry()], "extra": 1}), 'must hold an object {"keys": [...]}'),
    (keys_json(), "lists no keys"),
    (keys_json("alice"), "keys[0]: must be an object"),
    (keys_json(entry("Alice")), "keys[0]: id 'Alice' must match"),
    (keys_json(entry("a b")), "keys[0]: id 'a b' must match"),
    (keys_json(entry("a" * 65)), "must match"),
    (keys_json(entry(digest=sha(ALICE).upper())), "keys[0] (alice): sha256 must be 64"),
    (keys_json(entry(digest=sha(ALICE)[:63])), "keys[0] (alice): sha256 must be 64"),
    (keys_json({"id": "alice"}), "keys[0] (alice): sha256 must be 64"),
    (keys_json(entry(ratelimit="1/second")), "keys[0]: unknown field(s) ratelimit"),
    (keys_json(entry(rate_limit="often")), "keys[0] (alice) rate_limit: 'often' is not a rate limit"),
    (keys_json(entry(max_streams=True)), "keys[0] (alice) max_streams: True is not a whole number"),
    (keys_json(entry(max_streams=0)), "keys[0] (alice) max_streams: 0 is out of range"),
    (keys_json(entry(), entry(digest=sha(BOB))), "keys[1]: id 'alice' is used twice"),
    (keys_json(entry(), entry("bob")), "keys[1] (bob): the same sha256 is listed under ids 'alice' and 'bob'"),
]


@pytest.mark.parametrize(("content", "fragment"), BAD_KEY_FILES)
def test_bad_key_files_are_refused_naming_the_variable_and_entry(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad-keys.json"
    path.write_text(content)
    message = config_error(env_for(tmp_path) | {"LLM_BACKEND_KEYS_FILE": str(path)})
    assert message.startswith(f"LLM_BACKEND_KEYS_FILE: {path}")
    assert fragment in message


def test_a_key_pasted_instead_of_its_hash_is_not_echoed(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "pasted.json", [{"id": "alice", "sha256": ALICE}])
    message = config_error(env_for(tmp_path) | {"LLM_BACKEND_KEYS_FILE": str(path)})
    assert "sha256 must be 64 lowercase hex" in message and ALICE not in message


def test_main_exits_with_the_variable_named(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LLM_BACKEND_UPSTREAM_URL": "http://engine:8000",
           "LLM_BACKEND_KEYS_FILE": str(write_keys(tmp_path / "keys.json")), "LLM_BACKEND_PORT": "http"}
    result = subprocess.run([sys.executable, str(ROOT / "apps/backend/llm_backend.py")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "llm_backend: configuration error: LLM_BACKEND_PORT: 'http' is not a whole number"


# ------------------------------------------------------------------------------------------------ keys, limits
def test_authenticate_finds_each_key_and_refuses_others(tmp_path: Path) -> None:
    gate = gw_limits.Gate(gw_settings.settings_from_env(env_for(tmp_path)).keys)
    assert gate.authenticate(f"Bearer {ALICE}").id == "alice"
    assert gate.authenticate(f"bearer  {BOB} ").id == "bob"
    assert gate.authenticate(f"Bearer {CAROL}").id == "carol"
    for header in (None, "", "Bearer", "Bearer ", f"Basic {ALICE}", ALICE, f"Bearer {ALICE}x", f"Bearer {sha(ALICE)}"):
        assert gate.authenticate(header) is None, header


def test_authenticate_compares_with_every_stored_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: as many constant-time comparisons whichever key matched, or none."""
    gate = gw_limits.Gate(gw_settings.settings_from_env(env_for(tmp_path)).keys)
    calls: list[tuple[bytes, bytes]] = []

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for key, expected in ((ALICE, "alice"), (CAROL, "carol"), ("sk-nobody-0123456789abcdef", None)):
        calls.clear()
        found = gate.authenticate(f"Bearer {key}")
        assert (found.id if found else None) == expected
        assert len(calls) == 3
        assert [b for _a, b in calls] == [k.digest for k in gate.keys]
        assert all(a == hashlib.sha256(key.encode()).digest() for a, _b in calls)


def test_moving_window_rate(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "two.json", [{"id": "k", "sha256": sha(ALICE), "rate_limit": "2/second;3/minute"}])
    key = gw_settings.settings_from_env(env_for(tmp_path) | {"LLM_BACKEND_KEYS_FILE": str(path)}).keys[0]
    gate = gw_limits.Gate((key,))

    def request(now: float) -> int | None:
        """As the gateway admits a request: checked, then counted only if within the limits."""
        wait = gate.retry_after(key, now)
        if wait is None:
            gate.count(key, now)
        return wait

    assert request(100.0) is None
    assert request(100.2) is None
    assert request(100.5) == 1  # 2/second: the first request leaves the window at 101.0
    assert request(101.1) is None  # third of the minute
    assert request(102.0) == 58  # 3/minute: the first leaves at 160.0
    assert request(159.9) == 1
    assert request(160.0) is None
    # A refused request is not counted: the window is as it was.
    assert [len(times) for times in gate.hits["k"]] == [1, 3]
    # Checking alone counts nothing.
    assert gate.retry_after(key, 160.1) == 1 and [len(times) for times in gate.hits["k"]] == [1, 3]


def test_concurrency_slots(tmp_path: Path) -> None:
    keys = gw_settings.settings_from_env(env_for(tmp_path)).keys
    gate, carol = gw_limits.Gate(keys), keys[2]
    assert gate.acquire(carol) and not gate.acquire(carol)
    gate.release(carol)
    assert gate.acquire(carol)


def test_a_writer_that_already_failed_ends_the_stream_instead_of_a_wait() -> None:
    """The writer's send fails while the reader is busy: its done-callback sets `room` before the reader asks for
    room. The reader must get the writer's error, not wait for ever (holding the key's slot)."""
    async def scenario() -> None:
        async def failing_send(message: dict) -> None:
            raise OSError("the client is gone")

        writer = gw_proxy.ClientWriter(failing_send)
        writer.put(b"data: 1\n\n")
        await asyncio.wait({writer.task}, timeout=5)
        assert writer.task.done()
        for _ in range(gw_proxy.MAX_BATCH):
            writer.put(b"data: 2\n\n")
        with pytest.raises(OSError, match="the client is gone"):
            await asyncio.wait_for(writer.make_room(), 2)

    asyncio.run(scenario())


def test_a_writer_keeps_up_and_make_room_returns() -> None:
    async def scenario() -> list[bytes]:
        sent: list[bytes] = []

        async def send(message: dict) -> None:
            sent.append(message["body"])
            await asyncio.sleep(0)

        writer = gw_proxy.ClientWriter(send)
        for index in range(3 * gw_proxy.MAX_BATCH):
            writer.put(b"%d," % index)
            if len(writer.pending) >= gw_proxy.MAX_BATCH:
                await asyncio.wait_for(writer.make_room(), 2)
        await asyncio.wait_for(writer.finish(), 2)
        return sent

    sent = asyncio.run(scenario())
    assert b"".join(sent) == b"".join(b"%d," % index for index in range(3 * gw_proxy.MAX_BATCH))


# ----------------------------------------------------------------------------------------------- usage scanner
USAGE_EVENT = b'data: {"choices":[],"model":"m1","usage":{"prompt_tokens":12,"completion_tokens":34}}\n\n'


def test_usage_found_however_the_stream_is_cut() -> None:
    stream = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n' + USAGE_EVENT + b"data: [DONE]\n\n")
    for size in (1, 2, 7, 64, len(stream)):
        scanner = gw_proxy.UsageScanner()
        for start in range(0, len(stream), size):
            scanner.feed(stream[start:start + size])
        assert (scanner.prompt_tokens, scanner.completion_tokens, scanner.model) == (12, 34, "m1"), size


def test_usage_scanner_ignores_what_is_not_a_usage_event() -> None:
    scanner = gw_proxy.UsageScanner()
    scanner.feed(b'data: {"choices":[],"usage":null}\r\n\r\n: a comment with "usage"\n\n'
                 b'data: {"usage": {"prompt_tokens": true, "completion_tokens": "3"}}\n\ndata: {"usage": broken\n\n')
    assert (scanner.prompt_tokens, scanner.completion_tokens, scanner.model) == (None, None, None)
    scanner.feed(b'data: {"usage": {"prompt_tokens": 5, "completion_tokens": 6}}\r\n\r\n')
    assert (scanner.prompt_tokens, scanner.completion_tokens) == (5, 6)


# -------------------------------------------------------------------------------------- the app, scripted engine
Handler = Callable[[httpx.Request], object]


class Engine:
    """The engine as an httpx transport: records each request, answers with `handler(request)`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            self.bodies.append(json.loads(request.content))
        answer = self.handler(request)
        if asyncio.iscoroutine(answer):
            answer = await answer
        assert isinstance(answer, httpx.Response)
        return answer


def sse_events(model: str = MODEL) -> list[bytes]:
    chunk = {"object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": REPLY}}]}
    usage = {"object": "chat.completion.chunk", "model": model, "choices": [],
             "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}}
    return [b"data: " + json.dumps(chunk).encode() + b"\n\n", b"data: " + json.dumps(chunk).encode() + b"\n\n",
            b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]


async def stream_of(chunks: list[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    for index, chunk in enumerate(chunks):
        if fail_after is not None and index == fail_after:
            raise httpx.ReadError("connection reset by the engine")
        yield chunk


def streaming_engine(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/health":
        return httpx.Response(200, json={"status": "ok"})
    if request.url.path == "/v1/models":
        return httpx.Response(200, json={"object": "list", "data": [{"id": MODEL, "object": "model"}]})
    body = json.loads(request.content)
    if body.get("stream"):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream_of(sse_events()))
    return httpx.Response(200, json={"object": "chat.completion", "model": MODEL,
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}}],
                                     "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})


class Harness:
    def __init__(self, tmp_path: Path, handler: Handler = streaming_engine, **overrides: str) -> None:
        self.engine = Engine(handler)
        overrides = {"METRICS_TOKEN": METRICS_TOKEN} | overrides
        self.settings = gw_settings.settings_from_env(env_for(tmp_path, UPSTREAM_API_KEY="engine-secret", **overrides))
        self.app = gw_app.create_app(self.settings, transport=httpx.MockTransport(self.engine))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app, client=("192.0.2.7", 5555)),
                                 base_url="http://gateway")

    def metrics(self) -> str:
        async def fetch() -> str:
            async with self.client() as client:
                return (await client.get("/metrics", headers=auth(METRICS_TOKEN))).text
        return asyncio.run(fetch())


def chat_body(stream: bool = True, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": stream, **extra}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_openai_error(response: httpx.Response, status: int, type_: str, code: str,
                        param: str | None = None) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (type_, param, code)
    assert error["message"]


def test_missing_or_wrong_key_is_401(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> list[httpx.Response]:
        async with harness.client() as client:
            return [await client.get("/v1/models"),
                    await client.get("/v1/models", headers=auth("sk-wrong-0123456789abcdef")),
                    await client.post("/v1/chat/completions", json=chat_body()),
                    await client.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": ALICE})]

    for response in asyncio.run(scenario()):
        assert_openai_error(response, 401, "invalid_request_error", "invalid_api_key")
    assert harness.engine.requests == []
    assert 'llm_backend_requests_total{key_id="-",route="/v1/models",status="401"} 2.0' in harness.metrics()


def test_models_are_the_engines_with_the_gateways_credentials(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> httpx.Response:
        async with harness.client() as client:
            return await client.get("/v1/models", headers=auth(ALICE))

    response = asyncio.run(scenario())
    assert response.status_code == 200 and response.json()["data"][0]["id"] == MODEL
    upstream = harness.engine.requests[0]
    assert str(upstream.url) == "http://engine:8000/v1/models"
    assert upstream.headers["authorization"] == "Bearer engine-secret"


def test_streamed_chat_passes_the_engines_bytes_and_counts_usage(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> httpx.Response:
        async with harness.client() as client:
            await client.get("/v1/models", headers=auth(ALICE))  # the model label's values: the engine's ids
            return await client.post("/v1/chat/completions", headers=auth(ALICE),
                                     json=chat_body(temperature=0.5, stream_options={"include_usage": False}))

    with caplog.at_level(logging.INFO, logger=gw_logs.ACCESS_LOGGER):
        response = asyncio.run(scenario())
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.content == b"".join(sse_events())
    # Upstream: the client's request, with usage asked for, and the gateway's own credentials.
    assert len(harness.engine.requests) == 2  # the ids were fresh: no refresh of its own
    upstream = harness.engine.requests[1]
    assert str(upstream.url) == "http://engine:8000/v1/chat/completions"
    assert upstream.headers["authorization"] == "Bearer engine-secret"
    assert harness.engine.bodies == [chat_body(temperature=0.5, stream_options={"include_usage": True})]
    metrics = harness.metrics()
    assert 'llm_backend_requests_total{key_id="alice",route="/v1/chat/completions",status="200"} 1.0' in metrics
    assert f'llm_backend_tokens_total{{key_id="alice",model="{MODEL}",type="prompt"}} 11.0' in metrics
    assert f'llm_backend_tokens_total{{key_id="alice",model="{MODEL}",type="completion"}} 2.0' in metrics
    assert 'llm_backend_in_flight_requests{key_id="alice"} 0.0' in metrics
    assert 'llm_backend_time_to_first_byte_seconds_count{route="/v1/chat/completions",stream="true"} 1.0' in metrics
    _models, record = caplog.records
    line = json.loads(record.getMessage())
    assert set(line) == {"ts", "key_id", "method", "path", "model", "status", "stream", "prompt_tokens",
                         "completion_tokens", "ttfb_ms", "latency_ms", "client", "error"}
    assert (line["key_id"], line["method"], line["path"], line["model"], line["status"], line["stream"]) == \
        ("alice", "POST", "/v1/chat/completions", MODEL, 200, True)
    assert (line["prompt_tokens"], line["completion_tokens"], line["client"], line["error"]) == \
        (11, 2, "192.0.2.7", None)
    assert 0 <= line["ttfb_ms"] <= line["latency_ms"]


def test_logs_and_metrics_carry_no_bodies_or_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> None:
        async with harness.client() as client:
            for stream in (True, False):
                await client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body(stream))
            await client.post("/v1/chat/completions", headers=auth("sk-wrong-0123456789"), json=chat_body())

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    logged = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    assert len([r for r in caplog.records if r.name == gw_logs.ACCESS_LOGGER]) == 3
    exposed = logged + harness.metrics()
    for secret in (PROMPT, REPLY, ALICE, sha(ALICE), "sk-wrong", "engine-secret", "Bearer", "uthorization"):
        assert secret not in exposed, secret


def test_non_streamed_chat_is_passed_through(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> httpx.Response:
        async with harness.client() as client:
            return await client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body(stream=False))

    with caplog.at_level(logging.INFO, logger=gw_logs.ACCESS_LOGGER):
        response = asyncio.run(scenario())
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == REPLY
    assert harness.engine.bodies == [chat_body(stream=False)]  # no stream_options added
    line = json.loads(caplog.records[0].getMessage())
    assert (line["stream"], line["prompt_tokens"], line["completion_tokens"]) == (False, 9, 4)


def test_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> list[httpx.Response]:
        async with harness.client() as client:
            return [await client.get("/v1/models", headers=auth(BOB)) for _ in range(4)] + \
                [await client.post("/v1/chat/completions", headers=auth(BOB), json=chat_body()),
                 await client.get("/v1/models", headers=auth(ALICE))]

    *allowed, refused, refused_chat, other_key = asyncio.run(scenario())
    assert [r.status_code for r in allowed] == [200, 200, 200]
    for response in (refused, refused_chat):
        assert_openai_error(response, 429, "requests", "rate_limit_exceeded")
        assert 55 <= int(response.headers["retry-after"]) <= 60
    assert "3/minute" in refused.json()["error"]["message"]
    assert other_key.status_code == 200
    assert len(harness.engine.requests) == 4
    metrics = harness.metrics()
    assert 'llm_backend_rate_limited_total{key_id="bob",limit="rate"} 2.0' in metrics
    assert 'llm_backend_requests_total{key_id="bob",route="/v1/models",status="429"} 1.0' in metrics


def test_concurrent_requests_past_the_limit_are_429(tmp_path: Path) -> None:
    """carol may have one request in flight: a second one, streamed or not, is refused until the first ends."""
    release = asyncio.Event()
    seen = asyncio.Event()

    async def slow_engine(request: httpx.Request) -> httpx.Response:
        seen.set()
        await release.wait()
        return streaming_engine(request)

    harness = Harness(tmp_path, slow_engine)

    async def scenario() -> tuple[httpx.Response, ...]:
        async with harness.client() as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", headers=auth(CAROL), json=chat_body()))
            await asyncio.wait_for(seen.wait(), 5)
            second = await client.post("/v1/chat/completions", headers=auth(CAROL), json=chat_body(stream=False))
            other = asyncio.create_task(client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body()))
            await asyncio.sleep(0.05)
            release.set()
            done = await asyncio.wait_for(first, 5), await asyncio.wait_for(other, 5)
            after = await client.post("/v1/chat/completions", headers=auth(CAROL), json=chat_body())
            return second, *done, after

    second, first, other, after = asyncio.run(scenario())
    assert_openai_error(second, 429, "requests", "concurrency_limit_exceeded")
    assert second.headers["retry-after"] == "1"
    assert [first.status_code, other.status_code, after.status_code] == [200, 200, 200]
    metrics = harness.metrics()
    assert 'llm_backend_rate_limited_total{key_id="carol",limit="concurrency"} 1.0' in metrics
    assert 'llm_backend_in_flight_requests{key_id="carol"} 0.0' in metrics


def test_requests_refused_for_concurrency_do_not_use_the_rate_bad_ones_do(tmp_path: Path) -> None:
    """dave may send 4 requests a minute, one at a time. While one is in flight, requests refused for concurrency
    use none of the 4 (the client did nothing wrong); a bad body and a body over the limit use one each (else a
    client could send them as fast as it likes): the next request is the 4th, the one after it is refused."""
    keys = write_keys(tmp_path / "dave.json", [{"id": "dave", "sha256": sha(ALICE), "rate_limit": "4/minute",
                                                 "max_streams": 1}])
    release = asyncio.Event()
    seen = asyncio.Event()

    async def slow_engine(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            seen.set()
            await release.wait()
        return streaming_engine(request)

    harness = Harness(tmp_path, slow_engine, KEYS_FILE=str(keys), MAX_BODY_BYTES="1024")

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        async with harness.client() as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body()))
            await asyncio.wait_for(seen.wait(), 5)
            refused = [await client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body(stream))
                       for stream in (True, False, True)]
            refused.append(await client.post("/v1/chat/completions", headers=auth(ALICE), content=b"not json"))
            refused.append(await client.post("/v1/chat/completions", headers=auth(ALICE), content=b"x" * 2048))
            release.set()
            await asyncio.wait_for(first, 5)
            second = await client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body(stream=False))
            third = await client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body(stream=False))
            return refused, second, third

    refused, second, third = asyncio.run(scenario())
    assert [r.json()["error"]["code"] for r in refused] == ["concurrency_limit_exceeded"] * 3 + \
        ["invalid_json", "request_too_large"]
    assert second.status_code == 200
    assert_openai_error(third, 429, "requests", "rate_limit_exceeded")
    assert [len(times) for times in harness.app.state.gateway.gate.hits["dave"]] == [4]
    metrics = harness.metrics()
    assert 'llm_backend_rate_limited_total{key_id="dave",limit="concurrency"} 3.0' in metrics
    assert 'llm_backend_rate_limited_total{key_id="dave",limit="rate"} 1.0' in metrics


def test_a_body_over_the_limit_is_413_and_never_reaches_the_engine(tmp_path: Path) -> None:
    harness = Harness(tmp_path, MAX_BODY_BYTES="1024")
    padding = "p" * (1024 - len(json.dumps(chat_body(stream=False, user=""))))
    exact = json.dumps(chat_body(stream=False, user=padding)).encode()
    assert len(exact) == 1024

    async def chunked(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start:start + 100]

    async def scenario() -> list[httpx.Response]:
        async with harness.client() as client:
            headers = {**auth(ALICE), "content-type": "application/json"}
            return [await client.post("/v1/chat/completions", headers=headers, content=exact + b" "),
                    await client.post("/v1/chat/completions", headers=headers, content=chunked(exact + b" ")),
                    await client.post("/v1/chat/completions", headers=headers, content=exact),
                    await client.post("/v1/chat/completions", headers=headers, content=chunked(exact))]

    too_large, too_large_chunked, at_limit, at_limit_chunked = asyncio.run(scenario())
    for response in (too_large, too_large_chunked):
        assert_openai_error(response, 413, "invalid_request_error", "request_too_large")
        assert "1024 bytes (LLM_BACKEND_MAX_BODY_BYTES)" in response.json()["error"]["message"]
    assert at_limit.status_code == 200 and at_limit_chunked.status_code == 200
    assert harness.engine.bodies == [json.loads(exact)] * 2
    assert 'llm_backend_requests_total{key_id="alice",route="/v1/chat/completions",status="413"} 2.0' in \
        harness.metrics()


def test_models_of_a_hung_engine_are_503_within_the_models_timeout(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A real socket that accepts connections and never answers; the read timeout (300 s) does not apply."""
    assert gw_app.Gateway(gw_settings.settings_from_env(env_for(tmp_path))).models_timeout_s == 10.0
    slow_connect = gw_settings.settings_from_env(env_for(tmp_path, CONNECT_TIMEOUT_S="20"))
    assert gw_app.Gateway(slow_connect).models_timeout_s == 20.0
    monkeypatch.setattr(gw_app, "MODELS_TIMEOUT_S", 0.3)
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent:
        settings = gw_settings.settings_from_env(env_for(tmp_path, UPSTREAM_URL=f"http://127.0.0.1:{silent.getsockname()[1]}",
                                                CONNECT_TIMEOUT_S="0.1"))
        app = gw_app.create_app(settings)

        async def scenario() -> tuple[httpx.Response, float]:
            transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 5555))
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                started = asyncio.get_running_loop().time()
                response = await client.get("/v1/models", headers=auth(ALICE))
                return response, asyncio.get_running_loop().time() - started

        response, elapsed = asyncio.run(scenario())
    assert_openai_error(response, 503, "server_error", "engine_unavailable")
    assert "the engine sent nothing for 0.3 s" in response.json()["error"]["message"]
    assert 0.25 < elapsed < 3


def echoing_engine(request: httpx.Request) -> httpx.Response:
    """Names the model as the request did, as llama.cpp's server does for any name."""
    if request.url.path == "/v1/models":
        return httpx.Response(200, json={"object": "list", "data": [{"id": MODEL, "object": "model"}]})
    model = json.loads(request.content)["model"]
    return httpx.Response(200, json={"object": "chat.completion", "model": model,
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}}],
                                     "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})


def test_the_model_label_takes_only_the_engines_model_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The ids are read in the background at the first chat completion (and again after MODELS_TTL_S); any model
    name the engine did not list is counted as "other", so clients cannot add label values."""
    harness = Harness(tmp_path, echoing_engine)
    gateway = harness.app.state.gateway

    async def scenario() -> None:
        async with harness.client() as client:
            async def ask(model: str) -> None:
                response = await client.post("/v1/chat/completions", headers=auth(ALICE),
                                             json=chat_body(stream=False) | {"model": model})
                assert response.status_code == 200

            await ask("made-up-1")
            refresh = gateway.models_refresh
            assert refresh is not None
            await asyncio.wait_for(refresh, 5)
            for model in (MODEL, "made-up-2", "made-up-3", MODEL):
                await ask(model)

    with caplog.at_level(logging.INFO, logger=gw_logs.ACCESS_LOGGER):
        asyncio.run(scenario())
    assert gateway.model_ids == {MODEL}
    assert [request.url.path for request in harness.engine.requests].count("/v1/models") == 1  # once per TTL
    metrics = harness.metrics()
    assert "made-up" not in metrics
    assert f'llm_backend_tokens_total{{key_id="alice",model="{MODEL}",type="prompt"}} 18.0' in metrics
    assert 'llm_backend_tokens_total{key_id="alice",model="other",type="prompt"} 27.0' in metrics
    # The access log keeps the name the request gave.
    assert [json.loads(r.getMessage())["model"] for r in caplog.records][:3] == ["made-up-1", MODEL, "made-up-2"]


def engine_failing(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models" or request.method == "POST":
            raise exc
        return httpx.Response(200)
    return handler


@pytest.mark.parametrize(("handler", "message"), [
    (engine_failing(httpx.ConnectError("refused")), "cannot be reached"),
    (engine_failing(httpx.ConnectTimeout("slow")), "did not accept a connection within 3 s"),
    (engine_failing(httpx.ReadTimeout("silent")), "sent nothing for 300 s"),
    (lambda request: httpx.Response(500, json={"error": "CUDA out of memory"}), "failed to answer (status 500)"),
    (lambda request: httpx.Response(502, content=b"bad gateway"), "failed to answer (status 502)"),
    (lambda request: httpx.Response(401, json={"error": "bad key"}), "refused the gateway's credentials"),
])
def test_engine_failures_before_the_stream_are_503(tmp_path: Path, handler: Handler, message: str) -> None:
    harness = Harness(tmp_path, handler)

    async def scenario() -> list[httpx.Response]:
        async with harness.client() as client:
            return [await client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body(stream)) for stream
                    in (True, False)] + [await client.get("/v1/models", headers=auth(ALICE))]

    for response in asyncio.run(scenario()):
        assert_openai_error(response, 503, "server_error", "engine_unavailable")
    streamed = asyncio.run(scenario())[0]
    assert message in streamed.json()["error"]["message"]
    assert "CUDA" not in streamed.text
    assert 'llm_backend_upstream_errors_total{reason=' in harness.metrics()


def test_engine_4xx_is_passed_through(tmp_path: Path) -> None:
    body = {"error": {"message": "Expected 'messages' to be an array", "type": "invalid_request_error", "code": 400}}
    harness = Harness(tmp_path, lambda request: httpx.Response(400, json=body))

    async def scenario() -> list[httpx.Response]:
        async with harness.client() as client:
            return [await client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body(stream)) for stream
                    in (True, False)]

    for response in asyncio.run(scenario()):
        assert response.status_code == 400 and response.json() == body


def test_a_stream_broken_after_it_started_ends_with_an_error_event(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=stream_of(sse_events(), fail_after=2))

    harness = Harness(tmp_path, broken)

    async def scenario() -> httpx.Response:
        async with harness.client() as client:
            return await client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body())

    with caplog.at_level(logging.INFO, logger=gw_logs.ACCESS_LOGGER):
        response = asyncio.run(scenario())
    assert response.status_code == 200
    head = b"".join(sse_events()[:2])
    assert response.content.startswith(head)
    tail = response.content[len(head):]
    assert tail.startswith(b"data: ") and tail.endswith(b"\n\n") and b"[DONE]" not in tail
    error = json.loads(tail[len(b"data: "):])["error"]
    assert (error["type"], error["code"]) == ("server_error", "engine_stream_interrupted")
    assert json.loads(caplog.records[0].getMessage())["error"] == "engine_stream_interrupted"


def test_bad_request_body_is_400(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> list[httpx.Response]:
        async with harness.client() as client:
            return [await client.post("/v1/chat/completions", headers=auth(ALICE), content=content)
                    for content in (b"not json", b"[1, 2]")]

    for response in asyncio.run(scenario()):
        assert_openai_error(response, 400, "invalid_request_error", "invalid_json")
    assert harness.engine.requests == []


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused")


@pytest.mark.parametrize(("handler", "status"), [
    (lambda request: httpx.Response(200, json={"status": "ok"}), 200),
    (lambda request: httpx.Response(503, json={"error": "Loading model"}), 503),
    (unreachable, 503),
])
def test_health_follows_the_engine(tmp_path: Path, handler: Handler, status: int) -> None:
    harness = Harness(tmp_path, handler)

    async def scenario() -> httpx.Response:
        async with harness.client() as client:
            return await client.get("/health")

    response = asyncio.run(scenario())
    assert [str(r.url) for r in harness.engine.requests] == ["http://engine:8000/health"]
    if status == 200:
        assert response.status_code == 200 and response.json() == {"status": "ok", "engine": "ok"}
        assert "llm_backend_engine_up 1.0" in harness.metrics()
    else:
        assert_openai_error(response, 503, "server_error", "engine_unavailable")
        assert "llm_backend_engine_up 0.0" in harness.metrics()


def test_unknown_routes_get_openai_errors(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> list[httpx.Response]:
        async with harness.client() as client:
            return [await client.get("/v1/nothing"), await client.get("/v1/chat/completions")]

    missing, wrong_method = asyncio.run(scenario())
    assert_openai_error(missing, 404, "invalid_request_error", "not_found")
    assert_openai_error(wrong_method, 405, "invalid_request_error", "method_not_allowed")


def test_each_app_has_its_own_metrics(tmp_path: Path) -> None:
    first, second = Harness(tmp_path), Harness(tmp_path)

    async def scenario() -> None:
        async with first.client() as client:
            await client.get("/v1/models", headers=auth(ALICE))

    asyncio.run(scenario())
    assert 'route="/v1/models",status="200"} 1.0' in first.metrics()
    assert 'route="/v1/models"' not in second.metrics()


def test_client_disconnect_closes_the_engine_stream(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Driven at the ASGI level: the client goes away after three body messages of an endless stream."""
    closed = asyncio.Event()

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                yield sse_events()[0]
                await asyncio.sleep(0.005)

        async def aclose(self) -> None:
            closed.set()

    harness = Harness(tmp_path, lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                                               stream=Endless()))
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("192.0.2.7", 5555), "server": ("gateway", 80),
             "headers": [(b"authorization", f"Bearer {CAROL}".encode()), (b"content-type", b"application/json")]}
    sent: list[dict] = []
    gone = asyncio.Event()

    async def scenario() -> None:
        requested = False

        async def receive() -> dict:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": json.dumps(chat_body()).encode(), "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if len(sent) == 4:  # the start and three body messages
                gone.set()

        await asyncio.wait_for(harness.app(scope, receive, send), 5)
        await asyncio.wait_for(closed.wait(), 5)

    with caplog.at_level(logging.INFO, logger=gw_logs.ACCESS_LOGGER):
        asyncio.run(scenario())
    assert sent[0]["status"] == 200
    # Cut, not ended, and at once: the engine writes a chunk every 5 ms, and the test waits up to 5 s.
    assert not any(message.get("more_body") is False for message in sent)
    assert len(sent) < 10
    assert json.loads(caplog.records[0].getMessage())["error"] == "client_disconnected"
    assert harness.app.state.gateway.gate.active["carol"] == 0
    assert 'llm_backend_in_flight_requests{key_id="carol"} 0.0' in harness.metrics()


def test_probes_are_logged_at_debug_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> None:
        async with harness.client() as client:
            await client.get("/health")
            await client.get("/metrics")

    with caplog.at_level(logging.INFO, logger=gw_logs.ACCESS_LOGGER):
        asyncio.run(scenario())
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger=gw_logs.ACCESS_LOGGER):
        asyncio.run(scenario())
    assert [(json.loads(r.getMessage())["path"], r.levelname) for r in caplog.records] == \
        [("/health", "DEBUG"), ("/metrics", "DEBUG")]


# ------------------------------------------------------------------------------ hostile and sloppy clients (issue 24)
def post_all(harness: Harness, *requests: tuple[str, dict | bytes], key: str = ALICE) -> list[httpx.Response]:
    async def scenario() -> list[httpx.Response]:
        async with harness.client() as client:
            answers = []
            for path, body in requests:
                kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
                answers.append(await client.post(path, headers=auth(key), **kwargs))
            return answers
    return asyncio.run(scenario())


def test_metrics_need_the_metrics_token_and_are_off_without_one(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    post_all(harness, ("/v1/chat/completions", chat_body()))

    async def scenario(app_harness: Harness, headers: dict) -> httpx.Response:
        async with app_harness.client() as client:
            return await client.get("/metrics", headers=headers)

    for headers in ({}, auth(ALICE), auth(METRICS_TOKEN + "x"), {"Authorization": METRICS_TOKEN}):
        refused = asyncio.run(scenario(harness, headers))
        assert_openai_error(refused, 401, "invalid_request_error", "invalid_api_key")
        assert "alice" not in refused.text and "llm_backend" not in refused.text
    assert 'key_id="alice"' in asyncio.run(scenario(harness, auth(METRICS_TOKEN))).text
    off = asyncio.run(scenario(Harness(tmp_path, METRICS_TOKEN=""), auth(METRICS_TOKEN)))
    assert_openai_error(off, 404, "invalid_request_error", "not_found")
    assert "LLM_BACKEND_METRICS_TOKEN" in off.json()["error"]["message"]
    assert config_error(env_for(tmp_path, METRICS_TOKEN="short")).startswith("LLM_BACKEND_METRICS_TOKEN")


@pytest.mark.parametrize(("extra", "param", "code"), [
    ({"stream": 1}, "stream", "invalid_type"),
    ({"stream": "true"}, "stream", "invalid_type"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stream": True, "stream_options": "usage"}, "stream_options", "invalid_type"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "invalid_type"),
    ({"n": 1_000_000}, "n", "integer_above_max_value"),
    ({"n": "3"}, "n", "invalid_type"),
    ({"n": 0}, "n", "integer_below_min_value"),
    ({"max_tokens": 10**12}, "max_tokens", "integer_above_max_value"),
    ({"max_completion_tokens": 10**12}, "max_completion_tokens", "integer_above_max_value"),
    ({"max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ({"messages": [{"role": "user", "content": "hi"}] * 100_000}, "messages", "array_above_max_length"),
    ({"messages": "hi"}, "messages", "invalid_type"),
])
def test_fields_the_gateway_acts_on_or_caps_are_400_naming_the_field(tmp_path: Path, extra: dict, param: str,
                                                                    code: str) -> None:
    harness = Harness(tmp_path)
    response, = post_all(harness, ("/v1/chat/completions", chat_body(stream=False) | extra))
    assert_openai_error(response, 400, "invalid_request_error", code, param)
    assert harness.engine.bodies == []


def test_caps_are_per_deployment_and_per_key(tmp_path: Path) -> None:
    keys = write_keys(tmp_path / "caps.json", [entry("alice", sha(ALICE)),
                                               entry("bob", sha(BOB), max_tokens=100, max_n=1, max_messages=2)])
    harness = Harness(tmp_path, KEYS_FILE=str(keys), MAX_N="2", MAX_TOKENS="1000", MAX_MESSAGES="3")
    two = [{"role": "user", "content": "a"}] * 2
    alice = post_all(harness, *(("/v1/chat/completions", chat_body(stream=False) | extra) for extra in (
        {"n": 2, "max_tokens": 1000, "messages": two * 1 + two[:1]}, {"n": 3}, {"max_tokens": 1001},
        {"messages": two * 2})))
    assert [r.status_code for r in alice] == [200, 400, 400, 400]
    bob = post_all(harness, *(("/v1/chat/completions", chat_body(stream=False) | extra) for extra in (
        {"n": 1, "max_tokens": 100, "messages": two}, {"n": 2}, {"max_tokens": 101}, {"messages": two + two[:1]})),
        key=BOB)
    assert [r.status_code for r in bob] == [200, 400, 400, 400]
    assert "at most 100 (max_tokens of the key, or LLM_BACKEND_MAX_TOKENS)" in bob[2].json()["error"]["message"]
    # A prompt given as token ids is one prompt, however many tokens.
    completion, = post_all(harness, ("/v1/completions", {"model": MODEL, "prompt": list(range(500))}))
    assert completion.status_code == 200
    batch, = post_all(harness, ("/v1/completions", {"model": MODEL, "prompt": ["a", "b", "c", "d"]}))
    assert_openai_error(batch, 400, "invalid_request_error", "array_above_max_length", "prompt")


def test_deeply_nested_json_is_400_logged_and_counted_without_a_traceback(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    keys = write_keys(tmp_path / "five.json", [entry("alice", sha(ALICE), rate_limit="5/minute")])
    harness = Harness(tmp_path, KEYS_FILE=str(keys))
    nested = b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with caplog.at_level(logging.INFO):
        answers = post_all(harness, *[("/v1/chat/completions", nested)] * 8)
    assert [r.status_code for r in answers] == [400] * 5 + [429] * 3
    assert_openai_error(answers[0], 400, "invalid_request_error", "invalid_json")
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == gw_logs.ACCESS_LOGGER]
    assert [line["status"] for line in access] == [400] * 5 + [429] * 3
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_client_gone_mid_body_is_logged_without_a_traceback(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path)
    messages = iter([{"type": "http.request", "body": b'{"model": "m", "messa', "more_body": True},
                     {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO):
        asyncio.run(harness.app(asgi_scope(ALICE), receive, send))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == gw_logs.ACCESS_LOGGER]
    assert [(line["status"], line["error"]) for line in lines] == [(499, "client_disconnected")]
    assert not [r for r in caplog.records if r.exc_info]
    assert harness.engine.requests == []


def asgi_scope(key: str, path: str = "/v1/chat/completions") -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("192.0.2.7", 5555), "server": ("gateway", 80),
            "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]}


def test_a_model_name_with_a_lone_surrogate_still_gets_its_log_line(tmp_path: Path) -> None:
    import io
    harness = Harness(tmp_path, lambda request: httpx.Response(400, json={"error": {"message": "no such model"}}))
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # as stdout in the container: UTF-8, strict
    handler = logging.StreamHandler(out)
    handler.setFormatter(gw_logs.JsonFormatter())
    logger = logging.getLogger(gw_logs.ACCESS_LOGGER)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        body = b'{"model": "\\ud800-name", "messages": [], "stream": false}'
        response, = post_all(harness, ("/v1/chat/completions", body))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    out.flush()
    lines = out.buffer.getvalue().decode().splitlines()  # type: ignore[attr-defined]
    assert response.status_code == 400
    assert [json.loads(line)["model"] for line in lines] == ["?-name"]


def test_the_hosts_in_flight_limit_answers_503_at_once(tmp_path: Path) -> None:
    release, seen = asyncio.Event(), asyncio.Event()

    async def slow_engine(request: httpx.Request) -> httpx.Response:
        seen.set()
        await release.wait()
        return streaming_engine(request)

    harness = Harness(tmp_path, slow_engine, MAX_IN_FLIGHT="1")

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with harness.client() as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", headers=auth(ALICE), json=chat_body()))
            await asyncio.wait_for(seen.wait(), 5)
            busy = await asyncio.wait_for(client.post("/v1/chat/completions", headers=auth(BOB), json=chat_body()), 2)
            release.set()
            return busy, await first

    busy, first = asyncio.run(scenario())
    assert_openai_error(busy, 503, "server_error", "server_busy")
    assert busy.headers["retry-after"] == "1" and first.status_code == 200
    assert "llm_backend_busy_total 1.0" in harness.metrics()


class Trickle(httpx.AsyncByteStream):
    """An engine that sends a chunk every 50 ms for ever; records its close."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield sse_events()[0]
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        self.closed.set()


def test_the_total_deadline_ends_a_trickling_stream_and_frees_its_slot(tmp_path: Path) -> None:
    trickle = Trickle()
    harness = Harness(tmp_path, lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                                               stream=trickle), REQUEST_TIMEOUT_S="0.5")

    async def scenario() -> httpx.Response:
        async with harness.client() as client:
            return await asyncio.wait_for(
                client.post("/v1/chat/completions", headers=auth(CAROL), json=chat_body()), 5)

    response = asyncio.run(scenario())
    last = response.content.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == "request_timeout"
    assert trickle.closed.is_set()
    gate = harness.app.state.gateway.gate
    assert (gate.active["carol"], gate.in_flight) == (0, 0)
    assert 'llm_backend_deadlines_total{kind="request"} 1.0' in harness.metrics()


def test_the_total_deadline_before_any_answer_is_504(tmp_path: Path) -> None:
    async def hung(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return streaming_engine(request)

    harness = Harness(tmp_path, hung, REQUEST_TIMEOUT_S="0.3")
    response, = post_all(harness, ("/v1/chat/completions", chat_body(stream=False)))
    assert_openai_error(response, 504, "server_error", "request_timeout")


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    trickle = Trickle()
    harness = Harness(tmp_path, lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                                               stream=trickle), SEND_TIMEOUT_S="0.3")
    body = iter([{"type": "http.request", "body": json.dumps(chat_body()).encode(), "more_body": False}])
    stuck = asyncio.Event()

    async def receive() -> dict:
        with suppress(StopIteration):
            return next(body)
        await asyncio.Event().wait()  # never a disconnect: the client is there, it just does not read
        return {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            stuck.set()
            await asyncio.Event().wait()  # the client's window is full: uvicorn's send waits for it

    with caplog.at_level(logging.INFO, logger=gw_logs.ACCESS_LOGGER):
        asyncio.run(asyncio.wait_for(harness.app(asgi_scope(CAROL), receive, send), 5))
    assert stuck.is_set() and trickle.closed.is_set()
    assert json.loads(caplog.records[-1].getMessage())["error"] == "client_send_timeout"
    assert harness.app.state.gateway.gate.in_flight == 0


def test_keys_are_reloaded_without_dropping_streams_and_a_key_can_be_disabled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    dave = "sk-dave-unit-test-key-0123456789abcdef"
    keys = write_keys(tmp_path / "reload.json", [entry("alice", sha(ALICE)), entry("bob", sha(BOB))])
    release, seen = asyncio.Event(), asyncio.Event()

    async def slow_engine(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            seen.set()
            await release.wait()
        return streaming_engine(request)

    monkeypatch.setattr(gw_app, "KEYS_POLL_S", 0.05)
    harness = Harness(tmp_path, slow_engine, KEYS_FILE=str(keys))
    gateway = harness.app.state.gateway

    async def scenario() -> dict[str, object]:
        watcher = asyncio.create_task(gateway.watch_keys())
        async with harness.client() as client:
            streaming = asyncio.create_task(client.post("/v1/chat/completions", headers=auth(ALICE),
                                                        json=chat_body()))
            await asyncio.wait_for(seen.wait(), 5)
            write_keys(keys, [entry("alice", sha(ALICE), enabled=False), entry("bob", sha(BOB)),
                              entry("dave", sha(dave), rate_limit="10/minute")])
            for _ in range(100):
                if any(key.id == "dave" for key in gateway.gate.keys):
                    break
                await asyncio.sleep(0.05)
            results: dict[str, object] = {
                "alice": await client.get("/v1/models", headers=auth(ALICE)),
                "dave": await client.get("/v1/models", headers=auth(dave))}
            keys.write_text('{"keys": [{"id": "bob", "sha256": "' + sha(BOB) + '", "enabeld": false}]}')
            await asyncio.sleep(0.3)
            results["after_bad_file"] = await client.get("/v1/models", headers=auth(dave))
            release.set()
            results["stream"] = await asyncio.wait_for(streaming, 5)
        watcher.cancel()
        return results

    with caplog.at_level(logging.INFO):
        results = asyncio.run(scenario())
    assert_openai_error(results["alice"], 401, "invalid_request_error", "invalid_api_key")
    assert "disabled" in results["alice"].json()["error"]["message"]
    assert results["dave"].status_code == 200 and results["after_bad_file"].status_code == 200
    assert results["stream"].status_code == 200 and results["stream"].content == b"".join(sse_events())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "unknown field(s) enabeld" in errors[0] and sha(BOB) not in errors[0]
    metrics = harness.metrics()
    assert 'llm_backend_keys_reloads_total{result="ok"} 1.0' in metrics
    assert 'llm_backend_keys_reloads_total{result="error"} 1.0' in metrics
    assert 'llm_backend_keys{state="disabled"} 1.0' in metrics


def responses_engine(request: httpx.Request) -> httpx.Response:
    """An engine serving the Responses API, completions and embeddings (simulated: these are their documented
    shapes), and answering 404 as uvicorn does under vLLM for anything else."""
    if request.url.path in ("/v1/models", "/health"):
        return streaming_engine(request)
    if request.url.path == "/v1/responses":
        body = json.loads(request.content)
        done = {"id": "resp_1", "object": "response", "model": MODEL, "status": "completed",
                "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                                                "text": REPLY}]}],
                "usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}}
        if not body.get("stream"):
            return httpx.Response(200, json=done)
        events = [b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n',
                  b"event: response.completed\ndata: " + json.dumps({"type": "response.completed",
                                                                     "response": done}).encode() + b"\n\n"]
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream_of(events))
    if request.url.path == "/v1/completions":
        return httpx.Response(200, json={"object": "text_completion", "model": MODEL, "choices": [{"text": REPLY}],
                                         "usage": {"prompt_tokens": 5, "completion_tokens": 6}})
    if request.url.path == "/v1/embeddings":
        return httpx.Response(200, json={"object": "list", "model": MODEL, "data": [{"embedding": [0.1]}],
                                         "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    return httpx.Response(404, json={"detail": "Not Found"})


def test_responses_completions_and_embeddings_pass_through_with_keys_limits_and_accounting(tmp_path: Path) -> None:
    harness = Harness(tmp_path, responses_engine)
    harness.app.state.gateway.model_ids = frozenset({MODEL})  # as read from the engine's /v1/models
    answers = post_all(harness, ("/v1/responses", {"model": MODEL, "input": "hi"}),
                       ("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}),
                       ("/v1/completions", {"model": MODEL, "prompt": "hi"}),
                       ("/v1/embeddings", {"model": MODEL, "input": "hi"}))
    assert [r.status_code for r in answers] == [200] * 4
    assert answers[1].content.endswith(b'"total_tokens": 10}}}\n\n')
    assert "stream_options" not in harness.engine.bodies[1]  # not a field of the Responses API
    metrics = harness.metrics()
    assert f'llm_backend_tokens_total{{key_id="alice",model="{MODEL}",type="prompt"}} 23.0' in metrics  # 7+7+5+4
    assert f'llm_backend_tokens_total{{key_id="alice",model="{MODEL}",type="completion"}} 12.0' in metrics
    for route in ("/v1/responses", "/v1/completions", "/v1/embeddings"):
        assert f'llm_backend_requests_total{{key_id="alice",route="{route}",status="200"}}' in metrics
    unauthorised, = post_all(harness, ("/v1/embeddings", {"input": "x"}), key="sk-nobody-0123456789")
    assert unauthorised.status_code == 401
    over, = post_all(harness, ("/v1/responses", {"model": MODEL, "input": "x", "max_output_tokens": 10**9}))
    assert over.json()["error"]["param"] == "max_output_tokens"


@pytest.mark.parametrize(("status", "body", "passed_on"), [
    (404, {"detail": "Not Found"}, False),  # vLLM (uvicorn) without the route
    (404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}, False),  # llama.cpp
    (501, {"error": {"code": 501, "message": "This server does not support embeddings. Start it with `--embeddings`",
                     "type": "not_supported_error"}}, False),
    (404, {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "param": "model",
                     "code": 404}}, True),
])
def test_a_route_the_engine_does_not_serve_is_an_openai_404(tmp_path: Path, status: int, body: dict,
                                                            passed_on: bool) -> None:
    harness = Harness(tmp_path, lambda request: httpx.Response(status, json=body))
    response, = post_all(harness, ("/v1/embeddings", {"model": "x", "input": "hi"}))
    assert response.status_code == 404
    if passed_on:
        assert response.json() == body
    else:
        assert_openai_error(response, 404, "invalid_request_error", "not_found")
        assert response.json()["error"]["message"] == "the engine does not serve POST /v1/embeddings"


def test_an_answer_over_the_size_bound_is_not_buffered(tmp_path: Path) -> None:
    harness = Harness(tmp_path, lambda request: httpx.Response(200, content=b"x" * 5000),
                      MAX_RESPONSE_BYTES="4096")
    response, = post_all(harness, ("/v1/chat/completions", chat_body(stream=False)))
    assert_openai_error(response, 503, "server_error", "engine_answer_too_large")


@pytest.mark.parametrize(("failures", "status", "retries"), [(1, 200, 1), (2, 503, 1)])
def test_a_pooled_connection_closed_before_the_answer_is_retried_once(tmp_path: Path, failures: int, status: int,
                                                                      retries: int) -> None:
    left = [failures]

    def stale_then_fine(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and left[0] > 0:
            left[0] -= 1
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return streaming_engine(request)

    harness = Harness(tmp_path, stale_then_fine)
    for stream in (False, True):
        left[0] = failures
        response, = post_all(harness, ("/v1/chat/completions", chat_body(stream=stream)))
        assert response.status_code == status
    assert f"llm_backend_upstream_retries_total {2.0 * retries}" in harness.metrics()


def test_a_key_revoked_while_its_body_arrives_is_refused(tmp_path: Path) -> None:
    keys = write_keys(tmp_path / "revoke.json", [entry("alice", sha(ALICE)), entry("bob", sha(BOB))])
    harness = Harness(tmp_path, KEYS_FILE=str(keys))
    gateway = harness.app.state.gateway
    first_part = asyncio.Event()
    sent: list[dict] = []

    async def scenario() -> None:
        body = json.dumps(chat_body(stream=False)).encode()
        parts = iter([{"type": "http.request", "body": body[:10], "more_body": True},
                      {"type": "http.request", "body": body[10:], "more_body": False}])

        async def receive() -> dict:
            message = next(parts)
            if not message["more_body"]:
                first_part.set()
                write_keys(keys, [entry("bob", sha(BOB))])
                assert gateway.reload_keys()
            return message

        async def send(message: dict) -> None:
            sent.append(message)

        await asyncio.wait_for(harness.app(asgi_scope(ALICE), receive, send), 5)

    asyncio.run(scenario())
    assert first_part.is_set() and sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_api_key"
    assert harness.engine.requests == []
