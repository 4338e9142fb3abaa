"""`kalman`: the classical linear Kalman filter: the scenario's model, one fitted by EM, or detector + CV filter.

Three ways to get the linear-Gaussian model, chosen in `fit_extra` (config `dynamics`):
- `metadata`: the log's provenance holds the system (F or A, Q, H, R, x0, P0) and the raw measurement
  vector stream is an input: the filter runs on it directly and is the optimal filter of the scenario.
- `em`: system identification from the training data. The measurements z are the raw vector stream
  `measurement_stream` when it is an input, otherwise the outputs of a per-tick detector trained as in
  `cv`; `sysid.fit_lds_em` fits A, Q, H, R, x0, P0 (state size `em_state_dim`) to the training
  episodes by expectation–maximization, and the target map G by least squares of the normalized
  target on the smoothed states (`sysid.fit_readout`). The filter then runs like `metadata`.
- `cv`: the pipeline robot stacks use today. A per-tick detector (the shared TickEncoder + a linear
  head, trained by SGD on per-tick MSE like `framewise`) gives measurements of the target, filtered by a
  constant-velocity model per target dimension with irregular steps; `fit_extra` sets R from the
  detector's residuals and fits Q by maximizing the innovation likelihood.
`auto` (default) uses the metadata when present and falls back to `cv`. (The gravity EKF for raw IMU
logs is the family `ekf`.)

Memoryless twin (`memoryless=True`, see `seqsense.models.base`): each tick is the single update of
the prior N(x0, P0) with that tick's measurement, no dynamics. Its fits follow: in cv mode R and the
prior come from the data as for the full filter and Q, which plays no part, is not fitted; in em mode
the read-out (G, b, residual variance) is refitted on the twin's single-tick states.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import scipy.linalg
import torch
from torch import nn

from seqsense.errors import ConfigError
from seqsense.log.reader import open_log
from seqsense.models import statespace as ss
from seqsense.models import sysid
from seqsense.models.base import ModelConfig, SequenceModel, register_model, to_tensors
from seqsense.models.encoders import TickEncoder

DYNAMICS = ("auto", "metadata", "cv", "em")
SYSTEM_KEYS = {"A": ("F", "A"), "Q": ("Q",), "H": ("H", "C"), "R": ("R",), "x0": ("x0", "x0_mean", "m0"), "P0": ("P0",), "G": ("G", "target_matrix")}
EM_KEYS = ("z_mean", "y0", "y_var")  # em mode: measurement mean removed before filtering, target intercept and residual variance


@dataclasses.dataclass
class KalmanConfig(ModelConfig):
    """Kalman filter settings: where the model comes from, how EM fits it and how the CV filter's Q is fitted."""

    window: int = 16
    dynamics: str = "auto"  # auto | metadata | cv | em
    measurement_stream: str = "measurement"  # raw measurement input of metadata mode (and of em mode when an input)
    state_dim: int = 0  # n of the linear system (set by fit_extra in metadata and em modes); 0 = CV filter
    meas_dim: int = 0  # m of the linear system (set by fit_extra)
    em_state_dim: int = 0  # em mode: n to fit; 0 = twice the measurement size
    em_iters: int = 50  # em mode: EM iterations at most (0 = the subspace initialization alone)
    q_steps: int = 60  # Adam steps fitting the CV process noise by innovation likelihood
    q_lr: float = 0.2
    max_fit_episodes: int = 64  # training episodes read by fit_extra

    def __post_init__(self):
        super().__post_init__()
        if self.dynamics not in DYNAMICS:
            hint = " The gravity EKF for raw IMU logs is the model family 'ekf'." if self.dynamics in ("imu_gravity", "ekf") else ""
            raise ConfigError(f"KalmanConfig: dynamics must be one of {DYNAMICS}, got {self.dynamics!r}.{hint}")
        if self.state_dim < 0 or self.meas_dim < 0 or (self.state_dim > 0) != (self.meas_dim > 0):
            raise ConfigError(f"KalmanConfig: state_dim and meas_dim must both be 0 or both >= 1, got {self.state_dim}, {self.meas_dim}.")
        if self.em_state_dim < 0 or self.em_iters < 0:
            raise ConfigError(f"KalmanConfig: em_state_dim must be >= 0 (0 = twice the measurement size) and em_iters >= 0 "
                              f"(0 = no EM iteration after the subspace initialization); got {self.em_state_dim}, {self.em_iters}.")
        if self.q_steps < 0 or not self.q_lr > 0 or self.max_fit_episodes < 1:
            raise ConfigError("KalmanConfig: q_steps must be >= 0, q_lr > 0 and max_fit_episodes >= 1.")


