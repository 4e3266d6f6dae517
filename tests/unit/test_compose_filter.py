"""llm_compose_project: the compose project assembled from a list of services."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.llm_endpoints.core.plugins.filter.llm_compose import compose_project, published_ports

COMMON = {"restart": "unless-stopped", "logging": {"driver": "json-file"}}


def test_services_keep_their_order_and_get_the_common_settings() -> None:
    project = compose_project([{"name": "engine", "definition": {"image": "e:1"}},
                               {"name": "backend", "definition": {"image": "b:1", "restart": "always"}}],
                              "llm-stack", COMMON)
    assert project["name"] == "llm-stack"
    assert list(project["services"]) == ["engine", "backend"]
    assert project["services"]["engine"] == {"image": "e:1", **COMMON}
    assert project["services"]["backend"]["restart"] == "always"  # its own setting wins


@pytest.mark.parametrize(("services", "message"), [
    ([{"name": "Engine!", "definition": {"image": "x"}}], "needs a name"),
    ([{"name": "engine", "definition": {}}], "needs a definition with an image"),
    ([{"name": "a", "definition": {"image": "x"}}, {"name": "a", "definition": {"image": "y"}}], "defined twice"),
    (["engine"], "needs a name"),
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
