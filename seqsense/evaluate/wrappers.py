"""Wrappers that trade jitter for lag on any `StreamingPredictor`, and their offline array forms.

Both wrappers output a weighted average of recent predictions, μ = Σ w_i μ_i with Σ w_i = 1.
Variance is that of the moment-matched mixture of the averaged Gaussians,
    σ² = Σ w_i (σ²_i + μ_i²) − μ²  =  Σ w_i σ²_i + Σ w_i (μ_i − μ)²,
i.e. the averaged variance (exact when the errors are fully correlated, an upper bound on the
variance of a weighted mean otherwise) plus the spread of the averaged means, so a jittery or
moving input widens the output's interval instead of hiding behind the averaging. Wrappers
output no variance when the inner predictor gives none. Class probabilities are averaged with
the same weights.

Both follow the predictor contract (`seqsense.predictor`): `step(t_ns, observations)` passes the
raw observations to the inner predictor's `step`, and `step_tick(tick)` a dataset tick to its
`step_tick`; the smoothing is the same.

ExponentialSmoothing: μ_k = α_k x_k + (1 − α_k) μ_{k−1}, α_k = alpha, or α_k = 1 − exp(−dt_k / tau_s)
with dt_k the time since the previous tick (from successive `t_ns` in `step`, the tick's `dt_s` in
`step_tick`; α = 1 at the first tick); the second moment is smoothed the same way.
TemporalEnsemble (ACT-style): keeps the last k predictions, weights w ∝ exp(−m · age) with age in
ticks (0 = newest). For a chunk predictor (mean of shape (H, D): predictions for this tick and the
next H − 1) the prediction made `age` ticks ago contributes its row `age`, as in ACT; for a
single-step predictor (mean (D,)) it averages the recent outputs themselves. (ACT indexes its
weights from the oldest prediction; with m ≥ 0 here newer predictions weigh more.)
"""

from __future__ import annotations

import collections
import math

import numpy as np

from seqsense.predictor import Prediction, StreamingPredictor

NS_PER_S = 1_000_000_000


def _check_alpha(alpha, tau_s) -> None:
    if (alpha is None) == (tau_s is None):
        raise ValueError(f"give exactly one of alpha (in (0, 1]) or tau_s (> 0); got alpha={alpha}, tau_s={tau_s}.")
    if alpha is not None and not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1]; got {alpha}.")
    if tau_s is not None and not tau_s > 0:
        raise ValueError(f"tau_s must be > 0 seconds; got {tau_s}.")


def _alpha(alpha, tau_s, dt_s: float) -> float:
    return alpha if alpha is not None else 1.0 - math.exp(-max(dt_s, 0.0) / tau_s)


class ExponentialSmoothing:
    """Wraps a predictor and owns the running first and second moments of its smoothed output."""

    def __init__(self, predictor: StreamingPredictor, alpha: float | None = None, tau_s: float | None = None):
        _check_alpha(alpha, tau_s)
        self.predictor, self.alpha, self.tau_s = predictor, alpha, tau_s
        self.reset()

    def reset(self) -> None:
        """Reset the inner predictor and forget the smoothed state."""
        self.predictor.reset()
        self._m1 = self._m2 = self._probs = None
        self._prev_t_ns: int | None = None

    def step(self, t_ns: int, observations: dict) -> Prediction:
        """Smooth the inner prediction at tick time `t_ns` (α from alpha, or from the time since the previous tick and tau_s)."""
        p = self.predictor.step(t_ns, observations)
        t = int(t_ns)
        dt = 0.0 if self._prev_t_ns is None else (t - self._prev_t_ns) / NS_PER_S
        self._prev_t_ns = t
        return self._smooth(p, dt)

    def step_tick(self, tick: dict) -> Prediction:
        """Internal adapter: smooth the inner prediction of a dataset tick (α from alpha, or from its dt_s and tau_s)."""
        return self._smooth(self.predictor.step_tick(tick), float(tick.get("dt_s", 0.0)))

    def _smooth(self, p: Prediction, dt_s: float) -> Prediction:
        x = np.asarray(p.mean, dtype=np.float64)
        a = 1.0 if self._m1 is None else _alpha(self.alpha, self.tau_s, dt_s)
        m2_in = x**2 + (np.asarray(p.var, dtype=np.float64) if p.var is not None else 0.0)
        if self._m1 is None:
            self._m1, self._m2 = x.copy(), m2_in
        else:
            self._m1 = a * x + (1.0 - a) * self._m1
            self._m2 = a * m2_in + (1.0 - a) * self._m2
        if p.probs is not None:
            pr = np.asarray(p.probs, dtype=np.float64)
            self._probs = pr.copy() if self._probs is None else a * pr + (1.0 - a) * self._probs
        var = None if p.var is None else np.maximum(self._m2 - self._m1**2, 0.0)
        return Prediction(self._m1.copy(), var, None if self._probs is None else self._probs.copy())


