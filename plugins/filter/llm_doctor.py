"""The doctor's judgement: what the read-only probes of one host captured (playbooks/doctor.yml, role doctor) ->
findings, each ok / warn / fail with a one-line detail, and the table that prints them for a fleet.

The raw captures are kept beside the findings in the doctor's JSON, so a capture from a real host
(tests/fixtures/doctor/) can be judged again by the tests.
"""
from __future__ import annotations

import json
import re
from typing import Any

from ansible_collections.llm_endpoints.core.plugins.filter.nvidia_decisions import (
    driver_choice_errors,
    driver_requirements,
)
from ansible_collections.llm_endpoints.core.plugins.filter.nvidia_smi import (
    QUERY_FIELDS,
    driver_branch,
    module_flavor,
    parse_query,
    parse_xml,
)

OK = "ok"
WARN = "warn"
FAIL = "fail"
# Packages of the driver stack whose version carries the branch (NVIDIA's and RPM Fusion's names).
_DRIVER_PACKAGE = re.compile(r"(nvidia|cuda-drivers|libcuda|libnvidia|xorg-x11-drv-nvidia|akmod-nvidia|kmod-nvidia)")


def _finding(check: str, status: str, detail: str) -> dict[str, str]:
    return {"check": check, "status": status, "detail": detail}


def _run_ok(result: dict[str, Any] | None) -> bool:
    return bool(result) and result.get("rc") == 0


def _why(result: dict[str, Any] | None) -> str:
    if not result:
        return "not probed"
    text = " ".join(str(result.get(k) or "") for k in ("stderr", "msg", "stdout")).strip()
    return f"rc {result.get('rc')}: {text.splitlines()[0][:160] if text else 'no output'}"


