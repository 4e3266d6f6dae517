"""The fleet's front door and shared limits as site.yml converged them on fleet-1 (role front_door: Debian's haproxy
with the lab CA's certificate; role limits_store: Debian's redis-server), in front of the backend APIs of the three
hosts, which listen on their internal addresses. Run before the rollouts (tests/test_fleet.py); the client load
during the good rollout is there."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import httpx
from fleet_client import (
    ADDRESS,
    CLIENT_KEY,
    COMPOSE,
    LIMITED_KEY,
    MODEL,
    Load,
    door_client,
    door_request,
    on,
    servers,
    states,
    wait_all_up,
)

BACKEND = f"{COMPOSE} exec -T backend"


def test_haproxy_runs_from_the_distribution_with_every_host_up_behind_it() -> None:
    assert on("fleet-1", "dpkg-query -W -f '${Status}' haproxy") == "install ok installed"
    assert on("fleet-1", "systemctl is-active haproxy; systemctl is-enabled haproxy").split() == ["active", "enabled"]
    assert on("fleet-1", "stat -c '%a %U' /etc/haproxy/llm-front-door/front-door.pem") == "600 root"
    wait_all_up()
    # The store the backends count in: Debian's Redis, on fleet-1's internal address only.
    assert on("fleet-1", "systemctl is-active redis-server") == "active"
    assert on("fleet-1", "ss -Hltn 'sport = :6379' | awk '{print $4}'") == f"{ADDRESS['fleet-1']}:6379"


def test_https_with_the_lab_ca_reaches_the_apis_and_a_stream_passes_whole() -> None:
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with door_client() as client:
        models = door_request(client, "GET", "/v1/models", headers=auth)
        assert models.status_code == 200, models.text
        assert [m["id"] for m in models.json()["data"]] == [MODEL]
        body = {"model": MODEL, "stream": True, "max_tokens": 8,
                "messages": [{"role": "user", "content": "한국의 수도는 어디입니까?"}]}
        stream = door_request(client, "POST", "/v1/chat/completions", headers=auth, json=body)
    assert stream.status_code == 200
    assert stream.text.count("data: {") >= 2 and stream.text.rstrip().endswith("data: [DONE]"), stream.text[-500:]


def test_metrics_stay_inside_and_plain_http_is_redirected() -> None:
    with door_client() as client:
        assert door_request(client, "GET", "/metrics").status_code == 404
    plain = httpx.get(f"http://{ADDRESS['fleet-1']}/v1/models", headers={"Host": "fleet-1"}, timeout=30)
    assert (plain.status_code, plain.headers["location"]) == (308, "https://fleet-1/v1/models")


def test_behind_the_front_door_each_hosts_services_are_on_its_internal_address_and_loopback_only() -> None:
    for host in ("fleet-2", "fleet-3"):
        for service, port in (("engine", 8000), ("backend", 8080)):
            container = on(host, f"{COMPOSE} ps -q {service}")
            bindings = json.loads(on(host, f"docker inspect -f '{{{{json .NetworkSettings.Ports}}}}' {container}"))
            published = sorted(b["HostIp"] for bs in bindings.values() for b in bs or [] if b["HostPort"] == str(port))
            assert published == sorted([ADDRESS[host], "127.0.0.1"]), (host, service, bindings)


def test_a_killed_engine_fails_only_its_streams_in_flight_and_its_host_is_out_within_10_s() -> None:
    """fleet-3's engine is killed (docker kill: Docker's restart policy leaves it down) under a load of three
    clients: streams it was generating fail; a request sent there afterwards gets its backend's 503, which the
    front door sends on to another host; the health checks take fleet-3 out, and it gets nothing after."""
    wait_all_up()
    engine = on("fleet-3", f"{COMPOSE} ps -q engine")
    try:
        with Load(clients=3) as load:
            time.sleep(5)
            on("fleet-3", f"docker kill {engine}")
            killed = time.monotonic()
            while states()["fleet-3"] != "DOWN":
                assert time.monotonic() - killed < 10, states()
                time.sleep(0.5)
            out_after = time.monotonic() - killed
            time.sleep(max(0.0, killed + 10 - time.monotonic()))
            sessions = int(servers()["fleet-3"]["stot"])
            time.sleep(8)
            sessions_after = int(servers()["fleet-3"]["stot"])
    finally:
        # Back by hand (a killed container is not restarted by Docker or the watchdog), and in rotation again.
        on("fleet-3", f"docker start {engine}")
    failed_after_kill = [r for r in load.failed if r.started >= killed]
    failed_in_flight = [r for r in load.failed if r.started < killed]
    print(f"engine killed on fleet-3 under 3 clients: {len(load.results)} requests, {len(failed_in_flight)} failed "
          f"(in flight then), {len(failed_after_kill)} failed after; fleet-3 out of rotation {out_after:.1f} s "
          f"after; sessions to it from 10 s after the kill to the end: {sessions_after - sessions}")
    assert failed_after_kill == [], [r.detail for r in failed_after_kill]
    # At most one stream per client can have been in flight when the engine died.
    assert len(failed_in_flight) <= 3, [r.detail for r in failed_in_flight]
    assert sessions_after == sessions
    assert len([r for r in load.results if r.started >= killed]) >= 10
    wait_all_up()


def test_a_keys_rate_limit_reached_through_two_hosts_counts_once() -> None:
    """fleet-limited may make 4 requests a minute: two through fleet-2's backend and two through fleet-3's use it up
    for the whole fleet (the shared store on fleet-1), where each host alone would have allowed four."""
    auth = {"Authorization": f"Bearer {LIMITED_KEY}"}
    backend = {host: f"http://{ADDRESS[host]}:8080/v1/models" for host in ("fleet-2", "fleet-3")}
    codes = [httpx.get(backend[host], headers=auth, timeout=30).status_code
             for host in ("fleet-2", "fleet-2", "fleet-3", "fleet-3")]
    assert codes == [200] * 4
    refused = {host: httpx.get(url, headers=auth, timeout=30) for host, url in backend.items()}
    with door_client() as client:
        refused["front door"] = door_request(client, "GET", "/v1/models", headers=auth)
    print("fleet-limited (4/minute): 2 + 2 requests through fleet-2 and fleet-3 passed; then",
          {where: reply.status_code for where, reply in refused.items()})
    for where, reply in refused.items():
        assert reply.status_code == 429, (where, reply.text)
        assert reply.json()["error"]["code"] == "rate_limit_exceeded", (where, reply.text)


def test_the_usage_ledger_holds_the_fleets_tokens_per_key() -> None:
    """Every host's backend adds to one ledger in the store: read from fleet-1's backend, the client key's requests
    of the load above (all three hosts served it) are there, with their tokens."""
    out = on("fleet-1", f"{BACKEND} /opt/venv/bin/python /opt/app/llm_backend.py ledger --days 2 --csv")
    # Today's and yesterday's rows (UTC days: a run may cross midnight).
    rows = [row for row in csv.DictReader(out.splitlines()) if row["key_id"] == "fleet-client"]
    requests, tokens = (sum(int(row[f]) for row in rows) for f in ("requests", "completion_tokens"))
    print(f"usage ledger, fleet-client: {requests} requests, {tokens} completion tokens")
    assert requests >= 10 and tokens >= requests, out
    assert CLIENT_KEY not in out and LIMITED_KEY not in out


def test_the_converge_report_shows_the_fleets_usage_per_key() -> None:
    """fleet.md of the converge (the only run before these tests) has the ledger, read through fleet-1's backend:
    the checks' own key (smoke) served by all three hosts, counted in one row per day."""
    runs = [d for d in Path(os.environ["LLM_REPORT_DIR"]).iterdir() if (d / "fleet.md").exists()]
    assert len(runs) == 1, runs
    fleet = (runs[0] / "fleet.md").read_text()
    assert "## Usage per key (last 7 days, UTC; the shared limits store's ledger)" in fleet, fleet
    rows = [line.split("|")[1:-1] for line in fleet.splitlines() if line.startswith("| 20")]
    smoke = [[cell.strip() for cell in row] for row in rows if row[1].strip() == "smoke"]
    assert smoke and all(int(row[2]) >= 3 and int(row[4]) > 0 for row in smoke[-1:]), fleet
