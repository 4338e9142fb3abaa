"""System identification: a linear-Gaussian state-space model fitted to measurement sequences by EM.

Shape letters: N sequences (episodes), T ticks (the longest sequence; shorter ones are padded), n state
and m measurement size, L lags.

Model, parameters shared by all sequences, one step per tick:

    x_1 ~ N(x0, P0),   x_k = A x_{k-1} + w_k, w_k ~ N(0, Q),   z_k = H x_k + v_k, v_k ~ N(0, R),

with measurements that may be missing (`valid` False). The state is identified only up to an invertible
map x -> T x; the model has no intercept, so centre the measurements first.

Expectation–maximization (Shumway & Stoffer 1982; Ghahramani & Hinton 1996):
- E-step: the Kalman filter (log p(z) by the prediction-error decomposition) and the Rauch–Tung–Striebel
  smoother give m̂_k = E[x_k | z], P̂_k = Cov[x_k | z] and the lag-one cross covariance
  Cov[x_k, x_{k-1} | z] = P̂_k J_{k-1}ᵀ, with the smoother gain J_{k-1} = P_{k-1} Aᵀ (P⁻_k)⁻¹.
- M-step, from the expected sufficient statistics summed over sequences and ticks,
      S11 = Σ_{k≥2} E[x_k x_kᵀ],  S10 = Σ_{k≥2} E[x_k x_{k-1}ᵀ],  S00 = Σ_{k≥2} E[x_{k-1} x_{k-1}ᵀ],
      Sxx = Σ_{k obs} E[x_k x_kᵀ],  Szx = Σ_{k obs} z_k m̂_kᵀ,  Szz = Σ_{k obs} z_k z_kᵀ:
      A = S10 S00⁻¹,  Q = (S11 − A S10ᵀ) / N_trans,  H = Szx Sxx⁻¹,  R = (Szz − H Szxᵀ) / N_obs,
      x0 = mean_i m̂_1,  P0 = mean_i (P̂_1 + (m̂_1 − x0)(m̂_1 − x0)ᵀ).
  Each is the exact maximizer of the expected complete-data log-likelihood, so log p(z) never
  decreases from one iteration to the next (up to a tiny eigenvalue floor on Q, R, P0).
- Initialization, deterministic: canonical variate analysis of lagged measurements (a subspace method,
  Larimore 1990). With past p_k = [z_{k-1}; …; z_{k-L}], future f_k = [z_k; …; z_{k+L-1}] and
  Σ_pp = L_p L_pᵀ, Σ_ff = L_f L_fᵀ, the SVD L_f⁻¹ Σ_fp L_p⁻ᵀ = U S Vᵀ gives the state estimate
  x̂_k = S_n^{1/2} V_nᵀ L_p⁻¹ p_k (white noise drops out of Σ_fp); A, Q and H, R are then least-squares
  fits of x̂_{k+1} on x̂_k and of z_k on x̂_k. A horizon L of about 2n ticks starts EM near a good
  optimum; L = n/m + 1 (the least that identifies n states) often leaves it in a poorer one.
Measurements are scaled to unit RMS per dimension inside the fit; results are in the caller's units.
Tiny matrices and a loop over ticks: numpy float64, whose per-call overhead is a fraction of torch's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass
class LDS:
    """The parameters of a linear-Gaussian state-space model, float64 arrays."""

    A: np.ndarray  # (n, n)
    Q: np.ndarray  # (n, n)
    H: np.ndarray  # (m, n)
    R: np.ndarray  # (m, m)
    x0: np.ndarray  # (n,)
    P0: np.ndarray  # (n, n)

    def scaled(self, s: np.ndarray) -> "LDS":
        """The same model for measurements multiplied by s (m,): H -> diag(s) H, R -> diag(s) R diag(s)."""
        return dataclasses.replace(self, H=s[:, None] * self.H, R=s[:, None] * self.R * s[None, :])


@dataclasses.dataclass
class EMResult:
    """A fitted model, its log-likelihood trace and the smoothed states under it (padded to T)."""

    lds: LDS
    loglik: list[float]  # log p(z | θ_i), i = 0 (initialization) … iterations run
    means: np.ndarray  # (N, T, n) E[x_k | z] under `lds`
    covs: np.ndarray  # (N, T, n, n) Cov[x_k | z]


def pad_sequences(zs, valid=None):
    """Sequences (T_i, m) and masks (T_i,) -> z (N, T, m) float64 (0 where unusable), obs (N, T), live (N, T).

    A measurement is usable where `valid` is True and all its values are finite; `live` marks the
    ticks inside each sequence.
    """
    zs = [np.asarray(z, np.float64).reshape(len(z), -1) for z in zs]
    if not zs or any(len(z) == 0 for z in zs):
        raise ValueError("fit_lds_em: need at least one sequence, each with at least one tick.")
    N, T, m = len(zs), max(len(z) for z in zs), zs[0].shape[1]
    z = np.zeros((N, T, m))
    obs = np.zeros((N, T), bool)
    live = np.zeros((N, T), bool)
    for i, zi in enumerate(zs):
        if zi.shape[1] != m:
            raise ValueError(f"fit_lds_em: sequence {i} has {zi.shape[1]} measurement values per tick, sequence 0 has {m}.")
        ok = np.ones(len(zi), bool) if valid is None else np.asarray(valid[i], bool).reshape(-1)
        if len(ok) != len(zi):
            raise ValueError(f"fit_lds_em: sequence {i} has {len(zi)} ticks but its valid mask has {len(ok)}.")
        ok = ok & np.isfinite(zi).all(-1)
        z[i, : len(zi)] = np.where(ok[:, None], zi, 0.0)
        obs[i, : len(zi)] = ok
        live[i, : len(zi)] = True
    return z, obs, live


def _sym(M: np.ndarray) -> np.ndarray:
    return 0.5 * (M + np.swapaxes(M, -1, -2))


def kalman_filter(lds: LDS, z: np.ndarray, obs: np.ndarray):
    """Filter z (N, T, m): predicted and filtered means (N, T, n) and covariances, and log p(z)."""
    N, T, m = z.shape
    n = lds.A.shape[0]
    mp, mf = np.empty((N, T, n)), np.empty((N, T, n))
    Pp, Pf = np.empty((N, T, n, n)), np.empty((N, T, n, n))
    mk, Pk, ll = np.broadcast_to(lds.x0, (N, n)), np.broadcast_to(lds.P0, (N, n, n)), 0.0
    for k in range(T):
        if k > 0:
            mk, Pk = mk @ lds.A.T, _sym(lds.A @ Pk @ lds.A.T + lds.Q)
        mp[:, k], Pp[:, k] = mk, Pk
        HP = lds.H @ Pk  # (N, m, n)
        S = _sym(HP @ lds.H.T + lds.R)  # (N, m, m)
        v = z[:, k] - mk @ lds.H.T  # (N, m)
        sol = np.linalg.solve(S, np.concatenate([HP, v[..., None]], -1))  # S⁻¹ [H P⁻, v]
        ok = obs[:, k]
        mk = mk + ok[:, None] * np.einsum("nmi,nm->ni", HP, sol[..., -1])  # m⁻ + P⁻ Hᵀ S⁻¹ v
        Pk = _sym(Pk - ok[:, None, None] * (np.swapaxes(HP, -1, -2) @ sol[..., :-1]))  # P⁻ − P⁻ Hᵀ S⁻¹ H P⁻
        mf[:, k], Pf[:, k] = mk, Pk
        logdet = np.linalg.slogdet(S)[1]
        ll += float((ok * -0.5 * (m * LOG_2PI + logdet + (v * sol[..., -1]).sum(-1))).sum())
    return mp, Pp, mf, Pf, ll


def rts_smoother(lds: LDS, z: np.ndarray, obs: np.ndarray):
    """Kalman filter + RTS smoother: means (N, T, n), covs (N, T, n, n), lag-one cross covs (N, T-1, n, n), log p(z).

    cross[:, k] = Cov[x_{k+1}, x_k | z]. Ticks past a sequence's end are unobserved latent steps, which
    leave the smoothed moments of the observed ticks and log p(z) unchanged.
    """
    mp, Pp, ms, Ps, ll = kalman_filter(lds, z, obs)
    J = np.swapaxes(np.linalg.solve(Pp[:, 1:], lds.A @ Ps[:, :-1]), -1, -2)  # (N, T-1, n, n): P_k Aᵀ (P⁻_{k+1})⁻¹
    for k in range(z.shape[1] - 2, -1, -1):  # ms/Ps hold the filtered moments until overwritten
        Jk = J[:, k]
        ms[:, k] += np.einsum("nij,nj->ni", Jk, ms[:, k + 1] - mp[:, k + 1])
        Ps[:, k] = _sym(Ps[:, k] + Jk @ (Ps[:, k + 1] - Pp[:, k + 1]) @ np.swapaxes(Jk, -1, -2))
    cross = Ps[:, 1:] @ np.swapaxes(J, -1, -2)  # Cov[x_{k+1}, x_k | z] = P̂_{k+1} J_kᵀ
    return ms, Ps, cross, ll


def _psd_floor(M: np.ndarray, eps: float) -> np.ndarray:
    """Symmetric M with eigenvalues raised to at least eps (returned unchanged when already above)."""
    M = _sym(M)
    w, V = np.linalg.eigh(M)
    if w.min() >= eps:
        return M
    return (V * np.maximum(w, eps)) @ V.T


def m_step(z, obs, live, means, covs, cross, eps: float) -> LDS:
    """Closed-form A, Q, H, R, x0, P0 maximizing the expected complete-data log-likelihood."""
    Exx = covs + means[..., :, None] * means[..., None, :]  # (N, T, n, n) E[x_k x_kᵀ]
    w = live[:, 1:].astype(np.float64)  # transitions into live ticks
    S11 = np.einsum("nt,ntij->ij", w, Exx[:, 1:])
    S00 = np.einsum("nt,ntij->ij", w, Exx[:, :-1])
    S10 = np.einsum("nt,ntij->ij", w, cross) + np.einsum("nt,nti,ntj->ij", w, means[:, 1:], means[:, :-1])
    A = np.linalg.solve(S00, S10.T).T  # S10 S00⁻¹ (S00 symmetric)
    Q = (S11 - A @ S10.T) / max(w.sum(), 1.0)
    o = obs.astype(np.float64)
    Sxx = np.einsum("nt,ntij->ij", o, Exx)
    Szx = np.einsum("nt,nti,ntj->ij", o, z, means)
    Szz = np.einsum("nt,nti,ntj->ij", o, z, z)
    H = np.linalg.solve(Sxx, Szx.T).T
    R = (Szz - H @ Szx.T) / max(o.sum(), 1.0)
    x0 = means[:, 0].mean(0)
    d = means[:, 0] - x0
    P0 = (covs[:, 0] + d[:, :, None] * d[:, None, :]).mean(0)
    return LDS(A, _psd_floor(Q, eps), H, _psd_floor(R, eps), x0, _psd_floor(P0, eps))


def _lagged(z: np.ndarray, obs: np.ndarray, lags: int):
    """Stacked past windows (N, T, L m) with p[:, k] = [z_{k-1}; …; z_{k-L}], future windows f[:, k] = [z_k; …; z_{k+L-1}],
    and where each is fully observed (N, T)."""
    N, T, m = z.shape
    past, fut = np.zeros((N, T, lags * m)), np.zeros((N, T, lags * m))
    past_ok, fut_ok = np.zeros((N, T), bool), np.zeros((N, T), bool)
    if T > lags:
        past[:, lags:] = np.concatenate([z[:, lags - j : T - j] for j in range(1, lags + 1)], -1)
        past_ok[:, lags:] = np.stack([obs[:, lags - j : T - j] for j in range(1, lags + 1)], -1).all(-1)
    if T >= lags:
        fut[:, : T - lags + 1] = np.concatenate([z[:, j : T - lags + 1 + j] for j in range(lags)], -1)
        fut_ok[:, : T - lags + 1] = np.stack([obs[:, j : T - lags + 1 + j] for j in range(lags)], -1).all(-1)
    return past, fut, past_ok, fut_ok


def _lstsq_fit(X: np.ndarray, Y: np.ndarray, eps: float):
    """Y ≈ X Bᵀ: B and the residual covariance (floored)."""
    B = np.linalg.lstsq(X, Y, rcond=None)[0].T
    E = Y - X @ B.T
    return B, _psd_floor(E.T @ E / len(E), eps)


def subspace_init(z: np.ndarray, obs: np.ndarray, state_dim: int, lags: int, eps: float = 1e-6) -> LDS:
    """A deterministic first model by canonical variate analysis of lagged measurements (see the module doc)."""
    m = z.shape[-1]
    past, fut, past_ok, fut_ok = _lagged(z, obs, lags)
    both = past_ok & fut_ok
    need = 2 * lags * m + state_dim
    if both.sum() < need:
        raise ValueError(
            f"fit_lds_em: only {int(both.sum())} windows of {2 * lags} consecutive valid measurements; need at least "
            f"{need} to initialize a state of size {state_dim} with {lags} lags. Give longer or more sequences, or fewer lags."
        )
    p, f = past[both], fut[both]
    eye = np.eye(lags * m)
    Lp = np.linalg.cholesky(p.T @ p / len(p) + eps * eye)
    Lf = np.linalg.cholesky(f.T @ f / len(f) + eps * eye)
    M = np.linalg.solve(Lf, np.linalg.solve(Lp, (f.T @ p / len(p)).T).T)  # Lf⁻¹ Σfp Lp⁻ᵀ
    _, S, Vt = np.linalg.svd(M)
    proj = np.linalg.solve(Lp.T, Vt[:state_dim].T) * np.sqrt(np.maximum(S[:state_dim], eps))  # Lp⁻ᵀ V_n S_n^{1/2}
    xh = past @ proj  # (N, T, n)
    pair = past_ok[:, 1:] & past_ok[:, :-1]
    A, Q = _lstsq_fit(xh[:, :-1][pair], xh[:, 1:][pair], eps)
    seen = past_ok & obs
    H, R = _lstsq_fit(xh[seen], z[seen], eps)
    states = xh[past_ok]
    x0 = states.mean(0)
    P0 = _psd_floor(np.cov(states.T, bias=True).reshape(state_dim, state_dim) + Q, eps)
    return LDS(A, Q, H, R, x0, P0)


def fit_lds_em(zs, valid=None, state_dim: int = 0, iters: int = 50, lags: int = 0, tol: float = 1e-7, eps: float = 1e-9) -> EMResult:
    """Fit A, Q, H, R, x0, P0 to measurement sequences by EM from a subspace initialization.

    zs: sequences (T_i, m) (numpy or torch on the CPU); valid: optional (T_i,) masks of usable measurements;
    state_dim: n (0 = 2 m); iters: EM iterations at most; lags: L of the initialization (0 = 2 n, fewer
    when the sequences are short); tol: stop once an iteration gains less than tol nats per measured
    value. Deterministic.
    """
    z, obs, live = pad_sequences(zs, valid)
    m = z.shape[-1]
    n = state_dim or 2 * m
    if state_dim < 0 or iters < 0 or lags < 0:
        raise ValueError(f"fit_lds_em: need state_dim >= 0, iters >= 0 and lags >= 0; got {state_dim}, {iters}, {lags}.")
    if not obs.any():
        raise ValueError("fit_lds_em: no valid measurement in any sequence.")
    scale = np.sqrt((z[obs] ** 2).mean(0)).clip(min=1e-12)  # (m,) RMS per dimension
    zn = z / scale
    lds = subspace_init(zn, obs, n, lags or _auto_lags(obs, n, m))
    log_det_scale = int(obs.sum()) * float(np.log(scale).sum())  # log p(z) = log p(z / s) − N_obs Σ log s
    values = int(obs.sum()) * m
    trace: list[float] = []
    for i in range(iters + 1):
        means, covs, cross, ll = rts_smoother(lds, zn, obs)
        trace.append(ll - log_det_scale)
        if i == iters or (i > 0 and trace[-1] - trace[-2] < tol * values):
            break
        lds = m_step(zn, obs, live, means, covs, cross, eps)
    return EMResult(lds.scaled(scale), trace, means, covs)


def _auto_lags(obs: np.ndarray, n: int, m: int) -> int:
    """2 n lags, fewer (down to the n/m + 1 that identify n states) while too few lag windows fit in the data."""
    least = math.ceil(n / m) + 1
    for lags in range(max(2 * n, least), least - 1, -1):
        windows = int(np.maximum(obs.sum(1) - 2 * lags + 1, 0).sum())  # roughly, for fully observed sequences
        if windows >= 4 * (2 * lags * m + n):
            return lags
    return least


def fit_readout(result: EMResult, ys, valid=None):
    """Least-squares read-out y ≈ G x + b of the smoothed states: G (D, n), b (D,) and the variance x leaves in y (D,).

    ys: sequences (T_i, D) aligned with the ones `result` was fitted on; valid: optional (T_i,) masks.
    If y_k = G x_k + b + ε_k, the smoothing error x_k − m̂_k is uncorrelated with m̂_k, so least squares
    of y on m̂ is consistent for (G, b), and its residual variance is diag(G P̂_k Gᵀ) + var ε; hence
    var ε = mean residual² − mean diag(G P̂_k Gᵀ), floored at 0.
    """
    y, ok, _ = pad_sequences(ys, valid)
    N, T = result.means.shape[:2]
    if y.shape[:2] != (N, T) or not ok.any():
        raise ValueError(f"fit_readout: need targets for the {N} fitted sequences of up to {T} ticks, got {y.shape[:2]}"
                         f"{'' if ok.any() else ' with no valid value'}.")
    X = np.concatenate([result.means[ok], np.ones((int(ok.sum()), 1))], -1)  # (K, n + 1)
    Gb = np.linalg.lstsq(X, y[ok], rcond=None)[0].T  # (D, n + 1)
    G, b = Gb[:, :-1], Gb[:, -1]
    resid = ((y[ok] - X @ Gb.T) ** 2).mean(0)
    smoothing_var = np.einsum("dn,knj,dj->d", G, result.covs[ok], G) / ok.sum()  # mean diag(G P̂ Gᵀ)
    return G, b, np.maximum(resid - smoothing_var, 0.0)
