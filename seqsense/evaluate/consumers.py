"""Machine consumers: the downstream code that pays for a predictor's jitter, lag and dropouts.

Each consumer is fed one tick at a time, exactly as a robot stack would feed it:
`reset()`, then `step(t_s, prediction_mean, prediction_var=None, truth=None)` per tick, then
`summary()` for its cost figures. The truth is only used for scoring, never for acting. Every
summary holds a headline scalar `cost` (lower is better) that the study compares across models.

Consumers are registered by name (`@register_consumer("name")`) with a config dataclass;
`make_consumer(name, **overrides)` builds one and `run(consumer, ...)` feeds a whole sequence.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from seqsense.config import apply_overrides
from seqsense.errors import ConfigError

CONSUMERS: dict[str, type["Consumer"]] = {}


def register_consumer(name: str) -> Callable[[type], type]:
    """Class decorator adding a consumer to the registry under `name`."""

    def deco(cls: type) -> type:
        if name in CONSUMERS:
            raise ValueError(f"consumer name {name!r} is already registered by {CONSUMERS[name].__name__}.")
        cls.name = name
        CONSUMERS[name] = cls
        return cls

    return deco


def consumer_names() -> list[str]:
    """Names of all registered consumers, sorted."""
    return sorted(CONSUMERS)


def make_consumer(name: str, config=None, **overrides) -> "Consumer":
    """Build the registered consumer `name` from a config (default config when None) plus overrides."""
    if name not in CONSUMERS:
        raise ConfigError(f"unknown consumer {name!r}; valid names: {', '.join(consumer_names())}.")
    cls = CONSUMERS[name]
    config = config if config is not None else cls.config_class()
    if overrides:  # strings (from the command line) are converted to the field types
        config = apply_overrides(config, overrides)
    return cls(config)


def run(consumer: "Consumer", t_s, pred_mean, truth, pred_var=None) -> dict[str, float]:
    """Reset `consumer`, feed it a whole sequence tick by tick and return its summary."""
    t = np.asarray(t_s, dtype=np.float64)
    mean = np.asarray(pred_mean, dtype=np.float64).reshape(t.size, -1)
    tru = np.asarray(truth, dtype=np.float64).reshape(t.size, -1)
    var = None if pred_var is None else np.asarray(pred_var, dtype=np.float64).reshape(t.size, -1)
    consumer.reset()
    if hasattr(consumer, "run_sequence"):  # the same arithmetic as the step loop, without per-tick numpy calls
        consumer.run_sequence(t, mean, var, tru)
    else:
        for i in range(t.size):
            consumer.step(t[i], mean[i], None if var is None else var[i], tru[i])
    return consumer.summary()


def _check(owner: str, name: str, value, ok: bool, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{owner}: {name}={value!r} is out of range; valid: {valid}.")


def _fields_2d(x: np.ndarray, fields: tuple[int, ...] | None) -> np.ndarray:
    """(T, D) float64 rows, restricted to `fields` (None = all)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x if fields is None else x[:, list(fields)]


def _sum(xs: list[float]) -> float:
    """Σ xs in numpy's order (a plain running sum below 8 terms, numpy's pairwise sum from 8)."""
    return float(np.sum(xs)) if len(xs) >= 8 else _seq_sum(xs)


def _seq_sum(xs: list[float]) -> float:
    total = 0.0
    for x in xs:
        total += x
    return total


def _mean(xs: list[float]) -> float:
    """np.mean of a short row, as plain floats."""
    return _sum(xs) / len(xs)


def _fields(x: np.ndarray, fields: tuple[int, ...] | None) -> np.ndarray:
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    return x if fields is None else x[list(fields)]


class Consumer:
    """Base class: owns a config and the running cost figures of one sequence."""

    name = "consumer"
    config_class: type = object

    def __init__(self, config) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget the previous sequence."""
        raise NotImplementedError

    def step(self, t_s: float, prediction_mean, prediction_var=None, truth=None) -> None:
        """Consume one tick's prediction (and the truth, for scoring only)."""
        raise NotImplementedError

    def summary(self) -> dict[str, float]:
        """Cost figures of the sequence so far, including the headline `cost` (lower is better)."""
        raise NotImplementedError


