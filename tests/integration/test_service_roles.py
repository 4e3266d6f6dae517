"""llm_stack's table of service roles: a role that adds services to the host's compose project is one row of it, and
llm_stack runs it, checks what it set against the one declared shape, and writes its services after the engine and
the other roles' (a simulated role, tests/playbooks/roles/service_role_sim, through the render entry point).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from llm_fixture import ROOT, Cases, run_cases
from test_render_stack import IMAGE

# The table as the role ships it, with the simulated role's row added (extra vars win over role vars).
TABLE = yaml.safe_load((ROOT / "roles/llm_stack/vars/main.yml").read_text())["__llm_stack_service_roles"]
SIM_ROW = {"role": "service_role_sim", "services": "sim_services",
           "entry": {"main": "main", "stage": "main", "render": "main"}}
CACHE = {"name": "cache", "definition": {"image": "redis:7"}}
SHAPE = ("{} entries are {{name, definition[, configs]}}: a service name of at most 63 lower-case letters, digits, "
         "'.', '-' or '_' other than 'engine', a compose service with an image, and configs a mapping; entry 0 has {}.")
CASES = [
    # What the role set is judged once it has run; the project is not written.
    ({"sim_services_value": "redis:7"},
     "Each service role sets a list of services; not: sim_services (str) (vars/main.yml's __llm_stack_service_roles"),
    ({"sim_unset": True},
     "Each service role sets a list of services; not: sim_services (not set by service_role_sim)"),
    ({"sim_services_value": [{"name": {"secret": "s3"}, "definition": {"image": "redis:7"}}]},
     SHAPE.format("sim_services", 'keys ["name", "definition"], name of type dict, definition keys ["image"]')),
    ({"sim_services_value": [{**CACHE, "configs": "s3"}]},
     SHAPE.format("sim_services", 'keys ["name", "definition", "configs"], name "cache", definition keys ["image"]')),
    ({"sim_services_value": [{"name": "engine", "definition": {"image": "redis:7"}}]},
     SHAPE.format("sim_services", 'keys ["name", "definition"], name "engine", definition keys ["image"]')),
    ({"sim_services_value": [{"name": "cache", "definition": {"image": "Redis:7", "environment": {"PASSWORD": "s3"}}}]},
     IMAGE.format("sim_services[cache].definition.image")),
    ({"sim_services_value": [CACHE], "llm_stack_extra_services": [CACHE]},
     'sim_services[cache]: another added service has the name "cache" (the services: ["cache", "cache"]).'),
    # The extra services are judged before anything runs: the role never does.
    ({"sim_services_value": [], "llm_stack_extra_services": [{"name": "engine", "definition": {"image": "redis:7"}}]},
     SHAPE.format("llm_stack_extra_services", 'keys ["name", "definition"], name "engine", definition keys ["image"]')),
    ({"sim_services_value": [], "llm_stack_extra_services": [CACHE, CACHE]},
     'llm_stack_extra_services[cache]: another added service has the name "cache"'),
    # A string is read by the argument spec as a list of one k=v mapping, and refused by it.
    ({"sim_services_value": [], "llm_stack_extra_services": "name=cache"},
     "missing required arguments: definition found in llm_stack_extra_services"),
]
GOOD = {"sim_services_value": [CACHE],
        "llm_stack_extra_services": [{"name": "proxy", "definition": {"image": "haproxy:3.2"}}]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, Path]:
    work = tmp_path_factory.mktemp("service-roles")
    # llama.cpp on the CPU: the lightest engine to define (the table, not the engine, is under test).
    cases = {f"case-{index}": {"llm_stack_engine": "llamacpp_cpu",
                               "llm_stack_dir": str(work / f"case-{index}" / "stack"), "preflight_gpu_mode": "cpu",
                               "preflight_nvidia_gpus": [], "llm_stack_served_model_name": "m", **variables}
             for index, (variables, _) in enumerate([*CASES, (GOOD, "")])}
    return run_cases(work, "render_apps.yml", cases, extravars={"__llm_stack_service_roles": [*TABLE, SIM_ROW]}), work


@pytest.mark.parametrize(("index", "variables", "message"), [(i, *case) for i, case in enumerate(CASES)])
def test_what_a_service_role_sets_is_checked_before_the_project_is_written(runs: tuple[Cases, Path], index: int,
                                                                           variables: dict, message: str) -> None:
    cases, work = runs
    host = f"case-{index}"
    output = cases.hosts[host]
    assert host in cases.failed, output[-3000:]
    assert message in output or json.dumps(message)[1:-1] in output, output[-3000:]
    assert not (work / host / "stack" / "docker-compose.yml").exists()
    # Names and keys only: a definition's values (its environment) are not shown.
    assert "s3" not in output


def test_a_service_role_is_one_row_of_the_table(runs: tuple[Cases, Path]) -> None:
    cases, work = runs
    host = f"case-{len(CASES)}"
    assert host not in cases.failed, cases.hosts[host][-3000:]
    stack = work / host / "stack"
    out = subprocess.run(["docker", "compose", "--project-directory", str(stack), "config", "--format", "json"],
                         capture_output=True, text=True, check=True)
    services = json.loads(out.stdout)["services"]
    assert services["cache"]["image"] == "redis:7" and services["cache"]["restart"] == "unless-stopped"
    # As written: the engine, then the table's roles in order (the simulated one last), then the extra services.
    assert list(yaml.safe_load((stack / "docker-compose.yml").read_text())["services"]) == ["engine", "cache", "proxy"]
