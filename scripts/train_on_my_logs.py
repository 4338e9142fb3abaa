"""Train one or more model families on your recorded logs and print a comparison.

    python -m scripts.train_on_my_logs LOG.h5 [LOG.h5 ...] --out runs/mine --models framewise,rnn,transformer
        [--inputs camera,imu] [--target truth/position] [--set steps=500 ...]

Import a rosbag/MCAP/CSV recording first with `seqsense import`. Each family gets the same budget
(`steps` / `time_budget_s`); the best checkpoint of each lands in OUT/FAMILY/best.* and loads with
`seqsense.models.checkpoint.load_checkpoint(OUT/FAMILY)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seqsense.train import TrainResult, train


def train_families(logs, out_dir, families=("framewise", "rnn", "transformer"), inputs=None, target=None, overrides=None) -> dict[str, TrainResult]:
    """Train each family on `logs` with the same overrides; returns {family: TrainResult}."""
    results = {}
    for family in families:
        results[family] = train(family, logs, list(overrides or []), Path(out_dir) / family, inputs=inputs, target=target)
    return results


def main(argv=None) -> None:
    """Command-line entry point: train and print a table of parameters, speed and held-out loss."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="framewise,rnn,transformer")
    p.add_argument("--inputs", default=None, help="comma-separated input streams (default: the log's provenance)")
    p.add_argument("--target", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    inputs = a.inputs.split(",") if a.inputs else None
    results = train_families(a.logs, a.out, a.models.split(","), inputs, a.target, a.set)
    print(f"{'family':<12} {'params':>8} {'steps':>6} {'windows/s':>10} {'val loss':>9}  best checkpoint")
    for family, r in results.items():
        print(f"{family:<12} {r.num_parameters:>8} {r.steps:>6} {r.windows_per_s:>10.0f} {r.val_loss:>9.4f}  {r.run_dir / 'best'}.json")


if __name__ == "__main__":
    main()
