"""NVIDIA driver decisions from the detected GPUs: which kernel-module flavour and branch they need."""
from __future__ import annotations

from typing import Any


def driver_requirements(gpus: list[dict[str, Any]]) -> dict[str, Any]:
    """The strictest requirement over all GPUs of a host, from what the GPU table says of each (preflight's
    nvidia_pci_devices puts min_driver_branch and open_modules_only on every GPU); unknown ids are listed."""
    return {
        "architectures": sorted({str(g.get("architecture", "unknown")) for g in gpus}),
        "unknown_device_ids": sorted({str(g.get("device_id")) for g in gpus if g.get("architecture") == "unknown"}),
        "open_required": any(bool(g.get("open_modules_only")) for g in gpus),
        "min_branch": max((int(g.get("min_driver_branch") or 0) for g in gpus), default=0),
    }


def driver_choice_errors(requirements: dict[str, Any], flavor: str, branch: Any) -> list[str]:
    """Why a chosen flavour/branch cannot drive these GPUs ([] when it can), naming the variables."""
    errors = []
    archs = ", ".join(requirements.get("architectures", [])) or "none"
    if flavor not in ("open", "proprietary"):
        errors.append(f"nvidia_driver_flavor must be open or proprietary, got {flavor!r}")
    elif flavor == "proprietary" and requirements.get("open_required"):
        errors.append(f"nvidia_driver_flavor=proprietary cannot drive {archs} GPUs: they need the open kernel "
                      "modules (set nvidia_driver_flavor: open)")
    try:
        branch_number = int(str(branch).split(".")[0])
    except ValueError:
        errors.append(f"nvidia_driver_branch must be a driver branch such as 570, got {branch!r}")
    else:
        if branch_number < int(requirements.get("min_branch", 0)):
            errors.append(f"nvidia_driver_branch={branch_number} is too old for {archs} GPUs: they need branch "
                          f"{requirements['min_branch']} or newer")
    return errors


class FilterModule:
    def filters(self) -> dict:
        return {"nvidia_gpu_driver_requirements": driver_requirements,
                "nvidia_gpu_driver_choice_errors": driver_choice_errors}
