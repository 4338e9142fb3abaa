"""Tests of the jitter-for-lag wrappers on tiny fake streaming predictors."""

import math

import numpy as np
import pytest

from seqsense.evaluate import metrics as M
from seqsense.evaluate.wrappers import (
    ExponentialSmoothing,
    TemporalEnsemble,
    exponential_smoothing,
    temporal_ensemble,
)
from seqsense.predictor import Prediction, StreamingPredictor


class Replay:
    """A fake predictor that replays stored outputs (means (N, D) or chunks (N, H, D)) one per tick."""

    def __init__(self, mean, var=None, probs=None):
        self.mean, self.var, self.probs = mean, var, probs
        self.i, self.seen = 0, []

    def reset(self):
        self.i, self.seen = 0, []

    def step(self, t_ns, observations):
        self.seen.append(("step", int(t_ns)))
        return self._next()

    def step_tick(self, tick):
        self.seen.append(("step_tick", int(tick["t_ns"])))
        return self._next()

    def _next(self):
        i, self.i = self.i, self.i + 1
        return Prediction(self.mean[i], None if self.var is None else self.var[i],
                          None if self.probs is None else self.probs[i])


def _drive(predictor, t, form="tick"):
    """Reset and step `predictor` at times t (s): through `step_tick` with dataset ticks, or `step` with raw observations."""
    predictor.reset()
    t_ns = np.round(np.asarray(t) * 1e9).astype(np.int64)
    if form == "tick":
        out = [predictor.step_tick({"t_ns": ti, "dt_s": np.float32(dt)}) for ti, dt in zip(t_ns, np.diff(t, prepend=t[0]))]
    else:
        out = [predictor.step(int(ti), {}) for ti in t_ns]
    mean = np.stack([p.mean for p in out])
    var = None if out[0].var is None else np.stack([p.var for p in out])
    return mean, var, out


@pytest.fixture
def jittery():
    rng = np.random.default_rng(0)
    t = np.arange(400) * 0.02
    y = np.stack([np.sin(2 * t), np.cos(1.3 * t)], axis=1)
    p = y + 0.05 * rng.standard_normal(y.shape)
    return t, y, p, np.full_like(p, 0.05**2)


@pytest.mark.parametrize("make", [lambda p: ExponentialSmoothing(p, alpha=0.3),
                                  lambda p: ExponentialSmoothing(p, tau_s=0.05),
                                  lambda p: TemporalEnsemble(p, k=8, m=0.1)])
@pytest.mark.parametrize("form", ["tick", "raw"])
def test_wrappers_trade_jitter_for_lag(jittery, make, form):
    t, y, p, v = jittery
    wrapped = make(Replay(p, v))
    assert isinstance(wrapped, StreamingPredictor)
    mean, var, _ = _drive(wrapped, t, form)
    assert M.tv_ratio(y, mean) < 0.6 * M.tv_ratio(y, p)
    assert M.flicker(y, mean) < M.flicker(y, p)
    assert M.lag_s(t, y, mean) > M.lag_s(t, y, p) == 0.0
    assert var.shape == p.shape and (var > 0).all()


@pytest.mark.parametrize("form", ["tick", "raw"])
def test_streaming_equals_offline(jittery, form):
    t, _, p, v = jittery
    for wrapper, offline in [(ExponentialSmoothing(Replay(p, v), alpha=0.3), exponential_smoothing(p, 0.3, var=v)),
                             (ExponentialSmoothing(Replay(p, v), tau_s=0.1), exponential_smoothing(p, tau_s=0.1, t_s=t, var=v)),
                             (TemporalEnsemble(Replay(p, v), k=5, m=0.5), temporal_ensemble(p, 5, 0.5, var=v))]:
        mean, var, _ = _drive(wrapper, t, form)
        # the tick carries dt_s as float32, so the tau form agrees to float32 precision
        np.testing.assert_allclose(mean, offline[0], atol=1e-6)
        np.testing.assert_allclose(var, offline[1], atol=1e-6)
        # each form reaches the inner predictor as the same form, at the same times
        want = "step_tick" if form == "tick" else "step"
        assert wrapper.predictor.seen == [(want, int(round(ti * 1e9))) for ti in t]


def test_tau_matches_alpha_on_regular_ticks(jittery):
    t, _, p, _ = jittery
    alpha = 1 - math.exp(-0.02 / 0.1)
    np.testing.assert_allclose(exponential_smoothing(p, tau_s=0.1, t_s=t)[0], exponential_smoothing(p, alpha)[0])


def test_variance_of_a_constant_input_is_kept_and_spread_adds():
    n = 50
    const = np.ones((n, 1))
    var = np.full((n, 1), 0.04)
    for offline in (exponential_smoothing(const, 0.2, var=var), temporal_ensemble(const, 4, 0.3, var=var)):
        np.testing.assert_allclose(offline[0], 1.0)
        np.testing.assert_allclose(offline[1], 0.04)
    alt = (-1.0) ** np.arange(n)[:, None]  # ±1 alternation: equal-weight mixture of two → spread 1
    mean, v = temporal_ensemble(alt, k=2, m=0.0, var=var)
    np.testing.assert_allclose(mean[1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(v[1:], 1.04)
    assert exponential_smoothing(alt, 0.5)[1] is None  # no variance in, none out


def test_ensemble_of_exact_chunks_is_exact_and_reset_restarts():
    t = np.arange(60) * 0.1
    y = np.sin(t)
    h = 4
    chunks = np.stack([np.r_[y, np.full(h, y[-1])][i:i + h, None] for i in range(60)])  # (N, H, 1)
    wrapped = TemporalEnsemble(Replay(chunks), k=6, m=0.2)
    mean, var, _ = _drive(wrapped, t)
    np.testing.assert_allclose(mean[:, 0], y, atol=1e-12)
    assert var is None
    again, _, _ = _drive(wrapped, t)  # _drive calls reset(): the replay and the buffer restart
    np.testing.assert_allclose(again, mean)


def test_probs_are_averaged_and_sum_to_one():
    n = 20
    probs = np.tile([[0.9, 0.1], [0.1, 0.9]], (n // 2, 1))  # flickering classifier
    t = np.arange(n) * 0.1
    for w in (ExponentialSmoothing(Replay(np.zeros((n, 1)), probs=probs), alpha=0.5),
              TemporalEnsemble(Replay(np.zeros((n, 1)), probs=probs), k=4, m=0.0)):
        _, _, out = _drive(w, t)
        pr = np.stack([o.probs for o in out])
        np.testing.assert_allclose(pr.sum(axis=1), 1.0)
        assert np.abs(np.diff(pr[5:, 0])).max() < 0.8 * 0.8  # flips are damped


@pytest.mark.parametrize("kwargs,match", [({"alpha": 0.0}, "alpha"), ({"alpha": 0.5, "tau_s": 1.0}, "exactly one"),
                                          ({"tau_s": -1.0}, "tau_s"), ({}, "exactly one")])
def test_bad_smoothing_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExponentialSmoothing(Replay(np.zeros((1, 1))), **kwargs)


def test_bad_ensemble_arguments():
    with pytest.raises(ValueError, match="k must be >= 1"):
        TemporalEnsemble(Replay(np.zeros((1, 1))), k=0)
    with pytest.raises(ValueError, match="m must be >= 0"):
        temporal_ensemble(np.zeros((3, 1)), k=2, m=-1.0)
    with pytest.raises(ValueError, match="needs t_s"):
        exponential_smoothing(np.zeros((3, 1)), tau_s=1.0)