def prometheus_samples(text: str) -> list[dict[str, Any]]:
    """Samples of a Prometheus text exposition: [{name, labels, value}] (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [{"name": s.name, "labels": dict(s.labels), "value": s.value}
            for family in text_string_to_metric_families(text) for s in family.samples]


def _sample(samples: list[dict[str, Any]], *names: str) -> dict[str, Any] | None:
    return next((s for name in names for s in samples if s["name"] == name), None)


def _apt_pinned(preferences: str, branch: str) -> set[str]:
    """Package names an apt preferences record pins to "version <branch>.*" with priority >= 1000 (nvidia_driver's
    branch lock; apt_preferences(5) records are separated by blank lines)."""
    pinned: set[str] = set()
    for record in re.split(r"\n\s*\n", preferences or ""):
        fields = dict(re.findall(r"(?m)^(Package|Pin|Pin-Priority):\s*(.+?)\s*$", record))
        if fields.get("Pin") == f"version {branch}.*" and fields.get("Pin-Priority", "0").lstrip("-").isdigit() \
                and int(fields["Pin-Priority"]) >= 1000:
            pinned.update(fields.get("Package", "").split())
    return pinned


def _packages(raw: dict[str, Any], branch: str = "") -> list[dict[str, Any]]:
    """Installed driver-stack packages with whether each is locked: held (dpkg) or pinned to the branch (apt
    preferences), or version-locked (dnf5 versionlock)."""
    listing = raw.get("packages") or {}
    if not _run_ok(listing):
        return []
    locked_names = set(re.findall(r"(?m)^Package name: (\S+)$", (raw.get("versionlock") or {}).get("stdout", "")))
    locked_names |= _apt_pinned((raw.get("apt_preferences") or {}).get("stdout", ""), branch) if branch else set()
    packages = []
    for line in listing.get("stdout", "").splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not _DRIVER_PACKAGE.search(fields[0]):
            continue
        if listing.get("manager") == "dpkg":
            # ${db:Status-Abbrev} "ii " / "hi " and ${db:Status-Want} "install" / "hold"; only installed ones count.
            if len(fields) < 4 or not fields[2].startswith(("ii", "hi")):
                continue
            locked = fields[3] == "hold" or fields[0].split(":")[0] in locked_names
        else:
            locked = fields[0] in locked_names
        packages.append({"name": fields[0].split(":")[0], "version": fields[1], "locked": locked})
    return packages


def _engine_findings(raw: dict[str, Any], expect: dict[str, Any]) -> tuple[list[dict[str, str]], dict[str, Any]]:
    engine = raw.get("engine") or {}
    summary: dict[str, Any] = {"url": engine.get("base_url")}
    findings = []
    health = engine.get("health") or {}
    if health.get("status") == 200:
        findings.append(_finding("engine", OK, f"{engine.get('base_url')}/health answers 200"))
        summary["healthy"] = True
    else:
        summary["healthy"] = False
        status = FAIL if expect.get("engine", True) else WARN
        why = health.get("msg") or f"HTTP {health.get('status')}"
        findings.append(_finding("engine", status, f"{engine.get('base_url')}/health: {why}"))
    version = (engine.get("version") or {}).get("json") or {}
    props = (engine.get("props") or {}).get("json") or {}
    summary["version"] = version.get("version") or props.get("build_info") or None
    models = [m.get("id") for m in ((engine.get("models") or {}).get("json") or {}).get("data", [])]
    summary["models"] = models
    served = expect.get("served_model_name")
    if summary["healthy"] and served:
        findings.append(_finding("engine_model", OK if served in models else FAIL,
                                 f"/v1/models lists {models or 'nothing'}; expected {served!r}"))
    metrics = engine.get("metrics") or {}
    kv: dict[str, Any] = {}
    if metrics.get("status") == 200 and metrics.get("content"):
        samples = prometheus_samples(metrics["content"])
        info = _sample(samples, "vllm:cache_config_info")
        if info and info["labels"].get("num_gpu_blocks") not in (None, "", "None"):
            blocks = int(info["labels"]["num_gpu_blocks"])
            block_size = int(info["labels"].get("block_size") or 16)
            # The pool is shared by the model's KV cache groups (gpt-oss: full and sliding-window layers, 2): the
            # tokens it holds are blocks // groups x block size, as vLLM logs them. The model as vLLM names it
            # (/v1/models' root), else the served name; a model of unknown geometry counts as one group.
            served = (((engine.get("models") or {}).get("json") or {}).get("data") or [{}])[0]
            groups = (expect.get("kv_cache_groups") or {}).get(served.get("root") or served.get("id"))
            kv.update({"source": "vllm:cache_config_info", "blocks": blocks, "block_size": block_size,
                       "tokens": blocks // (groups or 1) * block_size,
                       "memory_utilization": float(info["labels"].get("gpu_memory_utilization") or 0) or None})
            kv["groups"] = groups or "unknown (counted as 1)"
        # The engine's own names first (its row of the engine table: expect.engine_metrics), then those of the
        # versions before (vLLM's gpu_cache_usage_perc; llama.cpp's kv_cache_usage_ratio).
        names = expect.get("engine_metrics") or {}
        usage = _sample(samples, *[n for n in (names.get("kv_cache_usage"),) if n], "vllm:kv_cache_usage_perc",
                        "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio")
        if usage:
            kv["usage"] = round(float(usage["value"]), 4)
            kv.setdefault("source", usage["name"])
        tokens = _sample(samples, "llamacpp:kv_cache_tokens")
        if tokens and "tokens" not in kv:
            kv["tokens_in_use"] = int(tokens["value"])
        queue = [names[k] for k in ("requests_running", "requests_waiting") if names.get(k)] or [
            "vllm:num_requests_running", "vllm:num_requests_waiting", "llamacpp:requests_processing",
            "llamacpp:requests_deferred"]
        for name in queue:
            sample = _sample(samples, name)
            if sample:
                kv[name.split(":", 1)[1]] = int(sample["value"])
    if not kv.get("tokens") and props.get("default_generation_settings", {}).get("n_ctx"):
        # llama.cpp: the context of one slot times the slots is the KV cache it allocated.
        kv.update({"source": kv.get("source", "/props"), "tokens": int(props["default_generation_settings"]["n_ctx"])
                   * int(props.get("total_slots") or 1)})
    summary["kv_cache"] = kv
    if summary["healthy"]:
        if kv.get("tokens") or "usage" in kv:
            detail = ", ".join(f"{k} {v}" for k, v in kv.items() if k != "source") + f" ({kv.get('source')})"
            findings.append(_finding("kv_cache", OK, detail))
        else:
            findings.append(_finding("kv_cache", WARN, "the engine reports no KV cache figures (/metrics, /props)"))
    return findings, summary


def _front_door_findings(raw: dict[str, Any], expect: dict[str, Any]) -> list[dict[str, str]]:
    """How each of the fleet's front doors sees this host (HAProxy's own metrics: haproxy_server_status, one sample
    per server and state, the current one 1): a server of its API (and chat UI where it runs), UP."""
    host = raw.get("host")
    proxies = ["api"] + (["chat_ui"] if expect.get("frontend") else [])
    found = []
    for door in raw.get("front_doors") or []:
        metrics = door.get("metrics") or {}
        name = door.get("host")
        if metrics.get("status") != 200:
            found.append(_finding("front_door", WARN, f"the front door on {name} did not answer at {door.get('url')} "
                                                      f"({metrics.get('msg') or metrics.get('status')}): how it sees "
                                                      "this host is unknown"))
            continue
        states = {s["labels"].get("proxy"): s["labels"].get("state")
                  for s in prometheus_samples(metrics.get("content") or "")
                  if s["name"] == "haproxy_server_status" and s["labels"].get("server") == host and s["value"] == 1}
        missing = [p for p in proxies if p not in states]
        down = [f"{p} {states[p]}" for p in proxies if p in states and states[p] != "UP"]
        if missing:
            found.append(_finding("front_door", FAIL, f"not a server of the front door on {name} "
                                                      f"({', '.join(missing)}): run site.yml for it"))
        elif down:
            drained = all(states[p] == "DRAIN" for p in proxies if states[p] != "UP")
            found.append(_finding("front_door", WARN if drained else FAIL,
                                  f"the front door on {name} sends it no new requests: {', '.join(down)}"
                                  + (" (drained, as a rollout does)" if drained else "")))
        else:
            found.append(_finding("front_door", OK, f"UP in the front door on {name} ({', '.join(proxies)})"))
    return found


def findings(raw: dict[str, Any]) -> dict[str, Any]:
    """Judge one host's captures. `raw["expect"]` says what the host should have: gpu (an NVIDIA GPU must be
    driven), engine (an engine must answer), served_model_name, driver_branch / driver_flavor / driver_provider
    (the inventory's choice), min_cuda_version, engine_metrics (the engine's Prometheus names, its row of the engine
    table: kv_cache_usage, requests_running, requests_waiting)."""
    expect = raw.get("expect") or {}
    found: list[dict[str, str]] = []
    summary: dict[str, Any] = {"host": raw.get("host"), "os": raw.get("os") or {}}

    os_info = summary["os"]
    found.append(_finding("os", OK, f"{os_info.get('distribution')} {os_info.get('version')}, "
                                    f"kernel {os_info.get('kernel')}, {os_info.get('architecture')}"))

    pci = raw.get("pci_gpus") or []
    summary["gpus_pci"] = [{"pci_address": g.get("pci_address"), "device_id": g.get("device_id"),
                            "name": g.get("name"), "architecture": g.get("architecture")} for g in pci]
    if pci:
        found.append(_finding("gpus_pci", OK, f"{len(pci)} NVIDIA GPU(s) on the PCI bus: "
                                              + ", ".join(sorted({g.get('name', '?') for g in pci}))))
    else:
        found.append(_finding("gpus_pci", FAIL if expect.get("gpu") else OK,
                              "no NVIDIA GPU on the PCI bus" + (" (CPU host)" if not expect.get("gpu") else "")))

    smi = raw.get("smi_query")
    gpus: list[dict[str, Any]] = []
    if pci or expect.get("gpu") or _run_ok(smi):
        if _run_ok(smi):
            gpus = parse_query(smi["stdout"], raw.get("smi_fields") or QUERY_FIELDS)
            found.append(_finding("gpus_driver", OK if len(gpus) == len(pci) or not pci else FAIL,
                                  f"nvidia-smi sees {len(gpus)} GPU(s): "
                                  + ", ".join(f"{g['index']}: {g['name']}" for g in gpus)
                                  + ("" if len(gpus) == len(pci) or not pci
                                     else f"; the PCI bus has {len(pci)}")))
        else:
            found.append(_finding("gpus_driver", FAIL, f"nvidia-smi failed ({_why(smi)}): no driver is running"))
    summary["gpus"] = [{k: g.get(k) for k in ("index", "name", "uuid", "pci_bus_id", "memory_total", "memory_used",
                                               "compute_cap", "temperature_gpu", "power_draw", "utilization_gpu")}
                       for g in gpus]

    driver: dict[str, Any] = {}
    if gpus:
        report = parse_xml(raw["smi_xml"]["stdout"]) if _run_ok(raw.get("smi_xml")) else {}
        driver = {"version": gpus[0].get("driver_version"), "branch": driver_branch(gpus[0].get("driver_version")),
                  "cuda_version": report.get("cuda_version"), "flavor": None}
        proc = raw.get("proc_version")
        if proc:
            driver["flavor"] = module_flavor(proc)
        problems = driver_choice_errors(driver_requirements(pci), driver["flavor"] or "open", driver["branch"]) \
            if pci else []
        # The messages name the inventory's variables; here they describe the running driver.
        problems = [p.replace("nvidia_driver_flavor=proprietary", "the running proprietary modules")
                    .replace("nvidia_driver_branch=", "branch ").split(" (set ")[0] for p in problems]
        min_cuda = str(expect.get("min_cuda_version") or "")
        if min_cuda and driver["cuda_version"] and _version(driver["cuda_version"]) < _version(min_cuda):
            problems.append(f"it supports CUDA {driver['cuda_version']}, the engine needs {min_cuda}")
        detail = (f"{driver['version']} (branch {driver['branch']}, {driver['flavor'] or 'unknown'} kernel modules, "
                  f"CUDA {driver['cuda_version']})")
        wanted_branch = str(expect.get("driver_branch") or "")
        if problems:
            found.append(_finding("driver", FAIL, detail + ": " + "; ".join(problems)))
        elif expect.get("driver_provider") not in (None, "preinstalled") and wanted_branch \
                and wanted_branch != driver["branch"]:
            found.append(_finding("driver", WARN, f"{detail}; the inventory asks for branch {wanted_branch}"))
        else:
            found.append(_finding("driver", OK, detail))

        packages = _packages(raw, driver["branch"])
        branch_packages = [p for p in packages if p["version"].split(":")[-1].startswith(driver["branch"] + ".")]
        unlocked = [p["name"] for p in branch_packages if not p["locked"]]
        driver["packages"] = packages
        if not branch_packages:
            found.append(_finding("branch_lock", WARN, f"no package of branch {driver['branch']} is installed: the "
                                                       "driver came another way (.run installer, image), no lock"))
        elif unlocked:
            found.append(_finding("branch_lock", WARN, f"{len(unlocked)} of {len(branch_packages)} packages of branch "
                                                       f"{driver['branch']} are not locked: {', '.join(unlocked)}"))
        else:
            found.append(_finding("branch_lock", OK, f"all {len(branch_packages)} packages of branch "
                                                     f"{driver['branch']} are locked"))
        used = sum(int(g.get("memory_used") or 0) for g in gpus)
        total = sum(int(g.get("memory_total") or 0) for g in gpus)
        summary["gpu_memory"] = {"used_mib": used, "total_mib": total}
        found.append(_finding("gpu_memory", OK, f"{used} of {total} MiB in use ({used / total:.0%})" if total
                              else "no memory reported"))
    summary["driver"] = driver

    if pci or expect.get("gpu"):
        runtimes = raw.get("docker_runtimes")
        if not _run_ok(runtimes):
            needed = expect.get("container", True)
            found.append(_finding("container_gpu", FAIL if needed else WARN,
                                  f"docker info failed ({_why(runtimes)}): no container engine to run the GPU engine"
                                  + ("" if needed else " (not needed: the engine runs outside containers)")))
        else:
            names = sorted((json.loads(runtimes["stdout"] or "{}") or {}).keys())
            cdi = bool(raw.get("cdi_spec"))
            status = OK if "nvidia" in names or cdi else FAIL
            found.append(_finding("container_gpu", status, f"docker runtimes {', '.join(names)}; CDI spec "
                                                           + ("present" if cdi else "absent")))
        summary["container"] = {"docker": _run_ok(runtimes), "cdi_spec": bool(raw.get("cdi_spec")),
                                "nvidia_ctk": (raw.get("ctk_version") or {}).get("stdout", "").splitlines()[:1]}

    engine_found, summary["engine"] = _engine_findings(raw, expect)
    found.extend(engine_found)
    found.extend(_front_door_findings(raw, expect))

    report = raw.get("report") or {}
    if report.get("path"):
        content = report.get("content") or {}
        verdict = content.get("status") or "unknown"
        found.append(_finding("last_report", OK if verdict == "pass" else WARN,
                              f"{report['path']}: {verdict}"))
        summary["last_report"] = {"path": report["path"], "result": verdict}
    else:
        found.append(_finding("last_report", WARN, "no deployment report for this host on the control node"))
        summary["last_report"] = None

    statuses = {f["status"] for f in found}
    summary["status"] = FAIL if FAIL in statuses else WARN if WARN in statuses else OK
    summary["findings"] = found
    return summary


def capture(result: dict[str, Any] | None) -> dict[str, Any]:
    """What the doctor keeps of a registered command: rc, stdout, stderr, msg (never the invocation, which may
    hold a key). A skipped or missing probe is {}."""
    if not result or result.get("skipped"):
        return {}
    return {k: result.get(k) for k in ("rc", "stdout", "stderr", "msg") if result.get(k) is not None}


def http_capture(result: dict[str, Any] | None) -> dict[str, Any]:
    """What the doctor keeps of a registered uri call: status, msg, and the body (JSON or text), capped; never the
    request (its Authorization header)."""
    if not result or result.get("skipped"):
        return {}
    kept: dict[str, Any] = {"status": result.get("status"), "msg": str(result.get("msg") or "")[:300]}
    if isinstance(result.get("json"), (dict, list)):
        kept["json"] = result["json"]
    elif result.get("content") is not None:
        kept["content"] = str(result["content"])[:400000]
    return kept


def door_capture(result: dict[str, Any]) -> dict[str, Any]:
    """One front door's metrics call (a loop item of the doctor's uri task): {host, url, metrics}."""
    door = result.get("__doctor_door") or {}
    return {"host": door.get("host"), "url": f"http://{door.get('address')}/metrics", "metrics": http_capture(result)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:3])


def table(results: list[dict[str, Any]]) -> str:
    """One row per host: the figures a person reads first, then what is wrong."""
    rows = [("host", "status", "os", "gpus", "driver", "cuda", "lock", "container", "engine", "gpu mem", "kv cache")]
    for r in results:
        by_check = {f["check"]: f for f in r.get("findings", [])}
        driver = r.get("driver") or {}
        engine = r.get("engine") or {}
        kv = engine.get("kv_cache") or {}
        mem = r.get("gpu_memory") or {}
        rows.append((
            str(r.get("host")), r.get("status", "?"),
            f"{r['os'].get('distribution')} {r['os'].get('version')}",
            str(len(r.get("gpus") or r.get("gpus_pci") or [])),
            f"{driver.get('version')} {driver.get('flavor') or ''}".strip() if driver else "-",
            str(driver.get("cuda_version") or "-"),
            by_check.get("branch_lock", {}).get("status", "-"),
            by_check.get("container_gpu", {}).get("status", "-"),
            ("up " + str(engine.get("version") or "")).strip() if engine.get("healthy") else "down",
            f"{mem['used_mib']}/{mem['total_mib']} MiB" if mem else "-",
            f"{kv['tokens']} tok" if kv.get("tokens") else ("-" if not kv else f"usage {kv.get('usage')}"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        for f in r.get("findings", []):
            if f["status"] != OK:
                lines.append(f"{r.get('host')}: {f['status'].upper()} {f['check']}: {f['detail']}")
    return "\n".join(lines)


class FilterModule:
    def filters(self) -> dict:
        return {"llm_doctor_findings": findings, "llm_doctor_table": table, "llm_doctor_capture": capture,
                "llm_doctor_http": http_capture, "llm_doctor_door": door_capture,
                "llm_prometheus_samples": prometheus_samples}
