#!/usr/bin/env python3
"""Front door overhead: what the fleet's front door adds in front of the backend API, and vllm-router in its place.

One synthetic SSE engine (tests/sse_server.py, its own process) and one backend API (apps/backend/llm_backend.py, its
own process) in front of it, as in benchmarks/gateway_overhead.py. In the same run, alternating in rounds, the same
requests go to
- `backend`: the backend API direct (plain HTTP, what a client on the host's network gets without a front door);
- `haproxy`: HAProxy over TLS in front of that backend, with the configuration role front_door writes (its `config`
  entry point, run here by ansible-playbook; HAProxy 2.6 from Debian's package, scripts/ensure-haproxy.sh);
- `router`: vllm-router (PyPI, pinned below; a Rust binary) in front of the same backend, plain HTTP: it has no TLS
  of its own, so in production it would need a TLS terminator in front of it as well.
Each client worker keeps its connection, as an HTTP client's pool does; a separate phase opens one per request, so
that a TLS handshake's cost shows.

Goals (issue 25): <= 1 ms added TTFT p50 at concurrency 1 and >= 50,000 tokens/s at concurrency 32 through the front
door with TLS. Server, backend, load balancer and client share this machine's cores: read the client's CPU share.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

import gateway_overhead as gw  # noqa: E402
from front_door_fixture import config_vars, haproxy_wrapper, make_tls  # noqa: E402
from gateway_overhead import KEY, TOKEN_MARK, Level, free_port, own_cpu_s, process_cpu_s  # noqa: E402

VLLM_ROUTER = "vllm-router==0.1.17"
ROUTER_VENV = ROOT / ".cache/vllm-router"
TTFT_GOAL_MS = 1.0
THROUGHPUT_GOAL = 50_000


def wait_healthy(url: str, proc: subprocess.Popen, what: str, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2, context=context) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{what} did not become healthy")
        time.sleep(0.2)


@contextmanager
def running_haproxy(work: Path, backend_ports: list[int]) -> Iterator[tuple[str, ssl.SSLContext, int]]:
    """HAProxy with the role's configuration, a server per backend: (https URL, client TLS context, pid)."""
    work.mkdir(exist_ok=True)
    bindir = haproxy_wrapper(work)
    ca, _, _ = make_tls(work)
    https_port = free_port()
    servers = [{"name": f"bench-host-{index}", "port": port} for index, port in enumerate(backend_ports, 1)]
    extravars = {**config_vars(work, https_port, 0, servers),
                 "ansible_python_interpreter": sys.executable}
    (work / "vars.json").write_text(json.dumps(extravars))
    env = dict(os.environ, PATH=f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    rendered = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c",
                               "local", "-e", f"@{work / 'vars.json'}",
                               str(ROOT / "tests/playbooks/front_door_config.yml")],
                              env=env, capture_output=True, text=True, check=False)
    if rendered.returncode != 0:
        raise RuntimeError("role front_door's config entry point failed:\n" + rendered.stdout[-3000:])
    log = (work / "haproxy.log").open("w")
    proc = subprocess.Popen([str(bindir / "haproxy"), "-db", "-f", str(work / "haproxy.cfg")], stdout=log,
                            stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(ca))
    url = f"https://127.0.0.1:{https_port}"
    try:
        wait_healthy(url, proc, "HAProxy", context)
        yield url, context, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def router_binary() -> Path:
    """vllm-router in its own virtual environment under .cache (installed from PyPI once)."""
    binary = ROUTER_VENV / "bin/vllm-router"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ROUTER_VENV)], check=True)
        subprocess.run([str(ROUTER_VENV / "bin/pip"), "install", "-q", VLLM_ROUTER], check=True)
    return binary


