"""Arrays in a generic HDF5 file (e.g. public IMU benchmarks such as BROAD) -> streams.

Samples are uniformly spaced: the rate comes from a file attribute (`rate_attr`, default
`sampling_rate`) or the mapping's `rate_hz`; alternatively `time_array` names an array of timestamps
(unit `time_unit`). Each mapping entry concatenates `arrays` (first axis = samples) into one stream:

    {"format": "hdf5", "rate_attr": "sampling_rate",
     "streams": [{"stream": "imu", "arrays": ["imu_acc", "imu_gyr"], "field_names": [...], "units": "..."},
                 {"stream": "truth/orientation", "arrays": ["opt_quat"], "allow_nan": true}]}

Without entries, every array whose first axis has the sample count becomes a stream of its name.
Data is copied in blocks, so files larger than memory import fine. A file is one episode, or pieces
of S seconds from the first sample with `--episode every=S` (a new one after each gap longer than S
seconds with `gap=S`, which only a `time_array` can hold); the split is `TimedEpisodes`', shared with
the other array-like sources. The mapping's `"derive"` streams (`seqsense.derive`) are computed on
each finished episode.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.base import ImportJob, Importer, read_head, register_importer
from seqsense.importers.mapping import Mapping
from seqsense.importers.messages import Part
from seqsense.importers.sink import ImportSession, TimedEpisodes
from seqsense.log.format import seconds_to_ns

BLOCK_ROWS = 65536
TIME_UNITS = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise SeqsenseError(f"'{path}': not a readable HDF5 file ({e}).") from e


def _arrays(group: h5py.Group) -> dict[str, h5py.Dataset]:
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@register_importer("hdf5")
class HDF5Importer(Importer):
    """Arrays of a generic HDF5 file with a sampling rate or a time array; one episode per file, or
    several with --episode every=S / gap=S."""

    summary = "arrays in a generic HDF5 file (.h5 .hdf5) with a sampling rate or a time array"

    def detect(self, path: Path) -> bool:
        """An HDF5 suffix or the HDF5 signature."""
        return path.is_file() and (path.suffix.lower() in (".h5", ".hdf5", ".he5")
                                   or read_head(path, 8) == HDF5_MAGIC)

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """Every array with its shape and dtype."""
        return list_arrays(path)

    def import_(self, path: Path, session: ImportSession, job: ImportJob) -> None:
        """Import the mapped arrays as one episode (or several with --episode every=S / gap=S)."""
        import_hdf5(path, job.mapping, session)


def list_arrays(path: Path) -> list[dict]:
    """Name, shape, dtype and the file's sampling-rate attribute for every array."""
    with _open(path) as f:
        rate = f.attrs.get("sampling_rate")
        return [{"topic": name, "msgtype": f"{ds.dtype} {ds.shape}", "count": int(ds.shape[0]) if ds.ndim else 1,
                 "rate_hz": float(rate) if rate is not None else float("nan"), "supported": ds.ndim >= 1}
                for name, ds in _arrays(f).items()]


def _time_ns(f: h5py.File, path: Path, settings: dict, n: int) -> np.ndarray:
    if settings.get("time_array"):
        name = settings["time_array"]
        if name not in f:
            raise SeqsenseError(f"'{path}': time_array {name!r} not found; arrays: {sorted(_arrays(f))}.")
        unit = settings.get("time_unit", "s")
        if unit not in TIME_UNITS:
            raise SeqsenseError(f"'{path}': time_unit {unit!r} is not one of {list(TIME_UNITS)}.")
        return np.round(f[name][()].astype(np.float64) * TIME_UNITS[unit]).astype(np.int64)
    if settings.get("rate_hz") is not None:
        rate = float(settings["rate_hz"])
    else:
        attr = settings.get("rate_attr", "sampling_rate")
        if attr not in f.attrs:
            raise SeqsenseError(
                f"'{path}': no sampling-rate attribute {attr!r} (attributes: {sorted(f.attrs)}). "
                "Name it with \"rate_attr\", or give \"rate_hz\" or \"time_array\" in the mapping file."
            )
        rate = float(np.asarray(f.attrs[attr]).ravel()[0])
    if not rate > 0:
        raise SeqsenseError(f"'{path}': sampling rate {rate!r} Hz is not positive.")
    return seconds_to_ns(np.arange(n) / rate)


