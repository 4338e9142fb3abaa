"""The writing side shared by every importer: episodes, block-buffered streams, time-order checks.

`ImportSession` owns the output `LogWriter`, names episodes `ep_000`, `ep_001`, ... and keeps the
counts that go into provenance (skipped, sorted, stamp fallbacks, non-finite samples). `StreamSink`
buffers one output stream into a preallocated block and writes it with `StreamWriter.extend`, so
memory stays bounded by one block per stream. Timestamps that go backwards are an error naming where
they occur, unless the import asked for `--sort-time`: then every stream is staged in a scratch HDF5
file beside the output and copied into the log in stable time order (the scratch file is removed in
all cases).

A sensor sample holding NaN or Inf is a reading the source marks as missing (a driver's NaN
magnetometer sample, a GPS message without fix, a range out of range): the sink drops the whole
sample of that stream and counts it per stream (provenance `dropped_nonfinite`), so every sensor
stream is finite and the log passes `inspect --validate`. Only truth streams keep NaN, marked
`allow_nan` (training masks them): names under `truth/`, parts an importer declares `allow_nan`
(frames without a box) and streams a mapping entry marks `"allow_nan": true`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import h5py
import numpy as np

from seqsense import __version__
from seqsense.errors import SeqsenseError
from seqsense.importers.messages import Part
from seqsense.log import EpisodeWriter, LogWriter
from seqsense.log.format import KIND_DTYPES

BLOCK_BYTES = 16 * 1024 * 1024  # per-stream buffer before a block is written
IMAGE_CHUNK = 4  # frames per HDF5 chunk, as the log writer's default (window reads stay small)
VECTOR_CHUNK_BYTES = 256 * 1024
MAX_REPORTED = 5  # backwards steps quoted per stream


@dataclasses.dataclass
class ImportOptions:
    """How to import: time source, episode split, sorting, image size, progress bars."""

    time: str = "header"  # "header" stamp or "receive" time
    episode: str = "per-file"  # "per-file", "gap=SECONDS" or "every=SECONDS"
    sort_time: bool = False
    image_size: tuple[int, int] | None = None  # (W, H)
    progress: bool = True

    def __post_init__(self):
        if self.time not in ("header", "receive"):
            raise SeqsenseError(f"--time must be 'header' or 'receive', got {self.time!r}.")
        if self.episode != "per-file":
            mode, _, value = self.episode.partition("=")
            try:
                ok = mode in ("gap", "every") and float(value) > 0
            except ValueError:
                ok = False
            if not ok:
                raise SeqsenseError(f"--episode must be 'per-file', 'gap=SECONDS' or 'every=SECONDS' "
                                    f"(e.g. gap=2.5), got {self.episode!r}.")

    def _seconds_ns(self, mode: str) -> int | None:
        m, _, value = self.episode.partition("=")
        return int(float(value) * 1e9) if m == mode else None

    @property
    def gap_ns(self) -> int | None:
        """A time gap longer than this (ns) starts a new episode (None: no gap split)."""
        return self._seconds_ns("gap")

    @property
    def every_ns(self) -> int | None:
        """Episodes are cut into pieces of this length in ns (None: no fixed-length split)."""
        return self._seconds_ns("every")


class StreamSink:
    """Buffers the samples of one output stream and writes them in blocks; owns its order checks."""

    def __init__(self, session: "ImportSession", episode: EpisodeWriter, name: str, part: Part,
                 source: str, frame_id: str, where: str):
        self.session, self.episode, self.name, self.part = session, episode, name, part
        self.source, self.frame_id, self.where = source, frame_id, where
        dtype = KIND_DTYPES[part.kind]
        self.keeps_nan = session.keeps_nan(name, part)
        self.checks_finite = bool(np.issubdtype(dtype, np.floating))  # images and labels cannot hold NaN
        sample_bytes = max(1, int(np.prod(part.shape, dtype=np.int64)) * dtype.itemsize)
        # Blocks are whole multiples of the HDF5 chunk, so no chunk is written twice.
        self.chunk = IMAGE_CHUNK if part.kind == "image" else max(64, VECTOR_CHUNK_BYTES // sample_bytes)
        self.block = self.chunk * max(1, BLOCK_BYTES // (self.chunk * sample_bytes))
        self._t = np.empty(self.block, np.int64)
        self._x = np.empty((self.block,) + tuple(part.shape), dtype)  # (N, *sample_shape)
        self._n = 0
        self.count = 0
        self.last_t: int | None = None
        self.backwards: list[tuple[int, int, int]] = []  # (message index, t, previous t)
        self.n_backwards = 0
        self.n_nonfinite = 0  # samples holding NaN/Inf: dropped, or kept in a truth stream
        self.writer = None
        self._stage = None  # (t dataset, data dataset) in the scratch file when sorting

    def add(self, t_ns: int, sample, msg_index: int) -> None:
        """Append one sample; `msg_index` locates it in the source for error messages."""
        self._x[self._n] = sample
        if self.checks_finite and not np.isfinite(self._x[self._n]).all():
            self.n_nonfinite += 1
            if not self.keeps_nan:
                return
        if self.last_t is not None and t_ns < self.last_t:
            self.n_backwards += 1
            if len(self.backwards) < MAX_REPORTED:
                self.backwards.append((msg_index, t_ns, self.last_t))
        self.last_t = t_ns
        self._t[self._n] = t_ns
        self._n += 1
        if self._n == self.block:
            self.flush()

    def add_block(self, t_ns: np.ndarray, data: np.ndarray, index0: int = 0) -> None:
        """Append many samples at once (sources that read arrays: CSV, HDF5)."""
        t_ns = np.asarray(t_ns, np.int64)
        rows = index0 + np.arange(len(t_ns))  # source rows, for error messages
        if self.checks_finite and len(t_ns):
            data = np.asarray(data, self._x.dtype)
            ok = np.isfinite(data.reshape(len(data), -1)).all(axis=1)  # (N,)
            self.n_nonfinite += len(ok) - int(np.count_nonzero(ok))
            if not self.keeps_nan and not ok.all():
                t_ns, data, rows = t_ns[ok], data[ok], rows[ok]
        if len(t_ns) == 0:
            return
        prev = np.empty_like(t_ns)  # the timestamp before each sample
        prev[0] = t_ns[0] if self.last_t is None else self.last_t
        prev[1:] = t_ns[:-1]
        back = np.flatnonzero(t_ns < prev)
        self.n_backwards += len(back)
        for i in back[: MAX_REPORTED - len(self.backwards)]:
            self.backwards.append((int(rows[i]), int(t_ns[i]), int(prev[i])))
        self.last_t = int(t_ns[-1])
        self.flush()
        self._write(t_ns, np.asarray(data))

    def flush(self) -> None:
        """Write the buffered block."""
        if self._n:
            n, self._n = self._n, 0
            self._write(self._t[:n], self._x[:n])

    def _write(self, t: np.ndarray, x: np.ndarray) -> None:
        self.count += len(t)
        if self.session.options.sort_time:
            if self._stage is None:
                self._stage = self.session.scratch_datasets(self.part, self.chunk)
            for ds, block in zip(self._stage, (t, x)):
                n0 = ds.shape[0]
                ds.resize((n0 + len(block),) + ds.shape[1:])
                ds[n0:] = block
            return
        if self.writer is None:
            self.writer = self._create(t)
        self.writer.extend(t, x)
        self._mark_allow_nan()

    def _create(self, t: np.ndarray):
        dt = np.diff(t)
        dt = dt[dt > 0]
        rate = 1e9 / float(np.median(dt)) if len(dt) else float("nan")  # nominal: median rate
        p = self.part
        return self.episode.stream(
            self.name, p.kind, p.shape, units=p.units, fields=p.fields, frame_id=self.frame_id,
            source=self.source, rate_hz=rate, allow_nan=self._holds_nan(),
            compression=None, chunk_samples=self.chunk,
            attrs={**{k: v for k, v in p.attrs.items() if k != "frame_id"}, "time": self.session.options.time},
        )

    def _holds_nan(self) -> bool:
        """Whether the stream is marked `allow_nan`: declared so, or a truth stream that kept a NaN/Inf."""
        return bool(self.part.allow_nan or self.keeps_nan and self.n_nonfinite)

    def _mark_allow_nan(self) -> None:
        # A truth stream not declared allow_nan is marked once its first NaN is written (it may come after
        # the stream was created), so that validation accepts its missing samples.
        if self._holds_nan() and not self.writer._group.attrs["allow_nan"]:
            self.writer._group.attrs["allow_nan"] = True

    def finish(self) -> None:
        """Flush the last block (count the dropped NaN/Inf samples); when sorting, copy the staged samples
        into the log in time order."""
        self.flush()
        if self.n_nonfinite and not self.keeps_nan:
            self.session.count("dropped_nonfinite", self.name, self.n_nonfinite)
            if self.count == 0:
                self.session.emptied.add(self.name)
        if self._stage is None:
            return
        t_ds, x_ds = self._stage
        t = t_ds[()]
        order = np.argsort(t, kind="stable")
        moved = int(np.count_nonzero(order != np.arange(len(t))))
        if moved:
            self.session.count("sorted", self.where, moved)
        self.writer = self._create(t[order])
        for i0 in range(0, len(t), self.block):
            idx = order[i0 : i0 + self.block]
            lo, hi = int(idx.min()), int(idx.max()) + 1
            if hi - lo <= 4 * len(idx):  # locally out of order: read the span, pick in memory
                x = x_ds[lo:hi][idx - lo]
            else:
                uniq = np.sort(idx)
                x = x_ds[uniq][np.searchsorted(uniq, idx)]
            self.writer.extend(t[idx], x)
        self._mark_allow_nan()

    def backwards_text(self) -> str:
        """Where timestamps went backwards, for the error message."""
        steps = ", ".join(f"message {i} (t={t / 1e9:.6f} s after {p / 1e9:.6f} s)" for i, t, p in self.backwards)
        more = f" and {self.n_backwards - len(self.backwards)} more" if self.n_backwards > len(self.backwards) else ""
        return f"{self.where} -> stream '{self.name}': {self.n_backwards} backwards step(s) at {steps}{more}"


class ImportSession:
    """Owns the output log, the episode counter, the sort scratch file and the provenance counts."""

    def __init__(self, out: str | os.PathLike, options: ImportOptions, mapping_dict: dict):
        self.out = Path(out)
        self.options = options
        self.writer = LogWriter(self.out)
        self.counts: dict[str, dict[str, int]] = {"dropped": {}, "sorted": {}, "stamp_fallback_receive": {},
                                                  "dropped_nonfinite": {}}
        self.emptied: set[str] = set()  # streams whose every sample held NaN/Inf (none written)
        self.sources: list[dict] = []
        self.mapping = mapping_dict
        self._scratch: h5py.File | None = None
        self._scratch_path = self.out.with_name(f".{self.out.name}.{os.getpid()}.sorting")
        self._n_scratch = 0

    def count(self, what: str, key: str, n: int = 1) -> None:
        """Add `n` to a provenance counter (dropped / sorted / stamp_fallback_receive / dropped_nonfinite)
        under `key`."""
        bucket = self.counts.setdefault(what, {})
        bucket[key] = bucket.get(key, 0) + n

    def keeps_nan(self, name: str, part: Part) -> bool:
        """Whether stream `name` keeps samples holding NaN/Inf (truth streams; see the module docstring)."""
        if part.allow_nan or name.startswith("truth/"):
            return True
        # A mapping entry names a stream, or the base of a converter's parts (`odom` for `odom/pose`).
        return any(e.get("allow_nan") is True and (name == e.get("stream") or name.startswith(f"{e.get('stream')}/"))
                   for e in self.mapping.get("streams", []))

    def new_episode(self, provenance: dict) -> EpisodeWriter:
        """Create the next episode (`ep_000`, `ep_001`, ...)."""
        return self.writer.episode(f"ep_{len(self.writer.episodes):03d}", provenance)

    def scratch_datasets(self, part: Part, chunk: int):
        """A fresh (t, data) dataset pair in the scratch file used for --sort-time."""
        if self._scratch is None:
            self._scratch = h5py.File(self._scratch_path, "w")
        g = self._scratch.create_group(str(self._n_scratch))
        self._n_scratch += 1
        shape = tuple(part.shape)
        t = g.create_dataset("t", (0,), maxshape=(None,), dtype=np.int64, chunks=(max(1024, chunk),))
        x = g.create_dataset("data", (0,) + shape, maxshape=(None,) + shape, dtype=KIND_DTYPES[part.kind],
                             chunks=(max(1, chunk),) + shape)
        return t, x

    def close_episode(self, sinks: list[StreamSink]) -> None:
        """Finish the sinks of one episode; backwards timestamps without --sort-time are an error."""
        bad = [s for s in sinks if s.n_backwards]
        if bad and not self.options.sort_time:
            raise SeqsenseError(
                "timestamps go backwards (common in converted bags): "
                + "; ".join(s.backwards_text() for s in bad)
                + ". Nothing was written. Re-import with --sort-time to sort each stream by time "
                "(counts are kept in provenance), or with --time receive to use receive times."
            )
        for s in sinks:
            s.finish()
        if sinks and all(s.count == 0 for s in sinks) and any(s.n_nonfinite for s in sinks):
            raise SeqsenseError(
                f"every sample of {', '.join(s.where for s in sinks)} holds NaN or Inf: the episode would have no "
                "streams. Nothing was written. Pick fields that hold readings, or mark the streams "
                '"allow_nan": true in the mapping to keep the NaN.'
            )

    def finish(self, importer: str, extra: dict | None = None) -> Path:
        """Write provenance and move the finished log into place."""
        if not self.writer.episodes:
            raise SeqsenseError("nothing to import: the sources hold no messages on the selected topics.")
        prov = {
            "importer": importer,
            "seqsense_version": __version__,
            "sources": self.sources,
            "time": self.options.time,
            "sort_time": self.options.sort_time,
            "episode": self.options.episode,
            "image_size": list(self.options.image_size) if self.options.image_size else None,
            "mapping": self.mapping,
            **self.counts,
            **(extra or {}),
        }
        self.writer.set_provenance(prov)
        try:
            return self.writer.close()
        finally:
            self._drop_scratch()

    def abort(self) -> None:
        """Discard everything written so far."""
        self.writer.abort()
        self._drop_scratch()

    def _drop_scratch(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        self._scratch_path.unlink(missing_ok=True)


class TimedEpisodes:
    """The episodes of one source whose streams are written one after another from known timestamps.

    Array-like sources (ULog topics, dataset folders) know every stream's timestamps before writing
    its data, so the split (`--episode`) is decided up front from all of them: one episode, pieces of
    `every=S` seconds from the first sample, or a new episode after every gap longer than `gap=S`
    seconds in the merged timestamps. Each stream's samples then go to the episode their time falls
    in (samples before the first start go to the first episode). Owns one sink per (episode, stream).
    """

    def __init__(self, session: ImportSession, times: list[np.ndarray], provenance: dict, source: dict):
        self.session = session
        opts = session.options
        t_all = np.sort(np.concatenate([np.asarray(t, np.int64) for t in times])) if times else np.zeros(0, np.int64)
        if len(t_all) == 0:
            raise SeqsenseError(f"'{source.get('file')}': no samples to import.")
        if opts.every_ns is not None:
            piece = (t_all - t_all[0]) // opts.every_ns
            first = np.r_[0, np.flatnonzero(np.diff(piece)) + 1]
        elif opts.gap_ns is not None:
            first = np.r_[0, np.flatnonzero(np.diff(t_all) > opts.gap_ns) + 1]
        else:
            first = np.zeros(1, np.int64)
        self.starts = t_all[first]
        self.episodes = []
        for i, t0 in enumerate(self.starts):
            ep = session.new_episode({**provenance, "segment": i, "first_t_ns": int(t0)})
            session.sources.append({**source, "episode": ep.name})
            self.episodes.append(ep)
        self.sinks: list[dict[str, StreamSink]] = [{} for _ in self.starts]

    def add_stream(self, name: str, part: Part, t_ns: np.ndarray, blocks, source: str, frame_id: str = "",
                   where: str = "") -> None:
        """Write one stream: `t_ns` (N,) and `blocks`, an iterable of (i0, data) covering rows 0..N-1 in order."""
        t_ns = np.asarray(t_ns, np.int64)
        ep_of = np.maximum(np.searchsorted(self.starts, t_ns, side="right") - 1, 0)
        where = where or f"stream '{name}'"
        for i0, x in blocks:
            i1 = i0 + len(x)
            k = ep_of[i0:i1]
            cuts = np.r_[0, np.flatnonzero(np.diff(k)) + 1, len(k)]  # runs of samples in one episode
            for a, b in zip(cuts[:-1], cuts[1:]):
                if a == b:
                    continue
                e = int(k[a])
                sink = self.sinks[e].get(name)
                if sink is None:
                    sink = StreamSink(self.session, self.episodes[e], name, part, source, frame_id, where)
                    self.sinks[e][name] = sink
                sink.add_block(t_ns[i0 + a : i0 + b], x[a:b], i0 + a)

    def close(self) -> None:
        """Finish every episode (backwards timestamps are an error unless --sort-time)."""
        for sinks in self.sinks:
            self.session.close_episode(list(sinks.values()))
