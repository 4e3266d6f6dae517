"""The test plugin llm_endpoints.core.llm_path_under (plugins/test/llm_paths.py), by path components."""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.test.llm_paths import is_path_under


@pytest.mark.parametrize(("path", "roots", "under"), [
    ("/var/lib/llm-endpoints/state.json", ["/var/lib/llm-endpoints"], True),
    ("/var/lib/llm-endpoints/state.json", ["/var/lib/llm-endpoints/state.json"], True),
    ("/var/lib/llm-endpoints/state.json", ["/opt/llm-stack", "/var/lib/"], True),
    ("/var/lib/llm-endpoints/state.json", ["/"], True),
    ("/opt/llm-stack-2/state.json", ["/opt/llm-stack"], False),
    ("/var/lib/llm-endpoints/state.json", ["/opt/llm-stack", "/etc/docker/daemon.json"], False),
    ("/var/lib//llm-endpoints/./state.json", "/var/lib/llm-endpoints", True),
])
def test_a_path_is_under_a_root_by_its_components(path: str, roots: list[str], under: bool) -> None:
    assert is_path_under(path, roots) is under
