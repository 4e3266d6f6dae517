"""llm_smoke's checks of the backend and the chat UI pass against a server that behaves, and each fails against one
that does not (a backend taking any key, never limiting, without usage or metrics; a page that is not served)."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.llm_endpoints.core.plugins.modules import llm_smoke

GOOD_KEY, LIMIT_KEY, UI_KEY = "smoke-key-" + "a" * 40, "limit-key-" + "b" * 40, "ui-key-" + "c" * 40
METRICS_TOKEN = "metrics-token-" + "d" * 30
ERROR = json.dumps({"error": {"message": "no", "type": "invalid_request_error", "code": "x"}}).encode()


class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    faults: set[str] = set()
    limited = 0

    def log_message(self, *args: object) -> None:
        return

    def reply(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def key(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")

    def authorised(self) -> bool:
        return "any-key" in self.faults or self.key() in (GOOD_KEY, LIMIT_KEY, UI_KEY)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/health":
            self.reply(200, b'{"status": "ok"}')
        elif self.path == "/metrics":
            if self.key() != METRICS_TOKEN and "open-metrics" not in self.faults:
                self.reply(401, ERROR)
                return
            metrics = b"# nothing\n" if "no-metrics" in self.faults else b"llm_backend_requests_total 1\n"
            self.reply(200, metrics, "text/plain")
        elif self.path == "/_stcore/health":
            self.reply(200, b"ok", "text/plain")
        elif self.path == "/":
            page = b"<!doctype html><html><body></body></html>"
            self.reply(404 if "no-page" in self.faults else 200, page, "text/html")
        elif self.path == "/v1/models":
            if not self.authorised() or (self.key() == UI_KEY and "ui-key-refused" in self.faults):
                self.reply(401, ERROR)
            elif self.key() == LIMIT_KEY and "no-limit" not in self.faults:
                Fake.limited += 1
                self.reply(429 if Fake.limited > 1 else 200, ERROR if Fake.limited > 1 else b'{"data": []}')
            else:
                self.reply(200, b'{"data": [{"id": "m"}]}')
        else:
            self.reply(404, ERROR)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.authorised():
            self.reply(401, ERROR)
            return
        chunk = {"choices": [{"index": 0, "delta": {"content": "one"}}]}
        usage = {"choices": [], "usage": {"completion_tokens": 2}}
        events = [chunk, chunk] + ([] if "no-usage" in self.faults else [usage])
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        self.reply(200, body, "text/event-stream")


@pytest.fixture
def serve() -> Iterator:
    servers: list[ThreadingHTTPServer] = []

    def start(*faults: str) -> str:
        handler = type("F", (Fake,), {"faults": set(faults)})
        Fake.limited = 0
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def checks(url: str) -> dict[str, bool]:
    params = {"backend_url": url, "model": "m", "backend_key": GOOD_KEY, "backend_limit_key": LIMIT_KEY,
              "backend_limit_attempts": 3, "frontend_key": UI_KEY, "timeout_s": 10, "max_tokens": 8,
              "backend_metrics_token": METRICS_TOKEN}
    results = llm_smoke.check_backend(params) + llm_smoke.check_frontend(url, 10)
    return {c["name"]: c["passed"] for c in results}


def test_a_backend_and_page_that_behave_pass_every_check(serve: object) -> None:
    assert checks(serve()) == {name: True for name in (
        "backend:health", "backend:without-key", "backend:wrong-key", "frontend:backend-key", "backend:stream",
        "backend:rate-limit", "backend:metrics", "frontend:health", "frontend:page")}


@pytest.mark.parametrize(("fault", "failing"), [
    ("any-key", {"backend:without-key", "backend:wrong-key"}),
    ("no-limit", {"backend:rate-limit"}),
    ("no-usage", {"backend:stream"}),
    ("no-metrics", {"backend:metrics"}),
    ("open-metrics", {"backend:metrics"}),  # every key's usage to anyone
    ("no-page", {"frontend:page"}),
    ("ui-key-refused", {"frontend:backend-key"}),
])
def test_each_misbehaviour_fails_its_check(serve: object, fault: str, failing: set[str]) -> None:
    results = checks(serve(fault))
    assert {name for name, passed in results.items() if not passed} == failing


def test_keys_never_appear_in_what_the_checks_report(serve: object) -> None:
    url = serve()
    params = {"backend_url": url, "model": "m", "backend_key": GOOD_KEY, "backend_limit_key": LIMIT_KEY,
              "backend_limit_attempts": 3, "frontend_key": UI_KEY, "timeout_s": 10, "max_tokens": 8,
              "backend_metrics_token": METRICS_TOKEN}
    text = json.dumps(llm_smoke.check_backend(params))
    assert not any(key in text for key in (GOOD_KEY, LIMIT_KEY, UI_KEY, METRICS_TOKEN))


# ------------------------------------------------------------------------------------- prompt checks (streamed)
@pytest.mark.parametrize(("field", "reasoning", "content", "pattern", "passed"), [
    ("reasoning_content", "", "```python\ndef add(a, b):\n    return a + b\n```" + " and more" * 40, r"def \w+\(",
     True),
    # gpt-oss on vLLM thinks first: the pattern may be met in the reasoning (0.11's field, or newer vLLM's).
    ("reasoning_content", "The user wants Seoul." * 3, "서울입니다.", "서울|Seoul", True),
    ("reasoning", "Thinking about capitals.", "서울입니다.", "서울", True),
    ("reasoning_content", "", "no code here at all" * 5, r"def \w+\(", False),
])
def test_a_prompt_check_stops_reading_once_the_reply_matches(field: str, reasoning: str, content: str, pattern: str,
                                                              passed: bool) -> None:
    from sse_server import Script, serve  # noqa: PLC0415 (tests/ is on the path for the helpers)

    script = Script(ttft_s=0.0, gap_s=0.02, chunks=60, reasoning_chunks=6 if reasoning else 0, reasoning_text=reasoning,
                    reasoning_field=field, content_text=content)
    server, url = serve(script)
    try:
        ep = llm_smoke.OpenAIEndpoint(url, "scripted-model", timeout=10)
        check = llm_smoke.check_prompt(ep, {"name": "p", "prompt": "x", "pattern": pattern, "meaning": "m"}, 512)
        assert check["passed"] is passed, check
        assert check["name"] == "prompt:p" and '"stream": true' in check["sent"]
        for _ in range(100):  # the server notes the stream's end once its next write fails or it finishes
            if server.streams and server.streams[-1].ended:
                break
            threading.Event().wait(0.02)
        stream = server.streams[-1]
        if passed:
            # Closed where it matched, long before the 60 content chunks (1.2 s) were sent.
            assert "the stream closed there" in check["detail"] and stream.peer_closed, (check, stream)
            assert stream.ended - stream.started < 0.8
        else:
            assert not stream.peer_closed and "no code here" in check["received"]
    finally:
        server.shutdown()
