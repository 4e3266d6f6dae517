"""Verify the lab's front door as site.yml converged it (role front_door's main entry point: Debian's haproxy package,
its service, the certificate playbooks/lab_tls.yml made on the control node): HTTPS with the lab CA reaches the
host's backend API and chat UI, which listen on its internal address only; plain HTTP is redirected; the host is UP
in HAProxy's runtime API."""
from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from testinfra.host import Host

ROOT = Path(__file__).resolve().parents[3]
CA = Path(os.environ.get("LLM_CACHE_DIR") or ROOT / ".cache") / "lab/tls/ca.pem"
DOOR = "https://molecule-bookworm"
BACKEND_KEY = os.environ["LLM_BACKEND_API_KEY"]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# HAProxy's runtime API, asked from the host (the socket is root's): every server's state, as "backend/server STATE".
SHOW_STAT = """
import csv, socket
s = socket.socket(socket.AF_UNIX)
s.connect('/var/lib/llm-front-door/admin.sock')
s.sendall(b'show stat\\n')
data = b''
while chunk := s.recv(65536):
    data += chunk
for row in csv.DictReader(data.decode().lstrip('# ').splitlines()):
    if row['svname'] not in ('FRONTEND', 'BACKEND'):
        print(row['pxname'] + '/' + row['svname'], row['status'].replace(' ', '_'))
"""


def curl(host: Host, *args: str) -> str:
    """curl on the host, trusting the lab CA (copied there from the control node) and nothing else."""
    host.run(f"printf %s {shlex.quote(CA.read_text())} > /tmp/lab-ca.pem")
    cmd = host.run("curl -sS --max-time 120 --cacert /tmp/lab-ca.pem " + " ".join(args))
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout


def server_states(host: Host) -> dict[str, str]:
    return dict(line.split() for line in host.check_output(f"python3 -c {shlex.quote(SHOW_STAT)}").splitlines())


def test_haproxy_runs_from_the_distribution_with_the_host_up_behind_it(host: Host) -> None:
    assert host.package("haproxy").is_installed
    assert host.service("haproxy").is_running and host.service("haproxy").is_enabled
    # Earlier tests stop the engine (the watchdog's): the backend's /health fails meanwhile, so HAProxy takes the
    # host out and puts it back after two good checks (2 s apart) once the engine serves again.
    deadline = time.monotonic() + 120
    while (states := server_states(host)) != {"api/molecule-bookworm": "UP", "chat_ui/molecule-bookworm": "UP"} \
            and time.monotonic() < deadline:
        time.sleep(2)
    assert states == {"api/molecule-bookworm": "UP", "chat_ui/molecule-bookworm": "UP"}, states
    pem = host.file("/etc/haproxy/llm-front-door/front-door.pem")
    assert (pem.mode, pem.user) == (0o600, "root")


def test_https_with_the_lab_ca_reaches_the_api_and_a_stream_passes_whole(host: Host) -> None:
    auth = f"-H {shlex.quote('Authorization: Bearer ' + BACKEND_KEY)}"
    models = json.loads(curl(host, auth, f"{DOOR}/v1/models"))
    assert [m["id"] for m in models["data"]] == [MODEL]
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "안녕하세요! 한 문장으로 자기소개를 해 주세요."}]})
    stream = curl(host, "-N", auth, "-H 'Content-Type: application/json'", "-d", shlex.quote(body),
                  f"{DOOR}/v1/chat/completions")
    assert stream.count("data: {") >= 2 and stream.rstrip().endswith("data: [DONE]"), stream[-500:]


def test_the_chat_ui_is_behind_it_and_metrics_and_plain_http_are_not(host: Host) -> None:
    assert "<html" in curl(host, f"{DOOR}/").lower()
    assert curl(host, "-o /dev/null -w '%{http_code}'", f"{DOOR}/metrics") == "404"
    redirect = host.check_output("curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "
                                 "http://molecule-bookworm/v1/models")
    assert redirect == "308 https://molecule-bookworm/v1/models"
