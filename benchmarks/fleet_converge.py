#!/usr/bin/env python3
"""Speed at scale: an idempotent site.yml converge on 1 converged lab host and on N (default 8), in the same run;
with --sizes, on each of several fleet sizes (1,4,8: the control node's CPU seconds per host at each).

Lab hosts are systemd containers with their own Docker engine (playbooks/lab_host.yml), named bench-1..N, with no
published ports. They are converged once (untimed, with the engine's first benchmark), then site.yml runs again:
on bench-1 alone (--limit) and on all N, each `--repeat` times, alternating. Every timed run must report 0 changed
and measure no throughput (the release is unchanged): the script checks both from the recap and the reports.
Printed: wall seconds per run (median), the ratio N hosts / 1 host, the goals (1 host <= 20 s; N hosts <= 1.5 x 1
host) met or not, the control node's CPU seconds per host at each size (ansible-playbook, its workers and the
`docker exec` or ssh clients they start; not the modules, which run in the hosts; the main process alone beside it),
and the ansible.cfg levers in effect. Figures, not a test: nothing fails on a missed goal.

The hosts run the engine only (llama.cpp with the lab's small model; --apps adds the backend and chat UI, which
costs an image build per host at the first converge). They are removed at the end unless --keep.

With --mitogen, each timed run is done twice: as above, and with Mitogen for Ansible's strategy (mitogen_linear,
one Python interpreter kept per host instead of one started per task; the hosts then use the connection name
`docker`, which Mitogen replaces by its own). Both sets of figures are printed, from the same hosts and run.

Every timed run is site.yml as it is: each host, unchanged since the first converge's record, is checked in one call
(roles/host_state) and sits out the other plays. With --whole the same runs follow with -e host_state_enabled=false,
every role on every host (the cost before 0.4.0, and of a host that changed), figures side by side.

With --connection ssh the hosts are reached over SSH, as a fleet is (openssh-server is installed in each lab host
first, untimed), instead of by `docker exec`, the lab's way: each module then costs an SSH channel on a kept master
connection instead of a new `docker exec`.

    .venv/bin/python benchmarks/fleet_converge.py [--hosts 8] [--sizes 1,4,8] [--repeat 3] [--apps] [--keep]
                                                  [--profile] [--mitogen] [--whole] [--connection docker|ssh]
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import re
import resource
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
        "llm_stack_llamacpp_threads: 1",
        # Every idle lab host's watchdog (docker ps and inspect every 5 s by default) runs on the same 2 CPUs as the
        # converge: 8 of them took a quarter of the machine (measured). Every 30 s here; on a fleet each host's
        # watchdog runs on its own CPUs.
        "llm_stack_watchdog_interval_s: 30",
        # The figures are the stack's (as before monitoring existed): its exporters and Prometheus stay off.
        "monitoring_enabled: false"]) + "\n")
    (workdir / "hosts.yml").write_text("\n".join(lines) + "\n")
    # Mitogen replaces the connections it knows by their short names (docker, ssh), not community.docker.docker.
    (workdir / "hosts-mitogen.yml").write_text("\n".join(lines).replace("community.docker.docker", "docker") + "\n")
    return workdir / "hosts.yml"


def ssh_inventory(workdir: Path, hosts: list[str]) -> None:
    """--connection ssh: hosts.yml (and hosts-mitogen.yml) reach the lab hosts over SSH, as a fleet is reached. Each
    host gets Debian's openssh-server (installed untimed, from the host's own apt sources) and a key made for this
    run (in the run's temporary directory: with --keep the hosts stay, reachable by docker exec only); Ansible's ssh
    connection keeps one master connection per host (ControlPersist, its default)."""
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    lines = ["---", "llm_hosts:", "  hosts:"]
    for host in hosts:
        done = subprocess.run(["docker", "exec", host, "sh", "-ec",
                               "apt-get update -qq; "
                               "DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server; "
                               "systemctl enable --now ssh; install -d -m 0700 /root/.ssh"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"SSH could not be set up in {host}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        subprocess.run(["docker", "cp", f"{key}.pub", f"{host}:/root/.ssh/authorized_keys"], check=True)
        subprocess.run(["docker", "exec", host, "chown", "root:root", "/root/.ssh/authorized_keys"], check=True)
        address = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} "
                                  "{{end}}", host], check=True, capture_output=True, text=True).stdout.split()[0]
        lines += [f"    {host}:", "      ansible_connection: ssh", f"      ansible_host: {address}",
                  "      ansible_user: root", f"      ansible_ssh_private_key_file: {key}",
                  "      ansible_ssh_common_args: -o UserKnownHostsFile=/dev/null",
                  "      ansible_python_interpreter: /usr/bin/python3"]
    for name in ("hosts.yml", "hosts-mitogen.yml"):
        (workdir / name).write_text("\n".join(lines) + "\n")


def mitogen_env() -> dict[str, str]:
    import ansible_mitogen  # noqa: PLC0415 (only with --mitogen)
    return {"ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
            "ANSIBLE_STRATEGY": "mitogen_linear"}


# Per run: the machine's CPU busy share (/proc/stat) and the control node's CPU seconds (ansible-playbook and the
# `docker exec` clients it starts; the modules run inside the lab hosts, on the same CPUs).
LOAD: dict[str, dict[str, float]] = {}


def machine_cpu() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def controller_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu(pid: int) -> float | None:
    """CPU seconds of one process itself (not its children), from /proc/<pid>/stat; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_sampled(command: list[str], run_env: dict[str, str]) -> tuple[int, str, float]:
    """Exit code, output, and the CPU seconds of ansible-playbook's main process alone (sampled every 0.2 s until
    it exits): the strategy, templating and results, which one CPU serialises however many forks run."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, env=run_env, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        main_s = 0.0
        while proc.poll() is None:
            main_s = own_cpu(proc.pid) or main_s
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
        out.seek(0)
        return proc.returncode, out.read(), main_s


def converge(hosts_file: Path, reports: Path, run_id: str, limit: str | None = None,
             profile: bool = False, mitogen: bool = False, whole: bool = False) -> tuple[float, dict, str]:
    """Wall seconds, {host: changed, failed} from the recap, and what follows the recap (the profiling callbacks'
    summaries with --profile, else empty)."""
    if mitogen:
        hosts_file = hosts_file.with_name("hosts-mitogen.yml")
    command = [str(BIN / "ansible-playbook"), "-i", str(hosts_file), str(ROOT / "site.yml"),
               "-e", f"@{hosts_file.parent / 'bench-vars.yml'}", "-e", f"llm_report_run_id={run_id}"]
    command += ["--limit", limit] if limit else []
    command += ["-e", "host_state_enabled=false"] if whole else []
    extra = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_roles,ansible.posix.profile_tasks",
             "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "15"} if profile else {}
    extra |= mitogen_env() if mitogen else {}
    start, cpu_before, children_before = time.monotonic(), machine_cpu(), controller_cpu()
    returncode, stdout, main_s = run_sampled(command, {**env(reports), **extra})
    wall = time.monotonic() - start
    cpu_after = machine_cpu()
    LOAD[run_id] = {"busy": busy_share(cpu_before, cpu_after), "controller_s": controller_cpu() - children_before,
                    "main_s": main_s, "machine_s": (cpu_after[0] - cpu_before[0]) / os.sysconf("SC_CLK_TCK")}
    if returncode != 0:
        sys.exit(f"site.yml failed ({run_id}):\n{stdout[-4000:]}")
    recap = {m[0]: {"changed": int(m[2]), "failed": int(m[4])} for m in RECAP.findall(stdout)}
    # profile_roles and profile_tasks print their summaries after the recap.
    return wall, recap, stdout[stdout.rfind("PLAY RECAP"):] if profile else ""


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


def series(args: argparse.Namespace, hosts_file: Path, reports: Path, names: list[str], sizes: list[int],
           whole: bool) -> None:
    """The timed idempotent runs at each size, `--repeat` times (each strategy of --mitogen), and their figures."""
    prefix = "whole-" if whole else ""
    modes = [False, True] if args.mitogen else [False]
    # "one" is 1 host, "all" every host made; sizes between are "<n>" (the first n hosts).
    runs = [("one" if n == 1 else "all" if n == args.hosts else str(n),
             None if n == args.hosts else ",".join(names[:n]), n) for n in sizes]
    walls: dict[tuple[bool, str], list[float]] = {(m, label): [] for m in modes for label, _, _ in runs}
    for i in range(args.repeat):
        # Strategies take turns going first, so neither always runs on a machine the other just warmed.
        for mitogen in modes if i % 2 == 0 else modes[::-1]:
            for label, limit, _ in runs:
                run_id = f"{prefix}{label}-{'mitogen-' if mitogen else ''}{i}"
                wall, recap, _ = converge(hosts_file, reports, run_id, limit, mitogen=mitogen, whole=whole)
                changed = {h: r["changed"] for h, r in recap.items() if r["changed"]}
                benchmarked = measured(reports, run_id)
                print(f"  {label:>3} run {i + 1}{' (mitogen)' if mitogen else ''}: {wall:6.1f} s, "
                      f"changed {changed or 0}, benchmark traffic "
                      f"{'on ' + ', '.join(benchmarked) if benchmarked else 'none'}; "
                      f"machine CPU {LOAD[run_id]['busy']:.0%} busy, control node "
                      f"{LOAD[run_id]['controller_s']:.0f} CPU s (main process "
                      f"{LOAD[run_id]['main_s']:.1f})")
                walls[(mitogen, label)].append(wall)
    for mitogen in modes:
        tag = "mitogen-" if mitogen else ""
        per_host = {label: statistics.median(LOAD[f"{prefix}{label}-{tag}{run}"]["controller_s"]
                                             for run in range(args.repeat)) / n for label, _, n in runs}
        main_per_host = {label: statistics.median(LOAD[f"{prefix}{label}-{tag}{run}"]["main_s"]
                                                  for run in range(args.repeat)) / n for label, _, n in runs}
        print(f"\ncontrol node CPU per host, {'mitogen_linear' if mitogen else 'linear'}, median of "
              f"{args.repeat}: " + "; ".join(
                  f"{n} host{'s' if n > 1 else ''} {per_host[label]:.1f} CPU s, of which the main process "
                  f"{main_per_host[label]:.1f} ({statistics.median(walls[(mitogen, label)]):.1f} s wall)"
                  for label, _, n in runs))
        if 1 not in sizes:
            continue
        t1, tn = statistics.median(walls[(mitogen, "one")]), statistics.median(walls[(mitogen, "all")])
        strategy = "mitogen_linear" if mitogen else "linear (ansible.cfg)"
        print(f"\nidempotent converge, {strategy}, median of {args.repeat}: 1 host {t1:.1f} s; "
              f"{args.hosts} hosts {tn:.1f} s; ratio {tn / t1:.2f}")
        print(f"goals: 1 host <= 20 s: {'met' if t1 <= 20 else 'NOT met'}; {args.hosts} hosts <= 1.5 x 1 host: "
              f"{'met' if tn <= 1.5 * t1 else 'NOT met'}")
        # The floor the machine's CPUs set: the busy CPU seconds of the fleet's converge (control node, docker
        # exec, the modules in every lab host, and what the hosts run meanwhile) cannot take less wall time
        # than spread over every CPU.
        cpu_s = statistics.median(LOAD[f"{prefix}all-{'mitogen-' if mitogen else ''}{run}"]["machine_s"]
                                  for run in range(args.repeat))
        cpus = os.cpu_count() or 1
        print(f"CPU floor: the {args.hosts}-host converge kept the machine busy for {cpu_s:.0f} CPU s "
              f"({cpu_s / args.hosts:.0f} per host); on {cpus} CPUs no such run takes less than "
              f"{cpu_s / cpus:.0f} s (ratio >= {cpu_s / cpus / t1:.2f}); {args.hosts} hosts within "
              f"1.5 x 1 host need >= {cpu_s / (1.5 * t1):.1f} CPUs at this cost per host")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--sizes", default="",
                        help="fleet sizes converged in turn, comma-separated (default: 1 and --hosts); "
                             "the largest is the number of hosts made")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--apps", action="store_true", help="backend and chat UI too")
    parser.add_argument("--keep", action="store_true", help="leave the bench hosts running")
    parser.add_argument("--profile", action="store_true",
                        help="one more converge of one host, untimed, printing its slowest roles and tasks")
    parser.add_argument("--mitogen", action="store_true",
                        help="each timed run also with Mitogen's strategy (mitogen_linear), figures side by side")
    parser.add_argument("--whole", action="store_true",
                        help="the same runs again with -e host_state_enabled=false (every role on every host), "
                             "figures side by side with the unchanged hosts' one-call check")
    parser.add_argument("--connection", choices=["docker", "ssh"], default="docker",
                        help="how Ansible reaches the lab hosts: docker exec (the lab's way) or SSH (a fleet's way; "
                             "installs openssh-server in each lab host)")
    args = parser.parse_args()
    sizes = sorted({int(v) for v in args.sizes.split(",") if v.strip().isdigit()} if args.sizes else {1, args.hosts})
    if args.sizes and (not sizes or len(sizes) != len([v for v in args.sizes.split(",") if v.strip()])):
        sys.exit("--sizes must be whole numbers separated by commas, e.g. 1,4,8")
    args.hosts = max(sizes)
    if not 2 <= args.hosts <= 32 or sizes[0] < 1 or not 1 <= args.repeat <= 10:
        sys.exit("--hosts (or the largest of --sizes) must be 2-32, every size at least 1, and --repeat 1-10")
    names = [f"bench-{i}" for i in range(1, args.hosts + 1)]
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        workdir = Path(tmp)
        reports = workdir / "reports"
        hosts_file = inventory(workdir, names, args.apps)
        try:
            start = time.monotonic()
            for name in names:
                lab_host(name, "present", reports)
            if args.connection == "ssh":
                ssh_inventory(workdir, names)
            first, _, _ = converge(hosts_file, reports, "first")
            print(f"{args.hosts} new lab hosts created and converged in {time.monotonic() - start:.0f} s "
                  f"(site.yml {first:.0f} s, first benchmark included)")
            # The unchanged hosts' fast path first: a whole run (host_state_enabled=false) records nothing and takes
            # the lock, so every check after it finds "another run since" and runs whole once.
            for whole in [False, True] if args.whole else [False]:
                print("\nwhole runs (-e host_state_enabled=false): every role on every host" if whole else
                      "\nsite.yml as it is: each unchanged host checked in one call (roles/host_state)")
                series(args, hosts_file, reports, names, sizes, whole)
            print(f"levers: {levers()}; connection: {args.connection}; machine: {os.cpu_count()} CPUs, shared by the "
                  f"control node and every lab host (a real fleet gives each host its own)")
            if args.profile:
                wall, _, summary = converge(hosts_file, reports, "profile", names[0], profile=True,
                                            mitogen=args.mitogen)
                print(f"\nwhere one host's converge spends its time ({wall:.1f} s with the profiling callbacks, "
                      f"ansible.posix.profile_roles and profile_tasks"
                      f"{'; strategy mitogen_linear' if args.mitogen else ''}):")
                print("\n".join(line for line in summary.splitlines()[1:] if line.strip() and "=====" not in line
                                and not RECAP.match(line)))
        finally:
            if not args.keep:
                for name in names:
                    lab_host(name, "absent", reports)


if __name__ == "__main__":
    main()
