"""llm_apps ships each app's files by name (roles/llm_apps/vars/main.yml, __llm_apps_catalog): every Python module of
the backend's package is listed, and every listed file exists, so a module added to apps/ cannot be left out of the
image (which only molecule's build would otherwise show)."""
from __future__ import annotations

import yaml
from helpers import ROOT

CATALOG = yaml.safe_load((ROOT / "roles/llm_apps/vars/main.yml").read_text())["__llm_apps_catalog"]


def test_the_backend_image_gets_its_entry_script_and_every_module_of_its_package() -> None:
    backend = ROOT / "apps/backend"
    modules = {str(path.relative_to(backend)) for path in (backend / "gateway").glob("*.py")}
    assert set(CATALOG["backend"]["files"]) == {"llm_backend.py"} | modules


def test_every_listed_file_exists() -> None:
    for app, entry in CATALOG.items():
        for name in entry["files"]:
            assert (ROOT / "apps" / app / name).is_file(), f"apps/{app}/{name}"
