#!/usr/bin/python
"""Functional checks of an OpenAI-compatible endpoint (standard library only; runs on the target)."""
from __future__ import annotations

import http.client
import json
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llm_endpoints.core.plugins.module_utils.openai_client import (
    ENDPOINT_ARGS,
    OpenAIEndpoint,
    events,
    message_text,
    read_lines,
    reply_text,
)

DOCUMENTATION = r"""
module: llm_smoke
short_description: Functional checks of an OpenAI-compatible LLM endpoint
version_added: "0.2.0"
description:
  - Checks /health, /v1/models (lists the served name), a non-streamed and a streamed chat completion
    (chunks, then [DONE]), prompt checks with a regular expression the reply must match (streamed, and closed as
    soon as it matches, which stops the engine generating), and, when an API key is given, that a request without
    it gets 401 and one with it 200.
  - Never fails by itself, returns one result per check (name, passed, sent, received, detail) for the role to
    judge and report. The API key never appears in the results.
options:
  base_url: {description: Server root, type: str, required: true}
  model: {description: Served model name, type: str, required: true}
  api_key: {description: Bearer token, type: str, default: "", no_log: true}
  max_tokens: {description: Token budget per request (reasoning counts too), type: int, required: true}
  prompt_checks:
    description: List of {name, prompt, pattern, meaning}; the reply (content, then reasoning) must match pattern.
    type: list
    elements: dict
    required: true
  timeout_s: {description: Per-request timeout in seconds, type: float, required: true}
  backend_url:
    description:
      - The backend API in front of the engine (empty - not checked). Checks its /health, that a request without a
        key or with an unknown key gets 401 with an OpenAI-style error, a streamed chat through it (chunks, a usage
        chunk, [DONE]), that backend_limit_key gets 429 within backend_limit_attempts requests, and that /metrics
        answers 401 without the metrics token and 200 with it.
    type: str
    default: ""
  backend_key: {description: A backend key with room for the checks, type: str, default: "", no_log: true}
  backend_limit_key: {description: A backend key allowed one request a minute, type: str, default: "", no_log: true}
  backend_limit_attempts: {description: Requests sent with backend_limit_key at most, type: int, default: 3}
  backend_metrics_token:
    description: The token the backend's /metrics asks for (LLM_BACKEND_METRICS_TOKEN).
    type: str
    default: ""
    no_log: true
  frontend_key:
    description: The chat UI's own backend key, when it has one; checked against the backend's /v1/models.
    type: str
    default: ""
    no_log: true
  frontend_url:
    description: The chat UI (empty - not checked); checks /_stcore/health and the page.
    type: str
    default: ""
author: llm-endpoints project
"""

EXAMPLES = r"""
- name: The engine and the backend in front of it pass the functional checks
  llm_endpoints.core.llm_smoke:
    base_url: http://127.0.0.1:8000
    model: openai/gpt-oss-20b
    api_key: "{{ vault_llm_engine_api_key }}"
    max_tokens: 512
    prompt_checks:
      - {name: korean, prompt: "한국의 수도는 어디입니까?", pattern: "서울|Seoul", meaning: names Seoul}
    timeout_s: 120
    backend_url: http://127.0.0.1:8080
    backend_key: "{{ smoke_key }}"
    backend_limit_key: "{{ smoke_ratelimit_key }}"
    backend_metrics_token: "{{ vault_llm_engine_api_key }}"
  register: smoke

- name: A failed check fails the host, naming it
  ansible.builtin.assert:
    that: smoke.passed
    fail_msg: "{{ smoke.checks | rejectattr('passed') | map(attribute='name') | join(', ') }} failed"
"""

RETURN = r"""
checks:
  description: One entry per check, in the order run; C(sent) and C(received) never hold a key.
  type: list
  elements: dict
  returned: always
  contains:
    name: {description: "The check (health, models, chat, stream, a prompt check's name, auth:..., backend:...,
      frontend:...)", type: str}
    passed: {description: Whether it passed, type: bool}
    sent: {description: What was sent (method, path, body; keys redacted), type: str}
    received: {description: What came back (status and body, at most 400 characters), type: str}
    detail: {description: What was expected, type: str}
  sample: [{"name": "health", "passed": true, "sent": "GET /health", "received": "HTTP 200 {\"status\":\"ok\"}",
            "detail": "expected HTTP 200"}]
passed:
  description: Whether every check passed (true in check mode, where nothing is sent).
  type: bool
  returned: always
model_meta:
  description: The C(meta) object the engine lists for the served model in /v1/models (llama.cpp's); empty otherwise.
  type: dict
  returned: when the checks ran (not in check mode)
skipped:
  description: True in check mode (no request sent).
  type: bool
  returned: in check mode
"""

