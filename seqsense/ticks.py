"""Causal tick building: the raw samples that arrived at a tick -> the tick the model was trained on.

A robot loop knows, at tick time `t_ns`, only the samples that arrived since the previous tick. A
`TickBuilder` turns `(t_ns, observations)` into exactly the dict `seqsense.dataset` delivers for
that tick (see `seqsense.predictor` for its keys), into arrays it allocates once and refills in
place. It is numpy only, so the torch predictor and the torch-free runtime share it.

Observations hold, for **every** input stream s, the newest sample (latest mode) or all samples
since the previous tick (packed mode, (k, *shape) oldest first), or `None` when nothing arrived.
Optional keys per stream:

    {s}_t_ns     ()/(k,)  int     when the sample was taken; its age is t_ns − that time (default:
                                  taken at the tick, age 0)
    {s}_age_s    ()/(k,)  float   the age given directly (used when {s}_t_ns is absent)
    {s}_valid    ()       bool    latest mode: False marks the stream invalid now and drops the held sample
    {s}_mask     (k,)     bool    packed mode: False drops that row

Sampling, as the dataset's (`EpisodeIndex._read_latest`, `_read_packed`):
- `dt_s` = (t_ns − previous t_ns) / 1e9, 0 at the first tick after `reset()`;
- latest mode: the held sample's age is t_ns − its time (so `None` ages it by each tick's dt_s); the
  stream is valid once a sample has arrived and while its age (float32) is <= `max_age_s`; an
  invalid stream's value and age are 0;
- packed mode: the newest K samples fill the K slots right-aligned (newest in the last slot), with
  `{s}_mask` True on real samples; empty slots hold zeros;
- a sample holding NaN or Inf is rejected (latest: as if `None`, the held sample stays; packed: its
  row is masked out) and counted in `rejected[s]`. The dataset reads logs as recorded, so a log
  holding NaN samples gives NaN there; `seqsense inspect --validate` reports them.

Time only moves forward: `t_ns` before the previous tick, a stamp before the stream's previous stamp,
or a sample after `t_ns` (a stamp later than it, a negative age) is an `ObservationError` naming the
stream and the times.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from seqsense.errors import SeqsenseError

NS_PER_S = 1_000_000_000


class ObservationError(SeqsenseError, ValueError):
    """An observation passed to `step` that does not fit the model (missing, wrong shape or dtype, time going back)."""


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """One input stream as a tick builder needs it: sample shape, image or not, packing and age limit."""

    name: str
    shape: tuple[int, ...]
    image: bool = False
    packed_k: int = 0  # K slots for a packed stream; 0 = latest mode
    max_age_s: float = math.inf

    @classmethod
    def from_manifest(cls, name: str, info: Mapping[str, Any]) -> "StreamSpec":
        """The spec of stream `name` from its entry in an export manifest's `streams`."""
        packed = info.get("mode") == "packed"
        age = info.get("max_age_s")
        return cls(name, tuple(int(x) for x in info["shape"]), info.get("kind") == "image",
                   int(info.get("packed_k") or 0) if packed else 0, math.inf if age is None else float(age))

    @property
    def dtype(self) -> type:
        """uint8 for images, float32 otherwise (what the dataset delivers and the graph reads)."""
        return np.uint8 if self.image else np.float32


def specs_from_config(config, streams: Mapping[str, Any]) -> list[StreamSpec]:
    """Specs of a model config's inputs (`config.inputs`, `.packed`, `.max_age_s`; `streams[s].kind`, `.shape`)."""
    return [StreamSpec(s, tuple(int(x) for x in streams[s].shape), streams[s].kind == "image",
                       int(config.packed.get(s, 0)), float(config.max_age_s)) for s in config.inputs]


