"""Print the study's headline block (run, controls, table, claims), or put it into a README between the headline markers.

    python scripts/readme_table.py study_out/results.json
    python scripts/readme_table.py study_out/results.json --readme README.md

The README must hold `<!-- headline:start -->` and `<!-- headline:end -->`; only the text between
them is replaced, and the file is rewritten atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seqsense.errors import SeqsenseError
from seqsense.fileio import write_atomic
from seqsense.report import headline_block, replace_marked_block


def load_results(path: Path) -> dict:
    """The results dict from a results.json written by `seqsense study`."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        raise SeqsenseError(f"{path}: no such file. Pass the results.json written by `seqsense study`.") from None
    except json.JSONDecodeError as e:
        raise SeqsenseError(f"{path}: not valid JSON ({e}). Pass the results.json written by `seqsense study`.") from None
    if not isinstance(results, dict) or not isinstance(results.get("cells"), dict):
        raise SeqsenseError(f"{path}: has no 'cells' mapping; is it the results.json written by `seqsense study`?")
    return results


def update_readme(readme: Path, table: str) -> None:
    """Replace the headline block of `readme` with `table`, atomically."""
    try:
        with open(readme, encoding="utf-8", newline="") as f:  # keep the file's own line endings
            text = f.read()
    except FileNotFoundError:
        raise SeqsenseError(f"{readme}: no such file; pass the README to update with --readme.") from None
    try:
        new = replace_marked_block(text, table, where=str(readme))
    except ValueError as e:
        raise SeqsenseError(str(e)) from None
    try:
        write_atomic(readme, new.encode("utf-8"))
    except OSError as e:
        raise SeqsenseError(f"{readme}: cannot write ({e}); check the folder's permissions.") from None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the table or update the README; exit code 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results.json written by `seqsense study`")
    parser.add_argument("--readme", type=Path, help="README to update between the headline markers")
    args = parser.parse_args(argv)
    try:
        table = headline_block(load_results(args.results))
        if args.readme is None:
            print(table)
        else:
            update_readme(args.readme, table)
            print(f"updated the headline block in {args.readme}")
    except SeqsenseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
