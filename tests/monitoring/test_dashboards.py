"""The Grafana dashboards (roles/monitoring/files/dashboards, written by scripts/build-dashboards.py with Grafana's
grafana-foundation-sdk): committed as generated, valid against Grafana's own generated models, laid out on the grid,
every query on the provisioned data source, and every PromQL expression parsed by Debian's promtool. That each one
returns series from a real Prometheus after traffic is checked in the lab (molecule/default tests/test_monitoring.py).
The production provisioning (Grafana's data source, dashboard provider, env file, compose service) is rendered here
by the role's files entry point."""
from __future__ import annotations

import copy
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from llm_fixture import run_playbook

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "roles/monitoring/files/dashboards"
NAMES = ["llm-fleet", "llm-host"]
PROMTOOL = ROOT / ".cache/promtool/usr/bin/promtool"
# Grafana's variables, as Grafana would put them in before sending a query.
PLACEHOLDERS = {"$__rate_interval": "1m", "$host": ".*"}


def load(name: str) -> dict:
    return json.loads((BOARDS / f"{name}.json").read_text())


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def expressions(board: dict) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p["targets"]]


def concrete(expr: str) -> str:
    for variable, value in PLACEHOLDERS.items():
        expr = expr.replace(variable, value)
    return expr


def round_trip(board: dict) -> dict:
    return json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(copy.deepcopy(board))))


def test_the_committed_dashboards_are_the_generators_output() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts/build-dashboards.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("name", NAMES)
def test_a_dashboard_is_what_grafanas_models_read_and_write(name: str) -> None:
    board = load(name)
    assert round_trip(board) == board
    # The check can fail: a field Grafana's dashboard model does not have is lost on the way.
    broken = copy.deepcopy(board)
    broken["panels"][1]["no_such_field"] = 1
    assert round_trip(broken) != broken


@pytest.mark.parametrize("name", NAMES)
def test_panels_are_laid_out_queried_and_named(name: str) -> None:
    board = load(name)
    assert board["uid"] == name and board["title"].startswith("LLM endpoints")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        columns, lines = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = {(x, y) for x in columns for y in lines}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    datasource = yaml.safe_load((ROOT / "roles/monitoring/templates/grafana-datasource.yml.j2").read_text()
                                .replace("{{ ", "").replace(" }}", ""))["datasources"][0]
    for panel in panels(board):
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        assert all(t["datasource"]["uid"] == datasource["uid"] and t["expr"] for t in panel["targets"])
    host = next(v for v in board["templating"]["list"] if v["name"] == "host")
    assert host["includeAll"] and host["allValue"] == ".*"


def test_the_dashboards_show_what_the_issue_asks_for() -> None:
    text = json.dumps([load(n) for n in NAMES])
    for metric in ("vllm:generation_tokens_total", "llamacpp:tokens_predicted_total",
                   "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                   "vllm:inter_token_latency_seconds_sum", "vllm:inter_token_latency_seconds_count",
                   "vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting",
                   "llm:gpu_memory_used:ratio", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP",
                   "DCGM_FI_DEV_POWER_USAGE", "llm_backend_requests_total", "llm_backend_rate_limited_total"):
        assert metric in text, metric


