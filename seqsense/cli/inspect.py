"""Summarize seqsense logs per file, episode and stream; with --validate, report every problem
(file, episode, stream, index) and exit 2 when any error is found."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", metavar="LOG", help="seqsense log files (.h5)")
    p.add_argument("--validate", action="store_true", help="check every stream and report each problem")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")


def _fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec)


def _print_summary(s: dict) -> None:
    print(f"{s['file']}  (format {s['format_version']}, {s['writer']}, {len(s['episodes'])} episode(s))")
    header = f"  {'episode':<12} {'stream':<24} {'kind':<7} {'samples':>8} {'dur s':>8} {'rate Hz':>8} {'max gap s':>9}  {'dtype':<8} {'shape':<12} units"
    print(header)
    for ep in s["episodes"]:
        for st in ep["streams"]:
            print(
                f"  {ep['episode']:<12} {st['stream']:<24} {st['kind']:<7} {st['samples']:>8} "
                f"{_fmt(st['duration_s'], '.2f'):>8} {_fmt(st['median_rate_hz']):>8} {_fmt(st['largest_gap_s']):>9}  "
                f"{str(st['dtype']):<8} {str(tuple(st['shape'] or ())):<12} {st['units']}"
            )


def run(args: argparse.Namespace) -> int:
    from seqsense.errors import LogFormatError
    from seqsense.log.validate import summarize, validate

    results, any_error = [], False
    for path in args.logs:
        entry: dict = {"file": path}
        if args.validate:
            problems = validate(path)
            entry["problems"] = [dict(vars(p)) for p in problems]
            any_error |= any(p.severity == "error" for p in problems)
            if not args.json:
                for p in problems:
                    print(str(p), file=sys.stderr if p.severity == "error" else sys.stdout)
            readable = not any(p.severity == "error" and p.episode is None for p in problems)
        else:
            readable = True
        if readable:
            try:
                entry["summary"] = summarize(path)
            except LogFormatError as e:
                if not args.validate:
                    raise
                entry["summary"] = None
                any_error = True
                if not args.json:
                    print(f"error: {e}", file=sys.stderr)
            if entry.get("summary") and not args.json:
                _print_summary(entry["summary"])
        results.append(entry)
    if args.json:
        from seqsense.fileio import to_json

        print(to_json(results, indent=2))
    if args.validate:
        n_err = sum(sum(p["severity"] == "error" for p in r["problems"]) for r in results)
        n_warn = sum(sum(p["severity"] == "warning" for p in r["problems"]) for r in results)
        if not args.json:
            print(f"validation: {n_err} error(s), {n_warn} warning(s) in {len(results)} file(s)")
        return 2 if any_error else 0
    return 0
