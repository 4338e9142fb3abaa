"""Training windows from many logs, with multi-rate streams aligned causally on one clock.

Shape letters: B batch, T ticks in a window, K samples packed per tick, H×W×C image, D features.

A **clock** decides when the predictor runs: the timestamps of one stream (by default the target's) or
a fixed rate. At each tick every input stream is sampled **causally** (only samples with t ≤ tick):

- `latest` mode: the latest sample, its age in seconds and a `_valid` flag (False before the stream's
  first sample or when the sample is older than `max_age_s`);
- `packed` mode (high-rate sensors): every sample in (previous tick, tick], the newest K kept, with a
  `_mask` and per-slot ages.

The target is taken *at* the tick: linearly interpolated for vector/scalar streams, held from the
latest sample for label streams; `target_valid` is False outside the target's time range or where it is
NaN. A window is T consecutive ticks; windows that run past an episode's end are padded by repeating the
last tick, with `tick_is_pad` True there. Keys of one window (see `seqsense.predictor` for one tick):

    t_ns (T,) int64, dt_s (T,) float32, tick_is_pad (T,) bool,
    {s} (T, ...) and {s}_age_s, {s}_valid | {s}_mask  for each input stream s,
    target (T, D) float32 | (T,) int64 for labels, target_valid (T,) bool

Only small per-tick index arrays and targets are held in memory; image samples are read from the file
per window (the index arrays say which chunk rows), and vector streams are cached only below a size
budget, so memory stays bounded for long logs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from seqsense.errors import ConfigError, SeqsenseError
from seqsense.log.format import NS_PER_S
from seqsense.log.reader import Episode, Log, open_log

VECTOR_CACHE_BYTES = 64 * 1024 * 1024  # per stream and episode; larger streams are read lazily


@dataclasses.dataclass
class WindowSpec:
    """Which streams a model reads, what it predicts, on which clock, and its context in ticks."""

    inputs: tuple[str, ...]
    target: str
    window: int = 1  # T: ticks per training window
    stride: int = 0  # ticks between window starts; 0 means `window` (no overlap)
    clock: str | None = None  # stream whose timestamps are the ticks; None: the target stream
    rate_hz: float | None = None  # fixed-rate clock instead of a stream's timestamps
    packed: dict[str, int] = dataclasses.field(default_factory=dict)  # stream -> K for packed mode
    max_age_s: float = float("inf")

    def __post_init__(self):
        self.inputs = tuple(self.inputs)
        if not self.inputs:
            raise ConfigError("WindowSpec: at least one input stream is needed (inputs=...).")
        if self.target in self.inputs:
            raise ConfigError(f"WindowSpec: the target {self.target!r} cannot also be an input.")
        if self.window < 1:
            raise ConfigError(f"WindowSpec: window must be >= 1 tick, got {self.window}.")
        if self.stride < 0:
            raise ConfigError(f"WindowSpec: stride must be >= 0, got {self.stride}.")
        if self.rate_hz is not None and self.rate_hz <= 0:
            raise ConfigError(f"WindowSpec: rate_hz must be > 0, got {self.rate_hz}.")
        for s, k in self.packed.items():
            if s not in self.inputs:
                raise ConfigError(f"WindowSpec: packed stream {s!r} is not an input; inputs: {list(self.inputs)}.")
            if int(k) < 1:
                raise ConfigError(f"WindowSpec: packed stream {s!r} needs K >= 1 samples, got {k}.")

    @property
    def step(self) -> int:
        return self.stride or self.window


@dataclasses.dataclass
class StreamInfo:
    """What a model needs to know of one stream: kind, sample shape, units and field names."""

    kind: str
    shape: tuple[int, ...]
    units: str = ""
    fields: list[str] | None = None
    rate_hz: float = float("nan")


def episode_refs(paths: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """All (file, episode) pairs of the given logs, in a stable order."""
    refs = []
    for p in paths:
        log = open_log(p)
        refs.extend((str(p), e) for e in log.episode_names)
        log.close()
    return refs


def split_episodes(refs: Sequence[tuple[str, str]], val_fraction: float, seed: int = 0):
    """Split (file, episode) pairs into (train, val) by episode, reproducibly for a seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    refs = sorted(refs)
    order = np.random.default_rng(seed).permutation(len(refs))
    n_val = int(round(val_fraction * len(refs)))
    if val_fraction > 0 and n_val == 0 and len(refs) > 1:
        n_val = 1
    if n_val >= len(refs) and len(refs) > 0:
        raise ConfigError(f"Cannot hold out {n_val} of {len(refs)} episode(s) for validation; add episodes or lower val_fraction.")
    val = [refs[i] for i in sorted(order[:n_val])]
    train = [refs[i] for i in sorted(order[n_val:])]
    return train, val


