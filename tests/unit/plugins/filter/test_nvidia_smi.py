"""nvidia-smi parsing against real captures from an H200 host (driver 580.159.04, CUDA 13.0)."""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.filter import nvidia_smi as smi
from helpers import ROOT

CAPTURE = ROOT / "tests/fixtures/nvidia-smi/h200-driver580"


def test_query_csv_of_the_h200() -> None:
    [gpu] = smi.parse_query((CAPTURE / "query-gpu.csv").read_text())
    assert gpu["name"] == "NVIDIA H200"
    assert gpu["driver_version"] == "580.159.04"
    assert gpu["memory_total"] == 143771 and gpu["memory_used"] == 0 and gpu["memory_free"] == 143156
    assert gpu["compute_cap"] == "9.0"
    assert gpu["device_id"] == "2335"
    assert gpu["uuid"].startswith("GPU-aa1d6add")
    assert gpu["power_limit"] == 700.0
    assert smi.driver_branch(gpu["driver_version"]) == "580"


def test_xml_report_of_the_h200() -> None:
    report = smi.parse_xml((CAPTURE / "nvidia-smi-q.xml").read_text())
    assert report["driver_version"] == "580.159.04"
    assert report["cuda_version"] == "13.0"
    assert report["gpus"] == [{"pci_bus_id": "00000000:00:06.0", "name": "NVIDIA H200",
                               "architecture": "hopper", "memory_total_mib": 143771}]


def test_query_and_list_agree_on_the_uuid() -> None:
    [gpu] = smi.parse_query((CAPTURE / "query-gpu.csv").read_text())
    assert gpu["uuid"] in (CAPTURE / "nvidia-smi-L.txt").read_text()


def test_wrong_field_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 15 fields"):
        smi.parse_query("0, NVIDIA H200")


def test_not_available_values_become_none() -> None:
    line = ("0, NVIDIA GeForce RTX 5090, GPU-1, 00000000:01:00.0, 0x2B8510DE, 570.172.08, 32607, 2, 32120, 12.0, "
            "[N/A], [N/A], 575.00, 0, Disabled")
    [gpu] = smi.parse_query(line)
    assert gpu["temperature_gpu"] is None and gpu["power_draw"] is None
    assert gpu["device_id"] == "2b85" and gpu["compute_cap"] == "12.0"


def test_summary_keeps_identity_not_readings() -> None:
    [gpu] = smi.gpu_summary(smi.parse_query((CAPTURE / "query-gpu.csv").read_text()))
    assert gpu == {"index": 0, "name": "NVIDIA H200", "uuid": "GPU-aa1d6add-cd4c-86bc-d6f6-5432a0ff7621",
                   "pci_bus_id": "00000000:00:06.0", "device_id": "2335", "memory_total": 143771, "compute_cap": "9.0"}


def test_module_flavor_of_the_real_capture_is_open() -> None:
    assert smi.module_flavor((CAPTURE / "system.txt").read_text()) == "open"


def test_module_flavor_of_the_proprietary_modules() -> None:
    line = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.195.03  Release Build  (dvs-builder@U16-A24-23-2)\n"
    assert smi.module_flavor(line) == "proprietary"


def test_module_flavor_refuses_what_is_not_a_driver_report() -> None:
    with pytest.raises(ValueError, match="not an NVIDIA driver version report"):
        smi.module_flavor("cat: /proc/driver/nvidia/version: No such file or directory")
