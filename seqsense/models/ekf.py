"""Extended Kalman filter for the direction of gravity in the body frame from a raw IMU (gyro + accel).

Shape letters: B batch, T ticks. Frames as in `seqsense.scenarios.rotation`: q maps body to world,
g_b = R(q)ᵀ (0, 0, −1) is the unit direction of gravity in the body frame, G = 9.80665 m/s².

**State** x = (g, b) ∈ R⁶: g the gravity direction (body frame, kept unit), b the gyro bias (rad/s).

**Process** over a step Δt with gyro reading ω̃ = ω + b + n_g (n_g white, density σ_g rad/s/√Hz):

    φ = −(ω̃ − b) Δt,     g' = Exp(φ) g,     b' = b + w_b,   w_b ~ N(0, σ_b² Δt I)

(the body turns by Exp(ωΔt), q' = q ⊗ Exp(ωΔt), so a world-fixed vector seen from the body turns the
other way: g' = Exp(ωΔt)ᵀ g). With R = Exp(φ) (Rodrigues) and the right Jacobian J_r(φ)
(Exp(φ + δ) = Exp(φ) Exp(J_r δ); J_r ≈ I − ½[φ]× + ⅙[φ]×², exact to O(|φ|³)),

    L = ∂g'/∂φ = −R [g]× J_r,     F = [[R, L Δt], [0, I]],
    Q = blockdiag(σ_g² Δt L Lᵀ, σ_b² Δt I),      P' = F P Fᵀ + Q.

Which reading drives the step from t_{k−1} to t_k is `gyro_hold`: "previous" (ω̃_{k−1} held forward,
q_k = q_{k−1} ⊗ Exp(ω_{k−1}Δt), exactly how `imu_motion` integrates, so the noise-free gyro tracks the
truth to rounding) or "current" (ω̃_k, for IMUs whose sample averages the interval before it). The
state carries the last valid reading ("gyro_prev"); an invalid gyro tick reuses it (zero-order hold).

**Measurement** z = accel (specific force, body frame) = −G g + R(q)ᵀ a_w + n_a:

    h(x) = −G g,   H = [−G I, 0],   R_k = (σ_a² + κ e_k²) I,   e_k = ‖z_k‖ − G.

σ_a absorbs the body's linear acceleration (coloured, so the best σ_a is well above the sensor's white
noise; `fit` learns it). The gate κ ≥ 0 inflates R when the measured magnitude departs from G (taps,
strong motion): a 30 m/s² tap gives e ≈ 20 m/s² and the accelerometer is all but ignored for it.
The 3×3 innovation covariance S = G² P_gg + R_k is inverted in closed form (adjugate / determinant),
so the step traces into ONNX (no Cholesky or inverse op); the covariance update is in Joseph form.

**Renormalisation** after each tick: g ← g / ‖g‖, and P ← T P Tᵀ with T = blockdiag(J, I),
J = (I − ĝĝᵀ) / ‖g‖ the Jacobian of the normalisation. P_gg therefore lives in the tangent plane of g
(rank 2): the magnitude of the accelerometer says nothing about the direction, and it pulls nothing.

**First tick** (state "started" = 0): no predict; the first valid accelerometer sample sets
g = −z/‖z‖, b = 0, P = blockdiag(p_g² (I − ggᵀ), p_b² I). Until then the output is the level prior
(0, 0, −1) with unit variance.

**Output**: mean g (B, 3) and per-axis variance var_i = P_gg,ii + (½ tr(P_gg²) + ¼ (tr P_gg)²) g_i²:
the second moment of the radial error a unit-norm estimate makes (e = δ − ½|δ|² g for a tangent error
δ ~ N(0, P_gg)), so the variance along g is not zero.

**Noise parameters** θ = (σ_g, σ_b, σ_a, p_g, p_b, κ) are learnable (nn.Parameters, float64), each
kept inside a physical range by a squashed parameterisation (as gpytorch's raw_lengthscale →
lengthscale): the parameter is an unconstrained `raw_<name>` r and

    value = exp(log lo + (log hi − log lo) · sigmoid(r)),

log-uniform between the bounds, never reaching them (`NOISE_RANGES`, units as above):

    σ_g  gyro_noise_density  [1e-5, 1]    rad/s/√Hz  (MEMS ~1e-4; 1 is a gyro that says nothing)
    σ_b  gyro_bias_walk      [1e-8, 1e-2] rad/s²/√Hz (1e-2 walks 0.1 rad/s in 100 s)
    σ_a  accel_meas_std      [1e-3, 20]   m/s²       (white noise up to ~2 G of linear acceleration)
    p_g  init_tilt_std       [1e-3, π]    rad        (p_g² ≤ π²: no prior wider than the sphere)
    p_b  init_bias_std       [1e-5, 1]    rad/s
    κ    accel_gate          [1e-6, 100]  1          (1e-6: no gate; 100 drops a 1 m/s² departure)

Starting values outside a range (a noise-free log's zero knobs) are clamped into it.
`fit` tunes the raw parameters by Adam on the filter's squared error against the target, one step per
short chunk, with the state's sensitivity to θ carried along the sequence (see `fit` for why not
truncated back-propagation). `fit_validated` wraps it so that the fit is **never worse than its start
on validation episodes**: it tunes on training sequences (long ones cut into segments of
`segment_ticks`, each run from reset, so memory and wall time stay bounded), scores the start and the
values after each epoch on whole validation sequences, and keeps a fitted set only if it lowers the
validation loss by a margin; otherwise the start values stay and its report says so. Both losses skip
a burn-in after each reset (the start-up transient from the first accelerometer sample) and ticks
whose target is invalid (NaN truth, motion-capture dropouts). `GravityEKF.from_provenance` starts from
a generated log's scenario knobs.

**Per-tick pieces** (module functions, tensors (B, ...), float64, for hybrid filters such as KalmanNet):
`transition(m, gyro, dt_s) -> (m', F, L)`, `process_noise(L, dt_s, σ_g, σ_b) -> Q`,
`ekf_predict(m, P, gyro, dt_s, Q) -> (m', P')` (any Q), `predict(m, P, gyro, dt_s, σ_g, σ_b)`;
`measurement_noise(z, σ_a, κ) -> r (B,)`, `ekf_update(m, P, z, r or R, gain=None) -> (m, P, v, K, log-lik)`
(innovation v and gain K; a given gain replaces the Kalman gain), `update(m, P, z, σ_a, κ) -> (m, P, log-lik)`;
`accel_init`, `renormalize`, `gravity_output`; `advance` composes them into one tick.

**The family `ekf`** (`EKFConfig`, `EKFModel`, at the end of this file) runs the filter behind the
shared model interface on a gyro and an accelerometer input (`gyro_stream`, `accel_stream`: a stream
or a `stream[i:j]` slice of 3 fields) for a 3-D gravity-direction target such as `imu_motion`'s
`truth/gravity_body`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from seqsense.config import STREAM_SLICE, parse_stream_slice
from seqsense.errors import ConfigError
from seqsense.models.base import ModelConfig, SequenceModel, register_model

GRAVITY_MPS2 = 9.80665  # the same constant as seqsense.scenarios.imu
STATE_DIM = 6  # (g (3), b (3))
GYRO_HOLDS = ("previous", "current")
LOG_2PI = math.log(2.0 * math.pi)
NOISE_NAMES = ("gyro_noise_density", "gyro_bias_walk", "accel_meas_std", "init_tilt_std", "init_bias_std", "accel_gate")
DEFAULT_NOISE = {  # consumer MEMS values of seqsense.scenarios.imu; σ_a for ~1 m/s² rms linear acceleration
    "gyro_noise_density": 1.7e-4,  # σ_g, rad/s/√Hz
    "gyro_bias_walk": 2.0e-5,  # σ_b, rad/s²/√Hz
    "accel_meas_std": 5.0,  # σ_a, m/s² per tick
    "init_tilt_std": 0.1,  # p_g, rad
    "init_bias_std": 0.005,  # p_b, rad/s
    "accel_gate": 1.0,  # κ, dimensionless
}
NOISE_RANGES = {  # (lo, hi) of each noise value; the squashed parameterisation keeps it inside (module docstring)
    "gyro_noise_density": (1e-5, 1.0),  # rad/s/√Hz
    "gyro_bias_walk": (1e-8, 1e-2),  # rad/s²/√Hz
    "accel_meas_std": (1e-3, 20.0),  # m/s²
    "init_tilt_std": (1e-3, math.pi),  # rad
    "init_bias_std": (1e-5, 1.0),  # rad/s
    "accel_gate": (1e-6, 100.0),  # dimensionless
}
SQUASH_MARGIN = 1e-6  # a starting value at a bound sits this fraction (of the log range) inside it
FIT_SUMMARY_FIELDS = ("status", "start_val_loss", "chosen_val_loss", "chosen_epoch")  # GravityEKF.fit_summary
FIT_STATUS = {0: "not_fitted", 1: "kept_start", 2: "kept_fit"}
ACCEL_COLOUR = 5.0  # σ_a ≈ ACCEL_COLOUR · accel_std (coloured linear acceleration): best of 3, 5, 7, 10 on default 20 s imu_motion


# ---- rotation algebra --------------------------------------------------------------------------
def skew(v: torch.Tensor) -> torch.Tensor:
    """The cross-product matrix [v]× (..., 3, 3) of vectors v (..., 3): [v]× u = v × u."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2)