def _entries(f: h5py.File, path: Path, mapping: Mapping) -> list[dict]:
    arrays = _arrays(f)
    entries = [e for e in mapping.streams if e.get("arrays")]
    if not entries:
        n = max((ds.shape[0] for ds in arrays.values() if ds.ndim >= 1), default=0)
        entries = [{"stream": name, "arrays": [name]} for name, ds in arrays.items()
                   if ds.ndim in (1, 2) and ds.shape[0] == n and ds.dtype.kind in "biuf"]
    for e in entries:
        missing = [a for a in e["arrays"] if a not in arrays]
        if missing:
            raise SeqsenseError(f"'{path}': mapping stream '{e['stream']}' names array(s) {missing}, "
                                f"not in the file; arrays: {sorted(arrays)}.")
    return entries


def _part(f: h5py.File, path: Path, e: dict) -> Part:
    dsets = [f[a] for a in e["arrays"]]
    n = dsets[0].shape[0]
    if any(d.shape[0] != n or d.ndim > 2 for d in dsets):
        raise SeqsenseError(f"'{path}': stream '{e['stream']}' joins arrays of shapes {[d.shape for d in dsets]}; "
                            "they need the same sample count and at most 2 dimensions.")
    width = sum(1 if d.ndim == 1 else d.shape[1] for d in dsets)
    discrete = all(d.dtype.kind in "biu" for d in dsets)
    kind = e.get("kind") or ("label" if discrete and width == 1 else "scalar" if width == 1 and len(dsets) == 1
                             and dsets[0].ndim == 1 else "vector")
    if kind == "vector":
        names = e.get("field_names") or [f"{a}[{i}]" if d.ndim == 2 else a for a, d in zip(e["arrays"], dsets)
                                         for i in range(1 if d.ndim == 1 else d.shape[1])]
        if len(names) != width:
            raise SeqsenseError(f"'{path}': stream '{e['stream']}' has {width} components but "
                                f"{len(names)} field_names {names}.")
        return Part("", kind, (width,), e.get("units", ""), tuple(names), bool(e.get("allow_nan", False)))
    if width != 1:
        raise SeqsenseError(f"'{path}': stream '{e['stream']}' of kind {kind} needs one column, got {width}.")
    return Part("", kind, (), e.get("units", ""), None, bool(e.get("allow_nan", False)))


def import_hdf5(path: Path, mapping: Mapping, session: ImportSession) -> None:
    """Import the mapped arrays of one HDF5 file as one episode, or pieces by --episode, then derive."""
    with _open(path) as f:
        entries = _entries(f, path, mapping)
        if not entries:
            raise SeqsenseError(f"'{path}': no arrays to import (empty file or no numeric arrays).")
        n = f[entries[0]["arrays"][0]].shape[0]
        t = _time_ns(f, path, mapping.settings, n)
        parts = []
        for e in entries:
            parts.append(_part(f, path, e))
            if f[e["arrays"][0]].shape[0] != len(t):
                raise SeqsenseError(f"'{path}': stream '{e['stream']}' has {f[e['arrays'][0]].shape[0]} samples "
                                    f"but the time base has {len(t)}.")
        episodes = TimedEpisodes(session, [t], {"source": str(path), "format": "hdf5",
                                                "info": str(f.attrs.get("info", ""))[:2000]},
                                 {"file": str(path), "format": "hdf5"})
        for e, part in zip(entries, parts):
            episodes.add_stream(e["stream"], part, t, _blocks(f, e, part), f"{','.join(e['arrays'])} in {path.name}",
                                e.get("frame_id", ""), f"'{path}' stream '{e['stream']}'")
        episodes.close()


def _blocks(f: h5py.File, e: dict, part: Part):
    """(first row, (N, D) or (N,) block) of one entry's arrays, BLOCK_ROWS rows at a time."""
    n = f[e["arrays"][0]].shape[0]
    for i0 in range(0, n, BLOCK_ROWS):
        cols = [np.asarray(f[a][i0 : i0 + BLOCK_ROWS]) for a in e["arrays"]]
        block = np.concatenate([c.reshape(len(c), -1) for c in cols], axis=1)  # (N, D)
        yield i0, (block if part.kind == "vector" else block[:, 0])
