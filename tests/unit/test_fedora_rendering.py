"""The Fedora 42 path of the GPU roles, rendered from the roles' own variables and task arguments with Fedora 42
facts (no Fedora host is reachable here; molecule's fedora42_sim is where dnf5 itself runs them).

The roles load their OS variables in layers (os family, distribution, distribution-major) and hand repositories,
packages and locks to the internal role vendor_repo: a test renders a role's call to vendor_repo, then
vendor_repo's dnf5 tasks with what the call passed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.llm_endpoints.core.plugins.filter import nvidia_decisions
from ansible_collections.llm_endpoints.core.plugins.filter.llm_os import os_vars_files
from helpers import ROOT, trusted

FEDORA_42 = {"distribution": "Fedora", "distribution_major_version": "42", "distribution_version": "42",
             "distribution_release": "", "os_family": "RedHat", "architecture": "x86_64",
             "kernel": "6.14.0-63.fc42.x86_64"}
DEBIAN_12 = {"distribution": "Debian", "distribution_major_version": "12", "distribution_version": "12.11",
             "distribution_release": "bookworm", "os_family": "Debian", "architecture": "x86_64",
             "kernel": "6.1.0-37-amd64"}
DEBIAN_13 = {**DEBIAN_12, "distribution_major_version": "13", "distribution_version": "13.1",
             "distribution_release": "trixie", "kernel": "6.12.48+deb13-amd64"}
UBUNTU_2404 = {"distribution": "Ubuntu", "distribution_major_version": "24", "distribution_version": "24.04",
               "distribution_release": "noble", "os_family": "Debian", "architecture": "x86_64",
               "kernel": "6.8.0-60-generic"}
VENDOR_REPO = "llm_endpoints.core.vendor_repo"


def load(role: str, rel: str) -> dict[str, Any]:
    path = ROOT / "roles" / role / rel
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def vars_layers(role: str, facts: dict[str, str], prefix: str = "") -> list[str]:
    """The per-OS vars files the role loads, in order, chosen by the same filter its task uses."""
    vars_dir = ROOT / "roles" / role / "vars"
    return [str(Path(path).relative_to(ROOT / "roles" / role)) for path in os_vars_files(facts, str(vars_dir), prefix)]


def role_vars(role: str, facts: dict[str, str] = FEDORA_42, **overrides: Any) -> dict[str, Any]:
    variables: dict[str, Any] = load("llm_defaults", "defaults/main.yml")  # shared settings every role reads
    for rel in ("defaults/main.yml", "vars/main.yml", *vars_layers(role, facts)):
        variables.update(load(role, rel))
    variables.update(overrides)
    variables = trusted(variables)
    variables["ansible_facts"] = facts
    return variables


def find_task(role: str, tasks_file: str, name_start: str) -> dict[str, Any]:
    tasks = yaml.safe_load(Path(ROOT / "roles" / role / "tasks" / tasks_file).read_text())
    return next(t for t in tasks if t.get("name", "").startswith(name_start))


def task_args(role: str, tasks_file: str, name_start: str) -> dict[str, Any]:
    task = find_task(role, tasks_file, name_start)
    module = next(k for k in task if k.startswith(("ansible.", "community.", "llm_endpoints.")))
    return task[module]


def render(value: Any, variables: dict[str, Any]) -> Any:
    return Templar(loader=DataLoader(), variables=variables).template(trusted(value))


def nvidia_cuda_repository(variables: dict[str, Any]) -> dict[str, Any]:
    """vendor_repo's nvidia_cuda entry point: NVIDIA's CUDA repository from its own layered vars."""
    facts = variables["ansible_facts"]
    cuda = dict(variables)
    for rel in ("vars/nvidia_cuda.yml", *vars_layers("vendor_repo", facts, "nvidia_cuda-")):
        cuda.update(trusted(load("vendor_repo", rel)))
    return render(find_task("vendor_repo", "nvidia_cuda.yml", "NVIDIA's CUDA repository, packages")["vars"], cuda)


def vendor_repo_call(role: str, tasks_file: str, name_start: str, variables: dict[str, Any]) -> dict[str, Any]:
    """What a role's include_role of vendor_repo passes, rendered with the role's variables (for the nvidia_cuda
    entry point, with the repository that entry point adds)."""
    task = find_task(role, tasks_file, name_start)
    include = task["ansible.builtin.include_role"]
    assert include["name"] == VENDOR_REPO
    call = render(task["vars"], variables)
    if include.get("tasks_from") == "nvidia_cuda":
        call = {**nvidia_cuda_repository(variables), **call}
    return call


def vendor_repo_vars(call: dict[str, Any], facts: dict[str, str] = FEDORA_42) -> dict[str, Any]:
    variables = {**load("vendor_repo", "defaults/main.yml"), **load("vendor_repo", "vars/main.yml"), **call}
    variables = trusted(variables)
    variables["ansible_facts"] = facts
    return variables


def vendor_task(call: dict[str, Any], name_start: str, facts: dict[str, str] = FEDORA_42,
                **loop_vars: Any) -> dict[str, Any]:
    """A task of vendor_repo's tasks/<os_family>.yml, rendered with what the call passed."""
    variables = {**vendor_repo_vars(call, facts), **loop_vars}
    return render(task_args("vendor_repo", f"{facts['os_family']}.yml", name_start), variables)