def so3_exp(phi: torch.Tensor) -> torch.Tensor:
    """Rotation matrices Exp(φ) (..., 3, 3) = I + (sin θ/θ)[φ]× + ((1 − cos θ)/θ²)[φ]×², θ = |φ|.

    Below θ² = 1e-8 the Taylor series is used; the double `where` keeps gradients finite at φ = 0.
    """
    th2 = (phi * phi).sum(-1)  # (...,)
    small = th2 < 1e-8
    th = torch.sqrt(torch.where(small, torch.ones_like(th2), th2))
    a = torch.where(small, 1.0 - th2 / 6.0, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24.0, (1.0 - torch.cos(th)) / (th * th))
    K = skew(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def inv3(S: torch.Tensor):
    """Closed-form inverse (..., 3, 3) and determinant (...,) of 3×3 matrices (adjugate / det)."""
    a, b, c = S[..., 0, 0], S[..., 0, 1], S[..., 0, 2]
    d, e, f = S[..., 1, 0], S[..., 1, 1], S[..., 1, 2]
    g, h, i = S[..., 2, 0], S[..., 2, 1], S[..., 2, 2]
    c00, c01, c02 = e * i - f * h, f * g - d * i, d * h - e * g  # cofactors of the first row
    det = a * c00 + b * c01 + c * c02
    adj = torch.stack([
        torch.stack([c00, c * h - b * i, b * f - c * e], -1),
        torch.stack([c01, a * i - c * g, c * d - a * f], -1),
        torch.stack([c02, b * g - a * h, a * e - b * d], -1),
    ], -2)
    return adj / det[..., None, None], det


# ---- the bounded noise parameterisation ---------------------------------------------------------
def _log_bounds(name: str) -> tuple[float, float]:
    lo, hi = NOISE_RANGES[name]
    return math.log(lo), math.log(hi)


def squash(raw: torch.Tensor, name: str) -> torch.Tensor:
    """Noise value exp(log lo + (log hi − log lo) · sigmoid(raw)) of an unconstrained raw parameter (any shape)."""
    a, b = _log_bounds(name)
    return torch.exp(a + (b - a) * torch.sigmoid(raw))


def unsquash(value: torch.Tensor, name: str) -> torch.Tensor:
    """The raw parameter of a noise value, clamped just inside NOISE_RANGES[name] (inverse of `squash`)."""
    a, b = _log_bounds(name)
    u = (torch.log(torch.as_tensor(value, dtype=torch.float64).clamp(min=1e-300)) - a) / (b - a)
    u = u.clamp(SQUASH_MARGIN, 1.0 - SQUASH_MARGIN)
    return torch.log(u) - torch.log1p(-u)


def noise_at(theta: torch.Tensor, rows: int = 1) -> dict[str, torch.Tensor]:
    """Raw parameter sets θ (D, K) -> noise values by name, each (D·rows,) (row-major: set d repeated `rows` times)."""
    return {k: squash(theta[:, j], k).repeat_interleave(rows) for j, k in enumerate(NOISE_NAMES)}


# ---- one EKF step, as plain functions ---------------------------------------------------------------
# Noise arguments are scalars (one filter) or (B,) tensors (one value per row, as `fit` uses them).
def _per_row(x) -> torch.Tensor:
    """A noise value, scalar or (B,), shaped (1 or B, 1, 1) to scale (B, 3, 3) blocks."""
    return torch.as_tensor(x).reshape(-1, 1, 1)


def transition(m: torch.Tensor, gyro: torch.Tensor, dt_s: torch.Tensor):
    """Process model of m (B, 6) over Δt (B,) with gyro readings ω̃ (B, 3) -> (m' (B, 6), F (B, 6, 6), L = ∂g'/∂φ (B, 3, 3))."""
    g, b = m[:, :3], m[:, 3:]
    dt = dt_s.clamp(min=0.0)[:, None]  # (B, 1)
    phi = -(gyro - b) * dt  # (B, 3)
    R = so3_exp(phi)  # (B, 3, 3)
    g_new = (R @ g.unsqueeze(-1)).squeeze(-1)
    K = skew(phi)
    eye = torch.eye(3, dtype=m.dtype, device=m.device)
    Jr = eye - 0.5 * K + (K @ K) / 6.0
    L = -R @ skew(g) @ Jr  # (B, 3, 3)
    zero = torch.zeros_like(R)
    F = torch.cat([torch.cat([R, L * dt[..., None]], -1), torch.cat([zero, eye.expand_as(R)], -1)], -2)
    return torch.cat([g_new, b], -1), F, L


def process_noise(L: torch.Tensor, dt_s: torch.Tensor, sigma_g, sigma_b) -> torch.Tensor:
    """Q (B, 6, 6) = blockdiag(σ_g² Δt L Lᵀ, σ_b² Δt I) for L (B, 3, 3) from `transition`."""
    dt = dt_s.clamp(min=0.0)[:, None, None]  # (B, 1, 1)
    eye = torch.eye(3, dtype=L.dtype, device=L.device)
    Qg = _per_row(sigma_g) ** 2 * dt * (L @ L.transpose(-1, -2))
    Qb = _per_row(sigma_b) ** 2 * dt * eye
    zero = torch.zeros_like(Qg)
    return torch.cat([torch.cat([Qg, zero], -1), torch.cat([zero, Qb.expand_as(Qg)], -1)], -2)


def ekf_predict(m: torch.Tensor, P: torch.Tensor, gyro: torch.Tensor, dt_s: torch.Tensor, Q: torch.Tensor):
    """EKF predict with a given process noise Q (B or 1, 6, 6): (m', F P Fᵀ + Q), for filters that bring their own Q."""
    m_new, F, _ = transition(m, gyro, dt_s)
    P = F @ P @ F.transpose(-1, -2) + Q
    return m_new, 0.5 * (P + P.transpose(-1, -2))


def predict(m: torch.Tensor, P: torch.Tensor, gyro: torch.Tensor, dt_s: torch.Tensor, sigma_g, sigma_b):
    """EKF predict of m (B, 6), P (B, 6, 6) over Δt (B,) with gyro readings ω̃ (B, 3) (module docstring)."""
    m_new, F, L = transition(m, gyro, dt_s)
    P = F @ P @ F.transpose(-1, -2) + process_noise(L, dt_s, sigma_g, sigma_b)
    return m_new, 0.5 * (P + P.transpose(-1, -2))


def measurement_noise(accel: torch.Tensor, sigma_a, gate) -> torch.Tensor:
    """Per-row accelerometer variance r (B,) = σ_a² + κ (‖z‖ − G)² of readings z (B, 3) (R = r I)."""
    e = torch.sqrt((accel * accel).sum(-1) + 1e-12) - GRAVITY_MPS2  # (B,); the epsilon keeps gradients finite at z = 0
    return sigma_a**2 + gate * e * e


def ekf_update(m: torch.Tensor, P: torch.Tensor, accel: torch.Tensor, r: torch.Tensor, gain: torch.Tensor | None = None):
    """EKF update with z = accel (B, 3), h = −G g and noise r (B,) (R = r I) or R (B, 3, 3).

    Returns (m, P, v, K, log-lik (B,)): v = z − h(m) (B, 3) the innovation and K (B, 6, 3) the gain
    used, the Kalman gain P Hᵀ S⁻¹ unless `gain` is given (a learned gain, as in KalmanNet; the Joseph
    form keeps P right for any gain). S is inverted in closed form, so the update traces into ONNX.
    """
    G = GRAVITY_MPS2
    eye3 = torch.eye(3, dtype=m.dtype, device=m.device)
    R = r[:, None, None] * eye3 if r.dim() == 1 else r  # (B, 3, 3)
    v = accel + G * m[:, :3]  # (B, 3) innovation z − h(m)
    PHt = -G * P[:, :, :3]  # (B, 6, 3)
    S = G * G * P[:, :3, :3] + R  # (B, 3, 3)
    S_inv, det = inv3(0.5 * (S + S.transpose(-1, -2)))
    K = PHt @ S_inv if gain is None else gain  # (B, 6, 3)
    m = m + (K @ v.unsqueeze(-1)).squeeze(-1)
    KH = torch.cat([-G * K, torch.zeros_like(K)], -1)  # (B, 6, 6)
    IKH = torch.eye(STATE_DIM, dtype=m.dtype, device=m.device) - KH
    KRKt = r[:, None, None] * (K @ K.transpose(-1, -2)) if r.dim() == 1 else K @ R @ K.transpose(-1, -2)
    P = IKH @ P @ IKH.transpose(-1, -2) + KRKt
    ll = -0.5 * (3 * LOG_2PI + torch.log(det) + (v.unsqueeze(-2) @ S_inv @ v.unsqueeze(-1))[:, 0, 0])
    return m, 0.5 * (P + P.transpose(-1, -2)), v, K, ll


def update(m: torch.Tensor, P: torch.Tensor, accel: torch.Tensor, sigma_a, gate):
    """EKF update with z = accel (B, 3), h = −G g, R = (σ_a² + κ(‖z‖ − G)²) I; returns (m, P, log-lik (B,))."""
    m, P, _, _, ll = ekf_update(m, P, accel, measurement_noise(accel, sigma_a, gate))
    return m, P, ll


def renormalize(m: torch.Tensor, P: torch.Tensor):
    """g ← g/‖g‖ and P ← T P Tᵀ, T = blockdiag((I − ĝĝᵀ)/‖g‖, I): P_gg moves into the tangent plane of g."""
    g = m[:, :3]
    n = torch.sqrt((g * g).sum(-1)).clamp(min=1e-12)  # (B,)
    gh = g / n[:, None]
    eye3 = torch.eye(3, dtype=m.dtype, device=m.device)
    J = (eye3 - gh.unsqueeze(-1) * gh.unsqueeze(-2)) / n[:, None, None]  # (B, 3, 3)
    zero = torch.zeros_like(J)
    T = torch.cat([torch.cat([J, zero], -1), torch.cat([zero, eye3.expand_as(J)], -1)], -2)
    P = T @ P @ T.transpose(-1, -2)
    return torch.cat([gh, m[:, 3:]], -1), 0.5 * (P + P.transpose(-1, -2))


def accel_init(accel: torch.Tensor, tilt_std, bias_std):
    """State from one accelerometer sample (B, 3): g = −z/‖z‖, b = 0, P = blockdiag(p_g²(I − ggᵀ), p_b² I)."""
    g = -accel / torch.sqrt((accel * accel).sum(-1, keepdim=True) + 1e-18)
    eye3 = torch.eye(3, dtype=accel.dtype, device=accel.device)
    Pg = _per_row(tilt_std) ** 2 * (eye3 - g.unsqueeze(-1) * g.unsqueeze(-2))
    Pb = _per_row(bias_std) ** 2 * eye3.expand(Pg.shape)
    zero = torch.zeros_like(Pg)
    P = torch.cat([torch.cat([Pg, zero], -1), torch.cat([zero, Pb], -1)], -2)
    return torch.cat([g, torch.zeros_like(g)], -1), P


def gravity_output(m: torch.Tensor, P: torch.Tensor):
    """Mean g (..., 3) and per-axis variance P_gg,ii + (½ tr(P_gg²) + ¼ (tr P_gg)²) g_i² (module docstring)."""
    g, Pg = m[..., :3], P[..., :3, :3]
    diag = (Pg * torch.eye(3, dtype=P.dtype, device=P.device)).sum(-1)  # not torch.diagonal: its ONNX form has If nodes
    tr = diag.sum(-1)
    tr2 = (Pg * Pg).sum((-2, -1))  # tr(P²) of a symmetric P
    var = diag + (0.5 * tr2 + 0.25 * tr * tr)[..., None] * g * g
    return g, var.clamp(min=1e-12)


def initial_state(batch_size: int, init_bias_std, device=None) -> dict[str, torch.Tensor]:
    """The state before any accelerometer sample (`GravityEKF.init_state`); p_b a float or (B,) tensor."""
    m = torch.zeros(batch_size, STATE_DIM, dtype=torch.float64, device=device)
    m[:, 2] = -1.0
    pb2 = torch.as_tensor(init_bias_std, dtype=torch.float64, device=device).reshape(-1) ** 2  # (1 or B,)
    diag = torch.cat([torch.ones(len(pb2), 3, dtype=torch.float64, device=device), pb2[:, None].expand(-1, 3)], -1)
    P = torch.diag_embed(diag).expand(batch_size, STATE_DIM, STATE_DIM).clone()
    zeros = torch.zeros(batch_size, dtype=torch.float64, device=device)
    return {"m": m, "P": P, "started": zeros, "gyro_prev": torch.zeros(batch_size, 3, dtype=torch.float64, device=device)}


# ---- the module ------------------------------------------------------------------------------------
class GravityEKF(nn.Module):
    """The gravity-direction EKF: owns the six noise parameters (float64, log space) and the gyro timing.

    Streaming: `init_state(B)`, then `step(gyro, accel, gyro_valid, accel_valid, dt_s, state)` per tick;
    offline: `run` over windows (B, T, ...), the same loop. The maths is in the module docstring.
    """

    def __init__(self, gyro_hold: str = "previous", **noise: float):
        super().__init__()
        if gyro_hold not in GYRO_HOLDS:
            raise ValueError(f"GravityEKF: gyro_hold must be one of {GYRO_HOLDS}, got {gyro_hold!r}.")
        unknown = sorted(set(noise) - set(NOISE_NAMES))
        if unknown:
            raise ValueError(f"GravityEKF: unknown noise parameter(s) {unknown}; valid: {', '.join(NOISE_NAMES)}.")
        self.gyro_hold = gyro_hold
        for name in NOISE_NAMES:
            value = float(noise.get(name, DEFAULT_NOISE[name]))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"GravityEKF: {name} must be a finite number >= 0, got {value!r}.")
            self.register_parameter(f"raw_{name}", nn.Parameter(unsquash(torch.tensor(value, dtype=torch.float64), name)))
        # what the last validated fit did (FIT_SUMMARY_FIELDS; status 0 = not fitted): travels in the checkpoint
        self.register_buffer("fit_summary", torch.tensor([0.0, math.nan, math.nan, -1.0], dtype=torch.float64), persistent=True)

    @classmethod
    def from_provenance(cls, provenance: dict, gyro_hold: str = "previous") -> "GravityEKF":
        """A filter whose noise starts from an `imu_motion`-style provenance (`noise_from_provenance`)."""
        return cls(gyro_hold=gyro_hold, **noise_from_provenance(provenance))

    def raw(self) -> list[nn.Parameter]:
        """The unconstrained parameters, in NOISE_NAMES order."""
        return [getattr(self, f"raw_{name}") for name in NOISE_NAMES]

    def noise(self) -> dict[str, torch.Tensor]:
        """The noise parameters by name (inside NOISE_RANGES, float64 scalars, differentiable)."""
        return {name: squash(r, name) for name, r in zip(NOISE_NAMES, self.raw())}

    def noise_values(self) -> dict[str, float]:
        """The noise parameters as plain floats (for logs and reports)."""
        return {k: float(v.detach()) for k, v in self.noise().items()}

    @torch.no_grad()
    def set_noise(self, **values: float) -> None:
        """Set noise parameters by name (clamped into NOISE_RANGES); ValueError naming an unknown one."""
        unknown = sorted(set(values) - set(NOISE_NAMES))
        if unknown:
            raise ValueError(f"GravityEKF: unknown noise parameter(s) {unknown}; valid: {', '.join(NOISE_NAMES)}.")
        for name, value in values.items():
            r = getattr(self, f"raw_{name}")
            r.copy_(unsquash(torch.tensor(float(value), dtype=torch.float64), name).to(r.device))

    def fit_summary_dict(self) -> dict:
        """The `fit_summary` buffer by field, status as a word (`FIT_STATUS`)."""
        v = self.fit_summary.tolist()
        return {"status": FIT_STATUS.get(int(v[0]), "unknown"), "start_val_loss": v[1], "chosen_val_loss": v[2], "chosen_epoch": int(v[3])}

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Before any accelerometer sample: m = (0, 0, −1, 0, 0, 0), P = blockdiag(I, p_b² I), started = 0."""
        return initial_state(batch_size, float(self.noise()["init_bias_std"].detach()), self.raw_accel_meas_std.device)

    def step(self, gyro, accel, gyro_valid, accel_valid, dt_s, state):
        """One tick: gyro/accel (B, 3), masks and dt_s (B,) -> (mean g (B, 3) f32, var (B, 3) f32, next state)."""
        _check_tick(gyro, accel, gyro_valid, accel_valid, dt_s, state)
        nxt = self._advance(gyro, accel, gyro_valid, accel_valid, dt_s, state)
        mean, var = gravity_output(nxt["m"], nxt["P"])
        return mean.float(), var.float(), nxt

    def run(self, gyro, accel, gyro_valid, accel_valid, dt_s, state=None):
        """Windows gyro/accel (B, T, 3), masks and dt_s (B, T) -> (mean (B, T, 3), var (B, T, 3) f32, last state)."""
        m, P, state = self.run64(gyro, accel, gyro_valid, accel_valid, dt_s, state)
        mean, var = gravity_output(m, P)
        return mean.float(), var.float(), state

    def run64(self, gyro, accel, gyro_valid, accel_valid, dt_s, state=None):
        """`run` keeping float64 states: m (B, T, 6), P (B, T, 6, 6) and the last state (differentiable)."""
        if gyro.dim() != 3:
            raise ValueError(f"GravityEKF.run: stream 'gyro' must be (B, T, 3), got {tuple(gyro.shape)}.")
        B, T = gyro.shape[:2]
        state = self.init_state(B) if state is None else state
        ms, Ps = [], []
        for t in range(T):
            args = (gyro[:, t], accel[:, t], gyro_valid[:, t], accel_valid[:, t], dt_s[:, t])
            _check_tick(*args, state)
            state = self._advance(*args, state)
            ms.append(state["m"])
            Ps.append(state["P"])
        return torch.stack(ms, 1), torch.stack(Ps, 1), state

    def _advance(self, gyro, accel, gyro_valid, accel_valid, dt_s, state) -> dict[str, torch.Tensor]:
        """The next state after one tick with this filter's noise (see `advance`)."""
        return advance(self.noise(), self.gyro_hold, gyro, accel, gyro_valid, accel_valid, dt_s, state)


