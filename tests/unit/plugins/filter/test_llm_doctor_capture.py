"""The doctor's judgement against what it captured for real on an H200 host (Ubuntu 24.04, open driver 580.159.04
installed before us, no Docker, no engine; tests/fixtures/doctor/h200-driver580-preinstalled, from
tests/device/run.sh). The raw captures are judged again here: the parsers and the verdicts must hold on them."""
from __future__ import annotations

import json

import pytest
from ansible_collections.llm_endpoints.core.plugins.filter import llm_doctor
from helpers import ROOT

CAPTURE = ROOT / "tests/fixtures/doctor/h200-driver580-preinstalled"


@pytest.fixture(scope="module")
def captured() -> dict:
    return json.loads((CAPTURE / "doctor.json").read_text())


def test_judging_the_raw_capture_again_gives_what_the_host_printed(captured: dict) -> None:
    [raw] = captured["raw"]
    assert llm_doctor.findings(raw) == captured["hosts"][0]


def test_the_real_gpu_and_driver_are_read(captured: dict) -> None:
    host = llm_doctor.findings(captured["raw"][0])
    checks = {f["check"]: f for f in host["findings"]}
    assert host["gpus_pci"] == [{"pci_address": "0000:00:06.0", "device_id": "2335", "name": "H200",
                                 "architecture": "hopper"}]
    assert [g["name"] for g in host["gpus"]] == ["NVIDIA H200"] and host["gpus"][0]["memory_total"] == 143771
    assert host["driver"]["version"] == "580.159.04" and host["driver"]["branch"] == "580"
    assert host["driver"]["flavor"] == "open" and host["driver"]["cuda_version"] == "13.0"
    assert checks["driver"]["status"] == "ok"
    assert checks["gpus_driver"]["status"] == "ok"


def test_what_that_host_lacks_is_named(captured: dict) -> None:
    checks = {f["check"]: f for f in llm_doctor.findings(captured["raw"][0])["findings"]}
    # The driver came with the machine image, not from packages: nothing holds its branch.
    assert checks["branch_lock"]["status"] == "warn" and "no package of branch 580" in checks["branch_lock"]["detail"]
    # No Docker and no engine there: the host cannot serve, and the doctor says so (the playbook exited 2).
    assert checks["container_gpu"]["status"] == "fail"
    assert checks["engine"]["status"] == "fail" and "Connection refused" in checks["engine"]["detail"]
    assert "doctor.yml rc=2" in (CAPTURE / "doctor.log").read_text()


def test_the_doctor_changed_nothing_there_even_for_real() -> None:
    for log in ("doctor.log", "doctor-check.log"):
        assert "device                     : ok=25   changed=0" in (CAPTURE / log).read_text(), log


def test_a_driver_too_old_for_the_engine_fails(captured: dict) -> None:
    raw = json.loads(json.dumps(captured["raw"][0]))
    raw["expect"]["min_cuda_version"] = "13.1"
    checks = {f["check"]: f for f in llm_doctor.findings(raw)["findings"]}
    assert checks["driver"]["status"] == "fail"
    assert "it supports CUDA 13.0, the engine needs 13.1" in checks["driver"]["detail"]


