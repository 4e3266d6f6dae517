"""Chat UI: a Streamlit page that talks only to the LLM backend (an OpenAI-compatible gateway).

The conversation lives in the session; every turn sends the whole history to POST /v1/chat/completions with
stream=true and shows the answer as it arrives. Reasoning (gpt-oss on vLLM: `delta.reasoning_content` in vLLM
0.11, `delta.reasoning` later) streams into a collapsed expander and is never sent back to the model.

Settings (environment): LLM_FRONTEND_BACKEND_URL (required), LLM_FRONTEND_API_KEY, LLM_FRONTEND_TITLE,
LLM_FRONTEND_TIMEOUT_S, LLM_FRONTEND_MAX_TOKENS (README.md). The API key is never displayed or logged.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import streamlit as st

DEFAULT_TITLE = "LLM chat"
DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0
# Redraw the streamed text at most this often: each redraw is a message to the browser, which renders the
# markdown again; ten a second read as smooth and leave the CPU to an engine that may share the machine.
REDRAW_S = 0.1
MODELS_TTL_S = 300.0
ERROR_TEXT_MAX = 400
# SSE line ends: CRLF, LF, or a lone CR; a CR at the very end of the buffer waits for the next chunk.
_EOL = re.compile(r"\r\n|\n|\r(?=.)", re.DOTALL)
_STREAMING, _DONE, _STOPPED, _ERROR = "streaming", "done", "stopped", "error"


class ConfigError(ValueError):
    """The frontend's environment is unusable; the message says which variable and why."""


class BackendError(Exception):
    """A failure talking to the backend, worded for the person using the chat."""


@dataclass(frozen=True)
class Config:
    backend_url: str
    api_key: str = field(repr=False)
    title: str = DEFAULT_TITLE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_tokens: int | None = None


@dataclass
class Delta:
    """What one streamed chunk adds to the answer."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None


def load_config(env: Mapping[str, str]) -> Config:
    url = env.get("LLM_FRONTEND_BACKEND_URL", "").strip()
    if not url:
        raise ConfigError("LLM_FRONTEND_BACKEND_URL is not set: give the backend's base URL, e.g. http://backend:8080")
    return Config(backend_url=_valid_url(url), api_key=env.get("LLM_FRONTEND_API_KEY", "").strip(),
                  title=env.get("LLM_FRONTEND_TITLE", "").strip() or DEFAULT_TITLE,
                  timeout_s=_valid_timeout(env.get("LLM_FRONTEND_TIMEOUT_S", "").strip()),
                  max_tokens=_valid_max_tokens(env.get("LLM_FRONTEND_MAX_TOKENS", "").strip()))


def _valid_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        raise ConfigError(f"LLM_FRONTEND_BACKEND_URL is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("LLM_FRONTEND_BACKEND_URL must be an http:// or https:// URL with a host, "
                          "e.g. http://backend:8080")
    if parts.username or parts.password:
        raise ConfigError("LLM_FRONTEND_BACKEND_URL must not carry credentials: put the key in LLM_FRONTEND_API_KEY")
    if parts.query or parts.fragment:
        raise ConfigError("LLM_FRONTEND_BACKEND_URL must be a base URL without a query or fragment")
    if parts.path.rstrip("/").endswith("/v1"):
        raise ConfigError("LLM_FRONTEND_BACKEND_URL must be the backend's base URL, without /v1 (the UI adds it)")
    return url.rstrip("/")


def _valid_timeout(raw: str) -> float:
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"LLM_FRONTEND_TIMEOUT_S must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"LLM_FRONTEND_TIMEOUT_S must be a positive number of seconds, not {raw!r}")
    return value


def _valid_max_tokens(raw: str) -> int | None:
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise ConfigError(f"LLM_FRONTEND_MAX_TOKENS must be a whole number of tokens from 1 to 1000000, not {raw!r}")
    return int(raw)


def sse_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Decode a byte stream as UTF-8 lines; a character split across chunks is decoded once it is whole."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    for chunk in chunks:
        buffer += decoder.decode(chunk)
        start = 0
        for match in _EOL.finditer(buffer):
            yield buffer[start:match.start()]
            start = match.end()
        buffer = buffer[start:]
    buffer += decoder.decode(b"", final=True)
    yield from buffer.splitlines()


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event (its `data:` lines joined), as the SSE specification frames them."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def parse_chunk(data: str) -> Delta:
    """One `chat.completion.chunk`; an `error` event mid-stream becomes a BackendError."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        return Delta()
    if not isinstance(chunk, dict):
        return Delta()
    if chunk.get("error"):
        raise BackendError(f"The engine reported an error while answering: {_error_text(chunk)}")
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return Delta()
    delta = choices[0].get("delta") or {}
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    return Delta(content=delta.get("content") or "", reasoning=reasoning if isinstance(reasoning, str) else "",
                 finish_reason=choices[0].get("finish_reason"))


