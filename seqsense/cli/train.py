"""Train a model family on logs. Inputs and target default to the log's provenance; episodes are
split into train/val by `val_fraction` and `seed`; the run dir receives metrics.csv, best.* and last.*
checkpoints and a resumable train_state. Runs under `torchrun --nproc_per_node N` as well."""

from __future__ import annotations

import argparse
import os


def _streams(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [s for v in values for s in v.split(",") if s]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME", help="model family (framewise, rnn, transformer, gp, kalman, ...)")
    p.add_argument("--data", required=True, nargs="+", metavar="LOG", help="seqsense log files (.h5)")
    p.add_argument("--inputs", nargs="+", metavar="STREAM", help="input streams (space or comma separated; default: the log's provenance)")
    p.add_argument("--target", metavar="STREAM", help="target stream (default: the log's provenance)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder for checkpoints and metrics")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. --set hidden=32 --set steps=500")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its train_state")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train (default: auto)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader worker processes (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from seqsense.train import train

    result = train(
        args.model,
        args.data,
        args.set,
        args.out,
        inputs=_streams(args.inputs),
        target=args.target,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        num_workers=args.workers,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(
            f"{result.family}: {result.num_parameters} parameters, {result.steps} steps in {result.seconds:.1f} s "
            f"({result.windows_per_s:.0f} windows/s); train loss {result.train_loss:.4f}, val loss {result.val_loss:.4f}; "
            f"best checkpoint: {result.run_dir / 'best'}.json"
        )
    return 0
