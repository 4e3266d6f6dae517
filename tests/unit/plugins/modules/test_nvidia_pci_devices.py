"""preflight's nvidia_pci_devices module against a sysfs tree laid out like a real one."""
from __future__ import annotations

import os
from pathlib import Path

from ansible_collections.llm_endpoints.core.plugins.modules import nvidia_pci_devices as mod


def add_device(root: Path, address: str, vendor: str, device: str, pci_class: str, driver: str = "") -> None:
    real = root / "devices" / "pci0000:00" / address
    real.mkdir(parents=True)
    (real / "vendor").write_text(f"0x{vendor}\n")
    (real / "device").write_text(f"0x{device}\n")
    (real / "class").write_text(f"0x{pci_class}\n")
    if driver:
        drv = root / "bus" / "pci" / "drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        os.symlink(drv, real / "driver")
    links = root / "bus" / "pci" / "devices"
    links.mkdir(parents=True, exist_ok=True)
    os.symlink(real, links / address)


def test_lists_only_nvidia_display_controllers(tmp_path: Path) -> None:
    add_device(tmp_path, "0000:00:02.0", "8086", "a780", "030000", "i915")   # Intel iGPU
    add_device(tmp_path, "0000:01:00.0", "10de", "2b85", "030000", "nvidia")  # RTX 5090
    add_device(tmp_path, "0000:01:00.1", "10de", "22e8", "040300")            # its HDMI audio
    add_device(tmp_path, "0000:41:00.0", "10de", "2335", "030200")            # H200 (3D controller)
    gpus = mod.list_nvidia_gpus(str(tmp_path))
    assert [(g["pci_address"], g["device_id"], g["driver"]) for g in gpus] == [
        ("0000:01:00.0", "2b85", "nvidia"),
        ("0000:41:00.0", "2335", ""),
    ]
    assert {g["vendor_id"] for g in gpus} == {"10de"}
    # Each GPU is described from the collection's one GPU table.
    assert (gpus[0]["name"], gpus[0]["architecture"], gpus[0]["compute_capability"]) == (
        "GeForce RTX 5090", "blackwell", "12.0")
    assert gpus[0]["min_driver_branch"] == 570 and gpus[0]["open_modules_only"] is True
    assert gpus[1]["architecture"] == "hopper" and gpus[1]["memory_mib"] == 143771


def test_no_pci_tree_means_no_gpus(tmp_path: Path) -> None:
    assert mod.list_nvidia_gpus(str(tmp_path / "missing")) == []


def test_host_without_nvidia(tmp_path: Path) -> None:
    add_device(tmp_path, "0000:00:02.0", "1af4", "1050", "030000")  # virtio-gpu
    assert mod.list_nvidia_gpus(str(tmp_path)) == []
