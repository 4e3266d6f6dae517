"""The front door as the role configures it: the configuration written by role front_door (entry point config) for
two real backends on this machine (each in front of its own synthetic SSE engine), checked by haproxy -c, then run
by a real HAProxy (Debian's package, scripts/ensure-haproxy.sh) and reached over real TLS with a CA made here."""
from __future__ import annotations

import contextlib
import csv
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from backend_fixture import ALICE, METRICS_TOKEN, auth, poll, running_backend
from front_door_fixture import config_vars, haproxy_wrapper, make_tls
from llm_fixture import Cases, free_port, run_cases, run_playbook
from sse_server import Script, serve


@dataclass
class FrontDoor:
    work: Path
    https: str
    http: str
    ca: Path
    socket: Path
    config: Path
    backends: dict[str, object]
    # Each host's synthetic engine (its handler's script can be changed between requests).
    engines: dict[str, object]
    # Runs the role's config entry point again, with these servers besides the two (Ansible's Run).
    render: Callable[..., object]
    # HAProxy's own Prometheus metrics (the role's metrics frontend).
    metrics: str = ""

    def admin(self, command: str) -> str:
        """One command to HAProxy's runtime API (the role's admin socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def status(self, backend: str = "api") -> dict[str, str]:
        rows = csv.DictReader(self.admin("show stat").lstrip("# ").splitlines())
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.https, verify=ssl.create_default_context(cafile=str(self.ca)), timeout=10)


@pytest.fixture(scope="module")
def front_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoor]:
    work = tmp_path_factory.mktemp("front-door")
    bindir = haproxy_wrapper(work)
    ca, _, _ = make_tls(work)
    engines, backends = {}, {}
    stack = []
    try:
        for name in ("host-a", "host-b"):
            server, url = serve(Script(chunks=5, gap_s=0.01))
            engines[name] = server
            (work / name).mkdir()
            ctx = running_backend(work / name, url)
            backends[name] = ctx.__enter__()
            stack.append(ctx)
        https_port, http_port, metrics_port = free_port(), free_port(), free_port()
        servers = [{"name": name, "port": int(backend.url.rsplit(":", 1)[1])} for name, backend in backends.items()]
        env = {"PATH": f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}

        def render(extra_servers: list[dict] = ()) -> object:
            return run_playbook(work / f"render-{time.monotonic_ns()}", "front_door_config.yml",
                                config_vars(work, https_port, http_port, servers + list(extra_servers), metrics_port),
                                envvars=env)

        run = render()
        assert run.rc == 0, run.output[-3000:]
        log = work / "haproxy.log"
        with log.open("w") as out:
            proc = subprocess.Popen([str(bindir / "haproxy"), "-db", "-f", str(work / "haproxy.cfg")],
                                    stdout=out, stderr=subprocess.STDOUT)
        door = FrontDoor(work, f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", ca,
                         work / "run/admin.sock", work / "haproxy.cfg", backends, engines, render,
                         f"http://127.0.0.1:{metrics_port}/metrics")
        try:
            poll(lambda: door.socket.exists() and set(door.status().values()) == {"UP"}, 20,
                 f"HAProxy up with both servers UP ({log.read_text()[-2000:] if log.exists() else ''})")
            yield door
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        for ctx in stack:
            ctx.__exit__(None, None, None)
        for server in engines.values():
            server.shutdown()


def served_by(door: FrontDoor, before: dict[str, int], settled: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """Requests each backend logged since `before` (its access-log line count then), once `settled` holds: a backend
    writes a streamed request's line after the stream's end, which the client may read first."""
    def now() -> dict[str, int]:
        return {name: len(backend.access_lines()) - before.get(name, 0) for name, backend in door.backends.items()}
    with contextlib.suppress(AssertionError):
        poll(lambda: settled(now()), 5, "the access log lines")
    return now()


def counts(door: FrontDoor) -> dict[str, int]:
    return {name: len(backend.access_lines()) for name, backend in door.backends.items()}


def test_the_configuration_comes_from_the_inventory_and_a_second_run_changes_nothing(front_door: FrontDoor) -> None:
    config = front_door.config.read_text()
    for name, backend in front_door.backends.items():
        assert f"server {name} 127.0.0.1:{backend.url.rsplit(':', 1)[1]} check" in config
    assert "balance leastconn" in config and "retry-on conn-failure" in config
    assert "ssl-min-ver TLSv1.2" in config and "http-check send meth GET uri /health" in config
    pem = front_door.work / "certs/front-door.pem"
    assert pem.stat().st_mode & 0o777 == 0o600 and (front_door.work / "certs").stat().st_mode & 0o777 == 0o700
    again = front_door.render()
    assert again.rc == 0 and "changed=0" in again.output, again.output[-3000:]
    assert "PRIVATE KEY" not in again.output


def test_a_host_added_to_the_group_is_a_server_after_the_next_run(front_door: FrontDoor) -> None:
    before = front_door.config.read_text()
    try:
        added = front_door.render([{"name": "host-c", "port": 9}])
        assert added.rc == 0 and "changed=1" in added.output, added.output[-3000:]
        assert "server host-c 127.0.0.1:9 check" in front_door.config.read_text()
    finally:
        removed = front_door.render()
    assert removed.rc == 0 and front_door.config.read_text() == before


def test_https_with_the_ca_reaches_both_hosts_and_metrics_stay_inside(front_door: FrontDoor) -> None:
    before = counts(front_door)
    with front_door.client() as client:
        for _ in range(10):
            response = client.get("/v1/models", headers=auth(ALICE))
            assert response.status_code == 200 and response.json()["data"][0]["id"] == "scripted-model"
        assert client.get("/metrics").status_code == 404
        assert client.get("/health").status_code == 200
    served = served_by(front_door, before, lambda s: sum(s.values()) >= 10)
    assert sum(served.values()) == 10 and all(count > 0 for count in served.values()), served


def test_haproxy_s_own_metrics_show_each_server_s_state_and_serve_nothing_else(front_door: FrontDoor) -> None:
    text = httpx.get(front_door.metrics).text
    for name in front_door.backends:
        # Metric and labels as HAProxy 2.6's built-in exporter names them (what the monitoring role's alert reads).
        assert f'haproxy_server_status{{proxy="api",server="{name}",state="UP"}} 1' in text
        assert f'haproxy_server_status{{proxy="api",server="{name}",state="DOWN"}} 0' in text
    assert httpx.get(front_door.metrics.replace("/metrics", "/v1/models")).status_code == 404


def test_a_stream_passes_through_whole(front_door: FrontDoor) -> None:
    body = {"model": "scripted-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with front_door.client() as client, client.stream("POST", "/v1/chat/completions", headers=auth(ALICE),
                                                       json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        text = response.read()
    assert text.count(b"data: ") == 5 + 2 and text.endswith(b"data: [DONE]\n\n")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_plain_http_is_redirected_and_old_tls_refused(front_door: FrontDoor) -> None:
    response = httpx.get(front_door.http + "/v1/models?x=1")
    assert response.status_code == 308
    assert response.headers["location"] == f"https://127.0.0.1:{front_door.http.rsplit(':', 1)[1]}/v1/models?x=1"
    port = int(front_door.https.rsplit(":", 1)[1])
    for version, expected in ((ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
        ctx = ssl.create_default_context(cafile=str(front_door.ca))
        ctx.maximum_version = version
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == expected
    # A client of TLS 1.0 and 1.1 only: it completes a handshake with a server that allows them (so the refusal
    # below is the front door's, not the client's own), and the front door refuses it.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cafile=str(front_door.ca))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    with old_tls_server(front_door.work) as old_port, socket.create_connection(("127.0.0.1", old_port)) as raw, \
            old.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.1"
    with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="127.0.0.1")


@contextlib.contextmanager
def old_tls_server(work: Path) -> Iterator[int]:
    """A TLS server on this machine that still takes TLS 1.0 and 1.1, with the front door's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(work / "cert.pem", work / "key.pem")
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=5)