RECEIVED_LIMIT = 400


def result(name: str, passed: bool, sent: str, received: str, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "sent": sent, "received": received[:RECEIVED_LIMIT], "detail": detail}


def check_health(ep: OpenAIEndpoint) -> dict[str, Any]:
    status, body = ep.call("/health", auth=False)
    return result("health", status == 200, ep.describe("GET", "/health", auth=False), f"HTTP {status} {body}",
                  "expected HTTP 200")


def check_models(ep: OpenAIEndpoint) -> tuple[dict[str, Any], dict[str, Any]]:
    status, body = ep.call("/v1/models")
    sent = ep.describe("GET", "/v1/models")
    try:
        entries = json.loads(body)["data"] if status == 200 else []
    except (ValueError, KeyError, TypeError):
        entries = []
    ids = [e.get("id") for e in entries]
    meta = next((e.get("meta") or {} for e in entries if e.get("id") == ep.model), {})
    return (result("models", ep.model in ids, sent, f"HTTP {status} ids={ids}",
                   f"expected {ep.model!r} among the served model ids"), meta)


def check_chat(ep: OpenAIEndpoint, max_tokens: int) -> dict[str, Any]:
    body = ep.chat_body("Reply with one short sentence about the sea.", max_tokens)
    status, payload = ep.call("/v1/chat/completions", body)
    sent = ep.describe("POST", "/v1/chat/completions", body)
    if status != 200:
        return result("chat", False, sent, f"HTTP {status} {payload}", "expected HTTP 200")
    try:
        content, reasoning = reply_text(payload)
    except (ValueError, KeyError, IndexError, TypeError):
        return result("chat", False, sent, payload, "reply is not a chat completion")
    return result("chat", bool(content.strip() or reasoning.strip()), sent, payload,
                  "expected non-empty content (or reasoning_content)")


def check_stream(ep: OpenAIEndpoint, max_tokens: int) -> dict[str, Any]:
    body = ep.chat_body("Count from one to five in words.", max_tokens, stream=True)
    status, payload = ep.call("/v1/chat/completions", body)
    sent = ep.describe("POST", "/v1/chat/completions", body)
    seen = [e.decode("utf-8", errors="replace") for e in events(iter(payload.encode().splitlines()))]
    chunks = [e for e in seen if e and e != "[DONE]"]
    ok = status == 200 and len(chunks) > 0 and seen[-1:] == ["[DONE]"]
    return result("stream", ok, sent, f"HTTP {status}, {len(chunks)} chunks, last event {seen[-1:]!r}",
                  "expected HTTP 200, at least one data chunk, and [DONE] as the last event")


def check_prompt(ep: OpenAIEndpoint, spec: dict, max_tokens: int) -> dict[str, Any]:
    """Streamed, and closed as soon as the reply (its content, or a reasoning model's reasoning) matches: the engine
    stops generating when the client goes (llama.cpp and vLLM both), so a check costs the tokens that prove it, not
    max_tokens of an answer already judged."""
    name = f"prompt:{spec['name']}"
    body = ep.chat_body(spec["prompt"], max_tokens, stream=True)
    sent = ep.describe("POST", "/v1/chat/completions", body)
    expected = f"expected the reply to match /{spec['pattern']}/: {spec.get('meaning', '')}"
    pattern = re.compile(spec["pattern"])
    text = {"content": "", "reasoning": ""}
    conn = ep.connect()
    try:
        resp = ep.open_stream(conn, body)
        if resp.status != 200:
            return result(name, False, sent, f"HTTP {resp.status} {resp.read().decode('utf-8', 'replace')}",
                          "expected HTTP 200")
        chunks = 0
        for payload in events(read_lines(resp)):
            if payload == b"[DONE]":
                break
            try:
                choices = json.loads(payload)["choices"]
                # A chunk without choices carries the usage alone (OpenAI's stream_options.include_usage).
                delta = (choices[0].get("delta") or {}) if choices else {}
                if not isinstance(delta, dict):
                    raise TypeError("delta is not an object")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                return result(name, False, sent, payload.decode("utf-8", "replace"), "reply is not a chat completion")
            chunks += 1
            content, reasoning = message_text(delta)
            text["content"] += content
            text["reasoning"] += reasoning
            if pattern.search(text["content"]) or pattern.search(text["reasoning"]):
                return result(name, True, sent, text["content"] or text["reasoning"],
                              f"{expected} (matched after {chunks} chunks; the stream closed there)")
    except (OSError, http.client.HTTPException) as err:
        return result(name, False, sent, f"{type(err).__name__}: {err}", "expected HTTP 200 and a streamed reply")
    finally:
        conn.close()
    return result(name, False, sent, text["content"] or text["reasoning"], expected)


