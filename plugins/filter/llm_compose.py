"""Assemble a compose project from a list of service definitions (the engine, apps, exporters)."""
from __future__ import annotations

import re
from typing import Any

from ansible.errors import AnsibleFilterError

_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def compose_project(services: list[dict[str, Any]], project: str, common: dict[str, Any]) -> dict[str, Any]:
    """{name, services}: each {name, definition} becomes services[name] = common settings + its definition.

    The definition wins over the common settings (a service may bring its own restart policy or logging).
    Names must be valid compose service names and unique.
    """
    assembled: dict[str, Any] = {}
    for entry in services:
        name = entry.get("name") if isinstance(entry, dict) else None
        definition = entry.get("definition") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _SERVICE_NAME.match(name):
            raise AnsibleFilterError(f"service entry needs a name of [a-z0-9_.-] characters: {entry!r}")
        if not isinstance(definition, dict) or not definition.get("image"):
            raise AnsibleFilterError(f"service {name!r} needs a definition with an image")
        if name in assembled:
            raise AnsibleFilterError(f"service {name!r} is defined twice")
        assembled[name] = {**common, **definition}
    return {"name": project, "services": assembled}


# Every address of a family, and the loopback addresses, as a bind address is written (IPv6 in brackets).
_WILDCARD_OR_LOOPBACK = re.compile(r"(0\.0\.0\.0|\[::\]|127\.[0-9.]+|\[::1\]|localhost)\Z")


def published_ports(bind: str, host_port: Any, container_port: Any) -> list[str]:
    """A service's compose `ports` on one bind address; a service bound to one address of the host's network (its
    internal address behind a front door) is published on 127.0.0.1 as well, so that the host's own checks and tools
    keep reaching it where they always have."""
    ports = [f"{bind}:{host_port}:{container_port}"]
    if not _WILDCARD_OR_LOOPBACK.match(str(bind)):
        ports.append(f"127.0.0.1:{host_port}:{container_port}")
    return ports


class FilterModule:
    def filters(self) -> dict:
        return {"llm_compose_project": compose_project, "llm_published_ports": published_ports}
