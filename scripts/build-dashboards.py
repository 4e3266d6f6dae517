#!/usr/bin/env python3
"""Grafana dashboards as code: writes roles/monitoring/files/dashboards/{llm-fleet,llm-host}.json.

Built with Grafana's own grafana-foundation-sdk (the builders are generated from Grafana's schemas; pinned in
requirements.txt), so the JSON has the shape Grafana expects. Run it after a change here and commit its output:
tests/monitoring/test_dashboards.py fails while the committed files differ from what this script writes, checks the
JSON, and parses every expression with promtool; the molecule default scenario queries every expression against
the lab's Prometheus after traffic.

Every panel works for every engine of the engine table (roles/llm_stack/vars/engine-*.yml, each row's `metrics`:
the engines' own Prometheus names, their sources cited there): one expression per engine that exports the metric,
joined by `or` (a host runs one engine), and GPU panels use NVIDIA's DCGM exporter's names (etc/default-counters.csv).
Where an engine has no KV-cache gauge (llama.cpp: removed upstream, PR 13660) its panel shows the share of its slots
busy; where an engine has no time-to-first-token histogram (llama.cpp) the backend's time to the first byte of a
stream stands in; where it has no inter-token histogram, its decode seconds over its tokens generated give the mean.

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

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "roles/monitoring/files/dashboards"
# The provisioned data source's uid (roles/monitoring/templates/grafana-datasource.yml.j2).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE = "$__rate_interval"
H = 'host=~"$host"'


def engine_rows() -> list[dict]:
    """Each engine's row of the engine table, in the engines' order (sorted by name), as the playbooks read it."""
    sys.path.insert(0, str(ROOT / ".collection"))
    from ansible_collections.llm_endpoints.core.plugins.lookup.llm_engines import engines  # noqa: PLC0415

    table = engines()
    for name, row in table.items():
        metrics = row.get("metrics") or {}
        if metrics.get("decode_seconds") and not metrics.get("generated_tokens"):
            raise SystemExit(f"engine {name}: decode_seconds needs generated_tokens (the mean is one over the other)")
    return list(table.values())


ROWS = engine_rows()
ENGINES = [row.get("metrics") or {} for row in ROWS]


def names(key: str) -> list[str]:
    """The engines' names for one metric, each once (llama.cpp's two engines share theirs), where they export it."""
    return list(dict.fromkeys(m[key] for m in ENGINES if m.get(key)))


def any_of(*exprs: str) -> str:
    """One engine's series, or the next's where the host runs another engine."""
    return " or ".join(f"({e})" for e in exprs)


def quantile(q: float, hist: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({hist}_bucket{{{H}}}[{RATE}])))"


def ttft(q: float, by: str) -> str:
    """Each engine's time-to-first-token histogram; the backend's time to first byte for an engine without one."""
    hists = names("time_to_first_token")
    if any(not m.get("time_to_first_token") for m in ENGINES):
        hists.append("llm_backend_time_to_first_byte_seconds")
    return any_of(*[quantile(q, hist, by) for hist in hists])


def decode_mean() -> list[str]:
    """The mean time per output token of the engines without an inter-token histogram: decode seconds per token."""
    pairs = dict.fromkeys((m["decode_seconds"], m["generated_tokens"]) for m in ENGINES
                          if m.get("decode_seconds") and not m.get("inter_token_latency"))
    return [f"sum by (host) (rate({seconds}{{{H}}}[{RATE}])) / sum by (host) (rate({tokens}{{{H}}}[{RATE}]))"
            for seconds, tokens in pairs]


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
    return (any_of(*[f"sum by ({by}) (rate({name}{{{H}}}[{RATE}]))" for name in names("generated_tokens")]),
            f"{{{{{by}}}}}")


def running_waiting() -> list[tuple[str, str]]:
    return [(any_of(*[f"sum by (host) ({name}{{{H}}})" for name in names(key)]), f"{{{{host}}}} {word}")
            for key, word in (("requests_running", "running"), ("requests_waiting", "waiting"))]


RUNNING_WAITING = ("Each engine's requests being answered and waiting for room (vLLM: in the batch / waiting; SGLang: "
                   "running / queued; llama.cpp: slots busy / deferred).")
TTFT = ("Each engine's time-to-first-token histogram (vLLM, SGLang); for an engine without one (llama.cpp), the "
        "backend's time to the first byte of its answers.")


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
    # Every engine's total added (an `or` of label-less sums would keep only the first in a mixed fleet).
    board.with_panel(lay.place(single("Generated tokens/s", "short", "All engines of the selection together.",
                                      " + ".join(f"(sum(rate({name}{{{H}}}[5m])) or vector(0))"
                                                 for name in names("generated_tokens"))), 6, 4))
    board.with_row(lay.row("Per host"))
    board.with_panel(lay.place(series("Generated tokens/s", "short", "Output tokens per second, per host.",
                                      tokens_per_s("host"))))
    board.with_panel(lay.place(series(
        "Requests running and waiting", "short", RUNNING_WAITING, *running_waiting())))
    board.with_panel(lay.place(series("Time to first token, p99", "s", TTFT, (ttft(0.99, "host"), "{{host}}"))))
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
        (any_of(*[f"sum by (host) (rate({name}{{{H}}}[{RATE}]))" for name in names("prompt_tokens")]),
         "{{host}} prompt"))))
    board.with_panel(lay.place(series(
        "Time to first token", "s", f"p50, p90, p99. {TTFT}",
        *[(ttft(q, "host"), f"{{{{host}}}} p{round(q * 100)}") for q in (0.5, 0.9, 0.99)])))
    # vLLM's histogram starts at 10 ms: below it (an RTX 5090 decodes gpt-oss-20b at about 7 ms a token) only the
    # mean (_sum / _count) tells the time.
    itl = names("inter_token_latency")
    board.with_panel(lay.place(series(
        "Time per output token", "s",
        "p50 and p99 of each engine's inter-token latency histogram, and its mean (_sum / _count): vLLM's first bucket "
        "is 10 ms, so below it (an RTX 5090 decodes gpt-oss-20b at about 7 ms a token) the quantiles cannot tell, the "
        "mean can; an engine without the histogram (llama.cpp): its own mean (decode seconds per token).",
        *[(any_of(*[quantile(q, hist, "host") for hist in itl], *decode_mean()), f"{{{{host}}}} p{round(q * 100)}")
          for q in (0.5, 0.99)],
        (any_of(*[f"sum by (host) (rate({hist}_sum{{{H}}}[{RATE}])) / sum by (host) (rate({hist}_count{{{H}}}[{RATE}]))"
                  for hist in itl], *decode_mean()), "{{host}} mean"))))
    board.with_panel(lay.place(series(
        "Requests running and waiting", "short", RUNNING_WAITING, *running_waiting())))
    # An engine without a KV-cache gauge whose settings metrics publish its slots (its row's `slots`).
    slots = list(dict.fromkeys(row["metrics"]["requests_running"] for row in ROWS
                               if row.get("slots") and (row.get("metrics") or {}).get("requests_running")
                               and not row["metrics"].get("kv_cache_usage")))
    board.with_panel(lay.place(series(
        "KV cache usage, or slots busy", "percentunit",
        "Each engine's KV cache usage (0-1: vLLM's vllm:kv_cache_usage_perc, SGLang's sglang:token_usage); an engine "
        "without a KV-cache metric (llama.cpp): the share of its slots busy (llm_endpoints_engine_slots, from "
        "llm_stack's settings).",
        (any_of(*[f"max by (host) ({name}{{{H}}})" for name in names("kv_cache_usage")],
                *[f"sum by (host) ({name}{{{H}}}) / on(host) max by (host) (llm_endpoints_engine_slots{{{H}}})"
                  for name in slots]), "{{host}}"))))
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
