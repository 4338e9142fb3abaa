"""`kalmannet`: the gravity EKF with a learned measurement-noise scale, trained end to end (KalmanNet-style).

Shape letters: B batch, T ticks, H width of the learned part. Frames, state and maths of the filter as
in `seqsense.models.ekf` (g the gravity direction in the body frame, b the gyro bias).

Each tick runs the EKF's predict with the gyro, then, before the accelerometer update, a small GRU
cell reads the innovation of the prediction and the motion cues

    f_k = (v_k / G, e_k / G, log(1 + |ω̃|), accel_valid),   v_k = z_k + G ĝ_k⁻,  e_k = |z_k| − G

and outputs a log scale s_k of the measurement noise (bounded: s = S tanh(u / S), S = `max_log_scale`):

    R_k = e^{s_k} (σ_a² + κ e_k²) I

(`ekf.measurement_noise` scaled, then `ekf.ekf_update` as it is).
Where the body accelerates the network can distrust the accelerometer beyond what the magnitude gate
sees (e.g. centripetal acceleration at |z| ≈ G), and trust it more at rest. The output layer starts at
zero, so at initialization s = 0 and the model is the EKF exactly; `fit_start` first tunes the EKF's
six noise values as the `ekf` family does (then frozen), and SGD trains only the learned part, by
back-propagation through the filter, on the squared error ‖ĝ − g‖² of the gravity direction (ticks
without truth, NaN in the target, are masked).

State: the EKF's (m (B, 6), P (B, 6, 6), started (B,), gyro_prev (B, 3), float64) plus the GRU's h
(B, H). It carries across windows, so the family trains statefully (`stateful=true`): the tilt
filter's memory lasts tens of seconds, far past a window.

Memoryless twin (`memoryless=True`): every tick is the filter's first, the accelerometer-only
estimate −z/‖z‖; the learned scale cannot act on it, so the twin has nothing to train by SGD.

Like `ekf`, the filter steps on the latest gyro and accelerometer sample of each tick (no packed
inputs): run it on the IMU's own clock.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from seqsense.errors import ConfigError
from seqsense.models.base import SequenceModel, register_model
from seqsense.models.ekf import (
    GRAVITY_MPS2,
    EKFConfig,
    EKFModel,
    GravityEKF,
    accel_init,
    ekf_update,
    gravity_output,
    imu_inputs,
    measurement_noise,
    predict,
    renormalize,
)

N_FEATURES = 6  # v / G (3), e / G, log(1 + |ω̃|), accel_valid


@dataclasses.dataclass
class KalmanNetConfig(EKFConfig):
    """The EKF's settings plus the learned part: GRU width `hidden` and the bound of the log noise scale."""

    hidden: int = 16
    lr: float = 1e-3
    window: int = 256
    max_log_scale: float = 4.0  # S: the learned R scale stays within e^±S

    def __post_init__(self):
        super().__post_init__()
        if not self.max_log_scale > 0:
            raise ConfigError(f"KalmanNetConfig: max_log_scale must be > 0, got {self.max_log_scale}.")


