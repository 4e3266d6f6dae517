"""NVIDIA driver decisions from the detected GPUs: which kernel-module flavour and branch they need."""
from __future__ import annotations

import re
from typing import Any

# The driver stack's package names, NVIDIA's and RPM Fusion's (nvidia-open, kmod-nvidia-open-dkms, libnvidia-ml1,
# libcuda1, libnvcuvid1, xorg-x11-drv-nvidia, akmod-nvidia, cuda-drivers...): NVIDIA's version-locking guide locks
# "*nvidia*<branch>*". The branch in the version keeps out what merely carries the name (libnvidia-container1 1.17).
_DRIVER_STACK = re.compile(r"nvidia|^libcuda|^libnv|^cuda-drivers")


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


def branch_packages(listing: str, branch: Any = None) -> list[dict[str, Any]]:
    """The installed packages of the driver stack on a branch: [{name, epoch, version}], sorted by name. Lines are
    "<name>\\t<epoch>\\t<version>" (rpm -qa --qf, "(none)" for no epoch) or "<name>\\t<status>\\t<version>"
    (dpkg-query ${db:Status-Abbrev}: only "ii"/"hi", installed, count; dpkg puts the epoch into the version).
    Without a branch: every installed package of the driver stack, whatever its branch."""
    prefix = f"{int(str(branch))}." if branch not in (None, "") else ""
    found = {}
    for line in str(listing).splitlines():
        fields = line.split("\t")
        if len(fields) != 3:
            continue
        name, epoch, version = (f.strip() for f in fields)
        if re.fullmatch(r"[a-zA-Z]{2,3}", epoch):  # a dpkg status, not an epoch
            if epoch[:2] not in ("ii", "hi"):
                continue
            epoch = "0"
        if ":" in version:  # dpkg writes the epoch into the version
            epoch, version = version.split(":", 1)
        # Without a branch, a driver version is what has a three-digit branch (580.82.07): the container toolkit's
        # nvidia-container-toolkit 1.17.8 is not the driver's.
        on_branch = version.startswith(prefix) if prefix else re.match(r"[0-9]{3}\.", version) is not None
        if _DRIVER_STACK.search(name) and on_branch:
            found[name] = {"name": name, "epoch": int(epoch) if epoch.isdigit() else 0, "version": version}
    return [found[name] for name in sorted(found)]


class FilterModule:
    def filters(self) -> dict:
        return {"nvidia_gpu_driver_requirements": driver_requirements,
                "nvidia_gpu_driver_choice_errors": driver_choice_errors,
                "nvidia_branch_packages": branch_packages}
