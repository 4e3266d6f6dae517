"""Fixtures shared by the tests under tests/ and apps/*/tests: one real llama.cpp server for the whole session; which
tests share a pytest worker."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from llm_fixture import Engine, running_engine


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A real llama.cpp server (xllamacpp) with SmolLM2-135M-Instruct, requiring llm_fixture.API_KEY."""
    with running_engine() as eng:
        yield eng


# `make unit` runs the tests on two workers (pytest-xdist): most tests render into their own tmp_path and share
# nothing, and are handed out one by one. These stay together on one worker, each group in order:
# - "engine": the tests of the one real llama.cpp server (the session fixture above; two servers on two cores would
#   slow each other's completions), with the browser test, whose Playwright loop must close before others run;
# - test_stage_vllm.py: its module fixture builds the simulated vLLM image once, and its runs start containers;
# - test_front_door.py: its module fixtures run one HAProxy and one batch of bad inputs, and its last test stops a
#   backend;
# - test_shared_limits.py: one Redis and three backends per module; its last test stops and starts the store;
# - the bad-input cases that one playbook run judges together (llm_fixture.run_cases, a module fixture): split over
#   two workers, each worker would run the whole batch (test_service_roles.py: its batch and the good case it holds;
#   test_render_stack.py: its bad inputs and the renders that pass, each batch one run).
# xdist's own grouping mark (xdist_group, --dist loadgroup) does not take with pytest 9 (xdist 3.8 rewrites a test id
# attribute that pytest 9 no longer reads): its scheduler for --dist loadscope is given these scopes instead, the way
# xdist documents for custom grouping (LoadScopeScheduling._split_scope).
ENGINE_FILES = {"test_chat_ui.py", "test_backend_live.py", "test_checks.py", "test_collection.py", "test_doctor.py"}
SERIAL_FILES = {"test_stage_vllm.py", "test_check_inputs.py", "test_front_door.py", "test_shared_limits.py",
                "test_limits_store.py", "test_input_checks.py", "test_container_engine_inputs.py",
                "test_service_roles.py", "test_render_stack.py"}
BATCHES = {("test_apps.py", "test_bad_inputs_fail_before_anything_is_written"),
           ("test_gpu_inputs.py", "test_bad_driver_inputs_fail_before_any_change"),
           ("test_rules.py", "test_a_bad_input_is_refused_by_name_before_anything_is_written")}


def scope_of(nodeid: str) -> str:
    path, _, test = nodeid.partition("::")
    name, function = path.rsplit("/", 1)[-1], test.split("[", 1)[0]
    if name in ENGINE_FILES:
        return "engine"
    if name in SERIAL_FILES:
        return name
    return f"{name}::{function}" if (name, function) in BATCHES else nodeid


# Optional: `-p no:xdist` (one process, no xdist at all) must still collect.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415 (only where xdist distributes)

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return Scheduling(config, log)
