"""vLLM model staging, run for real against fixtures: tiktoken files from a local HTTP server (sha256-checked) and
the weight download through a SIMULATED vLLM image (tests/fixtures/vllm-sim) with progress lines; a re-run
downloads nothing."""
from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import describe
from helpers import ROOT
from llm_fixture import run_playbook

IMAGE = "local/vllm-sim:test"
REVISION = "6cee5e81ee83917806bbde320786a8fb61efebee"  # the commit the role pins for openai/gpt-oss-20b
# What vLLM 0.11.0 loads of openai/gpt-oss-20b: config, generation config, tokenizer, chat template, the index and
# the three root shards; not original/ (13.8 GB) or metal/.
VLLM_FILES = ["chat_template.jinja", "config.json", "generation_config.json", "model-00000-of-00002.safetensors",
              "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
              "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
# A simulated RTX 5090 host, as preflight describes it.
GPU_HOST = {"llm_stack_engine": "vllm", "llm_stack_served_model_name": "openai/gpt-oss-20b",
            "llm_stack_vllm_version": "test", "llm_stack_vllm_attention_backend": "auto",
            "preflight_gpu_mode": "nvidia",
            "preflight_nvidia_gpus": [{"pci_address": "0000:01:00.0", "vendor_id": "10de", "device_id": "2b85",
                                       "class": "030000", "driver": "nvidia", **describe("2b85")}]}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def vllm_sim_image() -> str:
    base = subprocess.run(["docker", "image", "inspect", "local/llm-base:bookworm"], capture_output=True)
    assert base.returncode == 0, "local/llm-base:bookworm is missing: run `make images` first"
    subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(ROOT / "tests/fixtures/vllm-sim")],
                   check=True, capture_output=True)
    return IMAGE


def serve(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_staging_downloads_once_with_progress(tmp_path: Path, vllm_sim_image: str) -> None:
    encodings = tmp_path / "encodings"
    encodings.mkdir()
    files = []
    for name in ("o200k_base.tiktoken", "cl100k_base.tiktoken"):
        data = f"fixture {name}\n".encode()
        (encodings / name).write_bytes(data)
        files.append({"name": name, "sha256": hashlib.sha256(data).hexdigest()})
    server, url = serve(encodings)
    cache, tiktoken = tmp_path / "hf-cache", tmp_path / "tiktoken"
    variables = {**GPU_HOST, "llm_stack_dir": str(tmp_path / "stack"),
                 "llm_stack_vllm_image": vllm_sim_image.split(":")[0],
                 "llm_stack_hf_cache_dir": str(cache),
                 "llm_stack_tiktoken_dir": str(tiktoken), "llm_stack_tiktoken_base_url": url,
                 "llm_stack_tiktoken_files": files, "llm_stack_hf_token": "hf_stage_test_token",
                 "llm_stack_vllm_stage_poll_s": 2, "llm_stack_vllm_stage_timeout_s": 120}
    try:
        first = run_playbook(tmp_path / "first", "stage_vllm.yml", variables)
        record = cache / "simulated-download.json"  # what the simulated snapshot_download was asked for
        seen = json.loads(record.read_text()) if record.exists() else {}
        second = run_playbook(tmp_path / "second", "stage_vllm.yml", variables)
        # Another revision (a branch) is another download, into its own snapshot.
        third = run_playbook(tmp_path / "third", "stage_vllm.yml",
                             {**variables, "llm_stack_vllm_model_revision": "main"})
    finally:
        server.shutdown()
    assert first.rc == 0, first.output[-3000:]
    assert "GiB in the HF cache after" in first.output
    # The polls stop with the download: one "(done)" line, not one for each poll left of the 61 the timeout allows.
    assert first.output.count("(done)") == 1, first.output[-3000:]
    for spec in files:
        assert (tiktoken / spec["name"]).read_bytes() == (encodings / spec["name"]).read_bytes()
    # Only what vLLM loads was downloaded, at the pinned revision.
    assert seen == {"repo_id": "openai/gpt-oss-20b", "revision": REVISION,
                    "allow_patterns": ["*.json", "*.jinja", "model-*.safetensors"],
                    "ignore_patterns": ["original/*", "metal/*"], "files": VLLM_FILES,
                    "token_seen": True, "endpoint": ""}
    snapshot = cache / "hub/models--openai--gpt-oss-20b/snapshots" / REVISION
    assert sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()) == VLLM_FILES
    marker = cache / f".staged-openai--gpt-oss-20b@{REVISION}"
    assert marker.read_text().strip() == f"openai/gpt-oss-20b@{REVISION}"
    assert "hf_stage_test_token" not in first.output
    # The re-run finds everything staged: nothing downloaded, nothing changed.
    assert second.rc == 0, second.output[-3000:]
    assert "changed=0" in second.output
    assert "GiB in the HF cache after" not in second.output
    assert third.rc == 0, third.output[-3000:]
    assert third.output.count("(done)") == 1, third.output[-3000:]
    assert json.loads(record.read_text())["revision"] == "main"
    assert (cache / ".staged-openai--gpt-oss-20b@main").read_text().strip() == "openai/gpt-oss-20b@main"
    assert (cache / "hub/models--openai--gpt-oss-20b/refs/main").is_file()


