"""Settings from LLM_BACKEND_* variables and the keys file, checked by type, format and range."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many

ENV_PREFIX = "LLM_BACKEND_"
KEY_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEY_FIELDS = {"id", "sha256", "rate_limit", "max_streams", "enabled", "max_n", "max_tokens", "max_messages"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20


class ConfigError(ValueError):
    """A setting is wrong; the message starts with the name of the environment variable."""


@dataclass(frozen=True)
class Caps:
    """What one request may ask of the engine: choices (`n`), tokens to generate, messages (or inputs)."""
    n: int = 16
    tokens: int = 131_072
    messages: int = 2048


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: bytes  # sha256 of the key itself; the key is never stored
    rate_limit: str
    windows: tuple[tuple[int, float], ...]  # (requests, seconds) of each limit in rate_limit
    max_streams: int
    caps: Caps = Caps()
    enabled: bool = True


@dataclass(frozen=True)
class Settings:
    upstream_url: str
    keys: tuple[ApiKey, ...]
    upstream_api_key: str = ""
    rate_limit: str = "60/minute"
    max_streams: int = 4
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 300.0
    health_timeout_s: float = 2.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "info"
    keys_file: str = ""
    caps: Caps = Caps()
    metrics_token: str = ""
    max_in_flight: int = 256
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    request_timeout_s: float = 1800.0
    send_timeout_s: float = 60.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # A fleet's shared store of limits and usage (redis://, rediss:// or unix://); "" counts on this host only.
    limits_url: str = ""
    limits_failure: str = "open"
    limits_timeout_s: float = 0.5


def parse_rate(where: str, text: str) -> tuple[RateLimitItem, ...]:
    """limits' syntax, several limits separated by ';' ("10/second;500/hour"); each must allow a request."""
    try:
        items = tuple(parse_many(text))
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a rate limit such as '60/minute' or '10/second;500/hour'") \
            from None
    if not items or any(item.amount < 1 for item in items):
        raise ConfigError(f"{where}: {text!r} allows no request at all; each limit needs an amount of 1 or more")
    return items


def parse_int(where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {value!r} is not a whole number")
    if not low <= value <= high:
        raise ConfigError(f"{where}: {value} is out of range ({low}..{high})")
    return value


def parse_seconds(where: str, text: str, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number of seconds") from None
    if not 0 < value <= high:
        raise ConfigError(f"{where}: {text} is out of range (more than 0, at most {high:g} seconds)")
    return value


def parse_upstream_url(where: str, text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {text!r} is not an http(s) URL such as http://engine:8000")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{where}: {text!r} must have no query, fragment or credentials "
                          f"(the engine's key goes in {ENV_PREFIX}UPSTREAM_API_KEY)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{where}: {text!r} has an invalid port") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        raise ConfigError(f"{where}: {text!r} must be the engine's base URL, without /v1 (the gateway adds it)")
    return f"{parts.scheme}://{parts.netloc}{path}"


def parse_key(where: str, entry: object, default_rate: str, default_streams: int, default_caps: Caps) -> ApiKey:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object with id and sha256")
    unknown = sorted(set(entry) - KEY_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(KEY_FIELDS))})")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise ConfigError(f"{where}: id {key_id!r} must match ^[a-z0-9][a-z0-9_.-]{{0,63}}$")
    digest = entry.get("sha256")
    # The value is never echoed: a key pasted here by mistake must not end up in a log.
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        raise ConfigError(f"{where} ({key_id}): sha256 must be 64 lowercase hex characters, the SHA-256 of the key "
                          "(not the key itself; the value is not shown)")
    rate = entry.get("rate_limit", default_rate)
    if not isinstance(rate, str):
        raise ConfigError(f"{where} ({key_id}): rate_limit must be a string such as '60/minute'")
    items = parse_rate(f"{where} ({key_id}) rate_limit", rate)
    streams = parse_int(f"{where} ({key_id}) max_streams", entry.get("max_streams", default_streams), 1, 10_000)
    caps = Caps(*(parse_int(f"{where} ({key_id}) {field}", entry.get(field, default), 1, high)
                  for field, default, high in caps_fields(default_caps)))
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where} ({key_id}): enabled must be true or false")
    return ApiKey(key_id, bytes.fromhex(digest), rate, tuple((item.amount, item.get_expiry()) for item in items),
                  streams, caps, enabled)


def caps_fields(caps: Caps) -> tuple[tuple[str, int, int], ...]:
    """(name, value, highest) of each cap, named as in a key's entry (the settings add MAX_ and upper-case)."""
    return (("max_n", caps.n, 1024), ("max_tokens", caps.tokens, 10_000_000),
            ("max_messages", caps.messages, 1_000_000))


