"""seqsense.ticks: the causal tick builder reproduces the dataset's ticks from raw samples, and its rules hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqsense.dataset import WindowDataset, WindowSpec, episode_refs
from seqsense.log import LogWriter, open_log, seconds_to_ns
from seqsense.ticks import NS_PER_S, ObservationError, StreamSpec, TickBuilder

ROOT = Path(__file__).resolve().parents[1]


def write_multirate_log(path, episodes: int = 2, duration_s: float = 2.0, seed: int = 0):
    """A log of streams at different rates: `imu` (2,) ~100 Hz with jittered stamps, `gps` (3,) at 4 Hz from
    0.55 s on (a late stream), `camera` (4, 4, 1) at 10 Hz with dropped frames, `truth/pos` (2,) at 20 Hz."""
    rng = np.random.default_rng(seed)
    with LogWriter(path, provenance={"scenario": "tiny-multirate"}) as log:
        for e in range(episodes):
            ep = log.episode(f"ep_{e:03d}")
            t_imu = np.sort(np.arange(0, duration_s, 0.01) + rng.uniform(0, 0.004, int(round(duration_s / 0.01))))
            ep.write_stream("imu", "vector", seconds_to_ns(t_imu), rng.standard_normal((len(t_imu), 2)).astype(np.float32), rate_hz=100.0)
            t_gps = np.arange(0.55, duration_s, 0.25)
            ep.write_stream("gps", "vector", seconds_to_ns(t_gps), rng.standard_normal((len(t_gps), 3)).astype(np.float32), rate_hz=4.0)
            t_cam = np.arange(0, duration_s, 0.1)
            keep = rng.random(len(t_cam)) > 0.3  # dropped frames leave gaps longer than max_age_s
            keep[0] = True
            frames = rng.integers(0, 256, (int(keep.sum()), 4, 4, 1), dtype=np.uint8)
            ep.write_stream("camera", "image", seconds_to_ns(t_cam[keep]), frames, rate_hz=10.0)
            t = np.arange(0, duration_s, 0.05)
            ep.write_stream("truth/pos", "vector", seconds_to_ns(t), rng.standard_normal((len(t), 2)).astype(np.float32), rate_hz=20.0)
    return path


@pytest.fixture(scope="module")
def multirate_log(tmp_path_factory):
    return write_multirate_log(tmp_path_factory.mktemp("ticks") / "multirate.h5")


def raw_observations(episode, ticks: np.ndarray, spec: WindowSpec):
    """Per tick, what a robot loop would pass: the samples stamped in (previous tick, tick], with their stamps."""
    raw = {s: (np.asarray(episode.stream(s).t), episode.stream(s).data[()]) for s in spec.inputs}
    prev = None
    for t in ticks:
        obs = {}
        for s, (ts, x) in raw.items():
            sel = (ts <= t) if prev is None else (ts > prev) & (ts <= t)
            idx = np.flatnonzero(sel)
            if s in spec.packed:
                obs[s], obs[f"{s}_t_ns"] = (x[idx], ts[idx]) if len(idx) else (None, None)
            elif len(idx):
                obs[s], obs[f"{s}_t_ns"] = x[idx[-1]], int(ts[idx[-1]])
            else:
                obs[s] = None
        prev = t
        yield int(t), obs


def _spec_streams(spec: WindowSpec, ds: WindowDataset):
    info = ds.stream_info()
    return [StreamSpec(s, tuple(info[s].shape), info[s].kind == "image", int(spec.packed.get(s, 0)), spec.max_age_s)
            for s in spec.inputs]


@pytest.mark.parametrize("clock", [{}, {"rate_hz": 15.0}], ids=["target-clock", "fixed-rate-clock"])
@pytest.mark.parametrize("packed", [{"imu": 3}, {}], ids=["imu-packed", "imu-latest"])
def test_builder_reproduces_the_dataset_ticks(multirate_log, clock, packed):
    spec = WindowSpec(inputs=("imu", "gps", "camera"), target="truth/pos", window=1, packed=packed, max_age_s=0.2, **clock)
    ds = WindowDataset(episode_refs([multirate_log]), spec)
    builder = TickBuilder(_spec_streams(spec, ds))
    log = open_log(multirate_log)
    seen = {"gps_invalid": 0, "gps_valid": 0, "camera_invalid_after_start": 0, "imu_full": 0}
    for k, (_, e) in enumerate(ds.episodes):
        builder.reset()
        want = list(ds.iter_ticks(k))
        got = raw_observations(log.episode(e), ds.index(k).ticks, spec)
        for i, (w, (t, obs)) in enumerate(zip(want, got)):
            tick = builder.build(t, obs)
            assert set(tick) == {key for key in w if not key.startswith(("target", "tick_is_pad"))}
            for key, v in tick.items():
                np.testing.assert_array_equal(v, w[key], err_msg=f"episode {e} tick {i} key {key}")
                assert v.dtype == np.asarray(w[key]).dtype or key == "camera", key
            seen["gps_invalid"] += not tick["gps_valid"]
            seen["gps_valid"] += bool(tick["gps_valid"])
            seen["camera_invalid_after_start"] += (not tick["camera_valid"]) and i > 0
            seen["imu_full"] += bool(packed) and bool(tick["imu_mask"].all())
    log.close()
    # the log exercised the rules: a late stream, expiry past max_age_s, dropped frames, full packed slots
    assert seen["gps_invalid"] > 0 and seen["gps_valid"] > 0 and seen["camera_invalid_after_start"] > 0
    assert seen["imu_full"] > 0 or not packed


def _vec(packed_k: int = 0, max_age_s: float = float("inf"), batch: bool = False) -> TickBuilder:
    return TickBuilder([StreamSpec("imu", (2,), False, packed_k, max_age_s)], batch=batch)


def test_held_sample_ages_by_dt_and_expires_past_max_age():
    b = _vec(max_age_s=0.1)
    x = np.array([0.5, -1.0], np.float32)
    tick = b.build(0, {"imu": x})
    assert tick["imu_valid"] and tick["imu_age_s"] == 0 and tick["dt_s"] == 0
    tick = b.build(60_000_000, {"imu": None})
    assert tick["imu_valid"] and tick["imu_age_s"] == np.float32(0.06) and tick["dt_s"] == np.float32(0.06)
    np.testing.assert_array_equal(tick["imu"], x)
    tick = b.build(100_000_000, {"imu": None})  # age exactly max_age_s: still valid, as in the dataset
    assert tick["imu_valid"] and tick["imu_age_s"] == np.float32(0.1)
    tick = b.build(150_000_000, {"imu": None})
    assert not tick["imu_valid"] and tick["imu_age_s"] == 0 and not tick["imu"].any()
    tick = b.build(200_000_000, {"imu": x, "imu_t_ns": 170_000_000})  # a new sample revives it, aged by its stamp
    assert tick["imu_valid"] and tick["imu_age_s"] == np.float32(0.03)
    b.reset()
    tick = b.build(0, {"imu": None})  # nothing seen since reset
    assert not tick["imu_valid"] and not tick["imu"].any() and tick["dt_s"] == 0


def test_non_finite_samples_are_rejected_and_counted():
    b = _vec()
    x = np.array([1.0, 2.0], np.float32)
    b.build(0, {"imu": x})
    tick = b.build(10_000_000, {"imu": np.array([np.nan, 0.0])})
    np.testing.assert_array_equal(tick["imu"], x)  # the held sample stays and ages
    assert tick["imu_valid"] and tick["imu_age_s"] == np.float32(0.01)
    b.build(20_000_000, {"imu": np.array([np.inf, 0.0])})
    assert b.rejected == {"imu": 2}
    p = _vec(packed_k=3)
    rows = np.array([[1, 2], [3, np.nan], [5, 6], [7, 8]], np.float32)
    tick = p.build(0, {"imu": rows, "imu_t_ns": np.array([-30, -20, -10, 0]) * 1_000_000})
    np.testing.assert_array_equal(tick["imu_mask"], [False, True, True])  # the newest 3, the NaN row masked out
    np.testing.assert_array_equal(tick["imu"], [[0, 0], [5, 6], [7, 8]])
    np.testing.assert_array_equal(tick["imu_age_s"], np.float32([0, 0.01, 0]))
    assert p.rejected == {"imu": 1}


def test_packed_slots_fill_newest_last_and_empty_ticks_clear():
    p = _vec(packed_k=3, batch=True)
    tick = p.build(0, {"imu": np.ones((1, 2))})
    assert tick["imu"].shape == (1, 3, 2) and tick["imu_mask"].tolist() == [[False, False, True]]
    tick = p.build(5, {"imu": None})
    assert not tick["imu_mask"].any() and not tick["imu"].any() and not tick["imu_age_s"].any()
    tick = p.build(6, {"imu": np.zeros((0, 2))})
    assert not tick["imu_mask"].any()


def test_time_going_backwards_names_the_stream_and_times():
    b = _vec()
    b.build(1_000, {"imu": np.zeros(2), "imu_t_ns": 900})
    with pytest.raises(ObservationError, match=r"t_ns went backwards \(500 ns after 1000 ns\).*reset\(\)"):
        b.build(500, {"imu": None})
    with pytest.raises(ObservationError, match=r"Stream 'imu': sample time 800 ns goes backwards \(previous sample at 900 ns\)"):
        b.build(2_000, {"imu": np.zeros(2), "imu_t_ns": 800})
    with pytest.raises(ObservationError, match=r"Stream 'imu': sample time 3000 ns is after the tick time t_ns=2000"):
        b.build(2_000, {"imu": np.zeros(2), "imu_t_ns": 3_000})
    p = _vec(packed_k=2)
    with pytest.raises(ObservationError, match=r"Stream 'imu': packed sample times go backwards"):
        p.build(100, {"imu": np.zeros((2, 2)), "imu_t_ns": [50, 40]})


def test_bad_observations_name_the_stream():
    b = TickBuilder([StreamSpec("camera", (4, 4, 1), True), StreamSpec("imu", (2,))])
    img = np.zeros((4, 4, 1), np.uint8)
    with pytest.raises(ObservationError, match=r"Missing stream 'imu' at t_ns=0.*None when no new sample"):
        b.build(0, {"camera": img})
    with pytest.raises(ObservationError, match=r"'camera': image samples must be uint8"):
        b.build(0, {"camera": img.astype(np.float32), "imu": None})
    with pytest.raises(ObservationError, match=r"'imu': got shape \(3,\); expected shape \(2,\)"):
        b.build(0, {"camera": None, "imu": np.zeros(3)})
    with pytest.raises(ObservationError, match=r"Tick lacks \['imu_valid'\] of stream 'imu'"):
        b.load_tick({"t_ns": 0, "camera": img, "camera_age_s": 0.0, "camera_valid": True, "imu": np.zeros(2), "imu_age_s": 0.0})


def test_load_tick_takes_a_dataset_tick_as_it_is(multirate_log):
    spec = WindowSpec(inputs=("imu", "gps", "camera"), target="truth/pos", window=1, packed={"imu": 3}, max_age_s=0.2)
    ds = WindowDataset(episode_refs([multirate_log]), spec)
    b = TickBuilder(_spec_streams(spec, ds), batch=True)
    for w in ds.iter_ticks(0):
        tick = b.load_tick(w)
        for key, v in tick.items():
            np.testing.assert_array_equal(v[0], w[key], err_msg=key)


def test_ticks_module_needs_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from seqsense.ticks import StreamSpec, TickBuilder\n"
            "b = TickBuilder([StreamSpec('imu', (2,))])\n"
            "assert b.build(0, {'imu': np.ones(2)})['imu_valid']\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    assert NS_PER_S == 10**9
