"""Bags written with rosbags (ROS 1, ROS 2 sqlite3, ROS 2 MCAP) holding every supported type, imported end to end."""

import json

import numpy as np
import pytest

from seqsense.cli import main
from seqsense.importers import ImportOptions, build_mapping, import_sources
from seqsense.importers.messages import supported_types
from seqsense.importers.rosbag import default_stream_names
from seqsense.importers.synthetic import STORAGES, header, sample_topics, write_bag
from seqsense.log import open_log
from seqsense.log.validate import validate


def _bag(tmp_path, storage, n=4, seed=0, name="run"):
    conns, msgs, expected = sample_topics(n=n, seed=seed)
    path = tmp_path / (f"{name}.bag" if storage == "rosbag1" else name)
    write_bag(path, storage, conns, msgs)
    return path, expected


@pytest.fixture(params=STORAGES)
def bag(request, tmp_path):
    return _bag(tmp_path, request.param)


def test_every_type_round_trips(bag, tmp_path):
    path, expected = bag
    out = import_sources([path], tmp_path / "log.h5", options=ImportOptions(progress=False))
    assert [p.severity for p in validate(out)] == []
    log = open_log(out)
    ep = log.episode("ep_000")
    assert set(ep.stream_names) == set(expected)
    for name, (t, x) in expected.items():
        s = ep.stream(name)
        np.testing.assert_array_equal(s.t, t, err_msg=name)
        data = s.read()
        if name == "cam_jpeg":  # lossy: close, not equal
            assert np.abs(data.astype(int) - x).mean() < 3
        elif s.kind == "image":
            np.testing.assert_array_equal(data, x, err_msg=name)
        else:
            np.testing.assert_allclose(data, x.astype(np.float32), rtol=1e-6, err_msg=name)
    imu = ep.stream("imu")
    assert imu.fields == ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
    assert imu.frame_id == "imu_link" and "/imu/data" in imu.source and imu.rate_hz == pytest.approx(100)
    assert ep.stream("joint_states/position").fields == ["left", "right"]
    assert ep.stream("odom/twist").frame_id == "base_link" and ep.stream("odom/pose").frame_id == "odom"
    assert ep.stream("cam_rgb8").sample_shape == (6, 8, 3) and ep.stream("cam_mono16").sample_shape == (6, 8, 1)
    assert ep.provenance["source"] == str(path)
    prov = log.provenance
    assert prov["time"] == "header" and prov["sort_time"] is False and prov["sources"][0]["file"] == str(path)


def test_field_path_map_and_rename(tmp_path):
    path, expected = _bag(tmp_path, "rosbag1")
    mapping = build_mapping(None, ["/odom:twist.twist.linear.x,twist.twist.angular.z=odom_vel", "/imu/data=imu0"])
    out = import_sources([path], tmp_path / "log.h5", mapping, ImportOptions(progress=False))
    ep = open_log(out).episode("ep_000")
    assert "odom/twist" not in ep.stream_names and "imu0" in ep.stream_names and "imu0/orientation" in ep.stream_names
    vel = ep.stream("odom_vel")
    assert vel.fields == ["twist.twist.linear.x", "twist.twist.angular.z"]
    np.testing.assert_allclose(vel.read(), expected["odom/twist"][1][:, [0, 5]].astype(np.float32))


def test_receive_time_and_provenance(tmp_path):
    path, expected = _bag(tmp_path, "mcap")
    out = import_sources([path], tmp_path / "log.h5", options=ImportOptions(time="receive", progress=False))
    log = open_log(out)
    np.testing.assert_array_equal(log.episode("ep_000").stream("imu").t, expected["imu"][0] + 500_000)
    assert log.provenance["time"] == "receive"


def test_several_files_and_gap_episodes(tmp_path):
    a, _ = _bag(tmp_path, "rosbag1", name="a")
    b, _ = _bag(tmp_path, "rosbag1", seed=1, name="b")
    log = open_log(import_sources([a, b], tmp_path / "two.h5", options=ImportOptions(progress=False)))
    assert log.episode_names == ["ep_000", "ep_001"]
    assert [log.episode(e).provenance["source"] for e in log.episode_names] == [str(a), str(b)]
    # messages every 10 ms: a 5 ms gap threshold splits every 100 Hz step into its own episode
    log = open_log(import_sources([a], tmp_path / "gap.h5", options=ImportOptions(episode="gap=0.005", progress=False)))
    assert len(log.episode_names) == 4
    log = open_log(import_sources([a], tmp_path / "every.h5", options=ImportOptions(episode="every=0.02", progress=False)))
    assert len(log.episode_names) == 2 and [len(log.episode(e).stream("imu")) for e in log.episode_names] == [2, 2]


