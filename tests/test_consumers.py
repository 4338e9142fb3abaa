"""Known-answer tests of the machine consumers and their registry."""

import dataclasses
import math

import numpy as np
import pytest

from seqsense.errors import ConfigError
from seqsense.evaluate import consumers as C


def _circle(n=600, rate_hz=30.0):
    t = np.arange(n) / rate_hz
    return t, np.stack([np.sin(t), 0.5 * np.cos(0.7 * t)], axis=1)


# ---- registry and configs -------------------------------------------------------------------

def test_registry_lists_builtins_and_rejects_unknown_names():
    assert {"tracking", "safety", "intercept"} <= set(C.consumer_names())
    with pytest.raises(ConfigError, match="valid names: .*intercept.*safety.*tracking"):
        C.make_consumer("nope")
    with pytest.raises(ConfigError, match="valid keys"):
        C.make_consumer("tracking", gain=3.0)
    assert C.make_consumer("tracking", kp=5.0).config.kp == 5.0


def test_user_consumer_plugs_in():
    @dataclasses.dataclass
    class CountConfig:
        scale: float = 1.0

    @C.register_consumer("test_count")
    class Count(C.Consumer):
        config_class = CountConfig

        def reset(self):
            self.n = 0

        def step(self, t_s, prediction_mean, prediction_var=None, truth=None):
            self.n += 1

        def summary(self):
            return {"cost": self.config.scale * self.n}

    try:
        t, y = _circle(50)
        assert C.run(C.make_consumer("test_count", scale=2.0), t, y, y) == {"cost": 100.0}
        with pytest.raises(ValueError, match="already registered"):
            C.register_consumer("test_count")(Count)
    finally:
        del C.CONSUMERS["test_count"]


