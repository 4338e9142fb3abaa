"""Delimited text tables in the shapes people write them, read in blocks with located errors.

`open_table(path, settings)` works out the dialect from the first lines unless settings give it:
- the **delimiter**: `,` `;` tab or runs of whitespace (`delimiter`: one of those, `tab`, `space`);
- **comment lines** starting with `#` or `%` are skipped anywhere; when the last comment line before
  the data has as many cells as the data rows, it is the header (EuRoC's `#timestamp [ns],...`,
  TUM's `# timestamp tx ty tz ...`);
- **header rows** (`header_rows` 0, 1 or 2): leading rows whose numeric columns are not numbers. Of
  two header rows the first names groups over several columns (a blank cell continues the group to
  its left) and the names become `group.field`;
- the **decimal mark**: `,` when cells read like `1,5` and the delimiter is not a comma (`decimal`);
- without a header, `column_names` (a list in the mapping file) names the columns.

`time_column` finds the time column (`time_column` setting, or a name such as `t`, `time`,
`timestamp`, `stamp`) and its unit from the name (`time_s`, `Time (s)`, `t [ms]`, `timestamp_ns`,
`t_us`, `time.s`) or the `time_unit` setting. `Table.blocks()` yields raw lines with their line
numbers; `read()`, `numbers()` and `times_ns()` parse a block with numpy's C reader and, when it
refuses, cell by cell to name the file, line, data row and column of the bad cell. One row per line.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from seqsense.errors import SeqsenseError

BLOCK_ROWS = 65536
SNIFF_LINES = 40
TIME_UNITS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
UNIT_NAMES = {"s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s", "ms": "ms", "msec": "ms",
              "millisecond": "ms", "milliseconds": "ms", "us": "us", "µs": "us", "μs": "us", "usec": "us",
              "microsecond": "us", "microseconds": "us", "ns": "ns", "nsec": "ns", "nanosecond": "ns",
              "nanoseconds": "ns"}
TIME_NAMES = ("t", "time", "timestamp", "timestamps", "stamp", "times")
DELIMITER_NAMES = {",": ",", "comma": ",", ";": ";", "semicolon": ";", "tab": "\t", "\t": "\t", "\\t": "\t",
                   "space": None, "whitespace": None, " ": None}
DELIMITER_WORDS = {",": "comma", ";": "semicolon", "\t": "tab", None: "whitespace"}
_TIME_RE = re.compile(r"^(?P<base>[a-z]+)\s*(?:[_.\s]\s*(?P<u1>[a-zµμ]+)|[(\[]\s*(?P<u2>[a-zµμ]+)\s*[)\]])?$", re.I)
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+(?:[eE][+-]?\d+)?$")


@dataclasses.dataclass
class Table:
    """One delimited text file: its dialect, column names and where the data rows start."""

    path: Path
    delimiter: str | None  # None: runs of whitespace
    header_rows: int
    decimal: str
    columns: list[str]  # empty when the file has no header and no names were given
    data_line: int  # 1-based line number of the first line after the header
    width: int  # cells in a data row

    @property
    def delimiter_name(self) -> str:
        """The delimiter as a word, for messages and provenance."""
        return DELIMITER_WORDS[self.delimiter]

    def describe(self) -> dict:
        """The dialect, as stored in provenance."""
        return {"delimiter": self.delimiter_name, "header_rows": self.header_rows, "decimal": self.decimal,
                "columns": self.columns}

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[Sequence[int], list[str]]]:
        """(line numbers, raw lines) of the data rows, about `rows` at a time (blank and comment lines skipped)."""
        try:
            f = open(self.path, encoding="utf-8-sig", errors="replace")
        except OSError as e:
            raise SeqsenseError(f"'{self.path}': cannot read ({e.strerror}).") from e
        with f:
            first = self.data_line
            for _ in itertools.islice(f, first - 1):
                pass
            while True:
                chunk = list(itertools.islice(f, rows))
                if not chunk:
                    return
                raw = [line for line in chunk if (line.lstrip()[:1] or "#") not in "#%"]
                if len(raw) == len(chunk):
                    lines: Sequence[int] = range(first, first + len(chunk))
                else:
                    lines = [first + i for i, line in enumerate(chunk) if (line.lstrip()[:1] or "#") not in "#%"]
                first += len(chunk)
                if raw:
                    yield lines, raw

    def split(self, raw: list[str]) -> list[list[str]]:
        """Raw lines -> rows of cells (a trailing delimiter adds no cell)."""
        return [_trim(_split(line, self.delimiter)) for line in raw]

    def first_row(self) -> list[str]:
        """The cells of the first data row ([] when there is none)."""
        block = next(self.blocks(rows=1), None)
        return self.split(block[1])[0] if block else []

    def index(self, name: str) -> int:
        """The position of column `name` (SeqsenseError listing the columns)."""
        if name not in self.columns:
            raise SeqsenseError(f"'{self.path}': no column {name!r}; columns: {self.columns}.")
        return self.columns.index(name)

    def cells(self, lines: Sequence[int], raw: list[str], cols: list[int], data_row0: int) -> np.ndarray:
        """The cells of columns `cols` as a string array (N, len(cols)); rows of the wrong width are an error."""
        rows = self.split(raw)
        n = self.width
        for i, r in enumerate(rows):
            if len(r) != n:
                raise SeqsenseError(f"'{self.path}' line {lines[i]} (data row {data_row0 + i}): {len(r)} cells "
                                    f"for {n} columns ({self.delimiter_name}-separated).")
        arr = np.array(rows, dtype=str)[:, cols] if rows else np.zeros((0, len(cols)), str)
        if self.decimal == ",":
            arr = np.char.replace(arr, ",", ".")
        return arr

    def _fast(self, raw: list[str], cols: list[int], dtype) -> np.ndarray | None:
        """Columns `cols` parsed by numpy's C reader when every line has the table's width; None otherwise."""
        if self.decimal != "." or not raw:
            return None
        n = self.width
        if self.delimiter is None:
            ok = all(len(line.split()) == n for line in raw)
        else:
            ok = all(line.count(self.delimiter) == n - 1 for line in raw)
        if not ok:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.loadtxt(raw, delimiter=self.delimiter, usecols=cols, dtype=dtype, ndmin=2, comments=None,
                                  quotechar='"')
        except (ValueError, OverflowError):
            return None

    def numbers(self, lines: Sequence[int], raw: list[str], cols: list[int], data_row0: int) -> np.ndarray:
        """Columns `cols` as float64 (N, len(cols)); a cell that is not a number is an error naming it."""
        x = self._fast(raw, cols, np.float64)
        if x is not None:
            return x
        arr = self.cells(lines, raw, cols, data_row0)
        try:
            return arr.astype(np.float64)
        except ValueError:
            pass
        for i in range(len(arr)):
            for j, c in enumerate(cols):
                try:
                    float(arr[i, j])
                except ValueError:
                    raise SeqsenseError(
                        f"'{self.path}' line {lines[i]} (data row {data_row0 + i}) column '{self.name(c)}': "
                        f"{self.split([raw[i]])[0][c]!r} is not a number. Fix the cell or drop the column from the mapping."
                    ) from None
        raise SeqsenseError(f"'{self.path}': rows from line {lines[0]} could not be read as numbers.")

    def times_ns(self, lines: Sequence[int], raw: list[str], col: int, per_unit_ns: int, data_row0: int,
                 floats: np.ndarray | None = None) -> np.ndarray:
        """Column `col` as int64 nanoseconds, exact for integers and long decimals (e.g. Unix times in ns).
        `floats`, the column already read as float64, saves a pass when float64 is exact enough."""
        if floats is None:
            ints = self._fast(raw, [col], np.int64)
            if ints is not None:
                return ints[:, 0] * per_unit_ns
            floats = self.numbers(lines, raw, [col], data_row0)[:, 0]
        bad = np.flatnonzero(~np.isfinite(floats))
        if len(bad):
            i = int(bad[0])
            raise SeqsenseError(f"'{self.path}' line {lines[i]} (data row {data_row0 + i}) column "
                                f"'{self.name(col)}': time {self.split([raw[i]])[0][col]!r} is not finite.")
        if np.abs(floats).max(initial=0.0) * per_unit_ns < 2.0**52:  # float64 is exact to the nanosecond here
            return np.round(floats * per_unit_ns).astype(np.int64)
        cells = self.cells(lines, raw, [col], data_row0)[:, 0]
        try:
            return cells.astype(np.int64) * per_unit_ns
        except (ValueError, OverflowError):
            return np.array([_decimal_ns(c, per_unit_ns) for c in cells], np.int64)

    def read(self, lines: Sequence[int], raw: list[str], cols: list[int], time_col: int, per_unit_ns: int,
             data_row0: int) -> tuple[np.ndarray, np.ndarray]:
        """(times in ns (N,), columns `cols` as float64 (N, len(cols))) of one block, in one pass where possible."""
        used = sorted(set(cols) | {time_col})
        x = self.numbers(lines, raw, used, data_row0)
        pos = {j: k for k, j in enumerate(used)}
        t = self.times_ns(lines, raw, time_col, per_unit_ns, data_row0, floats=x[:, pos[time_col]])
        return t, x[:, [pos[j] for j in cols]]

    def name(self, col: int) -> str:
        """Column `col`'s name, or its 1-based position when the table has no names."""
        return self.columns[col] if col < len(self.columns) else f"#{col + 1}"


