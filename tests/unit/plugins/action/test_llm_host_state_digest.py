"""The desired state's digest (plugins/action/llm_host_state.py), in process with a stand-in templar: what changes it
(a role variable, a decisive fact, a front door's membership, the collection's code, a file a variable names, a served
host's variable on a front door) and what does not (the run's id, a restored fact, tests, Python caches)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleUndefinedVariable
from ansible_collections.llm_endpoints.core.plugins.action import llm_host_state as plugin

ROOT = Path(__file__).resolve().parents[4]


class Templar:
    """Returns values as they are; a value '{{ missing }}' cannot be templated (a fact no play gathered)."""

    def template(self, value: Any) -> Any:
        if value == "{{ missing }}":
            raise AnsibleUndefinedVariable("'missing' is undefined: the secret s3cr3t")
        return value


BASE: dict[str, Any] = {
    "inventory_hostname": "gpu-1",
    "llm_stack_engine": "vllm", "llm_stack_api_key": "key-one", "preflight_min_disk_gb": 50,
    "llm_run_id": "20261207T000000Z", "preflight_gpu_mode": "nvidia", "__llm_private": 1, "ansible_host": "10.0.0.1",
    "ansible_facts": {"distribution": "Fedora", "kernel": "6.17.1", "all_ipv4_addresses": ["10.0.0.1"],
                      "date_time": {"epoch": "1"}},
    "groups": {"llm_hosts": ["gpu-1", "gpu-2"], "llm_edge": ["edge-1"], "llm_monitoring": []},
    "ansible_play_hosts_all": ["gpu-1", "gpu-2"],
    "hostvars": {"gpu-2": {"llm_stack_api_key": "key-two", "ansible_facts": {"kernel": "6.17.1"}}},
}


def digest(**changes: Any) -> str:
    variables = copy.deepcopy(BASE)
    for key, value in changes.items():
        variables[key] = value
    return plugin.desired_digest(Templar(), variables)


@pytest.mark.parametrize(("changes", "same"), [
    ({"llm_run_id": "20261208T000000Z"}, True),
    ({"preflight_gpu_mode": "none"}, True),  # restored from the record by the check: not desired state
    ({"__llm_private": 2}, True),
    ({"ansible_facts": {**BASE["ansible_facts"], "date_time": {"epoch": "2"}}}, True),
    ({"ansible_facts": {**BASE["ansible_facts"], "all_ipv4_addresses": ["10.0.0.1", "172.18.0.1"]}}, True),
    ({"ansible_host": "10.0.0.9"}, True),  # how it is reached, not what it runs
    ({"llm_stack_api_key": "key-rotated"}, False),
    ({"preflight_min_disk_gb": 60}, False),
    ({"ansible_facts": {**BASE["ansible_facts"], "kernel": "6.18.0"}}, False),
    ({"groups": {**BASE["groups"], "llm_edge": []}}, False),
    ({"llm_stack_new_setting": "x"}, False),
], ids=["run-id", "restored-fact", "private", "unused-fact", "a-docker-network", "connection", "key", "setting",
        "kernel", "front-door", "new-setting"])
def test_what_changes_the_digest(changes: dict[str, Any], same: bool) -> None:
    assert (digest(**changes) == digest()) == same


def test_a_value_that_cannot_be_templated_counts_by_its_kind_only() -> None:
    doc = plugin.host_part(Templar(), {"llm_stack_bind_address": "{{ missing }}"}, ["llm_stack_bind_address"])
    assert doc["vars"] == {"llm_stack_bind_address": "<not templated: AnsibleUndefinedVariable>"}


def test_a_file_a_variable_names_counts_by_content(tmp_path: Path) -> None:
    certificate = tmp_path / "tls.pem"
    certificate.write_text("one\n")
    before = digest(front_door_tls_certificate_file=str(certificate))
    assert digest(front_door_tls_certificate_file=str(certificate)) == before
    certificate.write_text("two\n")
    assert digest(front_door_tls_certificate_file=str(certificate)) != before


def test_a_front_door_covers_the_hosts_it_serves() -> None:
    edge = {"inventory_hostname": "edge-1", "ansible_play_hosts_all": ["edge-1", "gpu-2"]}
    before = digest(**edge)
    hostvars = {"gpu-2": {"llm_stack_api_key": "key-rotated", "ansible_facts": {"kernel": "6.17.1"}}}
    assert digest(**edge, hostvars=hostvars) != before
    # A serving host does not: its own services do not read the others'.
    assert digest(hostvars=hostvars) == digest()
    # Nor do the served host's address and the place it is scraped at, which its role defaults are made of.
    moved = {"gpu-2": {**BASE["hostvars"]["gpu-2"], "ansible_facts": {"default_ipv4": {"address": "10.0.0.7"}}}}
    assert digest(**edge, hostvars=moved) != before
    assert digest(**edge, hostvars={"gpu-2": {**BASE["hostvars"]["gpu-2"], "ansible_host": "gpu-2.lan"}}) != before


def test_the_code_digest_covers_code_not_tests_or_caches(tmp_path: Path) -> None:
    for path in ("roles/x/tasks/main.yml", "roles/x/tests/test.yml", "plugins/modules/m.py",
                 "plugins/modules/__pycache__/m.cpython-311.pyc", "apps/backend/tests/test_app.py", "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("1\n")
    before = plugin.code_digest(tmp_path)
    (tmp_path / "roles/x/README.md").write_text("1\n")
    before = plugin.code_digest(tmp_path)
    for path in ("roles/x/tests/test.yml", "plugins/modules/__pycache__/m.cpython-311.pyc",
                 "apps/backend/tests/test_app.py", "README.md", "roles/x/README.md"):
        (tmp_path / path).write_text("2\n")
        assert plugin.code_digest(tmp_path) == before, path
    (tmp_path / "plugins/modules/m.py").write_text("2\n")
    assert plugin.code_digest(tmp_path) != before


def test_the_restored_facts_are_the_roles_list() -> None:
    role_vars = yaml.safe_load((ROOT / "roles/host_state/vars/main.yml").read_text())
    assert tuple(role_vars["__host_state_fact_names"]) == plugin.RESTORED


def test_the_records_own_path_is_the_hosts_not_a_control_node_file(tmp_path: Path) -> None:
    # A control node that is also a managed host (a local connection) has the record at that path: it changes with
    # every record, and must not change the digest.
    record = tmp_path / "state.json"
    record.write_text("one\n")
    before = digest(host_state_path=str(record))
    record.write_text("two\n")
    assert digest(host_state_path=str(record)) == before
