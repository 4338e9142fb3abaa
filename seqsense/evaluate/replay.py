"""Replay held-out episodes through a streaming predictor exactly as a robot loop would, and score them.

`replay_episode` resets the predictor and feeds it one tick at a time (causal inputs only, timing
each `step`); `score_episode` turns the replayed predictions into metrics and drives the machine
consumers that apply to the log's target; `evaluate_predictor` does both over many episodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time

import numpy as np

from seqsense.dataset import WindowDataset
from seqsense.evaluate import consumers as consumer_lib
from seqsense.evaluate.metrics import inclination_error_deg, sequence_metrics
from seqsense.log.format import NS_PER_S

TARGET_KEYS = ("target", "target_valid")


@dataclasses.dataclass
class Replay:
    """One episode replayed through a predictor: times, truth, predictions and step latencies."""

    file: str
    episode: str
    t_s: np.ndarray  # (N,)
    y_true: np.ndarray  # (N, D), or (N,) labels
    valid: np.ndarray  # (N,) bool
    mean: np.ndarray  # (N, D), or (N,) labels
    var: np.ndarray | None  # (N, D)
    probs: np.ndarray | None  # (N, K)
    step_s: np.ndarray  # (N,)


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread: one tick is too small to split, and idle threads spinning on a busy
    machine made single-sample steps 20x slower in our measurements."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def replay_episode(predictor, dataset: WindowDataset, k: int) -> Replay:
    """Reset `predictor` and step it through every tick of episode k of `dataset` (one thread)."""
    with single_thread():
        return _replay(predictor, dataset, k)


def _replay(predictor, dataset: WindowDataset, k: int) -> Replay:
    predictor.reset()
    t, y, valid, means, variances, probs, step_s = [], [], [], [], [], [], []
    for tick in dataset.iter_ticks(k):
        inputs = {key: v for key, v in tick.items() if key not in TARGET_KEYS}
        t0 = time.perf_counter()
        pred = predictor.step_tick(inputs)
        step_s.append(time.perf_counter() - t0)
        t.append(tick["t_ns"])
        y.append(tick["target"])
        valid.append(tick["target_valid"])
        means.append(np.asarray(pred.mean))
        variances.append(None if pred.var is None else np.asarray(pred.var))
        probs.append(None if pred.probs is None else np.asarray(pred.probs))
    f, e = dataset.episodes[k]
    return Replay(
        file=f,
        episode=e,
        t_s=np.asarray(t, np.int64) / NS_PER_S,
        y_true=np.asarray(y),
        valid=np.asarray(valid, bool),
        mean=np.asarray(means),
        var=None if variances[0] is None else np.asarray(variances),
        probs=None if probs[0] is None else np.asarray(probs),
        step_s=np.asarray(step_s),
    )


def _stream_at(episode, name: str, t_s: np.ndarray) -> np.ndarray | None:
    """A vector stream of the episode linearly interpolated at times t_s (None if absent)."""
    if not episode.has_stream(name):
        return None
    st = episode.stream(name)
    x = st.data[()].reshape(len(st), -1).astype(np.float64)
    ts = st.t / NS_PER_S
    return np.stack([np.interp(t_s, ts, x[:, d], left=np.nan, right=np.nan) for d in range(x.shape[1])], 1)


def _event_times(episode, t_s: np.ndarray) -> np.ndarray:
    """Times after which a predictor must recover: slide cuts and the ends of occlusions."""
    times = []
    if episode.has_stream("truth/cut"):
        times.append(episode.stream("truth/cut").t / NS_PER_S)
    if episode.has_stream("truth/occluded"):
        st = episode.stream("truth/occluded")
        occ = st.data[()].astype(int)
        ends = np.flatnonzero((occ[:-1] == 1) & (occ[1:] == 0)) + 1
        times.append(st.t[ends] / NS_PER_S)
    if not times:
        return np.zeros(0)
    ev = np.sort(np.concatenate(times))
    return ev[(ev > t_s[0]) & (ev <= t_s[-1])]


def consumer_plan(provenance: dict, target: str, episode) -> dict[str, tuple[dict, str | None]]:
    """Which consumers apply to this log and target: name -> (config overrides, truth stream or None).

    The tracking controller follows any continuous target. The safety monitor needs the scenario's
    `hazard` (clearance to a wall or point measured on the target's fields). The intercept planner
    needs the object's current position (`truth/position`): it extrapolates a position target, or
    uses a `future_position` target as the aim point directly.
    """
    plan: dict[str, tuple[dict, str | None]] = {"tracking": ({}, None)}
    hazard = provenance.get("hazard")
    if isinstance(hazard, dict) and hazard.get("stream", provenance.get("target")) == target:
        hz = {k: v for k, v in hazard.items() if k in ("kind", "axis", "value", "side", "position", "radius")}
        plan["safety"] = ({"hazard": hz, "threshold": float(hazard.get("threshold", 0.1))}, None)
    knobs = provenance.get("knobs", {})
    if episode.has_stream("truth/position") and target.endswith("future_position"):
        horizon = float(knobs.get("horizon_s", 0.5))
        plan["intercept"] = ({"prediction_is_future": True, "horizon_s": horizon, "every_s": 0.5}, "truth/position")
    elif target.endswith("position") and "orientation" not in target:
        plan["intercept"] = ({"horizon_s": 0.5, "every_s": 0.5}, None)
    return plan


def score_episode(rep: Replay, dataset: WindowDataset, k: int, consumer_overrides: dict | None = None) -> dict:
    """Metrics and consumer costs of one replayed episode, as a flat dict of floats."""
    episode = dataset.index(k).episode
    provenance = episode.log.provenance
    target = dataset.spec.target
    discrete = rep.y_true.ndim == 1
    events = _event_times(episode, rep.t_s)
    kwargs = dict(valid=rep.valid, event_t_s=events if len(events) else None, step_times_s=rep.step_s)
    if discrete:
        row = sequence_metrics(rep.t_s, rep.y_true.astype(float), rep.mean.astype(float), labels_true=rep.y_true, labels_pred=rep.mean, **kwargs)
        return {"file": rep.file, "episode": rep.episode, **row}
    optimal = provenance.get("optimal")
    y_ref = _stream_at(episode, optimal, rep.t_s) if optimal else None
    fields = dataset.index(k).streams[target].fields
    row = sequence_metrics(rep.t_s, rep.y_true, rep.mean, rep.var, y_ref=y_ref, field_names=fields, **kwargs)
    if is_direction_target(target, rep.y_true):
        row["inclination_deg"] = inclination_error_deg(rep.y_true, rep.mean, rep.valid)
    row.update(consumer_summaries(rep, dataset, k, consumer_overrides))
    return {"file": rep.file, "episode": rep.episode, **row}


def is_direction_target(target: str, y_true: np.ndarray) -> bool:
    """Whether a target is a 3-D direction scored by its inclination error (a gravity-direction stream)."""
    return "gravity" in target.split("/")[-1] and y_true.ndim == 2 and y_true.shape[1] == 3


def consumer_summaries(rep: Replay, dataset: WindowDataset, k: int, consumer_overrides: dict | None = None,
                       only: str | None = None) -> dict:
    """The machine consumers that apply to episode k driven by a replay: {"<consumer>.<key>": value}
    (just consumer `only` when given), without the other metrics of `score_episode`."""
    episode = dataset.index(k).episode
    row = {}
    for name, (overrides, truth_stream) in consumer_plan(episode.log.provenance, dataset.spec.target, episode).items():
        if only is not None and name != only:
            continue
        merged = {**overrides, **(consumer_overrides or {}).get(name, {})}
        consumer = consumer_lib.make_consumer(name, **{k2: v for k2, v in merged.items()})
        truth = _stream_at(episode, truth_stream, rep.t_s) if truth_stream else rep.y_true
        truth = np.where(rep.valid[:, None], truth, np.nan)
        summary = consumer_lib.run(consumer, rep.t_s, rep.mean, truth, rep.var)
        row.update({f"{name}.{key}": float(v) for key, v in summary.items()})
    return row


def evaluate_predictor(predictor, dataset: WindowDataset, consumer_overrides: dict | None = None, keep_replays: int = 1, progress=None):
    """Replay and score every episode of `dataset`; returns (rows, first `keep_replays` replays)."""
    rows, kept = [], []
    for k in range(len(dataset.episodes)):
        rep = replay_episode(predictor, dataset, k)
        rows.append(score_episode(rep, dataset, k, consumer_overrides))
        if len(kept) < keep_replays:
            kept.append(rep)
        if progress is not None:
            progress.update(1)
    return rows, kept


def mean_row(rows: list[dict]) -> dict:
    """Mean over episodes of every numeric column (NaN-aware)."""
    keys = []
    for r in rows:
        keys += [k for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys]
    out = {}
    for key in keys:
        vals = np.asarray([r.get(key, math.nan) for r in rows], float)
        out[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    return out
