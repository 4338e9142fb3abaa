"""`kalman`: the classical linear Kalman filter, composed of a measurement source, a system source and one filter core.

The parts (config `dynamics` and `measurement_stream` choose them; `fit_extra` fits the system):
- **measurement source**, the filter's z at each tick: `RawStream`, the raw vector/scalar stream
  `measurement_stream` with its validity; or `Detector`, a per-tick detector (the shared TickEncoder + a
  linear head, trained by SGD on per-tick MSE like `framewise`) estimating the normalized target.
- **system source**, the linear-Gaussian model the filter runs, fitted by `fit_extra`:
  `StoredSystem` (`metadata`): the logs' provenance holds the system (F or A, Q, H, R, x0, P0); run on the
  raw stream it is the optimal filter of the scenario.
  `EMSystem` (`em`): `sysid.fit_lds_em` fits A, Q, H, R, x0, P0 (state size `em_state_dim`) to the training
  measurements (the raw stream when it is an input, otherwise the detector's outputs) by
  expectation–maximization, and `sysid.fit_readout` the target map G by least squares of the normalized
  target on the smoothed states.
  `ConstantVelocity` (`cv`): the pipeline robot stacks use today, a constant-velocity model per target
  dimension over the detector with irregular steps; R from the detector's residuals, Q by maximizing the
  innovation likelihood.
  `auto` (default) is `StoredSystem`, falling back to `ConstantVelocity` when the logs hold no usable system.
- **filter core** (`FilterCore`): the one predict/update recursion, over whichever system it is handed
  (`LinearSystem`, or `CVSystem`: D independent 2-state filters). While `torch.onnx.export` traces it, it
  runs the update with the Cholesky factor unrolled (`statespace.update(..., exportable=True)`; ONNX has no
  Cholesky op): the exportable path is the core's own choice, nothing is patched.
`KalmanModel` owns the tensors (detector weights, system buffers: the checkpoint layout) and composes the
parts. What `dynamics` resolves to is held in attributes (`system_source`, `measurement_source`), never
written into a config: `config` is the config given, with the installed system's size (state_dim,
meas_dim) recorded, which is what a checkpoint needs to rebuild the model. (The gravity EKF for raw IMU
logs is the family `ekf`.)

Memoryless twin (`memoryless=True`, see `seqsense.models.base`): each tick is the single update of
the prior N(x0, P0) with that tick's measurement, no dynamics. Its fits follow: in cv mode R and the
prior come from the data as for the full filter and Q, which plays no part, is not fitted; in em mode
the read-out (G, b, residual variance) is refitted on the twin's single-tick states.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Callable, NamedTuple

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
LINEAR_KEYS = ("A", "Q", "H", "R", "G", "x0", "P0")  # buffers of a general linear system
EM_KEYS = ("z_mean", "y0", "y_var")  # em mode: measurement mean removed before filtering, target intercept and residual variance
CV_KEYS = ("q", "r", "p0", "v0")  # buffers of the CV filter (always present)


@dataclasses.dataclass
class KalmanConfig(ModelConfig):
    """Kalman filter settings: where the model comes from, how EM fits it and how the CV filter's Q is fitted."""

    window: int = 16
    dynamics: str = "auto"  # auto | metadata | cv | em
    measurement_stream: str = "measurement"  # raw measurement input of metadata mode (and of em mode when an input)
    state_dim: int = 0  # n of the installed linear system (recorded in `KalmanModel.config` once fitted); 0 = CV filter
    meas_dim: int = 0  # m of the installed linear system (recorded likewise)
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