def rollout_step(door: FrontDoor, step: str, host: str = "host-a") -> object:
    """llm_rollout's entry point drain or undrain for `host`, with this front door as the group llm_edge."""
    port = int(door.backends[host].url.rsplit(":", 1)[1])
    return run_playbook(door.work / f"rollout-{step}-{time.monotonic_ns()}", "rollout_drain.yml",
                        {"rollout_test_step": step, "rollout_test_host": host, "rollout_test_socket": str(door.socket),
                         "rollout_test_backend_port": port, "rollout_test_metrics_token": METRICS_TOKEN,
                         "llm_rollout_drain_timeout_s": 30})


def test_a_rollout_drains_a_host_waits_for_its_stream_and_puts_it_back(front_door: FrontDoor) -> None:
    """llm_rollout's drain (as a rollout runs it before a switch) while host-a serves a stream of about 10 s, longer
    than the drain's own run: host-a is drained on the front door through its runtime API, new requests all go to
    host-b, and the drain is not done before host-a's stream has ended (its backend's in-flight gauge). Then undrain:
    host-a takes requests again."""
    script = front_door.engines["host-a"].RequestHandlerClass.script
    script.chunks, script.gap_s = 25, 0.4
    ended: list[float] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", front_door.backends["host-a"].url + "/v1/chat/completions", headers=auth(ALICE),
                          json={"model": "scripted-model", "messages": [{"role": "user", "content": "hi"}],
                                "stream": True}, timeout=30) as response:
            for _ in response.iter_bytes():
                started.set()
        ended.append(time.monotonic())
    thread = threading.Thread(target=stream)
    try:
        thread.start()
        assert started.wait(10)
        run = rollout_step(front_door, "drain")
        drained_at = time.monotonic()
        thread.join(30)
        assert run.rc == 0, run.output[-3000:]
        assert ended and ended[0] <= drained_at, "the drain ended before the host's stream"
        # It ended because the stream did (the gauge read 0), not because its timeout (30 s) passed.
        assert drained_at - ended[0] < 8, f"the drain ended {drained_at - ended[0]:.1f} s after the stream"
        assert "The backend's in-flight gauge is read until it is 0" in run.output and "RETRYING" in run.output
        assert "switching anyway" not in run.output
        assert front_door.status()["host-a"] == "DRAIN"
        before = counts(front_door)
        with front_door.client() as client:
            assert all(client.get("/v1/models", headers=auth(ALICE)).status_code == 200 for _ in range(8))
        assert served_by(front_door, before, lambda s: sum(s.values()) >= 8) == {"host-a": 0, "host-b": 8}
    finally:
        script.chunks, script.gap_s = 5, 0.01
        thread.join(30)
    run = rollout_step(front_door, "undrain")
    assert run.rc == 0, run.output[-3000:]
    assert front_door.status()["host-a"] == "UP"
    before = counts(front_door)
    with front_door.client() as client:
        assert all(client.get("/v1/models", headers=auth(ALICE)).status_code == 200 for _ in range(8))
    assert served_by(front_door, before, lambda s: sum(s.values()) >= 8)["host-a"] > 0
    assert METRICS_TOKEN not in run.output


