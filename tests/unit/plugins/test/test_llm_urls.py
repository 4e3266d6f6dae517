"""plugins/test/llm_urls.py: the URLs llm_smoke and llm_throughput accept (their bad-input messages are checked in
tests/integration/test_check_inputs.py)."""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.test.llm_urls import is_endpoint_url


@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:8000", True), ("https://api.example.net/v1", True), ("http://host", True),
    ("http://[::1]:8080/x?y=1", True), ("http://127.0.0.1:65535", True), ("http://127.0.0.1:1", True),
    ("http://127.0.0.1:0", False), ("http://127.0.0.1:70000", False), ("http://127.0.0.1:123456", False),
    ("127.0.0.1:8000", False), ("ftp://127.0.0.1:8000", False), ("http://127.0.0.1:8000\n", False),
    ("http://127.0.0.1:8000/a b", False), ("http://-bad-/", False), ("http://", False), (8000, False), (None, False),
])
def test_an_endpoint_url_is_http_with_a_port_in_range(url: object, ok: bool) -> None:
    assert is_endpoint_url(url) is ok
