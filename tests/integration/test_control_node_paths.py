"""Reports and the wheel cache land beside the ansible.cfg in use (the project root), wherever the playbook is, when
neither LLM_REPORT_DIR nor LLM_CACHE_DIR is set: a site.yml run and `make lab` then share one cache, and --check on
a converged lab host downloads nothing (it reported 2 changed tasks when the cache followed the playbook's folder)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def paths(env: dict) -> dict:
    run = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "tests/playbooks/paths.yml"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return json.loads(re.search(r"PATHS (\{.*?\})\"", run.stdout).group(1).replace('\\"', '"'))


def test_paths_default_to_the_project_root() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_REPORT_DIR", "LLM_CACHE_DIR")}
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    assert paths(env) == {"reports": str(ROOT / "reports"), "cache": str(ROOT / ".cache")}


def test_the_environment_still_wins(tmp_path: Path) -> None:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), LLM_REPORT_DIR=str(tmp_path / "r"),
               LLM_CACHE_DIR=str(tmp_path / "c"))
    assert paths(env) == {"reports": str(tmp_path / "r"), "cache": str(tmp_path / "c")}


def test_a_system_wide_ansible_cfg_is_not_a_project(tmp_path: Path) -> None:
    """With /etc/ansible/ansible.cfg (or ~/.ansible.cfg) reports must not land in /etc/ansible: the playbook's
    folder is used instead."""
    etc = Path("/etc/ansible/ansible.cfg")
    made_dir = not etc.parent.exists()
    if not etc.exists():
        etc.parent.mkdir(parents=True, exist_ok=True)
        etc.write_text((ROOT / "ansible.cfg").read_text().replace(
            "collections_path = .collection", f"collections_path = {ROOT / '.collection'}"))
        created = True
    else:
        created = False
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("LLM_REPORT_DIR", "LLM_CACHE_DIR", "ANSIBLE_CONFIG")}
        env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".collection")
        playbook = [str(Path(sys.executable).parent / "ansible-playbook"), str(ROOT / "tests/playbooks/paths.yml")]
        run = subprocess.run(playbook, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        found = json.loads(re.search(r"PATHS (\{.*?\})\"", run.stdout).group(1).replace('\\"', '"'))
        beside_playbook = ROOT / "tests/playbooks"
        assert found == {"reports": str(beside_playbook / "reports"), "cache": str(beside_playbook / ".cache")}
    finally:
        if created:
            etc.unlink()
        if made_dir:
            etc.parent.rmdir()
