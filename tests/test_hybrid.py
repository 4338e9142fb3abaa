"""The `kalmannet` hybrid: the EKF at initialization, trains through the filter, carries state, exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqsense.config import apply_overrides
from seqsense.dataset import WindowDataset, compute_normalization, episode_refs
from seqsense.errors import ConfigError
from seqsense.models.base import to_tensors
from seqsense.models.ekf import EKFConfig, EKFModel
from seqsense.models.hybrid import KalmanNetConfig, KalmanNetModel

IO = {"inputs": ("gyro", "accel"), "target": "truth/gravity_body"}


@pytest.fixture(scope="module")
def imu_log(tmp_path_factory):
    from seqsense.scenarios import generate

    return generate("imu_motion", tmp_path_factory.mktemp("hybrid") / "imu.h5", episodes=3, seed=5, duration_s=4.0,
                    knobs={"accel_std": 3.0})


def _whole(ds, k: int) -> dict[str, torch.Tensor]:
    """Episode k as one window with a batch axis of 1."""
    return to_tensors(ds.sequence(k))


def _models(log, window=64, **over):
    cfg = apply_overrides(KalmanNetConfig(), {**IO, "window": window, "hidden": 8, **over})
    ds = WindowDataset(episode_refs([log]), cfg.window_spec())
    norm = compute_normalization(ds)
    torch.manual_seed(0)
    net = KalmanNetModel(cfg, ds.stream_info(), norm)
    ekf = EKFModel(apply_overrides(EKFConfig(), {**IO, "window": window}), ds.stream_info(), norm)
    return net, ekf, ds


def test_at_init_it_is_the_ekf(imu_log):
    net, ekf, ds = _models(imu_log)
    with torch.no_grad():
        net.ekf.set_noise(accel_meas_std=2.0, accel_gate=0.5, gyro_noise_density=1e-3)  # any noise: it follows its own filter's
        ekf.ekf.set_noise(**net.ekf.noise_values())
    seq = ds.sequence(0)
    a, b = net.predict(seq), ekf.predict(seq)
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-6)
    np.testing.assert_allclose(a["var"], b["var"], rtol=1e-5)
    assert net.trains_by_sgd and not any(p.requires_grad for p in net.ekf.parameters())


def test_twin_is_the_accelerometer_alone(imu_log):
    net, _, ds = _models(imu_log, memoryless=True)
    seq = ds.sequence(1)
    got = net.predict(seq)["mean"]
    a = seq["accel"]
    np.testing.assert_allclose(got, -a / np.linalg.norm(a, axis=-1, keepdims=True), atol=1e-5)
    assert not net.trains_by_sgd and net.init_state(2) == {}


def test_refuses_logs_without_gyro_and_accel(tiny_log):
    cfg = apply_overrides(KalmanNetConfig(), {"inputs": ("imu",), "target": "truth/pos", "window": 8})
    ds = WindowDataset(episode_refs([tiny_log]), cfg.window_spec())
    with pytest.raises(ConfigError, match="kalmannet"):
        KalmanNetModel.check_streams(cfg, ds.stream_info())


@pytest.mark.slow
def test_trains_through_the_filter_and_beats_a_mistuned_ekf(imu_log):
    """From an EKF that trusts the accelerometer too much, SGD on the learned noise scale alone lowers the loss.

    Whole 4 s episodes are back-propagated: the tilt filter's memory outlasts short windows, and
    gradients truncated at 32 ticks point the other way (measured: loss 0.092 -> 0.109), as `ekf.fit` explains.
    """
    net, _, ds = _models(imu_log, window=400)
    net.ekf.set_noise(accel_meas_std=1.0, accel_gate=1e-3)  # σ_a 1 m/s² against 3 m/s² rms linear acceleration
    batch = ds.__getitems__(list(range(len(ds))))  # the three episodes, whole
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(8):
        loss = net.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    with torch.no_grad():
        after = float(net.loss(batch))
        s = net.log_scale(net.forward_stateful(batch)[1]["h"])
    assert after < losses[0] - 0.005, losses + [after]
    assert float(s.mean()) > 0.3, "it should learn to distrust the accelerometer (R scaled up)"


def test_carried_state_equals_one_long_run(imu_log):
    net, _, ds = _models(imu_log)
    with torch.no_grad():
        torch.nn.init.normal_(net.scale.weight, std=0.5)  # a non-trivial learned part
        whole = _whole(ds, 0)
        full = net(whole)["mean"]
        state, parts = None, []
        for a in range(0, whole["dt_s"].shape[1], 50):
            out, state = net.forward_stateful({k: v[:, a : a + 50] for k, v in whole.items()}, state)
            parts.append(out["mean"])
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-6, rtol=1e-6)


def test_exports_to_onnx_with_parity(imu_log, tmp_path):
    from seqsense import runtime
    from seqsense.export import export_model
    from seqsense.export.check import run_parity

    net, _, ds = _models(imu_log)
    with torch.no_grad():
        torch.nn.init.normal_(net.scale.weight, std=0.5)
    net.eval()
    export_model(net, tmp_path / "exp", {"extra": {}}, parity_ticks=[list(ds.iter_ticks(0))[:60]], log=lambda m: None)
    report = run_parity(net, runtime.load(tmp_path / "exp"), [list(ds.iter_ticks(1))])
    assert report["failure"] is None, report
    assert report["max_rel_err"] < 1e-4
