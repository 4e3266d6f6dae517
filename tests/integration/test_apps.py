"""The backend API and chat UI as services of the compose project (llm_apps' render entry point, then llm_stack's),
validated by `docker compose config`: the production inventory renders the seed's three services, the keys reach
the host only as hashes, and bad inputs fail before anything is written, naming the variable."""
from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.llm_endpoints.core.plugins.module_utils.gpu_table import describe
from helpers import ROOT
from llm_fixture import Cases, run_cases, run_playbook

RTX_5090 = {"pci_address": "0000:01:00.0", "vendor_id": "10de", "device_id": "2b85", "class": "030000",
            "driver": "nvidia", **describe("2b85")}
ENGINE_KEY = "engine-key-for-the-render-test-0123456789"
CHAT_UI_KEY = "chat-ui-key-for-the-render-test-0123456789"
TEAM_KEY = "team-a-key-for-the-render-test-0123456789"
HASHED = hashlib.sha256(b"a key handed out elsewhere, long enough").hexdigest()
VAULT = {"vault_llm_engine_api_key": ENGINE_KEY, "vault_hf_token": "",
         "vault_llm_backend_api_keys": [{"id": "chat-ui", "key": CHAT_UI_KEY},
                                        {"id": "team-a", "key": TEAM_KEY, "rate_limit": "120/minute", "max_streams": 8},
                                        {"id": "batch-jobs", "sha256": HASHED}]}
STORE_PASSWORD = "store-password-render-0123456789"
STORE_URL = f"redis://:{STORE_PASSWORD}@10.0.0.2:6379/0"
PRODUCTION = yaml.safe_load((ROOT / "inventory/production/group_vars/llm_hosts/main.yml").read_text())


def render(tmp_path: Path, variables: dict) -> tuple[int, str, Path]:
    """Render into tmp_path/stack, or into the llm_stack_dir the variables name; returns that directory too."""
    stack = Path(variables.get("llm_stack_dir", tmp_path / "stack"))
    run = run_playbook(tmp_path, "render_apps.yml", {"llm_stack_dir": str(stack), "preflight_gpu_mode": "nvidia",
                                                     "preflight_nvidia_gpus": [RTX_5090], **variables})
    return run.rc, run.output, stack


