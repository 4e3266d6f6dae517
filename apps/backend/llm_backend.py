#!/usr/bin/env python3
"""An OpenAI-compatible API gateway in front of an LLM engine (vLLM or llama.cpp's server).

Clients present per-user API keys (the gateway stores only their SHA-256), are held to a request rate and a
number of concurrent chat completions per key, and get the engine's answers passed through unchanged: streamed
completions byte for byte, as the engine sent them. Every request leaves one JSON access-log line (never a prompt,
a reply or a key) and Prometheus metrics on /metrics.

Run: `python llm_backend.py`, configured by LLM_BACKEND_* environment variables (README.md lists them).
Tests build the app with `create_app(settings_from_env(env))`.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from limits import RateLimitItem, parse_many
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

# httpcore tries `import sniffio` several times per request; sniffio is not in the image, and a failed import
# searches sys.path every time (~0.1 ms each, over half a millisecond per request). A None entry makes the
# import fail at once, which httpcore reads as "asyncio", as it would without the entry.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

ENV_PREFIX = "LLM_BACKEND_"
KEY_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_FIELDS = {"id", "sha256", "rate_limit", "max_streams"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ACCESS_LOGGER = "llm_backend.access"
# The engine's usage event is the only SSE event the gateway parses; this is how it spots it.
USAGE_MARK = b'"usage"'
# An SSE line longer than this is not kept whole while looking for the usage event (its tokens go uncounted).
MAX_SCANNED_LINE = 1 << 20
# Shorter than the 5 s keep-alive of llama.cpp's server and of uvicorn (vLLM), so that an idle connection is
# dropped here before the engine closes it under a request.
UPSTREAM_KEEPALIVE_S = 4.0
# Docker waits 10 s after SIGTERM before SIGKILL: open streams get 8 s to finish, then they are cut.
GRACEFUL_SHUTDOWN_S = 8
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROUTE_CHAT = "/v1/chat/completions"
ROUTE_MODELS = "/v1/models"
# A stream's reader waits for the client writer once this many chunks are pending (ClientWriter).
MAX_BATCH = 64
# /v1/models is a listing the engine answers at once, busy or not: one that has said nothing for this long (or for
# the connect timeout, if that is longer) is hung, and the client gets a 503 instead of waiting the read timeout.
MODELS_TIMEOUT_S = 10.0
# The ids the engine lists on /v1/models are the only values of the metrics' model label; they are read again,
# in the background, when a chat completion is admitted and this long has passed since they were last read.
MODELS_TTL_S = 60.0
OTHER_MODEL = "other"
DEFAULT_MAX_BODY_BYTES = 4 << 20
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


# ----------------------------------------------------------------------------------------------------- settings
class ConfigError(ValueError):
    """A setting is wrong; the message starts with the name of the environment variable."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: bytes  # sha256 of the key itself; the key is never stored
    rate_limit: str
    windows: tuple[tuple[int, float], ...]  # (requests, seconds) of each limit in rate_limit
    max_streams: int


@dataclass(frozen=True)
class Settings:
    upstream_url: str
    keys: tuple[ApiKey, ...]
    upstream_api_key: str = ""
    rate_limit: str = "60/minute"
    max_streams: int = 4
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 300.0
    health_timeout_s: float = 2.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "info"


def parse_rate(where: str, text: str) -> tuple[RateLimitItem, ...]:
    """limits' syntax, several limits separated by ';' ("10/second;500/hour"); each must allow a request."""
    try:
        items = tuple(parse_many(text))
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a rate limit such as '60/minute' or '10/second;500/hour'") \
            from None
    if not items or any(item.amount < 1 for item in items):
        raise ConfigError(f"{where}: {text!r} allows no request at all; each limit needs an amount of 1 or more")
    return items


