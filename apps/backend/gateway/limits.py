"""Each key's rate and concurrent-request limits: per host, or across hosts through the shared store."""
from __future__ import annotations

import hashlib
import hmac
import math
from collections import deque

from gateway.settings import ApiKey


class Gate:
    """Who is calling (constant-time key check) and whether they may, now (rate and concurrency per key, and the
    host's in-flight limit over all keys).

    The rate is a moving window, as limits' MovingWindowRateLimiter counts it, kept here as the times of the
    requests inside each window: limits' MemoryStorage starts a thread to expire entries whenever its last one
    has ended (10 ms), which costs over a millisecond per request at a modest request rate."""

    def __init__(self, keys: tuple[ApiKey, ...], max_in_flight: int = 1_000_000) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.keys: tuple[ApiKey, ...] = ()
        self.hits: dict[str, tuple[deque, ...]] = {}
        self.active: dict[str, int] = {}
        self.replace(keys)

    def replace(self, keys: tuple[ApiKey, ...]) -> None:
        """New keys (a reloaded file): a key id kept keeps its requests in the window and its requests in flight,
        which end as they would have; a removed or disabled key admits nothing more from now on."""
        hits = {}
        for key in keys:
            old = self.hits.get(key.id)
            kept = next((other for other in self.keys if other.id == key.id), None)
            hits[key.id] = old if old is not None and kept is not None and kept.windows == key.windows \
                else tuple(deque() for _ in key.windows)
            self.active.setdefault(key.id, 0)
        self.keys, self.hits = keys, hits

    def current(self, key: ApiKey) -> ApiKey | None:
        """The key as the keys now in use have it (its limits may have changed), or None once it was removed."""
        return next((other for other in self.keys if other.id == key.id and other.digest == key.digest), None)

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """Compares the presented key's hash with every stored hash, without stopping at a match, so the time
        taken does not tell which key (or how much of a hash) matched."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.encode("latin-1")).digest()  # ASGI header values are latin-1
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def retry_after(self, key: ApiKey, now: float) -> int | None:
        """None when a request now is within every one of the key's limits; else the seconds until the oldest
        request in the full window leaves it. Counts nothing: only an admitted request is counted (`count`)."""
        for times, (amount, seconds) in zip(self.hits[key.id], key.windows, strict=True):
            while times and times[0] <= now - seconds:
                times.popleft()
            if len(times) >= amount:
                return max(1, math.ceil(times[0] + seconds - now))
        return None

    def count(self, key: ApiKey, now: float) -> None:
        hits = self.hits.get(key.id)
        for times in hits or ():
            times.append(now)

    def busy(self) -> bool:
        return self.in_flight >= self.max_in_flight

    def acquire(self, key: ApiKey) -> bool:
        if self.active.get(key.id, 0) >= key.max_streams:
            return False
        self.active[key.id] = self.active.get(key.id, 0) + 1
        self.in_flight += 1
        return True

    def release(self, key: ApiKey) -> None:
        self.active[key.id] -= 1
        self.in_flight -= 1

    def enter_host(self) -> None:
        """A request whose key the shared store counted: only the host's own in-flight count is kept here."""
        self.in_flight += 1

    def leave_host(self) -> None:
        self.in_flight -= 1


def store_windows(key: ApiKey) -> tuple[tuple[int, int], ...]:
    """The key's rate windows as the shared store counts them: (requests, whole seconds)."""
    return tuple((amount, max(1, round(seconds))) for amount, seconds in key.windows)
