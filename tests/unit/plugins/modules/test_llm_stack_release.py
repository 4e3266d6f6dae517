"""Releases on the host (llm_stack_release): content-addressed ids, current/previous pointers, known-good marks,
pruning, adoption of a compose file from before releases, check mode, image pinning. The module runs for real on a
temporary directory; image resolution and compose validation (which need Docker) are covered in molecule."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.llm_endpoints.core.plugins.modules import llm_stack_release as mod

Cap = pytest.CaptureFixture[str]
COMPOSE = {"name": "llm-stack", "services": {"engine": {"image": "local/engine:abc", "env_file": ["engine.env"]}}}


def text(compose: dict[str, Any]) -> str:
    lines = [f"name: {compose['name']}", "services:"]
    for name, svc in compose["services"].items():
        lines += [f"  {name}:", f"    image: {svc['image']}"]
    return "\n".join(lines) + "\n"


def run(capsys: pytest.CaptureFixture[str], tmp: Path, check: bool = False, **args: Any) -> dict[str, Any]:
    params = {"dir": str(tmp), "resolve_images": False, "validate": False, **args}
    if "compose" in params and "compose_text" not in params:
        params["compose_text"] = text(params["compose"])
    if check:
        params["_ansible_check_mode"] = True
    with patch_module_args(params), pytest.raises(SystemExit):
        mod.main()
    return json.loads(capsys.readouterr().out)


def engine(image: str) -> dict[str, Any]:
    return {"name": "llm-stack", "services": {"engine": {"image": image, "env_file": ["engine.env"]}}}


def test_same_inputs_same_release_and_a_second_run_changes_nothing(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "engine.env").write_text("A=1\n")
    first = run(capsys, tmp_path, compose=COMPOSE, env_files=["engine.env"], metadata={"model": "m"})
    assert first["changed"] and first["switched"] and first["created"]
    assert first["current_before"] is None and first["previous"] is None
    release = first["release"]
    assert len(release) == 12
    assert os.readlink(tmp_path / "current") == f"releases/{release}"
    assert os.readlink(tmp_path / "docker-compose.yml") == "current/docker-compose.yml"
    assert "image: local/engine:abc" in (tmp_path / "docker-compose.yml").read_text()
    record = json.loads((tmp_path / "releases" / release / "release.json").read_text())
    assert record["metadata"] == {"model": "m"}
    # Env files by path only: no hash of a file of secrets.
    assert record["env_files"] == [{"path": "engine.env"}]
    assert "A=1" not in (tmp_path / "releases" / release / "release.json").read_text()
    again = run(capsys, tmp_path, compose=COMPOSE, env_files=["engine.env"], metadata={"model": "m"})
    assert not again["changed"] and again["release"] == release


def test_a_changed_env_file_is_a_new_release(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "engine.env").write_text("A=1\n")
    one = run(capsys, tmp_path, compose=COMPOSE, env_files=["engine.env"])["release"]
    (tmp_path / "engine.env").write_text("A=2\n")
    two = run(capsys, tmp_path, compose=COMPOSE, env_files=["engine.env"])
    assert two["release"] != one and two["switched"] and two["current_before"] == one


def test_previous_is_the_newest_known_good_and_a_switch_back_works(tmp_path: Path, capsys: Cap) -> None:
    one = run(capsys, tmp_path, compose=engine("local/engine:1"))["release"]
    assert run(capsys, tmp_path, state="good")["good"]
    # A new release that is not known-good yet: previous points at the last good one.
    two = run(capsys, tmp_path, compose=engine("local/engine:2"))
    assert two["previous"] == one and os.readlink(tmp_path / "previous") == f"releases/{one}"
    # Its gate fails: back to the previous release.
    back = run(capsys, tmp_path, state="current", release=two["previous"])
    assert back["switched"] and back["current"] == one
    assert os.readlink(tmp_path / "current") == f"releases/{one}"
    assert back["previous"] is None  # release 2 never passed its gate: nothing good besides the current one
    # Staged: written, not current.
    staged = run(capsys, tmp_path, state="staged", compose=engine("local/engine:3"))
    assert staged["created"] and not staged["switched"] and staged["current"] == one
    assert (tmp_path / "releases" / staged["release"] / "docker-compose.yml").is_file()


def test_unknown_release_and_bad_ids_are_refused(tmp_path: Path, capsys: Cap) -> None:
    # No release at all (an endpoint deployed otherwise): marking the current one known-good is a no-op.
    nothing = run(capsys, tmp_path, state="good")
    assert not nothing["changed"] and nothing["release"] is None and list(tmp_path.iterdir()) == []
    run(capsys, tmp_path, compose=COMPOSE)
    out = run(capsys, tmp_path, state="current", release="0123456789ab")
    assert out["failed"] and "not on the host" in out["msg"]
    out = run(capsys, tmp_path, state="current", release="../../etc")
    assert out["failed"] and "release id" in out["msg"]
    out = run(capsys, tmp_path, compose=COMPOSE, env_files=["../secret"])
    assert out["failed"] and "inside dir" in out["msg"]
    out = run(capsys, tmp_path, compose=COMPOSE, keep=1)
    assert out["failed"] and "keep" in out["msg"]


def test_old_releases_are_pruned_but_current_and_previous_stay(tmp_path: Path, capsys: Cap) -> None:
    first = run(capsys, tmp_path, compose=engine("local/engine:0"))["release"]
    run(capsys, tmp_path, state="good")
    ids = [first]
    for n in range(1, 5):
        ids.append(run(capsys, tmp_path, compose=engine(f"local/engine:{n}"), keep=3)["release"])
    kept = sorted(p.name for p in (tmp_path / "releases").iterdir())
    # current (the newest), previous (the only good one, the first) and one more (the newest other).
    assert sorted([ids[4], ids[0], ids[3]]) == kept


def test_a_compose_file_from_before_releases_is_kept_as_a_known_good_release(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "docker-compose.yml").write_text("services:\n  engine:\n    image: old/engine:1\n")
    out = run(capsys, tmp_path, compose=COMPOSE)
    legacy = out["current_before"]
    assert legacy.startswith("legacy-")
    assert (tmp_path / "releases" / legacy / "docker-compose.yml").read_text().endswith("image: old/engine:1\n")
    assert (tmp_path / "releases" / legacy / "good").is_file()
    assert out["previous"] == legacy and out["current"] == out["release"]


def test_check_mode_writes_nothing(tmp_path: Path, capsys: Cap) -> None:
    out = run(capsys, tmp_path, check=True, compose=COMPOSE)
    assert out["changed"] and out["switched"]
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    run(capsys, tmp_path, check=True, compose=COMPOSE)
    assert [p.name for p in tmp_path.iterdir()] == ["docker-compose.yml"]


def test_pulled_images_are_pinned_by_digest_and_local_ones_keep_their_tag() -> None:
    digest = "sha256:" + "a" * 64
    images = {"engine": {"ref": "vllm/vllm-openai:v0.11.0", "pinned": f"vllm/vllm-openai:v0.11.0@{digest}"},
              "backend": {"ref": "local/backend:1", "pinned": "local/backend:1"}}
    body = "services:\n  engine:\n    image: vllm/vllm-openai:v0.11.0\n  backend:\n    image: local/backend:1\n"
    assert mod.pin_images(body, images) == body.replace("v0.11.0\n", f"v0.11.0@{digest}\n")
    assert mod._repository("docker.io/library/python:3.11-slim") == "python"
    assert mod._repository("localhost:5000/a/b:1@sha256:00") == "localhost:5000/a/b"
    with pytest.raises(ValueError):
        mod.pin_images("services: {}\n", images)


def test_applied_records_what_the_containers_run_so_an_interrupted_switch_ends(tmp_path: Path, capsys: Cap) -> None:
    one = run(capsys, tmp_path, compose=engine("local/engine:1"))
    assert one["applied"] is None
    assert run(capsys, tmp_path, state="applied")["changed"]
    assert not run(capsys, tmp_path, state="applied")["changed"]
    # A run switches to release 2 and is killed before its reload: the next run sees current != applied.
    two = run(capsys, tmp_path, compose=engine("local/engine:2"))
    again = run(capsys, tmp_path, compose=engine("local/engine:2"))
    assert not again["switched"] and again["release"] == two["release"]
    assert again["applied"] == one["release"] != again["release"]
    out = run(capsys, tmp_path, state="applied", release="0123456789ab")
    assert out["failed"] and "to record as applied" in out["msg"]


def test_an_interrupted_switch_is_not_marked_good_and_nothing_running_is_pruned(tmp_path: Path, capsys: Cap) -> None:
    one = run(capsys, tmp_path, compose=engine("local/engine:1"))["release"]
    run(capsys, tmp_path, state="applied")
    # Switched to 2, killed before the reload: the containers still run 1, so checks passing prove nothing about 2.
    two = run(capsys, tmp_path, compose=engine("local/engine:2"), keep=2)["release"]
    marked = run(capsys, tmp_path, state="good")
    assert not marked["changed"] and not marked["good"] and "nothing marked" in marked["msg"]
    # Deployments while 1 still runs never prune it, even with keep=2.
    run(capsys, tmp_path, compose=engine("local/engine:3"), keep=2)
    assert (tmp_path / "releases" / one).is_dir() and (tmp_path / "releases" / two).is_dir()
    # A staged release and a switch prune nothing; a query changes nothing.
    run(capsys, tmp_path, state="staged", compose=engine("local/engine:4"), keep=2)
    assert not run(capsys, tmp_path, state="query")["changed"]
    assert len(list((tmp_path / "releases").iterdir())) == 4


def test_two_services_on_one_image_and_check_mode_switch(tmp_path: Path, capsys: Cap) -> None:
    digest = "sha256:" + "b" * 64
    ref = "vllm/vllm-openai:v0.11.0"
    images = {s: {"ref": ref, "pinned": f"{ref}@{digest}"} for s in ("a", "b")}
    body = "services:\n  a:\n    image: vllm/vllm-openai:v0.11.0\n  b:\n    image: vllm/vllm-openai:v0.11.0\n"
    assert mod.pin_images(body, images).count(f"@{digest}") == 2
    run(capsys, tmp_path, compose=engine("local/engine:1"))
    # rollout.yml --check: the release it would stage is not there; the switch reports what would happen.
    out = run(capsys, tmp_path, check=True, state="current", release="0123456789ab")
    assert not out.get("failed") and out["switched"]


def test_the_release_comes_with_its_benchmark_record(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "engine.env").write_text("A=1\n")
    first = run(capsys, tmp_path, compose=COMPOSE, env_files=["engine.env"])
    assert first["benchmark"] == {}  # a new release: not measured yet
    record = {"release": first["release"], "passed": True, "levels": [{"max_concurrency": 1, "output_tps": 9.5}]}
    (tmp_path / "releases" / first["release"] / "benchmark.json").write_text(json.dumps(record))
    assert run(capsys, tmp_path, compose=COMPOSE, env_files=["engine.env"])["benchmark"] == record
    assert run(capsys, tmp_path, state="query")["benchmark"] == record
    assert run(capsys, tmp_path, state="good")["benchmark"] == record
    assert run(capsys, tmp_path, state="current", release=first["release"])["benchmark"] == record
    # Another release has its own record (none); a record that is not a JSON object counts as none.
    second = run(capsys, tmp_path, compose=engine("local/engine:def"), env_files=["engine.env"])
    assert second["release"] != first["release"] and second["benchmark"] == {}
    (tmp_path / "releases" / second["release"] / "benchmark.json").write_text("[1, 2]")
    assert run(capsys, tmp_path, state="query")["benchmark"] == {}
    (tmp_path / "releases" / second["release"] / "benchmark.json").write_text("{cut short")
    assert run(capsys, tmp_path, state="query")["benchmark"] == {}


# --- a release edited on the host (drift) ---------------------------------------------------------------------------
def test_a_hand_edited_compose_file_is_reported_in_check_mode_then_rewritten(tmp_path: Path, capsys: Cap,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The warning as the module gives it to Ansible (Ansible's own list of a process's warnings is shared by every
    # test of the process: what it returns depends on the tests before this one).
    warned: list[str] = []
    original_warn = mod.AnsibleModule.warn
    monkeypatch.setattr(mod.AnsibleModule, "warn", lambda self, text: (warned.append(text), original_warn(self, text)))
    (tmp_path / "engine.env").write_text("A=1\n")
    args = {"compose": COMPOSE, "env_files": ["engine.env"]}
    release = run(capsys, tmp_path, **args)["release"]
    compose = tmp_path / "releases" / release / "docker-compose.yml"
    written = compose.read_text()
    edited = "# raised by hand\n" + written.replace("local/engine:abc", "local/engine:hand")
    compose.write_text(edited)
    rel = f"releases/{release}/docker-compose.yml"
    # --check --diff: reported as changed, with the diff, and nothing written.
    checked = run(capsys, tmp_path, check=True, _ansible_diff=True, **args)
    assert checked["changed"] and checked["drifted"] == [rel] and checked["release"] == release
    assert not checked["created"] and not checked["switched"]
    assert checked["diff"] == {"before_header": rel, "after_header": rel, "before": edited, "after": written}
    assert any(rel in w and "would be rewritten" in w for w in warned), warned
    assert compose.read_text() == edited
    # The real run rewrites it (same release id: what the id stands for), then nothing is left to do.
    fixed = run(capsys, tmp_path, **args)
    assert fixed["changed"] and fixed["drifted"] == [rel] and fixed["release"] == release
    assert "diff" not in fixed  # only with --diff
    assert compose.read_text() == written and compose.stat().st_mode & 0o777 == 0o644
    assert not run(capsys, tmp_path, **args)["changed"]
    # A compose file removed, or replaced by a link to another file, is put back as well.
    compose.unlink()
    assert run(capsys, tmp_path, **args)["drifted"] == [rel] and compose.read_text() == written
    (tmp_path / "other.yml").write_text(edited)
    compose.unlink()
    compose.symlink_to(tmp_path / "other.yml")
    assert run(capsys, tmp_path, **args)["drifted"] == [rel]
    assert not compose.is_symlink() and compose.read_text() == written
    assert (tmp_path / "other.yml").read_text() == edited


def test_a_switch_back_to_a_release_edited_on_the_host_is_refused(tmp_path: Path, capsys: Cap) -> None:
    one = run(capsys, tmp_path, compose=engine("local/engine:1"))["release"]
    two = run(capsys, tmp_path, compose=engine("local/engine:2"))["release"]
    compose = tmp_path / "releases" / one / "docker-compose.yml"
    written = compose.read_text()
    compose.write_text(written + "# raised by hand\n")
    for check in (True, False):
        out = run(capsys, tmp_path, check=check, state="current", release=one)
        assert out["failed"] and f"release {one}: releases/{one}/docker-compose.yml was edited" in out["msg"], out
        assert os.readlink(tmp_path / "current") == f"releases/{two}"
    compose.unlink()
    assert "is missing" in run(capsys, tmp_path, state="current", release=one)["msg"]
    # As it was made, it is switched to.
    compose.write_text(written)
    assert run(capsys, tmp_path, state="current", release=one)["switched"]
    assert os.readlink(tmp_path / "current") == f"releases/{one}"


def test_a_staged_release_edited_on_the_host_is_rewritten_too(tmp_path: Path, capsys: Cap) -> None:
    run(capsys, tmp_path, compose=engine("local/engine:1"))
    staged = run(capsys, tmp_path, state="staged", compose=engine("local/engine:2"))["release"]
    compose = tmp_path / "releases" / staged / "docker-compose.yml"
    written = compose.read_text()
    compose.write_text(written + "# note\n")
    again = run(capsys, tmp_path, state="staged", compose=engine("local/engine:2"))
    assert again["changed"] and again["drifted"] == [f"releases/{staged}/docker-compose.yml"]
    assert compose.read_text() == written


# --- the containers as Docker describes them ------------------------------------------------------------------------
SERVICES = ("engine", "backend", "frontend", "node-exporter")
STACK = {"name": "llm-stack", "services": {s: {"image": f"local/{s}:1"} for s in SERVICES}}


def inspected(service: str, status: str, **state: Any) -> dict[str, Any]:
    """A `docker inspect` entry of a compose container (the fields the module reads, as Docker 20.10 writes them)."""
    return {"Id": f"id-{service}-{status}", "Name": f"/llm-stack-{service}-1", "RestartCount": state.pop("restarts", 0),
            "Config": {"Labels": {"com.docker.compose.project": "llm-stack", "com.docker.compose.service": service}},
            "State": {"Status": status, "Running": status == "running", "ExitCode": state.pop("exit_code", 0),
                      "OOMKilled": state.pop("oom", False), "Error": "", "StartedAt": "2026-12-06T08:00:00.5Z",
                      "FinishedAt": state.pop("finished", "0001-01-01T00:00:00Z"), **state}}


@pytest.fixture
def docker(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A fake Docker CLI: `docker ps` lists the containers in the returned list, `docker inspect` describes them."""
    containers: list[dict[str, Any]] = []

    def run_command(_self: Any, argv: list[str], **_: Any) -> tuple[int, str, str]:
        if argv[1] == "ps":
            assert {"label=com.docker.compose.project=llm-stack", "label=com.docker.compose.oneoff=False"} <= set(argv)
            return 0, "".join(c["Id"] + "\n" for c in containers), ""
        assert argv[1] == "inspect"
        return 0, json.dumps([c for c in containers if c["Id"] in argv[2:]]), ""

    monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", lambda _self, name, **_: f"/usr/bin/{name}")
    monkeypatch.setattr(mod.AnsibleModule, "run_command", run_command)
    return containers


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("how", ["stopped", "removed"])
def test_a_stopped_or_removed_service_is_down(tmp_path: Path, capsys: Cap, docker: list[dict[str, Any]],
                                              service: str, how: str) -> None:
    docker += [inspected(s, "running", Health={"Status": "healthy"}) for s in SERVICES if s != service]
    if how == "stopped":  # `docker stop`: exited with the signal's code, not restarted by the policy
        docker.append(inspected(service, "exited", exit_code=143, finished="2026-12-06T08:05:00.1Z"))
    out = run(capsys, tmp_path, compose=STACK, containers=True)
    assert out["down"] == [service]
    summary = out["containers"][service]["summary"]
    if how == "stopped":
        assert summary == (f"container llm-stack-{service}-1: state exited since 2026-12-06T08:05:00Z, exit code 143, "
                           "OOMKilled false, restart count 0, health none (no health check)")
    else:
        assert out["containers"][service]["status"] == "absent"
        assert summary == f"no container for service {service} (removed, or never created)"
    # A switch (state current) compares with the services its release recorded.
    assert run(capsys, tmp_path, state="current", release=out["release"], containers=True)["down"] == [service]