def parse_int(where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {value!r} is not a whole number")
    if not low <= value <= high:
        raise ConfigError(f"{where}: {value} is out of range ({low}..{high})")
    return value


def parse_seconds(where: str, text: str, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number of seconds") from None
    if not 0 < value <= high:
        raise ConfigError(f"{where}: {text} is out of range (more than 0, at most {high:g} seconds)")
    return value


def parse_upstream_url(where: str, text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {text!r} is not an http(s) URL such as http://engine:8000")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{where}: {text!r} must have no query, fragment or credentials "
                          f"(the engine's key goes in {ENV_PREFIX}UPSTREAM_API_KEY)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{where}: {text!r} has an invalid port") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        raise ConfigError(f"{where}: {text!r} must be the engine's base URL, without /v1 (the gateway adds it)")
    return f"{parts.scheme}://{parts.netloc}{path}"


def parse_key(where: str, entry: object, default_rate: str, default_streams: int) -> ApiKey:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object with id and sha256")
    unknown = sorted(set(entry) - KEY_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(KEY_FIELDS))})")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise ConfigError(f"{where}: id {key_id!r} must match ^[a-z0-9][a-z0-9_.-]{{0,63}}$")
    digest = entry.get("sha256")
    # The value is never echoed: a key pasted here by mistake must not end up in a log.
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        raise ConfigError(f"{where} ({key_id}): sha256 must be 64 lowercase hex characters, the SHA-256 of the key "
                          "(not the key itself; the value is not shown)")
    rate = entry.get("rate_limit", default_rate)
    if not isinstance(rate, str):
        raise ConfigError(f"{where} ({key_id}): rate_limit must be a string such as '60/minute'")
    items = parse_rate(f"{where} ({key_id}) rate_limit", rate)
    streams = parse_int(f"{where} ({key_id}) max_streams", entry.get("max_streams", default_streams), 1, 10_000)
    return ApiKey(key_id, bytes.fromhex(digest), rate, tuple((item.amount, item.get_expiry()) for item in items),
                  streams)


