"""The doctor's KV cache figure for vLLM: the block pool vLLM reports is shared by the model's KV cache groups, so
gpt-oss-20b's (full and sliding-window layers: 2 groups) holds half the tokens blocks x block size would say. The
seed's RTX 5090 at 0.92: vLLM 0.11 logs 37,536 blocks and "GPU KV cache size: 300,288 tokens"."""
from __future__ import annotations

import copy
import json

import pytest
import yaml
from ansible_collections.llm_endpoints.core.plugins.filter import llm_capacity, llm_doctor
from helpers import ROOT

CAPTURE = ROOT / "tests/fixtures/doctor/h200-driver580-preinstalled"
MODELS = yaml.safe_load((ROOT / "roles/llm_stack/vars/engine-vllm.yml").read_text())["__llm_stack_vllm_models"]
METRICS = ('# TYPE vllm:cache_config_info gauge\n'
           'vllm:cache_config_info{block_size="16",gpu_memory_utilization="0.92",num_gpu_blocks="37536"} 1.0\n'
           '# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="gpt-oss"} 0.0\n')


def host_serving(model_root: str) -> dict:
    """The captured host (a real one), given a vLLM engine that answers as the seed's did."""
    raw = copy.deepcopy(json.loads((CAPTURE / "doctor.json").read_text())["raw"][0])
    raw["engine"] = {
        "base_url": "http://127.0.0.1:8000",
        "health": {"status": 200},
        "version": {"status": 200, "json": {"version": "0.11.0"}},
        "models": {"status": 200, "json": {"data": [{"id": "gpt-oss", "root": model_root}]}},
        "metrics": {"status": 200, "content": METRICS},
        "props": {"status": 404},
    }
    raw["expect"] = {**raw["expect"], "served_model_name": "gpt-oss",
                     "kv_cache_groups": llm_capacity.kv_cache_groups(MODELS)}
    return raw


def test_the_table_gives_gpt_oss_two_groups_and_skips_models_without_a_geometry() -> None:
    assert llm_capacity.kv_cache_groups(MODELS) == {"openai/gpt-oss-20b": 2}


def test_gpt_oss_holds_the_tokens_vllm_logs() -> None:
    kv = llm_doctor.findings(host_serving("openai/gpt-oss-20b"))["engine"]["kv_cache"]
    assert (kv["blocks"], kv["block_size"], kv["groups"], kv["tokens"]) == (37536, 16, 2, 300288)


@pytest.mark.parametrize("root", ["/models/some-local-model", "mistralai/Mistral-7B-Instruct-v0.3"])
def test_a_model_of_unknown_geometry_counts_as_one_group_and_says_so(root: str) -> None:
    kv = llm_doctor.findings(host_serving(root))["engine"]["kv_cache"]
    assert kv["tokens"] == 37536 * 16 and kv["groups"] == "unknown (counted as 1)"


def test_an_sglang_engine_is_read_through_its_row_of_the_engine_table() -> None:
    """SGLang exports no block pool: the doctor reads its KV pool usage and queue through the names its row of the
    engine table gives (roles/llm_stack/vars/engine-sglang.yml), as SGLang 0.5.19's /metrics shows them."""
    row = yaml.safe_load((ROOT / "roles/llm_stack/vars/engine-sglang.yml").read_text())["__llm_stack_engine_info"]
    raw = host_serving("openai/gpt-oss-20b")
    raw["engine"]["metrics"]["content"] = (
        '# TYPE sglang:token_usage gauge\nsglang:token_usage{model_name="gpt-oss",engine_type="unified"} 0.25\n'
        '# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{model_name="gpt-oss"} 3.0\n'
        '# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{model_name="gpt-oss"} 1.0\n')
    raw["expect"]["engine_metrics"] = row["metrics"]
    result = llm_doctor.findings(raw)
    kv = result["engine"]["kv_cache"]
    assert (kv["usage"], kv["source"]) == (0.25, "sglang:token_usage")
    assert (kv["num_running_reqs"], kv["num_queue_reqs"]) == (3, 1)
    assert {f["check"]: f["status"] for f in result["findings"]}["kv_cache"] == "ok"
