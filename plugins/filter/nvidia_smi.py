"""Parse nvidia-smi output into facts: the CSV query format and the XML report (standard library only)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

# The fields the role asks for, in order (nvidia-smi --query-gpu=<these> --format=csv,noheader,nounits).
QUERY_FIELDS = ["index", "name", "uuid", "pci.bus_id", "pci.device_id", "driver_version", "memory.total",
                "memory.used", "memory.free", "compute_cap", "temperature.gpu", "power.draw", "power.limit",
                "utilization.gpu", "persistence_mode"]
_INTS = {"index", "memory.total", "memory.used", "memory.free", "temperature.gpu", "utilization.gpu"}
_FLOATS = {"power.draw", "power.limit"}


def _value(field: str, raw: str) -> Any:
    raw = raw.strip()
    if raw in ("[N/A]", "N/A", "[Not Supported]", ""):
        return None
    if field in _INTS:
        return int(raw)
    if field in _FLOATS:
        return float(raw)
    return raw


def parse_query(text: str, fields: list[str] | None = None) -> list[dict[str, Any]]:
    """One dict per GPU, keys with '.' turned into '_' (memory.total -> memory_total, in MiB)."""
    fields = fields or QUERY_FIELDS
    gpus = []
    for line in text.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(fields):
            raise ValueError(f"expected {len(fields)} fields, got {len(values)}: {line!r}")
        gpu = {f.replace(".", "_"): _value(f, v) for f, v in zip(fields, values, strict=True)}
        if gpu.get("pci_device_id"):
            gpu["device_id"] = gpu["pci_device_id"].lower().removeprefix("0x")[:4]
        gpus.append(gpu)
    return gpus


def parse_xml(text: str) -> dict[str, Any]:
    """Driver and CUDA versions and per-GPU name, architecture and memory from `nvidia-smi -q -x`."""
    root = ET.fromstring(text)
    gpus = []
    for gpu in root.findall("gpu"):
        total = (gpu.findtext("fb_memory_usage/total") or "0").split()[0]
        gpus.append({"pci_bus_id": gpu.get("id"), "name": gpu.findtext("product_name"),
                     "architecture": (gpu.findtext("product_architecture") or "").lower(),
                     "memory_total_mib": int(total)})
    return {"driver_version": root.findtext("driver_version"), "cuda_version": root.findtext("cuda_version"),
            "gpus": gpus}


STABLE_FIELDS = ("index", "name", "uuid", "pci_bus_id", "device_id", "memory_total", "compute_cap")


def gpu_summary(gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The identifying, non-volatile fields of parsed GPUs (for local facts and reports)."""
    return [{k: g.get(k) for k in STABLE_FIELDS} for g in gpus]


def module_flavor(proc_version: str) -> str:
    """Kernel-module flavour from /proc/driver/nvidia/version: "NVRM version: NVIDIA UNIX Open Kernel Module for
    x86_64  580.159.04 ..." is the open one, "NVRM version: NVIDIA UNIX x86_64 Kernel Module  ..." the proprietary
    one (the open modules' README; a real capture in tests/fixtures/nvidia-smi/h200-driver580/system.txt)."""
    first = next((line for line in str(proc_version).splitlines() if line.startswith("NVRM version:")), "")
    if not first:
        raise ValueError(f"not an NVIDIA driver version report: {str(proc_version)[:120]!r}")
    return "open" if "Open Kernel Module" in first else "proprietary"


def driver_branch(version: str) -> str:
    """'570.195.03' -> '570'."""
    return str(version).split(".")[0]


class FilterModule:
    def filters(self) -> dict:
        return {"nvidia_smi_query": parse_query, "nvidia_smi_xml": parse_xml, "nvidia_version_branch": driver_branch,
                "nvidia_gpu_summary": gpu_summary, "nvidia_module_flavor": module_flavor}
