"""Bad inputs of the check roles (llm_smoke, llm_throughput) and of llm_rollout fail before the first request, naming
the variable.

The endpoint is a local server that records every request and answers 404: no engine is needed, and a check that
let a bad input through would show up as a recorded request. The bad cases run as the hosts of one playbook run each
(llm_fixture.run_cases), every case with a recorder of its own.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from llm_fixture import Cases, run_cases, run_playbook

API_KEY = "check-inputs-test-key"


class Recorder(BaseHTTPRequestHandler):
    """Records each request in its server's `seen` list and answers 404."""

    def _record(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _record

    def log_message(self, *args: object) -> None:
        return


@contextmanager
def recorders(count: int) -> Iterator[list[ThreadingHTTPServer]]:
    """COUNT recording servers on loopback: one per case, so that a request is laid at its own case's door."""
    servers: list[ThreadingHTTPServer] = []
    try:
        for _ in range(count):
            server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
            server.seen = []  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def case_vars(server: ThreadingHTTPServer, role: str, **extra: object) -> dict:
    return {"check_inputs_role": role, "llm_stack_port": server.server_address[1],
            "llm_stack_served_model_name": "test/model", "llm_stack_api_key": API_KEY, "preflight_nvidia_gpus": [],
            **extra}


def test_good_inputs_do_reach_the_recorder(tmp_path: Path) -> None:
    # The control: with good inputs the role sends requests (and fails on the 404s), so "nothing recorded" below
    # means the inputs were refused first.
    with recorders(1) as [server]:
        result = run_playbook(tmp_path, "check_inputs.yml", case_vars(server, "llm_smoke"))
        assert result.rc != 0, result.output[-3000:]
        assert "GET /health" in server.seen, result.output[-3000:]  # type: ignore[attr-defined]


SMOKE = [
    ({"llm_smoke_base_url": "127.0.0.1:8000"},
     "llm_smoke_base_url must be an http(s) URL http(s)://<host>[:<port 1-65535>][/<path>] without spaces or line "
     'breaks; got "127.0.0.1:8000".'),
    ({"llm_smoke_base_url": "http://127.0.0.1:70000"}, 'llm_smoke_base_url must be an http(s) URL'),
    ({"llm_smoke_base_url": "http://127.0.0.1:8000\n"}, 'got "http://127.0.0.1:8000\\n".'),
    ({"llm_smoke_model": "test model"},
     'llm_smoke_model must be a model name of 1 to 256 characters without spaces, line breaks or control characters; '
     'got "test model".'),
    ({"llm_smoke_model": ""}, 'llm_smoke_model must be a model name of 1 to 256 characters'),
    ({"llm_smoke_max_tokens": 0}, "llm_smoke_max_tokens must be a whole number from 1 to 131072; got 0."),
    ({"llm_smoke_max_tokens": 1_000_000}, "llm_smoke_max_tokens must be a whole number from 1 to 131072; got 1000000."),
    ({"llm_smoke_max_tokens": "many"}, "argument 'llm_smoke_max_tokens' is of type str"),
    ({"llm_smoke_timeout_s": 0},
     "llm_smoke_timeout_s must be a number of seconds greater than 0 and at most 3600; got 0."),
    ({"llm_smoke_timeout_s": "nan"},
     'llm_smoke_timeout_s must be a number of seconds greater than 0 and at most 3600; got "nan".'),
    ({"llm_smoke_profile": "custom", "llm_smoke_prompt_checks": [{"name": "x", "prompt": "Say x."}]},
     "missing required arguments: pattern found in llm_smoke_prompt_checks"),
    ({"llm_smoke_profile": "nonexistent"}, "llm_smoke_profile 'nonexistent' is unknown"),
]

THROUGHPUT = [
    ({"llm_throughput_base_url": "ftp://127.0.0.1:8000"}, 'llm_throughput_base_url must be an http(s) URL'),
    ({"llm_throughput_base_url": "http://127.0.0.1:0"}, 'got "http://127.0.0.1:0".'),
    ({"llm_throughput_model": "a\nb"}, 'llm_throughput_model must be a model name of 1 to 256 characters'),
    ({"llm_throughput_concurrency": []},
     "llm_throughput_concurrency must be a non-empty list of whole numbers from 1 to 1024; got []."),
    ({"llm_throughput_concurrency": [1, 0]},
     "llm_throughput_concurrency must be a non-empty list of whole numbers from 1 to 1024; got [1, 0]."),
    ({"llm_throughput_concurrency": [1, 5000]},
     "llm_throughput_concurrency must be a non-empty list of whole numbers from 1 to 1024; got [1, 5000]."),
    ({"llm_throughput_concurrency": [2, 8], "llm_throughput_min_decode_tps": 100},
     "llm_throughput_concurrency must be a list that includes 1 when llm_throughput_min_decode_tps is set"),
    ({"llm_throughput_prompts": ["Say hello.", ""]},
     "llm_throughput_prompts must be a list of non-empty prompts (or empty for the built-in set)"),
    ({"llm_throughput_requests_per_level": 0},
     "llm_throughput_requests_per_level must be a whole number from 1 to 100000; got 0."),
    ({"llm_throughput_warmup_requests": -1},
     "llm_throughput_warmup_requests must be a whole number from 0 to 1000; got -1."),
    ({"llm_throughput_max_tokens": 0}, "llm_throughput_max_tokens must be a whole number from 1 to 131072; got 0."),
    ({"llm_throughput_time_limit_s": 0},
     "llm_throughput_time_limit_s must be a number greater than 0 and at most 86400; got 0."),
    ({"llm_throughput_max_failed": -1}, "llm_throughput_max_failed must be a whole number from 0 to 1000000; got -1."),
    ({"llm_throughput_min_decode_tps": -5},
     "llm_throughput_min_decode_tps must be a number from 0 to 1000000; got -5."),
    ({"llm_throughput_max_p99_ttft_ms": 0},
     "llm_throughput_max_p99_ttft_ms must be a number greater than 0 and at most 3600000; got 0."),
    ({"llm_throughput_min_decode_tps": "fast"}, "argument 'llm_throughput_min_decode_tps' is of type str"),
]

KEY_MESSAGE = ("{} must be empty or at most 512 printable ASCII characters without spaces or line breaks "
               "(its value is not shown).")
KEYS = ["check-key\n", "check-key\nX-Injected: 1", "check key", "k" * 513]

THROUGHPUT_RUN = [
    ({"llm_throughput_run": "sometimes"}, "value of llm_throughput_run must be one of: auto, always, never"),
]
ROLLOUT = [
    ({"llm_rollout_drain_command": "lb-ctl drain"},
     'llm_rollout_drain_command must be an argv list of one-line strings (empty for none); got "lb-ctl drain".'),
    ({"llm_rollout_undrain_command": ["lb-ctl", "up\nrm -rf /"]}, "llm_rollout_undrain_command must be an argv list"),
    ({"llm_rollout_drain_url": "http://admin:secret@lb.example/drain"},
     "llm_rollout_drain_url must be empty, or an http(s) URL without spaces, line breaks or user@ info"),
    ({"llm_rollout_undrain_url": "lb.example/undrain"}, "llm_rollout_undrain_url must be empty, or an http(s) URL"),
    ({"llm_rollout_drain_wait_s": 7200}, "llm_rollout_drain_wait_s must be a whole number of seconds from 0 to 3600"),
    ({"llm_rollout_run": "../x"}, "llm_rollout_run must be a run id of letters, digits"),
]

# Every case: (host, role, variables, message). The rollout cases run apart: their test also asks that no report
# directory was written, which the run's other roles are free to do.
CHECK_CASES = ([(f"smoke-{i}", "llm_smoke", extra, message) for i, (extra, message) in enumerate(SMOKE)]
               + [(f"throughput-{i}", "llm_throughput", extra, message)
                  for i, (extra, message) in enumerate(THROUGHPUT)]
               + [(f"key-{role}-{i}", role, {f"{role}_api_key": key}, KEY_MESSAGE.format(f"{role}_api_key"))
                  for role in ("llm_smoke", "llm_throughput") for i, key in enumerate(KEYS)]
               + [("shared-api-key", "llm_smoke", {"llm_stack_api_key": "shared-key\n"},
                   KEY_MESSAGE.format("llm_stack_api_key"))])
ROLLOUT_CASES = [(f"rollout-{i}", "llm_throughput" if "llm_throughput_run" in extra else "llm_rollout",
                  {"llm_rollout_run": "inputs-test", **extra}, message)
                 for i, (extra, message) in enumerate(THROUGHPUT_RUN + ROLLOUT)]


def run_all(work: Path, cases: list[tuple[str, str, dict, str]]) -> tuple[Cases, dict[str, list[str]]]:
    with recorders(len(cases)) as servers:
        runs = run_cases(work, "check_inputs.yml",
                         {host: case_vars(server, role, **extra)
                          for (host, role, extra, _), server in zip(cases, servers, strict=True)})
        return runs, {host: server.seen for (host, *_), server in zip(cases, servers, strict=True)}  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def check_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, dict[str, list[str]]]:
    return run_all(tmp_path_factory.mktemp("check-inputs"), CHECK_CASES)


