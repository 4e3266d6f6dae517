"""Assemble a compose project from a list of service definitions (the engine, apps, exporters)."""
from __future__ import annotations

import re
from typing import Any

from ansible.errors import AnsibleFilterError

_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def compose_project(services: list[dict[str, Any]], project: str, common: dict[str, Any]) -> dict[str, Any]:
    """{name, services[, configs]}: each {name, definition} becomes services[name] = common settings + its
    definition; an entry's `configs` ({name: {content}}) go to the project's top-level configs, so a file a service
    reads travels in the compose file (and so in its release), not beside it.

    The definition wins over the common settings (a service may bring its own restart policy or logging).
    Names must be valid compose service names and unique, and so must config names.
    """
    assembled: dict[str, Any] = {}
    configs: dict[str, Any] = {}
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
        for config, spec in (entry.get("configs") or {}).items():
            if not isinstance(config, str) or not _SERVICE_NAME.match(config):
                raise AnsibleFilterError(f"service {name!r}: config names are of [a-z0-9_.-] characters: {config!r}")
            if not isinstance(spec, dict) or set(spec) != {"content"} or not isinstance(spec["content"], str):
                raise AnsibleFilterError(f"service {name!r}: config {config!r} needs exactly a content string")
            if config in configs:
                raise AnsibleFilterError(f"config {config!r} is defined twice")
            configs[config] = {"content": spec["content"]}
    return {"name": project, "services": assembled, **({"configs": configs} if configs else {})}


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


# A container's health check: the status line of GET <path> must say 200. Raw socket and `python -S`, not urllib:
# the probe runs every few seconds in every container, and urllib's imports cost three times its CPU.
_PROBE = ("import socket; s = socket.create_connection(('127.0.0.1', {port}), {timeout}); "
          "s.sendall(b'GET {path} HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n'); "
          "raise SystemExit(s.makefile('rb').readline().split()[1:2] != [b'200'])")


def health_probe(python: str, port: Any, path: str, timeout: Any = 5) -> list[str]:
    """The compose healthcheck `test` of a service with an HTTP health path, run by the image's own Python."""
    if not re.fullmatch(r"/[A-Za-z0-9_./-]*", str(path)) or not str(port).isdigit() or not 0 < int(port) < 65536:
        raise AnsibleFilterError(f"a health probe needs a port and an absolute path: {port!r} {path!r}")
    if not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise AnsibleFilterError(f"a health probe's timeout is 0-60 s: {timeout!r}")
    return ["CMD", python, "-S", "-c", _PROBE.format(port=int(port), timeout=timeout, path=path)]


class FilterModule:
    def filters(self) -> dict:
        return {"llm_compose_project": compose_project, "llm_published_ports": published_ports,
                "llm_health_probe": health_probe}
