"""A local OpenAI-style streaming server whose timing the tests (and the capacity benchmark) control.

Each streamed request waits `ttft_s`, then sends `chunks` chunks `gap_s` apart, each carrying
`tokens_per_chunk` tokens of text, then a usage chunk (when `send_usage`) and `[DONE]` (when `send_done`).
`gap_s == 0` streams as fast as the server can (capacity benchmark).

Optional, for the chat UI's tests: `reasoning_chunks` chunks of reasoning first (split from `reasoning_text`, in
`delta.<reasoning_field>` as gpt-oss on vLLM sends it), and `content_text` split over the `chunks` content chunks
instead of " tok" (sent as raw UTF-8, unescaped). GET /v1/models lists `model_id`; GET /health answers
`health_status` (200); `record_requests` keeps the request bodies. `server.streams` records how each stream ended
(`StreamLog`: whether the peer closed the connection before the end, and when), for the gateway's client-disconnect
test.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Script:
    ttft_s: float = 0.05
    gap_s: float = 0.01
    chunks: int = 10
    tokens_per_chunk: int = 1
    prompt_tokens: int = 7
    send_usage: bool = True
    send_done: bool = True
    status: int = 200
    # What GET /health answers (an engine that is still loading answers 503).
    health_status: int = 200
    # Write the whole stream at once, as fast as the socket takes it (capacity benchmark).
    burst: bool = False
    # Keep the connection open after a stream, as vLLM and llama.cpp do (the gateway benchmark's upstream).
    keep_alive: bool = False
    reasoning_chunks: int = 0
    reasoning_text: str = ""
    # vLLM 0.11 sends "reasoning_content", newer vLLM "reasoning".
    reasoning_field: str = "reasoning_content"
    content_text: str = ""
    model_id: str = "scripted-model"
    # With record_requests, each request body is appended to `requests` (off by default: benchmarks send many).
    record_requests: bool = False
    requests: list[dict] = field(default_factory=list)


def split_text(text: str, parts: int) -> list[str]:
    """`text` cut into `parts` consecutive pieces (some may be empty when the text is short)."""
    if parts <= 0:
        return []
    cuts = [round(i * len(text) / parts) for i in range(parts + 1)]
    return [text[cuts[i]:cuts[i + 1]] for i in range(parts)]


def delta_event(model: str, delta: dict[str, str]) -> bytes:
    return ("data: " + json.dumps({"object": "chat.completion.chunk", "model": model,
                                   "choices": [{"index": 0, "delta": delta}]}, ensure_ascii=False) + "\n\n").encode()


@dataclass
class StreamLog:
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    peer_closed: bool = False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as the engines' servers set it: with Nagle's algorithm, a small write on a kept-alive
    # connection waits for the peer's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    script: Script = Script()

    def log_message(self, *args: object) -> None:
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] == "/v1/models":
            payload = json.dumps({"object": "list", "data": [{"id": self.script.model_id, "object": "model"}]})
        elif self.path.split("?")[0] == "/health":
            payload = "{}"
        else:
            self.send_error(404)
            return
        self.send_response(self.script.health_status if self.path.split("?")[0] == "/health" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        script = self.script
        if script.record_requests:
            script.requests.append(body)
        if script.status != 200:
            payload = b'{"error": "scripted failure"}'
            self.send_response(script.status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        if not script.keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()
        log = StreamLog()
        getattr(self.server, "streams", []).append(log)
        try:
            self._stream(script, body)
        except (BrokenPipeError, ConnectionResetError):
            log.peer_closed = True
        log.ended = time.monotonic()

    def _stream(self, script: Script, body: dict) -> None:
        time.sleep(script.ttft_s)
        model = body.get("model", "")
        text = " tok" * script.tokens_per_chunk
        event = ("data: " + json.dumps({"object": "chat.completion.chunk", "model": model,
                                        "choices": [{"index": 0, "delta": {"content": text}}]}) + "\n\n").encode()
        for i, piece in enumerate(split_text(script.reasoning_text, script.reasoning_chunks)):
            if i and script.gap_s:
                time.sleep(script.gap_s)
            self._chunk(delta_event(model, {script.reasoning_field: piece}))
        if script.reasoning_chunks and script.gap_s:
            time.sleep(script.gap_s)
        if script.content_text:
            for i, piece in enumerate(split_text(script.content_text, script.chunks)):
                if i and script.gap_s:
                    time.sleep(script.gap_s)
                self._chunk(delta_event(model, {"content": piece}))
        if script.burst and not script.content_text:
            framed = f"{len(event):x}\r\n".encode() + event + b"\r\n"
            self.wfile.write(framed * script.chunks)
        for i in range(0 if script.burst or script.content_text else script.chunks):
            if i and script.gap_s:
                time.sleep(script.gap_s)
            self._chunk(event)
        if script.send_usage:
            usage = {"prompt_tokens": script.prompt_tokens,
                     "completion_tokens": (script.chunks + script.reasoning_chunks) * script.tokens_per_chunk}
            self._chunk(("data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n").encode())
        if script.send_done:
            self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    # The default listen backlog (5) resets connections when a gateway opens 32 at once.
    request_queue_size = 256


def serve(script: Script) -> tuple[ThreadingHTTPServer, str]:
    handler = type("ScriptedHandler", (Handler,), {"script": script})
    server = Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.streams = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