def ensemble_weights(k: int, m: float) -> np.ndarray:
    """Unnormalized ACT-style weights exp(−m · age) for ages 0 … k−1 (age 0 = newest)."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}.")
    if not m >= 0:
        raise ValueError(f"m must be >= 0; got {m}.")
    return np.exp(-m * np.arange(k))


class TemporalEnsemble:
    """Wraps a predictor and owns the buffer of its last k predictions (ACT temporal ensembling)."""

    def __init__(self, predictor: StreamingPredictor, k: int = 5, m: float = 0.5):
        self.weights = ensemble_weights(k, m)
        self.predictor, self.k, self.m = predictor, k, m
        self.reset()

    def reset(self) -> None:
        """Reset the inner predictor and empty the buffer."""
        self.predictor.reset()
        self._buf: collections.deque[Prediction] = collections.deque(maxlen=self.k)

    def step(self, t_ns: int, observations: dict) -> Prediction:
        """Add the inner prediction at tick time `t_ns` to the buffer and return the weighted ensemble."""
        return self._ensemble(self.predictor.step(t_ns, observations))

    def step_tick(self, tick: dict) -> Prediction:
        """Internal adapter: the same on a dataset tick."""
        return self._ensemble(self.predictor.step_tick(tick))

    def _ensemble(self, new: Prediction) -> Prediction:
        self._buf.appendleft(new)  # index = age in ticks
        means, variances, probs, w = [], [], [], []
        for age, p in enumerate(self._buf):
            mean = np.asarray(p.mean, dtype=np.float64)
            # a chunk (H, D): row `age` is that prediction's guess for the current tick
            row = age if mean.ndim == 2 else None
            if row is not None and row >= mean.shape[0]:
                continue
            means.append(_row(p.mean, row))
            variances.append(_row(p.var, row))
            probs.append(_row(p.probs, row))
            w.append(self.weights[age])
        w = np.asarray(w) / np.sum(w)
        return _mixture(w, means, variances, probs)


def _row(a, row: int | None):
    """Array a as float64, or its row `row` when given (None passes through)."""
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    return a if row is None else a[row]


def _mixture(w: np.ndarray, means, variances, probs) -> Prediction:
    """Moment-matched mixture Σ w_i N(μ_i, σ²_i) (variance None if any input lacks one)."""
    mu_i = np.stack(means)
    mu = np.tensordot(w, mu_i, axes=1)
    var = None
    if all(v is not None for v in variances):
        var = np.maximum(np.tensordot(w, np.stack(variances) + mu_i**2, axes=1) - mu**2, 0.0)
    pr = np.tensordot(w, np.stack(probs), axes=1) if all(p is not None for p in probs) else None
    return Prediction(mu, var, pr)


# ---- offline forms (arrays of shape (N, D); same numbers as the streaming wrappers) -------------

def exponential_smoothing(y, alpha: float | None = None, tau_s: float | None = None, t_s=None, var=None):
    """Offline exponential smoothing of predictions y (N, D); returns (mean, var or None)."""
    _check_alpha(alpha, tau_s)
    y = np.asarray(y, dtype=np.float64)
    if tau_s is not None:
        if t_s is None:
            raise ValueError("tau_s needs t_s, the tick times in seconds.")
        dt = np.diff(np.asarray(t_s, dtype=np.float64), prepend=np.nan)
    m1, m2 = np.empty_like(y), np.empty_like(y)
    m2_in = y**2 + (0.0 if var is None else np.asarray(var, dtype=np.float64))
    m1[0], m2[0] = y[0], m2_in[0]
    for i in range(1, len(y)):
        a = _alpha(alpha, tau_s, dt[i] if tau_s is not None else 0.0)
        m1[i] = a * y[i] + (1.0 - a) * m1[i - 1]
        m2[i] = a * m2_in[i] + (1.0 - a) * m2[i - 1]
    return m1, (None if var is None else np.maximum(m2 - m1**2, 0.0))


def temporal_ensemble(y, k: int = 5, m: float = 0.5, var=None):
    """Offline temporal ensembling of single-step predictions y (N, D); returns (mean, var or None)."""
    w_all = ensemble_weights(k, m)
    y = np.asarray(y, dtype=np.float64)
    v = None if var is None else np.asarray(var, dtype=np.float64)
    mean, out_var = np.empty_like(y), None if v is None else np.empty_like(y)
    for i in range(len(y)):
        n = min(k, i + 1)
        w = w_all[:n] / w_all[:n].sum()
        ys = y[i - n + 1: i + 1][::-1]  # newest first, index = age
        mean[i] = np.tensordot(w, ys, axes=1)
        if v is not None:
            out_var[i] = np.maximum(np.tensordot(w, v[i - n + 1: i + 1][::-1] + ys**2, axes=1) - mean[i] ** 2, 0.0)
    return mean, out_var
