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


# `make unit` runs the tests on two workers (pytest-xdist): most tests render into their own tmp_path and share
# nothing, and are handed out one by one. These stay together on one worker, each group in order:
# - "engine": the tests of the one real llama.cpp server (the session fixture above; two servers on two cores would
#   slow each other's completions), with the browser test, whose Playwright loop must close before others run;
# - test_stage_vllm.py: its module fixture builds the simulated vLLM image once, and its runs start containers.
# xdist's own grouping mark (xdist_group, --dist loadgroup) does not take with pytest 9 (xdist 3.8 rewrites a test id
# attribute that pytest 9 no longer reads): its scheduler for --dist loadscope is given these scopes instead, the way
# xdist documents for custom grouping (LoadScopeScheduling._split_scope).
ENGINE_FILES = {"test_chat_ui.py", "test_backend_live.py", "test_checks.py", "test_collection.py", "test_doctor.py"}
SERIAL_FILES = {"test_stage_vllm.py"}


# Optional: `-p no:xdist` (one process, no xdist at all) must still collect.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415 (only where xdist distributes)

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return "engine" if name in ENGINE_FILES else name if name in SERIAL_FILES else nodeid

    return Scheduling(config, log)
