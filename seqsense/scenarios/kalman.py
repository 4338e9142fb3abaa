"""Linear-Gaussian systems: continuous models, exact discretization, the optimal filter and smoother.

Continuous model  dx = A x dt + L dβ,  E[dβ dβᵀ] = Q_c dt;  measured y_k = H x_k + v_k, v_k ~ N(0, R).
Exact discretization over Δt (Van Loan 1978): with M = [[−A, L Q_c Lᵀ], [0, Aᵀ]]·Δt and E = exp(M),
F = E₂₂ᵀ and Q = F·E₁₂. Stationary covariance P∞ solves A P + P Aᵀ + L Q_c Lᵀ = 0.

Kalman filter (prior m₀, P₀ for x₀):   P⁻_k = F P_{k−1} Fᵀ + Q (P⁻_0 = P₀),  S = H P⁻ Hᵀ + R,
K = P⁻ Hᵀ S⁻¹,  m_k = m⁻_k + K (y_k − H m⁻_k),  P_k = (I − K H) P⁻_k (Joseph form below).
RTS smoother:  G_k = P_k Fᵀ (P⁻_{k+1})⁻¹,  mˢ_k = m_k + G_k (mˢ_{k+1} − F m_k),
Pˢ_k = P_k + G_k (Pˢ_{k+1} − P⁻_{k+1}) G_kᵀ.
Covariances and gains do not depend on the data, so `KalmanSchedule` computes them once per time
grid and every episode only runs the cheap mean recursions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.linalg import expm, solve_continuous_lyapunov


def discretize(A: np.ndarray, LQcLt: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(F, Q) of the continuous model (A, L Q_c Lᵀ) over a step `dt` (Van Loan)."""
    n = A.shape[0]
    M = np.zeros((2 * n, 2 * n))
    M[:n, :n] = -A
    M[:n, n:] = LQcLt
    M[n:, n:] = A.T
    E = expm(M * dt)
    F = E[n:, n:].T
    Q = F @ E[:n, n:]
    return F, 0.5 * (Q + Q.T)


def stationary_cov(A: np.ndarray, LQcLt: np.ndarray) -> np.ndarray:
    """P∞ with A P + P Aᵀ + L Q_c Lᵀ = 0 (A must be stable)."""
    P = solve_continuous_lyapunov(A, -LQcLt)
    return 0.5 * (P + P.T)


@dataclasses.dataclass
class KalmanSchedule:
    """Filter and smoother covariances and gains of a system over N steps; owns no data."""

    P_filt: np.ndarray  # (N, n, n)
    P_smooth: np.ndarray  # (N, n, n)
    K: np.ndarray  # (N, n, m) Kalman gains
    G: np.ndarray  # (N - 1, n, n) smoother gains


def kalman_schedule(F, Q, H, R, P0, n_steps: int) -> KalmanSchedule:
    """Covariances and gains of the filter and the RTS smoother for `n_steps` measurements."""
    n = F.shape[0]
    I = np.eye(n)
    P_filt = np.empty((n_steps, n, n))
    P_pred = np.empty((n_steps, n, n))
    K = np.empty((n_steps, n, H.shape[0]))
    P = P0
    for k in range(n_steps):
        Pp = P if k == 0 else F @ P @ F.T + Q
        S = H @ Pp @ H.T + R
        Kk = np.linalg.solve(S, H @ Pp).T  # Pp Hᵀ S⁻¹ (S and Pp symmetric)
        IKH = I - Kk @ H
        P = IKH @ Pp @ IKH.T + Kk @ R @ Kk.T  # Joseph form: stays symmetric positive definite
        P = 0.5 * (P + P.T)
        P_pred[k], P_filt[k], K[k] = Pp, P, Kk
    G = np.empty((max(0, n_steps - 1), n, n))
    P_smooth = np.empty_like(P_filt)
    P_smooth[-1] = P_filt[-1]
    for k in range(n_steps - 2, -1, -1):
        G[k] = np.linalg.solve(P_pred[k + 1], F @ P_filt[k]).T  # P_k Fᵀ (P⁻_{k+1})⁻¹
        Ps = P_filt[k] + G[k] @ (P_smooth[k + 1] - P_pred[k + 1]) @ G[k].T
        P_smooth[k] = 0.5 * (Ps + Ps.T)
    return KalmanSchedule(P_filt, P_smooth, K, G)


def filter_means(F, H, m0, sched: KalmanSchedule, y: np.ndarray) -> np.ndarray:
    """Filter means (N, n) for measurements y (N, m)."""
    out = np.empty((len(y), F.shape[0]))
    m = m0
    for k in range(len(y)):
        mp = m if k == 0 else F @ m
        m = mp + sched.K[k] @ (y[k] - H @ mp)
        out[k] = m
    return out


def smoother_means(F, m_filt: np.ndarray, sched: KalmanSchedule) -> np.ndarray:
    """RTS smoother means (N, n) from the filter means."""
    out = np.empty_like(m_filt)
    out[-1] = m_filt[-1]
    for k in range(len(m_filt) - 2, -1, -1):
        out[k] = m_filt[k] + sched.G[k] @ (out[k + 1] - F @ m_filt[k])
    return out


def simulate(rng: np.random.Generator, F, Q, H, R, m0, P0, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """States (N, n) and measurements (N, m) of the discrete system."""
    n, m = F.shape[0], H.shape[0]
    w = rng.standard_normal((n_steps, n)) @ psd_sqrt(Q).T
    x = np.empty((n_steps, n))
    x[0] = m0 + psd_sqrt(P0) @ rng.standard_normal(n)
    for k in range(1, n_steps):
        x[k] = F @ x[k - 1] + w[k]
    y = x @ H.T + rng.standard_normal((n_steps, m)) @ psd_sqrt(R).T
    return x, y


def psd_sqrt(S: np.ndarray) -> np.ndarray:
    """A matrix B with B Bᵀ = S for a symmetric positive semi-definite S (eigenvalues below 0 set to 0)."""
    lam, V = np.linalg.eigh(0.5 * (S + S.T))
    return V * np.sqrt(np.clip(lam, 0.0, None))