@pytest.fixture
def driver() -> dict[str, Any]:
    return role_vars("nvidia_driver", nvidia_driver_flavor="open", nvidia_driver_branch="570")


def driver_call(variables: dict[str, Any]) -> dict[str, Any]:
    return vendor_repo_call("nvidia_driver", "cuda_repo.yml", "NVIDIA driver is installed", variables)


def test_nvidia_repository_definition(driver: dict[str, Any]) -> None:
    repo = vendor_task(driver_call(driver), "Repository is configured")
    assert repo == {"name": "cuda-fedora42-x86_64", "description": "NVIDIA CUDA fedora42 x86_64",
                    "baseurl": "https://developer.download.nvidia.com/compute/cuda/repos/fedora42/x86_64",
                    "gpgcheck": True, "repo_gpgcheck": False, "enabled": True,
                    "gpgkey": "https://developer.download.nvidia.com/compute/cuda/repos/fedora42/x86_64/D42D0685.pub"}
    assert vendor_task(driver_call(driver), "Signing key is imported")["key"] == repo["gpgkey"]


def test_nvidia_repository_points_at_a_mirror(driver: dict[str, Any]) -> None:
    driver["nvidia_cuda_repo_url"] = "http://mirror.example/cuda/fedora42"
    repo = vendor_task(driver_call(driver), "Repository is configured")
    assert repo["baseurl"] == "http://mirror.example/cuda/fedora42"
    assert repo["gpgkey"] == "http://mirror.example/cuda/fedora42/D42D0685.pub"


def test_driver_packages_headers_and_lock(driver: dict[str, Any]) -> None:
    call = driver_call(driver)
    assert vendor_task(call, "Packages are installed")["name"] == ["nvidia-open-570.*"]
    assert vendor_task(call, "Prerequisites are installed first")["name"] == ["kernel-devel-6.14.0-63.fc42.x86_64"]
    assert "vendor_repo_lock" not in call and call["vendor_repo_packages"] == ["nvidia-open"]
    # The whole branch is locked after the install (lock-RedHat.yml), from what rpm lists, each package to the branch.
    listing = ("nvidia-open\t3\t570.195.03\nkmod-nvidia-open-dkms\t3\t570.195.03\n"
               "nvidia-container-toolkit\t(none)\t1.17.8\n")
    branch_set = nvidia_decisions.branch_packages(listing, driver["nvidia_driver_branch"])
    lock = render(find_task("nvidia_driver", "lock-RedHat.yml", "Every installed package of the branch")
                  ["llm_endpoints.core.dnf5_versionlock_branch"],
                  {**driver, "__nvidia_driver_branch_set": branch_set})
    assert lock == {"packages": [{"name": "kmod-nvidia-open-dkms", "epoch": 3, "version": "570.195.03"},
                                 {"name": "nvidia-open", "epoch": 3, "version": "570.195.03"}],
                    "branch": 570, "comment": "llm-endpoints: NVIDIA driver branch lock"}
    assert find_task("nvidia_driver", "cuda_repo.yml", "The whole branch is locked")["ansible.builtin.include_tasks"] \
        == "lock.yml"
    driver["nvidia_driver_flavor"] = "proprietary"
    assert vendor_task(driver_call(driver), "Packages are installed")["name"] == ["cuda-drivers-570.*"]
    assert render("{{ __nvidia_driver_initramfs_cmd }}", driver) == ["dracut", "--force"]