def test_what_docker_says_of_a_crashed_container_and_which_container_counts(
        tmp_path: Path, capsys: Cap, docker: list[dict[str, Any]]) -> None:
    docker += [
        inspected("engine", "restarting", exit_code=137, oom=True, restarts=4, Health={"Status": "unhealthy"}),
        # A leftover exited container of the backend beside its running one: the running one counts.
        inspected("backend", "exited", exit_code=1),
        inspected("backend", "running"),
        inspected("frontend", "created"),
        inspected("node-exporter", "paused"),
    ]
    out = run(capsys, tmp_path, compose=STACK, containers=True)
    # Docker restarts a restarting container itself; a created or paused one serves nothing until compose up.
    assert out["down"] == ["frontend", "node-exporter"]
    engine_state = out["containers"]["engine"]
    assert engine_state["summary"] == ("container llm-stack-engine-1: state restarting since 2026-12-06T08:00:00Z, "
                                       "exit code 137, OOMKilled true, restart count 4, health unhealthy")
    assert (engine_state["oom_killed"], engine_state["restart_count"], engine_state["health"]) == (True, 4, "unhealthy")
    assert out["containers"]["backend"]["status"] == "running"
    # Read-only: a query (the failure path's) and check mode give the same, and nothing changes.
    assert run(capsys, tmp_path, state="query", containers=True, project="llm-stack")["down"] == out["down"]
    checked = run(capsys, tmp_path, check=True, compose=STACK, containers=True)
    assert not checked["changed"] and checked["down"] == out["down"]


def test_a_service_that_runs_once_is_done_not_down(tmp_path: Path, capsys: Cap, docker: list[dict[str, Any]]) -> None:
    services = {"engine": {"image": "local/engine:1"}, "fetch": {"image": "local/fetch:1", "restart": "no"},
                "warm": {"image": "local/warm:1", "restart": "on-failure:3"}}
    docker += [inspected("engine", "running"), inspected("fetch", "exited"), inspected("warm", "exited")]
    # Every run would reload the project otherwise.
    assert run(capsys, tmp_path, compose={"name": "llm-stack", "services": services}, containers=True)["down"] == []


def test_without_docker_or_without_the_option_nothing_is_said(tmp_path: Path, capsys: Cap,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = run(capsys, tmp_path, compose=STACK)
    assert out["containers"] is None and out["down"] == []
    monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", lambda _self, name, **_: None)
    out = run(capsys, tmp_path, compose=STACK, containers=True)
    assert out["containers"] is None and out["down"] == []
