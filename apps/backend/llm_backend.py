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

import argparse
import asyncio
import csv
import hashlib
import hmac
import importlib.util
import json
import logging
import math
import os
import re
import resource
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
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
from redis.exceptions import RedisError
from shared_limits import SharedLimits, StoreUnavailable
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

# httpcore tries `import sniffio` several times per request; sniffio is not in the image, and a failed import
# searches sys.path every time (~0.1 ms each, over half a millisecond per request). A None entry makes the
# import fail at once, which httpcore reads as "asyncio", as it would without the entry.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

ENV_PREFIX = "LLM_BACKEND_"
KEY_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_FIELDS = {"id", "sha256", "rate_limit", "max_streams", "enabled", "max_n", "max_tokens", "max_messages"}
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
ROUTE_COMPLETIONS = "/v1/completions"
ROUTE_RESPONSES = "/v1/responses"
ROUTE_EMBEDDINGS = "/v1/embeddings"
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
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20
# How often the keys file is looked at for a change (SIGHUP reads it at once).
KEYS_POLL_S = 2.0
# A shared in-flight entry outlives its request's deadline by this much before it ends on its own (a host that died
# mid-request frees its slots then).
LEASE_MARGIN_S = 60.0
# What the gateway asks of the shared store (the label of llm_backend_limits_store_errors_total).
STORE_OPERATIONS = ("admit", "hit", "count", "release", "usage")
# The container's own healthcheck connects from here: never refused by the connection cap, so /health answers
# while the cap is reached (the watchdog would otherwise restart the backend, cutting every stream).
LOOPBACK = frozenset({"127.0.0.1", "::1"})
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


# ----------------------------------------------------------------------------------------------------- settings
class ConfigError(ValueError):
    """A setting is wrong; the message starts with the name of the environment variable."""


@dataclass(frozen=True)
class Caps:
    """What one request may ask of the engine: choices (`n`), tokens to generate, messages (or inputs)."""
    n: int = 16
    tokens: int = 131_072
    messages: int = 2048


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: bytes  # sha256 of the key itself; the key is never stored
    rate_limit: str
    windows: tuple[tuple[int, float], ...]  # (requests, seconds) of each limit in rate_limit
    max_streams: int
    caps: Caps = Caps()
    enabled: bool = True


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
    keys_file: str = ""
    caps: Caps = Caps()
    metrics_token: str = ""
    max_in_flight: int = 256
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    request_timeout_s: float = 1800.0
    send_timeout_s: float = 60.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # A fleet's shared store of limits and usage (redis://, rediss:// or unix://); "" counts on this host only.
    limits_url: str = ""
    limits_failure: str = "open"
    limits_timeout_s: float = 0.5


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


def parse_key(where: str, entry: object, default_rate: str, default_streams: int, default_caps: Caps) -> ApiKey:
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
    caps = Caps(*(parse_int(f"{where} ({key_id}) {field}", entry.get(field, default), 1, high)
                  for field, default, high in caps_fields(default_caps)))
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where} ({key_id}): enabled must be true or false")
    return ApiKey(key_id, bytes.fromhex(digest), rate, tuple((item.amount, item.get_expiry()) for item in items),
                  streams, caps, enabled)


def caps_fields(caps: Caps) -> tuple[tuple[str, int, int], ...]:
    """(name, value, highest) of each cap, named as in a key's entry (the settings add MAX_ and upper-case)."""
    return (("max_n", caps.n, 1024), ("max_tokens", caps.tokens, 10_000_000),
            ("max_messages", caps.messages, 1_000_000))