class _Slot:
    """One stream's views into the tick arrays and what is held of it between ticks."""

    def __init__(self, spec: StreamSpec, tick: dict[str, np.ndarray], lead: tuple[int, ...]):
        s = spec.name
        self.spec, self.name, self.image, self.k = spec, s, spec.image, spec.packed_k
        self.shape = spec.shape
        self.max_age32 = np.float32(spec.max_age_s)
        self.ageless = math.isinf(spec.max_age_s)  # no age limit: skip the comparison
        kshape = (self.k,) if self.k else ()
        flag = f"{s}_mask" if self.k else f"{s}_valid"
        tick[s] = np.zeros(lead + kshape + spec.shape, spec.dtype)
        tick[f"{s}_age_s"] = np.zeros(lead + kshape, np.float32)
        tick[flag] = np.zeros(lead + kshape, bool)
        self.value = tick[s].reshape(kshape + spec.shape)  # views without the batch axis
        self.age = tick[f"{s}_age_s"].reshape(kshape or (1,))
        self.flag = tick[flag].reshape(kshape or (1,))
        self.key_t, self.key_age, self.key_flag = f"{s}_t_ns", f"{s}_age_s", flag
        self.reset()

    def reset(self) -> None:
        """Nothing held, nothing seen: the state before a log's first tick."""
        self.has = False  # latest mode: a sample is held
        self.held_t = 0  # its time (ns)
        self.last_t: int | None = None  # time of the newest accepted sample, for the order check
        self.clear()

    def clear(self) -> None:
        """Zero the stream's value, age and flag in the tick (an invalid or empty stream)."""
        self.value[...] = 0
        self.age[...] = 0.0
        self.flag[...] = False
        self.empty = True

    def expected(self) -> str:
        """What a sample of this stream must look like, for error messages."""
        lead = f"(k <= {self.k}, {', '.join(map(str, self.shape))})" if self.k else str(self.shape)
        return f"shape {lead} dtype {'uint8' if self.image else 'float32 (any real dtype is cast)'}"

    def array(self, x) -> np.ndarray:
        """`x` as an array of this stream's sample shape ((k, *shape) when packed); ObservationError otherwise."""
        a = np.asarray(x)
        if self.image and a.dtype != np.uint8:
            raise ObservationError(f"Stream '{self.name}': image samples must be uint8 (H, W, C), got dtype {a.dtype}; expected {self.expected()}.")
        if not self.image and a.dtype.kind not in "fiu":
            raise ObservationError(f"Stream '{self.name}': got dtype {a.dtype}, not a real number type; expected {self.expected()}.")
        if self.k:
            ok = a.ndim >= 1 and a.shape[1:] == self.shape
        else:
            ok = a.shape == self.shape or (a.size == 1 and self.shape in ((), (1,)))
        if not ok:
            raise ObservationError(f"Stream '{self.name}': got shape {a.shape}; expected {self.expected()}.")
        return a.reshape((-1,) + self.shape) if self.k else a.reshape(self.shape)

    def check_time(self, ts: int, t: int) -> None:
        """ObservationError unless sample time `ts` is at or before tick `t` and not before the previous sample."""
        if ts > t:
            raise ObservationError(f"Stream '{self.name}': sample time {ts} ns is after the tick time t_ns={t} ns; "
                                   "a tick sees only samples taken at or before it (pass the sample at a later tick).")
        if self.last_t is not None and ts < self.last_t:
            raise ObservationError(f"Stream '{self.name}': sample time {ts} ns goes backwards (previous sample at {self.last_t} ns) "
                                   f"at t_ns={t} ns; pass samples in time order, or call reset() at the start of a new log.")
        self.last_t = ts


class BuiltTicks:
    """What a predictor that samples its ticks with a `TickBuilder` (`self.builder`) reports about them."""

    builder: "TickBuilder"

    @property
    def rejected(self) -> dict[str, int]:
        """Non-finite samples dropped per stream (see `seqsense.ticks`)."""
        return self.builder.rejected

    @property
    def prev_t_ns(self) -> int | None:
        """The previous tick's time (ns), None before the first tick after `reset()`."""
        return self.builder.prev_t_ns


