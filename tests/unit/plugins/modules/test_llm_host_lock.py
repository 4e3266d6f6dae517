"""The host run lock's module (llm_host_lock) against other local users: its flock is taken on a 0600 guard file
that only root can open, never on the shared directory any user can open; the directories it makes are 0700; a lock
directory or guard file that another user owns or could write is refused, naming it. The module's functions run
in-process on a temporary directory; the other user is uid 65534 (nobody) in a forked child (these tests need
root, as CI runs them)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.llm_endpoints.core.plugins.modules import llm_host_lock as mod

NOBODY = 65534
ME = {"controller": "ctl-test", "pid": os.getpid(), "pid_start": None, "user": "root"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="another user's files and processes need root (CI is root)")


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is 0700: nobody could not even open the lock's
    directory, and the attack would be shown not to work for the wrong reason)."""
    path = Path(tempfile.mkdtemp(prefix="llm-host-lock-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture(autouse=True)
def quick_guard_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # A regression (the flock blocked by another user) fails in a second instead of after the module's 10 s.
    monkeypatch.setattr(mod, "GUARD_WAIT_S", 1.0)


def params(path: Path, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "holder": ME, "takeover": "", "label": "unit test", "state": "present",
            "stale_after_s": 10800, "break_lock": False, **extra}


@contextmanager
def held_by_nobody(path: Path) -> Iterator[str]:
    """A child process as nobody opens `path` and holds an exclusive flock on it until the block ends; yields what
    it managed: 'held', or the error it met."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(ready_r)
            os.close(done_w)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                said = b"held"
            except OSError as exc:
                said = type(exc).__name__.encode()
            os.write(ready_w, said)
            os.read(done_r, 1)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        said = os.read(ready_r, 100).decode()
        yield said
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_another_user_cannot_block_the_lock(base: Path) -> None:
    # An existing installation: the shared directory root-owned 0755 (it holds the metrics too), left as it is.
    shared = base / "llm-endpoints"
    shared.mkdir(mode=0o755)
    lock = shared / "run.lock"
    with held_by_nobody(shared) as said:
        assert said == "held"  # any user can flock a directory they can open: the module must not depend on it
        start = time.monotonic()
        outcome = mod.acquire(params(lock), check_mode=False)
        assert outcome["status"] == "acquired" and time.monotonic() - start < 0.5
    guard = shared / ".run.lock.guard"
    with held_by_nobody(guard) as said:
        assert said == "PermissionError"  # nobody cannot open the guard, so cannot hold it
        assert mod.release(params(lock, state="absent"), check_mode=False)["status"] == "released"
    assert mode_of(shared) == 0o755 and not lock.exists()


def test_directories_made_are_0700_and_the_files_0600_and_roots(base: Path) -> None:
    lock = base / "new" / "sub" / "run.lock"
    assert mod.acquire(params(lock), check_mode=False)["status"] == "acquired"
    for path, mode in ((base / "new", 0o700), (base / "new" / "sub", 0o700), (lock, 0o600),
                       (lock.parent / ".run.lock.guard", 0o600)):
        assert (mode_of(path), path.lstat().st_uid) == (mode, 0), path
    assert json.loads(lock.read_text())["label"] == "unit test"


def test_the_last_lock_taken_stays_after_its_release(base: Path) -> None:
    lock = base / "locks" / "run.lock"
    taken = mod.acquire(params(lock), check_mode=False)["lock"]
    last = lock.parent / "run.lock.last"
    assert json.loads(last.read_text()) == taken and mode_of(last) == 0o600
    assert mod.release(params(lock, state="absent"), check_mode=False)["status"] == "released"
    assert not lock.exists() and json.loads(last.read_text()) == taken
    # Check mode takes nothing, so leaves the last record as it was.
    assert mod.acquire(params(lock), check_mode=True)["status"] == "free"
    assert json.loads(last.read_text()) == taken


def test_check_mode_makes_no_guard(base: Path) -> None:
    (base / "locks").mkdir(mode=0o700)
    assert mod.acquire(params(base / "locks" / "run.lock"), check_mode=True)["status"] == "free"
    assert list((base / "locks").iterdir()) == []


def run_main(capsys: pytest.CaptureFixture[str], lock: Path, check: bool = False) -> dict[str, Any]:
    args = {"path": str(lock), "holder": ME, "_ansible_check_mode": check}
    with patch_module_args(args), pytest.raises(SystemExit):
        mod.main()
    return json.loads(capsys.readouterr().out)


def nobodys(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


@pytest.mark.parametrize(("setup", "says"), [
    (nobodys, "its directory DIR is owned by nobody (uid 65534), not by root or by the user this task runs as, "
              "root (uid 0): that user could replace or hold the lock. Give it to root (chown root DIR)"),
    (lambda d: d.chmod(0o777), "its directory DIR has mode 0777, writable by its group and all users: another user "
                               "could create, replace or hold the lock's files. Make it writable by its owner only "
                               "(chmod go-w DIR)"),
    (lambda d: d.chmod(0o1733), "its directory DIR has mode 1733, writable by its group and all users"),
    (lambda d: d.chmod(0o775), "its directory DIR has mode 0775, writable by its group:"),
], ids=["nobodys-dir", "world-writable", "sticky-tmp-like", "group-writable"])
def test_a_directory_others_own_or_can_write_is_refused(base: Path, capsys: pytest.CaptureFixture[str],
                                                         setup: Any, says: str) -> None:
    directory = base / "locks"
    directory.mkdir(mode=0o755)
    setup(directory)
    for check in (True, False):  # check mode refuses as well (a read-only judgement)
        result = run_main(capsys, directory / "run.lock", check=check)
        assert result.get("failed"), result
        assert result["msg"].startswith(f"lock file {directory}/run.lock: ")
        assert says.replace("DIR", str(directory)) in result["msg"], result["msg"]
    assert list(directory.iterdir()) == []  # nothing written into it, its mode left as it was


def nobodys_guard(guard: Path) -> None:
    guard.touch(mode=0o600)
    nobodys(guard)


@pytest.mark.parametrize(("setup", "says"), [
    (nobodys_guard, "the guard file GUARD is owned by nobody (uid 65534) with mode 0600; it must be root (uid 0)'s, "
                    "mode 0600, or another user could hold it and block every run. Remove it (rm GUARD)"),
    (lambda g: g.touch(mode=0o644), "the guard file GUARD is owned by root (uid 0) with mode 0644"),
    (lambda g: g.symlink_to("/etc/shadow"), "the guard file GUARD is a symbolic link; remove it (rm GUARD)"),
    (lambda g: os.mkfifo(g, 0o600), "the guard file GUARD is a FIFO, not a regular file"),
], ids=["nobodys", "0644", "symlink", "fifo"])
def test_a_guard_file_others_could_open_is_refused(base: Path, capsys: pytest.CaptureFixture[str],
                                                   setup: Any, says: str) -> None:
    directory = base / "locks"
    directory.mkdir(mode=0o700)
    guard = directory / ".run.lock.guard"
    setup(guard)
    result = run_main(capsys, directory / "run.lock")
    assert result.get("failed") and says.replace("GUARD", str(guard)) in result["msg"], result["msg"]
    assert not (directory / "run.lock").exists()


@pytest.mark.parametrize(("setup", "kind"), [
    (lambda lock: os.mkfifo(lock, 0o600), "a FIFO"),
    (lambda lock: lock.symlink_to(lock.parent / "secret"), "a symbolic link"),
], ids=["fifo", "symlink"])
def test_a_lock_path_that_is_no_regular_file_is_refused_unread(base: Path, capsys: pytest.CaptureFixture[str],
                                                               setup: Any, kind: str) -> None:
    directory = base / "locks"
    directory.mkdir(mode=0o700)
    (directory / "secret").write_text("root-only-secret")
    setup(directory / "run.lock")
    result = run_main(capsys, directory / "run.lock")
    assert result.get("failed") and f"{directory}/run.lock is {kind}, not a regular file" in result["msg"]
    assert "root-only-secret" not in json.dumps(result)