def load_keys(path: str, default_rate: str, default_streams: int) -> tuple[ApiKey, ...]:
    var = ENV_PREFIX + "KEYS_FILE"
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{var}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{var}: {path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or set(document) != {"keys"} or not isinstance(document["keys"], list):
        raise ConfigError(f'{var}: {path} must hold an object {{"keys": [...]}} and nothing else')
    if not document["keys"]:
        raise ConfigError(f"{var}: {path} lists no keys; at least one is needed")
    keys: list[ApiKey] = []
    for index, entry in enumerate(document["keys"]):
        where = f"{var}: {path} keys[{index}]"
        key = parse_key(where, entry, default_rate, default_streams)
        if any(other.id == key.id for other in keys):
            raise ConfigError(f"{where}: id {key.id!r} is used twice; ids must be unique")
        if any(other.digest == key.digest for other in keys):
            raise ConfigError(f"{where} ({key.id}): the same sha256 is listed twice; each key needs its own entry")
        keys.append(key)
    return tuple(keys)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Every LLM_BACKEND_* setting, checked; ConfigError names the variable that is wrong."""
    def var(name: str) -> tuple[str, str]:
        return ENV_PREFIX + name, env.get(ENV_PREFIX + name, "").strip()

    name, url = var("UPSTREAM_URL")
    if not url:
        raise ConfigError(f"{name} is required: the engine's base URL, such as http://engine:8000")
    upstream_url = parse_upstream_url(name, url)
    name, upstream_key = var("UPSTREAM_API_KEY")
    if upstream_key and not all(33 <= ord(char) <= 126 for char in upstream_key):
        raise ConfigError(f"{name}: must be printable ASCII without spaces (the value is not shown)")
    name, rate = var("RATE_LIMIT")
    rate = rate or "60/minute"
    parse_rate(name, rate)
    name, streams_text = var("MAX_STREAMS")
    max_streams = parse_int(name, streams_text or "4", 1, 10_000)
    timeouts = []
    for suffix, default, high in (("CONNECT_TIMEOUT_S", "3", 600), ("READ_TIMEOUT_S", "300", 86_400),
                                  ("HEALTH_TIMEOUT_S", "2", 600)):
        name, text = var(suffix)
        timeouts.append(parse_seconds(name, text or default, high))
    name, body_text = var("MAX_BODY_BYTES")
    max_body_bytes = parse_int(name, body_text or str(DEFAULT_MAX_BODY_BYTES), 1024, 1 << 30)
    name, host = var("HOST")
    name, port_text = var("PORT")
    port = parse_int(name, port_text or "8080", 1, 65_535)
    name, level = var("LOG_LEVEL")
    level = (level or "info").lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name}: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    name, keys_file = var("KEYS_FILE")
    if not keys_file:
        raise ConfigError(f'{name} is required: a JSON file {{"keys": [{{"id": ..., "sha256": ...}}]}}')
    keys = load_keys(keys_file, rate, max_streams)
    return Settings(upstream_url=upstream_url, keys=keys, upstream_api_key=upstream_key, rate_limit=rate,
                    max_streams=max_streams, connect_timeout_s=timeouts[0], read_timeout_s=timeouts[1],
                    health_timeout_s=timeouts[2], max_body_bytes=max_body_bytes, host=host or "0.0.0.0", port=port,
                    log_level=level)


# ------------------------------------------------------------------------------------------------------- errors
def error_body(message: str, type_: str, code: str) -> bytes:
    """OpenAI's error shape, which OpenAI client libraries turn into their exceptions."""
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


def error_response(status: int, message: str, type_: str, code: str,
                   headers: Mapping[str, str] | None = None) -> Response:
    return Response(error_body(message, type_, code), status, headers, media_type="application/json")


def engine_fault(status: int) -> bool:
    """A 5xx, or the engine refusing the gateway's own key: a 503 for the client, whose request was not wrong."""
    return status >= 500 or status in (401, 403)


async def send_whole(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ------------------------------------------------------------------------------------------------------ metrics
class Metrics:
    """One registry per app, so that tests can build several apps in one process. Labels carry key ids."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("llm_backend_requests", "API requests answered, by key id, route and HTTP status.",
                                ["key_id", "route", "status"], registry=reg)
        self.tokens = Counter("llm_backend_tokens", "Tokens the engine reported in its usage, by key id, model "
                              "and type (prompt or completion).", ["key_id", "model", "type"], registry=reg)
        self.latency = Histogram("llm_backend_request_duration_seconds", "Time from request arrival to the last "
                                 "byte of the answer.", ["route", "stream"], buckets=LATENCY_BUCKETS, registry=reg)
        self.ttfb = Histogram("llm_backend_time_to_first_byte_seconds", "Time from request arrival to the first "
                              "byte of the engine's answer passed on.", ["route", "stream"], buckets=TTFB_BUCKETS,
                              registry=reg)
        self.in_flight = Gauge("llm_backend_in_flight_requests", "Chat completions being answered, by key id.",
                               ["key_id"], registry=reg)
        self.rate_limited = Counter("llm_backend_rate_limited", "Requests refused with 429, by key id and limit "
                                    "(rate or concurrency).", ["key_id", "limit"], registry=reg)
        self.upstream_errors = Counter("llm_backend_upstream_errors", "Engine failures, by reason (connect, timeout, "
                                       "status_5xx, auth, stream_interrupted).", ["reason"], registry=reg)
        self.engine_up = Gauge("llm_backend_engine_up", "1 when the last /health probe found the engine healthy.",
                               registry=reg)


# ------------------------------------------------------------------------------------------- keys and limits
class Gate:
    """Who is calling (constant-time key check) and whether they may, now (rate and concurrency per key).

    The rate is a moving window, as limits' MovingWindowRateLimiter counts it, kept here as the times of the
    requests inside each window: limits' MemoryStorage starts a thread to expire entries whenever its last one
    has ended (10 ms), which costs over a millisecond per request at a modest request rate."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys
        self.hits = {key.id: tuple(deque() for _ in key.windows) for key in keys}
        self.active = dict.fromkeys((key.id for key in keys), 0)

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """Compares the presented key's hash with every stored hash, without stopping at a match, so the time
        taken does not tell which key (or how much of a hash) matched."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.encode("latin-1")).digest()  # ASGI header values are latin-1
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def retry_after(self, key: ApiKey, now: float) -> int | None:
        """None when a request now is within every one of the key's limits; else the seconds until the oldest
        request in the full window leaves it. Counts nothing: only an admitted request is counted (`count`)."""
        for times, (amount, seconds) in zip(self.hits[key.id], key.windows, strict=True):
            while times and times[0] <= now - seconds:
                times.popleft()
            if len(times) >= amount:
                return max(1, math.ceil(times[0] + seconds - now))
        return None

    def count(self, key: ApiKey, now: float) -> None:
        for times in self.hits[key.id]:
            times.append(now)

    def acquire(self, key: ApiKey) -> bool:
        if self.active[key.id] >= key.max_streams:
            return False
        self.active[key.id] += 1
        return True

    def release(self, key: ApiKey) -> None:
        self.active[key.id] -= 1


# ----------------------------------------------------------------------------------------------- usage scanner
class UsageScanner:
    """Finds the usage event in an SSE byte stream without parsing any other event.

    Only complete lines are examined, and only those containing '"usage"' are JSON-parsed; the incomplete last
    line is kept for the next chunk, so an event split across chunks is still seen whole."""

    __slots__ = ("line", "prompt_tokens", "completion_tokens", "model")

    def __init__(self) -> None:
        self.line = b""
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.model: str | None = None

    def feed(self, chunk: bytes) -> None:
        data = self.line + chunk if self.line else chunk
        end = data.rfind(b"\n")
        if end < 0:
            self.line = data if len(data) <= MAX_SCANNED_LINE else b""
            return
        if data.find(USAGE_MARK, 0, end) >= 0:
            for line in data[:end].split(b"\n"):
                if USAGE_MARK in line and line.startswith(b"data:"):
                    self.read_event(line[5:])
        self.line = data[end + 1:]

    def read_event(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if isinstance(event, dict):
            self.read_usage(event)

    def read_usage(self, document: dict) -> None:
        usage = document.get("usage")
        if not isinstance(usage, dict):
            return
        for field in ("prompt_tokens", "completion_tokens"):
            value = usage.get(field)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, field, value)
        if isinstance(document.get("model"), str):
            self.model = document["model"]


# ----------------------------------------------------------------------------------------------------- requests
@dataclass(slots=True)
class Exchange:
    """What the access log and the metrics record about one request; never a body, a key or a header."""

    method: str
    path: str
    route: str
    client: str | None
    started: float
    key_id: str = "-"
    model: str | None = None
    stream: bool = False
    status: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttfb_s: float | None = None
    error: str | None = None


class ClientWriter:
    """Writes a stream's body to the client from its own task, while the request's task reads the engine.

    The reader only appends chunks; whatever arrived while the writer was busy, or all that one read from the
    engine's socket held, goes out as one ASGI message: one pass through uvicorn and one send() per batch instead
    of per token. The bytes and their order are unchanged; the reader waits when MAX_BATCH chunks are pending,
    so a slow client holds the engine back instead of filling memory."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.pending: list[bytes] = []
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.closing = False
        self.task = asyncio.create_task(self.run())
        self.task.add_done_callback(lambda _task: self.room.set())

    def put(self, chunk: bytes) -> None:
        self.pending.append(chunk)
        self.wake.set()

    async def make_room(self) -> None:
        """Waits until the writer has taken the pending chunks (it empties `pending` and sets `room` in one step,
        so chunks taken already need no wait). A writer that has ended (its send failed) takes none again, and
        its done-callback has set `room` already: clearing it would wait for ever, holding the key's slot. Its
        end ends the stream instead."""
        if self.pending and not self.task.done():
            self.room.clear()
            await self.room.wait()
        if self.task.done():
            self.task.result()  # the writer failed: its exception, here
            raise RuntimeError("the client writer ended before the stream did")

    async def finish(self) -> None:
        """Returns once everything put has been written."""
        self.closing = True
        self.wake.set()
        await self.task

    async def run(self) -> None:
        pending = self.pending
        while True:
            if not pending:
                if self.closing:
                    return
                await self.wake.wait()
                self.wake.clear()
                continue
            body = b"".join(pending) if len(pending) > 1 else pending[0]
            pending.clear()
            self.room.set()
            await self.send({"type": "http.response.body", "body": body, "more_body": True})


class ChatProxy(Response):
    """The response to one admitted chat completion. The whole upstream exchange runs inside it, so a single
    coroutine owns the upstream response from request to close, whatever ends it: the end of the stream, an
    engine failure, or the client going away (a watcher task cancels the exchange on http.disconnect; leaving
    `async with client.stream(...)` then closes the upstream connection and the engine stops generating)."""

    def __init__(self, gateway: Gateway, exchange: Exchange, key: ApiKey, payload: bytes) -> None:
        self.gateway = gateway
        self.exchange = exchange
        self.key = key
        self.payload = payload
        self.started = False
        self.disconnected = False
        self.background = None
        self.status_code = 200
        self.raw_headers = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self.watch_disconnect(receive, task))
        try:
            await (self.relay_stream(send) if self.exchange.stream else self.relay_whole(send))
        except asyncio.CancelledError:
            # Only the watcher's own cancellation ends the request quietly; any other (shutdown) goes on.
            if not self.disconnected or task.uncancel() > 0:
                raise
            self.exchange.error = "client_disconnected"
        finally:
            watcher.cancel()
            self.gateway.chat_done(self.exchange, self.key)

    async def watch_disconnect(self, receive: Receive, task: asyncio.Task) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        task.cancel()

    async def relay_stream(self, send: Send) -> None:
        gw = self.gateway
        try:
            async with gw.client.stream("POST", gw.chat_url, content=self.payload) as upstream:
                if upstream.status_code != 200:
                    await self.relay_refusal(send, upstream.status_code, upstream.headers, await upstream.aread())
                    return
                await self.pass_events(send, upstream)
        except httpx.TransportError as exc:
            if self.started:
                raise
            await self.engine_unavailable(send, exc)

    async def pass_events(self, send: Send, upstream: httpx.Response) -> None:
        """The hot path: the engine's bytes as received, scanned for the usage event but not otherwise looked at.
        The first chunk goes out at once; the rest through a ClientWriter, which batches what arrived together."""
        exchange = self.exchange
        exchange.status = 200
        self.started = True
        content_type = upstream.headers.get("content-type", "text/event-stream").encode("latin-1")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type), *SSE_HEADERS]})
        scanner = UsageScanner()
        feed = scanner.feed
        writer: ClientWriter | None = None
        try:
            chunks = upstream.aiter_raw()
            async for chunk in chunks:
                exchange.ttfb_s = time.perf_counter() - exchange.started
                feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                break
            writer = ClientWriter(send)
            put, pending = writer.put, writer.pending
            async for chunk in chunks:
                feed(chunk)
                put(chunk)
                if len(pending) >= MAX_BATCH:
                    await writer.make_room()
        except httpx.TransportError as exc:
            # The status is sent: end the stream with an error event (OpenAI's client raises it) and no [DONE],
            # so that the cut stream cannot pass for a complete one.
            reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "stream_interrupted"
            exchange.error = f"engine_{reason}"
            self.gateway.metrics.upstream_errors.labels(reason).inc()
            message = (f"the engine sent nothing for {self.gateway.settings.read_timeout_s:g} s"
                       if reason == "timeout" else "the engine's stream broke off")
            event = b"data: " + error_body(message, "server_error", "engine_stream_interrupted") + b"\n\n"
            writer = writer or ClientWriter(send)
            writer.put(event)
        except BaseException:
            if writer is not None:
                writer.task.cancel()
            raise
        finally:
            exchange.prompt_tokens = scanner.prompt_tokens
            exchange.completion_tokens = scanner.completion_tokens
            if scanner.model:
                exchange.model = scanner.model
        if writer is not None:
            await writer.finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def relay_whole(self, send: Send) -> None:
        gw = self.gateway
        try:
            upstream = await gw.client.post(gw.chat_url, content=self.payload)
        except httpx.TransportError as exc:
            await self.engine_unavailable(send, exc)
            return
        body = upstream.content
        if upstream.status_code != 200:
            await self.relay_refusal(send, upstream.status_code, upstream.headers, body)
            return
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            scanner = UsageScanner()
            scanner.read_usage(document)
            self.exchange.prompt_tokens = scanner.prompt_tokens
            self.exchange.completion_tokens = scanner.completion_tokens
            self.exchange.model = scanner.model or self.exchange.model
        self.exchange.status = 200
        self.exchange.ttfb_s = time.perf_counter() - self.exchange.started
        await send_whole(send, 200, body, upstream.headers.get("content-type", "application/json").encode("latin-1"))

    async def relay_refusal(self, send: Send, status: int, headers: httpx.Headers, body: bytes) -> None:
        """An engine 4xx goes back as it came (the client's request was wrong); a 5xx, or the engine refusing the
        gateway's own credentials, is the engine's fault: 503."""
        if engine_fault(status):
            self.exchange.error = f"engine_status_{status}"
            self.exchange.status = 503
            message = self.gateway.describe_fault(status)
            await send_whole(send, 503, error_body(message, "server_error", "engine_unavailable"))
            return
        self.exchange.status = status
        self.exchange.ttfb_s = time.perf_counter() - self.exchange.started
        await send_whole(send, status, body, headers.get("content-type", "application/json").encode("latin-1"))

    async def engine_unavailable(self, send: Send, exc: httpx.TransportError) -> None:
        reason, message = self.gateway.describe_failure(exc)
        self.exchange.error = f"engine_{reason}"
        self.exchange.status = 503
        await send_whole(send, 503, error_body(message, "server_error", "engine_unavailable"))