# ---- measurement sources: the filter's z ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RawStream:
    """Measurement source: the raw vector/scalar stream `stream`, z (..., m) float64 with its validity (...,)."""

    stream: str

    def measure(self, x: dict[str, torch.Tensor], detect: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z and validity of the ticks `x` (the detector is not read)."""
        valid = x[f"{self.stream}_valid"].bool()
        return x[self.stream].double().reshape(*valid.shape, -1), valid


@dataclasses.dataclass(frozen=True)
class Detector:
    """Measurement source: the detector's per-tick estimate of the normalized target, z (..., D) float64, always valid."""

    def measure(self, x: dict[str, torch.Tensor], detect: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z of the ticks `x` from `detect` (the model's detector); validity None (always valid)."""
        return detect(x).double(), None


# ---- systems: what the filter core runs (views of the model's buffers) ------------------------------
class LinearSystem(NamedTuple):
    """x_k = A x_{k-1} + w, w ~ N(0, Q);  z_k = H x_k + v, v ~ N(0, R);  target G x_k (one step per tick).

    Stored systems are in raw units. EM systems filter z − z̄ and read the target in normalized units,
    y = G x + b + ε, ε ~ N(0, diag(s²)) (b = y0, s² = y_var): mean G m + b, variance diag(G P Gᵀ) + s².
    """

    A: torch.Tensor  # (n, n)
    Q: torch.Tensor  # (n, n)
    H: torch.Tensor  # (m, n)
    R: torch.Tensor  # (m, m)
    G: torch.Tensor  # (D, n)
    x0: torch.Tensor  # (n,)
    P0: torch.Tensor  # (n, n)
    z_mean: torch.Tensor | None = None  # (m,) em only, like y0 (D,) and y_var (D,)
    y0: torch.Tensor | None = None
    y_var: torch.Tensor | None = None

    def prior(self, batch_size: int):
        """N(x0, P0) over the batch: (B, n), (B, n, n)."""
        return self.x0.expand(batch_size, *self.x0.shape).clone(), self.P0.expand(batch_size, *self.P0.shape).clone()

    def transition(self, dt_s: torch.Tensor):
        """A and Q: fixed (the scenario's step, or EM's one step per tick), whatever dt_s."""
        return self.A, self.Q

    def update(self, m, P, z, valid, exportable: bool):
        """Update with z (B, m) (less z̄ for EM); rows where `valid` is False keep their state."""
        z = z if self.z_mean is None else z - self.z_mean
        return ss.update(m, P, z, self.H, self.R, valid, exportable=exportable)[:2]

    def output(self, m: torch.Tensor, P: torch.Tensor, denormalize: Callable) -> dict[str, torch.Tensor]:
        """Mean G m (+ b) and variance diag(G P Gᵀ) (+ s²), in target units."""
        mean = m @ self.G.T  # (..., D)
        var = torch.einsum("dn,...nk,dk->...d", self.G, P, self.G)
        if self.y0 is not None:
            mean, var = mean + self.y0, var + self.y_var
        out = {"mean": mean.float(), "var": var.clamp(min=1e-12).float()}
        return out if self.y0 is None else denormalize(out)


class CVSystem(NamedTuple):
    """D independent constant-velocity filters of (p_d, v_d), normalized units, over irregular steps Δt:

        A(Δt) = I + Δt N = [[1, Δt], [0, 1]],  Q(Δt) = q_d Δt^E / E = q_d [[Δt³/3, Δt²/2], [Δt²/2, Δt]],
        H = G = [1, 0],  R = r_d,  x0 = 0,  P0 = diag(p0_d, v0_d).
    A 2D-state filter with a block-diagonal system is exactly these D filters; run side by side they avoid
    the (2D)×(2D) algebra. States m (B, D, 2), P (B, D, 2, 2).
    """

    q: torch.Tensor  # (D,)
    r: torch.Tensor  # (D,)
    p0: torch.Tensor  # (D,)
    v0: torch.Tensor  # (D,)
    eye: torch.Tensor  # I (2, 2)
    shift: torch.Tensor  # N (2, 2)
    power: torch.Tensor  # E (2, 2)

    def prior(self, batch_size: int):
        """N(0, diag(p0, v0)) per dimension over the batch: (B, D, 2), (B, D, 2, 2)."""
        m0 = torch.zeros(self.q.shape[0], 2, dtype=torch.float64, device=self.q.device)
        P0 = torch.diag_embed(torch.stack([self.p0, self.v0], -1))  # (D, 2, 2)
        return m0.expand(batch_size, *m0.shape).clone(), P0.expand(batch_size, *P0.shape).clone()

    def transition(self, dt_s: torch.Tensor):
        """A (..., 1, 2, 2) and Q (..., D, 2, 2) over steps dt_s (...,)."""
        dt = dt_s.double().clamp(min=0.0)[..., None, None, None]  # (..., 1, 1, 1)
        A = self.eye + dt * self.shift
        Q = self.q[:, None, None] * (dt**self.power / self.power)  # q [[Δt³/3, Δt²/2], [Δt²/2, Δt]]
        return A, Q

    def update(self, m, P, z, valid, exportable: bool):
        """Scalar update of each dimension's position with z (B, D); needs no factorization, so no exportable form."""
        return ss.update_first(m, P, z, self.r, valid, loglik=False)[:2]

    def output(self, m: torch.Tensor, P: torch.Tensor, denormalize: Callable) -> dict[str, torch.Tensor]:
        """Position mean and variance per dimension, in target units."""
        return denormalize({"mean": m[..., 0].float(), "var": P[..., 0, 0].clamp(min=1e-12).float()})


# ---- the filter core ------------------------------------------------------------------------------
class FilterCore:
    """The one Kalman recursion: the state at the first tick is the prior updated with z_1 (no predict step
    before it); each later tick predicts over its dt_s, then updates (the maths in `statespace`).

    `exportable` selects the update's ONNX-expressible form (Cholesky factor and solves unrolled; same
    maths); None = chosen at trace time: on while `torch.onnx.export` traces the step.
    """

    def step(self, system, m, P, started, dt_s, z, valid, exportable: bool | None = None):
        """Predict over dt_s where `started` (B,) (elsewhere keep the prior), then update with z; returns (m, P)."""
        if exportable is None:
            exportable = torch.onnx.is_in_onnx_export()
        A, Q = system.transition(dt_s)
        mp, Pp = ss.predict(m, P, A, Q)
        go = started.bool().reshape(-1, *([1] * (m.dim() - 1)))  # (B, 1, ...) against m
        m = torch.where(go, mp, m)
        P = torch.where(go.unsqueeze(-1), Pp, P)
        return system.update(m, P, z, valid, exportable)

    def run(self, system, z, valid, dt_s, exportable: bool | None = None):
        """Filter whole windows z (B, T, ...) from the prior -> stacked states m (B, T, ...), P (B, T, ...)."""
        B, T = z.shape[:2]
        m, P = system.prior(B)
        started = torch.zeros(B, dtype=torch.float64, device=z.device)
        ms, Ps = [], []
        for t in range(T):
            m, P = self.step(system, m, P, started, dt_s[:, t], z[:, t], None if valid is None else valid[:, t], exportable)
            started = torch.ones_like(started)
            ms.append(m)
            Ps.append(P)
        return torch.stack(ms, 1), torch.stack(Ps, 1)


# ---- system sources: where the system comes from (fitted by fit_extra) ------------------------------
class SystemUnavailable(ConfigError):
    """A system source cannot give a system on these logs; the message says why."""


class SystemFit(NamedTuple):
    """What a system source gives: the system's tensors (buffer name -> float64), the measurement source it runs on, a log line."""

    tensors: dict[str, torch.Tensor]
    measurement: RawStream | Detector
    message: str
    loglik: list[float] | None = None  # EM: log p(z) per iteration


def fit_sequences(model, train_dataset) -> list[dict[str, torch.Tensor]]:
    """Whole training episodes (at most max_fit_episodes) as batch-1 tensor dicts."""
    n_eps = min(len(train_dataset.episodes), model.config.max_fit_episodes)
    return [to_tensors(train_dataset.sequence(k), device=model.device) for k in range(n_eps)]


def normalized_target(model, x: dict[str, torch.Tensor]):
    """Target (T, D) float64 in normalized units and where it is usable (T,)."""
    y = ((x["target"][0] - model.target_mean) / model.target_std).double()
    return y.reshape(len(y), -1), x["target_valid"][0] & ~x["tick_is_pad"][0]


def _as_buffers(arrays: dict, device) -> dict[str, torch.Tensor]:
    """float64 tensors (own copies: G may be H) of numpy-like arrays."""
    return {k: torch.tensor(np.array(v), dtype=torch.float64, device=device) for k, v in arrays.items()}


class StoredSystem:
    """System source `metadata`: the linear system in the logs' provenance, run on the raw measurement stream."""

    name = "metadata"

    def fit(self, model, train_dataset) -> SystemFit:
        """The first training episode's system; SystemUnavailable when there is none or it does not fit the streams."""
        s = model.config.measurement_stream
        system = find_system(train_dataset.episodes)
        if system is None:
            raise SystemUnavailable("the logs' provenance holds no linear system (A/F, Q, H, R).")
        if s not in model.config.inputs:
            raise SystemUnavailable(f"the measurement stream {s!r} is not among the inputs {list(model.config.inputs)}.")
        m = int(np.prod(model.streams[s].shape) or 1)
        if system["H"].shape[0] != m:
            raise SystemUnavailable(f"H has {system['H'].shape[0]} rows but stream {s!r} has {m} values.")
        if system["G"].shape[0] != model.target_dim:
            raise SystemUnavailable(f"the system's target rows ({system['G'].shape[0]}) differ from the target size {model.target_dim}.")
        tensors = _as_buffers({k: system[k] for k in LINEAR_KEYS}, model.target_mean.device)
        n = tensors["A"].shape[0]
        return SystemFit(tensors, RawStream(s), f"using the log's linear system (n={n}, m={m}) on the raw '{s}' stream.")


class EMSystem:
    """System source `em`: a linear system fitted to the training measurements by EM, the target map by least squares."""

    name = "em"

    def __init__(self, measurement: RawStream | Detector):
        self.measurement = measurement  # known from the config: the raw stream when it is an input, else the detector

    @torch.no_grad()
    def fit(self, model, train_dataset) -> SystemFit:
        """EM on z − z̄ over the training episodes, then G, b, s² (on single-tick states for a twin)."""
        model.eval()
        raw = isinstance(self.measurement, RawStream)
        zs, oks, ys, yoks = [], [], [], []
        seqs = fit_sequences(model, train_dataset)
        for x in seqs:
            live = ~x["tick_is_pad"][0]
            if raw:
                s = self.measurement.stream
                zs.append(x[s][0].double().reshape(len(live), -1))
                oks.append(x[f"{s}_valid"][0].bool() & live)
            else:
                zs.append(model.detect(x)[0].double())
                oks.append(live)
            y, yok = normalized_target(model, x)
            ys.append(y.cpu().numpy())
            yoks.append(yok.cpu().numpy())
        zs = [z.cpu().numpy() for z in zs]
        oks = [ok.cpu().numpy() for ok in oks]
        where = "the raw " + repr(self.measurement.stream) + " stream" if raw else "the detector outputs"
        seen = np.concatenate([z[ok] for z, ok in zip(zs, oks)])
        if len(seen) == 0:
            what = "stream " + repr(self.measurement.stream) if raw else "detector"
            raise ConfigError(f"kalman dynamics='em': no valid measurement in the training episodes ({what}).")
        z_mean = seen.mean(0)
        cfg = model.config
        fit = sysid.fit_lds_em([z - z_mean for z in zs], oks, state_dim=cfg.em_state_dim, iters=cfg.em_iters)
        G, y0, y_var = sysid.fit_readout(fit, ys, yoks)
        tensors = _as_buffers({**dataclasses.asdict(fit.lds), "G": G, "z_mean": z_mean, "y0": y0, "y_var": y_var}, model.target_mean.device)
        if cfg.memoryless:  # the twin reads its target off single-tick states, not smoothed ones
            system = LinearSystem(**{k: tensors[k] for k in LinearSystem._fields})
            readout = self._twin_readout(model, system, seqs, ys, yoks)
            tensors.update(_as_buffers(dict(zip(("G", "y0", "y_var"), readout)), model.target_mean.device))
        ll = fit.loglik
        n, m = tensors["A"].shape[0], tensors["H"].shape[0]
        message = (f"EM fit of a linear system (n={n}, m={m}) on {where} of {len(zs)} episodes: log-likelihood "
                   f"{ll[0]:.2f} -> {ll[-1]:.2f} in {len(ll) - 1} iterations; target residual variance "
                   f"{np.round(tensors['y_var'].cpu().numpy(), 6).tolist()}{' (twin: read-out fitted on single-tick states)' if cfg.memoryless else ''}")
        return SystemFit(tensors, self.measurement, message, ll)

    def _twin_readout(self, model, system: LinearSystem, seqs, ys, yoks):
        """(G, b, residual variance) by least squares on the twin's states: each tick the prior updated with that tick alone."""
        means, covs = [], []
        for x in seqs:
            z, valid = self.measurement.measure(x, model.detect)  # (1, T, m)
            T = z.shape[1]
            m, P = model.core.run(system, z.reshape(T, 1, -1), None if valid is None else valid.reshape(T, 1), x["dt_s"].reshape(T, 1))
            means.append(m[:, 0].cpu().numpy())  # (T, n)
            covs.append(P[:, 0].cpu().numpy())  # (T, n, n)
        t_max = max(len(a) for a in means)
        pad = lambda a: np.concatenate([a, np.zeros((t_max - len(a),) + a.shape[1:])])  # noqa: E731
        states = types.SimpleNamespace(means=np.stack([pad(a) for a in means]), covs=np.stack([pad(a) for a in covs]))
        return sysid.fit_readout(states, ys, yoks)


class ConstantVelocity:
    """System source `cv`: a constant-velocity filter per target dimension on the detector; R, P0, Q fitted to the training data."""

    name = "cv"
    instead = "Fitting a constant-velocity filter on the detector instead."

    @torch.no_grad()
    def fit(self, model, train_dataset) -> SystemFit:
        """R = detector residual variance, P0 from target statistics, Q by innovation likelihood (not for a twin)."""
        model.eval()
        zs, ys, oks, dts = [], [], [], []
        for x in fit_sequences(model, train_dataset):
            zs.append(model.detect(x)[0].double())  # (T, D)
            y, ok = normalized_target(model, x)
            ys.append(y)
            oks.append(ok)
            dts.append(x["dt_s"][0].double())
        res = torch.cat([(z - y)[ok] for z, y, ok in zip(zs, ys, oks)])
        r = (res**2).mean(0).clamp(min=1e-6)
        vel, acc = [], []
        for y, ok, dt in zip(ys, oks, dts):
            good = ok[1:] & ok[:-1] & (dt[1:] > 0)
            v = (y[1:] - y[:-1]) / dt[1:, None].clamp(min=1e-9)  # (T-1, D)
            vel.append(v[good])
            g2 = good[1:] & good[:-1]
            acc.append(((v[1:] - v[:-1]) ** 2 / dt[2:, None].clamp(min=1e-9))[g2])
        yall = torch.cat([y[ok] for y, ok in zip(ys, oks)])
        p0 = (yall**2).mean(0).clamp(min=1e-6)
        v0 = torch.cat(vel).pow(2).mean(0).clamp(min=1e-6) if sum(len(v) for v in vel) else torch.ones_like(model.v0)
        q0 = torch.cat(acc).mean(0).clamp(min=1e-6) if sum(len(a) for a in acc) else torch.ones_like(model.q)
        twin = model.config.memoryless
        start = CVSystem(q0, r, p0, v0, model.cv_eye, model.cv_shift, model.cv_pow)
        q = q0 if twin else self._fit_q(model, zs, dts, start)  # a twin never predicts: Q plays no part
        message = f"CV filter q {q.tolist()} (init {q0.tolist()}{'; twin: not fitted' if twin else ''}), r {r.tolist()}"
        return SystemFit({"q": q, "r": r, "p0": p0, "v0": v0}, Detector(), message)

    def _fit_q(self, model, zs, dts, start: CVSystem, chunk: int = 64) -> torch.Tensor:
        """Maximize the innovation log-likelihood of the detector outputs over log q (D,), on chunks of `chunk` ticks.

        The same per-dimension recursion as the filter core's, differentiated through by Adam.
        """
        cfg = model.config
        if cfg.q_steps == 0:
            return start.q
        L = min(chunk, min(len(z) for z in zs))
        zc = torch.cat([z[: len(z) // L * L].reshape(-1, L, z.shape[-1]) for z in zs])  # (N, L, D)
        dt = torch.cat([d[: len(d) // L * L].reshape(-1, L) for d in dts])  # (N, L)
        N, D = zc.shape[0], zc.shape[-1]
        P0 = torch.diag_embed(torch.stack([start.p0, start.v0], -1))  # (D, 2, 2)
        log_q = torch.log(start.q).clone().requires_grad_(True)
        opt = torch.optim.Adam([log_q], lr=cfg.q_lr)
        with torch.enable_grad():
            for _ in range(cfg.q_steps):
                A, Q = start._replace(q=log_q.exp()).transition(dt)  # (N, L, 1, 2, 2), (N, L, D, 2, 2)
                m = torch.zeros(N, D, 2, dtype=torch.float64, device=zc.device)
                m, P, _ = ss.update_first(m, P0.expand(N, D, 2, 2), zc[:, 0], start.r)
                ll = 0.0
                for t in range(1, L):  # the first tick's likelihood depends on P0 only
                    m, P = ss.predict(m, P, A[:, t], Q[:, t])
                    m, P, lt = ss.update_first(m, P, zc[:, t], start.r)
                    ll = ll + lt.mean()
                loss = -ll / max(L - 1, 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return log_q.detach().exp()


def system_sources(config: KalmanConfig) -> tuple:
    """The system sources `dynamics` names, tried in order by fit_extra (auto: the stored system, else CV)."""
    if config.dynamics == "em":
        measurement = RawStream(config.measurement_stream) if config.measurement_stream in config.inputs else Detector()
        return (EMSystem(measurement),)
    return {"auto": (StoredSystem(), ConstantVelocity()), "metadata": (StoredSystem(),), "cv": (ConstantVelocity(),)}[config.dynamics]


# ---- the model ------------------------------------------------------------------------------------
@register_model("kalman", KalmanConfig)
class KalmanModel(SequenceModel):
    """Linear Kalman filter over ticks: a measurement source × a system source × the filter core (module doc).

    Owns the detector (TickEncoder + linear head; in the checkpoint whichever source runs) and the
    installed system's buffers: always the CV filter's q, r, p0, v0 (D,); once a linear system is
    installed A, Q, H, R, G, x0, P0 (+ z_mean, y0, y_var for EM), float64. Until fit_extra installs a
    fitted system the filter is the CV filter with default noises on the detector.
    Prediction: mean and variance (B, D) from the system's read-out. State: {"m", "P" float64, "started"
    (B,)}: m (B, n), P (B, n, n) for a linear system; m (B, D, 2), P (B, D, 2, 2) for the CV filter.
    """

    target_kinds = ("vector", "scalar")  # continuous targets only

    @classmethod
    def check_streams(cls, config: KalmanConfig, streams) -> None:
        """ConfigError on a label target (`target_kinds`), or (em mode) a raw measurement input that is not a latest-mode vector/scalar stream."""
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
        for name in CV_KEYS:  # CV filter, fitted in fit_extra
            self.register_buffer(name, torch.full((d,), 1.0 if name != "r" else 0.1, dtype=torch.float64))
        # CV constants (not saved): A(Δt) = I + Δt N, Q(Δt) = q Δt^E / E elementwise
        self.register_buffer("cv_eye", torch.eye(2, dtype=torch.float64), persistent=False)
        self.register_buffer("cv_shift", torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64), persistent=False)
        self.register_buffer("cv_pow", torch.tensor([[3.0, 2.0], [2.0, 1.0]], dtype=torch.float64), persistent=False)
        self.core = FilterCore()
        self.system_sources = system_sources(config)
        first = self.system_sources[0]
        self._em_on_raw = isinstance(first, EMSystem) and isinstance(first.measurement, RawStream)  # trains no detector, even before fit
        self.em_loglik: list[float] | None = None  # log p(z) per EM iteration, for inspection (not saved)
        if config.state_dim > 0:  # a fitted linear system's buffers (a checkpoint's): load_state_dict fills them
            n, m = config.state_dim, config.meas_dim
            shapes = {"A": (n, n), "Q": (n, n), "H": (m, n), "R": (m, m), "G": (d, n), "x0": (n,), "P0": (n, n)}
            if isinstance(first, EMSystem):
                shapes.update({"z_mean": (m,), "y0": (d,), "y_var": (d,)})
            for name, shape in shapes.items():
                self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))
            source = first if isinstance(first, EMSystem) else StoredSystem()
            measurement = first.measurement if isinstance(first, EMSystem) else RawStream(config.measurement_stream)
        else:
            source, measurement = ConstantVelocity(), Detector()
        self._compose(source, measurement)

    # ---- composition ---------------------------------------------------------------------------
    @property
    def config(self) -> KalmanConfig:
        """The config that rebuilds this model (a checkpoint's): the one given, with the installed system's size."""
        return self._config

    @config.setter
    def config(self, value: KalmanConfig) -> None:
        self._given_config = self._config = value  # the given object is never changed

    def _compose(self, source, measurement) -> None:
        """Record the parts that run (the installed system's source and the measurement source) and the config that rebuilds them."""
        self.system_source, self.measurement_source = source, measurement
        n, m = (self.A.shape[0], self.H.shape[0]) if self.uses_system else (0, 0)
        given = self._given_config
        self._config = given if (given.state_dim, given.meas_dim) == (n, m) else dataclasses.replace(given, state_dim=n, meas_dim=m)

    def _install(self, source, fit: SystemFit) -> None:
        """Install a fitted system: its tensors as buffers (the checkpoint layout), then compose the parts that run it."""
        if isinstance(source, ConstantVelocity):
            for name in LINEAR_KEYS + EM_KEYS:  # a linear system installed before (auto refitted on other logs) no longer runs
                if name in self._buffers:
                    delattr(self, name)
            for name, value in fit.tensors.items():
                getattr(self, name).copy_(value)
        else:
            for name, value in fit.tensors.items():
                self.register_buffer(name, value)
        if fit.loglik is not None:
            self.em_loglik = fit.loglik
        self._compose(source, fit.measurement)

    @property
    def system(self) -> LinearSystem | CVSystem:
        """The installed system as the filter core runs it (a view of the buffers)."""
        if not self.uses_system:
            return CVSystem(self.q, self.r, self.p0, self.v0, self.cv_eye, self.cv_shift, self.cv_pow)
        em = (self.z_mean, self.y0, self.y_var) if self.uses_em else (None, None, None)
        return LinearSystem(self.A, self.Q, self.H, self.R, self.G, self.x0, self.P0, *em)

    @property
    def uses_system(self) -> bool:
        """True once the filter runs a general linear system (the log's, or fitted by EM)."""
        return not isinstance(self.system_source, ConstantVelocity)

    @property
    def uses_metadata(self) -> bool:
        """True once the filter runs the log's own system on the raw measurement stream."""
        return isinstance(self.system_source, StoredSystem)

    @property
    def uses_em(self) -> bool:
        """True once the filter runs a system fitted by EM."""
        return isinstance(self.system_source, EMSystem)

    @property
    def measures_raw(self) -> bool:
        """True when the filter reads the raw `measurement_stream`: the log's system once installed, or EM on that stream."""
        return isinstance(self.measurement_source, RawStream) or self._em_on_raw

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

    # ---- running ------------------------------------------------------------------------------
    def detect(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The detector's per-tick target estimate (..., D), normalized units (what the `Detector` source measures)."""
        return self.head(self.encoder(x))

    def _measure(self, x: dict[str, torch.Tensor]):
        """Measurements z (..., m) float64 and their validity (...,), or None where always valid."""
        return self.measurement_source.measure(x, self.detect)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Filtered predictions for every tick of windows (B, T, ...), each window from the prior."""
        z, valid = self._measure(batch)
        system = self.system
        return system.output(*self.core.run(system, z, valid, batch["dt_s"]), self.denormalize)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The detector's per-tick MSE in normalized units (filters on raw measurements: the filter's NLL)."""
        if self.measures_raw and self.uses_system:
            return super().loss(batch)
        valid = batch["target_valid"] & ~batch["tick_is_pad"]
        y = (batch["target"] - self.target_mean) / self.target_std
        return ((self.detect(batch) - y) ** 2)[valid].mean()

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """The prior N(x0, P0): m, P float64 (see the class doc for shapes), started (B,) = 0."""
        m, P = self.system.prior(batch_size)
        return {"m": m, "P": P, "started": torch.zeros(batch_size, dtype=torch.float64, device=m.device)}

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out (B, D), next state)."""
        z, valid = self._measure(tick)  # (B, m)
        system = self.system
        m, P = self.core.step(system, state["m"], state["P"], state["started"], tick["dt_s"], z, valid)
        return system.output(m, P, self.denormalize), {"m": m, "P": P, "started": torch.ones_like(state["started"])}

    # ---- fitting ------------------------------------------------------------------------------
    def fit_extra(self, train_dataset, log=print, val_dataset=None) -> None:
        """Fit the first system source of `dynamics` that can give a system on these logs, and install it."""
        sources = self.system_sources
        for k, source in enumerate(sources):
            try:
                fit = source.fit(self, train_dataset)
            except SystemUnavailable as e:
                if k + 1 == len(sources):
                    raise ConfigError(f"kalman dynamics={self.config.dynamics!r}: {e} Use dynamics=auto, dynamics=em or dynamics=cv.") from None
                log(f"kalman fit_extra: {e} {sources[k + 1].instead}")
                continue
            self._install(source, fit)
            log(f"kalman fit_extra: {fit.message}")
            return


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
