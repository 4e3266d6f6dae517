#!/usr/bin/env python3
"""Grafana dashboards as code: writes roles/monitoring/files/dashboards/{llm-fleet,llm-host}.json.

Built with Grafana's own grafana-foundation-sdk (the builders are generated from Grafana's schemas; pinned in
requirements.txt), so the JSON has the shape Grafana expects. Run it after a change here and commit its output:
tests/monitoring/test_dashboards.py fails while the committed files differ from what this script writes, checks the
JSON, and parses every expression with promtool; the molecule default scenario queries every expression against
the lab's Prometheus after traffic.

Every panel works for both engines: vLLM's metric names (vLLM v0.11.0 vllm/v1/metrics/loggers.py) `or` llama.cpp's
(tools/server, `llamacpp:*`), and GPU panels use NVIDIA's DCGM exporter's names (etc/default-counters.csv).
llama.cpp has no KV-cache metric (removed upstream, PR 13660): its panel shows the share of slots busy instead.
Where llama.cpp has no histogram (time to first token), the backend's time to the first byte of a stream stands in.

  python scripts/build-dashboards.py           write the files
  python scripts/build-dashboards.py --check   exit 1 when the committed files differ
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

OUT = Path(__file__).resolve().parents[1] / "roles/monitoring/files/dashboards"
# The provisioned data source's uid (roles/monitoring/templates/grafana-datasource.yml.j2).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE = "$__rate_interval"
H = 'host=~"$host"'


def either(vllm: str, llamacpp: str) -> str:
    """vLLM's series, or llama.cpp's where the host runs llama.cpp."""
    return f"({vllm}) or ({llamacpp})"


def quantile(q: float, vllm_hist: str, fallback_hist: str, by: str) -> str:
    return either(f"histogram_quantile({q}, sum by ({by}, le) (rate({vllm_hist}_bucket{{{H}}}[{RATE}])))",
                  f"histogram_quantile({q}, sum by ({by}, le) (rate({fallback_hist}_bucket{{{H}}}[{RATE}])))")


class Layout:
    """Panels placed left to right on Grafana's grid (24 wide), a new line when one is full; ids in order."""

    def __init__(self) -> None:
        self.x, self.y, self.line_h, self.next_id = 0, 0, 0, 1

    def newline(self) -> None:
        if self.x:
            self.x, self.y, self.line_h = 0, self.y + self.line_h, 0

    def row(self, title: str) -> Row:
        self.newline()
        row = Row(title).id(self.next_id).grid_pos(GridPos(h=1, w=24, x=0, y=self.y))
        self.next_id += 1
        self.y += 1
        return row

    def place(self, panel: Timeseries | Stat, width: int = 12, height: int = 8) -> Timeseries | Stat:
        if self.x + width > 24:
            self.newline()
        panel.id(self.next_id).grid_pos(GridPos(h=height, w=width, x=self.x, y=self.y)).datasource(DATASOURCE)
        self.next_id += 1
        self.x += width
        self.line_h = max(self.line_h, height)
        return panel


def series(title: str, unit: str, description: str, *targets: tuple[str, str]) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).description(description).fill_opacity(10).line_width(1)
    for ref, (expr, legend) in zip("ABCDEFGH"[:len(targets)], targets, strict=True):
        panel.with_target(Dataquery().ref_id(ref).expr(expr).legend_format(legend).datasource(DATASOURCE))
    return panel


def single(title: str, unit: str, description: str, expr: str) -> Stat:
    return (Stat().title(title).unit(unit).description(description)
            .with_target(Dataquery().ref_id("A").expr(expr).instant().datasource(DATASOURCE)))


def host_variable(query: str) -> QueryVariable:
    return (QueryVariable("host").label("Host").datasource(DATASOURCE).query(query).definition(query)
            .multi(True).include_all(True).all_value(".*"))


