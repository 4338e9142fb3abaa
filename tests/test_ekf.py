"""The gravity-direction EKF (`seqsense.models.ekf`) on generated `imu_motion` logs: sign convention,
accuracy against the memoryless and gyro-only estimates, fitting, step/run parity, ONNX parity,
gyro-bias convergence, and the model family `ekf` (its config, the cells it refuses, its twin)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from seqsense.dataset import StreamInfo, WindowDataset, WindowSpec, compute_normalization, episode_refs
from seqsense.errors import ConfigError
from seqsense.models import ekf as E
from seqsense.scenarios import generate

QUIET = {"gyro_noise_density": 0.0, "gyro_bias_std": 0.0, "gyro_bias_walk": 0.0, "accel_noise_density": 0.0,
         "accel_bias_std": 0.0, "accel_bias_walk": 0.0, "accel_std": 0.0}


def _sequences(path) -> list[dict]:
    """Whole episodes on the IMU clock: inputs gyro and accel, target truth/gravity_body."""
    ds = WindowDataset(episode_refs([path]), WindowSpec(inputs=("gyro", "accel"), target="truth/gravity_body", clock="gyro"))
    return [ds.sequence(k) for k in range(len(ds.episodes))]


def _inputs(b: dict) -> tuple:
    return b["gyro"], b["accel"], b["gyro_valid"], b["accel_valid"], b["dt_s"]


@pytest.fixture(scope="module")
def default_log(tmp_path_factory):
    """Four 10 s episodes of imu_motion with the default noise (truth on every IMU sample)."""
    return generate("imu_motion", tmp_path_factory.mktemp("ekf") / "imu.h5", episodes=4, seed=5, duration_s=10.0,
                    knobs={"truth_decimation": 1})


def test_noise_free_gyro_integration_tracks_truth(tmp_path):
    """Integrating the exact gyro from an exact first accelerometer sample follows truth/gravity_body."""
    path = generate("imu_motion", tmp_path / "quiet.h5", episodes=2, seed=1, duration_s=3.0, knobs={**QUIET, "truth_decimation": 1})
    b = E.stack_sequences(_sequences(path))
    ekf = E.GravityEKF()
    err = E.angle_error_deg(E.gyro_only(ekf, *_inputs(b)), b["target"])
    assert err.max() < 0.01, f"gyro integration drifts {err.max():.4f} deg from the truth"
    flipped = E.angle_error_deg(E.gyro_only(ekf, -b["gyro"], *_inputs(b)[1:]), b["target"])
    assert flipped.mean() > 10.0  # the opposite sign convention is far off: the test can tell them apart
    current = E.angle_error_deg(E.gyro_only(E.GravityEKF(gyro_hold="current"), *_inputs(b)), b["target"])
    assert 10 * err.max() < current.max() < 5.0  # the reading one sample late: close, but not exact


def test_ekf_beats_accelerometer_and_gyro_alone(default_log):
    """Mean angle error: EKF (noise from the log's knobs) well below −accel/‖accel‖ and pure gyro integration.

    Measured on this log (4 × 10 s, seed 5): EKF 2.67°, accelerometer 6.54°, gyro 4.95°; after the
    first 2 s (the EKF's convergence from the first accelerometer sample): 1.92°, 6.46°, 4.86°.
    """
    b = E.stack_sequences(_sequences(default_log))
    ekf = E.GravityEKF.from_provenance(E.provenance_of(default_log))
    with torch.no_grad():
        mean, var, _ = ekf.run(*_inputs(b))
    errs = {"ekf": E.angle_error_deg(mean, b["target"]), "accel": E.angle_error_deg(E.accel_only(b["accel"]), b["target"]),
            "gyro": E.angle_error_deg(E.gyro_only(ekf, *_inputs(b)), b["target"])}
    full = {k: float(v.mean()) for k, v in errs.items()}
    settled = {k: float(v[:, 400:].mean()) for k, v in errs.items()}  # after 2 s at 200 Hz
    assert full["ekf"] < 3.0 and full["ekf"] < 0.5 * full["accel"] and full["ekf"] < 0.7 * full["gyro"], full
    assert settled["ekf"] < 2.2 and settled["ekf"] < 0.35 * settled["accel"] and settled["ekf"] < 0.5 * settled["gyro"], settled
    assert torch.isfinite(var).all() and (var > 0).all()


def test_fit_gradient_matches_autograd(default_log):
    """The carried central-difference sensitivities give the back-propagated gradient of the window's loss."""
    b = E.stack_sequences([{k: v[:150] for k, v in s.items()} for s in _sequences(default_log)[:2]])
    ekf = E.GravityEKF.from_provenance(E.provenance_of(default_log))

    class Hold:  # an optimizer that keeps the gradient for inspection
        def step(self):
            pass

    E._fit_epoch(ekf, b, Hold(), chunk_ticks=150, loss="mse", budget=[1])
    fd = torch.stack([getattr(ekf, f"raw_{k}").grad for k in E.NOISE_NAMES])
    ekf.zero_grad()
    m, P, _ = ekf.run64(*_inputs(b))
    per = E._tick_losses(*E.gravity_output(m, P), b["target"], b["target_valid"], "mse")
    (per.sum() / b["target_valid"].sum()).backward()
    auto = torch.stack([getattr(ekf, f"raw_{k}").grad for k in E.NOISE_NAMES])
    torch.testing.assert_close(fd, auto, rtol=1e-4, atol=1e-9 * auto.abs().max().item())


def test_fit_lowers_the_loss(default_log):
    """From an over-trusted accelerometer (σ_a = 0.2 m/s²), fit raises σ_a and cuts the squared error."""
    five_s = [{k: v[:1000] for k, v in s.items()} for s in _sequences(default_log)]  # 4 × 5 s at 200 Hz
    seqs, held_out = five_s[:2], five_s[2:]
    ekf = E.GravityEKF(accel_meas_std=0.2)
    before, before_held = E.sequence_loss(ekf, seqs), E.sequence_loss(ekf, held_out)
    ekf, losses = E.fit(seqs, ekf, epochs=2, chunk_ticks=100, lr=0.1)
    after, after_held = E.sequence_loss(ekf, seqs), E.sequence_loss(ekf, held_out)
    assert ekf.noise_values()["accel_meas_std"] > 0.5
    assert after < 0.7 * before and after_held < 0.8 * before_held, (before, after, before_held, after_held)
    assert losses[-1] < losses[0]


def test_gate_discounts_a_tap():
    """A 20 m/s² sideways tap (‖z‖ ≈ 22 m/s²) moves the gated filter's tilt far less than the ungated one's."""
    z = torch.tensor([[20.0, 0.0, E.GRAVITY_MPS2]], dtype=torch.float64)  # level body, tap along x
    moved = {}
    for gate in (1.0, 1e-9):
        ekf = E.GravityEKF(accel_gate=gate)
        m, P = E.accel_init(torch.tensor([[0.0, 0.0, E.GRAVITY_MPS2]], dtype=torch.float64), 0.1, 0.005)
        m, P, _ = E.update(m, P, z, ekf.noise()["accel_meas_std"].detach(), gate)
        m, _ = E.renormalize(m, P)
        moved[gate] = float(E.angle_error_deg(m[:, :3], torch.tensor([[0.0, 0.0, -1.0]])))
    assert moved[1e-9] > 1.0 and moved[1.0] < 0.2 * moved[1e-9], moved


def _masked_window(path, T: int = 120):
    """A (2, T) window with dropped gyro and accelerometer ticks, and no accelerometer at the first two ticks."""
    b = E.stack_sequences(_sequences(path)[:2])
    x = {k: v[:, :T].clone() for k, v in b.items()}
    x["accel_valid"][:, :2] = False
    x["accel_valid"][:, 40:50] = False
    x["gyro_valid"][0, 10:20] = False
    return x


@pytest.mark.parametrize("hold", E.GYRO_HOLDS)
def test_step_loop_equals_run(default_log, hold):
    """A loop of `step` (float32 ticks, as a robot feeds them) gives `run`'s outputs and state to 1e-6."""
    x = _masked_window(default_log)
    ekf = E.GravityEKF.from_provenance(E.provenance_of(default_log), gyro_hold=hold)
    with torch.no_grad():
        mean, var, last = ekf.run(*_inputs(x))
        state = ekf.init_state(2)
        for t in range(x["dt_s"].shape[1]):
            tick = [v[:, t] for v in _inputs(x)]
            m_t, v_t, state = ekf.step(tick[0].float(), tick[1].float(), tick[2], tick[3], tick[4].float(), state)
            torch.testing.assert_close(m_t, mean[:, t], atol=1e-6, rtol=0)
            torch.testing.assert_close(v_t, var[:, t], atol=1e-6, rtol=1e-5)
    for k in last:
        torch.testing.assert_close(state[k], last[k], atol=1e-6, rtol=0)
    assert torch.allclose(mean[:, :2], torch.tensor([0.0, 0.0, -1.0]))  # the level prior until the first accelerometer sample
    assert (last["started"] == 1).all()


class _Step(nn.Module):
    """Flat tensors in, flat tensors out: one `GravityEKF.step` for export."""

    def __init__(self, ekf: E.GravityEKF):
        super().__init__()
        self.ekf = ekf

    def forward(self, gyro, accel, gyro_valid, accel_valid, dt_s, m, P, started, gyro_prev):
        state = {"m": m, "P": P, "started": started, "gyro_prev": gyro_prev}
        mean, var, nxt = self.ekf.step(gyro, accel, gyro_valid, accel_valid, dt_s, state)
        return mean, var, nxt["m"], nxt["P"], nxt["started"], nxt["gyro_prev"]


def test_onnx_step_matches_torch(default_log, tmp_path):
    """`step` traced to ONNX (opset 17, dynamo=False) and run by onnxruntime matches torch over a masked window."""
    ort = pytest.importorskip("onnxruntime")
    x = _masked_window(default_log, T=60)
    ekf = E.GravityEKF.from_provenance(E.provenance_of(default_log)).eval()
    wrapper = _Step(ekf).eval()
    state = ekf.init_state(2)
    names = ["gyro", "accel", "gyro_valid", "accel_valid", "dt_s", "m", "P", "started", "gyro_prev"]
    example = (x["gyro"][:, 5].float(), x["accel"][:, 5].float(), x["gyro_valid"][:, 5], x["accel_valid"][:, 5],
               x["dt_s"][:, 5].float(), *state.values())
    path = tmp_path / "ekf_step.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the shape checks, which are constants for batch 2
        torch.onnx.export(wrapper, example, str(path), input_names=names, opset_version=17, dynamo=False,
                          output_names=["mean", "var", "next_m", "next_P", "next_started", "next_gyro_prev"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    used = {i.name for i in sess.get_inputs()}
    ort_state = {k: v.numpy() for k, v in state.items()}
    with torch.no_grad():
        for t in range(x["dt_s"].shape[1]):
            tick = [x["gyro"][:, t].float(), x["accel"][:, t].float(), x["gyro_valid"][:, t], x["accel_valid"][:, t], x["dt_s"][:, t].float()]
            mean, var, state = ekf.step(*tick, state)
            feed = {**dict(zip(names[:5], (v.numpy() for v in tick))), **ort_state}
            out = sess.run(None, {k: v for k, v in feed.items() if k in used})
            np.testing.assert_allclose(out[0], mean.numpy(), atol=1e-5)
            np.testing.assert_allclose(out[1], var.numpy(), atol=1e-5, rtol=1e-4)
            ort_state = dict(zip(["m", "P", "started", "gyro_prev"], out[2:]))
    for k, v in state.items():
        np.testing.assert_allclose(ort_state[k], v.numpy(), atol=1e-5)


def test_bias_estimate_converges_to_the_true_bias(tmp_path):
    """With a large constant gyro bias (0.05 rad/s per axis), the estimate ends near the true bias.

    The true bias is mean(gyro − truth/angular_velocity) over the episode (constant: no random walk).
    The component along gravity is only observable as the body tumbles, so convergence takes ~15 s.
    """
    knobs = {"gyro_bias_std": 0.05, "gyro_bias_walk": 0.0, "truth_decimation": 1}
    path = generate("imu_motion", tmp_path / "bias.h5", episodes=2, seed=3, duration_s=20.0, knobs=knobs)
    b = E.stack_sequences(_sequences(path))
    rates = WindowDataset(episode_refs([path]), WindowSpec(inputs=("gyro",), target="truth/angular_velocity", clock="gyro"))
    true_bias = torch.stack([torch.as_tensor(s["gyro"] - s["target"]).double().mean(0) for s in map(rates.sequence, range(2))])  # (2, 3)
    ekf = E.GravityEKF.from_provenance(E.provenance_of(path))
    assert ekf.noise_values()["init_bias_std"] == pytest.approx(0.05)  # from the log's knobs
    with torch.no_grad():
        m, _, _ = ekf.run64(*_inputs(b))
    err = torch.linalg.vector_norm(m[..., 3:] - true_bias[:, None], dim=-1)  # (2, T)
    size = torch.linalg.vector_norm(true_bias, dim=-1)
    assert (err[:, -1] < 0.3 * size).all(), (m[:, -1, 3:], true_bias)
    assert (err[:, -1000:].mean(1) < 0.5 * err[:, :1000].mean(1)).all()  # the last 5 s against the first 5 s
    assert E.angle_error_deg(m[:, -1000:, :3], b["target"][:, -1000:]).mean() < 2.0


def test_bad_shapes_name_the_stream():
    """A tick of the wrong shape is a ValueError naming the stream; so is a missing state key."""
    ekf = E.GravityEKF()
    state = ekf.init_state(2)
    ok = (torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool), torch.zeros(2))
    with pytest.raises(ValueError, match="'accel'"):
        ekf.step(ok[0], torch.ones(2, 2), *ok[2:], state)
    with pytest.raises(ValueError, match="'dt_s'"):
        ekf.step(*ok[:4], torch.zeros(2, 1), state)
    with pytest.raises(ValueError, match="'gyro_prev'"):
        ekf.step(*ok, {k: v for k, v in state.items() if k != "gyro_prev"})
    with pytest.raises(ValueError, match="accel_meas_std"):
        E.GravityEKF(accel_std=1.0)
    with pytest.raises(ValueError, match="'target'"):
        E.fit([{"gyro": np.zeros((5, 3)), "accel": np.zeros((5, 3)), "gyro_valid": np.ones(5, bool),
                "accel_valid": np.ones(5, bool), "dt_s": np.zeros(5), "target": np.zeros((5, 4)), "target_valid": np.ones(5, bool)}])


def _family(path, **overrides):
    """An `ekf` model on the gyro clock of `path` (fit_extra not run) and its whole-episode dataset."""
    config = E.EKFConfig(inputs=("gyro", "accel"), target="truth/gravity_body", clock="gyro", **overrides)
    ds = WindowDataset(episode_refs([path]), config.window_spec(window=1))
    return E.EKFModel(config, ds.stream_info(), compute_normalization(ds)), ds


def test_family_runs_the_filter_and_its_twin_the_accelerometer(default_log):
    """The family's predictions are GravityEKF's from the log's knobs; its twin's are −a/‖a‖ on every tick."""
    model, ds = _family(default_log, fit_epochs=0)
    model.fit_extra(ds, log=lambda *a: None)
    seq = {k: v[:1200] for k, v in ds.sequence(0).items()}  # 6 s at 200 Hz
    b = E.stack_sequences([seq])
    ref = E.GravityEKF.from_provenance(E.provenance_of(default_log))
    with torch.no_grad():
        mean, var, _ = ref.run(*_inputs(b))
    out = model.predict(seq)
    np.testing.assert_allclose(out["mean"], mean[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["var"], var[0].numpy(), rtol=1e-6)
    assert not model.trains_by_sgd and model.num_parameters() == 6 and model.has_memory

    twin, _ = _family(default_log, **E.EKFModel.twin_overrides())
    twin.fit_extra(ds, log=lambda *a: None)  # fit_epochs=2: skipped by the twin, whose mean the noise cannot change
    assert twin.init_state(1) == {} and not twin.has_memory
    got = twin.predict(seq)
    np.testing.assert_allclose(got["mean"], E.accel_only(seq["accel"]).numpy(), atol=1e-6)
    pred = twin.predictor()
    streamed = np.stack([pred.step_tick(t).mean for _, t in zip(range(50), ds.iter_ticks(0))])
    np.testing.assert_allclose(streamed, got["mean"][:50], atol=1e-6)
    for k, v in model.ekf.noise_values().items():
        assert twin.ekf.noise_values()[k] == pytest.approx(v)  # both start from the log's knobs
    settled = slice(400, None)  # after the EKF's 2 s of convergence from the first accelerometer sample
    err = {"ekf": float(E.angle_error_deg(torch.as_tensor(out["mean"][settled]), seq["target"][settled]).mean()),
           "twin": float(E.angle_error_deg(torch.as_tensor(got["mean"][settled]), seq["target"][settled]).mean())}
    assert err["ekf"] < 0.5 * err["twin"], err


def test_family_refuses_cells_it_does_not_apply_to(tiny_log):
    """No gyro/accelerometer input, or a target that is not 3-D: ConfigError from check_streams and at construction."""
    vec = lambda d: StreamInfo("vector", (d,))  # noqa: E731
    streams = {"gyro": vec(3), "accel": vec(3), "imu6": vec(6), "truth/gravity_body": vec(3), "truth/pos": vec(2),
               "camera": StreamInfo("image", (8, 8, 1)), "side": StreamInfo("label", ())}
    ok = E.EKFConfig(inputs=("gyro", "accel"), target="truth/gravity_body")
    E.EKFModel.check_streams(ok, streams)
    sliced = E.EKFConfig(inputs=("imu6",), target="truth/gravity_body", gyro_stream="imu6[0:3]", accel_stream="imu6[3:6]")
    assert E.imu_inputs(sliced, streams) == {"gyro": ("imu6", slice(0, 3)), "accel": ("imu6", slice(3, 6))}
    bad = {
        "needs a gyro and an accelerometer": E.EKFConfig(inputs=("accel",), target="truth/gravity_body"),
        "3-D gravity direction": E.EKFConfig(inputs=("gyro", "accel"), target="truth/pos"),
        "needs 3 gyro values": E.EKFConfig(inputs=("imu6", "accel"), target="truth/gravity_body", gyro_stream="imu6"),
        "cannot read image": E.EKFConfig(inputs=("gyro", "accel", "camera"), target="truth/gravity_body"),
        "cannot predict label": E.EKFConfig(inputs=("gyro", "accel"), target="side"),
    }
    for why, config in bad.items():
        with pytest.raises(ConfigError, match=why):
            E.EKFModel.check_streams(config, streams)
        with pytest.raises(ConfigError, match=why):
            E.EKFModel(config, streams, {})
    with pytest.raises(ConfigError, match="gyro_hold"):
        E.EKFConfig(gyro_hold="later")
    with pytest.raises(ConfigError, match="stream"):
        E.EKFConfig(accel_stream="imu[3:]")
    from seqsense.models.kalman import KalmanConfig
    from seqsense.train import train

    with pytest.raises(ConfigError, match="family 'ekf'"):
        KalmanConfig(dynamics="imu_gravity")
    with pytest.raises(ConfigError, match="needs a gyro"):  # what the study meets on a cell without an IMU
        train("ekf", [tiny_log], {"window": 8}, "unused", inputs=["imu"], target="truth/pos", progress=False, log=lambda *a: None)


def test_family_trains_saves_and_exports(tmp_path):
    """`train("ekf", ...)` and its twin through `--set memoryless=true`: fitted only, checkpoints and ONNX exports round-trip."""
    from seqsense import runtime
    from seqsense.export import export_model
    from seqsense.export.check import run_parity
    from seqsense.models.checkpoint import load_checkpoint
    from seqsense.train import train

    log = generate("imu_motion", tmp_path / "imu.h5", episodes=3, seed=2, duration_s=1.0)
    for name, sets in (("full", ["fit_epochs=1"]), ("twin", ["fit_epochs=1", "memoryless=true"])):
        res = train("ekf", [log], sets, tmp_path / name, inputs=("gyro", "accel"), target="truth/gravity_body", progress=False,
                    log=lambda *a: None)
        model = res.model
        assert res.steps == 0 and model.num_parameters() == 6 and model.has_memory == (name == "full")
        loaded = load_checkpoint(tmp_path / name / "best")
        assert loaded.config == model.config and loaded.config.memoryless == (name == "twin")
        ds = WindowDataset(episode_refs([log]), model.config.window_spec(window=1))
        np.testing.assert_array_equal(loaded.predict(ds.sequence(0))["mean"], model.predict(ds.sequence(0))["mean"])
        man = export_model(model, tmp_path / f"{name}_export", parity_ticks=20, log=lambda *a: None)
        assert man["config"]["memoryless"] == (name == "twin") and bool(man["graph"]["state"]) == (name == "full")
        report = run_parity(model, runtime.load(tmp_path / f"{name}_export"), [list(ds.iter_ticks(0))])
        assert report["failure"] is None and report["max_abs_err"] < 1e-5, report


@pytest.mark.slow
def test_ekf_family_end_to_end(tmp_path):
    """`seqsense train --model ekf`: fitted, streamed, saved and exported.

    Held-out accuracy beats the accelerometer alone by a wide margin, the numpy predictor equals the
    offline forward, the checkpoint round-trips, and the ONNX export passes its own parity check.
    """
    from seqsense.export import export_model
    from seqsense.models.checkpoint import load_checkpoint
    from seqsense.train import train

    log = generate("imu_motion", tmp_path / "imu.h5", episodes=6, seed=11, duration_s=8.0)
    test = generate("imu_motion", tmp_path / "test.h5", episodes=2, seed=12, duration_s=8.0)
    res = train("ekf", [log], {"fit_epochs": 1, "window": 64}, tmp_path / "run",
                inputs=("gyro", "accel"), target="truth/gravity_body", progress=False, log=lambda *a: None)
    model = res.model
    assert res.steps == 0 and model.num_parameters() == 6
    ds = WindowDataset(episode_refs([test]), model.config.window_spec(window=1))
    errs, accel_errs = [], []
    for k in range(len(ds.episodes)):
        seq = ds.sequence(k)
        offline = model.predict(seq)
        pred = model.predictor()
        streamed = np.stack([pred.step_tick(t).mean for t in ds.iter_ticks(k)])
        np.testing.assert_allclose(streamed, offline["mean"], atol=1e-5)
        truth = torch.as_tensor(seq["target"], dtype=torch.float64)
        errs.append(E.angle_error_deg(torch.as_tensor(streamed, dtype=torch.float64), truth))
        accel_errs.append(E.angle_error_deg(E.accel_only(torch.as_tensor(seq["accel"], dtype=torch.float64)), truth))
    ekf_deg, accel_deg = float(torch.cat(errs).mean()), float(torch.cat(accel_errs).mean())
    assert ekf_deg < 0.5 * accel_deg, f"EKF {ekf_deg:.2f} deg vs accelerometer alone {accel_deg:.2f} deg"
    loaded = load_checkpoint(tmp_path / "run" / "best")
    np.testing.assert_array_equal(loaded.predict(ds.sequence(0))["mean"], model.predict(ds.sequence(0))["mean"])
    from seqsense import runtime
    from seqsense.export.check import run_parity

    export_model(model, tmp_path / "export", parity_ticks=20, log=lambda *a: None)
    ticks = [list(ds.iter_ticks(k)) for k in range(len(ds.episodes))]
    report = run_parity(model, runtime.load(tmp_path / "export"), ticks)
    assert report["failure"] is None and report["max_abs_err"] < 1e-5, report


# ---- a fit that is never worse than its start --------------------------------------------------------
def _stationary(T: int = 1200, rate_hz: float = 200.0, bias=(0.02, -0.02, 0.02), seed: int = 0) -> tuple[dict, np.ndarray]:
    """A still, tilted IMU: accel = −G g + white noise (0.02 m/s²), gyro = a constant bias + white noise (2.4e-3 rad/s)."""
    rng = np.random.default_rng(seed)
    g = np.array([0.2, -0.3, -0.93])
    g /= np.linalg.norm(g)
    ones = np.ones(T, bool)
    dt = np.full(T, 1.0 / rate_hz)
    dt[0] = 0.0
    seq = {"gyro": np.asarray(bias) + 2.4e-3 * rng.standard_normal((T, 3)), "accel": -E.GRAVITY_MPS2 * g + 0.02 * rng.standard_normal((T, 3)),
           "gyro_valid": ones, "accel_valid": ones, "dt_s": dt, "target": np.tile(g, (T, 1)), "target_valid": ones}
    return seq, g


def test_gyro_bias_converges_on_a_stationary_start():
    """Still IMU with a 0.02 rad/s bias per axis: the observable part of the bias (across gravity) is found within 3 s
    and the gravity estimate stays within 1°; without a bias state (p_b at its floor) the tilt drifts past 1°.

    The bias along gravity turns the body about the vertical, which the accelerometer cannot see: it stays at its prior 0.
    """
    seq, g = _stationary()
    b = E.stack_sequences([seq])
    bias = np.array([0.02, -0.02, 0.02])
    across = bias - (bias @ g) * g  # (3,) the observable part
    errs = {}
    for p_b in (0.05, 1e-5):
        ekf = E.GravityEKF(init_bias_std=p_b, accel_meas_std=1.0, gyro_bias_walk=1e-6)
        with torch.no_grad():
            m, _, _ = ekf.run64(*_inputs(b))
        est = m[0, :, 3:].numpy()
        est_across = est - np.outer(est @ g, g)
        errs[p_b] = (np.linalg.norm(est_across - across, axis=1), E.angle_error_deg(m[0, :, :3], b["target"][0]).numpy(), est @ g)
    bias_err, angle, along = errs[0.05]
    assert bias_err[600:].max() < 0.1 * np.linalg.norm(across), bias_err[[200, 400, 600, -1]]  # within 10 % from 3 s on
    assert bias_err[-1] < 0.02 * np.linalg.norm(across)
    assert angle.max() < 1.0, angle.max()
    assert abs(along[-1]) < 1e-3  # unobservable: not pulled away from the prior
    assert errs[1e-5][1][-1] > 1.0, errs[1e-5][1][-1]  # the control: an EKF that cannot learn the bias drifts


def test_noise_stays_in_its_physical_range():
    """Starting values outside NOISE_RANGES are clamped into them; no raw value (nor a wild fit) leaves them."""
    ekf = E.GravityEKF(accel_meas_std=1e6, gyro_noise_density=0.0, init_tilt_std=10.0, accel_gate=0.0)
    lo_hi = E.NOISE_RANGES
    inside = lambda k, v: lo_hi[k][0] * (1 - 1e-12) <= v <= lo_hi[k][1] * (1 + 1e-12)  # noqa: E731  (exp∘log rounding)
    for k, v in ekf.noise_values().items():
        assert inside(k, v), (k, v)
    assert ekf.noise_values()["accel_meas_std"] == pytest.approx(20.0, rel=1e-4)
    assert ekf.noise_values()["init_tilt_std"] <= np.pi
    for raw in (-1e3, 1e3):
        for k in E.NOISE_NAMES:
            v = float(E.squash(torch.tensor(raw, dtype=torch.float64), k))
            assert inside(k, v), (k, raw, v)
    for k, (lo, hi) in lo_hi.items():  # the round trip inside the range
        for v in (lo * 1.01, math.sqrt(lo * hi), hi * 0.99):
            assert float(E.squash(E.unsquash(torch.tensor(v, dtype=torch.float64), k), k)) == pytest.approx(v, rel=1e-9)
    seq, _ = _stationary(T=400)
    ekf, losses = E.fit([seq], E.GravityEKF(), epochs=2, chunk_ticks=10, lr=5.0)  # huge steps push raw values far
    for k, v in ekf.noise_values().items():
        assert inside(k, v) and math.isfinite(v), (k, v)
    assert all(math.isfinite(x) for x in losses)
    with pytest.raises(ValueError, match="unknown noise"):
        ekf.set_noise(accel_noise=1.0)


def test_nan_truth_and_burn_in_do_not_reach_the_loss(default_log):
    """NaN truth (flagged or not) scores nothing: losses, fit and autograd gradients stay finite; the burn-in drops the start."""
    seqs = [{k: v[:400].copy() for k, v in s.items()} for s in _sequences(default_log)[:2]]
    seqs[0]["target"][50:150] = np.nan  # a motion-capture dropout, still flagged valid
    seqs[1]["target"][:] = np.nan
    seqs[1]["target_valid"][:] = False
    ekf = E.GravityEKF.from_provenance(E.provenance_of(default_log))
    loss = E.sequence_loss(ekf, seqs)
    assert math.isfinite(loss) and loss > 0
    b = E.stack_sequences(seqs)
    assert not b["target_valid"][0, 50:150].any() and torch.isfinite(b["target"]).all()
    m, P, _ = ekf.run64(*_inputs(b))
    per = E._tick_losses(*E.gravity_output(m, P), b["target"], b["target_valid"], "mse")
    (per.sum() / b["target_valid"].sum()).backward()
    assert all(torch.isfinite(r.grad) and r.grad != 0 for r in ekf.raw())
    _, losses = E.fit(seqs, ekf, epochs=1, chunk_ticks=50)
    assert math.isfinite(losses[0])
    assert math.isnan(E.sequence_loss(ekf, seqs[1:]))  # nothing to score: NaN, not 0
    # the burn-in: wrong truth in the first second is not scored once burn_in_s covers it
    bad = {k: v.copy() for k, v in seqs[0].items()}
    bad["target"][:200] = -bad["target"][:200]
    clean = E.sequence_loss(ekf, [seqs[0]], burn_in_s=1.0)
    assert E.sequence_loss(ekf, [bad], burn_in_s=1.0) == pytest.approx(clean, rel=1e-12)
    assert E.sequence_loss(ekf, [bad]) > 10 * clean
    # a NaN input sample counts as missing instead of poisoning the state
    x = {k: v[:, :120].clone() for k, v in b.items()}
    x["accel"][0, 30] = float("nan")
    x["gyro"][1, 60] = float("inf")
    with torch.no_grad():
        mean, var, _ = ekf.run(*_inputs(x))
    assert torch.isfinite(mean).all() and torch.isfinite(var).all()


def test_segments_cover_the_sequence():
    """segment_sequences cuts into consecutive pieces of at most max_ticks; pieces under min_ticks are dropped."""
    seq, _ = _stationary(T=1050)
    pieces = E.segment_sequences([seq], 400, min_ticks=100)
    assert [len(p["dt_s"]) for p in pieces] == [400, 400, 250]
    np.testing.assert_array_equal(np.concatenate([p["accel"] for p in pieces]), seq["accel"])
    assert [len(p["dt_s"]) for p in E.segment_sequences([seq], 500, min_ticks=100)] == [500, 500]  # the 50-tick tail dropped
    assert E.segment_sequences([seq], 0)[0] is seq


@pytest.fixture(scope="module")
def regimes(tmp_path_factory):
    """Two noise regimes, 2 × 4 s each: quiet (an exact accelerometer, a poor gyro: 0.01 rad/s/√Hz) and busy (3 m/s² rms
    linear acceleration, a good gyro). The best σ_a of one is far from the other's."""
    root = tmp_path_factory.mktemp("regimes")
    exact_accel = {"accel_std": 0.0, "accel_bias_std": 0.0, "accel_bias_walk": 0.0, "gyro_noise_density": 0.01}
    quiet = generate("imu_motion", root / "quiet.h5", episodes=2, seed=21, duration_s=4.0, knobs={**exact_accel, "truth_decimation": 1})
    busy = generate("imu_motion", root / "busy.h5", episodes=2, seed=22, duration_s=4.0, knobs={"accel_std": 3.0, "truth_decimation": 1})
    return _sequences(quiet), _sequences(busy), busy


def test_fit_that_hurts_validation_keeps_the_start(regimes):
    """Tuned on quiet episodes, σ_a falls (trust the exact accelerometer); on busy validation episodes that is worse: the start stays, and it says so."""
    quiet, busy, busy_path = regimes
    ekf = E.GravityEKF.from_provenance(E.provenance_of(busy_path))  # start: right for the busy regime
    start = ekf.noise_values()
    ekf, report = E.fit_validated(quiet, busy, ekf, epochs=2, chunk_ticks=50, lr=0.1, burn_in_s=0.5)
    assert report["fitted_noise"]["accel_meas_std"] < 0.5 * start["accel_meas_std"], report["fitted_noise"]  # the fit did move
    assert report["train_losses"][-1] < report["train_losses"][0]  # and helped on its own episodes
    assert min(report["val_losses"][1:]) > report["val_losses"][0], report["val_losses"]
    assert report["status"] == "kept_start" and "did not lower the validation" in report["reason"]
    assert ekf.noise_values() == pytest.approx(start, rel=1e-12)
    assert E.sequence_loss(ekf, busy, burn_in_s=0.5) == pytest.approx(report["val_losses"][0], rel=1e-9)
    assert ekf.fit_summary_dict()["status"] == "kept_start"


def test_fit_that_helps_validation_is_kept(regimes):
    """From an over-trusted accelerometer (σ_a = 0.2 m/s²) on busy episodes, the fit lowers the held-out loss and is kept."""
    _, busy, _ = regimes
    ekf = E.GravityEKF(accel_meas_std=0.2)
    before = E.sequence_loss(ekf, busy[1:], burn_in_s=0.5)
    ekf, report = E.fit_validated(busy[:1], busy[1:], ekf, epochs=2, chunk_ticks=50, lr=0.1, burn_in_s=0.5)
    assert report["status"] == "kept_fit" and report["chosen_epoch"] >= 1, report
    after = E.sequence_loss(ekf, busy[1:], burn_in_s=0.5)
    assert after == pytest.approx(report["val_losses"][report["chosen_epoch"]], rel=1e-9)
    assert after < 0.8 * before, (before, after)
    assert ekf.noise_values()["accel_meas_std"] > 0.5
    summary = ekf.fit_summary_dict()
    assert summary["status"] == "kept_fit" and summary["chosen_val_loss"] < summary["start_val_loss"]


def test_family_fit_extra_validates_and_records(tmp_path):
    """fit_extra uses the validation episodes it is given, or holds out training episodes; the decision is logged and saved."""
    from seqsense.models.checkpoint import load_checkpoint, save_checkpoint

    path = generate("imu_motion", tmp_path / "imu.h5", episodes=3, seed=4, duration_s=3.0, knobs={"truth_decimation": 1})
    model, ds = _family(path, fit_epochs=1, fit_burn_in_s=0.5)
    lines = []
    model.fit_extra(ds, log=lines.append)  # no validation data: one of the three episodes is held out
    rep = model.fit_report
    assert rep["status"] in ("kept_start", "kept_fit") and "held out" in rep["validation"]
    assert rep["train_sequences"] == 2 and rep["val_sequences"] == 1
    assert any(("kept the values" if rep["status"] == "kept_fit" else "keeping the start noise") in s for s in lines), lines
    val = WindowDataset(episode_refs([path])[2:], model.config.window_spec(window=1))
    train = WindowDataset(episode_refs([path])[:2], model.config.window_spec(window=1))
    model.fit_extra(train, log=lines.append, val_dataset=val)
    assert model.fit_report["validation"] == "1 validation episode(s)" and model.fit_report["train_sequences"] == 2
    one = WindowDataset(episode_refs([path])[:1], model.config.window_spec(window=1))
    model.fit_extra(one, log=lines.append)  # a single episode: its last quarter, run from reset, validates
    assert model.fit_report["validation"].startswith("the last 25%") and model.fit_report["val_sequences"] == 1
    assert model.fit_report["status"] in ("kept_start", "kept_fit")
    save_checkpoint(model, tmp_path / "ekf")
    loaded = load_checkpoint(tmp_path / "ekf")
    assert loaded.ekf.fit_summary_dict() == model.ekf.fit_summary_dict()
    assert loaded.ekf.fit_summary_dict()["status"] == model.fit_report["status"]


def test_update_api_for_hybrids():
    """ekf_update with the Kalman gain passed back in, or a full R, equals `update`; ekf_predict with the physical Q equals `predict`."""
    g = torch.tensor([[0.1, -0.2, -0.97]], dtype=torch.float64)
    m0, P0 = E.accel_init(-E.GRAVITY_MPS2 * g / g.norm(), 0.1, 0.01)
    gyro, dt = torch.tensor([[0.3, -0.1, 0.2]], dtype=torch.float64), torch.tensor([0.005], dtype=torch.float64)
    m1, P1 = E.predict(m0, P0, gyro, dt, 1e-3, 1e-4)
    _, F, L = E.transition(m0, gyro, dt)
    m1b, P1b = E.ekf_predict(m0, P0, gyro, dt, E.process_noise(L, dt, 1e-3, 1e-4))
    torch.testing.assert_close((m1b, P1b), (m1, P1))
    z = torch.tensor([[0.5, 1.0, 9.6]], dtype=torch.float64)
    m2, P2, ll = E.update(m1, P1, z, 2.0, 1.0)
    r = E.measurement_noise(z, 2.0, 1.0)
    m3, P3, v, K, ll3 = E.ekf_update(m1, P1, z, r)
    torch.testing.assert_close((m3, P3, ll3), (m2, P2, ll))
    torch.testing.assert_close(v, z + E.GRAVITY_MPS2 * m1[:, :3])
    m4, P4, _, K4, _ = E.ekf_update(m1, P1, z, r[:, None, None] * torch.eye(3, dtype=torch.float64), gain=K)
    torch.testing.assert_close((m4, P4, K4), (m3, P3, K))
    m5, _, _, _, _ = E.ekf_update(m1, P1, z, r, gain=torch.zeros_like(K))  # a zero gain leaves the mean alone
    torch.testing.assert_close(m5, m1)
