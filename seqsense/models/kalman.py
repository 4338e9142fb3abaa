"""`kalman`: the classical linear Kalman filter, either the scenario's own model or detector + CV filter.

Two ways to get the linear-Gaussian model, chosen in `fit_extra` (config `dynamics`):
- `metadata`: the log's provenance holds the system (F or A, Q, H, R, x0, P0) and the raw measurement
  vector stream is an input: the filter runs on it directly and is the optimal filter of the scenario.
- `cv`: the pipeline robot stacks use today. A per-tick detector (the shared TickEncoder + a linear
  head, trained by SGD on per-tick MSE like `framewise`) gives measurements of the target, filtered by a
  constant-velocity model per target dimension with irregular steps; `fit_extra` sets R from the
  detector's residuals and fits Q by maximizing the innovation likelihood.
`auto` (default) uses the metadata when present and falls back to `cv`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
import torch
from torch import nn

from seqsense.errors import ConfigError
from seqsense.log.reader import open_log
from seqsense.models import statespace as ss
from seqsense.models.base import ModelConfig, SequenceModel, register_model, to_tensors
from seqsense.models.encoders import TickEncoder

DYNAMICS = ("auto", "metadata", "cv")
SYSTEM_KEYS = {"A": ("F", "A"), "Q": ("Q",), "H": ("H", "C"), "R": ("R",), "x0": ("x0", "x0_mean", "m0"), "P0": ("P0",), "G": ("G", "target_matrix")}


@dataclasses.dataclass
class KalmanConfig(ModelConfig):
    """Kalman filter settings: where the model comes from and how the CV filter's Q is fitted."""

    window: int = 16
    dynamics: str = "auto"  # auto | metadata | cv
    measurement_stream: str = "measurement"  # raw measurement input used in metadata mode
    state_dim: int = 0  # n of the metadata system (set by fit_extra); 0 = CV filter (n = 2 D)
    meas_dim: int = 0  # m of the metadata system (set by fit_extra)
    q_steps: int = 60  # Adam steps fitting the CV process noise by innovation likelihood
    q_lr: float = 0.2
    max_fit_episodes: int = 64  # training episodes read by fit_extra

    def __post_init__(self):
        super().__post_init__()
        if self.dynamics not in DYNAMICS:
            raise ConfigError(f"KalmanConfig: dynamics must be one of {DYNAMICS}, got {self.dynamics!r}.")
        if self.state_dim < 0 or self.meas_dim < 0 or (self.state_dim > 0) != (self.meas_dim > 0):
            raise ConfigError(f"KalmanConfig: state_dim and meas_dim must both be 0 or both >= 1, got {self.state_dim}, {self.meas_dim}.")
        if self.q_steps < 0 or not self.q_lr > 0 or self.max_fit_episodes < 1:
            raise ConfigError("KalmanConfig: q_steps must be >= 0, q_lr > 0 and max_fit_episodes >= 1.")


