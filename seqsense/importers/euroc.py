"""EuRoC / ASL dataset folders (`mav0/<sensor>/data.csv`) -> camera, IMU and ground-truth streams.

The layout (Burri et al., "The EuRoC micro aerial vehicle datasets", IJRR 2016): a sequence folder
holds `mav0/` (the folder itself may be given), with one folder per sensor, each with a `data.csv`
whose first column is `#timestamp [ns]`:
- `cam0/`, `cam1/`: `data.csv` (timestamp, filename) and the frames in `data/` -> image streams
  `cam0`, `cam1` (grey 8-bit PNGs: (H, W, 1));
- `imu0/`: w_RS_S_x..z [rad/s], a_RS_S_x..z [m/s^2] -> `imu0`, fields acc_x..acc_z, gyr_x..gyr_z
  (the order of the ROS Imu converter);
- ground truth, from the first present of `state_groundtruth_estimate0/` (position, quaternion,
  velocity, gyro and accelerometer biases), `vicon0/` (position, quaternion), `leica0/` (position):
  `truth/position`, `truth/orientation` (qw, qx, qy, qz, body to world; EuRoC is already w-first),
  `truth/velocity`, `truth/gyro_bias`, `truth/accel_bias`; the other reference systems keep their
  folder name (`leica0/position`);
- any other sensor folder with a `data.csv` -> a vector stream named after it.
Each sequence is one episode (or several with --episode every=S / gap=S). `--map cam0=camera`
renames a stream; `include_unmapped: false` keeps only the mapped ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.base import ImportJob, Importer, register_importer
from seqsense.importers.frames import image_blocks, image_part, read_image, stream_names
from seqsense.importers.messages import Part
from seqsense.importers.sink import ImportSession, TimedEpisodes
from seqsense.importers.tables import Table, open_table, time_column

TRUTH_FOLDERS = ("state_groundtruth_estimate0", "vicon0", "leica0")
CSV_SETTINGS = {"delimiter": ",", "time_unit": "ns"}  # the published layout: comma-separated, ns times
# (stream suffix, column stems, field names, units) of the ground-truth groups
GROUPS = [
    ("position", ["p_RS_R_x", "p_RS_R_y", "p_RS_R_z"], ["x", "y", "z"], "m"),
    ("orientation", ["q_RS_w", "q_RS_x", "q_RS_y", "q_RS_z"], ["qw", "qx", "qy", "qz"],
     "quaternion (w, x, y, z), body (IMU) to world"),
    ("velocity", ["v_RS_R_x", "v_RS_R_y", "v_RS_R_z"], ["vx", "vy", "vz"], "m/s"),
    ("gyro_bias", ["b_w_RS_S_x", "b_w_RS_S_y", "b_w_RS_S_z"], ["x", "y", "z"], "rad/s"),
    ("accel_bias", ["b_a_RS_S_x", "b_a_RS_S_y", "b_a_RS_S_z"], ["x", "y", "z"], "m/s^2"),
]
IMU_STEMS = ["a_RS_S_x", "a_RS_S_y", "a_RS_S_z", "w_RS_S_x", "w_RS_S_y", "w_RS_S_z"]
IMU_FIELDS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
IMU_UNITS = "m/s^2 (acc_*), rad/s (gyr_*)"


def mav_folder(path: Path) -> Path:
    """The `mav0` folder of a sequence (or the folder itself)."""
    return path / "mav0" if (path / "mav0").is_dir() else path


def _stem(column: str) -> str:
    return column.split("[")[0].strip()


def _sensors(mav: Path) -> list[Path]:
    if not mav.is_dir():
        return []
    return sorted(p for p in mav.iterdir() if p.is_dir() and (p / "data.csv").is_file())


def _is_camera(sensor: Path) -> bool:
    return re.fullmatch(r"cam\d+", sensor.name) is not None and (sensor / "data").is_dir()


class _Stream:
    """One output stream planned from a sensor's data.csv: which columns, or image files."""

    def __init__(self, name, table: Table, cols=None, fields=None, units="", frame_id="", camera=None):
        self.name, self.table, self.cols, self.fields = name, table, cols, fields
        self.units, self.frame_id, self.camera = units, frame_id, camera


def _columns(table: Table, stems: list[str]) -> list[int] | None:
    found = {_stem(c): j for j, c in enumerate(table.columns)}
    return [found[s] for s in stems] if all(s in found for s in stems) else None


