"""Streaming, atomic writer for seqsense logs.

A `LogWriter` writes into a hidden temporary file beside the destination and renames it over the
destination only when `close()` succeeds, so a crash, an exception or a SIGKILL never leaves a
half-written log at the destination (and never touches a previous file there). Samples are buffered
per stream and appended to resizable, chunked datasets in blocks, so memory stays bounded however
long the log is.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from seqsense import __version__
from seqsense.errors import SeqsenseError
from seqsense.fileio import to_json
from seqsense.log.format import (
    EPISODES_GROUP,
    FORMAT_NAME,
    FORMAT_VERSION,
    KIND_DTYPES,
    KIND_RANKS,
)

DEFAULT_IMAGE_CHUNK = 4  # frames per chunk; see BENCHMARKS.md ("log chunk shape")
VECTOR_CHUNK_BYTES = 64 * 1024
BUFFER_BYTES = 4 * 1024 * 1024  # per-stream append buffer before a block is written


def _json_attr(value: Any) -> str:
    """Strict JSON text of an attribute (NaN/inf as null, see `seqsense.fileio`), keys sorted."""
    return to_json(value, indent=None, sort_keys=True)


class StreamWriter:
    """Appends timestamped samples of one stream; owns its `t` and `data` datasets."""

    def __init__(self, group: h5py.Group, name: str, kind: str, sample_shape: tuple, where: str):
        self.name = name
        self.kind = kind
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.dtype = KIND_DTYPES[kind]
        self._where = where
        self._t = group["t"]
        self._data = group["data"]
        self._group = group
        sample_bytes = max(1, int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize)
        self._block = max(1, BUFFER_BYTES // sample_bytes)
        self._buf_t: list[int] = []
        self._buf_x: list[np.ndarray] = []
        self._n = 0
        self._last_t: int | None = None

    def __len__(self) -> int:
        return self._n + len(self._buf_t)

    def append(self, t_ns: int, sample) -> None:
        """Append one sample taken at `t_ns` (int nanoseconds)."""
        x = np.asarray(sample)
        if x.shape != self.sample_shape:
            raise SeqsenseError(
                f"{self._where}: sample {len(self)} has shape {x.shape}, "
                f"expected {self.sample_shape} as declared when the stream was created."
            )
        self._buf_t.append(int(t_ns))
        self._buf_x.append(x.astype(self.dtype, copy=False))
        if len(self._buf_t) >= self._block:
            self.flush()

    def extend(self, t_ns, data) -> None:
        """Append a block of samples: `t_ns` (N,) int64 nanoseconds, `data` (N, *sample_shape)."""
        t = np.asarray(t_ns)
        x = np.asarray(data)
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
            raise SeqsenseError(f"{self._where}: timestamps must be a 1-D integer array of nanoseconds, got {t.dtype} {t.shape}.")
        if x.shape != (len(t),) + self.sample_shape:
            raise SeqsenseError(
                f"{self._where}: data block has shape {x.shape}, expected {(len(t),) + self.sample_shape}."
            )
        self.flush()
        self._write(t.astype(np.int64, copy=False), x.astype(self.dtype, copy=False))

    def flush(self) -> None:
        """Write buffered samples to the file."""
        if not self._buf_t:
            return
        t = np.asarray(self._buf_t, dtype=np.int64)
        x = np.stack(self._buf_x).reshape((len(t),) + self.sample_shape)
        self._buf_t, self._buf_x = [], []
        self._write(t, x)

    def _write(self, t: np.ndarray, x: np.ndarray) -> None:
        n0, n1 = self._n, self._n + len(t)
        if n1 == n0:
            return
        self._t.resize((n1,))
        self._data.resize((n1,) + self.sample_shape)
        self._t[n0:n1] = t
        self._data[n0:n1] = x
        self._n = n1


class EpisodeWriter:
    """Creates the streams of one episode."""

    def __init__(self, log: "LogWriter", group: h5py.Group, name: str):
        self._log = log
        self._group = group
        self.name = name
        self.streams: dict[str, StreamWriter] = {}

    @property
    def group(self) -> h5py.Group:
        """The episode's HDF5 group in the log being written (to add streams computed from its own)."""
        return self._group

    def stream(
        self,
        name: str,
        kind: str,
        sample_shape: Sequence[int] = (),
        *,
        units: str = "",
        fields: Sequence[str] | None = None,
        frame_id: str = "",
        source: str = "",
        rate_hz: float = float("nan"),
        compression: str | None = None,
        chunk_samples: int | None = None,
        allow_nan: bool = False,
        attrs: dict | None = None,
    ) -> StreamWriter:
        """Create a stream and return its writer.

        `kind` is one of image/vector/scalar/label/event; `sample_shape` is (H, W, C) for images,
        (D,) for vectors and () otherwise. `rate_hz` is the nominal rate (NaN for event streams),
        `compression` None, "lzf" or "gzip". `allow_nan` marks streams (e.g. motion-capture truth)
        whose missing samples are stored as NaN, so validation accepts them.
        """
        where = f"Log '{self._log.path.name}' episode '{self.name}' stream '{name}'"
        if kind not in KIND_DTYPES:
            raise SeqsenseError(f"{where}: unknown stream kind {kind!r}; valid kinds: {sorted(KIND_DTYPES)}.")
        shape = tuple(int(s) for s in sample_shape)
        if len(shape) != KIND_RANKS[kind]:
            raise SeqsenseError(
                f"{where}: a {kind} stream stores samples of rank {KIND_RANKS[kind]}, got shape {shape}."
            )
        if kind == "vector":
            if fields is None:
                fields = [f"x{i}" for i in range(shape[0])]
            if len(fields) != shape[0]:
                raise SeqsenseError(f"{where}: {len(fields)} field names for a vector of size {shape[0]}.")
        if name in self.streams or name in self._group:
            raise SeqsenseError(f"{where}: the stream already exists in this episode.")
        if compression not in (None, "lzf", "gzip"):
            raise SeqsenseError(f"{where}: compression must be None, 'lzf' or 'gzip', got {compression!r}.")
        dtype = KIND_DTYPES[kind]
        if chunk_samples is None:
            if kind == "image":
                chunk_samples = DEFAULT_IMAGE_CHUNK
            else:
                sample_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
                chunk_samples = max(64, VECTOR_CHUNK_BYTES // sample_bytes)
        g = self._group.create_group(name)
        g.create_dataset("t", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(max(1024, chunk_samples),))
        g.create_dataset(
            "data",
            shape=(0,) + shape,
            maxshape=(None,) + shape,
            dtype=dtype,
            chunks=(chunk_samples,) + shape,
            compression=compression,
        )
        g.attrs["kind"] = kind
        g.attrs["units"] = units
        g.attrs["frame_id"] = frame_id
        g.attrs["source"] = source
        g.attrs["rate_hz"] = float(rate_hz)
        g.attrs["allow_nan"] = bool(allow_nan)
        if fields is not None:
            g.attrs["fields"] = _json_attr(list(fields))
        for k, v in (attrs or {}).items():
            g.attrs[k] = v if isinstance(v, (str, int, float, bool, np.number)) else _json_attr(v)
        sw = StreamWriter(g, name, kind, shape, where)
        self.streams[name] = sw
        return sw

    def write_stream(self, name: str, kind: str, t_ns, data, **attrs) -> StreamWriter:
        """Create a stream and write all its samples at once."""
        data = np.asarray(data)
        if attrs.get("chunk_samples") is None and kind != "image" and len(data):
            # The length is known: don't allocate chunks larger than the stream (small files).
            sample_bytes = max(1, int(np.prod(data.shape[1:], dtype=np.int64)) * KIND_DTYPES[kind].itemsize)
            attrs["chunk_samples"] = int(min(len(data), max(64, VECTOR_CHUNK_BYTES // sample_bytes)))
        sw = self.stream(name, kind, data.shape[1:], **attrs)
        sw.extend(t_ns, data)
        return sw

    def flush(self) -> None:
        for sw in self.streams.values():
            sw.flush()


class LogWriter:
    """Writes a seqsense log atomically: use as a context manager, or call `close()` / `abort()`."""

    def __init__(self, path: str | os.PathLike, provenance: dict | None = None):
        self.path = Path(path)
        if not self.path.parent.exists():
            raise SeqsenseError(f"Cannot write log '{self.path}': folder '{self.path.parent}' does not exist.")
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            self._file = h5py.File(self._tmp, "w")
        except OSError as e:
            raise SeqsenseError(f"Cannot write log '{self.path}': {e}") from e
        self._file.attrs["format"] = FORMAT_NAME
        self._file.attrs["format_version"] = FORMAT_VERSION
        self._file.attrs["writer"] = f"seqsense {__version__}"
        self._file.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._file.attrs["provenance"] = _json_attr(provenance or {})
        self._root = self._file.create_group(EPISODES_GROUP)
        self.episodes: dict[str, EpisodeWriter] = {}
        self._closed = False

    def episode(self, name: str, provenance: dict | None = None) -> EpisodeWriter:
        """Create a new episode named `name` (e.g. 'ep_000')."""
        if not name or "/" in name:
            raise SeqsenseError(f"Log '{self.path.name}': invalid episode name {name!r} (non-empty, no '/').")
        if name in self.episodes:
            raise SeqsenseError(f"Log '{self.path.name}': episode {name!r} already exists.")
        g = self._root.create_group(name)
        g.attrs["provenance"] = _json_attr(provenance or {})
        ep = EpisodeWriter(self, g, name)
        self.episodes[name] = ep
        return ep

    def set_provenance(self, provenance: dict) -> None:
        """Replace the file-level provenance (JSON-serializable dict)."""
        self._file.attrs["provenance"] = _json_attr(provenance)

    def close(self) -> Path:
        """Flush everything and move the finished file to its destination."""
        if self._closed:
            return self.path
        try:
            for ep in self.episodes.values():
                ep.flush()
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Discard the temporary file; the destination is left as it was."""
        self._closed = True
        try:
            self._file.close()
        except Exception:
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