@register_model("kalman", KalmanConfig)
class KalmanModel(SequenceModel):
    """Linear Kalman filter over ticks; owns the detector (CV mode) and the system matrices.

    System x_k = A_k x_{k-1} + w, w ~ N(0, Q_k);  z_k = H x_k + v, v ~ N(0, R);  target y_k = G x_k.
    The state at the first tick is the prior N(x0, P0), updated with z_1 (no predict step before it);
    each later tick predicts over its dt_s, then updates (the recursion in `statespace`).
    - metadata mode: A, Q, H, R, G, x0, P0 from the log, raw units, A and Q fixed (the scenario's dt);
    - CV mode, per target dimension d (normalized units), state (p_d, v_d) laid out as [p (D), v (D)]:
        A(Δt) = [[I, Δt I], [0, I]],  Q(Δt) = [[Δt³/3 q, Δt²/2 q], [Δt²/2 q, Δt q]],  q = diag(q_d),
        H = G = [I, 0],  R = diag(r_d),  x0 = 0,  P0 = diag(p0, v0);  z = detector(tick inputs).
    Prediction: mean G m, variance diag(G P Gᵀ). State: {"m": (B, n), "P": (B, n, n) float64,
    "started": (B,)}.
    """

    target_kinds = ("vector", "scalar")  # continuous targets only

    def __init__(self, config: KalmanConfig, streams, normalization):
        super().__init__(config, streams, normalization)
        if self.discrete:
            raise ConfigError(f"kalman predicts continuous targets; {config.target!r} is a label stream. Use framewise/rnn/transformer.")
        d, h = self.target_dim, config.hidden
        self.encoder = TickEncoder(config.inputs, streams, normalization, config.packed, h, config.frame_channels)
        self.head = nn.Linear(h, d)
        for name in ("q", "r", "p0", "v0"):  # CV filter, fitted in fit_extra
            self.register_buffer(name, torch.full((d,), 1.0 if name != "r" else 0.1, dtype=torch.float64))
        if config.state_dim > 0:
            n, m = config.state_dim, config.meas_dim
            shapes = {"A": (n, n), "Q": (n, n), "H": (m, n), "R": (m, m), "G": (d, n), "x0": (n,), "P0": (n, n)}
            for name, shape in shapes.items():
                self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))

    @property
    def uses_metadata(self) -> bool:
        """True once the filter runs the log's own system on the raw measurement stream."""
        return self.config.state_dim > 0

    @property
    def trains_by_sgd(self) -> bool:
        """Only the CV mode's detector trains by SGD; the metadata filter has nothing to learn."""
        return not self.uses_metadata

    def num_parameters(self) -> int:
        """Detector weights (CV mode) plus the filter's fitted numbers."""
        if self.uses_metadata:
            return sum(getattr(self, k).numel() for k in ("A", "Q", "H", "R", "x0", "P0"))
        return sum(p.numel() for p in self.parameters()) + 4 * self.target_dim

    # ---- the filter ---------------------------------------------------------------------------
    def _detect(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The detector's per-tick target estimate (..., D), normalized units."""
        return self.head(self.encoder(x))

    def _measure(self, x: dict[str, torch.Tensor]):
        """Measurements z (..., m) float64 and their validity (...,)."""
        if self.uses_metadata:
            s = self.config.measurement_stream
            return x[s].double(), x[f"{s}_valid"].bool()
        z = self._detect(x).double()
        return z, torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device)

    def _system(self, dt_s: torch.Tensor, q: torch.Tensor | None = None):
        """(A, Q) each (..., n, n), H (m, n), R (m, m) for steps dt_s (...,)."""
        if self.uses_metadata:
            shape = dt_s.shape + self.A.shape
            return self.A.expand(shape), self.Q.expand(shape), self.H, self.R
        q = self.q if q is None else q
        d = self.target_dim
        dt = dt_s.double().clamp(min=0.0)[..., None, None]  # (..., 1, 1)
        eye = torch.eye(d, dtype=torch.float64, device=dt.device)
        zero = torch.zeros_like(eye)
        qd = torch.diag_embed(q)  # (D, D)
        A = torch.cat([torch.cat([eye + 0 * dt, eye * dt], -1), torch.cat([zero + 0 * dt, eye + 0 * dt], -1)], -2)
        Q = torch.cat([torch.cat([qd * dt**3 / 3, qd * dt**2 / 2], -1), torch.cat([qd * dt**2 / 2, qd * dt], -1)], -2)
        return A, Q, torch.cat([eye, zero], -1), torch.diag_embed(self.r)

    def _prior(self, batch_size: int):
        if self.uses_metadata:
            m0, P0 = self.x0, self.P0
        else:
            m0 = torch.zeros(2 * self.target_dim, dtype=torch.float64, device=self.q.device)
            P0 = torch.diag_embed(torch.cat([self.p0, self.v0]))
        n = m0.shape[0]
        return m0.expand(batch_size, n).clone(), P0.expand(batch_size, n, n).clone()

    def _filter_step(self, m, P, started, A, Q, H, R, z, valid):
        """Predict (where started) then update; returns (m, P, innovation log-likelihood (B,))."""
        mp, Pp = ss.predict(m, P, A, Q)
        go = started.bool()
        m = torch.where(go[:, None], mp, m)
        P = torch.where(go[:, None, None], Pp, P)
        return ss.update(m, P, z, H, R, valid)

    def _output(self, m: torch.Tensor, P: torch.Tensor) -> dict[str, torch.Tensor]:
        G = self.G if self.uses_metadata else torch.eye(self.target_dim, 2 * self.target_dim, dtype=torch.float64, device=m.device)
        mean = m @ G.T  # (..., D)
        var = torch.einsum("dn,...nk,dk->...d", G, P, G)
        out = {"mean": mean.float(), "var": var.clamp(min=1e-12).float()}
        return out if self.uses_metadata else self.denormalize(out)

    def _run(self, z, valid, dt_s, q=None):
        """Filter whole windows z (B, T, m) -> stacked m (B, T, n), P (B, T, n, n), log-lik (B, T)."""
        B, T = z.shape[:2]
        A, Q, H, R = self._system(dt_s, q)  # (B, T, n, n)
        m, P = self._prior(B)
        started = torch.zeros(B, dtype=torch.bool, device=z.device)
        ms, Ps, lls = [], [], []
        for t in range(T):
            m, P, ll = self._filter_step(m, P, started, A[:, t], Q[:, t], H, R, z[:, t], valid[:, t])
            started = torch.ones_like(started)
            ms.append(m)
            Ps.append(P)
            lls.append(ll)
        return torch.stack(ms, 1), torch.stack(Ps, 1), torch.stack(lls, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Filtered predictions for every tick of windows (B, T, ...), each window from the prior."""
        z, valid = self._measure(batch)
        m, P, _ = self._run(z, valid, batch["dt_s"])
        return self._output(m, P)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """CV mode: the detector's per-tick MSE in normalized units (metadata mode: the filter's NLL)."""
        if self.uses_metadata:
            return super().loss(batch)
        valid = batch["target_valid"] & ~batch["tick_is_pad"]
        y = (batch["target"] - self.target_mean) / self.target_std
        return ((self._detect(batch) - y) ** 2)[valid].mean()

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """The prior N(x0, P0): m (B, n), P (B, n, n) float64, started (B,) = 0."""
        m, P = self._prior(batch_size)
        return {"m": m, "P": P, "started": torch.zeros(batch_size, dtype=torch.float64, device=m.device)}

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...) -> (out (B, D), next state)."""
        z, valid = self._measure(tick)  # (B, m)
        A, Q, H, R = self._system(tick["dt_s"])  # (B, n, n)
        m, P, _ = self._filter_step(state["m"], state["P"], state["started"], A, Q, H, R, z, valid)
        return self._output(m, P), {"m": m, "P": P, "started": torch.ones_like(state["started"])}

    # ---- fitting ------------------------------------------------------------------------------
    def fit_extra(self, train_dataset, log=print) -> None:
        """Load the log's system (metadata) or fit the CV filter's R (residuals) and Q (innovation likelihood)."""
        if self.config.dynamics != "cv":
            system = find_system(train_dataset.episodes)
            usable, why = self._check_system(system)
            if usable:
                self._set_system(system)
                log(f"kalman fit_extra: using the log's linear system (n={self.config.state_dim}, m={self.config.meas_dim}) "
                    f"on the raw '{self.config.measurement_stream}' stream.")
                return
            if self.config.dynamics == "metadata":
                raise ConfigError(f"kalman dynamics='metadata': {why} Use dynamics=auto or dynamics=cv.")
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
        """Install the system matrices as float64 buffers and record their sizes in the config."""
        n, m = system["A"].shape[0], system["H"].shape[0]
        self.config.state_dim, self.config.meas_dim = n, m
        dev = self.target_mean.device
        for name in ("A", "Q", "H", "R", "G", "x0", "P0"):
            self.register_buffer(name, torch.tensor(np.array(system[name]), dtype=torch.float64, device=dev))  # own copy: G may be H

    @torch.no_grad()
    def _fit_cv(self, train_dataset, log) -> None:
        """R = detector residual variance, P0 from target statistics, Q by innovation likelihood."""
        self.eval()
        n_eps = min(len(train_dataset.episodes), self.config.max_fit_episodes)
        seqs = [to_tensors(train_dataset.sequence(k), device=self.device) for k in range(n_eps)]
        zs, ys, oks, dts = [], [], [], []
        for x in seqs:
            zs.append(self._detect(x)[0].double())  # (T, D)
            ys.append(((x["target"][0] - self.target_mean) / self.target_std).double())
            oks.append((x["target_valid"][0] & ~x["tick_is_pad"][0]))
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
        self.q.copy_(self._fit_q(zs, dts, q0))
        log(f"kalman fit_extra: CV filter q {self.q.tolist()} (init {q0.tolist()}), r {self.r.tolist()}")

    def _fit_q(self, zs, dts, q0: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Maximize the innovation log-likelihood of the detector outputs over log q (D,).

        The CV filter is independent per dimension, so the fit runs D scalar-measurement filters of
        state (p, v) side by side (the same recursion as `_run`, without the (2D)×(2D) algebra).
        """
        if self.config.q_steps == 0:
            return q0
        L = min(chunk, min(len(z) for z in zs))
        zc = torch.cat([z[: len(z) // L * L].reshape(-1, L, z.shape[-1]) for z in zs])  # (N, L, D)
        dt = torch.cat([d[: len(d) // L * L].reshape(-1, L) for d in dts]).clamp(min=0.0)[..., None]  # (N, L, 1)
        N, D = zc.shape[0], zc.shape[-1]
        A = torch.zeros(N, L, D, 2, 2, dtype=torch.float64)
        A[..., 0, 0] = A[..., 1, 1] = 1.0
        A[..., 0, 1] = dt
        Qunit = torch.stack([torch.stack([dt**3 / 3, dt**2 / 2], -1), torch.stack([dt**2 / 2, dt], -1)], -2)  # (N, L, 1, 2, 2)
        P0 = torch.diag_embed(torch.stack([self.p0, self.v0], -1))  # (D, 2, 2)
        log_q = torch.log(q0).clone().requires_grad_(True)
        opt = torch.optim.Adam([log_q], lr=self.config.q_lr)
        with torch.enable_grad():
            for _ in range(self.config.q_steps):
                Q = Qunit * log_q.exp()[:, None, None]  # (N, L, D, 2, 2)
                m = torch.zeros(N, D, 2, dtype=torch.float64)
                P = P0.expand(N, D, 2, 2)
                m, P, _ = ss.update_first(m, P, zc[:, 0], self.r)
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
