#!/usr/bin/python
"""Releases of the compose project on the host: releases/<id>/, a `current` and a `previous` pointer."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: llm_stack_release
short_description: Keep each deployment of the LLM stack's compose project as a release with current/previous pointers
version_added: "0.3.0"
description:
  - A release is a directory C(<dir>/releases/<id>/) holding the compose file with every image reference resolved to
    what the host has (C(name:tag@sha256:<digest>) for a pulled image; a locally built image keeps its tag, which is
    the hash of its build context, and its image id is recorded) and C(release.json) (images, env files by path -
    never their contents or hashes -, and the metadata given, such as the model revision). The id is the first 12 hex
    digits of the sha256 of the compose file and the env files' hashes. The same inputs give the same release, so a
    second run changes nothing.
  - C(<dir>/current) points at the release that runs; C(<dir>/docker-compose.yml) is a link to
    C(current/docker-compose.yml), so C(docker compose --project-directory <dir>) and the systemd unit run the current
    release. C(<dir>/previous) points at the newest known-good release other than the current one. A release becomes
    known-good when its gate passes (I(state=good)).
  - A compose file left by a version of this role without releases is kept as release C(legacy-<sha12>), marked
    known-good (it is what ran), before anything else changes.
  - A deployment (I(state=deployed)) and a passed gate (I(state=good)) prune releases, oldest first, down to I(keep) in
    all; never the current, previous, applied one or the one switched from.
  - I(state=good) without I(release) marks nothing when the containers run another release than the current one (a
    run interrupted between its switch and its reload).
  - A release already on the host whose compose file differs from what its id stands for (edited by hand on the
    host) is rewritten by I(state=deployed) or I(state=staged) and reported as changed (C(drifted)), with a warning;
    under C(--check) it is only reported. The id stands for the compose file and the env files' contents, so a
    hand-edited file would otherwise run at the next reload or reboot while every run reported nothing to do.
  - I(state=current) (a switch back) refuses a release whose compose file differs from the hash release.json recorded
    when it was made, since there is nothing to rewrite it from. The task fails naming the file before anything is
    switched, in check mode too.
  - With I(containers), the project's containers are read from Docker (C(docker ps), C(docker inspect)), each
    service's state, exit code, OOMKilled, restart count and health (C(containers)), and which services of the
    release have no running container (C(down)), for the caller to bring back (a reload) or to report. Read-only,
    in check mode too.
  - The pointer is switched by renaming a new link over the old one (atomic). Nothing is started or reloaded here.
options:
  dir:
    description: The compose project's directory (llm_stack_dir).
    type: path
    required: true
  state:
    description:
      - C(deployed) writes the release for I(compose) (when new) and makes it current.
      - C(staged) writes the release and leaves C(current) alone (a rollout switches later).
      - C(current) makes the existing release I(release) current (a switch, or a switch back).
      - C(good) marks the release I(release) (default the current one) known-good.
      - C(applied) records that the running containers were brought to the release I(release) (default the current
        one), so that a run interrupted between a switch and the reload is finished by the next run.
      - C(query) reads the pointers and changes nothing.
    type: str
    choices: [deployed, staged, current, good, applied, query]
    default: deployed
  compose:
    description: The compose project (a mapping with C(services)); required for deployed and staged.
    type: dict
  compose_text:
    description:
      - The compose file as rendered on the control node (YAML; the host's Python need not have a YAML library).
        Each service's C(image:) line is rewritten to the pinned reference.
    type: str
  release:
    description: Release id for I(state=current) and I(state=good).
    type: str
  env_files:
    description:
      - Files, relative to I(dir), whose sha256 is part of the release (env files, key files).
      - A missing one counts as absent.
    type: list
    elements: str
    default: []
  metadata:
    description: Recorded in release.json (engine, model, model revision, served model name).
    type: dict
    default: {}
  resolve_images:
    description:
      - Resolve every service's image to what the host has (docker image inspect).
      - Off for a render without images.
    type: bool
    default: true
  validate:
    description: Validate the compose file with C(docker compose config -q) before it is kept.
    type: bool
    default: true
  keep:
    description: Releases kept in all (the current and the previous one included).
    type: int
    default: 3
  containers:
    description:
      - Read the state of the project's containers (C(containers), C(down)). Nothing is started or changed.
      - Skipped (C(containers) null) where the host has no Docker CLI or Docker does not answer.
    type: bool
    default: false
  project:
    description:
      - The compose project's name, for I(containers) (the label C(com.docker.compose.project)).
      - Default the name in I(compose), else the one the release recorded.
    type: str
author: llm-endpoints project
"""

