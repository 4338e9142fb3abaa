"""One robot-facing contract: the torch predictor (eager and compiled) and the exported runtime agree step for step.

Every registered family, as a tiny untrained model on a generated multi-rate log, is driven by the
same raw observation sequence through `reset()` / `step(t_ns, observations)`: samples with their
own stamps (`<s>_t_ns`), dropped samples (`None`, or rows missing from a packed stream), NaN samples,
and a stream that starts late and goes stale past `max_age_s`. The three predictors must build the
same ticks and give the same outputs to the export self-check's tolerance (`seqsense.export.check`).
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

import seqsense.models  # noqa: F401  (registers every family)
from seqsense import runtime
from seqsense.config import apply_overrides
from seqsense.dataset import WindowDataset, compute_normalization, episode_refs
from seqsense.errors import SeqsenseError
from seqsense.export import export_model
from seqsense.export.check import PARITY_ATOL, PARITY_RTOL, compare
from seqsense.log import LogWriter, seconds_to_ns
from seqsense.models import MODELS

TARGET = "truth/g"
SETUPS = {
    "latest": {},
    "packed": {"packed": {"imu": 4}},
}
KNOBS = {"hidden": 8, "frame_channels": 2, "window": 8, "max_age_s": 0.3,
         "gyro_stream": "imu[0:3]", "accel_stream": "imu[3:6]"}  # the gravity filters read the 6-D imu as gyro + accel


def _write_log(path, episodes: int = 2, duration_s: float = 2.0, seed: int = 0) -> dict:
    """A log of `imu` (6,) ~100 Hz (gyro, accel), `gps` (2,) at 5 Hz from 0.6 s on, `truth/g` (3,) at 20 Hz; returns the raw samples."""
    rng = np.random.default_rng(seed)
    raw = {}
    with LogWriter(path, provenance={"scenario": "tiny-contract"}) as log:
        for e in range(episodes):
            name = f"ep_{e:03d}"
            ep = log.episode(name)
            t = np.arange(0, duration_s, 0.05)
            tilt = 0.3 * np.sin(1.5 * t + e)
            g = np.stack([np.sin(tilt), np.zeros_like(tilt), -np.cos(tilt)], 1)  # gravity direction in the body frame
            t_imu = np.sort(np.arange(0, duration_s, 0.01) + rng.uniform(0, 0.003, int(round(duration_s / 0.01))))
            tilt_imu = 0.3 * np.sin(1.5 * t_imu + e)
            gyro = np.stack([np.zeros_like(t_imu), 0.45 * np.cos(1.5 * t_imu + e), np.zeros_like(t_imu)], 1)
            accel = -9.81 * np.stack([np.sin(tilt_imu), np.zeros_like(tilt_imu), -np.cos(tilt_imu)], 1)
            imu = np.concatenate([gyro, accel], 1) + 0.05 * rng.standard_normal((len(t_imu), 6))
            t_gps = np.arange(0.6, duration_s, 0.2)
            gps = rng.standard_normal((len(t_gps), 2))
            streams = {"imu": (seconds_to_ns(t_imu), imu.astype(np.float32), 100.0),
                       "gps": (seconds_to_ns(t_gps), gps.astype(np.float32), 5.0),
                       TARGET: (seconds_to_ns(t), g.astype(np.float32), 20.0)}
            for s, (ts, x, rate) in streams.items():
                ep.write_stream(s, "vector", ts, x, rate_hz=rate)
            raw[name] = streams
    return raw


def observation_sequence(streams: dict, packed: dict, seed: int = 0) -> list[tuple[int, dict]]:
    """(t_ns, observations) per clock tick as a robot loop sees them, with drops and NaN samples mixed in."""
    rng = np.random.default_rng(seed)
    ticks = streams[TARGET][0]
    out, prev = [], None
    for t in ticks:
        obs = {}
        for s in ("imu", "gps"):
            ts, x, _ = streams[s]
            idx = np.flatnonzero((ts <= t) if prev is None else (ts > prev) & (ts <= t))
            idx = idx[rng.random(len(idx)) > 0.15]  # dropped samples
            if not len(idx):
                obs[s] = None
                continue
            if s in packed:
                rows = x[idx].copy()
                rows[rng.random(len(idx)) < 0.1] = np.nan  # a bad reading in the burst
                obs[s], obs[f"{s}_t_ns"] = rows, ts[idx]
            else:
                sample = x[idx[-1]].copy()
                if idx[-1] % 5 == 3:  # a bad reading
                    sample[0] = np.nan
                obs[s], obs[f"{s}_t_ns"] = sample, int(ts[idx[-1]])
        out.append((int(t), obs))
        prev = t
    return out


@pytest.fixture(scope="module")
def contract_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "contract.h5"
    return path, _write_log(path)


@pytest.fixture(scope="module")
def built(contract_log, tmp_path_factory):
    """(family, setup) -> (model, export folder) or None where the family refuses the setup; built once per module."""
    path, _ = contract_log
    root = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(family: str, setup: str):
        if (family, setup) not in cache:
            cache[family, setup] = _build(family, setup, path, root)
        return cache[family, setup]

    yield get
    shutil.rmtree(root, ignore_errors=True)


def _build(family: str, setup: str, log_path, root):
    model_cls, config_cls = MODELS[family]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    knobs = {k: v for k, v in {**KNOBS, **SETUPS[setup]}.items() if k in fields}
    config = apply_overrides(config_cls(), {"inputs": ("imu", "gps"), "target": TARGET, **knobs})
    ds = WindowDataset(episode_refs([log_path]), config.window_spec(window=1))
    streams = ds.stream_info()
    torch.manual_seed(0)
    try:
        model = model_cls(config, streams, compute_normalization(ds)).eval()
    except SeqsenseError:
        return None
    folder = root / f"{family}_{setup}"
    export_model(model, folder, {"extra": {"data": [str(log_path)]}}, parity_ticks=20, log=lambda m: None)
    return model, folder


def _drive(predictors: dict, raw: dict, packed: dict) -> dict:
    """Step every predictor through every episode's observation sequence; asserts equal ticks and outputs."""
    worst = {name: 0.0 for name in predictors}
    ref_name = next(iter(predictors))
    for e, (episode, streams) in enumerate(sorted(raw.items())):
        for p in predictors.values():
            p.reset()
        for i, (t, obs) in enumerate(observation_sequence(streams, packed, seed=e)):
            outs = {name: p.step(t, obs) for name, p in predictors.items()}
            ref_tick, ref = predictors[ref_name].tick, outs[ref_name]
            for name, p in predictors.items():
                for key, v in ref_tick.items():
                    np.testing.assert_array_equal(p.tick[key], v, err_msg=f"{name} tick {key} at {episode} tick {i}")
                got = outs[name]
                pairs = [(got.probs, ref.probs)] if ref.probs is not None else [(got.mean, ref.mean), (got.var, ref.var)]
                for a, b in pairs:
                    err, rel, ok = compare(a, b)
                    assert ok, (f"{name} vs {ref_name} at {episode} tick {i}: {np.asarray(a).tolist()} vs {np.asarray(b).tolist()} "
                                f"(rtol {PARITY_RTOL}, atol {PARITY_ATOL})")
                    assert np.isfinite(a).all(), f"{name}: non-finite output at {episode} tick {i}"
                    worst[name] = max(worst[name], rel)
    return worst