# ---- tracking controller --------------------------------------------------------------------

@dataclasses.dataclass
class TrackingControllerConfig:
    """PD gains, actuator (mass, viscous damping, force limit) and cost weights."""

    kp: float = 100.0              # N per unit of error
    kd: float = 20.0               # N per unit/s of error rate
    mass_kg: float = 1.0
    damping: float = 2.0           # N per unit/s of actuator velocity
    force_limit: float = 50.0      # |u| ≤ force_limit; inf for an unlimited actuator
    chatter_weight: float = 0.0    # cost = tracking_rms + chatter_weight · chatter
    fields: tuple[int, ...] | None = None  # prediction fields to track (None = all)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for k in ("kp", "kd", "damping", "chatter_weight"):
            v = getattr(self, k)
            _check(owner, k, v, v >= 0 and math.isfinite(v), "a finite number >= 0")
        _check(owner, "mass_kg", self.mass_kg, self.mass_kg > 0 and math.isfinite(self.mass_kg), "> 0")
        _check(owner, "force_limit", self.force_limit, self.force_limit > 0, "> 0 (inf for no limit)")


@register_consumer("tracking")
class TrackingController(Consumer):
    """A PD controller driving a second-order actuator to follow the predicted target, per field.

    Actuator: m ẍ = u − c ẋ, with u held constant between ticks (zero-order hold) and integrated
    exactly over the true dt. Command at tick k, with reference r = prediction and e = r − x:
        u_k = clip(kp e_k + kd (e_k − e_{k−1}) / dt_k, ±force_limit)
    (derivative of the error: jitter in r reaches the command, as in a real loop). The actuator
    starts at rest at the true target so the first tick is no step response.
    Costs: tracking_rms = sqrt(mean ||x − y_true||² / D) at the ticks; effort_rms = sqrt(mean u²);
    chatter = Σ|u_k − u_{k−1}| / duration (force units per second, summed over fields);
    saturation_frac = fraction of commands at the limit.
    Headline cost = tracking_rms + chatter_weight · chatter.
    """

    config_class = TrackingControllerConfig

    def reset(self) -> None:
        self._x = self._v = self._u = self._e = None
        self._t = self._t0 = None
        self._err2, self._u2, self._tv = [], [], 0.0
        self._n_sat = self._n_u = 0

    def _integrate(self, dt: float) -> None:
        """Exact solution of m ẍ = u − c ẋ over dt with constant u."""
        c, m, u = self.config.damping, self.config.mass_kg, self._u
        if c == 0:
            self._x = self._x + self._v * dt + 0.5 * u / m * dt**2
            self._v = self._v + u / m * dt
            return
        a = c / m
        decay = math.exp(-a * dt)
        v_inf = u / c
        self._x = self._x + v_inf * dt + (self._v - v_inf) * (1.0 - decay) / a
        self._v = v_inf + (self._v - v_inf) * decay

    def step(self, t_s, prediction_mean, prediction_var=None, truth=None) -> None:
        cfg = self.config
        r = _fields(prediction_mean, cfg.fields)
        y = None if truth is None else _fields(truth, cfg.fields)
        if self._x is None:
            start = y if y is not None and np.isfinite(y).all() else r
            self._x, self._v, self._u = start.copy(), np.zeros_like(start), np.zeros_like(start)
            self._t0, dt = t_s, 0.0
        else:
            dt = t_s - self._t
            if dt < 0:
                raise ValueError(f"tracking controller: time went backwards (t={t_s} s after {self._t} s).")
            self._integrate(dt)
        self._t = t_s
        if y is not None and np.isfinite(y).all():
            self._err2.append(float(np.mean((self._x - y) ** 2)))
        if not np.isfinite(r).all():
            return  # no usable prediction: hold the previous command
        e = r - self._x
        de = (e - self._e) / dt if self._e is not None and dt > 0 else np.zeros_like(e)
        u = np.clip(cfg.kp * e + cfg.kd * de, -cfg.force_limit, cfg.force_limit)
        if self._n_u:
            self._tv += float(np.abs(u - self._u).sum())
        self._n_sat += int(np.sum(np.abs(u) >= cfg.force_limit))
        self._n_u += 1
        self._u2.append(float(np.mean(u**2)))
        self._u, self._e = u, e

    def run_sequence(self, t: np.ndarray, mean: np.ndarray, var, truth: np.ndarray) -> None:
        """`step` over a whole sequence (T,), (T, D) from reset, in plain floats per field: the same
        operations in the same order as the step loop (so the same summary), ~20x faster."""
        cfg = self.config
        r_all, y_all = _fields_2d(mean, cfg.fields), _fields_2d(truth, cfg.fields)
        r_ok, y_ok = np.isfinite(r_all).all(1).tolist(), np.isfinite(y_all).all(1).tolist()
        ts, rs, ys = t.tolist(), r_all.tolist(), y_all.tolist()
        kp, kd, lim, c, m = cfg.kp, cfg.kd, cfg.force_limit, cfg.damping, cfg.mass_kg
        a = c / m
        d = r_all.shape[1]
        x = v = u = e = None
        t_prev = None
        err2, u2, tv, n_sat, n_u = self._err2, self._u2, 0.0, 0, 0
        for i, t_s in enumerate(ts):
            r, y = rs[i], ys[i]
            if x is None:
                start = y if y_ok[i] else r
                x, v, u = list(start), [0.0] * d, [0.0] * d
                self._t0, dt = t_s, 0.0
            else:
                dt = t_s - t_prev
                if dt < 0:
                    raise ValueError(f"tracking controller: time went backwards (t={t_s} s after {t_prev} s).")
                if c == 0:
                    x = [x[j] + v[j] * dt + 0.5 * u[j] / m * dt**2 for j in range(d)]
                    v = [v[j] + u[j] / m * dt for j in range(d)]
                else:
                    decay = math.exp(-a * dt)
                    v_inf = [uj / c for uj in u]
                    x = [x[j] + v_inf[j] * dt + (v[j] - v_inf[j]) * (1.0 - decay) / a for j in range(d)]
                    v = [v_inf[j] + (v[j] - v_inf[j]) * decay for j in range(d)]
            t_prev = t_s
            if y_ok[i]:
                err2.append(_mean([(x[j] - y[j]) ** 2 for j in range(d)]))
            if not r_ok[i]:
                continue
            e_new = [r[j] - x[j] for j in range(d)]
            de = [(e_new[j] - e[j]) / dt for j in range(d)] if e is not None and dt > 0 else [0.0] * d
            u_new = [min(max(kp * e_new[j] + kd * de[j], -lim), lim) for j in range(d)]
            if n_u:
                tv += _sum([abs(u_new[j] - u[j]) for j in range(d)])
            n_sat += sum(abs(uj) >= lim for uj in u_new)
            n_u += 1
            u2.append(_mean([uj**2 for uj in u_new]))
            u, e = u_new, e_new
        self._t = t_prev
        self._x, self._v = (None, None) if x is None else (np.asarray(x), np.asarray(v))
        self._u, self._e = (None if u is None else np.asarray(u)), (None if e is None else np.asarray(e))
        self._tv, self._n_sat, self._n_u = tv, n_sat, n_u

    def summary(self) -> dict[str, float]:
        duration = (self._t - self._t0) if self._t is not None else 0.0
        n_cmd = self._n_u * (self._u.size if self._u is not None else 1)
        out = {
            "tracking_rms": float(np.sqrt(np.mean(self._err2))) if self._err2 else math.nan,
            "effort_rms": float(np.sqrt(np.mean(self._u2))) if self._u2 else math.nan,
            "chatter": float(self._tv / duration) if duration > 0 else math.nan,
            "saturation_frac": self._n_sat / n_cmd if n_cmd else math.nan,
        }
        chatter = out["chatter"] if self.config.chatter_weight else 0.0
        out["cost"] = out["tracking_rms"] + self.config.chatter_weight * chatter
        return out