def tokens_per_s(by: str) -> tuple[str, str]:
    return (either(f"sum by ({by}) (rate(vllm:generation_tokens_total{{{H}}}[{RATE}]))",
                   f"sum by ({by}) (rate(llamacpp:tokens_predicted_total{{{H}}}[{RATE}]))"), f"{{{{{by}}}}}")


def running_waiting() -> list[tuple[str, str]]:
    return [(either(f"sum by (host) (vllm:num_requests_running{{{H}}})",
                    f"sum by (host) (llamacpp:requests_processing{{{H}}})"), "{{host}} running"),
            (either(f"sum by (host) (vllm:num_requests_waiting{{{H}}})",
                    f"sum by (host) (llamacpp:requests_deferred{{{H}}})"), "{{host}} waiting")]


def fleet() -> Dashboard:
    lay = Layout()
    board = (Dashboard("LLM endpoints: fleet").uid("llm-fleet").tags(["llm-endpoints"]).refresh("30s")
             .time("now-6h", "now").timezone("browser")
             .with_variable(host_variable('label_values(up{job="llm_engine"}, host)')))
    board.with_row(lay.row("Fleet"))
    board.with_panel(lay.place(single("Engines answering", "short", "Engines whose /metrics answered the last scrape.",
                                      f'sum(up{{job="llm_engine",{H}}})'), 6, 4))
    board.with_panel(lay.place(single("Engines scraped", "short", "Engine targets Prometheus knows (llm_hosts).",
                                      f'count(up{{job="llm_engine",{H}}})'), 6, 4))
    board.with_panel(lay.place(single("Alerts firing", "short", "Alerts firing now (Alertmanager has them).",
                                      'count(ALERTS{alertstate="firing"}) or vector(0)'), 6, 4))
    # Both engines' totals added (an `or` of two label-less sums would keep only the first in a mixed fleet).
    board.with_panel(lay.place(single("Generated tokens/s", "short", "All engines of the selection together.",
                                      f"(sum(rate(vllm:generation_tokens_total{{{H}}}[5m])) or vector(0)) + "
                                      f"(sum(rate(llamacpp:tokens_predicted_total{{{H}}}[5m])) or vector(0))"), 6, 4))
    board.with_row(lay.row("Per host"))
    board.with_panel(lay.place(series("Generated tokens/s", "short", "Output tokens per second, per host.",
                                      tokens_per_s("host"))))
    board.with_panel(lay.place(series(
        "Requests running and waiting", "short", "vLLM: in the batch / waiting; llama.cpp: slots busy / deferred.",
        *running_waiting())))
    board.with_panel(lay.place(series(
        "Time to first token, p99", "s",
        "vLLM's histogram; for llama.cpp, the backend's time to the first byte of its answers.",
        (quantile(0.99, "vllm:time_to_first_token_seconds", "llm_backend_time_to_first_byte_seconds", "host"),
         "{{host}}"))))
    board.with_panel(lay.place(series(
        "GPU memory in use", "percentunit",
        "Used / (used + free + reserved) per GPU (DCGM exporter); the engine takes its configured share by design.",
        (f"max by (host, gpu) (llm:gpu_memory_used:ratio{{{H}}})", "{{host}} GPU {{gpu}}"))))
    board.with_panel(lay.place(series("GPU temperature", "celsius", "DCGM_FI_DEV_GPU_TEMP per GPU.",
                                      (f"DCGM_FI_DEV_GPU_TEMP{{{H}}}", "{{host}} GPU {{gpu}}"))))
    board.with_panel(lay.place(series(
        "Backend answers/s", "reqps", "The backend's answers per host and status.",
        (f"sum by (host, status) (rate(llm_backend_requests_total{{{H}}}[{RATE}]))", "{{host}} {{status}}"))))
    board.with_panel(lay.place(series(
        "Free space under the model cache", "percentunit",
        "Available / size of the file system holding the Hugging Face cache (node exporter).",
        (f"node_filesystem_avail_bytes{{{H}}} / node_filesystem_size_bytes{{{H}}} "
         f"and on(host, mountpoint) llm_endpoints_hf_cache_info{{{H}}}", "{{host}} {{mountpoint}}"))))
    board.with_panel(lay.place(series(
        "Containers healthy", "short", "1 while a compose service runs and passes its health check (watchdog).",
        (f"llm_stack_container_healthy{{{H}}}", "{{host}} {{service}}"))))
    board.with_row(lay.row("Usage per key"))
    board.with_panel(lay.place(series(
        "Tokens per key, each hour (every host)", "short",
        "Prompt and completion tokens each client key used in the hour up to each point, all hosts of the selection "
        "added, from the backends' counters. The shared store's usage ledger keeps the same per key and UTC day "
        "across restarts (llm_backend.py ledger).",
        (f"sum by (key_id, type) (increase(llm_backend_tokens_total{{{H}}}[1h]))", "{{key_id}} {{type}}"))))
    board.with_panel(lay.place(series(
        "Requests per key/s (every host)", "reqps", "Each client key's answered requests per second, by status.",
        (f"sum by (key_id, status) (rate(llm_backend_requests_total{{{H}}}[{RATE}]))", "{{key_id}} {{status}}"))))
    return board


