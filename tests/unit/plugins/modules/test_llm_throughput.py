"""llm_throughput's arithmetic against a local server whose timing the test controls."""
from __future__ import annotations

import random

import numpy
import pytest
from ansible_collections.llm_endpoints.core.plugins.modules import llm_throughput as tp
from sse_server import Script, serve


def run(script: Script, concurrency: int = 1, requests: int = 4) -> dict:
    server, url = serve(script)
    try:
        client = tp.OpenAIEndpoint(url, "m", "", 10.0)
        results, duration = tp.run_level(client, ["p"], concurrency, requests, 64, True, 60.0)
        metrics = tp.compute_metrics(results, duration)
        metrics["errors"] = [r.error for r in results if not r.success]
        return metrics
    finally:
        server.shutdown()


def test_percentile_matches_numpy() -> None:
    rng = random.Random(3)
    for size in (1, 2, 7, 100, 1001):
        values = [rng.uniform(0, 500) for _ in range(size)]
        for pct in (50, 90, 99):
            assert tp.percentile(values, pct) == pytest.approx(numpy.percentile(values, pct))
    assert tp.percentile([], 99) == 0.0


def test_ttft_tpot_itl_follow_the_server_timing() -> None:
    m = run(Script(ttft_s=0.08, gap_s=0.02, chunks=11))
    assert m["completed"] == 4 and m["failed"] == 0
    assert m["mean_ttft_ms"] == pytest.approx(80, abs=15)
    assert m["mean_tpot_ms"] == pytest.approx(20, abs=4)
    assert m["median_itl_ms"] == pytest.approx(20, abs=4)
    # e2el = ttft + 10 gaps
    assert m["mean_e2el_ms"] == pytest.approx(80 + 200, abs=30)
    assert m["decode_tokens_per_s"] == pytest.approx(1000 / m["mean_tpot_ms"])


def test_output_tokens_come_from_usage_not_chunks() -> None:
    # 5 chunks of 3 tokens each: usage says 15 tokens, chunk counting would say 5.
    m = run(Script(ttft_s=0.01, gap_s=0.01, chunks=5, tokens_per_chunk=3, prompt_tokens=9), requests=2)
    assert m["total_output_tokens"] == 30
    assert m["total_input_tokens"] == 18
    assert m["output_throughput"] == pytest.approx(30 / m["duration"])
    assert m["total_token_throughput"] == pytest.approx(48 / m["duration"])
    # TPOT divides the decode time by output tokens - 1, with tokens from usage.
    assert m["mean_tpot_ms"] == pytest.approx(40 / 14, abs=1.5)


def test_concurrency_overlaps_requests() -> None:
    serial = run(Script(ttft_s=0.1, gap_s=0.0, chunks=2), concurrency=1, requests=4)
    parallel = run(Script(ttft_s=0.1, gap_s=0.0, chunks=2), concurrency=4, requests=4)
    assert serial["duration"] >= 0.4
    assert parallel["duration"] < 0.3
    assert parallel["request_throughput"] > 2 * serial["request_throughput"]


@pytest.mark.parametrize(("script", "error"), [
    (Script(send_done=False), "stream ended without [DONE]"),
    (Script(send_usage=False), "no usage in the stream"),
    (Script(status=401), "HTTP 401"),
])
def test_broken_streams_count_as_failed(script: Script, error: str) -> None:
    m = run(script, requests=2)
    assert m["completed"] == 0 and m["failed"] == 2
    assert all(error in e for e in m["errors"])
    assert m["output_throughput"] == 0


def test_time_limit_bounds_a_level() -> None:
    server, url = serve(Script(ttft_s=0.2, gap_s=0.0, chunks=1))
    try:
        client = tp.OpenAIEndpoint(url, "m", "", 10.0)
        results, duration = tp.run_level(client, ["p"], 1, 50, 8, True, time_limit_s=0.5)
    finally:
        server.shutdown()
    assert 2 <= len(results) <= 4
    assert duration < 1.5
