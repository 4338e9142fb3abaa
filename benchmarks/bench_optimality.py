"""Each family's MSE as a ratio to the optimal Kalman filter stored in `linear_gaussian` logs.

    python -m benchmarks.bench_optimality [--steps 1500] [--dynamics matern32] [--episodes 24]
        [--families rnn,transformer] [--set family.key=value ...]

Trains every family on a generated linear-Gaussian log (vector measurements), replays held-out
episodes through each streaming predictor and divides its MSE by the stored optimal filter's MSE on
the same ticks (1.0 = optimal). The goal is within 10 % for gp, rnn, transformer and kalman.
`kalman` uses the system stored in the log; `kalman+em` ignores it and fits one by EM
(`dynamics=em`). The learned families need data: with 24 training episodes rnn and transformer
overfit (1.13 and 1.25), so the default is 96 (generating them takes seconds).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from seqsense.dataset import WindowDataset, episode_refs
from seqsense.evaluate.replay import evaluate_predictor, mean_row
from seqsense.scenarios import generate
from seqsense.train import train

FAMILIES = ("framewise", "gp", "rnn", "transformer", "kalman", "kalman+em")
VARIANTS = {"em": {"dynamics": "em"}}  # NAME+VARIANT: the family with these overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--dynamics", default="matern32")
    p.add_argument("--episodes", type=int, default=96, help="training episodes (the test set is 8 more)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--set", action="append", default=[], metavar="[FAMILY.]KEY=VALUE",
                   help="config override for every family, or for one with a FAMILY. prefix (repeatable)")
    args = p.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="seqsense-opt-"))
    knobs = {"dynamics": args.dynamics}
    train_log = generate("linear_gaussian", tmp / "train.h5", episodes=args.episodes, seed=0, duration_s=20.0, knobs=knobs)
    test_log = generate("linear_gaussian", tmp / "test.h5", episodes=8, seed=1, duration_s=20.0, knobs=knobs)
    overrides = {"steps": args.steps, "batch_size": 32, "window": 32, "hidden": 64, "val_every": max(1, args.steps // 5)}
    print("| family | params | steps | train s | MSE / optimal MSE | RMSE |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in args.families.split(","):
        family, _, variant = label.partition("+")
        extra = dict(VARIANTS[variant]) if variant else {}
        for item in args.set:
            key, _, value = item.partition("=")
            scope, _, name = key.rpartition(".")
            if scope in ("", family, label):
                extra[name] = value
        t0 = time.perf_counter()
        res = train(family, [train_log], {**overrides, **extra}, tmp / label, progress=False, log=lambda *_: None)
        seconds = time.perf_counter() - t0
        ds = WindowDataset(episode_refs([test_log]), res.model.config.window_spec(window=1))
        rows, _ = evaluate_predictor(res.model.predictor(), ds, keep_replays=0)
        m = mean_row(rows)
        ratio = np.mean([r["mse_ratio"] for r in rows])
        print(f"| {label} | {res.num_parameters} | {res.steps} | {seconds:.0f} | {ratio:.3f} | {m['rmse']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