def check_auth(ep: OpenAIEndpoint) -> list[dict[str, Any]]:
    without, body_without = ep.call("/v1/models", auth=False)
    with_key, body_with = ep.call("/v1/models")
    return [
        result("auth:without-key", without == 401, ep.describe("GET", "/v1/models", auth=False),
               f"HTTP {without} {body_without}", "expected HTTP 401 without the API key"),
        result("auth:with-key", with_key == 200, ep.describe("GET", "/v1/models"),
               f"HTTP {with_key} {body_with}", "expected HTTP 200 with the API key"),
    ]


def openai_error(body: str) -> bool:
    """Whether a reply body is an OpenAI-style error: {"error": {"message": ..., ...}}."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and bool(error.get("message"))


def parsed(event: str) -> dict:
    """A streamed event's JSON object; {} for one that is not."""
    try:
        value = json.loads(event)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def check_backend(params: dict) -> list[dict[str, Any]]:
    """The backend in front of the engine: health, keys (401), a streamed chat through it with usage, the rate
    limit (429, with its own key allowed one request a minute) and /metrics."""
    timeout = params["timeout_s"]
    ep = OpenAIEndpoint(params["backend_url"], params["model"], params["backend_key"], timeout)
    limited = OpenAIEndpoint(params["backend_url"], params["model"], params["backend_limit_key"], timeout)
    status, body = ep.call("/health", auth=False)
    checks = [result("backend:health", status == 200, ep.describe("GET", "/health", auth=False),
                     f"HTTP {status} {body}", "expected HTTP 200 (the backend reflects the engine's health)")]
    status, body = ep.call("/v1/models", auth=False)
    checks.append(result("backend:without-key", status == 401 and openai_error(body),
                         ep.describe("GET", "/v1/models", auth=False), f"HTTP {status} {body}",
                         "expected HTTP 401 with an OpenAI-style error without a key"))
    wrong = OpenAIEndpoint(params["backend_url"], params["model"], "not-a-key-" + "x" * 40, timeout)
    status, body = wrong.call("/v1/models")
    checks.append(result("backend:wrong-key", status == 401 and openai_error(body),
                         "GET /v1/models (Authorization: Bearer <a key the backend does not have>)",
                         f"HTTP {status} {body}", "expected HTTP 401 with an OpenAI-style error for an unknown key"))
    if params["frontend_key"]:
        ui = OpenAIEndpoint(params["backend_url"], params["model"], params["frontend_key"], timeout)
        status, body = ui.call("/v1/models")
        checks.append(result("frontend:backend-key", status == 200,
                             "GET /v1/models with the chat UI's key (redacted)", f"HTTP {status} {body[:200]}",
                             "expected HTTP 200: the backend accepts the chat UI's key"))
    request = ep.chat_body("Count from one to five in words.", params["max_tokens"], stream=True)
    status, payload = ep.call("/v1/chat/completions", request)
    seen = [e.decode("utf-8", errors="replace") for e in events(iter(payload.encode().splitlines()))]
    usage = [e for e in seen if e.startswith("{") and '"usage"' in e and parsed(e).get("usage")]
    chunks = [e for e in seen if e and e != "[DONE]"]
    streamed = status == 200 and len(chunks) > 1 and bool(usage) and seen[-1:] == ["[DONE]"]
    checks.append(result("backend:stream", streamed, ep.describe("POST", "/v1/chat/completions", request),
                         f"HTTP {status}, {len(chunks)} chunks, usage {usage[-1:]!r}, last event {seen[-1:]!r}",
                         "expected HTTP 200, streamed chunks, a usage chunk and [DONE] through the backend"))
    replies = []
    for _ in range(params["backend_limit_attempts"]):
        status, body = limited.call("/v1/models")
        replies.append(status)
        if status == 429:
            break
    checks.append(result("backend:rate-limit", replies[-1:] == [429] and openai_error(body),
                         f"GET /v1/models x{len(replies)} with a key allowed 1 request a minute (redacted)",
                         f"HTTP {replies} {body}", "expected HTTP 429 with an OpenAI-style error past the key's limit"))
    # Every key's usage is on /metrics: without the metrics token (a client's key is not it) it must be refused.
    refused = [ep.call("/metrics", auth=False)[0], ep.call("/metrics")[0]]
    scraper = OpenAIEndpoint(params["backend_url"], params["model"], params["backend_metrics_token"], timeout)
    status, body = scraper.call("/metrics")
    checks.append(result("backend:metrics", refused == [401, 401] and status == 200
                         and "llm_backend_requests_total" in body,
                         "GET /metrics without a key, with a client's key, and with the metrics token (redacted)",
                         f"HTTP {refused + [status]} {body[:200]}",
                         "expected HTTP 401, 401 and 200 with the llm_backend_requests_total metric"))
    return checks


