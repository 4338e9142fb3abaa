"""The `gp` family: the state-space Matérn filter equals gpytorch's dense GP posterior, hyper-parameters
are learned by marginal likelihood, the SVGP fits long logs, and the model streams like it predicts."""

from __future__ import annotations

import gpytorch
import numpy as np
import pytest
import torch

from seqsense.models import statespace as ss

from seqsense.models.gp import DenseMaternGP, MaternPrior, fit_matern_hyperparameters, fit_svgp
from test_kalman import build, stream_through, train, write_linear_gaussian_log

NUS = (0.5, 1.5, 2.5)


def dense_gp(t, y, nu, ell, sig2, noise):
    """A float64 gpytorch ExactGP with the given hyper-parameters, in eval mode."""
    lik = gpytorch.likelihoods.GaussianLikelihood().double()
    model = DenseMaternGP(t[:, None], y, lik, nu).double()
    model.covar_module.base_kernel.lengthscale = ell
    model.covar_module.outputscale = sig2
    lik.noise = noise
    return model.eval(), lik.eval()


def irregular_series(n=60, seed=0):
    """Irregular timestamps (gaps 0.01..0.31 s) and a noisy smooth signal, float64."""
    g = torch.Generator().manual_seed(seed)
    t = torch.cumsum(torch.rand(n, generator=g, dtype=torch.float64) * 0.3 + 0.01, 0)
    return t, torch.sin(1.3 * t) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)


def sample_matern(t, nu, ell, sig2, k=1, seed=0):
    """k exact draws (k, N) of a Matérn GP at times t, by the dense Cholesky of gpytorch's kernel."""
    kern = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=nu)).double()
    kern.base_kernel.lengthscale = ell
    kern.outputscale = sig2
    with torch.no_grad():
        K = kern(t[:, None]).to_dense() + 1e-9 * torch.eye(len(t), dtype=torch.float64)
    L = torch.linalg.cholesky(K)
    g = torch.Generator().manual_seed(seed)
    return (L @ torch.randn(len(t), k, generator=g, dtype=torch.float64)).T


@pytest.mark.parametrize("nu", NUS)
def test_sde_is_the_gpytorch_kernel(nu):
    """Closed-form A = expm(FΔt); k(Δt) = (A P∞)[0, 0] equals gpytorch's kernel; P∞ solves the Lyapunov equation."""
    prior = MaternPrior(nu, 2, lengthscale_s=0.7, outputscale=1.9).double()
    F, Pinf = prior.sde()
    dt = torch.tensor([0.0, 0.03, 0.4, 2.5], dtype=torch.float64)
    A, Q = prior.discretize(dt)  # (4, 2, s, s)
    torch.testing.assert_close(A, torch.linalg.matrix_exp(F * dt[:, None, None, None]), rtol=1e-10, atol=1e-12)
    assert (torch.linalg.eigvalsh(Q) > -1e-12).all()
    with torch.no_grad():
        k = prior.kernel(torch.zeros(2, 1, 1, dtype=torch.float64), dt[None, :, None].expand(2, -1, -1)).to_dense()[:, 0]  # (2, 4)
    torch.testing.assert_close((A @ Pinf)[..., 0, 0].T, k, rtol=1e-9, atol=1e-12)
    lyap = F @ Pinf + Pinf @ F.transpose(-1, -2)
    lyap[..., -1, -1] = 0.0  # only the white-noise entry L q Lᵀ is non-zero
    assert lyap.abs().max() < 1e-9


@pytest.mark.parametrize("nu", NUS)
def test_filter_equals_gpytorch_dense_posterior(nu):
    """Filtered and one-step-predicted mean/var at the last of irregular points, and log p(y), match ExactGP."""
    t, y = irregular_series()
    ell, sig2, noise = 0.8, 1.7, 0.05
    mean, var, ll = ss.matern_filter(t, y, nu, ell, sig2, noise)
    model, lik = dense_gp(t, y, nu, ell, sig2, noise)
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        post = model(t[-1:, None])  # given all N observations
    assert abs(float(mean[-1] - post.mean[0])) < 1e-8
    assert abs(float(var[-1] - post.variance[0])) < 1e-8
    # one step ahead: the prior predict from N-1 observations equals the dense posterior given N-1
    prev, _ = dense_gp(t[:-1], y[:-1], nu, ell, sig2, noise)
    _, _, ll_prev = ss.matern_filter(t[:-1], y[:-1], nu, ell, sig2, noise)
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        pred = prev(t[-1:, None])
    log_pred = -0.5 * (np.log(2 * np.pi * (pred.variance[0] + noise)) + (y[-1] - pred.mean[0]) ** 2 / (pred.variance[0] + noise))
    assert abs(float(ll - ll_prev - log_pred)) < 1e-7  # the prediction-error decomposition term
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    with torch.no_grad():
        dense_ll = mll(model(t[:, None]), y) * len(t)
    assert abs(float(ll - dense_ll)) < 1e-5


