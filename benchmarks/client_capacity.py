#!/usr/bin/env python3
"""Client capacity: the highest output_throughput llm_throughput can measure on this machine.

A local OpenAI-style SSE server (tests/sse_server.py, in its own process) streams one token per chunk
as fast as the socket takes it; the module's client runs at several concurrency levels. Prints the
measured output tokens/s and the share of one CPU core the client used (process CPU time / wall time):
a client far below 100% of a core is not what limits the figure. Goal: >= 20,000 tokens/s.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / ".collection")]

from ansible_collections.llm_endpoints.core.plugins.modules import llm_throughput as tp  # noqa: E402
from sse_server import Script, serve  # noqa: E402


def server_process(port_queue: multiprocessing.Queue, chunks: int) -> None:
    server, url = serve(Script(ttft_s=0.0, gap_s=0.0, chunks=chunks, burst=True))
    port_queue.put(url)
    while True:
        time.sleep(3600)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="tokens (chunks) per request")
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    args = parser.parse_args()
    queue: multiprocessing.Queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=server_process, args=(queue, args.tokens), daemon=True)
    proc.start()
    url = queue.get(timeout=10)
    client = tp.OpenAIEndpoint(url, "synthetic", "", 60.0)
    print(f"synthetic SSE server: {args.tokens} tokens/request, 1 token/chunk; {args.requests} requests/level")
    print(f"{'concurrency':>11} {'completed':>9} {'output tok/s':>13} {'client CPU (% of a core)':>25} "
          f"{'CPU us/token':>13}")
    best = 0.0
    per_token: list[float] = []
    try:
        for level in args.concurrency:
            cpu0 = cpu_seconds()
            results, duration = tp.run_level(client, ["p"], level, args.requests, args.tokens, True, 600.0)
            cpu = cpu_seconds() - cpu0
            metrics = tp.compute_metrics(results, duration)
            best = max(best, metrics["output_throughput"])
            per_token.append(1e6 * cpu / max(1, metrics["total_output_tokens"]))
            print(f"{level:>11} {metrics['completed']:>9} {metrics['output_throughput']:>13,.0f} "
                  f"{100 * cpu / duration:>24.0f}% {per_token[-1]:>13.1f}")
    finally:
        proc.terminate()
    goal = 20_000
    print(f"highest measured: {best:,.0f} output tokens/s (goal >= {goal:,}: {'met' if best >= goal else 'NOT met'})")
    worst_cost = max(per_token)
    for rate in (11_000, goal):
        print(f"client CPU needed at {rate:,} tokens/s: {rate * worst_cost / 1e4:.0f}% of one core "
              f"(at the worst measured {worst_cost:.1f} us/token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
