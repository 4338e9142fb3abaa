"""Image-sequence datasets: EuRoC/ASL, TUM RGB-D and a folder of frames with times and OTB/VOT boxes."""

import cv2
import numpy as np
import pytest

from seqsense.cli import main
from seqsense.errors import SeqsenseError
from seqsense.importers import ImportOptions, build_mapping, detect_format, import_sources, list_sources
from seqsense.importers.samples import write_euroc, write_image_folder, write_tum_rgbd
from seqsense.log import open_log
from seqsense.log.validate import validate


def _log(srcs, tmp_path, mapping=None, notes=None, settings=None, **opts):
    out = tmp_path / "log.h5"
    out.unlink(missing_ok=True)
    notify = notes.append if notes is not None else (lambda _: None)
    out = import_sources(srcs if isinstance(srcs, list) else [srcs], out, mapping,
                         ImportOptions(progress=False, **opts), notify=notify, settings=settings)
    assert [str(p) for p in validate(out)] == []
    return open_log(out)


def _cli_round_trip(tmp_path, capsys, srcs, extra, inputs, target, listed):
    """`import --list`, `import`, `inspect --validate` and a few training steps, all through the CLI."""
    assert main(["import", *map(str, srcs), *extra, "--list"]) == 0
    out = capsys.readouterr().out
    assert all(item in out for item in listed), out
    log = tmp_path / "out.h5"
    assert main(["import", *map(str, srcs), *extra, "--out", str(log), "--no-progress"]) == 0
    assert main(["inspect", "--validate", str(log)]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    assert main(["train", "--model", "framewise", "--data", str(log), "--inputs", inputs, "--target", target,
                 "--out", str(tmp_path / "run"), "--set", "steps=2", "--set", "window=4", "--set", "batch_size=2",
                 "--set", "hidden=8", "--set", "frame_channels=4", "--no-progress"]) == 0
    assert main(["eval", str(tmp_path / "run"), "--data", str(log), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert (tmp_path / "eval" / "summary.json").exists()  # list -> import -> inspect -> train -> eval


def test_euroc_streams_follow_the_layout(tmp_path):
    seq = write_euroc(tmp_path / "MH_01", n_frames=10)
    assert detect_format(seq) == "euroc" and detect_format(seq / "mav0") == "euroc"
    ep = _log(seq, tmp_path).episode("ep_000")
    assert set(ep.stream_names) == {"cam0", "imu0", "truth/position", "truth/orientation", "truth/velocity",
                                    "truth/gyro_bias", "truth/accel_bias"}
    cam = ep.stream("cam0")
    assert cam.sample_shape == (12, 16, 1) and len(cam) == 10 and cam.rate_hz == pytest.approx(20)
    assert cam.t[0] == 1403636579763555584  # ns since the epoch, exact
    first = cv2.imread(str(seq / "mav0" / "cam0" / "data" / "1403636579763555584.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cam.read(0, 1)[0, ..., 0], first)
    imu = ep.stream("imu0")
    assert imu.fields == ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"] and imu.rate_hz == pytest.approx(200)
    rows = np.loadtxt(seq / "mav0" / "imu0" / "data.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(imu.read(), rows[:, [4, 5, 6, 1, 2, 3]].astype(np.float32))
    q = ep.stream("truth/orientation")
    assert q.fields == ["qw", "qx", "qy", "qz"] and q.frame_id == "world"
    gt = np.loadtxt(seq / "mav0" / "state_groundtruth_estimate0" / "data.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(q.read(), gt[:, 4:8].astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("truth,streams", [("vicon0", {"truth/position", "truth/orientation"}),
                                           ("leica0", {"truth/position"})])
def test_euroc_truth_from_motion_capture(tmp_path, truth, streams):
    seq = write_euroc(tmp_path / "V1", n_frames=4, truth=truth)
    ep = _log(seq, tmp_path, mapping=build_mapping(None, ["cam0=camera"])).episode("ep_000")
    assert set(ep.stream_names) == {"camera", "imu0"} | streams


def test_euroc_missing_frame_is_located(tmp_path, capsys):
    seq = write_euroc(tmp_path / "MH", n_frames=6)
    victim = sorted((seq / "mav0" / "cam0" / "data").iterdir())[3]
    victim.unlink()
    assert main(["import", str(seq), "--out", str(tmp_path / "o.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cam0/data.csv' stream 'cam0'" in err and victim.name in err and "does not exist" in err
    assert not (tmp_path / "o.h5").exists()


def test_tum_rgbd_reorders_quaternions_and_leaves_depth_out(tmp_path):
    seq = write_tum_rgbd(tmp_path / "rgbd_dataset_freiburg1_xyz", n_frames=8)
    assert detect_format(seq) == "tum_rgbd"
    notes = []
    log = _log(seq, tmp_path, notes=notes)
    ep = log.episode("ep_000")
    assert set(ep.stream_names) == {"rgb", "accel", "truth/position", "truth/orientation"}
    assert any("depth" in n and "8-bit" in n for n in notes)
    assert log.provenance["dropped"] == {"rgbd_dataset_freiburg1_xyz:depth": 8}
    rgb = ep.stream("rgb")
    assert rgb.sample_shape == (12, 16, 3) and rgb.t[0] == 1305031102175304000 and rgb.rate_hz == pytest.approx(30, rel=1e-3)
    bgr = cv2.imread(str(seq / "rgb" / "1305031102.175304.png"))
    np.testing.assert_array_equal(rgb.read(0, 1)[0], bgr[..., ::-1])  # stored RGB
    raw = np.loadtxt(seq / "groundtruth.txt")
    q = ep.stream("truth/orientation")
    assert q.fields == ["qw", "qx", "qy", "qz"] and "reordered" in q.units
    np.testing.assert_allclose(q.read(), raw[:, [7, 4, 5, 6]].astype(np.float32))
    np.testing.assert_allclose(ep.stream("truth/position").read(), raw[:, 1:4].astype(np.float32))
    assert ep.stream("accel").units == "m/s^2"
    (listing,) = list_sources([seq])
    depth = next(it for it in listing["items"] if it["topic"] == "depth")
    assert not depth["supported"] and depth["count"] == 8


@pytest.mark.parametrize("layout", ["otb", "vot"])
def test_image_folder_boxes(tmp_path, layout):
    seq = write_image_folder(tmp_path / "Basketball", n_frames=9, size=(20, 12), layout=layout)
    assert detect_format(seq) == "images"
    ep = _log(seq, tmp_path, settings={"fps": 25}).episode("ep_000")
    cam, center, size = ep.stream("camera"), ep.stream("truth/box_center"), ep.stream("truth/box_size")
    np.testing.assert_array_equal(cam.t, np.round(np.arange(9) / 25 * 1e9).astype(np.int64))
    x = (2 * np.arange(9)) % 16
    np.testing.assert_allclose(center.read(), np.stack([(x + 2) / 20, np.full(9, (4 + 2) / 12)], 1), atol=1e-6)
    np.testing.assert_allclose(size.read(), np.tile([4 / 20, 4 / 12], (9, 1)), atol=1e-6)
    assert center.fields == ["x", "y"] and size.fields == ["w", "h"] and "normalized" in center.units
    assert not center.allow_nan and center.group.attrs["image_width"] == 20


def test_image_folder_times_missing_boxes_and_errors(tmp_path, capsys):
    seq = write_image_folder(tmp_path / "seq", n_frames=6, layout="plain", times=True)
    ep = _log(seq, tmp_path).episode("ep_000")
    assert ep.stream_names == ["camera"] and ep.stream("camera").t[1] == 10**9 + 33_333_333
    (seq / "times.txt").unlink()
    assert main(["import", str(seq), "--out", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert "no frame times" in err and "--fps" in err and "--frame-times" in err and not (tmp_path / "o.h5").exists()
    # `time filename` rows pick and order the frames; an OTB box of NaN marks a frame without target
    files = sorted(p.name for p in seq.iterdir())
    (seq / "stamps.txt").write_text("".join(f"{0.5 + i / 10:.1f} {f}\n" for i, f in enumerate(files[:4])))
    (seq / "boxes.txt").write_text("1,1,4,4\nNaN,NaN,NaN,NaN\n2\t2\t4\t4\n3 3 4 4\n")
    ep = _log(seq, tmp_path, settings={"frame_times": "stamps.txt", "time_unit": "s", "annotations": "boxes.txt"}
              ).episode("ep_000")
    np.testing.assert_array_equal(ep.stream("camera").t, [500_000_000, 600_000_000, 700_000_000, 800_000_000])
    center = ep.stream("truth/box_center")
    assert center.allow_nan and np.isnan(center.read()[1]).all() and not np.isnan(center.read()[[0, 2, 3]]).any()
    with pytest.raises(SeqsenseError, match="no header naming their unit.*--time-unit"):
        _log(seq, tmp_path, settings={"frame_times": "stamps.txt"})
    (seq / "boxes.txt").write_text("1,1,4,4\n")
    with pytest.raises(SeqsenseError, match=r"boxes.txt': 1 annotation line\(s\) for 4 frame\(s\)"):
        _log(seq, tmp_path, settings={"frame_times": "stamps.txt", "time_unit": "s", "annotations": "boxes.txt"})


def test_image_folder_refuses_mixed_sizes_and_16_bit(tmp_path):
    seq = write_image_folder(tmp_path / "s", n_frames=4, layout="plain")
    cv2.imwrite(str(seq / "frame2.png"), np.zeros((5, 7, 3), np.uint8))
    with pytest.raises(SeqsenseError, match=r"frame 2 \('frame2.png'\): 7x5x3 but earlier frames are 16x12x3.*--image-size"):
        _log(seq, tmp_path, settings={"fps": 10})
    ep = _log(seq, tmp_path, settings={"fps": 10}, image_size=(8, 6)).episode("ep_000")
    assert ep.stream("camera").sample_shape == (6, 8, 3)
    cv2.imwrite(str(seq / "frame2.png"), np.zeros((12, 16), np.uint16))
    with pytest.raises(SeqsenseError, match="uint16 image.*8-bit images only"):
        _log(seq, tmp_path, settings={"fps": 10})


def test_sequences_become_episodes_and_split_by_time(tmp_path):
    a = write_euroc(tmp_path / "MH_01", n_frames=8, seed=0)
    b = write_euroc(tmp_path / "MH_02", n_frames=8, seed=1)
    log = _log([a, b], tmp_path)
    assert [log.episode(e).provenance["source"] for e in log.episode_names] == [str(a), str(b)]
    log = _log([a], tmp_path, episode="every=0.15")  # 0.4 s of data
    assert len(log.episode_names) == 3
    assert sum(len(log.episode(e).stream("cam0")) for e in log.episode_names) == 8


def test_cli_euroc(tmp_path, capsys):
    seqs = [write_euroc(tmp_path / f"MH_0{i}", n_frames=10, seed=i) for i in (1, 2)]
    _cli_round_trip(tmp_path, capsys, seqs, [], "cam0", "truth/position", ["(euroc)", "cam0", "imu0", "truth/orientation"])


def test_cli_tum_rgbd(tmp_path, capsys):
    seqs = [write_tum_rgbd(tmp_path / f"rgbd_dataset_{i}", n_frames=10, seed=i) for i in (1, 2)]
    _cli_round_trip(tmp_path, capsys, seqs, [], "rgb", "truth/position", ["(tum_rgbd)", "rgb", "depth", "not imported"])


def test_cli_image_folder(tmp_path, capsys):
    seqs = [write_image_folder(tmp_path / f"Seq{i}", n_frames=10, layout="otb", seed=i) for i in (1, 2)]
    _cli_round_trip(tmp_path, capsys, seqs, ["--fps", "30"], "camera", "truth/box_center",
                    ["(images)", "camera", "truth/box_center", "groundtruth_rect.txt"])