def host() -> Dashboard:
    lay = Layout()
    board = (Dashboard("LLM endpoints: host").uid("llm-host").tags(["llm-endpoints"]).refresh("30s")
             .time("now-3h", "now").timezone("browser").with_variable(host_variable('label_values(up, host)')))
    board.with_row(lay.row("Engine"))
    board.with_panel(lay.place(series(
        "Tokens/s", "short", "Generated and prompt tokens per second.", tokens_per_s("host"),
        (either(f"sum by (host) (rate(vllm:prompt_tokens_total{{{H}}}[{RATE}]))",
                f"sum by (host) (rate(llamacpp:prompt_tokens_total{{{H}}}[{RATE}]))"), "{{host}} prompt"))))
    board.with_panel(lay.place(series(
        "Time to first token", "s",
        "p50, p90, p99 of vLLM's histogram; for llama.cpp, of the backend's time to the first byte of its answers.",
        *[(quantile(q, "vllm:time_to_first_token_seconds", "llm_backend_time_to_first_byte_seconds", "host"),
           f"{{{{host}}}} p{round(q * 100)}") for q in (0.5, 0.9, 0.99)])))
    llamacpp_mean = (f"sum by (host) (rate(llamacpp:tokens_predicted_seconds_total{{{H}}}[{RATE}])) "
                     f"/ sum by (host) (rate(llamacpp:tokens_predicted_total{{{H}}}[{RATE}]))")
    # vLLM's histogram starts at 10 ms: below it (an RTX 5090 decodes gpt-oss-20b at about 7 ms a token) only the
    # mean (_sum / _count) tells the time.
    board.with_panel(lay.place(series(
        "Time per output token", "s",
        "vLLM: p50 and p99 of its inter-token latency, and its mean (_sum / _count): the histogram's first bucket is "
        "10 ms, so below it (an RTX 5090 decodes gpt-oss-20b at about 7 ms a token) the quantiles cannot tell, the "
        "mean can; llama.cpp: its own mean (decode seconds per token).",
        *[(either(f"histogram_quantile({q}, sum by (host, le) "
                  f"(rate(vllm:inter_token_latency_seconds_bucket{{{H}}}[{RATE}])))", llamacpp_mean),
           f"{{{{host}}}} p{round(q * 100)}") for q in (0.5, 0.99)],
        (either(f"sum by (host) (rate(vllm:inter_token_latency_seconds_sum{{{H}}}[{RATE}])) "
                f"/ sum by (host) (rate(vllm:inter_token_latency_seconds_count{{{H}}}[{RATE}]))", llamacpp_mean),
         "{{host}} mean"))))
    board.with_panel(lay.place(series(
        "Requests running and waiting", "short", "vLLM: in the batch / waiting; llama.cpp: slots busy / deferred.",
        *running_waiting())))
    board.with_panel(lay.place(series(
        "KV cache usage (vLLM) or slots busy (llama.cpp)", "percentunit",
        "vLLM's vllm:kv_cache_usage_perc; llama.cpp exports no KV-cache metric: the share of its slots busy "
        "(llm_endpoints_engine_slots, from llm_stack's settings).",
        (either(f"max by (host) (vllm:kv_cache_usage_perc{{{H}}})",
                f"sum by (host) (llamacpp:requests_processing{{{H}}}) "
                f"/ on(host) max by (host) (llm_endpoints_engine_slots{{{H}}})"), "{{host}}"))))
    board.with_panel(lay.place(series(
        "Engine and apps healthy", "short", "1 while a compose service runs and passes its health check; "
        "the engine's /metrics answering (up).",
        (f"llm_stack_container_healthy{{{H}}}", "{{host}} {{service}}"),
        (f'up{{job="llm_engine",{H}}}', "{{host}} engine /metrics"))))
    board.with_row(lay.row("GPU (DCGM exporter)"))
    board.with_panel(lay.place(series(
        "GPU memory", "percentunit", "Used / (used + free + reserved) per GPU.",
        (f"llm:gpu_memory_used:ratio{{{H}}}", "{{host}} GPU {{gpu}}"))))
    board.with_panel(lay.place(series("GPU utilisation", "percent", "DCGM_FI_DEV_GPU_UTIL (no profiling metrics "
                                      "on GeForce cards before Blackwell).",
                                      (f"DCGM_FI_DEV_GPU_UTIL{{{H}}}", "{{host}} GPU {{gpu}}"))))
    board.with_panel(lay.place(series("GPU temperature", "celsius", "DCGM_FI_DEV_GPU_TEMP.",
                                      (f"DCGM_FI_DEV_GPU_TEMP{{{H}}}", "{{host}} GPU {{gpu}}"))))
    board.with_panel(lay.place(series("GPU power", "watt", "DCGM_FI_DEV_POWER_USAGE.",
                                      (f"DCGM_FI_DEV_POWER_USAGE{{{H}}}", "{{host}} GPU {{gpu}}"))))
    board.with_row(lay.row("Backend"))
    board.with_panel(lay.place(series(
        "Backend answers/s", "reqps", "Per route and status (4xx: clients; 5xx: the backend or the engine).",
        (f"sum by (host, route, status) (rate(llm_backend_requests_total{{{H}}}[{RATE}]))",
         "{{host}} {{route}} {{status}}"))))
    board.with_panel(lay.place(series(
        "Backend refusals (429) and requests in flight", "short", "Rate-limit refusals per second, per limit; "
        "requests being answered.",
        (f"sum by (host, limit) (rate(llm_backend_rate_limited_total{{{H}}}[{RATE}]))", "{{host}} 429 {{limit}}"),
        (f"sum by (host) (llm_backend_in_flight_requests{{{H}}})", "{{host}} in flight"))))
    board.with_panel(lay.place(series(
        "Free space under the model cache", "percentunit", "File system of the Hugging Face cache (node exporter).",
        (f"node_filesystem_avail_bytes{{{H}}} / node_filesystem_size_bytes{{{H}}} "
         f"and on(host, mountpoint) llm_endpoints_hf_cache_info{{{H}}}", "{{host}} {{mountpoint}}"))))
    return board


DASHBOARDS = {"llm-fleet": fleet, "llm-host": host}


def render(name: str) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(DASHBOARDS[name]().build()) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed file differs")
    args = parser.parse_args()
    stale = []
    for name in DASHBOARDS:
        path, text = OUT / f"{name}.json", render(name)
        json.loads(text)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run scripts/build-dashboards.py):", *stale, sep="\n  ", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