def test_smoother_equals_dense_posterior():
    t, y = irregular_series(n=40, seed=1)
    sm, sv = ss.matern_smoother(t, y, 1.5, 0.6, 1.2, 0.02)
    model, _ = dense_gp(t, y, 1.5, 0.6, 1.2, 0.02)
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        post = model(t[:, None] + 0.0)
    torch.testing.assert_close(sm, post.mean, atol=1e-7, rtol=0)
    torch.testing.assert_close(sv, post.variance, atol=1e-7, rtol=0)


def test_marginal_likelihood_recovers_lengthscale():
    """Type-II ML on draws from a known Matérn-3/2 GP: the loss falls and ℓ lands near the truth."""
    g = torch.Generator().manual_seed(3)
    t = torch.sort(torch.rand(100, generator=g, dtype=torch.float64) * 20.0).values  # irregular
    f = sample_matern(t, 1.5, 0.5, 1.0, k=16, seed=4)  # 16 independent series sharing the times
    y = f + 0.1 * torch.randn(f.shape, generator=g, dtype=torch.float64)
    fit = fit_matern_hyperparameters(t, y, nu=1.5, steps=100, lr=0.1, lengthscale_s=1.5, noise=0.05)
    assert fit["losses"][-1] < fit["losses"][0]
    assert abs(fit["lengthscale_s"] - 0.5) < 0.1, fit
    assert abs(fit["outputscale"] - 1.0) < 0.25, fit