class Gateway:
    """Settings, the shared upstream client, keys and limits, metrics: what every request handler uses."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.gate = Gate(settings.keys)
        self.metrics = Metrics()
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.chat_url = settings.upstream_url + "/v1/chat/completions"
        self.models_url = settings.upstream_url + "/v1/models"
        self.health_url = settings.upstream_url + "/health"
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if settings.upstream_api_key:
            headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        self.client = httpx.AsyncClient(
            headers=headers, transport=transport, trust_env=False,
            timeout=httpx.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s,
                                  write=settings.read_timeout_s, pool=settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64,
                                keepalive_expiry=UPSTREAM_KEEPALIVE_S))
        self.models_timeout_s = max(settings.connect_timeout_s, MODELS_TIMEOUT_S)
        self.models_timeout = httpx.Timeout(self.models_timeout_s, connect=settings.connect_timeout_s,
                                            pool=settings.connect_timeout_s)
        # The engine's model ids (the metrics' model label values), when they were last asked for, and the
        # background task asking now, if any (kept here: the event loop holds only a weak reference to a task).
        self.model_ids: frozenset[str] = frozenset()
        self.models_read_at = -math.inf
        self.models_refresh: asyncio.Task | None = None

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        yield
        await self.client.aclose()

    def describe_failure(self, exc: httpx.TransportError, read_timeout_s: float | None = None) -> tuple[str, str]:
        """(metric reason, client message) for an engine that could not be reached or did not answer in time;
        `read_timeout_s` is the request's own read timeout, when it is not the read timeout setting."""
        settings = self.settings
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            reason = "timeout"
            message = f"the engine did not accept a connection within {settings.connect_timeout_s:g} s"
        elif isinstance(exc, httpx.TimeoutException):
            reason = "timeout"
            message = f"the engine sent nothing for {read_timeout_s or settings.read_timeout_s:g} s"
        elif isinstance(exc, httpx.ConnectError):
            reason, message = "connect", "the engine cannot be reached"
        else:
            reason, message = "connect", f"the engine dropped the connection ({type(exc).__name__})"
        self.metrics.upstream_errors.labels(reason).inc()
        logging.getLogger("llm_backend").warning("engine request failed: %s (%s: %s)", message, type(exc).__name__,
                                                 exc)
        return reason, message

    def describe_fault(self, status: int) -> str:
        """The client message for an engine answer that is the engine's (or the gateway's) fault, not the client's."""
        reason = "auth" if status in (401, 403) else "status_5xx"
        self.metrics.upstream_errors.labels(reason).inc()
        if reason == "auth":
            return f"the engine refused the gateway's credentials ({status}); check {ENV_PREFIX}UPSTREAM_API_KEY"
        return f"the engine failed to answer (status {status})"

    # --- handlers
    async def health(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            upstream = await self.client.get(self.health_url, timeout=self.settings.health_timeout_s)
            status = upstream.status_code
            message = f"the engine's /health answered {status}"
        except httpx.TimeoutException:
            status, message = 0, f"the engine's /health did not answer within {self.settings.health_timeout_s:g} s"
        except httpx.TransportError as exc:
            status, message = 0, f"the engine cannot be reached ({type(exc).__name__})"
        self.metrics.engine_up.set(1 if status == 200 else 0)
        if status == 200:
            return self.probed(request, started, Response(b'{"status":"ok","engine":"ok"}',
                                                          media_type="application/json"))
        return self.probed(request, started, error_response(503, message, "server_error", "engine_unavailable"))

    async def metrics_page(self, request: Request) -> Response:
        return self.probed(request, time.perf_counter(),
                           Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST))

    async def models(self, request: Request) -> Response:
        exchange = self.start(request, ROUTE_MODELS)
        refusal, key = self.admit(request, exchange)
        if refusal is not None:
            return self.done(exchange, refusal)
        assert key is not None
        self.gate.count(key, time.monotonic())
        try:
            upstream = await self.client.get(self.models_url, timeout=self.models_timeout)
        except httpx.TransportError as exc:
            reason, message = self.describe_failure(exc, self.models_timeout_s)
            exchange.error = f"engine_{reason}"
            return self.done(exchange, error_response(503, message, "server_error", "engine_unavailable"))
        if engine_fault(upstream.status_code):
            exchange.error = f"engine_status_{upstream.status_code}"
            return self.done(exchange, error_response(503, self.describe_fault(upstream.status_code), "server_error",
                                                      "engine_unavailable"))
        if upstream.status_code == 200:
            self.remember_models(upstream.content)
        return self.done(exchange, Response(upstream.content, upstream.status_code,
                                            media_type=upstream.headers.get("content-type", "application/json")))

    async def chat_completions(self, request: Request) -> Response:
        exchange = self.start(request, ROUTE_CHAT)
        refusal, key = self.admit(request, exchange)
        if refusal is not None:
            return self.done(exchange, refusal)
        assert key is not None
        raw = await self.read_body(request)
        if raw is None:
            return self.done(exchange, error_response(
                413, f"the request body is larger than {self.settings.max_body_bytes} bytes "
                f"({ENV_PREFIX}MAX_BODY_BYTES)", "invalid_request_error", "request_too_large"))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self.done(exchange, error_response(400, "the request body must be a JSON object",
                                                      "invalid_request_error", "invalid_json"))
        if isinstance(body.get("model"), str):
            exchange.model = body["model"][:200]
        exchange.stream = body.get("stream") is True
        if exchange.stream:
            # Usage is counted from the engine's final usage event, which it sends only when asked.
            options = body.get("stream_options")
            if not isinstance(options, dict) or options.get("include_usage") is not True:
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                raw = json.dumps(body, separators=(",", ":")).encode()
        # Checked again, with no await before the count: other requests may have been admitted while this body
        # was read. Only an admitted request (within the rate and the concurrency limit) is counted.
        now = time.monotonic()
        refusal = self.over_rate(key, now)
        if refusal is not None:
            return self.done(exchange, refusal)
        if not self.gate.acquire(key):
            self.metrics.rate_limited.labels(key.id, "concurrency").inc()
            return self.done(exchange, error_response(
                429, f"too many concurrent requests for this key (at most {key.max_streams}); retry when one ends",
                "requests", "concurrency_limit_exceeded", {"retry-after": "1"}))
        self.gate.count(key, now)
        self.metrics.in_flight.labels(key.id).inc()
        if now - self.models_read_at > MODELS_TTL_S and self.models_refresh is None:
            self.models_refresh = asyncio.create_task(self.refresh_models())
        return ChatProxy(self, exchange, key, raw)

    async def read_body(self, request: Request) -> bytes | None:
        """The request's body, or None when it is larger than the limit; no more than that is read."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    # --- the engine's model ids
    async def refresh_models(self) -> None:
        """Reads the engine's model ids in the background; a failure keeps the ids known until the next try."""
        self.models_read_at = time.monotonic()
        try:
            upstream = await self.client.get(self.models_url, timeout=self.models_timeout)
            if upstream.status_code == 200:
                self.remember_models(upstream.content)
            else:
                logging.getLogger("llm_backend").debug("model ids not read: /v1/models answered %s",
                                                       upstream.status_code)
        except httpx.HTTPError as exc:
            logging.getLogger("llm_backend").debug("model ids not read: %s", type(exc).__name__)
        finally:
            self.models_refresh = None

    def remember_models(self, content: bytes) -> None:
        try:
            document = json.loads(content)
        except ValueError:
            return
        data = document.get("data") if isinstance(document, dict) else None
        if isinstance(data, list):
            self.model_ids = frozenset(item["id"] for item in data
                                       if isinstance(item, dict) and isinstance(item.get("id"), str))
            self.models_read_at = time.monotonic()

    # --- bookkeeping
    def probed(self, request: Request, started: float, response: Response) -> Response:
        """/health and /metrics are logged at debug level only: healthchecks and scrapes would flood the log."""
        if self.log.isEnabledFor(logging.DEBUG):
            exchange = self.start(request, request.url.path)
            exchange.started, exchange.status = started, response.status_code
            self.log.debug(self.access_line(exchange, time.perf_counter() - started))
        return response

    def start(self, request: Request, route: str) -> Exchange:
        client = request.scope.get("client")
        return Exchange(request.method, request.url.path, route, client[0] if client else None, time.perf_counter())

    def admit(self, request: Request, exchange: Exchange) -> tuple[Response | None, ApiKey | None]:
        """The caller's key, and the 401 or 429 refusing them, if any. Counts nothing against the rate: the
        handler counts a request once it is admitted."""
        key = self.gate.authenticate(request.headers.get("authorization"))
        if key is None:
            return error_response(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                                   "invalid_request_error", "invalid_api_key"), None
        exchange.key_id = key.id
        return self.over_rate(key, time.monotonic()), key

    def over_rate(self, key: ApiKey, now: float) -> Response | None:
        """The 429 for a key whose rate is used up; None, counting nothing, when a request may go on."""
        wait = self.gate.retry_after(key, now)
        if wait is None:
            return None
        self.metrics.rate_limited.labels(key.id, "rate").inc()
        return error_response(429, f"rate limit of {key.rate_limit} exceeded for this key; retry in {wait} s",
                              "requests", "rate_limit_exceeded", {"retry-after": str(wait)})

    def done(self, exchange: Exchange, response: Response) -> Response:
        exchange.status = response.status_code
        exchange.ttfb_s = time.perf_counter() - exchange.started
        self.record(exchange)
        return response

    def chat_done(self, exchange: Exchange, key: ApiKey) -> None:
        self.gate.release(key)
        self.metrics.in_flight.labels(key.id).dec()
        self.record(exchange)

    def record(self, exchange: Exchange) -> None:
        latency = time.perf_counter() - exchange.started
        metrics = self.metrics
        stream = "true" if exchange.stream else "false"
        metrics.requests.labels(exchange.key_id, exchange.route, str(exchange.status)).inc()
        metrics.latency.labels(exchange.route, stream).observe(latency)
        if exchange.ttfb_s is not None:
            metrics.ttfb.labels(exchange.route, stream).observe(exchange.ttfb_s)
        # Only ids the engine listed: a client's made-up model name must not become a new label value.
        model = exchange.model if exchange.model in self.model_ids else OTHER_MODEL
        if exchange.prompt_tokens is not None:
            metrics.tokens.labels(exchange.key_id, model, "prompt").inc(exchange.prompt_tokens)
        if exchange.completion_tokens is not None:
            metrics.tokens.labels(exchange.key_id, model, "completion").inc(exchange.completion_tokens)
        if self.log.isEnabledFor(logging.INFO):
            self.log.info(self.access_line(exchange, latency))

    @staticmethod
    def access_line(exchange: Exchange, latency: float) -> str:
        return json.dumps({
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "key_id": exchange.key_id,
            "method": exchange.method, "path": exchange.path, "model": exchange.model, "status": exchange.status,
            "stream": exchange.stream, "prompt_tokens": exchange.prompt_tokens,
            "completion_tokens": exchange.completion_tokens,
            "ttfb_ms": None if exchange.ttfb_s is None else round(exchange.ttfb_s * 1000, 2),
            "latency_ms": round(latency * 1000, 2), "client": exchange.client, "error": exchange.error,
        }, ensure_ascii=False)


