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
