"""llm_host_state on a temporary tree: a record, then the check that finds the host unchanged or names what differs
(a file edited, its mode changed, a container stopped or recreated, a package moved off its branch, a service not
answering, another run since, an old record, another desired state). Packages and containers come from stand-ins for
dpkg and Docker (their parsing has its own tests below); files, the lock's files and HTTP are real."""
from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.llm_endpoints.core.plugins.module_utils import host_state as hs
from ansible_collections.llm_endpoints.core.plugins.modules import llm_host_state as mod

PACKAGES = {"nvidia-open": "580.95.05-1", "nvidia-smi": "580.95.05-1", "docker.io": "20.10.24", "bash": "5.2"}
CONTAINERS = {"llm-stack-engine-1": {"project": "llm-stack", "service": "engine", "config_hash": "aa", "image": "sha:1",
                                     "running": True}}


class Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(Answer.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Answer.status = 200
    yield f"http://127.0.0.1:{httpd.server_address[1]}/health"
    httpd.shutdown()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A managed tree, a lock directory, and stand-ins for the package database and Docker."""
    stack = tmp_path / "opt" / "llm-stack"
    (stack / "apps").mkdir(parents=True)
    (stack / "docker-compose.yml").write_text("services: {}\n")
    (stack / "apps" / "keys.json").write_text("{}\n")
    (stack / "apps" / "__pycache__").mkdir()
    state = {"packages": dict(PACKAGES), "containers": json.loads(json.dumps(CONTAINERS))}
    monkeypatch.setattr(hs, "installed_packages", lambda: dict(state["packages"]))
    monkeypatch.setattr(hs, "observe_containers", lambda docker="docker": json.loads(json.dumps(state["containers"])))
    lock = tmp_path / "var" / "run.lock"
    lock.parent.mkdir(parents=True)
    return {"stack": stack, "lock": lock, "state": state, "record": tmp_path / "var" / "state.json"}


def params(host: dict[str, Any], url: str, **extra: Any) -> dict[str, Any]:
    return {"path": str(host["record"]), "digest": "d1", "max_age_s": 86400, "lock_path": str(host["lock"]),
            "files": [str(host["stack"]), str(host["stack"].parent / "missing.conf")],
            "packages": ["*nvidia*", "docker*"], "containers": True, "health_urls": [url], "sysfs_root": "/sys",
            "facts": {"preflight_gpu_mode": "none"}, **extra}


def take_lock(host: dict[str, Any], pid: int) -> None:
    """What llm_host_lock writes when a run takes the lock: the lock and its .last copy."""
    record = {"controller": "ctl", "pid": pid, "pid_start": 1, "user": "root", "label": "site.yml",
              "started": "x", "started_epoch": 1000 + pid}
    host["lock"].write_text(json.dumps(record))
    Path(f"{host['lock']}.last").write_text(json.dumps(record))


def recorded(host: dict[str, Any], url: str) -> dict[str, Any]:
    """A run took the lock, recorded, and released the lock."""
    take_lock(host, 1)
    mod.record(params(host, url), check_mode=False)
    host["lock"].unlink()
    return json.loads(host["record"].read_text())


def check(host: dict[str, Any], url: str, **extra: Any) -> dict[str, Any]:
    return mod.check(params(host, url, **extra))


def test_a_record_then_an_unchanged_host(host: dict[str, Any], server: str) -> None:
    doc = recorded(host, server)
    assert (host["record"].stat().st_mode & 0o777) == 0o600
    assert doc["observed"]["packages"] == {"docker.io": "20.10.24", "nvidia-open": "580.95.05-1",
                                           "nvidia-smi": "580.95.05-1"}
    assert doc["observed"]["files"][str(host["stack"].parent / "missing.conf")] == "absent"
    assert not any("__pycache__" in path for path in doc["observed"]["files"])
    assert doc["lock"]["pid"] == 1
    result = check(host, server)
    assert result == {"unchanged": True, "reasons": [], "recorded_at": doc["recorded_at"],
                      "restored": {"preflight_gpu_mode": "none"}}


@pytest.mark.parametrize(("drift", "reason"), [
    (lambda h: (h["stack"] / "docker-compose.yml").write_text("services: {edited: {}}\n"),
     "file {stack}/docker-compose.yml changed"),
    (lambda h: (h["stack"] / "apps" / "keys.json").chmod(0o666),
     "file {stack}/apps/keys.json changed type, mode or owner"),
    (lambda h: (h["stack"] / "apps" / "keys.json").unlink(), "file {stack}/apps/keys.json is gone"),
    (lambda h: (h["stack"] / "apps" / "new.env").write_text("X=1\n"), "file {stack}/apps/new.env is new"),
    (lambda h: h["state"]["containers"]["llm-stack-engine-1"].update(running=False),
     "container llm-stack-engine-1 is not running"),
    (lambda h: h["state"]["containers"]["llm-stack-engine-1"].update(config_hash="bb"),
     "container llm-stack-engine-1 was recreated with another configuration or image"),
    (lambda h: h["state"]["containers"].clear(), "container llm-stack-engine-1 is gone"),
    (lambda h: h["state"]["packages"].update({"nvidia-smi": "575.64.05-1"}),
     "package nvidia-smi: 580.95.05-1 -> 575.64.05-1"),
    (lambda h: h["state"]["packages"].pop("docker.io"), "package docker.io: 20.10.24 -> not installed"),
    (lambda h: take_lock(h, 2), "a run lock is held ({lock})"),
], ids=["file-edited", "file-mode", "file-removed", "file-added", "container-stopped", "container-recreated",
        "container-removed", "package-off-branch", "package-removed", "lock-held"])
def test_drift_is_named(host: dict[str, Any], server: str, drift: Any, reason: str) -> None:
    recorded(host, server)
    drift(host)
    result = check(host, server)
    assert not result["unchanged"] and result["restored"] == {}
    assert reason.format(stack=host["stack"], lock=host["lock"]) in result["reasons"], result["reasons"]


def test_an_unrelated_package_changing_is_not_drift(host: dict[str, Any], server: str) -> None:
    recorded(host, server)
    host["state"]["packages"]["bash"] = "5.3"
    assert check(host, server)["unchanged"]


def test_another_run_since_the_record_is_seen_after_its_release(host: dict[str, Any], server: str) -> None:
    recorded(host, server)
    take_lock(host, 2)
    host["lock"].unlink()
    assert check(host, server)["reasons"] == ["another run took the host's lock since the record"]


def test_a_service_not_answering(host: dict[str, Any], server: str) -> None:
    recorded(host, server)
    Answer.status = 503
    assert check(host, server)["reasons"] == [f"{server} does not answer: status 503"]


def test_a_record_is_not_written_while_a_service_does_not_answer(host: dict[str, Any], server: str) -> None:
    Answer.status = 500
    with pytest.raises(mod.NotRecorded, match=".* does not answer: status 500"):
        mod.record(params(host, server), check_mode=False)
    assert not host["record"].exists()


def test_another_desired_state_an_old_record_and_none(host: dict[str, Any], server: str) -> None:
    assert check(host, server)["reasons"] == ["no record of a successful run"]
    recorded(host, server)
    assert check(host, server, digest="d2")["reasons"] == [
        "the desired state changed (inventory, variables, collection or facts)"]
    doc = json.loads(host["record"].read_text())
    host["record"].write_text(json.dumps({**doc, "recorded_epoch": doc["recorded_epoch"] - 100}))
    reasons = check(host, server, max_age_s=50)["reasons"]
    assert len(reasons) == 1 and reasons[0].startswith("the record is 10") and reasons[0].endswith(
        " s old, more than max_age_s 50"), reasons


def test_check_mode_records_nothing(host: dict[str, Any], server: str) -> None:
    assert "recorded" in mod.record(params(host, server), check_mode=True)["msg"]
    assert not host["record"].exists()


def test_many_reasons_are_cut_short(host: dict[str, Any], server: str) -> None:
    recorded(host, server)
    for index in range(25):
        (host["stack"] / f"extra-{index}.yml").write_text("x\n")
    reasons = check(host, server)["reasons"]
    assert len(reasons) == hs.REASONS_SHOWN + 1 and reasons[-1] == "and 5 more"


@pytest.mark.parametrize(("extra", "says"), [
    ({"path": "relative/state.json"}, "path must be an absolute path"),
    ({"files": ["etc/x"]}, "files must hold absolute paths"),
    ({"health_urls": ["https://x/health"]}, "health_urls must hold http:// URLs"),
    ({"max_age_s": -1}, "max_age_s must be a whole number from 0 to 2592000"),
    ({"digest": "not hex!"}, "digest must be 1 to 128 letters and digits"),
])
def test_bad_options_are_named(host: dict[str, Any], extra: dict[str, Any], says: str) -> None:
    assert any(says in problem for problem in mod.problems(params(host, "http://127.0.0.1:1/", **extra)))


def test_package_listings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    dpkg = "ii \tnvidia-smi\t580.95.05-1\nrc \tnvidia-smi-575\t575.1\nii \tbash\t5.2\n"
    monkeypatch.setattr(os.path, "exists", lambda path: path == "/usr/bin/dpkg-query")
    monkeypatch.setattr(hs, "_run", lambda argv: dpkg)
    assert hs.installed_packages() == {"nvidia-smi": "580.95.05-1", "bash": "5.2"}
    rpm = "kmod-nvidia\t0:580.95.05-1.fc42.x86_64\nkernel\t0:6.1-1.x86_64\nkernel\t0:6.2-1.x86_64\n"
    monkeypatch.setattr(os.path, "exists", lambda path: path == "/usr/bin/rpm")
    monkeypatch.setattr(hs, "_run", lambda argv: rpm)
    assert hs.installed_packages() == {"kmod-nvidia": "0:580.95.05-1.fc42.x86_64",
                                       "kernel": "0:6.1-1.x86_64,0:6.2-1.x86_64"}


def test_compose_containers_are_read_from_docker_inspect(monkeypatch: pytest.MonkeyPatch) -> None:
    inspect = [{"Name": "/llm-stack-engine-1", "Image": "sha256:1", "State": {"Running": False},
                "Config": {"Labels": {"com.docker.compose.project": "llm-stack", "com.docker.compose.service": "engine",
                                      "com.docker.compose.config-hash": "aa"}}}]
    answers = {"ps": "abc\n", "inspect": json.dumps(inspect)}
    monkeypatch.setattr(hs, "_run", lambda argv: answers[argv[1]])
    assert hs.observe_containers() == {"llm-stack-engine-1": {"project": "llm-stack", "service": "engine",
                                                              "config_hash": "aa", "image": "sha256:1",
                                                              "running": False}}
    answers["ps"] = ""
    assert hs.observe_containers() == {}


def test_nvidia_devices_are_read_from_sysfs(tmp_path: Path) -> None:
    for address, vendor, device in (("0000:01:00.0", "0x10de", "0x2b85"), ("0000:00:02.0", "0x8086", "0x46a6")):
        (tmp_path / "bus/pci/devices" / address).mkdir(parents=True)
        (tmp_path / "bus/pci/devices" / address / "vendor").write_text(vendor + "\n")
        (tmp_path / "bus/pci/devices" / address / "device").write_text(device + "\n")
    assert hs.nvidia_devices(str(tmp_path)) == ["0000:01:00.0 0x2b85"]
    assert hs.nvidia_devices(str(tmp_path / "none")) == []


def test_an_unreadable_record_or_lock_copy_means_changed(host: dict[str, Any], server: str) -> None:
    recorded(host, server)
    Path(f"{host['lock']}.last").write_text("{not json")
    assert check(host, server)["reasons"] == ["another run took the host's lock since the record"]
    host["record"].write_text("{not json")
    reasons = check(host, server)["reasons"]
    assert len(reasons) == 1 and reasons[0].startswith("the record could not be read"), reasons


def test_a_run_without_a_lock_records_none(host: dict[str, Any], server: str) -> None:
    mod.record(params(host, server, lock_path=""), check_mode=False)
    assert json.loads(host["record"].read_text())["lock"] is None
    take_lock(host, 3)  # not compared: the record names no lock (site.yml always holds one)
    assert check(host, server)["unchanged"]


@pytest.mark.skipif(not os.path.exists("/usr/bin/dpkg-query"), reason="a Debian host's package database")
def test_this_machines_own_package_database_is_read() -> None:
    import subprocess
    packages = hs.installed_packages()
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "bash"], capture_output=True, text=True,
                             check=True).stdout
    assert packages["bash"] == version
    assert hs.observe_packages(["bas?"], packages) == {"bash": version}


@pytest.mark.parametrize(("doc", "says"), [
    ({"format": 1, "digest": "d1", "recorded_epoch": None}, "s old, more than max_age_s"),
    ({"format": 1, "digest": "d1", "recorded_epoch": "now", "observed": [], "spec": []}, "could not be judged"),
    ({"format": 1, "digest": "d1", "recorded_epoch": 4102444800, "observed": {}, "spec": {}}, "dated in the future"),
], ids=["no-date", "malformed", "future"])
def test_a_record_that_cannot_be_trusted_means_changed(host: dict[str, Any], server: str, doc: dict, says: str) -> None:
    host["record"].write_text(json.dumps({**doc, "recorded_epoch": int(time.time())} if doc["recorded_epoch"] == "now"
                                         else doc))
    reasons = check(host, server)["reasons"]
    assert any(says in reason for reason in reasons), reasons


def test_a_root_that_is_a_link_is_walked(tmp_path: Path) -> None:
    (tmp_path / "disk" / "stack").mkdir(parents=True)
    (tmp_path / "disk" / "stack" / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "llm-stack").symlink_to(tmp_path / "disk" / "stack")
    found = hs.observe_files([str(tmp_path / "opt" / "llm-stack")])
    assert found[str(tmp_path / "opt" / "llm-stack")].startswith("link ")
    assert str(tmp_path / "disk" / "stack" / "docker-compose.yml") in found
