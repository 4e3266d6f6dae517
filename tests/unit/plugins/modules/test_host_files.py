"""Several files in one call (host_files): written only when their content differs, modes and owners set (before
the rename: a 0600 file is never readable by others), check mode and diff mode, removals, and inputs refused before
anything is written. The module runs for real on a temporary directory."""
from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.llm_endpoints.core.plugins.modules import host_files as mod

Cap = pytest.CaptureFixture[str]
ME = {"owner": str(os.getuid()), "group": str(os.getgid())}


def run(capsys: Cap, check: bool = False, diff: bool = False, **args: Any) -> dict[str, Any]:
    params = {**args, "_ansible_check_mode": check, "_ansible_diff": diff}
    with patch_module_args(params), pytest.raises(SystemExit):
        mod.main()
    return json.loads(capsys.readouterr().out)


def entry(path: Path, content: str, mode: str = "0644") -> dict[str, str]:
    return {"path": str(path), "content": content, "mode": mode, **ME}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_once_then_unchanged(tmp_path: Path, capsys: Cap) -> None:
    files = [entry(tmp_path / "a.conf", "a=1\n"), entry(tmp_path / "run.sh", "#!/bin/sh\necho é\n", "0755")]
    first = run(capsys, files=files)
    assert first["changed"] and first["changed_paths"] == [f["path"] for f in files]
    assert (tmp_path / "a.conf").read_text() == "a=1\n"
    assert (tmp_path / "run.sh").read_text(encoding="utf-8") == "#!/bin/sh\necho é\n"
    assert mode_of(tmp_path / "run.sh") == 0o755 and mode_of(tmp_path / "a.conf") == 0o644
    again = run(capsys, files=files)
    assert not again["changed"] and again["changed_paths"] == []
    # No temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.conf", "run.sh"]


def test_only_the_changed_file_is_reported_and_a_trailing_newline_counts(tmp_path: Path, capsys: Cap) -> None:
    run(capsys, files=[entry(tmp_path / "a", "x\n"), entry(tmp_path / "b", "y\n")])
    result = run(capsys, files=[entry(tmp_path / "a", "x\n"), entry(tmp_path / "b", "y")])
    assert result["changed_paths"] == [str(tmp_path / "b")]
    assert (tmp_path / "b").read_text() == "y"


def test_a_mode_alone_is_mended(tmp_path: Path, capsys: Cap) -> None:
    run(capsys, files=[entry(tmp_path / "s.env", "K=v\n", "0600")])
    (tmp_path / "s.env").chmod(0o644)
    result = run(capsys, files=[entry(tmp_path / "s.env", "K=v\n", "0600")])
    assert result["changed_paths"] == [str(tmp_path / "s.env")]
    assert mode_of(tmp_path / "s.env") == 0o600


def test_a_secret_file_replaced_keeps_0600_and_the_old_inode_is_not_written(tmp_path: Path, capsys: Cap) -> None:
    target = tmp_path / "s.env"
    run(capsys, files=[entry(target, "K=old\n", "0600")])
    old = os.open(target, os.O_RDONLY)
    try:
        run(capsys, files=[entry(target, "K=new\n", "0600")])
        # Renamed over, not rewritten in place: a reader holding the old file sees the old content whole.
        assert os.read(old, 100) == b"K=old\n"
    finally:
        os.close(old)
    assert target.read_text() == "K=new\n" and mode_of(target) == 0o600


def test_check_mode_writes_nothing_and_reports_what_would_change(tmp_path: Path, capsys: Cap) -> None:
    run(capsys, files=[entry(tmp_path / "a", "1\n")])
    (tmp_path / "gone").write_text("x")
    result = run(capsys, check=True, diff=True,
                 files=[entry(tmp_path / "a", "2\n"), entry(tmp_path / "new", "n\n"),
                        entry(tmp_path / "missing-dir" / "f", "f\n")],
                 absent=[str(tmp_path / "gone"), str(tmp_path / "never-there")])
    assert result["changed_paths"] == [str(tmp_path / p) for p in ("a", "new", "missing-dir/f", "gone")]
    assert (tmp_path / "a").read_text() == "1\n" and not (tmp_path / "new").exists()
    assert (tmp_path / "gone").exists()
    first = result["diff"][0]
    assert first["before"] == "1\n" and first["after"] == "2\n" and first["before_header"] == str(tmp_path / "a")


def test_absent_removes_files_links_and_directories(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("x")
    (tmp_path / "f").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "d")
    result = run(capsys, absent=[str(tmp_path / "l"), str(tmp_path / "d"), str(tmp_path / "f"),
                                 str(tmp_path / "none")])
    assert result["changed_paths"] == [str(tmp_path / p) for p in ("l", "d", "f")]
    assert list(tmp_path.iterdir()) == []
    assert not run(capsys, absent=[str(tmp_path / "d")])["changed"]