EXAMPLES = r"""
- name: Release is written and made current
  llm_endpoints.core.llm_stack_release:
    dir: /opt/llm-stack
    compose: "{{ compose_project }}"
    compose_text: "{{ compose_project | to_nice_yaml(indent=2, sort_keys=false) }}"
    env_files: [engine.env]
    metadata: {engine: vllm, model: openai/gpt-oss-20b, model_revision: 6cee5e81ee83917806bbde320786a8fb61efebee}

- name: The previous release is current again
  llm_endpoints.core.llm_stack_release:
    dir: /opt/llm-stack
    state: current
    release: "{{ rollout.previous }}"
    containers: true

- name: What Docker says of the containers (no change)
  llm_endpoints.core.llm_stack_release:
    dir: /opt/llm-stack
    state: query
    containers: true
    project: llm-stack
"""

RETURN = r"""
release:
  description: The release written or named (deployed and staged - the one the compose gives; query - the current one).
  type: str
  returned: always
current_before:
  description: The release that was current before this task (null when none).
  type: str
current:
  description: The release current after this task.
  type: str
previous:
  description: The newest known-good release other than the current one, after this task (null when none).
  type: str
switched:
  description: Whether C(current) now points elsewhere than before.
  type: bool
created:
  description: Whether the release directory was written by this task.
  type: bool
applied:
  description: The release the running containers were last brought to (before this task; null when not recorded).
  type: str
good:
  description: Whether the release is known-good.
  type: bool
pruned:
  description: Release ids removed.
  type: list
images:
  description: Per service, the reference given, the one written and the image id.
  type: dict
releases:
  description: >-
    Every release kept, newest first (id, created, created_epoch, good, and good_at: when it was marked
    known-good, in epoch seconds, 0 if never).
  type: list
benchmark:
  description: >-
    The benchmark record of C(release) (its C(benchmark.json), written by the role llm_throughput), read in the same
    call so that the role needs no call of its own; an empty dict when it has none or it is not a JSON object.
  type: dict
  returned: always
drifted:
  description: >-
    Files of the release (relative to I(dir)) that differed from what its id stands for: rewritten, or under
    C(--check) to be rewritten (deployed and staged).
  type: list
  returned: always
containers:
  description: >-
    With I(containers): per compose service, its container as Docker describes it (name, status, running,
    exit_code, oom_killed, restart_count, health - null without a health check -, started_at, finished_at, error,
    and summary, one line naming all of them); a running container is preferred where a service has several. Null
    without I(containers) or when Docker cannot be asked.
  type: dict
  returned: always
down:
  description: >-
    With I(containers): the release's services without a running (or restarting) container, sorted: stopped,
    exited, created, paused or removed. Empty without I(containers), or when Docker cannot be asked.
  type: list
  returned: always
"""

RELEASE_ID = re.compile(r"^(legacy-)?[0-9a-f]{12}$")
HEADER = ("# Release {id} of the compose project {project}: written by llm_endpoints.core.llm_stack_release.\n"
          "# Do not edit: change the inventory and re-run; `current` points at the release that runs.\n")


