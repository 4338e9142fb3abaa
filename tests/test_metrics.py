"""Known-answer tests of the per-sequence metrics."""

import math

import numpy as np
import pytest

from seqsense.evaluate import metrics as M


def _ramp(n=101, dt=0.01):
    t = np.arange(n) * dt
    return t, np.stack([t, -2.0 * t], axis=1)  # (N, 2)


def test_constant_offset_gives_rmse_offset_and_no_flicker():
    t, y = _ramp()
    p = y + np.array([0.3, -0.5])
    np.testing.assert_allclose(M.rmse(y, p), [0.3, 0.5])
    np.testing.assert_allclose(M.mae(y, p), [0.3, 0.5])
    assert M.flicker(y, p) == pytest.approx(0.0, abs=1e-12)
    assert M.tv_ratio(y, p) == pytest.approx(1.0)


def test_invalid_ticks_are_ignored():
    t, y = _ramp()
    p = y + 0.1
    y_nan = y.copy()
    y_nan[10] = np.nan
    p[10] = 1e6  # a wild prediction where the truth is missing must not count
    np.testing.assert_allclose(M.rmse(y_nan, p), [0.1, 0.1])
    mask = np.ones(len(t), bool)
    mask[10] = False
    np.testing.assert_allclose(M.rmse(y, p, valid=mask), [0.1, 0.1])


def test_mse_ratio_to_reference():
    _, y = _ramp()
    assert M.mse_ratio(y, y + 0.2, y + 0.1) == pytest.approx(4.0)
    assert math.isnan(M.mse_ratio(y, y + 0.2, y))


def test_sign_alternating_jitter_on_ramp_has_known_tvr_and_flicker():
    t = np.arange(101) * 0.1
    y = t / 0.1  # Δy = 1 per tick
    p = y + (-1.0) ** np.arange(101)  # Δŷ alternates 3, −1
    assert M.tv_ratio(y, p) == pytest.approx(2.0)
    assert M.flicker(y, p) == pytest.approx(2.0)


def test_jerk_ratio():
    t = np.linspace(0, 2, 200)
    y = np.sin(3 * t)
    assert M.jerk_ratio(y, y) == pytest.approx(1.0)
    assert M.jerk_ratio(y, 2 * y) == pytest.approx(4.0)
    assert math.isnan(M.jerk_ratio(np.zeros(10), np.ones(10)))  # no third-difference energy in the truth


def test_delayed_copy_gives_lag_equal_to_delay():
    t = np.arange(500) * 0.01
    y = np.sin(2 * np.pi * 0.7 * t)
    p = np.r_[np.full(5, y[0]), y[:-5]]  # ŷ[t] = y[t − 5 ticks]
    assert M.lag_s(t, y, p, max_lag_s=0.5) == pytest.approx(0.05)
    assert M.lag_s(t, y, y) == 0.0
    assert M.lag_s(t, y, p, max_lag_s=0.02) == pytest.approx(0.02)  # search capped at max lag


def test_perfect_gaussian_sample_is_calibrated():
    rng = np.random.default_rng(0)
    n, d, sigma = 20000, 3, 0.5
    mu = rng.normal(size=(n, d))
    y = mu + sigma * rng.standard_normal((n, d))
    var = np.full((n, d), sigma**2)
    for level in (0.5, 0.9):
        se = math.sqrt(level * (1 - level) / (n * d))
        assert abs(M.coverage(y, mu, var, level) - level) < 4 * se
    assert M.nees(y, mu, var) == pytest.approx(d, rel=0.03)
    assert M.gaussian_nll(y, mu, var) == pytest.approx(0.5 * math.log(2 * math.pi * sigma**2) + 0.5, abs=0.02)
    assert M.crps_gaussian(y, mu, var) == pytest.approx(sigma / math.sqrt(math.pi), rel=0.02)


def test_crps_closed_form_at_the_mean_and_far_away():
    s = 2.0
    assert M.crps_gaussian([0.0], [0.0], [s**2]) == pytest.approx(s * (math.sqrt(2) - 1) / math.sqrt(math.pi))
    assert M.crps_gaussian([0.0], [100.0], [1e-6]) == pytest.approx(100.0, rel=1e-4)  # → |e| as σ → 0


def test_overconfident_predictions_undercover():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((5000, 1))
    mu = np.zeros_like(y)
    assert M.coverage(y, mu, np.full_like(y, 0.01), 0.9) < 0.2
    assert M.nees(y, mu, np.full_like(y, 0.01)) == pytest.approx(100, rel=0.1)