def advance(noise: dict, gyro_hold: str, gyro, accel, gyro_valid, accel_valid, dt_s, state) -> dict[str, torch.Tensor]:
    """The next state (float64) after one tick: hold the gyro, predict, update, first-tick init, renormalise.

    Tensor ops only, no branching on values, so it traces into ONNX; noise values may be scalars or
    (B,) (one filter per row, as `fit` runs them). A gyro or accelerometer sample holding NaN/Inf is
    treated as missing (its mask is cleared), so one bad sample cannot poison the state.
    """
    w_new = gyro.to(torch.float64)
    z = accel.to(torch.float64)
    g_ok, a_ok = torch.isfinite(w_new).all(-1), torch.isfinite(z).all(-1)  # a NaN/Inf sample counts as missing
    w_new = torch.where(g_ok[:, None], w_new, torch.zeros_like(w_new))
    z = torch.where(a_ok[:, None], z, torch.zeros_like(z))
    gv = (gyro_valid.to(torch.bool) & g_ok)[:, None]
    av = accel_valid.to(torch.bool) & a_ok
    w_held = torch.where(gv, w_new, state["gyro_prev"])  # last valid reading, this tick's if valid
    w = state["gyro_prev"] if gyro_hold == "previous" else w_held
    m, P = predict(state["m"], state["P"], w, dt_s.to(torch.float64), noise["gyro_noise_density"], noise["gyro_bias_walk"])
    mu, Pu, _ = update(m, P, z, noise["accel_meas_std"], noise["accel_gate"])
    m = torch.where(av[:, None], mu, m)
    P = torch.where(av[:, None, None], Pu, P)
    m0, P0 = accel_init(z, noise["init_tilt_std"], noise["init_bias_std"])
    go = state["started"] > 0.5  # (B,)
    first = ~go & av  # the first valid accelerometer sample initialises instead
    m = torch.where(go[:, None], m, torch.where(first[:, None], m0, state["m"]))
    P = torch.where(go[:, None, None], P, torch.where(first[:, None, None], P0, state["P"]))
    m, P = renormalize(m, P)
    started = torch.where(go | av, torch.ones_like(state["started"]), state["started"])
    return {"m": m, "P": P, "started": started, "gyro_prev": w_held}


