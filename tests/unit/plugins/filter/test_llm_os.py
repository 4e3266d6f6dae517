"""llm_os_vars_files: the layered per-OS vars files, in order, only those that exist."""
from __future__ import annotations

from pathlib import Path

from ansible_collections.llm_endpoints.core.plugins.filter.llm_os import os_vars_files

UBUNTU = {"os_family": "Debian", "distribution": "Ubuntu", "distribution_major_version": "24"}
DEBIAN_12 = {"os_family": "Debian", "distribution": "Debian", "distribution_major_version": "12"}


def test_layers_in_order_and_missing_ones_skipped(tmp_path: Path) -> None:
    for name in ("Debian.yml", "Ubuntu.yml", "Debian-12.yml", "Fedora.yml", "x-Debian.yml"):
        (tmp_path / name).write_text("---\n")
    assert os_vars_files(UBUNTU, str(tmp_path)) == [str(tmp_path / "Debian.yml"), str(tmp_path / "Ubuntu.yml")]
    # os family and distribution are the same word on Debian: loaded once, then the version layer.
    assert os_vars_files(DEBIAN_12, str(tmp_path)) == [str(tmp_path / "Debian.yml"), str(tmp_path / "Debian-12.yml")]
    assert os_vars_files(UBUNTU, str(tmp_path), prefix="x-") == [str(tmp_path / "x-Debian.yml")]
