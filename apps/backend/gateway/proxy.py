"""A request checked against its key's caps and sent on to the engine; the engine's answer passed through
unchanged (streams byte for byte) while its usage is counted."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import engine_fault, error_body, invalid, loggable, read_capped, send_whole
from gateway.settings import ENV_PREFIX, ApiKey, Caps

if TYPE_CHECKING:
    from gateway.app import Gateway


# The engine's usage event is the only SSE event the gateway parses; this is how it spots it.
USAGE_MARK = b'"usage"'
# An SSE line longer than this is not kept whole while looking for the usage event (its tokens go uncounted).
MAX_SCANNED_LINE = 1 << 20
ROUTE_CHAT = "/v1/chat/completions"
ROUTE_COMPLETIONS = "/v1/completions"
ROUTE_RESPONSES = "/v1/responses"
ROUTE_EMBEDDINGS = "/v1/embeddings"
# A stream's reader waits for the client writer once this many chunks are pending (ClientWriter).
MAX_BATCH = 64
SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


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