def _check_tick(gyro, accel, gyro_valid, accel_valid, dt_s, state) -> None:
    """ValueError naming the stream whose shape does not fit one tick of batch B."""
    B = gyro.shape[0] if gyro.dim() == 2 else None
    for name, x, shape in (("gyro", gyro, (B, 3)), ("accel", accel, (B, 3)), ("gyro_valid", gyro_valid, (B,)),
                           ("accel_valid", accel_valid, (B,)), ("dt_s", dt_s, (B,))):
        if B is None or tuple(x.shape) != shape:
            raise ValueError(f"GravityEKF.step: stream {name!r} must be {('B', *shape[1:])} with B = batch of 'gyro', "
                             f"got {tuple(x.shape)} (gyro {tuple(gyro.shape)}).")
    want = {"m": (B, STATE_DIM), "P": (B, STATE_DIM, STATE_DIM), "started": (B,), "gyro_prev": (B, 3)}
    for k, shape in want.items():
        if k not in state or tuple(state[k].shape) != shape:
            got = tuple(state[k].shape) if k in state else "missing"
            raise ValueError(f"GravityEKF.step: state {k!r} must be {shape}, got {got}; start from init_state({B}).")


# ---- starting values from a log --------------------------------------------------------------------
def noise_from_provenance(provenance: dict) -> dict[str, float]:
    """Noise starting values from scenario knobs (`imu_motion`: provenance["knobs"]), defaults otherwise.

    σ_g = gyro_noise_density, σ_b = gyro_bias_walk, p_b = gyro_bias_std; the linear acceleration
    (accel_std per axis, coloured) dominates the accelerometer error, so σ_a = ACCEL_COLOUR · accel_std
    (plus the white noise accel_noise_density·√rate_hz in quadrature), and the first tilt error
    p_g = atan(√(accel_std² + bias²)/G).
    """
    knobs = provenance.get("knobs") if isinstance(provenance, dict) else None
    out = dict(DEFAULT_NOISE)
    if not isinstance(knobs, dict):
        return out
    get = lambda k: float(knobs[k]) if isinstance(knobs.get(k), (int, float)) and not isinstance(knobs.get(k), bool) else None  # noqa: E731
    for name, knob in (("gyro_noise_density", "gyro_noise_density"), ("gyro_bias_walk", "gyro_bias_walk"), ("init_bias_std", "gyro_bias_std")):
        if get(knob) is not None:
            out[name] = get(knob)
    lin, dens, rate, ab = get("accel_std"), get("accel_noise_density"), get("rate_hz"), get("accel_bias_std")
    if lin is not None:
        white2 = (dens or 0.0) ** 2 * (rate or 200.0) + (ab or 0.0) ** 2
        out["accel_meas_std"] = max(math.sqrt((ACCEL_COLOUR * lin) ** 2 + white2), 1e-3)
        out["init_tilt_std"] = max(math.atan(math.sqrt(lin**2 + (ab or 0.0) ** 2) / GRAVITY_MPS2), 1e-3)
    return out