@contextmanager
def running_router(work: Path, backend_url: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    log = (work / "router.log").open("w")
    proc = subprocess.Popen([str(router_binary()), "--host", "127.0.0.1", "--port", str(port), "--worker-urls",
                             backend_url, "--policy", "round_robin", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, "vllm-router")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


async def kept_request(conn: list, url: str, body: bytes, tls: ssl.SSLContext | None) -> tuple[float, int]:
    """POST on the worker's kept-alive connection (opened on first use, as an HTTP client's pool does), read the
    chunked stream to its last chunk; TTFT is the arrival of the first token event."""
    parts = urlsplit(url)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    started = time.perf_counter()
    if not conn:
        conn[:] = await asyncio.open_connection(parts.hostname, parts.port,
                                                ssl=tls if parts.scheme == "https" else None)
    reader, writer = conn
    writer.write(head + body)
    received = bytearray()
    ttft = 0.0
    while not received.endswith(b"\r\n0\r\n\r\n"):
        data = await reader.read(262_144)
        if not data:
            raise RuntimeError(f"{url} closed the connection: {bytes(received[:300])!r}")
        received += data
        if not ttft and TOKEN_MARK in received[-len(data) - len(TOKEN_MARK):]:
            ttft = time.perf_counter() - started
    if not received.startswith(b"HTTP/1.1 200") or b"data: [DONE]" not in received[-80:]:
        raise RuntimeError(f"bad response from {url}: {bytes(received[:300])!r}")
    return ttft, received.count(TOKEN_MARK)


async def kept_requests(url: str, concurrency: int, requests: int, level: Level, tls: ssl.SSLContext | None) -> None:
    body = json.dumps({"model": "synthetic", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    pending = iter(range(requests))

    async def worker() -> None:
        conn: list = []
        for _ in pending:
            ttft, tokens = await kept_request(conn, url, body, tls)
            level.ttfts.append(ttft)
            level.tokens += tokens
        if conn:
            conn[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    level.wall_s += time.perf_counter() - started


def measure(routes: list[tuple[str, str, ssl.SSLContext | None, int]], concurrency: int, requests: int,
            rounds: int, new_connections: bool = False) -> list[Level]:
    """One level per route, alternating in rounds; `cpu` of a level is its load balancer's (0 for the backend)."""
    levels = [Level(name, concurrency) for name, *_ in routes]
    send = gw.run_requests if new_connections else kept_requests
    for _name, url, tls, _pid in routes:  # warm-up: connections, first-call imports
        asyncio.run(send(url, concurrency, 2 * concurrency, Level("warm-up", concurrency), tls))
    for _ in range(rounds):
        for level, (_name, url, tls, pid) in zip(levels, routes, strict=True):
            cpu = process_cpu_s(pid) if pid else 0.0, own_cpu_s()
            asyncio.run(send(url, concurrency, max(1, requests // rounds), level, tls))
            level.gateway_cpu_s += (process_cpu_s(pid) - cpu[0]) if pid else 0.0
            level.client_cpu_s += own_cpu_s() - cpu[1]
    return levels


def show(title: str, levels: list[Level]) -> None:
    gw.print_levels(title, levels, "balancer CPU s/1k tok", ("haproxy", "router", "haproxy2"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gw.phase_arguments(parser, "alternations of the routes per level")
    parser.add_argument("--no-router", action="store_true", help="leave vllm-router out (it is installed from PyPI)")
    args = parser.parse_args()
    if not shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)):
        raise SystemExit("run with the project's virtual environment (make bench)")
    print(f"machine: {os.cpu_count()} cores (engine, backend, load balancer and client share them); synthetic SSE "
          "engine: 1 token per event, TTFT 0")
    results: dict[str, list[Level]] = {}
    phases = (("ttft", args.short_tokens, args.short_requests, args.concurrency, False),
              ("new connections", args.short_tokens, args.short_requests // 2, [1], True),
              ("throughput", args.long_tokens, args.long_requests, args.concurrency, False))
    with tempfile.TemporaryDirectory() as tmp:
        for phase, tokens, requests, levels, new in phases:
            work = Path(tmp) / phase.replace(" ", "-")
            work.mkdir()
            with ExitStack() as running:
                stack = running.enter_context(gw.running_stack(tokens, work))
                one = running_haproxy(work / "one", [port(stack.gateway_url)])
                https, tls, haproxy_pid = running.enter_context(one)
                routes = [("backend", stack.gateway_url, None, 0), ("haproxy", https, tls, haproxy_pid)]
                if not args.no_router:
                    router_url, router_pid = running.enter_context(running_router(work, stack.gateway_url))
                    routes.append(("router", router_url, None, router_pid))
                if phase == "throughput":
                    # A fleet's shape: the same engine behind two backends (two hosts), one front door.
                    second, _ = running.enter_context(gw.running_gateway(stack.direct_url, work, "second"))
                    routes.append(("haproxy2", *running.enter_context(
                        running_haproxy(work / "two", [port(stack.gateway_url), port(second)]))))
                results[phase] = [lv for conc in levels for lv in measure(routes, conc, requests, args.rounds, new)]
    show(f"TTFT phase: {args.short_tokens} tokens per request, kept-alive connections", results["ttft"])
    show(f"new connections: {args.short_tokens} tokens per request, a connection (and a TLS handshake for "
                 "haproxy) per request", results["new connections"])
    show(f"throughput phase: {args.long_tokens} tokens per request, kept-alive connections",
                 results["throughput"])
    print()
    by = {(lv.route, lv.concurrency, phase): lv for phase, levels in results.items() for lv in levels}
    for conc in args.concurrency:
        base = by[("backend", conc, "ttft")].ttft_ms(0.5)
        for route in ("haproxy", "router"):
            if (route, conc, "ttft") not in by:
                continue
            added = by[(route, conc, "ttft")].ttft_ms(0.5) - base
            goal = (f"goal <= {TTFT_GOAL_MS:g} ms: {'met' if added <= TTFT_GOAL_MS else 'NOT met'}"
                    if conc == 1 and route == "haproxy" else "")
            print(f"added TTFT p50, {route} (TLS)" if route == "haproxy" else f"added TTFT p50, {route} (plain)",
                  f"at concurrency {conc}: {added:+.2f} ms  {goal}")
    fresh = {lv.route: lv.ttft_ms(0.5) for lv in results["new connections"]}
    print(f"a new connection with its TLS handshake, haproxy: {fresh['haproxy'] - fresh['backend']:+.2f} ms TTFT p50 "
          "against a new plain connection to the backend")
    top = max(args.concurrency)
    said = {"backend": "the backend direct: one backend process, its own ceiling here",
            "haproxy": "HAProxy with TLS, that one backend behind it", "router": "vllm-router, plain HTTP, the same",
            "haproxy2": "HAProxy with TLS, two backends behind it (a fleet's shape)"}
    for route, what in said.items():
        if (route, top, "throughput") in by:
            print(f"tokens/s at concurrency {top}, {what}: {by[(route, top, 'throughput')].tokens_per_s:,.0f}")
    door = by[("haproxy2", top, "throughput")]
    per_k = 1000 * door.gateway_cpu_s / door.tokens
    print(f"through the front door with TLS: {door.tokens_per_s:,.0f} tokens/s (goal >= {THROUGHPUT_GOAL:,}: "
          f"{'met' if door.tokens_per_s >= THROUGHPUT_GOAL else 'NOT met'}); HAProxy's CPU {per_k:.4f} s per 1000 "
          f"tokens (one core would carry about {1000 / per_k:,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