def test_rpmfusion_installs_the_akmod_branch_and_locks_it(driver: dict[str, Any]) -> None:
    call = vendor_repo_call("nvidia_driver", "rpmfusion.yml", "Akmod NVIDIA driver is installed", driver)
    assert "vendor_repo_url" not in call  # RPM Fusion's release packages define its repositories
    assert vendor_task(call, "Packages are installed")["name"] == ["akmod-nvidia-3:570.*",
                                                                  "xorg-x11-drv-nvidia-cuda-3:570.*"]
    assert find_task("nvidia_driver", "rpmfusion.yml", "The whole branch is locked")["ansible.builtin.include_tasks"] \
        == "lock.yml"


@pytest.mark.parametrize(("branch", "offered", "passes"), [
    ("580", "3:580.95.05\n", True),
    # RPM Fusion keeps only its newest akmod-nvidia: 570 is gone from it, unless the host has it installed.
    ("570", "3:580.95.05\n", False),
    ("570", "3:570.195.03\n3:580.95.05\n", True),
    ("57", "3:570.195.03\n", False),  # a branch is matched whole, not as a prefix of another
    ("580", "", False),
])
def test_rpmfusion_refuses_a_branch_it_does_not_have_before_any_change(driver: dict[str, Any], branch: str,
                                                                        offered: str, passes: bool) -> None:
    tasks = yaml.safe_load((ROOT / "roles/nvidia_driver/tasks/rpmfusion.yml").read_text())
    names = [t["name"] for t in tasks]
    check = find_task("nvidia_driver", "rpmfusion.yml", "RPM Fusion has the branch asked for")
    # Right after the release packages (which define its repositories) and the read, before anything else.
    assert names.index(check["name"]) == 2 and names[1].startswith("The akmod-nvidia versions RPM Fusion offers")
    variables = {**driver, "nvidia_driver_branch": branch,
                 "__nvidia_driver_rpmfusion_offered": {"stdout_lines": offered.splitlines()}}
    variables.update(render(check["vars"], variables))
    assert render("{{ " + check["ansible.builtin.assert"]["that"] + " }}", variables) is passes
    message = render(check["ansible.builtin.assert"]["fail_msg"], variables)
    assert message.startswith(f"nvidia_driver_branch {branch} is not available from RPM Fusion")
    assert f"(offered or installed: {', '.join(offered.split()) or 'none'});" in message


def test_container_toolkit_repository_and_packages() -> None:
    ctk = role_vars("nvidia_container_toolkit")
    call = vendor_repo_call("nvidia_container_toolkit", "main.yml", "Toolkit packages are installed", ctk)
    repo = vendor_task(call, "Repository is configured")
    assert repo["name"] == "nvidia-container-toolkit"
    assert repo["baseurl"] == "https://nvidia.github.io/libnvidia-container/stable/rpm/x86_64"
    assert repo["gpgkey"] == "https://nvidia.github.io/libnvidia-container/gpgkey"
    # As NVIDIA's nvidia-container-toolkit.repo: the metadata is signature-checked, not each package.
    assert repo["repo_gpgcheck"] is True and repo["gpgcheck"] is False
    assert vendor_task(call, "Packages are installed")["name"] == [
        "nvidia-container-toolkit-1.17.8-1", "nvidia-container-toolkit-base-1.17.8-1",
        "libnvidia-container-tools-1.17.8-1", "libnvidia-container1-1.17.8-1"]
    assert call["vendor_repo_lock"] is True
    assert render("{{ __nvidia_container_toolkit_selinux_by_default }}", ctk) is True


