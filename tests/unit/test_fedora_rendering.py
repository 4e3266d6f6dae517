"""The Fedora 42 path of the GPU roles, rendered from the roles' own variables and task arguments with Fedora 42
facts (no Fedora host is reachable here; molecule's fedora42_sim is where dnf5 itself runs them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from helpers import ROOT

FEDORA_42 = {"distribution": "Fedora", "distribution_major_version": "42", "distribution_version": "42",
             "distribution_release": "", "os_family": "RedHat", "architecture": "x86_64",
             "kernel": "6.14.0-63.fc42.x86_64"}


def trusted(value: Any) -> Any:
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [trusted(v) for v in value]
    if isinstance(value, dict):
        return {k: trusted(v) for k, v in value.items()}
    return value


def role_vars(role: str, distro_file: str, **overrides: Any) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    for rel in ("defaults/main.yml", "vars/main.yml", f"vars/{distro_file}"):
        variables.update(yaml.safe_load((ROOT / "roles" / role / rel).read_text()) or {})
    variables.update(overrides)
    variables = trusted(variables)
    variables["ansible_facts"] = FEDORA_42
    return variables


def task_args(role: str, tasks_file: str, name_start: str) -> dict[str, Any]:
    tasks = yaml.safe_load(Path(ROOT / "roles" / role / "tasks" / tasks_file).read_text())
    task = next(t for t in tasks if t["name"].startswith(name_start))
    module = next(k for k in task if k.startswith("ansible.") or k.startswith("community."))
    return task[module]


def render(value: Any, variables: dict[str, Any]) -> Any:
    return Templar(loader=DataLoader(), variables=variables).template(trusted(value))


@pytest.fixture
def driver() -> dict[str, Any]:
    return role_vars("nvidia_driver", "Fedora.yml", nvidia_driver_flavor="open", nvidia_driver_branch="570")


def test_nvidia_repository_definition(driver: dict[str, Any]) -> None:
    repo = render(task_args("nvidia_driver", "cuda_repo-RedHat.yml", "NVIDIA CUDA repository"), driver)
    assert repo == {"name": "cuda-fedora42-x86_64", "description": "NVIDIA CUDA fedora42 x86_64",
                    "baseurl": "https://developer.download.nvidia.com/compute/cuda/repos/fedora42/x86_64",
                    "gpgcheck": True, "enabled": True,
                    "gpgkey": "https://developer.download.nvidia.com/compute/cuda/repos/fedora42/x86_64/D42D0685.pub"}


def test_nvidia_repository_points_at_a_mirror(driver: dict[str, Any]) -> None:
    driver["nvidia_driver_repo_url"] = "http://mirror.example/cuda/fedora42"
    repo = render(task_args("nvidia_driver", "cuda_repo-RedHat.yml", "NVIDIA CUDA repository"), driver)
    assert repo["baseurl"] == "http://mirror.example/cuda/fedora42"
    assert repo["gpgkey"] == "http://mirror.example/cuda/fedora42/D42D0685.pub"


def test_driver_packages_and_headers(driver: dict[str, Any]) -> None:
    install = render(task_args("nvidia_driver", "cuda_repo-RedHat.yml", "NVIDIA driver is installed"), driver)
    assert install["name"] == ["nvidia-open-570.*"]
    headers = render(task_args("nvidia_driver", "cuda_repo-RedHat.yml", "Headers of the running kernel"), driver)
    assert headers["name"] == "kernel-devel-6.14.0-63.fc42.x86_64"
    driver["nvidia_driver_flavor"] = "proprietary"
    assert render(task_args("nvidia_driver", "cuda_repo-RedHat.yml", "NVIDIA driver is installed"),
                  driver)["name"] == ["cuda-drivers-570.*"]
    assert render("{{ __nvidia_driver_initramfs_cmd }}", driver) == ["dracut", "--force"]


def test_container_toolkit_repository_and_packages() -> None:
    ctk = role_vars("nvidia_container_toolkit", "Fedora.yml")
    repo = render(task_args("nvidia_container_toolkit", "install-RedHat.yml", "Toolkit repository is configured"), ctk)
    assert repo["baseurl"] == "https://nvidia.github.io/libnvidia-container/stable/rpm/x86_64"
    assert repo["gpgkey"] == "https://nvidia.github.io/libnvidia-container/gpgkey" and repo["gpgcheck"] is True
    pkgs = render(task_args("nvidia_container_toolkit", "install-RedHat.yml", "Toolkit packages are installed"), ctk)
    assert pkgs["name"] == ["nvidia-container-toolkit-1.17.8-1", "nvidia-container-toolkit-base-1.17.8-1",
                            "libnvidia-container-tools-1.17.8-1", "libnvidia-container1-1.17.8-1"]


def test_docker_ce_is_fedoras_default_and_removes_conflicts() -> None:
    engine = role_vars("container_engine", "Fedora.yml")
    assert render("{{ __container_engine_effective_provider }}", engine) == "docker_ce"
    repo = render(task_args("container_engine", "docker_ce-RedHat.yml", "Docker's repository"), engine)
    assert repo["baseurl"] == "https://download.docker.com/linux/fedora/$releasever/$basearch/stable"
    assert repo["gpgkey"] == "https://download.docker.com/linux/fedora/gpg"
    conflicts = render(task_args("container_engine", "docker_ce-RedHat.yml", "Packages that conflict"), engine)
    assert {"moby-engine", "podman-docker"} <= set(conflicts["name"]) and conflicts["state"] == "absent"
    assert "docker-compose-plugin" in render("{{ __container_engine_docker_ce_packages }}", engine)


def test_cuda_toolkit_package_name() -> None:
    cuda = role_vars("cuda_toolkit", "../vars/main.yml")
    assert render("{{ __cuda_toolkit_package }}", cuda) == "cuda-toolkit-12-8"
    assert render("{{ __cuda_toolkit_home }}", cuda) == "/usr/local/cuda-12.8"
