"""The one GPU table of the collection: NVIDIA PCI device id -> model, architecture, compute capability, memory,
and per architecture the oldest driver branch and whether only the open kernel modules drive it.

Read by the nvidia_pci_devices module (preflight's GPU facts) and the nvidia_decisions filters (driver choice).
nvidia_pci() reads the NVIDIA devices from sysfs, for that module and llm_host_state (standard library only).
Memory is nvidia-smi's total in MiB; the driver's own report (nvidia_driver) replaces it once the driver runs.
Sources:
- device ids and names: NVIDIA/open-gpu-kernel-modules README.md, "Compatible GPUs", at tag 595.45.04 (commit
  df1c9a3de; the first id of a row is the PCI device id), cross-checked against pciutils/pciids pci.ids (commit
  c1c1254); NVIDIA's PCI id list in the driver README ("Appendix A. Supported NVIDIA GPU Products") for the
  older rows. Blackwell is supported only by the open modules, from branch 570.
- memory of the rows added with the 595.45.04 list (2b8c, 2c05, 2f04, 2bb4, 2bb5, 2941, 2321, 233b): nvidia-smi's
  `memory.total` as published in public nvidia-smi outputs of those cards (not measured here); their nominal
  sizes are 24, 16, 12, 96, 96, 186, 94 and 141 GB. Where no nvidia-smi figure is known a row takes the nominal
  GiB x 1024 and says so in its comment.
"""
from __future__ import annotations

import os
from typing import Any

NVIDIA_VENDOR = "10de"

# device id: (model name, architecture, compute capability, memory MiB)
_ROWS: dict[str, tuple[str, str, str, int]] = {
    "2b85": ("GeForce RTX 5090", "blackwell", "12.0", 32607),
    "2b87": ("GeForce RTX 5090 D", "blackwell", "12.0", 32607),
    "2b8c": ("GeForce RTX 5090 D v2", "blackwell", "12.0", 24455),  # 24 GB
    "2c02": ("GeForce RTX 5080", "blackwell", "12.0", 16303),
    "2c05": ("GeForce RTX 5070 Ti", "blackwell", "12.0", 16303),  # 16 GB
    "2f04": ("GeForce RTX 5070", "blackwell", "12.0", 12227),  # 12 GB
    "2bb1": ("RTX PRO 6000 Blackwell Workstation Edition", "blackwell", "12.0", 97887),
    "2bb4": ("RTX PRO 6000 Blackwell Max-Q Workstation Edition", "blackwell", "12.0", 97887),  # 96 GB
    "2bb5": ("RTX PRO 6000 Blackwell Server Edition", "blackwell", "12.0", 97887),  # 96 GB
    "2901": ("B200", "blackwell", "10.0", 183359),
    "2941": ("GB200", "blackwell", "10.0", 189471),  # 186 GB HBM3e per GPU
    "2330": ("H100 80GB HBM3", "hopper", "9.0", 81559),
    "2331": ("H100 PCIe", "hopper", "9.0", 81559),
    "2321": ("H100 NVL", "hopper", "9.0", 95830),  # 94 GB
    "2335": ("H200", "hopper", "9.0", 143771),
    "233b": ("H200 NVL", "hopper", "9.0", 143771),  # 141 GB
    "2684": ("GeForce RTX 4090", "ada", "8.9", 24564),
    "26b9": ("L40S", "ada", "8.9", 46068),
    "20b2": ("A100-SXM4-80GB", "ampere", "8.0", 81920),
    "2204": ("GeForce RTX 3090", "ampere", "8.6", 24576),
}
DEVICES: dict[str, dict[str, Any]] = {
    device_id: {"name": name, "architecture": arch, "compute_capability": cc, "memory_mib": mib}
    for device_id, (name, arch, cc, mib) in _ROWS.items()
}
UNKNOWN_DEVICE: dict[str, Any] = {"name": "unknown NVIDIA GPU", "architecture": "unknown", "compute_capability": "",
                                  "memory_mib": 0}

ARCH_REQUIREMENTS: dict[str, dict[str, Any]] = {
    "blackwell": {"min_branch": 570, "open_only": True},
    "hopper": {"min_branch": 525, "open_only": False},
    "ada": {"min_branch": 525, "open_only": False},
    "ampere": {"min_branch": 470, "open_only": False},
}


def describe(device_id: str) -> dict[str, Any]:
    """What the table knows of a PCI device id (lower-case hex, no 0x), with the architecture's driver needs."""
    info = dict(DEVICES.get(device_id.lower(), UNKNOWN_DEVICE))
    needs = ARCH_REQUIREMENTS.get(info["architecture"], {"min_branch": 0, "open_only": False})
    info["min_driver_branch"] = needs["min_branch"]
    info["open_modules_only"] = needs["open_only"]
    return info


def _attr(device_dir: str, name: str) -> str:
    try:
        with open(os.path.join(device_dir, name), encoding="ascii") as handle:
            return handle.read().strip().lower().removeprefix("0x")
    except OSError:
        return ""


def nvidia_pci(sysfs_root: str) -> list[dict[str, str]]:
    """Every NVIDIA (vendor 0x10de) device under <sysfs_root>/bus/pci/devices, by address: its device id and PCI
    class (hex without 0x, "" where unreadable) and the driver bound to it ("" for none). Works without lspci and
    without any NVIDIA driver loaded."""
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    if not os.path.isdir(base):
        return []
    found = []
    for address in sorted(os.listdir(base)):
        device_dir = os.path.join(base, address)
        if _attr(device_dir, "vendor") != NVIDIA_VENDOR:
            continue
        try:
            driver = os.path.basename(os.readlink(os.path.join(device_dir, "driver")))
        except OSError:  # no driver bound (or unbound while read)
            driver = ""
        found.append({"pci_address": address, "device_id": _attr(device_dir, "device"),
                      "class": _attr(device_dir, "class"), "driver": driver})
    return found