def test_every_expression_parses(tmp_path: Path) -> None:
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing: run scripts/ensure-promtool.sh (make unit does)")
    exprs = sorted({concrete(e) for n in NAMES for e in expressions(load(n))})
    rules = {"groups": [{"name": "dashboards", "rules": [{"record": f"dashboard:expr_{i}", "expr": e}
                                                          for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboards.rules.yml").write_text(yaml.safe_dump(rules))
    check = subprocess.run([str(PROMTOOL), "check", "rules", str(tmp_path / "dashboards.rules.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout
    # promtool does fail on a bad expression.
    (tmp_path / "bad.rules.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "sum by (host (up)"}]}]}))
    assert subprocess.run([str(PROMTOOL), "check", "rules", str(tmp_path / "bad.rules.yml")],
                          capture_output=True).returncode != 0


def test_the_time_per_output_token_panel_resolves_a_decode_below_vllms_first_bucket(tmp_path: Path) -> None:
    """vLLM's inter-token histogram starts at 10 ms; an RTX 5090 decodes gpt-oss-20b at about 7 ms a token. With every
    token in the first bucket, the p50 says only "within 10 ms" (5 ms, interpolated); the panel's mean (_sum /
    _count, promtool evaluating its own expression) says 7 ms."""
    panel = next(p for p in panels(load("llm-host")) if p["title"] == "Time per output token")
    exprs = {t["legendFormat"].split()[-1]: concrete(t["expr"]) for t in panel["targets"]}
    labels = 'host="gpu-1", model_name="m"'
    series = [{"series": f'vllm:inter_token_latency_seconds_bucket{{{labels}, le="{le}"}}', "values": "0+100x10"}
              for le in ("0.01", "0.025", "+Inf")]
    series += [{"series": f"vllm:inter_token_latency_seconds_count{{{labels}}}", "values": "0+100x10"},
               {"series": f"vllm:inter_token_latency_seconds_sum{{{labels}}}", "values": "0+0.7x10"}]
    # Rounded to 0.1 ms: promtool compares floats exactly.
    (tmp_path / "panel.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "panel", "rules": [
        {"record": f"panel:{name}", "expr": f"round(({expr}) * 10000) / 10000"} for name, expr in exprs.items()]}]}))
    expected = {"mean": 0.007, "p50": 0.005}
    (tmp_path / "panel.test.yml").write_text(yaml.safe_dump({
        "rule_files": ["panel.rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
            {"expr": f"panel:{name}", "eval_time": "5m",
             "exp_samples": [{"labels": f'panel:{name}{{host="gpu-1"}}', "value": value}]}
            for name, value in expected.items()]}]}))
    test = subprocess.run([str(PROMTOOL), "test", "rules", "panel.test.yml"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert test.returncode == 0, test.stdout + test.stderr


GRAFANA_PASSWORD = "grafana-admin-pass-0123456789"


def test_production_grafana_is_provisioned_with_the_dashboards(tmp_path: Path) -> None:
    out = tmp_path / "monitoring"
    run = run_playbook(tmp_path, "monitoring_config.yml", {
        "monitoring_test_entry": "files", "monitoring_dir": str(out),
        "monitoring_grafana_admin_password": GRAFANA_PASSWORD,
        "monitoring_test_hosts": [{"name": "gpu-1", "address": "10.0.0.1", "gpu": True}]})
    assert run.rc == 0, run.output[-4000:]
    assert GRAFANA_PASSWORD not in run.output
    source = yaml.safe_load((out / "grafana/provisioning/datasources/llm-endpoints.yml").read_text())["datasources"][0]
    assert (source["uid"], source["type"], source["url"]) == ("prometheus", "prometheus", "http://127.0.0.1:9090")
    provider = yaml.safe_load((out / "grafana/provisioning/dashboards/llm-endpoints.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    for name in NAMES:
        assert (out / f"grafana/dashboards/{name}.json").read_text() == (BOARDS / f"{name}.json").read_text()
    secret = out / "grafana/admin-password"
    assert secret.read_text() == GRAFANA_PASSWORD  # as it is: Grafana reads the file (GF_..._PASSWORD__FILE)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.stat().st_uid == 472
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    assert compose["name"] == "llm-monitoring"
    assert sorted(compose["services"]) == ["alertmanager", "grafana", "prometheus"]
    grafana = compose["services"]["grafana"]
    assert grafana["image"] == "grafana/grafana:13.2.0" and "env_file" not in grafana
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana-admin-password"
    assert f"{out}/grafana/admin-password:/run/secrets/grafana-admin-password:ro" in grafana["volumes"]
    assert f"{out}/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    assert compose["services"]["prometheus"]["image"] == "prom/prometheus:v3.14.0"
    assert GRAFANA_PASSWORD not in (out / "docker-compose.yml").read_text()


def test_grafana_without_a_password_is_refused_without_writing(tmp_path: Path) -> None:
    out = tmp_path / "monitoring"
    run = run_playbook(tmp_path, "monitoring_config.yml", {
        "monitoring_test_entry": "files", "monitoring_dir": str(out), "monitoring_grafana_admin_password": "short",
        "monitoring_test_hosts": [{"name": "gpu-1", "address": "10.0.0.1"}]})
    assert run.rc != 0
    assert "monitoring_grafana_admin_password must be at least 12 characters" in run.output, run.output[-3000:]
    assert not out.exists()


def test_every_engine_of_the_table_fills_the_dashboards() -> None:
    # Each engine's own names, as its row of the engine table gives them (SGLang's too): the generator reads the rows.
    text = json.dumps([load(n) for n in NAMES])
    for path in sorted((ROOT / "roles/llm_stack/vars").glob("engine-*.yml")):
        metrics = yaml.safe_load(path.read_text())["__llm_stack_engine_info"]["metrics"]
        assert {"generated_tokens", "prompt_tokens", "requests_running", "requests_waiting"} <= set(metrics), path.name
        for key, name in metrics.items():
            assert name in text, f"{path.name}: {key} {name}"


def test_the_fleets_token_rate_adds_every_engine(tmp_path: Path) -> None:
    # A mixed fleet: a vLLM host making 10 tokens a minute, a llama.cpp host 5, an SGLang host 15. The fleet's total
    # is their sum (promtool evaluates the panel's expression over these series).
    stat = next(p for p in panels(load("llm-fleet")) if p["type"] == "stat" and p["title"] == "Generated tokens/s")
    (tmp_path / "empty.rules.yml").write_text("groups: []\n")
    (tmp_path / "fleet.test.yml").write_text(yaml.safe_dump({
        "rule_files": ["empty.rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m",
                   "input_series": [{"series": 'vllm:generation_tokens_total{host="gpu-1"}', "values": "0+10x10"},
                                    {"series": 'llamacpp:tokens_predicted_total{host="cpu-1"}', "values": "0+5x10"},
                                    {"series": 'sglang:generation_tokens_total{host="gpu-2"}', "values": "0+15x10"}],
                   "promql_expr_test": [{"expr": concrete(stat["targets"][0]["expr"]), "eval_time": "10m",
                                         "exp_samples": [{"labels": "{}", "value": 0.5}]}]}]}))
    test = subprocess.run([str(PROMTOOL), "test", "rules", "fleet.test.yml"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