@register_model("kalman", KalmanConfig)
class KalmanModel(SequenceModel):
    """Linear Kalman filter over ticks; owns the detector (CV and detector-EM modes) and the system matrices.

    System x_k = A_k x_{k-1} + w, w ~ N(0, Q_k);  z_k = H x_k + v, v ~ N(0, R);  target y_k = G x_k.
    The state at the first tick is the prior N(x0, P0), updated with z_1 (no predict step before it);
    each later tick predicts over its dt_s, then updates (the recursion in `statespace`).
    - metadata mode: A, Q, H, R, G, x0, P0 from the log, raw units, A and Q fixed (the scenario's dt);
    - em mode: A, Q, H, R, x0, P0 fitted by EM on z − z̄ (one step per tick, A and Q fixed), G and b
      by least squares, in normalized target units: y = G x + b + ε, ε ~ N(0, diag(s²)), so the
      prediction is mean G m + b, variance diag(G P Gᵀ) + s² (then denormalized);
    - CV mode, per target dimension d (normalized units), an independent 2-state filter of (p_d, v_d):
        A(Δt) = [[1, Δt], [0, 1]],  Q(Δt) = q_d [[Δt³/3, Δt²/2], [Δt²/2, Δt]],  H = G = [1, 0],  R = r_d,
        x0 = 0,  P0 = diag(p0_d, v0_d);  z = detector(tick inputs). A 2D-state filter with a block-diagonal
      system is exactly these D filters; run side by side they avoid the (2D)×(2D) algebra.
    Prediction: mean G m, variance diag(G P Gᵀ). State: {"m": (B, n), "P": (B, n, n) float64,
    "started": (B,)}; in CV mode m (B, D, 2), P (B, D, 2, 2).
    """

    target_kinds = ("vector", "scalar")  # continuous targets only

    @classmethod
    def check_streams(cls, config: KalmanConfig, streams) -> None:
        """ConfigError on a label target, or (em mode) a raw measurement input that is not a latest-mode vector/scalar stream."""
        if config.target in streams and streams[config.target].kind in ("label", "event"):
            raise ConfigError(f"kalman predicts continuous targets; {config.target!r} is a label stream. Use framewise/rnn/transformer.")
        super().check_streams(config, streams)
        if config.dynamics == "em" and config.measurement_stream in config.inputs:
            s, info = config.measurement_stream, streams[config.measurement_stream]
            if info.kind not in ("vector", "scalar") or s in config.packed:
                raise ConfigError(f"kalman dynamics='em' filters the raw measurement stream {s!r}, which must be a vector or scalar "
                                  f"stream in latest mode; it is a {info.kind} stream{' packed' if s in config.packed else ''}. "
                                  "Set measurement_stream to such a stream, or to one that is not an input (EM then runs on the detector).")

    def __init__(self, config: KalmanConfig, streams, normalization):
        type(self).check_streams(config, streams)
        super().__init__(config, streams, normalization)
        d, h = self.target_dim, config.hidden
        self.encoder = TickEncoder(config.inputs, streams, normalization, config.packed, h, config.frame_channels)
        self.head = nn.Linear(h, d)
        for name in ("q", "r", "p0", "v0"):  # CV filter, fitted in fit_extra
            self.register_buffer(name, torch.full((d,), 1.0 if name != "r" else 0.1, dtype=torch.float64))
        # CV constants (not saved): A(Δt) = I + Δt N, Q(Δt) = q Δt^E / E elementwise
        self.register_buffer("cv_eye", torch.eye(2, dtype=torch.float64), persistent=False)
        self.register_buffer("cv_shift", torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64), persistent=False)
        self.register_buffer("cv_pow", torch.tensor([[3.0, 2.0], [2.0, 1.0]], dtype=torch.float64), persistent=False)
        if config.state_dim > 0:
            n, m = config.state_dim, config.meas_dim
            shapes = {"A": (n, n), "Q": (n, n), "H": (m, n), "R": (m, m), "G": (d, n), "x0": (n,), "P0": (n, n)}
            if config.dynamics == "em":
                shapes.update({"z_mean": (m,), "y0": (d,), "y_var": (d,)})
            for name, shape in shapes.items():
                self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))

    @property
    def uses_system(self) -> bool:
        """True once the filter runs a general linear system (the log's, or fitted by EM)."""
        return self.config.state_dim > 0

    @property
    def uses_metadata(self) -> bool:
        """True once the filter runs the log's own system on the raw measurement stream."""
        return self.uses_system and self.config.dynamics != "em"

    @property
    def uses_em(self) -> bool:
        """True once the filter runs a system fitted by EM."""
        return self.uses_system and self.config.dynamics == "em"

    @property
    def measures_raw(self) -> bool:
        """True when the measurements are the raw `measurement_stream` (metadata mode, or em mode with it as input)."""
        raw_em = self.config.dynamics == "em" and self.config.measurement_stream in self.config.inputs
        return self.uses_metadata or raw_em

    @property
    def trains_by_sgd(self) -> bool:
        """Only the detector trains by SGD; filters on the raw measurements have nothing to learn by it."""
        return not self.measures_raw

    def num_parameters(self) -> int:
        """Detector weights (unless the filter reads raw measurements) plus the filter's fitted numbers."""
        if not self.uses_system:
            return sum(p.numel() for p in self.parameters()) + 4 * self.target_dim
        names = ("A", "Q", "H", "R", "x0", "P0") + (("G", "y0", "y_var") if self.uses_em else ())
        fitted = sum(getattr(self, k).numel() for k in names)
        return fitted if self.measures_raw else fitted + sum(p.numel() for p in self.parameters())

    # ---- the filter ---------------------------------------------------------------------------
    def _detect(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The detector's per-tick target estimate (..., D), normalized units."""
        return self.head(self.encoder(x))

    def _measure(self, x: dict[str, torch.Tensor]):
        """Measurements z (..., m) float64 and their validity (...,), or None where always valid."""
        if self.uses_system and self.measures_raw:
            s = self.config.measurement_stream
            valid = x[f"{s}_valid"].bool()
            z = x[s].double().reshape(*valid.shape, -1)
        else:
            z, valid = self._detect(x).double(), None
        return (z - self.z_mean, valid) if self.uses_em else (z, valid)

    def _cv_system(self, dt_s: torch.Tensor, q: torch.Tensor | None = None):
        """CV transition A (..., 1, 2, 2) and process noise Q (..., D, 2, 2) over steps dt_s (...,)."""
        q = self.q if q is None else q
        dt = dt_s.double().clamp(min=0.0)[..., None, None, None]  # (..., 1, 1, 1)
        A = self.cv_eye + dt * self.cv_shift
        Q = q[:, None, None] * (dt**self.cv_pow / self.cv_pow)  # q [[Δt³/3, Δt²/2], [Δt²/2, Δt]]
        return A, Q

    def _prior(self, batch_size: int):
        """Prior mean and covariance expanded over the batch: (B, n), (B, n, n); CV (B, D, 2), (B, D, 2, 2)."""
        if self.uses_system:
            m0, P0 = self.x0, self.P0
        else:
            m0 = torch.zeros(self.target_dim, 2, dtype=torch.float64, device=self.q.device)
            P0 = torch.diag_embed(torch.stack([self.p0, self.v0], -1))  # (D, 2, 2)
        return m0.expand(batch_size, *m0.shape).clone(), P0.expand(batch_size, *P0.shape).clone()

    def _filter_step(self, m, P, started, dt_s, z, valid):
        """Predict over dt_s (where started), then update with z (B, m); returns (m, P)."""
        if not self.uses_system:  # not started: Δt = 0, so A = I, Q = 0 and the prediction is the prior itself
            A, Q = self._cv_system(dt_s.double() * started)  # dt_s is finite (0 at the first tick): a product is cheaper than where
            m, P = ss.predict(m, P, A, Q)
            return ss.update_first(m, P, z, self.r, loglik=False)[:2]
        mp, Pp = ss.predict(m, P, self.A, self.Q)
        go = started.bool()
        m = torch.where(go[:, None], mp, m)
        P = torch.where(go[:, None, None], Pp, P)
        return ss.update(m, P, z, self.H, self.R, valid)[:2]

    def _output(self, m: torch.Tensor, P: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.uses_system:
            return self.denormalize({"mean": m[..., 0].float(), "var": P[..., 0, 0].clamp(min=1e-12).float()})
        mean = m @ self.G.T  # (..., D)
        var = torch.einsum("dn,...nk,dk->...d", self.G, P, self.G)
        if self.uses_em:
            mean, var = mean + self.y0, var + self.y_var
        out = {"mean": mean.float(), "var": var.clamp(min=1e-12).float()}
        return self.denormalize(out) if self.uses_em else out

    def _run(self, z, valid, dt_s):
        """Filter whole windows z (B, T, m) from the prior -> stacked states m (B, T, ...), P (B, T, ...)."""
        B, T = z.shape[:2]
        m, P = self._prior(B)
        started = torch.zeros(B, dtype=torch.float64, device=z.device)
        ms, Ps = [], []
        for t in range(T):
            m, P = self._filter_step(m, P, started, dt_s[:, t], z[:, t], None if valid is None else valid[:, t])
            started = torch.ones_like(started)
            ms.append(m)
            Ps.append(P)
        return torch.stack(ms, 1), torch.stack(Ps, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Filtered predictions for every tick of windows (B, T, ...), each window from the prior."""
        z, valid = self._measure(batch)
        return self._output(*self._run(z, valid, batch["dt_s"]))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The detector's per-tick MSE in normalized units (filters on raw measurements: the filter's NLL)."""
        if self.measures_raw and self.uses_system:
            return super().loss(batch)
        valid = batch["target_valid"] & ~batch["tick_is_pad"]
        y = (batch["target"] - self.target_mean) / self.target_std
        return ((self._detect(batch) - y) ** 2)[valid].mean()

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """The prior N(x0, P0): m, P float64 (see the class doc for shapes), started (B,) = 0."""
        m, P = self._prior(batch_size)
        return {"m": m, "P": P, "started": torch.zeros(batch_size, dtype=torch.float64, device=m.device)}

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out (B, D), next state)."""
        z, valid = self._measure(tick)  # (B, m)
        m, P = self._filter_step(state["m"], state["P"], state["started"], tick["dt_s"], z, valid)
        return self._output(m, P), {"m": m, "P": P, "started": torch.ones_like(state["started"])}

    # ---- fitting ------------------------------------------------------------------------------
    def fit_extra(self, train_dataset, log=print) -> None:
        """Load the log's system (metadata), fit one by EM (em), or fit the CV filter's R and Q (cv)."""
        if self.config.dynamics == "em":
            self._fit_em(train_dataset, log)
            return
        if self.config.dynamics != "cv":
            system = find_system(train_dataset.episodes)
            usable, why = self._check_system(system)
            if usable:
                self._set_system(system)
                log(f"kalman fit_extra: using the log's linear system (n={self.config.state_dim}, m={self.config.meas_dim}) "
                    f"on the raw '{self.config.measurement_stream}' stream.")
                return
            if self.config.dynamics == "metadata":
                raise ConfigError(f"kalman dynamics='metadata': {why} Use dynamics=auto, dynamics=em or dynamics=cv.")
            log(f"kalman fit_extra: {why} Fitting a constant-velocity filter on the detector instead.")
        self._fit_cv(train_dataset, log)

    def _check_system(self, system: dict | None):
        s = self.config.measurement_stream
        if system is None:
            return False, "the logs' provenance holds no linear system (A/F, Q, H, R)."
        if s not in self.config.inputs:
            return False, f"the measurement stream {s!r} is not among the inputs {list(self.config.inputs)}."
        m = int(np.prod(self.streams[s].shape) or 1)
        if system["H"].shape[0] != m:
            return False, f"H has {system['H'].shape[0]} rows but stream {s!r} has {m} values."
        if system["G"].shape[0] != self.target_dim:
            return False, f"the system's target rows ({system['G'].shape[0]}) differ from the target size {self.target_dim}."
        return True, ""

    def _set_system(self, system: dict) -> None:
        """Install the system matrices (and em mode's extras) as float64 buffers and record their sizes in the config."""
        n, m = system["A"].shape[0], system["H"].shape[0]
        self.config.state_dim, self.config.meas_dim = n, m
        dev = self.target_mean.device
        for name in ("A", "Q", "H", "R", "G", "x0", "P0") + (EM_KEYS if self.config.dynamics == "em" else ()):
            self.register_buffer(name, torch.tensor(np.array(system[name]), dtype=torch.float64, device=dev))  # own copy: G may be H

    def _fit_sequences(self, train_dataset):
        """Whole training episodes (at most max_fit_episodes) as batch-1 tensor dicts."""
        n_eps = min(len(train_dataset.episodes), self.config.max_fit_episodes)
        return [to_tensors(train_dataset.sequence(k), device=self.device) for k in range(n_eps)]

    def _normalized_target(self, x: dict[str, torch.Tensor]):
        """Target (T, D) float64 in normalized units and where it is usable (T,)."""
        y = ((x["target"][0] - self.target_mean) / self.target_std).double()
        return y.reshape(len(y), -1), x["target_valid"][0] & ~x["tick_is_pad"][0]

    @torch.no_grad()
    def _fit_em(self, train_dataset, log) -> None:
        """Fit the linear system to the training measurements by EM, then the target map by least squares."""
        self.eval()
        s = self.config.measurement_stream
        raw = s in self.config.inputs
        zs, oks, ys, yoks = [], [], [], []
        seqs = self._fit_sequences(train_dataset)
        for x in seqs:
            live = ~x["tick_is_pad"][0]
            if raw:
                zs.append(x[s][0].double().reshape(len(live), -1))
                oks.append(x[f"{s}_valid"][0].bool() & live)
            else:
                zs.append(self._detect(x)[0].double())
                oks.append(live)
            y, yok = self._normalized_target(x)
            ys.append(y.cpu().numpy())
            yoks.append(yok.cpu().numpy())
        zs = [z.cpu().numpy() for z in zs]
        oks = [ok.cpu().numpy() for ok in oks]
        seen = np.concatenate([z[ok] for z, ok in zip(zs, oks)])
        if len(seen) == 0:
            raise ConfigError(f"kalman dynamics='em': no valid measurement in the training episodes ({'stream ' + repr(s) if raw else 'detector'}).")
        z_mean = seen.mean(0)
        fit = sysid.fit_lds_em([z - z_mean for z in zs], oks, state_dim=self.config.em_state_dim, iters=self.config.em_iters)
        G, y0, y_var = sysid.fit_readout(fit, ys, yoks)
        system = {**dataclasses.asdict(fit.lds), "G": G, "z_mean": z_mean, "y0": y0, "y_var": y_var}
        self._set_system(system)
        if self.config.memoryless:  # the twin reads its target off single-tick states, not smoothed ones
            for name, value in zip(("G", "y0", "y_var"), self._twin_readout(seqs, ys, yoks)):
                getattr(self, name).copy_(torch.as_tensor(value))
            y_var = self.y_var.cpu().numpy()
        self.em_loglik = ll = fit.loglik  # log p(z) per EM iteration, for inspection (not saved)
        log(f"kalman fit_extra: EM fit of a linear system (n={self.config.state_dim}, m={self.config.meas_dim}) on "
            f"{'the raw ' + repr(s) + ' stream' if raw else 'the detector outputs'} of {len(zs)} episodes: log-likelihood "
            f"{ll[0]:.2f} -> {ll[-1]:.2f} in {len(ll) - 1} iterations; target residual variance {np.round(y_var, 6).tolist()}"
            f"{' (twin: read-out fitted on single-tick states)' if self.config.memoryless else ''}")

    def _twin_readout(self, seqs, ys, yoks):
        """(G, b, residual variance) by least squares on the twin's states: each tick the prior updated with that tick alone."""
        means, covs = [], []
        for x in seqs:
            z, valid = self._measure(x)  # (1, T, m)
            T = z.shape[1]
            m, P = self._run(z.reshape(T, 1, -1), None if valid is None else valid.reshape(T, 1), x["dt_s"].reshape(T, 1))
            means.append(m[:, 0].cpu().numpy())  # (T, n)
            covs.append(P[:, 0].cpu().numpy())  # (T, n, n)
        t_max = max(len(a) for a in means)
        pad = lambda a: np.concatenate([a, np.zeros((t_max - len(a),) + a.shape[1:])])  # noqa: E731
        states = types.SimpleNamespace(means=np.stack([pad(a) for a in means]), covs=np.stack([pad(a) for a in covs]))
        return sysid.fit_readout(states, ys, yoks)

    @torch.no_grad()
    def _fit_cv(self, train_dataset, log) -> None:
        """R = detector residual variance, P0 from target statistics, Q by innovation likelihood."""
        self.eval()
        zs, ys, oks, dts = [], [], [], []
        for x in self._fit_sequences(train_dataset):
            zs.append(self._detect(x)[0].double())  # (T, D)
            y, ok = self._normalized_target(x)
            ys.append(y)
            oks.append(ok)
            dts.append(x["dt_s"][0].double())
        res = torch.cat([(z - y)[ok] for z, y, ok in zip(zs, ys, oks)])
        self.r.copy_((res**2).mean(0).clamp(min=1e-6))
        vel, acc = [], []
        for y, ok, dt in zip(ys, oks, dts):
            good = ok[1:] & ok[:-1] & (dt[1:] > 0)
            v = (y[1:] - y[:-1]) / dt[1:, None].clamp(min=1e-9)  # (T-1, D)
            vel.append(v[good])
            g2 = good[1:] & good[:-1]
            acc.append(((v[1:] - v[:-1]) ** 2 / dt[2:, None].clamp(min=1e-9))[g2])
        yall = torch.cat([y[ok] for y, ok in zip(ys, oks)])
        self.p0.copy_((yall**2).mean(0).clamp(min=1e-6))
        self.v0.copy_(torch.cat(vel).pow(2).mean(0).clamp(min=1e-6) if sum(len(v) for v in vel) else torch.ones_like(self.v0))
        q0 = torch.cat(acc).mean(0).clamp(min=1e-6) if sum(len(a) for a in acc) else torch.ones_like(self.q)
        self.q.copy_(q0 if self.config.memoryless else self._fit_q(zs, dts, q0))  # a twin never predicts: Q plays no part
        log(f"kalman fit_extra: CV filter q {self.q.tolist()} (init {q0.tolist()}{'; twin: not fitted' if self.config.memoryless else ''}), "
            f"r {self.r.tolist()}")

    def _fit_q(self, zs, dts, q0: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Maximize the innovation log-likelihood of the detector outputs over log q (D,), on chunks of `chunk` ticks.

        The same per-dimension recursion as `_filter_step`, differentiated through by Adam.
        """
        if self.config.q_steps == 0:
            return q0
        L = min(chunk, min(len(z) for z in zs))
        zc = torch.cat([z[: len(z) // L * L].reshape(-1, L, z.shape[-1]) for z in zs])  # (N, L, D)
        dt = torch.cat([d[: len(d) // L * L].reshape(-1, L) for d in dts])  # (N, L)
        N, D = zc.shape[0], zc.shape[-1]
        P0 = torch.diag_embed(torch.stack([self.p0, self.v0], -1))  # (D, 2, 2)
        log_q = torch.log(q0).clone().requires_grad_(True)
        opt = torch.optim.Adam([log_q], lr=self.config.q_lr)
        with torch.enable_grad():
            for _ in range(self.config.q_steps):
                A, Q = self._cv_system(dt, log_q.exp())  # (N, L, 1, 2, 2), (N, L, D, 2, 2)
                m = torch.zeros(N, D, 2, dtype=torch.float64, device=zc.device)
                m, P, _ = ss.update_first(m, P0.expand(N, D, 2, 2), zc[:, 0], self.r)
                ll = 0.0
                for t in range(1, L):  # the first tick's likelihood depends on P0 only
                    m, P = ss.predict(m, P, A[:, t], Q[:, t])
                    m, P, lt = ss.update_first(m, P, zc[:, t], self.r)
                    ll = ll + lt.mean()
                loss = -ll / max(L - 1, 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return log_q.detach().exp()


def _first(d: dict, names) -> object:
    for k in names:
        if k in d:
            return d[k]
    return None


def _search(prov, depth: int = 0) -> dict | None:
    """The first dict (depth-first) holding transition, Q, H and R keys."""
    if not isinstance(prov, dict) or depth > 4:
        return None
    if all(_first(prov, SYSTEM_KEYS[k]) is not None for k in ("A", "Q", "H", "R")):
        return prov
    for v in prov.values():
        found = _search(v, depth + 1)
        if found is not None:
            return found
    return None


def _discrete_transition(raw: dict) -> np.ndarray:
    """The discrete transition among F/A: when both are given, the one equal to expm(other · dt)."""
    if "F" in raw and "A" in raw:
        F, A = (np.asarray(raw[k], np.float64) for k in ("F", "A"))
        dt = _first(raw, ("dt_s", "dt"))
        if dt is not None and F.shape == A.shape and F.ndim == 2:
            if np.allclose(scipy.linalg.expm(A * float(dt)), F, atol=1e-9):
                return F
            if np.allclose(scipy.linalg.expm(F * float(dt)), A, atol=1e-9):
                return A
        raise ValueError("Provenance system holds both F and A and neither is expm(other · dt_s); cannot tell the discrete transition.")
    return np.asarray(_first(raw, ("F", "A")), np.float64)


def parse_system(prov: dict) -> dict | None:
    """The linear-Gaussian system in a provenance dict as numpy arrays, or None if it holds none.

    Discrete transition F (or A), Q, H, R; x0 (default 0), P0 (default 1e6 I, diffuse), target
    matrix G (default H, the measured quantities).
    """
    raw = _search(prov)
    if raw is None:
        return None
    get = lambda k: None if _first(raw, SYSTEM_KEYS[k]) is None else np.atleast_1d(np.asarray(_first(raw, SYSTEM_KEYS[k]), np.float64))  # noqa: E731
    A = np.atleast_2d(_discrete_transition(raw))
    n = A.shape[0]
    if A.shape != (n, n):
        raise ValueError(f"Provenance system: the transition must be square, got shape {A.shape}.")
    H = get("H").reshape(-1, n)
    m = H.shape[0]
    out = {"A": A, "Q": get("Q").reshape(n, n), "H": H, "R": get("R").reshape(m, m)}
    out["x0"] = np.zeros(n) if get("x0") is None else get("x0").reshape(n)
    out["P0"] = np.eye(n) * 1e6 if get("P0") is None else get("P0").reshape(n, n)
    out["G"] = H.copy() if get("G") is None else get("G").reshape(-1, n)
    return out


def find_system(episodes) -> dict | None:
    """The system of the first (file, episode) pair's provenance (episode first, then file), or None."""
    for path, name in episodes[:1]:
        log = open_log(path)
        try:
            return parse_system(log.episode(name).provenance) or parse_system(log.provenance)
        finally:
            log.close()
    return None
