"""Linear-Gaussian state-space building blocks shared by the `gp` and `kalman` families.

Shape letters: B batch, D independent output dimensions, s state size of one Matérn SDE, n state and
m measurement size of a general linear system.

**Matérn kernels as linear SDEs** (Hartikainen & Särkkä 2010). A Matérn kernel of smoothness
ν = p + 1/2, lengthscale ℓ and variance σ² is the covariance of the first component of the state
x = (f, f', …, f^(p)) ∈ R^s, s = p + 1, of the SDE

    dx = F x dt + L dW,   F = companion matrix of (d/dt + λ)^s,   λ = sqrt(2ν) / ℓ,

    ν=1/2: F = [−λ],                                P∞ = [σ²]
    ν=3/2: F = [[0, 1], [−λ², −2λ]],                P∞ = diag(σ², λ²σ²)
    ν=5/2: F = [[0, 1, 0], [0, 0, 1], [−λ³, −3λ², −3λ]],
           P∞ = [[σ², 0, −κ], [0, κ, 0], [−κ, 0, λ⁴σ²]],   κ = λ²σ²/3

with P∞ the stationary covariance (F P∞ + P∞ Fᵀ + L q Lᵀ = 0). Over a time step Δt ≥ 0 the exact
discretization is

    A(Δt) = expm(F Δt),     Q(Δt) = P∞ − A P∞ Aᵀ,

(closed form below), so irregular sampling costs nothing special, and a Kalman filter over the observations
z_k = f(t_k) + ε_k, ε_k ~ N(0, r_k), started from the stationary prior N(0, P∞), returns exactly the
dense GP posterior of f(t_k) given z_1..z_k, at O(s³) cost per step whatever the history length.

**Kalman recursion** (one step, measurement z = H x + v, v ~ N(0, R)):

    predict:  m⁻ = A m,  P⁻ = A P Aᵀ + Q
    update:   v = z − H m⁻,  S = H P⁻ Hᵀ + R,  K = P⁻ Hᵀ S⁻¹,
              m = m⁻ + K v,  P = (I − K H) P⁻ (I − K H)ᵀ + K R Kᵀ   (Joseph form)
    log-lik:  log N(v; 0, S)   (summed over steps: the prediction-error decomposition of log p(z_1:k))

ONNX has no Cholesky op: `update(..., exportable=True)` (or `update_exportable`) runs the same maths with
the factor and the solves unrolled over the static measurement size m, for a caller tracing a graph
(the `kalman` filter core picks it while `torch.onnx.export` traces).
"""

from __future__ import annotations

import math

import torch

NU_ORDERS = {0.5: 1, 1.5: 2, 2.5: 3}  # Matérn ν -> state size s
LOG_2PI = math.log(2.0 * math.pi)


def matern_state_size(nu: float) -> int:
    """State size s of the Matérn-ν SDE (1, 2, 3 for ν = 1/2, 3/2, 5/2)."""
    for k, s in NU_ORDERS.items():
        if abs(float(nu) - k) < 1e-9:
            return s
    raise ValueError(f"Matérn nu must be one of {sorted(NU_ORDERS)}, got {nu}.")


def matern_sde(nu: float, lengthscale: torch.Tensor, outputscale: torch.Tensor):
    """Feedback matrix F (D, s, s) and stationary covariance P∞ (D, s, s) for D Matérn kernels."""
    s = matern_state_size(nu)
    ell = lengthscale.reshape(-1)  # (D,)
    sig2 = outputscale.reshape(-1)  # (D,)
    lam = math.sqrt(2.0 * float(nu)) / ell  # (D,)
    d = ell.shape[0]
    F = torch.zeros(d, s, s, dtype=ell.dtype, device=ell.device)
    for i in range(s - 1):
        F[:, i, i + 1] = 1.0
    for k in range(s):  # last row: -binom(s, k) λ^(s-k) for the coefficient of f^(k)
        F[:, s - 1, k] = -math.comb(s, k) * lam ** (s - k)
    P = torch.zeros_like(F)
    if s == 1:
        P[:, 0, 0] = sig2
    elif s == 2:
        P[:, 0, 0] = sig2
        P[:, 1, 1] = lam**2 * sig2
    else:
        kappa = lam**2 * sig2 / 3.0
        P[:, 0, 0] = sig2
        P[:, 1, 1] = kappa
        P[:, 0, 2] = -kappa
        P[:, 2, 0] = -kappa
        P[:, 2, 2] = lam**4 * sig2
    return F, P


