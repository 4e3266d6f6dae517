"""llm_compose: the compose project assembled from a list of services, published ports, health probes."""
from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.llm_endpoints.core.plugins.filter.llm_compose import (
    compose_project,
    health_probe,
    published_ports,
)

COMMON = {"restart": "unless-stopped", "logging": {"driver": "json-file"}}


def test_services_keep_their_order_and_get_the_common_settings() -> None:
    project = compose_project([{"name": "engine", "definition": {"image": "e:1"}},
                               {"name": "backend", "definition": {"image": "b:1", "restart": "always"}}],
                              "llm-stack", COMMON)
    assert project["name"] == "llm-stack"
    assert list(project["services"]) == ["engine", "backend"]
    assert project["services"]["engine"] == {"image": "e:1", **COMMON}
    assert project["services"]["backend"]["restart"] == "always"  # its own setting wins


def test_a_service_s_configs_go_to_the_top_level_and_none_leaves_no_key() -> None:
    project = compose_project([{"name": "exporter", "definition": {"image": "x", "configs": [{"source": "c"}]},
                                "configs": {"c": {"content": "a,b\n"}}}], "p", COMMON)
    assert project["configs"] == {"c": {"content": "a,b\n"}}
    assert project["services"]["exporter"]["configs"] == [{"source": "c"}]
    assert "configs" not in compose_project([{"name": "e", "definition": {"image": "x"}}], "p", COMMON)


@pytest.mark.parametrize(("services", "message"), [
    ([{"name": "Engine!", "definition": {"image": "x"}}], "needs a name"),
    ([{"name": "engine", "definition": {}}], "needs a definition with an image"),
    ([{"name": "a", "definition": {"image": "x"}}, {"name": "a", "definition": {"image": "y"}}], "defined twice"),
    (["engine"], "needs a name"),
    ([{"name": "a", "definition": {"image": "x"}, "configs": {"C!": {"content": ""}}}], "config names are of"),
    ([{"name": "a", "definition": {"image": "x"}, "configs": {"c": {"file": "/etc/passwd"}}}],
     "needs exactly a content"),
    ([{"name": "a", "definition": {"image": "x"}, "configs": {"c": {"content": 1}}}], "needs exactly a content"),
    ([{"name": "a", "definition": {"image": "x"}, "configs": {"c": {"content": ""}}},
      {"name": "b", "definition": {"image": "y"}, "configs": {"c": {"content": ""}}}], "config 'c' is defined twice"),
])
def test_bad_entries_are_named(services: list, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        compose_project(services, "p", COMMON)



@pytest.mark.parametrize(("bind", "ports"), [
    ("0.0.0.0", ["0.0.0.0:8080:8080"]),
    ("[::]", ["[::]:8080:8080"]),
    ("127.0.0.1", ["127.0.0.1:8080:8080"]),
    ("[::1]", ["[::1]:8080:8080"]),
    # One address of the host's network (behind a front door, its internal one): the host's own checks still reach
    # the service on 127.0.0.1.
    ("10.0.0.5", ["10.0.0.5:8080:8080", "127.0.0.1:8080:8080"]),
    ("[fd00::5]", ["[fd00::5]:8080:8080", "127.0.0.1:8080:8080"]),
])
def test_a_service_bound_to_one_address_of_the_host_is_published_on_loopback_too(bind: str, ports: list[str]) -> None:
    assert published_ports(bind, 8080, "8080") == ports


@pytest.fixture(scope="module")
def status_server() -> Iterator[tuple[int, dict]]:
    """A real HTTP server whose /health answers with the status set in the dict it yields."""
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(state["status"] if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], state
    server.shutdown()


@pytest.mark.parametrize(("status", "path", "healthy"), [(200, "/health", True), (503, "/health", False),
                                                         (200, "/other", False)])
def test_the_health_probe_passes_on_200_only(status_server: tuple[int, dict], status: int, path: str,
                                             healthy: bool) -> None:
    port, state = status_server
    state["status"] = status
    test = health_probe(sys.executable, port, path, 3)
    assert test[:3] == ["CMD", sys.executable, "-S"]
    assert (subprocess.run(test[1:], capture_output=True, timeout=10).returncode == 0) is healthy


def test_the_health_probe_fails_where_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        assert subprocess.run(health_probe(sys.executable, port, "/health")[1:], capture_output=True,
                              timeout=10).returncode != 0


@pytest.mark.parametrize(("port", "path", "timeout"), [(0, "/health", 5), ("80; rm", "/health", 5),
                                                       (8000, "health", 5), (8000, "/h'); import os", 5),
                                                       (8000, "/health", 0), (8000, "/health", "5")])
def test_a_bad_probe_is_refused(port: object, path: str, timeout: object) -> None:
    with pytest.raises(AnsibleFilterError, match="health probe"):
        health_probe("python3", port, path, timeout)
