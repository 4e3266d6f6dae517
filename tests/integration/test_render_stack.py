"""The vLLM and llama.cpp GPU profiles rendered for simulated GPU hosts, validated by `docker compose config`.

The vLLM and CUDA images cannot run here: these tests stop at the rendered, validated compose project.
"""
from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest
from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import describe
from llm_fixture import run_playbook

# Simulated GPU facts, as preflight sets them: the PCI listing described from the collection's GPU table.
RTX_5090 = {"pci_address": "0000:01:00.0", "vendor_id": "10de", "device_id": "2b85", "class": "030000",
            "driver": "nvidia", **describe("2b85")}
H100 = {"pci_address": "0000:41:00.0", "vendor_id": "10de", "device_id": "2330", "class": "030200",
        "driver": "nvidia", **describe("2330")}
API_KEY = "render-test-api-key"
HF_TOKEN = "hf_render_test_token"


def render(tmp_path: Path, gpu: dict, **extra: object) -> tuple[dict, str, Path]:
    stack = tmp_path / "stack"
    stack.mkdir()
    variables = {"llm_stack_engine": "vllm", "llm_stack_dir": str(stack), "preflight_gpu_mode": "nvidia",
                 "preflight_nvidia_gpus": [gpu], "llm_stack_served_model_name": "openai/gpt-oss-20b",
                 "llm_stack_api_key": API_KEY, "llm_stack_hf_token": HF_TOKEN, **extra}
    run = run_playbook(tmp_path, "render_stack.yml", variables)
    assert run.rc == 0, run.output[-4000:]
    compose = stack / "docker-compose.yml"
    config = subprocess.run(["docker", "compose", "--project-directory", str(stack), "-f", str(compose), "config",
                             "--format", "json"], capture_output=True, text=True, check=True)
    return json.loads(config.stdout)["services"]["engine"], run.output, stack


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_vllm_on_rtx_5090_carries_every_lever(tmp_path: Path) -> None:
    engine, output, stack = render(tmp_path, RTX_5090)
    cmd = engine["command"]
    assert engine["image"] == "vllm/vllm-openai:v0.11.0"
    assert arg(cmd, "--model") == "openai/gpt-oss-20b"
    assert arg(cmd, "--served-model-name") == "openai/gpt-oss-20b"
    assert arg(cmd, "--port") == "8000"
    assert arg(cmd, "--gpu-memory-utilization") == "0.92"
    assert arg(cmd, "--max-model-len") == "32768"
    assert arg(cmd, "--tool-call-parser") == "openai"
    assert {"--async-scheduling", "--enable-auto-tool-choice"} <= set(cmd)
    env = engine["environment"]
    assert env["VLLM_ATTENTION_BACKEND"] == "TRITON_ATTN"
    assert env["TIKTOKEN_ENCODINGS_BASE"] == "/tiktoken"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_API_KEY"] == API_KEY and env["HF_TOKEN"] == HF_TOKEN  # from the env file
    assert engine["ipc"] == "host"
    assert engine["restart"] == "unless-stopped"
    assert engine["logging"] == {"driver": "json-file", "options": {"max-size": "50m", "max-file": "3"}}
    assert engine["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
    assert "/health" in " ".join(engine["healthcheck"]["test"])
    targets = {v["target"]: v["source"] for v in engine["volumes"]}
    assert targets["/root/.cache/huggingface"] == "/var/lib/llm-stack/hf-cache"
    assert targets["/tiktoken"] == "/var/lib/llm-stack/tiktoken"
    assert engine["ports"][0]["published"] == "8000" and engine["ports"][0]["target"] == 8000
    # Secrets only in the 0600 env file, never in the compose file or the play output.
    text = (stack / "docker-compose.yml").read_text()
    assert API_KEY not in text and HF_TOKEN not in text
    assert stat.S_IMODE((stack / "engine.env").stat().st_mode) == 0o600
    assert API_KEY not in output and HF_TOKEN not in output
    # The capacity plan for the seed's box: vLLM 0.11 reported 13.75 GiB = 300,288 tokens there.
    plan = re.search(r"KV cache ([\d.]+) GiB = (\d+) tokens", output)
    assert plan is not None, output[-2000:]
    assert plan.group(1) == "13.75"
    assert int(plan.group(2)) == pytest.approx(300_288, rel=0.01)


def test_vllm_on_h100_leaves_attention_to_vllm_and_selects_gpus(tmp_path: Path) -> None:
    engine, _, _ = render(tmp_path, H100, llm_stack_gpu_devices=[0, 1], llm_stack_vllm_max_model_len=131072)
    assert "VLLM_ATTENTION_BACKEND" not in engine["environment"]
    assert engine["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": ["gpu"]}]
    assert arg(engine["command"], "--max-model-len") == "131072"