def test_a_host_whose_engine_fails_answers_503_and_the_request_is_served_by_the_other(front_door: FrontDoor) -> None:
    """host-a's engine answers 500 to every completion (its /health still 200, so host-a stays in rotation): its
    backend gives no answer but a 503, which the front door retries on host-b; no client sees it."""
    script = front_door.engines["host-a"].RequestHandlerClass.script
    before = counts(front_door)
    body = {"model": "scripted-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        script.status = 500
        with front_door.client() as client:
            replies = [client.post("/v1/chat/completions", headers=auth(ALICE), json=body) for _ in range(8)]
    finally:
        script.status = 200
    assert [r.status_code for r in replies] == [200] * 8, [r.text[:200] for r in replies if r.status_code != 200]
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in replies)
    served = served_by(front_door, before, lambda s: s["host-b"] >= 8)
    # leastconn sent some to host-a first (each logged its 503 there); host-b answered all eight.
    assert served["host-a"] > 0 and served["host-b"] == 8, served
    assert front_door.status()["host-a"] == "UP"


def driver_reboot(door: FrontDoor, work: Path, serving: bool, at_reboot: Callable[[], None]) -> tuple[object, dict]:
    """nvidia_driver's reboot of host-a (tests/playbooks/driver_reboot.yml; the reboot SIMULATED): at_reboot runs
    while the host "reboots" (the simulated reboot waits for its marker to go); returns the run and what the front
    door said of host-a at that moment."""
    stack = work / "llm-stack"
    (stack / "releases" / "r1").mkdir(parents=True)
    if serving:
        (stack / "current").symlink_to("releases/r1")
    marker = work / "rebooting"
    port = int(door.backends["host-a"].url.rsplit(":", 1)[1])
    done: dict = {}
    thread = threading.Thread(target=lambda: done.setdefault("run", run_playbook(
        work / "run", "driver_reboot.yml",
        {"rollout_test_host": "host-a", "rollout_test_socket": str(door.socket), "rollout_test_backend_port": port,
         "rollout_test_metrics_token": METRICS_TOKEN, "rollout_test_stack_dir": str(stack),
         "rollout_test_marker": str(marker), "llm_rollout_drain_timeout_s": 30})))
    thread.start()
    try:
        poll(lambda: marker.exists() or not thread.is_alive(), 60, "the simulated reboot")
        seen = door.status()
        at_reboot()
    finally:
        marker.unlink(missing_ok=True)
        thread.join(120)
    return done["run"], seen


