"""Capacity planning for vLLM: the KV cache the engine will report, and the concurrency that fits.

vLLM sizes its KV cache as  total GPU memory x gpu_memory_utilization
                             - model weights - profiled overhead (non-torch memory + peak activations)
and counts tokens in blocks of `block_size`:  tokens = floor(kv_bytes / (block_size x bytes_per_token)) x block_size
with bytes_per_token = layers x kv_heads x head_dim x 2 (K and V) x dtype bytes. vLLM 0.11 reports the token
count as if every layer kept the full context (sliding-window layers included): `count_sliding_as_full`.
The concurrency that fits a context can still take the sliding window into account (`llm_max_concurrency`).
"""
from __future__ import annotations

from typing import Any

GIB = 1024**3
REQUIRED_GEOMETRY = ("layers", "kv_heads", "head_dim", "dtype_bytes")


def _check(name: str, value: float, low: float, high: float | None = None, low_open: bool = False) -> None:
    if value < low or (low_open and value == low) or (high is not None and value > high):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {bound}, got {value}")


def bytes_per_token(geometry: dict[str, Any], include_sliding: bool = True) -> int:
    missing = [k for k in REQUIRED_GEOMETRY if k not in geometry]
    if missing:
        raise ValueError(f"model geometry lacks {missing}")
    layers = int(geometry["layers"])
    if not include_sliding:
        layers -= len(geometry.get("sliding_window_layers", []))
    return layers * int(geometry["kv_heads"]) * int(geometry["head_dim"]) * 2 * int(geometry["dtype_bytes"])


def kv_cache_plan(gpu_memory_bytes: float, utilization: float, weight_bytes: float, geometry: dict[str, Any],
                  overhead_bytes: float = 0, block_size: int = 16, count_sliding_as_full: bool = True) -> dict:
    """What vLLM will report for the KV cache on one GPU (tensor parallel 1)."""
    _check("gpu_memory_bytes", gpu_memory_bytes, 0, low_open=True)
    _check("gpu_memory_utilization", utilization, 0, 1, low_open=True)
    _check("weight_bytes", weight_bytes, 0)
    _check("overhead_bytes", overhead_bytes, 0)
    budget = gpu_memory_bytes * utilization
    kv_bytes = budget - weight_bytes - overhead_bytes
    per_token = bytes_per_token(geometry, include_sliding=count_sliding_as_full)
    blocks = int(kv_bytes // (block_size * per_token)) if kv_bytes > 0 else 0
    tokens = blocks * block_size
    return {
        "gpu_memory_bytes": int(gpu_memory_bytes),
        "gpu_memory_utilization": utilization,
        "budget_bytes": int(budget),
        "weight_bytes": int(weight_bytes),
        "overhead_bytes": int(overhead_bytes),
        "bytes_per_token": per_token,
        "block_size": block_size,
        "kv_cache_blocks": blocks,
        "kv_cache_tokens": tokens,
        "kv_cache_bytes": blocks * block_size * per_token,
        "kv_cache_gib": round(blocks * block_size * per_token / GIB, 2),
        "fits": blocks > 0,
    }


def max_concurrency(plan: dict, context_tokens: int, geometry: dict[str, Any] | None = None) -> float:
    """Requests of `context_tokens` tokens each that fit the KV cache at once.

    Without geometry: as vLLM 0.11 prints it (every layer holds the whole context). With a geometry that has
    `sliding_window_layers` and `sliding_window`, those layers hold at most the window (plus one block).
    """
    _check("context_tokens", context_tokens, 1)
    if not geometry or not geometry.get("sliding_window_layers"):
        return plan["kv_cache_tokens"] / context_tokens
    full = bytes_per_token(geometry, include_sliding=False)
    sliding = bytes_per_token(geometry) - full
    window = min(context_tokens, int(geometry["sliding_window"]) + plan["block_size"])
    per_request = full * context_tokens + sliding * window
    return plan["kv_cache_bytes"] / per_request


class FilterModule:
    def filters(self) -> dict:
        return {"llm_kv_cache_plan": kv_cache_plan, "llm_max_concurrency": max_concurrency}
