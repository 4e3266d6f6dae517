"""Verify the lab's monitoring (roles/monitoring) on the converged host: Prometheus scrapes every target of the
inventory, the engine's and backend's counters rose with the converge's checks, the exporters' text files and the
SIMULATED DCGM exporter's GPU series are there, and the engine-down alert, which the side effect saw reach
Alertmanager while the engine was stopped, has resolved. Runs after tests/test_default.py (file order)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from testinfra.host import Host

PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
STACK = "docker compose --project-directory /opt/llm-stack"
BOARDS = Path(__file__).resolve().parents[3] / "roles/monitoring/files/dashboards"
BACKEND_KEY = os.environ["LLM_BACKEND_API_KEY"]
ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
# The test artifact; with LLM_UPDATE_SCREENSHOT=1 also the README's picture (as
# apps/frontend/tests/test_chat_ui.py does).
SCREENSHOTS = (ROOT / ".cache/artifacts/prometheus-targets.png", ROOT / "docs/images/prometheus-targets.png")
# molecule/default/host_vars: scrape and evaluation every 5 s (the engine-down window, 20 s, is judged by
# side_effect.yml).
SCRAPE_S, EVAL_S = 5, 5


def get(host: Host, url: str) -> dict:
    out = host.check_output(f"curl -sS --max-time 20 '{url}'")
    return json.loads(out)


def query(host: Host, promql: str) -> list[dict]:
    answer = get(host, f"{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture(scope="module", autouse=True)
def settled(host: Host) -> None:
    """The watchdog test just before (tests/test_default.py) restarted the engine: wait until Docker's health check
    passes again and Prometheus has scraped the engine and the watchdog's text file since (at most 120 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        engine_up = query(host, 'up{job="llm_engine"} == 1')
        healthy = query(host, 'llm_stack_container_healthy{service=~"engine|backend"} == 1')
        if engine_up and len(healthy) == 2:
            return
        time.sleep(2)
    pytest.fail(f"the engine did not settle within 120 s: up {query(host, 'up')}, "
                f"healthy {query(host, 'llm_stack_container_healthy')}")


def test_prometheus_and_alertmanager_run_as_the_monitoring_project(host: Host) -> None:
    out = host.check_output("docker compose --project-directory /opt/llm-monitoring ps --format json")
    states = {s["Service"]: s["State"] for s in (json.loads(line) for line in out.splitlines() if line.strip())}
    assert states == {"prometheus": "running", "alertmanager": "running"}
    assert host.file("/opt/llm-monitoring/alertmanager/alertmanager.yml").mode == 0o600


def test_every_target_of_the_inventory_is_up(host: Host) -> None:
    targets = get(host, f"{PROMETHEUS}/api/v1/targets?state=active")["data"]["activeTargets"]
    seen = {(t["labels"]["job"], t["labels"]["host"]): t for t in targets}
    assert set(seen) == {("llm_engine", "molecule-bookworm"), ("llm_backend", "molecule-bookworm"),
                         ("node", "molecule-bookworm"), ("dcgm", "molecule-bookworm")}
    for key, target in seen.items():
        assert target["health"] == "up", (key, target["lastError"])
    # The engine (llama.cpp) has a key: its /metrics was scraped with it.
    assert seen[("llm_engine", "molecule-bookworm")]["scrapePool"] == "llm_engine:molecule-bookworm"


def test_the_engines_and_backends_counters_rose_with_the_checks(host: Host) -> None:
    # Prometheus started before the checks of the converge (site.yml: monitoring before verify), and the idempotence
    # run's checks came later still: the first sample is below the last.
    for counter in ("llamacpp:tokens_predicted_total", "llamacpp:n_decode_total",
                    'sum(llm_backend_requests_total{route="/v1/chat/completions"})'):
        rose = query(host, f"max_over_time(({counter})[2h:{SCRAPE_S}s]) - min_over_time(({counter})[2h:{SCRAPE_S}s])")
        assert rose and float(rose[0]["value"][1]) > 0, (counter, rose)


def test_the_text_files_and_the_simulated_gpu_are_scraped(host: Host) -> None:
    healthy = {r["metric"]["service"]: r["value"][1] for r in query(host, "llm_stack_container_healthy")}
    assert healthy["engine"] == "1" and healthy["backend"] == "1"
    cache = query(host, "llm_endpoints_hf_cache_info")
    assert cache and cache[0]["metric"]["path"] == "/var/lib/llm-stack/hf-cache"
    # The model cache's file system is measured (the lab's node exporter keeps overlay file systems).
    assert query(host, "node_filesystem_avail_bytes and on(host, mountpoint) llm_endpoints_hf_cache_info")
    gpu = query(host, "DCGM_FI_DEV_FB_USED")
    assert gpu and gpu[0]["metric"]["modelName"] == "NVIDIA GeForce RTX 5090"
    assert gpu[0]["metric"]["Hostname"] == "molecule-bookworm"
    # The exporter collects the role's counters list (a compose config in the release, DCGM_EXPORTER_COLLECTORS):
    # the power limit GPUPowerHigh compares with is there, 575 W as the simulated RTX 5090 reports it.
    limit = query(host, "DCGM_FI_DEV_ENFORCED_POWER_LIMIT")
    assert [r["value"][1] for r in limit] == ["575"], limit
    assert query(host, "llm:gpu_memory_used:ratio")


