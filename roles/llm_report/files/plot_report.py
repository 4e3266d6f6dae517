#!/usr/bin/env python3
"""Draw <host>.png for every <host>.json in a report directory: output tokens/s and TPOT vs concurrency."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_host(report: dict, dest: Path) -> None:
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


def main(run_dir: str) -> int:
    drawn = 0
    for path in sorted(Path(run_dir).glob("*.json")):
        report = json.loads(path.read_text())
        if report.get("performance", {}).get("levels"):
            plot_host(report, path.with_suffix(".png"))
            drawn += 1
    print(f"{drawn} plot(s) in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