# ---- safety monitor -------------------------------------------------------------------------

HAZARD_KINDS = ("wall", "point")


@dataclasses.dataclass
class SafetyMonitorConfig:
    """Alarm threshold, hazard geometry, hysteresis and cost weights.

    hazard: None when the prediction is itself the clearance (field `field`); else
    {"kind": "wall", "axis": a, "value": w, "side": "below"|"above"} (clearance = w − p[a] for a
    target below the wall, p[a] − w above it) or {"kind": "point", "position": [...], "radius": r}
    (clearance = ||p − position|| − r).
    """

    threshold: float = 0.1        # alarm when predicted clearance < threshold (units of the target)
    hazard: dict | None = None
    field: int = 0                # used when hazard is None
    hysteresis: float = 0.0       # alarm clears only when clearance > threshold + hysteresis
    sigma_margin: float = 0.0     # alarm on clearance − sigma_margin·σ (uses prediction_var if given)
    lead_s: float = 0.0           # an alarm up to lead_s before an event counts as a detection
    miss_weight: float = 10.0     # cost of one missed event, in false alarms
    delay_weight: float = 1.0     # cost of one second of detection delay, in false alarms

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check(owner, "threshold", self.threshold, math.isfinite(self.threshold), "a finite number")
        for k in ("hysteresis", "sigma_margin", "lead_s", "miss_weight", "delay_weight"):
            v = getattr(self, k)
            _check(owner, k, v, v >= 0 and math.isfinite(v), "a finite number >= 0")
        _check(owner, "field", self.field, self.field >= 0, "an index >= 0")
        h = self.hazard
        if h is None:
            return
        if not isinstance(h, dict) or h.get("kind") not in HAZARD_KINDS:
            raise ConfigError(f"{owner}: hazard={h!r} has an unknown kind; valid kinds: {', '.join(HAZARD_KINDS)}.")
        if h["kind"] == "wall":
            if "axis" not in h or "value" not in h:
                raise ConfigError(f"{owner}: wall hazard {h!r} needs keys 'axis' and 'value'.")
            if h.get("side", "below") not in ("below", "above"):
                raise ConfigError(f"{owner}: wall hazard side={h['side']!r}; valid: 'below', 'above'.")
        elif "position" not in h:
            raise ConfigError(f"{owner}: point hazard {h!r} needs key 'position' (and optional 'radius').")