def test_backwards_stamps_error_then_sort(tmp_path):
    conns = {"/twist": "geometry_msgs/msg/TwistStamped"}
    stamps = [0, 20, 10, 30, 25, 40]
    msgs = [("/twist", 1_000 + i, {"header": header(10**9 + s * 10**6, "b"), "twist": {"linear": {"x": float(s)}}})
            for i, s in enumerate(stamps)]
    bag = write_bag(tmp_path / "jumbled.bag", "rosbag1", conns, msgs)
    out = tmp_path / "out.h5"
    with pytest.raises(Exception, match=r"topic '/twist'.*message 2 .*--sort-time"):
        import_sources([bag], out, options=ImportOptions(progress=False))
    assert not out.exists() and list(tmp_path.iterdir()) == [bag]
    log = open_log(import_sources([bag], out, options=ImportOptions(sort_time=True, progress=False)))
    s = log.episode("ep_000").stream("twist")
    np.testing.assert_array_equal(s.read()[:, 0], sorted(stamps))
    assert np.all(np.diff(s.t) > 0)
    assert log.provenance["sort_time"] is True and sum(log.provenance["sorted"].values()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jumbled.bag", "out.h5"]  # scratch file removed


def test_unsupported_type_is_skipped_and_counted(tmp_path, capsys):
    conns = {"/temp": "std_msgs/msg/Float64", "/cmd": "geometry_msgs/msg/TwistStamped"}
    msgs = [("/temp", 10**9 + i, {"data": 20.0 + i}) for i in range(3)]
    msgs += [("/cmd", 10**9 + i, {"header": header(10**9 + i, "b")}) for i in range(3)]
    bag = write_bag(tmp_path / "mixed.bag", "rosbag1", conns, sorted(msgs, key=lambda m: m[1]))
    assert main(["import", str(bag), "--out", str(tmp_path / "a.h5"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "std_msgs/Float64" in err and "sensor_msgs/Imu" in err and "--map '/temp:" in err
    log = open_log(tmp_path / "a.h5")
    assert log.provenance["dropped"] == {"mixed.bag:/temp": 3} and log.episode("ep_000").stream_names == ["cmd"]
    # mapping numeric fields by hand imports it
    assert main(["import", str(bag), "--out", str(tmp_path / "b.h5"), "--map", "/temp:data=temperature",
                 "--no-progress"]) == 0
    np.testing.assert_allclose(open_log(tmp_path / "b.h5").episode("ep_000").stream("temperature").read()[:, 0],
                               [20, 21, 22])


def test_list_prints_topics(tmp_path, capsys):
    path, _ = _bag(tmp_path, "sqlite3")
    assert main(["import", str(path), "--list"]) == 0
    out = capsys.readouterr().out
    assert "/imu/data" in out and "sensor_msgs/Imu" in out and not (tmp_path / "log.h5").exists()
    assert len(supported_types()) == 11


def test_default_stream_names():
    names = default_stream_names(["/imu/data", "/husky_velocity_controller/odom", "/camera/image_raw/compressed",
                                  "/left/odom", "/right/odom"])
    assert names["/imu/data"] == "imu" and names["/camera/image_raw/compressed"] == "camera"
    assert names["/left/odom"] == "left/odom" and names["/husky_velocity_controller/odom"] == "husky_velocity_controller/odom"


def test_mapping_file_and_image_size(tmp_path):
    path, _ = _bag(tmp_path, "rosbag1")
    cfg = tmp_path / "map.json"
    cfg.write_text(json.dumps({"include_unmapped": False, "options": {"image_size": [4, 3]},
                               "streams": [{"topic": "/cam_rgb8/image_raw", "stream": "camera"}]}))
    assert main(["import", str(path), "--config", str(cfg), "--out", str(tmp_path / "m.h5"), "--no-progress"]) == 0
    log = open_log(tmp_path / "m.h5")
    assert log.episode("ep_000").stream_names == ["camera"]
    assert log.episode("ep_000").stream("camera").sample_shape == (3, 4, 3)
    assert sum(log.provenance["dropped"].values()) == 4 * 16  # 17 topics, 1 imported
