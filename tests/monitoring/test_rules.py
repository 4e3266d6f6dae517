"""The site's Prometheus and Alertmanager configuration (roles/monitoring, tasks_from: config) rendered for a
simulated fleet, checked by Debian's own promtool and amtool (scripts/ensure-promtool.sh), and every alert rule
unit-tested with `promtool test rules` (tests/monitoring/rules.test.yml)."""
from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from llm_fixture import Cases, run_cases, run_playbook

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".cache/promtool/usr/bin"
RULES_TEST = Path(__file__).with_name("rules.test.yml")
# The role's defaults, written out: rules.test.yml's expectations are these numbers.
THRESHOLDS = {
    "monitoring_evaluation_interval_s": 15, "monitoring_alert_engine_down_for_s": 60,
    "monitoring_alert_gpu_memory_margin": 0.04, "monitoring_alert_gpu_memory_for_s": 300,
    "monitoring_alert_kv_cache_usage": 0.9, "monitoring_alert_kv_cache_for_s": 300,
    "monitoring_alert_queue_for_s": 600, "monitoring_alert_ttft_p99_s": 2.0, "monitoring_alert_tpot_p99_s": 0.1,
    "monitoring_alert_latency_for_s": 600, "monitoring_alert_gpu_temperature_c": 85,
    "monitoring_alert_gpu_power_limit_ratio": 0.95, "monitoring_alert_gpu_power_w": 600,
    "monitoring_alert_gpu_for_s": 300, "monitoring_alert_disk_free_ratio": 0.1,
    "monitoring_alert_disk_for_s": 600, "monitoring_alert_backend_5xx_ratio": 0.05,
    "monitoring_alert_backend_rate_limited_per_s": 1.0, "monitoring_alert_backend_for_s": 300,
    "monitoring_alert_limits_store_for_s": 180, "monitoring_alert_front_door_for_s": 60,
    "monitoring_alert_target_down_for_s": 300}
# gpu-1 runs the backend, so its engine is on loopback unless bound to a site address; cpu-1's engine has a key
# (llama.cpp's /metrics asks for it).
ENGINE_KEY = "engine-key-of-cpu-1-0123456789abcdef"
METRICS_TOKEN = "metrics-token-of-gpu-1-0123456789"
# gpu-2 did not describe itself (outside --limit or unreachable): its targets come from the inventory and
# llm_defaults' defaults as they are on that host.
FLEET = [{"name": "gpu-1", "address": "10.0.0.1", "backend": True, "gpu": True, "engine_bind": "10.0.0.1",
          "metrics_token": METRICS_TOKEN},
         {"name": "gpu-2", "address": "gpu-2.example.net", "gpu": True, "undescribed": True},
         {"name": "cpu-1", "address": "fd00::3", "engine_key": ENGINE_KEY}]


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/ensure-promtool.sh (make unit does)")
    return str(path)


def render(tmp_path: Path, fleet: list[dict] | None = None, **extra: object) -> tuple[Path, str, int]:
    out = tmp_path / "monitoring"
    run = run_playbook(tmp_path, "monitoring_config.yml",
                       {"monitoring_test_hosts": fleet or FLEET, "monitoring_dir": str(out), **THRESHOLDS, **extra})
    return out, run.output, run.rc


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, output, rc = render(tmp_path_factory.mktemp("rules"))
    assert rc == 0, output[-4000:]
    (out.parent / "run.log").write_text(output)
    return out