@register_consumer("safety")
class SafetyMonitor(Consumer):
    """Raises an alarm while the predicted clearance to a hazard is below a threshold.

    A real event is a run of ticks whose TRUE clearance is below the threshold. An event is
    detected when the alarm is on at some tick in [start − lead_s, end]; its detection delay is
    max(0, t_first_alarm − t_start). An alarm run overlapping no event window is a false alarm.
    Costs: false_alarms_per_min, missed_events, missed_frac, detection_delay_s (mean over detected),
    toggles_per_min (alarm on/off changes).
    Headline cost = (false alarms + miss_weight·missed + delay_weight·Σ delays_s) / minutes.
    """

    config_class = SafetyMonitorConfig

    def reset(self) -> None:
        self._t, self._alarm, self._danger = [], [], []
        self._on = False

    def clearance(self, p, var=None) -> tuple[float, float]:
        """Clearance of position/clearance prediction p to the hazard, and its standard deviation."""
        p = np.atleast_1d(np.asarray(p, dtype=np.float64))
        v = None if var is None else np.atleast_1d(np.asarray(var, dtype=np.float64))
        h = self.config.hazard
        if h is None:
            return float(p[self.config.field]), math.sqrt(v[self.config.field]) if v is not None else 0.0
        if h["kind"] == "wall":
            a = int(h["axis"])
            sign = 1.0 if h.get("side", "below") == "below" else -1.0
            return sign * (float(h["value"]) - float(p[a])), math.sqrt(v[a]) if v is not None else 0.0
        d = p[: len(h["position"])] - np.asarray(h["position"], dtype=np.float64)
        dist = float(np.linalg.norm(d))
        sd = math.sqrt(float(np.sum(d**2 * v[: d.size])) / dist**2) if v is not None and dist > 0 else 0.0
        return dist - float(h.get("radius", 0.0)), sd

    def step(self, t_s, prediction_mean, prediction_var=None, truth=None) -> None:
        cfg = self.config
        c, sd = self.clearance(prediction_mean, prediction_var)
        if math.isfinite(c):  # a missing prediction keeps the alarm state
            c -= cfg.sigma_margin * sd
            self._on = c < cfg.threshold + (cfg.hysteresis if self._on else 0.0)
        danger = False
        if truth is not None:
            ct, _ = self.clearance(truth)
            danger = math.isfinite(ct) and ct < cfg.threshold
        self._t.append(float(t_s))
        self._alarm.append(self._on)
        self._danger.append(danger)

    def run_sequence(self, t: np.ndarray, mean: np.ndarray, var, truth: np.ndarray) -> None:
        """`step` over a whole sequence from reset: the clearances computed for all ticks at once (the same
        arithmetic, per row), the alarm's hysteresis stepped in plain floats. Point hazards take the step loop."""
        cfg, h = self.config, self.config.hazard
        if h is not None and h["kind"] != "wall":
            for i in range(t.size):
                self.step(t[i], mean[i], None if var is None else var[i], truth[i])
            return
        a = cfg.field if h is None else int(h["axis"])
        sign, value = (1.0, 0.0) if h is None else (1.0 if h.get("side", "below") == "below" else -1.0, float(h["value"]))

        def clear(x):
            return x[:, a] if h is None else sign * (value - x[:, a])

        c = clear(mean)
        sd = np.zeros_like(c) if var is None else np.sqrt(var[:, a])
        c = c - cfg.sigma_margin * sd
        ct = clear(truth)
        danger = (np.isfinite(ct) & (ct < cfg.threshold)).tolist()
        finite = np.isfinite(clear(mean)).tolist()
        on, hi, lo = self._on, cfg.threshold + cfg.hysteresis, cfg.threshold
        alarm = []
        for ci, ok in zip(c.tolist(), finite):
            if ok:
                on = ci < (hi if on else lo)
            alarm.append(on)
        self._on = on
        self._t.extend(float(x) for x in t)
        self._alarm.extend(alarm)
        self._danger.extend(danger)

    def summary(self) -> dict[str, float]:
        cfg = self.config
        t, alarm, danger = np.asarray(self._t), np.asarray(self._alarm, bool), np.asarray(self._danger, bool)
        minutes = (t[-1] - t[0]) / 60.0 if t.size > 1 else 0.0
        events, alarms = _runs(danger), _runs(alarm)
        delays, missed = [], 0
        for i0, i1 in events:
            lo = np.searchsorted(t, t[i0] - cfg.lead_s, side="left")
            on = np.flatnonzero(alarm[lo:i1])
            if on.size:
                delays.append(max(0.0, t[lo + on[0]] - t[i0]))
            else:
                missed += 1
        false_alarms = 0
        for a0, a1 in alarms:
            hit = any(a0 < i1 and np.searchsorted(t, t[i0] - cfg.lead_s, side="left") < a1 for i0, i1 in events)
            false_alarms += not hit
        toggles = int(np.sum(alarm[1:] != alarm[:-1]))
        out = {
            "false_alarms_per_min": _per(false_alarms, minutes),
            "missed_events": float(missed),
            "missed_frac": missed / len(events) if events else math.nan,
            "n_events": float(len(events)),
            "detection_delay_s": float(np.mean(delays)) if delays else math.nan,
            "toggles_per_min": _per(toggles, minutes),
        }
        out["cost"] = _per(false_alarms + cfg.miss_weight * missed + cfg.delay_weight * sum(delays), minutes)
        return out


