"""The collection's one OpenAI-compatible client (module_utils/openai_client.py)."""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.module_utils.openai_client import (
    OpenAIEndpoint,
    events,
    has_token,
    message_text,
    reply_text,
)


def test_refuses_a_url_it_cannot_call() -> None:
    with pytest.raises(ValueError, match="not an http"):
        OpenAIEndpoint("127.0.0.1:8000", "m")
    ep = OpenAIEndpoint("https://api.example:8443/prefix/", "m", api_key="k")
    assert (ep.https, ep.host, ep.port, ep.prefix) == (True, "api.example", 8443, "/prefix")
    assert ep.headers()["Authorization"] == "Bearer k"
    assert "Authorization" not in ep.headers(auth=False)
    assert "<redacted>" in ep.describe("GET", "/v1/models") and "k" not in ep.describe("GET", "/v1/models").split()


def test_events_stop_at_done() -> None:
    lines = [b": comment\n", b"data: {\"a\": 1}\n", b"\n", b"data: [DONE]\n", b"data: after\n"]
    assert list(events(iter(lines))) == [b'{"a": 1}', b"[DONE]"]


def test_text_is_read_from_content_or_either_reasoning_field() -> None:
    assert message_text({"content": "Seoul"}) == ("Seoul", "")
    # llama.cpp and vLLM's reasoning parsers: reasoning_content; vLLM's gpt-oss parser: reasoning.
    assert message_text({"content": None, "reasoning_content": "thinking"}) == ("", "thinking")
    assert message_text({"reasoning": "thinking", "content": ""}) == ("", "thinking")
    assert has_token({"delta": {"reasoning": "x"}}) and not has_token({"delta": {"role": "assistant"}})
    assert not has_token({"delta": None}) and not has_token({})
    assert reply_text('{"choices": [{"message": {"content": "4", "reasoning_content": "2+2"}}]}') == ("4", "2+2")
