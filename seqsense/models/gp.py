"""`gp`: a Matérn Gaussian-process prior over time on the shared encoder's per-tick outputs.

Hyper-parameters live in gpytorch modules (`ScaleKernel(MaternKernel)` with one kernel per output
dimension, `GaussianLikelihood` for the target noise), so they carry gpytorch's positive constraints
(`raw_lengthscale` -> `lengthscale`). Inference is the exact state-space form of the same GP
(`seqsense.models.statespace`): a Kalman recursion whose cost per step does not grow with history,
unlike gpytorch's dense posterior or `get_fantasy_model`. `fit_svgp` offers gpytorch's sparse
variational GP for offline fits on long logs.
"""

from __future__ import annotations

import dataclasses
import math

import gpytorch
import numpy as np
import torch
from torch import nn

from seqsense.errors import ConfigError
from seqsense.models import statespace as ss
from seqsense.models.base import ModelConfig, SequenceModel, register_model
from seqsense.models.encoders import PredictionHead, TickEncoder


DENSE_MAX_TICKS = 128  # windows up to this length filter densely (O(T³) batched), longer ones by the recursion


class MaternPrior(nn.Module):
    """D independent Matérn-ν GP priors over time, held as a batched gpytorch ScaleKernel(MaternKernel).

    `sde()` gives their state-space form (F, P∞), `discretize(dt)` the exact (A, Q) over steps Δt;
    see `seqsense.models.statespace` for the maths. Times are in seconds.
    """

    def __init__(self, nu: float, dims: int, lengthscale_s: float = 1.0, outputscale: float = 1.0):
        super().__init__()
        self.nu = float(nu)
        self.state_size = ss.matern_state_size(nu)
        batch = torch.Size([dims])
        self.kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=self.nu, batch_shape=batch), batch_shape=batch)
        self.kernel.base_kernel.lengthscale = torch.full((dims, 1, 1), float(lengthscale_s))
        self.kernel.outputscale = torch.full((dims,), float(outputscale))

    @property
    def lengthscale(self) -> torch.Tensor:
        """Lengthscales ℓ (D,) in seconds."""
        return self.kernel.base_kernel.lengthscale.reshape(-1)

    @property
    def outputscale(self) -> torch.Tensor:
        """Variances σ² (D,)."""
        return self.kernel.outputscale.reshape(-1)

    def sde(self):
        """(F, P∞), each (D, s, s) float64."""
        return ss.matern_sde(self.nu, self.lengthscale.double(), self.outputscale.double())

    def discretize(self, dt_s: torch.Tensor):
        """(A, Q), each (..., D, s, s) float64, for steps Δt (...,) in seconds."""
        F, Pinf = self.sde()
        return ss.discretize_stationary(F, Pinf, dt_s)