def _per(count: float, minutes: float) -> float:
    """count per minute (NaN for a sequence shorter than one tick period)."""
    return float(count / minutes) if minutes > 0 else math.nan


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the runs of True in a boolean array."""
    if mask.size == 0:
        return []
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


# ---- intercept planner ----------------------------------------------------------------------

@dataclasses.dataclass
class InterceptPlannerConfig:
    """Decision period, look-ahead horizon and how the aim point is formed from predictions."""

    every_s: float = 0.5               # commit to an aim point every every_s seconds
    horizon_s: float = 0.5             # aim at where the target will be horizon_s later
    prediction_is_future: bool = False  # True: the prediction already is the position at t + horizon_s
    velocity_ticks: int = 1            # finite-difference span (ticks) for the velocity estimate
    fields: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for k in ("every_s", "horizon_s"):
            v = getattr(self, k)
            _check(owner, k, v, v > 0 and math.isfinite(v), "a finite number > 0")
        _check(owner, "velocity_ticks", self.velocity_ticks, self.velocity_ticks >= 1, "an integer >= 1")


@register_consumer("intercept")
class InterceptPlanner(Consumer):
    """Commits at decision ticks to where the target will be `horizon_s` later; scored by miss distance.

    Aim point at decision time t: â = ŷ_t + horizon_s · (ŷ_t − ŷ_{t−w}) / (t − t_{t−w}) with
    w = velocity_ticks (finite-difference velocity of the predictions, so jitter is amplified by
    horizon_s / dt), or â = ŷ_t when `prediction_is_future`. The truth fed to `step` is always the
    target's current position; it is interpolated linearly at t + horizon_s, and the miss is
    ||â − y(t + horizon_s)||. The first decision waits until a velocity is available (w + 1
    predictions); aims whose time falls after the last tick are not scored.
    Costs: miss_mean, miss_p90, n_decisions. Headline cost = miss_mean.
    """

    config_class = InterceptPlannerConfig

    def reset(self) -> None:
        self._hist: list[tuple[float, np.ndarray]] = []
        self._pending: list[tuple[float, np.ndarray]] = []
        self._next_decision = -math.inf
        self._prev_truth: tuple[float, np.ndarray] | None = None
        self._misses: list[float] = []

    def _aim(self, t_s: float, p: np.ndarray) -> np.ndarray:
        cfg = self.config
        if cfg.prediction_is_future:
            return p
        t_old, p_old = self._hist[-1 - cfg.velocity_ticks]
        if t_s <= t_old:
            return p
        return p + cfg.horizon_s * (p - p_old) / (t_s - t_old)

    def step(self, t_s, prediction_mean, prediction_var=None, truth=None) -> None:
        cfg = self.config
        p = _fields(prediction_mean, cfg.fields)
        if np.isfinite(p).all():
            self._hist.append((float(t_s), p))
            del self._hist[: -cfg.velocity_ticks - 1]
            ready = cfg.prediction_is_future or len(self._hist) > cfg.velocity_ticks
            if ready and t_s >= self._next_decision - 1e-9:
                self._pending.append((t_s + cfg.horizon_s, self._aim(t_s, p)))
                self._next_decision = t_s + cfg.every_s
        if truth is None:
            return
        y = _fields(truth, cfg.fields)
        if not np.isfinite(y).all():
            return
        keep = []
        for t_aim, aim in self._pending:
            if t_aim > t_s:
                keep.append((t_aim, aim))
                continue
            if self._prev_truth is not None and t_aim > self._prev_truth[0]:
                t0, y0 = self._prev_truth
                y_at = y0 + (y - y0) * (t_aim - t0) / (t_s - t0)
            else:
                y_at = y
            self._misses.append(float(np.linalg.norm(aim - y_at)))
        self._pending = keep
        self._prev_truth = (float(t_s), y)

    def summary(self) -> dict[str, float]:
        m = np.asarray(self._misses)
        out = {
            "miss_mean": float(m.mean()) if m.size else math.nan,
            "miss_p90": float(np.percentile(m, 90)) if m.size else math.nan,
            "n_decisions": float(m.size),
        }
        out["cost"] = out["miss_mean"]
        return out
