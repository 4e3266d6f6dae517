"""The lookups' parsed-file cache (plugin_utils/yaml_files.py): parsed once while the files are unchanged, again when
one changes, is added or goes."""
from __future__ import annotations

import os
from pathlib import Path

from ansible_collections.llm_endpoints.core.plugins.plugin_utils.yaml_files import YamlFiles


def test_files_are_parsed_again_only_when_one_changes(tmp_path: Path) -> None:
    builds: list[list[tuple[str, object]]] = []
    files = YamlFiles(lambda parsed: builds.append([(p.name, c) for p, c in parsed]) or len(builds))
    a, b = tmp_path / "a.yml", tmp_path / "b.yml"
    a.write_text("x: 1\n")
    b.write_text("- 2\n")
    assert files.get([a, b]) == 1
    assert files.get([a, b]) == 1, "unchanged files were parsed again"
    assert builds == [[("a.yml", {"x": 1}), ("b.yml", [2])]]
    a.write_text("x: 3\n")
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 1_000_000))
    assert files.get([a, b]) == 2
    assert builds[-1] == [("a.yml", {"x": 3}), ("b.yml", [2])]
    assert files.get([a]) == 3, "a file gone from the list is a change"
    assert builds[-1] == [("a.yml", {"x": 3})]