def provenance_of(path, episode: str | None = None) -> dict:
    """The provenance of a log file's episode (when it holds knobs) or else of the file, as `kalman.find_system` reads it."""
    from seqsense.log.reader import open_log

    log = open_log(path)
    try:
        if episode is not None and isinstance(log.episode(episode).provenance.get("knobs"), dict):
            return log.episode(episode).provenance
        return log.provenance
    finally:
        log.close()


# ---- fitting ----------------------------------------------------------------------------------------
SEQUENCE_KEYS = ("gyro", "accel", "gyro_valid", "accel_valid", "dt_s", "target", "target_valid")


def stack_sequences(sequences: Sequence[dict], device=None) -> dict[str, torch.Tensor]:
    """Sequences (dicts of (T, ...) arrays, e.g. `WindowDataset.sequence(k)`) -> batch (N, T_max, ...) tensors.

    Ticks past a sequence's end, and ticks flagged `tick_is_pad`, get dt_s = 0 and no valid
    measurement or target, so they change nothing.
    """
    if not sequences:
        raise ValueError("GravityEKF fit: no sequences given; pass at least one dict with keys " + ", ".join(SEQUENCE_KEYS) + ".")
    for i, s in enumerate(sequences):
        missing = [k for k in SEQUENCE_KEYS if k not in s]
        if missing:
            raise ValueError(f"GravityEKF fit: sequence {i} lacks {missing}; needed: {', '.join(SEQUENCE_KEYS)} "
                             "(inputs gyro and accel, target truth/gravity_body).")
        for k in ("gyro", "accel", "target"):
            shape = tuple(np.shape(s[k]))
            if len(shape) != 2 or shape[1] != 3:
                raise ValueError(f"GravityEKF fit: sequence {i} stream {k!r} must be (T, 3), got {shape}.")
    T = max(len(s["dt_s"]) for s in sequences)
    out = {}
    for k in SEQUENCE_KEYS:
        rows = []
        for s in sequences:
            x = torch.as_tensor(np.asarray(s[k]), device=device)
            x = x.to(torch.bool) if k.endswith("_valid") else x.to(torch.float64)
            if k.endswith("_valid") or k == "dt_s":
                pad = torch.as_tensor(np.asarray(s.get("tick_is_pad", np.zeros(len(x), bool))), device=device).to(torch.bool)
                x = x & ~pad if x.dtype == torch.bool else torch.where(pad, torch.zeros_like(x), x)
            rows.append(torch.cat([x, torch.zeros((T - len(x),) + x.shape[1:], dtype=x.dtype, device=device)]))
        out[k] = torch.stack(rows)
    # NaN truth (motion-capture dropouts) scores nothing and is zeroed, so no NaN reaches a loss or a gradient
    ok = out["target_valid"] & torch.isfinite(out["target"]).all(-1)
    out["target_valid"] = ok
    out["target"] = torch.where(ok[..., None], out["target"], torch.zeros_like(out["target"]))
    return out


def segment_sequences(sequences: Sequence[dict], max_ticks: int, min_ticks: int = 1) -> list[dict]:
    """Sequences cut into consecutive pieces of at most `max_ticks` ticks (pieces under `min_ticks` dropped; 0: no cut)."""
    if max_ticks <= 0:
        return list(sequences)
    out = []
    for s in sequences:
        n = len(s["dt_s"])
        for a in range(0, n, max_ticks):
            if min(n, a + max_ticks) - a >= min_ticks or (a == 0 and n < min_ticks):
                out.append({k: (v[a : a + max_ticks] if np.ndim(v) and len(v) == n else v) for k, v in s.items()})
    return out


def apply_burn_in(b: dict, burn_in_s: float) -> dict:
    """Stacked sequences with the target of the first `burn_in_s` seconds after each reset marked invalid."""
    if burn_in_s <= 0:
        return b
    elapsed = torch.cumsum(b["dt_s"], 1)  # (N, T) seconds since the sequence's first tick
    return {**b, "target_valid": b["target_valid"] & (elapsed >= burn_in_s)}


