#!/usr/bin/env python3
"""A hostile and sloppy client for the backend API (apps/backend), standard library only, so that it runs where
the backend runs: against a test process (apps/backend/tests/test_backend_live.py) and inside the lab host
(molecule default). Each case prints one JSON line {case, ok, detail}; the exit status is 1 if any case failed.

    python3 hostile_client.py http://127.0.0.1:8080 <api key> [--header-timeout 10] [--back-to-back 40]
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit


class Target:
    def __init__(self, url: str, key: str, model: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.key, self.model = key, model

    def request(self, method: str, path: str, body: bytes | None = None, auth: bool = True,
                timeout: float = 60) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.key}"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            document = json.loads(raw)
        except ValueError:
            document = {"raw": raw[:200].decode("latin-1")}
        return response.status, document if isinstance(document, dict) else {"raw": document}

    def chat(self, **fields: object) -> tuple[int, dict]:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1,
                "temperature": 0} | fields
        return self.request("POST", "/v1/chat/completions", json.dumps(body).encode())


def refused_naming(status: int, document: dict, param: str) -> tuple[bool, str]:
    error = document.get("error") or {}
    return status == 400 and error.get("param") == param, f"{status} param={error.get('param')!r}"


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def case_metrics_need_a_token(t: Target, _args: argparse.Namespace) -> tuple[bool, str]:
    status, _ = t.request("GET", "/metrics", auth=False)
    keyed, _ = t.request("GET", "/metrics")  # a client's key is not the metrics token
    return status in (401, 404) and keyed in (401, 404), f"without a token {status}, with a client key {keyed}"


def case_stream_not_a_boolean(t: Target, _args: argparse.Namespace) -> tuple[bool, str]:
    results = [refused_naming(*t.chat(stream=value), "stream") for value in (1, "true", "yes")]
    return all(ok for ok, _ in results), "; ".join(detail for _, detail in results)


def case_deeply_nested_json(t: Target, _args: argparse.Namespace) -> tuple[bool, str]:
    status, document = t.request("POST", "/v1/chat/completions", b'{"model": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    return status == 400 and (document.get("error") or {}).get("code") == "invalid_json", str(status)


def case_lone_surrogate_model(t: Target, _args: argparse.Namespace) -> tuple[bool, str]:
    body = b'{"model": "\\ud800-hostile", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}'
    status, _ = t.request("POST", "/v1/chat/completions", body)
    return status < 500, str(status)


def case_caps(t: Target, _args: argparse.Namespace) -> tuple[bool, str]:
    results = [refused_naming(*t.chat(n=1_000_000), "n"), refused_naming(*t.chat(max_tokens=10**12), "max_tokens"),
               refused_naming(*t.chat(messages=[{"role": "user", "content": "x"}] * 100_000), "messages")]
    return all(ok for ok, _ in results), "; ".join(detail for _, detail in results)


def case_idle_and_slow_connections_are_closed(t: Target, args: argparse.Namespace) -> tuple[bool, str]:
    idle = [socket.create_connection((t.host, t.port), timeout=5) for _ in range(20)]
    slow = socket.create_connection((t.host, t.port), timeout=5)
    stop = threading.Event()

    def trickle() -> None:  # a request head, one byte a second, never complete
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 600:
            if stop.wait(1.0):
                return
            try:
                slow.send(bytes([byte]))
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    started = time.monotonic()
    limit = args.header_timeout + 5
    try:
        closed = sum(closed_by_server(sock, max(0.1, limit - (time.monotonic() - started))) for sock in idle)
        slow_closed = closed_by_server(slow, max(0.1, limit - (time.monotonic() - started)))
    finally:
        stop.set()
        for sock in [*idle, slow]:
            sock.close()
    took = time.monotonic() - started
    return closed == 20 and slow_closed, f"{closed}/20 idle and the slow one {'closed' if slow_closed else 'open'} " \
        f"after {took:.1f} s (header timeout {args.header_timeout:g} s)"


def case_back_to_back(t: Target, args: argparse.Namespace) -> tuple[bool, str]:
    """Requests one after the other on two threads: none may fail that the engine never saw."""
    failures: list[str] = []
    lock = threading.Lock()
    count = iter(range(args.back_to_back))

    def worker() -> None:
        while True:
            with lock:
                if next(count, None) is None:
                    return
            status, document = t.chat()
            if status != 200:
                with lock:
                    failures.append(f"{status} {(document.get('error') or {}).get('message', '')[:120]}")

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return not failures, f"{len(failures)} of {args.back_to_back} failed {failures[:3]}"


def case_responses_api(t: Target, _args: argparse.Namespace) -> tuple[bool, str]:
    body = {"model": t.model, "input": "Say OK.", "max_output_tokens": 4}
    status, document = t.request("POST", "/v1/responses", json.dumps(body).encode())
    return status == 200 and document.get("object") == "response", f"{status} {str(document)[:120]}"


CASES: dict[str, Callable[[Target, argparse.Namespace], tuple[bool, str]]] = {
    name.removeprefix("case_"): value for name, value in globals().items() if name.startswith("case_")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--model", default="default")
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--back-to-back", type=int, default=40)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    target = Target(args.url, args.key, args.model)
    failed = 0
    for name in args.cases.split(","):
        try:
            ok, detail = CASES[name](target, args)
        except Exception as exc:  # noqa: BLE001 - a case that breaks is a failed case, reported like the others
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        failed += not ok
        print(json.dumps({"case": name, "ok": ok, "detail": detail}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
