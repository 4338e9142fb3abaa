"""Causal multi-rate alignment against hand-computed cases, windows, splits, normalization, workers."""

import numpy as np
import pytest

from seqsense.dataset import (
    WindowDataset,
    WindowSpec,
    compute_normalization,
    episode_refs,
    make_loader,
    split_episodes,
)
from seqsense.errors import ConfigError, SeqsenseError
from seqsense.log import LogWriter

MS = 1_000_000  # ns per millisecond


def write_multirate(path, episodes=1, offset=0.0):
    """camera 20 Hz with frame 3 dropped, imu 200 Hz, gps 2.5 Hz, truth 20 Hz; values encode the index."""
    with LogWriter(path) as w:
        for e in range(episodes):
            ep = w.episode(f"ep_{e:03d}")
            t_cam = np.delete(np.arange(0, 1000, 50), 3) * MS  # 19 frames, 150 ms missing
            frames = np.zeros((len(t_cam), 2, 2, 1), np.uint8)
            frames[:, 0, 0, 0] = np.delete(np.arange(20), 3)
            ep.write_stream("camera", "image", t_cam, frames, rate_hz=20)
            t_imu = np.arange(0, 1000, 5) * MS
            ep.write_stream("imu", "vector", t_imu, np.stack([np.arange(200), -np.arange(200)], 1) + offset + e, rate_hz=200)
            t_gps = np.arange(0, 1000, 400) * MS
            ep.write_stream("gps", "vector", t_gps, np.arange(3)[:, None] * 10.0, rate_hz=2.5)
            t_truth = np.arange(0, 1000, 50) * MS
            ep.write_stream("truth/x", "vector", t_truth, np.arange(20)[:, None] * 1.0, rate_hz=20)
            ep.write_stream("truth/cls", "label", np.array([0, 333, 777]) * MS, np.array([2, 0, 1]), rate_hz=3)
    return path


def test_latest_sample_and_age_across_rates(tmp_path):
    path = write_multirate(tmp_path / "m.h5")
    spec = WindowSpec(inputs=("camera", "imu", "gps"), target="truth/x", window=20)
    w = WindowDataset(episode_refs([path]), spec).sequence(0)
    # Clock = truth at 20 Hz: ticks 0, 50, ..., 950 ms.
    assert w["t_ns"].tolist() == [i * 50 * MS for i in range(20)]
    # Frame 3 (150 ms) was dropped: tick 3 sees frame 2, 50 ms old.
    assert w["camera"][:6, 0, 0, 0].tolist() == [0, 1, 2, 2, 4, 5]
    np.testing.assert_allclose(w["camera_age_s"][:6], [0, 0, 0, 0.05, 0, 0], atol=1e-7)
    # imu at 200 Hz: latest sample at tick k*50 ms is index 10k, age 0.
    assert w["imu"][:, 0].tolist() == [10.0 * k for k in range(20)]
    # gps at 2.5 Hz: samples at 0, 400, 800 ms.
    assert w["gps"][:, 0].tolist() == [0.0] * 8 + [10.0] * 8 + [20.0] * 4
    np.testing.assert_allclose(w["gps_age_s"][7:10], [0.35, 0.0, 0.05], atol=1e-7)
    assert w["target"][:, 0].tolist() == list(range(20)) and w["target_valid"].all()
    assert not w["tick_is_pad"].any()
    np.testing.assert_allclose(w["dt_s"], [0] + [0.05] * 19, atol=1e-7)


def test_irregular_clock_interpolates_target_and_stays_causal(tmp_path):
    path = write_multirate(tmp_path / "m.h5")
    # Irregular clock: the camera's own timestamps (with the 100 -> 200 ms jump).
    spec = WindowSpec(inputs=("imu",), target="truth/x", window=19, clock="camera")
    w = WindowDataset(episode_refs([path]), spec).sequence(0)
    assert w["t_ns"][2:5].tolist() == [100 * MS, 200 * MS, 250 * MS]
    np.testing.assert_allclose(w["dt_s"][3], 0.1, atol=1e-7)
    # Fixed-rate clock at 30 Hz between truth samples: target interpolated linearly, imu causal.
    spec = WindowSpec(inputs=("imu", "gps"), target="truth/x", window=5, rate_hz=30)
    w = WindowDataset(episode_refs([path]), spec).sequence(0)
    t_ms = w["t_ns"] / MS
    np.testing.assert_allclose(t_ms[:4], [0, 33.333333, 66.666667, 100], atol=1e-5)
    valid = w["target_valid"]
    np.testing.assert_allclose(w["target"][valid, 0], t_ms[valid] / 50, atol=1e-5)
    assert not valid[t_ms > 950].any()  # beyond the last truth sample: no target
    expected_imu = np.floor(t_ms / 5 + 1e-9)  # latest imu sample index at or before each tick
    np.testing.assert_allclose(w["imu"][:, 0], expected_imu)
    np.testing.assert_allclose(w["imu_age_s"], (t_ms - expected_imu * 5) / 1000, atol=1e-6)


def test_packed_high_rate_stream(tmp_path):
    path = write_multirate(tmp_path / "m.h5")
    spec = WindowSpec(inputs=("imu",), target="truth/x", window=3, packed={"imu": 12})
    w = WindowDataset(episode_refs([path]), spec).sequence(0)
    # Tick 0 (t=0): only imu sample 0 exists.
    assert w["imu_mask"][0].tolist() == [False] * 11 + [True] and w["imu"][0, -1, 0] == 0
    # Tick 1 (50 ms): samples in (0, 50] ms are indices 1..10, oldest first, newest last.
    assert w["imu_mask"][1].tolist() == [False] * 2 + [True] * 10
    assert w["imu"][1, 2:, 0].tolist() == list(range(1, 11))
    np.testing.assert_allclose(w["imu_age_s"][1, 2:], np.arange(45, -1, -5) / 1000, atol=1e-7)
    # With K=4, the 10 samples are cut to the newest 4.
    spec = WindowSpec(inputs=("imu",), target="truth/x", window=3, packed={"imu": 4})
    w = WindowDataset(episode_refs([path]), spec).sequence(0)
    assert w["imu"][1, :, 0].tolist() == [7, 8, 9, 10] and w["imu_mask"][1].all()