def test_promtool_accepts_the_configuration_and_rules(rendered: Path) -> None:
    check = subprocess.run([tool("promtool"), "check", "config", str(rendered / "prometheus/prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout


def test_every_alert_rule_passes_its_unit_tests(rendered: Path) -> None:
    rules_dir = rendered / "prometheus/rules"
    shutil.copy(RULES_TEST, rules_dir / "rules.test.yml")
    test = subprocess.run([tool("promtool"), "test", "rules", "rules.test.yml"], cwd=rules_dir,
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_every_alert_has_a_firing_and_a_quiet_case(rendered: Path) -> None:
    rules = yaml.safe_load((rendered / "prometheus/rules/llm-endpoints.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = [c for t in yaml.safe_load(RULES_TEST.read_text())["tests"] for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    # Firing: the expected alerts exactly (the other hosts' series in the same input must not fire). Quiet: none
    # while the condition has not held for its window, or never held.
    assert alerts == firing, f"alerts without a firing case: {alerts - firing}; unknown: {firing - alerts}"
    assert alerts == quiet, f"alerts without a quiet case: {alerts - quiet}"
    assert len(alerts) == 16


def test_targets_come_from_the_inventory_group(rendered: Path) -> None:
    config = yaml.safe_load((rendered / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: [(s["labels"]["host"], s["targets"]) for s in j["static_configs"]]
            for j in config["scrape_configs"]}
    assert jobs["llm_engine"] == [("gpu-1", ["10.0.0.1:8000"]), ("gpu-2", ["gpu-2.example.net:8000"])]
    assert jobs["llm_engine:cpu-1"] == [("cpu-1", ["[fd00::3]:8000"])]  # its own job: it sends the key
    assert jobs["node"] == [("gpu-1", ["10.0.0.1:9100"]), ("gpu-2", ["gpu-2.example.net:9100"]),
                            ("cpu-1", ["[fd00::3]:9100"])]
    assert jobs["llm_backend:gpu-1"] == [("gpu-1", ["10.0.0.1:8080"])]  # where the backend runs, with its token
    assert jobs["dcgm"] == [("gpu-1", ["10.0.0.1:9400"]), ("gpu-2", ["gpu-2.example.net:9400"])]  # GPU hosts
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]


def test_a_host_that_did_not_describe_itself_is_scraped_where_its_settings_say(rendered: Path) -> None:
    # gpu-2's targets (test_targets_come_from_the_inventory_group) are those its own description would give.
    assert ("Not described in this run (outside --limit or unreachable): gpu-2."
            in (rendered.parent / "run.log").read_text())


def test_behind_a_front_door_services_are_scraped_on_internal_addresses_and_haproxy_too(tmp_path: Path) -> None:
    # gpu-2 did not describe itself: behind a front door its services listen on its internal address all the same.
    fleet = [{"name": "gpu-1", "address": "gpu-1.example.net", "internal": "10.0.0.1", "backend": True,
              "metrics_token": METRICS_TOKEN},
             {"name": "gpu-2", "address": "gpu-2.example.net", "internal": "10.0.0.2", "backend": True,
              "metrics_token": METRICS_TOKEN, "undescribed": True}]
    doors = [{"name": "edge-1", "address": "edge-1.example.net", "internal": "10.0.0.9"},
             {"name": "edge-2", "address": "edge-2.example.net", "internal": "10.0.0.10", "metrics_port": 0}]
    out, output, rc = render(tmp_path, fleet, monitoring_test_front_doors=doors, llm_front_door_group="front_doors")
    assert rc == 0, output[-4000:]
    config = yaml.safe_load((out / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: [(s["labels"]["host"], s["targets"]) for s in j["static_configs"]]
            for j in config["scrape_configs"]}
    # The engine and the backend listen on the host's internal address (and loopback): scraped there, not on the
    # address Ansible reaches the host by; the exporters listen on every address.
    assert jobs["llm_engine"] == [("gpu-1", ["10.0.0.1:8000"]), ("gpu-2", ["10.0.0.2:8000"])]
    assert jobs["llm_backend:gpu-1"] == [("gpu-1", ["10.0.0.1:8080"])]
    assert jobs["llm_backend:gpu-2"] == [("gpu-2", ["10.0.0.2:8080"])]
    assert jobs["node"] == [("gpu-1", ["gpu-1.example.net:9100"]), ("gpu-2", ["gpu-2.example.net:9100"])]
    # HAProxy's own metrics on each front door's internal address (none where its metrics port is 0).
    assert jobs["front_door"] == [("edge-1", ["10.0.0.9:8405"])]


def test_an_engine_key_is_sent_from_a_private_file_and_the_job_keeps_its_name(rendered: Path) -> None:
    job = next(j for j in yaml.safe_load((rendered / "prometheus/prometheus.yml").read_text())["scrape_configs"]
               if j["job_name"] == "llm_engine:cpu-1")
    key_file = rendered / "prometheus" / job["authorization"]["credentials_file"]
    assert key_file.read_text() == ENGINE_KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_file.stat().st_uid == 65534
    assert job["relabel_configs"] == [{"target_label": "job", "replacement": "llm_engine"}]
    assert ENGINE_KEY not in (rendered / "prometheus/prometheus.yml").read_text()


def test_a_backends_metrics_are_scraped_with_its_token_from_a_private_file(rendered: Path) -> None:
    job = next(j for j in yaml.safe_load((rendered / "prometheus/prometheus.yml").read_text())["scrape_configs"]
               if j["job_name"] == "llm_backend:gpu-1")
    token_file = rendered / "prometheus" / job["authorization"]["credentials_file"]
    assert token_file.name == "gpu-1.backend-token" and token_file.read_text() == METRICS_TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and token_file.stat().st_uid == 65534
    assert job["relabel_configs"] == [{"target_label": "job", "replacement": "llm_backend"}]
    assert METRICS_TOKEN not in (rendered / "prometheus/prometheus.yml").read_text()


def test_the_key_of_a_host_that_left_the_group_is_removed(tmp_path: Path) -> None:
    out, output, rc = render(tmp_path)
    assert rc == 0, output[-3000:]
    assert (out / "prometheus/secrets/cpu-1.engine-key").exists()
    out, output, rc = render(tmp_path, [h for h in FLEET if h["name"] != "cpu-1"])
    assert rc == 0, output[-3000:]
    assert not (out / "prometheus/secrets/cpu-1.engine-key").exists()
    assert "llm_engine:cpu-1" not in (out / "prometheus/prometheus.yml").read_text()


def test_alertmanager_configuration_is_valid_and_private(tmp_path: Path) -> None:
    hook = "https://hooks.example.net/services/T000/B000/secret-token-0123"
    out, output, rc = render(tmp_path, monitoring_alertmanager_webhook_urls=[hook])
    assert rc == 0, output[-4000:]
    config = out / "alertmanager/alertmanager.yml"
    check = subprocess.run([tool("amtool"), "check-config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert yaml.safe_load(config.read_text())["receivers"][0]["webhook_configs"][0]["url"] == hook
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert hook not in output and ENGINE_KEY not in output


# Each refused input, and a service published on another host's loopback: one site per case, all in one run.
BAD_INPUTS = [
    ("monitoring_alert_kv_cache_usage", 1.5, "a number from 0 to 1"),
    ("monitoring_alert_engine_down_for_s", "1m", "a whole number from 0 to 86400"),
    ("monitoring_scrape_interval_s", 0, "a whole number from 1 to 300"),
    ("monitoring_alert_gpu_power_w", "600; rm -rf /", "a number from 10 to 5000"),
    ("monitoring_alert_gpu_power_limit_ratio", 1.2, "a number from 0.5 to 1"),
    ("monitoring_dir", "relative/dir", "an absolute path"),
    ("monitoring_bind_address", "0.0.0.0:9090", "an IPv4 address"),
    ("monitoring_hosts_group", "no_such_group", "an inventory group with hosts"),
    ("monitoring_image_archives", ["images/prometheus.tar"], "a list of absolute paths of .tar archives"),
    ("monitoring_image_archives", ["/srv/images/prometheus.tgz"], "a list of absolute paths of .tar archives"),
    ("monitoring_alertmanager_webhook_urls", ["https://user:s3cret-pass@hooks.example.net/alert"],
     "a list of http(s) URLs"),
    # lo-1 runs the backend, so its engine is on 127.0.0.1 by default: another host's Prometheus cannot reach it.
    ("monitoring_hosts_group", "loopback_fleet", "lo-1: llm_stack_bind_address"),
]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, Path]:
    work = tmp_path_factory.mktemp("refusals")
    cases = {f"site-{index}": {"monitoring_dir": str(work / f"site-{index}"), "monitoring_hosts_group": "fleet",
                               **THRESHOLDS, variable: value}
             for index, (variable, value, _) in enumerate(BAD_INPUTS)}
    fleets = {"fleet": FLEET, "loopback_fleet": [{"name": "lo-1", "address": "10.0.0.9", "backend": True}]}
    runs = run_cases(work, "monitoring_cases.yml", cases, extravars={"monitoring_test_fleets": fleets})
    return runs, work


@pytest.mark.parametrize(("index", "variable", "want"), [(i, v, w) for i, (v, _, w) in enumerate(BAD_INPUTS)],
                         ids=[f"{i}-{v}" for i, (v, _, _) in enumerate(BAD_INPUTS)])
def test_a_bad_input_is_refused_by_name_before_anything_is_written(refusals: tuple[Cases, Path], index: int,
                                                                   variable: str, want: str) -> None:
    runs, work = refusals
    site, output = f"site-{index}", runs.hosts[f"site-{index}"]
    assert site in runs.failed, output[-3000:]
    assert want in output, output[-3000:]
    assert variable in output or want.startswith("lo-1:"), output[-3000:]  # the loopback case names the bind variable
    assert "s3cret-pass" not in runs.output
    assert not (work / site).exists()
