"""Replay held-out logs through trained predictors one tick at a time, exactly as a robot loop would,
and score accuracy, uncertainty, temporal consistency, latency and the machine consumers' costs.
Writes DIR/metrics.csv (one row per model and episode) and DIR/summary.json (means per model)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by `seqsense train` (their best checkpoint is used)")
    p.add_argument("--data", nargs="+", required=True, metavar="LOG", help="held-out logs to replay")
    p.add_argument("--episodes", metavar="NAMES|val", help="replay only these episodes (ep_005,ep_006), or 'val': each run's held-out validation episodes")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.csv and summary.json")
    p.add_argument(
        "--wrap",
        action="append",
        default=[],
        metavar="SPEC",
        help="also evaluate each model wrapped: ema:alpha=0.3 | ema:tau_s=0.2 | ensemble:k=5,m=0.5 (repeatable)",
    )
    p.add_argument(
        "--consumer",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="override a consumer setting, e.g. tracking.kp=50 or safety.threshold=0.05 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from seqsense.evaluate.offline import evaluate_runs, parse_consumer_overrides, parse_wrappers

    wrappers = parse_wrappers(args.wrap)
    overrides = parse_consumer_overrides(args.consumer)
    summary = evaluate_runs(args.runs, args.data, args.out, wrappers=wrappers, consumer_overrides=overrides, progress=not args.no_progress, episodes=args.episodes)
    cols = ["rmse", "nll", "coverage_90", "flicker", "tvr", "lag_s", "tracking.cost", "safety.cost", "intercept.cost", "latency_median_us"]
    widths = [max(10, len(c)) + 2 for c in cols]
    print(f"{'model':<28}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    for name, row in summary["models"].items():
        print(f"{name:<28}" + "".join(f"{row.get(c, float('nan')):>{w}.4g}" for c, w in zip(cols, widths)))
    print(f"wrote {args.out}/metrics.csv and {args.out}/summary.json")
    return 0