def load_keys(path: str, default_rate: str, default_streams: int, default_caps: Caps = Caps()) -> tuple[ApiKey, ...]:
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
        key = parse_key(where, entry, default_rate, default_streams, default_caps)
        if any(other.id == key.id for other in keys):
            raise ConfigError(f"{where}: id {key.id!r} is used twice; ids must be unique")
        for other in keys:
            if other.digest == key.digest:
                raise ConfigError(f"{where} ({key.id}): the same sha256 is listed under ids {other.id!r} and "
                                  f"{key.id!r}; each key needs its own entry")
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
    name, metrics_token = var("METRICS_TOKEN")
    if metrics_token and (len(metrics_token) < 16 or not all(33 <= ord(char) <= 126 for char in metrics_token)):
        raise ConfigError(f"{name}: must be 16 or more printable ASCII characters without spaces "
                          "(the value is not shown)")
    numbers = {}
    for suffix, default, low, high in (("MAX_IN_FLIGHT", 256, 1, 100_000), ("MAX_CONNECTIONS", 1000, 16, 1_000_000),
                                       ("MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES, 1024, 1 << 34)):
        name, text = var(suffix)
        numbers[suffix] = parse_int(name, text or str(default), low, high)
    caps = Caps(*(parse_int(var(field.upper())[0], var(field.upper())[1] or str(default), 1, high)
                  for field, default, high in caps_fields(Caps())))
    for suffix, default, high in (("HEADER_TIMEOUT_S", "10", 600), ("BODY_TIMEOUT_S", "60", 3600),
                                  ("REQUEST_TIMEOUT_S", "1800", 604_800), ("SEND_TIMEOUT_S", "60", 3600)):
        name, text = var(suffix)
        timeouts.append(parse_seconds(name, text or default, high))
    name, keys_file = var("KEYS_FILE")
    if not keys_file:
        raise ConfigError(f'{name} is required: a JSON file {{"keys": [{{"id": ..., "sha256": ...}}]}}')
    keys = load_keys(keys_file, rate, max_streams, caps)
    name, limits_url = var("LIMITS_URL")
    if limits_url:
        parse_limits_url(name, limits_url)
    name, failure = var("LIMITS_FAILURE")
    failure = (failure or "open").lower()
    if failure not in ("open", "closed"):
        raise ConfigError(f"{name}: {failure!r} is not open (count on this host while the store is unreachable) "
                          "or closed (refuse with 503)")
    name, text = var("LIMITS_TIMEOUT_S")
    limits_timeout_s = parse_seconds(name, text or "0.5", 30)
    return Settings(upstream_url=upstream_url, keys=keys, upstream_api_key=upstream_key, rate_limit=rate,
                    max_streams=max_streams, connect_timeout_s=timeouts[0], read_timeout_s=timeouts[1],
                    health_timeout_s=timeouts[2], max_body_bytes=max_body_bytes, host=host or "0.0.0.0", port=port,
                    log_level=level, keys_file=keys_file, caps=caps, metrics_token=metrics_token,
                    max_in_flight=numbers["MAX_IN_FLIGHT"], max_connections=numbers["MAX_CONNECTIONS"],
                    header_timeout_s=timeouts[3], body_timeout_s=timeouts[4], request_timeout_s=timeouts[5],
                    send_timeout_s=timeouts[6], max_response_bytes=numbers["MAX_RESPONSE_BYTES"],
                    limits_url=limits_url, limits_failure=failure, limits_timeout_s=limits_timeout_s)


def parse_limits_url(where: str, text: str) -> None:
    """redis://[:password@]host[:port][/db], rediss:// (TLS) or unix:///path; what is wrong is said without the
    URL, which may hold the store's password."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{where}: not a URL (the value is not shown)") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{where}: the scheme must be redis, rediss or unix; got {parts.scheme!r}")
    if parts.scheme == "unix" and not parts.path.startswith("/"):
        raise ConfigError(f"{where}: a unix:// URL needs an absolute socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{where}: a redis URL needs a host (redis://:password@host:6379/0)")
    if any(ord(char) < 33 or ord(char) > 126 for char in text):
        raise ConfigError(f"{where}: spaces and control characters are not allowed (the value is not shown)")


# ------------------------------------------------------------------------------------------------------- errors
def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    """OpenAI's error shape, which OpenAI client libraries turn into their exceptions."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def error_response(status: int, message: str, type_: str, code: str,
                   headers: Mapping[str, str] | None = None, param: str | None = None) -> Response:
    return Response(error_body(message, type_, code, param), status, headers, media_type="application/json")


def invalid(param: str, message: str, code: str) -> Response:
    """A 400 naming the request's field, as OpenAI answers one."""
    return error_response(400, message, "invalid_request_error", code, param=param)


def loggable(text: str) -> str:
    """The text with what UTF-8 cannot encode (a lone surrogate a client sent) replaced: a log line must be written."""
    return text.encode("utf-8", "replace").decode("utf-8")


def engine_fault(status: int) -> bool:
    """A 5xx, or the engine refusing the gateway's own key: a 503 for the client, whose request was not wrong."""
    return status >= 500 or status in (401, 403)


async def read_capped(declared: str, chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """A whole body, or None when it is larger than `limit` (by its Content-Length, or once that much has come):
    no more than that is read. A request's body and a whole answer of the engine's are read by it."""
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


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
        self.in_flight = Gauge("llm_backend_in_flight_requests", "Engine requests (chat, completions, responses, "
                               "embeddings) being answered, by key id.", ["key_id"], registry=reg)
        self.rate_limited = Counter("llm_backend_rate_limited", "Requests refused with 429, by key id and limit "
                                    "(rate or concurrency).", ["key_id", "limit"], registry=reg)
        self.upstream_errors = Counter("llm_backend_upstream_errors", "Engine failures, by reason (connect, timeout, "
                                       "status_5xx, auth, stream_interrupted, too_large).", ["reason"], registry=reg)
        self.upstream_retries = Counter("llm_backend_upstream_retries", "Requests sent to the engine a second "
                                        "time after a pooled connection was found closed before any byte of the "
                                        "answer.", registry=reg)
        self.limits_store_errors = Counter(
            "llm_backend_limits_store_errors", "Calls to the shared limits store (LLM_BACKEND_LIMITS_URL) that failed, "
            "by operation; while it fails, limits are counted on this host (LIMITS_FAILURE=open) or requests refused "
            "(closed).", ["operation"], registry=reg)
        self.busy = Counter("llm_backend_busy", "Requests refused with 503 because the host's in-flight limit "
                            "(LLM_BACKEND_MAX_IN_FLIGHT) was reached.", registry=reg)
        self.deadlines = Counter("llm_backend_deadlines", "Requests ended by a deadline, by kind (request: the total "
                                 "deadline; send: the client did not take the answer).", ["kind"], registry=reg)
        self.connections = Gauge("llm_backend_open_connections", "Client connections open.", registry=reg)
        self.connections_closed = Counter("llm_backend_connections_closed", "Client connections closed by the "
                                          "gateway, by reason (header_timeout, connection_limit).", ["reason"],
                                          registry=reg)
        self.keys_reloads = Counter("llm_backend_keys_reloads", "Readings of a changed keys file, by result (ok, "
                                    "error: the keys in use are kept).", ["result"], registry=reg)
        self.keys_loaded = Gauge("llm_backend_keys", "Keys in use, by state (enabled, disabled).", ["state"],
                                 registry=reg)
        self.engine_up = Gauge("llm_backend_engine_up", "1 when the last /health probe found the engine healthy.",
                               registry=reg)


# ------------------------------------------------------------------------------------------- keys and limits
class Gate:
    """Who is calling (constant-time key check) and whether they may, now (rate and concurrency per key, and the
    host's in-flight limit over all keys).

    The rate is a moving window, as limits' MovingWindowRateLimiter counts it, kept here as the times of the
    requests inside each window: limits' MemoryStorage starts a thread to expire entries whenever its last one
    has ended (10 ms), which costs over a millisecond per request at a modest request rate."""

    def __init__(self, keys: tuple[ApiKey, ...], max_in_flight: int = 1_000_000) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.keys: tuple[ApiKey, ...] = ()
        self.hits: dict[str, tuple[deque, ...]] = {}
        self.active: dict[str, int] = {}
        self.replace(keys)

    def replace(self, keys: tuple[ApiKey, ...]) -> None:
        """New keys (a reloaded file): a key id kept keeps its requests in the window and its requests in flight,
        which end as they would have; a removed or disabled key admits nothing more from now on."""
        hits = {}
        for key in keys:
            old = self.hits.get(key.id)
            kept = next((other for other in self.keys if other.id == key.id), None)
            hits[key.id] = old if old is not None and kept is not None and kept.windows == key.windows \
                else tuple(deque() for _ in key.windows)
            self.active.setdefault(key.id, 0)
        self.keys, self.hits = keys, hits

    def current(self, key: ApiKey) -> ApiKey | None:
        """The key as the keys now in use have it (its limits may have changed), or None once it was removed."""
        return next((other for other in self.keys if other.id == key.id and other.digest == key.digest), None)

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
        hits = self.hits.get(key.id)
        for times in hits or ():
            times.append(now)

    def busy(self) -> bool:
        return self.in_flight >= self.max_in_flight

    def acquire(self, key: ApiKey) -> bool:
        if self.active.get(key.id, 0) >= key.max_streams:
            return False
        self.active[key.id] = self.active.get(key.id, 0) + 1
        self.in_flight += 1
        return True

    def release(self, key: ApiKey) -> None:
        self.active[key.id] -= 1
        self.in_flight -= 1

    def enter_host(self) -> None:
        """A request whose key the shared store counted: only the host's own in-flight count is kept here."""
        self.in_flight += 1

    def leave_host(self) -> None:
        self.in_flight -= 1


def store_windows(key: ApiKey) -> tuple[tuple[int, int], ...]:
    """The key's rate windows as the shared store counts them: (requests, whole seconds)."""
    return tuple((amount, max(1, round(seconds))) for amount, seconds in key.windows)


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
        """Chat, completions and embeddings carry `usage` at the top; the Responses API in `response` (its
        `response.completed` event, or a whole answer), with input and output tokens."""
        if not isinstance(document.get("usage"), dict) and isinstance(document.get("response"), dict):
            document = document["response"]
        usage = document.get("usage")
        if not isinstance(usage, dict):
            return
        for field, names in (("prompt_tokens", ("prompt_tokens", "input_tokens")),
                             ("completion_tokens", ("completion_tokens", "output_tokens"))):
            for name in names:
                value = usage.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(self, field, value)
        if isinstance(document.get("model"), str):
            self.model = document["model"]


# ----------------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Route:
    """An engine route the gateway passes on: what it checks and counts in a request to it."""

    path: str
    streams: bool  # "stream": true is streamed back as SSE
    usage_option: bool  # stream_options.include_usage is asked for, so that a stream ends with its usage
    has_n: bool  # "n" choices
    token_fields: tuple[str, ...]  # capped by Caps.tokens
    items_field: str  # capped by Caps.messages: the messages, or a batch of prompts or inputs
    items_list: bool  # items_field must be an array when given (chat messages)


ROUTES = {route.path: route for route in (
    Route(ROUTE_CHAT, True, True, True, ("max_tokens", "max_completion_tokens"), "messages", True),
    Route(ROUTE_COMPLETIONS, True, True, True, ("max_tokens",), "prompt", False),
    Route(ROUTE_RESPONSES, True, False, False, ("max_output_tokens",), "input", False),
    Route(ROUTE_EMBEDDINGS, False, False, False, (), "input", False),
)}
CAP_OF_FIELD = {"n": ("n", "max_n"), "max_tokens": ("tokens", "max_tokens"),
                "max_completion_tokens": ("tokens", "max_tokens"), "max_output_tokens": ("tokens", "max_tokens")}


def whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def items_in(value: object) -> int:
    """How many prompts, inputs or messages a field holds: a list of token ids is one prompt, not many."""
    if not isinstance(value, list):
        return 1
    return 1 if value and all(whole_number(item) for item in value) else len(value)


def check_body(route: Route, body: dict, caps: Caps) -> Response | None:
    """The OpenAI-style 400 for a field the gateway judges (those it acts on, and the caps); None when they are
    fine. Everything else is the engine's to judge."""
    if route.streams:
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            return invalid("stream", f"stream must be true or false; got {json.dumps(stream)[:40]}", "invalid_type")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            return invalid("stream_options", "stream_options must be an object", "invalid_type")
        if isinstance(options, dict) and options.get("include_usage") is not None \
                and not isinstance(options["include_usage"], bool):
            return invalid("stream_options.include_usage", "stream_options.include_usage must be true or false",
                           "invalid_type")
    for field in (("n",) if route.has_n else ()) + route.token_fields:
        value = body.get(field)
        if value is None:
            continue
        cap_name, setting = CAP_OF_FIELD[field]
        high = getattr(caps, cap_name)
        if not whole_number(value):
            return invalid(field, f"{field} must be a whole number; got {json.dumps(value)[:40]}", "invalid_type")
        if value < 1:
            return invalid(field, f"{field} must be 1 or more; got {value}", "integer_below_min_value")
        if value > high:
            return invalid(field, f"{field} is {value}; this key may ask for at most {high} "
                           f"({setting} of the key, or {ENV_PREFIX}{setting.upper()})", "integer_above_max_value")
    items = body.get(route.items_field)
    if route.items_list and items is not None and not isinstance(items, list):
        return invalid(route.items_field, f"{route.items_field} must be an array", "invalid_type")
    if items is not None and items_in(items) > caps.messages:
        return invalid(route.items_field, f"{route.items_field} holds {items_in(items)} items; this key may send at "
                       f"most {caps.messages} (max_messages of the key, or {ENV_PREFIX}MAX_MESSAGES)",
                       "array_above_max_length")
    return None


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
    # The request's in-flight entry in the shared store (empty: counted on this host).
    lease: str = ""


class ClientStalled(Exception):
    """The client took no more of the answer for the send timeout."""


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


class EngineProxy(Response):
    """The response to one admitted engine request. The whole upstream exchange runs inside it, so a single
    coroutine owns the upstream response from request to close, whatever ends it: the end of the answer, an
    engine failure, a deadline, or the client going away (a watcher task cancels the exchange on
    http.disconnect; closing the upstream response then closes its connection and the engine stops generating).

    Two deadlines bound what a request holds (its key's slot, a place in the host's in-flight limit, the
    engine's work): the request's total time, and the time one write to the client may wait for the client."""

    def __init__(self, gateway: Gateway, exchange: Exchange, key: ApiKey, route: Route, payload: bytes) -> None:
        self.gateway = gateway
        self.exchange = exchange
        self.key = key
        self.route = route
        self.url = gateway.settings.upstream_url + route.path
        self.payload = payload
        self.started = False
        self.disconnected = False
        self.background = None
        self.status_code = 200
        self.raw_headers = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gw = self.gateway
        watcher = asyncio.create_task(self.watch_disconnect(receive, task))
        send = self.timed(send)
        try:
            async with asyncio.timeout(gw.settings.request_timeout_s):
                await (self.relay_stream(send) if self.exchange.stream else self.relay_whole(send))
        except TimeoutError:
            gw.metrics.deadlines.labels("request").inc()
            self.exchange.error = "request_timeout"
            await self.end_late(send, f"the answer took longer than {gw.settings.request_timeout_s:g} s "
                                f"({ENV_PREFIX}REQUEST_TIMEOUT_S)", "request_timeout", 504)
        except ClientStalled:
            gw.metrics.deadlines.labels("send").inc()
            self.exchange.error = "client_send_timeout"
        except asyncio.CancelledError:
            # Only the watcher's own cancellation ends the request quietly; any other (shutdown) goes on.
            if not self.disconnected or task.uncancel() > 0:
                raise
            self.exchange.error = "client_disconnected"
        finally:
            watcher.cancel()
            gw.engine_done(self.exchange, self.key)

    def timed(self, send: Send) -> Send:
        """`send`, which gives up when the client has taken nothing for the send timeout: a client that stops
        reading would otherwise hold its slot (and the engine's work) for as long as it likes."""
        limit = self.gateway.settings.send_timeout_s

        async def timed_send(message: Any) -> None:
            try:
                async with asyncio.timeout(limit):
                    await send(message)
            except TimeoutError:
                raise ClientStalled from None
        return timed_send

    async def end_late(self, send: Send, message: str, code: str, status: int) -> None:
        """Ends a request a deadline cut: with an error status if none was sent, else with an error event."""
        try:
            if not self.started:
                self.exchange.status = status
                await send_whole(send, status, error_body(message, "server_error", code))
                return
            event = b"data: " + error_body(message, "server_error", code) + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientStalled:
            pass

    async def watch_disconnect(self, receive: Receive, task: asyncio.Task) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        task.cancel()

    async def open_upstream(self) -> httpx.Response:
        """The engine's answer, its headers read. A pooled connection the engine closed while it was idle fails
        before any byte of the answer (the engine never saw the request): the request is sent once more (httpx
        drops the connection it found closed); nothing has reached the client yet. Once only: an engine that
        fails again is down, and the client gets the 503."""
        gw = self.gateway
        for attempt in (1, 2):
            request = gw.client.build_request("POST", self.url, content=self.payload)
            try:
                return await gw.client.send(request, stream=True)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt == 2:
                    raise
                gw.metrics.upstream_retries.inc()
                logging.getLogger("llm_backend").info("engine connection found closed (%s); sent again",
                                                      type(exc).__name__)
        raise AssertionError("unreachable")

    async def read_bounded(self, upstream: httpx.Response) -> bytes | None:
        """A whole answer, or None when it is larger than LLM_BACKEND_MAX_RESPONSE_BYTES (no more is read)."""
        return await read_capped(upstream.headers.get("content-length", ""), upstream.aiter_bytes(),
                                 self.gateway.settings.max_response_bytes)

    async def relay_stream(self, send: Send) -> None:
        try:
            upstream = await self.open_upstream()
        except httpx.TransportError as exc:
            await self.engine_unavailable(send, exc)
            return
        try:
            if upstream.status_code != 200:
                await self.relay_answer(send, upstream)
                return
            await self.pass_events(send, upstream)
        finally:
            await upstream.aclose()

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
                exchange.model = loggable(scanner.model[:200])
        if writer is not None:
            await writer.finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def relay_whole(self, send: Send) -> None:
        try:
            upstream = await self.open_upstream()
        except httpx.TransportError as exc:
            await self.engine_unavailable(send, exc)
            return
        try:
            await self.relay_answer(send, upstream)
        finally:
            await upstream.aclose()

    async def relay_answer(self, send: Send, upstream: httpx.Response) -> None:
        """A whole answer (a refusal of a streamed request too), read within the size bound. An engine 4xx goes
        back as it came (the client's request was wrong), except a route the engine does not serve (OpenAI's 404
        then); a 5xx, or the engine refusing the gateway's own credentials, is the engine's fault: 503."""
        exchange, gw = self.exchange, self.gateway
        status = upstream.status_code
        try:
            body = await self.read_bounded(upstream)
        except httpx.TransportError as exc:
            await self.engine_unavailable(send, exc)
            return
        if body is None:
            gw.metrics.upstream_errors.labels("too_large").inc()
            exchange.error, exchange.status = "engine_answer_too_large", 503
            await send_whole(send, 503, error_body(
                f"the engine's answer is larger than {gw.settings.max_response_bytes} bytes "
                f"({ENV_PREFIX}MAX_RESPONSE_BYTES)", "server_error", "engine_answer_too_large"))
            return
        if status in (404, 501) and not engine_error_message(body):
            exchange.status = 404
            await send_whole(send, 404, error_body(f"the engine does not serve POST {self.route.path}",
                                                   "invalid_request_error", "not_found"))
            return
        if engine_fault(status):
            exchange.error, exchange.status = f"engine_status_{status}", 503
            await send_whole(send, 503, error_body(gw.describe_fault(status), "server_error", "engine_unavailable"))
            return
        if status == 200:
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                document = None
            if isinstance(document, dict):
                scanner = UsageScanner()
                scanner.read_usage(document)
                exchange.prompt_tokens = scanner.prompt_tokens
                exchange.completion_tokens = scanner.completion_tokens
                exchange.model = loggable(scanner.model[:200]) if scanner.model else exchange.model
        exchange.status = status
        exchange.ttfb_s = time.perf_counter() - exchange.started
        await send_whole(send, status, body, upstream.headers.get("content-type", "application/json").encode("latin-1"))

    async def engine_unavailable(self, send: Send, exc: httpx.TransportError) -> None:
        reason, message = self.gateway.describe_failure(exc)
        self.exchange.error = f"engine_{reason}"
        self.exchange.status = 503
        await send_whole(send, 503, error_body(message, "server_error", "engine_unavailable"))


# The bodies engines send for a route they do not have (uvicorn/FastAPI's under vLLM, llama.cpp's server's):
# not an answer about the request, which the client is told in OpenAI's words instead.
GENERIC_NOT_FOUND = frozenset({"not found", "file not found"})


def engine_error_message(body: bytes) -> str | None:
    """The message of an engine's OpenAI-style error about the request itself (an unknown model, a bad field), or
    None for a bare "not found" or "not implemented" of a route the engine does not serve."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = document.get("error") if isinstance(document, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or message.strip().lower() in GENERIC_NOT_FOUND:
        return None
    if "does not support" in message.lower() or "not supported" in message.lower():
        return None  # llama.cpp's 501 for embeddings without --embeddings
    return message


class Gateway:
    """Settings, the shared upstream client, keys and limits, metrics: what every request handler uses."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.gate = Gate(settings.keys, settings.max_in_flight)
        self.metrics = Metrics()
        self.count_keys()
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.models_url = settings.upstream_url + "/v1/models"
        self.health_url = settings.upstream_url + "/health"
        self.metrics_digest = hashlib.sha256(settings.metrics_token.encode()).digest() \
            if settings.metrics_token else None
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
        # The keys file as last read (inode, size, modification time), and SIGHUP's wake-up of its watcher.
        self.keys_stamp = self.stamp()
        self.keys_wake = asyncio.Event()
        # The fleet's shared limits and usage ledger, when configured; background calls to it (releases, refused
        # requests counted, usage) are kept here until they end.
        self.shared = SharedLimits(settings.limits_url, settings.limits_timeout_s,
                                   settings.request_timeout_s + LEASE_MARGIN_S) if settings.limits_url else None
        self.store_tasks: set[asyncio.Task] = set()
        # Each operation's error count is there at 0 from the start: Prometheus's increase() then sees the first one.
        if self.shared is not None:
            for operation in STORE_OPERATIONS:
                self.metrics.limits_store_errors.labels(operation)

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        watcher = asyncio.create_task(self.watch_keys())
        with suppress(NotImplementedError, RuntimeError, ValueError):  # no signals outside the main thread
            loop.add_signal_handler(signal.SIGHUP, self.keys_wake.set)
        try:
            yield
        finally:
            watcher.cancel()
            await self.client.aclose()
            if self.shared is not None:
                if self.store_tasks:
                    await asyncio.wait(self.store_tasks, timeout=2)
                await self.shared.close()

    # --- the shared store: what fails is counted, never raised into a request
    def in_background(self, operation: str, call: Any) -> None:
        async def run() -> None:
            try:
                await call
            except StoreUnavailable as exc:
                self.store_failed(operation, exc)
        task = asyncio.create_task(run())
        self.store_tasks.add(task)
        task.add_done_callback(self.store_tasks.discard)

    def store_failed(self, operation: str, exc: StoreUnavailable) -> None:
        self.metrics.limits_store_errors.labels(operation).inc()
        logging.getLogger("llm_backend").warning("limits store: %s failed: %s", operation, exc)

    def count_refused(self, key: ApiKey) -> None:
        """A refused request counts against its key's rate: in the shared store when there is one."""
        if self.shared is not None:
            self.in_background("count", self.shared.count(key.id, store_windows(key)))
        else:
            self.gate.count(key, time.monotonic())

    # --- keys, read again when their file changes
    def stamp(self) -> tuple[int, ...] | None:
        try:
            info = os.stat(self.settings.keys_file)
        except (OSError, ValueError):
            return None
        return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns

    async def watch_keys(self) -> None:
        """Looks at the keys file every KEYS_POLL_S seconds (and at once on SIGHUP); a changed one is read again.
        Streams in flight go on: a revoked key admits nothing more, and nothing is restarted."""
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(KEYS_POLL_S):
                    await self.keys_wake.wait()
            forced = self.keys_wake.is_set()
            self.keys_wake.clear()
            stamp = self.stamp()
            if forced or stamp != self.keys_stamp:
                self.keys_stamp = stamp
                self.reload_keys()

    def reload_keys(self) -> bool:
        """The keys file read again; a file that is wrong is reported (by entry and id, never a hash) and the
        keys in use are kept."""
        settings, log = self.settings, logging.getLogger("llm_backend")
        try:
            keys = load_keys(settings.keys_file, settings.rate_limit, settings.max_streams, settings.caps)
        except ConfigError as exc:
            self.metrics.keys_reloads.labels("error").inc()
            log.error("keys file not reloaded, the %d key(s) in use are kept: %s", len(self.gate.keys), exc)
            return False
        self.gate.replace(keys)
        self.metrics.keys_reloads.labels("ok").inc()
        enabled, disabled = self.count_keys()
        log.info("keys reloaded: %d enabled, %d disabled", enabled, disabled)
        return True

    def count_keys(self) -> tuple[int, int]:
        enabled = sum(1 for key in self.gate.keys if key.enabled)
        disabled = len(self.gate.keys) - enabled
        self.metrics.keys_loaded.labels("enabled").set(enabled)
        self.metrics.keys_loaded.labels("disabled").set(disabled)
        return enabled, disabled

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
        """Every key's usage: for the holder of the metrics token (Prometheus) only."""
        started = time.perf_counter()
        if self.metrics_digest is None:
            return self.probed(request, started, error_response(
                404, f"metrics are not served: {ENV_PREFIX}METRICS_TOKEN is not set", "invalid_request_error",
                "not_found"))
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        digest = hashlib.sha256(token.strip().encode("latin-1")).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, self.metrics_digest):
            return self.probed(request, started, error_response(
                401, "/metrics needs the metrics token (Authorization: Bearer <token>)", "invalid_request_error",
                "invalid_api_key"))
        self.metrics.connections.set(self.open_connections())
        return self.probed(request, started,
                           Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST))

    @staticmethod
    def open_connections() -> int:
        return GuardedH11Protocol.open_connections()

    async def models(self, request: Request) -> Response:
        exchange = self.start(request, ROUTE_MODELS)
        refusal, key = self.admit(request, exchange)
        if refusal is not None:
            return self.done(exchange, refusal)
        assert key is not None
        if self.shared is not None:
            refusal = await self.shared_admit(exchange, key, "hit")
            if refusal is not None:
                return self.done(exchange, refusal)
        else:
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

    def handler(self, route: Route) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return await self.engine_request(request, route)
        return endpoint

    async def engine_request(self, request: Request, route: Route) -> Response:
        exchange = self.start(request, route.path)
        refusal, key = self.admit(request, exchange)
        if refusal is not None:
            return self.done(exchange, refusal)
        assert key is not None
        raw, refusal = await self.read_body(request, exchange)
        if refusal is None:
            body, refusal = self.parse(raw, route, key)
        if refusal is not None:
            # A request refused for what the client sent counts against its key's rate, as an admitted one does:
            # otherwise a client could send bad requests as fast as it likes.
            self.count_refused(key)
            return self.done(exchange, refusal)
        if isinstance(body.get("model"), str):
            exchange.model = loggable(body["model"][:200])
        exchange.stream = route.streams and body.get("stream") is True
        if exchange.stream and route.usage_option:
            # Usage is counted from the engine's final usage event, which it sends only when asked.
            options = body.get("stream_options") or {}
            if options.get("include_usage") is not True:
                body["stream_options"] = {**options, "include_usage": True}
                raw = json.dumps(body, separators=(",", ":")).encode()
        # Checked again, with no await before the count: other requests may have been admitted, and the keys read
        # again, while this body was read. Only an admitted request (within the rate and the limits) is counted.
        key = self.gate.current(key)
        if key is None or not key.enabled:
            return self.done(exchange, error_response(401, "this API key was revoked while its request arrived",
                                                      "invalid_request_error", "invalid_api_key"))
        now = time.monotonic()
        if self.gate.busy():
            return self.done(exchange, self.busy_response())
        if self.shared is not None:
            refusal = await self.shared_admit(exchange, key, "admit")
            if refusal is not None:
                return self.done(exchange, refusal)
            if exchange.lease and self.gate.busy():  # others were admitted while the store answered
                self.in_background("release", self.shared.release(key.id, exchange.lease))
                exchange.lease = ""
                return self.done(exchange, self.busy_response())
        if exchange.lease:
            self.gate.enter_host()
        else:
            refusal = self.over_rate(key, now)
            if refusal is not None:
                return self.done(exchange, refusal)
            if not self.gate.acquire(key):
                return self.done(exchange, self.concurrency_response(key))
            self.gate.count(key, now)
        self.metrics.in_flight.labels(key.id).inc()
        if now - self.models_read_at > MODELS_TTL_S and self.models_refresh is None:
            self.models_refresh = asyncio.create_task(self.refresh_models())
        return EngineProxy(self, exchange, key, route, raw)

    def busy_response(self) -> Response:
        self.metrics.busy.inc()
        return error_response(
            503, f"the server has {self.settings.max_in_flight} requests in flight, its limit "
            f"({ENV_PREFIX}MAX_IN_FLIGHT); retry shortly", "server_error", "server_busy", {"retry-after": "1"})

    def concurrency_response(self, key: ApiKey) -> Response:
        self.metrics.rate_limited.labels(key.id, "concurrency").inc()
        return error_response(
            429, f"too many concurrent requests for this key (at most {key.max_streams}); retry when one ends",
            "requests", "concurrency_limit_exceeded", {"retry-after": "1"})

    async def shared_admit(self, exchange: Exchange, key: ApiKey, mode: str) -> Response | None:
        """The fleet-wide decision (mode admit: rate and in-flight, a lease; hit: rate only). None when admitted
        (exchange.lease set for admit), or when the store fails and the failure mode is open: the caller then
        counts on this host (exchange.lease stays empty). Else the 429, or the 503 of a closed failure mode."""
        assert self.shared is not None
        try:
            verdict = await self.shared.run(mode, key.id, store_windows(key), key.max_streams)
        except StoreUnavailable as exc:
            self.store_failed(mode, exc)
            if self.settings.limits_failure == "open":
                return None
            return error_response(503, f"the shared limits store is unreachable ({ENV_PREFIX}LIMITS_FAILURE is "
                                  "closed); retry shortly", "server_error", "limits_store_unavailable",
                                  {"retry-after": "1"})
        if verdict.admitted:
            exchange.lease = verdict.lease
            return None
        if verdict.reason == "concurrency":
            return self.concurrency_response(key)
        return self.rate_response(key, verdict.retry_after_s)

    def parse(self, raw: bytes, route: Route, key: ApiKey) -> tuple[dict, Response | None]:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None  # RecursionError: JSON nested deeper than Python parses
        if not isinstance(body, dict):
            return {}, error_response(400, "the request body must be a JSON object", "invalid_request_error",
                                      "invalid_json")
        return body, check_body(route, body, key.caps)

    async def read_body(self, request: Request, exchange: Exchange) -> tuple[bytes, Response | None]:
        """The request's body, or the refusal of one larger than the limit (no more than that is read), one that
        takes longer than the body timeout to arrive, or one whose client went away."""
        settings = self.settings
        limit = settings.max_body_bytes
        too_large = error_response(413, f"the request body is larger than {limit} bytes ({ENV_PREFIX}MAX_BODY_BYTES)",
                                   "invalid_request_error", "request_too_large")
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                body = await read_capped(request.headers.get("content-length", ""), request.stream(), limit)
        except TimeoutError:
            exchange.error = "client_body_timeout"
            return b"", error_response(408, f"the request body did not arrive within {settings.body_timeout_s:g} s "
                                       f"({ENV_PREFIX}BODY_TIMEOUT_S)", "invalid_request_error", "request_timeout")
        except ClientDisconnect:
            exchange.error = "client_disconnected"
            return b"", error_response(499, "the client went away before its request arrived",
                                       "invalid_request_error", "client_disconnected")
        return (b"", too_large) if body is None else (body, None)

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
        except (ValueError, RecursionError):
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
        return Exchange(request.method, loggable(request.url.path), route, client[0] if client else None,
                        time.perf_counter())

    def admit(self, request: Request, exchange: Exchange) -> tuple[Response | None, ApiKey | None]:
        """The caller's key, and the 401 or 429 refusing them, if any. Counts nothing against the rate: the
        handler counts a request once it is admitted."""
        key = self.gate.authenticate(request.headers.get("authorization"))
        if key is None:
            return error_response(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                                  "invalid_request_error", "invalid_api_key"), None
        exchange.key_id = key.id
        if not key.enabled:
            return error_response(401, "this API key is disabled", "invalid_request_error", "invalid_api_key"), None
        # With a shared store, the rate is judged there, once, when the request is admitted.
        return (None if self.shared is not None else self.over_rate(key, time.monotonic())), key

    def over_rate(self, key: ApiKey, now: float) -> Response | None:
        """The 429 for a key whose rate is used up; None, counting nothing, when a request may go on."""
        wait = self.gate.retry_after(key, now)
        return None if wait is None else self.rate_response(key, wait)

    def rate_response(self, key: ApiKey, wait: int) -> Response:
        """The 429 of a key whose rate is used up, counted on this host or in the shared store."""
        self.metrics.rate_limited.labels(key.id, "rate").inc()
        return error_response(429, f"rate limit of {key.rate_limit} exceeded for this key; retry in {wait} s",
                              "requests", "rate_limit_exceeded", {"retry-after": str(wait)})

    def done(self, exchange: Exchange, response: Response) -> Response:
        exchange.status = response.status_code
        exchange.ttfb_s = time.perf_counter() - exchange.started
        self.record(exchange)
        return response

    def engine_done(self, exchange: Exchange, key: ApiKey) -> None:
        if exchange.lease and self.shared is not None:
            self.gate.leave_host()
            self.in_background("release", self.shared.release(key.id, exchange.lease))
        else:
            self.gate.release(key)
        self.metrics.in_flight.labels(key.id).dec()
        if self.shared is not None and (exchange.prompt_tokens or exchange.completion_tokens):
            self.in_background("usage", self.shared.record_usage(key.id, exchange.prompt_tokens or 0,
                                                                 exchange.completion_tokens or 0))
        self.record(exchange)

    def record(self, exchange: Exchange) -> None:
        latency = time.perf_counter() - exchange.started
        metrics = self.metrics
        stream = "true" if exchange.stream else "false"
        # Only the gateway's own routes label metrics: a client's made-up path must not become a new label value.
        route = exchange.route if exchange.route in ROUTES or exchange.route == ROUTE_MODELS else "other"
        metrics.requests.labels(exchange.key_id, route, str(exchange.status)).inc()
        metrics.latency.labels(route, stream).observe(latency)
        if exchange.ttfb_s is not None:
            metrics.ttfb.labels(route, stream).observe(exchange.ttfb_s)
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


