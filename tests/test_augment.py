"""Rotation augmentation (seqsense.augment): uniform rotations, what turns, isotropic normalization, and
that it teaches a per-frame model orientations the training logs never visit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqsense.augment import Rotator, isotropic_normalization, parse_slices, random_rotations, rotate_batch
from seqsense.dataset import StreamInfo, WindowDataset, episode_refs
from seqsense.errors import ConfigError
from seqsense.log import LogWriter, seconds_to_ns


def test_random_rotations_are_rotations_and_seeded():
    R = random_rotations(500, torch.Generator().manual_seed(3))
    eye = torch.eye(3, dtype=torch.float64).expand(500, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(500, dtype=torch.float64), atol=1e-12)
    assert torch.equal(R, random_rotations(500, torch.Generator().manual_seed(3)))
    # uniform on SO(3): the image of a fixed axis covers the sphere evenly (mean near 0, each component's variance 1/3)
    v = (R @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).numpy()
    assert np.abs(v.mean(0)).max() < 0.1 and np.abs(v.var(0) - 1 / 3).max() < 0.05


def test_rotate_batch_turns_slices_and_target_together_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 5, 3, generator=g)  # accel-like
    w = torch.randn(4, 5, 3, generator=g)  # gyro-like
    other = torch.randn(4, 5, 2, generator=g)
    batch = {"imu": torch.cat([a, w, other], -1), "target": -a / a.norm(dim=-1, keepdim=True), "imu_valid": torch.ones(4, 5, dtype=torch.bool)}
    R = random_rotations(4, torch.Generator().manual_seed(1))
    out = rotate_batch(batch, R, [("imu", slice(0, 3)), ("imu", slice(3, 6))])
    a2, w2 = out["imu"][..., 0:3], out["imu"][..., 3:6]
    torch.testing.assert_close(out["target"], -a2 / a2.norm(dim=-1, keepdim=True))  # the relation survives the turn
    torch.testing.assert_close(w2.norm(dim=-1), w.norm(dim=-1))
    torch.testing.assert_close(w2[2, 1], (R[2].float() @ w[2, 1]))
    assert torch.equal(out["imu"][..., 6:], other) and torch.equal(batch["imu"][..., 0:3], a)  # input untouched
    # packed (B, T, K, 6): every sample of a window turns by the window's rotation
    packed = {"imu": torch.randn(4, 5, 3, 6, generator=g), "target": torch.randn(4, 5, 3, generator=g)}
    out = rotate_batch(packed, R, [("imu", slice(3, 6))])
    torch.testing.assert_close(out["imu"][1, 2, 0, 3:6], R[1].float() @ packed["imu"][1, 2, 0, 3:6])


def test_stateful_rows_keep_their_rotation_until_they_restart():
    rot = Rotator([("imu", slice(0, 3))], seed=0)
    batch = {"imu": torch.ones(3, 2, 3), "target": torch.ones(3, 2, 3)}
    first = rot(batch, 0, torch.tensor([True, True, True]))
    second = rot(batch, 1, torch.tensor([False, True, False]))
    assert torch.equal(second["imu"][0], first["imu"][0]) and torch.equal(second["imu"][2], first["imu"][2])
    assert not torch.allclose(second["imu"][1], first["imu"][1])


def test_isotropic_normalization_and_slice_checks():
    norm = {"imu": {"mean": [0.0, 0.0, -9.0, 1.0], "std": [1.0, 2.0, 0.5, 3.0]}, "target": {"mean": [0.0, 0.0, 1.0], "std": [0.1, 0.1, 0.1]}}
    out = isotropic_normalization(norm, [("imu", slice(0, 3))])
    rms = np.sqrt((1 + 4 + 0.25 + 81) / 3)
    np.testing.assert_allclose(out["imu"]["mean"], [0, 0, 0, 1.0])
    np.testing.assert_allclose(out["imu"]["std"], [rms, rms, rms, 3.0])
    np.testing.assert_allclose(out["target"]["std"], [np.sqrt(1.03 / 3)] * 3)
    assert norm["imu"]["mean"][2] == -9.0  # the input dict is not changed
    streams = {"imu": StreamInfo(kind="vector", shape=(6,), rate_hz=100.0),
               "t": StreamInfo(kind="vector", shape=(3,), rate_hz=100.0),
               "t2": StreamInfo(kind="vector", shape=(2,), rate_hz=100.0)}
    assert parse_slices(["imu[3:6]"], ("imu",), streams, "t", streams["t"]) == [("imu", slice(3, 6))]
    with pytest.raises(ConfigError, match="3 values"):
        parse_slices(["imu[0:2]"], ("imu",), streams, "t", streams["t"])
    with pytest.raises(ConfigError, match="not an input"):
        parse_slices(["gyro"], ("imu",), streams, "t", streams["t"])
    with pytest.raises(ConfigError, match="3-D vector"):
        parse_slices(["imu[0:3]"], ("imu",), streams, "t2", streams["t2"])


def _tilt_log(path, tilts, seed: int, episodes: int = 4, duration_s: float = 6.0):
    """An IMU at 50 Hz held at small random tilts around `tilts` (unit gravity directions), target g = −a/|a|."""
    rng = np.random.default_rng(seed)
    with LogWriter(path, provenance={"scenario": "tilts"}) as log:
        for e in range(episodes):
            t = np.arange(0.0, duration_s, 0.02)
            base = np.asarray(tilts[e % len(tilts)], float)
            g = base + 0.25 * rng.standard_normal((len(t), 3)).cumsum(0) / np.sqrt(np.arange(1, len(t) + 1))[:, None]
            g /= np.linalg.norm(g, axis=1, keepdims=True)
            acc = -9.81 * g + 0.05 * rng.standard_normal(g.shape)
            ep = log.episode(f"ep_{e:03d}")
            ep.write_stream("imu", "vector", seconds_to_ns(t), acc.astype(np.float32), rate_hz=50.0)
            ep.write_stream("truth/g", "vector", seconds_to_ns(t), g.astype(np.float32), rate_hz=50.0)


def _angle_deg(model, log) -> float:
    ds = WindowDataset(episode_refs([log]), model.config.window_spec(window=1))
    errs = []
    for k in range(len(ds.episodes)):
        seq = ds.sequence(k)
        p, y = model.predict(seq)["mean"], seq["target"]
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        errs.append(np.degrees(np.arccos(np.clip((p * y).sum(1), -1, 1))))
    return float(np.sqrt(np.mean(np.concatenate(errs) ** 2)))


def test_augmentation_teaches_orientations_the_training_logs_never_visit(tmp_path):
    """Trained near 'z down' only and tested lying on its side, a per-frame model without the augmentation
    fails; with it the same model, data, steps and seed learns g = −a/|a| for every orientation."""
    from seqsense.train import train

    train_log, test_log = tmp_path / "train.h5", tmp_path / "test.h5"
    _tilt_log(train_log, [(0, 0, -1), (0.3, 0, -1), (0, -0.3, -1)], seed=0, episodes=6)
    _tilt_log(test_log, [(1, 0, 0), (0, -1, 0.2)], seed=1)
    base = {"steps": 300, "hidden": 16, "window": 16, "batch_size": 16, "seed": 0, "val_every": 300}
    got = {}
    for name, extra in (("plain", {}), ("turned", {"rotate_augment": "imu"})):
        res = train("framewise", [train_log], {**base, **extra}, tmp_path / name, inputs=["imu"], target="truth/g", progress=False, log=lambda *_: None)
        got[name] = _angle_deg(res.model, test_log)
    assert got["turned"] < 15.0 and got["plain"] > 2 * got["turned"], got