def test_a_driver_reboot_drains_a_serving_host_and_the_health_checks_put_it_back(front_door: FrontDoor,
                                                                                tmp_path: Path) -> None:
    """The driver play's reboot of a host that serves (a current release): drained on the front door before the
    reboot; put back after it without waiting for it to answer (an engine loading its model after a reboot may take
    minutes), and in rotation again once its health check passes, with no further run. The reboot is SIMULATED; the
    drain and the undrain are the rollout's, for real. A host being provisioned (no release) reboots undrained."""
    engine = front_door.engines["host-a"].RequestHandlerClass.script

    def engine_loading() -> None:
        # As after a real reboot: the host's engine answers /health 503 until its model is loaded.
        engine.health_status = 503
        poll(lambda: front_door.status()["host-a"] == "DOWN", 15, "host-a DOWN on the front door")

    try:
        run, seen = driver_reboot(front_door, tmp_path / "serving", True, engine_loading)
        assert run.rc == 0, run.output[-3000:]
        assert seen["host-a"] == "DRAIN" and seen["host-b"] == "UP", seen
        # Put back though still DOWN: the undrain did not wait for it, and HAProxy's admin state is cleared.
        assert front_door.status()["host-a"] == "DOWN"
        # `show servers state`: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
        admin = [row.split()[6] for row in front_door.admin("show servers state api").splitlines()
                 if not row.startswith("#") and len(row.split()) > 6 and row.split()[3] == "host-a"]
        assert admin == ["0"], admin
        assert METRICS_TOKEN not in run.output
    finally:
        engine.health_status = 200
    poll(lambda: front_door.status()["host-a"] == "UP", 15, "host-a UP again once its engine answers")
    run, seen = driver_reboot(front_door, tmp_path / "first-provision", False, lambda: None)
    assert run.rc == 0, run.output[-3000:]
    assert seen == {"host-a": "UP", "host-b": "UP"}
    # The drain's own tasks never ran (its include was skipped).
    assert "every front door are set (drain)" not in run.output and "in-flight gauge" not in run.output


