"""The front door's servers and the internal address rule they share with the hosts' bind addresses
(llm_endpoints.core.llm_internal_address): where a host listens behind a front door is where the front door looks."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.llm_endpoints.core.plugins.filter.front_door import (
    front_door_metrics_targets,
    front_door_servers,
    internal_address,
)

FACTS = {"ansible_facts": {"default_ipv4": {"address": "10.1.2.3", "interface": "eth0"}}}


def test_the_internal_address_is_the_inventory_s_else_the_default_ipv4_address() -> None:
    assert internal_address({**FACTS, "llm_internal_address": "10.9.9.9"}) == "10.9.9.9"
    assert internal_address(FACTS) == "10.1.2.3"
    # Facts injected as top-level variables (inject_facts_as_vars) count too.
    assert internal_address({"ansible_default_ipv4": {"address": "10.4.4.4"}}) == "10.4.4.4"
    assert internal_address({"ansible_host": "gpu-1.example"}) == ""
    assert internal_address({"ansible_facts": {"default_ipv4": {}}}) == ""


def test_each_server_is_reached_where_it_listens() -> None:
    hostvars = {"gpu-1": FACTS, "gpu-2": {"llm_internal_address": "10.0.0.7", "ansible_host": "203.0.113.7"},
                "gpu-3": {**FACTS, "front_door_server_address": "192.168.5.5", "llm_frontend_enabled": False}}
    servers = front_door_servers(["gpu-1", "gpu-2", "gpu-3"], hostvars, 8080, 8501, True)
    assert [(s["name"], s["address"], s["backend_port"], s["frontend_port"]) for s in servers] == [
        ("gpu-1", "10.1.2.3", 8080, 8501), ("gpu-2", "10.0.0.7", 8080, 8501), ("gpu-3", "192.168.5.5", 8080, None)]


def test_a_server_whose_address_is_unknown_is_named_rather_than_guessed() -> None:
    # Its ansible_host is where Ansible reaches it, not necessarily where its services listen.
    with pytest.raises(AnsibleFilterError, match="cannot tell where host gpu-9 listens: set its llm_internal_address"):
        front_door_servers(["gpu-9"], {"gpu-9": {"ansible_host": "203.0.113.9"}}, 8080, 8501, True)


def test_haproxy_s_metrics_are_looked_for_where_each_front_door_serves_them() -> None:
    hostvars = {"edge-1": {"llm_internal_address": "10.0.0.9", "ansible_host": "edge-1.example.net"},
                "edge-2": {"ansible_host": "203.0.113.2", "front_door_metrics_port": 9405},
                "edge-3": {**FACTS, "front_door_metrics_port": 0},
                "edge-4": {**FACTS, "front_door_metrics_bind_address": "[fd00::4]"}}
    assert front_door_metrics_targets(list(hostvars), hostvars, 8405) == [
        {"host": "edge-1", "address": "10.0.0.9:8405"},
        # No internal address known (no facts in this run): where Ansible reaches it.
        {"host": "edge-2", "address": "203.0.113.2:9405"},
        {"host": "edge-4", "address": "[fd00::4]:8405"}]
    with pytest.raises(AnsibleFilterError, match="front_door_metrics_port of host edge-1 must be a port"):
        front_door_metrics_targets(["edge-1"], {"edge-1": {"front_door_metrics_port": "x"}}, 8405)
