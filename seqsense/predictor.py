"""The streaming predictor contract every model, wrapper and exported runtime follows.

A robot loop calls `reset()` at the start of a log, then `step(tick)` once per clock tick, in time
order, with only what is known at that tick. A *tick* is a dict of numpy arrays, exactly one time
step of what `seqsense.dataset` delivers for a window (the window's T axis removed):

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

`step` returns a `Prediction`.
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
        """Forget all state: the next `step` is the first tick of a new log."""

    def step(self, tick: dict[str, np.ndarray]) -> Prediction:
        """Consume one tick's inputs and return the prediction for that tick."""
