"""Device id -> architecture (preflight's table) -> driver flavour and branch decisions."""
from __future__ import annotations

import pytest
from ansible_collections.llm_endpoints.core.plugins.filter import nvidia_decisions as dec
from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import describe


def gpu(device_id: str) -> dict:
    return {"device_id": device_id, **describe(device_id)}


def test_table_maps_blackwell_ids() -> None:
    for device_id in ("2b85", "2b87", "2c02", "2bb1", "2901"):
        assert gpu(device_id)["architecture"] == "blackwell"
    assert gpu("2b85")["compute_capability"] == "12.0" and gpu("2b85")["memory_mib"] == 32607
    assert gpu("2335")["architecture"] == "hopper"  # the H200 of the real capture
    assert gpu("2b85")["min_driver_branch"] == 570 and gpu("2b85")["open_modules_only"]
    assert gpu("2335")["min_driver_branch"] == 525 and not gpu("2335")["open_modules_only"]


def test_rtx_5090_needs_open_modules_and_570() -> None:
    req = dec.driver_requirements([gpu("2b85")])
    assert req["open_required"] and req["min_branch"] == 570 and req["architectures"] == ["blackwell"]
    assert dec.driver_choice_errors(req, "open", "570") == []
    assert dec.driver_choice_errors(req, "open", "580.95.05") == []


@pytest.mark.parametrize(("flavor", "branch", "message"), [
    ("proprietary", "570", "nvidia_driver_flavor=proprietary cannot drive blackwell GPUs"),
    ("open", "565", "nvidia_driver_branch=565 is too old for blackwell GPUs: they need branch 570 or newer"),
    ("closed", "570", "nvidia_driver_flavor must be open or proprietary"),
    ("open", "latest", "nvidia_driver_branch must be a driver branch"),
])
def test_bad_choices_for_blackwell(flavor: str, branch: str, message: str) -> None:
    errors = dec.driver_choice_errors(dec.driver_requirements([gpu("2b85")]), flavor, branch)
    assert any(message in e for e in errors), errors


def test_hopper_accepts_proprietary_and_mixed_host_takes_strictest() -> None:
    hopper = dec.driver_requirements([gpu("2330")])
    assert not hopper["open_required"] and hopper["min_branch"] == 525
    assert dec.driver_choice_errors(hopper, "proprietary", "535") == []
    mixed = dec.driver_requirements([gpu("2330"), gpu("2b85")])
    assert mixed["open_required"] and mixed["min_branch"] == 570


def test_unknown_ids_are_reported_not_guessed() -> None:
    req = dec.driver_requirements([gpu("ffff")])
    assert req["architectures"] == ["unknown"] and req["unknown_device_ids"] == ["ffff"]
    assert req["min_branch"] == 0 and not req["open_required"]


def test_the_branch_set_is_every_driver_package_on_the_branch() -> None:
    """NVIDIA's version-locking guide locks *nvidia*<branch>*: kmod, libs, utils, not only the metapackage."""
    rpm = ("nvidia-open\t3\t580.82.07\nkmod-nvidia-open-dkms\t3\t580.82.07\nnvidia-driver-cuda-libs\t3\t580.82.07\n"
           "libnvidia-ml\t3\t580.82.07\nnvidia-container-toolkit\t(none)\t1.17.8\nkernel-devel\t(none)\t6.14.0\n"
           "nvidia-kmod-common\t3\t570.195.03\n")
    assert dec.branch_packages(rpm, "580") == [
        {"name": "kmod-nvidia-open-dkms", "epoch": 3, "version": "580.82.07"},
        {"name": "libnvidia-ml", "epoch": 3, "version": "580.82.07"},
        {"name": "nvidia-driver-cuda-libs", "epoch": 3, "version": "580.82.07"},
        {"name": "nvidia-open", "epoch": 3, "version": "580.82.07"}]
    dpkg = ("libcuda1\tii \t580.82.07-1\nnvidia-smi\thi \t1:580.82.07-1\nlibnvidia-container1\tii \t1.17.8-1\n"
            "libnvcuvid1\tii \t580.82.07-1\nnvidia-settings\trc \t580.82.07-1\n")
    assert [p["name"] for p in dec.branch_packages(dpkg, 580)] == ["libcuda1", "libnvcuvid1", "nvidia-smi"]
    assert dec.branch_packages(dpkg, 580)[2] == {"name": "nvidia-smi", "epoch": 1, "version": "580.82.07-1"}


def test_without_a_branch_every_installed_driver_package_counts_but_not_the_container_toolkit() -> None:
    rpm = "nvidia-open\t3\t570.195.03\nnvidia-container-toolkit\t(none)\t1.17.8\nlibnvidia-container1\t(none)\t1.17.8\n"
    assert [p["name"] for p in dec.branch_packages(rpm)] == ["nvidia-open"]
