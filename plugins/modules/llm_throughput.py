#!/usr/bin/python
"""Throughput and latency of an OpenAI-compatible streaming endpoint, measured like `vllm bench serve`.

Standard library only: runs on the target host against the local engine.
"""
from __future__ import annotations

import http.client
import json
import math
import queue
import random
import statistics
import threading
import time
from dataclasses import dataclass, field

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llm_endpoints.core.plugins.module_utils.openai_client import (
    ENDPOINT_ARGS,
    OpenAIEndpoint,
    events,
    has_token,
    read_lines,
)

DOCUMENTATION = r"""
module: llm_throughput
short_description: Benchmark an OpenAI-compatible chat endpoint at several concurrency levels
version_added: "0.2.0"
description:
  - Sends streaming chat completions with C(stream_options.include_usage) from a fixed, seeded prompt set,
    after a warm-up, at each concurrency level (a closed loop of that many clients, like
    C(vllm bench serve --max-concurrency)), bounded by a request count and a time limit per level.
  - Output tokens come from the server's C(usage), not from counting chunks.
  - Returns per level the metrics C(vllm bench serve) reports, with its names and meanings.
options:
  base_url: {description: Server root, e.g. http://127.0.0.1:8000, type: str, required: true}
  model: {description: Model name sent in requests, type: str, required: true}
  api_key: {description: Bearer token, type: str, default: "", no_log: true}
  concurrency: {description: Concurrency levels, type: list, elements: int, required: true}
  requests_per_level: {description: Requests sent at each level, type: int, required: true}
  warmup_requests: {description: Requests sent before measuring (not counted), type: int, required: true}
  max_tokens: {description: Output tokens asked for per request, type: int, required: true}
  ignore_eos: {description: Ask the server to generate max_tokens every time, type: bool, required: true}
  seed: {description: Seed that orders the prompt set, type: int, required: true}
  prompts: {description: Prompt set, type: list, elements: str, required: true}
  time_limit_s: {description: Stop sending new requests at a level after this many seconds, type: float, required: true}
  request_timeout_s: {description: Per-request socket timeout, type: float, default: 120}
author: llm-endpoints project
"""

EXAMPLES = r"""
- name: The endpoint's throughput is measured at concurrency 1, 4 and 16
  llm_endpoints.core.llm_throughput:
    base_url: http://127.0.0.1:8000
    model: openai/gpt-oss-20b
    api_key: "{{ vault_llm_engine_api_key }}"
    concurrency: [1, 4, 16]
    requests_per_level: 32
    warmup_requests: 2
    max_tokens: 256
    ignore_eos: true
    seed: 0
    prompts: []
    time_limit_s: 300
  register: bench

- name: The single-stream decode rate is shown
  ansible.builtin.debug:
    msg: "{{ (bench.levels | selectattr('max_concurrency', 'equalto', 1) | first).decode_tokens_per_s }} tokens/s"
"""

