"""The backend's key file entries: whether each is well-formed, and what the host keeps of llm_apps_backend_api_keys
(hashes, never keys)."""
from __future__ import annotations

import hashlib
import re
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.llm_endpoints.core.plugins.module_utils.rate_limits import is_rate_limit

KEY_FIELDS = frozenset(("id", "key", "sha256", "rate_limit", "max_streams", "enabled", "max_n", "max_tokens",
                        "max_messages"))
# The backend's own check keys (llm_smoke sends them): a client key may not take their ids.
RESERVED_IDS = frozenset(("smoke", "smoke-ratelimit"))
_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")
_KEY = re.compile(r"[!-~]{32,512}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_WHOLE = re.compile(r"[0-9]+\Z")
# Per-key caps, as the backend bounds them.
_RANGES = {"max_streams": (1, 10000), "max_n": (1, 1024), "max_tokens": (1, 10000000), "max_messages": (1, 1000000)}


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


def _entry_ok(entry: object, ids: list[str]) -> bool:
    if not isinstance(entry, dict) or not set(entry) <= KEY_FIELDS or ("key" in entry) == ("sha256" in entry):
        return False
    key_id = str(entry.get("id", ""))
    if not _ID.match(key_id) or key_id in RESERVED_IDS or ids.count(key_id) != 1:
        return False
    if "key" in entry and (not _KEY.match(str(entry["key"])) or "CHANGE-ME" in str(entry["key"])):
        return False
    if "sha256" in entry and not _SHA256.match(str(entry["sha256"])):
        return False
    if "rate_limit" in entry and not is_rate_limit(entry["rate_limit"]):
        return False
    if not isinstance(entry.get("enabled", True), bool):
        return False
    return all(_WHOLE.match(str(entry[field])) and low <= int(entry[field]) <= high
               for field, (low, high) in _RANGES.items() if field in entry)


def backend_bad_key_entry(entries: list[Any]) -> dict[str, Any] | None:
    """The first malformed entry of llm_apps_backend_api_keys as {index, id} (the id as given, or "?"), None when
    every entry is well-formed: {id, key} or {id, sha256}, an id of at most 64 lower-case letters, digits, '_', '.'
    or '-', unique and not a reserved one; a key of 32 to 512 printable ASCII characters without spaces, not the
    example's CHANGE-ME placeholder, or its sha256 in lower-case hex; optional rate_limit (the backend's syntax),
    max_streams, max_n, max_tokens, max_messages (whole numbers in range) and enabled (a boolean); no other field.
    Nothing of a key is returned."""
    ids = [str(entry.get("id", "")) for entry in entries if isinstance(entry, dict)]
    for index, entry in enumerate(entries):
        if not _entry_ok(entry, ids):
            return {"index": index, "id": str(entry.get("id", "?")) if isinstance(entry, dict) else "?"}
    return None


def backend_keys_twice(entries: list[dict[str, Any]]) -> list[list[str]]:
    """Pairs of ids that hold the same key (as key or as its sha256), [first id, later id] in order; the backend would
    count such a key against whichever id it finds first. Well-formed entries only (backend_bad_key_entry first).
    Ids only: nothing of a key is returned."""
    seen: dict[str, str] = {}
    twice = []
    for entry in map(backend_key_entry, entries):
        if entry["sha256"] in seen:
            twice.append([seen[entry["sha256"]], entry["id"]])
        else:
            seen[entry["sha256"]] = entry["id"]
    return twice


class FilterModule:
    def filters(self) -> dict:
        return {"llm_backend_key_entry": backend_key_entry, "llm_backend_bad_key_entry": backend_bad_key_entry,
                "llm_backend_keys_twice": backend_keys_twice}
