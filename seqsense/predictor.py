"""The streaming predictor contract every model, wrapper and exported runtime follows.

**Robot-facing: `step(t_ns, observations)`.** A robot loop calls `reset()` at the start of a log,
then, once per clock tick and in time order, `step(t_ns, observations) -> Prediction` with the tick
time (int nanoseconds) and what arrived since the previous tick:

    observations[s]         the newest sample of input stream s ((*shape); uint8 H×W×C for images),
                            or, for a stream packed at high rate, all samples since the previous
                            tick ((k, *shape), oldest first); None when nothing arrived
    observations[s_t_ns]    optional: when that sample (those k samples) was taken, int ns; its age
                            is t_ns minus that time (default: taken at the tick)

The predictor does the causal sampling the dataset did in training, with one shared numpy
implementation (`seqsense.ticks.TickBuilder`): dt_s between ticks, the held sample and its age,
validity, `max_age_s`, packing the newest K with a mask, rejecting NaN/Inf samples. The torch
predictor (`model.predictor()`, eager or `compile=True`), the exported runtime
(`seqsense.runtime.load`) and the wrappers (`seqsense.evaluate.wrappers`) all take the same loop:

    pred.reset()
    for t_ns, obs in sensor_loop():
        p = pred.step(t_ns, obs)        # p.mean (D,), p.var (D,) or p.probs (K,)

**Internal adapter: `step_tick(tick)`.** Replay, evaluation and the export check already hold the
dataset's ticks, so every predictor also takes one as it is, without sampling again. A *tick* is a
dict of numpy arrays, exactly one time step of what `seqsense.dataset` delivers for a window (the
window's T axis removed):

    t_ns            ()          int64   tick time
    dt_s            ()          float32 time since the previous tick (0 at the first tick)
    {s}             (*shape)    latest sample of input stream s at or before the tick
                                (uint8 H×W×C for images, float32 otherwise)
    {s}_age_s       ()          float32 seconds since that sample was taken
    {s}_valid       ()          bool    False when stream s has no sample yet at this tick
  for streams packed at high rate (all samples since the previous tick, K at most):
    {s}             (K, *shape)
    {s}_age_s       (K,)
    {s}_mask        (K,)        bool    True where the slot holds a real sample

Other keys (e.g. `target`) are ignored. Both forms return a `Prediction`; a log is driven through one
of them, not a mix.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np


@dataclasses.dataclass
class Prediction:
    """One tick's output: mean (D,) and variance (D,) for continuous targets, probs (K,) for discrete."""

    mean: np.ndarray
    var: np.ndarray | None = None
    probs: np.ndarray | None = None


@runtime_checkable
class StreamingPredictor(Protocol):
    """Anything that can be driven tick by tick like a robot loop drives perception."""

    def reset(self) -> None:
        """Forget all state: the next step is the first tick of a new log."""

    def step(self, t_ns: int, observations: dict) -> Prediction:
        """Consume the samples that arrived by tick time `t_ns` (ns) and return the prediction for that tick."""

    def step_tick(self, tick: dict[str, np.ndarray]) -> Prediction:
        """Internal adapter: consume one dataset-style tick as it is and return the prediction for that tick."""