def _decimal_ns(text: str, per_unit_ns: int) -> int:
    """A decimal string times `per_unit_ns`, rounded to an integer without float rounding."""
    from decimal import Decimal, InvalidOperation

    try:
        return int((Decimal(text) * per_unit_ns).to_integral_value())
    except InvalidOperation:
        raise SeqsenseError(f"time {text!r} is not a number.") from None


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    return [c.strip() for c in next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])]


def _is_comment(line: str) -> bool:
    s = line.lstrip()
    return s.startswith("#") or s.startswith("%")


def _head(path: Path) -> list[tuple[int, str]]:
    """The first lines (number, text) of the file, up to SNIFF_LINES non-comment ones."""
    out, n_data = [], 0
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                out.append((line_no, line))
                if line.strip() and not _is_comment(line):
                    n_data += 1
                    if n_data >= SNIFF_LINES:
                        break
                if line_no > 10 * SNIFF_LINES:
                    break
    except OSError as e:
        raise SeqsenseError(f"'{path}': cannot read ({e.strerror}).") from e
    return out


def _is_number(cell: str, decimal: str) -> bool:
    try:
        float(cell.replace(",", ".") if decimal == "," else cell)
        return True
    except ValueError:
        return False


def _trim(cells: list[str]) -> list[str]:
    cells = list(cells)
    while len(cells) > 1 and cells[-1] == "":
        cells.pop()
    return cells