def test_proprietary_modules_on_a_blackwell_gpu_fail() -> None:
    raw = {"host": "h", "os": {}, "expect": {"gpu": True},
           "pci_gpus": [{"pci_address": "0000:01:00.0", "device_id": "2b85", "name": "GeForce RTX 5090",
                         "architecture": "blackwell", "min_driver_branch": 570, "open_modules_only": True}],
           "smi_query": {"rc": 0, "stdout": "0, NVIDIA GeForce RTX 5090, GPU-1, 00000000:01:00.0, 0x2B8510DE, "
                                            "580.95.05, 32607, 2, 32120, 12.0, 34, 21.45, 575.00, 0, Disabled"},
           "proc_version": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Release Build\n"}
    checks = {f["check"]: f for f in llm_doctor.findings(raw)["findings"]}
    assert checks["driver"]["status"] == "fail"
    assert ("the running proprietary modules cannot drive blackwell GPUs: they need the open kernel modules"
            in checks["driver"]["detail"])


def test_held_packages_of_the_branch_count_as_locked() -> None:
    raw = {"packages": {"rc": 0, "manager": "dpkg", "stdout": "nvidia-open\t580.95.05-1\thi \thold\n"
                                                             "nvidia-kernel-open-dkms\t580.95.05-1\tii \tinstall\n"
                                                             "libnvidia-container1\t1.17.8-1\thi \thold\n"}}
    packages = llm_doctor._packages(raw)
    assert packages == [{"name": "nvidia-open", "version": "580.95.05-1", "locked": True},
                        {"name": "nvidia-kernel-open-dkms", "version": "580.95.05-1", "locked": False},
                        {"name": "libnvidia-container1", "version": "1.17.8-1", "locked": True}]


def test_packages_pinned_to_the_branch_count_as_locked() -> None:
    """nvidia_driver's apt lock: a pin to the branch, no hold (a hold would refuse the branch's point releases)."""
    raw = {"packages": {"rc": 0, "manager": "dpkg", "stdout": "nvidia-open\t580.95.05-1\tii \tinstall\n"
                                                             "nvidia-smi\t580.95.05-1\tii \tinstall\n"},
           "apt_preferences": {"rc": 0, "stdout": "Explanation: branch\nPackage: nvidia-open libcuda1\n"
                                                  "Pin: version 580.*\nPin-Priority: 1001\n\n"
                                                  "Package: nvidia-open libcuda1\nPin: version *\nPin-Priority: -1\n"}}
    assert [(p["name"], p["locked"]) for p in llm_doctor._packages(raw, "580")] == [("nvidia-open", True),
                                                                                   ("nvidia-smi", False)]


def test_preflight_and_the_preinstalled_driver_passed_there_twice() -> None:
    first, again = (CAPTURE / "driver.log").read_text(), (CAPTURE / "driver-again.log").read_text()
    assert "Preinstalled NVIDIA driver 580.159.04 (open, CUDA 13.0) fits NVIDIA H200." in first
    assert "nvidia_driver_provider is preinstalled: the running driver is verified, no headers or packages" in first
    assert "driver.yml rc=0" in first
    # The first run wrote the local facts; the second changed nothing.
    assert "device                     : ok=34   changed=0" in again and "driver.yml again rc=0" in again


def door_metrics(*servers: tuple[str, str, str]) -> str:
    """HAProxy 2.6's exposition of haproxy_server_status (one sample per state, the current one 1)."""
    lines = ["# HELP haproxy_server_status Current status of the service, per state label value.",
             "# TYPE haproxy_server_status gauge"]
    for proxy, server, current in servers:
        lines += [f'haproxy_server_status{{proxy="{proxy}",server="{server}",state="{state}"}} '
                  f'{1 if state == current else 0}' for state in ("DOWN", "UP", "MAINT", "DRAIN", "NOLB")]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("servers", "status", "detail"), [
    ([("api", "gpu-1", "UP"), ("chat_ui", "gpu-1", "UP"), ("api", "gpu-2", "DOWN")], "ok",
     "UP in the front door on edge-1 (api, chat_ui)"),
    ([("api", "gpu-1", "UP")], "fail", "not a server of the front door on edge-1 (chat_ui): run site.yml for it"),
    ([("api", "gpu-1", "DOWN"), ("chat_ui", "gpu-1", "UP")], "fail",
     "the front door on edge-1 sends it no new requests: api DOWN"),
    ([("api", "gpu-1", "DRAIN"), ("chat_ui", "gpu-1", "DRAIN")], "warn",
     "the front door on edge-1 sends it no new requests: api DRAIN, chat_ui DRAIN (drained, as a rollout does)"),
])
def test_how_the_front_door_sees_the_host_is_judged(captured: dict, servers: list, status: str, detail: str) -> None:
    raw = {**captured["raw"][0], "host": "gpu-1", "expect": {**captured["raw"][0]["expect"], "frontend": True},
           "front_doors": [{"host": "edge-1", "url": "http://10.0.0.9:8405/metrics",
                            "metrics": {"status": 200, "content": door_metrics(*servers)}}]}
    [finding] = [f for f in llm_doctor.findings(raw)["findings"] if f["check"] == "front_door"]
    assert (finding["status"], finding["detail"]) == (status, detail)


def test_a_front_door_that_does_not_answer_is_a_warning(captured: dict) -> None:
    raw = {**captured["raw"][0], "front_doors": [{"host": "edge-1", "url": "http://10.0.0.9:8405/metrics",
                                                  "metrics": {"status": -1, "msg": "Connection refused"}}]}
    [finding] = [f for f in llm_doctor.findings(raw)["findings"] if f["check"] == "front_door"]
    assert finding["status"] == "warn" and "did not answer at http://10.0.0.9:8405/metrics (Connection refused)" \
        in finding["detail"]
