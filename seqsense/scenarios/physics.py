"""Motion models shared by the scenarios: a bouncing ball, Ornstein-Uhlenbeck forces, smooth signals.

Ball (normalized units, y down, box [r, 1 − r]² so the disk stays fully in view):
  a = g·ŷ − c·v + f(t),   f an OU force per axis: f_{k+1} = ρ f_k + √(1 − ρ²)·σ_f·w_k, ρ = e^(−Δt/τ).
Each step holds a constant over Δt and integrates exactly (x += vΔt + ½aΔt², v += aΔt). A wall hit is
located by solving ½a t² + v t + (x − wall) = 0 for the impact time t* in the step, the normal
velocity is reflected with restitution e (v ← −e·v) and the rest of the step continues from the wall,
so with e = 1, c = 0 and σ_f = 0 the mechanical energy ½|v|² − g·y is conserved to rounding error.
A second hit within the same step (a ball settling on the floor) leaves it resting on the wall.

`ball_step` is the same step for a batch of balls (a particle filter's prediction).

Smooth signal: s(t) = Σ_j a_j sin(ω_j t + φ_j), with closed-form derivative and integral, used where a
sensor needs exact derivatives of the truth (accelerometers, gyroscopes).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter


def ou_process(rng: np.random.Generator, n: int, dims: int, dt: float, tau_s: float, std: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck samples (n, dims) with time constant `tau_s` and marginal std `std`."""
    rho = math.exp(-dt / tau_s)
    w = rng.standard_normal((n, dims)) * std  # w[0] keeps the stationary std: y[0] = w[0]
    w[1:] *= math.sqrt(1.0 - rho * rho)
    return lfilter([1.0], [1.0, -rho], w, axis=0)


def _impact_time(x0: float, v0: float, a: float, wall: float, dt: float) -> float:
    """Earliest t in [0, dt] with x0 + v0·t + ½·a·t² = wall (dt if none is found, which rounding can cause)."""
    c = x0 - wall
    if abs(a) < 1e-12:
        return min(dt, max(0.0, -c / v0)) if v0 != 0 else dt
    disc = v0 * v0 - 2.0 * a * c
    if disc < 0:
        return dt
    sq = math.sqrt(disc)
    roots = sorted(((-v0 - sq) / a, (-v0 + sq) / a))
    for t in roots:
        if -1e-12 <= t <= dt + 1e-12:
            return min(dt, max(0.0, t))
    return dt