RETURN = r"""
levels:
  description: >-
    One entry per concurrency level, in the order given, with the metrics C(vllm bench serve) reports under its
    names; each C(ttft), C(tpot), C(itl) and C(e2el) has C(mean_<name>_ms), C(median_<name>_ms) and
    C(p99_<name>_ms). Empty in check mode.
  type: list
  elements: dict
  returned: always
  contains:
    max_concurrency: {description: The level (clients in the closed loop), type: int}
    completed: {description: Requests that ended with a whole stream, type: int}
    failed: {description: Requests that did not, type: int}
    errors: {description: Up to 5 distinct error messages of the failed ones, type: list, elements: str}
    duration: {description: Seconds the level took, type: float}
    total_input_tokens: {description: Prompt tokens of the completed requests (the server's usage), type: int}
    total_output_tokens: {description: Output tokens of the completed requests (the server's usage), type: int}
    request_throughput: {description: Completed requests per second, type: float}
    output_throughput: {description: Output tokens per second, all clients together, type: float}
    total_token_throughput: {description: Prompt and output tokens per second, type: float}
    decode_tokens_per_s: {description: 1000 / mean TPOT - one stream's decode rate, type: float}
  sample: [{"max_concurrency": 1, "completed": 6, "failed": 0, "errors": [], "duration": 5.2,
            "total_input_tokens": 180, "total_output_tokens": 288, "request_throughput": 1.15,
            "output_throughput": 55.4, "total_token_throughput": 90.0, "mean_ttft_ms": 31.0,
            "median_ttft_ms": 30.2, "p99_ttft_ms": 40.1, "mean_tpot_ms": 17.5, "median_tpot_ms": 17.4,
            "p99_tpot_ms": 19.0, "mean_itl_ms": 17.5, "median_itl_ms": 17.3, "p99_itl_ms": 22.0,
            "mean_e2el_ms": 853.0, "median_e2el_ms": 850.0, "p99_e2el_ms": 900.0, "decode_tokens_per_s": 57.1}]
prompts:
  description: Prompts in the set used (the module's own eight when C(prompts) is empty).
  type: int
  returned: when the benchmark ran (not in check mode)
max_tokens:
  description: Output tokens asked for per request.
  type: int
  returned: when the benchmark ran (not in check mode)
seed:
  description: The seed that ordered the prompt set.
  type: int
  returned: when the benchmark ran (not in check mode)
"""

DEFAULT_PROMPTS = [
    "Explain in a few sentences how a transformer language model generates text.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List the main differences between TCP and UDP.",
    "Describe the water cycle to a ten-year-old.",
    "What are the advantages of running a language model on your own hardware?",
    "Summarise the rules of chess in one paragraph.",
    "Give three tips for writing readable Python code.",
    "Explain what a GPU does differently from a CPU.",
]


@dataclass
class RequestResult:
    success: bool = False
    error: str = ""
    start: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    server_timings: dict = field(default_factory=dict)


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks, as numpy.percentile's default."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(name: str, values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    return {
        f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
        f"median_{name}_ms": statistics.median(ms) if ms else 0.0,
        f"p99_{name}_ms": percentile(ms, 99),
    }


def compute_metrics(results: list[RequestResult], duration_s: float) -> dict[str, float | int]:
    """Aggregate as vLLM's benchmark does: TPOT per request excludes the first token; ITL pools all gaps."""
    done = [r for r in results if r.success]
    output = sum(r.output_tokens for r in done)
    prompt = sum(r.prompt_tokens for r in done)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    metrics: dict[str, float | int] = {
        "completed": len(done),
        "failed": len(results) - len(done),
        "duration": duration_s,
        "total_input_tokens": prompt,
        "total_output_tokens": output,
        "request_throughput": len(done) / duration_s if duration_s > 0 else 0.0,
        "output_throughput": output / duration_s if duration_s > 0 else 0.0,
        "total_token_throughput": (prompt + output) / duration_s if duration_s > 0 else 0.0,
    }
    metrics.update(summarise("ttft", [r.ttft for r in done]))
    metrics.update(summarise("tpot", tpots))
    metrics.update(summarise("itl", [gap for r in done for gap in r.itl]))
    metrics.update(summarise("e2el", [r.latency for r in done]))
    mean_tpot = metrics["mean_tpot_ms"]
    metrics["decode_tokens_per_s"] = 1000.0 / mean_tpot if mean_tpot else 0.0
    return metrics