class TickBuilder:
    """Owns the preallocated tick arrays and the causal sampling state of every input stream (module docstring).

    `batch=True` gives every array a leading batch axis of 1 (what an ONNX graph or a torch step reads).
    """

    def __init__(self, specs: Sequence[StreamSpec], batch: bool = False):
        lead = (1,) if batch else ()
        self.specs = list(specs)
        self.inputs = [sp.name for sp in self.specs]
        self.tick: dict[str, np.ndarray] = {"t_ns": np.zeros(lead, np.int64), "dt_s": np.zeros(lead, np.float32)}
        self._t = self.tick["t_ns"].reshape(1)
        self._dt = self.tick["dt_s"].reshape(1)
        self.slots = [_Slot(sp, self.tick, lead) for sp in self.specs]
        self.rejected = {s: 0 for s in self.inputs}  # non-finite samples dropped since construction
        self.prev_t_ns: int | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], batch: bool = True) -> "TickBuilder":
        """The builder of an export's inputs, in the graph's order."""
        rows = manifest["graph"].get("observations") or manifest["graph"]["inputs"]
        names = [r["stream"] for r in rows if r.get("role") == "value"] or list(manifest["streams"])
        return cls([StreamSpec.from_manifest(s, manifest["streams"][s]) for s in names], batch)

    @classmethod
    def from_config(cls, config, streams: Mapping[str, Any], batch: bool = True) -> "TickBuilder":
        """The builder of a model config's inputs (`specs_from_config`)."""
        return cls(specs_from_config(config, streams), batch)

    def reset(self) -> None:
        """Forget every held sample and the previous tick time: the next tick is the first of a new log."""
        self.prev_t_ns = None
        for sl in self.slots:
            sl.reset()

    def _advance(self, t_ns) -> tuple[int, float]:
        t = int(t_ns)
        prev = self.prev_t_ns
        if prev is None:
            dt = 0.0
        elif t < prev:
            raise ObservationError(f"t_ns went backwards ({t} ns after {prev} ns); call reset() at the start of a new log.")
        else:
            dt = (t - prev) / NS_PER_S
        return t, dt

    def build(self, t_ns: int, observations: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Fill the tick arrays for tick time `t_ns` (ns) from `observations`; returns `self.tick` (refilled in place)."""
        t, dt = self._advance(t_ns)
        for sl in self.slots:
            try:
                x = observations[sl.name]
            except KeyError:
                raise ObservationError(f"Missing stream '{sl.name}' at t_ns={t}: pass its latest sample ({sl.expected()}), "
                                       f"or None when no new sample arrived. Inputs: {self.inputs}.") from None
            if sl.k:
                self._packed(sl, x, observations, t)
            else:
                self._latest(sl, x, observations, t)
        self._t[0] = t
        self._dt[0] = dt
        self.prev_t_ns = t
        return self.tick

    def _sample_time(self, sl: _Slot, obs: Mapping[str, Any], t: int) -> int:
        """The sample's time: its stamp, else the tick time minus a given age, else the tick time."""
        ts = obs.get(sl.key_t)
        if ts is not None:
            ts = int(ts)
            sl.check_time(ts, t)
            return ts
        age = obs.get(sl.key_age)
        if age is None:
            return t
        if age < 0:
            raise ObservationError(f"Stream '{sl.name}': negative age {float(age)} s at t_ns={t} ns; a tick sees only samples "
                                   "taken at or before it.")
        return t - int(round(float(age) * NS_PER_S))  # ages are float: no order check to the nanosecond

    def _latest(self, sl: _Slot, x, obs: Mapping[str, Any], t: int) -> None:
        if x is not None:
            a = sl.array(x)
            if not sl.image and not np.isfinite(a).all():
                self.rejected[sl.name] += 1
            elif not bool(obs.get(sl.key_flag, True)):
                sl.has = False
            else:
                ts = self._sample_time(sl, obs, t)
                sl.value[...] = a
                sl.has, sl.held_t, sl.empty = True, ts, False
        if sl.has:
            age = (t - sl.held_t) / NS_PER_S
            if sl.ageless or np.float32(age) <= sl.max_age32:  # the dataset compares float32 ages
                sl.age[0] = age
                sl.flag[0] = True
                return
            sl.has = False
        if not sl.empty:
            sl.clear()

    def _packed(self, sl: _Slot, x, obs: Mapping[str, Any], t: int) -> None:
        if not sl.empty:
            sl.clear()
        if x is None:
            return
        a = sl.array(x)
        k = len(a)
        if k == 0:
            return
        mask = np.ones(k, bool) if obs.get(sl.key_flag) is None else np.asarray(obs[sl.key_flag], bool).reshape(-1)
        stamped = obs.get(sl.key_t) is not None
        if stamped:
            ts = np.asarray(obs[sl.key_t], np.int64).reshape(-1)
        elif obs.get(sl.key_age) is not None:
            age = np.asarray(obs[sl.key_age], np.float64).reshape(-1)
            if np.any(age < 0):
                raise ObservationError(f"Stream '{sl.name}': negative ages {age[age < 0].tolist()} s at t_ns={t} ns; a tick sees "
                                       "only samples taken at or before it.")
            ts = t - np.round(age * NS_PER_S).astype(np.int64)
        else:
            ts = np.full(k, t, np.int64)
        if mask.shape != (k,) or ts.shape != (k,):
            raise ObservationError(f"Stream '{sl.name}': {k} samples but {mask.shape[0]} mask and {ts.shape[0]} time/age entries "
                                   f"at t_ns={t}; they must match.")
        if not sl.image:
            finite = np.isfinite(a.reshape(k, -1)).all(-1)
            self.rejected[sl.name] += int((mask & ~finite).sum())
            mask = mask & finite
        if stamped and mask.any():
            tm = ts[mask]
            if np.any(np.diff(tm) < 0):
                i = int(np.flatnonzero(np.diff(tm) < 0)[0])
                raise ObservationError(f"Stream '{sl.name}': packed sample times go backwards ({int(tm[i + 1])} ns after "
                                       f"{int(tm[i])} ns) at t_ns={t} ns; pass the samples oldest first.")
            sl.check_time(int(tm[0]), t)
            sl.check_time(int(tm[-1]), t)
        a, ts, mask = a[-sl.k:], ts[-sl.k:], mask[-sl.k:]  # the newest K
        lo = sl.k - len(a)
        sl.value[lo:][mask] = a[mask]
        sl.age[lo:][mask] = (t - ts[mask]) / NS_PER_S
        sl.flag[lo:] = mask
        sl.empty = False

    def load_tick(self, tick: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Copy a dataset-style tick (no batch axis) into the tick arrays as it is: no sampling, no hold state.

        `dt_s` is taken from the tick when present, else computed from `t_ns`. This is the adapter
        behind `step_tick`; a log is driven either through it or through `build`, not both.
        """
        t, dt = self._advance(tick["t_ns"]) if "t_ns" in tick else (self.prev_t_ns or 0, 0.0)
        for sl in self.slots:
            keys = (sl.name, sl.key_age, sl.key_flag)
            missing = [k for k in keys if k not in tick]
            if missing:
                raise ObservationError(f"Tick lacks {missing} of stream '{sl.name}'; a dataset tick holds {list(keys)} "
                                       f"({sl.expected()}). For raw samples use step(t_ns, observations).")
            try:
                sl.value[...] = np.asarray(tick[sl.name]).reshape(sl.value.shape)
                sl.age[...] = np.asarray(tick[sl.key_age]).reshape(sl.age.shape)
                sl.flag[...] = np.asarray(tick[sl.key_flag]).reshape(sl.flag.shape)
            except ValueError:
                raise ObservationError(f"Stream '{sl.name}': tick value of shape {np.shape(tick[sl.name])}; expected "
                                       f"{sl.expected()}.") from None
            sl.empty = False
        self._t[0] = t
        self._dt[0] = float(tick["dt_s"]) if "dt_s" in tick else dt
        self.prev_t_ns = t
        return self.tick