def load_keys(path: str, default_rate: str, default_streams: int, default_caps: Caps = Caps()) -> tuple[ApiKey, ...]:
    var = ENV_PREFIX + "KEYS_FILE"
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{var}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{var}: {path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or set(document) != {"keys"} or not isinstance(document["keys"], list):
        raise ConfigError(f'{var}: {path} must hold an object {{"keys": [...]}} and nothing else')
    if not document["keys"]:
        raise ConfigError(f"{var}: {path} lists no keys; at least one is needed")
    keys: list[ApiKey] = []
    for index, entry in enumerate(document["keys"]):
        where = f"{var}: {path} keys[{index}]"
        key = parse_key(where, entry, default_rate, default_streams, default_caps)
        if any(other.id == key.id for other in keys):
            raise ConfigError(f"{where}: id {key.id!r} is used twice; ids must be unique")
        for other in keys:
            if other.digest == key.digest:
                raise ConfigError(f"{where} ({key.id}): the same sha256 is listed under ids {other.id!r} and "
                                  f"{key.id!r}; each key needs its own entry")
        keys.append(key)
    return tuple(keys)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Every LLM_BACKEND_* setting, checked; ConfigError names the variable that is wrong."""
    def var(name: str) -> tuple[str, str]:
        return ENV_PREFIX + name, env.get(ENV_PREFIX + name, "").strip()

    name, url = var("UPSTREAM_URL")
    if not url:
        raise ConfigError(f"{name} is required: the engine's base URL, such as http://engine:8000")
    upstream_url = parse_upstream_url(name, url)
    name, upstream_key = var("UPSTREAM_API_KEY")
    if upstream_key and not all(33 <= ord(char) <= 126 for char in upstream_key):
        raise ConfigError(f"{name}: must be printable ASCII without spaces (the value is not shown)")
    name, rate = var("RATE_LIMIT")
    rate = rate or "60/minute"
    parse_rate(name, rate)
    name, streams_text = var("MAX_STREAMS")
    max_streams = parse_int(name, streams_text or "4", 1, 10_000)
    timeouts = []
    for suffix, default, high in (("CONNECT_TIMEOUT_S", "3", 600), ("READ_TIMEOUT_S", "300", 86_400),
                                  ("HEALTH_TIMEOUT_S", "2", 600)):
        name, text = var(suffix)
        timeouts.append(parse_seconds(name, text or default, high))
    name, body_text = var("MAX_BODY_BYTES")
    max_body_bytes = parse_int(name, body_text or str(DEFAULT_MAX_BODY_BYTES), 1024, 1 << 30)
    name, host = var("HOST")
    name, port_text = var("PORT")
    port = parse_int(name, port_text or "8080", 1, 65_535)
    name, level = var("LOG_LEVEL")
    level = (level or "info").lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name}: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    name, metrics_token = var("METRICS_TOKEN")
    if metrics_token and (len(metrics_token) < 16 or not all(33 <= ord(char) <= 126 for char in metrics_token)):
        raise ConfigError(f"{name}: must be 16 or more printable ASCII characters without spaces "
                          "(the value is not shown)")
    numbers = {}
    for suffix, default, low, high in (("MAX_IN_FLIGHT", 256, 1, 100_000), ("MAX_CONNECTIONS", 1000, 16, 1_000_000),
                                       ("MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES, 1024, 1 << 34)):
        name, text = var(suffix)
        numbers[suffix] = parse_int(name, text or str(default), low, high)
    caps = Caps(*(parse_int(var(field.upper())[0], var(field.upper())[1] or str(default), 1, high)
                  for field, default, high in caps_fields(Caps())))
    for suffix, default, high in (("HEADER_TIMEOUT_S", "10", 600), ("BODY_TIMEOUT_S", "60", 3600),
                                  ("REQUEST_TIMEOUT_S", "1800", 604_800), ("SEND_TIMEOUT_S", "60", 3600)):
        name, text = var(suffix)
        timeouts.append(parse_seconds(name, text or default, high))
    name, keys_file = var("KEYS_FILE")
    if not keys_file:
        raise ConfigError(f'{name} is required: a JSON file {{"keys": [{{"id": ..., "sha256": ...}}]}}')
    keys = load_keys(keys_file, rate, max_streams, caps)
    name, limits_url = var("LIMITS_URL")
    if limits_url:
        parse_limits_url(name, limits_url)
    name, failure = var("LIMITS_FAILURE")
    failure = (failure or "open").lower()
    if failure not in ("open", "closed"):
        raise ConfigError(f"{name}: {failure!r} is not open (count on this host while the store is unreachable) "
                          "or closed (refuse with 503)")
    name, text = var("LIMITS_TIMEOUT_S")
    limits_timeout_s = parse_seconds(name, text or "0.5", 30)
    return Settings(upstream_url=upstream_url, keys=keys, upstream_api_key=upstream_key, rate_limit=rate,
                    max_streams=max_streams, connect_timeout_s=timeouts[0], read_timeout_s=timeouts[1],
                    health_timeout_s=timeouts[2], max_body_bytes=max_body_bytes, host=host or "0.0.0.0", port=port,
                    log_level=level, keys_file=keys_file, caps=caps, metrics_token=metrics_token,
                    max_in_flight=numbers["MAX_IN_FLIGHT"], max_connections=numbers["MAX_CONNECTIONS"],
                    header_timeout_s=timeouts[3], body_timeout_s=timeouts[4], request_timeout_s=timeouts[5],
                    send_timeout_s=timeouts[6], max_response_bytes=numbers["MAX_RESPONSE_BYTES"],
                    limits_url=limits_url, limits_failure=failure, limits_timeout_s=limits_timeout_s)


def parse_limits_url(where: str, text: str) -> None:
    """redis://[:password@]host[:port][/db], rediss:// (TLS) or unix:///path; what is wrong is said without the
    URL, which may hold the store's password."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{where}: not a URL (the value is not shown)") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{where}: the scheme must be redis, rediss or unix; got {parts.scheme!r}")
    if parts.scheme == "unix" and not parts.path.startswith("/"):
        raise ConfigError(f"{where}: a unix:// URL needs an absolute socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{where}: a redis URL needs a host (redis://:password@host:6379/0)")
    if any(ord(char) < 33 or ord(char) > 126 for char in text):
        raise ConfigError(f"{where}: spaces and control characters are not allowed (the value is not shown)")
