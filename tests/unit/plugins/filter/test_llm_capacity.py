"""The capacity filter against vLLM 0.11.0's own sizing and the seed deployment (RTX 5090, gpt-oss-20b, 0.92).

The seed's vLLM 0.11.0 log: "Available KV cache memory: 13.75 GiB", "GPU KV cache size: 300,288 tokens". With
gpt-oss-20b's hybrid layout (12 full-attention + 12 sliding-window layers, 2 groups of 12, a pooled block of
12 x 32 KiB) that is 37,536 blocks; vLLM's "Maximum concurrency" is then 17.18x at max_model_len 32768 and 4.51x at
131072 with max_num_batched_tokens 2048 (its default on a GPU under 70 GiB). Worked through in
/tmp/research/vllm_facts.md (Q2, Q3) from the v0.11.0 wheel's kv_cache_utils.py and kv_cache_interface.py.
"""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.filter import llm_capacity as cap

GIB = 1024**3
MIB = 1024**2
# As roles/llm_stack/vars/engine-vllm.yml describes it (config.json; vLLM's gpt_oss.py: even layers slide).
GPT_OSS_20B = {"layers": 24, "kv_heads": 8, "head_dim": 64, "dtype_bytes": 2,
               "sliding_window": 128, "sliding_window_layers": list(range(0, 24, 2))}
RTX_5090_BYTES = 32607 * MIB  # nvidia-smi: 32607 MiB
H100_BYTES = 81559 * MIB
SEED_BLOCKS = 37_536
POOLED_BLOCK = 12 * 32_768  # 12 layers per group x 2 x 16 tokens x 8 heads x 64 x 2 bytes
SEED_KV_BYTES = SEED_BLOCKS * POOLED_BLOCK  # 13.746 GiB, logged as 13.75
# The role's model entry: the seed's logged weights and the overhead derived from its KV cache.
SEED_WEIGHTS = 13_834_912_400
SEED_OVERHEAD = 2_860_779_437


def seed_plan(max_model_len: int = 32768, **kwargs: object) -> dict:
    return cap.kv_cache_plan(RTX_5090_BYTES, 0.92, SEED_WEIGHTS, GPT_OSS_20B, SEED_OVERHEAD,
                             max_model_len=max_model_len, **kwargs)


def test_seed_kv_cache_from_its_available_memory() -> None:
    plan = cap.kv_cache_plan(RTX_5090_BYTES, 0.92, 0, GPT_OSS_20B, max_model_len=32768,
                             kv_cache_memory_bytes=SEED_KV_BYTES)
    assert plan["page_bytes"] == 32_768
    assert plan["kv_cache_layout"] == {"full_attention_layers": 12, "sliding_window_layers": 12,
                                       "sliding_window": 128, "group_layers": 12, "groups": 2}
    assert plan["kv_cache_blocks"] == SEED_BLOCKS
    assert plan["kv_cache_tokens"] == 300_288
    assert plan["available_kv_gib"] == 13.75 and plan["kv_cache_gib"] == 13.75
    assert plan["max_num_batched_tokens"] == 2048 and plan["max_num_batched_tokens_is_default"]
    assert plan["blocks_per_request"] == 2048 + 137
    assert plan["max_concurrency"] == 17.18
    assert plan["fits"]


@pytest.mark.parametrize(("max_model_len", "mnbt", "blocks", "printed"), [
    (32768, 2048, 2185, 17.18),
    (131072, 2048, 8329, 4.51),
    (32768, 8192, 2569, 14.61),
    (131072, 8192, 8713, 4.31),
])
def test_concurrency_as_vllm_prints_it(max_model_len: int, mnbt: int, blocks: int, printed: float) -> None:
    plan = cap.kv_cache_plan(RTX_5090_BYTES, 0.92, 0, GPT_OSS_20B, max_model_len=max_model_len,
                             max_num_batched_tokens=mnbt, kv_cache_memory_bytes=SEED_KV_BYTES)
    assert plan["blocks_per_request"] == blocks
    assert plan["max_concurrency"] == printed
    assert f"{cap.max_concurrency(plan, max_model_len, mnbt):.2f}" == f"{printed:.2f}"


def test_role_model_entry_reproduces_the_seed_box() -> None:
    """GPU memory x utilisation - weights - overhead lands on the seed's 37,536 blocks."""
    plan = seed_plan()
    assert plan["kv_cache_blocks"] == SEED_BLOCKS
    assert plan["kv_cache_tokens"] == 300_288
    assert plan["available_kv_gib"] == 13.75
    assert plan["max_concurrency"] == 17.18
    assert seed_plan(131072)["max_concurrency"] == 4.51
    # The naive figure (tokens / max_model_len) would be 9.16: sliding layers keep only 127 + 2048 tokens.
    assert plan["kv_cache_tokens"] / 32768 == pytest.approx(9.16, abs=0.01)


def test_max_num_batched_tokens_default_follows_the_gpu() -> None:
    assert cap.default_max_num_batched_tokens(RTX_5090_BYTES, "GeForce RTX 5090") == 2048
    assert cap.default_max_num_batched_tokens(H100_BYTES, "H100 80GB HBM3") == 8192
    assert cap.default_max_num_batched_tokens(70 * GIB, "") == 8192
    assert cap.default_max_num_batched_tokens(70 * GIB - 1, "") == 2048
    assert cap.default_max_num_batched_tokens(81920 * MIB, "A100-SXM4-80GB") == 2048  # vLLM PR #17885
    h100 = cap.kv_cache_plan(H100_BYTES, 0.92, SEED_WEIGHTS, GPT_OSS_20B, SEED_OVERHEAD, max_model_len=32768)
    assert h100["max_num_batched_tokens"] == 8192
    assert h100["blocks_per_request"] == 2048 + 521