def _interp_rows(tq: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of rows of x (N, D) at times tq, with NaN outside [t0, tN]."""
    out = np.empty((len(tq), x.shape[1]), np.float32)
    tf, tqf = (t - t[0]).astype(np.float64), (tq - t[0]).astype(np.float64)
    for d in range(x.shape[1]):
        out[:, d] = np.interp(tqf, tf, x[:, d].astype(np.float64), left=np.nan, right=np.nan)
    return out


class EpisodeIndex:
    """The clock of one episode and, per tick, which samples of each stream it sees."""

    def __init__(self, episode: Episode, spec: WindowSpec):
        self.episode = episode
        self.spec = spec
        where = f"Log '{episode.log.path}' episode '{episode.name}'"
        missing = [s for s in (*spec.inputs, spec.target) if not episode.has_stream(s)]
        if missing:
            raise SeqsenseError(f"{where}: missing stream(s) {missing}; streams there: {episode.stream_names}.")
        self.streams = {s: episode.stream(s) for s in (*spec.inputs, spec.target)}
        self.ticks = self._make_clock(where)
        if len(self.ticks) == 0:
            raise SeqsenseError(f"{where}: the clock has no ticks (empty stream?).")
        self.dt_s = np.zeros(len(self.ticks), np.float32)
        self.dt_s[1:] = np.diff(self.ticks) / NS_PER_S
        self.latest = {}
        self.cache = {}
        for s in spec.inputs:
            st = self.streams[s]
            if len(st) == 0:
                raise SeqsenseError(f"{where} stream '{s}': empty stream.")
            if np.any(np.diff(st.t) < 0):
                i = int(np.flatnonzero(np.diff(st.t) < 0)[0]) + 1
                raise SeqsenseError(f"{where} stream '{s}': timestamps go backwards at index {i}. Run `seqsense inspect --validate`.")
            self.latest[s] = np.searchsorted(st.t, self.ticks, side="right") - 1  # (n,) -1 = none yet
            nbytes = len(st) * int(np.prod(st.sample_shape, dtype=np.int64)) * st.dtype.itemsize
            if st.kind != "image" and nbytes <= VECTOR_CACHE_BYTES:
                self.cache[s] = st.data[()].astype(np.float32)
        self.target, self.target_valid = self._make_target(where)

    def _make_clock(self, where: str) -> np.ndarray:
        if self.spec.rate_hz is not None:
            t_all = [st.t for st in self.streams.values() if len(st)]
            t0 = min(int(t[0]) for t in t_all)
            t1 = max(int(t[-1]) for t in t_all)
            period = NS_PER_S / self.spec.rate_hz
            return (t0 + np.round(np.arange(int((t1 - t0) // period) + 1) * period)).astype(np.int64)
        name = self.spec.clock or self.spec.target
        if not self.episode.has_stream(name):
            raise SeqsenseError(f"{where}: clock stream {name!r} not found; streams: {self.episode.stream_names}.")
        return np.asarray(self.episode.stream(name).t, np.int64)

    def _make_target(self, where: str):
        st = self.streams[self.spec.target]
        if st.kind == "image":
            raise SeqsenseError(f"{where} stream '{st.name}': image streams cannot be targets; pick a vector, scalar or label stream.")
        t = st.t
        x = st.data[()]
        if len(t) == 0:
            raise SeqsenseError(f"{where} stream '{st.name}': the target stream is empty.")
        if st.kind in ("label", "event"):
            i = np.searchsorted(t, self.ticks, side="right") - 1
            y = x[np.clip(i, 0, None)].astype(np.int64)
            return y, i >= 0
        x = x.reshape(len(t), -1)
        if np.array_equal(t, self.ticks):
            y = x.astype(np.float32)
        else:
            y = _interp_rows(self.ticks, t, x)
        return y, np.isfinite(y).all(axis=1)

    def __len__(self) -> int:
        return len(self.ticks)

    def read(self, start: int, length: int, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The window of `length` ticks starting at tick `start` (padded past the end).

        With `out` (arrays of the right shapes, e.g. one row of a batch), samples are written there
        instead of into new arrays, so image windows are copied once from the file.
        """
        n = len(self.ticks)
        pos = np.arange(start, start + length)
        is_pad = pos >= n
        pos = np.minimum(pos, n - 1)
        tick = self.ticks[pos]
        res = {"t_ns": tick, "dt_s": self.dt_s[pos], "tick_is_pad": is_pad}
        for s in self.spec.inputs:
            if s in self.spec.packed:
                res.update(self._read_packed(s, pos, tick))
            else:
                res.update(self._read_latest(s, pos, tick, None if out is None else out[s]))
        y, valid = self.target[pos], self.target_valid[pos] & ~is_pad
        res["target"] = np.where(valid[:, None], y, 0.0).astype(np.float32) if y.ndim == 2 else np.where(valid, y, 0)
        res["target_valid"] = valid
        if out is not None:
            for key, v in res.items():
                if v is not out[key]:
                    out[key][...] = v
            return out
        return res

    def _rows(self, s: str, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Samples at sorted indices idx (>= 0) of stream s."""
        if s in self.cache:
            if out is None:
                return self.cache[s][idx]
            np.take(self.cache[s], idx, axis=0, out=out)
            return out
        return self.streams[s].read_rows(idx, out)

    def _read_latest(self, s: str, pos: np.ndarray, tick: np.ndarray, out: np.ndarray | None = None) -> dict:
        st = self.streams[s]
        idx = self.latest[s][pos]
        has = idx >= 0
        age = np.where(has, (tick - st.t[np.clip(idx, 0, None)]) / NS_PER_S, np.inf).astype(np.float32)
        valid = has & (age <= self.spec.max_age_s)
        if out is None:
            out = np.empty((len(pos),) + st.sample_shape, np.uint8 if st.kind == "image" else np.float32)
        if valid.all() and st.kind == "image":
            self._rows(s, idx, out)  # the common case: straight into the output
        else:
            out[...] = 0
            if valid.any():
                out[valid] = self._rows(s, idx[valid])
        return {s: out, f"{s}_age_s": np.where(valid, age, 0.0).astype(np.float32), f"{s}_valid": valid}

    def _read_packed(self, s: str, pos: np.ndarray, tick: np.ndarray) -> dict:
        st = self.streams[s]
        k = int(self.spec.packed[s])
        last = self.latest[s]
        hi = last[pos]  # newest sample index at each tick
        lo = np.where(pos > 0, last[np.maximum(pos - 1, 0)], -1)  # newest at the previous tick
        lo = np.where(pos == 0, np.maximum(hi - k, -1), lo)  # first tick: up to K samples before it
        slots = hi[:, None] - np.arange(k - 1, -1, -1)[None, :]  # (T, K), oldest first
        mask = (slots > lo[:, None]) & (slots >= 0)
        x = np.zeros((len(pos), k) + st.sample_shape, np.float32)
        age = np.zeros((len(pos), k), np.float32)
        if mask.any():
            idx = slots[mask]
            uniq, inv = np.unique(idx, return_inverse=True)
            rows = self._rows(s, uniq)
            x[mask] = rows[inv]
            tt = np.broadcast_to(tick[:, None], slots.shape)[mask]
            age[mask] = (tt - st.t[idx]) / NS_PER_S
        return {s: x, f"{s}_age_s": age, f"{s}_mask": mask}


class WindowDataset(torch.utils.data.Dataset):
    """Windows of T ticks over (file, episode) pairs; safe to use with DataLoader worker processes."""

    def __init__(self, episodes: Sequence[tuple[str, str]], spec: WindowSpec):
        if not episodes:
            raise SeqsenseError("No episodes to build windows from: check --data and the split.")
        self.spec = spec
        self.episodes = [(str(f), e) for f, e in episodes]
        self._logs: dict[str, Log] = {}
        self._indices: dict[int, EpisodeIndex] = {}
        self._pid = os.getpid()
        starts = []  # (episode number, start tick)
        self.lengths = []
        for k, (f, e) in enumerate(self.episodes):
            n = len(self.index(k))
            self.lengths.append(n)
            if n < spec.window:
                raise SeqsenseError(
                    f"Log '{f}' episode '{e}' has {n} ticks, fewer than the window of {spec.window}; "
                    "use a shorter window or longer episodes."
                )
            for s in range(0, n - spec.window + 1, spec.step):
                starts.append((k, s))
        self.starts = np.asarray(starts, np.int64).reshape(-1, 2)

    def _log(self, path: str) -> Log:
        if path not in self._logs:
            self._logs[path] = open_log(path)
        return self._logs[path]

    def index(self, k: int) -> EpisodeIndex:
        """The tick index of episode number k (built once per process)."""
        if os.getpid() != self._pid:  # forked worker: drop handles of the parent
            self._logs, self._indices, self._pid = {}, {}, os.getpid()
        if k not in self._indices:
            f, e = self.episodes[k]
            self._indices[k] = EpisodeIndex(self._log(f).episode(e), self.spec)
        return self._indices[k]

    def stream_info(self) -> dict[str, StreamInfo]:
        """Kind, shape, units and fields of each input stream and of the target."""
        idx = self.index(0)
        return {
            name: StreamInfo(st.kind, tuple(st.sample_shape), st.units, st.fields, st.rate_hz)
            for name, st in idx.streams.items()
        }

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, s = self.starts[i]
        return {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in self.index(int(k)).read(int(s), self.spec.window).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch at once (used by DataLoader) as (B, T, ...) tensors, each sample copied once."""
        return self.read_windows([(int(k), int(s)) for k, s in self.starts[np.asarray(indices, np.int64)]])

    def read_windows(self, pairs: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Windows of T ticks at (episode number, start tick) pairs as a batch (B, T, ...); padded past an episode's end."""
        k, s = pairs[0]
        first = self.index(int(k)).read(int(s), self.spec.window)
        # In a worker process, allocate in shared memory so handing the batch over copies nothing.
        shared = torch.utils.data.get_worker_info() is not None
        tensors = {}
        for key, v in first.items():
            t = torch.from_numpy(np.empty((len(pairs),) + v.shape, v.dtype))
            tensors[key] = t.share_memory_() if shared else t
        batch = {key: t.numpy() for key, t in tensors.items()}
        for key, v in first.items():
            batch[key][0] = v
        for b, (k, s) in enumerate(pairs[1:], start=1):
            self.index(int(k)).read(int(s), self.spec.window, out={key: v[b] for key, v in batch.items()})
        return tensors

    def sequence(self, k: int) -> dict[str, np.ndarray]:
        """The whole of episode k as one window (numpy, no batch axis), for offline predict."""
        idx = self.index(k)
        return idx.read(0, len(idx))

    def iter_ticks(self, k: int, block: int = 256) -> Iterator[dict[str, np.ndarray]]:
        """Episode k one tick at a time (inputs and target), read in blocks, as a robot loop sees it."""
        idx = self.index(k)
        n = len(idx)
        for s in range(0, n, block):
            w = idx.read(s, min(block, n - s))
            for j in range(len(w["t_ns"])):
                yield {key: v[j] for key, v in w.items()}


class ConsecutiveWindows:
    """Batches for stateful training: each of `rows` batch rows reads whole episodes window after window, in order.

    An episode of n ticks is cut into ceil(n / T) windows starting at 0, T, 2T, ... (the last one
    padded, `tick_is_pad`), T = `dataset.spec.window`. Row r walks an endless stream: the episodes in
    a permutation drawn from (seed, r, pass), each read from its first window to its last; rows start
    at staggered offsets into their streams (r / rows of the way through), so even one long episode
    gives `rows` different windows per batch. A batch is a list of (episode number, start tick,
    reset) triples, reset True where the row starts an episode (or at the first step of this sampler,
    whose carried state is not known): the model's state for that row must go back to its reset value.
    The batches are a pure function of (seed, step), like `seqsense.train.BatchSchedule`.
    """

    def __init__(self, dataset: WindowDataset, rows: int, seed: int = 0, start: int = 0, stop: int | None = None):
        if rows < 1:
            raise ConfigError(f"ConsecutiveWindows: rows must be >= 1, got {rows}.")
        self.window = dataset.spec.window
        self.counts = np.asarray([-(-n // self.window) for n in dataset.lengths], np.int64)  # windows per episode
        self.total = int(self.counts.sum())  # windows in one pass over all episodes
        self.rows, self.seed, self.start, self.stop = rows, seed, start, stop
        self.phase = [r * self.total // rows for r in range(rows)]
        self._passes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _pass(self, r: int, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(episode order, cumulative window counts) of row r's pass p."""
        key = (r, p)
        if key not in self._passes:
            if len(self._passes) > 4 * self.rows:
                self._passes.clear()
            order = np.random.default_rng([self.seed, r, p]).permutation(len(self.counts))
            self._passes[key] = (order, np.cumsum(self.counts[order]))
        return self._passes[key]

    def indices(self, step: int) -> list[tuple[int, int, bool]]:
        """The (episode, start tick, reset) triple of each row at 0-based `step`."""
        out = []
        for r in range(self.rows):
            p, off = divmod(step + self.phase[r], self.total)
            order, cum = self._pass(r, p)
            j = int(np.searchsorted(cum, off, side="right"))
            w = off - (int(cum[j - 1]) if j else 0)  # window number within the episode
            out.append((int(order[j]), w * self.window, w == 0 or step == self.start))
        return out

    def __iter__(self):
        k = self.start
        while self.stop is None or k < self.stop:
            yield self.indices(k)
            k += 1


class StatefulWindows(torch.utils.data.Dataset):
    """A WindowDataset read by `ConsecutiveWindows` triples: each batch also holds `state_reset` (B,) bool."""

    def __init__(self, dataset: WindowDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, rows: Sequence[tuple[int, int, bool]]) -> dict[str, torch.Tensor]:
        """The windows of a `ConsecutiveWindows` batch, plus which rows start from a reset state."""
        batch = self.dataset.read_windows([(k, s) for k, s, _ in rows])
        batch["state_reset"] = torch.tensor([bool(r) for _, _, r in rows])
        return batch


def _passthrough(batch):
    return batch


def make_loader(dataset: WindowDataset, batch_size: int, shuffle: bool = True, num_workers: int = 0, seed: int = 0, sampler=None, drop_last: bool = False):
    """A DataLoader that fetches whole batches through `WindowDataset.__getitems__`."""
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_passthrough,
        generator=g,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def compute_normalization(dataset: WindowDataset, max_ticks_per_episode: int = 100_000) -> dict[str, dict]:
    """Mean and std of every vector/scalar input and of a continuous target, over the dataset's episodes.

    Call it on the *training* split only; the statistics travel with the model.
    """
    sums: dict[str, list] = {}
    for k in range(len(dataset.episodes)):
        idx = dataset.index(k)
        n = min(len(idx), max_ticks_per_episode)
        w = idx.read(0, n)
        for s in dataset.spec.inputs:
            if idx.streams[s].kind == "image":
                continue
            x = w[s]
            m = w[f"{s}_mask"] if s in dataset.spec.packed else w[f"{s}_valid"]
            x = x[m].reshape(int(m.sum()), -1).astype(np.float64)
            _accumulate(sums, s, x)
        if w["target"].ndim == 2:
            _accumulate(sums, "target", w["target"][w["target_valid"]].astype(np.float64))
    stats = {}
    for name, (n, s1, s2) in sums.items():
        mean = s1 / max(n, 1)
        std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))
        std = np.where(std < 1e-6, 1.0, std)
        stats[name] = {"mean": mean.astype(np.float32).tolist(), "std": std.astype(np.float32).tolist()}
    return stats


def _accumulate(sums: dict, name: str, x: np.ndarray) -> None:
    if len(x) == 0:
        return
    n, s1, s2 = sums.get(name, (0, 0.0, 0.0))
    sums[name] = (n + len(x), s1 + x.sum(axis=0), s2 + (x**2).sum(axis=0))


def resolve_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Check that each log path exists (SeqsenseError naming the first missing one)."""
    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise SeqsenseError(f"Log '{p}' does not exist.")
        out.append(p)
    return out
