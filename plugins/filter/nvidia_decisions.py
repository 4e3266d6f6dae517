"""NVIDIA driver decisions from the detected GPUs: which kernel-module flavour and branch they need."""
from __future__ import annotations

from typing import Any

from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import ARCH_REQUIREMENTS


def driver_requirements(gpus: list[dict[str, Any]]) -> dict[str, Any]:
    """The strictest requirement over all GPUs of a host (the GPU table's); unknown architectures are listed."""
    table = ARCH_REQUIREMENTS
    archs = sorted({str(g.get("architecture", "unknown")) for g in gpus})
    known = [table[a] for a in archs if a in table]
    return {
        "architectures": archs,
        "unknown_device_ids": sorted({str(g.get("device_id")) for g in gpus if g.get("architecture") not in table}),
        "open_required": any(r["open_only"] for r in known),
        "min_branch": max((int(r["min_branch"]) for r in known), default=0),
        "flavor": "open",
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
        return {"nvidia_driver_requirements": driver_requirements, "nvidia_driver_choice_errors": driver_choice_errors}
