"""Summaries and validation of seqsense logs (`seqsense inspect [--validate]`).

Validation reports every problem it finds with file, episode, stream and sample index, and reads
data in bounded blocks so that logs larger than memory can be checked.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np

from seqsense.log.format import (
    EPISODES_GROUP,
    FLOAT_KINDS,
    FORMAT_MAJOR,
    FORMAT_NAME,
    KIND_DTYPES,
    KIND_RANKS,
    NS_PER_S,
    REQUIRED_STREAM_ATTRS,
)
from seqsense.log.reader import find_stream_names

BLOCK_BYTES = 64 * 1024 * 1024
GAP_FACTOR = 10.0  # a gap longer than this many nominal periods is reported (as a warning)
MAX_INDICES = 5  # indices quoted per problem before "and N more"


@dataclasses.dataclass
class Problem:
    """One problem found in a log, located as precisely as possible."""

    file: str
    message: str
    episode: str | None = None
    stream: str | None = None
    index: int | None = None
    severity: str = "error"  # "error" fails validation; "warning" is reported only

    def __str__(self) -> str:
        where = f"Log '{self.file}'"
        if self.episode is not None:
            where += f" episode '{self.episode}'"
        if self.stream is not None:
            where += f" stream '{self.stream}'"
        if self.index is not None:
            where += f" index {self.index}"
        return f"{self.severity}: {where}: {self.message}"


def _indices_text(idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:MAX_INDICES])
    return shown + (f" and {len(idx) - MAX_INDICES} more" if len(idx) > MAX_INDICES else "")


def _stream_summary(g: h5py.Group, name: str) -> dict:
    t = g["t"][()] if "t" in g else np.zeros(0, np.int64)
    data = g.get("data")
    n = int(len(t))
    dt = np.diff(t) / NS_PER_S if n > 1 else np.zeros(0)
    return {
        "stream": name,
        "kind": str(g.attrs.get("kind", "?")),
        "samples": n,
        "duration_s": float((t[-1] - t[0]) / NS_PER_S) if n > 1 else 0.0,
        "median_rate_hz": float(1.0 / np.median(dt)) if len(dt) and np.median(dt) > 0 else None,
        "nominal_rate_hz": float(g.attrs.get("rate_hz", float("nan"))),
        "largest_gap_s": float(dt.max()) if len(dt) else None,
        "dtype": str(data.dtype) if data is not None else None,
        "shape": list(data.shape[1:]) if data is not None else None,
        "units": str(g.attrs.get("units", "")),
    }


def summarize(path: str | Path) -> dict:
    """Per-episode, per-stream summary of one log (raises LogFormatError on unreadable files)."""
    from seqsense.log.reader import open_log

    log = open_log(path)
    f = log.file
    out = {
        "file": str(path),
        "format_version": log.format_version,
        "writer": log.writer,
        "provenance": log.provenance,
        "episodes": [],
    }
    for ep_name in log.episode_names:
        g = f[EPISODES_GROUP][ep_name]
        streams = [_stream_summary(g[s], s) for s in find_stream_names(g)]
        out["episodes"].append({"episode": ep_name, "streams": streams})
    log.close()
    return out


def validate(path: str | Path) -> list[Problem]:
    """Every problem found in the log at `path` (an empty list means it is valid)."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        return [Problem(name, "file does not exist.")]
    if path.is_dir():
        from seqsense.log.reader import directory_message

        return [Problem(name, directory_message(path))]
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return [Problem(name, f"not a readable HDF5 file ({e}); is it truncated?")]
    with f:
        problems: list[Problem] = []
        if f.attrs.get("format") != FORMAT_NAME:
            problems.append(Problem(name, f"missing attribute format='{FORMAT_NAME}': not a seqsense log."))
        version = f.attrs.get("format_version")
        if version is None:
            problems.append(Problem(name, "missing attribute 'format_version'."))
        elif str(version).split(".")[0] != str(FORMAT_MAJOR):
            problems.append(
                Problem(name, f"unknown format version {str(version)!r}; this seqsense reads {FORMAT_MAJOR}.x.")
            )
            return problems  # don't guess at the layout of another major version
        for attr in ("writer", "provenance"):
            if attr not in f.attrs:
                problems.append(Problem(name, f"missing file attribute {attr!r}."))
        if EPISODES_GROUP not in f:
            problems.append(Problem(name, f"missing group '/{EPISODES_GROUP}'."))
            return problems
        episodes = f[EPISODES_GROUP]
        if len(episodes) == 0:
            problems.append(Problem(name, "the log has no episodes."))
        for ep_name in sorted(episodes):
            g = episodes[ep_name]
            streams = find_stream_names(g)
            if not streams:
                problems.append(Problem(name, "episode has no streams.", episode=ep_name))
            for s in streams:
                problems.extend(_validate_stream(name, ep_name, s, g[s]))
        return problems