def compose_config(stack: Path) -> dict:
    out = subprocess.run(["docker", "compose", "--project-directory", str(stack), "config", "--format", "json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["services"]


def test_behind_a_front_door_every_service_listens_on_the_internal_address_and_loopback(tmp_path: Path) -> None:
    # The front door's group has hosts (this one, here): the production inventory's services leave every address.
    rc, output, stack = render(tmp_path, {**PRODUCTION, **VAULT, "llm_apps_backend_limits_url": STORE_URL,
                                          "llm_front_door_group": "llm_hosts", "llm_internal_address": "10.0.0.9"})
    assert rc == 0, output[-4000:]
    services = compose_config(stack)
    for name, port in (("engine", "8000"), ("backend", "8080"), ("frontend", "8501")):
        assert sorted((p["host_ip"], p["published"]) for p in services[name]["ports"]) == \
            [("10.0.0.9", port), ("127.0.0.1", port)], name
    # The engine on the internal address is by design there (Prometheus scrapes it): no warning about it.
    assert "reachable from other machines" not in output


def test_production_inventory_renders_the_seed_with_backend_and_chat_ui(tmp_path: Path) -> None:
    rc, output, stack = render(tmp_path, {**PRODUCTION, **VAULT, "llm_apps_backend_limits_url": STORE_URL})
    assert rc == 0, output[-4000:]
    # The stack's inputs are checked once (render runs the apps' render entry point after them).
    table = "TASK [llm_endpoints.core.llm_stack : Inputs of the stack are well-formed (one table)]"
    assert output.count(table) == 1, output[-4000:]
    services = compose_config(stack)
    assert sorted(services) == ["backend", "engine", "frontend"]
    engine, backend, frontend = services["engine"], services["backend"], services["frontend"]
    assert engine["image"] == "vllm/vllm-openai:v0.11.0"
    assert engine["command"][engine["command"].index("--model") + 1] == "openai/gpt-oss-20b"
    # The backend runs: the engine is published on the loopback address only, the apps on every address.
    assert [(p["host_ip"], p["published"], p["target"]) for p in engine["ports"]] == [("127.0.0.1", "8000", 8000)]
    assert [(p["host_ip"], p["published"], p["target"]) for p in backend["ports"]] == [("0.0.0.0", "8080", 8080)]
    assert [(p["host_ip"], p["published"], p["target"]) for p in frontend["ports"]] == [("0.0.0.0", "8501", 8501)]
    assert backend["depends_on"]["engine"]["condition"] == "service_healthy"
    assert frontend["depends_on"]["backend"]["condition"] == "service_started"
    for service in (backend, frontend):
        assert service["restart"] == "unless-stopped"
        assert service["logging"]["options"] == {"max-size": "50m", "max-file": "3"}
        assert service["healthcheck"]["test"][:2] == ["CMD", "/opt/venv/bin/python"]
        assert service["image"].startswith("local/llm-stack-")
    assert backend["environment"]["LLM_BACKEND_UPSTREAM_URL"] == "http://engine:8000"
    assert frontend["environment"]["LLM_FRONTEND_BACKEND_URL"] == "http://backend:8080"
    # The keys' directory: the backend reads a changed file again itself (a file mounted alone would stay the old one).
    assert backend["volumes"][0]["target"] == "/etc/llm-backend/keys" and backend["volumes"][0]["read_only"]
    assert backend["environment"]["LLM_BACKEND_KEYS_FILE"] == "/etc/llm-backend/keys/keys.json"
    assert "labels" not in backend  # no key-file hash that would recreate the container on a key change
    assert backend["ulimits"]["nofile"] == {"soft": 8192, "hard": 8192}
    assert (backend["environment"]["LLM_BACKEND_MAX_CONNECTIONS"], backend["environment"]["LLM_BACKEND_MAX_N"]) == \
        ("1000", "16")
    # Keys: hashes only in the key file (readable by the app user, not by everyone), secrets in 0600 env files.
    keys_file = stack / "apps/backend-keys/keys.json"
    keys = json.loads(keys_file.read_text())["keys"]
    assert keys[:3] == [
        {"id": "chat-ui", "sha256": hashlib.sha256(CHAT_UI_KEY.encode()).hexdigest()},
        {"id": "team-a", "sha256": hashlib.sha256(TEAM_KEY.encode()).hexdigest(), "rate_limit": "120/minute",
         "max_streams": 8},
        {"id": "batch-jobs", "sha256": HASHED}]
    assert [k["id"] for k in keys[3:]] == ["smoke", "smoke-ratelimit"]
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o640 and keys_file.stat().st_gid == 10001
    assert stat.S_IMODE((stack / "apps/smoke.key").stat().st_mode) == 0o600
    assert (stack / "backend.env").read_text().count(f"LLM_BACKEND_UPSTREAM_API_KEY={ENGINE_KEY}\n") == 1
    # The metrics token, by default the engine's key (Prometheus has it already), in the 0600 env file only.
    assert (stack / "backend.env").read_text().count(f"LLM_BACKEND_METRICS_TOKEN={ENGINE_KEY}\n") == 1
    # The fleet's shared limits store: its URL (with the store's password) in the 0600 env file only.
    assert (stack / "backend.env").read_text().count(f"LLM_BACKEND_LIMITS_URL={STORE_URL}\n") == 1
    assert backend["environment"]["LLM_BACKEND_LIMITS_FAILURE"] == "open"
    # The seed's chat page holds no key of its own: its users enter theirs.
    assert "LLM_FRONTEND_API_KEY" not in (stack / "frontend.env").read_text()
    for name in ("backend.env", "frontend.env", "engine.env"):
        assert stat.S_IMODE((stack / name).stat().st_mode) == 0o600
    # No key anywhere else: not in the compose file, the key file or the play's output.
    private = {stack / "backend.env", stack / "frontend.env", stack / "engine.env", stack / "apps/smoke.key"}
    for path in stack.rglob("*"):
        if path.is_file() and path not in private:
            text = path.read_text()
            assert not any(key in text for key in (ENGINE_KEY, CHAT_UI_KEY, TEAM_KEY, STORE_PASSWORD)), path
    assert not any(key in output for key in (ENGINE_KEY, CHAT_UI_KEY, TEAM_KEY, STORE_PASSWORD))


def test_a_chat_ui_key_goes_to_its_env_file_only_where_the_page_is_not_public(tmp_path: Path) -> None:
    rc, output, stack = render(tmp_path, {**PRODUCTION, **VAULT, "llm_apps_frontend_api_key_id": "chat-ui",
                                          "llm_apps_frontend_bind_address": "10.0.0.5"})
    assert rc == 0, output[-4000:]
    assert (stack / "frontend.env").read_text().count(f"LLM_FRONTEND_API_KEY={CHAT_UI_KEY}\n") == 1
    assert compose_config(stack)["frontend"]["ports"][0]["host_ip"] == "10.0.0.5"
    assert CHAT_UI_KEY not in output


def test_rendering_again_changes_nothing(tmp_path: Path) -> None:
    variables = {**PRODUCTION, **VAULT}
    rc, output, stack = render(tmp_path, variables)
    assert rc == 0, output[-4000:]
    first = {p: p.read_bytes() for p in stack.rglob("*") if p.is_file()}
    rc, output, _ = render(tmp_path, variables)
    assert rc == 0, output[-4000:]
    assert "changed=0" in output, output[-3000:]
    assert {p: p.read_bytes() for p in stack.rglob("*") if p.is_file()} == first
    # A key disabled and one added: only the key file changes; the compose project stays as it was, so nothing is
    # recreated (the running backend reads the file again by itself).
    keys = [*VAULT["vault_llm_backend_api_keys"][:2], {"id": "batch-jobs", "sha256": HASHED, "enabled": False},
            {"id": "team-b", "key": "sk-team-b-" + "t" * 40, "max_tokens": 4096}]
    rc, output, _ = render(tmp_path, {**variables, "vault_llm_backend_api_keys": keys})
    assert rc == 0, output[-4000:]
    changed = {p for p in stack.rglob("*") if p.is_file() and p.read_bytes() != first.get(p)}
    assert changed == {stack / "apps/backend-keys/keys.json"}, changed
    entries = json.loads((stack / "apps/backend-keys/keys.json").read_text())["keys"]
    assert entries[2] == {"id": "batch-jobs", "sha256": HASHED, "enabled": False}
    assert entries[3]["max_tokens"] == 4096


def test_without_the_backend_the_engine_is_published_everywhere(tmp_path: Path) -> None:
    rc, output, stack = render(tmp_path, {**PRODUCTION, **VAULT, "llm_backend_enabled": False,
                                          "llm_frontend_enabled": False})
    assert rc == 0, output[-4000:]
    services = compose_config(stack)
    assert list(services) == ["engine"]
    assert services["engine"]["ports"][0]["host_ip"] == "0.0.0.0"
    assert not (stack / "apps").exists()


KEYS_MSG = "llm_apps_backend_api_keys[{}] (id {}) must be {{id, key}} or {{id, sha256}}"
BAD_INPUTS = [
    ({"llm_frontend_enabled": True, "llm_backend_enabled": False},
     "llm_frontend_enabled must be true or false, and true only with llm_backend_enabled true"),
    ({"llm_backend_enabled": "yes"}, 'llm_backend_enabled must be true or false; got "yes".'),
    ({"llm_backend_port": 8000},
     "llm_backend_port, llm_frontend_port and llm_stack_port must be three different ports"),
    ({"llm_frontend_port": 70000}, 'llm_frontend_port must be a port 1-65535; got 70000.'),
    ({"llm_apps_backend_bind_address": "0.0.0.0:80"}, 'llm_apps_backend_bind_address must be an IPv4 address'),
    ({"llm_apps_backend_rate_limit": "60 per fortnight"},
     "llm_apps_backend_rate_limit must be a rate limit as the backend reads it"),
    ({"llm_apps_backend_max_streams": 0},
     "llm_apps_backend_max_streams must be a whole number from 1 to 10000; got 0."),
    ({"llm_apps_backend_read_timeout_s": "5\n"}, "llm_apps_backend_read_timeout_s must be a number of seconds"),
    ({"llm_apps_frontend_title": "chat\nLLM_FRONTEND_API_KEY=x"},
     "llm_apps_frontend_title must be 1 to 80 characters on one line"),
    ({"llm_apps_base_image": "Python:3.11"}, "llm_apps_base_image must be an image reference"),
    ({"llm_apps_base_image_archive": "images/python.tar"},
     "llm_apps_base_image_archive must be empty or an absolute path on the control node"),
    ({"llm_apps_base_image_archive": "/srv/images//python.tar"},
     "llm_apps_base_image_archive must be empty or an absolute path on the control node"),
    ({"vault_llm_backend_api_keys": []},
     "llm_apps_backend_api_keys must be a list of at least one {id, key} or {id, sha256}"),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "short"}]}, KEYS_MSG.format(0, '"chat-ui"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "k" * 40 + "\nX=1"}]}, KEYS_MSG.format(0, '"chat-ui"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "k" * 40}, {"id": "chat-ui", "key": "j" * 40}]},
     KEYS_MSG.format(0, '"chat-ui"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "k" * 40}, {"id": "smoke", "key": "j" * 40}]},
     KEYS_MSG.format(1, '"smoke"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "k" * 40, "sha256": HASHED}]},
     KEYS_MSG.format(0, '"chat-ui"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "sha256": HASHED.upper()}]}, KEYS_MSG.format(0, '"chat-ui"')),
    ({"vault_llm_backend_api_keys": [{"id": "Chat UI", "key": "k" * 40}]}, KEYS_MSG.format(0, '"Chat UI"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "k" * 40, "rate_limit": "lots"}]},
     KEYS_MSG.format(0, '"chat-ui"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "k" * 40, "admin": True}]},
     KEYS_MSG.format(0, '"chat-ui"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "sha256": HASHED}],
      "llm_apps_frontend_api_key_id": "chat-ui", "llm_apps_frontend_bind_address": "10.0.0.5"},
     "llm_apps_frontend_api_key_id must be empty (users enter their own key) or the id of an "
     "llm_apps_backend_api_keys entry"),
    ({"llm_apps_frontend_api_key_id": "chat-ui"},
     'llm_apps_frontend_api_key_id gives the chat UI the key "chat-ui" while llm_apps_frontend_bind_address is '
     '0.0.0.0'),
    ({"vault_llm_backend_api_keys": [{"id": "team-a", "key": "CHANGE-ME-team-a-key-long-random-string"}]},
     KEYS_MSG.format(0, '"team-a"')),
    ({"vault_llm_engine_api_key": ""}, "llm_stack_api_key must be set (at least 16 characters"),
    ({"vault_llm_engine_api_key": "engine-key-with-$HOME-in-it"}, "llm_stack_api_key must be set"),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "chat-ui-key-with-a-quote-'-0123456789"}],
      "llm_apps_frontend_api_key_id": "chat-ui", "llm_apps_frontend_bind_address": "10.0.0.5"},
     "llm_apps_frontend_api_key_id must be empty (users enter their own key) or the id of an "),
    ({"vault_llm_engine_api_key": "CHANGE-ME-engine-key-long-random-string"}, "llm_stack_api_key must be set"),
    ({"llm_apps_backend_health_timeout_s": 5},
     "llm_apps_backend_health_timeout_s must be a number of seconds greater"),
    ({"llm_apps_health_retries": 0}, "llm_apps_health_retries must be a whole number from 1 to 1000; got 0."),
    ({"llm_stack_bind_address": "0.0.0.0:8000"}, "llm_stack_bind_address must be an IPv4 address"),
    ({"llm_stack_dir": "/opt/llm stack"}, "llm_stack_dir must be an absolute path on the host other than /"),
    # The same key under two ids, as key and as its sha256: both ids named, not the key.
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": CHAT_UI_KEY}, {"id": "team-a", "key": TEAM_KEY},
                                     {"id": "old-ui", "sha256": hashlib.sha256(CHAT_UI_KEY.encode()).hexdigest()}]},
     "llm_apps_backend_api_keys: ids chat-ui and old-ui hold the same key"),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "k" * 40, "enabled": "no"}]},
     KEYS_MSG.format(0, '"chat-ui"')),
    ({"vault_llm_backend_api_keys": [{"id": "chat-ui", "key": "k" * 40, "max_tokens": 0}]},
     KEYS_MSG.format(0, '"chat-ui"')),
    ({"llm_apps_backend_metrics_token": "short"}, "llm_apps_backend_metrics_token must be 16 to 512 printable"),
    ({"llm_apps_backend_max_connections": 5000},
     "llm_apps_backend_nofile must be a whole number of at most 1048576 and at least 2 x"),
    ({"llm_apps_backend_max_n": 0}, "llm_apps_backend_max_n must be a whole number from 1 to 1024; got 0."),
    ({"llm_apps_backend_request_timeout_s": -5}, "llm_apps_backend_request_timeout_s must be a number of seconds"),
    ({"llm_apps_backend_limits_url": "http://:store-secret-0123@store:6379"},
     "llm_apps_backend_limits_url must be empty, redis://[:password@]host[:port][/db]"),
    ({"llm_apps_backend_limits_failure": "maybe"},
     "value of llm_apps_backend_limits_failure must be one of: open, closed"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cases, Path]:
    """Every case of BAD_INPUTS as one host of one run (host case-<index>, rendering into its own directory)."""
    work = tmp_path_factory.mktemp("bad-inputs")
    cases = {f"case-{index}": {"llm_stack_dir": str(work / f"case-{index}" / "stack"), "preflight_gpu_mode": "nvidia",
                               "preflight_nvidia_gpus": [RTX_5090], **PRODUCTION, **VAULT, **overrides}
             for index, (overrides, _) in enumerate(BAD_INPUTS)}
    return run_cases(work, "render_apps.yml", cases), work


@pytest.mark.parametrize(("index", "overrides", "message"), [(i, *case) for i, case in enumerate(BAD_INPUTS)],
                         ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_inputs_fail_before_anything_is_written(bad_input_runs: tuple[Cases, Path], index: int, overrides: dict,
                                                    message: str) -> None:
    runs, work = bad_input_runs
    host = f"case-{index}"
    variables = {**PRODUCTION, **VAULT, **overrides}
    rendered = Path(overrides.get("llm_stack_dir", work / host / "stack"))
    output = runs.hosts[host]
    assert host in runs.failed, output[-3000:]
    # As Ansible printed it: in its error block, or (an identical error already printed for another case: Ansible
    # prints it once a run) in the task's JSON result only.
    assert message in output or json.dumps(message)[1:-1] in output, output[-3000:]
    assert not rendered.exists()
    # Nowhere in the run: not in this case's lines, nor in another's.
    secrets = [k["key"] for k in variables["vault_llm_backend_api_keys"] if "key" in k]
    assert not any(secret in runs.output for secret in secrets)
    assert "store-secret-0123" not in runs.output
