"""The collection's one OpenAI-compatible client (module_utils/openai_client.py)."""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.module_utils.openai_client import OpenAIEndpoint, events


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
