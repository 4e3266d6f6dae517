"""The repository as a collection: `ansible-galaxy collection build`, installed into a temporary collections path,
and playbooks run from the installed artifact (not from this checkout) against a real llama.cpp server."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from helpers import ROOT
from llm_fixture import Engine, run_playbook

GALAXY = str(Path(sys.executable).parent / "ansible-galaxy")
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
# A user's playbook: the collection's proof playbook on its own (it reads preflight's facts and describes the
# deployment itself when no provision or serve ran before it in the same run).
USER_PLAYBOOK = """---
- name: The collection's own proof playbook
  ansible.builtin.import_playbook: llm_endpoints.core.verify
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("collection")
    subprocess.run([GALAXY, "collection", "build", "--output-path", str(work / "dist"), str(ROOT)],
                   check=True, capture_output=True, text=True)
    [artifact] = list((work / "dist").glob("llm_endpoints-core-*.tar.gz"))
    # Away from the checkout: there, the collection is already "installed" through .collection/.
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(work),
           "ANSIBLE_COLLECTIONS_PATH": str(work / "collections")}
    subprocess.run([GALAXY, "collection", "install", "--no-deps", "--force", "-p", str(work / "collections"),
                    str(artifact)], check=True, capture_output=True, text=True, cwd=work, env=env)
    assert (work / "collections/ansible_collections/llm_endpoints/core/MANIFEST.json").is_file()
    return artifact, work / "collections"


def test_artifact_holds_the_collection_and_leaves_out_the_test_tree(installed: tuple[Path, Path]) -> None:
    artifact, _ = installed
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert manifest["collection_info"]["namespace"] == "llm_endpoints"
    assert manifest["collection_info"]["name"] == "core"
    for present in ("playbooks/site.yml", "playbooks/verify.yml", "playbooks/rollout.yml",
                    "roles/llm_rollout/tasks/main.yml", "roles/host_lock/tasks/main.yml",
                    "playbooks/host_state.yml", "roles/host_state/tasks/record.yml", "plugins/action/llm_host_state.py",
                    "roles/llm_stack/tasks/render.yml",
                    "roles/llm_defaults/defaults/main.yml", "plugins/modules/llm_smoke.py",
                    "plugins/module_utils/openai_client.py", "plugins/filter/nvidia_smi.py", "meta/runtime.yml",
                    # llm_apps builds the backend and chat UI images from these (role_path/../../apps)
                    "roles/llm_apps/tasks/build.yml", "apps/backend/llm_backend.py", "apps/backend/gateway/store.py",
                    "apps/backend/gateway/app.py", "apps/backend/requirements.txt",
                    "apps/frontend/chat.py", "apps/frontend/.streamlit/config.toml", "apps/frontend/requirements.txt"):
        assert present in names, present
    for left_out in ("molecule", "tests", "apps/backend/tests", "apps/frontend/tests", "conftest.py", "inventory",
                     "scripts", ".collection", ".venv", ".cache", ".ansible",
                     "playbooks/lab_host.yml", "playbooks/lab_summary.yml", "site.yml", "templates", "docs",
                     "execution-environment.yml", "ee"):
        assert not any(n == left_out or n.startswith(left_out + "/") for n in names), f"{left_out} is in the artifact"


def test_the_installed_artifact_has_the_checkouts_code_digest(installed: tuple[Path, Path], tmp_path: Path) -> None:
    # An unchanged host stays unchanged whether a run comes from the checkout or from the artifact (an execution
    # environment's): the digest covers what the artifact ships, and the collection's metadata from either file.
    _, collections = installed
    spec = importlib.util.spec_from_file_location("digest", ROOT / "plugins/action/llm_host_state.py")
    plugin = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(plugin)  # type: ignore[union-attr]
    core = collections / "ansible_collections/llm_endpoints/core"
    assert not (core / "galaxy.yml").exists() and not (core / "playbooks/lab_host.yml").exists()
    assert plugin.code_digest(core) == plugin.code_digest(ROOT)
    # A change to shipped code shows (in a copy: the other tests run the installed one).
    changed = shutil.copytree(core, tmp_path / "core")
    (changed / "roles/llm_stack/tasks/render.yml").write_text("---\n")
    assert plugin.code_digest(changed) != plugin.code_digest(ROOT)


