"""The fleet's limits store as role limits_store configures it: the configuration written by the role (entry point
config) and run by the distribution's own redis-server (Debian's package, scripts/ensure-redis.sh): a password and
nothing without it, the dangerous commands refused, every write in the append-only file and kept across a restart,
and the backend's own store client (apps/backend/gateway/store.py) deciding and keeping its ledger through it."""
from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from gateway.store import SharedLimits
from llm_fixture import Cases, free_port, run_cases, run_playbook

ROOT = Path(__file__).resolve().parents[2]
REDIS_DIR = ROOT / ".cache/redis"
PASSWORD = "store-password-0123456789abcdef-0123456789"


def server(config: Path, port: int) -> subprocess.Popen:
    """The unpacked redis-server with the role's configuration (its log to stdout: the distribution's log directory
    is not this machine's)."""
    if not (REDIS_DIR / "usr/bin/redis-server").exists():
        pytest.fail("Redis is not unpacked: run scripts/ensure-redis.sh (make test does)")
    process = subprocess.Popen(
        [str(REDIS_DIR / "usr/bin/redis-server"), str(config), "--logfile", "", "--pidfile", ""],
        env={"LD_LIBRARY_PATH": str(REDIS_DIR / "usr/lib/x86_64-linux-gnu")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = redis.Redis(port=port, password=PASSWORD, socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return process
        except redis.RedisError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"redis-server did not start: {process.communicate()[0][-3000:]}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("limits-store")
    data, port = work / "data", free_port()
    data.mkdir()
    variables = {"limits_store_bind_address": "127.0.0.1", "limits_store_port": port,
                 "limits_store_password": PASSWORD, "limits_store_dir": str(data),
                 "limits_store_config_file": str(work / "store.conf"),
                 # This machine has no redis group: the file's group is root's here.
                 "__limits_store_group": "root"}
    run = run_playbook(work, "limits_store_config.yml", variables)
    assert run.rc == 0, run.output[-4000:]
    state = {"work": work, "data": data, "port": port, "run": run, "process": server(work / "store.conf", port)}
    yield state
    # The server running now (the restart test started another).
    state["process"].kill()
    state["process"].wait()


def test_the_configuration_is_0640_and_never_shown(store: dict) -> None:
    config = store["work"] / "store.conf"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert PASSWORD in config.read_text()
    assert PASSWORD not in store["run"].output


def test_an_ipv6_address_is_bound_without_its_brackets(tmp_path: Path) -> None:
    run = run_playbook(tmp_path, "limits_store_config.yml",
                       {"limits_store_bind_address": "[::1]", "limits_store_password": PASSWORD,
                        "limits_store_dir": str(tmp_path / "data"),
                        "limits_store_config_file": str(tmp_path / "s.conf"), "__limits_store_group": "root"})
    assert run.rc == 0, run.output[-3000:]
    assert "\nbind ::1\n" in (tmp_path / "s.conf").read_text()


def test_nothing_is_answered_without_the_password(store: dict) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=store["port"], socket_timeout=1).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=store["port"], password="wrong-password", socket_timeout=1).ping()


def test_dangerous_commands_are_refused(store: dict) -> None:
    client = redis.Redis(port=store["port"], password=PASSWORD, socket_timeout=1)
    client.set("llm:test", "kept")
    for command in (("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*"), ("SAVE",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    assert client.get("llm:test") == b"kept"


def test_the_backends_store_client_decides_and_keeps_its_ledger_through_it(store: dict) -> None:
    async def use() -> tuple[list, list]:
        limits = SharedLimits(f"redis://:{PASSWORD}@127.0.0.1:{store['port']}/0", 2.0, 60.0)
        try:
            # Two admissions of a key allowed 1 in flight: the first has a lease, the second is refused.
            verdicts = [await limits.run("admit", "team-a", ((100, 60),), 1) for _ in range(2)]
            await limits.record_usage("team-a", 12, 34)
            return verdicts, await limits.ledger(1)
        finally:
            await limits.close()
    verdicts, ledger = asyncio.run(use())
    assert verdicts[0].admitted and verdicts[0].lease and not verdicts[1].admitted, verdicts
    assert [(row["key_id"], row["prompt_tokens"], row["completion_tokens"]) for row in ledger] == [("team-a", 12, 34)]


def test_writes_are_in_the_append_only_file_and_survive_a_restart(store: dict) -> None:
    client = redis.Redis(port=store["port"], password=PASSWORD, socket_timeout=1)
    client.set("llm:survives", "yes")
    time.sleep(1.5)  # appendfsync everysec
    assert list((store["data"] / "appendonlydir").glob("appendonly.aof.*.incr.aof"))
    store["process"].kill()  # no shutdown save: what comes back comes from the append-only file
    store["process"].wait()
    store["process"] = server(store["work"] / "store.conf", store["port"])
    assert redis.Redis(port=store["port"], password=PASSWORD, socket_timeout=1).get("llm:survives") == b"yes"


BAD_INPUTS = [
    ({"limits_store_password": ""}, "limits_store_password must be 32 to 512 letters"),
    ({"limits_store_password": "short-0123"}, "limits_store_password must be 32 to 512 letters"),
    ({"limits_store_password": PASSWORD + "\nuser evil on nopass +@all"}, "limits_store_password must be 32 to 512"),
    ({"limits_store_password": PASSWORD + "@host"}, "limits_store_password must be 32 to 512 letters"),
    # The vault example's placeholder is well-formed, and published.
    ({"limits_store_password": "CHANGE-ME-openssl-rand-hex-32-gives-one-0123456789"},
     "not the vault example's CHANGE-ME placeholder"),
    ({"limits_store_bind_address": "0.0.0.0"}, 'limits_store_bind_address must be the one address'),
    ({"limits_store_bind_address": "[::]"}, 'limits_store_bind_address must be the one address'),
    ({"limits_store_bind_address": "127.0.0.1\nbind 0.0.0.0"}, 'limits_store_bind_address must be the one address'),
    ({"limits_store_port": 70000}, "limits_store_port must be a whole number from 1 to 65535; got 70000."),
    ({"limits_store_maxmemory_mb": "1gb"},
     'limits_store_maxmemory_mb must be a whole number from 0 to 1048576; got "1gb".'),
    ({"limits_store_appendfsync": "sometimes"},
     "value of limits_store_appendfsync must be one of: everysec, always, no"),
    ({"limits_store_dir": "relative/dir"}, 'limits_store_dir must be an absolute path'),
    ({"limits_store_config_file": "/etc/redis/../shadow"}, 'limits_store_config_file must be an absolute path'),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, Path]:
    work = tmp_path_factory.mktemp("limits-store-bad")
    cases = {f"case-{index}": {"limits_store_bind_address": "127.0.0.1", "limits_store_password": PASSWORD,
                               "limits_store_dir": str(work / f"case-{index}" / "data"),
                               "limits_store_config_file": str(work / f"case-{index}" / "store.conf"),
                               "__limits_store_group": "root", **extra}
             for index, (extra, _) in enumerate(BAD_INPUTS)}
    return run_cases(work, "limits_store_config.yml", cases), work


@pytest.mark.parametrize(("index", "message"), [(i, case[1]) for i, case in enumerate(BAD_INPUTS)])
def test_a_bad_input_is_refused_by_name_before_anything_is_written(bad_input_runs: tuple[Cases, Path], index: int,
                                                                   message: str) -> None:
    runs, work = bad_input_runs
    host = f"case-{index}"
    assert host in runs.failed, runs.hosts[host][-3000:]
    assert message in runs.hosts[host], runs.hosts[host][-3000:]
    assert not (work / host / "store.conf").exists()
    assert PASSWORD not in runs.output
