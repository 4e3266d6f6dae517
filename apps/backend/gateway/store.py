"""A key's rate and in-flight limits counted across every host of a fleet, in one Redis (or Valkey) store, and the
usage ledger (prompt and completion tokens per key per day) kept beside them.

Why a script of our own rather than limits' Redis storage: a request is admitted when every rate window of its key
and its in-flight count allow it, and then counted in all of them; limits' moving window counts one window per call
and has no in-flight count. One Lua script does the whole decision atomically in the store, on the store's clock
(hosts' clocks may differ), with the same moving-window rule as the per-host gate. An in-flight entry is a lease
that ends with the request, or on its own after the lease time (a host that died mid-request frees its slots).
"""
from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

# KEYS: the key's rate windows (one sorted set each), then its in-flight set. ARGV: mode (admit: rate and in-flight,
# a lease; hit: rate only; count: counted without a check), member id,
# lease ms, max in flight, then amount and window ms of each rate window. Returns {verdict, wait ms}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode, id, lease, most = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local windows = #KEYS - 1
local wait = 0
for i = 1, windows do
  local amount, span = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - span)
  if mode ~= 'count' and redis.call('ZCARD', KEYS[i]) >= amount then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + span - now)
  end
end
if wait > 0 then return {'rate', wait} end
if mode == 'admit' then
  local flight = KEYS[windows + 1]
  redis.call('ZREMRANGEBYSCORE', flight, '-inf', now)
  if redis.call('ZCARD', flight) >= most then return {'concurrency', 0} end
  redis.call('ZADD', flight, now + lease, id)
  redis.call('PEXPIRE', flight, lease)
end
for i = 1, windows do
  redis.call('ZADD', KEYS[i], now, id .. ':' .. i)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[4 + 2 * i]))
end
return {'ok', 0}
"""


class StoreUnavailable(Exception):
    """The store did not answer in time, or refused: the caller applies the configured failure mode."""


@contextmanager
def unavailable_on_error() -> Iterator[None]:
    """The client's errors (and the socket's) as StoreUnavailable, named by their type and message."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    reason: str = ""  # "rate" or "concurrency" when refused
    retry_after_s: int = 0
    lease: str = ""  # the in-flight entry to release


class SharedLimits:
    def __init__(self, url: str, timeout_s: float, lease_s: float, prefix: str = "llm-backend") -> None:
        self.client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                        decode_responses=True)
        self.lease_ms = int(lease_s * 1000)
        self.prefix = prefix
        self.script = self.client.register_script(ADMIT)

    def keys(self, key_id: str, windows: int) -> list[str]:
        return [f"{self.prefix}:rate:{key_id}:{i}" for i in range(windows)] + [f"{self.prefix}:flight:{key_id}"]

    async def run(self, mode: str, key_id: str, windows: tuple[tuple[int, int], ...], most: int) -> Verdict:
        """mode admit: within every window and the in-flight limit, fleet-wide, counted and given a lease; hit: within
        every window, counted (no lease); count: counted without a check. Else refused, with the reason."""
        lease = uuid.uuid4().hex
        args: list[object] = [mode, lease, self.lease_ms, most]
        for amount, seconds in windows:
            args += [amount, seconds * 1000]
        with unavailable_on_error():
            verdict, wait_ms = await self.script(keys=self.keys(key_id, len(windows)), args=args)
        if verdict == "ok":
            return Verdict(True, lease=lease if mode == "admit" else "")
        return Verdict(False, str(verdict), max(1, -(-int(wait_ms) // 1000)) if verdict == "rate" else 1)

    async def count(self, key_id: str, windows: tuple[tuple[int, int], ...]) -> None:
        """A refused request (bad body) counted against the key's rate, as on one host."""
        await self.run("count", key_id, windows, 0)

    async def release(self, key_id: str, lease: str) -> None:
        with unavailable_on_error():
            await self.client.zrem(f"{self.prefix}:flight:{key_id}", lease)

    async def record_usage(self, key_id: str, prompt: int, completion: int) -> None:
        """Tokens per key per UTC day, kept as long as the store keeps its data (persistence is the store's)."""
        day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        with unavailable_on_error():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hincrby(f"{self.prefix}:usage:{day}", f"{key_id}|prompt", prompt)
                pipe.hincrby(f"{self.prefix}:usage:{day}", f"{key_id}|completion", completion)
                pipe.hincrby(f"{self.prefix}:usage:{day}", f"{key_id}|requests", 1)
                pipe.sadd(f"{self.prefix}:usage-days", day)
                await pipe.execute()

    async def ledger(self, days: int) -> list[dict[str, object]]:
        """The last `days` days that have usage: one row per day and key, oldest first."""
        known = sorted(await self.client.smembers(f"{self.prefix}:usage-days"))[-days:]
        rows: list[dict[str, object]] = []
        for day in known:
            fields = await self.client.hgetall(f"{self.prefix}:usage:{day}")
            per_key: dict[str, dict[str, int]] = {}
            for field, value in fields.items():
                key_id, _, kind = field.rpartition("|")
                per_key.setdefault(key_id, {})[kind] = int(value)
            rows += [{"day": day, "key_id": key_id, "requests": counts.get("requests", 0),
                      "prompt_tokens": counts.get("prompt", 0), "completion_tokens": counts.get("completion", 0)}
                     for key_id, counts in sorted(per_key.items())]
        return rows

    async def close(self) -> None:
        await self.client.aclose()
