"""The ASGI app: routes, key checks, the engine connection pool, keys reloaded, connection limits."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import engine_fault, error_response, loggable, read_capped
from gateway.limits import Gate, store_windows
from gateway.logs import ACCESS_LOGGER
from gateway.metrics import Metrics
from gateway.proxy import ROUTES, EngineProxy, Exchange, Route, check_body
from gateway.settings import ENV_PREFIX, ApiKey, ConfigError, Settings, load_keys
from gateway.store import SharedLimits, StoreUnavailable

# Shorter than the 5 s keep-alive of llama.cpp's server and of uvicorn (vLLM), so that an idle connection is
# dropped here before the engine closes it under a request.
UPSTREAM_KEEPALIVE_S = 4.0
ROUTE_MODELS = "/v1/models"
# /v1/models is a listing the engine answers at once, busy or not: one that has said nothing for this long (or for
# the connect timeout, if that is longer) is hung, and the client gets a 503 instead of waiting the read timeout.
MODELS_TIMEOUT_S = 10.0
# The ids the engine lists on /v1/models are the only values of the metrics' model label; they are read again,
# in the background, when a chat completion is admitted and this long has passed since they were last read.
MODELS_TTL_S = 60.0
OTHER_MODEL = "other"
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
