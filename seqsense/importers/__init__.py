"""Importers: recorded logs (ROS 1/2 bags, MCAP, PX4 ULog, image-sequence datasets, video + frame
times, tables, generic HDF5) -> seqsense logs.

Every format is one module with an `Importer` registered by name (`seqsense.importers.base`);
`detect_format` names a source's format, `list_sources` describes what a source holds, and
`import_sources` converts one or more sources of one family (one episode each, or split by time)
into one log, atomically. Message-type converters live in `messages`, the shared writing machinery
in `sink`, table reading in `tables`, image files and annotations in `frames`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

# One import line per format registers its importer.
from seqsense.importers import csv_log, euroc, hdf5_generic, image_folder, rosbag, tum_rgbd, ulog, video_csv  # noqa: F401
from seqsense.derive import derive_episode
from seqsense.errors import SeqsenseError
from seqsense.importers.base import IMPORTERS, ImportJob, Importer, detect_format, get_importer, register_importer
from seqsense.importers.mapping import Mapping, build_mapping, load_mapping, parse_map_arg
from seqsense.importers.messages import CONVERTERS, supported_types
from seqsense.importers.sink import ImportOptions, ImportSession

__all__ = [
    "CONVERTERS",
    "IMPORTERS",
    "ImportJob",
    "ImportOptions",
    "Importer",
    "Mapping",
    "build_mapping",
    "detect_format",
    "get_importer",
    "import_sources",
    "list_sources",
    "load_mapping",
    "parse_map_arg",
    "register_importer",
    "supported_types",
]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def _importer_for(paths: list[Path], forced: str | None) -> tuple[Importer, list[str]]:
    """The importer shared by all inputs (they must be of one family) and each input's format."""
    fmts = [detect_format(p, forced) for p in paths]
    families = {IMPORTERS[f].family for f in fmts}
    if len(families) > 1:
        raise SeqsenseError(
            f"the inputs mix formats ({', '.join(f'{p.name}: {f}' for p, f in zip(paths, fmts))}); "
            "import each kind into its own log."
        )
    return IMPORTERS[fmts[0]], fmts


def list_sources(paths: list[str | Path], mapping: Mapping | None = None, settings: dict | None = None,
                 format: str | None = None) -> list[dict]:
    """What each source holds: topics/streams/columns with types, counts and rates."""
    paths = [Path(p) for p in paths]
    job = ImportJob.build(mapping, settings, _stderr)
    out = []
    for p in paths:
        fmt = detect_format(p, format)
        out.append({"file": str(p), "format": fmt, "items": IMPORTERS[fmt].list(p, job)})
    return out


def import_sources(paths: list[str | Path], out: str | Path, mapping: Mapping | None = None,
                   options: ImportOptions | None = None, notify: Callable[[str], None] = _stderr,
                   settings: dict | None = None, format: str | None = None) -> Path:
    """Convert `paths` into the seqsense log `out` (one episode per source, or split by time).

    `settings` are per-format choices (fps, frame_times, delimiter, header_rows, time_column,
    time_unit, annotations) over the mapping's; `format` names the format instead of detecting it.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise SeqsenseError("no input files given.")
    mapping = mapping or Mapping()
    options = options or ImportOptions()
    importer, fmts = _importer_for(paths, format)
    job = ImportJob.build(mapping, settings, notify, options)
    importer.prepare(paths, job)
    session = ImportSession(out, options, mapping.to_dict())
    try:
        for p, fmt in zip(paths, fmts):
            IMPORTERS[fmt].import_(p, session, job)
        for key, n in session.counts["dropped"].items():
            notify(f"not imported: {n} message(s) of {key} ({skipped_reason(job.provenance, key)})")
        for key, n in session.counts["sorted"].items():
            notify(f"sorted by time: {n} sample(s) of {key} were out of order")
        for key, n in session.counts["stamp_fallback_receive"].items():
            notify(f"{n} message(s) of {key} had no header stamp: their receive time was used")
        for key, n in session.counts["dropped_nonfinite"].items():
            gone = " (all of them: the stream is left out)" if key in session.emptied else ""
            notify(f"dropped {n} sample(s) of stream '{key}' holding NaN or Inf (readings the source marks as "
                   f"missing){gone}; only truth/ streams and streams a mapping marks \"allow_nan\": true keep them")
        for ep in session.writer.episodes.values():  # the mapping's derived streams, from what each episode holds
            ep.flush()
            src = [s.get("file") or s.get("path") or s.get("source") for s in session.sources if s.get("episode") == ep.name]
            where = f"'{src[0]}' episode '{ep.name}'" if src and src[0] else f"'{out}' episode '{ep.name}'"
            derive_episode(ep, ep.group, mapping.derive, where)
        return session.finish(f"seqsense.importers.{importer.family}", job.provenance)
    except BaseException:
        session.abort()
        raise


def skipped_reason(extra: dict, key: str) -> str:
    """Why the messages counted under `key` ('file:topic') were not imported."""
    topic = key.split(":", 1)[-1]
    return extra.get("skipped_topics", {}).get(topic, "not selected")
