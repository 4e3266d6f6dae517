"""Bad driver inputs fail before any change, naming the variable (a simulated RTX 5090 on a fixture sysfs)."""
from __future__ import annotations

from pathlib import Path

import pytest
from llm_fixture import Cases, run_cases, run_playbook

SOURCES = Path("/etc/apt/sources.list.d/nvidia-cuda.sources")


def fixture_sysfs(root: Path, device: str = "2b85") -> Path:
    dev = root / "sysfs/bus/pci/devices/0000:01:00.0"
    dev.mkdir(parents=True)
    for name, value in {"vendor": "0x10de", "device": f"0x{device}", "class": "0x030000"}.items():
        (dev / name).write_text(value + "\n")
    return root / "sysfs"


def variables(root: Path) -> dict:
    return {"preflight_sysfs_root": str(fixture_sysfs(root)), "preflight_min_memory_mb": 512,
            "preflight_min_disk_gb": 1}


BAD_INPUTS = [
    ({"nvidia_driver_flavor": "proprietary"},
     "nvidia_driver_flavor=proprietary cannot drive blackwell GPUs: they need the open kernel modules"),
    ({"nvidia_driver_branch": "565"},
     "nvidia_driver_branch=565 is too old for blackwell GPUs: they need branch 570 or newer"),
    ({"nvidia_driver_provider": "nouveau"},
     "value of nvidia_driver_provider must be one of: cuda_repo, rpmfusion, preinstalled, got: nouveau"),
    ({"nvidia_driver_provider": "rpmfusion"},
     "nvidia_driver_provider must be cuda_repo, preinstalled, or rpmfusion on Fedora; got 'rpmfusion' on Debian"),
    # No driver runs on the test machine: preinstalled verifies, finds none, and installs nothing.
    ({"nvidia_driver_provider": "preinstalled"},
     "no NVIDIA driver is running. nvidia_driver_provider is preinstalled, so nothing was installed"),
    ({"cuda_toolkit_enabled": True, "cuda_toolkit_version": "12.8.1"},
     'cuda_toolkit_version must look like 12.8; got "12.8.1".'),
    ({"nvidia_driver_reboot": True, "nvidia_driver_reboot_tasks": "my-reboot.yml"},
     'nvidia_driver_reboot_tasks must be reboot-now.yml or an absolute path to a .yml file; got "my-reboot.yml". '
     "Nothing was changed, drained or rebooted."),
    # Variables renamed in 0.2.0 fail naming their new names.
    ({"nvidia_driver_repo_url": "http://mirror.example/cuda"}, "nvidia_driver_repo_url is now nvidia_cuda_repo_url"),
    ({"nvidia_driver_repo_key_url": "http://mirror.example/cuda"},
     "nvidia_driver_repo_key_url is now nvidia_cuda_repo_key_url"),
    ({"nvidia_driver_boot_config": False}, "nvidia_driver_boot_config is now llm_host_boot_loader"),
    # The driver role alone, as a playbook that forgot preflight would run it.
    ({"gpu_inputs_without_preflight": True},
     "missing required arguments: preflight_gpu_mode, preflight_nvidia_driver_requirements, preflight_secure_boot"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> Cases:
    """Every case of BAD_INPUTS as one host of one run (host case-<index>), on one fixture sysfs."""
    work = tmp_path_factory.mktemp("gpu-inputs")
    shared = variables(work)
    runs = run_cases(work, "gpu_inputs.yml", {f"case-{i}": {**shared, **extra} for i, (extra, _) in
                                              enumerate(BAD_INPUTS)})
    assert not SOURCES.exists(), "a repository was configured although the inputs were bad"
    return runs


@pytest.mark.parametrize(("index", "message"), [(i, message) for i, (_, message) in enumerate(BAD_INPUTS)])
def test_bad_driver_inputs_fail_before_any_change(bad_input_runs: Cases, index: int, message: str) -> None:
    output = bad_input_runs.hosts[f"case-{index}"]
    assert f"case-{index}" in bad_input_runs.failed, output[-3000:]
    assert message in output, output[-3000:]


def test_secure_boot_message_gives_console_steps_and_the_variable(tmp_path: Path) -> None:
    # Its own run: preflight sets preflight_secure_boot as a fact, which only an extra variable overrides.
    result = run_playbook(tmp_path, "gpu_inputs.yml", {**variables(tmp_path), "preflight_secure_boot": "enabled"})
    assert result.rc != 0, result.output[-2000:]
    assert not SOURCES.exists(), "a repository was configured although the inputs were bad"
    output = result.output
    assert "Secure Boot is enabled on localhost: the NVIDIA kernel module will only load once its" in output
    # NVIDIA's packages build with DKMS, which signs with its own key (not akmods').
    assert "signing key (DKMS's key, /var/lib/dkms/mok.pub)" in output
    # The test machine is Debian 12, whose dkms 3.0.10 has no generate_mok: the key is made with openssl there.
    assert "openssl req -new -x509" in output and "-keyout /var/lib/dkms/mok.key" in output
    assert "mokutil --import /var/lib/dkms/mok.pub" in output
    assert "kmodgenca" not in output
    assert "nvidia_driver_secure_boot_enrolled=true" in output
    assert "Nothing was changed" in output
