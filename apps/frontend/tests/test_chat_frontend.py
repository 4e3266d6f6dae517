"""The chat UI's parsing, error wording and history rules (apps/frontend/chat.py), without a browser."""
from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import closing

import pytest
from helpers import load_path
from llm_fixture import free_port
from sse_server import Script, serve

chat = load_path("chat_frontend", "apps/frontend/chat.py")


def config(url: str, **changes: str) -> chat.Config:
    return chat.load_config({"LLM_FRONTEND_BACKEND_URL": url, **changes})


def test_lines_survive_characters_and_line_ends_split_across_chunks() -> None:
    raw = "data: 서울\r\n\r\ndata: 수도\r\rdata: 끝\n".encode()
    chunks = [raw[i:i + 1] for i in range(len(raw))]  # every multi-byte character and CRLF split
    assert list(chat.sse_lines(chunks)) == ["data: 서울", "", "data: 수도", "", "data: 끝"]


def test_events_join_data_lines_and_skip_comments() -> None:
    lines = [": keep-alive", "data: {\"a\":", "data:1}", "", "event: x", "data: [DONE]"]
    assert list(chat.sse_data(lines)) == ['{"a":\n1}', "[DONE]"]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_comes_from_either_vllm_field(field: str) -> None:
    delta = chat.parse_chunk(json.dumps({"choices": [{"delta": {field: "생각"}, "finish_reason": None}]}))
    assert (delta.reasoning, delta.content) == ("생각", "")


def test_content_usage_and_garbage_chunks() -> None:
    assert chat.parse_chunk('{"choices": [{"delta": {"content": "서울"}, "finish_reason": "stop"}]}') == \
        chat.Delta(content="서울", finish_reason="stop")
    assert chat.parse_chunk('{"choices": [], "usage": {"prompt_tokens": 3}}') == chat.Delta()
    assert chat.parse_chunk("not json") == chat.Delta()


def test_an_error_event_mid_stream_is_reported() -> None:
    with pytest.raises(chat.BackendError, match="engine reported an error while answering: out of memory"):
        chat.parse_chunk('{"error": {"message": "out of memory", "type": "server_error"}}')


@pytest.mark.parametrize(("env", "message"), [
    ({}, "LLM_FRONTEND_BACKEND_URL is not set"),
    ({"LLM_FRONTEND_BACKEND_URL": "backend:8080"}, "must be an http:// or https:// URL"),
    ({"LLM_FRONTEND_BACKEND_URL": "http://user:pw@backend:8080"}, "must not carry credentials"),
    ({"LLM_FRONTEND_BACKEND_URL": "http://backend:99999"}, "not a valid URL"),
    ({"LLM_FRONTEND_BACKEND_URL": "http://backend:8080/v1/"}, "without /v1"),
    ({"LLM_FRONTEND_BACKEND_URL": "http://backend:8080", "LLM_FRONTEND_TIMEOUT_S": "soon"}, "number of seconds"),
    ({"LLM_FRONTEND_BACKEND_URL": "http://backend:8080", "LLM_FRONTEND_TIMEOUT_S": "0"}, "positive"),
    ({"LLM_FRONTEND_BACKEND_URL": "http://backend:8080", "LLM_FRONTEND_MAX_TOKENS": "-5"}, "whole number"),
])
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(chat.ConfigError, match=message):
        chat.load_config(env)


def test_settings_defaults_and_key_kept_out_of_repr() -> None:
    cfg = config("http://backend:8080/", LLM_FRONTEND_API_KEY=" sk-secret ")
    assert (cfg.backend_url, cfg.api_key, cfg.title, cfg.timeout_s) == ("http://backend:8080", "sk-secret",
                                                                         "LLM chat", 120.0)
    assert cfg.max_tokens is None
    assert "sk-secret" not in repr(cfg)


@pytest.mark.parametrize(("status", "headers", "body", "expected"), [
    (401, {}, b'{"error": {"message": "invalid or missing API key"}}', "The backend refused the API key (401)"),
    (429, {"retry-after": "7"}, b'{"error": {"message": "rate limit"}}', "rate limiting requests (429). Try again "
                                                                          "in 7 s. The backend said: rate limit"),
    (503, {}, b'{"error": {"message": "the engine cannot be reached"}}', "inference engine is unavailable (503)"),
    (400, {}, b'{"error": {"message": "messages must not be empty"}}', "error (400). The backend said: messages "
                                                                       "must not be empty"),
    (500, {}, b"<html>oops</html>", "The backend said: <html>oops</html>"),
])
def test_http_errors_are_explained(status: int, headers: dict[str, str], body: bytes, expected: str) -> None:
    assert expected in chat.http_error_message(status, headers, body, "http://backend:8080")


def test_history_sent_upstream_is_answers_only() -> None:
    history = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1", "reasoning": "secret thoughts", "status": "done"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "", "status": "error", "error": "boom"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "partial", "reasoning": "more", "status": "stopped"},
        {"role": "user", "content": "q4"},
    ]
    assert chat.upstream_messages(history) == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q3"}, {"role": "assistant", "content": "partial"},
        {"role": "user", "content": "q4"}]


def test_keys_are_redacted() -> None:
    assert chat.redact("bad key sk-123 here", ("sk-123", "")) == "bad key ••• here"


def test_stream_from_an_sse_server_in_korean() -> None:
    script = Script(ttft_s=0, gap_s=0, chunks=5, content_text="한국의 수도는 서울입니다.", reasoning_chunks=3,
                    reasoning_text="수도를 묻는다.", reasoning_field="reasoning", record_requests=True)
    server, url = serve(script)
    try:
        deltas = list(chat.stream_chat(config(url, LLM_FRONTEND_MAX_TOKENS="64"), "key", "m",
                                       [{"role": "user", "content": "?"}]))
    finally:
        server.shutdown()
    assert script.requests == [{"model": "m", "messages": [{"role": "user", "content": "?"}], "stream": True,
                                "max_tokens": 64}]
    assert "".join(d.reasoning for d in deltas) == "수도를 묻는다."
    assert "".join(d.content for d in deltas) == "한국의 수도는 서울입니다."


def test_an_unreachable_backend_is_explained() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(chat.BackendError, match=f"The backend at {url} cannot be reached"):
        list(chat.stream_chat(config(url), "key", "m", []))
    with pytest.raises(chat.BackendError, match="cannot be reached"):
        chat.list_models(config(url), "key")


def test_closing_the_stream_closes_the_connection() -> None:
    """Stop in the UI closes the generator: the backend must see the connection end, not wait for the answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    closed = threading.Event()

    def serve_slowly() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            event = b'data: {"choices": [{"delta": {"content": "tok"}}]}\n\n'
            for _ in range(100):
                try:
                    conn.sendall(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                except OSError:
                    break
                conn.settimeout(0.1)
                try:
                    if conn.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    # Reset, not a clean close: the client closed with events of ours unread (CI hit it once).
                    break
            closed.set()

    thread = threading.Thread(target=serve_slowly, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    with closing(chat.stream_chat(config(url), "key", "m", [])) as deltas:
        assert next(deltas).content == "tok"
    assert closed.wait(5), "the server never saw the client go away"
    assert time.monotonic() - started < 5
    listener.close()