def test_label_target_held_and_stream_not_yet_started(tmp_path):
    path = write_multirate(tmp_path / "m.h5")
    spec = WindowSpec(inputs=("gps",), target="truth/cls", window=20, clock="truth/x")
    w = WindowDataset(episode_refs([path]), spec).sequence(0)
    t_ms = w["t_ns"] / MS
    expected = np.where(t_ms < 333, 2, np.where(t_ms < 777, 0, 1))
    assert w["target"].tolist() == expected.tolist() and w["target"].dtype == np.int64
    spec = WindowSpec(inputs=("gps",), target="truth/x", window=3, clock="imu", max_age_s=0.3)
    w = WindowDataset(episode_refs([path]), spec).sequence(0)
    t_ms = w["t_ns"] / MS
    assert not w["gps_valid"][(t_ms > 300) & (t_ms < 400)].any()  # stale beyond max_age_s
    assert w["gps_valid"][(t_ms >= 400) & (t_ms <= 700)].all()


def test_windows_padding_and_counts(tmp_path):
    path = write_multirate(tmp_path / "m.h5", episodes=2)
    ds = WindowDataset(episode_refs([path]), WindowSpec(inputs=("imu",), target="truth/x", window=8, stride=4))
    assert len(ds) == 2 * 4  # starts 0, 4, 8, 12 for 20 ticks per episode
    item = ds[3]
    assert item["t_ns"][0].item() == 12 * 50 * MS and not item["tick_is_pad"].any()
    seq_idx = ds.index(0)
    w = seq_idx.read(16, 8)  # runs 4 ticks past the end
    assert w["tick_is_pad"].tolist() == [False] * 4 + [True] * 4
    assert not w["target_valid"][4:].any()
    with pytest.raises(SeqsenseError, match="fewer than the window of 50"):
        WindowDataset(episode_refs([path]), WindowSpec(inputs=("imu",), target="truth/x", window=50))


def test_missing_stream_and_bad_spec(tmp_path):
    path = write_multirate(tmp_path / "m.h5")
    with pytest.raises(SeqsenseError, match=r"missing stream\(s\) \['lidar'\].*imu"):
        WindowDataset(episode_refs([path]), WindowSpec(inputs=("lidar",), target="truth/x"))
    with pytest.raises(ConfigError, match="packed stream"):
        WindowSpec(inputs=("imu",), target="truth/x", packed={"gps": 3})
    with pytest.raises(ConfigError, match="image streams cannot|cannot also be an input"):
        WindowSpec(inputs=("imu",), target="imu")


def test_splits_are_by_episode_and_reproducible(tmp_path):
    refs = episode_refs([write_multirate(tmp_path / "a.h5", 5), write_multirate(tmp_path / "b.h5", 5)])
    train, val = split_episodes(refs, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert split_episodes(refs, 0.2, seed=3) == (train, val)
    assert split_episodes(refs, 0.2, seed=4) != (train, val)


def test_normalization_uses_given_split_only(tmp_path):
    path = write_multirate(tmp_path / "a.h5", 4)
    refs = episode_refs([path])
    spec = WindowSpec(inputs=("imu",), target="truth/x", window=5)
    stats = compute_normalization(WindowDataset(refs[:2], spec))
    imu = np.stack([np.arange(200), -np.arange(200)], 1)
    seen = np.concatenate([imu[::10] + e for e in range(2)])  # what the 20 Hz clock sees, episodes 0-1
    np.testing.assert_allclose(stats["imu"]["mean"], seen.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["imu"]["std"], seen.std(0), rtol=1e-4)
    np.testing.assert_allclose(stats["target"]["mean"], [9.5], rtol=1e-6)


def test_loader_many_files_and_workers(tmp_path):
    refs = episode_refs([write_multirate(tmp_path / "a.h5", 2), write_multirate(tmp_path / "b.h5", 2, offset=100)])
    spec = WindowSpec(inputs=("camera", "imu"), target="truth/x", window=5)
    ds = WindowDataset(refs, spec)
    direct = [ds[i] for i in range(len(ds))]
    for workers in (0, 2):
        loader = make_loader(ds, batch_size=3, shuffle=False, num_workers=workers)
        batches = list(loader)
        imu = np.concatenate([b["imu"].numpy() for b in batches])
        assert imu.shape == (len(ds), 5, 2)
        np.testing.assert_array_equal(imu, np.stack([d["imu"].numpy() for d in direct]))
        cams = np.concatenate([b["camera"].numpy() for b in batches])
        np.testing.assert_array_equal(cams, np.stack([d["camera"].numpy() for d in direct]))


def test_iter_ticks_matches_sequence(tmp_path):
    path = write_multirate(tmp_path / "a.h5")
    ds = WindowDataset(episode_refs([path]), WindowSpec(inputs=("camera", "gps"), target="truth/x", window=4))
    seq = ds.sequence(0)
    ticks = list(ds.iter_ticks(0, block=7))
    assert len(ticks) == 20
    for key in seq:
        np.testing.assert_array_equal(np.stack([t[key] for t in ticks]), seq[key])
