"""Replay held-out logs through trained predictors one tick at a time, exactly as a robot loop would,
and score accuracy, uncertainty, temporal consistency, latency and the machine consumers' costs.
Writes DIR/metrics.csv (one row per model and episode) and DIR/summary.json (means per model); with
--save-predictions and/or --save-mcap, also the predictions beside the truth and the inputs, to look at
in Python or in Foxglove (see docs/saved-predictions.md)."""

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
    p.add_argument(
        "--save-predictions",
        metavar="PATH.h5",
        help="also write every replay's predicted mean, variance (class probabilities for labels), the truth and the inputs "
        "as a seqsense log (streams pred/<model>/mean|var|probs); a .mcap suffix writes the MCAP file instead",
    )
    p.add_argument("--save-mcap", metavar="PATH.mcap", help="also write predictions, truth and inputs as an MCAP file for Foxglove")
    p.add_argument("--no-inputs", action="store_true", help="leave the input streams (e.g. camera frames) out of the saved files")
    p.add_argument("--mcap-image-format", choices=("jpeg", "png"), default="jpeg", help="encoding of camera frames in the MCAP file (default jpeg)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def saved_paths(save_predictions: str | None, save_mcap: str | None) -> tuple[str | None, str | None]:
    """(HDF5 path, MCAP path) from the two options: a .mcap suffix on --save-predictions means MCAP."""
    from seqsense.errors import ConfigError

    if save_predictions and save_predictions.lower().endswith(".mcap"):
        if save_mcap:
            raise ConfigError(f"--save-predictions {save_predictions!r} is already an MCAP file; drop it or --save-mcap {save_mcap!r}.")
        return None, save_predictions
    if save_mcap and not save_mcap.lower().endswith(".mcap"):
        raise ConfigError(f"--save-mcap {save_mcap!r}: the file name must end in .mcap.")
    return save_predictions, save_mcap


def run(args: argparse.Namespace) -> int:
    from seqsense.evaluate.offline import evaluate_runs, parse_consumer_overrides, parse_wrappers

    wrappers = parse_wrappers(args.wrap)
    overrides = parse_consumer_overrides(args.consumer)
    h5_path, mcap_path = saved_paths(args.save_predictions, args.save_mcap)
    summary = evaluate_runs(
        args.runs,
        args.data,
        args.out,
        wrappers=wrappers,
        consumer_overrides=overrides,
        progress=not args.no_progress,
        episodes=args.episodes,
        save_predictions=h5_path,
        save_mcap=mcap_path,
        include_inputs=not args.no_inputs,
        image_format=args.mcap_image_format,
    )
    cols = ["rmse", "nll", "coverage_90", "flicker", "tvr", "lag_s", "tracking.cost", "safety.cost", "intercept.cost", "latency_median_us"]
    if any("inclination_deg" in row for row in summary["models"].values()):
        cols.insert(1, "inclination_deg")  # gravity-direction targets: the angle error in degrees
    widths = [max(10, len(c)) + 2 for c in cols]
    print(f"{'model':<28}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    for name, row in summary["models"].items():
        print(f"{name:<28}" + "".join(f"{row.get(c, float('nan')):>{w}.4g}" for c, w in zip(cols, widths)))
    print(f"wrote {args.out}/metrics.csv and {args.out}/summary.json")
    for path in filter(None, (h5_path, mcap_path)):
        print(f"wrote {path}")
    return 0
