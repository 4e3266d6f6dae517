"""One client for the OpenAI-compatible HTTP API the engines serve (standard library only; runs on the target).

Used by the llm_smoke and llm_throughput modules: whole requests (`call`), chat request bodies (`chat_body`) and
streamed chat completions read event by event (`open_stream`, `events`).
"""
from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator

# The options every module that talks to an endpoint takes (argument_spec entries).
ENDPOINT_ARGS: dict[str, dict] = {
    "base_url": {"type": "str", "required": True},
    "model": {"type": "str", "required": True},
    "api_key": {"type": "str", "default": "", "no_log": True},
}


class OpenAIEndpoint:
    """A server root such as http://127.0.0.1:8000, the model name requests carry, and an optional API key."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = 120.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname
        self.port = parsed.port or (443 if self.https else 80)
        self.prefix = parsed.path.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def headers(self, auth: bool = True, stream: bool = False) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        if auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def call(self, path: str, body: dict | None = None, auth: bool = True) -> tuple[int, str]:
        """One request, the whole reply: (HTTP status, body text); status 0 and the error when none came back."""
        conn = self.connect()
        try:
            method = "GET" if body is None else "POST"
            data = None if body is None else json.dumps(body)
            conn.request(method, self.prefix + path, data, self.headers(auth))
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException, ValueError) as err:
            return 0, f"{type(err).__name__}: {err}"
        finally:
            conn.close()

    def chat_body(self, prompt: str, max_tokens: int, stream: bool = False, **extra: object) -> dict:
        body: dict = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                      "max_tokens": max_tokens, "temperature": 0, "stream": stream}
        body.update(extra)
        return body

    def open_stream(self, conn: http.client.HTTPConnection, body: dict) -> http.client.HTTPResponse:
        """POST a streamed chat completion on `conn`; the caller reads the response with `events`."""
        conn.request("POST", self.prefix + "/v1/chat/completions", json.dumps(body), self.headers(stream=True))
        return conn.getresponse()

    def describe(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> str:
        """A request as reports show it: the API key is never written out."""
        key = " (Authorization: Bearer <redacted>)" if auth and self.api_key else ""
        return f"{method} {path}{key}" + (f" {json.dumps(body, ensure_ascii=False)}" if body else "")


def events(lines: Iterator[bytes]) -> Iterator[bytes]:
    """The payloads of server-sent `data:` lines, up to and including b"[DONE]"."""
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        yield payload
        if payload == b"[DONE]":
            return


def read_lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """A response's lines as they arrive (a streamed reply is read before it is complete)."""
    while True:
        line = resp.readline()
        if not line:
            return
        yield line


def message_text(message: dict) -> tuple[str, str]:
    """(content, reasoning) of a completion's message or a stream's delta: reasoning models put their reasoning in
    `reasoning_content` (vLLM, llama.cpp) or `reasoning` (vLLM's gpt-oss parser), and may leave content empty."""
    return (message.get("content") or "", message.get("reasoning_content") or message.get("reasoning") or "")


def has_token(choice: dict) -> bool:
    """Whether a streamed choice carries generated text (content, or a reasoning model's reasoning)."""
    return any(message_text(choice.get("delta") or {}))


def reply_text(payload: str) -> tuple[str, str]:
    """(content, reasoning) of a non-streamed chat completion; reasoning models may put text in either."""
    return message_text(json.loads(payload)["choices"][0]["message"])
