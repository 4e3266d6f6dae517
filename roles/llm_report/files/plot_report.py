#!/usr/bin/env python3
"""Draw <host>.png for every <host>.json in a report directory: output tokens/s and TPOT vs concurrency.

A run that did not measure again reports the release's last figures, already drawn by an earlier run: each plot is
kept in a cache directory (the second argument: the control node's cache, llm_stack_cache_dir/plots, never the report
root, whose entries are runs) as <hash of what it shows>.png and copied from there when the same figures come again
(importing matplotlib alone costs about 1.5 s a run). The newest KEEP plots are kept.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

KEEP = 200


def shown(report: dict) -> dict:
    """What a plot shows, and only that: the same figures give the same plot."""
    levels = sorted(report["performance"]["levels"], key=lambda level: level["max_concurrency"])
    return {"host": report["host"], "model": report["deployment"].get("served_model_name", ""),
            "engine": report["deployment"].get("engine", ""),
            "levels": [[level["max_concurrency"], level["output_throughput"], level["mean_tpot_ms"]]
                       for level in levels]}


def plot_host(report: dict, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(report["performance"]["levels"], key=lambda level: level["max_concurrency"])
    conc = [level["max_concurrency"] for level in levels]
    fig, left = plt.subplots(figsize=(7, 4), dpi=100)
    left.plot(conc, [level["output_throughput"] for level in levels], "o-", color="tab:blue",
              label="output tokens/s")
    left.set_xlabel("concurrency")
    left.set_ylabel("output tokens/s", color="tab:blue")
    left.set_xscale("log", base=2)
    left.set_xticks(conc, [str(c) for c in conc])
    right = left.twinx()
    right.plot(conc, [level["mean_tpot_ms"] for level in levels], "s--", color="tab:red", label="mean TPOT (ms)")
    right.set_ylabel("mean TPOT (ms)", color="tab:red")
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    left.set_title(f"{report['host']}: {report['deployment'].get('served_model_name', '')} "
                   f"({report['deployment'].get('engine', '')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(dest)
    plt.close(fig)


def main(run_dir: str, cache_dir: str) -> int:
    drawn = copied = 0
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(run_dir).glob("*.json")):
        report = json.loads(path.read_text())
        if not report.get("performance", {}).get("levels"):
            continue
        key = hashlib.sha256(json.dumps(shown(report), sort_keys=True).encode()).hexdigest()[:32]
        kept = cache / f"{key}.png"
        if kept.is_file():
            shutil.copyfile(kept, path.with_suffix(".png"))
            kept.touch()
            copied += 1
        else:
            plot_host(report, path.with_suffix(".png"))
            # Into the cache by a rename: a run that reads it at the same time never sees half a file.
            partial = cache / f".{key}.{path.stem}.tmp"
            shutil.copyfile(path.with_suffix(".png"), partial)
            partial.replace(kept)
            drawn += 1
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:  # pruned by another run meanwhile
            return 0.0

    for old in sorted(cache.glob("*.png"), key=mtime, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)
    print(f"{drawn} plot(s) drawn, {copied} copied from {cache} (the same figures as an earlier run), in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
