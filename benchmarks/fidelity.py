#!/usr/bin/env python3
"""Fidelity: llm_throughput's decode tokens/s against the engine's own account of the same requests.

Starts the real llama.cpp server (xllamacpp + SmolLM2-135M, as in the tests), sends streamed requests one at
a time through the module's client, and compares, per request, the module's decode rate
((output tokens - 1) / (end - first token)) with llama.cpp's `timings.predicted_per_second`
(predicted_n / predicted_ms) from the same response. Goal: mean difference within +/-5%.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / ".collection")]

from ansible_collections.llm_endpoints.core.plugins.modules import llm_throughput as tp  # noqa: E402
from llm_fixture import running_engine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    with running_engine() as engine:
        client = tp.OpenAIEndpoint(engine.url, engine.model, engine.api_key, 120.0)
        tp.run_level(client, tp.DEFAULT_PROMPTS, 1, 1, 16, True, 60.0)  # warm-up
        results, duration = tp.run_level(client, tp.DEFAULT_PROMPTS, 1, args.requests, args.max_tokens, True, 600.0)
    ok = [r for r in results if r.success and r.server_timings.get("predicted_ms")]
    print(f"{len(ok)}/{len(results)} requests with engine timings; {args.max_tokens} tokens each; concurrency 1")
    print(f"{'req':>3} {'tokens':>6} {'module tok/s':>12} {'engine tok/s':>12} {'diff':>7}")
    diffs, module_rates, engine_rates = [], [], []
    for i, r in enumerate(ok):
        module = (r.output_tokens - 1) / (r.latency - r.ttft)
        engine_rate = float(r.server_timings["predicted_per_second"])
        diffs.append(100 * (module - engine_rate) / engine_rate)
        module_rates.append(module)
        engine_rates.append(engine_rate)
        print(f"{i:>3} {r.output_tokens:>6} {module:>12.1f} {engine_rate:>12.1f} {diffs[-1]:>+6.1f}%")
    metrics = tp.compute_metrics(results, duration)
    mean_diff = statistics.fmean(diffs)
    print(f"mean module {statistics.fmean(module_rates):.1f} vs engine {statistics.fmean(engine_rates):.1f} tok/s; "
          f"module's reported decode_tokens_per_s {metrics['decode_tokens_per_s']:.1f}")
    print(f"mean difference {mean_diff:+.2f}% (min {min(diffs):+.1f}%, max {max(diffs):+.1f}%); goal within +/-5%: "
          f"{'met' if abs(mean_diff) <= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
