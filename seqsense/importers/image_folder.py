"""A folder of image files with frame times or a fixed rate, and optional box annotations -> streams.

The frames are the image files of the folder, or of its `img/` (OTB), `color/` (VOT) or `images/`
subfolder, in natural order (`2.png` before `10.png`). Their times come from, in order:
`--frame-times FILE` (or `frame_times` in the mapping), `--fps RATE` (`fps`), or a file in the folder
named `times.txt`, `timestamps.txt`, `frame_times.txt`, `times.csv`, `timestamps.csv` or
`frame_times.csv`. A frame-time file is a table (see `seqsense.importers.tables`) with one time per
frame in order, or `time filename` rows naming the frames (as TUM's rgb.txt); its unit comes from the
column name (`t_ns`, `time [s]`) or `--time-unit`. Without times and without `--fps` the import
stops: times are never invented. Annotations, from `--annotations FILE` or `groundtruth_rect.txt`
(OTB) / `groundtruth.txt` (VOT) in the folder, give `truth/box_center` and `truth/box_size`
(see `seqsense.importers.frames`). The image stream is called `camera` (`--map camera=NAME`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.base import ImportJob, Importer, register_importer
from seqsense.importers.frames import (
    box_parts,
    image_blocks,
    image_files,
    image_part,
    parse_boxes,
    read_image,
    stream_names,
)
from seqsense.importers.sink import ImportSession, TimedEpisodes
from seqsense.importers.tables import TIME_UNITS, open_table, time_column
from seqsense.log.format import seconds_to_ns

SUBFOLDERS = ("img", "color", "images", "frames")
TIME_FILES = ("times.txt", "timestamps.txt", "frame_times.txt", "times.csv", "timestamps.csv", "frame_times.csv")
BOX_FILES = ("groundtruth_rect.txt", "groundtruth.txt")
TABLE_KEYS = ("delimiter", "header_rows", "time_column", "time_unit", "column_names")


def frames_folder(path: Path) -> Path | None:
    """The folder holding the frames: `path` itself or its img/ color/ images/ frames/ subfolder."""
    for folder in (path, *(path / s for s in SUBFOLDERS)):
        if image_files(folder):
            return folder
    return None


def _given(path: Path, value) -> Path:
    p = Path(value)
    return p if p.is_absolute() or p.exists() else path / p


def _found(path: Path, frames: Path, names: tuple) -> Path | None:
    return next((d / n for n in names for d in (path, frames) if (d / n).is_file()), None)


def frame_times(path: Path, frames: Path, files: list[Path], settings: dict,
                required: bool = True) -> tuple[np.ndarray | None, list[Path], str]:
    """(times in ns, frame files, where the times came from); without any, SeqsenseError (or None
    times when not `required`)."""
    given = settings.get("frame_times")
    fps = settings.get("fps")
    tfile = _given(path, given) if given else None
    if tfile is None and fps is None:
        tfile = _found(path, frames, TIME_FILES)
    if tfile is None:
        if fps is None and not required:
            return None, files, "none (pass --fps or --frame-times)"
        if fps is None:
            raise SeqsenseError(f"'{path}': {len(files)} frames but no frame times: no {' / '.join(TIME_FILES)} in the "
                                "folder and no --fps. Pass --frame-times FILE, or --fps RATE if the frames were "
                                "taken at a fixed rate.")
        if not float(fps) > 0:
            raise SeqsenseError(f"--fps must be positive, got {fps!r}.")
        return seconds_to_ns(np.arange(len(files)) / float(fps)), files, f"fixed rate {float(fps):g} Hz"
    if not tfile.is_file():
        raise SeqsenseError(f"'{path}': frame-time file '{tfile}' does not exist.")
    table = open_table(tfile, {k: settings[k] for k in TABLE_KEYS if settings.get(k) is not None})
    first = table.first_row()
    text = [j for j, c in enumerate(first) if not _number(c)]
    if table.columns:
        tsettings = dict(settings)
        if settings.get("time_column") is None and len(table.columns) - len(text) == 1:
            tsettings["time_column"] = next(c for j, c in enumerate(table.columns) if j not in text)
        tcol, scale = time_column(table, tsettings)
    else:
        tcol = next((j for j in range(len(first)) if j not in text), None)
        unit = settings.get("time_unit")
        if tcol is None or unit not in TIME_UNITS:
            raise SeqsenseError(f"'{tfile}': the frame times have no header naming their unit; pass --time-unit "
                                f"(one of {list(TIME_UNITS)}) or add a header such as 't_ns' or 'time [s]'.")
        scale = TIME_UNITS[unit]
    t, names, n = [], [], 0
    for lines, rows in table.blocks():
        t.append(table.times_ns(lines, rows, tcol, scale, n))
        if text:
            names.extend(table.cells(lines, rows, [text[0]], n)[:, 0].tolist())
        n += len(rows)
    t = np.concatenate(t) if t else np.zeros(0, np.int64)
    if text:  # `time filename` rows: the listed files, in the file's order
        files = [tfile.parent / f if (tfile.parent / f).exists() else frames / f for f in names]
    elif len(t) != len(files):
        raise SeqsenseError(f"'{tfile}': {len(t)} frame times for {len(files)} image files in '{frames}'; they "
                            "must match one to one.")
    return t, files, str(tfile)


def _number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


@register_importer("images")
class ImageFolderImporter(Importer):
    """A folder of frames; one episode per folder (or several with --episode every=S / gap=S)."""

    summary = "a folder of images (or its img/ color/ subfolder) with a frame-time file or --fps, OTB/VOT boxes"
    priority = 80  # the fallback for folders

    def detect(self, path: Path) -> bool:
        """A folder holding image files, directly or in img/ color/ images/ frames/."""
        return path.is_dir() and frames_folder(path) is not None

    def _source(self, path: Path, settings: dict, required: bool = True):
        frames = frames_folder(path)
        if frames is None:
            raise SeqsenseError(f"'{path}': no image files in the folder or in {', '.join(s + '/' for s in SUBFOLDERS)}.")
        t, files, origin = frame_times(path, frames, image_files(frames), settings, required)
        boxes = _given(path, settings["annotations"]) if settings.get("annotations") else _found(path, frames, BOX_FILES)
        if boxes is not None and not boxes.is_file():
            raise SeqsenseError(f"'{path}': annotation file '{boxes}' does not exist.")
        return frames, t, files, origin, boxes

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """The frames (count, size, rate) and the annotation streams."""
        frames, t, files, origin, boxes = self._source(path, job.settings, required=False)
        first = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED) if files else None
        shape = "x".join(map(str, first.shape[1::-1] + first.shape[2:])) if first is not None else "?"
        rate = (len(t) - 1) * 1e9 / float(t[-1] - t[0]) if t is not None and len(t) > 1 and t[-1] > t[0] else float("nan")
        times = Path(origin).name if Path(origin).is_file() else origin
        rows = [{"topic": "camera", "msgtype": f"images {shape} in {frames.name}/, times: {times}",
                 "count": len(files), "rate_hz": rate, "supported": True}]
        if boxes is not None:
            rows += [{"topic": name, "msgtype": f"boxes from {boxes.name}", "count": len(files), "rate_hz": rate,
                      "supported": True} for name in ("truth/box_center", "truth/box_size")]
        return rows

    def import_(self, path: Path, session: ImportSession, job: ImportJob) -> None:
        """Import one folder of frames (and its boxes)."""
        frames, t, files, origin, boxes = self._source(path, job.settings)
        defaults = ["camera"] + (["truth/box_center", "truth/box_size"] if boxes is not None else [])
        names = stream_names(defaults, job.mapping, f"'{path}'")
        size = session.options.image_size
        where = f"'{frames}' stream 'camera'"
        raw = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
        if raw is None:
            read_image(files[0], None, where)  # raises the located error
        first = read_image(files[0], size, where)
        episodes = TimedEpisodes(session, [t], {"source": str(path), "format": "images", "frame_times": origin,
                                                "annotations": str(boxes) if boxes else None},
                                 {"file": str(path), "format": "images"})
        for out_name in names.get("camera", []):
            episodes.add_stream(out_name, image_part(first), t, image_blocks(files, size, where,
                                                                               session.options.progress, first, out_name),
                                f"{frames.name}/ in {path.name}", "camera", where)
        if boxes is not None:
            center, box_size = parse_boxes(boxes, len(files), raw.shape[1], raw.shape[0])
            for default, values, part in zip(defaults[1:], (center, box_size), box_parts(center, raw.shape[1::-1])):
                for out_name in names.get(default, []):
                    episodes.add_stream(out_name, part, t, [(0, values)], f"{boxes.name} in {path.name}", "image",
                                        f"'{boxes}' stream '{out_name}'")
        episodes.close()
