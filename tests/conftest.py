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
