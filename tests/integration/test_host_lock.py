"""The host run lock (role host_lock, module and action plugin llm_host_lock) with real ansible-playbook processes on
localhost: a run that holds the lock, a second run refused meanwhile, a run killed with SIGKILL, locks of another
control node written as that node would write them, re-entrance, check mode, release and bad inputs.

ansible-playbook is started directly (not through ansible-runner) so that the test knows the main process's pid,
which is the holder the lock names and the process the kill test kills.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(),
                                reason="the lock judges the controller's processes through /proc")

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PLAYBOOK = ROOT / "tests/playbooks/host_lock.yml"
OTHER = "other-controller.example"


@dataclass
class Done:
    rc: int
    output: str  # stdout and stderr, with every run of whitespace made one space (warnings are wrapped)


@dataclass
class Lab:
    tmp: Path
    started: list[subprocess.Popen] = field(default_factory=list)

    @property
    def lock(self) -> Path:
        return self.tmp / "locks" / "run.lock"

    def command(self, extravars: dict, options: tuple[str, ...]) -> list[str]:
        varfile = self.tmp / f"vars-{time.monotonic_ns()}.json"
        varfile.write_text(json.dumps({"host_lock_path": str(self.lock), **extravars}))
        return [str(ANSIBLE_PLAYBOOK), "-i", str(self.tmp / "hosts"), "-e", f"@{varfile}", *options, str(PLAYBOOK)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".collection"), "ANSIBLE_NOCOLOR": "1",
                "PATH": f"{ANSIBLE_PLAYBOOK.parent}:{os.environ.get('PATH', '')}"}

    def start(self, extravars: dict, *options: str) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(extravars, options), cwd=self.tmp, env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    def run(self, extravars: dict | None = None, *options: str) -> Done:
        proc = self.start(extravars or {}, *options)
        output, _ = proc.communicate(timeout=60)
        return Done(proc.returncode, " ".join(output.split()))

    def record(self) -> dict:
        return json.loads(self.lock.read_text())

    def write(self, **record: object) -> bytes:
        self.lock.parent.mkdir(mode=0o755, exist_ok=True)
        data = json.dumps(record).encode()
        self.lock.write_bytes(data)
        return data

    def wait_for_lock(self, proc: subprocess.Popen) -> dict:
        """The lock record once the run `proc` has written it (polled, not slept on)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before it held the lock"
            try:
                record = self.record()
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            if record["pid"] == proc.pid:
                return record
            time.sleep(0.05)
        raise AssertionError("the run did not take the lock within 30 s")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    (tmp_path / "hosts").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        (tmp_path / "gate").touch()  # lets a waiting run (or the orphaned worker of a killed one) finish
        for proc in lab.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def foreign(age_s: float) -> dict:
    """A lock as a run on another control node writes it, taken age_s seconds ago."""
    started = time.time() - age_s
    return {"controller": OTHER, "pid": 4242, "pid_start": 12345, "user": "alice", "label": "deploy from elsewhere",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "started_epoch": int(started)}


def process_start(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2:].split()[19])


def test_a_second_run_is_refused_while_the_first_holds_the_lock(lab: Lab) -> None:
    gate = lab.tmp / "gate"
    first = lab.start({"host_lock_label": "run A", "host_lock_test_gate": str(gate)})
    record = lab.wait_for_lock(first)
    assert record["label"] == "run A" and record["controller"] == socket.gethostname()
    assert record["pid_start"] == process_start(first.pid)
    assert oct(lab.lock.stat().st_mode & 0o777) == "0o600"

    second = lab.run({"host_lock_label": "run B"})
    assert second.rc != 0, second.output[-3000:]
    assert f"localhost is locked by another run: 'run A' started {record['started']}" in second.output
    assert f"@{socket.gethostname()} pid {first.pid}" in second.output
    assert f"ansible-playbook process (pid {first.pid}) still runs on this control node" in second.output
    assert "Wait for that run to finish; if it is gone" in second.output
    assert "re-run with -e host_lock_break=true" in second.output
    assert lab.record() == record  # still run A's

    gate.touch()
    output, _ = first.communicate(timeout=30)
    assert first.returncode == 0, output[-3000:]
    assert not lab.lock.exists()  # run A released it
    again = lab.run({"host_lock_label": "run B"})
    assert again.rc == 0, again.output[-3000:]
    assert "changed=0" in again.output and not lab.lock.exists()


def test_the_lock_of_a_killed_run_is_taken_over_by_the_next_run(lab: Lab) -> None:
    gate = lab.tmp / "gate"
    killed = lab.start({"host_lock_label": "run killed", "host_lock_test_gate": str(gate)})
    record = lab.wait_for_lock(killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=10)
    gate.touch()  # its orphaned worker, still waiting for the gate, ends (it cannot release: the main process did)
    assert lab.record() == record  # the lock stays behind

    next_run = lab.run({"host_lock_label": "run after"})
    assert next_run.rc == 0, next_run.output[-3000:]
    assert (f"[WARNING]: host_lock: localhost: the lock {lab.lock} was taken over from the interrupted run of "
            f"'run killed' started {record['started']} by {record['user']}@{socket.gethostname()} "
            f"pid {killed.pid} (pid {killed.pid} no longer runs on this control node)") in next_run.output
    assert "changed=0" in next_run.output and not lab.lock.exists()


