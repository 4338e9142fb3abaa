"""TUM RGB-D dataset folders (`rgb.txt`, `depth.txt`, `accelerometer.txt`, `groundtruth.txt`) -> streams.

The layout (Sturm et al., "A benchmark for the evaluation of RGB-D SLAM systems", IROS 2012): text
files with `#` comment lines and whitespace-separated columns, times in seconds since the Unix epoch
(read exactly, to the nanosecond):
- `rgb.txt`: `timestamp filename` (`rgb/<time>.png`, 640x480 colour) -> image stream `rgb` (RGB);
- `accelerometer.txt`: `timestamp ax ay az` (m/s^2, the Kinect's accelerometer) -> `accel`;
- `groundtruth.txt`: `timestamp tx ty tz qx qy qz qw` (motion capture, the colour camera's optical
  centre in the world frame) -> `truth/position` (x, y, z in m) and `truth/orientation`. TUM writes
  quaternions x, y, z, w; seqsense stores ground-truth orientation w-first (qw, qx, qy, qz), so the
  components are reordered on import;
- `depth.txt`: 16-bit depth maps (5000 units per metre). The log format has 8-bit images only, so
  depth is not imported: a note says so and the skipped frames are counted in provenance.
Each sequence is one episode (or several with --episode every=S / gap=S); `--map rgb=camera`
renames a stream, `include_unmapped: false` keeps only the mapped ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.base import ImportJob, Importer, register_importer
from seqsense.importers.frames import image_blocks, image_part, read_image, stream_names
from seqsense.importers.messages import Part
from seqsense.importers.sink import ImportSession, TimedEpisodes
from seqsense.importers.tables import TIME_UNITS, Table, open_table

TXT_SETTINGS = {"delimiter": "space", "header_rows": 0}
DEPTH_REASON = "16-bit depth maps: the log format stores 8-bit images only"
# file -> (columns it must have, streams: (name, column positions, fields, units, frame_id))
VECTOR_FILES = {
    "accelerometer.txt": (4, [("accel", [1, 2, 3], ("ax", "ay", "az"), "m/s^2", "kinect")]),
    "groundtruth.txt": (8, [("truth/position", [1, 2, 3], ("x", "y", "z"), "m", "world"),
                            ("truth/orientation", [7, 4, 5, 6], ("qw", "qx", "qy", "qz"),
                             "quaternion (w, x, y, z), camera to world (reordered from TUM's x, y, z, w)",
                             "world")]),
}


def _table(path: Path, width: int) -> Table:
    table = open_table(path, TXT_SETTINGS)
    first = table.first_row()
    if len(first) != width:
        raise SeqsenseError(f"'{path}': {len(first)} columns; the TUM RGB-D layout has {width} here.")
    return table


def _column(table: Table, col: int, what: str):
    """Column `col` of every row: times in ns (what='t') or strings."""
    out, n = [], 0
    for lines, rows in table.blocks():
        if what == "t":
            out.append(table.times_ns(lines, rows, col, TIME_UNITS["s"], n))
        else:
            out.append(table.cells(lines, rows, [col], n)[:, 0])
        n += len(rows)
    return np.concatenate(out) if out else np.zeros(0, np.int64 if what == "t" else str)


def _vector_blocks(table: Table, cols: list[int]):
    n = 0
    for lines, rows in table.blocks():
        yield n, table.numbers(lines, rows, cols, n).astype(np.float32)  # (N, D)
        n += len(rows)


@register_importer("tum_rgbd")
class TumRgbdImporter(Importer):
    """TUM RGB-D sequence folders; one episode per sequence."""

    summary = "TUM RGB-D dataset folders (rgb.txt, accelerometer.txt, groundtruth.txt; depth left out)"
    priority = 20

    def detect(self, path: Path) -> bool:
        """A folder with rgb.txt (and its rgb/ images) or depth.txt."""
        return path.is_dir() and ((path / "rgb.txt").is_file() or (path / "depth.txt").is_file())

    def _plan(self, path: Path) -> list[tuple]:
        """(stream name, table, columns, fields, units, frame_id) per stream; columns None for images."""
        plan = []
        if (path / "rgb.txt").is_file():
            plan.append(("rgb", _table(path / "rgb.txt", 2), None, None, "", "rgb"))
        for fname, (width, streams) in VECTOR_FILES.items():
            if (path / fname).is_file():
                table = _table(path / fname, width)
                plan += [(name, table, cols, fields, units, frame) for name, cols, fields, units, frame in streams]
        return plan

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """Each stream with its count and mean rate; depth marked as not imported."""
        rows = []
        for name, table, cols, _, _, _ in self._plan(path):
            t = _column(table, 0, "t")
            rate = (len(t) - 1) * 1e9 / float(t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else float("nan")
            kind = f"images listed in {table.path.name}" if cols is None else f"vector from {table.path.name}"
            rows.append({"topic": name, "msgtype": kind, "count": len(t), "rate_hz": rate, "supported": True})
        if (path / "depth.txt").is_file():
            t = _column(_table(path / "depth.txt", 2), 0, "t")
            rows.append({"topic": "depth", "msgtype": "16-bit depth maps listed in depth.txt", "count": len(t),
                         "rate_hz": float("nan"), "supported": False})
        return rows

    def import_(self, path: Path, session: ImportSession, job: ImportJob) -> None:
        """Import one sequence into the episodes its times fall in."""
        plan = self._plan(path)
        if (path / "depth.txt").is_file():
            n = len(_column(_table(path / "depth.txt", 2), 0, "t"))
            session.count("dropped", f"{path.name}:depth", n)
            job.provenance.setdefault("skipped_topics", {})["depth"] = DEPTH_REASON
        if not plan:
            raise SeqsenseError(f"'{path}': no rgb.txt, accelerometer.txt or groundtruth.txt to import.")
        names = stream_names([p[0] for p in plan], job.mapping, f"'{path}'")
        plan = [p for p in plan if p[0] in names]
        times = {p[0]: _column(p[1], 0, "t") for p in plan}
        episodes = TimedEpisodes(session, list(times.values()), {"source": str(path), "format": "tum_rgbd"},
                                 {"file": str(path), "format": "tum_rgbd"})
        size = session.options.image_size
        for name, table, cols, fields, units, frame in plan:
            for out_name in names[name]:
                where = f"'{table.path}' stream '{out_name}'"
                if cols is None:
                    files = [path / f for f in _column(table, 1, "s")]
                    if not files:
                        continue
                    first = read_image(files[0], size, where)
                    episodes.add_stream(out_name, image_part(first), times[name],
                                        image_blocks(files, size, where, session.options.progress, first, out_name),
                                        f"{table.path.name} in {path.name}", frame, where)
                else:
                    part = Part("", "vector", (len(cols),), units, fields)
                    episodes.add_stream(out_name, part, times[name], _vector_blocks(table, cols),
                                        f"{table.path.name} in {path.name}", frame, where)
        episodes.close()