@dataclasses.dataclass
class GPConfig(ModelConfig):
    """GP hyper-parameters: Matérn smoothness, initial kernel values and the extra hyper-parameter fit."""

    nu: float = 1.5  # Matérn smoothness: 0.5, 1.5 or 2.5 (state size 1, 2, 3)
    lengthscale_s: float = 0.0  # initial lengthscale; 0 = 10 ticks of the clock's nominal rate (1 s if unknown)
    outputscale: float = 1.0  # initial prior variance, normalized target units²
    target_noise: float = 1e-2  # initial variance of the target around the latent GP, normalized units²
    min_meas_var: float = 1e-4  # floor of the encoder's per-tick measurement variance
    detector_weight: float | None = None  # weight of the per-tick measurement NLL; None: 1 with image inputs, else 0
    extra_steps: int = 50  # Adam steps on the hyper-parameters alone in fit_extra (0: none)
    extra_lr: float = 0.05

    def __post_init__(self):
        super().__post_init__()
        if all(abs(self.nu - k) > 1e-9 for k in ss.NU_ORDERS):
            raise ConfigError(f"GPConfig: nu must be one of {sorted(ss.NU_ORDERS)}, got {self.nu}.")
        for name in ("outputscale", "target_noise", "min_meas_var", "extra_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"GPConfig: {name} must be > 0, got {getattr(self, name)}.")
        if self.lengthscale_s < 0 or self.extra_steps < 0 or (self.detector_weight or 0.0) < 0:
            raise ConfigError(f"GPConfig: lengthscale_s, extra_steps and detector_weight must be >= 0, got {self.lengthscale_s}, {self.extra_steps}, {self.detector_weight}.")


@register_model("gp", GPConfig)
class GPModel(SequenceModel):
    """TickEncoder -> per-tick measurement z_t (D,) with variance r_t (D,) -> causal Matérn GP filter.

    Per output dimension d the latent f_d(t) ~ GP(0, σ_d² Matérn_ν(ℓ_d)) in normalized target units;
    the encoder observes it as z_t,d = f_d(t) + N(0, r_t,d) (heteroscedastic: r = softplus(·) + floor),
    and the target is y_t,d = f_d(t) + N(0, η_d) (η: the GaussianLikelihood noise). At each tick the
    state-space filter (exact, see `statespace`) gives p(f(t) | z_1..z_t) = N(m, P[0, 0]); the
    prediction is mean m, variance P[0, 0] + η. Training maximizes Σ_t log p(y_t | z_1..z_t), the
    filtering (prediction-error) likelihood, end to end through encoder, kernels and noise, plus
    `detector_weight` × Σ_t log N(y_t; z_t, r_t): without that term the filter can settle early on
    trusting its prior (large r, Kalman gain ≈ 0), which starves a frame encoder of gradient. By
    default it is on for image inputs only: on vector inputs it pulls r_t towards the per-tick error
    and costs a few percent of optimality within small budgets.
    State: {"m": (B, D, s), "P": (B, D, s, s)} float64, starting at the stationary prior (0, P∞).
    Twin (`memoryless=True`): each tick is the stationary prior updated with that tick's z_t alone, no
    temporal correlation: mean σ² z / (σ² + r), variance σ² r / (σ² + r) + η; training and the
    hyper-parameter fit see the same (the lengthscale then plays no part).
    """

    target_kinds = ("vector", "scalar")  # continuous targets only

    def __init__(self, config: GPConfig, streams, normalization):
        type(self).check_streams(config, streams)
        super().__init__(config, streams, normalization)
        d, h = self.target_dim, config.hidden
        self.encoder = TickEncoder(config.inputs, streams, normalization, config.packed, h, config.frame_channels)
        self.head = PredictionHead(h, d, False, min_var=config.min_meas_var)
        ell = config.lengthscale_s or self._default_lengthscale_s(streams)
        self.prior = MaternPrior(config.nu, d, ell, config.outputscale)
        self.likelihood = gpytorch.likelihoods.GaussianLikelihood(
            batch_shape=torch.Size([d]), noise_constraint=gpytorch.constraints.GreaterThan(1e-6)
        )
        self.likelihood.noise = torch.full((d, 1), float(config.target_noise))
        self._constants_cache: tuple | None = None  # (key, constants), see `_constants`

    @property
    def detector_weight(self) -> float:
        """The configured weight, or 1 when an input is an image stream and 0 otherwise."""
        if self.config.detector_weight is not None:
            return float(self.config.detector_weight)
        return 1.0 if any(self.streams[s].kind == "image" for s in self.config.inputs) else 0.0

    def _default_lengthscale_s(self, streams) -> float:
        rate = self.config.rate_hz or streams[self.config.clock or self.config.target].rate_hz
        return 10.0 / rate if rate and math.isfinite(rate) and rate > 0 else 1.0

    def _measure(self, x: dict[str, torch.Tensor]):
        """Encoder measurement z and its variance r, each (..., D) float64, normalized units."""
        out = self.head(self.encoder(x))
        return out["mean"].double(), out["var"].double()

    def _constants(self) -> tuple:
        """(F, P∞) (D, s, s), `nilpotent_part(F)` and the target noise η (D,), float64, from the hyper-parameters.

        Without gradients (streaming, evaluation) they are kept while the hyper-parameters stay the
        same storage at the same version, so a step skips gpytorch's constraint transforms and the SDE
        assembly (about a third of a sensor-only step).
        """
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._compute_constants()
        # the current tensors (load_state_dict(assign=True) may replace them), read from the modules'
        # parameter dicts: gpytorch's attribute lookup costs ~15 µs here, a third of the saving
        kernel = self.prior._modules["kernel"]
        params = (kernel._parameters["raw_outputscale"], kernel._modules["base_kernel"]._parameters["raw_lengthscale"],
                  self.likelihood._modules["noise_covar"]._parameters["raw_noise"])
        if any(p.is_inference() for p in params):  # inference tensors keep no version: no cache
            return self._compute_constants()
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._constants_cache is None or self._constants_cache[0] != key:
            self._constants_cache = (key, self._compute_constants())
        return self._constants_cache[1]

    def _compute_constants(self) -> tuple:
        F, Pinf = self.prior.sde()
        return F, Pinf, ss.nilpotent_part(F), self.likelihood.noise.reshape(-1).double()

    def _output(self, m: torch.Tensor, P: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"mean": m[..., 0].float(), "var": (P[..., 0, 0] + noise).float()}
        return self.denormalize(out)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Filtered predictions for every tick of windows (B, T, ...), each window from the prior."""
        z, r = self._measure(batch)  # (B, T, D)
        return self._filter(z, r, batch["dt_s"])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Filtering NLL of the target plus the weighted per-tick measurement NLL (normalized units)."""
        z, r = self._measure(batch)  # (B, T, D)
        out = self._filter(z, r, batch["dt_s"])
        valid = batch["target_valid"] & ~batch["tick_is_pad"]
        y = (batch["target"] - self.target_mean) / self.target_std
        mu = (out["mean"] - self.target_mean) / self.target_std
        var = out["var"] / self.target_std**2
        filt = 0.5 * (torch.log(var) + (y - mu) ** 2 / var)
        det = 0.5 * (torch.log(r) + (y.double() - z) ** 2 / r)
        return filt[valid].mean() + self.detector_weight * det[valid].mean().float()

    def _filter(self, z: torch.Tensor, r: torch.Tensor, dt_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """Filtered outputs (B, T, D) of windows (B, T, D): dense over short windows, the recursion over long ones."""
        if z.shape[1] <= DENSE_MAX_TICKS:
            return self._filter_dense(z, r, dt_s)
        return self._filter_recursive(z, r, dt_s)

    def _filter_dense(self, z: torch.Tensor, r: torch.Tensor, dt_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """The recursion's filtering distributions p(f(t_k) | z_1..z_k) from one Cholesky factor per window.

        With the window's tick times t_k (t_1 = 0, then the cumulative dt_s), K = σ² Matérn(|t_i − t_j|)
        and L the Cholesky factor of K + diag(r), the leading k×k block of L factors the first k
        measurements' covariance; so with w = L⁻¹ z and A = L⁻¹ K, the filtered mean at k is
        Σ_{i≤k} A[i, k] w[i] and its variance σ² − Σ_{i≤k} A[i, k]²: the same numbers as the Kalman
        recursion (to float64 rounding), in a handful of batched ops instead of T sequential steps.
        """
        F, Pinf, parts, noise = self._constants()
        sig2 = Pinf[:, 0, 0]  # (D,)
        lam = -parts[0].reshape(-1)  # (D,) λ = sqrt(2ν) / ℓ
        dt = dt_s.to(torch.float64).clamp(min=0.0)
        t = torch.cumsum(torch.cat([torch.zeros_like(dt[:, :1]), dt[:, 1:]], 1), 1)  # (B, T)
        x = lam[None, :, None, None] * (t[:, :, None] - t[:, None, :]).abs()[:, None]  # (B, D, T, T)
        s = self.prior.state_size
        if s == 1:
            poly = torch.ones_like(x)
        elif s == 2:
            poly = 1.0 + x
        else:
            poly = 1.0 + x + x * x / 3.0
        K = sig2[None, :, None, None] * poly * torch.exp(-x)
        zt, rt = z.transpose(1, 2), r.transpose(1, 2)  # (B, D, T)
        L = torch.linalg.cholesky(K + torch.diag_embed(rt))
        w = torch.linalg.solve_triangular(L, zt.unsqueeze(-1), upper=False)  # (B, D, T, 1)
        A = torch.triu(torch.linalg.solve_triangular(L, K, upper=False))  # A[i, k], i <= k
        mean = (A * w).sum(-2)  # (B, D, T)
        var = (sig2[None, :, None] - (A * A).sum(-2)).clamp(min=0.0)
        out = {"mean": mean.transpose(1, 2).float(), "var": (var.transpose(1, 2) + noise).float()}
        return self.denormalize(out)

    def _filter_recursive(self, z: torch.Tensor, r: torch.Tensor, dt_s: torch.Tensor) -> dict[str, torch.Tensor]:
        F, Pinf, parts, noise = self._constants()
        A = ss.stationary_transition(F, dt_s, parts)  # (B, T, D, s, s)
        state = self.init_state(z.shape[0])
        m, P = state["m"], state["P"]
        ms, Ps = [], []
        for t in range(z.shape[1]):
            m, P = ss.predict_stationary(m, P, A[:, t], Pinf)
            m, P, _ = ss.update_first(m, P, z[:, t], r[:, t], loglik=False)
            ms.append(m)
            Ps.append(P)
        return self._output(torch.stack(ms, 1), torch.stack(Ps, 1), noise)  # (B, T, D)

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """Stationary prior: m = 0 (B, D, s), P = P∞ (B, D, s, s), float64."""
        Pinf = self._constants()[1]
        d, s = Pinf.shape[0], Pinf.shape[-1]
        m = torch.zeros(batch_size, d, s, dtype=torch.float64, device=Pinf.device)
        return {"m": m, "P": Pinf.unsqueeze(0).expand(batch_size, d, s, s).clone()}

    def step(self, tick: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        """One tick (B, ...): predict over the tick's dt_s, update with z_t -> (out (B, D), state)."""
        z, r = self._measure(tick)  # (B, D)
        F, Pinf, parts, noise = self._constants()
        A = ss.stationary_transition(F, tick["dt_s"], parts)  # (B, D, s, s)
        m, P = ss.predict_stationary(state["m"], state["P"], A, Pinf)
        m, P, _ = ss.update_first(m, P, z, r, loglik=False)
        return self._output(m, P, noise), {"m": m, "P": P}

    def hyperparameters(self) -> list[nn.Parameter]:
        """The GP's own parameters: raw lengthscale, outputscale and target noise."""
        return list(self.prior.parameters()) + list(self.likelihood.parameters())

    def fit_extra(self, train_dataset, log=print, val_dataset=None) -> None:
        """Fit the kernel hyper-parameters and target noise alone (encoder frozen) by the filtering likelihood."""
        steps = self.config.extra_steps
        if steps == 0:
            return
        from seqsense.dataset import make_loader

        loader = make_loader(train_dataset, self.config.batch_size, shuffle=True, seed=self.config.seed)
        params = self.hyperparameters()
        opt = torch.optim.Adam(params, lr=self.config.extra_lr)
        frozen = [p for p in self.parameters() if p.requires_grad and all(p is not q for q in params)]
        for p in frozen:
            p.requires_grad_(False)
        self.train()
        try:
            done, first, last = 0, None, None
            while done < steps:
                for batch in loader:
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    loss = self.loss(batch)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    first = float(loss.detach()) if first is None else first
                    last, done = float(loss.detach()), done + 1
                    if done >= steps:
                        break
        finally:
            for p in frozen:
                p.requires_grad_(True)
        log(f"gp fit_extra: filtering NLL {first:.4f} -> {last:.4f}; lengthscale_s {self.prior.lengthscale.tolist()}, "
            f"outputscale {self.prior.outputscale.tolist()}")


def fit_matern_hyperparameters(t_s, y, nu: float = 1.5, steps: int = 200, lr: float = 0.05, lengthscale_s: float = 1.0, outputscale: float = 1.0, noise: float = 0.1):
    """Type-II ML fit of (lengthscale, outputscale, noise) to series y (N,) or (K, N) by the state-space marginal likelihood.

    Returns a dict with the fitted values and `losses` (negative log marginal likelihood per step).
    """
    t = torch.as_tensor(np.asarray(t_s), dtype=torch.float64)
    yy = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if t.ndim != 1 or yy.ndim not in (1, 2) or yy.shape[-1] != t.shape[0]:
        raise ValueError(f"fit_matern_hyperparameters: t_s must be (N,) and y (N,) or (K, N), got {tuple(t.shape)} and {tuple(yy.shape)}.")
    prior = MaternPrior(nu, 1, lengthscale_s, outputscale).double()
    lik = gpytorch.likelihoods.GaussianLikelihood().double()
    lik.noise = noise
    opt = torch.optim.Adam(list(prior.parameters()) + list(lik.parameters()), lr=lr)
    losses = []
    for _ in range(steps):
        _, _, ll = ss.matern_filter(t, yy, nu, prior.lengthscale, prior.outputscale, lik.noise)
        loss = -ll
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        return {"lengthscale_s": float(prior.lengthscale), "outputscale": float(prior.outputscale), "noise": float(lik.noise), "losses": losses}


class DenseMaternGP(gpytorch.models.ExactGP):
    """gpytorch's exact (dense) GP with zero mean and ScaleKernel(MaternKernel(nu)).

    The reference the state-space filter is checked against, and the cost it avoids: its posterior
    (or `get_fantasy_model`) grows with the history, the filter's step does not.
    """

    def __init__(self, x, y, likelihood, nu: float):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=nu))

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class _SVGP(gpytorch.models.ApproximateGP):
    """Sparse variational GP over time: M inducing times, Cholesky variational q(u), Matérn kernel."""

    def __init__(self, inducing_t: torch.Tensor, nu: float):
        dist = gpytorch.variational.CholeskyVariationalDistribution(inducing_t.shape[0])
        strategy = gpytorch.variational.VariationalStrategy(self, inducing_t, dist, learn_inducing_locations=True)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=nu))

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def fit_svgp(t_s, y, t_query=None, nu: float = 1.5, num_inducing: int = 128, steps: int = 400, batch_size: int = 1024, lr: float = 0.02, lengthscale_s: float | None = None, seed: int = 0):
    """Fit an SVGP (variational ELBO, minibatches) to a long series; posterior mean/var (Q,) of f at t_query.

    Returns (mean, var, info) as numpy arrays and a dict of fitted hyper-parameters and ELBO trace.
    """
    t = np.asarray(t_s, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if t.shape != y.shape or len(t) < 2:
        raise ValueError(f"fit_svgp: t_s and y must be (N,) with N >= 2, got {t.shape} and {y.shape}.")
    if num_inducing < 2 or steps < 1:
        raise ValueError(f"fit_svgp: num_inducing must be >= 2 and steps >= 1, got {num_inducing}, {steps}.")
    gen = torch.Generator().manual_seed(seed)
    t0, y_mean, y_std = t[0], y.mean(), y.std() or 1.0
    x = torch.as_tensor(t - t0).unsqueeze(-1)  # (N, 1) seconds from the start
    yn = torch.as_tensor((y - y_mean) / y_std)
    span = float(x[-1, 0] - x[0, 0]) or 1.0
    model = _SVGP(torch.linspace(0.0, span, num_inducing, dtype=torch.float64).unsqueeze(-1), nu).double()
    model.covar_module.base_kernel.lengthscale = lengthscale_s or 2.0 * span / num_inducing
    lik = gpytorch.likelihoods.GaussianLikelihood().double()
    lik.noise = 0.1
    elbo = gpytorch.mlls.VariationalELBO(lik, model, num_data=len(yn))
    opt = torch.optim.Adam(list(model.parameters()) + list(lik.parameters()), lr=lr)
    model.train()
    lik.train()
    trace = []
    for _ in range(steps):
        idx = torch.randint(0, len(yn), (min(batch_size, len(yn)),), generator=gen)
        loss = -elbo(model(x[idx]), yn[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        trace.append(-float(loss.detach()))
    model.eval()
    lik.eval()
    tq = t if t_query is None else np.asarray(t_query, np.float64).reshape(-1)
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        post = model(torch.as_tensor(tq - t0).unsqueeze(-1))
        mean = post.mean.numpy() * y_std + y_mean
        var = post.variance.numpy() * y_std**2
        info = {
            "lengthscale_s": float(model.covar_module.base_kernel.lengthscale),
            "outputscale": float(model.covar_module.outputscale) * y_std**2,
            "noise": float(lik.noise) * y_std**2,
            "elbo": trace,
        }
    return mean, var, info
