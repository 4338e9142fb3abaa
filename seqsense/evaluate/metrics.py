"""Per-sequence metrics of a streaming predictor's output against the truth.

Arrays: `t_s (N,)` tick times in seconds, `y_true (N, D)` truth, `y_pred (N, D)` predicted mean,
`var (N, D)` predicted variance, `valid (N,)` ticks to score (default: ticks whose truth and
prediction are finite). 1-D arrays are read as D = 1. Δ is the first difference over ticks; a
difference is used only where every tick it spans is valid. e = y − ŷ, σ² = var.

Accuracy
    RMSE_d = sqrt(mean_t e²_td)            MAE_d = mean_t |e_td|
    MSE ratio = mean(e²) / mean(e_ref²)    (e_ref: the stored optimal filter's error; 1 = optimal)
Uncertainty (Gaussian predictive N(ŷ, σ²), averaged over ticks and fields unless stated)
    NLL   = ½ log(2πσ²) + e² / (2σ²)
    coverage(p) = fraction of |e| ≤ z_p σ,  z_p = Φ⁻¹((1 + p) / 2)
    CRPS  = σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π],  z = e / σ
    NEES  = mean_t Σ_d e²_td / σ²_td       (≈ D when calibrated; diagonal Σ)
Temporal consistency
    flicker F = sqrt(mean_t ||Δŷ_t − Δy_t||²)
    TVR  = Σ_t ||Δŷ_t||₁ / Σ_t ||Δy_t||₁   (> 1 jitter, < 1 over-smoothing)
    jerk ratio = Σ_t ||Δ³ŷ_t||² / Σ_t ||Δ³y_t||²
    lag τ* = k* · median(Δt),  k* = argmin_{0 ≤ k ≤ K} RMSE(ŷ[t + k], y[t]),  K = max_lag_s / median(Δt)
    recovery time: per event, seconds until ||e_t|| first falls back to ≤ threshold
Discrete outputs (integer labels)
    excess flip rate = flips(ŷ) / duration − flips(y) / duration     (Hz)
    transition latency: per true transition, seconds until ŷ adopts the new class
    edit score = 100 · (1 − Levenshtein(segments(ŷ), segments(y)) / max(#segments))
Ratios and per-event figures are NaN where they have no denominator or no event.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri

_LOG_2PI = math.log(2.0 * math.pi)


def _as_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, D); got shape {arr.shape}.")
    return arr


def _prepare(y_true, y_pred, valid=None, var=None):
    """Cast to (N, D) float64 arrays and build the tick mask (finite truth and prediction)."""
    yt, yp = _as_2d(y_true, "y_true"), _as_2d(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true shape {yt.shape} and y_pred shape {yp.shape} differ; both must be (N, D).")
    mask = np.isfinite(yt).all(axis=1) & np.isfinite(yp).all(axis=1)
    v = None
    if var is not None:
        v = _as_2d(var, "var")
        if v.shape != yt.shape:
            raise ValueError(f"var shape {v.shape} must match y_true shape {yt.shape}.")
        mask &= np.isfinite(v).all(axis=1)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (yt.shape[0],):
            raise ValueError(f"valid must have shape ({yt.shape[0]},); got {valid.shape}.")
        mask &= valid
    return yt, yp, mask, v


def _diff(x: np.ndarray, mask: np.ndarray, order: int = 1):
    """order-th difference over ticks and the mask of differences whose ticks are all valid."""
    for _ in range(order):
        x = np.diff(x, axis=0)
        mask = mask[1:] & mask[:-1]
    return x, mask


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


# ---- accuracy -------------------------------------------------------------------------------

def rmse(y_true, y_pred, valid=None) -> np.ndarray:
    """Root mean squared error per field, shape (D,)."""
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    if not m.any():
        return np.full(yt.shape[1], math.nan)
    return np.sqrt(np.mean((yp[m] - yt[m]) ** 2, axis=0))


def mae(y_true, y_pred, valid=None) -> np.ndarray:
    """Mean absolute error per field, shape (D,)."""
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    if not m.any():
        return np.full(yt.shape[1], math.nan)
    return np.mean(np.abs(yp[m] - yt[m]), axis=0)


def mse_ratio(y_true, y_pred, y_ref, valid=None) -> float:
    """MSE of y_pred over MSE of a reference (the optimal filter) on the same ticks; 1 = optimal."""
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    _, yr, m_ref, _ = _prepare(y_true, y_ref, valid)
    m &= m_ref
    if not m.any():
        return math.nan
    return _ratio(np.mean((yp[m] - yt[m]) ** 2), np.mean((yr[m] - yt[m]) ** 2))


# ---- uncertainty ----------------------------------------------------------------------------

def _gauss(y_true, y_pred, var, valid):
    yt, yp, m, v = _prepare(y_true, y_pred, valid, var)
    if (v[m] <= 0).any():
        raise ValueError(f"var must be > 0 on scored ticks; minimum is {v[m].min():g}.")
    return yp[m] - yt[m], v[m]


def gaussian_nll(y_true, y_pred, var, valid=None) -> float:
    """Mean Gaussian negative log-likelihood per tick and field (nats)."""
    e, v = _gauss(y_true, y_pred, var, valid)
    return float(np.mean(0.5 * (_LOG_2PI + np.log(v) + e**2 / v))) if e.size else math.nan


def coverage(y_true, y_pred, var, level: float = 0.9, valid=None) -> float:
    """Fraction of truths inside the central `level` Gaussian interval (≈ level when calibrated)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"coverage level must be in (0, 1); got {level}.")
    e, v = _gauss(y_true, y_pred, var, valid)
    z = ndtri(0.5 * (1.0 + level))
    return float(np.mean(np.abs(e) <= z * np.sqrt(v))) if e.size else math.nan


