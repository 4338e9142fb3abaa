"""CSV sensor logs with a time column -> streams.

The first row names the columns. The time column is `time_column` from the mapping, or a column
named `t`/`time`/`timestamp`/`stamp` with an optional unit suffix (`t_ns`, `time_s`, ...); its unit
is that suffix or the mapping's `time_unit` (s, ms, us, ns) and must be stated one way or the other.
Mapping entries pick `columns` for each stream; without entries every other column goes into one
vector stream named after the file. Rows are read in blocks, so large files stay out of memory; a
cell that is not a number is an error naming the file, row and column.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.mapping import Mapping
from seqsense.importers.messages import Part
from seqsense.importers.sink import ImportSession, StreamSink

BLOCK_ROWS = 65536
TIME_UNITS = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}
TIME_NAMES = ("t", "time", "timestamp", "stamp")


def _header(path: Path, delimiter: str) -> list[str]:
    try:
        with open(path, newline="") as f:
            row = next(csv.reader(f, delimiter=delimiter), None)
    except OSError as e:
        raise SeqsenseError(f"'{path}': cannot read ({e.strerror}).") from e
    if not row:
        raise SeqsenseError(f"'{path}': empty CSV file (no header row).")
    return [c.strip() for c in row]


def time_column(path: Path, columns: list[str], settings: dict) -> tuple[str, float]:
    """The time column's name and its ns-per-unit factor (SeqsenseError when the unit is unstated)."""
    name = settings.get("time_column")
    if name is None:
        for c in columns:
            base, _, suffix = c.lower().rpartition("_")
            if c.lower() in TIME_NAMES or (base in TIME_NAMES and suffix in TIME_UNITS):
                name = c
                break
    if name is None or name not in columns:
        raise SeqsenseError(f"'{path}': no time column {name or ''!r} among {columns}; name it with "
                            "\"time_column\" in a mapping file (--config).")
    suffix = name.lower().rpartition("_")[2]
    unit = settings.get("time_unit") or (suffix if suffix in TIME_UNITS and "_" in name else None)
    if unit not in TIME_UNITS:
        raise SeqsenseError(f"'{path}': the unit of time column '{name}' is not stated; add \"time_unit\" "
                            f"(one of {list(TIME_UNITS)}) to the mapping file, or name the column e.g. '{name}_s'.")
    return name, TIME_UNITS[unit]


def _entries(path: Path, columns: list[str], tcol: str, mapping: Mapping) -> list[dict]:
    entries = [e for e in mapping.streams if e.get("columns")]
    if not entries:
        others = [c for c in columns if c != tcol]
        return [{"stream": path.stem, "columns": others}] if others else []
    for e in entries:
        missing = [c for c in e["columns"] if c not in columns]
        if missing:
            raise SeqsenseError(f"'{path}': stream '{e['stream']}' names column(s) {missing}; columns: {columns}.")
    return entries


def list_columns(path: Path, mapping: Mapping) -> list[dict]:
    """The columns of a CSV file and its row count."""
    delimiter = mapping.settings.get("delimiter", ",")
    columns = _header(path, delimiter)
    with open(path, newline="") as f:
        n = sum(1 for _ in f) - 1
    return [{"topic": c, "msgtype": "column", "count": n, "rate_hz": float("nan"), "supported": True} for c in columns]


def _parse_rows(path: Path, rows: list[list[str]], line0: int, columns: list[str]) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.float64)  # (N, columns)
    except ValueError:
        pass
    for i, row in enumerate(rows):  # find the offending cell for the message
        if len(row) != len(columns):
            raise SeqsenseError(f"'{path}' line {line0 + i}: {len(row)} cells for {len(columns)} columns.")
        for c, cell in zip(columns, row):
            try:
                float(cell)
            except ValueError:
                raise SeqsenseError(f"'{path}' line {line0 + i} (data row {line0 + i - 2}) column '{c}': "
                                    f"{cell!r} is not a number. Fix the cell or drop the column from the mapping.") from None
    raise SeqsenseError(f"'{path}': rows from line {line0} could not be read as numbers.")


def import_csv(path: Path, mapping: Mapping, session: ImportSession) -> None:
    """Import one CSV file as one episode (or several with --episode gap=S / every=S)."""
    delimiter = mapping.settings.get("delimiter", ",")
    columns = _header(path, delimiter)
    tcol, scale = time_column(path, columns, {**mapping.settings, **mapping.options})
    entries = _entries(path, columns, tcol, mapping)
    if not entries:
        raise SeqsenseError(f"'{path}': no data columns besides the time column '{tcol}'.")
    col = {c: i for i, c in enumerate(columns)}
    parts = []
    for e in entries:
        names = e.get("field_names") or e["columns"]
        parts.append(Part("", "vector", (len(e["columns"]),), e.get("units", ""), tuple(names),
                          bool(e.get("allow_nan", False))))
    gap, every, t_first = session.options.gap_ns, session.options.every_ns, None
    sinks: list[StreamSink] = []
    last_t, n_rows = None, 0
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        next(reader)
        while True:
            rows = [r for r in itertools.islice(reader, BLOCK_ROWS) if r]
            if not rows:
                break
            x = _parse_rows(path, rows, n_rows + 2, columns)
            t = np.round(x[:, col[tcol]] * scale).astype(np.int64)
            # A new episode starts at the first row and after every gap longer than --episode gap=S.
            prev = np.concatenate([[t[0] if last_t is None else last_t], t[:-1]])
            new = (t - prev > gap) if gap is not None else np.zeros(len(t), bool)
            new[0] |= last_t is None
            if every is not None:  # pieces of fixed length, counted from the first row
                t_first = t[0] if t_first is None else t_first
                piece = (t - t_first) // every
                new[1:] |= piece[1:] != piece[:-1]
                new[0] |= last_t is not None and piece[0] != (last_t - t_first) // every
            starts = set(np.flatnonzero(new).tolist())
            bounds = sorted(starts | {0, len(t)})
            for a, b in zip(bounds[:-1], bounds[1:]):
                if a in starts:
                    if sinks:
                        session.close_episode(sinks)
                    ep = session.new_episode({"source": str(path), "format": "csv", "first_row": n_rows + a})
                    session.sources.append({"file": str(path), "format": "csv", "episode": ep.name})
                    sinks = [StreamSink(session, ep, e["stream"], p, f"{','.join(e['columns'])} in {path.name}",
                                        e.get("frame_id", ""), f"'{path}' stream '{e['stream']}'")
                             for e, p in zip(entries, parts)]
                for e, sink in zip(entries, sinks):
                    sink.add_block(t[a:b], x[a:b][:, [col[c] for c in e["columns"]]], n_rows + a)
            last_t = int(t[-1])
            n_rows += len(rows)
    if not sinks:
        raise SeqsenseError(f"'{path}': no data rows below the header.")
    session.close_episode(sinks)
