"""An OpenAI-compatible API gateway in front of an LLM engine (vLLM or llama.cpp's server).

Clients present per-user API keys (the gateway stores only their SHA-256), are held to a request rate and a
number of concurrent chat completions per key, and get the engine's answers passed through unchanged: streamed
completions byte for byte, as the engine sent them. Every request leaves one JSON access-log line (never a prompt,
a reply or a key) and Prometheus metrics on /metrics.

Run: `python llm_backend.py` (the entry script beside this package), configured by LLM_BACKEND_* environment
variables (README.md lists them).
Tests build the app with `create_app(settings_from_env(env))`.
"""
from __future__ import annotations

import importlib.util
import sys

# httpcore tries `import sniffio` several times per request; sniffio is not in the image, and a failed import
# searches sys.path every time (~0.1 ms each, over half a millisecond per request). A None entry makes the
# import fail at once, which httpcore reads as "asyncio", as it would without the entry.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]
