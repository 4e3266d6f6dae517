"""The dnf5 versionlock file the branch lock writes: dnf5's own schema (versionlock(8)), entries of other packages
kept, idempotent whatever order dnf5 left the file in."""
from __future__ import annotations

import tomllib

from ansible_collections.llm_endpoints.core.plugins.modules import dnf5_versionlock_branch as lock

COMMENT = "llm-endpoints: driver branch lock"
# What `dnf5 versionlock add` wrote for another package (captured from dnf5 5.4 in the fedora42_sim image).
FOREIGN = {"name": "nvidia-container-toolkit", "comment": "Added by 'versionlock add' command on 2026-11-28 02:14:57",
           "conditions": [{"key": "evr", "comparator": "=", "value": "1.17.8-1"}]}


def test_each_package_gets_the_branch_range() -> None:
    doc = lock.desired({"version": "1.0", "packages": []}, [{"name": "nvidia-open", "epoch": 3}], 580, COMMENT)
    assert doc["packages"] == [{"name": "nvidia-open", "comment": COMMENT, "conditions": [
        {"key": "evr", "comparator": ">=", "value": "3:580"}, {"key": "evr", "comparator": "<", "value": "3:581"}]}]
    assert tomllib.loads(lock.render(doc)) == doc


def test_foreign_entries_stay_and_stale_ones_of_ours_go() -> None:
    stale = lock._entry("nvidia-kmod-open", 0, 570, COMMENT)
    old_exact = {"name": "nvidia-open", "comment": "Added by 'versionlock add' command",
                 "conditions": [{"key": "evr", "comparator": "=", "value": "570.195.03-1"}]}
    doc = lock.desired({"version": "1.0", "packages": [FOREIGN, stale, old_exact]},
                       [{"name": "nvidia-open", "epoch": 0}], 570, COMMENT)
    assert [e["name"] for e in doc["packages"]] == ["nvidia-container-toolkit", "nvidia-open"]
    assert doc["packages"][1]["conditions"][1] == {"key": "evr", "comparator": "<", "value": "0:571"}


def test_a_reordered_file_is_the_same_lock() -> None:
    ours = lock.desired({"version": "1.0", "packages": []}, [{"name": "nvidia-open", "epoch": 3}], 580, COMMENT)
    reordered = {"version": "1.0", "packages": [FOREIGN, *ours["packages"]]}
    again = lock.desired(reordered, [{"name": "nvidia-open", "epoch": 3}], 580, COMMENT)
    assert lock._entries(again) == lock._entries(reordered)