def test_svgp_on_a_long_signal():
    """SVGP (ELBO, 100 inducing points) on 2,000 points over 33 lengthscales: near the exact smoothed
    posterior, better than the causal filter (it sees both sides)."""
    n, ell, sig2, noise = 2000, 3.0, 1.0, 0.09
    t = torch.linspace(0.0, 100.0, n, dtype=torch.float64)
    F, Pinf = ss.matern_sde(1.5, torch.tensor([ell], dtype=torch.float64), torch.tensor([sig2], dtype=torch.float64))
    A, Q = ss.discretize_stationary(F, Pinf, torch.tensor(float(t[1] - t[0]), dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    x, LQ, xs = torch.linalg.cholesky(Pinf[0]) @ torch.randn(2, generator=g, dtype=torch.float64), torch.linalg.cholesky(Q[0]), []
    for _ in range(n):  # exact simulation of the SDE (the state-space form equals the kernel, tested above)
        xs.append(x[0])
        x = A[0] @ x + LQ @ torch.randn(2, generator=g, dtype=torch.float64)
    f = torch.stack(xs)
    y = f + noise**0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    mean, var, info = fit_svgp(t.numpy(), y.numpy(), nu=1.5, num_inducing=100, steps=200, batch_size=500, lr=0.03, lengthscale_s=1.0)
    rmse = lambda est: float(np.sqrt(np.mean((np.asarray(est) - f.numpy()) ** 2)))  # noqa: E731
    rmse_smooth = rmse(ss.matern_smoother(t, y, 1.5, ell, sig2, noise)[0])
    rmse_filter = rmse(ss.matern_filter(t, y, 1.5, ell, sig2, noise)[0])
    assert np.mean(info["elbo"][-20:]) > np.mean(info["elbo"][:20])
    assert np.all(var > 0)
    assert rmse(mean) < 1.5 * rmse_smooth and rmse(mean) < rmse_filter, (rmse(mean), rmse_smooth, rmse_filter)


@pytest.fixture(scope="module")
def gp_log(tmp_path_factory):
    return write_linear_gaussian_log(tmp_path_factory.mktemp("gp") / "lg.h5", episodes=4, ticks=120)


@pytest.mark.parametrize("nu", NUS)
def test_model_streams_like_it_predicts(gp_log, nu):
    path, _ = gp_log
    model, ds = build("gp", path, window=16, hidden=16, nu=nu)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    state = model.init_state(3)
    assert state["m"].shape == (3, 2, ss.matern_state_size(nu)) and state["P"].shape == (3, 2) + (ss.matern_state_size(nu),) * 2
    seq = ds.sequence(0)
    seq["dt_s"] = seq["dt_s"] * np.random.default_rng(0).uniform(0.5, 1.5, len(seq["dt_s"])).astype(np.float32)  # irregular
    off = model.predict(seq)
    on = stream_through(model, seq)
    assert off["mean"].dtype == np.float32 and np.isfinite(off["var"]).all() and (off["var"] > 0).all()
    np.testing.assert_allclose(on["mean"], off["mean"], atol=1e-5)
    np.testing.assert_allclose(on["var"], off["var"], rtol=1e-5)


@pytest.mark.parametrize("nu", NUS)
def test_dense_window_filter_equals_the_recursion(gp_log, nu):
    """Training windows filter densely (one Cholesky per window); outputs and gradients equal the Kalman recursion's."""
    path, _ = gp_log
    model, ds = build("gp", path, window=16, hidden=16, nu=nu)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 24, 2, dtype=torch.float64, generator=gen)
    r = torch.rand(3, 24, 2, dtype=torch.float64, generator=gen) * 0.5 + 1e-3
    dt = torch.rand(3, 24, generator=gen) * 0.2
    dt[1, 5] = 0.0  # two ticks at the same time
    outs = []
    for fn in (model._filter_dense, model._filter_recursive):
        model.zero_grad()
        out = fn(z, r, dt)
        (out["mean"].square().sum() + out["var"].log().sum()).backward()
        grads = [p.grad.clone() for p in model.hyperparameters()]
        outs.append((out["mean"].detach(), out["var"].detach(), grads))
    (m1, v1, g1), (m2, v2, g2) = outs
    torch.testing.assert_close(m1, m2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert model._filter(z, r, dt)["mean"].shape == (3, 24, 2)


def test_training_lowers_the_filtering_loss(gp_log):
    path, _ = gp_log
    model, ds = build("gp", path, window=16, hidden=16, extra_steps=10)
    losses = train(model, ds, steps=40, lr=1e-2)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    before = model.prior.lengthscale.clone()
    model.fit_extra(ds, log=lambda *_: None)
    assert not torch.equal(before, model.prior.lengthscale)
    assert all(p.requires_grad for p in model.parameters())  # the encoder is unfrozen afterwards


def test_twin_is_the_stationary_prior_updated_with_one_tick(gp_log):
    """The twin's output is σ² z/(σ² + r), σ² r/(σ² + r) + η per dimension, and its hyper-parameter fit sees that form."""
    path, _ = gp_log
    model, ds = build("gp", path, window=16, hidden=16, nu=2.5, extra_steps=5, memoryless=True)
    assert not model.has_memory and model.init_state(2) == {}
    seq = ds.sequence(0)
    x = {k: torch.as_tensor(v) for k, v in seq.items()}
    with torch.no_grad():
        z, r = model._measure(x)  # (T, D) normalized units
        sig2, eta = model.prior.outputscale.double(), model.likelihood.noise.reshape(-1).double()
        mean = (sig2 * z / (sig2 + r)).float() * model.target_std + model.target_mean
        var = (sig2 * r / (sig2 + r) + eta).float() * model.target_std**2
    out = model.predict(seq)
    np.testing.assert_allclose(out["mean"], mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["var"], var.numpy(), rtol=1e-5)
    before = model.prior.lengthscale.clone(), model.prior.outputscale.clone()
    model.fit_extra(ds, log=lambda *_: None)
    assert torch.equal(before[0], model.prior.lengthscale)  # no temporal correlation: the lengthscale gets no gradient
    assert not torch.equal(before[1], model.prior.outputscale)


def test_config_errors():
    from seqsense.models import get_model_class

    _, C = get_model_class("gp")
    with pytest.raises(ValueError, match="nu"):
        C(inputs=("a",), target="b", nu=2.0)
    with pytest.raises(ValueError, match="outputscale"):
        C(inputs=("a",), target="b", outputscale=0.0)


@pytest.mark.slow
def test_gp_near_optimal_on_linear_gaussian(tmp_path):
    """Trained on a Matérn-3/2 linear-Gaussian log, the GP's MSE is within ~10 % of the optimal filter's."""
    path, _ = write_linear_gaussian_log(tmp_path / "lg.h5", episodes=8, ticks=400, seed=1)
    model, ds = build("gp", path, window=32, hidden=32, nu=1.5)
    losses = train(model, ds, steps=300, lr=1e-2)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    model.fit_extra(ds, log=lambda *_: None)
    err, err_opt = [], []
    for k in range(len(ds.episodes)):
        seq = ds.sequence(k)
        err.append((model.predict(seq)["mean"] - seq["target"]) ** 2)
        err_opt.append((ds.index(k).episode.stream("optimal/filter_mean").data[()] - seq["target"]) ** 2)
    ratio = np.concatenate(err).mean() / np.concatenate(err_opt).mean()
    assert ratio < 1.1, ratio


def test_cached_constants_follow_the_hyperparameters(gp_log):
    """Streaming reuses the SDE matrices only while the hyper-parameters are unchanged."""
    path, _ = gp_log
    model, ds = build("gp", path, window=16, hidden=16)
    seq = ds.sequence(0)
    before = model.predict(seq)["mean"]
    with torch.no_grad():
        model.prior.kernel.base_kernel.raw_lengthscale.add_(1.0)  # in place: same storage, new version
    after = model.predict(seq)["mean"]
    assert np.abs(after - before).max() > 1e-3
    with torch.enable_grad():  # with gradients the constants are always recomputed: same numbers
        fresh = model({k: torch.as_tensor(v)[None] for k, v in seq.items()})["mean"][0].detach().numpy()
    np.testing.assert_allclose(fresh, after, atol=1e-6)
    with torch.inference_mode():  # a model whose tensors are inference tensors has no versions: no cache, no error
        frozen, _ = build("gp", path, window=16, hidden=16)
        assert frozen.prior.kernel.base_kernel.raw_lengthscale.is_inference()
        np.testing.assert_allclose(stream_through(frozen, seq)["mean"], frozen.predict(seq)["mean"], atol=1e-5)