@pytest.mark.parametrize(("bad", "says"), [
    ({"path": "relative/f"}, "files[1].path must be an absolute"),
    ({"path": "/tmp/../etc/f"}, "files[1].path must be an absolute path without . or .. components"),
    ({"mode": "644x"}, "files[1].mode must be an octal mode"),
    ({"mode": True}, "files[1].mode must be an octal mode"),
    ({"owner": "no-such-user-llm"}, "files[1].owner 'no-such-user-llm' is not known"),
    ({"path": "/nonexistent-dir-llm/f"}, "files[1]: the directory of /nonexistent-dir-llm/f does not exist"),
])
def test_bad_inputs_fail_before_anything_is_written(tmp_path: Path, capsys: Cap, bad: dict[str, str],
                                                    says: str) -> None:
    good = entry(tmp_path / "good", "g\n")
    result = run(capsys, files=[good, {**entry(tmp_path / "bad", "b\n"), **bad}])
    assert result["failed"] and says in result["msg"]
    assert not (tmp_path / "good").exists()


def test_owner_and_group_for_all_files_or_left_as_they_are(tmp_path: Path, capsys: Cap) -> None:
    plain = {"path": str(tmp_path / "plain"), "content": "p\n", "mode": "0640"}
    result = run(capsys, files=[plain])
    assert result["changed_paths"] == [plain["path"]]
    assert (tmp_path / "plain").stat().st_uid == os.getuid()
    both = run(capsys, files=[plain, {**plain, "path": str(tmp_path / "own"), "owner": "no-such-user-llm"}], **ME)
    assert both["failed"] and "files[1].owner 'no-such-user-llm' is not known" in both["msg"]
    assert not run(capsys, files=[plain], **ME)["changed"]


def test_an_existing_files_owner_is_kept_when_none_is_given_and_set_when_one_is(tmp_path: Path, capsys: Cap) -> None:
    if os.getuid() != 0:
        pytest.skip("changing a file's owner needs root (CI runs as root)")
    target = tmp_path / "f"
    target.write_text("old\n")
    os.chown(target, 65534, 65534)
    run(capsys, files=[{"path": str(target), "content": "new\n", "mode": "0644"}])
    assert target.read_text() == "new\n" and (target.stat().st_uid, target.stat().st_gid) == (65534, 65534)
    result = run(capsys, files=[{"path": str(target), "content": "new\n", "mode": "0644"}], owner="root",
                 group="root")
    assert result["changed_paths"] == [str(target)] and (target.stat().st_uid, target.stat().st_gid) == (0, 0)


def test_no_log_keeps_contents_out_of_the_result(tmp_path: Path, capsys: Cap) -> None:
    secret = "API_KEY=s3cr3t-value\n"
    result = run(capsys, diff=True, files=[entry(tmp_path / "e.env", secret, "0600")], _ansible_no_log=True)
    assert result["changed_paths"] == [str(tmp_path / "e.env")]
    assert "s3cr3t-value" not in json.dumps(result) and "diff" not in result
    assert result["invocation"]["module_args"]["files"] == [str(tmp_path / "e.env")]


def test_a_mode_as_yaml_reads_an_unquoted_0644(tmp_path: Path, capsys: Cap) -> None:
    run(capsys, files=[{**entry(tmp_path / "f", "x\n"), "mode": 0o644}])
    assert mode_of(tmp_path / "f") == 0o644


def test_a_failure_after_a_write_reports_the_change(tmp_path: Path, capsys: Cap) -> None:
    # /proc/version cannot be removed, not even by root.
    result = run(capsys, files=[entry(tmp_path / "a", "1\n")], absent=["/proc/version"])
    assert result["failed"] and result["changed"] and result["changed_paths"] == [str(tmp_path / "a")]
    assert "/proc/version could not be removed" in result["msg"]
    assert (tmp_path / "a").read_text() == "1\n"


def test_a_directory_in_the_way_and_removing_root_are_refused(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "d")
    result = run(capsys, files=[entry(tmp_path / "d", "x"), entry(tmp_path / "l", "x")], absent=["/"])
    assert result["failed"]
    assert f"{tmp_path / 'd'} is a directory" in result["msg"] and f"{tmp_path / 'l'} is a directory" in result["msg"]
    assert "absent[0] must be an absolute path without . or .. components, other than /" in result["msg"]