def test_a_failed_download_fails_the_run_saying_why(tmp_path: Path, vllm_sim_image: str) -> None:
    """SIMULATION: the Hub has no such revision. The run fails at once with the download's own error (not after the
    timeout, and not hidden by no_log), writes no marker, and the token stays out of the output."""
    cache = tmp_path / "hf-cache"
    variables = {**GPU_HOST, "llm_stack_dir": str(tmp_path / "stack"),
                 "llm_stack_vllm_image": vllm_sim_image.split(":")[0],
                 "llm_stack_hf_cache_dir": str(cache), "llm_stack_tiktoken_files": [],
                 "llm_stack_tiktoken_dir": str(tmp_path / "tiktoken"),
                 "llm_stack_vllm_model_revision": "no-such-revision", "llm_stack_hf_token": "hf_stage_test_token",
                 "llm_stack_vllm_stage_poll_s": 2, "llm_stack_vllm_stage_timeout_s": 120}
    run = run_playbook(tmp_path / "run", "stage_vllm.yml", variables)
    assert run.rc != 0
    assert "failed or took longer than" in run.output, run.output[-3000:]
    assert "Revision Not Found for url" in run.output and "RevisionNotFoundError" in run.output, run.output[-3000:]
    assert "output has been hidden" not in run.output, run.output[-3000:]
    assert run.output.count("(done)") == 1, run.output[-3000:]
    assert not list(cache.glob(".staged-*"))
    assert "hf_stage_test_token" not in run.output


def test_wrong_tiktoken_checksum_fails(tmp_path: Path, vllm_sim_image: str) -> None:
    encodings = tmp_path / "encodings"
    encodings.mkdir()
    (encodings / "o200k_base.tiktoken").write_bytes(b"tampered\n")
    server, url = serve(encodings)
    variables = {**GPU_HOST, "llm_stack_dir": str(tmp_path / "stack"),
                 "llm_stack_vllm_image": vllm_sim_image.split(":")[0],
                 "llm_stack_hf_cache_dir": str(tmp_path / "hf"),
                 "llm_stack_tiktoken_dir": str(tmp_path / "tt"), "llm_stack_tiktoken_base_url": url,
                 "llm_stack_tiktoken_files": [{"name": "o200k_base.tiktoken", "sha256": "0" * 64}]}
    try:
        run = run_playbook(tmp_path / "run", "stage_vllm.yml", variables)
    finally:
        server.shutdown()
    assert run.rc != 0
    assert "checksum" in run.output.lower()
    assert not (tmp_path / "tt/o200k_base.tiktoken").exists()


def test_sglang_stages_the_repository_less_what_it_does_not_load(tmp_path: Path, vllm_sim_image: str) -> None:
    """SIMULATION (the vLLM stand-in's huggingface_hub as SGLang's image's): the sglang engine stages through the same
    tasks with its own image and download: the pinned revision, every file but original/ and metal/."""
    cache = tmp_path / "hf-cache"
    variables = {**GPU_HOST, "llm_stack_engine": "sglang", "llm_stack_dir": str(tmp_path / "stack"),
                 "llm_stack_sglang_image": vllm_sim_image, "llm_stack_hf_cache_dir": str(cache),
                 "llm_stack_tiktoken_files": [], "llm_stack_tiktoken_dir": str(tmp_path / "tiktoken"),
                 "llm_stack_vllm_stage_poll_s": 2, "llm_stack_vllm_stage_timeout_s": 120}
    run = run_playbook(tmp_path / "run", "stage_vllm.yml", variables)
    assert run.rc == 0, run.output[-3000:]
    seen = json.loads((cache / "simulated-download.json").read_text())
    root_files = sorted([".gitattributes", "LICENSE", "README.md", "USAGE_POLICY", *VLLM_FILES])
    assert seen == {"repo_id": "openai/gpt-oss-20b", "revision": REVISION, "allow_patterns": None,
                    "ignore_patterns": ["original/*", "metal/*"], "files": root_files,
                    "token_seen": False, "endpoint": ""}
    assert (cache / f".staged-openai--gpt-oss-20b@{REVISION}").is_file()