# ------------------------------------------------------------------------------------------------- connections
class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with what it lacks against idle and slow clients: a request's head must have
    arrived within the header timeout of the connection (or of the previous answer on it), and past the connection
    cap a new connection is closed at once, except from loopback (the container's own healthcheck), so that
    /health answers while the cap is reached. `serve` sets the class's limits and metrics."""

    header_timeout_s = 10.0
    max_connections = 1000
    metrics: Metrics | None = None
    all_connections: set | None = None
    head_timer: asyncio.TimerHandle | None = None

    @classmethod
    def open_connections(cls) -> int:
        return len(cls.all_connections) if cls.all_connections is not None else 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        type(self).all_connections = self.connections
        peer = self.client[0] if self.client else None
        if len(self.connections) > self.max_connections and peer not in LOOPBACK:
            self.closed_for("connection_limit")
            transport.abort()
            return
        self.arm()

    def arm(self) -> None:
        self.disarm()
        self.head_timer = self.loop.call_later(self.header_timeout_s, self.head_late)

    def disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.head_timer is not None and self.cycle is not None and not self.cycle.response_complete:
            self.disarm()  # a request's head has arrived; the body timeout is the app's

    def on_response_complete(self) -> None:
        # Armed before uvicorn looks at pipelined data, whose complete head then disarms it at once.
        if not self.transport.is_closing():
            self.arm()
        super().on_response_complete()

    def head_late(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self.closed_for("header_timeout")
            self.transport.close()

    def closed_for(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)


async def not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    return error_response(status, f"{request.method} {loggable(request.url.path)[:200]}: {code.replace('_', ' ')}",
                          "invalid_request_error", code)


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The gateway as an ASGI app; `transport` replaces the network to the engine (tests)."""
    gateway = Gateway(settings, transport)
    app = FastAPI(title="llm_backend", docs_url=None, redoc_url=None, openapi_url=None, lifespan=gateway.lifespan)
    app.state.gateway = gateway
    for path, endpoint, methods in (("/health", gateway.health, ["GET"]), ("/metrics", gateway.metrics_page, ["GET"]),
                                    (ROUTE_MODELS, gateway.models, ["GET"]),
                                    *((route.path, gateway.handler(route), ["POST"]) for route in ROUTES.values())):
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
                                "level": record.levelname.lower(), "logger": record.name,
                                "msg": loggable(record.getMessage())}
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


def raise_descriptor_limit(settings: Settings) -> None:
    """Room for every connection the cap allows, each with one to the engine, and a margin: the soft limit is
    raised towards the hard one; a hard limit too low is a configuration error, not a backend that stops answering
    (and whose /health fails) once the descriptors run out."""
    need = 2 * settings.max_connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ConfigError(f"{ENV_PREFIX}MAX_CONNECTIONS: {settings.max_connections} connections need {need} file "
                          f"descriptors; this process may open at most {hard} (raise the container's nofile ulimit, "
                          "or lower the cap)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def serve(settings: Settings) -> None:
    app = create_app(settings)
    GuardedH11Protocol.header_timeout_s = settings.header_timeout_s
    GuardedH11Protocol.max_connections = settings.max_connections
    GuardedH11Protocol.metrics = app.state.gateway.metrics
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, log_level=settings.log_level,
                access_log=False, server_header=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                http=GuardedH11Protocol)


def ledger(argv: list[str]) -> int:
    """`llm_backend.py ledger [--days N] [--csv]`: tokens and requests per key per day from the shared store
    (LLM_BACKEND_LIMITS_URL), as a table or CSV."""
    parser = argparse.ArgumentParser(prog="llm_backend.py ledger", description=ledger.__doc__)
    parser.add_argument("--days", type=int, default=31, help="the last N days with usage (1-3660; default 31)")
    parser.add_argument("--csv", action="store_true", help="CSV instead of a table")
    args = parser.parse_args(argv)
    name, url = ENV_PREFIX + "LIMITS_URL", os.environ.get(ENV_PREFIX + "LIMITS_URL", "").strip()
    try:
        if not url:
            raise ConfigError(f"{name} is required: the shared store the usage ledger is kept in")
        parse_limits_url(name, url)
        if not 1 <= args.days <= 3660:
            raise ConfigError(f"--days: {args.days} is out of range (1..3660)")
    except ConfigError as exc:
        print(f"llm_backend ledger: {exc}", file=sys.stderr)
        return 2

    async def read() -> list[dict[str, object]]:
        store = SharedLimits(url, 5.0, 60.0)
        try:
            return await store.ledger(args.days)
        finally:
            await store.close()

    try:
        rows = asyncio.run(read())
    except (StoreUnavailable, OSError, RedisError) as exc:
        print(f"llm_backend ledger: the store did not answer ({type(exc).__name__})", file=sys.stderr)
        return 1
    fields = ["day", "key_id", "requests", "prompt_tokens", "completion_tokens"]
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    widths = [max([len(field)] + [len(str(row[field])) for row in rows]) for field in fields]
    for line in [dict(zip(fields, fields, strict=True)), *rows]:
        print("  ".join(str(line[field]).ljust(width) for field, width in zip(fields, widths, strict=True)).rstrip())
    return 0


def main() -> None:
    if sys.argv[1:2] == ["ledger"]:
        sys.exit(ledger(sys.argv[2:]))
    try:
        settings = settings_from_env(os.environ)
        raise_descriptor_limit(settings)
    except ConfigError as exc:
        sys.exit(f"llm_backend: configuration error: {exc}")
    configure_logging(settings.log_level)
    disable_created_metrics()  # no *_created series: one timestamp per series that dashboards do not use
    logging.getLogger("llm_backend").info(
        "serving on %s:%s for %d key(s), engine %s", settings.host, settings.port, len(settings.keys),
        settings.upstream_url)
    serve(settings)


if __name__ == "__main__":
    main()