def test_a_recent_lock_of_another_controller_is_refused(lab: Lab) -> None:
    data = lab.write(**foreign(age_s=30))
    run = lab.run()
    assert run.rc != 0
    assert "localhost is locked by another run: 'deploy from elsewhere' started" in run.output
    assert f"by alice@{OTHER} pid 4242; its lock is 3" in run.output  # 30 s old and a little
    assert "s old and not stale (it was taken from another control node less than stale_after_s (10800 s) ago" \
        in run.output
    assert "re-run with -e host_lock_break=true" in run.output
    assert lab.lock.read_bytes() == data


def test_an_old_lock_of_another_controller_is_taken_over(lab: Lab) -> None:
    old = foreign(age_s=10800 + 60)
    lab.write(**old)
    run = lab.run()
    assert run.rc == 0, run.output[-3000:]
    assert (f"was taken over from the interrupted run of 'deploy from elsewhere' started {old['started']} "
            f"by alice@{OTHER} pid 4242 (it was taken from another control node longer ago than stale_after_s "
            "(10800 s))") in run.output
    assert not lab.lock.exists()


def test_break_takes_over_a_recent_lock_of_another_controller(lab: Lab) -> None:
    lab.write(**foreign(age_s=30))
    run = lab.run({}, "-e", "host_lock_break=true")
    assert run.rc == 0, run.output[-3000:]
    assert "was taken over on request (break_lock) from the run of 'deploy from elsewhere'" in run.output
    assert not lab.lock.exists()


def test_the_plays_of_one_run_take_the_lock_once_without_a_change(lab: Lab) -> None:
    run = lab.run({"host_lock_label": "three plays"}, "-v")
    assert run.rc == 0, run.output[-3000:]
    # Each task's output, by its header (the role's tasks are headed "llm_endpoints.core.host_lock : <name>").
    tasks = re.findall(r"TASK \[(?:llm_endpoints\.core\.host_lock : )?([^\]]+)\] \*+ (.*?)(?= TASK \[| PLAY )",
                       run.output)
    taken = [out for name, out in tasks if name == "This run holds the host's run lock"]
    # Play 1 takes it; play 2's role finds it held by this run and makes no call; play 3 takes it after the release.
    assert len(taken) == 3, tasks
    assert '"status": "acquired"' in taken[0] and '"status": "acquired"' in taken[2], taken
    assert taken[1].startswith("skipping: [localhost]"), taken[1]
    [again] = [out for name, out in tasks if name == "The module finds the lock held by this run"]
    assert '"status": "held"' in again  # the module itself: the same run, re-entrant
    assert run.output.count('"status": "released"') == 2
    assert re.search(r"localhost : ok=\d+ changed=0 unreachable=0 failed=0", run.output), run.output[-1000:]
    assert not lab.lock.exists()


def test_check_mode_fails_for_a_live_holder_and_writes_nothing(lab: Lab) -> None:
    data = lab.write(**foreign(age_s=30))
    run = lab.run({}, "--check")
    assert run.rc != 0
    assert "localhost is locked by another run: 'deploy from elsewhere'" in run.output
    assert lab.lock.read_bytes() == data

    lab.write(**foreign(age_s=10800 + 60))
    data = lab.lock.read_bytes()
    run = lab.run({}, "--check")
    assert run.rc == 0, run.output[-3000:]
    assert "the lock would be taken over from the interrupted run of 'deploy from elsewhere'" in run.output
    assert "(check mode: nothing written)" in run.output
    assert lab.lock.read_bytes() == data


def test_check_mode_without_a_lock_writes_nothing(lab: Lab) -> None:
    run = lab.run({}, "--check")
    assert run.rc == 0, run.output[-3000:]
    assert "changed=0" in run.output
    assert not lab.lock.parent.exists()


def test_a_release_leaves_another_runs_lock_alone(lab: Lab) -> None:
    # A live run on this control node: this test process itself, with its real start time.
    live = {"controller": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "user": "bob", "label": "the other run", "started": "2025-01-01T00:00:00Z",
            "started_epoch": int(time.time())}
    data = lab.write(**live)
    run = lab.run({"host_lock_test_release_only": True})
    assert run.rc == 0, run.output[-3000:]
    assert (f"[WARNING]: host_lock: localhost: the lock {lab.lock} is held by another run, 'the other run' started "
            f"2025-01-01T00:00:00Z by bob@{socket.gethostname()} pid {os.getpid()}; this run did not hold it and "
            "leaves it alone") in run.output
    assert lab.lock.read_bytes() == data


BAD_INPUTS = [
    ({"host_lock_path": "run.lock"},
     'host_lock_path must be an absolute path of a file, without spaces or line breaks; got "run.lock".'),
    ({"host_lock_path": "/tmp/lock dir/run.lock"}, 'host_lock_path must be an absolute path of a file'),
    ({"host_lock_stale_after_s": 5},
     "host_lock_stale_after_s must be a whole number of seconds from 60 to 604800; got 5."),
    ({"host_lock_break": "maybe"}, "argument 'host_lock_break' is of type str and we were unable to convert to bool"),
    ({"host_lock_label": "a\nb"},
     'host_lock_label must be 1 to 200 printable characters without line breaks; got "a\\nb".'),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS,
                         ids=["relative", "space", "stale-5", "break-maybe", "label-line-break"])
def test_bad_inputs_fail_before_anything_is_written(lab: Lab, extra: dict, message: str) -> None:
    run = lab.run(extra)
    assert run.rc != 0
    assert message in run.output, run.output[-3000:]
    assert not lab.lock.parent.exists()
    assert not (lab.tmp / "run.lock").exists() and not Path("/tmp/lock dir").exists()