def check_frontend(url: str, timeout: float) -> list[dict[str, Any]]:
    """The chat UI: its health endpoint and its page."""
    ep = OpenAIEndpoint(url, "", "", timeout)
    status, body = ep.call("/_stcore/health", auth=False)
    checks = [result("frontend:health", status == 200 and body.strip() == "ok", "GET /_stcore/health",
                     f"HTTP {status} {body}", "expected HTTP 200 ok")]
    status, body = ep.call("/", auth=False)
    checks.append(result("frontend:page", status == 200 and "<html" in body.lower(), "GET /",
                         f"HTTP {status} {body[:200]}", "expected HTTP 200 with the chat page's HTML"))
    return checks


def run_checks(params: dict) -> dict[str, Any]:
    ep = OpenAIEndpoint(params["base_url"], params["model"], params["api_key"], params["timeout_s"])
    checks = [check_health(ep)]
    models, meta = check_models(ep)
    checks += [models, check_chat(ep, params["max_tokens"]), check_stream(ep, params["max_tokens"])]
    checks += [check_prompt(ep, spec, params["max_tokens"]) for spec in params["prompt_checks"]]
    if params["api_key"]:
        checks += check_auth(ep)
    if params["backend_url"]:
        checks += check_backend(params)
    if params["frontend_url"]:
        checks += check_frontend(params["frontend_url"], params["timeout_s"])
    return {"checks": checks, "passed": all(c["passed"] for c in checks), "model_meta": meta}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **ENDPOINT_ARGS,
            "max_tokens": {"type": "int", "required": True},
            "prompt_checks": {"type": "list", "elements": "dict", "required": True},
            "timeout_s": {"type": "float", "required": True},
            # The backend API in front of the engine (empty: not checked), with its check keys, and the chat UI.
            "backend_url": {"type": "str", "default": ""},
            "backend_key": {"type": "str", "default": "", "no_log": True},
            "backend_limit_key": {"type": "str", "default": "", "no_log": True},
            "backend_limit_attempts": {"type": "int", "default": 3},
            "backend_metrics_token": {"type": "str", "default": "", "no_log": True},
            "frontend_url": {"type": "str", "default": ""},
            "frontend_key": {"type": "str", "default": "", "no_log": True},
        },
        supports_check_mode=True,
    )
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="checks not run in check mode", checks=[], passed=True)
    bad = [s for s in module.params["prompt_checks"] if not {"name", "prompt", "pattern"} <= set(s)]
    if bad:
        module.fail_json(msg=f"each prompt check needs name, prompt and pattern: {bad}")
    try:
        checks = run_checks(module.params)
    except ValueError as exc:  # base_url is not an http(s) URL: nothing could be checked
        module.fail_json(msg=f"base_url: {exc}")
    module.exit_json(changed=False, **checks)


if __name__ == "__main__":
    main()
