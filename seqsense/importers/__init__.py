"""Importers: recorded logs (ROS 1/2 bags, MCAP, video + frame times, CSV, generic HDF5) -> seqsense logs.

`detect_format` names a source's format, `list_sources` describes what a source holds, and
`import_sources` converts one or more sources (one episode each, or split at time gaps) into one log,
atomically. Message-type converters live in `messages`, the shared writing machinery in `sink`, and
one module per source family (`rosbag`, `video_csv`, `csv_log`, `hdf5_generic`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from seqsense.errors import SeqsenseError
from seqsense.importers.mapping import Mapping, build_mapping, load_mapping, parse_map_arg
from seqsense.importers.messages import CONVERTERS, supported_types
from seqsense.importers.sink import ImportOptions, ImportSession

__all__ = [
    "CONVERTERS",
    "ImportOptions",
    "Mapping",
    "build_mapping",
    "detect_format",
    "import_sources",
    "list_sources",
    "load_mapping",
    "parse_map_arg",
    "supported_types",
]

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}
FAMILIES = {"rosbag1": "rosbag", "rosbag2": "rosbag", "mcap": "rosbag", "video": "video", "csv": "csv", "hdf5": "hdf5"}


def detect_format(path: str | Path) -> str:
    """One of rosbag1, rosbag2, mcap, video, csv, hdf5 (SeqsenseError naming the file otherwise)."""
    p = Path(path)
    if not p.exists():
        raise SeqsenseError(f"'{p}' does not exist.")
    if p.is_dir():
        if (p / "metadata.yaml").exists() or any(p.glob("*.db3")) or any(p.glob("*.mcap")):
            return "rosbag2"
        raise SeqsenseError(f"'{p}' is a folder but not a ROS 2 bag (no metadata.yaml, .db3 or .mcap inside).")
    suffix = p.suffix.lower()
    with open(p, "rb") as f:
        head = f.read(16)
    if suffix == ".bag" or head.startswith(b"#ROSBAG"):
        return "rosbag1"
    if suffix == ".mcap" or head.startswith(b"\x89MCAP"):
        return "mcap"
    if suffix == ".db3":
        return "rosbag2"
    if suffix in (".h5", ".hdf5", ".he5") or head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in (".csv", ".txt", ".tsv"):
        return "csv"
    raise SeqsenseError(
        f"'{p}': cannot tell the format from the name or content. Supported: ROS 1 .bag, ROS 2 bag folders "
        f"(.db3 / .mcap), .mcap, .h5/.hdf5, CSV, and videos ({', '.join(sorted(VIDEO_SUFFIXES))})."
    )


def _family(paths: list[Path]) -> tuple[str, list[str]]:
    fmts = [detect_format(p) for p in paths]
    families = {FAMILIES[f] for f in fmts}
    if len(families) > 1:
        raise SeqsenseError(
            f"the inputs mix formats ({', '.join(f'{p.name}: {f}' for p, f in zip(paths, fmts))}); "
            "import each kind into its own log."
        )
    return families.pop(), fmts


def list_sources(paths: list[str | Path], mapping: Mapping | None = None) -> list[dict]:
    """What each source holds: topics/arrays/columns with types, counts and rates."""
    from seqsense.importers import csv_log, hdf5_generic, rosbag, video_csv

    paths = [Path(p) for p in paths]
    family, fmts = _family(paths)
    mapping = mapping or Mapping()
    lister = {"rosbag": rosbag.list_topics, "hdf5": hdf5_generic.list_arrays,
              "csv": lambda p: csv_log.list_columns(p, mapping), "video": lambda p: video_csv.describe(p, mapping)}
    return [{"file": str(p), "format": f, "items": lister[family](p)} for p, f in zip(paths, fmts)]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def import_sources(paths: list[str | Path], out: str | Path, mapping: Mapping | None = None,
                   options: ImportOptions | None = None, notify: Callable[[str], None] = _stderr,
                   video_settings: dict | None = None) -> Path:
    """Convert `paths` into the seqsense log `out` (one episode per source, or split at gaps)."""
    from seqsense.importers import csv_log, hdf5_generic, rosbag, video_csv

    paths = [Path(p) for p in paths]
    if not paths:
        raise SeqsenseError("no input files given.")
    mapping = mapping or Mapping()
    options = options or ImportOptions()
    family, fmts = _family(paths)
    extra: dict = {}
    if family == "rosbag":
        topics: dict[str, str] = {}
        for p in paths:
            listing = rosbag.list_topics(p)
            if sum(e["count"] for e in listing) == 0:
                raise SeqsenseError(f"'{p}': the bag holds no messages (empty bag; topics: "
                                    f"{[e['topic'] for e in listing] or 'none'}).")
            for e in listing:
                if topics.setdefault(e["topic"], e["msgtype"]) != e["msgtype"]:
                    raise SeqsenseError(f"'{p}': topic '{e['topic']}' has type {e['msgtype']} here but "
                                        f"{topics[e['topic']]} in an earlier input; import them separately.")
        plan, skipped = rosbag.plan_topics(topics, mapping, options.image_size, notify)
        extra["skipped_topics"] = skipped
        import rosbags

        extra["rosbags_version"] = getattr(rosbags, "__version__", None) or _dist_version("rosbags")
    session = ImportSession(out, options, mapping.to_dict())
    try:
        for p, fmt in zip(paths, fmts):
            if family == "rosbag":
                rosbag.import_bag(p, plan, session, fmt)
            elif family == "hdf5":
                hdf5_generic.import_hdf5(p, mapping, session)
            elif family == "csv":
                csv_log.import_csv(p, mapping, session)
            else:
                video_csv.import_video(p, mapping, session, video_settings or {})
        for key, n in session.counts["dropped"].items():
            notify(f"not imported: {n} message(s) of {key} ({skipped_reason(extra, key)})")
        for key, n in session.counts["sorted"].items():
            notify(f"sorted by time: {n} sample(s) of {key} were out of order")
        for key, n in session.counts["stamp_fallback_receive"].items():
            notify(f"{n} message(s) of {key} had no header stamp: their receive time was used")
        return session.finish(f"seqsense.importers.{family}", extra)
    except BaseException:
        session.abort()
        raise


def skipped_reason(extra: dict, key: str) -> str:
    """Why the messages counted under `key` ('file:topic') were not imported."""
    topic = key.split(":", 1)[-1]
    return extra.get("skipped_topics", {}).get(topic, "not selected")


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
