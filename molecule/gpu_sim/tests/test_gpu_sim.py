"""The state a real GPU host would have after provisioning, on the simulated one (vendor-mirror fixture)."""
from __future__ import annotations

import json

from testinfra.host import Host

MIRROR = "http://127.0.0.1:8765"


def test_nvidia_repository_and_key(host: Host) -> None:
    sources = host.file("/etc/apt/sources.list.d/nvidia-cuda.sources")
    assert f"URIs: {MIRROR}/nvidia-cuda/" in sources.content_string
    assert "Signed-By: /etc/apt/keyrings/nvidia-cuda.asc" in sources.content_string
    assert "BEGIN PGP PUBLIC KEY BLOCK" in host.file("/etc/apt/keyrings/nvidia-cuda.asc").content_string


# Every package of the driver stack the install brought, not only the metapackage (NVIDIA's version-locking guide:
# "*nvidia*<branch>*").
BRANCH_SET = ("nvidia-open", "nvidia-kernel-open-dkms", "nvidia-smi")


def test_driver_branch_pinned_whole(host: Host) -> None:
    pref = host.file("/etc/apt/preferences.d/nvidia-driver-pin.pref").content_string
    assert "Pin: version 570.*" in pref
    pinned = [line.split(": ", 1)[1].split() for line in pref.splitlines() if line.startswith("Package: ")]
    for name in BRANCH_SET:
        assert host.package(name).version == "570.195.03-1", name  # newest of branch 570, not 575
        assert all(name in packages for packages in pinned), name
        # Pinned, not held: a hold would also refuse the branch's own point releases.
        assert "hold" not in host.check_output(f"dpkg --get-selections {name}")


def test_no_driver_package_can_leave_the_branch(host: Host) -> None:
    for name in BRANCH_SET:
        policy = host.check_output(f"apt-cache policy {name}")
        assert "Candidate: 570.195.03-1" in policy, policy  # what an upgrade would take...
        assert "575.64.05-1" in policy  # ...although the newer branch is in the repository
        again = host.run(f"apt-get -s -o Debug::NoLocking=1 install {name}")
        assert again.rc == 0 and "575.64.05" not in again.stdout, again.stdout
    upgrade = host.run("apt-get -s -o Debug::NoLocking=1 dist-upgrade")
    assert upgrade.rc == 0 and "575.64.05" not in upgrade.stdout, upgrade.stdout
    # Moving the metapackage to the newer branch is refused: its dependencies of that branch are pinned away. (apt
    # honours an explicit name=version request of a single package over a pin; only a dpkg hold refuses that, and
    # a hold would refuse the branch's own point releases too.)
    move = host.run("apt-get -s -o Debug::NoLocking=1 install nvidia-open=575.64.05-1")
    assert move.rc != 0 or "Inst nvidia-open" not in move.stdout, move.stdout


def test_point_releases_of_the_branch_stay_installable(host: Host) -> None:
    move = host.run("apt-get -s -o Debug::NoLocking=1 --allow-downgrades install "
                    "nvidia-open=570.172.08-1 nvidia-kernel-open-dkms=570.172.08-1 nvidia-smi=570.172.08-1")
    assert move.rc == 0 and "Inst nvidia-open [570.195.03-1] (570.172.08-1" in move.stdout, move.stdout


def test_nouveau_blacklisted(host: Host) -> None:
    conf = host.file("/etc/modprobe.d/nvidia-blacklist-nouveau.conf").content_string
    assert "blacklist nouveau" in conf and "options nouveau modeset=0" in conf


def test_kernel_headers_for_running_kernel(host: Host) -> None:
    kernel = host.check_output("uname -r")
    assert host.package(f"linux-headers-{kernel}").is_installed


def test_driver_facts(host: Host) -> None:
    facts = json.loads(host.file("/etc/ansible/facts.d/nvidia_driver.fact").content_string)
    assert facts["version"] == "570.195.03" and facts["branch"] == "570" and facts["flavor"] == "open"
    assert facts["cuda_version"] == "12.8"
    assert facts["gpus"] == [{"index": 0, "name": "NVIDIA GeForce RTX 5090",
                              "uuid": "GPU-5e0a5090-0000-4000-8000-000000005090", "pci_bus_id": "00000000:01:00.0",
                              "device_id": "2b85", "memory_total": 32607, "compute_cap": "12.0"}]


def test_cuda_toolkit(host: Host) -> None:
    assert host.package("cuda-toolkit-12-8").is_installed
    assert "release 12.8," in host.check_output("bash -lc 'nvcc --version'")
    assert host.file("/etc/ld.so.conf.d/cuda-12.8.conf").content_string.strip() == "/usr/local/cuda-12.8/lib64"


def test_container_toolkit_pinned_and_held(host: Host) -> None:
    for name in ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                 "libnvidia-container1"):
        assert host.package(name).version == "1.17.8-1"
        assert "hold" in host.check_output(f"dpkg --get-selections {name}")
    assert f"URIs: {MIRROR}/libnvidia-container/" in host.file(
        "/etc/apt/sources.list.d/nvidia-container-toolkit.sources").content_string


def test_docker_has_the_nvidia_runtime(host: Host) -> None:
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    # container_engine's options and nvidia-ctk's runtime live side by side: neither clobbered the other.
    assert daemon["log-driver"] == "json-file" and daemon["log-opts"] == {"max-size": "10m"}
    assert "nvidia" in host.check_output("docker info --format '{{json .Runtimes}}'")
    assert host.service("docker").is_running


def test_cdi_spec_and_refresh_marker(host: Host) -> None:
    spec = host.file("/etc/cdi/nvidia.yaml").content_string
    assert "kind: nvidia.com/gpu" in spec and "name: all" in spec
    assert host.file("/etc/cdi/nvidia.yaml.driver-version").content_string.strip() == "570.195.03"
    assert "create-dev-char-symlinks" in host.file("/etc/udev/rules.d/71-nvidia-dev-char.rules").content_string
