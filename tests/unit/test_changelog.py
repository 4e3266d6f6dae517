"""The collection's changelog the collection way (antsibull-changelog): the fragments waiting for the next release and
changelogs/changelog.yaml pass the tool's own linters, CHANGELOG.md is what the tool generates from them (nobody
edits it by hand), and galaxy.yml's version is not behind the last release."""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from helpers import ROOT

TOOL = str(ROOT / ".venv/bin/antsibull-changelog")


def tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_fragments_and_the_release_history_pass_the_linters() -> None:
    fragments = sorted(str(p) for p in (ROOT / "changelogs/fragments").glob("*.y*ml"))
    result = tool("lint", *fragments)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    result = tool("lint-changelog-yaml", "--strict", "changelogs/changelog.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_fragment_with_an_unknown_section_or_bad_markup_is_refused(tmp_path: Path) -> None:
    # The linter above can fail: a section the configuration lacks, RST that does not parse.
    (tmp_path / "bad-section.yml").write_text("---\nnew_stuff:\n  - something\n")
    (tmp_path / "bad-markup.yml").write_text("---\nbugfixes:\n  - '``unclosed literal'\n")
    result = tool("lint", str(tmp_path / "bad-section.yml"), str(tmp_path / "bad-markup.yml"))
    assert "bad-section.yml" in result.stdout and "new_stuff" in result.stdout, result.stdout
    assert "bad-markup.yml" in result.stdout, result.stdout


def test_changelog_md_is_the_generated_one(tmp_path: Path) -> None:
    out = tmp_path / "CHANGELOG.md"
    result = tool("generate", "--output", str(out), "--output-format", "md")
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.read_text() == (ROOT / "CHANGELOG.md").read_text(), (
        "CHANGELOG.md differs from what antsibull-changelog generates: add a fragment instead of editing it")


def test_galaxy_version_is_not_behind_the_last_release() -> None:
    releases = yaml.safe_load((ROOT / "changelogs/changelog.yaml").read_text())["releases"]
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    assert version(galaxy) >= max(version(v) for v in releases), (galaxy, sorted(releases))
