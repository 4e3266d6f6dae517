"""YAML files of the collection parsed once per process while they are unchanged (controller side only: the lookups
that read roles' files on every host's checks)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

T = TypeVar("T")
# libyaml's loader where PyYAML has it.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlFiles(Generic[T]):
    """`build` over the parsed files, kept until one of them changes (its name, size or modification time)."""

    def __init__(self, build: Callable[[list[tuple[Path, Any]]], T]) -> None:
        self._build = build
        self._key: tuple[tuple[str, int, int], ...] | None = None
        self._value: T | None = None

    def get(self, paths: Sequence[Path]) -> T:
        key = tuple((str(p), st.st_mtime_ns, st.st_size) for p in paths for st in (p.stat(),))
        if key != self._key or self._value is None:
            self._value = self._build([(p, yaml.load(p.read_text(), Loader=_LOADER)) for p in paths])
            self._key = key
        return self._value
