"""Add standard targets derived from a log's streams (gravity direction, roll/pitch, velocity, yaw
rate) to every episode, e.g. `seqsense derive broad.h5 --out broad_g.h5 --add
truth/gravity_body=gravity_body(truth/orientation)`, or take a mapping file's "derive" list with
--mapping. Quaternions are w-first (order=xyzw for w-last) and rotate the body frame into a z-up
reference frame; see seqsense/derive.py and docs/log-format.md for every convention. The new log is
written to a temporary file and renamed: the input log is never modified (with --in-place it is
replaced whole by the new one)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options of `seqsense derive`."""
    from seqsense.derive import functions_text

    p.add_argument("log", metavar="LOG", help="the seqsense log (.h5) to derive from")
    p.add_argument("--out", metavar="OUT.h5", help="the new log to write (required unless --in-place)")
    p.add_argument("--in-place", action="store_true", help="replace LOG by the new log (via a temporary file)")
    p.add_argument("--add", action="append", default=[], metavar="NAME=FUNC(SOURCE[,KEY=VALUE])",
                   help="a derived stream, e.g. truth/velocity=velocity(truth/position,method=central) or "
                        "odom/yaw_rate=yaw_rate(odom/pose[3:7],order=xyzw). Repeatable. Functions: "
                        + functions_text().replace("%", "%%"))
    p.add_argument("--mapping", metavar="FILE", help="take the \"derive\" list of an import mapping file")


def run(args: argparse.Namespace) -> int:
    """Write the log with the derived streams; returns the exit code."""
    from pathlib import Path

    from seqsense.derive import derive_log, parse_derive_arg
    from seqsense.errors import SeqsenseError
    from seqsense.importers.mapping import load_mapping

    if args.in_place and args.out and Path(args.out).resolve() != Path(args.log).resolve():
        raise SeqsenseError("give either --out OUT.h5 or --in-place, not both.")
    if not args.in_place and not args.out:
        raise SeqsenseError("--out OUT.h5 is required (or --in-place to replace the input log).")
    out = Path(args.log) if args.in_place else Path(args.out)
    if not args.in_place and out.resolve() == Path(args.log).resolve():
        raise SeqsenseError(f"--out '{out}' is the input log; pass --in-place to replace it.")
    specs = (load_mapping(args.mapping).derive if args.mapping else []) + [parse_derive_arg(a) for a in args.add]
    written = derive_log(args.log, out, specs)
    n = sum(len(v) for v in written.values())
    kept = sum(len(specs) - len(v) for v in written.values())
    note = f" ({kept} already there with the same derivation, kept)" if kept else ""
    print(f"wrote {out}: {n} derived stream(s) in {len(written)} episode(s){note}; see `seqsense inspect {out}`")
    return 0
