"""Generate scenario logs with ground truth: `seqsense generate SCENARIO --out FILE.h5 [--episodes N]
[--seed S] [--duration-s D] [--set knob=value ...]`, or `seqsense generate --list` for every scenario
with its knobs, defaults and ranges. Output is deterministic for a given seed and settings; the
scenario, knobs and seed are stored in the file's provenance and the truth as `truth/...` streams."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", metavar="SCENARIO", help="scenario name (see --list)")
    p.add_argument("--list", action="store_true", help="list every scenario with its knobs, defaults and ranges")
    p.add_argument("--out", metavar="FILE.h5", help="output log (written atomically)")
    p.add_argument("--episodes", type=int, default=8, help="number of episodes (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed; episode k depends on (seed, k) only (default 0)")
    p.add_argument("--duration-s", type=float, default=None, help="episode duration in seconds (default per scenario)")
    p.add_argument("--set", dest="knobs", action="append", default=[], metavar="KNOB=VALUE",
                   help="set a scenario knob (repeatable)")
    p.add_argument("--compression", choices=("none", "lzf", "gzip"), default="none",
                   help="compression of camera frames (default none: fastest)")


def list_text() -> str:
    """Every registered scenario with its summary and knobs."""
    from seqsense.scenarios import get_scenario, scenario_names
    from seqsense.scenarios.base import knobs_text

    blocks = []
    for name in scenario_names():
        cls = get_scenario(name)
        blocks.append(f"{name}: {cls.summary} (default duration {cls.default_duration_s:g} s)\n{knobs_text(cls)}")
    return "\n\n".join(blocks)


def run(args: argparse.Namespace) -> int:
    from seqsense.config import parse_overrides
    from seqsense.errors import ConfigError
    from seqsense.scenarios import generate, scenario_names

    if args.list:
        print(list_text())
        return 0
    if not args.scenario:
        raise ConfigError(f"name a scenario ({', '.join(scenario_names())}) or use --list.")
    if not args.out:
        raise ConfigError("--out FILE.h5 is required: where to write the log.")
    knobs = parse_overrides(args.knobs, what="--set")
    path = generate(
        args.scenario,
        args.out,
        episodes=args.episodes,
        seed=args.seed,
        duration_s=args.duration_s,
        knobs=knobs,
        compression=None if args.compression == "none" else args.compression,
        progress=True,
    )
    print(f"wrote {path} ({args.episodes} episode(s) of {args.scenario}, seed {args.seed})")
    return 0