async def not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    return error_response(status, f"{request.method} {request.url.path}: {code.replace('_', ' ')}",
                          "invalid_request_error", code)


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The gateway as an ASGI app; `transport` replaces the network to the engine (tests)."""
    gateway = Gateway(settings, transport)
    app = FastAPI(title="llm_backend", docs_url=None, redoc_url=None, openapi_url=None, lifespan=gateway.lifespan)
    app.state.gateway = gateway
    for path, endpoint, methods in (("/health", gateway.health, ["GET"]), ("/metrics", gateway.metrics_page, ["GET"]),
                                    (ROUTE_MODELS, gateway.models, ["GET"]),
                                    (ROUTE_CHAT, gateway.chat_completions, ["POST"])):
        app.add_api_route(path, endpoint, methods=methods, response_model=None, include_in_schema=False)
    app.add_exception_handler(StarletteHTTPException, not_found)
    return app


# -------------------------------------------------------------------------------------------------------- main
class JsonFormatter(logging.Formatter):
    """Access-log records are JSON already; every other record becomes one JSON line too."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER:
            return record.getMessage()
        line: dict[str, Any] = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                                "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every upstream request at INFO: noise in the log and CPU on the hot path.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as exc:
        sys.exit(f"llm_backend: configuration error: {exc}")
    configure_logging(settings.log_level)
    disable_created_metrics()  # no *_created series: one timestamp per series that dashboards do not use
    logging.getLogger("llm_backend").info(
        "serving on %s:%s for %d key(s), engine %s", settings.host, settings.port, len(settings.keys),
        settings.upstream_url)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                log_level=settings.log_level, access_log=False, server_header=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


if __name__ == "__main__":
    main()