def test_docker_ce_is_fedoras_default_and_removes_conflicts() -> None:
    engine = role_vars("container_engine")
    assert render("{{ __container_engine_effective_provider }}", engine) == "docker_ce"
    call = vendor_repo_call("container_engine", "main.yml", "Docker CE is installed", engine)
    repo = vendor_task(call, "Repository is configured")
    assert repo["name"] == "docker-ce-stable"
    assert repo["baseurl"] == "https://download.docker.com/linux/fedora/$releasever/$basearch/stable"
    assert repo["gpgkey"] == "https://download.docker.com/linux/fedora/gpg"
    conflicts = vendor_task(call, "Conflicting packages are absent")
    assert {"moby-engine", "podman-docker"} <= set(conflicts["name"]) and conflicts["state"] == "absent"
    assert "docker-compose-plugin" in vendor_task(call, "Packages are installed")["name"]


def test_cuda_toolkit_package_name() -> None:
    cuda = role_vars("cuda_toolkit")
    call = vendor_repo_call("cuda_toolkit", "main.yml", "CUDA toolkit is installed", cuda)
    assert vendor_task(call, "Packages are installed")["name"] == ["cuda-toolkit-12-8"]
    assert render("{{ __cuda_toolkit_home }}", cuda) == "/usr/local/cuda-12.8"


@pytest.mark.parametrize("facts", [FEDORA_42, DEBIAN_12, UBUNTU_2404], ids=["fedora42", "debian12", "ubuntu2404"])
@pytest.mark.parametrize("mirror", ["", "http://mirror.example/cuda"])
def test_driver_and_cuda_toolkit_define_one_cuda_repository(facts: dict[str, str], mirror: str) -> None:
    """Both roles configure NVIDIA's CUDA repository through vendor_repo's nvidia_cuda entry point: the same name,
    URL and key, or the second run would rewrite what the first wrote."""
    for role, tasks_file, name in (("nvidia_driver", "cuda_repo.yml", "NVIDIA driver is installed"),
                                   ("cuda_toolkit", "main.yml", "CUDA toolkit is installed")):
        assert find_task(role, tasks_file, name)["ansible.builtin.include_role"]["tasks_from"] == "nvidia_cuda"
    shared = {"nvidia_cuda_repo_url": mirror}
    driver = driver_call(role_vars("nvidia_driver", facts, **shared))
    cuda = vendor_repo_call("cuda_toolkit", "main.yml", "CUDA toolkit is installed",
                            role_vars("cuda_toolkit", facts, **shared))
    keys = ("vendor_repo_name", "vendor_repo_description", "vendor_repo_url", "vendor_repo_key_url")
    assert {k: driver[k] for k in keys} == {k: cuda[k] for k in keys}
    expected = {"Fedora": "cuda-fedora42-x86_64", "Debian": "nvidia-cuda", "Ubuntu": "nvidia-cuda"}
    assert driver["vendor_repo_name"] == expected[facts["distribution"]]
    if not mirror:
        distro = {"Fedora": "fedora42", "Debian": "debian12", "Ubuntu": "ubuntu2404"}[facts["distribution"]]
        assert driver["vendor_repo_url"] == f"https://developer.download.nvidia.com/compute/cuda/repos/{distro}/x86_64"


