"""Tables of sensor samples (CSV and other delimited text) with a time column -> streams.

The dialect (delimiter, header rows, comments, decimal mark) and the time column with its unit are
worked out by `seqsense.importers.tables` unless the settings give them (`--delimiter`,
`--header-rows`, `--time-column`, `--time-unit`, or the same keys in a mapping file; `column_names`
names the columns of a table without a header). Mapping entries pick `columns` for each stream;
without entries the numeric columns form one stream named after the file, or one stream per group
of a two-row header (`accel.x`, `accel.y` -> stream `accel` with fields x, y). Rows are read in
blocks, so large files stay out of memory; a cell that is not a number is an error naming the file,
line, data row and column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.base import ImportJob, Importer, read_head, register_importer
from seqsense.importers.messages import Part
from seqsense.importers.sink import ImportSession, StreamSink
from seqsense.importers.tables import BLOCK_ROWS, Table, count_rows, open_table, time_column

TABLE_SUFFIXES = {".csv", ".tsv", ".txt", ".dat", ".tab", ".ssv"}


def _entries(table: Table, tcol: int, job: ImportJob) -> list[dict]:
    """The streams to write: the mapping's column entries, or the numeric columns by default."""
    path, columns = table.path, table.columns
    entries = [e for e in job.mapping.streams if e.get("columns")]
    if entries:
        for e in entries:
            missing = [c for c in e["columns"] if c not in columns]
            if missing:
                raise SeqsenseError(f"'{path}': stream '{e['stream']}' names column(s) {missing}; columns: {columns}.")
        return entries
    first = table.first_row()
    numeric, text = [], []
    for j, c in enumerate(columns):
        if j == tcol:
            continue
        try:
            float(first[j].replace(",", ".") if table.decimal == "," else first[j])
            numeric.append(c)
        except (ValueError, IndexError):
            text.append(c)
    if text:
        job.notify(f"'{path}': column(s) {text} hold text, not numbers: not imported "
                   "(pick columns with a mapping to import others).")
    if table.header_rows == 2 and any("." in c for c in numeric):
        groups: dict[str, list[str]] = {}
        for c in numeric:
            g = c.split(".", 1)[0] if "." in c else path.stem
            groups.setdefault(g, []).append(c)
        return [{"stream": g, "columns": cs, "field_names": [c.split(".", 1)[1] if "." in c else c for c in cs]}
                for g, cs in groups.items()]
    return [{"stream": path.stem, "columns": numeric}] if numeric else []


@register_importer("csv")
class TableImporter(Importer):
    """Delimited text tables; one episode per file, or several with --episode gap=S / every=S."""

    summary = "delimited text tables: , ; tab or whitespace, 0-2 header rows, a time column"
    priority = 90  # the fallback for text files

    def detect(self, path: Path) -> bool:
        """A file named like a table, or text whose lines hold delimited numbers."""
        if not path.is_file():
            return False
        if path.suffix.lower() in TABLE_SUFFIXES:
            return True
        head = read_head(path, 4096)
        if not head or b"\x00" in head:
            return False
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            return False
        lines = [line for line in text.splitlines()[:-1] if line.strip()]
        return len(lines) >= 2 and any(ch.isdigit() for ch in lines[-1])

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """The columns with the row count, and the rate from the time column when it is known."""
        table = open_table(path, job.settings)
        n = count_rows(table)
        rate, tcol = float("nan"), None
        try:
            tcol, scale = time_column(table, job.settings)
        except SeqsenseError:
            pass
        if tcol is not None and n > 1:
            t = np.concatenate([table.times_ns(lines, rows, tcol, scale, 0) for lines, rows in table.blocks()])
            if t[-1] > t[0]:
                rate = (len(t) - 1) * 1e9 / float(t[-1] - t[0])
        width = len(table.columns) or len(table.first_row())
        names = table.columns or [f"#{j + 1}" for j in range(width)]
        kind = f"column ({table.delimiter_name}-separated)"
        return [{"topic": c, "msgtype": "time column" if j == tcol else kind, "count": n,
                 "rate_hz": rate, "supported": True} for j, c in enumerate(names)]

    def import_(self, path: Path, session: ImportSession, job: ImportJob) -> None:
        """Import one table as one episode (or several with --episode gap=S / every=S)."""
        table = open_table(path, job.settings)
        tcol, scale = time_column(table, job.settings)
        entries = _entries(table, tcol, job)
        if not entries:
            raise SeqsenseError(f"'{path}': no data columns besides the time column '{table.columns[tcol]}'.")
        cols = [[table.index(c) for c in e["columns"]] for e in entries]
        parts = []
        for e in entries:
            names = e.get("field_names") or e["columns"]
            if len(names) != len(e["columns"]):
                raise SeqsenseError(f"'{path}': stream '{e['stream']}' has {len(e['columns'])} columns but "
                                    f"{len(names)} field_names.")
            parts.append(Part("", "vector", (len(e["columns"]),), e.get("units", ""), tuple(names),
                              bool(e.get("allow_nan", False))))
        used = sorted({j for cs in cols for j in cs})
        pos = {j: k for k, j in enumerate(used)}  # column -> position in the block read
        gap, every, t_first = session.options.gap_ns, session.options.every_ns, None
        sinks: list[StreamSink] = []
        last_t, n_rows = None, 0
        for lines, rows in table.blocks(BLOCK_ROWS):
            t, x = table.read(lines, rows, used, tcol, scale, n_rows)  # (N,), (N, used columns)
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
                    ep = session.new_episode({"source": str(path), "format": "csv", "first_row": n_rows + a,
                                              "table": table.describe()})
                    session.sources.append({"file": str(path), "format": "csv", "episode": ep.name})
                    sinks = [StreamSink(session, ep, e["stream"], p, f"{','.join(e['columns'])} in {path.name}",
                                        e.get("frame_id", ""), f"'{path}' stream '{e['stream']}'")
                             for e, p in zip(entries, parts)]
                for cs, sink in zip(cols, sinks):
                    sink.add_block(t[a:b], x[a:b][:, [pos[j] for j in cs]], n_rows + a)
            last_t = int(t[-1])
            n_rows += len(rows)
        if not sinks:
            raise SeqsenseError(f"'{path}': no data rows below the header.")
        session.close_episode(sinks)
