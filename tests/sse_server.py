"""A local OpenAI-style streaming server whose timing the tests (and the capacity benchmark) control.

Each streamed request waits `ttft_s`, then sends `chunks` chunks `gap_s` apart, each carrying
`tokens_per_chunk` tokens of text, then a usage chunk (when `send_usage`) and `[DONE]` (when `send_done`).
`gap_s == 0` streams as fast as the server can (capacity benchmark).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
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
    # Write the whole stream at once, as fast as the socket takes it (capacity benchmark).
    burst: bool = False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script = Script()

    def log_message(self, *args: object) -> None:
        return

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        script = self.script
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
        self.send_header("Connection", "close")
        self.end_headers()
        time.sleep(script.ttft_s)
        model = body.get("model", "")
        text = " tok" * script.tokens_per_chunk
        event = ("data: " + json.dumps({"object": "chat.completion.chunk", "model": model,
                                        "choices": [{"index": 0, "delta": {"content": text}}]}) + "\n\n").encode()
        if script.burst:
            framed = f"{len(event):x}\r\n".encode() + event + b"\r\n"
            self.wfile.write(framed * script.chunks)
        for i in range(0 if script.burst else script.chunks):
            if i and script.gap_s:
                time.sleep(script.gap_s)
            self._chunk(event)
        if script.send_usage:
            usage = {"prompt_tokens": script.prompt_tokens,
                     "completion_tokens": script.chunks * script.tokens_per_chunk}
            self._chunk(("data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n").encode())
        if script.send_done:
            self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def serve(script: Script) -> tuple[ThreadingHTTPServer, str]:
    handler = type("ScriptedHandler", (Handler,), {"script": script})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