def _utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256_file(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return None


def _link_target(path: str) -> str | None:
    """Release id a pointer (current/previous) names, or None."""
    if not os.path.islink(path):
        return None
    name = os.path.basename(os.readlink(path).rstrip("/"))
    return name if RELEASE_ID.match(name) else None


def _point(dir_: str, pointer: str, target: str, relative_to_dir: str) -> None:
    """Make dir_/pointer a symlink to target, replacing what is there by a rename (atomic)."""
    final = os.path.join(dir_, pointer)
    temp = os.path.join(dir_, f".{pointer}.{os.getpid()}.tmp")
    if os.path.lexists(temp):
        os.unlink(temp)
    os.symlink(os.path.relpath(target, relative_to_dir) if os.path.isabs(target) else target, temp)
    os.replace(temp, final)


class Releases:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.dir = os.path.abspath(module.params["dir"])
        self.root = os.path.join(self.dir, "releases")
        self.check = module.check_mode
        self.diffs: list[dict[str, str]] = []

    # --- reading ---
    def path(self, release: str) -> str:
        return os.path.join(self.root, release)

    def info(self, release: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.path(release), "release.json"), encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def benchmark(self, release: str | None) -> dict[str, Any]:
        """The release's benchmark record (benchmark.json, written by roles/llm_throughput), or {} when it has none or
        it is not a JSON object."""
        if not release:
            return {}
        try:
            with open(os.path.join(self.path(release), "benchmark.json"), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def is_good(self, release: str) -> bool:
        return os.path.isfile(os.path.join(self.path(release), "good"))

    def good_at(self, release: str) -> float:
        try:
            return os.stat(os.path.join(self.path(release), "good")).st_mtime
        except OSError:
            return 0.0

    def listing(self) -> list[dict[str, Any]]:
        if not os.path.isdir(self.root):
            return []
        entries = []
        for name in os.listdir(self.root):
            if RELEASE_ID.match(name) and os.path.isdir(self.path(name)):
                info = self.info(name)
                entries.append({"id": name, "created": info.get("created", ""), "good": self.is_good(name),
                                "good_at": self.good_at(name), "created_epoch": info.get("created_epoch", 0)})
        return sorted(entries, key=lambda e: (e["created_epoch"], e["id"]), reverse=True)

    def current(self) -> str | None:
        return _link_target(os.path.join(self.dir, "current"))

    def previous(self) -> str | None:
        return _link_target(os.path.join(self.dir, "previous"))

    # --- writing ---
    def ensure_root(self) -> None:
        if not self.check:
            os.makedirs(self.root, mode=0o755, exist_ok=True)

    def adopt_legacy(self) -> str | None:
        """A plain compose file from before releases becomes release legacy-<sha12> (current, known-good)."""
        compose = os.path.join(self.dir, "docker-compose.yml")
        if os.path.islink(compose) or not os.path.isfile(compose):
            return None
        digest = _sha256_file(compose) or ""
        release = f"legacy-{digest[:12]}"
        if self.check:
            return release
        self.ensure_root()
        target = self.path(release)
        os.makedirs(target, mode=0o755, exist_ok=True)
        shutil.copy2(compose, os.path.join(target, "docker-compose.yml"))
        now = datetime.datetime.now(datetime.UTC)
        self._write_json(os.path.join(target, "release.json"), {
            "id": release, "created": _utcnow(), "created_epoch": 0, "legacy": True,
            "note": "compose file found in place when releases were introduced"})
        self._write_text(os.path.join(target, "good"),
                         f"adopted as known-good (it was running) {now:%Y-%m-%dT%H:%M:%SZ}\n")
        _point(self.dir, "current", os.path.join("releases", release), self.dir)
        _point(self.dir, "docker-compose.yml", os.path.join("current", "docker-compose.yml"), self.dir)
        return release

    def _write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)

    def _write_json(self, path: str, data: Any) -> None:
        self._write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def _write_compose(self, path: str, text: str, release: str) -> None:
        """Write a release's compose file, validated (`docker compose config -q`) before it is renamed into place."""
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".yml")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(temp, 0o644)
            if self.module.params["validate"]:
                docker = self.module.get_bin_path("docker", required=True)
                rc, _, err = self.module.run_command(
                    [docker, "compose", "--project-directory", self.dir, "-f", temp, "config", "-q"])
                if rc != 0:
                    self.module.fail_json(msg=f"the compose file of release {release} is not valid: {err.strip()}")
            os.replace(temp, path)
        finally:
            if os.path.lexists(temp):
                os.unlink(temp)

    def repair(self, release: str, expected: str) -> list[str]:
        """The release's compose file as its id stands for: a hand edit on the host would run at the next reload or
        reboot while every run found the release unchanged (same id). Returns the files that differed."""
        path = os.path.join(self.path(release), "docker-compose.yml")
        rel = os.path.relpath(path, self.dir)
        actual = None
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as handle:
                actual = handle.read().decode("utf-8", errors="replace")
        if actual == expected:
            return []
        self.diffs.append({"before_header": rel, "after_header": rel, "before": actual or "", "after": expected})
        what = "is missing" if actual is None else "differs from what the release id stands for (edited on the host?)"
        done = "it would be rewritten (check mode)" if self.check else "rewritten"
        self.module.warn(f"release {release}: {rel} {what}; {done}. Every run undoes a hand edit there: change the "
                         "inventory instead.")
        if not self.check:
            self._write_compose(path, expected, release)
        return [rel]

    def resolve(self, services: dict[str, Any]) -> dict[str, dict[str, Any]]:
        refs = sorted({str(s.get("image")) for s in services.values() if isinstance(s, dict) and s.get("image")})
        found: dict[str, dict[str, Any]] = {}
        if self.module.params["resolve_images"] and refs:
            docker = self.module.get_bin_path("docker", required=not self.check)
            if docker:
                for ref in refs:
                    rc, out, _ = self.module.run_command([docker, "image", "inspect", "--format", "{{json .}}", ref])
                    if rc == 0 and out.strip():
                        found[ref] = json.loads(out.strip().splitlines()[0])
        missing = [r for r in refs if r not in found] if self.module.params["resolve_images"] else []
        if missing and not self.check:
            self.module.fail_json(msg=f"images not on the host, so the release cannot pin them: {', '.join(missing)} "
                                      "(they are pulled or built before the release is written)")
        images: dict[str, dict[str, Any]] = {}
        for name, service in services.items():
            ref = str(service.get("image", ""))
            data = found.get(ref)
            entry: dict[str, Any] = {"ref": ref, "pinned": ref, "id": None, "repo_digest": None}
            if data:
                entry["id"] = data.get("Id")
                repo = _repository(ref)
                digests = [d for d in data.get("RepoDigests") or [] if _repository(d.split("@", 1)[0]) == repo]
                if digests and "@" not in ref:
                    entry["repo_digest"] = digests[0]
                    entry["pinned"] = f"{ref}@{digests[0].split('@', 1)[1]}"
            images[name] = entry
        return images

    def write(self, compose: dict[str, Any], text: str) -> tuple[str, bool, dict[str, Any], list[str]]:
        services = compose.get("services")
        if not isinstance(services, dict) or not services:
            self.module.fail_json(msg="compose must be a compose project with at least one service")
        images = self.resolve(services)
        body = pin_images(text, images)
        env_hashes = [(rel, _sha256_file(os.path.join(self.dir, rel))) for rel in self.module.params["env_files"]]
        seed = body + "".join(f"\n{rel}={digest}" for rel, digest in env_hashes)
        # Paths only: a hash of a file of secrets would let a weak key be guessed offline.
        env_files = [{"path": rel} for rel, _ in env_hashes]
        release = hashlib.sha256(seed.encode("utf-8")).hexdigest()[:12]
        target = self.path(release)
        compose_text = HEADER.format(id=release, project=compose.get("name", "")) + body
        if os.path.isfile(os.path.join(target, "release.json")):
            return release, False, images, self.repair(release, compose_text)
        if self.check:
            return release, True, images, []
        self.ensure_root()
        staging = tempfile.mkdtemp(dir=self.root, prefix=f".{release}-")
        try:
            os.chmod(staging, 0o755)
            self._write_compose(os.path.join(staging, "docker-compose.yml"), compose_text, release)
            now = datetime.datetime.now(datetime.UTC)
            self._write_json(os.path.join(staging, "release.json"), {
                "id": release, "project": compose.get("name"), "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "created_epoch": now.timestamp(), "images": images, "env_files": env_files,
                "compose_sha256": hashlib.sha256(compose_text.encode("utf-8")).hexdigest(),
                "metadata": self.module.params["metadata"]})
            if os.path.isdir(target):  # a half-written release from an interrupted run
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)
        return release, True, images, []

    def unchanged(self, release: str) -> None:
        """A release switched to as it stands (a rollback) must be the one that was made: its compose file's hash is
        in release.json. Unlike the current release (rewritten from the inventory), there is nothing to rewrite it
        from, so a hand edit is refused before the switch. Releases from before the hash are taken as they are."""
        recorded = self.info(release).get("compose_sha256")
        path = os.path.join(self.path(release), "docker-compose.yml")
        if recorded is None:
            return
        actual = _sha256_file(path) if os.path.isfile(path) and not os.path.islink(path) else None
        if actual != recorded:
            what = "is missing or not a regular file" if actual is None else "was edited after the release was made"
            self.module.fail_json(msg=f"release {release}: {os.path.relpath(path, self.dir)} {what} (its sha256 is "
                                      "in release.json); nothing was switched. Restore the file, or deploy from the "
                                      "inventory instead.")

    def switch(self, release: str) -> bool:
        if self.current() == release and os.path.islink(os.path.join(self.dir, "docker-compose.yml")):
            return False
        if not self.check:
            _point(self.dir, "current", os.path.join("releases", release), self.dir)
            _point(self.dir, "docker-compose.yml", os.path.join("current", "docker-compose.yml"), self.dir)
        return True

    def applied(self) -> str | None:
        try:
            with open(os.path.join(self.dir, "applied"), encoding="ascii") as handle:
                value = handle.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return value if RELEASE_ID.match(value) else None

    def mark_applied(self, release: str) -> bool:
        if self.applied() == release:
            return False
        if not self.check:
            self._write_text(os.path.join(self.dir, "applied"), release + "\n")
        return True

    def mark_good(self, release: str) -> bool:
        marker = os.path.join(self.path(release), "good")
        if os.path.isfile(marker):
            return False
        if not self.check:
            self._write_text(marker, f"gate passed {_utcnow()}\n")
        return True

    def update_previous(self, current: str | None) -> tuple[str | None, bool]:
        """previous = the newest known-good release other than the current one."""
        good = [e for e in self.listing() if e["id"] != current and e["good"]]
        good.sort(key=lambda e: (e["good_at"], e["created_epoch"]), reverse=True)
        wanted = good[0]["id"] if good else None
        have = self.previous()
        if wanted == have:
            return have, False
        if not self.check:
            link = os.path.join(self.dir, "previous")
            if wanted:
                _point(self.dir, "previous", os.path.join("releases", wanted), self.dir)
            elif os.path.lexists(link):
                os.unlink(link)
        return wanted, True

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        others = [e["id"] for e in self.listing() if e["id"] not in protect]
        room = max(keep - len([p for p in protect if p]), 0)
        doomed = others[room:]
        if not self.check:
            for release in doomed:
                shutil.rmtree(self.path(release))
        return doomed


    def containers(self, project: str | None) -> dict[str, dict[str, Any]] | None:
        """The project's containers by compose service, as Docker describes them; None when Docker cannot be asked."""
        docker = self.module.get_bin_path("docker")
        if not docker or not project:
            return None
        rc, out, _ = self.module.run_command(
            [docker, "ps", "--all", "--quiet", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}",
             "--filter", "label=com.docker.compose.oneoff=False"])
        if rc != 0:
            return None
        ids = out.split()
        if not ids:
            return {}
        # A container removed between the two calls: inspect exits 1 but still prints the others.
        _, out, _ = self.module.run_command([docker, "inspect", *ids])
        try:
            data = json.loads(out)
        except ValueError:
            return None
        return by_service(data) if isinstance(data, list) else None