def test_a_failed_host_is_out_within_10_s_and_no_request_fails(front_door: FrontDoor) -> None:
    """host-a's backend stops answering (its process stopped): requests that find its port closed are sent to
    host-b (they never reached a host), and the health checks take host-a out."""
    backend = front_door.backends["host-a"]
    backend.proc.terminate()
    backend.proc.wait(timeout=15)
    stopped = time.monotonic()
    failures = 0
    with front_door.client() as client:
        while front_door.status()["host-a"] != "DOWN":
            assert time.monotonic() - stopped < 10, front_door.status()
            failures += client.get("/v1/models", headers=auth(ALICE)).status_code != 200
            time.sleep(0.1)
        out_after = time.monotonic() - stopped
        assert all(client.get("/v1/models", headers=auth(ALICE)).status_code == 200 for _ in range(5))
    assert failures == 0
    print(f"host-a out of rotation {out_after:.1f} s after its backend stopped; 0 failed requests")


SECRET_KEY_TEXT = "not-a-key-but-a-secret-0123456789"
BAD_INPUTS = [
    ({"front_door_backend_group": "no_such_group"},
     'front_door_backend_group must be an inventory group with at least one host; got "no_such_group".'),
    ({"front_door_https_port": 70000}, "front_door_https_port must be a port from 1 to 65535; got 70000."),
    ({"front_door_http_port": 8443, "front_door_https_port": 8443},
     "front_door_http_port must be 0 (no plain port) or a port from 1 to 65535 other than front_door_https_port"),
    ({"front_door_check_interval_s": 0}, "front_door_check_interval_s must be a whole number of seconds from 1 to 60"),
    ({"front_door_bind_address": "front.example"}, "front_door_bind_address must be an IPv4 address"),
    ({"front_door_admin_socket": "run/admin.sock"}, "front_door_admin_socket must be an absolute path"),
    ({"front_door_user": "Root!"}, 'front_door_user must be a user name, or "" (root); got "Root!".'),
    ({"front_door_balance": "random"}, "value of front_door_balance must be one of: leastconn, roundrobin"),
    ({"front_door_tls_certificate_file": "/nonexistent/cert.pem"},
     "front_door_tls_certificate_file names /nonexistent/cert.pem, which is not a file on the control node."),
    ({"front_door_tls_certificate": "hello", "front_door_tls_certificate_file": ""},
     'front_door_tls_certificate (or front_door_tls_certificate_file) must be a PEM certificate'),
    ({"front_door_tls_private_key": SECRET_KEY_TEXT, "front_door_tls_private_key_file": ""},
     "the key is set"),
    ({"front_door_server_address": "bad address"},
     "front_door_server_address of host case-11 (else its llm_internal_address) must be an IPv4 address"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, Path]:
    work = tmp_path_factory.mktemp("front-door-bad")
    make_tls(work)
    cases = {}
    for index, (extra, _) in enumerate(BAD_INPUTS):
        case = work / f"case-{index}"
        # Every case host is a server of every case's front door: each listens on 127.0.0.1 (its internal address).
        cases[f"case-{index}"] = {**config_vars(case, 8443, 8080, []), "front_door_backend_group": "llm_hosts",
                                  "llm_internal_address": "127.0.0.1",
                                  "front_door_tls_certificate_file": str(work / "cert.pem"),
                                  "front_door_tls_private_key_file": str(work / "key.pem"), **extra}
        cases[f"case-{index}"].pop("front_door_test_servers")
    return run_cases(work, "front_door_cases.yml", cases), work


@pytest.mark.parametrize(("index", "extra", "message"), [(i, *case) for i, case in enumerate(BAD_INPUTS)])
def test_a_bad_input_fails_naming_it_before_anything_is_written(bad_input_runs: tuple[Cases, Path], index: int,
                                                                extra: dict, message: str) -> None:
    cases, work = bad_input_runs
    host = f"case-{index}"
    assert host in cases.failed, cases.hosts[host][-2000:]
    assert message in cases.hosts[host], cases.hosts[host][-2000:]
    assert not (work / host).exists()
    assert SECRET_KEY_TEXT not in cases.output
