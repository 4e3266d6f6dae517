#!/usr/bin/env python3
"""Run llama.cpp's OpenAI-compatible HTTP server (the xllamacpp wheel) until SIGTERM.

Configuration comes from the environment, set by the compose file:
  LLAMACPP_MODEL         absolute path of a GGUF file, or pkg:<package>/<file> for a GGUF shipped in a wheel
  LLAMACPP_ALIAS         the model name served on /v1/models and accepted in requests
  LLAMACPP_HOST/PORT     listen address (default 0.0.0.0:8000)
  LLAMACPP_CTX           context length in tokens; LLAMACPP_PARALLEL: slots
  LLAMACPP_THREADS       CPU threads (0: all cores); LLAMACPP_GPU_LAYERS: layers offloaded (0 on CPU)
  LLAMACPP_API_KEY       optional; when set, requests need "Authorization: Bearer <key>"
"""
from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
from pathlib import Path

import xllamacpp


def resolve_model(spec: str) -> str:
    if spec.startswith("pkg:"):
        package, _, filename = spec[4:].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            sys.exit(f"model package {package!r} is not installed in the engine image")
        spec = str(Path(list(found.submodule_search_locations)[0]) / filename)
    if not Path(spec).is_file():
        sys.exit(f"model file {spec!r} does not exist")
    return spec


def build_params(env: dict[str, str]) -> xllamacpp.CommonParams:
    params = xllamacpp.CommonParams()
    params.model.path = resolve_model(env["LLAMACPP_MODEL"])
    params.model_alias = {env["LLAMACPP_ALIAS"]}  # a set of names in this binding
    params.hostnames = [env.get("LLAMACPP_HOST", "0.0.0.0")]
    params.port = int(env.get("LLAMACPP_PORT", "8000"))
    params.n_ctx = int(env.get("LLAMACPP_CTX", "4096"))
    params.n_parallel = int(env.get("LLAMACPP_PARALLEL", "2"))
    params.n_gpu_layers = int(env.get("LLAMACPP_GPU_LAYERS", "0"))
    threads = int(env.get("LLAMACPP_THREADS", "0")) or (os.cpu_count() or 1)
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.endpoint_metrics = True
    params.use_jinja = True
    if env.get("LLAMACPP_API_KEY"):
        params.api_keys = [env["LLAMACPP_API_KEY"]]
    return params


def env_alias(params: xllamacpp.CommonParams) -> str:
    return ", ".join(sorted(params.model_alias))


def main() -> None:
    params = build_params(dict(os.environ))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"serving {env_alias(params)!r} from {params.model.path} on "
          f"{params.hostnames[0]}:{params.port}", flush=True)
    stop.wait()
    del server


if __name__ == "__main__":
    main()