@pytest.mark.parametrize("cls,kwargs,match", [
    (C.TrackingControllerConfig, {"kp": -1.0}, "kp=-1.0 is out of range"),
    (C.TrackingControllerConfig, {"mass_kg": 0.0}, "mass_kg"),
    (C.TrackingControllerConfig, {"force_limit": -5.0}, "force_limit"),
    (C.SafetyMonitorConfig, {"threshold": math.nan}, "threshold"),
    (C.SafetyMonitorConfig, {"hysteresis": -0.1}, "hysteresis"),
    (C.SafetyMonitorConfig, {"hazard": {"kind": "lava"}}, "valid kinds: wall, point"),
    (C.SafetyMonitorConfig, {"hazard": {"kind": "wall", "axis": 0}}, "'axis' and 'value'"),
    (C.InterceptPlannerConfig, {"every_s": 0.0}, "every_s"),
    (C.InterceptPlannerConfig, {"velocity_ticks": 0}, "velocity_ticks"),
])
def test_configs_validate_themselves(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


# ---- tracking controller --------------------------------------------------------------------

def test_controller_pays_for_jitter():
    t, y = _circle()
    rng = np.random.default_rng(0)
    clean = C.run(C.make_consumer("tracking"), t, y, y)
    chatter, tracking = [], []
    for sigma in (0.005, 0.02, 0.05):
        out = C.run(C.make_consumer("tracking"), t, y + sigma * rng.standard_normal(y.shape), y)
        chatter.append(out["chatter"])
        tracking.append(out["tracking_rms"])
    assert clean["tracking_rms"] < tracking[0]
    assert clean["chatter"] < chatter[0] < chatter[1] < chatter[2]
    assert tracking[0] < tracking[2]
    assert clean["cost"] == clean["tracking_rms"]
    assert set(clean) == {"tracking_rms", "effort_rms", "chatter", "saturation_frac", "cost"}


def test_controller_at_rest_on_a_still_target_and_saturation():
    t = np.arange(100) * 0.02
    y = np.full((100, 1), 0.3)
    out = C.run(C.make_consumer("tracking"), t, y, y)
    assert out["tracking_rms"] == 0.0 and out["chatter"] == 0.0 and out["effort_rms"] == 0.0
    step = y + 1.0  # a unit step in the prediction the actuator must chase
    weak = C.run(C.make_consumer("tracking", force_limit=1.0), t, step, y)
    assert weak["saturation_frac"] > 0.5
    free = C.run(C.make_consumer("tracking", force_limit=math.inf), t, step, y)
    assert free["saturation_frac"] == 0.0


def test_actuator_integration_is_exact_for_constant_force():
    ctl = C.make_consumer("tracking", kp=0.0, kd=0.0, damping=0.0)
    ctl.reset()
    ctl.step(0.0, np.zeros(1), truth=np.zeros(1))
    ctl._u = np.array([2.0])  # hold 2 N on 1 kg for 0.5 s: x = ½ a t² = 0.25
    ctl.step(0.5, np.zeros(1), truth=np.zeros(1))
    assert ctl._x[0] == pytest.approx(0.25)
    ctl = C.make_consumer("tracking", kp=0.0, kd=0.0, damping=1.0)
    ctl.reset()
    ctl.step(0.0, np.zeros(1), truth=np.zeros(1))
    ctl._u = np.array([2.0])  # terminal velocity u / c = 2: after a long time v → 2
    ctl.step(50.0, np.zeros(1), truth=np.zeros(1))
    assert ctl._v[0] == pytest.approx(2.0)


# ---- safety monitor -------------------------------------------------------------------------

def _approach(n=1200, rate_hz=20.0):
    """A target oscillating toward a wall at x = 0.9: four close approaches in 60 s."""
    t = np.arange(n) / rate_hz
    x = 0.5 + 0.45 * np.sin(2 * np.pi * t / 15.0)
    return t, np.stack([x, np.zeros(n)], axis=1)


WALL = {"kind": "wall", "axis": 0, "value": 0.9}


def test_monitor_fed_truth_is_perfect():
    t, y = _approach()
    out = C.run(C.make_consumer("safety", hazard=WALL, threshold=0.1), t, y, y)
    assert out["n_events"] == 4.0
    assert out["false_alarms_per_min"] == 0.0 and out["missed_events"] == 0.0
    assert out["detection_delay_s"] == 0.0 and out["cost"] == 0.0
    assert out["toggles_per_min"] == pytest.approx(8.0, rel=0.02)


def test_monitor_delay_misses_and_false_alarms():
    t, y = _approach()
    lagged = np.r_[np.repeat(y[:1], 10, axis=0), y[:-10]]  # 0.5 s late
    out = C.run(C.make_consumer("safety", hazard=WALL, threshold=0.1), t, lagged, y)
    assert out["detection_delay_s"] == pytest.approx(0.5)
    assert out["cost"] == pytest.approx(4 * 0.5 / ((t[-1] - t[0]) / 60))
    far = y - [0.5, 0.0]  # predictions far from the wall: every event missed
    out = C.run(C.make_consumer("safety", hazard=WALL, threshold=0.1), t, far, y)
    assert out["missed_events"] == 4.0 and out["missed_frac"] == 1.0
    rng = np.random.default_rng(0)
    jitter = y + [0.05, 0.0] * rng.standard_normal(y.shape)
    raw = C.run(C.make_consumer("safety", hazard=WALL, threshold=0.1), t, jitter, y)
    hyst = C.run(C.make_consumer("safety", hazard=WALL, threshold=0.1, hysteresis=0.1), t, jitter, y)
    assert raw["false_alarms_per_min"] > 0 and raw["toggles_per_min"] > 8.0
    assert hyst["toggles_per_min"] < raw["toggles_per_min"]


def test_monitor_on_scalar_clearance_and_point_hazard():
    t = np.arange(100) * 0.1
    clearance = np.where((t >= 3) & (t < 5), 0.05, 1.0)[:, None]
    out = C.run(C.make_consumer("safety", threshold=0.1), t, clearance, clearance)
    assert out["n_events"] == 1.0 and out["missed_events"] == 0.0
    mon = C.make_consumer("safety", hazard={"kind": "point", "position": [1.0, 0.0], "radius": 0.2})
    assert mon.clearance([0.0, 0.0])[0] == pytest.approx(0.8)
    assert C.make_consumer("safety", hazard={**WALL, "side": "above"}).clearance([1.5, 0.0])[0] == pytest.approx(0.6)


# ---- intercept planner ----------------------------------------------------------------------

def test_planner_exact_on_constant_velocity_and_pays_for_jitter():
    t = np.arange(300) * 0.05  # 15 s at 20 Hz
    y = np.stack([0.3 * t, -0.1 * t], axis=1)
    clean = C.run(C.make_consumer("intercept", every_s=0.5, horizon_s=0.5), t, y, y)
    assert clean["miss_mean"] == pytest.approx(0.0, abs=1e-9)
    assert clean["n_decisions"] == 29.0  # decisions at 0.05, 0.55, …, 14.05 (14.55 + 0.5 is past the end)
    rng = np.random.default_rng(0)
    noisy = C.run(C.make_consumer("intercept"), t, y + 0.02 * rng.standard_normal(y.shape), y)
    assert noisy["miss_mean"] > 0.1  # 0.02 jitter × horizon/dt = 10 → ~0.3 miss
    assert noisy["miss_p90"] >= noisy["miss_mean"] and noisy["cost"] == noisy["miss_mean"]


def test_planner_uses_future_predictions_directly():
    t = np.arange(300) * 0.05
    y = np.stack([np.sin(t), np.cos(t)], axis=1)
    future = np.stack([np.sin(t + 0.5), np.cos(t + 0.5)], axis=1)
    out = C.run(C.make_consumer("intercept", prediction_is_future=True), t, future, y)
    assert out["miss_mean"] == pytest.approx(0.0, abs=1e-9)
    extrap = C.run(C.make_consumer("intercept"), t, y, y)
    assert extrap["miss_mean"] > 0.05  # linear extrapolation of a curve misses


@pytest.mark.parametrize("damping,limit,dims", [(2.0, 50.0, 2), (0.0, 5.0, 1), (2.0, 50.0, 9)])
def test_tracking_sequence_path_equals_the_step_loop(damping, limit, dims):
    """`run` takes the controller's whole-sequence path; its summary is the step loop's, bit for bit."""
    rng = np.random.default_rng(4)
    t = np.cumsum(rng.uniform(0.01, 0.05, 300))
    truth = np.cumsum(rng.standard_normal((300, dims)) * 0.05, 0)
    pred = truth + rng.standard_normal((300, dims)) * 0.1
    pred[40:45] = np.nan  # dropped predictions hold the command
    truth[100:103] = np.nan  # unscored ticks
    cfg = C.TrackingControllerConfig(damping=damping, force_limit=limit, chatter_weight=0.01)
    fast = C.run(C.TrackingController(cfg), t, pred, truth)
    slow = C.TrackingController(cfg)
    for i in range(t.size):
        slow.step(t[i], pred[i], None, truth[i])
    assert fast == slow.summary()
    if limit == 5.0:  # the clipped branch ran
        assert fast["saturation_frac"] > 0


@pytest.mark.parametrize("hazard", [None, {"kind": "wall", "axis": 1, "value": 0.8, "side": "below"},
                                    {"kind": "wall", "axis": 0, "value": -0.5, "side": "above"},
                                    {"kind": "point", "position": [0.0, 0.0], "radius": 0.3}])
def test_safety_sequence_path_equals_the_step_loop(hazard):
    """`run` takes the monitor's whole-sequence path (wall or no hazard); its summary is the step loop's."""
    rng = np.random.default_rng(5)
    t = np.arange(400) / 30.0
    truth = np.stack([np.sin(t), np.cos(0.7 * t)], 1)
    pred = truth + rng.standard_normal(truth.shape) * 0.15
    var = np.full_like(pred, 0.01)
    pred[50:60] = np.nan
    cfg = C.SafetyMonitorConfig(threshold=0.2, hazard=hazard, hysteresis=0.05, sigma_margin=1.0, lead_s=0.1)
    fast = C.run(C.SafetyMonitor(cfg), t, pred, truth, var)
    slow = C.SafetyMonitor(cfg)
    for i in range(t.size):
        slow.step(t[i], pred[i], var[i], truth[i])
    assert fast == slow.summary()
    assert fast["n_events"] > 0 and fast["toggles_per_min"] > 0  # the alarm and the events both happened
