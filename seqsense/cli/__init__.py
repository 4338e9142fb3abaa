"""The `seqsense` command: one subcommand per stage of the data flow.

Each subcommand lives in its own module `seqsense.cli.<name>` with `add_arguments(parser)` and
`run(args) -> int`; heavy imports (torch, rosbags, onnxruntime) happen inside `run`, so `--help` is
fast. Bad usage or bad input exits with code 2 and a one-paragraph message; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from seqsense import __version__
from seqsense.errors import SeqsenseError

# (subcommand, module under seqsense.cli, one-line help)
SUBCOMMANDS = [
    ("generate", "generate", "generate scenario logs with ground truth"),
    ("import", "import_", "convert recorded logs (rosbag1/2, MCAP, PX4 ULog, image datasets, video+CSV, tables, HDF5) to a seqsense log"),
    ("inspect", "inspect", "summarize logs; --validate reports every problem"),
    ("derive", "derive", "add derived targets (gravity direction, roll/pitch, velocity, yaw rate) to a log"),
    ("train", "train", "train a model family on logs"),
    ("eval", "eval", "replay held-out logs through trained predictors and score them"),
    ("study", "study", "run the temporal-modeling study and write a report"),
    ("export", "export", "export a trained predictor to ONNX + manifest"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available subcommand."""
    parser = _Parser(prog="seqsense", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"seqsense {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name, help_text in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"seqsense.cli.{module_name}")
        except ModuleNotFoundError as e:
            if e.name != f"seqsense.cli.{module_name}":
                raise
            continue  # subcommand not available in this build
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `seqsense` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SeqsenseError as e:
        if args.debug:
            raise
        print(f"seqsense {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqsense {args.command}: interrupted; finished outputs were kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