def test_site_playbook_imports_from_the_installed_collection(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, collections = installed
    (tmp_path / "site.yml").write_text(
        "---\n- name: Pipeline\n  ansible.builtin.import_playbook: llm_endpoints.core.site\n")
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"llm_hosts": {"hosts": {"gpu-01": {}}}}))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "ANSIBLE_COLLECTIONS_PATH": str(collections),
           "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"), "HOME": str(tmp_path)}
    run = subprocess.run([str(PLAYBOOK), "-i", str(tmp_path / "hosts.yml"), "--list-tasks", str(tmp_path / "site.yml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    for task in ("llm_endpoints.core.host_state : The host is compared with its last successful run (one call)",
                 "llm_endpoints.core.preflight : NVIDIA GPUs on the PCI bus are listed",
                 "Model is served",
                 "llm_endpoints.core.llm_report : Host reports and the fleet summary are written"):
        assert task in run.stdout, run.stdout[-3000:]


def test_installed_collection_runs_the_proof_playbook(installed: tuple[Path, Path], engine: Engine,
                                                       tmp_path: Path) -> None:
    _, collections = installed
    playbook = tmp_path / "user.yml"
    playbook.write_text(USER_PLAYBOOK)
    variables = {"llm_stack_engine": "llamacpp_cpu", "llm_stack_dir": str(tmp_path / "stack"),
                 "llm_stack_port": engine.port, "llm_stack_served_model_name": engine.model,
                 "llm_stack_api_key": engine.api_key, "llm_smoke_profile": "smollm2-135m",
                 "preflight_min_memory_mb": 512, "preflight_min_disk_gb": 1, "llm_report_run_id": "from-artifact",
                 "llm_throughput_concurrency": [1], "llm_throughput_requests_per_level": 2,
                 "llm_throughput_max_tokens": 16, "llm_throughput_warmup_requests": 1}
    run = run_playbook(tmp_path, str(playbook), variables, collections_path=collections)
    assert run.rc == 0, run.output[-4000:]
    report = json.loads((run.report_dir / "from-artifact" / "localhost.json").read_text())
    assert report["status"] == "pass"
    assert report["deployment"]["engine"] == "llamacpp_cpu"
    # With that environment the collection resolves to the installed copy, not to this checkout.
    doc = subprocess.run([str(PLAYBOOK.parent / "ansible-doc"), "-t", "module", "llm_endpoints.core.llm_smoke"],
                         capture_output=True, text=True, cwd=tmp_path, check=True,
                         env={"PATH": f"{PLAYBOOK.parent}:/usr/bin:/bin", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                              "ANSIBLE_COLLECTIONS_PATH": str(collections), "HOME": str(tmp_path)})
    assert str(collections / "ansible_collections/llm_endpoints/core/plugins/modules/llm_smoke.py") in doc.stdout, \
        doc.stdout[:500]


# Every module the collection ships (a new one is covered without being listed here).
@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py")
                                          if not p.stem.startswith("_")))
def test_module_documentation_parses(installed: tuple[Path, Path], module: str, tmp_path: Path) -> None:
    _, collections = installed
    doc = subprocess.run([str(PLAYBOOK.parent / "ansible-doc"), "-j", "-t", "module", f"llm_endpoints.core.{module}"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": f"{PLAYBOOK.parent}:/usr/bin:/bin", "ANSIBLE_COLLECTIONS_PATH": str(collections),
                              "HOME": str(tmp_path)})
    assert doc.returncode == 0, doc.stderr
    options = json.loads(doc.stdout)[f"llm_endpoints.core.{module}"]["doc"]["options"]
    assert options, f"{module} documents no options"