UP_STATES = ("running", "restarting")


def _timestamp(value: Any) -> str | None:
    """Docker's 2026-12-06T08:00:00.123456789Z -> 2026-12-06T08:00:00Z; its zero time (never) -> None."""
    text = str(value or "")
    if not text or text.startswith("0001-"):
        return None
    return text.split(".", 1)[0].rstrip("Z") + "Z"


def container_state(data: dict[str, Any]) -> dict[str, Any]:
    """One `docker inspect` entry as the fields a person needs to tell why a service is not serving."""
    state = data.get("State") or {}
    labels = (data.get("Config") or {}).get("Labels") or {}
    entry = {
        "name": str(data.get("Name", "")).lstrip("/"),
        "service": labels.get("com.docker.compose.service"),
        "status": str(state.get("Status") or "unknown"),
        "running": state.get("Status") == "running",
        "exit_code": state.get("ExitCode"),
        "oom_killed": bool(state.get("OOMKilled")),
        "restart_count": int(data.get("RestartCount") or 0),
        "health": (state.get("Health") or {}).get("Status"),
        "started_at": _timestamp(state.get("StartedAt")),
        "finished_at": _timestamp(state.get("FinishedAt")),
        "error": state.get("Error") or None,
    }
    entry["summary"] = describe_container(entry)
    return entry


