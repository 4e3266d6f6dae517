"""Capacity planning for vLLM: the KV cache and the concurrency vLLM 0.11.0 will log at start, before it starts.

For one GPU (tensor parallel 1, decode context parallel 1, CUDA), this re-implements the lines vLLM v0.11.0 logs:
    Available KV cache memory: <available_kv_gib> GiB
    GPU KV cache size: <kv_cache_tokens> tokens
    Maximum concurrency for <max_model_len> tokens per request: <max_concurrency>x

Sources: the vLLM v0.11.0 wheel on PyPI (built from tag v0.11.0, commit f71952c1c); file:line in that tree.
- Available memory = total GPU memory x gpu_memory_utilization - non-KV memory (weights, non-torch memory, peak
  activations): vllm/v1/worker/gpu_worker.py:279. --kv-cache-memory-bytes replaces it (`kv_cache_memory_bytes`).
- Block size 16 tokens on CUDA when not set: vllm/platforms/cuda.py:126-127.
- One layer's page (one block): 2 (K and V) x block_size x kv_heads x head_dim x dtype bytes:
  vllm/v1/kv_cache_interface.py:64.
- Hybrid KV cache manager (on by default, vllm/config/scheduler.py:132): layers are grouped by attention type
  (full attention, sliding window); the group size is the smallest type's layer count and each type is split into
  ceil(layers / group size) groups: vllm/v1/core/kv_cache_utils.py:977. A model of one type is one group of every
  layer.
- Blocks = available // page // group size: kv_cache_utils.py:813; the pool is shared by every group, so the logged
  token count is blocks // groups x block_size: kv_cache_utils.py:1080-1087.
- Blocks one request of max_model_len needs, per group: full attention ceil(max_model_len / block_size)
  (kv_cache_interface.py:83); sliding window ceil(min(window - 1 + max_num_batched_tokens, max_model_len) /
  block_size) + 1 (kv_cache_interface.py:196-214). Concurrency = blocks / that, printed with %.2f:
  kv_cache_utils.py:780-795, 1088-1092.
- vLLM refuses to start when one request of max_model_len does not fit (sum over layers of the above):
  kv_cache_utils.py:678-723 (`fits`).
- max_num_batched_tokens for `vllm serve` (the OpenAI API server; chunked prefill is always on for generative
  models) when not set: 8192 on a GPU with at least 70 GiB that is not an A100, else 2048:
  vllm/engine/arg_utils.py:1605-1623.
"""
from __future__ import annotations

from typing import Any

GIB = 1024**3
REQUIRED_GEOMETRY = ("layers", "kv_heads", "head_dim", "dtype_bytes")
DEFAULT_BLOCK_SIZE = 16
LARGE_GPU_BYTES = 70 * GIB


def _check(name: str, value: float, low: float, high: float | None = None, low_open: bool = False) -> None:
    if value < low or (low_open and value == low) or (high is not None and value > high):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {bound}, got {value}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _layout(geometry: dict[str, Any]) -> dict[str, int]:
    """Layer counts by attention type and the window, checked."""
    missing = [k for k in REQUIRED_GEOMETRY if k not in geometry]
    if missing:
        raise ValueError(f"model geometry lacks {missing}")
    layers = int(geometry["layers"])
    _check("geometry layers", layers, 1)
    for key in ("kv_heads", "head_dim", "dtype_bytes"):
        _check(f"geometry {key}", int(geometry[key]), 1)
    sliding = [int(i) for i in geometry.get("sliding_window_layers") or []]
    if len(set(sliding)) != len(sliding) or any(i < 0 or i >= layers for i in sliding):
        raise ValueError(f"geometry sliding_window_layers must be distinct layer indexes below {layers}")
    window = int(geometry.get("sliding_window") or 0)
    if sliding and window < 1:
        raise ValueError("geometry has sliding_window_layers but no sliding_window")
    return {"full_attention_layers": layers - len(sliding), "sliding_window_layers": len(sliding),
            "sliding_window": window if sliding else 0}


