#!/usr/bin/env python3
"""Speed at scale: an idempotent site.yml converge on 1 converged lab host and on N (default 8), in the same run.

Lab hosts are systemd containers with their own Docker engine (playbooks/lab_host.yml), named bench-1..N, with no
published ports. They are converged once (untimed, with the engine's first benchmark), then site.yml runs again:
on bench-1 alone (--limit) and on all N, each `--repeat` times, alternating. Every timed run must report 0 changed
and measure no throughput (the release is unchanged): the script checks both from the recap and the reports.
Printed: wall seconds per run (median), the ratio N hosts / 1 host, the goals (1 host <= 20 s; N hosts <= 1.5 x 1
host) met or not, and the ansible.cfg levers in effect. Figures, not a test: nothing fails on a missed goal.

The hosts run the engine only (llama.cpp with the lab's small model; --apps adds the backend and chat UI, which
costs an image build per host at the first converge). They are removed at the end unless --keep.

    .venv/bin/python benchmarks/fleet_converge.py [--hosts 8] [--repeat 3] [--apps] [--keep]
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def env(reports: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "LLM_CACHE_DIR": str(ROOT / ".cache"),
            "LLM_REPORT_DIR": str(reports), "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "ANSIBLE_NOCOLOR": "1"}


def lab_host(name: str, state: str, reports: Path) -> None:
    subprocess.run([str(BIN / "ansible-playbook"), str(ROOT / "playbooks/lab_host.yml"), "-e", f"lab_host_name={name}",
                    "-e", f"lab_host_state={state}", "-e", '{"lab_host_ports": []}'],
                   check=True, env=env(reports), capture_output=True, text=True)


def inventory(workdir: Path, hosts: list[str], apps: bool) -> Path:
    (workdir / "group_vars").symlink_to(ROOT / "inventory/lab/group_vars")
    lines = ["---", "llm_hosts:", "  hosts:"]
    for host in hosts:
        lines += [f"    {host}:", "      ansible_connection: community.docker.docker", f"      ansible_host: {host}",
                  "      ansible_python_interpreter: /usr/bin/python3"]
    flag = str(apps).lower()
    # Extra vars: above the lab's group_vars.
    (workdir / "bench-vars.yml").write_text("\n".join([
        "---", f"llm_backend_enabled: {flag}", f"llm_frontend_enabled: {flag}", "llm_throughput_concurrency: [1]",
        "llm_throughput_requests_per_level: 2", "llm_throughput_max_tokens: 16", "llm_throughput_warmup_requests: 0",
        "llm_stack_llamacpp_threads: 1"]) + "\n")
    (workdir / "hosts.yml").write_text("\n".join(lines) + "\n")
    return workdir / "hosts.yml"


def converge(hosts_file: Path, reports: Path, run_id: str, limit: str | None = None) -> tuple[float, dict]:
    command = [str(BIN / "ansible-playbook"), "-i", str(hosts_file), str(ROOT / "site.yml"),
               "-e", f"@{hosts_file.parent / 'bench-vars.yml'}", "-e", f"llm_report_run_id={run_id}"]
    command += ["--limit", limit] if limit else []
    start = time.monotonic()
    done = subprocess.run(command, env=env(reports), capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"site.yml failed ({run_id}):\n{done.stdout[-4000:]}")
    recap = {m[0]: {"changed": int(m[2]), "failed": int(m[4])} for m in RECAP.findall(done.stdout)}
    return wall, recap


def measured(reports: Path, run_id: str) -> list[str]:
    """Hosts whose report says the benchmark ran in this run."""
    return [p.stem for p in (reports / run_id).glob("*.json") if p.name != "fleet.json"
            and json.loads(p.read_text()).get("performance", {}).get("measured")]


def levers() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "ansible.cfg")
    keys = [("defaults", "forks"), ("defaults", "gathering"), ("defaults", "fact_caching"),
            ("defaults", "strategy"), ("connection", "pipelining"), ("ssh_connection", "pipelining")]
    return ", ".join(f"{s}.{k}={config.get(s, k, fallback='-')}" for s, k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--apps", action="store_true", help="backend and chat UI too")
    parser.add_argument("--keep", action="store_true", help="leave the bench hosts running")
    args = parser.parse_args()
    if not 2 <= args.hosts <= 32 or not 1 <= args.repeat <= 10:
        sys.exit("--hosts must be 2-32 and --repeat 1-10")
    names = [f"bench-{i}" for i in range(1, args.hosts + 1)]
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        workdir = Path(tmp)
        reports = workdir / "reports"
        hosts_file = inventory(workdir, names, args.apps)
        try:
            start = time.monotonic()
            for name in names:
                lab_host(name, "present", reports)
            first, _ = converge(hosts_file, reports, "first")
            print(f"{args.hosts} new lab hosts created and converged in {time.monotonic() - start:.0f} s "
                  f"(site.yml {first:.0f} s, first benchmark included)")
            one: list[float] = []
            many: list[float] = []
            for i in range(args.repeat):
                for label, limit, walls in (("one", names[0], one), ("all", None, many)):
                    run_id = f"{label}-{i}"
                    wall, recap = converge(hosts_file, reports, run_id, limit)
                    changed = {h: r["changed"] for h, r in recap.items() if r["changed"]}
                    benchmarked = measured(reports, run_id)
                    print(f"  {label:>3} run {i + 1}: {wall:6.1f} s, changed {changed or 0}, "
                          f"benchmark traffic {'on ' + ', '.join(benchmarked) if benchmarked else 'none'}")
                    walls.append(wall)
            t1, tn = statistics.median(one), statistics.median(many)
            print(f"\nidempotent converge, median of {args.repeat}: 1 host {t1:.1f} s; {args.hosts} hosts {tn:.1f} s; "
                  f"ratio {tn / t1:.2f}")
            print(f"goals: 1 host <= 20 s: {'met' if t1 <= 20 else 'NOT met'}; {args.hosts} hosts <= 1.5 x 1 host: "
                  f"{'met' if tn <= 1.5 * t1 else 'NOT met'}")
            print(f"levers: {levers()}; machine: {os.cpu_count()} CPUs")
        finally:
            if not args.keep:
                for name in names:
                    lab_host(name, "absent", reports)


if __name__ == "__main__":
    main()
