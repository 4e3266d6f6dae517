#!/usr/bin/env python3
"""Gateway overhead: what apps/backend/llm_backend.py adds to time-to-first-token, and its throughput.

The synthetic SSE server (tests/sse_server.py, in its own process) streams one token per SSE event, one write
per event, and keeps connections alive as vLLM and llama.cpp do; the gateway runs as
`python apps/backend/llm_backend.py` (its own process, one key) in front of it. In the same run the same
requests go to the server directly and through the gateway, alternating in rounds. The client is a lean asyncio
HTTP/1.1 client in this process (raw sockets, no parsing beyond counting events), so that the figures are the
gateway's and not a client library's; its CPU share is printed so that a saturated client would show.

Two phases: short streams (TTFT: request sent -> first token event received; the goal is read at concurrency 1)
and long streams (tokens/s, with the gateway's CPU seconds per 1000 tokens from /proc/<pid>/stat).
Goals: <= 2 ms added TTFT at p50; >= 20,000 tokens/s through the gateway.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from sse_server import Script, serve  # noqa: E402

KEY = "benchmark-key-" + "7" * 32
TOKEN_MARK = b'"delta"'  # once per token event; the usage event has none
TTFT_GOAL_MS = 2.0
THROUGHPUT_GOAL = 20_000


@dataclass
class Stack:
    direct_url: str
    gateway_url: str
    server_pid: int
    gateway_pid: int


@dataclass
class Level:
    route: str
    concurrency: int
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    gateway_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def ttft_ms(self, quantile: float) -> float:
        values = sorted(self.ttfts)
        return 1000 * values[min(len(values) - 1, int(quantile * len(values)))]


def server_process(queue: multiprocessing.Queue, script: Script) -> None:
    _server, url = serve(script)
    queue.put(url)
    while True:
        time.sleep(3600)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process: fields 14 and 15 of /proc/<pid>/stat (counted after the command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def running_gateway(upstream: str, workdir: Path, name: str) -> Iterator[tuple[str, int]]:
    """`python apps/backend/llm_backend.py` with one key in front of `upstream`: (its URL, its pid)."""
    keys = workdir / f"keys-{name}.json"
    keys.write_text(json.dumps({"keys": [{"id": "bench", "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                                          "rate_limit": "1000000/minute", "max_streams": 1000}]}))
    port = free_port()
    env = dict(os.environ, LLM_BACKEND_UPSTREAM_URL=upstream, LLM_BACKEND_KEYS_FILE=str(keys),
               LLM_BACKEND_HOST="127.0.0.1", LLM_BACKEND_PORT=str(port))
    log = (workdir / f"gateway-{name}.log").open("w")
    gateway = subprocess.Popen([sys.executable, str(ROOT / "apps/backend/llm_backend.py")], env=env, stdout=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise RuntimeError("the gateway did not become healthy") from None
                time.sleep(0.1)
        yield url, gateway.pid
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)
        log.close()


@contextmanager
def running_stack(tokens: int, workdir: Path) -> Iterator[Stack]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=server_process, daemon=True, args=(
        queue, Script(ttft_s=0.0, gap_s=0.0, chunks=tokens, keep_alive=True)))
    server.start()
    upstream = queue.get(timeout=10)
    try:
        with running_gateway(upstream, workdir, str(tokens)) as (url, pid):
            assert server.pid is not None
            yield Stack(upstream, url, server.pid, pid)
    finally:
        server.terminate()


async def one_request(url: str, body: bytes, tls: ssl.SSLContext | None = None) -> tuple[float, int]:
    """POST, then read to EOF (Connection: close); TTFT is the arrival of the first token event (the TLS handshake
    of an https URL included, as a client without a kept connection pays it)."""
    parts = urlsplit(url)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port,
                                                   ssl=tls if parts.scheme == "https" else None)
    writer.write(head + body)
    received = bytearray()
    ttft = 0.0
    while data := await reader.read(262_144):
        received += data
        if not ttft and TOKEN_MARK in received[-len(data) - len(TOKEN_MARK):]:
            ttft = time.perf_counter() - started
    writer.close()
    if not received.startswith(b"HTTP/1.1 200") or b"data: [DONE]" not in received[-64:]:
        raise RuntimeError(f"bad response from {url}: {bytes(received[:300])!r}")
    return ttft, received.count(TOKEN_MARK)


async def run_requests(url: str, concurrency: int, requests: int, level: Level,
                       tls: ssl.SSLContext | None = None) -> None:
    body = json.dumps({"model": "synthetic", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    pending = iter(range(requests))

    async def worker() -> None:
        for _ in pending:
            ttft, tokens = await one_request(url, body, tls)
            level.ttfts.append(ttft)
            level.tokens += tokens

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    level.wall_s += time.perf_counter() - started


def measure(stack: Stack, concurrency: int, requests: int, rounds: int) -> tuple[Level, Level]:
    """Direct and gateway levels, alternating in rounds so that a burst of load elsewhere hits both alike."""
    direct, via = Level("direct", concurrency), Level("gateway", concurrency)
    for url in (stack.direct_url, stack.gateway_url):  # warm-up: connections, first-call imports
        asyncio.run(run_requests(url, concurrency, 2 * concurrency, Level("warm-up", concurrency)))
    for _ in range(rounds):
        for level, url in ((direct, stack.direct_url), (via, stack.gateway_url)):
            cpu = process_cpu_s(stack.gateway_pid), own_cpu_s()
            asyncio.run(run_requests(url, concurrency, max(1, requests // rounds), level))
            level.gateway_cpu_s += process_cpu_s(stack.gateway_pid) - cpu[0]
            level.client_cpu_s += own_cpu_s() - cpu[1]
    return direct, via


def print_levels(title: str, levels: list[Level], cpu_label: str = "gateway CPU s/1k tok",
                 cpu_routes: tuple[str, ...] = ("gateway",)) -> None:
    """The table of a phase; the CPU column is the measured process's, for the routes that pass through one."""
    width = max(7, *(len(lv.route) for lv in levels))
    print(f"\n{title}")
    print(f"{'route':>{width}} {'conc':>4} {'reqs':>5} {'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'tokens/s':>9} "
          f"{cpu_label:>{len(cpu_label)}} {'client CPU':>10}")
    for lv in levels:
        cpu = f"{1000 * lv.gateway_cpu_s / max(1, lv.tokens):.4f}" if lv.route in cpu_routes else "-"
        print(f"{lv.route:>{width}} {lv.concurrency:>4} {len(lv.ttfts):>5} {lv.ttft_ms(0.5):>11.2f} "
              f"{lv.ttft_ms(0.99):>11.2f} {lv.tokens_per_s:>9,.0f} {cpu:>{len(cpu_label)}} "
              f"{100 * lv.client_cpu_s / lv.wall_s:>9.0f}%")