def test_bad_inputs_raise_with_value():
    with pytest.raises(ValueError, match="var must be > 0"):
        M.gaussian_nll([0.0, 1.0], [0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        M.coverage([0.0], [0.0], [1.0], level=1.5)
    with pytest.raises(ValueError, match="differ"):
        M.rmse(np.zeros((3, 2)), np.zeros((3, 1)))


def test_recovery_time_after_events():
    t = np.arange(400) * 0.01
    y = np.zeros(400)
    p = np.full(400, 0.01)
    p[100:130] = 1.0  # event at 1.0 s, 0.30 s to recover
    p[250:260] = -1.0  # event at 2.5 s, 0.10 s to recover
    rec = M.recovery_times_s(t, y, p, [1.0, 2.5])  # threshold: 2 × median undisturbed error = 0.02
    np.testing.assert_allclose(rec, [0.30, 0.10], atol=1e-9)
    np.testing.assert_allclose(M.recovery_times_s(t, y, p, [1.0, 2.5], tol=2.0), [0.0, 0.0])
    p[250:] = 1.0  # never recovers: censored at the end
    np.testing.assert_allclose(M.recovery_times_s(t, y, p, [2.5], tol=0.1), [t[-1] - 2.5])
    assert M.recovery_times_s(t, y, p, []).size == 0


def test_discrete_metrics():
    t = np.arange(30) * 0.1
    y = np.repeat([0, 1, 2], 10)
    delayed = np.r_[[0, 0], y[:-2]]
    np.testing.assert_allclose(M.transition_latencies_s(t, y, delayed), [0.2, 0.2])
    assert M.excess_flip_rate_hz(t, y, delayed) == pytest.approx(0.0)
    assert M.edit_score(y, delayed) == pytest.approx(100.0)
    blip = y.copy()
    blip[15] = 0  # segments 0,1,0,1,2 vs 0,1,2: two insertions over five segments
    assert M.edit_score(y, blip) == pytest.approx(60.0)
    assert M.excess_flip_rate_hz(t, y, blip) == pytest.approx(2 / 2.9)
    never = np.zeros(30, int)
    np.testing.assert_allclose(M.transition_latencies_s(t, y, never), [1.0, t[-1] - 2.0])


def test_latency_summary():
    s = M.latency_summary(np.full(100, 20e-6))
    assert s["latency_median_us"] == pytest.approx(20.0)
    assert s["latency_p99_us"] == pytest.approx(20.0)
    s = M.latency_summary(np.r_[np.full(98, 1e-6), [1e-3, 1e-3]])
    assert s["latency_median_us"] == pytest.approx(1.0)
    assert s["latency_p99_us"] == pytest.approx(1000.0)


def test_sequence_metrics_flat_dict():
    t, y = _ramp()
    out = M.sequence_metrics(t, y, y + 0.1, var=np.full_like(y, 0.01), field_names=["x", "z"],
                             y_ref=y + 0.05, step_times_s=np.full(len(t), 1e-5))
    assert all(isinstance(v, float) for v in out.values())
    assert out["rmse_x"] == pytest.approx(0.1) and out["rmse"] == pytest.approx(0.1)
    assert out["mse_ratio"] == pytest.approx(4.0)
    assert out["flicker"] == pytest.approx(0.0, abs=1e-12)
    assert out["latency_median_us"] == pytest.approx(10.0)
    assert math.isnan(out["edit_score"]) and math.isnan(out["recovery_mean_s"])
    bare = M.sequence_metrics(t, y, y)
    assert math.isnan(bare["nll"]) and math.isnan(bare["mse_ratio"]) and bare["lag_s"] == 0.0
    with pytest.raises(ValueError, match="field_names"):
        M.sequence_metrics(t, y, y, field_names=["x"])


def test_inclination_error_is_the_rms_angle_between_directions():
    g = np.tile([0.0, 0.0, -1.0], (4, 1))
    tilt = np.radians(10.0)
    pred = np.tile([np.sin(tilt), 0.0, -np.cos(tilt)], (4, 1)) * 9.81  # the length does not count
    assert M.inclination_error_deg(g, pred) == pytest.approx(10.0)
    pred[1] = g[1]  # one tick exact: RMS of (10, 0, 10, 10) degrees
    assert M.inclination_error_deg(g, pred) == pytest.approx(math.sqrt(300 / 4))
    assert M.inclination_error_deg(g, pred, valid=np.array([False, True, False, False])) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="3-D"):
        M.inclination_error_deg(g[:, :2], pred[:, :2])