def simulate_ball(
    rng: np.random.Generator,
    n_steps: int,
    dt: float,
    *,
    radius: float,
    gravity: float,
    drag: float,
    restitution: float,
    force: float,
    force_tau_s: float,
    speed: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Positions and velocities (n_steps + 1, 2) of a bouncing ball on the step grid, and the bounce count."""
    lo, hi = radius, 1.0 - radius
    p = [float(v) for v in rng.uniform(lo, hi, size=2)]
    ang = rng.uniform(0.0, 2.0 * math.pi)
    v = [speed * math.cos(ang), speed * math.sin(ang)]
    f = ou_process(rng, n_steps, 2, dt, force_tau_s, force) if force > 0 else np.zeros((n_steps, 2))
    fx, fy = f[:, 0].tolist(), f[:, 1].tolist()
    g = (0.0, gravity)
    P = np.empty((n_steps + 1, 2))
    V = np.empty((n_steps + 1, 2))
    P[0], V[0] = p, v
    bounces = 0
    for k in range(n_steps):
        fk = (fx[k], fy[k])
        for ax in (0, 1):
            x0, v0 = p[ax], v[ax]
            a = g[ax] - drag * v0 + fk[ax]
            x1 = x0 + v0 * dt + 0.5 * a * dt * dt
            if lo <= x1 <= hi:
                p[ax], v[ax] = x1, v0 + a * dt
                continue
            wall = lo if x1 < lo else hi
            t_hit = _impact_time(x0, v0, a, wall, dt)
            v_hit = -restitution * (v0 + a * t_hit)
            rest = dt - t_hit
            x1 = wall + v_hit * rest + 0.5 * a * rest * rest
            if lo <= x1 <= hi:
                p[ax], v[ax] = x1, v_hit + a * rest
                bounces += 1
            else:  # a second hit within the step: the ball comes to rest against the wall
                p[ax], v[ax] = wall, 0.0
        P[k + 1], V[k + 1] = p, v
    return P, V, bounces


def _impact_times(x0: np.ndarray, v0: np.ndarray, a: np.ndarray, wall: np.ndarray, dt: float) -> np.ndarray:
    """`_impact_time` for arrays of balls at once (same roots, same tolerances)."""
    c = x0 - wall
    small = np.abs(a) < 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        linear = np.where(v0 != 0, np.clip(-c / np.where(v0 != 0, v0, 1.0), 0.0, dt), dt)
        disc = v0 * v0 - 2.0 * a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        a_safe = np.where(small, 1.0, a)
        r1, r2 = (-v0 - sq) / a_safe, (-v0 + sq) / a_safe
    first, second = np.minimum(r1, r2), np.maximum(r1, r2)

    def ok(t):
        return (t >= -1e-12) & (t <= dt + 1e-12)

    quad = np.clip(np.where(ok(first), first, np.where(ok(second), second, dt)), 0.0, dt)
    return np.where(small, linear, np.where(disc < 0, dt, quad))


def ball_step(
    p: np.ndarray, v: np.ndarray, force: np.ndarray, dt: float, *, radius: float, gravity: float, drag: float,
    restitution: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One physics step of many balls at once, p, v, force (B, 2) -> (p, v): the maths of `simulate_ball`."""
    lo, hi = radius, 1.0 - radius
    a = np.array([0.0, gravity]) - drag * v + force  # (B, 2)
    x1 = p + v * dt + 0.5 * a * dt * dt
    v1 = v + a * dt
    out = (x1 < lo) | (x1 > hi)
    if out.any():
        x0, v0, ao = p[out], v[out], a[out]
        wall = np.where(x1[out] < lo, lo, hi)
        t_hit = _impact_times(x0, v0, ao, wall, dt)
        v_hit = -restitution * (v0 + ao * t_hit)
        rest = dt - t_hit
        x2 = wall + v_hit * rest + 0.5 * ao * rest * rest
        inside = (x2 >= lo) & (x2 <= hi)
        x1[out] = np.where(inside, x2, wall)  # a second hit within the step: at rest against the wall
        v1[out] = np.where(inside, v_hit + ao * rest, 0.0)
    return x1, v1


def interp_rows(t_grid: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation of `values` (N, D) sampled at `t_grid` (N,) at times `t` (any shape)."""
    t = np.clip(t, t_grid[0], t_grid[-1])
    flat = t.reshape(-1)
    out = np.stack([np.interp(flat, t_grid, values[:, d]) for d in range(values.shape[1])], axis=-1)
    return out.reshape(t.shape + (values.shape[1],))


class SmoothSignal:
    """A random smooth signal per dimension: s(t) = Σ_j a_j sin(ω_j t + φ_j); owns (a, ω, φ).

    Frequencies are drawn uniformly in [0.2, 1]·`max_freq_hz`·2π and amplitudes scaled so that the
    signal's standard deviation is `std` per dimension.
    """

    def __init__(self, rng: np.random.Generator, dims: int, std: float, max_freq_hz: float, terms: int = 6):
        self.omega = rng.uniform(0.2, 1.0, size=(terms, dims)) * 2.0 * math.pi * max_freq_hz
        self.phase = rng.uniform(0.0, 2.0 * math.pi, size=(terms, dims))
        a = rng.uniform(0.5, 1.0, size=(terms, dims))
        self.amp = a * std / np.sqrt(0.5 * (a**2).sum(axis=0))  # var of Σ a sin = Σ a²/2

    def value(self, t: np.ndarray) -> np.ndarray:
        """s(t), (N, dims)."""
        return (self.amp * np.sin(self.omega * t[:, None, None] + self.phase)).sum(axis=1)

    def derivative(self, t: np.ndarray) -> np.ndarray:
        """ds/dt, (N, dims)."""
        return (self.amp * self.omega * np.cos(self.omega * t[:, None, None] + self.phase)).sum(axis=1)

    def second_derivative(self, t: np.ndarray) -> np.ndarray:
        """d²s/dt², (N, dims)."""
        return -(self.amp * self.omega**2 * np.sin(self.omega * t[:, None, None] + self.phase)).sum(axis=1)

    def integral(self, t: np.ndarray) -> np.ndarray:
        """∫₀ᵗ s dt', (N, dims)."""
        c = self.amp / self.omega
        return (c * (np.cos(self.phase) - np.cos(self.omega * t[:, None, None] + self.phase))).sum(axis=1)