def _groups(layout: dict[str, int]) -> tuple[int, int]:
    """(layers per group, number of groups) as vLLM 0.11 groups them."""
    counts = [c for c in (layout["full_attention_layers"], layout["sliding_window_layers"]) if c]
    if len(counts) == 1:
        return counts[0], 1
    size = min(counts)
    return size, sum(_cdiv(c, size) for c in counts)


def bytes_per_token(geometry: dict[str, Any], include_sliding: bool = True) -> int:
    """KV bytes one token takes in every layer (or only the full-attention layers)."""
    layout = _layout(geometry)
    layers = layout["full_attention_layers"] + (layout["sliding_window_layers"] if include_sliding else 0)
    return layers * int(geometry["kv_heads"]) * int(geometry["head_dim"]) * 2 * int(geometry["dtype_bytes"])


def default_max_num_batched_tokens(gpu_memory_bytes: float, gpu_name: str = "") -> int:
    """vLLM 0.11's max_num_batched_tokens for `vllm serve` when it is not set (arg_utils.py:1605-1623)."""
    return 8192 if gpu_memory_bytes >= LARGE_GPU_BYTES and "a100" not in str(gpu_name).lower() else 2048


def _blocks_per_request(layout: dict[str, int], group_layers: int, groups: int, block_size: int,
                        max_model_len: int, max_num_batched_tokens: int) -> tuple[int, int, int]:
    """(blocks one request needs in the shared pool, pages per full layer, pages per sliding layer)."""
    full_pages = _cdiv(max_model_len, block_size)
    sliding_pages = 0
    if layout["sliding_window_layers"]:
        tokens = min(layout["sliding_window"] - 1 + max_num_batched_tokens, max_model_len)
        sliding_pages = _cdiv(tokens, block_size) + 1
    if groups == 1:
        blocks = full_pages if layout["full_attention_layers"] else sliding_pages
    else:
        blocks = (_cdiv(layout["full_attention_layers"], group_layers) * full_pages
                  + _cdiv(layout["sliding_window_layers"], group_layers) * sliding_pages)
    return blocks, full_pages, sliding_pages


def _printed(value: float) -> float:
    """The figure as vLLM prints it (%.2f)."""
    return float(f"{value:.2f}")


