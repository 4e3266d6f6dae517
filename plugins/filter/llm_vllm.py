"""Choose vLLM's attention backend from a data table keyed by compute capability and vLLM version; compare vLLM
versions (llm_vllm_version_matches: 'v0.11.0' | llm_vllm_version_matches('>=0.11.1'))."""
from __future__ import annotations

import operator
import re
from typing import Any

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def version_tuple(text: str) -> tuple[int, ...]:
    """'v0.11.0' -> (0, 11, 0); suffixes such as '+gptoss' or 'rc1' are ignored."""
    match = re.match(r"v?(\d+(?:\.\d+)*)", str(text).strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def version_matches(version: str, spec: str) -> bool:
    match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*(\S+)\s*", spec)
    if not match:
        raise ValueError(f"not a version condition: {spec!r}")
    have, want = version_tuple(version), version_tuple(match.group(2))
    width = max(len(have), len(want))
    pad = lambda v: v + (0,) * (width - len(v))  # noqa: E731 - a one-line helper reads best here
    return _OPS[match.group(1)](pad(have), pad(want))


def attention_backend(table: list[dict[str, Any]], compute_capability: str, vllm_version: str) -> str:
    """The first row for this compute capability whose version condition holds; '' leaves vLLM's choice."""
    for row in table:
        if str(row["compute_capability"]) == str(compute_capability) and version_matches(vllm_version, row["vllm"]):
            return str(row["backend"])
    return ""


class FilterModule:
    def filters(self) -> dict:
        return {"llm_attention_backend": attention_backend, "llm_vllm_version_matches": version_matches}
