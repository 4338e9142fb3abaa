"""Run the study: generate the scenario sweep from a recipe, train every model family and its
memoryless twin on equal budgets (optimizer steps), replay held-out episodes through each, drive the
machine consumers, and report when a consumer needs memory, when smoothing alone is enough, and which
family pays off, controls first (OUT/index.html, OUT/summary.md, OUT/results.json). Interrupted runs
resume; Ctrl-C stops every worker and keeps the finished cells."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick default: small frames, one seed (minutes on a laptop CPU)")
    size.add_argument("--full", action="store_true", help="the whole sweep with more seeds and larger budgets")
    p.add_argument("--recipe", metavar="NAME_OR_PATH", help="a recipe name in datasets/recipes/ or a recipe file (overrides --quick/--full's)")
    p.add_argument("--data", nargs="+", metavar="LOG", help="run the study on recorded logs instead of a recipe: their episodes are "
                   "split by episode into train and test (needs --inputs and --target; no oracle, no controls)")
    p.add_argument("--test-data", nargs="+", metavar="LOG", help="with --data: test on these logs' episodes instead of a split "
                   "(e.g. train on one recording, test on another)")
    p.add_argument("--inputs", nargs="+", metavar="STREAM", help="with --data: the input streams")
    p.add_argument("--target", metavar="STREAM", help="with --data: the target stream (e.g. truth/gravity_body)")
    p.add_argument("--test-fraction", type=float, default=0.3, metavar="F", help="with --data: share of episodes held out for testing (default 0.3)")
    p.add_argument("--model-set", action="append", default=[], metavar="FAMILY.KEY=VALUE",
                   help="with --data: a setting for one family and its twin, e.g. rnn.stateful=true rnn.tbptt_window=64 "
                        "(repeatable; see seqsense.train.STATEFUL_IMU_DEFAULTS for a raw IMU)")
    p.add_argument("--name", default="recorded", metavar="NAME", help="with --data: the cell's name in the report (default: recorded)")
    p.add_argument("--out", default="study_out", metavar="DIR", help="output folder (default: study_out); reused to resume")
    p.add_argument("--seed", type=int, action="append", metavar="S", help="seed(s) to run (repeatable); default 0, or 0 1 2 with --full")
    p.add_argument("--jobs", type=int, default=0, metavar="N", help="cells run in N parallel processes, one CPU thread each (default: one per core)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where cells run: local processes (default) or Ray tasks (RAY_ADDRESS or a local Ray; see docs/study-executors.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="study settings: steps, encoder_steps, batch_size, window, hidden, test_episodes, families, n_boot, margin, "
                        "cached_features, smoothing_taus_s")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from seqsense.config import apply_overrides
    from seqsense.errors import ConfigError
    from seqsense.study import Study, StudyConfig

    import os

    if args.jobs < 0:
        raise ConfigError(f"--jobs must be >= 1 (or 0 for one per core), got {args.jobs}.")
    jobs = args.jobs or max(1, os.cpu_count() or 1)
    config = StudyConfig.full() if args.full else StudyConfig.quick()
    overrides = dict(item.split("=", 1) if "=" in item else (item, "") for item in args.set)
    for key in ("recipe", "seeds"):
        if key in overrides:
            raise ConfigError(f"--set {key}=... is not a study setting here; use --recipe / --seed.")
    if args.data:
        if args.recipe:
            raise ConfigError("--data and --recipe exclude each other: --data makes a one-cell recipe of the logs.")
        if not args.inputs or not args.target:
            raise ConfigError("--data needs --inputs STREAM... and --target STREAM.")
        overrides["recipe"] = str(data_recipe(args))
    elif args.inputs or args.target or args.test_data or args.model_set:
        raise ConfigError("--inputs, --target, --test-data and --model-set apply to --data only (a recipe names each cell's own).")
    if args.recipe:
        overrides["recipe"] = args.recipe
    if args.seed:
        overrides["seeds"] = ",".join(str(s) for s in args.seed)
    config = apply_overrides(config, overrides, owner="study")
    study = Study(config, args.out, progress=not args.no_progress, jobs=jobs, executor=args.executor)
    results = study.run()
    n_done = sum(c["status"] == "done" for c in results["cells"].values())
    print(f"study {config.recipe}: {n_done}/{len(results['cells'])} cells done in {results['elapsed_s']:.0f} s")
    for name, c in results["controls"].items():
        print(f"  control {name} ({c['kind']}): {c['status'].upper()} — memory verdict {c.get('memory_verdict', '–')}")
    for claim in results["claims"]:
        print(f"  claim {claim['id']}: {claim['verdict']:<12} {claim['claim']}")
    print(f"report: {args.out}/index.html  (also summary.md, results.json)")
    return 0 if n_done == len(results["cells"]) else 1


def data_recipe(args: argparse.Namespace):
    """A one-cell recipe of the recorded logs, validated, written to OUT/recipe.json (atomically) and returned."""
    from pathlib import Path

    from seqsense.fileio import write_json_atomic
    from seqsense.scenarios.recipes import validate_data_cell

    cell = {"name": args.name, "logs": [str(Path(p).resolve()) for p in args.data], "inputs": list(args.inputs),
            "target": args.target, "test_fraction": args.test_fraction,
            "test_logs": [str(Path(p).resolve()) for p in args.test_data or []], "model_settings": model_settings(args.model_set)}
    validate_data_cell(cell, where="--data")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe.json"
    write_json_atomic(path, {"name": args.name, "description": "recorded logs given to seqsense study --data", "seed": 0, "cells": [cell]})
    return path


def model_settings(items: list[str]) -> dict:
    """`--model-set FAMILY.KEY=VALUE` items as {family: {key: value}} (checked by the recipe's validation)."""
    from seqsense.errors import ConfigError

    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        family, dot, name = key.partition(".")
        if not (eq and dot and family and name):
            raise ConfigError(f"--model-set {item!r}: expected FAMILY.KEY=VALUE, e.g. rnn.stateful=true.")
        out.setdefault(family, {})[name] = value
    return out