def crps_gaussian(y_true, y_pred, var, valid=None) -> float:
    """Mean closed-form CRPS of Gaussian predictions (same units as y)."""
    e, v = _gauss(y_true, y_pred, var, valid)
    if not e.size:
        return math.nan
    s = np.sqrt(v)
    z = e / s
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return float(np.mean(s * (z * (2.0 * ndtr(z) - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))))


def nees(y_true, y_pred, var, valid=None) -> float:
    """Mean normalized estimation error squared with diagonal covariance (≈ D when calibrated)."""
    e, v = _gauss(y_true, y_pred, var, valid)
    return float(np.mean(np.sum(e**2 / v, axis=1))) if e.size else math.nan


def inclination_error_deg(y_true, y_pred, valid=None) -> float:
    """RMS angle in degrees between predicted and true 3-D directions (e.g. gravity in the body
    frame: the inclination error); each vector is normalized first, so only the direction counts."""
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    if yt.shape[1] != 3:
        raise ValueError(f"inclination error needs 3-D directions; got D={yt.shape[1]}.")
    a, b = yt[m], yp[m]
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    if not ok.any():
        return math.nan
    cos = np.clip(np.sum(a[ok] * b[ok], axis=1) / (na[ok] * nb[ok]), -1.0, 1.0)
    return float(np.degrees(np.sqrt(np.mean(np.arccos(cos) ** 2))))


# ---- temporal consistency -------------------------------------------------------------------

def flicker(y_true, y_pred, valid=None) -> float:
    """sqrt(mean ||Δŷ − Δy||²): frame-to-frame change the truth does not have."""
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    d, dm = _diff(yp - yt, m)
    return float(np.sqrt(np.mean(np.sum(d[dm] ** 2, axis=1)))) if dm.any() else math.nan


def tv_ratio(y_true, y_pred, valid=None) -> float:
    """Total-variation ratio Σ||Δŷ||₁ / Σ||Δy||₁ (> 1 jitter, < 1 over-smoothing)."""
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    dp, dm = _diff(yp, m)
    dt, _ = _diff(yt, m)
    return _ratio(np.abs(dp[dm]).sum(), np.abs(dt[dm]).sum())


def jerk_ratio(y_true, y_pred, valid=None) -> float:
    """Σ||Δ³ŷ||² / Σ||Δ³y||²: third-difference energy of the prediction relative to the truth."""
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    jp, jm = _diff(yp, m, order=3)
    jt, _ = _diff(yt, m, order=3)
    return _ratio((jp[jm] ** 2).sum(), (jt[jm] ** 2).sum())


def median_dt_s(t_s) -> float:
    """Median tick period in seconds (NaN for fewer than two ticks)."""
    t = np.asarray(t_s, dtype=np.float64)
    return float(np.median(np.diff(t))) if t.size > 1 else math.nan