def _tick_losses(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, ok: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-tick loss (...,): squared error ‖ĝ − g‖² or Gaussian NLL summed over axes; 0 where the target is invalid."""
    if loss == "mse":
        per = ((mean - y) ** 2).sum(-1)
    else:
        per = 0.5 * (torch.log(var) + (mean - y) ** 2 / var + LOG_2PI).sum(-1)
    return torch.where(ok, per, torch.zeros_like(per))


@torch.no_grad()
def sequence_loss(ekf: GravityEKF, sequences: Sequence[dict], loss: str = "mse", burn_in_s: float = 0.0) -> float:
    """Mean per-tick loss (‖ĝ − g‖² or NLL) of the filter run over whole sequences from reset (NaN: no valid tick)."""
    theta = torch.stack([r.detach() for r in ekf.raw()])[None]  # (1, K)
    return float(losses_at(theta, ekf.gyro_hold, sequences, loss, burn_in_s)[0])


@torch.no_grad()
def losses_at(theta: torch.Tensor, gyro_hold: str, sequences, loss: str = "mse", burn_in_s: float = 0.0) -> torch.Tensor:
    """Mean per-tick loss (C,) of the filter at each raw parameter set θ (C, K), all run side by side over whole sequences.

    NaN for a set whose filter never scores a valid tick (no valid target after the burn-in) or diverges.
    """
    b = sequences if isinstance(sequences, dict) else stack_sequences(sequences, theta.device)
    b = apply_burn_in(b, burn_in_s)
    C, (N, T) = theta.shape[0], b["dt_s"].shape
    noise = noise_at(theta.to(torch.float64), N)  # (C·N,) each
    state = initial_state(C * N, noise["init_bias_std"], b["dt_s"].device)
    total = torch.zeros(C, dtype=torch.float64, device=b["dt_s"].device)
    rows = {k: v.repeat((C,) + (1,) * (v.dim() - 1)) for k, v in b.items()}  # (C·N, T, ...), set-major
    for t in range(T):
        x = {k: v[:, t] for k, v in rows.items()}
        state = advance(noise, gyro_hold, x["gyro"], x["accel"], x["gyro_valid"], x["accel_valid"], x["dt_s"], state)
        total += _tick_losses(*gravity_output(state["m"], state["P"]), x["target"], x["target_valid"], loss).reshape(C, N).sum(1)
    count = int(b["target_valid"].sum())
    return total / count if count else torch.full_like(total, math.nan)


FD_STEP = 1e-3  # central-difference step of the raw parameters


def _directions(k: int, dtype) -> torch.Tensor:
    """Offsets (1 + 2k, k) of θ: the base point, then +h e_j and −h e_j for each parameter j."""
    eye = torch.eye(k, dtype=dtype)
    return torch.cat([torch.zeros(1, k, dtype=dtype), FD_STEP * eye, -FD_STEP * eye])


@torch.no_grad()
def _fit_epoch(ekf: GravityEKF, b: dict, opt, chunk_ticks: int, loss: str, budget: list) -> float:
    """One pass of `fit` over the stacked sequences b (N, T, ...); returns the mean loss at θ.

    A chunk whose gradient is not finite (a filter that diverged at an offset) takes no step.
    """
    params = ekf.raw()
    N, T = b["dt_s"].shape
    K = len(params)
    offsets = _directions(K, torch.float64).to(b["dt_s"].device)  # (D, K), D = 2K + 1
    D = offsets.shape[0]
    rows = {k: v.repeat((D,) + (1,) * (v.dim() - 1)) for k, v in b.items()}  # (D·N, T, ...), direction-major
    state = ekf.init_state(D * N)
    chunk = torch.zeros(D, dtype=torch.float64, device=offsets.device)  # loss sums per direction over the chunk
    total, count, n_chunk = 0.0, 0, 0
    for t in range(T):
        x = {k: v[:, t] for k, v in rows.items()}
        theta = torch.stack([p.detach() for p in params]) + offsets  # (D, K)
        state = advance(noise_at(theta, N), ekf.gyro_hold, x["gyro"], x["accel"], x["gyro_valid"], x["accel_valid"], x["dt_s"], state)
        per = _tick_losses(*gravity_output(state["m"], state["P"]), x["target"], x["target_valid"], loss)  # (D·N,)
        chunk += per.reshape(D, N).sum(1)
        n = int(b["target_valid"][:, t].sum())
        total, count, n_chunk = total + float(per[:N].sum()), count + n, n_chunk + n
        if (t + 1) % chunk_ticks == 0 or t == T - 1:
            if n_chunk > 0 and budget[0] > 0:
                grad = (chunk[1 : K + 1] - chunk[K + 1 :]) / (2 * FD_STEP * n_chunk)  # (K,) = dL/dθ
                if bool(torch.isfinite(grad).all()):
                    for p, g in zip(params, grad):
                        p.grad = g.to(p.dtype).reshape(p.shape) if p.requires_grad else None
                    opt.step()
                budget[0] -= 1
            chunk.zero_()
            n_chunk = 0
    return total / max(count, 1)


def _check_fit_args(epochs: int, chunk_ticks: int, lr: float, loss: str, max_steps: int) -> None:
    if loss not in ("mse", "nll"):
        raise ValueError(f"GravityEKF fit: loss must be 'mse' or 'nll', got {loss!r}.")
    if epochs < 1 or chunk_ticks < 1 or not lr > 0 or max_steps < 0:
        raise ValueError(f"GravityEKF fit: need epochs >= 1, chunk_ticks >= 1, lr > 0, max_steps >= 0; "
                         f"got {epochs}, {chunk_ticks}, {lr}, {max_steps}.")


def _tune(ekf: GravityEKF, b: dict, epochs: int, chunk_ticks: int, lr: float, loss: str, max_steps: int, log):
    """Adam over `epochs` passes of `_fit_epoch`; returns (mean loss per epoch, raw θ (K,) after each epoch)."""
    params = ekf.raw()
    if not any(p.requires_grad for p in params):
        raise ValueError("GravityEKF fit: every noise parameter has requires_grad=False; nothing to fit.")
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=lr)
    losses, thetas, budget = [], [], [max_steps or math.inf]  # Adam steps left, shared across epochs
    for epoch in range(epochs):
        losses.append(_fit_epoch(ekf, b, opt, chunk_ticks, loss, budget))
        thetas.append(torch.stack([p.detach().clone() for p in params]))
        if log is not None:
            log(f"ekf fit epoch {epoch + 1}/{epochs}: {loss} {losses[-1]:.6g}, noise {ekf.noise_values()}")
    for p in params:
        p.grad = None
    return losses, thetas


def fit(sequences: Sequence[dict], ekf: GravityEKF | None = None, *, epochs: int = 3, chunk_ticks: int = 100,
        lr: float = 0.02, loss: str = "mse", max_steps: int = 0, burn_in_s: float = 0.0,
        log: Callable[[str], None] | None = None):
    """Tune the raw noise parameters θ by Adam on the filter's per-tick loss; returns (ekf, losses). No validation: see `fit_validated`.

    Each epoch runs all sequences side by side from reset; every `chunk_ticks` ticks one Adam step
    follows the gradient of that chunk's mean loss (squared error ‖ĝ − g‖², or "nll"; ticks in the
    first `burn_in_s` seconds and ticks with an invalid target score nothing).

    The gradient is not back-propagated through the chunk alone: the tilt filter's memory (tens of
    seconds at consumer gyro noise) outlasts any short chunk, and gradients truncated at the chunk
    start favour trusting the accelerometer too much (they cannot see the error it brings in
    later; measured with 100-tick chunks: σ_a fell 3.0 → 1.8 m/s² and the mean squared error rose
    0.0045 → 0.0055 in three epochs, while whole-sequence gradients raise σ_a). Instead the sensitivity of the state to θ is carried along the
    whole sequence (real-time recurrent learning), by central differences: 2K + 1 filters per
    sequence run side by side at θ and θ ± h e_j (K = 6, h = FD_STEP), and dL/dθ_j =
    (L(θ + h e_j) − L(θ − h e_j)) / 2h over the chunk. This costs one batched forward pass (memory
    O(1) in the sequence length, nothing to detach) and is exact to O(h²); after an Adam step the carried states are
    slightly stale, as usual in RTRL. Parameters with requires_grad=False stay fixed. `losses` holds
    each epoch's mean loss at θ; `max_steps` > 0 caps the Adam steps.
    """
    _check_fit_args(epochs, chunk_ticks, lr, loss, max_steps)
    ekf = GravityEKF() if ekf is None else ekf
    b = apply_burn_in(stack_sequences(sequences, ekf.raw_accel_meas_std.device), burn_in_s)
    losses, _ = _tune(ekf, b, epochs, chunk_ticks, lr, loss, max_steps, log)
    return ekf, losses


def fit_validated(train: Sequence[dict], val: Sequence[dict], ekf: GravityEKF | None = None, *, epochs: int = 2,
                  chunk_ticks: int = 100, lr: float = 0.02, loss: str = "mse", max_steps: int = 0, burn_in_s: float = 2.0,
                  segment_ticks: int = 0, min_gain: float = 0.01, log: Callable[[str], None] | None = None):
    """`fit` on `train`, kept only if it lowers the loss on `val` by more than `min_gain` (relative); returns (ekf, report).

    Long training sequences are cut into pieces of `segment_ticks` (0: whole), each run from reset,
    so an epoch's cost is bounded by the piece length. Candidates are the start values and the values
    after each epoch; all run side by side over the whole validation sequences from reset (same
    burn-in). The best candidate replaces the start only if its validation loss is below
    (1 − min_gain) × the start's; otherwise the start values are restored (report "status":
    "kept_start", with why). The decision is also written to `ekf.fit_summary`.
    """
    _check_fit_args(epochs, chunk_ticks, lr, loss, max_steps)
    if not 0.0 <= min_gain < 1.0:
        raise ValueError(f"GravityEKF fit_validated: min_gain must be in [0, 1), got {min_gain}.")
    ekf = GravityEKF() if ekf is None else ekf
    dev = ekf.raw_accel_meas_std.device
    start = torch.stack([r.detach().clone() for r in ekf.raw()])  # (K,)
    start_noise = ekf.noise_values()
    min_ticks = int(2 * burn_in_s / max(_median_dt(train), 1e-6)) if burn_in_s > 0 else 1  # pieces scoring something
    pieces = segment_sequences(train, segment_ticks, min_ticks)
    b = apply_burn_in(stack_sequences(pieces, dev), burn_in_s)
    cands = start[None]  # (1 + epochs, K): the start, then the values after each epoch
    report = {"status": "kept_start", "reason": "", "loss": loss, "burn_in_s": burn_in_s, "segments": len(pieces),
              "train_sequences": len(train), "val_sequences": len(val), "start_noise": start_noise, "train_losses": [],
              "val_losses": [], "chosen_epoch": 0, "fitted_noise": None, "noise": start_noise}
    if not bool(b["target_valid"].any()):
        report["reason"] = "no valid target tick in the training sequences after the burn-in"
    else:
        losses, thetas = _tune(ekf, b, epochs, chunk_ticks, lr, loss, max_steps, log)
        cands = torch.stack([start] + thetas)  # (1 + epochs, K)
        val_losses = losses_at(cands, ekf.gyro_hold, val, loss, burn_in_s).tolist()
        report.update(train_losses=losses, val_losses=val_losses)
        fitted = [(v, e) for e, v in enumerate(val_losses) if e > 0 and math.isfinite(v)]
        best_v, best_e = min(fitted) if fitted else (math.nan, 0)
        if best_e:
            report["fitted_noise"] = {k: float(squash(cands[best_e, j], k)) for j, k in enumerate(NOISE_NAMES)}
        if not math.isfinite(val_losses[0]):
            report["reason"] = "no valid target tick in the validation sequences after the burn-in (cannot check the fit)"
        elif not fitted:
            report["reason"] = "every fitted candidate diverged on validation"
        elif best_v < (1.0 - min_gain) * val_losses[0]:
            report.update(status="kept_fit", chosen_epoch=best_e, reason=f"validation {loss} {val_losses[0]:.4g} -> {best_v:.4g}")
        else:
            report["reason"] = (f"the fit did not lower the validation {loss} by more than {min_gain:.0%} "
                                f"(start {val_losses[0]:.4g}, best fitted {best_v:.4g} after epoch {best_e})")
    chosen = cands[report["chosen_epoch"]] if report["status"] == "kept_fit" else start
    with torch.no_grad():
        for r, v in zip(ekf.raw(), chosen):
            r.copy_(v)
        vl = report["val_losses"]
        ekf.fit_summary.copy_(torch.tensor([2.0 if report["status"] == "kept_fit" else 1.0, vl[0] if vl else math.nan,
                                            vl[report["chosen_epoch"]] if vl else math.nan, float(report["chosen_epoch"])],
                                           dtype=torch.float64))
    report["noise"] = ekf.noise_values()
    return ekf, report


def _median_dt(sequences: Sequence[dict]) -> float:
    """Median tick interval (s) of the sequences' ticks after the first."""
    dts = np.concatenate([np.asarray(s["dt_s"], np.float64)[1:] for s in sequences] or [np.zeros(0)])
    dts = dts[dts > 0]
    return float(np.median(dts)) if len(dts) else 0.0