def test_the_alert_rules_are_loaded(host: Host) -> None:
    groups = get(host, f"{PROMETHEUS}/api/v1/rules?type=alert")["data"]["groups"]
    alerts = {r["name"] for g in groups for r in g["rules"]}
    assert {"LLMEngineDown", "LLMEngineNotReady", "GPUMemoryAboveExpected", "HFCacheDiskFilling"} <= alerts
    assert len(alerts) == 16


def panels_without_series(host: Host) -> list[str]:
    empty = []
    for board in sorted(BOARDS.glob("*.json")):
        for panel in json.loads(board.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "5m").replace("$host", ".*")
                if not query(host, expr):
                    empty.append(f"{board.stem} / {panel['title']} / {target['refId']}: {expr}")
    return empty


def test_every_dashboard_panel_returns_series_after_traffic(host: Host) -> None:
    # Traffic through the backend (streamed, so the backend records its time to first byte) and the engine, then
    # every expression of every panel, with Grafana's variables put in, returns at least one series: within two
    # scrapes (a wait on the series, bounded, where a fixed sleep of two scrapes was: most are there at once).
    body = json.dumps({"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_tokens": 16, "stream": True,
                       "messages": [{"role": "user", "content": "안녕하세요! 한 문장으로 답해 주세요."}]})
    for _ in range(3):
        host.check_output(f"curl -sS --max-time 120 -o /dev/null http://127.0.0.1:8080/v1/chat/completions "
                          f"-H 'Content-Type: application/json' -H 'Authorization: Bearer {BACKEND_KEY}' -d '{body}'")
    deadline = time.monotonic() + 2 * SCRAPE_S + 1
    while (empty := panels_without_series(host)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not empty, "panels without series:\n" + "\n".join(empty)


def test_the_report_links_the_hosts_monitoring(host: Host) -> None:
    newest = sorted(Path(os.environ["LLM_REPORT_DIR"]).iterdir())[-1]
    links = json.loads((newest / "molecule-bookworm.json").read_text())["monitoring"]
    # Debian's Prometheus 2.42 (the lab's) serves its pages under /classic (monitoring_prometheus_ui_path).
    assert links["targets"] == f"{PROMETHEUS}/classic/targets" and links["alertmanager"] == ALERTMANAGER
    query_url = urllib.parse.unquote(links["host_query"])
    assert query_url == f'{PROMETHEUS}/classic/graph?g0.expr=up{{host="molecule-bookworm"}}'
    assert links["host_dashboard"] is None  # no Grafana in the lab
    report = (newest / "molecule-bookworm.md").read_text()
    # The links answer (from the test host: the lab publishes these ports on 127.0.0.1 there).
    for url in (links["targets"], links["host_query"]):
        assert host.run(f"curl -sf -o /dev/null '{url}'").rc == 0, url
    assert f"| This host's targets in Prometheus | {links['host_query']} |" in report


def test_a_screenshot_of_the_targets_page_is_taken_in_headless_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: scripts/ensure-chromium.sh installs Debian's (make test does)")
    from playwright.sync_api import sync_playwright

    # The lab host's Prometheus from this machine: the test host's address on Docker's network (the lab publishes
    # it on 127.0.0.1:9090 instead). Debian's Prometheus 2.42 serves its classic pages.
    address = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                              "molecule-bookworm"], capture_output=True, text=True, check=True).stdout.strip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://{address}:9090/classic/targets", timeout=30_000)
            text = page.inner_text("body")
            # The engine and the backend each scraped with their own key or token: a pool per host.
            for pool in ("llm_engine:molecule-bookworm", "llm_backend:molecule-bookworm", "node", "dcgm"):
                assert f"{pool} (1/1 up)" in text, text[:2000]
            SCREENSHOTS[0].parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS[0]), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOTS[0].stat().st_size > 10_000
    if os.environ.get("LLM_UPDATE_SCREENSHOT") == "1":
        shutil.copy(SCREENSHOTS[0], SCREENSHOTS[1])


def engine_down_alerts(host: Host) -> list[dict]:
    filters = urllib.parse.quote('alertname="LLMEngineDown"')
    return get(host, f"{ALERTMANAGER}/api/v2/alerts?active=true&filter={filters}")


# The side effect (side_effect.yml) stopped the engine and saw LLMEngineDown reach Alertmanager within its window,
# then site.yml started the engine again: the alert has resolved, and Prometheus remembers that it fired.
def test_the_engine_down_alert_fired_and_resolved_for_real(host: Host) -> None:
    firing = 'ALERTS{alertname="LLMEngineDown",alertstate="firing",host="molecule-bookworm"}'
    fired = query(host, f"max_over_time({firing}[2h:{EVAL_S}s])")
    assert fired and fired[0]["value"][1] == "1", "LLMEngineDown never fired (the side effect stops the engine)"
    # Resolved: the scrape after the engine came back finds it up, the evaluation after resolves it (long ago, unless
    # the verify came right after).
    deadline = time.monotonic() + 90
    while engine_down_alerts(host) and time.monotonic() < deadline:
        time.sleep(1)
    assert not engine_down_alerts(host), "LLMEngineDown still active 90 s after the engine served again"