def lag_s(t_s, y_true, y_pred, max_lag_s: float = 1.0, valid=None) -> float:
    """Delay τ* = k*·median(Δt) minimizing RMSE(ŷ[t + k], y[t]) over 0 ≤ k ≤ max_lag_s / median(Δt)."""
    if not max_lag_s >= 0:
        raise ValueError(f"max_lag_s must be >= 0; got {max_lag_s}.")
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    dt = median_dt_s(t_s)
    if not dt > 0:
        return math.nan
    n = yt.shape[0]
    best_k, best = 0, math.inf
    for k in range(min(int(round(max_lag_s / dt)), n - 1) + 1):
        mk = m[k:] & m[: n - k]
        if not mk.any():
            continue
        err = np.mean((yp[k:][mk] - yt[: n - k][mk]) ** 2)
        if err < best - 1e-15:
            best_k, best = k, err
    return best_k * dt if math.isfinite(best) else math.nan


def _event_ticks(t: np.ndarray, event_t_s) -> np.ndarray:
    """Index of the first tick at or after each event time (events past the end dropped)."""
    idx = np.searchsorted(t, np.sort(np.asarray(event_t_s, dtype=np.float64)), side="left")
    return np.unique(idx[idx < t.size])


def recovery_times_s(t_s, y_true, y_pred, event_t_s, tol: float | None = None, factor: float = 2.0,
                     settle_s: float = 1.0, valid=None) -> np.ndarray:
    """Seconds from each event (cut, end of occlusion) until ||e_t|| ≤ threshold, one per event.

    The threshold is `tol` if given, else `factor` × the median ||e_t|| on undisturbed ticks (those
    not within `settle_s` after an event). The search for an event stops at the next event; an event
    that never recovers is censored at that point (the time to the next event or the end).
    """
    t = np.asarray(t_s, dtype=np.float64)
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    if t.shape != (yt.shape[0],):
        raise ValueError(f"t_s must have shape ({yt.shape[0]},); got {t.shape}.")
    err = np.linalg.norm(yp - yt, axis=1)
    ev = _event_ticks(t, event_t_s)
    if ev.size == 0:
        return np.zeros(0)
    if tol is None:
        if not factor > 0:
            raise ValueError(f"factor must be > 0; got {factor}.")
        quiet = m.copy()
        for i in ev:
            quiet &= ~((t >= t[i]) & (t < t[i] + settle_s))
        ref = err[quiet] if quiet.any() else err[m]
        tol = factor * float(np.median(ref)) if ref.size else math.nan
    ends = np.append(ev[1:], t.size)
    out = np.empty(ev.size)
    for j, (i0, i1) in enumerate(zip(ev, ends)):
        ok = np.flatnonzero(m[i0:i1] & (err[i0:i1] <= tol))
        t_end = t[i1] if i1 < t.size else t[-1]
        out[j] = t[i0 + ok[0]] - t[i0] if ok.size else t_end - t[i0]
    return out


# ---- discrete outputs -----------------------------------------------------------------------