def nilpotent_part(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """−λ (D, 1, 1), the nilpotent N = F + λI (D, s, s) and I (s, s) of a Matérn feedback matrix F (D, s, s)."""
    s = F.shape[-1]
    lam = -F[:, s - 1, s - 1] / s  # the last diagonal entry is −s λ
    eye = torch.eye(s, dtype=F.dtype, device=F.device)
    return -lam[:, None, None], F + lam[:, None, None] * eye, eye


def stationary_transition(F: torch.Tensor, dt_s: torch.Tensor, parts: tuple | None = None) -> torch.Tensor:
    """Exact A = expm(F Δt), (..., D, s, s), for a Matérn F (D, s, s) and steps Δt (...,).

    F's only eigenvalue is −λ (s-fold), so N = F + λI is nilpotent (N^s = 0) and the exponential has
    the closed form A = e^(−λΔt) Σ_{k<s} (N Δt)^k / k!  (no `matrix_exp`, which ONNX lacks).
    `parts` = `nilpotent_part(F)` when the caller keeps it.
    """
    neg_lam, N, eye = parts if parts is not None else nilpotent_part(F)
    dt = dt_s.to(F.dtype).clamp(min=0.0)[..., None, None, None]  # (..., 1, 1, 1)
    A = eye + N * dt
    term = N
    for k in range(2, F.shape[-1]):
        term = term @ N
        A = A + term * (dt**k / math.factorial(k))  # (N Δt)^k / k!
    return torch.exp(neg_lam * dt) * A  # (..., D, s, s)


def discretize_stationary(F: torch.Tensor, Pinf: torch.Tensor, dt_s: torch.Tensor):
    """Exact A = expm(F Δt) and Q = P∞ − A P∞ Aᵀ, each (..., D, s, s), for a Matérn F (D, s, s), Δt (...,)."""
    A = stationary_transition(F, dt_s)
    Q = Pinf - A @ Pinf @ A.transpose(-1, -2)
    return A, 0.5 * (Q + Q.transpose(-1, -2))


def predict(m: torch.Tensor, P: torch.Tensor, A: torch.Tensor, Q: torch.Tensor):
    """Kalman predict for states m (..., n) and covariances P (..., n, n)."""
    m = (A @ m.unsqueeze(-1)).squeeze(-1)
    P = A @ P @ A.transpose(-1, -2) + Q
    return m, 0.5 * (P + P.transpose(-1, -2))


def predict_stationary(m: torch.Tensor, P: torch.Tensor, A: torch.Tensor, Pinf: torch.Tensor):
    """Kalman predict of a stationary model, Q = P∞ − A P∞ Aᵀ folded in: P⁻ = A (P − P∞) Aᵀ + P∞."""
    m = (A @ m.unsqueeze(-1)).squeeze(-1)
    P = A @ (P - Pinf) @ A.transpose(-1, -2) + Pinf
    return m, 0.5 * (P + P.transpose(-1, -2))


def _keep_where_invalid(valid, old, new):
    """(m, P, ll) of an update, with rows where `valid` is False keeping their old state and ll = 0."""
    m_new, P_new, ll = new
    if valid is None:
        return m_new, P_new, ll
    m, P = old
    ok = valid.to(torch.bool)
    return (
        torch.where(ok.unsqueeze(-1), m_new, m),
        torch.where(ok[..., None, None], P_new, P),
        torch.where(ok, ll, torch.zeros_like(ll)),
    )


def update_first(m: torch.Tensor, P: torch.Tensor, z: torch.Tensor, r: torch.Tensor, valid: torch.Tensor | None = None, loglik: bool = True):
    """Kalman update with a scalar measurement z = x[0] + N(0, r) per leading index: m (..., s), z/r (...,).

    Returns (m, P, log-likelihood (...,), or None when `loglik` is False); where `valid` is False the
    state is kept and the log-likelihood is 0. P − S K Kᵀ stays exactly symmetric when P is (K_i K_j =
    K_j K_i in floating point), so no symmetrization is needed.
    """
    S = P[..., 0, 0] + r  # (...,)
    K = P[..., :, 0] / S.unsqueeze(-1)  # (..., s)
    v = z - m[..., 0]  # (...,)
    m_new = m + K * v.unsqueeze(-1)
    P_new = P - K.unsqueeze(-1) * K.unsqueeze(-2) * S[..., None, None]
    if not loglik:
        m_new, P_new, _ = _keep_where_invalid(valid, (m, P), (m_new, P_new, S))  # S stands in for the unused ll
        return m_new, P_new, None
    ll = -0.5 * (LOG_2PI + torch.log(S) + v**2 / S)
    return _keep_where_invalid(valid, (m, P), (m_new, P_new, ll))


def cholesky_unrolled(S: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of S (..., m, m), m static, as plain ops ONNX can express (it has no Cholesky op)."""
    m = S.shape[-1]
    cols: list[list[torch.Tensor]] = [[None] * m for _ in range(m)]  # cols[i][j] = L[..., i, j]
    for j in range(m):
        d = S[..., j, j] - sum((cols[j][k] ** 2 for k in range(j)), torch.zeros_like(S[..., j, j]))
        cols[j][j] = torch.sqrt(d)
        for i in range(j + 1, m):
            acc = S[..., i, j] - sum((cols[i][k] * cols[j][k] for k in range(j)), torch.zeros_like(S[..., i, j]))
            cols[i][j] = acc / cols[j][j]
    zero = torch.zeros_like(S[..., 0, 0])
    return torch.stack([torch.stack([cols[i][j] if j <= i else zero for j in range(m)], -1) for i in range(m)], -2)


def cho_solve_unrolled(b: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """x with L Lᵀ x = b for b (..., m, k), by unrolled forward and backward substitution (m static)."""
    m = L.shape[-1]
    y: list[torch.Tensor] = []
    for i in range(m):
        acc = b[..., i, :] - sum((L[..., i, k, None] * y[k] for k in range(i)), torch.zeros_like(b[..., i, :]))
        y.append(acc / L[..., i, i, None])
    x: list[torch.Tensor] = [None] * m
    for i in reversed(range(m)):
        acc = y[i] - sum((L[..., k, i, None] * x[k] for k in range(i + 1, m)), torch.zeros_like(y[i]))
        x[i] = acc / L[..., i, i, None]
    return torch.stack(x, -2)


def update(m: torch.Tensor, P: torch.Tensor, z: torch.Tensor, H: torch.Tensor, R: torch.Tensor, valid: torch.Tensor | None = None,
           exportable: bool = False):
    """Kalman update (Joseph form) of m (B, n), P (B, n, n) with z (B, m), H (m, n), R (B or 1, m, m).

    Returns (m, P, log-likelihood (B,)); rows where `valid` (B,) is False keep their state.
    `exportable`: factor S and solve with it by the unrolled `cholesky_unrolled` / `cho_solve_unrolled`
    (the same maths in plain ops, for ONNX graphs) instead of `torch.linalg.cholesky` / `cholesky_solve`.
    """
    Ht = H.transpose(-1, -2)  # (n, m)
    v = z - m @ Ht  # (B, m)
    PHt = P @ Ht  # (B, n, m)
    S = H @ PHt + R  # (B, m, m)
    S = 0.5 * (S + S.transpose(-1, -2))
    if exportable:
        L = cholesky_unrolled(S)
        solve = lambda b: cho_solve_unrolled(b, L)  # noqa: E731
    else:
        L = torch.linalg.cholesky(S)
        solve = lambda b: torch.cholesky_solve(b, L)  # noqa: E731
    K = solve(PHt.transpose(-1, -2)).transpose(-1, -2)  # (B, n, m) = P Hᵀ S⁻¹
    m_new = m + (K @ v.unsqueeze(-1)).squeeze(-1)
    IKH = torch.eye(H.shape[-1], dtype=P.dtype, device=P.device) - K @ H  # (B, n, n)
    P_new = IKH @ P @ IKH.transpose(-1, -2) + K @ R @ K.transpose(-1, -2)
    P_new = 0.5 * (P_new + P_new.transpose(-1, -2))
    w = solve(v.unsqueeze(-1)).squeeze(-1)  # (B, m) = S⁻¹ v
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    ll = -0.5 * (v.shape[-1] * LOG_2PI + logdet + (v * w).sum(-1))  # (B,)
    return _keep_where_invalid(valid, (m, P), (m_new, P_new, ll))


def update_exportable(m: torch.Tensor, P: torch.Tensor, z: torch.Tensor, H: torch.Tensor, R: torch.Tensor, valid: torch.Tensor | None = None):
    """`update` with `exportable=True`: Cholesky factor and solves unrolled, for graphs traced to ONNX."""
    return update(m, P, z, H, R, valid, exportable=True)


def matern_filter(t_s: torch.Tensor, y: torch.Tensor, nu: float, lengthscale, outputscale, noise):
    """Causal Matérn GP posterior: filtered mean/var and log p(y) of series y (N,) or (K, N) sharing times.

    `t_s` (N,) non-decreasing seconds, scalar hyper-parameters (tensors or floats); exact, O(N).
    Returns mean and var shaped like `y`, and the log marginal likelihood summed over the K series.
    """
    t = torch.as_tensor(t_s, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    yk = y.reshape(-1, t.shape[0])  # (K, N)
    as64 = lambda x: torch.as_tensor(x, dtype=torch.float64).reshape(1)  # noqa: E731
    F, Pinf = matern_sde(nu, as64(lengthscale), as64(outputscale))  # (1, s, s)
    dt = torch.cat([t.new_zeros(1), torch.diff(t)])  # (N,)
    A, Q = discretize_stationary(F, Pinf, dt)  # (N, 1, s, s)
    r = as64(noise)
    m = torch.zeros(yk.shape[0], 1, F.shape[-1], dtype=torch.float64)  # (K, 1, s)
    P = Pinf.expand(yk.shape[0], 1, -1, -1)  # (K, 1, s, s)
    means, vars_, ll = [], [], y.new_zeros(())
    for k in range(len(t)):
        m, P = predict(m, P, A[k], Q[k])
        m, P, lk = update_first(m, P, yk[:, k : k + 1], r)
        means.append(m[:, 0, 0])
        vars_.append(P[:, 0, 0, 0])
        ll = ll + lk.sum()
    return torch.stack(means, -1).reshape(y.shape), torch.stack(vars_, -1).reshape(y.shape), ll


def matern_smoother(t_s: torch.Tensor, y: torch.Tensor, nu: float, lengthscale, outputscale, noise):
    """Rauch–Tung–Striebel smoothed Matérn GP posterior mean/var (N,): the dense GP posterior, in O(N)."""
    t = torch.as_tensor(t_s, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    as64 = lambda x: torch.as_tensor(x, dtype=torch.float64).reshape(1)  # noqa: E731
    F, Pinf = matern_sde(nu, as64(lengthscale), as64(outputscale))
    dt = torch.cat([t.new_zeros(1), torch.diff(t)])
    A, Q = discretize_stationary(F, Pinf, dt)  # (N, 1, s, s)
    m, P = torch.zeros(1, F.shape[-1], dtype=torch.float64), Pinf.clone()
    ms, Ps, mp, Pp = [], [], [], []
    for k in range(len(t)):
        m, P = predict(m, P, A[k], Q[k])
        mp.append(m)
        Pp.append(P)
        m, P, _ = update_first(m, P, y[k].reshape(1), as64(noise))
        ms.append(m)
        Ps.append(P)
    for k in range(len(t) - 2, -1, -1):  # backward pass: G = P_k A_{k+1}ᵀ (P⁻_{k+1})⁻¹
        G = torch.linalg.solve(Pp[k + 1], A[k + 1] @ Ps[k]).transpose(-1, -2)
        ms[k] = ms[k] + ((ms[k + 1] - mp[k + 1]).unsqueeze(-2) @ G.transpose(-1, -2)).squeeze(-2)
        Ps[k] = Ps[k] + G @ (Ps[k + 1] - Pp[k + 1]) @ G.transpose(-1, -2)
    return torch.stack([x[0, 0] for x in ms]), torch.stack([x[0, 0, 0] for x in Ps])
