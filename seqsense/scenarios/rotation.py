"""Unit quaternions (w, x, y, z), vectorized over a leading axis.

Convention: q maps body vectors to world vectors, v_w = q ⊗ (0, v_b) ⊗ q*. A body angular velocity
ω_b held for Δt advances q_{k+1} = q_k ⊗ Exp(ω_b Δt), with Exp(φ) = (cos(|φ|/2), sin(|φ|/2)·φ/|φ|).
The product of many increments is a prefix scan; it is computed in ⌈log₂ N⌉ vectorized rounds
(Hillis-Steele: x[s:] ← x[:−s] ⊗ x[s:] for s = 1, 2, 4, …), which is exact because ⊗ is associative.
"""

from __future__ import annotations

import numpy as np


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a ⊗ b of quaternion arrays (..., 4)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quat_exp(rotvec: np.ndarray) -> np.ndarray:
    """Exp of rotation vectors (..., 3) as unit quaternions (..., 4)."""
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(|φ|/2)/|φ| → ½ as |φ| → 0; the series keeps small angles exact
    scale = np.where(angle > 1e-8, np.sin(half) / np.where(angle > 1e-8, angle, 1.0), 0.5 - angle**2 / 48.0)
    return np.concatenate([np.cos(half), rotvec * scale], axis=-1)


def quat_conj(q: np.ndarray) -> np.ndarray:
    """Conjugate (inverse of a unit quaternion)."""
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """v rotated by q: q ⊗ (0, v) ⊗ q*, for (..., 4) and (..., 3)."""
    qv = np.concatenate([np.zeros(v.shape[:-1] + (1,)), v], axis=-1)
    return quat_mul(quat_mul(q, qv), quat_conj(q))[..., 1:]


def rotate_inverse(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World vector v expressed in the body frame: q* ⊗ (0, v) ⊗ q."""
    return rotate(quat_conj(q), v)


def prefix_product(d: np.ndarray) -> np.ndarray:
    """Inclusive prefix products d_0 ⊗ d_1 ⊗ … ⊗ d_k for k = 0..N−1 of quaternions d (N, 4)."""
    x = np.array(d, dtype=np.float64, copy=True)
    s = 1
    while s < len(x):
        x[s:] = quat_mul(x[:-s], x[s:])
        s *= 2
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def integrate_body_rates(q0: np.ndarray, omega: np.ndarray, dt: float) -> np.ndarray:
    """Orientations (N + 1, 4): q0 then q_{k+1} = q_k ⊗ Exp(ω_k Δt) for body rates ω (N, 3) held over Δt."""
    steps = prefix_product(quat_exp(np.asarray(omega, np.float64) * dt))
    q = np.concatenate([q0[None], quat_mul(np.broadcast_to(q0, steps.shape), steps)])
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q


def random_quaternion(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random unit quaternion with w ≥ 0."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def canonical(q: np.ndarray) -> np.ndarray:
    """q with the sign chosen so that w ≥ 0 (q and −q are the same rotation)."""
    return np.where(q[..., :1] < 0, -q, q)