def _sniff_delimiter(lines: list[str]) -> str | None:
    """The candidate that splits most lines into the same number (> 1) of cells; ties go to tab, `;`,
    `,`, whitespace in that order (a blank group cell or a bad row does not change the verdict)."""
    best, best_score = ",", 0.0
    for cand in ("\t", ";", ",", None):
        counts = [len(_trim(_split(line, cand))) for line in lines]
        modal = max(set(counts), key=counts.count)
        score = counts.count(modal) / len(counts)
        if modal > 1 and score > best_score:
            best, best_score = cand, score
    return best


def group_names(groups: list[str], fields: list[str]) -> list[str]:
    """`group.field` names from a two-row header; a blank group cell continues the group to its left."""
    names, group = [], ""
    for j, field in enumerate(fields):
        g = groups[j].strip() if j < len(groups) else ""
        group = g or group
        names.append(f"{group}.{field}" if group and field else (field or group or f"column{j + 1}"))
    return names


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}.{k}")
        seen[n] = k + 1
    return out


def open_table(path: str | Path, settings: dict | None = None) -> Table:
    """The dialect and column names of the table at `path` (given settings win over sniffing)."""
    path = Path(path)
    settings = settings or {}
    head = _head(path)
    body = [(n, line) for n, line in head if line.strip() and not _is_comment(line)]
    if not body:
        raise SeqsenseError(f"'{path}': no rows (the file is empty or holds only comments).")
    if settings.get("delimiter") is not None:
        key = str(settings["delimiter"])
        if key not in DELIMITER_NAMES and key.lower() not in DELIMITER_NAMES:
            raise SeqsenseError(f"delimiter {key!r} is not one of: ',' ';' tab space.")
        delimiter = DELIMITER_NAMES.get(key, DELIMITER_NAMES.get(key.lower()))
    else:
        delimiter = _sniff_delimiter([line for _, line in body])
    rows = [_trim(_split(line, delimiter)) for _, line in body]
    decimal = settings.get("decimal") or ("," if delimiter != "," and any(
        _DECIMAL_COMMA.match(c) for r in rows[-5:] for c in r) else ".")
    widths = [len(r) for r in rows]
    width = max(set(widths), key=widths.count)  # most rows have it: the data's width
    ref = next(r for r in reversed(rows) if len(r) == width)
    numeric = [j for j, c in enumerate(ref) if _is_number(c, decimal)]  # numeric in the data

    def header_like(r: list[str]) -> bool:
        """Words (not numbers) where the data has numbers: a header, a group or a units row."""
        cells = [r[j] for j in numeric if j < len(r)]
        nums = sum(1 for c in cells if c and _is_number(c, decimal))
        words = sum(1 for c in cells if c) - nums
        return words > 0 and words >= nums

    given = settings.get("header_rows")
    if given is not None:
        if str(given) not in ("0", "1", "2"):
            raise SeqsenseError(f"header_rows must be 0, 1 or 2, got {given!r}.")
        n_header = int(given)
    else:
        n_header = 0
        while n_header < min(2, len(rows) - 1) and header_like(rows[n_header]):
            n_header += 1
    columns: list[str] = []
    if n_header == 1:
        columns = rows[0]
    elif n_header == 2:
        groups = _split(body[0][1], delimiter)
        columns = group_names(groups, rows[1])
    data_line = body[n_header][0] if n_header < len(body) else body[-1][0] + 1
    if n_header == 0:
        comments = [line for n, line in head if n < body[0][0] and _is_comment(line)]
        if comments:
            cells = _trim(_split(comments[-1].lstrip().lstrip("#%").strip(), delimiter))
            if len(cells) == width and header_like(cells):
                columns = cells
    names = settings.get("column_names")
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise SeqsenseError(f"'{path}': column_names must be a list of strings, got {names!r}.")
        if len(names) != width:
            raise SeqsenseError(f"'{path}': column_names gives {len(names)} names but the rows have {width} "
                                f"cells ({DELIMITER_WORDS[delimiter]}-separated).")
        columns = list(names)
    columns = _unique([c.strip() for c in columns])
    if columns and len(columns) != width:
        raise SeqsenseError(f"'{path}' line {body[n_header - 1][0] if n_header else body[0][0]}: the header names "
                            f"{len(columns)} columns but data rows have {width} cells "
                            f"({DELIMITER_WORDS[delimiter]}-separated); give --delimiter or --header-rows.")
    return Table(path, delimiter, n_header, decimal, columns, data_line, width)


