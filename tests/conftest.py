"""Shared fixtures: tiny generated logs written with seqsense.log.LogWriter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqsense.log import LogWriter, seconds_to_ns


def write_tracking_log(path, episodes=6, ticks=40, image_size=16, rate_hz=20.0, noise=0.05, occlusion=0.0, seed=0, nan_at=None):
    """Write a log of a 2-D point moving smoothly, seen as a blob in `image_size`² frames.

    Streams per episode: `camera` (image, rate_hz; the blob vanishes during occlusions covering
    about `occlusion` of the ticks), `imu` (vector (2,) noisy velocity at twice the rate),
    `truth/pos` (vector (2,) in [0, 1], on the camera clock), `truth/side` (label: x > 0.5).
    `nan_at=(episode, index)` puts a NaN into that episode's `imu` stream.
    """
    rng = np.random.default_rng(seed)
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    with LogWriter(path, provenance={"scenario": "tiny-tracking", "inputs": ["camera"], "target": "truth/pos"}) as log:
        for e in range(episodes):
            ep = log.episode(f"ep_{e:03d}")
            t = np.arange(ticks) / rate_hz
            w = rng.uniform(0.8, 2.0, 2)
            phi = rng.uniform(0, 2 * np.pi, 2)
            pos = 0.5 + 0.3 * np.sin(w[None] * t[:, None] + phi[None])  # (T, 2)
            vel = 0.3 * w[None] * np.cos(w[None] * t[:, None] + phi[None])
            blob = np.exp(-((xx[None] - pos[:, :1, None] * (s - 1)) ** 2 + (yy[None] - pos[:, 1:, None] * (s - 1)) ** 2) / 3.0)
            hidden = np.zeros(ticks, bool)
            if occlusion > 0:
                n_occ = max(1, int(occlusion * ticks / 8))
                for start in rng.integers(2, max(3, ticks - 8), n_occ):
                    hidden[start : start + 8] = True
            img = blob * ~hidden[:, None, None] + noise * rng.standard_normal(blob.shape)
            frames = (np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None]  # (T, H, W, 1)
            ep.write_stream("camera", "image", seconds_to_ns(t), frames, rate_hz=rate_hz)
            t_imu = np.arange(2 * ticks) / (2 * rate_hz)
            imu = np.repeat(vel, 2, axis=0) + 0.05 * rng.standard_normal((2 * ticks, 2))
            if nan_at is not None and nan_at[0] == e:
                imu[nan_at[1]] = np.nan
            ep.write_stream("imu", "vector", seconds_to_ns(t_imu), imu.astype(np.float32), rate_hz=2 * rate_hz, allow_nan=nan_at is not None)
            ep.write_stream("truth/pos", "vector", seconds_to_ns(t), pos.astype(np.float32), rate_hz=rate_hz)
            ep.write_stream("truth/side", "label", seconds_to_ns(t), (pos[:, 0] > 0.5).astype(np.int64), rate_hz=rate_hz)
    return path


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same torch seed and one thread (two threads fight over a shared 2-core machine)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_log(tmp_path_factory):
    """A 6-episode, 40-tick tracking log with 16×16 frames (written once per session)."""
    return write_tracking_log(tmp_path_factory.mktemp("logs") / "tiny.h5")


@pytest.fixture
def make_log(tmp_path):
    """Factory writing a tracking log into the test's tmp dir: make_log(name, **knobs) -> path."""

    def make(name="log.h5", **knobs):
        return write_tracking_log(tmp_path / name, **knobs)

    return make