def _error_text(body: Any) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), or of the common variants."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for value in (error, body.get("detail"), body.get("message")):
            if isinstance(value, str) and value:
                return value
        return json.dumps(body, ensure_ascii=False)
    return str(body)


def _body_text(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        text = _error_text(json.loads(text))
    except json.JSONDecodeError:
        pass
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_MAX else text[:ERROR_TEXT_MAX] + "…"


def _retry_after(value: str | None) -> str:
    """A sentence saying when to try again, from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return ""
    if value.strip().isdigit():
        seconds = int(value.strip())
    else:
        try:
            seconds = math.ceil(parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return ""
    return f" Try again in {max(seconds, 1)} s."


def http_error_message(status: int, headers: Mapping[str, str], body: bytes, backend_url: str) -> str:
    detail = _body_text(body)
    said = f" The backend said: {detail}" if detail else ""
    if status == 401:
        return ("The backend refused the API key (401). Enter a valid key under \"Your API key\" in the sidebar, "
                "or ask the administrator to check the key the chat UI is configured with." + said)
    if status == 403:
        return "The backend does not allow this key to do that (403)." + said
    if status == 429:
        return "The backend is rate limiting requests (429)." + _retry_after(headers.get("retry-after")) + said
    if status == 503:
        return ("The inference engine is unavailable (503): it may still be loading the model or be overloaded."
                + _retry_after(headers.get("retry-after")) + said)
    if status in (502, 504):
        return f"The backend got no usable answer from the inference engine ({status})." + said
    return f"The backend at {backend_url} answered with an error ({status})." + said


def unreachable_message(backend_url: str, exc: Exception) -> str:
    return (f"The backend at {backend_url} cannot be reached ({exc or type(exc).__name__}). Check that it is "
            "running and that LLM_FRONTEND_BACKEND_URL points at it.")


def upstream_messages(history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The conversation as the model sees it: answer text only (no reasoning, no errors). A question that got no
    answer text (an error, or stopped before the first word) is left out, so user and assistant turns alternate."""
    messages = []
    for index, entry in enumerate(history):
        if entry["role"] == "user":
            reply = history[index + 1] if index + 1 < len(history) else None
            if reply is None or reply.get("content"):
                messages.append({"role": "user", "content": entry["content"]})
        elif entry.get("content"):
            messages.append({"role": "assistant", "content": entry["content"]})
    return messages


def redact(text: str, secrets: Iterable[str]) -> str:
    """Belt and braces: whatever the backend echoes, a key never reaches the page."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "•••")
    return text


def _client(config: Config, api_key: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(config.timeout_s, connect=CONNECT_TIMEOUT_S, pool=CONNECT_TIMEOUT_S)
    return httpx.Client(base_url=config.backend_url, headers=headers, timeout=timeout)


def list_models(config: Config, api_key: str) -> list[str]:
    try:
        with _client(config, api_key) as client:
            response = client.get("/v1/models")
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise BackendError(unreachable_message(config.backend_url, exc)) from None
    except httpx.HTTPError as exc:
        raise BackendError(f"Asking the backend at {config.backend_url} for its models failed ({exc}).") from None
    if response.status_code != 200:
        raise BackendError(http_error_message(response.status_code, response.headers, response.content,
                                              config.backend_url))
    try:
        ids = [str(model["id"]) for model in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise BackendError(f"The backend at {config.backend_url} sent a model list this UI cannot read.") from None
    if not ids:
        raise BackendError("The backend serves no model yet.")
    return ids


def stream_chat(config: Config, api_key: str, model: str, messages: list[dict[str, str]]) -> Iterator[Delta]:
    """The answer's deltas as they arrive. Closing the generator (or leaving it by an exception) closes the HTTP
    stream, so the backend sees the client go away and can stop the generation."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if config.max_tokens:
        body["max_tokens"] = config.max_tokens
    try:
        with _client(config, api_key) as client, client.stream(
                "POST", "/v1/chat/completions", json=body, headers={"Accept": "text/event-stream"}) as response:
            if response.status_code != 200:
                raise BackendError(http_error_message(response.status_code, response.headers, response.read(),
                                                      config.backend_url))
            if response.headers.get("content-type", "").startswith("application/json"):
                yield _whole_answer(response.read())
                return
            done = False
            for data in sse_data(sse_lines(response.iter_bytes())):
                # After [DONE] the rest is read, not cut off: hanging up on a finished stream would count as a
                # client that went away in the backend's logs and metrics.
                done = done or data.strip() == "[DONE]"
                if not done:
                    yield parse_chunk(data)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise BackendError(unreachable_message(config.backend_url, exc)) from None
    except httpx.ReadTimeout:
        raise BackendError(f"The backend sent nothing for {config.timeout_s:g} s (LLM_FRONTEND_TIMEOUT_S), so the "
                           "answer was given up.") from None
    except httpx.HTTPError as exc:
        raise BackendError(f"The connection to the backend at {config.backend_url} broke off ({exc}).") from None


def _whole_answer(raw: bytes) -> Delta:
    """A backend that answers a streamed request in one JSON body still gets its answer shown."""
    try:
        message = json.loads(raw)["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise BackendError("The backend sent an answer this UI cannot read.") from None
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    return Delta(content=message.get("content") or "", reasoning=reasoning)


# --- the page ------------------------------------------------------------------------------------------------


def _key_fingerprint(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def _models(config: Config, api_key: str) -> tuple[list[str], str]:
    """The backend's models, fetched again when the key changes or after MODELS_TTL_S; a failure is not kept."""
    cached = st.session_state.get("models")
    fingerprint = _key_fingerprint(api_key)
    if cached and cached["key"] == fingerprint and time.monotonic() - cached["at"] < MODELS_TTL_S:
        return cached["ids"], ""
    try:
        ids = list_models(config, api_key)
    except BackendError as exc:
        st.session_state.pop("models", None)
        return [], str(exc)
    st.session_state["models"] = {"key": fingerprint, "ids": ids, "at": time.monotonic()}
    return ids, ""


def _new_conversation() -> None:
    _take_over(st.session_state["history"], st.session_state["lock"])
    st.session_state["history"] = []


def _sidebar(config: Config) -> tuple[str, str | None, str]:
    """The key to use, the chosen model (None when the backend gave none) and the model-list error, if any."""
    with st.sidebar:
        own_key = st.text_input("Your API key", type="password", key="own_api_key",
                                help="Optional: your own key for the backend, used instead of the configured one.")
        own_key = own_key.strip()
        if own_key and not (own_key.isascii() and own_key.isprintable()):
            st.warning("That key has characters an API key cannot have; the configured key is used instead.")
            own_key = ""
        api_key = own_key or config.api_key
        ids, error = _models(config, api_key)
        model = None
        if len(ids) > 1:
            model = st.selectbox("Model", ids, key="model")
        elif ids:
            model = ids[0]
            st.markdown(f"**Model**  \n`{model}`")
        st.button("New conversation", icon=":material/add_comment:", on_click=_new_conversation,
                  width="stretch")
    return api_key, model, error


def _status_note(entry: dict[str, Any], secrets: tuple[str, ...]) -> None:
    if entry["status"] == _STOPPED:
        st.caption("Stopped: the answer above is incomplete.")
    elif entry["status"] == _ERROR:
        st.error(redact(entry["error"], secrets), icon=":material/error:")
    elif entry.get("finish_reason") == "length":
        st.caption("The answer reached the length limit and was cut off.")


def _render_history(history: list[dict[str, Any]], secrets: tuple[str, ...]) -> None:
    for entry in history:
        with st.chat_message(entry["role"]):
            if entry.get("reasoning"):
                with st.expander("Reasoning", expanded=False):
                    st.markdown(entry["reasoning"])
            if entry["content"]:
                st.markdown(entry["content"])
            if entry["role"] == "assistant":
                _status_note(entry, secrets)


def _finish(entry: dict[str, Any], lock: threading.Lock, status: str, **details: str) -> None:
    """Close the turn, unless a newer run of the script has already marked it stopped."""
    with lock:
        if entry["status"] == _STREAMING:
            entry.update(status=status, **details)


def _take_over(history: list[dict[str, Any]], lock: threading.Lock) -> None:
    """A click (Stop, New conversation, a widget) starts a new run of the script at once, while the run that was
    streaming goes on until its next redraw, where Streamlit stops it (runner.fastReruns). An answer still
    marked as streaming therefore belongs to that older run: it is stopped here, and the older run, seeing
    that, adds nothing more and closes its HTTP stream."""
    with lock:
        for entry in history:
            if entry.get("status") == _STREAMING:
                entry["status"] = _STOPPED


def _answer(config: Config, api_key: str, model: str | None, history: list[dict[str, Any]],
            lock: threading.Lock, secrets: tuple[str, ...]) -> None:
    """Stream one answer into the page and into the history. Leaving the stream, whether at its end, on an
    error, or because the turn was stopped (see _take_over; with fastReruns off, Streamlit's rerun exception at
    the next redraw), closes the HTTP stream to the backend."""
    messages = upstream_messages(history)
    entry: dict[str, Any] = {"role": "assistant", "content": "", "reasoning": "", "status": _STREAMING}
    history.append(entry)
    with st.chat_message("assistant"):
        reasoning_slot, answer_slot, note_slot = st.empty(), st.empty(), st.empty()
    stop_slot = st.empty()
    stop_slot.button("Stop", key="stop", icon=":material/stop_circle:")
    reasoning_text = None

    def redraw(cursor: str) -> None:
        nonlocal reasoning_text
        if entry["reasoning"]:
            if reasoning_text is None:
                reasoning_text = reasoning_slot.container().expander("Reasoning", expanded=False).empty()
            reasoning_text.markdown(entry["reasoning"] + (cursor if not entry["content"] else ""))
        if entry["content"]:
            answer_slot.markdown(entry["content"] + cursor)

    try:
        if model is None:
            model = list_models(config, api_key)[0]
        drawn = time.monotonic()
        with closing(stream_chat(config, api_key, model, messages)) as deltas:
            for delta in deltas:
                with lock:
                    if entry["status"] != _STREAMING:
                        return
                    entry["content"] += delta.content
                    entry["reasoning"] += delta.reasoning
                    entry["finish_reason"] = delta.finish_reason or entry.get("finish_reason")
                if time.monotonic() - drawn >= REDRAW_S:
                    redraw(" ▌")
                    drawn = time.monotonic()
        _finish(entry, lock, _DONE)
    except BackendError as exc:
        _finish(entry, lock, _ERROR, error=str(exc))
    finally:
        _finish(entry, lock, _STOPPED)
    redraw("")
    stop_slot.empty()
    with note_slot.container():
        _status_note(entry, secrets)


def main() -> None:
    try:
        config: Config | None = load_config(os.environ)
    except ConfigError as exc:
        config, config_error = None, str(exc)
    title = config.title if config else DEFAULT_TITLE
    st.set_page_config(page_title=title, page_icon=":material/chat:")
    st.title(title)
    if config is None:
        st.error(f"The chat UI is misconfigured: {config_error}", icon=":material/settings:")
        st.stop()
    history: list[dict[str, Any]] = st.session_state.setdefault("history", [])
    lock: threading.Lock = st.session_state.setdefault("lock", threading.Lock())
    _take_over(history, lock)
    api_key, model, models_error = _sidebar(config)
    secrets = (api_key, config.api_key)
    if models_error:
        st.error(redact(models_error, secrets), icon=":material/cloud_off:")
    _render_history(history, secrets)
    prompt = st.chat_input("Ask something", submit_mode="disable")
    if prompt and prompt.strip():
        history.append({"role": "user", "content": prompt})
        with st.chat_message("user"):
            st.markdown(prompt)
        _answer(config, api_key, model, history, lock, secrets)


if __name__ == "__main__":
    main()
