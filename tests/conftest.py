"""Fixtures shared by the integration and browser tests: one real llama.cpp server for the whole session."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from llm_fixture import Engine, running_engine


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A real llama.cpp server (xllamacpp) with SmolLM2-135M-Instruct, requiring llm_fixture.API_KEY."""
    with running_engine() as eng:
        yield eng


# `make unit` runs the tests on two workers (pytest-xdist, --dist loadgroup): most tests render into their own
# tmp_path and share nothing. These stay together on one worker, each group in order:
# - "engine": the tests of the one real llama.cpp server (the session fixture above; two servers on two cores would
#   slow each other's completions), with the browser test, whose Playwright loop must close before others run;
# - test_stage_vllm.py: its module fixture builds the simulated vLLM image once, and its runs start containers.
ENGINE_FILES = {"test_chat_ui.py", "test_backend_live.py", "test_checks.py", "test_collection.py", "test_doctor.py"}
MODULE_FIXTURE_FILES = {"test_stage_vllm.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        if name in ENGINE_FILES:
            item.add_marker(pytest.mark.xdist_group("engine"))
        elif name in MODULE_FIXTURE_FILES:
            item.add_marker(pytest.mark.xdist_group(name))
