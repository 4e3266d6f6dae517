#!/usr/bin/python
"""List NVIDIA display controllers from sysfs (read-only; standard library only)."""
from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import NVIDIA_VENDOR, describe, nvidia_pci

DOCUMENTATION = r"""
module: nvidia_pci_devices
short_description: List NVIDIA GPUs on the PCI bus from sysfs
version_added: "0.2.0"
description:
  - Reads C(vendor), C(device), C(class) and, where present, C(driver) of every device under
    C(<sysfs_root>/bus/pci/devices) and returns the NVIDIA (vendor 0x10de) display controllers
    (class 0x03xxxx). Works without lspci and without any NVIDIA driver loaded.
  - Each GPU is described from the collection GPU table (module_utils/gpu_table.py) with model name, architecture,
    compute capability, memory, and the oldest driver branch and kernel-module flavour that drive it. Ids the
    table does not know get architecture C(unknown).
options:
  sysfs_root:
    description: Where sysfs is mounted (tests point it at a fixture tree).
    type: path
    default: /sys
author: llm-endpoints project
"""

EXAMPLES = r"""
- name: NVIDIA GPUs on the PCI bus are listed (no driver needed)
  llm_endpoints.core.nvidia_pci_devices:
  register: pci

- name: The host's mode follows
  ansible.builtin.set_fact:
    gpu_mode: "{{ 'nvidia' if pci.gpus | length > 0 else 'cpu' }}"
"""

RETURN = r"""
gpus:
  description: One entry per NVIDIA display controller, sorted by PCI address.
  type: list
  elements: dict
  returned: always
  sample: [{"pci_address": "0000:01:00.0", "vendor_id": "10de", "device_id": "2b85",
            "class": "030000", "driver": "nvidia", "name": "GeForce RTX 5090", "architecture": "blackwell",
            "compute_capability": "12.0", "memory_mib": 32607, "min_driver_branch": 570,
            "open_modules_only": true}]
"""

def list_nvidia_gpus(sysfs_root: str) -> list[dict[str, str]]:
    return [{"pci_address": device["pci_address"], "vendor_id": NVIDIA_VENDOR, "device_id": device["device_id"],
             "class": device["class"], "driver": device["driver"], **describe(device["device_id"])}
            for device in nvidia_pci(sysfs_root) if device["class"].startswith("03")]


def main() -> None:
    module = AnsibleModule(
        argument_spec={"sysfs_root": {"type": "path", "default": "/sys"}},
        supports_check_mode=True,
    )
    module.exit_json(changed=False, gpus=list_nvidia_gpus(module.params["sysfs_root"]))


if __name__ == "__main__":
    main()
