"""The integration tests share one real llama.cpp server."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from llm_fixture import Engine, running_engine


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    with running_engine() as eng:
        yield eng
