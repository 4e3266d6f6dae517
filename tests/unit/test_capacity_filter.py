"""The capacity filter against the seed deployment: RTX 5090, gpt-oss-20b, vLLM 0.11, 0.92 utilisation."""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.filter import llm_capacity as cap

GIB = 1024**3
GPT_OSS_20B = {"layers": 24, "kv_heads": 8, "head_dim": 64, "dtype_bytes": 2,
               "sliding_window": 128, "sliding_window_layers": list(range(0, 24, 2))}
RTX_5090_BYTES = 32607 * 1024**2  # nvidia-smi: 32607 MiB = 31.84 GiB
SEED_OVERHEAD = 2.66 * GIB  # non-torch memory + peak activations that vLLM profiled on the seed box


def seed_plan() -> dict:
    return cap.kv_cache_plan(RTX_5090_BYTES, 0.92, 12.88 * GIB, GPT_OSS_20B, SEED_OVERHEAD)


def test_bytes_per_token_is_48_kib_as_vllm_counts_it() -> None:
    assert cap.bytes_per_token(GPT_OSS_20B) == 48 * 1024
    assert cap.bytes_per_token(GPT_OSS_20B, include_sliding=False) == 24 * 1024


def test_seed_kv_cache_reproduced_within_one_percent() -> None:
    plan = seed_plan()
    assert plan["kv_cache_tokens"] == pytest.approx(300_288, rel=0.01)
    assert plan["kv_cache_bytes"] / GIB == pytest.approx(13.75, rel=0.01)
    assert plan["kv_cache_tokens"] % 16 == 0
    assert plan["fits"]


def test_concurrency_for_a_context() -> None:
    plan = seed_plan()
    assert cap.max_concurrency(plan, 8192) == pytest.approx(plan["kv_cache_tokens"] / 8192)
    # Sliding-window layers keep only window + one block per request: about twice as many requests fit.
    aware = cap.max_concurrency(plan, 8192, GPT_OSS_20B)
    assert aware == pytest.approx(plan["kv_cache_bytes"] / (24 * 1024 * 8192 + 24 * 1024 * 144))
    assert 1.9 < aware / cap.max_concurrency(plan, 8192) < 2.0


def test_more_utilisation_more_cache() -> None:
    low = cap.kv_cache_plan(RTX_5090_BYTES, 0.80, 12.88 * GIB, GPT_OSS_20B, SEED_OVERHEAD)
    assert low["kv_cache_tokens"] < seed_plan()["kv_cache_tokens"]


def test_model_that_does_not_fit() -> None:
    plan = cap.kv_cache_plan(16 * GIB, 0.9, 14 * GIB, GPT_OSS_20B, 2 * GIB)
    assert plan["kv_cache_tokens"] == 0 and not plan["fits"]


@pytest.mark.parametrize("utilization", [0, -0.1, 1.01])
def test_utilisation_outside_zero_one_is_refused(utilization: float) -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        cap.kv_cache_plan(RTX_5090_BYTES, utilization, GIB, GPT_OSS_20B)


def test_incomplete_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks"):
        cap.kv_cache_plan(RTX_5090_BYTES, 0.9, GIB, {"layers": 24})


def test_filters_are_registered() -> None:
    assert set(cap.FilterModule().filters()) == {"llm_kv_cache_plan", "llm_max_concurrency"}
