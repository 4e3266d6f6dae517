"""Which per-OS vars files a role loads, in layers: os family, then distribution, then distribution-major."""
from __future__ import annotations

import os
from typing import Any


def os_vars_files(facts: dict[str, Any], vars_dir: str, prefix: str = "") -> list[str]:
    """The files <vars_dir>/<prefix><layer>.yml that exist, for the layers <os_family>, <distribution>,
    <distribution>-<major version>, in that order: each later file holds only what differs from the one before."""
    distribution = str(facts["distribution"])
    layers = [str(facts["os_family"]), distribution, f"{distribution}-{facts['distribution_major_version']}"]
    paths = [os.path.join(vars_dir, f"{prefix}{layer}.yml") for layer in dict.fromkeys(layers)]
    return [path for path in paths if os.path.isfile(path)]


class FilterModule:
    def filters(self) -> dict:
        return {"llm_os_vars_files": os_vars_files}