def _labels(labels, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels; got shape {arr.shape}.")
    return arr


def _flips(lab: np.ndarray, m: np.ndarray) -> int:
    return int(np.sum((lab[1:] != lab[:-1]) & m[1:] & m[:-1]))


def excess_flip_rate_hz(t_s, labels_true, labels_pred, valid=None) -> float:
    """Label flips of ŷ per second minus flips of y per second (0 = no extra flicker)."""
    t = np.asarray(t_s, dtype=np.float64)
    lt, lp = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    m = np.ones(lt.size, bool) if valid is None else np.asarray(valid, bool)
    duration = t[-1] - t[0] if t.size > 1 else 0.0
    if duration <= 0:
        return math.nan
    return (_flips(lp, m) - _flips(lt, m)) / duration


def transition_latencies_s(t_s, labels_true, labels_pred) -> np.ndarray:
    """Seconds from each true class transition until ŷ equals the new class (censored at the next one)."""
    t = np.asarray(t_s, dtype=np.float64)
    lt, lp = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    starts = np.flatnonzero(lt[1:] != lt[:-1]) + 1
    ends = np.append(starts[1:], lt.size)
    out = np.empty(starts.size)
    for j, (i0, i1) in enumerate(zip(starts, ends)):
        hit = np.flatnonzero(lp[i0:i1] == lt[i0])
        t_end = t[i1] if i1 < t.size else t[-1]
        out[j] = t[i0 + hit[0]] - t[i0] if hit.size else t_end - t[i0]
    return out


def _segments(lab: np.ndarray) -> np.ndarray:
    if lab.size == 0:
        return lab
    return lab[np.r_[True, lab[1:] != lab[:-1]]]


def edit_score(labels_true, labels_pred) -> float:
    """Segmental edit score 100·(1 − Levenshtein(segments) / max #segments), 100 = same segment order."""
    a = _segments(_labels(labels_pred, "labels_pred"))
    b = _segments(_labels(labels_true, "labels_true"))
    if max(a.size, b.size) == 0:
        return 100.0
    prev = np.arange(b.size + 1)
    for i in range(1, a.size + 1):
        cur = np.empty_like(prev)
        cur[0] = i
        for j in range(1, b.size + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return 100.0 * (1.0 - prev[-1] / max(a.size, b.size))


# ---- summaries ------------------------------------------------------------------------------

def latency_summary(step_times_s) -> dict[str, float]:
    """Median and 99th percentile of per-step wall times, in microseconds."""
    x = np.asarray(step_times_s, dtype=np.float64).ravel()
    if x.size == 0:
        return {"latency_median_us": math.nan, "latency_p99_us": math.nan}
    return {"latency_median_us": float(np.median(x) * 1e6), "latency_p99_us": float(np.percentile(x, 99) * 1e6)}


def _summary_stats(prefix: str, x: np.ndarray) -> dict[str, float]:
    return {f"{prefix}_mean_s": float(np.mean(x)) if x.size else math.nan,
            f"{prefix}_median_s": float(np.median(x)) if x.size else math.nan}


def sequence_metrics(t_s, y_true, y_pred, var=None, valid=None, *, y_ref=None, field_names=None,
                     event_t_s=None, recovery_tol: float | None = None, labels_true=None,
                     labels_pred=None, step_times_s=None, max_lag_s: float = 1.0) -> dict[str, float]:
    """Every metric for one sequence as a flat dict of floats (NaN where not applicable).

    Keys: rmse, mae, rmse_<field>, mae_<field>, mse_ratio, nll, coverage_50, coverage_90, crps,
    nees, flicker, tvr, jerk_ratio, lag_s, recovery_mean_s, recovery_median_s, n_events,
    flip_rate_excess_hz, transition_latency_mean_s, transition_latency_median_s, edit_score,
    latency_median_us, latency_p99_us. `rmse`/`mae` pool all fields.
    """
    yt, yp, m, _ = _prepare(y_true, y_pred, valid)
    d = yt.shape[1]
    names = [str(i) for i in range(d)] if field_names is None else [str(n) for n in field_names]
    if len(names) != d:
        raise ValueError(f"field_names has {len(names)} names but the targets have D={d} fields.")
    nan = math.nan
    r, a = rmse(yt, yp, m), mae(yt, yp, m)
    out: dict[str, float] = {"rmse": float(np.sqrt(np.mean(r**2))), "mae": float(np.mean(a))}
    for n, ri, ai in zip(names, r, a):
        out[f"rmse_{n}"], out[f"mae_{n}"] = float(ri), float(ai)
    out["mse_ratio"] = mse_ratio(yt, yp, y_ref, m) if y_ref is not None else nan
    if var is not None:
        out["nll"] = gaussian_nll(yt, yp, var, m)
        out["coverage_50"] = coverage(yt, yp, var, 0.5, m)
        out["coverage_90"] = coverage(yt, yp, var, 0.9, m)
        out["crps"] = crps_gaussian(yt, yp, var, m)
        out["nees"] = nees(yt, yp, var, m)
    else:
        out.update(nll=nan, coverage_50=nan, coverage_90=nan, crps=nan, nees=nan)
    out["flicker"] = flicker(yt, yp, m)
    out["tvr"] = tv_ratio(yt, yp, m)
    out["jerk_ratio"] = jerk_ratio(yt, yp, m)
    out["lag_s"] = lag_s(t_s, yt, yp, max_lag_s, m)
    rec = np.zeros(0) if event_t_s is None else recovery_times_s(t_s, yt, yp, event_t_s, recovery_tol, valid=m)
    out.update(_summary_stats("recovery", rec))
    out["n_events"] = float(rec.size)
    if labels_true is not None and labels_pred is not None:
        out["flip_rate_excess_hz"] = excess_flip_rate_hz(t_s, labels_true, labels_pred)
        out.update(_summary_stats("transition_latency", transition_latencies_s(t_s, labels_true, labels_pred)))
        out["edit_score"] = edit_score(labels_true, labels_pred)
    else:
        out.update(flip_rate_excess_hz=nan, transition_latency_mean_s=nan,
                   transition_latency_median_s=nan, edit_score=nan)
    out.update(latency_summary([] if step_times_s is None else step_times_s))
    return out