def stream_request(ep: OpenAIEndpoint, conn: http.client.HTTPConnection, prompt: str, max_tokens: int,
                   ignore_eos: bool) -> RequestResult:
    """One streamed chat completion, timed: TTFT at the first chunk with a token, ITL between such chunks."""
    extra: dict = {"temperature": 0.0, "stream_options": {"include_usage": True}}
    if ignore_eos:
        extra["ignore_eos"] = True
    body = ep.chat_body(prompt, max_tokens, stream=True, **extra)
    result = RequestResult(start=time.perf_counter())
    try:
        resp = ep.open_stream(conn, body)
        if resp.status != 200:
            result.error = f"HTTP {resp.status}: {resp.read(300).decode(errors='replace')}"
            return result
        last = result.start
        usage = None
        saw_done = False
        for payload in events(read_lines(resp)):
            if payload == b"[DONE]":
                saw_done = True
                break
            now = time.perf_counter()
            chunk = json.loads(payload)
            if chunk.get("usage"):
                usage = chunk["usage"]
                result.server_timings = chunk.get("timings") or {}
            if not any(has_token(c) for c in chunk.get("choices") or ()):
                continue
            if result.ttft == 0.0:
                result.ttft = now - result.start
            else:
                result.itl.append(now - last)
            last = now
        result.latency = time.perf_counter() - result.start
        if not saw_done:
            result.error = "stream ended without [DONE]"
        elif usage is None:
            result.error = "no usage in the stream (server ignores stream_options.include_usage)"
        elif result.ttft == 0.0:
            result.error = "no token in the stream"
        else:
            result.prompt_tokens = int(usage.get("prompt_tokens", 0))
            result.output_tokens = int(usage.get("completion_tokens", 0))
            result.success = True
    except (OSError, http.client.HTTPException, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def run_level(ep: OpenAIEndpoint, prompts: list[str], concurrency: int, requests: int, max_tokens: int,
              ignore_eos: bool, time_limit_s: float) -> tuple[list[RequestResult], float]:
    work: queue.Queue[str] = queue.Queue()
    for i in range(requests):
        work.put(prompts[i % len(prompts)])
    results: list[RequestResult] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + time_limit_s

    def worker() -> None:
        # One connection per request: servers differ in keeping streamed connections alive.
        while time.perf_counter() < deadline:
            try:
                prompt = work.get_nowait()
            except queue.Empty:
                break
            conn = ep.connect()
            res = stream_request(ep, conn, prompt, max_tokens, ignore_eos)
            conn.close()
            with lock:
                results.append(res)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def benchmark(params: dict) -> dict:
    client = OpenAIEndpoint(params["base_url"], params["model"], params["api_key"], params["request_timeout_s"])
    prompts = list(params["prompts"] or DEFAULT_PROMPTS)
    random.Random(params["seed"]).shuffle(prompts)
    if params["warmup_requests"]:
        warm, _ = run_level(client, prompts, 1, params["warmup_requests"], params["max_tokens"],
                            params["ignore_eos"], params["time_limit_s"])
        errors = [r.error for r in warm if not r.success]
        if errors:
            raise RuntimeError(f"warm-up request failed: {errors[0]}")
    levels = []
    for concurrency in params["concurrency"]:
        results, duration = run_level(client, prompts, concurrency, params["requests_per_level"],
                                      params["max_tokens"], params["ignore_eos"], params["time_limit_s"])
        metrics = compute_metrics(results, duration)
        metrics["max_concurrency"] = concurrency
        metrics["errors"] = sorted({r.error for r in results if not r.success})[:5]
        levels.append(metrics)
    return {"levels": levels, "prompts": len(prompts), "max_tokens": params["max_tokens"], "seed": params["seed"]}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **ENDPOINT_ARGS,
            "concurrency": {"type": "list", "elements": "int", "required": True},
            "requests_per_level": {"type": "int", "required": True},
            "warmup_requests": {"type": "int", "required": True},
            "max_tokens": {"type": "int", "required": True},
            "ignore_eos": {"type": "bool", "required": True},
            "seed": {"type": "int", "required": True},
            "prompts": {"type": "list", "elements": "str", "required": True},
            "time_limit_s": {"type": "float", "required": True},
            "request_timeout_s": {"type": "float", "default": 120.0},
        },
        supports_check_mode=True,
    )
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="benchmark not run in check mode", levels=[])
    bad = [c for c in module.params["concurrency"] if c < 1]
    if bad or module.params["requests_per_level"] < 1:
        module.fail_json(msg=f"concurrency levels and requests_per_level must be >= 1 (got {bad or 0})")
    try:
        module.exit_json(changed=False, **benchmark(module.params))
    except RuntimeError as exc:
        module.fail_json(msg=str(exc))
    except ValueError as exc:  # base_url is not an http(s) URL
        module.fail_json(msg=f"base_url: {exc}")


if __name__ == "__main__":
    main()