def test_cdi_device_names_and_extra_args(tmp_path: Path) -> None:
    engine, _, _ = render(tmp_path, RTX_5090, llm_stack_gpu_cdi=True,
                          llm_stack_vllm_extra_args=["--max-num-seqs", "64"])
    assert engine["devices"] == [{"source": "nvidia.com/gpu=all", "target": "nvidia.com/gpu=all",
                                  "permissions": "rwm"}]
    assert "deploy" not in engine
    assert engine["command"][-2:] == ["--max-num-seqs", "64"]


def test_older_vllm_gets_the_older_backend_name(tmp_path: Path) -> None:
    engine, _, _ = render(tmp_path, RTX_5090, llm_stack_vllm_version="v0.10.2")
    assert engine["environment"]["VLLM_ATTENTION_BACKEND"] == "TRITON_ATTN_VLLM_V1"


def test_load_beyond_the_kv_cache_warns(tmp_path: Path) -> None:
    _, output, _ = render(tmp_path, RTX_5090, llm_stack_vllm_max_model_len=131072,
                          llm_stack_vllm_expected_concurrency=8)
    assert "[WARNING]" in output
    assert "8 concurrent requests x llm_stack_vllm_max_model_len 131072" in output


def test_llamacpp_cuda_profile(tmp_path: Path) -> None:
    engine, _, stack = render(tmp_path, RTX_5090, llm_stack_engine="llamacpp_cuda")
    cmd = engine["command"]
    assert engine["image"] == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert arg(cmd, "--model") == "/models/gpt-oss-20b-mxfp4.gguf"
    assert arg(cmd, "--n-gpu-layers") == "999"
    assert arg(cmd, "--flash-attn") == "on"
    assert arg(cmd, "--alias") == "openai/gpt-oss-20b"
    assert "--jinja" in cmd
    assert engine["environment"]["LLAMA_API_KEY"] == API_KEY
    assert engine["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "HF_TOKEN" not in (stack / "engine.env").read_text()


UTIL = "llm_stack_vllm_gpu_memory_utilization must be in (0, 1], got"
BAD_INPUTS = [
    ({"llm_stack_vllm_gpu_memory_utilization": 1.5}, f"{UTIL} 1.5"),
    ({"llm_stack_vllm_gpu_memory_utilization": 0}, f"{UTIL} 0"),
    ({"llm_stack_vllm_max_model_len": 262144},
     "llm_stack_vllm_max_model_len is 262144; openai/gpt-oss-20b supports at most 131072"),
    ({"llm_stack_engine": "tgi"},
     "value of llm_stack_engine must be one of: vllm, llamacpp_cpu, llamacpp_cuda, got: tgi"),
    ({"llm_engine": "vllm"}, "llm_engine is now llm_stack_engine (vllm, llamacpp_cpu or llamacpp_cuda)"),
    ({"llm_stack_vllm_version": "latest"}, "llm_stack_vllm_version 'latest' is not a version (such as v0.11.0)"),
    ({"preflight_nvidia_gpus": [{k: v for k, v in RTX_5090.items() if k != "compute_capability"}]},
     "missing required arguments: compute_capability found in preflight_nvidia_gpus"),
    ({"preflight_gpu_mode": "gpu"}, "preflight_gpu_mode must be one of: nvidia, cpu, got: gpu"),
    ({"llm_stack_vllm_model": "meta-llama/Llama-3.1-8B-Instruct", "llm_stack_hf_token": ""},
     "gated on Hugging Face: set llm_stack_hf_token"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS)
def test_bad_inputs_fail_before_any_change(tmp_path: Path, extra: dict, message: str) -> None:
    stack = tmp_path / "stack-never-created"
    variables = {"llm_stack_engine": "vllm", "llm_stack_dir": str(stack), "preflight_gpu_mode": "nvidia",
                 "preflight_nvidia_gpus": [RTX_5090], "llm_stack_served_model_name": "m", **extra}
    run = run_playbook(tmp_path, "stack.yml", variables)
    assert run.rc != 0
    assert message in run.output, run.output[-3000:]
    assert not stack.exists()