def plan_streams(root: Path) -> list[_Stream]:
    """The streams a sequence gives, with default names."""
    mav = mav_folder(root)
    sensors = _sensors(mav)
    truth = next((s for name in TRUTH_FOLDERS for s in sensors if s.name == name), None)
    out: list[_Stream] = []
    for s in sensors:
        table = open_table(s / "data.csv", CSV_SETTINGS)
        if _is_camera(s):
            out.append(_Stream(s.name, table, frame_id=s.name, camera=s / "data"))
            continue
        imu = _columns(table, IMU_STEMS) if s.name.startswith("imu") else None
        if imu is not None:
            out.append(_Stream(s.name, table, imu, IMU_FIELDS, IMU_UNITS, s.name))
            continue
        groups = [(g, _columns(table, stems), fields, units) for g, stems, fields, units in GROUPS]
        groups = [g for g in groups if g[1] is not None]
        if s.name in TRUTH_FOLDERS and groups:
            prefix = "truth" if s == truth else s.name
            out += [_Stream(f"{prefix}/{g}", table, cols, tuple(fields), units, "world") for g, cols, fields, units in groups]
            continue
        tcol, _ = time_column(table, CSV_SETTINGS)
        cols = [j for j in range(len(table.columns)) if j != tcol]
        if cols:
            out.append(_Stream(s.name, table, cols, tuple(_stem(table.columns[j]) for j in cols), "", s.name))
    return out


@register_importer("euroc")
class EurocImporter(Importer):
    """EuRoC / ASL sequence folders; one episode per sequence."""

    summary = "EuRoC / ASL dataset folders (mav0/cam0/data.csv + data/*.png, imu0, ground truth)"
    priority = 20

    def detect(self, path: Path) -> bool:
        """A folder whose mav0 (or itself) holds sensor folders with data.csv, a camera or an IMU among them."""
        if not path.is_dir():
            return False
        sensors = _sensors(mav_folder(path))
        return any(_is_camera(s) or s.name.startswith("imu") for s in sensors)

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """Each stream with its sample count and mean rate."""
        rows = []
        for st in plan_streams(path):
            t = _times(st.table)
            rate = (len(t) - 1) * 1e9 / float(t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else float("nan")
            kind = f"images in {st.camera.relative_to(path)}" if st.camera else f"vector ({len(st.cols)} fields)"
            rows.append({"topic": st.name, "msgtype": kind, "count": len(t), "rate_hz": rate, "supported": True})
        return rows

    def import_(self, path: Path, session: ImportSession, job: ImportJob) -> None:
        """Import one sequence: frames read in blocks, CSV rows in blocks, into the episodes their times fall in."""
        planned = plan_streams(path)
        if not planned:
            raise SeqsenseError(f"'{path}': no sensor folder with a data.csv under {mav_folder(path)}.")
        names = stream_names([s.name for s in planned], job.mapping, f"'{path}'")
        planned = [s for s in planned if s.name in names]
        times = {s.name: _times(s.table) for s in planned}
        episodes = TimedEpisodes(session, list(times.values()), {"source": str(path), "format": "euroc"},
                                 {"file": str(path), "format": "euroc"})
        for st in planned:
            for out_name in names[st.name]:
                where = f"'{st.table.path}' stream '{out_name}'"
                if st.camera is not None:
                    files = [st.camera / f for f in _filenames(st.table)]
                    if not files:
                        continue
                    first = read_image(files[0], session.options.image_size, where)
                    blocks = image_blocks(files, session.options.image_size, where, session.options.progress, first,
                                          out_name)
                    episodes.add_stream(out_name, image_part(first), times[st.name], blocks,
                                        f"{st.camera.parent.name} in {path.name}", st.frame_id, where)
                else:
                    part = Part("", "vector", (len(st.cols),), st.units, tuple(st.fields))
                    episodes.add_stream(out_name, part, times[st.name], _vector_blocks(st.table, st.cols),
                                        f"{st.table.path.parent.name} in {path.name}", st.frame_id, where)
        episodes.close()


def _times(table: Table) -> np.ndarray:
    """The timestamps (ns) of a data.csv."""
    tcol, scale = time_column(table, CSV_SETTINGS)
    blocks = [table.times_ns(lines, rows, tcol, scale, 0) for lines, rows in table.blocks()]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def _filenames(table: Table) -> list[str]:
    """The filename column of a camera's data.csv."""
    if len(table.columns) < 2:
        raise SeqsenseError(f"'{table.path}': expected the columns '#timestamp [ns],filename'; got {table.columns}.")
    out = []
    for lines, rows in table.blocks():
        out.extend(table.cells(lines, rows, [1], len(out))[:, 0].tolist())
    return out


def _vector_blocks(table: Table, cols: list[int]):
    n = 0
    for lines, rows in table.blocks():
        x = table.numbers(lines, rows, cols, n).astype(np.float32)  # (N, D)
        yield n, x
        n += len(rows)
