"""llm_report's plots: drawn once per set of figures, copied from the control node's cache when a later run reports
the same figures again (a run that did not measure), drawn again when anything shown differs; the report root holds
runs only."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("plot_report", ROOT / "roles/llm_report/files/plot_report.py")
assert spec and spec.loader
plot_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_report)

PNG = b"\x89PNG\r\n\x1a\n"


def report(tps: float) -> dict:
    levels = [{"max_concurrency": c, "output_throughput": tps * c, "mean_tpot_ms": 10.0 * c} for c in (1, 2)]
    return {"host": "h1", "deployment": {"served_model_name": "m", "engine": "llamacpp_cpu"},
            "performance": {"levels": levels}}


def run(root: Path, run_id: str, reports: dict[str, dict], capsys: pytest.CaptureFixture[str]) -> str:
    run_dir = root / "reports" / run_id
    run_dir.mkdir(parents=True)
    for host, data in reports.items():
        (run_dir / f"{host}.json").write_text(json.dumps(data))
    assert plot_report.main(str(run_dir), str(root / "cache" / "plots")) == 0
    assert not [p for p in (root / "reports").iterdir() if p.name.startswith(".")]
    return capsys.readouterr().out


def test_same_figures_are_copied_and_new_ones_drawn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "1 plot(s) drawn, 0 copied" in run(tmp_path, "r1", {"h1": report(50.0)}, capsys)
    first = (tmp_path / "reports/r1/h1.png").read_bytes()
    assert first[:8] == PNG
    assert "0 plot(s) drawn, 1 copied" in run(tmp_path, "r2", {"h1": report(50.0)}, capsys)
    assert (tmp_path / "reports/r2/h1.png").read_bytes() == first
    assert "1 plot(s) drawn, 0 copied" in run(tmp_path, "r3", {"h1": report(51.0)}, capsys)
    assert (tmp_path / "reports/r3/h1.png").read_bytes()[:8] == PNG
    assert len(list((tmp_path / "cache/plots").glob("*.png"))) == 2
    assert not list((tmp_path / "cache/plots").glob(".*"))


def test_a_host_without_figures_gets_no_plot_and_old_plots_are_pruned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plot_report, "KEEP", 1)
    empty = {**report(1.0), "performance": {"levels": []}}
    assert "1 plot(s) drawn" in run(tmp_path, "r1", {"h1": report(50.0), "h2": empty}, capsys)
    assert not (tmp_path / "reports/r1/h2.png").exists()
    run(tmp_path, "r2", {"h1": report(60.0)}, capsys)
    assert len(list((tmp_path / "cache/plots").glob("*.png"))) == 1