@pytest.fixture(scope="module")
def rollout_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, dict[str, list[str]], Path]:
    work = tmp_path_factory.mktemp("rollout-inputs")
    return (*run_all(work, ROLLOUT_CASES), work)


@pytest.mark.parametrize(("host", "role", "extra", "message"), CHECK_CASES, ids=[case[0] for case in CHECK_CASES])
def test_bad_check_inputs_fail_before_any_request(check_runs: tuple[Cases, dict[str, list[str]]], host: str,
                                                  role: str, extra: dict, message: str) -> None:
    runs, seen = check_runs
    assert host in runs.failed, runs.hosts[host][-3000:]
    assert message in runs.hosts[host], runs.hosts[host][-3000:]
    assert seen[host] == []


@pytest.mark.parametrize("fragment", ["check-key", "check key", "k" * 513, "shared-key"])
def test_a_bad_api_key_is_never_printed(check_runs: tuple[Cases, dict[str, list[str]]], fragment: str) -> None:
    # Anywhere in the run: a key given to one case must not show in another's lines either.
    runs, _ = check_runs
    assert fragment not in runs.output


@pytest.mark.parametrize(("host", "role", "extra", "message"), ROLLOUT_CASES, ids=[case[0] for case in ROLLOUT_CASES])
def test_bad_rollout_inputs_fail_before_anything_changes(rollout_runs: tuple[Cases, dict[str, list[str]], Path],
                                                         host: str, role: str, extra: dict, message: str) -> None:
    runs, seen, work = rollout_runs
    assert host in runs.failed, runs.hosts[host][-3000:]
    assert message in runs.hosts[host], runs.hosts[host][-3000:]
    assert seen[host] == []
    # No row, table or report was written (and the secret in a refused URL is not the point of a message).
    assert not (work / "reports").exists()
