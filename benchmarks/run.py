"""Run the benchmarks one after another, each in its own process (`make bench`).

    python -m benchmarks.run [--all] [NAME ...]

By default the short ones run (dataset, generate, import, models, gp_step, runtime); `--all` adds the
long ones (optimality, study, imu_real: minutes each; imu_real needs `pip install -e '.[bench]'` and
the BROAD trials in ../shared/data/real, and skips without them). Each prints its own table; see
BENCHMARKS.md for the recorded results.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

SHORT = ["dataset", "generate", "import", "models", "gp_step", "runtime"]
LONG = ["optimality", "study", "imu_real"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (from {', '.join(SHORT + LONG)})")
    p.add_argument("--all", action="store_true", help="the long benchmarks too")
    args = p.parse_args(argv)
    names = args.names or (SHORT + LONG if args.all else SHORT)
    unknown = [n for n in names if n not in SHORT + LONG]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; valid: {', '.join(SHORT + LONG)}")
    failed = []
    for name in names:
        print(f"== bench_{name}", flush=True)
        if subprocess.call([sys.executable, "-m", f"benchmarks.bench_{name}"]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
