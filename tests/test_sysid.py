"""`sysid`: the E-step against dense Gaussian conditioning, EM's non-decreasing likelihood, held-out
predictive likelihood close to the true system's, missing and ragged data, the target read-out."""

from __future__ import annotations

import numpy as np
import pytest
from test_kalman import make_system

from seqsense.models.sysid import LDS, fit_lds_em, fit_readout, pad_sequences, rts_smoother

LDS_KEYS = ("A", "Q", "H", "R", "x0", "P0")


def true_lds(system: dict) -> LDS:
    return LDS(*(np.asarray(system[k], np.float64) for k in LDS_KEYS))


def simulate(system: dict, episodes: int, ticks: int, seed: int):
    """Measurements (E, T, m) and noise-free measured quantities H x (E, T, m) of `system`."""
    rng = np.random.default_rng(seed)
    A, H = system["A"], system["H"]
    Lq, Lr, L0 = (np.linalg.cholesky(system[k]) for k in ("Q", "R", "P0"))
    xs = np.empty((episodes, ticks, len(A)))
    x = system["x0"] + rng.standard_normal((episodes, len(A))) @ L0.T
    for k in range(ticks):
        if k > 0:
            x = x @ A.T + rng.standard_normal(x.shape) @ Lq.T
        xs[:, k] = x
    pos = xs @ H.T
    return pos + rng.standard_normal(pos.shape) @ Lr.T, pos


def loglik(lds: LDS, zs, valid=None) -> float:
    z, obs, _ = pad_sequences(zs, valid)
    return rts_smoother(lds, z, obs)[3]


def dense_posterior(lds: LDS, z: np.ndarray, obs: np.ndarray):
    """Smoothed means (T, n), covariances (T, n, n), Cov[x_{k+1}, x_k] (T-1, n, n) and log p(z) of one sequence by conditioning the joint Gaussian."""
    T, n, m = len(z), lds.A.shape[0], lds.H.shape[0]
    mu, cov = [lds.x0], [lds.P0]
    for _ in range(1, T):
        mu.append(lds.A @ mu[-1])
        cov.append(lds.A @ cov[-1] @ lds.A.T + lds.Q)
    Sx = np.zeros((T * n, T * n))
    for j in range(T):
        for k in range(j, T):
            block = np.linalg.matrix_power(lds.A, k - j) @ cov[j]  # Cov(x_k, x_j)
            Sx[k * n : (k + 1) * n, j * n : (j + 1) * n] = block
            Sx[j * n : (j + 1) * n, k * n : (k + 1) * n] = block.T
    Hb = np.kron(np.eye(T), lds.H)[np.repeat(obs, m)]
    Rb = np.kron(np.eye(T), lds.R)[np.ix_(np.repeat(obs, m), np.repeat(obs, m))]
    S = Hb @ Sx @ Hb.T + Rb
    v = z[obs].reshape(-1) - Hb @ np.concatenate(mu)
    K = Sx @ Hb.T @ np.linalg.inv(S)
    mean = (np.concatenate(mu) + K @ v).reshape(T, n)
    post = Sx - K @ Hb @ Sx
    covs = np.array([post[k * n : (k + 1) * n, k * n : (k + 1) * n] for k in range(T)])
    cross = np.array([post[(k + 1) * n : (k + 2) * n, k * n : (k + 1) * n] for k in range(T - 1)])
    ll = -0.5 * (len(v) * np.log(2 * np.pi) + np.linalg.slogdet(S)[1] + v @ np.linalg.solve(S, v))
    return mean, covs, cross, ll


def random_lds(n: int, m: int, seed: int) -> LDS:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    A *= 0.9 / np.abs(np.linalg.eigvals(A)).max()
    B, C, D = (rng.standard_normal((k, k)) for k in (n, m, n))
    return LDS(A, B @ B.T / n + 0.1 * np.eye(n), rng.standard_normal((m, n)), C @ C.T / m + 0.1 * np.eye(m), rng.standard_normal(n), D @ D.T / n + np.eye(n))


def test_smoother_equals_dense_gaussian_conditioning():
    """Filter + RTS smoother + lag-one cross covariances are exact, with a missing measurement and a padded tail."""
    lds = random_lds(3, 2, seed=1)
    rng = np.random.default_rng(2)
    zs = [rng.standard_normal((7, 2)), rng.standard_normal((5, 2))]
    valid = [np.array([1, 1, 0, 1, 1, 1, 1], bool), np.ones(5, bool)]
    z, obs, _ = pad_sequences(zs, valid)
    means, covs, cross, ll = rts_smoother(lds, z, obs)
    total = 0.0
    for i, (zi, ok) in enumerate(zip(zs, valid)):
        T = len(zi)
        m_ref, P_ref, C_ref, ll_ref = dense_posterior(lds, zi, ok)
        np.testing.assert_allclose(means[i, :T], m_ref, atol=1e-10)
        np.testing.assert_allclose(covs[i, :T], P_ref, atol=1e-10)
        np.testing.assert_allclose(cross[i, : T - 1], C_ref, atol=1e-10)
        total += ll_ref
    assert ll == pytest.approx(total, abs=1e-9)


