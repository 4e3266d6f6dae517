"""The runc wrapper removes only the capabilities missing from the bounding set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_path

capfilter = load_path("runc_capfilter", "scripts/runc-capfilter")


def test_bundle_config_loses_only_missing_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capfilter, "bounding_caps", lambda: {"CAP_CHOWN", "CAP_SYS_ADMIN"})
    config = tmp_path / "config.json"
    caps = ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"]
    config.write_text(json.dumps({"ociVersion": "1.0.2", "process": {"capabilities": {
        "bounding": caps, "effective": caps, "permitted": caps}}}))
    capfilter.rewrite(str(config), bundle=True)
    spec = json.loads(config.read_text())
    assert spec["ociVersion"] == "1.0.2"
    for key in ("bounding", "effective", "permitted"):
        assert spec["process"]["capabilities"][key] == ["CAP_CHOWN", "CAP_SYS_ADMIN"]


def test_bounding_mask_decodes_names(tmp_path: Path) -> None:
    status = tmp_path / "status"
    # The CI VM's mask: every capability up to CHECKPOINT_RESTORE (40) except SYS_RESOURCE (24).
    status.write_text("Name:\tx\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n")
    names = capfilter.bounding_caps(str(status))
    assert len(names) == 40
    assert "CAP_SYS_RESOURCE" not in names
    assert {"CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"} <= names


def test_option_value_forms() -> None:
    assert capfilter.option_value(["create", "--bundle", "/b", "id"], "--bundle") == "/b"
    assert capfilter.option_value(["exec", "--process=/p.json", "id"], "--process") == "/p.json"
    assert capfilter.option_value(["state", "id"], "--bundle") is None
