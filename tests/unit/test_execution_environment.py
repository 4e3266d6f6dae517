"""execution-environment.yml: valid for ansible-builder (its own schema and its Containerfile generation), with the
control node's pins, nothing fetched from PyPI or Galaxy inside the build, and the Debian settings its scripts need.
The image itself is built and used by molecule default (its side effect runs site.yml in it through ansible-runner)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from ansible_builder.ee_schema import validate_schema
from ansible_builder.main import AnsibleBuilder
from bindep.depends import Depends
from helpers import ROOT

DEFINITION = yaml.safe_load((ROOT / "execution-environment.yml").read_text())


def pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file's `name==version` lines (names normalised as pip does)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line} is not pinned"
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_the_definition_is_valid_version_3() -> None:
    validate_schema(DEFINITION)
    assert DEFINITION["version"] == 3


def test_the_python_packages_are_the_control_nodes_versions() -> None:
    control_node = pins(ROOT / "requirements.txt")
    wanted = pins(ROOT / "ee/requirements.txt")
    for dependency in ("ansible_core", "ansible_runner"):
        name, _, version = DEFINITION["dependencies"][dependency]["package_pip"].partition("==")
        wanted[name] = version
    assert {"ansible-core", "ansible-runner", "requests", "prometheus-client"} <= wanted.keys()
    assert {name: control_node.get(name) for name in wanted} == wanted
    # The build's own tools too, where the control node has them.
    build = pins(ROOT / "ee/build-wheels.txt")
    assert {name: version for name, version in build.items() if name in control_node} == \
        {name: control_node[name] for name in build if name in control_node}


def test_the_system_packages_are_debians() -> None:
    depends = Depends((ROOT / "ee/bindep.txt").read_text())
    profiles = depends.platform_profiles() + ["platform:dpkg", "platform:debian"]
    assert sorted(rule[0] for rule in depends.active_rules(profiles)) == ["ca-certificates", "openssh-client"]


def test_the_build_is_made_for_debian_and_fetches_nothing(tmp_path: Path) -> None:
    """ansible-builder's own Containerfile generation (`ansible-builder create`), read: its scripts use apt-get and
    keep the package cache, pip comes from Debian and reads only the copied wheels, the collections are installed
    from their artifacts --offline, and the image is the local tag the scenario runs."""
    # The definition as it is, but for its paths (relative to it), made absolute; empty folders for what
    # scripts/build-ee.sh downloads and packs first.
    for folder in ("wheels", "collections"):
        (tmp_path / folder).mkdir()
    dependencies = DEFINITION["dependencies"]
    definition = {**DEFINITION, "dependencies": {**dependencies, "python": str(ROOT / dependencies["python"]),
                                                 "system": str(ROOT / dependencies["system"])},
                  "additional_build_files": [{"src": str(tmp_path / entry["dest"]), "dest": entry["dest"]}
                                             for entry in DEFINITION["additional_build_files"]]}
    (tmp_path / "ee.yml").write_text(yaml.safe_dump(definition))
    builder = AnsibleBuilder(action="create", filename=str(tmp_path / "ee.yml"),
                             build_context=str(tmp_path / "context"), container_runtime="docker")
    builder.create()
    text = (tmp_path / "context/Dockerfile").read_text()
    assert text.startswith('ARG EE_BASE_IMAGE="local/llm-base:bookworm"')
    assert 'ARG PKGMGR="/usr/bin/apt-get"' in text and 'ARG PKGMGR_PRESERVE_CACHE="always"' in text
    assert DEFINITION["options"]["skip_pip_install"] is True
    assert "ensurepip" not in text and "RUN /output/scripts/pip_install" not in text
    # pip is configured to read the wheels before its first use, and the configuration goes before the image ends.
    assert text.index("no-index = true") < text.index("pip install")
    assert "/etc/pip.conf" in text.split("ansible-galaxy collection install --offline", 1)[1].split("\n", 1)[0]
    assert "galaxy" not in DEFINITION["dependencies"]  # no stage that would ask Galaxy
    assert builder.tags == ["local/llm-endpoints-ee:latest"]