def _exercised(pred, raw: dict, packed: dict) -> None:
    """The sequence hit what it is meant to: rejected NaN samples, the late/stale stream invalid, valid later."""
    gps_valid = []
    for e, (_, streams) in enumerate(sorted(raw.items())):
        pred.reset()
        for t, obs in observation_sequence(streams, packed, seed=e):
            pred.step(t, obs)
            gps_valid.append(bool(pred.tick["gps_valid"][0]))
    assert pred.rejected["imu"] > 0 and pred.rejected["gps"] > 0
    assert not all(gps_valid) and any(gps_valid)
    assert not gps_valid[0]  # gps starts late


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("family", sorted(MODELS))
def test_eager_and_runtime_agree_on_raw_observations(family, setup, built, contract_log):
    got = built(family, setup)
    if got is None:
        pytest.skip(f"{family} does not take the {setup} setup")
    model, folder = got
    _, raw = contract_log
    packed = dict(model.config.packed)
    onnx = runtime.load(folder)
    worst = _drive({"eager": model.predictor(), "onnx": onnx}, raw, packed)
    assert worst["onnx"] <= 1e-3  # relative error (compare() above holds it to rtol 1e-4 + atol 1e-6)
    _exercised(onnx, raw, packed)


def _compile_available() -> bool:
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _compile_available(), reason="torch.compile needs a C++ compiler on PATH")
@pytest.mark.parametrize("family", sorted(MODELS))
def test_compiled_predictor_agrees_on_raw_observations(family, built, contract_log):
    got = built(family, "latest") or built(family, "packed")
    if got is None:
        pytest.skip(f"{family} takes neither setup")
    model, folder = got
    _, raw = contract_log
    packed = dict(model.config.packed)
    compiled = model.predictor(compile=True)
    try:
        compiled.reset()
        compiled.step(*observation_sequence(next(iter(raw.values())), packed)[0])
    except Exception as e:  # the inductor backend raises its own types when the toolchain is unusable
        if "compil" in type(e).__name__.lower() or "inductor" in str(type(e)).lower():
            pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        raise
    _drive({"eager": model.predictor(), "compiled": compiled, "onnx": runtime.load(folder)}, raw, packed)


def _readme_loop():
    """The `run` function of the README's robot-stack loop, executed as the README prints it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Into your robot stack", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    definition = code.split("\n\n", 1)[0]  # the loop itself; the rest loads a run dir and an export
    assert definition.startswith("def run(")
    scope: dict = {}
    exec(definition, scope)
    return scope["run"]


def test_readme_loop_runs_unchanged_with_torch_and_runtime(contract_log, tmp_path):
    path, raw = contract_log
    model_cls, config_cls = MODELS["rnn"]
    config = apply_overrides(config_cls(), {"inputs": ("imu",), "target": TARGET, **{k: v for k, v in KNOBS.items() if k in ("hidden", "window", "max_age_s")}})
    ds = WindowDataset(episode_refs([path]), config.window_spec(window=1))
    torch.manual_seed(0)
    model = model_cls(config, ds.stream_info(), compute_normalization(ds)).eval()
    export_model(model, tmp_path / "rnn", {"extra": {"data": [str(path)]}}, parity_ticks=10, log=lambda m: None)
    run = _readme_loop()
    streams = raw[sorted(raw)[0]]
    sensor_ticks = [(t, obs["imu"], obs.get("imu_t_ns"), None) for t, obs in observation_sequence(streams, {})]
    eager = list(run(model.predictor(), sensor_ticks))
    onnx = list(run(runtime.load(tmp_path / "rnn"), sensor_ticks))
    assert len(eager) == len(onnx) == len(sensor_ticks)
    for (m1, v1), (m2, v2) in zip(eager, onnx):
        assert compare(m2, m1)[2] and compare(v2, v1)[2]
