"""The gateway's Prometheus metrics (its own registry)."""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """One registry per app, so that tests can build several apps in one process. Labels carry key ids."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("llm_backend_requests", "API requests answered, by key id, route and HTTP status.",
                                ["key_id", "route", "status"], registry=reg)
        self.tokens = Counter("llm_backend_tokens", "Tokens the engine reported in its usage, by key id, model "
                              "and type (prompt or completion).", ["key_id", "model", "type"], registry=reg)
        self.latency = Histogram("llm_backend_request_duration_seconds", "Time from request arrival to the last "
                                 "byte of the answer.", ["route", "stream"], buckets=LATENCY_BUCKETS, registry=reg)
        self.ttfb = Histogram("llm_backend_time_to_first_byte_seconds", "Time from request arrival to the first "
                              "byte of the engine's answer passed on.", ["route", "stream"], buckets=TTFB_BUCKETS,
                              registry=reg)
        self.in_flight = Gauge("llm_backend_in_flight_requests", "Engine requests (chat, completions, responses, "
                               "embeddings) being answered, by key id.", ["key_id"], registry=reg)
        self.rate_limited = Counter("llm_backend_rate_limited", "Requests refused with 429, by key id and limit "
                                    "(rate or concurrency).", ["key_id", "limit"], registry=reg)
        self.upstream_errors = Counter("llm_backend_upstream_errors", "Engine failures, by reason (connect, timeout, "
                                       "status_5xx, auth, stream_interrupted, too_large).", ["reason"], registry=reg)
        self.upstream_retries = Counter("llm_backend_upstream_retries", "Requests sent to the engine a second "
                                        "time after a pooled connection was found closed before any byte of the "
                                        "answer.", registry=reg)
        self.limits_store_errors = Counter(
            "llm_backend_limits_store_errors", "Calls to the shared limits store (LLM_BACKEND_LIMITS_URL) that failed, "
            "by operation; while it fails, limits are counted on this host (LIMITS_FAILURE=open) or requests refused "
            "(closed).", ["operation"], registry=reg)
        self.busy = Counter("llm_backend_busy", "Requests refused with 503 because the host's in-flight limit "
                            "(LLM_BACKEND_MAX_IN_FLIGHT) was reached.", registry=reg)
        self.deadlines = Counter("llm_backend_deadlines", "Requests ended by a deadline, by kind (request: the total "
                                 "deadline; send: the client did not take the answer).", ["kind"], registry=reg)
        self.connections = Gauge("llm_backend_open_connections", "Client connections open.", registry=reg)
        self.connections_closed = Counter("llm_backend_connections_closed", "Client connections closed by the "
                                          "gateway, by reason (header_timeout, connection_limit).", ["reason"],
                                          registry=reg)
        self.keys_reloads = Counter("llm_backend_keys_reloads", "Readings of a changed keys file, by result (ok, "
                                    "error: the keys in use are kept).", ["result"], registry=reg)
        self.keys_loaded = Gauge("llm_backend_keys", "Keys in use, by state (enabled, disabled).", ["state"],
                                 registry=reg)
        self.engine_up = Gauge("llm_backend_engine_up", "1 when the last /health probe found the engine healthy.",
                               registry=reg)
