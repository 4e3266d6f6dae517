"""The GPU table's rows from NVIDIA's open-gpu-kernel-modules 595.45.04 "Compatible GPUs" list (and pci.ids)."""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.filter.llm_capacity import default_max_num_batched_tokens
from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import DEVICES, describe


@pytest.mark.parametrize(("device_id", "name", "arch", "cc", "mib"), [
    ("2b8c", "GeForce RTX 5090 D v2", "blackwell", "12.0", 24455),
    ("2c05", "GeForce RTX 5070 Ti", "blackwell", "12.0", 16303),
    ("2f04", "GeForce RTX 5070", "blackwell", "12.0", 12227),
    ("2bb1", "RTX PRO 6000 Blackwell Workstation Edition", "blackwell", "12.0", 97887),
    ("2bb4", "RTX PRO 6000 Blackwell Max-Q Workstation Edition", "blackwell", "12.0", 97887),
    ("2bb5", "RTX PRO 6000 Blackwell Server Edition", "blackwell", "12.0", 97887),
    ("2941", "GB200", "blackwell", "10.0", 189471),
    ("2321", "H100 NVL", "hopper", "9.0", 95830),
    ("233b", "H200 NVL", "hopper", "9.0", 143771),
])
def test_added_rows(device_id: str, name: str, arch: str, cc: str, mib: int) -> None:
    info = describe(device_id)
    assert (info["name"], info["architecture"], info["compute_capability"], info["memory_mib"]) == (name, arch, cc, mib)


def test_ids_are_case_insensitive_and_blackwell_needs_open_570() -> None:
    assert describe("2B8C")["name"] == "GeForce RTX 5090 D v2"
    for device_id in ("2b8c", "2c05", "2f04", "2bb4", "2bb5", "2941"):
        assert describe(device_id)["min_driver_branch"] == 570 and describe(device_id)["open_modules_only"]
    for device_id in ("2321", "233b"):
        assert describe(device_id)["min_driver_branch"] == 525 and not describe(device_id)["open_modules_only"]


def test_unknown_id() -> None:
    assert describe("ffff")["architecture"] == "unknown" and describe("ffff")["memory_mib"] == 0


def test_table_is_well_formed() -> None:
    for device_id, info in DEVICES.items():
        assert len(device_id) == 4 and device_id == device_id.lower() and int(device_id, 16) >= 0
        assert info["memory_mib"] > 0 and info["compute_capability"]


@pytest.mark.parametrize(("device_id", "mnbt"), [("2b8c", 2048), ("2c05", 2048), ("2bb4", 8192), ("2321", 8192),
                                                 ("233b", 8192), ("2941", 8192), ("20b2", 2048)])
def test_vllm_batch_default_by_memory(device_id: str, mnbt: int) -> None:
    """vLLM 0.11's max_num_batched_tokens default: 8192 from 70 GiB except A100s, else 2048."""
    info = describe(device_id)
    assert default_max_num_batched_tokens(info["memory_mib"] * 1024**2, info["name"]) == mnbt
