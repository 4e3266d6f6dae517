"""The front door's servers: each host of the backend group, its address and ports, checked before HAProxy's
configuration is written (a bad value names the host and the variable)."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

# HAProxy's server names: letters, digits and "_.:-" (configuration.txt, "server <name>").
SERVER_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"{LABEL}(?:\.{LABEL})*\Z")


def _port(host: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,5}", str(value)) or not 1 <= int(value) <= 65535:
        raise AnsibleFilterError(f"{name} of host {host} must be a port from 1 to 65535; got {value!r}")
    return int(value)


def _address(host: str, value: Any) -> str:
    text = str(value)
    try:
        if ipaddress.ip_address(text).version == 4:
            return text
    except ValueError:
        if len(text) <= 253 and HOSTNAME.match(text) and not re.fullmatch(r"[0-9.]+", text):
            return text
    raise AnsibleFilterError(f"front_door_server_address of host {host} (else its ansible_host, else its name) must "
                             f"be an IPv4 address or a host name; got {text!r}")


def front_door_servers(hosts: list[str], hostvars: Mapping[str, Any], backend_port: Any, frontend_port: Any,
                       frontend_enabled: Any) -> list[dict[str, Any]]:
    """[inventory host names], hostvars, the shared defaults -> [{name, address, backend_port, frontend_port}];
    frontend_port is None where that host runs no chat UI. A host may set front_door_server_address (the address the
    front door reaches it on: an internal one), llm_backend_port, llm_frontend_port and llm_frontend_enabled."""
    servers: list[dict[str, Any]] = []
    for host in hosts:
        if not SERVER_NAME.match(host):
            raise AnsibleFilterError(f"host {host!r} of the front door's group: its inventory name is its HAProxy "
                                     "server name, which takes letters, digits and _.:- only (at most 64)")
        own = hostvars[host]
        address = own.get("front_door_server_address") or own.get("ansible_host") or host
        chat = own.get("llm_frontend_enabled", frontend_enabled)
        servers.append({
            "name": host,
            "address": _address(host, address),
            "backend_port": _port(host, "llm_backend_port", own.get("llm_backend_port", backend_port)),
            "frontend_port": (_port(host, "llm_frontend_port", own.get("llm_frontend_port", frontend_port))
                              if str(chat).lower() in ("true", "1", "yes", "on") else None),
        })
    return servers


class FilterModule:
    def filters(self) -> dict:
        return {"front_door_servers": front_door_servers}