@pytest.fixture(scope="module")
def matern_fit():
    """EM on 6 episodes × 200 ticks of a 2-D Matérn-3/2 system (state 4), with held-out episodes."""
    system = make_system()
    z, pos = simulate(system, 6, 200, seed=0)
    return system, fit_lds_em(list(z), state_dim=4, iters=30), z, pos


def test_em_loglik_never_decreases_and_beats_the_true_system(matern_fit):
    system, fit, z, _ = matern_fit
    ll = np.array(fit.loglik)
    assert len(ll) == 31
    assert np.diff(ll).min() > -1e-8 * abs(ll[-1]), np.diff(ll)
    assert ll[-1] > ll[0] + 50
    assert ll[-1] >= loglik(true_lds(system), list(z)), "the maximum-likelihood fit explains its training data at least as well as the truth"
    assert loglik(fit.lds, list(z)) == pytest.approx(ll[-1], rel=1e-12)  # the trace ends at the returned model


def test_em_predicts_held_out_episodes_like_the_true_system(matern_fit):
    """Held-out log-likelihood per measured value within 0.02 nats of the true system's (the state basis does not matter)."""
    system, fit, _, _ = matern_fit
    z_new, _ = simulate(system, 6, 200, seed=1)
    gap = (loglik(true_lds(system), list(z_new)) - loglik(fit.lds, list(z_new))) / z_new[..., 0].size / 2
    assert gap < 0.02, gap


def test_readout_recovers_the_target_map_and_its_noise():
    """y = H x + b + ε read out from the true system's smoothed states: G, b and var ε recovered."""
    system = make_system()
    z, pos = simulate(system, 6, 200, seed=3)
    lds = true_lds(system)
    zz, obs, _ = pad_sequences(list(z))
    means, covs, _, _ = rts_smoother(lds, zz, obs)
    y = pos + np.array([0.5, -1.0]) + 0.2 * np.random.default_rng(4).standard_normal(pos.shape)
    from seqsense.models.sysid import EMResult

    G, b, var = fit_readout(EMResult(lds, [], means, covs), list(y))
    np.testing.assert_allclose(G, system["H"], atol=0.05)
    np.testing.assert_allclose(b, [0.5, -1.0], atol=0.1)
    np.testing.assert_allclose(var, [0.04, 0.04], rtol=0.25)


def test_missing_and_ragged_data_are_ignored_not_zeros():
    """Invalid entries (NaN here) and unequal lengths: non-decreasing likelihood, the same fit whatever the invalid values."""
    system = make_system()
    z, _ = simulate(system, 5, 160, seed=5)
    rng = np.random.default_rng(6)
    zs = [z[i, : 160 - 20 * i].copy() for i in range(5)]
    valid = [rng.random(len(zi)) > 0.15 for zi in zs]
    for zi, ok in zip(zs, valid):
        zi[~ok] = np.nan
    fit = fit_lds_em(zs, valid, state_dim=4, iters=15)
    assert np.diff(fit.loglik).min() > -1e-8 * abs(fit.loglik[-1])
    zs_other = [np.where(ok[:, None], zi, 1e3) for zi, ok in zip(zs, valid)]
    again = fit_lds_em(zs_other, valid, state_dim=4, iters=15)
    for k in LDS_KEYS:
        np.testing.assert_array_equal(getattr(again.lds, k), getattr(fit.lds, k))  # deterministic, and blind to invalid values
    z_new, _ = simulate(system, 6, 200, seed=7)
    gap = (loglik(true_lds(system), list(z_new)) - loglik(fit.lds, list(z_new))) / z_new[..., 0].size / 2
    assert gap < 0.05, gap


def test_bad_input_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="windows"):
        fit_lds_em([rng.standard_normal((6, 2))], state_dim=4)
    with pytest.raises(ValueError, match="measurement values per tick"):
        fit_lds_em([rng.standard_normal((50, 2)), rng.standard_normal((50, 3))])
    with pytest.raises(ValueError, match="no valid measurement"):
        fit_lds_em([rng.standard_normal((50, 2))], [np.zeros(50, bool)])
    with pytest.raises(ValueError, match="iters"):
        fit_lds_em([rng.standard_normal((50, 2))], iters=-1)