def test_set_max_num_batched_tokens_is_used() -> None:
    plan = seed_plan(max_num_batched_tokens="8192")
    assert plan["max_num_batched_tokens"] == 8192 and not plan["max_num_batched_tokens_is_default"]
    assert plan["max_concurrency"] == 14.61
    assert seed_plan(max_num_batched_tokens="")["max_num_batched_tokens"] == 2048


def test_uniform_model_is_one_group() -> None:
    llama = {"layers": 32, "kv_heads": 8, "head_dim": 128, "dtype_bytes": 2}
    plan = cap.kv_cache_plan(RTX_5090_BYTES, 0.9, 0, llama, max_model_len=8192, kv_cache_memory_bytes=8 * GIB)
    page = 2 * 16 * 8 * 128 * 2
    assert plan["kv_cache_layout"]["groups"] == 1 and plan["kv_cache_layout"]["group_layers"] == 32
    assert plan["kv_cache_blocks"] == 8 * GIB // page // 32
    assert plan["kv_cache_tokens"] == plan["kv_cache_blocks"] * 16 == 65_536
    assert plan["max_concurrency"] == 8.0  # 4096 blocks / 512 per request


def test_unequal_layer_counts_are_padded_into_groups() -> None:
    """5 sliding : 1 full (as Gemma 3): group size 1, six groups; 10 : 4 pads to groups of 4 (3 + 1 groups)."""
    gemma = {"layers": 6, "kv_heads": 4, "head_dim": 64, "dtype_bytes": 2, "sliding_window": 1024,
             "sliding_window_layers": [0, 1, 2, 3, 4]}
    plan = cap.kv_cache_plan(RTX_5090_BYTES, 0.9, 0, gemma, max_model_len=4096, max_num_batched_tokens=2048,
                             kv_cache_memory_bytes=GIB)
    assert plan["kv_cache_layout"]["group_layers"] == 1 and plan["kv_cache_layout"]["groups"] == 6
    assert plan["kv_cache_tokens"] == plan["kv_cache_blocks"] // 6 * 16
    # full: 4096 / 16 = 256 pages; sliding: min(1023 + 2048, 4096) -> 192 + 1 pages, in 5 groups
    assert plan["blocks_per_request"] == 256 + 5 * 193
    padded = {**gemma, "layers": 14, "sliding_window_layers": list(range(10))}
    layout = cap.kv_cache_plan(RTX_5090_BYTES, 0.9, 0, padded, kv_cache_memory_bytes=GIB)["kv_cache_layout"]
    assert (layout["group_layers"], layout["groups"]) == (4, 4)


def test_a_max_model_len_that_does_not_fit_one_request_fails_like_vllm() -> None:
    plan = cap.kv_cache_plan(RTX_5090_BYTES, 0.92, 0, GPT_OSS_20B, max_model_len=131072,
                             kv_cache_memory_bytes=100 * POOLED_BLOCK)
    assert plan["kv_cache_blocks"] == 100 and not plan["fits"]
    assert plan["kv_cache_needed_bytes"] == 32_768 * (12 * 8192 + 12 * 137)


def test_more_utilisation_more_cache() -> None:
    low = cap.kv_cache_plan(RTX_5090_BYTES, 0.80, SEED_WEIGHTS, GPT_OSS_20B, SEED_OVERHEAD)
    assert low["kv_cache_tokens"] < seed_plan()["kv_cache_tokens"]
    assert low["max_concurrency"] is None  # no max_model_len, no concurrency


def test_model_that_does_not_fit() -> None:
    plan = cap.kv_cache_plan(16 * GIB, 0.9, 14 * GIB, GPT_OSS_20B, 2 * GIB, max_model_len=4096)
    assert plan["kv_cache_tokens"] == 0 and not plan["fits"]


@pytest.mark.parametrize("utilization", [0, -0.1, 1.01])
def test_utilisation_outside_zero_one_is_refused(utilization: float) -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        cap.kv_cache_plan(RTX_5090_BYTES, utilization, GIB, GPT_OSS_20B)


@pytest.mark.parametrize(("geometry", "message"), [
    ({"layers": 24}, "lacks"),
    ({**GPT_OSS_20B, "sliding_window_layers": [0, 24]}, "distinct layer indexes below 24"),
    ({**GPT_OSS_20B, "sliding_window": 0}, "no sliding_window"),
])
def test_bad_geometry_is_refused(geometry: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cap.kv_cache_plan(RTX_5090_BYTES, 0.9, GIB, geometry)


def test_bytes_per_token() -> None:
    assert cap.bytes_per_token(GPT_OSS_20B) == 48 * 1024
    assert cap.bytes_per_token(GPT_OSS_20B, include_sliding=False) == 24 * 1024


def test_filters_are_registered() -> None:
    assert set(cap.FilterModule().filters()) == {"llm_kv_cache_plan", "llm_max_concurrency", "llm_kv_cache_groups"}