def absent_container(service: str) -> dict[str, Any]:
    entry = {"name": None, "service": service, "status": "absent", "running": False, "exit_code": None,
             "oom_killed": False, "restart_count": 0, "health": None, "started_at": None, "finished_at": None,
             "error": None}
    entry["summary"] = describe_container(entry)
    return entry


def describe_container(entry: dict[str, Any]) -> str:
    """One line with what Docker says: state (and since when), exit code, OOMKilled, restart count, health."""
    if entry["status"] == "absent":
        return f"no container for service {entry['service']} (removed, or never created)"
    since = entry["started_at"] if entry["status"] in UP_STATES else entry["finished_at"]
    health = entry["health"] or "none (no health check)"
    line = (f"container {entry['name']}: state {entry['status']}{f' since {since}' if since else ''}, "
            f"exit code {entry['exit_code']}, OOMKilled {str(entry['oom_killed']).lower()}, "
            f"restart count {entry['restart_count']}, health {health}")
    return line + (f", error: {entry['error']}" if entry["error"] else "")


def by_service(inspected: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per compose service, one container: a running one where there is one, else the one started last."""
    found: dict[str, dict[str, Any]] = {}
    for entry in (container_state(d) for d in inspected if isinstance(d, dict)):
        service = entry["service"]
        if not service:
            continue
        rank = (entry["status"] in UP_STATES, entry["started_at"] or "")
        have = found.get(service)
        if have is None or rank > (have["status"] in UP_STATES, have["started_at"] or ""):
            found[service] = entry
    return found


def long_running(compose: dict[str, Any]) -> list[str]:
    """The services meant to keep running: one that runs once (restart "no" or on-failure) is done, not down, when it
    has exited."""
    def restart(service: Any) -> str:
        return str(service.get("restart", "") if isinstance(service, dict) else "").split(":")[0]
    return [name for name, service in (compose.get("services") or {}).items()
            if restart(service) not in ("no", "False", "on-failure")]


def services_down(services: list[str], containers: dict[str, dict[str, Any]]) -> list[str]:
    """The services without a running or restarting container (Docker restarts the latter itself)."""
    return sorted(s for s in services if (containers.get(s) or {}).get("status") not in UP_STATES)


def pin_images(text: str, images: dict[str, dict[str, Any]]) -> str:
    """Rewrite each `image: <ref>` line of the rendered compose file to its pinned reference."""
    for ref, pinned in sorted({(e["ref"], e["pinned"]) for e in images.values()}):
        entry = {"ref": ref, "pinned": pinned}
        if entry["pinned"] == entry["ref"]:
            continue
        pattern = re.compile(r"^(\s+image: )(['\"]?)" + re.escape(entry["ref"]) + r"\2[ \t]*$", re.MULTILINE)
        pinned = entry["pinned"]
        text, count = pattern.subn(lambda m, pinned=pinned: m.group(1) + pinned, text)
        if count == 0:
            raise ValueError(f"image {entry['ref']} is not on an image: line of the compose file")
    return text


def _repository(ref: str) -> str:
    """docker.io/library/python:3.11 -> python (the repository part, normalised, without tag or digest)."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dir": {"type": "path", "required": True},
            "state": {"type": "str", "default": "deployed",
                      "choices": ["deployed", "staged", "current", "good", "applied", "query"]},
            "compose": {"type": "dict"},
            "compose_text": {"type": "str"},
            "release": {"type": "str"},
            "env_files": {"type": "list", "elements": "str", "default": []},
            "metadata": {"type": "dict", "default": {}},
            "resolve_images": {"type": "bool", "default": True},
            "validate": {"type": "bool", "default": True},
            "keep": {"type": "int", "default": 3},
            "containers": {"type": "bool", "default": False},
            "project": {"type": "str"},
        },
        required_if=[("state", "deployed", ["compose", "compose_text"]),
                     ("state", "staged", ["compose", "compose_text"]),
                     ("state", "current", ["release"])],
        supports_check_mode=True,
    )
    params = module.params
    if not os.path.isabs(params["dir"]):
        module.fail_json(msg=f"dir must be an absolute path; got {params['dir']!r}")
    if not 2 <= params["keep"] <= 100:
        module.fail_json(msg=f"keep must be a whole number from 2 to 100; got {params['keep']}")
    for rel in params["env_files"]:
        if rel.startswith("/") or ".." in rel.split("/") or not rel:
            module.fail_json(msg=f"env_files must be paths inside dir; got {rel!r}")
    if params["release"] is not None and not RELEASE_ID.match(params["release"]):
        module.fail_json(msg="release must be a release id (12 hex digits, or legacy-<12 hex>); "
                             f"got {params['release']!r}")

    releases = Releases(module)
    state = params["state"]
    applied = releases.applied()
    changed = False
    legacy = releases.adopt_legacy() if state != "query" else None
    changed |= legacy is not None
    current_before = releases.current() or legacy
    created = False
    images: dict[str, Any] = {}
    switched = False
    drifted: list[str] = []
    # What the probe compares the containers with, and the project it looks for (release.json records both).
    services: list[str] = []
    project = params["project"]

    if state in ("deployed", "staged"):
        services = long_running(params["compose"])
        project = project or params["compose"].get("name")
        try:
            release, created, images, drifted = releases.write(params["compose"], params["compose_text"])
        except ValueError as err:
            module.fail_json(msg=str(err))
        changed |= created or bool(drifted)
        if state == "deployed":
            switched = releases.switch(release)
    elif state == "current":
        release = params["release"]
        # In check mode a release the same run would have staged is not there: the switch is what would happen.
        if not os.path.isfile(os.path.join(releases.path(release), "release.json")) and not module.check_mode:
            module.fail_json(msg=f"release {release} is not on the host (releases: "
                                 f"{', '.join(e['id'] for e in releases.listing()) or 'none'})")
        if os.path.isfile(os.path.join(releases.path(release), "release.json")):
            releases.unchanged(release)
        switched = releases.switch(release)
    elif state == "applied":
        release = params["release"] or current_before
        if not release or not os.path.isdir(releases.path(release)):
            module.fail_json(msg=f"no release {release!r} to record as applied")
        changed |= releases.mark_applied(release)
    elif state == "good":
        release = params["release"] or current_before
        if release is None:
            # An endpoint this collection did not deploy (no releases): nothing to mark.
            module.exit_json(changed=False, release=None, current_before=None, current=None, previous=None,
                             switched=False, created=False, pruned=[], images={}, applied=applied, good=False,
                             releases=[], benchmark={}, drifted=[], containers=None, down=[],
                             msg=f"no release in {releases.dir}: nothing to mark known-good")
        if not os.path.isdir(releases.path(release)):
            module.fail_json(msg=f"no release {release!r} to mark known-good")
        if params["release"] is None and applied is not None and applied != release:
            # A run was interrupted between its switch and its reload: the checks passed against `applied`.
            module.exit_json(changed=False, release=release, current_before=current_before, current=current_before,
                             previous=releases.previous(), switched=False, created=False, pruned=[], images={},
                             applied=applied, good=releases.is_good(release), releases=releases.listing(),
                             benchmark=releases.benchmark(release), drifted=[], containers=None, down=[],
                             msg=f"the containers run release {applied}, not the current {release}: nothing marked")
        changed |= releases.mark_good(release)
    else:
        release = current_before
    changed |= switched

    current = release if switched else (releases.current() if not module.check_mode else current_before)
    previous, previous_changed = (releases.previous(), False) if state == "query" else releases.update_previous(current)
    changed |= previous_changed
    pruned: list[str] = []
    # Only a deployment or a passed gate prunes; never the releases running, current, previous or switched from.
    if state in ("deployed", "good"):
        protect = {p for p in (current, previous, release, current_before, applied) if p}
        pruned = releases.prune(params["keep"], protect)
        changed |= bool(pruned)
    containers = None
    down: list[str] = []
    # A staged release does not run yet: its containers would say nothing about it.
    if params["containers"] and state != "staged":
        if state != "deployed" and release:
            services = list(releases.info(release).get("images") or {})
            project = project or releases.info(release).get("project")
        containers = releases.containers(project)
        if containers is not None:
            containers.update({s: absent_container(s) for s in services if s not in containers})
            down = services_down(services, containers)
    extra: dict[str, Any] = {"diff": releases.diffs[0]} if module._diff and releases.diffs else {}
    module.exit_json(changed=changed, release=release, current_before=current_before, current=current,
                     previous=previous, switched=switched, created=created, pruned=pruned, images=images,
                     applied=applied, good=bool(release) and releases.is_good(release), releases=releases.listing(),
                     benchmark=releases.benchmark(release), drifted=drifted, containers=containers, down=down,
                     **extra)


if __name__ == "__main__":
    main()