def _validate_stream(file: str, ep: str, name: str, g: h5py.Group) -> list[Problem]:
    def problem(msg, index=None, severity="error"):
        return Problem(file, msg, episode=ep, stream=name, index=index, severity=severity)

    out: list[Problem] = []
    kind = str(g.attrs.get("kind"))
    for attr in REQUIRED_STREAM_ATTRS:
        if attr not in g.attrs:
            out.append(problem(f"missing attribute {attr!r}."))
    if kind not in KIND_DTYPES:
        out.append(problem(f"unknown kind {kind!r}; valid kinds: {sorted(KIND_DTYPES)}."))
        return out
    if "t" not in g or "data" not in g:
        missing = [d for d in ("t", "data") if d not in g]
        out.append(problem(f"missing dataset(s) {missing}."))
        return out
    t_ds, x_ds = g["t"], g["data"]
    if t_ds.ndim != 1 or t_ds.dtype != np.int64:
        out.append(problem(f"'t' must be 1-D int64 nanoseconds, found {t_ds.dtype} with shape {t_ds.shape}."))
        return out
    if x_ds.shape[0] != t_ds.shape[0]:
        out.append(problem(f"'t' has {t_ds.shape[0]} samples but 'data' has {x_ds.shape[0]}: shape mismatch."))
    if x_ds.ndim - 1 != KIND_RANKS[kind]:
        out.append(problem(f"a {kind} stream stores samples of rank {KIND_RANKS[kind]}, found shape {x_ds.shape[1:]}."))
    expected = KIND_DTYPES[kind]
    ok_dtype = x_ds.dtype == expected or (kind in FLOAT_KINDS and x_ds.dtype == np.float64)
    if not ok_dtype:
        out.append(problem(f"a {kind} stream stores {expected}, found dtype {x_ds.dtype}."))
    if kind == "vector":
        fields = g.attrs.get("fields")
        if fields is None:
            out.append(problem("missing attribute 'fields' (one name per vector component)."))
        else:
            try:
                n_fields = len(json.loads(fields))
            except (TypeError, ValueError):
                n_fields = -1
            if x_ds.ndim == 2 and n_fields != x_ds.shape[1]:
                out.append(problem(f"'fields' names {n_fields} components but samples have {x_ds.shape[1]}."))
    n = t_ds.shape[0]
    if n == 0:
        out.append(problem("empty stream (no samples)."))
        return out
    t = t_ds[()]
    back = np.flatnonzero(np.diff(t) < 0) + 1
    if len(back):
        i = int(back[0])
        out.append(
            problem(
                f"timestamps go backwards at {len(back)} place(s), first at index {i} "
                f"(t={t[i] / NS_PER_S:.6f} s after t={t[i - 1] / NS_PER_S:.6f} s); indices: {_indices_text(back)}. "
                "Re-record, or import with --sort-time.",
                index=i,
            )
        )
    rate = float(g.attrs.get("rate_hz", float("nan")))
    if np.isfinite(rate) and rate > 0 and n > 1:
        gaps = np.flatnonzero(np.diff(t) > GAP_FACTOR * NS_PER_S / rate) + 1
        if len(gaps):
            i = int(gaps[0])
            out.append(
                problem(
                    f"{len(gaps)} gap(s) longer than {GAP_FACTOR:g} nominal periods ({rate:g} Hz), first before "
                    f"index {i} ({(t[i] - t[i - 1]) / NS_PER_S:.3f} s); indices: {_indices_text(gaps)}.",
                    index=i,
                    severity="warning",
                )
            )
    if np.issubdtype(x_ds.dtype, np.floating) and not bool(g.attrs.get("allow_nan", False)):
        bad = _nonfinite_indices(x_ds)
        if len(bad):
            out.append(
                problem(
                    f"{len(bad)} sample(s) hold NaN or Inf; indices: {_indices_text(bad)}. "
                    "Fix the source, or mark the stream allow_nan=True if missing values are intended.",
                    index=int(bad[0]),
                )
            )
    return out


def _nonfinite_indices(ds: h5py.Dataset) -> np.ndarray:
    sample_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    block = max(1, BLOCK_BYTES // sample_bytes)
    found = []
    for i0 in range(0, ds.shape[0], block):
        x = ds[i0 : i0 + block]
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        found.append(np.flatnonzero(bad) + i0)
    return np.concatenate(found) if found else np.zeros(0, np.int64)