def phase_arguments(parser: argparse.ArgumentParser, rounds_help: str) -> None:
    """The options both overhead benchmarks take: the two phases' sizes, the levels, the rounds."""
    parser.add_argument("--short-tokens", type=int, default=16, help="tokens per request, TTFT phase")
    parser.add_argument("--short-requests", type=int, default=600, help="requests per level and route, TTFT phase")
    parser.add_argument("--long-tokens", type=int, default=2000, help="tokens per request, throughput phase")
    parser.add_argument("--long-requests", type=int, default=96, help="requests per level and route, throughput")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3, help=rounds_help)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    phase_arguments(parser, "direct/gateway alternations per level")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores (server, gateway and client share them); synthetic SSE server: "
          "1 token per event, one write per event, TTFT 0, keep-alive")
    results: dict[str, list[Level]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for phase, tokens, requests in (("ttft", args.short_tokens, args.short_requests),
                                        ("throughput", args.long_tokens, args.long_requests)):
            with running_stack(tokens, Path(tmp)) as stack:
                results[phase] = [lv for conc in args.concurrency
                                  for lv in measure(stack, conc, requests, args.rounds)]
    print_levels(f"TTFT phase: {args.short_tokens} tokens per request", results["ttft"])
    print_levels(f"throughput phase: {args.long_tokens} tokens per request", results["throughput"])
    print()
    for direct, via in zip(results["ttft"][::2], results["ttft"][1::2], strict=True):
        added = via.ttft_ms(0.5) - direct.ttft_ms(0.5)
        goal = f"goal <= {TTFT_GOAL_MS:g} ms: {'met' if added <= TTFT_GOAL_MS else 'NOT met'}" \
            if direct.concurrency == 1 else "(under load; the goal is read at concurrency 1)"
        print(f"added TTFT p50 at concurrency {direct.concurrency}: {added:+.2f} ms  {goal}")
    best = max(lv.tokens_per_s for lv in results["throughput"] if lv.route == "gateway")
    per_k = max(1000 * lv.gateway_cpu_s / lv.tokens for lv in results["throughput"] if lv.route == "gateway")
    print(f"tokens/s through the gateway: {best:,.0f} (goal >= {THROUGHPUT_GOAL:,}: "
          f"{'met' if best >= THROUGHPUT_GOAL else 'NOT met'}); gateway CPU {per_k:.4f} s per 1000 tokens "
          f"(one core would carry about {1000 / per_k:,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
