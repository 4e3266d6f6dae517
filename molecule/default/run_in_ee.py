"""Run site.yml against this scenario's host from inside the execution environment, as AWX runs a job.

ansible-runner starts the EE (local/llm-endpoints-ee, `make ee`) in Docker with the checkout as its project
(/runner/project, as AWX mounts a project's checkout) and a copy of molecule's inventory; the collection, ansible-core
and every Python package are the EE's own (ANSIBLE_COLLECTIONS_PATH names only the EE's collections, not the checkout's
.collection). The test host, a container, is reached through the Docker API (community.docker.docker_api) over the
Docker socket, as the EE has no Docker client. Prints one JSON document shaped as the ansible.posix.json callback's
(plays, tasks, per-host results, stats), built from the job's events, with the job's artifacts (set_stats, as AWX
keeps them) and the job's own output under "stdout", so that
tasks/site_run.yml judges it as it judges a run of ansible-playbook.

Usage: run_in_ee.py <work dir> <image> <checkout> <molecule inventory dir> ENV_NAME... (the environment variables the
job gets, read from this process's environment)."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import ansible_runner
import yaml


def main() -> int:
    work, image, checkout, inventory = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    shutil.rmtree(work, ignore_errors=True)
    (work / "project").mkdir(parents=True)
    # Molecule's inventory (its group_vars and host_vars are links into the checkout, mounted at the same path), and
    # the connection through the Docker API for its hosts (a later source overrides the host variable).
    shutil.copytree(inventory, work / "inventory", symlinks=True)
    hosts = yaml.safe_load((inventory / "ansible_inventory.yml").read_text())["all"]["hosts"]
    (work / "inventory" / "zz-execution-environment.yml").write_text(yaml.safe_dump(
        {"all": {"hosts": {name: {"ansible_connection": "community.docker.docker_api"} for name in hosts}}}))
    envvars = {name: os.environ[name] for name in sys.argv[5:] if name in os.environ}
    envvars["ANSIBLE_COLLECTIONS_PATH"] = "/usr/share/ansible/collections"
    # The checkout as the project, and at its own path as the directories the job reads and writes (the cache, with the
    # wheels and the lab's keys; the reports; the inventory's links) are, on this machine.
    same = {checkout} | {Path(os.environ[name]) for name in ("MOLECULE_EPHEMERAL_DIRECTORY", "LLM_CACHE_DIR",
                                                            "LLM_REPORT_DIR") if os.environ.get(name)}
    for path in same:
        path.mkdir(parents=True, exist_ok=True)
    mounts = [f"{checkout}:/runner/project", "/var/run/docker.sock:/var/run/docker.sock"] + [f"{p}:{p}" for p in same]
    result = ansible_runner.run(
        private_data_dir=str(work), playbook="site.yml", ident="site", quiet=True, envvars=envvars,
        process_isolation=True, process_isolation_executable="docker", container_image=image,
        # The host's network: the control node reaches what this machine reaches, as the run outside the EE did. The
        # job runs as this user (runner's --user), with the Docker socket's group (a user of the docker group).
        container_options=["--network=host", f"--group-add={os.stat('/var/run/docker.sock').st_gid}"]
        + [f"--volume={m}" for m in mounts])
    tasks: list[dict] = []
    artifacts: dict = {}
    by_uuid: dict[str, dict] = {}
    stats: dict[str, dict] = {}
    for event in result.events:
        data = event.get("event_data", {})
        if event["event"] in ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable"):
            task = by_uuid.get(data["task_uuid"])
            if task is None:
                task = by_uuid[data["task_uuid"]] = {"task": {"name": data["task"]}, "hosts": {}}
                tasks.append(task)
            res = dict(data.get("res") or {})
            if "changed" not in res and event["event"] == "runner_on_ok":
                # A no_log result's event carries only "censored": the job's own line says whether it changed.
                line = re.sub(r"\x1b\[[0-9;]*m", "", event.get("stdout") or "")
                res["changed"] = line.lstrip().startswith("changed:")
            if event["event"] == "runner_on_failed" and not data.get("ignore_errors"):
                res["failed"] = True
            task["hosts"][data["host"]] = res
        elif event["event"] == "playbook_on_stats":
            artifacts = data.get("artifact_data") or {}
            for host in set(data.get("processed", {})):
                stats[host] = {key: data.get(key, {}).get(host, 0) for key in ("ok", "changed", "failures", "skipped")}
                stats[host]["unreachable"] = data.get("dark", {}).get(host, 0)
    output = result.stdout.read()
    # ansible-runner wrote the job's environment (the keys among it) and command line beside its artifacts: not kept.
    for name in ("env.list", "command"):
        (work / "artifacts" / "site" / name).unlink(missing_ok=True)
    print(json.dumps({"plays": [{"tasks": tasks}], "stats": stats, "artifacts": artifacts, "rc": result.rc,
                      "status": result.status, "stdout": output}))
    if result.rc != 0:
        # What the job printed, for the side effect's failure message (a job that never started has no events).
        print(f"job {result.status}, rc {result.rc}; its output ends:\n{output[-3000:]}", file=sys.stderr)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