def test_repeated_and_trailing_slashes_are_collapsed(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "gone").mkdir()
    result = run(capsys, files=[entry(Path(f"{tmp_path}//a"), "x\n")], absent=[f"{tmp_path}/gone/"])
    assert result["changed_paths"] == [str(tmp_path / "a"), str(tmp_path / "gone")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def directory(path: Path, mode: str = "0755") -> dict[str, str]:
    return {"path": str(path), "mode": mode, **ME}


def test_directories_are_made_with_their_parents_before_the_files(tmp_path: Path, capsys: Cap) -> None:
    build = tmp_path / "stack" / "engine-build"
    args = {"directories": [directory(build, "0750"), directory(build / "wheels")],
            "files": [entry(build / "Dockerfile", "FROM x\n")]}
    first = run(capsys, **args)
    assert first["changed_paths"] == [str(build), str(build / "wheels"), str(build / "Dockerfile")]
    assert mode_of(build) == 0o750 and mode_of(build / "wheels") == 0o755
    assert (build / "Dockerfile").read_text() == "FROM x\n"
    assert run(capsys, **args)["changed_paths"] == []
    build.chmod(0o700)
    assert run(capsys, **args)["changed_paths"] == [str(build)] and mode_of(build) == 0o750


def test_directories_in_check_mode_are_reported_not_made(tmp_path: Path, capsys: Cap) -> None:
    new = tmp_path / "new"
    result = run(capsys, check=True, diff=True, directories=[directory(new)], files=[entry(new / "a", "x\n")])
    assert result["changed_paths"] == [str(new), str(new / "a")]
    assert result["diff"][0]["after"] == "(directory)\n"
    assert not new.exists()


def test_a_file_in_the_way_of_a_directory_is_refused_before_anything_is_written(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "blocker").write_text("x")
    result = run(capsys, directories=[directory(tmp_path / "blocker" / "sub"), directory(tmp_path / "ok", "755x")],
                 files=[entry(tmp_path / "first", "y\n")])
    assert result["failed"] and "blocker is in the way of" in result["msg"]
    assert "directories[1].mode must be an octal mode" in result["msg"]
    assert not (tmp_path / "first").exists() and not (tmp_path / "ok").exists()


def test_a_link_to_a_directory_is_followed_and_stays_unchanged(tmp_path: Path, capsys: Cap) -> None:
    (tmp_path / "disk" / "metrics").mkdir(parents=True)
    (tmp_path / "metrics").symlink_to(tmp_path / "disk" / "metrics")
    args = {"directories": [directory(tmp_path / "metrics", "0750")]}
    assert run(capsys, **args)["changed_paths"] == [str(tmp_path / "metrics")]
    assert mode_of(tmp_path / "disk" / "metrics") == 0o750 and (tmp_path / "metrics").is_symlink()
    assert run(capsys, **args)["changed_paths"] == []


@contextmanager
def at_most(seconds: int) -> Iterator[None]:
    """A regression that blocks (opening a FIFO waits for a writer) fails the test instead of hanging the run."""
    def expire(*_: object) -> None:
        raise TimeoutError(f"host_files still ran after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def special(kind: str, path: Path) -> None:
    if kind == "a FIFO":
        os.mkfifo(path, 0o644)
    else:  # the null device's numbers, under another name
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))


@pytest.mark.parametrize("kind", ["a FIFO", "a character device"])
def test_a_fifo_or_device_at_a_file_path_fails_fast_and_is_left_alone(tmp_path: Path, capsys: Cap, kind: str) -> None:
    if kind != "a FIFO" and os.getuid() != 0:
        pytest.skip("making a device node needs root (CI runs as root)")
    special(kind, tmp_path / "planted")
    with at_most(5):
        result = run(capsys, diff=True, files=[entry(tmp_path / "first", "1\n"), entry(tmp_path / "planted", "x\n")])
    assert result.get("failed") and result["changed_paths"] == []
    assert (f"files[1]: {tmp_path / 'planted'} is {kind}, not a regular file: host_files neither reads nor writes "
            "through it") in result["msg"]
    assert not (tmp_path / "first").exists()
    assert stat.S_ISFIFO((tmp_path / "planted").lstat().st_mode) == (kind == "a FIFO")


@pytest.mark.parametrize("check", [False, True])
def test_a_link_to_a_secret_is_refused_and_its_content_never_shown(tmp_path: Path, capsys: Cap, check: bool) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$top-secret-hash:19000::::::\n")
    secret.chmod(0o600)
    (tmp_path / "app.conf").symlink_to(secret)
    result = run(capsys, check=check, diff=True, files=[entry(tmp_path / "app.conf", "a=1\n")])
    assert result.get("failed") and result["changed_paths"] == []
    assert f"files[0]: {tmp_path / 'app.conf'} is a symbolic link, not a regular file" in result["msg"]
    assert "top-secret-hash" not in json.dumps(result)
    # Nothing written through the link, nor over it.
    assert (tmp_path / "app.conf").is_symlink() and secret.read_text().startswith("root:$6$top-secret-hash")
    assert mode_of(secret) == 0o600
