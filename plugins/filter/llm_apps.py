"""The backend's key file entries: what the host keeps of llm_apps_backend_api_keys (hashes, never keys)."""
from __future__ import annotations

import hashlib
from typing import Any

from ansible.errors import AnsibleFilterError


def backend_key_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """{id, key | sha256, rate_limit?, max_streams?, enabled?, max_n?, max_tokens?, max_messages?} -> the same with
    sha256 in place of key.

    The key is replaced by its sha256 (hex); the inputs are judged by llm_apps before this runs.
    """
    if not isinstance(entry, dict) or "id" not in entry or ("key" in entry) == ("sha256" in entry):
        raise AnsibleFilterError("an llm_apps_backend_api_keys entry needs an id and exactly one of key or sha256")
    digest = entry["sha256"] if "sha256" in entry else hashlib.sha256(str(entry["key"]).encode()).hexdigest()
    out: dict[str, Any] = {"id": str(entry["id"]), "sha256": str(digest)}
    if "rate_limit" in entry:
        out["rate_limit"] = str(entry["rate_limit"])
    for field in ("max_streams", "max_n", "max_tokens", "max_messages"):
        if field in entry:
            out[field] = int(entry[field])
    if "enabled" in entry:
        out["enabled"] = bool(entry["enabled"])
    return out


class FilterModule:
    def filters(self) -> dict:
        return {"llm_backend_key_entry": backend_key_entry}
