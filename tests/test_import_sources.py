"""Non-ROS sources: CSV sensor logs, generic HDF5 arrays with a sampling rate, video + frame-time CSV."""

import json

import cv2
import h5py
import numpy as np

from seqsense.cli import main
from seqsense.importers import ImportOptions, build_mapping, detect_format, import_sources
from seqsense.log import open_log
from seqsense.log.validate import validate

OPTS = ImportOptions(progress=False)


def test_csv_with_mapping_and_gap_episodes(tmp_path):
    rng = np.random.default_rng(0)
    t_ms = np.r_[np.arange(50) * 10.0, 5000 + np.arange(30) * 10.0]  # a 4.5 s pause
    x = rng.normal(size=(len(t_ms), 4))
    csv = tmp_path / "arm.csv"
    csv.write_text("stamp,ax,ay,az,temp\n" + "\n".join(",".join(f"{v:.9g}" for v in (t, *r)) for t, r in zip(t_ms, x)))
    cfg = tmp_path / "arm.json"
    cfg.write_text(json.dumps({"format": "csv", "time_column": "stamp", "time_unit": "ms",
                               "streams": [{"stream": "accel", "columns": ["ax", "ay", "az"], "units": "m/s^2"},
                                           {"stream": "temperature", "columns": ["temp"], "units": "degC"}]}))
    mapping = build_mapping(str(cfg), [])
    out = import_sources([csv], tmp_path / "a.h5", mapping, ImportOptions(episode="gap=1", progress=False))
    log = open_log(out)
    assert log.episode_names == ["ep_000", "ep_001"] and not validate(out)
    acc = log.episode("ep_001").stream("accel")
    np.testing.assert_array_equal(acc.t, (t_ms[50:] * 1e6).astype(np.int64))
    np.testing.assert_allclose(acc.read(), x[50:, :3].astype(np.float32), rtol=1e-6)
    assert acc.units == "m/s^2" and acc.rate_hz == 100 and acc.fields == ["ax", "ay", "az"]


def test_csv_defaults_from_column_name(tmp_path):
    csv = tmp_path / "wheel.csv"
    csv.write_text("t_ns,left,right\n0,1,2\n1000000,3,4\n")
    assert detect_format(csv) == "csv"
    ep = open_log(import_sources([csv], tmp_path / "w.h5", options=OPTS)).episode("ep_000")
    assert ep.stream_names == ["wheel"] and ep.stream("wheel").fields == ["left", "right"]


def test_generic_hdf5_with_nan_truth(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "trial.hdf5"
    n = 500
    quat = rng.normal(size=(n, 4))
    quat[100:120] = np.nan
    with h5py.File(src, "w") as f:
        f.attrs["sampling_rate"] = 200.0
        f["imu_acc"], f["imu_gyr"] = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
        f["opt_quat"], f["movement"] = quat, np.arange(n) > 50
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"format": "hdf5", "streams": [
        {"stream": "imu", "arrays": ["imu_acc", "imu_gyr"]},
        {"stream": "truth/orientation", "arrays": ["opt_quat"], "field_names": ["qw", "qx", "qy", "qz"], "allow_nan": True},
        {"stream": "movement", "arrays": ["movement"], "kind": "label"}]}))
    out = import_sources([src], tmp_path / "t.h5", build_mapping(str(cfg), []), OPTS)
    assert [p for p in validate(out) if p.severity == "error"] == []
    ep = open_log(out).episode("ep_000")
    np.testing.assert_array_equal(ep.stream("imu").t, np.round(np.arange(n) / 200.0 * 1e9).astype(np.int64))
    assert ep.stream("imu").fields == [f"imu_acc[{i}]" for i in range(3)] + [f"imu_gyr[{i}]" for i in range(3)]
    np.testing.assert_allclose(ep.stream("truth/orientation").read(), quat.astype(np.float32))
    assert ep.stream("movement").read().sum() == n - 51
    # without a mapping every array becomes a stream named after it
    ep = open_log(import_sources([src], tmp_path / "d.h5", options=OPTS)).episode("ep_000")
    assert set(ep.stream_names) == {"imu_acc", "imu_gyr", "opt_quat", "movement"}


def test_video_with_frame_times(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    frames = [np.full((24, 32, 3), 20 * i, np.uint8) for i in range(6)]
    for fr in frames:
        writer.write(fr)
    writer.release()
    t_ns = [0, 100_000_000, 210_000_000, 300_000_000, 405_000_000, 500_000_000]
    (tmp_path / "clip.csv").write_text("t_ns\n" + "\n".join(map(str, t_ns)) + "\n")
    assert detect_format(video) == "video"
    ep = open_log(import_sources([video], tmp_path / "v.h5", options=OPTS)).episode("ep_000")
    cam = ep.stream("camera")
    np.testing.assert_array_equal(cam.t, t_ns)
    assert cam.sample_shape == (24, 32, 3)
    np.testing.assert_allclose(cam.read().mean(axis=(1, 2, 3)), [20 * i for i in range(6)], atol=3)
    # fixed frame rate instead of a CSV; a CSV with the wrong count is an error naming both counts
    (tmp_path / "clip.csv").unlink()
    assert main(["import", str(video), "--fps", "5", "--out", str(tmp_path / "f.h5"), "--no-progress"]) == 0
    assert open_log(tmp_path / "f.h5").episode("ep_000").stream("camera").t[-1] == 1_000_000_000
    (tmp_path / "short.csv").write_text("t_s\n0\n0.1\n")
    assert main(["import", str(video), "--frame-times", str(tmp_path / "short.csv"), "--out",
                 str(tmp_path / "g.h5"), "--no-progress"]) == 2
    assert not (tmp_path / "g.h5").exists()
