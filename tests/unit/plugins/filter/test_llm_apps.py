"""plugins/filter/llm_apps.py: the backend's key entries as the host keeps them (hashes, never keys), the first
malformed one, and ids that hold the same key."""
from __future__ import annotations

import hashlib

from ansible_collections.llm_endpoints.core.plugins.filter.llm_apps import (
    backend_bad_key_entry,
    backend_key_entry,
    backend_keys_twice,
)

KEY = "sk-" + "a" * 40
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()


def test_a_key_is_kept_as_its_sha256_only() -> None:
    entry = backend_key_entry({"id": "alice", "key": KEY, "rate_limit": "60/minute", "max_streams": "4"})
    assert entry == {"id": "alice", "sha256": DIGEST, "rate_limit": "60/minute", "max_streams": 4}


def test_the_same_key_under_two_ids_is_named_by_ids_as_key_or_as_sha256() -> None:
    entries = [{"id": "a", "key": KEY}, {"id": "b", "key": "sk-" + "b" * 40}, {"id": "c", "sha256": DIGEST},
               {"id": "d", "key": KEY}]
    twice = backend_keys_twice(entries)
    assert twice == [["a", "c"], ["a", "d"]]
    assert KEY not in str(twice) and DIGEST not in str(twice)
    assert backend_keys_twice(entries[:2]) == []


def test_the_first_malformed_entry_is_named_by_index_and_id() -> None:
    assert backend_bad_key_entry([{"id": "a", "key": KEY}]) is None
    assert backend_bad_key_entry([{"id": "a", "key": KEY}, {"id": "a", "sha256": DIGEST}]) == {"index": 0, "id": "a"}
    assert backend_bad_key_entry([{"id": "ok", "key": KEY}, {"id": "x", "key": "short"}]) == {"index": 1, "id": "x"}
    assert backend_bad_key_entry([{"id": "smoke", "key": KEY}]) == {"index": 0, "id": "smoke"}
