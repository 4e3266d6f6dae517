"""Entry points: serve (uvicorn) and `ledger` (the shared store's usage per key and day)."""
from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import resource
import sys

import uvicorn
from prometheus_client import (
    disable_created_metrics,
)
from redis.exceptions import RedisError

from gateway.app import GuardedH11Protocol, create_app
from gateway.logs import configure_logging
from gateway.settings import ENV_PREFIX, ConfigError, Settings, parse_limits_url, settings_from_env
from gateway.store import SharedLimits, StoreUnavailable

# Docker waits 10 s after SIGTERM before SIGKILL: open streams get 8 s to finish, then they are cut.
GRACEFUL_SHUTDOWN_S = 8


def raise_descriptor_limit(settings: Settings) -> None:
    """Room for every connection the cap allows, each with one to the engine, and a margin: the soft limit is
    raised towards the hard one; a hard limit too low is a configuration error, not a backend that stops answering
    (and whose /health fails) once the descriptors run out."""
    need = 2 * settings.max_connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ConfigError(f"{ENV_PREFIX}MAX_CONNECTIONS: {settings.max_connections} connections need {need} file "
                          f"descriptors; this process may open at most {hard} (raise the container's nofile ulimit, "
                          "or lower the cap)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def serve(settings: Settings) -> None:
    app = create_app(settings)
    GuardedH11Protocol.header_timeout_s = settings.header_timeout_s
    GuardedH11Protocol.max_connections = settings.max_connections
    GuardedH11Protocol.metrics = app.state.gateway.metrics
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, log_level=settings.log_level,
                access_log=False, server_header=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                http=GuardedH11Protocol)


def ledger(argv: list[str]) -> int:
    """`llm_backend.py ledger [--days N] [--csv]`: tokens and requests per key per day from the shared store
    (LLM_BACKEND_LIMITS_URL), as a table or CSV."""
    parser = argparse.ArgumentParser(prog="llm_backend.py ledger", description=ledger.__doc__)
    parser.add_argument("--days", type=int, default=31, help="the last N days with usage (1-3660; default 31)")
    parser.add_argument("--csv", action="store_true", help="CSV instead of a table")
    args = parser.parse_args(argv)
    name, url = ENV_PREFIX + "LIMITS_URL", os.environ.get(ENV_PREFIX + "LIMITS_URL", "").strip()
    try:
        if not url:
            raise ConfigError(f"{name} is required: the shared store the usage ledger is kept in")
        parse_limits_url(name, url)
        if not 1 <= args.days <= 3660:
            raise ConfigError(f"--days: {args.days} is out of range (1..3660)")
    except ConfigError as exc:
        print(f"llm_backend ledger: {exc}", file=sys.stderr)
        return 2

    async def read() -> list[dict[str, object]]:
        store = SharedLimits(url, 5.0, 60.0)
        try:
            return await store.ledger(args.days)
        finally:
            await store.close()

    try:
        rows = asyncio.run(read())
    except (StoreUnavailable, OSError, RedisError) as exc:
        print(f"llm_backend ledger: the store did not answer ({type(exc).__name__})", file=sys.stderr)
        return 1
    fields = ["day", "key_id", "requests", "prompt_tokens", "completion_tokens"]
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    widths = [max([len(field)] + [len(str(row[field])) for row in rows]) for field in fields]
    for line in [dict(zip(fields, fields, strict=True)), *rows]:
        print("  ".join(str(line[field]).ljust(width) for field, width in zip(fields, widths, strict=True)).rstrip())
    return 0


def main() -> None:
    if sys.argv[1:2] == ["ledger"]:
        sys.exit(ledger(sys.argv[2:]))
    try:
        settings = settings_from_env(os.environ)
        raise_descriptor_limit(settings)
    except ConfigError as exc:
        sys.exit(f"llm_backend: configuration error: {exc}")
    configure_logging(settings.log_level)
    disable_created_metrics()  # no *_created series: one timestamp per series that dashboards do not use
    logging.getLogger("llm_backend").info(
        "serving on %s:%s for %d key(s), engine %s", settings.host, settings.port, len(settings.keys),
        settings.upstream_url)
    serve(settings)

