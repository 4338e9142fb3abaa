"""The quick study's wall time and the twin experiment: each family against its own memoryless twin.

    python -m benchmarks.bench_study                 # runs `seqsense study --quick` into a temp folder
    python -m benchmarks.bench_study --results study_out/results.json   # reads a finished run instead

Prints the wall-clock time (when it ran the study) and, per cell, framewise RMSE, each family's RMSE
next to its twin's, and the tracking controller's cost for the transformer and its context-1 twin:
the controlled comparison that replaced "best temporal model vs framewise".
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ("gp", "rnn", "transformer", "kalman", "ekf", "kalmannet")


def _m(cell: dict, label: str, key: str) -> float:
    v = cell.get("models", {}).get(label, {}).get("metrics", {}).get(key)
    return math.nan if v is None else float(v)


def twin_table(results: dict) -> str:
    """Markdown: per cell, framewise RMSE, each family's RMSE full / twin, transformer tracking cost full / twin."""
    fams = [f for f in FAMILIES if any(f in c.get("models", {}) for c in results["cells"].values())]
    head = ["cell", "framewise RMSE"] + [f"{f} RMSE full / twin" for f in fams] + ["transformer tracking cost full / twin"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in results["cells"].items():
        row = [name, f"{_m(c, 'framewise', 'rmse'):.4g}"]
        for f in fams:
            full, twin = _m(c, f, "rmse"), _m(c, f + "-twin", "rmse")
            row.append("–" if math.isnan(full) else f"{full:.4g} / {twin:.4g}")
        row.append(f"{_m(c, 'transformer', 'tracking.cost'):.4g} / {_m(c, 'transformer-twin', 'tracking.cost'):.4g}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, help="a finished run's results.json (default: run the quick study now)")
    args = p.parse_args(argv)
    path = args.results
    if path is None:
        out = Path(tempfile.mkdtemp(prefix="bench_study_"))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "seqsense", "study", "--quick", "--out", str(out), "--no-progress"], check=False)
        print(f"seqsense study --quick: {time.perf_counter() - t0:.0f} s wall-clock")
        path = out / "results.json"
    results = json.loads(path.read_text())
    print(f"elapsed_s in results.json: {results.get('elapsed_s', math.nan):.0f}; compute_s (sum over cells): {results.get('compute_s', math.nan):.0f}")
    print(twin_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