def kv_cache_plan(gpu_memory_bytes: float, utilization: float, weight_bytes: float, geometry: dict[str, Any],
                  overhead_bytes: float = 0, max_model_len: int | None = None,
                  max_num_batched_tokens: int | str | None = None, gpu_name: str = "",
                  block_size: int = DEFAULT_BLOCK_SIZE, kv_cache_memory_bytes: int | None = None) -> dict:
    """What vLLM 0.11.0 will log for the KV cache on one GPU, and whether it will start.

    `max_num_batched_tokens` empty or None takes vLLM's default for this GPU (`gpu_memory_bytes`, `gpu_name`).
    Without `max_model_len` no concurrency is computed. `kv_cache_memory_bytes` stands for vLLM's
    --kv-cache-memory-bytes (or a logged "Available KV cache memory") and replaces the memory arithmetic.
    """
    _check("gpu_memory_bytes", gpu_memory_bytes, 0, low_open=True)
    _check("gpu_memory_utilization", utilization, 0, 1, low_open=True)
    _check("weight_bytes", weight_bytes, 0)
    _check("overhead_bytes", overhead_bytes, 0)
    _check("block_size", block_size, 1)
    layout = _layout(geometry)
    group_layers, groups = _groups(layout)
    page = 2 * block_size * int(geometry["kv_heads"]) * int(geometry["head_dim"]) * int(geometry["dtype_bytes"])
    budget = gpu_memory_bytes * utilization
    if kv_cache_memory_bytes is not None and str(kv_cache_memory_bytes) != "":
        available = int(kv_cache_memory_bytes)
        _check("kv_cache_memory_bytes", available, 0)
    else:
        available = int(budget - weight_bytes - overhead_bytes)
    blocks = max(available // page // group_layers, 0)
    default_mnbt = max_num_batched_tokens is None or str(max_num_batched_tokens) == ""
    mnbt = default_max_num_batched_tokens(gpu_memory_bytes, gpu_name) if default_mnbt else int(max_num_batched_tokens)
    _check("max_num_batched_tokens", mnbt, 1)
    plan: dict[str, Any] = {
        "gpu_memory_bytes": int(gpu_memory_bytes),
        "gpu_memory_utilization": utilization,
        "budget_bytes": int(budget),
        "weight_bytes": int(weight_bytes),
        "overhead_bytes": int(overhead_bytes),
        "available_kv_bytes": available,
        "available_kv_gib": round(max(available, 0) / GIB, 2),
        "bytes_per_token": bytes_per_token(geometry),
        "block_size": block_size,
        "page_bytes": page,
        "kv_cache_layout": {**layout, "group_layers": group_layers, "groups": groups},
        "kv_cache_blocks": blocks,
        "kv_cache_tokens": blocks // groups * block_size,
        "kv_cache_bytes": blocks * page * group_layers,
        "kv_cache_gib": round(blocks * page * group_layers / GIB, 2),
        "max_num_batched_tokens": mnbt,
        "max_num_batched_tokens_is_default": default_mnbt,
        "max_model_len": None,
        "blocks_per_request": None,
        "max_concurrency": None,
        "kv_cache_needed_bytes": None,
        "fits": available > 0 and blocks > 0,
    }
    if max_model_len is not None:
        _check("max_model_len", int(max_model_len), 1)
        per_request, full_pages, sliding_pages = _blocks_per_request(
            layout, group_layers, groups, block_size, int(max_model_len), mnbt)
        needed = page * (layout["full_attention_layers"] * full_pages + layout["sliding_window_layers"] * sliding_pages)
        plan.update(max_model_len=int(max_model_len), blocks_per_request=per_request,
                    max_concurrency=_printed(blocks / per_request), kv_cache_needed_bytes=needed,
                    fits=plan["fits"] and needed <= available)
    return plan


def max_concurrency(plan: dict, max_model_len: int, max_num_batched_tokens: int | str | None = None) -> float:
    """vLLM 0.11.0's "Maximum concurrency" for requests of `max_model_len` tokens on the KV cache of `plan`.

    `max_num_batched_tokens` empty or None keeps the plan's. Not rounded (vLLM prints it with %.2f).
    """
    _check("max_model_len", max_model_len, 1)
    mnbt = plan["max_num_batched_tokens"] if max_num_batched_tokens in (None, "") else int(max_num_batched_tokens)
    layout = plan["kv_cache_layout"]
    per_request, _, _ = _blocks_per_request(layout, layout["group_layers"], layout["groups"], plan["block_size"],
                                            int(max_model_len), mnbt)
    return plan["kv_cache_blocks"] / per_request


def kv_cache_groups(models: dict[str, Any]) -> dict[str, int]:
    """{model id: the KV cache groups vLLM 0.11 makes of its layers} for the models of llm_stack's table that have a
    geometry: the block pool vLLM reports (num_gpu_blocks) is shared by the groups, so the tokens it holds are
    blocks // groups x block size (gpt-oss-20b: 2 groups, full and sliding-window layers)."""
    return {name: _groups(_layout(info["geometry"]))[1] for name, info in (models or {}).items()
            if isinstance(info, dict) and info.get("geometry")}


class FilterModule:
    def filters(self) -> dict:
        return {"llm_kv_cache_plan": kv_cache_plan, "llm_max_concurrency": max_concurrency,
                "llm_kv_cache_groups": kv_cache_groups}
