"""Mitogen for Ansible, the opt-in strategy the README offers for speed (benchmarks/fleet_converge.py --mitogen),
loads with the pinned ansible-core and runs the collection's roles to the same result as Ansible's own strategy:
llm_stack's render entry point for a simulated RTX 5090 host writes the same compose file and env file, with the
same modes, under both strategies."""
from __future__ import annotations

import stat
from pathlib import Path

import ansible_mitogen
from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import describe
from llm_fixture import run_playbook

# A simulated GPU fact, as preflight sets it: the PCI listing described from the collection's GPU table.
RTX_5090 = {"pci_address": "0000:01:00.0", "vendor_id": "10de", "device_id": "2b85", "class": "030000",
            "driver": "nvidia", **describe("2b85")}
MITOGEN = {"ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
           "ANSIBLE_STRATEGY": "mitogen_linear"}


def rendered(tmp_path: Path, envvars: dict | None) -> tuple[dict[str, tuple[str, int]], str]:
    stack = tmp_path / "stack"
    stack.mkdir(parents=True)
    variables = {"llm_stack_engine": "vllm", "llm_stack_dir": str(stack), "preflight_gpu_mode": "nvidia",
                 "preflight_nvidia_gpus": [RTX_5090], "llm_stack_served_model_name": "openai/gpt-oss-20b",
                 "llm_stack_api_key": "mitogen-test-api-key"}
    run = run_playbook(tmp_path, "render_stack.yml", variables, envvars=envvars)
    assert run.rc == 0, run.output[-4000:]
    # Every file with its mode (the releases folder aside: its names carry the run's time).
    files = {p.relative_to(stack).as_posix(): (p.read_text().replace(str(stack), "<stack>"),
                                               stat.S_IMODE(p.stat().st_mode))
             for p in sorted(stack.rglob("*")) if p.is_file() and "releases" not in p.parts}
    return files, run.output


def test_mitogen_renders_the_stack_as_ansibles_own_strategy_does(tmp_path: Path) -> None:
    plain, _ = rendered(tmp_path / "linear", None)
    fast, _ = rendered(tmp_path / "mitogen", MITOGEN)
    assert "docker-compose.yml" in plain and "engine.env" in plain, sorted(plain)
    assert fast == plain
    assert plain["engine.env"][1] == 0o600
