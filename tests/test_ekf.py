"""The gravity-direction EKF (`seqsense.models.ekf`) on generated `imu_motion` logs: sign convention,
accuracy against the memoryless and gyro-only estimates, fitting, step/run parity, ONNX parity,
gyro-bias convergence, and the model family `ekf` (its config, the cells it refuses, its twin)."""

from __future__ import annotations

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
    fd = torch.stack([getattr(ekf, f"log_{k}").grad for k in E.NOISE_NAMES])
    ekf.zero_grad()
    m, P, _ = ekf.run64(*_inputs(b))
    per = E._tick_losses(*E.gravity_output(m, P), b["target"], b["target_valid"], "mse")
    (per.sum() / b["target_valid"].sum()).backward()
    auto = torch.stack([getattr(ekf, f"log_{k}").grad for k in E.NOISE_NAMES])
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
    streamed = np.stack([pred.step(t).mean for _, t in zip(range(50), ds.iter_ticks(0))])
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
        assert report["failure"] is None and report["max_rel_err"] < 1e-4, report


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
        streamed = np.stack([pred.step(t).mean for t in ds.iter_ticks(k)])
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
    assert report["failure"] is None and report["max_rel_err"] < 1e-4, report
