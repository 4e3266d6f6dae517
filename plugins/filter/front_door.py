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
    raise AnsibleFilterError(f"front_door_server_address of host {host} (else its llm_internal_address) must be an "
                             f"IPv4 address or a host name; got {text!r}")


def internal_address(own: Mapping[str, Any]) -> str:
    """A host's address on the site's internal network, from its host variables: llm_internal_address where the
    inventory sets it, else its default IPv4 address (its facts); "" when neither is known. Behind a front door its
    services listen there (llm_defaults) and the front door reaches them there."""
    if own.get("llm_internal_address"):
        return str(own["llm_internal_address"])
    facts = own.get("ansible_facts") or {}
    default_ipv4 = facts.get("default_ipv4") or own.get("ansible_default_ipv4") or {}
    return str(default_ipv4.get("address") or "")


def front_door_servers(hosts: list[str], hostvars: Mapping[str, Any], backend_port: Any, frontend_port: Any,
                       frontend_enabled: Any) -> list[dict[str, Any]]:
    """[inventory host names], hostvars, the shared defaults -> [{name, address, backend_port, frontend_port}];
    frontend_port is None where that host runs no chat UI. The address is the host's front_door_server_address, else
    its internal address (where its services listen behind a front door); a host may set llm_backend_port,
    llm_frontend_port and llm_frontend_enabled."""
    servers: list[dict[str, Any]] = []
    for host in hosts:
        if not SERVER_NAME.match(host):
            raise AnsibleFilterError(f"host {host!r} of the front door's group: its inventory name is its HAProxy "
                                     "server name, which takes letters, digits and _.:- only (at most 64)")
        own = hostvars[host]
        address = own.get("front_door_server_address") or internal_address(own)
        if not address:
            raise AnsibleFilterError(f"the front door cannot tell where host {host} listens: set its "
                                     "llm_internal_address (or front_door_server_address), or let this run gather its "
                                     "facts (its default IPv4 address)")
        chat = own.get("llm_frontend_enabled", frontend_enabled)
        servers.append({
            "name": host,
            "address": _address(host, address),
            "backend_port": _port(host, "llm_backend_port", own.get("llm_backend_port", backend_port)),
            "frontend_port": (_port(host, "llm_frontend_port", own.get("llm_frontend_port", frontend_port))
                              if str(chat).lower() in ("true", "1", "yes", "on") else None),
        })
    return servers


def front_door_metrics_targets(doors: list[str], hostvars: Mapping[str, Any],
                               default_port: Any) -> list[dict[str, str]]:
    """[front door host names], hostvars, the shared front_door_metrics_port -> [{host, address: "<ip>:<port>"}]:
    where each front door serves HAProxy's own metrics, for Prometheus and the doctor. The address is the door's
    front_door_metrics_bind_address where that names one address, else its internal address (where role front_door
    binds them by default), else monitoring_scrape_address, ansible_host or its name; none where the port is 0."""
    targets = []
    for door in doors:
        own = hostvars[door]
        wanted = own.get("front_door_metrics_port", default_port)
        port = _port(door, "front_door_metrics_port", wanted) if str(wanted) != "0" else 0
        if not port:
            continue
        bind = str(own.get("front_door_metrics_bind_address") or "")
        address = (bind if bind not in ("", "0.0.0.0", "[::]") else internal_address(own)) \
            or str(own.get("monitoring_scrape_address") or own.get("ansible_host") or door)
        targets.append({"host": door, "address": f"{address}:{port}"})
    return targets


class FilterModule:
    def filters(self) -> dict:
        return {"front_door_servers": front_door_servers, "llm_internal_address": internal_address,
                "front_door_metrics_targets": front_door_metrics_targets}