def time_unit_of(name: str, any_base: bool = False) -> str | None:
    """The unit a time column's name states (`time_s`, `Time (s)`, `t [ms]`, `timestamp_ns`), or None;
    with `any_base`, for any name (`Zeit [ms]`: a time column named by the user)."""
    m = _TIME_RE.match(name.strip().lstrip("#").strip())
    if not m or not (any_base or m["base"].lower() in TIME_NAMES):
        return None
    unit = (m["u1"] or m["u2"] or "").lower()
    return UNIT_NAMES.get(unit)


def is_time_name(name: str) -> bool:
    """Whether a column name reads as a time column (`t`, `time`, `timestamp`, `stamp`, with a unit or not)."""
    m = _TIME_RE.match(name.strip().lstrip("#").strip())
    return bool(m) and m["base"].lower() in TIME_NAMES and (not (m["u1"] or m["u2"]) or time_unit_of(name) is not None)


def time_column(table: Table, settings: dict) -> tuple[int, int]:
    """The time column's position and its ns-per-unit factor (SeqsenseError saying how to name them)."""
    path, columns = table.path, table.columns
    name = settings.get("time_column")
    given = name is not None
    if not columns:
        raise SeqsenseError(f"'{path}': the table has no header row, so its columns have no names; name them with "
                            "\"column_names\": [...] in a mapping file (--config), or add a header row.")
    if name is None:
        name = next((c for c in columns if is_time_name(c)), None)
    if name is None or name not in columns:
        raise SeqsenseError(f"'{path}': no time column {name or ''!r} among {columns}; name it with "
                            "--time-column or \"time_column\" in a mapping file (--config).")
    unit = settings.get("time_unit") or time_unit_of(name, any_base=given)
    if unit not in TIME_UNITS:
        raise SeqsenseError(f"'{path}': the unit of time column '{name}' is not stated; pass --time-unit (one of "
                            f"{list(TIME_UNITS)}), add \"time_unit\" to the mapping file, or name the column "
                            f"e.g. '{name}_s' or '{name} [ms]'.")
    return columns.index(name), TIME_UNITS[unit]


def count_rows(table: Table) -> int:
    """The number of data rows (blank and comment lines not counted)."""
    return sum(len(raw) for _, raw in table.blocks())