@register_model("kalmannet", KalmanNetConfig)
class KalmanNetModel(SequenceModel):
    """Owns a `GravityEKF` (noise fitted by `fit_start`, then fixed), a GRU cell and its noise-scale output layer."""

    input_kinds = ("vector",)
    reads_packed = False
    target_kinds = ("vector",)
    supports_stateful = True

    @classmethod
    def check_streams(cls, config: KalmanNetConfig, streams) -> None:
        """ConfigError unless the inputs hold a gyro and an accelerometer and the target is a 3-D vector."""
        try:
            EKFModel.check_streams.__func__(EKFModel, config, streams)
        except ConfigError as e:
            raise ConfigError(str(e).replace("Model 'ekf'", "Model 'kalmannet'").replace("leave ekf out", "leave kalmannet out")
                              .replace("Leave ekf out", "Leave kalmannet out")) from None

    def __init__(self, config: KalmanNetConfig, streams, normalization):
        type(self).check_streams(config, streams)
        super().__init__(config, streams, normalization)
        self.imu = imu_inputs(config, streams)
        self.ekf = GravityEKF(gyro_hold=config.gyro_hold)
        for p in self.ekf.parameters():
            p.requires_grad_(False)  # fitted by fit_start, then fixed: SGD trains the learned part only
        self.cell = nn.GRUCell(N_FEATURES, config.hidden)
        self.scale = nn.Linear(config.hidden, 1)
        nn.init.zeros_(self.scale.weight)  # s = 0 at init: the model starts as the EKF
        nn.init.zeros_(self.scale.bias)

    _imu_args = EKFModel._imu_args

    @property
    def trains_by_sgd(self) -> bool:
        """The learned part trains by SGD; the twin's accelerometer-only estimate has nothing to learn."""
        return not self.config.memoryless

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """The EKF before any accelerometer sample and a zero GRU state h (B, H)."""
        return {**self.ekf.init_state(batch_size), "h": torch.zeros(batch_size, self.config.hidden, device=self.device)}

    def log_scale(self, h: torch.Tensor) -> torch.Tensor:
        """The bounded log noise scale s (B,) from the GRU state h (B, H)."""
        bound = self.config.max_log_scale
        return bound * torch.tanh(self.scale(h)[:, 0] / bound)

    def _advance(self, gyro, accel, gyro_valid, accel_valid, dt_s, state):
        """(next state, s (B,)) after one tick: `ekf.advance` with the learned scale of R before the update.

        Mirrors `seqsense.models.ekf.advance` (NaN samples as missing, hold, predict, update, first-tick
        init, renormalise), composed from its per-tick functions, with R scaled by e^s.
        """
        noise = self.ekf.noise()
        w_new, z = gyro.to(torch.float64), accel.to(torch.float64)
        g_ok, a_ok = torch.isfinite(w_new).all(-1), torch.isfinite(z).all(-1)
        w_new = torch.where(g_ok[:, None], w_new, torch.zeros_like(w_new))
        z = torch.where(a_ok[:, None], z, torch.zeros_like(z))
        gv, av = (gyro_valid.to(torch.bool) & g_ok)[:, None], accel_valid.to(torch.bool) & a_ok
        w_held = torch.where(gv, w_new, state["gyro_prev"])
        w = state["gyro_prev"] if self.ekf.gyro_hold == "previous" else w_held
        m, P = predict(state["m"], state["P"], w, dt_s.to(torch.float64), noise["gyro_noise_density"], noise["gyro_bias_walk"])
        G = GRAVITY_MPS2
        v = z + G * m[:, :3]  # (B, 3) innovation of the prediction
        e = torch.sqrt((z * z).sum(-1) + 1e-12) - G
        wn = torch.sqrt((w_held * w_held).sum(-1) + 1e-12)
        feat = torch.cat([v / G, (e / G)[:, None], torch.log1p(wn)[:, None], av[:, None].to(v.dtype)], -1)
        feat = torch.where(av[:, None], feat, torch.zeros_like(feat)).float()  # (B, 6)
        h = self.cell(feat, state["h"])
        s = self.log_scale(h)
        scale = torch.exp(s).to(torch.float64)  # (B,)
        r = scale * measurement_noise(z, noise["accel_meas_std"], noise["accel_gate"])  # (B,)
        mu, Pu, _, _, _ = ekf_update(m, P, z, r)
        m = torch.where(av[:, None], mu, m)
        P = torch.where(av[:, None, None], Pu, P)
        m0, P0 = accel_init(z, noise["init_tilt_std"], noise["init_bias_std"])
        go = state["started"] > 0.5
        first = ~go & av
        m = torch.where(go[:, None], m, torch.where(first[:, None], m0, state["m"]))
        P = torch.where(go[:, None, None], P, torch.where(first[:, None, None], P0, state["P"]))
        m, P = renormalize(m, P)
        started = torch.where(go | av, torch.ones_like(state["started"]), state["started"])
        return {"m": m, "P": P, "started": started, "gyro_prev": w_held, "h": h}, s

    def forward_stateful(self, batch: dict[str, torch.Tensor], state: dict[str, torch.Tensor] | None = None):
        """Windows (B, T, ...) continuing from `state` (None: reset) -> (out (B, T, 3), state after the last tick)."""
        gyro, accel, gv, av, dt = self._imu_args(batch)
        state = self.init_state(gyro.shape[0]) if state is None else state
        means, vars_ = [], []
        for t in range(gyro.shape[1]):
            state, _ = self._advance(gyro[:, t], accel[:, t], gv[:, t], av[:, t], dt[:, t], state)
            mean, var = gravity_output(state["m"], state["P"])
            means.append(mean)
            vars_.append(var)
        return {"mean": torch.stack(means, 1).float(), "var": torch.stack(vars_, 1).float()}, state

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Filtered gravity directions for every tick of windows (B, T, ...), each window from reset."""
        return self.forward_stateful(batch)[0]

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out (B, 3), next state)."""
        nxt, _ = self._advance(*self._imu_args(tick), state)
        mean, var = gravity_output(nxt["m"], nxt["P"])
        return {"mean": mean.float(), "var": var.float()}, nxt

    def loss_of(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error ‖ĝ − g‖² over the valid ticks (the loss the EKF's noise is fitted on)."""
        valid = batch["target_valid"] & ~batch["tick_is_pad"]
        per = ((out["mean"] - batch["target"]) ** 2).sum(-1)
        return per[valid].mean()

    def fit_start(self, train_dataset, log=print) -> None:
        """Fit the EKF's noise as the `ekf` family does (`EKFModel.fit_extra`), then fix it for SGD."""
        for p in self.ekf.parameters():
            p.requires_grad_(True)
        try:
            EKFModel.fit_extra(self, train_dataset, log=log)
        finally:
            for p in self.ekf.parameters():
                p.requires_grad_(False)