def test_os_layers_hold_only_what_differs() -> None:
    """Ubuntu inherits Debian's family values and overrides only its own; Debian 12 adds the pinned trixie suite."""
    ubuntu = role_vars("container_engine", UBUNTU_2404)
    assert render("{{ __container_engine_packages }}", ubuntu) == ["docker.io", "docker-compose-v2", "python3-requests"]
    assert render("{{ __container_engine_docker_ce_repo_name }}", ubuntu) == "docker"
    assert render("{{ __container_engine_pinned_suites }}", ubuntu) == []
    bookworm = role_vars("container_engine", DEBIAN_12)
    assert render("{{ __container_engine_pinned_suites }}", bookworm) == [{"suite": "trixie",
                                                                           "packages": ["docker-compose"]}]
    ctk = role_vars("nvidia_container_toolkit", UBUNTU_2404)
    assert render("{{ __nvidia_container_toolkit_default_repo_url }}", ctk) \
        == "https://nvidia.github.io/libnvidia-container/stable/deb/amd64"
    ubuntu_driver = role_vars("nvidia_driver", UBUNTU_2404, nvidia_driver_branch="570")
    assert driver_call(ubuntu_driver)["vendor_repo_key_url"].endswith("/ubuntu2404/x86_64/3bf863cc.pub")  # Debian's key
    # Source and preferences are written in one call (host_files), their contents rendered from vendor_repo's
    # templates on the control node.
    # (The lookup by its short name: this bare Templar has no collection loader for ansible.builtin.)
    task = task_args("vendor_repo", "Debian.yml", "Apt source and preferences are written")
    variables = {**vendor_repo_vars(driver_call(ubuntu_driver), UBUNTU_2404),
                 "ansible_search_path": [str(ROOT / "roles" / "vendor_repo")]}
    written = render(task["files"].replace("lookup('ansible.builtin.template'", "lookup('template'"), variables)
    assert [f["path"] for f in written] == ["/etc/apt/sources.list.d/nvidia-cuda.sources",
                                            "/etc/apt/preferences.d/nvidia-driver-pin.pref"]
    assert "Pin-Priority" in written[1]["content"] and "Signed-By:" in written[0]["content"]


def test_each_cuda_repository_is_checked_against_the_key_nvidia_signs_it_with() -> None:
    """NVIDIA/cuda-repo-management's repository/key table: debian12 and ubuntu2404 3bf863cc, debian13 8793F200 (a
    new key for that repository only), fedora42 D42D0685."""
    expected = {"debian12": (DEBIAN_12, "3bf863cc.pub"), "debian13": (DEBIAN_13, "8793F200.pub"),
                "ubuntu2404": (UBUNTU_2404, "3bf863cc.pub"), "fedora42": (FEDORA_42, "D42D0685.pub")}
    for distro, (facts, key) in expected.items():
        call = driver_call(role_vars("nvidia_driver", facts, nvidia_driver_branch="580"))
        assert call["vendor_repo_key_url"] == \
            f"https://developer.download.nvidia.com/compute/cuda/repos/{distro}/x86_64/{key}", distro


def test_secure_boot_steps_follow_the_provider() -> None:
    """The key that signs the module is the provider's: DKMS's own for NVIDIA's packages (dkms README), shim-signed's
    on Ubuntu, akmods' for RPM Fusion (RPM Fusion Howto/Secure Boot)."""
    steps = "{{ __nvidia_driver_secure_boot_steps[nvidia_driver_provider] }}"
    fedora_dkms = render(steps, role_vars("nvidia_driver", FEDORA_42, nvidia_driver_provider="cuda_repo"))
    assert fedora_dkms == {"signer": "DKMS's key, /var/lib/dkms/mok.pub", "install": "dnf install -y dkms mokutil",
                           "generate": "dkms generate_mok", "public_key": "/var/lib/dkms/mok.pub"}
    akmods = render(steps, role_vars("nvidia_driver", FEDORA_42, nvidia_driver_provider="rpmfusion"))
    assert akmods["generate"] == "kmodgenca -a" and akmods["public_key"] == "/etc/pki/akmods/certs/public_key.der"
    debian13 = render(steps, role_vars("nvidia_driver", DEBIAN_13, nvidia_driver_provider="cuda_repo"))
    assert debian13["install"] == "apt-get install -y dkms mokutil" and debian13["generate"] == "dkms generate_mok"
    # Debian 12's dkms 3.0.10 has no generate_mok: the openssl command it runs itself.
    debian12 = render(steps, role_vars("nvidia_driver", DEBIAN_12, nvidia_driver_provider="cuda_repo"))
    assert debian12["generate"].startswith("openssl req -new -x509")
    assert "-out /var/lib/dkms/mok.pub" in debian12["generate"]
    assert debian12["public_key"] == "/var/lib/dkms/mok.pub"
    ubuntu = render(steps, role_vars("nvidia_driver", UBUNTU_2404, nvidia_driver_provider="cuda_repo"))
    assert ubuntu["public_key"] == "/var/lib/shim-signed/mok/MOK.der"