# ---- baselines ---------------------------------------------------------------------------------------
def accel_only(accel: torch.Tensor) -> torch.Tensor:
    """The memoryless estimate −z/‖z‖ (..., 3) of the gravity direction from accelerometer samples."""
    a = torch.as_tensor(accel, dtype=torch.float64)
    return -a / torch.sqrt((a * a).sum(-1, keepdim=True)).clamp(min=1e-9)


@torch.no_grad()
def gyro_only(ekf: GravityEKF, gyro, accel, gyro_valid, accel_valid, dt_s) -> torch.Tensor:
    """Pure gyro integration (B, T, 3): started from the first valid accelerometer sample, never corrected."""
    av = torch.as_tensor(accel_valid).to(torch.bool)
    first = av & (torch.cumsum(av.to(torch.int64), 1) == 1)  # only the first valid sample is kept
    m, _, _ = ekf.run64(gyro, accel, gyro_valid, first, dt_s)
    return m[..., :3]


def angle_error_deg(est: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) between direction estimates and true unit vectors (..., 3)."""
    est = torch.as_tensor(est, dtype=torch.float64)
    truth = torch.as_tensor(truth, dtype=torch.float64)
    cross = torch.linalg.vector_norm(torch.cross(est, truth, dim=-1), dim=-1)
    return torch.rad2deg(torch.atan2(cross, (est * truth).sum(-1)))


# ---- the model family `ekf` --------------------------------------------------------------------------


@dataclasses.dataclass
class EKFConfig(ModelConfig):
    """Gravity EKF settings: which inputs are the gyro and the accelerometer, the gyro timing and the noise fit."""

    window: int = 64
    gyro_stream: str = "gyro"  # gyro input, a stream or "stream[i:j]" (3 fields, rad/s)
    accel_stream: str = "accel"  # accelerometer input, likewise (m/s², specific force)
    gyro_hold: str = "previous"  # which reading drives a step: "previous" or "current" (module docstring)
    fit_epochs: int = 2  # epochs tuning the noise on the training episodes (0: keep the start)
    max_fit_episodes: int = 64  # training (and validation) episodes read by fit_extra
    fit_lr: float = 0.02  # Adam step size on the raw (squashed) noise parameters
    fit_chunk_ticks: int = 100  # ticks per Adam step
    fit_burn_in_s: float = 2.0  # seconds after each reset that the fit and its validation do not score
    fit_segment_s: float = 30.0  # training episodes are cut into pieces this long, each run from reset (0: whole)
    fit_min_gain: float = 0.01  # a fit is kept only if it lowers the validation loss by more than this fraction
    fit_val_fraction: float = 0.25  # held out of the training episodes (or of its one episode's end) without validation data

    def __post_init__(self):
        super().__post_init__()
        for name in ("gyro_stream", "accel_stream"):
            if not STREAM_SLICE.match(getattr(self, name)):
                raise ConfigError(f"EKFConfig: {name} must be a stream name or 'stream[i:j]', got {getattr(self, name)!r}.")
        if self.gyro_hold not in GYRO_HOLDS:
            raise ConfigError(f"EKFConfig: gyro_hold must be one of {GYRO_HOLDS}, got {self.gyro_hold!r}.")
        if self.fit_epochs < 0 or self.max_fit_episodes < 1 or self.fit_chunk_ticks < 1:
            raise ConfigError(f"EKFConfig: need fit_epochs >= 0, max_fit_episodes >= 1 and fit_chunk_ticks >= 1, got "
                              f"{self.fit_epochs}, {self.max_fit_episodes}, {self.fit_chunk_ticks}.")
        if not (self.fit_lr > 0 and self.fit_burn_in_s >= 0 and self.fit_segment_s >= 0):
            raise ConfigError(f"EKFConfig: need fit_lr > 0, fit_burn_in_s >= 0, fit_segment_s >= 0; got {self.fit_lr}, "
                              f"{self.fit_burn_in_s}, {self.fit_segment_s}.")
        if not (0 <= self.fit_min_gain < 1 and 0 < self.fit_val_fraction < 1):
            raise ConfigError(f"EKFConfig: need 0 <= fit_min_gain < 1 and 0 < fit_val_fraction < 1; got {self.fit_min_gain}, "
                              f"{self.fit_val_fraction}.")


def imu_inputs(config: EKFConfig, streams) -> dict[str, tuple[str, slice]]:
    """(stream, field slice) of the gyro and the accelerometer input; ConfigError naming what the EKF needs."""
    out = {}
    for role in ("gyro", "accel"):
        spec = getattr(config, f"{role}_stream")
        name, part = parse_stream_slice(spec)
        if name not in config.inputs or name in config.packed:
            raise ConfigError(
                f"Model 'ekf' needs a gyro and an accelerometer among its inputs (latest-mode vector streams of 3 values, or "
                f"'stream[i:j]' slices); {role}_stream={spec!r} is not {'a latest-mode' if name in config.packed else 'an'} input. "
                f"Inputs: {list(config.inputs)}. Set --set {role}_stream=NAME, or leave ekf out for these logs."
            )
        info = streams[name]
        size = int(np.prod(info.shape) or 1)
        part = part or slice(0, size)
        if info.kind != "vector" or len(range(size)[part]) != 3:
            raise ConfigError(
                f"Model 'ekf' needs 3 {role} values; {role}_stream={spec!r} gives {len(range(size)[part])} of the {info.kind} "
                f"stream {name!r} ({size} values, fields {list(info.fields or [])}). Name a 3-field vector stream or a 'stream[i:j]' slice."
            )
        out[role] = (name, part)
    return out


@register_model("ekf", EKFConfig)
class EKFModel(SequenceModel):
    """The gravity EKF as a model family: owns a `GravityEKF` (its six noise parameters) and the input slices.

    Prediction: the filter's gravity direction and per-axis variance, in target units (a unit vector);
    state: m (B, 6), P (B, 6, 6), started (B,) float64 and gyro_prev (B, 3), as `GravityEKF.init_state`.
    Nothing trains by SGD: `fit_extra` starts the noise from the log's scenario knobs (defaults
    otherwise), tunes it on the training episodes and keeps the tuned values only if they lower the
    loss on validation episodes (`fit_validated`; `fit_report`, and the `ekf.fit_summary` buffer).
    Twin (`memoryless=True`): every tick is the filter's first, the update of its prior with that tick
    alone: g = −a/‖a‖ from the accelerometer (the level prior where it is invalid), no gyro. Its mean does
    not depend on the noise and its variance only on init_tilt_std, so the squared-error tuning is skipped.
    """

    input_kinds = ("vector",)
    reads_packed = False  # the filter steps on the latest gyro and accelerometer sample of each tick
    target_kinds = ("vector",)

    @classmethod
    def check_streams(cls, config: EKFConfig, streams) -> None:
        """ConfigError unless the inputs hold a gyro and an accelerometer and the target is a 3-D vector."""
        super().check_streams(config, streams)
        imu_inputs(config, streams)
        dim = int(np.prod(streams[config.target].shape) or 1)
        if dim != 3:
            raise ConfigError(f"Model 'ekf' predicts a 3-D gravity direction; target {config.target!r} has {dim} values "
                              "(imu_motion's is 'truth/gravity_body'). Leave ekf out for this target.")

    def __init__(self, config: EKFConfig, streams, normalization):
        type(self).check_streams(config, streams)
        super().__init__(config, streams, normalization)
        self.imu = imu_inputs(config, streams)
        self.ekf = GravityEKF(gyro_hold=config.gyro_hold)

    def _imu_args(self, x: dict):
        """(gyro, accel, gyro_valid, accel_valid, dt_s) of a tick (B, ...) or windows (B, T, ...)."""
        (g, gs), (a, as_) = self.imu["gyro"], self.imu["accel"]
        return x[g][..., gs], x[a][..., as_], x[f"{g}_valid"], x[f"{a}_valid"], x["dt_s"]

    @property
    def trains_by_sgd(self) -> bool:
        """The noise is fitted by `fit_extra`, not by the shared SGD loop."""
        return False

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Filtered gravity directions for every tick of windows (B, T, ...), each window from reset."""
        mean, var, _ = self.ekf.run(*self._imu_args(batch))
        return {"mean": mean, "var": var}

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """The filter before any accelerometer sample (`GravityEKF.init_state`)."""
        return self.ekf.init_state(batch_size)

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out (B, 3), next state)."""
        mean, var, nxt = self.ekf.step(*self._imu_args(tick), state)
        return {"mean": mean, "var": var}, nxt

    def fit_extra(self, train_dataset, log=print, val_dataset=None) -> None:
        """Start the noise from the log's knobs (defaults otherwise), tune it on the training episodes, keep it only if validation improves.

        Validation episodes are `val_dataset`'s; without them, `fit_val_fraction` of the training
        episodes are held out (seeded by `config.seed`), or, with a single episode, its last
        `fit_val_fraction` of ticks. What was decided is logged, kept in `self.fit_report` (a dict,
        `fit_validated`'s report) and in the `ekf.fit_summary` buffer, which travels in the checkpoint.
        """
        cfg = self.config
        path, episode = train_dataset.episodes[0]
        start = noise_from_provenance(provenance_of(path, episode))
        self.ekf.set_noise(**start)
        self.ekf.fit_summary.copy_(torch.tensor([0.0, math.nan, math.nan, -1.0], dtype=torch.float64))
        log(f"ekf fit_extra: noise from {'the log' if start != DEFAULT_NOISE else 'defaults'}: {self.ekf.noise_values()}")
        self.fit_report = {"status": "not_fitted", "reason": "fit_epochs=0", "noise": self.ekf.noise_values()}
        if cfg.fit_epochs == 0:
            return
        if cfg.memoryless:
            self.fit_report["reason"] = "twin: its single-tick estimate -a/|a| does not depend on the noise"
            log("ekf fit_extra: twin: its single-tick estimate -a/|a| does not depend on the noise; no tuning.")
            return
        train, val, where = EKFModel._fit_split(self, train_dataset, val_dataset)  # explicit: hybrid families reuse fit_extra
        dt = _median_dt(train)
        segment = int(round(cfg.fit_segment_s / dt)) if cfg.fit_segment_s > 0 and dt > 0 else 0
        _, report = fit_validated(train, val, self.ekf, epochs=cfg.fit_epochs, chunk_ticks=cfg.fit_chunk_ticks, lr=cfg.fit_lr,
                                  burn_in_s=cfg.fit_burn_in_s, segment_ticks=segment, min_gain=cfg.fit_min_gain)
        report["validation"] = where
        self.fit_report = report
        losses = [round(x, 6) for x in report["train_losses"]]
        if report["status"] == "kept_fit":
            log(f"ekf fit_extra: tuned on {len(train)} episode(s) ({report['segments']} piece(s)), squared error per epoch {losses}; "
                f"kept the values after epoch {report['chosen_epoch']}: {report['reason']} on {where}; noise {report['noise']}")
        else:
            log(f"ekf fit_extra: tuned on {len(train)} episode(s), squared error per epoch {losses}; keeping the start noise: "
                f"{report['reason']} (validation on {where}); noise {report['noise']}")

    def _fit_split(self, train_dataset, val_dataset):
        """(training sequences, validation sequences, a description of the validation) for `fit_extra`."""
        cfg = self.config
        n = min(len(train_dataset.episodes), cfg.max_fit_episodes)
        if val_dataset is not None and len(val_dataset.episodes):
            val = [EKFModel._fit_sequence(self, val_dataset.sequence(k)) for k in range(min(len(val_dataset.episodes), cfg.max_fit_episodes))]
            train = [EKFModel._fit_sequence(self, train_dataset.sequence(k)) for k in range(n)]
            return train, val, f"{len(val)} validation episode(s)"
        if n >= 2:
            order = np.random.default_rng(cfg.seed).permutation(n)
            n_val = min(n - 1, max(1, int(round(cfg.fit_val_fraction * n))))
            held = set(order[:n_val].tolist())
            seqs = [EKFModel._fit_sequence(self, train_dataset.sequence(k)) for k in range(n)]
            return ([x for k, x in enumerate(seqs) if k not in held], [x for k, x in enumerate(seqs) if k in held],
                    f"{n_val} of the {n} training episode(s), held out")
        seq = EKFModel._fit_sequence(self, train_dataset.sequence(0))
        cut = int(round((1.0 - cfg.fit_val_fraction) * len(seq["dt_s"])))
        head = {k: v[:cut] for k, v in seq.items()}
        tail = {k: v[cut:] for k, v in seq.items()}
        tail["dt_s"] = np.concatenate([[0.0], np.asarray(tail["dt_s"])[1:]]).astype(np.asarray(seq["dt_s"]).dtype)
        return [head], [tail], f"the last {cfg.fit_val_fraction:.0%} of the one training episode, run from reset"

    def _fit_sequence(self, x: dict) -> dict:
        """The arrays `fit` reads from one dataset sequence."""
        gyro, accel, gv, av, dt = self._imu_args(x)
        return {"gyro": gyro, "accel": accel, "gyro_valid": gv, "accel_valid": av, "dt_s": dt, "target": x["target"],
                "target_valid": x["target_valid"], "tick_is_pad": x["tick_is_pad"]}
