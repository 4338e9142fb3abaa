"""A video file plus a CSV of frame timestamps (or a fixed frame rate) -> one image stream.

Frame times come from, in order: `--frame-times CSV`, the mapping's `frame_times`, a CSV beside the
video named `<stem>.csv`, `<stem>_timestamps.csv` or `<stem>.timestamps.csv`; or a fixed rate from
`--fps` / the mapping's `fps`. The CSV's time column and unit follow the rules of CSV sensor logs
(`t_ns`, `time_s`, ... or `time_column` + `time_unit`). Frames are decoded with OpenCV and stored as
RGB uint8 (H, W, 3); the stream is called `camera` unless a mapping entry names it. The number of
frames and of timestamps must agree: nothing is dropped or padded silently.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.base import ImportJob, Importer, register_importer
from seqsense.importers.messages import Part
from seqsense.importers.sink import ImportSession, StreamSink
from seqsense.importers.tables import open_table, time_column
from seqsense.log.format import seconds_to_ns

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}


def _frame_times_path(video: Path, settings: dict) -> Path | None:
    given = settings.get("frame_times")
    if given:
        p = Path(given)
        return p if p.is_absolute() or p.exists() else video.parent / p
    for name in (f"{video.stem}.csv", f"{video.stem}_timestamps.csv", f"{video.stem}.timestamps.csv"):
        if (video.parent / name).exists():
            return video.parent / name
    return None


def _open(video: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SeqsenseError(f"'{video}': OpenCV cannot open this video (unknown codec or damaged file).")
    return cap


def describe(video: Path, settings: dict) -> list[dict]:
    """The video's frame count, size and rate, and where its frame times come from."""
    cap = _open(video)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    cap.release()
    times = _frame_times_path(video, settings)
    return [{"topic": "frames", "msgtype": f"video {size}, times from {times or 'fixed fps'}", "count": n,
             "rate_hz": fps, "supported": True}]


def frame_times_ns(video: Path, settings: dict) -> np.ndarray | None:
    """Frame timestamps in ns from the frame-time CSV, or None when a fixed rate is to be used."""
    path = _frame_times_path(video, settings)
    if path is None:
        return None
    if not path.exists():
        raise SeqsenseError(f"'{video}': frame-time file '{path}' does not exist.")
    settings = {k: v for k, v in settings.items() if k not in ("delimiter", "header_rows", "column_names")}
    table = open_table(path, settings)
    if "time_column" not in settings and len(table.columns) == 1:
        settings = {**settings, "time_column": table.columns[0]}
    tcol, scale = time_column(table, settings)
    blocks = [table.times_ns(lines, rows, tcol, scale, 0) for lines, rows in table.blocks()]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


@register_importer("video")
class VideoImporter(Importer):
    """Video files with a CSV of frame times or a fixed rate; one episode per video."""

    summary = f"videos ({', '.join(sorted(VIDEO_SUFFIXES))}) with a frame-time CSV or --fps"

    def detect(self, path: Path) -> bool:
        """A file with a video suffix."""
        return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """The video's frame count, size and rate."""
        return describe(path, job.settings)

    def import_(self, path: Path, session: ImportSession, job: ImportJob) -> None:
        """Import one video as one episode."""
        import_video(path, session, job)


def import_video(video: Path, session: ImportSession, job: ImportJob) -> None:
    """Import one video as one episode with an image stream."""
    from tqdm import tqdm

    mapping = job.mapping
    if session.options.episode != "per-file":
        raise SeqsenseError(f"'{video}': --episode {session.options.episode} does not apply to videos: "
                            "HDF5 and video inputs give one episode per file.")
    settings = job.settings
    t = frame_times_ns(video, settings)
    cap = _open(video)
    n_meta = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if t is None:
        fps = settings.get("fps")
        if not fps:
            cap.release()
            raise SeqsenseError(f"'{video}': no frame-time CSV found (tried <stem>.csv, <stem>_timestamps.csv) "
                                "and no --fps given; pass --frame-times FILE.csv or --fps RATE.")
    entry = next((e for e in mapping.streams if "stream" in e and not e.get("fields")), {"stream": "camera"})
    name = entry["stream"]
    session.sources.append({"file": str(video), "format": "video", "frame_times": str(_frame_times_path(video, settings))
                            if t is not None else None, "fps": settings.get("fps")})
    ep = session.new_episode({"source": str(video), "format": "video"})
    session.sources[-1]["episode"] = ep.name
    size = session.options.image_size
    sink = None
    i = 0
    bar = tqdm(total=n_meta or None, unit="frame", desc=video.name, disable=not session.options.progress,
               file=sys.stderr, leave=False)
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if t is not None and i >= len(t):
                raise SeqsenseError(f"'{video}': the video has more frames than the {len(t)} timestamps "
                                    "in its frame-time CSV; they must match one to one.")
            img = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if size is not None:
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            if sink is None:
                sink = StreamSink(session, ep, name, Part("", "image", img.shape, "intensity 0-255"),
                                  f"{video.name}", entry.get("frame_id", ""), f"'{video}' stream '{name}'")
            ti = int(t[i]) if t is not None else int(seconds_to_ns(i / float(settings["fps"])))
            sink.add(ti, img, i)
            i += 1
            bar.update(1)
    finally:
        bar.close()
        cap.release()
    if sink is None:
        raise SeqsenseError(f"'{video}': no frame could be decoded.")
    if t is not None and i != len(t):
        raise SeqsenseError(f"'{video}': decoded {i} frames but the frame-time CSV has {len(t)} timestamps; "
                            "they must match one to one.")
    session.close_episode([sink])
